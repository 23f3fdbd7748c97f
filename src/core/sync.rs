//! State transfer and anti-entropy (docs/how-it-works.md "State transfer"): when the node pulls
//! from whom, what a pull brings, and what a node answers to a pull or a fetch. The bytes travel over TCP in the
//! driver (driver/transfer.rs), or in memory in the simulator.
//!
//! A node asks a peer for `SyncRequest(Full)` when it joins, or `SyncRequest(Digest)` with its
//! per-bucket digests to repair what multicast lost. The peer answers with `SyncChunk` frames
//! (the entries of every bucket, or of the buckets that differ), then `SyncEnd` carrying its
//! sequence number when its snapshot began: everything it sent before that is now covered. A
//! `Query` for one sid gets one `Answer` frame with the entry, whatever its size: how a node
//! fetches an entry too large for the datagram of a UDP answer (see miss.rs).

use std::net::SocketAddr;
use std::time::Duration;

use super::api::{Now, Output};
use super::membership::MemberState;
use super::node::{Bootstrap, Node};
use crate::clock::Clock;
use crate::events::Level;
use crate::table::{Entry, Table};
use crate::wire::{Message, Reply, SyncMode};

/// Buckets of the anti-entropy digest: 8 KiB of digest, and a difference in one session costs
/// a transfer of about 1/1024 of the table.
pub const DIGEST_BUCKETS: usize = 1024;
/// Target size of one `SyncChunk` frame.
const CHUNK_BYTES: usize = 256 * 1024;
/// At most one anti-entropy sync with the same peer this often, so a peer whose heartbeats
/// claim more than its syncs deliver cannot keep us syncing in a loop.
const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Merges an entry from another node, as a replicated write.
pub fn merge(table: &Table, clock: &Clock, sid: &str, entry: &Entry) {
    clock.observe(entry.newest_version());
    table.merge(sid, entry);
}

/// What a finished pull brought.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pulled {
    pub entries: usize,
    pub bytes: usize,
    /// The peer's sequence number when its snapshot began.
    pub high_seq: u64,
    /// Senders the peer remembers that are not live members (see `Message::SyncEnd`).
    pub departed: Vec<(u64, u64, u64)>,
}

/// The request of a pull: the whole table, or the digests of ours.
pub fn request(table: &Table, target: u64, full: bool, now_ms: u64) -> Message {
    let mode = if full { SyncMode::Full } else { SyncMode::Digest(table.digest(now_ms, DIGEST_BUCKETS)) };
    Message::SyncRequest { target, mode }
}

/// A pull in progress: merges every frame into the table as it arrives.
#[derive(Default)]
pub struct Pull {
    pulled: Pulled,
}

impl Pull {
    /// One frame of `bytes` bytes; the pull's result once it is the last (`SyncEnd`).
    pub fn frame(
        &mut self,
        table: &Table,
        clock: &Clock,
        msg: Message,
        bytes: usize,
    ) -> Result<Option<Pulled>, &'static str> {
        self.pulled.bytes += bytes;
        match msg {
            Message::SyncChunk { clear_mark, entries } => {
                clock.observe(clear_mark);
                table.merge_clear_mark(clear_mark);
                for (sid, entry) in &entries {
                    merge(table, clock, sid, entry);
                }
                self.pulled.entries += entries.len();
                Ok(None)
            }
            Message::SyncEnd { high_seq, departed } => {
                self.pulled.high_seq = high_seq;
                self.pulled.departed = departed;
                Ok(Some(std::mem::take(&mut self.pulled)))
            }
            _ => Err("unexpected message in a sync"),
        }
    }
}

/// What a node serving a pull says of its stream, read before its snapshot: its high-water mark,
/// and the senders the puller must treat as departed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub high_seq: u64,
    pub departed: Vec<(u64, u64, u64)>,
}

/// The frames answering a request (a sync request for node `me`, or a query), in order.
pub fn respond(
    table: &Table,
    me: u64,
    request: Message,
    source: Source,
    now_ms: u64,
) -> Result<Vec<Message>, &'static str> {
    let (target, mode) = match request {
        Message::SyncRequest { target, mode } => (target, mode),
        Message::Query { token, sid } => {
            return Ok(vec![Message::Answer { token, reply: super::miss::reply(table, sid, now_ms) }]);
        }
        _ => return Err("expected a sync request or a query"),
    };
    if target != me {
        return Err("a sync request meant for another node");
    }
    let wanted = match mode {
        SyncMode::Full => None,
        SyncMode::Digest(theirs) if theirs.len() == DIGEST_BUCKETS => {
            let ours = table.digest(now_ms, DIGEST_BUCKETS);
            Some(ours.iter().zip(&theirs).map(|(a, b)| a != b).collect::<Vec<bool>>())
        }
        SyncMode::Digest(_) => return Err("digest of the wrong size"),
    };
    let clear_mark = table.clear_mark();
    let mut frames = Vec::new();
    let buckets = wanted.as_deref().map(|w| (w, DIGEST_BUCKETS));
    table.snapshot(now_ms, buckets, CHUNK_BYTES, |entries| frames.push(Message::SyncChunk { clear_mark, entries }));
    if frames.is_empty() {
        // The clear watermark travels even with no entries.
        frames.push(Message::SyncChunk { clear_mark, entries: Vec::new() });
    }
    frames.push(Message::SyncEnd { high_seq: source.high_seq, departed: source.departed });
    Ok(frames)
}

/// Merges the answer to a fetch of `sid` (`token`).
pub fn fetched(table: &Table, clock: &Clock, token: u64, sid: &str, msg: Message) -> Result<(), &'static str> {
    match msg {
        Message::Answer { token: answered, reply } if answered == token => match reply {
            Reply::Entry { sid: held, entry } if &*held == sid => merge(table, clock, &held, &entry),
            Reply::Nothing => {}
            _ => return Err("an answer about something else"),
        },
        _ => return Err("expected the answer to the query"),
    }
    Ok(())
}

impl Node {
    /// What this node says of its stream to a node pulling from it, read before the snapshot.
    pub fn sync_source(&self) -> Source {
        Source { high_seq: self.send.high_seq(), departed: self.departed_senders() }
    }

    /// Senders we remember that were members and are no longer live: a node that syncs from us
    /// rejects recordings of them, even if it started after they left. Not a node heard but not
    /// admitted yet (its join was lost here, say): the syncing node may well hear it alive.
    fn departed_senders(&self) -> Vec<(u64, u64, u64)> {
        let gone = |node: u64, incarnation: u64| {
            let live = self.members.get(node).is_some_and(|m| m.incarnation == incarnation && m.is_reachable());
            !live && self.members.was_member(node, incarnation)
        };
        self.replay_memory()
            .into_iter()
            .filter(|(node, incarnation, _)| *node != self.header.node && gone(*node, *incarnation))
            .collect()
    }

    /// Anti-entropy with every sender whose gap can't be repaired from buffers, and with one
    /// random member every ANTI_ENTROPY_INTERVAL.
    pub(super) fn start_syncs(&mut self, now: Now) {
        // The initial state transfer covers everything until then: don't pull the table twice.
        if !self.ready {
            return;
        }
        let mut peers = Vec::new();
        for (node, i) in self.inbound.iter_mut() {
            if (i.sync_wanted || i.window.needs_sync())
                && now.instant >= i.next_sync
                && !self.syncing.contains_key(node)
            {
                if let Some(member) = self.members.get(*node).filter(|m| m.state == MemberState::Alive) {
                    i.sync_wanted = false;
                    i.next_sync = now.instant + MIN_SYNC_INTERVAL;
                    peers.push((*node, member.info));
                }
            }
        }
        if now.instant >= self.next_anti_entropy {
            self.next_anti_entropy = now.instant + super::timers::ANTI_ENTROPY_INTERVAL;
            let candidates: Vec<_> = self
                .members
                .reachable()
                .filter(|m| !self.syncing.contains_key(&m.id))
                .map(|m| (m.id, m.info))
                .collect();
            if !candidates.is_empty() {
                use rand::Rng;
                let pick = candidates[self.rng.random_range(0..candidates.len())];
                if !peers.iter().any(|(id, _)| *id == pick.0) {
                    peers.push(pick);
                }
            }
        }
        for (node, info) in peers {
            let tcp = SocketAddr::new(info.addr.ip(), info.tcp_port);
            self.syncing.insert(node, tcp);
            self.output(Output::Sync { node, tcp, full: false });
        }
    }

    /// A pull from `node` (`full`: the state transfer) ended.
    pub fn sync_done(&mut self, node: u64, full: bool, result: Result<Pulled, String>, now: Now) {
        if self.gone {
            return;
        }
        if full {
            self.transfer_done(node, result, now);
        } else {
            self.anti_entropy_done(node, result);
        }
        self.progress(now);
    }

    fn transfer_done(&mut self, node: u64, result: Result<Pulled, String>, now: Now) {
        let Bootstrap::Transferring { donor, others, started } =
            std::mem::replace(&mut self.bootstrap, Bootstrap::Done)
        else {
            return;
        };
        if donor.id != node {
            self.bootstrap = Bootstrap::Transferring { donor, others, started };
            return;
        }
        let peer = SocketAddr::new(donor.info.addr.ip(), donor.info.tcp_port);
        match result {
            Ok(pulled) => {
                self.forget_departed(&pulled.departed, now);
                self.counters.state_transfers += 1;
                // The donor's snapshot may miss writes other members sent just before they greeted
                // us: a digest sync with each of them closes that window.
                for (node, inbound) in self.inbound.iter_mut() {
                    inbound.sync_wanted = *node != donor.id;
                    inbound.history_unknown = inbound.sync_wanted;
                }
                if let Some(inbound) = self.inbound.get_mut(&donor.id) {
                    inbound.window.synced(pulled.high_seq);
                }
                let took = now.instant.saturating_duration_since(started).as_millis();
                let message = format!(
                    "state transfer from {peer}: {} entries, {} bytes in {took} ms",
                    pulled.entries, pulled.bytes
                );
                self.log(Level::Info, message);
                self.next_donor(Default::default(), true, now);
            }
            Err(e) => {
                self.log(Level::Warn, format!("state transfer from {peer} failed: {e}; trying another member"));
                self.next_donor(others, false, now);
            }
        }
    }

    fn anti_entropy_done(&mut self, node: u64, result: Result<Pulled, String>) {
        let Some(peer) = self.syncing.remove(&node) else { return };
        match result {
            Ok(pulled) => {
                self.prime_replay(&pulled.departed);
                self.counters.anti_entropy_syncs += 1;
                self.counters.sync_entries_received += pulled.entries as u64;
                if let Some(inbound) = self.inbound.get_mut(&node) {
                    inbound.window.synced(pulled.high_seq);
                    inbound.history_unknown = false;
                }
                // A leaving sender may be waiting for just this.
                self.send_ack(node, false);
            }
            Err(e) => {
                if let Some(inbound) = self.inbound.get_mut(&node).filter(|i| i.history_unknown) {
                    // Still unknown: try again (at most once a MIN_SYNC_INTERVAL).
                    inbound.sync_wanted = true;
                }
                self.counters.drop("syncFailed");
                self.log(Level::Debug, format!("anti-entropy with {peer} failed: {e}"));
            }
        }
    }

    /// After the state transfer: senders the donor knows to be gone (left, or dead to it) were
    /// heard here through recordings, or are cut off from the donor only. Their recordings are
    /// replays from now on; those heard here no further than the donor did are dead (not left:
    /// one that is alive after all, cut off from the donor by a partition, comes back with its
    /// next packet).
    fn forget_departed(&mut self, departed: &[(u64, u64, u64)], now: Now) {
        for &(node, incarnation, highest) in departed {
            let heard_beyond = self.replay_highest(node, incarnation).is_some_and(|here| here > highest);
            self.prime_replay(&[(node, incarnation, highest)]);
            if heard_beyond {
                continue;
            }
            let change = self.members.declare_dead(node, incarnation);
            if change.is_some() {
                self.forget_stream(node);
            }
            self.report(change, now);
        }
    }
}

/// A fetch ended: `Ok`, failed (why), or not done by the query's deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Done,
    Failed(String),
    TimedOut,
}
