//! `snapckpt scan` as a table: one line per holder of an unlinked object, columns as wide as
//! their widest cell (a `map START-END` holder does not push the row out of line), sizes in
//! binary units, and a footer that tells the tasks scanned from the tasks listed.

use super::{human_bytes, kebab, printable, table};
use crate::scan::Scan;
use std::collections::BTreeSet;

/// The scan table and its footer.
pub fn render(sc: &Scan) -> String {
    let mut rows = vec![];
    for o in &sc.objects {
        for h in &o.holders {
            rows.push(vec![
                h.pid.to_string(),
                h.what.to_string(),
                kebab(&o.class),
                kebab(&o.kind),
                o.nlink.to_string(),
                human_bytes(o.size),
                printable(&o.mount.mount_point),
                printable(&o.original_path),
            ]);
        }
    }
    let mut out = table(
        &["PID", "HOLDS", "CLASS", "KIND", "NLINK", "SIZE", "MOUNT", "PATH"],
        &rows,
        &["NLINK", "SIZE"],
    );
    let holding: BTreeSet<i32> = sc.objects.iter().flat_map(|o| o.holders.iter().map(|h| h.pid)).collect();
    let bytes: u64 = sc.objects.iter().map(|o| o.size).sum();
    out.push_str(&format!(
        "{} task(s) scanned, {} holding unlinked files; {} unlinked object(s), {}\n",
        sc.tasks.len(),
        holding.len(),
        sc.objects.len(),
        human_bytes(bytes)
    ));
    out
}
