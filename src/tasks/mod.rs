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
//!
//! # Where things are
//!
//! | concern | file |
//! |---|---|
//! | errors ([`TaskError`]) and small helpers shared by the others | `mod.rs` |
//! | [`Selection`], [`resolve`], zombies, kernel threads, init, the process tree | `selection.rs` |
//! | cgroup v1/v2: version, freezer state, subtree, threads | `cgroup.rs` |
//! | processes pinned by pidfds, signalled | `pidfd.rs` |
//! | [`FreezeMethod`], [`freeze`], [`Frozen`] | `freeze.rs` |
//! | the thaw watchdog, both halves, and its pipe protocol | `watchdog.rs` |
//! | restart's [`ContinueGuard`] | `continue_guard.rs` |
//! | CRIU as the tracer of the tasks: [`Frozen::criu_children`], waiting for it to let go | `tracer.rs` |
//!
//! `/proc` text formats are parsed in [`crate::procfs`].

mod cgroup;
mod continue_guard;
mod freeze;
mod pidfd;
mod selection;
mod tracer;
mod watchdog;

pub use crate::procfs::ProcStat;
pub use cgroup::{cgroup_version, CgroupVersion};
pub use continue_guard::ContinueGuard;
pub use freeze::{freeze, FreezeMethod, Frozen};

pub use selection::{children, resolve, threads, zombie, Selection};
pub use watchdog::{set_watchdog_exe, watchdog_exe, watchdog_main, WATCHDOG_ARG, WATCHDOG_EXE_ENV};

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procfs;
use crate::procfs::is_gone;

// ---------------------------------------------------------------------------------------

/// What can go wrong while selecting, freezing or thawing tasks.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A system call on a file failed.
    #[error("{}{}", .0, io_hint(&.0.source))]
    Io(#[from] crate::sys::SysError),
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

pub(super) fn io_err(path: impl Into<PathBuf>, syscall: &'static str, source: io::Error) -> TaskError {
    TaskError::Io(crate::sys::SysError { path: path.into(), syscall, source })
}

/// A failed read or parse of a `/proc` file is a [`TaskError::Io`] with the same path and
/// system call.
impl From<procfs::Error> for TaskError {
    fn from(e: procfs::Error) -> TaskError {
        TaskError::Io(crate::sys::SysError { path: e.path, syscall: e.syscall, source: e.source })
    }
}

/// Read and parse a stat file (`/proc/PID/stat`, `/proc/PID/task/TID/stat`); `Ok(None)` if
/// the task has gone.
pub(super) fn read_stat(path: &Path) -> Result<Option<ProcStat>, TaskError> {
    Ok(ProcStat::read(path)?)
}

/// Poll `done` with a growing pause until it returns true or `timeout` passes.
pub(super) fn wait_until(
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

/// Write a line to stderr, ignoring failure (`eprintln!` would panic on a closed stderr).
pub(super) fn log(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn proc_errors_keep_path_and_syscall() {
        let e: TaskError = ProcStat::read(Path::new("/proc/self/stat/x")).unwrap_err().into();
        assert!(e.to_string().starts_with("read /proc/self/stat/x: "), "{e}");
    }
}
