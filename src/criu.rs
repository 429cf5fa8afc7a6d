//! The CRIU engine: dump and restore the tasks' process state through CRIU's RPC
//! (`criu swrk`, via the `rust-criu` crate), with the unlinked files kept out of the image.
//!
//! At dump, each relinked object is declared external (`file[MNTID:INO]`, both hex), so
//! CRIU records a reference instead of copying the data; snapckpt has frozen the tasks itself
//! and passes the cgroup as `freeze_cgroup`. The `post-dump` notification arrives while the
//! tasks are still frozen: that is when the filesystem snapshot is taken.
//!
//! At restore, snapckpt gives each preserved file its original path (see
//! [`crate::relink::reopen`]) and hands CRIU a copy of the image whose external entries name
//! those paths ([`crate::criu_image`]): CRIU opens each by path with its own flags (also
//! `O_NOFOLLOW`, which a reopen of `/proc/self/fd/N` refuses), and on the `post-restore`
//! notification, before any restored task runs, snapckpt removes the names again.

use rust_criu::rust_criu_protobuf::rpc::Criu_notify;
use std::cell::RefCell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error(
        "no CRIU found (looked at {looked}); install it with scripts/install-criu.sh or pass --criu PATH"
    )]
    NotFound { looked: String },
    #[error("criu {op} failed: {msg}\n{log_tail}see the whole log: {}", log.display())]
    Failed { op: &'static str, msg: String, log: PathBuf, log_tail: String },
    /// CRIU failed before it wrote its log (or it is not CRIU at all).
    #[error("criu {op} failed: {msg}\nCRIU wrote no log (is {} really CRIU? `{} --version` said {version}); try `snapckpt check --criu {}`", criu.display(), criu.display(), criu.display())]
    NoLog { op: &'static str, msg: String, criu: PathBuf, version: String },
    #[error("run {path}: {source}")]
    Spawn { path: PathBuf, source: std::io::Error },
    /// CRIU did not answer in time; it was stopped.
    #[error("criu {op} did not finish within {} s: CRIU was stopped (it hung, or the work is larger than the timeout allows; raise --{op}-timeout then)", timeout.as_secs())]
    Timeout { op: &'static str, timeout: std::time::Duration },
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
}

/// Where CRIU is looked for when nothing names it: env `SNAPCKPT_CRIU`, the prefix that
/// scripts/install-criu.sh makes, then `criu` on PATH.
pub const DEFAULT_PREFIX_CRIU: &str = "/opt/snapckpt/criu/bin/criu";

/// Find the CRIU binary: an explicit path (flag or job), env SNAPCKPT_CRIU, the private
/// prefix, PATH.
pub fn find(explicit: Option<&Path>) -> Result<PathBuf, CriuError> {
    find_with(explicit, std::env::var_os("SNAPCKPT_CRIU").map(PathBuf::from).as_deref())
}

/// [`find`] with the value of env `SNAPCKPT_CRIU` given (`env`) rather than read.
pub fn find_with(explicit: Option<&Path>, env: Option<&Path>) -> Result<PathBuf, CriuError> {
    let mut looked = vec![];
    let mut cands: Vec<PathBuf> = vec![];
    if let Some(p) = explicit {
        cands.push(p.into());
    } else {
        if let Some(p) = env {
            cands.push(p.into());
        }
        cands.push(DEFAULT_PREFIX_CRIU.into());
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                cands.push(d.join("criu"));
            }
        }
    }
    for c in cands {
        looked.push(c.display().to_string());
        if c.is_file() {
            return Ok(c);
        }
    }
    Err(CriuError::NotFound { looked: looked.join(", ") })
}

/// `criu --version` and `criu check`: (version line, check passed, check output).
pub fn check(criu: &Path) -> Result<(String, bool, String), CriuError> {
    let v = Command::new(criu)
        .arg("--version")
        .output()
        .map_err(|source| CriuError::Spawn { path: criu.into(), source })?;
    let version = String::from_utf8_lossy(&v.stdout).lines().next().unwrap_or("").trim().to_string();
    let c = Command::new(criu)
        .arg("check")
        .output()
        .map_err(|source| CriuError::Spawn { path: criu.into(), source })?;
    let out = format!("{}{}", String::from_utf8_lossy(&c.stdout), String::from_utf8_lossy(&c.stderr));
    Ok((version, c.status.success() && out.contains("Looks good"), out.trim().to_string()))
}

/// Whether CRIU dumps inet sockets on this kernel, shown by doing it: a throwaway process
/// (`sleep`, a session leader) holding a TCP listener and a UDP socket on 127.0.0.1 is dumped
/// with `--leave-running` into a temporary directory, then killed. `Err` holds the reason (the
/// error lines of CRIU's log). Needs root; takes a fraction of a second.
pub fn inet_dump_probe(criu: &Path) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let dir = std::env::temp_dir().join(format!("snapckpt-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut c = Command::new("sleep");
    c.arg("60").stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    c.stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls (setsid, close_range, socket, bind, listen).
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([127, 0, 0, 1]) },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            for ty in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
                let fd = libc::socket(libc::AF_INET, ty, 0);
                if fd < 0 || libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if ty == libc::SOCK_STREAM && libc::listen(fd, 1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(|e| format!("cannot start a process with inet sockets: {e}"))?;
    let out = Command::new(criu)
        .args(["dump", "--leave-running", "-v4", "-o", "dump.log", "-t"])
        .arg(child.id().to_string())
        .arg("-D")
        .arg(&dir)
        .output();
    let _ = child.kill();
    let _ = child.wait();
    let tail = log_tail(&dir.join("dump.log"));
    let _ = std::fs::remove_dir_all(&dir);
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "criu dump failed ({}){}",
            o.status,
            tail.lines().map(|l| format!("; {}", l.trim_start_matches("  | "))).collect::<String>()
        )),
        Err(e) => Err(format!("cannot run {}: {e}", criu.display())),
    }
}

/// Whether the kernel can track memory changes, which CRIU's pre-dump (`--track-mem`) needs
/// (soft-dirty bits, `CONFIG_MEM_SOFT_DIRTY`): `criu check --feature mem_dirty_track`. `Err`
/// holds what CRIU said.
pub fn mem_dirty_track(criu: &Path) -> Result<(), String> {
    let out = Command::new(criu)
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", criu.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(())
    } else {
        Err(text.trim().to_string())
    }
}

/// Refuse a take with pre-dump on a kernel that cannot track memory changes, said clearly,
/// with CRIU's words.
pub fn pre_dump_check(criu: &Path) -> Result<(), String> {
    mem_dirty_track(criu).map_err(|said| {
        format!(
            "--pre-dump: this kernel cannot track memory changes, which pre-dump needs (soft-dirty \
             page tracking, kernel option CONFIG_MEM_SOFT_DIRTY): `{} check --feature mem_dirty_track` \
             failed: {said}; take without --pre-dump (nothing was changed)",
            criu.display()
        )
    })
}

/// The stopping rule of the pre-dump rounds, like CRIU's own pre-dump iterations (and
/// snapckpt's write-back, [`crate::writeback::Policy`]): at most this many rounds.
pub const PRE_DUMP_MAX_ROUNDS: usize = 4;
/// A round that wrote fewer pages (4 MiB of 4 KiB pages) leaves so little for the final dump
/// that another would not shorten the freeze noticeably.
pub const PRE_DUMP_SMALL_PAGES: u64 = 1024;

/// After rounds that wrote `written` pages each (CRIU's `pages_written`), whether to run
/// another: not after [`PRE_DUMP_MAX_ROUNDS`]; not once a round wrote fewer than
/// [`PRE_DUMP_SMALL_PAGES`]; after the first, only while each round still wrote at most half
/// of what the one before it wrote (the tasks change their memory more slowly than the rounds
/// copy it: another round shrinks what the frozen dump writes). A round that wrote no less
/// than half the previous means the tasks dirty memory about as fast as it is copied: the
/// final dump would write about as much after another round, so stop.
pub fn another_pre_dump(written: &[u64]) -> bool {
    let Some(&last) = written.last() else { return true };
    if written.len() >= PRE_DUMP_MAX_ROUNDS || last < PRE_DUMP_SMALL_PAGES {
        return false;
    }
    match written {
        [_] => true,
        [.., prev, last] => last.saturating_mul(2) <= *prev,
        [] => unreachable!(),
    }
}

pub use crate::record::names::{is_pre_dump_dir, pre_dump_dir};

/// CRIU's log of pre-dump round `n`, in the image directory (not in the round's directory: a
/// failed take keeps the logs of the image directory).
pub fn pre_dump_log(n: usize) -> String {
    format!("criu-pre-dump-{n}.log")
}

/// A CRIU client for `op`, logging at level 4 (the most detailed: a failed step's log says
/// why) into `log` in `log_dir`, which [`failed`] names when it fails.
fn client(criu: &Path, op: &'static str, log_dir: &Path, log: &str) -> Result<rust_criu::Criu, CriuError> {
    let mut c = rust_criu::Criu::new_with_criu_path(criu.display().to_string())
        .map_err(|e| failed(op, e, criu, log_dir, log))?;
    c.set_log_level(4);
    c.set_log_file(log.into());
    Ok(c)
}

/// Pre-dump rounds of a running process tree.
pub struct PreDumpRequest {
    pub criu: PathBuf,
    /// Root of the process tree.
    pub pid: i32,
    /// The image directory; round N goes into its `pre-N`.
    pub image_dir: PathBuf,
    /// Stop CRIU if a round takes longer.
    pub timeout: Option<std::time::Duration>,
}

pub use crate::record::PreDumpRound;

/// Run pre-dump rounds ([`pre_dump_round`]) until [`another_pre_dump`] says stop; `each` is
/// told of each round as it ends. A round without readable statistics is the last. The first
/// error ends them all (the caller undoes the take: nothing was frozen by snapckpt yet).
pub fn pre_dump(
    req: &PreDumpRequest,
    each: &mut dyn FnMut(&PreDumpRound),
) -> Result<Vec<PreDumpRound>, CriuError> {
    let mut rounds: Vec<PreDumpRound> = vec![];
    loop {
        let n = rounds.len() + 1;
        let t = std::time::Instant::now();
        pre_dump_round(req, n)?;
        let dir = pre_dump_dir(n);
        // CRIU writes its statistics into its work directory (the image directory), where
        // the final dump's would replace them: moved into the round's directory.
        let (top, own) = (req.image_dir.join(crate::criu_stats::STATS_DUMP), req.image_dir.join(&dir));
        if top.is_file() && !own.join(crate::criu_stats::STATS_DUMP).exists() {
            let _ = std::fs::rename(&top, own.join(crate::criu_stats::STATS_DUMP));
        }
        let stats = crate::criu_stats::read_dump(&own).ok().flatten();
        let r = PreDumpRound { dir, duration_us: t.elapsed().as_micros() as u64, stats };
        each(&r);
        rounds.push(r);
        let written: Option<Vec<u64>> =
            rounds.iter().map(|r| r.stats.as_ref().map(|s| s.pages_written)).collect();
        if !written.is_some_and(|w| another_pre_dump(&w)) {
            return Ok(rounds);
        }
    }
}

/// One pre-dump round `n` into `<image dir>/pre-N`, memory tracking on, with `../pre-(N-1)` as
/// parent after the first. CRIU freezes the tasks itself for the round (seizing them with
/// ptrace: snapckpt's cgroup is not frozen, so no `freeze_cgroup`) and lets them run again
/// once it has drained their pages, before it writes them.
pub fn pre_dump_round(req: &PreDumpRequest, n: usize) -> Result<(), CriuError> {
    let dir = req.image_dir.join(pre_dump_dir(n));
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|source| {
        CriuError::Io(crate::sys::SysError { path: dir.clone(), syscall: "mkdir", source })
    })?;
    let (dirfd, workfd) = (open_dir(&dir)?, open_dir(&req.image_dir)?);
    let log = pre_dump_log(n);
    let mut c = client(&req.criu, "pre-dump", &req.image_dir, &log)?;
    c.set_pid(req.pid);
    c.set_images_dir_fd(dirfd.as_raw_fd());
    c.set_work_dir_fd(workfd.as_raw_fd());
    c.set_track_mem(true);
    if n > 1 {
        c.set_parent_img(format!("../{}", pre_dump_dir(n - 1)));
    }
    c.set_manage_cgroups(false);
    with_deadline("dump", req.timeout, || {
        c.pre_dump().map_err(|e| failed("pre-dump", e, &req.criu, &req.image_dir, &log))
    })
}

/// CRIU's version (`criu --version`), empty if it cannot be run. Asked before the tasks are
/// frozen: it costs a process start.
pub fn version_string(criu: &Path) -> String {
    Command::new(criu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().trim_start_matches("Version: ").to_string())
        })
        .unwrap_or_default()
}

/// CRIU's version as its log names it (`(00.000110) Version: 4.2.1 (gitid 0)` -> `4.2.1`),
/// the same text as [`version_string`] gives, without starting CRIU again.
pub fn version_from_log(log: &Path) -> Option<String> {
    use std::io::{BufRead, BufReader};
    let f = std::fs::File::open(log).ok()?;
    BufReader::new(f).lines().take(20).map_while(Result::ok).find_map(|l| {
        let v = l.split_once("Version: ")?.1;
        let v = v.split(" (gitid").next().unwrap_or(v).trim();
        (!v.is_empty()).then(|| v.to_string())
    })
}

/// A dump request.
pub struct DumpRequest {
    pub criu: PathBuf,
    /// Root of the process tree.
    pub pid: i32,
    pub image_dir: PathBuf,
    /// `file[MNTID:INO]` keys of the objects whose data stays in the filesystem.
    pub externals: Vec<String>,
    /// The cgroup snapckpt froze (CRIU must be told, or it waits for tasks that never run).
    pub freeze_cgroup: Option<PathBuf>,
    pub leave_running: bool,
    pub flags: crate::engine::CriuFlags,
    /// Let CRIU copy unlinked files up to this size into its image (those snapckpt leaves to it).
    pub ghost_limit: Option<u32>,
    /// Stop CRIU if the dump takes longer.
    pub timeout: Option<std::time::Duration>,
    /// After pre-dump rounds: the last round's directory, relative to the image directory;
    /// the dump then tracks memory and writes only the pages changed since that round.
    pub parent_img: Option<String>,
}

/// The file name of CRIU's log inside the image directory.
pub const DUMP_LOG: &str = "criu-dump.log";
pub const RESTORE_LOG: &str = "criu-restore.log";

/// A notification's callback; its argument is the pid CRIU sends with it (at `post-restore`:
/// the restored root task's pid in snapckpt's pid namespace).
type Hook = *mut (dyn FnMut(Option<i32>) -> Result<(), String> + 'static);

thread_local! {
    /// The callback for one notification (`post-dump` at dump, `post-restore` at restore),
    /// set by [`with_hook`] for the duration of one RPC call on this thread.
    static HOOK: RefCell<Option<(&'static str, Hook)>> = const { RefCell::new(None) };
}

fn notify(script: &str, n: &Criu_notify, _fd: Option<RawFd>) -> i32 {
    let pid = n.has_pid().then(|| n.pid());
    HOOK.with(|h| match *h.borrow() {
        // SAFETY: the pointer is set by `with_hook` for the duration of the RPC call on this
        // thread, and the closure it points to outlives that call.
        Some((want, f)) if want == script => match unsafe { (*f)(pid) } {
            Ok(()) => 0,
            Err(_) => 1,
        },
        _ => 0,
    })
}

/// The processes snapckpt started for CRIU: its children that are not the thaw watchdog
/// (`criu swrk`, or whatever it has exec'd into, or the snapckpt that runs it in a pid
/// namespace, whose death kills it).
fn swrk_children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let my_exe = std::fs::read_link("/proc/self/exe").ok();
    let watchdog = |p: i32| {
        let arg1 = std::fs::read(format!("/proc/{p}/cmdline"))
            .map(|c| c.split(|&b| b == 0).nth(1).map(<[u8]>::to_vec).unwrap_or_default())
            .unwrap_or_default();
        std::fs::read_link(format!("/proc/{p}/exe")).ok() == my_exe
            && arg1 != crate::tasks::WATCHDOG_ARG.as_bytes()
    };
    crate::tasks::children(me).unwrap_or_default().into_iter().filter(|&p| !watchdog(p)).collect()
}

/// Run `rpc`; if it has not returned within `timeout`, stop CRIU (SIGTERM, then SIGKILL) so
/// that it returns, and report the timeout.
fn with_deadline<T>(
    op: &'static str,
    timeout: Option<std::time::Duration>,
    rpc: impl FnOnce() -> Result<T, CriuError>,
) -> Result<T, CriuError> {
    use nix::sys::signal::{kill, Signal};
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(t) = timeout else { return rpc() };
    let fired = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let f = fired.clone();
    let watcher = std::thread::spawn(move || {
        if rx.recv_timeout(t) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            f.store(true, Ordering::SeqCst);
            for sig in [Signal::SIGTERM, Signal::SIGKILL] {
                for pid in swrk_children() {
                    let _ = kill(nix::unistd::Pid::from_raw(pid), sig);
                }
                if rx.recv_timeout(std::time::Duration::from_secs(2)).is_ok() {
                    break;
                }
            }
        }
    });
    let r = rpc();
    drop(tx);
    let _ = watcher.join();
    if fired.load(Ordering::SeqCst) {
        return Err(CriuError::Timeout { op, timeout: t });
    }
    r
}

/// Run `rpc` with `hook` answering CRIU's `script` notification; if it fails, CRIU aborts.
fn with_hook<T>(
    script: &'static str,
    hook: &mut dyn FnMut(Option<i32>) -> Result<(), String>,
    rpc: impl FnOnce() -> T,
) -> T {
    // SAFETY: erase the closure's lifetime; it is removed again before this function returns.
    let ptr: *mut (dyn FnMut(Option<i32>) -> Result<(), String> + '_) = hook;
    let ptr: Hook = unsafe { std::mem::transmute(ptr) };
    HOOK.with(|h| *h.borrow_mut() = Some((script, ptr)));
    let r = rpc();
    HOOK.with(|h| *h.borrow_mut() = None);
    r
}

fn open_dir(dir: &Path) -> Result<OwnedFd, CriuError> {
    // Not CLOEXEC: criu swrk inherits it and uses its number.
    let fd = crate::sys::open(dir, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(|source| {
        CriuError::Io(crate::sys::SysError { path: dir.into(), syscall: "open", source })
    })?;
    crate::sys::clear_cloexec(fd.as_raw_fd()).map_err(|source| {
        CriuError::Io(crate::sys::SysError { path: dir.into(), syscall: "fcntl", source })
    })?;
    Ok(fd)
}

/// Dump a process tree. `post_dump` runs on CRIU's post-dump notification, tasks still frozen;
/// if it fails, CRIU aborts the dump and the tasks resume.
pub fn dump(req: &DumpRequest, post_dump: &mut dyn FnMut() -> Result<(), String>) -> Result<(), CriuError> {
    let dirfd = open_dir(&req.image_dir)?;
    let mut c = client(&req.criu, "dump", &req.image_dir, DUMP_LOG)?;
    c.set_pid(req.pid);
    c.set_images_dir_fd(dirfd.as_raw_fd());
    c.set_leave_running(req.leave_running);
    c.set_shell_job(req.flags.shell_job);
    c.set_tcp_established(req.flags.tcp_established);
    c.set_network_lock_nftables(req.flags.tcp_established);
    if let Some(g) = req.ghost_limit {
        c.set_ghost_limit(g);
    }
    c.set_ext_unix_sk(true);
    c.set_file_locks(true);
    c.set_manage_cgroups(false);
    if let Some(cg) = &req.freeze_cgroup {
        c.set_freeze_cgroup(cg.display().to_string());
    }
    for e in &req.externals {
        c.add_external(e.clone());
    }
    if let Some(p) = &req.parent_img {
        c.set_track_mem(true);
        c.set_parent_img(p.clone());
    }
    c.set_notify_scripts(true);
    c.set_notify_cb(notify);
    let _log = crate::ui::follow_log(&req.image_dir.join(DUMP_LOG));
    with_deadline("dump", req.timeout, || {
        with_hook("post-dump", &mut |_| post_dump(), || c.dump())
            .map_err(|e| failed("dump", e, &req.criu, &req.image_dir, DUMP_LOG))
    })
}

/// A restore request.
pub struct RestoreRequest {
    pub criu: PathBuf,
    /// The image to restore: a copy of the checkpoint's image whose external files name the
    /// paths snapckpt placed them at (see [`crate::criu_image::rewrite_externals`]).
    pub image_dir: PathBuf,
    /// Where CRIU writes its log (the image directory may be read-only or shared).
    pub work_dir: PathBuf,
    pub flags: crate::engine::CriuFlags,
    /// Stop CRIU if the restore takes longer.
    pub timeout: Option<std::time::Duration>,
    /// Run criu through this command (`WRAPPER... CRIU swrk FD`); empty: run it directly.
    pub wrapper: Vec<String>,
}

/// Restore a process tree; the tasks get their old pids and run detached from snapckpt.
/// `post_restore` runs once every task has opened its files and before any runs its own code,
/// with the restored root task's pid as CRIU names it (in snapckpt's pid namespace; a tree
/// whose root was the init of its own pid namespace gets a new one, and new host pids); if it
/// fails, CRIU kills the restored tree.
pub fn restore(
    req: &RestoreRequest,
    post_restore: &mut dyn FnMut(Option<i32>) -> Result<(), String>,
) -> Result<(), CriuError> {
    remove_stale_log(&req.work_dir)?;
    let mut c = client(&req.criu, "restore", &req.work_dir, RESTORE_LOG)?;
    // Not closed before the RPC is over: criu opens them by number.
    let mut fds = vec![];
    if req.wrapper.is_empty() {
        let (dirfd, workfd) = (open_dir(&req.image_dir)?, open_dir(&req.work_dir)?);
        c.set_images_dir_fd(dirfd.as_raw_fd());
        c.set_work_dir_fd(workfd.as_raw_fd());
        fds.extend([dirfd, workfd]);
    } else {
        // criu in another pid namespace cannot name our fds (/proc/<our pid>/fd/N): the
        // image directory by path, where it also writes its log (moved to work_dir after).
        remove_stale_log(&req.image_dir)?;
        c.set_swrk_wrapper(req.wrapper.clone());
        c.set_images_dir(req.image_dir.display().to_string());
    }
    c.set_shell_job(req.flags.shell_job);
    // A shell job is restored into criu's process group: in a group of its own, criu's exit
    // would orphan it and the kernel would SIGHUP the tasks restored stopped (SIGSTOP freezer).
    c.set_own_process_group(!req.flags.shell_job);
    c.set_tcp_established(req.flags.tcp_established);
    c.set_network_lock_nftables(req.flags.tcp_established);
    c.set_ext_unix_sk(true);
    c.set_file_locks(true);
    c.set_manage_cgroups(false);
    c.set_notify_scripts(true);
    c.set_notify_cb(notify);
    let log_dir = if req.wrapper.is_empty() { &req.work_dir } else { &req.image_dir };
    let _log = crate::ui::follow_log(&log_dir.join(RESTORE_LOG));
    with_deadline("restore", req.timeout, || {
        let r = with_hook("post-restore", post_restore, || c.restore());
        if !req.wrapper.is_empty() {
            let _ = std::fs::rename(req.image_dir.join(RESTORE_LOG), req.work_dir.join(RESTORE_LOG));
        }
        r.map_err(|e| failed("restore", e, &req.criu, &req.work_dir, RESTORE_LOG))
    })
}

/// Remove the log of an earlier restart: it must not pass for this one's.
fn remove_stale_log(work_dir: &Path) -> Result<(), CriuError> {
    let old_log = work_dir.join(RESTORE_LOG);
    match std::fs::remove_file(&old_log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(CriuError::Io(crate::sys::SysError { path: old_log, syscall: "unlink", source: e }))
        }
        _ => Ok(()),
    }
}

fn failed(op: &'static str, e: rust_criu::CriuError, criu: &Path, dir: &Path, log: &str) -> CriuError {
    let log = dir.join(log);
    if !log.is_file() {
        let version = match Command::new(criu).arg("--version").output() {
            Ok(o) => {
                let text =
                    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
                match text.lines().map(str::trim).find(|l| !l.is_empty()) {
                    Some(l) => format!("{l:?}"),
                    None => format!("nothing ({})", o.status),
                }
            }
            Err(e) => format!("nothing: {e}"),
        };
        return CriuError::NoLog { op, msg: e.to_string(), criu: criu.into(), version };
    }
    CriuError::Failed { op, msg: e.to_string(), log_tail: log_tail(&log), log }
}

/// The error lines at the end of a CRIU log, for the user.
pub fn log_tail(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else { return String::new() };
    let lines: Vec<&str> =
        text.lines().filter(|l| l.contains("Error") || l.contains("error") || l.contains("Warn")).collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    tail.iter().map(|l| format!("  | {l}\n")).collect()
}

/// CRIU's image files in a directory (names only), for the record.
pub fn image_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".img"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("snapckpt-criu-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn version_in_the_log() {
        let dir = scratch("version");
        let log = dir.join(DUMP_LOG);
        std::fs::write(&log, "(00.000000) Warn: x\n(00.000110) Version: 4.2.1 (gitid 0)\n(00.0002) rest\n")
            .unwrap();
        assert_eq!(version_from_log(&log).as_deref(), Some("4.2.1"));
        std::fs::write(&log, "(00.000000) nothing\n").unwrap();
        assert_eq!(version_from_log(&log), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A program that is not CRIU writes no log: the error says so and names no log file.
    #[test]
    fn not_criu_names_no_log() {
        let dir = scratch("dump");
        let req = DumpRequest {
            criu: "/bin/true".into(),
            pid: std::process::id() as i32,
            image_dir: dir.clone(),
            externals: vec![],
            freeze_cgroup: None,
            leave_running: true,
            flags: Default::default(),
            ghost_limit: None,
            timeout: None,
            parent_img: None,
        };
        let e = dump(&req, &mut || Ok(())).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, CriuError::NoLog { .. }), "{s}");
        assert!(s.contains("CRIU wrote no log (is /bin/true really CRIU?"), "{s}");
        assert!(!s.contains(DUMP_LOG), "{s}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The stopping rule: a round after the first only while the previous still shrank the
    /// pages written by half or more, never after a small round, at most four rounds.
    #[test]
    fn pre_dump_stopping_rule() {
        assert!(another_pre_dump(&[]));
        // a large first round: once more, to see whether the memory is changing
        assert!(another_pre_dump(&[65536]));
        // idle after it: stop (the final dump writes what little changed)
        assert!(!another_pre_dump(&[65536, 12]));
        // a small first round: nothing to gain
        assert!(!another_pre_dump(&[PRE_DUMP_SMALL_PAGES - 1]));
        // still shrinking by half or more, and large: again
        assert!(another_pre_dump(&[65536, 20000]));
        assert!(another_pre_dump(&[65536, 32768]));
        assert!(another_pre_dump(&[65536, 20000, 8000]));
        // not shrinking a lot (the tasks dirty memory as fast as it is copied): stop
        assert!(!another_pre_dump(&[65536, 40000]));
        assert!(!another_pre_dump(&[65536, 70000]));
        // the bound on rounds
        assert!(!another_pre_dump(&[1 << 20, 1 << 18, 1 << 16, 1 << 14]));
        assert_eq!(PRE_DUMP_MAX_ROUNDS, 4);
    }

    /// The log of an earlier restore is removed first: a failed restore never shows it.
    #[test]
    fn restore_removes_a_stale_log() {
        let dir = scratch("restore");
        std::fs::write(dir.join(RESTORE_LOG), "(00.1) Error (criu/util.c:1): an old failure\n").unwrap();
        let req = RestoreRequest {
            criu: "/bin/true".into(),
            image_dir: dir.clone(),
            work_dir: dir.clone(),
            flags: Default::default(),
            timeout: None,
            wrapper: vec![],
        };
        let e = restore(&req, &mut |_| Ok(())).unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, CriuError::NoLog { .. }), "{s}");
        assert!(!s.contains("an old failure") && !s.contains(RESTORE_LOG), "{s}");
        assert!(!dir.join(RESTORE_LOG).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
