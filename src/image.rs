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
            hostname: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
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

    /// Check the invariants a reader relies on (indices in range, sane names), so that a
    /// corrupt or hostile record gives an error instead of a panic or a write elsewhere.
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
        let n = self.objects.len();
        for (i, o) in self.objects.iter().enumerate() {
            if o.index != i {
                return bad(format!("object {i} says it is object {}", o.index));
            }
            if !o.mount.mount_point.starts_with('/') {
                return bad(format!("object {i}: mount point {:?} is not absolute", o.mount.mount_point));
            }
            if let Some(r) = &o.relinked {
                if r.name.is_empty() || r.name.contains('/') || r.name == "." || r.name == ".." || r.name.contains('\0') {
                    return bad(format!("object {i}: relinked name {:?} is not a plain file name", r.name));
                }
                if r.rel_path != format!("{}/{}", crate::relink::CHECKPOINT_DIR, r.name) {
                    return bad(format!("object {i}: relinked path {:?} is not under {}", r.rel_path, crate::relink::CHECKPOINT_DIR));
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
            for f in &t.fds {
                if f.fd < 0 {
                    return bad(format!("task {}: negative fd {}", t.pid, f.fd));
                }
                check(f.object, &format!("task {} fd {}", t.pid, f.fd))?;
            }
            for m in &t.maps {
                check(m.object, &format!("task {} mapping {:x}", t.pid, m.start))?;
            }
            for r in [&t.cwd, &t.root, &t.exe].into_iter().flatten() {
                check(r.object, &format!("task {} {}", t.pid, r.path))?;
            }
        }
        for s in &self.snapshots {
            if !s.mount_point().starts_with('/') {
                return bad(format!("snapshot mount point {:?} is not absolute", s.mount_point()));
            }
        }
        Ok(())
    }

    /// The unlinked objects that were preserved, with their relink data.
    pub fn relinked(&self) -> impl Iterator<Item = (&Object, &Relinked)> {
        self.objects.iter().filter_map(|o| o.relinked.as_ref().map(|r| (o, r)))
    }
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
    let data = serde_json::to_vec_pretty(value).map_err(|e| ImageError::Invalid { path: dst.clone(), msg: e.to_string() })?;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp, "open"))?;
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

/// Read and validate the record of an image directory.
pub fn load(dir: &Path) -> Result<Checkpoint, ImageError> {
    let p = dir.join(RECORD_FILE);
    let meta = std::fs::metadata(&p).map_err(io(&p, "stat"))?;
    if meta.len() > 256 << 20 {
        return Err(ImageError::Invalid { path: p, msg: "record larger than 256 MiB".into() });
    }
    let data = std::fs::read(&p).map_err(io(&p, "read"))?;
    let ck: Checkpoint = serde_json::from_slice(&data).map_err(|e| ImageError::Invalid { path: p.clone(), msg: e.to_string() })?;
    ck.validate(&p)?;
    Ok(ck)
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
        assert!(!generated_id("not-an-id") && !generated_id("20261126T230000Z-3fa") && !generated_id("20261126T230000Z-3fAg"));
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
            fds: vec![Fd { fd: 3, path: "/a (deleted)".into(), kind: FileKind::Regular, flags: 2, pos: 5, mnt_id: 1, dev: 1, ino: 2, nlink: 0, object: Some(0) }],
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
}
