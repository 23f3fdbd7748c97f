//! Replay protection without synchronised clocks (docs/design.md §3.4).
//!
//! Every packet a node sends carries a packet number, strictly increasing within its
//! incarnation. A receiver keeps, per (node id, incarnation), the highest number seen and a
//! bitmap of the `WINDOW` numbers below it: a number seen before, or older than the window, is a
//! replay. Senders are remembered long after they die or leave (up to `MAX_SENDERS`, the least
//! recently heard forgotten first), so replayed joins and heartbeats cannot bring them back.

use std::collections::BTreeMap;

/// Packet numbers tracked below the highest one: UDP and TCP packets of one sender interleave,
/// so a packet may arrive a few thousand numbers late and must still be accepted.
pub const WINDOW: u64 = 8192;
const WORDS: usize = (WINDOW / 64) as usize;
/// Senders remembered.
pub const MAX_SENDERS: usize = 8192;

struct Window {
    highest: u64,
    /// A ring: bit `pn % WINDOW` set = packet number `pn` seen, for the numbers in
    /// `(highest - WINDOW, highest]`. Moving up clears only the slots that enter the window.
    seen: Box<[u64; WORDS]>,
    last_used: u64,
}

impl Window {
    fn new() -> Self {
        Window { highest: 0, seen: Box::new([0; WORDS]), last_used: 0 }
    }

    fn slot(pn: u64) -> (usize, u64) {
        let bit = pn % WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    /// Marks `pn` seen; false when it was seen before or is too old.
    fn accept(&mut self, pn: u64) -> bool {
        if pn > self.highest {
            if pn - self.highest >= WINDOW {
                self.seen.fill(0);
            } else {
                for entering in self.highest + 1..pn {
                    let (word, mask) = Self::slot(entering);
                    self.seen[word] &= !mask;
                }
            }
            self.highest = pn;
            let (word, mask) = Self::slot(pn);
            self.seen[word] |= mask;
            return true;
        }
        if self.highest - pn >= WINDOW {
            return false;
        }
        let (word, mask) = Self::slot(pn);
        let fresh = self.seen[word] & mask == 0;
        self.seen[word] |= mask;
        fresh
    }
}

#[derive(Default)]
pub struct ReplayGuard {
    /// Ordered: a replayed simulation walks them in the same order.
    windows: BTreeMap<(u64, u64), Window>,
    clock: u64,
}

impl ReplayGuard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether packet `pn` of (`node`, `incarnation`) is fresh; records it. Call only for
    /// authenticated packets, so forgeries cannot fill the table.
    pub fn accept(&mut self, node: u64, incarnation: u64, pn: u64) -> bool {
        self.clock += 1;
        if !self.windows.contains_key(&(node, incarnation)) && self.windows.len() >= MAX_SENDERS {
            if let Some(oldest) = self.windows.iter().min_by_key(|(_, w)| w.last_used).map(|(k, _)| *k) {
                self.windows.remove(&oldest);
            }
        }
        let window = self.windows.entry((node, incarnation)).or_insert_with(Window::new);
        window.last_used = self.clock;
        window.accept(pn)
    }

    pub fn senders(&self) -> usize {
        self.windows.len()
    }

    /// (node, incarnation, highest packet number) of every remembered sender.
    pub fn snapshot(&self) -> Vec<(u64, u64, u64)> {
        self.windows.iter().map(|((node, incarnation), w)| (*node, *incarnation, w.highest)).collect()
    }

    /// The highest packet number accepted (or primed) of that sender, if it is remembered.
    pub fn highest(&self, node: u64, incarnation: u64) -> Option<u64> {
        self.windows.get(&(node, incarnation)).map(|w| w.highest)
    }

    /// Learns from a peer that a sender was heard up to `highest`: every number up to it is
    /// treated as seen, so recordings of that sender are replays here too.
    pub fn prime(&mut self, node: u64, incarnation: u64, highest: u64) {
        let window = self.windows.entry((node, incarnation)).or_insert_with(Window::new);
        if highest >= window.highest {
            window.highest = highest;
            window.seen.fill(u64::MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_and_old_numbers_are_replays() {
        let mut g = ReplayGuard::new();
        assert!(g.accept(1, 1, 5));
        assert!(!g.accept(1, 1, 5));
        assert!(g.accept(1, 1, 3), "late but inside the window");
        assert!(!g.accept(1, 1, 3));
        assert!(g.accept(1, 1, 5 + WINDOW));
        assert!(!g.accept(1, 1, 5), "fell out of the window");
        assert!(g.accept(1, 2, 5), "another incarnation has its own window");
        assert!(g.accept(2, 1, 5), "another node too");
    }

    #[test]
    fn table_is_bounded_and_forgets_the_least_recent() {
        let mut g = ReplayGuard::new();
        for node in 0..MAX_SENDERS as u64 + 10 {
            g.accept(node, 1, 1);
        }
        assert_eq!(g.senders(), MAX_SENDERS);
        assert!(g.accept(0, 1, 1), "the oldest sender was forgotten");
    }

    #[test]
    fn primed_senders_reject_what_a_peer_saw() {
        let mut g = ReplayGuard::new();
        g.prime(3, 1, 100);
        assert!(!g.accept(3, 1, 100));
        assert!(!g.accept(3, 1, 42));
        assert!(g.accept(3, 1, 101), "newer packets are still accepted");
        assert_eq!(g.snapshot(), vec![(3, 1, 101)]);
    }

    proptest! {
        /// Against a model that remembers everything: accept exactly the numbers never seen that
        /// are within the window of the highest seen so far.
        #[test]
        fn matches_a_model(pns in prop::collection::vec(1u64..30_000, 1..400)) {
            let mut g = ReplayGuard::new();
            let mut seen = std::collections::HashSet::new();
            let mut highest = 0;
            for pn in pns {
                let expected = !seen.contains(&pn) && (pn > highest || highest - pn < WINDOW);
                prop_assert_eq!(g.accept(9, 9, pn), expected, "pn {}", pn);
                if expected { seen.insert(pn); highest = highest.max(pn); }
            }
        }
    }
}
