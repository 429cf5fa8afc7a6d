//! `snapckpt export`: a checkpoint as one stream ([`super::stream`]): the record, the CRIU
//! image files, and a `btrfs send` of each read-only snapshot (`-p` the parent checkpoint's
//! snapshot of the same filesystem for an incremental stream; none with `image_only`).
//!
//! Written to a file (as `FILE.partial-PID`, renamed to `FILE` when complete, removed on
//! failure) or to standard output. A `btrfs send` that fails ends the stream without the
//! member's trailer or the end mark, so an importer never takes a cut stream for a whole one.

use super::stream::{Kind, MemberHeader, MemberTrailer, ParentRef, StreamHeader, Writer};
use super::{io_err, kernel_release, MigrateError};
use crate::image;
use crate::record::{Checkpoint, Snapshot, RECORD_FILE};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout,
    File(PathBuf),
}

/// A resolved `export`.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// The image directory of the checkpoint.
    pub dir: PathBuf,
    /// The image root (to find the parent).
    pub image_root: PathBuf,
    /// An earlier checkpoint of the same filesystems that the target holds.
    pub parent: Option<String>,
    /// Record and CRIU image only.
    pub image_only: bool,
    pub output: Output,
    /// Show a progress bar (in bytes) on standard error.
    pub progress: bool,
}

/// What an export wrote.
#[derive(Debug)]
pub struct Exported {
    pub id: String,
    pub members: Vec<(MemberHeader, MemberTrailer)>,
    /// Bytes of the whole stream.
    pub bytes: u64,
    pub elapsed: Duration,
}

impl Exported {
    /// One line per member and a total, for the user.
    pub fn summary(&self) -> Vec<String> {
        let mut v = vec![format!(
            "exported checkpoint {}: {} member(s), {} bytes in {:.1} s",
            self.id,
            self.members.len(),
            self.bytes,
            self.elapsed.as_secs_f64()
        )];
        for (h, t) in &self.members {
            v.push(format!(
                "  {:<10} {}: {} bytes ({} compressed) sha256 {}",
                serde_json::to_value(h.kind)
                    .ok()
                    .and_then(|x| x.as_str().map(str::to_string))
                    .unwrap_or_default(),
                h.name,
                t.length,
                t.compressed,
                &t.sha256[..16]
            ));
        }
        v
    }
}

/// Export the checkpoint in `opts.dir`.
pub fn export(opts: &ExportOptions) -> Result<Exported, MigrateError> {
    let t0 = Instant::now();
    let ck = image::load(&opts.dir)?;
    if opts.output == Output::Stdout && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(MigrateError::Refused(
            "standard output is a terminal: pipe the stream (`| ssh HOST snapckpt import - --mount M`) or give -o FILE".into(),
        ));
    }
    pre_dumped(&ck, &opts.dir)?;
    let sends = plan_sends(&ck, opts)?;
    let header = StreamHeader {
        checkpoint_id: ck.id.clone(),
        from_host: ck.hostname.clone(),
        from_kernel: kernel_release(),
        created_unix: crate::sys::now_unix(),
        snapckpt_version: env!("CARGO_PKG_VERSION").into(),
        image_only: opts.image_only,
        parent: opts.parent.as_ref().map(|id| ParentRef {
            id: id.clone(),
            snapshot_uuids: sends.iter().map(|s| s.parent_uuid.clone().unwrap_or_default()).collect(),
        }),
    };
    let (out, tmp) = open_output(&opts.output)?;
    let bar = crate::ui::byte_spinner(opts.progress);
    let b2 = bar.clone();
    let r = (|| {
        let mut w = Writer::new(out, &header, Box::new(move |n| b2.set_position(n)))?;
        let members = write_members(&mut w, &ck, &opts.dir, &sends)?;
        let (bytes, out) = w.finish()?;
        out.into_inner().map_err(|e| io_err(Path::new("<stream>"), "write")(e.into_error()))?.sync()?;
        Ok((members, bytes))
    })();
    bar.finish_and_clear();
    let (members, bytes) = match r {
        Ok(x) => x,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(e);
        }
    };
    if let (Some(t), Output::File(f)) = (&tmp, &opts.output) {
        std::fs::rename(t, f).map_err(io_err(f, "rename"))?;
    }
    Ok(Exported { id: ck.id, members, bytes, elapsed: t0.elapsed() })
}

/// The stream's sink: a file or standard output, buffered.
enum Sink {
    File(std::fs::File),
    Stdout(std::io::Stdout),
}

impl Sink {
    /// Make what was written durable (a file).
    fn sync(self) -> Result<(), MigrateError> {
        match self {
            Sink::File(f) => f.sync_all().map_err(io_err(Path::new("<export file>"), "fsync")),
            Sink::Stdout(_) => Ok(()),
        }
    }
}

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::File(f) => f.write(b),
            Sink::Stdout(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::File(f) => f.flush(),
            Sink::Stdout(s) => s.flush(),
        }
    }
}

fn open_output(o: &Output) -> Result<(std::io::BufWriter<Sink>, Option<PathBuf>), MigrateError> {
    match o {
        Output::Stdout => {
            Ok((std::io::BufWriter::with_capacity(1 << 20, Sink::Stdout(std::io::stdout())), None))
        }
        Output::File(f) => {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let tmp = f.with_file_name(format!(".{name}.partial-{}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(io_err(&tmp, "open"))?;
            Ok((std::io::BufWriter::with_capacity(1 << 20, Sink::File(file)), Some(tmp)))
        }
    }
}

/// One `btrfs send` to make: the snapshot (checked to be the recorded subvolume) and the
/// parent's snapshot it is relative to.
struct Send {
    index: usize,
    /// An LVM thin snapshot (its blocks), not a btrfs send.
    lvm: bool,
    mount_point: String,
    path: PathBuf,
    parent: Option<PathBuf>,
    parent_uuid: Option<String>,
}

/// The sends of a full or incremental export, everything checked before a byte is written.
fn plan_sends(ck: &Checkpoint, opts: &ExportOptions) -> Result<Vec<Send>, MigrateError> {
    if opts.image_only {
        return Ok(vec![]);
    }
    for (o, _) in ck.relinked() {
        if !ck.snapshots.iter().any(|s| s.mount_point() == o.mount.mount_point) {
            return Err(MigrateError::Refused(format!(
                "object {} ({}) is on {}, which has no snapshot in checkpoint {}: its data cannot travel; take the checkpoint with --snapshot btrfs, or export --image-only for shared storage",
                o.index, o.original_path, o.mount.mount_point, ck.id
            )));
        }
    }
    let parent = match &opts.parent {
        Some(p) => Some(image::load(&image::resolve(&opts.image_root, p)?)?),
        None => None,
    };
    let mut v = vec![];
    for (k, s) in ck.snapshots.iter().enumerate() {
        let Snapshot::Btrfs { mount_point, path, uuid, .. } = s else {
            if parent.is_some() {
                return Err(MigrateError::Refused(format!(
                    "snapshot {} of checkpoint {}: incremental export is for btrfs snapshots; export it in full",
                    s.describe(),
                    ck.id
                )));
            }
            drop(super::lvm::open_snapshot(s)?); // checked: thin, here, with its UUID
            let mp = s.mount_point().to_string();
            v.push(Send {
                index: k,
                lvm: true,
                mount_point: mp,
                path: PathBuf::new(),
                parent: None,
                parent_uuid: None,
            });
            continue;
        };
        let path = reachable(path, uuid)?;
        let (parent, parent_uuid) = match &parent {
            None => (None, None),
            Some(p) => {
                let (pp, pu) = parent_snapshot(p, s)?;
                (Some(pp), Some(pu))
            }
        };
        v.push(Send { index: k, lvm: false, mount_point: mount_point.clone(), path, parent, parent_uuid });
    }
    Ok(v)
}

/// The recorded snapshot path, if the subvolume there has the recorded UUID.
fn reachable(path: &str, uuid: &str) -> Result<PathBuf, MigrateError> {
    let p = PathBuf::from(path);
    let info = libbtrfsutil::subvolume_info(&p).map_err(|e| {
        MigrateError::Refused(format!(
            "snapshot {path} cannot be reached ({e}): mount its filesystem at the recorded mount point to export it"
        ))
    })?;
    if !info.uuid().to_string().eq_ignore_ascii_case(uuid) {
        return Err(MigrateError::Refused(format!(
            "{path} is subvolume {}, not the checkpoint's snapshot {uuid}: mount the checkpoint's filesystem at the recorded mount point to export it",
            info.uuid()
        )));
    }
    Ok(p)
}

/// The parent checkpoint's snapshot of the same filesystem as `s`: its path and UUID.
fn parent_snapshot(parent: &Checkpoint, s: &Snapshot) -> Result<(PathBuf, String), MigrateError> {
    let Snapshot::Btrfs { device, origin_subvol_id, mount_point, .. } = s else {
        return Err(MigrateError::Refused("incremental export is for btrfs snapshots".into()));
    };
    let same = parent.snapshots.iter().find_map(|p| match p {
        Snapshot::Btrfs { device: d, origin_subvol_id: o, path, uuid, .. }
            if d == device && o == origin_subvol_id =>
        {
            Some((path.clone(), uuid.clone()))
        }
        _ => None,
    });
    let Some((path, uuid)) = same else {
        return Err(MigrateError::Refused(format!(
            "parent checkpoint {} has no snapshot of the filesystem at {mount_point} (subvolume {origin_subvol_id} on {device}): give a parent taken of the same filesystem",
            parent.id
        )));
    };
    Ok((reachable(&path, &uuid)?, uuid))
}

/// The record, the CRIU files, the send streams.
fn write_members<W: Write>(
    w: &mut Writer<W>,
    ck: &Checkpoint,
    dir: &Path,
    sends: &[Send],
) -> Result<Vec<(MemberHeader, MemberTrailer)>, MigrateError> {
    let mut out = vec![];
    let rec = serde_json::to_vec_pretty(ck).map_err(|e| MigrateError::Refused(format!("record: {e}")))?;
    let h = MemberHeader {
        kind: Kind::Record,
        name: RECORD_FILE.into(),
        snapshot: None,
        length: Some(rec.len() as u64),
    };
    let t = w.member::<MigrateError>(&h, &mut &rec[..], &mut || Ok(()))?;
    out.push((h, t));
    for name in criu_files(dir)? {
        let p = dir.join(&name);
        let mut f = std::fs::File::open(&p).map_err(io_err(&p, "open"))?;
        let len = f.metadata().map_err(io_err(&p, "fstat"))?.len();
        let h = MemberHeader { kind: Kind::CriuFile, name, snapshot: None, length: Some(len) };
        let t = w.member::<MigrateError>(&h, &mut f, &mut || Ok(()))?;
        if t.length != len {
            return Err(MigrateError::Refused(format!("{} changed while it was exported", p.display())));
        }
        out.push((h, t));
    }
    for s in sends {
        if s.lvm {
            out.push(lvm_member(w, s, &ck.snapshots[s.index])?);
        } else {
            out.push(send_member(w, s)?);
        }
    }
    Ok(out)
}

/// A checkpoint taken with `--pre-dump` is refused: its memory is spread over the pre-dump
/// rounds (`pre-N` directories, chained by `parent` links), which the stream does not carry.
fn pre_dumped(ck: &Checkpoint, dir: &Path) -> Result<(), MigrateError> {
    let rounds = std::fs::read_dir(dir).map_err(io_err(dir, "opendir"))?.flatten().any(|e| {
        e.file_type().is_ok_and(|t| t.is_dir()) && e.file_name().to_string_lossy().starts_with("pre-")
    });
    let parent = dir.join("parent").symlink_metadata().is_ok();
    if rounds || parent || !ck.timings.pre_dump.is_empty() {
        return Err(MigrateError::Refused(format!(
            "checkpoint {} was taken with --pre-dump: its memory pages are spread over the pre-dump rounds (pre-N directories), which export does not carry; take it again without --pre-dump to export it",
            ck.id
        )));
    }
    Ok(())
}

/// The regular files of the image directory but the record (CRIU's image and log).
fn criu_files(dir: &Path) -> Result<Vec<String>, MigrateError> {
    let mut v = vec![];
    for e in std::fs::read_dir(dir).map_err(io_err(dir, "opendir"))? {
        let e = e.map_err(io_err(dir, "readdir"))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let ft = e.file_type().map_err(io_err(&e.path(), "lstat"))?;
        if ft.is_file()
            && name != RECORD_FILE
            && !name.starts_with('.')
            && crate::record::names::plain_name(&name)
        {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

/// The blocks of an LVM thin snapshot as one member.
fn lvm_member<W: Write>(
    w: &mut Writer<W>,
    s: &Send,
    snap: &Snapshot,
) -> Result<(MemberHeader, MemberTrailer), MigrateError> {
    let src = super::lvm::open_snapshot(snap)?;
    let h = MemberHeader {
        kind: Kind::LvmBlocks,
        name: s.mount_point.clone(),
        snapshot: Some(s.index),
        length: None,
    };
    let mut r = super::lvm::SparseReader::new(&src.dev, src.size);
    let t = w.member::<MigrateError>(&h, &mut r, &mut || Ok(()))?;
    Ok((h, t))
}

/// `btrfs send [-p PARENT] SNAPSHOT` as one member; the trailer only if it exits 0.
fn send_member<W: Write>(w: &mut Writer<W>, s: &Send) -> Result<(MemberHeader, MemberTrailer), MigrateError> {
    let mut cmd = Command::new("btrfs");
    cmd.args(["send", "-q"]);
    if let Some(p) = &s.parent {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(&s.path).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let shown = format!("{cmd:?}").replace('"', "");
    let mut child = cmd.spawn().map_err(io_err(Path::new("btrfs"), "spawn"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let h = MemberHeader {
        kind: Kind::BtrfsSend,
        name: s.mount_point.clone(),
        snapshot: Some(s.index),
        length: None,
    };
    let mut status = None;
    let r = w.member::<MigrateError>(&h, &mut stdout, &mut || {
        let st = child.wait().map_err(io_err(Path::new("btrfs send"), "wait"))?;
        status = Some(st);
        if st.success() {
            Ok(())
        } else {
            Err(MigrateError::Refused(String::new()))
        }
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stderr = errs.join().unwrap_or_default().trim().to_string();
    match (r, status) {
        (Ok(t), _) => Ok((h, t)),
        (Err(_), Some(st)) if !st.success() => {
            Err(MigrateError::Command { cmd: shown, status: st.to_string(), stderr })
        }
        (Err(e), _) => Err(e),
    }
}
