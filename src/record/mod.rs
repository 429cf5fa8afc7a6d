//! The checkpoint record: plain data with typed fields, and the rules that tell a record that
//! belongs to itself from a corrupt or hostile one. Every stage builds or reads this record;
//! this module imports no pipeline stage (only [`names`], the naming rules they share).
//!
//! The JSON spelling is the record's version 1 (holders as `"fd 3"`, the freezer as
//! `"cgroup-v2 PATH"`): typed here, spelled as before on disk.

pub mod imported;
pub mod names;
#[cfg(test)]
pub(crate) mod tests;
mod validate;

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// Name of the record inside an image directory.
pub const RECORD_FILE: &str = "checkpoint.json";
/// `format` field of every record.
pub const FORMAT: &str = "snapckpt-checkpoint";
/// Current record version. Readers refuse other versions.
pub const VERSION: u32 = 1;
/// Largest fd number a record may hold: the kernel's default `fs.nr_open` (1048576).
pub const MAX_FD: i32 = 1 << 20;

/// A record that is not a valid checkpoint record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: not a valid checkpoint record: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: record version {found} is not supported (this snapckpt reads version {VERSION})")]
    Version { path: PathBuf, found: u32 },
}

/// What kind of inode a file reference points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileKind {
    Regular,
    Directory,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Symlink,
    /// pipe:[..], socket:[..], anon_inode:... and files on kernel-internal mounts (memfd, SysV
    /// shm): nothing a path can name. Left to the process engine.
    Anonymous,
}

impl FileKind {
    /// The name used in records (`regular`, `char-device`, ...).
    pub fn name(self) -> &'static str {
        match self {
            FileKind::Regular => "regular",
            FileKind::Directory => "directory",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
            FileKind::CharDevice => "char-device",
            FileKind::BlockDevice => "block-device",
            FileKind::Symlink => "symlink",
            FileKind::Anonymous => "anonymous",
        }
    }

    pub fn from_mode(mode: u32) -> FileKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => FileKind::Regular,
            libc::S_IFDIR => FileKind::Directory,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDevice,
            libc::S_IFBLK => FileKind::BlockDevice,
            libc::S_IFLNK => FileKind::Symlink,
            _ => FileKind::Anonymous,
        }
    }
}

/// Why an object has no path any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Unlinked {
    /// The name it was opened by is gone (or names another inode) but nlink > 0.
    NameGone,
    /// nlink == 0: no name anywhere; userspace cannot link it again.
    Orphan,
    /// Opened with O_TMPFILE and never linked (nlink == 0 but linkable).
    Tmpfile,
    /// A directory that was removed (cwd or an open directory fd).
    RemovedDir,
    /// A FIFO, socket or device node with nlink == 0.
    RemovedNode,
}

/// How an unlinked object was preserved in its filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// A hard link to the same inode.
    Link,
    /// A new inode sharing the data extents (FICLONE).
    Clone,
    /// A new inode filled with copy_file_range, hole by hole.
    CopyRange,
    /// A new inode filled with read/write, skipping holes.
    SparseCopy,
    /// A new directory, FIFO or device node made with the recorded type, mode and owner.
    Recreate,
    /// The same inode, nlink 0 included, linked by the snapckpt-relink kernel module.
    KernelLink,
}

/// A mount as the task sees it (from /proc/PID/mountinfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRef {
    pub mnt_id: u32,
    /// Mount point in the task's view (relative to its root).
    pub mount_point: String,
    /// Root of the mount within its filesystem (mountinfo field 4).
    pub fs_root: String,
    pub fstype: String,
    pub source: String,
    /// st_dev of the filesystem (makedev(major, minor)).
    pub dev: u64,
}

/// Where an unlinked object was preserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relinked {
    /// File name inside `lost+found/checkpoint`.
    pub name: String,
    /// Path relative to the mount point: `lost+found/checkpoint/<name>`.
    pub rel_path: String,
    pub method: Method,
    /// Inode number of the preserved file (the original's for `link`).
    pub ino: u64,
    /// Bytes of data written by a copy (0 for link, clone and recreate).
    pub bytes_copied: u64,
}

/// Who holds an object: a task and one of its fds, mappings, its cwd, root or exe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: i32,
    /// Recorded as `fd 3`, `map 7f00..-7f10..`, `cwd`, `exe`, `root`.
    pub what: Held,
}

/// How a task holds a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Held {
    Fd(i32),
    /// A file mapping `start-end` (hex), as /proc/PID/map_files names it.
    Map {
        start: u64,
        end: u64,
    },
    Cwd,
    Exe,
    Root,
}

impl fmt::Display for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Held::Fd(n) => write!(f, "fd {n}"),
            Held::Map { start, end } => write!(f, "map {start:x}-{end:x}"),
            Held::Cwd => f.write_str("cwd"),
            Held::Exe => f.write_str("exe"),
            Held::Root => f.write_str("root"),
        }
    }
}

impl From<Held> for String {
    fn from(h: Held) -> String {
        h.to_string()
    }
}

impl TryFrom<String> for Held {
    type Error = String;
    fn try_from(s: String) -> Result<Held, String> {
        let bad = || format!("holder {s:?} is not \"fd N\", \"map START-END\", \"cwd\", \"exe\" or \"root\"");
        if let Some(n) = s.strip_prefix("fd ") {
            return n.parse().map(Held::Fd).map_err(|_| bad());
        }
        if let Some(r) = s.strip_prefix("map ") {
            let (a, b) = r.split_once('-').ok_or_else(bad)?;
            let hex = |x: &str| u64::from_str_radix(x, 16).map_err(|_| bad());
            return Ok(Held::Map { start: hex(a)?, end: hex(b)? });
        }
        match s.as_str() {
            "cwd" => Ok(Held::Cwd),
            "exe" => Ok(Held::Exe),
            "root" => Ok(Held::Root),
            _ => Err(bad()),
        }
    }
}

impl Held {
    /// The /proc path through which a holder's file is reached.
    pub fn proc_path(&self, pid: i32) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("/proc/{pid}/{}", self.proc_name()))
    }

    /// The name under /proc/PID: `fd/3`, `map_files/7f00-7f10`, `cwd`, `exe`, `root`.
    pub fn proc_name(&self) -> String {
        match self {
            Held::Fd(n) => format!("fd/{n}"),
            Held::Map { start, end } => format!("map_files/{start:x}-{end:x}"),
            Held::Cwd => "cwd".into(),
            Held::Exe => "exe".into(),
            Held::Root => "root".into(),
        }
    }
}

/// One unlinked inode, shared by every fd and mapping of every task that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub index: usize,
    pub kind: FileKind,
    pub class: Unlinked,
    /// The path it had, in the task's view, without the " (deleted)" suffix.
    pub original_path: String,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    /// Full st_mode (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    /// Data actually allocated (st_blocks * 512).
    pub allocated: u64,
    pub mount: MountRef,
    /// The CRIU external key `file[MNTID:INO]` (hex), also the inherit-fd key at restore.
    pub criu_key: String,
    pub holders: Vec<Holder>,
    /// Filled by the relink stage.
    pub relinked: Option<Relinked>,
}

impl Object {
    pub fn criu_key_for(mnt_id: u32, ino: u64) -> String {
        format!("file[{mnt_id:x}:{ino:x}]")
    }
}

/// An open file descriptor of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    pub fd: i32,
    /// readlink of /proc/PID/fd/N, as the kernel gave it (may end in " (deleted)").
    pub path: String,
    pub kind: FileKind,
    /// Open flags from fdinfo (O_ACCMODE, O_APPEND, ...).
    pub flags: u32,
    pub pos: u64,
    pub mnt_id: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    /// Index into `Checkpoint::objects` when this fd holds an unlinked object.
    pub object: Option<usize>,
}

/// A file mapping of a task (from /proc/PID/maps and map_files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub pgoff: u64,
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub object: Option<usize>,
}

/// cwd, root or exe of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub dev: u64,
    pub ino: u64,
    pub object: Option<usize>,
}

/// One task (thread group) and the files it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub pid: i32,
    /// Its pid in its own pid namespace, when that is below snapckpt's (a container's tasks):
    /// CRIU restores such a tree, whose root is the namespace's init, in a new pid namespace
    /// with these pids there and new host pids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<i32>,
    pub ppid: i32,
    pub threads: Vec<i32>,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub cwd: Option<FileRef>,
    pub root: Option<FileRef>,
    pub exe: Option<FileRef>,
    pub fds: Vec<Fd>,
    pub maps: Vec<Mapping>,
}

/// The kind of an LVM snapshot: thin (a clone per restart) or classic (COW, restarted once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LvmKind {
    Thin,
    Classic,
}

impl LvmKind {
    pub fn name(self) -> &'static str {
        match self {
            LvmKind::Thin => "thin",
            LvmKind::Classic => "classic",
        }
    }
}

/// How the tasks were frozen. Recorded as `cgroup-v2 PATH`, `cgroup-v1 PATH` or `sigstop`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Freezer {
    CgroupV2 { path: PathBuf },
    CgroupV1 { path: PathBuf },
    Sigstop,
}

impl fmt::Display for Freezer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Freezer::CgroupV2 { path } => write!(f, "cgroup-v2 {}", path.display()),
            Freezer::CgroupV1 { path } => write!(f, "cgroup-v1 {}", path.display()),
            Freezer::Sigstop => f.write_str("sigstop"),
        }
    }
}

impl From<Freezer> for String {
    fn from(x: Freezer) -> String {
        x.to_string()
    }
}

impl TryFrom<String> for Freezer {
    type Error = String;
    fn try_from(s: String) -> Result<Freezer, String> {
        if s == "sigstop" {
            return Ok(Freezer::Sigstop);
        }
        if let Some(p) = s.strip_prefix("cgroup-v2 ") {
            return Ok(Freezer::CgroupV2 { path: p.into() });
        }
        if let Some(p) = s.strip_prefix("cgroup-v1 ") {
            return Ok(Freezer::CgroupV1 { path: p.into() });
        }
        Err(format!("freezer {s:?} is not \"cgroup-v2 PATH\", \"cgroup-v1 PATH\" or \"sigstop\""))
    }
}

/// A filesystem snapshot taken for a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "kebab-case")]
pub enum Snapshot {
    Btrfs {
        /// Mount point of the origin (snapckpt's view).
        mount_point: String,
        /// Block device of the filesystem.
        device: String,
        /// Subvolume id and path (within the filesystem) of the origin.
        origin_subvol_id: u64,
        origin_subvol_path: String,
        /// Read-only snapshot: subvolume id, UUID, path (snapckpt's view at take time) and its
        /// path within the filesystem (for mounting with subvol=).
        subvol_id: u64,
        uuid: String,
        path: String,
        fs_path: String,
        created_unix: u64,
    },
    Lvm {
        mount_point: String,
        fstype: String,
        vg: String,
        origin_lv: String,
        origin_uuid: String,
        snapshot_lv: String,
        snapshot_uuid: String,
        kind: LvmKind,
        created_unix: u64,
    },
}

impl Snapshot {
    pub fn mount_point(&self) -> &str {
        match self {
            Snapshot::Btrfs { mount_point, .. } | Snapshot::Lvm { mount_point, .. } => mount_point,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Snapshot::Btrfs { subvol_id, path, .. } => format!("btrfs subvol {subvol_id} {path}"),
            Snapshot::Lvm { vg, snapshot_lv, kind, .. } => format!("lvm {} {vg}/{snapshot_lv}", kind.name()),
        }
    }
}

/// Which engine saved the process state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Engine {
    /// Files only: the tasks were thawed and go on; restart reopens the files.
    None,
    /// CRIU dumped the tasks into this image directory. After the dump the tasks were killed,
    /// left running, or left frozen (`leave_stopped`).
    Criu {
        version: String,
        leave_running: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        leave_stopped: bool,
        images: Vec<String>,
        /// Dumped as a shell job (restored with CRIU's `--shell-job`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        shell_job: bool,
        /// Established TCP connections dumped (restored with `--tcp-established`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        tcp_established: bool,
    },
}

/// How a take covered one filesystem on which the tasks hold something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coverage {
    /// Snapshotted: a restart from the snapshot sees every file there as it was.
    Snapshot,
    /// Not snapshotted; its relinked names stay on the live filesystem, so a restart
    /// consumes them (one-shot), and its linked files are read as they are then.
    NamesKept,
    /// A memory filesystem (tmpfs): CRIU carries its unlinked files in the process image.
    EngineCarries,
    /// Not snapshotted and no unlinked file on it: its files are read as they are at restart.
    Live,
}

/// The decision for one filesystem the tasks use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsCoverage {
    pub mount_point: String,
    pub fstype: String,
    /// st_dev at take time (a btrfs restart clone has a device number of its own).
    pub dev: u64,
    pub coverage: Coverage,
    /// Why it is not snapshotted, when a snapshot was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

/// How the dirty amount of a write-back was measured (see `crate::writeback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// `cachestat(2)` of the files given: exactly their dirty pages.
    Cachestat,
    /// `/proc/meminfo` `Dirty` + `Writeback`: the whole system's.
    Meminfo,
}

/// CRIU's dump statistics (its `stats-dump`, read by `crate::criu_stats`).
/// `DumpStatsEntry`: times in microseconds, counts in pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpStats {
    /// From the start of freezing to all tasks frozen (CRIU's own freeze; inside snapckpt's
    /// take the tasks are frozen already).
    pub freezing_time: u64,
    /// From all tasks frozen to their release by CRIU.
    pub frozen_time: u64,
    /// Collecting the memory pages (into pipes).
    pub memdump_time: u64,
    /// Writing them into the image.
    pub memwrite_time: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    #[serde(default)]
    pub pages_lazy: u64,
    #[serde(default)]
    pub irmap_resolve: u64,
}

/// One CRIU pre-dump round of a take (`take --pre-dump`), before the freeze.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreDumpRound {
    /// Its directory in the image directory (`pre-N`).
    pub dir: String,
    /// How long the round took (microseconds), tasks running but for CRIU's own short freeze.
    pub duration_us: u64,
    /// CRIU's statistics of the round (its `stats-dump`), if it wrote them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<DumpStats>,
}

/// Stage timings in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub freeze_ms: u64,
    pub scan_ms: u64,
    pub relink_ms: u64,
    pub snapshot_ms: u64,
    pub dump_ms: u64,
    /// From the moment the tasks were frozen to the moment they were thawed (or killed).
    pub frozen_ms: u64,
    /// Write-back before the freeze (tasks running): time, rounds, bytes written back (the
    /// dirty amount found before each round, summed) and bytes still dirty after it.
    #[serde(default)]
    pub writeback_ms: u64,
    #[serde(default)]
    pub writeback_rounds: u32,
    #[serde(default)]
    pub writeback_bytes: u64,
    #[serde(default)]
    pub writeback_left_bytes: u64,
    /// How the dirty amount was measured: `cachestat` (the files') or `meminfo` (the system's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writeback_measure: Option<Measure>,
    /// The same in microseconds: freezing (start of the freeze to all tasks frozen), frozen
    /// (all the window), write-back.
    #[serde(default)]
    pub freezing_us: u64,
    #[serde(default)]
    pub frozen_us: u64,
    #[serde(default)]
    pub writeback_us: u64,
    /// CRIU's own statistics of its dump (`stats-dump`: microseconds, pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criu: Option<DumpStats>,
    /// All the pre-dump rounds (tasks running), milliseconds.
    #[serde(default)]
    pub pre_dump_ms: u64,
    /// CRIU pre-dump rounds before the freeze (`take --pre-dump`), in order; the dump's
    /// parent is the last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_dump: Vec<PreDumpRound>,
}

/// The whole record of one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created_unix: u64,
    /// Nanoseconds within `created_unix`'s second: orders checkpoints taken within one second
    /// (`latest`, `list`, `prune`); absent in older records (0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_ns: Option<u32>,
    pub hostname: String,
    pub job: Option<String>,
    /// How the tasks were selected, e.g. `pid 1234 (tree)` or `cgroup /sys/fs/cgroup/x`.
    pub selection: String,
    /// How they were frozen.
    pub freezer: Freezer,
    pub template: String,
    pub engine: Engine,
    pub tasks: Vec<Task>,
    pub objects: Vec<Object>,
    pub snapshots: Vec<Snapshot>,
    /// True once the relinked names were removed from the live filesystems (the snapshots
    /// keep them).
    pub links_removed: bool,
    pub timings: Timings,
    /// The kernel release the checkpoint was taken on (`uname -r`); absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// How each filesystem the tasks use was covered (records before this field: empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<FsCoverage>,
    /// Set by `snapckpt import`: where the checkpoint came from. Optional, so records without
    /// it (version 1 as before) still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imported: Option<imported::Imported>,
}

impl Checkpoint {
    pub fn new(id: &str, created_unix: u64) -> Checkpoint {
        Checkpoint {
            format: FORMAT.into(),
            version: VERSION,
            id: id.into(),
            created_unix,
            created_ns: None,
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            job: None,
            selection: String::new(),
            freezer: Freezer::Sigstop,
            template: String::new(),
            engine: Engine::None,
            tasks: vec![],
            objects: vec![],
            snapshots: vec![],
            links_removed: false,
            timings: Timings::default(),
            kernel: nix::sys::utsname::uname().ok().map(|u| u.release().to_string_lossy().into_owned()),
            filesystems: vec![],
            imported: None,
        }
    }

    /// Check the invariants a reader relies on (indices in range, sane names and numbers, mount
    /// points that cannot lead elsewhere, names and snapshots that belong to this checkpoint), so
    /// that a corrupt or hostile record gives an error instead of a panic, a write elsewhere or
    /// the removal of another checkpoint's files. `path` names the record in messages.
    pub fn validate(&self, path: &Path) -> Result<(), RecordError> {
        validate::checkpoint(self).map_err(|e| match e {
            validate::Problem::Version(found) => RecordError::Version { path: path.to_path_buf(), found },
            validate::Problem::Invalid(msg) => RecordError::Invalid { path: path.to_path_buf(), msg },
        })
    }

    /// Whether the tasks were in a pid namespace of their own, the root its init: CRIU
    /// restores them in a new one (their pids there as recorded in `ns_pid`, new host pids).
    pub fn own_pid_namespace(&self) -> bool {
        self.tasks.iter().any(|t| t.ns_pid == Some(1))
    }

    /// When it was taken, as a sort key: seconds, then nanoseconds (0 when not recorded).
    pub fn created_at(&self) -> (u64, u32) {
        (self.created_unix, self.created_ns.unwrap_or(0))
    }

    /// Whether a restart consumes this checkpoint (some relinked name lives only on a live
    /// filesystem, not in a snapshot).
    pub fn one_shot(&self) -> bool {
        let snapped: Vec<&str> = self.snapshots.iter().map(Snapshot::mount_point).collect();
        self.relinked().any(|(o, _)| !snapped.contains(&o.mount.mount_point.as_str()))
    }

    /// The unlinked objects that were preserved, with their relink data.
    pub fn relinked(&self) -> impl Iterator<Item = (&Object, &Relinked)> {
        self.objects.iter().filter_map(|o| o.relinked.as_ref().map(|r| (o, r)))
    }
}
