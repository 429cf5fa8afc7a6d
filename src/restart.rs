//! `snapckpt restart`: bring a checkpoint back.
//!
//! 1. With `--snapshot`, mount a writable clone of each of the checkpoint's snapshots at its
//!    origin's mount point (or under `--mount-root`); the read-only snapshot stays untouched, so
//!    a checkpoint can be restarted again and again.
//! 2. Open each relinked object (openat2, no symlinks) and check that it is the recorded one:
//!    type, size, inode number.
//! 3. Restore the tasks through CRIU, handing each object over as `inherit_fd`, or run the
//!    `--exec` command with the objects at the recorded fd numbers, flags and offsets.
//! 4. Unlink the relinked names again, so that the inodes go back to their recorded link counts
//!    and the tasks see unlinked files, as they did.
//!
//! A failed restart unmounts and removes the clones it made and leaves the names in place.

use crate::image;
use crate::record::{Checkpoint, Engine, FileKind, Freezer, Held, Method, Object};
use crate::relink::{self, CheckpointDir};
use crate::snapshot::{self, MountedClone};
use crate::{criu, hooks, sys};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;

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
    #[error("{path}: is not the recorded object {original}: {why}")]
    Mismatch { path: PathBuf, original: String, why: String },
    #[error("{syscall} {path}: {source}")]
    Io { path: PathBuf, syscall: &'static str, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
}

/// How to restart.
#[derive(Debug, Clone, Default)]
pub struct RestartOptions {
    /// Mount writable clones of the checkpoint's snapshots.
    pub snapshot: bool,
    /// Mount them under this directory (paths mapped: `<mount_root>/<origin mount point>`)
    /// instead of over the origins.
    pub mount_root: Option<PathBuf>,
    /// Run this command holding the objects at their recorded fds (files-only checkpoints).
    pub exec: Option<Vec<String>>,
    /// Whose fds `exec` gets (default: the first task that holds an object).
    pub exec_task: Option<i32>,
    /// CRIU binary (for checkpoints with a process image).
    pub criu: Option<PathBuf>,
}

/// What a restart did.
#[derive(Debug, Default)]
pub struct Restarted {
    pub mounts: Vec<MountedClone>,
    pub objects: usize,
    /// Exit status of the `--exec` command.
    pub exec_status: Option<i32>,
    /// Pids restored by CRIU.
    pub pids: Vec<i32>,
    /// Names left in place (files-only checkpoint without --exec).
    pub left_in_place: Vec<PathBuf>,
}

/// One object opened for restart.
struct Opened<'a> {
    obj: &'a Object,
    fd: OwnedFd,
    dir: std::rc::Rc<CheckpointDir>,
    name: String,
}

/// Restart the checkpoint in `image_dir`.
pub fn restart(image_dir: &Path, opts: &RestartOptions) -> Result<Restarted, RestartError> {
    let ck = image::load(image_dir)?;
    let mut out = Restarted::default();
    if let Engine::Criu { .. } = ck.engine {
        if opts.exec.is_some() {
            return Err(RestartError::Refused(
                "this checkpoint has a CRIU process image; --exec is for files-only checkpoints".into(),
            ));
        }
        for t in &ck.tasks {
            // A task killed by the dump may linger a moment as a zombie: give it time.
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
                return Err(RestartError::Refused(format!(
                    "pid {} is in use {who}. CRIU restores tasks with their old pids; nothing was changed",
                    t.pid
                )));
            }
        }
    }
    if ck.links_removed && !opts.snapshot && ck.relinked().next().is_some() {
        return Err(RestartError::Refused(format!(
            "the relinked files of checkpoint {} are kept only in its snapshots: add --snapshot",
            ck.id
        )));
    }

    // 1. mounts
    let r = (|| -> Result<(), RestartError> {
        let bases = if opts.snapshot { mount_snapshots(&ck, opts, &mut out.mounts)? } else { HashMap::new() };
        hooks::point("restart-mounted");
        // 2. open and check
        let opened = open_objects(&ck, &bases)?;
        hooks::point("restart-opened");
        // 3. restore / exec
        match (&ck.engine, &opts.exec) {
            (Engine::Criu { .. }, _) => {
                let criu = criu::find(opts.criu.as_deref())?;
                let inherit: Vec<(RawFd, String)> =
                    opened.iter().map(|o| (o.fd.as_raw_fd(), o.obj.criu_key.clone())).collect();
                let work = image_dir.to_path_buf();
                // Restored stopped (taken with SIGSTOP): continued below, or by this
                // watchdog if snapckpt dies before.
                let _guard = if ck.freezer == Freezer::Sigstop {
                    Some(crate::tasks::ContinueGuard::arm(
                        &ck.tasks.iter().map(|t| t.pid).collect::<Vec<_>>(),
                    )?)
                } else {
                    None
                };
                criu::restore(&criu::RestoreRequest {
                    criu,
                    image_dir: image_dir.into(),
                    inherit,
                    work_dir: work,
                })?;
                out.pids = ck.tasks.iter().map(|t| t.pid).collect();
                hooks::point("restart-restored");
                if ck.freezer == Freezer::Sigstop {
                    // dumped while stopped by snapckpt: CRIU brings them back stopped; first
                    // thing, before anything else can fail
                    for &p in out.pids.iter().filter(|&&p| p > 0) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(p),
                            nix::sys::signal::Signal::SIGCONT,
                        );
                    }
                }
                if let Err(e) = unlink_all(&opened) {
                    // The tasks run: their clones must stay. Say so rather than undo.
                    out.mounts.clear();
                    return Err(RestartError::Refused(format!(
                        "the tasks were restored (pids {:?}) and run, but the relinked names could not all be removed: {e}; remove them by hand (the restored tasks then see unlinked files)",
                        out.pids
                    )));
                }
            }
            (Engine::None, Some(cmd)) => {
                // Refuse before consuming the names if the command cannot be run at all.
                let prog =
                    cmd.first().ok_or_else(|| RestartError::Refused("--exec needs a command".into()))?;
                let Some(exe) = sys::which(prog) else {
                    return Err(RestartError::Refused(format!("--exec: {prog}: no such executable")));
                };
                // The names are consumed just before execve: an execve that fails then would
                // lose them. Refuse what the kernel cannot run before that.
                let mut head = [0u8; 4];
                let n = std::fs::File::open(&exe)
                    .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                    .unwrap_or(0);
                if !(head[..n].starts_with(b"\x7fELF") || head[..n].starts_with(b"#!")) {
                    return Err(RestartError::Refused(format!(
                        "--exec: {}: not an executable (no ELF header or #! line); nothing was changed",
                        exe.display()
                    )));
                }
                let fds = exec_fds(&ck, opts.exec_task, &opened)?;
                // The names are unlinked by the command's process itself, once the files are at
                // their fd numbers and just before execve: a command that cannot start leaves
                // the checkpoint restartable, and the command never sees the names.
                let unlinks = opened
                    .iter()
                    .map(|o| {
                        Ok((
                            o.dir.fd(),
                            sys::cstr(&o.name).map_err(|source| RestartError::Io {
                                path: o.dir.path.join(&o.name),
                                syscall: "unlinkat",
                                source,
                            })?,
                            o.obj.kind == FileKind::Directory,
                        ))
                    })
                    .collect::<Result<Vec<_>, RestartError>>()?;
                out.exec_status = Some(run_exec(cmd, &fds, unlinks)?);
            }
            (Engine::None, None) => {
                out.left_in_place = opened.iter().map(|o| o.dir.path.join(&o.name)).collect();
            }
        }
        out.objects = opened.len();
        Ok(())
    })();
    if let Err(e) = r {
        for m in out.mounts.iter().rev() {
            if let Err(ue) = snapshot::unmount_clone(m, true) {
                eprintln!(
                    "snapckpt: warning: could not remove the restart clone at {}: {ue}",
                    m.target.display()
                );
            }
        }
        return Err(e);
    }
    Ok(out)
}

/// Mount a clone of every snapshot; returns origin mount point -> where it is now.
fn mount_snapshots(
    ck: &Checkpoint,
    opts: &RestartOptions,
    made: &mut Vec<MountedClone>,
) -> Result<HashMap<String, Base>, RestartError> {
    if ck.snapshots.is_empty() {
        return Err(RestartError::Refused(format!(
            "checkpoint {} has no snapshots; restart it without --snapshot",
            ck.id
        )));
    }
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
            .map_err(|why| RestartError::Refused(format!("restart target {}: {why}", target.display())))?;
        let m = snapshot::mount_clone(s, &target)?;
        // The device of the clone: every preserved file must be opened on it.
        let dev = sys::stat(&m.target)
            .map_err(|source| RestartError::Io { path: m.target.clone(), syscall: "stat", source })?
            .st_dev;
        bases.insert(mp.to_string(), Base { path: m.target.clone(), dev: Some(dev) });
        made.push(m);
    }
    Ok(bases)
}

/// Where the relinked names of one mount are found at restart.
#[derive(Clone)]
struct Base {
    path: PathBuf,
    /// The device of a restart clone (objects are checked to be on it); None on the live fs.
    dev: Option<u64>,
}

fn open_objects<'a>(
    ck: &'a Checkpoint,
    bases: &HashMap<String, Base>,
) -> Result<Vec<Opened<'a>>, RestartError> {
    let mut dirs: HashMap<PathBuf, std::rc::Rc<CheckpointDir>> = HashMap::new();
    let mut out = vec![];
    for (o, r) in ck.relinked() {
        let base = bases
            .get(&o.mount.mount_point)
            .cloned()
            .unwrap_or_else(|| Base { path: PathBuf::from(&o.mount.mount_point), dev: None });
        let dir = match dirs.get(&base.path) {
            Some(d) => d.clone(),
            None => {
                let d = std::rc::Rc::new(relink::open_checkpoint_dir(&base.path, None, false)?);
                dirs.insert(base.path.clone(), d.clone());
                d
            }
        };
        // First a reference that opens nothing (no FIFO open that blocks, no device open with
        // side effects), checked against the record; then the real open through it.
        let pfd = match dir.open(&r.name, libc::O_PATH | libc::O_NOFOLLOW) {
            Err(relink::RelinkError::Io { source, path, .. })
                if source.raw_os_error() == Some(libc::ENOENT)
                    && base.dev.is_none()
                    && ck.snapshots.is_empty() =>
            {
                return Err(RestartError::Refused(format!(
                    "{}: gone. Checkpoint {} has no snapshot, so a restart consumes its relinked files: it was restarted already (or the names were removed); it cannot be restarted again: `snapckpt delete {}`",
                    path.display(),
                    ck.id,
                    ck.id
                )));
            }
            r => r?,
        };
        let path = dir.path.join(&r.name);
        let st = sys::fstat(pfd.as_raw_fd()).map_err(|source| RestartError::Io {
            path: path.clone(),
            syscall: "fstat",
            source,
        })?;
        let mismatch = |why: String| RestartError::Mismatch {
            path: path.clone(),
            original: o.original_path.clone(),
            why,
        };
        if let Some(dev) = base.dev {
            if st.st_dev != dev {
                return Err(mismatch(format!(
                    "is on device {:#x}, not on the restart clone ({dev:#x}) mounted at {}",
                    st.st_dev,
                    base.path.display()
                )));
            }
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(mismatch(
                "is a symbolic link, not a file snapckpt made (planted?); remove it".into(),
            ));
        }
        if st.st_mode & libc::S_IFMT != o.mode & libc::S_IFMT {
            return Err(mismatch(format!(
                "file type {:o}, recorded {:o}",
                st.st_mode & libc::S_IFMT,
                o.mode & libc::S_IFMT
            )));
        }
        if st.st_ino != r.ino {
            return Err(mismatch(format!("inode {}, recorded {}", st.st_ino, r.ino)));
        }
        if o.kind == FileKind::Regular && r.method != Method::Link && st.st_size as u64 != o.size {
            return Err(mismatch(format!("size {}, recorded {}", st.st_size, o.size)));
        }
        // The access the task had, no more: an object held only through O_PATH fds stays O_PATH.
        let only_opath = held_only_as_opath(ck, o);
        let flags = match (only_opath, st.st_mode & libc::S_IFMT) {
            (true, _) => libc::O_PATH,
            (false, libc::S_IFDIR) => libc::O_RDONLY | libc::O_DIRECTORY,
            (false, libc::S_IFIFO) => libc::O_RDWR | libc::O_NONBLOCK,
            (false, libc::S_IFREG) => libc::O_RDONLY,
            _ => libc::O_PATH,
        };
        let fd = if flags == libc::O_PATH {
            pfd
        } else {
            sys::open(format!("/proc/self/fd/{}", pfd.as_raw_fd()), flags | libc::O_NOCTTY, 0)
                .map_err(|source| RestartError::Io { path: path.clone(), syscall: "open", source })?
        };
        out.push(Opened { obj: o, fd, dir, name: r.name.clone() });
    }
    Ok(out)
}

/// Whether every holder of `o` is an fd opened with O_PATH (no mapping, cwd or exe, no fd
/// that can read or write): then it is handed back as O_PATH only.
fn held_only_as_opath(ck: &Checkpoint, o: &Object) -> bool {
    let fds: Vec<u32> = ck
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter())
        .filter(|f| f.object == Some(o.index))
        .map(|f| f.flags)
        .collect();
    !fds.is_empty()
        && o.holders.iter().all(|h| matches!(h.what, Held::Fd(_)))
        && fds.iter().all(|&fl| fl as i32 & libc::O_PATH != 0)
}

/// Remove the relinked names: the inodes go back to their recorded link counts.
fn unlink_all(opened: &[Opened]) -> Result<(), RestartError> {
    for o in opened {
        o.dir.remove(&o.name, o.obj.kind == FileKind::Directory)?;
    }
    Ok(())
}

/// The fds `--exec` gets: (target fd, reopened file at the recorded flags and offset).
fn exec_fds(
    ck: &Checkpoint,
    task: Option<i32>,
    opened: &[Opened],
) -> Result<Vec<(i32, OwnedFd)>, RestartError> {
    let t = match task {
        Some(p) => ck
            .tasks
            .iter()
            .find(|t| t.pid == p)
            .ok_or_else(|| RestartError::Refused(format!("no task {p} in checkpoint {}", ck.id)))?,
        None => ck.tasks.iter().find(|t| t.fds.iter().any(|f| f.object.is_some())).ok_or_else(|| {
            RestartError::Refused(format!("no task of checkpoint {} holds an unlinked file in an fd", ck.id))
        })?,
    };
    let by_obj: HashMap<usize, &Opened> = opened.iter().map(|o| (o.obj.index, o)).collect();
    let mut out = vec![];
    for f in &t.fds {
        let Some(i) = f.object else { continue };
        let Some(o) = by_obj.get(&i) else { continue };
        // O_TMPFILE's bits include O_DIRECTORY: keep only the status and access flags
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_DIRECT
            | libc::O_NOATIME
            | libc::O_SYNC
            | libc::O_DSYNC;
        let mut flags = (f.flags as i32) & keep;
        if o.obj.kind == FileKind::Directory {
            flags |= libc::O_DIRECTORY;
        }
        let opath = f.flags as i32 & libc::O_PATH != 0;
        if opath {
            // no more access than the task had
            flags = libc::O_PATH;
        }
        let src = format!("/proc/self/fd/{}", o.fd.as_raw_fd());
        let nfd = sys::open(&src, flags, 0).map_err(|source| RestartError::Io {
            path: o.dir.path.join(&o.name),
            syscall: "open",
            source,
        })?;
        if o.obj.kind == FileKind::Regular && !opath {
            // SAFETY: lseek on our descriptor.
            if unsafe { libc::lseek(nfd.as_raw_fd(), f.pos as i64, libc::SEEK_SET) } < 0 {
                return Err(RestartError::Io {
                    path: o.dir.path.join(&o.name),
                    syscall: "lseek",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        out.push((f.fd, nfd));
    }
    Ok(out)
}

/// Run `cmd` with `fds` at their recorded numbers; between putting them there and execve the
/// child unlinks `unlinks` (directory fd, name, is a directory). Waits for it; its exit status.
fn run_exec(
    cmd: &[String],
    fds: &[(i32, OwnedFd)],
    unlinks: Vec<(RawFd, std::ffi::CString, bool)>,
) -> Result<i32, RestartError> {
    use std::os::unix::process::CommandExt;
    let (prog, args) =
        cmd.split_first().ok_or_else(|| RestartError::Refused("--exec needs a command".into()))?;
    let pairs: Vec<(i32, RawFd)> = fds.iter().map(|(t, f)| (*t, f.as_raw_fd())).collect();
    // The recorded fd numbers, our own fds and the copies made above them must fit under
    // RLIMIT_NOFILE: raise the soft limit for the command if needed, up to the hard limit.
    let top = |fds: &mut dyn Iterator<Item = i32>| fds.max().unwrap_or(0).max(0) as u64;
    let max_target = top(&mut pairs.iter().map(|p| p.0));
    let max_ours = top(&mut pairs.iter().map(|p| p.1).chain(unlinks.iter().map(|u| u.0)));
    let need = max_target.max(max_ours) + unlinks.len() as u64 + pairs.len() as u64 + 4;
    let (soft, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_err(|e| {
            RestartError::Io { path: PathBuf::from(prog), syscall: "getrlimit", source: e.into() }
        })?;
    if need > soft {
        if need > hard {
            return Err(RestartError::Refused(format!(
                "--exec: the recorded fds need {need} descriptors, but RLIMIT_NOFILE allows {hard} (hard limit): raise it (ulimit -Hn) and restart again; nothing was changed"
            )));
        }
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, need, hard).map_err(
            |e| RestartError::Io { path: PathBuf::from(prog), syscall: "setrlimit", source: e.into() },
        )?;
    }
    let out_of_range = |_| RestartError::Refused(format!("--exec: fd numbers up to {need} are out of range"));
    // The directories the child unlinks from, copied above every target fd (a dup2 onto a
    // target must not replace one of them); the copies live as long as the command.
    let above_targets = i32::try_from(max_target + 1).map_err(out_of_range)?;
    let unlinks = unlinks
        .into_iter()
        .map(|(dfd, name, dir)| {
            // SAFETY: fcntl on our descriptor; the result is a new descriptor that we own.
            let c = unsafe { libc::fcntl(dfd, libc::F_DUPFD_CLOEXEC, above_targets) };
            if c < 0 {
                return Err(RestartError::Io {
                    path: PathBuf::from(prog),
                    syscall: "fcntl",
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: a new descriptor that we own.
            Ok((unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(c) }, name, dir))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut c = Command::new(prog);
    c.args(args);
    // Move every source above all targets and our own fds first, so no dup2 clobbers a source.
    // Computed and allocated here: nothing may allocate between fork and exec.
    let high =
        i32::try_from(max_target.max(max_ours).max(top(&mut unlinks.iter().map(|u| u.0.as_raw_fd()))) + 1)
            .map_err(out_of_range)?;
    let mut moved = vec![0i32; pairs.len()];
    // SAFETY: only async-signal-safe calls (close_range, fcntl, dup2) between fork and exec.
    unsafe {
        c.pre_exec(move || {
            // Nothing but the recorded fds (and 0-2) reaches the command: mark every other
            // inherited fd close-on-exec (dup2 clears the flag on the targets).
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */);
            for (i, (_, src)) in pairs.iter().enumerate() {
                let m = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, high);
                if m < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved[i] = m;
            }
            for (i, (tgt, _)) in pairs.iter().enumerate() {
                if libc::dup2(moved[i], *tgt) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (dfd, name, dir) in &unlinks {
                if libc::unlinkat(dfd.as_raw_fd(), name.as_ptr(), if *dir { libc::AT_REMOVEDIR } else { 0 })
                    < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(|e| {
        RestartError::Refused(format!(
            "--exec {prog}: could not start it ({e}: putting the files at their recorded fd numbers, unlinking the relinked names or execve failed); see `snapckpt list` for what is left"
        ))
    })?;
    let st = child.wait().map_err(|source| RestartError::Io {
        path: PathBuf::from(prog),
        syscall: "wait",
        source,
    })?;
    Ok(st.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)))
}
