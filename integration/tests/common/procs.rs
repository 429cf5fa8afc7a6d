//! Test programs (compiled from `integration/progs/*.c`), processes and their states, cgroups.

use super::{eventually, unique_name, wait_for};
use snapckpt::tasks::FreezeMethod;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const V2_ROOT: &str = "/sys/fs/cgroup/unified";
pub const V1_ROOT: &str = "/sys/fs/cgroup/freezer";

/// Compile `integration/progs/<name>.c` (when it is newer than the binary) and return the
/// binary's path. Safe to call from tests running in parallel, and from several test processes.
pub fn prog(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("integration/progs").join(format!("{name}.c"));
    let outdir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("progs");
    std::fs::create_dir_all(&outdir).unwrap();
    let out = outdir.join(name);
    let lock = outdir.join(format!("{name}.lock"));
    let f = std::fs::File::create(&lock).unwrap();
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(|g| {
            let fresh = out.metadata().and_then(|m| m.modified()).ok()
                >= src.metadata().and_then(|m| m.modified()).ok();
            if !fresh || !out.exists() {
                let tmp = outdir.join(format!("{name}.tmp{}", std::process::id()));
                let st = Command::new("cc")
                    .args(["-O1", "-g", "-Wall", "-pthread", "-o"])
                    .arg(&tmp)
                    .arg(&src)
                    .status()
                    .unwrap();
                assert!(st.success(), "cc {} failed", src.display());
                std::fs::rename(&tmp, &out).unwrap();
            }
            drop(g);
        })
        .ok()
        .unwrap();
    out
}

/// A test program running as a child; killed on drop.
pub struct Proc {
    pub child: Child,
    pub pid: i32,
}
impl Proc {
    /// Start `prog` with `args`, wait until it prints a line containing "ready" on stdout
    /// (the rest of its stdout goes to `log`).
    pub fn start(bin: &Path, args: &[&str], log: &Path) -> Proc {
        launch(bin, args, log, false, false, None)
    }

    /// Like `start`, in a new session (CRIU dumps session leaders without --shell-job).
    pub fn start_setsid(bin: &Path, args: &[&str], log: &Path) -> Proc {
        launch(bin, args, log, true, false, None)
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        if self.pid != self.child.id() as i32 {
            sigkill(self.pid);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a workload that inherits no fd but 0-2; `setsid` makes it a session leader (CRIU
/// needs that), `cg` puts it in a cgroup before it is ready.
pub fn workload(bin: &Path, args: &[&str], log: &Path, setsid: bool, cg: Option<&Cgroup>) -> Proc {
    launch(bin, args, log, setsid, true, cg)
}

/// A workload started under `wrapper` (a command that runs it as its one child: a shell that
/// runs it as a job, `unshare --pid --fork`), `setsid` applied to the wrapper. `pid` is the
/// workload; both are killed on drop.
pub fn workload_under(wrapper: &[&str], bin: &Path, args: &[&str], log: &Path, setsid: bool) -> Proc {
    let mut all: Vec<&str> = wrapper[1..].to_vec();
    all.push(bin.to_str().unwrap());
    all.extend_from_slice(args);
    let mut p = launch(Path::new(wrapper[0]), &all, log, setsid, true, None);
    let below = descendants(p.pid);
    assert_eq!(below.len(), 1, "{wrapper:?} runs one child: {below:?}");
    p.pid = below[0];
    p
}

/// A workload that is a job of a shell: a session leader `sh` (in the caller's pid namespace)
/// runs it in the background and waits, so the workload's session leader is the shell.
pub fn shell_job(bin: &Path, args: &[&str], log: &Path) -> Proc {
    workload_under(&["sh", "-c", "\"$@\" & wait", "sh"], bin, args, log, true)
}

fn launch(bin: &Path, args: &[&str], log: &Path, setsid: bool, close_fds: bool, cg: Option<&Cgroup>) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    // Not the test's own stderr: a restored task would hold it, and CRIU refuses a linked
    // file whose size changed since the dump (the test output, when it goes to a file).
    let err = std::fs::File::create(log.with_extension("stderr")).unwrap();
    let mut c = Command::new(bin);
    c.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    if setsid || close_fds {
        // SAFETY: close_range and setsid are async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                if close_fds {
                    // nothing inherited from whoever runs the tests but 0-2
                    libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */);
                }
                if setsid {
                    libc::setsid();
                }
                Ok(())
            });
        }
    }
    let child = c.spawn().unwrap();
    let pid = child.id() as i32;
    let p = Proc { child, pid };
    if let Some(cg) = cg {
        cg.add(pid);
    }
    wait_for(
        || std::fs::read_to_string(log).map(|s| s.contains("ready")).unwrap_or(false),
        Duration::from_secs(20),
        "program ready",
    );
    p
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// SIGKILL a process that is not our child (e.g. restored by CRIU) and wait until it is gone.
pub fn kill_wait(pid: i32) {
    sigkill(pid);
    wait_for(|| !Path::new(&format!("/proc/{pid}")).exists(), Duration::from_secs(10), "process gone");
}

/// Wait until a process is gone (e.g. killed by CRIU after a dump).
pub fn wait_gone(pid: i32) {
    wait_for(
        || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z"))
                    .unwrap_or(true)
        },
        Duration::from_secs(10),
        "process gone",
    );
}

/// Wait until a (restored) process sleeps in pause(2): from then on it handles signals.
pub fn wait_paused(pid: i32) {
    wait_for(
        || {
            std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                .map(|w| w.contains("pause"))
                .unwrap_or(false)
        },
        Duration::from_secs(30),
        "process in pause()",
    );
}

/// The state letter of a process, None when it is gone.
pub fn state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')').next().and_then(|r| r.trim().chars().next())
}

/// Running or stopped, not gone and not a zombie.
pub fn alive(pid: i32) -> bool {
    !matches!(state(pid), None | Some('Z') | Some('X'))
}

/// Stopped by a signal or by a tracer.
pub fn stopped(pid: i32) -> bool {
    matches!(state(pid), Some('T') | Some('t'))
}

pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// Every process below `pid` (children, grandchildren, ...).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut parent: Vec<(i32, i32)> = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(st) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some(rest) = st.rsplit_once(')').map(|x| x.1) else { continue };
        let ppid = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        parent.push((p, ppid));
    }
    let mut out = vec![];
    let mut todo = vec![pid];
    while let Some(q) = todo.pop() {
        for &(p, pp) in &parent {
            if pp == q && !out.contains(&p) {
                out.push(p);
                todo.push(p);
            }
        }
    }
    out
}

/// SIGKILLs the listed processes (if still there) when dropped.
#[derive(Default)]
pub struct KillOnDrop(pub Vec<i32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &p in &self.0 {
            if alive(p) {
                sigkill(p);
            }
        }
    }
}

/// A cgroup hierarchy: v1 (the freezer) or v2.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Cg {
    V1,
    V2,
}

/// A test cgroup (optionally with a child cgroup `leaf`); thawed, emptied (SIGKILL) and
/// removed on drop, also when a test fails.
pub struct Cgroup {
    pub kind: Cg,
    pub path: PathBuf,
}

impl Cgroup {
    /// A new cgroup `snapckpt-TAG-PID-N` under the v1 freezer or the v2 root.
    pub fn new(kind: Cg, tag: &str) -> Cgroup {
        let root = match kind {
            Cg::V1 => V1_ROOT,
            Cg::V2 => V2_ROOT,
        };
        let path = Path::new(root).join(unique_name(&format!("snapckpt-{tag}")));
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { kind, path }
    }

    /// Like `new`, with a child cgroup `leaf`.
    pub fn with_leaf(kind: Cg, tag: &str) -> Cgroup {
        let cg = Cgroup::new(kind, tag);
        std::fs::create_dir(cg.leaf()).unwrap();
        cg
    }

    pub fn leaf(&self) -> PathBuf {
        self.path.join("leaf")
    }

    /// The path, as an argument to `--cgroup`.
    pub fn arg(&self) -> String {
        self.path.display().to_string()
    }

    pub fn method(&self) -> FreezeMethod {
        match self.kind {
            Cg::V1 => FreezeMethod::CgroupV1(self.path.clone()),
            Cg::V2 => FreezeMethod::CgroupV2(self.path.clone()),
        }
    }

    /// Move `pid` into this cgroup.
    pub fn add(&self, pid: i32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// Whether `dir` (this cgroup or its leaf) is frozen, from the kernel's point of view.
    pub fn is_frozen(&self, dir: &Path) -> bool {
        match self.kind {
            Cg::V2 => std::fs::read_to_string(dir.join("cgroup.events")).unwrap().contains("frozen 1"),
            Cg::V1 => std::fs::read_to_string(dir.join("freezer.state")).unwrap().trim() == "FROZEN",
        }
    }

    pub fn is_thawed(&self, dir: &Path) -> bool {
        match self.kind {
            Cg::V2 => std::fs::read_to_string(dir.join("cgroup.events")).unwrap().contains("frozen 0"),
            Cg::V1 => std::fs::read_to_string(dir.join("freezer.state")).unwrap().trim() == "THAWED",
        }
    }

    /// Whether this cgroup is frozen; false when it cannot be read (e.g. removed).
    pub fn frozen(&self) -> bool {
        match self.kind {
            Cg::V2 => std::fs::read_to_string(self.path.join("cgroup.events"))
                .unwrap_or_default()
                .lines()
                .any(|l| l == "frozen 1"),
            Cg::V1 => {
                std::fs::read_to_string(self.path.join("freezer.state")).unwrap_or_default().trim()
                    == "FROZEN"
            }
        }
    }

    /// Freeze by hand (not through snapckpt) and wait.
    pub fn freeze_by_hand(&self) {
        match self.kind {
            Cg::V2 => std::fs::write(self.path.join("cgroup.freeze"), "1").unwrap(),
            Cg::V1 => std::fs::write(self.path.join("freezer.state"), "FROZEN").unwrap(),
        }
        assert!(eventually(Duration::from_secs(5), || self.is_frozen(&self.path)), "cgroup did not freeze");
    }

    pub fn thaw_by_hand(&self) {
        let _ = match self.kind {
            Cg::V2 => std::fs::write(self.path.join("cgroup.freeze"), "0"),
            Cg::V1 => std::fs::write(self.path.join("freezer.state"), "THAWED"),
        };
    }

    /// The processes in this cgroup and its leaf.
    pub fn procs(&self) -> Vec<i32> {
        [self.path.clone(), self.leaf()]
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|s| s.split_whitespace().filter_map(|w| w.parse().ok()).collect::<Vec<i32>>())
            .collect()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.thaw_by_hand();
        eventually(Duration::from_secs(5), || {
            let procs = self.procs();
            procs.iter().for_each(|&p| sigkill(p));
            procs.is_empty()
        });
        for dir in [self.leaf(), self.path.clone()] {
            eventually(Duration::from_secs(5), || match std::fs::remove_dir(&dir) {
                Ok(()) => true,
                Err(e) => e.kind() == std::io::ErrorKind::NotFound,
            });
        }
    }
}

/// Ask a paused self-reporting workload (ufiles, fidelity) for its report with SIGUSR1, and
/// wait until it has written "checked" into `log` after `from` bytes.
pub fn ask_report(pid: i32, log: &Path, from: usize) {
    wait_paused(pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).unwrap();
    wait_for(
        || {
            std::fs::read(log)
                .map(|s| String::from_utf8_lossy(&s[from.min(s.len())..]).contains("checked"))
                .unwrap_or(false)
        },
        Duration::from_secs(30),
        "self check",
    );
}
