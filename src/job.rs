//! TOML job files: everything `snapckpt take` and `restart` can be told on the command line,
//! kept in a file per job. Unknown keys are refused with the file, line and column.
//!
//! ```toml
//! name = "demo"                      # optional, recorded in the image
//! image_root = "/var/lib/snapckpt"   # where image directories go
//!
//! [tasks]                            # exactly one of pid / cgroup
//! pid = 1234
//! tree = true                        # with pid: include all descendants
//! # cgroup = "/sys/fs/cgroup/unified/myjob"
//!
//! [freeze]
//! timeout_ms = 10000
//!
//! [relink]
//! template = "unlink-at-restart-%t-%n"
//!
//! [snapshot]
//! keep_links = false                 # keep relinked names on the live fs after the snapshot
//! timeout_s = 120                    # give up on the snapshots (tasks thawed) after this
//!
//! [[filesystem]]                     # one per filesystem to snapshot
//! mount = "/srv/data"
//! snapshot = "btrfs"                 # or "lvm"
//! snapshot_dir = ".snapckpt"         # btrfs: where snapshots go, relative to the mount
//! # lvm_size = "1G"                  # lvm: classic (COW) snapshot size; thin LVs need none
//!
//! [criu]
//! engine = "criu"                    # or "none": files only, tasks keep running
//! path = "/opt/snapckpt/criu/bin/criu"
//! leave_running = false             # true: the tasks go on after the dump
//! leave_stopped = false             # true: they stay frozen (resume or kill them yourself)
//! pre_dump = false                  # true: CRIU pre-dump rounds before the freeze (take --pre-dump)
//!
//! [retention]                        # what `snapckpt prune --job FILE` keeps
//! keep_last = 5                      # the 5 newest of this job
//! keep_within = "1d"                 # and all younger than a day
//!
//! [hooks]                            # user hooks, see crate::userhooks
//! timeout_s = 60
//! pre-take = ["/usr/local/bin/quiesce", "--flush"]
//! ```

use crate::engine::AfterDump;
use crate::snapshot::Backend;
use crate::units::valid_size;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Largest job file [`Job::load`] reads.
pub const MAX_JOB_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{col}: {msg}")]
    Parse { path: PathBuf, line: usize, col: usize, msg: String },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub name: Option<String>,
    pub image_root: Option<PathBuf>,
    #[serde(default)]
    pub tasks: Tasks,
    #[serde(default)]
    pub freeze: Freeze,
    #[serde(default)]
    pub relink: Relink,
    #[serde(default)]
    pub snapshot: SnapshotCfg,
    #[serde(default)]
    pub filesystem: Vec<Filesystem>,
    #[serde(default)]
    pub criu: Criu,
    /// User hooks (`[hooks]`, see [`crate::userhooks`]).
    pub hooks: Option<crate::userhooks::JobHooks>,
    /// What `snapckpt prune --job` keeps (`[retention]`, see [`crate::prune`]).
    pub retention: Option<crate::prune::Retention>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tasks {
    pub pid: Option<i32>,
    #[serde(default)]
    pub tree: bool,
    pub cgroup: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Relink {
    pub template: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCfg {
    #[serde(default)]
    pub keep_links: bool,
    /// How long the snapshots may take (seconds) before the take gives up on them.
    pub timeout_s: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub mount: PathBuf,
    pub snapshot: Backend,
    pub snapshot_dir: Option<String>,
    pub lvm_size: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EngineKind {
    #[default]
    None,
    Criu,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Criu {
    pub engine: Option<EngineKind>,
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub leave_running: bool,
    /// Leave the tasks frozen after the dump (not with `leave_running`).
    #[serde(default)]
    pub leave_stopped: bool,
    /// The tasks are a shell job (CRIU `--shell-job`).
    #[serde(default)]
    pub shell_job: bool,
    /// Dump established TCP connections (CRIU `--tcp-established`).
    #[serde(default)]
    pub tcp_established: bool,
    /// Stop CRIU if a dump takes longer (seconds).
    pub dump_timeout_s: Option<u64>,
    /// CRIU pre-dump rounds before the freeze (`take --pre-dump`).
    #[serde(default)]
    pub pre_dump: bool,
}

impl Criu {
    /// What happens to the tasks after the dump.
    pub fn after_dump(&self) -> AfterDump {
        match (self.leave_running, self.leave_stopped) {
            (true, _) => AfterDump::Run,
            (false, true) => AfterDump::Stop,
            (false, false) => AfterDump::Kill,
        }
    }
}

impl Job {
    /// Read and check a job file: a regular file (or a symlink to one) of at most
    /// [`MAX_JOB_BYTES`]. Anything else (a device, FIFO, socket, directory) is refused without
    /// reading it, and no more than the limit is ever read.
    pub fn load(path: &Path) -> Result<Job, JobError> {
        use std::os::unix::fs::OpenOptionsExt;
        let read_err = |source| JobError::Read { path: path.into(), source };
        let invalid = |msg: String| JobError::Invalid { path: path.into(), msg };
        // O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: nor adopt a tty.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(read_err)?;
        let data = crate::sys::read_regular(f, MAX_JOB_BYTES).map_err(|e| match e {
            crate::sys::ReadRegularError::Io { source, .. } => read_err(source),
            crate::sys::ReadRegularError::NotRegular(what) => {
                invalid(format!("is {what}, not a regular file: give a TOML job file"))
            }
            crate::sys::ReadRegularError::TooBig => {
                invalid(format!("larger than {} MiB: not a job file", MAX_JOB_BYTES >> 20))
            }
        })?;
        let text = String::from_utf8(data).map_err(|e| {
            invalid(format!(
                "not UTF-8 text (invalid byte at offset {}): not a job file",
                e.utf8_error().valid_up_to()
            ))
        })?;
        Job::parse(&text, path)
    }

    /// Parse job text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Job, JobError> {
        let job: Job = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            JobError::Parse { path: path.into(), line, col, msg: e.message().to_string() }
        })?;
        job.check(path)?;
        Ok(job)
    }

    fn check(&self, path: &Path) -> Result<(), JobError> {
        let bad = |msg: String| Err(JobError::Invalid { path: path.into(), msg });
        if self.image_root.as_ref().is_some_and(|r| r.as_os_str().is_empty()) {
            return bad("image_root = \"\": give the directory that holds the images (or leave image_root out for the default)".into());
        }
        match (&self.tasks.pid, &self.tasks.cgroup) {
            (Some(_), Some(_)) => return bad("[tasks]: give pid or cgroup, not both".into()),
            (Some(p), None) if *p <= 0 => {
                return bad(format!("[tasks] pid = {p}: must be a positive process id"))
            }
            (None, Some(_)) if self.tasks.tree => {
                return bad(
                    "[tasks] tree = true goes with pid, not cgroup (a cgroup includes its whole subtree)"
                        .into(),
                )
            }
            _ => {}
        }
        if let Some(c) = &self.tasks.cgroup {
            if !c.is_absolute() {
                return bad(format!("[tasks] cgroup = {c:?}: must be an absolute path under /sys/fs/cgroup"));
            }
        }
        if let Some(t) = &self.relink.template {
            if let Err(e) = crate::relink::Template::parse(t) {
                return bad(format!("[relink] {e}"));
            }
        }
        for (i, f) in self.filesystem.iter().enumerate() {
            if let Some(j) = self.filesystem[..i].iter().position(|g| g.mount == f.mount) {
                return bad(format!(
                    "[[filesystem]] #{}: mount = {:?} is already [[filesystem]] #{}: one entry per filesystem",
                    i + 1,
                    f.mount,
                    j + 1
                ));
            }
            if !f.mount.is_absolute() {
                return bad(format!(
                    "[[filesystem]] #{}: mount = {:?} must be an absolute path",
                    i + 1,
                    f.mount
                ));
            }
            if let Some(d) = &f.snapshot_dir {
                if d.is_empty()
                    || d.starts_with('/')
                    || d.split('/').any(|c| c == ".." || c == "." || c.is_empty())
                {
                    return bad(format!("[[filesystem]] #{}: snapshot_dir = {d:?} must be a relative path inside the mount, without '.' or '..'", i + 1));
                }
            }
            if let Some(s) = &f.lvm_size {
                if !valid_size(s) {
                    return bad(format!(
                        "[[filesystem]] #{}: lvm_size = {s:?} is not a size like \"512M\" or \"2G\"",
                        i + 1
                    ));
                }
            }
        }
        if self.criu.leave_running && self.criu.leave_stopped {
            return bad("[criu]: leave_running and leave_stopped exclude each other".into());
        }
        if self.freeze.timeout_ms == Some(0) {
            return bad("[freeze] timeout_ms must be > 0".into());
        }
        if self.snapshot.timeout_s == Some(0) {
            return bad("[snapshot] timeout_s must be > 0".into());
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, off: usize) -> (usize, usize) {
    let before = &text[..off.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Job, JobError> {
        Job::parse(t, Path::new("job.toml"))
    }

    #[test]
    fn full_job() {
        let j = parse(
            r#"
name = "x"
image_root = "/var/lib/snapckpt"
[tasks]
pid = 12
tree = true
[freeze]
timeout_ms = 500
[relink]
template = "ck-%t-%n"
[snapshot]
keep_links = true
[[filesystem]]
mount = "/srv"
snapshot = "btrfs"
snapshot_dir = ".snaps/ck"
[[filesystem]]
mount = "/data"
snapshot = "lvm"
lvm_size = "512M"
[criu]
engine = "criu"
path = "/opt/criu"
leave_running = true
"#,
        )
        .unwrap();
        assert_eq!(j.tasks.pid, Some(12));
        assert_eq!(j.filesystem.len(), 2);
        assert_eq!(j.filesystem[1].snapshot, Backend::Lvm);
        assert_eq!(j.criu.engine, Some(EngineKind::Criu));
    }

    #[test]
    fn unknown_key_names_line() {
        let e = parse("name = \"x\"\n[tasks]\npid = 1\nbogus = 3\n").unwrap_err().to_string();
        assert!(e.starts_with("job.toml:4:"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn refusals() {
        for (t, what) in [
            ("[tasks]\npid = 1\ncgroup = \"/sys/fs/cgroup/x\"\n", "not both"),
            ("[tasks]\npid = -4\n", "positive"),
            ("[relink]\ntemplate = \"../%t-%n\"\n", "plain file name"),
            ("[[filesystem]]\nmount = \"rel\"\nsnapshot = \"btrfs\"\n", "absolute"),
            ("[[filesystem]]\nmount = \"/a\"\nsnapshot = \"zfs\"\n", "unknown variant"),
            (
                "[[filesystem]]\nmount = \"/a\"\nsnapshot = \"btrfs\"\nsnapshot_dir = \"../x\"\n",
                "relative path",
            ),
            ("[[filesystem]]\nmount = \"/a\"\nsnapshot = \"lvm\"\nlvm_size = \"lots\"\n", "not a size"),
            (
                "[[filesystem]]\nmount = \"/a\"\nsnapshot = \"btrfs\"\n[[filesystem]]\nmount = \"/a\"\nsnapshot = \"lvm\"\n",
                "already [[filesystem]] #1",
            ),
            ("[[filesystem]]\nmount = \"/a\"\nsnapshot = \"lvm\"\nlvm_size = \"99999999999999999999999T\"\n", "not a size"),
            ("[tasks\n", "job.toml:1:"),
            ("[criu]\nleave_running = true\nleave_stopped = true\n", "exclude each other"),
            ("image_root = \"\"\n", "image_root = \"\""),
        ] {
            let e = parse(t).unwrap_err().to_string();
            assert!(e.contains(what), "{t:?}: {e}");
        }
    }

    /// A job path that is not a regular file is refused at once, without reading it: no hang
    /// on a FIFO, no unbounded read of /dev/zero; an oversized file is refused after at most
    /// 1 MiB + 1 bytes.
    #[test]
    fn load_refuses_what_is_not_a_job_file() {
        let d = std::env::temp_dir().join(format!("snapckpt-job-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let fifo = d.join("fifo.toml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let link = d.join("zero.toml");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let t0 = std::time::Instant::now();
        for (p, what) in [
            (Path::new("/dev/zero"), "is a character device, not a regular file"),
            (link.as_path(), "is a character device, not a regular file"),
            (fifo.as_path(), "is a FIFO, not a regular file"),
            (d.as_path(), "is a directory, not a regular file"),
        ] {
            let e = Job::load(p).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}: ", p.display())) && e.contains(what), "{}: {e}", p.display());
        }
        let big = d.join("big.toml");
        std::fs::write(&big, format!("name = \"{}\"\n", "x".repeat(1 << 20))).unwrap();
        let e = Job::load(&big).unwrap_err().to_string();
        assert!(e.contains("larger than 1 MiB"), "{e}");
        let bin = d.join("bin.toml");
        std::fs::write(&bin, b"name = \"\xff\"\n").unwrap();
        let e = Job::load(&bin).unwrap_err().to_string();
        assert!(e.contains("not UTF-8"), "{e}");
        let ok = d.join("ok.toml");
        std::fs::write(&ok, "[tasks]\npid = 12\n").unwrap();
        assert_eq!(Job::load(&ok).unwrap().tasks.pid, Some(12));
        assert!(t0.elapsed() < std::time::Duration::from_secs(10), "took {:?}", t0.elapsed());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
