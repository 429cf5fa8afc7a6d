//! A restarted task cannot tell: what it reads back from /proc/self/fd, its maps and getcwd,
//! link counts, sizes, offsets, inode numbers and open flags are as at the checkpoint; linked
//! files too; the host keeps its view; filesystems without a snapshot are covered as the
//! record says. Real CRIU, real loop filesystems, a workload that reports on itself
//! (integration/progs/fidelity.c). Run as root.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The report lines (FD/MAP/CWD/SOCK) a fidelity process printed after `from` bytes of its
/// log, up to "ready" or "checked".
fn report_after(log: &Path, from: usize) -> Vec<String> {
    let s = std::fs::read(log).unwrap();
    let s = String::from_utf8_lossy(&s[from.min(s.len())..]).into_owned();
    let s = s.split("ready").next().unwrap().split("checked").next().unwrap().to_string();
    let keep = ["FD ", "MAP ", "CWD ", "SOCK "];
    s.lines().filter(|l| keep.iter().any(|k| l.starts_with(k))).map(str::to_string).collect()
}

/// Ask a restored fidelity process for its report.
fn self_check(pid: i32, log: &Path, from: usize) -> Vec<String> {
    ask_report(pid, log, from);
    report_after(log, from)
}

/// A report line without its `ino=` field (a preserved copy or clone is a new inode).
fn without_ino(l: &str) -> String {
    l.split(' ').filter(|w| !w.starts_with("ino=")).collect::<Vec<_>>().join(" ")
}

struct Rig {
    fs: LoopFs,
    work: Scratch,
    images: PathBuf,
    dir: PathBuf,
    log: PathBuf,
}

fn rig(fstype: &str, tag: &str) -> Rig {
    let fs = LoopFs::new(fstype, "1G");
    let work = Scratch::new(tag);
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let images = work.path().join("images");
    let log = work.path().join("fidelity.log");
    Rig { fs, work, images, dir, log }
}

fn restart(r: &Rig, id: &str, extra: &[&str]) -> String {
    let ir = r.images.to_str().unwrap();
    let mut args = vec!["restart", id, "--image-root", ir];
    args.extend_from_slice(extra);
    snapckpt_ok(&args)
}

/// The task (killed by the take) restarted from the snapshot reads back `before`; then ended
/// and the checkpoint deleted.
fn restart_reads_back(r: &Rig, id: &str, p: Proc, before: &std::collections::BTreeMap<i32, String>) {
    let logsize = std::fs::metadata(&r.log).unwrap().len() as usize;
    restart_then(r, id, p, |pid| {
        ask_report(pid, &r.log, logsize);
        assert_eq!(&fd_lines(&read(&r.log)[logsize..]), before);
    });
}

/// The task (killed by the take) restarted from the snapshot, `check`ed, then ended and the
/// checkpoint deleted.
fn restart_then(r: &Rig, id: &str, p: Proc, check: impl FnOnce(i32)) {
    let pid = p.pid;
    wait_gone(pid);
    drop(p);
    restart(r, id, &["--snapshot"]);
    check(pid);
    kill_wait(pid);
    snapckpt_ok(&["delete", id, "--image-root", r.images.to_str().unwrap()]);
}

/// Every kind of unlinked object, with every open flag CRIU restores: after a restart from
/// the snapshot (in its private mount namespace) the task reads back exactly what it read
/// before, twice; the host never sees the clone; link counts are back as recorded.
#[test]
fn every_object_reads_back_as_before() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-all");
    let p = workload(&prog("fidelity"), &[r.dir.to_str().unwrap()], &r.log, true, None);
    let before = report_after(&r.log, 0);
    assert!(
        before.iter().any(|l| l.contains("nofollow (deleted)") && l.contains("getfl=500002")),
        "{before:?}"
    );
    let id = take_id(&take_ok(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]));
    let pid = p.pid;
    wait_gone(pid);
    drop(p);
    let logsize = std::fs::metadata(&r.log).unwrap().len();
    std::fs::write(r.fs.path("live-only"), "live").unwrap();
    let ck = record(&r.images.join(&id));
    let name_gone_ino: Vec<u64> = ck["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["class"] == "name-gone")
        .map(|o| o["ino"].as_u64().unwrap())
        .collect();
    assert_eq!(name_gone_ino.len(), 1, "{ck}");
    for round in 0..2 {
        // CRIU reopens the (linked) log at the size it had at the dump
        std::fs::OpenOptions::new().write(true).open(&r.log).unwrap().set_len(logsize).unwrap();
        let out = restart(&r, &id, &["--snapshot"]);
        assert!(out.contains("private mount namespace"), "{out}");
        assert!(r.fs.path("live-only").exists(), "round {round}: the host sees the clone");
        assert!(
            !mounts_under(&r.fs.mnt).iter().any(|m| Path::new(m) != r.fs.mnt),
            "round {round}: a mount on the host"
        );
        let after = self_check(pid, &r.log, logsize as usize);
        // same names, flags, offsets, link counts, sizes, contents, maps, cwd, socket
        assert_eq!(
            after.iter().map(|l| without_ino(l)).collect::<Vec<_>>(),
            before.iter().map(|l| without_ino(l)).collect::<Vec<_>>(),
            "round {round}"
        );
        // the name-gone file is the same inode (a hard link carried it)
        let ino = format!("ino={}", name_gone_ino[0]);
        assert!(after.iter().any(|l| l.contains("append (deleted)") && l.contains(&ino)), "{after:?}");
        kill_wait(pid);
    }
    snapckpt_ok(&["delete", &id, "--image-root", r.images.to_str().unwrap()]);
}

/// A task holding only linked files (its cwd an ordinary directory) is snapshotted too, and
/// restarts from the snapshot seeing the files as they were at the checkpoint, although the
/// live files changed since.
#[test]
fn linked_files_come_back_at_checkpoint_state() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-linked");
    let p = workload(&prog("fidelity"), &[r.dir.to_str().unwrap(), "linked-only"], &r.log, true, None);
    let before = report_after(&r.log, 0);
    let out = take_ok(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]);
    let id = take_id(&out);
    let ck = record(&r.images.join(&id));
    assert_eq!(ck["objects"].as_array().unwrap().len(), 0, "{ck}");
    assert_eq!(ck["snapshots"].as_array().unwrap().len(), 1, "nothing unlinked, still a snapshot: {out}");
    let pid = p.pid;
    wait_gone(pid);
    drop(p);
    let logsize = std::fs::metadata(&r.log).unwrap().len();
    // the live files change after the checkpoint
    std::fs::OpenOptions::new().append(true).open(r.dir.join("linked.log")).unwrap();
    sh(&format!("echo more >> '{}'", r.dir.join("linked.log").display()));
    sh(&format!("truncate -s 10 '{}'", r.dir.join("linked.dat").display()));
    restart(&r, &id, &["--snapshot"]);
    let after = self_check(pid, &r.log, logsize as usize);
    assert_eq!(after, before);
    assert!(after.iter().any(|l| l.contains("linked.log") && l.contains("size=3000")), "{after:?}");
    kill_wait(pid);
    // the host still has the changed live files
    assert_eq!(std::fs::metadata(r.dir.join("linked.dat")).unwrap().len(), 10);
}

/// Unlinked files on a tmpfs are carried by CRIU (memory anyway), those on an ext4 that has
/// no snapshot keep their relinked names there (one-shot): both recorded, both restart.
#[test]
fn filesystems_without_snapshot_are_covered() {
    let _g = serial();
    for (fstype, coverage) in [("tmpfs", "engine-carries"), ("ext4", "names-kept")] {
        let r = rig(fstype, "fidelity-nosnap");
        let log = r.log.clone();
        let p = workload(
            &prog("ufiles"),
            &["setup", r.dir.to_str().unwrap(), "orphan:300000", "twofds"],
            &log,
            true,
            None,
        );
        let before = fd_lines(&first_report(&log));
        let out = take_ok(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]);
        let id = take_id(&out);
        let ck = record(&r.images.join(&id));
        let fss = ck["filesystems"].as_array().unwrap();
        let mine = fss
            .iter()
            .find(|f| f["mount_point"] == r.fs.mnt.to_str().unwrap())
            .unwrap_or_else(|| panic!("{ck}"));
        assert_eq!(mine["coverage"], coverage, "{fstype}: {ck}");
        assert!(ck["snapshots"].as_array().unwrap().is_empty(), "{fstype}: {ck}");
        let pid = p.pid;
        wait_gone(pid);
        drop(p);
        let logsize = std::fs::metadata(&log).unwrap().len();
        restart(&r, &id, &[]);
        wait_paused(pid);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).unwrap();
        wait_for(
            || read(&log)[logsize as usize..].contains("checked"),
            Duration::from_secs(30),
            "self check",
        );
        let after = fd_lines(&read(&log)[logsize as usize..]);
        assert_eq!(after, before, "{fstype}");
        kill_wait(pid);
        if fstype == "ext4" {
            // the names were consumed: a second restart says so
            let (ok, _, err) = snapckpt(&["restart", &id, "--image-root", r.images.to_str().unwrap()]);
            assert!(!ok && err.contains("consumes"), "{err}");
        }
    }
}

/// What CRIU would refuse after the freeze is refused before it: a tree whose root is not a
/// session leader, a filesystem `--strict-snapshots` cannot snapshot, a `--mount-root` that
/// does not exist. The task goes on untouched.
#[test]
fn refused_up_front() {
    let _g = serial();
    let r = rig("ext4", "fidelity-refused");
    let p = shell_job(&prog("ufiles"), &["setup", r.dir.to_str().unwrap(), "orphan:1000"], &r.log);
    let (ok, _, err) = take(p.pid, &r.images, &["--engine", "criu"]);
    assert!(!ok && err.contains("is not a session leader") && err.contains("setsid"), "{err}");
    assert!(alive(p.pid) && !stopped(p.pid));
    assert!(checkpoint_names(&r.fs.mnt).is_empty());
    drop(p);
    let p = workload(&prog("ufiles"), &["setup", r.dir.to_str().unwrap(), "orphan:1000"], &r.log, true, None);
    let (ok, _, err) =
        take(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs", "--strict-snapshots"]);
    assert!(!ok && err.contains("cannot be snapshotted") && err.contains("nothing was changed"), "{err}");
    assert!(alive(p.pid) && !stopped(p.pid));
    assert!(checkpoint_names(&r.fs.mnt).is_empty());
    let id = take_id(&take_ok(p.pid, &r.images, &["--snapshot", "btrfs"]));
    let missing = r.work.path().join("no-such-dir");
    let (ok, _, err) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        r.images.to_str().unwrap(),
        "--snapshot",
        "--mount-root",
        missing.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no such directory") && !missing.exists(), "{err}");
}

/// An io_uring instance, which CRIU cannot dump, is refused before anything is frozen, with
/// the way out; the task goes on untouched.
#[test]
fn io_uring_refused_before_the_freeze() {
    let _g = serial();
    let work = Scratch::new("fidelity-uring");
    let p = workload(&prog("uring"), &[], &work.path().join("log"), true, None);
    let images = work.path().join("images");
    let (ok, _, err) = take(p.pid, &images, &["--engine", "criu"]);
    assert!(!ok && err.contains("io_uring") && err.contains("nothing was changed"), "{err}");
    assert!(alive(p.pid) && !stopped(p.pid));
    assert!(!images.exists() || std::fs::read_dir(&images).unwrap().next().is_none());
}

/// The host pids and the init's host pid a `restart --private-pids` printed.
fn private_pids_of(out: &str) -> (Vec<i32>, i32) {
    let l = out.lines().find(|l| l.starts_with("in a new pid namespace: host pids [")).expect(out);
    let list = l.split('[').nth(1).unwrap().split(']').next().unwrap();
    let hosts = list.split(',').map(|p| p.trim().parse().unwrap()).collect();
    let init = l.rsplit("host pid ").next().unwrap().trim_end_matches(')').parse().unwrap();
    (hosts, init)
}

/// The report a restored pidself process (host pid `host`) writes into its cwd on SIGUSR1,
/// read through its own cwd (its clone, in its mount namespace).
fn pidself_report(host: i32) -> String {
    let report = PathBuf::from(format!("/proc/{host}/cwd/report"));
    let _ = std::fs::remove_file(&report);
    wait_paused(host);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), nix::sys::signal::Signal::SIGUSR1).unwrap();
    wait_for(|| report.exists(), Duration::from_secs(30), "pidself report");
    read(&report).trim().to_string()
}

/// One checkpoint restarted twice at the same time with --private-pids, while a normal restart
/// of it holds the recorded pid on the host (a second normal one is refused, naming the
/// option): both restored tasks run side by side at the original paths, each in a pid
/// namespace of its own where getpid, /proc/self and /proc/self/status give the recorded pid,
/// each reading its file (held open and by path) as at the checkpoint, while the host sees the
/// live filesystem and no mount; each namespace's init exits with its task. A restart says
/// once that the clone has another st_dev.
#[test]
fn two_restarts_side_by_side_with_private_pids() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-pidns");
    let p = workload(&prog("pidself"), &[r.dir.to_str().unwrap()], &r.log, true, None);
    let pid = p.pid;
    let id = take_id(&take_ok(pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]));
    wait_gone(pid);
    drop(p);
    std::fs::write(r.dir.join("data"), "live data after the checkpoint\n").unwrap();
    let ir = r.images.to_str().unwrap();
    restart(&r, &id, &["--snapshot"]);
    let mut left = KillOnDrop(vec![pid]);
    assert!(alive(pid), "the normal restart has the recorded pid");
    let (ok, _, err) = snapckpt(&["restart", &id, "--image-root", ir, "--snapshot"]);
    assert!(!ok && err.contains("is in use") && err.contains("--private-pids"), "{err}");
    let args = ["restart", id.as_str(), "--image-root", ir, "--snapshot", "--private-pids"];
    let run = || {
        std::process::Command::new(snapckpt_bin())
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let both = [run(), run()].map(|c| c.wait_with_output().unwrap());
    // whatever happens below, no restored task outlives the test
    for o in both.iter().filter(|o| o.status.success()) {
        left.0.extend(private_pids_of(&String::from_utf8_lossy(&o.stdout)).0);
    }
    let mut restored = vec![];
    for o in &both {
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "restart failed\nstdout: {out}\nstderr: {err}");
        assert!(out.contains(&format!("restored tasks [{pid}]")), "{out}");
        assert_eq!(err.matches("keep their inode numbers but not their device number").count(), 1, "{err}");
        restored.push(private_pids_of(&out));
    }
    let hosts: Vec<i32> = restored.iter().map(|(h, _)| h[0]).collect();
    assert!(hosts[0] != hosts[1] && !hosts.contains(&pid), "{hosts:?}");
    let want = format!(
        "getpid={pid} self={pid} status={pid} held=data at the checkpoint bypath=data at the checkpoint"
    );
    for &h in &hosts {
        assert!(alive(h), "restored task {h} is gone");
        assert_eq!(pidself_report(h), want, "host pid {h}");
    }
    assert!(hosts.iter().all(|&h| alive(h)), "both run side by side");
    assert_eq!(read(r.dir.join("data")), "live data after the checkpoint\n", "the host sees the clone");
    assert!(!mounts_under(&r.fs.mnt).iter().any(|m| Path::new(m) != r.fs.mnt), "a mount on the host");
    for (h, init) in restored.iter().map(|(h, i)| (h[0], *i)) {
        assert!(alive(init), "init {init} gone while its task runs");
        kill_wait(h);
        wait_gone(init);
    }
    kill_wait(pid);
    snapckpt_ok(&["delete", &id, "--image-root", ir]);
}

/// An O_TMPFILE opened with O_EXCL cannot be linked (the kernel refuses): it is preserved as a
/// clone, and take says so; the restored fd reads back as before (a new inode).
#[test]
fn tmpfile_with_o_excl_is_cloned_and_take_says_so() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-tmpexcl");
    let p = workload(
        &prog("ufiles"),
        &["setup", r.dir.to_str().unwrap(), "tmpfile-excl", "tmpfile"],
        &r.log,
        true,
        None,
    );
    let before = fd_lines(&first_report(&r.log));
    assert_eq!(before.len(), 2, "{before:?}");
    let (ok, out, err) = take(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]);
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("note: 1 O_TMPFILE file(s) opened with O_EXCL cannot be linked")
            && err.contains("preserved as a clone or copy"),
        "{err}"
    );
    let id = take_id(&out);
    let ck = record(&r.images.join(&id));
    let methods: Vec<(&str, &str)> = ck["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["class"].as_str().unwrap(), o["relinked"]["method"].as_str().unwrap()))
        .collect();
    let mut sorted = methods.clone();
    sorted.sort();
    assert_eq!(sorted, [("tmpfile", "clone"), ("tmpfile", "link")], "{ck}");
    restart_reads_back(&r, &id, p, &before);
}

/// The owner, mode (with its set-id bits) and times of an orphan are those of the preserved
/// clone the restarted task holds: the relink creates the clone with the file's permission
/// bits and sets owner and mode only where they differ (a chown clears the set-id bits, so the
/// mode follows it).
#[test]
fn orphan_owner_mode_and_times_come_back() {
    use std::os::unix::fs::MetadataExt;
    let _g = serial();
    let r = rig("btrfs", "fidelity-orphan-meta");
    let p = workload(&prog("ufiles"), &["setup", r.dir.to_str().unwrap(), "orphan:5000"], &r.log, true, None);
    let fd_of_orphan = std::fs::read_dir(format!("/proc/{}/fd", p.pid))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|f| std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.nlink() == 0))
        .expect("an orphan fd");
    let path = std::ffi::CString::new(fd_of_orphan.to_str().unwrap()).unwrap();
    std::os::unix::fs::chown(&fd_of_orphan, Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(&fd_of_orphan, std::os::unix::fs::PermissionsExt::from_mode(0o4751)).unwrap();
    let times = [
        libc::timespec { tv_sec: 1_500_000_000, tv_nsec: 123_456_789 },
        libc::timespec { tv_sec: 1_600_000_000, tv_nsec: 987_654_321 },
    ];
    // SAFETY: a valid path and two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }, 0);
    let meta = |f: &Path| {
        let m = std::fs::metadata(f).unwrap();
        (m.uid(), m.gid(), m.mode(), m.size(), (m.atime(), m.atime_nsec()), (m.mtime(), m.mtime_nsec()))
    };
    let before = meta(&fd_of_orphan);
    assert_eq!((before.0, before.1, before.2 & 0o7777), (1234, 5678, 0o4751));
    let id = take_id(&take_ok(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]));
    restart_then(&r, &id, p, |_| {
        assert_eq!(meta(&fd_of_orphan), before, "uid, gid, mode, size, atime, mtime of the restored orphan");
    });
}

/// `--shell-job`: a task that is not a session leader (a job of a shell, which leads its
/// session) is refused without it, dumped with it (recorded), and restored as a shell job
/// from the snapshot, reading back as before.
#[test]
fn shell_job_taken_and_restarted() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-shelljob");
    let p = shell_job(&prog("ufiles"), &["setup", r.dir.to_str().unwrap(), "orphan:5000"], &r.log);
    let before = fd_lines(&first_report(&r.log));
    let (ok, _, err) = take(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]);
    assert!(!ok && err.contains("--shell-job"), "{err}");
    assert!(alive(p.pid) && !stopped(p.pid));
    let id = take_id(&take_ok(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs", "--shell-job"]));
    let ck = record(&r.images.join(&id));
    assert_eq!(ck["engine"]["shell_job"], true, "{}", ck["engine"]);
    restart_reads_back(&r, &id, p, &before);
}

/// A task whose session leader is outside its pid namespace (started in a namespace of its
/// own without `setsid`, as a container runtime or a CI runner may): CRIU cannot dump it, not
/// even as a shell job, so the take refuses before the freeze, saying so: nothing relinked,
/// no image directory, the task goes on.
#[test]
fn session_outside_the_pid_namespace_is_refused_up_front() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-outside-session");
    let args = ["setup", r.dir.to_str().unwrap(), "orphan:5000"];
    let p = workload_under(&["unshare", "--pid", "--fork"], &prog("ufiles"), &args, &r.log, false);
    for extra in [&[][..], &["--shell-job"][..]] {
        let (ok, _, err) =
            take(p.pid, &r.images, &[&["--engine", "criu", "--snapshot", "btrfs"], extra].concat());
        assert!(!ok, "{err}");
        assert!(
            err.contains("session leader is outside its pid namespace") && err.contains("setsid"),
            "{err}"
        );
        assert!(err.contains("nothing was changed"), "{err}");
        assert_no_panic(&err);
        assert!(alive(p.pid) && !stopped(p.pid));
        assert!(checkpoint_names(&r.fs.mnt).is_empty(), "nothing relinked");
        let left: Vec<_> = std::fs::read_dir(&r.images).map(|d| d.flatten().collect()).unwrap_or_default();
        assert!(
            left.is_empty(),
            "no image directory: {:?}",
            left.iter().map(|e| e.file_name()).collect::<Vec<_>>()
        );
    }
}

/// A tree in a pid namespace of its own, its root the namespace's init (as a container's
/// init is): CRIU restores it in a new pid namespace, with its pids there and new host pids.
/// The restart names the new host pid, continues the task (taken with the SIGSTOP freezer, it
/// comes back stopped) and does not need the old host pid to be free; `--private-pids` is
/// refused with the reason.
#[test]
fn task_in_its_own_pid_namespace_restarts_running() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-own-pidns");
    let args = ["setup", r.dir.to_str().unwrap(), "orphan:5000"];
    // the task's stderr is not unshare's, which unshare writes to when the dump kills its child
    let wrapper = ["unshare", "--pid", "--fork", "setsid", "sh", "-c", "exec \"$0\" \"$@\" 2>/dev/null"];
    let p = workload_under(&wrapper, &prog("ufiles"), &args, &r.log, false);
    let before = fd_lines(&first_report(&r.log));
    let id = take_id(&take_ok(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]));
    let ck = record(&r.images.join(&id));
    assert_eq!(
        (ck["tasks"][0]["ns_pid"].as_i64(), ck["freezer"].as_str()),
        (Some(1), Some("sigstop")),
        "{ck}"
    );
    let old = p.pid;
    wait_gone(old);
    drop(p);
    let ir = r.images.to_str().unwrap();
    let (ok, _, err) = snapckpt(&["restart", &id, "--image-root", ir, "--snapshot", "--private-pids"]);
    assert!(
        !ok && err.contains("pid namespace of their own") && err.contains("without --private-pids"),
        "{err}"
    );
    // the old host pid now belongs to another process: not in the way of this restore
    let squatter = process_with_pid(old);
    let logsize = std::fs::metadata(&r.log).unwrap().len() as usize;
    let out = restart(&r, &id, &["--snapshot"]);
    let host: i32 = out
        .lines()
        .find_map(|l| l.strip_prefix("restored tasks [")?.split(']').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no restored pid in {out}"));
    let nspid = std::fs::read_to_string(format!("/proc/{host}/status")).unwrap();
    let nspid = nspid.lines().find(|l| l.starts_with("NSpid:")).unwrap().to_string();
    assert!(nspid.ends_with("\t1") && comm(host) == "ufiles", "{out}\n{nspid}");
    assert!(!stopped(host), "the restored task runs (state {:?})", state(host));
    ask_report(host, &r.log, logsize);
    assert_eq!(fd_lines(&read(&r.log)[logsize..]), before);
    drop(squatter);
    kill_wait(host);
    snapckpt_ok(&["delete", &id, "--image-root", ir]);
}

/// A `sleep` with host pid `pid` (free now): ns_last_pid set just below it before each try.
fn process_with_pid(pid: i32) -> Proc {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let child = std::process::Command::new("sleep").arg("1000").spawn().unwrap();
        let p = Proc { pid: child.id() as i32, child };
        if p.pid == pid {
            return p;
        }
    }
    panic!("could not start a process with pid {pid}");
}

/// The restartability check before the tasks end: a preserved object that no longer opens the
/// way the restore opens it (here its relinked name was replaced by a symlink while the tasks
/// were frozen) fails the take in CRIU's post-dump: nothing is published, the task goes on
/// (neither killed nor left stopped), the error says why.
#[test]
fn unrestartable_checkpoint_is_not_published_and_tasks_go_on() {
    use std::process::Stdio;
    let _g = serial();
    let r = rig("btrfs", "fidelity-unrestartable");
    let p = workload(&prog("ufiles"), &["setup", r.dir.to_str().unwrap(), "orphan:5000"], &r.log, true, None);
    let before = fd_lines(&first_report(&r.log));
    let hooks = Hooks::new(r.work.path().join("hooks"), &["take-relinked"]);
    let pid = p.pid.to_string();
    let child = hooks
        .command(&[
            "take",
            "--pid",
            &pid,
            "--engine",
            "criu",
            "--snapshot",
            "btrfs",
            "--image-root",
            r.images.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hooks.wait_reached("take-relinked", "relinked");
    let names = checkpoint_names(&r.fs.mnt);
    assert_eq!(names.len(), 1, "{names:?}");
    let name = checkpoint_dir(&r.fs.mnt).join(&names[0]);
    let kept = checkpoint_dir(&r.fs.mnt).join("kept-aside");
    std::fs::rename(&name, &kept).unwrap();
    std::os::unix::fs::symlink("kept-aside", &name).unwrap();
    hooks.release("take-relinked");
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("could not be restarted, so it was not published and the tasks go on"), "{err}");
    assert_no_panic(&err);
    assert!(alive(p.pid) && !stopped(p.pid), "the task goes on");
    let published: Vec<String> = std::fs::read_dir(&r.images)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(published.iter().all(|n| n.starts_with('.')), "nothing published: {published:?}");
    // the task is untouched: it reports what it held before
    let from = std::fs::metadata(&r.log).unwrap().len() as usize;
    ask_report(p.pid, &r.log, from);
    assert_eq!(fd_lines(&read(&r.log)[from..]), before);
}

/// File locks (CRIU's `--file-locks`, always on): a task holding a flock and an open file
/// description (OFD) write lock on a file is restored holding both (fdinfo shows them; another process cannot take
/// them), twice from one snapshot.
#[test]
fn file_locks_held_after_restart() {
    let _g = serial();
    let r = rig("btrfs", "fidelity-locks");
    let p = workload(&prog("ufiles"), &["setup", r.dir.to_str().unwrap(), "locks"], &r.log, true, None);
    let locked = r.dir.join("locked");
    let locks = |pid: i32| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .unwrap()
            .flatten()
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.starts_with("lock:"))
            .map(|l| l.split_whitespace().skip(2).take(3).collect::<Vec<_>>().join(" "))
            .collect();
        v.sort();
        v
    };
    let want = ["FLOCK ADVISORY WRITE", "OFDLCK ADVISORY WRITE"];
    assert_eq!(locks(p.pid), want);
    // `flock -n` / a POSIX lock attempt from another process fails on the file the task sees
    let others_locked_out = |path: &Path| {
        let f = path.display();
        let fl = std::process::Command::new("flock").args(["-n", &f.to_string(), "true"]).status().unwrap();
        let posix = std::process::Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys; f=open(sys.argv[1],'r+'); fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, 10)",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        !fl.success() && !posix.success()
    };
    assert!(others_locked_out(&locked));
    let id = take_id(&take_ok(p.pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]));
    let pid = p.pid;
    wait_gone(pid);
    drop(p);
    for round in 1..=2 {
        restart(&r, &id, &["--snapshot"]);
        assert_eq!(locks(pid), want, "round {round}");
        let seen = PathBuf::from(format!("/proc/{pid}/root")).join(locked.strip_prefix("/").unwrap());
        assert!(others_locked_out(&seen), "round {round}: the restored task holds the locks");
        kill_wait(pid);
    }
    snapckpt_ok(&["delete", &id, "--image-root", r.images.to_str().unwrap()]);
}
