//! The kernel's view of unix sockets (`NETLINK_SOCK_DIAG`, `unix_diag`): for each socket of
//! this network namespace its type, its peer (the other end of a connection, or the socket a
//! datagram socket is connected to), its bound name and, for a listener, the clients waiting
//! in its queue. What `ss -x` shows; `/proc/net/unix` has no peers.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

/// One unix socket as the kernel describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixSock {
    /// `SOCK_STREAM`, `SOCK_DGRAM` or `SOCK_SEQPACKET`.
    pub kind: i32,
    /// The peer's inode (0: none).
    pub peer: u32,
    /// The bound name (`@...` for an abstract one), if bound.
    pub name: Option<String>,
    /// A listener: the inodes of the clients whose connections wait to be accepted.
    pub waiting: Vec<u32>,
}

impl UnixSock {
    /// "stream", "datagram", "seqpacket".
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            libc::SOCK_STREAM => "stream",
            libc::SOCK_DGRAM => "datagram",
            libc::SOCK_SEQPACKET => "seqpacket",
            _ => "unix",
        }
    }
}

/// Every unix socket of this network namespace, by inode.
pub fn sockets() -> io::Result<HashMap<u32, UnixSock>> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd =
        unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // struct nlmsghdr (16) + struct unix_diag_req (24)
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]); // family, protocol, pad
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    req.extend_from_slice(&(UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS).to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // cookie: none
                                       // SAFETY: req is a valid buffer of its length.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = HashMap::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        // SAFETY: buf is a valid buffer of its length.
        let n = crate::sys::retry_eintr(|| unsafe {
            libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
        })?;
        if n == 0 {
            return Ok(out);
        }
        if parse(&buf[..n], &mut out)? {
            return Ok(out);
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse one datagram of netlink messages into `out`; whether the dump is complete.
fn parse(mut b: &[u8], out: &mut HashMap<u32, UnixSock>) -> io::Result<bool> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag reply");
    while b.len() >= 16 {
        let len = u32_at(b, 0).ok_or_else(bad)? as usize;
        let ty = u16_at(b, 4).ok_or_else(bad)?;
        if len < 16 || len > b.len() {
            return Err(bad());
        }
        let msg = &b[16..len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = u32_at(msg, 0).ok_or_else(bad)? as i32;
                return Err(io::Error::from_raw_os_error(-errno));
            }
            SOCK_DIAG_BY_FAMILY => {
                // struct unix_diag_msg: u8 family, type, state, pad; u32 ino; u32 cookie[2]
                if msg.len() < 16 {
                    return Err(bad());
                }
                let mut s = UnixSock { kind: msg[1] as i32, ..Default::default() };
                let ino = u32_at(msg, 4).ok_or_else(bad)?;
                let mut a = &msg[16..];
                while a.len() >= 4 {
                    let alen = u16_at(a, 0).ok_or_else(bad)? as usize;
                    let aty = u16_at(a, 2).ok_or_else(bad)?;
                    if alen < 4 || alen > a.len() {
                        return Err(bad());
                    }
                    let data = &a[4..alen];
                    match aty {
                        UNIX_DIAG_PEER => s.peer = u32_at(data, 0).unwrap_or(0),
                        UNIX_DIAG_NAME if !data.is_empty() => {
                            s.name = Some(match data.split_first() {
                                Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
                                _ => String::from_utf8_lossy(data).into_owned(),
                            })
                        }
                        UNIX_DIAG_ICONS => {
                            s.waiting = data.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect()
                        }
                        _ => {}
                    }
                    a = &a[align4(alen).min(a.len())..];
                }
                out.insert(ino, s);
            }
            _ => {}
        }
        b = &b[align4(len).min(b.len())..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    fn ino(fd: &impl AsRawFd) -> u32 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().ino() as u32
    }

    #[test]
    fn pairs_are_each_others_peers() {
        let (a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixDatagram::pair().unwrap();
        let all = sockets().unwrap();
        let (ia, ib) = (ino(&a), ino(&b));
        assert_eq!(all[&ia].peer, ib);
        assert_eq!(all[&ib].peer, ia);
        assert_eq!(all[&ia].kind_name(), "stream");
        assert_eq!(all[&ino(&c)].kind_name(), "datagram");
        assert_eq!(all[&ia].name, None);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let mut out = HashMap::new();
        assert!(parse(&[0xff; 20], &mut out).is_err());
        assert!(!parse(&[], &mut out).unwrap());
    }
}
