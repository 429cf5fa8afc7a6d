//! The btrfs snapshot backend on real loop-mounted btrfs filesystems (run as root).
//!
//! The `btrfs` command is used here only to set up and to verify.

use crate::common::{self, is_mounted, read, sh, LoopFs, MountGuard, Scratch};
use snapckpt::record::Snapshot;
use snapckpt::snapshot::{self, Backend, FsSpec, SnapshotError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn spec(mp: &Path) -> FsSpec {
    FsSpec { mount_point: mp.to_path_buf(), backend: Backend::Btrfs, snapshot_dir: None, lvm_size: None }
}

fn canon(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap()
}

/// The fields of a btrfs record.
struct Fields {
    mount_point: String,
    device: String,
    origin_subvol_id: u64,
    origin_subvol_path: String,
    subvol_id: u64,
    uuid: String,
    path: PathBuf,
    fs_path: String,
    created_unix: u64,
}

fn fields(s: &Snapshot) -> Fields {
    match s {
        Snapshot::Btrfs {
            mount_point,
            device,
            origin_subvol_id,
            origin_subvol_path,
            subvol_id,
            uuid,
            path,
            fs_path,
            created_unix,
        } => Fields {
            mount_point: mount_point.clone(),
            device: device.clone(),
            origin_subvol_id: *origin_subvol_id,
            origin_subvol_path: origin_subvol_path.clone(),
            subvol_id: *subvol_id,
            uuid: uuid.clone(),
            path: PathBuf::from(path),
            fs_path: fs_path.clone(),
            created_unix: *created_unix,
        },
        other => panic!("not a btrfs snapshot: {other:?}"),
    }
}

/// No temporary top-level mount left under /run/snapckpt.
fn no_temp_mounts() -> bool {
    !read("/proc/self/mountinfo").contains(" /run/snapckpt/")
}

/// Paths of regular files under `dir` whose content contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let out = std::process::Command::new("find")
        .arg(dir)
        .args(["-xdev", "-type", "f", "-exec", "grep", "-l", "-F", needle, "{}", "+"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

#[test]
fn take_keeps_old_content_read_only() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    std::fs::write(fs.path("a.txt"), "old-a").unwrap();
    std::fs::write(fs.path("b.txt"), "old-b").unwrap();
    std::fs::create_dir(fs.path("sub")).unwrap();
    std::fs::write(fs.path("sub/c.txt"), "old-c").unwrap();

    let s = snapshot::take(&spec(&fs.mnt), "ck1", 1234).unwrap();
    let f = fields(&s);
    let mp = canon(&fs.mnt);
    assert_eq!(f.mount_point, mp.to_str().unwrap());
    assert_eq!(f.device, fs.dev);
    assert_eq!(f.origin_subvol_id, 5);
    assert_eq!(f.origin_subvol_path, "/");
    assert_eq!(f.path, mp.join(".snapckpt/ck1/snapshot"));
    assert_eq!(f.fs_path, "/.snapckpt/ck1/snapshot");
    assert_eq!(f.created_unix, 1234);
    assert!(f.subvol_id >= 256, "{}", f.subvol_id);

    // btrfs agrees: the subvolume, its UUID, read-only.
    let show = sh(&format!("btrfs subvolume show {}", f.path.display()));
    assert!(show.contains(&f.uuid), "{show}");
    assert_eq!(
        sh(&format!("btrfs inspect-internal rootid {}", f.path.display())).trim(),
        f.subvol_id.to_string()
    );
    assert_eq!(sh(&format!("btrfs property get -ts {} ro", f.path.display())).trim(), "ro=true");

    // The snapshot directory: root-owned, 0700; <id> a plain directory.
    let md = std::fs::symlink_metadata(fs.path(".snapckpt")).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.uid(), 0);
    assert_eq!(md.permissions().mode() & 0o7777, 0o700);
    assert!(std::fs::symlink_metadata(fs.path(".snapckpt/ck1")).unwrap().is_dir());

    // Change the live filesystem: the snapshot keeps the old content.
    std::fs::write(fs.path("a.txt"), "new-a").unwrap();
    std::fs::remove_file(fs.path("b.txt")).unwrap();
    std::fs::remove_dir_all(fs.path("sub")).unwrap();
    std::fs::write(fs.path("d.txt"), "new-d").unwrap();
    assert_eq!(read(f.path.join("a.txt")), "old-a");
    assert_eq!(read(f.path.join("b.txt")), "old-b");
    assert_eq!(read(f.path.join("sub/c.txt")), "old-c");
    assert!(!f.path.join("d.txt").exists());
    // and it is read-only
    let e = std::fs::write(f.path.join("a.txt"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = std::fs::write(f.path.join("new.txt"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");

    // The same id again: refused, the first snapshot untouched.
    let e = snapshot::take(&spec(&fs.mnt), "ck1", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("ck1"), "{e}");
    assert_eq!(read(f.path.join("a.txt")), "old-a");

    // A second checkpoint does not carry the first one's snapshot (nested subvolume).
    let s2 = snapshot::take(&spec(&fs.mnt), "ck2", 1).unwrap();
    let f2 = fields(&s2);
    assert_eq!(read(f2.path.join("a.txt")), "new-a");
    assert!(!f2.path.join(".snapckpt/ck1/snapshot/a.txt").exists());

    // No clones: mounted_clones is empty; delete removes everything of ck1 only.
    assert!(snapshot::mounted_clones(&s).unwrap().is_empty());
    snapshot::delete(&s, false).unwrap();
    assert!(!fs.path(".snapckpt/ck1").exists());
    let list = sh(&format!("btrfs subvolume list {}", fs.mnt.display()));
    assert!(!list.contains("ck1"), "{list}");
    assert!(list.contains(".snapckpt/ck2/snapshot"), "{list}");
    // Deleting again is not an error.
    snapshot::delete(&s, false).unwrap();
    snapshot::delete(&s2, false).unwrap();
    assert!(!sh(&format!("btrfs subvolume list {}", fs.mnt.display())).contains("snapckpt"));
    assert!(fs.path(".snapckpt").is_dir(), "the snapshot directory itself stays");
    assert!(no_temp_mounts());
}

#[test]
fn bad_names_and_wrong_filesystems_are_refused() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    for id in ["", ".hidden", "../x", "a/b", "a b", "a\0b", "x,y"] {
        let e = snapshot::take(&spec(&fs.mnt), id, 1).unwrap_err();
        assert!(matches!(e, SnapshotError::Invalid { .. }), "{id:?}: {e}");
    }
    for dir in ["", "/abs", "..", "../up", "a/../b", "a//b", "a/", "./a", "a\0b"] {
        let sp = FsSpec { snapshot_dir: Some(dir.into()), ..spec(&fs.mnt) };
        let e = snapshot::take(&sp, "ck", 1).unwrap_err();
        assert!(matches!(e, SnapshotError::Invalid { .. }), "{dir:?}: {e}");
    }
    assert!(!fs.path(".snapckpt").exists(), "nothing created for bad names");

    // A custom, nested snapshot directory is created root-owned 0700 all the way.
    let sp = FsSpec { snapshot_dir: Some("snaps/ckpt".into()), ..spec(&fs.mnt) };
    let s = snapshot::take(&sp, "ck", 1).unwrap();
    let f = fields(&s);
    assert_eq!(f.fs_path, "/snaps/ckpt/ck/snapshot");
    for d in ["snaps", "snaps/ckpt", "snaps/ckpt/ck"] {
        let md = std::fs::symlink_metadata(fs.path(d)).unwrap();
        assert_eq!((md.uid(), md.permissions().mode() & 0o7777), (0, 0o700), "{d}");
    }
    snapshot::delete(&s, false).unwrap();

    // A subdirectory of a mount is not a mount point.
    std::fs::create_dir(fs.path("dir")).unwrap();
    let e = snapshot::take(&spec(&fs.path("dir")), "ck", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::NotMountPoint { .. }), "{e}");
    assert!(e.to_string().contains(canon(&fs.mnt).to_str().unwrap()), "{e}");
    // A missing path
    let e = snapshot::take(&spec(&fs.path("missing")), "ck", 1).unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    // Not btrfs.
    let t = LoopFs::new("tmpfs", "16M");
    let e = snapshot::take(&spec(&t.mnt), "ck", 1).unwrap_err();
    assert!(matches!(&e, SnapshotError::NotBtrfs { fstype, .. } if fstype == "tmpfs"), "{e}");
    // LVM is dispatched but not built.
    let e = snapshot::take(&FsSpec { backend: Backend::Lvm, ..spec(&fs.mnt) }, "ck", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::Unsupported(_)), "{e}");

    // Corrupt records give errors, not panics, and touch nothing.
    let good = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap();
    let mut bad = good.clone();
    if let Snapshot::Btrfs { path, .. } = &mut bad {
        *path = format!("{}/../../etc/ck/snapshot", fs.mnt.display());
    }
    assert!(matches!(snapshot::delete(&bad, true), Err(SnapshotError::Invalid { .. })));
    assert!(matches!(snapshot::mount_clone(&bad, &fs.mnt), Err(SnapshotError::Invalid { .. })));
    let mut bad = good.clone();
    if let Snapshot::Btrfs { uuid, .. } = &mut bad {
        *uuid = "00000000-0000-0000-0000-000000000001".into();
    }
    // A wrong UUID: the subvolume at the path is not the recorded one, so nothing is deleted.
    let e = snapshot::delete(&bad, false).unwrap_err();
    assert!(matches!(e, SnapshotError::Mismatch { .. }), "{e}");
    assert!(fields(&good).path.join(".").exists());
    assert!(no_temp_mounts());
    snapshot::delete(&good, false).unwrap();
}

#[test]
fn clones_are_independent_and_delete_respects_mounts() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    std::fs::write(fs.path("data.txt"), "checkpoint-content").unwrap();
    let s = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap();
    let f = fields(&s);
    std::fs::write(fs.path("data.txt"), "live-content").unwrap();
    let (t1, t2) = (fs.path("t1"), fs.path("t2"));
    std::fs::create_dir(&t1).unwrap();
    std::fs::create_dir(&t2).unwrap();

    let m1 = snapshot::mount_clone(&s, &t1).unwrap();
    let m2 = snapshot::mount_clone(&s, &t2).unwrap();
    assert_eq!(m1.target, canon(&t1));
    assert_eq!(m1.clone_path, f.path.parent().unwrap().join("restart-1"));
    assert_eq!(m2.clone_path, f.path.parent().unwrap().join("restart-2"));
    assert!(m1.description.contains("restart-1"), "{}", m1.description);
    // Mounted from the device with subvol= of the clone.
    let mi = read("/proc/self/mountinfo");
    let line = mi.lines().find(|l| l.split(' ').nth(4) == Some(t1.to_str().unwrap())).unwrap();
    assert!(line.contains(&format!(" btrfs {} ", fs.dev)), "{line}");
    assert!(line.contains("subvol=/.snapckpt/ck/restart-1"), "{line}");
    assert_eq!(line.split(' ').nth(3), Some("/.snapckpt/ck/restart-1"), "{line}");

    // Both show the checkpoint's content, and are writable and independent.
    assert_eq!(read(t1.join("data.txt")), "checkpoint-content");
    assert_eq!(read(t2.join("data.txt")), "checkpoint-content");
    std::fs::write(t1.join("data.txt"), "written-in-t1").unwrap();
    std::fs::write(t1.join("new.txt"), "only-in-t1").unwrap();
    assert_eq!(read(t2.join("data.txt")), "checkpoint-content");
    assert!(!t2.join("new.txt").exists());
    assert_eq!(read(f.path.join("data.txt")), "checkpoint-content");
    assert!(!f.path.join("new.txt").exists());
    assert_eq!(read(fs.path("data.txt")), "live-content");
    assert_eq!(sh(&format!("btrfs property get -ts {} ro", f.path.display())).trim(), "ro=true");
    assert_eq!(sh(&format!("btrfs property get -ts {} ro", t1.display())).trim(), "ro=false");

    assert_eq!(snapshot::mounted_clones(&s).unwrap(), vec![canon(&t1), canon(&t2)]);

    // delete refuses while clones are mounted, naming them, and changes nothing.
    let e = snapshot::delete(&s, false).unwrap_err();
    match &e {
        SnapshotError::InUse { mounts, .. } => assert_eq!(mounts, &vec![canon(&t1), canon(&t2)]),
        other => panic!("expected InUse, got {other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains(t1.to_str().unwrap()) && msg.contains(t2.to_str().unwrap()), "{msg}");
    assert_eq!(read(t1.join("data.txt")), "written-in-t1");
    assert!(f.path.join("data.txt").exists());

    // unmount_clone with remove: gone; without: unmounted, the subvolume kept.
    snapshot::unmount_clone(&m1, true).unwrap();
    assert!(!is_mounted(&t1));
    assert!(!m1.clone_path.exists());
    snapshot::unmount_clone(&m2, false).unwrap();
    assert!(!is_mounted(&t2));
    assert!(m2.clone_path.join("data.txt").exists());
    assert!(snapshot::mounted_clones(&s).unwrap().is_empty());
    // Unmounting again is fine (nothing mounted there).
    snapshot::unmount_clone(&m1, true).unwrap();

    // The next clone takes the next free number.
    let m3 = snapshot::mount_clone(&s, &t1).unwrap();
    assert_eq!(m3.clone_path, f.path.parent().unwrap().join("restart-3"));
    assert_eq!(read(t1.join("data.txt")), "checkpoint-content");

    // A clone in use: unmount_clone says so.
    let mut held = std::fs::File::open(t1.join("data.txt")).unwrap();
    let e = snapshot::unmount_clone(&m3, true).unwrap_err();
    assert!(matches!(e, SnapshotError::InUse { .. }), "{e}");
    let mut buf = String::new();
    held.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "checkpoint-content");

    // force: lazily unmounted and deleted although a file is open in it.
    snapshot::delete(&s, true).unwrap();
    assert!(!is_mounted(&t1));
    assert!(!f.path.parent().unwrap().exists());
    let list = sh(&format!("btrfs subvolume list {}", fs.mnt.display()));
    assert!(!list.contains("snapckpt"), "{list}");
    drop(held);

    // A failed mount_clone leaves nothing behind.
    let s = snapshot::take(&spec(&fs.mnt), "ck2", 1).unwrap();
    let e = snapshot::mount_clone(&s, &fs.path("no-such-dir")).unwrap_err();
    assert!(e.to_string().contains("no-such-dir"), "{e}");
    std::fs::write(fs.path("file"), "").unwrap();
    let e = snapshot::mount_clone(&s, &fs.path("file")).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }), "{e}");
    let entries: Vec<_> =
        std::fs::read_dir(fs.path(".snapckpt/ck2")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("snapshot")]);
    snapshot::delete(&s, false).unwrap();
    assert!(no_temp_mounts());
}

#[test]
fn subvolume_mount_and_device_only_restart() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    sh(&format!("btrfs -q subvolume create {}", fs.path("@data").display()));
    std::fs::write(fs.path("@data/app.txt"), "at-checkpoint").unwrap();
    let sc = Scratch::new("subvol-mnt");
    let origin = sc.path().join("data");
    std::fs::create_dir(&origin).unwrap();
    sh(&format!("mount -o subvol=@data {} {}", fs.dev, origin.display()));
    let origin_guard = MountGuard(origin.clone());

    let s = snapshot::take(&spec(&origin), "ck", 7).unwrap();
    let f = fields(&s);
    assert_eq!(f.mount_point, canon(&origin).to_str().unwrap());
    assert_eq!(f.device, fs.dev);
    assert_eq!(f.origin_subvol_path, "/@data");
    assert_eq!(
        f.origin_subvol_id,
        sh(&format!("btrfs inspect-internal rootid {}", origin.display())).trim().parse::<u64>().unwrap()
    );
    assert_eq!(f.path, canon(&origin).join(".snapckpt/ck/snapshot"));
    assert_eq!(f.fs_path, "/@data/.snapckpt/ck/snapshot");
    // The same subvolume seen from the top-level mount.
    assert_eq!(read(fs.path("@data/.snapckpt/ck/snapshot/app.txt")), "at-checkpoint");
    std::fs::write(origin.join("app.txt"), "after-checkpoint").unwrap();

    // Only the device is left: unmount the origin and the top level.
    drop(origin_guard);
    sh(&format!("umount {}", fs.mnt.display()));
    assert!(!is_mounted(&origin) && !is_mounted(&fs.mnt));
    let target = sc.path().join("restart");
    std::fs::create_dir(&target).unwrap();
    let _tg = MountGuard(target.clone());
    let m = snapshot::mount_clone(&s, &target).unwrap();
    assert!(no_temp_mounts(), "the temporary top-level mount is gone");
    assert_eq!(m.clone_path, Path::new("/@data/.snapckpt/ck/restart-1"));
    assert_eq!(read(target.join("app.txt")), "at-checkpoint");
    let mi = read("/proc/self/mountinfo");
    let line = mi.lines().find(|l| l.split(' ').nth(4) == Some(target.to_str().unwrap())).unwrap();
    assert_eq!(line.split(' ').nth(3), Some("/@data/.snapckpt/ck/restart-1"), "{line}");
    assert!(line.contains(&format!(" btrfs {} ", fs.dev)), "{line}");
    std::fs::write(target.join("app.txt"), "restarted").unwrap();
    assert_eq!(snapshot::mounted_clones(&s).unwrap(), vec![canon(&target)]);

    // A second clone while the first is mounted, also device-only.
    let target2 = sc.path().join("restart2");
    std::fs::create_dir(&target2).unwrap();
    let _tg2 = MountGuard(target2.clone());
    let m2 = snapshot::mount_clone(&s, &target2).unwrap();
    assert_eq!(m2.clone_path, Path::new("/@data/.snapckpt/ck/restart-2"));
    assert_eq!(read(target2.join("app.txt")), "at-checkpoint");

    let e = snapshot::delete(&s, false).unwrap_err();
    assert!(matches!(e, SnapshotError::InUse { .. }), "{e}");
    snapshot::unmount_clone(&m, true).unwrap();
    snapshot::unmount_clone(&m2, false).unwrap();
    assert!(no_temp_mounts());
    snapshot::delete(&s, false).unwrap();
    assert!(no_temp_mounts());

    // Back on the top level: the snapshot and its clones are gone, @data is intact.
    sh(&format!("mount {} {}", fs.dev, fs.mnt.display()));
    let list = sh(&format!("btrfs subvolume list {}", fs.mnt.display()));
    assert!(!list.contains("snapckpt"), "{list}");
    assert!(list.contains("@data"), "{list}");
    assert!(!fs.path("@data/.snapckpt/ck").exists());
    assert_eq!(read(fs.path("@data/app.txt")), "after-checkpoint");
}

#[test]
fn clone_mounted_over_the_origin() {
    // Restart at the origin's own mount point while the origin stays mounted underneath: the
    // snapshot path then leads into the clone, and snapckpt must find the real one by UUID.
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    sh(&format!("btrfs -q subvolume create {}", fs.path("@data").display()));
    std::fs::write(fs.path("@data/app.txt"), "v1").unwrap();
    let sc = Scratch::new("over-origin");
    let origin = sc.path().join("data");
    std::fs::create_dir(&origin).unwrap();
    sh(&format!("mount -o subvol=@data {} {}", fs.dev, origin.display()));
    let _og = MountGuard(origin.clone());
    let s = snapshot::take(&spec(&origin), "ck", 1).unwrap();
    std::fs::write(origin.join("app.txt"), "v2").unwrap();

    let m1 = snapshot::mount_clone(&s, &origin).unwrap();
    let _g1 = MountGuard(origin.clone());
    assert_eq!(read(origin.join("app.txt")), "v1");
    let mi = read("/proc/self/mountinfo");
    let top = mi.lines().rfind(|l| l.split(' ').nth(4) == Some(origin.to_str().unwrap())).unwrap();
    assert_eq!(top.split(' ').nth(3), Some("/@data/.snapckpt/ck/restart-1"), "{top}");
    assert!(no_temp_mounts());
    // A second restart, now that the recorded path is shadowed by the first clone.
    let t2 = sc.path().join("t2");
    std::fs::create_dir(&t2).unwrap();
    let _g2 = MountGuard(t2.clone());
    let m2 = snapshot::mount_clone(&s, &t2).unwrap();
    assert_eq!(m2.clone_path, Path::new("/@data/.snapckpt/ck/restart-2"));
    assert_eq!(read(t2.join("app.txt")), "v1");
    assert_eq!(snapshot::mounted_clones(&s).unwrap(), vec![canon(&origin), canon(&t2)]);
    snapshot::unmount_clone(&m1, true).unwrap();
    assert_eq!(read(origin.join("app.txt")), "v2", "the origin is visible again");
    snapshot::delete(&s, true).unwrap();
    assert!(!is_mounted(&t2));
    assert!(!m2.clone_path.exists());
    assert!(!origin.join(".snapckpt/ck").exists());
    assert!(no_temp_mounts());
}

#[test]
fn bind_mounted_plain_directory_is_not_a_subvolume_root() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    std::fs::create_dir(fs.path("plain")).unwrap();
    std::fs::write(fs.path("plain/x"), "x").unwrap();
    let sc = Scratch::new("bind");
    let b = sc.path().join("b");
    std::fs::create_dir(&b).unwrap();
    sh(&format!("mount --bind {} {}", fs.path("plain").display(), b.display()));
    let _bg = MountGuard(b.clone());
    let e = snapshot::take(&spec(&b), "ck", 1).unwrap_err();
    match &e {
        SnapshotError::NotSubvolumeRoot { mount_point, why } => {
            assert_eq!(mount_point, &canon(&b));
            assert!(why.contains("/plain"), "{why}");
            assert!(why.contains("subvolume create") && why.contains("subvol="), "{why}");
        }
        other => panic!("expected NotSubvolumeRoot, got {other}"),
    }
    println!("{e}");
    assert!(!fs.path("plain/.snapckpt").exists());
}

#[test]
fn unsafe_snapshot_directories_are_refused() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    let sc = Scratch::new("symlink");
    let elsewhere = sc.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, fs.path(".snapckpt")).unwrap();
    let e = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link") && e.to_string().contains(".snapckpt"), "{e}");
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    // A symlink in an intermediate component, too.
    std::fs::create_dir(fs.path("real")).unwrap();
    std::os::unix::fs::symlink("real", fs.path("link")).unwrap();
    let e = snapshot::take(&FsSpec { snapshot_dir: Some("link/snaps".into()), ..spec(&fs.mnt) }, "ck", 1)
        .unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }), "{e}");
    assert!(!fs.path("real/snaps").exists());

    // Not owned by root.
    std::fs::remove_file(fs.path(".snapckpt")).unwrap();
    std::fs::create_dir(fs.path(".snapckpt")).unwrap();
    std::os::unix::fs::chown(fs.path(".snapckpt"), Some(1000), Some(1000)).unwrap();
    let e = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }) && e.to_string().contains("uid 1000"), "{e}");
    // Writable by others.
    std::os::unix::fs::chown(fs.path(".snapckpt"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(fs.path(".snapckpt"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }), "{e}");
    // A regular file.
    std::fs::remove_dir(fs.path(".snapckpt")).unwrap();
    std::fs::write(fs.path(".snapckpt"), "").unwrap();
    let e = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }) && e.to_string().contains("not a directory"), "{e}");
    // Another mount on the snapshot directory.
    std::fs::remove_file(fs.path(".snapckpt")).unwrap();
    std::fs::create_dir(fs.path(".snapckpt")).unwrap();
    std::fs::set_permissions(fs.path(".snapckpt"), std::fs::Permissions::from_mode(0o700)).unwrap();
    sh(&format!("mount -t tmpfs -o mode=0700 none {}", fs.path(".snapckpt").display()));
    let e = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }) && e.to_string().contains("another mount"), "{e}");
    sh(&format!("umount {}", fs.path(".snapckpt").display()));
    // And a fine one works.
    let s = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap();
    snapshot::delete(&s, false).unwrap();
}

#[test]
fn orphans_are_dropped_relinked_names_are_kept() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    let tag = format!("{}-{}", std::process::id(), common::unique());
    let orphan_text = format!("ORPHAN-DATA-{tag}\n").repeat(1000);
    let kept_text = format!("RELINKED-DATA-{tag}\n").repeat(1000);
    std::fs::create_dir_all(fs.path("lost+found/checkpoint")).unwrap();

    // An orphan: open, write, unlink, keep the fd.
    let mut orphan = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(fs.path("orphan.dat"))
        .unwrap();
    orphan.write_all(orphan_text.as_bytes()).unwrap();
    orphan.sync_all().unwrap();
    std::fs::remove_file(fs.path("orphan.dat")).unwrap();
    // An unlinked file given a name in lost+found/checkpoint first (as the relink stage does).
    let mut kept = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(fs.path("kept.dat"))
        .unwrap();
    kept.write_all(kept_text.as_bytes()).unwrap();
    kept.sync_all().unwrap();
    std::fs::hard_link(fs.path("kept.dat"), fs.path("lost+found/checkpoint/0-kept.dat")).unwrap();
    std::fs::remove_file(fs.path("kept.dat")).unwrap();
    assert_eq!(orphan.metadata().unwrap().nlink(), 0);

    let s = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap();
    let f = fields(&s);

    // The live orphan still holds its data (it is the snapshot that dropped it) ...
    let mut buf = String::new();
    orphan.rewind().unwrap();
    orphan.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, orphan_text);
    // ... nothing in the snapshot does, while the relinked name carries the other file.
    let needle = format!("ORPHAN-DATA-{tag}");
    assert_eq!(files_containing(&f.path, &needle), Vec::<String>::new());
    let holders = files_containing(&f.path, &format!("RELINKED-DATA-{tag}"));
    assert_eq!(holders, vec![f.path.join("lost+found/checkpoint/0-kept.dat").to_str().unwrap().to_string()]);
    assert_eq!(read(f.path.join("lost+found/checkpoint/0-kept.dat")), kept_text);
    let all: Vec<String> =
        sh(&format!("find {} -xdev", f.path.display())).lines().map(str::to_string).collect();
    assert!(!all.iter().any(|p| p.contains("orphan")), "{all:?}");

    // A restart clone carries it too.
    let t = fs.path("restart");
    std::fs::create_dir(&t).unwrap();
    let m = snapshot::mount_clone(&s, &t).unwrap();
    assert_eq!(read(t.join("lost+found/checkpoint/0-kept.dat")), kept_text);
    assert!(files_containing(&t, &needle).is_empty());
    snapshot::unmount_clone(&m, true).unwrap();
    snapshot::delete(&s, false).unwrap();
    drop(orphan);
    drop(kept);
}

#[test]
fn same_layout_on_another_filesystem_is_not_ours() {
    // Two filesystems with the same layout and checkpoint id: the mounts of one's clones are
    // not counted (or unmounted) for the other.
    let _g = common::serial();
    let a = LoopFs::new("btrfs", "1G");
    let b = LoopFs::new("btrfs", "1G");
    let sa = snapshot::take(&spec(&a.mnt), "ck", 1).unwrap();
    let sb = snapshot::take(&spec(&b.mnt), "ck", 1).unwrap();
    let t = b.path("t");
    std::fs::create_dir(&t).unwrap();
    let mb = snapshot::mount_clone(&sb, &t).unwrap();
    assert!(snapshot::mounted_clones(&sa).unwrap().is_empty());
    assert_eq!(snapshot::mounted_clones(&sb).unwrap(), vec![canon(&t)]);
    // Even with the device name of b recorded, a's UUIDs do not match b's clone.
    let mut fake = sa.clone();
    if let Snapshot::Btrfs { device, .. } = &mut fake {
        *device = b.dev.clone();
    }
    assert!(snapshot::mounted_clones(&fake).unwrap().is_empty());
    snapshot::delete(&sa, true).unwrap();
    assert!(is_mounted(&t));
    snapshot::unmount_clone(&mb, true).unwrap();
    snapshot::delete(&sb, false).unwrap();
}

#[test]
fn checkpoint_of_a_restarted_filesystem() {
    // Restart, then checkpoint the restarted filesystem: the new snapshot lives inside the
    // clone. Deleting the first checkpoint must not destroy it silently.
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    std::fs::write(fs.path("f"), "gen1").unwrap();
    let s1 = snapshot::take(&spec(&fs.mnt), "ck1", 1).unwrap();
    let t = fs.path("t");
    std::fs::create_dir(&t).unwrap();
    let m = snapshot::mount_clone(&s1, &t).unwrap();
    std::fs::write(t.join("f"), "gen2").unwrap();
    let s2 = snapshot::take(&spec(&t), "ck2", 2).unwrap();
    let f2 = fields(&s2);
    assert_eq!(f2.origin_subvol_path, "/.snapckpt/ck1/restart-1");
    assert_eq!(f2.fs_path, "/.snapckpt/ck1/restart-1/.snapckpt/ck2/snapshot");
    assert_eq!(read(f2.path.join("f")), "gen2");

    // ck1 cannot go while ck2's snapshot lives in its clone: refused before anything changes,
    // even with force (the clone stays mounted).
    let e = snapshot::delete(&s1, true).unwrap_err();
    assert!(matches!(e, SnapshotError::Refused { .. }) && e.to_string().contains("restart-1"), "{e}");
    assert!(is_mounted(&t));
    // ck2 can still be restarted, from the device, and deleted; then ck1 goes.
    let t2 = fs.path("t2");
    std::fs::create_dir(&t2).unwrap();
    let m2 = snapshot::mount_clone(&s2, &t2).unwrap();
    assert_eq!(read(t2.join("f")), "gen2");
    snapshot::unmount_clone(&m2, true).unwrap();
    snapshot::delete(&s2, false).unwrap();
    snapshot::unmount_clone(&m, true).unwrap();
    snapshot::delete(&s1, false).unwrap();
    assert!(!sh(&format!("btrfs subvolume list {}", fs.mnt.display())).contains("snapckpt"));
    assert!(no_temp_mounts());
}

#[test]
fn origin_mount_read_only_at_restart() {
    // The origin mount was made read-only after the take: clones are made on the device's top
    // level instead of through it.
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "1G");
    std::fs::write(fs.path("f"), "ckpt").unwrap();
    let s = snapshot::take(&spec(&fs.mnt), "ck", 1).unwrap();
    let sc = Scratch::new("ro-origin");
    let t = sc.path().join("t");
    std::fs::create_dir(&t).unwrap();
    let _tg = MountGuard(t.clone());
    sh(&format!("mount -o remount,bind,ro {}", fs.mnt.display()));
    let m = snapshot::mount_clone(&s, &t).unwrap();
    assert_eq!(m.clone_path, Path::new("/.snapckpt/ck/restart-1"));
    std::fs::write(t.join("f"), "restarted").unwrap();
    assert_eq!(read(fields(&s).path.join("f")), "ckpt");
    snapshot::unmount_clone(&m, true).unwrap();
    snapshot::delete(&s, false).unwrap();
    assert!(!fs.path(".snapckpt/ck").exists());
    assert!(no_temp_mounts());
}

// ---------------------------------------------------------------------------------------------
// Through the CLI: what restart mounts where, and what a take keeps
// ---------------------------------------------------------------------------------------------

/// Root mounts a writable clone at `<mount-root>/<origin>`: a mount root that a user can
/// write to, or a symlink on the way, could send that mount over any directory. Refused,
/// nothing mounted, nothing created outside; a root-owned mount root works.
#[test]
fn restart_mount_root_only_root_can_change() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("mount-root-trust");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = common::Proc::start(
        &common::prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:5000"],
        &work.path().join("log"),
    );
    let images = work.path().join("images");
    let id = common::take_files_only(p.pid, &images, &["--snapshot", "btrfs"]).0;
    drop(p);
    let ir = images.to_str().unwrap();
    let restart = |root: &Path| {
        common::snapckpt(&[
            "restart",
            &id,
            "--snapshot",
            "--mount-root",
            root.to_str().unwrap(),
            "--image-root",
            ir,
        ])
    };
    let victim = work.path().join("victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("important"), "keep").unwrap();

    // 1. a mount root owned by a user
    let user_root = work.path().join("user-root");
    std::fs::create_dir_all(&user_root).unwrap();
    std::os::unix::fs::chown(&user_root, Some(65534), Some(65534)).unwrap();
    let (ok, out, err) = restart(&user_root);
    assert!(!ok && err.contains("owned by uid 65534") && err.contains("only root"), "{out}\n{err}");
    // 2. a root-owned mount root with a symlink planted where the origin's path goes
    let planted = work.path().join("planted");
    let origin = fs.mnt.canonicalize().unwrap();
    let first = origin.components().nth(1).unwrap().as_os_str().to_owned(); // "var"
    std::fs::create_dir_all(&planted).unwrap();
    std::os::unix::fs::symlink(&victim, planted.join(&first)).unwrap();
    let (ok, out, err) = restart(&planted);
    assert!(!ok && err.contains("is a symlink"), "{out}\n{err}");
    // nothing was mounted over the victim, nothing made in it
    assert!(!is_mounted(&victim));
    let in_victim: Vec<_> = std::fs::read_dir(&victim).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(in_victim, vec![std::ffi::OsString::from("important")]);
    assert!(!user_root.join(&first).exists(), "restart created directories in the user's mount root");
    // 3. a root-owned one works
    let good = work.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    let out = common::snapckpt_ok(&[
        "restart",
        &id,
        "--snapshot",
        "--mount-root",
        good.to_str().unwrap(),
        "--image-root",
        ir,
    ]);
    let mounted = good.join(origin.strip_prefix("/").unwrap());
    assert!(is_mounted(&mounted), "{out}");
    common::snapckpt_ok(&["delete", &id, "--force", "--image-root", ir]);
    assert!(!is_mounted(&mounted));
}

/// A take whose snapshots cover only some of the filesystems keeps the relinked names on the
/// others (they are the only copy there), and says so.
#[test]
fn names_on_filesystems_without_a_snapshot_are_kept() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "512M");
    let other = LoopFs::new("ext4", "128M");
    let work = Scratch::new("partial-snapshot");
    let (d1, d2) = (fs.path("d"), other.path("d"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    let log = work.path().join("log");
    let uf = common::prog("ufiles");
    let script = format!(
        "'{}' setup '{}' orphan:4000 & exec '{}' setup '{}' orphan:5000",
        uf.display(),
        d2.display(),
        uf.display(),
        d1.display()
    );
    let out = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new("sh").arg("-c").arg(&script).stdout(out).spawn().unwrap();
    common::wait_for(
        || read(&log).matches("ready").count() == 2,
        std::time::Duration::from_secs(20),
        "two workloads ready",
    );
    let job = work.path().join("job.toml");
    std::fs::write(&job, format!("[[filesystem]]\nmount = \"{}\"\nsnapshot = \"btrfs\"\n", fs.mnt.display()))
        .unwrap();
    let images = work.path().join("images");
    let pid = child.id().to_string();
    let (ok, out, err) = common::snapckpt(&[
        "take",
        "--pid",
        &pid,
        "--tree",
        "--engine",
        "none",
        "--job",
        job.to_str().unwrap(),
        "--image-root",
        images.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(
        err.lines().any(|l| l.contains("no snapshot") && l.contains(other.mnt.to_str().unwrap())),
        "{err}"
    );
    let names =
        |m: &Path| std::fs::read_dir(m.join("lost+found/checkpoint")).map(|rd| rd.count()).unwrap_or(0);
    assert_eq!(
        (names(&fs.mnt), names(&other.mnt)),
        (0, 1),
        "the btrfs names go (the snapshot has them), the ext4 one stays"
    );
    let id = common::take_id(&out);
    let rec = common::record(&images.join(&id));
    assert_eq!(rec["links_removed"], false);
    let kids = read(format!("/proc/{pid}/task/{pid}/children"));
    let _ = child.kill();
    let _ = child.wait();
    for k in kids.split_whitespace() {
        common::kill_wait(k.parse().unwrap());
    }
    // restart finds both: the btrfs one in the clone, the ext4 one on the live filesystem
    let root = work.path().join("r");
    std::fs::create_dir_all(&root).unwrap();
    let out = common::snapckpt_ok(&[
        "restart",
        &id,
        "--snapshot",
        "--mount-root",
        root.to_str().unwrap(),
        "--image-root",
        images.to_str().unwrap(),
    ]);
    assert!(out.matches("preserved file").count() == 2, "{out}");
    common::snapckpt_ok(&["delete", &id, "--force", "--image-root", images.to_str().unwrap()]);
    assert_eq!(names(&other.mnt), 0, "delete removes the kept name");
}

/// A take that fails after its snapshot (here: publishing the record) removes the snapshot and
/// the names, thaws the task and leaves the image root empty.
#[test]
fn take_failing_after_the_snapshot_undoes_it() {
    let _g = common::serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("fail-after-snapshot");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = common::Proc::start(
        &common::prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:5000", "ab"],
        &work.path().join("log"),
    );
    let images = work.path().join("images");
    let hooks = common::Hooks::new(work.path().join("hooks"), &["take-snapshotted"]);
    let child = hooks
        .command(&[
            "take",
            "--pid",
            &p.pid.to_string(),
            "--engine",
            "none",
            "--snapshot",
            "btrfs",
            "--image-root",
            images.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    hooks.wait_reached("take-snapshotted", "snapshotted");
    // the record cannot be written: its temporary file already exists
    let partial = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .unwrap()
        .path();
    std::fs::write(partial.join(format!(".checkpoint.json.tmp-{}", child.id())), "").unwrap();
    hooks.release("take-snapshotted");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("File exists"), "{err}");
    assert_eq!(std::fs::read_dir(fs.path(".snapckpt")).map(|rd| rd.count()).unwrap_or(0), 0, "snapshot left");
    assert_eq!(std::fs::read_dir(fs.path("lost+found/checkpoint")).unwrap().count(), 0, "names left");
    assert_eq!(std::fs::read_dir(&images).unwrap().count(), 0, "image root not empty");
    let st = read(format!("/proc/{}/stat", p.pid));
    assert!(!st.contains(") T "), "task left stopped: {st}");
}
