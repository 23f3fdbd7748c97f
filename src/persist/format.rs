//! The snapshot file format, version 1 (docs/persistence.md "File format"). Pure: encoding and
//! decoding of bytes only, no clock, file, socket or lock; writer.rs and loader.rs do the I/O.
//!
//! ```text
//! offset size
//!  0      8   magic "ESMSNAP\n"
//!  8      2   format version (1)
//! 10      2   flags: bit 0 set = sealed
//! 12      4   key id of the cluster key that sealed it (0: plaintext)
//! 16      8   node id of the writer
//! 24      8   incarnation of the writer (ms at its start)
//! 32      8   written at: epoch ms when the snapshot began
//! 40     16   nonce prefix, random per file
//! 56      1   n: length of the cluster name
//! 57      n   cluster name (UTF-8)
//! 57+n    8   XXH3-64 of the header bytes before it
//! then frames, each:
//!         4   L: length of the body
//!         1   kind: 1 = entries, 2 = end (the last frame; the file ends with it)
//!         L   body: sealed: the payload encrypted with XChaCha20-Poly1305, then its 16-byte tag
//!             (nonce: nonce prefix ‖ frame index; associated data: the header ‖ frame index ‖
//!             kind); plaintext: the payload, then an XXH3-64 of frame index ‖ kind ‖ payload,
//!             seeded with the header's
//! ```
//!
//! An entries payload is records back to back; every integer big-endian:
//!
//! ```text
//! u32 + bytes  sid
//! u8           data: 0 absent, 1 live (then u32 + bytes: the session JSON), 2 destroyed
//! 2 × u64      data version (hlc, node)
//! 2 × u64      cookie version (hlc, node)
//! u8           cookie: 0 none, 1 present (then u32 + bytes: the cookie JSON)
//! u64          expires at, epoch ms
//! u64          local expiry, epoch ms: a later one that `touchAfter` kept on this node (0: none)
//! ```
//!
//! The end payload: u64 entries (the records of the file), u64 sessions (live ones among them),
//! 2 × u64 clear mark (hlc, node), u64 clock high-water mark, u64 finished at (epoch ms).
//!
//! The version comes first, so a file of a later format is told apart from a damaged one
//! before anything else is read. Every frame is checked (XXH3-64 or AEAD tag) before its payload
//! is decoded, frame indices and kinds are bound into the check, the end frame is required and
//! must be the last bytes of the file: a truncated, cut, reordered or corrupted file is detected.

use sha2::{Digest, Sha256};
use std::hash::Hasher;
use twox_hash::XxHash3_64;

use crate::clock::Version;
use crate::crypto::{derive_key, key_id, XChaCha20Poly1305, XNonce, TAG_BYTES};
use crate::options::Secret;
use crate::table::{Data, Entry};
use crate::wire::Reader;

mod read;

pub use read::{decode, open, DecodeError, FrameStream, Opener};

pub const MAGIC: [u8; 8] = *b"ESMSNAP\n";
pub const FORMAT_VERSION: u16 = 1;
const FLAG_SEALED: u16 = 1;
const FIXED_HEADER: usize = 57;
/// The longest header: a cluster name has at most 64 bytes (options.rs).
pub const MAX_HEADER: usize = FIXED_HEADER + 255 + CHECK_BYTES;
/// A plaintext checksum: XXH3-64, which a core computes 3–4× faster than CRC-32 (a load checks
/// every byte of the file on the thread that decodes it).
const CHECK_BYTES: usize = 8;
pub const FRAME_HEAD: usize = 5;
pub const KIND_ENTRIES: u8 = 1;
pub const KIND_END: u8 = 2;
/// A frame is closed once its payload reaches this.
pub const FRAME_BYTES: usize = 1 << 20;
/// The largest frame body read: a frame of `FRAME_BYTES` plus one record of the largest session
/// and cookie `maxSessionBytes` allows (64 MiB each).
pub const MAX_FRAME: usize = FRAME_BYTES + (129 << 20);
const END_PAYLOAD: usize = 6 * 8 + 8;
/// Bytes of a record besides its sid, session and cookie.
pub const RECORD_OVERHEAD: usize = 4 + 1 + 4 + 32 + 1 + 4 + 8 + 8;

/// Why a file is not a snapshot this node can load. `reason()` is what the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// Not a snapshot file at all (another file at that path).
    NotASnapshot,
    /// Written by a later version of the store, in format `0`.
    FutureFormat(u16),
    /// The file ends before its end frame.
    Truncated,
    /// A checksum, a tag or the structure does not match.
    Corrupted(&'static str),
    /// A snapshot of another cluster (its name).
    ForeignCluster(String),
    /// Sealed with a key that is not in the key ring (its key id).
    UnknownKey(u32),
    /// Sealed, and this node has no `secret`.
    Sealed,
    /// Plaintext, and this node has a `secret`: only sealed snapshots are trusted then.
    Unsealed,
}

impl FormatError {
    /// A short name: the kind of bad file (logs, tests).
    pub fn kind(&self) -> &'static str {
        match self {
            FormatError::NotASnapshot => "notASnapshot",
            FormatError::FutureFormat(_) => "futureFormat",
            FormatError::Truncated => "truncated",
            FormatError::Corrupted(_) => "corrupted",
            FormatError::ForeignCluster(_) => "foreignCluster",
            FormatError::UnknownKey(_) => "unknownKey",
            FormatError::Sealed => "sealed",
            FormatError::Unsealed => "unsealed",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            FormatError::NotASnapshot => "not a snapshot file (no snapshot magic)".into(),
            FormatError::FutureFormat(v) => {
                format!("written in snapshot format {v}, which this version (format {FORMAT_VERSION}) cannot read")
            }
            FormatError::Truncated => "truncated: the file ends before its last frame".into(),
            FormatError::Corrupted(what) => format!("corrupted: {what}"),
            FormatError::ForeignCluster(name) => format!("a snapshot of another cluster (\"{name}\")"),
            FormatError::UnknownKey(id) => format!(
                "sealed with a key that is not in the key ring (key id {id:08x}): a wrong or rotated-out secret"
            ),
            FormatError::Sealed => "sealed with a cluster key, and this node has no secret".into(),
            FormatError::Unsealed => "plaintext, and this node has a secret: only sealed snapshots are loaded".into(),
        }
    }
}

/// The keys that seal and open snapshots: one per key of the ring, derived from the cluster key
/// (so a snapshot never shares a key with the wire). Empty: plaintext snapshots.
pub struct Keys {
    ring: Vec<(u32, XChaCha20Poly1305)>,
}

impl Keys {
    pub fn new(cluster: &str, secrets: &[Secret]) -> Keys {
        let ring = secrets
            .iter()
            .map(|secret| {
                let key = derive_key(secret, cluster);
                let file_key =
                    Sha256::new().chain_update(b"express-session-multicast snapshot\0").chain_update(key).finalize();
                (key_id(&key), XChaCha20Poly1305::new(&file_key.into()))
            })
            .collect();
        Keys { ring }
    }

    pub fn is_sealed(&self) -> bool {
        !self.ring.is_empty()
    }

    /// The key id a new snapshot is sealed with (0: plaintext).
    pub fn sealing_id(&self) -> u32 {
        self.ring.first().map_or(0, |(id, _)| *id)
    }
}

/// The header of a snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub cluster: String,
    pub node: u64,
    pub incarnation: u64,
    /// Epoch ms when the snapshot began.
    pub written_at: u64,
    /// 0: plaintext.
    pub key_id: u32,
    pub nonce: [u8; 16],
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let name = &self.cluster.as_bytes()[..self.cluster.len().min(255)];
        let mut out = Vec::with_capacity(FIXED_HEADER + name.len() + CHECK_BYTES);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        let flags = if self.key_id != 0 { FLAG_SEALED } else { 0 };
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.node.to_be_bytes());
        out.extend_from_slice(&self.incarnation.to_be_bytes());
        out.extend_from_slice(&self.written_at.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        let check = XxHash3_64::oneshot(&out);
        out.extend_from_slice(&check.to_be_bytes());
        out
    }

    /// Reads a header from the start of `bytes` (at least `MAX_HEADER` bytes, or the whole
    /// file); returns it with its encoded length.
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize), FormatError> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(if MAGIC.starts_with(bytes) && !bytes.is_empty() {
                FormatError::Truncated
            } else {
                FormatError::NotASnapshot
            });
        }
        let mut r = Reader(&bytes[MAGIC.len()..]);
        let version = r.u16().map_err(|_| FormatError::Truncated)?;
        if version != FORMAT_VERSION {
            return Err(FormatError::FutureFormat(version));
        }
        let truncated = |_| FormatError::Truncated;
        let flags = r.u16().map_err(truncated)?;
        let key_id = r.u32().map_err(truncated)?;
        let node = r.u64().map_err(truncated)?;
        let incarnation = r.u64().map_err(truncated)?;
        let written_at = r.u64().map_err(truncated)?;
        let nonce: [u8; 16] = r.take(16).map_err(truncated)?.try_into().unwrap_or_default();
        let n = r.u8().map_err(truncated)? as usize;
        let name = r.take(n).map_err(truncated)?;
        let end = FIXED_HEADER + n;
        let check = r.u64().map_err(truncated)?;
        if XxHash3_64::oneshot(&bytes[..end]) != check {
            return Err(FormatError::Corrupted("header checksum"));
        }
        if flags & !FLAG_SEALED != 0 || (flags & FLAG_SEALED != 0) != (key_id != 0) {
            return Err(FormatError::Corrupted("header flags"));
        }
        let cluster = std::str::from_utf8(name).map_err(|_| FormatError::Corrupted("cluster name"))?.to_owned();
        Ok((Header { cluster, node, incarnation, written_at, key_id, nonce }, end + CHECK_BYTES))
    }
}

/// What the end frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    /// Records in the file.
    pub entries: u64,
    /// Of them, live sessions (when written).
    pub sessions: u64,
    pub clear_mark: Version,
    /// The writer's clock high-water mark, read after the last entry.
    pub clock: u64,
    /// Epoch ms when the last entry was written.
    pub finished_at: u64,
}

impl End {
    fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.entries, self.sessions, self.clear_mark.hlc, self.clear_mark.node, self.clock, self.finished_at]
        {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&[0; 8]); // reserved
    }

    fn decode(payload: &[u8]) -> Result<End, FormatError> {
        if payload.len() != END_PAYLOAD {
            return Err(FormatError::Corrupted("end frame"));
        }
        let mut r = Reader(payload);
        let malformed = |_| FormatError::Corrupted("end frame");
        Ok(End {
            entries: r.u64().map_err(malformed)?,
            sessions: r.u64().map_err(malformed)?,
            clear_mark: r.version().map_err(malformed)?,
            clock: r.u64().map_err(malformed)?,
            finished_at: r.u64().map_err(malformed)?,
        })
    }
}

/// Seals and opens the frames of one file.
struct Frames<'a> {
    header: Vec<u8>,
    header_check: u64,
    nonce: [u8; 16],
    key: Option<&'a XChaCha20Poly1305>,
}

impl<'a> Frames<'a> {
    fn new(header: &Header, key: Option<&'a XChaCha20Poly1305>) -> Frames<'a> {
        let encoded = header.encode();
        let header_check = u64::from_be_bytes(encoded[encoded.len() - CHECK_BYTES..].try_into().unwrap_or_default());
        Frames { header: encoded, header_check, nonce: header.nonce, key }
    }

    fn nonce(&self, index: u64) -> XNonce {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(&self.nonce);
        nonce[16..].copy_from_slice(&index.to_be_bytes());
        nonce
    }

    fn aad(&self, index: u64, kind: u8) -> Vec<u8> {
        let mut aad = Vec::with_capacity(self.header.len() + 9);
        aad.extend_from_slice(&self.header);
        aad.extend_from_slice(&index.to_be_bytes());
        aad.push(kind);
        aad
    }

    fn check(&self, index: u64, kind: u8, payload: &[u8]) -> u64 {
        let mut hasher = XxHash3_64::with_seed(self.header_check);
        hasher.write(&index.to_be_bytes());
        hasher.write(&[kind]);
        hasher.write(payload);
        hasher.finish()
    }

    /// Closes frame `index` of `kind` in place: `out[at..at + FRAME_HEAD]` is room for its head
    /// and its payload follows up to the end of `out`, which is encrypted in place when sealed.
    fn seal(&self, index: u64, kind: u8, out: &mut Vec<u8>, at: usize) {
        let payload = &mut out[at + FRAME_HEAD..];
        let trailer = match self.key {
            Some(key) => key.seal(&self.nonce(index), &self.aad(index, kind), payload).to_vec(),
            None => self.check(index, kind, payload).to_be_bytes().to_vec(),
        };
        let body_len = (out.len() - at - FRAME_HEAD + trailer.len()) as u32;
        out[at..at + 4].copy_from_slice(&body_len.to_be_bytes());
        out[at + 4] = kind;
        out.extend_from_slice(&trailer);
    }

    /// Checks (and decrypts) the body of frame `index`; returns its payload.
    fn open<'b>(&self, index: u64, kind: u8, body: &'b mut [u8]) -> Result<&'b [u8], FormatError> {
        match self.key {
            Some(key) => {
                if body.len() < TAG_BYTES {
                    return Err(FormatError::Corrupted("frame shorter than its tag"));
                }
                let (payload, tag) = body.split_at_mut(body.len() - TAG_BYTES);
                key.open(&self.nonce(index), &self.aad(index, kind), payload, tag)
                    .map_err(|_| FormatError::Corrupted("authentication tag (damaged or altered)"))?;
                Ok(payload)
            }
            None => {
                if body.len() < CHECK_BYTES {
                    return Err(FormatError::Corrupted("frame shorter than its checksum"));
                }
                let (payload, check) = body.split_at(body.len() - CHECK_BYTES);
                if self.check(index, kind, payload).to_be_bytes() != check {
                    return Err(FormatError::Corrupted("frame checksum"));
                }
                Ok(payload)
            }
        }
    }
}

/// Appends one record to an entries payload.
pub fn encode_entry(out: &mut Vec<u8>, sid: &str, e: &Entry) {
    let bytes = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    };
    let version = |out: &mut Vec<u8>, v: Version| {
        out.extend_from_slice(&v.hlc.to_be_bytes());
        out.extend_from_slice(&v.node.to_be_bytes());
    };
    bytes(out, sid.as_bytes());
    match &e.data {
        Data::Absent => out.push(0),
        Data::Live(doc) => {
            out.push(1);
            bytes(out, doc.as_bytes());
        }
        Data::Deleted => out.push(2),
    }
    version(out, e.data_version);
    version(out, e.cookie_version);
    match &e.cookie {
        None => out.push(0),
        Some(cookie) => {
            out.push(1);
            bytes(out, cookie.as_bytes());
        }
    }
    out.extend_from_slice(&e.expires_at.to_be_bytes());
    out.extend_from_slice(&e.local_expires_at.to_be_bytes());
}

/// Decodes the records of an entries payload, handing each to `visit`.
pub fn decode_entries(payload: &[u8], mut visit: impl FnMut(&str, Entry)) -> Result<u64, FormatError> {
    let mut r = Reader(payload);
    let mut count = 0;
    let malformed = |_| FormatError::Corrupted("malformed entry");
    while !r.0.is_empty() {
        let sid = simdutf8::basic::from_utf8(r.bytes32().map_err(malformed)?)
            .map_err(|_| FormatError::Corrupted("malformed entry"))?;
        let data = match r.u8().map_err(malformed)? {
            0 => Data::Absent,
            1 => Data::Live(r.str32().map_err(malformed)?),
            2 => Data::Deleted,
            _ => return Err(FormatError::Corrupted("malformed entry")),
        };
        let data_version = r.version().map_err(malformed)?;
        let cookie_version = r.version().map_err(malformed)?;
        let cookie = r.optional().map_err(malformed)?;
        let expires_at = r.u64().map_err(malformed)?;
        let local_expires_at = r.u64().map_err(malformed)?;
        visit(sid, Entry { data, data_version, cookie_version, cookie, expires_at, local_expires_at });
        count += 1;
    }
    Ok(count)
}

/// Builds a snapshot's bytes: the header, then frames as entries are pushed, then the end frame.
/// Entries are encoded straight into the output buffer, and a frame is sealed there in place.
pub struct Encoder<'a> {
    frames: Frames<'a>,
    index: u64,
    /// Bytes not taken yet: the header at first, then the frame being filled (from `open`).
    out: Vec<u8>,
    /// Where the frame being filled starts in `out` (its head, then its payload).
    open: Option<usize>,
    entries: u64,
    sessions: u64,
}

impl<'a> Encoder<'a> {
    /// An encoder sealing with the first key of `keys` (plaintext when there is none); its output
    /// starts with the header. `header.key_id` is set from `keys`.
    pub fn new(mut header: Header, keys: &'a Keys) -> Encoder<'a> {
        header.key_id = keys.sealing_id();
        let frames = Frames::new(&header, keys.ring.first().map(|(_, key)| key));
        let mut out = Vec::with_capacity(FRAME_BYTES + (256 << 10));
        out.extend_from_slice(&frames.header);
        Encoder { frames, index: 0, out, open: None, entries: 0, sessions: 0 }
    }

    pub fn push(&mut self, sid: &str, entry: &Entry) {
        if self.open.is_none() {
            self.open = Some(self.out.len());
            self.out.extend_from_slice(&[0; FRAME_HEAD]);
        }
        encode_entry(&mut self.out, sid, entry);
        self.entries += 1;
        if matches!(entry.data, Data::Live(_)) {
            self.sessions += 1;
        }
    }

    fn close_frame(&mut self, kind: u8) {
        if let Some(at) = self.open.take() {
            self.frames.seal(self.index, kind, &mut self.out, at);
            self.index += 1;
        }
    }

    /// Bytes ready to be written, if any: call after a batch of `push`es. A frame is closed once
    /// its payload reached `FRAME_BYTES`.
    pub fn take(&mut self) -> Option<&[u8]> {
        let full = self.open.is_some_and(|at| self.out.len() - at - FRAME_HEAD >= FRAME_BYTES);
        if full {
            self.close_frame(KIND_ENTRIES);
        }
        (self.open.is_none() && !self.out.is_empty()).then_some(&self.out[..])
    }

    /// Marks the first `n` bytes of what `take` returned as written.
    pub fn taken(&mut self, n: usize) {
        if self.open.is_none() {
            self.out.drain(..n);
        }
    }

    pub fn entries(&self) -> u64 {
        self.entries
    }

    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// Closes the last entries frame and adds the end frame; `take` then returns the rest.
    pub fn finish(&mut self, clear_mark: Version, clock: u64, finished_at: u64) -> End {
        self.close_frame(KIND_ENTRIES);
        let end = End { entries: self.entries, sessions: self.sessions, clear_mark, clock, finished_at };
        self.open = Some(self.out.len());
        self.out.extend_from_slice(&[0; FRAME_HEAD]);
        end.encode(&mut self.out);
        self.close_frame(KIND_END);
        end
    }
}

#[cfg(test)]
mod tests;
