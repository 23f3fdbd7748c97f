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

    /// Datagrams held for retransmission.
    pub fn held_datagrams(&self) -> usize {
        self.held.len()
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
    /// State of the generator of the gaps' NAK jitter (splitmix64): seeded by the caller, so a
    /// simulation replays exactly.
    jitter_state: u64,
}

impl ReceiveWindow {
    /// `first_seq`: the first seq we expect from this sender (the first one we heard, or the
    /// high_seq of its Greeting + 1: we never ask for what came before we joined — state transfer
    /// covers it). `seed` seeds the jitter of first NAKs.
    pub fn new(first_seq: u64, seed: u64) -> Self {
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
            jitter_state: seed,
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

    fn next_jitter(&mut self) -> u16 {
        self.jitter_state = self.jitter_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.jitter_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 48) as u16
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
        let jitter = self.next_jitter();
        self.track(start, Gap { end, at: now, naks: 0, jitter });
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
mod tests;
