//! LVM restart clones: a writable thin snapshot of the thin snapshot per restart (classic
//! snapshots are mounted themselves, once), mounted at the restart target; and finding
//! snapckpt's LVs without a record (for `gc`).

use super::*;

// ---------------------------------------------------------------------------------------------
// restart clones

/// Wait until `path` is the block device `dev` (udev may still be creating it).
pub(super) fn wait_for_node(path: &str, dev: u64) -> Result<(), SnapshotError> {
    let t0 = Instant::now();
    loop {
        let last = match sys::stat(path) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFBLK && st.st_rdev == dev => return Ok(()),
            Ok(_) => "is not the LV's block device".to_string(),
            Err(e) => e.to_string(),
        };
        if t0.elapsed() > NODE_WAIT {
            return Err(SnapshotError::Mismatch {
                path: path.into(),
                why: format!("after activation, the device node {last} (waited {} s)", NODE_WAIT.as_secs()),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Mount the active LV `lv` read-write at `target` and check that it is what is visible there.
pub(super) fn mount_lv(lv: &Lv, fstype: &'static str, target: &Path) -> Result<(), SnapshotError> {
    let dev = lv.dev().ok_or_else(|| SnapshotError::Mismatch {
        path: PathBuf::from(lv.full()),
        why: "the LV is not active after activation".into(),
    })?;
    let node = if lv.dm_path.starts_with("/dev/") { lv.dm_path.clone() } else { lv.path.clone() };
    wait_for_node(&node, dev)?;
    let options = mount_options(fstype);
    nix::mount::mount(
        Some(node.as_str()),
        target,
        Some(fstype),
        MsFlags::empty(),
        if options.is_empty() { None } else { Some(options) },
    )
    .map_err(|e| SnapshotError::Mount {
        device: node.clone(),
        target: target.into(),
        fstype,
        options: options.into(),
        source: e.into(),
    })?;
    let all = mountinfo()?;
    let ok = all.iter().any(|e| e.mount_point == target && e.dev == dev && is_topmost(e, &all));
    if !ok {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(SnapshotError::Mismatch {
            path: target.into(),
            why: format!("after mounting {node}, something else is visible there"),
        });
    }
    Ok(())
}

/// Thin: make `<snapshot>-r<N>` (a writable thin snapshot of the snapshot), activate it and
/// mount it at `target`. Classic: activate and mount the snapshot itself read-write (once; see
/// the module documentation). On failure nothing is left behind.
pub fn mount_clone(s: &Snapshot, target: &Path) -> Result<MountedClone, SnapshotError> {
    let rec = Rec::from(s)?;
    if crate::snapshot::has_nul(target) {
        return Err(SnapshotError::Invalid {
            what: "mount target",
            value: target.to_string_lossy().into_owned(),
            why: "contains a NUL byte".into(),
        });
    }
    let target = std::fs::canonicalize(target).map_err(|source| {
        SnapshotError::Io(crate::sys::SysError { path: target.into(), syscall: "realpath", source })
    })?;
    let md = std::fs::metadata(&target).map_err(|source| {
        SnapshotError::Io(crate::sys::SysError { path: target.clone(), syscall: "stat", source })
    })?;
    if !md.is_dir() {
        return Err(SnapshotError::Refused {
            path: target,
            why: "the mount target is not a directory".into(),
        });
    }
    let gone = || SnapshotError::Mismatch {
        path: PathBuf::from(rec.full()),
        why: "the snapshot LV does not exist any more".into(),
    };
    let lvs = vg_lvs(&rec.vg)?.ok_or_else(|| SnapshotError::Mismatch {
        path: PathBuf::from(rec.full()),
        why: format!("volume group {} is not there", rec.vg),
    })?;
    let (snap, clones) = locate(&rec, &lvs)?;
    let snap = snap.ok_or_else(gone)?;
    if rec.thin {
        if !snap.is_thin() {
            return Err(SnapshotError::Mismatch {
                path: PathBuf::from(rec.full()),
                why: format!("recorded as a thin snapshot, but lv_attr is {}", snap.attr),
            });
        }
        thin_clone(&rec, &snap, &clones, &target)
    } else {
        classic_mount(&rec, &snap, &target)
    }
}

pub(super) fn thin_clone(
    rec: &Rec,
    snap: &Lv,
    clones: &[Lv],
    target: &Path,
) -> Result<MountedClone, SnapshotError> {
    let mut n = clones.iter().filter_map(|c| clone_number(&rec.snapshot_lv, &c.name)).max().unwrap_or(0) + 1;
    let clone_tag = rec.clone_tag();
    let id_tags: Vec<String> = snap.tags.iter().filter(|t| t.starts_with(TAG_ID_PREFIX)).cloned().collect();
    let snap_full = rec.full();
    // lvcreate; another restart may take the name first: then try the next number.
    let name = loop {
        let name = format!("{}-r{n}", rec.snapshot_lv);
        let mut args: Vec<&str> =
            vec!["--snapshot", "--name", &name, "--addtag", TAG, "--addtag", &clone_tag];
        for t in &id_tags {
            args.extend_from_slice(&["--addtag", t]);
        }
        args.push(&snap_full);
        match run("lvcreate", &args) {
            Ok(_) => break name,
            Err(e) => match find_lv(&rec.vg, &name) {
                Ok(Some(_)) if n < 1000 => n += 1,
                _ => return Err(e),
            },
        }
    };
    let full = format!("{}/{name}", rec.vg);
    let r = (|| {
        run("lvchange", &["--activate", "y", "--ignoreactivationskip", &full])?;
        let lv = find_lv(&rec.vg, &name)?.ok_or_else(|| SnapshotError::Mismatch {
            path: PathBuf::from(&full),
            why: "lvcreate succeeded but lvs does not show the clone".into(),
        })?;
        if lv.origin != rec.snapshot_lv || !lv.has_tag(&clone_tag) {
            return Err(SnapshotError::Mismatch {
                path: PathBuf::from(&full),
                why: format!("the new LV is not a clone of {} (origin {:?})", rec.full(), lv.origin),
            });
        }
        mount_lv(&lv, rec.fstype, target)?;
        Ok(lv)
    })();
    let lv = match r {
        Ok(lv) => lv,
        Err(e) => {
            let _ = run("lvremove", &["--yes", &full]);
            return Err(e);
        }
    };
    Ok(made(rec, &lv, target))
}

pub(super) fn classic_mount(rec: &Rec, snap: &Lv, target: &Path) -> Result<MountedClone, SnapshotError> {
    if !snap.is_classic_snapshot() {
        return Err(SnapshotError::Mismatch {
            path: PathBuf::from(rec.full()),
            why: format!("recorded as a classic snapshot, but lv_attr is {}", snap.attr),
        });
    }
    if snap.is_invalid() {
        return Err(SnapshotError::Refused {
            path: PathBuf::from(rec.full()),
            why: "the classic snapshot is invalid: its COW space overflowed (lv_attr shows 'I'), its data is lost; give lvm_size more room next time".into(),
        });
    }
    if snap.has_tag(TAG_RESTARTED) {
        return Err(SnapshotError::Refused {
            path: PathBuf::from(rec.full()),
            why: format!(
                "this classic snapshot was already used by a restart (tag {TAG_RESTARTED}): a restart mounts a classic snapshot read-write and removes its relinked names, so it can be restarted only once. Use a thin LV for repeatable restarts"
            ),
        });
    }
    if let Some(dev) = snap.dev() {
        let all = mountinfo()?;
        let m = mounts_of_devs(&all, &[dev]);
        if !m.is_empty() {
            return Err(SnapshotError::InUse { path: PathBuf::from(rec.full()), mounts: mount_points(&m) });
        }
    }
    let full = rec.full();
    let snap = if snap.dev().is_none() {
        run("lvchange", &["--activate", "y", &full])?;
        find_lv(&rec.vg, &rec.snapshot_lv)?.filter(|l| l.uuid == rec.uuid).ok_or_else(|| {
            SnapshotError::Mismatch {
                path: PathBuf::from(&full),
                why: "the snapshot LV vanished while activating it".into(),
            }
        })?
    } else {
        snap.clone()
    };
    mount_lv(&snap, rec.fstype, target)?;
    if let Err(e) = run("lvchange", &["--addtag", TAG_RESTARTED, &full]) {
        let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(made(rec, &snap, target))
}

pub(super) fn made(rec: &Rec, lv: &Lv, target: &Path) -> MountedClone {
    let (maj, min) = lv.kdev.unwrap_or((0, 0));
    let description = if rec.thin {
        format!("lvm thin clone {} ({maj}:{min}) of snapshot {}", lv.full(), rec.full())
    } else {
        format!("lvm classic snapshot {} ({maj}:{min}), read-write (restartable once)", rec.full())
    };
    MountedClone {
        target: target.to_path_buf(),
        clone_path: PathBuf::from(if lv.path.is_empty() { &lv.dm_path } else { &lv.path }),
        description,
        detail: CloneDetail::Lvm {
            vg: rec.vg.clone(),
            lv: lv.name.clone(),
            lv_uuid: lv.uuid.clone(),
            dev: lv.dev().unwrap_or(0),
            thin: rec.thin,
            snapshot_lv: rec.snapshot_lv.clone(),
            snapshot_uuid: rec.uuid.clone(),
        },
    }
}

/// Unmount a clone made by [`mount_clone`] and, if `remove`, undo it: thin, remove the clone
/// LV; classic, take the restarted tag off the snapshot again (the snapshot is kept).
///
/// The mount at `target` is unmounted only if it is the clone's device and nothing covers it;
/// a clone no longer mounted there is not an error. A busy mount gives
/// [`SnapshotError::InUse`]. A clone still mounted elsewhere is not removed (InUse); one
/// already removed is not an error.
pub fn unmount_clone(m: &MountedClone, remove: bool) -> Result<(), SnapshotError> {
    let CloneDetail::Lvm { vg, lv, lv_uuid, dev, thin, snapshot_lv, snapshot_uuid } = &m.detail else {
        return Err(SnapshotError::Unsupported(format!("{} is not an LVM restart clone", m.description)));
    };
    if crate::snapshot::has_nul(&m.target)
        || !valid_vg_name(vg)
        || !valid_lv_name(lv)
        || !valid_lv_name(snapshot_lv)
    {
        return Err(SnapshotError::Invalid {
            what: "restart clone",
            value: m.description.clone(),
            why: "has a malformed target, VG or LV name".into(),
        });
    }
    let all = mountinfo()?;
    if let Some(e) = all.iter().find(|e| e.mount_point == m.target && e.dev == *dev) {
        crate::snapshot::unmount_clone_mount(m, e, &all)?;
    }
    if !remove {
        return Ok(());
    }
    let Some(x) = find_lv(vg, lv)? else { return Ok(()) };
    if x.uuid != *lv_uuid {
        return Ok(()); // another LV of that name: not ours
    }
    if let Some(d) = x.dev() {
        let all = mountinfo()?;
        let still = mounts_of_devs(&all, &[d]);
        if !still.is_empty() {
            return Err(SnapshotError::InUse { path: m.clone_path.clone(), mounts: mount_points(&still) });
        }
    }
    if *thin {
        if x.origin != *snapshot_lv && !x.has_tag(&format!("{TAG_CLONE_OF_PREFIX}{snapshot_uuid}")) {
            return Err(SnapshotError::Mismatch {
                path: PathBuf::from(x.full()),
                why: format!("is not a clone of {vg}/{snapshot_lv}; not removing it"),
            });
        }
        remove_lv(&x)
    } else {
        if x.has_tag(TAG_RESTARTED) {
            run("lvchange", &["--deltag", TAG_RESTARTED, &x.full()])?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// finding snapshots without a record (gc)

/// The snapshots snapckpt took of the LV mounted at `mount_point` (LVs tagged `snapckpt` and
/// `snapckpt_id_<id>`, named as [`take`] names them, whose origin is that LV), each described as
/// [`take`] described it, with its checkpoint id: for `gc` to find the snapshots of takes that
/// died before writing their image. A mount that is not ext2/3/4 or xfs on an LV, or a system
/// without the lvm tools, has none.
pub fn find(mount_point: &Path) -> Result<Vec<(String, Snapshot)>, SnapshotError> {
    let mp = std::fs::canonicalize(mount_point).map_err(|source| {
        SnapshotError::Io(crate::sys::SysError { path: mount_point.into(), syscall: "realpath", source })
    })?;
    let all = mountinfo()?;
    let Some(m) = all.iter().rev().find(|e| e.mount_point == mp && is_topmost(e, &all)) else {
        return Ok(vec![]);
    };
    let (Some(fstype), Some(&dev)) = (supported_fstype(&m.fstype), Some(&m.dev)) else {
        return Ok(vec![]);
    };
    let origin = match lv_of_mount(&m.source, dev) {
        Ok(Some(lv)) => lv,
        Ok(None) => return Ok(vec![]),
        Err(SnapshotError::Lvm { status, .. }) if status == "could not be started" => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let Some(lvs) = vg_lvs(&origin.vg)? else { return Ok(vec![]) };
    let mut out = vec![];
    for l in lvs {
        if l.origin != origin.name || !l.has_tag(TAG) || !(l.is_thin() || l.is_classic_snapshot()) {
            continue;
        }
        let Some(id) = l.tags.iter().find_map(|t| t.strip_prefix(TAG_ID_PREFIX)).map(String::from) else {
            continue;
        };
        if validate_id(&id).is_err() || snapshot_lv_name(&id) != l.name {
            continue;
        }
        let kind = if l.is_thin() { LvmKind::Thin } else { LvmKind::Classic };
        out.push((
            id,
            Snapshot::Lvm {
                mount_point: mp.to_string_lossy().into_owned(),
                fstype: fstype.to_string(),
                vg: origin.vg.clone(),
                origin_lv: origin.name.clone(),
                origin_uuid: origin.uuid.clone(),
                snapshot_lv: l.name.clone(),
                snapshot_uuid: l.uuid.clone(),
                kind,
                created_unix: 0,
            },
        ));
    }
    Ok(out)
}
