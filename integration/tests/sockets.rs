//! Servers and clients on sockets, checkpointed with `snapckpt take --engine criu --snapshot
//! btrfs`, killed and restarted from the snapshot (integration/progs/sockets.c, a small poll
//! server that counts what it served in memory: a restored one continues from its
//! checkpoint-time counts). The peers are the test itself, outside the checkpointed tree.
//!
//! What CRIU can do with a peer outside the tree, and so what is tested:
//! * TCP: a listener is restored on its port (new connections are served); an established
//!   connection only with `--tcp-established` at take (the restore side follows the record),
//!   once (the peer moves on), and the peer's data sent while the task was gone arrives.
//! * UDP: the bound socket is restored (datagrams answered, its memory as at checkpoint time).
//! * Unix sockets (`--ext-unix-sk`, always on): CRIU dumps one end of a connection whose peer
//!   is outside the tree only for *datagram* sockets connected to a named peer, and reconnects
//!   them by name at restore; a *stream* connection to an outside peer ("Can't dump half of
//!   stream unix connection") is refused by snapckpt before anything is frozen. A unix stream
//!   server is restored listening at its path: outside clients connect again after a restart.

use crate::common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A loop btrfs, the workload's log on it, an image root.
struct Rig {
    fs: LoopFs,
    _work: Scratch,
    images: PathBuf,
    log: PathBuf,
}

impl Rig {
    fn new(tag: &str) -> Rig {
        let fs = LoopFs::new("btrfs", "512M");
        let work = Scratch::new(&format!("sockets-{tag}"));
        let images = work.path().join("images");
        // the log on the snapshotted filesystem: restored as it was at the dump
        let log = fs.path("log");
        Rig { fs, _work: work, images, log }
    }

    fn ir(&self) -> &str {
        self.images.to_str().unwrap()
    }

    /// `sockets MODE ARG` as a session leader.
    fn start(&self, mode: &str, arg: &str) -> Proc {
        workload(&prog("sockets"), &[mode, arg], &self.log, true, None)
    }

    /// take --engine criu --snapshot btrfs EXTRA; waits until the task is gone. The id.
    fn take(&self, p: Proc, extra: &[&str]) -> String {
        let mut args = vec!["--engine", "criu", "--snapshot", "btrfs"];
        args.extend_from_slice(extra);
        let id = take_id(&take_ok(p.pid, &self.images, &args));
        wait_gone(p.pid);
        drop(p);
        id
    }

    /// restart ID --snapshot; the restored task is `pid` again.
    fn restart(&self, id: &str, pid: i32) {
        let out = snapckpt_ok(&["restart", id, "--snapshot", "--image-root", self.ir()]);
        assert!(out.contains("restored tasks [") && alive(pid), "{out}");
    }

    fn delete(&self, id: &str) {
        snapckpt_ok(&["delete", id, "--force", "--image-root", self.ir()]);
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A line-based client on a stream socket, bounded.
struct Lines<S: std::io::Read + Write> {
    r: BufReader<S>,
}

impl<S: std::io::Read + Write> Lines<S> {
    fn new(s: S) -> Self {
        Lines { r: BufReader::new(s) }
    }
    /// Send `line`, read the answer (without its newline).
    fn ask(&mut self, line: &str) -> String {
        writeln!(self.r.get_mut(), "{line}").unwrap();
        self.answer()
    }
    fn answer(&mut self) -> String {
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap_or_else(|e| panic!("no answer: {e}"));
        assert!(s.ends_with('\n'), "connection closed: {s:?}");
        s.trim_end().to_string()
    }
}

fn tcp(port: u16) -> Lines<TcpStream> {
    let s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    Lines::new(s)
}

/// Close a client's connection and wait until the server has closed its end (EOF), so that
/// the server holds no connection at the take.
fn hang_up<S: std::io::Read + Write>(c: Lines<S>, shut: impl FnOnce(&S)) {
    let mut r = c.r;
    shut(r.get_ref());
    let mut rest = String::new();
    r.read_line(&mut rest).unwrap();
    assert_eq!(rest, "", "the server closed its end");
}

/// A TCP listener: after each of two restarts from one checkpoint, a new connection to the same
/// port is served by the restored process, whose counts go on from checkpoint time.
#[test]
fn tcp_listener_serves_new_connections_after_restart() {
    let _g = serial();
    let r = Rig::new("tcp-listen");
    let port = free_port();
    let p = r.start("tcp-listen", &port.to_string());
    let pid = p.pid;
    let mut c = tcp(port);
    assert_eq!(c.ask("one"), "srv conn=1 line=1 one");
    assert_eq!(c.ask("two"), "srv conn=1 line=2 two");
    hang_up(c, |s| s.shutdown(std::net::Shutdown::Write).unwrap());
    let id = r.take(p, &[]);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "nothing listens while the task is gone");
    for round in 1..=2 {
        r.restart(&id, pid);
        let mut c = tcp(port);
        assert_eq!(c.ask("three"), "srv conn=2 line=3 three", "round {round}");
        let mut d = tcp(port);
        assert_eq!(d.ask("four"), "srv conn=3 line=4 four", "round {round}");
        assert_eq!(c.ask("five"), "srv conn=3 line=5 five", "round {round}");
        drop((c, d));
        kill_wait(pid);
    }
    r.delete(&id);
}

/// An established TCP connection to a peer outside the tree (the task is the client, the test
/// the server): `take --tcp-established` dumps it (the record says so and restart restores it
/// the same way); what the peer sends while the task is gone arrives after the restart, and
/// the connection carries data both ways on the same socket.
#[test]
fn tcp_established_to_outside_peer_survives_restart() {
    let _g = serial();
    let r = Rig::new("tcp-est");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let p = r.start("tcp-connect", &port.to_string());
    let pid = p.pid;
    let (s, peer) = l.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let local = s.local_addr().unwrap();
    let mut c = Lines::new(s);
    assert_eq!(c.ask("before"), "cli line=1 before");
    // without --tcp-established CRIU refuses the connection; the task goes on untouched
    let (ok, _, err) = take(pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]);
    assert!(!ok, "{err}");
    assert!(alive(pid) && !stopped(pid), "{err}");
    assert_eq!(c.ask("still"), "cli line=2 still", "{err}");
    let id = r.take(p, &["--tcp-established"]);
    let ck = record(&r.images.join(&id));
    assert_eq!(ck["engine"]["tcp_established"], true, "{}", ck["engine"]);
    // the peer goes on sending while the task is gone (its packets dropped: the network lock)
    writeln!(c.r.get_mut(), "while-gone").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    r.restart(&id, pid);
    assert_eq!(c.answer(), "cli line=3 while-gone", "sent while the task was gone");
    assert_eq!(c.ask("after"), "cli line=4 after");
    assert_eq!(c.r.get_ref().local_addr().unwrap(), local, "the same connection");
    assert_eq!(c.r.get_ref().peer_addr().unwrap(), peer);
    // the peer hangs up: the restored client sees EOF and exits
    c.r.get_ref().shutdown(std::net::Shutdown::Both).unwrap();
    wait_gone(pid);
    r.delete(&id);
}

/// A UDP server: after each of two restarts it answers datagrams on its port, from its
/// checkpoint-time count.
#[test]
fn udp_server_answers_after_restart() {
    let _g = serial();
    let r = Rig::new("udp");
    let port = free_port();
    let p = r.start("udp", &port.to_string());
    let pid = p.pid;
    let u = UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    u.connect(("127.0.0.1", port)).unwrap();
    let ask = |d: &str| {
        u.send(d.as_bytes()).unwrap();
        let mut buf = [0u8; 2048];
        let n = u.recv(&mut buf).unwrap_or_else(|e| panic!("no answer to {d}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(ask("a"), "udp n=1 a");
    assert_eq!(ask("b"), "udp n=2 b");
    let id = r.take(p, &[]);
    for round in 1..=2 {
        r.restart(&id, pid);
        assert_eq!(ask("c"), "udp n=3 c", "round {round}");
        assert_eq!(ask("d"), "udp n=4 d", "round {round}");
        kill_wait(pid);
    }
    r.delete(&id);
}

/// A path as the task sees it (its mount namespace: the restart clone).
fn view(pid: i32, p: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root")).join(p.strip_prefix("/").unwrap())
}

fn unix(path: &Path) -> Lines<UnixStream> {
    let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    Lines::new(s)
}

/// A unix stream server with a client outside the tree. Connected at the take: refused before
/// anything is frozen (CRIU cannot dump half of a stream connection), with what to do; the
/// connection goes on. Disconnected: the take works, and after each of two restarts the
/// server listens at its path again (in the restored task's mount namespace, on the clone):
/// outside clients connect to it and are served from the checkpoint-time counts.
#[test]
fn unix_server_with_outside_client() {
    let _g = serial();
    let r = Rig::new("unix");
    let sock = r.fs.path("srv.sock");
    let p = r.start("unix", sock.to_str().unwrap());
    let pid = p.pid;
    let mut c = unix(&sock);
    assert_eq!(c.ask("one"), "srv conn=1 line=1 one");
    let (ok, _, err) = take(pid, &r.images, &["--engine", "criu", "--snapshot", "btrfs"]);
    assert!(!ok && err.contains("outside") && err.contains("nothing was changed"), "{err}");
    assert_no_panic(&err);
    assert!(alive(pid) && !stopped(pid));
    assert!(checkpoint_names(&r.fs.mnt).is_empty());
    assert!(
        !r.fs.path(".snapckpt").exists() || std::fs::read_dir(r.fs.path(".snapckpt")).unwrap().count() == 0
    );
    assert_eq!(c.ask("two"), "srv conn=1 line=2 two", "the connection goes on");
    hang_up(c, |s| s.shutdown(std::net::Shutdown::Write).unwrap());
    let id = r.take(p, &[]);
    for round in 1..=2 {
        r.restart(&id, pid);
        let at = view(pid, &sock);
        let mut c = unix(&at);
        assert_eq!(c.ask("three"), "srv conn=2 line=3 three", "round {round}");
        let mut d = unix(&at);
        assert_eq!(d.ask("four"), "srv conn=3 line=4 four", "round {round}");
        drop((c, d));
        kill_wait(pid);
    }
    r.delete(&id);
}

/// What `--ext-unix-sk` (always on) lets CRIU dump: a unix datagram socket connected to a
/// named server outside the tree (a syslog-like socket, here the test's). After each of two
/// restarts the task's socket is connected to that path again and the server receives from
/// it, the task's count going on from checkpoint time.
#[test]
fn unix_datagram_to_outside_server_reconnects() {
    let _g = serial();
    let r = Rig::new("unix-dgram");
    // the server's socket on a filesystem the restored task sees as the host does
    let srv_path = r._work.path().join("log.sock");
    let srv = UnixDatagram::bind(&srv_path).unwrap();
    srv.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let p = r.start("unix-dgram", srv_path.to_str().unwrap());
    let pid = p.pid;
    // one datagram from the task (SIGUSR1, repeated until it is received)
    let recv_one = |pid: i32| -> String {
        let mut buf = [0u8; 256];
        for _ in 0..30 {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1)
                .unwrap();
            if let Ok(n) = srv.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
        panic!("nothing received from {pid}");
    };
    wait_paused(pid);
    assert_eq!(recv_one(pid), "dgram n=1");
    let id = r.take(p, &[]);
    for round in 1..=2 {
        r.restart(&id, pid);
        wait_paused(pid);
        assert_eq!(recv_one(pid), "dgram n=2", "round {round}");
        kill_wait(pid);
    }
    r.delete(&id);
}

/// `snapckpt check` names the CRIU version and says whether CRIU dumps TCP and UDP sockets
/// here, by dumping a throwaway process that holds a TCP listener and a UDP socket: with the
/// CRIU under test it does; with one that fails that dump (a stand-in for CRIU 4.1, whose
/// error on this kernel it prints) check warns with CRIU's words and the way out.
#[test]
fn check_reports_criu_version_and_inet_sockets() {
    let criu = criu_bin();
    let version = sh(&format!("'{}' --version", criu.display()));
    let version = version.lines().next().unwrap().trim_start_matches("Version: ").trim().to_string();
    let (_, out, err) = snapckpt(&["check", "--criu", criu.to_str().unwrap()]);
    let line = |out: &str, what: &str| {
        out.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what} in {out}{err}"))
            .to_string()
    };
    let c = line(&out, "] CRIU:");
    assert!(c.starts_with("[ ok ]") && c.contains(&version), "{c}");
    let s = line(&out, "] CRIU sockets:");
    assert!(
        s.starts_with("[ ok ]") && s.contains(&version) && s.contains("dumps TCP and UDP sockets here"),
        "{s}"
    );
    // a CRIU that cannot
    let work = Scratch::new("sockets-check");
    let fake = work.path().join("criu");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase $1 in\n--version) echo 'Version: 4.1.1';;\ncheck) echo 'Looks good.';;\n\
         dump) while [ $# -gt 0 ]; do case $1 in -o) log=$2;; -D) dir=$2;; esac; shift; done\n\
         echo '(00.01) Error (criu/sockets.c:664): sockets: Can'\\''t get 1:16 opt: Operation not supported' > \"$dir/$log\"; exit 1;;\n\
         *) exit 1;;\nesac\n",
    )
    .unwrap();
    sh(&format!("chmod 755 '{}'", fake.display()));
    let (_, out, err) = snapckpt(&["check", "--criu", fake.to_str().unwrap()]);
    let s = line(&out, "] CRIU sockets:");
    assert!(
        s.starts_with("[warn]")
            && s.contains("CRIU 4.1.1 cannot dump TCP or UDP sockets here")
            && s.contains("Can't get 1:16 opt: Operation not supported")
            && s.contains("install-criu.sh"),
        "{s}\n{err}"
    );
}
