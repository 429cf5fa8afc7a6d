//! `restart --exec`: run a command holding a files-only checkpoint's objects at their recorded
//! fd numbers, flags and offsets. The relinked names are unlinked by the command's own
//! process, once its fds are in place and just before execve: a command that cannot start
//! leaves the checkpoint restartable, and the command never sees the names.

use super::RestartError;
use crate::record::{Checkpoint, FileKind};
use crate::relink::Reopened;
use crate::sys;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Command;

/// Why `--exec` cannot run (each before anything changed, unless said).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("--exec needs a command")]
    NoCommand,
    #[error("no task {pid} in checkpoint {id}")]
    NoSuchTask { pid: i32, id: String },
    #[error("no task of checkpoint {id} holds an unlinked file in an fd")]
    NoUnlinkedFd { id: String },
    #[error("--exec: fd numbers up to {need} are out of range")]
    FdRange { need: u64 },
    #[error("--exec: the recorded fds need {need} descriptors, but RLIMIT_NOFILE allows {hard} (hard limit): raise it (ulimit -Hn) and restart again; nothing was changed")]
    NoFileLimit { need: u64, hard: u64 },
    #[error("--exec: {prog}: no such executable")]
    NotFound { prog: String },
    #[error("--exec: {}: not an executable (no ELF header or #! line); nothing was changed", path.display())]
    NotExecutable { path: PathBuf },
    /// The command did not start: the names may be consumed already.
    #[error("--exec {prog}: could not start it ({source}: putting the files at their recorded fd numbers, unlinking the relinked names or execve failed); see `snapckpt list` for what is left")]
    Start { prog: String, source: std::io::Error },
}

/// The fds `--exec` gets: (target fd, reopened file at the recorded flags and offset).
pub(super) fn exec_fds(
    ck: &Checkpoint,
    task: Option<i32>,
    opened: &[Reopened],
) -> Result<Vec<(i32, OwnedFd)>, RestartError> {
    let t = match task {
        Some(p) => ck
            .tasks
            .iter()
            .find(|t| t.pid == p)
            .ok_or_else(|| ExecError::NoSuchTask { pid: p, id: ck.id.clone() })?,
        None => ck
            .tasks
            .iter()
            .find(|t| t.fds.iter().any(|f| f.object.is_some()))
            .ok_or_else(|| ExecError::NoUnlinkedFd { id: ck.id.clone() })?,
    };
    let by_obj: HashMap<usize, &Reopened> = opened.iter().map(|o| (o.obj.index, o)).collect();
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
        let nfd = sys::open(&src, flags, 0).map_err(|source| {
            RestartError::Io(crate::sys::SysError { path: o.dir.path.join(&o.name), syscall: "open", source })
        })?;
        if o.obj.kind == FileKind::Regular && !opath {
            // SAFETY: lseek on our descriptor.
            if unsafe { libc::lseek(nfd.as_raw_fd(), f.pos as i64, libc::SEEK_SET) } < 0 {
                return Err(RestartError::Io(crate::sys::SysError {
                    path: o.dir.path.join(&o.name),
                    syscall: "lseek",
                    source: std::io::Error::last_os_error(),
                }));
            }
        }
        out.push((f.fd, nfd));
    }
    Ok(out)
}

/// Run `cmd` with `fds` at their recorded numbers; between putting them there and execve the
/// child unlinks `unlinks` (directory fd, name, is a directory). Waits for it; its exit status.
pub(super) fn run_exec(
    cmd: &[String],
    fds: &[(i32, OwnedFd)],
    unlinks: Vec<(RawFd, std::ffi::CString, bool)>,
) -> Result<i32, RestartError> {
    use std::os::unix::process::CommandExt;
    let (prog, args) = cmd.split_first().ok_or(ExecError::NoCommand)?;
    let pairs: Vec<(i32, RawFd)> = fds.iter().map(|(t, f)| (*t, f.as_raw_fd())).collect();
    // The recorded fd numbers, our own fds and the copies made above them must fit under
    // RLIMIT_NOFILE: raise the soft limit for the command if needed, up to the hard limit.
    let top = |fds: &mut dyn Iterator<Item = i32>| fds.max().unwrap_or(0).max(0) as u64;
    let max_target = top(&mut pairs.iter().map(|p| p.0));
    let max_ours = top(&mut pairs.iter().map(|p| p.1).chain(unlinks.iter().map(|u| u.0)));
    let need = max_target.max(max_ours) + unlinks.len() as u64 + pairs.len() as u64 + 4;
    raise_nofile(prog, need)?;
    let out_of_range = |_| ExecError::FdRange { need };
    // The directories the child unlinks from, copied above every target fd (a dup2 onto a
    // target must not replace one of them); the copies live as long as the command.
    let above_targets = i32::try_from(max_target + 1).map_err(out_of_range)?;
    let unlinks = dup_above(prog, unlinks, above_targets)?;
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
    let mut child = c.spawn().map_err(|e| ExecError::Start { prog: prog.clone(), source: e })?;
    let st = child.wait().map_err(|source| {
        RestartError::Io(crate::sys::SysError { path: PathBuf::from(prog), syscall: "wait", source })
    })?;
    Ok(st.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)))
}

/// Raise the soft RLIMIT_NOFILE to `need` if it is lower; refused beyond the hard limit.
fn raise_nofile(prog: &str, need: u64) -> Result<(), RestartError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let err = |syscall| {
        move |e: nix::Error| {
            RestartError::Io(crate::sys::SysError { path: PathBuf::from(prog), syscall, source: e.into() })
        }
    };
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(err("getrlimit"))?;
    if need <= soft {
        return Ok(());
    }
    if need > hard {
        return Err(ExecError::NoFileLimit { need, hard }.into());
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard).map_err(err("setrlimit"))
}

/// Copies of the unlink directories' fds at `above` or higher (close-on-exec, owned).
fn dup_above(
    prog: &str,
    unlinks: Vec<(RawFd, std::ffi::CString, bool)>,
    above: i32,
) -> Result<Vec<(OwnedFd, std::ffi::CString, bool)>, RestartError> {
    unlinks
        .into_iter()
        .map(|(dfd, name, dir)| {
            // SAFETY: fcntl on our descriptor; the result is a new descriptor that we own.
            let c = unsafe { libc::fcntl(dfd, libc::F_DUPFD_CLOEXEC, above) };
            if c < 0 {
                return Err(RestartError::Io(crate::sys::SysError {
                    path: PathBuf::from(prog),
                    syscall: "fcntl",
                    source: std::io::Error::last_os_error(),
                }));
            }
            // SAFETY: a new descriptor that we own.
            Ok((unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(c) }, name, dir))
        })
        .collect()
}

/// Refuse, before anything changes, a command that cannot start: the names are consumed just
/// before execve, and an execve that fails then would lose them.
pub(super) fn check_command(cmd: &[String]) -> Result<(), RestartError> {
    let prog = cmd.first().ok_or(ExecError::NoCommand)?;
    let Some(exe) = sys::which(prog) else {
        return Err(ExecError::NotFound { prog: prog.clone() }.into());
    };
    let mut head = [0u8; 4];
    let n = std::fs::File::open(&exe).and_then(|mut f| std::io::Read::read(&mut f, &mut head)).unwrap_or(0);
    if !(head[..n].starts_with(b"\x7fELF") || head[..n].starts_with(b"#!")) {
        return Err(ExecError::NotExecutable { path: exe }.into());
    }
    Ok(())
}
