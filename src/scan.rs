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

use crate::procfs::{self, parse_fdinfo, parse_maps_line, FdInfo};
use crate::record::{Fd, FileKind, FileRef, Held, Holder, Mapping, MountRef, Object, Task, Unlinked};
use crate::sys;
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Kernel's `__O_TMPFILE` bit as shown in fdinfo `flags`.
const O_TMPFILE_BIT: u32 = 0o20000000;
const DELETED: &str = " (deleted)";

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("task {pid} exited during the scan ({path}: {source}); nothing was changed, run it again")]
    TaskExited { pid: i32, path: PathBuf, source: io::Error },
    #[error("cannot inspect pid {pid}: {syscall} {path}: {source} (snapckpt needs root and ptrace access to the task)")]
    Access { pid: i32, path: PathBuf, syscall: &'static str, source: io::Error },
    #[error("{syscall} {path}: {source}")]
    Io { path: PathBuf, syscall: &'static str, source: io::Error },
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
        ScanError::Io { path, syscall, source }
    }
}

/// Scan the given tasks. They must be alive: [`crate::tasks::resolve`] leaves zombies out,
/// and a task that has become one since has exited ([`ScanError::TaskExited`]).
pub fn scan(pids: &[i32]) -> Result<Scan, ScanError> {
    let mut s = Scanner::default();
    for &pid in pids {
        s.task(pid)?;
    }
    Ok(s.finish())
}

/// Scan as many of the given tasks as can be read, skipping tasks that vanish (for `scan --all`).
pub fn scan_lenient(pids: &[i32]) -> Scan {
    let mut s = Scanner::default();
    for &pid in pids {
        let (nt, no) = (s.tasks.len(), s.objects.len());
        if s.task(pid).is_err() {
            // drop what this task added
            s.tasks.truncate(nt);
            s.objects.truncate(no);
            s.by_inode.retain(|_, i| *i < no);
            for o in &mut s.objects {
                o.holders.retain(|h| h.pid != pid);
            }
        }
    }
    s.finish()
}

#[derive(Default)]
struct Scanner {
    tasks: Vec<Task>,
    objects: Vec<Object>,
    by_inode: HashMap<(u64, u64), usize>,
    mountinfo: HashMap<String, HashMap<u32, MountRef>>,
    used: std::collections::BTreeMap<String, MountRef>,
}

/// One file found in a task, before classification.
struct Found<'a> {
    pid: i32,
    what: Held,
    /// readlink text of the /proc link
    target: &'a [u8],
    st: &'a libc::stat,
    mnt_id: Option<u32>,
    fdflags: Option<u32>,
}

impl Scanner {
    fn finish(self) -> Scan {
        Scan { tasks: self.tasks, objects: self.objects, mounts: self.used.into_values().collect() }
    }

    /// Note that a task holds something on mount `mnt_id`.
    fn uses(&mut self, mounts: &HashMap<u32, MountRef>, mnt_id: Option<u32>) {
        if let Some(m) = mnt_id.and_then(|id| mounts.get(&id)) {
            self.used.entry(m.mount_point.clone()).or_insert_with(|| m.clone());
        }
    }

    fn task(&mut self, pid: i32) -> Result<(), ScanError> {
        let base = procfs::pid_dir(pid);
        let gone = |path: PathBuf, syscall: &'static str| {
            move |source: io::Error| proc_error(pid, path, syscall, source)
        };
        let stat_path = base.join("stat");
        let stat = sys::read_proc(&stat_path).map_err(gone(stat_path.clone(), "read"))?;
        let (comm, ppid) = parse_stat(&stat)
            .ok_or_else(|| ScanError::Parse { path: stat_path.clone(), msg: "no comm/ppid".into() })?;
        if matches!(crate::tasks::zombie(pid), Ok(Some(Some(_))) | Ok(None)) {
            let source = io::Error::other("it is a zombie now");
            return Err(ScanError::TaskExited { pid, path: stat_path, source });
        }
        let cmdline = std::fs::read(base.join("cmdline"))
            .map(|b| b.split(|&c| c == 0).filter(|s| !s.is_empty()).map(sys::lossy).collect())
            .unwrap_or_default();
        let mut threads: Vec<i32> = std::fs::read_dir(base.join("task"))
            .map_err(gone(base.join("task"), "opendir"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        threads.sort_unstable();

        let mounts = self.mounts(pid)?;
        let root_path = base.join("root");
        let root = sys::open(&root_path, libc::O_PATH | libc::O_DIRECTORY, 0)
            .map_err(gone(root_path.clone(), "open"))?;

        let mut task = Task {
            pid,
            ppid,
            threads,
            comm,
            cmdline,
            cwd: None,
            root: None,
            exe: None,
            fds: vec![],
            maps: vec![],
        };

        // cwd, root, exe
        for (what, slot) in [(Held::Cwd, 0), (Held::Root, 1), (Held::Exe, 2)] {
            let p = base.join(what.proc_name());
            let Ok(target) = sys::readlink(&p) else { continue }; // kernel threads, zombies
            let Ok(st) = sys::stat(&p) else { continue };
            let mnt_id = sys::open(&p, libc::O_PATH, 0).ok().and_then(|f| sys::mnt_id_of(f.as_raw_fd()).ok());
            self.uses(&mounts, mnt_id);
            let f = Found { pid, what, target: &target, st: &st, mnt_id, fdflags: None };
            let object = if what == Held::Root { None } else { self.classify(&f, &root, &mounts) };
            let r = FileRef { path: sys::lossy(&target), dev: st.st_dev, ino: st.st_ino, object };
            match slot {
                0 => task.cwd = Some(r),
                1 => task.root = Some(r),
                _ => task.exe = Some(r),
            }
        }

        // fds
        let fd_dir = base.join("fd");
        let mut fds: Vec<i32> = std::fs::read_dir(&fd_dir)
            .map_err(gone(fd_dir.clone(), "opendir"))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        fds.sort_unstable();
        for n in fds {
            let link = fd_dir.join(n.to_string());
            // An fd that vanished between readdir and here was closed: not an error.
            let Ok(target) = sys::readlink(&link) else { continue };
            let Ok(st) = sys::stat(&link) else { continue };
            let Ok(info) = sys::read_proc(base.join("fdinfo").join(n.to_string())) else { continue };
            let FdInfo { pos, flags, mnt_id } = parse_fdinfo(&info);
            let kind = if target.first() == Some(&b'/') && mounts.contains_key(&mnt_id) {
                FileKind::from_mode(st.st_mode)
            } else {
                FileKind::Anonymous
            };
            let f = Found {
                pid,
                what: Held::Fd(n),
                target: &target,
                st: &st,
                mnt_id: Some(mnt_id),
                fdflags: Some(flags),
            };
            if kind != FileKind::Anonymous {
                self.uses(&mounts, Some(mnt_id));
            }
            let object = if kind == FileKind::Anonymous { None } else { self.classify(&f, &root, &mounts) };
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
                object,
            });
        }

        // file mappings
        let maps_path = base.join("maps");
        let maps = sys::read_proc(&maps_path).map_err(gone(maps_path.clone(), "read"))?;
        let mut seen = std::collections::HashSet::new();
        for line in maps.lines() {
            let Some(m) = parse_maps_line(line) else { continue };
            if !m.path.starts_with('/') || !seen.insert((m.start, m.end)) {
                continue;
            }
            let link = procfs::mapping_path(pid, m.start, m.end);
            let Ok(st) = sys::stat(&link) else { continue };
            let target = sys::readlink(&link).unwrap_or_else(|_| m.path.as_bytes().to_vec());
            let mnt_id =
                sys::open(&link, libc::O_PATH, 0).ok().and_then(|f| sys::mnt_id_of(f.as_raw_fd()).ok());
            let object = match mnt_id {
                Some(id) if mounts.contains_key(&id) => {
                    self.uses(&mounts, mnt_id);
                    let f = Found {
                        pid,
                        what: Held::Map { start: m.start, end: m.end },
                        target: &target,
                        st: &st,
                        mnt_id,
                        fdflags: None,
                    };
                    self.classify(&f, &root, &mounts)
                }
                _ => None, // SysV shm, memfd and other kernel-internal mounts
            };
            task.maps.push(Mapping {
                start: m.start,
                end: m.end,
                perms: m.perms,
                pgoff: m.pgoff,
                path: sys::lossy(&target),
                dev: st.st_dev,
                ino: st.st_ino,
                object,
            });
        }
        self.tasks.push(task);
        Ok(())
    }

    fn mounts(&mut self, pid: i32) -> Result<HashMap<u32, MountRef>, ScanError> {
        let ns = sys::readlink(procfs::pid_path(pid, "ns/mnt")).map(|b| sys::lossy(&b)).unwrap_or_default();
        let key = format!(
            "{ns}/{}",
            sys::readlink(procfs::pid_path(pid, "root")).map(|b| sys::lossy(&b)).unwrap_or_default()
        );
        if let Some(m) = self.mountinfo.get(&key) {
            return Ok(m.clone());
        }
        let p = procfs::pid_path(pid, "mountinfo");
        let text = sys::read_proc(&p).map_err(|source| proc_error(pid, p.clone(), "read", source))?;
        let m = mount_refs(&text);
        self.mountinfo.insert(key, m.clone());
        Ok(m)
    }

    /// Classify one file; if unlinked, return the index of its (possibly shared) object.
    fn classify(&mut self, f: &Found, root: &OwnedFd, mounts: &HashMap<u32, MountRef>) -> Option<usize> {
        let class = classify(root, f.target, f.st, f.fdflags)?;
        let key = (f.st.st_dev, f.st.st_ino);
        let holder = Holder { pid: f.pid, what: f.what };
        if let Some(&i) = self.by_inode.get(&key) {
            self.objects[i].holders.push(holder);
            return Some(i);
        }
        // The mount: by mnt_id, else the mount with this device whose mount point is the
        // longest prefix of the path.
        let path = original_path(f.target);
        let mount = f.mnt_id.and_then(|id| mounts.get(&id)).cloned().or_else(|| {
            mounts
                .values()
                .filter(|m| m.dev == f.st.st_dev && path_under(&path, &m.mount_point))
                .max_by_key(|m| m.mount_point.len())
                .cloned()
        })?;
        let i = self.objects.len();
        self.objects.push(Object {
            index: i,
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
            holders: vec![holder],
            relinked: None,
        });
        self.by_inode.insert(key, i);
        Some(i)
    }
}

/// Decide whether a file a task holds is unlinked, and how.
///
/// `root` is the task's root directory (an O_PATH fd of /proc/PID/root); `target` the readlink
/// text of the /proc link. `None` means the file still has a name that leads to it.
pub fn classify(root: &OwnedFd, target: &[u8], st: &libc::stat, fdflags: Option<u32>) -> Option<Unlinked> {
    let kind = FileKind::from_mode(st.st_mode);
    if st.st_nlink == 0 {
        return Some(match kind {
            FileKind::Directory => Unlinked::RemovedDir,
            FileKind::Regular if fdflags.is_some_and(|f| f & O_TMPFILE_BIT != 0) => Unlinked::Tmpfile,
            FileKind::Regular => Unlinked::Orphan,
            _ => Unlinked::RemovedNode,
        });
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
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_comm() {
        let (c, p) = parse_stat("123 (a) b (deleted)) S 77 123 123 0").unwrap();
        assert_eq!(c, "a) b (deleted)");
        assert_eq!(p, 77);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn mountinfo() {
        let t =
            "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                 40 36 0:50 / /x rw - btrfs /dev/loop0 rw\n";
        let m = mount_refs(t);
        assert_eq!(m[&36].mount_point, "/mnt/with space");
        assert_eq!(m[&36].fs_root, "/mnt1");
        assert_eq!(m[&36].fstype, "ext3");
        assert_eq!(m[&40].dev, sys::makedev(0, 50));
    }

    #[test]
    fn deleted_suffix_is_not_trusted() {
        // a file really named "x (deleted)" that still exists is not unlinked
        let d = std::env::temp_dir().join(format!("snapckpt-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("x (deleted)");
        std::fs::write(&p, b"hi").unwrap();
        let st = sys::stat(&p).unwrap();
        let root = sys::open("/", libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        let text = p.to_str().unwrap().as_bytes();
        assert_eq!(classify(&root, text, &st, None), None);
        // the same inode after its name is gone, with a decoy at the stripped name
        let f = std::fs::File::open(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        std::fs::write(d.join("x"), b"decoy").unwrap();
        let st = sys::fstat(f.as_raw_fd()).unwrap();
        let text = format!("{} (deleted)", p.display());
        assert_eq!(classify(&root, text.as_bytes(), &st, Some(0)), Some(Unlinked::Orphan));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn holder_paths() {
        let h = Holder { pid: 5, what: Held::Map { start: 0x10, end: 0x20 } };
        assert_eq!(holder_proc_path(&h).unwrap(), PathBuf::from("/proc/5/map_files/10-20"));
        let h = Holder { pid: 5, what: Held::Fd(3) };
        assert_eq!(holder_proc_path(&h).unwrap(), PathBuf::from("/proc/5/fd/3"));
    }
}
