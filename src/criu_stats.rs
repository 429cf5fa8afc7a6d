//! CRIU's own statistics: the `stats-dump` and `stats-restore` image files.
//!
//! CRIU writes one `StatsEntry` (criu/images/stats.proto) into the image directory at the end
//! of a dump (`stats-dump`) and of a restore (`stats-restore`): a service image (two magics,
//! `IMG_SERVICE_MAGIC` then `STATS_MAGIC`), one length-prefixed protobuf message, read with
//! [`crate::criu_image`]. `StatsEntry` = { dump = 1: `DumpStatsEntry`, restore = 2:
//! `RestoreStatsEntry` }; the times are in microseconds, the counts in pages.
//!
//! The names are CRIU's, which podman's `--print-stats` shows as they are (`freezing_time`,
//! `frozen_time`, `memdump_time`, `memwrite_time`, `pages_scanned`, `pages_written`, ...).

use crate::criu_image::{self, parse_fields, ImageError, WireValue, IMG_SERVICE_MAGIC};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The second magic of a stats image (criu/include/magic.h).
pub const STATS_MAGIC: u32 = 0x5709_3306;
pub const STATS_DUMP: &str = "stats-dump";
pub const STATS_RESTORE: &str = "stats-restore";

pub use crate::record::DumpStats;

/// `RestoreStatsEntry`: times in microseconds, counts in pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreStats {
    pub pages_compared: u64,
    pub pages_skipped_cow: u64,
    pub forking_time: u64,
    pub restore_time: u64,
    pub pages_restored: u64,
}

/// Each varint field of a message by number (the last occurrence wins, as in protobuf).
fn varints(msg: &[u8]) -> Result<std::collections::HashMap<u32, u64>, String> {
    let mut m = std::collections::HashMap::new();
    for f in parse_fields(msg)? {
        match f.value {
            WireValue::Varint(v) => {
                m.insert(f.number, v);
            }
            _ => return Err(format!("field {} is not a varint", f.number)),
        }
    }
    Ok(m)
}

/// The embedded message `number` of the `StatsEntry` in a stats image's bytes.
fn stats_part(buf: &[u8], number: u32) -> Result<Option<Vec<u8>>, String> {
    let img = criu_image::Image::parse(buf)?;
    if img.magic != [IMG_SERVICE_MAGIC, STATS_MAGIC] {
        return Err(format!("not a stats image (magic {:x?})", img.magic));
    }
    let [entry] = img.entries.as_slice() else {
        return Err(format!("{} entries, one expected", img.entries.len()));
    };
    let mut part = None;
    for f in parse_fields(entry)? {
        if f.number == number {
            match f.value {
                WireValue::Bytes(b) => part = Some(b.to_vec()),
                _ => return Err(format!("field {number} is not a message")),
            }
        }
    }
    Ok(part)
}

/// Decode a `stats-dump` image; `None` if it holds no dump part.
pub fn parse_dump(buf: &[u8]) -> Result<Option<DumpStats>, String> {
    let Some(part) = stats_part(buf, 1)? else { return Ok(None) };
    let v = varints(&part)?;
    let g = |n: u32| v.get(&n).copied().unwrap_or(0);
    Ok(Some(DumpStats {
        freezing_time: g(1),
        frozen_time: g(2),
        memdump_time: g(3),
        memwrite_time: g(4),
        pages_scanned: g(5),
        pages_skipped_parent: g(6),
        pages_written: g(7),
        irmap_resolve: g(8),
        pages_lazy: g(9),
    }))
}

/// Decode a `stats-restore` image; `None` if it holds no restore part.
pub fn parse_restore(buf: &[u8]) -> Result<Option<RestoreStats>, String> {
    let Some(part) = stats_part(buf, 2)? else { return Ok(None) };
    let v = varints(&part)?;
    let g = |n: u32| v.get(&n).copied().unwrap_or(0);
    Ok(Some(RestoreStats {
        pages_compared: g(1),
        pages_skipped_cow: g(2),
        forking_time: g(3),
        restore_time: g(4),
        pages_restored: g(5),
    }))
}

fn read(path: &Path) -> Result<Vec<u8>, ImageError> {
    let md = std::fs::symlink_metadata(path).map_err(|source| ImageError::Io {
        path: path.into(),
        op: "stat",
        source,
    })?;
    if !md.is_file() || md.len() > 1 << 20 {
        return Err(ImageError::Invalid { path: path.into(), what: "not a small regular file".into() });
    }
    std::fs::read(path).map_err(|source| ImageError::Io { path: path.into(), op: "read", source })
}

/// CRIU's dump statistics in an image directory (`stats-dump`).
pub fn read_dump(dir: &Path) -> Result<Option<DumpStats>, ImageError> {
    let p = dir.join(STATS_DUMP);
    parse_dump(&read(&p)?).map_err(|what| ImageError::Malformed { path: p, what })
}

/// CRIU's restore statistics in a directory (`stats-restore`).
pub fn read_restore(dir: &Path) -> Result<Option<RestoreStats>, ImageError> {
    let p = dir.join(STATS_RESTORE);
    parse_restore(&read(&p)?).map_err(|what| ImageError::Malformed { path: p, what })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::criu_image::put_varint;

    /// A `stats-dump` written by CRIU 4.1.1 here (a `sleep` dumped with --leave-running).
    const CRIU_DUMP: &[u8] = &[
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x21, 0x00, 0x00, 0x00, 0x0a, 0x1f, 0x08, 0xdc, 0x11,
        0x10, 0xa2, 0x3e, 0x18, 0x99, 0x03, 0x20, 0x6e, 0x28, 0x39, 0x30, 0x00, 0x38, 0x1e, 0x40, 0x00, 0x48,
        0x00, 0x50, 0x06, 0x58, 0x06, 0x60, 0x00, 0x68, 0x00, 0x70, 0x00,
    ];

    fn image(entry: &[u8]) -> Vec<u8> {
        let mut b = vec![];
        b.extend_from_slice(&IMG_SERVICE_MAGIC.to_ne_bytes());
        b.extend_from_slice(&STATS_MAGIC.to_ne_bytes());
        b.extend_from_slice(&(entry.len() as u32).to_ne_bytes());
        b.extend_from_slice(entry);
        b
    }

    #[test]
    fn criu_dump_stats() {
        let d = parse_dump(CRIU_DUMP).unwrap().unwrap();
        assert_eq!(d.freezing_time, 2268);
        assert_eq!(d.frozen_time, 7970);
        assert_eq!(d.memdump_time, 409);
        assert_eq!(d.memwrite_time, 110);
        assert_eq!((d.pages_scanned, d.pages_skipped_parent, d.pages_written), (57, 0, 30));
        // no restore part in a dump's stats
        assert_eq!(parse_restore(CRIU_DUMP).unwrap(), None);
    }

    #[test]
    fn restore_stats() {
        let mut part = vec![];
        for (n, v) in [(1u64, 10u64), (2, 2), (3, 4000), (4, 123_456), (5, 99)] {
            put_varint(&mut part, n << 3);
            put_varint(&mut part, v);
        }
        let mut entry = vec![0x12]; // field 2, length-delimited
        put_varint(&mut entry, part.len() as u64);
        entry.extend_from_slice(&part);
        let r = parse_restore(&image(&entry)).unwrap().unwrap();
        assert_eq!(
            r,
            RestoreStats {
                pages_compared: 10,
                pages_skipped_cow: 2,
                forking_time: 4000,
                restore_time: 123_456,
                pages_restored: 99
            }
        );
        assert_eq!(parse_dump(&image(&entry)).unwrap(), None);
    }

    #[test]
    fn malformed_is_an_error() {
        assert!(parse_dump(&[]).is_err());
        assert!(parse_dump(&CRIU_DUMP[..20]).is_err());
        let mut wrong = CRIU_DUMP.to_vec();
        wrong[4] ^= 1; // another image kind
        assert!(parse_dump(&wrong).is_err());
        // dump part not a message
        assert!(parse_dump(&image(&[0x08, 0x01])).is_err());
        assert!(read_dump(Path::new("/nonexistent")).is_err());
    }
}

#[cfg(test)]
mod record_tests {
    /// A record written before the write-back and CRIU statistics fields still loads.
    #[test]
    fn old_records_load() {
        let old = include_str!("../fuzz/seeds/checkpoint_json/criu-btrfs-snapshot.json");
        assert!(!old.contains("writeback_ms"));
        let ck: crate::record::Checkpoint = serde_json::from_str(old).unwrap();
        assert_eq!((ck.timings.writeback_rounds, ck.timings.criu.clone()), (0, None));
        // and the new fields round-trip
        let mut ck = ck;
        ck.timings.criu = Some(super::DumpStats { frozen_time: 7, ..Default::default() });
        ck.timings.writeback_bytes = 5;
        let back: crate::record::Checkpoint =
            serde_json::from_str(&serde_json::to_string(&ck).unwrap()).unwrap();
        assert_eq!(back, ck);
    }
}
