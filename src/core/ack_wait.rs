//! Acknowledged writes (`waitForAck`, README "Guarantees", docs/design.md §3.11): the callback
//! of a local write waits until every member that was alive when the write left has acknowledged
//! it, or `ackTimeout`.
//!
//! The outbox numbers local writes 1, 2, 3…; the network thread sends them in batches, and a
//! batch ends at a seq of this node's stream. A batch is settled once each member alive when it
//! left has acknowledged that seq (acks are cumulative), or is alive no more (suspect, dead and
//! departed members are not waited for), or at its deadline. Batches settle in order, so one
//! number, the last write settled, tells the JS side which callbacks to call. A member that joins
//! later is not waited for: its state transfer brings it the write.
//!
//! When acks are late (the datagram carrying the batch's last seq, or the `Ack`, was lost), the
//! lagging members are asked again (`AckRequest`), after PROBE_DELAY, then twice as long each time.
//! Plain data: the caller passes `now`; no clock, no sockets, no locks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::reliable::Acks;

/// First re-ask of lagging members after a batch left: several round trips on a LAN, and rarely
/// needed (the datagram itself asks for an ack at once).
pub const PROBE_DELAY: Duration = Duration::from_millis(4);
const MAX_PROBE_DELAY: Duration = Duration::from_millis(64);

#[derive(Debug)]
struct Batch {
    last_write: u64,
    seq: u64,
    /// (node, incarnation) of the members alive when it left.
    members: Vec<(u64, u64)>,
    deadline: Instant,
}

#[derive(Debug)]
pub struct AckWaits {
    timeout: Duration,
    batches: VecDeque<Batch>,
    settled: u64,
    next_probe: Option<Instant>,
    probe_delay: Duration,
}

/// What `settle` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// The last write settled, when it moved.
    pub through: Option<u64>,
    /// Writes settled by their deadline rather than by acks.
    pub timed_out: u64,
    /// Members that had not acknowledged a timed-out batch.
    pub laggards: Vec<u64>,
}

impl AckWaits {
    pub fn new(timeout: Duration) -> Self {
        AckWaits { timeout, batches: VecDeque::new(), settled: 0, next_probe: None, probe_delay: PROBE_DELAY }
    }

    /// The writes up to `last_write` left in datagrams up to `seq`, at `now`, while `members`
    /// were alive. Call `settle` next (with no members, the batch is settled at once).
    pub fn add(&mut self, last_write: u64, seq: u64, members: Vec<(u64, u64)>, now: Instant) {
        if last_write <= self.settled {
            return;
        }
        let deadline = now.checked_add(self.timeout).unwrap_or(now);
        self.batches.push_back(Batch { last_write, seq, members, deadline });
        if self.next_probe.is_none() {
            self.probe_delay = PROBE_DELAY;
            self.next_probe = now.checked_add(PROBE_DELAY);
        }
    }

    /// Settles, in order, the batches acknowledged by every member they wait for that is still
    /// `alive`, and those past their deadline.
    pub fn settle(&mut self, acks: &Acks, alive: impl Fn(u64, u64) -> bool, now: Instant) -> Settled {
        let mut settled = Settled::default();
        while let Some(batch) = self.batches.front() {
            let lagging = |&&(node, incarnation): &&(u64, u64)| {
                alive(node, incarnation) && acks.acked(node, incarnation) < batch.seq
            };
            if batch.members.iter().any(|m| lagging(&m)) {
                if now < batch.deadline {
                    break;
                }
                settled.timed_out += batch.last_write - self.settled;
                settled.laggards.extend(batch.members.iter().filter(|m| lagging(m)).map(|(node, _)| *node));
            }
            self.settled = batch.last_write;
            settled.through = Some(self.settled);
            self.batches.pop_front();
        }
        settled.laggards.sort_unstable();
        settled.laggards.dedup();
        if settled.through.is_some() {
            // Progress: the next re-ask, if one is still needed, waits a full PROBE_DELAY again.
            self.probe_delay = PROBE_DELAY;
            self.next_probe = (!self.batches.is_empty()).then(|| now.checked_add(PROBE_DELAY).unwrap_or(now));
        }
        settled
    }

    /// When due: the seq to ask acks for, and the members (node) still lagging on some batch.
    pub fn probe(&mut self, acks: &Acks, alive: impl Fn(u64, u64) -> bool, now: Instant) -> Option<(u64, Vec<u64>)> {
        if self.next_probe.is_none_or(|at| now < at) {
            return None;
        }
        let seq = self.batches.back()?.seq;
        let alive = &alive;
        let mut lagging: Vec<u64> = self
            .batches
            .iter()
            .flat_map(|b| b.members.iter().filter(move |(n, i)| alive(*n, *i) && acks.acked(*n, *i) < b.seq))
            .map(|(node, _)| *node)
            .collect();
        lagging.sort_unstable();
        lagging.dedup();
        self.probe_delay = (self.probe_delay * 2).min(MAX_PROBE_DELAY);
        self.next_probe = now.checked_add(self.probe_delay);
        Some((seq, lagging))
    }

    /// When `settle` or `probe` next has something to do without an ack arriving.
    pub fn next_wake(&self) -> Option<Instant> {
        let deadline = self.batches.front()?.deadline;
        Some(self.next_probe.map_or(deadline, |probe| probe.min(deadline)))
    }

    /// The last write settled.
    pub fn settled(&self) -> u64 {
        self.settled
    }

    /// Settles everything (the node is leaving: its leave waits for the acks itself).
    pub fn settle_all(&mut self) -> Option<u64> {
        let last = self.batches.back()?.last_write;
        self.batches.clear();
        self.next_probe = None;
        self.settled = last;
        Some(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(300);
    const A: (u64, u64) = (1, 10);
    const B: (u64, u64) = (2, 20);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn ack(acks: &mut Acks, (node, incarnation): (u64, u64), seq: u64) {
        acks.ack(node, incarnation, seq, u64::MAX);
    }

    #[test]
    fn a_batch_waits_for_every_member_alive_when_it_left() {
        let t0 = Instant::now();
        let (mut waits, mut acks) = (AckWaits::new(TIMEOUT), Acks::default());
        let all_alive = |_: u64, _: u64| true;
        waits.add(3, 1, vec![A, B], t0);
        waits.add(5, 2, vec![A, B], t0);
        assert_eq!(waits.settle(&acks, all_alive, t0), Settled::default());
        ack(&mut acks, A, 2);
        assert_eq!(waits.settle(&acks, all_alive, t0).through, None, "B has not acknowledged");
        ack(&mut acks, B, 1);
        assert_eq!(waits.settle(&acks, all_alive, t0).through, Some(3));
        ack(&mut acks, B, 2);
        assert_eq!(waits.settle(&acks, all_alive, t0).through, Some(5));
        assert_eq!(waits.settled(), 5);
        assert_eq!(waits.next_wake(), None);
    }

    #[test]
    fn no_members_settles_at_once_and_a_joiner_is_not_waited_for() {
        let t0 = Instant::now();
        let (mut waits, mut acks) = (AckWaits::new(TIMEOUT), Acks::default());
        waits.add(1, 1, vec![], t0);
        assert_eq!(waits.settle(&acks, |_, _| true, t0).through, Some(1));
        waits.add(2, 2, vec![A], t0);
        ack(&mut acks, A, 2);
        // B joined after the write left: not in the batch, so its missing ack does not matter.
        assert_eq!(waits.settle(&acks, |_, _| true, t0).through, Some(2));
    }

    #[test]
    fn a_member_that_is_no_longer_alive_is_not_waited_for() {
        let t0 = Instant::now();
        let (mut waits, mut acks) = (AckWaits::new(TIMEOUT), Acks::default());
        waits.add(1, 1, vec![A, B], t0);
        ack(&mut acks, A, 1);
        assert_eq!(waits.settle(&acks, |_, _| true, t0).through, None);
        // B turns suspect (or dies, or leaves): A's ack is enough.
        let settled = waits.settle(&acks, |node, _| node != B.0, at(t0, 10));
        assert_eq!(settled, Settled { through: Some(1), timed_out: 0, laggards: vec![] });
        // Another incarnation of A is another member: its ack does not count for A's batch.
        waits.add(2, 2, vec![A], t0);
        acks.ack(A.0, A.1 + 1, 2, u64::MAX);
        assert_eq!(waits.settle(&acks, |node, inc| (node, inc) == A, at(t0, 10)).through, None);
    }

    #[test]
    fn the_deadline_settles_and_names_the_laggards() {
        let t0 = Instant::now();
        let (mut waits, mut acks) = (AckWaits::new(TIMEOUT), Acks::default());
        waits.add(4, 1, vec![A, B], t0);
        waits.add(6, 2, vec![A, B], at(t0, 100));
        ack(&mut acks, A, 2);
        assert_eq!(waits.next_wake(), Some(at(t0, 4)), "a probe first");
        assert_eq!(waits.settle(&acks, |_, _| true, at(t0, 299)).through, None);
        let settled = waits.settle(&acks, |_, _| true, at(t0, 300));
        assert_eq!(settled, Settled { through: Some(4), timed_out: 4, laggards: vec![B.0] });
        // B acknowledges the second batch before its own deadline.
        ack(&mut acks, B, 2);
        assert_eq!(waits.settle(&acks, |_, _| true, at(t0, 301)), Settled { through: Some(6), ..Settled::default() });
    }

    #[test]
    fn lagging_members_are_asked_again_with_backoff() {
        let t0 = Instant::now();
        let (mut waits, mut acks) = (AckWaits::new(TIMEOUT), Acks::default());
        waits.add(1, 7, vec![A, B], t0);
        ack(&mut acks, A, 7);
        assert_eq!(waits.probe(&acks, |_, _| true, at(t0, 3)), None, "not yet");
        assert_eq!(waits.probe(&acks, |_, _| true, at(t0, 4)), Some((7, vec![B.0])));
        assert_eq!(waits.probe(&acks, |_, _| true, at(t0, 11)), None, "the next one waits twice as long");
        assert_eq!(waits.probe(&acks, |_, _| true, at(t0, 12)), Some((7, vec![B.0])));
        assert_eq!(waits.next_wake(), Some(at(t0, 28)));
        ack(&mut acks, B, 7);
        assert_eq!(waits.settle(&acks, |_, _| true, at(t0, 13)).through, Some(1));
        assert_eq!(waits.probe(&acks, |_, _| true, at(t0, 100)), None, "nothing waits");
    }

    #[test]
    fn settle_all_releases_every_waiting_write() {
        let t0 = Instant::now();
        let mut waits = AckWaits::new(TIMEOUT);
        assert_eq!(waits.settle_all(), None);
        waits.add(2, 1, vec![A], t0);
        waits.add(9, 3, vec![A], t0);
        assert_eq!(waits.settle_all(), Some(9));
        assert_eq!(waits.next_wake(), None);
    }

    mod props {
        use proptest::prelude::*;

        use super::*;

        #[derive(Clone, Debug)]
        enum Step {
            Send { members: Vec<bool> },
            Ack { member: usize, seq: u64 },
            Kill { member: usize },
            Wait { ms: u64 },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                proptest::collection::vec(any::<bool>(), 3).prop_map(|members| Step::Send { members }),
                (0usize..3, 0u64..12).prop_map(|(member, seq)| Step::Ack { member, seq }),
                (0usize..3).prop_map(|member| Step::Kill { member }),
                (0u64..200).prop_map(|ms| Step::Wait { ms }),
            ]
        }

        proptest! {
            /// Against a model: a write is settled exactly when every member of its batch that is
            /// still alive acknowledged its seq (or its deadline passed), and settling is in order.
            #[test]
            fn settles_like_the_model(steps in proptest::collection::vec(step(), 1..60)) {
                let t0 = Instant::now();
                let mut now = t0;
                let (mut waits, mut acks) = (AckWaits::new(TIMEOUT), Acks::default());
                let mut alive = [true; 3];
                let mut model: Vec<(u64, u64, Vec<usize>, Instant)> = Vec::new(); // (write, seq, members, deadline)
                let (mut write, mut seq, mut acked) = (0u64, 0u64, [0u64; 3]);
                for step in steps {
                    match step {
                        Step::Send { members } => {
                            write += 2;
                            seq += 1;
                            let members: Vec<usize> = (0..3).filter(|&m| members[m] && alive[m]).collect();
                            waits.add(write, seq, members.iter().map(|&m| (m as u64, 1)).collect(), now);
                            model.push((write, seq, members, now + TIMEOUT));
                        }
                        Step::Ack { member, seq: s } => {
                            let s = s.min(seq);
                            acks.ack(member as u64, 1, s, seq);
                            acked[member] = acked[member].max(s);
                        }
                        Step::Kill { member } => alive[member] = false,
                        Step::Wait { ms } => now += Duration::from_millis(ms),
                    }
                    let alive_now = alive;
                    waits.settle(&acks, |node, _| alive_now[node as usize], now);
                    let done = |(_, s, members, deadline): &(u64, u64, Vec<usize>, Instant)| {
                        now >= *deadline || members.iter().all(|&m| !alive[m] || acked[m] >= *s)
                    };
                    let expected = model.iter().take_while(|b| done(b)).last().map_or(0, |b| b.0);
                    prop_assert_eq!(waits.settled(), expected);
                }
            }
        }
    }
}
