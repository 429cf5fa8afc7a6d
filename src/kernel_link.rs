//! Linking an open file whose link count is 0 through the `snapckpt_relink` kernel module
//! (`kmod/`): its misc device `/dev/snapckpt-relink` has one ioctl, `SNAPCKPT_IOC_RELINK`,
//! that does what `linkat(fd, "", dir_fd, name, AT_EMPTY_PATH)` does, orphans included (the
//! module sets `I_LINKABLE` and calls `vfs_link`, so the filesystem takes the inode off its
//! orphan list). No data is copied: the name is the same inode.
//!
//! The request layout and number mirror `kmod/snapckpt_relink.h` (checked by the unit tests).
//! The module refuses callers without `CAP_DAC_READ_SEARCH` and `CAP_DAC_OVERRIDE` (EPERM), a
//! target on another vfsmount (EXDEV), an existing name (EEXIST; symlinks are never followed),
//! and anything but a regular file (EINVAL).

use std::fmt;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// The module's device node.
pub const DEVICE: &str = "/dev/snapckpt-relink";

/// Size of the name field: NAME_MAX + 1 (the name is NUL-terminated).
pub const NAME_SIZE: usize = 256;

/// `struct snapckpt_relink_req` of `kmod/snapckpt_relink.h`.
#[repr(C)]
struct RelinkReq {
    fd: i32,
    dir_fd: i32,
    flags: u32,
    reserved: u32,
    name: [u8; NAME_SIZE],
}

const IOC_MAGIC: u32 = 0xE5;
const IOC_NR: u32 = 0x01;
/// `_IOW(SNAPCKPT_RELINK_IOC_MAGIC, 0x01, struct snapckpt_relink_req)` (x86-64/arm64 encoding:
/// direction in bits 30-31, size in 16-29, type in 8-15, number in 0-7).
const IOC_RELINK: u32 =
    (1 << 30) | ((std::mem::size_of::<RelinkReq>() as u32) << 16) | (IOC_MAGIC << 8) | IOC_NR;

/// What went wrong, with the path (the device), the call and the errno where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelLinkError {
    /// `name` is not a single path component the module would take.
    InvalidName { name: String, reason: &'static str },
    /// A negative file descriptor.
    InvalidFd { what: &'static str, fd: RawFd },
    /// The device cannot be opened: the module is not loaded (ENOENT, ENXIO, ENODEV) or the
    /// caller may not open it (EACCES).
    Open { path: PathBuf, errno: Errno },
    /// The ioctl failed: `errno` is the module's (or vfs_link's) answer.
    Ioctl { path: PathBuf, name: String, errno: Errno },
}

impl KernelLinkError {
    /// The errno of a failed system call, if this is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            KernelLinkError::Open { errno, .. } | KernelLinkError::Ioctl { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The module is absent (as opposed to present and refusing).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, KernelLinkError::Open { errno: Errno::ENOENT | Errno::ENXIO | Errno::ENODEV, .. })
    }
}

impl fmt::Display for KernelLinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelLinkError::InvalidName { name, reason } => {
                write!(f, "kernel link: invalid name {name:?}: {reason}")
            }
            KernelLinkError::InvalidFd { what, fd } => write!(f, "kernel link: invalid {what} fd {fd}"),
            KernelLinkError::Open { path, errno } => {
                write!(f, "open {}: {} ({})", path.display(), errno.desc(), errno)
            }
            KernelLinkError::Ioctl { path, name, errno } => {
                write!(
                    f,
                    "ioctl SNAPCKPT_IOC_RELINK on {} (name {name:?}): {} ({})",
                    path.display(),
                    errno.desc(),
                    errno
                )
            }
        }
    }
}

impl std::error::Error for KernelLinkError {}

/// True when the module's device node is present (a character device at [`DEVICE`]).
pub fn available() -> bool {
    available_at(Path::new(DEVICE))
}

fn available_at(path: &Path) -> bool {
    std::fs::symlink_metadata(path).map(|m| m.file_type().is_char_device()).unwrap_or(false)
}

/// Check `name` as the module does: one component, not "", ".", "..", no '/', no NUL, shorter
/// than [`NAME_SIZE`].
pub fn check_name(name: &str) -> Result<(), KernelLinkError> {
    let bad = |reason| Err(KernelLinkError::InvalidName { name: name.to_string(), reason });
    if name.is_empty() {
        bad("empty")
    } else if name.len() >= NAME_SIZE {
        bad("longer than 255 bytes")
    } else if name.contains('/') {
        bad("contains '/'")
    } else if name.contains('\0') {
        bad("contains NUL")
    } else if name == "." || name == ".." {
        bad("is '.' or '..'")
    } else {
        Ok(())
    }
}

/// An open `/dev/snapckpt-relink`, for several links.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: PathBuf,
}

impl Device {
    /// Open [`DEVICE`].
    pub fn open() -> Result<Device, KernelLinkError> {
        Device::open_at(Path::new(DEVICE))
    }

    fn open_at(path: &Path) -> Result<Device, KernelLinkError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| KernelLinkError::Open {
                path: path.to_path_buf(),
                errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
            })?;
        Ok(Device { file, path: path.to_path_buf() })
    }

    /// Link the inode of `fd` (nlink 0 included; e.g. a reopen of /proc/PID/fd/N, O_PATH
    /// allowed) at `name` in the directory `dir_fd` (same vfsmount; O_PATH allowed).
    pub fn link(&self, fd: RawFd, dir_fd: RawFd, name: &str) -> Result<(), KernelLinkError> {
        let req = request(fd, dir_fd, name)?;
        // SAFETY: the request is a valid, fully initialised struct snapckpt_relink_req that
        // outlives the call; the module only reads it.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), IOC_RELINK as _, &req as *const RelinkReq) };
        if r < 0 {
            return Err(KernelLinkError::Ioctl {
                path: self.path.clone(),
                name: name.to_string(),
                errno: Errno::last(),
            });
        }
        Ok(())
    }
}

fn request(fd: RawFd, dir_fd: RawFd, name: &str) -> Result<RelinkReq, KernelLinkError> {
    if fd < 0 {
        return Err(KernelLinkError::InvalidFd { what: "file", fd });
    }
    if dir_fd < 0 {
        return Err(KernelLinkError::InvalidFd { what: "directory", fd: dir_fd });
    }
    check_name(name)?;
    let mut req = RelinkReq { fd, dir_fd, flags: 0, reserved: 0, name: [0; NAME_SIZE] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(req)
}

/// Link the inode of the open file `fd` at `name` in the directory `dir_fd` through the
/// module (opens [`DEVICE`] for this one call; use [`Device`] for many).
pub fn link_fd(fd: RawFd, dir_fd: RawFd, name: &str) -> Result<(), KernelLinkError> {
    request(fd, dir_fd, name)?;
    Device::open()?.link(fd, dir_fd, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = include_str!("../kmod/snapckpt_relink.h");

    fn define(name: &str) -> &'static str {
        HEADER
            .lines()
            .find_map(|l| l.strip_prefix("#define ")?.strip_prefix(name)?.strip_prefix(' '))
            .map(str::trim)
            .unwrap_or_else(|| panic!("#define {name} not in kmod/snapckpt_relink.h"))
    }

    #[test]
    fn layout_and_number_match_the_header() {
        assert_eq!(std::mem::size_of::<RelinkReq>(), 16 + NAME_SIZE);
        assert_eq!(define("SNAPCKPT_RELINK_NAME_SIZE").split_whitespace().next(), Some("256"));
        assert_eq!(define("SNAPCKPT_RELINK_DEVICE"), format!("\"{DEVICE}\""));
        assert_eq!(define("SNAPCKPT_RELINK_IOC_MAGIC"), format!("0x{IOC_MAGIC:X}"));
        assert_eq!(
            define("SNAPCKPT_IOC_RELINK"),
            "_IOW(SNAPCKPT_RELINK_IOC_MAGIC, 0x01, struct snapckpt_relink_req)"
        );
        for field in [
            "__s32 fd;",
            "__s32 dir_fd;",
            "__u32 flags;",
            "__u32 reserved;",
            "char name[SNAPCKPT_RELINK_NAME_SIZE];",
        ] {
            assert!(HEADER.contains(field), "{field}");
        }
        assert_eq!(IOC_RELINK, 0x4110_E501);
    }

    #[test]
    fn names() {
        for ok in ["a", "unlink-at-restart-1-2", "x (deleted)", "..a", ".hidden", &"n".repeat(255)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "/", "a\0b", &"n".repeat(256)] {
            assert!(matches!(check_name(bad), Err(KernelLinkError::InvalidName { .. })), "{bad:?}");
        }
        let req = request(3, 4, "abc").unwrap();
        assert_eq!((req.fd, req.dir_fd, req.flags, req.reserved), (3, 4, 0, 0));
        assert_eq!(&req.name[..4], b"abc\0");
        assert!(req.name[3..].iter().all(|&b| b == 0));
    }

    #[test]
    fn arguments_checked_before_the_device() {
        assert_eq!(link_fd(-1, 0, "a"), Err(KernelLinkError::InvalidFd { what: "file", fd: -1 }));
        assert_eq!(link_fd(0, -5, "a"), Err(KernelLinkError::InvalidFd { what: "directory", fd: -5 }));
        let e = link_fd(0, 0, "a/b").unwrap_err();
        assert!(matches!(e, KernelLinkError::InvalidName { .. }) && e.errno().is_none(), "{e}");
    }

    #[test]
    fn available_means_a_char_device() {
        assert!(available_at(Path::new("/dev/null")));
        assert!(!available_at(Path::new("/")));
        assert!(!available_at(Path::new("/nonexistent/snapckpt-relink")));
        assert_eq!(available(), available_at(Path::new(DEVICE)));
    }

    #[test]
    fn without_the_module() {
        if available() {
            return; // the module is loaded here: nothing to check
        }
        let e = link_fd(0, 0, "a").unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert_eq!(e.errno(), Some(Errno::ENOENT));
        assert!(e.to_string().contains(DEVICE), "{e}");
    }

    #[test]
    fn ioctl_errors_carry_path_and_errno() {
        // /dev/null has no such ioctl: the error path of a real ioctl, without the module
        let dev = Device::open_at(Path::new("/dev/null")).unwrap();
        let e = dev.link(0, 0, "a").unwrap_err();
        assert_eq!(
            e,
            KernelLinkError::Ioctl { path: "/dev/null".into(), name: "a".into(), errno: Errno::ENOTTY }
        );
        assert!(!e.is_unavailable());
        assert!(e.to_string().contains("/dev/null") && e.to_string().contains("ENOTTY"), "{e}");
        let e = Device::open_at(Path::new("/nonexistent/dev")).unwrap_err();
        assert_eq!(e.errno(), Some(Errno::ENOENT));
    }
}
