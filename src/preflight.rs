//! Checks made before a command creates or changes anything, so that what cannot work fails
//! with one clear message instead of half-way (a non-root `take` used to create files and then
//! have its thaw watchdog fail with `pidfd_send_signal ... Operation not permitted`; a non-root
//! `restart` failed on `mkdir /run/snapckpt/...`).
//!
//! - privileges: `take` (also `--dry-run`, which freezes), `restart`, `delete`, `gc` and `prune`
//!   (not their dry runs) need root: they freeze other users' tasks, work in root-owned
//!   `lost+found/checkpoint`, mount and delete snapshots, run CRIU;
//! - the image root of a take: it or its nearest existing ancestor is a writable directory;
//! - the job's `[[filesystem]]` snapshots of a take can be taken (before anything is frozen);
//! - the CRIU binary of a take is an executable file.

use std::path::Path;

/// Why a command cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "snapckpt {cmd} must run as root (it {why}); nothing was changed: run it as root, e.g. with sudo"
    )]
    NotRoot { cmd: &'static str, why: &'static str },
    #[error("image root {}: {why}; nothing was changed", root.display())]
    ImageRoot { root: std::path::PathBuf, why: String },
    #[error("{0}; nothing was changed")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("CRIU {}: {why}; nothing was changed", path.display())]
    Criu { path: std::path::PathBuf, why: String },
}

/// What each command needs root for.
fn why_root(cmd: &str) -> &'static str {
    match cmd {
        "take" => "freezes tasks, links their files into root-owned lost+found/checkpoint, takes snapshots and runs CRIU",
        "restart" => "mounts snapshot clones, opens the preserved files and runs CRIU",
        "delete" | "prune" => "deletes snapshots and relinked names in root-owned lost+found/checkpoint",
        _ => "works in root-owned lost+found/checkpoint directories",
    }
}

/// `cmd` runs as root (effective uid 0).
pub fn require_root(cmd: &'static str) -> Result<(), PreflightError> {
    require_root_as(cmd, nix::unistd::geteuid().is_root())
}

/// [`require_root`] with the answer given (testable without root).
pub fn require_root_as(cmd: &'static str, is_root: bool) -> Result<(), PreflightError> {
    if is_root {
        Ok(())
    } else {
        Err(PreflightError::NotRoot { cmd, why: why_root(cmd) })
    }
}

/// The image root can be written: it is a directory, or its nearest existing ancestor is one,
/// writable by us.
pub fn image_root_writable(root: &Path) -> Result<(), PreflightError> {
    let err = |why: String| PreflightError::ImageRoot { root: root.to_path_buf(), why };
    let mut p = root;
    loop {
        match std::fs::metadata(p) {
            Ok(m) if !m.is_dir() => return Err(err(format!("{} is not a directory", p.display()))),
            Ok(_) => break,
            Err(_) => match p.parent() {
                Some(q) if !q.as_os_str().is_empty() => p = q,
                _ => return Ok(()),
            },
        }
    }
    let c = crate::sys::cstr(p).map_err(|e| err(e.to_string()))?;
    // SAFETY: access(2) on a NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(err(format!("{} is not writable: {}", p.display(), std::io::Error::last_os_error())));
    }
    Ok(())
}

/// Everything a take can check before it starts.
pub fn take(opts: &crate::take::TakeOptions) -> Result<(), PreflightError> {
    require_root("take")?;
    if !opts.dry_run {
        image_root_writable(&opts.image_root)?;
    }
    for spec in &opts.filesystems {
        crate::snapshot::precheck(spec)?;
    }
    if let crate::take::EngineOpts::Criu { path, .. } = &opts.engine {
        let why = match std::fs::metadata(path) {
            Ok(m)
                if m.is_file() && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0 =>
            {
                return Ok(())
            }
            Ok(_) => "not an executable file".to_string(),
            Err(e) => e.to_string(),
        };
        return Err(PreflightError::Criu { path: path.clone(), why });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_command() {
        assert!(require_root_as("take", true).is_ok());
        let e = require_root_as("restart", false).unwrap_err().to_string();
        assert!(
            e.starts_with("snapckpt restart must run as root") && e.contains("nothing was changed"),
            "{e}"
        );
        let d = std::env::temp_dir().join(format!("snapckpt-preflight-{}", std::process::id()));
        std::fs::write(&d, "").unwrap();
        let e = image_root_writable(&d.join("images")).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        std::fs::remove_file(&d).unwrap();
        assert!(image_root_writable(&std::env::temp_dir().join("snapckpt-preflight-none/x/y")).is_ok());
    }
}
