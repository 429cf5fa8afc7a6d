//! The fuzz targets, plain Rust: each takes arbitrary bytes and panics only on a real bug.
//! Used by the cargo-fuzz binaries (fuzz_targets/*.rs) and, through `#[path]`, by the
//! deterministic smoke test in integration/tests/failures.rs.
#![allow(dead_code)]

use snapckpt::job::Job;
use snapckpt::record::Checkpoint;
use snapckpt::relink::Template;
use std::path::Path;

/// A checkpoint record (`checkpoint.json`), as `image::load` reads it: parsing and validation
/// give an error or a record; a valid record survives a round trip unchanged, and what
/// `restart`/`delete` derive from it stays inside lost+found/checkpoint.
pub fn checkpoint_json(data: &[u8]) {
    let Ok(ck) = serde_json::from_slice::<Checkpoint>(data) else { return };
    match ck.validate(Path::new("fuzz/checkpoint.json")) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(()) => {
            for (o, r) in ck.relinked() {
                assert!(
                    !r.name.is_empty() && !r.name.contains('/') && r.name != "." && r.name != "..",
                    "validated name {:?}",
                    r.name
                );
                assert_eq!(r.rel_path, format!("{}/{}", snapckpt::relink::CHECKPOINT_DIR, r.name));
                assert!(o.mount.mount_point.starts_with('/'));
            }
            for t in &ck.tasks {
                for f in &t.fds {
                    assert!(f.fd >= 0);
                    assert!(f.object.map_or(true, |i| i < ck.objects.len()));
                }
                for m in &t.maps {
                    assert!(m.object.map_or(true, |i| i < ck.objects.len()));
                }
            }
            for s in &ck.snapshots {
                let _ = s.describe();
                assert!(s.mount_point().starts_with('/'));
            }
            assert!(snapckpt::record::names::valid_id(&ck.id));
            let again = serde_json::to_vec(&ck).expect("a record serializes");
            let back: Checkpoint = serde_json::from_slice(&again).expect("a serialized record parses");
            assert_eq!(back, ck, "round trip changed the record");
        }
    }
}

/// A TOML job file: an error, or a job that keeps the promises of `Job::check`.
pub fn job_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Job::parse(text, Path::new("job.toml")) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(j) => {
            assert!(!(j.tasks.pid.is_some() && j.tasks.cgroup.is_some()));
            assert!(j.tasks.pid.map_or(true, |p| p > 0));
            assert!(j.tasks.cgroup.as_ref().map_or(true, |c| c.is_absolute()));
            if let Some(t) = &j.relink.template {
                Template::parse(t).expect("a job's template parses");
            }
            for f in &j.filesystem {
                assert!(f.mount.is_absolute());
                if let Some(d) = &f.snapshot_dir {
                    assert!(
                        !d.starts_with('/') && !d.split('/').any(|c| c == ".." || c == "." || c.is_empty()),
                        "{d:?}"
                    );
                }
            }
            assert_ne!(j.freeze.timeout_ms, Some(0));
            assert_ne!(j.snapshot.timeout_s, Some(0));
        }
    }
}

/// Checkpoint ids as `image::new_id` makes them.
const IDS: &[&str] = &["20261127T002101Z-3213", "19700101T000000Z-0000", "20991231T235959Z-ffff"];

/// A name template (first line) and a name to match (second line): a template that parses
/// renders plain file names; matching anything never panics and gives only valid ids.
pub fn template(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let (t, probe) = s.split_once('\n').unwrap_or((&s, ""));
    let Ok(tpl) = Template::parse(t) else { return };
    for id in IDS {
        for n in [1u64, 9, 10, 17, 4242, u64::MAX] {
            let name = tpl.render(id, n);
            assert!(
                !name.is_empty()
                    && !name.contains('/')
                    && !name.contains('\0')
                    && name != "."
                    && name != "..",
                "template {t:?} renders {name:?}"
            );
            assert!(!name.starts_with('.'), "template {t:?} renders a hidden name {name:?}");
            if let Some(id) = tpl.match_id(&name) {
                assert!(snapckpt::record::names::valid_id(&id), "{id:?}");
            }
        }
    }
    if let Some(id) = tpl.match_id(probe) {
        assert!(snapckpt::record::names::valid_id(&id), "{id:?}");
    }
}

/// `match_id` never attributes a name that a template renders for one checkpoint to another
/// checkpoint (it may find no id in an ambiguous name): `gc` removes the names whose id has no
/// image, so a wrong id would cost a live checkpoint its files.
pub fn template_roundtrip(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let t = s.split_once('\n').map_or(&*s, |x| x.0);
    let Ok(tpl) = Template::parse(t) else { return };
    for id in IDS {
        for n in [1u64, 9, 10, 17, 4242, u64::MAX] {
            let name = tpl.render(id, n);
            if let Some(got) = tpl.match_id(&name) {
                assert_eq!(
                    got, *id,
                    "template {t:?}: name {name:?} of checkpoint {id} is taken for checkpoint {got}"
                );
            }
        }
    }
}
