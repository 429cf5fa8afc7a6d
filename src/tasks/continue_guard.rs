//! Restart's [`ContinueGuard`]: a thaw watchdog for tasks that CRIU restores stopped (a
//! checkpoint taken with SIGSTOP), so that they are continued even if snapckpt dies first.

use super::watchdog::Watchdog;
use super::TaskError;

/// The watchdog's method argument for pids to continue that do not exist yet.
pub(super) const LATER_ARG: &str = "sigstop-later";

/// Restart of a checkpoint taken with SIGSTOP: CRIU restores the tasks stopped, and the
/// restart continues them. This guard is a watchdog that continues them (SIGCONT to the
/// recorded pids, once CRIU has let them go) if snapckpt dies before it could. Dropping the
/// guard disarms it.
pub struct ContinueGuard(Option<Watchdog>);

impl ContinueGuard {
    pub fn arm(pids: &[i32]) -> Result<ContinueGuard, TaskError> {
        let mut args = vec![LATER_ARG.to_string()];
        args.extend(pids.iter().filter(|&&p| p > 0).map(i32::to_string));
        if args.len() == 1 {
            return Ok(ContinueGuard(None));
        }
        Watchdog::spawn_args(&args).map(|w| ContinueGuard(Some(w)))
    }
}

impl Drop for ContinueGuard {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            let _ = w.disarm();
        }
    }
}
