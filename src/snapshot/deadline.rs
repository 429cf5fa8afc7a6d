//! A snapshot with a deadline. A snapshot can hang in the kernel (a frozen filesystem, a
//! stalled device: the mkdir and the snapshot ioctl wait uninterruptibly) and no signal ends
//! it, so it is taken in a child process that the caller stops waiting for: the tasks need not
//! stay frozen. The child keeps the fds it is told to keep (the take's image lock, so that
//! `gc` leaves the take's traces alone while the snapshot may still appear) and closes every
//! other (the thaw watchdog's pipe among them).

use super::{FsSpec, SnapshotError};
use crate::record::Snapshot;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// What the child sends back: the snapshot, or the error's message.
type Reply = Result<Snapshot, String>;

/// [`super::take`] in a child process; [`SnapshotError::Timeout`] if it has not answered
/// within `timeout` (the child is left to finish when the kernel lets it go).
pub fn take_within(
    spec: &FsSpec,
    id: &str,
    now_unix: u64,
    timeout: Duration,
    keep: &[RawFd],
) -> Result<Snapshot, SnapshotError> {
    let (r, w) = nix::unistd::pipe().map_err(|e| sys_err("pipe", e.into()))?;
    // SAFETY: the child runs only the snapshot (system calls and allocations, which glibc
    // makes safe after fork) and then `_exit`s.
    match unsafe { nix::unistd::fork() }.map_err(|e| sys_err("fork", e.into()))? {
        nix::unistd::ForkResult::Child => {
            drop(r);
            child(spec, id, now_unix, w, keep)
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(w);
            let reply = wait_reply(r, timeout);
            if reply.is_none() {
                // Not killed: a kill would take effect only when the kernel lets it go, after
                // the mkdir, perhaps before the snapshot. Left alone, it completes the snapshot
                // under the take's lock, which `gc` then finds whole.
                return Err(SnapshotError::Timeout { mount_point: spec.mount_point.clone(), timeout });
            }
            let _ = nix::sys::wait::waitpid(child, None);
            decode(reply.unwrap_or_default())
        }
    }
}

fn sys_err(syscall: &'static str, source: std::io::Error) -> SnapshotError {
    SnapshotError::Io(crate::sys::SysError { path: "snapshot child".into(), syscall, source })
}

/// The child: take the snapshot, write the reply, exit.
fn child(spec: &FsSpec, id: &str, now_unix: u64, w: OwnedFd, keep: &[RawFd]) -> ! {
    detach();
    close_all_but(&[&[w.as_raw_fd()], keep].concat());
    let reply: Reply = super::take(spec, id, now_unix).map_err(|e| e.to_string());
    let bytes = serde_json::to_vec(&reply).unwrap_or_default();
    let _ = std::fs::File::from(w).write_all(&bytes);
    // SAFETY: ends the child without running the parent's exit handlers.
    unsafe { libc::_exit(0) }
}

/// Hold none of the caller's stdio (a caller reading snapckpt's output to its end must not
/// wait for a snapshot that hangs), leave its session (a Ctrl-C of the take does not cut the
/// late snapshot short), and outlive a reader that is gone (EPIPE, not SIGPIPE).
fn detach() {
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds of this process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    // SAFETY: plain system calls of a single-threaded child.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Close every fd from 3 up but those in `keep`.
fn close_all_but(keep: &[RawFd]) {
    let mut keep: Vec<u32> = keep.iter().map(|&f| f as u32).collect();
    keep.sort_unstable();
    let mut from = 3u32;
    for k in keep.into_iter().filter(|&k| k >= 3) {
        if k > from {
            // SAFETY: close_range on a range of our own fds.
            unsafe { libc::syscall(libc::SYS_close_range, from, k - 1, 0u32) };
        }
        from = from.max(k + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, from, u32::MAX, 0u32) };
}

/// Read the child's whole reply, or `None` if it has not ended it by the deadline.
fn wait_reply(r: OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut f = std::fs::File::from(r);
    let mut out = vec![];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !readable(&f, left) {
            return None;
        }
        let mut buf = [0u8; 4096];
        match f.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Some(out),
        }
    }
}

/// Whether `f` becomes readable (data or EOF) within `left`.
fn readable(f: &std::fs::File, left: Duration) -> bool {
    let mut p = libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = (left.as_millis() + 1).min(i32::MAX as u128) as i32; // rounded up
                                                                  // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, ms) };
    n > 0 || (n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted)
}

/// The child's reply as the snapshot or its error; a child that died without one is an error.
fn decode(bytes: Vec<u8>) -> Result<Snapshot, SnapshotError> {
    match serde_json::from_slice::<Reply>(&bytes) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(msg)) => Err(SnapshotError::Child(msg)),
        Err(_) => Err(SnapshotError::Child("the snapshot process ended without an answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_decoded() {
        assert!(matches!(decode(vec![]), Err(SnapshotError::Child(m)) if m.contains("without an answer")));
        let e = serde_json::to_vec(&Reply::Err("btrfs create: EPERM".into())).unwrap();
        assert_eq!(decode(e).unwrap_err().to_string(), "btrfs create: EPERM");
    }

    /// A child that never answers is given up on at the deadline.
    #[test]
    fn a_silent_child_times_out() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let t = Instant::now();
        assert!(wait_reply(r, Duration::from_millis(200)).is_none());
        assert!(t.elapsed() >= Duration::from_millis(200) && t.elapsed() < Duration::from_secs(5));
        drop(w);
    }
}
