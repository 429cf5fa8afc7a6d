//! Running the snapckpt binary under test, and reading what it printed and recorded.

use super::wait_for;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The snapckpt binary built by cargo for this test run.
pub fn snapckpt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snapckpt"))
}

/// The CRIU binary: `$SNAPCKPT_CRIU`, else the one scripts/install-criu.sh installs.
pub fn criu_bin() -> PathBuf {
    std::env::var_os("SNAPCKPT_CRIU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/snapckpt/criu/bin/criu"))
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

/// `snapckpt take --pid PID --image-root IMAGES EXTRA...`; (success, stdout, stderr).
pub fn take(pid: i32, images: &Path, extra: &[&str]) -> (bool, String, String) {
    let pid = pid.to_string();
    let mut args = vec!["take", "--pid", &pid, "--image-root", images.to_str().unwrap()];
    args.extend_from_slice(extra);
    snapckpt(&args)
}

/// Like `take`, but panics with the output on failure; the stdout.
pub fn take_ok(pid: i32, images: &Path, extra: &[&str]) -> String {
    let (ok, out, err) = take(pid, images, extra);
    assert!(ok, "snapckpt take --pid {pid} {extra:?} failed\nstdout: {out}\nstderr: {err}");
    out
}

/// A files-only take (`--engine none`) of `pid` (plus `extra`), which must work; the checkpoint
/// id and the image directory.
pub fn take_files_only(pid: i32, images: &Path, extra: &[&str]) -> (String, PathBuf) {
    let mut args = vec!["--engine", "none"];
    args.extend_from_slice(extra);
    let id = take_id(&take_ok(pid, images, &args));
    (id.clone(), images.join(id))
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

/// The checkpoint record (`checkpoint.json`) of the image in `dir`, as JSON.
pub fn record(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("checkpoint.json")).unwrap()).unwrap()
}

/// The `FD ...` lines of a ufiles report, by fd number.
pub fn fd_lines(report: &str) -> BTreeMap<i32, String> {
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

/// snapckpt's stderr shows no panic.
pub fn assert_no_panic(err: &str) {
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "snapckpt panicked:\n{err}");
}

/// A hook directory for snapckpt (`SNAPCKPT_HOOK_DIR`): at hook point P, snapckpt creates
/// `P.reached`, then waits while `P.wait` exists.
pub struct Hooks(pub PathBuf);
impl Hooks {
    /// Create `dir`, with snapckpt to wait at each of `points`.
    pub fn new(dir: PathBuf, points: &[&str]) -> Hooks {
        std::fs::create_dir_all(&dir).unwrap();
        for p in points {
            std::fs::write(dir.join(format!("{p}.wait")), "").unwrap();
        }
        Hooks(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    /// Wait (up to 20 s) until snapckpt has reached `point`.
    pub fn wait_reached(&self, point: &str, what: &str) {
        wait_for(|| self.0.join(format!("{point}.reached")).exists(), Duration::from_secs(20), what);
    }
    /// Let snapckpt go on from `point`.
    pub fn release(&self, point: &str) {
        std::fs::remove_file(self.0.join(format!("{point}.wait"))).unwrap();
    }
    /// `snapckpt ARGS` with these hooks; the caller sets stdio and spawns it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(snapckpt_bin());
        c.args(args).env("SNAPCKPT_HOOK_DIR", &self.0);
        c
    }
}
