//! The node: its state, its inputs and its outputs. The handlers live beside it: receive.rs (one
//! per message kind), send.rs (local writes into datagrams, the leave), timers.rs (what time
//! drives) and sync.rs (state transfer, anti-entropy, fetches).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::ack_wait::AckWaits;
use super::api::{Buffers, Now, Output, Role, Settings, Transmit};
use super::counters::Counters;
use super::fragment::Reassembler;
use super::membership::{Change, Member, MemberState, Members};
use super::miss::Asks;
use super::probes::{PongBudget, Probes};
use super::reliable::{Acks, ReceiveWindow, SendBuffer};
use super::replay::ReplayGuard;
use super::send::Burst;
use crate::clock::Clock;
use crate::crypto::Codec;
use crate::events::{Event, Level};
use crate::table::Table;
use crate::wire::{self, DecodeError, Header, Message, NodeInfo};

/// A leaving node waits at most this long, from the start of its leave, for every live member to
/// acknowledge its last datagram; then it sends its `Leave` anyway (docs/how-it-works.md
/// "Membership").
pub const LEAVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Retransmit buffer bound in bytes (the bound in datagrams is `Settings::retransmit_datagrams`).
const RETRANSMIT_BYTES: usize = 64 << 20;
/// Partial fragmented messages are dropped after this long.
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(10);

/// What we have of one sender's stream.
pub(super) struct Inbound {
    pub incarnation: u64,
    pub window: ReceiveWindow,
    /// Where to send NAKs and acks: the sender's unicast address.
    pub reply_to: SocketAddr,
    /// Its history before we heard it is unknown: sync once to be sure.
    pub sync_wanted: bool,
    /// Until a sync with it succeeds, we cannot tell what we have of its stream before we first
    /// heard it: no ack until then.
    pub history_unknown: bool,
    /// No sync with this sender before then.
    pub next_sync: Instant,
}

/// Joining: discovery, then the state transfer.
pub(super) enum Bootstrap {
    /// `start` begins the discovery (the driver resolves the configured peers first).
    NotStarted,
    Discovering {
        deadline: Instant,
        next_join: Instant,
    },
    /// Pulling the table from `donor`; the others are tried next if it fails.
    Transferring {
        donor: Member,
        others: VecDeque<Member>,
        started: Instant,
    },
    Done,
}

/// A graceful leave in progress (`Node::leave`).
pub(super) struct Leaving {
    pub started: Instant,
    pub deadline: Instant,
    pub last_seq: u64,
    pub next_request: Instant,
}

pub struct Node {
    pub(super) settings: Settings,
    pub(super) header: Header,
    pub(super) codec: Arc<Codec>,
    pub(super) table: Arc<Table>,
    pub(super) clock: Arc<Clock>,
    pub(super) rng: SmallRng,
    /// The next packet number (every packet sent, UDP and TCP, gets a fresh one).
    next_pn: u64,
    replay: ReplayGuard,
    pub(super) members: Members,
    pub(super) send: SendBuffer,
    /// How far each member acknowledged our stream.
    pub(super) acks: Acks,
    /// Local writes waiting for those acks (`waitForAck`).
    pub(super) waits: AckWaits,
    /// No `waitForAck` timeout is logged before then; how many were not logged since the last.
    pub(super) next_ack_timeout_log: Instant,
    pub(super) unlogged_ack_timeouts: u64,
    pub(super) inbound: BTreeMap<u64, Inbound>,
    pub(super) reassembler: Reassembler,
    /// Peers with a sync in progress (never two at once with the same peer), and their TCP address.
    pub(super) syncing: BTreeMap<u64, SocketAddr>,
    /// Members heard through the multicast group: they need no unicast copies.
    pub(super) via_group: BTreeSet<u64>,
    /// Addresses the configured peers resolve to (their cluster port).
    pub(super) peers: Vec<SocketAddr>,
    pub(super) warned_peers_only_me: bool,
    pub(super) probes: Probes,
    pub(super) pongs: PongBudget,
    /// Queries about sids a `get` found nothing for, and those whose entry is being fetched.
    pub(super) asks: Asks,
    pub(super) fetching: BTreeMap<u64, (Arc<str>, bool, SocketAddr)>,
    pub(super) counters: Counters,
    pub(super) bootstrap: Bootstrap,
    /// Joined and finished the initial state transfer (or found no one).
    pub(super) ready: bool,
    /// Whether writes need sending (`update_audience`); the driver learns each change.
    pub(super) audience: bool,
    pub(super) leaving: Option<Leaving>,
    /// The final `Leave` is sent: nothing is sent or acted upon any more.
    pub(super) gone: bool,
    /// Batches of local writes not yet packed into datagrams (`poll_data`).
    pub(super) bursts: VecDeque<Burst>,
    pub(super) transmits: VecDeque<Transmit>,
    outputs: VecDeque<Output>,
    /// A `Data` datagram asked for an ack at once (`send_asked_acks`).
    pub(super) ack_asked: bool,
    pub(super) next_tick: Instant,
    pub(super) next_heartbeat: Instant,
    pub(super) next_anti_entropy: Instant,
    /// When to say that the group was silent, if it was (the end of the discovery window).
    pub(super) silence_check: Option<Instant>,
}

impl Node {
    /// A node with identity `header`, sealing with `codec`, replicating `table`, versioning
    /// with `clock` (both shared with the thread that writes locally). `seed` seeds its
    /// randomness (NAK jitter, anti-entropy partners, query tokens): a simulation replays.
    pub fn new(
        settings: Settings,
        header: Header,
        codec: Arc<Codec>,
        table: Arc<Table>,
        clock: Arc<Clock>,
        seed: u64,
        now: Now,
    ) -> Node {
        let mut rng = SmallRng::seed_from_u64(seed);
        let first_token = rng.random();
        let members = Members::new(settings.heartbeat, settings.failure_timeout, settings.max_clock_skew_ms);
        let mut node = Node {
            send: SendBuffer::new(settings.retransmit_datagrams, RETRANSMIT_BYTES),
            waits: AckWaits::new(settings.ack_timeout),
            reassembler: Reassembler::new(settings.reassembly_budget, REASSEMBLY_TIMEOUT),
            next_tick: now.instant,
            next_anti_entropy: now.instant + super::timers::ANTI_ENTROPY_INTERVAL,
            settings,
            header,
            codec,
            table,
            clock,
            rng,
            next_pn: 1,
            replay: ReplayGuard::new(),
            members,
            acks: Acks::default(),
            next_ack_timeout_log: now.instant,
            unlogged_ack_timeouts: 0,
            inbound: BTreeMap::new(),
            syncing: BTreeMap::new(),
            via_group: BTreeSet::new(),
            peers: Vec::new(),
            warned_peers_only_me: false,
            probes: Probes::default(),
            pongs: PongBudget::new(now.instant),
            asks: Asks::new(now.instant, first_token),
            fetching: BTreeMap::new(),
            counters: Counters::default(),
            bootstrap: Bootstrap::NotStarted,
            ready: false,
            audience: false,
            leaving: None,
            gone: false,
            bursts: VecDeque::new(),
            transmits: VecDeque::new(),
            outputs: VecDeque::new(),
            ack_asked: false,
            next_heartbeat: now.instant,
            silence_check: None,
        };
        node.update_audience(now);
        node
    }

    // -----------------------------------------------------------------------------------------
    // Outputs

    /// The next datagram to send, besides local writes (`poll_data`).
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to do besides sending.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether transmits or outputs wait to be polled.
    pub fn has_output(&self) -> bool {
        !self.transmits.is_empty() || !self.outputs.is_empty()
    }

    /// When to call `handle_timeout` next (`None`: not before another input).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.gone {
            return None;
        }
        let bootstrap = match self.bootstrap {
            Bootstrap::Discovering { deadline, next_join } => Some(deadline.min(next_join)),
            _ => None,
        };
        let waits = self.settings.wait_for_ack.then(|| self.waits.next_wake()).flatten();
        let leave = self.leaving.as_ref().map(|l| l.next_request.min(l.deadline));
        [Some(self.next_tick), bootstrap, waits, leave, self.asks.next_deadline(), self.silence_check]
            .into_iter()
            .flatten()
            .min()
    }

    // -----------------------------------------------------------------------------------------
    // What the driver and the engine read

    /// The period of the node's periodic work: the driver hands over unflushed writes at this pace.
    pub fn tick_period(&self) -> Duration {
        self.settings.tick()
    }

    pub fn me(&self) -> NodeInfo {
        self.settings.me
    }

    pub fn header(&self) -> Header {
        self.header
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn buffers(&self) -> Buffers {
        Buffers {
            missing_datagrams: self.inbound.values().map(|i| i.window.missing()).sum(),
            retransmit_buffer_bytes: self.send.held_bytes() as u64,
            reassembly_bytes: self.reassembler.held_bytes() as u64,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    pub fn is_gone(&self) -> bool {
        self.gone
    }

    pub fn members(&self) -> &Members {
        &self.members
    }

    pub fn members_json(&self) -> Vec<Value> {
        self.members.all().map(Member::to_json).collect()
    }

    pub fn reachable_members(&self) -> usize {
        self.members.reachable().count()
    }

    /// Whether a `get` that found nothing should ask: `missTimeout` is not 0 and a member is alive.
    pub fn can_ask(&self) -> bool {
        let alive = || self.members.all().any(|m| m.state == MemberState::Alive);
        !self.settings.miss_timeout.is_zero() && self.settings.role == Role::Member && !self.gone && alive()
    }

    /// What the probes found so far, with what the doctor shows beside them.
    pub fn probe_report(&self) -> Value {
        let mut report = self.probes.report();
        report["ownLoopback"] = json!(self.counters.own_loopback);
        report["heardViaGroup"] = json!(self.via_group.len());
        report["members"] = json!(self.members_json());
        report["peers"] = json!(self.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        report["me"] = json!(self.settings.me.addr.to_string());
        report
    }

    /// Datagrams kept for retransmission, senders in the replay windows and queries in flight:
    /// what the simulator bounds (with `buffers`).
    pub fn held(&self) -> (usize, usize, usize) {
        (self.send.held_datagrams(), self.replay.senders(), self.asks.in_flight())
    }

    // -----------------------------------------------------------------------------------------
    // Inputs besides datagrams and timers (receive.rs, timers.rs, send.rs, sync.rs)

    /// Counts input dropped outside the node (a sync connection refused or failed, say).
    pub fn count_drop(&mut self, reason: &'static str) {
        self.counters.drop(reason);
    }

    /// A datagram counted as sent could not be sent (the operating system refused it).
    pub fn send_failed(&mut self, bytes: usize) {
        self.counters.datagrams_sent -= 1;
        self.counters.bytes_sent -= bytes as u64;
        self.counters.drop("sendError");
    }

    /// The driver sent a whole batch of writes from the writing thread.
    pub fn count_direct_batch(&mut self) {
        self.counters.direct_batches += 1;
    }

    /// The addresses the configured peers resolve to now (sorted, without duplicates).
    pub fn set_peers(&mut self, resolved: Vec<SocketAddr>) {
        // Checked at every resolution (names change), said once.
        let me = SocketAddr::new(self.settings.me.addr.ip(), self.settings.me.listen_port);
        if let Some(warning) = super::notices::peers_only_me(&self.settings.peers, &resolved, me, self.settings.group) {
            if !std::mem::replace(&mut self.warned_peers_only_me, true) {
                self.log(Level::Warn, warning);
            }
        }
        if self.peers != resolved {
            self.log(Level::Debug, format!("peers resolve to {resolved:?}"));
            self.peers = resolved;
        }
    }

    /// Sends a `Ping` of each size (whole datagram, trailer included) to the group and peers.
    pub fn probe(&mut self, sizes: &[u32], now: Now) {
        let overhead = (wire::HEADER_BYTES + 8 + 4 + self.codec.trailer_bytes()) as u32;
        for &size in sizes {
            let token = self.probes.sent(size.max(overhead), now.instant);
            let padding = vec![0u8; size.saturating_sub(overhead) as usize];
            self.broadcast(&Message::Ping { token, padding });
        }
    }

    /// What the node tracks of each stream, and the acks of its own (the simulator's reports).
    #[cfg(test)]
    pub(crate) fn describe_streams(&self) -> String {
        let streams = self.inbound.iter().map(|(id, i)| {
            let (window, unknown, wanted) = (&i.window, i.history_unknown, i.sync_wanted);
            let (have, missing, sync) = (window.contiguous(), window.missing(), window.needs_sync());
            format!("{id:016x}: have {have} missing {missing} sync {sync} unknown {unknown} wanted {wanted}")
        });
        let streams: Vec<String> = streams.collect();
        format!("streams {streams:?}, syncing {:?}, {:?} of {}", self.syncing, self.acks, self.send.high_seq())
    }

    // -----------------------------------------------------------------------------------------
    // Packets

    /// A fresh packet number (a TCP frame's).
    pub fn next_packet_number(&mut self) -> u64 {
        let pn = self.next_pn;
        self.next_pn += 1;
        pn
    }

    pub(super) fn seal(&mut self, msg: &Message) -> Vec<u8> {
        let packet = wire::encode(&self.header, msg);
        self.seal_encoded(packet)
    }

    /// Seals an encoded packet with a packet number never used before (a retransmission gets a
    /// new one).
    pub(super) fn seal_encoded(&mut self, packet: Vec<u8>) -> Vec<u8> {
        let pn = self.next_packet_number();
        self.codec.seal(packet, pn)
    }

    /// The replay check of an authenticated packet (`wire::open`): packet `pn` of that sender is
    /// accepted once. Shared by datagrams and TCP frames, which number their packets together.
    pub fn accept(&mut self, header: &Header, pn: u64) -> Result<(), DecodeError> {
        if !self.replay.accept(header.node, header.incarnation, pn) {
            return Err(DecodeError::Replay);
        }
        self.counters.opened += 1;
        Ok(())
    }

    pub(super) fn prime_replay(&mut self, senders: &[(u64, u64, u64)]) {
        for (node, incarnation, highest) in senders {
            self.replay.prime(*node, *incarnation, *highest);
        }
    }

    pub(super) fn replay_highest(&self, node: u64, incarnation: u64) -> Option<u64> {
        self.replay.highest(node, incarnation)
    }

    pub(super) fn replay_memory(&self) -> Vec<(u64, u64, u64)> {
        self.replay.snapshot()
    }

    /// Queues a datagram for `to`, counted as sent.
    pub(super) fn transmit(&mut self, to: Vec<SocketAddr>, bytes: Vec<u8>) {
        if to.is_empty() {
            return;
        }
        self.counters.sent(bytes.len(), to.len());
        self.transmits.push_back(Transmit { to, bytes });
    }

    pub(super) fn send_to(&mut self, msg: &Message, to: SocketAddr) {
        let bytes = self.seal(msg);
        self.transmit(vec![to], bytes);
    }

    pub(super) fn output(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    pub(super) fn log(&mut self, level: Level, message: String) {
        self.output(Output::Event(Event::Log { level, message }));
    }

    // -----------------------------------------------------------------------------------------
    // Members

    pub(super) fn heard(&mut self, header: &Header, info: Option<NodeInfo>, now: Now) {
        let change = self.members.heard(header.node, header.incarnation, info, now.instant, now.ms);
        self.report(change, now);
    }

    pub(super) fn report(&mut self, change: Option<(Change, Member)>, now: Now) {
        let Some((change, member)) = change else { return };
        self.update_audience(now);
        let level = match change {
            Change::Suspect => Level::Debug,
            Change::Dead => Level::Warn,
            _ => Level::Info,
        };
        self.log(level, format!("member {:016x} at {} {}", member.id, member.info.addr, change.name()));
        self.output(Output::Event(Event::Member { change, node: member.to_json() }));
    }

    /// Whether writes need sending: some member that has not left is known (dead ones included:
    /// one cut off by a partition may still hear us), or the node is still looking for its
    /// cluster: what it writes meanwhile goes out like any write, so the members it finds have it
    /// (nothing else would bring it to them but a periodic anti-entropy sync).
    pub(super) fn update_audience(&mut self, now: Now) {
        let looking = matches!(self.bootstrap, Bootstrap::NotStarted | Bootstrap::Discovering { .. });
        let audience = looking || self.members.all().any(|m| m.state != MemberState::Left);
        if audience != self.audience {
            self.audience = audience;
            self.output(Output::Audience(audience));
            if audience && !looking && self.settings.role == Role::Member {
                // What this node wrote alone went nowhere, and members that heard it before may
                // have pulled from it before those writes: a greeting makes each pull once (see
                // `on_greeting`).
                let high_seq = self.send.high_seq();
                self.broadcast(&Message::Greeting { info: self.settings.me, high_seq, sent_ms: now.ms });
            }
        }
    }

    /// Starts tracking a sender's stream at `first_seq` unless we already do (same incarnation),
    /// or it has left. Returns whether a new stream was opened.
    pub(super) fn open_inbound(
        &mut self,
        header: &Header,
        first_seq: u64,
        reply_to: SocketAddr,
        sync_wanted: bool,
        now: Now,
    ) -> bool {
        // Node ids are drawn anew at each start: a stream is never replaced by another
        // incarnation (that would be a forgery), and `Data` then drops it as stale.
        if self.inbound.contains_key(&header.node) || self.members.has_departed(header.node, header.incarnation) {
            return false;
        }
        let window = ReceiveWindow::new(first_seq, self.rng.random());
        let inbound = Inbound {
            incarnation: header.incarnation,
            window,
            reply_to,
            sync_wanted,
            history_unknown: sync_wanted,
            next_sync: now.instant,
        };
        self.inbound.insert(header.node, inbound);
        true
    }

    /// A member's stream ended unfinished (it died, or left while this node missed some of it):
    /// what it sent last may have reached some members and not others, and only they hold it
    /// now. One digest sync with each other member brings it here at once, rather than when the
    /// periodic anti-entropy happens to pick one that has it.
    pub(super) fn sync_with_every_member(&mut self) {
        for inbound in self.inbound.values_mut() {
            inbound.sync_wanted = true;
        }
    }

    /// Whether this node may miss some of `node`'s stream.
    pub(super) fn stream_unfinished(&self, node: u64) -> bool {
        self.inbound.get(&node).is_some_and(|i| i.window.missing() > 0 || i.window.needs_sync() || i.history_unknown)
    }

    pub(super) fn forget_stream(&mut self, node: u64) {
        self.inbound.remove(&node);
        self.acks.forget(node);
        self.via_group.remove(&node);
        self.reassembler.forget(node);
    }

    /// The ack owed to `node` now, if any (see `ReceiveWindow::take_ack`), queued. None before
    /// the state transfer, and while what came before we heard it is unknown.
    pub(super) fn send_ack(&mut self, node: u64, periodic: bool) {
        let ready = self.ready;
        let Some(inbound) = self.inbound.get_mut(&node) else { return };
        if inbound.history_unknown || !ready {
            return;
        }
        let Some(high_seq) = inbound.window.take_ack(periodic) else { return };
        let to = inbound.reply_to;
        self.counters.acks_sent += 1;
        self.send_to(&Message::Ack { target: node, high_seq }, to);
    }

    /// Alive members of this incarnation: those whose acks writes wait for.
    pub(super) fn alive(&self) -> Vec<(u64, u64)> {
        self.members.all().filter(|m| m.state == MemberState::Alive).map(|m| (m.id, m.incarnation)).collect()
    }
}
