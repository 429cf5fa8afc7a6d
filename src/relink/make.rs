//! The take side of a relinked name: make it. Every unlinked object gets a name again in its
//! own filesystem, at `<mount>/lost+found/checkpoint/<template>`, so that a filesystem
//! snapshot carries its data.
//!
//! * nlink > 0 (name gone) and O_TMPFILE files and symlinks: a hard link to the same inode,
//!   made with `linkat("/proc/PID/fd/N", AT_SYMLINK_FOLLOW)` through the mount the task sees.
//! * nlink == 0 orphans, which the kernel refuses to link: a new inode, written into an
//!   O_TMPFILE in the checkpoint directory by reflink (FICLONE), else `copy_file_range` over
//!   the data segments only (SEEK_DATA/SEEK_HOLE), else read/write of the data segments, with
//!   owner, mode and times kept, and linked into place only when complete.
//! * removed directories, FIFOs, sockets, device nodes and symlinks: a new node of the same
//!   type, mode and owner (a symlink with the same target).

use super::dir::{open_checkpoint_dir, CheckpointDir};
use super::{ioe, RelinkError};
use crate::record::names::relinked_rel_path;
use crate::record::names::Template;
use crate::record::{FileKind, Held, Method, Object, Relinked};
use crate::{scan, sys};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

const FICLONE: libc::c_ulong = 0x40049409;

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

/// Bytes written by the data copies of this process so far (the take's progress bar reads it).
pub static COPIED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A name the relinker made.
#[derive(Debug, Clone)]
pub struct Made {
    pub mnt_id: u32,
    pub name: String,
    pub is_dir: bool,
    /// The name leads to the task's own inode (a hard link, a kernel link): until it is
    /// removed the task sees one link more on it.
    pub same_inode: bool,
}

/// Relinks the objects of one checkpoint and remembers every name it made, so that they can be
/// removed again (after a failure, or once a snapshot holds them).
pub struct Relinker {
    id: String,
    template: Template,
    counter: AtomicU64,
    dirs: HashMap<u32, CheckpointDir>,
    /// Every name made, in order.
    made: Vec<Made>,
    /// The kernel module's device (`None`: not loaded), opened once per take.
    kdev: Option<Option<crate::kernel_link::Device>>,
}

/// One object to relink, reached through `src` (a /proc path of one of its holders).
struct Job {
    index: usize,
    src: PathBuf,
    mnt_id: u32,
    kind: FileKind,
    /// An orphan (nlink 0, not an O_TMPFILE): linkat refuses it, so it is not tried.
    orphan: bool,
    original: String,
}

/// What relinking one object made.
struct Done {
    relinked: Relinked,
    made: Made,
    bytes_preserved: u64,
}

/// Objects per relinking thread below which another thread is not worth starting.
const OBJECTS_PER_THREAD: usize = 64;
/// At most this many relinking threads.
const MAX_THREADS: usize = 4;

impl Relinker {
    pub fn new(id: &str, template: Template) -> Relinker {
        Relinker {
            id: id.into(),
            template,
            counter: AtomicU64::new(0),
            dirs: HashMap::new(),
            made: vec![],
            kdev: None,
        }
    }

    /// The checkpoint directory of a mount, opened during relinking.
    pub fn dir(&self, mnt_id: u32) -> Option<&CheckpointDir> {
        self.dirs.get(&mnt_id)
    }

    /// Names made so far.
    pub fn made(&self) -> &[Made] {
        &self.made
    }

    /// Relink every object (in parallel: the tasks are frozen meanwhile, and each object is
    /// independent of the others); on error, the names made so far are removed again.
    pub fn relink_all(
        &mut self,
        objects: &mut [Object],
        skip: impl Fn(&Object) -> bool,
        mut progress: impl FnMut(&Object),
    ) -> Result<Stats, RelinkError> {
        let jobs = self.jobs(objects, skip)?; // nothing made yet
        let results = self.run_jobs(&jobs);
        let mut stats = Stats::default();
        let mut first = None;
        for (job, r) in jobs.iter().zip(results) {
            match r {
                Ok(d) => {
                    stats.add(&d);
                    self.made.push(d.made);
                    let o = &mut objects[job.index];
                    o.relinked = Some(d.relinked);
                    progress(o);
                }
                Err(e) => {
                    first.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first {
            let _ = self.remove_all();
            for o in objects.iter_mut() {
                o.relinked = None;
            }
            return Err(e);
        }
        Ok(stats)
    }

    /// Reach every object to relink through one of its holders (fds first) and open the
    /// checkpoint directory of each mount once.
    fn jobs(&mut self, objects: &[Object], skip: impl Fn(&Object) -> bool) -> Result<Vec<Job>, RelinkError> {
        let mut jobs = vec![];
        for (index, o) in objects.iter().enumerate().filter(|(_, o)| !skip(o)) {
            let no_holder = || RelinkError::NoHolder { index: o.index, original: o.original_path.clone() };
            let holder = o
                .holders
                .iter()
                .min_by_key(|h| match h.what {
                    Held::Fd(_) => 0,
                    Held::Map { .. } => 1,
                    _ => 2,
                })
                .ok_or_else(no_holder)?;
            let src = scan::holder_proc_path(holder).ok_or_else(no_holder)?;
            let mnt_id = o.mount.mnt_id;
            if let std::collections::hash_map::Entry::Vacant(e) = self.dirs.entry(mnt_id) {
                let mdir = scan::mount_dir_for(holder.pid, &o.mount.mount_point);
                e.insert(open_checkpoint_dir(&mdir, Some(mnt_id), true)?);
            }
            let orphan = o.class == crate::record::Unlinked::Orphan;
            jobs.push(Job { index, src, mnt_id, kind: o.kind, orphan, original: o.original_path.clone() });
        }
        if jobs.iter().any(|j| j.kind == FileKind::Regular) {
            self.kdev.get_or_insert_with(|| crate::kernel_link::Device::open().ok());
        }
        Ok(jobs)
    }

    /// Relink the jobs on up to [`MAX_THREADS`] threads; results in the jobs' order.
    fn run_jobs(&self, jobs: &[Job]) -> Vec<Result<Done, RelinkError>> {
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let threads = cores.min(MAX_THREADS).min(jobs.len().div_ceil(OBJECTS_PER_THREAD)).max(1);
        let next = AtomicUsize::new(0);
        let work = || {
            let mut out = vec![];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { return out };
                out.push((i, self.relink_one(job)));
            }
        };
        let mut all: Vec<(usize, Result<Done, RelinkError>)> = if threads == 1 {
            work()
        } else {
            std::thread::scope(|sc| {
                let handles: Vec<_> = (1..threads).map(|_| sc.spawn(work)).collect();
                let mut all = work();
                for h in handles {
                    all.extend(h.join().expect("relinking thread panicked"));
                }
                all
            })
        };
        all.sort_unstable_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    }

    /// Give one object a name: a free name from the template (the next counter value), made
    /// by the first method that applies.
    fn relink_one(&self, job: &Job) -> Result<Done, RelinkError> {
        let st = sys::stat(&job.src).map_err(ioe(&job.src, "stat"))?;
        let is_dir = job.kind == FileKind::Directory;
        let recreate = is_dir || (st.st_nlink == 0 && job.kind != FileKind::Regular);
        let dir = &self.dirs[&job.mnt_id];
        for _attempt in 0..100 {
            let name = self.template.render(&self.id, self.counter.fetch_add(1, Ordering::Relaxed) + 1);
            let r = if recreate {
                recreate_node(dir, &name, &st, &job.src).map(|ino| (Method::Recreate, 0, ino))
            } else {
                self.link_or_copy(job, dir, &name, &st)
            };
            match r {
                Err(RelinkError::Io(crate::sys::SysError { source, .. }))
                    if source.raw_os_error() == Some(libc::EEXIST) =>
                {
                    continue
                }
                Err(e) => return Err(e),
                Ok((method, bytes, ino)) => {
                    let same_inode = matches!(method, Method::Link | Method::KernelLink);
                    let preserved = matches!(method, Method::Clone | Method::CopyRange | Method::SparseCopy);
                    return Ok(Done {
                        made: Made { mnt_id: job.mnt_id, name: name.clone(), is_dir, same_inode },
                        relinked: Relinked {
                            rel_path: relinked_rel_path(&name),
                            name,
                            method,
                            ino,
                            bytes_copied: bytes,
                        },
                        bytes_preserved: if preserved { st.st_size as u64 } else { 0 },
                    });
                }
            }
        }
        Err(RelinkError::Io(crate::sys::SysError {
            path: dir.path.clone(),
            syscall: "linkat",
            source: io::Error::from_raw_os_error(libc::EEXIST),
        }))
    }

    /// A regular file or symlink: a hard link to its inode; an orphan (nlink 0, which linkat
    /// refuses unless it is an O_TMPFILE) through the kernel module, else a clone or copy.
    /// The method, the bytes written and the inode the name leads to.
    fn link_or_copy(
        &self,
        job: &Job,
        dir: &CheckpointDir,
        name: &str,
        st: &libc::stat,
    ) -> Result<(Method, u64, u64), RelinkError> {
        let nlink0 = st.st_nlink == 0 && job.kind == FileKind::Regular;
        if !(nlink0 && job.orphan) {
            match sys::link_follow(&job.src, dir.fd(), OsStr::new(name)) {
                Ok(()) => return Ok((Method::Link, 0, st.st_ino)),
                // an O_TMPFILE opened with O_EXCL: not linkable after all
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && nlink0 => {}
                Err(e) => {
                    let path = dir.path.join(name);
                    return Err(RelinkError::Io(crate::sys::SysError { path, syscall: "linkat", source: e }));
                }
            }
        }
        let kdev = self.kdev.as_ref().and_then(Option::as_ref);
        match kdev.and_then(|d| kernel_link(d, &job.src, dir, name)) {
            Some(r) => r.map(|m| (m, 0, st.st_ino)),
            None => copy_orphan(&job.src, dir, name, st, &job.original),
        }
    }

    /// Remove the names `which` selects (best effort, all attempted); the others stay. Those
    /// that could not be removed stay in the list too, for a later undo. The first error is
    /// returned.
    pub fn remove_where(&mut self, which: impl Fn(&Made) -> bool) -> Result<(), RelinkError> {
        let (doomed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.made).into_iter().partition(which);
        self.made = kept;
        self.remove(doomed)
    }

    /// Remove every name this relinker made (best effort, all attempted); the first error is
    /// returned.
    pub fn remove_all(&mut self) -> Result<(), RelinkError> {
        self.remove_where(|_| true)
    }

    /// Remove `names` (all attempted, last made first); those that could not be removed stay
    /// in the list of names made, for a later undo. The first error is returned.
    fn remove(&mut self, names: Vec<Made>) -> Result<(), RelinkError> {
        let mut first = None;
        for m in names.into_iter().rev() {
            let Some(d) = self.dirs.get(&m.mnt_id) else { continue };
            match d.remove(&m.name, m.is_dir) {
                Err(e) if !super::remove::is_enoent(&e) => {
                    first.get_or_insert(e);
                    self.made.insert(0, m);
                }
                _ => {}
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Stats {
    fn add(&mut self, d: &Done) {
        match d.relinked.method {
            Method::Link | Method::KernelLink => self.linked += 1,
            Method::Clone => self.cloned += 1,
            Method::CopyRange | Method::SparseCopy => self.copied += 1,
            Method::Recreate => self.recreated += 1,
        }
        self.bytes_preserved += d.bytes_preserved;
        self.bytes_copied += d.relinked.bytes_copied;
    }
}

/// Link an orphan with the snapckpt-relink kernel module, when it is loaded: `None` when it is
/// not (or refuses for a reason a copy does not share: then the copy is made).
fn kernel_link(
    dev: &crate::kernel_link::Device,
    src: &Path,
    dir: &CheckpointDir,
    name: &str,
) -> Option<Result<Method, RelinkError>> {
    // O_PATH (the module takes it: fget_raw): no open of the file itself, so no lease break
    // (which would wait lease-break-time for the frozen holder), no fanotify permission event,
    // no filesystem open call.
    let f = sys::open(src, libc::O_PATH, 0).ok()?;
    match dev.link(f.as_raw_fd(), dir.fd(), name) {
        Ok(()) => Some(Ok(Method::KernelLink)),
        Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST) => {
            Some(Err(RelinkError::Io(crate::sys::SysError {
                path: dir.path.join(name),
                syscall: "ioctl(SNAPCKPT_IOC_RELINK)",
                source: std::io::Error::from_raw_os_error(libc::EEXIST),
            })))
        }
        Err(_) => None,
    }
}

/// A new directory, FIFO, socket or device node with the type, mode, owner and times of `st`.
/// Returns the new node's inode number.
fn recreate_node(dir: &CheckpointDir, name: &str, st: &libc::stat, src: &Path) -> Result<u64, RelinkError> {
    let p = dir.path.join(name);
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        sys::mkdirat(dir.fd(), OsStr::new(name), 0o700).map_err(ioe(&p, "mkdirat"))?;
    } else if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        // The holder's fd (O_PATH|O_NOFOLLOW) leads to the symlink itself: its target.
        let target = sys::readlink_fd(&sys::open(src, libc::O_PATH, 0).map_err(ioe(src, "open"))?)
            .map_err(ioe(src, "readlinkat"))?;
        sys::symlinkat(&target, dir.fd(), OsStr::new(name)).map_err(ioe(&p, "symlinkat"))?;
    } else {
        sys::mknodat(dir.fd(), OsStr::new(name), (st.st_mode & libc::S_IFMT) | 0o600, st.st_rdev)
            .map_err(ioe(&p, "mknodat"))?;
    }
    if let Err(e) = sys::set_owner_mode_times(dir.fd(), OsStr::new(name), st) {
        let _ = dir.remove(name, st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        return Err(RelinkError::Io(crate::sys::SysError {
            path: p,
            syscall: "fchownat/fchmodat/utimensat",
            source: e,
        }));
    }
    let new = dir
        .open(name, libc::O_PATH | libc::O_NOFOLLOW)
        .and_then(|f| sys::fstat(f.as_raw_fd()).map_err(ioe(&p, "fstat")))?;
    Ok(new.st_ino)
}

/// Preserve an nlink==0 file as a new inode: O_TMPFILE, reflink or copy of the data segments,
/// owner/mode/times, then linkat into place. Returns the method, the bytes written and the
/// new inode's number.
fn copy_orphan(
    src: &Path,
    dir: &CheckpointDir,
    name: &str,
    st: &libc::stat,
    original: &str,
) -> Result<(Method, u64, u64), RelinkError> {
    let dst_path = dir.path.join(name);
    let sfd = sys::open(src, libc::O_RDONLY | libc::O_NOATIME, 0)
        .or_else(|_| sys::open(src, libc::O_RDONLY, 0))
        .map_err(ioe(src, "open"))?;
    // created with the file's permission bits (as far as the umask lets): no chmod after
    let tfd =
        sys::openat2(dir.fd(), ".", libc::O_TMPFILE | libc::O_RDWR, st.st_mode & 0o777, sys::RESOLVE_STRICT)
            .map_err(ioe(&dir.path, "open(O_TMPFILE)"))?;
    let size = st.st_size as u64;
    let nospace = |e: io::Error, syscall: &'static str| {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            RelinkError::NoSpace { path: dst_path.clone(), original: original.into(), size }
        } else {
            RelinkError::Io(crate::sys::SysError { path: dst_path.clone(), syscall, source: e })
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
    // Size, owner and mode set only where the new inode differs (a clone has the size, the
    // create gave it the permission bits): the fewer calls, the shorter the freeze.
    let now = sys::fstat(tfd.as_raw_fd()).map_err(ioe(&dst_path, "fstat"))?;
    let fd = tfd.as_raw_fd();
    let ok = |r: libc::c_int| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    let want_mode = st.st_mode & 0o7777;
    let chown = (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid);
    // SAFETY (each block): plain syscalls on our descriptor.
    if now.st_size as u64 != size {
        ok(unsafe { libc::ftruncate(fd, size as libc::off_t) }).map_err(|e| nospace(e, "ftruncate"))?;
    }
    if chown {
        ok(unsafe { libc::fchown(fd, st.st_uid, st.st_gid) }).map_err(ioe(&dst_path, "fchown"))?;
    }
    // after a chown, which clears the set-id bits
    if chown || now.st_mode & 0o7777 != want_mode {
        ok(unsafe { libc::fchmod(fd, want_mode) }).map_err(ioe(&dst_path, "fchmod"))?;
    }
    let ts = sys::atime_mtime(st);
    ok(unsafe { libc::futimens(fd, ts.as_ptr()) }).map_err(ioe(&dst_path, "futimens"))?;
    if bytes > 0 {
        ok(unsafe { libc::fsync(fd) }).map_err(|e| nospace(e, "fsync"))?;
    }
    let ino = now.st_ino;
    let me = format!("/proc/self/fd/{}", tfd.as_raw_fd());
    sys::link_follow(&me, dir.fd(), OsStr::new(name)).map_err(ioe(&dst_path, "linkat"))?;
    Ok((method, bytes, ino))
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
        // 64 MiB at most per call, so that the progress moves on a large copy.
        let chunk = (len - done).min(64 << 20) as usize;
        if *method == Method::CopyRange {
            let mut si = (start + done) as i64;
            let mut di = si;
            // SAFETY: copy_file_range between our descriptors with explicit offsets.
            let n = unsafe { libc::copy_file_range(src, &mut si, dst, &mut di, chunk, 0) };
            if n > 0 {
                done += n as u64;
                COPIED_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
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
        COPIED_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(done)
}
