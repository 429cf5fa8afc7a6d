//! Whole checkpoint/restart: btrfs snapshots carry the relinked files, CRIU carries the
//! processes with no file data in its image. Real CRIU (scripts/install-criu.sh), real loop
//! btrfs, real processes that check themselves after restart. Run as root.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The report lines (FD/MAP/CWD) a ufiles process printed after `from` bytes of its log.
fn report_after(log: &Path, from: usize) -> Vec<String> {
    let s = std::fs::read(log).unwrap();
    let s = String::from_utf8_lossy(&s[from.min(s.len())..]).into_owned();
    let s = s.split("ready").next().unwrap().to_string();
    s.split("checked")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("FD ") || l.starts_with("MAP ") || l.starts_with("CWD "))
        .map(str::to_string)
        .collect()
}

/// Ask a restored ufiles process to check itself; returns its report.
fn self_check(pid: i32, log: &Path, from: usize) -> Vec<String> {
    ask_report(pid, log, from);
    report_after(log, from)
}

fn du(p: &Path) -> u64 {
    sh(&format!("du -sb '{}'", p.display())).split_whitespace().next().unwrap().parse().unwrap()
}

/// `snapckpt take --engine criu --snapshot btrfs` of `pid` (plus `extra`); the checkpoint id.
fn take_criu(s: &Setup, pid: i32, extra: &[&str]) -> String {
    let mut args = vec!["--engine", "criu", "--snapshot", "btrfs"];
    args.extend_from_slice(extra);
    take_id(&take_ok(pid, &s.images, &args))
}

/// `snapckpt restart ID --snapshot --mount-root <work>/<name>`; returns the mount root.
fn restart_side(s: &Setup, id: &str, name: &str) -> PathBuf {
    let root = s.work.path().join(name);
    std::fs::create_dir_all(&root).unwrap();
    snapckpt_ok(&[
        "restart",
        id,
        "--snapshot",
        "--mount-root",
        root.to_str().unwrap(),
        "--image-root",
        s.images.to_str().unwrap(),
    ]);
    root
}

fn delete_forced(s: &Setup, id: &str) {
    snapckpt_ok(&["delete", id, "--force", "--image-root", s.images.to_str().unwrap()]);
}

struct Setup {
    fs: LoopFs,
    work: Scratch,
    dir: PathBuf,
    images: PathBuf,
}

fn setup(size: &str) -> Setup {
    let fs = LoopFs::new("btrfs", size);
    let work = Scratch::new("criu");
    let dir = fs.path("data");
    std::fs::create_dir_all(&dir).unwrap();
    let images = work.path().join("images");
    Setup { fs, work, dir, images }
}

/// Every kind of unlinked file, CRIU + btrfs snapshot, restarted twice side by side from
/// one checkpoint while the live filesystem changes; each time the process reports exactly
/// what it saw, and the live changes are not seen.
#[test]
fn criu_every_kind_restart_twice() {
    let _g = serial();
    let s = setup("2G");
    let log = s.work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(
        &prog("ufiles"),
        &[
            "setup",
            s.dir.to_str().unwrap(),
            "ab",
            "orphan:268435456",
            "mmap",
            "tmpfile",
            "twofds",
            "fifo",
            "cwd",
        ],
        &log,
    );
    let before = report_after(&log, 0);
    let id = take_criu(&s, p.pid, &[]);
    p.child.wait().unwrap(); // CRIU killed it after the dump
    let rec = record(&s.images.join(&id));
    assert_eq!(rec["engine"]["name"], "criu");
    assert_eq!(rec["links_removed"], true);
    assert_eq!(rec["snapshots"].as_array().unwrap().len(), 1);
    // no file data in CRIU's image: no ghost files, and the whole directory is small
    assert!(du(&s.images.join(&id)) < 1 << 20, "image dir {} bytes", du(&s.images.join(&id)));
    assert!(!std::fs::read_dir(s.images.join(&id))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("ghost")));
    // the relinked names are in the snapshot only
    assert_eq!(std::fs::read_dir(s.fs.path("lost+found/checkpoint")).unwrap().count(), 0);

    // the live filesystem moves on
    std::fs::write(s.dir.join("b"), "changed live").unwrap();
    std::fs::remove_file(s.dir.join("a")).unwrap();
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    for round in 1..=2 {
        let root = s.work.path().join(format!("r{round}"));
        std::fs::create_dir_all(&root).unwrap();
        sh(&format!("truncate -s {logsize} '{}'", log.display())); // CRIU checks the log's size
        let out = snapckpt_ok(&[
            "restart",
            &id,
            "--snapshot",
            "--mount-root",
            root.to_str().unwrap(),
            "--image-root",
            s.images.to_str().unwrap(),
        ]);
        assert!(out.contains(&format!("restored tasks [{}]", p.pid)), "{out}");
        let after = self_check(p.pid, &log, logsize);
        assert_eq!(after, before, "round {round}: the restored process sees what it saw");
        let clone = root.join(s.fs.mnt.strip_prefix("/").unwrap());
        assert_eq!(
            std::fs::read_to_string(clone.join("data/b")).unwrap(),
            "hello",
            "round {round}: live changes not seen"
        );
        // the relinked names were unlinked again inside the clone
        assert_eq!(std::fs::read_dir(clone.join("lost+found/checkpoint")).unwrap().count(), 0);
        kill_wait(p.pid);
    }
    // the read-only snapshot is untouched: its relinked names are all still there
    let snap = PathBuf::from(rec["snapshots"][0]["path"].as_str().unwrap());
    assert_eq!(
        std::fs::read_dir(snap.join("lost+found/checkpoint")).unwrap().count(),
        rec["objects"].as_array().unwrap().len()
    );
    // delete refuses while a clone is mounted, --force unmounts
    let (ok, _, err) = snapckpt(&["delete", &id, "--image-root", s.images.to_str().unwrap()]);
    assert!(!ok && err.contains("mounted"), "{err}");
    delete_forced(&s, &id);
    assert!(!snap.exists());
    assert!(!s.images.join(&id).exists());
}

/// `a_fd = open(a); link(a, b); unlink(a); creat(a)`, checkpoint, kill, restart: a write
/// through the restored fd lands in "b", and "a" is still the new file.
#[test]
fn criu_ab_write_lands_in_b() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(&prog("ufiles"), &["setup", s.dir.to_str().unwrap(), "ab"], &log);
    let id = take_criu(&s, p.pid, &[]);
    p.child.wait().unwrap();
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    let root = restart_side(&s, &id, "r");
    wait_paused(p.pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), nix::sys::signal::Signal::SIGUSR2).unwrap();
    wait_for(
        || String::from_utf8_lossy(&std::fs::read(&log).unwrap()[logsize..]).contains("wrote"),
        Duration::from_secs(10),
        "write",
    );
    let clone = root.join(s.fs.mnt.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read_to_string(clone.join("data/b")).unwrap(), "helXY");
    assert_eq!(std::fs::read_to_string(clone.join("data/a")).unwrap(), "new");
    // the restored fd's inode has one link again: b
    let fdlink = format!("/proc/{}/fd/3", p.pid);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&fdlink).unwrap().nlink(), 1);
    kill_wait(p.pid);
    delete_forced(&s, &id);
}

/// A 1 GiB sparse orphan: the image directory stays under 1 MiB, the take allocates no new
/// data blocks, and the restored process reads the same bytes, holes and offset.
#[test]
fn criu_1g_sparse_orphan() {
    let _g = serial();
    let s = setup("3G");
    let log = s.work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(
        &prog("ufiles"),
        &["setup", s.dir.to_str().unwrap(), "orphan:1073741824", "dense:67108864"],
        &log,
    );
    let before = report_after(&log, 0);
    let id = take_criu(&s, p.pid, &[]);
    p.child.wait().unwrap();
    let img = du(&s.images.join(&id));
    assert!(img < 1 << 20, "image dir is {img} bytes");
    let rec = record(&s.images.join(&id));
    for o in rec["objects"].as_array().unwrap() {
        assert_eq!(o["relinked"]["method"], "clone", "{o}");
        assert_eq!(o["relinked"]["bytes_copied"], 0);
    }
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    restart_side(&s, &id, "r");
    assert_eq!(self_check(p.pid, &log, logsize), before);
    kill_wait(p.pid);
    delete_forced(&s, &id);
}

/// Two processes share an orphan (one inherited fd, one own open file description): one
/// object, restored for both with their own offsets.
#[test]
fn criu_two_processes_share_an_orphan() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("tree.log");
    let mut p = Proc::start_setsid(&prog("ufiles_tree"), &[s.dir.to_str().unwrap()], &log);
    let child: i32 =
        std::fs::read_to_string(&log).unwrap().split("child=").nth(1).unwrap().trim().parse().unwrap();
    let before = std::fs::metadata(&log).unwrap().len() as usize;
    let check = |from: usize| -> BTreeMap<String, String> {
        for pid in [p.pid, child] {
            wait_paused(pid);
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1)
                .unwrap();
        }
        wait_for(
            || String::from_utf8_lossy(&std::fs::read(&log).unwrap()[from..]).matches("CHECK").count() >= 3,
            Duration::from_secs(10),
            "checks",
        );
        String::from_utf8_lossy(&std::fs::read(&log).unwrap()[from..])
            .lines()
            .filter(|l| l.starts_with("CHECK"))
            .map(|l| {
                (
                    format!(
                        "{} {}",
                        l.split_whitespace().nth(1).unwrap(),
                        l.split("pos=").nth(1).unwrap().split(' ').next().unwrap()
                    ),
                    l.to_string(),
                )
            })
            .collect()
    };
    let orig = check(before);
    assert_eq!(orig.len(), 3, "{orig:?}");
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    let id = take_criu(&s, p.pid, &["--tree"]);
    p.child.wait().unwrap();
    wait_gone(child);
    let rec = record(&s.images.join(&id));
    assert_eq!(rec["objects"].as_array().unwrap().len(), 1);
    assert_eq!(rec["tasks"].as_array().unwrap().len(), 2);
    let root = s.work.path().join("r");
    std::fs::create_dir_all(&root).unwrap();
    sh(&format!("truncate -s {logsize} '{}'", log.display()));
    snapckpt_ok(&[
        "restart",
        &id,
        "--snapshot",
        "--mount-root",
        root.to_str().unwrap(),
        "--image-root",
        s.images.to_str().unwrap(),
    ]);
    let after = check(logsize);
    assert_eq!(after, orig);
    kill_wait(p.pid); // the parent first: a killed child would stay a zombie of a live parent
    kill_wait(child);
    delete_forced(&s, &id);
}

/// Tasks in a cgroup v2: snapckpt freezes the cgroup itself and passes it to CRIU.
#[test]
fn criu_cgroup_v2_selection() {
    let _g = serial();
    let s = setup("1G");
    let cgroup = Cgroup::new(Cg::V2, "criu");
    let cg = &cgroup.path;
    let log = s.work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(
        &prog("ufiles"),
        &["setup", s.dir.to_str().unwrap(), "orphan:10485760", "cwd"],
        &log,
    );
    cgroup.add(p.pid);
    let before = report_after(&log, 0);
    let id = take_id(&snapckpt_ok(&[
        "take",
        "--cgroup",
        cg.to_str().unwrap(),
        "--engine",
        "criu",
        "--snapshot",
        "btrfs",
        "--image-root",
        s.images.to_str().unwrap(),
    ]));
    p.child.wait().unwrap();
    assert!(
        std::fs::read_to_string(cg.join("cgroup.events")).unwrap().contains("frozen 0"),
        "cgroup left frozen"
    );
    let rec = record(&s.images.join(&id));
    assert!(rec["freezer"].as_str().unwrap().starts_with("cgroup-v2"), "{}", rec["freezer"]);
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    restart_side(&s, &id, "r");
    assert_eq!(self_check(p.pid, &log, logsize), before);
    kill_wait(p.pid);
    delete_forced(&s, &id);
}

/// Files-only take with a btrfs snapshot: restart twice from the snapshot with --exec while
/// the live filesystem changes; link counts come back as recorded.
#[test]
fn files_only_btrfs_snapshot_restart_twice() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("ufiles.log");
    let p = Proc::start(
        &prog("ufiles"),
        &["setup", s.dir.to_str().unwrap(), "ab", "orphan:1048576", "twofds"],
        &log,
    );
    let before = report_after(&log, 0);
    let id = take_files_only(p.pid, &s.images, &["--snapshot", "btrfs"]).0;
    drop(p);
    std::fs::write(s.dir.join("b"), "changed").unwrap();
    // without --snapshot the restart is refused: the names live only in the snapshot
    let (ok, _, err) =
        snapckpt(&["restart", &id, "--image-root", s.images.to_str().unwrap(), "--exec", "true"]);
    assert!(!ok && err.contains("--snapshot"), "{err}");
    for round in 1..=2 {
        let root = s.work.path().join(format!("r{round}"));
        std::fs::create_dir_all(&root).unwrap();
        let out = snapckpt_ok(&[
            "restart",
            &id,
            "--snapshot",
            "--mount-root",
            root.to_str().unwrap(),
            "--image-root",
            s.images.to_str().unwrap(),
            "--exec",
            prog("ufiles").to_str().unwrap(),
            "report",
        ]);
        let fd_lines: Vec<String> =
            out.lines().filter(|l| l.starts_with("FD ")).map(str::to_string).collect();
        let want: Vec<String> = before
            .iter()
            .filter(|l| {
                l.starts_with("FD ")
                    && fd_lines.iter().any(|f| f.split_whitespace().nth(1) == l.split_whitespace().nth(1))
            })
            .cloned()
            .collect();
        assert_eq!(fd_lines.len(), 4, "{out}");
        assert_eq!(fd_lines, want, "round {round}");
    }
    delete_forced(&s, &id);
}

/// A task whose executable was deleted after it started (and whose code is mapped from
/// it): the exe is preserved as an orphan clone and restored.
#[test]
fn criu_deleted_executable() {
    let _g = serial();
    let s = setup("1G");
    let exe = s.dir.join("ufiles-copy");
    std::fs::copy(prog("ufiles"), &exe).unwrap();
    let log = s.work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(&exe, &["setup", s.dir.to_str().unwrap(), "orphan:100000"], &log);
    std::fs::remove_file(&exe).unwrap();
    let before = report_after(&log, 0);
    let id = take_criu(&s, p.pid, &[]);
    p.child.wait().unwrap();
    let rec = record(&s.images.join(&id));
    let exe_obj = rec["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["original_path"].as_str().unwrap().ends_with("/ufiles-copy"))
        .expect("exe is an object")
        .clone();
    let holders: Vec<&str> =
        exe_obj["holders"].as_array().unwrap().iter().map(|h| h["what"].as_str().unwrap()).collect();
    assert!(holders.contains(&"exe") && holders.iter().any(|h| h.starts_with("map ")), "{holders:?}");
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    restart_side(&s, &id, "r");
    assert_eq!(self_check(p.pid, &log, logsize), before);
    let link = std::fs::read_link(format!("/proc/{}/exe", p.pid)).unwrap();
    assert!(link.to_string_lossy().ends_with("(deleted)"), "{}", link.display());
    kill_wait(p.pid);
    delete_forced(&s, &id);
}

/// snapckpt SIGKILLed right after the snapshot: the task is thawed by the watchdog, and gc
/// removes the snapshot, the relinked names and the partial image of that take.
#[test]
fn gc_collects_snapshot_of_killed_take() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("ufiles.log");
    let p = Proc::start(&prog("ufiles"), &["setup", s.dir.to_str().unwrap(), "orphan:100000", "ab"], &log);
    let hooks = Hooks::new(s.work.path().join("hooks"), &["take-snapshotted"]);
    let mut child = hooks
        .command(&[
            "take",
            "--pid",
            &p.pid.to_string(),
            "--snapshot",
            "btrfs",
            "--image-root",
            s.images.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    hooks.wait_reached("take-snapshotted", "snapshotted");
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for(
        || !std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap().contains(") T "),
        Duration::from_secs(5),
        "thaw",
    );
    assert_eq!(std::fs::read_dir(s.fs.path(".snapckpt")).unwrap().count(), 1);
    let out = snapckpt_ok(&[
        "gc",
        "--mount",
        s.fs.mnt.to_str().unwrap(),
        "--image-root",
        s.images.to_str().unwrap(),
    ]);
    assert!(out.contains("2 stale name(s), 1 partial image(s), 1 stale snapshot(s)"), "{out}");
    assert_eq!(std::fs::read_dir(s.fs.path(".snapckpt")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(s.fs.path("lost+found/checkpoint")).unwrap().count(), 0);
    assert_eq!(std::fs::read_dir(&s.images).unwrap().count(), 0);
}

/// Files only: the names that lead to the task's own inodes (the "ab" file's hard link, the
/// O_TMPFILE's link) are gone again before the thaw, so the task, running again, sees every
/// link count, size and offset as before the take; the orphan's clone (a new inode, which the
/// task cannot see) keeps its live name until after the thaw, and is gone when take reports.
#[test]
fn own_inode_names_are_gone_before_the_thaw() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("ufiles.log");
    let scen = ["setup", s.dir.to_str().unwrap(), "ab", "tmpfile", "orphan:100000"];
    let p = Proc::start(&prog("ufiles"), &scen, &log);
    let before = report_after(&log, 0);
    assert!(before.iter().any(|l| l.contains("nlink=1")) && before.iter().any(|l| l.contains("nlink=0")));
    let hooks = Hooks::new(s.work.path().join("hooks"), &["take-unfrozen"]);
    let pid = p.pid.to_string();
    let images = s.images.to_str().unwrap();
    let mut child = hooks
        .command(&["take", "--pid", &pid, "--snapshot", "btrfs", "--image-root", images])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    hooks.wait_reached("take-unfrozen", "the stage after the thaw");
    let from = std::fs::metadata(&log).unwrap().len() as usize;
    assert_eq!(self_check(p.pid, &log, from), before, "the running task sees a name snapckpt made");
    let names = || std::fs::read_dir(s.fs.path("lost+found/checkpoint")).unwrap().count();
    assert_eq!(names(), 1, "the orphan's clone keeps its name until after the thaw");
    hooks.release("take-unfrozen");
    assert!(child.wait().unwrap().success());
    assert_eq!(names(), 0);
}

/// --leave-running: after the dump the task goes on (thawed), and the checkpoint restarts
/// once the original is gone.
#[test]
fn criu_leave_running() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(
        &prog("ufiles"),
        &["setup", s.dir.to_str().unwrap(), "orphan:1000000", "ab"],
        &log,
    );
    let before = report_after(&log, 0);
    let id = take_criu(&s, p.pid, &["--leave-running"]);
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    // still running and not stopped: it answers a self-check
    assert_eq!(self_check(p.pid, &log, logsize), before);
    p.child.kill().unwrap();
    p.child.wait().unwrap();
    sh(&format!("truncate -s {logsize} '{}'", log.display()));
    restart_side(&s, &id, "r");
    assert_eq!(self_check(p.pid, &log, logsize), before);
    kill_wait(p.pid);
    delete_forced(&s, &id);
}

/// --leave-stopped: after the dump the task stays frozen as it was frozen (SIGSTOP for a pid,
/// `cgroup.freeze` for a cgroup v2), the watchdog does not thaw it, take prints the command
/// that resumes it, and after that command it goes on unchanged; the checkpoint restarts once
/// the original is gone.
#[test]
fn criu_leave_stopped() {
    let _g = serial();
    let s = setup("1G");
    for use_cgroup in [false, true] {
        let what = if use_cgroup { "cgroup v2" } else { "sigstop" };
        let log = s.work.path().join(format!("ufiles-{what}.log"));
        let dir = s.dir.join(format!("ls-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = Proc::start_setsid(
            &prog("ufiles"),
            &["setup", dir.to_str().unwrap(), "orphan:1000000", "ab"],
            &log,
        );
        let cgroup = use_cgroup.then(|| Cgroup::new(Cg::V2, "criu-ls"));
        let mut args: Vec<String> = vec!["take".into()];
        if let Some(cg) = &cgroup {
            cg.add(p.pid);
            args.extend(["--cgroup".into(), cg.arg()]);
        } else {
            args.extend(["--pid".into(), p.pid.to_string()]);
        }
        args.extend(
            [
                "--engine",
                "criu",
                "--snapshot",
                "btrfs",
                "--leave-stopped",
                "--image-root",
                s.images.to_str().unwrap(),
            ]
            .map(String::from),
        );
        let before = report_after(&log, 0);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = snapckpt_ok(&a);
        let id = take_id(&out);
        let resume = out
            .lines()
            .find_map(|l| l.split("to resume them: ").nth(1))
            .unwrap_or_else(|| panic!("{what}: no resume command in:\n{out}"))
            .to_string();
        // stays frozen: the watchdog is gone and did not thaw
        std::thread::sleep(Duration::from_millis(500));
        let st = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).unwrap();
        if let Some(cg) = &cgroup {
            assert!(cg.frozen(), "{what}: cgroup thawed");
            assert_eq!(resume, format!("echo 0 > {}/cgroup.freeze", cg.path.display()));
        } else {
            assert!(st.contains(") T "), "{what}: not stopped: {st}");
            assert_eq!(resume, format!("kill -CONT {}", p.pid));
        }
        assert!(
            !std::fs::read_to_string(format!("/proc/{}/status", p.pid))
                .unwrap()
                .lines()
                .any(|l| l.starts_with("TracerPid:") && !l.ends_with("\t0")),
            "{what}: still traced"
        );
        // the printed command resumes it, unchanged
        sh(&resume);
        let logsize = std::fs::metadata(&log).unwrap().len() as usize;
        assert_eq!(self_check(p.pid, &log, logsize), before, "{what}");
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        if let Some(cg) = &cgroup {
            std::fs::remove_dir(&cg.path).unwrap();
        }
        sh(&format!("truncate -s {logsize} '{}'", log.display()));
        let rec = record(&s.images.join(&id));
        assert_eq!(rec["engine"]["leave_stopped"], true, "{what}: {}", rec["engine"]);
        restart_side(&s, &id, &format!("r-{}", unique()));
        assert_eq!(self_check(p.pid, &log, logsize), before, "{what}: restored");
        kill_wait(p.pid);
        delete_forced(&s, &id);
    }
}

/// CRIU dumps a whole process tree: `--pid P` (without `--tree`) of a process with children is
/// refused before anything is frozen; with `--tree` it works.
#[test]
fn criu_pid_with_children_needs_tree() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("tree.log");
    let script =
        format!("sleep 1000 & exec '{}' setup '{}' orphan:1000", prog("ufiles").display(), s.dir.display());
    let p = Proc::start_setsid(Path::new("/bin/sh"), &["-c", &script], &log);
    let pid = p.pid.to_string();
    let ir = s.images.to_str().unwrap();
    let (ok, _, err) = snapckpt(&["take", "--pid", &pid, "--engine", "criu", "--image-root", ir]);
    assert!(!ok && err.contains("add --tree") && err.contains("nothing was changed"), "{err}");
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    assert!(!st.contains(") T "), "left stopped: {st}");
    let out = snapckpt_ok(&["take", "--pid", &pid, "--tree", "--engine", "criu", "--image-root", ir]);
    let id = take_id(&out);
    wait_gone(p.pid);
    delete_forced(&s, &id);
}

/// A `restart --mount-root` mounts its clone in the host's mount namespace; a private mount
/// namespace alive at that moment (a slave of the host's, as a restart's own is) receives a
/// copy by propagation. That copy goes when the host's mount is unmounted, so it does not make
/// `delete --force` refuse ("in use ... in its own mount namespace"): the delete works and the
/// copy is gone from that namespace too.
#[test]
fn delete_force_ignores_propagated_copies_of_host_clone_mounts() {
    let _g = serial();
    let s = setup("1G");
    let log = s.work.path().join("ufiles.log");
    let mut p = Proc::start_setsid(
        &prog("ufiles"),
        &["setup", s.dir.to_str().unwrap(), "orphan:1048576", "twofds"],
        &log,
    );
    let id = take_criu(&s, p.pid, &[]);
    p.child.wait().unwrap();
    // The mount root a shared mount (as / is on most systems), so mounts under it propagate.
    let root = s.work.path().join("r");
    std::fs::create_dir_all(&root).unwrap();
    sh(&format!("mount --bind '{0}' '{0}' && mount --make-shared '{0}'", root.display()));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(root.clone());
    let ready = s.work.path().join("ns-ready");
    let holder = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "slave", "sh", "-c"])
        .arg(format!("echo ready > '{}' && exec sleep 600", ready.display()))
        .spawn()
        .unwrap();
    let holder = Proc { pid: holder.id() as i32, child: holder };
    wait_for(|| ready.exists(), Duration::from_secs(10), "namespace");
    assert_eq!(restart_side(&s, &id, "r"), root);
    let _k = KillOnDrop(vec![p.pid]);
    let clone_in = |pid: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
            .unwrap()
            .lines()
            .filter(|l| l.contains(&format!("/{id}/restart-")))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let host = clone_in("self");
    let copies = clone_in(&holder.pid.to_string());
    assert!(
        host.iter().any(|l| l.contains(root.to_str().unwrap()) && l.contains(" shared:")),
        "the host's clone mount is shared: {host:?}"
    );
    assert!(copies.iter().any(|l| l.contains(" master:")), "the namespace received a slave copy: {copies:?}");
    kill_wait(p.pid);
    // A clone that restored tasks use in their own namespace still refuses it.
    let images = s.images.to_str().unwrap();
    snapckpt_ok(&["restart", &id, "--snapshot", "--image-root", images]);
    let (ok, _, err) = snapckpt(&["delete", &id, "--force", "--image-root", images]);
    assert!(
        !ok && err.contains("in their own mount namespace")
            && err.contains(&format!("pid {} (ufiles)", p.pid)),
        "{err}"
    );
    assert!(!err.contains(root.to_str().unwrap()), "the propagated copy is not named: {err}");
    kill_wait(p.pid);
    let (ok, out, err) = snapckpt(&["delete", &id, "--force", "--image-root", images]);
    assert!(ok, "delete --force refused over a propagated copy: {out}\n{err}");
    assert!(clone_in(&holder.pid.to_string()).is_empty(), "the copy went with the host's mount");
    assert!(clone_in("self").is_empty());
    assert!(!s.fs.path(&format!(".snapckpt/{id}")).exists());
}
