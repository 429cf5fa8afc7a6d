//! The restart side of a relinked name: open it, check that it is the recorded inode, and hand
//! it out under the path the task had.
//!
//! Plain CRIU gives a restored task back the original names of its unlinked files (it links
//! the preserved file at the original path, opens it there and unlinks it again). snapckpt
//! does the same: each preserved object is given its original path (a sibling name when that
//! path is taken by another file, creating missing parent directories and removing them
//! afterwards), opened there (so the kernel records that path in the open file), and the name
//! removed again. What a restored task reads back from `/proc/self/fd`, its maps and `getcwd`
//! is then `<original path> (deleted)`, as at the checkpoint.
//!
//! Inside a restart clone (private to this restart) a path taken by another file is freed for
//! the moment of the open by moving the other file aside and back; on a live filesystem the
//! other file is never touched and a sibling name `<name>.snapckpt-link` is used instead.

use super::dir::{open_checkpoint_dir, CheckpointDir};
use super::{ioe, RelinkError};
use crate::record::{Checkpoint, FileKind, Held, Method, Object};
use crate::{procfs, sys};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Where the relinked names of one mount are found at restart.
#[derive(Clone, Debug)]
pub struct Base {
    pub path: PathBuf,
    /// The device of a restart clone (objects are checked to be on it); None on the live fs.
    pub dev: Option<u64>,
}

/// One object opened for restart, under the path the task had where that could be done.
pub struct Reopened<'a> {
    pub obj: &'a Object,
    /// Opened with the access the task's holders need (O_PATH for an O_PATH-only object).
    pub fd: OwnedFd,
    pub dir: Rc<CheckpointDir>,
    /// The relinked name in `dir`.
    pub name: String,
    /// The path the open file carries (the original one, or a sibling of it), in snapckpt's
    /// view; with [`Keep::Placed`], the name that stays until [`Reopened::release`].
    pub opened_as: PathBuf,
    placement: Option<Placement>,
}

impl Reopened<'_> {
    /// Take the object's placed name away again (see [`Keep::Placed`]) and remove the relinked
    /// name: the inode goes back to its recorded link count. Idempotent.
    pub fn release(&mut self) -> Result<(), RelinkError> {
        let moved = self.placement.as_ref().is_some_and(|p| p.is_dir && p.placed);
        if let Some(mut p) = self.placement.take() {
            p.undo()?;
        }
        if moved {
            // A directory was moved to its placed name, which is gone now.
            return Ok(());
        }
        match self.dir.remove(&self.name, self.obj.kind == FileKind::Directory) {
            Err(e) if super::remove::is_enoent(&e) => Ok(()),
            r => r,
        }
    }

    /// Whether the object still has its placed name (dev/ino of what is there now).
    pub fn placed_is_intact(&self) -> bool {
        let Some(p) = &self.placement else { return true };
        let here = sys::openat2(
            p.parent.as_raw_fd(),
            &p.used,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            sys::RESOLVE_STRICT,
        );
        match (here.and_then(|f| sys::fstat(f.as_raw_fd())), sys::fstat(self.fd.as_raw_fd())) {
            (Ok(a), Ok(b)) => a.st_ino == b.st_ino && a.st_dev == b.st_dev,
            _ => false,
        }
    }
}

/// How long an object keeps the name it is opened under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Only for snapckpt's own open: the name is taken away at once (the fd carries it).
    Opened,
    /// Until [`Reopened::release`]: another opener (CRIU) opens it by that name.
    Placed,
}

/// Open and check every relinked object of `ck`. `bases` maps an origin mount point to where
/// its filesystem is now (a restart clone); objects of other mounts are on the live
/// filesystem. With `original_names`, each is opened under its original path.
pub fn open_objects<'a>(
    ck: &'a Checkpoint,
    bases: &HashMap<String, Base>,
    keep: Keep,
) -> Result<Vec<Reopened<'a>>, RelinkError> {
    let mut dirs: HashMap<PathBuf, Rc<CheckpointDir>> = HashMap::new();
    let mut out = vec![];
    for (o, r) in ck.relinked() {
        let base = bases
            .get(&o.mount.mount_point)
            .cloned()
            .unwrap_or_else(|| Base { path: PathBuf::from(&o.mount.mount_point), dev: None });
        let dir = match dirs.get(&base.path) {
            Some(d) => d.clone(),
            None => {
                let d = Rc::new(open_checkpoint_dir(&base.path, None, false)?);
                dirs.insert(base.path.clone(), d.clone());
                d
            }
        };
        let pfd = open_checked(ck, o, &dir, &r.name, r.ino, r.method, &base)?;
        let flags = handover_flags(ck, o, &pfd, &dir.path.join(&r.name))?;
        let (fd, opened_as, placement) = open_at_original(o, &base, &dir, &r.name, &pfd, flags, keep)?;
        out.push(Reopened { obj: o, fd, dir, name: r.name.clone(), opened_as, placement });
    }
    Ok(out)
}

/// A reference that opens nothing (no FIFO open that blocks, no device open with side
/// effects) to the relinked name, checked against the record: device, type, inode, size.
fn open_checked(
    ck: &Checkpoint,
    o: &Object,
    dir: &CheckpointDir,
    name: &str,
    ino: u64,
    method: Method,
    base: &Base,
) -> Result<OwnedFd, RelinkError> {
    let path = dir.path.join(name);
    let pfd = match dir.open(name, libc::O_PATH | libc::O_NOFOLLOW) {
        Err(e) if super::remove::is_enoent(&e) && base.dev.is_none() && ck.snapshots.is_empty() => {
            return Err(RelinkError::Consumed { path, id: ck.id.clone() });
        }
        r => r?,
    };
    let st = sys::fstat(pfd.as_raw_fd()).map_err(ioe(&path, "fstat"))?;
    let mismatch =
        |why: String| RelinkError::Mismatch { path: path.clone(), original: o.original_path.clone(), why };
    if let Some(dev) = base.dev {
        if st.st_dev != dev {
            return Err(mismatch(format!(
                "is on device {:#x}, not on the restart clone ({dev:#x}) mounted at {}",
                st.st_dev,
                base.path.display()
            )));
        }
    }
    let (fmt, want) = (st.st_mode & libc::S_IFMT, o.mode & libc::S_IFMT);
    if fmt == libc::S_IFLNK && want != libc::S_IFLNK {
        return Err(mismatch("is a symbolic link, not a file snapckpt made (planted?); remove it".into()));
    }
    if fmt != want {
        return Err(mismatch(format!("file type {fmt:o}, recorded {want:o}")));
    }
    if st.st_ino != ino {
        return Err(mismatch(format!("inode {}, recorded {ino}", st.st_ino)));
    }
    let same_inode = matches!(method, Method::Link | Method::KernelLink);
    if o.kind == FileKind::Regular && !same_inode && st.st_size as u64 != o.size {
        return Err(mismatch(format!("size {}, recorded {}", st.st_size, o.size)));
    }
    Ok(pfd)
}

/// The access the task had, no more: an object held only through O_PATH fds stays O_PATH.
fn handover_flags(ck: &Checkpoint, o: &Object, pfd: &OwnedFd, path: &Path) -> Result<i32, RelinkError> {
    let st = sys::fstat(pfd.as_raw_fd()).map_err(ioe(path, "fstat"))?;
    Ok(match (held_only_as_opath(ck, o), st.st_mode & libc::S_IFMT) {
        (true, _) => libc::O_PATH,
        (false, libc::S_IFDIR) => libc::O_RDONLY | libc::O_DIRECTORY,
        (false, libc::S_IFIFO) => libc::O_RDWR | libc::O_NONBLOCK,
        (false, libc::S_IFREG) => libc::O_RDONLY,
        _ => libc::O_PATH,
    })
}

/// Open `pfd`'s file again with `flags` through /proc/self/fd (the path stays the one `pfd`
/// was opened by); O_PATH keeps `pfd` itself.
fn reopen(pfd: &OwnedFd, flags: i32, path: &Path) -> Result<OwnedFd, RelinkError> {
    if flags == libc::O_PATH {
        return pfd.try_clone().map_err(ioe(path, "dup"));
    }
    sys::open(procfs::self_fd_path(pfd.as_raw_fd()), flags | libc::O_NOCTTY, 0).map_err(ioe(path, "open"))
}

/// Whether every holder of `o` is an fd opened with O_PATH (no mapping, cwd or exe, no fd
/// that can read or write): then it is handed back as O_PATH only.
pub fn held_only_as_opath(ck: &Checkpoint, o: &Object) -> bool {
    let fds: Vec<u32> = ck
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter())
        .filter(|f| f.object == Some(o.index))
        .map(|f| f.flags)
        .collect();
    !fds.is_empty()
        && o.holders.iter().all(|h| matches!(h.what, Held::Fd(_)))
        && fds.iter().all(|&fl| fl as i32 & libc::O_PATH != 0)
}

/// Give the object its original path for one open, then take the path away again. Falls back
/// to the relinked name when the original path is not on the object's mount.
fn open_at_original(
    o: &Object,
    base: &Base,
    dir: &CheckpointDir,
    name: &str,
    pfd: &OwnedFd,
    flags: i32,
    keep: Keep,
) -> Result<(OwnedFd, PathBuf, Option<Placement>), RelinkError> {
    let relinked = dir.path.join(name);
    // A directory gets its original path only by moving it there and removing it once open,
    // which consumes the relinked name: only when the name is not needed afterwards (CRIU).
    let keep_dir_name = o.kind == FileKind::Directory && keep == Keep::Opened;
    let Some(rel) = relative_to_mount(&o.original_path, &o.mount.mount_point).filter(|_| !keep_dir_name)
    else {
        return Ok((reopen(pfd, flags, &relinked)?, relinked, None));
    };
    let mut place = Placement::prepare(&base.path, &rel, base.dev.is_some())?;
    let at = base.path.join(&place.used_rel);
    let r = place.open(o, dir, name, pfd, flags);
    if r.is_err() || keep == Keep::Opened {
        let undone = place.undo();
        let fd = r?;
        undone?;
        return Ok((fd, at, None));
    }
    Ok((r?, at, Some(place)))
}

/// `path` relative to `mount_point`, if it lies strictly under it (plain components only).
fn relative_to_mount(path: &str, mount_point: &str) -> Option<String> {
    let rest = if mount_point == "/" {
        path.strip_prefix('/')?
    } else {
        path.strip_prefix(mount_point)?.strip_prefix('/')?
    };
    let ok = !rest.is_empty() && rest.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    ok.then(|| rest.to_string())
}

/// The directories made and the names moved to give one object its original path.
struct Placement {
    parent: OwnedFd,
    parent_path: PathBuf,
    /// Directories created under the mount, outermost first: (parent fd, name).
    made_dirs: Vec<(OwnedFd, String)>,
    /// The name used in `parent` (the original one or a sibling).
    used: String,
    used_rel: String,
    /// The original name's occupant, moved aside to this name (clones only).
    aside: Option<String>,
    /// Whether `used` currently names our object.
    placed: bool,
    is_dir: bool,
    /// A directory's relinked name it was moved from (to move it back if abandoned).
    home: Option<(OwnedFd, String)>,
}

impl Drop for Placement {
    /// A placement dropped without [`Placement::undo`] (a failed restart): everything is put
    /// back as it was, a moved directory to its relinked name, so the checkpoint restarts again.
    fn drop(&mut self) {
        if self.placed && self.is_dir {
            if let Some((home, name)) = self.home.take() {
                let at = self.parent_path.join(&self.used);
                if rename_between(self.parent.as_raw_fd(), &self.used, home.as_raw_fd(), &name, &at).is_ok() {
                    self.placed = false;
                }
            }
        }
        let _ = self.undo();
    }
}

impl Placement {
    /// Walk to the parent directory of `rel` under `root` (no symlinks, no other mount),
    /// creating what is missing, and pick the name: the original one, freed if taken (in a
    /// private clone), or a sibling.
    fn prepare(root: &Path, rel: &str, private_clone: bool) -> Result<Placement, RelinkError> {
        let (dirs, last) = rel.rsplit_once('/').map(|(d, l)| (Some(d), l)).unwrap_or((None, rel));
        let mut made_dirs = vec![];
        let mut parent = sys::open(root, libc::O_PATH | libc::O_DIRECTORY, 0).map_err(ioe(root, "open"))?;
        let mut parent_path = root.to_path_buf();
        for comp in dirs.into_iter().flat_map(|d| d.split('/')) {
            parent_path.push(comp);
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW;
            let next = match sys::openat2(parent.as_raw_fd(), comp, flags, 0, sys::RESOLVE_STRICT) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    sys::mkdirat(parent.as_raw_fd(), OsStr::new(comp), 0o700)
                        .map_err(ioe(&parent_path, "mkdirat"))?;
                    let fd = sys::openat2(parent.as_raw_fd(), comp, flags, 0, sys::RESOLVE_STRICT)
                        .map_err(ioe(&parent_path, "openat2"))?;
                    made_dirs.push((parent.try_clone().map_err(ioe(&parent_path, "dup"))?, comp.to_string()));
                    fd
                }
                Err(e) => {
                    return Err(RelinkError::Io(crate::sys::SysError {
                        path: parent_path,
                        syscall: "openat2",
                        source: e,
                    }))
                }
            };
            parent = next;
        }
        let mut p = Placement {
            parent,
            parent_path,
            made_dirs,
            used: last.to_string(),
            used_rel: rel.to_string(),
            aside: None,
            placed: false,
            is_dir: false,
            home: None,
        };
        if p.exists(last) {
            if private_clone {
                let aside = format!(".{last}.snapckpt-aside");
                p.rename(last, &aside)?;
                p.aside = Some(aside);
            } else {
                let sibling = format!("{last}.snapckpt-link");
                if p.exists(&sibling) {
                    return Err(RelinkError::Io(crate::sys::SysError {
                        path: p.parent_path.join(&sibling),
                        syscall: "linkat",
                        source: std::io::Error::from_raw_os_error(libc::EEXIST),
                    }));
                }
                p.used_rel = format!("{}{sibling}", &rel[..rel.len() - last.len()]);
                p.used = sibling;
            }
        }
        Ok(p)
    }

    fn exists(&self, name: &str) -> bool {
        sys::openat2(self.parent.as_raw_fd(), name, libc::O_PATH | libc::O_NOFOLLOW, 0, sys::RESOLVE_STRICT)
            .is_ok()
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), RelinkError> {
        let (f, t) = (sys::cstr(from), sys::cstr(to));
        let (Ok(f), Ok(t)) = (f, t) else {
            return Err(RelinkError::Unsafe {
                path: self.parent_path.join(from),
                why: "name holds a NUL".into(),
            });
        };
        let pfd = self.parent.as_raw_fd();
        // SAFETY: renameat on directory fds we hold and NUL-terminated names.
        if unsafe { libc::renameat(pfd, f.as_ptr(), pfd, t.as_ptr()) } < 0 {
            return Err(RelinkError::Io(crate::sys::SysError {
                path: self.parent_path.join(from),
                syscall: "renameat",
                source: std::io::Error::last_os_error(),
            }));
        }
        Ok(())
    }

    /// Put the object at the chosen name, open it there with `flags`, checked to be the object.
    fn open(
        &mut self,
        o: &Object,
        dir: &CheckpointDir,
        name: &str,
        pfd: &OwnedFd,
        flags: i32,
    ) -> Result<OwnedFd, RelinkError> {
        let at = self.parent_path.join(&self.used);
        self.is_dir = o.kind == FileKind::Directory;
        if self.is_dir {
            // A directory cannot get a second link: it is moved here and, once open, removed.
            rename_between(dir.fd(), name, self.parent.as_raw_fd(), &self.used, &at)?;
            let home = sys::openat2(dir.fd(), ".", libc::O_PATH | libc::O_DIRECTORY, 0, sys::RESOLVE_STRICT)
                .map_err(ioe(&dir.path, "openat2"))?;
            self.home = Some((home, name.to_string()));
        } else {
            sys::link_follow(
                procfs::self_fd_path(pfd.as_raw_fd()),
                self.parent.as_raw_fd(),
                OsStr::new(&self.used),
            )
            .map_err(ioe(&at, "linkat"))?;
        }
        self.placed = true;
        let here = sys::openat2(
            self.parent.as_raw_fd(),
            &self.used,
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            sys::RESOLVE_STRICT,
        )
        .map_err(ioe(&at, "openat2"))?;
        let (a, b) = (sys::fstat(here.as_raw_fd()), sys::fstat(pfd.as_raw_fd()));
        match (a, b) {
            (Ok(a), Ok(b)) if a.st_ino == b.st_ino && a.st_dev == b.st_dev => {}
            _ => {
                return Err(RelinkError::Mismatch {
                    path: at,
                    original: o.original_path.clone(),
                    why: "changed while it was being placed".into(),
                })
            }
        }
        reopen(&here, flags, &at)
    }

    /// Remove the name (rmdir for a directory), bring an occupant back, remove the made
    /// directories. Every step is attempted; the first error is returned.
    fn undo(&mut self) -> Result<(), RelinkError> {
        let mut first: Option<RelinkError> = None;
        let mut keep = |r: Result<(), RelinkError>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        if self.placed {
            let at = self.parent_path.join(&self.used);
            keep(
                sys::unlinkat(self.parent.as_raw_fd(), OsStr::new(&self.used), self.is_dir)
                    .map_err(ioe(&at, "unlinkat")),
            );
            self.placed = false;
        }
        if let Some(aside) = self.aside.take() {
            keep(self.rename(&aside, &self.used.clone()));
        }
        for (pfd, name) in self.made_dirs.drain(..).rev() {
            let p = PathBuf::from(name.as_str());
            keep(sys::unlinkat(pfd.as_raw_fd(), OsStr::new(&name), true).map_err(ioe(&p, "rmdir")));
        }
        first.map_or(Ok(()), Err)
    }
}

fn rename_between(
    from_dir: RawFd,
    from: &str,
    to_dir: RawFd,
    to: &str,
    at: &Path,
) -> Result<(), RelinkError> {
    let (Ok(f), Ok(t)) = (sys::cstr(from), sys::cstr(to)) else {
        return Err(RelinkError::Unsafe { path: at.into(), why: "name holds a NUL".into() });
    };
    // SAFETY: renameat on directory fds we hold and NUL-terminated names.
    if unsafe { libc::renameat(from_dir, f.as_ptr(), to_dir, t.as_ptr()) } < 0 {
        return Err(RelinkError::Io(crate::sys::SysError {
            path: at.into(),
            syscall: "renameat",
            source: std::io::Error::last_os_error(),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_to_mount("/srv/data/a/b", "/srv/data").as_deref(), Some("a/b"));
        assert_eq!(relative_to_mount("/a", "/").as_deref(), Some("a"));
        assert_eq!(relative_to_mount("/srv/database/x", "/srv/data"), None);
        assert_eq!(relative_to_mount("/srv/data", "/srv/data"), None);
        assert_eq!(relative_to_mount("/srv/data/../etc", "/srv/data"), None);
        assert_eq!(relative_to_mount("/srv/data//x", "/srv/data"), None);
    }
}
