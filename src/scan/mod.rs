//! Scanning: what a set of (frozen) tasks holds open, and which of it has no name any more.
//!
//! For every task this reads its fds (`/proc/PID/fd`, `fdinfo`), its file mappings
//! (`/proc/PID/maps`, `map_files`), its cwd, root and exe. Each file is classified with
//! `fstat` and by looking its name up again *in the task's root* (openat2 with
//! `RESOLVE_IN_ROOT`): the `" (deleted)"` suffix that readlink adds is never trusted alone,
//! because a file may really be called `x (deleted)`.
//!
//! Unlinked inodes become [`Object`]s, one per inode (keyed by dev/ino), shared by every fd,
//! mapping, cwd or exe of every task that holds it.

use crate::procfs::{self, parse_fdinfo, parse_maps_line, FdInfo, MapsLine};
use crate::record::{Fd, FileKind, FileRef, Held, Holder, Mapping, MountRef, Object, Task, Unlinked};
use crate::sys;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Kernel's `__O_TMPFILE` bit as shown in fdinfo `flags`.
const O_TMPFILE_BIT: u32 = 0o20000000;
const DELETED: &str = " (deleted)";

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("task {pid} exited during the scan ({path}: {source}); nothing was changed, run it again")]
    TaskExited { pid: i32, path: PathBuf, source: io::Error },
    #[error("cannot inspect pid {pid}: {syscall} {path}: {source} (snapckpt needs root and ptrace access to the task)")]
    Access { pid: i32, path: PathBuf, syscall: &'static str, source: io::Error },
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    #[error("{path}: cannot parse: {msg}")]
    Parse { path: PathBuf, msg: String },
}

/// The result of a scan.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub tasks: Vec<Task>,
    pub objects: Vec<Object>,
    /// Every mount on which the tasks hold something with a path (an fd, a mapping, cwd,
    /// root or exe), by mount point: what a consistent snapshot of their files must cover.
    pub mounts: Vec<MountRef>,
}

impl Scan {
    /// Objects that need the relink stage (everything with a filesystem behind it).
    pub fn unlinked_count(&self) -> usize {
        self.objects.len()
    }
}

/// All processes on the system except kernel threads and snapckpt itself (for `scan --all`).
pub fn all_pids() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v: Vec<i32> = std::fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    v.retain(|&p| p != me && std::fs::read_link(format!("/proc/{p}/exe")).is_ok());
    v.sort_unstable();
    v
}

/// What a failed read of a task's `/proc` entry means: the task exited (ENOENT, ESRCH, or
/// it is gone or a zombie now: a zombie's entries fail with other errors, e.g. EINVAL), the
/// caller may not look (EACCES, EPERM), or something else.
fn proc_error(pid: i32, path: PathBuf, syscall: &'static str, source: io::Error) -> ScanError {
    let exited = matches!(source.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
        || matches!(crate::tasks::zombie(pid), Ok(None) | Ok(Some(Some(_))));
    if exited {
        ScanError::TaskExited { pid, path, source }
    } else if matches!(source.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) {
        ScanError::Access { pid, path, syscall, source }
    } else {
        ScanError::Io(crate::sys::SysError { path, syscall, source })
    }
}

/// Scan the given tasks. They must be alive: [`crate::tasks::resolve`] leaves zombies out,
/// and a task that has become one since has exited ([`ScanError::TaskExited`]).
///
/// Tasks are read in parallel (one thread per core, at most [`MAX_THREADS`]); the result is
/// the same as a scan of one task after the other in `pids` order: objects are numbered by
/// their first holder in that order.
pub fn scan(pids: &[i32]) -> Result<Scan, ScanError> {
    let mut m = Merger::default();
    for r in scan_tasks(pids) {
        m.add(r?);
    }
    Ok(m.finish())
}

/// Scan as many of the given tasks as can be read, skipping tasks that vanish (for `scan --all`).
pub fn scan_lenient(pids: &[i32]) -> Scan {
    let mut m = Merger::default();
    for t in scan_tasks(pids).into_iter().flatten() {
        m.add(t);
    }
    m.finish()
}

/// At most this many scanning threads.
pub const MAX_THREADS: usize = 8;
/// Tasks per thread below which another thread is not worth starting.
const TASKS_PER_THREAD: usize = 16;

/// Each task's scan, in `pids` order.
fn scan_tasks(pids: &[i32]) -> Vec<Result<TaskScan, ScanError>> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let threads = cores.min(MAX_THREADS).min(pids.len().div_ceil(TASKS_PER_THREAD)).max(1);
    if threads == 1 {
        let mut s = Scanner::default();
        return pids.iter().map(|&p| s.task(p)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = || {
        let mut s = Scanner::default();
        let mut out = vec![];
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(&pid) = pids.get(i) else { break };
            out.push((i, s.task(pid)));
        }
        out
    };
    let mut all: Vec<(usize, Result<TaskScan, ScanError>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (1..threads).map(|_| sc.spawn(work)).collect();
        let mut all = work();
        for h in handles {
            match h.join() {
                Ok(v) => all.extend(v),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        all
    });
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// One task's scan before objects are shared between tasks: its record with the objects
/// still to be numbered ([`Pending`]).
struct TaskScan {
    task: Task,
    pending: Vec<Pending>,
    /// The mounts the task holds something on.
    used: Vec<MountRef>,
}

/// Where in a task's record an object index goes.
#[derive(Clone, Copy)]
enum Slot {
    Cwd,
    Exe,
    Fd(usize),
    Map(usize),
}

/// An unlinked file found in a task: the object it would make (index and holders set when
/// merged), the holder, and where its index goes.
struct Pending {
    slot: Slot,
    holder: Holder,
    object: Object,
}

/// Puts task scans together: one object per inode, numbered in order of first holder.
#[derive(Default)]
struct Merger {
    tasks: Vec<Task>,
    objects: Vec<Object>,
    by_inode: HashMap<(u64, u64), usize>,
    used: std::collections::BTreeMap<String, MountRef>,
}

impl Merger {
    fn add(&mut self, ts: TaskScan) {
        let TaskScan { mut task, pending, used } = ts;
        for m in used {
            self.used.entry(m.mount_point.clone()).or_insert(m);
        }
        for p in pending {
            let key = (p.object.dev, p.object.ino);
            let i = match self.by_inode.get(&key) {
                Some(&i) => {
                    self.objects[i].holders.push(p.holder);
                    i
                }
                None => {
                    let i = self.objects.len();
                    let mut o = p.object;
                    o.index = i;
                    o.holders = vec![p.holder];
                    self.objects.push(o);
                    self.by_inode.insert(key, i);
                    i
                }
            };
            let slot = match p.slot {
                Slot::Cwd => task.cwd.as_mut().map(|r| &mut r.object),
                Slot::Exe => task.exe.as_mut().map(|r| &mut r.object),
                Slot::Fd(n) => task.fds.get_mut(n).map(|f| &mut f.object),
                Slot::Map(n) => task.maps.get_mut(n).map(|m| &mut m.object),
            };
            if let Some(s) = slot {
                *s = Some(i);
            }
        }
        self.tasks.push(task);
    }

    fn finish(self) -> Scan {
        Scan { tasks: self.tasks, objects: self.objects, mounts: self.used.into_values().collect() }
    }
}

/// Note that a task holds something on mount `mnt_id`.
fn note(used: &mut Vec<MountRef>, mounts: &HashMap<u32, MountRef>, mnt_id: Option<u32>) {
    if let Some(m) = mnt_id.and_then(|id| mounts.get(&id)) {
        if !used.iter().any(|u| u.mnt_id == m.mnt_id) {
            used.push(m.clone());
        }
    }
}

/// What a file mapping resolved to, kept for the other mappings of the same file.
#[derive(Clone)]
struct MapFile {
    st: libc::stat,
    target: Vec<u8>,
    mnt_id: Option<u32>,
}

/// One scanning thread's state: caches that stay valid for one scan.
#[derive(Default)]
struct Scanner {
    /// Mount tables by mount namespace and root.
    mountinfo: HashMap<Rc<str>, Rc<HashMap<u32, MountRef>>>,
    /// Whether a path names an inode, by (namespace and root, path, dev, ino): the lookups
    /// of names that still lead to their file (shared libraries, /dev/null, a log) are the
    /// same in every task of one namespace.
    resolves: HashMap<(Rc<str>, Vec<u8>, u64, u64), bool>,
    /// File mappings by (namespace and root, the maps line's dev, inode and path).
    maps: HashMap<(Rc<str>, String), MapFile>,
}

/// One file found in a task, before classification.
struct Found<'a> {
    pid: i32,
    /// readlink text of the /proc link
    target: &'a [u8],
    st: &'a libc::stat,
    mnt_id: Option<u32>,
    fdflags: Option<u32>,
}

/// A task's root, opened when a name must be looked up in it.
struct Root<'a> {
    pid_dir: &'a OwnedFd,
    fd: Option<OwnedFd>,
    /// Mount namespace and root path: what a name's meaning depends on.
    key: Rc<str>,
}

/// A `map_err` adapter for a failed `syscall` on the entry `name` of the task's /proc
/// directory `base` ([`proc_error`]: exited, no access, or I/O).
fn entry_error(
    pid: i32,
    base: &Path,
    name: &str,
    syscall: &'static str,
) -> impl FnOnce(io::Error) -> ScanError {
    let path = base.join(name);
    move |source| proc_error(pid, path, syscall, source)
}

/// A task's record before what it holds: stat (a zombie is an exited task), cmdline, threads.
fn task_header(pid: i32, base: &Path, dir: &OwnedFd) -> Result<Task, ScanError> {
    let gone = |name, syscall| entry_error(pid, base, name, syscall);
    let stat_path = base.join("stat");
    let stat = read_at(dir, c"stat", 4096).map_err(gone("stat", "read"))?;
    let stat = String::from_utf8_lossy(&stat);
    let ps = procfs::ProcStat::parse(&stat)
        .ok_or_else(|| ScanError::Parse { path: stat_path.clone(), msg: "no comm/ppid".into() })?;
    if ps.is_dead() && matches!(crate::tasks::zombie(pid), Ok(Some(Some(_))) | Ok(None)) {
        let source = io::Error::other("it is a zombie now");
        return Err(ScanError::TaskExited { pid, path: stat_path, source });
    }
    let cmdline = read_at(dir, c"cmdline", 0)
        .map(|b| b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(sys::lossy).collect())
        .unwrap_or_default();
    let mut threads: Vec<i32> =
        list_dir(dir, c"task").map_err(gone("task", "opendir"))?.into_iter().map(|n| n as i32).collect();
    threads.sort_unstable();
    Ok(Task {
        pid,
        ns_pid: None,
        ppid: ps.ppid,
        threads,
        comm: ps.comm,
        cmdline,
        cwd: None,
        root: None,
        exe: None,
        fds: vec![],
        maps: vec![],
    })
}

/// What one task's walk collects besides its record: the objects found and the mounts used.
struct Walk<'a> {
    pid: i32,
    base: &'a Path,
    dir: &'a OwnedFd,
    mounts: Rc<HashMap<u32, MountRef>>,
    root: Root<'a>,
    pending: Vec<Pending>,
    used: Vec<MountRef>,
}

impl Walk<'_> {
    /// The error for a /proc read of this task: exited, no access, or I/O.
    fn gone(&self, name: &str, syscall: &'static str) -> impl FnOnce(io::Error) -> ScanError {
        entry_error(self.pid, self.base, name, syscall)
    }
}

impl Scanner {
    /// One task: its stat line, then what it holds (cwd/root/exe, fds, file mappings).
    fn task(&mut self, pid: i32) -> Result<TaskScan, ScanError> {
        let base = procfs::pid_dir(pid);
        let dir = sys::open(&base, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(|e| proc_error(pid, base.clone(), "open", e))?;
        let mut task = task_header(pid, &base, &dir)?;
        let root_text = readlink_at(&dir, c"root").map_err(entry_error(pid, &base, "root", "readlink"))?;
        let ns = readlink_at(&dir, c"ns/mnt").unwrap_or_default();
        let key: Rc<str> = format!("{}/{}", sys::lossy(&ns), sys::lossy(&root_text)).into();
        let mut w = Walk {
            pid,
            base: &base,
            dir: &dir,
            mounts: self.mounts(pid, &dir, &key)?,
            root: Root { pid_dir: &dir, fd: None, key },
            pending: vec![],
            used: vec![],
        };
        self.links(&mut w, &mut task)?;
        self.fds(&mut w, &mut task)?;
        self.maps(&mut w, &mut task)?;
        Ok(TaskScan { task, pending: w.pending, used: w.used })
    }

    /// cwd, root and exe: each a FileRef, and an object if it is unlinked (not root).
    fn links(&mut self, w: &mut Walk, task: &mut Task) -> Result<(), ScanError> {
        for (what, name, slot) in
            [(Held::Cwd, c"cwd", Slot::Cwd), (Held::Root, c"root", Slot::Cwd), (Held::Exe, c"exe", Slot::Exe)]
        {
            let Ok(target) = readlink_at(w.dir, name) else { continue }; // kernel threads, zombies
            let Ok((st, mnt_id)) = statx_at(w.dir, name) else { continue };
            let r = FileRef { path: sys::lossy(&target), dev: st.st_dev, ino: st.st_ino, object: None };
            note(&mut w.used, &w.mounts, mnt_id);
            if what != Held::Root {
                let f = Found { pid: w.pid, target: &target, st: &st, mnt_id, fdflags: None };
                if let Some(o) = self.found(&f, &mut w.root, &w.mounts)? {
                    w.pending.push(Pending { slot, holder: Holder { pid: w.pid, what }, object: o });
                }
            }
            match what {
                Held::Cwd => task.cwd = Some(r),
                Held::Root => task.root = Some(r),
                _ => task.exe = Some(r),
            }
        }
        Ok(())
    }

    /// The fds: readlink, statx and fdinfo of each; an fd closed meanwhile is skipped.
    fn fds(&mut self, w: &mut Walk, task: &mut Task) -> Result<(), ScanError> {
        let open_dir = |name: &str| {
            sys::openat2(w.dir.as_raw_fd(), OsStr::new(name), libc::O_RDONLY | libc::O_DIRECTORY, 0, 0)
                .map_err(w.gone(name, "open"))
        };
        let (fd_dirfd, info_dirfd) = (open_dir("fd")?, open_dir("fdinfo")?);
        let mut fds = list_dir(&fd_dirfd, c".").map_err(w.gone("fd", "opendir"))?;
        fds.sort_unstable();
        for n in fds {
            let name = CString::new(n.to_string()).expect("digits");
            // An fd that vanished between readdir and here was closed: not an error.
            let Ok(target) = readlink_at(&fd_dirfd, &name) else { continue };
            let Ok((st, _)) = statx_at(&fd_dirfd, &name) else { continue };
            let Ok(info) = read_at(&info_dirfd, &name, 1024) else { continue };
            let FdInfo { pos, flags, mnt_id } = parse_fdinfo(&String::from_utf8_lossy(&info));
            let kind = if target.first() == Some(&b'/') && w.mounts.contains_key(&mnt_id) {
                FileKind::from_mode(st.st_mode)
            } else {
                FileKind::Anonymous
            };
            let n = n as i32;
            if kind != FileKind::Anonymous {
                note(&mut w.used, &w.mounts, Some(mnt_id));
                let f = Found {
                    pid: w.pid,
                    target: &target,
                    st: &st,
                    mnt_id: Some(mnt_id),
                    fdflags: Some(flags),
                };
                if let Some(o) = self.found(&f, &mut w.root, &w.mounts)? {
                    let holder = Holder { pid: w.pid, what: Held::Fd(n) };
                    w.pending.push(Pending { slot: Slot::Fd(task.fds.len()), holder, object: o });
                }
            }
            task.fds.push(Fd {
                fd: n,
                path: sys::lossy(&target),
                kind,
                flags,
                pos,
                mnt_id,
                dev: st.st_dev,
                ino: st.st_ino,
                nlink: st.st_nlink,
                object: None,
            });
        }
        Ok(())
    }

    /// The file mappings, each range once; a file mapped again is looked up once per namespace.
    fn maps(&mut self, w: &mut Walk, task: &mut Task) -> Result<(), ScanError> {
        let maps = read_at(w.dir, c"maps", 0).map_err(w.gone("maps", "read"))?;
        let maps = String::from_utf8_lossy(&maps);
        let mut seen = std::collections::HashSet::new();
        let map_files =
            sys::openat2(w.dir.as_raw_fd(), OsStr::new("map_files"), libc::O_PATH | libc::O_DIRECTORY, 0, 0)
                .ok();
        for line in maps.lines() {
            let Some(m) = parse_maps_line(line) else { continue };
            if !m.path.starts_with('/') || !seen.insert((m.start, m.end)) {
                continue;
            }
            let Some(mf) = map_files.as_ref() else { continue };
            let Some(info) = self.map_file(&w.root.key, line, &m, mf) else { continue };
            if matches!(info.mnt_id, Some(id) if w.mounts.contains_key(&id)) {
                note(&mut w.used, &w.mounts, info.mnt_id);
                let f = Found {
                    pid: w.pid,
                    target: &info.target,
                    st: &info.st,
                    mnt_id: info.mnt_id,
                    fdflags: None,
                };
                if let Some(o) = self.found(&f, &mut w.root, &w.mounts)? {
                    let holder = Holder { pid: w.pid, what: Held::Map { start: m.start, end: m.end } };
                    w.pending.push(Pending { slot: Slot::Map(task.maps.len()), holder, object: o });
                }
            } // else SysV shm, memfd and other kernel-internal mounts
            task.maps.push(Mapping {
                start: m.start,
                end: m.end,
                perms: m.perms,
                pgoff: m.pgoff,
                path: sys::lossy(&info.target),
                dev: info.st.st_dev,
                ino: info.st.st_ino,
                object: None,
            });
        }
        Ok(())
    }

    /// What a mapped range's file is (statx and readlink of map_files), cached: the same
    /// file mapped again (in this task or another of its namespace) has a maps line naming
    /// the same device, inode and path.
    fn map_file(&mut self, key: &Rc<str>, line: &str, m: &MapsLine, mf: &OwnedFd) -> Option<MapFile> {
        let dev_ino = line.split_ascii_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" ");
        let cache_key = (key.clone(), format!("{dev_ino} {}", m.path));
        if let Some(i) = self.maps.get(&cache_key) {
            return Some(i.clone());
        }
        let name = CString::new(format!("{:x}-{:x}", m.start, m.end)).expect("hex");
        let (st, mnt_id) = statx_at(mf, &name).ok()?;
        let target = readlink_at(mf, &name).unwrap_or_else(|_| m.path.as_bytes().to_vec());
        let i = MapFile { st, target, mnt_id };
        self.maps.insert(cache_key, i.clone());
        Some(i)
    }

    fn mounts(
        &mut self,
        pid: i32,
        dir: &OwnedFd,
        key: &Rc<str>,
    ) -> Result<Rc<HashMap<u32, MountRef>>, ScanError> {
        if let Some(m) = self.mountinfo.get(key) {
            return Ok(m.clone());
        }
        let p = procfs::pid_path(pid, "mountinfo");
        let text =
            read_at(dir, c"mountinfo", 0).map_err(|source| proc_error(pid, p.clone(), "read", source))?;
        let m = Rc::new(mount_refs(&String::from_utf8_lossy(&text)));
        self.mountinfo.insert(key.clone(), m.clone());
        Ok(m)
    }

    /// Whether a file with a link count is unlinked (its name looked up again in the task's
    /// root, see [`classify`]), with the answers kept for other tasks of the namespace.
    fn unlinked(&mut self, root: &mut Root, f: &Found) -> Result<Option<Unlinked>, ScanError> {
        if f.st.st_nlink == 0 {
            return Ok(classify_nlink0(f.st, f.fdflags));
        }
        let kind = FileKind::from_mode(f.st.st_mode);
        let mut cands = vec![f.target];
        if let Some(s) = f.target.strip_suffix(DELETED.as_bytes()) {
            cands.push(s);
        }
        for c in cands {
            let key = (root.key.clone(), c.to_vec(), f.st.st_dev, f.st.st_ino);
            let found = match self.resolves.get(&key) {
                Some(&b) => b,
                None => {
                    if root.fd.is_none() {
                        let path = procfs::pid_path(f.pid, "root");
                        let fd = sys::openat2(
                            root.pid_dir.as_raw_fd(),
                            OsStr::new("root"),
                            libc::O_PATH | libc::O_DIRECTORY,
                            0,
                            0,
                        )
                        .map_err(|source| proc_error(f.pid, path, "open", source))?;
                        root.fd = Some(fd);
                    }
                    let b = resolves_to(root.fd.as_ref().expect("opened"), c, f.st.st_dev, f.st.st_ino);
                    self.resolves.insert(key, b);
                    b
                }
            };
            if found {
                return Ok(None);
            }
        }
        Ok(Some(if kind == FileKind::Directory { Unlinked::RemovedDir } else { Unlinked::NameGone }))
    }

    /// Classify one file; if unlinked, the object it makes (not yet numbered).
    fn found(
        &mut self,
        f: &Found,
        root: &mut Root,
        mounts: &HashMap<u32, MountRef>,
    ) -> Result<Option<Object>, ScanError> {
        let Some(class) = self.unlinked(root, f)? else { return Ok(None) };
        // The mount: by mnt_id, else the mount with this device whose mount point is the
        // longest prefix of the path.
        let path = original_path(f.target);
        let mount = f.mnt_id.and_then(|id| mounts.get(&id)).cloned().or_else(|| {
            mounts
                .values()
                .filter(|m| m.dev == f.st.st_dev && path_under(&path, &m.mount_point))
                .max_by_key(|m| m.mount_point.len())
                .cloned()
        });
        let Some(mount) = mount else { return Ok(None) };
        Ok(Some(Object {
            index: 0,
            kind: FileKind::from_mode(f.st.st_mode),
            class,
            original_path: path,
            dev: f.st.st_dev,
            ino: f.st.st_ino,
            nlink: f.st.st_nlink,
            size: f.st.st_size as u64,
            mode: f.st.st_mode,
            uid: f.st.st_uid,
            gid: f.st.st_gid,
            rdev: f.st.st_rdev,
            allocated: f.st.st_blocks as u64 * 512,
            criu_key: Object::criu_key_for(mount.mnt_id, f.st.st_ino),
            mount,
            holders: vec![],
            relinked: None,
        }))
    }
}

/// readlinkat(2) of `name` in `dir`, raw bytes.
fn readlink_at(dir: &OwnedFd, name: &CStr) -> io::Result<Vec<u8>> {
    // On the stack, the result copied out at its length: a scan keeps one per fd.
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); libc::PATH_MAX as usize + 1];
    // SAFETY: valid C string and buffer of the given length.
    let n = unsafe { libc::readlinkat(dir.as_raw_fd(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel wrote the first n bytes.
    Ok(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n as usize) }.to_vec())
}

/// statx(2) of `name` in `dir`, following a (magic) link: the target's stat and mount id.
fn statx_at(dir: &OwnedFd, name: &CStr) -> io::Result<(libc::stat, Option<u32>)> {
    // SAFETY: plain data.
    let mut s: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    let r = unsafe {
        libc::statx(dir.as_raw_fd(), name.as_ptr(), 0, libc::STATX_BASIC_STATS | libc::STATX_MNT_ID, &mut s)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain data.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    st.st_dev = libc::makedev(s.stx_dev_major, s.stx_dev_minor);
    st.st_ino = s.stx_ino;
    st.st_nlink = s.stx_nlink as _;
    st.st_mode = s.stx_mode as _;
    st.st_uid = s.stx_uid;
    st.st_gid = s.stx_gid;
    st.st_rdev = libc::makedev(s.stx_rdev_major, s.stx_rdev_minor);
    st.st_size = s.stx_size as _;
    st.st_blksize = s.stx_blksize as _;
    st.st_blocks = s.stx_blocks as _;
    st.st_atime = s.stx_atime.tv_sec;
    st.st_atime_nsec = s.stx_atime.tv_nsec as _;
    st.st_mtime = s.stx_mtime.tv_sec;
    st.st_mtime_nsec = s.stx_mtime.tv_nsec as _;
    st.st_ctime = s.stx_ctime.tv_sec;
    st.st_ctime_nsec = s.stx_ctime.tv_nsec as _;
    let mnt_id = (s.stx_mask & libc::STATX_MNT_ID != 0).then_some(s.stx_mnt_id as u32);
    Ok((st, mnt_id))
}

/// Read `name` in `dir`: whole (`limit` 0), or only its first read of up to `limit` bytes.
fn read_at(dir: &OwnedFd, name: &CStr, limit: usize) -> io::Result<Vec<u8>> {
    // SAFETY: valid C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let chunk = if limit > 0 { limit } else { 8192 };
    let mut buf: Vec<u8> = Vec::with_capacity(chunk);
    loop {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(chunk.max(buf.len()));
        }
        let spare = buf.capacity() - buf.len();
        // SAFETY: reading into the spare capacity of buf.
        let n = sys::retry_eintr(|| unsafe {
            libc::read(fd.as_raw_fd(), buf.as_mut_ptr().add(buf.len()).cast(), spare)
        })?;
        if n == 0 {
            break;
        }
        // SAFETY: the kernel wrote n bytes there.
        unsafe { buf.set_len(buf.len() + n) };
        if limit > 0 {
            break;
        }
    }
    Ok(buf)
}

/// The numeric entries of directory `name` in `dir` (fds, thread ids), read with
/// getdents64 directly (a `/proc` directory needs nothing else).
fn list_dir(dir: &OwnedFd, name: &CStr) -> io::Result<Vec<u32>> {
    // SAFETY: valid C string.
    let fd = unsafe {
        libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor of ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; 32768];
    let mut v = vec![];
    loop {
        // SAFETY: the buffer is valid for its length.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        let mut off = 0usize;
        while off + 19 <= n as usize {
            // struct linux_dirent64: u64 d_ino, i64 d_off, u16 d_reclen, u8 d_type, char d_name[]
            let reclen = u16::from_ne_bytes([buf[off + 16], buf[off + 17]]) as usize;
            if reclen == 0 || off + reclen > n as usize {
                break;
            }
            let name = &buf[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(x) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                v.push(x);
            }
            off += reclen;
        }
    }
    Ok(v)
}

/// The class of a file with no link left.
fn classify_nlink0(st: &libc::stat, fdflags: Option<u32>) -> Option<Unlinked> {
    Some(match FileKind::from_mode(st.st_mode) {
        FileKind::Directory => Unlinked::RemovedDir,
        FileKind::Regular if fdflags.is_some_and(|f| f & O_TMPFILE_BIT != 0) => Unlinked::Tmpfile,
        FileKind::Regular => Unlinked::Orphan,
        _ => Unlinked::RemovedNode,
    })
}

/// Decide whether a file a task holds is unlinked, and how.
///
/// `root` is the task's root directory (an O_PATH fd of /proc/PID/root); `target` the readlink
/// text of the /proc link. `None` means the file still has a name that leads to it.
pub fn classify(root: &OwnedFd, target: &[u8], st: &libc::stat, fdflags: Option<u32>) -> Option<Unlinked> {
    let kind = FileKind::from_mode(st.st_mode);
    if st.st_nlink == 0 {
        return classify_nlink0(st, fdflags);
    }
    // nlink > 0: look the name up again as the task would. Try the text as given first (the
    // file may be named "x (deleted)"), then without the suffix.
    let mut cands = vec![target];
    if let Some(s) = target.strip_suffix(DELETED.as_bytes()) {
        cands.push(s);
    }
    for c in cands {
        if resolves_to(root, c, st.st_dev, st.st_ino) {
            return None;
        }
    }
    Some(if kind == FileKind::Directory { Unlinked::RemovedDir } else { Unlinked::NameGone })
}

/// Does `path` (absolute, in the task's view) name the inode dev/ino?
fn resolves_to(root: &OwnedFd, path: &[u8], dev: u64, ino: u64) -> bool {
    let rel: &[u8] = if path.first() == Some(&b'/') { &path[1..] } else { path };
    let rel = if rel.is_empty() { b"." as &[u8] } else { rel };
    match sys::openat2(
        root.as_raw_fd(),
        sys::os(rel),
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_IN_ROOT | sys::RESOLVE_NO_MAGICLINKS,
    ) {
        Ok(fd) => sys::fstat(fd.as_raw_fd()).map(|st| st.st_dev == dev && st.st_ino == ino).unwrap_or(false),
        Err(_) => false,
    }
}

/// The readlink text without the " (deleted)" suffix.
pub fn original_path(target: &[u8]) -> String {
    sys::lossy(target.strip_suffix(DELETED.as_bytes()).unwrap_or(target))
}

fn path_under(path: &str, mp: &str) -> bool {
    mp == "/" || path == mp || path.strip_prefix(mp).is_some_and(|r| r.starts_with('/'))
}

/// comm and ppid from /proc/PID/stat (see [`procfs::ProcStat::parse`]).
pub fn parse_stat(s: &str) -> Option<(String, i32)> {
    procfs::ProcStat::parse(s).map(|st| (st.comm, st.ppid))
}

/// The mounts of a mountinfo text as the scan records them, by mount id.
pub fn mount_refs(text: &str) -> HashMap<u32, MountRef> {
    let lossy = |p: &Path| p.to_string_lossy().into_owned();
    procfs::parse_mountinfo(text.as_bytes())
        .into_iter()
        .map(|e| {
            let m = MountRef {
                mnt_id: e.mnt_id,
                mount_point: lossy(&e.mount_point),
                fs_root: lossy(&e.root),
                fstype: e.fstype,
                source: e.source,
                dev: e.dev,
            };
            (e.mnt_id, m)
        })
        .collect()
}

/// The mount a checkpoint directory goes to, reached as snapckpt sees it: through the task's
/// root, so that tasks in other mount namespaces work and linkat stays on one vfsmount.
pub fn mount_dir_for(pid: i32, mount_point: &str) -> PathBuf {
    procfs::in_root(pid, mount_point)
}

/// The /proc path through which snapckpt reaches a holder's file.
pub fn holder_proc_path(h: &Holder) -> Option<PathBuf> {
    Some(h.what.proc_path(h.pid))
}

#[cfg(test)]
mod tests;
