//! The `snapckpt` command: a thin layer over the library. Parses arguments and job files,
//! calls one pipeline function per subcommand, and prints the result.

use clap::{Args, Parser, Subcommand, ValueEnum};
use snapckpt::image;
use snapckpt::job::{EngineKind, Job};
use snapckpt::record::{self, Engine};
use snapckpt::relink::{self, Template};
use snapckpt::snapshot::{Backend, FsSpec};
use snapckpt::tasks::Selection;
use snapckpt::{cleanup, criu, restart, scan, take};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "snapckpt",
    version,
    about = "Checkpoint/restart that relinks unlinked open files and lets a filesystem snapshot carry their data"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Freeze tasks, relink their unlinked files, snapshot, dump, thaw; write an image.
    ///
    /// The tasks are selected by --pid, --cgroup, or a job file (--job) with a [tasks] section.
    Take(TakeArgs),
    /// Restart a checkpoint (by id or image directory).
    Restart(RestartArgs),
    /// List the checkpoints in an image root.
    List(ListArgs),
    /// Delete a checkpoint, its snapshots and its relinked names.
    Delete(DeleteArgs),
    /// Remove relinked names and partial images left by failed or deleted checkpoints.
    Gc(GcArgs),
    /// Report the unlinked files that tasks hold open.
    Scan(ScanArgs),
    /// Check the environment: kernel features, cgroups, filesystems, CRIU, LVM.
    Check(CheckArgs),
}

#[derive(Args, Clone)]
struct Select {
    /// Select this process (a thread id selects its process).
    #[arg(long, conflicts_with = "cgroup")]
    pid: Option<i32>,
    /// With a pid (--pid, or a job file's): include all its descendants.
    #[arg(long, conflicts_with = "cgroup")]
    tree: bool,
    /// Select a cgroup (v1 freezer hierarchy or v2): every task in it and below.
    #[arg(long)]
    cgroup: Option<PathBuf>,
}

#[derive(Copy, Clone, ValueEnum)]
enum BackendArg {
    /// A read-only btrfs snapshot of the subvolume.
    Btrfs,
    /// An LVM snapshot of the logical volume.
    Lvm,
    /// No snapshot (overrides the job's [[filesystem]] snapshots).
    None,
}

#[derive(Copy, Clone, ValueEnum)]
enum EngineArg {
    /// Relink (and snapshot) the files only; the tasks keep running.
    None,
    /// Also dump the processes with CRIU.
    Criu,
}

#[derive(Args)]
struct TakeArgs {
    #[command(flatten)]
    sel: Select,
    /// TOML job file (flags given here override it).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Where image directories go (default: the job's image_root, env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Relinked name template (%t checkpoint id, %n counter, XXXXXX random).
    #[arg(long)]
    template: Option<String>,
    /// Give up freezing after this many milliseconds (at least 1; default 10000).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    freeze_timeout: Option<u64>,
    /// Snapshot every filesystem that holds relinked files with this backend; `none` takes
    /// no snapshot, not even those of the job's [[filesystem]] entries.
    #[arg(long, value_enum)]
    snapshot: Option<BackendArg>,
    /// Keep the relinked names on the live filesystems after the snapshot.
    #[arg(long)]
    keep_links: bool,
    /// Process engine: none (files only) or criu.
    #[arg(long, value_enum)]
    engine: Option<EngineArg>,
    /// CRIU binary (default: the job's [criu] path, env SNAPCKPT_CRIU,
    /// /opt/snapckpt/criu/bin/criu, PATH).
    #[arg(long)]
    criu: Option<PathBuf>,
    /// With CRIU: leave the tasks running after the dump (default: they are killed, as by CRIU).
    #[arg(long, conflicts_with = "leave_stopped")]
    leave_running: bool,
    /// With CRIU: leave the tasks frozen after the dump (SIGSTOP or the cgroup freezer, as
    /// they were frozen); take prints the command that resumes them.
    #[arg(long)]
    leave_stopped: bool,
    /// Say what would be done; change nothing (tasks are frozen briefly for a consistent scan).
    #[arg(long)]
    dry_run: bool,
    /// Print the record (with --dry-run: the plan) as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RestartArgs {
    /// Checkpoint id (from `list`) or image directory.
    id: String,
    /// Restore from the checkpoint's snapshots (a writable clone of each is mounted).
    #[arg(long)]
    snapshot: bool,
    /// With --snapshot: mount the clones under this directory instead of over the original
    /// mount points.
    #[arg(long, requires = "snapshot")]
    mount_root: Option<PathBuf>,
    /// With --snapshot: mount the clones over the original mount points in the host's mount
    /// namespace (visible to every process) instead of in a private mount namespace of the
    /// restored tasks (the default for CRIU checkpoints and --exec).
    #[arg(long, requires = "snapshot", conflicts_with = "mount_root")]
    host_mounts: bool,
    /// Where to look for the checkpoint id (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// CRIU binary, for checkpoints taken with --engine criu.
    #[arg(long)]
    criu: Option<PathBuf>,
    /// With --exec: whose fds the command gets (default: the first task holding one).
    #[arg(long, requires = "exec")]
    exec_task: Option<i32>,
    /// Files-only checkpoints: run CMD holding the files at their recorded fds, flags and
    /// offsets; snapckpt exits with its status. Must come last: everything after it is the
    /// command and its arguments.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    exec: Option<Vec<String>>,
}

#[derive(Args)]
struct ListArgs {
    /// The image root to list (default: env SNAPCKPT_IMAGE_ROOT, /var/lib/snapckpt/images).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Print a JSON array of the records; an image whose record cannot be read is an object
    /// with its id, path and error.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeleteArgs {
    /// Checkpoint id or image directory.
    id: String,
    /// Where to look for the checkpoint id (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Unmount restart clones that are still mounted; remove an image directory whose record
    /// cannot be read (its names and snapshots are then left to `gc`).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GcArgs {
    /// Mount points to look under (lost+found/checkpoint and snapshots of each; repeatable).
    /// Default: every mount named by a checkpoint in the image root.
    #[arg(long = "mount", value_name = "MOUNTPOINT")]
    mounts: Vec<PathBuf>,
    /// The image root whose failed takes are collected (default: env SNAPCKPT_IMAGE_ROOT,
    /// /var/lib/snapckpt/images).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// The template the relinked names were made with (default: unlink-at-restart-%t-%n).
    #[arg(long)]
    template: Option<String>,
    /// Remove the names and snapshots of these checkpoint ids (and nothing else).
    #[arg(long = "id", value_name = "ID", conflicts_with = "all")]
    ids: Vec<String>,
    /// Remove the names and snapshots of every checkpoint id without an image in this image
    /// root. By default only those of takes that failed or died in it are removed: ids with no
    /// trace there may belong to another image root.
    #[arg(long)]
    all: bool,
    /// Also look for btrfs snapshots in this directory of each mount (a job's `snapshot_dir`);
    /// the default `.snapckpt` and the directories of the image root's checkpoints always.
    #[arg(long = "snapshot-dir", value_name = "DIR")]
    snapshot_dirs: Vec<String>,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct ScanArgs {
    #[command(flatten)]
    sel: Select,
    /// Every process on the system (like `lsof +L1`).
    #[arg(long, conflicts_with_all = ["pid", "tree", "cgroup", "freeze"])]
    all: bool,
    /// Freeze the tasks while scanning (not with --all).
    #[arg(long)]
    freeze: bool,
    /// Print the tasks and objects as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// CRIU binary to check (default: env SNAPCKPT_CRIU, /opt/snapckpt/criu/bin/criu, PATH).
    #[arg(long)]
    criu: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Output to a closed pipe (`snapckpt scan --json | head`) ends the process quietly, as
    // for other tools, instead of a panic in println!. See `EpipeWhileWorking` for the work.
    // SAFETY: restoring the default disposition runs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).map(|a| a.as_os_str()) == Some(OsStr::new(snapckpt::tasks::WATCHDOG_ARG)) {
        let Some(rest) =
            args[2..].iter().map(|a| a.to_str().map(str::to_string)).collect::<Option<Vec<String>>>()
        else {
            eprintln!("snapckpt {}: arguments are not valid UTF-8", snapckpt::tasks::WATCHDOG_ARG);
            return ExitCode::from(2);
        };
        return ExitCode::from(snapckpt::tasks::watchdog_main(&rest) as u8);
    }
    let cli = Cli::parse_from(args);
    let r = match cli.cmd {
        Cmd::Take(a) => cmd_take(a),
        Cmd::Restart(a) => cmd_restart(a),
        Cmd::List(a) => cmd_list(a),
        Cmd::Delete(a) => cmd_delete(a),
        Cmd::Gc(a) => cmd_gc(a),
        Cmd::Scan(a) => cmd_scan(a),
        Cmd::Check(a) => cmd_check(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snapckpt: error: {e}");
            ExitCode::from(1)
        }
    }
}

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// While alive, a write to a pipe or socket whose reader has gone fails with EPIPE instead of
/// killing snapckpt with SIGPIPE: the thaw watchdog's pipe and CRIU's RPC socket are written
/// while tasks are frozen, and their errors must be reported (and cleaned up after), not end
/// the process. Dropped before the result is printed.
struct EpipeWhileWorking;

impl EpipeWhileWorking {
    fn new() -> EpipeWhileWorking {
        // SAFETY: SIG_IGN has no handler code.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        EpipeWhileWorking
    }
}

impl Drop for EpipeWhileWorking {
    fn drop(&mut self) {
        // SAFETY: as in main.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
}

/// The image root: the flag, the job's `image_root`, env `SNAPCKPT_IMAGE_ROOT`, the default.
/// An empty one (which would put images in the current directory) and one that is not a
/// directory are refused.
fn image_root(flag: Option<PathBuf>, job: Option<&Job>) -> Result<PathBuf, String> {
    let (root, from) = if let Some(f) = flag {
        (f, "--image-root")
    } else if let Some(r) = job.and_then(|j| j.image_root.clone()) {
        (r, "the job's image_root")
    } else if let Some(e) = std::env::var_os("SNAPCKPT_IMAGE_ROOT") {
        (PathBuf::from(e), "env SNAPCKPT_IMAGE_ROOT")
    } else {
        (PathBuf::from(take::DEFAULT_IMAGE_ROOT), "the default image root")
    };
    if root.as_os_str().is_empty() {
        return Err(format!("the image root is empty ({from} is set to \"\"): give a directory with --image-root DIR, or unset it for {}", take::DEFAULT_IMAGE_ROOT));
    }
    match std::fs::metadata(&root) {
        Ok(m) if !m.is_dir() => {
            Err(format!("image root {} ({from}) exists and is not a directory", root.display()))
        }
        _ => Ok(root),
    }
}

/// The tasks: --pid/--cgroup, else the job's [tasks]. `usage` is the hint when there are none.
fn selection(s: &Select, job: Option<&Job>, usage: &str) -> Result<Selection, String> {
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
                return Err(format!("--tree goes with a pid, but the job selects cgroup {} (a cgroup includes its whole subtree)", c.display()));
            }
            return Ok(Selection::Cgroup(c.clone()));
        }
    }
    if s.tree {
        return Err(format!("--tree needs a pid: {usage}"));
    }
    Err(format!("no tasks selected: {usage}"))
}

fn cmd_take(a: TakeArgs) -> Res {
    let job = a.job.as_deref().map(Job::load).transpose()?;
    let j = job.as_ref();
    let sel =
        selection(&a.sel, j, "give --pid PID [--tree], --cgroup PATH, or --job FILE with a [tasks] section")?;
    let tpl = a
        .template
        .clone()
        .or_else(|| j.and_then(|j| j.relink.template.clone()))
        .unwrap_or_else(|| relink::DEFAULT_TEMPLATE.into());
    let template = Template::parse(&tpl)?;
    let filesystems: Vec<FsSpec> = match (a.snapshot, j) {
        (Some(BackendArg::None), _) | (_, None) => vec![],
        (_, Some(j)) => j
            .filesystem
            .iter()
            .map(|f| FsSpec {
                mount_point: f.mount.clone(),
                backend: f.snapshot,
                snapshot_dir: f.snapshot_dir.clone(),
                lvm_size: f.lvm_size.clone(),
            })
            .collect(),
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
    if engine_kind == EngineKind::None && (a.leave_running || a.leave_stopped) {
        let flag = if a.leave_running { "--leave-running" } else { "--leave-stopped" };
        return Err(format!("{flag} applies to the CRIU engine (give --engine criu); without CRIU the tasks always go on running after the take").into());
    }
    let image_root = image_root(a.image_root, j)?;
    let engine = match engine_kind {
        EngineKind::None => take::EngineOpts::None,
        EngineKind::Criu => {
            let path = criu::find(a.criu.as_deref().or(j.and_then(|j| j.criu.path.as_deref())))?;
            let after = if a.leave_running {
                take::AfterDump::Run
            } else if a.leave_stopped {
                take::AfterDump::Stop
            } else {
                j.map(|j| j.criu.after_dump()).unwrap_or_default()
            };
            take::EngineOpts::Criu { path, after }
        }
    };
    let opts = take::TakeOptions {
        selection: sel,
        image_root,
        template,
        freeze_timeout: Duration::from_millis(
            a.freeze_timeout.or(j.and_then(|j| j.freeze.timeout_ms)).unwrap_or(10_000),
        ),
        filesystems,
        auto_snapshot,
        keep_links: a.keep_links || j.is_some_and(|j| j.snapshot.keep_links),
        engine,
        job_name: j.and_then(|j| j.name.clone()),
        dry_run: a.dry_run,
        progress: !a.json,
    };
    let working = EpipeWhileWorking::new();
    let outcome = take::take(&opts).inspect_err(|e| {
        if let take::TakeError::Undone { warnings, .. } = e {
            for w in warnings {
                eprintln!("snapckpt: warning: {w}");
            }
        }
    })?;
    drop(working);
    match outcome {
        take::Outcome::DryRun(p) => {
            let how = |o: &record::Object| match (o.nlink, o.kind) {
                (_, record::FileKind::Directory)
                | (
                    0,
                    record::FileKind::Fifo
                    | record::FileKind::CharDevice
                    | record::FileKind::BlockDevice
                    | record::FileKind::Socket,
                ) => "recreate",
                (0, _) => "link if O_TMPFILE, else clone or copy",
                _ => "hard link",
            };
            if a.json {
                let objects: Vec<serde_json::Value> = p
                    .scan
                    .objects
                    .iter()
                    .map(|o| {
                        let mut v = serde_json::to_value(o).unwrap_or_default();
                        v["would"] = how(o).into();
                        v["into"] = format!(
                            "{}/{}",
                            o.mount.mount_point.trim_end_matches('/'),
                            relink::CHECKPOINT_DIR
                        )
                        .into();
                        v
                    })
                    .collect();
                let snapshots: Vec<serde_json::Value> = p
                    .snapshots
                    .iter()
                    .map(|s| serde_json::json!({ "mount_point": s.mount_point, "backend": s.backend }))
                    .collect();
                let plan = serde_json::json!({
                    "dry_run": true,
                    "freezer": p.freezer,
                    "pids": p.pids,
                    "tasks": p.scan.tasks,
                    "objects": objects,
                    "snapshots": snapshots,
                });
                println!("{}", serde_json::to_string_pretty(&plan)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("dry run: would freeze {} task(s) with {}: {:?}", p.pids.len(), p.freezer, p.pids);
            for o in &p.scan.objects {
                println!(
                    "  would relink {} ({:?}, {} bytes) into {}/{}: {}",
                    o.original_path,
                    o.class,
                    o.size,
                    o.mount.mount_point.trim_end_matches('/'),
                    relink::CHECKPOINT_DIR,
                    how(o)
                );
            }
            for s in &p.snapshots {
                println!("  would snapshot {} with {:?}", s.mount_point.display(), s.backend);
            }
            if p.scan.objects.is_empty() {
                println!("  no unlinked files");
            }
        }
        take::Outcome::Taken(t) => {
            for n in &t.notes {
                eprintln!("snapckpt: note: {n}");
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&t.record)?);
            } else {
                let s = &t.stats;
                println!("checkpoint {} in {}", t.record.id, t.dir.display());
                println!(
                    "  {} task(s), {} unlinked object(s): {} linked, {} cloned, {} copied ({} bytes), {} recreated",
                    t.record.tasks.len(),
                    t.record.objects.len(),
                    s.linked,
                    s.cloned,
                    s.copied,
                    s.bytes_copied,
                    s.recreated
                );
                for sn in &t.record.snapshots {
                    println!("  snapshot: {}", sn.describe());
                }
                let tm = &t.record.timings;
                println!(
                    "  frozen {} ms (scan {} ms, relink {} ms, snapshot {} ms, dump {} ms)",
                    tm.frozen_ms, tm.scan_ms, tm.relink_ms, tm.snapshot_ms, tm.dump_ms
                );
                if let Some(k) = t.killed_in {
                    println!(
                        "  tasks killed after the checkpoint was published (exited in {} ms)",
                        k.as_millis()
                    );
                }
                if let Some(how) = &t.left_frozen {
                    println!("  tasks left frozen; to resume them: {how}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The image root for a checkpoint given as `id_or_path`; a path (with a `/`) needs none.
fn root_for(flag: Option<PathBuf>, id_or_path: &str) -> Result<PathBuf, String> {
    if id_or_path.contains('/') {
        return Ok(flag.unwrap_or_default());
    }
    image_root(flag, None)
}

fn cmd_restart(a: RestartArgs) -> Res {
    let root = root_for(a.image_root, &a.id)?;
    let dir = image::resolve(&root, &a.id)?;
    let opts = restart::RestartOptions {
        snapshot: a.snapshot,
        mounts: if a.host_mounts { restart::Mounts::Host } else { restart::Mounts::Private },
        mount_root: a.mount_root,
        exec: a.exec,
        exec_task: a.exec_task,
        criu: a.criu,
    };
    let working = EpipeWhileWorking::new();
    let r = restart::restart(&dir, &opts)?;
    drop(working);
    let ns = if r.private_ns { " (in the restored tasks' private mount namespace)" } else { "" };
    for m in &r.mounts {
        println!("mounted {} at {}{ns}", m.description, m.target.display());
    }
    if !r.pids.is_empty() {
        println!("restored tasks {:?} ({} unlinked object(s) handed back)", r.pids, r.objects);
    }
    for p in &r.left_in_place {
        println!("preserved file: {}", p.display());
    }
    if let Some(code) = r.exec_status {
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_list(a: ListArgs) -> Res {
    let root = image_root(a.image_root, None)?;
    let all = image::list(&root)?;
    if a.json {
        let mut v = Vec::with_capacity(all.len());
        for (p, r) in &all {
            v.push(match r {
                Ok(ck) => serde_json::to_value(ck)?,
                Err(e) => serde_json::json!({
                    "id": p.file_name().map(|n| n.to_string_lossy().into_owned()),
                    "path": p,
                    "error": e.to_string(),
                }),
            });
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if all.is_empty() {
        println!("no checkpoints in {}", root.display());
    }
    for (p, r) in all {
        match r {
            Ok(ck) => {
                let engine = match &ck.engine {
                    Engine::None => "files".to_string(),
                    Engine::Criu { version, .. } => format!("criu {version}"),
                };
                println!(
                    "{}  {}  {}  tasks {}  objects {}  {}",
                    ck.id,
                    snapckpt::sys::utc_compact(ck.created_unix),
                    engine,
                    ck.tasks.len(),
                    ck.objects.len(),
                    ck.job.as_deref().map(|j| format!("job {j}")).unwrap_or_default()
                );
                for s in &ck.snapshots {
                    let clones = snapckpt::snapshot::mounted_clones(s).map(|v| v.len()).unwrap_or(0);
                    println!(
                        "    snapshot {}{}",
                        s.describe(),
                        if clones > 0 {
                            format!(" ({clones} restart clone(s) mounted)")
                        } else {
                            String::new()
                        }
                    );
                }
            }
            Err(e) => println!("{}  (unreadable: {e})", p.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_delete(a: DeleteArgs) -> Res {
    let root = root_for(a.image_root, &a.id)?;
    let _working = EpipeWhileWorking::new();
    let dir = image::resolve(&root, &a.id)?;
    if let Err(e) = image::load(&dir) {
        if !a.force {
            return Err(format!("{e}\nthe record cannot be read: `snapckpt delete {} --force` removes the image directory anyway (then `snapckpt gc --mount MOUNT` its relinked names and snapshots)", a.id).into());
        }
        let id = cleanup::delete_unreadable(&dir).map_err(|e2| format!("{e}\n{e2}"))?;
        println!("deleted image directory {} (record unreadable: {e})", dir.display());
        println!(
            "its relinked names and snapshots are left: `snapckpt gc --mount MOUNT --id {id}` removes them"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ck = cleanup::delete(&dir, a.force)?;
    println!("deleted checkpoint {} ({} snapshot(s))", ck.id, ck.snapshots.len());
    Ok(ExitCode::SUCCESS)
}

fn cmd_gc(a: GcArgs) -> Res {
    let root = image_root(a.image_root, None)?;
    let template = Template::parse(a.template.as_deref().unwrap_or(relink::DEFAULT_TEMPLATE))?;
    if let Some(bad) = a.ids.iter().find(|i| !record::names::valid_id(i)) {
        return Err(format!("--id {bad:?} is not a checkpoint id (like 20260101T000000Z-abcd)").into());
    }
    let mut mounts = a.mounts.clone();
    if mounts.is_empty() {
        for (_, r) in image::list(&root)? {
            if let Ok(ck) = r {
                for o in &ck.objects {
                    let m = PathBuf::from(&o.mount.mount_point);
                    if !mounts.contains(&m) {
                        mounts.push(m);
                    }
                }
            }
        }
    }
    let _working = EpipeWhileWorking::new();
    let scope = if a.all {
        cleanup::GcScope::AllWithoutImage
    } else if !a.ids.is_empty() {
        cleanup::GcScope::Ids(a.ids.clone())
    } else {
        cleanup::GcScope::Failed
    };
    let rep = cleanup::gc(&mounts, &root, &template, &scope, &a.snapshot_dirs, a.dry_run)?;
    drop(_working);
    let verb = if a.dry_run { "would remove" } else { "removed" };
    for (id, names) in &rep.stale {
        for (m, n) in names {
            println!("{verb} {}/{}/{n} (checkpoint {id})", m.display(), relink::CHECKPOINT_DIR);
        }
    }
    for p in &rep.partial_dirs {
        println!("{verb} partial image {}", p.display());
    }
    for (id, s) in &rep.stale_snapshots {
        println!("{verb} snapshot {} (checkpoint {id})", s.describe());
    }
    for (m, n) in &rep.unknown {
        println!(
            "left alone {}/{}/{n}: not made by template {}",
            m.display(),
            relink::CHECKPOINT_DIR,
            template.as_str()
        );
    }
    for (id, n) in &rep.unclaimed {
        println!(
            "left alone {n} name(s)/snapshot(s) of checkpoint {id}: no image and no failed take of it in {} (another image root's?); `--id {id}` removes them",
            root.display()
        );
    }
    println!(
        "{} stale name(s), {} partial image(s), {} stale snapshot(s), {} name(s) of live checkpoints kept",
        rep.stale.values().map(Vec::len).sum::<usize>(),
        rep.partial_dirs.len(),
        rep.stale_snapshots.len(),
        rep.kept
    );
    for id in &a.ids {
        if !rep.stale.contains_key(id) && !rep.stale_snapshots.iter().any(|(i, _)| i == id) {
            println!("--id {id}: no relinked name or snapshot of it under the mounts searched");
        }
    }
    if mounts.is_empty() {
        println!(
            "no mount searched: none was given with --mount and no checkpoint in {} names one, so relinked names and snapshots were not looked for; `snapckpt gc --mount MOUNTPOINT` looks under a mount",
            root.display()
        );
        let ids: Vec<&str> = rep
            .partial_dirs
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.strip_prefix('.')?.rsplit_once('.').map(|(id, _)| id))
            .collect();
        if !ids.is_empty() && !a.dry_run {
            println!("names and snapshots those failed takes left are now found only by id: `snapckpt gc --mount MOUNTPOINT --id ID` (ID: {})", ids.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_scan(a: ScanArgs) -> Res {
    let working = EpipeWhileWorking::new();
    let sc = if a.all {
        scan::scan_lenient(&scan::all_pids())
    } else {
        let sel = selection(&a.sel, None, "give --pid PID [--tree], --cgroup PATH, or --all")?;
        let pids = snapckpt::tasks::resolve(&sel)?;
        if a.freeze {
            let m = snapckpt::tasks::FreezeMethod::for_selection(&sel, &pids)?;
            let f = snapckpt::tasks::freeze(m, Duration::from_secs(10))?;
            let r = scan::scan(&pids);
            f.thaw()?;
            r?
        } else {
            scan::scan(&pids)?
        }
    };
    drop(working);
    if a.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            tasks: &'a [record::Task],
            objects: &'a [record::Object],
        }
        println!("{}", serde_json::to_string_pretty(&Out { tasks: &sc.tasks, objects: &sc.objects })?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:<14} {:<12} {:<11} {:>5} {:>12} {:<10} PATH",
        "PID", "HOLDS", "CLASS", "KIND", "NLINK", "SIZE", "MOUNT"
    );
    for o in &sc.objects {
        for h in &o.holders {
            println!(
                "{:<8} {:<14} {:<12} {:<11} {:>5} {:>12} {:<10} {}",
                h.pid,
                h.what,
                kebab(&o.class),
                kebab(&o.kind),
                o.nlink,
                o.size,
                printable(&o.mount.mount_point),
                printable(&o.original_path)
            );
        }
    }
    println!("{} task(s), {} unlinked object(s)", sc.tasks.len(), sc.objects.len());
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(a: CheckArgs) -> Res {
    let mut bad = 0;
    let mut line = |st: St, what: &str, detail: String| {
        let mark = match st {
            St::Ok => " ok ",
            St::Warn => "warn",
            St::Fail => "FAIL",
        };
        println!("[{mark}] {what}: {detail}");
        if st == St::Fail {
            bad += 1;
        }
    };
    let root = nix::unistd::geteuid().is_root();
    line(
        St::ok_or(root, St::Fail),
        "running as root",
        if root { "yes".into() } else { "no: take/restart need root".into() },
    );
    let uname =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    line(St::Ok, "kernel", uname);
    let o2 = snapckpt::sys::openat2(libc::AT_FDCWD, "/", libc::O_PATH, 0, snapckpt::sys::RESOLVE_NO_SYMLINKS)
        .is_ok();
    line(
        St::ok_or(o2, St::Fail),
        "openat2 with RESOLVE_*",
        if o2 { "available".into() } else { "missing (needs Linux 5.6+)".into() },
    );
    let v2 = ["/sys/fs/cgroup/cgroup.freeze", "/sys/fs/cgroup/unified"].iter().any(|p| Path::new(p).exists())
        || Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1 = Path::new("/sys/fs/cgroup/freezer/freezer.state").exists()
        || Path::new("/sys/fs/cgroup/freezer").exists();
    line(
        St::ok_or(v1 || v2, St::Fail),
        "cgroup freezer",
        format!(
            "v2 {}, v1 {} (SIGSTOP is used for --pid without a cgroup)",
            if v2 { "present" } else { "absent" },
            if v1 { "present" } else { "absent" }
        ),
    );
    let fss = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs in ["btrfs", "xfs", "ext4"] {
        let have = fss.lines().any(|l| l.split_whitespace().last() == Some(fs));
        line(
            St::ok_or(have, St::Warn),
            &format!("filesystem {fs}"),
            if have { "supported by the kernel".into() } else { "not loaded (modprobe it)".into() },
        );
    }
    let dm = Path::new("/dev/mapper/control").exists()
        && std::fs::read_to_string("/proc/misc").map(|m| m.contains("device-mapper")).unwrap_or(false);
    let lvm = which("lvm");
    line(
        St::ok_or(lvm && dm, St::Warn),
        "LVM snapshots",
        format!(
            "lvm {}, device-mapper {}",
            if lvm { "found" } else { "not found" },
            if dm { "present" } else { "absent (LVM snapshots cannot work on this kernel)" }
        ),
    );
    match criu::find(a.criu.as_deref()) {
        Ok(p) => match criu::check(&p) {
            Ok((v, ok, out)) => line(
                St::ok_or(ok, St::Fail),
                "CRIU",
                format!("{} ({v}): criu check: {}", p.display(), out.lines().last().unwrap_or("")),
            ),
            Err(e) => line(St::Fail, "CRIU", e.to_string()),
        },
        Err(e) => line(St::Fail, "CRIU", e.to_string()),
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The verdict of one `check` line: `[warn]` reports a problem that only some uses meet.
#[derive(Clone, Copy, PartialEq)]
enum St {
    Ok,
    Warn,
    Fail,
}

impl St {
    fn ok_or(ok: bool, otherwise: St) -> St {
        if ok {
            St::Ok
        } else {
            otherwise
        }
    }
}

/// The name serde gives an enum value (the same word as in the JSON record).
fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|x| x.as_str().map(str::to_string)).unwrap_or_default()
}

/// A path for a one-line-per-entry table: control characters escaped (`\n`, `\t`, ...).
fn printable(p: &str) -> String {
    p.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn which(name: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        || ["/sbin", "/usr/sbin"].iter().any(|d| Path::new(d).join(name).is_file())
}
