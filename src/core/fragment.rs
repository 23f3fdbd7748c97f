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
mod tests;
