//! Property-based tests of the parsers (proptest, stable Rust), beside the fuzz targets
//! (`fuzz/targets.rs`, which they drive too): generated inputs never panic, and valid ones
//! come back as they went in. The record and job files are what root reads from disk; the
//! /proc parsers read what tasks can shape (a comm, a path); the CRIU image is rewritten at
//! every restart.

use crate::criu_image::{self, Image, RegFile};
use crate::procfs::{self, MountEntry, ProcStat};
use proptest::prelude::*;
use serde_json::Value;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

#[path = "../fuzz/targets.rs"]
mod targets;

const SEEDS: [&str; 2] = [
    include_str!("../fuzz/seeds/checkpoint_json/criu-btrfs-snapshot.json"),
    include_str!("../fuzz/seeds/checkpoint_json/files-only-btrfs-snapshot.json"),
];

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

// ---- the checkpoint record ----

/// Every leaf of a JSON value, as a JSON pointer.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| leaves(x, format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")), out)),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| leaves(x, format!("{at}/{i}"), out)),
        _ => out.push(at),
    }
}

/// Values an edited record may hold where a leaf was.
fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just("/".to_string()),
            Just("/etc".to_string()),
            Just("..".to_string()),
            Just("lost+found/checkpoint/../x".to_string()),
            "[ -~]{0,24}",
            "\\PC{0,8}",
        ]
        .prop_map(Value::String),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes as a record, a job file, a template: an error, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in bytes(2048)) {
        targets::checkpoint_json(&data);
        targets::job_toml(&data);
        targets::template(&data);
        targets::template_roundtrip(&data);
    }

    /// A real record with leaves replaced by odd values: refused or accepted, never a panic;
    /// an accepted one keeps what validation promises and survives a round trip (both
    /// asserted by the fuzz target).
    #[test]
    fn edited_records_never_panic(seed in 0..SEEDS.len(), edits in proptest::collection::vec((any::<prop::sample::Index>(), json_leaf()), 0..6)) {
        let mut v: Value = serde_json::from_str(SEEDS[seed]).unwrap();
        for (at, leaf) in edits {
            let mut all = vec![];
            leaves(&v, String::new(), &mut all);
            if all.is_empty() { break; }
            if let Some(slot) = v.pointer_mut(&all[at.index(all.len())]) { *slot = leaf; }
        }
        targets::checkpoint_json(&serde_json::to_vec(&v).unwrap());
    }
}

/// The seeds are valid records, and round-trip (what the property above builds on).
#[test]
fn seed_records_are_valid_and_round_trip() {
    for s in SEEDS {
        let ck: crate::record::Checkpoint = serde_json::from_str(s).unwrap();
        ck.validate(std::path::Path::new("seed")).unwrap();
        let back: crate::record::Checkpoint =
            serde_json::from_slice(&serde_json::to_vec(&ck).unwrap()).unwrap();
        assert_eq!(back, ck);
    }
}

// ---- job files ----

/// A TOML value for a job key: numbers (0, negative, huge), strings (paths, odd ones), bools.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..5).prop_map(|n| n.to_string()),
        Just("99999999999999999999999".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        prop_oneof![
            Just("/srv/data"),
            Just(""),
            Just(".."),
            Just("a/../b"),
            Just(".snapckpt"),
            Just("snaps/a/b"),
            Just("btrfs"),
            Just("lvm"),
            Just("criu"),
            Just("none"),
            Just("1G"),
            Just("99999999999999999999999T"),
            Just("unlink-at-restart-%t-%n"),
            Just("%t/%n"),
            Just("1d"),
        ]
        .prop_map(|s| format!("{s:?}")),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
    ]
}

/// Sections and keys of a job file (some unknown).
const JOB_KEYS: &[(&str, &[&str])] = &[
    ("", &["name", "image_root", "bogus"]),
    ("[tasks]", &["pid", "tree", "cgroup"]),
    ("[freeze]", &["timeout_ms"]),
    ("[relink]", &["template"]),
    ("[snapshot]", &["keep_links", "timeout_s"]),
    ("[[filesystem]]", &["mount", "snapshot", "snapshot_dir", "lvm_size"]),
    ("[criu]", &["engine", "path", "leave_running", "leave_stopped", "dump_timeout_s", "shell_job"]),
    ("[retention]", &["keep_last", "keep_within"]),
    ("[hooks]", &["timeout_s", "dir", "pre-take"]),
];

fn job_text() -> impl Strategy<Value = String> {
    let line = (any::<prop::sample::Index>(), any::<prop::sample::Index>(), toml_value());
    proptest::collection::vec(proptest::collection::vec(line, 0..5), 0..6).prop_map(|sections| {
        let mut out = String::new();
        for (n, lines) in sections.into_iter().enumerate() {
            let (sec, keys) = JOB_KEYS[n % JOB_KEYS.len()];
            out.push_str(sec);
            out.push('\n');
            for (_, k, v) in lines {
                out.push_str(&format!("{} = {v}\n", keys[k.index(keys.len())]));
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Generated job files: an error naming the file, or a job that keeps `Job::check`'s
    /// promises (asserted by the fuzz target).
    #[test]
    fn generated_job_files_never_panic(text in job_text()) {
        targets::job_toml(text.as_bytes());
        if let Err(e) = crate::job::Job::parse(&text, std::path::Path::new("job.toml")) {
            prop_assert!(e.to_string().contains("job.toml"), "{}", e);
        }
    }
}

// ---- /proc ----

/// The kernel's escaping of a mountinfo path: space, tab, newline and backslash as `\ooo`.
fn escape(b: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    for &c in b {
        if matches!(c, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend_from_slice(format!("\\{c:03o}").as_bytes());
        } else {
            out.push(c);
        }
    }
    out
}

/// A path as the kernel may show one: `/` and any bytes but NUL.
fn path_bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(1u8..=255, 0..40).prop_map(|mut b| {
        b.insert(0, b'/');
        b
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary text to every /proc parser: no panic.
    #[test]
    fn proc_parsers_never_panic(data in bytes(512), s in "\\PC{0,200}") {
        let _ = procfs::parse_mountinfo(&data);
        let _ = procfs::unescape(&data);
        let text = String::from_utf8_lossy(&data);
        for t in [text.as_ref(), s.as_str()] {
            let _ = ProcStat::parse(t);
            let _ = procfs::parse_fdinfo(t);
            let _ = procfs::parse_maps_line(t);
            let _ = procfs::stat_flags(t);
            let _ = procfs::status_field(t, "State");
        }
    }

    /// A stat line with any comm (spaces, parentheses) parses back to its fields.
    #[test]
    fn stat_lines_round_trip(pid in 1..i32::MAX, comm in "[ -~]{0,16}", state in "[RSDTtZXI]", ppid in 0..i32::MAX, session in 0..i32::MAX) {
        let line = format!("{pid} ({comm}) {state} {ppid} {ppid} {session} 0 -1 4194560 100 0 0 0\n");
        let st = ProcStat::parse(&line).expect("parses");
        let want = ProcStat { pid, comm, state: state.chars().next().unwrap(), ppid, session };
        prop_assert_eq!(st, want);
    }

    /// A mountinfo line with any paths (escaped as the kernel does) parses back to them.
    #[test]
    fn mountinfo_lines_round_trip(id in any::<u32>(), parent in any::<u32>(), maj in 0u32..4096, min in 0u32..(1 << 20), root in path_bytes(), mp in path_bytes(), optional in 0usize..3, fstype in "[a-z0-9]{1,8}", source in "[a-z0-9/]{1,12}", opts in "[a-z0-9=,/]{0,20}") {
        let tags = ["shared:5", "master:1", "unbindable"][..optional].join(" ");
        let mut line = format!("{id} {parent} {maj}:{min} ").into_bytes();
        line.extend(escape(&root));
        line.push(b' ');
        line.extend(escape(&mp));
        line.extend(format!(" rw,relatime {tags}{}- {fstype} {source} {opts}", if optional > 0 { " " } else { "" }).into_bytes());
        let m = procfs::parse_mountinfo(&line);
        let want = MountEntry {
            mnt_id: id,
            parent_id: parent,
            dev: crate::sys::makedev(maj, min),
            root: PathBuf::from(std::ffi::OsString::from_vec(root)),
            mount_point: PathBuf::from(std::ffi::OsString::from_vec(mp)),
            fstype,
            source,
            super_options: opts,
            shared: (optional >= 1).then_some(5),
            master: (optional >= 2).then_some(1),
        };
        prop_assert_eq!(m, vec![want]);
    }

    /// A maps line (the path may hold spaces, also at its end) parses back to its fields.
    #[test]
    fn maps_lines_round_trip(start in any::<u64>(), end in any::<u64>(), perms in "[r-][w-][x-][ps]", pgoff in any::<u64>(), pad in 1usize..20, path in prop_oneof![Just(String::new()), "/[ -~]{0,30}", Just("[heap]".to_string())]) {
        let line = format!("{start:x}-{end:x} {perms} {pgoff:08x} 08:01 1234{}{path}", " ".repeat(pad));
        let m = procfs::parse_maps_line(&line).expect("parses");
        prop_assert_eq!((m.start, m.end, m.perms, m.pgoff, m.path), (start, end, perms, pgoff, path));
    }

    /// fdinfo's pos, octal flags and mnt_id come back, whatever other lines there are.
    #[test]
    fn fdinfo_round_trips(pos in any::<u64>(), flags in any::<u32>(), mnt_id in any::<u32>(), other in "[a-z_]{1,8}:\t[0-9a-f ]{0,12}") {
        let text = format!("pos:\t{pos}\nflags:\t0{flags:o}\n{other}\nmnt_id:\t{mnt_id}\nino:\t42\n");
        prop_assert_eq!(procfs::parse_fdinfo(&text), procfs::FdInfo { pos, flags, mnt_id });
    }
}

// ---- CRIU images ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary bytes as an image file, a protobuf message, a RegFileEntry to rewrite: an
    /// error or a result, never a panic; an image that parses writes back the same bytes.
    #[test]
    fn criu_images_never_panic(data in bytes(1024), name in bytes(64)) {
        if let Ok(img) = Image::parse(&data) {
            prop_assert_eq!(img.to_bytes(), data.clone());
        }
        let _ = criu_image::parse_fields(&data);
        let _ = RegFile::decode(&data);
        if let Ok(out) = criu_image::rewrite_reg_entry(&data, &name) {
            prop_assert!(criu_image::parse_fields(&out).is_ok());
        }
    }

    /// Varints and images round-trip.
    #[test]
    fn varints_and_images_round_trip(v in any::<u64>(), entries in proptest::collection::vec(bytes(64), 0..5), second in any::<u32>()) {
        let mut out = vec![];
        criu_image::put_varint(&mut out, v);
        let mut pos = 0;
        prop_assert_eq!(criu_image::get_varint(&out, &mut pos), Ok(v));
        prop_assert_eq!(pos, out.len());
        let img = Image { magic: vec![criu_image::IMG_COMMON_MAGIC, second], entries };
        prop_assert_eq!(Image::parse(&img.to_bytes()), Ok(img));
    }

    /// A rewritten RegFileEntry names the new path and keeps every other field.
    #[test]
    fn reg_entry_rewrite_keeps_the_rest(id in any::<u32>(), flags in any::<u32>(), pos in any::<u64>(), old in bytes(40), new in bytes(40), size in any::<u64>()) {
        let mut msg = vec![];
        for (n, v) in [(1u32, u64::from(id)), (2, u64::from(flags)), (3, pos)] {
            criu_image::put_varint(&mut msg, u64::from(n << 3));
            criu_image::put_varint(&mut msg, v);
        }
        criu_image::put_bytes_field(&mut msg, 6, &old);
        criu_image::put_varint(&mut msg, 8 << 3);
        criu_image::put_varint(&mut msg, size);
        let out = criu_image::rewrite_reg_entry(&msg, &new).expect("rewrites");
        let r = RegFile::decode(&out).expect("decodes");
        prop_assert_eq!((r.id, r.flags, r.pos, r.name.into_vec(), r.size), (id, flags, pos, new, Some(size)));
    }
}
