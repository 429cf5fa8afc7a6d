//! Write-back before the freeze: a take of a task that has just written a large orphan
//! (dense, still dirty in the page cache) flushes it while the task still runs, so that the
//! frozen stages (reflink, snapshot) find it clean. Shown with a hook at `take-frozen`: the
//! orphan's dirty pages (`cachestat`) are already gone when the tasks are frozen. No timing
//! assertion here: the frozen window's size is measured in bench/.

use crate::common::*;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

/// The task's fd on its dense orphan (`dense-N (deleted)`), opened by us.
fn open_orphan(pid: i32) -> OwnedFd {
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let t = target.to_string_lossy();
        if t.contains("/dense-") && t.ends_with(" (deleted)") {
            return std::fs::File::open(e.path()).unwrap().into();
        }
    }
    panic!("no dense orphan in /proc/{pid}/fd");
}

#[test]
fn dirty_orphan_is_written_back_before_the_freeze() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "2G");
    let work = Scratch::new("writeback");
    let dir = fs.path("data");
    std::fs::create_dir_all(&dir).unwrap();
    let images = work.path().join("images");
    let log = work.path().join("ufiles.log");
    let p = Proc::start_setsid(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "dense:268435456"], &log);
    let orphan = open_orphan(p.pid);
    let Ok(dirty) = snapckpt::writeback::file_dirty(&orphan) else {
        eprintln!("no cachestat(2) on this kernel: nothing to show");
        drop(p);
        return;
    };
    // Just written, no sync: most of it is still dirty (unless something synced meanwhile).
    let hooks = Hooks::new(work.path().join("hooks"), &["take-frozen"]);
    let pid = p.pid.to_string();
    let args = [
        "take",
        "--pid",
        &pid,
        "--engine",
        "none",
        "--snapshot",
        "btrfs",
        "--image-root",
        images.to_str().unwrap(),
    ];
    let child = hooks.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    hooks.wait_reached("take-frozen", "take frozen");
    // Frozen: the write-back has run; the orphan is clean (the task writes nothing more).
    let dirty_when_frozen = snapckpt::writeback::file_dirty(&orphan).unwrap();
    hooks.release("take-frozen");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "take failed\nstdout: {stdout}\nstderr: {stderr}");
    assert_eq!(dirty_when_frozen, 0, "dirty before the take {dirty}, when frozen {dirty_when_frozen}");
    let ck = images.join(take_id(&stdout));
    let t = &record(&ck)["timings"];
    assert!(t["writeback_rounds"].as_u64().unwrap() >= 1, "{t}");
    // The dirty amount is that of the files the task holds (cachestat).
    assert_eq!(t["writeback_measure"], "cachestat", "{t}");
    if dirty > 0 {
        assert!(t["writeback_bytes"].as_u64().unwrap() >= dirty / 2, "dirty {dirty}: {t}");
    }
    assert!(stdout.contains("written back before the freeze"), "{stdout}");
    drop(orphan);
    drop(p);
    snapckpt_ok(&["delete", ck.to_str().unwrap(), "--force"]);
}

/// `--pre-dump` is refused before anything is frozen, naming the reason: on a kernel without
/// soft-dirty tracking, that it cannot track memory changes.
#[test]
fn pre_dump_is_refused_clearly() {
    let _g = serial();
    let work = Scratch::new("predump");
    let images = work.path().join("images");
    let log = work.path().join("ufiles.log");
    let p =
        Proc::start_setsid(&prog("ufiles"), &["setup", work.path().to_str().unwrap(), "orphan:4096"], &log);
    let (ok, out, err) = take(p.pid, &images, &["--engine", "criu", "--pre-dump"]);
    assert!(!ok, "{out}");
    assert!(err.contains("--pre-dump"), "{err}");
    let tracked = std::process::Command::new(criu_bin())
        .args(["check", "--feature", "mem_dirty_track"])
        .output()
        .unwrap()
        .status
        .success();
    if !tracked {
        assert!(
            err.contains("cannot track memory changes") && err.contains("CONFIG_MEM_SOFT_DIRTY"),
            "{err}"
        );
    }
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(!stopped(p.pid) && alive(p.pid));
    assert!(std::fs::read_dir(&images).map(|d| d.count() == 0).unwrap_or(true), "image dir left behind");
    drop(p);
}

/// CRIU's own statistics: `take --json` records its `stats-dump` in `timings.criu`, `take
/// --print-stats` and `restart --print-stats` print them with podman's names.
#[test]
fn criu_statistics_are_reported() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "1G");
    let work = Scratch::new("criustats");
    let dir = fs.path("data");
    std::fs::create_dir_all(&dir).unwrap();
    let images = work.path().join("images");
    let log = work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:65536"], &log);
    let out = take_ok(p.pid, &images, &["--engine", "criu", "--snapshot", "btrfs", "--print-stats"]);
    p.child.wait().unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let c = &v["criu_statistics"];
    for k in
        ["freezing_time", "frozen_time", "memdump_time", "memwrite_time", "pages_scanned", "pages_written"]
    {
        assert!(c[k].is_u64(), "{k} in {v}");
    }
    assert!(c["frozen_time"].as_u64().unwrap() > 0 && c["pages_written"].as_u64().unwrap() > 0, "{v}");
    assert!(v["frozen_time"].as_u64().unwrap() > 0 && v["writeback_rounds"].as_u64().unwrap() >= 1, "{v}");
    let ids: Vec<_> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let [id] = ids.as_slice() else { panic!("{ids:?}") };
    let rec = record(&images.join(id));
    assert_eq!(rec["timings"]["criu"]["frozen_time"], c["frozen_time"], "{rec}");
    // At the original path in a private namespace (the default): a `--mount-root` clone is a
    // host mount, which a private namespace alive elsewhere receives by propagation and then
    // holds (see the delete below).
    let out = snapckpt_ok(&[
        "restart",
        id,
        "--snapshot",
        "--image-root",
        images.to_str().unwrap(),
        "--print-stats",
    ]);
    let json = &out[out.find('{').unwrap_or_else(|| panic!("no JSON in {out}"))..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["criu_statistics"]["restore_time"].is_u64(), "{v}");
    assert!(v["restart_duration"].as_u64().unwrap() > 0, "{v}");
    kill_wait(p.pid);
    // Seen once under a parallel run: a process named snapckpt still in the restart's private
    // namespace for a moment after restart returned (delete rightly refuses then). Say who it
    // was, and give it a moment, rather than fail the statistics test on it.
    let mut first = None;
    let deleted = eventually(Duration::from_secs(10), || {
        let (ok, _, err) = snapckpt(&["delete", id, "--force", "--image-root", images.to_str().unwrap()]);
        if !ok && first.is_none() {
            first =
                Some(format!("{err}\n{}", sh("ps -eo pid,ppid,stat,comm,args | grep -i snapckpt || true")));
        }
        ok
    });
    if let Some(e) = &first {
        eprintln!("delete refused at first: {e}");
    }
    assert!(deleted, "{first:?}");
}
