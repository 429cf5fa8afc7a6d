//! CRIU as the tracer of frozen tasks: recognising a CRIU process, the CRIU children of
//! snapckpt ([`Frozen::criu_children`]), and waiting until CRIU has let the tasks go (it puts
//! back the frozen state it found when it does, so thawing must come after).

use std::fs;
use std::time::{Duration, Instant};

use super::cgroup::cgroup_procs;
use super::freeze::{FreezeMethod, Frozen};
use super::pidfd::Proc;
use super::selection::children;
use crate::procfs;

impl Frozen {
    /// The CRIU processes that are children of this process (for [`Frozen::note_engine`]).
    pub fn criu_children() -> Vec<i32> {
        children(std::process::id() as i32).unwrap_or_default().into_iter().filter(|&p| is_criu(p)).collect()
    }
}

/// Whether `pid` is a CRIU process: its executable, or a file it maps (CRIU run through its
/// own ld.so has the loader as exe and comm, and CRIU rewrites its argv), is named `criu`.
pub(super) fn is_criu(pid: i32) -> bool {
    let named_criu = |p: &str| p.rsplit('/').next() == Some("criu");
    if fs::read_link(procfs::pid_path(pid, "exe")).is_ok_and(|e| named_criu(&e.to_string_lossy())) {
        return true;
    }
    procfs::read_text(procfs::pid_path(pid, "maps"))
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(5).is_some_and(named_criu)))
}

/// Whether `pid` is a CRIU process that has not exited.
pub(super) fn is_live_criu(pid: i32) -> bool {
    is_criu(pid) && procfs::is_alive(pid)
}

/// Wait (at most `max`) until no task of the selection is traced (TracerPid 0).
pub(super) fn wait_untraced(method: &FreezeMethod, procs: &[Proc], max: Duration) {
    let pids: Vec<i32> = match method {
        FreezeMethod::Sigstop(_) => procs.iter().map(|p| p.pid).collect(),
        FreezeMethod::CgroupV2(cg) | FreezeMethod::CgroupV1(cg) => cgroup_procs(cg).unwrap_or_default(),
    };
    // Only a CRIU tracer matters: it puts back the frozen state it found when it lets go. A
    // debugger or strace attached to a task does not (and may hold on for ever).
    let criu_tracer = |pid: i32| {
        procfs::read_text(procfs::pid_path(pid, "status"))
            .ok()
            .and_then(|s| procfs::status_field(&s, "TracerPid").and_then(|v| v.parse::<i32>().ok()))
            .filter(|&t| t > 0 && is_criu(t))
    };
    // After it lets the tasks go, CRIU puts back the frozen state it found: wait for the CRIU
    // process itself to end, not only for the tasks to be untraced.
    let mut tracers: Vec<i32> = vec![];
    let t = Instant::now();
    while t.elapsed() < max {
        let now: Vec<i32> = pids.iter().filter_map(|&p| criu_tracer(p)).collect();
        for c in &now {
            if !tracers.contains(c) {
                tracers.push(*c);
            }
        }
        if now.is_empty() && !tracers.iter().any(|&c| is_live_criu(c)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
