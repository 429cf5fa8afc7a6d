//! Integration tests of `snapckpt::tasks`: freezing and thawing real processes with SIGSTOP,
//! the cgroup v2 freezer and the cgroup v1 freezer, and the thaw watchdog.
//!
//! They need root, `cc`, cgroup v2 at /sys/fs/cgroup/unified and the v1 freezer at
//! /sys/fs/cgroup/freezer. The workloads are small C programs under `integration/progs/`
//! (`freeze_*.c`), compiled on first use into `CARGO_TARGET_TMPDIR`. The watchdog is the
//! snapckpt binary itself (`snapckpt __watchdog ...`).
//!
//! Every test cleans up after itself through guards (processes killed leaf-first, cgroups
//! thawed and removed), also when it fails.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{eventually, prog, unique_name, Cg, Cgroup, KillOnDrop, V1_ROOT, V2_ROOT};

use snapckpt::tasks::{self, FreezeMethod, Selection, TaskError};

const SNAPCKPT: &str = env!("CARGO_BIN_EXE_snapckpt");
const TIMEOUT: Duration = Duration::from_secs(5);
/// The watchdog must thaw within this time once its pipe is closed.
const WATCHDOG_THAW: Duration = Duration::from_secs(2);

fn setup() {
    tasks::set_watchdog_exe(SNAPCKPT);
}

// ---------------------------------------------------------------------------------------
// /proc helpers
// ---------------------------------------------------------------------------------------

/// The state letters of all threads of `pid`; empty if it has gone.
fn thread_states(pid: i32) -> Vec<char> {
    let Ok(rd) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| s[s.rfind(')')? + 1..].split_whitespace().next()?.chars().next())
        .collect()
}

fn all_stopped(pids: &[i32]) -> bool {
    pids.iter().all(|&p| thread_states(p).iter().all(|&c| c == 'T'))
}

fn none_stopped(pids: &[i32]) -> bool {
    pids.iter().all(|&p| thread_states(p).iter().all(|&c| c != 'T'))
}

/// Whether the process has gone (or is a zombie).
fn gone(pid: i32) -> bool {
    thread_states(pid).iter().all(|&c| c == 'Z' || c == 'X')
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: plain system call.
    unsafe { libc::kill(pid, sig) };
}

// ---------------------------------------------------------------------------------------
// The workload: freeze_tree
// ---------------------------------------------------------------------------------------

/// A running `freeze_tree`: three processes (root -> child -> grandchild) of three threads
/// each, each process counting in `dir/counter.N` every 10 ms. Killed leaf-first on drop.
struct Tree {
    root: Child,
    dir: PathBuf,
    /// The three pids, parents first.
    pids: Vec<i32>,
}

impl Tree {
    /// Start the tree, optionally inside `cg` (the grandchild in its leaf cgroup).
    fn start(cg: Option<&Cgroup>) -> Tree {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique_name("freeze-tree"));
        fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new(prog("freeze_tree"));
        cmd.arg(&dir);
        if let Some(cg) = cg {
            cmd.arg(cg.path.join("cgroup.procs")).arg(cg.leaf().join("cgroup.procs"));
        }
        let root = cmd.spawn().expect("spawn freeze_tree");
        let mut tree = Tree { root, dir, pids: Vec::new() };
        let ready = eventually(TIMEOUT, || tree.try_counters().is_some_and(|c| c.iter().all(|&n| n > 0)));
        assert!(ready, "freeze_tree did not start counting");
        let root_pid = tree.root.id() as i32;
        tree.pids = tasks::resolve(&Selection::Pid { pid: root_pid, tree: true }).unwrap();
        assert_eq!(tree.pids.len(), 3, "{:?}", tree.pids);
        assert_eq!(tree.pids[0], root_pid);
        for &p in &tree.pids {
            assert!(eventually(TIMEOUT, || tasks::threads(p).is_ok_and(|t| t.len() == 3)), "threads of {p}");
        }
        tree
    }

    fn try_counters(&self) -> Option<[u64; 3]> {
        let mut out = [0; 3];
        for (i, c) in out.iter_mut().enumerate() {
            *c = fs::read_to_string(self.dir.join(format!("counter.{i}"))).ok()?.trim().parse().ok()?;
        }
        Some(out)
    }

    fn counters(&self) -> [u64; 3] {
        self.try_counters().expect("read counters")
    }

    /// Assert that no counter moves for a while.
    fn assert_still(&self) {
        let before = self.counters();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(self.counters(), before, "counters advanced while frozen");
    }

    /// Assert that every counter moves on soon.
    fn assert_running(&self) {
        let before = self.counters();
        let moved = eventually(Duration::from_secs(2), || {
            let now = self.counters();
            now.iter().zip(before.iter()).all(|(n, b)| n > b)
        });
        assert!(moved, "counters did not advance: {before:?} -> {:?}", self.counters());
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        // Continue first (a stopped parent cannot reap), then kill leaf-first so that each
        // process is reaped by its parent.
        for &p in &self.pids {
            kill(p, libc::SIGCONT);
        }
        for &p in self.pids.iter().skip(1).rev() {
            kill(p, libc::SIGKILL);
            eventually(Duration::from_secs(2), || gone(p));
        }
        let _ = self.root.kill();
        let _ = self.root.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// A watchdog driven by hand
// ---------------------------------------------------------------------------------------

/// `snapckpt __watchdog ARGS` with a stdin pipe the test controls.
struct HandWatchdog {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl HandWatchdog {
    fn start(method: &FreezeMethod) -> HandWatchdog {
        let mut child = Command::new(SNAPCKPT)
            .arg("__watchdog")
            .args(method.watchdog_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn snapckpt __watchdog");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        let stdin = child.stdin.take();
        HandWatchdog { child, stdin }
    }

    fn exit_code(&mut self) -> Option<i32> {
        let mut code = None;
        eventually(WATCHDOG_THAW, || {
            code = self.child.try_wait().unwrap().map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code
    }
}

impl Drop for HandWatchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sigstop_by_hand(pids: &[i32]) {
    for &p in pids {
        kill(p, libc::SIGSTOP);
    }
    assert!(eventually(TIMEOUT, || all_stopped(pids)), "SIGSTOP did not stop the tree");
}

// ---------------------------------------------------------------------------------------
// Freezing and thawing
// ---------------------------------------------------------------------------------------

#[test]
fn sigstop_tree_freeze_and_thaw() {
    setup();
    let tree = Tree::start(None);
    let sel = Selection::Pid { pid: tree.pids[0], tree: true };
    let pids = tasks::resolve(&sel).unwrap();
    let method = FreezeMethod::for_selection(&sel, &pids).unwrap();
    assert_eq!(method, FreezeMethod::Sigstop(tree.pids.clone()));
    assert_eq!(method.describe(), "sigstop");
    assert_eq!(method.cgroup_path(), None);

    let frozen = tasks::freeze(method, TIMEOUT).unwrap();
    assert!(all_stopped(&tree.pids), "not every thread is stopped");
    assert!(frozen.watchdog_pid().is_some());
    tree.assert_still();
    assert!(frozen.frozen_for() >= Duration::from_millis(200));
    assert!(frozen.freeze_latency() <= frozen.frozen_for());

    let was = frozen.thaw().unwrap();
    assert!(was >= Duration::from_millis(200), "{was:?}");
    assert!(none_stopped(&tree.pids));
    tree.assert_running();
}

fn cgroup_freeze_and_thaw(kind: Cg) {
    setup();
    let cg = Cgroup::with_leaf(kind, "freeze");
    let tree = Tree::start(Some(&cg));
    // The grandchild is in the leaf cgroup, the others in the cgroup itself.
    let leaf_procs = fs::read_to_string(cg.leaf().join("cgroup.procs")).unwrap();
    assert_eq!(leaf_procs.trim(), tree.pids[2].to_string());

    let sel = Selection::Cgroup(cg.path.clone());
    assert_eq!(tasks::resolve(&sel).unwrap(), tree.pids, "all processes, parents first");
    let method = FreezeMethod::for_selection(&sel, &tree.pids).unwrap();
    assert_eq!(method, cg.method());
    assert_eq!(method.cgroup_path(), Some(cg.path.as_path()));
    let prefix = if kind == Cg::V2 { "cgroup-v2 " } else { "cgroup-v1 " };
    assert_eq!(method.describe(), format!("{prefix}{}", cg.path.display()));

    let frozen = tasks::freeze(method, TIMEOUT).unwrap();
    assert!(cg.is_frozen(&cg.path));
    assert!(cg.is_frozen(&cg.leaf()), "the descendant cgroup is frozen too");
    tree.assert_still();
    frozen.thaw().unwrap();
    assert!(cg.is_thawed(&cg.path));
    tree.assert_running();
}

#[test]
fn cgroup_v2_freeze_and_thaw() {
    cgroup_freeze_and_thaw(Cg::V2);
}

#[test]
fn cgroup_v1_freeze_and_thaw() {
    cgroup_freeze_and_thaw(Cg::V1);
}

#[test]
fn drop_thaws_sigstop() {
    setup();
    let tree = Tree::start(None);
    let frozen = tasks::freeze(FreezeMethod::Sigstop(tree.pids.clone()), TIMEOUT).unwrap();
    let wd = frozen.watchdog_pid().unwrap() as i32;
    tree.assert_still();
    drop(frozen);
    assert!(none_stopped(&tree.pids));
    tree.assert_running();
    assert!(gone(wd), "the watchdog was not reaped");
}

#[test]
fn drop_thaws_cgroup_v2() {
    setup();
    let cg = Cgroup::with_leaf(Cg::V2, "freeze");
    let tree = Tree::start(Some(&cg));
    let frozen = tasks::freeze(cg.method(), TIMEOUT).unwrap();
    tree.assert_still();
    drop(frozen);
    assert!(cg.is_thawed(&cg.path));
    tree.assert_running();
}

/// The tasks die while frozen (as after a CRIU dump): release() succeeds and does not leave
/// the cgroup frozen.
fn release_after_kill(kind: Option<Cg>) {
    setup();
    let cg = kind.map(|k| Cgroup::with_leaf(k, "freeze"));
    let tree = Tree::start(cg.as_ref());
    let method = cg.as_ref().map_or(FreezeMethod::Sigstop(tree.pids.clone()), |c| c.method());
    let frozen = tasks::freeze(method, TIMEOUT).unwrap();
    for &p in tree.pids.iter().rev() {
        kill(p, libc::SIGKILL);
    }
    if kind != Some(Cg::V1) {
        // v1 frozen tasks only die once thawed; v2 and stopped tasks die now.
        assert!(eventually(TIMEOUT, || tree.pids.iter().skip(1).all(|&p| gone(p))));
    }
    frozen.release().unwrap();
    if let Some(cg) = &cg {
        assert!(cg.is_thawed(&cg.path), "an emptied cgroup was left frozen");
        assert!(eventually(TIMEOUT, || cg.procs().is_empty()));
    }
}

#[test]
fn release_after_kill_sigstop() {
    release_after_kill(None);
}

#[test]
fn release_after_kill_cgroup_v2() {
    release_after_kill(Some(Cg::V2));
}

#[test]
fn release_after_kill_cgroup_v1() {
    release_after_kill(Some(Cg::V1));
}

#[test]
fn release_after_cgroup_removed() {
    setup();
    let cg = Cgroup::with_leaf(Cg::V2, "freeze");
    let frozen = tasks::freeze(cg.method(), TIMEOUT).unwrap();
    fs::remove_dir(cg.leaf()).unwrap();
    fs::remove_dir(&cg.path).unwrap();
    frozen.release().unwrap();
}

#[test]
fn exited_process() {
    setup();
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    child.wait().unwrap();
    let e = tasks::resolve(&Selection::Pid { pid, tree: true }).unwrap_err();
    assert!(matches!(e, TaskError::NoSuchTask(p) if p == pid), "{e}");
    let e = tasks::freeze(FreezeMethod::Sigstop(vec![pid]), TIMEOUT).unwrap_err();
    assert!(matches!(e, TaskError::NoSuchTask(p) if p == pid), "{e}");
    assert!(e.to_string().contains(&pid.to_string()));
}

#[test]
fn partly_exited_selection_is_frozen() {
    setup();
    let tree = Tree::start(None);
    let mut gone_child = Command::new("true").spawn().unwrap();
    let dead = gone_child.id() as i32;
    gone_child.wait().unwrap();
    let mut pids = tree.pids.clone();
    pids.push(dead);
    let frozen = tasks::freeze(FreezeMethod::Sigstop(pids), TIMEOUT).unwrap();
    assert!(all_stopped(&tree.pids));
    frozen.thaw().unwrap();
    tree.assert_running();
}

#[test]
fn empty_and_unfreezable_cgroups() {
    setup();
    let cg = Cgroup::with_leaf(Cg::V2, "freeze");
    let sel = Selection::Cgroup(cg.path.clone());
    let e = tasks::resolve(&sel).unwrap_err();
    assert!(matches!(e, TaskError::EmptySelection(_)), "{e}");
    assert!(e.to_string().contains(&cg.path.display().to_string()));

    let e = FreezeMethod::for_selection(&Selection::Cgroup(V2_ROOT.into()), &[1]).unwrap_err();
    assert!(matches!(e, TaskError::CannotFreeze { .. }), "{e}");
    let e = FreezeMethod::for_selection(&Selection::Cgroup(V1_ROOT.into()), &[1]).unwrap_err();
    assert!(matches!(e, TaskError::CannotFreeze { .. }), "{e}");
    assert_eq!(tasks::cgroup_version(Path::new(V1_ROOT)).unwrap(), tasks::CgroupVersion::V1);
    assert_eq!(tasks::cgroup_version(&cg.path).unwrap(), tasks::CgroupVersion::V2);
}

#[test]
fn freeze_timeout_names_the_stuck_task() {
    setup();
    // The parent of freeze_vfork waits for its vfork child in state D: SIGSTOP cannot stop it.
    let mut parent = Command::new(prog("freeze_vfork")).spawn().unwrap();
    let pid = parent.id() as i32;
    let child_pid = || -> Option<i32> {
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let mut guard = KillOnDrop(vec![pid]);
    assert!(eventually(TIMEOUT, || thread_states(pid) == ['D'] && child_pid().is_some()), "no vfork wait");
    let child = child_pid().unwrap();
    guard.0.insert(0, child);

    let start = Instant::now();
    let e = tasks::freeze(FreezeMethod::Sigstop(vec![pid]), Duration::from_millis(300)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3));
    match &e {
        TaskError::FreezeTimeout { waited, stuck } => {
            assert!(*waited >= Duration::from_millis(300));
            assert_eq!(stuck.len(), 1, "{stuck:?}");
            assert!(stuck[0].contains(&format!("pid {pid}")), "{stuck:?}");
            assert!(stuck[0].contains("freeze_vfork") && stuck[0].contains("state D"), "{stuck:?}");
        }
        e => panic!("expected FreezeTimeout, got {e}"),
    }
    assert!(e.to_string().contains("longer freeze timeout"), "{e}");

    // It was thawed again: once the vfork child is gone the parent runs on, not stopped.
    kill(child, libc::SIGKILL);
    assert!(eventually(TIMEOUT, || thread_states(pid) == ['S']), "{:?}", thread_states(pid));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(thread_states(pid), ['S'], "the pending SIGSTOP was not cancelled");
    drop(guard);
    parent.wait().unwrap();
}

// ---------------------------------------------------------------------------------------
// The watchdog
// ---------------------------------------------------------------------------------------

#[test]
fn watchdog_eof_thaws_sigstop() {
    let tree = Tree::start(None);
    let mut wd = HandWatchdog::start(&FreezeMethod::Sigstop(tree.pids.clone()));
    sigstop_by_hand(&tree.pids);
    tree.assert_still();
    drop(wd.stdin.take());
    assert!(eventually(WATCHDOG_THAW, || none_stopped(&tree.pids)), "the watchdog did not thaw");
    assert_eq!(wd.exit_code(), Some(0));
    tree.assert_running();
}

#[test]
fn watchdog_disarmed_leaves_frozen() {
    let tree = Tree::start(None);
    let mut wd = HandWatchdog::start(&FreezeMethod::Sigstop(tree.pids.clone()));
    sigstop_by_hand(&tree.pids);
    wd.stdin.as_mut().unwrap().write_all(b"D").unwrap();
    assert_eq!(wd.exit_code(), Some(0));
    drop(wd.stdin.take());
    std::thread::sleep(Duration::from_millis(300));
    assert!(all_stopped(&tree.pids), "a disarmed watchdog thawed");
    tree.assert_still();
    for &p in &tree.pids {
        kill(p, libc::SIGCONT);
    }
    tree.assert_running();
}

fn watchdog_eof_thaws_cgroup(kind: Cg) {
    let cg = Cgroup::with_leaf(kind, "freeze");
    let tree = Tree::start(Some(&cg));
    let mut wd = HandWatchdog::start(&cg.method());
    cg.freeze_by_hand();
    tree.assert_still();
    drop(wd.stdin.take());
    assert!(eventually(WATCHDOG_THAW, || cg.is_thawed(&cg.path)), "the watchdog did not thaw");
    assert_eq!(wd.exit_code(), Some(0));
    tree.assert_running();
}

#[test]
fn watchdog_eof_thaws_cgroup_v2() {
    watchdog_eof_thaws_cgroup(Cg::V2);
}

#[test]
fn watchdog_eof_thaws_cgroup_v1() {
    watchdog_eof_thaws_cgroup(Cg::V1);
}

#[test]
fn watchdog_disarmed_leaves_cgroup_v2_frozen() {
    let cg = Cgroup::with_leaf(Cg::V2, "freeze");
    let tree = Tree::start(Some(&cg));
    let mut wd = HandWatchdog::start(&cg.method());
    cg.freeze_by_hand();
    wd.stdin.as_mut().unwrap().write_all(b"D").unwrap();
    assert_eq!(wd.exit_code(), Some(0));
    std::thread::sleep(Duration::from_millis(300));
    assert!(cg.is_frozen(&cg.path), "a disarmed watchdog thawed");
    tree.assert_still();
    cg.thaw_by_hand();
    tree.assert_running();
}

#[test]
fn watchdog_ignores_terminal_signals() {
    let tree = Tree::start(None);
    let mut wd = HandWatchdog::start(&FreezeMethod::Sigstop(tree.pids.clone()));
    sigstop_by_hand(&tree.pids);
    let wpid = wd.child.id() as i32;
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        kill(wpid, sig);
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(wd.child.try_wait().unwrap(), None, "the watchdog died of a signal");
    // It left our session.
    // SAFETY: plain system calls.
    assert_ne!(unsafe { libc::getsid(wpid) }, unsafe { libc::getsid(0) });
    drop(wd.stdin.take());
    assert!(eventually(WATCHDOG_THAW, || none_stopped(&tree.pids)));
    assert_eq!(wd.exit_code(), Some(0));
}

#[test]
fn watchdog_rejects_bad_arguments() {
    for args in [&["sigstop"][..], &["sigstop", "abc"], &["cgroup-v2"], &["nonsense", "1"]] {
        let out = Command::new(SNAPCKPT).arg("__watchdog").args(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("expected"), "{args:?}");
    }
}

// ---------------------------------------------------------------------------------------
// The watchdog behind freeze(), with the freezing process SIGKILLed
// ---------------------------------------------------------------------------------------

const HOLDER_ENV: &str = "SNAPCKPT_TEST_FREEZE_HOLDER";

/// Not a test by itself: when run by `holder()` below (with `HOLDER_ENV` set to watchdog
/// arguments), it freezes through `tasks::freeze`, reports, and waits to be killed.
#[test]
fn helper_freeze_and_hold() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let args: Vec<String> = spec.split(' ').map(str::to_string).collect();
    let method = FreezeMethod::from_watchdog_args(&args).unwrap();
    // The watchdog executable comes from SNAPCKPT_WATCHDOG_EXE, set by the caller.
    match tasks::freeze(method, TIMEOUT) {
        Ok(frozen) => {
            println!("HOLDER-FROZEN {}", frozen.watchdog_pid().unwrap());
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
            drop(frozen);
        }
        Err(e) => {
            println!("HOLDER-ERROR {e}");
            std::io::stdout().flush().unwrap();
        }
    }
}

/// Run `helper_freeze_and_hold` in a new process of this test binary; return it and the
/// first `HOLDER-` line it prints.
fn holder(method: &FreezeMethod, watchdog_exe: &str) -> (Child, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        // the test's name in this binary: module path, without the crate
        .args(["--exact", "freeze::helper_freeze_and_hold", "--nocapture", "--test-threads=1"])
        .env(HOLDER_ENV, method.watchdog_args().join(" "))
        .env("SNAPCKPT_WATCHDOG_EXE", watchdog_exe)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test freeze::helper_freeze_and_hold ... " before our line.
            if let Some(at) = line.find("HOLDER-") {
                let _ = tx.send(line[at..].to_string());
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the holder process did not report");
    });
    (child, line)
}

#[test]
fn watchdog_thaws_after_freezer_is_sigkilled_sigstop() {
    let tree = Tree::start(None);
    let (mut holder, line) = holder(&FreezeMethod::Sigstop(tree.pids.clone()), SNAPCKPT);
    let wd: i32 =
        line.strip_prefix("HOLDER-FROZEN ").and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("{line}"));
    assert!(all_stopped(&tree.pids));
    tree.assert_still();
    holder.kill().unwrap(); // SIGKILL: no destructor runs in the holder
    holder.wait().unwrap();
    assert!(eventually(WATCHDOG_THAW, || none_stopped(&tree.pids)), "not thawed after the freezer died");
    tree.assert_running();
    assert!(eventually(WATCHDOG_THAW, || gone(wd)), "the watchdog is still running");
}

#[test]
fn watchdog_thaws_after_freezer_is_sigkilled_cgroup_v2() {
    let cg = Cgroup::with_leaf(Cg::V2, "freeze");
    let tree = Tree::start(Some(&cg));
    let (mut holder, line) = holder(&cg.method(), SNAPCKPT);
    assert!(line.starts_with("HOLDER-FROZEN "), "{line}");
    assert!(cg.is_frozen(&cg.path));
    tree.assert_still();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(eventually(WATCHDOG_THAW, || cg.is_thawed(&cg.path)), "not thawed after the freezer died");
    tree.assert_running();
}

#[test]
fn no_freeze_without_a_watchdog() {
    let tree = Tree::start(None);
    // /bin/echo prints its arguments instead of "ready": freeze() must refuse.
    let (mut holder, line) = holder(&FreezeMethod::Sigstop(tree.pids.clone()), "/bin/echo");
    assert!(line.starts_with("HOLDER-ERROR thaw watchdog:"), "{line}");
    assert!(line.contains("SNAPCKPT_WATCHDOG_EXE"), "{line}");
    holder.wait().unwrap();
    assert!(none_stopped(&tree.pids));
    tree.assert_running();
}
