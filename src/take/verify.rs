//! Before a take ends its tasks (kills them, or leaves them stopped): show that the checkpoint
//! can be restarted. A checkpoint that fails is not published and the tasks go on.
//!
//! * every external file CRIU recorded is one of the relinked objects (the restart names
//!   each by the path it places it at; an unknown one would make the restore fail);
//! * every relinked object opens the way the restore opens it: with each fd's own flags
//!   (`O_NOFOLLOW` included), as a directory, or as an `O_PATH` reference.
//!
//! And before the freeze ([`unsupported_fds`]): what CRIU cannot dump at all (io_uring
//! instances, perf events, unix connections to a peer outside the tasks) is refused while
//! nothing has changed.

use super::TakeError;
use crate::record::{Checkpoint, FileKind, Method, Object, Task, Unlinked};
use crate::relink::Relinker;
use crate::sys;
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Kernel's `__O_TMPFILE` bit (with O_DIRECTORY it makes O_TMPFILE).
const O_TMPFILE_BIT: i32 = 0o20000000;

/// Which relinked objects a call checks: their names are all present then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    All,
    /// Only those whose name leads to the task's own inode (removed again inside the freeze).
    SameInode,
    /// Only those that are a new inode (clones, copies, recreated nodes; removed after it).
    NewInode,
}

impl Names {
    fn selects(self, m: Method) -> bool {
        let same = matches!(m, Method::Link | Method::KernelLink);
        match self {
            Names::All => true,
            Names::SameInode => same,
            Names::NewInode => !same,
        }
    }
}

/// Show that the checkpoint can be restarted (see the module comment), for the objects
/// `names` selects. `criu`: the image directory holds a CRIU dump whose external files are
/// checked too.
pub fn restartable(
    tasks: &[Task],
    objects: &[Object],
    criu: bool,
    image_dir: &Path,
    relinker: &Relinker,
    names: Names,
) -> Result<(), TakeError> {
    if criu {
        externals_known(objects, image_dir)?;
    }
    let mut flags: HashMap<usize, Vec<i32>> = HashMap::new();
    for f in tasks.iter().flat_map(|t| t.fds.iter()) {
        if let Some(i) = f.object {
            flags.entry(i).or_default().push(f.flags as i32);
        }
    }
    let selected = |o: &&Object| o.relinked.as_ref().is_some_and(|r| names.selects(r.method));
    for o in objects.iter().filter(selected) {
        reopens(o, flags.get(&o.index).map_or(&[][..], Vec::as_slice), relinker)?;
    }
    Ok(())
}

fn externals_known(objects: &[Object], image_dir: &Path) -> Result<(), TakeError> {
    let ours: HashSet<&str> =
        objects.iter().filter(|o| o.relinked.is_some()).map(|o| o.criu_key.as_str()).collect();
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

/// The flags the restore opens an object with, one set per holder fd (at least one), from
/// the flags of the fds that hold it.
fn restore_flags(o: &Object, fd_flags: &[i32]) -> Vec<i32> {
    // An O_TMPFILE keeps O_DIRECTORY (part of O_TMPFILE) in its flags: not for reopening.
    let strip =
        libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY | O_TMPFILE_BIT | libc::O_DIRECTORY;
    let kind_flags = match o.kind {
        FileKind::Directory => libc::O_RDONLY | libc::O_DIRECTORY,
        FileKind::Regular => libc::O_RDONLY,
        FileKind::Symlink => libc::O_PATH | libc::O_NOFOLLOW,
        // FIFOs block and devices act on open: a reference is what can be checked.
        _ => libc::O_PATH,
    };
    let mut v: Vec<i32> = fd_flags
        .iter()
        .map(|&fl| {
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

fn reopens(o: &Object, fd_flags: &[i32], relinker: &Relinker) -> Result<(), TakeError> {
    let r = o.relinked.as_ref().expect("relinked");
    let Some(dir) = relinker.dir(o.mount.mnt_id) else { return Ok(()) };
    let path = dir.path.join(&r.name);
    let _ref = dir
        .open(&r.name, libc::O_PATH | libc::O_NOFOLLOW)
        .map_err(|e| TakeError::NotRestartable(format!("{}: {e}", path.display())))?;
    for flags in restore_flags(o, fd_flags) {
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
        // scan classes an fd opened O_TMPFILE as `tmpfile`; a copy or clone of one means the
        // kernel refused the link (O_EXCL: never linkable)
        .filter(|o| matches!(o.class, Unlinked::Tmpfile | Unlinked::Orphan))
        .filter(|o| {
            o.relinked
                .as_ref()
                .is_some_and(|r| matches!(r.method, Method::Clone | Method::CopyRange | Method::SparseCopy))
        })
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
    // (pid, fd, socket inode) of every socket the tasks hold
    let mut socks: Vec<(i32, String, u32)> = vec![];
    for &pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
        for e in rd.flatten() {
            let Ok(t) = std::fs::read_link(e.path()) else { continue };
            let t = t.to_string_lossy();
            if let Some(ino) = t.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                if let Ok(ino) = ino.parse() {
                    socks.push((pid, e.file_name().to_string_lossy().into_owned(), ino));
                }
                continue;
            }
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
    unix_peers_outside(&socks)
}

/// Unix sockets connected to a peer outside the tasks: CRIU dumps one end of a connection
/// only for a datagram socket whose peer has a name (it connects to the name again at
/// restore, `--ext-unix-sk`); it refuses half a stream or seqpacket connection, a nameless
/// datagram peer, and a listener with a client from outside waiting to be accepted.
fn unix_peers_outside(socks: &[(i32, String, u32)]) -> Result<(), TakeError> {
    if socks.is_empty() {
        return Ok(());
    }
    // Not knowing (no unix_diag in this kernel) is not a refusal: CRIU then says it itself.
    let Ok(all) = crate::unix_diag::sockets() else { return Ok(()) };
    let ours: HashSet<u32> = socks.iter().map(|s| s.2).collect();
    for (pid, fd, ino) in socks {
        let Some(s) = all.get(ino) else { continue };
        let name = |s: &crate::unix_diag::UnixSock| {
            s.name.as_deref().map_or(String::new(), |n| format!(" bound at {n}"))
        };
        let outside = |peer: u32| {
            let held = holders(peer);
            let by = if held.is_empty() {
                "no process found".to_string()
            } else {
                format!("held by pid {}", held.iter().map(i32::to_string).collect::<Vec<_>>().join(", "))
            };
            format!("socket:[{peer}], {by}")
        };
        let what = if s.peer != 0 && !ours.contains(&s.peer) {
            let peer = all.get(&s.peer).cloned().unwrap_or_default();
            if s.kind == libc::SOCK_DGRAM && peer.name.is_some() {
                continue; // reconnected by name at restore
            }
            format!(
                "a unix {} socket{} connected to a peer outside the checkpointed tasks ({}{}): CRIU cannot dump {}",
                s.kind_name(),
                name(s),
                outside(s.peer),
                name(&peer),
                if s.kind == libc::SOCK_DGRAM { "a datagram socket connected to a nameless peer" } else { "one half of a connection" },
            )
        } else if let Some(&w) = s.waiting.iter().find(|w| !ours.contains(w)) {
            format!(
                "a unix {} listener{} with a connection from outside the checkpointed tasks waiting to be accepted ({}): CRIU cannot dump it",
                s.kind_name(),
                name(s),
                outside(w)
            )
        } else {
            continue;
        };
        return Err(TakeError::OutsidePeer { pid: *pid, fd: fd.clone(), what });
    }
    Ok(())
}

/// The processes holding socket inode `ino` (by their fds), for a message.
fn holders(ino: u32) -> Vec<i32> {
    let want = format!("socket:[{ino}]");
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    let mut v: Vec<i32> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|f| std::fs::read_link(f.path()).is_ok_and(|t| t.as_os_str() == want.as_str()))
            })
        })
        .collect();
    v.sort_unstable();
    v
}
