//! Thin, safe wrappers over the few Linux system calls snapckpt needs that `nix` does not
//! cover (openat2, statx mount ids, FICLONE, linkat through /proc), and small helpers shared by
//! the pipeline stages. Every function returns `std::io::Error` so that the calling stage can
//! wrap it in its own error type together with the path and the syscall name.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `RESOLVE_*` flags of openat2(2).
pub const RESOLVE_NO_XDEV: u64 = 0x01;
pub const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
pub const RESOLVE_NO_SYMLINKS: u64 = 0x04;
pub const RESOLVE_BENEATH: u64 = 0x08;
pub const RESOLVE_IN_ROOT: u64 = 0x10;

/// The strict resolution used for everything under `lost+found/checkpoint`: no symlinks at
/// all, no magic links, never above the starting directory, never onto another mount.
pub const RESOLVE_STRICT: u64 =
    RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH | RESOLVE_NO_XDEV;

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

pub fn cstr(p: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(p.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// openat2(2). `dirfd` may be `libc::AT_FDCWD`.
pub fn openat2(
    dirfd: RawFd,
    path: impl AsRef<OsStr>,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: mode as u64, resolve };
    loop {
        // SAFETY: valid C string and a correctly sized open_how structure.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dirfd,
                p.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            // SAFETY: the kernel returned a new descriptor that we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) && e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Plain open(2) with O_CLOEXEC (used for /proc files, where magic links are the point).
pub fn open(path: impl AsRef<OsStr>, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let p = cstr(path)?;
    // SAFETY: valid C string.
    let r = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC, mode as libc::c_uint) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: new descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

pub fn fstat(fd: RawFd) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out pointer.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// stat(2) following links (used on /proc magic links).
pub fn stat(path: impl AsRef<OsStr>) -> io::Result<libc::stat> {
    let p = cstr(path)?;
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers.
    if unsafe { libc::stat(p.as_ptr(), &mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// The mount id (as in /proc/PID/mountinfo and fdinfo's `mnt_id`) of an open file.
pub fn mnt_id_of(fd: RawFd) -> io::Result<u32> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = b"\0";
    // SAFETY: valid pointers; AT_EMPTY_PATH on an fd.
    let r = unsafe {
        libc::statx(
            fd,
            empty.as_ptr() as *const libc::c_char,
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "statx gave no mount id"));
    }
    Ok(stx.stx_mnt_id as u32)
}

/// The context every module's I/O error carries: which system call failed on which path.
/// Each module's error enum has an `Io` variant holding one; the message is
/// `<syscall> <path>: <error>`.
#[derive(Debug, thiserror::Error)]
#[error("{syscall} {}: {source}", path.display())]
pub struct SysError {
    pub path: PathBuf,
    pub syscall: &'static str,
    #[source]
    pub source: io::Error,
}

/// A byte count from a read-like system call (`read`, `recv`), retried while it is
/// interrupted by a signal: `n >= 0` as bytes, else the error.
pub fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let n = call();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl SysError {
    /// A `map_err` adapter: `.map_err(SysError::at(path, "open"))`.
    pub fn at<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(io::Error) -> SysError + 'a {
        move |source| SysError { path: path.to_path_buf(), syscall, source }
    }

    /// Whether the error is "no such file or directory".
    pub fn is_enoent(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ENOENT)
    }
}

/// Why [`read_regular`] gave no bytes.
#[derive(Debug)]
pub enum ReadRegularError {
    /// fstat or read failed.
    Io { syscall: &'static str, source: io::Error },
    /// Not a regular file: what it is ("a directory", "a FIFO", ...).
    NotRegular(&'static str),
    /// Larger than the limit.
    TooBig,
}

/// The bytes of the open file `f`, which must be a regular file of at most `max` bytes.
/// Anything else (a device, FIFO, socket, directory) is refused without reading it, and no
/// more than `max + 1` bytes are ever read (its size may grow while it is read).
pub fn read_regular(f: std::fs::File, max: u64) -> Result<Vec<u8>, ReadRegularError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let meta = f.metadata().map_err(|source| ReadRegularError::Io { syscall: "fstat", source })?;
    let ft = meta.file_type();
    if !ft.is_file() {
        return Err(ReadRegularError::NotRegular(if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a plain file"
        }));
    }
    if meta.len() > max {
        return Err(ReadRegularError::TooBig);
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|source| ReadRegularError::Io { syscall: "read", source })?;
    if data.len() as u64 > max {
        return Err(ReadRegularError::TooBig);
    }
    Ok(data)
}

/// Whether the open directory `fd` is the root of a mount (statx `STATX_ATTR_MOUNT_ROOT`).
pub fn is_mount_root(fd: RawFd) -> io::Result<bool> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let empty = b"\0";
    // SAFETY: valid pointers; AT_EMPTY_PATH on an fd.
    let r = unsafe {
        libc::statx(
            fd,
            empty.as_ptr() as *const libc::c_char,
            libc::AT_EMPTY_PATH,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if stx.stx_attributes_mask & libc::STATX_ATTR_MOUNT_ROOT as u64 == 0 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "statx gave no mount-root attribute"));
    }
    Ok(stx.stx_attributes & libc::STATX_ATTR_MOUNT_ROOT as u64 != 0)
}

/// Make sure that only root can change where `path` leads: walk it from `/` without following
/// symlinks (openat2 `RESOLVE_NO_SYMLINKS`), each directory on the way owned by root and not
/// writable by group or others (a root-owned sticky directory such as /tmp is accepted: others
/// cannot rename what root made there). With `create`, missing directories are made (0755,
/// root) one at a time. Used before root mounts something at `path`. The error says which
/// component is not trusted and why.
pub fn trusted_dirs(path: &Path, create: bool) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{}: not an absolute path", path.display()));
    }
    let mut fd = open("/", libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|e| format!("open /: {e}"))?;
    let mut cur = PathBuf::from("/");
    for comp in path.components().skip(1) {
        let name = comp.as_os_str();
        if name.as_bytes() == b".." || name.as_bytes() == b"." {
            return Err(format!("{}: has a '.' or '..' component", path.display()));
        }
        cur.push(name);
        let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
        let next = match openat2(
            fd.as_raw_fd(),
            name,
            flags,
            0,
            RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH,
        ) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) && create => {
                match mkdirat(fd.as_raw_fd(), name, 0o755) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    Err(e) => return Err(format!("mkdir {}: {e}", cur.display())),
                }
                openat2(
                    fd.as_raw_fd(),
                    name,
                    flags,
                    0,
                    RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_BENEATH,
                )
                .map_err(|e| format!("open {}: {e}", cur.display()))?
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                return Err(format!("{} is a symlink or not a directory: give the real path", cur.display()));
            }
            Err(e) => return Err(format!("open {}: {e}", cur.display())),
        };
        let st = fstat(next.as_raw_fd()).map_err(|e| format!("fstat {}: {e}", cur.display()))?;
        let sticky = st.st_mode & libc::S_ISVTX != 0;
        if st.st_uid != 0 || (st.st_mode & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{} is owned by uid {} with mode {:o}: someone other than root could change where the path leads; use a directory that only root can write to",
                cur.display(),
                st.st_uid,
                st.st_mode & 0o7777
            ));
        }
        fd = next;
    }
    Ok(())
}

/// linkat(2) with AT_SYMLINK_FOLLOW from a path (typically a /proc magic link) to `name`
/// inside the directory `dirfd`. Needs no capability for /proc/PID/fd/N.
pub fn link_follow(src: impl AsRef<OsStr>, dirfd: RawFd, name: &OsStr) -> io::Result<()> {
    let s = cstr(src)?;
    let n = cstr(name)?;
    // SAFETY: valid C strings.
    let r = unsafe { libc::linkat(libc::AT_FDCWD, s.as_ptr(), dirfd, n.as_ptr(), libc::AT_SYMLINK_FOLLOW) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// unlinkat(2); `dir` removes a directory.
pub fn unlinkat(dirfd: RawFd, name: &OsStr, dir: bool) -> io::Result<()> {
    let n = cstr(name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid C string.
    if unsafe { libc::unlinkat(dirfd, n.as_ptr(), flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// mkdirat(2).
pub fn mkdirat(dirfd: RawFd, name: &OsStr, mode: u32) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid C string.
    if unsafe { libc::mkdirat(dirfd, n.as_ptr(), mode as libc::mode_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// mknodat(2).
pub fn mknodat(dirfd: RawFd, name: &OsStr, mode: u32, dev: u64) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid C string.
    if unsafe { libc::mknodat(dirfd, n.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `st`'s access and modification times, as utimensat/futimens take them.
pub fn atime_mtime(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec },
        libc::timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec },
    ]
}

/// fchownat / fchmodat / utimensat on a name in `dirfd`, never following a symlink.
pub fn set_owner_mode_times(dirfd: RawFd, name: &OsStr, st: &libc::stat) -> io::Result<()> {
    let n = cstr(name)?;
    // SAFETY: valid C strings and timespec array.
    unsafe {
        if libc::fchownat(dirfd, n.as_ptr(), st.st_uid, st.st_gid, libc::AT_SYMLINK_NOFOLLOW) < 0 {
            return Err(io::Error::last_os_error());
        }
        // A symlink has no mode of its own (and chmod would follow it).
        let is_link = st.st_mode & libc::S_IFMT == libc::S_IFLNK;
        if !is_link && libc::fchmodat(dirfd, n.as_ptr(), st.st_mode & 0o7777, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        let ts = atime_mtime(st);
        if libc::utimensat(dirfd, n.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The target of the symlink an O_PATH fd refers to (readlinkat with an empty path).
pub fn readlink_fd(fd: &OwnedFd) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: the buffer is valid for its length; an empty path names the fd itself.
    let n = unsafe { libc::readlinkat(fd.as_raw_fd(), c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

/// symlinkat(2): make `name` in `dirfd` a symlink to `target`.
pub fn symlinkat(target: &[u8], dirfd: RawFd, name: &OsStr) -> io::Result<()> {
    let (t, n) = (CString::new(target.to_vec())?, cstr(name)?);
    // SAFETY: valid C strings.
    if unsafe { libc::symlinkat(t.as_ptr(), dirfd, n.as_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// readlink(2) returning raw bytes (link targets may hold any byte but NUL).
pub fn readlink(path: impl AsRef<Path>) -> io::Result<Vec<u8>> {
    Ok(std::fs::read_link(path)?.into_os_string().into_vec_bytes())
}

trait IntoVecBytes {
    fn into_vec_bytes(self) -> Vec<u8>;
}
impl IntoVecBytes for std::ffi::OsString {
    fn into_vec_bytes(self) -> Vec<u8> {
        use std::os::unix::ffi::OsStringExt;
        self.into_vec()
    }
}

/// fsync a directory by path, for atomic publication (rename + fsync of the parent).
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    let f = std::fs::File::open(dir)?;
    f.sync_all()
}

/// Clear FD_CLOEXEC so that a child (CRIU, an --exec command) inherits `fd`.
pub fn clear_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we hold.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A C string view of a byte path, for messages.
pub fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The basename of a NUL-free byte string as an `OsStr`.
pub fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

/// Major/minor helpers matching the kernel's `dev_t` encoding used in mountinfo.
pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor) as u64
}

#[allow(dead_code)]
pub(crate) fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// CStr to String, lossy.
pub fn cstr_lossy(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

/// Seconds since the epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The time now: unix seconds and the nanoseconds within that second.
pub fn now_unix_ns() -> (u64, u32) {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs(), d.subsec_nanos()))
        .unwrap_or((0, 0))
}

/// Format a unix time as `YYYYmmddTHHMMSSZ` (UTC) without a date library.
pub fn utc_compact(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // civil-from-days (Howard Hinnant's algorithm)
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z")
}

/// A few random bytes from the kernel, as lowercase hex.
pub fn random_hex(nbytes: usize) -> String {
    let mut buf = vec![0u8; nbytes];
    // SAFETY: buffer of the given length.
    let r = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, nbytes, 0) };
    if r as usize != nbytes {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut x = t.as_nanos() as u64 ^ (std::process::id() as u64) << 32;
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolve a command like execvp would: a name with a '/' as is, else the first executable
/// regular file of that name in a `PATH` directory.
pub fn which(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if prog.contains('/') {
        return ok(Path::new(prog)).then(|| PathBuf::from(prog));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(prog)).find(|p| ok(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn utc_compact_known_dates() {
        assert_eq!(utc_compact(0), "19700101T000000Z");
        assert_eq!(utc_compact(951782400), "20000229T000000Z");
        assert_eq!(utc_compact(1795734000), "20261126T230000Z");
    }
    #[test]
    fn openat2_refuses_symlink() {
        let d = std::env::temp_dir().join(format!("snapckpt-sys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("l")).unwrap();
        let dfd = open(&d, libc::O_DIRECTORY | libc::O_RDONLY, 0).unwrap();
        let e =
            openat2(dfd.as_raw_fd(), "l", libc::O_DIRECTORY | libc::O_RDONLY, 0, RESOLVE_STRICT).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let e = openat2(dfd.as_raw_fd(), "../", libc::O_DIRECTORY | libc::O_RDONLY, 0, RESOLVE_STRICT)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EXDEV));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
