//! `restart --private-pids`: restore the tasks into a new pid namespace, so that they get
//! their recorded pids there whatever runs on the host, and two restarts of one checkpoint
//! run side by side.
//!
//! - **init**: snapckpt clones a child into a new pid namespace (pid 1 there) that re-execs
//!   snapckpt as [`INIT_ARG`] ([`init_main`]). It makes a mount namespace of its own (a copy
//!   of the restart's, so the clones are at the recorded paths) and mounts a procfs of the
//!   new pid namespace on `/proc` there (a restored task's `/proc/self` is its `getpid()`),
//!   says it is ready, then waits until the restart says the restore is over (or dies), and
//!   then reaps: it is the reaper of the restored tasks and exits when none is left, which
//!   is when the kernel ends the namespace. A failed restore SIGKILLs it ([`PidNs::abort`]),
//!   which ends the namespace with whatever CRIU left there.
//! - **criu**: CRIU is run through snapckpt as [`ENTER_ARG`] ([`enter_main`]): it enters the
//!   init's pid and mount namespaces and forks `criu swrk` there, which creates the recorded
//!   pids inside the namespace (clone3 `set_tid`). When criu exits, the restored tasks are
//!   reparented to the init. criu is killed if the wrapper is (`PR_SET_PDEATHSIG`), so
//!   CRIU's restore timeout and snapckpt's death still stop it. CRIU names a caller's fds
//!   as `/proc/<caller>/fd/N`, and snapckpt has no pid in the namespace: criu gets the image
//!   directory by path instead (see [`crate::criu::RestoreRequest::wrapper`]).
//!
//! The host sees each restored task under a pid of its own: [`PidNs::host_pids`] maps the
//! recorded pids to those (`NSpid` of every process in the namespace).

use super::RestartError;
use crate::sys::SysError;
use std::collections::HashMap;
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

/// The first argument that makes the snapckpt binary run [`init_main`].
pub const INIT_ARG: &str = "__pidns-init";
/// The first argument that makes the snapckpt binary run [`enter_main`].
pub const ENTER_ARG: &str = "__pidns-criu";

/// The init of a restart's new pid namespace, from the restart's side.
pub struct PidNs {
    /// Its pid on the host.
    init: i32,
    /// The write end of its go pipe: closing it tells the init that the restore is over.
    go: Option<OwnedFd>,
}

fn io_err(path: &str, syscall: &'static str, source: std::io::Error) -> RestartError {
    RestartError::Io(SysError { path: PathBuf::from(path), syscall, source })
}

fn pipe(what: &str) -> Result<(OwnedFd, OwnedFd), RestartError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err(what, "pipe2", e.into()))
}

impl PidNs {
    /// Start the init and wait until its namespace is ready for CRIU.
    pub fn start() -> Result<PidNs, RestartError> {
        let exe = crate::tasks::watchdog_exe();
        let (go_r, go_w) = pipe("pid namespace init (go)")?;
        let (ready_r, ready_w) = pipe("pid namespace init (ready)")?;
        let init = clone_init(&exe, go_r.as_raw_fd(), ready_w.as_raw_fd())?;
        drop((go_r, ready_w));
        let ns = PidNs { init, go: Some(go_w) };
        let mut said = String::new();
        let _ = std::fs::File::from(ready_r).read_to_string(&mut said);
        if said != "ready\n" {
            let said = if said.is_empty() { "it exited".to_string() } else { said.trim().to_string() };
            return Err(RestartError::InitNotReady { exe, init, said });
        }
        Ok(ns)
    }

    /// The init's pid on the host.
    pub fn init_pid(&self) -> i32 {
        self.init
    }

    /// The command that runs `CRIU swrk FD` in the namespace (see [`enter_main`]).
    pub fn criu_wrapper(&self) -> Vec<String> {
        let exe = crate::tasks::watchdog_exe();
        vec![exe.display().to_string(), ENTER_ARG.to_string(), self.init.to_string()]
    }

    /// The host pids of `pids` (pids inside the namespace), in their order; refused if one
    /// is not there.
    pub fn host_pids(&self, pids: &[i32]) -> Result<Vec<i32>, String> {
        host_pids_in(self.init, pids)
    }

    /// The restore is over: from now on the init reaps the restored tasks, and exits once its
    /// namespace is empty.
    pub fn release(mut self) {
        self.go = None;
    }

    /// The restore failed: SIGKILL the init, which ends the namespace with whatever CRIU left
    /// in it (a criu killed by the restore timeout leaves half-restored tasks), and reap it.
    pub fn abort(self) {
        let pid = nix::unistd::Pid::from_raw(self.init);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}

/// The host pids of `pids`, pids inside the pid namespace of host pid `member`, in their
/// order; refused if one is not there.
pub fn host_pids_in(member: i32, pids: &[i32]) -> Result<Vec<i32>, String> {
    let map = inner_to_host(member);
    pids.iter()
        .map(|p| {
            map.get(p).copied().ok_or_else(|| format!("restored pid {p} is not in the new pid namespace"))
        })
        .collect()
}

/// Every process of the pid namespace of host pid `member`: its pid there -> its host pid.
fn inner_to_host(member: i32) -> HashMap<i32, i32> {
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let Some(want) = ns(&member.to_string()) else { return HashMap::new() };
    let Ok(rd) = std::fs::read_dir("/proc") else { return HashMap::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()) && ns(n).as_ref() == Some(&want))
        .filter_map(|n| {
            let host: i32 = n.parse().ok()?;
            Some((*crate::procfs::nspid(host)?.last()?, host))
        })
        .collect()
}

/// Clone a child into a new pid namespace that execs `exe INIT_ARG GO READY`; its host pid.
fn clone_init(exe: &std::path::Path, go: RawFd, ready: RawFd) -> Result<i32, RestartError> {
    let c = |s: String| CString::new(s).map_err(|e| io_err(INIT_ARG, "execv", e.into()));
    let path = c(exe.display().to_string())?;
    let argv = [path.clone(), c(INIT_ARG.into())?, c(go.to_string())?, c(ready.to_string())?];
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: clone without CLONE_VM and without a new stack is a fork; the child only makes
    // async-signal-safe calls (fcntl, execv, _exit) on memory prepared before the clone.
    let pid = unsafe {
        libc::syscall(libc::SYS_clone, (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong, 0, 0, 0, 0)
    };
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::fcntl(go, libc::F_SETFD, 0);
            libc::fcntl(ready, libc::F_SETFD, 0);
            libc::execv(path.as_ptr(), ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    if pid < 0 {
        return Err(io_err(INIT_ARG, "clone(CLONE_NEWPID)", std::io::Error::last_os_error()));
    }
    Ok(pid as i32)
}

// ---------------------------------------------------------------------------------------
// The init (pid 1 of the new namespace)
// ---------------------------------------------------------------------------------------

/// `snapckpt __pidns-init GO READY`: pid 1 of a restart's new pid namespace.
pub fn init_main(args: &[String]) -> i32 {
    let fd = |i: usize| args.get(i).and_then(|a| a.parse::<RawFd>().ok());
    let (Some(go), Some(ready)) = (fd(0), fd(1)) else {
        eprintln!("snapckpt {INIT_ARG}: usage: {INIT_ARG} GO-FD READY-FD");
        return 2;
    };
    close_inherited(&[go, ready]);
    // SAFETY: descriptors inherited for this purpose; nothing else owns them.
    let (go, mut ready) = unsafe { (OwnedFd::from_raw_fd(go), std::fs::File::from_raw_fd(ready)) };
    if let Err(e) = init_setup() {
        let _ = write!(ready, "{e}");
        return 1;
    }
    let _ = ready.write_all(b"ready\n");
    drop(ready);
    // Until the restart says the restore is over (or dies), nothing is ours to reap.
    let _ = std::fs::File::from(go).read_to_end(&mut Vec::new());
    reap_until_alone();
    0
}

/// Close every descriptor above 2 but `keep` that the restart left open across the exec: the
/// init lives as long as the restored tasks and must hold nothing of the restart's.
fn close_inherited(keep: &[RawFd]) {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd > 2 && !keep.contains(fd)) {
        // SAFETY: descriptors nobody in this process uses (the directory's own is closed
        // already: EBADF).
        unsafe { libc::close(fd) };
    }
}

/// A session of its own (no terminal signal reaches it), a mount namespace of its own with
/// this pid namespace's procfs on /proc, stdio on /dev/null (the restart's output ends with
/// the restart).
fn init_setup() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let _ = nix::unistd::setsid();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| format!("mount / MS_SLAVE: {e}"))?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), flags, None::<&str>)
        .map_err(|e| format!("mount proc on /proc: {e}"))?;
    let null = crate::sys::open("/dev/null", libc::O_RDWR, 0).map_err(|e| format!("open /dev/null: {e}"))?;
    for target in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), target).map_err(|e| format!("dup2 /dev/null: {e}"))?;
    }
    Ok(())
}

/// Reap every child (the restored tasks come to pid 1 when criu exits) until no other
/// process is left in the namespace.
fn reap_until_alone() {
    use nix::errno::Errno;
    loop {
        match nix::sys::wait::waitpid(None, None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) if alone() => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}

/// Whether this is the only process of its pid namespace (its own /proc).
fn alone() -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else { return true };
    !rd.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n != "1" && n.parse::<u32>().is_ok()))
}

// ---------------------------------------------------------------------------------------
// criu in the namespace
// ---------------------------------------------------------------------------------------

/// `snapckpt __pidns-criu INIT CRIU ARGS...`: run `CRIU ARGS...` in the pid and mount
/// namespaces of host pid INIT; exits with its status (killed with it).
pub fn enter_main(args: &[String]) -> i32 {
    let (Some(init), Some(criu)) = (args.first(), args.get(1)) else {
        eprintln!("snapckpt {ENTER_ARG}: usage: {ENTER_ARG} INIT-PID CRIU ARGS...");
        return 2;
    };
    if let Err(e) = enter(init) {
        eprintln!("snapckpt {ENTER_ARG}: {e}");
        return 1;
    }
    match run_child(criu, &args[1..]) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snapckpt {ENTER_ARG}: {criu}: {e}");
            1
        }
    }
}

/// Enter the pid namespace (for the children) and the mount namespace of `init`.
fn enter(init: &str) -> Result<(), String> {
    for (ns, flag) in
        [("pid", nix::sched::CloneFlags::CLONE_NEWPID), ("mnt", nix::sched::CloneFlags::CLONE_NEWNS)]
    {
        let p = format!("/proc/{init}/ns/{ns}");
        let f = crate::sys::open(&p, libc::O_RDONLY, 0).map_err(|e| format!("open {p}: {e}"))?;
        nix::sched::setns(f, flag).map_err(|e| format!("setns {p}: {e}"))?;
    }
    Ok(())
}

/// Fork `prog argv[1..]` (killed if we die), wait for it: its exit status, 128+signal.
fn run_child(prog: &str, argv: &[String]) -> Result<i32, String> {
    let cs = |s: &String| CString::new(s.as_str()).map_err(|e| e.to_string());
    let path = cs(&prog.to_string())?;
    let argv = argv.iter().map(cs).collect::<Result<Vec<_>, _>>()?;
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: this process is single-threaded; the child only makes async-signal-safe calls.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::execv(path.as_ptr(), ptrs.as_ptr());
            libc::_exit(127);
        },
        nix::unistd::ForkResult::Parent { child } => loop {
            use nix::sys::wait::WaitStatus;
            match nix::sys::wait::waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("waitpid: {e}")),
            }
        },
    }
}
