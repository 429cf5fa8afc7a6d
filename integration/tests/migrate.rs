//! Migration: `export` on one filesystem, `import` on another, `restart` there. Two loop
//! btrfs filesystems stand in for two machines (the target at another path, or at the same
//! path in a mount namespace of its own); real CRIU, real `btrfs send`/`receive`, a real
//! `ssh` to an sshd on the loopback address. Run as root.

use crate::common::*;
use snapckpt::migrate::stream::{self, Kind, MemberHeader, Reader, Writer};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Two machines: filesystem and image root each.
struct Two {
    a: LoopFs,
    b: LoopFs,
    work: Scratch,
    img_a: PathBuf,
    img_b: PathBuf,
}

fn two(size: &str) -> Two {
    let a = LoopFs::new("btrfs", size);
    let b = LoopFs::new("btrfs", size);
    let work = Scratch::new("migrate");
    std::fs::create_dir_all(a.path("data")).unwrap();
    let (img_a, img_b) = (work.path().join("images-a"), work.path().join("images-b"));
    Two { a, b, work, img_a, img_b }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The report lines (FD/MAP) a ufiles process printed after `from` bytes of its log, up to
/// `checked` (or `ready`).
fn report_after(log: &Path, from: usize) -> Vec<String> {
    let b = std::fs::read(log).unwrap();
    let t = String::from_utf8_lossy(&b[from.min(b.len())..]).into_owned();
    let t = t.split("ready").next().unwrap().split("checked").next().unwrap().to_string();
    t.lines().filter(|l| l.starts_with("FD ") || l.starts_with("MAP ")).map(str::to_string).collect()
}

/// Ask a restored ufiles process to report again; its FD/MAP lines.
fn self_check(pid: i32, log: &Path, from: usize) -> Vec<String> {
    wait_paused(pid);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).unwrap();
    wait_for(
        || String::from_utf8_lossy(&std::fs::read(log).unwrap()[from..]).contains("checked"),
        Duration::from_secs(30),
        "self check",
    );
    report_after(log, from)
}

fn export_file(id: &str, images: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec!["export", id, "-o", s(out), "--image-root", s(images)];
    args.extend_from_slice(extra);
    let (ok, o, e) = snapckpt(&args);
    assert!(ok, "export failed: {o}\n{e}");
    e
}

fn import(stream: &Path, mount: &Path, images: &Path) -> (bool, String, String) {
    snapckpt(&["import", s(stream), "--mount", s(mount), "--image-root", s(images)])
}

fn import_ok(stream: &Path, mount: &Path, images: &Path) -> String {
    let (ok, o, e) = import(stream, mount, images);
    assert!(ok, "import failed: {o}\n{e}");
    o
}

/// Nothing of checkpoint `id` on `fs` or in `images`: no image (or partial one), no snapshot
/// directory, no temporary receive directory, no subvolume.
fn nothing_of(id: &str, fs: &LoopFs, images: &Path) {
    let entries = |p: &Path| -> Vec<String> {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    let left: Vec<String> = entries(images).into_iter().filter(|n| n.contains(id)).collect();
    assert!(left.is_empty(), "left in the image root: {left:?}");
    let left: Vec<String> = entries(&fs.path(".snapckpt")).into_iter().filter(|n| n.contains(id)).collect();
    assert!(left.is_empty(), "left in .snapckpt: {left:?}");
    let subvols = sh(&format!("btrfs subvolume list '{}'", fs.mnt.display()));
    assert!(!subvols.contains(id), "subvolumes left: {subvols}");
}

/// Take with CRIU on A, export to a file, import on B at `b_mount`, delete on A, restart on B:
/// the restored task sees what it saw. `in_ns`: a shell prefix that runs import and restart
/// in B's own mount namespace.
fn criu_roundtrip(t: &Two, b_mount: &Path, run_b: &dyn Fn(&[&str]) -> String) {
    let log = t.work.path().join("ufiles.log");
    // (no "tmpfile": take's restartability check refuses an O_TMPFILE fd with CRIU for now,
    // criu_btrfs::criu_every_kind_restart_twice shows it)
    let p = workload(
        &prog("ufiles"),
        &["setup", s(&t.a.path("data")), "ab", "orphan:67108864", "dense:3000000", "mmap", "twofds", "fifo"],
        &log,
        true,
        None,
    );
    let pid = p.pid;
    let before = report_after(&log, 0);
    let id = take_id(&take_ok(pid, &t.img_a, &["--engine", "criu", "--snapshot", "btrfs"]));
    let mut p = p;
    p.child.wait().unwrap();
    let stream = t.work.path().join("ck.snap");
    export_file(&id, &t.img_a, &stream, &[]);
    let out = run_b(&["import", s(&stream), "--mount", s(b_mount), "--image-root", s(&t.img_b)]);
    assert!(out.contains(&format!("imported checkpoint {id}")), "{out}");
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
    assert!(!t.a.path(&format!(".snapckpt/{id}")).exists());
    let rec = record(&t.img_b.join(&id));
    assert_eq!(rec["imported"]["mounts"][0]["source"], s(&t.a.mnt));
    assert_eq!(rec["snapshots"][0]["mount_point"], s(b_mount));
    assert_eq!(rec["snapshots"][0]["device"], t.b.dev.as_str());
    let listed = snapckpt_ok(&["list", "--image-root", s(&t.img_b)]);
    assert!(listed.contains(&id), "{listed}");

    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    let out = run_b(&["restart", &id, "--snapshot", "--image-root", s(&t.img_b)]);
    assert!(out.contains(&format!("restored tasks [{pid}]")), "{out}");
    let _k = KillOnDrop(vec![pid]);
    assert_eq!(self_check(pid, &log, logsize), before, "the restored task sees what it saw");
    let fd4 = std::fs::read_link(format!("/proc/{pid}/fd/4")).unwrap();
    assert!(fd4.starts_with(b_mount), "restored fd names {}", fd4.display());
    kill_wait(pid);
    snapckpt_ok(&["delete", &id, "--force", "--image-root", s(&t.img_b)]);
    nothing_of(&id, &t.b, &t.img_b);
}

/// The target mounts the filesystem at another path.
#[test]
fn migrate_criu_to_other_path() {
    let _g = serial();
    let t = two("2G");
    criu_roundtrip(&t, &t.b.mnt, &|args| snapckpt_ok(args));
}

/// The target mounts the filesystem at the source's path, in a mount namespace of its own
/// (as another machine would).
#[test]
fn migrate_criu_same_path_own_namespace() {
    let _g = serial();
    let t = two("2G");
    let ns = t.work.path().join("ns");
    std::fs::create_dir_all(&ns).unwrap();
    // A process holding a mount namespace where B's device is mounted over A's mount point.
    let holder = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount '{}' '{}' && echo ready > '{}/ready' && exec sleep 600",
            t.b.dev,
            t.a.mnt.display(),
            ns.display()
        ))
        .spawn()
        .unwrap();
    let holder = Proc { pid: holder.id() as i32, child: holder };
    wait_for(|| ns.join("ready").exists(), Duration::from_secs(10), "namespace");
    let hpid = holder.pid;
    let run_b = move |args: &[&str]| -> String {
        let o = Command::new("nsenter")
            .arg(format!("--mount=/proc/{hpid}/ns/mnt"))
            .arg(snapckpt_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "snapckpt {args:?} in B's namespace failed\n{out}\n{err}");
        out.into_owned()
    };
    criu_roundtrip(&t, &t.a.mnt, &run_b);
}

/// Write `n` random bytes to `p`.
fn random_file(p: &Path, mib: u32) {
    sh(&format!("head -c {}M /dev/urandom > '{}' && sync", mib, p.display()));
}

/// Three files-only checkpoints of one filesystem; the second and third streams sent
/// incrementally are the size of the change, not of the data. A missing parent is refused
/// with nothing written. The third, restarted on B, holds the files as recorded.
#[test]
fn migrate_incremental_chain() {
    let _g = serial();
    let t = two("2G");
    random_file(&t.a.path("data/big"), 48);
    let log = t.work.path().join("ufiles.log");
    let _p = workload(
        &prog("ufiles"),
        &["setup", s(&t.a.path("data")), "orphan:8388608", "twofds"],
        &log,
        false,
        None,
    );
    let before = fd_lines(&first_report(&log));
    let pid = _p.pid;
    let take = || take_files_only(pid, &t.img_a, &["--snapshot", "btrfs"]).0;
    let id1 = take();
    random_file(&t.a.path("data/c1"), 2);
    let id2 = take();
    random_file(&t.a.path("data/c2"), 2);
    let id3 = take();
    let streams: Vec<PathBuf> = (1..=3).map(|n| t.work.path().join(format!("s{n}.snap"))).collect();
    export_file(&id1, &t.img_a, &streams[0], &[]);
    export_file(&id2, &t.img_a, &streams[1], &["--parent", &id1]);
    export_file(&id3, &t.img_a, &streams[2], &["--parent", &id2]);
    let full = export_file(&id3, &t.img_a, &t.work.path().join("s3-full.snap"), &[]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let sizes: Vec<u64> = streams.iter().map(|p| size(p)).collect();
    let full3 = size(&t.work.path().join("s3-full.snap"));
    eprintln!(
        "stream sizes: full {} / incremental {} {} / third in full {full3}\n{full}",
        sizes[0], sizes[1], sizes[2]
    );
    assert!(sizes[0] > 48 << 20, "{sizes:?}");
    for &n in &sizes[1..] {
        assert!(n > 2 << 20 && n < 3 << 20, "an incremental stream is the size of the change: {sizes:?}");
    }
    assert!(full3 > 52 << 20, "{full3}");

    // the second before the first: refused, naming the parent; nothing written
    let (ok, _, err) = import(&streams[1], &t.b.mnt, &t.img_b);
    assert!(
        !ok && err.contains(&format!("since checkpoint {id1}"))
            && err.contains(&format!("import {id1} first")),
        "{err}"
    );
    nothing_of(&id2, &t.b, &t.img_b);
    for st in &streams {
        import_ok(st, &t.b.mnt, &t.img_b);
    }
    let rec3 = record(&t.img_b.join(&id3));
    assert_eq!(rec3["imported"]["parent"], id2.as_str());
    for id in [&id1, &id2, &id3] {
        snapckpt_ok(&["delete", id, "--image-root", s(&t.img_a)]);
    }
    // the third's snapshot holds all the data, received from three streams
    let snap3 = PathBuf::from(rec3["snapshots"][0]["path"].as_str().unwrap());
    for f in ["data/big", "data/c1", "data/c2"] {
        assert!(fnv_file(&snap3.join(f)).unwrap().0 > 0, "{f}");
    }
    assert_eq!(fnv_file(&snap3.join("data/big")).unwrap(), fnv_file(&t.a.path("data/big")).unwrap());
    let out = snapckpt_ok(&[
        "restart",
        &id3,
        "--snapshot",
        "--image-root",
        s(&t.img_b),
        "--exec",
        s(&prog("ufiles")),
        "report",
    ]);
    let after = fd_lines(&out);
    assert!(!after.is_empty(), "{out}");
    for (fd, line) in &after {
        assert_eq!(line, &before[fd], "fd {fd} after restart on B");
    }
    for id in [&id3, &id2, &id1] {
        snapckpt_ok(&["delete", id, "--image-root", s(&t.img_b)]);
        nothing_of(id, &t.b, &t.img_b);
    }
}

/// Every member of a stream, uncompressed: (header, bytes).
fn members(p: &Path) -> (stream::StreamHeader, Vec<(MemberHeader, Vec<u8>)>) {
    let f = std::fs::File::open(p).unwrap();
    let mut r = Reader::new(std::io::BufReader::new(f), Box::new(|_| {})).unwrap();
    let head = r.header().clone();
    let mut v = vec![];
    while let Some(h) = r.next_member().unwrap() {
        let mut b = vec![];
        r.member_data(&h, &mut std::io::sink(), &mut b).unwrap();
        v.push((h, b));
    }
    (head, v)
}

/// Write a stream of these members.
fn write_stream(p: &Path, head: &stream::StreamHeader, ms: &[(MemberHeader, Vec<u8>)]) {
    let mut w = Writer::new(std::fs::File::create(p).unwrap(), head, Box::new(|_| {})).unwrap();
    for (h, b) in ms {
        let h = MemberHeader { length: h.length.map(|_| b.len() as u64), ..h.clone() };
        w.member::<stream::StreamError>(&h, &mut &b[..], &mut || Ok(())).unwrap();
    }
    w.finish().unwrap();
}

/// A stream cut short, a flipped byte, a record naming paths outside the target, a send
/// stream that `btrfs receive` rejects: each refused, nothing written.
#[test]
fn migrate_bad_streams_leave_nothing() {
    let _g = serial();
    let t = two("1G");
    random_file(&t.a.path("data/big"), 8);
    let log = t.work.path().join("ufiles.log");
    let p = workload(&prog("ufiles"), &["setup", s(&t.a.path("data")), "orphan:1048576"], &log, false, None);
    let (id, _) = take_files_only(p.pid, &t.img_a, &["--snapshot", "btrfs"]);
    let good = t.work.path().join("good.snap");
    export_file(&id, &t.img_a, &good, &[]);
    let bytes = std::fs::read(&good).unwrap();
    let bad = t.work.path().join("bad.snap");
    let refused = |what: &str, expect: &[&str]| {
        let (ok, out, err) = import(&bad, &t.b.mnt, &t.img_b);
        assert!(!ok, "{what}: import succeeded: {out}");
        assert_no_panic(&err);
        assert!(expect.iter().any(|e| err.contains(e)), "{what}: {err}");
        nothing_of(&id, &t.b, &t.img_b);
    };
    for cut in [bytes.len() / 2, bytes.len() - 8, 40] {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        refused("truncated", &["cut short"]);
    }
    for at in [bytes.len() / 2, bytes.len() * 3 / 4] {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        refused("flipped byte", &["checksum mismatch", "corrupt"]);
    }
    let (head, ms) = members(&good);
    let hostile = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut ms = ms.clone();
        let mut rec: serde_json::Value = serde_json::from_slice(&ms[0].1).unwrap();
        edit(&mut rec);
        ms[0].1 = serde_json::to_vec(&rec).unwrap();
        write_stream(&bad, &head, &ms);
    };
    hostile(&|r| {
        r["objects"][0]["mount"]["mount_point"] = "/etc".into();
        r["objects"][0]["original_path"] = "/etc/shadow".into();
    });
    refused("object outside", &["outside the target"]);
    hostile(&|r| r["objects"][0]["original_path"] = "/etc/passwd".into());
    refused("original path outside", &["outside the target", "outside its filesystem"]);
    hostile(&|r| {
        r["snapshots"][0]["path"] = format!("/etc/.snapckpt/{}/snapshot", r["id"].as_str().unwrap()).into()
    });
    refused("snapshot outside", &["outside the target"]);
    // a send stream whose checksum is right but which btrfs receive rejects half-way
    let mut cut = ms.clone();
    let last = cut.len() - 1;
    assert_eq!(cut[last].0.kind, Kind::BtrfsSend);
    let half = cut[last].1.len() / 2;
    cut[last].1.truncate(half);
    write_stream(&bad, &head, &cut);
    refused("receive fails", &["btrfs receive"]);
    // and the good stream still imports
    import_ok(&good, &t.b.mnt, &t.img_b);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_b)]);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
    drop(p);
}

/// A flipped byte in what no member checksum covers: the stream header (where it comes from),
/// a member's header (its name) and the end mark. Each refused, nothing written (the stream's
/// own checksum at its end covers every byte before it).
#[test]
fn migrate_flipped_header_bytes_leave_nothing() {
    let _g = serial();
    let t = two("1G");
    let log = t.work.path().join("ufiles.log");
    let p = workload(&prog("ufiles"), &["setup", s(&t.a.path("data")), "orphan:1048576"], &log, false, None);
    let (id, _) = take_files_only(p.pid, &t.img_a, &["--snapshot", "btrfs"]);
    drop(p);
    let good = t.work.path().join("good.snap");
    export_file(&id, &t.img_a, &good, &[]);
    let bytes = std::fs::read(&good).unwrap();
    let find = |from: usize, what: &[u8]| -> usize {
        from + bytes[from..].windows(what.len()).position(|w| w == what).unwrap_or_else(|| {
            panic!("{} not in the stream after byte {from}", String::from_utf8_lossy(what))
        })
    };
    // the second byte of a JSON string value (inside it, so the JSON stays valid)
    let value_at = |from: usize, key: &str| find(from, format!("\"{key}\":\"").as_bytes()) + key.len() + 5;
    let mut flips = vec![("the stream header's host", value_at(0, "from_host"))];
    let mut at = 0;
    while let Some(k) = bytes[at..].windows(4).position(|w| w == b"MEMB") {
        at += k + 4;
        flips.push(("a member header's name", value_at(at, "name")));
    }
    assert!(flips.len() >= 3, "header and at least two members: {flips:?}");
    let ends = bytes.windows(4).rposition(|w| w == b"ENDS").unwrap();
    flips.push(("the end mark", ends + 1));
    let bad = t.work.path().join("bad.snap");
    for (what, at) in flips {
        let mut b = bytes.clone();
        b[at] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        let (ok, out, err) = import(&bad, &t.b.mnt, &t.img_b);
        assert!(!ok, "{what} (byte {at}) flipped: import succeeded: {out}");
        assert_no_panic(&err);
        assert!(err.contains("corrupt") || err.contains("checksum"), "{what}: {err}");
        nothing_of(&id, &t.b, &t.img_b);
    }
    import_ok(&good, &t.b.mnt, &t.img_b);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_b)]);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
}

/// `--image-only` for shared storage: the snapshot is already on the target's filesystem (here
/// the same one, in another image root); only the record and the image travel.
#[test]
fn migrate_image_only_shared_storage() {
    let _g = serial();
    let t = two("1G");
    let log = t.work.path().join("ufiles.log");
    let p = workload(
        &prog("ufiles"),
        &["setup", s(&t.a.path("data")), "orphan:1048576", "twofds"],
        &log,
        false,
        None,
    );
    let before = fd_lines(&first_report(&log));
    let (id, _) = take_files_only(p.pid, &t.img_a, &["--snapshot", "btrfs"]);
    let st = t.work.path().join("img.snap");
    export_file(&id, &t.img_a, &st, &["--image-only"]);
    assert!(std::fs::metadata(&st).unwrap().len() < 64 << 10);
    // not on B: refused
    let (ok, _, err) = import(&st, &t.b.mnt, &t.img_b);
    assert!(!ok && err.contains("shared storage"), "{err}");
    nothing_of(&id, &t.b, &t.img_b);
    let shared = t.work.path().join("images-shared");
    import_ok(&st, &t.a.mnt, &shared);
    let out = snapckpt_ok(&[
        "restart",
        &id,
        "--snapshot",
        "--image-root",
        s(&shared),
        "--exec",
        s(&prog("ufiles")),
        "report",
    ]);
    for (fd, line) in &fd_lines(&out) {
        assert_eq!(line, &before[fd], "fd {fd}");
    }
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
    drop(p);
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An sshd of the test's own on 127.0.0.1 (own host and user keys, own config); killed on drop.
struct Sshd {
    child: std::process::Child,
    port: u16,
    key: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> Sshd {
        let (host, key) = (dir.join("host_ed25519"), dir.join("user_ed25519"));
        for k in [&host, &key] {
            sh(&format!("ssh-keygen -q -t ed25519 -N '' -f '{}'", k.display()));
        }
        std::fs::copy(dir.join("user_ed25519.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let port = free_port();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1\nPort {port}\nHostKey {}\nPidFile {}/sshd.pid\nAuthorizedKeysFile {}/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
                host.display(),
                dir.display(),
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&cfg)
            .args(["-p", &port.to_string()])
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("sshd (openssh-server, scripts/setup.sh)");
        wait_for(
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            Duration::from_secs(10),
            "sshd",
        );
        Sshd { child, port, key }
    }

    /// `ssh root@127.0.0.1 CMD` with the test's key.
    fn ssh(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i").arg(&self.key).args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-p",
            &self.port.to_string(),
            "root@127.0.0.1",
            remote,
        ]);
        c
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `snapckpt export ID - | ssh host snapckpt import - --mount M`, through a real ssh.
#[test]
fn migrate_through_ssh() {
    let _g = serial();
    let t = two("1G");
    random_file(&t.a.path("data/big"), 4);
    let log = t.work.path().join("ufiles.log");
    let p = workload(
        &prog("ufiles"),
        &["setup", s(&t.a.path("data")), "orphan:2097152", "twofds"],
        &log,
        false,
        None,
    );
    let before = fd_lines(&first_report(&log));
    let (id, _) = take_files_only(p.pid, &t.img_a, &["--snapshot", "btrfs"]);
    drop(p);
    let keys = t.work.path().join("ssh");
    std::fs::create_dir_all(&keys).unwrap();
    let sshd = Sshd::start(&keys);
    let mut export = Command::new(snapckpt_bin())
        .args(["export", &id, "-", "--image-root", s(&t.img_a)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let remote = format!(
        "'{}' import - --mount '{}' --image-root '{}'",
        snapckpt_bin().display(),
        t.b.mnt.display(),
        t.img_b.display()
    );
    let o = sshd.ssh(&remote).stdin(export.stdout.take().unwrap()).output().unwrap();
    let e = export.wait_with_output().unwrap();
    assert!(e.status.success(), "export: {}", String::from_utf8_lossy(&e.stderr));
    assert!(
        o.status.success(),
        "ssh import: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("imported checkpoint {id}")));
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
    let out = snapckpt_ok(&[
        "restart",
        &id,
        "--snapshot",
        "--image-root",
        s(&t.img_b),
        "--exec",
        s(&prog("ufiles")),
        "report",
    ]);
    let after = fd_lines(&out);
    assert!(!after.is_empty(), "{out}");
    for (fd, line) in &after {
        assert_eq!(line, &before[fd], "fd {fd}");
    }
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_b)]);
    nothing_of(&id, &t.b, &t.img_b);
}

/// An executable on the migrated filesystem is found at the target's path (the import renames
/// the CRIU image's paths); one that was on no snapshotted filesystem and is missing here is
/// refused before the restart changes anything.
#[test]
fn migrate_restart_maps_paths_and_refuses_missing_files() {
    let _g = serial();
    let t = two("1G");
    let on_fs = t.a.path("data/bin/ufiles");
    let off_fs = t.work.path().join("bin/ufiles-copy");
    for b in [&on_fs, &off_fs] {
        std::fs::create_dir_all(b.parent().unwrap()).unwrap();
        std::fs::copy(prog("ufiles"), b).unwrap();
    }
    for bin in [&on_fs, &off_fs] {
        let log = t.work.path().join(format!("u{}.log", unique()));
        let mut p =
            workload(bin, &["setup", s(&t.a.path("data")), "orphan:1048576", "twofds"], &log, true, None);
        let before = report_after(&log, 0);
        let id = take_id(&take_ok(p.pid, &t.img_a, &["--engine", "criu", "--snapshot", "btrfs"]));
        p.child.wait().unwrap();
        let st = t.work.path().join(format!("{id}.snap"));
        export_file(&id, &t.img_a, &st, &[]);
        import_ok(&st, &t.b.mnt, &t.img_b);
        snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
        if bin == &on_fs {
            std::fs::remove_file(&on_fs).unwrap(); // only the snapshot has it now
            let logsize = std::fs::metadata(&log).unwrap().len() as usize;
            let out = snapckpt_ok(&["restart", &id, "--snapshot", "--image-root", s(&t.img_b)]);
            assert!(out.contains(&format!("restored tasks [{}]", p.pid)), "{out}");
            let _k = KillOnDrop(vec![p.pid]);
            assert_eq!(self_check(p.pid, &log, logsize), before);
            let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid)).unwrap();
            assert_eq!(
                exe,
                t.b.path("data/bin/ufiles"),
                "the executable is the clone's, at the target's path"
            );
            kill_wait(p.pid);
        } else {
            std::fs::rename(&off_fs, off_fs.with_extension("gone")).unwrap();
            let (ok, out, err) = snapckpt(&["restart", &id, "--snapshot", "--image-root", s(&t.img_b)]);
            assert!(
                !ok && err.contains("not on this machine") && err.contains("nothing was changed"),
                "{out}\n{err}"
            );
            assert!(err.contains(s(bin)), "names the file: {err}");
            assert!(!alive(p.pid));
            assert!(!t.b.path(&format!(".snapckpt/{id}/restart-1")).exists(), "no clone was made");
        }
        snapckpt_ok(&["delete", &id, "--force", "--image-root", s(&t.img_b)]);
    }
}

/// An import killed after it received the snapshot, before it published the record: the next
/// import of the same stream says what is left and how to remove it; `gc` removes it; then the
/// import works.
#[test]
fn migrate_killed_import_is_collected() {
    let _g = serial();
    let t = two("1G");
    random_file(&t.a.path("data/big"), 4);
    let log = t.work.path().join("ufiles.log");
    let p = workload(&prog("ufiles"), &["setup", s(&t.a.path("data")), "orphan:1048576"], &log, false, None);
    let (id, _) = take_files_only(p.pid, &t.img_a, &["--snapshot", "btrfs"]);
    drop(p);
    let st = t.work.path().join("s.snap");
    export_file(&id, &t.img_a, &st, &[]);
    for point in ["import-spooled", "import-received"] {
        let hooks = Hooks::new(t.work.path().join(format!("hooks-{point}")), &[point]);
        let mut c = hooks
            .command(&["import", s(&st), "--mount", s(&t.b.mnt), "--image-root", s(&t.img_b)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        hooks.wait_reached(point, "import at the hook");
        c.kill().unwrap();
        c.wait().unwrap();
        let (ok, _, err) = import(&st, &t.b.mnt, &t.img_b);
        assert!(!ok && err.contains("snapckpt gc --mount"), "{point}: {err}");
        let out = snapckpt_ok(&["gc", "--mount", s(&t.b.mnt), "--image-root", s(&t.img_b)]);
        assert!(out.contains("partial image"), "{point}: {out}");
        nothing_of(&id, &t.b, &t.img_b);
    }
    import_ok(&st, &t.b.mnt, &t.img_b);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_b)]);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
    nothing_of(&id, &t.b, &t.img_b);
}

/// The checkpointed task's pid is in use on the target (here: the task itself, left running
/// by the take): the restart of the imported checkpoint refuses, saying so, and changes nothing.
#[test]
fn migrate_restart_refuses_pid_in_use() {
    let _g = serial();
    let t = two("1G");
    let log = t.work.path().join("ufiles.log");
    let p = workload(&prog("ufiles"), &["setup", s(&t.a.path("data")), "orphan:1048576"], &log, true, None);
    let id =
        take_id(&take_ok(p.pid, &t.img_a, &["--engine", "criu", "--snapshot", "btrfs", "--leave-running"]));
    let st = t.work.path().join("s.snap");
    export_file(&id, &t.img_a, &st, &[]);
    import_ok(&st, &t.b.mnt, &t.img_b);
    let (ok, out, err) = snapckpt(&["restart", &id, "--snapshot", "--image-root", s(&t.img_b)]);
    assert!(
        !ok && err.contains(&format!("pid {} is in use", p.pid)) && err.contains("nothing was changed"),
        "{out}\n{err}"
    );
    assert!(!t.b.path(&format!(".snapckpt/{id}/restart-1")).exists(), "no clone was made");
    assert!(alive(p.pid));
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_b)]);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
    drop(p);
}

/// What the target lacks, each refused before the restart changes anything and saying what to
/// do: a library the task mapped that was on no snapshotted filesystem (missing, then another
/// size), a CRIU older than the one that dumped, and, on another kernel, a failing `criu check`.
/// With all of it in place the restart works.
#[test]
fn migrate_restart_refuses_what_the_target_lacks() {
    let _g = serial();
    let t = two("1G");
    let lib = t.work.path().join("lib/libz-copy.so.1");
    std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
    std::fs::copy("/lib/x86_64-linux-gnu/libz.so.1", &lib).unwrap();
    let log = t.work.path().join("ufiles.log");
    let preload = format!("LD_PRELOAD={}", s(&lib));
    let ufiles = prog("ufiles");
    let mut p = workload(
        Path::new("/usr/bin/env"),
        &[&preload, s(&ufiles), "setup", s(&t.a.path("data")), "orphan:1048576", "twofds"],
        &log,
        true,
        None,
    );
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", p.pid)).unwrap();
    assert!(maps.contains(s(&lib)), "the task maps the library");
    let before = report_after(&log, 0);
    let id = take_id(&take_ok(p.pid, &t.img_a, &["--engine", "criu", "--snapshot", "btrfs"]));
    p.child.wait().unwrap();
    let st = t.work.path().join("s.snap");
    export_file(&id, &t.img_a, &st, &[]);
    import_ok(&st, &t.b.mnt, &t.img_b);
    snapckpt_ok(&["delete", &id, "--image-root", s(&t.img_a)]);
    let restart = |extra: &[&str]| {
        let mut a = vec!["restart", id.as_str(), "--snapshot", "--image-root", s(&t.img_b)];
        a.extend_from_slice(extra);
        snapckpt(&a)
    };
    let refused = |extra: &[&str], expect: &[&str]| {
        let (ok, out, err) = restart(extra);
        assert!(!ok, "restart {extra:?} succeeded: {out}");
        assert_no_panic(&err);
        for e in expect.iter().chain(&["nothing was changed"]) {
            assert!(err.contains(e), "restart {extra:?}: expected {e:?} in: {err}");
        }
        assert!(!alive(p.pid));
        assert!(!t.b.path(&format!(".snapckpt/{id}/restart-1")).exists(), "no clone was made");
    };
    // the library is not here
    let gone = lib.with_extension("gone");
    std::fs::rename(&lib, &gone).unwrap();
    refused(&[], &["not on this machine", "was not on a snapshotted filesystem", s(&lib)]);
    // another version of it (another size)
    std::fs::write(&lib, b"not the same library").unwrap();
    refused(&[], &[s(&lib), "install the same version"]);
    std::fs::rename(&gone, &lib).unwrap();
    // an older CRIU here
    let criu = std::env::var("SNAPCKPT_CRIU").unwrap_or_else(|_| "/opt/snapckpt/criu/bin/criu".into());
    let old = t.work.path().join("criu-old");
    std::fs::write(
        &old,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && {{ echo 'Version: 3.0'; exit 0; }}\nexec '{criu}' \"$@\"\n"
        ),
    )
    .unwrap();
    // a CRIU whose `criu check` fails here
    let nocheck = t.work.path().join("criu-nocheck");
    std::fs::write(
        &nocheck,
        format!("#!/bin/sh\n[ \"$1\" = check ] && {{ echo 'Error (cr-check.c): no pidfd_open'; exit 1; }}\nexec '{criu}' \"$@\"\n"),
    )
    .unwrap();
    sh(&format!("chmod 755 '{}' '{}'", old.display(), nocheck.display()));
    refused(&["--criu", s(&old)], &["older than the CRIU", "install CRIU"]);
    // same kernel: `criu check` is not what decides
    let rec_path = t.img_b.join(&id).join("checkpoint.json");
    let mut rec = record(&t.img_b.join(&id));
    rec["imported"]["from_kernel"] = "5.4.0-elsewhere".into();
    std::fs::write(&rec_path, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
    refused(&["--criu", s(&nocheck)], &["dumped on kernel 5.4.0-elsewhere", "criu check", "no pidfd_open"]);
    // all in place (another kernel, its `criu check` passing): restarted
    let logsize = std::fs::metadata(&log).unwrap().len() as usize;
    let (ok, out, err) = restart(&[]);
    assert!(ok && out.contains(&format!("restored tasks [{}]", p.pid)), "{out}\n{err}");
    let _k = KillOnDrop(vec![p.pid]);
    assert_eq!(self_check(p.pid, &log, logsize), before);
    kill_wait(p.pid);
    snapckpt_ok(&["delete", &id, "--force", "--image-root", s(&t.img_b)]);
    nothing_of(&id, &t.b, &t.img_b);
}

/// An incremental stream imported into another filesystem than its parent was: refused before
/// anything is received, naming the parent and where it is; nothing written.
#[test]
fn migrate_incremental_parent_on_another_filesystem() {
    let _g = serial();
    let t = two("1G");
    let c = LoopFs::new("btrfs", "1G");
    random_file(&t.a.path("data/big"), 4);
    let log = t.work.path().join("ufiles.log");
    let p = workload(&prog("ufiles"), &["setup", s(&t.a.path("data")), "orphan:1048576"], &log, false, None);
    let id1 = take_files_only(p.pid, &t.img_a, &["--snapshot", "btrfs"]).0;
    random_file(&t.a.path("data/c1"), 1);
    let id2 = take_files_only(p.pid, &t.img_a, &["--snapshot", "btrfs"]).0;
    drop(p);
    let (s1, s2) = (t.work.path().join("s1.snap"), t.work.path().join("s2.snap"));
    export_file(&id1, &t.img_a, &s1, &[]);
    export_file(&id2, &t.img_a, &s2, &["--parent", &id1]);
    import_ok(&s1, &t.b.mnt, &t.img_b);
    let (ok, out, err) = import(&s2, &c.mnt, &t.img_b);
    assert!(!ok, "imported onto another filesystem than its parent: {out}");
    assert_no_panic(&err);
    assert!(
        err.contains(&format!("since checkpoint {id1}")) && err.contains(s(&t.b.mnt)),
        "names the parent and where it is: {err}"
    );
    nothing_of(&id2, &c, &t.img_b);
    import_ok(&s2, &t.b.mnt, &t.img_b);
    for id in [&id2, &id1] {
        snapckpt_ok(&["delete", id, "--image-root", s(&t.img_b)]);
        snapckpt_ok(&["delete", id, "--image-root", s(&t.img_a)]);
    }
}
