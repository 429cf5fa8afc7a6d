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

/// `restart --snapshot [BACKEND]`.
#[derive(Copy, Clone, PartialEq, Eq, Debug, ValueEnum)]
pub enum RestoreSnapshotArg {
    /// The checkpoint's snapshots, whatever their backend (`--snapshot` alone).
    Any,
    /// Its btrfs snapshots (refused if it has none).
    Btrfs,
    /// Its LVM snapshots (refused if it has none).
    Lvm,
    /// No snapshot: restart on the live filesystems.
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
    /// With CRIU: the tasks are a shell job (their root need not be a session leader; at
    /// restart they get snapckpt's terminal), CRIU's --shell-job.
    #[arg(long)]
    pub shell_job: bool,
    /// With CRIU: dump established TCP connections and restore them (CRIU's
    /// --tcp-established; the network is locked with nftables meanwhile).
    #[arg(long)]
    pub tcp_established: bool,
    /// With CRIU: stop CRIU if the dump takes longer than SECS (the tasks are thawed and go
    /// on; default: the job's [criu] dump_timeout_s, else 600).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub dump_timeout: Option<u64>,
    /// Give up on the snapshots if they take longer than SECS (a frozen or stalled filesystem
    /// can hang one in the kernel): the tasks are thawed and go on, what the take left is for
    /// `gc`; default: the job's [snapshot] timeout_s, else 120.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_timeout: Option<u64>,
    /// Refuse the take when a filesystem the tasks use cannot be snapshotted with the
    /// --snapshot backend (default: keep its relinked names and say so).
    #[arg(long)]
    pub strict_snapshots: bool,
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
    /// Checkpoint: id (from `list`), unique prefix of one, `latest`, `latest:JOB`, or image
    /// directory.
    pub id: String,
    /// Restore from the checkpoint's snapshots (a writable clone of each is mounted). As for
    /// take, the value is the backend: alone, whatever snapshots the checkpoint has; `btrfs` or
    /// `lvm`, checked to be what it has; `none` (the default), the live filesystems.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "any", value_name = "BACKEND")]
    pub snapshot: Option<RestoreSnapshotArg>,
    /// With --snapshot: mount the clones under this directory instead of over the original
    /// mount points.
    #[arg(long, requires = "snapshot")]
    pub mount_root: Option<PathBuf>,
    /// With --snapshot: mount the clones over the original mount points in the host's mount
    /// namespace (visible to every process) instead of in a private mount namespace of the
    /// restored tasks (the default for CRIU checkpoints and --exec).
    #[arg(long, requires = "snapshot", conflicts_with = "mount_root")]
    pub host_mounts: bool,
    /// CRIU checkpoints: restore the tasks into a new pid namespace, where they get their
    /// recorded pids (getpid, /proc/self: a procfs of that namespace is mounted on /proc for
    /// them) while the host sees them under other pids (printed). A small init (snapckpt,
    /// pid 1 there) reaps them and exits with the last. Needed when the recorded pids are in
    /// use, e.g. to run two restarts of one checkpoint side by side.
    #[arg(long, conflicts_with = "exec")]
    pub private_pids: bool,
    /// Stop CRIU if the restore takes longer than SECS (nothing is left restored; default 600).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub restore_timeout: Option<u64>,
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
    /// Print what was restored as JSON on stdout (with --exec: after the command ends; the
    /// command's own output comes first).
    #[arg(long)]
    pub json: bool,
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
    /// Checkpoint: id, unique prefix of one, `latest`, `latest:JOB`, or image directory.
    pub id: String,
    /// Where to look for the checkpoint id (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Unmount restart clones that are still mounted; remove an image directory whose record
    /// cannot be read (its names and snapshots are then left to `gc`).
    #[arg(long)]
    pub force: bool,
    /// Print what was deleted as JSON.
    #[arg(long)]
    pub json: bool,
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
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
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

// ---- operator commands (list/inspect/prune/completions/man): grouped here for merges ----

#[derive(Args)]
pub struct InspectArgs {
    /// Checkpoint: id, unique prefix of one, `latest`, `latest:JOB`, or image directory.
    pub id: String,
    /// Where to look for the checkpoint (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Print everything as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write snapckpt.1 and a page per subcommand (snapckpt-take.1, ...) into this directory
    /// instead of printing snapckpt.1.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Args)]
pub struct PruneArgs {
    /// The image root to prune (default: the job's image_root, env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// A job file: only its checkpoints (by its name) are considered, with its [retention]
    /// limits (flags given here override them).
    #[arg(long)]
    pub job: Option<PathBuf>,
    /// Only the checkpoints of the job of this name.
    #[arg(long, conflicts_with = "job")]
    pub job_name: Option<String>,
    /// Keep the N newest checkpoints of each job.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<usize>,
    /// Keep the checkpoints younger than AGE (90s, 30m, 12h, 7d, 2w).
    #[arg(long, value_name = "AGE")]
    pub keep_within: Option<String>,
    /// Say what would be deleted; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the decisions as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Checkpoint id (from `list`) or image directory.
    pub id: String,
    /// `-`: write the stream to standard output (e.g. `| ssh host snapckpt import -`).
    #[arg(value_name = "-", conflicts_with = "output")]
    pub dest: Option<String>,
    /// Write the stream to FILE (created; written as a hidden temporary file, renamed when
    /// complete).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Incremental: send only what changed since this earlier checkpoint of the same
    /// filesystems, which the target must already hold (btrfs send -p).
    #[arg(long, value_name = "PARENT_ID")]
    pub parent: Option<String>,
    /// Only the record and the CRIU image, for snapshots on shared or replicated storage.
    #[arg(long, conflicts_with = "parent")]
    pub image_only: bool,
    /// Where to look for the checkpoint and its parent (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
}

#[derive(Args)]
pub struct ImportArgs {
    /// The stream: a file, or `-` (the default) for standard input.
    #[arg(value_name = "FILE|-")]
    pub source: Option<String>,
    /// The target's mount point of the stream's filesystem; with several, SRC=DST for each
    /// (SRC the mount point on the source). Repeatable.
    #[arg(long = "mount", value_name = "[SRC=]DST", required = true)]
    pub mounts: Vec<String>,
    /// Where the imported checkpoint goes (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
}
