//! Relinking, both directions of a relinked name's life in one module (as CRIU's files-reg.c
//! keeps both directions of its remaps):
//!
//! | when | what | file |
//! |---|---|---|
//! | take | make the name: link, clone, copy or recreate | [`make`] |
//! | restart | open it, check it is the recorded inode, give it its original path for the restore, unlink it | [`reopen`] |
//! | delete, gc | find and remove names left on live filesystems | [`remove`] |
//!
//! Names live in `<mount>/lost+found/checkpoint` ([`dir`]), made by the checkpoint's
//! template ([`crate::record::names::Template`]), which carries the checkpoint id.

mod dir;
mod make;
mod remove;
pub mod reopen;

pub use crate::record::names::{Template, CHECKPOINT_DIR, DEFAULT_TEMPLATE};
pub use dir::{open_checkpoint_dir, CheckpointDir};
pub use make::{Relinker, Stats, COPIED_BYTES};
pub use remove::{leftovers, remove_live_names};
pub use reopen::{open_objects, Base, Keep, Reopened};

use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RelinkError {
    #[error(transparent)]
    Template(#[from] crate::record::names::TemplateError),
    #[error(
        "{path}: refusing to use it: {why}. Fix: remove it or make it a root-owned directory with mode 0700"
    )]
    Unsafe { path: PathBuf, why: String },
    #[error("{path}: {why}")]
    WrongMount { path: PathBuf, why: String },
    #[error(transparent)]
    Io(#[from] crate::sys::SysError),
    #[error("{path}: is not the recorded object {original}: {why}")]
    Mismatch { path: PathBuf, original: String, why: String },
    #[error("{}: gone. Checkpoint {id} has no snapshot, so a restart consumes its relinked files: it was restarted already (or the names were removed); it cannot be restarted again: `snapckpt delete {id}`", path.display())]
    Consumed { path: PathBuf, id: String },
    #[error("object {index} ({original}): no holder left to reach it through /proc")]
    NoHolder { index: usize, original: String },
    #[error("{path}: no space left while copying orphan {original} ({size} bytes): free space on that filesystem or use a filesystem with reflinks")]
    NoSpace { path: PathBuf, original: String, size: u64 },
}

fn ioe<'a>(path: &'a Path, syscall: &'static str) -> impl FnOnce(io::Error) -> RelinkError + 'a {
    move |source| RelinkError::Io(crate::sys::SysError { path: path.to_path_buf(), syscall, source })
}
