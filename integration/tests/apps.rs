//! Real applications, checkpointed with CRIU and restarted from a btrfs snapshot: each one is
//! started (as a session leader, its output to /dev/null or to a log on the filesystem under
//! test), brought into a state worth keeping, checkpointed with `snapckpt take --pid P --tree
//! --engine criu --snapshot btrfs`, killed, its live data changed, then restarted twice from
//! the snapshot (`snapckpt restart ID --snapshot`: the clone is mounted at the original mount
//! point in a private mount namespace) and checked to hold exactly its checkpoint-time state.
//!
//! The programs come from Debian's packages (`scripts/setup.sh` installs them); a test whose
//! program is missing says so and passes without running. Servers listen on 127.0.0.1 only, on
//! a port picked free, with their own configs and data on the loop btrfs.
//!
//! Clients: CRIU restores an established TCP connection only with `--tcp-established`, and then
//! only once (the peer moves on), and a unix stream connection to a peer outside the dumped tree
//! cannot be dumped (take refuses it before the freeze: `sockets::unix_server_with_outside_client`).
//! So in the restart-twice tests a client whose connection is in flight at checkpoint time
//! is a process *inside* the checkpointed tree, on the server's unix socket (the tree's root is a
//! small wrapper that starts the server and the client as its children); the test's own clients
//! use TCP on 127.0.0.1 and are closed before the take or connect after the restart.
//! `nginx_upload_tcp_client_outside_tree` is the other case: the test's own TCP connection in
//! flight, `take --tcp-established`, one restart.

use crate::common::*;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's python3 (not a pyenv shim or a venv: the tests want the system's sqlite3 module).
const PYTHON: &str = "/usr/bin/python3";

/// Whether `prog` exists; if not, say that the test is skipped.
fn have(prog: &str, test: &str) -> bool {
    if Path::new(prog).exists() {
        return true;
    }
    eprintln!("SKIPPED {test}: {prog} is not installed (scripts/setup.sh installs it)");
    false
}

/// `integration/progs/NAME` (scripts, used in place).
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/progs").join(name)
}

/// A loop btrfs for one application, a scratch directory and an image root.
struct AppFs {
    fs: LoopFs,
    _work: Scratch,
    images: PathBuf,
}

impl AppFs {
    fn new(tag: &str, size: &str) -> AppFs {
        let fs = LoopFs::new("btrfs", size);
        let work = Scratch::new(&format!("apps-{tag}"));
        let images = work.path().join("images");
        AppFs { fs, _work: work, images }
    }

    /// A directory on the filesystem under test.
    fn dir(&self, rel: &str) -> PathBuf {
        let p = self.fs.path(rel);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn ir(&self) -> &str {
        self.images.to_str().unwrap()
    }

    /// Every CRIU log line with "Error" under the image root (dump and restore logs of every
    /// image, kept or failed), for a failure message.
    fn criu_errors(&self) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "find '{}' -name '*.log' -print0 2>/dev/null | xargs -0r grep -H -E 'Error|Warn .*(bad|fail)' | grep -v RLIMIT_NOFILE | tail -n 40",
                self.images.display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `snapckpt ARGS`, bounded to `secs`; (success, stdout, stderr).
    fn snapckpt(&self, args: &[&str], secs: u64) -> (bool, String, String) {
        let o = Command::new("timeout")
            .args(["--kill-after=10", &secs.to_string()])
            .arg(snapckpt_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    fn snapckpt_ok(&self, args: &[&str], secs: u64) -> String {
        let (ok, out, err) = self.snapckpt(args, secs);
        assert!(
            ok,
            "snapckpt {args:?} failed\nstdout: {out}\nstderr: {err}\nCRIU log errors:\n{}",
            self.criu_errors()
        );
        out
    }

    /// `snapckpt take --pid P --tree --engine criu --snapshot btrfs`; the checkpoint id. Waits
    /// until every task of the tree is gone (CRIU kills them after the dump).
    fn take(&self, tree: &Tree) -> (String, Duration) {
        let tasks = tree.tasks();
        let pid = tree.pid.to_string();
        let t = Instant::now();
        let out = self.snapckpt_ok(
            &[
                "take",
                "--pid",
                &pid,
                "--tree",
                "--engine",
                "criu",
                "--snapshot",
                "btrfs",
                "--image-root",
                self.ir(),
            ],
            120,
        );
        let took = t.elapsed();
        for p in tasks {
            wait_gone(p);
        }
        (take_id(&out), took)
    }

    /// `snapckpt restart ID --snapshot`; checks that the tree's root is back.
    fn restart(&self, id: &str, tree: &Tree) -> Duration {
        let t = Instant::now();
        let out = self.snapckpt_ok(&["restart", id, "--snapshot", "--image-root", self.ir()], 120);
        let took = t.elapsed();
        assert!(out.contains("restored tasks [") && alive(tree.pid), "{out}");
        took
    }

    fn delete(&self, id: &str) {
        self.snapckpt_ok(&["delete", id, "--force", "--image-root", self.ir()], 60);
    }
}

/// A process tree started by the test as a session leader (CRIU wants one), with nothing
/// inherited but /dev/null on 0-2 (so nothing outside the tree or a growing log is dumped).
/// Every task of the tree is SIGKILLed on drop; the pids are the same after each restore.
struct Tree {
    pid: i32,
    child: Option<std::process::Child>,
}

impl Tree {
    fn spawn(argv: &[&str], env: &[(&str, &str)]) -> Tree {
        let mut c = Command::new(argv[0]);
        c.args(&argv[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        // SAFETY: close_range and setsid are async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 4u32 /* CLOSE_RANGE_CLOEXEC */);
                libc::setsid();
                Ok(())
            });
        }
        let child = c.spawn().unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
        Tree { pid: child.id() as i32, child: Some(child) }
    }

    /// The root and all its descendants that are alive and in the tree's session (the root
    /// made it: a pid freed by a dump and taken by an unrelated process is left alone).
    fn tasks(&self) -> Vec<i32> {
        let mut v = vec![self.pid];
        v.extend(descendants(self.pid));
        v.retain(|&p| alive(p) && session(p) == Some(self.pid));
        v
    }

    /// SIGKILL every task and wait until all are gone (reaping the root if it is our child).
    fn kill(&mut self) {
        let tasks = self.tasks();
        for &p in &tasks {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        for p in tasks {
            let _ = eventually(Duration::from_secs(10), || !alive(p));
        }
    }

    /// After a take: the original root was our child; reap it.
    fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// `path` as the tree's root task sees it (its mount namespace: the restart clone).
    fn view(&self, path: &Path) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(path.strip_prefix("/").unwrap())
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig).unwrap();
    }
}

/// The session id of a process (field 6 of /proc/PID/stat).
fn session(pid: i32) -> Option<i32> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    st.rsplit_once(')')?.1.split_whitespace().nth(3)?.parse().ok()
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ask a workload for a fresh report: remove `report` (as the tree sees it), SIGUSR1 the root
/// (again every second), wait for the new report; its text.
fn fresh_report(tree: &Tree, report: &Path) -> String {
    ask(tree, report, nix::sys::signal::Signal::SIGUSR1)
}

/// Remove `file` (as the tree sees it), send `sig` to the root (again every second) until the
/// workload has written `file` again; its text.
fn ask(tree: &Tree, report: &Path, sig: nix::sys::signal::Signal) -> String {
    let path = tree.view(report);
    let _ = std::fs::remove_file(&path);
    let start = Instant::now();
    let mut last = Instant::now() - Duration::from_secs(2);
    loop {
        if let Ok(s) = std::fs::read_to_string(&path) {
            return s;
        }
        assert!(alive(tree.pid), "workload {} died", tree.pid);
        assert!(start.elapsed() < Duration::from_secs(30), "no report at {}", path.display());
        if last.elapsed() >= Duration::from_secs(1) {
            tree.signal(sig);
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A report with the O_TMPFILE bits (`__O_TMPFILE|O_DIRECTORY`, 020200000) cleared from each
/// `flags=` (fdinfo, octal): CRIU reopens a restored file by path, `flags & ~O_TMPFILE`
/// (criu/files-reg.c `open_path`), so a restored O_TMPFILE fd is the same file with the same
/// access mode, offset and other flags, but fdinfo no longer shows how it was first made.
fn without_tmpfile_flag(report: &str) -> String {
    report
        .split(' ')
        .map(|w| match w.strip_prefix("flags=").and_then(|f| u32::from_str_radix(f, 8).ok()) {
            Some(f) => format!("flags={:o}", f & !0o20200000),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Python program with a `TemporaryFile` (O_TMPFILE), a deleted `NamedTemporaryFile`
/// (O_NOFOLLOW, nlink 0), a MAP_SHARED mapping of an unlinked file and an open linked journal:
/// after each restart it reports the same paths, flags, offsets, link counts, sizes, modes and
/// content hashes as at checkpoint time, although the live journal was overwritten.
#[test]
fn python_tempfiles() {
    if !have(PYTHON, "apps::python_tempfiles") {
        return;
    }
    let _g = serial();
    let a = AppFs::new("py", "1G");
    let dir = a.dir("py");
    let report = dir.join("report");
    let mut tree =
        Tree::spawn(&[PYTHON, script("py_tmpfiles.py").to_str().unwrap(), dir.to_str().unwrap()], &[]);
    wait_for(|| report.exists(), Duration::from_secs(20), "python report");
    let before = read(&report);
    assert_eq!(before.lines().count(), 6, "{before}");
    assert!(before.contains("nlink=0") && before.contains("(deleted)"), "{before}");
    let (id, took) = a.take(&tree);
    tree.reap();
    eprintln!("python: take {took:?}");
    // the live filesystem moves on
    std::fs::write(dir.join("journal"), "overwritten live\n").unwrap();
    std::fs::write(dir.join("mapped.bin"), "a new file of that name").unwrap();
    for round in 1..=2 {
        let took = a.restart(&id, &tree);
        let after = fresh_report(&tree, &report);
        assert_eq!(
            without_tmpfile_flag(&after),
            without_tmpfile_flag(&before),
            "round {round} (restart {took:?})"
        );
        assert_eq!(read(dir.join("journal")), "overwritten live\n", "the live file is left alone");
        tree.kill();
    }
    a.delete(&id);
}

/// A SQLite database in WAL mode (20000 rows, half of them only in the WAL; a second connection
/// in an open read transaction) whose three files were deleted while open: after each restart
/// both connections see exactly their checkpoint-time rows (count, sum, hash), the files are
/// held with the same paths and link counts, and the database takes a new commit; the live
/// directory meanwhile holds an unrelated database of the same name.
#[test]
fn sqlite_wal_deleted_while_open() {
    if !have(PYTHON, "apps::sqlite_wal_deleted_while_open") {
        return;
    }
    let _g = serial();
    let a = AppFs::new("sqlite", "1G");
    let dir = a.dir("sqlite");
    let report = dir.join("report");
    let mut tree =
        Tree::spawn(&[PYTHON, script("sqlite_wal.py").to_str().unwrap(), dir.to_str().unwrap()], &[]);
    wait_for(|| report.exists(), Duration::from_secs(30), "sqlite report");
    let before = read(&report);
    assert!(before.contains("WRITER count=20000 ") && before.contains("READER count=15000 "), "{before}");
    // db and wal opened by each connection, shm once (SQLite shares it per inode)
    assert_eq!(before.matches("nlink=0").count(), 5, "db, wal, shm held unlinked: {before}");
    assert!(before.contains("MAP perms=rw-s"), "{before}");
    let (id, took) = a.take(&tree);
    tree.reap();
    eprintln!("sqlite: take {took:?}");
    // the live directory moves on: another database of the same name
    let live_db = dir.join("app.db");
    let st = Command::new(PYTHON)
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table t(x)'); c.execute('insert into t values (1)'); c.commit()"])
        .arg(&live_db)
        .status()
        .unwrap();
    assert!(st.success());
    let mut wrote_first = None;
    for round in 1..=2 {
        let took = a.restart(&id, &tree);
        assert_eq!(fresh_report(&tree, &report), before, "round {round} (restart {took:?})");
        let wrote = ask(&tree, &dir.join("wrote"), nix::sys::signal::Signal::SIGUSR2);
        assert!(wrote.starts_with("WROTE count=20001 "), "round {round}: {wrote}");
        // the same commit on the same checkpoint-time state gives the same database
        assert_eq!(wrote_first.get_or_insert_with(|| wrote.clone()), &wrote);
        tree.kill();
    }
    assert!(live_db.exists());
    a.delete(&id);
}

/// SHA-256 of `data` (hex), by coreutils' sha256sum.
fn sha256(data: &[u8]) -> String {
    use std::io::Write;
    let mut c = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    let o = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap().to_string()
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET PATH` over HTTP/1.0 to 127.0.0.1:PORT (bounded); (status line, body).
fn http_get(port: u16, path: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect 127.0.0.1:{port}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").unwrap();
    let mut resp = vec![];
    s.read_to_end(&mut resp).unwrap();
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("http header end");
    let status = String::from_utf8_lossy(&resp[..split]).lines().next().unwrap().to_string();
    (status, resp[split + 4..].to_vec())
}

/// `key=value` out of a line of such words.
fn field<'a>(s: &'a str, key: &str) -> &'a str {
    s.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key}= in {s:?}"))
}

/// The unlinked client-body temp files an nginx task holds: (fd path, size).
fn nginx_body_temps(tasks: &[i32]) -> Vec<(String, u64)> {
    let mut v = vec![];
    for &p in tasks {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/fd")) else { continue };
        for e in rd.flatten() {
            let Ok(l) = std::fs::read_link(e.path()) else { continue };
            let l = l.to_string_lossy().into_owned();
            if l.contains("/client_temp/") && l.ends_with(" (deleted)") {
                if let Ok(m) = std::fs::metadata(e.path()) {
                    v.push((l, m.len()));
                }
            }
        }
    }
    v
}

/// nginx (master and worker, with a proxy in front of a WebDAV back end) with an 8 MiB upload
/// in progress: 6 MiB of the body are in the worker's unlinked client-body temp file at
/// checkpoint time. After each restart the static files are served as they were (the live
/// copies were overwritten), the client (inside the tree, on a unix socket) sends the rest, gets
/// `201 Created`, and the stored upload has the whole body's hash.
#[test]
fn nginx_upload_in_progress() {
    if !have("/usr/sbin/nginx", "apps::nginx_upload_in_progress")
        || !have(PYTHON, "apps::nginx_upload_in_progress")
    {
        return;
    }
    let _g = serial();
    let a = AppFs::new("nginx", "1G");
    let prefix = a.dir("nginx");
    let files = prefix.join("www/files");
    std::fs::create_dir_all(&files).unwrap();
    let mut statics = vec![];
    for i in 0..3u32 {
        let data: Vec<u8> =
            (0..(100_000 * (i + 1))).map(|k| (k.wrapping_mul(31).wrapping_add(i)) as u8).collect();
        std::fs::write(files.join(format!("static-{i}.bin")), &data).unwrap();
        statics.push((format!("/files/static-{i}.bin"), sha256(&data)));
    }
    let port = free_port();
    let mut tree = Tree::spawn(
        &[PYTHON, script("nginx_upload.py").to_str().unwrap(), prefix.to_str().unwrap(), &port.to_string()],
        &[],
    );
    let state_file = prefix.join("client.state");
    wait_for(|| state_file.exists(), Duration::from_secs(30), "upload client state");
    let state = read(&state_file);
    let client: i32 = field(&state, "pid").parse().unwrap();
    let sent: u64 = field(&state, "sent").parse().unwrap();
    let body_hash = field(&state, "sha256").to_string();
    // the worker has written what it received into its unlinked temp file (all but what is
    // still in its 16k buffer)
    wait_for(
        || nginx_body_temps(&tree.tasks()).iter().any(|(_, n)| *n + (16 << 10) >= sent),
        Duration::from_secs(30),
        "nginx client-body temp file",
    );
    let temps = nginx_body_temps(&tree.tasks());
    assert_eq!(temps.len(), 1, "{temps:?}");
    for (path, want) in &statics {
        let (status, body) = http_get(port, path);
        assert!(status.contains(" 200 "), "{path}: {status}");
        assert_eq!(&sha256(&body), want, "{path} before the checkpoint");
    }
    assert!(tree.tasks().contains(&client));
    let (id, took) = a.take(&tree);
    tree.reap();
    eprintln!("nginx: take {took:?}");
    // the live files move on
    for i in 0..3 {
        std::fs::write(files.join(format!("static-{i}.bin")), "overwritten live").unwrap();
    }
    std::fs::write(files.join("big.bin"), "not the upload").unwrap();
    let mut results = vec![];
    for round in 1..=2 {
        let took = a.restart(&id, &tree);
        assert!(alive(client), "round {round}: the upload client is back");
        let temps_after = nginx_body_temps(&tree.tasks());
        assert_eq!(temps_after, temps, "round {round}: the worker holds the same temp file");
        for (path, want) in &statics {
            let (status, body) = http_get(port, path);
            assert!(status.contains(" 200 "), "round {round} {path}: {status}");
            assert_eq!(&sha256(&body), want, "round {round}: {path} as at checkpoint time");
        }
        let result = prefix.join("client.result");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(client), nix::sys::signal::Signal::SIGUSR1)
            .unwrap();
        wait_for(|| tree.view(&result).exists(), Duration::from_secs(30), "upload finished");
        let res = read(tree.view(&result));
        assert!(res.starts_with("HTTP/1.1 201 "), "round {round} (restart {took:?}): {res}");
        let (status, body) = http_get(port, "/files/big.bin");
        assert!(status.contains(" 200 "), "round {round}: {status}");
        assert_eq!(body.len() as u64, 8 << 20, "round {round}");
        assert_eq!(sha256(&body), body_hash, "round {round}: the upload is the whole body");
        results.push(res);
        tree.kill();
    }
    assert_eq!(results[0], results[1], "both restarts answered the same");
    assert_eq!(read(files.join("big.bin")), "not the upload", "the live file is left alone");
    a.delete(&id);
}

/// A MariaDB server's TCP client (`mariadb` over 127.0.0.1:PORT, bounded).
struct Sql {
    port: u16,
}

impl Sql {
    /// Run `sql` (database appdb unless `db` says otherwise); the output rows, tab-separated.
    fn query_in(&self, db: &str, sql: &str) -> String {
        let o = Command::new("timeout")
            .args(["60", "/usr/bin/mariadb", "--no-defaults", "-h127.0.0.1", "-uroot", "-N", "-B"])
            .arg(format!("-P{}", self.port))
            .args(["-D", db, "-e", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mariadb -e {sql:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim_end().to_string()
    }

    fn query(&self, sql: &str) -> String {
        self.query_in("appdb", sql)
    }

    /// What the test checks after each restart: row counts, sums and CRC sums of every row of
    /// both tables, and CHECKSUM TABLE.
    fn state(&self) -> String {
        [
            self.query("SELECT 't', COUNT(*), SUM(n), SUM(CRC32(CONCAT_WS('|', id, v, n))) FROM t"),
            self.query("SELECT 't2', COUNT(*), SUM(CRC32(CONCAT_WS('|', id, note))) FROM t2"),
            self.query("CHECKSUM TABLE t, t2 EXTENDED"),
        ]
        .join("\n")
    }
}

/// The unlinked files under `dir` a task holds: (fd path, size).
fn unlinked_under(pid: i32, dir: &Path) -> Vec<(String, u64)> {
    let d = dir.to_string_lossy().into_owned() + "/";
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return vec![] };
    rd.flatten()
        .filter_map(|e| {
            let l = std::fs::read_link(e.path()).ok()?.to_string_lossy().into_owned();
            let size = std::fs::metadata(e.path()).ok()?.len();
            (l.starts_with(&d) && l.ends_with(" (deleted)")).then_some((l, size))
        })
        .collect()
}

/// Wait (bounded, repeating `sig` to the tree's root every 2 s) until `file` as the tree sees it
/// contains `what`; the file's text.
fn wait_output(
    tree: &Tree,
    file: &Path,
    what: &str,
    sig: Option<nix::sys::signal::Signal>,
    secs: u64,
) -> String {
    let path = tree.view(file);
    let start = Instant::now();
    let mut last = Instant::now();
    if let Some(s) = sig {
        tree.signal(s);
    }
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(alive(tree.pid), "the tree's root {} died; {}: {text}", tree.pid, file.display());
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "no {what:?} in {} after {secs} s: {text}",
            file.display()
        );
        if let Some(s) = sig.filter(|_| last.elapsed() >= Duration::from_secs(2)) {
            tree.signal(s);
            last = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// MariaDB (datadir and tmpdir on the loop btrfs) with a big query in flight (a cross join of
/// 1300 rows materialized and sorted: unlinked sort files and an Aria temp table in tmpdir) and
/// a client transaction open (two uncommitted rows). Both clients are in the checkpointed
/// tree, on the unix socket. After each restart the big query finishes with the right result,
/// the tables hold exactly their checkpoint-time rows (counts, sums, CRCs, CHECKSUM TABLE; the
/// uncommitted rows invisible to others), and the open transaction commits; the live datadir
/// meanwhile lost the database.
#[test]
fn mariadb_query_and_transaction_in_flight() {
    for p in ["/usr/sbin/mariadbd", "/usr/bin/mariadb", "/usr/bin/mariadb-install-db", PYTHON] {
        if !have(p, "apps::mariadb_query_and_transaction_in_flight") {
            return;
        }
    }
    let _g = serial();
    let t0 = Instant::now();
    let a = AppFs::new("mariadb", "4G");
    let prefix = a.dir("mariadb");
    let data = prefix.join("data");
    let out = Command::new("timeout")
        .args(["120", "/usr/bin/mariadb-install-db", "--no-defaults", "--user=root", "--skip-test-db"])
        .arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .output()
        .unwrap();
    assert!(out.status.success(), "mariadb-install-db: {}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let mut tree = Tree::spawn(
        &[PYTHON, script("mariadb_tree.py").to_str().unwrap(), prefix.to_str().unwrap(), &port.to_string()],
        &[],
    );
    wait_for(|| prefix.join("server.ready").exists(), Duration::from_secs(60), "mariadbd ready");
    let server: i32 = field(&read(prefix.join("server.ready")), "pid").parse().unwrap();
    let sql = Sql { port };
    const N: u64 = 1300;
    sql.query_in(
        "mysql",
        &format!(
            "CREATE DATABASE appdb; USE appdb;
             CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL) ENGINE=InnoDB;
             INSERT INTO t SELECT seq, CONCAT('v', MD5(seq)), (seq * 7919) % 100003 FROM seq_1_to_{N};
             CREATE TABLE t2 (id INT PRIMARY KEY, note VARCHAR(100)) ENGINE=InnoDB;
             INSERT INTO t2 SELECT seq, CONCAT('committed ', seq) FROM seq_1_to_500;"
        ),
    );
    // the big query and its result, computed the cheap way
    std::fs::write(
        prefix.join("big.sql"),
        "SELECT 'big', COUNT(*), SUM(x) FROM (SELECT a.n * b.n AS x, CONCAT(a.v, b.v) AS s \
         FROM t a CROSS JOIN t b ORDER BY s LIMIT 1000000000) d;",
    )
    .unwrap();
    let want_big = format!("big\t{}\t{}", N * N, sql.query("SELECT SUM(n) * SUM(n) FROM t"));
    let before = sql.state();
    // the clients: a transaction left open, the big query
    let root = nix::sys::signal::Signal::SIGUSR1;
    wait_output(&tree, &prefix.join("tx.out"), "tx-open\t502", Some(root), 30);
    let tmp = prefix.join("tmp");
    wait_for(
        || {
            sql.query("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'SELECT ''big''%' AND TIME >= 1")
                == "1"
                // a sort file being written (InnoDB's own unlinked temp files are empty)
                && unlinked_under(server, &tmp).iter().any(|(_, n)| *n > 0)
        },
        Duration::from_secs(30),
        "the big query running, sorting into unlinked files in tmpdir",
    );
    assert_eq!(sql.query("SELECT COUNT(*) FROM t2"), "500", "the open transaction is not seen");
    let held = unlinked_under(server, &tmp);
    let (id, took) = a.take(&tree);
    tree.reap();
    eprintln!(
        "mariadb: take {took:?}, {} unlinked files in tmpdir, {} bytes",
        held.len(),
        held.iter().map(|(_, n)| n).sum::<u64>()
    );
    assert!(!read(prefix.join("big.out")).contains("big\t"), "the big query was in flight");
    let rec = record(&a.images.join(&id));
    assert!(rec["objects"].as_array().unwrap().len() >= held.len(), "{}", rec["objects"]);
    // the live datadir moves on: the database is gone, the temp dir holds junk
    std::fs::remove_dir_all(data.join("appdb")).unwrap();
    std::fs::write(tmp.join("junk"), "junk").unwrap();
    for round in 1..=2 {
        let took = a.restart(&id, &tree);
        let t = Instant::now();
        let big = wait_output(&tree, &prefix.join("big.out"), "big\t", None, 60);
        assert_eq!(big.trim_end(), want_big, "round {round}: the big query's result");
        eprintln!("mariadb round {round}: restart {took:?}, big query done {:?} later", t.elapsed());
        assert_eq!(sql.state(), before, "round {round}: the checkpoint-time rows");
        wait_output(
            &tree,
            &prefix.join("tx.out"),
            "tx-committed\t502",
            Some(nix::sys::signal::Signal::SIGUSR2),
            30,
        );
        assert_eq!(sql.query("SELECT COUNT(*) FROM t2"), "502", "round {round}: committed after restart");
        tree.kill();
    }
    assert!(!data.join("appdb").exists(), "the live datadir is left alone");
    a.delete(&id);
    eprintln!("mariadb: whole test {:?}", t0.elapsed());
}

/// nginx with an upload in progress from a client *outside* the tree, over TCP: checkpointed
/// with `--tcp-established` (CRIU dumps the worker's established connection, the network is
/// locked with nftables meanwhile), killed, restarted once (a connection can be restored once:
/// afterwards its peer has moved on): the test's client, whose socket stayed open all along,
/// sends the rest of the body on the same connection and gets `201 Created`, and the stored
/// upload has the whole body's hash.
#[test]
fn nginx_upload_tcp_client_outside_tree() {
    use std::io::{Read, Write};
    if !have("/usr/sbin/nginx", "apps::nginx_upload_tcp_client_outside_tree")
        || !have(PYTHON, "apps::nginx_upload_tcp_client_outside_tree")
    {
        return;
    }
    let _g = serial();
    let a = AppFs::new("nginx-tcp", "1G");
    let prefix = a.dir("nginx");
    let port = free_port();
    let mut tree = Tree::spawn(
        &[
            PYTHON,
            script("nginx_upload.py").to_str().unwrap(),
            prefix.to_str().unwrap(),
            &port.to_string(),
            "noclient",
        ],
        &[],
    );
    wait_for(|| prefix.join("front.sock").exists(), Duration::from_secs(30), "nginx listening");
    let body: Vec<u8> = (0..8u32 << 20).map(|k| (k.wrapping_mul(13).wrapping_add(5) % 251) as u8).collect();
    let sent = 6usize << 20;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        c,
        "PUT /upload/big.bin HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(&body[..sent]).unwrap();
    wait_for(
        || nginx_body_temps(&tree.tasks()).iter().any(|(_, n)| *n + (16 << 10) >= sent as u64),
        Duration::from_secs(30),
        "nginx client-body temp file",
    );
    let tasks = tree.tasks();
    let pid = tree.pid.to_string();
    let out = a.snapckpt_ok(
        &[
            "take",
            "--pid",
            &pid,
            "--tree",
            "--engine",
            "criu",
            "--snapshot",
            "btrfs",
            "--tcp-established",
            "--image-root",
            a.ir(),
        ],
        120,
    );
    let id = take_id(&out);
    for p in tasks {
        wait_gone(p);
    }
    tree.reap();
    a.restart(&id, &tree);
    let ss = sh(&format!("ss -tnoi state all '( sport = :{port} or dport = :{port} )' || true"));
    let sent_rest = c.write_all(&body[sent..]);
    let mut resp = vec![];
    let read = c.read_to_end(&mut resp);
    let head = String::from_utf8_lossy(&resp[..resp.len().min(200)]).into_owned();
    let errlog = std::fs::read_to_string(tree.view(&prefix.join("logs/error.log"))).unwrap_or_default();
    assert!(
        head.starts_with("HTTP/1.1 201 "),
        "after the restart: write {sent_rest:?}, read {read:?}: {head:?}\nsockets after the restart:\n{ss}\nnginx error.log (tail):\n{}\nCRIU: {}",
        errlog.lines().rev().take(15).collect::<Vec<_>>().join("\n"),
        sh(&format!(
            "find '{}' -name '*.log' | xargs -r grep -H -i -E 'nft|network|lock|tcp|repair|Error' | grep -v -E 'RLIMIT|file lock|flock|posix' | tail -n 60",
            a.images.display()
        ))
    );
    let (status, stored) = http_get(port, "/files/big.bin");
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(stored.len(), body.len());
    assert_eq!(sha256(&stored), sha256(&body), "the upload is the whole body");
    tree.kill();
    a.delete(&id);
}
