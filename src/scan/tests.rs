//! Unit tests of `scan`.

use super::*;

#[test]
fn stat_with_odd_comm() {
    let (c, p) = parse_stat("123 (a) b (deleted)) S 77 123 123 0").unwrap();
    assert_eq!(c, "a) b (deleted)");
    assert_eq!(p, 77);
    assert!(parse_stat("garbage").is_none());
}

#[test]
fn mountinfo() {
    let t = "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
             40 36 0:50 / /x rw - btrfs /dev/loop0 rw\n";
    let m = mount_refs(t);
    assert_eq!(m[&36].mount_point, "/mnt/with space");
    assert_eq!(m[&36].fs_root, "/mnt1");
    assert_eq!(m[&36].fstype, "ext3");
    assert_eq!(m[&40].dev, sys::makedev(0, 50));
}

#[test]
fn deleted_suffix_is_not_trusted() {
    // a file really named "x (deleted)" that still exists is not unlinked
    let d = std::env::temp_dir().join(format!("snapckpt-scan-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join("x (deleted)");
    std::fs::write(&p, b"hi").unwrap();
    let st = sys::stat(&p).unwrap();
    let root = sys::open("/", libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
    let text = p.to_str().unwrap().as_bytes();
    assert_eq!(classify(&root, text, &st, None), None);
    // the same inode after its name is gone, with a decoy at the stripped name
    let f = std::fs::File::open(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    std::fs::write(d.join("x"), b"decoy").unwrap();
    let st = sys::fstat(f.as_raw_fd()).unwrap();
    let text = format!("{} (deleted)", p.display());
    assert_eq!(classify(&root, text.as_bytes(), &st, Some(0)), Some(Unlinked::Orphan));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn holder_paths() {
    let h = Holder { pid: 5, what: Held::Map { start: 0x10, end: 0x20 } };
    assert_eq!(holder_proc_path(&h).unwrap(), PathBuf::from("/proc/5/map_files/10-20"));
    let h = Holder { pid: 5, what: Held::Fd(3) };
    assert_eq!(holder_proc_path(&h).unwrap(), PathBuf::from("/proc/5/fd/3"));
}
