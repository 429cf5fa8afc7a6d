//! btrfs restart clones: a writable snapshot of the read-only snapshot per restart, mounted
//! by `subvolid`/`subvol` at the restart target, and unmounted (and removed) again.

use super::*;

// ---------------------------------------------------------------------------------------------
// restart clones

/// Mount options selecting exactly one subvolume: its id, and its path when the path can be
/// written in a mount option (no ',').
pub(super) fn clone_mount_options(subvol_id: u64, fs_path: &str) -> String {
    if fs_path.contains(',') {
        format!("subvolid={subvol_id}")
    } else {
        format!("subvolid={subvol_id},subvol={fs_path}")
    }
}

/// `mount -t btrfs DEVICE -o OPTIONS TARGET`.
///
/// The kernel refuses (EBUSY) a new mount of a filesystem on a directory that is the root of
/// a mount of the same filesystem: the case of a restart at the origin's own mount point while
/// the origin is still mounted there. Bind mounts have no such rule, so then the clone is
/// mounted on a temporary directory and bound from there onto `target`.
pub(super) fn mount_device(device: &str, target: &Path, options: &str) -> Result<(), SnapshotError> {
    let err = |source: io::Error| SnapshotError::Mount {
        device: device.into(),
        target: target.into(),
        fstype: "btrfs",
        options: options.into(),
        source,
    };
    match nix::mount::mount(Some(device), target, Some("btrfs"), MsFlags::empty(), Some(options)) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            let tmp = TempMount::new(device, options, MsFlags::empty(), "clone")?;
            nix::mount::mount(Some(&tmp.dir), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| err(e.into()))
            // `tmp` is unmounted here; the bind mount at `target` stays.
        }
        Err(e) => Err(err(e.into())),
    }
}

/// A record steers nothing it cannot prove: before a clone is mounted over the recorded
/// mount point, the filesystem mounted there must be the snapshot's origin (the subvolume
/// whose UUID the snapshot carries as its parent UUID, which the kernel set). A mount point
/// where the origin is not mounted is accepted only as an empty directory (a mount there hides
/// nothing). An edited record that names `/etc` or `/` is refused here.
pub fn verify_origin(s: &Snapshot) -> Result<(), SnapshotError> {
    let rec = Rec::from(s)?;
    let mp = PathBuf::from(s.mount_point());
    let Some(loc) = locate(&rec)? else { return Ok(()) }; // gone: said when mounting
    let Some(snap) = loc.snapshot.as_ref() else { return Ok(()) };
    let info = libbtrfsutil::subvolume_info(snap).map_err(bt_err(snap, "subvolume info"))?;
    let mounted_root = sys::open(&mp, libc::O_PATH | libc::O_DIRECTORY, 0)
        .ok()
        .is_some_and(|fd| sys::is_mount_root(fd.as_raw_fd()).unwrap_or(false));
    if mounted_root {
        // The same filesystem (the recorded device) and, for a snapshot taken here (not one
        // received from elsewhere: it has no parent), its very origin subvolume.
        let source_ok =
            mountinfo()?.iter().rev().find(|e| e.mount_point == mp).is_some_and(|e| e.source == rec.device);
        // Mounted there: the origin itself, or a clone of this very snapshot (a restart left
        // it over the origin). A snapshot received from elsewhere (migration) has no origin here.
        let here = libbtrfsutil::subvolume_info(&mp).ok();
        let is = |u: Option<String>, v: String| u.is_some_and(|u| same_uuid(&u, &v));
        let origin_ok = info.received_uuid().is_some()
            || here.as_ref().is_some_and(|h| {
                is(info.parent_uuid().map(|u| u.to_string()), h.uuid().to_string())
                    || is(h.parent_uuid().map(|u| u.to_string()), info.uuid().to_string())
            });
        if source_ok && origin_ok {
            return Ok(());
        }
        return Err(SnapshotError::Mismatch {
            path: mp,
            why: "the filesystem mounted here is not the origin of the checkpoint's snapshot (the record may have been changed); refusing to mount a clone over it (restart with --mount-root DIR to restore elsewhere)".into(),
        });
    }
    let empty = std::fs::read_dir(&mp).map(|mut d| d.next().is_none()).unwrap_or(false);
    if !empty {
        return Err(SnapshotError::Mismatch {
            path: mp,
            why: "the snapshot's origin is not mounted here and the directory is not empty: refusing to mount a clone over it (mount the origin there, or restart with --mount-root DIR)".into(),
        });
    }
    Ok(())
}

/// Make `<id>/restart-<N>` (N the next free number, from 1), a writable snapshot of the
/// read-only one, and mount it from the device at `target` (an existing directory).
///
/// If the snapshot is not reachable through the recorded mount point (the origin is not
/// mounted, or something else is mounted there), the device's top level is mounted on a
/// temporary directory under [`TEMP_ROOT`] to make the clone, and unmounted afterwards. On
/// failure the clone is deleted again.
pub fn mount_clone(s: &Snapshot, target: &Path) -> Result<MountedClone, SnapshotError> {
    let rec = Rec::from(s)?;
    if has_nul(target) {
        return Err(SnapshotError::Invalid {
            what: "mount target",
            value: target.to_string_lossy().into_owned(),
            why: "contains a NUL byte".into(),
        });
    }
    let target = std::fs::canonicalize(target).map_err(io_err(target, "realpath"))?;
    let md = std::fs::metadata(&target).map_err(io_err(&target, "stat"))?;
    if !md.is_dir() {
        return Err(SnapshotError::Refused {
            path: target,
            why: "the mount target is not a directory".into(),
        });
    }
    let loc = locate(&rec)?.ok_or_else(|| SnapshotError::Mismatch {
        path: rec.path.clone(),
        why: format!(
            "the snapshot is gone: its directory {} does not exist on {}",
            rec.id_fs_dir(),
            rec.device
        ),
    })?;
    let snap = loc.snapshot.clone().ok_or_else(|| SnapshotError::Mismatch {
        path: rec.path.clone(),
        why: format!("the snapshot {} does not exist on {} any more", rec.fs_path, rec.device),
    })?;

    // Create restart-<N>; a concurrent restart may take N first (EEXIST): try the next.
    let mut n = clone_entries(&loc.id_dir)?.last().map(|(n, _)| n + 1).unwrap_or(1);
    let clone = loop {
        let p = loc.id_dir.join(format!("{CLONE_PREFIX}{n}"));
        match CreateSnapshotOptions::new().create(&snap, &p) {
            Ok(()) => break p,
            Err(e) if e.errno() == libc::EEXIST && n < 1_000_000 => n += 1,
            Err(e) => return Err(bt_err(&p, "create writable snapshot")(e)),
        }
    };
    let r = mount_made_clone(&rec, &loc, &clone, &target);
    if r.is_err() {
        let _ = delete_subvolume(&clone, true);
    }
    drop(loc); // unmounts the temporary top level, if any
    r
}

/// The part of [`mount_clone`] after the clone exists: describe, mount, verify.
pub(super) fn mount_made_clone(
    rec: &Rec,
    loc: &Located,
    clone: &Path,
    target: &Path,
) -> Result<MountedClone, SnapshotError> {
    let info: SubvolumeInfo = libbtrfsutil::subvolume_info(clone).map_err(bt_err(clone, "subvolume info"))?;
    if !info.parent_uuid().is_some_and(|u| same_uuid(&u.to_string(), &rec.uuid)) {
        return Err(SnapshotError::Mismatch {
            path: clone.into(),
            why: "the new clone is not a snapshot of the checkpoint's snapshot".into(),
        });
    }
    let rel = libbtrfsutil::subvolume_path(clone).map_err(bt_err(clone, "subvolume path"))?;
    let fs_path = fs_path_string(&rel, clone)?;
    let options = clone_mount_options(info.id(), &fs_path);
    mount_device(&rec.device, target, &options)?;
    // What is visible at the target now must be the clone.
    let uuid = info.uuid().to_string();
    match libbtrfsutil::subvolume_info(target) {
        Ok(i) if i.id() == info.id() && same_uuid(&i.uuid().to_string(), &uuid) => {}
        other => {
            let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            let why = match other {
                Ok(i) => format!(
                    "after mounting, subvolume {} is visible there instead of the clone {}",
                    i.id(),
                    info.id()
                ),
                Err(e) => format!("after mounting, subvolume info fails: {e}"),
            };
            return Err(SnapshotError::Mismatch { path: target.into(), why });
        }
    }
    let clone_path = if loc.direct { clone.to_path_buf() } else { PathBuf::from(&fs_path) };
    Ok(MountedClone {
        target: target.to_path_buf(),
        clone_path,
        description: format!(
            "btrfs clone {fs_path} (subvol {}) of snapshot {} on {}",
            info.id(),
            rec.fs_path,
            rec.device
        ),
        detail: CloneDetail::Btrfs {
            device: rec.device.clone(),
            subvol_id: info.id(),
            uuid,
            fs_path,
            snapshot_uuid: rec.uuid.clone(),
        },
    })
}

/// Unmount a clone made by [`mount_clone`] and, if `remove`, delete its subvolume.
///
/// The mount at `target` is unmounted only if it is the clone (same root and subvolume id)
/// and nothing is mounted on top of it; a clone no longer mounted there is not an error. A
/// busy mount gives [`SnapshotError::InUse`]. The subvolume is not deleted while it is still
/// mounted elsewhere; one already deleted is not an error.
pub fn unmount_clone(m: &MountedClone, remove: bool) -> Result<(), SnapshotError> {
    let CloneDetail::Btrfs { device, subvol_id, uuid, fs_path, .. } = &m.detail else {
        return Err(SnapshotError::Unsupported(format!("{} is not a btrfs restart clone", m.description)));
    };
    if has_nul(&m.target)
        || has_nul(&m.clone_path)
        || has_nul(Path::new(fs_path))
        || !fs_path.starts_with('/')
        || device.contains('\0')
    {
        return Err(SnapshotError::Invalid {
            what: "restart clone",
            value: m.description.clone(),
            why: "has a malformed target, path or device".into(),
        });
    }
    let id_s = subvol_id.to_string();
    let is_clone = |e: &MountEntry| {
        e.fstype == "btrfs"
            && e.root == Path::new(fs_path)
            && e.super_option("subvolid") == Some(id_s.as_str())
    };
    let all = mountinfo()?;
    if let Some(e) = all.iter().find(|e| e.mount_point == m.target && is_clone(e)) {
        crate::snapshot::unmount_clone_mount(m, e, &all)?;
    }
    if !remove {
        return Ok(());
    }
    let still: Vec<PathBuf> = mountinfo()?
        .iter()
        .filter(|e| is_clone(e) && e.source == *device)
        .map(|e| e.mount_point.clone())
        .collect();
    if !still.is_empty() {
        return Err(SnapshotError::InUse { path: m.clone_path.clone(), mounts: still });
    }
    // Through snapckpt's view if it is still the clone there, else on the device.
    if m.clone_path.is_absolute() {
        if let Ok(i) = libbtrfsutil::subvolume_info(&m.clone_path) {
            if i.id() == *subvol_id && same_uuid(&i.uuid().to_string(), uuid) {
                return delete_subvolume(&m.clone_path, true);
            }
        }
    }
    let temp = TempMount::top(device)?;
    let p = temp.at(fs_path);
    match libbtrfsutil::subvolume_info(&p) {
        Ok(i) if same_uuid(&i.uuid().to_string(), uuid) => delete_subvolume(&p, true),
        Ok(i) => Err(SnapshotError::Mismatch {
            path: PathBuf::from(format!("{device}:{fs_path}")),
            why: format!("subvolume UUID {} is not the clone's {uuid}; not deleting it", i.uuid()),
        }),
        Err(e) if e.errno() == libc::ENOENT => Ok(()),
        Err(e) => Err(bt_err(&p, "subvolume info")(e)),
    }
}

/// The snapshots under `<mount>/<snapshot_dir>` (default `.snapckpt`), each described as
/// [`take`] described it, with its checkpoint id: for `gc` to find the snapshots of takes
/// that died before writing their image. A mount that is not btrfs, or has no snapshot
/// directory, has none.
pub fn find(
    mount_point: &Path,
    snapshot_dir: Option<&str>,
) -> Result<Vec<(String, Snapshot)>, SnapshotError> {
    let dir = snapshot_dir.unwrap_or(DEFAULT_SNAPSHOT_DIR);
    validate_snapshot_dir(dir)?;
    let mp = std::fs::canonicalize(mount_point).map_err(io_err(mount_point, "realpath"))?;
    let Some(m) = mountinfo()?.into_iter().find(|e| e.mount_point == mp && e.fstype == "btrfs") else {
        return Ok(vec![]);
    };
    let sdir = mp.join(dir);
    let meta = match std::fs::symlink_metadata(&sdir) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(SnapshotError::Io(crate::sys::SysError { path: sdir, syscall: "lstat", source: e }))
        }
    };
    if !meta.is_dir() {
        return Ok(vec![]);
    }
    let origin = libbtrfsutil::subvolume_info(&mp).map_err(bt_err(&mp, "subvolume info"))?;
    let origin_rel = libbtrfsutil::subvolume_path(&mp).map_err(bt_err(&mp, "subvolume path"))?;
    let origin_subvol_path = fs_path_string(&origin_rel, &mp)?;
    let mut out = vec![];
    for e in std::fs::read_dir(&sdir).map_err(io_err(&sdir, "opendir"))?.flatten() {
        let id = e.file_name().to_string_lossy().into_owned();
        if validate_id(&id).is_err() {
            continue;
        }
        let snap = sdir.join(&id).join(SNAPSHOT_NAME);
        let Ok(info) = libbtrfsutil::subvolume_info(&snap) else { continue };
        let Ok(rel) = libbtrfsutil::subvolume_path(&snap) else { continue };
        out.push((
            id,
            Snapshot::Btrfs {
                mount_point: mp.to_string_lossy().into_owned(),
                device: m.source.clone(),
                origin_subvol_id: origin.id(),
                origin_subvol_path: origin_subvol_path.clone(),
                subvol_id: info.id(),
                uuid: info.uuid().to_string(),
                path: snap.to_string_lossy().into_owned(),
                fs_path: fs_path_string(&rel, &snap)?,
                created_unix: 0,
            },
        ));
    }
    Ok(out)
}
