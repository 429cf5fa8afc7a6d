//! Naming a checkpoint on the command line: an image directory (a path, with a `/`), a full
//! id, a unique prefix of one (`20261201T07`), `latest` (the newest checkpoint of the image
//! root) or `latest:JOB` (the newest of job `JOB`). An ambiguous prefix is refused with the
//! candidates; an id that matches nothing is refused with the closest ids, as
//! `git`'s "did you mean".
//!
//! [`pick`] is the rule over a list of candidates, without any filesystem access (unit
//! tested); [`resolve`] applies it to an image root.

use crate::image;
use crate::record::RECORD_FILE;
use std::path::{Path, PathBuf};

/// What `latest` is spelled as.
pub const LATEST: &str = "latest";

/// A checkpoint as [`pick`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    pub created_unix: u64,
    /// Nanoseconds within that second (0 when not recorded): orders one second's checkpoints.
    pub created_ns: u32,
    pub job: Option<String>,
    /// Whether its record could be read (`latest` names only readable checkpoints).
    pub readable: bool,
}

/// Why a checkpoint name does not name exactly one checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    #[error("no checkpoint {given:?} in {}{}", root.display(), did_you_mean(suggestions))]
    NotFound { given: String, root: PathBuf, suggestions: Vec<String> },
    #[error("{given:?} is ambiguous in {}: it begins {} checkpoint ids ({}); give more of the id", root.display(), matches.len(), matches.join(", "))]
    Ambiguous { given: String, root: PathBuf, matches: Vec<String> },
    #[error("no checkpoint{} in {}: `latest` names none", job.as_ref().map(|j| format!(" of job {j:?}")).unwrap_or_default(), root.display())]
    NoLatest { job: Option<String>, root: PathBuf },
    #[error("no image directory {} (no {RECORD_FILE} in it)", path.display())]
    NoDir { path: PathBuf },
    #[error(transparent)]
    Image(#[from] image::ImageError),
}

fn did_you_mean(s: &[String]) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", s.join(" or "))
    }
}

/// The id `given` names among `all`: an exact id, a unique prefix, `latest` or `latest:JOB`.
pub fn pick(given: &str, all: &[Candidate], root: &Path) -> Result<String, IdError> {
    if let Some(rest) = given.strip_prefix(LATEST).filter(|r| r.is_empty() || r.starts_with(':')) {
        let job = rest.strip_prefix(':').map(str::to_string);
        return all
            .iter()
            .filter(|c| c.readable && (job.is_none() || c.job == job))
            .max_by(|a, b| (a.created_unix, a.created_ns, &a.id).cmp(&(b.created_unix, b.created_ns, &b.id)))
            .map(|c| c.id.clone())
            .ok_or(IdError::NoLatest { job, root: root.into() });
    }
    if let Some(c) = all.iter().find(|c| c.id == given) {
        return Ok(c.id.clone());
    }
    let matches: Vec<String> = if given.is_empty() {
        vec![]
    } else {
        all.iter().filter(|c| c.id.starts_with(given)).map(|c| c.id.clone()).collect()
    };
    match matches.len() {
        1 => Ok(matches[0].clone()),
        0 => Err(IdError::NotFound {
            given: given.into(),
            root: root.into(),
            suggestions: closest(given, all),
        }),
        _ => Err(IdError::Ambiguous { given: given.into(), root: root.into(), matches }),
    }
}

/// Up to three ids close to `given`: by edit distance, or whose random suffix it is or begins.
fn closest(given: &str, all: &[Candidate]) -> Vec<String> {
    let limit = (given.len() / 3).max(2);
    let mut scored: Vec<(usize, &str)> = all
        .iter()
        .map(|c| {
            let d = distance(given, &c.id);
            // the random suffix, or its beginning (`3fa` for `...Z-3fa2`)
            let suffix = given.len() >= 2
                && (c.id.ends_with(given)
                    || c.id.rsplit_once('-').is_some_and(|(_, x)| x.starts_with(given)));
            (if suffix { 0 } else { d }, c.id.as_str())
        })
        .filter(|(d, _)| *d <= limit)
        .collect();
    scored.sort();
    scored.into_iter().take(3).map(|(_, id)| id.to_string()).collect()
}

/// Levenshtein distance (ids are short and ASCII).
fn distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidates of an image root: its readable checkpoints, and the image directories whose
/// record cannot be read (so that `delete --force` can still name them).
pub fn candidates(root: &Path) -> Result<Vec<Candidate>, IdError> {
    Ok(image::list(root)?
        .into_iter()
        .filter_map(|(p, r)| {
            let id = p.file_name()?.to_str()?.to_string();
            Some(match r {
                Ok(ck) => {
                    let (created_unix, created_ns) = ck.created_at();
                    Candidate { id, created_unix, created_ns, job: ck.job, readable: true }
                }
                Err(_) => Candidate { id, created_unix: 0, created_ns: 0, job: None, readable: false },
            })
        })
        .collect())
}

/// The image directory `given` names: a path (containing `/`) that holds a record, else a
/// checkpoint of `root` picked by [`pick`].
pub fn resolve(root: &Path, given: &str) -> Result<PathBuf, IdError> {
    if given.contains('/') {
        let p = Path::new(given);
        if p.join(RECORD_FILE).exists() {
            return Ok(p.to_path_buf());
        }
        return Err(IdError::NoDir { path: p.to_path_buf() });
    }
    // A full id is found without reading the other records.
    let is_latest = given == LATEST || given.starts_with("latest:");
    if !is_latest && crate::record::names::valid_id(given) && root.join(given).join(RECORD_FILE).exists() {
        return Ok(root.join(given));
    }
    let id = pick(given, &candidates(root)?, root)?;
    Ok(root.join(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, t: u64, job: Option<&str>) -> Candidate {
        Candidate {
            id: id.into(),
            created_unix: t,
            created_ns: 0,
            job: job.map(str::to_string),
            readable: true,
        }
    }

    fn all() -> Vec<Candidate> {
        vec![
            c("20261201T070000Z-aaaa", 100, Some("web")),
            c("20261201T071500Z-bbbb", 200, Some("db")),
            c("20261201T073000Z-cccc", 300, Some("web")),
            c("20261130T230000Z-dddd", 50, None),
        ]
    }

    #[test]
    fn latest_of_one_second_by_nanoseconds() {
        let mut v = vec![c("20261201T070000Z-ffff", 7, None), c("20261201T070000Z-0000", 7, None)];
        v[0].created_ns = 100;
        v[1].created_ns = 900;
        assert_eq!(pick("latest", &v, Path::new("/img")).unwrap(), "20261201T070000Z-0000");
    }

    #[test]
    fn exact_prefix_and_latest() {
        let r = Path::new("/img");
        assert_eq!(pick("20261201T071500Z-bbbb", &all(), r).unwrap(), "20261201T071500Z-bbbb");
        assert_eq!(pick("20261201T0715", &all(), r).unwrap(), "20261201T071500Z-bbbb");
        assert_eq!(pick("20261130", &all(), r).unwrap(), "20261130T230000Z-dddd");
        assert_eq!(pick("latest", &all(), r).unwrap(), "20261201T073000Z-cccc");
        assert_eq!(pick("latest:db", &all(), r).unwrap(), "20261201T071500Z-bbbb");
        assert_eq!(pick("latest:web", &all(), r).unwrap(), "20261201T073000Z-cccc");
    }

    #[test]
    fn ambiguous_and_missing_are_refused() {
        let r = Path::new("/img");
        match pick("20261201T07", &all(), r) {
            Err(IdError::Ambiguous { matches, .. }) => assert_eq!(matches.len(), 3),
            other => panic!("{other:?}"),
        }
        let e = pick("20261201T07", &all(), r).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("give more of the id"), "{e}");
        assert!(matches!(pick("latest:nojob", &all(), r), Err(IdError::NoLatest { .. })));
        assert!(matches!(pick("latest", &[], r), Err(IdError::NoLatest { job: None, .. })));
        assert!(matches!(pick("", &all(), r), Err(IdError::NotFound { .. })));
        // "latestX" is not `latest`
        assert!(matches!(pick("latestx", &all(), r), Err(IdError::NotFound { .. })));
    }

    #[test]
    fn not_found_suggests_close_ids() {
        let r = Path::new("/img");
        // a typo in the time
        let e = pick("20261201T071600Z-bbbb", &all(), r).unwrap_err();
        match &e {
            IdError::NotFound { suggestions, .. } => assert_eq!(suggestions[0], "20261201T071500Z-bbbb"),
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("did you mean 20261201T071500Z-bbbb"), "{e}");
        // the random suffix alone
        match pick("cccc", &all(), r).unwrap_err() {
            IdError::NotFound { suggestions, .. } => assert_eq!(suggestions, vec!["20261201T073000Z-cccc"]),
            other => panic!("{other:?}"),
        }
        // the beginning of the suffix
        match pick("cc", &all(), r).unwrap_err() {
            IdError::NotFound { suggestions, .. } => assert_eq!(suggestions[0], "20261201T073000Z-cccc"),
            other => panic!("{other:?}"),
        }
        // nothing close: no suggestion
        match pick("zzzzzzzzzzzzzzzz", &all(), r).unwrap_err() {
            IdError::NotFound { suggestions, .. } => assert!(suggestions.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn edit_distance() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("abc", "abc"), 0);
    }
}
