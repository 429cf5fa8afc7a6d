//! Where an imported checkpoint came from (`snapckpt import`, see `crate::migrate`): the
//! source host, kernel and mount points, and the snapshots as they were there. For
//! information and for the restart checks; the rest of the record is already in the target's
//! terms (mount points mapped, snapshots received here).
//!
//! The field is optional (`#[serde(default)]`): records without it, written before migration
//! existed, are still version 1 and load unchanged.

use super::Snapshot;
use serde::{Deserialize, Serialize};

/// One mount point of the source and the mount point of the same filesystem on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountMap {
    pub source: String,
    pub target: String,
}

/// The origin of an imported checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Imported {
    /// Hostname and kernel release (`uname -r`) of the exporting machine.
    pub from_host: String,
    pub from_kernel: String,
    pub imported_unix: u64,
    /// Only the record and the process image travelled (shared storage).
    pub image_only: bool,
    /// The checkpoint an incremental stream was relative to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Source mount point -> this machine's.
    pub mounts: Vec<MountMap>,
    /// The snapshots as recorded on the source.
    pub source_snapshots: Vec<Snapshot>,
}

impl Imported {
    /// The source mount point that `target` (a mount point on this machine) stands for.
    pub fn source_of(&self, target: &str) -> Option<&str> {
        self.mounts.iter().find(|m| m.target == target).map(|m| m.source.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::good;
    use crate::record::Checkpoint;

    /// A record without `imported` (written before migration existed) still loads as version
    /// 1 and is written without the field; one with it round-trips.
    #[test]
    fn optional_and_version_1() {
        let ck = good();
        let json = serde_json::to_value(&ck).unwrap();
        assert!(json.get("imported").is_none());
        let back: Checkpoint = serde_json::from_value(json).unwrap();
        assert_eq!(back, ck);
        let mut ck2 = ck.clone();
        ck2.imported = Some(Imported {
            from_host: "a".into(),
            from_kernel: "6.18.0".into(),
            imported_unix: 1,
            image_only: false,
            parent: None,
            mounts: vec![MountMap { source: "/a".into(), target: "/b".into() }],
            source_snapshots: ck.snapshots.clone(),
        });
        let s = serde_json::to_string(&ck2).unwrap();
        let back: Checkpoint = serde_json::from_str(&s).unwrap();
        assert_eq!(back, ck2);
        assert_eq!(back.version, crate::record::VERSION);
        assert!(back.validate(std::path::Path::new("x")).is_ok());
        assert_eq!(ck2.imported.unwrap().source_of("/b"), Some("/a"));
        // unknown keys inside it are refused like anywhere in the record
        let bad = s.replace("\"from_host\"", "\"bogus\":1,\"from_host\"");
        assert!(serde_json::from_str::<Checkpoint>(&bad).is_err());
    }
}
