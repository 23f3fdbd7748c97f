//! Reliable delivery over UDP multicast (docs/design.md §3.7): per-sender sequence numbers, negative
//! acknowledgements for gaps, bounded retransmit buffers, and cumulative acknowledgements.
//!
//! Receivers apply datagrams as they arrive (ops commute), so this module only tracks which
//! sequence numbers of a sender are missing and when to ask for them; the engine does the I/O.
//! What can no longer be repaired from the sender's buffer is left to an anti-entropy sync
//! (`needs_sync`, then `synced`). Receivers also say how far they have a sender's stream
//! (`ReceiveWindow::take_ack`, coalesced), and the sender keeps what each member acknowledged
//! (`Acks`). Plain data structures: no clock, no sockets, no locks.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far beyond the window start a receiver tracks missing seqs one by one. A datagram further
/// ahead (a sender back from a partition, or a buggy or hostile one jumping to 2^60) leaves
/// everything missing before it to a sync, and a heartbeat claiming more only marks a sync as
/// needed: per-sender memory stays bounded (at most `MAX_SPAN` gaps) whatever the sender says.
pub const MAX_SPAN: u64 = 1 << 16;

/// Most ranges in one NAK: at 16 bytes each they fit in one datagram (`wire::MAX_DATAGRAM`) with
/// the header and sealing overhead.
pub const MAX_NAK_RANGES: usize = 64;

/// Retries wait 2×, 4×, … up to 2^MAX_BACKOFF_SHIFT × the NAK delay: a sender that is slow to
/// answer is not flooded, and a lost retransmission is still asked for again soon.
const MAX_BACKOFF_SHIFT: u32 = 5;

/// `t + d`, or `t` if that is beyond what an `Instant` can hold (absurd delays never panic).
fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d).unwrap_or(t)
}

/// Sender side: recent datagrams kept for retransmission, bounded by count and bytes.
#[derive(Debug)]
pub struct SendBuffer {
    last_seq: u64,
    /// Ascending by seq.
    held: VecDeque<(u64, Arc<[u8]>)>,
    bytes: usize,
    max_datagrams: usize,
    max_bytes: usize,
}

impl SendBuffer {
    pub fn new(max_datagrams: usize, max_bytes: usize) -> Self {
        SendBuffer { last_seq: 0, held: VecDeque::new(), bytes: 0, max_datagrams, max_bytes }
    }

    /// Allocates 1, 2, 3…
    pub fn next_seq(&mut self) -> u64 {
        self.last_seq += 1;
        self.last_seq
    }

    /// Bytes held for retransmission.
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Last allocated seq (0 if none): what heartbeats announce.
    pub fn high_seq(&self) -> u64 {
        self.last_seq
    }

    /// Keeps `datagram` for retransmission, evicting the oldest beyond the bounds.
    pub fn keep(&mut self, seq: u64, datagram: Arc<[u8]>) {
        // Usually an append; a datagram kept late (encoded on another thread) still goes in order.
        let at = self.held.partition_point(|(s, _)| *s < seq);
        if self.held.get(at).is_some_and(|(s, _)| *s == seq) {
            return;
        }
        self.bytes += datagram.len();
        self.held.insert(at, (seq, datagram));
        while self.held.len() > self.max_datagrams || self.bytes > self.max_bytes {
            let Some((_, old)) = self.held.pop_front() else { break };
            self.bytes -= old.len();
        }
    }

    /// Drops the datagrams up to `seq`: every receiver has them.
    pub fn trim_through(&mut self, seq: u64) {
        while let Some((_, old)) = self.held.front().filter(|(s, _)| *s <= seq) {
            self.bytes -= old.len();
            self.held.pop_front();
        }
    }

    pub fn get(&self, seq: u64) -> Option<Arc<[u8]>> {
        let i = self.held.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        Some(self.held[i].1.clone())
    }

    /// Oldest seq still held (`high_seq() + 1` if none): the `oldest` of a `Gone` reply.
    pub fn oldest(&self) -> u64 {
        self.held.front().map_or(self.last_seq + 1, |(s, _)| *s)
    }

    /// Answers a NAK: the datagrams still held for these ranges (at most `limit` of them, so a
    /// NAK asking for huge ranges costs bounded work), and whether some requested seqs are gone
    /// (→ reply `Gone { oldest }`). Seqs not allocated yet are ignored, not reported gone.
    pub fn resend(&self, ranges: &[(u64, u64)], limit: usize) -> (Vec<Arc<[u8]>>, bool) {
        let oldest = self.oldest();
        let mut datagrams = Vec::new();
        let mut gone = false;
        for &(from, to) in ranges {
            let (from, to) = (from.max(1), to.min(self.last_seq));
            if from > to {
                continue;
            }
            gone |= from < oldest;
            let start = self.held.partition_point(|(s, _)| *s < from);
            for (_, datagram) in self.held.range(start..).take_while(|(s, _)| *s <= to) {
                if datagrams.len() == limit {
                    break;
                }
                datagrams.push(datagram.clone());
            }
        }
        (datagrams, gone)
    }
}

/// Whether a received datagram should be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Receipt {
    New,
    Duplicate,
}

/// Missing seqs `start..=end` (keyed by `start` in `ReceiveWindow::gaps`).
#[derive(Clone, Copy, Debug)]
struct Gap {
    end: u64,
    /// When found missing while `naks == 0`; afterwards when the next NAK is due.
    at: Instant,
    naks: u32,
    /// Extra first-NAK delay, in 1/65536 of `nak_delay`: N receivers missing the same datagram
    /// don't all NAK at the same instant.
    jitter: u16,
}

impl Gap {
    fn due(&self, nak_delay: Duration) -> Instant {
        if self.naks > 0 {
            return self.at;
        }
        let extra = nak_delay.mul_f64(f64::from(self.jitter) / 65536.0);
        later(self.at, nak_delay.saturating_add(extra))
    }
}

/// Receiver side: what we have of one sender's stream (one incarnation).
#[derive(Debug)]
pub struct ReceiveWindow {
    /// Window start: every seq <= base is received, or left to a sync (`unsynced`).
    base: u64,
    /// Highest seq known to exist (received, or announced by a heartbeat). `high - base <= MAX_SPAN`.
    high: u64,
    /// Missing seqs in (base, high] still repaired by NAK, disjoint, by start.
    gaps: BTreeMap<u64, Gap>,
    /// `(gap.at, start)` of every gap: due gaps are found without scanning the window.
    timers: BTreeSet<(Instant, u64)>,
    /// Seqs in `gaps`.
    missing: u64,
    /// Seqs left to an anti-entropy sync, as one inclusive hull: a superset is harmless, the sync
    /// covers them anyway.
    unsynced: Option<(u64, u64)>,
    /// Highest `contiguous()` acknowledged to the sender so far.
    acked: u64,
    /// The last seq the sender asked us to acknowledge (an `AckRequest`, or a `Data` asking for an ack), if it asked.
    ack_asked: Option<u64>,
    /// The sender asked: an ack is due at once, whatever we have.
    ack_now: bool,
}

impl ReceiveWindow {
    /// `first_seq`: the first seq we expect from this sender (the first one we heard, or the
    /// high_seq of its Greeting + 1: we never ask for what came before we joined — state transfer
    /// covers it).
    pub fn new(first_seq: u64) -> Self {
        let base = first_seq.saturating_sub(1);
        ReceiveWindow {
            base,
            high: base,
            gaps: BTreeMap::new(),
            timers: BTreeSet::new(),
            missing: 0,
            unsynced: None,
            acked: 0,
            ack_asked: None,
            ack_now: false,
        }
    }

    /// Records `seq`; seqs below the window start (received, or left to a sync) are `Duplicate`.
    pub fn receive(&mut self, seq: u64, now: Instant) -> Receipt {
        if seq <= self.base {
            return Receipt::Duplicate;
        }
        if seq > self.high {
            if seq - self.base > MAX_SPAN {
                // Too far ahead to track what is missing before it one by one: a sync covers it.
                let high = self.high;
                self.abandon(high);
                self.leave_to_sync(high + 1, seq - 1);
            } else {
                self.add_gap(self.high + 1, seq - 1, now);
            }
            self.high = seq;
        } else if !self.fill(seq) {
            return Receipt::Duplicate;
        }
        self.settle();
        Receipt::New
    }

    /// From heartbeats: reveals a lost tail. A claim beyond `MAX_SPAN` only marks a sync as
    /// needed; the window keeps tracking what does arrive.
    pub fn note_high(&mut self, high_seq: u64, now: Instant) {
        if high_seq <= self.high {
            return;
        }
        if high_seq - self.base > MAX_SPAN {
            self.leave_to_sync(self.high + 1, high_seq);
        } else {
            self.add_gap(self.high + 1, high_seq, now);
            self.high = high_seq;
        }
    }

    /// Ranges to NAK now (each missing seq is first NAKed after a random delay in
    /// [nak_delay, 2*nak_delay), then again after a backoff doubling up to a cap); at most
    /// `max_seqs` seqs and `MAX_NAK_RANGES` ranges in total. Empty when nothing is due.
    pub fn due_naks(&mut self, now: Instant, nak_delay: Duration, max_seqs: u64) -> Vec<(u64, u64)> {
        let mut ranges = Vec::new();
        let mut budget = max_seqs;
        // Timers of gaps not NAKed yet hold their discovery time, which sorts before their due
        // time: only gaps found within the last 2 × nak_delay are looked at without being due.
        for &(_, start) in self.timers.range(..=(now, u64::MAX)) {
            if budget == 0 || ranges.len() == MAX_NAK_RANGES {
                break;
            }
            let Some(gap) = self.gaps.get(&start) else { continue };
            if gap.due(nak_delay) <= now {
                let end = gap.end.min(start.saturating_add(budget - 1));
                budget -= end - start + 1;
                ranges.push((start, end));
            }
        }
        for &(start, end) in &ranges {
            let Some(gap) = self.gaps.get(&start).copied() else { continue };
            self.untrack(start, gap.at);
            if end < gap.end {
                // Beyond this NAK's budget: the rest stays due for the next one.
                self.track(end + 1, gap);
            }
            let naks = gap.naks.saturating_add(1);
            let backoff = nak_delay.saturating_mul(1 << naks.min(MAX_BACKOFF_SHIFT));
            self.track(start, Gap { end, at: later(now, backoff), naks, ..gap });
        }
        ranges.sort_unstable();
        // Adjacent ranges (a gap split by an earlier budget) go out as one.
        ranges.dedup_by(|next, prev| {
            let adjacent = prev.1.checked_add(1) == Some(next.0);
            if adjacent {
                prev.1 = next.1;
            }
            adjacent
        });
        ranges
    }

    /// The sender answered `Gone { oldest }`: seqs < oldest can't be repaired, so they are no
    /// longer NAKed and a sync is needed (if any of them was still missing).
    pub fn gone(&mut self, oldest: u64) {
        self.abandon(oldest.saturating_sub(1));
    }

    pub fn needs_sync(&self) -> bool {
        self.unsynced.is_some()
    }

    /// A sync with this sender ended: everything <= high_seq is covered. Clears `needs_sync`
    /// unless seqs left to a sync remain above (a sync older than the last `Gone`).
    pub fn synced(&mut self, high_seq: u64) {
        self.drop_gaps_through(high_seq);
        self.high = self.high.max(high_seq);
        self.settle();
        self.unsynced = match self.unsynced {
            Some((lo, hi)) if hi > high_seq => Some((lo.max(high_seq + 1), hi)),
            _ => None,
        };
    }

    /// Highest seq such that all seqs <= it are received or covered by a sync.
    pub fn contiguous(&self) -> u64 {
        match self.unsynced {
            Some((lo, _)) if lo <= self.base => lo - 1,
            _ => self.base,
        }
    }

    /// Known-missing seqs still being repaired by NAK (for stats; those left to a sync are not
    /// counted: see `needs_sync`).
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// Gaps NAKed before and waiting out their backoff are due again now: the sender is waiting
    /// for them (it repeats its `AckRequest` at its own pace), so the backoff that spares a busy
    /// sender would only let its wait run out.
    pub fn expedite(&mut self, now: Instant) {
        let waiting: Vec<(u64, Gap)> =
            self.gaps.iter().filter(|(_, g)| g.naks > 0 && g.at > now).map(|(s, g)| (*s, *g)).collect();
        for (start, gap) in waiting {
            self.untrack(start, gap.at);
            self.track(start, Gap { at: now, ..gap });
        }
    }

    /// The sender asks for an ack of everything up to `last_seq` (it is leaving, or its writes wait): like a heartbeat,
    /// this reveals a lost tail (NAKed as usual), and an ack is due at once.
    pub fn ask_ack(&mut self, last_seq: u64, now: Instant) {
        self.note_high(last_seq, now);
        self.ack_asked = Some(self.ack_asked.map_or(last_seq, |asked| asked.max(last_seq)));
        self.ack_now = true;
    }

    /// The cumulative ack to send now (`contiguous()`), if one is due: at once after `ask_ack`,
    /// and again as soon as everything asked for is here; otherwise only with `periodic` (the
    /// caller's tick), and only if `contiguous()` moved since the last ack. So acks are coalesced:
    /// at most one per periodic call, plus the ones the sender asked for.
    pub fn take_ack(&mut self, periodic: bool) -> Option<u64> {
        let have = self.contiguous();
        if !(self.asked_ack_due() || (periodic && have > self.acked)) {
            return None;
        }
        self.ack_now = false;
        self.acked = self.acked.max(have);
        Some(have)
    }

    /// An ack the sender asked for is due: at once after `ask_ack`, or because what it asked
    /// for is now complete.
    pub fn asked_ack_due(&self) -> bool {
        let have = self.contiguous();
        self.ack_now || self.ack_asked.is_some_and(|asked| have >= asked && self.acked < asked)
    }

    fn track(&mut self, start: u64, gap: Gap) {
        self.timers.insert((gap.at, start));
        self.gaps.insert(start, gap);
    }

    fn untrack(&mut self, start: u64, at: Instant) {
        self.gaps.remove(&start);
        self.timers.remove(&(at, start));
    }

    fn add_gap(&mut self, start: u64, end: u64, now: Instant) {
        if start > end {
            return;
        }
        self.track(start, Gap { end, at: now, naks: 0, jitter: rand::random() });
        self.missing += end - start + 1;
    }

    /// Removes `seq` from the gap holding it; false if no gap holds it (a duplicate).
    fn fill(&mut self, seq: u64) -> bool {
        let Some((&start, &gap)) = self.gaps.range(..=seq).next_back() else { return false };
        if gap.end < seq {
            return false;
        }
        self.untrack(start, gap.at);
        if start < seq {
            self.track(start, Gap { end: seq - 1, ..gap });
        }
        if seq < gap.end {
            self.track(seq + 1, gap);
        }
        self.missing -= 1;
        true
    }

    /// Forgets the missing seqs <= `through`; returns the first and last of them.
    fn drop_gaps_through(&mut self, through: u64) -> Option<(u64, u64)> {
        let mut dropped: Option<(u64, u64)> = None;
        while let Some(entry) = self.gaps.first_entry() {
            if *entry.key() > through {
                break;
            }
            let (start, gap) = entry.remove_entry();
            self.timers.remove(&(gap.at, start));
            let last = gap.end.min(through);
            if gap.end > through {
                self.track(through + 1, gap);
            }
            self.missing -= last - start + 1;
            dropped = Some((dropped.map_or(start, |(first, _)| first), last));
        }
        dropped
    }

    /// Stops NAKing the missing seqs <= `through` and leaves them to a sync.
    fn abandon(&mut self, through: u64) {
        if let Some((first, last)) = self.drop_gaps_through(through) {
            self.leave_to_sync(first, last);
        }
    }

    fn leave_to_sync(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        self.unsynced = Some(match self.unsynced {
            Some((lo, hi)) => (lo.min(first), hi.max(last)),
            None => (first, last),
        });
    }

    /// Moves the window start up to the first missing seq.
    fn settle(&mut self) {
        self.base = self.gaps.keys().next().map_or(self.high, |&start| start - 1);
    }
}

/// Sender side: how far each receiver acknowledged this node's stream (cumulative `Ack`s), per
/// (node, incarnation). What every live member acknowledged has been applied everywhere: a
/// leaving node waits for its last seq to get there (`lagging`), and `acked_by_all` is what
/// acknowledged writes and an early trim of the retransmit buffer can build on.
#[derive(Debug, Default)]
pub struct Acks {
    /// node → (incarnation, highest seq acknowledged).
    by_node: HashMap<u64, (u64, u64)>,
}

impl Acks {
    /// Records that (`node`, `incarnation`) has every seq up to `high_seq`. Acks never go back,
    /// an ack from another incarnation starts over, and an ack beyond `sent` (the last seq sent)
    /// counts as `sent`. Returns whether what that node acknowledged moved.
    pub fn ack(&mut self, node: u64, incarnation: u64, high_seq: u64, sent: u64) -> bool {
        let high_seq = high_seq.min(sent);
        let entry = self.by_node.entry(node).or_insert((incarnation, 0));
        if entry.0 != incarnation {
            *entry = (incarnation, 0);
        }
        if high_seq <= entry.1 {
            return false;
        }
        entry.1 = high_seq;
        true
    }

    /// Highest seq (`node`, `incarnation`) acknowledged (0: none).
    pub fn acked(&self, node: u64, incarnation: u64) -> u64 {
        self.by_node.get(&node).filter(|(i, _)| *i == incarnation).map_or(0, |(_, seq)| *seq)
    }

    /// A member left or died: what it acknowledged no longer matters.
    pub fn forget(&mut self, node: u64) {
        self.by_node.remove(&node);
    }

    /// The highest seq that every one of `members` (node, incarnation) acknowledged; `None` for
    /// no members.
    pub fn acked_by_all(&self, members: impl IntoIterator<Item = (u64, u64)>) -> Option<u64> {
        members.into_iter().map(|(node, incarnation)| self.acked(node, incarnation)).min()
    }

    /// Those of `members` (node, incarnation) that have not acknowledged `seq` yet.
    pub fn lagging(&self, seq: u64, members: impl IntoIterator<Item = (u64, u64)>) -> Vec<u64> {
        members
            .into_iter()
            .filter(|&(node, incarnation)| self.acked(node, incarnation) < seq)
            .map(|(node, _)| node)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_millis(10);

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn datagram(seq: u64) -> Arc<[u8]> {
        Arc::from(seq.to_be_bytes().as_slice())
    }

    fn seq_of(datagram: &[u8]) -> u64 {
        u64::from_be_bytes(datagram[..8].try_into().unwrap())
    }

    #[test]
    fn in_order() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        for seq in 1..=100 {
            assert_eq!(w.receive(seq, t0), Receipt::New);
        }
        assert_eq!(w.contiguous(), 100);
        assert_eq!(w.missing(), 0);
        assert!(w.due_naks(ms(t0, 1000), D, 100).is_empty());
        assert!(!w.needs_sync());
    }

    #[test]
    fn swap_within_delay_is_not_naked() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(3, t0);
        assert_eq!((w.contiguous(), w.missing()), (1, 1));
        assert!(w.due_naks(ms(t0, 9), D, 100).is_empty());
        assert_eq!(w.receive(2, ms(t0, 9)), Receipt::New);
        assert!(w.due_naks(ms(t0, 100), D, 100).is_empty());
        assert_eq!((w.contiguous(), w.missing()), (3, 0));
    }

    #[test]
    fn gap_naked_after_delay_then_with_backoff() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(5, t0);
        assert!(w.due_naks(t0 + D - Duration::from_nanos(1), D, 100).is_empty());
        // The first NAK comes within [D, 2D).
        let mut t = ms(t0, 20);
        assert_eq!(w.due_naks(t, D, 100), vec![(2, 4)]);
        assert!(w.due_naks(t, D, 100).is_empty());
        for shift in [1, 2, 3, 4, 5, 5, 5] {
            let wait = D * (1 << shift);
            assert!(w.due_naks(t + wait - Duration::from_nanos(1), D, 100).is_empty());
            t += wait;
            assert_eq!(w.due_naks(t, D, 100), vec![(2, 4)], "after waiting {wait:?}");
        }
        // A repair of the middle leaves two ranges, still on the same schedule.
        w.receive(3, t);
        t += D * 32;
        assert_eq!(w.due_naks(t, D, 100), vec![(2, 2), (4, 4)]);
        w.receive(2, t);
        w.receive(4, t);
        assert!(w.due_naks(ms(t0, 100_000), D, 100).is_empty());
        assert_eq!(w.contiguous(), 5);
    }

    #[test]
    fn tail_loss_revealed_by_heartbeat() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(2, t0);
        w.note_high(5, t0);
        w.note_high(4, t0);
        assert_eq!((w.contiguous(), w.missing()), (2, 3));
        assert_eq!(w.due_naks(ms(t0, 20), D, 100), vec![(3, 5)]);
        for seq in 3..=5 {
            assert_eq!(w.receive(seq, ms(t0, 25)), Receipt::New);
        }
        assert_eq!((w.contiguous(), w.missing()), (5, 0));
    }

    #[test]
    fn duplicates() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(10);
        assert_eq!(w.receive(0, t0), Receipt::Duplicate);
        assert_eq!(w.receive(9, t0), Receipt::Duplicate, "before we joined");
        assert_eq!(w.receive(10, t0), Receipt::New);
        assert_eq!(w.receive(10, t0), Receipt::Duplicate);
        assert_eq!(w.receive(13, t0), Receipt::New);
        assert_eq!(w.receive(13, t0), Receipt::Duplicate, "above the window start");
        assert_eq!(w.receive(12, t0), Receipt::New);
        assert_eq!(w.receive(12, t0), Receipt::Duplicate);
        assert_eq!((w.contiguous(), w.missing()), (10, 1));
    }

    #[test]
    fn nak_bounded_in_seqs_and_ranges() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(1000, t0);
        let t = ms(t0, 20);
        assert_eq!(w.due_naks(t, D, 100), vec![(2, 101)]);
        assert_eq!(w.due_naks(t, D, 100), vec![(102, 201)], "the rest stays due");
        assert!(w.due_naks(t, D, 0).is_empty());

        let mut w = ReceiveWindow::new(1);
        for seq in (1..=401).step_by(2) {
            w.receive(seq, t0);
        }
        let naks = w.due_naks(t, D, 1000);
        assert_eq!(naks.len(), MAX_NAK_RANGES);
        assert!(naks.iter().all(|&(from, to)| from == to && from % 2 == 0));
    }

    #[test]
    fn gone_then_synced() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(10, t0);
        w.gone(6);
        assert!(w.needs_sync());
        assert_eq!((w.contiguous(), w.missing()), (1, 4));
        assert_eq!(w.due_naks(ms(t0, 20), D, 100), vec![(6, 9)], "2..=5 no longer NAKed");
        w.synced(3);
        assert!(w.needs_sync(), "a sync older than the Gone doesn't cover 4..=5");
        assert_eq!(w.contiguous(), 3);
        w.synced(5);
        assert!(!w.needs_sync());
        assert_eq!((w.contiguous(), w.missing()), (5, 4));
        for seq in 6..=9 {
            w.receive(seq, t0);
        }
        assert_eq!(w.contiguous(), 10);

        // A late Gone for seqs we have since received asks for nothing.
        w.gone(11);
        assert!(!w.needs_sync());

        // A sync may also cover seqs still NAKed, and beyond.
        w.receive(20, t0);
        w.synced(25);
        assert_eq!((w.contiguous(), w.missing()), (25, 0));
        assert!(w.due_naks(ms(t0, 1000), D, 100).is_empty());
        assert_eq!(w.receive(22, t0), Receipt::Duplicate);
    }

    #[test]
    fn huge_jumps_stay_bounded() {
        let t0 = Instant::now();
        let t = ms(t0, 1000);
        // Within the span, every missing seq is tracked.
        let mut w = ReceiveWindow::new(1);
        w.receive(MAX_SPAN, t0);
        assert_eq!(w.missing(), MAX_SPAN - 1);
        assert!(!w.needs_sync());

        // Beyond it: left to a sync, nothing tracked or NAKed.
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(5, t0);
        assert_eq!(w.receive(1 << 60, t0), Receipt::New);
        assert!(w.needs_sync());
        assert_eq!((w.contiguous(), w.missing()), (1, 0));
        assert!(w.due_naks(t, D, u64::MAX).is_empty());
        assert_eq!(w.receive((1 << 60) + 1, t0), Receipt::New);
        assert_eq!(w.receive(3, t0), Receipt::Duplicate, "left to the sync");
        w.synced(1 << 60);
        assert!(!w.needs_sync());
        assert_eq!(w.contiguous(), (1 << 60) + 1);

        // A heartbeat's wild claim only asks for a sync; real traffic keeps flowing.
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.note_high(u64::MAX, t0);
        assert!(w.needs_sync());
        assert_eq!((w.contiguous(), w.missing()), (1, 0));
        assert!(w.due_naks(t, D, u64::MAX).is_empty());
        assert_eq!(w.receive(2, t0), Receipt::New);
        assert_eq!(w.receive(2, t0), Receipt::Duplicate);
        assert_eq!(w.contiguous(), 1, "the claimed seqs are left to the sync");
        w.synced(u64::MAX);
        assert!(!w.needs_sync());
        assert_eq!(w.receive(u64::MAX, t0), Receipt::Duplicate);
    }

    #[test]
    fn a_waiting_sender_gets_its_gaps_nakked_again_at_once() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(5, t0);
        w.receive(9, t0);
        let t = ms(t0, 20);
        assert_eq!(w.due_naks(t, D, 100), vec![(2, 4), (6, 8)]);
        // Both wait out their backoff; a gap found now is not NAKed before its reorder delay.
        w.receive(12, t);
        assert!(w.due_naks(ms(t0, 21), D, 100).is_empty());
        w.expedite(ms(t0, 21));
        assert_eq!(w.due_naks(ms(t0, 21), D, 100), vec![(2, 4), (6, 8)]);
        // And the backoff goes on from there.
        assert!(w.due_naks(ms(t0, 22), D, 100).is_empty());
    }

    #[test]
    fn acks_are_coalesced_and_given_at_once_when_asked() {
        let t0 = Instant::now();
        let mut w = ReceiveWindow::new(1);
        assert_eq!(w.take_ack(true), None, "nothing received, nothing to say");
        for seq in 1..=3 {
            w.receive(seq, t0);
        }
        assert_eq!(w.take_ack(false), None, "not asked: only on the tick");
        assert_eq!(w.take_ack(true), Some(3), "one ack for three datagrams");
        assert_eq!(w.take_ack(true), None, "nothing moved since");
        w.receive(5, t0);
        assert_eq!(w.take_ack(true), None, "4 is missing: still 3");

        // The sender leaves with 6 as its last seq: an ack at once (of what we have), the lost
        // tail NAKed, and an ack again as soon as everything up to 6 is here.
        w.ask_ack(6, t0);
        assert_eq!(w.missing(), 2);
        assert_eq!(w.take_ack(false), Some(3), "asked: at once, even if nothing moved");
        assert_eq!(w.take_ack(false), None);
        assert_eq!(w.due_naks(ms(t0, 20), D, 100), vec![(4, 4), (6, 6)]);
        w.receive(4, t0);
        assert_eq!(w.take_ack(false), None, "5 but not 6: not complete yet");
        w.receive(6, t0);
        assert_eq!(w.take_ack(false), Some(6), "complete: at once");
        assert_eq!(w.take_ack(true), None);
        w.ask_ack(6, t0);
        assert_eq!(w.take_ack(false), Some(6), "asked again (our ack was lost): again");

        // What is left to a sync is not acknowledged before the sync.
        let mut w = ReceiveWindow::new(1);
        w.receive(1, t0);
        w.receive(4, t0);
        w.gone(4);
        w.ask_ack(4, t0);
        assert_eq!(w.take_ack(false), Some(1));
        w.synced(3);
        assert_eq!(w.take_ack(false), Some(4), "the sync completed the stream");
    }

    #[test]
    fn acks_of_the_sender_per_member() {
        let mut a = Acks::default();
        assert_eq!(a.acked_by_all([]), None);
        assert!(a.ack(1, 10, 5, 100));
        assert!(!a.ack(1, 10, 4, 100), "acks never go back");
        assert!(!a.ack(1, 10, 5, 100));
        assert!(a.ack(2, 20, 500, 7), "capped at what was sent");
        assert_eq!((a.acked(1, 10), a.acked(2, 20), a.acked(1, 11), a.acked(3, 30)), (5, 7, 0, 0));
        assert_eq!(a.acked_by_all([(1, 10), (2, 20)]), Some(5));
        assert_eq!(a.acked_by_all([(1, 10), (2, 20), (3, 30)]), Some(0));
        assert_eq!(a.lagging(6, [(1, 10), (2, 20), (3, 30)]), vec![1, 3]);
        assert!(a.lagging(5, [(1, 10), (2, 20)]).is_empty());
        assert!(a.lagging(0, [(3, 30)]).is_empty(), "seq 0: nothing to acknowledge");
        assert!(a.ack(1, 11, 2, 100), "another incarnation starts over");
        assert_eq!((a.acked(1, 10), a.acked(1, 11)), (0, 2));
        a.forget(2);
        assert_eq!(a.acked(2, 20), 0);
    }

    #[test]
    fn send_buffer_evicts_by_count_and_bytes() {
        let mut b = SendBuffer::new(3, 1 << 20);
        assert_eq!((b.high_seq(), b.oldest()), (0, 1));
        for expected in 1..=5 {
            let seq = b.next_seq();
            assert_eq!(seq, expected);
            b.keep(seq, datagram(seq));
        }
        assert_eq!((b.high_seq(), b.oldest()), (5, 3));
        assert!(b.get(2).is_none());
        assert_eq!(seq_of(&b.get(5).unwrap()), 5);

        let mut b = SendBuffer::new(100, 250);
        for _ in 0..3 {
            let seq = b.next_seq();
            b.keep(seq, Arc::from(vec![seq as u8; 100]));
        }
        assert_eq!(b.oldest(), 2);
        assert_eq!(b.get(3).unwrap()[0], 3);
        // A datagram over the byte budget on its own is not kept either.
        let seq = b.next_seq();
        b.keep(seq, Arc::from(vec![0; 300]));
        assert_eq!(b.oldest(), 5, "empty: high_seq + 1");
    }

    #[test]
    fn resend_limit_and_gone() {
        let mut b = SendBuffer::new(5, 1 << 20);
        for _ in 0..10 {
            let seq = b.next_seq();
            b.keep(seq, datagram(seq));
        }
        let seqs =
            |(datagrams, gone): (Vec<Arc<[u8]>>, bool)| (datagrams.iter().map(|d| seq_of(d)).collect::<Vec<_>>(), gone);
        assert_eq!(seqs(b.resend(&[(1, 3)], 10)), (vec![], true));
        assert_eq!(seqs(b.resend(&[(4, 8)], 10)), (vec![6, 7, 8], true));
        assert_eq!(seqs(b.resend(&[(6, 10)], 2)), (vec![6, 7], false));
        assert_eq!(seqs(b.resend(&[(7, 7), (9, 10)], 10)), (vec![7, 9, 10], false));
        assert_eq!(seqs(b.resend(&[(0, u64::MAX)], 3)), (vec![6, 7, 8], true));
        assert_eq!(seqs(b.resend(&[(11, 20)], 10)), (vec![], false), "not sent yet");
        assert_eq!(seqs(b.resend(&[(10, 10)], 0)), (vec![], false));
    }

    /// 10,000 datagrams through a channel losing 20% of everything (data, retransmissions,
    /// NAKs, heartbeats) with reordering, on a simulated clock: all of them get through.
    #[test]
    fn lossy_channel_delivers_everything() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;

        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Event {
            Data(u64),
            Heartbeat(u64),
            Nak(Vec<(u64, u64)>),
        }

        const N: u64 = 10_000;
        const STEP_US: u64 = 100; // one datagram sent per step
        const NAK_DELAY: Duration = Duration::from_millis(5);

        let mut rng = StdRng::seed_from_u64(7);
        let t0 = Instant::now();
        let mut sender = SendBuffer::new(16_384, 1 << 24);
        let mut receiver = ReceiveWindow::new(1);
        let mut in_flight = BinaryHeap::new();
        let send = |rng: &mut StdRng, in_flight: &mut BinaryHeap<_>, now_us: u64, event| {
            if !rng.random_bool(0.2) {
                // 0.5 to 3 ms of latency: datagrams overtake each other.
                in_flight.push(Reverse((now_us + rng.random_range(500..3000), event)));
            }
        };
        let (mut received, mut naked_seqs) = (0, 0);
        let mut now_us = 0;
        while receiver.contiguous() < N {
            now_us += STEP_US;
            assert!(now_us < 60_000_000, "not repaired after 60 s: {} missing", receiver.missing());
            let now = t0 + Duration::from_micros(now_us);
            if sender.high_seq() < N {
                let seq = sender.next_seq();
                sender.keep(seq, datagram(seq));
                send(&mut rng, &mut in_flight, now_us, Event::Data(seq));
            }
            if now_us % 20_000 == 0 {
                send(&mut rng, &mut in_flight, now_us, Event::Heartbeat(sender.high_seq()));
            }
            while in_flight.peek().is_some_and(|Reverse((at, _))| *at <= now_us) {
                let Reverse((_, event)) = in_flight.pop().unwrap();
                match event {
                    Event::Data(seq) => {
                        if receiver.receive(seq, now) == Receipt::New {
                            received += 1;
                        }
                    }
                    Event::Heartbeat(high) => receiver.note_high(high, now),
                    Event::Nak(ranges) => {
                        let (datagrams, gone) = sender.resend(&ranges, 256);
                        assert!(!gone);
                        for d in datagrams {
                            send(&mut rng, &mut in_flight, now_us, Event::Data(seq_of(&d)));
                        }
                    }
                }
            }
            if now_us % 1000 == 0 {
                let ranges = receiver.due_naks(now, NAK_DELAY, 256);
                naked_seqs += ranges.iter().map(|(from, to)| to - from + 1).sum::<u64>();
                if !ranges.is_empty() {
                    send(&mut rng, &mut in_flight, now_us, Event::Nak(ranges));
                }
            }
        }
        assert_eq!(received, N);
        assert_eq!(receiver.missing(), 0);
        assert!(!receiver.needs_sync());
        // About 2,000 losses, each repaired with probability 0.64 per NAK: no NAK storm.
        assert!(naked_seqs < N / 2, "{naked_seqs} seqs NAKed");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Step {
            Receive(u64),
            NoteHigh(u64),
            Wait(u64),
            Naks(u64),
            AskAck(u64),
            TakeAck(bool),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                4 => (1..300u64).prop_map(Step::Receive),
                1 => (1..300u64).prop_map(Step::NoteHigh),
                1 => (0..100u64).prop_map(Step::Wait),
                1 => (0..50u64).prop_map(Step::Naks),
                1 => (1..300u64).prop_map(Step::AskAck),
                2 => any::<bool>().prop_map(Step::TakeAck),
            ]
        }

        proptest! {
            /// Against a plain set of received seqs: receipts, contiguous, missing, NAKs asking
            /// only for missing seqs, and acks: exactly `contiguous()`, never going back, at once
            /// when asked for and when what was asked for is complete, else at most one a tick.
            #[test]
            fn matches_model(steps in proptest::collection::vec(step(), 1..200)) {
                let mut now = Instant::now();
                let mut w = ReceiveWindow::new(1);
                let mut got = BTreeSet::new();
                let mut high = 0;
                // Acks: the last one given, the highest seq asked for, whether one is owed at once.
                let (mut acked, mut asked, mut owed) = (0, None::<u64>, false);
                for step in steps {
                    match step {
                        Step::Receive(seq) => {
                            let expected = if got.insert(seq) { Receipt::New } else { Receipt::Duplicate };
                            prop_assert_eq!(w.receive(seq, now), expected);
                            high = high.max(seq);
                        }
                        Step::NoteHigh(seq) => {
                            w.note_high(seq, now);
                            high = high.max(seq);
                        }
                        Step::AskAck(seq) => {
                            w.ask_ack(seq, now);
                            high = high.max(seq);
                            asked = asked.max(Some(seq));
                            owed = true;
                        }
                        Step::TakeAck(periodic) => {
                            let have = (1..).find(|s| !got.contains(s)).unwrap() - 1;
                            let completes = asked.is_some_and(|a| have >= a && acked < a);
                            let due = owed || completes || (periodic && have > acked);
                            let ack = w.take_ack(periodic);
                            prop_assert_eq!(ack, due.then_some(have));
                            if let Some(ack) = ack {
                                prop_assert!(ack >= acked, "acks never go back");
                                acked = ack;
                                owed = false;
                            }
                        }
                        Step::Wait(ms) => now += Duration::from_millis(ms),
                        Step::Naks(max) => {
                            let naks = w.due_naks(now, D, max);
                            prop_assert!(naks.iter().map(|(a, b)| b - a + 1).sum::<u64>() <= max);
                            prop_assert!(naks.windows(2).all(|p| p[0].1 + 1 < p[1].0));
                            for &(from, to) in &naks {
                                prop_assert!(from <= to && to <= high);
                                prop_assert!(got.range(from..=to).next().is_none());
                            }
                        }
                    }
                    let contiguous = (1..).find(|s| !got.contains(s)).unwrap() - 1;
                    prop_assert_eq!(w.contiguous(), contiguous);
                    prop_assert_eq!(w.missing(), high - got.len() as u64);
                    prop_assert!(!w.needs_sync());
                }
            }

            /// The sender's `Acks` against a model keeping every ack: a member's acknowledged
            /// seq is the highest it sent (capped at what was sent) since it was last forgotten,
            /// `acked_by_all` the least of them, `lagging` those below a seq.
            #[test]
            fn acks_match_model(
                acks in proptest::collection::vec((0..4u64, 0..2u64, 0..60u64, any::<bool>()), 1..100),
                sent in 0..60u64,
                seq in 0..60u64,
            ) {
                let mut a = Acks::default();
                let mut model: Vec<(u64, u64, u64)> = Vec::new();
                for (node, incarnation, high_seq, forget) in acks {
                    if forget {
                        a.forget(node);
                        model.retain(|(n, _, _)| *n != node);
                        continue;
                    }
                    let before = a.acked(node, incarnation);
                    let moved = a.ack(node, incarnation, high_seq, sent);
                    // Another incarnation of the node replaces the one acknowledged before.
                    model.retain(|(n, i, _)| *n != node || *i == incarnation);
                    model.push((node, incarnation, high_seq.min(sent)));
                    prop_assert_eq!(moved, a.acked(node, incarnation) > before);
                }
                let expected = |node: u64, incarnation: u64| {
                    let acks = model.iter().filter(|(n, i, _)| (*n, *i) == (node, incarnation));
                    acks.map(|(_, _, s)| *s).max().unwrap_or(0)
                };
                let members: Vec<(u64, u64)> = (0..4).flat_map(|n| (0..2).map(move |i| (n, i))).collect();
                for &(node, incarnation) in &members {
                    prop_assert_eq!(a.acked(node, incarnation), expected(node, incarnation));
                }
                for pick in [&members[..0], &members[..3], &members[2..5], &members[..]] {
                    let least = pick.iter().map(|&(n, i)| expected(n, i)).min();
                    prop_assert_eq!(a.acked_by_all(pick.iter().copied()), least);
                    let lagging: Vec<u64> =
                        pick.iter().filter(|&&(n, i)| expected(n, i) < seq).map(|(n, _)| *n).collect();
                    prop_assert_eq!(a.lagging(seq, pick.iter().copied()), lagging);
                }
            }
        }
    }
}
