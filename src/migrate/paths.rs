//! The CRIU image in the target's terms: at import, every regular file that CRIU opens by path
//! (`RegFileEntry.name` in `files.img`: fds, mappings, cwd/root, exe) and that lies under a
//! source mount point the target mounts elsewhere is renamed to the target's path, so that a
//! restart finds it in the restart clone. Entries declared external (the preserved objects,
//! handed back by the restart) and files outside the migrated filesystems are left as they
//! are; every other byte of the image is kept (see [`crate::criu_image`]).

use super::{map_path, MigrateError};
use crate::criu_image::{self as ci, WireValue};
use crate::record::imported::MountMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Rewrite `dir/files.img` (a CRIU image directory being imported); how many entries were
/// renamed. An image without `files.img` (older CRIU: `reg-files.img`) is left alone: a
/// restart then refuses files on a filesystem mounted elsewhere ([`super::check_restart`]).
pub fn rewrite_image_paths(dir: &Path, maps: &[MountMap]) -> Result<usize, MigrateError> {
    let path = dir.join(ci::FILES_IMG);
    if !path.exists() || maps.iter().all(|m| m.source == m.target) {
        return Ok(0);
    }
    let bad =
        |what: String| MigrateError::Refused(format!("{}: malformed CRIU image: {what}", path.display()));
    let mut img = ci::read_image(&path).map_err(|e| MigrateError::Refused(e.to_string()))?;
    if img.kind() != ci::FILES_MAGIC {
        return Err(bad(format!("magic {:#x}", img.kind())));
    }
    let mut n = 0;
    for e in img.entries.iter_mut() {
        if let Some(new) = rewrite_entry(e, maps).map_err(bad)? {
            *e = new;
            n += 1;
        }
    }
    if n > 0 {
        let tmp = dir.join(format!(".{}.tmp", ci::FILES_IMG));
        std::fs::write(&tmp, img.to_bytes()).map_err(super::io_err(&tmp, "write"))?;
        std::fs::rename(&tmp, &path).map_err(super::io_err(&path, "rename"))?;
    }
    Ok(n)
}

/// A `FileEntry` whose regular file is renamed, or None when it stays as it is.
fn rewrite_entry(e: &[u8], maps: &[MountMap]) -> Result<Option<Vec<u8>>, String> {
    let fields = ci::parse_fields(e)?;
    let is_reg = fields.iter().any(|f| f.number == 1 && f.value == WireValue::Varint(ci::FD_TYPE_REG));
    let reg = fields.iter().find_map(|f| match f.value {
        WireValue::Bytes(b) if f.number == 3 => Some(b),
        _ => None,
    });
    let (true, Some(reg)) = (is_reg, reg) else { return Ok(None) };
    let rf = ci::RegFile::decode(reg)?;
    let name = rf.name.to_string_lossy();
    if rf.ext || !name.starts_with('/') {
        return Ok(None);
    }
    let mapped = map_path(&name, maps);
    if mapped == name {
        return Ok(None);
    }
    let new_reg = ci::rewrite_reg_entry(reg, std::ffi::OsStr::new(&mapped).as_bytes())?;
    let mut out = Vec::with_capacity(e.len() + 64);
    for f in fields {
        if f.number == 3 {
            ci::put_bytes_field(&mut out, 3, &new_reg);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(Some(out))
}
