//! Arbitrary bytes through every receive-side decoder: `wire::decode`, `wire::decode_op`, and
//! `Codec::open_message` then the replay window (what a node does with a datagram) of an
//! unsealed and of a sealed link. None of them may panic.
//!
//! Raw bytes rarely get past the magic and never past the CRC or the AEAD tag, so the input is
//! also framed behind a good magic and version, decoded, and then sealed (with the receiving
//! cluster's id patched into its header) and opened: that drives the opened path (decode after a
//! good trailer, replay windows) with arbitrary bodies. Oracles besides "no panic": a decoded
//! packet re-encodes to the same body, and `open(seal(p))` decodes exactly as `decode(p)` does.
#![no_main]

use std::sync::{Mutex, OnceLock};

use express_session_multicast::core::replay::ReplayGuard;
use express_session_multicast::crypto::Codec;
use express_session_multicast::options::Secret;
use express_session_multicast::wire::{
    self, DecodeError, Header, Message, HEADER_BYTES, KEY_ID_AT, MAGIC, WIRE_VERSION,
};
use libfuzzer_sys::fuzz_target;

const CLUSTER_NAME: &str = "fuzz";

/// The receiving end of a node: opens, then rejects replays.
struct Link {
    codec: Codec,
    cluster: u32,
    replay: Mutex<ReplayGuard>,
}

impl Link {
    fn new(header: Header, codec: Codec) -> Link {
        Link { codec, cluster: header.cluster, replay: Mutex::new(ReplayGuard::new()) }
    }

    fn open(&self, bytes: &[u8]) -> Result<(Header, Message), DecodeError> {
        let (header, msg, pn) = self.codec.open_message(bytes, self.cluster)?;
        if !self.replay.lock().unwrap().accept(header.node, header.incarnation, pn) {
            return Err(DecodeError::Replay);
        }
        Ok((header, msg))
    }
}

struct Fixture {
    cluster: u32,
    unsealed: Link,
    sealed: Link,
    /// Same keys as the links, to seal inputs they must accept.
    unsealed_codec: Codec,
    sealed_codec: Codec,
    /// The key id the sealed link expects.
    sealed_key_id: [u8; 4],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cluster = wire::cluster_id(CLUSTER_NAME);
        let header = Header { cluster, node: 1, incarnation: 1 };
        let key = || vec![Secret::Key([7; 32])];
        let sealed_codec = Codec::new(CLUSTER_NAME, &key());
        let probe = sealed_codec.seal(wire::encode(&header, &Message::Leave), 1);
        let sealed_key_id = probe[KEY_ID_AT..KEY_ID_AT + 4].try_into().unwrap();
        Fixture {
            cluster,
            unsealed: Link::new(header, Codec::new(CLUSTER_NAME, &[])),
            sealed: Link::new(header, Codec::new(CLUSTER_NAME, &key())),
            unsealed_codec: Codec::new(CLUSTER_NAME, &[]),
            sealed_codec,
            sealed_key_id,
        }
    })
}

/// A successful decode re-encodes to the same body and decodes to the same message.
fn check_round_trip(packet: &[u8], cluster: u32, decoded: &(Header, Message)) {
    let (header, msg) = decoded;
    let again = wire::encode(header, msg);
    assert_eq!(&again[HEADER_BYTES..], &packet[HEADER_BYTES..], "decode is not the inverse of encode");
    assert_eq!(wire::decode(&again, cluster).as_ref(), Ok(decoded));
}

/// `link.open(codec.seal(p))`: the packet passes its trailer, so it must decode as `p` does,
/// unless its packet number was already seen by the (long-lived) link.
fn sealed_round_trip(link: &Link, codec: &Codec, packet: &[u8], cluster: u32) {
    let pn = wire::packet_number(packet);
    let sealed = codec.seal(packet.to_vec(), pn);
    let expected = wire::decode(packet, cluster);
    match link.open(&sealed) {
        Err(DecodeError::Replay) => assert!(expected.is_ok(), "replay check before decoding: {expected:?}"),
        got => assert_eq!(got, expected),
    }
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();

    // Raw bytes as received: every early rejection (length, magic, version, kind, cluster,
    // trailer, key id).
    let _ = wire::peek_header(data, f.cluster);
    let _ = wire::decode(data, f.cluster);
    let _ = f.unsealed.open(data);
    let _ = f.sealed.open(data);
    if let Ok(op) = wire::decode_op(data) {
        assert_eq!(wire::encode_op(&op), data, "decode_op is not the inverse of encode_op");
        assert_eq!(wire::op_len(&op), data.len(), "op_len disagrees with the encoding");
    }

    // The input behind a good magic and version (libFuzzer does not reliably find them), so it
    // starts at the kind byte and reaches the body decoders.
    let mut packet = Vec::with_capacity(3 + data.len());
    packet.extend_from_slice(&MAGIC);
    packet.push(WIRE_VERSION);
    packet.extend_from_slice(data);
    if packet.len() >= 8 {
        // Whatever cluster the input names, so the fuzzer need not find the cluster id.
        let cluster = u32::from_be_bytes(packet[4..8].try_into().unwrap());
        if let Ok(decoded) = wire::decode(&packet, cluster) {
            check_round_trip(&packet, cluster, &decoded);
        }
    }

    if packet.len() >= HEADER_BYTES {
        packet[4..8].copy_from_slice(&f.cluster.to_be_bytes());
        // As it is, with the link's key id: past the key lookup, into the tag check.
        packet[KEY_ID_AT..KEY_ID_AT + 4].copy_from_slice(&f.sealed_key_id);
        assert!(f.sealed.open(&packet).is_err(), "forged packet accepted by the sealed link");
        packet[KEY_ID_AT..KEY_ID_AT + 4].fill(0);
        let _ = f.unsealed.open(&packet);

        // The same packet with a valid trailer, through both links.
        sealed_round_trip(&f.unsealed, &f.unsealed_codec, &packet, f.cluster);
        sealed_round_trip(&f.sealed, &f.sealed_codec, &packet, f.cluster);
    }
});
