//! The export stream: one self-describing byte stream holding a checkpoint record, its CRIU
//! image files and the filesystems' own replication streams, written to a file or a pipe.
//!
//! ```text
//! stream  := "SNAPCKPT-EXPORT\n" u32 version  u32 n  header-json[n]
//!            member*  "ENDS" u32 n end-json[n]        sha256 of every byte before "ENDS"
//! member  := "MEMB" u32 n member-json[n]              kind, name, snapshot index, length
//!            (u32 k  zstd-bytes[k])*  u32 0           one zstd stream, in chunks of <= 1 MiB
//!            "MEND" u32 n trailer-json[n]             length, compressed length, sha256
//! ```
//!
//! Integers are little-endian. The record comes first. A member's checksum (SHA-256 of its
//! uncompressed bytes) and lengths are in a trailer after its data, so that a `btrfs send`
//! is streamed through without being spooled on the sending side; the reader spools every
//! member and checks the trailer before anything is acted on. The end mark holds a SHA-256 of
//! the whole stream before it, which also covers what no member checksum does (the stream
//! header, the member headers, the trailers). A stream without its `ENDS` mark is cut short;
//! every length is bounded before anything is allocated. Version 1 streams (end mark
//! `"ENDS" u32 0`, no stream checksum) are still read.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, Read, Write};

/// First bytes of every stream.
pub const MAGIC: &[u8; 16] = b"SNAPCKPT-EXPORT\n";
/// Stream format version this snapckpt writes (and the newest it reads).
pub const VERSION: u32 = 2;
/// The first version with the stream checksum in the end mark (version 1 had none).
const VERSION_STREAM_SHA: u32 = 2;
const MEMBER_TAG: &[u8; 4] = b"MEMB";
const TRAILER_TAG: &[u8; 4] = b"MEND";
const END_TAG: &[u8; 4] = b"ENDS";
/// Largest JSON header or trailer.
const MAX_JSON: u32 = 1 << 20;
/// Largest compressed chunk.
const MAX_CHUNK: u32 = 4 << 20;
/// Compressed bytes per chunk the writer emits.
const CHUNK: usize = 1 << 20;
/// zstd level: fast, and a btrfs send stream of file data compresses as that data does.
pub const ZSTD_LEVEL: i32 = 3;

/// What went wrong with a stream. `at` is the byte offset in the stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the stream is cut short: it ends at byte {at}, in {what}; nothing was imported")]
    Truncated { what: String, at: u64 },
    #[error("the stream is corrupt at byte {at}: {what}; nothing was imported")]
    Corrupt { what: String, at: u64 },
    #[error("member {member}: checksum mismatch (sha256 {found}, the stream says {expected}): the stream is corrupt; nothing was imported")]
    Checksum { member: String, expected: String, found: String },
    #[error("the stream's checksum does not match (sha256 {found}, its end mark says {expected}): a header or trailer in it is corrupt; nothing was imported")]
    StreamChecksum { expected: String, found: String },
    #[error("stream format version {0} is not supported (this snapckpt reads versions 1 to {VERSION})")]
    Version(u32),
}

/// The stream header: what the stream carries and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamHeader {
    pub checkpoint_id: String,
    pub from_host: String,
    /// `uname -r` of the exporting machine.
    pub from_kernel: String,
    pub created_unix: u64,
    pub snapckpt_version: String,
    /// Record and CRIU image only: the snapshots stay on shared storage.
    pub image_only: bool,
    /// An incremental stream: the earlier checkpoint the target must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentRef>,
}

/// The parent of an incremental stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub id: String,
    /// For each snapshot of the checkpoint (by index): the UUID, on the source, of the
    /// parent's snapshot the send stream is relative to.
    pub snapshot_uuids: Vec<String>,
}

/// The kinds of member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `checkpoint.json`.
    Record,
    /// A file of the CRIU image directory.
    CriuFile,
    /// `btrfs send` of a read-only snapshot (with `-p` for an incremental stream).
    BtrfsSend,
    /// The allocated blocks of an LVM thin snapshot, sparse (see [`super::lvm`]).
    LvmBlocks,
}

/// The header of one member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberHeader {
    pub kind: Kind,
    /// File name (record, CRIU file) or the snapshot's mount point on the source.
    pub name: String,
    /// btrfs-send, lvm-blocks: the index of the snapshot in the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<usize>,
    /// The uncompressed length when known before the data (files); the reader refuses more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

/// The end mark's JSON (version 2 on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamEnd {
    /// SHA-256 of every byte of the stream before the end mark's tag.
    sha256: String,
}

/// The trailer of one member: what the data must hash to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberTrailer {
    pub length: u64,
    pub compressed: u64,
    pub sha256: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn wio(what: &str) -> impl FnOnce(io::Error) -> StreamError + '_ {
    move |source| StreamError::Io { what: what.to_string(), source }
}

// ---------------------------------------------------------------------------------------------
// writing

/// Writes a stream to `W`; `progress` is told the stream's size after every write.
pub struct Writer<W: Write> {
    out: Counting<W>,
}

/// Counts and hashes the bytes written through it and reports them.
struct Counting<W: Write> {
    inner: W,
    n: u64,
    hash: Sha256,
    progress: Box<dyn FnMut(u64)>,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(b)?;
        self.hash.update(&b[..k]);
        self.n += k as u64;
        (self.progress)(self.n);
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Cuts what the zstd encoder writes into `u32 k, bytes` chunks.
struct Chunker<'a, W: Write> {
    out: &'a mut Counting<W>,
    buf: Vec<u8>,
    compressed: u64,
}

impl<W: Write> Chunker<'_, W> {
    fn emit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.out.write_all(&(self.buf.len() as u32).to_le_bytes())?;
        self.out.write_all(&self.buf)?;
        self.compressed += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for Chunker<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let k = b.len().min(room);
        self.buf.extend_from_slice(&b[..k]);
        if self.buf.len() >= CHUNK {
            self.emit()?;
        }
        Ok(k)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn json_block<T: Serialize>(tag: &[u8; 4], v: &T) -> Vec<u8> {
    let j = serde_json::to_vec(v).unwrap_or_default();
    let mut b = Vec::with_capacity(j.len() + 8);
    b.extend_from_slice(tag);
    b.extend_from_slice(&(j.len() as u32).to_le_bytes());
    b.extend_from_slice(&j);
    b
}

impl<W: Write> Writer<W> {
    /// Start a stream: magic, version, header.
    pub fn new(
        inner: W,
        header: &StreamHeader,
        progress: Box<dyn FnMut(u64)>,
    ) -> Result<Writer<W>, StreamError> {
        let mut out = Counting { inner, n: 0, hash: Sha256::new(), progress };
        let j = serde_json::to_vec(header).unwrap_or_default();
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(j.len() as u32).to_le_bytes());
        b.extend_from_slice(&j);
        out.write_all(&b).map_err(wio("write the stream header"))?;
        Ok(Writer { out })
    }

    /// Write one member: its header, `data` compressed until EOF, then — only if `done`
    /// agrees (e.g. the `btrfs send` that produced `data` exited 0) — its trailer.
    pub fn member<E: From<StreamError>>(
        &mut self,
        h: &MemberHeader,
        data: &mut dyn Read,
        done: &mut dyn FnMut() -> Result<(), E>,
    ) -> Result<MemberTrailer, E> {
        let what = format!("write member {}", h.name);
        self.out.write_all(&json_block(MEMBER_TAG, h)).map_err(wio(&what))?;
        let mut hash = Sha256::new();
        let mut length = 0u64;
        let mut chunker = Chunker { out: &mut self.out, buf: Vec::with_capacity(CHUNK), compressed: 0 };
        let mut enc = zstd::stream::write::Encoder::new(&mut chunker, ZSTD_LEVEL).map_err(wio(&what))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = match data.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Io { what: format!("read {}", h.name), source: e }.into()),
            };
            hash.update(&buf[..k]);
            length += k as u64;
            enc.write_all(&buf[..k]).map_err(wio(&what))?;
        }
        enc.finish().map_err(wio(&what))?;
        chunker.emit().map_err(wio(&what))?;
        let compressed = chunker.compressed;
        done()?;
        self.out.write_all(&0u32.to_le_bytes()).map_err(wio(&what))?;
        let t = MemberTrailer { length, compressed, sha256: hex(&hash.finalize()) };
        self.out.write_all(&json_block(TRAILER_TAG, &t)).map_err(wio(&what))?;
        Ok(t)
    }

    /// End the stream (with the checksum of all of it); the bytes written and the writer.
    pub fn finish(mut self) -> Result<(u64, W), StreamError> {
        let end = StreamEnd { sha256: hex(&self.out.hash.clone().finalize()) };
        self.out.write_all(&json_block(END_TAG, &end)).map_err(wio("write the end of the stream"))?;
        self.out.flush().map_err(wio("flush the stream"))?;
        Ok((self.out.n, self.out.inner))
    }
}

// ---------------------------------------------------------------------------------------------
// reading

/// Reads a stream from `R`.
pub struct Reader<R: Read> {
    inner: R,
    at: u64,
    version: u32,
    /// SHA-256 of every byte read so far.
    hash: Sha256,
    header: StreamHeader,
    progress: Box<dyn FnMut(u64)>,
}

/// Hashes and counts the uncompressed bytes, passes them on, refuses more than `limit`.
struct Hashing<'a> {
    sink: &'a mut dyn Write,
    hash: Sha256,
    n: u64,
    limit: Option<u64>,
}

impl Write for Hashing<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.n += b.len() as u64;
        if self.limit.is_some_and(|l| self.n > l) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "more data than the member's length"));
        }
        self.hash.update(b);
        self.sink.write_all(b)?;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

impl<R: Read> Reader<R> {
    /// Read and check the magic, the version and the header.
    pub fn new(inner: R, progress: Box<dyn FnMut(u64)>) -> Result<Reader<R>, StreamError> {
        let header = StreamHeader {
            checkpoint_id: String::new(),
            from_host: String::new(),
            from_kernel: String::new(),
            created_unix: 0,
            snapckpt_version: String::new(),
            image_only: false,
            parent: None,
        };
        let mut r = Reader { inner, at: 0, version: 0, hash: Sha256::new(), header, progress };
        let mut magic = [0u8; 16];
        r.exact(&mut magic, "the stream's magic")?;
        if &magic != MAGIC {
            return Err(StreamError::Corrupt {
                what: "not a snapckpt export stream (bad magic)".into(),
                at: 0,
            });
        }
        let v = r.u32("the stream's version")?;
        if !(1..=VERSION).contains(&v) {
            return Err(StreamError::Version(v));
        }
        r.version = v;
        let n = r.u32("the stream header")?;
        r.header = r.json(n, "the stream header")?;
        Ok(r)
    }

    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.at
    }

    fn exact(&mut self, b: &mut [u8], what: &str) -> Result<(), StreamError> {
        match self.inner.read_exact(b) {
            Ok(()) => {
                self.hash.update(&*b);
                self.at += b.len() as u64;
                (self.progress)(self.at);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(StreamError::Truncated { what: what.into(), at: self.at })
            }
            Err(e) => Err(StreamError::Io { what: format!("read {what}"), source: e }),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, StreamError> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn json<T: for<'de> Deserialize<'de>>(&mut self, n: u32, what: &str) -> Result<T, StreamError> {
        if n > MAX_JSON {
            return Err(StreamError::Corrupt { what: format!("{what} claims {n} bytes"), at: self.at });
        }
        let mut b = vec![0u8; n as usize];
        let at = self.at;
        self.exact(&mut b, what)?;
        serde_json::from_slice(&b).map_err(|e| StreamError::Corrupt { what: format!("{what}: {e}"), at })
    }

    fn tag(&mut self, what: &str) -> Result<[u8; 4], StreamError> {
        let mut t = [0u8; 4];
        self.exact(&mut t, what)?;
        Ok(t)
    }

    /// The next member's header, `None` at the end mark (whose stream checksum matched).
    pub fn next_member(&mut self) -> Result<Option<MemberHeader>, StreamError> {
        let at = self.at;
        let before = self.hash.clone();
        let t = self.tag("the next member")?;
        let n = self.u32("the next member")?;
        match &t {
            END_TAG if self.version < VERSION_STREAM_SHA && n == 0 => Ok(None),
            END_TAG if self.version >= VERSION_STREAM_SHA && n > 0 => {
                let end: StreamEnd = self.json(n, "the end mark")?;
                let found = hex(&before.finalize());
                if found != end.sha256 {
                    return Err(StreamError::StreamChecksum { expected: end.sha256, found });
                }
                Ok(None)
            }
            MEMBER_TAG => self.json(n, "a member header").map(Some),
            _ => Err(StreamError::Corrupt { what: "expected a member or the end mark".into(), at }),
        }
    }

    /// Read the data of the member `h`: its compressed bytes go to `compressed`, its
    /// uncompressed bytes to `raw`; checked against the trailer (length, compressed length,
    /// SHA-256). Nothing of a member may be used before this returns Ok.
    pub fn member_data(
        &mut self,
        h: &MemberHeader,
        compressed: &mut dyn Write,
        raw: &mut dyn Write,
    ) -> Result<MemberTrailer, StreamError> {
        let what = format!("member {}", h.name);
        let mut hashing = Hashing { sink: raw, hash: Sha256::new(), n: 0, limit: h.length };
        let mut dec = zstd::stream::write::Decoder::new(&mut hashing).map_err(wio(&what))?;
        let mut total = 0u64;
        let mut buf = Vec::new();
        loop {
            let k = self.u32(&what)?;
            if k == 0 {
                break;
            }
            if k > MAX_CHUNK {
                return Err(StreamError::Corrupt {
                    what: format!("{what}: a chunk claims {k} bytes"),
                    at: self.at,
                });
            }
            buf.resize(k as usize, 0);
            self.exact(&mut buf, &what)?;
            total += k as u64;
            compressed.write_all(&buf).map_err(wio(&what))?;
            let at = self.at;
            dec.write_all(&buf).map_err(|e| StreamError::Corrupt { what: format!("{what}: {e}"), at })?;
        }
        let at = self.at;
        dec.flush().map_err(|e| StreamError::Corrupt { what: format!("{what}: {e}"), at })?;
        drop(dec);
        let t = self.tag(&what)?;
        let n = self.u32(&what)?;
        if &t != TRAILER_TAG {
            return Err(StreamError::Corrupt { what: format!("{what}: no trailer after the data"), at });
        }
        let trailer: MemberTrailer = self.json(n, &format!("the trailer of {what}"))?;
        let found = hex(&hashing.hash.finalize());
        if found != trailer.sha256 || hashing.n != trailer.length || total != trailer.compressed {
            return Err(StreamError::Checksum { member: h.name.clone(), expected: trailer.sha256, found });
        }
        Ok(trailer)
    }
}

/// SHA-256 (hex) and length of everything `r` gives, passed on to `w`.
pub fn hash_copy(r: &mut dyn Read, w: &mut dyn Write) -> io::Result<(String, u64)> {
    let mut hash = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hash.update(&buf[..k]);
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok((hex(&hash.finalize()), n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            checkpoint_id: "20261201T000000Z-abcd".into(),
            from_host: "a".into(),
            from_kernel: "6.18".into(),
            created_unix: 1,
            snapckpt_version: "0.1.0".into(),
            image_only: false,
            parent: None,
        }
    }

    fn stream(data: &[u8]) -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &header(), Box::new(|_| {})).unwrap();
        let h = MemberHeader { kind: Kind::CriuFile, name: "x.img".into(), snapshot: None, length: None };
        w.member::<StreamError>(&h, &mut &data[..], &mut || Ok(())).unwrap();
        w.finish().unwrap().1
    }

    fn read_all(s: &[u8]) -> Result<Vec<u8>, StreamError> {
        let r = Reader::new(s, Box::new(|_| {}))?;
        assert_eq!(r.header(), &header());
        read_members(r)
    }

    fn read_members(mut r: Reader<&[u8]>) -> Result<Vec<u8>, StreamError> {
        let mut out = vec![];
        while let Some(h) = r.next_member()? {
            r.member_data(&h, &mut io::sink(), &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn roundtrip() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let s = stream(&data);
        assert!(s.len() < data.len() / 10, "compressed {}", s.len());
        assert_eq!(read_all(&s).unwrap(), data);
    }

    #[test]
    fn truncated_and_flipped_are_refused() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let s = stream(&data);
        for cut in [0, 10, 30, s.len() / 2, s.len() - 9, s.len() - 1] {
            let e = read_all(&s[..cut]).unwrap_err();
            assert!(matches!(e, StreamError::Truncated { .. } | StreamError::Corrupt { .. }), "{cut}: {e}");
        }
        // flip a byte in the compressed data and in the trailer's checksum
        let start = s.windows(4).position(|w| w == MEMBER_TAG).unwrap() + 100;
        let trailer = s.windows(4).position(|w| w == TRAILER_TAG).unwrap() + 60;
        for at in [start, trailer] {
            let mut bad = s.clone();
            bad[at] ^= 0x20;
            let e = read_all(&bad).unwrap_err();
            assert!(
                matches!(e, StreamError::Checksum { .. } | StreamError::Corrupt { .. }),
                "flip at {at}: {e}"
            );
        }
        let mut v2 = s.clone();
        v2[16] = 3;
        assert!(matches!(read_all(&v2).unwrap_err(), StreamError::Version(3)));
    }

    #[test]
    fn flipped_headers_are_refused() {
        let data = vec![7u8; 10_000];
        let s = stream(&data);
        // inside the stream header's host, the member header's name, the trailer's JSON key,
        // the end mark's checksum
        let pos = |w: &[u8]| s.windows(w.len()).position(|x| x == w).unwrap();
        for at in [pos(b"\"from_host\"") + 13, pos(b"x.img"), pos(b"\"compressed\"") + 3, s.len() - 5] {
            let mut bad = s.clone();
            bad[at] ^= 0x01;
            let e = Reader::new(&bad[..], Box::new(|_| {})).and_then(read_members).unwrap_err();
            assert!(
                matches!(e, StreamError::StreamChecksum { .. } | StreamError::Corrupt { .. }),
                "flip at {at}: {e}"
            );
        }
        assert_eq!(read_all(&s).unwrap(), data);
    }

    #[test]
    fn version_1_is_read() {
        let data = vec![9u8; 1000];
        let mut s = stream(&data);
        let end = s.windows(4).rposition(|w| w == END_TAG).unwrap();
        s.truncate(end + 4);
        s.extend_from_slice(&0u32.to_le_bytes());
        // a version 2 stream must have its checksum
        assert!(matches!(read_all(&s).unwrap_err(), StreamError::Corrupt { .. }));
        s[16] = 1;
        assert_eq!(read_all(&s).unwrap(), data);
    }

    #[test]
    fn length_limit() {
        let s = stream(&[1u8; 5000]);
        let mut r = Reader::new(&s[..], Box::new(|_| {})).unwrap();
        let mut h = r.next_member().unwrap().unwrap();
        h.length = Some(100);
        assert!(r.member_data(&h, &mut io::sink(), &mut io::sink()).is_err());
    }
}
