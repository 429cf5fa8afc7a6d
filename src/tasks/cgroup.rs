//! Cgroups, v1 and v2: which hierarchy a directory is in, the freezer state of a cgroup
//! (`cgroup.events`, `freezer.state`), its subtree of descendant cgroups, the processes and
//! threads in it, and which of them have not frozen.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::sys::statfs::{statfs, CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC};

use super::selection::{parse_pids, threads};
use super::{io_err, read_stat, TaskError};
use crate::procfs::{self, ProcStat};

/// Write `data` to a cgroup control file with a single `write(2)`.
pub(super) fn write_file(path: &Path, data: &str) -> Result<(), TaskError> {
    let mut f = fs::OpenOptions::new().write(true).open(path).map_err(|e| io_err(path, "open", e))?;
    f.write_all(data.as_bytes()).map_err(|e| io_err(path, "write", e))
}

/// The `cgroup.procs` of `cg` and of all its descendant cgroups (unordered, possibly with
/// duplicates). A descendant removed meanwhile is skipped.
pub(super) fn cgroup_procs(cg: &Path) -> Result<Vec<i32>, TaskError> {
    let mut out = Vec::new();
    for (i, dir) in cgroup_subtree(cg)?.iter().enumerate() {
        let procs = dir.join("cgroup.procs");
        match crate::procfs::read_text(&procs) {
            Ok(s) => out.extend(parse_pids(&s, &procs)?.into_iter().filter(|&p| p > 0)),
            // A threaded cgroup of v2 refuses cgroup.procs: its processes are listed above it.
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && i > 0 => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Err(TaskError::NotACgroup(cg.to_path_buf()))
            }
            Err(e) => return Err(io_err(procs, "read", e)),
        }
    }
    Ok(out)
}

/// The cgroup hierarchy a directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Which cgroup hierarchy `path` is in, from the filesystem magic of `statfs(2)`.
pub fn cgroup_version(path: &Path) -> Result<CgroupVersion, TaskError> {
    let st = match statfs(path) {
        Ok(st) => st,
        Err(nix::errno::Errno::ENOENT) => return Err(TaskError::NoSuchCgroup(path.to_path_buf())),
        Err(nix::errno::Errno::ENOTDIR) => return Err(TaskError::NotACgroup(path.to_path_buf())),
        Err(e) => return Err(io_err(path, "statfs", e.into())),
    };
    if !path.is_dir() {
        return Err(TaskError::NotACgroup(path.to_path_buf()));
    }
    match st.filesystem_type() {
        t if t == CGROUP2_SUPER_MAGIC => Ok(CgroupVersion::V2),
        t if t == CGROUP_SUPER_MAGIC => Ok(CgroupVersion::V1),
        _ => Err(TaskError::NotACgroup(path.to_path_buf())),
    }
}

/// The state of a v2 cgroup from its `cgroup.events`: `Some(frozen)`, `None` if removed.
pub(super) fn v2_frozen(cg: &Path) -> Result<Option<bool>, TaskError> {
    let path = cg.join("cgroup.events");
    let s = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(io_err(path, "read", e)),
    };
    match s.lines().find_map(|l| l.strip_prefix("frozen ")) {
        Some(v) => Ok(Some(v.trim() == "1")),
        None => Err(io_err(path, "parse", io::Error::new(io::ErrorKind::InvalidData, "no \"frozen\" line"))),
    }
}

/// The contents of a v1 `freezer.state` (`THAWED`, `FREEZING`, `FROZEN`), `None` if removed.
pub(super) fn v1_state(cg: &Path) -> Result<Option<String>, TaskError> {
    let path = cg.join("freezer.state");
    match fs::read_to_string(&path) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(io_err(path, "read", e)),
    }
}

/// `cg` and all its descendant cgroups, parents first. Descendants removed meanwhile are
/// skipped.
fn cgroup_subtree(cg: &Path) -> Result<Vec<PathBuf>, TaskError> {
    let mut out = vec![cg.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let dir = out[i].clone();
        i += 1;
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && i > 1 => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(TaskError::NotACgroup(dir)),
            Err(e) => return Err(io_err(dir, "opendir", e)),
        };
        let mut subs: Vec<PathBuf> = rd
            .flatten()
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        subs.sort();
        out.extend(subs);
    }
    Ok(out)
}

/// The threads of the processes directly in cgroup `dir` with their `/proc` stat; threads
/// and processes that exit meanwhile are skipped.
fn cgroup_threads(dir: &Path) -> Result<Vec<ProcStat>, TaskError> {
    let procs = dir.join("cgroup.procs");
    let pids = match crate::procfs::read_text(&procs) {
        Ok(s) => parse_pids(&s, &procs)?,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EOPNOTSUPP)) => Vec::new(),
        Err(e) => return Err(io_err(procs, "read", e)),
    };
    let mut out = Vec::new();
    for pid in pids.into_iter().filter(|&p| p > 0) {
        let tids = match threads(pid) {
            Ok(t) => t,
            Err(TaskError::NoSuchTask(_)) => continue,
            Err(e) => return Err(e),
        };
        for tid in tids {
            if let Some(st) = read_stat(&procfs::thread_path(pid, tid, "stat"))? {
                out.push(st);
            }
        }
    }
    Ok(out)
}

/// Whether the v2 cgroup `cg` and everything below it is frozen.
///
/// `frozen 1` in the `cgroup.events` of `cg` alone is not enough: the kernel aggregates the
/// flag racily (up to at least 6.18, see the LKML threads on `cgroup_propagate_frozen`): a
/// cgroup is flagged frozen when its own tasks are frozen even if a descendant is not yet,
/// and when its descendants are frozen even if its own tasks are not yet (the flag then
/// drops back to 0 for a moment). So require `frozen 1` on every cgroup of the subtree, and
/// no thread in state `R`: once the freeze request has been written, every task has been
/// woken, so a task that is still running has not reached the freezer yet. (Tasks in `D`
/// cannot be told apart: a `vfork` parent in `D` counts as frozen for the kernel.)
pub(super) fn v2_subtree_frozen(cg: &Path) -> Result<bool, TaskError> {
    let dirs = cgroup_subtree(cg)?;
    for (i, dir) in dirs.iter().enumerate() {
        match v2_frozen(dir)? {
            Some(true) => {}
            Some(false) => return Ok(false),
            None if i == 0 => return Err(TaskError::NotACgroup(cg.to_path_buf())),
            None => {}
        }
    }
    for dir in &dirs {
        if cgroup_threads(dir)?.iter().any(|st| st.state == 'R') {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The tasks of the cgroups under `cg` (inclusive) that are not frozen, for error messages.
pub(super) fn stuck_in_cgroup(cg: &Path, version: CgroupVersion) -> Vec<String> {
    let mut out = Vec::new();
    for dir in cgroup_subtree(cg).unwrap_or_else(|_| vec![cg.to_path_buf()]) {
        let frozen = match version {
            CgroupVersion::V2 => v2_frozen(&dir).ok().flatten().unwrap_or(true),
            CgroupVersion::V1 => v1_state(&dir).ok().flatten().map(|s| s == "FROZEN").unwrap_or(true),
        };
        let before = out.len();
        for st in cgroup_threads(&dir).unwrap_or_default() {
            // Frozen v2 tasks sleep in the freezer (S, or T if stopped); a v2 task in R or D
            // is a suspect. Frozen v1 tasks show as D, like stuck ones: in a v1 cgroup that
            // is not frozen, name every task with its state.
            let suspect = match version {
                CgroupVersion::V2 => !matches!(st.state, 'S' | 'T' | 't' | 'Z' | 'X'),
                CgroupVersion::V1 => !frozen,
            };
            if suspect {
                out.push(format!("tid {} ({}) state {} in {}", st.pid, st.comm, st.state, dir.display()));
            }
        }
        if !frozen && out.len() == before {
            out.push(format!("cgroup {} (not frozen)", dir.display()));
        }
    }
    if out.is_empty() {
        out.push(format!("cgroup {} (not frozen)", cg.display()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{resolve, FreezeMethod, Selection};

    #[test]
    fn no_such_cgroup() {
        let sel = Selection::Cgroup("/sys/fs/cgroup/nonexistent-snapckpt-test".into());
        let e = resolve(&sel).unwrap_err();
        assert!(matches!(e, TaskError::NoSuchCgroup(_)), "{e}");
        assert!(e.to_string().contains("does not exist"), "{e}");
        assert!(matches!(FreezeMethod::for_selection(&sel, &[]), Err(TaskError::NoSuchCgroup(_))));
    }

    #[test]
    fn not_a_cgroup() {
        for p in ["/tmp", "/proc/self/stat", "/proc/self/stat/x"] {
            let sel = Selection::Cgroup(p.into());
            assert!(matches!(resolve(&sel), Err(TaskError::NotACgroup(_))), "{p}");
            assert!(matches!(FreezeMethod::for_selection(&sel, &[]), Err(TaskError::NotACgroup(_))), "{p}");
        }
    }
}
