//! Unit tests of the record: ids, paths, and every validation refusal.

use super::names::*;
use super::*;

#[test]
fn ids() {
    let id = new_id(1795734000);
    assert!(valid_id(&id), "{id}");
    assert!(generated_id(&id), "{id}");
    assert!(
        !generated_id("not-an-id")
            && !generated_id("20261126T230000Z-3fa")
            && !generated_id("20261126T230000Z-3fAg")
    );
    assert!(id.starts_with("20261126T230000Z-"));
    assert!(!valid_id("../x"));
    assert!(!valid_id(".hidden"));
    assert!(!valid_id(""));
    assert!(!valid_id("a b"));
}

/// A record with one relinked object, one btrfs snapshot and one task, all of checkpoint
/// `ID`, that validates.
pub(crate) const ID: &str = "20261126T210000Z-abcd";
pub(crate) fn good() -> Checkpoint {
    let mut ck = Checkpoint::new(ID, 1);
    ck.template = DEFAULT_TEMPLATE.into();
    let mount = MountRef {
        mnt_id: 40,
        mount_point: "/srv/data".into(),
        fs_root: "/".into(),
        fstype: "btrfs".into(),
        source: "/dev/loop0".into(),
        dev: 1,
    };
    let name = format!("unlink-at-restart-{ID}-1");
    ck.objects.push(Object {
        index: 0,
        kind: FileKind::Regular,
        class: Unlinked::Orphan,
        original_path: "/srv/data/a".into(),
        dev: 1,
        ino: 2,
        nlink: 0,
        size: 5,
        mode: libc::S_IFREG | 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        allocated: 4096,
        mount,
        criu_key: Object::criu_key_for(40, 2),
        holders: vec![Holder { pid: 10, what: Held::Fd(3) }],
        relinked: Some(Relinked {
            rel_path: format!("{}/{name}", CHECKPOINT_DIR),
            name,
            method: Method::Clone,
            ino: 3,
            bytes_copied: 0,
        }),
    });
    ck.tasks.push(Task {
        pid: 10,
        ns_pid: None,
        ppid: 0,
        threads: vec![10, 11],
        comm: "x".into(),
        cmdline: vec![],
        cwd: None,
        root: None,
        exe: None,
        fds: vec![Fd {
            fd: MAX_FD,
            path: "/srv/data/a (deleted)".into(),
            kind: FileKind::Regular,
            flags: 2,
            pos: i64::MAX as u64,
            mnt_id: 40,
            dev: 1,
            ino: 2,
            nlink: 0,
            object: Some(0),
        }],
        maps: vec![],
    });
    ck.snapshots.push(Snapshot::Btrfs {
        mount_point: "/srv/data".into(),
        device: "/dev/loop0".into(),
        origin_subvol_id: 5,
        origin_subvol_path: "/".into(),
        subvol_id: 256,
        uuid: "00000000-0000-0000-0000-000000000000".into(),
        path: format!("/srv/data/.snapckpt/{ID}/snapshot"),
        fs_path: format!("/.snapckpt/{ID}/snapshot"),
        created_unix: 1,
    });
    ck
}

fn lvm(snapshot_lv: &str) -> Snapshot {
    Snapshot::Lvm {
        mount_point: "/srv/lv".into(),
        fstype: "xfs".into(),
        vg: "vg0".into(),
        origin_lv: "data".into(),
        origin_uuid: "u1".into(),
        snapshot_lv: snapshot_lv.into(),
        snapshot_uuid: "u2".into(),
        kind: LvmKind::Thin,
        created_unix: 1,
    }
}

#[test]
fn normalized_paths() {
    for p in ["/", "/a", "/a/b.c/..d", "/srv/data"] {
        assert!(normalized_abs(p), "{p:?}");
    }
    for p in ["", "a", "a/b", "//", "/a/", "/a//b", "/..", "/../victim", "/a/../b", "/a/.", "/./a", "/a\0b"] {
        assert!(!normalized_abs(p), "{p:?}");
    }
}

/// Every field a consumer acts on is refused when it is out of range, leads elsewhere, or
/// belongs to another checkpoint.
#[test]
fn validation_refusals() {
    let p = Path::new("ck.json");
    good().validate(p).unwrap();
    let mut lv = good();
    lv.snapshots.push(lvm(&snapshot_lv_name(ID)));
    lv.validate(p).unwrap();
    let mut root = good();
    root.objects[0].mount.mount_point = "/".into();
    root.validate(p).unwrap();

    let other = "20261127T000000Z-0bad";
    type Mutation = Box<dyn Fn(&mut Checkpoint)>;
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "task pid in its own namespace",
            Box::new(|c| c.tasks[0].ns_pid = Some(0)),
            "task 10: pid 0 in its own pid namespace is not a process id",
        ),
        (
            "object mount point with ..",
            Box::new(|c| c.objects[0].mount.mount_point = "/../victim".into()),
            "object 0: mount point \"/../victim\" is not a normalized absolute path",
        ),
        (
            "object mount point with //",
            Box::new(|c| c.objects[0].mount.mount_point = "/srv//data".into()),
            "not a normalized absolute path",
        ),
        (
            "object mount point with .",
            Box::new(|c| c.objects[0].mount.mount_point = "/srv/./data".into()),
            "not a normalized absolute path",
        ),
        (
            "object mount point with NUL",
            Box::new(|c| c.objects[0].mount.mount_point = "/srv/\0".into()),
            "not a normalized absolute path",
        ),
        (
            "snapshot mount point with ..",
            Box::new(|c| set_btrfs(c, "mount_point", "/srv/data/../../etc")),
            "snapshot 0: mount point \"/srv/data/../../etc\" is not a normalized",
        ),
        (
            "record id differs from the names",
            Box::new(move |c| c.id = other.into()),
            "is a name of checkpoint 20261126T210000Z-abcd, not of this checkpoint 20261127T000000Z-0bad",
        ),
        (
            "name not from the template",
            Box::new(|c| rename(c, "something-else")),
            "is not a name of checkpoint",
        ),
        ("template invalid", Box::new(|c| c.template = "../%t".into()), "template:"),
        (
            "btrfs snapshot of another checkpoint",
            Box::new(move |c| {
                set_btrfs(c, "path", &format!("/srv/data/.snapckpt/{other}/snapshot"));
                set_btrfs(c, "fs_path", &format!("/.snapckpt/{other}/snapshot"));
            }),
            "is the snapshot of another checkpoint (20261127T000000Z-0bad)",
        ),
        (
            "btrfs fs_path of another checkpoint",
            Box::new(move |c| set_btrfs(c, "fs_path", &format!("/.snapckpt/{other}/snapshot"))),
            "fs_path",
        ),
        (
            "btrfs path not a snapshot",
            Box::new(|c| set_btrfs(c, "path", "/srv/data/.snapckpt/x")),
            "does not end in <checkpoint id>/snapshot",
        ),
        (
            "btrfs path with ..",
            Box::new(|c| set_btrfs(c, "path", &format!("/srv/../etc/{ID}/snapshot"))),
            "is not a normalized absolute path",
        ),
        (
            "lvm snapshot of another checkpoint",
            Box::new(move |c| c.snapshots.push(lvm(&format!("snapckpt-{other}")))),
            "is not the snapshot LV of this checkpoint",
        ),
        ("pid -1", Box::new(|c| c.tasks[0].pid = -1), "task pid -1 is not a process id"),
        ("pid 0", Box::new(|c| c.tasks[0].pid = 0), "task pid 0 is not a process id"),
        ("ppid -1", Box::new(|c| c.tasks[0].ppid = -1), "parent pid -1"),
        ("thread 0", Box::new(|c| c.tasks[0].threads.push(0)), "thread id 0"),
        ("holder pid -1", Box::new(|c| c.objects[0].holders[0].pid = -1), "holder pid -1"),
        ("fd i32::MAX", Box::new(|c| c.tasks[0].fds[0].fd = i32::MAX), "fd 2147483647 is above 1048576"),
        ("fd MAX_FD + 1", Box::new(|c| c.tasks[0].fds[0].fd = MAX_FD + 1), "is above"),
        ("fd negative", Box::new(|c| c.tasks[0].fds[0].fd = -1), "negative fd"),
        ("position beyond off_t", Box::new(|c| c.tasks[0].fds[0].pos = u64::MAX), "file position"),
        (
            "kind regular for a FIFO",
            Box::new(|c| c.objects[0].mode = libc::S_IFIFO | 0o600),
            "kind is \"regular\" but its mode 10600 is that of a fifo",
        ),
        ("kind fifo for a file", Box::new(|c| c.objects[0].kind = FileKind::Fifo), "kind is \"fifo\""),
    ];
    for (what, f, expect) in cases {
        let mut c = good();
        f(&mut c);
        let e = c.validate(p).unwrap_err().to_string();
        assert!(
            e.starts_with("ck.json: not a valid checkpoint record: ") && e.contains(expect),
            "{what}: {e}"
        );
    }

    fn set_btrfs(c: &mut Checkpoint, field: &str, v: &str) {
        let Snapshot::Btrfs { mount_point, path, fs_path, .. } = &mut c.snapshots[0] else { unreachable!() };
        *match field {
            "mount_point" => mount_point,
            "path" => path,
            _ => fs_path,
        } = v.into();
    }
    fn rename(c: &mut Checkpoint, n: &str) {
        let r = c.objects[0].relinked.as_mut().unwrap();
        r.name = n.into();
        r.rel_path = format!("{}/{n}", CHECKPOINT_DIR);
    }
}

/// The typed fields keep the version-1 spelling on disk and refuse anything else.
#[test]
fn typed_fields_keep_their_spelling() {
    let h: Holder = serde_json::from_str(r#"{"pid":3,"what":"map 7f00-7f10"}"#).unwrap();
    assert_eq!(h.what, Held::Map { start: 0x7f00, end: 0x7f10 });
    assert_eq!(serde_json::to_string(&h).unwrap(), r#"{"pid":3,"what":"map 7f00-7f10"}"#);
    for (s, held) in [("fd 12", Held::Fd(12)), ("cwd", Held::Cwd), ("exe", Held::Exe), ("root", Held::Root)] {
        assert_eq!(Held::try_from(s.to_string()).unwrap(), held);
        assert_eq!(held.to_string(), s);
    }
    for bad in ["fd x", "map 1", "map g-1", "fd", "tty", ""] {
        assert!(Held::try_from(bad.to_string()).is_err(), "{bad:?}");
    }
    for (s, f) in [
        ("sigstop", Freezer::Sigstop),
        ("cgroup-v2 /sys/fs/cgroup/x", Freezer::CgroupV2 { path: "/sys/fs/cgroup/x".into() }),
        ("cgroup-v1 /sys/fs/cgroup/freezer/x", Freezer::CgroupV1 { path: "/sys/fs/cgroup/freezer/x".into() }),
    ] {
        assert_eq!(Freezer::try_from(s.to_string()).unwrap(), f);
        assert_eq!(f.to_string(), s);
    }
    assert!(Freezer::try_from("cgroup-v3 /x".to_string()).is_err());
    assert!(serde_json::from_str::<LvmKind>(r#""cow""#).is_err());
    assert_eq!(serde_json::from_str::<LvmKind>(r#""thin""#).unwrap(), LvmKind::Thin);
}

#[test]
fn template_default_roundtrip() {
    let t = Template::parse(DEFAULT_TEMPLATE).unwrap();
    let id = "20261126T210000Z-3fa2";
    let n = t.render(id, 17);
    assert_eq!(n, "unlink-at-restart-20261126T210000Z-3fa2-17");
    assert_eq!(t.match_id(&n).as_deref(), Some(id));
    assert_eq!(t.match_id("unlink-at-restart-x"), None);
    assert_eq!(t.match_id("other"), None);
}

#[test]
fn template_random() {
    let t = Template::parse("ck.%t.XXXXXX").unwrap();
    let a = t.render("id1", 1);
    let b = t.render("id1", 2);
    assert_eq!(a.len(), "ck.id1.".len() + 6);
    assert_ne!(a, b);
    assert_eq!(t.match_id(&a).as_deref(), Some("id1"));
}

#[test]
fn template_refusals() {
    for bad in
        ["../x-%t-%n", "a/%t-%n", "..%t%n", "%t", "x-%n", "%t%n", "%q-%t-%n", "", ".x-%t-%n", "%t-%t-%n"]
    {
        assert!(Template::parse(bad).is_err(), "{bad:?} accepted");
    }
    assert!(Template::parse("100%%-%t-%n").is_ok());
}

/// Pre-dump round directories: `pre-N`, N a positive integer without leading zeros.
#[test]
fn pre_dump_dirs() {
    assert_eq!(pre_dump_dir(3), "pre-3");
    for ok in ["pre-1", "pre-4", "pre-12"] {
        assert!(is_pre_dump_dir(ok), "{ok}");
    }
    for bad in ["pre-", "pre-0", "pre-01", "pre-1a", "pre-1/..", "pre-1234", "parent", "pre--1", "pre-x"] {
        assert!(!is_pre_dump_dir(bad), "{bad}");
    }
}
