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
use std::path::Path;

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

/// Relinks the objects of one checkpoint and remembers every name it made, so that they can be
/// removed again (after a failure, or once a snapshot holds them).
pub struct Relinker {
    id: String,
    template: Template,
    counter: u64,
    dirs: HashMap<u32, CheckpointDir>,
    /// (mnt_id, name, is_dir) of every name made, in order.
    made: Vec<(u32, String, bool)>,
    /// The kernel module's device, opened at the first orphan (`Some(None)`: not loaded).
    kdev: Option<Option<crate::kernel_link::Device>>,
}

impl Relinker {
    pub fn new(id: &str, template: Template) -> Relinker {
        Relinker { id: id.into(), template, counter: 0, dirs: HashMap::new(), made: vec![], kdev: None }
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
        skip: impl Fn(&Object) -> bool,
        mut progress: impl FnMut(&Object),
    ) -> Result<Stats, RelinkError> {
        let mut stats = Stats::default();
        for o in objects.iter_mut() {
            if skip(o) {
                continue;
            }
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
                recreate_node(dir, &name, &st, &src).map(|()| (Method::Recreate, 0))
            } else {
                match sys::link_follow(&src, dir.fd(), OsStr::new(&name)) {
                    Ok(()) => Ok((Method::Link, 0)),
                    // nlink == 0 and not an O_TMPFILE: linkat refuses it. The kernel module
                    // links it all the same (the same inode, no data written); else copy it.
                    Err(e)
                        if e.raw_os_error() == Some(libc::ENOENT)
                            && st.st_nlink == 0
                            && o.kind == FileKind::Regular =>
                    {
                        match kernel_link(&mut self.kdev, &src, dir, &name) {
                            Some(r) => r,
                            None => copy_orphan(&src, dir, &name, &st, &o.original_path),
                        }
                    }
                    Err(e) => Err(RelinkError::Io(crate::sys::SysError {
                        path: dir.path.join(&name),
                        syscall: "linkat",
                        source: e,
                    })),
                }
            };
            match r {
                Err(RelinkError::Io(crate::sys::SysError { source, .. }))
                    if source.raw_os_error() == Some(libc::EEXIST) =>
                {
                    continue
                }
                Err(e) => return Err(e),
                Ok((method, bytes)) => {
                    self.made.push((mnt_id, name.clone(), is_dir));
                    let new = dir
                        .open(&name, libc::O_PATH | libc::O_NOFOLLOW)
                        .and_then(|f| sys::fstat(f.as_raw_fd()).map_err(ioe(&dir.path, "fstat")))?;
                    match method {
                        Method::Link | Method::KernelLink => stats.linked += 1,
                        Method::Clone => stats.cloned += 1,
                        Method::CopyRange | Method::SparseCopy => stats.copied += 1,
                        Method::Recreate => stats.recreated += 1,
                    }
                    if matches!(method, Method::Clone | Method::CopyRange | Method::SparseCopy) {
                        stats.bytes_preserved += st.st_size as u64;
                    }
                    stats.bytes_copied += bytes;
                    o.relinked = Some(Relinked {
                        rel_path: relinked_rel_path(&name),
                        name,
                        method,
                        ino: new.st_ino,
                        bytes_copied: bytes,
                    });
                    return Ok(());
                }
            }
        }
        Err(RelinkError::Io(crate::sys::SysError {
            path: self.dirs[&mnt_id].path.clone(),
            syscall: "linkat",
            source: io::Error::from_raw_os_error(libc::EEXIST),
        }))
    }

    /// Remove every name this relinker made (best effort, all attempted); the first error is
    /// returned.
    /// Remove the names made on the mounts `mnts` (by mount id); the others stay.
    pub fn remove_on(&mut self, mnts: &std::collections::HashSet<u32>) -> Result<(), RelinkError> {
        let (doomed, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.made).into_iter().partition(|(m, _, _)| mnts.contains(m));
        self.made = kept;
        self.remove(doomed)
    }

    pub fn remove_all(&mut self) -> Result<(), RelinkError> {
        let all = std::mem::take(&mut self.made);
        self.remove(all)
    }

    /// Remove `names` (all attempted, last made first); those that could not be removed stay
    /// in the list of names made, for a later undo. The first error is returned.
    fn remove(&mut self, names: Vec<(u32, String, bool)>) -> Result<(), RelinkError> {
        let mut first = None;
        for (mnt, name, is_dir) in names.into_iter().rev() {
            let Some(d) = self.dirs.get(&mnt) else { continue };
            match d.remove(&name, is_dir) {
                Err(e) if !super::remove::is_enoent(&e) => {
                    first.get_or_insert(e);
                    self.made.insert(0, (mnt, name, is_dir));
                }
                _ => {}
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// Link an orphan with the snapckpt-relink kernel module, when it is loaded: `None` when it is
/// not (or refuses for a reason a copy does not share: then the copy is made).
fn kernel_link(
    kdev: &mut Option<Option<crate::kernel_link::Device>>,
    src: &Path,
    dir: &CheckpointDir,
    name: &str,
) -> Option<Result<(Method, u64), RelinkError>> {
    let dev = kdev.get_or_insert_with(|| crate::kernel_link::Device::open().ok()).as_ref()?;
    // O_PATH (the module takes it: fget_raw): no open of the file itself, so no lease break
    // (which would wait lease-break-time for the frozen holder), no fanotify permission event,
    // no filesystem open call.
    let f = sys::open(src, libc::O_PATH, 0).ok()?;
    match dev.link(f.as_raw_fd(), dir.fd(), name) {
        Ok(()) => Some(Ok((Method::KernelLink, 0))),
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
fn recreate_node(dir: &CheckpointDir, name: &str, st: &libc::stat, src: &Path) -> Result<(), RelinkError> {
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
    // SAFETY: plain syscalls on our descriptors.
    unsafe {
        if libc::ftruncate(tfd.as_raw_fd(), size as libc::off_t) < 0 {
            return Err(nospace(io::Error::last_os_error(), "ftruncate"));
        }
        if libc::fchown(tfd.as_raw_fd(), st.st_uid, st.st_gid) < 0
            || libc::fchmod(tfd.as_raw_fd(), st.st_mode & 0o7777) < 0
        {
            return Err(RelinkError::Io(crate::sys::SysError {
                path: dst_path.clone(),
                syscall: "fchown/fchmod",
                source: io::Error::last_os_error(),
            }));
        }
        let ts = [
            libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
            libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
        ];
        if libc::futimens(tfd.as_raw_fd(), ts.as_ptr()) < 0 {
            return Err(RelinkError::Io(crate::sys::SysError {
                path: dst_path.clone(),
                syscall: "futimens",
                source: io::Error::last_os_error(),
            }));
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
