//! The naming rules every stage shares, so the record can check that it names only its own
//! files: checkpoint ids, the relinked-name template, the checkpoint directory under a mount
//! root, btrfs snapshot and clone names, LVM snapshot LV names, and the names of the image
//! directory's states.

/// Where relinked names live, relative to a mount's root.
pub const CHECKPOINT_DIR: &str = "lost+found/checkpoint";
/// The default name template: `%t` the checkpoint id, `%n` a counter.
pub const DEFAULT_TEMPLATE: &str = "unlink-at-restart-%t-%n";

/// Default directory, relative to the mount root, that holds snapckpt's btrfs snapshots.
pub const DEFAULT_SNAPSHOT_DIR: &str = ".snapckpt";
/// Name of the read-only btrfs snapshot inside `<snapshot_dir>/<id>/`.
pub const SNAPSHOT_NAME: &str = "snapshot";
/// Prefix of the writable btrfs restart clones inside `<snapshot_dir>/<id>/`.
pub const CLONE_PREFIX: &str = "restart-";

/// Prefix of every LVM snapshot LV snapckpt makes.
pub const LV_PREFIX: &str = "snapckpt-";
/// Longest snapshot LV name made here; restart clones add `-r<N>`. LVM's limit is 127
/// characters for "VG/LV" and 127 for the device-mapper name (VG and LV with '-' doubled,
/// plus suffixes such as "-cow"): this leaves room for the VG name.
pub const MAX_SNAPSHOT_LV: usize = 48;
/// Substrings LVM reserves for its internal LVs (lib/misc/lvm-string.c).
const RESERVED: &[&str] = &[
    "_cdata", "_cmeta", "_corig", "_cpool", "_cvol", "_imeta", "_iorig", "_mimage", "_mlog", "_pmspare",
    "_rimage", "_rmeta", "_tdata", "_tmeta", "_vdata", "_vorigin", "_wcorig", "_vdo",
];

/// A template that cannot make safe, traceable names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("name template {template:?}: {msg}")]
pub struct TemplateError {
    pub template: String,
    pub msg: String,
}

/// Whether `p` is a normalized absolute path: "/" or "/a/b", without empty, "." or ".."
/// components and without NUL.
pub fn normalized_abs(p: &str) -> bool {
    p == "/"
        || (p.starts_with('/')
            && !p.contains('\0')
            && p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."))
}

/// Checkpoint ids (and everything derived from them in paths) use only these characters.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Whether `id` has exactly the shape [`new_id`] makes (`YYYYMMDDTHHMMSSZ-hhhh`): used where a
/// directory is removed on its name alone (`delete --force` of an unreadable record).
pub fn generated_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 21
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && &b[15..17] == b"Z-"
        && b[17..].iter().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

/// A new checkpoint id: UTC time and 4 random hex digits, e.g. `20261126T230102Z-3fa2`.
pub fn new_id(now_unix: u64) -> String {
    format!("{}-{}", crate::sys::utc_compact(now_unix), crate::sys::random_hex(2))
}

/// Whether `name` is a plain file name: not empty, no '/', not "." or "..", no NUL.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".." && !name.contains('\0')
}

/// The path of a relinked name relative to its mount root.
pub fn relinked_rel_path(name: &str) -> String {
    format!("{CHECKPOINT_DIR}/{name}")
}

// ---------------------------------------------------------------------------------------------
// LVM names

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// True if LVM accepts `n` as an LV name (lib/misc/lvm-string.c: characters, no leading '-',
/// not "." or "..", no reserved substring or prefix, length).
pub fn valid_lv_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 127
        && !n.starts_with('-')
        && n != "."
        && n != ".."
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
        && !n.starts_with("snapshot")
        && !n.starts_with("pvmove")
        && !RESERVED.iter().any(|r| n.contains(r))
}

/// The snapshot LV name of checkpoint `id`: `snapckpt-<id>`, or, when that is longer than
/// [`MAX_SNAPSHOT_LV`] or not a name LVM accepts, `snapckpt-<sanitized id prefix>-<hash>`
/// (the hash of the whole id keeps it unique).
pub fn snapshot_lv_name(id: &str) -> String {
    let plain = format!("{LV_PREFIX}{id}");
    // The clone names derived from it must be valid too.
    if plain.len() <= MAX_SNAPSHOT_LV && valid_lv_name(&plain) && valid_lv_name(&format!("{plain}-r1")) {
        return plain;
    }
    let clean: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' }).collect();
    let keep = MAX_SNAPSHOT_LV - LV_PREFIX.len() - 1 - 8;
    let head: String = clean.chars().take(keep).collect();
    format!("{LV_PREFIX}{head}-{:08x}", fnv(id) as u32)
}

// ---------------------------------------------------------------------------------------------
// Relinked-name templates

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Id,
    Num,
    Rand(usize),
}

/// A mkstemp-like name template: `%t` checkpoint id, `%n` counter, a run of six or more `X`
/// random characters, `%%` a literal percent sign. It must contain `%t` (so leftovers can be
/// traced to their checkpoint) and `%n` or `XXXXXX` (so names are unique), and may not name
/// anything but a plain file inside the checkpoint directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(t: &str) -> Result<Template, TemplateError> {
        let bad = |msg: &str| Err(TemplateError { template: t.into(), msg: msg.into() });
        if t.is_empty() || t.len() > 200 {
            return bad("must be 1 to 200 characters");
        }
        if t.contains('/') || t.contains('\0') || t == "." || t == ".." || t.contains("..") {
            return bad("must be a plain file name: no '/', no '..', no NUL (it may not escape lost+found/checkpoint)");
        }
        if t.starts_with('.') {
            return bad("may not start with '.' (reserved for snapckpt's temporary files)");
        }
        let mut parts = vec![];
        let mut lit = String::new();
        let cs: Vec<char> = t.chars().collect();
        let mut i = 0;
        while i < cs.len() {
            let c = cs[i];
            if c == '%' {
                let p = match cs.get(i + 1) {
                    Some('t') => Part::Id,
                    Some('n') => Part::Num,
                    Some('%') => {
                        lit.push('%');
                        i += 2;
                        continue;
                    }
                    _ => return bad("'%' must be followed by t, n or %"),
                };
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                if matches!(parts.last(), Some(Part::Id | Part::Num | Part::Rand(_))) {
                    return bad("two fields in a row (%t, %n, XXXXXX) need a separator between them");
                }
                parts.push(p);
                i += 2;
            } else if c == 'X' && cs[i..].iter().take_while(|&&x| x == 'X').count() >= 6 {
                let n = cs[i..].iter().take_while(|&&x| x == 'X').count();
                if !lit.is_empty() {
                    parts.push(Part::Lit(std::mem::take(&mut lit)));
                }
                if matches!(parts.last(), Some(Part::Id | Part::Num | Part::Rand(_))) {
                    return bad("two fields in a row (%t, %n, XXXXXX) need a separator between them");
                }
                parts.push(Part::Rand(n));
                i += n;
            } else {
                lit.push(c);
                i += 1;
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if parts.iter().filter(|p| **p == Part::Id).count() != 1 {
            return bad("must contain %t (the checkpoint id) exactly once");
        }
        if !parts.iter().any(|p| matches!(p, Part::Num | Part::Rand(_))) {
            return bad("must contain %n or XXXXXX so that names are unique");
        }
        Ok(Template { raw: t.into(), parts })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The name for checkpoint `id` and counter `n` (random characters drawn anew each call).
    pub fn render(&self, id: &str, n: u64) -> String {
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Id => s.push_str(id),
                Part::Num => s.push_str(&n.to_string()),
                Part::Rand(k) => {
                    let hex = crate::sys::random_hex(*k);
                    for (i, c) in hex.as_bytes().chunks(2).enumerate().take(*k) {
                        let v =
                            u8::from_str_radix(std::str::from_utf8(c).unwrap_or("0"), 16).unwrap_or(i as u8);
                        s.push(ALNUM[v as usize % ALNUM.len()] as char);
                    }
                }
            }
        }
        s
    }

    /// If `name` was made by this template, the checkpoint id in it.
    pub fn match_id(&self, name: &str) -> Option<String> {
        // Every way the name can be read; an id only if they all agree (a name that could be
        // another checkpoint's is left alone by gc rather than removed).
        fn go(parts: &[Part], s: &str, id: Option<&str>, out: &mut Vec<String>) {
            let Some((p, rest)) = parts.split_first() else {
                if s.is_empty() {
                    if let Some(i) = id {
                        out.push(i.to_string());
                    }
                }
                return;
            };
            match p {
                Part::Lit(l) => {
                    if let Some(r) = s.strip_prefix(l.as_str()) {
                        go(rest, r, id, out)
                    }
                }
                Part::Rand(k) => {
                    if s.len() >= *k
                        && s.is_char_boundary(*k)
                        && s[..*k].bytes().all(|b| b.is_ascii_alphanumeric())
                    {
                        go(rest, &s[*k..], id, out)
                    }
                }
                Part::Num => {
                    let n = s.bytes().take_while(|b| b.is_ascii_digit()).count();
                    for k in 1..=n {
                        go(rest, &s[k..], id, out);
                    }
                }
                Part::Id => {
                    let n = s
                        .bytes()
                        .take_while(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
                        .count();
                    for k in 1..=n {
                        go(rest, &s[k..], Some(&s[..k]), out);
                    }
                }
            }
        }
        let mut ids = vec![];
        go(&self.parts, name, None, &mut ids);
        ids.retain(|i| valid_id(i));
        ids.sort();
        ids.dedup();
        match ids.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }
}
/// The directory of pre-dump round `n` (1, 2, ...) inside the image directory.
pub fn pre_dump_dir(n: usize) -> String {
    format!("pre-{n}")
}

/// Whether `name` is the directory of a pre-dump round (`pre-N`, N a positive integer without
/// leading zeros): the only directories a CRIU image directory of snapckpt holds.
pub fn is_pre_dump_dir(name: &str) -> bool {
    name.strip_prefix("pre-").is_some_and(|n| {
        !n.is_empty() && !n.starts_with('0') && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit())
    })
}
