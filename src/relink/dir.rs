//! The checkpoint directory of one mount, `lost+found/checkpoint`: a security boundary. Both
//! directories are created root-owned 0700 when missing, refused when they are symlinks, not
//! owned by root, or writable by group or others, and everything under them is opened with
//! openat2 and no symlink resolution.

use super::{ioe, RelinkError};
use crate::record::names::{plain_name, CHECKPOINT_DIR};
use crate::sys;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

/// An open `lost+found/checkpoint` of one mount.
#[derive(Debug)]
pub struct CheckpointDir {
    fd: OwnedFd,
    /// For messages: the path it was reached by.
    pub path: PathBuf,
}

impl CheckpointDir {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Open a name inside the directory without following symlinks.
    pub fn open(&self, name: &str, flags: i32) -> Result<OwnedFd, RelinkError> {
        check_name(name, &self.path)?;
        sys::openat2(self.fd(), name, flags, 0, sys::RESOLVE_STRICT)
            .map_err(ioe(&self.path.join(name), "openat2"))
    }

    /// Remove a name (a directory with `dir`).
    pub fn remove(&self, name: &str, dir: bool) -> Result<(), RelinkError> {
        check_name(name, &self.path)?;
        sys::unlinkat(self.fd(), OsStr::new(name), dir).map_err(ioe(&self.path.join(name), "unlinkat"))
    }

    /// The names in the directory (plain names only).
    pub fn names(&self) -> Result<Vec<(String, bool)>, RelinkError> {
        let dup = sys::openat2(self.fd(), ".", libc::O_RDONLY | libc::O_DIRECTORY, 0, sys::RESOLVE_STRICT)
            .map_err(ioe(&self.path, "openat2"))?;
        let mut d = nix::dir::Dir::from_fd(std::os::fd::IntoRawFd::into_raw_fd(dup)).map_err(|e| {
            RelinkError::Io(crate::sys::SysError {
                path: self.path.clone(),
                syscall: "fdopendir",
                source: e.into(),
            })
        })?;
        let mut out = vec![];
        for e in d.iter().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == "." || n == ".." {
                continue;
            }
            let is_dir = e.file_type() == Some(nix::dir::Type::Directory);
            out.push((n, is_dir));
        }
        out.sort();
        Ok(out)
    }
}

fn check_name(name: &str, dir: &Path) -> Result<(), RelinkError> {
    if !plain_name(name) {
        return Err(RelinkError::Unsafe { path: dir.join(name), why: "not a plain file name".into() });
    }
    Ok(())
}

/// Open (creating if `create`) `lost+found/checkpoint` under `mount_dir`, the root of a mount.
/// If `expect_mnt_id` is given, the directory reached must be that mount's root (a planted
/// symlink or a renamed parent would lead elsewhere).
pub fn open_checkpoint_dir(
    mount_dir: &Path,
    expect_mnt_id: Option<u32>,
    create: bool,
) -> Result<CheckpointDir, RelinkError> {
    let mfd = sys::open(mount_dir, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(ioe(mount_dir, "open"))?;
    // The directory reached must be the root of a mount (not a directory some path trick led
    // to), and with `expect_mnt_id` the root of that very mount.
    if !sys::is_mount_root(mfd.as_raw_fd()).map_err(ioe(mount_dir, "statx"))? {
        return Err(RelinkError::WrongMount {
            path: mount_dir.into(),
            why: "is not the root of a mount (give the mount point)".into(),
        });
    }
    if let Some(want) = expect_mnt_id {
        let got = sys::mnt_id_of(mfd.as_raw_fd()).map_err(ioe(mount_dir, "statx"))?;
        if got != want {
            return Err(RelinkError::WrongMount {
                path: mount_dir.into(),
                why: format!("is on mount {got}, expected the root of mount {want}"),
            });
        }
    }
    let mut fd = mfd;
    let mut path = mount_dir.to_path_buf();
    for comp in CHECKPOINT_DIR.split('/') {
        path.push(comp);
        fd = open_secure_subdir(fd.as_raw_fd(), comp, &path, create)?;
    }
    Ok(CheckpointDir { fd, path })
}

fn open_secure_subdir(parent: RawFd, name: &str, path: &Path, create: bool) -> Result<OwnedFd, RelinkError> {
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let fd = match sys::openat2(parent, name, flags, 0, sys::RESOLVE_STRICT) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
            match sys::mkdirat(parent, OsStr::new(name), 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => {
                    return Err(RelinkError::Io(crate::sys::SysError {
                        path: path.into(),
                        syscall: "mkdirat",
                        source: e,
                    }))
                }
            }
            sys::openat2(parent, name, flags, 0, sys::RESOLVE_STRICT).map_err(|e| refuse_or_io(e, path))?
        }
        Err(e) => return Err(refuse_or_io(e, path)),
    };
    let st = sys::fstat(fd.as_raw_fd()).map_err(ioe(path, "fstat"))?;
    if st.st_uid != 0 {
        return Err(RelinkError::Unsafe {
            path: path.into(),
            why: format!("owned by uid {}, not root", st.st_uid),
        });
    }
    if st.st_mode & 0o022 != 0 {
        return Err(RelinkError::Unsafe {
            path: path.into(),
            why: format!("mode {:o} is writable by group or others", st.st_mode & 0o7777),
        });
    }
    Ok(fd)
}

fn refuse_or_io(e: io::Error, path: &Path) -> RelinkError {
    // O_DIRECTORY|O_NOFOLLOW on a symlink gives ENOTDIR: say what it really is.
    let is_symlink = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_symlink && matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) {
        return RelinkError::Unsafe { path: path.into(), why: "it is a symlink".into() };
    }
    match e.raw_os_error() {
        Some(libc::ELOOP) => RelinkError::Unsafe { path: path.into(), why: "it is a symlink".into() },
        Some(libc::ENOTDIR) => RelinkError::Unsafe { path: path.into(), why: "it is not a directory".into() },
        Some(libc::EXDEV) => {
            RelinkError::Unsafe { path: path.into(), why: "it leads to another mount".into() }
        }
        _ => RelinkError::Io(crate::sys::SysError { path: path.into(), syscall: "openat2", source: e }),
    }
}
