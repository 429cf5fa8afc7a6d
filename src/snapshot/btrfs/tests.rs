//! Unit tests of `snapshot::btrfs`.

use super::*;

fn snap(path: &str, fs_path: &str, device: &str) -> Snapshot {
    Snapshot::Btrfs {
        mount_point: "/m".into(),
        device: device.into(),
        origin_subvol_id: 5,
        origin_subvol_path: "/".into(),
        subvol_id: 257,
        uuid: "0f6c1e2a-61a5-4a47-9a57-4d6c3f1c2b1a".into(),
        path: path.into(),
        fs_path: fs_path.into(),
        created_unix: 1,
    }
}

#[test]
fn records_are_checked() {
    assert!(Rec::from(&snap("/m/.snapckpt/a1/snapshot", "/.snapckpt/a1/snapshot", "/dev/loop0")).is_ok());
    let r = Rec::from(&snap("/m/.snapckpt/a1/snapshot", "/@d/.snapckpt/a1/snapshot", "/dev/loop0")).unwrap();
    assert_eq!(r.id_fs_dir(), "/@d/.snapckpt/a1");
    for (p, f, d) in [
        ("/m/../etc/a1/snapshot", "/.snapckpt/a1/snapshot", "/dev/loop0"),
        ("/m/.snapckpt/a1/snapshot", "/.snapckpt/a2/snapshot", "/dev/loop0"),
        ("m/.snapckpt/a1/snapshot", "/.snapckpt/a1/snapshot", "/dev/loop0"),
        ("/m/.snapckpt/a1/other", "/.snapckpt/a1/snapshot", "/dev/loop0"),
        ("/m/.snapckpt/.x/snapshot", "/.snapckpt/.x/snapshot", "/dev/loop0"),
        ("/m/.snapckpt/a1/snapshot", "/.snapckpt//a1/snapshot", "/dev/loop0"),
        ("/m/.snapckpt/a1/snapshot\0", "/.snapckpt/a1/snapshot", "/dev/loop0"),
        ("/m/.snapckpt/a1/snapshot", "/.snapckpt/a1/snapshot", "loop0"),
        ("/m/.snapckpt/a1/snapshot", "/.snapckpt/a1/snapshot", "/dev/loop0,subvolid=5"),
    ] {
        assert!(Rec::from(&snap(p, f, d)).is_err(), "{p} {f} {d}");
    }
}

#[test]
fn clone_names_and_options() {
    assert_eq!(clone_number(OsStr::new("restart-12")), Some(12));
    for bad in ["restart-", "restart-+1", "restart-1x", "snapshot", "restart-99999999999"] {
        assert_eq!(clone_number(OsStr::new(bad)), None, "{bad}");
    }
    assert_eq!(
        clone_mount_options(260, "/@d/.snapckpt/a/restart-1"),
        "subvolid=260,subvol=/@d/.snapckpt/a/restart-1"
    );
    assert_eq!(clone_mount_options(260, "/a,b/.snapckpt/a/restart-1"), "subvolid=260");
}
