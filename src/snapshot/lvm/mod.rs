//! The LVM backend, through the `lvm` tools (`lvs`, `vgs`, `lvcreate`, `lvchange`, `lvremove`),
//! run with explicit arguments (no shell) and read with `--reportformat json` (never human
//! output).
//!
//! A snapshot covers the whole logical volume under the mount, so the mount must be the root of
//! the filesystem (not a bind mount of a subdirectory). ext2/3/4 and xfs are supported (btrfs on
//! LVM is refused: snapshots share the filesystem UUID and btrfs device scanning mixes them up;
//! use the btrfs backend). LVM itself freezes the mounted filesystem while it suspends the
//! device for the snapshot: snapckpt does not `fsfreeze` it (that would make `lvcreate` fail).
//!
//! Names and tags (every LV made here carries the tags `snapckpt` and `snapckpt_id_<id>`):
//!
//! ```text
//! VG/snapckpt-<id>         the checkpoint's snapshot (ids that LVM would refuse, or that are
//!                          long, become snapckpt-<id prefix>-<hash>; see `snapshot_lv_name`)
//! VG/snapckpt-<id>-r<N>    thin only: writable restart clones, N = 1, 2, ...; tagged also
//!                          snapckpt_clone_of_<snapshot LV UUID>
//! ```
//!
//! ## Thin LVs (`lv_attr[0] == 'V'`): restart any number of times
//!
//! `take` makes a *read-only* thin snapshot (`lvcreate -s -pr`, no size). It keeps the
//! activation-skip flag and stays inactive: it is never mounted, so nothing (no ext4 orphan
//! cleanup, no xfs log recovery) ever writes to it. Each restart makes a writable thin snapshot
//! of it, `snapckpt-<id>-r<N>`, activates it (`lvchange -ay -K`) and mounts that (xfs with
//! `nouuid`, as it shares the origin's filesystem UUID). Undoing a restart unmounts and removes
//! its clone; `delete` removes the clones, then the snapshot.
//!
//! ## Classic (COW) snapshots of other LVs: restart once
//!
//! LVM cannot snapshot a classic snapshot ("Snapshots of snapshots are not supported"), so
//! there is nothing to clone. A classic snapshot (`lvcreate -s -L <lvm_size>`, writable, active
//! together with its origin) is itself mounted **read-write** by the restart: a restart removes
//! the relinked names on the filesystem it restarts from, and mounting needs write access anyway
//! (xfs snapshots always need log recovery, ext4 runs its orphan cleanup; both are harmless to
//! the relinked files, which are linked names, not orphans). The first restart therefore
//! consumes the snapshot: `mount_clone` tags it `snapckpt_restarted`, and later restarts are
//! refused with a message saying so. A failed restart (`unmount_clone` with `remove`) unmounts
//! it and takes the tag away again, so it can be retried. `unmount_clone` never removes a
//! classic snapshot (it is the checkpoint's data); `delete` does. A classic snapshot whose COW
//! space overflowed (`lv_attr[4] == 'I'`) is refused. Use a thin LV for repeatable restarts.
//!
//! Safety: every LV is checked against the LV UUID in the record before it is mounted or
//! removed; restart clones are recognised by name *and* by the `snapckpt_clone_of_<UUID>` tag;
//! mounts are matched by device number (mountinfo's major:minor against the LV's dm device).

use super::{
    is_topmost, mountinfo, validate_id, CloneDetail, FsSpec, MountEntry, MountedClone, SnapshotError,
};
use crate::record::names::{snapshot_lv_name, valid_lv_name, LV_PREFIX};
use crate::record::{LvmKind, Snapshot};
use crate::sys;
use nix::mount::{MntFlags, MsFlags};
use serde::Deserialize;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod clones;
pub use clones::*;

/// Tag on every LV snapckpt makes.
pub const TAG: &str = "snapckpt";
/// Prefix of the tag naming the checkpoint id.
pub const TAG_ID_PREFIX: &str = "snapckpt_id_";
/// Prefix of the tag that ties a restart clone to its snapshot's LV UUID.
pub const TAG_CLONE_OF_PREFIX: &str = "snapckpt_clone_of_";
/// Tag on a classic snapshot that a restart has mounted read-write (and so consumed).
pub const TAG_RESTARTED: &str = "snapckpt_restarted";

/// The lvs fields snapckpt reads.
const LVS_FIELDS: &str = "lv_name,vg_name,lv_uuid,lv_attr,lv_dm_path,lv_path,pool_lv,origin,lv_size,lv_kernel_major,lv_kernel_minor,lv_tags";

/// How long to wait for a device node after activation.
const NODE_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// running the lvm tools

/// Where the lvm tools are: /usr/sbin or /sbin first (root's PATH may lack them), else PATH.
fn tool(name: &str) -> PathBuf {
    for d in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(d).join(name);
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from(name)
}

/// Run an lvm tool; its stdout on success, [`SnapshotError::Lvm`] (command, args, status,
/// stderr) otherwise.
fn run(cmd: &str, args: &[&str]) -> Result<String, SnapshotError> {
    let err = |status: String, stderr: String| SnapshotError::Lvm {
        cmd: cmd.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        status,
        stderr,
    };
    let out = Command::new(tool(cmd))
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| err("could not be started".into(), e.to_string()))?;
    if !out.status.success() {
        return Err(err(out.status.to_string(), String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    String::from_utf8(out.stdout).map_err(|_| err("exit status 0".into(), "output is not UTF-8".into()))
}

/// One LV as `lvs` reports it; every field is a string in LVM's JSON.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct LvRow {
    lv_name: String,
    vg_name: String,
    lv_uuid: String,
    lv_attr: String,
    lv_dm_path: String,
    lv_path: String,
    pool_lv: String,
    origin: String,
    lv_size: String,
    lv_kernel_major: String,
    lv_kernel_minor: String,
    lv_tags: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ReportSection {
    lv: Vec<LvRow>,
    vg: Vec<VgRow>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct VgRow {
    vg_name: String,
}

#[derive(Debug, Deserialize)]
struct Report {
    report: Vec<ReportSection>,
}

/// One LV, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lv {
    pub name: String,
    pub vg: String,
    pub uuid: String,
    pub attr: String,
    /// `/dev/mapper/VG-LV` (set even when inactive).
    pub dm_path: String,
    /// `/dev/VG/LV`, "" for hidden LVs.
    pub path: String,
    pub pool: String,
    pub origin: String,
    pub size: Option<u64>,
    /// Kernel device (major, minor) when active.
    pub kdev: Option<(u32, u32)>,
    pub tags: Vec<String>,
}

impl Lv {
    fn attr_at(&self, i: usize) -> char {
        self.attr.chars().nth(i).unwrap_or('-')
    }
    /// A thin volume (thin LV or thin snapshot).
    pub fn is_thin(&self) -> bool {
        self.attr_at(0) == 'V'
    }
    /// A classic snapshot ('s', or 'S' when invalid).
    pub fn is_classic_snapshot(&self) -> bool {
        matches!(self.attr_at(0), 's' | 'S')
    }
    /// A classic snapshot whose COW space overflowed.
    pub fn is_invalid(&self) -> bool {
        self.attr_at(0) == 'S' || self.attr_at(4) == 'I'
    }
    pub fn has_tag(&self, t: &str) -> bool {
        self.tags.iter().any(|x| x == t)
    }
    pub fn dev(&self) -> Option<u64> {
        self.kdev.map(|(a, b)| sys::makedev(a, b))
    }
    fn full(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }
}

fn parse_lv(r: LvRow) -> Lv {
    let num = |s: &str| s.trim().parse::<i64>().ok();
    let kdev = match (num(&r.lv_kernel_major), num(&r.lv_kernel_minor)) {
        (Some(a), Some(b)) if a >= 0 && b >= 0 => Some((a as u32, b as u32)),
        _ => None,
    };
    Lv {
        name: r.lv_name,
        vg: r.vg_name,
        uuid: r.lv_uuid,
        attr: r.lv_attr,
        dm_path: r.lv_dm_path,
        path: r.lv_path,
        pool: r.pool_lv,
        origin: r.origin,
        size: r.lv_size.trim().parse().ok(),
        kdev,
        tags: r.lv_tags.split(',').map(str::trim).filter(|t| !t.is_empty()).map(String::from).collect(),
    }
}

/// Parse `lvs --reportformat json` output.
pub(crate) fn parse_lvs(json: &str) -> Result<Vec<Lv>, String> {
    let r: Report = serde_json::from_str(json).map_err(|e| format!("unexpected lvs JSON: {e}"))?;
    Ok(r.report.into_iter().flat_map(|s| s.lv).map(parse_lv).collect())
}

/// Parse `vgs --reportformat json -o vg_name` output.
pub(crate) fn parse_vgs(json: &str) -> Result<Vec<String>, String> {
    let r: Report = serde_json::from_str(json).map_err(|e| format!("unexpected vgs JSON: {e}"))?;
    Ok(r.report.into_iter().flat_map(|s| s.vg).map(|v| v.vg_name).collect())
}

/// `lvs` of the given selectors (VG names, VG/LV or device paths; none = all).
fn lvs(selectors: &[&str]) -> Result<Vec<Lv>, SnapshotError> {
    let mut args = vec!["--reportformat", "json", "--units", "b", "--nosuffix", "-o", LVS_FIELDS];
    args.extend_from_slice(selectors);
    let out = run("lvs", &args)?;
    parse_lvs(&out).map_err(|e| SnapshotError::Lvm {
        cmd: "lvs".into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        status: "exit status 0".into(),
        stderr: e,
    })
}

/// The LVs of a VG; `None` when the VG does not exist (any more).
fn vg_lvs(vg: &str) -> Result<Option<Vec<Lv>>, SnapshotError> {
    match lvs(&[vg]) {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let args = ["--reportformat", "json", "-o", "vg_name"];
            let out = run("vgs", &args)?;
            let vgs = parse_vgs(&out).map_err(|m| SnapshotError::Lvm {
                cmd: "vgs".into(),
                args: args.iter().map(|a| a.to_string()).collect(),
                status: "exit status 0".into(),
                stderr: m,
            })?;
            if vgs.iter().any(|v| v == vg) {
                Err(e)
            } else {
                Ok(None)
            }
        }
    }
}

/// One LV by name, or `None`.
fn find_lv(vg: &str, name: &str) -> Result<Option<Lv>, SnapshotError> {
    Ok(vg_lvs(vg)?.and_then(|v| v.into_iter().find(|l| l.name == name)))
}

// ---------------------------------------------------------------------------------------------
// names

/// True if `n` is a VG name LVM accepts (same characters; no leading '-').
fn valid_vg_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 127
        && !n.starts_with('-')
        && n != "."
        && n != ".."
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
}

/// A string as an LVM tag: characters outside `[A-Za-z0-9_+.-/=!:&#]` become '_'.
pub(crate) fn tag_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || "_+.-/=!:&#".contains(c) { c } else { '_' })
        .take(1000)
        .collect()
}

/// The restart number of `name` if it is `<snap>-r<N>`.
pub(crate) fn clone_number(snap: &str, name: &str) -> Option<u32> {
    let n = name.strip_prefix(snap)?.strip_prefix("-r")?;
    if n.is_empty() || n.len() > 7 || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0') {
        return None;
    }
    n.parse().ok()
}

/// Mount options for a snapshot or clone of a filesystem mounted beside its origin.
pub(crate) fn mount_options(fstype: &str) -> &'static str {
    match fstype {
        "xfs" => "nouuid",
        _ => "",
    }
}

/// The filesystems this backend handles, as static strings (for [`SnapshotError::Mount`]).
fn supported_fstype(fstype: &str) -> Option<&'static str> {
    ["ext4", "ext3", "ext2", "xfs"].into_iter().find(|f| *f == fstype)
}

// ---------------------------------------------------------------------------------------------
// mounts by device number

/// The mounts of any of the devices `want` (mountinfo field 3, major:minor).
fn mounts_of_devs(all: &[MountEntry], want: &[u64]) -> Vec<MountEntry> {
    all.iter().filter(|e| want.contains(&e.dev)).cloned().collect()
}

fn mount_points(v: &[MountEntry]) -> Vec<PathBuf> {
    let mut p: Vec<PathBuf> = v.iter().map(|e| e.mount_point.clone()).collect();
    p.sort();
    p.dedup();
    p
}

/// Lazily unmount every mount of the devices `want`, top mounts first.
fn detach_all(what: &Path, want: &[u64]) -> Result<(), SnapshotError> {
    super::detach_all(what, |all| mounts_of_devs(all, want))
}

// ---------------------------------------------------------------------------------------------
// take

/// Find the LV that holds the filesystem of device `dev` mounted from `source`.
fn lv_of_mount(source: &str, dev: u64) -> Result<Option<Lv>, SnapshotError> {
    // lvs resolves /dev/mapper/VG-LV and /dev/VG/LV itself; the device number decides.
    if source.starts_with("/dev/") && !source.contains(',') {
        if let Ok(v) = lvs(&[source]) {
            if let Some(lv) = v.into_iter().find(|l| l.dev() == Some(dev)) {
                return Ok(Some(lv));
            }
        }
    }
    Ok(lvs(&[])?.into_iter().find(|l| l.dev() == Some(dev)))
}

/// Take a snapshot of the LV under `spec.mount_point`: a read-only thin snapshot of a thin LV,
/// else a classic COW snapshot of `spec.lvm_size`. See the module documentation.
/// What a snapshot of `spec` will be taken of: the checks `take` makes before it changes
/// anything, also run by [`precheck`] before anything is frozen.
struct Origin<'a> {
    mp_str: String,
    fstype: &'static str,
    lv: Lv,
    thin: bool,
    size: Option<&'a str>,
}

/// Check that `spec` names the root mount of an ext4/xfs filesystem on an active LV that LVM
/// can snapshot (a thin one, or a classic one with `lvm_size`).
pub fn precheck(spec: &FsSpec) -> Result<(), SnapshotError> {
    origin(spec).map(drop)
}

/// The mount `spec` names, as the kernel sees it: the root of an ext4/xfs filesystem.
fn mounted_root(spec: &FsSpec) -> Result<(PathBuf, String, MountEntry, &'static str), SnapshotError> {
    if super::has_nul(&spec.mount_point) {
        return Err(SnapshotError::Invalid {
            what: "mount point",
            value: spec.mount_point.to_string_lossy().into_owned(),
            why: "contains a NUL byte".into(),
        });
    }
    let mp = std::fs::canonicalize(&spec.mount_point).map_err(|source| {
        SnapshotError::Io(crate::sys::SysError {
            path: spec.mount_point.clone(),
            syscall: "realpath",
            source,
        })
    })?;
    let mp_str = mp
        .to_str()
        .ok_or_else(|| SnapshotError::Invalid {
            what: "mount point",
            value: mp.to_string_lossy().into_owned(),
            why: "is not UTF-8".into(),
        })?
        .to_string();

    // The mount, as the kernel sees it.
    let mfd = sys::open(&mp, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(|source| {
        SnapshotError::Io(crate::sys::SysError { path: mp.clone(), syscall: "open", source })
    })?;
    let mnt_id = sys::mnt_id_of(mfd.as_raw_fd()).map_err(|source| {
        SnapshotError::Io(crate::sys::SysError { path: mp.clone(), syscall: "statx", source })
    })?;
    let all = mountinfo()?;
    let m = all.into_iter().find(|e| e.mnt_id == mnt_id).ok_or_else(|| SnapshotError::Mismatch {
        path: mp.clone(),
        why: format!("mount id {mnt_id} is not in /proc/self/mountinfo"),
    })?;
    if m.mount_point != mp {
        return Err(SnapshotError::NotMountPoint { path: mp, mount_point: m.mount_point });
    }
    let fstype = supported_fstype(&m.fstype).ok_or_else(|| {
        SnapshotError::Unsupported(format!("{}: LVM snapshots of {} filesystems are not supported (ext2/3/4 and xfs are; use the btrfs backend for btrfs)", mp.display(), m.fstype))
    })?;
    if m.root != Path::new("/") {
        return Err(SnapshotError::Refused {
            path: mp,
            why: format!("the mount shows {} of its filesystem, not its root; an LVM snapshot covers the whole LV: name the mount of the filesystem's root", m.root.display()),
        });
    }
    Ok((mp, mp_str, m, fstype))
}

fn origin(spec: &FsSpec) -> Result<Origin<'_>, SnapshotError> {
    let (mp, mp_str, m, fstype) = mounted_root(spec)?;
    let dev = m.dev;

    // The LV.
    let lv = lv_of_mount(&m.source, dev)?.ok_or_else(|| SnapshotError::Refused {
        path: mp.clone(),
        why: format!(
            "it is mounted from {} (device {}:{}), which is not an active LVM logical volume",
            m.source,
            libc::major(dev as libc::dev_t),
            libc::minor(dev as libc::dev_t)
        ),
    })?;
    if !valid_vg_name(&lv.vg) || !valid_lv_name(&lv.name) {
        return Err(SnapshotError::Invalid {
            what: "logical volume",
            value: lv.full(),
            why: "lvs gave a name LVM itself would refuse".into(),
        });
    }
    let thin = lv.is_thin();
    if !thin && lv.is_classic_snapshot() {
        return Err(SnapshotError::Refused {
            path: mp,
            why: format!("{} is itself a classic snapshot, and LVM cannot snapshot a snapshot", lv.full()),
        });
    }
    let size = if thin { None } else { Some(cow_size(spec, &lv, mp)?) };

    Ok(Origin { mp_str, fstype, lv, thin, size })
}

/// A classic LV's snapshot size: the job's `lvm_size`, which it must have.
fn cow_size<'a>(spec: &'a FsSpec, lv: &Lv, mp: PathBuf) -> Result<&'a str, SnapshotError> {
    match spec.lvm_size.as_deref() {
        Some(s) if crate::units::valid_size(s) => Ok(s),
        Some(s) => Err(SnapshotError::Invalid { what: "lvm_size", value: s.into(), why: "is not a size like \"512M\" or \"2G\"".into() }),
        None => Err(SnapshotError::Refused {
            path: mp,
            why: format!("{} is a classic (non-thin) LV: a classic (non-thin) LV needs lvm_size in the job (the COW space of the snapshot, e.g. lvm_size = \"1G\")", lv.full()),
        }),
    }
}

pub fn take(spec: &FsSpec, id: &str, now_unix: u64) -> Result<Snapshot, SnapshotError> {
    validate_id(id)?;
    let Origin { mp_str, fstype, lv, thin, size } = origin(spec)?;
    let name = snapshot_lv_name(id);
    let vg = lv.vg.clone();
    let all_lvs = vg_lvs(&vg)?.unwrap_or_default();
    if let Some(x) = all_lvs.iter().find(|l| l.name == name) {
        return Err(SnapshotError::Refused {
            path: PathBuf::from(x.full()),
            why: format!(
                "an LV of that name already exists (UUID {}): checkpoint {id} already has a snapshot here",
                x.uuid
            ),
        });
    }
    let id_tag = format!("{TAG_ID_PREFIX}{}", tag_safe(id));
    let origin = lv.full();
    let mut args: Vec<&str> = vec!["--snapshot", "--name", &name, "--addtag", TAG, "--addtag", &id_tag];
    match size {
        None => args.extend_from_slice(&["--permission", "r"]),
        Some(s) => args.extend_from_slice(&["--size", s]),
    }
    args.push(&origin);
    run("lvcreate", &args)?;

    // Describe it; on failure remove it again.
    let made = (|| {
        let s = find_lv(&vg, &name)?.ok_or_else(|| SnapshotError::Mismatch {
            path: PathBuf::from(format!("{vg}/{name}")),
            why: "lvcreate succeeded but lvs does not show the snapshot".into(),
        })?;
        if s.origin != lv.name || s.is_thin() != thin || !s.has_tag(TAG) {
            return Err(SnapshotError::Mismatch {
                path: PathBuf::from(s.full()),
                why: format!(
                    "the new LV is not the expected snapshot of {origin} (attr {}, origin {:?})",
                    s.attr, s.origin
                ),
            });
        }
        Ok(s)
    })();
    let s = match made {
        Ok(s) => s,
        Err(e) => {
            let full = format!("{vg}/{name}");
            let _ = run("lvremove", &["--yes", &full]);
            return Err(e);
        }
    };
    Ok(Snapshot::Lvm {
        mount_point: mp_str,
        fstype: fstype.to_string(),
        vg,
        origin_lv: lv.name.clone(),
        origin_uuid: lv.uuid.clone(),
        snapshot_lv: s.name.clone(),
        snapshot_uuid: s.uuid.clone(),
        kind: if thin { LvmKind::Thin } else { LvmKind::Classic },
        created_unix: now_unix,
    })
}

// ---------------------------------------------------------------------------------------------
// the record

/// The fields of an LVM snapshot record, checked.
#[derive(Debug)]
struct Rec {
    fstype: &'static str,
    vg: String,
    snapshot_lv: String,
    uuid: String,
    thin: bool,
}

impl Rec {
    fn from(s: &Snapshot) -> Result<Rec, SnapshotError> {
        let Snapshot::Lvm { fstype, vg, snapshot_lv, snapshot_uuid, kind, .. } = s else {
            return Err(SnapshotError::Unsupported(format!("{} is not an LVM snapshot", s.describe())));
        };
        let bad = |what: &'static str, value: &str, why: &str| {
            Err(SnapshotError::Invalid { what, value: value.into(), why: why.into() })
        };
        if !valid_vg_name(vg) {
            return bad("volume group", vg, "is not a valid VG name");
        }
        if !valid_lv_name(snapshot_lv) || !snapshot_lv.starts_with(LV_PREFIX) {
            return bad("snapshot LV", snapshot_lv, "is not a snapckpt-... LV name");
        }
        if snapshot_uuid.is_empty()
            || snapshot_uuid.len() > 64
            || !snapshot_uuid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("snapshot LV UUID", snapshot_uuid, "is not an LVM UUID");
        }
        let thin = *kind == LvmKind::Thin;
        let Some(fstype) = supported_fstype(fstype) else {
            return bad("filesystem type", fstype, "is not ext2/3/4 or xfs");
        };
        Ok(Rec {
            fstype,
            vg: vg.clone(),
            snapshot_lv: snapshot_lv.clone(),
            uuid: snapshot_uuid.clone(),
            thin,
        })
    }

    fn full(&self) -> String {
        format!("{}/{}", self.vg, self.snapshot_lv)
    }

    fn clone_tag(&self) -> String {
        format!("{TAG_CLONE_OF_PREFIX}{}", self.uuid)
    }

    /// Is `lv` one of this snapshot's restart clones (name and tag)?
    fn is_clone(&self, lv: &Lv) -> bool {
        clone_number(&self.snapshot_lv, &lv.name).is_some() && lv.has_tag(&self.clone_tag())
    }
}

/// The snapshot LV (checked against the recorded UUID) and its clones, from the VG's LVs.
/// `Ok((None, clones))` when the snapshot is gone.
fn locate(rec: &Rec, lvs: &[Lv]) -> Result<(Option<Lv>, Vec<Lv>), SnapshotError> {
    let snap = match lvs.iter().find(|l| l.name == rec.snapshot_lv) {
        Some(l) if l.uuid == rec.uuid => Some(l.clone()),
        Some(l) => {
            return Err(SnapshotError::Mismatch {
                path: PathBuf::from(rec.full()),
                why: format!("LV UUID is {}, the checkpoint recorded {}; not touching it", l.uuid, rec.uuid),
            });
        }
        None => None,
    };
    let mut clones: Vec<Lv> = lvs.iter().filter(|l| rec.is_clone(l)).cloned().collect();
    clones.sort_by_key(|l| clone_number(&rec.snapshot_lv, &l.name));
    Ok((snap, clones))
}

/// Device numbers of the active LVs among `v`.
fn devs_of<'a>(v: impl IntoIterator<Item = &'a Lv>) -> Vec<u64> {
    v.into_iter().filter_map(Lv::dev).collect()
}

// ---------------------------------------------------------------------------------------------
// delete and mounted clones

/// Mount points of this snapshot's restart clones (thin) or of the snapshot itself (classic:
/// its restart mounts it), sorted.
pub fn mounted_clones(s: &Snapshot) -> Result<Vec<PathBuf>, SnapshotError> {
    let rec = Rec::from(s)?;
    let Some(lvs) = vg_lvs(&rec.vg)? else { return Ok(vec![]) };
    let (snap, clones) = locate(&rec, &lvs)?;
    let want = devs_of(snap.iter().chain(clones.iter()));
    let all = mountinfo()?;
    Ok(mount_points(&mounts_of_devs(&all, &want)))
}

/// Delete the restart clones, then the snapshot (`lvremove`).
///
/// Refused with [`SnapshotError::InUse`] while the snapshot or a clone is mounted, unless
/// `force`, which lazily unmounts them first. A snapshot (or VG) that is already gone is not an
/// error. An LV with the snapshot's name but another UUID is left alone: an error, or with
/// `force` skipped.
pub fn delete(s: &Snapshot, force: bool) -> Result<(), SnapshotError> {
    let rec = Rec::from(s)?;
    let Some(lvs) = vg_lvs(&rec.vg)? else { return Ok(()) };
    let (snap, clones) = match locate(&rec, &lvs) {
        Ok(x) => x,
        // Another LV has the snapshot's name: leave it alone, remove only our clones.
        Err(SnapshotError::Mismatch { .. }) if force => {
            (None, lvs.iter().filter(|l| rec.is_clone(l)).cloned().collect())
        }
        Err(e) => return Err(e),
    };
    let want = devs_of(snap.iter().chain(clones.iter()));
    let all = mountinfo()?;
    let mounted = mounts_of_devs(&all, &want);
    if !mounted.is_empty() {
        if !force {
            return Err(SnapshotError::InUse {
                path: PathBuf::from(rec.full()),
                mounts: mount_points(&mounted),
            });
        }
        detach_all(Path::new(&rec.full()), &want)?;
    }
    for c in clones.iter().chain(snap.iter()) {
        remove_lv(c)?;
    }
    Ok(())
}

/// `lvremove --yes VG/LV`; an LV that is gone meanwhile is not an error.
fn remove_lv(lv: &Lv) -> Result<(), SnapshotError> {
    match run("lvremove", &["--yes", &lv.full()]) {
        Ok(_) => Ok(()),
        Err(e) => match find_lv(&lv.vg, &lv.name) {
            Ok(None) => Ok(()),
            Ok(Some(x)) if x.uuid != lv.uuid => Ok(()),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests;
