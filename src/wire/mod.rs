//! Binary wire format, version 3 (docs/design.md §3.1; every kind in docs/how-it-works.md
//! "Wire format").
//!
//! Every datagram and every TCP frame is one packet:
//!
//! ```text
//! offset size
//!  0     2    magic "SM"
//!  2     1    wire version (3)
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
//! `skew`); version 3 the node an `Ack` is meant for. Nodes of different versions drop each
//! other's packets (`badVersion`).
//!
//! This module declares the packets; encode.rs and decode.rs write and read header and body,
//! and `crypto` adds and checks the trailer.
//! Decoding never panics: every length is checked against what is left, and every error is a
//! `DecodeError` the caller counts and drops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::clock::Version;
use crate::table::{Data, Entry, Op};

mod decode;
mod encode;
#[cfg(test)]
mod tests;

pub(crate) use decode::Reader;
pub use decode::{decode, decode_op, packet_number, peek_header};
pub use encode::{encode, encode_op, op_len};

pub const MAGIC: [u8; 2] = *b"SM";
pub const WIRE_VERSION: u8 = 3;
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
    /// unicast to that sender, `target`: a recording replayed to another node is no ack of its.
    Ack {
        target: u64,
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

/// Bytes a `Data` datagram spends besides its ops: header, seq, payload tag, count, trailer.
pub const DATA_OVERHEAD: usize = HEADER_BYTES + 8 + 1 + 2 + TRAILER_BUDGET;
/// Bytes a `Data` fragment datagram spends besides its piece.
pub const FRAGMENT_OVERHEAD: usize = HEADER_BYTES + 8 + 1 + 8 + 2 + 2 + 4 + TRAILER_BUDGET;

/// Bytes a `Query` spends besides its sid: header, token, sid length, trailer.
pub const QUERY_OVERHEAD: usize = HEADER_BYTES + 8 + 4 + TRAILER_BUDGET;
