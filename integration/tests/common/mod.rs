//! Shared helpers for the integration tests, every area: scratch directories, shell commands,
//! polling, and the one lock that serializes tests using loop devices, mounts or other global
//! state. Every test runs as root.
//!
//! * [`fs`]: filesystems on loop devices, mounts, the names under `lost+found/checkpoint`;
//! * [`procs`]: test programs compiled with `cc`, processes, their states, cgroups;
//! * [`cli`]: running the snapckpt binary under test and reading what it wrote.

pub mod cli;
pub mod fs;
pub mod procs;

pub use cli::*;
pub use fs::*;
pub use procs::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A scratch directory for one test, removed on drop.
pub struct Scratch(pub PathBuf);
impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::var_os("SNAPCKPT_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/snapckpt-tests"));
        let p = base.join(unique_name(tag));
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

/// A number not returned before in this test process.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// `PREFIX-PID-N`: a name no other test (in this or another test process) uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), unique())
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

/// Serialize the tests that use loop devices, mounts or other global state. One lock for the
/// whole test binary, so across all areas.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: std::sync::Mutex<()> = std::sync::Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// Poll `f` every `every` until it is true (true) or `timeout` passes (false).
fn poll(timeout: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// Poll `f` every 5 ms until it is true or `timeout` passes; whether it became true.
pub fn eventually(timeout: Duration, f: impl FnMut() -> bool) -> bool {
    poll(timeout, Duration::from_millis(5), f)
}

/// Poll `f` every 20 ms until it is true; panic if `timeout` passes first.
pub fn wait_for(f: impl FnMut() -> bool, timeout: Duration, what: &str) {
    if !poll(timeout, Duration::from_millis(20), f) {
        panic!("timed out waiting for {what}");
    }
}
