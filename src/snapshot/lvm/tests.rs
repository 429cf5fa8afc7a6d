//! Unit tests of `snapshot::lvm`.

use super::*;

const LVS: &str = r#"  {
  "report": [
      {
          "lv": [
              {"lv_name":"pool", "vg_name":"vg0", "lv_uuid":"AZ1w22-7vHt-IdEU-SVcp-PdTQ-3b1s-Qnz2JX", "lv_attr":"twi-aotz--", "lv_dm_path":"/dev/mapper/vg0-pool", "lv_path":"", "pool_lv":"", "origin":"", "lv_size":"1073741824", "lv_kernel_major":"253", "lv_kernel_minor":"2", "lv_tags":""},
              {"lv_name":"snapckpt-X", "vg_name":"vg0", "lv_uuid":"sX1uqc-Je1f-FYQr-6HdT-3tgz-XmcR-87ERcB", "lv_attr":"Vri---tz-k", "lv_dm_path":"/dev/mapper/vg0-snapckpt--X", "lv_path":"/dev/vg0/snapckpt-X", "pool_lv":"pool", "origin":"thin1", "lv_size":"2147483648", "lv_kernel_major":"-1", "lv_kernel_minor":"-1", "lv_tags":"snapckpt,snapckpt_id_2026-x.y"},
              {"lv_name":"snapckpt-X-r1", "vg_name":"vg0", "lv_uuid":"fggDcV-8Um5-i8la-wWwC-chZU-KBLY-0WU1mt", "lv_attr":"Vwi-aotz-k", "lv_dm_path":"/dev/mapper/vg0-snapckpt--X--r1", "lv_path":"/dev/vg0/snapckpt-X-r1", "pool_lv":"pool", "origin":"snapckpt-X", "lv_size":"2147483648", "lv_kernel_major":"253", "lv_kernel_minor":"5", "lv_tags":"snapckpt,snapckpt_clone_of_sX1uqc-Je1f-FYQr-6HdT-3tgz-XmcR-87ERcB"},
              {"lv_name":"snapckpt-X-r2", "vg_name":"vg0", "lv_uuid":"fggDcV-8Um5-i8la-wWwC-chZU-KBLY-0WU1mu", "lv_attr":"Vwi-a-tz-k", "lv_dm_path":"/dev/mapper/vg0-snapckpt--X--r2", "lv_path":"/dev/vg0/snapckpt-X-r2", "pool_lv":"pool", "origin":"snapckpt-X", "lv_size":"2147483648", "lv_kernel_major":"253", "lv_kernel_minor":"6", "lv_tags":"snapckpt"},
              {"lv_name":"thin1", "vg_name":"vg0", "lv_uuid":"h6ZM5X-osr2-n3B7-lFXE-bpAX-zzrJ-Uc6MuJ", "lv_attr":"Vwi-aotz--", "lv_dm_path":"/dev/mapper/vg0-thin1", "lv_path":"/dev/vg0/thin1", "pool_lv":"pool", "origin":"", "lv_size":"2147483648", "lv_kernel_major":"253", "lv_kernel_minor":"4", "lv_tags":""},
              {"lv_name":"lin", "vg_name":"vg0", "lv_uuid":"tNMjAd-uaZi-f2cx-zNvt-1xdl-c45r-Rvi0vC", "lv_attr":"owi-aos---", "lv_dm_path":"/dev/mapper/vg0-lin", "lv_path":"/dev/vg0/lin", "pool_lv":"", "origin":"", "lv_size":"536870912", "lv_kernel_major":"253", "lv_kernel_minor":"6", "lv_tags":""},
              {"lv_name":"lsnap", "vg_name":"vg0", "lv_uuid":"nqwl0c-xkeQ-h2H1-2Ggn-dPWt-H2hl-PEcj3N", "lv_attr":"swi-a-s---", "lv_dm_path":"/dev/mapper/vg0-lsnap", "lv_path":"/dev/vg0/lsnap", "pool_lv":"", "origin":"lin", "lv_size":"67108864", "lv_kernel_major":"253", "lv_kernel_minor":"9", "lv_tags":"snapckpt_restarted"},
              {"lv_name":"dead", "vg_name":"vg0", "lv_uuid":"nqwl0c-xkeQ-h2H1-2Ggn-dPWt-H2hl-PEcj3M", "lv_attr":"swi-I-s---", "lv_dm_path":"/dev/mapper/vg0-dead", "lv_path":"/dev/vg0/dead", "pool_lv":"", "origin":"lin", "lv_size":"67108864", "lv_kernel_major":"253", "lv_kernel_minor":"10", "lv_tags":""}
          ]
      }
  ]
  }
"#;

#[test]
fn lvs_json() {
    let v = parse_lvs(LVS).unwrap();
    assert_eq!(v.len(), 8);
    let by = |n: &str| v.iter().find(|l| l.name == n).unwrap().clone();
    let thin1 = by("thin1");
    assert!(thin1.is_thin() && !thin1.is_classic_snapshot());
    assert_eq!(thin1.kdev, Some((253, 4)));
    assert_eq!(thin1.dev(), Some(sys::makedev(253, 4)));
    assert_eq!(thin1.size, Some(2147483648));
    assert_eq!(thin1.pool, "pool");
    assert!(thin1.tags.is_empty());
    let snap = by("snapckpt-X");
    assert!(snap.is_thin());
    assert_eq!(snap.kdev, None, "inactive: -1:-1");
    assert_eq!(snap.origin, "thin1");
    assert_eq!(snap.tags, vec!["snapckpt", "snapckpt_id_2026-x.y"]);
    assert!(snap.has_tag(TAG));
    let lin = by("lin");
    assert!(!lin.is_thin() && !lin.is_classic_snapshot());
    let lsnap = by("lsnap");
    assert!(lsnap.is_classic_snapshot() && !lsnap.is_invalid() && lsnap.has_tag(TAG_RESTARTED));
    assert!(by("dead").is_invalid());
    assert_eq!(by("pool").path, "");

    // clones: name and tag
    let rec = Rec {
        fstype: "xfs",
        vg: "vg0".into(),
        snapshot_lv: "snapckpt-X".into(),
        uuid: "sX1uqc-Je1f-FYQr-6HdT-3tgz-XmcR-87ERcB".into(),
        thin: true,
    };
    let (s, c) = locate(&rec, &v).unwrap();
    assert_eq!(s.unwrap().name, "snapckpt-X");
    assert_eq!(
        c.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        vec!["snapckpt-X-r1"],
        "r2 lacks the clone-of tag"
    );
    let wrong = Rec { uuid: "other".into(), ..rec };
    assert!(matches!(locate(&wrong, &v), Err(SnapshotError::Mismatch { .. })));
}

#[test]
fn lvs_json_edge_cases() {
    // no LVs (e.g. a VG that has none), several report sections, unknown fields/sections
    assert!(parse_lvs(r#"{"report":[{"lv":[]}]}"#).unwrap().is_empty());
    let v = parse_lvs(r#"{"report":[{"lv":[{"lv_name":"a","vg_name":"v","lv_attr":"-wi-a-----","lv_kernel_major":"253","lv_kernel_minor":"0","extra":"x"}]},{"lv":[{"lv_name":"b"}]}],"log":[]}"#).unwrap();
    assert_eq!(v.len(), 2);
    assert_eq!(v[0].kdev, Some((253, 0)));
    assert_eq!(v[1].kdev, None);
    assert_eq!(v[1].size, None);
    assert!(parse_lvs("  Volume group \"x\" not found").is_err());
    assert!(parse_lvs(r#"{"report":"x"}"#).is_err());
    assert_eq!(
        parse_vgs(r#"{"report":[{"vg":[{"vg_name":"vg0"},{"vg_name":"data"}]}]}"#).unwrap(),
        vec!["vg0", "data"]
    );
}

#[test]
fn names() {
    assert_eq!(snapshot_lv_name("20261126T230102Z-3fa2"), "snapckpt-20261126T230102Z-3fa2");
    for id in
        ["20261126T230102Z-3fa2", "a_tmeta", "x_rimage_y", "a".repeat(64).as_str(), "-x", "a_b", "snap.1"]
    {
        let n = snapshot_lv_name(id);
        assert!(valid_lv_name(&n), "{id} -> {n}");
        assert!(n.len() <= crate::record::names::MAX_SNAPSHOT_LV, "{id} -> {n}");
        assert!(valid_lv_name(&format!("{n}-r999999")), "{id} -> {n}");
    }
    assert_ne!(snapshot_lv_name(&"a".repeat(64)), snapshot_lv_name(&"a".repeat(63)));
    assert_ne!(snapshot_lv_name("x_tmeta"), snapshot_lv_name("x-tmeta"));
    assert!(snapshot_lv_name("x_tmeta").starts_with("snapckpt-x-tmeta-"));
    for bad in ["", "-a", ".", "..", "a b", "a/b", "x_tmeta", "snapshot1", "pvmove0", &"a".repeat(128)] {
        assert!(!valid_lv_name(bad), "{bad:?}");
    }
    assert_eq!(tag_safe("2026-x.y_z"), "2026-x.y_z");
    assert_eq!(tag_safe("a b,c"), "a_b_c");
    assert_eq!(clone_number("snapckpt-X", "snapckpt-X-r12"), Some(12));
    for bad in [
        "snapckpt-X",
        "snapckpt-X-r",
        "snapckpt-X-r01",
        "snapckpt-X-rx",
        "snapckpt-X-r1-r2",
        "snapckpt-Y-r1",
        "snapckpt-X-r12345678",
    ] {
        assert_eq!(clone_number("snapckpt-X", bad), None, "{bad}");
    }
    assert_eq!(mount_options("xfs"), "nouuid");
    assert_eq!(mount_options("ext4"), "");
}

#[test]
fn mount_devs() {
    let t = b"35 27 253:4 / /mnt/t rw,relatime - xfs /dev/mapper/vg0-thin1 rw\n\
              36 27 253:5 / /mnt/c rw,relatime - xfs /dev/mapper/vg0-snapckpt--X--r1 rw,nouuid\n\
              bad\n";
    let all = crate::procfs::parse_mountinfo(t);
    let dev = |id| all.iter().find(|e| e.mnt_id == id).map(|e| e.dev);
    assert_eq!(dev(35), Some(sys::makedev(253, 4)));
    assert_eq!(dev(36), Some(sys::makedev(253, 5)));
    let m = mounts_of_devs(&all, &[sys::makedev(253, 5)]);
    assert_eq!(mount_points(&m), vec![PathBuf::from("/mnt/c")]);
}

#[test]
fn records_are_checked() {
    let snap = |vg: &str, lv: &str, uuid: &str, kind: &str, fstype: &str| Snapshot::Lvm {
        kind: if kind == "thin" { LvmKind::Thin } else { LvmKind::Classic },
        mount_point: "/m".into(),
        fstype: fstype.into(),
        vg: vg.into(),
        origin_lv: "thin1".into(),
        origin_uuid: "u".into(),
        snapshot_lv: lv.into(),
        snapshot_uuid: uuid.into(),
        created_unix: 1,
    };
    let r = Rec::from(&snap("vg0", "snapckpt-a1", "sX1uqc-Je1f", "thin", "xfs")).unwrap();
    assert!(r.thin);
    assert_eq!(r.full(), "vg0/snapckpt-a1");
    assert!(!Rec::from(&snap("vg0", "snapckpt-a1", "sX1uqc-Je1f", "classic", "ext4")).unwrap().thin);
    for (vg, lv, uuid, kind, fs) in [
        ("-vg", "snapckpt-a1", "u1", "thin", "xfs"),
        ("vg0", "other", "u1", "thin", "xfs"),
        ("vg0", "snapckpt-a/1", "u1", "thin", "xfs"),
        ("vg0", "snapckpt-a1", "", "thin", "xfs"),
        ("vg0", "snapckpt-a1", "u 1", "thin", "xfs"),
        ("vg0", "snapckpt-a1", "u1", "thin", "btrfs"),
    ] {
        assert!(Rec::from(&snap(vg, lv, uuid, kind, fs)).is_err(), "{vg} {lv} {uuid} {kind} {fs}");
    }
}
