//! The `snapckpt` command: a thin layer over the library. Defines the subcommands for clap
//! (their options are [`snapckpt::config::args`]), resolves what was parsed into options
//! ([`snapckpt::config`]), calls one pipeline function per subcommand, and prints the result.

use clap::{CommandFactory, Parser, Subcommand};
use snapckpt::config::{
    self, CheckArgs, DeleteArgs, Env, GcArgs, ListArgs, RestartArgs, ScanArgs, ScanTarget, TakeArgs,
};
use snapckpt::config::{CompletionsArgs, InspectArgs, ManArgs, PruneArgs};
use snapckpt::image;
use snapckpt::record;
use snapckpt::{check, cleanup, relink, restart, scan, take, userhooks};
use std::ffi::OsStr;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "snapckpt",
    version,
    about = "Checkpoint/restart that relinks unlinked open files and lets a filesystem snapshot carry their data"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Say nothing on stderr but warnings and errors (no progress).
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Name each step on stderr as it runs; twice: also show CRIU's log (level 4) as it is written.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
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
    // ---- operator commands: grouped here for merges ----
    /// Show one checkpoint in full: process tree, unlinked objects, snapshots, versions, timings.
    Inspect(InspectArgs),
    /// Delete the checkpoints a retention policy does not keep (--keep-last, --keep-within).
    Prune(PruneArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (or write every page into a directory with --dir).
    Man(ManArgs),
    /// Write a checkpoint as one stream (record, CRIU image, btrfs send of its snapshots).
    Export(config::ExportArgs),
    /// Make a local checkpoint of an export stream (verified, snapshots received).
    Import(config::ImportArgs),
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
    if let Some(code) = internal(&args) {
        return ExitCode::from(code as u8);
    }
    let cli = Cli::parse_from(args);
    snapckpt::ui::set_level(if cli.quiet { -1 } else { cli.verbose.min(2) as i8 });
    let env = Env::from_process();
    let r = match cli.cmd {
        Cmd::Take(a) => cmd_take(a, &env),
        Cmd::Restart(a) => cmd_restart(a, &env),
        Cmd::List(a) => cmd_list(a, &env),
        Cmd::Delete(a) => cmd_delete(a, &env),
        Cmd::Gc(a) => cmd_gc(a, &env),
        Cmd::Scan(a) => cmd_scan(a),
        Cmd::Check(a) => cmd_check(a, &env),
        Cmd::Inspect(a) => cmd_inspect(a, &env),
        Cmd::Prune(a) => cmd_prune(a, &env),
        Cmd::Completions(a) => cmd_completions(a),
        Cmd::Man(a) => cmd_man(a),
        Cmd::Export(a) => cmd_migrate(config::export_options(a, &env).map(Migrate::Export)),
        Cmd::Import(a) => cmd_migrate(config::import_options(a, &env).map(Migrate::Import)),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("snapckpt: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The hidden subcommands of a `restart --private-pids` (the new pid namespace's init, criu
/// run in it): their exit status, or None for an ordinary command line.
fn internal(args: &[std::ffi::OsString]) -> Option<i32> {
    use snapckpt::restart::pidns;
    let which = args.get(1)?.to_str()?;
    let run: fn(&[String]) -> i32 = match which {
        pidns::INIT_ARG => pidns::init_main,
        pidns::ENTER_ARG => pidns::enter_main,
        _ => return None,
    };
    let Some(rest) =
        args[2..].iter().map(|a| a.to_str().map(str::to_string)).collect::<Option<Vec<String>>>()
    else {
        eprintln!("snapckpt {which}: arguments are not valid UTF-8");
        return Some(2);
    };
    Some(run(&rest))
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

fn cmd_take(a: TakeArgs, env: &Env) -> Res {
    let (json, print_stats) = (a.json, a.print_stats);
    let opts = config::take_options(a, env)?;
    snapckpt::preflight::take(&opts)?;
    let working = EpipeWhileWorking::new();
    let started = std::time::Instant::now();
    let outcome = take::take(&opts).inspect_err(|e| {
        if let take::TakeError::Undone { warnings, .. } = e {
            for w in warnings {
                eprintln!("snapckpt: warning: {w}");
            }
        }
    })?;
    drop(working);
    match outcome {
        take::Outcome::DryRun(p) if json => {
            println!("{}", serde_json::to_string_pretty(&snapckpt::report::plan::json(&opts, &p))?)
        }
        take::Outcome::DryRun(p) => print!("{}", snapckpt::report::plan::render(&opts, &p)),
        take::Outcome::Taken(t) => {
            for n in &t.notes {
                match n.strip_prefix("warning: ") {
                    Some(w) => eprintln!("snapckpt: warning: {w}"),
                    None if snapckpt::ui::level() >= 0 => eprintln!("snapckpt: note: {n}"),
                    None => {}
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&t.record)?);
            } else if print_stats {
                let v = take_stats(&t.record.timings, started.elapsed());
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_taken(&t);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `take --print-stats`: snapckpt's stages and CRIU's statistics, in microseconds, with the
/// names podman's `--print-stats` uses (CRIU's own under `criu_statistics`).
fn take_stats(tm: &record::Timings, total: std::time::Duration) -> serde_json::Value {
    let us = |ms: u64| ms * 1000;
    serde_json::json!({
        "take_duration": total.as_micros() as u64,
        "writeback_time": tm.writeback_us,
        "writeback_bytes": tm.writeback_bytes,
        "writeback_rounds": tm.writeback_rounds,
        "writeback_left_bytes": tm.writeback_left_bytes,
        "freezing_time": tm.freezing_us,
        "frozen_time": tm.frozen_us,
        "scan_time": us(tm.scan_ms),
        "relink_time": us(tm.relink_ms),
        "snapshot_time": us(tm.snapshot_ms),
        "dump_time": us(tm.dump_ms),
        "criu_statistics": tm.criu,
        "pre_dump_time": us(tm.pre_dump_ms),
        "pre_dump_rounds": tm.pre_dump,
    })
}

fn print_taken(t: &take::Taken) {
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
    if tm.writeback_rounds > 0 {
        println!(
            "  written back before the freeze: {} in {} ms, {} round(s){}",
            human_bytes(tm.writeback_bytes),
            tm.writeback_ms,
            tm.writeback_rounds,
            if tm.writeback_left_bytes > 0 {
                format!(", {} still dirty after it", human_bytes(tm.writeback_left_bytes))
            } else {
                String::new()
            }
        );
    }
    if !tm.pre_dump.is_empty() {
        let each: Vec<String> = tm
            .pre_dump
            .iter()
            .map(|r| {
                let pages = r.stats.as_ref().map_or("?".into(), |s| s.pages_written.to_string());
                format!("{} {pages} pages in {} ms", r.dir, r.duration_us / 1000)
            })
            .collect();
        println!(
            "  pre-dump before the freeze: {} round(s) in {} ms: {}",
            tm.pre_dump.len(),
            tm.pre_dump_ms,
            each.join(", ")
        );
    }
    if let Some(c) = &tm.criu {
        println!(
            "  CRIU: frozen {} us (freezing {} us), memory dump {} us, write {} us, pages scanned {}, written {}",
            c.frozen_time, c.freezing_time, c.memdump_time, c.memwrite_time, c.pages_scanned, c.pages_written
        );
    }
    if let Some(k) = t.killed_in {
        println!("  tasks killed after the checkpoint was published (exited in {} ms)", k.as_millis());
    }
    if let Some(how) = &t.left_frozen {
        println!("  tasks left frozen; to resume them: {how}");
    }
}

fn cmd_restart(a: RestartArgs, env: &Env) -> Res {
    snapckpt::preflight::require_root("restart")?;
    let print_stats = a.print_stats;
    let c = config::restart_options(a, env)?;
    let ck = image::load(&c.dir)?;
    let ctx = userhooks::Context::of_record(&ck, &c.dir);
    userhooks::run(&c.hooks, userhooks::Point::PreRestart, &ctx)?;
    let working = EpipeWhileWorking::new();
    let started = std::time::Instant::now();
    let r = restart::restart(&c.dir, &c.options)?;
    let total = started.elapsed();
    drop(working);
    let host_pids = r.pid_ns.as_ref().map_or(&r.pids, |n| &n.host_pids);
    let post = userhooks::Context { pids: host_pids.clone(), ..ctx };
    warn(userhooks::run_post(&c.hooks, userhooks::Point::PostRestart, &post));
    // With --exec the command's output is on stdout: snapckpt's own lines go to stderr.
    let exec = c.options.exec.is_some();
    let say = |l: String| if exec || c.json { eprintln!("snapckpt: {l}") } else { println!("{l}") };
    let ns = if r.private_ns { " (in the restored tasks' private mount namespace)" } else { "" };
    for m in &r.mounts {
        say(format!("mounted {} at {}{ns}", m.description, m.target.display()));
    }
    if !r.pids.is_empty() {
        say(format!("restored tasks {:?} ({} unlinked object(s) handed back)", r.pids, r.objects));
    }
    if let Some(n) = &r.pid_ns {
        say(format!(
            "in a new pid namespace: host pids {:?} (its init, pid 1 there: host pid {})",
            n.host_pids, n.init
        ));
    }
    if snapckpt::ui::level() >= 0 {
        r.notes.iter().for_each(|n| eprintln!("snapckpt: note: {n}"));
    }
    for p in &r.left_in_place {
        say(format!("preserved file: {}", p.display()));
    }
    if c.json {
        println!("{}", serde_json::to_string_pretty(&snapckpt::report::restarted_json(&ck.id, &r))?);
    }
    if print_stats {
        let v = serde_json::json!({
            "restart_duration": total.as_micros() as u64,
            "runtime_restore_duration": r.restore_time.as_micros() as u64,
            "criu_statistics": r.criu_stats,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    if let Some(code) = r.exec_status {
        return Ok(ExitCode::from(code.clamp(0, 255) as u8));
    }
    Ok(ExitCode::SUCCESS)
}

fn warn(w: Option<String>) {
    if let Some(w) = w {
        eprintln!("snapckpt: warning: {w}");
    }
}

fn cmd_list(a: ListArgs, env: &Env) -> Res {
    let o = config::list_options(a, env)?;
    let rows = snapckpt::report::list::rows(&o.image_root, snapckpt::sys::now_unix())?;
    if o.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("no checkpoints in {}", o.image_root.display());
    } else {
        print!("{}", snapckpt::report::list::render(&rows));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_delete(a: DeleteArgs, env: &Env) -> Res {
    snapckpt::preflight::require_root("delete")?;
    let o = config::delete_options(a, env)?;
    let _working = EpipeWhileWorking::new();
    if let Err(e) = image::load(&o.dir) {
        if !o.force {
            return Err(format!("{e}\nthe record cannot be read: `snapckpt delete {} --force` removes the image directory anyway (then `snapckpt gc --mount MOUNT` its relinked names and snapshots)", o.id).into());
        }
        let id = cleanup::delete_unreadable(&o.dir).map_err(|e2| format!("{e}\n{e2}"))?;
        println!("deleted image directory {} (record unreadable: {e})", o.dir.display());
        println!(
            "its relinked names and snapshots are left: `snapckpt gc --mount MOUNT --id {id}` removes them"
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ck = cleanup::delete(&o.dir, o.force)?;
    warn(userhooks::run_post(
        &o.hooks,
        userhooks::Point::PostDelete,
        &userhooks::Context::of_record(&ck, &o.dir),
    ));
    if o.json {
        let v = serde_json::json!({ "deleted": ck.id, "path": o.dir, "snapshots": ck.snapshots.len() });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("deleted checkpoint {} ({} snapshot(s))", ck.id, ck.snapshots.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_gc(a: GcArgs, env: &Env) -> Res {
    let o = config::gc_options(a, env)?;
    if !o.dry_run {
        snapckpt::preflight::require_root("gc")?;
    }
    let working = EpipeWhileWorking::new();
    let rep = cleanup::gc(&o.mounts, &o.image_root, &o.template, &o.scope, &o.snapshot_dirs, o.dry_run)?;
    drop(working);
    if o.json {
        println!("{}", serde_json::to_string_pretty(&snapckpt::report::gc_json(&o, &rep))?);
        return Ok(ExitCode::SUCCESS);
    }
    let verb = if o.dry_run { "would remove" } else { "removed" };
    let ckdir = relink::CHECKPOINT_DIR;
    for (id, names) in &rep.stale {
        for (m, n) in names {
            println!("{verb} {}/{ckdir}/{n} (checkpoint {id})", m.display());
        }
    }
    for p in &rep.partial_dirs {
        println!("{verb} partial image {}", p.display());
    }
    for (id, s) in &rep.stale_snapshots {
        println!("{verb} snapshot {} (checkpoint {id})", s.describe());
    }
    for c in &rep.idle_clones {
        println!("{verb} restart clone {} (mounted nowhere: its restart ended)", c.display());
    }
    for (m, n) in &rep.unknown {
        println!("left alone {}/{ckdir}/{n}: not made by template {}", m.display(), o.template.as_str());
    }
    for (id, n) in &rep.unclaimed {
        println!(
            "left alone {n} name(s)/snapshot(s) of checkpoint {id}: no image and no failed take of it in {} (another image root's?); `--id {id}` removes them",
            o.image_root.display()
        );
    }
    println!(
        "{} stale name(s), {} partial image(s), {} stale snapshot(s), {} name(s) of live checkpoints kept",
        rep.stale.values().map(Vec::len).sum::<usize>(),
        rep.partial_dirs.len(),
        rep.stale_snapshots.len(),
        rep.kept
    );
    for id in &o.ids {
        if !rep.stale.contains_key(id) && !rep.stale_snapshots.iter().any(|(i, _)| i == id) {
            println!("--id {id}: no relinked name or snapshot of it under the mounts searched");
        }
    }
    if o.mounts.is_empty() {
        print_no_mount_searched(&o, &rep);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_no_mount_searched(o: &config::GcOptions, rep: &cleanup::GcReport) {
    println!(
        "no mount searched: none was given with --mount and no checkpoint in {} names one, so relinked names and snapshots were not looked for; `snapckpt gc --mount MOUNTPOINT` looks under a mount",
        o.image_root.display()
    );
    let ids: Vec<&str> = rep
        .partial_dirs
        .iter()
        .filter_map(|p| p.file_name()?.to_str()?.strip_prefix('.')?.rsplit_once('.').map(|(id, _)| id))
        .collect();
    if !ids.is_empty() && !o.dry_run {
        println!("names and snapshots those failed takes left are now found only by id: `snapckpt gc --mount MOUNTPOINT --id ID` (ID: {})", ids.join(", "));
    }
}

fn cmd_scan(a: ScanArgs) -> Res {
    let o = config::scan_options(a)?;
    let working = EpipeWhileWorking::new();
    let sc = match &o.target {
        ScanTarget::All => {
            if !nix::unistd::geteuid().is_root() {
                eprintln!("snapckpt: warning: not root: scan --all sees only the tasks it may inspect (your own); run it as root to scan every task");
            }
            scan::scan_lenient(&scan::all_pids())
        }
        ScanTarget::Tasks { selection, freeze } => {
            let pids = snapckpt::tasks::resolve(selection)?;
            if *freeze {
                let m = snapckpt::tasks::FreezeMethod::for_selection(selection, &pids)?;
                let f = snapckpt::tasks::freeze(m, config::SCAN_FREEZE_TIMEOUT)?;
                let r = scan::scan(&pids);
                f.thaw()?;
                r?
            } else {
                scan::scan(&pids)?
            }
        }
    };
    drop(working);
    if o.json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            tasks: &'a [record::Task],
            objects: &'a [record::Object],
        }
        println!("{}", serde_json::to_string_pretty(&Out { tasks: &sc.tasks, objects: &sc.objects })?);
        return Ok(ExitCode::SUCCESS);
    }
    print_scan(&sc);
    Ok(ExitCode::SUCCESS)
}

fn print_scan(sc: &scan::Scan) {
    print!("{}", snapckpt::report::scan::render(sc));
}

fn cmd_check(a: CheckArgs, env: &Env) -> Res {
    let lines = check::check(&config::check_options(a, env));
    for l in &lines {
        println!("{l}");
    }
    Ok(if check::failed(&lines) { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn cmd_inspect(a: InspectArgs, env: &Env) -> Res {
    let o = config::inspect_options(a, env)?;
    let ck = image::load(&o.dir)?;
    let i = snapckpt::report::inspect::inspect(&o.dir, &ck, snapckpt::sys::now_unix());
    if o.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
    } else {
        print!("{}", snapckpt::report::inspect::render(&i));
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_prune(a: PruneArgs, env: &Env) -> Res {
    let c = config::prune_options(a, env)?;
    if !c.options.dry_run {
        snapckpt::preflight::require_root("prune")?;
    }
    let working = EpipeWhileWorking::new();
    let rep = snapckpt::prune::prune(&c.options)?;
    drop(working);
    rep.warnings.iter().for_each(|w| eprintln!("snapckpt: warning: {w}"));
    if c.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print!("{}", snapckpt::prune::render(&rep));
    }
    Ok(if rep.errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn cmd_completions(a: CompletionsArgs) -> Res {
    clap_complete::generate(a.shell, &mut Cli::command(), "snapckpt", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

fn cmd_man(a: ManArgs) -> Res {
    let cmd = Cli::command();
    match a.dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            clap_mangen::generate_to(cmd, &d)?;
        }
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `export` or `import`, resolved.
enum Migrate {
    Export(snapckpt::migrate::ExportOptions),
    Import(snapckpt::migrate::ImportOptions),
}

/// Export or import; the summary goes to stderr for an export (its stdout may be the stream).
fn cmd_migrate(o: Result<Migrate, config::ConfigError>) -> Res {
    let _working = EpipeWhileWorking::new();
    match o? {
        Migrate::Export(o) => snapckpt::migrate::export(&o)?.summary().iter().for_each(|l| eprintln!("{l}")),
        Migrate::Import(o) => snapckpt::migrate::import(&o)?.summary().iter().for_each(|l| println!("{l}")),
    }
    Ok(ExitCode::SUCCESS)
}

/// `1.5 GiB`, `12.0 MiB`, `512 B`.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
