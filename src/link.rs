//! Packets in and out of one node: encode then seal with the next packet number; check the
//! header, open, reject replays, then decode. Shared by the UDP paths and the TCP syncs.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::crypto::Codec;
use crate::replay::ReplayGuard;
use crate::wire::{self, DecodeError, Header, Message};

pub struct Link {
    header: Header,
    codec: Codec,
    next_pn: AtomicU64,
    replay: Mutex<ReplayGuard>,
}

impl Link {
    pub fn new(header: Header, codec: Codec) -> Link {
        Link { header, codec, next_pn: AtomicU64::new(1), replay: Mutex::new(ReplayGuard::new()) }
    }

    pub fn header(&self) -> Header {
        self.header
    }

    pub fn is_sealed(&self) -> bool {
        self.codec.is_sealed()
    }

    pub fn trailer_bytes(&self) -> usize {
        self.codec.trailer_bytes()
    }

    /// The packet before sealing (kept for retransmission, which seals it anew).
    pub fn encode(&self, msg: &Message) -> Vec<u8> {
        wire::encode(&self.header, msg)
    }

    /// Seals an encoded packet with a packet number never used before by this node.
    pub fn seal_encoded(&self, packet: Vec<u8>) -> Vec<u8> {
        self.codec.seal(packet, self.next_pn.fetch_add(1, Ordering::Relaxed))
    }

    pub fn seal(&self, msg: &Message) -> Vec<u8> {
        self.seal_encoded(self.encode(msg))
    }

    pub fn replay_memory(&self) -> Vec<(u64, u64, u64)> {
        self.replay.lock().snapshot()
    }

    pub fn prime_replay(&self, senders: &[(u64, u64, u64)]) {
        let mut replay = self.replay.lock();
        for (node, incarnation, highest) in senders {
            replay.prime(*node, *incarnation, *highest);
        }
    }

    /// Checks a received packet end to end. Replays are checked only once the packet is
    /// authenticated, so forged packets cannot poison the replay windows.
    pub fn open(&self, bytes: &[u8]) -> Result<(Header, Message), DecodeError> {
        wire::peek_header(bytes, self.header.cluster)?;
        let packet = self.codec.open(bytes)?;
        let (header, msg) = wire::decode(&packet, self.header.cluster)?;
        if !self.replay.lock().accept(header.node, header.incarnation, wire::packet_number(&packet)) {
            return Err(DecodeError::Replay);
        }
        Ok((header, msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Secret;

    fn link(node: u64, secret: Option<&str>) -> Link {
        let secrets: Vec<Secret> = secret.map(|s| Secret::Passphrase(s.into())).into_iter().collect();
        Link::new(Header { cluster: 3, node, incarnation: 1 }, Codec::new("c", &secrets))
    }

    #[test]
    fn packets_are_accepted_once() {
        for secret in [None, Some("k")] {
            let (a, b) = (link(1, secret), link(2, secret));
            let packet = a.seal(&Message::Leave);
            assert_eq!(b.open(&packet), Ok((a.header(), Message::Leave)));
            assert_eq!(b.open(&packet), Err(DecodeError::Replay));
            // A retransmission is sealed anew, with a fresh packet number.
            let plain = a.encode(&Message::Gone { oldest: 4 });
            assert!(b.open(&a.seal_encoded(plain.clone())).is_ok());
            assert!(b.open(&a.seal_encoded(plain)).is_ok());
        }
    }

    #[test]
    fn foreign_clusters_are_dropped_before_any_crypto() {
        let a = link(1, Some("k"));
        let other = Link::new(Header { cluster: 4, node: 2, incarnation: 1 }, Codec::new("c", &[]));
        assert_eq!(a.open(&other.seal(&Message::Leave)), Err(DecodeError::ForeignCluster));
    }
}
