//! `snapckpt check`: what this machine offers snapckpt. Root, the kernel, openat2, the cgroup
//! freezers, the filesystems, LVM/device-mapper, and which CRIU is used and whether
//! `criu check` passes, as one [`Line`] each: `[ ok ]`, `[warn]` (a feature that only some
//! setups need is missing) or `[FAIL]`.

use crate::criu;
use std::path::{Path, PathBuf};

/// What `check` is told.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// The CRIU binary to check (`--criu`).
    pub criu: Option<PathBuf>,
    /// Env `SNAPCKPT_CRIU`: where CRIU is looked for first when `criu` is `None`.
    pub env_criu: Option<PathBuf>,
}

/// The verdict of one line: [`Status::Warn`] reports a problem that only some uses meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    /// `Ok` if `ok`, else `otherwise`.
    pub fn ok_or(ok: bool, otherwise: Status) -> Status {
        if ok {
            Status::Ok
        } else {
            otherwise
        }
    }

    /// The four characters between the brackets.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => " ok ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report: `[mark] what: detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub status: Status,
    pub what: String,
    pub detail: String,
}

impl Line {
    fn new(status: Status, what: impl Into<String>, detail: impl Into<String>) -> Line {
        Line { status, what: what.into(), detail: detail.into() }
    }
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{}] {}: {}", self.status.mark(), self.what, self.detail)
    }
}

/// Every check, in the order printed.
pub fn check(opts: &CheckOptions) -> Vec<Line> {
    let mut lines = vec![root(), kernel(), openat2(), freezer()];
    let fss = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    lines.extend(["btrfs", "xfs", "ext4"].into_iter().map(|fs| filesystem(&fss, fs)));
    lines.push(lvm());
    lines.push(criu_line(opts));
    if let Ok(p) = criu::find_with(opts.criu.as_deref(), opts.env_criu.as_deref()) {
        let probe = if nix::unistd::geteuid().is_root() { Some(criu::inet_dump_probe(&p)) } else { None };
        lines.push(sockets_line(&criu::version_string(&p), probe));
        lines.push(pre_dump_line(&p));
    }
    lines.push(kernel_link_line(crate::kernel_link::available()));
    lines.push(Line::new(
        Status::Ok,
        "restart st_dev",
        "files restored from a btrfs clone keep their inode numbers but carry the clone's device number (a subvolume has its own st_dev)",
    ));
    lines
}

/// Whether CRIU dumps TCP and UDP sockets on this kernel: `probe` is the result of dumping a
/// process that holds a TCP listener and a UDP socket (None: not tried, not root); without
/// one, the version says (4.2 and later do; earlier ones ask SO_PASSCRED of inet sockets,
/// which kernels since 6.x refuse).
fn sockets_line(version: &str, probe: Option<Result<(), String>>) -> Line {
    let mut nums = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    let new_enough = (major, minor) >= (4, 2);
    let upgrade = if new_enough { "" } else { ": scripts/install-criu.sh installs CRIU 4.2" };
    match probe {
        Some(Ok(())) => Line::new(
            Status::Ok,
            "CRIU sockets",
            format!("CRIU {version} dumps TCP and UDP sockets here (a TCP listener and a UDP socket dumped; --tcp-established for connections)"),
        ),
        Some(Err(why)) => Line::new(
            Status::Warn,
            "CRIU sockets",
            format!("CRIU {version} cannot dump TCP or UDP sockets here: {why}{upgrade}"),
        ),
        None if new_enough => Line::new(
            Status::Ok,
            "CRIU sockets",
            format!("CRIU {version} dumps TCP and UDP sockets on recent kernels (not tried: needs root; --tcp-established for connections)"),
        ),
        None => Line::new(
            Status::Warn,
            "CRIU sockets",
            format!("CRIU {version:?} cannot dump TCP or UDP sockets on recent kernels (SO_PASSCRED){upgrade}"),
        ),
    }
}

/// The snapckpt-relink kernel module (kmod/): orphans linked instead of copied.
fn kernel_link_line(loaded: bool) -> Line {
    if loaded {
        Line::new(
            Status::Ok,
            "kernel relink",
            "module loaded (/dev/snapckpt-relink): orphans are linked in place, no data copied",
        )
    } else {
        Line::new(
            Status::Warn,
            "kernel relink",
            "module not loaded: orphans are cloned (btrfs, xfs) or copied (ext4); see kmod/README.md",
        )
    }
}

/// Memory change tracking, which CRIU's pre-dump needs (`take --pre-dump`): a warning only.
fn pre_dump_line(criu: &std::path::Path) -> Line {
    match criu::mem_dirty_track(criu) {
        Ok(()) => Line::new(Status::Ok, "memory tracking", "criu check --feature mem_dirty_track: ok"),
        Err(said) => Line::new(
            Status::Warn,
            "memory tracking",
            format!(
                "the kernel cannot track memory changes (soft-dirty, CONFIG_MEM_SOFT_DIRTY): no pre-dump; criu said: {}",
                said.lines().last().unwrap_or("")
            ),
        ),
    }
}

/// Whether any line failed (`check` then exits with status 1).
pub fn failed(lines: &[Line]) -> bool {
    lines.iter().any(|l| l.status == Status::Fail)
}

fn root() -> Line {
    let root = nix::unistd::geteuid().is_root();
    let detail = if root { "yes" } else { "no: take/restart need root" };
    Line::new(Status::ok_or(root, Status::Fail), "running as root", detail)
}

fn kernel() -> Line {
    let uname =
        nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    Line::new(Status::Ok, "kernel", uname)
}

fn openat2() -> Line {
    let o2 =
        crate::sys::openat2(libc::AT_FDCWD, "/", libc::O_PATH, 0, crate::sys::RESOLVE_NO_SYMLINKS).is_ok();
    let detail = if o2 { "available" } else { "missing (needs Linux 5.6+)" };
    Line::new(Status::ok_or(o2, Status::Fail), "openat2 with RESOLVE_*", detail)
}

fn freezer() -> Line {
    let exists = |p: &str| Path::new(p).exists();
    let v2 = ["/sys/fs/cgroup/cgroup.freeze", "/sys/fs/cgroup/unified"].iter().any(|p| exists(p))
        || exists("/sys/fs/cgroup/cgroup.controllers");
    let v1 = exists("/sys/fs/cgroup/freezer/freezer.state") || exists("/sys/fs/cgroup/freezer");
    freezer_line(v2, v1)
}

fn freezer_line(v2: bool, v1: bool) -> Line {
    let word = |p: bool| if p { "present" } else { "absent" };
    let detail = format!("v2 {}, v1 {} (SIGSTOP is used for --pid without a cgroup)", word(v2), word(v1));
    Line::new(Status::ok_or(v1 || v2, Status::Fail), "cgroup freezer", detail)
}

/// Whether `/proc/filesystems` (its text `fss`) lists `fs`.
fn filesystem(fss: &str, fs: &str) -> Line {
    let have = fss.lines().any(|l| l.split_whitespace().last() == Some(fs));
    let detail = if have { "supported by the kernel" } else { "not loaded (modprobe it)" };
    Line::new(Status::ok_or(have, Status::Warn), format!("filesystem {fs}"), detail)
}

fn lvm() -> Line {
    let dm = Path::new("/dev/mapper/control").exists()
        && std::fs::read_to_string("/proc/misc").map(|m| m.contains("device-mapper")).unwrap_or(false);
    let lvm = crate::sys::which("lvm").is_some()
        || ["/sbin", "/usr/sbin"].iter().any(|d| Path::new(d).join("lvm").is_file());
    lvm_line(lvm, dm)
}

fn lvm_line(lvm: bool, dm: bool) -> Line {
    let detail = format!(
        "lvm {}, device-mapper {}",
        if lvm { "found" } else { "not found" },
        if dm { "present" } else { "absent (LVM snapshots cannot work on this kernel)" }
    );
    Line::new(Status::ok_or(lvm && dm, Status::Warn), "LVM snapshots", detail)
}

fn criu_line(opts: &CheckOptions) -> Line {
    match criu::find_with(opts.criu.as_deref(), opts.env_criu.as_deref()) {
        Ok(p) => match criu::check(&p) {
            Ok((v, ok, out)) => Line::new(
                Status::ok_or(ok, Status::Fail),
                "CRIU",
                format!("{} ({v}): criu check: {}", p.display(), out.lines().last().unwrap_or("")),
            ),
            Err(e) => Line::new(Status::Fail, "CRIU", e.to_string()),
        },
        Err(e) => Line::new(Status::Fail, "CRIU", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_print_as_before() {
        assert_eq!(Line::new(Status::Ok, "kernel", "6.1").to_string(), "[ ok ] kernel: 6.1");
        assert_eq!(
            lvm_line(false, true).to_string(),
            "[warn] LVM snapshots: lvm not found, device-mapper present"
        );
        assert_eq!(
            freezer_line(false, false).to_string(),
            "[FAIL] cgroup freezer: v2 absent, v1 absent (SIGSTOP is used for --pid without a cgroup)"
        );
        assert_eq!(freezer_line(true, false).status, Status::Ok);
        assert_eq!(lvm_line(true, true).status, Status::Ok);
    }

    #[test]
    fn sockets_and_kernel_link() {
        assert_eq!(sockets_line("4.2.1", None).status, Status::Ok);
        assert_eq!(sockets_line("4.1.1", None).status, Status::Warn);
        assert_eq!(sockets_line("", None).status, Status::Warn);
        assert_eq!(sockets_line("4.1.1", Some(Ok(()))).status, Status::Ok);
        let l = sockets_line("4.2.1", Some(Err("criu dump failed".into())));
        assert_eq!(l.status, Status::Warn);
        assert!(l.detail.contains("criu dump failed") && !l.detail.contains("install-criu"), "{l}");
        assert_eq!(kernel_link_line(false).status, Status::Warn);
        assert!(kernel_link_line(true).to_string().starts_with("[ ok ] kernel relink"));
    }

    #[test]
    fn filesystems_from_proc() {
        let fss = "nodev\tsysfs\n\text4\nnodev\ttmpfs\n\tbtrfs\n";
        assert_eq!(filesystem(fss, "btrfs").status, Status::Ok);
        assert_eq!(filesystem(fss, "ext4").to_string(), "[ ok ] filesystem ext4: supported by the kernel");
        assert_eq!(filesystem(fss, "xfs").to_string(), "[warn] filesystem xfs: not loaded (modprobe it)");
        // "sysfs" ends in "fs" but is not "xfs"; a name must match a whole field
        assert_eq!(filesystem("nodev\tbtrfsx\n", "btrfs").status, Status::Warn);
    }

    #[test]
    fn missing_criu_fails_the_check() {
        let opts = CheckOptions { criu: Some("/nonexistent/criu".into()), env_criu: None };
        let l = criu_line(&opts);
        assert_eq!(l.status, Status::Fail);
        assert!(l.detail.starts_with("no CRIU found (looked at /nonexistent/criu)"), "{}", l.detail);
        assert!(failed(&[Line::new(Status::Warn, "a", "b"), l]));
        assert!(!failed(&[Line::new(Status::Warn, "a", "b")]));
    }
}
