//! The thaw watchdog, both halves (see the module documentation of [`crate::tasks`]): the
//! parent side [`Watchdog`] that starts, arms, disarms or triggers it, and the process side
//! [`watchdog_main`]; its command line (`__watchdog <method args>`) and its pipe protocol
//! ([`WatchdogMsg`]).

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::continue_guard::LATER_ARG;
use super::freeze::{start_thaw, FreezeMethod};
use super::pidfd::Proc;
use super::tracer::{is_live_criu, wait_untraced};
use super::{io_err, log, wait_until, TaskError};
use crate::procfs;

/// How long [`freeze`](super::freeze) waits for the watchdog to report `ready`.
const WATCHDOG_READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we wait for the watchdog to exit once disarmed or triggered.
const WATCHDOG_EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The environment variable naming the watchdog executable.
pub const WATCHDOG_EXE_ENV: &str = "SNAPCKPT_WATCHDOG_EXE";
/// The first argument that makes the snapckpt binary run [`watchdog_main`].
pub const WATCHDOG_ARG: &str = "__watchdog";
/// How long the watchdog waits, once its parent has gone, for CRIU to let the tasks go.
const ENGINE_WAIT: Duration = Duration::from_secs(24 * 3600);

// ---------------------------------------------------------------------------------------
// The pipe protocol
// ---------------------------------------------------------------------------------------

/// A message on one of the watchdog's pipes. Parent to watchdog (its stdin): [`Disarm`]
/// and [`Engine`]; end of file there means "thaw". Watchdog to parent (its stdout): [`Ready`].
///
/// [`Disarm`]: WatchdogMsg::Disarm
/// [`Engine`]: WatchdogMsg::Engine
/// [`Ready`]: WatchdogMsg::Ready
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WatchdogMsg {
    /// `ready\n`: the watchdog is armed; the parent may freeze.
    Ready,
    /// `D`: exit 0 without touching the tasks (they have been thawed, or are meant to stay
    /// frozen).
    Disarm,
    /// `E<pid>\n`: a process engine (CRIU) works on the tasks; on the parent's death, wait for
    /// it to end before thawing.
    Engine(i32),
}

impl WatchdogMsg {
    /// The bytes on the pipe.
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            WatchdogMsg::Ready => b"ready\n".to_vec(),
            WatchdogMsg::Disarm => b"D".to_vec(),
            WatchdogMsg::Engine(pid) => format!("E{pid}\n").into_bytes(),
        }
    }

    /// Parse one whole message, as [`WatchdogMsg::encode`] makes it.
    pub(super) fn parse(b: &[u8]) -> Option<WatchdogMsg> {
        match b {
            b"ready\n" => Some(WatchdogMsg::Ready),
            b"D" => Some(WatchdogMsg::Disarm),
            [b'E', digits @ .., b'\n'] if digits.iter().all(u8::is_ascii_digit) => {
                std::str::from_utf8(digits)
                    .ok()?
                    .parse::<i32>()
                    .ok()
                    .filter(|&p| p > 0)
                    .map(WatchdogMsg::Engine)
            }
            _ => None,
        }
    }
}

/// Decodes the parent's messages ([`WatchdogMsg::Disarm`], [`WatchdogMsg::Engine`]) from
/// the watchdog's stdin one byte at a time. `D` disarms wherever it comes; `E` starts a pid,
/// ended by a newline (a pid that does not parse or is not positive is dropped); other
/// bytes are ignored.
#[derive(Debug, Default)]
pub(super) struct Decoder {
    num: Option<String>,
}

impl Decoder {
    /// Feed one byte; a message when it completes one.
    pub(super) fn push(&mut self, byte: u8) -> Option<WatchdogMsg> {
        match byte {
            b'D' => return Some(WatchdogMsg::Disarm),
            b'E' => self.num = Some(String::new()),
            b'\n' => {
                return self
                    .num
                    .take()
                    .and_then(|n| n.parse::<i32>().ok())
                    .filter(|&p| p > 0)
                    .map(WatchdogMsg::Engine)
            }
            b if b.is_ascii_digit() => {
                if let Some(n) = self.num.as_mut() {
                    n.push(b as char);
                }
            }
            _ => {}
        }
        None
    }
}

// ---------------------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------------------

impl FreezeMethod {
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
pub(super) struct Watchdog {
    child: Child,
    /// The write end of the watchdog's stdin; closing it triggers the thaw.
    stdin: Option<ChildStdin>,
}

impl Watchdog {
    /// Start the watchdog for `method` and wait until it is armed.
    pub(super) fn spawn(method: &FreezeMethod) -> Result<Watchdog, TaskError> {
        Watchdog::spawn_args(&method.watchdog_args())
    }

    pub(super) fn spawn_args(args: &[String]) -> Result<Watchdog, TaskError> {
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

    /// The watchdog's pid.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tell the watchdog about a process engine (CRIU) working on the tasks. Best effort.
    pub(super) fn note_engine(&self, pid: i32) {
        if let Some(mut stdin) = self.stdin.as_ref() {
            let _ = stdin.write_all(&WatchdogMsg::Engine(pid).encode());
        }
    }

    /// Tell the watchdog to exit without thawing, and reap it.
    pub(super) fn disarm(mut self) -> Result<(), TaskError> {
        if let Some(mut w) = self.stdin.take() {
            // EPIPE means it has exited already; its exit status below tells how.
            let _ = w.write_all(&WatchdogMsg::Disarm.encode()).and_then(|()| w.flush());
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
    pub(super) fn trigger(mut self) -> Result<(), TaskError> {
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
            status = self.child.try_wait().map_err(|e| io_err(procfs::pid_dir(pid as i32), "waitpid", e))?;
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
    if WatchdogMsg::parse(&got) == Some(WatchdogMsg::Ready) {
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
    let method = match FreezeMethod::from_watchdog_args(&args) {
        Ok(m) => m,
        Err(e) => {
            log(&format!("snapckpt {WATCHDOG_ARG}: {e}"));
            return 2;
        }
    };
    detach();
    // Pin the identity of the processes now, before the parent freezes them.
    let procs = match &method {
        FreezeMethod::Sigstop(pids) => open_procs(pids),
        _ => Vec::new(),
    };
    report_ready();
    let Some(engines) = read_messages() else { return 0 };
    // A later sigstop: the restored processes exist now.
    let procs = match (&method, later) {
        (FreezeMethod::Sigstop(pids), true) => open_procs(pids),
        _ => procs,
    };
    thaw_after_parent(&method, &procs, &engines)
}

/// Pidfds for those of `pids` that exist.
fn open_procs(pids: &[i32]) -> Vec<Proc> {
    pids.iter().filter_map(|&p| Proc::open(p).ok().flatten()).collect()
}

/// Leave the terminal's session and signals behind, and every inherited descriptor but
/// stdin, stdout and stderr.
fn detach() {
    // Leave the terminal's session and process group; fails harmlessly if already a leader.
    let _ = nix::unistd::setsid();
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGTSTP, libc::SIGPIPE] {
        // SAFETY: installing SIG_IGN has no handler code to be unsafe.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    // Keep nothing of the parent open but stdin, stdout and stderr.
    // SAFETY: plain system call; std holds no descriptors above 2 at this point.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
}

/// Armed: say [`WatchdogMsg::Ready`], then point stdout at /dev/null (the parent stops
/// reading it).
fn report_ready() {
    let mut out = io::stdout().lock();
    let _ = out.write_all(&WatchdogMsg::Ready.encode()).and_then(|()| out.flush());
    drop(out);
    if let Ok(null) = fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1, which we own as stdout.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
}

/// Read the parent's messages until end of file (or an error: fail safe, thaw). `None` when
/// disarmed; else the process engines (CRIU) announced, to be waited for before thawing.
fn read_messages() -> Option<Vec<i32>> {
    let mut stdin = io::stdin().lock();
    let mut byte = [0u8; 1];
    let mut decoder = Decoder::default();
    let mut engines: Vec<i32> = vec![];
    loop {
        match stdin.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => match decoder.push(byte[0]) {
                Some(WatchdogMsg::Disarm) => return None,
                Some(WatchdogMsg::Engine(p)) => engines.push(p),
                Some(WatchdogMsg::Ready) | None => {}
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Anything else: fail safe, thaw.
            Err(_) => break,
        }
    }
    Some(engines)
}

/// The parent has gone: wait for CRIU to let the tasks go, then thaw them (retrying a few
/// times). Exit code 0 when thawed, 1 if not.
fn thaw_after_parent(method: &FreezeMethod, procs: &[Proc], engines: &[i32]) -> i32 {
    // A process engine (CRIU) may still hold the tasks under ptrace; when it lets them go it
    // puts back the frozen state it found. Thaw after that, not before.
    // With snapckpt gone, CRIU learns it only when it next talks to it (at the end of a dump
    // that may take minutes for a large task): wait for it as long as it holds the tasks.
    wait_untraced(method, procs, ENGINE_WAIT);
    let t = Instant::now();
    while t.elapsed() < ENGINE_WAIT && engines.iter().any(|&p| is_live_criu(p)) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut result = Ok(());
    for attempt in 0..5 {
        result = start_thaw(method, procs, true);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn messages_round_trip() {
        for m in [WatchdogMsg::Ready, WatchdogMsg::Disarm, WatchdogMsg::Engine(4242)] {
            assert_eq!(WatchdogMsg::parse(&m.encode()), Some(m), "{m:?}");
        }
        assert_eq!(WatchdogMsg::Ready.encode(), b"ready\n");
        assert_eq!(WatchdogMsg::Disarm.encode(), b"D");
        assert_eq!(WatchdogMsg::Engine(7).encode(), b"E7\n");
        for bad in [&b""[..], b"ready", b"E\n", b"E0\n", b"E-1\n", b"E1x\n", b"E99999999999\n", b"DD"] {
            assert_eq!(WatchdogMsg::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn decoder_reads_a_stream() {
        let mut d = Decoder::default();
        let got: Vec<WatchdogMsg> = b"E12\nxE0\nE13\nE5D".iter().filter_map(|&b| d.push(b)).collect();
        assert_eq!(got, vec![WatchdogMsg::Engine(12), WatchdogMsg::Engine(13), WatchdogMsg::Disarm]);
        let mut d = Decoder::default();
        let encoded: Vec<u8> =
            [WatchdogMsg::Engine(3), WatchdogMsg::Disarm].iter().flat_map(|m| m.encode()).collect();
        let got: Vec<WatchdogMsg> = encoded.iter().filter_map(|&b| d.push(b)).collect();
        assert_eq!(got, vec![WatchdogMsg::Engine(3), WatchdogMsg::Disarm]);
    }
}
