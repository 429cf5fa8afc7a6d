//! Parsing `/proc`: the one place that knows the text formats of `/proc/PID/stat`,
//! `/proc/PID/mountinfo`, `/proc/PID/fdinfo/N` and `/proc/PID/maps`, and how the paths under
//! `/proc/PID` are spelled.
//!
//! The parsers take text and never touch the filesystem, except the few `read_*` helpers,
//! which return [`Error`] (path, system call, source). This module depends on no stage of the
//! pipeline: only std, libc and [`crate::sys`].

use crate::sys;
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// A failed read or parse of a `/proc` file: the path, the operation (`read`, `parse`) and
/// the cause.
#[derive(Debug, thiserror::Error)]
#[error("{syscall} {}: {source}", path.display())]
pub struct Error {
    pub path: PathBuf,
    pub syscall: &'static str,
    #[source]
    pub source: io::Error,
}

impl Error {
    fn new(path: &Path, syscall: &'static str, source: io::Error) -> Error {
        Error { path: path.to_path_buf(), syscall, source }
    }
}

/// Whether an error from /proc or a pidfd means "the task has gone".
pub fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

// ---------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------

/// `/proc/PID`.
pub fn pid_dir(pid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// `/proc/PID/NAME`, e.g. `stat`, `status`, `mountinfo`, `task`.
pub fn pid_path(pid: i32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// `/proc/PID/task/TID/NAME`, e.g. `stat`, `children`.
pub fn thread_path(pid: i32, tid: i32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/task/{tid}/{name}"))
}

/// `/proc/PID/fd/N`: the magic link to an open file of a task.
pub fn fd_path(pid: i32, fd: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/fd/{fd}"))
}

/// `/proc/PID/map_files/RANGE` (`RANGE` as in maps: `start-end` in hex).
pub fn map_file_path(pid: i32, range: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/map_files/{range}"))
}

/// `/proc/PID/map_files/START-END` of a mapping.
pub fn mapping_path(pid: i32, start: u64, end: u64) -> PathBuf {
    map_file_path(pid, &format!("{start:x}-{end:x}"))
}

/// `path` (absolute, in the task's view) reached through `/proc/PID/root`, so that tasks in
/// other mount namespaces work.
pub fn in_root(pid: i32, path: &str) -> PathBuf {
    pid_path(pid, "root").join(path.trim_start_matches('/'))
}

/// `/proc/self/fd/N`.
pub fn self_fd_path(fd: i32) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{fd}"))
}

// ---------------------------------------------------------------------------------------
// /proc/PID/stat
// ---------------------------------------------------------------------------------------

/// The fields of `/proc/PID/stat` that snapckpt uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    /// The command name; it may contain spaces and parentheses.
    pub comm: String,
    /// The state letter: `R`, `S`, `D`, `T` (stopped), `t` (tracing stop), `Z`, `X`, `I`...
    pub state: char,
    pub ppid: i32,
    /// The session id (0 when the line is too short to say).
    pub session: i32,
}

impl ProcStat {
    /// Parse the contents of a `/proc/PID/stat` (or `/proc/PID/task/TID/stat`) file.
    ///
    /// The command name is between the first `(` and the *last* `)`: it may itself contain
    /// `)` and spaces. Returns `None` for anything malformed.
    pub fn parse(s: &str) -> Option<ProcStat> {
        let open = s.find('(')?;
        let close = s.rfind(')')?;
        if close < open {
            return None;
        }
        let pid = s[..open].trim().parse().ok()?;
        let comm = s[open + 1..close].to_string();
        let mut rest = s[close + 1..].split_ascii_whitespace();
        let state = rest.next()?.chars().next()?;
        let ppid = rest.next()?.parse().ok()?;
        let _pgrp = rest.next();
        let session = rest.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        Some(ProcStat { pid, comm, state, ppid, session })
    }

    /// Read and parse `path` (a stat file). `Ok(None)` if the task has gone.
    pub fn read(path: &Path) -> Result<Option<ProcStat>, Error> {
        match read_text(path) {
            Ok(s) => ProcStat::parse(&s).map(Some).ok_or_else(|| {
                Error::new(path, "parse", io::Error::new(io::ErrorKind::InvalidData, "malformed stat line"))
            }),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(Error::new(path, "read", e)),
        }
    }

    /// Whether the task will not run until it is continued (or has exited).
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't' | 'Z' | 'X' | 'x')
    }

    /// Whether the task has exited (a zombie, or dead).
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// Read a /proc text file whole, into a buffer big enough for a stat or status file at once:
/// `std::fs::read_to_string` sees a /proc file's size as 0 and reads it 32 bytes first, then
/// in growing steps (a status file took 11 reads), which a take pays per task while frozen.
pub fn read_text(path: impl AsRef<Path>) -> io::Result<String> {
    use std::io::Read;
    let mut s = String::with_capacity(4096);
    std::fs::File::open(path)?.read_to_string(&mut s)?;
    Ok(s)
}

/// The ids of an `NS…` line of a status file (`NSpid`, `NSsid`): one per pid namespace the
/// task is in, from the one this /proc belongs to down to its own.
pub fn ns_ids(status: &str, key: &str) -> Option<Vec<i32>> {
    status_field(status, key)?.split_ascii_whitespace().map(|p| p.parse().ok()).collect()
}

/// The `NSpid:` line of `/proc/PID/status` ([`ns_ids`]).
pub fn nspid(pid: i32) -> Option<Vec<i32>> {
    ns_ids(&read_text(pid_path(pid, "status")).ok()?, "NSpid")
}

/// A task's pid namespaces as CRIU sees them, from one read of its status file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TaskNs {
    /// Its session in its own pid namespace (`getsid` there): 0 when the session leader is
    /// outside that namespace.
    pub session: Option<i32>,
    /// Its pid in its own pid namespace when that is below the caller's (more `NSpid` levels
    /// than `depth`, the caller's): a container's task, or one of any tree that is the init
    /// of a pid namespace; None in the caller's namespace.
    pub own_pid: Option<i32>,
}

impl TaskNs {
    /// How many `NSpid` levels the caller has (1 in the namespace of this /proc).
    pub fn my_depth() -> usize {
        nspid(std::process::id() as i32).map_or(1, |v| v.len())
    }

    /// Read task `pid`'s; None when it is gone.
    pub fn read(pid: i32, depth: usize) -> Option<TaskNs> {
        let st = read_text(pid_path(pid, "status")).ok()?;
        let own_pid = ns_ids(&st, "NSpid").filter(|v| v.len() > depth).and_then(|v| v.last().copied());
        Some(TaskNs { session: ns_ids(&st, "NSsid").and_then(|v| v.last().copied()), own_pid })
    }
}

/// Whether `/proc/PID/stat` can be read and shows a task that has not exited.
pub fn is_alive(pid: i32) -> bool {
    read_text(pid_path(pid, "stat")).is_ok_and(|s| ProcStat::parse(&s).is_some_and(|st| !st.is_dead()))
}

/// The flags field (the ninth) of a `/proc/PID/stat` line.
pub fn stat_flags(stat: &str) -> Option<u64> {
    stat.rfind(')').and_then(|c| stat[c + 1..].split_ascii_whitespace().nth(6)).and_then(|f| f.parse().ok())
}

/// The value of a `Key:` line of `/proc/PID/status` (e.g. `Tgid`, `TracerPid`), trimmed.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(str::trim)
}

// ---------------------------------------------------------------------------------------
// /proc/PID/fdinfo/N
// ---------------------------------------------------------------------------------------

/// The fields of `/proc/PID/fdinfo/N` that snapckpt uses; 0 for a missing or bad field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FdInfo {
    pub pos: u64,
    /// The open flags (fdinfo gives them in octal).
    pub flags: u32,
    pub mnt_id: u32,
}

/// Parse `/proc/PID/fdinfo/N`: pos, flags (octal) and mnt_id.
pub fn parse_fdinfo(s: &str) -> FdInfo {
    let mut info = FdInfo::default();
    for l in s.lines() {
        let mut it = l.splitn(2, ':');
        let (k, v) = (it.next().unwrap_or(""), it.next().unwrap_or("").trim());
        match k {
            "pos" => info.pos = v.parse().unwrap_or(0),
            "flags" => info.flags = u32::from_str_radix(v, 8).unwrap_or(0),
            "mnt_id" => info.mnt_id = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    info
}

// ---------------------------------------------------------------------------------------
// /proc/PID/maps
// ---------------------------------------------------------------------------------------

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub pgoff: u64,
    pub path: String,
}

/// One line of /proc/PID/maps. The path is everything after the inode field (it may hold spaces).
pub fn parse_maps_line(l: &str) -> Option<MapsLine> {
    let mut rest = l;
    let mut fields = Vec::with_capacity(5);
    for _ in 0..5 {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    let (a, b) = fields[0].split_once('-')?;
    Some(MapsLine {
        start: u64::from_str_radix(a, 16).ok()?,
        end: u64::from_str_radix(b, 16).ok()?,
        perms: fields[1].to_string(),
        pgoff: u64::from_str_radix(fields[2], 16).ok()?,
        path: rest.trim_start().to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// /proc/PID/mountinfo
// ---------------------------------------------------------------------------------------

/// One line of `/proc/PID/mountinfo`, paths decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mnt_id: u32,
    pub parent_id: u32,
    /// The device number of the filesystem (field 3, major:minor), as in `st_dev`.
    pub dev: u64,
    /// Root of the mount within its filesystem (field 4).
    pub root: PathBuf,
    /// The mount point, relative to the reading task's root (field 5).
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    pub super_options: String,
    /// Optional field `shared:N`: the mount's peer group, when it is shared.
    pub shared: Option<u32>,
    /// Optional field `master:N`: the peer group it is a slave of (receives mounts and unmounts
    /// from).
    pub master: Option<u32>,
}

impl MountEntry {
    /// The value of a super option such as `subvolid`.
    pub fn super_option(&self, key: &str) -> Option<&str> {
        self.super_options.split(',').find_map(|o| o.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    }
}

/// Parse mountinfo text; malformed lines are skipped.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_mountinfo_line).collect()
}

/// One mountinfo line: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE
/// SOURCE SUPER_OPTIONS`.
fn parse_mountinfo_line(line: &[u8]) -> Option<MountEntry> {
    let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let sep = f.iter().position(|x| *x == b"-")?;
    if sep < 6 || f.len() < sep + 4 {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(&unescape(b)).into_owned();
    let path = |b: &[u8]| PathBuf::from(OsString::from_vec(unescape(b)));
    let num = |b: &[u8]| std::str::from_utf8(b).ok()?.parse::<u32>().ok();
    let (maj, min) = std::str::from_utf8(f[2]).ok()?.split_once(':')?;
    let tag = |name: &[u8]| f[6..sep].iter().find_map(|o| o.strip_prefix(name).and_then(&num));
    Some(MountEntry {
        mnt_id: num(f[0])?,
        parent_id: num(f[1])?,
        dev: sys::makedev(maj.parse().ok()?, min.parse().ok()?),
        root: path(f[3]),
        mount_point: path(f[4]),
        fstype: text(f[sep + 1]),
        source: text(f[sep + 2]),
        super_options: text(f[sep + 3]),
        shared: tag(b"shared:"),
        master: tag(b"master:"),
    })
}

/// Read and parse `/proc/PID/mountinfo` (`pid` may be `self`).
pub fn read_mountinfo(pid: &str) -> Result<Vec<MountEntry>, Error> {
    let p = PathBuf::from(format!("/proc/{pid}/mountinfo"));
    let text = std::fs::read(&p).map_err(|e| Error::new(&p, "read", e))?;
    Ok(parse_mountinfo(&text))
}

/// Decode the kernel's `\ooo` octal escapes (it escapes space, tab, newline and backslash
/// this way). Only a backslash and three octal digits of a byte value (`\000` to `\377`) is an
/// escape; anything else, such as `\777` or a backslash near the end, is kept as it is.
pub fn unescape(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 4 <= b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        if octal {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process is in the caller's pid namespace: no pid of its own below it; its NSpid
    /// ends with its getpid(), its NSsid with getsid(0) (CRIU's check, in the task); a pid
    /// that does not exist has none.
    #[test]
    fn task_ns_of_the_callers_namespace() {
        let me = std::process::id() as i32;
        assert_eq!(nspid(me).and_then(|v| v.last().copied()), Some(me));
        let sid = unsafe { libc::getsid(0) };
        assert_eq!(TaskNs::read(me, TaskNs::my_depth()), Some(TaskNs { session: Some(sid), own_pid: None }));
        assert_eq!(TaskNs::read(i32::MAX, 1), None);
        assert_eq!(ns_ids("Name:\tx\nNSpid:\t40\t7\t1\n", "NSpid"), Some(vec![40, 7, 1]));
    }

    #[test]
    fn parse_stat_plain() {
        let st = ProcStat::parse("1234 (bash) S 1 1234 1234 34816 0 4194560 0 0").unwrap();
        assert_eq!(st, ProcStat { pid: 1234, comm: "bash".into(), state: 'S', ppid: 1, session: 1234 });
    }

    #[test]
    fn parse_stat_comm_with_spaces_and_parens() {
        let st = ProcStat::parse("77 (a) b) (c ) T 5 77 77 0 -1").unwrap();
        assert_eq!(st.pid, 77);
        assert_eq!(st.comm, "a) b) (c ");
        assert_eq!(st.state, 'T');
        assert_eq!(st.ppid, 5);
        let st = ProcStat::parse("8 ()) R 0 0").unwrap();
        assert_eq!(st.comm, ")");
        assert_eq!(st.state, 'R');
        let st = ProcStat::parse("123 (a) b (deleted)) S 77 123 123 0").unwrap();
        assert_eq!(st.comm, "a) b (deleted)");
        assert_eq!(st.ppid, 77);
    }

    #[test]
    fn parse_stat_garbage_is_none() {
        for s in [
            "",
            "12",
            "12 (x",
            "x (y) S 1",
            "12 (y)",
            "12 (y) S",
            "12 (y) S notapid",
            ") 12 (",
            "12 )x( S 1",
            "garbage",
        ] {
            assert_eq!(ProcStat::parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn parse_own_stat() {
        let st = ProcStat::read(Path::new("/proc/thread-self/stat")).unwrap().unwrap();
        // SAFETY: gettid has no preconditions.
        assert_eq!(st.pid, unsafe { libc::gettid() });
        assert_eq!(st.state, 'R');
        assert!(ProcStat::read(Path::new("/proc/0/stat")).unwrap().is_none());
        assert!(is_alive(std::process::id() as i32));
        assert!(!is_alive(0));
    }

    #[test]
    fn stat_flags_and_status_fields() {
        let kt = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0";
        assert_eq!(stat_flags(kt), Some(2129984));
        assert_eq!(stat_flags("7 (a) b) S 1 7 7 0 -1 4194560 0 0"), Some(4194560));
        assert_eq!(stat_flags("7 (a) S 1"), None);
        let status = "Name:\tx\nTgid:\t42\nPid:\t43\nTracerPid:\t0\n";
        assert_eq!(status_field(status, "Tgid"), Some("42"));
        assert_eq!(status_field(status, "TracerPid"), Some("0"));
        assert_eq!(status_field(status, "Tracer"), None);
    }

    #[test]
    fn fdinfo() {
        let i = parse_fdinfo("pos:\t4096\nflags:\t0102002\nmnt_id:\t31\nino:\t12\n");
        assert_eq!((i.pos, i.flags, i.mnt_id), (4096, 0o102002, 31));
    }

    #[test]
    fn maps_with_spaces() {
        let m = parse_maps_line(
            "7f0000000000-7f0000001000 rw-s 00002000 00:2a 1234                       /tmp/a b (deleted)",
        )
        .unwrap();
        assert_eq!((m.start, m.end, m.pgoff), (0x7f0000000000, 0x7f0000001000, 0x2000));
        assert_eq!(m.path, "/tmp/a b (deleted)");
        let m = parse_maps_line("7ffd1000-7ffd2000 r-xp 00000000 00:00 0                          [vdso]")
            .unwrap();
        assert_eq!(m.path, "[vdso]");
        let m = parse_maps_line("7ffd1000-7ffd2000 r-xp 00000000 00:00 0 ").unwrap();
        assert_eq!(m.path, "");
    }

    #[test]
    fn mountinfo() {
        let t =
            b"36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                  40 36 0:50 / /x rw - btrfs /dev/loop0 rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[0].mount_point, Path::new("/mnt/with space"));
        assert_eq!(m[0].root, Path::new("/mnt1"));
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[0].dev, sys::makedev(98, 0));
        assert_eq!(m[1].dev, sys::makedev(0, 50));
        assert_eq!(m[1].parent_id, 36);
        assert_eq!((m[0].shared, m[0].master), (None, Some(1)));
        assert_eq!((m[1].shared, m[1].master), (None, None));
        let m = parse_mountinfo(b"41 36 0:50 / /y rw shared:7 master:3 - btrfs /dev/loop0 rw\n");
        assert_eq!((m[0].shared, m[0].master), (Some(7), Some(3)));
    }

    #[test]
    fn mountinfo_lines() {
        let t = b"44 27 0:39 /@data /tmp/a\\040b rw,relatime shared:5 - btrfs /dev/loop0 rw,subvolid=256,subvol=/@data\n\
                  garbage line\n\
                  45 44 0:39 /x\\134y /tmp/c rw - btrfs /dev/loop0 rw,subvolid=258,subvol=/x\n\
                  46 45 0:40 / /tmp/c rw - tmpfs none rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, Path::new("/tmp/a b"));
        assert_eq!(m[0].root, Path::new("/@data"));
        assert_eq!(m[0].fstype, "btrfs");
        assert_eq!(m[0].source, "/dev/loop0");
        assert_eq!(m[0].super_option("subvolid"), Some("256"));
        assert_eq!(m[0].super_option("subvol"), Some("/@data"));
        assert_eq!(m[1].root, Path::new("/x\\y"));
    }

    #[test]
    fn own_mountinfo() {
        let m = read_mountinfo("self").unwrap();
        assert!(m.iter().any(|e| e.mount_point == Path::new("/")));
        assert!(read_mountinfo("0").is_err());
    }

    #[test]
    fn unescape_octal() {
        assert_eq!(unescape(b"a\\040b"), b"a b");
        assert_eq!(unescape(b"\\011\\012\\134"), b"\t\n\\");
        // Not a byte value: kept as it is (no overflow).
        assert_eq!(unescape(b"x\\777y"), b"x\\777y");
        assert_eq!(unescape(b"\\400"), b"\\400");
        // An escape at the very end is decoded; a cut-off one is kept.
        assert_eq!(unescape(b"/mnt/a\\040"), b"/mnt/a ");
        assert_eq!(unescape(b"a\\04"), b"a\\04");
        assert_eq!(unescape(b"\\"), b"\\");
        assert_eq!(unescape(b"\\08x"), b"\\08x");
    }

    #[test]
    fn paths() {
        assert_eq!(fd_path(5, "3"), Path::new("/proc/5/fd/3"));
        assert_eq!(mapping_path(5, 0x10, 0x20), Path::new("/proc/5/map_files/10-20"));
        assert_eq!(in_root(5, "/mnt/x"), Path::new("/proc/5/root/mnt/x"));
        assert_eq!(in_root(5, "/"), Path::new("/proc/5/root"));
        assert_eq!(thread_path(5, 6, "stat"), Path::new("/proc/5/task/6/stat"));
        assert_eq!(self_fd_path(7), Path::new("/proc/self/fd/7"));
    }
}
