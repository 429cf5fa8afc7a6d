//! Write-back before the freeze: flush the dirty page cache that the frozen stages would
//! otherwise flush while the tasks wait.
//!
//! On btrfs a reflink (`FICLONE`) of a range still dirty in the page cache writes it back
//! first, and a snapshot flushes the subvolume's delalloc and commits: inside the freeze both
//! cost time proportional to the dirty data (a task that has just written 1 GiB was frozen
//! 0.9-5 s). [`write_back`] runs *before* the freeze, while the tasks still run: it flushes
//! the unlinked files that will be cloned or copied (`sync_file_range` to start the I/O on
//! all of them, then `fdatasync` each) and the filesystems that will be snapshotted
//! (`syncfs`), in rounds, like CRIU's pre-dump iterations: a round is repeated while the
//! previous one still shrank the dirty amount a lot ([`Policy`]), so the freeze only flushes
//! what the tasks wrote during the last round.
//!
//! The dirty amount is read with `cachestat(2)` (Linux 6.5+: pages dirty and under writeback)
//! of every file given: the objects to clone or copy, and the files the tasks hold open on
//! the filesystems to snapshot (a filesystem has no dirty counter of its own outside debugfs;
//! `syncfs` also flushes the files the tasks have closed, which nothing measures). A file on
//! a filesystem that is `syncfs`ed is only measured, not flushed again. Without `cachestat`
//! (or with no file to measure) the amount is the system's `Dirty` + `Writeback` from
//! `/proc/meminfo`, where other writers on the machine count too; what a round wrote back
//! is then the decrease it saw.
//!
//! Write-back is an optimization: it changes nothing the checkpoint records, and the caller
//! may go on after a [`WriteBackError`] (the frozen stages flush whatever is left anyway).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `cachestat(2)`'s number (the same on every architecture: it came after the tables were
/// unified).
const SYS_CACHESTAT: libc::c_long = 451;

/// When to stop flushing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// At most this many rounds; 0 turns write-back off.
    pub max_rounds: u32,
    /// Another round only if the dirty amount found before it is at most this fraction of the
    /// amount found before the previous round (it "shrank a lot"); otherwise the tasks write
    /// about as fast as it is flushed and another round would not help.
    pub shrink: f64,
    /// Another round only if more than this many bytes are dirty: the freeze can flush that.
    pub small_bytes: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { max_rounds: 4, shrink: 0.5, small_bytes: 4 << 20 }
    }
}

impl Policy {
    /// No write-back at all.
    pub fn off() -> Policy {
        Policy { max_rounds: 0, ..Policy::default() }
    }

    /// Whether write-back is on.
    pub fn enabled(&self) -> bool {
        self.max_rounds > 0
    }

    /// After `rounds` rounds, the last of which started with `prev` dirty bytes, `now` are
    /// dirty again: is another round worth it?
    pub fn another_round(&self, rounds: u32, prev: u64, now: u64) -> bool {
        rounds < self.max_rounds && now > self.small_bytes && (now as f64) <= (prev as f64) * self.shrink
    }
}

pub use crate::record::Measure;

/// What a write-back did.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteBack {
    pub rounds: u32,
    /// What was written back: the dirty bytes found before each round, summed (with
    /// [`Measure::Meminfo`]: the decrease each round saw).
    pub bytes: u64,
    /// Dirty bytes left after the last round (what the freeze may still have to flush).
    pub remaining: u64,
    pub time: Duration,
    pub measure: Measure,
    /// The dirty bytes found before each round, then after the last one.
    pub trace: Vec<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteBackError {
    #[error("write-back: {syscall} {path}: {source}")]
    Io { path: PathBuf, syscall: &'static str, source: io::Error },
}

fn io_err<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(io::Error) -> WriteBackError + 'a {
    move |source| WriteBackError::Io { path: path.to_path_buf(), syscall, source }
}

/// The kernel's `struct cachestat_range`.
#[repr(C)]
struct CachestatRange {
    off: u64,
    len: u64,
}

/// The kernel's `struct cachestat`.
#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Bytes of `fd`'s page cache that are dirty or under writeback (`cachestat(2)`).
pub fn file_dirty(fd: &OwnedFd) -> io::Result<u64> {
    let range = CachestatRange { off: 0, len: 0 }; // len 0: to the end of the file
    let mut cs = Cachestat::default();
    // SAFETY: both pointers are to live, properly sized structs.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd.as_raw_fd(),
            &range as *const CachestatRange,
            &mut cs as *mut Cachestat,
            0u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((cs.nr_dirty + cs.nr_writeback) * page_size())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// `Dirty` + `Writeback` of a `/proc/meminfo` text, in bytes.
pub fn parse_meminfo_dirty(text: &str) -> Option<u64> {
    let field = |key: &str| {
        text.lines().find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?.trim();
            v.strip_suffix("kB").unwrap_or(v).trim().parse::<u64>().ok()
        })
    };
    Some((field("Dirty")? + field("Writeback")?) * 1024)
}

/// The system's dirty + writeback bytes.
pub fn system_dirty() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo_dirty(&text).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no Dirty/Writeback"))
}

/// Flush `files` (paths that open the objects, e.g. `/proc/PID/fd/N`; opened read-only) and
/// `filesystems` (mount points, `syncfs`) in rounds, as `policy` says, while the tasks run.
pub fn write_back(
    files: &[PathBuf],
    filesystems: &[PathBuf],
    policy: &Policy,
) -> Result<WriteBack, WriteBackError> {
    let t = Instant::now();
    let mut wb = WriteBack {
        rounds: 0,
        bytes: 0,
        remaining: 0,
        time: Duration::ZERO,
        measure: Measure::Cachestat,
        trace: vec![],
    };
    if !policy.enabled() || (files.is_empty() && filesystems.is_empty()) {
        return Ok(wb);
    }
    let mut mounts: Vec<(OwnedFd, &PathBuf)> = vec![];
    let mut synced_devs = std::collections::HashSet::new();
    for m in filesystems {
        let fd = crate::sys::open(m, libc::O_RDONLY | libc::O_DIRECTORY, 0).map_err(io_err(m, "open"))?;
        synced_devs.insert(crate::sys::fstat(fd.as_raw_fd()).map_err(io_err(m, "fstat"))?.st_dev);
        mounts.push((fd, m));
    }
    // One descriptor per inode: several holders of one file are flushed once; files on a
    // filesystem that is synced are measured only.
    let mut fds: Vec<Held> = vec![];
    let mut seen = std::collections::HashSet::new();
    for p in files {
        let fd = match crate::sys::open(p, libc::O_RDONLY | libc::O_NOATIME, 0)
            .or_else(|_| crate::sys::open(p, libc::O_RDONLY, 0))
        {
            Ok(fd) => fd,
            // The task closed the file or exited since it was scanned: nothing to flush.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH)) => continue,
            Err(e) => return Err(io_err(p, "open")(e)),
        };
        let st = crate::sys::fstat(fd.as_raw_fd()).map_err(io_err(p, "fstat"))?;
        if seen.insert((st.st_dev, st.st_ino)) {
            fds.push(Held { fd, path: p, flush: !synced_devs.contains(&st.st_dev) });
        }
    }
    let cachestat_works = fds.first().is_some_and(|h| file_dirty(&h.fd).is_ok());
    wb.measure = if cachestat_works { Measure::Cachestat } else { Measure::Meminfo };
    let measure = || -> Result<u64, WriteBackError> {
        match wb.measure {
            Measure::Cachestat => {
                let mut sum = 0;
                for h in &fds {
                    sum += file_dirty(&h.fd).map_err(io_err(h.path, "cachestat"))?;
                }
                Ok(sum)
            }
            Measure::Meminfo => system_dirty().map_err(io_err(Path::new("/proc/meminfo"), "read")),
        }
    };
    let mut before = measure()?;
    let mut prev = u64::MAX;
    while wb.rounds == 0 || policy.another_round(wb.rounds, prev, before) {
        wb.trace.push(before);
        round(&fds, &mounts)?;
        wb.rounds += 1;
        let after = measure()?;
        wb.bytes += match wb.measure {
            Measure::Cachestat => before,
            Measure::Meminfo => before.saturating_sub(after),
        };
        prev = before;
        before = after;
    }
    wb.trace.push(before);
    wb.remaining = before;
    wb.time = t.elapsed();
    Ok(wb)
}

/// A file to measure, and to flush unless its filesystem is synced.
struct Held<'a> {
    fd: OwnedFd,
    path: &'a PathBuf,
    flush: bool,
}

/// One round: start the I/O on every file to flush, `syncfs` every filesystem, then wait for
/// each file (`fdatasync`).
fn round(fds: &[Held], mounts: &[(OwnedFd, &PathBuf)]) -> Result<(), WriteBackError> {
    for Held { fd, path: p, .. } in fds.iter().filter(|h| h.flush) {
        // SAFETY: plain syscall on our descriptor.
        if unsafe { libc::sync_file_range(fd.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) } < 0 {
            let e = io::Error::last_os_error();
            // Not every filesystem has it (e.g. some FUSE); fdatasync below does the work.
            if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ESPIPE) | Some(libc::ENOSYS)) {
                return Err(io_err(p, "sync_file_range")(e));
            }
        }
    }
    for (fd, m) in mounts {
        // SAFETY: plain syscall on our descriptor.
        if unsafe { libc::syncfs(fd.as_raw_fd()) } < 0 {
            return Err(io_err(m, "syncfs")(io::Error::last_os_error()));
        }
    }
    for Held { fd, path: p, .. } in fds.iter().filter(|h| h.flush) {
        // SAFETY: plain syscall on our descriptor.
        if unsafe { libc::fdatasync(fd.as_raw_fd()) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(io_err(p, "fdatasync")(e));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn meminfo() {
        let t = "MemTotal:       24000000 kB\nDirty:             1024 kB\nWriteback:           4 kB\n";
        assert_eq!(parse_meminfo_dirty(t), Some(1028 * 1024));
        assert_eq!(parse_meminfo_dirty("Dirty: 1 kB\n"), None);
        assert!(system_dirty().is_ok());
    }

    #[test]
    fn stopping_rule() {
        let p = Policy::default();
        // shrank by more than half and still large: again
        assert!(p.another_round(1, 1 << 30, 100 << 20));
        // did not shrink enough: the tasks write as fast as we flush
        assert!(!p.another_round(1, 100 << 20, 80 << 20));
        // small enough for the freeze
        assert!(!p.another_round(1, 1 << 30, 1 << 20));
        // bounded
        assert!(!p.another_round(p.max_rounds, 1 << 30, 10 << 20));
        assert!(!Policy::off().enabled());
    }

    #[test]
    fn off_or_nothing_to_do() {
        let wb = write_back(&[], &[], &Policy::default()).unwrap();
        assert_eq!((wb.rounds, wb.bytes), (0, 0));
        let wb = write_back(&["/nonexistent".into()], &[], &Policy::off()).unwrap();
        assert_eq!(wb.rounds, 0);
        // a file that has gone since the scan is skipped; nothing else to measure: meminfo
        let wb = write_back(&["/proc/self/fd/999999".into()], &[], &Policy::default()).unwrap();
        assert_eq!((wb.rounds, wb.measure), (1, Measure::Meminfo));
    }

    #[test]
    fn flushes_a_dirty_file() {
        let dir = std::env::var_os("CARGO_TARGET_TMPDIR").map(PathBuf::from).unwrap_or_else(|| {
            let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target");
            let _ = std::fs::create_dir_all(&d);
            d
        });
        let path = dir.join(format!("writeback-test-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 8 << 20]).unwrap();
        let fd: OwnedFd = f.into();
        let Ok(dirty) = file_dirty(&fd) else {
            let _ = std::fs::remove_file(&path);
            return; // no cachestat on this kernel
        };
        // tmpfs pages are never "dirty" for writeback; a disk filesystem's are until flushed
        let wb = write_back(std::slice::from_ref(&path), &[], &Policy::default()).unwrap();
        assert_eq!(wb.measure, Measure::Cachestat);
        assert!(wb.rounds >= 1);
        assert_eq!(wb.remaining, 0, "{wb:?}");
        assert_eq!(file_dirty(&fd).unwrap(), 0);
        if dirty > 0 {
            assert!(wb.bytes > 0, "{wb:?}");
        }
        // Synced with its filesystem: measured by cachestat, flushed by syncfs.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all(&vec![8u8; 4 << 20]).unwrap();
        let wb =
            write_back(std::slice::from_ref(&path), std::slice::from_ref(&dir), &Policy::default()).unwrap();
        assert_eq!(wb.measure, Measure::Cachestat);
        assert_eq!(file_dirty(&fd).unwrap(), 0);
        // Only a filesystem: the system's dirty amount.
        let wb = write_back(&[], std::slice::from_ref(&dir), &Policy::default()).unwrap();
        assert_eq!((wb.measure, wb.rounds), (Measure::Meminfo, 1));
        std::fs::remove_file(&path).unwrap();
    }
}
