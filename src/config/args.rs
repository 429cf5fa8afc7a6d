//! The low-level arguments: what clap parses for each subcommand, field for field, with the
//! help text of every option. Nothing here is resolved: a flag that was not given is `None`
//! (or `false`, or empty). [`super`] turns these, with a job file and the environment, into
//! the options the library's pipelines take.

use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Args, Clone)]
pub struct Select {
    /// Select this process (a thread id selects its process).
    #[arg(long, conflicts_with = "cgroup")]
    pub pid: Option<i32>,
    /// With a pid (--pid, or a job file's): include all its descendants.
    #[arg(long, conflicts_with = "cgroup")]
    pub tree: bool,
    /// Select a cgroup (v1 freezer hierarchy or v2): every task in it and below.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
}

#[derive(Copy, Clone, ValueEnum)]
pub enum BackendArg {
    /// A read-only btrfs snapshot of the subvolume.
    Btrfs,
    /// An LVM snapshot of the logical volume.
    Lvm,
    /// No snapshot (overrides the job's [[filesystem]] snapshots).
    None,
}

#[derive(Copy, Clone, ValueEnum)]
pub enum EngineArg {
    /// Relink (and snapshot) the files only; the tasks keep running.
    None,
    /// Also dump the processes with CRIU.
    Criu,
}

#[derive(Args)]
pub struct TakeArgs {
    #[command(flatten)]
    pub sel: Select,
    /// TOML job file (flags given here override it).
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// Where image directories go (default: the job's image_root, env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Relinked name template (%t checkpoint id, %n counter, XXXXXX random).
    #[arg(long)]
    pub template: Option<String>,
    /// Give up freezing after this many milliseconds (at least 1; default 10000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub freeze_timeout: Option<u64>,
    /// Snapshot every filesystem that holds relinked files with this backend; `none` takes
    /// no snapshot, not even those of the job's [[filesystem]] entries.
    #[arg(long, value_enum)]
    pub snapshot: Option<BackendArg>,
    /// Keep the relinked names on the live filesystems after the snapshot.
    #[arg(long)]
    pub keep_links: bool,
    /// Process engine: none (files only) or criu.
    #[arg(long, value_enum)]
    pub engine: Option<EngineArg>,
    /// CRIU binary (default: the job's [criu] path, env SNAPCKPT_CRIU,
    /// /opt/snapckpt/criu/bin/criu, PATH).
    #[arg(long)]
    pub criu: Option<PathBuf>,
    /// With CRIU: leave the tasks running after the dump (default: they are killed, as by CRIU).
    #[arg(long, conflicts_with = "leave_stopped")]
    pub leave_running: bool,
    /// With CRIU: leave the tasks frozen after the dump (SIGSTOP or the cgroup freezer, as
    /// they were frozen); take prints the command that resumes them.
    #[arg(long)]
    pub leave_stopped: bool,
    /// Say what would be done; change nothing (tasks are frozen briefly for a consistent scan).
    #[arg(long)]
    pub dry_run: bool,
    /// Print the record (with --dry-run: the plan) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Print the statistics (snapckpt's stages and CRIU's own, microseconds, podman's names)
    /// as JSON on stdout, instead of the summary.
    #[arg(long, conflicts_with = "json")]
    pub print_stats: bool,
    /// Do not write dirty data back before the freeze (the frozen stages then flush it).
    #[arg(long)]
    pub no_write_back: bool,
    /// With CRIU: pre-dump the memory (tracking changes) before the final dump. Needs the
    /// kernel's soft-dirty tracking; refused when `criu check --feature mem_dirty_track` fails.
    #[arg(long)]
    pub pre_dump: bool,
}

#[derive(Args)]
pub struct RestartArgs {
    /// Checkpoint id (from `list`) or image directory.
    pub id: String,
    /// Restore from the checkpoint's snapshots (a writable clone of each is mounted).
    #[arg(long)]
    pub snapshot: bool,
    /// With --snapshot: mount the clones under this directory instead of over the original
    /// mount points.
    #[arg(long, requires = "snapshot")]
    pub mount_root: Option<PathBuf>,
    /// With --snapshot: mount the clones over the original mount points in the host's mount
    /// namespace (visible to every process) instead of in a private mount namespace of the
    /// restored tasks (the default for CRIU checkpoints and --exec).
    #[arg(long, requires = "snapshot", conflicts_with = "mount_root")]
    pub host_mounts: bool,
    /// Where to look for the checkpoint id (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// CRIU binary, for checkpoints taken with --engine criu.
    #[arg(long)]
    pub criu: Option<PathBuf>,
    /// With --exec: whose fds the command gets (default: the first task holding one).
    #[arg(long, requires = "exec")]
    pub exec_task: Option<i32>,
    /// Files-only checkpoints: run CMD holding the files at their recorded fds, flags and
    /// offsets; snapckpt exits with its status. Must come last: everything after it is the
    /// command and its arguments.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    pub exec: Option<Vec<String>>,
    /// Print the statistics (CRIU's `stats-restore`: microseconds, pages, podman's names) as
    /// JSON on stdout after the summary lines.
    #[arg(long)]
    pub print_stats: bool,
}

#[derive(Args)]
pub struct ListArgs {
    /// The image root to list (default: env SNAPCKPT_IMAGE_ROOT, /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Print a JSON array of the records; an image whose record cannot be read is an object
    /// with its id, path and error.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    /// Checkpoint id or image directory.
    pub id: String,
    /// Where to look for the checkpoint id (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Unmount restart clones that are still mounted; remove an image directory whose record
    /// cannot be read (its names and snapshots are then left to `gc`).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct GcArgs {
    /// Mount points to look under (lost+found/checkpoint and snapshots of each; repeatable).
    /// Default: every mount named by a checkpoint in the image root.
    #[arg(long = "mount", value_name = "MOUNTPOINT")]
    pub mounts: Vec<PathBuf>,
    /// The image root whose failed takes are collected (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// The template the relinked names were made with (default: unlink-at-restart-%t-%n).
    #[arg(long)]
    pub template: Option<String>,
    /// Remove the names and snapshots of these checkpoint ids (and nothing else).
    #[arg(long = "id", value_name = "ID", conflicts_with = "all")]
    pub ids: Vec<String>,
    /// Remove the names and snapshots of every checkpoint id without an image in this image
    /// root. By default only those of takes that failed or died in it are removed: ids with no
    /// trace there may belong to another image root.
    #[arg(long)]
    pub all: bool,
    /// Also look for btrfs snapshots in this directory of each mount (a job's `snapshot_dir`);
    /// the default `.snapckpt` and the directories of the image root's checkpoints always.
    #[arg(long = "snapshot-dir", value_name = "DIR")]
    pub snapshot_dirs: Vec<String>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct ScanArgs {
    #[command(flatten)]
    pub sel: Select,
    /// Every process on the system (like `lsof +L1`).
    #[arg(long, conflicts_with_all = ["pid", "tree", "cgroup", "freeze"])]
    pub all: bool,
    /// Freeze the tasks while scanning (not with --all).
    #[arg(long)]
    pub freeze: bool,
    /// Print the tasks and objects as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// CRIU binary to check (default: env SNAPCKPT_CRIU, /opt/snapckpt/criu/bin/criu, PATH).
    #[arg(long)]
    pub criu: Option<PathBuf>,
}
