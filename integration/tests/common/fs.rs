//! Filesystems on loop devices, mounts, and reading what is on them.

use super::{sh, Scratch};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A filesystem on a loop device, mounted at `mnt`; unmounted and removed on drop.
pub struct LoopFs {
    pub fstype: String,
    pub mnt: PathBuf,
    pub dev: String,
    _scratch: Scratch,
}

impl LoopFs {
    /// Make and mount a filesystem of `size` ("2G") of type btrfs, xfs, ext4 or tmpfs.
    pub fn new(fstype: &str, size: &str) -> LoopFs {
        let s = Scratch::new(&format!("fs-{fstype}"));
        let image = s.path().join("fs.img");
        let mnt = s.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        if fstype == "tmpfs" {
            sh(&format!("mount -t tmpfs -o size={size},mode=0755 snapckpt-test {}", mnt.display()));
            return LoopFs { fstype: fstype.into(), mnt, dev: "tmpfs".into(), _scratch: s };
        }
        sh(&format!("truncate -s {size} {}", image.display()));
        let mkfs = match fstype {
            "btrfs" => "mkfs.btrfs -q -f",
            "xfs" => "mkfs.xfs -q -f",
            "ext4" => "mkfs.ext4 -q -F",
            other => panic!("unknown fstype {other}"),
        };
        sh(&format!("{mkfs} {}", image.display()));
        let dev = sh(&format!("losetup --find --show {}", image.display())).trim().to_string();
        sh(&format!("mount {dev} {}", mnt.display()));
        LoopFs { fstype: fstype.into(), mnt, dev, _scratch: s }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // anything mounted below (restart clones) first
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "grep -o ' {}/[^ ]*' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l",
                self.mnt.display()
            ))
            .status();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        if self.fstype != "tmpfs" {
            let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        }
    }
}

/// A whole file as a string; panics naming the file.
pub fn read(p: impl AsRef<Path>) -> String {
    std::fs::read_to_string(p.as_ref()).unwrap_or_else(|e| panic!("read {}: {e}", p.as_ref().display()))
}

/// `MNT/lost+found/checkpoint`, where snapckpt puts the relinked names.
pub fn checkpoint_dir(mnt: &Path) -> PathBuf {
    mnt.join("lost+found/checkpoint")
}

/// The names under `MNT/lost+found/checkpoint`, sorted (none if it does not exist).
pub fn checkpoint_names(mnt: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(checkpoint_dir(mnt))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// The mount points in /proc/self/mountinfo (as written there: a space is `\040`).
fn mount_points() -> Vec<String> {
    read("/proc/self/mountinfo").lines().filter_map(|l| l.split(' ').nth(4).map(str::to_string)).collect()
}

/// Is anything mounted at `p` (per /proc/self/mountinfo)?
pub fn is_mounted(p: &Path) -> bool {
    let p = p.to_str().unwrap().replace(' ', "\\040");
    mount_points().contains(&p)
}

/// Mount points (as in /proc/self/mountinfo) at or below `p`.
pub fn mounts_under(p: &Path) -> Vec<String> {
    let p = p.to_string_lossy();
    mount_points().into_iter().filter(|m| m == p.as_ref() || m.starts_with(&format!("{p}/"))).collect()
}

/// Unmounts (lazily) on drop, so that a failing test does not leave a mount behind.
pub struct MountGuard(pub PathBuf);
impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).stderr(Stdio::null()).status();
    }
}

/// FNV-1a of a whole file, with its size.
pub fn fnv_file(p: &Path) -> std::io::Result<(u64, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)?;
    let mut h: u64 = 0xcbf29ce484222325;
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        for b in &buf[..k] {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        n += k as u64;
    }
    Ok((n, h))
}
