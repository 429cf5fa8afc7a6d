//! `snapckpt inspect ID`: one checkpoint in full, like `checkpointctl show`: its summary (the
//! `list` row), the process tree, every unlinked object (kind, class, original and relinked
//! path, method, size, holders), the snapshots (and whether they are there, and mounted), the
//! CRIU and kernel versions, the stage timings and the relink statistics.

use super::list::{self, Row};
use super::{human_bytes, kebab, printable};
use crate::record::{Checkpoint, Engine, Snapshot, Task, Timings};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// Everything `inspect` shows (and `inspect --json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct Inspected {
    #[serde(flatten)]
    pub summary: Row,
    pub hostname: String,
    pub selection: String,
    pub freezer: String,
    pub template: String,
    pub kernel: Option<String>,
    pub criu: Option<CriuInfo>,
    pub links_removed: bool,
    pub process_tree: Vec<TreeNode>,
    pub unlinked: Vec<UnlinkedObject>,
    pub snapshot_list: Vec<SnapshotInfo>,
    pub timings: Timings,
    pub statistics: Statistics,
}

#[derive(Debug, Clone, Serialize)]
pub struct CriuInfo {
    pub version: String,
    pub after_dump: &'static str,
    pub image_files: usize,
}

/// A task and the tasks it is the parent of.
#[derive(Debug, Clone, Serialize)]
pub struct TreeNode {
    pub pid: i32,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub threads: usize,
    pub fds: usize,
    pub maps: usize,
    pub children: Vec<TreeNode>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnlinkedObject {
    pub index: usize,
    pub kind: String,
    pub class: String,
    pub original_path: String,
    /// Absolute path of the relinked name, in the tasks' view of the mount.
    pub relinked_path: Option<String>,
    pub method: Option<String>,
    pub size: u64,
    pub allocated: u64,
    pub bytes_copied: u64,
    pub mount_point: String,
    pub fstype: String,
    /// `PID fd 3`, `PID map 7f..-7f..`, `PID cwd`.
    pub holders: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub backend: String,
    pub mount_point: String,
    pub description: String,
    pub exists: bool,
    pub mounted_clones: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Statistics {
    pub tasks: usize,
    pub threads: usize,
    pub fds: usize,
    pub maps: usize,
    pub objects: usize,
    /// Objects by relink method (`link`, `clone`, `copy-range`, ...).
    pub methods: BTreeMap<String, usize>,
    pub unlinked_bytes: u64,
    pub bytes_copied: u64,
}

/// What `inspect` shows about checkpoint `ck` of image directory `dir`.
pub fn inspect(dir: &Path, ck: &Checkpoint, now: u64) -> Inspected {
    let criu = match &ck.engine {
        Engine::None => None,
        Engine::Criu { version, leave_running, leave_stopped, images, .. } => Some(CriuInfo {
            version: version.clone(),
            after_dump: if *leave_running {
                "left running"
            } else if *leave_stopped {
                "left frozen"
            } else {
                "killed"
            },
            image_files: images.len(),
        }),
    };
    Inspected {
        summary: list::row(dir, ck, now),
        hostname: ck.hostname.clone(),
        selection: ck.selection.clone(),
        freezer: ck.freezer.to_string(),
        template: ck.template.clone(),
        kernel: ck.kernel.clone(),
        criu,
        links_removed: ck.links_removed,
        process_tree: tree(&ck.tasks),
        unlinked: ck.objects.iter().map(unlinked).collect(),
        snapshot_list: ck.snapshots.iter().map(snapshot).collect(),
        timings: ck.timings.clone(),
        statistics: statistics(ck),
    }
}

/// The tasks as trees: roots are the tasks whose parent was not checkpointed.
pub fn tree(tasks: &[Task]) -> Vec<TreeNode> {
    fn node(t: &Task, tasks: &[Task]) -> TreeNode {
        TreeNode {
            pid: t.pid,
            comm: t.comm.clone(),
            cmdline: t.cmdline.clone(),
            threads: t.threads.len(),
            fds: t.fds.len(),
            maps: t.maps.len(),
            children: tasks
                .iter()
                .filter(|c| c.ppid == t.pid && c.pid != t.pid)
                .map(|c| node(c, tasks))
                .collect(),
        }
    }
    tasks
        .iter()
        .filter(|t| !tasks.iter().any(|p| p.pid == t.ppid && p.pid != t.pid))
        .map(|t| node(t, tasks))
        .collect()
}

fn unlinked(o: &crate::record::Object) -> UnlinkedObject {
    let mp = o.mount.mount_point.trim_end_matches('/');
    UnlinkedObject {
        index: o.index,
        kind: o.kind.name().into(),
        class: kebab(&o.class),
        original_path: o.original_path.clone(),
        relinked_path: o.relinked.as_ref().map(|r| format!("{mp}/{}", r.rel_path)),
        method: o.relinked.as_ref().map(|r| kebab(&r.method)),
        size: o.size,
        allocated: o.allocated,
        bytes_copied: o.relinked.as_ref().map(|r| r.bytes_copied).unwrap_or(0),
        mount_point: o.mount.mount_point.clone(),
        fstype: o.mount.fstype.clone(),
        holders: o.holders.iter().map(|h| format!("{} {}", h.pid, h.what)).collect(),
    }
}

fn snapshot(s: &Snapshot) -> SnapshotInfo {
    SnapshotInfo {
        backend: match s {
            Snapshot::Btrfs { .. } => "btrfs".into(),
            Snapshot::Lvm { .. } => "lvm".into(),
        },
        mount_point: s.mount_point().into(),
        description: s.describe(),
        exists: list::snapshot_exists(s),
        mounted_clones: crate::snapshot::clones_in_use(s).unwrap_or_default(),
    }
}

fn statistics(ck: &Checkpoint) -> Statistics {
    let mut st = Statistics {
        tasks: ck.tasks.len(),
        threads: ck.tasks.iter().map(|t| t.threads.len()).sum(),
        fds: ck.tasks.iter().map(|t| t.fds.len()).sum(),
        maps: ck.tasks.iter().map(|t| t.maps.len()).sum(),
        objects: ck.objects.len(),
        unlinked_bytes: ck.objects.iter().map(|o| o.size).sum(),
        ..Statistics::default()
    };
    for (_, r) in ck.relinked() {
        *st.methods.entry(kebab(&r.method)).or_default() += 1;
        st.bytes_copied += r.bytes_copied;
    }
    st
}

/// `inspect` as text: sections like `checkpointctl show`.
pub fn render(i: &Inspected) -> String {
    let mut o = String::new();
    let s = &i.summary;
    let _ = writeln!(o, "checkpoint {}", s.id);
    let _ = writeln!(o, "  image:      {}", s.path.display());
    let _ = writeln!(o, "  created:    {} UTC ({} ago) on {}", s.created, s.age, i.hostname);
    let _ = writeln!(o, "  job:        {}", s.job.as_deref().unwrap_or("-"));
    let _ = writeln!(o, "  state:      {}", s.state.join(", "));
    let _ = writeln!(o, "  selection:  {} (frozen with {})", i.selection, i.freezer);
    let _ = writeln!(o, "  engine:     {}", s.engine);
    if let Some(c) = &i.criu {
        let _ = writeln!(
            o,
            "  criu:       {} ({} image files; tasks {} after the dump)",
            c.version, c.image_files, c.after_dump
        );
    }
    let _ = writeln!(o, "  kernel:     {}", i.kernel.as_deref().unwrap_or("(not recorded)"));
    let _ = writeln!(o, "  template:   {}", i.template);
    let _ = writeln!(o, "\nprocess tree ({} task(s)):", i.statistics.tasks);
    fn walk(o: &mut String, n: &TreeNode, depth: usize) {
        let cmd = if n.cmdline.is_empty() { n.comm.clone() } else { printable(&n.cmdline.join(" ")) };
        let _ = writeln!(
            o,
            "  {}{} {}  [{} thread(s), {} fd(s), {} mapping(s)]",
            "  ".repeat(depth),
            n.pid,
            cmd,
            n.threads,
            n.fds,
            n.maps
        );
        n.children.iter().for_each(|c| walk(o, c, depth + 1));
    }
    i.process_tree.iter().for_each(|n| walk(&mut o, n, 0));
    render_objects(&mut o, i);
    let _ = writeln!(o, "\nsnapshots ({}):", i.snapshot_list.len());
    for sn in &i.snapshot_list {
        let mounted = sn.mounted_clones.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        let _ = writeln!(
            o,
            "  {} of {}{}{}",
            sn.description,
            sn.mount_point,
            if sn.exists { "" } else { " (MISSING)" },
            if mounted.is_empty() {
                String::new()
            } else {
                format!(" (clones mounted at {})", mounted.join(", "))
            }
        );
    }
    let t = &i.timings;
    let _ = writeln!(
        o,
        "\ntimings: freeze {} ms, scan {} ms, relink {} ms, snapshot {} ms, dump {} ms; frozen {} ms",
        t.freeze_ms, t.scan_ms, t.relink_ms, t.snapshot_ms, t.dump_ms, t.frozen_ms
    );
    let st = &i.statistics;
    let methods: Vec<String> = st.methods.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let _ = writeln!(
        o,
        "statistics: {} task(s), {} thread(s), {} fd(s), {} mapping(s); {} unlinked object(s), {} ({}), {} copied",
        st.tasks,
        st.threads,
        st.fds,
        st.maps,
        st.objects,
        human_bytes(st.unlinked_bytes),
        if methods.is_empty() { "none relinked".into() } else { methods.join(", ") },
        human_bytes(st.bytes_copied)
    );
    o
}

fn render_objects(o: &mut String, i: &Inspected) {
    let _ = writeln!(o, "\nunlinked objects ({}):", i.unlinked.len());
    let rows: Vec<Vec<String>> = i
        .unlinked
        .iter()
        .map(|u| {
            vec![
                u.index.to_string(),
                u.kind.clone(),
                u.class.clone(),
                u.method.clone().unwrap_or_else(|| "-".into()),
                human_bytes(u.size),
                u.holders.join(", "),
                printable(&u.original_path),
                u.relinked_path.as_deref().map(printable).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let t = super::table(
        &["#", "KIND", "CLASS", "METHOD", "SIZE", "HELD BY", "ORIGINAL", "RELINKED AS"],
        &rows,
        &["SIZE"],
    );
    for l in t.lines() {
        let _ = writeln!(o, "  {l}");
    }
}
