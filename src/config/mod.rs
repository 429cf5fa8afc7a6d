//! The config layer: the low-level arguments clap parses ([`args`]), a job file and the
//! environment ([`Env`]) resolved into the high-level options each pipeline takes
//! ([`take::TakeOptions`], [`restart::RestartOptions`], ...), so that `main` is a short match.
//!
//! Every policy about where a setting comes from lives here: the image root is the flag, else
//! (take) the job's `image_root`, else env `SNAPCKPT_IMAGE_ROOT`, else
//! [`take::DEFAULT_IMAGE_ROOT`]; a flag overrides the job; `--snapshot none` drops the job's
//! `[[filesystem]]` snapshots; the freeze timeout defaults to [`DEFAULT_FREEZE_TIMEOUT_MS`];
//! `gc` searches the mounts the image root's checkpoints name unless given some. The
//! environment is passed in, not read, so all of it is testable without root.

pub mod args;
#[cfg(test)]
mod tests;

pub use args::{
    BackendArg, CheckArgs, DeleteArgs, EngineArg, GcArgs, ListArgs, RestartArgs, ScanArgs, Select, TakeArgs,
};
pub use args::{CompletionsArgs, InspectArgs, ManArgs, PruneArgs};
pub use args::{ExportArgs, ImportArgs};

use crate::image;
use crate::job::{EngineKind, Job};
use crate::record::names::{valid_id, TemplateError};
use crate::relink::{self, Template};
use crate::snapshot::{Backend, FsSpec};
use crate::tasks::Selection;
use crate::{check, cleanup, criu, restart, take};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The freeze timeout of a take when neither `--freeze-timeout` nor the job's
/// `[freeze] timeout_ms` gives one.
/// How long a CRIU dump or restore may take before CRIU is stopped, in seconds.
pub const DEFAULT_CRIU_TIMEOUT_S: u64 = 600;
/// How long the snapshots of a take may keep its tasks frozen, in seconds.
pub const DEFAULT_SNAPSHOT_TIMEOUT_S: u64 = 120;
pub const DEFAULT_FREEZE_TIMEOUT_MS: u64 = 10_000;
/// How long `scan --freeze` waits for the tasks to freeze.
pub const SCAN_FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// The environment variable that names the image root.
pub const IMAGE_ROOT_VAR: &str = "SNAPCKPT_IMAGE_ROOT";
/// The environment variable that names the CRIU binary.
pub const CRIU_VAR: &str = "SNAPCKPT_CRIU";

const TAKE_USAGE: &str = "give --pid PID [--tree], --cgroup PATH, or --job FILE with a [tasks] section";
const SCAN_USAGE: &str = "give --pid PID [--tree], --cgroup PATH, or --all";

/// The environment variables snapckpt reads, as values (`None`: unset).
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `SNAPCKPT_IMAGE_ROOT` (set to "" is `Some("")`, and refused).
    pub image_root: Option<PathBuf>,
    /// `SNAPCKPT_CRIU`.
    pub criu: Option<PathBuf>,
    /// `SNAPCKPT_HOOKS_DIR`: the user hooks directory.
    pub hooks_dir: Option<PathBuf>,
    /// `SNAPCKPT_HOOKS_TIMEOUT_S`.
    pub hooks_timeout: Option<String>,
}

impl Env {
    /// The variables of this process.
    pub fn from_process() -> Env {
        Env {
            image_root: std::env::var_os(IMAGE_ROOT_VAR).map(PathBuf::from),
            criu: std::env::var_os(CRIU_VAR).map(PathBuf::from),
            hooks_dir: std::env::var_os(crate::userhooks::DIR_VAR).map(PathBuf::from),
            hooks_timeout: std::env::var(crate::userhooks::TIMEOUT_VAR).ok(),
        }
    }
}

/// Why arguments, job file and environment do not make a command.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Job(#[from] crate::job::JobError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Criu(#[from] criu::CriuError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Id(#[from] crate::ids::IdError),
    #[error(transparent)]
    Prune(#[from] crate::prune::PruneError),
    /// `prune --job FILE` of a job file without a name.
    #[error("{}: prune --job needs the job's name (name = \"...\"): its checkpoints are found by it", .0.display())]
    JobWithoutName(PathBuf),
    /// Neither flags nor the job select tasks.
    #[error("no tasks selected: {usage}")]
    NoTasks { usage: &'static str },
    /// `--tree` without any pid.
    #[error("--tree needs a pid: {usage}")]
    TreeWithoutPid { usage: &'static str },
    /// `--tree` given while the job selects a cgroup.
    #[error("--tree goes with a pid, but the job selects cgroup {} (a cgroup includes its whole subtree)", cgroup.display())]
    TreeWithJobCgroup { cgroup: PathBuf },
    /// `--leave-running` or `--leave-stopped` (`flag`) without the CRIU engine.
    #[error("{flag} applies to the CRIU engine (give --engine criu); without CRIU the tasks always go on running after the take")]
    LeaveWithoutCriu { flag: &'static str },
    /// The image root is "" (`from` says where it came from).
    #[error("the image root is empty ({from} is set to \"\"): give a directory with --image-root DIR, or unset it for {}", take::DEFAULT_IMAGE_ROOT)]
    EmptyImageRoot { from: &'static str },
    /// The image root exists and is not a directory.
    #[error("image root {} ({from}) exists and is not a directory", root.display())]
    ImageRootNotDir { root: PathBuf, from: &'static str },
    /// `restart --snapshot BACKEND` of a checkpoint whose snapshots are not all of it.
    #[error("restart --snapshot {want}: checkpoint {id} has snapshots of: {has}")]
    SnapshotBackend { id: String, want: &'static str, has: String },
    /// `restart --mount-root` with `--snapshot none`.
    #[error("--mount-root is where snapshot clones are mounted: it needs --snapshot")]
    MountRootWithoutSnapshot,
    /// A `gc --id` that is not a checkpoint id.
    #[error("--id {id:?} is not a checkpoint id (like 20260101T000000Z-abcd)")]
    NotAnId { id: String },
    /// `export` without a destination, or with one that is not `-`.
    #[error("export writes to -o FILE or to standard output with `-`{}", if given.is_empty() { String::new() } else { format!(", not to {given:?}") })]
    ExportDest { given: String },
    /// An `import --mount` that is not `DST` or `SRC=DST` with absolute paths.
    #[error("--mount {arg:?}: give the target mount point DST, or SRC=DST (both absolute)")]
    MountMap { arg: String },
}

/// The image root: `flag`, the job's `image_root`, env `SNAPCKPT_IMAGE_ROOT`, the default.
/// An empty one (which would put images in the current directory) and one that is not a
/// directory are refused.
pub fn image_root(flag: Option<PathBuf>, job: Option<&Job>, env: &Env) -> Result<PathBuf, ConfigError> {
    let (root, from) = if let Some(f) = flag {
        (f, "--image-root")
    } else if let Some(r) = job.and_then(|j| j.image_root.clone()) {
        (r, "the job's image_root")
    } else if let Some(e) = env.image_root.clone() {
        (e, "env SNAPCKPT_IMAGE_ROOT")
    } else {
        (PathBuf::from(take::DEFAULT_IMAGE_ROOT), "the default image root")
    };
    if root.as_os_str().is_empty() {
        return Err(ConfigError::EmptyImageRoot { from });
    }
    match std::fs::metadata(&root) {
        Ok(m) if !m.is_dir() => Err(ConfigError::ImageRootNotDir { root, from }),
        _ => Ok(root),
    }
}

/// The image root for a checkpoint given as `id_or_path`; a path (with a `/`) needs none.
fn root_for(flag: Option<PathBuf>, id_or_path: &str, env: &Env) -> Result<PathBuf, ConfigError> {
    if id_or_path.contains('/') {
        return Ok(flag.unwrap_or_default());
    }
    image_root(flag, None, env)
}

/// The tasks: --pid/--cgroup, else the job's [tasks]. `usage` is the hint when there are none.
pub fn selection(s: &Select, job: Option<&Job>, usage: &'static str) -> Result<Selection, ConfigError> {
    if let Some(pid) = s.pid {
        return Ok(Selection::Pid { pid, tree: s.tree });
    }
    if let Some(c) = &s.cgroup {
        return Ok(Selection::Cgroup(c.clone()));
    }
    if let Some(j) = job {
        if let Some(pid) = j.tasks.pid {
            return Ok(Selection::Pid { pid, tree: s.tree || j.tasks.tree });
        }
        if let Some(c) = &j.tasks.cgroup {
            if s.tree {
                return Err(ConfigError::TreeWithJobCgroup { cgroup: c.clone() });
            }
            return Ok(Selection::Cgroup(c.clone()));
        }
    }
    if s.tree {
        return Err(ConfigError::TreeWithoutPid { usage });
    }
    Err(ConfigError::NoTasks { usage })
}

/// `take`: flags, the job file (`--job`) and the environment. Flags override the job.
pub fn take_options(a: TakeArgs, env: &Env) -> Result<take::TakeOptions, ConfigError> {
    let job = a.job.as_deref().map(Job::load).transpose()?;
    let j = job.as_ref();
    let selection = selection(&a.sel, j, TAKE_USAGE)?;
    let tpl = a
        .template
        .clone()
        .or_else(|| j.and_then(|j| j.relink.template.clone()))
        .unwrap_or_else(|| relink::DEFAULT_TEMPLATE.into());
    let template = Template::parse(&tpl)?;
    let filesystems = match (a.snapshot, j) {
        (Some(BackendArg::None), _) | (_, None) => vec![],
        (_, Some(j)) => job_filesystems(j),
    };
    let auto_snapshot = match a.snapshot {
        Some(BackendArg::Btrfs) => Some(Backend::Btrfs),
        Some(BackendArg::Lvm) => Some(Backend::Lvm),
        Some(BackendArg::None) | None => None,
    };
    let engine_kind = match a.engine {
        Some(EngineArg::Criu) => EngineKind::Criu,
        Some(EngineArg::None) => EngineKind::None,
        None => j.and_then(|j| j.criu.engine).unwrap_or_default(),
    };
    if engine_kind == EngineKind::None
        && (a.leave_running || a.leave_stopped || a.shell_job || a.tcp_established)
    {
        let flag = if a.leave_running {
            "--leave-running"
        } else if a.leave_stopped {
            "--leave-stopped"
        } else if a.shell_job {
            "--shell-job"
        } else {
            "--tcp-established"
        };
        return Err(ConfigError::LeaveWithoutCriu { flag });
    }
    let image_root = image_root(a.image_root.clone(), j, env)?;
    let engine = match engine_kind {
        EngineKind::None => take::EngineOpts::None,
        EngineKind::Criu => take_engine(&a, j, env)?,
    };
    let timeout_ms =
        a.freeze_timeout.or(j.and_then(|j| j.freeze.timeout_ms)).unwrap_or(DEFAULT_FREEZE_TIMEOUT_MS);
    Ok(take::TakeOptions {
        selection,
        image_root,
        template,
        freeze_timeout: Duration::from_millis(timeout_ms),
        filesystems,
        auto_snapshot,
        strict_snapshots: a.strict_snapshots,
        keep_links: a.keep_links || j.is_some_and(|j| j.snapshot.keep_links),
        snapshot_timeout: Duration::from_secs(
            a.snapshot_timeout.or(j.and_then(|j| j.snapshot.timeout_s)).unwrap_or(DEFAULT_SNAPSHOT_TIMEOUT_S),
        ),
        engine,
        job_name: j.and_then(|j| j.name.clone()),
        dry_run: a.dry_run,
        progress: true, // on stderr, only on a terminal, not with -q (see `ui`)
        hooks: hooks(j, env),
        writeback: if a.no_write_back { crate::writeback::Policy::off() } else { Default::default() },
        pre_dump: a.pre_dump || j.is_some_and(|j| j.criu.pre_dump),
    })
}

/// The job's `[[filesystem]]` entries as snapshot specs.
fn job_filesystems(j: &Job) -> Vec<FsSpec> {
    j.filesystem
        .iter()
        .map(|f| FsSpec {
            mount_point: f.mount.clone(),
            backend: f.snapshot,
            snapshot_dir: f.snapshot_dir.clone(),
            lvm_size: f.lvm_size.clone(),
        })
        .collect()
}

/// The CRIU engine of a take: which CRIU (flag, job, env, default prefix, PATH) and what
/// happens to the tasks after the dump (flags, else the job's `[criu]`).
fn take_engine(a: &TakeArgs, j: Option<&Job>, env: &Env) -> Result<take::EngineOpts, ConfigError> {
    let explicit = a.criu.as_deref().or(j.and_then(|j| j.criu.path.as_deref()));
    let path = criu::find_with(explicit, env.criu.as_deref())?;
    let after = if a.leave_running {
        take::AfterDump::Run
    } else if a.leave_stopped {
        take::AfterDump::Stop
    } else {
        j.map(|j| j.criu.after_dump()).unwrap_or_default()
    };
    let flags = crate::engine::CriuFlags {
        shell_job: a.shell_job || j.is_some_and(|j| j.criu.shell_job),
        tcp_established: a.tcp_established || j.is_some_and(|j| j.criu.tcp_established),
        dump_timeout: Some(Duration::from_secs(
            a.dump_timeout.or(j.and_then(|j| j.criu.dump_timeout_s)).unwrap_or(DEFAULT_CRIU_TIMEOUT_S),
        )),
    };
    Ok(take::EngineOpts::Criu { path, after, flags })
}

/// A resolved `restart`: the image directory and how to restart it.
#[derive(Debug)]
pub struct RestartConfig {
    pub dir: PathBuf,
    pub options: restart::RestartOptions,
    /// User hooks (pre-restart, post-restart): the hooks directory's.
    pub hooks: crate::userhooks::Hooks,
    pub json: bool,
}

/// `restart`: the checkpoint (an id in the image root, or a directory) and the options.
pub fn restart_options(a: RestartArgs, env: &Env) -> Result<RestartConfig, ConfigError> {
    let root = root_for(a.image_root, &a.id, env)?;
    let dir = crate::ids::resolve(&root, &a.id)?;
    let snapshot = restore_snapshot(a.snapshot, a.mount_root.is_some(), &dir)?;
    let options = restart::RestartOptions {
        snapshot,
        mounts: if a.host_mounts { restart::Mounts::Host } else { restart::Mounts::Private },
        restore_timeout: Some(Duration::from_secs(a.restore_timeout.unwrap_or(DEFAULT_CRIU_TIMEOUT_S))),
        mount_root: a.mount_root,
        exec: a.exec,
        exec_task: a.exec_task,
        criu: a.criu,
        private_pids: a.private_pids,
    };
    Ok(RestartConfig { dir, options, hooks: hooks(None, env), json: a.json })
}

/// Whether a restart mounts clones of the snapshots: `--snapshot [BACKEND]`, a backend
/// checked against the checkpoint's snapshots.
fn restore_snapshot(
    arg: Option<args::RestoreSnapshotArg>,
    mount_root: bool,
    dir: &Path,
) -> Result<bool, ConfigError> {
    use args::RestoreSnapshotArg as R;
    let want = match arg {
        None | Some(R::None) if mount_root => return Err(ConfigError::MountRootWithoutSnapshot),
        None | Some(R::None) => return Ok(false),
        Some(R::Any) => return Ok(true),
        Some(R::Btrfs) => "btrfs",
        Some(R::Lvm) => "lvm",
    };
    let ck = image::load(dir)?;
    let has: Vec<&str> = ck
        .snapshots
        .iter()
        .map(|s| match s {
            crate::record::Snapshot::Btrfs { .. } => "btrfs",
            crate::record::Snapshot::Lvm { .. } => "lvm",
        })
        .collect();
    if has.is_empty() || has.iter().any(|b| *b != want) {
        let has = if has.is_empty() { "none".to_string() } else { has.join(", ") };
        return Err(ConfigError::SnapshotBackend { id: ck.id, want, has });
    }
    Ok(true)
}

/// A resolved `list`.
#[derive(Debug)]
pub struct ListOptions {
    pub image_root: PathBuf,
    pub json: bool,
}

/// `list`: the image root and the output format.
pub fn list_options(a: ListArgs, env: &Env) -> Result<ListOptions, ConfigError> {
    Ok(ListOptions { image_root: image_root(a.image_root, None, env)?, json: a.json })
}

/// A resolved `delete`.
#[derive(Debug)]
pub struct DeleteOptions {
    /// The image directory.
    pub dir: PathBuf,
    /// The checkpoint as it was given (id or directory), for messages.
    pub id: String,
    pub force: bool,
    /// User hooks (post-delete): the hooks directory's.
    pub hooks: crate::userhooks::Hooks,
    pub json: bool,
}

/// `delete`: the image directory of the checkpoint given.
pub fn delete_options(a: DeleteArgs, env: &Env) -> Result<DeleteOptions, ConfigError> {
    let root = root_for(a.image_root, &a.id, env)?;
    let dir = crate::ids::resolve(&root, &a.id)?;
    Ok(DeleteOptions { dir, id: a.id, force: a.force, hooks: hooks(None, env), json: a.json })
}

/// A resolved `gc`: the arguments of [`cleanup::gc`] and what its report needs.
#[derive(Debug)]
pub struct GcOptions {
    pub image_root: PathBuf,
    /// The mounts to search (may be empty: then none is searched).
    pub mounts: Vec<PathBuf>,
    pub template: Template,
    pub scope: cleanup::GcScope,
    /// The ids given with `--id`.
    pub ids: Vec<String>,
    pub snapshot_dirs: Vec<String>,
    pub dry_run: bool,
    pub json: bool,
}

/// `gc`: the image root, the template, the ids (checked), the scope and the mounts.
pub fn gc_options(a: GcArgs, env: &Env) -> Result<GcOptions, ConfigError> {
    let root = image_root(a.image_root, None, env)?;
    let template = Template::parse(a.template.as_deref().unwrap_or(relink::DEFAULT_TEMPLATE))?;
    if let Some(bad) = a.ids.iter().find(|i| !valid_id(i)) {
        return Err(ConfigError::NotAnId { id: bad.clone() });
    }
    let mounts = gc_mounts(a.mounts, || mounts_named(&root))?;
    let scope = if a.all {
        cleanup::GcScope::AllWithoutImage
    } else if !a.ids.is_empty() {
        cleanup::GcScope::Ids(a.ids.clone())
    } else {
        cleanup::GcScope::Failed
    };
    Ok(GcOptions {
        image_root: root,
        mounts,
        template,
        scope,
        ids: a.ids,
        snapshot_dirs: a.snapshot_dirs,
        dry_run: a.dry_run,
        json: a.json,
    })
}

/// The mounts `gc` searches: those `given` (`--mount`), else every mount `named` by the image
/// root's checkpoints (asked only then), each once, in the order first named.
pub fn gc_mounts(
    given: Vec<PathBuf>,
    named: impl FnOnce() -> Result<Vec<PathBuf>, ConfigError>,
) -> Result<Vec<PathBuf>, ConfigError> {
    if !given.is_empty() {
        return Ok(given);
    }
    let mut mounts: Vec<PathBuf> = vec![];
    for m in named()? {
        if !mounts.contains(&m) {
            mounts.push(m);
        }
    }
    Ok(mounts)
}

/// The mount points of the relinked objects of the readable checkpoints in `root`.
fn mounts_named(root: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = vec![];
    for (_, r) in image::list(root)? {
        if let Ok(ck) = r {
            out.extend(ck.objects.iter().map(|o| PathBuf::from(&o.mount.mount_point)));
        }
    }
    Ok(out)
}

/// What `scan` scans.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanTarget {
    /// Every process (`--all`), leniently.
    All,
    /// The selected tasks, frozen for [`SCAN_FREEZE_TIMEOUT`] at most while scanned if `freeze`.
    Tasks { selection: Selection, freeze: bool },
}

/// A resolved `scan`.
#[derive(Debug)]
pub struct ScanOptions {
    pub target: ScanTarget,
    pub json: bool,
}

/// `scan`: `--all`, or the tasks selected by `--pid`/`--cgroup`.
pub fn scan_options(a: ScanArgs) -> Result<ScanOptions, ConfigError> {
    let target = if a.all {
        ScanTarget::All
    } else {
        ScanTarget::Tasks { selection: selection(&a.sel, None, SCAN_USAGE)?, freeze: a.freeze }
    };
    Ok(ScanOptions { target, json: a.json })
}

/// `check`: the CRIU to check (flag, else env `SNAPCKPT_CRIU`, the default prefix, PATH).
pub fn check_options(a: CheckArgs, env: &Env) -> check::CheckOptions {
    check::CheckOptions { criu: a.criu, env_criu: env.criu.clone() }
}

// ---- operator commands (inspect, prune): grouped here for merges ----

/// A resolved `inspect`: the image directory and the output format.
#[derive(Debug)]
pub struct InspectOptions {
    pub dir: PathBuf,
    pub json: bool,
}

/// `inspect`: the checkpoint (id, prefix, `latest[:JOB]` or directory).
pub fn inspect_options(a: InspectArgs, env: &Env) -> Result<InspectOptions, ConfigError> {
    let root = root_for(a.image_root, &a.id, env)?;
    Ok(InspectOptions { dir: crate::ids::resolve(&root, &a.id)?, json: a.json })
}

/// The user hooks of a command: the job's `[hooks]`, env `SNAPCKPT_HOOKS_DIR` and
/// `SNAPCKPT_HOOKS_TIMEOUT_S`, the default directory.
pub fn hooks(job: Option<&Job>, env: &Env) -> crate::userhooks::Hooks {
    crate::userhooks::Hooks::resolve(
        job.and_then(|j| j.hooks.as_ref()),
        env.hooks_dir.clone(),
        env.hooks_timeout.clone(),
    )
}

/// A resolved `prune`.
#[derive(Debug)]
pub struct PruneConfig {
    pub options: crate::prune::PruneOptions,
    pub json: bool,
}

/// `prune`: the image root, the job and the limits (flags over the job's `[retention]`).
pub fn prune_options(a: PruneArgs, env: &Env) -> Result<PruneConfig, ConfigError> {
    let job = a.job.as_deref().map(Job::load).transpose()?;
    let j = job.as_ref();
    let ret = j.and_then(|j| j.retention.clone()).unwrap_or_default();
    let within = a.keep_within.or(ret.keep_within).map(|w| crate::prune::parse_age(&w)).transpose()?;
    let job_name = match (j, a.job_name) {
        (Some(j), _) => Some(
            j.name.clone().ok_or_else(|| ConfigError::JobWithoutName(a.job.clone().unwrap_or_default()))?,
        ),
        (None, n) => n,
    };
    let policy =
        crate::prune::Policy { keep_last: a.keep_last.or(ret.keep_last), keep_within: within, job: job_name };
    if policy.keep_last.is_none() && policy.keep_within.is_none() {
        return Err(crate::prune::PruneError::NoRule.into());
    }
    let options = crate::prune::PruneOptions {
        image_root: image_root(a.image_root, j, env)?,
        policy,
        dry_run: a.dry_run,
        hooks: hooks(j, env),
    };
    Ok(PruneConfig { options, json: a.json })
}

/// `export`: the checkpoint, its image root (for `--parent`) and where the stream goes.
pub fn export_options(a: ExportArgs, env: &Env) -> Result<crate::migrate::ExportOptions, ConfigError> {
    use crate::migrate::Output;
    let output = match (a.output, a.dest.as_deref()) {
        (Some(f), _) => Output::File(f),
        (None, Some("-")) => Output::Stdout,
        (None, d) => return Err(ConfigError::ExportDest { given: d.unwrap_or_default().to_string() }),
    };
    let image_root = image_root(a.image_root, None, env)?;
    // Named as for the other commands: an id, a unique prefix, `latest[:JOB]` or a directory.
    let dir = crate::ids::resolve(&image_root, &a.id)?;
    let parent = match a.parent {
        Some(p) if p.contains('/') => Some(p),
        Some(p) => {
            let d = crate::ids::resolve(&image_root, &p)?;
            Some(d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or(p))
        }
        None => None,
    };
    Ok(crate::migrate::ExportOptions {
        dir,
        image_root,
        parent,
        image_only: a.image_only,
        output,
        progress: true,
    })
}

/// `import`: the stream, the image root and the mount map (`DST` or `SRC=DST`).
pub fn import_options(a: ImportArgs, env: &Env) -> Result<crate::migrate::ImportOptions, ConfigError> {
    use crate::migrate::Input;
    let input = match a.source.as_deref() {
        None | Some("-") => Input::Stdin,
        Some(f) => Input::File(PathBuf::from(f)),
    };
    let mut mounts = vec![];
    for m in &a.mounts {
        let bad = || ConfigError::MountMap { arg: m.clone() };
        let (src, dst) = match m.split_once('=') {
            Some((s, d)) => (Some(s.to_string()), d),
            None => (None, m.as_str()),
        };
        if !dst.starts_with('/') || src.as_deref().is_some_and(|s| !crate::record::names::normalized_abs(s)) {
            return Err(bad());
        }
        mounts.push((src, PathBuf::from(dst)));
    }
    Ok(crate::migrate::ImportOptions {
        input,
        image_root: image_root(a.image_root, None, env)?,
        mounts,
        progress: true,
    })
}
