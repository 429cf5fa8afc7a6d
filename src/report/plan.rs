//! `take --dry-run`: exactly what a take would do, step by step, in the words `scan` and the
//! record use (`orphan`, `removed-dir`, `btrfs`): the freeze, per unlinked object the relink
//! that will happen (hard link, reflink clone, a copy of so many bytes, recreate) and where,
//! the bytes to copy on each filesystem against its free space, the user hooks, the
//! snapshots, the CRIU dump and what then happens to the tasks (killed, left running or
//! frozen, thawed), the removal of the live names, and where the image goes.

use super::{human_bytes, kebab, printable};
use crate::record::{Coverage, FileKind, Object, Unlinked};
use crate::take::{AfterDump, EngineOpts, Plan, TakeOptions};
use crate::userhooks::Point;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write;

/// What the take will do with `o` under plan `p`, and how many bytes it will copy.
pub fn action(p: &Plan, o: &Object) -> (String, u64) {
    let carried = p
        .coverage
        .iter()
        .any(|c| c.mount_point == o.mount.mount_point && c.coverage == Coverage::EngineCarries);
    if carried {
        return ("not relinked: CRIU carries it in the process image (memory filesystem)".into(), 0);
    }
    relink_action(o)
}

/// What the relink will do with `o`, and how many bytes it will copy.
pub fn relink_action(o: &Object) -> (String, u64) {
    // the data segments: at most what is allocated
    let data = o.size.min(o.allocated);
    match (o.kind, o.class) {
        (FileKind::Directory, _) => ("recreate the directory (mode and owner)".into(), 0),
        (_, Unlinked::RemovedNode) => (format!("recreate the {} node (mode, owner, rdev)", o.kind.name()), 0),
        (_, Unlinked::Tmpfile) => ("hard link (an O_TMPFILE file can be linked)".into(), 0),
        (_, Unlinked::NameGone) => ("hard link to the same inode".into(), 0),
        _ => match reflink_supported(&o.mount.mount_point) {
            Some(true) => ("reflink clone (FICLONE): no data copied".into(), 0),
            Some(false) => {
                (format!("copy {} of data (holes skipped) into a new inode", human_bytes(data)), data)
            }
            None => (
                format!("reflink clone if the filesystem allows it, else copy {} of data", human_bytes(data)),
                data,
            ),
        },
    }
}

/// Whether the filesystem mounted at `mount_point` (snapckpt's view) clones files: FICLONE
/// between two anonymous O_TMPFILE inodes, which vanish on close (nothing is changed). `None`
/// when it cannot be told (no O_TMPFILE there).
pub fn reflink_supported(mount_point: &str) -> Option<bool> {
    const FICLONE: libc::c_ulong = 0x40049409;
    let tmp = || crate::sys::open(mount_point, libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC, 0o600).ok();
    let (a, b) = (tmp()?, tmp()?);
    use std::os::fd::AsRawFd;
    // SAFETY: ioctl(FICLONE) between two descriptors we hold.
    Some(unsafe { libc::ioctl(b.as_raw_fd(), FICLONE as _, a.as_raw_fd()) } == 0)
}

/// Free bytes for unprivileged and privileged writers of the filesystem at `path` (root may
/// use the reserved blocks).
fn free_bytes(path: &str) -> Option<u64> {
    let c = crate::sys::cstr(path).ok()?;
    // SAFETY: statvfs into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bfree as u64 * st.f_frsize as u64)
}

/// The plan as JSON: the steps, and per object what will happen to it.
pub fn json(opts: &TakeOptions, p: &Plan) -> Value {
    let objects: Vec<Value> = p
        .scan
        .objects
        .iter()
        .map(|o| {
            let (would, bytes) = action(p, o);
            let mut v = serde_json::to_value(o).unwrap_or_default();
            v["would"] = would.into();
            v["bytes_to_copy"] = bytes.into();
            v["into"] = into(o).into();
            v
        })
        .collect();
    let snapshots: Vec<Value> =
        p.snapshots.iter().map(|s| json!({ "mount_point": s.mount_point, "backend": s.backend })).collect();
    let space: Vec<Value> = space(p)
        .into_iter()
        .map(|(m, (need, free))| json!({ "mount_point": m, "bytes_to_copy": need, "free_bytes": free }))
        .collect();
    json!({
        "dry_run": true,
        "freezer": p.freezer,
        "pids": p.pids,
        "tasks": p.scan.tasks,
        "objects": objects,
        "space": space,
        "snapshots": snapshots,
        "coverage": p.coverage,
        "steps": steps(opts, p),
    })
}

fn into(o: &Object) -> String {
    format!("{}/{}", o.mount.mount_point.trim_end_matches('/'), crate::relink::CHECKPOINT_DIR)
}

/// Bytes to copy and free bytes, per mount point.
fn space(p: &Plan) -> BTreeMap<String, (u64, Option<u64>)> {
    let mut m: BTreeMap<String, (u64, Option<u64>)> = BTreeMap::new();
    for o in &p.scan.objects {
        let e = m.entry(o.mount.mount_point.clone()).or_insert((0, free_bytes(&o.mount.mount_point)));
        e.0 += action(p, o).1;
    }
    m
}

/// The steps of the take, in order, as sentences.
pub fn steps(opts: &TakeOptions, p: &Plan) -> Vec<String> {
    let mut s = vec![];
    let hooks = |s: &mut Vec<String>, pt: Point| {
        for c in opts.hooks.commands(pt) {
            s.push(format!("run the {} hook {}", pt.name(), c.join(" ")));
        }
    };
    hooks(&mut s, Point::PreTake);
    s.push(format!("freeze {} task(s) with {}: {:?}", p.pids.len(), p.freezer, p.pids));
    hooks(&mut s, Point::PostFreeze);
    let n = p.scan.objects.iter().filter(|o| !action(p, o).0.starts_with("not relinked")).count();
    if n > 0 {
        s.push(format!("relink {n} unlinked object(s) into lost+found/checkpoint of their filesystems"));
    }
    for c in &p.coverage {
        let why = c.why.as_deref().map(|w| format!(" ({w})")).unwrap_or_default();
        match c.coverage {
            Coverage::NamesKept => s.push(format!(
                "leave {} ({}) without a snapshot{why}: its relinked names stay on it and a restart consumes them (one-shot)",
                c.mount_point, c.fstype
            )),
            Coverage::EngineCarries => s.push(format!(
                "leave the unlinked files of {} ({}) to CRIU, in the process image",
                c.mount_point, c.fstype
            )),
            Coverage::Snapshot | Coverage::Live => {}
        }
    }
    let snaps: Vec<String> =
        p.snapshots.iter().map(|x| format!("{} ({})", x.mount_point.display(), kebab(&x.backend))).collect();
    match &opts.engine {
        EngineOpts::Criu { path, after, .. } => {
            let root = p.scan.tasks.iter().find(|t| !p.pids.contains(&t.ppid)).map(|t| t.pid).unwrap_or(0);
            s.push(format!(
                "dump the process tree of pid {root} with CRIU {} ({} relinked file(s) declared external: no file data in the image)",
                path.display(),
                n
            ));
            if !snaps.is_empty() {
                s.push(format!("at CRIU's post-dump, tasks still frozen: snapshot {}", snaps.join(", ")));
            }
            hooks(&mut s, Point::PostSnapshot);
            s.push(image_step(opts));
            s.push(match after {
                AfterDump::Kill => "then kill the tasks (SIGKILL): restart brings them back".into(),
                AfterDump::Run => "then thaw the tasks: they go on running".into(),
                AfterDump::Stop => "then leave the tasks frozen (take prints how to resume them)".into(),
            });
        }
        EngineOpts::None => {
            if !snaps.is_empty() {
                s.push(format!("snapshot {}", snaps.join(", ")));
            }
            hooks(&mut s, Point::PostSnapshot);
            s.push(image_step(opts));
            s.push("then thaw the tasks: they go on running (no process image)".into());
        }
    }
    if !p.snapshots.is_empty() && n > 0 {
        s.push(if opts.keep_links {
            "keep the relinked names on the live filesystems (--keep-links)".into()
        } else {
            "remove the relinked names from the snapshotted live filesystems (the snapshots keep them)".into()
        });
    }
    hooks(&mut s, Point::PostTake);
    s
}

fn image_step(opts: &TakeOptions) -> String {
    format!("write the record and publish the image as {}/<id>", opts.image_root.display())
}

/// The plan as text: the steps, then one line per object, then the space needed.
pub fn render(opts: &TakeOptions, p: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "dry run: a take would");
    for (i, st) in steps(opts, p).iter().enumerate() {
        let _ = writeln!(out, "  {}. {st}", i + 1);
    }
    for o in &p.scan.objects {
        let (action, _) = action(p, o);
        let _ = writeln!(
            out,
            "  would relink {} ({}, {}, {}) into {}: {action}",
            printable(&o.original_path),
            kebab(&o.class),
            o.kind.name(),
            human_bytes(o.size),
            into(o)
        );
    }
    for s in &p.snapshots {
        let _ = writeln!(out, "  would snapshot {} with {}", s.mount_point.display(), kebab(&s.backend));
    }
    for (m, (need, free)) in space(p) {
        if need == 0 {
            continue;
        }
        let free_s = free.map(human_bytes).unwrap_or_else(|| "unknown".into());
        let warn =
            if free.is_some_and(|f| f < need) { "  NOT ENOUGH SPACE: the take would fail" } else { "" };
        let _ = writeln!(out, "  {m}: {} to copy, {free_s} free{warn}", human_bytes(need));
    }
    if p.scan.objects.is_empty() {
        let _ = writeln!(out, "  no unlinked files");
    }
    out
}
