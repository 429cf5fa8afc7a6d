//! Subvolumes nested in a snapshot's clones (a restored task, or a user, may make one in the
//! filesystem it works on): a clone holding one cannot be deleted, so `delete` names them
//! before it changes anything.

use super::{clone_entries, io_err, Located};
use crate::snapshot::SnapshotError;
use libbtrfsutil_sys as ffi;
use std::ffi::CStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Refuse, before anything is unmounted or deleted, when a clone (or the snapshot) holds
/// other subvolumes, naming them.
pub(super) fn refuse_nested(loc: &Located) -> Result<(), SnapshotError> {
    let mut subvols: Vec<PathBuf> = clone_entries(&loc.id_dir)?.into_iter().map(|(_, p)| p).collect();
    subvols.extend(loc.snapshot.clone());
    for p in subvols {
        if !libbtrfsutil::is_subvolume(&p).unwrap_or(false) {
            continue;
        }
        let nested = nested_subvolumes(&p)?;
        if !nested.is_empty() {
            let names: Vec<String> = nested.iter().map(|n| n.display().to_string()).collect();
            return Err(SnapshotError::Refused {
                path: p,
                why: format!(
                    "it holds other subvolumes ({}), so it cannot be deleted; delete those first (btrfs subvolume delete); nothing was changed",
                    names.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The subvolumes anywhere below the subvolume at `path` (libbtrfsutil's subvolume iterator).
fn nested_subvolumes(path: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let c = crate::sys::cstr(path).map_err(io_err(path, "btrfs subvolume iterator"))?;
    let mut it: *mut ffi::btrfs_util_subvolume_iterator = std::ptr::null_mut();
    // SAFETY: a valid C string; on success `it` is an iterator, destroyed below.
    let e = unsafe { ffi::btrfs_util_create_subvolume_iterator(c.as_ptr(), 0, 0, &mut it) };
    if e != ffi::btrfs_util_error::BTRFS_UTIL_OK {
        return Err(io_err(path, "btrfs subvolume iterator")(std::io::Error::last_os_error()));
    }
    let mut out = vec![];
    let r = loop {
        let mut p: *mut libc::c_char = std::ptr::null_mut();
        let mut id = 0u64;
        // SAFETY: a live iterator; on success `p` is a malloc'd C string that we free.
        let e = unsafe { ffi::btrfs_util_subvolume_iterator_next(it, &mut p, &mut id) };
        if e == ffi::btrfs_util_error::BTRFS_UTIL_ERROR_STOP_ITERATION {
            break Ok(out);
        }
        if e != ffi::btrfs_util_error::BTRFS_UTIL_OK {
            break Err(io_err(path, "btrfs subvolume iterator")(std::io::Error::last_os_error()));
        }
        // SAFETY: see above.
        unsafe {
            out.push(path.join(std::ffi::OsStr::from_bytes(CStr::from_ptr(p).to_bytes())));
            libc::free(p.cast());
        }
    };
    // SAFETY: created above, not used after.
    unsafe { ffi::btrfs_util_destroy_subvolume_iterator(it) };
    r
}
