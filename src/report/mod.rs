//! What the CLI shows about checkpoints, as data and as text: one row per checkpoint for
//! `list` ([`list`]), one checkpoint in full for `inspect` ([`inspect`]), a take's plan for
//! `take --dry-run` ([`plan`]) and the unlinked files of `scan` ([`scan`]). Each builds a
//! serializable value (what `--json` prints) and renders the same fields as a table or text.
//!
//! The helpers here format the units every report shares: sizes in binary units, ages, UTC
//! times, column tables.

pub mod inspect;
pub mod list;
pub mod plan;
pub mod scan;

/// `restart --json`: what was restored.
pub fn restarted_json(id: &str, r: &crate::restart::Restarted) -> serde_json::Value {
    let mounts: Vec<serde_json::Value> = r
        .mounts
        .iter()
        .map(|m| serde_json::json!({ "target": m.target, "clone": m.clone_path, "description": m.description }))
        .collect();
    serde_json::json!({
        "id": id,
        "mounts": mounts,
        "private_mount_namespace": r.private_ns,
        "objects": r.objects,
        "pids": r.pids,
        "pid_namespace": r.pid_ns.as_ref().map(|n| serde_json::json!({ "init": n.init, "host_pids": n.host_pids })),
        "notes": r.notes,
        "exec_status": r.exec_status,
        "left_in_place": r.left_in_place,
    })
}

/// `gc --json`: what was (or would be) removed and what was left alone.
pub fn gc_json(o: &crate::config::GcOptions, rep: &crate::cleanup::GcReport) -> serde_json::Value {
    let ckdir = crate::relink::CHECKPOINT_DIR;
    let names: Vec<serde_json::Value> = rep
        .stale
        .iter()
        .flat_map(|(id, v)| {
            v.iter().map(move |(m, n)| serde_json::json!({ "id": id, "path": m.join(ckdir).join(n) }))
        })
        .collect();
    let snaps: Vec<serde_json::Value> = rep
        .stale_snapshots
        .iter()
        .map(|(id, s)| serde_json::json!({ "id": id, "snapshot": s.describe() }))
        .collect();
    let unknown: Vec<_> = rep.unknown.iter().map(|(m, n)| m.join(ckdir).join(n)).collect();
    serde_json::json!({
        "dry_run": o.dry_run,
        "image_root": o.image_root,
        "mounts_searched": o.mounts,
        "names": names,
        "partial_images": rep.partial_dirs,
        "snapshots": snaps,
        "kept_live_names": rep.kept,
        "not_template_names": unknown,
        "unclaimed": rep.unclaimed,
    })
}

/// A byte count in binary units: `0 B`, `512 B`, `1.5 KiB`, `400 MiB`, `2.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    match u {
        0 => format!("{n} B"),
        _ if v < 10.0 => format!("{v:.1} {}", UNITS[u]),
        _ => format!("{v:.0} {}", UNITS[u]),
    }
}

/// How long ago `then` was, at `now`, in the largest whole unit: `42s`, `5m`, `3h`, `2d`.
pub fn age(then: u64, now: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// A unix time as `YYYY-MM-DD HH:MM:SS` (UTC).
pub fn utc(secs: u64) -> String {
    let c = crate::sys::utc_compact(secs); // YYYYmmddTHHMMSSZ
    format!("{}-{}-{} {}:{}:{}", &c[0..4], &c[4..6], &c[6..8], &c[9..11], &c[11..13], &c[13..15])
}

/// A path or name for a one-line-per-entry table: control characters escaped.
pub fn printable(p: &str) -> String {
    p.chars().map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() }).collect()
}

/// The name serde gives an enum value (the word in the JSON record: `name-gone`, `copy-range`).
pub fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v).ok().and_then(|x| x.as_str().map(str::to_string)).unwrap_or_default()
}

/// Lay out rows under a header, each column as wide as its widest cell; the last column is
/// not padded. Columns named in `right` are right-aligned.
pub fn table(header: &[&str], rows: &[Vec<String>], right: &[&str]) -> String {
    let n = header.len();
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = w[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right.contains(&header[i]) {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < n {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(400 << 20), "400 MiB");
        assert_eq!(human_bytes(2 << 30), "2.0 GiB");
        assert_eq!(age(100, 142), "42s");
        assert_eq!(age(0, 7200), "2h");
        assert_eq!(age(0, 3 * 86400), "3d");
        assert_eq!(age(10, 5), "0s");
        assert_eq!(utc(0), "1970-01-01 00:00:00");
    }

    #[test]
    fn tables_align() {
        let t = table(&["ID", "SIZE", "PATH"], &[vec!["a".into(), "1 B".into(), "/x".into()]], &["SIZE"]);
        assert_eq!(t, "ID  SIZE  PATH\na    1 B  /x\n");
    }
}
