//! Freezing and thawing: how a selection is frozen ([`FreezeMethod`]: cgroup v2, cgroup v1
//! freezer, SIGSTOP), [`freeze`] with its timeout and the watchdog armed first, and the
//! [`Frozen`] guard that thaws, releases, keeps frozen or kills the tasks.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::cgroup::{
    cgroup_procs, cgroup_version, stuck_in_cgroup, v1_state, v2_frozen, v2_subtree_frozen, write_file,
    CgroupVersion,
};
use super::pidfd::Proc;
use super::tracer::wait_untraced;
use super::watchdog::Watchdog;
use super::{io_err, wait_until, Selection, TaskError};
use crate::procfs::{self, ProcStat};

/// How long a thaw may take before it is reported as failed.
const THAW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a killed task may take to exit (freeing a large file's page cache and extents
/// is done by the exiting task: about a second per few GiB).
const KILL_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// result of [`resolve`](super::resolve)).
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
}

impl fmt::Display for FreezeMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
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
pub(super) fn start_thaw(method: &FreezeMethod, procs: &[Proc], gone_ok: bool) -> Result<(), TaskError> {
    let write = |path: PathBuf, data: &str| match write_file(&path, data) {
        Err(TaskError::Io(crate::sys::SysError { source, .. }))
            if gone_ok && source.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
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
            w.note_engine(pid);
        }
    }

    /// Check that the thaw watchdog still runs (someone may have killed it): a take must not
    /// go on to steps after which a death of snapckpt would leave the tasks frozen.
    pub fn check_watchdog(&self) -> Result<(), TaskError> {
        let Some(w) = &self.watchdog else { return Ok(()) };
        let pid = w.pid();
        if procfs::is_alive(pid as i32) {
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
        self.watchdog.as_ref().map(Watchdog::pid)
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
        let dead = |pid: i32| match procfs::read_text(procfs::pid_path(pid, "stat")) {
            Ok(s) => ProcStat::parse(&s).is_some_and(|st| st.is_dead()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn freeze_self_is_refused() {
        let me = std::process::id() as i32;
        let e = freeze(FreezeMethod::Sigstop(vec![me]), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(e, TaskError::FreezesSelf(_, p) if p == me), "{e}");
    }
}
