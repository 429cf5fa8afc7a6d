//! Task selection, freezing and thawing, and the thaw watchdog.
//!
//! A checkpoint starts by choosing the tasks ([`Selection`], resolved to process ids by
//! [`resolve`]) and stopping them ([`freeze`]) so that what they hold open cannot change while
//! files are relinked, the filesystem is snapshotted and CRIU dumps the processes. Three
//! freezers are supported ([`FreezeMethod`]):
//!
//! * **cgroup v2** (`cgroup.freeze`): write `1`, then wait for `frozen 1` in `cgroup.events`.
//!   Invisible to the tasks and to their parents; the preferred method.
//! * **cgroup v1 freezer** (`freezer.state`): write `FROZEN`, then wait until the file reads
//!   `FROZEN` (it reads `FREEZING` meanwhile).
//! * **SIGSTOP**, for a pid or a process tree outside any cgroup of its own: send `SIGSTOP`
//!   to every process, then wait until every thread is in state `T` in
//!   `/proc/PID/task/TID/stat`. Unlike a cgroup freezer this is visible: the parents get
//!   `SIGCHLD`/`CLD_STOPPED`, a shell's job control notices, and a task that had been stopped
//!   before is *continued* by the thaw. Processes forked between [`resolve`] and the
//!   `SIGSTOP` are not stopped; a caller that cares re-resolves the selection once frozen and
//!   compares. The processes are addressed through pidfds, so a pid that is reused after a
//!   process exits never receives our signals.
//!
//! A task in uninterruptible sleep (state `D`: NFS, FUSE, a `vfork` parent) cannot be
//! frozen until it wakes up; [`freeze`] then gives up after its timeout, thaws everything
//! again and reports the stuck tasks ([`TaskError::FreezeTimeout`]).
//!
//! # The thaw watchdog
//!
//! Frozen tasks must never stay frozen because snapckpt died: if it is killed with
//! `SIGKILL` (or the OOM killer, or a panic with `panic = "abort"`) no destructor runs. So
//! before freezing, [`freeze`] starts a small watchdog process:
//!
//! 1. It spawns `EXE __watchdog <method args>` (see [`FreezeMethod::watchdog_args`]:
//!    `cgroup-v2 PATH`, `cgroup-v1 PATH` or `sigstop PID...`), where `EXE` is
//!    [`watchdog_exe`] — `/proc/self/exe` unless overridden by [`set_watchdog_exe`] or the
//!    environment variable `SNAPCKPT_WATCHDOG_EXE` (a program that is not the snapckpt
//!    binary, such as a test harness, cannot re-execute itself as the watchdog). The
//!    watchdog's stdin is the read end of a pipe whose write end only the parent holds
//!    (close-on-exec, so no other child keeps it open); its stdout is another pipe; its
//!    working directory is `/` so that it keeps no filesystem busy.
//! 2. The watchdog ([`watchdog_main`]) calls `setsid()` (leaving the terminal's process
//!    group, so `^C` reaches snapckpt but not the watchdog), ignores `SIGINT`, `SIGTERM`,
//!    `SIGHUP`, `SIGQUIT`, `SIGTSTP` and `SIGPIPE`, closes every other inherited descriptor,
//!    opens pidfds for the pids of a `sigstop` method (pinning their identity), and writes
//!    `ready\n` on its stdout. The parent waits for that line before it freezes anything, so
//!    the tasks are never frozen without an armed watchdog.
//! 3. The watchdog then blocks reading its stdin:
//!    * the byte `D` disarms it: it exits 0 without touching the tasks. [`Frozen::thaw`] and
//!      [`Frozen::release`] send it after they have thawed the tasks themselves;
//!    * end of file means the write end was closed: the parent died, however it died, or it
//!      gave up on thawing. The watchdog thaws the tasks (idempotent: `0` into
//!      `cgroup.freeze`, `THAWED` into `freezer.state`, `SIGCONT` to each pid; a cgroup or
//!      process that is gone is fine) and exits 0, or 1 if the thaw failed.
//!
//! The watchdog has no time limit of its own: a CRIU dump may legitimately take long. It
//! cannot help if something kills it together with snapckpt (e.g. a service manager that
//! kills the whole control group of snapckpt); run snapckpt so that its own cgroup is not
//! the one being frozen or killed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

/// How long [`freeze`] waits for the watchdog to report `ready`.
const WATCHDOG_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for the watchdog to exit once disarmed or triggered.
const WATCHDOG_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a thaw may take before it is reported as failed.
const THAW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed task may take to exit (freeing a large file's page cache and extents
/// is done by the exiting task: about a second per few GiB).
const KILL_TIMEOUT: Duration = Duration::from_secs(60);
/// The environment variable naming the watchdog executable.
pub const WATCHDOG_EXE_ENV: &str = "SNAPCKPT_WATCHDOG_EXE";
/// The first argument that makes the snapckpt binary run [`watchdog_main`].
pub const WATCHDOG_ARG: &str = "__watchdog";

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// What can go wrong while selecting, freezing or thawing tasks.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A system call on a file failed.
    #[error("{syscall} {}: {source}{}", path.display(), io_hint(source))]
    Io {
        path: PathBuf,
        syscall: &'static str,
        #[source]
        source: io::Error,
    },
    /// The process does not exist (any more).
    #[error("no process with pid {0} (it may have exited); check the pid")]
    NoSuchTask(i32),
    /// The selection resolved to no process at all.
    #[error("{0} selects no processes; check the pid or cgroup path, or start the workload first")]
    EmptySelection(String),
    /// Some tasks did not freeze in time; everything has been thawed again.
    #[error(
        "tasks did not freeze within {waited:?} and were thawed again; not frozen: {}. {}",
        stuck.join(", "),
        freeze_timeout_advice(stuck)
    )]
    FreezeTimeout { waited: Duration, stuck: Vec<String> },
    /// Thawing was requested but the tasks did not all leave the frozen state.
    #[error(
        "{what} did not thaw within {waited:?}; the watchdog was left to retry. Check the tasks \
         (a task stopped by someone else stays stopped: kill -CONT PID; a cgroup whose parent is \
         frozen stays frozen)"
    )]
    ThawTimeout { what: String, waited: Duration },
    /// Tasks were sent SIGKILL but did not die in time.
    #[error(
        "pids {} were killed but had not exited after {waited:?} (state D: blocked in the \
         kernel, e.g. on NFS or FUSE); they exit once that call returns",
        alive.join(", ")
    )]
    KillTimeout { waited: Duration, alive: Vec<String> },
    /// The thaw watchdog could not be started, armed or stopped.
    #[error("thaw watchdog: {0}")]
    Watchdog(String),
    /// The path is not a directory of a cgroup filesystem.
    #[error(
        "{} is not a cgroup directory: give a directory on a cgroup2 or cgroup v1 filesystem, \
         e.g. /sys/fs/cgroup/unified/NAME or /sys/fs/cgroup/freezer/NAME",
        .0.display()
    )]
    NotACgroup(PathBuf),
    /// The cgroup exists but cannot be frozen by itself.
    #[error("cannot freeze cgroup {}: {reason}", path.display())]
    CannotFreeze { path: PathBuf, reason: String },
    /// The selection contains this very process: freezing it would deadlock.
    #[error(
        "the tasks to freeze ({0}) include snapckpt itself (pid {1}); run snapckpt from outside \
         the process tree or cgroup it freezes"
    )]
    FreezesSelf(String, i32),
    /// The cgroup directory does not exist.
    #[error(
        "cgroup {} does not exist: check the path, or create the cgroup and move the tasks \
         into it (e.g. /sys/fs/cgroup/unified/NAME or /sys/fs/cgroup/freezer/NAME)",
        .0.display()
    )]
    NoSuchCgroup(PathBuf),
    /// The selected process has exited and waits to be reaped: there is nothing to checkpoint.
    #[error(
        "pid {pid} is a zombie (state Z): it has exited and its parent (pid {ppid}, {parent}) \
         has not reaped it; there is nothing left to checkpoint"
    )]
    Zombie { pid: i32, ppid: i32, parent: String },
    /// The selection contains a task that can never be frozen or checkpointed (init, a
    /// kernel thread).
    #[error("{0}")]
    Unsupported(String),
}

/// The advice after [`TaskError::FreezeTimeout`]: the one about uninterruptible sleep only
/// when a task that did not freeze is in state D.
fn freeze_timeout_advice(stuck: &[String]) -> &'static str {
    if stuck.iter().any(|s| s.contains(" state D")) {
        "Tasks in uninterruptible sleep (state D, e.g. blocked on NFS, FUSE or a vfork child) \
         cannot be frozen until they wake up: retry later or with a longer freeze timeout"
    } else {
        "Retry, or give a longer freeze timeout (--freeze-timeout MS, or [freeze] timeout_ms)"
    }
}

fn io_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => " (permission denied: run snapckpt as root)",
        Some(libc::EROFS) => " (read-only cgroup filesystem: is this a container without cgroup delegation?)",
        _ => "",
    }
}

fn io_err(path: impl Into<PathBuf>, syscall: &'static str, source: io::Error) -> TaskError {
    TaskError::Io { path: path.into(), syscall, source }
}

/// Whether an error from /proc or a pidfd means "the task has gone".
fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

/// Write `data` to a cgroup control file with a single `write(2)`.
fn write_file(path: &Path, data: &str) -> Result<(), TaskError> {
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(|e| io_err(path, "open", e))?;
    f.write_all(data.as_bytes()).map_err(|e| io_err(path, "write", e))
}

// ---------------------------------------------------------------------------------------
// /proc parsing
// ---------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` that snapckpt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// The command name; it may contain spaces and parentheses.
    pub comm: String,
    /// The state letter: `R`, `S`, `D`, `T` (stopped), `t` (tracing stop), `Z`, `X`, `I`...
    pub state: char,
    pub ppid: i32,
}

impl ProcStat {
    /// Parse the contents of a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) file.
    ///
    /// The command name is between the first `(` and the *last* `)`: it may itself contain
    /// `)` and spaces. Returns `None` for anything malformed.
    pub fn parse(s: &str) -> Option<ProcStat> {
        let open = s.find('(')?;
        let close = s.rfind(')')?;
        if close < open {
            return None;
        }
        let pid = s[..open].trim().parse().ok()?;
        let comm = s[open + 1..close].to_string();
        let mut rest = s[close + 1..].split_ascii_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        Some(ProcStat { pid, comm, state, ppid })
    }

    /// Read and parse `path` (a stat file). `Ok(None)` if the task has gone.
    fn read(path: &Path) -> Result<Option<ProcStat>, TaskError> {
        match fs::read_to_string(path) {
            Ok(s) => ProcStat::parse(&s).map(Some).ok_or_else(|| {
                io_err(path, "parse", io::Error::new(io::ErrorKind::InvalidData, "malformed stat line"))
            }),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(io_err(path, "read", e)),
        }
    }

    /// Whether the task will not run until it is continued (or has exited).
    fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't' | 'Z' | 'X' | 'x')
    }
}

/// Parse a whitespace-separated list of pids (`cgroup.procs`, `children`).
fn parse_pids(s: &str, path: &Path) -> Result<Vec<i32>, TaskError> {
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
    let dir = PathBuf::from(format!("/proc/{pid}/task"));
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
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let s = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(io_err(path, "read", e)),
    };
    s.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| io_err(path, "parse", io::Error::new(io::ErrorKind::InvalidData, "no Tgid line")))
}

/// The child processes of all threads of `pid`; empty if the process has gone.
pub(crate) fn children(pid: i32) -> Result<Vec<i32>, TaskError> {
    let tids = match threads(pid) {
        Ok(t) => t,
        Err(TaskError::NoSuchTask(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for tid in tids {
        let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/children"));
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
                    let parent = ProcStat::read(Path::new(&format!("/proc/{}/stat", st.ppid)))
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
            let pids = drop_zombies(order_parents_first(cgroup_procs(path)?)?)?;
            for &p in &pids {
                check_supported(p, sel)?;
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
    let path = PathBuf::from(format!("/proc/{pid}/stat"));
    let text = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if is_gone(&e) => return Ok(()), // exited: the freeze skips it
        Err(e) => return Err(io_err(path, "read", e)),
    };
    let st = ProcStat::parse(&text);
    let comm = st.as_ref().map(|s| s.comm.as_str()).unwrap_or("?");
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
    if is_kernel_thread(pid, &text, st.as_ref().map(|s| s.ppid)) {
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
    let flags = stat
        .rfind(')')
        .and_then(|c| stat[c + 1..].split_ascii_whitespace().nth(6))
        .and_then(|f| f.parse::<u64>().ok());
    match flags {
        Some(f) => f & PF_KTHREAD != 0,
        None => {
            (pid == 2 || ppid == Some(2))
                && fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty())
        }
    }
}

/// Whether process `pid` is a zombie: `None` if it has gone, `Some(Some(stat))` if it is a
/// zombie, `Some(None)` if it lives. A thread-group leader that has exited while other threads
/// run shows state Z too, but the process lives: a zombie has no thread left but the leader.
pub fn zombie(pid: i32) -> Result<Option<Option<ProcStat>>, TaskError> {
    let Some(st) = ProcStat::read(Path::new(&format!("/proc/{pid}/stat")))? else {
        return Ok(None);
    };
    if !matches!(st.state, 'Z' | 'X') {
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

/// The `cgroup.procs` of `cg` and of all its descendant cgroups (unordered, possibly with
/// duplicates). A descendant removed meanwhile is skipped.
fn cgroup_procs(cg: &Path) -> Result<Vec<i32>, TaskError> {
    let mut out = Vec::new();
    for (i, dir) in cgroup_subtree(cg)?.iter().enumerate() {
        let procs = dir.join("cgroup.procs");
        match fs::read_to_string(&procs) {
            Ok(s) => out.extend(parse_pids(&s, &procs)?.into_iter().filter(|&p| p > 0)),
            // A threaded cgroup of v2 refuses cgroup.procs: its processes are listed above it.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && i > 0 => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(TaskError::NotACgroup(cg.to_path_buf()))
            }
            Err(e) => return Err(io_err(procs, "read", e)),
        }
    }
    Ok(out)
}

/// Deduplicate `pids` and order them so that every parent comes before its children
/// (breadth-first from the processes whose parent is not in the set). Processes that have
/// exited are dropped.
fn order_parents_first(pids: Vec<i32>) -> Result<Vec<i32>, TaskError> {
    let mut ppid = HashMap::new();
    for pid in pids {
        if ppid.contains_key(&pid) {
            continue;
        }
        if let Some(st) = ProcStat::read(Path::new(&format!("/proc/{pid}/stat")))? {
            ppid.insert(pid, st.ppid);
        }
    }
    let mut kids: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut roots = Vec::new();
    for (&pid, &parent) in &ppid {
        if ppid.contains_key(&parent) && parent != pid {
            kids.entry(parent).or_default().push(pid);
        } else {
            roots.push(pid);
        }
    }
    roots.sort_unstable();
    let mut out = Vec::with_capacity(ppid.len());
    let mut queue: VecDeque<i32> = roots.into();
    while let Some(pid) = queue.pop_front() {
        out.push(pid);
        if let Some(mut k) = kids.remove(&pid) {
            k.sort_unstable();
            queue.extend(k);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Cgroups
// ---------------------------------------------------------------------------------------

/// The cgroup hierarchy a directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Which cgroup hierarchy `path` is in, from the filesystem magic of `statfs(2)`.
pub fn cgroup_version(path: &Path) -> Result<CgroupVersion, TaskError> {
    let st = match statfs(path) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return Err(TaskError::NoSuchCgroup(path.to_path_buf())),
        Err(nix::errno::Errno::ENOTDIR) => return Err(TaskError::NotACgroup(path.to_path_buf())),
        Err(e) => return Err(io_err(path, "statfs", e.into())),
    };
    if !path.is_dir() {
        return Err(TaskError::NotACgroup(path.to_path_buf()));
    }
    match st.filesystem_type() {
        t if t == CGROUP2_SUPER_MAGIC => Ok(CgroupVersion::V2),
        t if t == CGROUP_SUPER_MAGIC => Ok(CgroupVersion::V1),
        _ => Err(TaskError::NotACgroup(path.to_path_buf())),
    }
}

/// The state of a v2 cgroup from its `cgroup.events`: `Some(frozen)`, `None` if removed.
fn v2_frozen(cg: &Path) -> Result<Option<bool>, TaskError> {
    let path = cg.join("cgroup.events");
    let s = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(io_err(path, "read", e)),
    };
    match s.lines().find_map(|l| l.strip_prefix("frozen ")) {
        Some(v) => Ok(Some(v.trim() == "1")),
        None => Err(io_err(path, "parse", io::Error::new(io::ErrorKind::InvalidData, "no \"frozen\" line"))),
    }
}

/// The contents of a v1 `freezer.state` (`THAWED`, `FREEZING`, `FROZEN`), `None` if removed.
fn v1_state(cg: &Path) -> Result<Option<String>, TaskError> {
    let path = cg.join("freezer.state");
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(io_err(path, "read", e)),
    }
}

/// `cg` and all its descendant cgroups, parents first. Descendants removed meanwhile are
/// skipped.
fn cgroup_subtree(cg: &Path) -> Result<Vec<PathBuf>, TaskError> {
    let mut out = vec![cg.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let dir = out[i].clone();
        i += 1;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && i > 1 => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(TaskError::NotACgroup(dir)),
            Err(e) => return Err(io_err(dir, "opendir", e)),
        };
        let mut subs: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        subs.sort();
        out.extend(subs);
    }
    Ok(out)
}

/// The threads of the processes directly in cgroup `dir` with their `/proc` stat; threads
/// and processes that exit meanwhile are skipped.
fn cgroup_threads(dir: &Path) -> Result<Vec<ProcStat>, TaskError> {
    let procs = dir.join("cgroup.procs");
    let pids = match fs::read_to_string(&procs) {
        Ok(s) => parse_pids(&s, &procs)?,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) => Vec::new(),
        Err(e) => return Err(io_err(procs, "read", e)),
    };
    let mut out = Vec::new();
    for pid in pids.into_iter().filter(|&p| p > 0) {
        let tids = match threads(pid) {
            Ok(t) => t,
            Err(TaskError::NoSuchTask(_)) => continue,
            Err(e) => return Err(e),
        };
        for tid in tids {
            if let Some(st) = ProcStat::read(Path::new(&format!("/proc/{pid}/task/{tid}/stat")))? {
                out.push(st);
            }
        }
    }
    Ok(out)
}

/// Whether the v2 cgroup `cg` and everything below it is frozen.
///
/// `frozen 1` in the `cgroup.events` of `cg` alone is not enough: the kernel aggregates the
/// flag racily (up to at least 6.18, see the LKML threads on `cgroup_propagate_frozen`): a
/// cgroup is flagged frozen when its own tasks are frozen even if a descendant is not yet,
/// and when its descendants are frozen even if its own tasks are not yet (the flag then
/// drops back to 0 for a moment). So require `frozen 1` on every cgroup of the subtree, and
/// no thread in state `R`: once the freeze request has been written, every task has been
/// woken, so a task that is still running has not reached the freezer yet. (Tasks in `D`
/// cannot be told apart: a `vfork` parent in `D` counts as frozen for the kernel.)
fn v2_subtree_frozen(cg: &Path) -> Result<bool, TaskError> {
    let dirs = cgroup_subtree(cg)?;
    for (i, dir) in dirs.iter().enumerate() {
        match v2_frozen(dir)? {
            Some(true) => {}
            Some(false) => return Ok(false),
            None if i == 0 => return Err(TaskError::NotACgroup(cg.to_path_buf())),
            None => {}
        }
    }
    for dir in &dirs {
        if cgroup_threads(dir)?.iter().any(|st| st.state == 'R') {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The tasks of the cgroups under `cg` (inclusive) that are not frozen, for error messages.
fn stuck_in_cgroup(cg: &Path, version: CgroupVersion) -> Vec<String> {
    let mut out = Vec::new();
    for dir in cgroup_subtree(cg).unwrap_or_else(|_| vec![cg.to_path_buf()]) {
        let frozen = match version {
            CgroupVersion::V2 => v2_frozen(&dir).ok().flatten().unwrap_or(true),
            CgroupVersion::V1 => v1_state(&dir).ok().flatten().map(|s| s == "FROZEN").unwrap_or(true),
        };
        let before = out.len();
        for st in cgroup_threads(&dir).unwrap_or_default() {
            // Frozen v2 tasks sleep in the freezer (S, or T if stopped); a v2 task in R or D
            // is a suspect. Frozen v1 tasks show as D, like stuck ones: in a v1 cgroup that
            // is not frozen, name every task with its state.
            let suspect = match version {
                CgroupVersion::V2 => !matches!(st.state, 'S' | 'T' | 't' | 'Z' | 'X'),
                CgroupVersion::V1 => !frozen,
            };
            if suspect {
                out.push(format!("tid {} ({}) state {} in {}", st.pid, st.comm, st.state, dir.display()));
            }
        }
        if !frozen && out.len() == before {
            out.push(format!("cgroup {} (not frozen)", dir.display()));
        }
    }
    if out.is_empty() {
        out.push(format!("cgroup {} (not frozen)", cg.display()));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Freeze methods
// ---------------------------------------------------------------------------------------

/// How a selection is frozen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FreezeMethod {
    /// The cgroup's own `cgroup.freeze` (cgroup v2); freezes its descendants too.
    CgroupV2(PathBuf),
    /// The cgroup's own `freezer.state` (cgroup v1 freezer hierarchy).
    CgroupV1(PathBuf),
    /// `SIGSTOP` to each process (thread-group ids).
    Sigstop(Vec<i32>),
}

impl FreezeMethod {
    /// `cgroup-v2 /sys/...`, `cgroup-v1 /sys/...` or `sigstop`.
    pub fn describe(&self) -> String {
        match self {
            FreezeMethod::CgroupV2(p) => format!("cgroup-v2 {}", p.display()),
            FreezeMethod::CgroupV1(p) => format!("cgroup-v1 {}", p.display()),
            FreezeMethod::Sigstop(_) => "sigstop".to_string(),
        }
    }

    /// The command that resumes tasks left frozen by this method.
    pub fn resume_hint(&self, pids: &[i32]) -> String {
        match self {
            FreezeMethod::CgroupV2(p) => format!("echo 0 > {}", p.join("cgroup.freeze").display()),
            FreezeMethod::CgroupV1(p) => format!("echo THAWED > {}", p.join("freezer.state").display()),
            FreezeMethod::Sigstop(_) => {
                format!("kill -CONT {}", pids.iter().map(i32::to_string).collect::<Vec<_>>().join(" "))
            }
        }
    }

    /// The freezer for a selection: a cgroup selection uses the cgroup's own freezer (v2
    /// `cgroup.freeze`, v1 `freezer.state`); a pid selection sends `SIGSTOP` to `pids` (the
    /// result of [`resolve`]).
    pub fn for_selection(sel: &Selection, pids: &[i32]) -> Result<FreezeMethod, TaskError> {
        match sel {
            Selection::Pid { .. } => {
                if pids.is_empty() {
                    return Err(TaskError::EmptySelection(sel.describe()));
                }
                Ok(FreezeMethod::Sigstop(pids.to_vec()))
            }
            Selection::Cgroup(path) => {
                let version = cgroup_version(path)?;
                // Absolute and free of symlinks: the watchdog runs in `/`, and CRIU compares it.
                let path = &fs::canonicalize(path).map_err(|e| io_err(path, "realpath", e))?;
                let cannot =
                    |reason: &str| TaskError::CannotFreeze { path: path.clone(), reason: reason.to_string() };
                match version {
                    CgroupVersion::V2 if path.join("cgroup.freeze").exists() => Ok(FreezeMethod::CgroupV2(path.clone())),
                    CgroupVersion::V2 => Err(cannot(
                        "it has no cgroup.freeze (the root cgroup cannot be frozen, and the kernel needs 5.2 or later); \
                         put the tasks in a child cgroup",
                    )),
                    CgroupVersion::V1 if path.join("freezer.state").exists() => Ok(FreezeMethod::CgroupV1(path.clone())),
                    CgroupVersion::V1 => Err(cannot(
                        "it has no freezer.state: give the cgroup in the v1 freezer hierarchy \
                         (e.g. /sys/fs/cgroup/freezer/NAME, not the root) or use cgroup v2",
                    )),
                }
            }
        }
    }

    /// The cgroup that is frozen, for CRIU's `--freeze-cgroup`; `None` for `Sigstop`.
    pub fn cgroup_path(&self) -> Option<&Path> {
        match self {
            FreezeMethod::CgroupV2(p) | FreezeMethod::CgroupV1(p) => Some(p),
            FreezeMethod::Sigstop(_) => None,
        }
    }

    /// The arguments after `__watchdog`: `cgroup-v2 PATH`, `cgroup-v1 PATH`, `sigstop PID...`.
    /// [`FreezeMethod::from_watchdog_args`] parses them back.
    pub fn watchdog_args(&self) -> Vec<String> {
        match self {
            FreezeMethod::CgroupV2(p) => vec!["cgroup-v2".into(), p.to_string_lossy().into_owned()],
            FreezeMethod::CgroupV1(p) => vec!["cgroup-v1".into(), p.to_string_lossy().into_owned()],
            FreezeMethod::Sigstop(pids) => {
                std::iter::once("sigstop".to_string()).chain(pids.iter().map(|p| p.to_string())).collect()
            }
        }
    }

    /// Parse the arguments made by [`FreezeMethod::watchdog_args`].
    pub fn from_watchdog_args(args: &[String]) -> Result<FreezeMethod, String> {
        const USAGE: &str = "expected `cgroup-v2 PATH`, `cgroup-v1 PATH` or `sigstop PID...`";
        match args.split_first() {
            Some((kind, [path])) if kind == "cgroup-v2" && !path.is_empty() => {
                Ok(FreezeMethod::CgroupV2(path.into()))
            }
            Some((kind, [path])) if kind == "cgroup-v1" && !path.is_empty() => {
                Ok(FreezeMethod::CgroupV1(path.into()))
            }
            Some((kind, pids)) if kind == "sigstop" && !pids.is_empty() => pids
                .iter()
                .map(|p| {
                    p.parse::<i32>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| format!("not a pid: {p:?}; {USAGE}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(FreezeMethod::Sigstop),
            _ => Err(format!("bad arguments {args:?}; {USAGE}")),
        }
    }
}

impl fmt::Display for FreezeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

// ---------------------------------------------------------------------------------------
// Processes addressed through pidfds
// ---------------------------------------------------------------------------------------

/// A process to stop and continue, pinned by a pidfd when the kernel has them.
#[derive(Debug)]
struct Proc {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Proc {
    /// Open a pidfd for `pid`; `Ok(None)` if the process does not exist.
    fn open(pid: i32) -> Result<Option<Proc>, TaskError> {
        if pid <= 0 {
            return Ok(None);
        }
        // SAFETY: plain system call with integer arguments.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd >= 0 {
            // SAFETY: the kernel returned a new descriptor that we own (pidfds are CLOEXEC).
            return Ok(Some(Proc { pid, pidfd: Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }) }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            // EINVAL: not a thread-group leader; resolve() only gives leaders, but be lenient.
            Some(libc::ENOSYS) | Some(libc::EINVAL) => {
                Ok(Path::new(&format!("/proc/{pid}")).exists().then_some(Proc { pid, pidfd: None }))
            }
            _ => Err(io_err(format!("/proc/{pid}"), "pidfd_open", e)),
        }
    }

    /// Send `sig`; `Ok(false)` if the process has exited.
    fn signal(&self, sig: libc::c_int) -> Result<bool, TaskError> {
        // SAFETY: plain system calls; the pidfd is valid while self lives.
        let r = match &self.pidfd {
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            },
            None => unsafe { libc::kill(self.pid, sig) as libc::c_long },
        };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(false);
        }
        Err(io_err(
            format!("/proc/{}", self.pid),
            if self.pidfd.is_some() { "pidfd_send_signal" } else { "kill" },
            e,
        ))
    }

    /// The threads of this process that are not stopped, described; empty once all are
    /// stopped or the process has gone. `want_stopped == false` inverts the test.
    fn threads_not(&self, want_stopped: bool) -> Result<Vec<String>, TaskError> {
        let pid = self.pid;
        let tids = match threads(pid) {
            Ok(t) => t,
            Err(TaskError::NoSuchTask(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for tid in tids {
            let path = PathBuf::from(format!("/proc/{pid}/task/{tid}/stat"));
            if let Some(st) = ProcStat::read(&path)? {
                let ok = if want_stopped { st.is_stopped() } else { !matches!(st.state, 'T') };
                if !ok {
                    let who = if pid == tid { format!("pid {pid}") } else { format!("pid {pid} tid {tid}") };
                    out.push(format!("{who} ({}) state {}", st.comm, st.state));
                }
            }
        }
        Ok(out)
    }
}

/// Poll `done` with a growing pause until it returns true or `timeout` passes.
fn wait_until(
    timeout: Duration,
    mut done: impl FnMut() -> Result<bool, TaskError>,
) -> Result<bool, TaskError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(true);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            return Ok(false);
        }
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Start freezing (no waiting).
fn start_freeze(method: &FreezeMethod, procs: &[Proc]) -> Result<(), TaskError> {
    match method {
        FreezeMethod::CgroupV2(cg) => write_file(&cg.join("cgroup.freeze"), "1"),
        FreezeMethod::CgroupV1(cg) => write_file(&cg.join("freezer.state"), "FROZEN"),
        FreezeMethod::Sigstop(_) => {
            for p in procs {
                p.signal(libc::SIGSTOP)?;
            }
            Ok(())
        }
    }
}

/// Whether freezing has completed.
fn is_frozen(method: &FreezeMethod, procs: &[Proc]) -> Result<bool, TaskError> {
    match method {
        FreezeMethod::CgroupV2(cg) => v2_subtree_frozen(cg),
        FreezeMethod::CgroupV1(cg) => {
            Ok(v1_state(cg)?.ok_or_else(|| TaskError::NotACgroup(cg.clone()))? == "FROZEN")
        }
        FreezeMethod::Sigstop(_) => {
            for p in procs {
                if !p.threads_not(true)?.is_empty() {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// The tasks that are not frozen, for [`TaskError::FreezeTimeout`].
fn stuck_tasks(method: &FreezeMethod, procs: &[Proc]) -> Vec<String> {
    match method {
        FreezeMethod::CgroupV2(cg) => stuck_in_cgroup(cg, CgroupVersion::V2),
        FreezeMethod::CgroupV1(cg) => stuck_in_cgroup(cg, CgroupVersion::V1),
        FreezeMethod::Sigstop(_) => procs
            .iter()
            .flat_map(|p| p.threads_not(true).unwrap_or_else(|e| vec![format!("pid {} ({e})", p.pid)]))
            .collect(),
    }
}

/// Thaw without waiting. With `gone_ok`, a cgroup that has been removed is not an error.
/// Processes that have exited are never an error.
fn start_thaw(method: &FreezeMethod, procs: &[Proc], gone_ok: bool) -> Result<(), TaskError> {
    let write = |path: PathBuf, data: &str| match write_file(&path, data) {
        Err(TaskError::Io { source, .. }) if gone_ok && source.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    };
    match method {
        FreezeMethod::CgroupV2(cg) => write(cg.join("cgroup.freeze"), "0"),
        FreezeMethod::CgroupV1(cg) => write(cg.join("freezer.state"), "THAWED"),
        FreezeMethod::Sigstop(_) => {
            let mut first_err = None;
            for p in procs {
                if let Err(e) = p.signal(libc::SIGCONT) {
                    first_err.get_or_insert(e);
                }
            }
            first_err.map_or(Ok(()), Err)
        }
    }
}

/// Whether thawing has completed (a removed cgroup counts as thawed).
fn is_thawed(method: &FreezeMethod, procs: &[Proc]) -> Result<bool, TaskError> {
    match method {
        FreezeMethod::CgroupV2(cg) => Ok(v2_frozen(cg)? != Some(true)),
        FreezeMethod::CgroupV1(cg) => Ok(v1_state(cg)?.map(|s| s == "THAWED").unwrap_or(true)),
        FreezeMethod::Sigstop(_) => {
            for p in procs {
                if !p.threads_not(false)?.is_empty() {
                    return Ok(false);
                }
            }
            Ok(true)
        }
    }
}

/// Refuse to freeze a selection that contains this process.
fn check_not_self(method: &FreezeMethod) -> Result<(), TaskError> {
    let me = std::process::id() as i32;
    let contains = match method {
        FreezeMethod::Sigstop(pids) => pids.contains(&me),
        FreezeMethod::CgroupV2(cg) | FreezeMethod::CgroupV1(cg) => cgroup_procs(cg)?.contains(&me),
    };
    if contains {
        return Err(TaskError::FreezesSelf(method.describe(), me));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Freeze and thaw
// ---------------------------------------------------------------------------------------

/// Freeze the tasks and wait until they are frozen.
///
/// Completion means: v2: `frozen 1` in the `cgroup.events` of the cgroup and of every
/// descendant cgroup, and no task in state `R` (the kernel's own flag alone can be early,
/// see `v2_subtree_frozen`); v1: `freezer.state` reads `FROZEN`; sigstop: every thread of
/// every process is stopped (`T`; `t`, `Z` and `X` count too) or gone. Before anything is frozen the thaw watchdog is started and armed (see the module
/// documentation). For `Sigstop`, processes that have already exited are skipped; if none is
/// left, [`TaskError::NoSuchTask`].
///
/// On timeout everything is thawed again and [`TaskError::FreezeTimeout`] names the tasks
/// that were not frozen, with their command name and state. Dropping the returned
/// [`Frozen`] thaws the tasks.
///
/// A cgroup that is already frozen (by someone else) is used as it is, and thawed at the
/// end like any other. Freezing a selection that contains this process is refused
/// ([`TaskError::FreezesSelf`]).
pub fn freeze(method: FreezeMethod, timeout: Duration) -> Result<Frozen, TaskError> {
    let method = match method {
        FreezeMethod::CgroupV2(p) => FreezeMethod::CgroupV2(absolute(p)?),
        FreezeMethod::CgroupV1(p) => FreezeMethod::CgroupV1(absolute(p)?),
        m => m,
    };
    check_not_self(&method)?;
    let mut procs = Vec::new();
    if let FreezeMethod::Sigstop(pids) = &method {
        let mut seen = HashSet::new();
        for &pid in pids {
            if seen.insert(pid) {
                procs.extend(Proc::open(pid)?);
            }
        }
        if procs.is_empty() {
            return Err(TaskError::NoSuchTask(pids.first().copied().unwrap_or(0)));
        }
    }

    let watchdog = Watchdog::spawn(&method)?;
    let since = Instant::now();
    // From here on, dropping `frozen` thaws and disarms: every error path is covered.
    let mut frozen =
        Frozen { method, procs, since, latency: Duration::ZERO, watchdog: Some(watchdog), done: false };
    start_freeze(&frozen.method, &frozen.procs)?;
    if !wait_until(timeout, || is_frozen(&frozen.method, &frozen.procs))? {
        let mut stuck = stuck_tasks(&frozen.method, &frozen.procs);
        let waited = since.elapsed();
        if let Err(e) = frozen.finish(false) {
            stuck.push(format!("(and thawing again failed: {e})"));
        }
        return Err(TaskError::FreezeTimeout { waited, stuck });
    }
    frozen.latency = since.elapsed();
    Ok(frozen)
}

/// `p` made absolute (the watchdog runs in `/`); the watchdog's arguments must be UTF-8.
fn absolute(p: PathBuf) -> Result<PathBuf, TaskError> {
    let p = if p.is_relative() {
        std::env::current_dir().map_err(|e| io_err(".", "getcwd", e))?.join(p)
    } else {
        p
    };
    if p.to_str().is_none() {
        return Err(TaskError::CannotFreeze {
            path: p,
            reason:
                "the path is not valid UTF-8, which the thaw watchdog's arguments must be; rename the cgroup"
                    .into(),
        });
    }
    Ok(p)
}

/// Frozen tasks. Thaw with [`Frozen::thaw`], or [`Frozen::release`] once they are gone;
/// dropping it thaws them too (best effort).
#[derive(Debug)]
pub struct Frozen {
    method: FreezeMethod,
    /// The processes of a `Sigstop` method, pinned by pidfds; empty for cgroups.
    procs: Vec<Proc>,
    /// When freezing started.
    since: Instant,
    /// How long freezing took.
    latency: Duration,
    watchdog: Option<Watchdog>,
    /// Thawed or released already.
    done: bool,
}

impl Frozen {
    /// How the tasks were frozen.
    pub fn method(&self) -> &FreezeMethod {
        &self.method
    }

    /// Tell the watchdog about a process engine (CRIU) working on the tasks: if snapckpt dies,
    /// the watchdog thaws only after that process has ended (CRIU puts back the frozen state it
    /// found when it gives up). Best effort.
    pub fn note_engine(&self, pid: i32) {
        if let Some(w) = &self.watchdog {
            if let Some(mut stdin) = w.stdin.as_ref() {
                let _ = stdin.write_all(format!("E{pid}\n").as_bytes());
            }
        }
    }

    /// The CRIU processes that are children of this process (for [`Frozen::note_engine`]).
    pub fn criu_children() -> Vec<i32> {
        children(std::process::id() as i32).unwrap_or_default().into_iter().filter(|&p| is_criu(p)).collect()
    }

    /// Check that the thaw watchdog still runs (someone may have killed it): a take must not
    /// go on to steps after which a death of snapckpt would leave the tasks frozen.
    pub fn check_watchdog(&self) -> Result<(), TaskError> {
        let Some(w) = &self.watchdog else { return Ok(()) };
        let pid = w.child.id();
        let alive = fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| ProcStat::parse(&s).is_some_and(|st| st.state != 'Z' && st.state != 'X'));
        if alive {
            Ok(())
        } else {
            Err(TaskError::Watchdog(format!("the thaw watchdog (pid {pid}) died while the tasks were frozen (killed?); the take was undone and the tasks thawed")))
        }
    }

    /// Time since freezing started.
    pub fn frozen_for(&self) -> Duration {
        self.since.elapsed()
    }

    /// How long it took until every task was frozen.
    pub fn freeze_latency(&self) -> Duration {
        self.latency
    }

    /// The pid of the armed watchdog process.
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.watchdog.as_ref().map(|w| w.child.id())
    }

    /// Thaw (v2: `0` into `cgroup.freeze`; v1: `THAWED`; sigstop: `SIGCONT` to each process),
    /// wait until thawed, then disarm and reap the watchdog. Returns how long the tasks were
    /// frozen (from the start of freezing to the end of thawing). Processes that exited
    /// while frozen are not an error. If thawing fails the watchdog is triggered instead of
    /// disarmed, so that it tries again.
    pub fn thaw(mut self) -> Result<Duration, TaskError> {
        self.finish(false)
    }

    /// The tasks are gone (e.g. CRIU killed them after the dump): thaw the cgroup if it still
    /// exists (an empty cgroup must not be left frozen: whatever is moved into it later would
    /// freeze), ignore processes and cgroups that have gone, and disarm the watchdog.
    pub fn release(mut self) -> Result<Duration, TaskError> {
        self.finish(true)
    }

    /// Leave the tasks frozen on purpose: wait until no process engine traces them any more
    /// (CRIU puts back the frozen state it found when it lets them go), then disarm the
    /// watchdog without thawing. Returns how long they have been frozen so far.
    pub fn keep_frozen(mut self) -> Result<Duration, TaskError> {
        self.done = true;
        wait_untraced(&self.method, &self.procs, Duration::from_secs(10));
        let elapsed = self.since.elapsed();
        match self.watchdog.take() {
            Some(w) => w.disarm().map(|()| elapsed),
            None => Ok(elapsed),
        }
    }

    /// End the tasks: SIGKILL to each of `pids` (process ids of the selection) while they are
    /// still frozen, then thaw (a v1-frozen task dies only once thawed) and wait until each is
    /// dead (gone, or a zombie waiting for its parent). Returns how long the tasks were frozen,
    /// up to the kill. Used after a checkpoint of tasks that must not go on has been published.
    pub fn kill(mut self, pids: &[i32]) -> Result<Duration, TaskError> {
        let frozen_for = self.since.elapsed();
        let mut first_err = None;
        for &pid in pids {
            // Sigstop: through the pidfd that pins the process. Cgroups: the task is frozen,
            // so it cannot have exited and its pid cannot have been reused.
            let r = match self.procs.iter().find(|p| p.pid == pid) {
                Some(p) => p.signal(libc::SIGKILL).map(drop),
                None => Proc { pid, pidfd: None }.signal(libc::SIGKILL).map(drop),
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        self.finish(true)?;
        if let Some(e) = first_err {
            return Err(e);
        }
        let dead = |pid: i32| match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(s) => ProcStat::parse(&s).is_some_and(|st| st.state == 'Z' || st.state == 'X'),
            Err(_) => true,
        };
        if !wait_until(KILL_TIMEOUT, || Ok(pids.iter().all(|&p| dead(p))))? {
            let alive: Vec<String> = pids.iter().filter(|&&p| !dead(p)).map(|p| p.to_string()).collect();
            return Err(TaskError::KillTimeout { waited: KILL_TIMEOUT, alive });
        }
        Ok(frozen_for)
    }

    fn finish(&mut self, gone_ok: bool) -> Result<Duration, TaskError> {
        self.done = true;
        wait_untraced(&self.method, &self.procs, Duration::from_secs(10));
        let thawed = start_thaw(&self.method, &self.procs, gone_ok).and_then(|()| {
            if wait_until(THAW_TIMEOUT, || is_thawed(&self.method, &self.procs))? {
                Ok(())
            } else {
                Err(TaskError::ThawTimeout { what: self.method.describe(), waited: THAW_TIMEOUT })
            }
        });
        let elapsed = self.since.elapsed();
        let watchdog = match self.watchdog.take() {
            Some(w) if thawed.is_ok() => w.disarm(),
            // Leave it to the watchdog: it thaws on end of file.
            Some(w) => w.trigger(),
            None => Ok(()),
        };
        thawed?;
        watchdog?;
        Ok(elapsed)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.finish(true);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The watchdog, parent side
// ---------------------------------------------------------------------------------------

static WATCHDOG_EXE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Use `path` as the watchdog executable for all later [`freeze`] calls of this process
/// (instead of `SNAPCKPT_WATCHDOG_EXE` or `/proc/self/exe`). It must run [`watchdog_main`]
/// when its first argument is `__watchdog`, as the snapckpt binary does.
pub fn set_watchdog_exe(path: impl Into<PathBuf>) {
    *WATCHDOG_EXE.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.into());
}

/// The watchdog executable: set by [`set_watchdog_exe`], else `$SNAPCKPT_WATCHDOG_EXE`,
/// else `/proc/self/exe` (this very binary, even if its file was replaced meanwhile).
pub fn watchdog_exe() -> PathBuf {
    if let Some(p) = WATCHDOG_EXE.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return p;
    }
    match std::env::var_os(WATCHDOG_EXE_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("/proc/self/exe"),
    }
}

/// A running, armed watchdog process.
#[derive(Debug)]
struct Watchdog {
    child: Child,
    /// The write end of the watchdog's stdin; closing it triggers the thaw.
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Start the watchdog for `method` and wait until it is armed.
    fn spawn(method: &FreezeMethod) -> Result<Watchdog, TaskError> {
        Watchdog::spawn_args(&method.watchdog_args())
    }

    fn spawn_args(args: &[String]) -> Result<Watchdog, TaskError> {
        let exe = watchdog_exe();
        let mut child = Command::new(&exe)
            .arg(WATCHDOG_ARG)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .current_dir("/")
            .spawn()
            .map_err(|e| {
                TaskError::Watchdog(format!(
                    "cannot start {} {WATCHDOG_ARG}: {e}; set {WATCHDOG_EXE_ENV} to the snapckpt binary",
                    exe.display()
                ))
            })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let mut wd = Watchdog { child, stdin };
        match stdout.ok_or_else(|| "no stdout pipe".to_string()).and_then(read_ready) {
            Ok(()) => Ok(wd),
            Err(msg) => {
                let _ = wd.child.kill();
                let _ = wd.child.wait();
                wd.stdin = None;
                Err(TaskError::Watchdog(format!(
                    "{} {WATCHDOG_ARG} did not get ready: {msg}; is it the snapckpt binary? \
                     (set {WATCHDOG_EXE_ENV} to the snapckpt binary)",
                    exe.display()
                )))
            }
        }
    }

    /// Tell the watchdog to exit without thawing, and reap it.
    fn disarm(mut self) -> Result<(), TaskError> {
        if let Some(mut w) = self.stdin.take() {
            // EPIPE means it has exited already; its exit status below tells how.
            let _ = w.write_all(b"D").and_then(|()| w.flush());
        }
        match self.wait()? {
            Some(st) if st.success() => Ok(()),
            Some(st) => {
                Err(TaskError::Watchdog(format!("watchdog pid {} exited with {st}", self.child.id())))
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                Err(TaskError::Watchdog(format!(
                    "watchdog pid {} did not exit within {WATCHDOG_EXIT_TIMEOUT:?} after being disarmed; killed it",
                    self.child.id()
                )))
            }
        }
    }

    /// Close the pipe so that the watchdog thaws, and reap it.
    fn trigger(mut self) -> Result<(), TaskError> {
        self.stdin = None;
        match self.wait()? {
            Some(st) if st.success() => Ok(()),
            Some(st) => Err(TaskError::Watchdog(format!(
                "watchdog pid {} could not thaw: exited with {st}",
                self.child.id()
            ))),
            None => Err(TaskError::Watchdog(format!(
                "watchdog pid {} still thawing after {WATCHDOG_EXIT_TIMEOUT:?}",
                self.child.id()
            ))),
        }
    }

    /// Wait for the watchdog to exit, at most [`WATCHDOG_EXIT_TIMEOUT`].
    fn wait(&mut self) -> Result<Option<ExitStatus>, TaskError> {
        let mut status = None;
        let pid = self.child.id();
        wait_until(WATCHDOG_EXIT_TIMEOUT, || {
            status = self.child.try_wait().map_err(|e| io_err(format!("/proc/{pid}"), "waitpid", e))?;
            Ok(status.is_some())
        })?;
        Ok(status)
    }
}

impl Drop for Watchdog {
    /// A watchdog dropped without [`Watchdog::disarm`] is triggered: it thaws.
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.wait();
        }
    }
}

/// Read the watchdog's stdout until `ready\n`, at most [`WATCHDOG_READY_TIMEOUT`].
fn read_ready(mut out: ChildStdout) -> Result<(), String> {
    let deadline = Instant::now() + WATCHDOG_READY_TIMEOUT;
    let mut got = Vec::new();
    loop {
        if got.ends_with(b"\n") || got.len() > 4096 {
            break;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no answer within {WATCHDOG_READY_TIMEOUT:?}"));
        }
        let mut pfd = libc::pollfd { fd: out.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if r == 0 {
            continue;
        }
        let mut buf = [0u8; 256];
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    if got == b"ready\n" {
        Ok(())
    } else if got.is_empty() {
        Err("it exited without a word".to_string())
    } else {
        Err(format!("it said {:?}", String::from_utf8_lossy(&got).trim()))
    }
}

// ---------------------------------------------------------------------------------------
// The watchdog, process side
// ---------------------------------------------------------------------------------------

/// The watchdog process: the snapckpt binary calls this when its first argument is
/// `__watchdog`, passing the arguments after it, and exits with the returned code.
///
/// `args` is `cgroup-v2 PATH`, `cgroup-v1 PATH` or `sigstop PID...`. Exit codes: 0 when
/// disarmed (byte `D` on stdin) or after a successful thaw (end of file on stdin), 1 if
/// the thaw failed, 2 for bad arguments. See the module documentation.
pub fn watchdog_main(args: &[String]) -> i32 {
    // `sigstop-later PID...` (restart): the tasks do not exist yet; they are pinned when
    // the parent goes away, and continued.
    let later = args.first().is_some_and(|a| a == LATER_ARG);
    let args: Vec<String> = if later {
        std::iter::once("sigstop".to_string()).chain(args[1..].iter().cloned()).collect()
    } else {
        args.to_vec()
    };
    let args = &args[..];
    let method = match FreezeMethod::from_watchdog_args(args) {
        Ok(m) => m,
        Err(e) => {
            log(&format!("snapckpt {WATCHDOG_ARG}: {e}"));
            return 2;
        }
    };
    // Leave the terminal's session and process group; fails harmlessly if already a leader.
    let _ = nix::unistd::setsid();
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGTSTP, libc::SIGPIPE] {
        // SAFETY: installing SIG_IGN has no handler code to be unsafe.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // Keep nothing of the parent open but stdin, stdout and stderr.
    // SAFETY: plain system call; std holds no descriptors above 2 at this point.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };

    // Pin the identity of the processes now, before the parent freezes them.
    let procs: Vec<Proc> = match &method {
        FreezeMethod::Sigstop(pids) => pids.iter().filter_map(|&p| Proc::open(p).ok().flatten()).collect(),
        _ => Vec::new(),
    };

    // Armed. Then point stdout at /dev/null: the parent stops reading it.
    let mut out = io::stdout().lock();
    let _ = out.write_all(b"ready\n").and_then(|()| out.flush());
    drop(out);
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1, which we own as stdout.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }

    let mut stdin = io::stdin().lock();
    let mut byte = [0u8; 1];
    // `E<pid>\n`: a process engine (CRIU) working on the tasks; waited for before thawing.
    let mut engines: Vec<i32> = vec![];
    let mut num: Option<String> = None;
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'D' => return 0,
            Ok(_) if byte[0] == b'E' => num = Some(String::new()),
            Ok(_) if byte[0] == b'\n' => {
                if let Some(p) = num.take().and_then(|n| n.parse::<i32>().ok()).filter(|&p| p > 0) {
                    engines.push(p);
                }
            }
            Ok(_) if byte[0].is_ascii_digit() => {
                if let Some(n) = num.as_mut() {
                    n.push(byte[0] as char);
                }
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Anything else: fail safe, thaw.
            Err(_) => break,
        }
    }

    // A process engine (CRIU) may still hold the tasks under ptrace; when it lets them go it
    // puts back the frozen state it found. Thaw after that, not before.
    // With snapckpt gone, CRIU learns it only when it next talks to it (at the end of a dump
    // that may take minutes for a large task): wait for it as long as it holds the tasks.
    let procs: Vec<Proc> = match (&method, later) {
        (FreezeMethod::Sigstop(pids), true) => {
            pids.iter().filter_map(|&p| Proc::open(p).ok().flatten()).collect()
        }
        _ => procs,
    };
    wait_untraced(&method, &procs, Duration::from_secs(24 * 3600));
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(24 * 3600) && engines.iter().any(|&p| is_live_criu(p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut result = Ok(());
    for attempt in 0..5 {
        result = start_thaw(&method, &procs, true);
        if result.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50 << attempt));
    }
    match result {
        Ok(()) => {
            log(&format!("snapckpt watchdog: the freezing process went away; thawed {}", method.describe()));
            0
        }
        Err(e) => {
            log(&format!("snapckpt watchdog: could not thaw {}: {e}", method.describe()));
            1
        }
    }
}

const LATER_ARG: &str = "sigstop-later";

/// Restart of a checkpoint taken with SIGSTOP: CRIU restores the tasks stopped, and the
/// restart continues them. This guard is a watchdog that continues them (SIGCONT to the
/// recorded pids, once CRIU has let them go) if snapckpt dies before it could. Dropping the
/// guard disarms it.
pub struct ContinueGuard(Option<Watchdog>);

impl ContinueGuard {
    pub fn arm(pids: &[i32]) -> Result<ContinueGuard, TaskError> {
        let mut args = vec![LATER_ARG.to_string()];
        args.extend(pids.iter().filter(|&&p| p > 0).map(i32::to_string));
        if args.len() == 1 {
            return Ok(ContinueGuard(None));
        }
        Watchdog::spawn_args(&args).map(|w| ContinueGuard(Some(w)))
    }
}

impl Drop for ContinueGuard {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            let _ = w.disarm();
        }
    }
}

/// Write a line to stderr, ignoring failure (`eprintln!` would panic on a closed stderr).
fn log(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Unit tests
// ---------------------------------------------------------------------------------------

/// Whether `pid` is a CRIU process: its executable, or a file it maps (CRIU run through its
/// own ld.so has the loader as exe and comm, and CRIU rewrites its argv), is named `criu`.
fn is_criu(pid: i32) -> bool {
    let named_criu = |p: &str| p.rsplit('/').next() == Some("criu");
    if fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| named_criu(&e.to_string_lossy())) {
        return true;
    }
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(5).is_some_and(named_criu)))
}

fn is_live_criu(pid: i32) -> bool {
    is_criu(pid)
        && fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| ProcStat::parse(&s).is_some_and(|st| st.state != 'Z' && st.state != 'X'))
}

/// Wait (at most `max`) until no task of the selection is traced (TracerPid 0).
fn wait_untraced(method: &FreezeMethod, procs: &[Proc], max: Duration) {
    let pids: Vec<i32> = match method {
        FreezeMethod::Sigstop(_) => procs.iter().map(|p| p.pid).collect(),
        FreezeMethod::CgroupV2(cg) | FreezeMethod::CgroupV1(cg) => cgroup_procs(cg).unwrap_or_default(),
    };
    // Only a CRIU tracer matters: it puts back the frozen state it found when it lets go. A
    // debugger or strace attached to a task does not (and may hold on for ever).
    let criu_tracer = |pid: i32| {
        fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string())))
            .and_then(|v| v.parse::<i32>().ok())
            .filter(|&t| t > 0 && is_criu(t))
    };
    // After it lets the tasks go, CRIU puts back the frozen state it found: wait for the CRIU
    // process itself to end, not only for the tasks to be untraced.
    let mut tracers: Vec<i32> = vec![];
    let t = Instant::now();
    while t.elapsed() < max {
        let now: Vec<i32> = pids.iter().filter_map(|&p| criu_tracer(p)).collect();
        for c in &now {
            if !tracers.contains(c) {
                tracers.push(*c);
            }
        }
        if now.is_empty() && !tracers.iter().any(|&c| is_live_criu(c)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_plain() {
        let st = ProcStat::parse("1234 (bash) S 1 1234 1234 34816 0 4194560 0 0").unwrap();
        assert_eq!(st, ProcStat { pid: 1234, comm: "bash".into(), state: 'S', ppid: 1 });
    }

    #[test]
    fn parse_stat_comm_with_spaces_and_parens() {
        let st = ProcStat::parse("77 (a) b) (c ) T 5 77 77 0 -1").unwrap();
        assert_eq!(st.pid, 77);
        assert_eq!(st.comm, "a) b) (c ");
        assert_eq!(st.state, 'T');
        assert_eq!(st.ppid, 5);
        let st = ProcStat::parse("8 ()) R 0 0").unwrap();
        assert_eq!(st.comm, ")");
        assert_eq!(st.state, 'R');
    }

    #[test]
    fn parse_stat_garbage_is_none() {
        for s in
            ["", "12", "12 (x", "x (y) S 1", "12 (y)", "12 (y) S", "12 (y) S notapid", ") 12 (", "12 )x( S 1"]
        {
            assert_eq!(ProcStat::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn parse_own_stat() {
        let st = ProcStat::read(Path::new("/proc/thread-self/stat")).unwrap().unwrap();
        // SAFETY: gettid has no preconditions.
        assert_eq!(st.pid, unsafe { libc::gettid() });
        assert_eq!(st.state, 'R');
        assert!(ProcStat::read(Path::new("/proc/0/stat")).unwrap().is_none());
    }

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
    fn watchdog_args_round_trip() {
        for m in [
            FreezeMethod::CgroupV2("/sys/fs/cgroup/unified/a b".into()),
            FreezeMethod::CgroupV1("/sys/fs/cgroup/freezer/x".into()),
            FreezeMethod::Sigstop(vec![12, 13, 14]),
        ] {
            assert_eq!(FreezeMethod::from_watchdog_args(&m.watchdog_args()).unwrap(), m);
        }
        assert_eq!(
            FreezeMethod::Sigstop(vec![12, 13]).watchdog_args(),
            vec!["sigstop".to_string(), "12".into(), "13".into()]
        );
    }

    #[test]
    fn watchdog_args_rejected() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for bad in [
            &[][..],
            &["sigstop"],
            &["sigstop", "x"],
            &["sigstop", "0"],
            &["cgroup-v2"],
            &["cgroup-v1", "a", "b"],
            &["bogus", "1"],
        ] {
            assert!(FreezeMethod::from_watchdog_args(&s(bad)).is_err(), "{bad:?}");
        }
        assert_eq!(watchdog_main(&s(&["bogus"])), 2);
    }

    #[test]
    fn describe() {
        assert_eq!(Selection::Pid { pid: 5, tree: false }.describe(), "pid 5");
        assert_eq!(Selection::Pid { pid: 5, tree: true }.describe(), "process tree of pid 5");
        assert_eq!(
            Selection::Cgroup("/sys/fs/cgroup/unified/x".into()).describe(),
            "cgroup /sys/fs/cgroup/unified/x"
        );
        assert_eq!(FreezeMethod::CgroupV2("/c".into()).describe(), "cgroup-v2 /c");
        assert_eq!(FreezeMethod::CgroupV1("/c".into()).describe(), "cgroup-v1 /c");
        assert_eq!(FreezeMethod::Sigstop(vec![1]).describe(), "sigstop");
        assert_eq!(FreezeMethod::CgroupV1("/c".into()).cgroup_path(), Some(Path::new("/c")));
        assert_eq!(FreezeMethod::Sigstop(vec![1]).cgroup_path(), None);
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
    fn no_such_cgroup() {
        let sel = Selection::Cgroup("/sys/fs/cgroup/nonexistent-snapckpt-test".into());
        let e = resolve(&sel).unwrap_err();
        assert!(matches!(e, TaskError::NoSuchCgroup(_)), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(matches!(FreezeMethod::for_selection(&sel, &[]), Err(TaskError::NoSuchCgroup(_))));
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
    fn freeze_timeout_advice_only_names_state_d_when_seen() {
        let e = |stuck: &[&str]| {
            TaskError::FreezeTimeout {
                waited: Duration::from_millis(5),
                stuck: stuck.iter().map(|s| s.to_string()).collect(),
            }
            .to_string()
        };
        assert!(e(&["pid 5 (x) state D"]).contains("uninterruptible sleep"));
        let s = e(&["pid 5 (x) state R", "pid 6 (y) state S"]);
        assert!(!s.contains("state D,") && !s.contains("uninterruptible"), "{s}");
        assert!(s.contains("--freeze-timeout"), "{s}");
    }

    #[test]
    fn not_a_cgroup() {
        for p in ["/tmp", "/proc/self/stat", "/proc/self/stat/x"] {
            let sel = Selection::Cgroup(p.into());
            assert!(matches!(resolve(&sel), Err(TaskError::NotACgroup(_))), "{p}");
            assert!(matches!(FreezeMethod::for_selection(&sel, &[]), Err(TaskError::NotACgroup(_))), "{p}");
        }
    }

    #[test]
    fn freeze_self_is_refused() {
        let me = std::process::id() as i32;
        let e = freeze(FreezeMethod::Sigstop(vec![me]), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, TaskError::FreezesSelf(_, p) if p == me), "{e}");
    }

    #[test]
    fn order_parents_first_uses_ppid() {
        // This process and its parent: the parent must come first whatever the input order.
        let me = std::process::id() as i32;
        let parent = ProcStat::read(Path::new("/proc/self/stat")).unwrap().unwrap().ppid;
        assert_eq!(order_parents_first(vec![me, parent, me]).unwrap(), vec![parent, me]);
        // Gone pids are dropped.
        assert_eq!(order_parents_first(vec![i32::MAX, me]).unwrap(), vec![me]);
    }

    #[test]
    fn errors_tell_what_to_do() {
        let e = io_err("/sys/fs/cgroup/x/cgroup.freeze", "write", io::Error::from_raw_os_error(libc::EACCES));
        let s = e.to_string();
        assert!(s.starts_with("write /sys/fs/cgroup/x/cgroup.freeze: "), "{s}");
        assert!(s.contains("run snapckpt as root"), "{s}");
        let e = TaskError::FreezeTimeout {
            waited: Duration::from_millis(5),
            stuck: vec!["pid 1 (x) state D".into()],
        };
        assert!(e.to_string().contains("pid 1 (x) state D"));
    }
}
