//! The `snapckpt` command: a thin layer over the library. Parses arguments and job files,
//! calls one pipeline function per subcommand, and prints the result.

use clap::{Args, Parser, Subcommand, ValueEnum};
use snapckpt::image::{self, Engine};
use snapckpt::job::{EngineKind, Job};
use snapckpt::relink::{self, Template};
use snapckpt::snapshot::{Backend, FsSpec};
use snapckpt::tasks::Selection;
use snapckpt::{cleanup, criu, restart, scan, take};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "snapckpt", version, about = "Checkpoint/restart that relinks unlinked open files and lets a filesystem snapshot carry their data")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Freeze tasks, relink their unlinked files, snapshot, dump, thaw; write an image.
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
    /// Process to checkpoint.
    #[arg(long, conflicts_with = "cgroup")]
    pid: Option<i32>,
    /// With --pid: include all descendants.
    #[arg(long, requires = "pid")]
    tree: bool,
    /// A cgroup (v1 freezer hierarchy or v2): every task in it and below.
    #[arg(long)]
    cgroup: Option<PathBuf>,
}

#[derive(Copy, Clone, ValueEnum)]
enum BackendArg {
    Btrfs,
    Lvm,
    None,
}

#[derive(Copy, Clone, ValueEnum)]
enum EngineArg {
    None,
    Criu,
}

#[derive(Args)]
struct TakeArgs {
    #[command(flatten)]
    sel: Select,
    /// TOML job file (flags given here override it).
    #[arg(long)]
    job: Option<PathBuf>,
    /// Where image directories go.
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Relinked name template (%t checkpoint id, %n counter, XXXXXX random).
    #[arg(long)]
    template: Option<String>,
    /// Give up freezing after this many milliseconds.
    #[arg(long)]
    freeze_timeout: Option<u64>,
    /// Snapshot every filesystem that holds relinked files with this backend.
    #[arg(long, value_enum)]
    snapshot: Option<BackendArg>,
    /// Keep the relinked names on the live filesystems after the snapshot.
    #[arg(long)]
    keep_links: bool,
    /// Process engine: none (files only) or criu.
    #[arg(long, value_enum)]
    engine: Option<EngineArg>,
    /// CRIU binary.
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
    /// Print the record as JSON.
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
    /// Mount the clones under this directory instead of over the original mount points.
    #[arg(long)]
    mount_root: Option<PathBuf>,
    #[arg(long)]
    image_root: Option<PathBuf>,
    #[arg(long)]
    criu: Option<PathBuf>,
    /// Files-only checkpoints: whose fds --exec gets (default: the first task holding one).
    #[arg(long)]
    exec_task: Option<i32>,
    /// Files-only checkpoints: run CMD holding the files at their recorded fds, flags, offsets.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    exec: Option<Vec<String>>,
}

#[derive(Args)]
struct ListArgs {
    #[arg(long)]
    image_root: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeleteArgs {
    /// Checkpoint id or image directory.
    id: String,
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Unmount restart clones that are still mounted; remove an image directory whose record
    /// cannot be read (its names and snapshots are then left to `gc`).
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GcArgs {
    /// Mount points to look under (lost+found/checkpoint of each). Default: every mount
    /// named by a checkpoint in the image root.
    #[arg(long = "mount")]
    mounts: Vec<PathBuf>,
    #[arg(long)]
    image_root: Option<PathBuf>,
    #[arg(long)]
    template: Option<String>,
    /// Remove the names and snapshots of these checkpoint ids (and nothing else).
    #[arg(long = "id", conflicts_with = "all")]
    ids: Vec<String>,
    /// Remove the names and snapshots of every checkpoint id without an image in this image
    /// root. By default only those of takes that failed or died in it are removed: ids with no
    /// trace there may belong to another image root.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct ScanArgs {
    #[command(flatten)]
    sel: Select,
    /// Every process on the system (like `lsof +L1`).
    #[arg(long)]
    all: bool,
    /// Freeze the tasks while scanning (not with --all).
    #[arg(long)]
    freeze: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    #[arg(long)]
    criu: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__watchdog") {
        return ExitCode::from(snapckpt::tasks::watchdog_main(&args[2..]) as u8);
    }
    let cli = Cli::parse();
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

fn image_root(flag: Option<PathBuf>, job: Option<&Job>) -> PathBuf {
    flag.or_else(|| job.and_then(|j| j.image_root.clone()))
        .or_else(|| std::env::var_os("SNAPCKPT_IMAGE_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(take::DEFAULT_IMAGE_ROOT))
}

fn selection(s: &Select, job: Option<&Job>) -> Result<Selection, String> {
    if let Some(pid) = s.pid {
        return Ok(Selection::Pid { pid, tree: s.tree });
    }
    if let Some(c) = &s.cgroup {
        return Ok(Selection::Cgroup(c.clone()));
    }
    if let Some(j) = job {
        if let Some(pid) = j.tasks.pid {
            return Ok(Selection::Pid { pid, tree: j.tasks.tree });
        }
        if let Some(c) = &j.tasks.cgroup {
            return Ok(Selection::Cgroup(c.clone()));
        }
    }
    Err("no tasks selected: give --pid PID [--tree], --cgroup PATH, or a job file with [tasks]".into())
}

fn cmd_take(a: TakeArgs) -> Res {
    let job = a.job.as_deref().map(Job::load).transpose()?;
    let j = job.as_ref();
    let sel = selection(&a.sel, j)?;
    let tpl = a.template.clone().or_else(|| j.and_then(|j| j.relink.template.clone())).unwrap_or_else(|| relink::DEFAULT_TEMPLATE.into());
    let template = Template::parse(&tpl)?;
    let filesystems: Vec<FsSpec> = j
        .map(|j| j.filesystem.iter().map(|f| FsSpec { mount_point: f.mount.clone(), backend: f.snapshot, snapshot_dir: f.snapshot_dir.clone(), lvm_size: f.lvm_size.clone() }).collect())
        .unwrap_or_default();
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
        image_root: image_root(a.image_root, j),
        template,
        freeze_timeout: Duration::from_millis(a.freeze_timeout.or(j.and_then(|j| j.freeze.timeout_ms)).unwrap_or(10_000)),
        filesystems,
        auto_snapshot,
        keep_links: a.keep_links || j.is_some_and(|j| j.snapshot.keep_links),
        engine,
        job_name: j.and_then(|j| j.name.clone()),
        dry_run: a.dry_run,
        progress: !a.json,
    };
    match take::take(&opts)? {
        take::Outcome::DryRun(p) => {
            println!("dry run: would freeze {} task(s) with {}: {:?}", p.pids.len(), p.freezer, p.pids);
            for o in &p.scan.objects {
                let how = match (o.nlink, o.kind) {
                    (_, image::FileKind::Directory) | (0, image::FileKind::Fifo | image::FileKind::CharDevice | image::FileKind::BlockDevice | image::FileKind::Socket) => "recreate",
                    (0, _) => "link if O_TMPFILE, else clone or copy",
                    _ => "hard link",
                };
                println!("  would relink {} ({:?}, {} bytes) into {}/{}: {how}", o.original_path, o.class, o.size, o.mount.mount_point.trim_end_matches('/'), relink::CHECKPOINT_DIR);
            }
            for s in &p.snapshots {
                println!("  would snapshot {} with {:?}", s.mount_point.display(), s.backend);
            }
            if p.scan.objects.is_empty() {
                println!("  no unlinked files");
            }
        }
        take::Outcome::Taken(t) => {
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
                println!("  frozen {} ms (scan {} ms, relink {} ms, snapshot {} ms, dump {} ms)", tm.frozen_ms, tm.scan_ms, tm.relink_ms, tm.snapshot_ms, tm.dump_ms);
                if let Some(k) = t.killed_in {
                    println!("  tasks killed after the checkpoint was published (exited in {} ms)", k.as_millis());
                }
                if let Some(how) = &t.left_frozen {
                    println!("  tasks left frozen; to resume them: {how}");
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_restart(a: RestartArgs) -> Res {
    let root = image_root(a.image_root, None);
    let dir = image::resolve(&root, &a.id)?;
    let opts = restart::RestartOptions { snapshot: a.snapshot, mount_root: a.mount_root, exec: a.exec, exec_task: a.exec_task, criu: a.criu };
    let r = restart::restart(&dir, &opts)?;
    for m in &r.mounts {
        println!("mounted {} at {}", m.description, m.target.display());
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
    let root = image_root(a.image_root, None);
    let all = image::list(&root)?;
    if a.json {
        let v: Vec<_> = all.iter().filter_map(|(_, r)| r.as_ref().ok()).collect();
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
                    println!("    snapshot {}{}", s.describe(), if clones > 0 { format!(" ({clones} restart clone(s) mounted)") } else { String::new() });
                }
            }
            Err(e) => println!("{}  (unreadable: {e})", p.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_delete(a: DeleteArgs) -> Res {
    let root = image_root(a.image_root, None);
    let dir = image::resolve(&root, &a.id)?;
    if let Err(e) = image::load(&dir) {
        if !a.force {
            return Err(format!("{e}\nthe record cannot be read: `snapckpt delete {} --force` removes the image directory anyway (then `snapckpt gc --mount MOUNT` its relinked names and snapshots)", a.id).into());
        }
        let id = cleanup::delete_unreadable(&dir).map_err(|e2| format!("{e}\n{e2}"))?;
        println!("deleted image directory {} (record unreadable: {e})", dir.display());
        println!("its relinked names and snapshots are left: `snapckpt gc --mount MOUNT --id {id}` removes them");
        return Ok(ExitCode::SUCCESS);
    }
    let ck = cleanup::delete(&dir, a.force)?;
    println!("deleted checkpoint {} ({} snapshot(s))", ck.id, ck.snapshots.len());
    Ok(ExitCode::SUCCESS)
}

fn cmd_gc(a: GcArgs) -> Res {
    let root = image_root(a.image_root, None);
    let template = Template::parse(a.template.as_deref().unwrap_or(relink::DEFAULT_TEMPLATE))?;
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
        if mounts.is_empty() {
            return Err("no mounts to look under: give --mount MOUNTPOINT".into());
        }
    }
    let scope = if a.all {
        cleanup::GcScope::AllWithoutImage
    } else if !a.ids.is_empty() {
        cleanup::GcScope::Ids(a.ids.clone())
    } else {
        cleanup::GcScope::Failed
    };
    let rep = cleanup::gc(&mounts, &root, &template, &scope, a.dry_run)?;
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
        println!("left alone {}/{}/{n}: not made by template {}", m.display(), relink::CHECKPOINT_DIR, template.as_str());
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
    Ok(ExitCode::SUCCESS)
}

fn cmd_scan(a: ScanArgs) -> Res {
    let sc = if a.all {
        scan::scan_lenient(&scan::all_pids())
    } else {
        let sel = selection(&a.sel, None)?;
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
    if a.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            tasks: &'a [image::Task],
            objects: &'a [image::Object],
        }
        println!("{}", serde_json::to_string_pretty(&Out { tasks: &sc.tasks, objects: &sc.objects })?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<8} {:<14} {:<12} {:<11} {:>5} {:>12} {:<10} PATH", "PID", "HOLDS", "CLASS", "KIND", "NLINK", "SIZE", "MOUNT");
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
    let mut line = |ok: bool, what: &str, detail: String| {
        println!("[{}] {what}: {detail}", if ok { " ok " } else { "FAIL" });
        if !ok {
            bad += 1;
        }
    };
    let root = nix::unistd::geteuid().is_root();
    line(root, "running as root", if root { "yes".into() } else { "no: take/restart need root".into() });
    let uname = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    line(true, "kernel", uname);
    let o2 = snapckpt::sys::openat2(libc::AT_FDCWD, "/", libc::O_PATH, 0, snapckpt::sys::RESOLVE_NO_SYMLINKS).is_ok();
    line(o2, "openat2 with RESOLVE_*", if o2 { "available".into() } else { "missing (needs Linux 5.6+)".into() });
    let v2 = ["/sys/fs/cgroup/cgroup.freeze", "/sys/fs/cgroup/unified"].iter().any(|p| Path::new(p).exists()) || Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let v1 = Path::new("/sys/fs/cgroup/freezer/freezer.state").exists() || Path::new("/sys/fs/cgroup/freezer").exists();
    line(v1 || v2, "cgroup freezer", format!("v2 {}, v1 {} (SIGSTOP is used for --pid without a cgroup)", if v2 { "present" } else { "absent" }, if v1 { "present" } else { "absent" }));
    let fss = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    for fs in ["btrfs", "xfs", "ext4"] {
        let have = fss.lines().any(|l| l.split_whitespace().last() == Some(fs));
        line(true, &format!("filesystem {fs}"), if have { "supported by the kernel".into() } else { "not loaded (modprobe it)".into() });
    }
    let dm = Path::new("/dev/mapper/control").exists() && std::fs::read_to_string("/proc/misc").map(|m| m.contains("device-mapper")).unwrap_or(false);
    let lvm = which("lvm");
    line(true, "LVM snapshots", format!("lvm {}, device-mapper {}", if lvm { "found" } else { "not found" }, if dm { "present" } else { "absent (LVM snapshots cannot work on this kernel)" }));
    match criu::find(a.criu.as_deref()) {
        Ok(p) => match criu::check(&p) {
            Ok((v, ok, out)) => line(ok, "CRIU", format!("{} ({v}): criu check: {}", p.display(), out.lines().last().unwrap_or(""))),
            Err(e) => line(false, "CRIU", e.to_string()),
        },
        Err(e) => line(false, "CRIU", e.to_string()),
    }
    Ok(if bad == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
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
