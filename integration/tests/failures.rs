//! Failure tests, with real processes on real filesystems (loop devices); run as root.
//!
//! * snapckpt SIGKILLed at every hook point of `take` (files only on ext4 and on btrfs with a
//!   snapshot, CRIU with a btrfs snapshot; SIGSTOP and cgroup v2 freezers) and after random
//!   delays; after each kill: the tasks are not left frozen, no half-written file is visible
//!   under `lost+found/checkpoint`, the image root holds whole images or `.ID.partial`
//!   directories only, snapckpt's helpers (thaw watchdog, criu swrk) go away by themselves,
//!   and `snapckpt gc` leaves no stale names, no partial images and no snapshots of failed
//!   takes;
//! * snapckpt SIGKILLed at the hook points of `restart`: the live filesystem and the read-only
//!   snapshot are unchanged, and a later restart works;
//! * a read-only filesystem, a full filesystem during an orphan copy, a snapshot that fails,
//!   CRIU that fails: a clear error, the tasks thawed, nothing left behind;
//! * hostile checkpoint records given to `restart` and `delete`, and symlinks or hard links
//!   planted where restart opens the preserved files: refused, nothing written elsewhere;
//! * a deterministic fuzz smoke test of the parsers (job files, checkpoint records, name
//!   templates): no panics (the cargo-fuzz targets in fuzz/ go further).
//!
//! The random delays and the fuzz inputs come from a seeded generator; the seed is printed and
//! `SNAPCKPT_FAILURES_SEED=N` replays a run.

use crate::common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TEMPLATE: &str = "unlink-at-restart-%t-%n";
/// A checkpoint id that is not the one of the record a hostile test starts from.
const OTHER_ID: &str = "20261127T000000Z-0bad";

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/// xorshift64*: a seeded generator of our own, so that a run can be replayed.
struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

fn seed(what: &str) -> u64 {
    let s = std::env::var("SNAPCKPT_FAILURES_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        t.as_secs() ^ (t.subsec_nanos() as u64) << 20
    });
    eprintln!("{what}: seed {s} (replay with SNAPCKPT_FAILURES_SEED={s})");
    s
}

/// (size, hash) of every regular file a process holds at fds >= 3.
fn held_contents(pid: i32) -> BTreeSet<(u64, u64)> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        let fd: i32 = e.file_name().to_str().unwrap().parse().unwrap();
        if fd < 3 {
            continue;
        }
        if std::fs::metadata(e.path()).is_ok_and(|m| m.is_file()) {
            out.insert(fnv_file(&e.path()).unwrap());
        }
    }
    out
}

/// Every name under lost+found/checkpoint is a complete copy of a file the tasks hold (same
/// size and bytes) or a node snapckpt recreates (FIFO, directory).
fn assert_names_complete(mnt: &Path, expected: &BTreeSet<(u64, u64)>, what: &str) {
    for n in checkpoint_names(mnt) {
        let p = checkpoint_dir(mnt).join(&n);
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.file_type().is_symlink() {
            panic!("{what}: {n} is a symlink");
        }
        if !md.is_file() {
            continue;
        }
        let got = fnv_file(&p).unwrap();
        assert!(
            expected.contains(&got),
            "{what}: {n} is not a complete copy of any held file: (size, hash) {got:?}, held {expected:?}"
        );
    }
}

/// The image root holds whole images (loadable) and `.ID.partial` directories, nothing else.
/// Returns (complete ids, partial dirs).
fn check_image_root(root: &Path, what: &str) -> (Vec<String>, Vec<PathBuf>) {
    let mut ids = vec![];
    let mut partial = vec![];
    let Ok(rd) = std::fs::read_dir(root) else { return (ids, partial) };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let is_dir = e.file_type().unwrap().is_dir();
        if is_dir && snapckpt::record::names::valid_id(&n) {
            let ck = snapckpt::image::load(&e.path())
                .unwrap_or_else(|err| panic!("{what}: image {n} is not whole: {err}"));
            assert_eq!(ck.id, n, "{what}");
            ids.push(n);
        } else if is_dir && n.starts_with('.') && n.ends_with(".partial") {
            partial.push(e.path());
        } else {
            panic!("{what}: unexpected entry {n:?} in the image root");
        }
    }
    ids.sort();
    (ids, partial)
}

fn template() -> snapckpt::relink::Template {
    snapckpt::relink::Template::parse(TEMPLATE).unwrap()
}

/// Ids with a directory under `<mount>/.snapckpt`.
fn snapshot_ids(mnt: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(mnt.join(".snapckpt"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every name below `root` (not into `skip_top`), with what it is: "dir", "link -> T", or the
/// size and hash of a file.
fn listing(root: &Path, skip_top: &[&str]) -> BTreeMap<String, String> {
    fn walk(base: &Path, rel: &str, out: &mut BTreeMap<String, String>, skip: &[&str]) {
        let dir = if rel.is_empty() { base.to_path_buf() } else { base.join(rel) };
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if rel.is_empty() && skip.contains(&n.as_str()) {
                continue;
            }
            let r = if rel.is_empty() { n.clone() } else { format!("{rel}/{n}") };
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let what = if md.is_dir() {
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(e.path()).unwrap().display())
            } else if md.is_file() {
                format!("{:?} ino {}", fnv_file(&e.path()).unwrap(), md.ino())
            } else {
                format!("mode {:o}", md.mode())
            };
            out.insert(r.clone(), what);
            if md.is_dir() {
                walk(base, &r, out, skip);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, "", &mut out, skip_top);
    out
}

/// snapckpt running in the background, its output in files.
struct Running {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}
impl Running {
    fn spawn(args: &[String], hooks: &Path, logs: &Path) -> Running {
        let n = unique();
        let out = logs.join(format!("snapckpt-{n}.out"));
        let err = logs.join(format!("snapckpt-{n}.err"));
        let child = Command::new(snapckpt_bin())
            .args(args)
            .env("SNAPCKPT_HOOK_DIR", hooks)
            .env("SNAPCKPT_CRIU", criu_bin())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Running { child, out, err }
    }
    fn output(&self) -> (String, String) {
        (
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default(),
        )
    }
    /// Wait until hook `point` is reached (panics if snapckpt ends first).
    fn wait_point(&mut self, hooks: &Path, point: &str) {
        let t = Instant::now();
        while !hooks.join(format!("{point}.reached")).exists() {
            if let Some(st) = self.child.try_wait().unwrap() {
                let (o, e) = self.output();
                panic!("snapckpt ended ({st}) before reaching {point}\nstdout: {o}\nstderr: {e}");
            }
            assert!(t.elapsed() < Duration::from_secs(30), "timed out waiting for hook {point}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    /// SIGKILL snapckpt (if still running); returns its helpers (watchdog, criu) as they were
    /// just before, and whether it had already finished (with its status).
    fn kill(mut self) -> (Vec<i32>, Option<std::process::ExitStatus>, String, String) {
        let pid = self.child.id() as i32;
        let helpers = descendants(pid);
        let before = self.child.try_wait().unwrap();
        let _ = self.child.kill();
        self.child.wait().unwrap();
        let (o, e) = self.output();
        (helpers, before, o, e)
    }
}

impl Drop for Running {
    /// A test that fails half-way leaves no snapckpt behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Wait until the helpers of a killed snapckpt are gone; kill and complain if they stay.
fn assert_helpers_exit(helpers: &[i32], what: &str) {
    let t = Instant::now();
    while helpers.iter().any(|&p| alive(p)) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<String> = helpers
        .iter()
        .filter(|&&p| alive(p))
        .map(|&p| format!("{p} ({}, state {:?})", comm(p), state(p)))
        .collect();
    drop(KillOnDrop(helpers.to_vec()));
    assert!(left.is_empty(), "{what}: helpers of the killed snapckpt still running after 10 s: {left:?}");
}

/// Within 3 s the task is not stopped (or is gone), and the cgroup (if any) not frozen.
fn assert_not_frozen(pid: i32, cg: Option<&Cgroup>, what: &str) {
    let t = Instant::now();
    loop {
        let ok = !stopped(pid) && !cg.is_some_and(Cgroup::frozen);
        if ok {
            // and it stays so (a late CRIU detach could stop it again)
            std::thread::sleep(Duration::from_millis(300));
            if !stopped(pid) && !cg.is_some_and(Cgroup::frozen) {
                return;
            }
        }
        if t.elapsed() > Duration::from_secs(3) {
            panic!(
                "{what}: task {pid} left frozen: state {:?}, cgroup frozen {:?}",
                state(pid),
                cg.map(Cgroup::frozen)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL during take
// ---------------------------------------------------------------------------------------------

const TAKE_POINTS: &[&str] = &[
    "take-frozen",
    "take-scanned",
    "take-relinked",
    "take-post-dump",
    "take-snapshotted",
    "take-unfrozen",
    "take-published",
    "take-thawed",
];

/// One filesystem, one image root, one workload (restarted when CRIU has killed it), killed
/// takes one after the other.
struct TakeRig {
    fs: LoopFs,
    work: Scratch,
    images: PathBuf,
    hooks: PathBuf,
    criu: bool,
    snapshot: bool,
    scenario: Vec<String>,
    cg: Option<Cgroup>,
    proc: Option<Proc>,
    /// (size, hash) of every file any of our workloads held.
    held: BTreeSet<(u64, u64)>,
    /// Snapshot directories of failed takes found after each kill, before gc: (what, id).
    leftover_snapshots: Vec<(String, String)>,
    /// Takes that completed before the kill.
    completed: usize,
}

impl TakeRig {
    fn new(fstype: &str, criu: bool, snapshot: bool, cgroup: bool, scenario: &[&str]) -> TakeRig {
        let fs = LoopFs::new(fstype, "1G");
        let work = Scratch::new("failures-take");
        std::fs::create_dir_all(fs.path("d")).unwrap();
        let hooks = work.path().join("hooks");
        std::fs::create_dir_all(&hooks).unwrap();
        let cg = cgroup.then(|| Cgroup::new(Cg::V2, "failures-take"));
        TakeRig {
            images: work.path().join("images"),
            hooks,
            fs,
            work,
            criu,
            snapshot,
            scenario: scenario.iter().map(|s| s.to_string()).collect(),
            cg,
            proc: None,
            held: BTreeSet::new(),
            leftover_snapshots: vec![],
            completed: 0,
        }
    }

    fn pid(&self) -> i32 {
        self.proc.as_ref().unwrap().pid
    }

    fn ensure_workload(&mut self) {
        if self.proc.as_ref().is_some_and(|p| alive(p.pid)) {
            return;
        }
        self.proc = None; // reaps the old one
        let dir = self.fs.path(&format!("d/{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["setup".to_string(), dir.display().to_string()];
        args.extend(self.scenario.iter().cloned());
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.work.path().join(format!("workload-{}.log", unique()));
        let p = workload(&prog("ufiles"), &a, &log, self.criu, self.cg.as_ref());
        self.held.extend(held_contents(p.pid));
        self.proc = Some(p);
    }

    fn take_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["take".into()];
        match &self.cg {
            Some(cg) => a.extend(["--cgroup".into(), cg.arg()]),
            None => a.extend(["--pid".into(), self.pid().to_string()]),
        }
        a.extend(["--image-root".into(), self.images.display().to_string()]);
        a.extend(["--engine".into(), if self.criu { "criu".into() } else { "none".into() }]);
        if self.snapshot {
            a.extend(["--snapshot".into(), "btrfs".into()]);
        }
        a
    }

    /// Run a take and SIGKILL it at `point`, or after `delay`; then check and collect.
    fn kill_take(&mut self, what: &str, point: Option<&str>, delay: Duration) {
        self.ensure_workload();
        let pid = self.pid();
        for e in std::fs::read_dir(&self.hooks).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        if let Some(p) = point {
            std::fs::write(self.hooks.join(format!("{p}.wait")), "").unwrap();
        }
        let mut run = Running::spawn(&self.take_args(), &self.hooks, self.work.path());
        match point {
            Some(p) => {
                run.wait_point(&self.hooks, p);
                // Files only: thawed before the new inodes' names go and the image is published.
                // CRIU: frozen until it is published (CRIU dumps with leave-running), killed by
                // snapckpt after that.
                let thawed_points = ["take-unfrozen", "take-published"];
                let gone_or_thawed = p == "take-thawed" || (!self.criu && thawed_points.contains(&p));
                if !gone_or_thawed {
                    assert!(
                        stopped(pid) || self.cg.as_ref().is_some_and(Cgroup::frozen),
                        "{what}: task not frozen at {p}: {:?}",
                        state(pid)
                    );
                }
            }
            None => std::thread::sleep(delay),
        }
        let (helpers, finished, out, err) = run.kill();
        if let Some(p) = point {
            let _ = std::fs::remove_file(self.hooks.join(format!("{p}.wait")));
        }
        if let Some(st) = finished {
            assert!(st.success(), "{what}: take failed before the kill\nstdout: {out}\nstderr: {err}");
            self.completed += 1;
        }
        assert_no_panic(&err);

        // 1. helpers exit, the task is not left frozen
        assert_helpers_exit(&helpers, what);
        assert_not_frozen(pid, self.cg.as_ref(), what);
        if !self.criu {
            assert!(alive(pid), "{what}: a files-only take killed the task");
        }
        // 2. no half-written file
        assert_names_complete(&self.fs.mnt, &self.held, what);
        // 3. whole images or partial directories only
        let (ids, _partial) = check_image_root(&self.images, what);
        // the process is never lost: dead only with a published image
        assert!(
            alive(pid) || !ids.is_empty(),
            "{what}: the task is gone but no image was published: its state is lost"
        );
        // 4. snapshots of failed takes
        for id in snapshot_ids(&self.fs.mnt) {
            if !ids.contains(&id) {
                self.leftover_snapshots.push((what.to_string(), id));
            }
        }
        // 5. gc leaves no stale names and no partial images
        let (ok, gout, gerr) = snapckpt(&[
            "gc",
            "--mount",
            self.fs.mnt.to_str().unwrap(),
            "--image-root",
            self.images.to_str().unwrap(),
        ]);
        assert!(ok, "{what}: gc failed: {gout}\n{gerr}");
        assert_no_panic(&gerr);
        let (ids2, partial2) = check_image_root(&self.images, what);
        assert_eq!(ids2, ids, "{what}: gc removed a whole image");
        assert!(partial2.is_empty(), "{what}: partial images left after gc: {partial2:?}");
        let tpl = template();
        for n in checkpoint_names(&self.fs.mnt) {
            let id = tpl.match_id(&n);
            assert!(
                id.as_ref().is_some_and(|i| ids.contains(i)),
                "{what}: stale name {n} left after gc ({gout})"
            );
        }
        // and no snapshot of a failed take
        let snaps = snapshot_ids(&self.fs.mnt);
        assert!(
            snaps.iter().all(|i| ids.contains(i)),
            "{what}: snapshots of failed takes left after gc: {snaps:?} ({gout})"
        );
        // back to a clean state
        for id in &ids {
            snapckpt_ok(&["delete", id, "--image-root", self.images.to_str().unwrap()]);
        }
        assert!(snapshot_ids(&self.fs.mnt).is_empty(), "{what}: {:?}", snapshot_ids(&self.fs.mnt));
        assert!(checkpoint_names(&self.fs.mnt).is_empty(), "{what}: {:?}", checkpoint_names(&self.fs.mnt));
        assert!(!self.images.exists() || std::fs::read_dir(&self.images).unwrap().count() == 0);
    }

    /// Time of one whole take (then deleted), for choosing random delays.
    fn time_take(&mut self) -> Duration {
        self.ensure_workload();
        let t = Instant::now();
        let args = self.take_args();
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = snapckpt_ok(&a);
        let d = t.elapsed();
        let id = take_id(&out);
        if self.criu {
            wait_gone(self.pid());
        }
        snapckpt_ok(&["delete", &id, "--image-root", self.images.to_str().unwrap()]);
        assert!(checkpoint_names(&self.fs.mnt).is_empty() && snapshot_ids(&self.fs.mnt).is_empty());
        d
    }

    fn report_leftover_snapshots(&self) {
        if !self.leftover_snapshots.is_empty() {
            eprintln!(
                "snapshots of failed takes under {}/.snapckpt (collected by gc): {:?}",
                self.fs.mnt.display(),
                self.leftover_snapshots
            );
        }
    }
}

impl Drop for TakeRig {
    fn drop(&mut self) {
        self.proc = None;
        self.cg = None;
    }
}

fn kill_at_take_points(rig: &mut TakeRig, label: &str, points: &[&str]) {
    for p in points {
        let what = format!("{label} killed at {p}");
        eprintln!("{what}");
        rig.kill_take(&what, Some(p), Duration::ZERO);
    }
}

/// Files only: ext4 (orphans copied) with SIGSTOP, and btrfs with a snapshot and a cgroup v2.
#[test]
fn take_killed_at_every_point_files_only() {
    let _g = serial();
    let points: Vec<&str> = TAKE_POINTS.iter().copied().filter(|p| *p != "take-post-dump").collect();
    let mut rig = TakeRig::new(
        "ext4",
        false,
        false,
        false,
        &["ab", "orphan:20000000", "dense:3000000", "tmpfile", "twofds", "fifo", "cwd"],
    );
    kill_at_take_points(&mut rig, "ext4 files-only sigstop", &points);
    drop(rig);
    let mut rig = TakeRig::new(
        "btrfs",
        false,
        true,
        true,
        &["ab", "orphan:20000000", "dense:3000000", "tmpfile", "twofds"],
    );
    kill_at_take_points(&mut rig, "btrfs files-only snapshot cgroup-v2", &points);
    rig.report_leftover_snapshots();
    // snapshots are made from take-snapshotted on
    assert!(
        rig.leftover_snapshots.iter().any(|(w, _)| w.contains("take-snapshotted")),
        "{:?}",
        rig.leftover_snapshots
    );
}

const CRIU_SCENARIO: &[&str] = &["ab", "orphan:20000000", "dense:3000000", "tmpfile", "twofds"];

/// CRIU with a btrfs snapshot, the workload a session leader frozen by SIGSTOP: killed before
/// and after CRIU runs (killed while it runs: see `take_killed_during_criu_dump`).
#[test]
fn take_killed_at_every_point_criu() {
    let _g = serial();
    let mut rig = TakeRig::new("btrfs", true, true, false, CRIU_SCENARIO);
    kill_at_take_points(
        &mut rig,
        "btrfs criu snapshot sigstop",
        &["take-frozen", "take-scanned", "take-relinked", "take-snapshotted", "take-unfrozen", "take-thawed"],
    );
    rig.report_leftover_snapshots();
    drop(rig);
    let mut rig = TakeRig::new("btrfs", true, true, true, CRIU_SCENARIO);
    kill_at_take_points(
        &mut rig,
        "btrfs criu snapshot cgroup-v2",
        &["take-frozen", "take-relinked", "take-snapshotted", "take-thawed"],
    );
    rig.report_leftover_snapshots();
}

/// snapckpt killed while `criu swrk` is dumping (in the post-dump notification): CRIU must
/// give up and let the task go.
#[test]
fn take_killed_during_criu_dump() {
    let _g = serial();
    for cgroup in [false, true] {
        let mut rig = TakeRig::new("btrfs", true, true, cgroup, CRIU_SCENARIO);
        for _ in 0..3 {
            kill_at_take_points(
                &mut rig,
                &format!("btrfs criu snapshot cgroup {cgroup}"),
                &["take-post-dump"],
            );
        }
    }
}

/// Random delays, no hooks: files only on ext4; a 48 MB dense orphan is being copied for a
/// good part of the take.
#[test]
fn take_killed_after_random_delays_files_only() {
    let _g = serial();
    let mut rng = Rng::new(seed("take_killed_after_random_delays_files_only"));
    let mut rig =
        TakeRig::new("ext4", false, false, false, &["ab", "dense:48000000", "orphan:20000000", "tmpfile"]);
    let full = rig.time_take();
    let n = 6;
    for i in 0..n {
        let d = Duration::from_micros(rng.below(full.as_micros() as u64 * 12 / 10 + 1));
        let what = format!("ext4 files-only killed after {d:?} (a take takes {full:?}), round {i}");
        eprintln!("{what}");
        rig.kill_take(&what, None, d);
    }
    eprintln!("files-only: {} of {n} takes completed before the kill", rig.completed);
}

/// Random delays, no hooks: CRIU with a btrfs snapshot (a kill while CRIU runs hits the bug of
/// `take_killed_during_criu_dump`).
#[test]
fn take_killed_after_random_delays_criu() {
    let _g = serial();
    let mut rng = Rng::new(seed("take_killed_after_random_delays_criu"));
    let mut rig = TakeRig::new("btrfs", true, true, false, CRIU_SCENARIO);
    let full = rig.time_take();
    let n = 6;
    for i in 0..n {
        let d = Duration::from_micros(rng.below(full.as_micros() as u64 * 12 / 10 + 1));
        let what = format!("btrfs criu killed after {d:?} (a take takes {full:?}), round {i}");
        eprintln!("{what}");
        rig.kill_take(&what, None, d);
    }
    eprintln!("criu: {} of {n} takes completed before the kill", rig.completed);
    rig.report_leftover_snapshots();
}

// ---------------------------------------------------------------------------------------------
// SIGKILL during restart
// ---------------------------------------------------------------------------------------------

/// Restart clones stacked over a mount point are detached on drop, down to the filesystem
/// itself (LoopFs unmounts one mount only).
/// Lazily unmounts whatever is mounted under a directory on drop (a failed test's clones).
struct UnmountUnder(PathBuf);
impl Drop for UnmountUnder {
    fn drop(&mut self) {
        for m in mounts_under(&self.0).iter().rev() {
            let _ = nix::mount::umount2(Path::new(m), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

struct Unstack(PathBuf);
impl Drop for Unstack {
    fn drop(&mut self) {
        let me = self.0.to_string_lossy().into_owned();
        for _ in 0..16 {
            if mounts_under(&self.0).iter().filter(|m| **m == me).count() <= 1 {
                break;
            }
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The live filesystem, reached through a directory fd opened before any restart clone is
/// mounted over it.
struct LiveView {
    _dir: std::fs::File,
    path: PathBuf,
}
impl LiveView {
    fn open(mnt: &Path) -> LiveView {
        let dir = std::fs::File::open(mnt).unwrap();
        let path = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir)));
        LiveView { _dir: dir, path }
    }
}

fn is_read_only_subvolume(p: &Path) -> bool {
    libbtrfsutil::subvolume_info(p).map(|i| i.flags() & 1 == 1).unwrap_or(false)
}

/// Kill a restart at each of its hook points (and check), then run it again to the end.
/// `later` runs a whole restart and checks what it restored.
fn kill_restart_at_points(
    fs: &LoopFs,
    work: &Path,
    id: &str,
    restart_args: &[String],
    mut later: impl FnMut(&str),
    findings: &mut Vec<String>,
) {
    let hooks = work.join("restart-hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    // A name only the live filesystem has: it must not be visible while a clone covers it.
    std::fs::write(fs.path("live-only"), "live").unwrap();
    let live = LiveView::open(&fs.mnt);
    let live_before = listing(&live.path, &[".snapckpt"]);
    let snap = live.path.join(".snapckpt").join(id).join("snapshot");
    let snap_before = listing(&snap, &[]);
    assert!(
        snap_before.keys().any(|k| k.starts_with("lost+found/checkpoint/unlink-at-restart-")),
        "{snap_before:?}"
    );
    assert!(is_read_only_subvolume(&snap));
    for point in ["restart-mounted", "restart-opened"] {
        let what = format!("restart killed at {point}");
        eprintln!("{what}");
        for e in std::fs::read_dir(&hooks).unwrap().flatten() {
            std::fs::remove_file(e.path()).unwrap();
        }
        std::fs::write(hooks.join(format!("{point}.wait")), "").unwrap();
        let mut run = Running::spawn(restart_args, &hooks, work);
        run.wait_point(&hooks, point);
        assert!(!fs.path("live-only").exists(), "{what}: the clone is not mounted over the origin");
        let spid = run.child.id();
        let (helpers, finished, out, err) = run.kill();
        assert!(finished.is_none(), "{what}: restart ended early: {out}\n{err}");
        let _ = std::fs::remove_file(hooks.join(format!("{point}.wait")));
        assert_helpers_exit(&helpers, &what);
        // the live filesystem and the read-only snapshot are as they were
        assert_eq!(listing(&live.path, &[".snapckpt"]), live_before, "{what}: the live filesystem changed");
        assert_eq!(listing(&snap, &[]), snap_before, "{what}: the snapshot changed");
        assert!(is_read_only_subvolume(&snap), "{what}: the snapshot is no longer read-only");
        let stacked = mounts_under(&fs.mnt).iter().filter(|m| Path::new(m) == fs.mnt).count();
        let clones: Vec<String> = std::fs::read_dir(live.path.join(".snapckpt").join(id))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "snapshot")
            .collect();
        findings.push(format!(
            "{what}: {} clone mount(s) left over the origin, clone subvolumes {clones:?}",
            stacked - 1
        ));
        let temp: Vec<String> = mounts_under(Path::new("/run/snapckpt"))
            .into_iter()
            .filter(|m| m.contains(&format!("-{spid}-")))
            .collect();
        assert!(temp.is_empty(), "{what}: temporary mounts left: {temp:?}");
        // a later restart works
        later(&what);
    }
    // delete --force takes every clone and mount away
    let images = restart_args.iter().skip_while(|a| *a != "--image-root").nth(1).unwrap().clone();
    snapckpt_ok(&["delete", id, "--force", "--image-root", &images]);
    assert_eq!(
        mounts_under(&fs.mnt).iter().filter(|m| Path::new(m) == fs.mnt).count(),
        1,
        "clones left mounted after delete --force"
    );
    assert!(fs.path("live-only").exists());
    assert!(!fs.path(&format!(".snapckpt/{id}")).exists(), "snapshot directory left after delete --force");
    assert_eq!(listing(&live.path, &[".snapckpt"]), live_before);
}

/// A files-only checkpoint with a btrfs snapshot (relinked names only in the snapshot).
#[test]
fn restart_killed_files_only_snapshot() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "1G");
    let _unstack = Unstack(fs.mnt.clone());
    let work = Scratch::new("failures-restart");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("ufiles.log");
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "ab", "orphan:20000000", "dense:3000000", "tmpfile", "twofds"],
        &log,
        false,
        None,
    );
    let before = fd_lines(&first_report(&log));
    let images = work.path().join("images");
    let out = take_ok(p.pid, &images, &["--engine", "none", "--snapshot", "btrfs"]);
    let id = take_id(&out);
    assert!(checkpoint_names(&fs.mnt).is_empty(), "links are removed once the snapshot has them");
    drop(p);
    let ufiles = prog("ufiles");
    let args: Vec<String> = [
        "restart",
        &id,
        "--image-root",
        images.to_str().unwrap(),
        "--snapshot",
        // the clone over the origin in the host's namespace: what a kill must not leave
        "--host-mounts",
        "--exec",
        ufiles.to_str().unwrap(),
        "report",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut findings = vec![];
    kill_restart_at_points(
        &fs,
        work.path(),
        &id,
        &args,
        |what| {
            let (ok, out, err) = snapckpt(&a);
            assert!(ok, "{what}: later restart failed: {out}\n{err}");
            assert_eq!(fd_lines(&out), before, "{what}: later restart restored other files");
        },
        &mut findings,
    );
    eprintln!("NOTE: {findings:#?}");
}

/// A CRIU checkpoint with a btrfs snapshot.
#[test]
fn restart_killed_criu() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "1G");
    let _unstack = Unstack(fs.mnt.clone());
    let work = Scratch::new("failures-restart-criu");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("ufiles.log");
    let p = workload(
        &prog("ufiles"),
        &[
            "setup",
            dir.to_str().unwrap(),
            "ab",
            "orphan:20000000",
            "dense:3000000",
            "tmpfile",
            "twofds",
            "odd",
        ],
        &log,
        true,
        None,
    );
    let pid = p.pid;
    let before = fd_lines(&first_report(&log));
    let images = work.path().join("images");
    let out = take_ok(pid, &images, &["--engine", "criu", "--snapshot", "btrfs"]);
    let id = take_id(&out);
    wait_gone(pid);
    drop(p);
    let logsize = std::fs::metadata(&log).unwrap().len();
    let args: Vec<String> =
        ["restart", &id, "--image-root", images.to_str().unwrap(), "--snapshot", "--host-mounts"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut findings = vec![];
    kill_restart_at_points(
        &fs,
        work.path(),
        &id,
        &args,
        |what| {
            assert!(!alive(pid), "{what}: a killed restart restored the task");
            // CRIU wants the (linked) log at the size it had at the dump
            std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len(logsize).unwrap();
            let (ok, out, err) = snapckpt(&a);
            let _k = KillOnDrop(vec![pid]);
            assert!(ok, "{what}: later restart failed: {out}\n{err}");
            wait_for(|| alive(pid), Duration::from_secs(10), "restored task");
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1)
                .unwrap();
            let tail = || {
                std::fs::read(&log)
                    .map(|b| String::from_utf8_lossy(&b[logsize as usize..]).into_owned())
                    .unwrap_or_default()
            };
            wait_for(|| tail().contains("checked"), Duration::from_secs(10), "report of the restored task");
            assert_eq!(fd_lines(&tail()), before, "{what}: the restored task holds other files");
            kill_wait(pid);
        },
        &mut findings,
    );
    eprintln!("NOTE: {findings:#?}");
}

/// Someone kills the thaw watchdog while the tasks are frozen: the take notices before the
/// steps that rely on it (the dump, the publication), undoes what it did and thaws.
#[test]
fn watchdog_killed_during_take() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("failures-watchdog-killed");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:100000", "ab"],
        &work.path().join("log"),
        true,
        None,
    );
    let images = work.path().join("images");
    let hooks = Hooks::new(work.path().join("hooks"), &["take-relinked"]);
    let args: Vec<String> = [
        "take",
        "--pid",
        &p.pid.to_string(),
        "--engine",
        "criu",
        "--snapshot",
        "btrfs",
        "--image-root",
        images.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut run = Running::spawn(&args, hooks.path(), work.path());
    run.wait_point(hooks.path(), "take-relinked");
    let helpers = descendants(run.child.id() as i32);
    assert!(!helpers.is_empty(), "no watchdog");
    for h in &helpers {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*h), nix::sys::signal::Signal::SIGKILL).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    hooks.release("take-relinked");
    let st = run.child.wait().unwrap();
    let (out, err) = run.output();
    assert!(!st.success() && err.contains("watchdog") && err.contains("died"), "{out}\n{err}");
    assert_not_frozen(p.pid, None, "watchdog killed");
    assert!(alive(p.pid), "the task is gone");
    assert!(checkpoint_names(&fs.mnt).is_empty(), "names left: {:?}", checkpoint_names(&fs.mnt));
    assert!(snapshot_ids(&fs.mnt).is_empty());
    assert_eq!(std::fs::read_dir(&images).map(|rd| rd.count()).unwrap_or(0), 0);
}

/// A checkpoint taken with SIGSTOP comes back stopped from CRIU and the restart continues it:
/// a restart killed right after CRIU restored the task must not leave it stopped (a watchdog
/// continues it).
#[test]
fn restart_killed_after_the_restore_continues_the_tasks() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "1G");
    let _unstack = Unstack(fs.mnt.clone());
    let work = Scratch::new("failures-restart-restored");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let log = work.path().join("ufiles.log");
    let p = workload(&prog("ufiles"), &["setup", dir.to_str().unwrap(), "orphan:100000"], &log, true, None);
    let pid = p.pid;
    let images = work.path().join("images");
    let id = take_id(&take_ok(pid, &images, &["--engine", "criu", "--snapshot", "btrfs"]));
    wait_gone(pid);
    drop(p);
    let hooks = Hooks::new(work.path().join("hooks"), &["restart-restored"]);
    let root = work.path().join("r");
    std::fs::create_dir_all(&root).unwrap();
    let _unmount = UnmountUnder(root.clone());
    let args: Vec<String> = [
        "restart",
        &id,
        "--image-root",
        images.to_str().unwrap(),
        "--snapshot",
        "--mount-root",
        root.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut run = Running::spawn(&args, hooks.path(), work.path());
    run.wait_point(hooks.path(), "restart-restored");
    let _k = KillOnDrop(vec![pid]);
    assert!(alive(pid), "CRIU did not restore the task");
    let (helpers, finished, out, err) = run.kill();
    assert!(finished.is_none(), "restart ended early: {out}\n{err}");
    assert_helpers_exit(&helpers, "restart killed after the restore");
    assert_not_frozen(pid, None, "restart killed after the restore");
    snapckpt_ok(&["delete", &id, "--force", "--image-root", images.to_str().unwrap()]);
}

// ---------------------------------------------------------------------------------------------
// Failing filesystems, snapshots and CRIU
// ---------------------------------------------------------------------------------------------

/// After a failed take: a clear error (no panic), the task thawed and running, no relinked
/// name, no image, no snapshot.
fn assert_clean_failure(ok: bool, err: &str, pid: i32, mnt: &Path, images: &Path, what: &str) {
    assert!(!ok, "{what}: take should fail");
    // A CRIU log that the error names may be kept for the user (see
    // criu_failure_keeps_the_log_it_names); nothing else.
    if let Some(log) = named_log(err).filter(|l| l.starts_with(images) && l.is_file()) {
        std::fs::remove_file(&log).unwrap();
        if let Some(d) = log.parent().filter(|d| *d != images) {
            let _ = std::fs::remove_dir(d);
        }
    }
    assert!(err.contains("snapckpt: error: "), "{what}: {err}");
    assert_no_panic(err);
    assert_not_frozen(pid, None, what);
    assert!(alive(pid), "{what}: the task is gone");
    assert!(checkpoint_names(mnt).is_empty(), "{what}: names left: {:?}", checkpoint_names(mnt));
    let left: Vec<_> =
        std::fs::read_dir(images).map(|rd| rd.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "{what}: image root not empty: {left:?}");
    assert!(snapshot_ids(mnt).is_empty(), "{what}: snapshots left: {:?}", snapshot_ids(mnt));
}

/// Remounts a filesystem read-write on drop.
struct RemountRw(PathBuf);
impl Drop for RemountRw {
    fn drop(&mut self) {
        let _ = Command::new("mount").arg("-o").arg("remount,rw").arg(&self.0).status();
    }
}

/// The filesystem is read-only (remounted so): the take fails at the relink, thaws, and says
/// why. (A filesystem with open orphans cannot be remounted read-only, so the task holds a
/// name-gone file, opened read-only.)
#[test]
fn read_only_filesystem() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("failures-ro");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a"), "hello").unwrap();
    let script =
        format!("cd '{}' && exec 3<a && ln a b && rm a && echo ready && exec sleep 1000", dir.display());
    let p = workload(Path::new("/bin/sh"), &["-c", &script], &work.path().join("log"), false, None);
    let images = work.path().join("images");
    let ro = RemountRw(fs.mnt.clone());
    sh(&format!("mount -o remount,ro '{}'", fs.mnt.display()));
    // lost+found/checkpoint does not exist yet: mkdir fails
    let (ok, _, err) = take(p.pid, &images, &["--engine", "none"]);
    assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, "read-only, no checkpoint dir");
    assert!(err.contains("Read-only file system") && err.contains("lost+found/checkpoint"), "{err}");
    // it exists: the link fails
    drop(ro);
    std::fs::create_dir_all(fs.path("lost+found/checkpoint")).unwrap();
    std::fs::set_permissions(fs.path("lost+found/checkpoint"), std::fs::Permissions::from_mode(0o700))
        .unwrap();
    let ro = RemountRw(fs.mnt.clone());
    sh(&format!("mount -o remount,ro '{}'", fs.mnt.display()));
    let (ok, _, err) = take(p.pid, &images, &["--engine", "none"]);
    assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, "read-only, checkpoint dir present");
    assert!(err.contains("Read-only file system") && err.contains("linkat"), "{err}");
    drop(ro);
    // read-write again: it works
    let (ok, out, err) = take(p.pid, &images, &["--engine", "none"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(checkpoint_names(&fs.mnt).len(), 1);
}

/// ext4 full while a large dense orphan is copied: a clear "no space" error, the task thawed,
/// the half-made copy gone (it was an O_TMPFILE, never linked).
#[test]
fn full_filesystem_during_orphan_copy() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "96M");
    let work = Scratch::new("failures-full");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "dense:24000000", "orphan:1000000"],
        &work.path().join("log"),
        false,
        None,
    );
    sh("sync");
    let v = nix::sys::statvfs::statvfs(&fs.mnt).unwrap();
    let free = v.blocks_free() * v.fragment_size();
    let filler = free.saturating_sub(4 << 20);
    sh(&format!("fallocate -l {filler} '{}'", fs.path("filler").display()));
    sh("sync");
    let v = nix::sys::statvfs::statvfs(&fs.mnt).unwrap();
    let free = v.blocks_free() * v.fragment_size();
    assert!(free < 12 << 20, "free {free}");
    let images = work.path().join("images");
    let (ok, _, err) = take(p.pid, &images, &["--engine", "none"]);
    assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, "full filesystem");
    assert!(err.contains("no space left") && err.contains("dense-24000000"), "{err}");
    let v2 = nix::sys::statvfs::statvfs(&fs.mnt).unwrap();
    assert!(v2.blocks_free() * v2.fragment_size() + (1 << 20) >= free, "the failed copy still holds space");
    // with room again it works
    std::fs::remove_file(fs.path("filler")).unwrap();
    let (ok, out, err) = take(p.pid, &images, &["--engine", "none"]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(checkpoint_names(&fs.mnt).len(), 2);
}

/// `--snapshot btrfs` on ext4, files only: the snapshot fails after the relink; the names are
/// removed and the task thawed.
#[test]
fn snapshot_fails() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("failures-snap");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let images = work.path().join("images");
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "ab", "orphan:1000000", "tmpfile", "fifo"],
        &work.path().join("log"),
        false,
        None,
    );
    // without --strict-snapshots the ext4's names would stay on it (one-shot)
    let (ok, _, err) =
        take(p.pid, &images, &["--engine", "none", "--snapshot", "btrfs", "--strict-snapshots"]);
    assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, "snapshot fails, files only");
    assert!(err.contains("not btrfs"), "{err}");
    // refused before anything was relinked: no checkpoint directory was even made
    assert!(!fs.path("lost+found/checkpoint").exists());
}

/// The same with CRIU: the snapshot fails in CRIU's post-dump notification, CRIU gives up and
/// must let the task go on (SIGSTOP and cgroup v2 freezer).
#[test]
fn snapshot_fails_in_criu_post_dump() {
    let _g = serial();
    // btrfs passes the checks made before freezing and relinking; the snapshot directory is
    // made writable by others at CRIU's post-dump, so the snapshot taken there is refused
    let fs = LoopFs::new("btrfs", "512M");
    std::fs::create_dir_all(fs.path(".snapckpt")).unwrap();
    let work = Scratch::new("failures-snap-criu");
    let images = work.path().join("images");
    for round in 0..4 {
        for cgroup in [false, true] {
            let what = format!("snapshot fails in post-dump, cgroup {cgroup}, round {round}");
            let dir = fs.path(&format!("d{}", unique()));
            std::fs::create_dir_all(&dir).unwrap();
            let cg = cgroup.then(|| Cgroup::new(Cg::V2, "failures-snapcriu"));
            let p = workload(
                &prog("ufiles"),
                &["setup", dir.to_str().unwrap(), "ab", "orphan:1000000", "tmpfile"],
                &work.path().join(format!("log{}", unique())),
                true,
                cg.as_ref(),
            );
            let sel = match &cg {
                Some(c) => vec!["--cgroup".to_string(), c.arg()],
                None => vec!["--pid".to_string(), p.pid.to_string()],
            };
            let mut args: Vec<&str> = vec![
                "take",
                "--image-root",
                images.to_str().unwrap(),
                "--engine",
                "criu",
                "--snapshot",
                "btrfs",
            ];
            args.extend(sel.iter().map(String::as_str));
            std::fs::set_permissions(fs.path(".snapckpt"), std::fs::Permissions::from_mode(0o700)).unwrap();
            let hooks = Hooks::new(work.path().join(format!("hooks{}", unique())), &["take-post-dump"]);
            let child = hooks.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            hooks.wait_reached("take-post-dump", &what);
            std::fs::set_permissions(fs.path(".snapckpt"), std::fs::Permissions::from_mode(0o777)).unwrap();
            hooks.release("take-post-dump");
            let out = child.wait_with_output().unwrap();
            let (ok, err) = (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned());
            assert!(!ok && err.contains("writable by group or others"), "{what}: {err}");
            assert_not_frozen(p.pid, cg.as_ref(), &what);
            assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, &what);
        }
    }
}

/// The log file an error names (`see the whole log: PATH`).
fn named_log(err: &str) -> Option<PathBuf> {
    err.lines().find_map(|l| l.split("see the whole log: ").nth(1)).map(|s| PathBuf::from(s.trim()))
}

/// A ufiles workload (a session leader) that also holds an established TCP connection (fd 3)
/// to a listener of the test: CRIU refuses to dump it without --tcp-established, after the
/// freeze and the relink. The listener's side is returned to keep the connection up.
fn workload_with_tcp(dir: &Path, log: &Path) -> (Proc, std::net::TcpListener, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; exec '{}' setup '{}' orphan:100000",
        prog("ufiles").display(),
        dir.display()
    );
    let p = workload(Path::new("/bin/bash"), &["-c", &script], log, true, None);
    let (peer, _) = l.accept().unwrap();
    (p, l, peer)
}

/// CRIU fails: a task that is not a session leader (refused before the freeze: CRIU would
/// refuse it after), a connection CRIU refuses to dump after the freeze, and a CRIU that is not
/// CRIU at all. A clear error (naming the CRIU log); the task thawed and running; nothing left.
#[test]
fn criu_fails() {
    let _g = serial();
    let fs = LoopFs::new("btrfs", "512M");
    let work = Scratch::new("failures-criu");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let images = work.path().join("images");
    let p = shell_job(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "ab", "orphan:1000000"],
        &work.path().join("log1"),
    );
    let (ok, _, err) = take(p.pid, &images, &["--engine", "criu", "--snapshot", "btrfs"]);
    assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, "not a session leader");
    assert!(err.contains("is not a session leader") && err.contains("nothing was changed"), "{err}");
    drop(p);
    let (p, _l, _peer) = workload_with_tcp(&dir, &work.path().join("log1"));
    let (ok, _, err) = take(p.pid, &images, &["--engine", "criu", "--snapshot", "btrfs"]);
    assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, "an established TCP connection");
    assert!(
        err.contains("criu dump failed") && named_log(&err).is_some_and(|l| l.ends_with("criu-dump.log")),
        "{err}"
    );
    drop(p);
    let dir = fs.path("d2");
    std::fs::create_dir_all(&dir).unwrap();
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "ab", "orphan:1000000"],
        &work.path().join("log2"),
        true,
        None,
    );
    let (ok, _, err) = take(p.pid, &images, &["--engine", "criu", "--criu", "/bin/false"]);
    assert_clean_failure(ok, &err, p.pid, &fs.mnt, &images, "criu is /bin/false");
    assert!(
        err.contains("criu dump failed") && err.contains("CRIU wrote no log") && named_log(&err).is_none(),
        "{err}"
    );
    // and the real one still works on the same task
    let (ok, out, err) = take(p.pid, &images, &["--engine", "criu", "--snapshot", "btrfs"]);
    assert!(ok, "{out}\n{err}");
    wait_gone(p.pid);
}

/// The CRIU log an error names is there to be read.
#[test]
fn criu_failure_keeps_the_log_it_names() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("failures-criu-log");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let images = work.path().join("images");
    let (p, _l, _peer) = workload_with_tcp(&dir, &work.path().join("log"));
    let (ok, _, err) = take(p.pid, &images, &["--engine", "criu"]);
    assert!(!ok);
    let log = named_log(&err).unwrap_or_else(|| panic!("no log named: {err}"));
    assert!(log.is_file(), "{} does not exist; error was:\n{err}", log.display());
    assert!(log.starts_with(&images), "{} is outside the image root", log.display());
    assert_not_frozen(p.pid, None, "criu failed");
    // gc removes the kept log with the rest of the failed take.
    let out =
        snapckpt_ok(&["gc", "--image-root", images.to_str().unwrap(), "--mount", fs.mnt.to_str().unwrap()]);
    assert!(!log.exists(), "gc left {}:\n{out}", log.display());
    let left: Vec<_> = std::fs::read_dir(&images).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "image root not empty after gc: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// Hostile input
// ---------------------------------------------------------------------------------------------

/// What must not change: a file's bytes, mode, owner, link count and mtime.
fn fingerprint(p: &Path) -> String {
    let md = std::fs::symlink_metadata(p).unwrap();
    format!(
        "{:?} mode {:o} uid {} nlink {} mtime {}.{}",
        fnv_file(p).ok(),
        md.mode(),
        md.uid(),
        md.nlink(),
        md.mtime(),
        md.mtime_nsec()
    )
}

fn set(v: &mut Value, path: &str, new: Value) {
    let mut cur = v;
    for k in path.split('.') {
        cur = match k.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[k],
        };
    }
    *cur = new;
}

/// Run snapckpt with a time limit (SIGKILL after 60 s) and an address-space limit (2 GiB), so
/// that a reader that blocks or reads without bound fails the test instead of hanging it or
/// exhausting the host's memory. Also returns how long it took.
fn snapckpt_bounded(args: &[&str]) -> (bool, String, String, Duration) {
    let t0 = Instant::now();
    let mut c = Command::new("timeout");
    c.args(["-s", "KILL", "60"]).arg(snapckpt_bin()).args(args).stdin(Stdio::null());
    unsafe {
        c.pre_exec(|| {
            let l = libc::rlimit { rlim_cur: 2 << 30, rlim_max: 2 << 30 };
            if libc::setrlimit(libc::RLIMIT_AS, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = c.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        t0.elapsed(),
    )
}

/// Job files that are not regular files (`--job /dev/zero` read until the host ran out of
/// memory; a FIFO blocked) or are too large: refused at once, with what the path is.
#[test]
fn hostile_job_files() {
    let work = Scratch::new("failures-hostile-job");
    let fifo = work.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = work.path().join("big.toml");
    std::fs::write(&big, format!("name = \"{}\"\n", "x".repeat(2 << 20))).unwrap();
    let empty_root = work.path().join("empty-root.toml");
    // (a pid that cannot exist: should the job load, nothing is frozen)
    std::fs::write(&empty_root, "image_root = \"\"\n[tasks]\npid = 2147483647\n").unwrap();
    let images = work.path().join("images");
    for (job, expect) in [
        (Path::new("/dev/zero"), "/dev/zero: is a character device, not a regular file"),
        (fifo.as_path(), "fifo.toml: is a FIFO, not a regular file"),
        (work.path(), "is a directory, not a regular file"),
        (big.as_path(), "big.toml: larger than 1 MiB: not a job file"),
        (empty_root.as_path(), "empty-root.toml: image_root = \"\""),
    ] {
        let j = job.to_str().unwrap();
        for args in [
            vec!["take", "--job", j, "--dry-run"],
            vec!["take", "--job", j, "--image-root", images.to_str().unwrap()],
        ] {
            let (ok, out, err, took) = snapckpt_bounded(&args);
            assert!(!ok, "{args:?} succeeded: {out}");
            assert_no_panic(&err);
            assert!(
                err.starts_with("snapckpt: error: ") && err.contains(expect),
                "{args:?}: expected {expect:?} in: {err}"
            );
            assert!(took < Duration::from_secs(10), "{args:?} took {took:?}");
        }
    }
    assert!(!images.exists(), "a refused job created the image root");
}

/// Corrupt and hostile checkpoint records given to `restart` and `delete`: a clear error,
/// no panic, nothing written or removed anywhere (the live names, a file outside, the record
/// itself).
#[test]
fn hostile_checkpoint_records() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("failures-hostile");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "ab", "orphan:100000"],
        &work.path().join("log"),
        false,
        None,
    );
    let images = work.path().join("images");
    let (ok, out, err) = take(p.pid, &images, &["--engine", "none"]);
    assert!(ok, "{err}");
    let id = take_id(&out);
    let good = record(&images.join(&id));
    let orphan = good["objects"].as_array().unwrap().iter().position(|o| o["class"] == "orphan").unwrap();
    let fd_with_object =
        good["tasks"][0]["fds"].as_array().unwrap().iter().position(|f| !f["object"].is_null()).unwrap();
    let names = checkpoint_names(&fs.mnt);
    assert_eq!(names.len(), 2);
    // bait: a file outside the image root and the checkpoint directory
    let outside = work.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("victim"), "precious").unwrap();
    let watched = [outside.join("victim"), PathBuf::from("/etc/passwd"), dir.join("b")];
    let prints: Vec<String> = watched.iter().map(|p| fingerprint(p)).collect();
    let live_names = listing(&checkpoint_dir(&fs.mnt), &[]);

    let o = format!("objects.{orphan}");
    let f = format!("tasks.0.fds.{fd_with_object}");
    // (what, record, expected in the error); every one fails to load
    let mut bad: Vec<(String, Vec<u8>, &str)> = vec![];
    let mut mutate = |what: &str, path: &str, v: Value, expect: &'static str| {
        let mut r = good.clone();
        set(&mut r, path, v);
        bad.push((what.to_string(), serde_json::to_vec_pretty(&r).unwrap(), expect));
    };
    mutate("name escapes", &format!("{o}.relinked.name"), "../../etc/passwd".into(), "not a plain file name");
    mutate("name absolute", &format!("{o}.relinked.name"), "/etc/passwd".into(), "not a plain file name");
    mutate("name dot-dot", &format!("{o}.relinked.name"), "..".into(), "not a plain file name");
    mutate("name empty", &format!("{o}.relinked.name"), "".into(), "not a plain file name");
    mutate(
        "rel_path escapes",
        &format!("{o}.relinked.rel_path"),
        "lost+found/checkpoint/../../../etc/passwd".into(),
        "is not under",
    );
    mutate("fd object out of range", &format!("{f}.object"), 99.into(), "refers to object 99");
    mutate(
        "map object out of range",
        "tasks.0.cwd",
        serde_json::json!({"path": "/", "dev": 1, "ino": 2, "object": 1000000}),
        "refers to object 1000000",
    );
    mutate("object index lies", &format!("{o}.index"), 7.into(), "says it is object 7");
    mutate("negative fd", &format!("{f}.fd"), (-5).into(), "negative fd");
    mutate(
        "fd beyond i32",
        &format!("{f}.fd"),
        serde_json::json!(4294967296u64),
        "not a valid checkpoint record",
    );
    mutate("size beyond u64", &format!("{o}.size"), serde_json::json!(1e30), "not a valid checkpoint record");
    mutate("wrong version", "version", 2.into(), "version 2 is not supported");
    mutate("huge version", "version", serde_json::json!(u32::MAX), "is not supported");
    mutate("wrong format", "format", "something-else".into(), "format is");
    mutate("id escapes", "id", "../../tmp/x".into(), "checkpoint id");
    mutate("relative mount point", &format!("{o}.mount.mount_point"), "mnt/../x".into(), "not absolute");
    mutate(
        "absolute mount point with ..",
        &format!("{o}.mount.mount_point"),
        "/../victim".into(),
        "mount point \"/../victim\" is not a normalized absolute path",
    );
    mutate(
        "mount point with //",
        &format!("{o}.mount.mount_point"),
        format!("{}//", fs.mnt.display()).into(),
        "is not a normalized absolute path",
    );
    // a record that takes another checkpoint's files: its id differs from its objects' names
    mutate(
        "id differs from the objects' names",
        "id",
        OTHER_ID.into(),
        "not of this checkpoint 20261127T000000Z-0bad",
    );
    mutate("pid -1", "tasks.0.pid", (-1).into(), "task pid -1 is not a process id");
    mutate("pid 0", "tasks.0.pid", 0.into(), "task pid 0 is not a process id");
    mutate("ppid -1", "tasks.0.ppid", (-1).into(), "parent pid -1 is negative");
    mutate("fd 2147483647", &format!("{f}.fd"), 2147483647.into(), "fd 2147483647 is above 1048576");
    mutate("position beyond off_t", &format!("{f}.pos"), serde_json::json!(u64::MAX), "file position");
    // S_IFIFO | 0600: a FIFO that the record calls a regular file (restart opened it as one)
    mutate(
        "kind regular for a FIFO object",
        &format!("{o}.mode"),
        (0o10600).into(),
        "kind is \"regular\" but its mode 10600 is that of a fifo",
    );
    mutate(
        "directory kind for a file",
        &format!("{o}.kind"),
        "directory".into(),
        "kind is \"directory\" but its mode",
    );
    mutate("unknown kind", &format!("{o}.kind"), "teleporter".into(), "not a valid checkpoint record");
    mutate("unknown field", "extra", 1.into(), "not a valid checkpoint record");
    let text = serde_json::to_vec_pretty(&good).unwrap();
    bad.push(("truncated".into(), text[..text.len() / 2].to_vec(), "not a valid checkpoint record"));
    bad.push(("empty".into(), vec![], "not a valid checkpoint record"));
    bad.push(("not UTF-8".into(), b"\xff\xfe{\"format\"\x00".to_vec(), "not a valid checkpoint record"));
    bad.push((
        "deep nesting".into(),
        format!("{}{}", "[".repeat(100000), "]".repeat(100000)).into_bytes(),
        "not a valid checkpoint record",
    ));
    bad.push((
        "number overflow".into(),
        String::from_utf8_lossy(&text)
            .replacen("\"created_unix\": ", "\"created_unix\": 99999999999999999999999", 1)
            .into_bytes(),
        "not a valid checkpoint record",
    ));

    let check_untouched = |what: &str| {
        for (p, before) in watched.iter().zip(&prints) {
            assert_eq!(&fingerprint(p), before, "{what}: {} changed", p.display());
        }
        assert_eq!(
            listing(&checkpoint_dir(&fs.mnt), &[]),
            live_names,
            "{what}: the live checkpoint's names changed"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            1,
            "{what}: something was written next to the bait"
        );
    };
    let ufiles = prog("ufiles");
    for (i, (what, bytes, expect)) in bad.iter().enumerate() {
        let hid = format!("hostile-{i}");
        let hdir = images.join(&hid);
        std::fs::create_dir_all(&hdir).unwrap();
        std::fs::write(hdir.join("checkpoint.json"), bytes).unwrap();
        let ir = images.to_str().unwrap();
        for args in [
            vec!["restart", &hid, "--image-root", ir, "--exec", ufiles.to_str().unwrap(), "report"],
            vec!["restart", &hid, "--image-root", ir],
            vec![
                "restart",
                &hid,
                "--image-root",
                ir,
                "--snapshot",
                "--mount-root",
                outside.to_str().unwrap(),
            ],
            vec!["delete", &hid, "--image-root", ir],
            vec!["delete", &hid, "--image-root", ir, "--force"],
        ] {
            let (ok, out, err) = snapckpt(&args);
            assert!(!ok, "{what}: {args:?} succeeded: {out}");
            assert_no_panic(&err);
            assert!(
                err.starts_with("snapckpt: error: ") && err.contains(expect),
                "{what}: {args:?}: expected {expect:?} in: {err}"
            );
            assert!(!out.contains("ufiles") && !out.contains("FD "), "{what}: the command ran: {out}");
            check_untouched(what);
            assert_eq!(
                std::fs::read(hdir.join("checkpoint.json")).unwrap(),
                *bytes,
                "{what}: the record was changed"
            );
        }
        // `list` shows it as unreadable and goes on
        let (ok, out, err) = snapckpt(&["list", "--image-root", ir]);
        assert!(ok, "{what}: list failed: {err}");
        assert_no_panic(&err);
        assert!(out.contains(&hid) && out.contains(&id), "{what}: {out}");
        std::fs::remove_dir_all(&hdir).unwrap();
    }

    // Records that load but do not match the disk: restart refuses, changes nothing.
    let mut loadable: Vec<(String, Value, &str)> = vec![];
    let mut m2 = |what: &str, path: &str, v: Value, expect: &'static str| {
        let mut r = good.clone();
        set(&mut r, path, v);
        loadable.push((what.to_string(), r, expect));
    };
    m2("size huge", &format!("{o}.size"), serde_json::json!(u64::MAX), "is not the recorded object");
    m2(
        "inode wrong",
        &format!("{o}.relinked.ino"),
        serde_json::json!(u64::MAX),
        "is not the recorded object",
    );
    let other = names.iter().find(|n| **n != good["objects"][orphan]["relinked"]["name"]).unwrap().clone();
    m2(
        "name of another object",
        &format!("{o}.relinked.name"),
        other.clone().into(),
        "is not the recorded object",
    );
    m2(
        "name missing",
        &format!("{o}.relinked.name"),
        format!("unlink-at-restart-{id}-99").into(),
        "cannot be restarted again",
    );
    m2(
        "mount point elsewhere",
        &format!("{o}.mount.mount_point"),
        outside.to_str().unwrap().into(),
        "is not the root of a mount",
    );
    m2("exec task missing", "tasks.0.fds", serde_json::json!([]), "holds an unlinked file");
    m2(
        "criu pid in use",
        "engine",
        serde_json::json!({"name": "criu", "version": "x", "leave_running": false, "images": []}),
        "is in use",
    );
    m2("snapshots missing", "links_removed", true.into(), "kept only in its snapshots");
    for (i, (what, mut r, expect)) in loadable.into_iter().enumerate() {
        let hid = format!("loadable-{i}");
        if what == "name of another object" || what.starts_with("name missing") {
            // keep rel_path consistent so that the record validates
            let n = r["objects"][orphan]["relinked"]["name"].as_str().unwrap().to_string();
            set(&mut r, &format!("{o}.relinked.rel_path"), format!("lost+found/checkpoint/{n}").into());
        }
        if what == "criu pid in use" {
            set(&mut r, "tasks.0.pid", std::process::id().into());
        }
        let hdir = images.join(&hid);
        std::fs::create_dir_all(&hdir).unwrap();
        let bytes = serde_json::to_vec_pretty(&r).unwrap();
        std::fs::write(hdir.join("checkpoint.json"), &bytes).unwrap();
        snapckpt::image::load(&hdir).unwrap_or_else(|e| panic!("{what}: {e}"));
        let ir = images.to_str().unwrap();
        let args = if what == "criu pid in use" {
            vec!["restart", &hid, "--image-root", ir]
        } else {
            vec!["restart", &hid, "--image-root", ir, "--exec", ufiles.to_str().unwrap(), "report"]
        };
        let (ok, out, err) = snapckpt(&args);
        assert!(!ok, "{what}: restart succeeded: {out}");
        assert_no_panic(&err);
        assert!(
            err.starts_with("snapckpt: error: ") && err.contains(expect),
            "{what}: expected {expect:?} in: {err}"
        );
        assert!(!out.contains("FD "), "{what}: the command ran: {out}");
        check_untouched(&what);
        std::fs::remove_dir_all(&hdir).unwrap();
    }

    // Records with hostile snapshots: `delete` and `restart --snapshot` refuse before they
    // touch anything (no name removed, nothing mounted).
    let snap = |device: &str, path: &str, fs_path: &str| {
        serde_json::json!([{"backend": "btrfs", "mount_point": fs.mnt, "device": device, "origin_subvol_id": 5, "origin_subvol_path": "/",
            "subvol_id": 256, "uuid": "00000000-0000-0000-0000-000000000000", "path": path, "fs_path": fs_path, "created_unix": 0}])
    };
    // (the snapshot path and fs_path name the record's own id unless the case is about that)
    let own_path = format!("{}/.snapckpt/{id}/snapshot", fs.mnt.display());
    let own_fs_path = format!("/.snapckpt/{id}/snapshot");
    let lvm = |lv: &str| {
        serde_json::json!([{"backend": "lvm", "mount_point": fs.mnt, "fstype": "ext4", "vg": "snapckpt-test-novg", "origin_lv": "data", "origin_uuid": "u1",
            "snapshot_lv": lv, "snapshot_uuid": "u2", "kind": "thin", "created_unix": 0}])
    };
    let with_mount_point = |mp: &str| {
        let mut v = snap("/dev/null", &own_path, &own_fs_path);
        v[0]["mount_point"] = mp.into();
        v
    };
    let snaps = [
        (
            "snapshot path not normalized",
            snap("/dev/null", &format!("/etc/../etc/{id}/snapshot"), &own_fs_path),
            "normalized",
        ),
        (
            "snapshot fs_path escapes",
            snap("/dev/null", &own_path, &format!("/../../{id}/snapshot")),
            "normalized",
        ),
        (
            "snapshot fs_path of another checkpoint",
            snap("/dev/null", &own_path, "/.snapckpt/y/snapshot"),
            "another checkpoint",
        ),
        ("snapshot device is a file", snap("/etc/passwd", &own_path, &own_fs_path), "/etc/passwd"),
        (
            "snapshot device with options",
            snap("/dev/null,subvolid=5", &own_path, &own_fs_path),
            "absolute device path",
        ),
        (
            "snapshot uuid not a uuid",
            serde_json::json!([{"backend": "btrfs", "mount_point": fs.mnt, "device": "/dev/null", "origin_subvol_id": 5, "origin_subvol_path": "/",
            "subvol_id": 256, "uuid": "x/../y", "path": own_path, "fs_path": own_fs_path, "created_unix": 0}]),
            "not a UUID",
        ),
        (
            "snapshot mount point with ..",
            with_mount_point("/../victim"),
            "mount point \"/../victim\" is not a normalized absolute path",
        ),
        (
            "snapshot mount point with . ",
            with_mount_point(&format!("{}/.", fs.mnt.display())),
            "is not a normalized absolute path",
        ),
        (
            "btrfs snapshot of another checkpoint",
            snap(
                "/dev/null",
                &format!("{}/.snapckpt/{OTHER_ID}/snapshot", fs.mnt.display()),
                &format!("/.snapckpt/{OTHER_ID}/snapshot"),
            ),
            "is the snapshot of another checkpoint (20261127T000000Z-0bad), not of this checkpoint",
        ),
        (
            "LVM snapshot of another checkpoint",
            lvm(&format!("snapckpt-{OTHER_ID}")),
            "is not the snapshot LV of this checkpoint",
        ),
    ];
    for (i, (what, snapshots, expect)) in snaps.into_iter().enumerate() {
        let mut r = good.clone();
        set(&mut r, "snapshots", snapshots);
        let hid = format!("snap-{i}");
        let hdir = images.join(&hid);
        std::fs::create_dir_all(&hdir).unwrap();
        std::fs::write(hdir.join("checkpoint.json"), serde_json::to_vec_pretty(&r).unwrap()).unwrap();
        let ir = images.to_str().unwrap();
        let mroot = work.path().join("mroot");
        std::fs::create_dir_all(&mroot).unwrap();
        for args in [
            vec!["delete", &hid, "--image-root", ir],
            vec!["delete", &hid, "--image-root", ir, "--force"],
            vec![
                "restart",
                &hid,
                "--image-root",
                ir,
                "--snapshot",
                "--exec",
                ufiles.to_str().unwrap(),
                "report",
            ],
            vec![
                "restart",
                &hid,
                "--image-root",
                ir,
                "--snapshot",
                "--mount-root",
                mroot.to_str().unwrap(),
                "--exec",
                ufiles.to_str().unwrap(),
                "report",
            ],
        ] {
            let (ok, out, err) = snapckpt(&args);
            assert!(!ok, "{what}: {args:?} succeeded: {out}");
            assert_no_panic(&err);
            assert!(
                err.starts_with("snapckpt: error: ") && err.contains(expect),
                "{what}: {args:?}: expected {expect:?} in: {err}"
            );
            check_untouched(what);
            assert!(hdir.join("checkpoint.json").exists());
            assert!(
                mounts_under(&mroot).is_empty() && mounts_under(&fs.mnt).len() == 1,
                "{what}: {args:?} left a mount: {:?}",
                mounts_under(&fs.mnt)
            );
        }
        std::fs::remove_dir_all(&hdir).unwrap();
    }

    // A record file that is not a regular file: refused at once, without reading it (a FIFO
    // blocked the reader, a symlink to /dev/zero was read until memory ran out).
    let ir = images.to_str().unwrap();
    let fifo_dir = images.join("fifo-record");
    std::fs::create_dir_all(&fifo_dir).unwrap();
    nix::unistd::mkfifo(&fifo_dir.join("checkpoint.json"), nix::sys::stat::Mode::from_bits_truncate(0o600))
        .unwrap();
    let zero_dir = images.join("zero-record");
    std::fs::create_dir_all(&zero_dir).unwrap();
    std::os::unix::fs::symlink("/dev/zero", zero_dir.join("checkpoint.json")).unwrap();
    let dir_dir = images.join("dir-record");
    std::fs::create_dir_all(dir_dir.join("checkpoint.json")).unwrap();
    for (hid, expect) in [
        ("fifo-record", "not a valid checkpoint record: it is a FIFO, not a regular file"),
        (
            "zero-record",
            "not a valid checkpoint record: it is a symbolic link to /dev/zero, not a regular file",
        ),
        ("dir-record", "not a valid checkpoint record: it is a directory, not a regular file"),
    ] {
        let rec = images.join(hid).join("checkpoint.json");
        let kind = std::fs::symlink_metadata(&rec).unwrap().file_type();
        for args in [
            vec!["restart", hid, "--image-root", ir, "--exec", ufiles.to_str().unwrap(), "report"],
            vec!["restart", hid, "--image-root", ir],
            vec!["delete", hid, "--image-root", ir],
            vec!["delete", hid, "--image-root", ir, "--force"],
        ] {
            let (ok, out, err, took) = snapckpt_bounded(&args);
            assert!(!ok, "{hid}: {args:?} succeeded: {out}");
            assert_no_panic(&err);
            assert!(
                err.starts_with(&format!("snapckpt: error: {}: ", rec.display())) && err.contains(expect),
                "{hid}: {args:?}: expected {expect:?} in: {err}"
            );
            assert!(took < Duration::from_secs(10), "{hid}: {args:?} took {took:?}");
            assert!(!out.contains("FD "), "{hid}: the command ran: {out}");
            check_untouched(hid);
            assert_eq!(
                std::fs::symlink_metadata(&rec).unwrap().file_type(),
                kind,
                "{hid}: the record was changed"
            );
        }
        let (ok, out, err, took) = snapckpt_bounded(&["list", "--image-root", ir]);
        assert!(ok && took < Duration::from_secs(10), "{hid}: list failed ({took:?}): {err}");
        assert!(out.contains(&format!("{hid}  (unreadable: ")) && out.contains(&id), "{hid}: {out}");
        std::fs::remove_dir_all(images.join(hid)).unwrap();
    }

    // The record of this checkpoint in the image directory of another id: restart and delete
    // refuse it (it would consume or remove this checkpoint's names); `delete --force` removes
    // only that directory.
    let misnamed = images.join(OTHER_ID);
    std::fs::create_dir_all(&misnamed).unwrap();
    std::fs::copy(images.join(&id).join("checkpoint.json"), misnamed.join("checkpoint.json")).unwrap();
    for args in [
        vec!["restart", OTHER_ID, "--image-root", ir, "--exec", ufiles.to_str().unwrap(), "report"],
        vec!["restart", OTHER_ID, "--image-root", ir],
        vec!["delete", OTHER_ID, "--image-root", ir],
    ] {
        let (ok, out, err) = snapckpt(&args);
        assert!(!ok, "misnamed image directory: {args:?} succeeded: {out}");
        assert_no_panic(&err);
        let expect = format!("the record is of checkpoint {id}, but its image directory is named {OTHER_ID}");
        assert!(
            err.starts_with("snapckpt: error: ") && err.contains(&expect),
            "{args:?}: expected {expect:?} in: {err}"
        );
        assert!(!out.contains("FD "), "misnamed image directory: the command ran: {out}");
        check_untouched("misnamed image directory");
    }
    let (ok, out, err) = snapckpt(&["delete", OTHER_ID, "--image-root", ir, "--force"]);
    assert!(ok && out.contains("deleted image directory"), "{out}\n{err}");
    check_untouched("misnamed image directory, delete --force");
    assert!(!misnamed.exists() && images.join(&id).join("checkpoint.json").exists());

    // the real checkpoint is intact and restarts
    drop(p);
    let (ok, out, err) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        images.to_str().unwrap(),
        "--exec",
        ufiles.to_str().unwrap(),
        "report",
    ]);
    assert!(ok && out.contains("FD 3"), "{out}\n{err}");
}

/// Where restart opens the preserved files: a non-root user cannot plant anything there;
/// a symlink or a hard link planted there anyway (by root) is refused, and the file it leads
/// to is left as it was.
#[test]
fn planted_links_are_refused() {
    let _g = serial();
    let fs = LoopFs::new("ext4", "256M");
    let work = Scratch::new("failures-plant");
    let dir = fs.path("d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = work.path().join("log");
    let p = workload(
        &prog("ufiles"),
        &["setup", dir.to_str().unwrap(), "orphan:100000", "tmpfile"],
        &log,
        false,
        None,
    );
    let before = fd_lines(&first_report(&log));
    let images = work.path().join("images");
    let (ok, out, err) = take(p.pid, &images, &["--engine", "none"]);
    assert!(ok, "{err}");
    let id = take_id(&out);
    drop(p);
    let rec = snapckpt::image::load(&images.join(&id)).unwrap();
    let orphan = rec
        .objects
        .iter()
        .find(|o| o.relinked.as_ref().is_some_and(|r| r.method != snapckpt::record::Method::Link))
        .unwrap();
    let name = orphan.relinked.as_ref().unwrap().name.clone();
    let ckdir = checkpoint_dir(&fs.mnt);
    let target = ckdir.join(&name);

    // secrets: root-owned files on the same filesystem and elsewhere
    let secret = fs.path("secret");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret2 = work.path().join("secret2");
    std::fs::write(&secret2, "root only too").unwrap();
    let print = (fingerprint(&secret), fingerprint(&secret2));

    // 1. nobody cannot plant a link there (lost+found and checkpoint are root-only)
    let setpriv = |cmd: &str| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", cmd])
            .output()
            .unwrap()
    };
    for cmd in [
        format!("ln -s '{}' '{}/evil'", secret.display(), ckdir.display()),
        format!("echo x > '{0}/x' && ln '{0}/x' '{1}/evil'", dir.display(), ckdir.display()),
        format!("ls '{}'", ckdir.display()),
    ] {
        let o = setpriv(&cmd);
        assert!(
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
            "as nobody: {cmd}: {o:?}"
        );
    }
    assert!(!ckdir.join("evil").exists());
    // nobody owns the workload's directory and plants a symlink where the original file was:
    // restart does not look there
    let o = setpriv(&format!("ln -s '{}' '{}'", secret.display(), orphan.original_path));
    assert!(o.status.success(), "{o:?}");

    let ufiles = prog("ufiles");
    let restart = || {
        snapckpt(&[
            "restart",
            &id,
            "--image-root",
            images.to_str().unwrap(),
            "--exec",
            ufiles.to_str().unwrap(),
            "write",
            "3",
            "PWNED",
        ])
    };
    let saved = ckdir.join(format!("{name}.saved"));
    std::fs::rename(&target, &saved).unwrap();
    // 2. a symlink to a file on the same filesystem, and to one elsewhere
    for to in [&secret, &secret2] {
        std::os::unix::fs::symlink(to, &target).unwrap();
        let (ok, out, err) = restart();
        assert!(!ok, "restart through a planted symlink succeeded: {out}");
        assert_no_panic(&err);
        assert!(err.contains("symbolic link") || err.contains("symlink"), "{err}");
        assert_eq!(
            (fingerprint(&secret), fingerprint(&secret2)),
            print,
            "a planted symlink's target changed"
        );
        assert!(
            std::fs::symlink_metadata(&target).unwrap().file_type().is_symlink(),
            "restart removed the planted symlink"
        );
        std::fs::remove_file(&target).unwrap();
    }
    // 3. a hard link to a root-owned file on the same filesystem
    std::fs::hard_link(&secret, &target).unwrap();
    let print_linked = fingerprint(&secret);
    let (ok, out, err) = restart();
    assert!(!ok, "restart through a planted hard link succeeded: {out}");
    assert_no_panic(&err);
    assert!(err.contains("is not the recorded object") && err.contains("inode"), "{err}");
    assert_eq!(fingerprint(&secret), print_linked, "a planted hard link's file changed");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only");
    std::fs::remove_file(&target).unwrap();
    assert_eq!((fingerprint(&secret), fingerprint(&secret2)), print);

    // 4. the real file back: restart works, writes go to the preserved copy only
    std::fs::rename(&saved, &target).unwrap();
    let (ok, out, err) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        images.to_str().unwrap(),
        "--exec",
        ufiles.to_str().unwrap(),
        "report",
    ]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(fd_lines(&out), before);
    assert_eq!((fingerprint(&secret), fingerprint(&secret2)), print);
}

// ---------------------------------------------------------------------------------------------
// Fuzz smoke test
// ---------------------------------------------------------------------------------------------

#[path = "../../fuzz/targets.rs"]
mod fuzz_targets;

const DICT: &[&str] = &[
    "../../etc/passwd",
    "/etc/passwd",
    "..",
    ".",
    "",
    "\\u0000",
    "\\ud800",
    "\\n",
    " (deleted)",
    "18446744073709551615",
    "18446744073709551616",
    "-1",
    "-9223372036854775808",
    "9223372036854775807",
    "4294967295",
    "4294967296",
    "2147483648",
    "1e999",
    "-0",
    "0.5",
    "null",
    "true",
    "false",
    "[]",
    "{}",
    "\"\"",
    "[[",
    "]]",
    "{\"",
    "\":",
    ",",
    "%t",
    "%n",
    "%%",
    "XXXXXX",
    "%",
    "/",
    "\0",
    "\u{feff}",
    "é",
    "[tasks]",
    "[[filesystem]]",
    "[criu]",
    "pid = ",
    "cgroup = ",
    "tree = true",
    "snapshot = \"lvm\"",
    "lvm_size = ",
    "snapshot_dir = ",
    "timeout_ms = 0",
    "engine = \"criu\"",
    "template = ",
    "= ",
    "\"\"\"",
    "'''",
    "inf",
    "nan",
    "0x10",
    "1979-05-27T07:32:00Z",
    "\"criu\"",
    "\"btrfs\"",
    "\"lvm\"",
    "\"none\"",
    "\"link\"",
    "\"clone\"",
    "\"orphan\"",
    "\"directory\"",
    "\"fifo\"",
];

fn mutate_bytes(rng: &mut Rng, mut v: Vec<u8>, seeds: &[Vec<u8>]) -> Vec<u8> {
    for _ in 0..1 + rng.below(6) {
        let len = v.len() as u64;
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                v[i] = *rng.pick(b"{}[]\",:\\\0\xff\n=#'.-0123456789eE+");
            }
            2 if len > 0 => {
                let a = rng.below(len) as usize;
                let b = (a + 1 + rng.below(64) as usize).min(v.len());
                v.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.below(len) as usize;
                let b = (a + 1 + rng.below(256) as usize).min(v.len());
                let chunk = v[a..b].to_vec();
                let at = rng.below(len + 1) as usize;
                v.splice(at..at, chunk);
            }
            4 => {
                let at = rng.below(len + 1) as usize;
                let w = rng.pick(DICT).as_bytes().to_vec();
                v.splice(at..at, w);
            }
            5 if len > 0 => {
                v.truncate(rng.below(len) as usize);
            }
            6 => {
                // replace a run of digits by an extreme number
                let starts: Vec<usize> = (0..v.len())
                    .filter(|&i| v[i].is_ascii_digit() && (i == 0 || !v[i - 1].is_ascii_digit()))
                    .collect();
                if !starts.is_empty() {
                    let a = *rng.pick(&starts);
                    let b = (a..v.len()).find(|&i| !v[i].is_ascii_digit()).unwrap_or(v.len());
                    let n = rng
                        .pick(&[
                            "0",
                            "1",
                            "255",
                            "256",
                            "4294967295",
                            "4294967296",
                            "18446744073709551615",
                            "18446744073709551616",
                            "99999999999999999999999",
                            "1e308",
                            "-1",
                        ])
                        .as_bytes()
                        .to_vec();
                    v.splice(a..b, n);
                }
            }
            7 => {
                // splice with another seed
                let o = rng.pick(seeds);
                if !o.is_empty() {
                    let a = rng.below(o.len() as u64) as usize;
                    let b = (a + rng.below(512) as usize).min(o.len());
                    let at = rng.below(len + 1) as usize;
                    v.splice(at..at, o[a..b].iter().copied());
                }
            }
            _ => {
                // replace a quoted string's contents
                let quotes: Vec<usize> = (0..v.len()).filter(|&i| v[i] == b'"').collect();
                if quotes.len() >= 2 {
                    let k = rng.below(quotes.len() as u64 - 1) as usize;
                    let (a, b) = (quotes[k] + 1, quotes[k + 1]);
                    v.splice(a..b, rng.pick(DICT).as_bytes().iter().copied());
                }
            }
        }
    }
    v
}

fn random_value(rng: &mut Rng, depth: u32) -> Value {
    match rng.below(if depth > 3 { 8 } else { 10 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => serde_json::json!(*rng.pick(&[
            0u64,
            1,
            255,
            65535,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            i64::MAX as u64,
            u64::MAX
        ])),
        3 => serde_json::json!(*rng.pick(&[-1i64, i32::MIN as i64, i64::MIN])),
        4 => serde_json::json!(1.5e300),
        5 | 6 => Value::String(rng.pick(DICT).to_string()),
        7 => Value::String("x".repeat(rng.below(5000) as usize)),
        8 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => Value::Object(
            (0..rng.below(4))
                .map(|_| {
                    (
                        rng.pick(&["name", "index", "fd", "object", "pid", "backend", "path", "x"])
                            .to_string(),
                        random_value(rng, depth + 1),
                    )
                })
                .collect(),
        ),
    }
}

/// Replace one node of a JSON document (a random path) by a random value: the record stays
/// valid JSON, so the mutations reach the typed parser and `validate`.
fn mutate_json(rng: &mut Rng, mut v: Value) -> Value {
    for _ in 0..1 + rng.below(3) {
        // choose a node (as a JSON pointer), walking down from the root
        let mut ptr = String::new();
        let mut cur = &v;
        loop {
            if rng.below(4) == 0 {
                break;
            }
            let (step, next) = match cur {
                Value::Object(m) if !m.is_empty() => {
                    let (k, n) = m.iter().nth(rng.below(m.len() as u64) as usize).unwrap();
                    (k.replace('~', "~0").replace('/', "~1"), n)
                }
                Value::Array(a) if !a.is_empty() => {
                    let i = rng.below(a.len() as u64) as usize;
                    (i.to_string(), &a[i])
                }
                _ => break,
            };
            ptr.push('/');
            ptr.push_str(&step);
            cur = next;
        }
        let new = match rng.below(4) {
            0 => Value::Null,
            1 if cur.is_number() => {
                serde_json::json!(*rng.pick(&[0u64, u32::MAX as u64, u64::MAX, 7, 1000000]))
            }
            1 if cur.is_string() => Value::String(rng.pick(DICT).to_string()),
            _ => random_value(rng, 0),
        };
        *v.pointer_mut(&ptr).unwrap() = new;
    }
    v
}

fn seeds_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| (e.path(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v.into_iter().map(|x| x.1).collect()
}

/// Run `f` on `input`; a panic is reported with the input, saved where it can be replayed.
fn no_panic(what: &str, seed: u64, i: usize, input: &[u8], f: fn(&[u8])) {
    if std::panic::catch_unwind(|| f(input)).is_err() {
        let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-smoke-{what}-{seed}-{i}"));
        std::fs::write(&out, input).unwrap();
        panic!(
            "{what}: input {i} of seed {seed} panicked; saved as {} ({:?})",
            out.display(),
            String::from_utf8_lossy(&input[..input.len().min(300)])
        );
    }
}

/// ~20k mutated inputs, derived from the example job files, real checkpoint records and the
/// templates in fuzz/seeds, through the same target functions as cargo-fuzz: no panic.
#[test]
fn fuzz_smoke_parsers() {
    let seed = seed("fuzz_smoke_parsers");
    let mut rng = Rng::new(seed);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let json = seeds_in(&root.join("fuzz/seeds/checkpoint_json"));
    let mut toml = seeds_in(&root.join("config"));
    toml.extend(seeds_in(&root.join("fuzz/seeds/job_toml")));
    let templates = seeds_in(&root.join("fuzz/seeds/template"));
    // the seeds themselves are valid
    for j in &json {
        let ck: snapckpt::record::Checkpoint = serde_json::from_slice(j).unwrap();
        ck.validate(Path::new("seed")).unwrap();
        assert!(!ck.objects.is_empty() && !ck.snapshots.is_empty());
    }
    for t in toml.iter_mut() {
        // config/demo.toml ships a placeholder pid that every take refuses; the demo fills it in
        let text = std::str::from_utf8(t).unwrap().replace("\npid = 0\n", "\npid = 4242\n");
        snapckpt::job::Job::parse(&text, Path::new("seed.toml")).unwrap();
        *t = text.into_bytes();
    }
    for t in &templates {
        snapckpt::relink::Template::parse(std::str::from_utf8(t).unwrap()).unwrap();
    }
    let values: Vec<Value> = json.iter().map(|j| serde_json::from_slice(j).unwrap()).collect();
    let t0 = Instant::now();
    let mut n = 0;
    for i in 0..6000 {
        let input = {
            let x = rng.pick(&json).clone();
            mutate_bytes(&mut rng, x, &json)
        };
        no_panic("checkpoint_json", seed, i, &input, fuzz_targets::checkpoint_json);
        n += 1;
    }
    for i in 0..6000 {
        let v = {
            let x = rng.pick(&values).clone();
            mutate_json(&mut rng, x)
        };
        let input = serde_json::to_vec(&v).unwrap();
        no_panic("checkpoint_json_tree", seed, i, &input, fuzz_targets::checkpoint_json);
        n += 1;
    }
    for i in 0..6000 {
        let input = {
            let x = rng.pick(&toml).clone();
            mutate_bytes(&mut rng, x, &toml)
        };
        no_panic("job_toml", seed, i, &input, fuzz_targets::job_toml);
        n += 1;
    }
    for i in 0..3000 {
        let mut input = {
            let x = rng.pick(&templates).clone();
            mutate_bytes(&mut rng, x, &templates)
        };
        if rng.below(2) == 0 {
            input.push(b'\n');
            input.extend_from_slice(
                format!("unlink-at-restart-20261127T002101Z-{:04x}-{}", rng.below(65536), rng.next())
                    .as_bytes(),
            );
        }
        no_panic("template", seed, i, &input, fuzz_targets::template);
        n += 1;
    }
    eprintln!("fuzz smoke: {n} inputs in {:?}", t0.elapsed());
}

/// The name a template renders for a checkpoint is never attributed to another checkpoint by
/// `match_id`, or gc takes the names of a live checkpoint for stale ones and removes them.
#[test]
fn template_names_map_back_to_their_checkpoint() {
    let tpl = snapckpt::relink::Template::parse(TEMPLATE).unwrap();
    assert_eq!(
        tpl.match_id(&tpl.render("20261127T002101Z-3213", 10)).as_deref(),
        Some("20261127T002101Z-3213")
    );
    for t in ["ck-%t1%n", "ck-%n1%t", "10,%%-%t1%n", "unlink-at-restart-%t-%n", "ck.%t.XXXXXX"] {
        fuzz_targets::template_roundtrip(t.as_bytes());
    }
    let seed = seed("template_names_map_back_to_their_checkpoint");
    let mut rng = Rng::new(seed);
    let templates = seeds_in(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/template"));
    for i in 0..3000 {
        let input = {
            let x = rng.pick(&templates).clone();
            mutate_bytes(&mut rng, x, &templates)
        };
        no_panic("template_roundtrip", seed, i, &input, fuzz_targets::template_roundtrip);
    }
}
