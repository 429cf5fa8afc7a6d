//! The one undo of a failed take: what a take made (relinked names, snapshots, a partial
//! image) removed, the tasks thawed, and the error said in the user's terms (a task that
//! exited, what could not be undone).

use super::{TakeError, Tx};
use crate::{criu, scan, snapshot, tasks};
use std::path::Path;

impl Tx<'_> {
    /// Undo a failed take: keep CRIU's log, delete the snapshots, remove the relinked names,
    /// thaw the tasks. What could not be undone is carried in the error as warnings.
    pub(super) fn fail(mut self, mut e: TakeError) -> TakeError {
        if self.dumped_and_killed {
            // The tasks are gone: the dump, the snapshots and the names are all there is.
            let kept = self.image.keep_as_failed();
            return TakeError::AfterKill { source: Box::new(e), kept };
        }
        // The CRIU log the error names must outlive the partial directory.
        if let TakeError::Criu(criu::CriuError::Failed { log, .. }) = &mut e {
            if let Some(kept) = self.image.keep_failed_log(log) {
                *log = kept;
            }
        }
        if let TakeError::Snapshot(snapshot::SnapshotError::Timeout { mount_point, .. }) = &e {
            let mp = mount_point.clone();
            return self.fail_hung(e, &mp);
        }
        let made = (self.relinker.as_ref().map_or(0, |r| r.made().len()), self.snaps.len());
        let mut warnings = vec![];
        for s in self.snaps.iter().rev() {
            if let Err(de) = snapshot::delete(s, true) {
                warnings.push(format!("could not delete snapshot {} of the failed take: {de}", s.describe()));
            }
        }
        if let Some(r) = self.relinker.as_mut() {
            if let Err(re) = r.remove_all() {
                warnings.push(format!(
                    "could not remove relinked names of the failed take: {re} (run `snapckpt gc`)"
                ));
            }
        }
        drop(self.frozen.take()); // thaws
        if !warnings.is_empty() {
            // What could not be undone must stay traceable: plain `gc` removes the names and
            // snapshots of a take whose image root keeps a `.<id>.failed` entry.
            let kept = self.image.keep_as_failed();
            warnings.push(format!("kept {} so that `snapckpt gc` removes what is left", kept.display()));
        }
        let e = exited_during(&self.sel.pids, e, made, warnings.is_empty());
        if warnings.is_empty() {
            e
        } else {
            TakeError::Undone { source: Box::new(e), warnings }
        }
    }

    /// A snapshot that hung in the kernel: thaw the tasks at once and touch no filesystem (a
    /// removal would hang the same way). The relinked names, the snapshots and the one that
    /// may still complete stay with `.ID.partial`, locked by the snapshot process until the
    /// kernel lets it go; then plain `gc` removes them all.
    fn fail_hung(mut self, e: TakeError, mp: &Path) -> TakeError {
        drop(self.frozen.take()); // thaws
        let kept = self.image.keep_pending();
        let warnings = vec![format!(
            "the tasks were thawed and go on; the relinked names and snapshots of the take, and the snapshot that may still complete, are left with {}: run `snapckpt gc --mount {}` once the filesystem works again",
            kept.display(),
            mp.display()
        )];
        TakeError::Undone { source: Box::new(e), warnings }
    }
}

/// Whether a task has exited (gone, or a zombie).
pub(super) fn gone(pid: i32) -> bool {
    matches!(tasks::zombie(pid), Ok(None) | Ok(Some(Some(_))))
}

/// A failure while a selected task had exited is said as that, with what the undo did
/// (`made`: the relinked names and snapshots it removed; `clean`: whether all of it went),
/// rather than as the system call that found the task gone (`open /proc/N/root/...`).
fn exited_during(pids: &[i32], e: TakeError, made: (usize, usize), clean: bool) -> TakeError {
    let said = matches!(
        &e,
        TakeError::Scan(scan::ScanError::TaskExited { .. }) | TakeError::ExitedBeforeKept { .. }
    );
    let Some(&pid) = pids.iter().find(|&&p| !said && gone(p)) else { return e };
    TakeError::TaskExited { pid, undone: undone_summary(made, clean), source: Box::new(e) }
}

/// What the undo of a failed take did, in words.
fn undone_summary((names, snaps): (usize, usize), clean: bool) -> String {
    if !clean {
        return "any other task was thawed; what could not be undone is listed in the warnings".into();
    }
    match (names, snaps) {
        (0, 0) => "nothing of it is left (no relinked name, no snapshot) and any other task was thawed".into(),
        (n, s) => format!(
            "nothing is left of it: the {n} relinked name(s) and {s} snapshot(s) it had made were removed and any other task thawed"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A take failing after a task exited says so first, with what the undo did.
    #[test]
    fn a_task_that_exited_is_named_with_the_undo() {
        let cause = TakeError::Io(crate::sys::SysError {
            path: "/proc/99/root/x".into(),
            syscall: "open",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        });
        let e = exited_during(&[i32::MAX], cause, (2, 1), true).to_string();
        assert!(e.starts_with(&format!("task {} exited during the take", i32::MAX)), "{e}");
        assert!(
            e.contains("the 2 relinked name(s) and 1 snapshot(s)")
                && e.ends_with("What failed: open /proc/99/root/x: No such file or directory (os error 2)"),
            "{e}"
        );
        assert!(undone_summary((0, 0), true).contains("nothing of it is left"));
        assert!(undone_summary((3, 0), false).contains("warnings"));
        // a live task: the error stays as it is
        let cause = TakeError::HasChildren { pid: 7 };
        let said = cause.to_string();
        assert_eq!(exited_during(&[std::process::id() as i32], cause, (0, 0), true).to_string(), said);
    }
}
