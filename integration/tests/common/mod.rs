//! Shared helpers for the integration tests: real filesystems on loop devices, test programs
//! compiled with `cc`, and the snapckpt binary under test. Every test runs as root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The snapckpt binary built by cargo for this test run.
pub fn snapckpt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapckpt"))
}

/// A scratch directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);
impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::var_os("SNAPCKPT_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/snapckpt-tests"));
        let p = base.join(format!("{tag}-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Run a command, panic with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let o = Command::new("sh").arg("-c").arg(cmd).output().expect("spawn sh");
    if !o.status.success() {
        panic!(
            "command failed: {cmd}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A filesystem on a loop device, mounted at `mnt`; unmounted and removed on drop.
pub struct LoopFs {
    pub fstype: String,
    pub image: PathBuf,
    pub mnt: PathBuf,
    pub dev: String,
    _scratch: Scratch,
}

impl LoopFs {
    /// Make and mount a filesystem of `size` ("2G") of type btrfs, xfs, ext4 or tmpfs.
    pub fn new(fstype: &str, size: &str) -> LoopFs {
        let s = Scratch::new(&format!("fs-{fstype}"));
        let image = s.path().join("fs.img");
        let mnt = s.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        if fstype == "tmpfs" {
            sh(&format!("mount -t tmpfs -o size={size},mode=0755 snapckpt-test {}", mnt.display()));
            return LoopFs { fstype: fstype.into(), image, mnt, dev: "tmpfs".into(), _scratch: s };
        }
        sh(&format!("truncate -s {size} {}", image.display()));
        let mkfs = match fstype {
            "btrfs" => "mkfs.btrfs -q -f",
            "xfs" => "mkfs.xfs -q -f",
            "ext4" => "mkfs.ext4 -q -F",
            other => panic!("unknown fstype {other}"),
        };
        sh(&format!("{mkfs} {}", image.display()));
        let dev = sh(&format!("losetup --find --show {}", image.display())).trim().to_string();
        sh(&format!("mount {dev} {}", mnt.display()));
        LoopFs { fstype: fstype.into(), image, mnt, dev, _scratch: s }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // anything mounted below (restart clones) first
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}/[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.mnt.display()
            ))
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        if self.fstype != "tmpfs" {
            let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        }
    }
}

/// Compile `integration/progs/<name>.c` (once per test binary) and return the binary's path.
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
        let out = std::fs::File::create(log).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let p = Proc { child, pid };
        wait_for(
            || std::fs::read_to_string(log).map(|s| s.contains("ready")).unwrap_or(false),
            Duration::from_secs(20),
            "program ready",
        );
        p
    }
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_for(mut f: impl FnMut() -> bool, timeout: Duration, what: &str) {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run snapckpt with args; returns (success, stdout, stderr).
pub fn snapckpt(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(snapckpt_bin()).args(args).stdin(Stdio::null()).output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Like `snapckpt`, but panics with the output on failure.
pub fn snapckpt_ok(args: &[&str]) -> String {
    let (ok, out, err) = snapckpt(args);
    assert!(ok, "snapckpt {args:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

/// Serialize tests that use loop devices or global state within one test binary.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

impl Proc {
    /// Like `start`, in a new session (CRIU dumps session leaders without --shell-job).
    pub fn start_setsid(bin: &Path, args: &[&str], log: &Path) -> Proc {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log).unwrap();
        let mut c = Command::new(bin);
        c.args(args).stdin(Stdio::null()).stdout(out).stderr(Stdio::inherit());
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = c.spawn().unwrap();
        let pid = child.id() as i32;
        let p = Proc { child, pid };
        wait_for(
            || std::fs::read_to_string(log).map(|s| s.contains("ready")).unwrap_or(false),
            Duration::from_secs(20),
            "program ready",
        );
        p
    }
}

/// SIGKILL a process that is not our child (e.g. restored by CRIU) and wait until it is gone.
pub fn kill_wait(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
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

/// The `FD ...` lines of a ufiles report, by fd number.
pub fn fd_lines(report: &str) -> std::collections::BTreeMap<i32, String> {
    report
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("FD ")?;
            let n: i32 = rest.split_whitespace().next()?.parse().ok()?;
            Some((n, l.to_string()))
        })
        .collect()
}

/// The report a ufiles workload printed before its first `ready`.
pub fn first_report(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap();
    s.split("ready").next().unwrap().to_string()
}

/// The checkpoint id in the first line of `snapckpt take` (`checkpoint ID in DIR`).
pub fn take_id(stdout: &str) -> String {
    stdout
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("no checkpoint id in {stdout:?}"))
        .to_string()
}

/// The names under `MNT/lost+found/checkpoint`, sorted (none if it does not exist).
pub fn checkpoint_names(mnt: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(mnt.join("lost+found/checkpoint"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}
