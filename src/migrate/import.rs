//! `snapckpt import`: an export stream made into a local checkpoint.
//!
//! 1. **plan**: the record (the stream's first member) is validated and checked against this
//!    machine before anything is written: every filesystem it names has a target mount (a
//!    btrfs subvolume root), nothing of this checkpoint id exists here yet, the parent of an
//!    incremental stream was imported here and its snapshots are still there;
//! 2. **spool** every member into `<image-root>/.<id>.partial` (CRIU files as files, send
//!    streams still compressed), each checked against its trailer's SHA-256;
//! 3. **receive** each snapshot with `btrfs receive` into `<mount>/<snapshot_dir>/.<id>.receiving-PID`
//!    and rename that directory to `<mount>/<snapshot_dir>/<id>` (the read-only `snapshot` in it,
//!    its `received_uuid` the source snapshot's UUID);
//! 4. **publish** the record in the target's terms and rename the image into place.
//!
//! Any failure removes what was received and the partial image: a stream cut short or
//! corrupted leaves nothing behind.

use super::lvm;
use super::stream::{self, Kind, MemberHeader, Reader, StreamHeader};
use super::{bt_err, io_err, map_record, MigrateError};
use crate::image::{self, ImageDir};
use crate::record::imported::{self as imp, MountMap};
use crate::record::{names, Checkpoint, Snapshot, RECORD_FILE};
use crate::snapshot::{self, Backend, FsSpec};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `BTRFS_ROOT_SUBVOL_RDONLY`.
const ROOT_SUBVOL_RDONLY: u64 = 1;

/// Where the stream comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

/// A resolved `import`.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    pub input: Input,
    pub image_root: PathBuf,
    /// `--mount [SRC=]DST`: the target mount of each source mount point (SRC may be left out
    /// when the stream names one filesystem).
    pub mounts: Vec<(Option<String>, PathBuf)>,
    pub progress: bool,
}

/// What an import made.
#[derive(Debug)]
pub struct Imported {
    pub dir: PathBuf,
    pub record: Checkpoint,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Imported {
    pub fn summary(&self) -> Vec<String> {
        let ck = &self.record;
        let mut v = vec![format!(
            "imported checkpoint {} into {} ({} bytes in {:.1} s)",
            ck.id,
            self.dir.display(),
            self.bytes,
            self.elapsed.as_secs_f64()
        )];
        if let Some(i) = &ck.imported {
            for m in &i.mounts {
                v.push(format!("  {} on {} is {} here", m.source, i.from_host, m.target));
            }
        }
        for s in &ck.snapshots {
            v.push(format!("  snapshot: {}", s.describe()));
        }
        v
    }
}

/// The target of one snapshot (by index in the record).
#[derive(Debug, Clone)]
struct Target {
    /// Mount point on the source.
    source: String,
    /// This machine's mount point (canonical), its device and mounted subvolume.
    mount: PathBuf,
    mount_str: String,
    device: String,
    origin_id: u64,
    origin_path: String,
    /// The snapshot directory, relative to the mount, as on the source (btrfs).
    sdir: String,
    /// An LVM snapshot: the target mount's thin LV.
    lvm: Option<lvm::TargetLv>,
}

/// A snapshot at its final place: a btrfs subvolume, or an LVM thin LV.
enum Placed {
    Btrfs(PathBuf),
    Lvm(lvm::Lv),
}

struct Plan {
    targets: Vec<Target>,
    maps: Vec<MountMap>,
}

/// Import a stream.
pub fn import(opts: &ImportOptions) -> Result<Imported, MigrateError> {
    let t0 = Instant::now();
    let input: Box<dyn Read> = match &opts.input {
        Input::Stdin => Box::new(std::io::stdin().lock()),
        Input::File(f) => Box::new(std::fs::File::open(f).map_err(io_err(f, "open"))?),
    };
    let bar = crate::ui::byte_spinner(opts.progress);
    let b2 = bar.clone();
    let r = (|| {
        let mut rd = Reader::new(
            std::io::BufReader::with_capacity(1 << 20, input),
            Box::new(move |n| b2.set_position(n)),
        )?;
        let head = rd.header().clone();
        let ck = read_record(&mut rd, &head)?;
        let plan = plan(&ck, &head, opts)?;
        let mut img = ImageDir::create(&opts.image_root, &ck.id)?;
        let sends = spool(&mut rd, &ck, &head, img.path())?;
        crate::hooks::point("import-spooled");
        let bytes = rd.offset();
        let mut got = Received::default();
        let placed = place(&ck, &head, &plan, &sends, &mut got)?;
        crate::hooks::point("import-received");
        let rec = new_record(ck, &head, &plan, &placed)?;
        rec.validate(&img.path().join(RECORD_FILE))?;
        if matches!(rec.engine, crate::record::Engine::Criu { .. }) {
            super::paths::rewrite_image_paths(img.path(), &plan.maps)?;
        }
        for s in sends.iter().flatten() {
            std::fs::remove_file(&s.0).map_err(io_err(&s.0, "unlink"))?;
        }
        let dir = img.publish(&rec)?;
        got.keep();
        Ok(Imported { dir, record: rec, bytes, elapsed: t0.elapsed() })
    })();
    bar.finish_and_clear();
    r
}

/// The first member: the record, validated.
fn read_record<R: Read>(rd: &mut Reader<R>, head: &StreamHeader) -> Result<Checkpoint, MigrateError> {
    let h = rd.next_member()?.ok_or_else(|| MigrateError::Refused("the stream holds no record".into()))?;
    if h.kind != Kind::Record {
        return Err(MigrateError::Refused(format!(
            "the stream's first member is {:?}, not the record",
            h.kind
        )));
    }
    let mut buf = Vec::new();
    let limited = MemberHeader {
        length: Some(h.length.unwrap_or(image::MAX_RECORD_BYTES).min(image::MAX_RECORD_BYTES)),
        ..h
    };
    rd.member_data(&limited, &mut std::io::sink(), &mut buf)?;
    let what = PathBuf::from(format!("<stream>/{RECORD_FILE}"));
    let ck: Checkpoint = serde_json::from_slice(&buf)
        .map_err(|e| image::ImageError::Invalid { path: what.clone(), msg: e.to_string() })?;
    ck.validate(&what)?;
    if ck.id != head.checkpoint_id {
        return Err(MigrateError::Refused(format!(
            "the stream header names checkpoint {}, its record is of {}: the stream is corrupt",
            head.checkpoint_id, ck.id
        )));
    }
    Ok(ck)
}

/// Everything checked before anything is written.
fn plan(ck: &Checkpoint, head: &StreamHeader, opts: &ImportOptions) -> Result<Plan, MigrateError> {
    let here = opts.image_root.join(&ck.id);
    if here.exists() {
        return Err(MigrateError::Refused(format!(
            "checkpoint {} is already in {} (imported before?): `snapckpt delete {}` first; nothing was imported",
            ck.id,
            opts.image_root.display(),
            ck.id
        )));
    }
    let partial = opts.image_root.join(image::State::Partial.name(&ck.id));
    if partial.exists() {
        return Err(MigrateError::Refused(format!(
            "{} exists: an import (or take) of checkpoint {} is running or died here; if none runs, `snapckpt gc --mount MOUNT --image-root {}` removes what it left; nothing was imported",
            partial.display(),
            ck.id,
            opts.image_root.display()
        )));
    }
    let sources = source_mounts(ck, head)?;
    let mut maps = vec![];
    for s in &sources {
        let t = target_for(s, &sources, &opts.mounts)?;
        maps.push(MountMap { source: s.clone(), target: t.to_string_lossy().into_owned() });
    }
    for (src, dst) in &opts.mounts {
        if let Some(src) = src.as_ref().filter(|s| !sources.contains(*s)) {
            return Err(MigrateError::Refused(format!(
                "--mount {src}={}: the stream has no filesystem at {src} (it has {})",
                dst.display(),
                list(&sources)
            )));
        }
    }
    let mut targets = vec![];
    for (k, s) in ck.snapshots.iter().enumerate() {
        let target = maps.iter().find(|m| m.source == s.mount_point()).map(|m| PathBuf::from(&m.target));
        targets.push(check_target(ck, k, s, &target.unwrap_or_default(), head.image_only)?);
    }
    if let Some(p) = &head.parent {
        check_parent(ck, p, &opts.image_root, &targets)?;
    }
    Ok(Plan { targets, maps })
}

fn list(v: &BTreeSet<String>) -> String {
    v.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// The source mount points that need a target: those of the snapshots and of the preserved
/// objects, which (unless image-only) must be snapshotted filesystems, with their paths under
/// their mount points.
fn source_mounts(ck: &Checkpoint, head: &StreamHeader) -> Result<BTreeSet<String>, MigrateError> {
    let mut v: BTreeSet<String> = ck.snapshots.iter().map(|s| s.mount_point().to_string()).collect();
    for (o, _) in ck.relinked() {
        let mp = &o.mount.mount_point;
        if !head.image_only && !v.contains(mp) {
            return Err(MigrateError::Refused(format!(
                "the record names object {} ({}) on {mp}, a filesystem this stream does not carry: it names paths outside the target; nothing was imported",
                o.index, o.original_path
            )));
        }
        if !super::is_under(&o.original_path, mp) {
            return Err(MigrateError::Refused(format!(
                "the record names object {} at {}, outside its filesystem {mp}: it names paths outside the target; nothing was imported",
                o.index, o.original_path
            )));
        }
    }
    v.extend(ck.relinked().map(|(o, _)| o.mount.mount_point.clone()));
    Ok(v)
}

/// The target mount for source mount point `s`.
fn target_for(
    s: &str,
    all: &BTreeSet<String>,
    given: &[(Option<String>, PathBuf)],
) -> Result<PathBuf, MigrateError> {
    let t = given.iter().find(|(src, _)| src.as_deref() == Some(s)).map(|(_, d)| d.clone());
    let plain: Vec<&PathBuf> = given.iter().filter(|(src, _)| src.is_none()).map(|(_, d)| d).collect();
    let t = match (t, plain.as_slice()) {
        (Some(t), _) => t,
        (None, [one]) if all.len() == 1 => (*one).clone(),
        _ => {
            return Err(MigrateError::Refused(format!(
                "no target for {s}: the stream's filesystems are {}; give --mount SRC=DST for each (--mount DST alone is for a stream of one filesystem)",
                list(all)
            )))
        }
    };
    std::fs::canonicalize(&t).map_err(io_err(&t, "realpath"))
}

/// Snapshot `k` can be received (or, image-only, is already there) at `target`.
fn check_target(
    ck: &Checkpoint,
    k: usize,
    s: &Snapshot,
    target: &Path,
    image_only: bool,
) -> Result<Target, MigrateError> {
    let Snapshot::Btrfs { mount_point, path, uuid, .. } = s else {
        let t = lvm::check_target(s, &ck.id, target, image_only)?;
        return Ok(Target {
            source: s.mount_point().into(),
            mount: target.into(),
            mount_str: target.to_string_lossy().into_owned(),
            device: t.origin.dm_path.clone(),
            origin_id: 0,
            origin_path: String::new(),
            sdir: String::new(),
            lvm: Some(t),
        });
    };
    let sdir = path
        .strip_prefix(mount_point.trim_end_matches('/'))
        .and_then(|r| r.strip_prefix('/'))
        .and_then(|r| r.strip_suffix(&format!("/{}/{}", ck.id, names::SNAPSHOT_NAME)))
        .filter(|d| snapshot::validate_snapshot_dir(d).is_ok())
        .ok_or_else(|| {
            MigrateError::Refused(format!(
                "snapshot {k}: {path} is not <mount point>/<snapshot dir>/{}/snapshot under its mount point {mount_point}: the record names paths outside the target; nothing was imported",
                ck.id
            ))
        })?;
    let spec = FsSpec {
        mount_point: target.into(),
        backend: Backend::Btrfs,
        snapshot_dir: Some(sdir.into()),
        lvm_size: None,
    };
    snapshot::btrfs::precheck(&spec)?;
    let entry = snapshot::mountinfo()?
        .into_iter()
        .rev()
        .find(|e| e.mount_point == target && e.fstype == "btrfs")
        .ok_or_else(|| MigrateError::Refused(format!("{} is not a btrfs mount", target.display())))?;
    let origin = libbtrfsutil::subvolume_info(target).map_err(bt_err(target, "subvolume info"))?;
    let rel = libbtrfsutil::subvolume_path(target).map_err(bt_err(target, "subvolume path"))?;
    check_place(&target.join(sdir).join(&ck.id), &ck.id, target, mount_point, uuid, image_only)?;
    Ok(Target {
        source: mount_point.clone(),
        mount: target.into(),
        mount_str: target.to_string_lossy().into_owned(),
        device: entry.source.clone(),
        origin_id: origin.id(),
        origin_path: format!("/{}", rel.to_string_lossy().trim_start_matches('/')),
        sdir: sdir.into(),
        lvm: None,
    })
}

/// Image-only: the snapshot is already at `id_dir/snapshot` (shared storage, same UUID);
/// otherwise nothing of this checkpoint may be there yet.
fn check_place(
    id_dir: &Path,
    id: &str,
    target: &Path,
    mount_point: &str,
    uuid: &str,
    image_only: bool,
) -> Result<(), MigrateError> {
    if image_only {
        let snap = id_dir.join(names::SNAPSHOT_NAME);
        match libbtrfsutil::subvolume_info(&snap) {
            Ok(i) if i.uuid().to_string().eq_ignore_ascii_case(uuid) => {}
            other => {
                let why = other
                    .map(|i| format!("subvolume {} is there", i.uuid()))
                    .unwrap_or_else(|e| e.to_string());
                return Err(MigrateError::Refused(format!(
                    "image-only stream: the snapshot {uuid} of {mount_point} must already be at {} (shared storage), but {why}; export without --image-only to send it",
                    snap.display()
                )));
            }
        }
    } else if id_dir.symlink_metadata().is_ok() {
        return Err(MigrateError::Refused(format!(
            "{} exists: checkpoint {} already has a snapshot directory on this filesystem (left by an import that died? `snapckpt gc --mount {}` removes it); nothing was imported",
            id_dir.display(),
            id,
            target.display()
        )));
    }
    Ok(())
}

/// An incremental stream: the parent was imported into this image root and each of its
/// snapshots the stream is relative to is still there, on the filesystem this snapshot goes to
/// (`btrfs receive` looks for the parent there only).
fn check_parent(
    ck: &Checkpoint,
    p: &stream::ParentRef,
    root: &Path,
    targets: &[Target],
) -> Result<(), MigrateError> {
    let missing = |why: String| {
        MigrateError::Refused(format!(
            "this stream is incremental: it holds only what changed since checkpoint {}, which must be here first, but {why}: import {} first (`snapckpt export {} | snapckpt import`), or export {} without --parent; nothing was imported",
            p.id, p.id, p.id, ck.id
        ))
    };
    let dir = root.join(&p.id);
    let parent = image::load(&dir).map_err(|e| missing(format!("it is not in {} ({e})", root.display())))?;
    let Some(pi) = &parent.imported else {
        return Err(missing(format!("{} in {} was not imported", p.id, root.display())));
    };
    for (k, u) in p.snapshot_uuids.iter().enumerate() {
        let j = pi
            .source_snapshots
            .iter()
            .position(|s| matches!(s, Snapshot::Btrfs { uuid, .. } if uuid.eq_ignore_ascii_case(u)));
        let Some(Snapshot::Btrfs { path, device, mount_point, .. }) = j.and_then(|j| parent.snapshots.get(j))
        else {
            return Err(missing(format!("it has no snapshot received from {u} (for snapshot {k})")));
        };
        if let Some(t) = targets.get(k).filter(|t| t.lvm.is_none() && &t.device != device) {
            return Err(missing(format!(
                "it was imported into the filesystem at {mount_point} ({device}), and this stream goes to {} ({}): import this stream with --mount {mount_point}",
                t.mount.display(),
                t.device
            )));
        }
        let ok = libbtrfsutil::subvolume_info(path)
            .ok()
            .and_then(|i| i.received_uuid())
            .is_some_and(|r| r.to_string().eq_ignore_ascii_case(u));
        if !ok {
            return Err(missing(format!(
                "its snapshot {path} (received from {u}) is no longer on this filesystem"
            )));
        }
    }
    Ok(())
}

/// A spooled send stream: its file (compressed) and SHA-256 of its bytes.
type Spooled = Option<(PathBuf, String)>;

/// Every member after the record, verified, into the partial image directory.
fn spool<R: Read>(
    rd: &mut Reader<R>,
    ck: &Checkpoint,
    head: &StreamHeader,
    dir: &Path,
) -> Result<Vec<Spooled>, MigrateError> {
    let mut sends: Vec<Spooled> = vec![None; ck.snapshots.len()];
    let mut files = BTreeSet::new();
    while let Some(h) = rd.next_member()? {
        match h.kind {
            Kind::CriuFile => {
                if !names::plain_name(&h.name)
                    || h.name == RECORD_FILE
                    || h.name.starts_with('.')
                    || !files.insert(h.name.clone())
                {
                    return Err(MigrateError::Refused(format!(
                        "the stream holds a CRIU file named {:?}: not a plain file name, or twice",
                        h.name
                    )));
                }
                let p = dir.join(&h.name);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(io_err(&p, "open"))?;
                rd.member_data(&h, &mut std::io::sink(), &mut f)?;
            }
            Kind::BtrfsSend | Kind::LvmBlocks => {
                let fits = |k: usize| match ck.snapshots[k] {
                    Snapshot::Btrfs { .. } => h.kind == Kind::BtrfsSend,
                    Snapshot::Lvm { .. } => h.kind == Kind::LvmBlocks,
                };
                let k = h.snapshot.filter(|&k| k < sends.len() && sends[k].is_none() && !head.image_only && fits(k)).ok_or_else(|| {
                    MigrateError::Refused(format!("the stream holds a {:?} member for snapshot {:?}, which its record does not expect", h.kind, h.snapshot))
                })?;
                let p = dir.join(format!(".send-{k}.zst"));
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(io_err(&p, "open"))?;
                let t = rd.member_data(&h, &mut f, &mut std::io::sink())?;
                f.sync_all().map_err(io_err(&p, "fsync"))?;
                sends[k] = Some((p, t.sha256));
            }
            Kind::Record => return Err(MigrateError::Refused("the stream holds a second record".into())),
        }
    }
    if let Some(k) = (0..sends.len()).find(|&k| sends[k].is_none() && !head.image_only) {
        return Err(MigrateError::Refused(format!(
            "the stream holds no send stream for snapshot {k} ({}): it is incomplete",
            ck.snapshots[k].mount_point()
        )));
    }
    Ok(sends)
}

/// What was received; removed on drop unless kept.
#[derive(Default)]
struct Received {
    subvols: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    /// LVs made (`VG/LV`).
    lvs: Vec<String>,
    kept: bool,
}

impl Received {
    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        lvm::remove(&self.lvs);
        for s in self.subvols.iter().rev() {
            delete_subvolume(s);
        }
        for d in self.dirs.iter().rev() {
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    delete_subvolume(&e.path());
                }
            }
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Delete a subvolume (made writable first), or a plain directory tree.
fn delete_subvolume(p: &Path) {
    if libbtrfsutil::subvolume_info(p).is_ok() {
        let _ = libbtrfsutil::set_subvolume_read_only(p, false);
        if libbtrfsutil::delete_subvolume(p).is_ok() {
            return;
        }
    }
    let _ = std::fs::remove_dir_all(p);
}

/// The snapshots at their final paths: received, or (image-only) found on shared storage.
fn place(
    ck: &Checkpoint,
    head: &StreamHeader,
    plan: &Plan,
    sends: &[Spooled],
    got: &mut Received,
) -> Result<Vec<Placed>, MigrateError> {
    let mut out = vec![];
    for (k, t) in plan.targets.iter().enumerate() {
        let id_dir = t.mount.join(&t.sdir).join(&ck.id);
        match (&sends[k], &t.lvm) {
            (None, _) if head.image_only => out.push(Placed::Btrfs(id_dir.join(names::SNAPSHOT_NAME))),
            (None, _) => return Err(MigrateError::Refused(format!("no send stream for snapshot {k}"))),
            (Some((spool, sha)), Some(l)) => {
                out.push(Placed::Lvm(lvm::receive(l, &ck.id, spool, sha, &mut got.lvs)?))
            }
            (Some((spool, sha)), None) => {
                let Snapshot::Btrfs { uuid, .. } = &ck.snapshots[k] else { unreachable!("checked by plan") };
                out.push(Placed::Btrfs(receive(t, &ck.id, spool, sha, uuid, got)?));
            }
        }
    }
    Ok(out)
}

/// `btrfs receive` one spooled stream into a temporary directory of the target filesystem,
/// check what arrived, move it to `<id>/snapshot`.
fn receive(
    t: &Target,
    id: &str,
    spool: &Path,
    sha: &str,
    uuid: &str,
    got: &mut Received,
) -> Result<PathBuf, MigrateError> {
    let sdir = t.mount.join(&t.sdir);
    crate::sys::trusted_dirs(&sdir, true)
        .map_err(|why| MigrateError::Refused(format!("snapshot directory {}: {why}", sdir.display())))?;
    remove_stale_receives(&sdir, id);
    let tmp = sdir.join(format!(".{id}.receiving-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&tmp).map_err(io_err(&tmp, "mkdir"))?;
    got.dirs.push(tmp.clone());
    run_receive(&tmp, spool, sha)?;
    let entries: Vec<PathBuf> =
        std::fs::read_dir(&tmp).map_err(io_err(&tmp, "opendir"))?.flatten().map(|e| e.path()).collect();
    let [sub] = entries.as_slice() else {
        return Err(MigrateError::Refused(format!(
            "btrfs receive made {} entries in {}, expected one subvolume",
            entries.len(),
            tmp.display()
        )));
    };
    let info = libbtrfsutil::subvolume_info(sub).map_err(bt_err(sub, "subvolume info"))?;
    let received = info.received_uuid().map(|u| u.to_string()).unwrap_or_default();
    if info.flags() & ROOT_SUBVOL_RDONLY == 0 || !received.eq_ignore_ascii_case(uuid) {
        return Err(MigrateError::Refused(format!(
            "{}: the received subvolume is not the read-only snapshot {uuid} (received uuid {received:?})",
            sub.display()
        )));
    }
    if sub.file_name() != Some(std::ffi::OsStr::new(names::SNAPSHOT_NAME)) {
        return Err(MigrateError::Refused(format!(
            "{}: the received subvolume is not named {}",
            sub.display(),
            names::SNAPSHOT_NAME
        )));
    }
    // A read-only subvolume cannot be moved to another directory (its ".." would change):
    // the temporary directory holding it is renamed instead.
    let id_dir = sdir.join(id);
    if id_dir.symlink_metadata().is_ok() {
        return Err(MigrateError::Refused(format!("{} appeared during the import", id_dir.display())));
    }
    std::fs::rename(&tmp, &id_dir).map_err(io_err(&id_dir, "rename"))?;
    got.dirs.push(id_dir.clone());
    let fin = id_dir.join(names::SNAPSHOT_NAME);
    got.subvols.push(fin.clone());
    Ok(fin)
}

/// `.<id>.receiving-<pid>` directories of imports of `id` that died (their pid is gone), with
/// the half-received subvolumes in them.
fn remove_stale_receives(sdir: &Path, id: &str) {
    let prefix = format!(".{id}.receiving-");
    let Ok(rd) = std::fs::read_dir(sdir) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(inner) = std::fs::read_dir(e.path()) {
            for x in inner.flatten() {
                delete_subvolume(&x.path());
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

/// Feed the spooled stream (decompressed, its SHA-256 checked again) to `btrfs receive -e DIR`.
fn run_receive(dir: &Path, spool: &Path, sha: &str) -> Result<(), MigrateError> {
    let f = std::fs::File::open(spool).map_err(io_err(spool, "open"))?;
    let mut dec = zstd::stream::read::Decoder::new(f).map_err(io_err(spool, "read"))?;
    let mut cmd = Command::new("btrfs");
    cmd.args(["receive", "-e"]).arg(dir).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    let shown = format!("btrfs receive -e {}", dir.display());
    let mut child = cmd.spawn().map_err(io_err(Path::new("btrfs"), "spawn"))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let fed = stream::hash_copy(&mut dec, &mut stdin);
    let _ = stdin.flush();
    drop(stdin);
    let st = child.wait().map_err(io_err(Path::new("btrfs receive"), "wait"))?;
    let stderr = errs.join().unwrap_or_default().trim().to_string();
    if !st.success() {
        return Err(MigrateError::Command { cmd: shown, status: st.to_string(), stderr });
    }
    match fed {
        Ok((h, _)) if h == sha => Ok(()),
        Ok((h, _)) => Err(MigrateError::Refused(format!(
            "{}: spooled stream changed (sha256 {h}, expected {sha})",
            spool.display()
        ))),
        Err(e) => {
            Err(MigrateError::Io(crate::sys::SysError { path: spool.into(), syscall: "read", source: e }))
        }
    }
}

/// The record in the target's terms.
fn new_record(
    mut ck: Checkpoint,
    head: &StreamHeader,
    plan: &Plan,
    placed: &[Placed],
) -> Result<Checkpoint, MigrateError> {
    let source_snapshots = ck.snapshots.clone();
    for (k, (t, p)) in plan.targets.iter().zip(placed).enumerate() {
        let fin = match (p, &t.lvm) {
            (Placed::Btrfs(fin), _) => fin,
            (Placed::Lvm(lv), Some(l)) => {
                ck.snapshots[k] = lvm::record_of(&source_snapshots[k], l, lv, &t.mount_str);
                continue;
            }
            (Placed::Lvm(_), None) => unreachable!("an LV is placed for an LVM target only"),
        };
        let info = libbtrfsutil::subvolume_info(fin).map_err(bt_err(fin, "subvolume info"))?;
        let rel = libbtrfsutil::subvolume_path(fin).map_err(bt_err(fin, "subvolume path"))?;
        ck.snapshots[k] = Snapshot::Btrfs {
            mount_point: t.mount_str.clone(),
            device: t.device.clone(),
            origin_subvol_id: t.origin_id,
            origin_subvol_path: t.origin_path.clone(),
            subvol_id: info.id(),
            uuid: info.uuid().to_string(),
            path: fin.to_string_lossy().into_owned(),
            fs_path: format!("/{}", rel.to_string_lossy().trim_start_matches('/')),
            created_unix: match &source_snapshots[k] {
                Snapshot::Btrfs { created_unix, .. } | Snapshot::Lvm { created_unix, .. } => *created_unix,
            },
        };
    }
    map_record(&mut ck, &plan.maps);
    if !head.image_only {
        new_inodes(&mut ck, plan, placed)?;
        ck.links_removed = true;
    }
    ck.imported = Some(imp::Imported {
        from_host: head.from_host.clone(),
        from_kernel: head.from_kernel.clone(),
        imported_unix: crate::sys::now_unix(),
        image_only: head.image_only,
        parent: head.parent.as_ref().map(|p| p.id.clone()),
        mounts: plan.maps.clone(),
        source_snapshots,
    });
    Ok(ck)
}

/// `btrfs receive` makes new inodes: each relinked name's inode number in its received snapshot.
fn new_inodes(ck: &mut Checkpoint, plan: &Plan, placed: &[Placed]) -> Result<(), MigrateError> {
    for o in &mut ck.objects {
        let Some(r) = o.relinked.as_mut() else { continue };
        let Some(k) = plan.targets.iter().position(|t| t.mount_str == o.mount.mount_point) else { continue };
        let Placed::Btrfs(fin) = &placed[k] else { continue }; // a block copy keeps inode numbers
        let p = fin.join(&r.rel_path);
        let md = std::fs::symlink_metadata(&p).map_err(|e| {
            MigrateError::Refused(format!(
                "the received snapshot has no {} ({e}), which the record says holds {}: the stream does not match its record",
                p.display(),
                o.original_path
            ))
        })?;
        r.ino = md.ino();
        o.mount.source = plan.targets[k].device.clone();
        let _ = &plan.targets[k].source;
    }
    Ok(())
}
