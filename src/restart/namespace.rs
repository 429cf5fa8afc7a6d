//! The private mount namespace a restart runs in by default: snapckpt unshares its mount
//! namespace (mounts below `/` become slaves, so the host's later mounts still reach it but
//! nothing mounted here reaches the host), mounts the restart clones at the recorded mount
//! points there, and CRIU (or the `--exec` command), a child of snapckpt, restores the tasks
//! into it. The host's view is untouched, two restarts of one checkpoint each see the paths
//! as recorded, and the clones' mounts end with the last task that uses them.

use super::RestartError;
use nix::mount::MsFlags;
use nix::sched::CloneFlags;
use std::path::PathBuf;

/// Leave the host's mount namespace for a new one of this process (and its children).
pub fn enter_private() -> Result<(), RestartError> {
    let io = |syscall, e: nix::Error| {
        RestartError::Io(crate::sys::SysError { path: PathBuf::from("/"), syscall, source: e.into() })
    };
    nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| io("unshare(CLONE_NEWNS)", e))?;
    nix::mount::mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)
        .map_err(|e| io("mount(MS_SLAVE)", e))?;
    Ok(())
}
