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
        Message::Ack { target: 3, high_seq: u64::MAX },
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
    let mut packet = MAGIC.to_vec();
    packet.extend([WIRE_VERSION, Kind::Data as u8]);
    packet.extend(CLUSTER.to_be_bytes());
    [1u64, 1, 0].iter().for_each(|v| packet.extend(v.to_be_bytes()));
    packet.extend(0u32.to_be_bytes());
    packet.extend(1u64.to_be_bytes());
    packet.push(0);
    packet.extend(u16::MAX.to_be_bytes());
    assert_eq!(decode(&packet, CLUSTER), Err(DecodeError::Truncated));
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
