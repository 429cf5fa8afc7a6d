//! Unit tests of `criu_image`.

use super::*;

fn varint_field(out: &mut Vec<u8>, n: u32, v: u64) {
    put_varint(out, u64::from(n) << 3);
    put_varint(out, v);
}

/// A RegFileEntry as CRIU writes it for an external file, plus unknown fields.
fn reg_entry(id: u32, name: &str, ext: bool, unknown: bool) -> Vec<u8> {
    let mut m = Vec::new();
    varint_field(&mut m, 1, u64::from(id));
    varint_field(&mut m, 2, 0o2100002); // O_RDWR|O_LARGEFILE|O_CLOEXEC style flags
    varint_field(&mut m, 3, 1_048_580);
    let mut fown = Vec::new();
    varint_field(&mut fown, 1, 0);
    varint_field(&mut fown, 2, 0);
    put_bytes_field(&mut m, 5, &fown);
    put_bytes_field(&mut m, 6, name.as_bytes());
    if !ext {
        varint_field(&mut m, 7, 2 * 43); // zigzag(43)
    }
    varint_field(&mut m, 8, 1_048_580);
    if ext {
        varint_field(&mut m, 9, 1);
    }
    varint_field(&mut m, 10, 0o100600);
    if unknown {
        varint_field(&mut m, 99, 7);
        put_varint(&mut m, (100 << 3) | 5);
        m.extend_from_slice(&[1, 2, 3, 4]);
        put_varint(&mut m, (101 << 3) | 1);
        m.extend_from_slice(&[8, 7, 6, 5, 4, 3, 2, 1]);
    }
    m
}

fn file_entry(id: u32, ty: u64, reg: Option<&[u8]>) -> Vec<u8> {
    let mut m = Vec::new();
    varint_field(&mut m, 1, ty);
    varint_field(&mut m, 2, u64::from(id));
    if let Some(r) = reg {
        put_bytes_field(&mut m, 3, r);
    }
    m
}

fn files_img(entries: Vec<Vec<u8>>) -> Vec<u8> {
    Image { magic: vec![IMG_COMMON_MAGIC, FILES_MAGIC], entries }.to_bytes()
}

fn sample() -> Vec<u8> {
    let mut pipe = Vec::new();
    varint_field(&mut pipe, 1, 5);
    let mut pipe_fe = file_entry(2, 2, None);
    put_bytes_field(&mut pipe_fe, 18, &pipe);
    files_img(vec![
        pipe_fe,
        file_entry(3, 1, Some(&reg_entry(3, "/var/log/x", false, false))),
        file_entry(4, 1, Some(&reg_entry(4, "file[2b:104]", true, true))),
        file_entry(5, 1, Some(&reg_entry(5, "file[2b:104]", true, false))),
        file_entry(6, 1, Some(&reg_entry(6, "file[2b:1ff]", true, false))),
    ])
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "criu-image-test-{}-{tag}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn varints() {
    for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
        let mut b = Vec::new();
        put_varint(&mut b, v);
        let mut pos = 0;
        assert_eq!(get_varint(&b, &mut pos).unwrap(), v);
        assert_eq!(pos, b.len());
    }
    assert!(get_varint(&[0x80, 0x80], &mut 0).is_err());
    assert!(get_varint(&[0xff; 10], &mut 0).is_err());
    assert!(get_varint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], &mut 0).is_err());
}

#[test]
fn image_round_trip_is_identity() {
    let bytes = sample();
    let img = Image::parse(&bytes).unwrap();
    assert_eq!(img.entries.len(), 5);
    assert_eq!(img.to_bytes(), bytes);
    let (out, rep) = rewrite_image(Path::new("files.img"), Layout::Files, &bytes, &HashMap::new()).unwrap();
    assert_eq!(out, bytes);
    assert!(rep.rewritten.is_empty());
    assert_eq!(rep.untouched_externals.len(), 3);
}

#[test]
fn decode_reg_entry() {
    let r = RegFile::decode(&reg_entry(3, "/var/log/x", false, true)).unwrap();
    assert_eq!(r.id, 3);
    assert_eq!(r.flags, 0o2100002);
    assert_eq!(r.pos, 1_048_580);
    assert_eq!(r.name, OsString::from("/var/log/x"));
    assert_eq!(r.mnt_id, Some(43));
    assert_eq!(r.size, Some(1_048_580));
    assert!(!r.ext);
    assert_eq!(r.mode, Some(0o100600));
    let mut neg = Vec::new();
    varint_field(&mut neg, 7, 1); // zigzag(-1)
    let mut m = reg_entry(1, "/", false, false);
    m.extend_from_slice(&neg);
    assert_eq!(RegFile::decode(&m).unwrap().mnt_id, Some(-1));
}

#[test]
fn rewrite_keeps_everything_but_name_and_ext() {
    let orig = reg_entry(4, "file[2b:104]", true, true);
    let new = rewrite_reg_entry(&orig, b"/srv/data/db (1)").unwrap();
    let r = RegFile::decode(&new).unwrap();
    assert_eq!(r.name, OsString::from("/srv/data/db (1)"));
    assert!(!r.ext);
    let a: Vec<_> =
        parse_fields(&orig).unwrap().into_iter().filter(|f| f.number != 6 && f.number != 9).collect();
    let b: Vec<_> = parse_fields(&new).unwrap().into_iter().filter(|f| f.number != 6).collect();
    assert_eq!(a, b, "other fields, unknown ones included, byte for byte and in order");
}

#[test]
fn rewrite_image_entries() {
    let bytes = sample();
    let map: HashMap<String, PathBuf> = [
        ("file[2b:104]".to_string(), PathBuf::from("/mnt/a/tmpXYZ")),
        ("file[2b:999]".to_string(), PathBuf::from("/nowhere")),
    ]
    .into();
    let (out, rep) = rewrite_image(Path::new("files.img"), Layout::Files, &bytes, &map).unwrap();
    assert_eq!(rep.rewritten.len(), 2);
    assert_eq!(rep.unused_keys, vec!["file[2b:999]".to_string()]);
    assert_eq!(rep.untouched_externals, vec![(6, "file[2b:1ff]".to_string())]);
    let a = Image::parse(&bytes).unwrap();
    let b = Image::parse(&out).unwrap();
    assert_eq!(a.magic, b.magic);
    for i in [0, 1, 4] {
        assert_eq!(a.entries[i], b.entries[i], "entry {i} untouched");
    }
    for i in [2, 3] {
        let reg = reg_of(Layout::Files, &b.entries[i]).unwrap().unwrap();
        let r = RegFile::decode(reg).unwrap();
        assert_eq!(r.name, OsString::from("/mnt/a/tmpXYZ"));
        assert!(!r.ext);
        let fa = parse_fields(&a.entries[i]).unwrap();
        let fb = parse_fields(&b.entries[i]).unwrap();
        assert_eq!(fa[..2], fb[..2], "FileEntry type and id kept");
    }
}

#[test]
fn malformed_input_is_an_error() {
    let p = Path::new("files.img");
    let m = HashMap::new();
    assert!(Image::parse(&[1, 2]).is_err());
    assert!(Image::parse(&IMG_COMMON_MAGIC.to_ne_bytes()).is_err());
    let mut b = files_img(vec![]);
    b.extend_from_slice(&100u32.to_ne_bytes());
    b.extend_from_slice(&[0; 10]);
    assert!(Image::parse(&b).is_err(), "entry past the end");
    assert!(matches!(
        rewrite_image(p, Layout::Files, &files_img(vec![vec![0x0b]]), &m),
        Err(ImageError::Malformed { .. })
    ));
    let mut wrong = Image::parse(&sample()).unwrap();
    wrong.magic[1] = REG_FILES_MAGIC;
    assert!(matches!(
        rewrite_image(p, Layout::Files, &wrong.to_bytes(), &m),
        Err(ImageError::Malformed { .. })
    ));
    assert!(parse_fields(&[0x00, 0x01]).is_err(), "field 0");
    assert!(parse_fields(&[0x0a, 0x05, 0x01]).is_err(), "short bytes");
    assert!(parse_fields(&[0x0d, 0x01]).is_err(), "short fixed32");
    let mut twice = file_entry(1, 1, Some(&reg_entry(1, "/a", false, false)));
    put_bytes_field(&mut twice, 3, &reg_entry(1, "/b", false, false));
    assert!(reg_of(Layout::Files, &twice).is_err(), "two reg fields");
    assert!(RegFile::decode(&[0x08, 0x01]).is_err(), "no flags");
    // Every truncation and a scramble of a valid image: errors or values, never a panic.
    let good = sample();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for cut in 0..good.len() {
        let _ = rewrite_image(p, Layout::Files, &good[..cut], &m);
        let mut s = good.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % s.len();
            s[i] = (seed >> 32) as u8;
        }
        let _ = rewrite_image(p, Layout::Files, &s, &m);
        let _ = rewrite_image(p, Layout::RegFiles, &s, &m);
    }
}

#[test]
fn bad_targets_are_refused() {
    let d = TempDir::new("bad");
    fs::write(d.0.join(FILES_IMG), sample()).unwrap();
    for bad in ["relative/x", "/a\0b"] {
        let map: HashMap<String, PathBuf> =
            [("file[2b:104]".to_string(), PathBuf::from(OsString::from_vec(bad.as_bytes().to_vec())))].into();
        assert!(matches!(rewrite_externals(&d.0, &d.0.join("out"), &map), Err(ImageError::Invalid { .. })));
    }
    assert!(!d.0.join("out").exists());
}

#[test]
fn restore_copy_of_a_directory() {
    let d = TempDir::new("dir");
    let src = d.0.join("img");
    fs::create_dir(&src).unwrap();
    fs::write(src.join(FILES_IMG), sample()).unwrap();
    fs::write(src.join("pages-1.img"), b"pages").unwrap();
    fs::write(src.join("dump.log"), b"log").unwrap();
    std::os::unix::fs::symlink("../prev", src.join("parent")).unwrap();

    // Nothing mapped: files.img byte-identical.
    let same = d.0.join("same");
    let rep = rewrite_externals(&src, &same, &HashMap::new()).unwrap();
    assert!(rep.rewritten.is_empty());
    assert_eq!(fs::read(same.join(FILES_IMG)).unwrap(), sample());

    let dst = d.0.join("restore");
    let map: HashMap<String, PathBuf> = [("file[2b:1ff]".to_string(), PathBuf::from("/x/y"))].into();
    let rep = rewrite_externals(&src, &dst, &map).unwrap();
    assert_eq!(rep.rewritten, vec![(6, "file[2b:1ff]".to_string(), PathBuf::from("/x/y"))]);
    let regs = list_reg_files(&dst).unwrap();
    assert_eq!(regs.iter().find(|r| r.id == 6).unwrap().name, OsString::from("/x/y"));
    assert_eq!(list_externals(&dst).unwrap().len(), 2);
    assert_eq!(list_externals(&src).unwrap().len(), 3, "source untouched");
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&src.join("pages-1.img")), ino(&dst.join("pages-1.img")), "images hard-linked");
    assert_ne!(ino(&src.join("dump.log")), ino(&dst.join("dump.log")), "logs copied");
    assert_eq!(fs::read_link(dst.join("parent")).unwrap(), src.join("../prev"));
    let names: Vec<_> = fs::read_dir(&d.0).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.iter().all(|n| !n.to_string_lossy().contains("partial")), "{names:?}");

    assert!(matches!(rewrite_externals(&src, &dst, &map), Err(ImageError::Invalid { .. })), "dst exists");
    assert!(matches!(
        rewrite_externals(&d.0.join("none"), &d.0.join("o2"), &map),
        Err(ImageError::Invalid { .. })
    ));
}

#[test]
fn old_reg_files_layout() {
    let d = TempDir::new("old");
    let src = d.0.join("img");
    fs::create_dir(&src).unwrap();
    let img = Image {
        magic: vec![IMG_COMMON_MAGIC, REG_FILES_MAGIC],
        entries: vec![reg_entry(1, "file[2b:104]", true, false), reg_entry(2, "/etc/x", false, false)],
    };
    fs::write(src.join(REG_FILES_IMG), img.to_bytes()).unwrap();
    let map: HashMap<String, PathBuf> = [("file[2b:104]".to_string(), PathBuf::from("/a"))].into();
    let dst = d.0.join("out");
    rewrite_externals(&src, &dst, &map).unwrap();
    let regs = list_reg_files(&dst).unwrap();
    assert_eq!(regs[0].name, OsString::from("/a"));
    assert!(!regs[0].ext);
    assert_eq!(regs[1].name, OsString::from("/etc/x"));
}

/// A pre-dumped image: the restore copy reaches each round (`pre-N`) through an absolute link
/// to the original, so the whole parent chain resolves from the copy; any other directory is
/// refused.
#[test]
fn restore_copy_of_a_pre_dumped_image() {
    let d = TempDir::new("predump");
    let src = d.0.join("img");
    fs::create_dir(&src).unwrap();
    fs::write(src.join(FILES_IMG), sample()).unwrap();
    for n in 1..=2 {
        let r = src.join(format!("pre-{n}"));
        fs::create_dir(&r).unwrap();
        fs::write(r.join("pages-1.img"), format!("round {n}")).unwrap();
    }
    std::os::unix::fs::symlink("../pre-1", src.join("pre-2/parent")).unwrap();
    std::os::unix::fs::symlink("pre-2", src.join("parent")).unwrap();
    let dst = d.0.join("restore");
    rewrite_externals(&src, &dst, &HashMap::new()).unwrap();
    assert_eq!(fs::read_link(dst.join("pre-1")).unwrap(), src.join("pre-1"));
    assert_eq!(fs::read(dst.join("parent/pages-1.img")).unwrap(), b"round 2");
    assert_eq!(fs::read(dst.join("parent/parent/pages-1.img")).unwrap(), b"round 1");
    assert_eq!(fs::read(dst.join("pre-2/parent/pages-1.img")).unwrap(), b"round 1");

    fs::create_dir(src.join("other")).unwrap();
    let e = rewrite_externals(&src, &d.0.join("r2"), &HashMap::new()).unwrap_err();
    assert!(e.to_string().contains("pre-dump round"), "{e}");
    assert!(!d.0.join("r2").exists());
}
