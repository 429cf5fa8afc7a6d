//! The checkpoint image: a directory holding `checkpoint.json` (this module's versioned,
//! self-describing record) and, with the CRIU engine, CRIU's own image files.
//!
//! An image directory is built as `<root>/.<id>.partial` and renamed to `<root>/<id>` only when
//! complete, so an image is either whole or absent. The record itself is written atomically
//! (temporary file, fsync, rename, fsync of the directory).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the record inside an image directory.
pub const RECORD_FILE: &str = "checkpoint.json";
/// `format` field of every record.
pub const FORMAT: &str = "snapckpt-checkpoint";
/// Current record version. Readers refuse other versions.
pub const VERSION: u32 = 1;
/// Largest record [`load`] reads.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;
/// Largest fd number a record may hold: the kernel's default `fs.nr_open` (1048576).
pub const MAX_FD: i32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{syscall} {path}: {source}")]
    Io { path: PathBuf, syscall: &'static str, source: std::io::Error },
    #[error("{path}: not a valid checkpoint record: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("{path}: record version {found} is not supported (this snapckpt reads version {VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("no checkpoint {0:?} in {1}")]
    NotFound(String, PathBuf),
}

fn io<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { path: path.to_path_buf(), syscall, source }
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
    /// `fd 3`, `map 7f00..-7f10..`, `cwd`, `exe`, `root`.
    pub what: String,
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
        /// "thin" or "classic".
        kind: String,
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
            Snapshot::Lvm { vg, snapshot_lv, kind, .. } => format!("lvm {kind} {vg}/{snapshot_lv}"),
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
    },
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
}

/// The whole record of one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub format: String,
    pub version: u32,
    pub id: String,
    pub created_unix: u64,
    pub hostname: String,
    pub job: Option<String>,
    /// How the tasks were selected, e.g. `pid 1234 (tree)` or `cgroup /sys/fs/cgroup/x`.
    pub selection: String,
    /// How they were frozen: `cgroup-v2 PATH`, `cgroup-v1 PATH` or `sigstop`.
    pub freezer: String,
    pub template: String,
    pub engine: Engine,
    pub tasks: Vec<Task>,
    pub objects: Vec<Object>,
    pub snapshots: Vec<Snapshot>,
    /// True once the relinked names were removed from the live filesystems (the snapshots
    /// keep them).
    pub links_removed: bool,
    pub timings: Timings,
}

impl Checkpoint {
    pub fn new(id: &str, created_unix: u64) -> Checkpoint {
        Checkpoint {
            format: FORMAT.into(),
            version: VERSION,
            id: id.into(),
            created_unix,
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            job: None,
            selection: String::new(),
            freezer: String::new(),
            template: String::new(),
            engine: Engine::None,
            tasks: vec![],
            objects: vec![],
            snapshots: vec![],
            links_removed: false,
            timings: Timings::default(),
        }
    }

    /// Check the invariants a reader relies on (indices in range, sane names and numbers, mount
    /// points that cannot lead elsewhere, names and snapshots that belong to this checkpoint), so
    /// that a corrupt or hostile record gives an error instead of a panic, a write elsewhere or
    /// the removal of another checkpoint's files.
    pub fn validate(&self, path: &Path) -> Result<(), ImageError> {
        let bad = |msg: String| Err(ImageError::Invalid { path: path.to_path_buf(), msg });
        if self.format != FORMAT {
            return bad(format!("format is {:?}, expected {FORMAT:?}", self.format));
        }
        if self.version != VERSION {
            return Err(ImageError::Version { path: path.to_path_buf(), found: self.version });
        }
        if !valid_id(&self.id) {
            return bad(format!("checkpoint id {:?} has characters outside [A-Za-z0-9._-]", self.id));
        }
        let id = &self.id;
        // The names of this checkpoint are the ones its own template makes for its own id.
        let template = if self.objects.iter().any(|o| o.relinked.is_some()) {
            match crate::relink::Template::parse(&self.template) {
                Ok(t) => Some(t),
                Err(e) => return bad(format!("template: {e}")),
            }
        } else {
            None
        };
        let n = self.objects.len();
        for (i, o) in self.objects.iter().enumerate() {
            if o.index != i {
                return bad(format!("object {i} says it is object {}", o.index));
            }
            if !o.mount.mount_point.starts_with('/') {
                return bad(format!("object {i}: mount point {:?} is not absolute", o.mount.mount_point));
            }
            if !normalized_abs(&o.mount.mount_point) {
                return bad(format!("object {i}: mount point {:?} is not a normalized absolute path (no '.', '..', '//' or NUL)", o.mount.mount_point));
            }
            let actual = FileKind::from_mode(o.mode);
            if o.kind != actual {
                return bad(format!(
                    "object {i}: kind is {:?} but its mode {:o} is that of a {}",
                    o.kind.name(),
                    o.mode,
                    actual.name()
                ));
            }
            for h in &o.holders {
                if h.pid <= 0 {
                    return bad(format!(
                        "object {i}: holder pid {} is not a process id (must be > 0)",
                        h.pid
                    ));
                }
            }
            if let Some(r) = &o.relinked {
                if r.name.is_empty()
                    || r.name.contains('/')
                    || r.name == "."
                    || r.name == ".."
                    || r.name.contains('\0')
                {
                    return bad(format!("object {i}: relinked name {:?} is not a plain file name", r.name));
                }
                if r.rel_path != format!("{}/{}", crate::relink::CHECKPOINT_DIR, r.name) {
                    return bad(format!(
                        "object {i}: relinked path {:?} is not under {}",
                        r.rel_path,
                        crate::relink::CHECKPOINT_DIR
                    ));
                }
                if let Some(t) = &template {
                    match t.match_id(&r.name) {
                        Some(m) if m == *id => {}
                        Some(m) => {
                            return bad(format!("object {i}: relinked name {:?} is a name of checkpoint {m}, not of this checkpoint {id}: a record may only name its own files", r.name));
                        }
                        None => {
                            return bad(format!("object {i}: relinked name {:?} is not a name of checkpoint {id} (template {:?}): a record may only name its own files", r.name, self.template));
                        }
                    }
                }
            }
        }
        let check = |o: Option<usize>, what: &str| -> Result<(), ImageError> {
            match o {
                Some(i) if i >= n => bad(format!("{what} refers to object {i}, but there are {n}")),
                _ => Ok(()),
            }
        };
        for t in &self.tasks {
            if t.pid <= 0 {
                return bad(format!("task pid {} is not a process id (must be > 0)", t.pid));
            }
            if t.ppid < 0 {
                return bad(format!("task {}: parent pid {} is negative", t.pid, t.ppid));
            }
            if let Some(tid) = t.threads.iter().find(|&&tid| tid <= 0) {
                return bad(format!("task {}: thread id {tid} is not a thread id (must be > 0)", t.pid));
            }
            for f in &t.fds {
                if f.fd < 0 {
                    return bad(format!("task {}: negative fd {}", t.pid, f.fd));
                }
                if f.fd > MAX_FD {
                    return bad(format!("task {}: fd {} is above {MAX_FD}, the largest fd number Linux allows by default (fs.nr_open)", t.pid, f.fd));
                }
                if f.pos > i64::MAX as u64 {
                    return bad(format!(
                        "task {} fd {}: file position {} is beyond the largest file offset (2^63-1)",
                        t.pid, f.fd, f.pos
                    ));
                }
                check(f.object, &format!("task {} fd {}", t.pid, f.fd))?;
            }
            for m in &t.maps {
                if m.pgoff > i64::MAX as u64 {
                    return bad(format!(
                        "task {} mapping {:x}: file offset {} is beyond the largest file offset (2^63-1)",
                        t.pid, m.start, m.pgoff
                    ));
                }
                check(m.object, &format!("task {} mapping {:x}", t.pid, m.start))?;
            }
            for r in [&t.cwd, &t.root, &t.exe].into_iter().flatten() {
                check(r.object, &format!("task {} {}", t.pid, r.path))?;
            }
        }
        for (k, s) in self.snapshots.iter().enumerate() {
            if !s.mount_point().starts_with('/') {
                return bad(format!("snapshot mount point {:?} is not absolute", s.mount_point()));
            }
            if !normalized_abs(s.mount_point()) {
                return bad(format!("snapshot {k}: mount point {:?} is not a normalized absolute path (no '.', '..', '//' or NUL)", s.mount_point()));
            }
            match s {
                Snapshot::Btrfs { path: p, fs_path, .. } => {
                    for (field, v) in [("path", p), ("fs_path", fs_path)] {
                        if !normalized_abs(v) {
                            return bad(format!("snapshot {k}: {field} {v:?} is not a normalized absolute path (no '.', '..', '//' or NUL)"));
                        }
                        let mut comps = v.rsplit('/');
                        let (last, owner) = (comps.next(), comps.next());
                        let (Some(crate::snapshot::btrfs::SNAPSHOT_NAME), Some(owner)) = (last, owner) else {
                            return bad(format!(
                                "snapshot {k}: {field} {v:?} does not end in <checkpoint id>/{}",
                                crate::snapshot::btrfs::SNAPSHOT_NAME
                            ));
                        };
                        if owner != id {
                            return bad(format!("snapshot {k}: {field} {v:?} is the snapshot of another checkpoint ({owner}), not of this checkpoint {id}: a record may only name its own snapshots"));
                        }
                    }
                }
                Snapshot::Lvm { vg, snapshot_lv, .. } => {
                    let own = crate::snapshot::lvm::snapshot_lv_name(id);
                    if *snapshot_lv != own {
                        return bad(format!("snapshot {k}: snapshot_lv {vg}/{snapshot_lv} is not the snapshot LV of this checkpoint ({own}); it may be the snapshot of another checkpoint: a record may only name its own snapshots"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The unlinked objects that were preserved, with their relink data.
    pub fn relinked(&self) -> impl Iterator<Item = (&Object, &Relinked)> {
        self.objects.iter().filter_map(|o| o.relinked.as_ref().map(|r| (o, r)))
    }
}

/// Whether `p` is a normalized absolute path: "/" or "/a/b", without empty, "." or ".."
/// components and without NUL.
pub fn normalized_abs(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.contains('\0')
            && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// Checkpoint ids (and everything derived from them in paths) use only these characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether `id` has exactly the shape [`new_id`] makes (`YYYYMMDDTHHMMSSZ-hhhh`): used where a
/// directory is removed on its name alone (`delete --force` of an unreadable record).
pub fn generated_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 21
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && &b[15..17] == b"Z-"
        && b[17..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// A new checkpoint id: UTC time and 4 random hex digits, e.g. `20261126T230102Z-3fa2`.
pub fn new_id(now_unix: u64) -> String {
    format!("{}-{}", crate::sys::utc_compact(now_unix), crate::sys::random_hex(2))
}

/// Write `value` as JSON to `dir/name` atomically: temp file, fsync, rename, fsync dir.
pub fn write_json_atomic<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<(), ImageError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let dst = dir.join(name);
    let data = serde_json::to_vec_pretty(value)
        .map_err(|e| ImageError::Invalid { path: dst.clone(), msg: e.to_string() })?;
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp, "open"))?;
    f.write_all(&data).map_err(io(&tmp, "write"))?;
    f.write_all(b"\n").map_err(io(&tmp, "write"))?;
    f.sync_all().map_err(io(&tmp, "fsync"))?;
    drop(f);
    std::fs::rename(&tmp, &dst).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        ImageError::Io { path: dst.clone(), syscall: "rename", source: e }
    })?;
    crate::sys::fsync_dir(dir).map_err(io(dir, "fsync"))?;
    Ok(())
}

/// Read and validate the record of an image directory. The record must be a regular file (a
/// symlink, FIFO or device is refused without reading it) of at most [`MAX_RECORD_BYTES`]; an
/// image directory whose name is a generated id must hold the record of that id.
pub fn load(dir: &Path) -> Result<Checkpoint, ImageError> {
    let p = dir.join(RECORD_FILE);
    let data = read_record(&p)?;
    let ck: Checkpoint = serde_json::from_slice(&data)
        .map_err(|e| ImageError::Invalid { path: p.clone(), msg: e.to_string() })?;
    ck.validate(&p)?;
    if let Some(name) = dir.file_name().and_then(|n| n.to_str()) {
        if generated_id(name) && name != ck.id {
            return Err(ImageError::Invalid {
                path: p,
                msg: format!("the record is of checkpoint {}, but its image directory is named {name}: an image directory holds the record of its own id only", ck.id),
            });
        }
    }
    Ok(ck)
}

/// The bytes of the record file `p`: opened without following a symlink and without blocking
/// (a FIFO), checked to be a regular file, read up to the size limit.
fn read_record(p: &Path) -> Result<Vec<u8>, ImageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let invalid = |msg: String| ImageError::Invalid { path: p.to_path_buf(), msg };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(p);
    let f = match f {
        Ok(f) => f,
        Err(e)
            if e.raw_os_error() == Some(libc::ELOOP)
                && std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink()) =>
        {
            let to = std::fs::read_link(p).map(|t| format!(" to {}", t.display())).unwrap_or_default();
            return Err(invalid(format!(
                "it is a symbolic link{to}, not a regular file; snapckpt does not follow links to records"
            )));
        }
        Err(e) => return Err(ImageError::Io { path: p.to_path_buf(), syscall: "open", source: e }),
    };
    crate::sys::read_regular(f, MAX_RECORD_BYTES).map_err(|e| match e {
        crate::sys::ReadRegularError::Io { syscall, source } => {
            ImageError::Io { path: p.to_path_buf(), syscall, source }
        }
        crate::sys::ReadRegularError::NotRegular(what) => {
            invalid(format!("it is {what}, not a regular file"))
        }
        crate::sys::ReadRegularError::TooBig => {
            invalid(format!("record larger than {} MiB", MAX_RECORD_BYTES >> 20))
        }
    })
}

/// Image directories with their records (or why a record could not be read).
pub type Listed = Vec<(PathBuf, Result<Checkpoint, ImageError>)>;

/// The image directories of `root`: complete checkpoints, sorted by creation time.
pub fn list(root: &Path) -> Result<Listed, ImageError> {
    let mut out = vec![];
    let rd = match std::fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(ImageError::Io { path: root.to_path_buf(), syscall: "opendir", source: e }),
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !valid_id(&name) || !e.path().is_dir() {
            continue;
        }
        let p = e.path();
        let r = load(&p);
        out.push((p, r));
    }
    out.sort_by_key(|(p, r)| (r.as_ref().map(|c| c.created_unix).unwrap_or(0), p.clone()));
    Ok(out)
}

/// Find an image directory by id or by path.
pub fn resolve(root: &Path, id_or_path: &str) -> Result<PathBuf, ImageError> {
    let as_path = Path::new(id_or_path);
    if id_or_path.contains('/') {
        if as_path.join(RECORD_FILE).exists() {
            return Ok(as_path.to_path_buf());
        }
        return Err(ImageError::NotFound(id_or_path.into(), as_path.to_path_buf()));
    }
    if !valid_id(id_or_path) {
        return Err(ImageError::NotFound(id_or_path.into(), root.to_path_buf()));
    }
    let p = root.join(id_or_path);
    if p.join(RECORD_FILE).exists() {
        Ok(p)
    } else {
        Err(ImageError::NotFound(id_or_path.into(), root.to_path_buf()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        let id = new_id(1795734000);
        assert!(valid_id(&id), "{id}");
        assert!(generated_id(&id), "{id}");
        assert!(
            !generated_id("not-an-id")
                && !generated_id("20261126T230000Z-3fa")
                && !generated_id("20261126T230000Z-3fAg")
        );
        assert!(id.starts_with("20261126T230000Z-"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(".hidden"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
    }

    #[test]
    fn roundtrip_and_validation() {
        let d = std::env::temp_dir().join(format!("snapckpt-img-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut ck = Checkpoint::new("20261126T210000Z-abcd", 1);
        ck.tasks.push(Task {
            pid: 10,
            ppid: 1,
            threads: vec![10],
            comm: "x".into(),
            cmdline: vec![],
            cwd: None,
            root: None,
            exe: None,
            fds: vec![Fd {
                fd: 3,
                path: "/a (deleted)".into(),
                kind: FileKind::Regular,
                flags: 2,
                pos: 5,
                mnt_id: 1,
                dev: 1,
                ino: 2,
                nlink: 0,
                object: Some(0),
            }],
            maps: vec![],
        });
        write_json_atomic(&d, RECORD_FILE, &ck).unwrap();
        // object 0 does not exist: refused, no panic
        let e = load(&d).unwrap_err();
        assert!(e.to_string().contains("refers to object 0"), "{e}");
        ck.tasks[0].fds[0].object = None;
        write_json_atomic(&d, RECORD_FILE, &ck).unwrap();
        assert_eq!(load(&d).unwrap(), ck);
        // unknown key refused
        std::fs::write(d.join(RECORD_FILE), br#"{"format":"snapckpt-checkpoint","bogus":1}"#).unwrap();
        assert!(load(&d).is_err());
        // garbage refused
        std::fs::write(d.join(RECORD_FILE), b"\xff\x00garbage").unwrap();
        assert!(load(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
    /// A record with one relinked object, one btrfs snapshot and one task, all of checkpoint
    /// `ID`, that validates.
    const ID: &str = "20261126T210000Z-abcd";
    fn good() -> Checkpoint {
        let mut ck = Checkpoint::new(ID, 1);
        ck.template = crate::relink::DEFAULT_TEMPLATE.into();
        let mount = MountRef {
            mnt_id: 40,
            mount_point: "/srv/data".into(),
            fs_root: "/".into(),
            fstype: "btrfs".into(),
            source: "/dev/loop0".into(),
            dev: 1,
        };
        let name = format!("unlink-at-restart-{ID}-1");
        ck.objects.push(Object {
            index: 0,
            kind: FileKind::Regular,
            class: Unlinked::Orphan,
            original_path: "/srv/data/a".into(),
            dev: 1,
            ino: 2,
            nlink: 0,
            size: 5,
            mode: libc::S_IFREG | 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            allocated: 4096,
            mount,
            criu_key: Object::criu_key_for(40, 2),
            holders: vec![Holder { pid: 10, what: "fd 3".into() }],
            relinked: Some(Relinked {
                rel_path: format!("{}/{name}", crate::relink::CHECKPOINT_DIR),
                name,
                method: Method::Clone,
                ino: 3,
                bytes_copied: 0,
            }),
        });
        ck.tasks.push(Task {
            pid: 10,
            ppid: 0,
            threads: vec![10, 11],
            comm: "x".into(),
            cmdline: vec![],
            cwd: None,
            root: None,
            exe: None,
            fds: vec![Fd {
                fd: MAX_FD,
                path: "/srv/data/a (deleted)".into(),
                kind: FileKind::Regular,
                flags: 2,
                pos: i64::MAX as u64,
                mnt_id: 40,
                dev: 1,
                ino: 2,
                nlink: 0,
                object: Some(0),
            }],
            maps: vec![],
        });
        ck.snapshots.push(Snapshot::Btrfs {
            mount_point: "/srv/data".into(),
            device: "/dev/loop0".into(),
            origin_subvol_id: 5,
            origin_subvol_path: "/".into(),
            subvol_id: 256,
            uuid: "00000000-0000-0000-0000-000000000000".into(),
            path: format!("/srv/data/.snapckpt/{ID}/snapshot"),
            fs_path: format!("/.snapckpt/{ID}/snapshot"),
            created_unix: 1,
        });
        ck
    }

    fn lvm(snapshot_lv: &str) -> Snapshot {
        Snapshot::Lvm {
            mount_point: "/srv/lv".into(),
            fstype: "xfs".into(),
            vg: "vg0".into(),
            origin_lv: "data".into(),
            origin_uuid: "u1".into(),
            snapshot_lv: snapshot_lv.into(),
            snapshot_uuid: "u2".into(),
            kind: "thin".into(),
            created_unix: 1,
        }
    }

    #[test]
    fn normalized_paths() {
        for p in ["/", "/a", "/a/b.c/..d", "/srv/data"] {
            assert!(normalized_abs(p), "{p:?}");
        }
        for p in
            ["", "a", "a/b", "//", "/a/", "/a//b", "/..", "/../victim", "/a/../b", "/a/.", "/./a", "/a\0b"]
        {
            assert!(!normalized_abs(p), "{p:?}");
        }
    }

    /// Every field a consumer acts on is refused when it is out of range, leads elsewhere, or
    /// belongs to another checkpoint.
    #[test]
    fn validation_refusals() {
        let p = Path::new("ck.json");
        good().validate(p).unwrap();
        let mut lv = good();
        lv.snapshots.push(lvm(&crate::snapshot::lvm::snapshot_lv_name(ID)));
        lv.validate(p).unwrap();
        let mut root = good();
        root.objects[0].mount.mount_point = "/".into();
        root.validate(p).unwrap();

        let other = "20261127T000000Z-0bad";
        type Mutation = Box<dyn Fn(&mut Checkpoint)>;
        let cases: Vec<(&str, Mutation, &str)> = vec![
            (
                "object mount point with ..",
                Box::new(|c| c.objects[0].mount.mount_point = "/../victim".into()),
                "object 0: mount point \"/../victim\" is not a normalized absolute path",
            ),
            (
                "object mount point with //",
                Box::new(|c| c.objects[0].mount.mount_point = "/srv//data".into()),
                "not a normalized absolute path",
            ),
            (
                "object mount point with .",
                Box::new(|c| c.objects[0].mount.mount_point = "/srv/./data".into()),
                "not a normalized absolute path",
            ),
            (
                "object mount point with NUL",
                Box::new(|c| c.objects[0].mount.mount_point = "/srv/\0".into()),
                "not a normalized absolute path",
            ),
            (
                "snapshot mount point with ..",
                Box::new(|c| set_btrfs(c, "mount_point", "/srv/data/../../etc")),
                "snapshot 0: mount point \"/srv/data/../../etc\" is not a normalized",
            ),
            (
                "record id differs from the names",
                Box::new(move |c| c.id = other.into()),
                "is a name of checkpoint 20261126T210000Z-abcd, not of this checkpoint 20261127T000000Z-0bad",
            ),
            (
                "name not from the template",
                Box::new(|c| rename(c, "something-else")),
                "is not a name of checkpoint",
            ),
            ("template invalid", Box::new(|c| c.template = "../%t".into()), "template:"),
            (
                "btrfs snapshot of another checkpoint",
                Box::new(move |c| {
                    set_btrfs(c, "path", &format!("/srv/data/.snapckpt/{other}/snapshot"));
                    set_btrfs(c, "fs_path", &format!("/.snapckpt/{other}/snapshot"));
                }),
                "is the snapshot of another checkpoint (20261127T000000Z-0bad)",
            ),
            (
                "btrfs fs_path of another checkpoint",
                Box::new(move |c| set_btrfs(c, "fs_path", &format!("/.snapckpt/{other}/snapshot"))),
                "fs_path",
            ),
            (
                "btrfs path not a snapshot",
                Box::new(|c| set_btrfs(c, "path", "/srv/data/.snapckpt/x")),
                "does not end in <checkpoint id>/snapshot",
            ),
            (
                "btrfs path with ..",
                Box::new(|c| set_btrfs(c, "path", &format!("/srv/../etc/{ID}/snapshot"))),
                "is not a normalized absolute path",
            ),
            (
                "lvm snapshot of another checkpoint",
                Box::new(move |c| c.snapshots.push(lvm(&format!("snapckpt-{other}")))),
                "is not the snapshot LV of this checkpoint",
            ),
            ("pid -1", Box::new(|c| c.tasks[0].pid = -1), "task pid -1 is not a process id"),
            ("pid 0", Box::new(|c| c.tasks[0].pid = 0), "task pid 0 is not a process id"),
            ("ppid -1", Box::new(|c| c.tasks[0].ppid = -1), "parent pid -1"),
            ("thread 0", Box::new(|c| c.tasks[0].threads.push(0)), "thread id 0"),
            ("holder pid -1", Box::new(|c| c.objects[0].holders[0].pid = -1), "holder pid -1"),
            ("fd i32::MAX", Box::new(|c| c.tasks[0].fds[0].fd = i32::MAX), "fd 2147483647 is above 1048576"),
            ("fd MAX_FD + 1", Box::new(|c| c.tasks[0].fds[0].fd = MAX_FD + 1), "is above"),
            ("fd negative", Box::new(|c| c.tasks[0].fds[0].fd = -1), "negative fd"),
            ("position beyond off_t", Box::new(|c| c.tasks[0].fds[0].pos = u64::MAX), "file position"),
            (
                "kind regular for a FIFO",
                Box::new(|c| c.objects[0].mode = libc::S_IFIFO | 0o600),
                "kind is \"regular\" but its mode 10600 is that of a fifo",
            ),
            ("kind fifo for a file", Box::new(|c| c.objects[0].kind = FileKind::Fifo), "kind is \"fifo\""),
        ];
        for (what, f, expect) in cases {
            let mut c = good();
            f(&mut c);
            let e = c.validate(p).unwrap_err().to_string();
            assert!(
                e.starts_with("ck.json: not a valid checkpoint record: ") && e.contains(expect),
                "{what}: {e}"
            );
        }

        fn set_btrfs(c: &mut Checkpoint, field: &str, v: &str) {
            let Snapshot::Btrfs { mount_point, path, fs_path, .. } = &mut c.snapshots[0] else {
                unreachable!()
            };
            *match field {
                "mount_point" => mount_point,
                "path" => path,
                _ => fs_path,
            } = v.into();
        }
        fn rename(c: &mut Checkpoint, n: &str) {
            let r = c.objects[0].relinked.as_mut().unwrap();
            r.name = n.into();
            r.rel_path = format!("{}/{n}", crate::relink::CHECKPOINT_DIR);
        }
    }

    /// `load` reads a regular file only, never more than the limit, and refuses a record in a
    /// directory named after another checkpoint.
    #[test]
    fn load_refuses_what_is_not_a_record() {
        let d = std::env::temp_dir().join(format!("snapckpt-img-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let t0 = std::time::Instant::now();
        let (fifo, link, dir, good_dir, other_dir) =
            (d.join("fifo"), d.join("link"), d.join("dir"), d.join(ID), d.join("20261127T000000Z-0bad"));
        for x in [&fifo, &link, &dir, &good_dir, &other_dir] {
            std::fs::create_dir_all(x).unwrap();
        }
        nix::unistd::mkfifo(&fifo.join(RECORD_FILE), nix::sys::stat::Mode::from_bits_truncate(0o600))
            .unwrap();
        std::os::unix::fs::symlink("/dev/zero", link.join(RECORD_FILE)).unwrap();
        std::fs::create_dir(dir.join(RECORD_FILE)).unwrap();
        for (x, expect) in [
            (&fifo, "it is a FIFO, not a regular file"),
            (&link, "it is a symbolic link to /dev/zero, not a regular file"),
            (&dir, "it is a directory, not a regular file"),
        ] {
            let e = load(x).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{}: not a valid checkpoint record: ", x.join(RECORD_FILE).display()))
                    && e.contains(expect),
                "{e}"
            );
        }
        write_json_atomic(&good_dir, RECORD_FILE, &good()).unwrap();
        assert_eq!(load(&good_dir).unwrap(), good());
        write_json_atomic(&other_dir, RECORD_FILE, &good()).unwrap();
        let e = load(&other_dir).unwrap_err().to_string();
        assert!(e.contains("is named 20261127T000000Z-0bad"), "{e}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "took {:?}", t0.elapsed());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
