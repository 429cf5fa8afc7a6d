//! `snapckpt list`: one row per checkpoint of an image root, like `snapper list`: id, when it
//! was taken (and how long ago), engine, job, tasks, unlinked objects and their data, the
//! snapshots, and its state. The state is looked up on the machine, not only read from the
//! record:
//!
//! | state | meaning |
//! |---|---|
//! | `ok` | restartable as recorded |
//! | `consumed` | no snapshot, and its relinked names are gone (a restart used them) |
//! | `names-missing` | no snapshot, and some of its relinked names are gone |
//! | `snapshot-missing` | a recorded snapshot no longer exists |
//! | `mounted` | a restart clone of one of its snapshots is mounted |
//! | `tasks-running` / `tasks-stopped` | CRIU left the dumped tasks running / frozen |
//! | `unreadable` | the record cannot be read (`error` says why) |

use super::{age, human_bytes, printable, utc};
use crate::image;
use crate::record::{Checkpoint, Engine, Snapshot};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One row of `list` (and one element of `list --json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub id: String,
    pub path: PathBuf,
    pub created_unix: u64,
    /// `YYYY-MM-DD HH:MM:SS` UTC.
    pub created: String,
    pub age: String,
    /// `files` (files only) or `criu VERSION`.
    pub engine: String,
    pub job: Option<String>,
    pub tasks: usize,
    pub objects: usize,
    /// Sum of the sizes of the unlinked objects.
    pub unlinked_bytes: u64,
    /// The same in binary units.
    pub unlinked: String,
    pub snapshots: usize,
    /// `btrfs`, `lvm` per snapshot.
    pub snapshot_backends: Vec<String>,
    /// Every state that applies (see the module doc); `["ok"]` when none.
    pub state: Vec<String>,
    /// Restart clones mounted, where.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounted: Vec<PathBuf>,
    /// Why the record cannot be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why `list` cannot list.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("image root {} does not exist (no checkpoint was taken there; give --image-root DIR or env SNAPCKPT_IMAGE_ROOT)", .0.display())]
    NoRoot(PathBuf),
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// The rows of `root`, oldest first. A root that does not exist is an error.
pub fn rows(root: &Path, now: u64) -> Result<Vec<Row>, ListError> {
    if !root.exists() {
        return Err(ListError::NoRoot(root.to_path_buf()));
    }
    Ok(image::list(root)?
        .into_iter()
        .map(|(p, r)| match r {
            Ok(ck) => row(&p, &ck, now),
            Err(e) => unreadable(&p, &e.to_string()),
        })
        .collect())
}

fn unreadable(p: &Path, e: &str) -> Row {
    Row {
        id: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        path: p.to_path_buf(),
        created_unix: 0,
        created: String::new(),
        age: String::new(),
        engine: String::new(),
        job: None,
        tasks: 0,
        objects: 0,
        unlinked_bytes: 0,
        unlinked: String::new(),
        snapshots: 0,
        snapshot_backends: vec![],
        state: vec!["unreadable".into()],
        mounted: vec![],
        error: Some(e.to_string()),
    }
}

/// The engine column: `files` or `criu VERSION`.
pub fn engine_name(e: &Engine) -> String {
    match e {
        Engine::None => "files".into(),
        Engine::Criu { version, .. } if version.is_empty() => "criu".into(),
        Engine::Criu { version, .. } => format!("criu {version}"),
    }
}

/// The row of a readable checkpoint.
pub fn row(p: &Path, ck: &Checkpoint, now: u64) -> Row {
    let mut mounted = vec![];
    for s in &ck.snapshots {
        mounted.extend(crate::snapshot::clones_in_use(s).unwrap_or_default());
    }
    let unlinked_bytes = ck.objects.iter().map(|o| o.size).sum();
    Row {
        id: ck.id.clone(),
        path: p.to_path_buf(),
        created_unix: ck.created_unix,
        created: utc(ck.created_unix),
        age: age(ck.created_unix, now),
        engine: engine_name(&ck.engine),
        job: ck.job.clone(),
        tasks: ck.tasks.len(),
        objects: ck.objects.len(),
        unlinked_bytes,
        unlinked: human_bytes(unlinked_bytes),
        snapshots: ck.snapshots.len(),
        snapshot_backends: ck.snapshots.iter().map(backend).collect(),
        state: states(ck, !mounted.is_empty()),
        mounted,
        error: None,
    }
}

fn backend(s: &Snapshot) -> String {
    match s {
        Snapshot::Btrfs { .. } => "btrfs".into(),
        Snapshot::Lvm { .. } => "lvm".into(),
    }
}

/// Whether a recorded snapshot is still there. A btrfs snapshot whose origin is not mounted
/// (its path cannot be seen) counts as there.
pub fn snapshot_exists(s: &Snapshot) -> bool {
    match s {
        // `<mount>/<snapshot_dir>/<id>/snapshot`: without the snapshot directory the origin
        // is not mounted here, and nothing can be told.
        Snapshot::Btrfs { path, .. } => {
            let p = Path::new(path);
            p.exists() || !p.parent().and_then(Path::parent).is_some_and(Path::exists)
        }
        // A thin snapshot is inactive (activation skip): it has no device node; ask LVM.
        Snapshot::Lvm { vg, snapshot_lv, .. } => {
            let lvs = ["/usr/sbin/lvs", "/sbin/lvs"].into_iter().find(|p| Path::new(p).exists());
            match lvs {
                Some(lvs) => std::process::Command::new(lvs)
                    .args(["--noheadings", "-o", "lv_name", &format!("{vg}/{snapshot_lv}")])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .map(|st| st.success())
                    .unwrap_or(true),
                None => true,
            }
        }
    }
}

/// How many of the checkpoint's relinked names are on the live filesystems, of how many.
pub fn live_names(ck: &Checkpoint) -> (usize, usize) {
    let mut found = 0;
    let mut all = 0;
    for (o, r) in ck.relinked() {
        all += 1;
        let p = Path::new(&o.mount.mount_point).join(&r.rel_path);
        if std::fs::symlink_metadata(p).is_ok() {
            found += 1;
        }
    }
    (found, all)
}

/// The states of a checkpoint (see the module doc).
pub fn states(ck: &Checkpoint, clone_mounted: bool) -> Vec<String> {
    let mut st = vec![];
    if ck.snapshots.is_empty() {
        let (found, all) = live_names(ck);
        if all > 0 && found == 0 {
            st.push("consumed");
        } else if found < all {
            st.push("names-missing");
        }
    } else if ck.snapshots.iter().any(|s| !snapshot_exists(s)) {
        st.push("snapshot-missing");
    }
    if clone_mounted {
        st.push("mounted");
    }
    if let Engine::Criu { leave_running, leave_stopped, .. } = &ck.engine {
        if *leave_running {
            st.push("tasks-running");
        } else if *leave_stopped {
            st.push("tasks-stopped");
        }
    }
    if st.is_empty() {
        st.push("ok");
    }
    st.into_iter().map(String::from).collect()
}

/// The columns of the `list` table.
pub const HEADER: [&str; 9] =
    ["ID", "CREATED", "AGE", "ENGINE", "JOB", "TASKS", "UNLINKED", "SNAPSHOTS", "STATE"];

/// The `list` table: a header and one line per checkpoint; an unreadable image is a line
/// `PATH  (unreadable: ERROR)` after the table.
pub fn render(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .filter(|r| r.error.is_none())
        .map(|r| {
            let snaps = if r.snapshots == 0 { "-".to_string() } else { r.snapshot_backends.join(",") };
            vec![
                r.id.clone(),
                r.created.clone(),
                r.age.clone(),
                r.engine.clone(),
                r.job.as_deref().map(printable).unwrap_or_else(|| "-".into()),
                r.tasks.to_string(),
                format!("{} ({})", r.unlinked, r.objects),
                snaps,
                r.state.join(","),
            ]
        })
        .collect();
    let mut out = super::table(&HEADER, &cells, &["TASKS", "UNLINKED"]);
    for r in rows.iter().filter(|r| r.error.is_some()) {
        out.push_str(&format!("{}  (unreadable: {})\n", r.path.display(), r.error.as_deref().unwrap_or("")));
    }
    out
}
