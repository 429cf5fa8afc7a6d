//! The CRIU dump stage of a take: which tree CRIU dumps (one root, a session leader), the
//! dump with every relinked object external, and the snapshots taken at CRIU's post-dump.

use super::plan::SnapshotPlan;
use super::verify::{self, Names};
use super::{ms, AfterDump, CriuFlags, TakeError, Tx};
use crate::record::Snapshot;
use crate::snapshot::{self, FsSpec};
use crate::{criu, hooks, procfs, scan, sys, tasks, ui};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

impl Tx<'_> {
    /// The CRIU dump, every relinked object declared external, the snapshots taken on CRIU's
    /// post-dump notification while the tasks are still frozen.
    pub(super) fn dump(
        &mut self,
        criu: &Path,
        flags: CriuFlags,
        sc: &scan::Scan,
        pids: &[i32],
        plan: &SnapshotPlan,
    ) -> Result<(), TakeError> {
        let specs = &plan.specs;
        let externals: Vec<String> =
            sc.objects.iter().filter(|o| o.relinked.is_some()).map(|o| o.criu_key.clone()).collect();
        // CRIU copies the unlinked files it carries into its image: let it, however large.
        let carried = sc.objects.iter().filter(|o| plan.engine_carries(&o.mount.mount_point));
        let ghost_limit =
            carried.map(|o| o.size).max().map(|m| m.saturating_add(1 << 20).min(u32::MAX as u64) as u32);
        let req = criu::DumpRequest {
            flags,
            ghost_limit,
            timeout: flags.dump_timeout,
            criu: criu.to_path_buf(),
            pid: criu_root(pids)?,
            image_dir: self.image.path().to_path_buf(),
            externals,
            freeze_cgroup: self.frozen().method().cgroup_path().map(Path::to_path_buf),
            // Tasks that must not go on are killed by us once the image is published
            // (`Frozen::kill`), so a take that fails after the dump lets them go on instead
            // of losing them. Except with established TCP connections: CRIU must kill the
            // tasks itself with the network still locked (if it let them go, their sockets
            // would leave repair mode and our kill would close the connections); everything
            // that can fail is then done in the post-dump notification, before that kill.
            leave_running: !(flags.tcp_established && self.after() == AfterDump::Kill),
            parent_img: self.timings.pre_dump.last().map(|r| r.dir.clone()),
        };
        let relinker = self.relinker.as_ref().expect("relinked");
        let image_dir = self.image.path().to_path_buf();
        let t = Instant::now();
        let (frozen, id, snaps) = (self.frozen.as_ref().expect("frozen"), &self.sel.id, &mut self.snaps);
        let limit = (self.opts.snapshot_timeout, self.image.lock_fd());
        let mut snap_err = None;
        let mut snap_t = 0;
        let stage = ui::stage(self.opts.progress, "CRIU dump");
        let dumped = criu::dump(&req, &mut || {
            // post-dump: the tasks are still frozen; the natural moment to snapshot.
            // CRIU may have let go of the tasks already: the watchdog must wait for it.
            for c in tasks::Frozen::criu_children() {
                frozen.note_engine(c);
            }
            hooks::point("take-post-dump");
            let ts = Instant::now();
            let r = take_snapshots(specs, id, snaps, limit);
            snap_t = ms(ts.elapsed());
            // Shown restartable before CRIU lets go of the tasks: a failure aborts the dump.
            let r = r.and_then(|()| {
                verify::restartable(&sc.tasks, &sc.objects, true, &image_dir, relinker, Names::All)
            });
            r.map_err(|e| {
                let msg = e.to_string();
                snap_err = Some(e);
                msg
            })
        });
        stage.done();
        self.timings.snapshot_ms = snap_t;
        if let Some(e) = snap_err {
            return Err(e);
        }
        dumped?;
        self.dumped_and_killed = !req.leave_running;
        self.timings.dump_ms = ms(t.elapsed()).saturating_sub(snap_t);
        // CRIU's own figures (best effort: an image without them is still a checkpoint).
        self.timings.criu = crate::criu_stats::read_dump(self.image.path()).ok().flatten();
        Ok(())
    }
}

/// Take the snapshots, all within `timeout` (each in a process that keeps the image lock
/// `lock`: [`snapshot::take_within`]).
pub(super) fn take_snapshots(
    specs: &[FsSpec],
    id: &str,
    out: &mut Vec<Snapshot>,
    (timeout, lock): (Duration, std::os::fd::RawFd),
) -> Result<(), TakeError> {
    let deadline = Instant::now() + timeout;
    for s in specs {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let r = snapshot::take_within(s, id, sys::now_unix(), left, &[lock]);
        // the error names the whole step's limit
        let r = r.map_err(|e| match e {
            snapshot::SnapshotError::Timeout { mount_point, .. } => {
                snapshot::SnapshotError::Timeout { mount_point, timeout }
            }
            e => e,
        });
        out.push(r?);
    }
    Ok(())
}

/// CRIU dumps one process tree: the selected task whose parent is not selected.
pub(super) fn criu_root(pids: &[i32]) -> Result<i32, TakeError> {
    let mut roots = vec![];
    for &p in pids {
        let stat = crate::procfs::read_text(crate::procfs::pid_path(p, "stat")).unwrap_or_default();
        let ppid = scan::parse_stat(&stat).map(|x| x.1).unwrap_or(0);
        if !pids.contains(&ppid) {
            roots.push(p);
        }
    }
    match roots.as_slice() {
        [r] => Ok(*r),
        _ => Err(TakeError::SeveralTrees { roots }),
    }
}

/// CRIU dumps a tree whose root leads its session, unless it is told the tasks are a shell
/// job; and it dumps no task whose session leader is outside the task's pid namespace, not
/// even a shell job (the kernel shows that session as 0 inside the namespace: a task started
/// by a container runtime or a CI runner without `setsid`). Both refused before anything is
/// frozen rather than by CRIU after the relink. `ns`: each task's, read before the freeze.
pub(super) fn session_leader(
    ns: &HashMap<i32, procfs::TaskNs>,
    root: i32,
    shell_job: bool,
) -> Result<(), TakeError> {
    if let Some(pid) = ns.iter().filter(|(_, n)| n.session == Some(0)).map(|(&p, _)| p).min() {
        return Err(TakeError::SessionOutsideNamespace { pid });
    }
    if shell_job {
        return Ok(());
    }
    let stat = procfs::read_text(procfs::pid_path(root, "stat")).unwrap_or_default();
    match procfs::ProcStat::parse(&stat) {
        Some(st) if st.session != root => Err(TakeError::NotSessionLeader { pid: root, sid: st.session }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both refusals say what to do; a session outside the pid namespace is refused even for
    /// a shell job (CRIU cannot dump it at all).
    #[test]
    fn session_refusals_say_what_to_do() {
        let e = TakeError::SessionOutsideNamespace { pid: 12 }.to_string();
        assert!(e.contains("outside its pid namespace") && e.contains("not even with --shell-job"), "{e}");
        assert!(e.contains("setsid"), "{e}");
        let e = TakeError::NotSessionLeader { pid: 12, sid: 7 }.to_string();
        assert!(e.contains("its session is 7") && e.contains("--shell-job"), "{e}");
    }
}
