//! Image storage: the directories under an image root that hold a checkpoint's record
//! (`checkpoint.json`, see [`crate::record`]) and CRIU's image files.
//!
//! An image directory is built as `<root>/.<id>.partial` ([`ImageDir`], locked while a take
//! runs) and renamed to `<root>/<id>` only when complete, so an image is either whole or
//! absent. A failed take keeps CRIU's log in `<root>/.<id>.failed`; a deletion renames the
//! directory to `<root>/.<id>.deleting` before removing it. [`State`] names these traces;
//! `gc` reads them back with [`State::of_name`]. The record itself is written atomically
//! (temporary file, fsync, rename, fsync of the directory).

use crate::record::names::{generated_id, valid_id};
use crate::record::{Checkpoint, RecordError, RECORD_FILE};
use crate::sys;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Largest record [`load`] reads.
pub const MAX_RECORD_BYTES: u64 = 256 << 20;
/// The default image root.
pub const DEFAULT_IMAGE_ROOT: &str = "/var/lib/snapckpt/images";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    #[error("{path}: not a valid checkpoint record: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("no checkpoint {0:?} in {1}")]
    NotFound(String, PathBuf),
    #[error("image root {}: permission denied: image roots are root's (mode 0700); run snapckpt as root", .0.display())]
    RootDenied(PathBuf),
    #[error("image root {}: {why}. An image root must be a directory owned by root that no one else can write to (chown root DIR; chmod 0700 DIR), below directories only root can change: a user who can write there could steer what root writes, mounts and unlinks", path.display())]
    Untrusted { path: PathBuf, why: String },
}

/// The image root is a boundary like `lost+found/checkpoint`: only root may be able to change
/// what is in it or where it leads. Every directory on the way must be root's and not
/// writable by others (a sticky one like /tmp is accepted), no symlinks; the root itself
/// root-owned and writable by root only. With `create`, a missing root is made (0700).
pub fn trusted_root(root: &Path, create: bool) -> Result<(), ImageError> {
    let abs = if root.is_absolute() {
        root.to_path_buf()
    } else {
        std::env::current_dir().map_err(io(root, "getcwd"))?.join(root)
    };
    let untrusted = |why: String| ImageError::Untrusted { path: abs.clone(), why };
    let parent = abs.parent().unwrap_or(Path::new("/"));
    sys::trusted_dirs(parent, create).map_err(untrusted)?;
    let md = match std::fs::symlink_metadata(&abs) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(&abs) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(&abs, "mkdir")(e)),
                _ => {}
            }
            std::fs::symlink_metadata(&abs).map_err(io(&abs, "lstat"))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&abs, "lstat")(e)),
        Ok(md) => md,
    };
    use std::os::unix::fs::MetadataExt;
    if md.file_type().is_symlink() {
        return Err(untrusted("it is a symbolic link".into()));
    }
    if !md.is_dir() {
        return Err(untrusted("it is not a directory".into()));
    }
    if md.uid() != 0 || md.mode() & 0o022 != 0 {
        return Err(untrusted(format!("it is owned by uid {} with mode {:o}", md.uid(), md.mode() & 0o7777)));
    }
    Ok(())
}

fn io<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io(crate::sys::SysError { path: path.to_path_buf(), syscall, source })
}

/// The traces an image directory leaves under its root besides a published `<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `.<id>.partial`: a take writing it (locked), or one that died.
    Partial,
    /// `.<id>.failed`: the log of a failed take.
    Failed,
    /// `.<id>.deleting`: a deletion in progress or interrupted.
    Deleting,
    /// `.<id>.restoring-<pid>`: the rewritten CRIU image a restart by process `pid` reads.
    Restoring(u32),
}

impl State {
    const FIXED: [State; 3] = [State::Partial, State::Failed, State::Deleting];

    fn suffix(self) -> String {
        match self {
            State::Partial => ".partial".into(),
            State::Failed => ".failed".into(),
            State::Deleting => ".deleting".into(),
            State::Restoring(pid) => format!(".restoring-{pid}"),
        }
    }

    /// The entry name of checkpoint `id` in this state.
    pub fn name(self, id: &str) -> String {
        format!(".{id}{}", self.suffix())
    }

    /// The checkpoint id and state of an entry name such as `.ID.partial`.
    pub fn of_name(name: &str) -> Option<(String, State)> {
        let rest = name.strip_prefix('.')?;
        let fixed = State::FIXED.iter().find_map(|&st| {
            rest.strip_suffix(st.suffix().as_str()).filter(|id| valid_id(id)).map(|id| (id.to_string(), st))
        });
        fixed.or_else(|| {
            let (id, pid) = rest.rsplit_once(".restoring-")?;
            let pid: u32 = pid.parse().ok().filter(|_| pid.bytes().all(|b| b.is_ascii_digit()))?;
            valid_id(id).then(|| (id.to_string(), State::Restoring(pid)))
        })
    }

    /// Whether the process that owns this trace still runs (a take holding its lock, a
    /// restart still restoring).
    pub fn in_use(self, path: &Path) -> bool {
        match self {
            State::Partial => partial_in_use(path),
            State::Restoring(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            State::Failed | State::Deleting => false,
        }
    }
}

/// The image directory under construction: `<root>/.<id>.partial`, locked while we run,
/// removed on drop unless published.
pub struct ImageDir {
    root: PathBuf,
    id: String,
    dir: PathBuf,
    _lock: std::fs::File,
    done: bool,
}

impl ImageDir {
    /// Create and lock `<root>/.<id>.partial` (and the root if missing).
    pub fn create(root: &Path, id: &str) -> Result<ImageDir, ImageError> {
        trusted_root(root, true)?;
        let dir = root.join(State::Partial.name(id));
        std::fs::create_dir(&dir).map_err(io(&dir, "mkdir"))?;
        let lockp = dir.join(".lock");
        let f = std::fs::File::create(&lockp).map_err(io(&lockp, "open"))?;
        // SAFETY: flock on a file we hold.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            return Err(ImageError::Io(crate::sys::SysError {
                path: lockp,
                syscall: "flock",
                source: std::io::Error::last_os_error(),
            }));
        }
        Ok(ImageDir { root: root.into(), id: id.into(), dir, _lock: f, done: false })
    }

    /// The directory being written.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Move `log` (a file of the partial directory) to `<root>/.<id>.failed/`, which outlives
    /// the partial directory (`snapckpt gc` removes it). Its new path, if it could be moved.
    pub fn keep_failed_log(&self, log: &Path) -> Option<PathBuf> {
        if log.parent() != Some(self.dir.as_path()) || !log.is_file() {
            return None;
        }
        let keep = self.root.join(State::Failed.name(&self.id));
        std::fs::create_dir_all(&keep).ok()?;
        let to = keep.join(log.file_name()?);
        std::fs::rename(log, &to).ok()?;
        let _ = sys::fsync_dir(&keep);
        Some(to)
    }

    /// The fd of the lock that tells `gc` this take is in progress (a snapshot process that
    /// may outlive snapckpt keeps it).
    pub fn lock_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self._lock)
    }

    /// Leave `<root>/.<id>.partial` in place (not removed on drop): locked for as long as a
    /// process that inherited the lock lives, then a trace of a failed take for `gc`.
    pub fn keep_pending(&mut self) -> PathBuf {
        self.done = true;
        self.dir.clone()
    }

    /// Keep the directory as `<root>/.<id>.failed` (the trace `gc` understands) instead of
    /// removing it; its path.
    pub fn keep_as_failed(&mut self) -> PathBuf {
        let keep = self.root.join(State::Failed.name(&self.id));
        if !keep.exists() && std::fs::rename(&self.dir, &keep).is_ok() {
            self.done = true;
            return keep;
        }
        self.dir.clone()
    }

    /// Write the record and rename the directory into place. Every file of the image (CRIU's
    /// too) is on disk before: tasks are killed right after this, and a crash then must not
    /// leave a record whose process image is empty.
    pub fn publish(&mut self, ck: &Checkpoint) -> Result<PathBuf, ImageError> {
        sync_files(&self.dir, true)?;
        write_json_atomic(&self.dir, RECORD_FILE, ck)?;
        let _ = std::fs::remove_file(self.dir.join(".lock"));
        let fin = self.root.join(&self.id);
        std::fs::rename(&self.dir, &fin).map_err(io(&fin, "rename"))?;
        sys::fsync_dir(&self.root).map_err(io(&self.root, "fsync"))?;
        self.done = true;
        Ok(fin)
    }
}

/// fsync the regular files of `dir`, and with `rounds` those of its pre-dump round
/// directories (`pre-N`, [`crate::criu::is_pre_dump_dir`]) and the directories themselves.
fn sync_files(dir: &Path, rounds: bool) -> Result<(), ImageError> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_file() {
            std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(io(&p, "fsync"))?;
        } else if rounds
            && t.is_dir()
            && crate::record::names::is_pre_dump_dir(&e.file_name().to_string_lossy())
        {
            sync_files(&p, false)?;
            sys::fsync_dir(&p).map_err(io(&p, "fsync"))?;
        }
    }
    Ok(())
}

impl Drop for ImageDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Is a partial image directory still being written by a live take?
pub fn partial_in_use(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(".lock")) else { return false };
    // SAFETY: flock on a file we hold.
    let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) };
    r < 0
}

/// Remove the image directory `image_dir` of checkpoint `id`: renamed to `.<id>.deleting`
/// first, so that a crash never leaves a half-deleted but valid-looking image.
pub fn remove(image_dir: &Path, id: &str) -> Result<(), ImageError> {
    let parent = image_dir.parent().unwrap_or(Path::new("."));
    let doomed = parent.join(State::Deleting.name(id));
    std::fs::rename(image_dir, &doomed).map_err(io(image_dir, "rename"))?;
    std::fs::remove_dir_all(&doomed).map_err(io(&doomed, "unlink"))?;
    Ok(())
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
        ImageError::Io(crate::sys::SysError { path: dst.clone(), syscall: "rename", source: e })
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
        Err(e) => {
            return Err(ImageError::Io(crate::sys::SysError {
                path: p.to_path_buf(),
                syscall: "open",
                source: e,
            }))
        }
    };
    crate::sys::read_regular(f, MAX_RECORD_BYTES).map_err(|e| match e {
        crate::sys::ReadRegularError::Io { syscall, source } => {
            ImageError::Io(crate::sys::SysError { path: p.to_path_buf(), syscall, source })
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
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ImageError::RootDenied(root.to_path_buf()))
        }
        Err(e) => {
            return Err(ImageError::Io(crate::sys::SysError {
                path: root.to_path_buf(),
                syscall: "opendir",
                source: e,
            }))
        }
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
    out.sort_by_key(|(p, r)| (r.as_ref().map(Checkpoint::created_at).unwrap_or((0, 0)), p.clone()));
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
    use crate::record::tests::{good, ID};
    use crate::record::*;

    #[test]
    fn roundtrip_and_validation() {
        let d = std::env::temp_dir().join(format!("snapckpt-img-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut ck = Checkpoint::new("20261126T210000Z-abcd", 1);
        ck.tasks.push(Task {
            pid: 10,
            ns_pid: None,
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
