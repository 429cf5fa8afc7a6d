//! The btrfs backend, through libbtrfsutil (no `btrfs` command).
//!
//! Layout inside the snapshotted subvolume (the mount's root):
//!
//! ```text
//! <mount>/<snapshot_dir>/              root-owned, 0700 (default ".snapckpt")
//!         <id>/                        a plain directory, 0700
//!             snapshot                 the read-only snapshot of the mount's subvolume
//!             restart-1, restart-2...  writable clones of `snapshot`, one per restart
//! ```
//!
//! A snapshot does not include nested subvolumes, so the snapshots of earlier checkpoints are
//! not carried into later ones. Restart clones are mounted from the *device*
//! (`mount -t btrfs DEVICE -o subvolid=N,subvol=PATH TARGET`), which works whether or not the
//! origin is still mounted; when the snapshot cannot be reached through the recorded mount
//! point, the device's top level (subvolid=5) is mounted on a temporary directory under
//! [`TEMP_ROOT`] for as long as needed.
//!
//! Safety: every subvolume is checked against the UUIDs of the record before it is used or
//! deleted (a device name may have been reused, or a restart clone may be mounted over the
//! origin's mount point and show a stale copy of the snapshot directory), and clones are
//! deleted only if they are snapshots of the recorded snapshot. Subvolumes are never deleted
//! recursively: a clone holding other subvolumes (e.g. the snapshot of a later checkpoint taken
//! from a restarted filesystem) makes the deletion fail with a message instead.

use super::{
    has_nul, is_topmost, mountinfo, validate_id, validate_snapshot_dir, CloneDetail, FsSpec, MountEntry,
    MountedClone, SnapshotError,
};
use crate::record::{self, Snapshot};
use crate::sys;
use libbtrfsutil::{CreateSnapshotOptions, SubvolumeInfo};
use nix::mount::{MntFlags, MsFlags};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

mod clones;
mod nested;
mod snapdir;
pub use clones::*;
use snapdir::{open_snapshot_dir, trusted, walk_snapshot_dir};

/// Default directory, relative to the mount root, that holds snapckpt's snapshots.
pub const DEFAULT_SNAPSHOT_DIR: &str = ".snapckpt";
/// Name of the read-only snapshot inside `<snapshot_dir>/<id>/`.
pub const SNAPSHOT_NAME: &str = "snapshot";
/// Prefix of the writable restart clones inside `<snapshot_dir>/<id>/`.
pub const CLONE_PREFIX: &str = "restart-";
/// Where temporary top-level mounts of a device go.
pub const TEMP_ROOT: &str = "/run/snapckpt";

/// Inode number of the root directory of every btrfs subvolume.
const SUBVOL_ROOT_INO: u64 = 256;
/// `BTRFS_ROOT_SUBVOL_RDONLY` in the root item flags.
const ROOT_SUBVOL_RDONLY: u64 = 1;

fn io_err<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io(crate::sys::SysError { path: path.to_path_buf(), syscall, source })
}

fn bt_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(libbtrfsutil::Error) -> SnapshotError + 'a {
    move |e| SnapshotError::Btrfs {
        path: path.to_path_buf(),
        op,
        msg: format!("{e} ({})", e.os_error()),
        errno: e.errno(),
    }
}

/// `/proc/self/fd/N`: a path that reaches exactly the object an fd refers to, so that
/// libbtrfsutil (which takes paths) cannot be sent elsewhere by a renamed or swapped directory.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn same_uuid(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// "/" + the path libbtrfsutil gives relative to the filesystem's top level.
fn fs_path_string(rel: &Path, at: &Path) -> Result<String, SnapshotError> {
    let s = rel.to_str().ok_or_else(|| SnapshotError::Invalid {
        what: "subvolume path",
        value: rel.to_string_lossy().into_owned(),
        why: format!("of {} is not UTF-8", at.display()),
    })?;
    Ok(format!("/{}", s.trim_start_matches('/')))
}

// ---------------------------------------------------------------------------------------------
// take

/// The checks of [`take`] that need no snapshot: a valid snapshot directory name, a mount point
/// that is the root of a btrfs mount and a subvolume root. Run before the tasks are frozen
/// too ([`precheck`]).
fn origin(spec: &FsSpec) -> Result<Origin, SnapshotError> {
    let dir = spec.snapshot_dir.as_deref().unwrap_or(DEFAULT_SNAPSHOT_DIR).to_string();
    validate_snapshot_dir(&dir)?;
    if has_nul(&spec.mount_point) {
        return Err(SnapshotError::Invalid {
            what: "mount point",
            value: spec.mount_point.to_string_lossy().into_owned(),
            why: "contains a NUL byte".into(),
        });
    }
    let mp = std::fs::canonicalize(&spec.mount_point).map_err(io_err(&spec.mount_point, "realpath"))?;
    let mp_str = mp
        .to_str()
        .ok_or_else(|| SnapshotError::Invalid {
            what: "mount point",
            value: mp.to_string_lossy().into_owned(),
            why: "is not UTF-8".into(),
        })?
        .to_string();
    // Snapshots are made, mounted and deleted below it: only root may change where it leads.
    trusted(&mp)?;

    // The mount, as the kernel sees it.
    let mfd = sys::open(&mp, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(io_err(&mp, "open"))?;
    let mnt_id = sys::mnt_id_of(mfd.as_raw_fd()).map_err(io_err(&mp, "statx"))?;
    let all = mountinfo()?;
    let m = all.into_iter().find(|e| e.mnt_id == mnt_id).ok_or_else(|| SnapshotError::Mismatch {
        path: mp.clone(),
        why: format!("mount id {mnt_id} is not in /proc/self/mountinfo"),
    })?;
    if m.mount_point != mp {
        return Err(SnapshotError::NotMountPoint { path: mp, mount_point: m.mount_point.clone() });
    }
    if m.fstype != "btrfs" {
        return Err(SnapshotError::NotBtrfs { path: mp, fstype: m.fstype.clone() });
    }
    let st = sys::fstat(mfd.as_raw_fd()).map_err(io_err(&mp, "fstat"))?;
    let mview = fd_path(&mfd);
    if st.st_ino != SUBVOL_ROOT_INO {
        return Err(not_subvolume_root(&mp, &m, &mview));
    }

    Ok(Origin { dir, mp, mp_str, mfd, m, mview })
}

/// A checked origin of a snapshot (see [`origin`]).
struct Origin {
    /// The snapshot directory, relative to the mount.
    dir: String,
    /// The mount point (canonical) and the same as a string.
    mp: PathBuf,
    mp_str: String,
    /// The mount's root, and its mountinfo entry.
    mfd: std::os::fd::OwnedFd,
    m: MountEntry,
    /// `/proc/self/fd/N` of `mfd`.
    mview: PathBuf,
}

/// Whether a snapshot of `spec` can be taken, checked before anything is changed: the
/// origin, and every component of the snapshot directory that exists already (nothing is
/// created here).
pub fn precheck(spec: &FsSpec) -> Result<(), SnapshotError> {
    let o = origin(spec)?;
    walk_snapshot_dir(&o.mfd, &o.mp, &o.dir, false).map(drop)
}

/// Take a read-only snapshot of the subvolume mounted at `spec.mount_point` as
/// `<mount>/<snapshot_dir>/<id>/snapshot`.
///
/// The mount point must be the root of a btrfs mount whose root is the root of a subvolume
/// (a top-level mount, a `subvol=` mount, or a bind mount of a subvolume); otherwise
/// [`SnapshotError::NotMountPoint`], [`SnapshotError::NotBtrfs`] or
/// [`SnapshotError::NotSubvolumeRoot`]. `<snapshot_dir>` is created (root-owned, 0700) when
/// missing and refused if it, or any of its components, is a symlink, another mount, not
/// owned by root, or writable by group or others. `<id>` must not exist yet.
pub fn take(spec: &FsSpec, id: &str, now_unix: u64) -> Result<Snapshot, SnapshotError> {
    validate_id(id)?;
    let Origin { dir, mp, mp_str, mfd, m, mview } = origin(spec)?;
    let dir = dir.as_str();

    // The origin subvolume.
    let origin = libbtrfsutil::subvolume_info(&mview).map_err(bt_err(&mp, "subvolume info"))?;
    let origin_rel = libbtrfsutil::subvolume_path(&mview).map_err(bt_err(&mp, "subvolume path"))?;
    let origin_subvol_path = fs_path_string(&origin_rel, &mp)?;

    // <snapshot_dir>/<id>
    let sdir_path = mp.join(dir);
    let mut sfd = open_snapshot_dir(&mfd, &mp, dir)?;
    let id_path = sdir_path.join(id);
    let ifd = make_id_dir(&mfd, &mp, dir, &mut sfd, id, &id_path)?;
    let remove_id_dir = || {
        let _ = sys::unlinkat(sfd.as_raw_fd(), OsStr::new(id), true);
    };

    // The snapshot itself.
    let snap_path = id_path.join(SNAPSHOT_NAME);
    let snap_view = fd_path(&ifd).join(SNAPSHOT_NAME);
    if let Err(e) = CreateSnapshotOptions::new().readonly(true).create(&mview, &snap_view) {
        remove_id_dir();
        return Err(bt_err(&snap_path, "create read-only snapshot")(e));
    }
    let described = describe(&snap_view, &snap_path);
    let (info, fs_path) = match described {
        Ok(x) => x,
        Err(e) => {
            let _ = delete_subvolume(&snap_view, true);
            remove_id_dir();
            return Err(e);
        }
    };
    Ok(Snapshot::Btrfs {
        mount_point: mp_str,
        device: m.source.clone(),
        origin_subvol_id: origin.id(),
        origin_subvol_path,
        subvol_id: info.id(),
        uuid: info.uuid().to_string(),
        path: snap_path.to_string_lossy().into_owned(),
        fs_path,
        created_unix: now_unix,
    })
}

/// Make `<snapshot_dir>/<id>` (0700; refused if it exists) and open it `O_PATH`; `sfd` is
/// the snapshot directory, opened again if a delete removed it meanwhile. Nothing is left
/// behind on an error.
fn make_id_dir(
    mfd: &OwnedFd,
    mp: &Path,
    dir: &str,
    sfd: &mut OwnedFd,
    id: &str,
    id_path: &Path,
) -> Result<OwnedFd, SnapshotError> {
    let mut made = sys::mkdirat(sfd.as_raw_fd(), OsStr::new(id), 0o700);
    if matches!(&made, Err(e) if e.raw_os_error() == Some(libc::ENOENT)) {
        // A delete removed the empty snapshot directory meanwhile: make it again.
        *sfd = open_snapshot_dir(mfd, mp, dir)?;
        made = sys::mkdirat(sfd.as_raw_fd(), OsStr::new(id), 0o700);
    }
    made.map_err(|e| {
        if e.raw_os_error() == Some(libc::EEXIST) {
            SnapshotError::Refused {
                path: id_path.to_path_buf(),
                why: format!("already exists: checkpoint {id} already has a snapshot directory here"),
            }
        } else {
            SnapshotError::Io(crate::sys::SysError {
                path: id_path.to_path_buf(),
                syscall: "mkdir",
                source: e,
            })
        }
    })?;
    sys::openat2(sfd.as_raw_fd(), id, libc::O_PATH | libc::O_DIRECTORY, 0, sys::RESOLVE_STRICT).map_err(|e| {
        let _ = sys::unlinkat(sfd.as_raw_fd(), OsStr::new(id), true);
        SnapshotError::Io(crate::sys::SysError { path: id_path.to_path_buf(), syscall: "openat2", source: e })
    })
}

/// A new snapshot's info and path inside its filesystem; it must be read-only.
fn describe(snap_view: &Path, snap_path: &Path) -> Result<(SubvolumeInfo, String), SnapshotError> {
    let info = libbtrfsutil::subvolume_info(snap_view).map_err(bt_err(snap_path, "subvolume info"))?;
    if info.flags() & ROOT_SUBVOL_RDONLY == 0 {
        return Err(SnapshotError::Mismatch {
            path: snap_path.to_path_buf(),
            why: "the new snapshot is not read-only".into(),
        });
    }
    let rel = libbtrfsutil::subvolume_path(snap_view).map_err(bt_err(snap_path, "subvolume path"))?;
    Ok((info, fs_path_string(&rel, snap_path)?))
}

/// The error for a btrfs mount whose root is a plain directory, with what to do about it.
fn not_subvolume_root(mp: &Path, m: &MountEntry, view: &Path) -> SnapshotError {
    let containing = libbtrfsutil::subvolume_path(view)
        .ok()
        .map(|p| format!("/{}", p.to_string_lossy().trim_start_matches('/')));
    let id = libbtrfsutil::subvolume_id(view).ok();
    let inside = match (containing, id) {
        (Some(p), Some(id)) => format!("subvolume {p} (id {id})"),
        _ => "a subvolume".into(),
    };
    SnapshotError::NotSubvolumeRoot {
        mount_point: mp.to_path_buf(),
        why: format!(
            "the mount's root is {} on {}, a plain directory inside {inside}, and btrfs snapshots whole subvolumes only. \
             Either name the mount point of that subvolume instead, or make the directory a subvolume of its own \
             (`btrfs subvolume create`, move the data into it) and mount it with -o subvol=...",
            m.root.display(),
            m.source
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// the record, and finding the snapshot again

/// The fields of a btrfs snapshot record, checked.
struct Rec {
    device: String,
    /// The snapshot, snapckpt's view at take time.
    path: PathBuf,
    /// The snapshot within the filesystem, "/..../<id>/snapshot".
    fs_path: String,
    uuid: String,
}

impl Rec {
    fn from(s: &Snapshot) -> Result<Rec, SnapshotError> {
        let Snapshot::Btrfs { device, path, fs_path, uuid, .. } = s else {
            return Err(SnapshotError::Unsupported(format!("{} is not a btrfs snapshot", s.describe())));
        };
        let bad = |what: &'static str, value: &str, why: &str| {
            Err(SnapshotError::Invalid { what, value: value.into(), why: why.into() })
        };
        if device.is_empty() || !device.starts_with('/') || device.contains('\0') || device.contains(',') {
            return bad("device", device, "must be an absolute device path");
        }
        if uuid.is_empty() || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return bad("snapshot uuid", uuid, "is not a UUID");
        }
        let id = check_layout("snapshot path", path)?;
        let id2 = check_layout("snapshot path within the filesystem", fs_path)?;
        if id != id2 {
            return bad(
                "snapshot path within the filesystem",
                fs_path,
                "names another checkpoint than the snapshot path",
            );
        }
        Ok(Rec {
            device: device.clone(),
            path: PathBuf::from(path),
            fs_path: fs_path.clone(),
            uuid: uuid.clone(),
        })
    }

    /// The `<id>` directory within the filesystem.
    fn id_fs_dir(&self) -> &str {
        self.fs_path.rsplit_once('/').map(|(d, _)| d).unwrap_or("")
    }
}

/// Check that `p` is an absolute, normalized path ending in `<id>/snapshot`; return the id.
fn check_layout<'a>(what: &'static str, p: &'a str) -> Result<&'a str, SnapshotError> {
    let bad = |why: &str| SnapshotError::Invalid { what, value: p.into(), why: why.into() };
    if !p.starts_with('/') || p.contains('\0') {
        return Err(bad("must be an absolute path"));
    }
    let comps: Vec<&str> = p[1..].split('/').collect();
    if comps.iter().any(|c| c.is_empty() || *c == "." || *c == "..") {
        return Err(bad("must be a normalized path (no '.', '..' or '//')"));
    }
    let n = comps.len();
    if n < 2 || comps[n - 1] != SNAPSHOT_NAME || !record::names::valid_id(comps[n - 2]) {
        return Err(bad("must end in <checkpoint id>/snapshot"));
    }
    Ok(comps[n - 2])
}

/// A mount of the device on a private directory under [`TEMP_ROOT`]; unmounted and the
/// directory removed on drop.
struct TempMount {
    dir: PathBuf,
}

impl TempMount {
    /// The device's top level (subvolid=5), not executable.
    fn top(device: &str) -> Result<TempMount, SnapshotError> {
        TempMount::new(
            device,
            "subvolid=5",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            "top",
        )
    }

    fn new(device: &str, options: &str, flags: MsFlags, tag: &str) -> Result<TempMount, SnapshotError> {
        let root = Path::new(TEMP_ROOT);
        match std::fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(SnapshotError::Io(crate::sys::SysError {
                    path: root.into(),
                    syscall: "mkdir",
                    source: e,
                }))
            }
        }
        let md = std::fs::symlink_metadata(root).map_err(io_err(root, "lstat"))?;
        if !md.is_dir() || md.uid() != 0 || md.mode() & 0o022 != 0 {
            return Err(SnapshotError::Refused {
                path: root.into(),
                why: "must be a directory owned by root and not writable by group or others".into(),
            });
        }
        let dir = root.join(format!("{tag}-{}-{}", std::process::id(), sys::random_hex(4)));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io_err(&dir, "mkdir"))?;
        if let Err(e) = nix::mount::mount(Some(device), &dir, Some("btrfs"), flags, Some(options)) {
            let _ = std::fs::remove_dir(&dir);
            return Err(SnapshotError::Mount {
                device: device.into(),
                target: dir,
                fstype: "btrfs",
                options: options.into(),
                source: e.into(),
            });
        }
        Ok(TempMount { dir })
    }

    /// `fs_path` (absolute within the filesystem) under this mount.
    fn at(&self, fs_path: &str) -> PathBuf {
        self.dir.join(fs_path.trim_start_matches('/'))
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if nix::mount::umount2(&self.dir, MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.dir, MntFlags::MNT_DETACH);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Where a checkpoint's `<id>` directory can be reached now.
struct Located {
    /// The `<id>` directory.
    id_dir: PathBuf,
    /// The read-only snapshot, if it still exists (its UUID checked).
    snapshot: Option<PathBuf>,
    /// Whether `id_dir` is reached through the recorded mount point (snapckpt's view).
    direct: bool,
    /// The temporary top-level mount that makes it reachable otherwise (held for its Drop).
    _temp: Option<TempMount>,
}

/// Find the snapshot: through the recorded path if the subvolume there has the recorded
/// UUID and its mount is writable, else on the recorded device's top level. `None` when the
/// device's filesystem has no `<id>` directory (already deleted).
///
/// Refused when someone other than root could change where the `<id>` directory's path leads
/// (a user-writable or symlinked directory on the way): clones are made and snapshots deleted
/// through it.
fn locate(rec: &Rec) -> Result<Option<Located>, SnapshotError> {
    let loc = locate_unchecked(rec)?;
    if let Some(l) = &loc {
        trusted(&l.id_dir)?;
    }
    Ok(loc)
}

fn locate_unchecked(rec: &Rec) -> Result<Option<Located>, SnapshotError> {
    if let Ok(info) = libbtrfsutil::subvolume_info(&rec.path) {
        let id_dir = rec.path.parent().map(Path::to_path_buf).unwrap_or_default();
        let writable = nix::sys::statvfs::statvfs(&id_dir)
            .is_ok_and(|v| !v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
        if same_uuid(&info.uuid().to_string(), &rec.uuid) && writable {
            return Ok(Some(Located { id_dir, snapshot: Some(rec.path.clone()), direct: true, _temp: None }));
        }
    }
    let temp = TempMount::top(&rec.device)?;
    let snap = temp.at(&rec.fs_path);
    let id_dir = temp.at(rec.id_fs_dir());
    let where_ = || format!("{} (on {}, as {})", rec.path.display(), rec.device, rec.fs_path);
    match libbtrfsutil::subvolume_info(&snap) {
        Ok(info) if same_uuid(&info.uuid().to_string(), &rec.uuid) => Ok(Some(Located { id_dir, snapshot: Some(snap), direct: false, _temp: Some(temp) })),
        Ok(info) => Err(SnapshotError::Mismatch {
            path: PathBuf::from(where_()),
            why: format!("the subvolume there has UUID {}, the checkpoint record says {}: the device may now hold another filesystem", info.uuid(), rec.uuid),
        }),
        Err(e) if e.errno() == libc::ENOENT => match std::fs::symlink_metadata(&id_dir) {
            Ok(md) if md.is_dir() => Ok(Some(Located { id_dir, snapshot: None, direct: false, _temp: Some(temp) })),
            Ok(_) => Err(SnapshotError::Mismatch { path: PathBuf::from(where_()), why: "the checkpoint's directory is not a directory".into() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SnapshotError::Io(crate::sys::SysError { path: id_dir, syscall: "lstat", source: e })),
        },
        Err(e) if e.kind() == libbtrfsutil::ErrorKind::NOT_SUBVOLUME => {
            Err(SnapshotError::Mismatch { path: PathBuf::from(where_()), why: "is not a subvolume".into() })
        }
        Err(e) => Err(bt_err(&snap, "subvolume info")(e)),
    }
}

/// Delete one subvolume (never recursively). `force_writable`: a read-only subvolume the
/// kernel refuses to delete is made writable first.
fn delete_subvolume(path: &Path, force_writable: bool) -> Result<(), SnapshotError> {
    match libbtrfsutil::delete_subvolume(path) {
        Ok(()) => Ok(()),
        Err(e) if force_writable && (e.errno() == libc::EPERM || e.errno() == libc::EROFS) => {
            libbtrfsutil::set_subvolume_read_only(path, false).map_err(bt_err(path, "set writable"))?;
            libbtrfsutil::delete_subvolume(path).map_err(bt_err(path, "delete subvolume"))
        }
        Err(e) if e.errno() == libc::ENOTEMPTY => Err(SnapshotError::Refused {
            path: path.into(),
            why: "it holds other subvolumes (for example the snapshots of a checkpoint taken from a restarted filesystem); delete those first".into(),
        }),
        Err(e) => Err(bt_err(path, "delete subvolume")(e)),
    }
}

/// `restart-<N>` -> N.
fn clone_number(name: &OsStr) -> Option<u32> {
    let n = name.to_str()?.strip_prefix(CLONE_PREFIX)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.len() > 9 {
        return None;
    }
    n.parse().ok()
}

/// The `restart-<N>` entries of an `<id>` directory, sorted by N.
fn clone_entries(id_dir: &Path) -> Result<Vec<(u32, PathBuf)>, SnapshotError> {
    let rd = std::fs::read_dir(id_dir).map_err(io_err(id_dir, "opendir"))?;
    let mut v = vec![];
    for e in rd {
        let e = e.map_err(io_err(id_dir, "readdir"))?;
        if let Some(n) = clone_number(&e.file_name()) {
            v.push((n, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// mounts of a snapshot and its clones

/// Mounts of this snapshot's clones (`clones`) and of the snapshot itself (`itself`), as
/// listed in /proc/self/mountinfo: btrfs mounts whose root is `<id dir>/restart-<N>` (or the
/// snapshot). Such a mount is ours if the subvolume visible at its mount point is a snapshot
/// of (or is) the recorded snapshot by UUID; when that cannot be told (the mount is covered
/// by another one, or unreachable), if it comes from the recorded device.
fn mounts_of(rec: &Rec, all: &[MountEntry], clones: bool, itself: bool) -> Vec<MountEntry> {
    let id_dir = Path::new(rec.id_fs_dir());
    all.iter()
        .filter(|e| e.fstype == "btrfs")
        .filter(|e| {
            let is_snap = e.root == Path::new(&rec.fs_path);
            let is_clone =
                e.root.parent() == Some(id_dir) && e.root.file_name().and_then(clone_number).is_some();
            if !((clones && is_clone) || (itself && is_snap)) {
                return false;
            }
            let by_uuid =
                if is_topmost(e, all) { libbtrfsutil::subvolume_info(&e.mount_point).ok() } else { None };
            match by_uuid {
                Some(i) if is_snap => same_uuid(&i.uuid().to_string(), &rec.uuid),
                Some(i) => i.parent_uuid().is_some_and(|u| same_uuid(&u.to_string(), &rec.uuid)),
                None => e.source == rec.device,
            }
        })
        .cloned()
        .collect()
}

fn mount_points(v: &[MountEntry]) -> Vec<PathBuf> {
    let mut p: Vec<PathBuf> = v.iter().map(|e| e.mount_point.clone()).collect();
    p.sort();
    p.dedup();
    p
}

/// Mount points of this snapshot's restart clones, sorted.
pub fn mounted_clones(s: &Snapshot) -> Result<Vec<PathBuf>, SnapshotError> {
    let rec = Rec::from(s)?;
    Ok(mount_points(&mounts_of(&rec, &mountinfo()?, true, false)))
}

/// The mount points of this snapshot's clones in other mount namespaces (restarts' private ones).
pub fn clone_mounts_elsewhere(s: &Snapshot) -> Result<Vec<PathBuf>, SnapshotError> {
    Ok(foreign_clone_mounts(&Rec::from(s)?).into_iter().map(|(_, m)| m.mount_point).collect())
}

/// Refuse when a clone of this snapshot is mounted in another mount namespace, naming a
/// process of each. Not counted: the copies another namespace received by propagation of a
/// clone mounted in ours (`master:N` of our mount's `shared:N` peer group, e.g. of a
/// `restart --mount-root` into a restart's private namespace made a slave of ours): they
/// vanish when ours is unmounted, which `delete` refuses without `--force` anyway.
pub fn in_use_elsewhere(s: &Snapshot) -> Result<(), SnapshotError> {
    let rec = Rec::from(s)?;
    let ours = mounts_of(&rec, &mountinfo()?, true, true);
    let foreign: Vec<(i32, PathBuf)> = foreign_clone_mounts(&rec)
        .into_iter()
        .filter(|(_, m)| !ours.iter().any(|o| o.shared.is_some() && o.shared == m.master && o.root == m.root))
        .map(|(pid, m)| (pid, m.mount_point))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(SnapshotError::InUseElsewhere {
        path: rec.path.clone(),
        users: foreign
            .iter()
            .map(|(pid, mp)| format!("pid {pid} ({}) at {}", comm(*pid), mp.display()))
            .collect(),
    })
}

/// Mounts of this snapshot's clones in mount namespaces other than ours (those of restarted
/// tasks): one (pid, mount) per namespace and mount.
fn foreign_clone_mounts(rec: &Rec) -> Vec<(i32, MountEntry)> {
    let id_dir = Path::new(rec.id_fs_dir());
    foreign_mounts(&rec.device)
        .into_iter()
        .filter(|(_, m)| {
            m.root.parent() == Some(id_dir) && m.root.file_name().and_then(clone_number).is_some()
        })
        .collect()
}

/// The btrfs mounts of `device` in every mount namespace but ours, with a process of each
/// namespace (each namespace's mountinfo read once).
fn foreign_mounts(device: &str) -> Vec<(i32, MountEntry)> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    let mine = ns("self");
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some(n) = ns(&pid.to_string()) else { continue };
        if Some(&n) == mine.as_ref() || !seen.insert(n) {
            continue;
        }
        let Ok(all) = crate::procfs::read_mountinfo(&pid.to_string()) else { continue };
        out.extend(all.into_iter().filter(|m| m.fstype == "btrfs" && m.source == device).map(|m| (pid, m)));
    }
    out
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|c| c.trim().to_string()).unwrap_or_default()
}

/// The restart clones of this snapshot that no mount namespace has mounted (their restart
/// ended or was killed): `gc` removes them.
pub fn idle_clones(s: &Snapshot) -> Result<Vec<PathBuf>, SnapshotError> {
    let rec = Rec::from(s)?;
    let Some(loc) = locate(&rec)? else { return Ok(vec![]) };
    let ours: Vec<PathBuf> =
        mounts_of(&rec, &mountinfo()?, true, false).iter().map(|m| m.root.clone()).collect();
    let foreign = foreign_clone_roots(&rec);
    let mut out = vec![];
    for (_, p) in clone_entries(&loc.id_dir)? {
        let fs_rel = Path::new(rec.id_fs_dir()).join(p.file_name().unwrap_or_default());
        if !ours.contains(&fs_rel) && !foreign.contains(&fs_rel) {
            out.push(p);
        }
    }
    Ok(out)
}

/// The roots (paths within the filesystem) of clone mounts in other namespaces.
fn foreign_clone_roots(rec: &Rec) -> Vec<PathBuf> {
    foreign_mounts(&rec.device).into_iter().map(|(_, m)| m.root).collect()
}

/// Delete one idle restart clone (see [`idle_clones`]).
pub fn delete_clone(p: &Path) -> Result<(), SnapshotError> {
    delete_subvolume(p, true)
}

/// Lazily unmount every mount of the snapshot and its clones, top mounts first.
fn detach_all(rec: &Rec) -> Result<(), SnapshotError> {
    super::detach_all(&rec.path, |all| mounts_of(rec, all, true, true))
}

// ---------------------------------------------------------------------------------------------
// delete

/// Refuse ([`SnapshotError::Refused`], naming them) when the snapshot or one of its clones
/// holds other subvolumes: its deletion would fail half-way.
pub fn check_deletable(s: &Snapshot) -> Result<(), SnapshotError> {
    match locate(&Rec::from(s)?)? {
        Some(loc) => nested::refuse_nested(&loc),
        None => Ok(()),
    }
}

/// Delete the snapshot, all its `restart-*` clones, then its `<id>` directory.
///
/// Refused with [`SnapshotError::InUse`] while a clone (or the snapshot itself) is mounted,
/// unless `force`, which lazily unmounts them first; before anything changes, also when a
/// clone holds other subvolumes ([`check_deletable`]). A snapshot that is already gone is not an
/// error. A `restart-*` entry that is not a snapshot of this snapshot is left alone, and then
/// the `<id>` directory cannot be removed (an error names it).
pub fn delete(s: &Snapshot, force: bool) -> Result<(), SnapshotError> {
    let rec = Rec::from(s)?;
    // Clones mounted in another mount namespace (a restart's private one) are in use by the
    // processes there: never pulled from under them, also not with `force`.
    in_use_elsewhere(s)?;
    // A clone holding other subvolumes cannot be deleted: say so before unmounting anything.
    check_deletable(s)?;
    let mounted = mounts_of(&rec, &mountinfo()?, true, true);
    if !mounted.is_empty() {
        if !force {
            return Err(SnapshotError::InUse { path: rec.path.clone(), mounts: mount_points(&mounted) });
        }
        detach_all(&rec)?;
        // The copies other namespaces received of ours went with them, unless one could not
        // (it holds a mount of its own there): then it is in use there.
        in_use_elsewhere(s)?;
    }
    let Some(loc) = locate(&rec)? else { return Ok(()) };
    for (_, p) in clone_entries(&loc.id_dir)? {
        match libbtrfsutil::subvolume_info(&p) {
            Ok(info) if info.parent_uuid().is_some_and(|u| same_uuid(&u.to_string(), &rec.uuid)) => {
                delete_subvolume(&p, true)?
            }
            Ok(info) => {
                return Err(SnapshotError::Refused {
                    path: p,
                    why: format!(
                        "subvolume {} is not a snapshot of {} (UUID {}); not deleting it",
                        info.id(),
                        rec.path.display(),
                        rec.uuid
                    ),
                })
            }
            Err(e) if e.kind() == libbtrfsutil::ErrorKind::NOT_SUBVOLUME => {
                // A directory left by an interrupted mount_clone: remove it if empty.
                std::fs::remove_dir(&p).map_err(io_err(&p, "rmdir"))?;
            }
            Err(e) if e.errno() == libc::ENOENT => {}
            Err(e) => return Err(bt_err(&p, "subvolume info")(e)),
        }
    }
    if let Some(snap) = &loc.snapshot {
        delete_subvolume(snap, true)?;
    }
    match std::fs::remove_dir(&loc.id_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&loc.id_dir, "rmdir")(e)),
    }
    remove_empty_chain(&loc.id_dir, snapshot_dir_depth(s));
    Ok(())
}

/// How many components the snapshot directory of a recorded snapshot has (`a/b/c`: 3):
/// its path is `<mount point>/<snapshot_dir>/<id>/snapshot`.
fn snapshot_dir_depth(s: &Snapshot) -> usize {
    let Snapshot::Btrfs { mount_point, path, .. } = s else { return 0 };
    Path::new(path)
        .strip_prefix(mount_point)
        .map(|rel| rel.components().count().saturating_sub(2))
        .unwrap_or(0)
}

/// Remove the snapshot directory chain above a deleted `<id>` directory, deepest first, as
/// long as each is empty (another checkpoint's snapshots keep it), all but its first
/// component: a deep `snapshot_dir` (`snaps/a/b`) leaves only `snaps`, as the default leaves
/// `.snapckpt`. A take racing this makes the directories again.
fn remove_empty_chain(id_dir: &Path, depth: usize) {
    let mut dir = id_dir.parent();
    for _ in 1..depth {
        let Some(d) = dir else { return };
        if std::fs::remove_dir(d).is_err() {
            return;
        }
        dir = d.parent();
    }
}

#[cfg(test)]
mod tests;
