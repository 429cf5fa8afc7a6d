//! The core pipeline without snapshots or CRIU: scan, relink, image, restart --exec, gc, and
//! every refusal, on real btrfs, xfs, ext4 and tmpfs with real processes. Run as root.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Every scenario, files-only take and restart --exec, on one filesystem type.
fn every_kind_roundtrip(fstype: &str) {
    let _g = serial();
    let fs = LoopFs::new(fstype, if fstype == "xfs" { "1G" } else { "512M" });
    let work = Scratch::new("core");
    let dir = fs.path("data");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("ufiles.log");
    let p = Proc::start(
        &prog("ufiles"),
        &[
            "setup",
            dir.to_str().unwrap(),
            "ab",
            "orphan:10485760",
            "twofds",
            "tmpfile",
            "fifo",
            "odd",
            "mmap",
            "cwd",
        ],
        &log,
    );
    let before = fd_lines(&first_report(&log));

    let images = work.path().join("images");
    let (id, imgdir) = take_files_only(p.pid, &images, &[]);
    wait_for(|| state(p.pid) == Some('S'), Duration::from_secs(5), "asleep (thawed, not stopped)");
    let rec = record(&imgdir);
    let objs = rec["objects"].as_array().unwrap();
    let classes: Vec<(&str, &str)> =
        objs.iter().map(|o| (o["original_path"].as_str().unwrap(), o["class"].as_str().unwrap())).collect();
    let class_of = |suffix: &str| classes.iter().find(|(p, _)| p.ends_with(suffix)).map(|x| x.1);
    assert_eq!(class_of("/a"), Some("name-gone"), "{classes:?}");
    assert_eq!(class_of("/orphan-10485760"), Some("orphan"));
    assert_eq!(class_of("/two"), Some("orphan"));
    assert_eq!(class_of("/fifo"), Some("removed-node"));
    assert_eq!(class_of("/x (deleted)"), Some("orphan"));
    assert_eq!(class_of("/new\nline name"), Some("orphan"));
    assert_eq!(class_of("/gone-dir"), Some("removed-dir"));
    assert_eq!(class_of("/mapped"), Some("orphan"));
    assert!(classes.iter().any(|(_, c)| *c == "tmpfile"), "{classes:?}");
    assert!(
        class_of("/kept (deleted)").is_none(),
        "a linked file named '... (deleted)' is not unlinked: {classes:?}"
    );
    // two fds of one inode share one object
    let two = objs.iter().find(|o| o["original_path"].as_str().unwrap().ends_with("/two")).unwrap();
    assert_eq!(two["holders"].as_array().unwrap().len(), 2);
    let methods: Vec<&str> = objs.iter().map(|o| o["relinked"]["method"].as_str().unwrap()).collect();
    let method_of = |suffix: &str| {
        objs.iter().find(|o| o["original_path"].as_str().unwrap().ends_with(suffix)).unwrap()["relinked"]
            ["method"]
            .as_str()
            .unwrap()
    };
    assert_eq!(method_of("/a"), "link");
    assert_eq!(method_of("/gone-dir"), "recreate");
    assert_eq!(method_of("/fifo"), "recreate");
    let orphan_method = method_of("/orphan-10485760");
    match fstype {
        "btrfs" | "xfs" => assert_eq!(orphan_method, "clone", "{methods:?}"),
        _ => assert!(orphan_method == "copy-range" || orphan_method == "sparse-copy", "{methods:?}"),
    }
    let tmpfile_method =
        objs.iter().find(|o| o["class"] == "tmpfile").unwrap()["relinked"]["method"].as_str().unwrap();
    assert_eq!(tmpfile_method, "link", "an O_TMPFILE file is linked, not copied");
    // names carry the checkpoint id; dir is root-owned 0700
    let names = checkpoint_names(&fs.mnt);
    assert_eq!(names.len(), objs.len());
    assert!(names.iter().all(|n| n.starts_with(&format!("unlink-at-restart-{id}-"))), "{names:?}");
    let md = std::fs::metadata(fs.path("lost+found/checkpoint")).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!((md.uid(), md.permissions().mode() & 0o7777), (0, 0o700));

    // The task dies; restart hands the files to a new process at the recorded fds.
    drop(p);
    let (ok, out, err) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        images.to_str().unwrap(),
        "--exec",
        prog("ufiles").to_str().unwrap(),
        "report",
    ]);
    assert!(ok, "restart failed: {out}\n{err}");
    let after = fd_lines(&out);
    let fd_objects: Vec<i64> = rec["tasks"][0]["fds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["object"].is_null())
        .map(|f| f["fd"].as_i64().unwrap())
        .collect();
    assert_eq!(after.keys().map(|k| *k as i64).collect::<Vec<_>>(), fd_objects, "restored fds: {out}");
    for (fd, line) in &after {
        assert_eq!(line, &before[fd], "fd {fd} differs after restart");
    }
    // the relinked names are gone again; the inode of "a" is back to one link ("b")
    assert!(checkpoint_names(&fs.mnt).is_empty(), "{:?}", checkpoint_names(&fs.mnt));
    assert_eq!(std::fs::metadata(dir.join("b")).unwrap().nlink(), 1);
    // without a snapshot that was the only restart: a second one says so
    let (ok, _, err) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        images.to_str().unwrap(),
        "--exec",
        prog("ufiles").to_str().unwrap(),
        "report",
    ]);
    assert!(!ok && err.contains("cannot be restarted again"), "{err}");
}

#[test]
fn every_kind_btrfs() {
    every_kind_roundtrip("btrfs");
}
#[test]
fn every_kind_xfs() {
    every_kind_roundtrip("xfs");
}
#[test]
fn every_kind_ext4() {
    every_kind_roundtrip("ext4");
}
#[test]
fn every_kind_tmpfs() {
    every_kind_roundtrip("tmpfs");
}

/// `a_fd = open(a); link(a, b); unlink(a); creat(a)`: after restart a write through the
/// restored fd reaches "b", and "a" is still the new file.
#[test]
fn ab_write_reaches_b() {
    let _g = serial();
    for fstype in ["ext4", "btrfs"] {
        let fs = LoopFs::new(fstype, "512M");
        let work = Scratch::new("ab");
        let dir = fs.path("d");
        std::fs::create_dir_all(&dir).unwrap();
        let log = work.path().join("log");
        let p = Proc::start(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "ab"], &log);
        let images = work.path().join("images");
        let (id, _) = take_files_only(p.pid, &images, &[]);
        drop(p);
        snapckpt_ok(&[
            "restart",
            &id,
            "--image-root",
            images.to_str().unwrap(),
            "--exec",
            prog("ufiles").to_str().unwrap(),
            "write",
            "3",
            "XY",
        ]);
        assert_eq!(std::fs::read_to_string(dir.join("b")).unwrap(), "helXY", "{fstype}");
        assert_eq!(std::fs::read_to_string(dir.join("a")).unwrap(), "new", "{fstype}");
    }
}

fn used_bytes(p: &Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    (s.blocks() - s.blocks_free()) * s.fragment_size()
}

/// A 1 GiB orphan with holes: same bytes, holes and offset after restart; on btrfs and xfs
/// the take allocates no new data blocks (reflink), on ext4 the copy keeps the holes.
#[test]
fn orphan_1g_sparse() {
    let _g = serial();
    for fstype in ["btrfs", "xfs", "ext4"] {
        let fs = LoopFs::new(fstype, "3G");
        let work = Scratch::new("big");
        let dir = fs.path("d");
        std::fs::create_dir_all(&dir).unwrap();
        let log = work.path().join("log");
        let p = Proc::start(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:1073741824"], &log);
        let before = fd_lines(&first_report(&log));
        sh("sync");
        let used0 = used_bytes(&fs.mnt);
        let images = work.path().join("images");
        let (id, imgdir) = take_files_only(p.pid, &images, &[]);
        sh("sync");
        let used1 = used_bytes(&fs.mnt);
        let rec = record(&imgdir);
        let o = &rec["objects"][0];
        assert_eq!(o["size"].as_u64(), Some(1 << 30));
        let name = o["relinked"]["name"].as_str().unwrap();
        let copy = fs.path(&format!("lost+found/checkpoint/{name}"));
        use std::os::unix::fs::MetadataExt;
        let md = std::fs::metadata(&copy).unwrap();
        assert_eq!(md.len(), 1 << 30);
        assert!(md.blocks() * 512 < 8 << 20, "{fstype}: holes kept: {} bytes allocated", md.blocks() * 512);
        let grew = used1.saturating_sub(used0);
        if fstype != "ext4" {
            assert_eq!(o["relinked"]["method"], "clone");
            assert!(grew < 4 << 20, "{fstype}: take allocated {grew} bytes");
        }
        drop(p);
        let out = snapckpt_ok(&[
            "restart",
            &id,
            "--image-root",
            images.to_str().unwrap(),
            "--exec",
            prog("ufiles").to_str().unwrap(),
            "report",
        ]);
        let after = fd_lines(&out);
        assert_eq!(after.len(), 1);
        for (fd, line) in &after {
            assert_eq!(line, &before[fd], "{fstype}");
        }
    }
}

fn expect_take_refused(pid: i32, images: &Path, extra: &[&str], what: &str) {
    let mut args = vec!["--engine", "none"];
    args.extend_from_slice(extra);
    let (ok, out, err) = take(pid, images, &args);
    assert!(!ok, "take should fail ({what}): {out}");
    assert!(err.contains(what), "expected {what:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // thawed, no image, no partial image
    std::thread::sleep(Duration::from_millis(50));
    assert_ne!(state(pid), Some('T'), "task left stopped");
    let left: Vec<_> =
        std::fs::read_dir(images).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "image root not empty after a failed take: {left:?}");
}

/// `restart --exec` gives back an fd above the caller's fd limit (raising it), an O_PATH fd as
/// O_PATH (no more access than the task had), and when the command cannot be started it
/// changes nothing: the checkpoint stays restartable.
#[test]
fn exec_high_fd_opath_and_a_command_that_cannot_start() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("exec-edge");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = Proc::start(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "highfd:2000", "opath", "orphan:5000"],
        &log,
    );
    let before = fd_lines(&first_report(&log));
    assert!(
        before.contains_key(&2000) && before.values().any(|l| l.contains("flags=10000000")),
        "{before:?}"
    );
    let images = work.path().join("images");
    let (id, _) = take_files_only(p.pid, &images, &[]);
    drop(p);
    let names = checkpoint_names(&fs.mnt);
    assert_eq!(names.len(), 3, "{names:?}");
    // a command the kernel cannot run: refused, nothing consumed
    let junk = work.path().join("junk");
    std::fs::write(&junk, "not a program\n").unwrap();
    std::fs::set_permissions(&junk, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (ok, _, err) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        images.to_str().unwrap(),
        "--exec",
        junk.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("not an executable") && err.contains("nothing was changed"), "{err}");
    assert_eq!(checkpoint_names(&fs.mnt), names);
    let restart_limited = |ulimit: &str| {
        let cmd = format!(
            "ulimit {ulimit} 1024; exec '{}' restart {id} --image-root '{}' --exec '{}' report",
            snapckpt_bin().display(),
            images.display(),
            prog("ufiles").display()
        );
        std::process::Command::new("sh").arg("-c").arg(&cmd).output().unwrap()
    };
    // a hard fd limit below the recorded fd 2000: refused, nothing consumed
    let out = restart_limited("-n");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("RLIMIT_NOFILE") && e.contains("nothing was changed"), "{e}");
    assert_eq!(checkpoint_names(&fs.mnt), names);
    // a soft limit below it: raised for the command
    let out = restart_limited("-Sn");
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{o}\n{e}");
    let after = fd_lines(&o);
    assert_eq!(after.keys().copied().collect::<Vec<_>>(), vec![3, 4, 2000], "{o}");
    for (fd, line) in &after {
        assert_eq!(line, &before[fd], "fd {fd} differs after restart (O_PATH must stay O_PATH)");
    }
    assert!(checkpoint_names(&fs.mnt).is_empty(), "{:?}", checkpoint_names(&fs.mnt));
}

#[test]
fn refusals_unsafe_checkpoint_dir() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("refuse");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = Proc::start(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:100000"], &log);
    let images = work.path().join("images");
    let evil = work.path().join("evil");
    std::fs::create_dir_all(&evil).unwrap();

    // checkpoint is a symlink to a directory elsewhere
    let lf = fs.path("lost+found");
    std::fs::create_dir_all(&lf).unwrap();
    std::os::unix::fs::symlink(&evil, lf.join("checkpoint")).unwrap();
    expect_take_refused(p.pid, &images, &[], "symlink");
    assert_eq!(std::fs::read_dir(&evil).unwrap().count(), 0, "nothing written through the symlink");
    std::fs::remove_file(lf.join("checkpoint")).unwrap();

    // lost+found itself a symlink
    std::fs::remove_dir_all(&lf).unwrap();
    std::os::unix::fs::symlink(&evil, &lf).unwrap();
    expect_take_refused(p.pid, &images, &[], "symlink");
    assert_eq!(std::fs::read_dir(&evil).unwrap().count(), 0);
    std::fs::remove_file(&lf).unwrap();

    // foreign-owned
    std::fs::create_dir_all(lf.join("checkpoint")).unwrap();
    sh(&format!("chown 1000:1000 '{}'", lf.join("checkpoint").display()));
    expect_take_refused(p.pid, &images, &[], "not root");
    // writable by others
    sh(&format!("chown 0:0 '{0}' && chmod 0777 '{0}'", lf.join("checkpoint").display()));
    expect_take_refused(p.pid, &images, &[], "writable by group or others");
    sh(&format!("chmod 0700 '{}'", lf.join("checkpoint").display()));

    // a template that escapes the directory
    let (ok, _, err) = take(p.pid, &images, &["--template", "../../x-%t-%n"]);
    assert!(!ok && err.contains("plain file name"), "{err}");

    // and with everything right, it works
    take_files_only(p.pid, &images, &[]);
}

#[test]
fn refusal_bad_job_file() {
    let work = Scratch::new("job");
    let j = work.path().join("job.toml");
    std::fs::write(&j, "name = \"x\"\n[tasks]\npid = 1\n[freeze]\ntimeout = 5\n").unwrap();
    let (ok, _, err) = snapckpt(&[
        "take",
        "--job",
        j.to_str().unwrap(),
        "--image-root",
        work.path().join("i").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains(&format!("{}:5:", j.display())) && err.contains("timeout"), "{err}");
    // every example job in config/ parses; the demo's only once its placeholder pid is
    // replaced (as scripts/demo.sh does): as shipped it selects nothing
    for e in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "toml") {
            if e.file_name() == "demo.toml" {
                let err = snapckpt::job::Job::load(&e.path()).unwrap_err().to_string();
                assert!(err.contains("pid = 0") && err.contains("positive"), "{err}");
                let text = std::fs::read_to_string(e.path()).unwrap();
                assert_eq!(
                    text.lines().filter(|l| l.starts_with("pid = ")).count(),
                    1,
                    "demo.sh replaces one `pid = ` line"
                );
                let filled: String =
                    text.lines()
                        .map(|l| {
                            if l.starts_with("pid = ") {
                                "pid = 4242\n".to_string()
                            } else {
                                format!("{l}\n")
                            }
                        })
                        .collect();
                let j = snapckpt::job::Job::parse(&filled, &e.path())
                    .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
                assert_eq!((j.tasks.pid, j.tasks.tree), (Some(4242), true));
                continue;
            }
            snapckpt::job::Job::load(&e.path()).unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        }
    }
}

/// A task that exits while snapckpt scans: a clear error, nothing left behind.
#[test]
fn refusal_task_exits_during_scan() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("exit");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let mut p = Proc::start(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:100000"], &log);
    let hooks = Hooks::new(work.path().join("hooks"), &["take-frozen"]);
    let images = work.path().join("images");
    let child = hooks
        .command(&["take", "--pid", &p.pid.to_string(), "--image-root", images.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    hooks.wait_reached("take-frozen", "take frozen");
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    hooks.release("take-frozen");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("exited") || err.contains("No such process") || err.contains("no such task"),
        "{err}"
    );
    assert!(checkpoint_names(&fs.mnt).is_empty());
    let left: Vec<_> = std::fs::read_dir(&images)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// snapckpt SIGKILLed after relinking: the watchdog thaws the task; gc removes the names
/// and the partial image.
#[test]
fn killed_take_is_thawed_and_collected() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("kill");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = Proc::start(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:100000", "ab"], &log);
    let images = work.path().join("images");
    // one complete checkpoint whose names must survive gc
    let (live_id, _) = take_files_only(p.pid, &images, &[]);
    let live_names = checkpoint_names(&fs.mnt);
    assert_eq!(live_names.len(), 2);

    let hooks = Hooks::new(work.path().join("hooks"), &["take-relinked"]);
    let mut child = hooks
        .command(&["take", "--pid", &p.pid.to_string(), "--image-root", images.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    hooks.wait_reached("take-relinked", "relinked");
    assert_eq!(state(p.pid), Some('T'), "frozen during the take");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    wait_for(|| state(p.pid) != Some('T'), Duration::from_secs(5), "watchdog thaw");
    assert_eq!(checkpoint_names(&fs.mnt).len(), 4);
    let (ok, out, _) = snapckpt(&[
        "gc",
        "--mount",
        fs.mnt.to_str().unwrap(),
        "--image-root",
        images.to_str().unwrap(),
        "--dry-run",
    ]);
    assert!(ok && out.contains("2 stale name(s), 1 partial image(s)"), "{out}");
    assert_eq!(checkpoint_names(&fs.mnt).len(), 4, "dry run removes nothing");
    snapckpt_ok(&["gc", "--mount", fs.mnt.to_str().unwrap(), "--image-root", images.to_str().unwrap()]);
    assert_eq!(checkpoint_names(&fs.mnt), live_names, "only the live checkpoint's names are left");
    let left: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![live_id.clone()]);
    // delete removes the live checkpoint's names too
    snapckpt_ok(&["delete", &live_id, "--image-root", images.to_str().unwrap()]);
    assert!(checkpoint_names(&fs.mnt).is_empty());
}

/// gc removes only what failed takes of its own image root left: the names and snapshots of
/// another image root's checkpoints are reported and kept unless `--id` or `--all` asks.
/// A record that cannot be read is deleted with `--force`, and gc then takes its leftovers.
#[test]
fn gc_scope_and_delete_of_an_unreadable_record() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("gc-scope");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = Proc::start(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:100000", "ab"],
        &work.path().join("log"),
    );
    let (ra, rb) = (work.path().join("root-a"), work.path().join("root-b"));
    let (ida, _) = take_files_only(p.pid, &ra, &[]);
    let (idb, dirb) = take_files_only(p.pid, &rb, &["--snapshot", "btrfs"]);
    let mnt = fs.mnt.to_str().unwrap();
    let snaps = || {
        std::fs::read_dir(fs.path(".snapckpt"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let names_a = checkpoint_names(&fs.mnt);
    assert_eq!(names_a.len(), 2, "{names_a:?}");
    assert_eq!(snaps(), vec![idb.clone()]);

    // root A knows nothing of B: B's snapshot is left alone and said so
    let out = snapckpt_ok(&["gc", "--mount", mnt, "--image-root", ra.to_str().unwrap()]);
    assert!(out.contains(&format!("left alone 1 name(s)/snapshot(s) of checkpoint {idb}")), "{out}");
    assert!(out.contains("0 stale snapshot(s)"), "{out}");
    assert_eq!(snaps(), vec![idb.clone()]);
    assert_eq!(checkpoint_names(&fs.mnt), names_a);
    // --all would take it (dry run), root B keeps its own names too
    let out =
        snapckpt_ok(&["gc", "--mount", mnt, "--image-root", ra.to_str().unwrap(), "--all", "--dry-run"]);
    assert!(out.contains("would remove snapshot") && out.contains(&format!("(checkpoint {idb})")), "{out}");
    let out = snapckpt_ok(&["gc", "--mount", mnt, "--image-root", rb.to_str().unwrap()]);
    assert!(out.contains(&format!("left alone 2 name(s)/snapshot(s) of checkpoint {ida}")), "{out}");
    assert_eq!((snaps(), checkpoint_names(&fs.mnt)), (vec![idb.clone()], names_a.clone()));

    // B's record is damaged: delete refuses without --force and says what to do
    std::fs::write(dirb.join("checkpoint.json"), b"{ not json").unwrap();
    let (ok, _, err) = snapckpt(&["delete", &idb, "--image-root", rb.to_str().unwrap()]);
    assert!(!ok && err.contains("--force") && !err.contains("panicked"), "{err}");
    assert!(dirb.exists());
    let out = snapckpt_ok(&["delete", &idb, "--image-root", rb.to_str().unwrap(), "--force"]);
    assert!(out.contains(&format!("--id {idb}")), "{out}");
    assert!(!dirb.exists());
    assert_eq!(snaps(), vec![idb.clone()], "the snapshot is left to gc");
    let out = snapckpt_ok(&["gc", "--mount", mnt, "--image-root", rb.to_str().unwrap(), "--id", &idb]);
    assert!(out.contains("1 stale snapshot(s)"), "{out}");
    assert!(snaps().is_empty());
    assert_eq!(checkpoint_names(&fs.mnt), names_a, "A's names untouched");
    // --force never removes a directory that is not a checkpoint's
    let fake = work.path().join("not-an-id");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("checkpoint.json"), b"x").unwrap();
    let (ok, _, err) = snapckpt(&["delete", fake.to_str().unwrap(), "--force"]);
    assert!(!ok && err.contains("not named like a checkpoint id"), "{err}");
    assert!(fake.join("checkpoint.json").exists());
    snapckpt_ok(&["delete", &ida, "--image-root", ra.to_str().unwrap()]);
    assert!(checkpoint_names(&fs.mnt).is_empty());
}

/// Snapshots in a job's own `snapshot_dir` are found by gc: given with `--snapshot-dir`, or
/// from the image root's checkpoints that use that directory.
#[test]
fn gc_finds_snapshots_in_a_custom_snapshot_dir() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("gc-snapdir");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = Proc::start(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:100000"],
        &work.path().join("log"),
    );
    let job = work.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[[filesystem]]\nmount = \"{}\"\nsnapshot = \"btrfs\"\nsnapshot_dir = \"snaps/x\"\n",
            fs.mnt.display()
        ),
    )
    .unwrap();
    let images = work.path().join("images");
    let (lost, lost_dir) = take_files_only(p.pid, &images, &["--job", job.to_str().unwrap()]);
    let (kept, _) = take_files_only(p.pid, &images, &["--job", job.to_str().unwrap()]);
    let snaps = || {
        let mut v: Vec<String> = std::fs::read_dir(fs.path("snaps/x"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    assert_eq!(snaps().len(), 2);
    // one image is lost by hand; gc --id finds its snapshot through the other checkpoint's dir
    std::fs::remove_dir_all(&lost_dir).unwrap();
    let (mnt, ir) = (fs.mnt.to_str().unwrap(), images.to_str().unwrap());
    let out = snapckpt_ok(&["gc", "--mount", mnt, "--image-root", ir, "--id", &lost]);
    assert!(out.contains("1 stale snapshot(s)"), "{out}");
    assert_eq!(snaps(), vec![kept.clone()]);
    // with no checkpoint left to name the directory, --snapshot-dir does
    let kept_dir = images.join(&kept);
    std::fs::remove_dir_all(&kept_dir).unwrap();
    let out = snapckpt_ok(&["gc", "--mount", mnt, "--image-root", ir, "--id", &kept]);
    assert!(out.contains("0 stale snapshot(s)"), "{out}");
    let out =
        snapckpt_ok(&["gc", "--mount", mnt, "--image-root", ir, "--id", &kept, "--snapshot-dir", "snaps/x"]);
    assert!(out.contains("1 stale snapshot(s)"), "{out}");
    assert!(snaps().is_empty());
}

#[test]
fn scan_reports_and_dry_run_changes_nothing() {
    let _g = serial();
    let fs = LoopFs::new("xfs", "1G");
    let work = Scratch::new("scan");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = Proc::start(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "odd", "ab"], &log);
    let out = snapckpt_ok(&["scan", "--pid", &p.pid.to_string(), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let paths: Vec<&str> =
        v["objects"].as_array().unwrap().iter().map(|o| o["original_path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 3, "{paths:?}");
    assert!(!paths.iter().any(|p| p.ends_with("kept (deleted)")));
    let table = snapckpt_ok(&["scan", "--pid", &p.pid.to_string()]);
    assert!(table.contains("name-gone") && table.contains("orphan"), "{table}");
    let images = work.path().join("images");
    let out = take_ok(p.pid, &images, &["--dry-run"]);
    assert!(out.contains("would relink"), "{out}");
    assert!(checkpoint_names(&fs.mnt).is_empty());
    assert!(!fs.path("lost+found/checkpoint").exists() || checkpoint_names(&fs.mnt).is_empty());
    assert!(!images.exists() || std::fs::read_dir(&images).unwrap().count() == 0);
}

/// A tree of processes sharing an orphan and a forked child holding its own: one object,
/// several holders across tasks.
#[test]
fn shared_inode_across_tasks_is_one_object() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("tree");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = Proc::start(&prog("ufiles_tree"), &[dir.to_str().unwrap()], &log);
    let images = work.path().join("images");
    let out = take_ok(p.pid, &images, &["--tree"]);
    let rec = record(&images.join(take_id(&out)));
    assert_eq!(rec["tasks"].as_array().unwrap().len(), 2);
    let objs = rec["objects"].as_array().unwrap();
    assert_eq!(objs.len(), 1, "{objs:?}");
    let pids: std::collections::BTreeSet<i64> =
        objs[0]["holders"].as_array().unwrap().iter().map(|h| h["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids.len(), 2);
}

/// A child process, killed and reaped on drop (also when a test fails).
struct Killed(std::process::Child);
impl Killed {
    fn sleeper() -> Killed {
        Killed(
            std::process::Command::new("sleep")
                .arg("1000")
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process with a zombie child it never reaps: `sh` starts a short `sleep` in the
/// background and replaces itself with a long one. Returns the parent and the zombie's pid.
fn parent_of_a_zombie() -> (Killed, i32) {
    let child = Killed(
        std::process::Command::new("sh")
            .args(["-c", "sleep 0 & exec sleep 1000"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.pid();
    let mut zombie = 0;
    wait_for(
        || {
            let kids =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            zombie = kids.split_whitespace().next().and_then(|k| k.parse().ok()).unwrap_or(0);
            zombie > 0
                && state(zombie) == Some('Z')
                && std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sleep"))
        },
        Duration::from_secs(10),
        "a zombie child",
    );
    (child, zombie)
}

/// A zombie in a --tree selection is left out (it holds nothing): scan and take work. A
/// --pid that is a zombie is refused, saying so.
#[test]
fn zombie_in_a_tree_is_skipped() {
    let work = Scratch::new("zombie");
    let (parent, zombie) = parent_of_a_zombie();
    let pid = parent.pid().to_string();
    let out = snapckpt_ok(&["scan", "--pid", &pid, "--tree", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let pids: Vec<i64> = v["tasks"].as_array().unwrap().iter().map(|t| t["pid"].as_i64().unwrap()).collect();
    assert_eq!(pids, vec![parent.pid() as i64], "{out}");
    let images = work.path().join("images");
    let out = snapckpt_ok(&[
        "take",
        "--pid",
        &pid,
        "--tree",
        "--engine",
        "none",
        "--image-root",
        images.to_str().unwrap(),
    ]);
    let rec = record(&images.join(take_id(&out)));
    assert_eq!(rec["tasks"].as_array().unwrap().len(), 1);
    // thawed: back to sleep (it may still be running for a moment after SIGCONT)
    wait_for(|| state(parent.pid()) == Some('S'), Duration::from_secs(5), "the parent thawed");
    for args in
        [vec!["scan", "--pid"], vec!["take", "--dry-run", "--image-root", images.to_str().unwrap(), "--pid"]]
    {
        let z = zombie.to_string();
        let mut a = args.clone();
        a.push(&z);
        let (ok, _, err) = snapckpt(&a);
        assert!(
            !ok && err.contains(&format!("pid {zombie} is a zombie")) && !err.contains("run the take again"),
            "{a:?}: {err}"
        );
    }
}

/// Init and kernel threads are refused before anything is frozen, instead of a SIGSTOP that
/// they ignore and a wait for the whole freeze timeout.
#[test]
fn init_and_kernel_threads_are_refused_at_once() {
    let work = Scratch::new("init");
    let images = work.path().join("images");
    let mut cases = vec![("1", "is init")];
    // a kernel thread: PF_KTHREAD (0x00200000) in the flags of /proc/PID/stat
    let kthread = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|p| {
            let st = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let flags = st
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(6))
                .and_then(|f| f.parse::<u64>().ok());
            flags.is_some_and(|f| f & 0x0020_0000 != 0)
        });
    let kt = kthread.map(|p| p.to_string());
    if let Some(k) = &kt {
        cases.push((k.as_str(), "is a kernel thread"));
    }
    for (pid, what) in cases {
        for args in [
            vec![
                "take",
                "--pid",
                pid,
                "--tree",
                "--dry-run",
                "--freeze-timeout",
                "5000",
                "--image-root",
                images.to_str().unwrap(),
            ],
            vec!["take", "--pid", pid, "--freeze-timeout", "5000", "--image-root", images.to_str().unwrap()],
            vec!["scan", "--pid", pid, "--freeze"],
        ] {
            let t = std::time::Instant::now();
            let (ok, _, err) = snapckpt(&args);
            assert!(!ok && err.contains(&format!("pid {pid} (")) && err.contains(what), "{args:?}: {err}");
            assert!(!err.contains("did not freeze") && !err.contains("state D"), "{err}");
            assert!(t.elapsed() < Duration::from_secs(2), "{args:?} took {:?}", t.elapsed());
        }
    }
    assert!(!images.exists(), "nothing written");
}

#[test]
fn freeze_timeout_zero_is_refused_by_the_parser() {
    let work = Scratch::new("ft0");
    let p = Killed::sleeper();
    let images = work.path().join("images");
    let o = std::process::Command::new(snapckpt_bin())
        .args([
            "take",
            "--pid",
            &p.pid().to_string(),
            "--image-root",
            images.to_str().unwrap(),
            "--freeze-timeout",
            "0",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "a usage error: {err}");
    assert!(err.contains("--freeze-timeout"), "{err}");
    assert!(!images.exists());
    wait_for(|| state(p.pid()) == Some('S'), Duration::from_secs(5), "asleep (thawed, not stopped)");
}

/// Output into a pipe whose reader has gone ends snapckpt quietly (SIGPIPE), not with a
/// panic; a take whose output nobody reads is complete, its tasks thawed.
#[test]
fn closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let work = Scratch::new("pipe");
    let p = Killed::sleeper();
    let images = work.path().join("images");
    let pid = p.pid().to_string();
    for args in [
        vec!["scan", "--all", "--json"],
        vec!["scan", "--all"],
        vec!["take", "--pid", &pid, "--engine", "none", "--image-root", images.to_str().unwrap()],
    ] {
        let mut c = Command::new(snapckpt_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(c.stdout.take()); // like `| head -0`
        let o = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(
            o.status.signal() == Some(libc::SIGPIPE) || o.status.success(),
            "{args:?}: {:?} {err}",
            o.status
        );
    }
    let made: Vec<_> = std::fs::read_dir(&images).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(made.len(), 1, "the take completed: {made:?}");
    wait_for(|| state(p.pid()) == Some('S'), Duration::from_secs(5), "asleep (thawed, not stopped)");
}

/// An empty image root (env or job) is refused before anything is done: it would put the
/// image in the current directory.
#[test]
fn empty_image_root_is_refused() {
    let work = Scratch::new("emptyroot");
    let p = Killed::sleeper();
    let pid = p.pid().to_string();
    let job = work.path().join("job.toml");
    std::fs::write(&job, format!("[tasks]\npid = {pid}\n")).unwrap();
    let cwd = work.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    for args in
        [vec!["take", "--pid", &pid], vec!["take", "--job", job.to_str().unwrap()], vec!["list"], vec!["gc"]]
    {
        let o = std::process::Command::new(snapckpt_bin())
            .args(&args)
            .env("SNAPCKPT_IMAGE_ROOT", "")
            .current_dir(&cwd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains("image root is empty"), "{args:?}: {err}");
        assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "{args:?} wrote into the current directory");
    }
    // an image root that is a file
    let f = work.path().join("afile");
    std::fs::write(&f, "").unwrap();
    let (ok, _, err) = snapckpt(&["take", "--pid", &pid, "--image-root", f.to_str().unwrap()]);
    assert!(!ok && err.contains("exists and is not a directory"), "{err}");
    wait_for(|| state(p.pid()) == Some('S'), Duration::from_secs(5), "asleep (thawed, not stopped)");
}

/// gc in an image root whose only entries are a failed take's log and a dead take's partial
/// image: with no mount to search it still removes them, and says what it did not search.
#[test]
fn gc_without_mounts_cleans_the_image_root() {
    let work = Scratch::new("gc-nomount");
    let root = work.path().join("images");
    let failed = root.join(".20261127T031537Z-ea51.failed");
    let partial = root.join(".20261127T031538Z-ea52.partial");
    std::fs::create_dir_all(&failed).unwrap();
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(failed.join("criu-dump.log"), "log\n").unwrap();
    let r = root.to_str().unwrap();
    let out = snapckpt_ok(&["gc", "--image-root", r, "--dry-run"]);
    assert!(out.contains("would remove partial image") && out.contains("no mount searched"), "{out}");
    assert!(failed.exists() && partial.exists());
    let out = snapckpt_ok(&["gc", "--image-root", r]);
    assert!(out.contains("2 partial image(s)") && out.contains("--mount MOUNTPOINT"), "{out}");
    assert!(out.contains("20261127T031537Z-ea51") && out.contains("20261127T031538Z-ea52"), "{out}");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

/// `--snapshot none` drops the job's [[filesystem]] snapshots; `--dry-run --json` prints the
/// plan as JSON.
#[test]
fn snapshot_none_overrides_the_job_and_dry_run_json() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "256M");
    let work = Scratch::new("snapnone");
    let p = Killed::sleeper();
    let job = work.path().join("job.toml");
    let job_text = |mount: &str| {
        format!("[tasks]\npid = {}\n[[filesystem]]\nmount = \"{mount}\"\nsnapshot = \"btrfs\"\n", p.pid())
    };
    // a snapshot that cannot be taken is refused up front, also by a dry run
    std::fs::write(&job, job_text("/srv/snapckpt-test-fs")).unwrap();
    let images = work.path().join("images");
    let base =
        ["take", "--job", job.to_str().unwrap(), "--image-root", images.to_str().unwrap(), "--dry-run"];
    let (ok, _, err) = snapckpt(&base);
    assert!(!ok && err.contains("/srv/snapckpt-test-fs"), "{err}");
    std::fs::write(&job, job_text(fs.mnt.to_str().unwrap())).unwrap();
    let out = snapckpt_ok(&base);
    assert!(out.contains(&format!("would snapshot {} with btrfs", fs.mnt.display())), "{out}");
    let out = snapckpt_ok(&[&base[..], &["--snapshot", "none"]].concat());
    assert!(!out.contains("would snapshot"), "{out}");
    let out = snapckpt_ok(&[&base[..], &["--json"]].concat());
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["pids"], serde_json::json!([p.pid()]));
    assert_eq!(v["snapshots"][0]["backend"], "btrfs");
    let out = snapckpt_ok(&[&base[..], &["--json", "--snapshot", "none"]].concat());
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["snapshots"], serde_json::json!([]));
    assert!(!images.exists());
    wait_for(|| state(p.pid()) == Some('S'), Duration::from_secs(5), "asleep (thawed, not stopped)");
}

/// Options that would be ignored are refused instead.
#[test]
fn ignored_options_are_refused() {
    let work = Scratch::new("conflicts");
    let p = Killed::sleeper();
    let pid = p.pid().to_string();
    let images = work.path().join("images");
    let ir = images.to_str().unwrap();
    for (args, what, code) in [
        (vec!["take", "--pid", &pid, "--image-root", ir, "--leave-stopped"], "--engine criu", 1),
        (
            vec!["take", "--pid", &pid, "--image-root", ir, "--leave-running", "--engine", "none"],
            "--engine criu",
            1,
        ),
        (vec!["scan", "--all", "--pid", &pid], "cannot be used with", 2),
        (vec!["scan", "--all", "--freeze"], "cannot be used with", 2),
        (vec!["scan", "--all", "--cgroup", "/sys/fs/cgroup/unified"], "cannot be used with", 2),
        (
            vec!["restart", "20260101T000000Z-abcd", "--image-root", ir, "--mount-root", "/tmp"],
            "--snapshot",
            2,
        ),
        (vec!["restart", "20260101T000000Z-abcd", "--image-root", ir, "--exec-task", "5"], "--exec", 2),
        (vec!["scan"], "--all", 1),
        (
            vec!["take", "--cgroup", "/sys/fs/cgroup/unified/snapckpt-no-such-cgroup", "--image-root", ir],
            "does not exist",
            1,
        ),
    ] {
        let o = std::process::Command::new(snapckpt_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(what), "{args:?}: {err}");
    }
    assert!(!images.exists());
    wait_for(|| state(p.pid()) == Some('S'), Duration::from_secs(5), "asleep (thawed, not stopped)");
}

/// `list --json` includes the images whose record cannot be read, with the error.
#[test]
fn list_json_includes_unreadable_images() {
    let work = Scratch::new("listjson");
    let root = work.path().join("images");
    std::fs::create_dir_all(root.join("20260101T000000Z-abcd")).unwrap();
    std::fs::write(root.join("20260101T000000Z-abcd/checkpoint.json"), b"{ not json").unwrap();
    let out = snapckpt_ok(&["list", "--image-root", root.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 1, "{out}");
    assert_eq!(a[0]["id"], "20260101T000000Z-abcd");
    assert!(a[0]["error"].as_str().is_some_and(|e| !e.is_empty()), "{out}");
}
