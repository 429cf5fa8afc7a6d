//! The snapshot plan of a take: which filesystems the tasks use, and for each, how it is
//! covered ([`Coverage`]): snapshotted (the job's `[[filesystem]]` entries, and with
//! `--snapshot BACKEND` every filesystem that backend can snapshot), its unlinked files carried
//! by CRIU (tmpfs), its relinked names kept on the live filesystem (a persistent filesystem no
//! snapshot covers: the checkpoint is then one-shot there), or read live at restart.

use super::{EngineOpts, TakeError, TakeOptions};
use crate::record::{Coverage, FsCoverage, MountRef};
use crate::scan::Scan;
use crate::snapshot::{self, FsSpec};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What the plan decided.
#[derive(Debug, Clone, Default)]
pub struct SnapshotPlan {
    /// The snapshots to take.
    pub specs: Vec<FsSpec>,
    /// One decision per filesystem the tasks use, for the record.
    pub coverage: Vec<FsCoverage>,
}

impl SnapshotPlan {
    /// Whether CRIU carries the unlinked files of the mount at `mount_point`.
    pub fn engine_carries(&self, mount_point: &str) -> bool {
        self.coverage.iter().any(|c| c.mount_point == mount_point && c.coverage == Coverage::EngineCarries)
    }
}

/// Memory filesystems: their files vanish with the machine anyway; CRIU can carry them.
fn memory_fs(fstype: &str) -> bool {
    matches!(fstype, "tmpfs" | "ramfs" | "hugetlbfs")
}

/// Kernel pseudo filesystems: nothing on them is data a snapshot could keep.
fn pseudo_fs(fstype: &str) -> bool {
    matches!(
        fstype,
        "proc"
            | "sysfs"
            | "devtmpfs"
            | "devpts"
            | "cgroup"
            | "cgroup2"
            | "mqueue"
            | "bpf"
            | "tracefs"
            | "debugfs"
            | "securityfs"
            | "pstore"
            | "configfs"
            | "fusectl"
            | "binfmt_misc"
            | "autofs"
            | "efivarfs"
            | "nsfs"
            | "pipefs"
            | "sockfs"
            | "anon_inodefs"
            | "selinuxfs"
    )
}

/// Decide, for every filesystem the tasks use, how it is covered; check each snapshot can be
/// taken before anything is relinked. A job's `[[filesystem]]` that cannot be snapshotted is
/// refused; one that `--snapshot BACKEND` cannot is kept live, or refused with `strict`.
pub fn plan(opts: &TakeOptions, sc: &Scan) -> Result<SnapshotPlan, TakeError> {
    let mut specs = opts.filesystems.clone();
    for spec in &specs {
        snapshot::precheck(spec)?;
    }
    let mut mounts: BTreeMap<String, MountRef> = BTreeMap::new();
    for m in sc.mounts.iter().chain(sc.objects.iter().map(|o| &o.mount)) {
        mounts.entry(m.mount_point.clone()).or_insert_with(|| m.clone());
    }
    let with_objects = |mp: &str| sc.objects.iter().any(|o| o.mount.mount_point == mp);
    let criu = matches!(opts.engine, EngineOpts::Criu { .. });
    let mut coverage = vec![];
    for (mp, m) in mounts {
        if pseudo_fs(&m.fstype) {
            continue;
        }
        let mut c = FsCoverage {
            mount_point: mp.clone(),
            fstype: m.fstype.clone(),
            dev: m.dev,
            coverage: Coverage::Live,
            why: None,
        };
        let explicit = specs.iter().any(|s| s.mount_point.as_os_str() == mp.as_str());
        if explicit {
            c.coverage = Coverage::Snapshot;
        } else if memory_fs(&m.fstype) {
            c.coverage = match (criu, with_objects(&mp)) {
                (true, true) => Coverage::EngineCarries,
                (false, true) => Coverage::NamesKept,
                (_, false) => Coverage::Live,
            };
        } else if let Some(b) = opts.auto_snapshot {
            let spec =
                FsSpec { mount_point: PathBuf::from(&mp), backend: b, snapshot_dir: None, lvm_size: None };
            match snapshot::precheck(&spec) {
                Ok(()) => {
                    c.coverage = Coverage::Snapshot;
                    specs.push(spec);
                }
                // A snapshot directory (or a path to it) that someone other than root could
                // change: not a filesystem the backend cannot snapshot, but a boundary.
                Err(e @ snapshot::SnapshotError::Refused { .. }) => return Err(e.into()),
                Err(e) if opts.strict_snapshots => {
                    return Err(TakeError::Strict { mount_point: mp, why: e.to_string() });
                }
                Err(e) => c.why = Some(e.to_string()),
            }
        }
        if c.coverage == Coverage::Live && with_objects(&mp) {
            c.coverage = Coverage::NamesKept;
        }
        coverage.push(c);
    }
    Ok(SnapshotPlan { specs, coverage })
}

/// The notes a user should read about a plan: filesystems left without a snapshot.
pub fn notes(plan: &SnapshotPlan, asked: bool) -> Vec<String> {
    let mut out = vec![];
    for c in &plan.coverage {
        match (c.coverage, &c.why) {
            (Coverage::NamesKept, _) => out.push(format!(
                "{} ({}): no snapshot; its relinked names stay on the live filesystem, so a restart consumes them (one-shot){}",
                c.mount_point,
                c.fstype,
                c.why.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
            )),
            (Coverage::EngineCarries, _) => out.push(format!(
                "{} ({}): memory filesystem; CRIU carries its unlinked files in the process image",
                c.mount_point, c.fstype
            )),
            (Coverage::Live, Some(why)) if asked => out.push(format!(
                "{} ({}): no snapshot ({why}); a restart reads its files as they are then",
                c.mount_point, c.fstype
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_kinds() {
        assert!(memory_fs("tmpfs") && !memory_fs("btrfs"));
        assert!(pseudo_fs("proc") && pseudo_fs("devpts") && !pseudo_fs("ext4") && !pseudo_fs("tmpfs"));
    }
}
