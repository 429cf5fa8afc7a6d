//! CRIU image files, just enough to hand preserved files back to CRIU **by path**.
//!
//! At dump time snapckpt declares every preserved inode external (`--external file[MNTID:INO]`),
//! so CRIU writes, for each open file, mapping, cwd/root and exe of that inode, a `RegFileEntry`
//! whose `name` is the key `file[MNTID:INO]` and whose `ext` is true (criu/files-reg.c,
//! `dump_one_reg_file`). At restore, handing such an entry over with `--inherit-fd` makes CRIU
//! reopen `/proc/self/fd/N` with the dumped flags, which fails with ELOOP when they hold
//! `O_NOFOLLOW`, and leaves the restored file named by the inherited fd's path.
//!
//! [`rewrite_externals`] instead writes a restore copy of the image directory whose `files.img`
//! turns each such entry into a plain path entry (`name` = a path where the caller has linked
//! the preserved inode for the restore, `ext` dropped). CRIU then opens it by path with the
//! file's own flags (`open_path` -> `openat(mntns_root, name + 1, flags)`), and once the caller
//! has removed the name again (CRIU's `post-restore` notification) the tasks read back
//! `<path> (deleted)`. The one entry is shared by fds, mappings (`VmaEntry.shmid`), cwd/root
//! (`FsEntry.cwd_id`/`root_id`) and exe (`MmEntry.exe_file_id`), which all refer to it by id.
//!
//! The format: an image file is a magic header (two native-endian u32, `IMG_COMMON_MAGIC` or
//! `IMG_SERVICE_MAGIC` then the image's own magic; the inventory and v1 images have one), then
//! entries, each a native-endian u32 length and that many bytes of a protobuf message
//! (criu/include/magic.h, criu/protobuf.c `pb_write_one`). `files.img` holds `FileEntry`
//! (images/fdinfo.proto: type = 1, id = 2, reg = 3); `RegFileEntry` (images/regfile.proto) has
//! id = 1, flags = 2, pos = 3, fown = 5, name = 6, mnt_id = 7 (sint32), size = 8, ext = 9,
//! mode = 10, build_id = 11, checksum* = 12..14. Old images keep bare `RegFileEntry`s in
//! `reg-files.img`; both are handled.
//!
//! The protobuf code here is minimal and lossless: every field that is not rewritten, known or
//! not, is copied byte for byte, and entries that are not rewritten are not re-encoded at all.
//! Malformed input gives an [`ImageError`], never a panic.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Head of every image file but the inventory (criu/include/magic.h).
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// Head of service files (stats, irmap cache).
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
/// `files.img`: `FileEntry`s.
pub const FILES_MAGIC: u32 = 0x5630_3138;
/// `reg-files.img` of old images: bare `RegFileEntry`s.
pub const REG_FILES_MAGIC: u32 = 0x5036_3636;
/// `fd_types.REG` in images/fdinfo.proto.
pub const FD_TYPE_REG: u64 = 1;

/// The image holding the regular files, new and old name.
pub const FILES_IMG: &str = "files.img";
pub const REG_FILES_IMG: &str = "reg-files.img";

/// Largest image file read into memory (a `files.img` is a few hundred bytes per file).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;
/// Longest path CRIU can open (PATH_MAX, with the NUL).
const PATH_MAX: usize = 4096;

/// An error, always with the file (or directory) it is about.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The bytes are not a well-formed CRIU image / protobuf message.
    #[error("{path}: malformed CRIU image: {what}")]
    Malformed { path: PathBuf, what: String },
    /// A system call failed.
    #[error("{path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The request cannot be carried out (bad mapping, destination exists, missing image...).
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { path: path.to_path_buf(), op, source }
}

// ---------------------------------------------------------------------------------------------
// Protobuf wire format
// ---------------------------------------------------------------------------------------------

/// A decoded field value. Groups (wire types 3 and 4) are refused: CRIU does not use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// One field of a message, with the exact bytes it was encoded as (key included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub value: WireValue<'a>,
    pub raw: &'a [u8],
}

/// Append `v` as a varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Read a varint at `*pos`, advancing it.
pub fn get_varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let start = *pos;
    let mut v: u64 = 0;
    for i in 0..10 {
        let Some(&b) = buf.get(*pos) else {
            return Err(format!("truncated varint at byte {start}"));
        };
        *pos += 1;
        if i == 9 && b > 1 {
            return Err(format!("varint longer than 64 bits at byte {start}"));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(format!("varint longer than 10 bytes at byte {start}"))
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: u64, what: &str) -> Result<&'a [u8], String> {
    let start = *pos;
    let end =
        usize::try_from(n).ok().and_then(|n| start.checked_add(n)).filter(|&e| e <= buf.len()).ok_or_else(
            || format!("{what} of {n} bytes at byte {start} runs past the end ({})", buf.len()),
        )?;
    *pos = end;
    Ok(&buf[start..end])
}

/// Split a message into its fields, in order.
pub fn parse_fields(buf: &[u8]) -> Result<Vec<Field<'_>>, String> {
    let mut fields = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let key = get_varint(buf, &mut pos)?;
        let number = key >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            return Err(format!("bad field number {number} at byte {start}"));
        }
        let value = match key & 7 {
            0 => WireValue::Varint(get_varint(buf, &mut pos)?),
            1 => {
                let b = take(buf, &mut pos, 8, "fixed64")?;
                WireValue::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = get_varint(buf, &mut pos)?;
                WireValue::Bytes(take(buf, &mut pos, len, "length-delimited field")?)
            }
            5 => {
                let b = take(buf, &mut pos, 4, "fixed32")?;
                WireValue::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            t => return Err(format!("unsupported wire type {t} (field {number}) at byte {start}")),
        };
        fields.push(Field { number: number as u32, value, raw: &buf[start..pos] });
    }
    Ok(fields)
}

/// Append a length-delimited field.
pub fn put_bytes_field(out: &mut Vec<u8>, number: u32, data: &[u8]) {
    put_varint(out, (u64::from(number) << 3) | 2);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// The last occurrence of a scalar field (protobuf semantics), as a varint.
fn last_varint(fields: &[Field<'_>], number: u32) -> Result<Option<u64>, String> {
    let mut v = None;
    for f in fields.iter().filter(|f| f.number == number) {
        match f.value {
            WireValue::Varint(x) => v = Some(x),
            _ => return Err(format!("field {number} is not a varint")),
        }
    }
    Ok(v)
}

fn last_bytes<'a>(fields: &[Field<'a>], number: u32) -> Result<Option<&'a [u8]>, String> {
    let mut v = None;
    for f in fields.iter().filter(|f| f.number == number) {
        match f.value {
            WireValue::Bytes(b) => v = Some(b),
            _ => return Err(format!("field {number} is not length-delimited")),
        }
    }
    Ok(v)
}

/// The single occurrence of an embedded message field (two would have to be merged: refused).
fn only_message<'a>(fields: &[Field<'a>], number: u32) -> Result<Option<&'a [u8]>, String> {
    if fields.iter().filter(|f| f.number == number).count() > 1 {
        return Err(format!("message field {number} occurs more than once"));
    }
    last_bytes(fields, number)
}

// ---------------------------------------------------------------------------------------------
// Image files
// ---------------------------------------------------------------------------------------------

/// A CRIU image file: its magic header and its entries (protobuf payloads, length prefix
/// stripped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// One or two u32: `[IMG_COMMON_MAGIC, FILES_MAGIC]`, or `[INVENTORY_MAGIC]`.
    pub magic: Vec<u32>,
    pub entries: Vec<Vec<u8>>,
}

fn u32_at(buf: &[u8], pos: usize) -> Option<u32> {
    buf.get(pos..pos + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
}

impl Image {
    /// Parse an image of length-prefixed entries (not for images with raw payload after
    /// entries, such as pages or ghost files).
    pub fn parse(buf: &[u8]) -> Result<Image, String> {
        let first = u32_at(buf, 0).ok_or("shorter than its magic")?;
        let mut pos = 4;
        let mut magic = vec![first];
        if first == IMG_COMMON_MAGIC || first == IMG_SERVICE_MAGIC {
            magic.push(u32_at(buf, 4).ok_or("shorter than its second magic")?);
            pos = 8;
        }
        let mut entries = Vec::new();
        while pos < buf.len() {
            let len = u32_at(buf, pos).ok_or_else(|| format!("truncated entry length at byte {pos}"))?;
            pos += 4;
            let body = take(buf, &mut pos, u64::from(len), &format!("entry {}", entries.len()))?;
            entries.push(body.to_vec());
        }
        Ok(Image { magic, entries })
    }

    /// The bytes of the image file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.entries.iter().map(|e| e.len() + 4).sum::<usize>());
        for m in &self.magic {
            out.extend_from_slice(&m.to_ne_bytes());
        }
        for e in &self.entries {
            out.extend_from_slice(&(e.len() as u32).to_ne_bytes());
            out.extend_from_slice(e);
        }
        out
    }

    /// The image's own magic (the second word after `IMG_COMMON_MAGIC`).
    pub fn kind(&self) -> u32 {
        *self.magic.last().expect("at least one magic")
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, ImageError> {
    let f = fs::File::open(path).map_err(io_err(path, "open"))?;
    let md = f.metadata().map_err(io_err(path, "fstat"))?;
    if !md.is_file() {
        return Err(ImageError::Invalid { path: path.into(), what: "not a regular file".into() });
    }
    if md.len() > MAX_IMAGE_BYTES {
        return Err(ImageError::Invalid {
            path: path.into(),
            what: format!("{} bytes, more than the {MAX_IMAGE_BYTES} read into memory", md.len()),
        });
    }
    let mut buf = Vec::with_capacity(md.len() as usize);
    io::Read::read_to_end(&mut io::Read::take(f, MAX_IMAGE_BYTES + 1), &mut buf)
        .map_err(io_err(path, "read"))?;
    Ok(buf)
}

/// Read and parse an image file.
pub fn read_image(path: &Path) -> Result<Image, ImageError> {
    let buf = read_bounded(path)?;
    Image::parse(&buf).map_err(|what| ImageError::Malformed { path: path.into(), what })
}

// ---------------------------------------------------------------------------------------------
// Regular-file entries
// ---------------------------------------------------------------------------------------------

/// The fields of a `RegFileEntry` that matter here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegFile {
    /// The file id that fdinfo, vma `shmid`, fs `cwd_id`/`root_id` and mm `exe_file_id` use.
    pub id: u32,
    /// Open flags of the dumped file (octal in fdinfo); reopened with them on restore.
    pub flags: u32,
    pub pos: u64,
    /// For an external entry the key `file[MNTID:INO]`, else the path with a leading '/'.
    pub name: OsString,
    pub mnt_id: Option<i32>,
    /// Size CRIU checks on restore (absent for O_WRONLY|O_APPEND files).
    pub size: Option<u64>,
    pub ext: bool,
    /// `st_mode` CRIU checks on restore.
    pub mode: Option<u32>,
}

impl RegFile {
    /// Decode a `RegFileEntry` message.
    pub fn decode(msg: &[u8]) -> Result<RegFile, String> {
        let f = parse_fields(msg)?;
        let need = |n: u32, what: &str| -> Result<u64, String> {
            last_varint(&f, n)?.ok_or_else(|| format!("RegFileEntry without {what}"))
        };
        let id = need(1, "id")?;
        let flags = need(2, "flags")?;
        let pos = need(3, "pos")?;
        let name = last_bytes(&f, 6)?.ok_or("RegFileEntry without name")?;
        let zigzag = |v: u64| ((v >> 1) as i64 ^ -((v & 1) as i64)) as i32;
        Ok(RegFile {
            id: id as u32,
            flags: flags as u32,
            pos,
            name: OsString::from_vec(name.to_vec()),
            mnt_id: last_varint(&f, 7)?.map(zigzag),
            size: last_varint(&f, 8)?,
            ext: last_varint(&f, 9)?.is_some_and(|v| v != 0),
            mode: last_varint(&f, 10)?.map(|v| v as u32),
        })
    }
}

/// Rewrite a `RegFileEntry`: `name` becomes `new_name`, `ext` is dropped, all else is kept
/// byte for byte and in order.
pub fn rewrite_reg_entry(msg: &[u8], new_name: &[u8]) -> Result<Vec<u8>, String> {
    let fields = parse_fields(msg)?;
    let mut out = Vec::with_capacity(msg.len() + new_name.len());
    let mut named = false;
    for f in &fields {
        match f.number {
            6 => {
                if !named {
                    put_bytes_field(&mut out, 6, new_name);
                    named = true;
                }
            }
            9 => {}
            _ => out.extend_from_slice(f.raw),
        }
    }
    if !named {
        return Err("RegFileEntry without name".into());
    }
    Ok(out)
}

/// Where a regular-file entry sits in its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `files.img`: `FileEntry { type = REG, reg = RegFileEntry }`.
    Files,
    /// `reg-files.img`: the `RegFileEntry` itself.
    RegFiles,
}

/// The `RegFileEntry` inside entry `e`, if it holds one.
fn reg_of(layout: Layout, e: &[u8]) -> Result<Option<&[u8]>, String> {
    match layout {
        Layout::RegFiles => Ok(Some(e)),
        Layout::Files => {
            let f = parse_fields(e)?;
            if last_varint(&f, 1)? != Some(FD_TYPE_REG) {
                return Ok(None);
            }
            only_message(&f, 3)?.map(Some).ok_or_else(|| "FileEntry of type REG without reg".into())
        }
    }
}

/// Replace the `RegFileEntry` of a `FileEntry` (field 3), all else kept.
fn replace_reg(file_entry: &[u8], reg: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(file_entry.len() + 64);
    for f in parse_fields(file_entry)? {
        if f.number == 3 {
            put_bytes_field(&mut out, 3, reg);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

/// Find the regular-file image of an image directory.
fn files_image(dir: &Path) -> Result<(PathBuf, Layout), ImageError> {
    for (name, layout) in [(FILES_IMG, Layout::Files), (REG_FILES_IMG, Layout::RegFiles)] {
        let p = dir.join(name);
        match p.symlink_metadata() {
            Ok(_) => return Ok((p, layout)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::Io { path: p, op: "stat", source: e }),
        }
    }
    Err(ImageError::Invalid {
        path: dir.into(),
        what: format!("no {FILES_IMG} or {REG_FILES_IMG}: not a CRIU image directory"),
    })
}

fn check_kind(path: &Path, img: &Image, layout: Layout) -> Result<(), ImageError> {
    let want = match layout {
        Layout::Files => FILES_MAGIC,
        Layout::RegFiles => REG_FILES_MAGIC,
    };
    if img.kind() != want {
        return Err(ImageError::Malformed {
            path: path.into(),
            what: format!("magic {:#x}, expected {want:#x}", img.kind()),
        });
    }
    Ok(())
}

fn all_reg_files(path: &Path, img: &Image, layout: Layout) -> Result<Vec<RegFile>, ImageError> {
    let mut out = Vec::new();
    for (i, e) in img.entries.iter().enumerate() {
        let bad =
            |what: String| ImageError::Malformed { path: path.into(), what: format!("entry {i}: {what}") };
        if let Some(reg) = reg_of(layout, e).map_err(bad)? {
            out.push(RegFile::decode(reg).map_err(bad)?);
        }
    }
    Ok(out)
}

/// All regular-file entries of an image directory.
pub fn list_reg_files(dir: &Path) -> Result<Vec<RegFile>, ImageError> {
    let (path, layout) = files_image(dir)?;
    let img = read_image(&path)?;
    check_kind(&path, &img, layout)?;
    all_reg_files(&path, &img, layout)
}

/// The external regular-file entries (`ext` set; `name` is the `file[MNTID:INO]` key): one per
/// open file description, mapping, cwd/root and exe of a declared inode.
pub fn list_externals(dir: &Path) -> Result<Vec<RegFile>, ImageError> {
    Ok(list_reg_files(dir)?.into_iter().filter(|r| r.ext).collect())
}

// ---------------------------------------------------------------------------------------------
// The restore copy
// ---------------------------------------------------------------------------------------------

/// What [`rewrite_externals`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RewriteReport {
    /// (file id, key, the entry's new name) for every rewritten entry.
    pub rewritten: Vec<(u32, String, PathBuf)>,
    /// Keys of the map that no entry carries.
    pub unused_keys: Vec<String>,
    /// External entries left as they were (no key in the map; e.g. handed over by inherit-fd).
    pub untouched_externals: Vec<(u32, String)>,
}

fn check_target(key: &str, p: &Path) -> Result<(), String> {
    let b = p.as_os_str().as_bytes();
    if b.first() != Some(&b'/') {
        return Err(format!(
            "{key}: {} is not absolute (CRIU opens name+1 below the mount namespace root)",
            p.display()
        ));
    }
    if b.contains(&0) {
        return Err(format!("{key}: path holds a NUL byte"));
    }
    if b.len() >= PATH_MAX {
        return Err(format!("{key}: path of {} bytes, more than PATH_MAX", b.len()));
    }
    Ok(())
}

/// Rewrite the regular-file image of `src` in memory. Returns the new bytes and the report.
fn rewrite_image(
    path: &Path,
    layout: Layout,
    buf: &[u8],
    map: &HashMap<String, PathBuf>,
) -> Result<(Vec<u8>, RewriteReport), ImageError> {
    let mut img = Image::parse(buf).map_err(|what| ImageError::Malformed { path: path.into(), what })?;
    check_kind(path, &img, layout)?;
    let mut report = RewriteReport::default();
    let mut used: BTreeMap<&str, bool> = map.keys().map(|k| (k.as_str(), false)).collect();
    for (i, e) in img.entries.iter_mut().enumerate() {
        let bad =
            |what: String| ImageError::Malformed { path: path.into(), what: format!("entry {i}: {what}") };
        let Some(reg) = reg_of(layout, e).map_err(bad)? else { continue };
        let rf = RegFile::decode(reg).map_err(bad)?;
        if !rf.ext {
            continue;
        }
        let key = rf.name.to_string_lossy().into_owned();
        let Some(target) = map.get(&key) else {
            report.untouched_externals.push((rf.id, key));
            continue;
        };
        if let Some(u) = used.get_mut(key.as_str()) {
            *u = true;
        }
        let new_reg = rewrite_reg_entry(reg, target.as_os_str().as_bytes()).map_err(bad)?;
        *e = match layout {
            Layout::RegFiles => new_reg,
            Layout::Files => replace_reg(e, &new_reg).map_err(bad)?,
        };
        report.rewritten.push((rf.id, key, target.clone()));
    }
    report.unused_keys = used.into_iter().filter(|(_, u)| !u).map(|(k, _)| k.to_string()).collect();
    Ok((img.to_bytes(), report))
}

/// Write `data` to `dir/name` through a temporary file, fsync'ed, then renamed into place.
fn write_atomic(dir: &Path, name: &str, data: &[u8], mode: u32) -> Result<(), ImageError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let dst = dir.join(name);
    let r = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp, "open"))?;
        f.write_all(data).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        fs::rename(&tmp, &dst).map_err(io_err(&dst, "rename"))
    })();
    if r.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    r
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir, "fsync"))
}

/// Fill `stage` from `src`: `*.img` files hard-linked (copied when a link is refused), other
/// files (logs, stats) copied unless they vanished meanwhile (a concurrent restart replaces
/// its log), symlinks (the `parent` link of incremental dumps) recreated
/// pointing to the same absolute target, pre-dump round directories (`pre-N`) as absolute
/// links to the originals; the regular-file image is left to the caller.
fn populate(src: &Path, stage: &Path, skip: &str) -> Result<(), ImageError> {
    let rd = fs::read_dir(src).map_err(io_err(src, "opendir"))?;
    for ent in rd {
        let ent = ent.map_err(io_err(src, "readdir"))?;
        let name = ent.file_name();
        if name.as_bytes() == skip.as_bytes() {
            continue;
        }
        let from = src.join(&name);
        let to = stage.join(&name);
        let ft = ent.file_type().map_err(io_err(&from, "stat"))?;
        if ft.is_symlink() {
            let t = fs::read_link(&from).map_err(io_err(&from, "readlink"))?;
            let t = if t.is_absolute() { t } else { src.join(t) };
            std::os::unix::fs::symlink(&t, &to).map_err(io_err(&to, "symlink"))?;
        } else if ft.is_file() {
            let img = name.as_bytes().ends_with(b".img");
            if img && fs::hard_link(&from, &to).is_ok() {
                continue;
            }
            match fs::copy(&from, &to) {
                // a log that a concurrent restart of the same image removed meanwhile
                Err(e) if !img && e.kind() == io::ErrorKind::NotFound => {}
                r => {
                    r.map_err(io_err(&from, "copy"))?;
                }
            }
        } else if ft.is_dir() && crate::record::names::is_pre_dump_dir(&name.to_string_lossy()) {
            // A pre-dump round (the parent chain of the dump): reached through an absolute
            // link to the original, whose own `parent` link (`../pre-(N-1)`) the kernel
            // resolves from there.
            let t = if src.is_absolute() {
                from.clone()
            } else {
                std::env::current_dir().map_err(io_err(src, "getcwd"))?.join(&from)
            };
            std::os::unix::fs::symlink(&t, &to).map_err(io_err(&to, "symlink"))?;
        } else {
            return Err(ImageError::Invalid {
                path: from,
                what: "neither a file, a symlink nor a pre-dump round (pre-N): not expected in a CRIU image directory".into(),
            });
        }
    }
    Ok(())
}

/// Write `dst` (which must not exist) as a restore copy of the CRIU image directory `src`:
/// every external regular-file entry whose key (`file[MNTID:INO]`) is in `map` becomes a plain
/// path entry naming `map[key]` (absolute, as seen from the restored tasks' mount namespace
/// root), its `ext` flag dropped; every other byte of the regular-file image is kept. Other
/// images are hard-linked (copied across filesystems), logs copied. The copy is built in a
/// sibling staging directory and renamed to `dst` when complete; `src` is not modified.
///
/// CRIU will open each named path with the dumped flags and check size, mode and build-id
/// against the entry: the caller links the preserved inode (or a directory of the same mode)
/// there before the restore and removes the names on `post-restore`.
///
/// Caveat: CRIU's `--auto-dedup` punches holes in the pages images it restores from, which
/// would reach `src` through the hard links; do not combine the two.
pub fn rewrite_externals(
    src: &Path,
    dst: &Path,
    map: &HashMap<String, PathBuf>,
) -> Result<RewriteReport, ImageError> {
    for (k, p) in map {
        check_target(k, p).map_err(|what| ImageError::Invalid { path: src.into(), what })?;
    }
    let (img_path, layout) = files_image(src)?;
    let buf = read_bounded(&img_path)?;
    let (bytes, report) = rewrite_image(&img_path, layout, &buf, map)?;
    let img_name = img_path.file_name().expect("joined").to_string_lossy().into_owned();
    let img_mode = fs::metadata(&img_path).map_err(io_err(&img_path, "stat"))?.permissions().mode() & 0o777;

    match dst.symlink_metadata() {
        Ok(_) => return Err(ImageError::Invalid { path: dst.into(), what: "already exists".into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::Io { path: dst.into(), op: "stat", source: e }),
    }
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = dst
        .file_name()
        .ok_or_else(|| ImageError::Invalid { path: dst.into(), what: "has no file name".into() })?;
    let mut stage_name = OsString::from(".");
    stage_name.push(base);
    stage_name.push(format!(".partial-{}", std::process::id()));
    let stage = parent.join(stage_name);
    fs::DirBuilder::new().mode(0o700).create(&stage).map_err(io_err(&stage, "mkdir"))?;
    let r = (|| {
        populate(src, &stage, &img_name)?;
        write_atomic(&stage, &img_name, &bytes, img_mode)?;
        sync_dir(&stage)?;
        let src_mode = fs::metadata(src).map_err(io_err(src, "stat"))?.permissions().mode() & 0o7777;
        fs::set_permissions(&stage, fs::Permissions::from_mode(src_mode)).map_err(io_err(&stage, "chmod"))?;
        fs::rename(&stage, dst).map_err(io_err(dst, "rename"))?;
        sync_dir(&parent)
    })();
    if r.is_err() {
        let _ = fs::remove_dir_all(&stage);
    }
    r.map(|()| report)
}

#[cfg(test)]
mod tests;
