//! Test hooks: named points in `take`, `restart` and `import` where a test can stop snapckpt, kill a
//! task, or SIGKILL snapckpt itself. Inactive unless `SNAPCKPT_HOOK_DIR` is set.
//!
//! At point `P`, snapckpt creates `$SNAPCKPT_HOOK_DIR/P.reached` and, if the file
//! `$SNAPCKPT_HOOK_DIR/P.wait` exists, waits (up to 120 s) until it is removed.

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Reach the named point.
pub fn point(name: &str) {
    let Some(dir) = std::env::var_os("SNAPCKPT_HOOK_DIR").map(PathBuf::from) else { return };
    let _ = std::fs::write(dir.join(format!("{name}.reached")), format!("{}\n", std::process::id()));
    let wait = dir.join(format!("{name}.wait"));
    let t = Instant::now();
    while wait.exists() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
}
