//! Cleanup: delete a checkpoint with its snapshots and relinked names, and collect what a
//! failed or killed take left behind (`gc`).
//!
//! Every relinked name carries its checkpoint's id (the template's `%t`), so `gc` can group
//! the names under each mount's `lost+found/checkpoint` by id and remove those whose
//! checkpoint has no complete image and no take in progress.

use crate::image;
use crate::record::{self, Checkpoint};
use crate::relink::{self, Template};
use crate::snapshot;
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Relink(#[from] relink::RelinkError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    /// `delete --force` of something that is not a checkpoint's image directory.
    #[error("{}: {why}; not removed", path.display())]
    NotACheckpoint { path: PathBuf, why: &'static str },
}

/// Delete a checkpoint: its snapshots (refused while a restart clone is mounted, unless
/// `force`), its relinked names still on the live filesystems, then its image directory.
pub fn delete(image_dir: &Path, force: bool) -> Result<Checkpoint, CleanupError> {
    image::trusted_root(image_dir.parent().unwrap_or(Path::new(".")), false)?;
    let ck = image::load(image_dir)?;
    // Refuse before touching anything if a clone is in use: by restored tasks in their own
    // mount namespace (always), or mounted here (unless `force`); or if one holds other
    // subvolumes (its deletion would fail half-way).
    for s in &ck.snapshots {
        snapshot::in_use_elsewhere(s)?;
        snapshot::check_deletable(s)?;
    }
    if !force {
        for s in &ck.snapshots {
            let m = snapshot::mounted_clones(s)?;
            if !m.is_empty() {
                snapshot::delete(s, false)?; // gives the InUse error naming the mounts
            }
        }
    }
    for s in &ck.snapshots {
        snapshot::delete(s, force)?;
    }
    if !ck.links_removed {
        relink::remove_live_names(&ck)?;
    }
    image::remove(image_dir, &ck.id)?;
    Ok(ck)
}

/// Remove an image directory whose record cannot be read (corrupt, or of an unknown format),
/// for `delete --force`. Only a real directory named like a checkpoint id and holding a record
/// file is removed. Returns the id: its relinked names and snapshots, which the record would
/// have named, are found by `gc` (the id is no longer live once its image is gone).
pub fn delete_unreadable(image_dir: &Path) -> Result<String, CleanupError> {
    let refuse = |why| CleanupError::NotACheckpoint { path: image_dir.to_path_buf(), why };
    let id = image_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if !record::names::generated_id(&id) {
        return Err(refuse("not named like a checkpoint id"));
    }
    let md = std::fs::symlink_metadata(image_dir).map_err(|source| {
        CleanupError::Io(crate::sys::SysError { path: image_dir.into(), syscall: "lstat", source })
    })?;
    if !md.is_dir() {
        return Err(refuse("not a directory"));
    }
    if std::fs::symlink_metadata(image_dir.join(record::RECORD_FILE)).map(|m| !m.is_file()).unwrap_or(true) {
        return Err(refuse("holds no checkpoint record"));
    }
    image::remove(image_dir, &id)?;
    Ok(id)
}

/// What `gc` found (and removed unless it was a dry run).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Relinked names of dead checkpoints, by id: (mount, name).
    pub stale: BTreeMap<String, Vec<(PathBuf, String)>>,
    /// Names under lost+found/checkpoint that the template does not match (left alone).
    pub unknown: Vec<(PathBuf, String)>,
    /// Relinked names that belong to live checkpoints (kept).
    pub kept: usize,
    /// Partial image directories of takes that died, and the kept CRIU logs of failed takes.
    pub partial_dirs: Vec<PathBuf>,
    /// btrfs and LVM snapshots of checkpoints that have no image (takes that died after the snapshot).
    pub stale_snapshots: Vec<(String, record::Snapshot)>,
    /// Ids with names or snapshots but neither an image nor a trace of a failed take in this
    /// image root (perhaps another image root's checkpoints): how many names and snapshots.
    /// Left alone unless the scope names them.
    pub unclaimed: BTreeMap<String, usize>,
    /// Restart clones of live checkpoints that no mount namespace has mounted any more (the
    /// restart ended, or was killed): removed.
    pub idle_clones: Vec<PathBuf>,
    pub removed: bool,
}

/// Which checkpoint ids `gc` may remove the names and snapshots of.
#[derive(Debug, Clone, PartialEq)]
pub enum GcScope {
    /// Those of takes that failed or died, and deletes that died, in this image root (their
    /// `.ID.partial`, `.ID.failed` or `.ID.deleting` entries). Ids with no trace in this image
    /// root may be checkpoints of another image root: they are reported, not removed.
    Failed,
    /// Every id without a complete image in this image root.
    AllWithoutImage,
    /// Exactly these ids (even ones with an image: after deleting an image by hand).
    Ids(Vec<String>),
}

/// Collect leftovers under the given mounts' checkpoint directories and in `image_root`
/// (partial images of takes that died, logs of failed takes), and the relinked names and
/// snapshots of the checkpoint ids `scope` allows.
/// btrfs snapshots are looked for in the default directory, in `snapshot_dirs`, and in every
/// directory the image root's checkpoints use.
pub fn gc(
    mounts: &[PathBuf],
    image_root: &Path,
    template: &Template,
    scope: &GcScope,
    snapshot_dirs: &[String],
    dry_run: bool,
) -> Result<GcReport, CleanupError> {
    image::trusted_root(image_root, false)?;
    let mut rep = GcReport::default();
    let mut dirs: Vec<Option<String>> = vec![None];
    dirs.extend(snapshot_dirs.iter().cloned().map(Some));
    let Traces { live, failed } = image_root_traces(image_root, &mut dirs, &mut rep)?;
    let doomed = |id: &str| match scope {
        GcScope::Failed => failed.contains(id) && !live.contains(id),
        GcScope::AllWithoutImage => !live.contains(id),
        GcScope::Ids(ids) => ids.iter().any(|i| i == id),
    };
    for m in mounts {
        let mut found = vec![];
        for d in &dirs {
            found.extend(snapshot::btrfs::find(m, d.as_deref())?);
        }
        found.extend(snapshot::lvm::find(m)?);
        for (id, snap) in found {
            if doomed(&id) {
                rep.stale_snapshots.push((id, snap));
            } else if !live.contains(&id) {
                *rep.unclaimed.entry(id).or_default() += 1;
            }
        }
        for (id, name, _is_dir) in relink::leftovers(m, template)? {
            match id {
                None => rep.unknown.push((m.clone(), name)),
                Some(id) if doomed(&id) => rep.stale.entry(id).or_default().push((m.clone(), name)),
                Some(id) if live.contains(&id) => rep.kept += 1,
                Some(id) => *rep.unclaimed.entry(id).or_default() += 1,
            }
        }
    }
    if !dry_run {
        remove_found(&rep)?;
        rep.removed = true;
    }
    Ok(rep)
}

/// The ids an image root knows: `live` (a published image, or a take still writing its
/// partial directory) and `failed` (a trace of a take or deletion that did not finish, whose
/// entries go into `rep.partial_dirs`). Custom btrfs snapshot dirs named by the records are
/// added to `dirs`.
struct Traces {
    live: HashSet<String>,
    failed: HashSet<String>,
}

fn image_root_traces(
    image_root: &Path,
    dirs: &mut Vec<Option<String>>,
    rep: &mut GcReport,
) -> Result<Traces, CleanupError> {
    let mut t = Traces { live: HashSet::new(), failed: HashSet::new() };
    for (p, r) in image::list(image_root)? {
        let ck = match r {
            Ok(ck) => ck,
            Err(_) => {
                // A record that cannot be read still names a checkpoint: never collected
                // as if it had no image (`delete --force` or `gc --id` removes it).
                if let Some(id) =
                    p.file_name().and_then(|n| n.to_str()).filter(|n| record::names::valid_id(n))
                {
                    t.live.insert(id.to_string());
                }
                continue;
            }
        };
        for s in &ck.snapshots {
            rep.idle_clones.extend(snapshot::idle_clones(s).unwrap_or_default());
        }
        for s in &ck.snapshots {
            if let record::Snapshot::Btrfs { mount_point, path, .. } = s {
                // <mount>/<dir>/<id>/snapshot
                let rel = path.strip_prefix(mount_point.as_str()).map(|r| r.trim_start_matches('/'));
                let tail = format!("/{}/{}", ck.id, record::names::SNAPSHOT_NAME);
                if let Some(d) = rel.and_then(|r| r.strip_suffix(&tail)) {
                    if !d.is_empty() && !dirs.contains(&Some(d.to_string())) {
                        dirs.push(Some(d.to_string()));
                    }
                }
            }
        }
        t.live.insert(ck.id);
    }
    let Ok(rd) = std::fs::read_dir(image_root) else { return Ok(t) };
    for e in rd.flatten() {
        let Some((id, state)) = image::State::of_name(&e.file_name().to_string_lossy()) else { continue };
        if state.in_use(&e.path()) {
            t.live.insert(id);
        } else {
            t.failed.insert(id);
            rep.partial_dirs.push(e.path());
        }
    }
    Ok(t)
}

/// Remove what a gc survey found: idle clones, names, snapshots, then the image root's traces.
fn remove_found(rep: &GcReport) -> Result<(), CleanupError> {
    for c in &rep.idle_clones {
        snapshot::btrfs::delete_clone(c)?;
    }
    for names in rep.stale.values() {
        for (m, name) in names {
            let d = relink::open_checkpoint_dir(m, None, false)?;
            let is_dir = d
                .open(name, libc::O_PATH | libc::O_NOFOLLOW)
                .ok()
                .and_then(|f| crate::sys::fstat(std::os::fd::AsRawFd::as_raw_fd(&f)).ok())
                .is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            d.remove(name, is_dir)?;
        }
    }
    for (_, s) in &rep.stale_snapshots {
        snapshot::delete(s, false)?;
    }
    for p in &rep.partial_dirs {
        std::fs::remove_dir_all(p).map_err(|source| {
            CleanupError::Io(crate::sys::SysError { path: p.clone(), syscall: "unlink", source })
        })?;
    }
    Ok(())
}
