//! Unit tests of the resolvers: precedence (flag > job > env > default), refusals, and the
//! defaults. None needs root: the environment is an [`Env`] value, files are in a temp dir.

use super::*;
use crate::engine::AfterDump;

/// Parse `argv` (without the program and subcommand names) as clap would for `T`.
fn parse<T: clap::Args + clap::FromArgMatches>(argv: &[&str]) -> T {
    let cmd = T::augment_args(clap::Command::new("snapckpt"));
    let m = cmd.try_get_matches_from(std::iter::once("snapckpt").chain(argv.iter().copied())).unwrap();
    T::from_arg_matches(&m).unwrap()
}

/// A fresh temp directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("snapckpt-config-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A job file `job.toml` in `d` holding `text`; returns its path as a string.
fn job(d: &Path, text: &str) -> String {
    let p = d.join("job.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn env(image_root: Option<&Path>, criu: Option<&Path>) -> Env {
    Env { image_root: image_root.map(Into::into), criu: criu.map(Into::into), ..Env::default() }
}

fn take(argv: &[&str], e: &Env) -> Result<take::TakeOptions, ConfigError> {
    take_options(parse(argv), e)
}

#[test]
fn image_root_precedence_flag_job_env_default() {
    let d = tmp("root");
    let (f, j, e) = (d.join("flag"), d.join("job"), d.join("env"));
    let jf = job(&d, &format!("image_root = {:?}\n[tasks]\npid = 7\n", j.to_str().unwrap()));
    let en = env(Some(&e), None);
    let root = |argv: &[&str], en: &Env| take(argv, en).unwrap().image_root;
    assert_eq!(root(&["--job", &jf, "--image-root", f.to_str().unwrap()], &en), f);
    assert_eq!(root(&["--job", &jf], &en), j);
    assert_eq!(root(&["--pid", "7"], &en), e);
    assert_eq!(root(&["--pid", "7"], &Env::default()), PathBuf::from(take::DEFAULT_IMAGE_ROOT));
    // commands without a job: flag > env > default
    let list = |argv: &[&str], en: &Env| list_options(parse(argv), en).unwrap().image_root;
    assert_eq!(list(&["--image-root", f.to_str().unwrap()], &en), f);
    assert_eq!(list(&[], &en), e);
    assert_eq!(list(&[], &Env::default()), PathBuf::from(take::DEFAULT_IMAGE_ROOT));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn empty_or_non_directory_image_root_refused() {
    let d = tmp("empty");
    // clap refuses `--image-root ""` and a job file `image_root = ""`: the environment is left
    let e = take(&["--pid", "7"], &env(Some(Path::new("")), None)).unwrap_err();
    assert!(matches!(e, ConfigError::EmptyImageRoot { from: "env SNAPCKPT_IMAGE_ROOT" }), "{e}");
    assert!(image_root(Some("".into()), None, &Env::default()).is_err());
    let e = list_options(parse(&[]), &env(Some(Path::new("")), None)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "the image root is empty (env SNAPCKPT_IMAGE_ROOT is set to \"\"): give a directory with --image-root DIR, or unset it for /var/lib/snapckpt/images"
    );
    let file = d.join("file");
    std::fs::write(&file, "").unwrap();
    let e = gc_options(parse(&[]), &env(Some(&file), None)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("image root {} (env SNAPCKPT_IMAGE_ROOT) exists and is not a directory", file.display())
    );
    // a checkpoint given as a directory needs no image root: an empty env one is not looked at
    let e = restart_options(parse(&["/nonexistent/ck"]), &env(Some(Path::new("")), None)).unwrap_err();
    assert!(matches!(e, ConfigError::Id(crate::ids::IdError::NoDir { .. })), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn flags_override_the_job() {
    let d = tmp("override");
    let jf = job(
        &d,
        "name = \"j\"\n[tasks]\npid = 7\ntree = true\n[freeze]\ntimeout_ms = 500\n[relink]\ntemplate = \"job-%t-%n\"\n[snapshot]\nkeep_links = true\n",
    );
    let o = take(&["--job", &jf], &Env::default()).unwrap();
    assert_eq!(o.selection, Selection::Pid { pid: 7, tree: true });
    assert_eq!(o.freeze_timeout, Duration::from_millis(500));
    assert_eq!(o.template.as_str(), "job-%t-%n");
    assert!(o.keep_links);
    assert_eq!(o.job_name.as_deref(), Some("j"));
    let o = take(
        &["--job", &jf, "--pid", "9", "--freeze-timeout", "20", "--template", "f-%t-%n"],
        &Env::default(),
    )
    .unwrap();
    assert_eq!(o.selection, Selection::Pid { pid: 9, tree: false });
    assert_eq!(o.freeze_timeout, Duration::from_millis(20));
    assert_eq!(o.template.as_str(), "f-%t-%n");
    let o = take(&["--job", &jf, "--cgroup", "/sys/fs/cgroup/x"], &Env::default()).unwrap();
    assert_eq!(o.selection, Selection::Cgroup("/sys/fs/cgroup/x".into()));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn defaults() {
    let o = take(&["--pid", "7"], &Env::default()).unwrap();
    assert_eq!(o.freeze_timeout, Duration::from_millis(DEFAULT_FREEZE_TIMEOUT_MS));
    assert_eq!(DEFAULT_FREEZE_TIMEOUT_MS, 10_000);
    assert_eq!(o.template.as_str(), relink::DEFAULT_TEMPLATE);
    assert!(matches!(o.engine, take::EngineOpts::None));
    assert!(o.filesystems.is_empty() && o.auto_snapshot.is_none());
    assert!(!o.keep_links && !o.dry_run && o.progress && o.job_name.is_none());
    // progress is drawn on stderr (on a terminal only): --json does not turn it off
    assert!(take(&["--pid", "7", "--json"], &Env::default()).unwrap().progress);
}

#[test]
fn snapshot_none_overrides_the_jobs_filesystems() {
    let d = tmp("snapnone");
    let jf = job(&d, "[tasks]\npid = 7\n[[filesystem]]\nmount = \"/srv\"\nsnapshot = \"btrfs\"\n");
    let o = take(&["--job", &jf], &Env::default()).unwrap();
    assert_eq!(o.filesystems.len(), 1);
    assert_eq!(o.filesystems[0].mount_point, PathBuf::from("/srv"));
    assert!(o.auto_snapshot.is_none());
    let o = take(&["--job", &jf, "--snapshot", "none"], &Env::default()).unwrap();
    assert!(o.filesystems.is_empty() && o.auto_snapshot.is_none());
    let o = take(&["--job", &jf, "--snapshot", "lvm"], &Env::default()).unwrap();
    assert_eq!(o.filesystems.len(), 1);
    assert_eq!(o.auto_snapshot, Some(Backend::Lvm));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn conflicts_refused() {
    let d = tmp("conflicts");
    let none = Env::default();
    let e = take(&["--pid", "7", "--leave-running"], &none).unwrap_err();
    assert!(matches!(e, ConfigError::LeaveWithoutCriu { flag: "--leave-running" }), "{e}");
    let e = take(&["--pid", "7", "--engine", "none", "--leave-stopped"], &none).unwrap_err();
    assert_eq!(e.to_string(), "--leave-stopped applies to the CRIU engine (give --engine criu); without CRIU the tasks always go on running after the take");
    let jf = job(&d, "[tasks]\ncgroup = \"/sys/fs/cgroup/x\"\n");
    let e = take(&["--job", &jf, "--tree"], &none).unwrap_err();
    assert_eq!(e.to_string(), "--tree goes with a pid, but the job selects cgroup /sys/fs/cgroup/x (a cgroup includes its whole subtree)");
    let e = take(&["--tree"], &none).unwrap_err();
    assert_eq!(e.to_string(), format!("--tree needs a pid: {TAKE_USAGE}"));
    let e = take(&[], &none).unwrap_err();
    assert_eq!(e.to_string(), format!("no tasks selected: {TAKE_USAGE}"));
    let e = scan_options(parse(&[])).unwrap_err();
    assert_eq!(e.to_string(), "no tasks selected: give --pid PID [--tree], --cgroup PATH, or --all");
    let e = take(&["--pid", "7", "--template", "../x-%t-%n"], &none).unwrap_err();
    assert!(matches!(e, ConfigError::Template(_)), "{e}");
    let e = take(&["--job", d.join("missing.toml").to_str().unwrap()], &none).unwrap_err();
    assert!(matches!(e, ConfigError::Job(_)), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

/// `--shell-job` and `--tcp-established` come from the flags or the job's `[criu]` keys
/// `shell_job` and `tcp_established` (a flag adds to the job); off by default.
#[test]
fn shell_job_and_tcp_established_from_flags_and_job() {
    let d = tmp("criu-flags");
    let criu = d.join("criu");
    std::fs::write(&criu, "").unwrap();
    let en = env(None, Some(&criu));
    let flags = |argv: &[&str]| match take(argv, &en).unwrap().engine {
        take::EngineOpts::Criu { flags, .. } => (flags.shell_job, flags.tcp_established),
        take::EngineOpts::None => panic!("no CRIU engine for {argv:?}"),
    };
    assert_eq!(flags(&["--pid", "7", "--engine", "criu"]), (false, false));
    assert_eq!(flags(&["--pid", "7", "--engine", "criu", "--shell-job"]), (true, false));
    assert_eq!(flags(&["--pid", "7", "--engine", "criu", "--tcp-established"]), (false, true));
    let both =
        job(&d, "[tasks]\npid = 7\n[criu]\nengine = \"criu\"\nshell_job = true\ntcp_established = true\n");
    assert_eq!(flags(&["--job", &both]), (true, true));
    let one = job(&d, "[tasks]\npid = 7\n[criu]\nengine = \"criu\"\ntcp_established = true\n");
    assert_eq!(flags(&["--job", &one, "--shell-job"]), (true, true));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn criu_precedence_and_after_dump() {
    let d = tmp("criu");
    let [f, j, e] = ["flag", "job", "env"].map(|n| {
        let p = d.join(n);
        std::fs::write(&p, "").unwrap();
        p
    });
    let jf = job(
        &d,
        &format!(
            "[tasks]\npid = 7\n[criu]\nengine = \"criu\"\npath = {:?}\nleave_stopped = true\n",
            j.to_str().unwrap()
        ),
    );
    let en = env(None, Some(&e));
    let engine = |argv: &[&str], en: &Env| match take(argv, en).unwrap().engine {
        take::EngineOpts::Criu { path, after, .. } => (path, after),
        take::EngineOpts::None => panic!("no CRIU engine for {argv:?}"),
    };
    assert_eq!(engine(&["--job", &jf, "--criu", f.to_str().unwrap()], &en), (f.clone(), AfterDump::Stop));
    assert_eq!(engine(&["--job", &jf, "--leave-running"], &en), (j.clone(), AfterDump::Run));
    assert_eq!(engine(&["--pid", "7", "--engine", "criu"], &en), (e.clone(), AfterDump::Kill));
    // the flag's engine overrides the job's
    assert!(matches!(take(&["--job", &jf, "--engine", "none"], &en).unwrap().engine, take::EngineOpts::None));
    // a CRIU named explicitly that is not there is an error, not a fallback
    let gone = d.join("gone");
    let err = take(&["--pid", "7", "--engine", "criu", "--criu", gone.to_str().unwrap()], &en).unwrap_err();
    assert!(err.to_string().starts_with(&format!("no CRIU found (looked at {})", gone.display())), "{err}");
    // check sees the environment's CRIU too
    let c = check_options(parse(&[]), &en);
    assert_eq!((c.criu, c.env_criu), (None, Some(e)));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn gc_mount_selection() {
    let given = vec![PathBuf::from("/b"), PathBuf::from("/a")];
    let m = gc_mounts(given.clone(), || panic!("the image root is not read when --mount is given")).unwrap();
    assert_eq!(m, given);
    let named = || Ok(["/a", "/b", "/a", "/c", "/b"].map(PathBuf::from).to_vec());
    assert_eq!(gc_mounts(vec![], named).unwrap(), ["/a", "/b", "/c"].map(PathBuf::from).to_vec());
    // an empty image root names no mount; a missing one neither
    let d = tmp("gc");
    let root = d.to_str().unwrap();
    let o = gc_options(parse(&["--image-root", root]), &Env::default()).unwrap();
    assert!(o.mounts.is_empty());
    assert_eq!(o.scope, cleanup::GcScope::Failed);
    let missing = d.join("missing");
    let o = gc_options(parse(&["--image-root", missing.to_str().unwrap(), "--mount", "/m"]), &Env::default())
        .unwrap();
    assert_eq!(o.mounts, vec![PathBuf::from("/m")]);
    let o = gc_options(parse(&["--image-root", root, "--all"]), &Env::default()).unwrap();
    assert_eq!(o.scope, cleanup::GcScope::AllWithoutImage);
    let id = "20260101T000000Z-abcd";
    let o = gc_options(parse(&["--image-root", root, "--id", id]), &Env::default()).unwrap();
    assert_eq!(o.scope, cleanup::GcScope::Ids(vec![id.into()]));
    let e = gc_options(parse(&["--image-root", root, "--id", "../x"]), &Env::default()).unwrap_err();
    assert_eq!(e.to_string(), "--id \"../x\" is not a checkpoint id (like 20260101T000000Z-abcd)");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn scan_targets() {
    assert_eq!(scan_options(parse(&["--all"])).unwrap().target, ScanTarget::All);
    let o = scan_options(parse(&["--pid", "3", "--tree", "--freeze", "--json"])).unwrap();
    assert_eq!(
        o.target,
        ScanTarget::Tasks { selection: Selection::Pid { pid: 3, tree: true }, freeze: true }
    );
    assert!(o.json);
}
