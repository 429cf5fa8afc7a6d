//! Migration: `snapckpt export` and `snapckpt import`.
//!
//! After the relink, the filesystem holds everything a checkpoint needs, so a checkpoint
//! travels with the filesystem's own replication: [`export`] writes one stream ([`stream`])
//! holding the record, the CRIU image files and, for each btrfs snapshot, a `btrfs send` of
//! the read-only snapshot (incremental against an earlier checkpoint with `--parent`, or left
//! out with `--image-only` for shared storage); an LVM thin snapshot travels as its allocated
//! blocks ([`lvm`]). [`import`] verifies the whole stream before
//! it acts, `btrfs receive`s each snapshot into a temporary directory of the target
//! filesystem and moves it to `<mount>/<snapshot_dir>/<id>/snapshot`, and publishes a record
//! in the target's terms (mount points mapped, the received snapshots' ids, the preserved
//! files' new inode numbers) with where it came from ([`crate::record::imported`]). `list`,
//! `restart --snapshot` and `delete` then treat it like a local checkpoint;
//! [`check_restart`] refuses, before a restart changes anything, what cannot work here.

pub mod export;
pub mod import;
pub mod lvm;
pub mod paths;
pub mod stream;

pub use export::{export, ExportOptions, Exported, Output};
pub use import::{import, ImportOptions, Imported, Input};

use crate::record::imported::MountMap;
use crate::record::{Checkpoint, Engine};
use crate::{criu, criu_image, image, snapshot};
use std::path::{Path, PathBuf};

/// Errors of export and import, each with the path and the operation concerned.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Stream(#[from] stream::StreamError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    #[error("btrfs {op} {path}: {msg}")]
    Btrfs { path: PathBuf, op: &'static str, msg: String },
    /// An external command (`btrfs send`, `btrfs receive`) failed.
    #[error("{cmd} failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("{0}")]
    Refused(String),
}

pub(crate) fn io_err<'a>(
    path: &'a Path,
    syscall: &'static str,
) -> impl FnOnce(std::io::Error) -> MigrateError + 'a {
    move |source| MigrateError::Io(crate::sys::SysError { path: path.to_path_buf(), syscall, source })
}

pub(crate) fn bt_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(libbtrfsutil::Error) -> MigrateError + 'a {
    move |e| MigrateError::Btrfs { path: path.to_path_buf(), op, msg: format!("{e} ({})", e.os_error()) }
}

/// `uname -r`.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default()
}

/// `p` with the longest source mount point it lies under replaced by its target (whole path
/// components only); unchanged when it lies under none.
pub fn map_path(p: &str, maps: &[MountMap]) -> String {
    let under = |m: &MountMap| -> Option<usize> {
        let rest = if m.source == "/" { p.strip_prefix('/') } else { p.strip_prefix(m.source.as_str()) }?;
        (rest.is_empty() || rest.starts_with('/') || m.source == "/").then_some(m.source.len())
    };
    let Some(m) = maps.iter().filter(|m| under(m).is_some()).max_by_key(|m| m.source.len()) else {
        return p.to_string();
    };
    let rest = if m.source == "/" { &p[1..] } else { p[m.source.len()..].trim_start_matches('/') };
    if rest.is_empty() {
        m.target.clone()
    } else {
        format!("{}/{rest}", m.target.trim_end_matches('/'))
    }
}

/// Whether `p` is `mount` or lies under it (whole components).
pub fn is_under(p: &str, mount: &str) -> bool {
    mount == "/" || p == mount || p.strip_prefix(mount).is_some_and(|r| r.starts_with('/'))
}

/// Map every path of the record that lies under a source mount point to the target.
pub fn map_record(ck: &mut Checkpoint, maps: &[MountMap]) {
    for f in &mut ck.filesystems {
        f.mount_point = map_path(&f.mount_point, maps);
    }
    for o in &mut ck.objects {
        o.original_path = map_path(&o.original_path, maps);
        o.mount.mount_point = map_path(&o.mount.mount_point, maps);
    }
    for t in &mut ck.tasks {
        for f in &mut t.fds {
            f.path = map_path(&f.path, maps);
        }
        for m in &mut t.maps {
            m.path = map_path(&m.path, maps);
        }
        for r in [&mut t.cwd, &mut t.root, &mut t.exe].into_iter().flatten() {
            r.path = map_path(&r.path, maps);
        }
    }
}

/// Before a restart of an imported checkpoint changes anything: refuse what cannot work on
/// this machine, saying what to do. A checkpoint that was not imported passes.
///
/// For a CRIU image: the files CRIU will open by path must be here (those that were not on a
/// snapshotted filesystem: executables, libraries), with the recorded size; files on a
/// snapshotted filesystem must be reached at the path the image names (it names the source's
/// mount point); this machine's CRIU must not be older than the one that dumped; and on
/// another kernel `criu check` must pass here.
pub fn check_restart(ck: &Checkpoint, image_dir: &Path, criu_path: Option<&Path>) -> Result<(), String> {
    let Some(imp) = &ck.imported else { return Ok(()) };
    let Engine::Criu { version, .. } = &ck.engine else { return Ok(()) };
    let files = criu_image::list_reg_files(image_dir).map_err(|e| e.to_string())?;
    for f in files.iter().filter(|f| !f.ext) {
        let name = f.name.to_string_lossy();
        check_image_file(&name, f.size, &imp.mounts)?;
    }
    let criu = criu::find(criu_path).map_err(|e| e.to_string())?;
    let here = criu::version_string(&criu);
    if version_older(&here, version) {
        return Err(format!(
            "this machine's CRIU ({} at {}) is older than the CRIU {version} that wrote the image: install CRIU {version} or newer (scripts/install-criu.sh) or give --criu PATH; nothing was changed",
            if here.is_empty() { "unknown version" } else { &here },
            criu.display()
        ));
    }
    let kernel = kernel_release();
    if kernel != imp.from_kernel {
        let (_, ok, out) = criu::check(&criu).map_err(|e| e.to_string())?;
        if !ok {
            return Err(format!(
                "the checkpoint was dumped on kernel {} ({}), this is {kernel}, and `criu check` fails here: {out}\nboot a kernel with the features CRIU needs (`snapckpt check` tells which), or restart on a machine like the source; nothing was changed",
                imp.from_kernel, imp.from_host
            ));
        }
    }
    Ok(())
}

/// One regular file the CRIU image opens by path (`name` with its leading '/'). Files under a
/// target mount point are in the restart clone (the import renamed them there).
fn check_image_file(name: &str, size: Option<u64>, maps: &[MountMap]) -> Result<(), String> {
    if maps.iter().any(|m| is_under(name, &m.target)) {
        return Ok(());
    }
    if let Some(m) = maps.iter().find(|m| is_under(name, &m.source)) {
        if m.source != m.target {
            return Err(format!(
                "the CRIU image opens {name} by path, on the snapshotted filesystem that the source mounted at {} and this machine at {}: mount it at {} here (e.g. in a mount namespace of its own) and import it with --mount {}; nothing was changed",
                m.source, m.target, m.source, m.source
            ));
        }
        return Ok(());
    }
    match std::fs::metadata(name) {
        Err(e) => Err(format!(
            "the CRIU image needs {name}, which is not on this machine ({e}) and was not on a snapshotted filesystem: install it (the same version: CRIU checks its size and build id), or put it on a snapshotted filesystem before the checkpoint; nothing was changed"
        )),
        Ok(md) if md.is_file() && size.is_some_and(|s| s != md.len()) => Err(format!(
            "{name} on this machine is {} bytes, the CRIU image recorded {} bytes on the source: install the same version as the source's; nothing was changed",
            md.len(),
            size.unwrap_or(0)
        )),
        Ok(_) => Ok(()),
    }
}

/// Whether version `a` ("4.0", "4.1.1") is older than `b`; unknown versions are not.
fn version_older(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Option<Vec<u32>> { s.split('.').map(|x| x.trim().parse().ok()).collect() };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x < y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(s: &str, t: &str) -> MountMap {
        MountMap { source: s.into(), target: t.into() }
    }

    #[test]
    fn paths_are_mapped_by_whole_components() {
        let maps = [m("/a", "/b/c"), m("/a/d", "/e")];
        assert_eq!(map_path("/a/x (deleted)", &maps), "/b/c/x (deleted)");
        assert_eq!(map_path("/a", &maps), "/b/c");
        assert_eq!(map_path("/a/d/y", &maps), "/e/y");
        assert_eq!(map_path("/ab/x", &maps), "/ab/x");
        assert_eq!(map_path("/etc/passwd", &maps), "/etc/passwd");
        assert_eq!(map_path("/x", &[m("/", "/t")]), "/t/x");
    }

    #[test]
    fn versions() {
        assert!(version_older("3.17.1", "4.1.1"));
        assert!(!version_older("4.1.1", "4.1.1"));
        assert!(!version_older("4.2", "4.1.1"));
        assert!(!version_older("", "4.1"));
    }
}
