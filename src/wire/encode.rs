//! Writing packets: header and body (docs/how-it-works.md "Wire format").

use super::*;

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
        Message::Ack { target, high_seq } => {
            w.u64(*target);
            w.u64(*high_seq);
        }
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
