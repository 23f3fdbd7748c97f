//! Reading packets: every length and count is checked against the bytes left before anything
//! is read or allocated, and every failure is a `DecodeError`.

use super::*;

/// Reads big-endian fields off the front of a byte slice (also the snapshot format's,
/// src/persist/format.rs).
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
        simdutf8::basic::from_utf8(self.bytes32()?).map(Arc::from).map_err(|_| DecodeError::Malformed)
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
        Kind::Ack => Message::Ack { target: r.u64()?, high_seq: r.u64()? },
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
