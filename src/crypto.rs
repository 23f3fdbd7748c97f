//! Sealing packets with the cluster key (docs/design.md §3.3, docs/security.md).
//!
//! With `secret`, every packet's body is encrypted and the whole packet authenticated with
//! XChaCha20-Poly1305: the header (which carries the key id and the packet number) and the
//! cluster name are associated data. The nonce is node id ‖ incarnation ‖ packet number: a node
//! never reuses a packet number within an incarnation, and ids and incarnations differ between
//! starts, so a nonce never repeats for a key. Without `secret`, a CRC-32 keyed by the cluster
//! name guards against corruption (not against forgery).
//!
//! Passphrases are stretched with Argon2id, salted with the cluster name, so every node of a
//! cluster derives the same key; Buffer keys are used as they are.

use argon2::{Algorithm, Argon2, Params, Version as ArgonVersion};
use chacha20::cipher::consts::U10;
use ring::aead::{Aad, LessSafeKey, Nonce, Tag, UnboundKey, CHACHA20_POLY1305};
use sha2::{Digest, Sha256};

use crate::options::{Secret, KEY_BYTES};
use crate::wire::{self, DecodeError, Header, Message, HEADER_BYTES, KEY_ID_AT, PACKET_NUMBER_AT};

pub const TAG_BYTES: usize = 16;
pub const CRC_BYTES: usize = 4;

/// XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): ChaCha20-Poly1305 (RFC 8439) under a subkey
/// that HChaCha20 derives from the key and the nonce's first 16 bytes, with the nonce's last 8
/// bytes as its nonce. Built on ring's ChaCha20-Poly1305, whose assembly runs at twice the speed
/// of a portable implementation (docs/design.md §3.3); the output is byte for byte that of the
/// RustCrypto `chacha20poly1305` crate, which a test checks.
pub struct XChaCha20Poly1305 {
    key: [u8; KEY_BYTES],
}

/// A tag did not match: the data or its associated data were damaged or altered, or the key is
/// another.
#[derive(Debug, PartialEq, Eq)]
pub struct Unauthentic;

pub type XNonce = [u8; 24];

impl XChaCha20Poly1305 {
    pub fn new(key: &[u8; KEY_BYTES]) -> XChaCha20Poly1305 {
        XChaCha20Poly1305 { key: *key }
    }

    fn subkey(&self, nonce: &XNonce) -> (LessSafeKey, Nonce) {
        let (head, tail) = nonce.split_at(16);
        let subkey = chacha20::hchacha::<U10>(&self.key.into(), head.into());
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(tail);
        // ChaCha20-Poly1305 takes any 32-byte key, which a subkey is.
        let key = UnboundKey::new(&CHACHA20_POLY1305, &subkey).map(LessSafeKey::new).expect("a 32-byte key");
        (key, Nonce::assume_unique_for_key(short))
    }

    /// Encrypts `data` in place; returns the tag, which covers `data` and `aad`. Data beyond
    /// 256 GiB, which nothing here comes near, is left as it is, under a tag that never opens.
    pub fn seal(&self, nonce: &XNonce, aad: &[u8], data: &mut [u8]) -> [u8; TAG_BYTES] {
        let (key, nonce) = self.subkey(nonce);
        let tag = key.seal_in_place_separate_tag(nonce, Aad::from(aad), data);
        tag.ok().and_then(|tag| tag.as_ref().try_into().ok()).unwrap_or([0; TAG_BYTES])
    }

    /// Checks `tag` against `data` and `aad`, and decrypts `data` in place if it matches.
    pub fn open(&self, nonce: &XNonce, aad: &[u8], data: &mut [u8], tag: &[u8]) -> Result<(), Unauthentic> {
        let tag = Tag::try_from(tag).map_err(|_| Unauthentic)?;
        let (key, nonce) = self.subkey(nonce);
        key.open_in_place_separate_tag(nonce, Aad::from(aad), tag, data, 0..).map(drop).map_err(|_| Unauthentic)
    }
}

struct ClusterKey {
    id: u32,
    cipher: XChaCha20Poly1305,
}

/// Seals and opens the packets of one cluster.
pub struct Codec {
    cluster_name: Vec<u8>,
    /// Key ring: the first seals, every one opens. Empty = unsealed cluster.
    keys: Vec<ClusterKey>,
}

#[cfg(test)]
thread_local! {
    /// Passphrases stretched on this thread, for tests.
    pub static STRETCHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The key bytes of a secret: Argon2id for passphrases (OWASP's minimum parameters: 19 MiB,
/// 2 passes), salted with the cluster name.
pub fn derive_key(secret: &Secret, cluster: &str) -> [u8; KEY_BYTES] {
    match secret {
        Secret::Key(key) => *key,
        Secret::Passphrase(phrase) => {
            #[cfg(test)]
            STRETCHED.with(|n| n.set(n.get() + 1));
            let salt = Sha256::new().chain_update(b"express-session-multicast salt\0").chain_update(cluster).finalize();
            let params = Params::new(19 * 1024, 2, 1, Some(KEY_BYTES)).expect("valid Argon2 parameters");
            let mut key = [0u8; KEY_BYTES];
            Argon2::new(Algorithm::Argon2id, ArgonVersion::V0x13, params)
                .hash_password_into(phrase.as_bytes(), &salt, &mut key)
                .expect("Argon2 accepts any passphrase and this salt");
            key
        }
    }
}

/// A short public id of a key, so a receiver picks the right key of its ring (never 0, which
/// marks unsealed packets).
pub fn key_id(key: &[u8; KEY_BYTES]) -> u32 {
    let digest = Sha256::new().chain_update(b"express-session-multicast key id\0").chain_update(key).finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]).max(1)
}

fn nonce(packet: &[u8]) -> XNonce {
    // node id, incarnation and packet number: bytes 8..16, 16..24 and 24..32 of the header.
    packet[8..32].try_into().unwrap_or_default()
}

impl Codec {
    pub fn new(cluster: &str, secrets: &[Secret]) -> Codec {
        let keys = secrets
            .iter()
            .map(|secret| {
                let key = derive_key(secret, cluster);
                ClusterKey { id: key_id(&key), cipher: XChaCha20Poly1305::new(&key) }
            })
            .collect();
        Codec { cluster_name: cluster.as_bytes().to_vec(), keys }
    }

    pub fn is_sealed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Bytes sealing adds at the end of a packet.
    pub fn trailer_bytes(&self) -> usize {
        if self.is_sealed() {
            TAG_BYTES
        } else {
            CRC_BYTES
        }
    }

    fn crc(&self, packet: &[u8]) -> u32 {
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.cluster_name);
        hasher.update(packet);
        hasher.finalize()
    }

    /// Seals an encoded packet (header and body) under packet number `pn`.
    pub fn seal(&self, mut packet: Vec<u8>, pn: u64) -> Vec<u8> {
        packet[PACKET_NUMBER_AT..PACKET_NUMBER_AT + 8].copy_from_slice(&pn.to_be_bytes());
        match self.keys.first() {
            None => {
                let crc = self.crc(&packet);
                packet.extend_from_slice(&crc.to_be_bytes());
            }
            Some(key) => {
                packet[KEY_ID_AT..KEY_ID_AT + 4].copy_from_slice(&key.id.to_be_bytes());
                let mut aad = packet[..HEADER_BYTES].to_vec();
                aad.extend_from_slice(&self.cluster_name);
                let nonce = nonce(&packet);
                let tag = key.cipher.seal(&nonce, &aad, &mut packet[HEADER_BYTES..]);
                packet.extend_from_slice(&tag);
            }
        }
        packet
    }

    /// Checks a received packet of cluster `cluster` end to end but for replays: the header
    /// (before any cryptography), the trailer, then the body. Returns the sender, the message and
    /// the packet number, for the replay check of the receiving node (`Node::accept`), which
    /// must come only after authentication, so forged packets cannot poison the replay windows.
    pub fn open_message(&self, bytes: &[u8], cluster: u32) -> Result<(Header, Message, u64), DecodeError> {
        wire::peek_header(bytes, cluster)?;
        let packet = self.open(bytes)?;
        let (header, msg) = wire::decode(&packet, cluster)?;
        Ok((header, msg, wire::packet_number(&packet)))
    }

    /// Checks a received packet and returns it without its trailer (header, then plaintext body).
    pub fn open(&self, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
        if bytes.len() < HEADER_BYTES {
            return Err(DecodeError::Truncated);
        }
        let key_id = u32::from_be_bytes(bytes[KEY_ID_AT..KEY_ID_AT + 4].try_into().unwrap_or_default());
        let trailer = if key_id == 0 { CRC_BYTES } else { TAG_BYTES };
        if bytes.len() < HEADER_BYTES + trailer {
            return Err(DecodeError::Truncated);
        }
        match (self.keys.is_empty(), key_id) {
            (true, 0) => {
                let (packet, crc) = bytes.split_at(bytes.len() - CRC_BYTES);
                if self.crc(packet).to_be_bytes() != crc {
                    return Err(DecodeError::BadChecksum);
                }
                Ok(packet.to_vec())
            }
            (true, _) => Err(DecodeError::UnexpectedSeal),
            (false, 0) => Err(DecodeError::Unsealed),
            (false, id) => {
                let key = self.keys.iter().find(|k| k.id == id).ok_or(DecodeError::UnknownKey)?;
                let (packet, tag) = bytes.split_at(bytes.len() - TAG_BYTES);
                let mut aad = packet[..HEADER_BYTES].to_vec();
                aad.extend_from_slice(&self.cluster_name);
                let mut opened = packet.to_vec();
                key.cipher
                    .open(&nonce(packet), &aad, &mut opened[HEADER_BYTES..], tag)
                    .map_err(|_| DecodeError::AuthFailed)?;
                Ok(opened)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, Header, Message};

    const HEADER: Header = Header { cluster: 1, node: 42, incarnation: 7 };

    fn codec(cluster: &str, secrets: &[&str]) -> Codec {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::Passphrase(s.to_string())).collect();
        Codec::new(cluster, &secrets)
    }

    fn sealed_leave(codec: &Codec, pn: u64) -> Vec<u8> {
        codec.seal(wire::encode(&HEADER, &Message::Gone { oldest: 9 }), pn)
    }

    #[test]
    fn sealed_round_trip_hides_the_body() {
        let c = codec("shop", &["correct horse"]);
        let sealed = sealed_leave(&c, 5);
        let opened = c.open(&sealed).unwrap();
        assert_eq!(wire::decode(&opened, HEADER.cluster).unwrap(), (HEADER, Message::Gone { oldest: 9 }));
        assert_eq!(wire::packet_number(&opened), 5);
        let plain = wire::encode(&HEADER, &Message::Gone { oldest: 9 });
        assert_ne!(&sealed[wire::HEADER_BYTES..wire::HEADER_BYTES + 8], &plain[wire::HEADER_BYTES..]);
    }

    #[test]
    fn every_tampered_byte_is_rejected() {
        let c = codec("shop", &["k"]);
        let sealed = sealed_leave(&c, 5);
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(c.open(&bad).is_err(), "byte {i} tampered but accepted");
        }
    }

    #[test]
    fn wrong_key_other_cluster_and_unsealed_are_rejected() {
        let c = codec("shop", &["k"]);
        let sealed = sealed_leave(&c, 1);
        assert_eq!(codec("shop", &["other"]).open(&sealed), Err(DecodeError::UnknownKey));
        // Same passphrase, other cluster: another salt, so another key.
        assert_eq!(codec("blog", &["k"]).open(&sealed), Err(DecodeError::UnknownKey));
        let unsealed = codec("shop", &[]);
        assert_eq!(unsealed.open(&sealed), Err(DecodeError::UnexpectedSeal));
        assert_eq!(c.open(&sealed_leave(&unsealed, 1)), Err(DecodeError::Unsealed));
    }

    #[test]
    fn key_ring_seals_with_the_first_and_opens_with_all() {
        let old = codec("shop", &["old"]);
        let rotating = codec("shop", &["new", "old"]);
        let new = codec("shop", &["new"]);
        assert!(rotating.open(&sealed_leave(&old, 1)).is_ok());
        assert!(new.open(&sealed_leave(&rotating, 1)).is_ok());
        assert!(old.open(&sealed_leave(&rotating, 1)).is_err());
    }

    #[test]
    fn unsealed_checksum_is_keyed_by_cluster_name() {
        let shop = codec("shop", &[]);
        let packet = sealed_leave(&shop, 1);
        assert!(shop.open(&packet).is_ok());
        assert_eq!(codec("blog", &[]).open(&packet), Err(DecodeError::BadChecksum));
    }

    /// `open_message`: the header is checked before any cryptography (a foreign cluster costs no
    /// AEAD), then the trailer, then the body; the packet number comes out for the replay check.
    #[test]
    fn messages_open_in_order_of_the_checks() {
        let sealed = codec("shop", &["k"]);
        let packet = sealed_leave(&sealed, 12);
        assert_eq!(sealed.open_message(&packet, HEADER.cluster), Ok((HEADER, Message::Gone { oldest: 9 }, 12)));
        assert_eq!(sealed.open_message(&packet, HEADER.cluster + 1), Err(DecodeError::ForeignCluster));
        let mut forged = packet.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(sealed.open_message(&forged, HEADER.cluster), Err(DecodeError::AuthFailed));
        assert_eq!(sealed.open_message(&packet[..20], HEADER.cluster), Err(DecodeError::Truncated));
    }

    proptest::proptest! {
        /// Sealed files and packets of earlier versions, sealed with RustCrypto's
        /// XChaCha20-Poly1305, open, and the other way round: the same bytes, the same tag.
        #[test]
        fn xchacha_is_byte_for_byte_rustcrypto_s(
            key: [u8; 32],
            nonce: [u8; 24],
            aad in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
            data in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        ) {
            use chacha20poly1305::aead::{AeadInPlace, KeyInit};
            let reference = chacha20poly1305::XChaCha20Poly1305::new(&key.into());
            let mut expected = data.clone();
            let expected_tag = reference.encrypt_in_place_detached(&nonce.into(), &aad, &mut expected).unwrap();
            let ours = XChaCha20Poly1305::new(&key);
            let mut sealed = data.clone();
            let tag = ours.seal(&nonce, &aad, &mut sealed);
            proptest::prop_assert_eq!(&sealed, &expected);
            proptest::prop_assert_eq!(&tag[..], &expected_tag[..]);
            ours.open(&nonce, &aad, &mut sealed, &tag).unwrap();
            proptest::prop_assert_eq!(&sealed, &data);
            let mut forged = expected.clone();
            let mut bad_tag = tag;
            bad_tag[0] ^= 1;
            proptest::prop_assert_eq!(ours.open(&nonce, &aad, &mut forged, &bad_tag), Err(Unauthentic));
        }
    }

    /// Sealing time per packet and per snapshot frame, next to the RustCrypto implementation
    /// earlier builds used, in the same run (docs/design.md §3.3):
    /// `cargo test --release --no-default-features crypto::tests::seal_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn seal_timing() {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        use std::time::Instant;
        let key = [3u8; KEY_BYTES];
        let (ours, reference) = (XChaCha20Poly1305::new(&key), chacha20poly1305::XChaCha20Poly1305::new(&key.into()));
        let aad = [1u8; 40];
        for size in [100, 1024, 1400, 1 << 20] {
            let mut data = vec![7u8; size];
            let rounds = (200_000_000 / (size + 2000)).max(1);
            let mut time = |seal: &mut dyn FnMut(u64, &mut [u8])| {
                let started = Instant::now();
                for i in 0..rounds {
                    seal(i as u64, &mut data);
                }
                started.elapsed().as_nanos() as f64 / rounds as f64
            };
            let nonce = |i: u64| {
                let mut nonce = [0u8; 24];
                nonce[16..].copy_from_slice(&i.to_be_bytes());
                nonce
            };
            let new = time(&mut |i, data| {
                std::hint::black_box(ours.seal(&nonce(i), &aad, data));
            });
            let old = time(&mut |i, data| {
                std::hint::black_box(reference.encrypt_in_place_detached(&nonce(i).into(), &aad, data).ok());
            });
            println!("{size} bytes: {new:.0} ns, RustCrypto {old:.0} ns ({:.2}×)", new / old);
        }
    }

    #[test]
    fn raw_keys_are_used_as_given() {
        let key = Secret::Key([3; KEY_BYTES]);
        assert_eq!(derive_key(&key, "any"), [3; KEY_BYTES]);
        let a = Codec::new("shop", std::slice::from_ref(&key));
        assert!(Codec::new("shop", &[key]).open(&sealed_leave(&a, 2)).is_ok());
    }
}
