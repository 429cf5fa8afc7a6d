//! `snapckpt restart`: bring a checkpoint back, as a transaction of named stages.
//!
//! 1. **check** what can be checked before anything changes (engine and options agree, the
//!    recorded pids are free unless `--private-pids`, an `--exec` command can start, a
//!    `--mount-root` exists);
//! 2. **isolate**: by default enter a private mount namespace ([`namespace`]) so the clones
//!    are mounted at the recorded mount points for the restored tasks only;
//! 3. **mount** a writable clone of each snapshot (the read-only snapshot stays untouched, so
//!    a checkpoint restarts again and again);
//! 4. **reopen** each relinked object, checked to be the recorded inode, under its original
//!    path ([`crate::relink::reopen`]);
//! 5. **hand over**: CRIU restores the tasks, opening each object at its placed path (with
//!    `--private-pids` in a new pid namespace, [`pidns`], where the recorded pids are free
//!    whatever runs on the host), or the `--exec` command gets the objects at the recorded
//!    fds ([`exec`]);
//! 6. **unlink** the relinked names, so the inodes are back at their recorded link counts.
//!
//! A failure before the hand-over unmounts and removes the clones it made and leaves the
//! checkpoint as it was.

mod exec;
pub mod namespace;
pub mod pidns;

use crate::image;
use crate::record::{Checkpoint, Engine, FileKind, Freezer};
use crate::relink::{self, Base, Keep, Reopened};
use crate::snapshot::{self, MountedClone};
use crate::{criu, hooks, sys};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Relink(#[from] relink::RelinkError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Criu(#[from] criu::CriuError),
    #[error(transparent)]
    Tasks(#[from] crate::tasks::TaskError),
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    /// What an imported checkpoint needs that this machine lacks (`migrate::check_restart`).
    #[error("{0}")]
    CannotRunHere(String),
    #[error("this checkpoint has a CRIU process image; --exec is for files-only checkpoints")]
    ExecOfCriuImage,
    #[error("--private-pids restores a CRIU process image; checkpoint {id} is files-only (restart it with --exec)")]
    PrivatePidsFilesOnly { id: String },
    #[error("the tasks of checkpoint {id} were in a pid namespace of their own, which CRIU restores as a new one anyway (their pids there, new host pids): restart it without --private-pids")]
    PrivatePidsOwnNamespace { id: String },
    #[error("the relinked files of checkpoint {id} are kept only in its snapshots: add --snapshot")]
    OnlyInSnapshots { id: String },
    #[error("--mount-root {}: no such directory; create it (root-owned, not writable by others) first; nothing was changed", path.display())]
    NoMountRoot { path: PathBuf },
    #[error("checkpoint {id} has no snapshots; restart it without --snapshot")]
    NoSnapshots { id: String },
    /// CRIU restores tasks with their recorded pids (`who`: by what it is used).
    #[error("pid {pid} is in use {who}. CRIU restores tasks with their old pids; nothing was changed (restart with --private-pids to restore them with those pids in a new pid namespace)")]
    PidInUse { pid: i32, who: String },
    /// A mount target some non-root user could steer.
    #[error("restart target {}: {why}", path.display())]
    UntrustedTarget { path: PathBuf, why: String },
    #[error("cannot prepare the CRIU image for the restore: {0}")]
    RestoreImage(crate::criu_image::ImageError),
    /// `--private-pids`: the new pid namespace's init did not start.
    #[error("the init of the new pid namespace ({} {}, host pid {init}) did not get ready: {said}", exe.display(), pidns::INIT_ARG)]
    InitNotReady { exe: PathBuf, init: i32, said: String },
    /// `--exec` and the checkpoint's tasks or command.
    #[error("{0}")]
    Exec(#[from] exec::ExecError),
}

/// Where the restart clones are mounted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mounts {
    /// In a private mount namespace of the restored tasks, at the recorded mount points.
    #[default]
    Private,
    /// In the host's mount namespace, over the recorded mount points (or under `mount_root`).
    Host,
}

/// How to restart.
#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// Mount writable clones of the checkpoint's snapshots.
    pub snapshot: bool,
    /// Where the clones are mounted.
    pub mounts: Mounts,
    /// Mount them under this directory (paths mapped: `<mount_root>/<origin mount point>`)
    /// instead of over the origins, in the host's namespace.
    pub mount_root: Option<PathBuf>,
    /// Run this command holding the objects at their recorded fds (files-only checkpoints).
    pub exec: Option<Vec<String>>,
    /// Whose fds `exec` gets (default: the first task that holds an object).
    pub exec_task: Option<i32>,
    /// CRIU binary (for checkpoints with a process image).
    pub criu: Option<PathBuf>,
    /// Stop CRIU if the restore takes longer.
    pub restore_timeout: Option<std::time::Duration>,
    /// Restore the tasks into a new pid namespace (their recorded pids there, others on the
    /// host), with a procfs of it on /proc for them.
    pub private_pids: bool,
}

/// The new pid namespace of a `--private-pids` restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidNsRestored {
    /// Host pid of its init (pid 1 there), the reaper of the restored tasks.
    pub init: i32,
    /// Host pids of the restored tasks, in the order of [`Restarted::pids`].
    pub host_pids: Vec<i32>,
}

/// What a restart did.
#[derive(Debug, Default)]
pub struct Restarted {
    pub mounts: Vec<MountedClone>,
    /// Whether the clones are mounted in a private mount namespace (not visible on the host).
    pub private_ns: bool,
    pub objects: usize,
    /// Exit status of the `--exec` command.
    pub exec_status: Option<i32>,
    /// Pids restored by CRIU (as recorded; inside the new pid namespace with `private_pids`;
    /// the new host pids of tasks that were in a pid namespace of their own).
    pub pids: Vec<i32>,
    /// With `private_pids`: the namespace's init and the tasks' host pids.
    pub pid_ns: Option<PidNsRestored>,
    /// What the user is told once (on stderr): a clone's device number differs, ...
    pub notes: Vec<String>,
    /// Names left in place (files-only checkpoint without --exec).
    pub left_in_place: Vec<PathBuf>,
    /// CRIU's statistics of the restore (`stats-restore`), when it wrote them.
    pub criu_stats: Option<crate::criu_stats::RestoreStats>,
    /// How long CRIU's restore took, snapckpt's side of the RPC.
    pub restore_time: std::time::Duration,
}

/// Restart the checkpoint in `image_dir`.
pub fn restart(image_dir: &Path, opts: &RestartOptions) -> Result<Restarted, RestartError> {
    image::trusted_root(image_dir.parent().unwrap_or(Path::new(".")), false)?;
    let ck = image::load(image_dir)?;
    check(&ck, opts)?;
    crate::migrate::check_restart(&ck, image_dir, opts.criu.as_deref())
        .map_err(RestartError::CannotRunHere)?;
    let mut out = Restarted::default();
    if let Err(e) = run(&ck, image_dir, opts, &mut out) {
        undo_mounts(&out.mounts);
        return Err(e);
    }
    Ok(out)
}

/// Unmount and remove the clones of a failed restart.
fn undo_mounts(mounts: &[MountedClone]) {
    for m in mounts.iter().rev() {
        if let Err(ue) = snapshot::unmount_clone(m, true) {
            eprintln!(
                "snapckpt: warning: could not remove the restart clone at {}: {ue}",
                m.target.display()
            );
        }
    }
}

/// Everything that can be refused before anything changes.
fn check(ck: &Checkpoint, opts: &RestartOptions) -> Result<(), RestartError> {
    if let Engine::Criu { .. } = ck.engine {
        if opts.exec.is_some() {
            return Err(RestartError::ExecOfCriuImage);
        }
        if opts.private_pids && ck.own_pid_namespace() {
            return Err(RestartError::PrivatePidsOwnNamespace { id: ck.id.clone() });
        }
        // In a pid namespace of their own the recorded host pids are not used again.
        if !opts.private_pids && !ck.own_pid_namespace() {
            check_pids_free(ck)?;
        }
    } else if opts.private_pids {
        return Err(RestartError::PrivatePidsFilesOnly { id: ck.id.clone() });
    }
    if ck.links_removed && !opts.snapshot && ck.relinked().next().is_some() {
        return Err(RestartError::OnlyInSnapshots { id: ck.id.clone() });
    }
    if let Some(root) = &opts.mount_root {
        if !root.is_dir() {
            return Err(RestartError::NoMountRoot { path: root.clone() });
        }
    }
    if opts.snapshot && ck.snapshots.is_empty() {
        return Err(RestartError::NoSnapshots { id: ck.id.clone() });
    }
    if let (Engine::None, Some(cmd)) = (&ck.engine, &opts.exec) {
        exec::check_command(cmd)?;
    }
    Ok(())
}

/// CRIU restores tasks with their old pids: each must be free (a task killed by the dump may
/// linger a moment as a zombie: give it time).
fn check_pids_free(ck: &Checkpoint) -> Result<(), RestartError> {
    for t in &ck.tasks {
        let proc_dir = PathBuf::from(format!("/proc/{}", t.pid));
        let t0 = std::time::Instant::now();
        while proc_dir.exists() && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        if proc_dir.exists() {
            let now = std::fs::read_to_string(proc_dir.join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            let who = if now == t.comm {
                format!("by {now}: the original task is still running? stop it first")
            } else {
                format!("by {now:?}, not the checkpointed {:?}: another process got that pid", t.comm)
            };
            return Err(RestartError::PidInUse { pid: t.pid, who });
        }
    }
    Ok(())
}

/// Whether this restart runs in a private mount namespace: clones of a checkpoint whose tasks
/// come back (CRIU, or an `--exec` command) at the recorded paths, unless asked otherwise.
fn private_namespace(ck: &Checkpoint, opts: &RestartOptions) -> bool {
    let tasks_come_back = matches!(ck.engine, Engine::Criu { .. }) || opts.exec.is_some();
    opts.snapshot && tasks_come_back && opts.mounts == Mounts::Private && opts.mount_root.is_none()
}

/// The stages after the checks; `out` collects what must be undone on failure.
fn run(
    ck: &Checkpoint,
    image_dir: &Path,
    opts: &RestartOptions,
    out: &mut Restarted,
) -> Result<(), RestartError> {
    if private_namespace(ck, opts) {
        namespace::enter_private()?;
        out.private_ns = true;
    }
    let bases = if opts.snapshot { mount_snapshots(ck, opts, &mut out.mounts)? } else { HashMap::new() };
    out.notes.extend(device_note(ck, &bases));
    hooks::point("restart-mounted");
    let keep = if matches!(ck.engine, Engine::Criu { .. }) { Keep::Placed } else { Keep::Opened };
    let mut opened = relink::open_objects(ck, &bases, keep)?;
    hooks::point("restart-opened");
    match (&ck.engine, &opts.exec) {
        (Engine::Criu { .. }, _) => restore(ck, image_dir, opts, &mut opened, out)?,
        (Engine::None, Some(cmd)) => out.exec_status = Some(run_exec(ck, opts, cmd, &opened)?),
        (Engine::None, None) => out.left_in_place = opened.iter().map(|o| o.dir.path.join(&o.name)).collect(),
    }
    out.objects = opened.len();
    Ok(())
}

/// Mount a clone of every snapshot; returns origin mount point -> where it is now.
fn mount_snapshots(
    ck: &Checkpoint,
    opts: &RestartOptions,
    made: &mut Vec<MountedClone>,
) -> Result<HashMap<String, Base>, RestartError> {
    let mut bases = HashMap::new();
    for s in &ck.snapshots {
        let mp = s.mount_point();
        // Root mounts a writable clone at the target: only root may be able to change where
        // that path leads (no symlinks, every directory root-owned and not writable by others),
        // or a user could have it mounted over any directory, or swap the path afterwards.
        let target = match &opts.mount_root {
            Some(root) => root.join(mp.trim_start_matches('/')),
            None => PathBuf::from(mp),
        };
        sys::trusted_dirs(&target, opts.mount_root.is_some())
            .map_err(|why| RestartError::UntrustedTarget { path: target.clone(), why })?;
        if opts.mount_root.is_none() {
            snapshot::verify_origin(s)?;
        }
        let m = snapshot::mount_clone(s, &target)?;
        // The device of the clone: every preserved file must be opened on it.
        let dev = sys::stat(&m.target)
            .map_err(|source| {
                RestartError::Io(crate::sys::SysError { path: m.target.clone(), syscall: "stat", source })
            })?
            .st_dev;
        bases.insert(mp.to_string(), Base { path: m.target.clone(), dev: Some(dev) });
        made.push(m);
    }
    Ok(bases)
}

/// The one note on the device numbers of the btrfs clones: a subvolume has an `st_dev` of its
/// own, so every restored file there shows another device than at the checkpoint (the
/// record's `filesystems` has the old one).
fn device_note(ck: &Checkpoint, bases: &HashMap<String, Base>) -> Option<String> {
    let dev = |d: u64| format!("{}:{}", libc::major(d), libc::minor(d));
    let changed: Vec<String> = ck
        .snapshots
        .iter()
        .filter(|s| matches!(s, crate::record::Snapshot::Btrfs { .. }))
        .filter_map(|s| {
            let now = bases.get(s.mount_point())?.dev?;
            let then = ck.filesystems.iter().find(|f| f.mount_point == s.mount_point()).map(|f| f.dev);
            match then {
                Some(t) if t == now => None,
                Some(t) => Some(format!("{} {} -> {}", s.mount_point(), dev(t), dev(now))),
                None => Some(format!("{} now {}", s.mount_point(), dev(now))),
            }
        })
        .collect();
    (!changed.is_empty()).then(|| {
        format!(
            "files on the btrfs clone(s) keep their inode numbers but not their device number (st_dev {}): a subvolume has a device number of its own",
            changed.join(", ")
        )
    })
}

/// CRIU restore from a copy of the image whose external files name the paths the objects were
/// placed at; on `post-restore`, before any restored task runs, the placed and relinked names
/// are removed (each checked to still be the object first). With `private_pids` CRIU runs in
/// a new pid namespace ([`pidns`]).
fn restore(
    ck: &Checkpoint,
    image_dir: &Path,
    opts: &RestartOptions,
    opened: &mut [Reopened],
    out: &mut Restarted,
) -> Result<(), RestartError> {
    let paths: HashMap<String, PathBuf> =
        opened.iter().map(|o| (o.obj.criu_key.clone(), o.opened_as.clone())).collect();
    let work = RestoreImage::make(ck, image_dir, &paths)?;
    let ns = if opts.private_pids { Some(pidns::PidNs::start()?) } else { None };
    let req = restore_request(ck, &work, image_dir, opts, ns.as_ref())?;
    let pids: Vec<i32> = ck.tasks.iter().map(|t| t.pid).collect();
    let t = std::time::Instant::now();
    let r = run_criu(&req, ck, &pids, ns.as_ref(), opened);
    let init = ns.map(|ns| {
        let pid = ns.init_pid();
        if r.is_ok() {
            ns.release()
        } else {
            ns.abort()
        }
        pid
    });
    let (host, guard) = r?;
    out.restore_time = t.elapsed();
    out.criu_stats = [work.dir.as_path(), image_dir]
        .iter()
        .find_map(|d| crate::criu_stats::read_restore(d).ok().flatten());
    drop(work);
    hooks::point("restart-restored");
    if ck.freezer == Freezer::Sigstop {
        // Dumped while stopped by snapckpt: CRIU brings them back stopped; first thing,
        // before anything else can fail.
        for &p in host.iter().filter(|&&p| p > 0) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGCONT);
        }
    }
    drop(guard);
    if ck.own_pid_namespace() {
        out.notes.push(format!(
            "the tasks were in a pid namespace of their own: restored in a new one with their pids there ({:?}), host pids {host:?}",
            ck.tasks.iter().filter_map(|t| t.ns_pid).collect::<Vec<_>>()
        ));
        out.pids = host;
    } else {
        out.pid_ns = init.map(|init| PidNsRestored { init, host_pids: host });
        out.pids = pids;
    }
    Ok(())
}

fn restore_request(
    ck: &Checkpoint,
    work: &RestoreImage,
    image_dir: &Path,
    opts: &RestartOptions,
    ns: Option<&pidns::PidNs>,
) -> Result<criu::RestoreRequest, RestartError> {
    let flags = match ck.engine {
        Engine::Criu { shell_job, tcp_established, .. } => {
            crate::engine::CriuFlags { shell_job, tcp_established, dump_timeout: None }
        }
        Engine::None => Default::default(),
    };
    Ok(criu::RestoreRequest {
        criu: criu::find(opts.criu.as_deref())?,
        image_dir: work.dir.clone(),
        work_dir: image_dir.to_path_buf(),
        flags,
        timeout: opts.restore_timeout,
        wrapper: ns.map(pidns::PidNs::criu_wrapper).unwrap_or_default(),
    })
}

/// Run the restore; the restored tasks' host pids and the guard that continues them.
/// Restored stopped (taken with SIGSTOP): continued by the caller, or, if snapckpt dies
/// before, by a watchdog armed at post-restore, when every restored task exists (earlier,
/// CRIU may not have created them yet; later, they may be left stopped).
fn run_criu(
    req: &criu::RestoreRequest,
    ck: &Checkpoint,
    pids: &[i32],
    ns: Option<&pidns::PidNs>,
    opened: &mut [Reopened],
) -> Result<(Vec<i32>, Option<crate::tasks::ContinueGuard>), RestartError> {
    let sigstop = ck.freezer == Freezer::Sigstop;
    let mut guard = None;
    let mut host = pids.to_vec();
    criu::restore(req, &mut |root| {
        if let Some(ns) = ns {
            host = ns.host_pids(pids)?;
        } else if ck.own_pid_namespace() {
            // A new pid namespace made by CRIU: its init is the root CRIU names.
            let root = root.ok_or("CRIU did not name the restored root task")?;
            let inner: Vec<i32> = ck.tasks.iter().map(|t| t.ns_pid.unwrap_or(0)).collect();
            host = pidns::host_pids_in(root, &inner)?;
        }
        if sigstop {
            guard = Some(crate::tasks::ContinueGuard::arm(&host).map_err(|e| e.to_string())?);
        }
        release_all(opened)
    })?;
    Ok((host, guard))
}

/// The `post-restore` step: every placed name still the object, then all names removed.
fn release_all(opened: &mut [Reopened]) -> Result<(), String> {
    if let Some(o) = opened.iter().find(|o| !o.placed_is_intact()) {
        return Err(format!(
            "{} is no longer the preserved file (replaced during the restore?)",
            o.opened_as.display()
        ));
    }
    hooks::point("restart-post-restore");
    opened.iter_mut().try_for_each(Reopened::release).map_err(|e| e.to_string())
}

/// The rewritten copy of a checkpoint's CRIU image that one restore reads, beside the image
/// (`<root>/.<id>.restoring-<pid>`, on its filesystem so that the image files are hard
/// links, not copies); removed when the restore is over, by `gc` if snapckpt was killed.
struct RestoreImage {
    dir: PathBuf,
}

impl RestoreImage {
    fn make(
        ck: &Checkpoint,
        image_dir: &Path,
        paths: &HashMap<String, PathBuf>,
    ) -> Result<RestoreImage, RestartError> {
        let name = image::State::Restoring(std::process::id()).name(&ck.id);
        let dir = image_dir.parent().unwrap_or(Path::new(".")).join(name);
        if dir.symlink_metadata().is_ok() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        crate::criu_image::rewrite_externals(image_dir, &dir, paths).map_err(RestartError::RestoreImage)?;
        Ok(RestoreImage { dir })
    }
}

impl Drop for RestoreImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `--exec`: the command holds the objects at the recorded fds and unlinks the names itself.
fn run_exec(
    ck: &Checkpoint,
    opts: &RestartOptions,
    cmd: &[String],
    opened: &[Reopened],
) -> Result<i32, RestartError> {
    let fds = exec::exec_fds(ck, opts.exec_task, opened)?;
    let unlinks = opened
        .iter()
        .map(|o| {
            let name = sys::cstr(&o.name).map_err(|source| {
                RestartError::Io(crate::sys::SysError {
                    path: o.dir.path.join(&o.name),
                    syscall: "unlinkat",
                    source,
                })
            })?;
            Ok((o.dir.fd(), name, o.obj.kind == FileKind::Directory))
        })
        .collect::<Result<Vec<_>, RestartError>>()?;
    exec::run_exec(cmd, &fds, unlinks)
}
