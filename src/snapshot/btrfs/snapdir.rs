//! The boundary on the way to btrfs snapshots: the mount point and every component of
//! `snapshot_dir` must be changeable by root only (no symlink, no other mount, root-owned,
//! not group/other-writable), checked component by component through fds.

use super::{io_err, SnapshotError};
use crate::sys;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// What to do about a directory on the way to the snapshots that only root must be able to
/// change: said in every refusal.
const FIX_DIR: &str = "snapckpt creates, mounts and deletes snapshots there as root, so only root may be able to change it: \
     make it a plain directory owned by root and writable by root only (`chown root:root DIR; chmod 0700 DIR`), \
     or remove it and let snapckpt create it, or choose another snapshot_dir";

fn refused(path: PathBuf, why: impl std::fmt::Display) -> SnapshotError {
    SnapshotError::Refused { path, why: format!("{why}; {FIX_DIR}") }
}

/// Only root can change where `path` leads (every directory from `/` root-owned and not
/// writable by others, a sticky one accepted; no symlinks): [`sys::trusted_dirs`].
pub(super) fn trusted(path: &Path) -> Result<(), SnapshotError> {
    sys::trusted_dirs(path, false).map_err(|why| SnapshotError::Refused {
        path: path.to_path_buf(),
        why: format!(
            "{why}. snapckpt creates, mounts and deletes snapshots below it as root: make every directory on the way \
             root's and writable by root only (`chown root:root DIR; chmod go-w DIR`), or mount the filesystem elsewhere"
        ),
    })
}

/// Open (creating what is missing, root-owned 0700) `<mount>/<dir>`, one component at a time,
/// never following a symlink or crossing into another mount, and check that each component
/// is a root-owned directory not writable by group or others.
pub(super) fn open_snapshot_dir(mfd: &OwnedFd, mp: &Path, dir: &str) -> Result<OwnedFd, SnapshotError> {
    walk_snapshot_dir(mfd, mp, dir, true)?.ok_or_else(|| SnapshotError::Invalid {
        what: "snapshot directory",
        value: dir.into(),
        why: "is empty".into(),
    })
}

/// The walk of [`open_snapshot_dir`]. Without `create` nothing is made: the components that
/// exist are checked, and `None` says that one is missing (take will create the rest).
pub(super) fn walk_snapshot_dir(
    mfd: &OwnedFd,
    mp: &Path,
    dir: &str,
    create: bool,
) -> Result<Option<OwnedFd>, SnapshotError> {
    let mut cur: Option<OwnedFd> = None;
    let mut path = mp.to_path_buf();
    for comp in dir.split('/') {
        path.push(comp);
        let parent = cur.as_ref().unwrap_or(mfd).as_raw_fd();
        match open_component(parent, comp, &path, create)? {
            Some(fd) => cur = Some(fd),
            None => return Ok(None),
        }
    }
    Ok(cur)
}

/// One component of the snapshot directory, checked (see [`open_snapshot_dir`]); `None` when
/// it does not exist and `create` is false.
fn open_component(
    parent: i32,
    comp: &str,
    path: &Path,
    create: bool,
) -> Result<Option<OwnedFd>, SnapshotError> {
    let flags = libc::O_PATH | libc::O_DIRECTORY;
    let mut r = sys::openat2(parent, comp, flags, 0, sys::RESOLVE_STRICT);
    if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOENT)) {
        if !create {
            return Ok(None);
        }
        match sys::mkdirat(parent, OsStr::new(comp), 0o700) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(io_err(path, "mkdir")(e)),
        }
        r = sys::openat2(parent, comp, flags, 0, sys::RESOLVE_STRICT);
    }
    let fd = r.map_err(|e| component_refusal(path, e))?;
    let st = sys::fstat(fd.as_raw_fd()).map_err(io_err(path, "fstat"))?;
    if st.st_uid != 0 {
        return Err(refused(path.into(), format_args!("owned by uid {}, not root", st.st_uid)));
    }
    if st.st_mode & 0o022 != 0 {
        let mode = st.st_mode & 0o7777;
        return Err(refused(path.into(), format_args!("writable by group or others (mode {mode:o})")));
    }
    Ok(Some(fd))
}

/// Why a component of the snapshot directory could not be opened safely.
fn component_refusal(path: &Path, e: io::Error) -> SnapshotError {
    let why = match e.raw_os_error() {
        Some(libc::ELOOP) => "is a symbolic link",
        Some(libc::ENOTDIR) => match std::fs::symlink_metadata(path) {
            Ok(md) if md.file_type().is_symlink() => "is a symbolic link",
            _ => "is not a directory",
        },
        Some(libc::EXDEV) => "is on another mount",
        _ => return io_err(path, "openat2")(e),
    };
    refused(
        path.into(),
        format_args!("{why}; the snapshot directory must be a plain directory owned by root"),
    )
}
