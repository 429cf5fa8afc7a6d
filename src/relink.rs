//! Relinking: give every unlinked object a name again, in its own filesystem, at
//! `<mount>/lost+found/checkpoint/<template>`, so that a filesystem snapshot carries its data.
//!
//! * nlink > 0 (name gone) and O_TMPFILE files: a hard link to the same inode, made with
//!   `linkat("/proc/PID/fd/N", AT_SYMLINK_FOLLOW)` through the mount the task sees.
//! * nlink == 0 orphans, which the kernel refuses to link: a new inode, written into an
//!   O_TMPFILE in the checkpoint directory by reflink (FICLONE), else `copy_file_range` over
//!   the data segments only (SEEK_DATA/SEEK_HOLE), else read/write of the data segments, with
//!   owner, mode and times kept, and linked into place only when complete.
//! * removed directories, FIFOs and device nodes: a new node of the same type, mode and owner.
//!
//! `lost+found/checkpoint` is a security boundary: both directories are created root-owned
//! 0700 when missing, refused when they are symlinks, not owned by root, or writable by group or
//! others, and everything under them is opened with openat2 and no symlink resolution.

use crate::record::{FileKind, Held, Method, Object, Relinked};
use crate::{scan, sys};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub use crate::record::names::{Template, CHECKPOINT_DIR, DEFAULT_TEMPLATE};

const FICLONE: libc::c_ulong = 0x40049409;

#[derive(Debug, thiserror::Error)]
pub enum RelinkError {
    #[error(transparent)]
    Template(#[from] crate::record::names::TemplateError),
    #[error(
        "{path}: refusing to use it: {why}. Fix: remove it or make it a root-owned directory with mode 0700"
    )]
    Unsafe { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    WrongMount { path: PathBuf, why: String },
    #[error("{syscall} {path}: {source}")]
    Io { path: PathBuf, syscall: &'static str, source: io::Error },
    #[error("object {index} ({original}): no holder left to reach it through /proc")]
    NoHolder { index: usize, original: String },
    #[error("{path}: no space left while copying orphan {original} ({size} bytes): free space on that filesystem or use a filesystem with reflinks")]
    NoSpace { path: PathBuf, original: String, size: u64 },
}

fn ioe<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(io::Error) -> RelinkError + 'a {
    move |source| RelinkError::Io { path: path.to_path_buf(), syscall, source }
}

// ---------------------------------------------------------------------------------------------
// The checkpoint directory
// ---------------------------------------------------------------------------------------------

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
            RelinkError::Io { path: self.path.clone(), syscall: "fdopendir", source: e.into() }
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
    if name.is_empty() || name.contains('/') || name == "." || name == ".." || name.contains('\0') {
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
                Err(e) => return Err(RelinkError::Io { path: path.into(), syscall: "mkdirat", source: e }),
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
        _ => RelinkError::Io { path: path.into(), syscall: "openat2", source: e },
    }
}

// ---------------------------------------------------------------------------------------------
// Relinking
// ---------------------------------------------------------------------------------------------

/// What the relink stage did, for the summary line.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub linked: usize,
    pub cloned: usize,
    pub copied: usize,
    pub recreated: usize,
    pub bytes_copied: u64,
    /// Logical size of the objects preserved by clone or copy.
    pub bytes_preserved: u64,
}

/// Relinks the objects of one checkpoint and remembers every name it made, so that they can be
/// removed again (after a failure, or once a snapshot holds them).
pub struct Relinker {
    id: String,
    template: Template,
    counter: u64,
    dirs: HashMap<u32, CheckpointDir>,
    /// (mnt_id, name, is_dir) of every name made, in order.
    made: Vec<(u32, String, bool)>,
}

impl Relinker {
    pub fn new(id: &str, template: Template) -> Relinker {
        Relinker { id: id.into(), template, counter: 0, dirs: HashMap::new(), made: vec![] }
    }

    /// The checkpoint directory of a mount, opened during relinking.
    pub fn dir(&self, mnt_id: u32) -> Option<&CheckpointDir> {
        self.dirs.get(&mnt_id)
    }

    /// Names made so far: (mnt_id, name, is_dir).
    pub fn made(&self) -> &[(u32, String, bool)] {
        &self.made
    }

    /// Relink every object; on error, the names made so far are removed again.
    pub fn relink_all(
        &mut self,
        objects: &mut [Object],
        mut progress: impl FnMut(&Object),
    ) -> Result<Stats, RelinkError> {
        let mut stats = Stats::default();
        for o in objects.iter_mut() {
            if let Err(e) = self.relink_one(o, &mut stats) {
                let _ = self.remove_all();
                for o in objects.iter_mut() {
                    o.relinked = None;
                }
                return Err(e);
            }
            progress(o);
        }
        Ok(stats)
    }

    fn relink_one(&mut self, o: &mut Object, stats: &mut Stats) -> Result<(), RelinkError> {
        // Reach the object through one of its holders, preferring fds.
        let holder = o
            .holders
            .iter()
            .min_by_key(|h| match h.what {
                Held::Fd(_) => 0,
                Held::Map { .. } => 1,
                _ => 2,
            })
            .cloned()
            .ok_or_else(|| RelinkError::NoHolder { index: o.index, original: o.original_path.clone() })?;
        let src = scan::holder_proc_path(&holder)
            .ok_or_else(|| RelinkError::NoHolder { index: o.index, original: o.original_path.clone() })?;
        let mnt_id = o.mount.mnt_id;
        if let std::collections::hash_map::Entry::Vacant(e) = self.dirs.entry(mnt_id) {
            let mdir = scan::mount_dir_for(holder.pid, &o.mount.mount_point);
            e.insert(open_checkpoint_dir(&mdir, Some(mnt_id), true)?);
        }
        let st = sys::stat(&src).map_err(ioe(&src, "stat"))?;
        let is_dir = o.kind == FileKind::Directory;
        let recreate = is_dir || (st.st_nlink == 0 && o.kind != FileKind::Regular);
        for _attempt in 0..100 {
            self.counter += 1;
            let name = self.template.render(&self.id, self.counter);
            let dir = &self.dirs[&mnt_id];
            let r = if recreate {
                recreate_node(dir, &name, &st).map(|()| (Method::Recreate, 0))
            } else {
                match sys::link_follow(&src, dir.fd(), OsStr::new(&name)) {
                    Ok(()) => Ok((Method::Link, 0)),
                    // nlink == 0 and not an O_TMPFILE: the kernel will not link it; copy it.
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENOENT)
                            && st.st_nlink == 0
                            && o.kind == FileKind::Regular =>
                    {
                        copy_orphan(&src, dir, &name, &st, &o.original_path)
                    }
                    Err(e) => {
                        Err(RelinkError::Io { path: dir.path.join(&name), syscall: "linkat", source: e })
                    }
                }
            };
            match r {
                Err(RelinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::EEXIST) => {
                    continue
                }
                Err(e) => return Err(e),
                Ok((method, bytes)) => {
                    self.made.push((mnt_id, name.clone(), is_dir));
                    let new = dir
                        .open(&name, libc::O_PATH | libc::O_NOFOLLOW)
                        .and_then(|f| sys::fstat(f.as_raw_fd()).map_err(ioe(&dir.path, "fstat")))?;
                    match method {
                        Method::Link => stats.linked += 1,
                        Method::Clone => stats.cloned += 1,
                        Method::CopyRange | Method::SparseCopy => stats.copied += 1,
                        Method::Recreate => stats.recreated += 1,
                    }
                    if matches!(method, Method::Clone | Method::CopyRange | Method::SparseCopy) {
                        stats.bytes_preserved += st.st_size as u64;
                    }
                    stats.bytes_copied += bytes;
                    o.relinked = Some(Relinked {
                        rel_path: format!("{CHECKPOINT_DIR}/{name}"),
                        name,
                        method,
                        ino: new.st_ino,
                        bytes_copied: bytes,
                    });
                    return Ok(());
                }
            }
        }
        Err(RelinkError::Io {
            path: self.dirs[&mnt_id].path.clone(),
            syscall: "linkat",
            source: io::Error::from_raw_os_error(libc::EEXIST),
        })
    }

    /// Remove every name this relinker made (best effort, all attempted); the first error is
    /// returned.
    /// Remove the names made on the mounts `mnts` (by mount id); the others stay.
    pub fn remove_on(&mut self, mnts: &std::collections::HashSet<u32>) -> Result<(), RelinkError> {
        let (doomed, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.made).into_iter().partition(|(m, _, _)| mnts.contains(m));
        self.made = kept;
        let mut first = None;
        for (mnt, name, is_dir) in doomed.into_iter().rev() {
            if let Some(d) = self.dirs.get(&mnt) {
                if let Err(e) = d.remove(&name, is_dir) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    pub fn remove_all(&mut self) -> Result<(), RelinkError> {
        let mut first = None;
        for (mnt, name, is_dir) in std::mem::take(&mut self.made).into_iter().rev() {
            if let Some(d) = self.dirs.get(&mnt) {
                if let Err(e) = d.remove(&name, is_dir) {
                    first.get_or_insert(e);
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// A new directory, FIFO, socket or device node with the type, mode, owner and times of `st`.
fn recreate_node(dir: &CheckpointDir, name: &str, st: &libc::stat) -> Result<(), RelinkError> {
    let p = dir.path.join(name);
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        sys::mkdirat(dir.fd(), OsStr::new(name), 0o700).map_err(ioe(&p, "mkdirat"))?;
    } else {
        sys::mknodat(dir.fd(), OsStr::new(name), (st.st_mode & libc::S_IFMT) | 0o600, st.st_rdev)
            .map_err(ioe(&p, "mknodat"))?;
    }
    if let Err(e) = sys::set_owner_mode_times(dir.fd(), OsStr::new(name), st) {
        let _ = dir.remove(name, st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        return Err(RelinkError::Io { path: p, syscall: "fchownat/fchmodat/utimensat", source: e });
    }
    Ok(())
}

/// Preserve an nlink==0 file as a new inode: O_TMPFILE, reflink or copy of the data segments,
/// owner/mode/times, then linkat into place. Returns the method and the bytes written.
fn copy_orphan(
    src: &Path,
    dir: &CheckpointDir,
    name: &str,
    st: &libc::stat,
    original: &str,
) -> Result<(Method, u64), RelinkError> {
    let dst_path = dir.path.join(name);
    let sfd = sys::open(src, libc::O_RDONLY | libc::O_NOATIME, 0)
        .or_else(|_| sys::open(src, libc::O_RDONLY, 0))
        .map_err(ioe(src, "open"))?;
    let tfd = sys::openat2(dir.fd(), ".", libc::O_TMPFILE | libc::O_RDWR, 0o600, sys::RESOLVE_STRICT)
        .map_err(ioe(&dir.path, "open(O_TMPFILE)"))?;
    let size = st.st_size as u64;
    let nospace = |e: io::Error, syscall: &'static str| {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            RelinkError::NoSpace { path: dst_path.clone(), original: original.into(), size }
        } else {
            RelinkError::Io { path: dst_path.clone(), syscall, source: e }
        }
    };
    // SAFETY: ioctl(FICLONE) with two descriptors we hold.
    let cloned = unsafe { libc::ioctl(tfd.as_raw_fd(), FICLONE as _, sfd.as_raw_fd()) } == 0;
    let (method, bytes) = if cloned {
        (Method::Clone, 0)
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOSPC) {
            return Err(nospace(e, "ioctl(FICLONE)"));
        }
        sparse_copy(sfd.as_raw_fd(), tfd.as_raw_fd(), size).map_err(|(e, sc)| nospace(e, sc))?
    };
    // SAFETY: plain syscalls on our descriptors.
    unsafe {
        if libc::ftruncate(tfd.as_raw_fd(), size as libc::off_t) < 0 {
            return Err(nospace(io::Error::last_os_error(), "ftruncate"));
        }
        if libc::fchown(tfd.as_raw_fd(), st.st_uid, st.st_gid) < 0
            || libc::fchmod(tfd.as_raw_fd(), st.st_mode & 0o7777) < 0
        {
            return Err(RelinkError::Io {
                path: dst_path.clone(),
                syscall: "fchown/fchmod",
                source: io::Error::last_os_error(),
            });
        }
        let ts = [
            libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
            libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
        ];
        if libc::futimens(tfd.as_raw_fd(), ts.as_ptr()) < 0 {
            return Err(RelinkError::Io {
                path: dst_path.clone(),
                syscall: "futimens",
                source: io::Error::last_os_error(),
            });
        }
        if bytes > 0 && libc::fsync(tfd.as_raw_fd()) < 0 {
            return Err(nospace(io::Error::last_os_error(), "fsync"));
        }
    }
    let me = format!("/proc/self/fd/{}", tfd.as_raw_fd());
    sys::link_follow(&me, dir.fd(), OsStr::new(name)).map_err(ioe(&dst_path, "linkat"))?;
    Ok((method, bytes))
}

/// Copy the data segments of `src` into `dst` at the same offsets (holes stay holes), with
/// copy_file_range where the filesystems allow it, else read/write.
fn sparse_copy(src: RawFd, dst: RawFd, size: u64) -> Result<(Method, u64), (io::Error, &'static str)> {
    let mut method = Method::CopyRange;
    let mut written = 0u64;
    let mut off: i64 = 0;
    let mut buf: Vec<u8> = vec![];
    while (off as u64) < size {
        // SAFETY: lseek on our descriptor.
        let data = unsafe { libc::lseek(src, off, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole is left
            }
            if e.raw_os_error() == Some(libc::EINVAL) {
                // no SEEK_DATA support: treat everything as data
                return copy_range(src, dst, 0, size, &mut method, &mut buf).map(|n| (method, n));
            }
            return Err((e, "lseek(SEEK_DATA)"));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size as i64 } else { hole.min(size as i64) };
        written += copy_range(src, dst, data as u64, (hole - data) as u64, &mut method, &mut buf)?;
        off = hole;
    }
    Ok((method, written))
}

fn copy_range(
    src: RawFd,
    dst: RawFd,
    start: u64,
    len: u64,
    method: &mut Method,
    buf: &mut Vec<u8>,
) -> Result<u64, (io::Error, &'static str)> {
    let mut done = 0u64;
    while done < len {
        let chunk = (len - done).min(1 << 30) as usize;
        if *method == Method::CopyRange {
            let mut si = (start + done) as i64;
            let mut di = si;
            // SAFETY: copy_file_range between our descriptors with explicit offsets.
            let n = unsafe { libc::copy_file_range(src, &mut si, dst, &mut di, chunk, 0) };
            if n > 0 {
                done += n as u64;
                continue;
            }
            if n == 0 {
                break; // source shrank
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EXDEV | libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                    *method = Method::SparseCopy
                }
                Some(libc::EINTR) => continue,
                _ => return Err((e, "copy_file_range")),
            }
        }
        if buf.is_empty() {
            buf.resize(1 << 20, 0);
        }
        let want = chunk.min(buf.len());
        // SAFETY: buffer is at least `want` long.
        let n =
            unsafe { libc::pread(src, buf.as_mut_ptr() as *mut libc::c_void, want, (start + done) as i64) };
        if n < 0 {
            return Err((io::Error::last_os_error(), "pread"));
        }
        if n == 0 {
            break;
        }
        let mut w = 0usize;
        while w < n as usize {
            // SAFETY: writing from our buffer.
            let m = unsafe {
                libc::pwrite(
                    dst,
                    buf[w..].as_ptr() as *const libc::c_void,
                    n as usize - w,
                    (start + done) as i64 + w as i64,
                )
            };
            if m < 0 {
                return Err((io::Error::last_os_error(), "pwrite"));
            }
            w += m as usize;
        }
        done += n as u64;
    }
    Ok(done)
}

/// Relinked names under one mount's checkpoint directory, grouped by the checkpoint id they
/// carry (names that the template does not match are listed under `None`).
pub fn leftovers(
    mount_dir: &Path,
    template: &Template,
) -> Result<Vec<(Option<String>, String, bool)>, RelinkError> {
    let d = match open_checkpoint_dir(mount_dir, None, false) {
        Ok(d) => d,
        Err(RelinkError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(vec![])
        }
        Err(e) => return Err(e),
    };
    Ok(d.names()?.into_iter().map(|(n, is_dir)| (template.match_id(&n), n, is_dir)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_default_roundtrip() {
        let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
        let id = "20261126T210000Z-3fa2";
        let n = t.render(id, 17);
        assert_eq!(n, "unlink-at-restart-20261126T210000Z-3fa2-17");
        assert_eq!(t.match_id(&n).as_deref(), Some(id));
        assert_eq!(t.match_id("unlink-at-restart-x"), None);
        assert_eq!(t.match_id("other"), None);
    }

    #[test]
    fn template_random() {
        let t = Template::parse("ck.%t.XXXXXX").unwrap();
        let a = t.render("id1", 1);
        let b = t.render("id1", 2);
        assert_eq!(a.len(), "ck.id1.".len() + 6);
        assert_ne!(a, b);
        assert_eq!(t.match_id(&a).as_deref(), Some("id1"));
    }

    #[test]
    fn template_refusals() {
        for bad in
            ["../x-%t-%n", "a/%t-%n", "..%t%n", "%t", "x-%n", "%t%n", "%q-%t-%n", "", ".x-%t-%n", "%t-%t-%n"]
        {
            assert!(Template::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Template::parse("100%%-%t-%n").is_ok());
    }
}
