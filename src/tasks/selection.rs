//! Which tasks a [`Selection`] means: [`resolve`] turns a pid, a process tree or a cgroup
//! into process ids, parents first, without zombies, refusing init and kernel threads; and
//! the per-process `/proc` lookups it needs (threads, thread-group id, children).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::cgroup::{cgroup_procs, cgroup_version};
use super::{io_err, is_gone, read_stat, TaskError};
use crate::procfs::{self, ProcStat};

// ---------------------------------------------------------------------------------------
// Per-process /proc lookups
// ---------------------------------------------------------------------------------------

/// Parse a whitespace-separated list of pids (`cgroup.procs`, `children`).
pub(super) fn parse_pids(s: &str, path: &Path) -> Result<Vec<i32>, TaskError> {
    s.split_ascii_whitespace()
        .map(|w| {
            w.parse::<i32>().ok().filter(|&p| p >= 0).ok_or_else(|| {
                io_err(path, "parse", io::Error::new(io::ErrorKind::InvalidData, format!("not a pid: {w:?}")))
            })
        })
        .collect()
}

/// The thread ids of process `pid` (`/proc/PID/task`), sorted.
pub fn threads(pid: i32) -> Result<Vec<i32>, TaskError> {
    let dir = procfs::pid_path(pid, "task");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if is_gone(&e) => return Err(TaskError::NoSuchTask(pid)),
        Err(e) => return Err(io_err(dir, "opendir", e)),
    };
    let mut tids = Vec::new();
    for entry in rd {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if is_gone(&e) => return Err(TaskError::NoSuchTask(pid)),
            Err(e) => return Err(io_err(&dir, "readdir", e)),
        };
        if let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) {
            tids.push(tid);
        }
    }
    tids.sort_unstable();
    Ok(tids)
}

/// The thread-group id of `pid` (which may be the id of any thread), or `None` if gone.
fn tgid_of(pid: i32) -> Result<Option<i32>, TaskError> {
    let path = procfs::pid_path(pid, "status");
    let s = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(io_err(path, "read", e)),
    };
    procfs::status_field(&s, "Tgid")
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| io_err(path, "parse", io::Error::new(io::ErrorKind::InvalidData, "no Tgid line")))
}

/// The child processes of all threads of `pid`; empty if the process has gone.
pub fn children(pid: i32) -> Result<Vec<i32>, TaskError> {
    let tids = match threads(pid) {
        Ok(t) => t,
        Err(TaskError::NoSuchTask(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for tid in tids {
        let path = procfs::thread_path(pid, tid, "children");
        match fs::read_to_string(&path) {
            Ok(s) => out.extend(parse_pids(&s, &path)?),
            Err(e) if is_gone(&e) => {}
            Err(e) => return Err(io_err(path, "read", e)),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Selection
// ---------------------------------------------------------------------------------------

/// How tasks are selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One process, or (`tree`) the process and all its descendants.
    Pid { pid: i32, tree: bool },
    /// Every process in a cgroup (v1 or v2) and its descendant cgroups.
    Cgroup(PathBuf),
}

impl Selection {
    /// A short human description: `pid 12`, `process tree of pid 12`, `cgroup /sys/...`.
    pub fn describe(&self) -> String {
        match self {
            Selection::Pid { pid, tree: false } => format!("pid {pid}"),
            Selection::Pid { pid, tree: true } => format!("process tree of pid {pid}"),
            Selection::Cgroup(p) => format!("cgroup {}", p.display()),
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Resolve a selection to thread-group ids (processes), parents before children, without
/// duplicates.
///
/// * `Pid { tree: false }`: the process (a thread id is mapped to its process).
/// * `Pid { tree: true }`: the process and all its descendants, found breadth-first through
///   `/proc/PID/task/*/children` of every thread. Processes that exit meanwhile are skipped
///   (except the root: [`TaskError::NoSuchTask`]).
/// * `Cgroup`: `cgroup.procs` of the cgroup and all descendant cgroups, v1 or v2, ordered
///   so that a parent process comes before its children.
///
/// Zombies (processes that have exited but are not reaped yet) hold nothing and are left
/// out; a selected pid that is itself a zombie is [`TaskError::Zombie`]. Init (pid 1) and
/// kernel threads can never be frozen or checkpointed: a selection that contains one is
/// refused ([`TaskError::Unsupported`]) before anything is touched.
pub fn resolve(sel: &Selection) -> Result<Vec<i32>, TaskError> {
    let pids = match sel {
        Selection::Pid { pid, tree } => {
            let root = match (*pid > 0).then(|| tgid_of(*pid)).transpose()?.flatten() {
                Some(t) => t,
                None => return Err(TaskError::NoSuchTask(*pid)),
            };
            match zombie(root)? {
                None => return Err(TaskError::NoSuchTask(*pid)),
                Some(Some(st)) => {
                    let parent = read_stat(&procfs::pid_path(st.ppid, "stat"))
                        .ok()
                        .flatten()
                        .map(|p| p.comm)
                        .unwrap_or_else(|| "?".into());
                    return Err(TaskError::Zombie { pid: root, ppid: st.ppid, parent });
                }
                Some(None) => {}
            }
            check_supported(root, sel)?;
            if *tree {
                drop_zombies(process_tree(root)?)?
            } else {
                vec![root]
            }
        }
        Selection::Cgroup(path) => {
            cgroup_version(path)?;
            // One read of /proc/PID/stat per process serves the order, zombies and the checks.
            let stats = read_stats(cgroup_procs(path)?)?;
            let mut pids = Vec::with_capacity(stats.len());
            for pid in order_parents_first(&stats) {
                let (text, st) = &stats[&pid];
                if st.is_dead() && zombie(pid)? != Some(None) {
                    continue;
                }
                check_stat(pid, sel, text, Some(st))?;
                pids.push(pid);
            }
            pids
        }
    };
    if pids.is_empty() {
        return Err(TaskError::EmptySelection(sel.describe()));
    }
    Ok(pids)
}

/// The kernel's `PF_KTHREAD` in the flags of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Refuse init and kernel threads: neither stops for `SIGSTOP` nor can be dumped.
fn check_supported(pid: i32, sel: &Selection) -> Result<(), TaskError> {
    let path = procfs::pid_path(pid, "stat");
    let text = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if is_gone(&e) => return Ok(()), // exited: the freeze skips it
        Err(e) => return Err(io_err(path, "read", e)),
    };
    check_stat(pid, sel, &text, ProcStat::parse(&text).as_ref())
}

/// [`check_supported`] on a `/proc/PID/stat` line already read.
fn check_stat(pid: i32, sel: &Selection, text: &str, st: Option<&ProcStat>) -> Result<(), TaskError> {
    let comm = st.map(|s| s.comm.as_str()).unwrap_or("?");
    let within = match sel {
        Selection::Pid { .. } => String::new(),
        Selection::Cgroup(_) => format!(" ({} contains it)", sel.describe()),
    };
    if pid == 1 {
        return Err(TaskError::Unsupported(format!(
            "pid 1 ({comm}) is init{within}: it ignores SIGSTOP and cannot be checkpointed; \
             select the workload's own process (--pid PID [--tree]) or cgroup"
        )));
    }
    if is_kernel_thread(pid, text, st.map(|s| s.ppid)) {
        return Err(TaskError::Unsupported(format!(
            "pid {pid} ({comm}) is a kernel thread{within}: it has no user memory and can be \
             neither frozen nor checkpointed; select a user process"
        )));
    }
    Ok(())
}

/// Whether a `/proc/PID/stat` line is a kernel thread's: `PF_KTHREAD` in its flags (the
/// ninth field), or, if those cannot be read, an empty command line and kthreadd as parent.
fn is_kernel_thread(pid: i32, stat: &str, ppid: Option<i32>) -> bool {
    match procfs::stat_flags(stat) {
        Some(f) => f & PF_KTHREAD != 0,
        None => {
            (pid == 2 || ppid == Some(2))
                && fs::read(procfs::pid_path(pid, "cmdline")).is_ok_and(|c| c.is_empty())
        }
    }
}

/// Whether process `pid` is a zombie: `None` if it has gone, `Some(Some(stat))` if it is a
/// zombie, `Some(None)` if it lives. A thread-group leader that has exited while other threads
/// run shows state Z too, but the process lives: a zombie has no thread left but the leader.
pub fn zombie(pid: i32) -> Result<Option<Option<ProcStat>>, TaskError> {
    let Some(st) = read_stat(&procfs::pid_path(pid, "stat"))? else {
        return Ok(None);
    };
    if !st.is_dead() {
        return Ok(Some(None));
    }
    match threads(pid) {
        Ok(tids) if tids.iter().any(|&t| t != pid) => Ok(Some(None)),
        Ok(_) => Ok(Some(Some(st))),
        Err(TaskError::NoSuchTask(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `pids` without the zombies (and processes gone meanwhile), order kept.
fn drop_zombies(pids: Vec<i32>) -> Result<Vec<i32>, TaskError> {
    let mut out = Vec::with_capacity(pids.len());
    for pid in pids {
        if zombie(pid)? == Some(None) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// `root` and its descendants, breadth-first.
fn process_tree(root: i32) -> Result<Vec<i32>, TaskError> {
    let mut seen = HashSet::from([root]);
    let mut out = Vec::new();
    let mut queue = VecDeque::from([root]);
    while let Some(pid) = queue.pop_front() {
        out.push(pid);
        let mut kids = children(pid)?;
        kids.sort_unstable();
        for kid in kids {
            if seen.insert(kid) {
                queue.push_back(kid);
            }
        }
    }
    Ok(out)
}

/// The `/proc/PID/stat` line of each of `pids`, read and parsed once; processes that have
/// exited (or whose line cannot be parsed) are left out.
fn read_stats(pids: Vec<i32>) -> Result<HashMap<i32, (String, ProcStat)>, TaskError> {
    let mut out = HashMap::with_capacity(pids.len());
    for pid in pids {
        if out.contains_key(&pid) {
            continue;
        }
        let path = procfs::pid_path(pid, "stat");
        let text = match fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(io_err(path, "read", e)),
        };
        if let Some(st) = ProcStat::parse(&text) {
            out.insert(pid, (text, st));
        }
    }
    Ok(out)
}

/// The processes of `stats` ordered so that every parent comes before its children
/// (breadth-first from the processes whose parent is not in the set).
fn order_parents_first(stats: &HashMap<i32, (String, ProcStat)>) -> Vec<i32> {
    let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut roots = Vec::new();
    for (&pid, (_, st)) in stats {
        if stats.contains_key(&st.ppid) && st.ppid != pid {
            kids.entry(st.ppid).or_default().push(pid);
        } else {
            roots.push(pid);
        }
    }
    roots.sort_unstable();
    let mut out = Vec::with_capacity(stats.len());
    let mut queue: VecDeque<i32> = roots.into();
    while let Some(pid) = queue.pop_front() {
        out.push(pid);
        if let Some(mut k) = kids.remove(&pid) {
            k.sort_unstable();
            queue.extend(k);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_pid_lists() {
        let p = Path::new("cgroup.procs");
        assert_eq!(parse_pids("1\n22\n333\n", p).unwrap(), vec![1, 22, 333]);
        assert_eq!(parse_pids("4 5 ", p).unwrap(), vec![4, 5]);
        assert_eq!(parse_pids("", p).unwrap(), Vec::<i32>::new());
        let e = parse_pids("1\nbanana\n", p).unwrap_err();
        assert!(e.to_string().contains("banana"), "{e}");
        assert!(parse_pids("-3", p).is_err());
        assert!(parse_pids("99999999999999", p).is_err());
    }

    #[test]
    fn resolve_self_and_threads() {
        let me = std::process::id() as i32;
        assert_eq!(resolve(&Selection::Pid { pid: me, tree: false }).unwrap(), vec![me]);
        let tree = resolve(&Selection::Pid { pid: me, tree: true }).unwrap();
        assert_eq!(tree[0], me);
        let tids = threads(me).unwrap();
        assert!(tids.contains(&me));
        // A thread id resolves to its process.
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // SAFETY: gettid has no preconditions.
            tx.send(unsafe { libc::gettid() }).unwrap();
            let _ = done_rx.recv();
        });
        let tid = rx.recv().unwrap();
        assert_ne!(tid, me);
        assert_eq!(resolve(&Selection::Pid { pid: tid, tree: false }).unwrap(), vec![me]);
        assert!(threads(me).unwrap().contains(&tid));
        done_tx.send(()).unwrap();
        t.join().unwrap();
    }

    #[test]
    fn resolve_missing_pid() {
        assert!(matches!(
            resolve(&Selection::Pid { pid: i32::MAX, tree: true }),
            Err(TaskError::NoSuchTask(_))
        ));
        assert!(matches!(resolve(&Selection::Pid { pid: 0, tree: false }), Err(TaskError::NoSuchTask(0))));
        assert!(matches!(resolve(&Selection::Pid { pid: -1, tree: false }), Err(TaskError::NoSuchTask(-1))));
        assert!(matches!(threads(i32::MAX), Err(TaskError::NoSuchTask(_))));
    }

    #[test]
    fn init_and_kernel_threads_are_refused() {
        for tree in [false, true] {
            let e = resolve(&Selection::Pid { pid: 1, tree }).unwrap_err();
            assert!(matches!(e, TaskError::Unsupported(_)), "{e}");
            assert!(e.to_string().contains("pid 1 (") && e.to_string().contains("is init"), "{e}");
        }
        // kthreadd is pid 2 in the initial pid namespace
        if fs::read_to_string("/proc/2/stat").is_ok_and(|s| s.contains("(kthreadd)")) {
            let e = resolve(&Selection::Pid { pid: 2, tree: false }).unwrap_err();
            assert!(e.to_string().contains("pid 2 (kthreadd) is a kernel thread"), "{e}");
        }
        let me = std::process::id() as i32;
        let st = fs::read_to_string(format!("/proc/{me}/stat")).unwrap();
        assert!(!is_kernel_thread(me, &st, Some(1)));
        let kt = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0";
        assert!(is_kernel_thread(2, kt, Some(0)));
        let user = "7 (a) b) S 1 7 7 0 -1 4194560 0 0";
        assert!(!is_kernel_thread(7, user, Some(1)));
    }

    #[test]
    fn order_parents_first_uses_ppid() {
        // This process and its parent: the parent must come first whatever the input order.
        let me = std::process::id() as i32;
        let parent = ProcStat::read(Path::new("/proc/self/stat")).unwrap().unwrap().ppid;
        let order = |pids| order_parents_first(&read_stats(pids).unwrap());
        assert_eq!(order(vec![me, parent, me]), vec![parent, me]);
        // Gone pids are dropped.
        assert_eq!(order(vec![i32::MAX, me]), vec![me]);
    }
}
