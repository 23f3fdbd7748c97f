//! Fragmentation of ops too large for one datagram (docs/design.md §3.8), and their bounded reassembly.
//!
//! The sender cuts an op's encoded bytes with [`split`]: every piece but the last carries exactly
//! [`PIECE_LEN`] bytes, the last one between 1 and [`PIECE_LEN`]. The receiver enforces that
//! shape, which gives it two guarantees: a message's size is known from its `count` to within one
//! piece (so a forged count that could never fit the budget is refused at its first piece, before
//! anything is held), and per-piece bookkeeping stays small next to the bytes it tracks.
//!
//! Memory policy of [`Reassembler`]: it charges each partial message its piece bytes plus
//! [`PARTIAL_COST`] of bookkeeping, and never holds more than `max_bytes`. When a piece does not
//! fit, it evicts partial messages from the sender (node, incarnation) that holds the most, its
//! oldest message (lowest `first_seq`) first. The incoming piece counts for its own sender, and a
//! tie goes against that sender. As a result, a flood from one sender evicts its own partials
//! once it holds the most, and a sender that stays below an equal share (`max_bytes / senders`)
//! never loses a partial to make room. A piece that completes a message never evicts anything,
//! because its bytes leave with the result.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::wire::{FRAGMENT_OVERHEAD, MAX_DATAGRAM};

/// Bytes of op carried by one fragment datagram.
pub const PIECE_LEN: usize = MAX_DATAGRAM - FRAGMENT_OVERHEAD;
/// Largest op that fragments can carry (`count` is a u16); callers refuse larger ops.
pub const MAX_MESSAGE: usize = u16::MAX as usize * PIECE_LEN;
/// Bookkeeping charged to each partial message on top of its bytes (its map entries and the
/// first node of its piece map). Without this charge, a flood of 1-byte last pieces, each
/// opening a new partial, could hold far more memory than `held_bytes` reports.
pub const PARTIAL_COST: usize = 512;

/// Splits the encoded bytes of one op into pieces of [`PIECE_LEN`] bytes (the last may be
/// shorter); the caller sends them with consecutive sequence numbers. `None` when the op is
/// empty or larger than [`MAX_MESSAGE`].
pub fn split(op_bytes: &[u8]) -> Option<Vec<&[u8]>> {
    if op_bytes.is_empty() || op_bytes.len() > MAX_MESSAGE {
        return None;
    }
    Some(op_bytes.chunks(PIECE_LEN).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FragmentError {
    /// The piece contradicts its message: another `count`, index out of range, wrong length.
    Inconsistent,
    /// The piece is larger than a datagram could carry.
    TooLarge,
    /// The message cannot fit the memory budget.
    OverBudget,
}

impl FragmentError {
    /// The `stats()` drop reason.
    pub fn reason(self) -> &'static str {
        match self {
            FragmentError::Inconsistent => "fragmentInconsistent",
            FragmentError::TooLarge => "fragmentTooLarge",
            FragmentError::OverBudget => "fragmentOverBudget",
        }
    }
}

/// (node, incarnation): a restarted node is a new sender with its own sequence numbers.
type Sender = (u64, u64);
/// (node, incarnation, first_seq), ordered so that a sender's partials are contiguous, oldest
/// first.
type Key = (u64, u64, u64);

struct Partial {
    count: u16,
    started: Instant,
    /// Bytes charged for this partial: its pieces plus `PARTIAL_COST`.
    charged: usize,
    /// Received pieces by index, kept as they arrived; concatenated once, when complete.
    pieces: BTreeMap<u16, Vec<u8>>,
}

/// Reassembles fragmented messages under a memory budget (policy in the module docs).
pub struct Reassembler {
    max_bytes: usize,
    timeout: Duration,
    partials: BTreeMap<Key, Partial>,
    /// Bytes charged to each sender that has partials.
    held_by: HashMap<Sender, usize>,
    /// The same charges, ordered so that the heaviest sender is found in O(log n).
    by_weight: BTreeSet<(usize, Sender)>,
    held: usize,
}

impl Reassembler {
    /// `max_bytes` bounds what partial messages hold across all senders; a partial message that
    /// is not completed within `timeout` of its first piece is dropped by [`Reassembler::expire`].
    pub fn new(max_bytes: usize, timeout: Duration) -> Self {
        Reassembler {
            max_bytes,
            timeout,
            partials: BTreeMap::new(),
            held_by: HashMap::new(),
            by_weight: BTreeSet::new(),
            held: 0,
        }
    }

    /// Adds one piece from sender (`node`, `incarnation`). Returns the message (pieces in index
    /// order) when this piece completes it, `None` while it is incomplete or when the piece is a
    /// duplicate. On error, the piece is dropped, and the partial message it belongs to is kept
    /// unless the error is `OverBudget`.
    #[allow(clippy::too_many_arguments)] // mirrors the fields of `Payload::Fragment` and its header
    pub fn add(
        &mut self,
        node: u64,
        incarnation: u64,
        first_seq: u64,
        index: u16,
        count: u16,
        bytes: Vec<u8>,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, FragmentError> {
        if bytes.len() > PIECE_LEN {
            return Err(FragmentError::TooLarge);
        }
        let last = count.checked_sub(1).ok_or(FragmentError::Inconsistent)?;
        if index > last || bytes.is_empty() || (index < last && bytes.len() != PIECE_LEN) {
            return Err(FragmentError::Inconsistent);
        }
        let sender = (node, incarnation);
        let key = (node, incarnation, first_seq);
        let charge = match self.partials.entry(key) {
            Entry::Occupied(entry) => {
                let partial = entry.get();
                if partial.count != count {
                    return Err(FragmentError::Inconsistent);
                }
                if partial.pieces.contains_key(&index) {
                    return Ok(None);
                }
                if partial.pieces.len() + 1 < usize::from(count) {
                    bytes.len()
                } else {
                    let mut partial = entry.remove();
                    self.reweigh(sender, |weight| weight - partial.charged);
                    partial.pieces.insert(index, bytes);
                    return Ok(Some(partial.pieces.into_values().collect::<Vec<_>>().concat()));
                }
            }
            Entry::Vacant(_) if count == 1 => return Ok(Some(bytes)),
            // Smallest size the message can have: refuse it now if even that cannot fit.
            Entry::Vacant(_) if usize::from(last) * PIECE_LEN + 1 + PARTIAL_COST > self.max_bytes => {
                return Err(FragmentError::OverBudget)
            }
            Entry::Vacant(_) => bytes.len() + PARTIAL_COST,
        };
        self.make_room(sender, key, charge)?;
        let partial = self.partials.entry(key).or_insert_with(|| Partial {
            count,
            started: now,
            charged: 0,
            pieces: BTreeMap::new(),
        });
        partial.charged += charge;
        partial.pieces.insert(index, bytes);
        self.reweigh(sender, |weight| weight + charge);
        Ok(None)
    }

    /// Drops partial messages whose first piece is at least `timeout` old; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let stale: Vec<Key> = self
            .partials
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= self.timeout)
            .map(|(key, _)| *key)
            .collect();
        stale.iter().for_each(|key| self.remove(*key));
        stale.len()
    }

    /// Drops every partial message of `node`, whatever its incarnation (it left or restarted).
    pub fn forget(&mut self, node: u64) {
        let keys: Vec<Key> =
            self.partials.range((node, 0, 0)..=(node, u64::MAX, u64::MAX)).map(|(key, _)| *key).collect();
        keys.into_iter().for_each(|key| self.remove(key));
    }

    /// Bytes charged for partial messages: their pieces plus `PARTIAL_COST` each.
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// Number of partial messages held.
    pub fn partials(&self) -> usize {
        self.partials.len()
    }

    /// Evicts partials until `charge` more bytes fit (policy in the module docs). Fails when
    /// the partial `key`, which the piece belongs to, must go, or when the adding sender would
    /// be the heaviest but holds nothing to evict.
    fn make_room(&mut self, adder: Sender, key: Key, charge: usize) -> Result<(), FragmentError> {
        while self.held + charge > self.max_bytes {
            let victim = match self.by_weight.last() {
                Some(&(weight, other)) if weight > self.weight(adder) + charge => other,
                _ => adder,
            };
            let (node, incarnation) = victim;
            let oldest = self.partials.range((node, incarnation, 0)..=(node, incarnation, u64::MAX)).next();
            let Some((&oldest, _)) = oldest else { return Err(FragmentError::OverBudget) };
            self.remove(oldest);
            if oldest == key {
                return Err(FragmentError::OverBudget);
            }
        }
        Ok(())
    }

    fn remove(&mut self, key: Key) {
        if let Some(partial) = self.partials.remove(&key) {
            self.reweigh((key.0, key.1), |weight| weight - partial.charged);
        }
    }

    fn weight(&self, sender: Sender) -> usize {
        self.held_by.get(&sender).copied().unwrap_or(0)
    }

    /// Changes `sender`'s charge, keeping the three tallies in step.
    fn reweigh(&mut self, sender: Sender, change: impl FnOnce(usize) -> usize) {
        let old = self.weight(sender);
        let new = change(old);
        self.by_weight.remove(&(old, sender));
        if new == 0 {
            self.held_by.remove(&sender);
        } else {
            self.held_by.insert(sender, new);
            self.by_weight.insert((new, sender));
        }
        self.held = self.held - old + new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn message(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    }

    /// Pieces of `msg` as (index, count, bytes).
    fn pieces(msg: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        let pieces = split(msg).expect("fits");
        let count = pieces.len() as u16;
        pieces.into_iter().enumerate().map(|(i, p)| (i as u16, count, p.to_vec())).collect()
    }

    /// Feeds pieces of one sender's message; returns what completed, checking the tallies.
    fn feed(
        r: &mut Reassembler,
        sender: Sender,
        first_seq: u64,
        pieces: Vec<(u16, u16, Vec<u8>)>,
        now: Instant,
    ) -> Vec<Vec<u8>> {
        let mut done = Vec::new();
        for (index, count, bytes) in pieces {
            if let Some(msg) = r.add(sender.0, sender.1, first_seq, index, count, bytes, now).unwrap() {
                done.push(msg);
            }
            check(r);
        }
        done
    }

    /// The tallies agree with the partials, and the budget holds.
    fn check(r: &Reassembler) {
        let charged: usize = r.partials.values().map(|p| p.charged).sum();
        let bytes: usize = r.partials.values().flat_map(|p| p.pieces.values()).map(Vec::len).sum();
        assert_eq!(r.held, charged);
        assert_eq!(charged, bytes + r.partials.len() * PARTIAL_COST);
        assert_eq!(r.held_by.values().sum::<usize>(), r.held);
        assert_eq!(r.by_weight.len(), r.held_by.len());
        assert!(r.held <= r.max_bytes, "held {} over budget {}", r.held, r.max_bytes);
    }

    #[test]
    fn split_cuts_full_pieces_and_refuses_what_fragments_cannot_carry() {
        let msg = message(PIECE_LEN * 2 + 5, 1);
        let lens: Vec<usize> = split(&msg).unwrap().iter().map(|p| p.len()).collect();
        assert_eq!(lens, [PIECE_LEN, PIECE_LEN, 5]);
        assert_eq!(split(&msg[..PIECE_LEN]).unwrap().len(), 1);
        assert!(split(&[]).is_none());
        let huge = vec![0u8; MAX_MESSAGE + 1];
        assert!(split(&huge).is_none());
        assert_eq!(split(&huge[..MAX_MESSAGE]).unwrap().len(), usize::from(u16::MAX));
    }

    #[test]
    fn round_trip_in_any_order() {
        let msg = message(PIECE_LEN * 7 + 100, 2);
        let now = Instant::now();
        let mut in_order = pieces(&msg);
        let mut reverse = in_order.clone();
        reverse.reverse();
        let mut shuffled = in_order.clone();
        shuffled.shuffle(&mut StdRng::seed_from_u64(7));
        let single = pieces(&msg[..10]);
        for (seq, order) in [in_order.clone(), reverse, shuffled, single].into_iter().enumerate() {
            let mut r = Reassembler::new(1 << 20, TIMEOUT);
            let expected = if order.len() == 1 { &msg[..10] } else { &msg[..] };
            assert_eq!(feed(&mut r, (1, 1), seq as u64, order, now), [expected]);
            assert_eq!((r.held_bytes(), r.partials()), (0, 0));
        }
        // Only the last piece completes.
        let last = in_order.pop().unwrap();
        let mut r = Reassembler::new(1 << 20, TIMEOUT);
        assert!(feed(&mut r, (1, 1), 0, in_order, now).is_empty());
        assert_eq!(r.partials(), 1);
        assert_eq!(feed(&mut r, (1, 1), 0, vec![last], now), [msg]);
    }

    #[test]
    fn duplicates_are_ignored_and_not_counted_twice() {
        let msg = message(PIECE_LEN * 3, 3);
        let p = pieces(&msg);
        let now = Instant::now();
        let mut r = Reassembler::new(1 << 20, TIMEOUT);
        assert!(feed(&mut r, (1, 1), 9, vec![p[0].clone(), p[0].clone(), p[1].clone()], now).is_empty());
        let held = r.held_bytes();
        assert_eq!(held, 2 * PIECE_LEN + PARTIAL_COST);
        assert!(feed(&mut r, (1, 1), 9, vec![p[1].clone(), p[0].clone()], now).is_empty());
        assert_eq!(r.held_bytes(), held);
        assert_eq!(feed(&mut r, (1, 1), 9, vec![p[2].clone()], now), [msg]);
    }

    #[test]
    fn partials_expire_after_the_timeout() {
        let msg = message(PIECE_LEN * 2, 4);
        let p = pieces(&msg);
        let t0 = Instant::now();
        let mut r = Reassembler::new(1 << 20, TIMEOUT);
        feed(&mut r, (1, 1), 1, vec![p[0].clone()], t0);
        feed(&mut r, (2, 1), 1, vec![p[0].clone()], t0 + TIMEOUT / 2);
        assert_eq!(r.expire(t0 + TIMEOUT - Duration::from_millis(1)), 0);
        assert_eq!(r.expire(t0 + TIMEOUT), 1);
        assert_eq!(r.partials(), 1);
        check(&r);
        // The survivor still completes; the expired one starts afresh and is incomplete.
        assert_eq!(feed(&mut r, (2, 1), 1, vec![p[1].clone()], t0 + TIMEOUT), [msg]);
        assert!(feed(&mut r, (1, 1), 1, vec![p[1].clone()], t0 + TIMEOUT).is_empty());
        assert_eq!(r.expire(t0 + TIMEOUT * 3), 1);
        assert_eq!((r.held_bytes(), r.partials()), (0, 0));
    }

    #[test]
    fn inconsistent_pieces_are_refused_and_the_partial_kept() {
        let msg = message(PIECE_LEN * 3, 5);
        let p = pieces(&msg);
        let now = Instant::now();
        let mut r = Reassembler::new(1 << 20, TIMEOUT);
        feed(&mut r, (1, 1), 0, vec![p[0].clone()], now);
        let full = vec![0u8; PIECE_LEN];
        let err = |r: &mut Reassembler, index, count, bytes| r.add(1, 1, 0, index, count, bytes, now).unwrap_err();
        assert_eq!(err(&mut r, 1, 4, full.clone()), FragmentError::Inconsistent); // other count
        assert_eq!(err(&mut r, 0, 1, full.clone()), FragmentError::Inconsistent); // other count, alone
        assert_eq!(err(&mut r, 3, 3, full.clone()), FragmentError::Inconsistent); // index out of range
        assert_eq!(err(&mut r, 0, 0, full.clone()), FragmentError::Inconsistent); // no pieces at all
        assert_eq!(err(&mut r, 1, 3, vec![0; 10]), FragmentError::Inconsistent); // short middle piece
        assert_eq!(err(&mut r, 2, 3, Vec::new()), FragmentError::Inconsistent); // empty last piece
        assert_eq!(err(&mut r, 2, 3, vec![0; PIECE_LEN + 1]), FragmentError::TooLarge);
        assert_eq!(r.held_bytes(), PIECE_LEN + PARTIAL_COST);
        assert_eq!(feed(&mut r, (1, 1), 0, p[1..].to_vec(), now), [msg]);
    }

    #[test]
    fn forged_count_beyond_the_budget_holds_nothing() {
        let now = Instant::now();
        let mut r = Reassembler::new(16 << 20, TIMEOUT);
        let piece = vec![0u8; PIECE_LEN];
        assert_eq!(r.add(1, 1, 0, 0, u16::MAX, piece.clone(), now), Err(FragmentError::OverBudget));
        assert_eq!((r.held_bytes(), r.partials()), (0, 0));
        // The largest count that can fit is accepted.
        let count = ((16 << 20) - PARTIAL_COST - 1) / PIECE_LEN + 1;
        assert_eq!(r.add(1, 1, 0, 0, count as u16, piece.clone(), now), Ok(None));
        assert_eq!(r.add(1, 1, 1, 0, count as u16 + 1, piece, now), Err(FragmentError::OverBudget));
    }

    #[test]
    fn a_flood_from_one_sender_neither_exceeds_the_budget_nor_starves_another() {
        let budget = 64 * 1024;
        let now = Instant::now();
        let mut r = Reassembler::new(budget, TIMEOUT);
        let victim = message(PIECE_LEN * 10, 6);
        let mut victim_pieces = pieces(&victim).into_iter();
        let flood_piece = vec![0u8; PIECE_LEN];
        let mut done = Vec::new();
        for seq in 0..2000u64 {
            // Each flood message has 2 pieces and never completes.
            assert_eq!(r.add(66, 1, seq, 0, 2, flood_piece.clone(), now), Ok(None));
            check(&r);
            if seq % 100 == 50 {
                if let Some((index, count, bytes)) = victim_pieces.next() {
                    done.extend(r.add(7, 1, 500, index, count, bytes, now).unwrap());
                    check(&r);
                }
            }
        }
        assert_eq!(done, [victim]);
        assert!(r.held_bytes() > budget - PIECE_LEN - PARTIAL_COST, "the flooder may use what is free");
        // Now the flooder holds the budget: a newcomer's piece evicts the flooder, not the newcomer.
        let other = pieces(&message(PIECE_LEN * 3, 7));
        assert!(feed(&mut r, (8, 1), 0, other[..2].to_vec(), now).is_empty());
        assert_eq!(r.held_by[&(8, 1)], 2 * PIECE_LEN + PARTIAL_COST);
    }

    #[test]
    fn a_sender_over_its_share_loses_its_own_message() {
        // Budget for ~6 full pieces: one sender holds 3, another's 5-piece message cannot fit.
        let budget = 6 * PIECE_LEN + 2 * PARTIAL_COST;
        let now = Instant::now();
        let mut r = Reassembler::new(budget, TIMEOUT);
        let small = pieces(&message(PIECE_LEN * 4, 8));
        let big = pieces(&message(PIECE_LEN * 5, 9));
        assert!(feed(&mut r, (1, 1), 0, small[..3].to_vec(), now).is_empty());
        assert!(feed(&mut r, (2, 1), 0, big[..3].to_vec(), now).is_empty());
        let (index, count, bytes) = big[3].clone();
        assert_eq!(r.add(2, 1, 0, index, count, bytes, now), Err(FragmentError::OverBudget));
        check(&r);
        assert_eq!(r.partials(), 1);
        // A completing piece needs no room.
        assert_eq!(feed(&mut r, (1, 1), 0, small[3..].to_vec(), now).len(), 1);
    }

    #[test]
    fn forget_drops_every_incarnation_of_a_node() {
        let msg = message(PIECE_LEN * 2, 10);
        let p = pieces(&msg);
        let now = Instant::now();
        let mut r = Reassembler::new(1 << 20, TIMEOUT);
        for sender in [(1, 1), (1, 2), (2, 1)] {
            feed(&mut r, sender, 0, vec![p[0].clone()], now);
            feed(&mut r, sender, 5, vec![p[0].clone()], now);
        }
        r.forget(1);
        check(&r);
        assert_eq!(r.partials(), 2);
        assert_eq!(r.held_bytes(), 2 * (PIECE_LEN + PARTIAL_COST));
        assert!(feed(&mut r, (1, 1), 0, vec![p[1].clone()], now).is_empty());
        assert_eq!(feed(&mut r, (2, 1), 0, vec![p[1].clone()], now), [msg]);
    }

    /// A legit message: sender and first_seq unique to it.
    #[derive(Debug, Clone)]
    struct Sent {
        node: u64,
        first_seq: u64,
        bytes: Vec<u8>,
    }

    fn sent() -> impl Strategy<Value = Sent> {
        (0u64..4, any::<u8>(), 1usize..PIECE_LEN * 6).prop_map(|(node, seed, len)| Sent {
            node,
            first_seq: 0,
            bytes: message(len, seed),
        })
    }

    /// A forged piece from nodes 100.. (never those of legit messages).
    fn forged() -> impl Strategy<Value = (u64, u64, u16, u16, usize)> {
        (100u64..103, 0u64..4, any::<u16>(), prop_oneof![1u16..8, any::<u16>()], 0usize..PIECE_LEN + 10)
    }

    proptest! {
        #[test]
        fn random_pieces_never_panic_nor_exceed_the_budget(
            mut msgs in prop::collection::vec(sent(), 1..8),
            forged in prop::collection::vec(forged(), 0..40),
            budget in 0usize..12 * PIECE_LEN,
            seed in any::<u64>(),
            drop_one_in in 2u32..20,
        ) {
            let mut rng = StdRng::seed_from_u64(seed);
            for (seq, m) in msgs.iter_mut().enumerate() {
                m.first_seq = seq as u64 * 100;
            }
            // Every piece of every message, minus random drops, plus forged ones, shuffled.
            let mut arrivals: Vec<(u64, u64, u16, u16, Vec<u8>)> = msgs
                .iter()
                .flat_map(|m| pieces(&m.bytes).into_iter().map(|(i, c, b)| (m.node, m.first_seq, i, c, b)))
                .filter(|_| rng.random_ratio(drop_one_in - 1, drop_one_in))
                .chain(forged.into_iter().map(|(node, seq, i, c, len)| (node, seq, i, c, vec![1; len])))
                .collect();
            arrivals.shuffle(&mut rng);
            let t0 = Instant::now();
            let mut r = Reassembler::new(budget, TIMEOUT);
            for (step, (node, first_seq, index, count, bytes)) in arrivals.into_iter().enumerate() {
                let now = t0 + Duration::from_millis(step as u64 * 50);
                if let Ok(Some(done)) = r.add(node, 1, first_seq, index, count, bytes, now) {
                    if node < 100 {
                        let m = msgs.iter().find(|m| m.node == node && m.first_seq == first_seq).unwrap();
                        prop_assert_eq!(&done, &m.bytes);
                    }
                }
                match rng.random_range(0..20) {
                    0 => { r.expire(now); }
                    1 => r.forget(rng.random_range(0..4)),
                    _ => {}
                }
                check(&r);
            }
            r.expire(t0 + Duration::from_secs(3600));
            prop_assert_eq!((r.held_bytes(), r.partials()), (0, 0));
        }
    }
}
