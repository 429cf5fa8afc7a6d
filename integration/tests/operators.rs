//! What operators expect (issue 14): `list` columns and JSON, `inspect`, ids by prefix and
//! `latest`, user hooks, `prune`, the systemd unit's command, completions and man pages, the
//! up-front checks, `take --dry-run`, and the terminal output (progress under a
//! pseudo-terminal, nothing but the record on stdout with `--json`). Run as root.

use crate::common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A filesystem with a workload holding unlinked files, and an image root.
struct Setup {
    fs: LoopFs,
    work: Scratch,
    p: Proc,
}

impl Setup {
    fn new(fstype: &str, scenarios: &[&str]) -> Setup {
        Setup::sized(fstype, "512M", scenarios)
    }
    fn sized(fstype: &str, size: &str, scenarios: &[&str]) -> Setup {
        let fs = LoopFs::new(fstype, size);
        let work = Scratch::new("ops");
        let dir = fs.path("data");
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = vec!["setup", dir.to_str().unwrap()];
        args.extend_from_slice(scenarios);
        // a job of a shell: a take with CRIU needs --shell-job, wherever the tests run
        let p = shell_job(&prog("ufiles"), &args, &work.path().join("ufiles.log"));
        Setup { fs, work, p }
    }
    fn images(&self) -> PathBuf {
        self.work.path().join("images")
    }
    fn ir(&self) -> String {
        self.images().display().to_string()
    }
    fn pid(&self) -> String {
        self.p.pid.to_string()
    }
    /// A job file `NAME.toml` selecting the workload, with `extra` appended.
    fn job(&self, name: &str, extra: &str) -> PathBuf {
        let j = self.work.path().join(format!("{name}.toml"));
        let text = format!(
            "name = \"{name}\"\nimage_root = \"{}\"\n[tasks]\npid = {}\n{extra}",
            self.ir(),
            self.p.pid
        );
        std::fs::write(&j, text).unwrap();
        j
    }
    /// A files-only take by job file; the id.
    fn take_job(&self, job: &Path) -> String {
        take_id(&snapckpt_ok(&["take", "--job", job.to_str().unwrap()]))
    }
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Write an executable shell script.
fn script(p: &Path, body: &str) {
    std::fs::write(p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `list` has a header and a row per checkpoint with age, engine, job, tasks, unlinked data
/// in binary units, snapshots and state; `--json` the same fields; a consumed one-shot
/// checkpoint says so; a missing image root is an error; `restart --snapshot BACKEND` is
/// checked against the checkpoint.
#[test]
fn list_columns_states_and_json() {
    let _g = serial();
    let s = Setup::new("ext4", &["ab", "dense:3145728"]);
    let a = s.take_job(&s.job("web", ""));
    std::thread::sleep(Duration::from_millis(1100));
    let b = take_id(&take_ok(s.p.pid, &s.images(), &["--engine", "none"]));
    let out = snapckpt_ok(&["list", "--image-root", &s.ir()]);
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "CREATED", "AGE", "ENGINE", "JOB", "TASKS", "UNLINKED", "SNAPSHOTS", "STATE"],
        "{out}"
    );
    let row_a = out.lines().find(|l| l.starts_with(&a)).unwrap_or_else(|| panic!("{out}"));
    assert!(row_a.contains(" files ") && row_a.contains(" web ") && row_a.contains("3.0 MiB (2)"), "{row_a}");
    assert!(row_a.trim_end().ends_with(" ok"), "{row_a}");
    let v = json(&snapckpt_ok(&["list", "--image-root", &s.ir(), "--json"]));
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for k in [
        "id",
        "created",
        "created_unix",
        "age",
        "engine",
        "job",
        "tasks",
        "unlinked_bytes",
        "unlinked",
        "snapshots",
        "state",
    ] {
        assert!(rows[0].get(k).is_some(), "list --json lacks {k}: {}", rows[0]);
    }
    assert_eq!(rows[0]["id"], a.as_str());
    assert_eq!(rows[0]["job"], "web");
    assert_eq!(rows[0]["unlinked_bytes"].as_u64().unwrap(), 3145728 + 5);
    assert_eq!(rows[1]["job"], Value::Null);
    // one meaning for --snapshot: restart ID --snapshot btrfs parses, and is checked
    let (ok, _, err) = snapckpt(&["restart", &b, "--image-root", &s.ir(), "--snapshot", "btrfs"]);
    assert!(!ok && err.contains("has snapshots of: none"), "{err}");
    // a restart consumes b's relinked names (no snapshot): list says so
    let ufiles = prog("ufiles");
    snapckpt_ok(&["restart", &b, "--image-root", &s.ir(), "--exec", ufiles.to_str().unwrap(), "report"]);
    let v = json(&snapckpt_ok(&["list", "--image-root", &s.ir(), "--json"]));
    assert_eq!(v[1]["state"], serde_json::json!(["consumed"]), "{v}");
    let out = snapckpt_ok(&["list", "--image-root", &s.ir()]);
    assert!(out.lines().any(|l| l.starts_with(&b) && l.trim_end().ends_with("consumed")), "{out}");
    // no such image root: an error, not "no checkpoints"
    let (ok, _, err) = snapckpt(&["list", "--image-root", &s.work.path().join("none").display().to_string()]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    drop(s.fs);
}

/// `inspect` shows one checkpoint in full: process tree, every unlinked object with original
/// and relinked path, method and size, snapshots, versions, timings and statistics.
#[test]
fn inspect_text_and_json() {
    let _g = serial();
    let s = Setup::new("ext4", &["ab", "dense:100000", "cwd"]);
    let id = take_id(&take_ok(s.p.pid, &s.images(), &["--engine", "none"]));
    let out = snapckpt_ok(&["inspect", &id, "--image-root", &s.ir()]);
    for want in [
        "process tree (1 task(s)):",
        "unlinked objects (3):",
        "RELINKED AS",
        "name-gone",
        "removed-dir",
        "kernel:",
        "timings:",
        "statistics:",
        "snapshots (0):",
    ] {
        assert!(out.contains(want), "inspect lacks {want:?}:\n{out}");
    }
    assert!(out.contains(&format!("{} ", s.p.pid)), "{out}");
    let v = json(&snapckpt_ok(&["inspect", &id, "--image-root", &s.ir(), "--json"]));
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["process_tree"][0]["pid"], s.p.pid);
    let objs = v["unlinked"].as_array().unwrap();
    assert_eq!(objs.len(), 3);
    for o in objs {
        for k in ["kind", "class", "original_path", "relinked_path", "method", "size"] {
            assert!(!o[k].is_null(), "{k} missing: {o}");
        }
        assert!(
            o["relinked_path"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}/lost+found/checkpoint/", s.fs.mnt.display())),
            "{o}"
        );
    }
    let dense = objs.iter().find(|o| o["original_path"].as_str().unwrap().ends_with("dense-100000")).unwrap();
    assert_eq!((dense["size"].as_u64(), dense["class"].as_str()), (Some(100000), Some("orphan")));
    assert!(v["kernel"].as_str().is_some_and(|k| !k.is_empty()), "{v}");
    assert!(v["timings"]["frozen_ms"].is_u64() && v["statistics"]["objects"] == 3, "{v}");
}

/// A checkpoint is named by a unique prefix, `latest` or `latest:JOB`; an ambiguous prefix is
/// refused with the candidates; a near miss suggests the close id.
#[test]
fn ids_prefix_latest_and_suggestions() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["ab"]);
    let a = s.take_job(&s.job("alpha", ""));
    std::thread::sleep(Duration::from_millis(1100));
    let b = s.take_job(&s.job("beta", ""));
    let inspect_id = |name: &str| -> Result<String, String> {
        let (ok, out, err) = snapckpt(&["inspect", name, "--image-root", &s.ir(), "--json"]);
        if ok {
            Ok(json(&out)["id"].as_str().unwrap().to_string())
        } else {
            Err(err)
        }
    };
    assert_eq!(inspect_id("latest").unwrap(), b);
    assert_eq!(inspect_id("latest:alpha").unwrap(), a);
    assert_eq!(inspect_id("latest:beta").unwrap(), b);
    // the shortest prefix of a that b does not share
    let n = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count() + 1;
    assert_eq!(inspect_id(&a[..n]).unwrap(), a);
    let e = inspect_id(&a[..n - 1]).unwrap_err();
    assert!(e.contains("ambiguous") && e.contains(&a) && e.contains(&b), "{e}");
    let e = inspect_id("latest:gamma").unwrap_err();
    assert!(e.contains("of job \"gamma\""), "{e}");
    // a typo in the last character of the suffix
    let typo = format!("{}{}", &a[..a.len() - 1], if a.ends_with('0') { '1' } else { '0' });
    let e = inspect_id(&typo).unwrap_err();
    assert!(e.contains("did you mean") && e.contains(&a), "{e}");
    // delete by prefix
    let v = json(&snapckpt_ok(&["delete", &b[..n.max(b.len() - 2)], "--image-root", &s.ir(), "--json"]));
    assert_eq!(v["deleted"], b.as_str());
    assert_eq!(inspect_id("latest").unwrap(), a);
    let v = json(&snapckpt_ok(&[
        "gc",
        "--mount",
        s.fs.mnt.to_str().unwrap(),
        "--image-root",
        &s.ir(),
        "--dry-run",
        "--json",
    ]));
    assert_eq!((v["dry_run"].as_bool(), v["names"].as_array().map(Vec::len)), (Some(true), Some(0)), "{v}");
}

/// The user hooks run at each point, in order (the job's, then the hooks directory's by name),
/// with the documented environment; during post-freeze the tasks are frozen.
#[test]
fn hooks_run_in_order_with_the_environment() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["ab"]);
    let hooks = s.work.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let log = s.work.path().join("hooks.log");
    let body = format!(
        "st=$(sed 's/.*) //' /proc/{pid}/stat | cut -c1)\necho \"$(basename $0) $1 $SNAPCKPT_HOOK id=$SNAPCKPT_ID dir=$SNAPCKPT_IMAGE_DIR root=$SNAPCKPT_IMAGE_ROOT job=$SNAPCKPT_JOB pids=$SNAPCKPT_PIDS state=$st\" >> {log}",
        pid = s.p.pid,
        log = log.display()
    );
    script(&hooks.join("20-second"), &body);
    script(&hooks.join("10-first"), &body);
    script(&hooks.join(".hidden"), "exit 1");
    let jobhook = s.work.path().join("jobhook");
    script(&jobhook, &body);
    let job = s.job("hooked", &format!("[hooks]\npre-take = [\"{}\", \"from-job\"]\n", jobhook.display()));
    let out = Command::new(snapckpt_bin())
        .args(["take", "--job", job.to_str().unwrap(), "--json"])
        .env("SNAPCKPT_HOOKS_DIR", &hooks)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rec = json(&String::from_utf8_lossy(&out.stdout));
    let id = rec["id"].as_str().unwrap().to_string();
    let lines: Vec<String> = read(&log).lines().map(str::to_string).collect();
    let seq: Vec<String> =
        lines.iter().map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        seq,
        [
            "jobhook from-job pre-take",
            "10-first pre-take pre-take",
            "20-second pre-take pre-take",
            "10-first post-freeze post-freeze",
            "20-second post-freeze post-freeze",
            "10-first post-snapshot post-snapshot",
            "20-second post-snapshot post-snapshot",
            "10-first post-take post-take",
            "20-second post-take post-take",
        ],
        "{lines:#?}"
    );
    for l in &lines {
        assert!(
            l.contains(&format!("id={id} "))
                && l.contains(" job=hooked ")
                && l.contains(&format!("root={} ", s.ir())),
            "{l}"
        );
    }
    let at = |p: &str| lines.iter().find(|l| l.contains(&format!(" {p} "))).unwrap().clone();
    assert!(
        at("post-freeze").contains(&format!("pids={} state=T", s.p.pid)),
        "frozen at post-freeze: {}",
        at("post-freeze")
    );
    assert!(at("post-freeze").contains(&format!("dir={}/.{id}.partial ", s.ir())), "{}", at("post-freeze"));
    assert!(at("post-take").contains(&format!("dir={}/{id} ", s.ir())), "{}", at("post-take"));
    assert!(!at("post-take").contains("state=T"), "thawed by post-take: {}", at("post-take"));
    // restart and delete run theirs
    std::fs::remove_file(&log).unwrap();
    let ufiles = prog("ufiles");
    let run = |args: &[&str]| {
        let o = Command::new(snapckpt_bin()).args(args).env("SNAPCKPT_HOOKS_DIR", &hooks).output().unwrap();
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    run(&["restart", &id, "--image-root", &s.ir(), "--exec", ufiles.to_str().unwrap(), "report"]);
    run(&["delete", &id, "--image-root", &s.ir()]);
    let seq: Vec<String> =
        read(&log).lines().map(|l| l.split_whitespace().nth(1).unwrap().to_string()).collect();
    assert_eq!(
        seq,
        ["pre-restart", "pre-restart", "post-restart", "post-restart", "post-delete", "post-delete"]
    );
}

/// A failing pre-take hook stops the take before anything exists; a failing post-freeze hook
/// is undone (names removed, tasks thawed, no image); a hanging hook is killed at the timeout.
#[test]
fn failing_and_hanging_hooks_leave_nothing_behind() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["ab", "dense:10000"]);
    let fail = s.work.path().join("fail");
    script(&fail, "echo hook says no >&2; exit 3");
    let hang = s.work.path().join("hang");
    script(&hang, "sleep 1000");
    let nothing_left = |what: &str| {
        assert!(
            !s.images().exists() || std::fs::read_dir(s.images()).unwrap().count() == 0,
            "{what}: an image entry is left"
        );
        assert!(
            checkpoint_names(&s.fs.mnt).is_empty(),
            "{what}: names left: {:?}",
            checkpoint_names(&s.fs.mnt)
        );
        wait_for(|| state(s.p.pid) == Some('S'), Duration::from_secs(5), "workload thawed");
    };
    for (point, hook, extra, want) in [
        ("pre-take", &fail, "", "pre-take hook"),
        ("post-freeze", &fail, "", "post-freeze hook"),
        ("post-snapshot", &fail, "", "post-snapshot hook"),
        ("pre-take", &hang, "timeout_s = 1\n", "timed out after 1 s"),
    ] {
        let job = s.job("failing", &format!("[hooks]\n{extra}{point} = [\"{}\"]\n", hook.display()));
        let t = Instant::now();
        let (ok, out, err) = snapckpt(&["take", "--job", job.to_str().unwrap()]);
        assert!(!ok && err.contains(want) && err.contains("the take was stopped"), "{point}: {out}\n{err}");
        assert!(t.elapsed() < Duration::from_secs(10), "{point}: took {:?}", t.elapsed());
        assert_no_panic(&err);
        nothing_left(point);
    }
    // a failing post-take hook is a warning: the checkpoint stands
    let job = s.job("failing", &format!("[hooks]\npost-take = [\"{}\"]\n", fail.display()));
    let (ok, out, err) = snapckpt(&["take", "--job", job.to_str().unwrap()]);
    assert!(ok && err.contains("post-take hook") && out.starts_with("checkpoint "), "{out}\n{err}");
    // a failing pre-restart hook stops the restart: the checkpoint is untouched
    let id = take_id(&out);
    let hd = s.work.path().join("failing.d");
    std::fs::create_dir_all(&hd).unwrap();
    script(&hd.join("10-no"), "test \"$1\" != pre-restart");
    let o = Command::new(snapckpt_bin())
        .args(["restart", &id, "--image-root", &s.ir(), "--exec", "true"])
        .env("SNAPCKPT_HOOKS_DIR", &hd)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("pre-restart hook"), "{err}");
    assert_eq!(checkpoint_names(&s.fs.mnt).len(), 2, "the checkpoint's names are untouched");
}

/// `prune` keeps exactly what the policy says: the N newest per job, those younger than an
/// age, the limits of the job file; `--dry-run` deletes nothing.
#[test]
fn prune_keeps_exactly_what_the_policy_says() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["ab"]);
    let job_a = s.job("a", "[retention]\nkeep_last = 2\n");
    let mut a = vec![];
    for _ in 0..3 {
        a.push(s.take_job(&job_a));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let b = s.take_job(&s.job("b", ""));
    let none = take_id(&take_ok(s.p.pid, &s.images(), &["--engine", "none"]));
    let ids = || -> Vec<String> {
        let v = json(&snapckpt_ok(&["list", "--image-root", &s.ir(), "--json"]));
        v.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids().len(), 5);
    // dry run, keep-last 1 per job: would delete a[0], a[1]; removes nothing
    let v =
        json(&snapckpt_ok(&["prune", "--image-root", &s.ir(), "--keep-last", "1", "--dry-run", "--json"]));
    let doomed: Vec<&str> = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(doomed, [a[1].as_str(), a[0].as_str()], "{v}");
    assert_eq!(ids().len(), 5, "a dry run deletes nothing");
    // keep-within an hour keeps everything
    let out = snapckpt_ok(&["prune", "--image-root", &s.ir(), "--keep-within", "1h"]);
    assert!(out.contains("0 checkpoint(s) deleted, 5 kept"), "{out}");
    // the job file's limits: only job a, keep 2
    let out = snapckpt_ok(&["prune", "--job", job_a.to_str().unwrap()]);
    assert!(out.contains(&format!("deleted {}", a[0])), "{out}");
    let mut want = vec![a[1].clone(), a[2].clone(), b.clone(), none.clone()];
    want.sort();
    let mut got = ids();
    got.sort();
    assert_eq!(got, want);
    assert!(!s.images().join(&a[0]).exists());
    // keep-last 0 for job b only
    snapckpt_ok(&["prune", "--image-root", &s.ir(), "--job-name", "b", "--keep-last", "0"]);
    assert!(!ids().contains(&b) && ids().contains(&none));
    let (ok, _, err) = snapckpt(&["prune", "--image-root", &s.ir()]);
    assert!(!ok && err.contains("needs a rule"), "{err}");
}

/// The systemd service's commands (as installed by scripts/install.sh) take the job and prune
/// it to its [retention]; the timer is installed beside it.
#[test]
fn systemd_unit_commands_take_and_prune() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["ab"]);
    let dest = s.work.path().join("dest");
    install(&dest);
    let unit = read(dest.join("etc/systemd/system/snapckpt-take@.service"));
    assert!(dest.join("etc/systemd/system/snapckpt-take@.timer").exists());
    let jobs = s.work.path().join("jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::copy(s.job("periodic", "[retention]\nkeep_last = 2\n"), jobs.join("periodic.toml")).unwrap();
    let cmds: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("ExecStart=").or_else(|| l.strip_prefix("ExecStartPost=")))
        .map(|c| {
            c.replace("%i", "periodic")
                .replace(
                    "/usr/local/bin/snapckpt",
                    &dest.join("usr/local/bin/snapckpt").display().to_string(),
                )
                .replace("/etc/snapckpt/jobs", &jobs.display().to_string())
        })
        .collect();
    assert_eq!(cmds.len(), 2, "{unit}");
    for _ in 0..3 {
        for c in &cmds {
            let o = Command::new("sh").arg("-c").arg(c).output().unwrap();
            assert!(o.status.success(), "{c}: {}", String::from_utf8_lossy(&o.stderr));
            assert!(o.stderr.is_empty(), "--quiet: {c}: {}", String::from_utf8_lossy(&o.stderr));
        }
        std::thread::sleep(Duration::from_millis(1100));
    }
    let v = json(&snapckpt_ok(&["list", "--image-root", &s.ir(), "--json"]));
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert!(v.as_array().unwrap().iter().all(|r| r["job"] == "periodic"));
}

/// `scripts/install.sh` into `dest` with the binary under test.
fn install(dest: &Path) {
    let st = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
        .env("DESTDIR", dest)
        .env("SNAPCKPT_BIN", snapckpt_bin())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Completions for bash, zsh and fish and the man pages are generated from the CLI
/// definitions and installed; `man` finds the page.
#[test]
fn completions_and_man_pages() {
    for sh in ["bash", "zsh", "fish"] {
        let out = snapckpt_ok(&["completions", sh]);
        for sub in ["take", "restart", "inspect", "prune", "image-root"] {
            assert!(out.contains(sub), "{sh} completion lacks {sub}");
        }
    }
    let man = snapckpt_ok(&["man"]);
    assert!(man.contains(".TH snapckpt 1") && man.contains("prune"), "{man}");
    let work = Scratch::new("man");
    let dest = work.path().join("dest");
    install(&dest);
    let mandir = dest.join("usr/local/share/man");
    for page in ["snapckpt.1", "snapckpt-take.1", "snapckpt-restart.1", "snapckpt-prune.1"] {
        assert!(mandir.join("man1").join(page).exists(), "{page}");
    }
    for c in [
        "share/bash-completion/completions/snapckpt",
        "share/zsh/site-functions/_snapckpt",
        "share/fish/vendor_completions.d/snapckpt.fish",
    ] {
        assert!(dest.join("usr/local").join(c).metadata().unwrap().len() > 0, "{c}");
    }
    if which("man") {
        let o = Command::new("man").arg("-M").arg(&mandir).args(["-w", "snapckpt"]).output().unwrap();
        assert!(String::from_utf8_lossy(&o.stdout).contains("snapckpt.1"), "{o:?}");
    }
}

fn which(p: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {p}")).output().is_ok_and(|o| o.status.success())
}

/// As a non-root user, take and restart refuse before creating anything.
#[test]
fn non_root_is_refused_before_anything() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["ab"]);
    let id = take_id(&take_ok(s.p.pid, &s.images(), &["--engine", "none"]));
    let other = s.work.path().join("other-images");
    let bin = snapckpt_bin();
    let as_nobody = |args: &[&str]| {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .output()
            .unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).into_owned())
    };
    let (ok, err) = as_nobody(&["take", "--pid", &s.pid(), "--image-root", other.to_str().unwrap()]);
    assert!(!ok && err.contains("must run as root") && err.contains("nothing was changed"), "{err}");
    assert!(!err.contains("pidfd_send_signal"), "{err}");
    assert!(!other.exists());
    assert_eq!(state(s.p.pid), Some('S'));
    let (ok, err) = as_nobody(&["restart", &id, "--image-root", &s.ir(), "--exec", "true"]);
    assert!(!ok && err.contains("must run as root") && !err.contains("/run/snapckpt"), "{err}");
    let mnt = s.fs.mnt.to_str().unwrap();
    for args in [
        &["take", "--pid", &s.pid(), "--image-root", other.to_str().unwrap(), "--dry-run"][..],
        &["delete", &id, "--image-root", &s.ir()],
        &["delete", &id, "--image-root", &s.ir(), "--force"],
        &["gc", "--mount", mnt, "--image-root", &s.ir()],
        &["prune", "--image-root", &s.ir(), "--keep-last", "0"],
    ] {
        let (ok, err) = as_nobody(args);
        assert!(
            !ok && err.contains("must run as root") && err.contains("nothing was changed"),
            "{args:?}: {err}"
        );
    }
    // commands that only read: the root-only image root is said to be root's, not EACCES
    for args in [
        &["list", "--image-root", &s.ir()][..],
        &["inspect", "latest", "--image-root", &s.ir()],
        &["prune", "--image-root", &s.ir(), "--keep-last", "0", "--dry-run"],
    ] {
        let (ok, err) = as_nobody(args);
        assert!(
            !ok && err.contains("image roots are root's") && err.contains("run snapckpt as root"),
            "{args:?}: {err}"
        );
    }
    let (ok, err) = as_nobody(&["scan", "--all"]);
    assert!(ok && err.contains("not root: scan --all sees only"), "{err}");
    assert!(!other.exists());
    assert_eq!(state(s.p.pid), Some('S'));
    assert_eq!(checkpoint_names(&s.fs.mnt).len(), 1, "the checkpoint is untouched");
    assert!(s.images().join(&id).exists());
}

/// `take --dry-run` says what will happen per object in scan's words, the CRIU dump or the
/// thaw, and the bytes to copy against the free space.
#[test]
fn dry_run_tells_what_a_take_would_do() {
    let _g = serial();
    let s = Setup::new("ext4", &["ab", "dense:2097152", "cwd", "tmpfile"]);
    let out = take_ok(s.p.pid, &s.images(), &["--dry-run"]);
    for want in [
        "freeze 1 task(s) with sigstop",
        "(name-gone, regular",
        "hard link to the same inode",
        "(orphan, regular, 2.0 MiB)",
        "copy 2.0 MiB of data",
        "(removed-dir, directory",
        "recreate the directory",
        "hard link (an O_TMPFILE",
        "then thaw the tasks",
        "to copy,",
        "free",
    ] {
        assert!(out.contains(want), "dry run lacks {want:?}:\n{out}");
    }
    assert!(
        !out.contains("RemovedDir") && !out.contains("Btrfs") && !out.contains("else clone or copy"),
        "{out}"
    );
    let crit = criu_bin();
    let out = take_ok(
        s.p.pid,
        &s.images(),
        &["--dry-run", "--engine", "criu", "--shell-job", "--criu", crit.to_str().unwrap()],
    );
    assert!(out.contains("dump the process tree of pid") && out.contains("then kill the tasks"), "{out}");
    let v = json(&take_ok(s.p.pid, &s.images(), &["--dry-run", "--json"]));
    assert_eq!(v["space"][0]["bytes_to_copy"], 2097152);
    assert!(v["space"][0]["free_bytes"].as_u64().unwrap() > 2097152);
    assert!(v["steps"].as_array().unwrap().len() >= 3);
    assert!(!s.images().exists());
}

/// Under a pseudo-terminal `take` shows its progress (a spinner for the freeze, a byte bar for
/// the copy) and `list` its columns; with `--json` stdout holds the record and nothing else;
/// `-q` shows no progress; `restart --exec` keeps snapckpt's lines off the command's stdout.
#[test]
fn terminal_output_progress_and_clean_stdout() {
    let _g = serial();
    let s = Setup::sized("ext4", "2G", &["ab", "dense:134217728"]);
    let bin = snapckpt_bin().display().to_string();
    let rec = s.work.path().join("rec.json");
    let pty = |cmd: &str| -> String {
        let o = Command::new("script").args(["-qec", cmd, "/dev/null"]).output().unwrap();
        assert!(o.status.success(), "{cmd}: {}", String::from_utf8_lossy(&o.stdout));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let term =
        pty(&format!("{bin} take --pid {} --image-root {} --json > {}", s.p.pid, s.ir(), rec.display()));
    assert!(term.contains("freezing the tasks"), "no freeze spinner on the terminal: {term:?}");
    assert!(term.contains("writing back dirty data"), "no write-back spinner on the terminal: {term:?}");
    assert!(term.contains("ETA ") && term.contains("MiB/s"), "no rate and ETA on the terminal: {term:?}");
    assert!(term.contains("relink [") && term.contains("MiB"), "no byte progress on the terminal: {term:?}");
    let v = json(&read(&rec));
    let id = v["id"].as_str().unwrap().to_string();
    let term = pty(&format!("{bin} list --image-root {}", s.ir()));
    assert!(
        term.contains("ID")
            && term.contains("UNLINKED")
            && term.contains("128 MiB (2)")
            && term.contains(&id),
        "{term:?}"
    );
    let quiet = pty(&format!("{bin} -q take --pid {} --image-root {} > /dev/null", s.p.pid, s.ir()));
    assert!(!quiet.contains("relink [") && !quiet.contains("freezing"), "{quiet:?}");
    let verbose = pty(&format!("{bin} -v take --pid {} --image-root {} > /dev/null", s.p.pid, s.ir()));
    assert!(verbose.contains("snapckpt: relinked ") && verbose.contains(": done in "), "{verbose:?}");
    assert!(!verbose.contains("taking 0 snapshot"), "a step that does nothing: {verbose:?}");
    // not a terminal: no progress at all on stderr
    let (ok, out, err) = take(s.p.pid, &s.images(), &["--json"]);
    assert!(ok && !err.contains("relink [") && !err.contains("freezing"), "{err}");
    json(&out);
    // restart --exec --json: the command's output, then the JSON; snapckpt's lines on stderr
    let ufiles = prog("ufiles");
    let (ok, out, _) = snapckpt(&[
        "restart",
        &id,
        "--image-root",
        &s.ir(),
        "--json",
        "--exec",
        ufiles.to_str().unwrap(),
        "report",
    ]);
    assert!(ok, "{out}");
    let (cmd_out, js) = out.split_at(out.find("\n{\n").map(|i| i + 1).unwrap_or_else(|| panic!("{out}")));
    assert!(
        cmd_out.lines().all(|l| l.starts_with("FD ") || l.starts_with("MAP ") || l.starts_with("CWD")),
        "{cmd_out}"
    );
    assert_eq!(json(js)["id"], id.as_str());
}

/// `scan`: sizes in binary units, columns that hold long holders, a footer that tells tasks
/// scanned from tasks listed.
#[test]
fn scan_table() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["dense:1048576", "mmap"]);
    let out = snapckpt_ok(&["scan", "--pid", &s.pid()]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("PID") && lines[0].contains("SIZE"), "{out}");
    assert!(out.contains("1.0 MiB") && out.contains("map "), "{out}");
    // every row's PATH column starts where the header's does
    let col = lines[0].find("PATH").unwrap();
    for l in &lines[1..lines.len() - 1] {
        assert!(
            l.len() > col && l.as_bytes()[col - 1] == b' ' && l.as_bytes()[col] == b'/',
            "misaligned: {l}\n{out}"
        );
    }
    assert!(lines.last().unwrap().contains("1 task(s) scanned, 1 holding unlinked files"), "{out}");
}

/// `list` tells apart a checkpoint with a restart clone mounted (which `prune` never
/// removes), one whose snapshot is gone, and a CRIU checkpoint whose tasks were left running.
#[test]
fn list_states_of_snapshots_and_criu() {
    let _g = serial();
    let s = Setup::new("btrfs", &["ab", "dense:10000"]);
    let plan = take_ok(s.p.pid, &s.images(), &["--dry-run", "--snapshot", "btrfs"]);
    assert!(
        plan.contains("reflink clone (FICLONE): no data copied") && plan.contains("with btrfs"),
        "{plan}"
    );
    let id = take_id(&take_ok(s.p.pid, &s.images(), &["--engine", "none", "--snapshot", "btrfs"]));
    let state_of = |id: &str| -> Vec<String> {
        let v = json(&snapckpt_ok(&["list", "--image-root", &s.ir(), "--json"]));
        let r = v.as_array().unwrap().iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("{v}")).clone();
        r["state"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(state_of(&id), ["ok"]);
    let root = s.work.path().join("side");
    std::fs::create_dir_all(&root).unwrap();
    let _m = MountGuard(root.join(s.fs.mnt.strip_prefix("/").unwrap()));
    snapckpt_ok(&[
        "restart",
        &id,
        "--snapshot",
        "btrfs",
        "--mount-root",
        root.to_str().unwrap(),
        "--image-root",
        &s.ir(),
    ]);
    assert_eq!(state_of(&id), ["mounted"]);
    let out = snapckpt_ok(&["prune", "--image-root", &s.ir(), "--keep-last", "0"]);
    assert!(out.contains(&format!("keep {id}: a restart clone is mounted")), "{out}");
    let v = json(&snapckpt_ok(&["inspect", "latest", "--image-root", &s.ir(), "--json"]));
    assert_eq!(v["snapshot_list"][0]["mounted_clones"].as_array().unwrap().len(), 1, "{v}");
    for m in mounts_under(&root).iter().rev() {
        sh(&format!("umount {m}"));
    }
    assert_eq!(state_of(&id), ["ok"]);
    let snap = v["snapshot_list"][0]["description"].as_str().unwrap().split(' ').nth(3).unwrap().to_string();
    sh(&format!("btrfs subvolume delete {snap} >/dev/null"));
    assert_eq!(state_of(&id), ["snapshot-missing"]);
    // CRIU, tasks left running
    let log = s.work.path().join("criu.log");
    let w = workload(
        &prog("ufiles"),
        &["setup", s.fs.path("data").to_str().unwrap(), "dense:5000"],
        &log,
        true,
        None,
    );
    let crit = criu_bin();
    // -vv: CRIU's own log (level 4) on stderr as it is written; stdout only the result
    let (ok, out, err) = snapckpt(&[
        "-vv",
        "take",
        "--pid",
        &w.pid.to_string(),
        "--image-root",
        &s.ir(),
        "--engine",
        "criu",
        "--criu",
        crit.to_str().unwrap(),
        "--leave-running",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("CRIU's log (level 4): ")
            && err.contains("criu: (00.")
            && err.contains("Dumping finished successfully"),
        "-vv shows no CRIU log: {err}"
    );
    assert!(!out.contains("criu: "), "{out}");
    let cid = take_id(&out);
    assert_eq!(state_of(&cid), ["tasks-running"]);
    let v = json(&snapckpt_ok(&["inspect", &cid, "--image-root", &s.ir(), "--json"]));
    assert!(
        v["engine"].as_str().unwrap().starts_with("criu ") && v["criu"]["after_dump"] == "left running",
        "{v}"
    );
    let out = snapckpt_ok(&["list", "--image-root", &s.ir()]);
    assert!(
        out.lines()
            .any(|l| l.starts_with(&cid) && l.contains(" criu ") && l.trim_end().ends_with("tasks-running")),
        "{out}"
    );
}

/// Checkpoints taken within one second are ordered by when they were taken, not by their
/// random id suffix: `list` shows them in take order, `latest` is the last one taken and
/// `prune --keep-last 1` keeps that one.
#[test]
fn same_second_checkpoints_keep_their_order() {
    let _g = serial();
    let s = Setup::new("tmpfs", &["ab"]);
    let taken: Vec<String> =
        (0..4).map(|_| take_id(&take_ok(s.p.pid, &s.images(), &["--engine", "none"]))).collect();
    let v = json(&snapckpt_ok(&["list", "--image-root", &s.ir(), "--json"]));
    let listed: Vec<&str> = v.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(listed, taken, "list order is take order");
    let latest = json(&snapckpt_ok(&["inspect", "latest", "--image-root", &s.ir(), "--json"]));
    assert_eq!(latest["id"], taken[3].as_str());
    let v =
        json(&snapckpt_ok(&["prune", "--image-root", &s.ir(), "--keep-last", "1", "--dry-run", "--json"]));
    let kept: Vec<&str> = v["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == true)
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [taken[3].as_str()], "{v}");
}

/// `export` names a checkpoint as the other commands do: `latest`, `latest:JOB`, a unique
/// prefix (here the export then refuses a checkpoint without snapshots, naming it).
#[test]
fn export_accepts_latest_and_prefixes() {
    let _g = serial();
    let s = Setup::new("ext4", &["ab"]);
    let id = s.take_job(&s.job("exp", ""));
    let out = s.work.path().join("x.stream");
    for name in ["latest", "latest:exp", &id[..id.len() - 1]] {
        let (ok, _, err) = snapckpt(&["export", name, "-o", out.to_str().unwrap(), "--image-root", &s.ir()]);
        assert!(!ok && !err.contains("no checkpoint") && err.contains(&id), "export {name}: {err}");
    }
    let (ok, _, err) = snapckpt(&["export", "nosuch", "-o", out.to_str().unwrap(), "--image-root", &s.ir()]);
    assert!(!ok && err.contains("no checkpoint \"nosuch\""), "{err}");
}

/// `prune` never removes a checkpoint whose restart clone is mounted in a restarted
/// command's private mount namespace (the default of `restart --exec`, invisible in the
/// host's mount table); once that restart ended, it does.
#[test]
fn prune_keeps_a_checkpoint_restarted_in_a_private_namespace() {
    let _g = serial();
    let s = Setup::new("btrfs", &["ab", "dense:10000"]);
    // the hooks' SNAPCKPT_SNAPSHOTS and SNAPCKPT_MOUNTS (one per line)
    let hooks = s.work.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let log = s.work.path().join("hooks.log");
    script(
        &hooks.join("10-env"),
        &format!(
            "printf '%s|%s|%s\\n' \"$1\" \"$SNAPCKPT_SNAPSHOTS\" \"$SNAPCKPT_MOUNTS\" >> {}",
            log.display()
        ),
    );
    let o = Command::new(snapckpt_bin())
        .args(["take", "--pid", &s.pid(), "--image-root", &s.ir(), "--snapshot", "btrfs"])
        .env("SNAPCKPT_HOOKS_DIR", &hooks)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let id = take_id(&String::from_utf8_lossy(&o.stdout));
    let mnt = s.fs.mnt.display().to_string();
    let lines = read(&log);
    let at = |p: &str| {
        lines.lines().find(|l| l.starts_with(&format!("{p}|"))).unwrap_or_else(|| panic!("{lines}"))
    };
    assert_eq!(at("pre-take"), "pre-take||", "nothing snapshotted yet");
    assert_eq!(at("post-snapshot"), format!("post-snapshot|{mnt}/.snapckpt/{id}/snapshot|{mnt}"), "{lines}");
    assert_eq!(at("post-take"), format!("post-take|{mnt}/.snapckpt/{id}/snapshot|{mnt}"), "{lines}");
    let stop = s.work.path().join("stop");
    let wait = format!("while [ ! -e {} ]; do sleep 0.1; done", stop.display());
    /// Ends the restarted command (also when an assertion fails) and waits for the restart.
    struct Stop(PathBuf, std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "");
            let _ = self.1.wait();
        }
    }
    let mut child = Stop(
        stop.clone(),
        Command::new(snapckpt_bin())
            .args(["restart", &id, "--snapshot", "--image-root", &s.ir(), "--exec", "sh", "-c", &wait])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let state_of = || json(&snapckpt_ok(&["list", "--image-root", &s.ir(), "--json"]))[0]["state"].clone();
    wait_for(|| state_of() == serde_json::json!(["mounted"]), Duration::from_secs(20), "clone mounted");
    assert!(!read("/proc/self/mountinfo").contains(&format!("/{id}/restart-")), "a private mount");
    let v = json(&snapckpt_ok(&["prune", "--image-root", &s.ir(), "--keep-last", "0", "--json"]));
    assert_eq!(v["decisions"][0]["keep"], true, "{v}");
    assert_eq!(v["decisions"][0]["reason"], "a restart clone is mounted", "{v}");
    let v = json(&snapckpt_ok(&["inspect", &id, "--image-root", &s.ir(), "--json"]));
    assert_eq!(v["snapshot_list"][0]["mounted_clones"].as_array().unwrap().len(), 1, "{v}");
    assert!(s.images().join(&id).exists());
    std::fs::write(&stop, "").unwrap();
    assert!(child.1.wait().unwrap().success());
    let out = snapckpt_ok(&["prune", "--image-root", &s.ir(), "--keep-last", "0"]);
    assert!(out.contains(&format!("deleted {id}")), "{out}");
    assert!(!s.images().join(&id).exists());
}
