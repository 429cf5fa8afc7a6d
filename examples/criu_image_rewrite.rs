//! List or rewrite the external regular-file entries of a CRIU image directory.
//!
//! ```text
//! criu_image_rewrite list DIR
//! criu_image_rewrite rewrite SRC DST KEY=PATH...
//! ```
//! `rewrite` writes DST as a restore copy of SRC in which each entry `file[MNTID:INO]` named by a
//! KEY opens PATH instead (see `snapckpt::criu_image::rewrite_externals`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use snapckpt::criu_image;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("list") if args.len() == 2 => list(Path::new(&args[1])),
        Some("rewrite") if args.len() >= 3 => rewrite(&args[1], &args[2], &args[3..]),
        _ => {
            eprintln!("usage: criu_image_rewrite list DIR | rewrite SRC DST KEY=PATH...");
            return ExitCode::from(2);
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("criu_image_rewrite: {e}");
            ExitCode::FAILURE
        }
    }
}

fn list(dir: &Path) -> Result<(), String> {
    for r in criu_image::list_reg_files(dir).map_err(|e| e.to_string())? {
        println!(
            "id={:#x} ext={} name={} flags={:#o} pos={} size={} mode={} mnt_id={}",
            r.id,
            r.ext,
            r.name.to_string_lossy(),
            r.flags,
            r.pos,
            r.size.map_or("-".into(), |s| s.to_string()),
            r.mode.map_or("-".into(), |m| format!("{m:#o}")),
            r.mnt_id.map_or("-".into(), |m| m.to_string()),
        );
    }
    Ok(())
}

fn rewrite(src: &str, dst: &str, pairs: &[String]) -> Result<(), String> {
    let mut map = HashMap::new();
    for p in pairs {
        let (k, v) = p.split_once('=').ok_or_else(|| format!("{p}: not KEY=PATH"))?;
        map.insert(k.to_string(), PathBuf::from(v));
    }
    let rep =
        criu_image::rewrite_externals(Path::new(src), Path::new(dst), &map).map_err(|e| e.to_string())?;
    for (id, key, path) in &rep.rewritten {
        println!("rewrote id={id:#x} {key} -> {}", path.display());
    }
    for (id, key) in &rep.untouched_externals {
        println!("left external id={id:#x} {key}");
    }
    if !rep.unused_keys.is_empty() {
        return Err(format!("keys in no entry: {}", rep.unused_keys.join(" ")));
    }
    Ok(())
}
