//! Retention: `snapckpt prune` deletes the checkpoints a policy does not keep, as btrbk's
//! retention or snapper's number and timeline cleanups do.
//!
//! A checkpoint is kept when any rule keeps it:
//! - `keep_last = N`: it is one of the N newest checkpoints **of its job** (checkpoints taken
//!   without a job form one group of their own);
//! - `keep_within = AGE` (`90s`, `30m`, `12h`, `7d`, `2w`): it is younger than AGE;
//! - a restart clone of one of its snapshots is mounted (never removed under a user);
//! - its record cannot be read (left to `delete --force`).
//!
//! Every other checkpoint of the selected job(s) is deleted as `delete` does (snapshots,
//! relinked names, image). The limits come from flags or from a job file's `[retention]`
//! table (`keep_last`, `keep_within`); with a job file only that job's checkpoints are
//! considered. [`plan`] is the pure rule (unit tested); [`prune`] applies it.

use crate::cleanup;
use crate::image;
use crate::userhooks::{self, Hooks, Point};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A job file's `[retention]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub keep_last: Option<usize>,
    /// An age: `90s`, `30m`, `12h`, `7d`, `2w`.
    pub keep_within: Option<String>,
}

/// What to keep. At least one rule must be given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub keep_last: Option<usize>,
    /// Seconds.
    pub keep_within: Option<u64>,
    /// Only checkpoints of this job (`None`: every checkpoint of the image root).
    pub job: Option<String>,
}

/// A checkpoint as [`plan`] sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub job: Option<String>,
    pub created_unix: u64,
    /// Nanoseconds within that second (0 when not recorded): orders one second's checkpoints.
    pub created_ns: u32,
    /// A restart clone is mounted.
    pub mounted: bool,
    /// The record cannot be read.
    pub unreadable: bool,
}

/// What the policy decided about one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub id: String,
    pub job: Option<String>,
    pub created_unix: u64,
    pub keep: bool,
    /// Why: `one of the 3 newest of job web`, `younger than 1d`, `clone mounted`, `older than...`.
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("an age is a number and a unit (s, m, h, d, w), like 30m or 7d; not {0:?}")]
    BadAge(String),
    #[error(
        "prune needs a rule: --keep-last N and/or --keep-within AGE (or a job file with a [retention] table)"
    )]
    NoRule,
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

/// Seconds in an age such as `30m`, `12h`, `7d`, `2w`, `90s` (a bare number is seconds).
pub fn parse_age(s: &str) -> Result<u64, PruneError> {
    let bad = || PruneError::BadAge(s.to_string());
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult = match unit {
        "" | "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(mult).ok_or_else(bad)
}

/// Decide, for each entry of the policy's job(s), whether it is kept. Newest first.
pub fn plan(entries: &[Entry], p: &Policy, now: u64) -> Result<Vec<Decision>, PruneError> {
    if p.keep_last.is_none() && p.keep_within.is_none() {
        return Err(PruneError::NoRule);
    }
    let mut sel: Vec<&Entry> = entries.iter().filter(|e| p.job.is_none() || e.job == p.job).collect();
    sel.sort_by(|a, b| (b.created_unix, b.created_ns, &b.id).cmp(&(a.created_unix, a.created_ns, &a.id)));
    let mut seen: std::collections::HashMap<Option<&str>, usize> = Default::default();
    let mut out = vec![];
    for e in sel {
        let rank = {
            let n = seen.entry(e.job.as_deref()).or_default();
            *n += 1;
            *n
        };
        let group = e
            .job
            .as_deref()
            .map(|j| format!("job {j}"))
            .unwrap_or_else(|| "checkpoints without a job".into());
        let age = now.saturating_sub(e.created_unix);
        let reason = if e.unreadable {
            Some("record unreadable (see `snapckpt list`)".to_string())
        } else if e.mounted {
            Some("a restart clone is mounted".to_string())
        } else if p.keep_last.is_some_and(|n| rank <= n) {
            Some(format!("one of the {} newest of {group}", p.keep_last.unwrap_or(0)))
        } else if p.keep_within.is_some_and(|w| age < w) {
            Some(format!("younger than {} s", p.keep_within.unwrap_or(0)))
        } else {
            None
        };
        let keep = reason.is_some();
        let reason = reason.unwrap_or_else(|| {
            let mut why = vec![];
            if let Some(n) = p.keep_last {
                why.push(format!("not one of the {n} newest of {group}"));
            }
            if let Some(w) = p.keep_within {
                why.push(format!("older than {w} s"));
            }
            why.join(", ")
        });
        out.push(Decision {
            id: e.id.clone(),
            job: e.job.clone(),
            created_unix: e.created_unix,
            keep,
            reason,
        });
    }
    Ok(out)
}

/// What `prune` is asked to do.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub image_root: PathBuf,
    pub policy: Policy,
    pub dry_run: bool,
    pub hooks: Hooks,
}

/// What `prune` did (or would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub image_root: PathBuf,
    pub decisions: Vec<Decision>,
    /// Checkpoints whose deletion failed: id and error (they are still there).
    pub errors: Vec<(String, String)>,
    /// Warnings of post-delete hooks.
    pub warnings: Vec<String>,
}

/// The entries of an image root.
pub fn entries(root: &Path) -> Result<Vec<Entry>, PruneError> {
    Ok(image::list(root)?
        .into_iter()
        .map(|(p, r)| {
            let id = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match r {
                Ok(ck) => Entry {
                    mounted: ck
                        .snapshots
                        .iter()
                        .any(|s| crate::snapshot::clones_in_use(s).map(|v| !v.is_empty()).unwrap_or(true)),
                    id,
                    job: ck.job,
                    created_unix: ck.created_unix,
                    created_ns: ck.created_ns.unwrap_or(0),
                    unreadable: false,
                },
                Err(_) => {
                    Entry { id, job: None, created_unix: 0, created_ns: 0, mounted: false, unreadable: true }
                }
            }
        })
        .collect())
}

/// Apply the policy to the image root: delete what it does not keep (unless a dry run).
pub fn prune(o: &PruneOptions) -> Result<PruneReport, PruneError> {
    let decisions = plan(&entries(&o.image_root)?, &o.policy, crate::sys::now_unix())?;
    let mut rep = PruneReport {
        dry_run: o.dry_run,
        image_root: o.image_root.clone(),
        decisions: vec![],
        errors: vec![],
        warnings: vec![],
    };
    for d in decisions {
        if !d.keep && !o.dry_run {
            let dir = o.image_root.join(&d.id);
            crate::ui::step(&format!("deleting checkpoint {} ({})", d.id, d.reason));
            match cleanup::delete(&dir, false) {
                Ok(ck) => {
                    let ctx = userhooks::Context::of_record(&ck, &dir);
                    rep.warnings.extend(userhooks::run_post(&o.hooks, Point::PostDelete, &ctx));
                }
                Err(e) => rep.errors.push((d.id.clone(), e.to_string())),
            }
        }
        rep.decisions.push(d);
    }
    Ok(rep)
}

/// `prune` as text: one line per checkpoint, then a summary.
pub fn render(rep: &PruneReport) -> String {
    let verb = if rep.dry_run { "would delete" } else { "deleted" };
    let mut out = String::new();
    for d in &rep.decisions {
        let failed = rep.errors.iter().find(|(id, _)| *id == d.id);
        let what = match (d.keep, failed) {
            (true, _) => "keep",
            (false, Some(_)) => "FAILED to delete",
            (false, None) => verb,
        };
        out.push_str(&format!("{what} {}: {}\n", d.id, d.reason));
    }
    for (id, e) in &rep.errors {
        out.push_str(&format!("  {id}: {e}\n"));
    }
    let gone = rep.decisions.iter().filter(|d| !d.keep).count() - rep.errors.len();
    let kept = rep.decisions.iter().filter(|d| d.keep).count();
    out.push_str(&format!("{gone} checkpoint(s) {verb}, {kept} kept\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: &str, job: Option<&str>, t: u64) -> Entry {
        Entry {
            id: id.into(),
            job: job.map(str::to_string),
            created_unix: t,
            created_ns: 0,
            mounted: false,
            unreadable: false,
        }
    }

    #[test]
    fn one_seconds_checkpoints_by_nanoseconds() {
        let mut v = vec![e("x-ffff", None, 7), e("x-0000", None, 7)];
        v[0].created_ns = 100;
        v[1].created_ns = 900;
        let p = Policy { keep_last: Some(1), ..Policy::default() };
        assert_eq!(kept(&plan(&v, &p, 10).unwrap()), ["x-0000"]);
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        let mut v: Vec<&str> = d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect();
        v.sort();
        v
    }

    fn entries() -> Vec<Entry> {
        vec![
            e("a1", Some("a"), 100),
            e("a2", Some("a"), 200),
            e("a3", Some("a"), 300),
            e("b1", Some("b"), 150),
            e("b2", Some("b"), 250),
            e("n1", None, 50),
        ]
    }

    #[test]
    fn keep_last_is_per_job() {
        let p = Policy { keep_last: Some(1), ..Policy::default() };
        let d = plan(&entries(), &p, 1000).unwrap();
        assert_eq!(kept(&d), vec!["a3", "b2", "n1"]);
        assert_eq!(d.len(), 6);
        let p = Policy { keep_last: Some(2), job: Some("a".into()), ..Policy::default() };
        let d = plan(&entries(), &p, 1000).unwrap();
        assert_eq!(d.len(), 3, "only job a is considered");
        assert_eq!(kept(&d), vec!["a2", "a3"]);
        let gone: Vec<&str> = d.iter().filter(|d| !d.keep).map(|d| d.id.as_str()).collect();
        assert_eq!(gone, vec!["a1"]);
    }

    #[test]
    fn keep_within_and_union_of_rules() {
        let p = Policy { keep_within: Some(parse_age("3m").unwrap()), ..Policy::default() };
        // now 400: younger than 180 s are those after 220
        assert_eq!(kept(&plan(&entries(), &p, 400).unwrap()), vec!["a3", "b2"]);
        let p = Policy { keep_within: Some(180), keep_last: Some(1), job: None };
        assert_eq!(kept(&plan(&entries(), &p, 400).unwrap()), vec!["a3", "b2", "n1"]);
        let p = Policy { keep_last: Some(0), ..Policy::default() };
        assert!(kept(&plan(&entries(), &p, 400).unwrap()).is_empty());
    }

    #[test]
    fn mounted_and_unreadable_are_kept() {
        let mut es = entries();
        es[0].mounted = true;
        es[5].unreadable = true;
        let p = Policy { keep_last: Some(0), ..Policy::default() };
        let d = plan(&es, &p, 1000).unwrap();
        assert_eq!(kept(&d), vec!["a1", "n1"]);
        assert!(d.iter().find(|d| d.id == "a1").unwrap().reason.contains("mounted"));
    }

    #[test]
    fn the_demo_job_has_retention_and_hooks() {
        let text = include_str!("../config/demo.toml").replace("pid = 0", "pid = 4242");
        let j = crate::job::Job::parse(&text, Path::new("demo.toml")).unwrap();
        let r = j.retention.unwrap();
        assert_eq!((r.keep_last, r.keep_within.as_deref()), (Some(5), Some("1d")));
        assert_eq!(j.hooks.unwrap().timeout_s, Some(60));
        let e = crate::job::Job::parse("[retention]\nkeep_lats = 1\n", Path::new("j.toml")).unwrap_err();
        assert!(e.to_string().contains("keep_lats"), "{e}");
    }

    #[test]
    fn a_rule_is_required_and_ages_parse() {
        assert!(matches!(plan(&entries(), &Policy::default(), 0), Err(PruneError::NoRule)));
        assert_eq!(parse_age("90").unwrap(), 90);
        assert_eq!(parse_age("30m").unwrap(), 1800);
        assert_eq!(parse_age("12h").unwrap(), 43200);
        assert_eq!(parse_age("7d").unwrap(), 604800);
        assert_eq!(parse_age("2w").unwrap(), 1209600);
        for bad in ["", "d", "1y", "-1d", "1.5h"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }
}
