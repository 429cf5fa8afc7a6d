//! Trust and failure: a record or an image root a user could change steers nothing root does;
//! a restart killed at any moment strands no task and leaves nothing `gc` cannot clear; a
//! take whose filesystem goes read-only leaves what plain `gc` removes; a hung CRIU is
//! stopped. Real CRIU, real loop filesystems, real processes. Run as root.

use crate::common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The mount points at exactly `p` in the test's (the host's) mount namespace.
fn mounted_at(p: &str) -> usize {
    read("/proc/self/mountinfo").lines().filter(|l| l.split(' ').nth(4) == Some(p)).count()
}

/// A record edited so that its snapshot (and objects) name `/etc` or `/`: restart refuses
/// to mount the clone there, in the host's namespace or a private one; nothing is mounted.
#[test]
fn edited_record_mounts_nothing_over_etc() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("trust-record");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = workload(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:10000"], &log, true, None);
    let images = work.path().join("images");
    let (id, idir) = take_files_only(p.pid, &images, &["--snapshot", "btrfs"]);
    drop(p);
    let original = std::fs::read(idir.join("checkpoint.json")).unwrap();
    for target in ["/etc", "/"] {
        let mut r: serde_json::Value = serde_json::from_slice(&original).unwrap();
        r["snapshots"][0]["mount_point"] = target.into();
        for o in r["objects"].as_array_mut().unwrap() {
            o["mount"]["mount_point"] = target.into();
        }
        std::fs::write(idir.join("checkpoint.json"), serde_json::to_vec_pretty(&r).unwrap()).unwrap();
        let before = mounted_at(target);
        let ir = images.to_str().unwrap();
        let ufiles = prog("ufiles");
        for extra in [vec!["--host-mounts"], vec!["--exec", ufiles.to_str().unwrap(), "report"]] {
            let mut args = vec!["restart", id.as_str(), "--image-root", ir, "--snapshot"];
            args.extend(extra.iter().copied());
            let (ok, out, err) = snapckpt(&args);
            assert!(!ok, "{target} {extra:?}: restart went through:\n{out}\n{err}");
            assert!(err.contains("origin"), "{target}: {err}");
            assert_eq!(mounted_at(target), before, "{target}: something was mounted there");
        }
    }
    std::fs::write(idir.join("checkpoint.json"), &original).unwrap();
    snapckpt_ok(&["delete", &id, "--image-root", images.to_str().unwrap()]);
}

/// A loop btrfs with a `ufiles` workload (a session leader) holding a 10 kB orphan in its
/// directory `d`: the filesystem, a scratch directory named `tag` (the workload logs to its
/// `log`), the workload.
fn orphan_workload(tag: &str) -> (LoopFs, Scratch, Proc) {
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new(tag);
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:10000"],
        &work.path().join("log"),
        true,
        None,
    );
    (fs, work, p)
}

/// An image root that a user owns, or that sits in a directory a user can write to, is
/// refused before anything is frozen or written; the user cannot plant anything in a root
/// snapckpt made (root-owned 0700).
#[test]
fn image_root_is_a_boundary() {
    let _g = serial();
    let (fs, work, p) = orphan_workload("trust-root");
    let users = work.path().join("users");
    std::fs::create_dir_all(&users).unwrap();
    sh(&format!("chown 65534:65534 '{}'", users.display()));
    let open_parent = work.path().join("open");
    std::fs::create_dir_all(&open_parent).unwrap();
    std::fs::set_permissions(&open_parent, std::fs::Permissions::from_mode(0o777)).unwrap();
    for root in [users.clone(), open_parent.join("images")] {
        let (ok, _, err) = take(p.pid, &root, &["--snapshot", "btrfs"]);
        assert!(!ok && err.contains("image root"), "{}: {err}", root.display());
        assert!(alive(p.pid) && !stopped(p.pid));
        assert!(checkpoint_names(&fs.mnt).is_empty());
        assert!(
            !root.exists() || std::fs::read_dir(&root).unwrap().next().is_none(),
            "{} written",
            root.display()
        );
    }
    // a root snapckpt makes is root's, 0700: a user cannot swap entries in it
    let good = work.path().join("images");
    let id = take_id(&take_ok(p.pid, &good, &["--snapshot", "btrfs"]));
    let md = std::fs::metadata(&good).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    let planted = good.join(format!(".{id}.partial"));
    let st = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ln", "-s", "/etc"])
        .arg(&planted)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!st.success() && !planted.exists(), "a non-root user could write into the image root");
    snapckpt_ok(&["delete", &id, "--image-root", good.to_str().unwrap()]);
}

/// A CRIU whose clone calls are slowed (strace's syscall delay injection on the CRIU that
/// snapckpt starts), so that a restart lasts long enough for a kill to land inside the restore.
fn slowed_criu(dir: &std::path::Path) -> PathBuf {
    let wrapper = dir.join("slow-criu");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh
exec strace -o /dev/null -e trace=clone,clone3,fork,vfork -e inject=clone,clone3,fork,vfork:delay_exit=150000 '{}' \"$@\"\n",
            criu_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}

/// Restarts of a SIGSTOP checkpoint killed at random moments (before, during and after the
/// CRIU restore; CRIU slowed down so that many kills land inside it): no restored task is ever
/// left stopped, none runs with its relinked names present (the orphan's fd has link count
/// 0), the host sees no mount, and `gc` removes the clones the killed restarts left; a
/// restart after the storm works.
#[test]
fn restart_storm() {
    storm(None);
}

/// The same for a cgroup v2 checkpoint: also the cgroup is never left frozen.
#[test]
fn restart_storm_cgroup() {
    storm(Some(Cgroup::new(Cg::V2, "trust-storm")));
}

fn storm(cg: Option<Cgroup>) {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "1G");
    let work = Scratch::new("trust-storm");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:200000"],
        &log,
        true,
        cg.as_ref(),
    );
    let pid = p.pid;
    let images = work.path().join("images");
    let mut args: Vec<String> =
        ["take", "--image-root", images.to_str().unwrap(), "--engine", "criu", "--snapshot", "btrfs"]
            .map(String::from)
            .to_vec();
    match &cg {
        Some(c) => args.extend(["--cgroup".to_string(), c.arg()]),
        None => args.extend(["--pid".to_string(), pid.to_string()]),
    }
    let id = take_id(&snapckpt_ok(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    wait_gone(pid);
    drop(p);
    let logsize = std::fs::metadata(&log).unwrap().len();
    let ir = images.to_str().unwrap().to_string();
    let slow = slowed_criu(work.path());
    let slow_s = slow.to_str().unwrap().to_string();
    // how long a whole slowed restart takes: the kills are spread over it
    let t0 = Instant::now();
    snapckpt_ok(&["restart", &id, "--image-root", &ir, "--snapshot", "--criu", &slow_s]);
    let whole = t0.elapsed().as_millis() as u64;
    assert!(alive(pid));
    kill_wait(pid);
    // xorshift, seeded from the clock (printed, to replay a failure)
    let mut x =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    eprintln!("restart storm seed {x}");
    let (mut restored, mut none, mut inside) = (0, 0, 0);
    for round in 0..16 {
        std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(logsize).unwrap();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let delay = Duration::from_millis(x % (whole + 100));
        let mut child = std::process::Command::new(snapckpt_bin())
            .args(["restart", &id, "--image-root", &ir, "--snapshot", "--criu", &slow_s])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let helpers: Vec<i32> = descendants(child.id() as i32).into_iter().filter(|&d| d != pid).collect();
        inside += helpers.iter().any(|&d| matches!(comm(d).as_str(), "criu" | "strace")) as usize;
        let _ = child.kill();
        let _ = child.wait();
        // the CRIU it started notices and ends (slowed down, it takes a while): only then is
        // it known whether a task was restored
        wait_for(
            || helpers.iter().all(|&h| !alive(h)),
            Duration::from_secs(30),
            "the restart's helpers to end",
        );
        let what = format!("round {round}, killed after {delay:?}");
        std::thread::sleep(Duration::from_millis(300));
        if alive(pid) {
            restored += 1;
            let t0 = Instant::now();
            while stopped(pid) && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(!stopped(pid), "{what}: the restored task is left stopped");
            if let Some(c) = &cg {
                assert!(!c.frozen(), "{what}: the restored task's cgroup is left frozen");
            }
            let nlinks: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .flatten()
                .filter(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("(deleted)"))
                })
                .map(|e| std::os::unix::fs::MetadataExt::nlink(&std::fs::metadata(e.path()).unwrap()))
                .collect();
            assert!(
                !nlinks.is_empty() && nlinks.iter().all(|&n| n == 0),
                "{what}: names present: {nlinks:?}"
            );
            kill_wait(pid);
        } else {
            none += 1;
        }
        assert_eq!(mounts_under(&fs.mnt).len(), 1, "{what}: a mount on the host");
    }
    eprintln!(
        "restart storm: {restored} restored, {none} not restored, {inside} killed inside CRIU (a whole restart: {whole} ms)"
    );
    assert!(inside >= 3, "only {inside} of 16 kills landed inside CRIU's restore");
    let out = snapckpt_ok(&["gc", "--image-root", &ir, "--mount", fs.mnt.to_str().unwrap()]);
    let left: Vec<PathBuf> = std::fs::read_dir(fs.path(&format!(".snapckpt/{id}")))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap() != "snapshot")
        .collect();
    assert!(left.is_empty(), "gc left clones {left:?}:\n{out}");
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(logsize).unwrap();
    snapckpt_ok(&["restart", &id, "--image-root", &ir, "--snapshot"]);
    assert!(alive(pid));
    kill_wait(pid);
}

/// A take whose undo cannot remove its relinked names (the filesystem went read-only; here
/// the checkpoint directory is made immutable at the moment the take relinked): the take
/// fails, keeps a trace, and plain `gc` (no --id) removes the names once they can be removed.
#[test]
fn undo_that_cannot_remove_names_leaves_what_gc_removes() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("trust-undo");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:10000", "ab"],
        &work.path().join("log"),
        true,
        None,
    );
    let images = work.path().join("images");
    let hooks = Hooks::new(work.path().join("hooks"), &["take-relinked"]);
    let pid = p.pid.to_string();
    let ir = images.to_str().unwrap();
    let child = hooks
        .command(&["take", "--pid", &pid, "--image-root", ir, "--snapshot", "btrfs"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hooks.wait_reached("take-relinked", "relinked");
    assert!(!checkpoint_names(&fs.mnt).is_empty());
    let ckdir = fs.path("lost+found/checkpoint");
    sh(&format!("chattr +i '{}'", ckdir.display()));
    hooks.release("take-relinked");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    sh(&format!("chattr -i '{}'", ckdir.display()));
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("snapckpt gc"), "{err}");
    assert!(alive(p.pid) && !stopped(p.pid));
    assert!(!checkpoint_names(&fs.mnt).is_empty(), "the names could be removed after all: {err}");
    let gc = snapckpt_ok(&["gc", "--image-root", ir, "--mount", fs.mnt.to_str().unwrap()]);
    assert!(checkpoint_names(&fs.mnt).is_empty(), "plain gc left names:\n{gc}\n(take said: {err})");
    assert!(std::fs::read_dir(&images).unwrap().next().is_none(), "gc left traces in the image root");
}

/// A CRIU that answers `--version` and then hangs: the dump is stopped after --dump-timeout,
/// the error says which step hung, the task goes on, nothing is left.
#[test]
fn hanging_criu_is_stopped() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("trust-hang");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let fake = work.path().join("criu");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \"$1\" in --version) echo 'Version: 4.2';; check) echo 'Looks good.';; *) exec sleep 600;; esac\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:10000"],
        &work.path().join("log"),
        true,
        None,
    );
    let images = work.path().join("images");
    let t0 = Instant::now();
    let (ok, _, err) =
        take(p.pid, &images, &["--engine", "criu", "--criu", fake.to_str().unwrap(), "--dump-timeout", "2"]);
    assert!(!ok && err.contains("did not finish within 2 s"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
    assert!(alive(p.pid) && !stopped(p.pid), "the task is not running");
    assert!(checkpoint_names(&fs.mnt).is_empty());
}

/// A take with `SNAPCKPT_HOOK_DIR` (no waits): whether it succeeded, its stderr, and the hook
/// points it reached.
fn take_traced(hooks: &Hooks, args: &[&str]) -> (bool, String, Vec<String>) {
    let out = hooks.command(args).stdin(Stdio::null()).output().unwrap();
    let mut reached: Vec<String> = std::fs::read_dir(hooks.path())
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".reached").map(str::to_string))
        .collect();
    reached.sort();
    for p in &reached {
        let _ = std::fs::remove_file(hooks.path().join(format!("{p}.reached")));
    }
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned(), reached)
}

/// Everything under `dir`, relative, sorted (not following symlinks).
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut v = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            v.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                todo.push(p);
            }
        }
    }
    v.sort();
    v
}

/// A snapshot directory that someone other than root could change (a symlink, a user's
/// directory, one writable by others; anywhere on a deep `snapshot_dir`), or a mount point
/// below a user's directory, is refused before anything is relinked (a job's filesystems:
/// before the freeze), with what to do; nothing is created where the path would have led.
#[test]
fn unsafe_snapshot_dir_is_refused_up_front() {
    let _g = serial();
    let (fs, work, p) = orphan_workload("trust-snapdir");
    let (pid, images) = (p.pid.to_string(), work.path().join("images"));
    let ir = images.to_str().unwrap();
    let hooks = Hooks::new(work.path().join("hooks"), &[]);
    let elsewhere = fs.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let job = work.path().join("job.toml");
    let job_with = |mount: &std::path::Path, snapshot_dir: &str| {
        std::fs::write(
            &job,
            format!(
                "[[filesystem]]\nmount = \"{}\"\nsnapshot = \"btrfs\"\nsnapshot_dir = \"{snapshot_dir}\"\n",
                mount.display()
            ),
        )
        .unwrap();
    };
    let check = |what: &str, ok: bool, err: &str, reached: &[String], never: &str, says: &str| {
        assert!(!ok, "{what}: the take went through:\n{err}");
        assert!(err.contains(says) && err.contains("chown root:root"), "{what}: {err}");
        assert!(
            !reached.iter().any(|r| r == never),
            "{what}: refused only after {never}: {reached:?}\n{err}"
        );
        assert!(alive(p.pid) && !stopped(p.pid), "{what}");
        assert!(checkpoint_names(&fs.mnt).is_empty(), "{what}: names left");
        assert!(tree(&elsewhere).is_empty(), "{what}: made {:?}", tree(&elsewhere));
    };
    let auto = ["take", "--pid", &pid, "--image-root", ir, "--snapshot", "btrfs"];
    // --snapshot btrfs: the snapshot dir is checked after the scan, before the relink
    std::os::unix::fs::symlink("elsewhere", fs.path(".snapckpt")).unwrap();
    let (ok, err, reached) = take_traced(&hooks, &auto);
    check("a symlinked .snapckpt", ok, &err, &reached, "take-relinked", "symbolic link");
    std::fs::remove_file(fs.path(".snapckpt")).unwrap();
    std::fs::create_dir(fs.path(".snapckpt")).unwrap();
    std::os::unix::fs::chown(fs.path(".snapckpt"), Some(65534), Some(65534)).unwrap();
    let (ok, err, reached) = take_traced(&hooks, &auto);
    check("a user's .snapckpt", ok, &err, &reached, "take-relinked", "owned by uid 65534");
    std::os::unix::fs::chown(fs.path(".snapckpt"), Some(0), Some(0)).unwrap();
    std::fs::set_permissions(fs.path(".snapckpt"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, err, reached) = take_traced(&hooks, &auto);
    check("a world-writable .snapckpt", ok, &err, &reached, "take-relinked", "writable by group or others");
    std::fs::remove_dir(fs.path(".snapckpt")).unwrap();
    // a job's filesystem: before the freeze, also deep in snapshot_dir
    let by_job = ["take", "--pid", &pid, "--image-root", ir, "--job", job.to_str().unwrap()];
    std::fs::create_dir_all(fs.path("snaps")).unwrap();
    std::os::unix::fs::symlink("../elsewhere", fs.path("snaps/deep")).unwrap();
    job_with(&fs.mnt, "snaps/deep/er");
    let (ok, err, reached) = take_traced(&hooks, &by_job);
    check("a symlink deep in snapshot_dir", ok, &err, &reached, "take-frozen", "symbolic link");
    // the mount point (here a bind mount of the subvolume) below a directory a user owns
    let users = work.path().join("users");
    let m = users.join("m");
    std::fs::create_dir_all(&m).unwrap();
    sh(&format!("mount --bind '{}' '{}'", fs.mnt.display(), m.display()));
    let _unmount = MountGuard(m.clone());
    std::os::unix::fs::chown(&users, Some(65534), Some(65534)).unwrap();
    job_with(&m, ".snapckpt");
    let (ok, err, reached) = take_traced(&hooks, &by_job);
    check("a mount point below a user's directory", ok, &err, &reached, "take-frozen", "owned by uid 65534");
    assert!(!fs.path(".snapckpt").exists(), "made the snapshot directory");
    assert!(std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0) == 0, "left image traces");
}

/// After a good take, a snapshot directory made changeable by a user is refused by restart
/// and delete (no clone made through it); a deep `snapshot_dir` leaves only its first
/// component after delete, as the default leaves `.snapckpt`.
#[test]
fn snapshot_dir_is_checked_at_restart_and_delete_and_removed() {
    let _g = serial();
    let (fs, work, p) = orphan_workload("trust-snapdir2");
    let job = work.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "[[filesystem]]\nmount = \"{}\"\nsnapshot = \"btrfs\"\nsnapshot_dir = \"snaps/a/b\"\n",
            fs.mnt.display()
        ),
    )
    .unwrap();
    let images = work.path().join("images");
    let ir = images.to_str().unwrap();
    let (id, _) = take_files_only(p.pid, &images, &["--job", job.to_str().unwrap()]);
    let id_dir = fs.path(&format!("snaps/a/b/{id}"));
    assert!(id_dir.join("snapshot").exists());
    std::os::unix::fs::chown(fs.path("snaps/a"), Some(65534), Some(65534)).unwrap();
    let ufiles = prog("ufiles");
    let (ok, _, err) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        ir,
        "--snapshot",
        "--exec",
        ufiles.to_str().unwrap(),
        "report",
    ]);
    assert!(!ok && err.contains("owned by uid 65534") && err.contains("only root"), "{err}");
    assert!(!id_dir.join("restart-1").exists(), "a clone was made through a user's directory");
    let (ok, _, err) = snapckpt(&["delete", &id, "--image-root", ir]);
    assert!(!ok && err.contains("owned by uid 65534"), "{err}");
    assert!(id_dir.join("snapshot").exists());
    std::os::unix::fs::chown(fs.path("snaps/a"), Some(0), Some(0)).unwrap();
    snapckpt_ok(&["delete", &id, "--image-root", ir]);
    assert_eq!(tree(&fs.path("snaps")), Vec::<String>::new(), "the snapshot directory chain is left");
}

/// A task killed in the middle of a take (after the scan: the relink finds it gone; after the
/// relink, CRIU dumping it): the error says that the task exited during the take and what was
/// undone, not the system call that noticed (`open /proc/N/root/...`); nothing is left.
#[test]
fn task_dying_mid_take_is_said_so() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("trust-dies");
    let images = work.path().join("images");
    let ir = images.to_str().unwrap();
    for (point, engine, undone) in [
        ("take-scanned", "none", "nothing of it is left"),
        ("take-relinked", "criu", "relinked name(s) and 0 snapshot(s) it had made were removed"),
    ] {
        let what = format!("killed at {point}, engine {engine}");
        let dir = fs.path(&format!("d{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = workload(
            &prog("ufiles"),
            &["setup", dir.to_str().unwrap(), "orphan:10000", "ab"],
            &work.path().join(format!("log{}", unique())),
            true,
            None,
        );
        let hooks = Hooks::new(work.path().join(format!("hooks{}", unique())), &[point]);
        let pid = p.pid.to_string();
        let args = ["take", "--pid", &pid, "--image-root", ir, "--snapshot", "btrfs", "--engine", engine];
        let child = hooks.command(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        hooks.wait_reached(point, &what);
        p.child.kill().unwrap();
        p.child.wait().unwrap();
        hooks.release(point);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: {err}");
        let first = err.lines().find(|l| l.starts_with("snapckpt: error:")).unwrap_or_default().to_string();
        assert!(
            first.starts_with(&format!("snapckpt: error: task {pid} exited during the take")),
            "{what}: {err}"
        );
        assert!(first.contains(undone) && first.contains("Take it again"), "{what}: {err}");
        assert!(checkpoint_names(&fs.mnt).is_empty(), "{what}: names left");
        assert!(tree(&fs.path(".snapckpt")).is_empty(), "{what}: snapshots left");
        assert!(
            std::fs::read_dir(&images).map(|d| d.count()).unwrap_or(0) == 0 || only_failed_logs(&images),
            "{what}"
        );
    }
}

/// The image root holds nothing but kept CRIU logs of failed takes (`.ID.failed`).
fn only_failed_logs(images: &std::path::Path) -> bool {
    std::fs::read_dir(images).unwrap().flatten().all(|e| e.file_name().to_string_lossy().ends_with(".failed"))
}

/// `fsfreeze -u` on drop.
struct Thaw(PathBuf);
impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze").arg("-u").arg(&self.0).stderr(Stdio::null()).status();
    }
}

/// Whether another process holds the lock of a partial image directory.
fn locked(partial: &std::path::Path) -> bool {
    let Ok(f) = std::fs::File::open(partial.join(".lock")) else { return false };
    // SAFETY: flock on a file we hold.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) < 0 }
}

/// A snapshot that hangs in the kernel (the filesystem frozen with fsfreeze between the
/// relink and the snapshot: its mkdir and snapshot ioctl wait uninterruptibly): the take
/// gives up after --snapshot-timeout, the tasks run, its `.ID.partial` stays locked while the
/// snapshot may still complete; once the filesystem is thawed the late snapshot appears, and
/// plain `gc` removes it with the names and the trace.
#[test]
fn hanging_snapshot_is_given_up_on() {
    let _g = serial();
    let (fs, work, p) = orphan_workload("trust-snaphang");
    let images = work.path().join("images");
    let (pid, ir) = (p.pid.to_string(), images.to_str().unwrap());
    let hooks = Hooks::new(work.path().join("hooks"), &["take-relinked"]);
    let args = ["take", "--pid", &pid, "--image-root", ir, "--snapshot", "btrfs", "--snapshot-timeout", "2"];
    let child = hooks.command(&args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    hooks.wait_reached("take-relinked", "relinked");
    sh(&format!("fsfreeze -f '{}'", fs.mnt.display()));
    let thaw = Thaw(fs.mnt.clone());
    let t0 = Instant::now();
    hooks.release("take-relinked");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(t0.elapsed() < Duration::from_secs(20), "took {:?}: {err}", t0.elapsed());
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("did not finish within 2 s") && err.contains("snapckpt gc --mount"), "{err}");
    assert!(alive(p.pid) && !stopped(p.pid), "the task is not running: {err}");
    let partial: Vec<PathBuf> = std::fs::read_dir(&images).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    let name = partial[0].file_name().unwrap().to_string_lossy().into_owned();
    let id =
        name.strip_prefix('.').and_then(|n| n.strip_suffix(".partial")).expect("a .ID.partial").to_string();
    assert!(locked(&partial[0]), "the snapshot process does not hold the take's lock");
    drop(thaw);
    wait_for(|| !locked(&partial[0]), Duration::from_secs(20), "the snapshot process to end");
    assert!(fs.path(&format!(".snapckpt/{id}/snapshot")).exists(), "the late snapshot did not complete");
    let gc = snapckpt_ok(&["gc", "--image-root", ir, "--mount", fs.mnt.to_str().unwrap()]);
    assert!(!fs.path(&format!(".snapckpt/{id}")).exists(), "gc left the late snapshot:\n{gc}");
    assert!(checkpoint_names(&fs.mnt).is_empty(), "gc left names:\n{gc}");
    assert!(std::fs::read_dir(&images).unwrap().next().is_none(), "gc left the trace:\n{gc}");
}

/// `delete --force` of a checkpoint whose restart clone holds a subvolume (made in the
/// restarted filesystem) is refused before anything changes, naming that subvolume: the
/// clone stays mounted and the checkpoint stays. Once it is gone, the deletion goes through.
#[test]
fn delete_force_names_a_nested_subvolume_first() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("trust-nested");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("log");
    let p = workload(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:10000"], &log, true, None);
    let images = work.path().join("images");
    let (id, idir) = take_files_only(p.pid, &images, &["--snapshot", "btrfs"]);
    drop(p);
    let ir = images.to_str().unwrap();
    let mp = fs.mnt.to_str().unwrap();
    let before = mounted_at(mp);
    snapckpt_ok(&["restart", &id, "--image-root", ir, "--snapshot", "--host-mounts"]);
    assert_eq!(mounted_at(mp), before + 1, "the clone is mounted over the origin");
    let nested = fs.path("d/nested");
    sh(&format!("btrfs -q subvolume create '{}'", nested.display()));
    let (ok, _, err) = snapckpt(&["delete", &id, "--image-root", ir, "--force"]);
    assert!(!ok, "deleted although a clone holds a subvolume");
    assert!(err.contains("d/nested") && err.contains("nothing was changed"), "{err}");
    assert_eq!(mounted_at(mp), before + 1, "the clone was unmounted: {err}");
    assert!(idir.exists() && nested.exists());
    sh(&format!("btrfs -q subvolume delete '{}'", nested.display()));
    snapckpt_ok(&["delete", &id, "--image-root", ir, "--force"]);
    assert_eq!(mounted_at(mp), before);
    assert!(!idir.exists());
}

/// The inits of `restart --private-pids` namespaces that this test binary's snapckpt started.
fn pidns_inits() -> Vec<i32> {
    let exe = std::fs::canonicalize(snapckpt_bin()).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|x| x == exe))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"__pidns-init".as_slice()))
        })
        .collect()
}

/// The host pids of the processes in the pid namespace of host pid `init`, but it.
fn in_pidns_of(init: i32) -> Vec<i32> {
    let ns = |p: i32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
    let want = ns(init);
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != init && want.is_some() && ns(p) == want)
        .collect()
}

/// `restart --private-pids` of a SIGSTOP checkpoint, SIGKILLed in the middle of CRIU's
/// post-restore (the names not yet removed): CRIU gives up, no restored task is left and the
/// namespace's init exits. SIGKILLed once CRIU is done: the restored task runs (the watchdog
/// continued it, by its host pid), in the namespace whose init stays until the task exits.
#[test]
fn private_pids_restart_killed() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("trust-pidns-kill");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = workload(&prog("pidself"), &[dir.to_str().unwrap()], &work.path().join("log"), true, None);
    let pid = p.pid;
    let images = work.path().join("images");
    let id = take_id(&take_ok(pid, &images, &["--engine", "criu", "--snapshot", "btrfs"]));
    wait_gone(pid);
    drop(p);
    let ir = images.to_str().unwrap();
    let before = pidns_inits();
    for point in ["restart-post-restore", "restart-restored"] {
        let hooks = Hooks::new(work.path().join(format!("hooks-{point}")), &[point]);
        let mut child = hooks
            .command(&["restart", &id, "--image-root", ir, "--snapshot", "--private-pids"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        hooks.wait_reached(point, point);
        let inits: Vec<i32> = pidns_inits().into_iter().filter(|i| !before.contains(i)).collect();
        assert_eq!(inits.len(), 1, "{point}: {inits:?}");
        let init = inits[0];
        let tasks = in_pidns_of(init);
        let _left = KillOnDrop(tasks.clone());
        let _ = child.kill();
        let _ = child.wait();
        if point == "restart-post-restore" {
            wait_gone(init);
            assert!(tasks.iter().all(|&t| !alive(t)), "{point}: restored tasks left: {tasks:?}");
            continue;
        }
        let task = *tasks.iter().find(|&&t| comm(t) == "pidself").expect("the restored task");
        wait_for(|| alive(task) && !stopped(task), Duration::from_secs(10), "restored task continued");
        assert!(alive(init), "{point}: the init left before its task");
        kill_wait(task);
        wait_gone(init);
    }
    snapckpt_ok(&["gc", "--image-root", ir, "--mount", fs.mnt.to_str().unwrap()]);
    snapckpt_ok(&["delete", &id, "--image-root", ir]);
}
