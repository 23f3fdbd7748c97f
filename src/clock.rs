//! Hybrid logical clock and write versions (docs/design.md §2.2).
//!
//! A version is `(hlc, node)`, where `hlc` packs wall-clock milliseconds (upper 48 bits) and a
//! logical counter (lower 16 bits). Versions are totally ordered, so last-writer-wins merges
//! commute: every node picks the same winner whatever the arrival order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const COUNTER_BITS: u32 = 16;

/// Version of one write. Ordered by clock first, node id second (the tie-break).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub hlc: u64,
    pub node: u64,
}

impl Version {
    pub const ZERO: Version = Version { hlc: 0, node: 0 };

    /// Wall-clock milliseconds of this version.
    pub fn millis(self) -> u64 {
        self.hlc >> COUNTER_BITS
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A hybrid logical clock: never goes backwards, stays close to wall-clock time, and moves past
/// every version it has observed, so a write always wins over the writes it has seen.
pub struct Clock {
    node: u64,
    last: AtomicU64,
}

impl Clock {
    pub fn new(node: u64) -> Self {
        Clock { node, last: AtomicU64::new(0) }
    }

    pub fn node(&self) -> u64 {
        self.node
    }

    /// A fresh version for a local write, greater than any version issued or observed so far.
    pub fn tick(&self) -> Version {
        self.tick_at(now_ms())
    }

    /// `tick` when the caller has just read the wall clock (`now_ms`).
    pub fn tick_at(&self, now_ms: u64) -> Version {
        let wall = now_ms << COUNTER_BITS;
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(wall.max(last + 1)))
            .unwrap_or_else(|last| last);
        Version { hlc: wall.max(prev + 1), node: self.node }
    }

    /// The highest clock value issued or observed so far (persist/ keeps it across restarts).
    pub fn high_water(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// Moves the clock past a version received from another node.
    pub fn observe(&self, seen: Version) {
        self.last.fetch_max(seen.hlc, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_and_near_wall_time() {
        let clock = Clock::new(7);
        let mut prev = Version::ZERO;
        for _ in 0..100_000 {
            let v = clock.tick();
            assert!(v > prev);
            assert_eq!(v.node, 7);
            prev = v;
        }
        assert!(prev.millis().abs_diff(now_ms()) < 1_000);
    }

    #[test]
    fn observed_versions_are_overtaken() {
        let clock = Clock::new(1);
        let future = Version { hlc: (now_ms() + 60_000) << COUNTER_BITS, node: 9 };
        clock.observe(future);
        assert!(clock.tick() > future);
    }

    /// docs/how-it-works.md "Clocks": what an offset between two nodes' clocks does to the order of writes.
    #[test]
    fn a_fast_clock_wins_concurrent_writes_for_as_long_as_its_offset_and_causality_holds() {
        const T: u64 = 1_800_000_000_000;
        const HOUR: u64 = 3_600_000;
        // Node 2's clock is an hour ahead of node 1's (right) one; neither has seen the other.
        let fast = Clock::new(2).tick_at(T + HOUR);
        assert!(Clock::new(1).tick_at(T + HOUR - 1) < fast, "a write up to the offset later loses");
        assert!(Clock::new(1).tick_at(T + HOUR + 1) > fast, "one made later than that wins");
        // A write made after seeing another wins, whatever the clocks, and drags the clock along:
        // the right node's next writes carry the fast node's time until its own catches up.
        let right = Clock::new(1);
        right.observe(fast);
        let after = right.tick_at(T);
        assert!(after > fast);
        assert_eq!(after.millis(), T + HOUR);
        assert_eq!(right.tick_at(T + 2 * HOUR).millis(), T + 2 * HOUR, "until its own clock passes it");
    }

    #[test]
    fn node_id_breaks_ties() {
        let a = Version { hlc: 5, node: 1 };
        let b = Version { hlc: 5, node: 2 };
        assert!(a < b);
    }
}
