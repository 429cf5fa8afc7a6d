//! Before a take ends its tasks (kills them, or leaves them stopped): show that the checkpoint
//! can be restarted. A checkpoint that fails is not published and the tasks go on.
//!
//! * every external file CRIU recorded is one of the relinked objects (the restart names
//!   each by the path it places it at; an unknown one would make the restore fail);
//! * every relinked object opens the way the restore opens it: with each fd's own flags
//!   (`O_NOFOLLOW` included), as a directory, or as an `O_PATH` reference.
//!
//! And before the freeze ([`unsupported_fds`]): what CRIU cannot dump at all (io_uring
//! instances, perf events) is refused while nothing has changed.

use super::TakeError;
use crate::record::{Checkpoint, Engine, FileKind, Object, Unlinked};
use crate::relink::Relinker;
use crate::scan::Scan;
use crate::sys;
use std::collections::HashSet;
use std::path::Path;

/// Kernel's `__O_TMPFILE` bit (with O_DIRECTORY it makes O_TMPFILE).
const O_TMPFILE_BIT: i32 = 0o20000000;

/// Show that the checkpoint can be restarted (see the module comment).
pub fn restartable(
    sc: &Scan,
    engine: &Engine,
    image_dir: &Path,
    relinker: &Relinker,
) -> Result<(), TakeError> {
    if let Engine::Criu { .. } = engine {
        externals_known(sc, image_dir)?;
    }
    for o in sc.objects.iter().filter(|o| o.relinked.is_some()) {
        reopens(sc, o, relinker)?;
    }
    Ok(())
}

fn externals_known(sc: &Scan, image_dir: &Path) -> Result<(), TakeError> {
    let ours: HashSet<&str> =
        sc.objects.iter().filter(|o| o.relinked.is_some()).map(|o| o.criu_key.as_str()).collect();
    let listed = crate::criu_image::list_externals(image_dir).map_err(|e| {
        TakeError::NotRestartable(format!("CRIU's image cannot be read for the restore: {e}"))
    })?;
    for e in listed {
        let key = e.name.to_string_lossy();
        if !ours.contains(key.as_ref()) {
            return Err(TakeError::NotRestartable(format!(
                "CRIU recorded the external file {key}, which snapckpt did not preserve"
            )));
        }
    }
    Ok(())
}

/// The flags the restore opens an object with, one set per holder fd (at least one).
fn restore_flags(sc: &Scan, o: &Object) -> Vec<i32> {
    let strip = libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | O_TMPFILE_BIT;
    let kind_flags = match o.kind {
        FileKind::Directory => libc::O_RDONLY | libc::O_DIRECTORY,
        FileKind::Regular => libc::O_RDONLY,
        FileKind::Symlink => libc::O_PATH | libc::O_NOFOLLOW,
        // FIFOs block and devices act on open: a reference is what can be checked.
        _ => libc::O_PATH,
    };
    let mut v: Vec<i32> = sc
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter())
        .filter(|f| f.object == Some(o.index))
        .map(|f| f.flags as i32)
        .map(|fl| {
            if fl & libc::O_PATH != 0 || o.kind != FileKind::Regular {
                kind_flags | (fl & libc::O_PATH)
            } else {
                fl & !strip
            }
        })
        .collect();
    if v.is_empty() {
        v.push(kind_flags);
    }
    v.sort_unstable();
    v.dedup();
    v
}

fn reopens(sc: &Scan, o: &Object, relinker: &Relinker) -> Result<(), TakeError> {
    let r = o.relinked.as_ref().expect("relinked");
    let Some(dir) = relinker.dir(o.mount.mnt_id) else { return Ok(()) };
    let path = dir.path.join(&r.name);
    let _ref = dir
        .open(&r.name, libc::O_PATH | libc::O_NOFOLLOW)
        .map_err(|e| TakeError::NotRestartable(format!("{}: {e}", path.display())))?;
    for flags in restore_flags(sc, o) {
        let f = flags | libc::O_CLOEXEC | libc::O_NONBLOCK;
        let opened = if flags & libc::O_PATH != 0 {
            Ok(())
        } else {
            // Through the checkpoint directory's fd, no symlink followed (as the restore opens
            // its placed name, a plain file).
            sys::openat2(dir.fd(), &r.name, f, 0, sys::RESOLVE_STRICT).map(drop)
        };
        if let Err(e) = opened {
            return Err(TakeError::NotRestartable(format!(
                "{} (the preserved {}) cannot be opened with the flags {:o} of its fd: {e}",
                path.display(),
                o.original_path,
                flags
            )));
        }
    }
    Ok(())
}

/// A note for O_TMPFILE files that could not be linked (opened with O_EXCL): preserved as a
/// copy or clone instead.
pub fn tmpfile_notes(ck: &Checkpoint) -> Option<String> {
    let n = ck
        .objects
        .iter()
        .filter(|o| o.class == Unlinked::Orphan && o.relinked.is_some())
        .filter(|o| {
            ck.tasks
                .iter()
                .flat_map(|t| t.fds.iter())
                .any(|f| f.object == Some(o.index) && f.flags as i32 & O_TMPFILE_BIT != 0)
        })
        .count();
    (n > 0).then(|| {
        format!("{n} O_TMPFILE file(s) opened with O_EXCL cannot be linked (the kernel refuses): preserved as a clone or copy instead")
    })
}

/// Refuse, before the freeze, fds CRIU cannot dump.
pub fn unsupported_fds(pids: &[i32]) -> Result<(), TakeError> {
    for &pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in rd.flatten() {
            let Ok(t) = std::fs::read_link(e.path()) else { continue };
            let t = t.to_string_lossy();
            let advice = if t.contains("[io_uring]") {
                "CRIU cannot dump io_uring instances: run the program without io_uring (MariaDB: --innodb-use-native-aio=0; liburing users: their fallback to epoll/threads)"
            } else if t.contains("[perf_event]") {
                "CRIU cannot dump perf events: stop the profiler (perf record/stat) attached to it"
            } else {
                continue;
            };
            return Err(TakeError::Unsupported {
                pid,
                fd: e.file_name().to_string_lossy().into_owned(),
                what: t.into_owned(),
                advice,
            });
        }
    }
    Ok(())
}
