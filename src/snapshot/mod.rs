//! Filesystem snapshots: the stage that makes the relinked files (and everything else on the
//! filesystem) survive as they were at checkpoint time.
//!
//! The pipeline relinks unlinked open files into `<mount>/lost+found/checkpoint/` first, then
//! calls [`take`]: a read-only snapshot of the whole filesystem carries their data. (Order
//! matters: btrfs deletes orphan inodes from every new snapshot.) Restart calls
//! [`mount_clone`], which mounts a *writable* clone of the read-only snapshot, so one checkpoint
//! can be restarted any number of times; [`unmount_clone`] undoes that, and [`delete`] removes a
//! checkpoint's snapshot together with all its clones.
//!
//! Backends: btrfs ([`btrfs`]) and LVM ([`lvm`]: thin snapshots restart any number of times,
//! classic COW snapshots once; see its module documentation).
//!
//! Every function validates what it is given (checkpoint ids, the snapshot directory, the
//! fields of a record read back from disk) and returns a [`SnapshotError`] naming the path and
//! the operation; none panics on bad input.

pub mod btrfs;
mod deadline;
pub mod lvm;

pub use deadline::take_within;

use crate::record;
use serde::{Deserialize, Serialize};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The snapshot backend of a filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Btrfs,
    Lvm,
}

/// What to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpec {
    /// The mount point of the filesystem (it must be the root of a mount).
    pub mount_point: PathBuf,
    pub backend: Backend,
    /// btrfs: directory (relative to the mount root) that holds snapckpt's snapshots, default
    /// [`btrfs::DEFAULT_SNAPSHOT_DIR`] (snapper keeps ".snapshots"); must be a plain relative
    /// path without "..".
    pub snapshot_dir: Option<String>,
    /// lvm classic snapshots: COW size, e.g. "512M" (unused by btrfs).
    pub lvm_size: Option<String>,
}

/// Errors of the snapshot stage. Each names the path (or name) concerned and the operation.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    /// A libbtrfsutil operation failed.
    #[error("btrfs {op} {path}: {msg}")]
    Btrfs { path: PathBuf, op: &'static str, msg: String, errno: i32 },
    /// mount(2) of a device failed.
    #[error("mount -t {fstype} {device} -o {options} {target}: {source}")]
    Mount { device: String, target: PathBuf, fstype: &'static str, options: String, source: std::io::Error },
    /// The path given as a mount point is not the root of a mount.
    #[error(
        "{path} is not a mount point: it is inside the mount at {mount_point}; name the mount point itself"
    )]
    NotMountPoint { path: PathBuf, mount_point: PathBuf },
    /// The mount is btrfs but its root is a plain directory inside a subvolume.
    #[error("{mount_point} is not the root of a btrfs subvolume: {why}")]
    NotSubvolumeRoot { mount_point: PathBuf, why: String },
    /// The backend does not match the filesystem type.
    #[error("{path} is a {fstype} filesystem, not btrfs")]
    NotBtrfs { path: PathBuf, fstype: String },
    /// Restart clones (or the snapshot itself) are mounted.
    #[error("snapshot {path} is in use: mounted at {}; unmount first (or force the deletion)", list(mounts))]
    InUse { path: PathBuf, mounts: Vec<PathBuf> },
    /// A restart clone is mounted in another mount namespace, by the tasks of a restart.
    #[error("{}: a restart clone is in use by restored tasks in their own mount namespace ({}): stop them first (not even --force pulls a filesystem from under running tasks)", path.display(), users.join(", "))]
    InUseElsewhere { path: PathBuf, users: Vec<String> },
    /// A name or path given to snapckpt (or read from a record) is not acceptable.
    #[error("invalid {what} {value:?}: {why}")]
    Invalid { what: &'static str, value: String, why: String },
    /// snapckpt refuses to use something it found on the filesystem.
    #[error("{path}: refused: {why}")]
    Refused { path: PathBuf, why: String },
    /// What is on disk does not match the checkpoint record.
    #[error("{path}: {why}")]
    Mismatch { path: PathBuf, why: String },
    /// A backend or feature that is not available.
    #[error("{0}")]
    Unsupported(String),
    /// The snapshot did not finish in time; it may still complete in the kernel.
    #[error("the snapshot of {} did not finish within {} s (the filesystem may be frozen, e.g. by fsfreeze, or its device stalled; the kernel cannot interrupt a snapshot)", mount_point.display(), timeout.as_secs())]
    Timeout { mount_point: PathBuf, timeout: std::time::Duration },
    /// The snapshot process failed: its error's message.
    #[error("{0}")]
    Child(String),
    /// An LVM command failed: the command, its arguments, how it ended and its stderr.
    #[error("{cmd} {}: {status}: {stderr}", args.join(" "))]
    Lvm { cmd: String, args: Vec<String>, status: String, stderr: String },
}

fn list(v: &[PathBuf]) -> String {
    v.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// A writable clone of a snapshot, mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedClone {
    /// Where the clone is mounted.
    pub target: PathBuf,
    /// Where the clone subvolume lives, snapckpt's view. btrfs: through the origin's mount
    /// point when the snapshot was reachable there at mount time; otherwise (origin not
    /// mounted) its path within the filesystem, as used with `subvol=`.
    pub clone_path: PathBuf,
    /// One line for humans, e.g. `btrfs clone /@data/.snapckpt/ID/restart-1 (subvol 263) of ...`.
    pub description: String,
    /// What [`unmount_clone`] needs to find and remove the clone again.
    pub detail: CloneDetail,
}

/// Backend-specific identity of a mounted clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneDetail {
    Btrfs {
        /// Block device the clone was mounted from.
        device: String,
        /// The clone subvolume: id, UUID and path within the filesystem.
        subvol_id: u64,
        uuid: String,
        fs_path: String,
        /// UUID of the read-only snapshot it was made from.
        snapshot_uuid: String,
    },
    Lvm {
        /// The LV that is mounted: the thin restart clone, or (classic) the snapshot itself.
        vg: String,
        lv: String,
        lv_uuid: String,
        /// Its device number (makedev(major, minor)) when it was mounted.
        dev: u64,
        /// Thin clone (removed by `unmount_clone(.., true)`) or classic snapshot (kept).
        thin: bool,
        /// The checkpoint's snapshot LV and its UUID.
        snapshot_lv: String,
        snapshot_uuid: String,
    },
}

/// Take a read-only snapshot of `spec.mount_point` for checkpoint `id`.
///
/// btrfs: `<mount>/<snapshot_dir>/<id>/snapshot`; see [`btrfs::take`].
pub fn take(spec: &FsSpec, id: &str, now_unix: u64) -> Result<record::Snapshot, SnapshotError> {
    match spec.backend {
        Backend::Btrfs => btrfs::take(spec, id, now_unix),
        Backend::Lvm => lvm::take(spec, id, now_unix),
    }
}

/// Whether a snapshot of `spec` can be taken (btrfs: a subvolume root of a btrfs mount, a valid
/// snapshot directory), checked before anything is relinked. LVM is checked when it is taken.
pub fn precheck(spec: &FsSpec) -> Result<(), SnapshotError> {
    match spec.backend {
        Backend::Btrfs => btrfs::precheck(spec),
        Backend::Lvm => lvm::precheck(spec),
    }
}

/// Delete a checkpoint's snapshot and its restart clones. Refuses ([`SnapshotError::InUse`],
/// naming the mount points) while a clone is mounted, unless `force`: then the clones are
/// lazily unmounted first.
pub fn delete(s: &record::Snapshot, force: bool) -> Result<(), SnapshotError> {
    match s {
        record::Snapshot::Btrfs { .. } => btrfs::delete(s, force),
        record::Snapshot::Lvm { .. } => lvm::delete(s, force),
    }
}

/// Make a writable clone of the read-only snapshot and mount it at `target` (an existing
/// directory). On failure nothing is left behind.
pub fn mount_clone(s: &record::Snapshot, target: &Path) -> Result<MountedClone, SnapshotError> {
    match s {
        record::Snapshot::Btrfs { .. } => btrfs::mount_clone(s, target),
        record::Snapshot::Lvm { .. } => lvm::mount_clone(s, target),
    }
}

/// Refuse when a restart clone of `s` is in use in another mount namespace.
pub fn in_use_elsewhere(s: &record::Snapshot) -> Result<(), SnapshotError> {
    match s {
        record::Snapshot::Btrfs { .. } => btrfs::in_use_elsewhere(s),
        record::Snapshot::Lvm { .. } => Ok(()),
    }
}

/// Refuse when deleting `s` would fail half-way: a btrfs clone of it holds other subvolumes.
pub fn check_deletable(s: &record::Snapshot) -> Result<(), SnapshotError> {
    match s {
        record::Snapshot::Btrfs { .. } => btrfs::check_deletable(s),
        record::Snapshot::Lvm { .. } => Ok(()),
    }
}

/// Restart clones of `s` mounted nowhere (their restart ended or was killed).
pub fn idle_clones(s: &record::Snapshot) -> Result<Vec<PathBuf>, SnapshotError> {
    match s {
        record::Snapshot::Btrfs { .. } => btrfs::idle_clones(s),
        record::Snapshot::Lvm { .. } => Ok(vec![]),
    }
}

/// Check that the filesystem at a snapshot's recorded mount point is its origin before a
/// clone is mounted over it (see [`btrfs::verify_origin`]); LVM checks its origin LV when it
/// mounts.
pub fn verify_origin(s: &record::Snapshot) -> Result<(), SnapshotError> {
    match s {
        record::Snapshot::Btrfs { .. } => btrfs::verify_origin(s),
        record::Snapshot::Lvm { .. } => Ok(()),
    }
}

/// Unmount a clone made by [`mount_clone`] and, if `remove`, delete it.
pub fn unmount_clone(m: &MountedClone, remove: bool) -> Result<(), SnapshotError> {
    match &m.detail {
        CloneDetail::Btrfs { .. } => btrfs::unmount_clone(m, remove),
        CloneDetail::Lvm { .. } => lvm::unmount_clone(m, remove),
    }
}

/// The mount points of this snapshot's restart clones, from /proc/self/mountinfo, sorted.
pub fn mounted_clones(s: &record::Snapshot) -> Result<Vec<PathBuf>, SnapshotError> {
    match s {
        record::Snapshot::Btrfs { .. } => btrfs::mounted_clones(s),
        record::Snapshot::Lvm { .. } => lvm::mounted_clones(s),
    }
}

/// The mount points of this snapshot's restart clones that are mounted anywhere: here, or in
/// the private mount namespace of a restart (`restart --exec`, a CRIU restart), which the
/// host's mount table does not show. Sorted. What `list`, `inspect` and `prune` call mounted.
pub fn clones_in_use(s: &record::Snapshot) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut v = mounted_clones(s)?;
    if let record::Snapshot::Btrfs { .. } = s {
        v.extend(btrfs::clone_mounts_elsewhere(s)?);
    }
    v.sort();
    v.dedup();
    Ok(v)
}

/// Check a checkpoint id: `[A-Za-z0-9._-]`, no leading '.', at most 64 characters.
pub fn validate_id(id: &str) -> Result<(), SnapshotError> {
    if record::names::valid_id(id) {
        Ok(())
    } else {
        Err(SnapshotError::Invalid {
            what: "checkpoint id",
            value: id.into(),
            why: "must be 1-64 characters of [A-Za-z0-9._-] and not start with '.'".into(),
        })
    }
}

/// Check a snapshot directory: a relative path of plain components (no "", ".", "..", no
/// leading '/', no NUL, no ',' which would break mount options).
pub fn validate_snapshot_dir(dir: &str) -> Result<(), SnapshotError> {
    let bad = |why: &str| {
        Err(SnapshotError::Invalid { what: "snapshot directory", value: dir.into(), why: why.into() })
    };
    if dir.is_empty() {
        return bad("is empty");
    }
    if dir.starts_with('/') {
        return bad("must be relative to the mount point (no leading '/')");
    }
    if dir.len() > 1024 {
        return bad("is longer than 1024 bytes");
    }
    if dir.contains('\0') || dir.contains(',') {
        return bad("contains a NUL or a ','");
    }
    for c in dir.split('/') {
        match c {
            "" => return bad("has an empty component ('//' or a trailing '/')"),
            "." | ".." => return bad("has a '.' or '..' component"),
            c if c.len() > 255 => return bad("has a component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// One line of /proc/self/mountinfo ([`crate::procfs::MountEntry`]) and its parser.
pub(crate) use crate::procfs::MountEntry;

/// Read and parse /proc/self/mountinfo.
pub(crate) fn mountinfo() -> Result<Vec<MountEntry>, SnapshotError> {
    crate::procfs::read_mountinfo("self").map_err(|e| {
        SnapshotError::Io(crate::sys::SysError { path: e.path, syscall: e.syscall, source: e.source })
    })
}

/// Unmount `e`, the mount of restart clone `m` at its target: refused if another mount covers
/// it, [`SnapshotError::InUse`] if it is busy.
pub(crate) fn unmount_clone_mount(
    m: &MountedClone,
    e: &MountEntry,
    all: &[MountEntry],
) -> Result<(), SnapshotError> {
    if !is_topmost(e, all) {
        return Err(SnapshotError::Refused {
            path: m.target.clone(),
            why: "another mount covers the restart clone; unmount it first".into(),
        });
    }
    match nix::mount::umount2(&m.target, nix::mount::MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            Err(SnapshotError::InUse { path: m.clone_path.clone(), mounts: vec![m.target.clone()] })
        }
        Err(err) => Err(SnapshotError::Io(crate::sys::SysError {
            path: m.target.clone(),
            syscall: "umount",
            source: err.into(),
        })),
    }
}

/// Lazily unmount every mount `ours` picks out of /proc/self/mountinfo, top mounts first (a
/// covered one that is never on top is refused), until none is left; `what` (a snapshot)
/// names it if 64 rounds do not end it. Shared by the btrfs and LVM backends.
pub(crate) fn detach_all(
    what: &Path,
    ours: impl Fn(&[MountEntry]) -> Vec<MountEntry>,
) -> Result<(), SnapshotError> {
    for _ in 0..64 {
        let all = mountinfo()?;
        let ours = ours(&all);
        if ours.is_empty() {
            return Ok(());
        }
        let top: Vec<&MountEntry> = ours.iter().filter(|e| is_topmost(e, &all)).collect();
        if top.is_empty() {
            return Err(SnapshotError::Refused {
                path: ours[0].mount_point.clone(),
                why: "a restart clone mounted here is covered by another mount; unmount that first".into(),
            });
        }
        for e in top {
            match nix::mount::umount2(&e.mount_point, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(err) => {
                    return Err(SnapshotError::Io(crate::sys::SysError {
                        path: e.mount_point.clone(),
                        syscall: "umount2(MNT_DETACH)",
                        source: err.into(),
                    }))
                }
            }
        }
    }
    Err(SnapshotError::Refused {
        path: what.into(),
        why: "its mounts (its own and its clones') stay after 64 rounds of unmounting".into(),
    })
}

/// The mount that is visible at its mount point: no other entry is mounted on top of it.
pub(crate) fn is_topmost(e: &MountEntry, all: &[MountEntry]) -> bool {
    !all.iter().any(|o| o.parent_id == e.mnt_id && o.mount_point == e.mount_point)
}

/// True if `p` contains a NUL byte (libbtrfsutil would panic on it).
pub(crate) fn has_nul(p: &Path) -> bool {
    p.as_os_str().as_bytes().contains(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_id("20261126T210000Z-abcd").is_ok());
        for bad in ["", ".x", "../x", "a/b", "a b", "a\0b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in [".snapckpt", ".snapshots/snapckpt", "a.b/c-d"] {
            assert!(validate_snapshot_dir(good).is_ok(), "{good:?}");
        }
        for bad in ["", "/abs", "..", "a/../b", "a//b", "a/", "./a", "a,b", "a\0"] {
            assert!(validate_snapshot_dir(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn topmost_of_mountinfo_lines() {
        let t = b"44 27 0:39 /@data /tmp/a\\040b rw,relatime shared:5 - btrfs /dev/loop0 rw,subvolid=256,subvol=/@data\n\
                  garbage line\n\
                  45 44 0:39 /x\\134y /tmp/c rw - btrfs /dev/loop0 rw,subvolid=258,subvol=/x\n\
                  46 45 0:40 / /tmp/c rw - tmpfs none rw\n";
        // the parsing itself is procfs's test of the same lines; here: which mount is on top
        let m = crate::procfs::parse_mountinfo(t);
        assert_eq!(m.len(), 3);
        assert!(is_topmost(&m[0], &m));
        assert!(!is_topmost(&m[1], &m), "46 is mounted over 45 at /tmp/c");
        assert!(is_topmost(&m[2], &m));
    }
}
