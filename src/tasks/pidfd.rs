//! Processes addressed through pidfds: a process to stop and continue is pinned by a pidfd
//! (when the kernel has them), so that a pid reused after the process exits never receives
//! our signals; and the state of its threads.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::selection::threads;
use super::{io_err, read_stat, TaskError};
use crate::procfs;

/// A process to stop and continue, pinned by a pidfd when the kernel has them.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) pidfd: Option<OwnedFd>,
}

impl Proc {
    /// Open a pidfd for `pid`; `Ok(None)` if the process does not exist.
    pub(super) fn open(pid: i32) -> Result<Option<Proc>, TaskError> {
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
                Ok(procfs::pid_dir(pid).exists().then_some(Proc { pid, pidfd: None }))
            }
            _ => Err(io_err(procfs::pid_dir(pid), "pidfd_open", e)),
        }
    }

    /// Send `sig`; `Ok(false)` if the process has exited.
    pub(super) fn signal(&self, sig: libc::c_int) -> Result<bool, TaskError> {
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
            procfs::pid_dir(self.pid),
            if self.pidfd.is_some() { "pidfd_send_signal" } else { "kill" },
            e,
        ))
    }

    /// The threads of this process that are not stopped, described; empty once all are
    /// stopped or the process has gone. `want_stopped == false` inverts the test.
    pub(super) fn threads_not(&self, want_stopped: bool) -> Result<Vec<String>, TaskError> {
        let pid = self.pid;
        let tids = match threads(pid) {
            Ok(t) => t,
            Err(TaskError::NoSuchTask(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for tid in tids {
            if let Some(st) = read_stat(&procfs::thread_path(pid, tid, "stat"))? {
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
