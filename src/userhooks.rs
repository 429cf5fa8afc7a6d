//! User hooks: executables the operator asks snapckpt to run at named points of a take, a
//! restart and a delete, like snapper's plugins. (Not [`crate::hooks`], the test-injection
//! points.)
//!
//! | point | when | a failure |
//! |---|---|---|
//! | `pre-take` | before anything is frozen or created | stops the take; nothing is left |
//! | `post-freeze` | the tasks are frozen, nothing relinked yet | stops the take; undone, thawed |
//! | `post-snapshot` | relinked, dumped and snapshotted, tasks still frozen | stops the take; undone |
//! | `post-take` | the checkpoint is published, tasks thawed/killed | a warning |
//! | `pre-restart` | before anything is mounted or restored | stops the restart |
//! | `post-restart` | the tasks are restored (or the `--exec` command ended) | a warning |
//! | `post-delete` | the checkpoint is deleted | a warning |
//!
//! Where hooks come from, in this order at each point:
//! 1. the job file's `[hooks]` table: `pre-take = ["/usr/local/bin/quiesce", "--db"]` (argv);
//! 2. every executable regular file of the hooks directory, in name order, run as `EXE POINT`
//!    (the directory: job `[hooks] dir`, else env `SNAPCKPT_HOOKS_DIR`, else
//!    [`DEFAULT_DIR`] when it exists). Names starting with `.` or ending in `~` are skipped.
//!
//! Each hook runs with stdin from /dev/null, its stdout and stderr on snapckpt's stderr (so
//! `--json` output stays clean), in a process group of its own, with these variables:
//! `SNAPCKPT_HOOK` (the point), `SNAPCKPT_ID`, `SNAPCKPT_IMAGE_DIR` (the image directory; during
//! a take its `.ID.partial` name), `SNAPCKPT_IMAGE_ROOT`, `SNAPCKPT_JOB` (empty when none),
//! `SNAPCKPT_PIDS` (space-separated: the frozen tasks, or the restored ones),
//! `SNAPCKPT_SNAPSHOTS` (one snapshot per line: btrfs path or `VG/LV`), `SNAPCKPT_MOUNTS` (the
//! mount points of the unlinked files and snapshots, one per line). A hook that runs longer
//! than the timeout (job `[hooks] timeout_s`, env `SNAPCKPT_HOOKS_TIMEOUT_S`, default 60 s) is
//! killed with its process group and counts as failed.

use crate::record::Snapshot;
use serde::Deserialize;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The hooks directory used when neither the job nor the environment names one.
pub const DEFAULT_DIR: &str = "/etc/snapckpt/hooks.d";
/// The environment variable naming the hooks directory.
pub const DIR_VAR: &str = "SNAPCKPT_HOOKS_DIR";
/// The environment variable giving the timeout in seconds.
pub const TIMEOUT_VAR: &str = "SNAPCKPT_HOOKS_TIMEOUT_S";
/// How long a hook may run when nothing says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A named point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    PreTake,
    PostFreeze,
    PostSnapshot,
    PostTake,
    PreRestart,
    PostRestart,
    PostDelete,
}

impl Point {
    pub const ALL: [Point; 7] = [
        Point::PreTake,
        Point::PostFreeze,
        Point::PostSnapshot,
        Point::PostTake,
        Point::PreRestart,
        Point::PostRestart,
        Point::PostDelete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::PreTake => "pre-take",
            Point::PostFreeze => "post-freeze",
            Point::PostSnapshot => "post-snapshot",
            Point::PostTake => "post-take",
            Point::PreRestart => "pre-restart",
            Point::PostRestart => "post-restart",
            Point::PostDelete => "post-delete",
        }
    }
}

/// The job file's `[hooks]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct JobHooks {
    /// The hooks directory (instead of env `SNAPCKPT_HOOKS_DIR` / the default).
    pub dir: Option<PathBuf>,
    /// Seconds a hook may run.
    #[serde(alias = "timeout_s")]
    pub timeout_s: Option<u64>,
    pub pre_take: Option<Vec<String>>,
    pub post_freeze: Option<Vec<String>>,
    pub post_snapshot: Option<Vec<String>>,
    pub post_take: Option<Vec<String>>,
    pub pre_restart: Option<Vec<String>>,
    pub post_restart: Option<Vec<String>>,
    pub post_delete: Option<Vec<String>>,
}

impl JobHooks {
    fn argv(&self, p: Point) -> Option<&Vec<String>> {
        match p {
            Point::PreTake => self.pre_take.as_ref(),
            Point::PostFreeze => self.post_freeze.as_ref(),
            Point::PostSnapshot => self.post_snapshot.as_ref(),
            Point::PostTake => self.post_take.as_ref(),
            Point::PreRestart => self.pre_restart.as_ref(),
            Point::PostRestart => self.post_restart.as_ref(),
            Point::PostDelete => self.post_delete.as_ref(),
        }
        .filter(|v| !v.is_empty())
    }
}

/// The hooks of one command: resolved from the job, the environment and the default.
#[derive(Debug, Clone, Default)]
pub struct Hooks {
    pub job: JobHooks,
    pub dir: Option<PathBuf>,
    pub timeout: Duration,
}

impl Hooks {
    /// No hooks at all.
    pub fn none() -> Hooks {
        Hooks { job: JobHooks::default(), dir: None, timeout: DEFAULT_TIMEOUT }
    }

    /// From the job's `[hooks]` (if any) and the environment variables `dir_env`, `timeout_env`.
    pub fn resolve(job: Option<&JobHooks>, dir_env: Option<PathBuf>, timeout_env: Option<String>) -> Hooks {
        let job = job.cloned().unwrap_or_default();
        let dir = job
            .dir
            .clone()
            .or(dir_env.filter(|d| !d.as_os_str().is_empty()))
            .or_else(|| Some(PathBuf::from(DEFAULT_DIR)).filter(|d| d.is_dir()));
        let secs = job.timeout_s.or_else(|| timeout_env.and_then(|t| t.trim().parse().ok()));
        Hooks { job, dir, timeout: secs.map(Duration::from_secs).unwrap_or(DEFAULT_TIMEOUT) }
    }

    /// The commands to run at `p`, in order.
    pub fn commands(&self, p: Point) -> Vec<Vec<String>> {
        let mut out: Vec<Vec<String>> = self.job.argv(p).into_iter().cloned().collect();
        if let Some(d) = &self.dir {
            for exe in executables(d) {
                out.push(vec![exe.to_string_lossy().into_owned(), p.name().to_string()]);
            }
        }
        out
    }
}

/// The executable regular files of `dir`, sorted by name.
fn executables(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            !n.starts_with('.') && !n.ends_with('~')
        })
        .map(|e| e.path())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
        .collect();
    v.sort();
    v
}

/// What a hook is told about the checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub id: String,
    pub image_dir: PathBuf,
    pub image_root: PathBuf,
    pub job: Option<String>,
    pub pids: Vec<i32>,
    pub snapshots: Vec<String>,
    pub mounts: Vec<String>,
}

impl Context {
    /// The snapshots' paths (`VG/LV` for LVM) and their mount points, added to the context.
    pub fn with_snapshots(mut self, snaps: &[Snapshot]) -> Context {
        for s in snaps {
            self.snapshots.push(match s {
                Snapshot::Btrfs { path, .. } => path.clone(),
                Snapshot::Lvm { vg, snapshot_lv, .. } => format!("{vg}/{snapshot_lv}"),
            });
            if !self.mounts.iter().any(|m| m == s.mount_point()) {
                self.mounts.push(s.mount_point().to_string());
            }
        }
        self
    }

    /// The checkpoint of a record.
    pub fn of_record(ck: &crate::record::Checkpoint, dir: &Path) -> Context {
        let mut c = Context {
            id: ck.id.clone(),
            image_dir: dir.to_path_buf(),
            image_root: dir.parent().map(Path::to_path_buf).unwrap_or_default(),
            job: ck.job.clone(),
            pids: ck.tasks.iter().map(|t| t.pid).collect(),
            ..Context::default()
        };
        for o in &ck.objects {
            if !c.mounts.contains(&o.mount.mount_point) {
                c.mounts.push(o.mount.mount_point.clone());
            }
        }
        c.with_snapshots(&ck.snapshots)
    }

    fn vars(&self, p: Point) -> Vec<(&'static str, String)> {
        let join = |v: &[String], sep: &str| v.join(sep);
        vec![
            ("SNAPCKPT_HOOK", p.name().to_string()),
            ("SNAPCKPT_ID", self.id.clone()),
            ("SNAPCKPT_IMAGE_DIR", self.image_dir.display().to_string()),
            ("SNAPCKPT_IMAGE_ROOT", self.image_root.display().to_string()),
            ("SNAPCKPT_JOB", self.job.clone().unwrap_or_default()),
            ("SNAPCKPT_PIDS", self.pids.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(" ")),
            ("SNAPCKPT_SNAPSHOTS", join(&self.snapshots, "\n")),
            ("SNAPCKPT_MOUNTS", join(&self.mounts, "\n")),
        ]
    }
}

/// A hook that failed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{point} hook {cmd}: cannot run it: {source}")]
    Spawn { point: &'static str, cmd: String, source: std::io::Error },
    #[error("{point} hook {cmd} failed ({status})")]
    Failed { point: &'static str, cmd: String, status: String },
    #[error("{point} hook {cmd} timed out after {} s and was killed", secs)]
    TimedOut { point: &'static str, cmd: String, secs: u64 },
}

/// Run every hook of `p`, in order; the first failure stops and is returned.
pub fn run(hooks: &Hooks, p: Point, ctx: &Context) -> Result<(), HookError> {
    for argv in hooks.commands(p) {
        crate::ui::step(&format!("running {} hook {}", p.name(), argv.join(" ")));
        run_one(&argv, p, ctx, hooks.timeout)?;
    }
    Ok(())
}

/// Run the hooks of a point after the fact (post-take, post-restart, post-delete): a failure
/// is a warning, returned as text.
pub fn run_post(hooks: &Hooks, p: Point, ctx: &Context) -> Option<String> {
    run(hooks, p, ctx)
        .err()
        .map(|e| format!("{e} (the {} itself succeeded)", p.name().trim_start_matches("post-")))
}

fn run_one(argv: &[String], p: Point, ctx: &Context, timeout: Duration) -> Result<(), HookError> {
    let cmd = argv.join(" ");
    let spawn_err = |source| HookError::Spawn { point: p.name(), cmd: cmd.clone(), source };
    let stdout = std::io::stderr().as_fd_owned().map_err(spawn_err)?;
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).stdin(Stdio::null()).stdout(stdout).process_group(0);
    for (k, v) in ctx.vars(p) {
        c.env(k, v);
    }
    let mut child = c.spawn().map_err(spawn_err)?;
    let t = Instant::now();
    loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(st) if st.success() => return Ok(()),
            Some(st) => return Err(HookError::Failed { point: p.name(), cmd, status: st.to_string() }),
            None if t.elapsed() >= timeout => {
                // SAFETY: a signal to the process group we created.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(HookError::TimedOut { point: p.name(), cmd, secs: timeout.as_secs() });
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A duplicate of stderr as an owned fd (a hook's stdout goes there).
trait AsFdOwned {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl AsFdOwned for std::io::Stderr {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_table_and_directory_in_order() {
        let d = std::env::temp_dir().join(format!("snapckpt-userhooks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (n, mode) in [("20-b", 0o755), ("10-a", 0o755), ("30-noexec", 0o644), (".hidden", 0o755)] {
            std::fs::write(d.join(n), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(d.join(n), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let job: JobHooks = toml::from_str("pre-take = [\"/bin/true\", \"x\"]\ntimeout_s = 3").unwrap();
        let h = Hooks::resolve(Some(&job), Some(d.clone()), None);
        assert_eq!(h.timeout, Duration::from_secs(3));
        let cmds = h.commands(Point::PreTake);
        assert_eq!(cmds[0], vec!["/bin/true", "x"]);
        assert_eq!(cmds[1], vec![d.join("10-a").display().to_string(), "pre-take".into()]);
        assert_eq!(cmds[2], vec![d.join("20-b").display().to_string(), "pre-take".into()]);
        assert_eq!(cmds.len(), 3);
        assert_eq!(h.commands(Point::PostDelete).len(), 2);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failure_and_timeout() {
        let h = |argv: &[&str], t| Hooks {
            job: JobHooks {
                pre_take: Some(argv.iter().map(|s| s.to_string()).collect()),
                ..Default::default()
            },
            dir: None,
            timeout: Duration::from_millis(t),
        };
        let ctx = Context { id: "X".into(), ..Default::default() };
        run(&h(&["sh", "-c", "test \"$SNAPCKPT_ID\" = X"], 5000), Point::PreTake, &ctx).unwrap();
        let e = run(&h(&["false"], 5000), Point::PreTake, &ctx).unwrap_err();
        assert!(matches!(e, HookError::Failed { .. }), "{e}");
        let t = Instant::now();
        let e = run(&h(&["sleep", "30"], 300), Point::PreTake, &ctx).unwrap_err();
        assert!(matches!(e, HookError::TimedOut { .. }) && t.elapsed() < Duration::from_secs(5), "{e}");
        assert!(job_keys_refused());
    }

    fn job_keys_refused() -> bool {
        toml::from_str::<JobHooks>("pre-tak = []").is_err()
    }
}
