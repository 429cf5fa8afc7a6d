//! The process-engine vocabulary shared by job files, the config layer and `take`: what
//! happens to the tasks once a CRIU checkpoint of them is published. Kept apart from
//! [`take`](crate::take) so that [`job`](crate::job) does not depend on the pipeline.

/// What happens to the tasks once a CRIU checkpoint of them is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AfterDump {
    /// Killed (as CRIU does by default).
    #[default]
    Kill,
    /// Thawed: they go on (CRIU's `--leave-running`).
    Run,
    /// Left frozen (cgroup freezer or SIGSTOP, as they were frozen), the watchdog disarmed:
    /// the operator resumes or kills them (like CRIU's `--leave-stopped`).
    Stop,
}

/// CRIU options a take passes to the dump and records for the restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CriuFlags {
    /// The tasks belong to a shell job (their root is not a session leader, they may use the
    /// terminal): CRIU's `--shell-job`, at dump and at restore.
    pub shell_job: bool,
    /// Dump and restore established TCP connections (CRIU's `--tcp-established`; the network
    /// is locked with nftables meanwhile).
    pub tcp_established: bool,
}
