//! `snapckpt take`: freeze, scan, relink, snapshot, dump, thaw, and write the image.
//!
//! Every way out of [`take`] leaves the tasks thawed (the [`Frozen`](crate::tasks::Frozen) guard
//! and its watchdog see to that even when snapckpt is killed), removes the relinked names and
//! snapshots of a failed take, and leaves either a whole image directory or none: the image is
//! built as `<root>/.<id>.partial` and renamed to `<root>/<id>` only at the end.

use crate::image::{self, Checkpoint, Engine, Snapshot};
use crate::relink::{self, Relinker, Template};
use crate::snapshot::{self, Backend, FsSpec};
use crate::tasks::{self, FreezeMethod, Selection};
use crate::{criu, hooks, scan, sys};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    #[error("{syscall} {path}: {source}")]
    Io { path: PathBuf, syscall: &'static str, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
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
    Criu { path: PathBuf, after: AfterDump },
}

pub use crate::engine::AfterDump;

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
    /// Keep the relinked names on the live filesystems after the snapshot.
    pub keep_links: bool,
    pub engine: EngineOpts,
    pub job_name: Option<String>,
    pub dry_run: bool,
    /// Show progress bars on stderr.
    pub progress: bool,
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
}

/// The plan of a dry run.
#[derive(Debug)]
pub struct Plan {
    pub pids: Vec<i32>,
    pub freezer: String,
    pub scan: scan::Scan,
    pub snapshots: Vec<FsSpec>,
}

#[allow(clippy::large_enum_variant)] // one value per take
pub enum Outcome {
    Taken(Taken),
    DryRun(Plan),
}

/// Take a checkpoint.
pub fn take(opts: &TakeOptions) -> Result<Outcome, TakeError> {
    let now = sys::now_unix();
    let id = image::new_id(now);
    let pids = tasks::resolve(&opts.selection)?;
    let method = FreezeMethod::for_selection(&opts.selection, &pids)?;
    // Asked before freezing: recorded in the image.
    let mut criu_version = String::new();
    if let EngineOpts::Criu { path, .. } = &opts.engine {
        // CRIU dumps the whole tree under its root: a --pid selection without --tree whose
        // process has children would dump (and kill) tasks snapckpt neither froze nor scanned.
        if let tasks::Selection::Pid { pid, tree: false } = &opts.selection {
            if !tasks::children(*pid)?.is_empty() {
                return Err(TakeError::Refused(format!(
                    "pid {pid} has child processes and CRIU dumps a whole process tree: add --tree (or select its cgroup); nothing was changed"
                )));
            }
        }
        criu_root(&pids)?;
        if !opts.dry_run {
            criu_version = criu::version_string(path);
        }
    }

    // The partial image directory, with a lock that `gc` respects while we run.
    let partial = if opts.dry_run { None } else { Some(Partial::create(&opts.image_root, &id)?) };

    let t0 = Instant::now();
    let frozen = tasks::freeze(method, opts.freeze_timeout)?;
    let freeze_ms = ms(t0.elapsed());
    hooks::point("take-frozen");

    // Tasks may have forked between resolve and freeze.
    let pids2 = tasks::resolve(&opts.selection)?;
    if let FreezeMethod::Sigstop(stopped) = frozen.method() {
        let new: Vec<i32> = pids2.iter().copied().filter(|p| !stopped.contains(p)).collect();
        if !new.is_empty() {
            return Err(TakeError::Refused(format!("tasks {new:?} appeared while freezing; nothing was changed, run the take again (or select a cgroup)")));
        }
    }
    let pids = pids2;

    let t1 = Instant::now();
    let mut sc = scan::scan(&pids)?;
    let scan_ms = ms(t1.elapsed());
    hooks::point("take-scanned");
    let mut specs = opts.filesystems.clone();
    if let Some(b) = opts.auto_snapshot {
        for o in &sc.objects {
            let mp = PathBuf::from(&o.mount.mount_point);
            if !specs.iter().any(|s| s.mount_point == mp) {
                specs.push(FsSpec { mount_point: mp, backend: b, snapshot_dir: None, lvm_size: None });
            }
        }
    }

    // A snapshot that cannot be taken is refused before anything is relinked.
    for spec in &specs {
        snapshot::precheck(spec)?;
    }
    if opts.dry_run {
        let freezer = frozen.method().describe();
        frozen.thaw()?;
        return Ok(Outcome::DryRun(Plan { pids, freezer, scan: sc, snapshots: specs }));
    }
    let partial = partial.expect("not a dry run");

    let mut ck = Checkpoint::new(&id, now);
    ck.job = opts.job_name.clone();
    ck.selection = opts.selection.describe();
    ck.freezer = frozen.method().describe();
    ck.template = opts.template.as_str().to_string();

    // Relink. On error the relinker has already removed what it made.
    let t2 = Instant::now();
    let mut relinker = Relinker::new(&id, opts.template.clone());
    let bar = progress_bar(opts.progress, sc.objects.len() as u64, "relink");
    let stats = relinker.relink_all(&mut sc.objects, |_| bar.inc(1))?;
    bar.finish_and_clear();
    let relink_ms = ms(t2.elapsed());
    hooks::point("take-relinked");

    // From here on a failure must undo the relinks and snapshots.
    let mut snaps: Vec<Snapshot> = vec![];
    let mut snapshot_ms = 0;
    let result = (|| -> Result<(Engine, u64), TakeError> {
        // Past this point a death of snapckpt relies on the watchdog: is it still there?
        frozen.check_watchdog()?;
        match &opts.engine {
            EngineOpts::None => {
                let t = Instant::now();
                take_snapshots(&specs, &id, &mut snaps)?;
                snapshot_ms = ms(t.elapsed());
                Ok((Engine::None, 0))
            }
            EngineOpts::Criu { path, after } => {
                let root = criu_root(&pids)?;
                let externals: Vec<String> =
                    sc.objects.iter().filter(|o| o.relinked.is_some()).map(|o| o.criu_key.clone()).collect();
                let t = Instant::now();
                let mut snap_err = None;
                let mut snap_t = 0;
                let req = criu::DumpRequest {
                    criu: path.clone(),
                    pid: root,
                    image_dir: partial.dir.clone(),
                    externals,
                    freeze_cgroup: frozen.method().cgroup_path().map(Path::to_path_buf),
                    // Always: tasks that must not go on are killed by us once the image is
                    // published (`Frozen::kill`), so a take that fails after the dump lets
                    // them go on instead of losing them.
                    leave_running: true,
                };
                let dumped = criu::dump(&req, &mut || {
                    // post-dump: the tasks are still frozen; the natural moment to snapshot.
                    // CRIU may have let go of the tasks already: the watchdog must wait for it.
                    for c in tasks::Frozen::criu_children() {
                        frozen.note_engine(c);
                    }
                    hooks::point("take-post-dump");
                    let ts = Instant::now();
                    let r = take_snapshots(&specs, &id, &mut snaps);
                    snap_t = ms(ts.elapsed());
                    match r {
                        Ok(()) => Ok(()),
                        Err(e) => {
                            let msg = e.to_string();
                            snap_err = Some(e);
                            Err(msg)
                        }
                    }
                });
                snapshot_ms = snap_t;
                if let Some(e) = snap_err {
                    return Err(e);
                }
                dumped?;
                let dump_ms = ms(t.elapsed()).saturating_sub(snap_t);
                let images = criu::image_files(&partial.dir);
                let (leave_running, leave_stopped) = (*after == AfterDump::Run, *after == AfterDump::Stop);
                Ok((
                    Engine::Criu { version: criu_version.clone(), leave_running, leave_stopped, images },
                    dump_ms,
                ))
            }
        }
    })();
    let (engine, dump_ms) = match result {
        Ok(x) => x,
        Err(mut e) => {
            // The CRIU log the error names must outlive the partial directory.
            if let TakeError::Criu(criu::CriuError::Failed { log, .. }) = &mut e {
                if let Some(kept) = partial.keep_failed_log(log) {
                    *log = kept;
                }
            }
            for s in snaps.iter().rev() {
                if let Err(de) = snapshot::delete(s, true) {
                    eprintln!(
                        "snapckpt: warning: could not delete snapshot {} of the failed take: {de}",
                        s.describe()
                    );
                }
            }
            if let Err(re) = relinker.remove_all() {
                eprintln!("snapckpt: warning: could not remove relinked names of the failed take: {re} (run `snapckpt gc`)");
            }
            drop(frozen); // thaws
            return Err(e);
        }
    };
    hooks::point("take-snapshotted");

    // CRIU without --leave-running: the tasks stay frozen until the image is published and
    // are killed only then. A failure before that (or a kill of snapckpt: the watchdog) thaws
    // them and they go on. Their exit (the kernel freeing what they held, e.g. the page cache
    // and extents of a large unlinked file) is not part of the checkpoint: timed apart.
    let after = match &opts.engine {
        EngineOpts::Criu { after, .. } => *after,
        EngineOpts::None => AfterDump::Run,
    };
    // Up to the publication a failure undoes the snapshots and the relinked names.
    let mut frozen = Some(frozen);
    let mut still_frozen = None;
    let published = (|| -> Result<PathBuf, TakeError> {
        // The snapshots carry the relinked names; the live filesystems need them no more. Only
        // on the mounts that were snapshotted: a name on another mount is the only copy.
        if !snaps.is_empty() && !opts.keep_links {
            let snapped: std::collections::HashSet<&str> = snaps.iter().map(Snapshot::mount_point).collect();
            let relinked = || sc.objects.iter().filter(|o| o.relinked.is_some());
            let mnts: std::collections::HashSet<u32> = relinked()
                .filter(|o| snapped.contains(o.mount.mount_point.as_str()))
                .map(|o| o.mount.mnt_id)
                .collect();
            relinker.remove_on(&mnts)?;
            ck.links_removed = relinked().all(|o| snapped.contains(o.mount.mount_point.as_str()));
            if !ck.links_removed {
                let kept: Vec<&str> = relinked()
                    .filter(|o| !snapped.contains(o.mount.mount_point.as_str()))
                    .map(|o| o.mount.mount_point.as_str())
                    .collect();
                eprintln!(
                    "snapckpt: note: no snapshot of {}: the relinked names there stay on the live filesystem",
                    kept.join(", ")
                );
            }
        }
        let f = frozen.take().expect("frozen until here");
        if let Err(e) = f.check_watchdog() {
            frozen = Some(f);
            return Err(e.into());
        }
        let frozen_for = if after == AfterDump::Run {
            f.thaw()?
        } else {
            let d = f.frozen_for();
            still_frozen = Some(f);
            d
        };
        ck.engine = engine;
        ck.tasks = std::mem::take(&mut sc.tasks);
        ck.objects = std::mem::take(&mut sc.objects);
        ck.snapshots = snaps.clone();
        ck.timings =
            image::Timings { freeze_ms, scan_ms, relink_ms, snapshot_ms, dump_ms, frozen_ms: ms(frozen_for) };
        partial.publish(&ck)
    })();
    let dir = match published {
        Ok(d) => d,
        Err(e) => {
            for s in snaps.iter().rev() {
                if let Err(de) = snapshot::delete(s, true) {
                    eprintln!(
                        "snapckpt: warning: could not delete snapshot {} of the failed take: {de}",
                        s.describe()
                    );
                }
            }
            if let Err(re) = relinker.remove_all() {
                eprintln!("snapckpt: warning: could not remove relinked names of the failed take: {re} (run `snapckpt gc`)");
            }
            drop(still_frozen); // thaws (the tasks go on)
            drop(frozen);
            return Err(e);
        }
    };
    hooks::point("take-published");
    let mut killed_in = None;
    let mut left_frozen = None;
    if let Some(frozen) = still_frozen {
        if after == AfterDump::Stop {
            let how = frozen.method().resume_hint(&pids);
            frozen.keep_frozen().map_err(|e| TakeError::Killing { dir: dir.clone(), source: e })?;
            left_frozen = Some(how);
        } else {
            let t = Instant::now();
            frozen.kill(&pids).map_err(|e| TakeError::Killing { dir: dir.clone(), source: e })?;
            killed_in = Some(t.elapsed());
        }
    }
    hooks::point("take-thawed");
    Ok(Outcome::Taken(Taken { dir, record: ck, stats, killed_in, left_frozen }))
}

fn take_snapshots(specs: &[FsSpec], id: &str, out: &mut Vec<Snapshot>) -> Result<(), TakeError> {
    for s in specs {
        out.push(snapshot::take(s, id, sys::now_unix())?);
    }
    Ok(())
}

/// CRIU dumps one process tree: the selected task whose parent is not selected.
fn criu_root(pids: &[i32]) -> Result<i32, TakeError> {
    let mut roots = vec![];
    for &p in pids {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let ppid = scan::parse_stat(&stat).map(|x| x.1).unwrap_or(0);
        if !pids.contains(&ppid) {
            roots.push(p);
        }
    }
    match roots.as_slice() {
        [r] => Ok(*r),
        _ => Err(TakeError::Refused(format!(
            "CRIU dumps one process tree, but the selected tasks form {} trees (roots {roots:?}); select one tree (--pid P --tree) or put one tree in the cgroup",
            roots.len()
        ))),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn progress_bar(show: bool, len: u64, what: &str) -> indicatif::ProgressBar {
    if !show || len < 2 {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} {elapsed}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// The image directory under construction: `<root>/.<id>.partial`, locked while we run.
struct Partial {
    root: PathBuf,
    id: String,
    dir: PathBuf,
    _lock: std::fs::File,
    done: bool,
}

impl Partial {
    fn create(root: &Path, id: &str) -> Result<Partial, TakeError> {
        let io = |path: &Path, syscall| {
            let path = path.to_path_buf();
            move |source| TakeError::Io { path, syscall, source }
        };
        std::fs::create_dir_all(root).map_err(io(root, "mkdir"))?;
        let dir = root.join(format!(".{id}.partial"));
        std::fs::create_dir(&dir).map_err(io(&dir, "mkdir"))?;
        let lockp = dir.join(".lock");
        let f = std::fs::File::create(&lockp).map_err(io(&lockp, "open"))?;
        // SAFETY: flock on a file we hold.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            return Err(TakeError::Io {
                path: lockp,
                syscall: "flock",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Partial { root: root.into(), id: id.into(), dir, _lock: f, done: false })
    }

    /// Move `log` (a file of the partial directory) to `<root>/.<id>.failed/`, which outlives
    /// the partial directory (`snapckpt gc` removes it). Its new path, if it could be moved.
    fn keep_failed_log(&self, log: &Path) -> Option<PathBuf> {
        if log.parent() != Some(self.dir.as_path()) || !log.is_file() {
            return None;
        }
        let keep = self.root.join(format!(".{}.failed", self.id));
        std::fs::create_dir_all(&keep).ok()?;
        let to = keep.join(log.file_name()?);
        std::fs::rename(log, &to).ok()?;
        let _ = sys::fsync_dir(&keep);
        Some(to)
    }

    /// Write the record and rename the directory into place. Every file of the image (CRIU's
    /// too) is on disk before: tasks are killed right after this, and a crash then must not
    /// leave a record whose process image is empty.
    fn publish(mut self, ck: &Checkpoint) -> Result<PathBuf, TakeError> {
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    let p = e.path();
                    std::fs::File::open(&p).and_then(|f| f.sync_all()).map_err(|source| TakeError::Io {
                        path: p.clone(),
                        syscall: "fsync",
                        source,
                    })?;
                }
            }
        }
        image::write_json_atomic(&self.dir, image::RECORD_FILE, ck)?;
        let _ = std::fs::remove_file(self.dir.join(".lock"));
        let fin = self.root.join(&self.id);
        std::fs::rename(&self.dir, &fin).map_err(|source| TakeError::Io {
            path: fin.clone(),
            syscall: "rename",
            source,
        })?;
        sys::fsync_dir(&self.root).map_err(|source| TakeError::Io {
            path: self.root.clone(),
            syscall: "fsync",
            source,
        })?;
        self.done = true;
        Ok(fin)
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Is a partial image directory still being written by a live take?
pub fn partial_in_use(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(".lock")) else { return false };
    // SAFETY: flock on a file we hold.
    let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) };
    r < 0
}

/// The default image root.
pub const DEFAULT_IMAGE_ROOT: &str = "/var/lib/snapckpt/images";

#[allow(unused)]
fn _assert_send() {
    fn s<T: Send>() {}
    s::<TakeOptions>();
}

/// The default template, parsed.
pub fn default_template() -> Template {
    Template::parse(relink::DEFAULT_TEMPLATE).expect("default template is valid")
}
