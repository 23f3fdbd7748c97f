//! Reading a snapshot back: its header checked against this node, then its frames one after
//! the other, each checked before its payload is decoded (the format is in format.rs).

use std::io::Read;

use super::*;

/// Checks a header against this node: its cluster and its keys.
fn check_header<'k>(
    header: &Header,
    cluster: &str,
    keys: &'k Keys,
) -> Result<Option<&'k XChaCha20Poly1305>, FormatError> {
    if header.cluster != cluster {
        return Err(FormatError::ForeignCluster(header.cluster.clone()));
    }
    match (header.key_id, keys.is_sealed()) {
        (0, false) => Ok(None),
        (0, true) => Err(FormatError::Unsealed),
        (_, false) => Err(FormatError::Sealed),
        (id, true) => {
            keys.ring.iter().find(|(k, _)| *k == id).map(|(_, key)| Some(key)).ok_or(FormatError::UnknownKey(id))
        }
    }
}

/// An error reading the input: `Err(io)` for the reader's own failures, else the format's.
#[derive(Debug)]
pub enum DecodeError {
    Io(std::io::Error),
    Format(FormatError),
}

impl From<FormatError> for DecodeError {
    fn from(e: FormatError) -> Self {
        DecodeError::Format(e)
    }
}

/// Checks and opens the frames of one file (shared by the threads that load it).
pub struct Opener<'k>(Frames<'k>);

impl Opener<'_> {
    pub fn is_sealed(&self) -> bool {
        self.0.key.is_some()
    }

    /// Checks (and decrypts) the body of frame `index`; returns its payload.
    pub fn open<'b>(&self, index: u64, kind: u8, body: &'b mut [u8]) -> Result<&'b [u8], FormatError> {
        self.0.open(index, kind, body)
    }
}

/// The frames of a file, read one after the other (not checked: see `Opener`).
pub struct FrameStream<R> {
    input: R,
    /// Bytes of the file not read yet.
    left: u64,
    /// Bytes read with the header that belong to the first frame.
    carry: Vec<u8>,
    index: u64,
}

impl<R: Read> FrameStream<R> {
    /// Reads the next frame's body into `body`: returns its index and kind.
    pub fn next(&mut self, body: &mut Vec<u8>) -> Result<(u64, u8), DecodeError> {
        let mut head = [0u8; FRAME_HEAD];
        if self.left < FRAME_HEAD as u64 {
            return Err(FormatError::Truncated.into());
        }
        fill(&mut self.input, &mut self.carry, &mut head)?;
        self.left -= FRAME_HEAD as u64;
        let body_len = u32::from_be_bytes(head[..4].try_into().unwrap_or_default()) as u64;
        if body_len > self.left {
            return Err(FormatError::Truncated.into());
        }
        if body_len > MAX_FRAME as u64 {
            return Err(FormatError::Corrupted("frame length").into());
        }
        body.resize(body_len as usize, 0);
        fill(&mut self.input, &mut self.carry, body)?;
        self.left -= body_len;
        let index = self.index;
        self.index += 1;
        Ok((index, head[4]))
    }

    /// Opens the end frame (just read by `next`): the file must end with it.
    pub fn end(&self, opener: &Opener, index: u64, body: &mut [u8]) -> Result<End, FormatError> {
        let end = End::decode(opener.open(index, KIND_END, body)?)?;
        if self.left != 0 {
            return Err(FormatError::Corrupted("bytes after the end frame"));
        }
        Ok(end)
    }
}

/// Starts reading a snapshot of `len` bytes: reads and checks its header against this node's
/// `cluster` and `keys`.
pub fn open<'k, R: Read>(
    mut input: R,
    len: u64,
    cluster: &str,
    keys: &'k Keys,
) -> Result<(Header, Opener<'k>, FrameStream<R>), DecodeError> {
    let mut head = vec![0u8; (len.min(MAX_HEADER as u64)) as usize];
    read_exact(&mut input, &mut head)?;
    let (header, header_len) = Header::decode(&head)?;
    let key = check_header(&header, cluster, keys)?;
    let opener = Opener(Frames::new(&header, key));
    let carry = head.split_off(header_len);
    Ok((header, opener, FrameStream { input, left: len - header_len as u64, carry, index: 0 }))
}

/// Reads a whole snapshot of `len` bytes from `input`, checking every frame before it decodes
/// its entries, each handed to `visit` (so a caller that must not keep anything of a bad file
/// drops what it got when this fails). `cluster` and `keys` are this node's. (loader.rs does
/// the same on several threads.)
pub fn decode<R: Read>(
    input: R,
    len: u64,
    cluster: &str,
    keys: &Keys,
    mut visit: impl FnMut(&str, Entry),
) -> Result<(Header, End), DecodeError> {
    let (header, opener, mut frames) = open(input, len, cluster, keys)?;
    let mut body = Vec::new();
    let mut entries = 0u64;
    loop {
        match frames.next(&mut body)? {
            (index, KIND_ENTRIES) => {
                entries += decode_entries(opener.open(index, KIND_ENTRIES, &mut body)?, &mut visit)?
            }
            (index, KIND_END) => {
                let end = frames.end(&opener, index, &mut body)?;
                if end.entries != entries {
                    return Err(FormatError::Corrupted("entry count").into());
                }
                return Ok((header, end));
            }
            _ => return Err(FormatError::Corrupted("frame kind").into()),
        }
    }
}

fn read_exact<R: Read>(input: &mut R, buf: &mut [u8]) -> Result<(), DecodeError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => DecodeError::Format(FormatError::Truncated),
        _ => DecodeError::Io(e),
    })
}

/// Fills `buf` from `carry` first, then from `input`.
fn fill<R: Read>(input: &mut R, carry: &mut Vec<u8>, buf: &mut [u8]) -> Result<(), DecodeError> {
    let from_carry = carry.len().min(buf.len());
    buf[..from_carry].copy_from_slice(&carry[..from_carry]);
    carry.drain(..from_carry);
    read_exact(input, &mut buf[from_carry..])
}
