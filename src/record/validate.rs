//! Validation of a checkpoint record, one function per part: the header, the objects (and
//! their relinked names), the tasks (pids, fds, offsets, object references) and the snapshots.
//! A record may only name its own files and snapshots: names made by its own template for its
//! own id, snapshots that carry its id, mount points that are normalized absolute paths.

use super::names::{self, normalized_abs, Template, CHECKPOINT_DIR, SNAPSHOT_NAME};
use super::{Checkpoint, FileKind, Object, Snapshot, Task, FORMAT, MAX_FD, VERSION};

/// Why a record is refused.
pub(super) enum Problem {
    Version(u32),
    Invalid(String),
}

type Check = Result<(), Problem>;

fn bad(msg: String) -> Check {
    Err(Problem::Invalid(msg))
}

fn not_normalized(what: &str, v: &str) -> String {
    format!("{what} {v:?} is not a normalized absolute path (no '.', '..', '//' or NUL)")
}

pub(super) fn checkpoint(ck: &Checkpoint) -> Check {
    header(ck)?;
    let template = template(ck)?;
    for (i, o) in ck.objects.iter().enumerate() {
        object(i, o, &ck.id, template.as_ref(), &ck.template)?;
    }
    for t in &ck.tasks {
        task(t, ck.objects.len())?;
    }
    for (k, s) in ck.snapshots.iter().enumerate() {
        snapshot(k, s, &ck.id)?;
    }
    Ok(())
}

fn header(ck: &Checkpoint) -> Check {
    if ck.format != FORMAT {
        return bad(format!("format is {:?}, expected {FORMAT:?}", ck.format));
    }
    if ck.version != VERSION {
        return Err(Problem::Version(ck.version));
    }
    if !names::valid_id(&ck.id) {
        return bad(format!("checkpoint id {:?} has characters outside [A-Za-z0-9._-]", ck.id));
    }
    if ck.created_ns.is_some_and(|ns| ns >= 1_000_000_000) {
        return bad(format!("created_ns {:?} is not below one second", ck.created_ns));
    }
    Ok(())
}

/// The names of this checkpoint are the ones its own template makes for its own id.
fn template(ck: &Checkpoint) -> Result<Option<Template>, Problem> {
    if !ck.objects.iter().any(|o| o.relinked.is_some()) {
        return Ok(None);
    }
    Template::parse(&ck.template).map(Some).map_err(|e| Problem::Invalid(format!("template: {e}")))
}

fn object(i: usize, o: &Object, id: &str, template: Option<&Template>, raw_template: &str) -> Check {
    if o.index != i {
        return bad(format!("object {i} says it is object {}", o.index));
    }
    if !o.mount.mount_point.starts_with('/') {
        return bad(format!("object {i}: mount point {:?} is not absolute", o.mount.mount_point));
    }
    if !normalized_abs(&o.mount.mount_point) {
        return bad(format!("object {i}: {}", not_normalized("mount point", &o.mount.mount_point)));
    }
    let actual = FileKind::from_mode(o.mode);
    if o.kind != actual {
        return bad(format!(
            "object {i}: kind is {:?} but its mode {:o} is that of a {}",
            o.kind.name(),
            o.mode,
            actual.name()
        ));
    }
    if let Some(h) = o.holders.iter().find(|h| h.pid <= 0) {
        return bad(format!("object {i}: holder pid {} is not a process id (must be > 0)", h.pid));
    }
    let Some(r) = &o.relinked else { return Ok(()) };
    if !names::plain_name(&r.name) {
        return bad(format!("object {i}: relinked name {:?} is not a plain file name", r.name));
    }
    if r.rel_path != names::relinked_rel_path(&r.name) {
        return bad(format!("object {i}: relinked path {:?} is not under {CHECKPOINT_DIR}", r.rel_path));
    }
    let Some(t) = template else { return Ok(()) };
    match t.match_id(&r.name) {
        Some(m) if m == id => Ok(()),
        Some(m) => bad(format!(
            "object {i}: relinked name {:?} is a name of checkpoint {m}, not of this checkpoint {id}: a record may only name its own files",
            r.name
        )),
        None => bad(format!(
            "object {i}: relinked name {:?} is not a name of checkpoint {id} (template {raw_template:?}): a record may only name its own files",
            r.name
        )),
    }
}

fn task(t: &Task, n: usize) -> Check {
    let refers = |o: Option<usize>, what: &str| -> Check {
        match o {
            Some(i) if i >= n => bad(format!("{what} refers to object {i}, but there are {n}")),
            _ => Ok(()),
        }
    };
    if t.pid <= 0 {
        return bad(format!("task pid {} is not a process id (must be > 0)", t.pid));
    }
    if t.ppid < 0 {
        return bad(format!("task {}: parent pid {} is negative", t.pid, t.ppid));
    }
    if let Some(p) = t.ns_pid.filter(|&p| p <= 0) {
        return bad(format!(
            "task {}: pid {p} in its own pid namespace is not a process id (must be > 0)",
            t.pid
        ));
    }
    if let Some(tid) = t.threads.iter().find(|&&tid| tid <= 0) {
        return bad(format!("task {}: thread id {tid} is not a thread id (must be > 0)", t.pid));
    }
    for f in &t.fds {
        if f.fd < 0 {
            return bad(format!("task {}: negative fd {}", t.pid, f.fd));
        }
        if f.fd > MAX_FD {
            return bad(format!(
                "task {}: fd {} is above {MAX_FD}, the largest fd number Linux allows by default (fs.nr_open)",
                t.pid, f.fd
            ));
        }
        if f.pos > i64::MAX as u64 {
            return bad(format!(
                "task {} fd {}: file position {} is beyond the largest file offset (2^63-1)",
                t.pid, f.fd, f.pos
            ));
        }
        refers(f.object, &format!("task {} fd {}", t.pid, f.fd))?;
    }
    for m in &t.maps {
        if m.pgoff > i64::MAX as u64 {
            return bad(format!(
                "task {} mapping {:x}: file offset {} is beyond the largest file offset (2^63-1)",
                t.pid, m.start, m.pgoff
            ));
        }
        refers(m.object, &format!("task {} mapping {:x}", t.pid, m.start))?;
    }
    for r in [&t.cwd, &t.root, &t.exe].into_iter().flatten() {
        refers(r.object, &format!("task {} {}", t.pid, r.path))?;
    }
    Ok(())
}

fn snapshot(k: usize, s: &Snapshot, id: &str) -> Check {
    if !s.mount_point().starts_with('/') {
        return bad(format!("snapshot mount point {:?} is not absolute", s.mount_point()));
    }
    if !normalized_abs(s.mount_point()) {
        return bad(format!("snapshot {k}: {}", not_normalized("mount point", s.mount_point())));
    }
    match s {
        Snapshot::Btrfs { path, fs_path, .. } => {
            for (field, v) in [("path", path), ("fs_path", fs_path)] {
                btrfs_snapshot_path(k, field, v, id)?;
            }
            Ok(())
        }
        Snapshot::Lvm { vg, snapshot_lv, .. } => {
            let own = names::snapshot_lv_name(id);
            if *snapshot_lv != own {
                return bad(format!(
                    "snapshot {k}: snapshot_lv {vg}/{snapshot_lv} is not the snapshot LV of this checkpoint ({own}); it may be the snapshot of another checkpoint: a record may only name its own snapshots"
                ));
            }
            Ok(())
        }
    }
}

fn btrfs_snapshot_path(k: usize, field: &str, v: &str, id: &str) -> Check {
    if !normalized_abs(v) {
        return bad(format!("snapshot {k}: {}", not_normalized(field, v)));
    }
    let mut comps = v.rsplit('/');
    let (last, owner) = (comps.next(), comps.next());
    let (Some(SNAPSHOT_NAME), Some(owner)) = (last, owner) else {
        return bad(format!("snapshot {k}: {field} {v:?} does not end in <checkpoint id>/{SNAPSHOT_NAME}"));
    };
    if owner != id {
        return bad(format!(
            "snapshot {k}: {field} {v:?} is the snapshot of another checkpoint ({owner}), not of this checkpoint {id}: a record may only name its own snapshots"
        ));
    }
    Ok(())
}
