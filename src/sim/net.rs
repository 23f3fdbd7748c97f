//! The simulated network and clock: a queue of timed events (datagrams in flight, TCP transfers,
//! the workload's next step), and what the faults do to a datagram.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use super::plan::Plan;

/// Something that happens at a simulated time.
#[derive(Debug)]
pub enum Event {
    /// A datagram reaches the node in `slot`, if it is still incarnation `incarnation`.
    Deliver {
        slot: usize,
        incarnation: u64,
        from: SocketAddr,
        via_group: bool,
        bytes: Vec<u8>,
        genuine: bool,
    },
    /// A pull's request reaches the node at `tcp` (member `target`).
    SyncServe {
        slot: usize,
        incarnation: u64,
        target: u64,
        tcp: SocketAddr,
        full: bool,
    },
    /// The frames answering it reach the puller.
    SyncFrames {
        slot: usize,
        incarnation: u64,
        target: u64,
        full: bool,
        frames: Vec<Vec<u8>>,
    },
    SyncFailed {
        slot: usize,
        incarnation: u64,
        target: u64,
        full: bool,
        why: &'static str,
    },
    FetchServe {
        slot: usize,
        incarnation: u64,
        token: u64,
        sid: Arc<str>,
        tcp: SocketAddr,
        deadline: Duration,
    },
    /// The answer frame; `Ok(None)`: the fetch timed out.
    FetchFrame {
        slot: usize,
        incarnation: u64,
        token: u64,
        sid: Arc<str>,
        frame: Result<Option<Vec<u8>>, &'static str>,
    },
    /// The workload: a write (or a miss) somewhere, and its flush at the end of the "turn".
    Write,
    Flush {
        slot: usize,
        incarnation: u64,
    },
    Start {
        slot: usize,
    },
    Stop {
        index: usize,
    },
    /// The node in `slot` writes a snapshot (`persist`), if it is still `incarnation`.
    Snapshot {
        slot: usize,
        incarnation: u64,
    },
    Garbage,
    Sweep,
    Check,
}

struct Timed {
    at: Duration,
    seq: u64,
    event: Event,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Events in time order (ties in the order they were scheduled).
#[derive(Default)]
pub struct Queue {
    heap: BinaryHeap<Reverse<Timed>>,
    seq: u64,
}

impl Queue {
    pub fn at(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse(Timed { at, seq: self.seq, event }));
    }

    pub fn next_at(&self) -> Option<Duration> {
        self.heap.peek().map(|Reverse(t)| t.at)
    }

    pub fn pop(&mut self) -> Option<(Duration, Event)> {
        self.heap.pop().map(|Reverse(t)| (t.at, t.event))
    }
}

/// What the network does to one datagram from slot `from` to slot `to` sent at `now`: the times
/// its copies arrive (none: lost, two: duplicated).
pub fn fates(plan: &Plan, rng: &mut SmallRng, from: usize, to: usize, now: Duration) -> Vec<Duration> {
    let delay = |rng: &mut SmallRng| Duration::from_micros(rng.random_range(plan.delay_us.0..=plan.delay_us.1));
    if from == to {
        // Multicast loops back on the host: no network in between.
        return vec![now + Duration::from_micros(5)];
    }
    if now >= plan.faults_until {
        return vec![now + Duration::from_micros(rng.random_range(50..300))];
    }
    if !connected(plan, from, to, now) || rng.random_bool(plan.loss) {
        return Vec::new();
    }
    let mut arrivals = vec![now + delay(rng)];
    if rng.random_bool(plan.duplication) {
        arrivals.push(now + delay(rng) * 2);
    }
    arrivals
}

/// Whether no partition separates the two slots at `now`.
pub fn connected(plan: &Plan, a: usize, b: usize, now: Duration) -> bool {
    !plan.partitions.iter().any(|p| p.start <= now && now < p.end && p.side[a] != p.side[b])
}
