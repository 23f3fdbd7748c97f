//! Binary wire format, version 2 (docs/design.md §3.1; every kind in docs/how-it-works.md
//! "Wire format").
//!
//! Every datagram and every TCP frame is one packet:
//!
//! ```text
//! offset size
//!  0     2    magic "SM"
//!  2     1    wire version (2)
//!  3     1    kind (see `Kind`)
//!  4     4    cluster id: FNV-1a of the cluster name (fast drop of foreign clusters)
//!  8     8    sender node id
//! 16     8    sender incarnation (ms at start)
//! 24     8    packet number: strictly increasing per sender incarnation (nonce, replay window)
//! 32     4    key id (0 = unsealed cluster)
//! 36     …    body (per kind: big-endian integers, strings and bytes behind a u32 length)
//! end    …    unsealed: CRC-32 (4 bytes); sealed: the body is encrypted, Poly1305 tag (16 bytes)
//! ```
//!
//! Version 2 added the sender's wall-clock time to `Greeting` and `Heartbeat` (clock offsets,
//! `skew`); version 1 nodes and version 2 nodes drop each other's packets (`badVersion`).
//!
//! This module encodes and decodes header and body; `crypto` adds and checks the trailer.
//! Decoding never panics: every length is checked against what is left, and every error is a
//! `DecodeError` the caller counts and drops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::clock::Version;
use crate::table::{Data, Entry, Op};

pub const MAGIC: [u8; 2] = *b"SM";
pub const WIRE_VERSION: u8 = 2;
pub const HEADER_BYTES: usize = 36;
/// Where the message kind sits in the header.
pub const KIND_AT: usize = 3;
pub const PACKET_NUMBER_AT: usize = 24;
pub const KEY_ID_AT: usize = 32;
/// Room kept for the trailer in every datagram budget: the larger of the CRC and the AEAD tag,
/// so datagram sizes do not depend on whether the cluster is sealed.
pub const TRAILER_BUDGET: usize = 16;
/// Top bit of a `Data` payload tag: the sender asks for an ack at once.
const ASK_ACK: u8 = 0x80;
/// Budget of one UDP datagram (docs/design.md §3.2): never rely on IP fragmentation.
pub const MAX_DATAGRAM: usize = 1400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Join = 1,
    Greeting = 2,
    Heartbeat = 3,
    Leave = 4,
    Data = 5,
    Nak = 6,
    Gone = 7,
    SyncRequest = 8,
    SyncChunk = 9,
    SyncEnd = 10,
    Ping = 11,
    Pong = 12,
    AckRequest = 13,
    Ack = 14,
    Query = 15,
    Answer = 16,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        use Kind::*;
        const ALL: [Kind; 16] = [
            Join,
            Greeting,
            Heartbeat,
            Leave,
            Data,
            Nak,
            Gone,
            SyncRequest,
            SyncChunk,
            SyncEnd,
            Ping,
            Pong,
            AckRequest,
            Ack,
            Query,
            Answer,
        ];
        ALL.into_iter().find(|k| *k as u8 == b)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub cluster: u32,
    pub node: u64,
    pub incarnation: u64,
}

/// How to reach a node: its unicast UDP address, its TCP port, and the cluster port it listens
/// on for peers (`multicastPort`; 0 when it does not), all on the same IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub addr: SocketAddr,
    pub tcp_port: u16,
    pub listen_port: u16,
}

/// Reliable payload carried in a sequenced `Data` datagram.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// Whole ops, as many as fit in one datagram.
    Ops(Vec<Op>),
    /// One piece of an op too large for a datagram; pieces use consecutive sequence numbers
    /// starting at `first_seq`.
    Fragment { first_seq: u64, index: u16, count: u16, bytes: Vec<u8> },
}

/// What a member holds for a sid it was asked about (`Message::Answer`).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Neither a session nor a tombstone.
    Nothing,
    /// Its entry (a session, a tombstone, or a touched cookie alone).
    Entry { sid: Arc<str>, entry: Entry },
    /// An entry of this newest version, too large for a datagram: fetch it over TCP.
    TooLarge { version: Version },
}

/// What a sync request asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncMode {
    /// State transfer: every entry.
    Full,
    /// Anti-entropy: entries of the buckets whose digest differs from these.
    Digest(Vec<u64>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Join(NodeInfo),
    /// `sent_ms`: the sender's wall clock (epoch ms) when it built the message, for receivers
    /// to estimate its clock offset.
    Greeting {
        info: NodeInfo,
        high_seq: u64,
        sent_ms: u64,
    },
    Heartbeat {
        info: NodeInfo,
        high_seq: u64,
        sent_ms: u64,
    },
    /// The final goodbye: the sender is gone, its stream can be dropped.
    Leave,
    /// "Acknowledge my stream up to `last_seq`, now": sent by a leaving node (its stream ends
    /// there) and by a node whose acknowledged writes wait for a lost datagram or `Ack`.
    AckRequest {
        last_seq: u64,
    },
    /// "I have every `Data` datagram of yours up to and including `high_seq`" (cumulative),
    /// unicast to that sender.
    Ack {
        high_seq: u64,
    },
    /// `ask_ack`: acknowledge at once (the sender has writes waiting for it, `waitForAck`);
    /// otherwise acks are coalesced per tick. Carried in the top bit of the payload tag.
    Data {
        seq: u64,
        ask_ack: bool,
        payload: Payload,
    },
    /// "Resend these sequence numbers of yours" (inclusive ranges), unicast to the sender.
    Nak {
        ranges: Vec<(u64, u64)>,
    },
    /// "Sequence numbers below `oldest` are no longer buffered": the receiver must sync.
    Gone {
        oldest: u64,
    },
    /// Sent to node `target` only: another node refuses it (a request replayed elsewhere).
    SyncRequest {
        target: u64,
        mode: SyncMode,
    },
    SyncChunk {
        clear_mark: Version,
        entries: Vec<(Arc<str>, Entry)>,
    },
    /// End of a sync; `high_seq` is the sender's sequence number when its snapshot began.
    /// `departed`: (node, incarnation, highest packet number) of senders it remembers that are not
    /// live members, so the receiver rejects replays of them too.
    SyncEnd {
        high_seq: u64,
        departed: Vec<(u64, u64, u64)>,
    },
    /// A connectivity probe (the doctor); `padding` makes the datagram the size under test.
    Ping {
        token: u64,
        padding: Vec<u8>,
    },
    /// The answer to a `Ping`: its token and the size of the datagram that arrived.
    Pong {
        token: u64,
        size: u32,
    },
    /// "What do you hold for this sid?", from a node whose `get` found nothing, unicast to each
    /// alive member (over TCP: to fetch an entry too large for a datagram).
    Query {
        token: u64,
        sid: Arc<str>,
    },
    /// The answer to a `Query`, with its token.
    Answer {
        token: u64,
        reply: Reply,
    },
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Join(_) => Kind::Join,
            Message::Greeting { .. } => Kind::Greeting,
            Message::Heartbeat { .. } => Kind::Heartbeat,
            Message::Leave => Kind::Leave,
            Message::AckRequest { .. } => Kind::AckRequest,
            Message::Ack { .. } => Kind::Ack,
            Message::Data { .. } => Kind::Data,
            Message::Nak { .. } => Kind::Nak,
            Message::Gone { .. } => Kind::Gone,
            Message::SyncRequest { .. } => Kind::SyncRequest,
            Message::SyncChunk { .. } => Kind::SyncChunk,
            Message::SyncEnd { .. } => Kind::SyncEnd,
            Message::Ping { .. } => Kind::Ping,
            Message::Pong { .. } => Kind::Pong,
            Message::Query { .. } => Kind::Query,
            Message::Answer { .. } => Kind::Answer,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    BadMagic,
    BadVersion,
    BadKind,
    BadChecksum,
    ForeignCluster,
    Malformed,
    /// Sealed with a key this node does not have.
    UnknownKey,
    /// The AEAD tag does not verify: tampered, or forged.
    AuthFailed,
    /// Unsealed packet in a sealed cluster.
    Unsealed,
    /// Sealed packet in an unsealed cluster.
    UnexpectedSeal,
    /// A packet number already seen (or too old) from that sender.
    Replay,
}

impl DecodeError {
    /// The `stats()` drop reason.
    pub fn reason(self) -> &'static str {
        match self {
            DecodeError::Truncated => "truncated",
            DecodeError::BadMagic => "badMagic",
            DecodeError::BadVersion => "badVersion",
            DecodeError::BadKind => "badKind",
            DecodeError::BadChecksum => "badChecksum",
            DecodeError::ForeignCluster => "foreignCluster",
            DecodeError::Malformed => "malformed",
            DecodeError::UnknownKey => "unknownKey",
            DecodeError::AuthFailed => "authFailed",
            DecodeError::Unsealed => "unsealed",
            DecodeError::UnexpectedSeal => "unexpectedSeal",
            DecodeError::Replay => "replay",
        }
    }
}

/// FNV-1a of the cluster name: a cheap, stable cluster id for the header.
pub fn cluster_id(name: &str) -> u32 {
    name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ b as u32).wrapping_mul(0x0100_0193))
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes32(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn version(&mut self, v: Version) {
        self.u64(v.hlc);
        self.u64(v.node);
    }
    fn node_info(&mut self, info: &NodeInfo) {
        match info.addr.ip() {
            IpAddr::V4(ip) => {
                self.u8(4);
                self.0.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(6);
                self.0.extend_from_slice(&ip.octets());
            }
        }
        self.u16(info.addr.port());
        self.u16(info.tcp_port);
        self.u16(info.listen_port);
    }
    fn op(&mut self, op: &Op) {
        match op {
            Op::Set { sid, doc, expires_at, version } => {
                self.u8(1);
                self.version(*version);
                self.bytes32(sid.as_bytes());
                self.u64(*expires_at);
                self.bytes32(doc.as_bytes());
            }
            Op::Touch { sid, cookie, expires_at, version } => {
                self.u8(2);
                self.version(*version);
                self.bytes32(sid.as_bytes());
                self.u64(*expires_at);
                self.optional(cookie.as_deref());
            }
            Op::Destroy { sid, version } => {
                self.u8(3);
                self.version(*version);
                self.bytes32(sid.as_bytes());
            }
            Op::Clear { version } => {
                self.u8(4);
                self.version(*version);
            }
        }
    }
    fn optional(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.bytes32(s.as_bytes());
            }
            None => self.u8(0),
        }
    }
    fn entry(&mut self, sid: &str, e: &Entry) {
        self.bytes32(sid.as_bytes());
        match &e.data {
            Data::Absent => self.u8(0),
            Data::Live(doc) => {
                self.u8(1);
                self.bytes32(doc.as_bytes());
            }
            Data::Deleted => self.u8(2),
        }
        self.version(e.data_version);
        self.version(e.cookie_version);
        self.optional(e.cookie.as_deref());
        self.u64(e.expires_at);
    }
}

/// Encoded size of one op (to pack datagrams without encoding twice).
pub fn op_len(op: &Op) -> usize {
    let version = 1 + 16;
    match op {
        Op::Set { sid, doc, .. } => version + 4 + sid.len() + 8 + 4 + doc.len(),
        Op::Touch { sid, cookie, .. } => version + 4 + sid.len() + 8 + 1 + cookie.as_ref().map_or(0, |c| 4 + c.len()),
        Op::Destroy { sid, .. } => version + 4 + sid.len(),
        Op::Clear { .. } => version,
    }
}

/// Bytes a `Data` datagram spends besides its ops: header, seq, payload tag, count, trailer.
pub const DATA_OVERHEAD: usize = HEADER_BYTES + 8 + 1 + 2 + TRAILER_BUDGET;
/// Bytes a `Data` fragment datagram spends besides its piece.
pub const FRAGMENT_OVERHEAD: usize = HEADER_BYTES + 8 + 1 + 8 + 2 + 2 + 4 + TRAILER_BUDGET;

/// Bytes a `Query` spends besides its sid: header, token, sid length, trailer.
pub const QUERY_OVERHEAD: usize = HEADER_BYTES + 8 + 4 + TRAILER_BUDGET;

/// Encodes one op alone (the bytes that fragments carry).
pub fn encode_op(op: &Op) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(op_len(op)));
    w.op(op);
    w.0
}

pub fn encode(header: &Header, msg: &Message) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.0.extend_from_slice(&MAGIC);
    w.u8(WIRE_VERSION);
    w.u8(msg.kind() as u8);
    w.u32(header.cluster);
    w.u64(header.node);
    w.u64(header.incarnation);
    w.u64(0); // packet number and key id: set when sealed
    w.u32(0);
    match msg {
        Message::Join(info) => w.node_info(info),
        Message::Greeting { info, high_seq, sent_ms } | Message::Heartbeat { info, high_seq, sent_ms } => {
            w.node_info(info);
            w.u64(*high_seq);
            w.u64(*sent_ms);
        }
        Message::Leave => {}
        Message::AckRequest { last_seq } => w.u64(*last_seq),
        Message::Ack { high_seq } => w.u64(*high_seq),
        Message::Data { seq, ask_ack, payload } => {
            w.u64(*seq);
            let ask = if *ask_ack { ASK_ACK } else { 0 };
            match payload {
                Payload::Ops(ops) => {
                    w.u8(ask);
                    w.u16(ops.len() as u16);
                    ops.iter().for_each(|op| w.op(op));
                }
                Payload::Fragment { first_seq, index, count, bytes } => {
                    w.u8(ask | 1);
                    w.u64(*first_seq);
                    w.u16(*index);
                    w.u16(*count);
                    w.bytes32(bytes);
                }
            }
        }
        Message::Nak { ranges } => {
            w.u16(ranges.len() as u16);
            for (from, to) in ranges {
                w.u64(*from);
                w.u64(*to);
            }
        }
        Message::Gone { oldest } => w.u64(*oldest),
        Message::SyncRequest { target, mode: SyncMode::Full } => {
            w.u64(*target);
            w.u8(0);
        }
        Message::SyncRequest { target, mode: SyncMode::Digest(buckets) } => {
            w.u64(*target);
            w.u8(1);
            w.u32(buckets.len() as u32);
            buckets.iter().for_each(|b| w.u64(*b));
        }
        Message::SyncChunk { clear_mark, entries } => {
            w.version(*clear_mark);
            w.u32(entries.len() as u32);
            entries.iter().for_each(|(sid, e)| w.entry(sid, e));
        }
        Message::Ping { token, padding } => {
            w.u64(*token);
            w.bytes32(padding);
        }
        Message::Pong { token, size } => {
            w.u64(*token);
            w.u32(*size);
        }
        Message::Query { token, sid } => {
            w.u64(*token);
            w.bytes32(sid.as_bytes());
        }
        Message::Answer { token, reply } => {
            w.u64(*token);
            match reply {
                Reply::Nothing => w.u8(0),
                Reply::Entry { sid, entry } => {
                    w.u8(1);
                    w.entry(sid, entry);
                }
                Reply::TooLarge { version } => {
                    w.u8(2);
                    w.version(*version);
                }
            }
        }
        Message::SyncEnd { high_seq, departed } => {
            w.u64(*high_seq);
            w.u32(departed.len() as u32);
            for (node, incarnation, pn) in departed {
                w.u64(*node);
                w.u64(*incarnation);
                w.u64(*pn);
            }
        }
    }
    w.0
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// Reads big-endian fields off the front of a byte slice (also the snapshot format's, src/persist/format.rs).
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().unwrap_or_default()))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().unwrap_or_default()))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().unwrap_or_default()))
    }
    pub(crate) fn bytes32(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub(crate) fn str32(&mut self) -> Result<Arc<str>, DecodeError> {
        std::str::from_utf8(self.bytes32()?).map(Arc::from).map_err(|_| DecodeError::Malformed)
    }
    pub(crate) fn version(&mut self) -> Result<Version, DecodeError> {
        Ok(Version { hlc: self.u64()?, node: self.u64()? })
    }
    pub(crate) fn optional(&mut self) -> Result<Option<Arc<str>>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str32()?)),
            _ => Err(DecodeError::Malformed),
        }
    }
    fn node_info(&mut self) -> Result<NodeInfo, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(self.take(4)?).unwrap_or_default())),
            6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(self.take(16)?).unwrap_or_default())),
            _ => return Err(DecodeError::Malformed),
        };
        let port = self.u16()?;
        Ok(NodeInfo { addr: SocketAddr::new(ip, port), tcp_port: self.u16()?, listen_port: self.u16()? })
    }
    fn op(&mut self) -> Result<Op, DecodeError> {
        let tag = self.u8()?;
        let version = self.version()?;
        Ok(match tag {
            1 => Op::Set { sid: self.str32()?, expires_at: self.u64()?, doc: self.str32()?, version },
            2 => Op::Touch { sid: self.str32()?, expires_at: self.u64()?, cookie: self.optional()?, version },
            3 => Op::Destroy { sid: self.str32()?, version },
            4 => Op::Clear { version },
            _ => return Err(DecodeError::Malformed),
        })
    }
    fn entry(&mut self) -> Result<(Arc<str>, Entry), DecodeError> {
        let sid = self.str32()?;
        let data = match self.u8()? {
            0 => Data::Absent,
            1 => Data::Live(self.str32()?),
            2 => Data::Deleted,
            _ => return Err(DecodeError::Malformed),
        };
        let entry = Entry {
            data,
            data_version: self.version()?,
            cookie_version: self.version()?,
            cookie: self.optional()?,
            expires_at: self.u64()?,
            local_expires_at: 0,
        };
        Ok((sid, entry))
    }
    /// A count of items, each at least `min_bytes` long: rejects counts the input cannot hold,
    /// so a forged count never makes us reserve memory.
    fn count(&self, n: usize, min_bytes: usize) -> Result<usize, DecodeError> {
        if n.saturating_mul(min_bytes) > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
}

/// Reads and checks the header (to drop foreign or garbage packets before any crypto).
pub fn peek_header(packet: &[u8], cluster: u32) -> Result<(Kind, Header), DecodeError> {
    if packet.len() < HEADER_BYTES {
        return Err(DecodeError::Truncated);
    }
    if packet[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if packet[2] != WIRE_VERSION {
        return Err(DecodeError::BadVersion);
    }
    let kind = Kind::from_u8(packet[KIND_AT]).ok_or(DecodeError::BadKind)?;
    let mut r = Reader(&packet[4..HEADER_BYTES]);
    let header = Header { cluster: r.u32()?, node: r.u64()?, incarnation: r.u64()? };
    if header.cluster != cluster {
        return Err(DecodeError::ForeignCluster);
    }
    Ok((kind, header))
}

/// The packet number of a packet (see `crypto`).
pub fn packet_number(packet: &[u8]) -> u64 {
    packet.get(PACKET_NUMBER_AT..PACKET_NUMBER_AT + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes)
}

/// Decodes one opened packet (header and body, trailer removed) of cluster `cluster`.
pub fn decode(packet: &[u8], cluster: u32) -> Result<(Header, Message), DecodeError> {
    let (kind, header) = peek_header(packet, cluster)?;
    let mut r = Reader(&packet[HEADER_BYTES..]);
    let msg = match kind {
        Kind::Join => Message::Join(r.node_info()?),
        Kind::Greeting => Message::Greeting { info: r.node_info()?, high_seq: r.u64()?, sent_ms: r.u64()? },
        Kind::Heartbeat => Message::Heartbeat { info: r.node_info()?, high_seq: r.u64()?, sent_ms: r.u64()? },
        Kind::Leave => Message::Leave,
        Kind::AckRequest => Message::AckRequest { last_seq: r.u64()? },
        Kind::Ack => Message::Ack { high_seq: r.u64()? },
        Kind::Data => {
            let seq = r.u64()?;
            let tag = r.u8()?;
            let payload = match tag & !ASK_ACK {
                0 => {
                    let n = r.u16()? as usize;
                    let n = r.count(n, 17)?;
                    Payload::Ops((0..n).map(|_| r.op()).collect::<Result<_, _>>()?)
                }
                1 => {
                    let first_seq = r.u64()?;
                    let index = r.u16()?;
                    let count = r.u16()?;
                    if count == 0 || index >= count || seq != first_seq.wrapping_add(index as u64) {
                        return Err(DecodeError::Malformed);
                    }
                    Payload::Fragment { first_seq, index, count, bytes: r.bytes32()?.to_vec() }
                }
                _ => return Err(DecodeError::Malformed),
            };
            Message::Data { seq, ask_ack: tag & ASK_ACK != 0, payload }
        }
        Kind::Nak => {
            let n = r.u16()? as usize;
            let n = r.count(n, 16)?;
            let ranges = (0..n).map(|_| Ok((r.u64()?, r.u64()?))).collect::<Result<Vec<_>, _>>()?;
            if ranges.iter().any(|(from, to)| from > to) {
                return Err(DecodeError::Malformed);
            }
            Message::Nak { ranges }
        }
        Kind::Gone => Message::Gone { oldest: r.u64()? },
        Kind::SyncRequest => {
            let target = r.u64()?;
            let mode = match r.u8()? {
                0 => SyncMode::Full,
                1 => {
                    let n = r.u32()? as usize;
                    let n = r.count(n, 8)?;
                    SyncMode::Digest((0..n).map(|_| r.u64()).collect::<Result<_, _>>()?)
                }
                _ => return Err(DecodeError::Malformed),
            };
            Message::SyncRequest { target, mode }
        }
        Kind::SyncChunk => {
            let clear_mark = r.version()?;
            let n = r.u32()? as usize;
            let n = r.count(n, 4 + 1 + 32 + 1 + 8)?;
            Message::SyncChunk { clear_mark, entries: (0..n).map(|_| r.entry()).collect::<Result<_, _>>()? }
        }
        Kind::Ping => Message::Ping { token: r.u64()?, padding: r.bytes32()?.to_vec() },
        Kind::Pong => Message::Pong { token: r.u64()?, size: r.u32()? },
        Kind::Query => Message::Query { token: r.u64()?, sid: r.str32()? },
        Kind::Answer => {
            let token = r.u64()?;
            let reply = match r.u8()? {
                0 => Reply::Nothing,
                1 => {
                    let (sid, entry) = r.entry()?;
                    Reply::Entry { sid, entry }
                }
                2 => Reply::TooLarge { version: r.version()? },
                _ => return Err(DecodeError::Malformed),
            };
            Message::Answer { token, reply }
        }
        Kind::SyncEnd => {
            let high_seq = r.u64()?;
            let n = r.u32()? as usize;
            let n = r.count(n, 24)?;
            let departed = (0..n).map(|_| Ok((r.u64()?, r.u64()?, r.u64()?))).collect::<Result<_, _>>()?;
            Message::SyncEnd { high_seq, departed }
        }
    };
    if !r.0.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok((header, msg))
}

/// Decodes the bytes of one reassembled fragmented op.
pub fn decode_op(bytes: &[u8]) -> Result<Op, DecodeError> {
    let mut r = Reader(bytes);
    let op = r.op()?;
    if !r.0.is_empty() {
        return Err(DecodeError::Malformed);
    }
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLUSTER: u32 = 0xC1;
    const HEADER: Header = Header { cluster: CLUSTER, node: 42, incarnation: 7 };

    fn v(hlc: u64) -> Version {
        Version { hlc, node: 3 }
    }

    fn info() -> NodeInfo {
        NodeInfo { addr: "127.0.0.1:5000".parse().unwrap(), tcp_port: 5001, listen_port: 4000 }
    }

    fn samples() -> Vec<Message> {
        let ops = vec![
            Op::Set { sid: "a".into(), doc: r#"{"n":1}"#.into(), expires_at: 9, version: v(1) },
            Op::Touch { sid: "a".into(), cookie: Some("{}".into()), expires_at: 10, version: v(2) },
            Op::Touch { sid: "b".into(), cookie: None, expires_at: 10, version: v(2) },
            Op::Destroy { sid: "é".into(), version: v(3) },
            Op::Clear { version: v(4) },
        ];
        let entry = Entry {
            data: Data::Live("{}".into()),
            data_version: v(1),
            cookie_version: v(2),
            cookie: Some("{}".into()),
            expires_at: 5,
            local_expires_at: 0,
        };
        vec![
            Message::Join(info()),
            Message::Greeting {
                info: NodeInfo { addr: "[fd00::1]:9".parse().unwrap(), tcp_port: 1, listen_port: 0 },
                high_seq: 3,
                sent_ms: 1_800_000_000_000,
            },
            Message::Heartbeat { info: info(), high_seq: 99, sent_ms: u64::MAX },
            Message::Leave,
            Message::Data { seq: 5, ask_ack: false, payload: Payload::Ops(ops) },
            Message::Data {
                seq: 6,
                ask_ack: true,
                payload: Payload::Fragment { first_seq: 5, index: 1, count: 3, bytes: vec![1, 2] },
            },
            Message::Nak { ranges: vec![(1, 4), (9, 9)] },
            Message::Gone { oldest: 17 },
            Message::SyncRequest { target: 4, mode: SyncMode::Full },
            Message::SyncRequest { target: 5, mode: SyncMode::Digest(vec![1, 2, 3]) },
            Message::SyncChunk { clear_mark: v(1), entries: vec![("s".into(), entry.clone())] },
            Message::SyncEnd { high_seq: 12, departed: vec![(1, 2, 3)] },
            Message::Ping { token: 6, padding: vec![0; 9] },
            Message::Pong { token: 6, size: 1400 },
            Message::AckRequest { last_seq: 41 },
            Message::Ack { high_seq: u64::MAX },
            Message::Query { token: 8, sid: "sid-é".into() },
            Message::Answer { token: 8, reply: Reply::Nothing },
            Message::Answer { token: 9, reply: Reply::Entry { sid: "s".into(), entry: entry.clone() } },
            Message::Answer { token: 10, reply: Reply::TooLarge { version: v(7) } },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for msg in samples() {
            let bytes = encode(&HEADER, &msg);
            assert_eq!(decode(&bytes, CLUSTER), Ok((HEADER, msg)));
        }
    }

    #[test]
    fn op_len_matches_encoding() {
        if let Message::Data { payload: Payload::Ops(ops), .. } = &samples()[4] {
            for op in ops {
                assert_eq!(encode_op(op).len(), op_len(op));
                assert_eq!(decode_op(&encode_op(op)).as_ref(), Ok(op));
            }
        }
        let data = encode(&HEADER, &Message::Data { seq: 1, ask_ack: false, payload: Payload::Ops(vec![]) });
        assert_eq!(data.len() + TRAILER_BUDGET, DATA_OVERHEAD);
        let piece = Payload::Fragment { first_seq: 1, index: 0, count: 1, bytes: vec![] };
        assert_eq!(
            encode(&HEADER, &Message::Data { seq: 1, ask_ack: true, payload: piece }).len() + TRAILER_BUDGET,
            FRAGMENT_OVERHEAD
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        let good = encode(&HEADER, &Message::Gone { oldest: 1 });
        assert_eq!(decode(&good[..10], CLUSTER), Err(DecodeError::Truncated));
        assert_eq!(decode(&good[..good.len() - 1], CLUSTER), Err(DecodeError::Truncated));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, CLUSTER), Err(DecodeError::BadMagic));
        let mut bad = good.clone();
        bad[2] = 9;
        assert_eq!(decode(&bad, CLUSTER), Err(DecodeError::BadVersion));
        let mut bad = good.clone();
        bad[3] = 200;
        assert_eq!(decode(&bad, CLUSTER), Err(DecodeError::BadKind));
        assert_eq!(decode(&good, CLUSTER + 1), Err(DecodeError::ForeignCluster));
        let mut long = good.clone();
        long.push(0);
        assert_eq!(decode(&long, CLUSTER), Err(DecodeError::Malformed));
    }

    #[test]
    fn forged_counts_do_not_allocate() {
        // A Data datagram claiming 65535 ops in a few bytes.
        let mut w = Writer(Vec::new());
        w.0.extend_from_slice(&MAGIC);
        w.u8(WIRE_VERSION);
        w.u8(Kind::Data as u8);
        w.u32(CLUSTER);
        w.u64(1);
        w.u64(1);
        w.u64(0);
        w.u32(0);
        w.u64(1);
        w.u8(0);
        w.u16(u16::MAX);
        assert_eq!(decode(&w.0, CLUSTER), Err(DecodeError::Truncated));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes, CLUSTER);
            let _ = decode_op(&bytes);
        }

        #[test]
        fn corrupted_packets_never_panic(index in 0usize..20, pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            // Detecting the corruption is the trailer's job (crypto); decoding must only stay safe.
            let mut bytes = encode(&HEADER, &samples()[index]);
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let _ = decode(&bytes, CLUSTER);
        }
    }
}
