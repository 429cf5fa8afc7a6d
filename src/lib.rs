//! snapckpt: a Linux checkpoint/restart orchestrator that keeps the *unlinked* files of a
//! task set in their own filesystems instead of copying them into a process image.
//!
//! The pipeline, one module per stage:
//!
//! | stage | module |
//! |---|---|
//! | select, freeze and thaw tasks (cgroup v2/v1 freezer, SIGSTOP, thaw watchdog) | [`tasks`] |
//! | find what tasks hold open and classify what is unlinked | [`scan`] |
//! | relink unlinked files into `<mount>/lost+found/checkpoint` | [`relink`] |
//! | filesystem snapshots (btrfs, LVM) | [`snapshot`] |
//! | process image through CRIU | [`criu`] |
//! | the checkpoint record | [`image`] |
//! | the `take` pipeline | [`take`] |
//! | restart from a checkpoint | [`restart`] |
//! | delete checkpoints, collect leftovers | [`cleanup`] |
//! | TOML job files | [`job`] |
//! | flags, job file and environment resolved into each command's options | [`config`] |
//! | the `check` command: what this machine offers | [`check`] |
//! | naming a checkpoint: id, unique prefix, `latest[:JOB]` | [`ids`] |
//! | what `list`, `inspect`, `scan` and `take --dry-run` show | [`report`] |
//! | checks before anything is changed (root, image root) | [`preflight`] |
//! | retention: `prune` by keep-last / keep-within per job | [`prune`] |
//! | user hooks at named points (pre-take, post-restart, ...) | [`userhooks`] |
//! | progress and verbosity on stderr | [`ui`] |
//! | export a checkpoint as one stream, import it elsewhere | [`migrate`] |
//!
//! [`procfs`] parses `/proc` (stat, mountinfo, fdinfo, maps) for all of them; [`sys`] wraps
//! the system calls; [`engine`] (what happens to tasks after a CRIU dump) and [`units`]
//! (sizes) are vocabulary shared by several stages.

pub mod check;
pub mod cleanup;
pub mod config;
pub mod criu;
pub mod criu_image;
pub mod criu_stats;
pub mod engine;
pub mod hooks;
pub mod ids;
pub mod image;
pub mod job;
pub mod kernel_link;
pub mod migrate;
pub mod preflight;
pub mod procfs;
pub mod prune;
pub mod record;
pub mod relink;
pub mod report;
pub mod restart;
pub mod scan;
pub mod snapshot;
pub mod sys;
pub mod take;
pub mod tasks;
pub mod ui;
pub mod units;
pub mod unix_diag;
pub mod userhooks;
pub mod writeback;

// The property tests drive the fuzz targets, which name the crate `snapckpt`.
#[cfg(test)]
extern crate self as snapckpt;
#[cfg(test)]
mod proptests;
