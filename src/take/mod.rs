//! `snapckpt take`: freeze, scan, relink, snapshot, dump, thaw, and write the image.
//!
//! Every way out of [`take`] leaves the tasks thawed (the [`Frozen`](crate::tasks::Frozen) guard
//! and its watchdog see to that even when snapckpt is killed), removes the relinked names and
//! snapshots of a failed take, and leaves either a whole image directory or none: the image is
//! built as `<root>/.<id>.partial` and renamed to `<root>/<id>` only at the end.

use crate::image::{self, ImageDir};
use crate::record::{self, Checkpoint, Engine, Snapshot, Timings};
use crate::relink::{self, Relinker, Template};
use crate::snapshot::{self, Backend, FsSpec};
use crate::tasks::{self, FreezeMethod, Selection};
use crate::userhooks::{self, Point};
use crate::{criu, hooks, procfs, scan, sys, ui, writeback};

mod dump;
mod plan;
mod undo;
mod verify;
use dump::{criu_root, session_leader, take_snapshots};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use undo::gone;
use verify::Names;

#[derive(Debug, thiserror::Error)]
pub enum TakeError {
    #[error(transparent)]
    Tasks(#[from] tasks::TaskError),
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    #[error(transparent)]
    Relink(#[from] relink::RelinkError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Criu(#[from] criu::CriuError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    /// `--pre-dump` that cannot work here (the message says why and what to do).
    #[error("{0}")]
    PreDump(String),
    /// With CRIU and `--pid` without `--tree`: the process has children CRIU would dump too.
    #[error("pid {pid} has child processes and CRIU dumps a whole process tree: add --tree (or select its cgroup); nothing was changed")]
    HasChildren { pid: i32 },
    /// With CRIU: the selected tasks are not one process tree.
    #[error("CRIU dumps one process tree, but the selected tasks form {} trees (roots {roots:?}); select one tree (--pid P --tree) or put one tree in the cgroup", roots.len())]
    SeveralTrees { roots: Vec<i32> },
    /// A SIGSTOP freeze of a pid tree does not cover tasks forked meanwhile.
    #[error("tasks {pids:?} appeared while freezing; nothing was changed, run the take again (or select a cgroup)")]
    AppearedWhileFreezing { pids: Vec<i32> },
    /// A unix socket connected to (or waited on by) a process outside the checkpoint.
    #[error("pid {pid} fd {fd} is {what}; close the connection before the take (the server listening at its path is restored, clients can connect again after the restart), or checkpoint the peer's process with it (a common parent with --tree, or their cgroup); nothing was changed")]
    OutsidePeer { pid: i32, fd: String, what: String },
    /// A files-only take whose task exited before the checkpoint was kept.
    #[error("task {pid} exited during the take; nothing was kept, take it again if it runs")]
    ExitedBeforeKept { pid: i32 },
    #[error("{0}; the take was stopped, nothing was changed")]
    Hook(#[from] userhooks::HookError),
    /// `--strict-snapshots` and a filesystem the backend cannot snapshot.
    #[error("{mount_point}: the tasks use this filesystem and it cannot be snapshotted ({why}); nothing was changed. Drop --strict-snapshots to checkpoint it without a snapshot (its relinked names then stay on it and a restart consumes them)")]
    Strict { mount_point: String, why: String },
    /// With CRIU: the root of the tree is not a session leader.
    #[error("pid {pid} is not a session leader (its session is {sid}): CRIU would refuse to dump it after the freeze. Start the workload with `setsid` (e.g. `setsid CMD`), or take it with --shell-job if it is a job of a shell; nothing was changed")]
    NotSessionLeader { pid: i32, sid: i32 },
    /// With CRIU: a task whose session leader is outside its pid namespace.
    #[error("pid {pid}'s session leader is outside its pid namespace (a task started by a container runtime or a CI runner without a session of its own): CRIU cannot dump it, not even with --shell-job. Start the workload in a session of its own inside its namespace (`setsid CMD`, or the runtime's option for it); nothing was changed")]
    SessionOutsideNamespace { pid: i32 },
    /// A failure after CRIU killed the tasks (with established TCP connections): nothing undone.
    #[error("{source}. CRIU had already dumped and killed the tasks (--tcp-established); their image is kept in {} and the snapshots and relinked names are left in place: restart from them by hand with criu, or remove them with `snapckpt gc --id`", kept.display())]
    AfterKill { source: Box<TakeError>, kept: PathBuf },
    /// Something CRIU cannot dump, refused before the freeze.
    #[error("pid {pid} fd {fd} is {what}: {advice}; nothing was changed")]
    Unsupported { pid: i32, fd: String, what: String, advice: &'static str },
    /// The dump cannot be restarted as it is: not published, the tasks go on.
    #[error("the checkpoint could not be restarted, so it was not published and the tasks go on: {0}")]
    NotRestartable(String),
    /// A selected task exited while the take ran: what failed then is the consequence.
    #[error("task {pid} exited during the take, so it could not be checkpointed; {undone}. Take it again if it (or its job) still runs. What failed: {source}")]
    TaskExited { pid: i32, undone: String, source: Box<TakeError> },
    /// A failed take whose undo left something behind (named in `warnings`).
    #[error("{source}")]
    Undone { source: Box<TakeError>, warnings: Vec<String> },
    /// The checkpoint is complete but the tasks could not be killed (or left frozen) after it.
    #[error("checkpoint {} is complete, but ending its tasks failed: {source}. They may still be running: check them (kill them before restarting it)", dir.display())]
    Killing { dir: PathBuf, source: tasks::TaskError },
}

/// The process engine for a take.
#[derive(Debug, Clone)]
pub enum EngineOpts {
    /// Files only: relink (and snapshot), then let the tasks go on.
    None,
    /// Dump the tasks with CRIU; what happens to them after the image is published.
    Criu { path: PathBuf, after: AfterDump, flags: CriuFlags },
}

pub use crate::engine::{AfterDump, CriuFlags};

/// Everything a take needs to know.
#[derive(Debug, Clone)]
pub struct TakeOptions {
    pub selection: Selection,
    pub image_root: PathBuf,
    pub template: Template,
    pub freeze_timeout: Duration,
    /// Filesystems to snapshot no matter what they hold.
    pub filesystems: Vec<FsSpec>,
    /// Also snapshot, with this backend, every filesystem that holds a relinked object and is
    /// not listed in `filesystems`.
    pub auto_snapshot: Option<Backend>,
    /// Refuse when a filesystem the tasks use cannot be snapshotted with `auto_snapshot`.
    pub strict_snapshots: bool,
    /// Keep the relinked names on the live filesystems after the snapshot.
    pub keep_links: bool,
    /// How long the snapshot step may keep the tasks frozen ([`snapshot::take_within`]).
    pub snapshot_timeout: Duration,
    pub engine: EngineOpts,
    pub job_name: Option<String>,
    pub dry_run: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
    /// User hooks (pre-take, post-freeze, post-snapshot, post-take).
    pub hooks: userhooks::Hooks,
    /// Write back dirty data before the freeze ([`crate::writeback`]); `Policy::off()` skips it.
    pub writeback: writeback::Policy,
    /// CRIU pre-dump rounds before the freeze and the final dump ([`Tx::pre_dump`]); refused
    /// when the kernel cannot track memory changes.
    pub pre_dump: bool,
}

/// What a take produced.
#[derive(Debug)]
pub struct Taken {
    pub dir: PathBuf,
    pub record: Checkpoint,
    pub stats: relink::Stats,
    /// Tasks killed after publishing (CRIU without leave-running): how long they took to die.
    pub killed_in: Option<Duration>,
    /// Tasks left frozen (CRIU with leave-stopped): how to resume them.
    pub left_frozen: Option<String>,
    /// What the user should know (printed by the caller as notes).
    pub notes: Vec<String>,
}

/// The plan of a dry run.
#[derive(Debug)]
pub struct Plan {
    pub pids: Vec<i32>,
    pub freezer: String,
    pub scan: scan::Scan,
    pub snapshots: Vec<FsSpec>,
    /// How each filesystem the tasks use would be covered.
    pub coverage: Vec<record::FsCoverage>,
}

#[allow(clippy::large_enum_variant)] // one value per take
pub enum Outcome {
    Taken(Taken),
    DryRun(Plan),
}

/// Take a checkpoint: a transaction of named stages. Until the image is published every
/// failure runs the one undo ([`Tx::undo`]): snapshots deleted, relinked names removed, tasks
/// thawed; a SIGKILL of snapckpt is covered by the freezer's watchdog and by `gc`.
pub fn take(opts: &TakeOptions) -> Result<Outcome, TakeError> {
    let sel = select(opts)?;
    if opts.dry_run {
        return dry_run(opts, sel).map(Outcome::DryRun);
    }
    at_hook(opts, Point::PreTake, &sel.id, &opts.image_root.join(&sel.id), &[], &[])?;
    // The partial image directory, with a lock that `gc` respects while we run.
    let image = ImageDir::create(&opts.image_root, &sel.id)?;
    let mut tx = Tx {
        opts,
        sel,
        image,
        frozen: None,
        relinker: None,
        snaps: vec![],
        timings: Timings::default(),
        dumped_and_killed: false,
    };
    let staged = tx.run();
    match staged {
        Ok(done) => tx.finish(done).map(Outcome::Taken),
        Err(e) => Err(tx.fail(e)),
    }
}

/// What the stages before the freeze decided.
struct Selected {
    id: String,
    /// The selected tasks (again after the freeze).
    pids: Vec<i32>,
    now: u64,
    /// Nanoseconds within `now`'s second (orders takes of one second).
    now_ns: u32,
    method: FreezeMethod,
    criu_version: String,
    /// With CRIU: each task's pid namespaces, read once before the freeze (a task cannot
    /// change them): the session check, and the pids a restart maps to new host pids.
    ns: HashMap<i32, procfs::TaskNs>,
}

/// Select the tasks and check what can be checked before anything changes.
fn select(opts: &TakeOptions) -> Result<Selected, TakeError> {
    let (now, now_ns) = sys::now_unix_ns();
    let id = record::names::new_id(now);
    let pids = tasks::resolve(&opts.selection)?;
    let method = FreezeMethod::for_selection(&opts.selection, &pids)?;
    // Recorded in the image; read from CRIU's dump log after the dump (`Tx::checkpoint`): a
    // `criu --version` here would cost a process start (~10 ms) on every take.
    let criu_version = String::new();
    let mut ns = HashMap::new();
    if let EngineOpts::Criu { flags, .. } = &opts.engine {
        // CRIU dumps the whole tree under its root: a --pid selection without --tree whose
        // process has children would dump (and kill) tasks snapckpt neither froze nor scanned.
        if let tasks::Selection::Pid { pid, tree: false } = &opts.selection {
            if !tasks::children(*pid)?.is_empty() {
                return Err(TakeError::HasChildren { pid: *pid });
            }
        }
        let root = criu_root(&pids)?;
        let depth = procfs::TaskNs::my_depth();
        ns = pids.iter().filter_map(|&p| Some((p, procfs::TaskNs::read(p, depth)?))).collect();
        session_leader(&ns, root, flags.shell_job)?;
        verify::unsupported_fds(&pids)?;
    }
    Ok(Selected { id, pids, now, now_ns, method, criu_version, ns })
}

/// A dry run: freeze briefly for a consistent scan, plan, thaw.
fn dry_run(opts: &TakeOptions, sel: Selected) -> Result<Plan, TakeError> {
    let frozen = tasks::freeze(sel.method, opts.freeze_timeout)?;
    let pids = selection_after_freeze(opts, &frozen)?;
    let sc = scan::scan(&pids)?;
    let plan = plan::plan(opts, &sc)?;
    let freezer = frozen.method().describe();
    frozen.thaw()?;
    Ok(Plan { pids, freezer, scan: sc, snapshots: plan.specs, coverage: plan.coverage })
}

/// Tasks may have forked between the selection and the freeze: a SIGSTOP freeze of a pid
/// tree does not cover a new task, so the take is refused.
fn selection_after_freeze(opts: &TakeOptions, frozen: &tasks::Frozen) -> Result<Vec<i32>, TakeError> {
    let pids = tasks::resolve(&opts.selection)?;
    if let FreezeMethod::Sigstop(stopped) = frozen.method() {
        let new: Vec<i32> = pids.iter().copied().filter(|p| !stopped.contains(p)).collect();
        if !new.is_empty() {
            return Err(TakeError::AppearedWhileFreezing { pids: new });
        }
    }
    Ok(pids)
}

/// A take in progress: what the undo must reverse.
struct Tx<'a> {
    opts: &'a TakeOptions,
    sel: Selected,
    image: ImageDir,
    frozen: Option<tasks::Frozen>,
    relinker: Option<Relinker>,
    snaps: Vec<Snapshot>,
    timings: Timings,
    /// CRIU killed the tasks at the end of its dump (established TCP connections): from then
    /// on the snapshots and names are the only copy and are never undone.
    dumped_and_killed: bool,
}

/// The stages' result, ready to publish.
struct Staged {
    ck: Checkpoint,
    stats: relink::Stats,
    pids: Vec<i32>,
    notes: Vec<String>,
}

impl Tx<'_> {
    /// Every stage up to a complete record (not yet published).
    fn run(&mut self) -> Result<Staged, TakeError> {
        let pre_note = self.pre_freeze()?;
        let t0 = Instant::now();
        let method = self.sel.method.clone();
        let stage = ui::stage(self.opts.progress, &format!("freezing the tasks ({})", method.describe()));
        let frozen = self.frozen.insert(tasks::freeze(method, self.opts.freeze_timeout)?);
        stage.done();
        self.timings.freeze_ms = ms(t0.elapsed());
        hooks::point("take-frozen");
        let pids = selection_after_freeze(self.opts, frozen)?;
        self.sel.pids = pids.clone();
        at_hook(self.opts, Point::PostFreeze, &self.sel.id, self.image.path(), &pids, &[])?;

        let t1 = Instant::now();
        let mut sc = scan::scan(&pids)?;
        if let EngineOpts::Criu { .. } = &self.opts.engine {
            // what a restart needs to find tasks CRIU gives a new pid namespace; read now
            // only for a task that joined the cgroup after the selection
            for t in &mut sc.tasks {
                let ns = self.sel.ns.get(&t.pid).copied();
                t.ns_pid = ns
                    .or_else(|| procfs::TaskNs::read(t.pid, procfs::TaskNs::my_depth()))
                    .and_then(|n| n.own_pid);
            }
        }
        self.timings.scan_ms = ms(t1.elapsed());
        hooks::point("take-scanned");
        let plan = plan::plan(self.opts, &sc)?;

        let stats = self.relink(&mut sc, &plan)?;
        // Past this point a death of snapckpt relies on the watchdog: is it still there?
        self.frozen().check_watchdog()?;
        let engine = self.checkpoint(&sc, &pids, &plan)?;
        hooks::point("take-snapshotted");
        // A files-only checkpoint of a task that died meanwhile would restart nothing it had.
        let files_only = matches!(self.opts.engine, EngineOpts::None);
        if let Some(&dead) = pids.iter().find(|&&p| files_only && gone(p)) {
            return Err(TakeError::ExitedBeforeKept { pid: dead });
        }
        at_hook(self.opts, Point::PostSnapshot, &self.sel.id, self.image.path(), &pids, &self.snaps)?;
        let mut notes: Vec<String> = pre_note.into_iter().collect();
        notes.extend(plan::notes(&plan, self.opts.auto_snapshot.is_some()));
        let links_removed = self.drop_live_names(&sc.objects, false)?;

        let mut ck = Checkpoint::new(&self.sel.id, self.sel.now);
        ck.created_ns = Some(self.sel.now_ns);
        ck.job = self.opts.job_name.clone();
        ck.selection = self.opts.selection.describe();
        ck.freezer = freezer_record(self.frozen().method());
        ck.template = self.opts.template.as_str().to_string();
        ck.engine = engine;
        ck.tasks = sc.tasks;
        ck.objects = sc.objects;
        ck.snapshots = self.snaps.clone();
        ck.links_removed = links_removed;
        ck.filesystems = plan.coverage;
        if let Some(n) = verify::tmpfile_notes(&ck) {
            notes.push(n);
        }
        Ok(Staged { ck, stats, pids, notes })
    }

    /// What happens to the tasks once the checkpoint is published.
    fn after(&self) -> AfterDump {
        match &self.opts.engine {
            EngineOpts::Criu { after, .. } => *after,
            EngineOpts::None => AfterDump::Run,
        }
    }

    fn frozen(&self) -> &tasks::Frozen {
        self.frozen.as_ref().expect("frozen during the stages")
    }

    /// The stage before the freeze, tasks still running: refuse a pre-dump this kernel cannot
    /// do, write back what the frozen stages would flush ([`Tx::write_back`]), then the CRIU
    /// pre-dump rounds ([`Tx::pre_dump`]), closest to the freeze.
    fn pre_freeze(&mut self) -> Result<Option<String>, TakeError> {
        let criu = match (&self.opts.engine, self.opts.pre_dump) {
            (_, false) => None,
            (EngineOpts::Criu { path, .. }, true) => Some(path.clone()),
            (EngineOpts::None, true) => {
                return Err(TakeError::PreDump("--pre-dump needs --engine criu".into()))
            }
        };
        if let Some(c) = &criu {
            criu::pre_dump_check(c).map_err(TakeError::PreDump)?;
        }
        let note = self.write_back();
        if let Some(c) = &criu {
            self.pre_dump(c)?;
        }
        Ok(note)
    }

    /// CRIU's pre-dump rounds (tasks running; CRIU freezes them briefly for each), as many as
    /// [`criu::another_pre_dump`] says; the final dump then has the last round as parent and
    /// writes only what changed since. A failed round fails the take before anything was
    /// frozen or relinked.
    fn pre_dump(&mut self, path: &Path) -> Result<(), TakeError> {
        let EngineOpts::Criu { flags, .. } = &self.opts.engine else { return Ok(()) };
        let req = criu::PreDumpRequest {
            criu: path.to_path_buf(),
            pid: criu_root(&self.sel.pids)?,
            image_dir: self.image.path().to_path_buf(),
            timeout: flags.dump_timeout,
        };
        let t = Instant::now();
        let stage = ui::stage(self.opts.progress, "CRIU pre-dump rounds (tasks running)");
        let rounds = criu::pre_dump(&req, &mut |r| {
            let pages = r.stats.as_ref().map_or("?".into(), |s| s.pages_written.to_string());
            ui::step(&format!("pre-dump {}: {pages} pages written in {} ms", r.dir, r.duration_us / 1000));
            hooks::point("take-pre-dumped");
        })?;
        stage.done();
        self.timings.pre_dump_ms = ms(t.elapsed());
        self.timings.pre_dump = rounds;
        Ok(())
    }

    /// Write back what the frozen stages would flush ([`writeback`]): the orphans that relink
    /// will clone or copy and the filesystems that will be snapshotted, found by a read-only
    /// scan of the running tasks. A failed write-back is a note, not an error: the frozen
    /// stages flush whatever is left.
    fn write_back(&mut self) -> Option<String> {
        if !self.opts.writeback.enabled() {
            return None;
        }
        let Ok(pids) = tasks::resolve(&self.opts.selection) else { return None };
        let sc = scan::scan_lenient(&pids);
        let mut files: Vec<PathBuf> = sc
            .objects
            .iter()
            .filter(|o| o.class == record::Unlinked::Orphan)
            .filter_map(|o| o.holders.first().map(|h| h.what.proc_path(h.pid)))
            .collect();
        let mut mounts: Vec<PathBuf> = self.opts.filesystems.iter().map(|s| s.mount_point.clone()).collect();
        if self.opts.auto_snapshot.is_some() {
            for o in &sc.objects {
                let mp = PathBuf::from(&o.mount.mount_point);
                if !mounts.contains(&mp) {
                    mounts.push(mp);
                }
            }
        }
        // The regular files the tasks hold open on those filesystems: what they may just have
        // written, measured (cachestat) to tell when to stop.
        let devs: HashSet<u64> =
            mounts.iter().filter_map(|m| sys::stat(m).ok()).map(|st| st.st_dev).collect();
        let mut seen = HashSet::new();
        for t in &sc.tasks {
            for f in t.fds.iter().filter(|f| f.kind == record::FileKind::Regular && devs.contains(&f.dev)) {
                if seen.insert((f.dev, f.ino)) {
                    files.push(procfs::fd_path(t.pid, &f.fd.to_string()));
                }
            }
        }
        let stage = ui::stage(self.opts.progress, "writing back dirty data (tasks running)");
        let r = writeback::write_back(&files, &mounts, &self.opts.writeback);
        stage.done();
        match r {
            Ok(wb) => {
                let t = &mut self.timings;
                t.writeback_ms = ms(wb.time);
                t.writeback_us = wb.time.as_micros() as u64;
                t.writeback_rounds = wb.rounds;
                t.writeback_bytes = wb.bytes;
                t.writeback_left_bytes = wb.remaining;
                t.writeback_measure = (wb.rounds > 0).then_some(wb.measure);
                None
            }
            Err(e) => Some(format!("{e}; the frozen stages flush the dirty data instead")),
        }
    }

    /// Relink every unlinked object. On error the relinker has already removed what it made.
    /// Objects on a filesystem whose unlinked files CRIU carries are left to it.
    fn relink(&mut self, sc: &mut scan::Scan, plan: &plan::SnapshotPlan) -> Result<relink::Stats, TakeError> {
        let t = Instant::now();
        let relinker = self.relinker.insert(Relinker::new(&self.sel.id, self.opts.template.clone()));
        let bar = ui::copy_progress(self.opts.progress, copy_bytes(&sc.objects));
        let skip = |o: &record::Object| plan.engine_carries(&o.mount.mount_point);
        let stats = relinker
            .relink_all(&mut sc.objects, skip, |o| ui::step(&format!("relinked {}", o.original_path)))?;
        drop(bar);
        self.timings.relink_ms = ms(t.elapsed());
        hooks::point("take-relinked");
        Ok(stats)
    }

    /// Save the process state (CRIU, with the snapshots taken at its post-dump) or, files
    /// only, take the snapshots while the tasks are frozen.
    fn checkpoint(
        &mut self,
        sc: &scan::Scan,
        pids: &[i32],
        plan: &plan::SnapshotPlan,
    ) -> Result<Engine, TakeError> {
        match &self.opts.engine {
            EngineOpts::None => {
                let t = Instant::now();
                let stage = (!plan.specs.is_empty()).then(|| {
                    ui::stage(self.opts.progress, &format!("taking {} snapshot(s)", plan.specs.len()))
                });
                let limit = (self.opts.snapshot_timeout, self.image.lock_fd());
                take_snapshots(&plan.specs, &self.sel.id, &mut self.snaps, limit)?;
                if let Some(s) = stage {
                    s.done();
                }
                self.timings.snapshot_ms = ms(t.elapsed());
                // Names leading to the tasks' own inodes go before the thaw: checked now.
                let relinker = self.relinker.as_ref().expect("relinked");
                verify::restartable(
                    &sc.tasks,
                    &sc.objects,
                    false,
                    self.image.path(),
                    relinker,
                    Names::SameInode,
                )?;
                Ok(Engine::None)
            }
            EngineOpts::Criu { path, after, flags } => {
                let (path, after, flags) = (path.clone(), *after, *flags);
                self.dump(&path, flags, sc, pids, plan)?;
                let images = criu::image_files(self.image.path());
                if self.sel.criu_version.is_empty() {
                    self.sel.criu_version = criu::version_from_log(&self.image.path().join(criu::DUMP_LOG))
                        .unwrap_or_else(|| criu::version_string(&path));
                }
                let (leave_running, leave_stopped) = (after == AfterDump::Run, after == AfterDump::Stop);
                Ok(Engine::Criu {
                    version: self.sel.criu_version.clone(),
                    leave_running,
                    leave_stopped,
                    images,
                    shell_job: flags.shell_job,
                    tcp_established: flags.tcp_established,
                })
            }
        }
    }

    /// The snapshots carry the relinked names; the live filesystems need them no more. Only
    /// on the mounts that were snapshotted: a name on another mount is the only copy. `all`:
    /// every such name; else only the names leading to a task's own inode (a link it would
    /// see on its file: removed while it is frozen), the new inodes' names going once it runs
    /// again ([`Tx::unfrozen`]). Whether every name is (to be) gone from the live filesystems.
    fn drop_live_names(&mut self, objects: &[record::Object], all: bool) -> Result<bool, TakeError> {
        if self.snaps.is_empty() || self.opts.keep_links {
            return Ok(false);
        }
        let snapped: HashSet<&str> = self.snaps.iter().map(Snapshot::mount_point).collect();
        let relinked = || objects.iter().filter(|o| o.relinked.is_some());
        let mnts: HashSet<u32> = relinked()
            .filter(|o| snapped.contains(o.mount.mount_point.as_str()))
            .map(|o| o.mount.mnt_id)
            .collect();
        let relinker = self.relinker.as_mut().expect("relinked");
        relinker.remove_where(|m| mnts.contains(&m.mnt_id) && (all || m.same_inode))?;
        Ok(relinked().all(|o| snapped.contains(o.mount.mount_point.as_str())))
    }

    /// What needs the tasks frozen no more, done before the publication (a failure is undone
    /// like any other): the files-only check of the objects preserved as new inodes, and the
    /// removal of their live names. Neither touches anything the tasks see.
    fn unfrozen(&mut self, done: &Staged) -> Result<(), TakeError> {
        hooks::point("take-unfrozen");
        if matches!(self.opts.engine, EngineOpts::None) {
            let relinker = self.relinker.as_ref().expect("relinked");
            let (tasks, objects) = (&done.ck.tasks, &done.ck.objects);
            verify::restartable(tasks, objects, false, self.image.path(), relinker, Names::NewInode)?;
        }
        self.drop_live_names(&done.ck.objects, true).map(drop)
    }

    /// Publish the image, then thaw, kill or leave the tasks frozen. A failure before the
    /// publication is undone; after it the checkpoint stands.
    fn finish(mut self, mut done: Staged) -> Result<Taken, TakeError> {
        let after = self.after();
        let published = self.publish(&mut done, after);
        let (dir, still_frozen) = match published {
            Ok(x) => x,
            Err(e) => return Err(self.fail(e)),
        };
        hooks::point("take-published");
        let Staged { ck, stats, pids, notes } = done;
        let mut taken = Taken { dir, record: ck, stats, killed_in: None, left_frozen: None, notes };
        if let Some(frozen) = still_frozen {
            let killing = |source| TakeError::Killing { dir: taken.dir.clone(), source };
            if after == AfterDump::Stop {
                let how = frozen.method().resume_hint(&pids);
                frozen.keep_frozen().map_err(killing)?;
                taken.left_frozen = Some(how);
            } else {
                let t = Instant::now();
                frozen.kill(&pids).map_err(killing)?;
                taken.killed_in = Some(t.elapsed());
            }
        }
        hooks::point("take-thawed");
        taken.notes.extend(after_hooks(self.opts, &taken));
        Ok(taken)
    }

    /// CRIU without --leave-running: the tasks stay frozen until the image is published and
    /// are killed only then (by [`Tx::finish`]). Their exit (the kernel freeing what they
    /// held, e.g. the page cache of a large unlinked file) is not part of the checkpoint.
    fn publish(
        &mut self,
        done: &mut Staged,
        after: AfterDump,
    ) -> Result<(PathBuf, Option<tasks::Frozen>), TakeError> {
        self.frozen().check_watchdog()?;
        self.timings.freezing_us = self.frozen().freeze_latency().as_micros() as u64;
        let still_frozen = if after == AfterDump::Run {
            let d = self.frozen.take().expect("frozen").thaw()?;
            self.timings.frozen_ms = ms(d);
            self.timings.frozen_us = d.as_micros() as u64;
            None
        } else {
            self.frozen.take()
        };
        let published = self.unfrozen(done).and_then(|()| {
            if let Some(f) = &still_frozen {
                self.timings.frozen_ms = ms(f.frozen_for());
                self.timings.frozen_us = f.frozen_for().as_micros() as u64;
            }
            done.ck.timings = self.timings.clone();
            let _stage = ui::stage(self.opts.progress, "writing back the image");
            self.image.publish(&done.ck).map_err(TakeError::from)
        });
        match published {
            Ok(dir) => Ok((dir, still_frozen)),
            Err(e) => {
                self.frozen = still_frozen;
                Err(e)
            }
        }
    }
}

/// How the record names a freeze method.
fn freezer_record(m: &tasks::FreezeMethod) -> record::Freezer {
    match m {
        tasks::FreezeMethod::CgroupV2(p) => record::Freezer::CgroupV2 { path: p.clone() },
        tasks::FreezeMethod::CgroupV1(p) => record::Freezer::CgroupV1 { path: p.clone() },
        tasks::FreezeMethod::Sigstop(_) => record::Freezer::Sigstop,
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// The bytes a relink may have to copy: the data of the regular files with no name at all
/// (a clone copies nothing: the bar then ends early).
fn copy_bytes(objects: &[record::Object]) -> u64 {
    objects
        .iter()
        .filter(|o| o.class == record::Unlinked::Orphan && o.kind == record::FileKind::Regular)
        .map(|o| o.size)
        .sum()
}

pub use crate::image::DEFAULT_IMAGE_ROOT;

#[allow(unused)]
fn _assert_send() {
    fn s<T: Send>() {}
    s::<TakeOptions>();
}

/// The default template, parsed.
pub fn default_template() -> Template {
    Template::parse(relink::DEFAULT_TEMPLATE).expect("default template is valid")
}

// ---- user hooks at the take's points ----

/// The context of a take in progress.
fn hook_context(opts: &TakeOptions, id: &str, dir: &Path, pids: &[i32]) -> userhooks::Context {
    userhooks::Context {
        id: id.into(),
        image_dir: dir.into(),
        image_root: opts.image_root.clone(),
        job: opts.job_name.clone(),
        pids: pids.to_vec(),
        mounts: opts.filesystems.iter().map(|f| f.mount_point.display().to_string()).collect(),
        snapshots: vec![],
    }
}

/// A point of a take before its publication (pre-take, post-freeze, post-snapshot).
fn at_hook(
    opts: &TakeOptions,
    p: Point,
    id: &str,
    dir: &Path,
    pids: &[i32],
    snaps: &[Snapshot],
) -> Result<(), userhooks::HookError> {
    userhooks::run(&opts.hooks, p, &hook_context(opts, id, dir, pids).with_snapshots(snaps))
}

/// post-take: the warnings of its hooks, as take notes starting with `warning: `.
fn after_hooks(opts: &TakeOptions, t: &Taken) -> Vec<String> {
    userhooks::run_post(&opts.hooks, Point::PostTake, &userhooks::Context::of_record(&t.record, &t.dir))
        .map(|w| format!("warning: {w}"))
        .into_iter()
        .collect()
}
