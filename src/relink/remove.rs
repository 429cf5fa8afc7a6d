//! The delete/gc side of a relinked name: find the names a checkpoint (or a failed take)
//! left on a live filesystem and remove them.

use super::dir::open_checkpoint_dir;
use super::RelinkError;
use crate::record::names::Template;
use crate::record::{Checkpoint, FileKind};
use std::path::Path;

/// Whether an error is "no such file": a name (or its directory) already gone.
pub(crate) fn is_enoent(e: &RelinkError) -> bool {
    matches!(e, RelinkError::Io(crate::sys::SysError { source, .. }) if source.raw_os_error() == Some(libc::ENOENT))
}

/// Remove the relinked names of `ck` still on the live filesystems (those already gone are
/// skipped).
pub fn remove_live_names(ck: &Checkpoint) -> Result<(), RelinkError> {
    for (o, r) in ck.relinked() {
        let d = match open_checkpoint_dir(Path::new(&o.mount.mount_point), None, false) {
            Ok(d) => d,
            Err(e) if is_enoent(&e) => continue,
            Err(e) => return Err(e),
        };
        match d.remove(&r.name, o.kind == FileKind::Directory) {
            Err(e) if !is_enoent(&e) => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Relinked names under one mount's checkpoint directory, grouped by the checkpoint id they
/// carry (names that the template does not match are listed under `None`).
pub fn leftovers(
    mount_dir: &Path,
    template: &Template,
) -> Result<Vec<(Option<String>, String, bool)>, RelinkError> {
    let d = match open_checkpoint_dir(mount_dir, None, false) {
        Ok(d) => d,
        Err(RelinkError::Io(crate::sys::SysError { source, .. }))
            if source.raw_os_error() == Some(libc::ENOENT) =>
        {
            return Ok(vec![])
        }
        Err(e) => return Err(e),
    };
    Ok(d.names()?.into_iter().map(|(n, is_dir)| (template.match_id(&n), n, is_dir)).collect())
}
