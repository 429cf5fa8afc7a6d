//! LVM thin snapshots in an export stream: the snapshot LV's blocks, sparse.
//!
//! Export activates the read-only thin snapshot (`lvchange -ay -K`, deactivated again after)
//! and reads its device; every 64 KiB block that is not all zeros (a thin LV reads zeros where
//! nothing is allocated) goes into the member as
//!
//! ```text
//! "SNAPCKPT-LVM\0\0\0\0" u64 size   (u64 offset  u32 len  bytes[len])*   u64 u64::MAX
//! ```
//!
//! (little-endian). Import makes a thin LV of that size in the pool of the target mount's LV,
//! named and tagged as `take` names its snapshots (`snapckpt-<id>`, tags `snapckpt`,
//! `snapckpt_id_<id>`, activation skip), writes the blocks, makes it read-only and inactive:
//! restart and delete then treat it as the checkpoint's snapshot. A block copy keeps the
//! filesystem as it was, inode numbers included. Classic (COW) snapshots are not exported.

use super::{io_err, MigrateError};
use crate::record::names::snapshot_lv_name;
use crate::record::{LvmKind, Snapshot};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MAGIC: &[u8; 16] = b"SNAPCKPT-LVM\0\0\0\0";
const BLOCK: usize = 64 << 10;
const END: u64 = u64::MAX;
const FIELDS: &str =
    "lv_name,vg_name,lv_uuid,lv_attr,lv_dm_path,pool_lv,lv_size,lv_kernel_major,lv_kernel_minor";

/// One LV, as `lvs` reports it.
#[derive(Debug, Clone)]
pub struct Lv {
    pub name: String,
    pub vg: String,
    pub uuid: String,
    pub attr: String,
    pub dm_path: String,
    pub pool: String,
    pub size: u64,
    pub major: i64,
    pub minor: i64,
}

impl Lv {
    fn full(&self) -> String {
        format!("{}/{}", self.vg, self.name)
    }
    fn active(&self) -> bool {
        self.attr.as_bytes().get(4) == Some(&b'a')
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String, MigrateError> {
    let o = Command::new(cmd)
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .map_err(io_err(Path::new(cmd), "spawn"))?;
    if !o.status.success() {
        return Err(MigrateError::Command {
            cmd: format!("{cmd} {}", args.join(" ")),
            status: o.status.to_string(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `lvs` of the selected LVs (all with no selector).
fn lvs(sel: &[&str]) -> Result<Vec<Lv>, MigrateError> {
    let mut args = vec!["--reportformat", "json", "--units", "b", "--nosuffix", "-o", FIELDS];
    args.extend_from_slice(sel);
    let out = run("lvs", &args)?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| MigrateError::Refused(format!("lvs: {e}")))?;
    let rows = v["report"][0]["lv"].as_array().cloned().unwrap_or_default();
    let f = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap_or_default().to_string();
    let n = |r: &serde_json::Value, k: &str| f(r, k).trim().parse::<i64>().unwrap_or(-1);
    Ok(rows
        .iter()
        .map(|r| Lv {
            name: f(r, "lv_name"),
            vg: f(r, "vg_name"),
            uuid: f(r, "lv_uuid"),
            attr: f(r, "lv_attr"),
            dm_path: f(r, "lv_dm_path"),
            pool: f(r, "pool_lv"),
            size: n(r, "lv_size").max(0) as u64,
            major: n(r, "lv_kernel_major"),
            minor: n(r, "lv_kernel_minor"),
        })
        .collect())
}

fn find(vg: &str, name: &str) -> Result<Option<Lv>, MigrateError> {
    Ok(lvs(&[vg])?.into_iter().find(|l| l.name == name))
}

/// Wait (up to 10 s) for an LV's device node.
fn wait_node(lv: &Lv) -> Result<PathBuf, MigrateError> {
    let lv =
        find(&lv.vg, &lv.name)?.ok_or_else(|| MigrateError::Refused(format!("{} vanished", lv.full())))?;
    let p = PathBuf::from(&lv.dm_path);
    let t = Instant::now();
    while !p.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(p)
}

/// The thin LV mounted at `mp` (by device number).
pub fn lv_of_mount(mp: &Path) -> Result<Lv, MigrateError> {
    let st = crate::sys::stat(mp).map_err(io_err(mp, "stat"))?;
    let (ma, mi) = (libc::major(st.st_dev) as i64, libc::minor(st.st_dev) as i64);
    lvs(&[])?.into_iter().find(|l| l.major == ma && l.minor == mi).ok_or_else(|| {
        MigrateError::Refused(format!("{} is not mounted from an LVM logical volume", mp.display()))
    })
}

// ---------------------------------------------------------------------------------------------
// export

/// The snapshot LV, active for reading; deactivated on drop if we activated it.
pub struct Source {
    lv: Lv,
    activated: bool,
    pub dev: std::fs::File,
    pub size: u64,
}

impl Drop for Source {
    fn drop(&mut self) {
        if self.activated {
            let _ = run("lvchange", &["-an", &self.lv.full()]);
        }
    }
}

/// Open the thin snapshot of record `s` for reading (its LV UUID checked).
pub fn open_snapshot(s: &Snapshot) -> Result<Source, MigrateError> {
    let Snapshot::Lvm { vg, snapshot_lv, snapshot_uuid, kind, .. } = s else {
        return Err(MigrateError::Refused(format!("{} is not an LVM snapshot", s.describe())));
    };
    if *kind != LvmKind::Thin {
        return Err(MigrateError::Refused(format!(
            "{}: exporting classic (COW) LVM snapshots is not supported; take the checkpoint of a thin LV",
            s.describe()
        )));
    }
    let lv = find(vg, snapshot_lv)?.filter(|l| l.uuid == *snapshot_uuid).ok_or_else(|| {
        MigrateError::Refused(format!("{vg}/{snapshot_lv} (UUID {snapshot_uuid}) is not on this machine"))
    })?;
    let activated = !lv.active();
    if activated {
        run("lvchange", &["-ay", "-K", &lv.full()])?;
    }
    let opened = wait_node(&lv).and_then(|p| std::fs::File::open(&p).map_err(io_err(&p, "open")));
    match opened {
        Ok(dev) => Ok(Source { size: lv.size, lv, activated, dev }),
        Err(e) => {
            if activated {
                let _ = run("lvchange", &["-an", &lv.full()]);
            }
            Err(e)
        }
    }
}

/// The sparse encoding of a device, as a reader.
pub struct SparseReader<'a> {
    dev: &'a std::fs::File,
    size: u64,
    pos: u64,
    out: Vec<u8>,
    at: usize,
    done: bool,
}

impl<'a> SparseReader<'a> {
    pub fn new(dev: &'a std::fs::File, size: u64) -> SparseReader<'a> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&size.to_le_bytes());
        SparseReader { dev, size, pos: 0, out, at: 0, done: false }
    }

    /// Encode the next run of blocks (up to 1 MiB read) into `out`.
    fn fill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.at = 0;
        if self.pos >= self.size {
            self.out.extend_from_slice(&END.to_le_bytes());
            self.done = true;
            return Ok(());
        }
        let n = (self.size - self.pos).min(1 << 20) as usize;
        let mut buf = vec![0u8; n];
        self.dev.read_exact_at(&mut buf, self.pos)?;
        for (i, b) in buf.chunks(BLOCK).enumerate() {
            if b.iter().all(|&x| x == 0) {
                continue;
            }
            self.out.extend_from_slice(&(self.pos + (i * BLOCK) as u64).to_le_bytes());
            self.out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            self.out.extend_from_slice(b);
        }
        self.pos += n as u64;
        Ok(())
    }
}

impl Read for SparseReader<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        while self.at >= self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.fill()?;
        }
        let k = b.len().min(self.out.len() - self.at);
        b[..k].copy_from_slice(&self.out[self.at..self.at + k]);
        self.at += k;
        Ok(k)
    }
}

// ---------------------------------------------------------------------------------------------
// import

/// Where an LVM snapshot is received: the thin pool of the target mount's LV.
#[derive(Debug, Clone)]
pub struct TargetLv {
    pub origin: Lv,
    pub fstype: String,
}

/// The target mount `mp` can take snapshot `s` of checkpoint `id`.
pub fn check_target(s: &Snapshot, id: &str, mp: &Path, image_only: bool) -> Result<TargetLv, MigrateError> {
    let Snapshot::Lvm { fstype, kind, .. } = s else { unreachable!("an LVM snapshot") };
    if image_only || *kind != LvmKind::Thin {
        return Err(MigrateError::Refused(format!(
            "{}: only thin LVM snapshots with their blocks can be imported (no classic snapshots, no --image-only)",
            s.describe()
        )));
    }
    let origin = lv_of_mount(mp)?;
    if origin.pool.is_empty() {
        return Err(MigrateError::Refused(format!(
            "{} is mounted from {}, which is not a thin LV",
            mp.display(),
            origin.full()
        )));
    }
    let here = crate::procfs::read_mountinfo("self")
        .ok()
        .and_then(|v| v.into_iter().rev().find(|e| e.mount_point == mp).map(|e| e.fstype))
        .unwrap_or_default();
    if here != *fstype {
        return Err(MigrateError::Refused(format!(
            "{} is {here}, the checkpoint's filesystem was {fstype}",
            mp.display()
        )));
    }
    let name = snapshot_lv_name(id);
    if find(&origin.vg, &name)?.is_some() {
        return Err(MigrateError::Refused(format!(
            "{}/{name} exists: checkpoint {id} already has a snapshot LV here; nothing was imported",
            origin.vg
        )));
    }
    Ok(TargetLv { origin, fstype: fstype.clone() })
}

/// Make the snapshot LV of checkpoint `id` from the verified spooled member; `made` gets the
/// LV's name as soon as it exists (for the undo).
pub fn receive(
    t: &TargetLv,
    id: &str,
    spool: &Path,
    sha: &str,
    made: &mut Vec<String>,
) -> Result<Lv, MigrateError> {
    let f = std::fs::File::open(spool).map_err(io_err(spool, "open"))?;
    let mut dec = zstd::stream::read::Decoder::new(f).map_err(io_err(spool, "read"))?;
    let mut head = [0u8; 24];
    dec.read_exact(&mut head).map_err(io_err(spool, "read"))?;
    if &head[..16] != MAGIC {
        return Err(MigrateError::Refused("the LVM member does not start with its magic".into()));
    }
    let size = u64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
    let name = snapshot_lv_name(id);
    let vg = &t.origin.vg;
    let full = format!("{vg}/{name}");
    let tag_id = format!("snapckpt_id_{id}");
    let pool = format!("{vg}/{}", t.origin.pool);
    let vsize = format!("{size}b");
    run(
        "lvcreate",
        &[
            "-q", "-y", "-V", &vsize, "-T", &pool, "-n", &name, "--addtag", "snapckpt", "--addtag", &tag_id,
            "-k", "y", "-a", "n",
        ],
    )?;
    made.push(full.clone());
    run("lvchange", &["-ay", "-K", &full])?;
    let lv = find(vg, &name)?.ok_or_else(|| MigrateError::Refused(format!("{full} was not created")))?;
    let p = wait_node(&lv)?;
    let dev = std::fs::OpenOptions::new().write(true).open(&p).map_err(io_err(&p, "open"))?;
    let mut hashing = HashRead { inner: &mut dec, hash: sha2::Sha256::default() };
    sha2::Digest::update(&mut hashing.hash, head);
    write_blocks(&mut hashing, &dev, size, &p)?;
    let mut rest = Vec::new();
    hashing.read_to_end(&mut rest).map_err(io_err(spool, "read"))?;
    let found: String = sha2::Digest::finalize(hashing.hash).iter().map(|b| format!("{b:02x}")).collect();
    if found != sha || !rest.is_empty() {
        return Err(MigrateError::Refused(format!(
            "{}: spooled member changed (sha256 {found}, expected {sha})",
            spool.display()
        )));
    }
    dev.sync_all().map_err(io_err(&p, "fsync"))?;
    drop(dev);
    run("lvchange", &["-an", &full])?;
    run("lvchange", &["-pr", &full])?;
    find(vg, &name)?.ok_or_else(|| MigrateError::Refused(format!("{full} vanished")))
}

/// Hashes what is read through it.
struct HashRead<'a> {
    inner: &'a mut dyn Read,
    hash: sha2::Sha256,
}

impl Read for HashRead<'_> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(b)?;
        sha2::Digest::update(&mut self.hash, &b[..k]);
        Ok(k)
    }
}

/// Write the block records of `r` to `dev` (of `size` bytes), each bounds-checked.
fn write_blocks(r: &mut dyn Read, dev: &std::fs::File, size: u64, p: &Path) -> Result<(), MigrateError> {
    let bad = |why: String| MigrateError::Refused(format!("the LVM member is corrupt: {why}"));
    let mut buf = vec![0u8; BLOCK];
    loop {
        let mut off = [0u8; 8];
        r.read_exact(&mut off).map_err(|e| bad(e.to_string()))?;
        let off = u64::from_le_bytes(off);
        if off == END {
            return Ok(());
        }
        let mut len = [0u8; 4];
        r.read_exact(&mut len).map_err(|e| bad(e.to_string()))?;
        let len = u32::from_le_bytes(len) as usize;
        if len > BLOCK || off.checked_add(len as u64).map_or(true, |e| e > size) {
            return Err(bad(format!("a block of {len} bytes at {off} is outside the {size}-byte volume")));
        }
        r.read_exact(&mut buf[..len]).map_err(|e| bad(e.to_string()))?;
        dev.write_all_at(&buf[..len], off).map_err(io_err(p, "pwrite"))?;
    }
}

/// Remove LVs made by a failed import.
pub fn remove(made: &[String]) {
    for full in made.iter().rev() {
        let _ = run("lvchange", &["-an", full]);
        let _ = run("lvremove", &["-q", "-y", "-f", full]);
    }
}

/// The record entry of a received snapshot.
pub fn record_of(s: &Snapshot, t: &TargetLv, lv: &Lv, mount_point: &str) -> Snapshot {
    let created_unix = match s {
        Snapshot::Lvm { created_unix, .. } | Snapshot::Btrfs { created_unix, .. } => *created_unix,
    };
    Snapshot::Lvm {
        mount_point: mount_point.into(),
        fstype: t.fstype.clone(),
        vg: lv.vg.clone(),
        origin_lv: t.origin.name.clone(),
        origin_uuid: t.origin.uuid.clone(),
        snapshot_lv: lv.name.clone(),
        snapshot_uuid: lv.uuid.clone(),
        kind: LvmKind::Thin,
        created_unix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_roundtrip() {
        let d = std::env::temp_dir().join(format!("snapckpt-lvm-{}", std::process::id()));
        let size = 5 * BLOCK as u64 + 1000;
        let mut data = vec![0u8; size as usize];
        data[BLOCK + 7] = 1;
        data[size as usize - 1] = 9;
        std::fs::write(&d, &data).unwrap();
        let f = std::fs::File::open(&d).unwrap();
        let mut enc = vec![];
        SparseReader::new(&f, size).read_to_end(&mut enc).unwrap();
        assert!(enc.len() < 3 * BLOCK, "{}", enc.len());
        let out = d.with_extension("out");
        let o = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&out).unwrap();
        o.set_len(size).unwrap();
        write_blocks(&mut &enc[24..], &o, size, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        // a block outside the volume is refused
        assert!(write_blocks(&mut &enc[24..], &o, 10, &out).is_err());
        let _ = std::fs::remove_file(&d);
        let _ = std::fs::remove_file(&out);
    }
}
