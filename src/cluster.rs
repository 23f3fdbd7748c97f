//! A running cluster node: joins, replicates local writes, applies remote ones, repairs losses.
//!
//! Tasks (all on the engine's tokio runtime; the JS thread only ever sends a few writes, without
//! waiting, see `Cluster::flush`):
//! - `send_loop`: drains local writes, packs them into sequenced `Data` datagrams (fragmenting
//!   large ops), keeps each in the retransmit buffer and multicasts it; a flush of a few writes
//!   does the same from the JS thread when no batch is in flight (`Cluster::flush`), without
//!   waking the network thread;
//! - `receive_loop` (group socket and unicast socket): decodes, routes, applies;
//! - `tick_loop`: heartbeats with our high-water mark, failure detection, NAKs for gaps,
//!   coalesced acks, anti-entropy syncs when a gap cannot be repaired, and periodically as a
//!   safety net;
//! - `accept_loop`: serves state transfers and anti-entropy syncs over TCP;
//! - `bootstrap`: join announcement, discovery window, initial state transfer, then `Ready`;
//! - `query` (run for a `get` that found nothing): asks the alive members about a sid (miss.rs);
//! - `ack_wait_loop` (`waitForAck`): settles local writes at their deadline, and asks members whose
//!   acks are late again (see ack_wait.rs);
//! - `leave` (run by `Engine::close`): the last writes, `AckRequest` until every live member has
//!   acknowledged them (bounded by `LEAVE_TIMEOUT`), then `Leave`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::OwnedMutexGuard;

use crate::ack_wait::AckWaits;
use crate::clock::{now_ms, Clock, Version};
use crate::doctor::{PongBudget, Probes};
use crate::events::{Event, EventSink, Level};
use crate::fragment::{self, Reassembler};
use crate::link::Link;
use crate::membership::{Change, Member, MemberState, Members};
use crate::miss::{Admission, Answered, Asks, Lead};
use crate::options::{Config, Peer};
use crate::outbox::Outbox;
use crate::reliable::{Acks, Receipt, ReceiveWindow, SendBuffer};
use crate::table::{Op, Table};
use crate::transfer::{self, SyncContext};
use crate::transport::{self, Sockets};
use crate::wire::{self, Header, Message, NodeInfo, Payload, Reply, DATA_OVERHEAD, MAX_DATAGRAM};

/// Retransmit buffer bound in bytes (the bound in datagrams is `TestHooks::retransmit_datagrams`,
/// 65,536 outside tests).
const RETRANSMIT_BYTES: usize = 64 << 20;
/// A gap is NAKed after a random delay in [NAK_DELAY, 2 × NAK_DELAY): long enough for a merely
/// reordered datagram to arrive, short enough to keep replication latency low on loss.
const NAK_DELAY: Duration = Duration::from_millis(5);
/// Most sequence numbers asked for in one NAK, and most datagrams resent for one NAK.
const NAK_MAX_SEQS: u64 = 512;
const RESEND_LIMIT: usize = 512;
/// Safety-net anti-entropy: one digest sync with a random member this often.
const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(15);
/// At most one anti-entropy sync with the same peer this often, so a peer whose heartbeats
/// claim more than its syncs deliver cannot keep us syncing in a loop.
const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Peer names are resolved again this often (a Kubernetes headless service gains and loses pods).
const PEER_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
/// Partial fragmented messages are dropped after this long.
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Datagrams sent back to back before yielding, so a burst doesn't overflow receivers' buffers.
const BURST: usize = 32;
/// Queued bytes that leave from the writing thread when no batch is in flight (see
/// `Cluster::send_directly`): a few datagrams, so the JS thread never sends for long.
const DIRECT_BYTES: usize = 4 * (MAX_DATAGRAM - DATA_OVERHEAD);
/// Syncs served at once; further connections are closed at once (peers retry later).
const MAX_CONCURRENT_SYNCS: usize = 8;
/// A leaving node waits at most this long, from the start of its leave, for every live member to
/// acknowledge its last datagram; then it sends its `Leave` anyway (docs/how-it-works.md "Membership", docs/design.md §3.12).
pub const LEAVE_TIMEOUT: Duration = Duration::from_millis(1000);
/// While it waits, it repeats its `AckRequest` this often: each one makes every receiver ack at
/// once (a lost `AckRequest`, or a lost `Ack`, costs this much).
const LEAVING_REPEAT: Duration = Duration::from_millis(25);
/// Copies of the final `Leave`: at 20% loss, 2 copies miss a receiver 4% of the time, 4 copies 0.2%.
const LEAVE_COPIES: usize = 4;
/// Datagrams already waiting in a socket are handled before the acks they make due are sent: one
/// cumulative ack per sender per burst, at most this many datagrams apart.
const RECEIVE_BURST: usize = 64;
/// `waitForAck` timeouts are logged at most this often (and counted always).
const ACK_TIMEOUT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Network counters for `stats()` (declared in stats.rs, which reads them).
#[derive(Default)]
pub struct NetStats {
    pub datagrams_sent: AtomicU64,
    /// Batches of local writes sent (several writes share a wake-up of the network thread, or a
    /// direct send).
    pub write_batches: AtomicU64,
    /// Of those, the batches sent whole from the writing thread (see `Cluster::send_directly`).
    pub direct_batches: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub datagrams_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub retransmissions: AtomicU64,
    pub naks_sent: AtomicU64,
    pub naks_received: AtomicU64,
    pub acks_sent: AtomicU64,
    pub acks_received: AtomicU64,
    /// `waitForAck` writes whose callback was called at `ackTimeout`, not after every ack.
    pub ack_timeouts: AtomicU64,
    pub duplicates: AtomicU64,
    pub own_loopback: AtomicU64,
    pub state_transfers: AtomicU64,
    pub anti_entropy_syncs: AtomicU64,
    pub sync_entries_received: AtomicU64,
    /// Gets that found nothing here and asked the alive members, and how each ended: the session
    /// found, every member answered without one, or the timeout came first.
    pub miss_queries: AtomicU64,
    pub misses_recovered: AtomicU64,
    pub misses_not_found: AtomicU64,
    pub miss_timeouts: AtomicU64,
    /// Gets that found nothing here and did not ask: over the rate limit.
    pub misses_rate_limited: AtomicU64,
    /// Average age of remote writes on arrival (exponentially weighted, f64 bits in ms).
    replication_lag_ms: AtomicU64,
    drops: Mutex<BTreeMap<&'static str, u64>>,
}

impl NetStats {
    fn drop(&self, reason: &'static str) {
        *self.drops.lock().entry(reason).or_default() += 1;
    }

    /// Folds the age of one remote write into the lag estimate. It relies on the clocks of the
    /// nodes being roughly in step (NTP): an estimate, not a measurement.
    fn note_lag(&self, written_ms: u64) {
        let age = now_ms().saturating_sub(written_ms).min(3_600_000) as f64;
        let _ = self.replication_lag_ms.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let average = f64::from_bits(bits);
            Some((average + (age - average) * 0.05).to_bits())
        });
    }

    /// The lag estimate, in ms.
    pub fn replication_lag_ms(&self) -> f64 {
        f64::from_bits(self.replication_lag_ms.load(Ordering::Relaxed))
    }

    /// Input dropped so far, by reason.
    pub fn dropped(&self) -> BTreeMap<&'static str, u64> {
        self.drops.lock().clone()
    }
}

/// What we have of one sender's stream.
struct Inbound {
    incarnation: u64,
    window: ReceiveWindow,
    /// Where to send NAKs: the sender's unicast address.
    reply_to: SocketAddr,
    /// Its history before we heard it is unknown: sync once to be sure.
    sync_wanted: bool,
    /// Until a sync with it succeeds, we cannot tell what we have of its stream before we first
    /// heard it: no ack until then.
    history_unknown: bool,
    /// No sync with this sender before then.
    next_sync: Instant,
}

struct State {
    members: Members,
    send: SendBuffer,
    /// How far each member acknowledged our stream.
    acks: Acks,
    /// Local writes waiting for those acks (`waitForAck`).
    waits: AckWaits,
    /// No `waitForAck` timeout is logged before then; how many were not logged since the last.
    next_ack_timeout_log: Instant,
    unlogged_ack_timeouts: u64,
    inbound: HashMap<u64, Inbound>,
    reassembler: Reassembler,
    /// Peers with a sync in progress (never two at once with the same peer).
    syncing: HashSet<u64>,
    /// Members heard through the multicast group: they need no unicast copies.
    via_group: HashSet<u64>,
    probes: Probes,
    pongs: PongBudget,
    next_anti_entropy: Instant,
}

/// A batch of local writes on its way out, packed into `Data` datagrams one at a time (see
/// `Cluster::next_packet`), by the send loop or by a direct send from the writing thread.
struct Burst {
    ops: VecDeque<Op>,
    /// Ops for the next datagram, and its size so far.
    pending: Vec<Op>,
    size: usize,
    /// The pieces of an op too large for one datagram, sequenced and kept, not sent yet.
    fragments: VecDeque<Vec<u8>>,
    /// The number of the burst's last write (see ack_wait.rs).
    last_write: u64,
}

enum Step {
    /// The next datagram, sealed.
    Packet(Vec<u8>),
    /// The state lock is taken (when only tried): nothing was packed.
    Busy,
    Done,
}

/// A datagram a direct send could not send to `to` (`None`: to any destination).
struct Unsent {
    packet: Vec<u8>,
    to: Option<Vec<SocketAddr>>,
}

pub struct Cluster {
    config: Config,
    link: Arc<Link>,
    me: NodeInfo,
    group_addr: Option<SocketAddr>,
    /// Addresses the configured `peers` resolve to (their cluster port).
    peers: Mutex<Vec<SocketAddr>>,
    /// Said once that the configured `peers` resolve to this node only.
    warned_peers_only_me: AtomicBool,
    unicast: UdpSocket,
    sync: SyncContext,
    state: Mutex<State>,
    pub stats: NetStats,
    events: EventSink,
    ready: AtomicBool,
    /// Wakes the bootstrap as soon as a member is found.
    member_found: tokio::sync::Notify,
    /// Local writes to replicate.
    outbox: Arc<Outbox>,
    /// Held while writes are sent (by the send loop, by a direct send and whoever finishes it, by
    /// the leave): the leave waits for the batch in flight and sends the rest itself, so nothing
    /// is sent after the last seq it announces.
    sending: Arc<tokio::sync::Mutex<()>>,
    /// The engine's runtime, to hand a direct send over to the network thread.
    runtime: tokio::runtime::Handle,
    /// Wakes a leave waiting for acks when one moves.
    ack_moved: tokio::sync::Notify,
    /// Wakes `ack_wait_loop` when a batch of writes starts waiting.
    waits_added: tokio::sync::Notify,
    /// A `Data` datagram asked for an ack at once: the receive loop sends it after its burst.
    ack_asked: AtomicBool,
    /// The final `Leave` is sent: nothing is sent or acted upon any more.
    gone: AtomicBool,
    /// Queries about sids a `get` found nothing for (miss.rs).
    asks: Arc<Mutex<Asks>>,
}

impl Cluster {
    /// Opens the sockets and starts every task. Must run inside the engine's runtime.
    pub fn start(
        config: Config,
        link: Arc<Link>,
        table: Arc<Table>,
        clock: Arc<Clock>,
        events: EventSink,
        outbox: Arc<Outbox>,
    ) -> std::io::Result<Arc<Cluster>> {
        let Sockets { group, group_addr, listen, unicast, tcp, me } = transport::open(&config)?;
        let heartbeat = Duration::from_millis(config.heartbeat_interval_ms);
        let failure_timeout = Duration::from_millis(config.failure_timeout_ms);
        let max_frame = config.max_session_bytes * 2 + (1 << 20);
        let reassembly_budget = (config.max_session_bytes * 4).max(16 << 20);
        let cluster = Arc::new(Cluster {
            me,
            group_addr,
            peers: Mutex::new(Vec::new()),
            warned_peers_only_me: AtomicBool::new(false),
            unicast,
            sync: SyncContext { table, clock, link: link.clone(), max_frame },
            link,
            state: Mutex::new(State {
                members: Members::new(heartbeat, failure_timeout, config.max_clock_skew_ms),
                send: SendBuffer::new(config.hooks.retransmit_datagrams, RETRANSMIT_BYTES),
                acks: Acks::default(),
                waits: AckWaits::new(Duration::from_millis(config.ack_timeout_ms)),
                next_ack_timeout_log: Instant::now(),
                unlogged_ack_timeouts: 0,
                inbound: HashMap::new(),
                reassembler: Reassembler::new(reassembly_budget, REASSEMBLY_TIMEOUT),
                syncing: HashSet::new(),
                via_group: HashSet::new(),
                probes: Probes::default(),
                pongs: PongBudget::new(Instant::now()),
                next_anti_entropy: Instant::now() + ANTI_ENTROPY_INTERVAL,
            }),
            stats: NetStats::default(),
            events,
            ready: AtomicBool::new(false),
            member_found: tokio::sync::Notify::new(),
            outbox,
            sending: Arc::new(tokio::sync::Mutex::new(())),
            runtime: tokio::runtime::Handle::current(),
            ack_moved: tokio::sync::Notify::new(),
            waits_added: tokio::sync::Notify::new(),
            ack_asked: AtomicBool::new(false),
            gone: AtomicBool::new(false),
            asks: Asks::new(Instant::now()),
            config,
        });
        if let Some(group) = group {
            tokio::spawn(cluster.clone().receive_loop(Some(group), true));
        }
        if let Some(listen) = listen {
            tokio::spawn(cluster.clone().receive_loop(Some(listen), false));
        }
        tokio::spawn(cluster.clone().receive_loop(None, false));
        tokio::spawn(cluster.clone().send_loop());
        tokio::spawn(cluster.clone().tick_loop());
        if cluster.config.wait_for_ack {
            tokio::spawn(cluster.clone().ack_wait_loop());
        }
        tokio::spawn(cluster.clone().accept_loop(tcp));
        tokio::spawn(cluster.clone().bootstrap());
        Ok(cluster)
    }

    /// Runs `f` with the state lock taken: a flush inside it finds the lock busy.
    #[cfg(test)]
    pub(crate) fn with_state_locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _state = self.state.lock();
        f()
    }

    pub fn me(&self) -> NodeInfo {
        self.me
    }

    pub fn members_json(&self) -> Vec<Value> {
        self.state.lock().members.all().map(Member::to_json).collect()
    }

    /// Joined and finished the initial state transfer (or found no one).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Gauges of what the node holds for the protocol.
    pub fn buffers_json(&self) -> Value {
        let state = self.state.lock();
        json!({
            "missingDatagrams": state.inbound.values().map(|i| i.window.missing()).sum::<u64>(),
            "retransmitBufferBytes": state.send.held_bytes(),
            "reassemblyBytes": state.reassembler.held_bytes(),
        })
    }

    pub fn reachable_members(&self) -> usize {
        self.state.lock().members.reachable().count()
    }

    fn log(&self, level: Level, message: String) {
        (self.events)(Event::Log { level, message });
    }

    // -----------------------------------------------------------------------------------------
    // Sending

    async fn send_to(&self, bytes: &[u8], to: SocketAddr) {
        match self.unicast.send_to(bytes, to).await {
            Ok(_) => self.count_sent(bytes),
            // Lost datagrams are repaired like any loss; count the cause.
            Err(_) => self.stats.drop("sendError"),
        }
    }

    fn count_sent(&self, bytes: &[u8]) {
        self.stats.datagrams_sent.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }

    /// To every node: the group, plus unicast copies for whoever multicast does not reach.
    async fn broadcast(&self, bytes: &[u8]) {
        if let Some(group) = self.group_addr {
            self.send_to(bytes, group).await;
        }
        for to in self.unicast_targets() {
            self.send_to(bytes, to).await;
        }
    }

    /// `broadcast` without waiting: for the destinations a send would block for (or failed for),
    /// or for all of them if the state lock is taken, the packet comes back as `Unsent`.
    fn try_broadcast(&self, packet: Vec<u8>) -> Result<(), Unsent> {
        let targets = if self.needs_unicast_targets() {
            match self.state.try_lock() {
                Some(state) => self.unicast_targets_in(&state),
                None => return Err(Unsent { packet, to: None }),
            }
        } else {
            Vec::new()
        };
        let mut destinations = self.group_addr.into_iter().chain(targets);
        while let Some(to) = destinations.next() {
            if self.unicast.try_send_to(&packet, to).is_err() {
                return Err(Unsent { packet, to: Some(std::iter::once(to).chain(destinations).collect()) });
            }
            self.count_sent(&packet);
        }
        Ok(())
    }

    /// Members not heard through the group (dead ones too, so a healed partition finds us), and
    /// configured peers that are no known member yet (discovery).
    fn unicast_targets(&self) -> Vec<SocketAddr> {
        if !self.needs_unicast_targets() {
            return Vec::new();
        }
        self.unicast_targets_in(&self.state.lock())
    }

    /// Without peers, multicast reaches everyone.
    fn needs_unicast_targets(&self) -> bool {
        !self.config.peers.is_empty() || self.group_addr.is_none()
    }

    fn unicast_targets_in(&self, state: &State) -> Vec<SocketAddr> {
        let mut targets: Vec<SocketAddr> = state
            .members
            .all()
            .filter(|m| m.state != MemberState::Left && !state.via_group.contains(&m.id))
            .map(|m| m.info.addr)
            .collect();
        let known: HashSet<SocketAddr> = state
            .members
            .all()
            .filter(|m| m.is_reachable())
            .map(|m| SocketAddr::new(m.info.addr.ip(), m.info.listen_port))
            .collect();
        let me = SocketAddr::new(self.me.addr.ip(), self.me.listen_port);
        targets.extend(self.peers.lock().iter().filter(|p| **p != me && !known.contains(p)));
        targets
    }

    /// Resolves the configured peers now; returns how many addresses they gave.
    async fn resolve_peers(&self) -> usize {
        let mut resolved = Vec::new();
        for peer in &self.config.peers {
            match tokio::net::lookup_host((peer.host.as_str(), peer.port)).await {
                Ok(addrs) => resolved.extend(addrs.filter(|a| a.is_ipv4() == self.me.addr.is_ipv4())),
                Err(e) => self.log(Level::Debug, format!("peer {}:{} does not resolve: {e}", peer.host, peer.port)),
            }
        }
        resolved.sort();
        resolved.dedup();
        // Checked at every resolution (names change), said once.
        let me = SocketAddr::new(self.me.addr.ip(), self.me.listen_port);
        if let Some(warning) = peers_only_me_warning(&self.config.peers, &resolved, me, self.group_addr) {
            if !self.warned_peers_only_me.swap(true, Ordering::Relaxed) {
                self.log(Level::Warn, warning);
            }
        }
        let count = resolved.len();
        let mut peers = self.peers.lock();
        if *peers != resolved {
            self.log(Level::Debug, format!("peers resolve to {resolved:?}"));
            *peers = resolved;
        }
        count
    }

    async fn resolve_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PEER_RESOLVE_INTERVAL).await;
            self.resolve_peers().await;
        }
    }

    async fn broadcast_message(&self, msg: &Message) {
        self.broadcast(&self.link.seal(msg)).await;
    }

    /// Graceful leave: sends the writes still queued, then `AckRequest { last_seq }` (repeated every
    /// LEAVING_REPEAT) until every live (alive) member has acknowledged `last_seq`, answering
    /// their NAKs meanwhile, or until LEAVE_TIMEOUT; then `Leave`, LEAVE_COPIES times (a lost `Leave`
    /// costs a failureTimeout, and the member is reported dead instead of left). Returns the warning to log when the wait timed out, naming the members
    /// that did not acknowledge.
    pub async fn leave(&self) -> Option<String> {
        if self.config.observer {
            return None;
        }
        let started = Instant::now();
        let deadline = started + LEAVE_TIMEOUT;
        // The send loop's batch in flight goes out first; the loop sends nothing after this.
        let _sending = self.sending.lock().await;
        let (queued, last_write) = self.outbox.take();
        if !queued.is_empty() {
            self.send_ops(queued, last_write).await;
        }
        let last_seq = self.state.lock().send.high_seq();
        let mut next_leaving = started;
        let lagging = loop {
            let lagging = self.lagging(last_seq);
            let now = Instant::now();
            if lagging.is_empty() || now >= deadline {
                break lagging;
            }
            if now >= next_leaving {
                self.broadcast_message(&Message::AckRequest { last_seq }).await;
                next_leaving = now + LEAVING_REPEAT;
            }
            let _ = tokio::time::timeout_at(next_leaving.min(deadline).into(), self.ack_moved.notified()).await;
        };
        self.gone.store(true, Ordering::Release);
        for _ in 0..LEAVE_COPIES {
            self.broadcast_message(&Message::Leave).await;
        }
        (!lagging.is_empty()).then(|| {
            let names: Vec<String> = lagging.iter().map(|m| format!("{:016x} at {}", m.id, m.info.addr)).collect();
            format!(
                "leave: after {} ms, {} live member(s) had not acknowledged this node's last datagram \
                 (seq {last_seq}): {}; they may miss its last writes (anti-entropy brings them those another \
                 member has)",
                started.elapsed().as_millis(),
                names.len(),
                names.join(", "),
            )
        })
    }

    /// Alive members that have not acknowledged `seq` yet (suspect and dead ones are not waited for).
    fn lagging(&self, seq: u64) -> Vec<Member> {
        let state = self.state.lock();
        let alive = || state.members.all().filter(|m| m.state == MemberState::Alive);
        let lagging = state.acks.lagging(seq, alive().map(|m| (m.id, m.incarnation)));
        alive().filter(|m| lagging.contains(&m.id)).cloned().collect()
    }

    async fn send_loop(self: Arc<Self>) {
        loop {
            self.outbox.wait().await;
            let _sending = self.sending.lock().await;
            let (ops, last_write) = self.outbox.take();
            if !ops.is_empty() {
                self.send_ops(ops, last_write).await;
            }
        }
    }

    /// Sends the writes queued so far. A few, when no batch is being sent, leave from the calling
    /// (JS) thread at once: the network thread, asleep most likely, is not woken on the way. The
    /// rest, and whatever would block, is handed to the network thread (see `send_directly`).
    pub fn flush(self: &Arc<Self>) {
        if !self.send_directly() {
            self.outbox.flush();
        }
    }

    /// Sends the queued writes from this thread if they are at most DIRECT_BYTES and nothing else
    /// is being sent; returns false (nothing done) otherwise. Never waits: the locks are only
    /// tried, the sends never block. When a lock is busy or a send fails half-way, the network
    /// thread finishes the burst, holding `sending` until it is done.
    fn send_directly(self: &Arc<Self>) -> bool {
        if self.gone.load(Ordering::Acquire) {
            return false;
        }
        // A batch in flight (the send loop's, or the leave's) goes first.
        let Ok(sending) = self.sending.clone().try_lock_owned() else { return false };
        let Some((ops, last_write)) = self.outbox.take_at_most(DIRECT_BYTES) else { return false };
        if ops.is_empty() {
            return true;
        }
        let mut burst = self.burst(ops, last_write);
        loop {
            match self.next_packet(&mut burst, false) {
                Step::Packet(packet) => {
                    if let Err(unsent) = self.try_broadcast(packet) {
                        self.hand_over(burst, Some(unsent), sending);
                        return true;
                    }
                }
                Step::Busy => {
                    self.hand_over(burst, None, sending);
                    return true;
                }
                Step::Done => break,
            }
        }
        if self.config.wait_for_ack && !self.try_wait_for_acks(burst.last_write) {
            // Only the waiting is left to do.
            self.hand_over(burst, None, sending);
            return true;
        }
        self.stats.direct_batches.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The network thread finishes a burst begun on another thread: what `unsent` still owes,
    /// then the rest of the burst, still holding `sending`.
    fn hand_over(self: &Arc<Self>, burst: Burst, unsent: Option<Unsent>, sending: OwnedMutexGuard<()>) {
        let cluster = self.clone();
        self.runtime.spawn(async move {
            if let Some(Unsent { packet, to }) = unsent {
                match to {
                    Some(to) => {
                        for to in to {
                            cluster.send_to(&packet, to).await;
                        }
                    }
                    None => cluster.broadcast(&packet).await,
                }
            }
            cluster.send_burst(burst).await;
            drop(sending);
        });
    }

    /// Packs ops into as few datagrams as possible; an op too large for one is fragmented. With
    /// `waitForAck`, the last datagram asks for acks at once, and the writes up to `last_write`
    /// wait for them.
    async fn send_ops(&self, ops: Vec<Op>, last_write: u64) {
        self.send_burst(self.burst(ops, last_write)).await;
    }

    /// Sends the rest of a burst from the network thread (see `send_ops`).
    async fn send_burst(&self, mut burst: Burst) {
        let mut sent = 0;
        while let Step::Packet(packet) = self.next_packet(&mut burst, true) {
            self.broadcast(&packet).await;
            sent += 1;
            if sent % BURST == 0 {
                tokio::task::yield_now().await;
            }
        }
        if self.config.wait_for_ack {
            self.wait_for_acks(burst.last_write);
        }
    }

    fn burst(&self, ops: Vec<Op>, last_write: u64) -> Burst {
        self.stats.write_batches.fetch_add(1, Ordering::Relaxed);
        Burst { ops: ops.into(), pending: Vec::new(), size: DATA_OVERHEAD, fragments: VecDeque::new(), last_write }
    }

    /// The burst's next datagram, sealed: its sequence number is allocated, and the datagram kept
    /// for retransmission, under the state lock. With `waitForAck`, the last one asks for acks at
    /// once. `blocking` false: the state lock is only tried (`Step::Busy` when it is taken).
    fn next_packet(&self, burst: &mut Burst, blocking: bool) -> Step {
        let ask_ack = self.config.wait_for_ack;
        loop {
            if let Some(packet) = burst.fragments.pop_front() {
                return Step::Packet(self.link.seal_encoded(packet));
            }
            let Some(op) = burst.ops.front() else {
                if burst.pending.is_empty() {
                    return Step::Done;
                }
                let packet = match self.lock_state(blocking) {
                    Some(mut state) => self.data_packet(&mut state, std::mem::take(&mut burst.pending), ask_ack),
                    None => return Step::Busy,
                };
                return Step::Packet(self.link.seal_encoded(packet));
            };
            let len = wire::op_len(op);
            if DATA_OVERHEAD + len > MAX_DATAGRAM {
                // The last datagram of the burst when nothing is left for a final `Data`.
                let last = ask_ack && burst.ops.len() == 1 && burst.pending.is_empty();
                let encoded = wire::encode_op(op);
                match fragment::split(&encoded) {
                    Some(pieces) => match self.lock_state(blocking) {
                        Some(mut state) => burst.fragments = self.fragment_packets(&mut state, &pieces, last),
                        None => return Step::Busy,
                    },
                    None => self.stats.drop("opTooLarge"),
                }
                burst.ops.pop_front();
                continue;
            }
            if burst.size + len > MAX_DATAGRAM || burst.pending.len() == u16::MAX as usize {
                let packet = match self.lock_state(blocking) {
                    Some(mut state) => self.data_packet(&mut state, std::mem::take(&mut burst.pending), false),
                    None => return Step::Busy,
                };
                burst.size = DATA_OVERHEAD;
                return Step::Packet(self.link.seal_encoded(packet));
            }
            burst.size += len;
            burst.pending.extend(burst.ops.pop_front());
        }
    }

    fn lock_state(&self, blocking: bool) -> Option<parking_lot::MutexGuard<'_, State>> {
        if blocking {
            Some(self.state.lock())
        } else {
            self.state.try_lock()
        }
    }

    fn data_packet(&self, state: &mut State, ops: Vec<Op>, ask_ack: bool) -> Vec<u8> {
        let seq = state.send.next_seq();
        let packet = self.link.encode(&Message::Data { seq, ask_ack, payload: Payload::Ops(ops) });
        state.send.keep(seq, packet.as_slice().into());
        packet
    }

    /// The pieces of one op, on consecutive sequence numbers; `ask_ack`: the last one asks for
    /// acks at once.
    fn fragment_packets(&self, state: &mut State, pieces: &[&[u8]], ask_ack: bool) -> VecDeque<Vec<u8>> {
        let count = pieces.len() as u16;
        let mut first_seq = 0;
        pieces
            .iter()
            .enumerate()
            .map(|(index, piece)| {
                let seq = state.send.next_seq();
                if index == 0 {
                    first_seq = seq;
                }
                let payload = Payload::Fragment { first_seq, index: index as u16, count, bytes: piece.to_vec() };
                let ask_ack = ask_ack && index + 1 == count as usize;
                let packet = self.link.encode(&Message::Data { seq, ask_ack, payload });
                state.send.keep(seq, packet.as_slice().into());
                packet
            })
            .collect()
    }

    /// The writes up to `last_write` are sent: they wait for the members alive now.
    fn wait_for_acks(&self, last_write: u64) {
        let now = Instant::now();
        add_waits(&mut self.state.lock(), last_write, now);
        self.settle_writes(now);
        self.waits_added.notify_one();
    }

    /// `wait_for_acks` from a thread that must not wait for the state lock: false if it is taken.
    /// `ack_wait_loop` settles the writes (at once if there is no member to wait for).
    fn try_wait_for_acks(&self, last_write: u64) -> bool {
        let Some(mut state) = self.state.try_lock() else { return false };
        add_waits(&mut state, last_write, Instant::now());
        drop(state);
        self.waits_added.notify_one();
        true
    }

    /// Settles the writes whose members all acknowledged them (or are no longer alive), or whose
    /// `ackTimeout` passed, and tells the JS side (`waitForAck` only).
    fn settle_writes(&self, now: Instant) {
        if !self.config.wait_for_ack {
            return;
        }
        let (settled, log) = {
            let mut state = self.state.lock();
            let State { members, acks, waits, next_ack_timeout_log, unlogged_ack_timeouts, .. } = &mut *state;
            let settled = waits.settle(acks, |node, incarnation| is_alive(members, node, incarnation), now);
            let mut log = None;
            if settled.timed_out > 0 {
                *unlogged_ack_timeouts += settled.timed_out;
                if now >= *next_ack_timeout_log {
                    *next_ack_timeout_log = now + ACK_TIMEOUT_LOG_INTERVAL;
                    let names: Vec<String> = settled
                        .laggards
                        .iter()
                        .map(|id| {
                            members.get(*id).map_or(format!("{id:016x}"), |m| format!("{id:016x} at {}", m.info.addr))
                        })
                        .collect();
                    log = Some((std::mem::take(unlogged_ack_timeouts), names));
                }
            }
            (settled, log)
        };
        self.stats.ack_timeouts.fetch_add(settled.timed_out, Ordering::Relaxed);
        if let Some((count, names)) = log {
            self.log(
                Level::Warn,
                format!(
                    "waitForAck: {count} write(s) called back after ackTimeout ({} ms) without every member's ack \
                     (not acknowledged by {}); they are stored here and replicate as soon as the members \
                     get them (this warning: at most once per {} s, every timeout counted in stats().ackTimeouts)",
                    self.config.ack_timeout_ms,
                    names.join(", "),
                    ACK_TIMEOUT_LOG_INTERVAL.as_secs(),
                ),
            );
        }
        if let Some(through) = settled.through {
            (self.events)(Event::Acked { through });
        }
    }

    /// `waitForAck`: settles writes at their deadline, and asks members whose acks are late again
    /// (the datagram or its `Ack` was lost; a receiver with a gap NAKs it on its own).
    async fn ack_wait_loop(self: Arc<Self>) {
        loop {
            let wake = self.state.lock().waits.next_wake();
            match wake {
                Some(at) => drop(tokio::time::timeout_at(at.into(), self.waits_added.notified()).await),
                None => self.waits_added.notified().await,
            }
            if self.gone.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            self.settle_writes(now);
            let probe = {
                let mut state = self.state.lock();
                let State { members, acks, waits, .. } = &mut *state;
                waits.probe(acks, |node, incarnation| is_alive(members, node, incarnation), now).map(
                    |(seq, lagging)| {
                        let to: Vec<SocketAddr> =
                            lagging.iter().filter_map(|id| members.get(*id)).map(|m| m.info.addr).collect();
                        (seq, to)
                    },
                )
            };
            if let Some((last_seq, to)) = probe {
                let request = self.link.seal(&Message::AckRequest { last_seq });
                for addr in to {
                    self.send_to(&request, addr).await;
                }
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Receiving

    /// Receives on `socket` (the unicast socket when `None`); `via_group`: it is the group's.
    async fn receive_loop(self: Arc<Self>, socket: Option<UdpSocket>, via_group: bool) {
        let socket = socket.as_ref().unwrap_or(&self.unicast);
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, from)) => self.on_datagram(&buf[..n], from, via_group).await,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            if self.ack_asked.load(Ordering::Relaxed) {
                for _ in 0..RECEIVE_BURST {
                    let Ok((n, from)) = socket.try_recv_from(&mut buf) else { break };
                    self.on_datagram(&buf[..n], from, via_group).await;
                }
                if self.ack_asked.swap(false, Ordering::Relaxed) {
                    self.send_acks(false).await;
                }
            }
        }
    }

    async fn on_datagram(&self, bytes: &[u8], from: SocketAddr, via_group: bool) {
        if self.gone.load(Ordering::Acquire) {
            return;
        }
        let loss = self.config.hooks.inbound_loss;
        if loss > 0.0 && rand::rng().random_bool(loss) {
            return;
        }
        self.stats.datagrams_received.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_received.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        // Multicast loops every datagram back to its sender: recognized by header and source
        // address, it is dropped before the crypto and the decoding it would cost. A recording
        // of our packets sent from anywhere else is authenticated like any packet, and counted
        // as the replay it is.
        let own = self.link.header();
        let looped_back =
            from == self.me.addr && wire::peek_header(bytes, own.cluster).is_ok_and(|(_, h)| h.node == own.node);
        if looped_back {
            self.stats.own_loopback.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let (header, msg) = match self.link.open(bytes) {
            Ok(decoded) => decoded,
            Err(e) => return self.stats.drop(e.reason()),
        };
        if self.config.hooks.drop_inbound_data && matches!(msg, Message::Data { .. }) {
            return;
        }
        if header.node == self.link.header().node {
            // Authenticated and fresh, our id, another address: our own packet relayed back to
            // us (a NAT, a proxy). Nothing to apply.
            self.stats.own_loopback.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let departed = self.state.lock().members.has_departed(header.node, header.incarnation);
        if departed && !matches!(msg, Message::Leave | Message::Ping { .. } | Message::Pong { .. }) {
            // Late (a retransmission or a heartbeat sent just before its Leave) or replayed: a
            // node that left never becomes a member again, and its stream is not tracked again.
            return self.stats.drop("departedSender");
        }
        if via_group {
            let mut state = self.state.lock();
            // Members only: forged sender ids must not grow the set.
            if state.members.get(header.node).is_some() {
                state.via_group.insert(header.node);
            }
        }
        let now = Instant::now();
        match msg {
            Message::Ping { token, .. } => {
                if self.state.lock().pongs.take(now) {
                    let pong = self.link.seal(&Message::Pong { token, size: bytes.len() as u32 });
                    self.send_to(&pong, from).await;
                }
            }
            Message::Pong { token, .. } => {
                self.state.lock().probes.answered(header.node, from, token, now);
            }
            // An observer (the doctor) learns who is there, and takes part in nothing else.
            Message::Join(info) if self.config.observer => self.heard(&header, Some(info), now),
            Message::Greeting { info, sent_ms, .. } | Message::Heartbeat { info, sent_ms, .. }
                if self.config.observer =>
            {
                self.heard(&header, Some(info), now);
                self.clock_sample(&header, sent_ms);
            }
            _ if self.config.observer => {}
            Message::Join(info) => {
                self.heard(&header, Some(info), now);
                // A new node: its stream starts at 1, and it wants to hear from us at once.
                self.open_inbound(&header, 1, info.addr, false);
                // It may bring sessions of its own, loaded from a snapshot (persist): pull them
                // once (a digest sync, which costs nothing when it has none we lack).
                if let Some(inbound) = self.state.lock().inbound.get_mut(&header.node) {
                    inbound.sync_wanted = true;
                }
                let high_seq = self.state.lock().send.high_seq();
                let greeting = self.link.seal(&Message::Greeting { info: self.me, high_seq, sent_ms: now_ms() });
                self.send_to(&greeting, info.addr).await;
            }
            Message::Greeting { info, high_seq, sent_ms } => {
                self.heard(&header, Some(info), now);
                self.clock_sample(&header, sent_ms);
                self.open_inbound(&header, high_seq + 1, info.addr, false);
            }
            Message::Heartbeat { info, high_seq, sent_ms } => {
                self.heard(&header, Some(info), now);
                self.clock_sample(&header, sent_ms);
                // Heard first by heartbeat: we missed its join or our greeting, so sync once.
                if !self.open_inbound(&header, high_seq + 1, info.addr, true) {
                    if let Some(inbound) = self.state.lock().inbound.get_mut(&header.node) {
                        inbound.window.note_high(high_seq, now);
                    }
                }
            }
            Message::Leave => {
                let change = self.state.lock().members.announced_leave(header.node, header.incarnation);
                self.forget_stream(header.node);
                self.report(change);
                self.settle_writes(now);
            }
            Message::AckRequest { last_seq } => {
                self.heard(&header, None, now);
                if self.state.lock().members.get(header.node).is_none() {
                    return self.stats.drop("unknownSender");
                }
                // Normally its stream is tracked already; if not, what came before is unknown
                // (synced once, and acknowledged only then).
                self.open_inbound(&header, last_seq.saturating_add(1), from, true);
                let ack = match self.state.lock().inbound.get_mut(&header.node) {
                    Some(inbound) if inbound.incarnation == header.incarnation => {
                        inbound.window.ask_ack(last_seq, now);
                        inbound.window.expedite(now);
                        self.due_ack(inbound, false)
                    }
                    _ => return self.stats.drop("staleIncarnation"),
                };
                self.send_ack(ack).await;
                // Its leave (or its writes) wait: what is due is asked for now, not at the next tick.
                self.send_naks(now, Some(header.node)).await;
            }
            Message::Ack { high_seq } => {
                self.heard(&header, None, now);
                self.stats.acks_received.fetch_add(1, Ordering::Relaxed);
                let moved = {
                    let mut state = self.state.lock();
                    let State { members, acks, send, .. } = &mut *state;
                    if members.get(header.node).is_none_or(|m| m.incarnation != header.incarnation) {
                        drop(state);
                        return self.stats.drop("unknownSender");
                    }
                    let moved = acks.ack(header.node, header.incarnation, high_seq, send.high_seq());
                    // What every reachable member holds is never NAKed again: no need to keep it.
                    if let Some(everywhere) = acks.acked_by_all(members.reachable().map(|m| (m.id, m.incarnation))) {
                        send.trim_through(everywhere);
                    }
                    moved
                };
                if moved {
                    self.ack_moved.notify_one();
                    self.settle_writes(now);
                }
            }
            Message::Data { seq, ask_ack, payload } => {
                self.heard(&header, None, now);
                // Streams are tracked for members only, so forged sender ids cost no memory;
                // a member heard first by its data is synced once for what came before.
                if self.state.lock().members.get(header.node).is_none() {
                    return self.stats.drop("unknownSender");
                }
                self.open_inbound(&header, seq, from, true);
                let receipt = match self.state.lock().inbound.get_mut(&header.node) {
                    Some(inbound) if inbound.incarnation == header.incarnation => inbound.window.receive(seq, now),
                    _ => return self.stats.drop("staleIncarnation"),
                };
                if receipt == Receipt::Duplicate {
                    self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.apply_payload(&header, payload, now);
                // Applied first: an ack says what this node holds. Sent by the receive loop after
                // its burst when the sender asked (its writes wait for it); otherwise at the tick.
                // A repair that completes what a sender asked for is acknowledged at once too.
                let due = self.state.lock().inbound.get_mut(&header.node).is_some_and(|inbound| {
                    if ask_ack {
                        inbound.window.ask_ack(seq, now);
                    }
                    inbound.window.asked_ack_due()
                });
                if due {
                    self.ack_asked.store(true, Ordering::Relaxed);
                }
            }
            Message::Nak { ranges } => {
                self.stats.naks_received.fetch_add(1, Ordering::Relaxed);
                let (datagrams, gone, oldest) = {
                    let state = self.state.lock();
                    // Retransmissions go only to members, at the address they announced: a
                    // forged NAK cannot turn this node into an amplifier aimed at someone else.
                    let known = state.members.get(header.node).is_some_and(|m| m.is_reachable() && m.info.addr == from);
                    if !known {
                        drop(state);
                        return self.stats.drop("nakFromStranger");
                    }
                    let (datagrams, gone) = state.send.resend(&ranges, RESEND_LIMIT);
                    (datagrams, gone, state.send.oldest())
                };
                for (i, d) in datagrams.iter().enumerate() {
                    // Sealed anew: a packet number is never used twice.
                    self.send_to(&self.link.seal_encoded(d.to_vec()), from).await;
                    if (i + 1) % BURST == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                self.stats.retransmissions.fetch_add(datagrams.len() as u64, Ordering::Relaxed);
                if gone {
                    self.send_to(&self.link.seal(&Message::Gone { oldest }), from).await;
                }
            }
            Message::Gone { oldest } => {
                if let Some(inbound) = self.state.lock().inbound.get_mut(&header.node) {
                    inbound.window.gone(oldest);
                }
            }
            Message::Query { token, sid } => {
                self.heard(&header, None, now);
                // Answers go only to members, at the address they announced: a forged query
                // cannot aim them at someone else.
                let known = |m: &Member| m.is_reachable() && m.info.addr == from;
                if !self.state.lock().members.get(header.node).is_some_and(known) {
                    return self.stats.drop("queryFromStranger");
                }
                self.send_to(&self.answer(token, sid), from).await;
            }
            Message::Answer { token, reply } => {
                self.heard(&header, None, now);
                let mut asks = self.asks.lock();
                let Some(Answered { entry, complete }) = asks.answered(token, header.node, from, reply) else {
                    drop(asks);
                    return self.stats.drop("unexpectedAnswer");
                };
                // Merged before the asker reads its table again: it ends the query under this lock.
                if let Some((sid, entry)) = entry {
                    self.sync.merge(&sid, &entry);
                }
                drop(asks);
                if let Some(complete) = complete {
                    complete.notify_one();
                }
            }
            Message::SyncRequest { .. } | Message::SyncChunk { .. } | Message::SyncEnd { .. } => {
                self.stats.drop("unexpectedKind")
            }
        }
    }

    /// The sealed `Answer` to a query for `sid`: the entry when it fits a datagram, else its
    /// version (the asker fetches it over TCP).
    fn answer(&self, token: u64, sid: Arc<str>) -> Vec<u8> {
        let reply = crate::miss::reply(&self.sync.table, sid, now_ms());
        let version = match &reply {
            Reply::Entry { entry, .. } => entry.newest_version(),
            _ => Version::ZERO,
        };
        let mut packet = self.link.encode(&Message::Answer { token, reply });
        if packet.len() + wire::TRAILER_BUDGET > MAX_DATAGRAM {
            packet = self.link.encode(&Message::Answer { token, reply: Reply::TooLarge { version } });
        }
        self.link.seal_encoded(packet)
    }

    // -----------------------------------------------------------------------------------------
    // Asking about a miss (miss.rs)

    /// Whether a `get` that found nothing should ask: `missTimeout` is not 0 and a member is alive.
    pub fn can_ask(&self) -> bool {
        let alive = || self.state.lock().members.all().any(|m| m.state == MemberState::Alive);
        self.config.miss_timeout_ms > 0 && !self.config.observer && !self.gone.load(Ordering::Acquire) && alive()
    }

    /// Asks the alive members about `sid`, or joins the query in flight for it. The future ends
    /// when that query is over, its answers merged; `None` when nothing is asked (the rate limit,
    /// or a sid too long for a datagram).
    pub fn ask(self: &Arc<Self>, sid: &str) -> Option<impl Future<Output = ()> + Send + 'static> {
        if wire::QUERY_OVERHEAD + sid.len() > MAX_DATAGRAM {
            return None;
        }
        let Some(admission) = Asks::admit(&self.asks, sid, Instant::now()) else {
            self.stats.misses_rate_limited.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let (cluster, sid) = (self.clone(), Arc::<str>::from(sid));
        Some(async move {
            match admission {
                Admission::Lead(lead) => cluster.query(lead, sid).await,
                Admission::Join(mut ended) => {
                    let _ = ended.changed().await;
                }
            }
        })
    }

    /// One query: to every alive member, until all have answered or `missTimeout` passed, then
    /// a fetch over TCP if a member holds a newer entry too large for its answer.
    async fn query(&self, lead: Lead, sid: Arc<str>) {
        let deadline = Instant::now() + Duration::from_millis(self.config.miss_timeout_ms);
        let members: Vec<(u64, NodeInfo)> = {
            let state = self.state.lock();
            state.members.all().filter(|m| m.state == MemberState::Alive).map(|m| (m.id, m.info)).collect()
        };
        if members.is_empty() {
            return;
        }
        let targets: Vec<SocketAddr> = members.iter().map(|(_, info)| info.addr).collect();
        let complete = self.asks.lock().asking(lead.token, members);
        self.stats.miss_queries.fetch_add(1, Ordering::Relaxed);
        let packet = self.link.seal(&Message::Query { token: lead.token, sid: sid.clone() });
        for to in targets {
            self.send_to(&packet, to).await;
        }
        let _ = tokio::time::timeout_at(deadline.into(), complete.notified()).await;
        let Some(query) = self.asks.lock().end(lead.token) else { return };
        let mut timed_out = query.unanswered() > 0;
        let local = self.sync.table.entry(&sid).map_or(Version::ZERO, |e| e.newest_version());
        if let Some(peer) = query.fetch_from(local) {
            let fetch = transfer::fetch(&self.sync, peer, lead.token, sid.clone());
            match tokio::time::timeout_at(deadline.into(), fetch).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.stats.drop("fetchFailed");
                    self.log(Level::Debug, format!("fetching session {sid:?} from {peer} failed: {e}"));
                }
                Err(_) => timed_out = true,
            }
        }
        let outcome = if self.sync.table.get(&sid, now_ms()).is_some() {
            &self.stats.misses_recovered
        } else if timed_out {
            &self.stats.miss_timeouts
        } else {
            &self.stats.misses_not_found
        };
        outcome.fetch_add(1, Ordering::Relaxed);
    }

    fn apply_payload(&self, header: &Header, payload: Payload, now: Instant) {
        match payload {
            Payload::Ops(ops) => ops.iter().for_each(|op| self.apply_remote(op)),
            Payload::Fragment { first_seq, index, count, bytes } => {
                let added = self.state.lock().reassembler.add(
                    header.node,
                    header.incarnation,
                    first_seq,
                    index,
                    count,
                    bytes,
                    now,
                );
                match added {
                    Ok(Some(message)) => match wire::decode_op(&message) {
                        Ok(op) => self.apply_remote(&op),
                        Err(e) => self.stats.drop(e.reason()),
                    },
                    Ok(None) => {}
                    Err(e) => self.stats.drop(e.reason()),
                }
            }
        }
    }

    fn apply_remote(&self, op: &Op) {
        let version = match op {
            Op::Set { version, .. }
            | Op::Touch { version, .. }
            | Op::Destroy { version, .. }
            | Op::Clear { version } => *version,
        };
        self.sync.clock.observe(version);
        self.stats.note_lag(version.millis());
        self.sync.table.apply(op);
    }

    /// Starts tracking a sender's stream at `first_seq` unless we already do (same incarnation),
    /// or it has left. Returns whether a new stream was opened.
    fn open_inbound(&self, header: &Header, first_seq: u64, reply_to: SocketAddr, sync_wanted: bool) -> bool {
        let mut state = self.state.lock();
        // Node ids are drawn anew at each start: a stream is never replaced by another
        // incarnation (that would be a forgery), and `Data` then drops it as stale.
        if state.inbound.contains_key(&header.node) || state.members.has_departed(header.node, header.incarnation) {
            return false;
        }
        let window = ReceiveWindow::new(first_seq);
        let inbound = Inbound {
            incarnation: header.incarnation,
            window,
            reply_to,
            sync_wanted,
            history_unknown: sync_wanted,
            next_sync: Instant::now(),
        };
        state.inbound.insert(header.node, inbound);
        true
    }

    /// The ack owed to this sender now, if any (see `ReceiveWindow::take_ack`), and where to send
    /// it. None before the state transfer, and while what came before we heard it is unknown.
    fn due_ack(&self, inbound: &mut Inbound, periodic: bool) -> Option<(SocketAddr, u64)> {
        if inbound.history_unknown || !self.is_ready() {
            return None;
        }
        inbound.window.take_ack(periodic).map(|high_seq| (inbound.reply_to, high_seq))
    }

    async fn send_ack(&self, ack: Option<(SocketAddr, u64)>) {
        if let Some((to, high_seq)) = ack {
            self.stats.acks_sent.fetch_add(1, Ordering::Relaxed);
            self.send_to(&self.link.seal(&Message::Ack { high_seq }), to).await;
        }
    }

    fn forget_stream(&self, node: u64) {
        let mut state = self.state.lock();
        state.inbound.remove(&node);
        state.acks.forget(node);
        state.via_group.remove(&node);
        state.reassembler.forget(node);
    }

    fn heard(&self, header: &Header, info: Option<NodeInfo>, now: Instant) {
        let change = self.state.lock().members.heard(header.node, header.incarnation, info, now, now_ms());
        self.report(change);
    }

    /// Whether writes need sending: some member that has not left is known (dead ones included:
    /// one cut off by a partition may still hear us).
    fn update_audience(&self) {
        let audience = self.state.lock().members.all().any(|m| m.state != MemberState::Left);
        self.outbox.set_audience(audience);
    }

    /// Folds the send time a member's heartbeat or greeting carries into its clock offset, and
    /// warns (rate-limited, see `ClockOffset::warning_due`) when the offset exceeds maxClockSkew.
    fn clock_sample(&self, header: &Header, sent_ms: u64) {
        let (node, incarnation) = (header.node, header.incarnation);
        let warning = self.state.lock().members.clock_sample(node, incarnation, sent_ms, now_ms(), Instant::now());
        if let Some((offset, member)) = warning {
            self.log(Level::Warn, clock_skew_warning(&member, offset, self.config.max_clock_skew_ms));
        }
    }

    fn report(&self, change: Option<(Change, Member)>) {
        let Some((change, member)) = change else { return };
        self.update_audience();
        if change == Change::Join {
            self.member_found.notify_one();
        }
        let level = match change {
            Change::Suspect => Level::Debug,
            Change::Dead => Level::Warn,
            _ => Level::Info,
        };
        self.log(level, format!("member {:016x} at {} {}", member.id, member.info.addr, change.name()));
        (self.events)(Event::Member { change, node: member.to_json() });
    }

    // -----------------------------------------------------------------------------------------
    // Periodic work

    async fn tick_loop(self: Arc<Self>) {
        let heartbeat = Duration::from_millis(self.config.heartbeat_interval_ms);
        let tick = (heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_heartbeat = Instant::now();
        loop {
            ticker.tick().await;
            if self.gone.load(Ordering::Acquire) {
                return;
            }
            // Writes nobody flushed go out within two ticks.
            self.outbox.flush_stale();
            let now = Instant::now();
            if now >= next_heartbeat && !self.config.observer {
                // A steady cadence: ticks only decide how late a heartbeat may be, not how often.
                next_heartbeat = (next_heartbeat + heartbeat).max(now);
                let high_seq = self.state.lock().send.high_seq();
                self.broadcast_message(&Message::Heartbeat { info: self.me, high_seq, sent_ms: now_ms() }).await;
            }
            self.check_members(now);
            self.send_naks(now, None).await;
            self.send_acks(true).await;
            self.start_syncs(now);
        }
    }

    fn check_members(&self, now: Instant) {
        let changes = self.state.lock().members.check(now);
        // Long-gone members are forgotten without a change to report.
        self.update_audience();
        for (change, member) in changes {
            if change == Change::Dead {
                // If it comes back (a partition healed), it is heard anew and synced.
                self.forget_stream(member.id);
            }
            self.report(Some((change, member)));
        }
        self.settle_writes(now);
        let expired = self.state.lock().reassembler.expire(now);
        for _ in 0..expired {
            self.stats.drop("fragmentTimeout");
        }
    }

    /// NAKs due now, to every sender, or only to `only`.
    async fn send_naks(&self, now: Instant, only: Option<u64>) {
        let naks: Vec<(SocketAddr, Vec<(u64, u64)>)> = {
            let mut state = self.state.lock();
            state
                .inbound
                .iter_mut()
                .filter(|(node, _)| only.is_none_or(|only| only == **node))
                .filter_map(|(_, i)| {
                    let ranges = i.window.due_naks(now, NAK_DELAY, NAK_MAX_SEQS);
                    (!ranges.is_empty()).then_some((i.reply_to, ranges))
                })
                .collect()
        };
        for (to, ranges) in naks {
            self.stats.naks_sent.fetch_add(1, Ordering::Relaxed);
            self.send_to(&self.link.seal(&Message::Nak { ranges }), to).await;
        }
    }

    /// The acks due: `periodic` (the tick), at most one per sender, and only if we have more of
    /// its stream than we said; otherwise only those the senders asked for.
    async fn send_acks(&self, periodic: bool) {
        let acks: Vec<(SocketAddr, u64)> = {
            let mut state = self.state.lock();
            state.inbound.values_mut().filter_map(|i| self.due_ack(i, periodic)).collect()
        };
        for ack in acks {
            self.send_ack(Some(ack)).await;
        }
    }

    /// Anti-entropy with every sender whose gap can't be repaired from buffers, and with one
    /// random member every ANTI_ENTROPY_INTERVAL.
    fn start_syncs(self: &Arc<Self>, now: Instant) {
        // The initial state transfer covers everything until then: don't pull the table twice.
        if !self.is_ready() {
            return;
        }
        let mut peers = Vec::new();
        {
            let mut state = self.state.lock();
            let State { inbound, members, syncing, next_anti_entropy, .. } = &mut *state;
            for (node, i) in inbound.iter_mut() {
                if (i.sync_wanted || i.window.needs_sync()) && now >= i.next_sync && !syncing.contains(node) {
                    if let Some(member) = members.get(*node).filter(|m| m.state == MemberState::Alive) {
                        i.sync_wanted = false;
                        i.next_sync = now + MIN_SYNC_INTERVAL;
                        peers.push((*node, member.info));
                    }
                }
            }
            if now >= *next_anti_entropy {
                *next_anti_entropy = now + ANTI_ENTROPY_INTERVAL;
                let candidates: Vec<&Member> = members.reachable().filter(|m| !syncing.contains(&m.id)).collect();
                if !candidates.is_empty() {
                    let pick = candidates[rand::rng().random_range(0..candidates.len())];
                    if !peers.iter().any(|(id, _)| *id == pick.id) {
                        peers.push((pick.id, pick.info));
                    }
                }
            }
            syncing.extend(peers.iter().map(|(id, _)| *id));
        }
        for (node, info) in peers {
            tokio::spawn(self.clone().anti_entropy(node, info));
        }
    }

    async fn anti_entropy(self: Arc<Self>, node: u64, info: NodeInfo) {
        let peer = SocketAddr::new(info.addr.ip(), info.tcp_port);
        let result = transfer::pull(&self.sync, node, peer, false).await;
        let ack = {
            let mut state = self.state.lock();
            state.syncing.remove(&node);
            match result {
                Ok(pulled) => {
                    self.link.prime_replay(&pulled.departed);
                    self.stats.anti_entropy_syncs.fetch_add(1, Ordering::Relaxed);
                    self.stats.sync_entries_received.fetch_add(pulled.entries as u64, Ordering::Relaxed);
                    state.inbound.get_mut(&node).and_then(|inbound| {
                        inbound.window.synced(pulled.high_seq);
                        inbound.history_unknown = false;
                        // A leaving sender may be waiting for just this.
                        self.due_ack(inbound, false)
                    })
                }
                Err(e) => {
                    if let Some(inbound) = state.inbound.get_mut(&node).filter(|i| i.history_unknown) {
                        // Still unknown: try again (at most once a MIN_SYNC_INTERVAL).
                        inbound.sync_wanted = true;
                    }
                    drop(state);
                    self.stats.drop("syncFailed");
                    self.log(Level::Debug, format!("anti-entropy with {peer} failed: {e}"));
                    None
                }
            }
        };
        self.send_ack(ack).await;
    }

    async fn accept_loop(self: Arc<Self>, listener: tokio::net::TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SYNCS));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.stats.drop("syncBusy");
                continue;
            };
            let cluster = self.clone();
            tokio::spawn(async move {
                let high_seq = cluster.state.lock().send.high_seq();
                if transfer::serve(&cluster.sync, stream, high_seq, cluster.departed_senders()).await.is_err() {
                    cluster.stats.drop("syncServeFailed");
                }
                drop(slot);
            });
        }
    }

    /// Senders we remember that were members and are no longer live: a node that syncs from us
    /// rejects recordings of them, even if it started after they left. Not a node heard but not
    /// admitted yet (its join was lost here, say): the syncing node may well hear it alive.
    fn departed_senders(&self) -> Vec<(u64, u64, u64)> {
        let state = self.state.lock();
        let gone = |node: u64, incarnation: u64| {
            let live = state.members.get(node).is_some_and(|m| m.incarnation == incarnation && m.is_reachable());
            !live && state.members.was_member(node, incarnation)
        };
        let me = self.link.header();
        self.link
            .replay_memory()
            .into_iter()
            .filter(|(node, incarnation, _)| *node != me.node && gone(*node, *incarnation))
            .collect()
    }

    /// After the state transfer: members the donor knows to be gone were heard here only through
    /// recordings; they leave, and their recordings are replays from now on.
    fn forget_departed(&self, departed: &[(u64, u64, u64)]) {
        self.link.prime_replay(departed);
        for (node, incarnation, _) in departed {
            let change = self.state.lock().members.left(*node, *incarnation);
            if change.is_some() {
                self.forget_stream(*node);
            }
            self.report(change);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Probes (the doctor)

    /// Sends a `Ping` of each size (whole datagram, trailer included) to the group and peers.
    pub async fn probe(self: Arc<Self>, sizes: Vec<u32>) {
        let overhead = (wire::HEADER_BYTES + 8 + 4 + self.link.trailer_bytes()) as u32;
        for size in sizes {
            let token = self.state.lock().probes.sent(size.max(overhead), Instant::now());
            let padding = vec![0u8; size.saturating_sub(overhead) as usize];
            self.broadcast(&self.link.seal(&Message::Ping { token, padding })).await;
        }
    }

    pub fn probe_report(&self) -> Value {
        let state = self.state.lock();
        let mut report = state.probes.report();
        report["ownLoopback"] = json!(self.stats.own_loopback.load(Ordering::Relaxed));
        report["heardViaGroup"] = json!(state.via_group.len());
        report["members"] = json!(state.members.all().map(Member::to_json).collect::<Vec<_>>());
        report["peers"] = json!(self.peers.lock().iter().map(|p| p.to_string()).collect::<Vec<_>>());
        report["me"] = json!(self.me.addr.to_string());
        report
    }

    // -----------------------------------------------------------------------------------------
    // Joining

    /// "Multicast does not get through" is the first thing that goes wrong in a multicast
    /// cluster: say once what to check when the group was silent through the discovery window.
    fn hint_if_multicast_is_silent(&self, discovery: Duration) {
        let Some(group) = self.group_addr else { return };
        let heard_group = !self.state.lock().via_group.is_empty();
        if heard_group || self.stats.own_loopback.load(Ordering::Relaxed) > 0 {
            return;
        }
        self.log(
            Level::Warn,
            format!(
                "multicast: in {} ms this node heard neither its own datagrams nor any other node on {group}. \
                 Check that the firewall lets UDP port {} through, that multicastTTL ({}) covers the hops between \
                 hosts, that the interface ({}) is the one that reaches the other nodes, and IGMP snooping on the \
                 switches. Where multicast is not available (most clouds, Kubernetes), list the nodes in the \
                 \"peers\" option, or run `npx express-session-multicast doctor`.",
                discovery.as_millis(),
                group.port(),
                self.config.multicast_ttl,
                self.me.addr.ip(),
            ),
        );
    }

    async fn bootstrap(self: Arc<Self>) {
        if !self.config.peers.is_empty() {
            self.resolve_peers().await;
            tokio::spawn(self.clone().resolve_loop());
        }
        if self.config.observer {
            return (self.events)(Event::Ready);
        }
        let heartbeat = Duration::from_millis(self.config.heartbeat_interval_ms);
        let discovery = (heartbeat * 2).max(Duration::from_millis(300));
        let deadline = Instant::now() + discovery;
        // Repeat the join a few times in the window: one lost datagram must not split the cluster.
        while Instant::now() < deadline && self.reachable_members() == 0 {
            self.broadcast_message(&Message::Join(self.me)).await;
            let step = (discovery / 4).min(Duration::from_millis(100));
            let _ = tokio::time::timeout(step, self.member_found.notified()).await;
        }
        let hint = self.clone();
        tokio::spawn(async move {
            // Judged on the whole window, even when a unicast greeting ended discovery early.
            tokio::time::sleep_until((deadline).into()).await;
            hint.hint_if_multicast_is_silent(discovery);
        });
        let mut donors: Vec<Member> = self.state.lock().members.reachable().cloned().collect();
        donors.sort_by_key(|m| m.id);
        let mut transferred = donors.is_empty();
        for donor in donors {
            let peer = SocketAddr::new(donor.info.addr.ip(), donor.info.tcp_port);
            let started = Instant::now();
            match transfer::pull(&self.sync, donor.id, peer, true).await {
                Ok(pulled) => {
                    self.forget_departed(&pulled.departed);
                    self.stats.state_transfers.fetch_add(1, Ordering::Relaxed);
                    let mut state = self.state.lock();
                    // The donor's snapshot may miss writes other members sent just before they
                    // greeted us: a digest sync with each of them closes that window.
                    for (node, inbound) in state.inbound.iter_mut() {
                        inbound.sync_wanted = *node != donor.id;
                        inbound.history_unknown = inbound.sync_wanted;
                    }
                    if let Some(inbound) = state.inbound.get_mut(&donor.id) {
                        inbound.window.synced(pulled.high_seq);
                    }
                    drop(state);
                    self.log(
                        Level::Info,
                        format!(
                            "state transfer from {peer}: {} entries, {} bytes in {} ms",
                            pulled.entries,
                            pulled.bytes,
                            started.elapsed().as_millis()
                        ),
                    );
                    transferred = true;
                    break;
                }
                Err(e) => {
                    self.log(Level::Warn, format!("state transfer from {peer} failed: {e}; trying another member"))
                }
            }
        }
        if !transferred {
            // What the members sent before they greeted us is unknown: a digest sync with each.
            for inbound in self.state.lock().inbound.values_mut() {
                inbound.sync_wanted = true;
                inbound.history_unknown = true;
            }
        }
        self.ready.store(true, Ordering::Release);
        (self.events)(Event::Ready);
    }
}

/// Whether (`node`, `incarnation`) is a member seen alive (not suspect, dead or departed).
/// The writes up to `last_write` are sent, in datagrams up to the current high seq: they wait
/// for the members alive now.
fn add_waits(state: &mut State, last_write: u64, now: Instant) {
    let State { members, send, waits, .. } = state;
    let alive = members.all().filter(|m| m.state == MemberState::Alive).map(|m| (m.id, m.incarnation));
    waits.add(last_write, send.high_seq(), alive.collect(), now);
}

fn is_alive(members: &Members, node: u64, incarnation: u64) -> bool {
    members.get(node).is_some_and(|m| m.incarnation == incarnation && m.state == MemberState::Alive)
}

/// The warning to log when member `member`'s clock is `offset_ms` ahead of this node's (behind
/// when negative), beyond maxClockSkew (`max_skew_ms`): what it does, and what to do.
fn clock_skew_warning(member: &Member, offset_ms: i64, max_skew_ms: u64) -> String {
    let side = if offset_ms > 0 { "ahead of" } else { "behind" };
    let (fast, slow) = if offset_ms > 0 { ("that member", "this node") } else { ("this node", "that member") };
    let seconds = format!("{:.3} s", offset_ms.unsigned_abs() as f64 / 1000.0);
    format!(
        "clock skew: member {:016x} at {}: its clock is {seconds} {side} this node's (maxClockSkew {max_skew_ms} ms). \
         Session expiry is an absolute time on the writer's clock: sessions written on {fast} live {seconds} longer \
         on {slow}, and sessions written on {slow} expire {seconds} early on {fast} (at once when their lifetime is \
         shorter); and {fast} wins concurrent writes to a session. Synchronize the clocks of every node (NTP: \
         chrony, ntpd or systemd-timesyncd); the node whose clock is off against every other member is the one to fix.",
        member.id, member.info.addr,
    )
}

/// The warning to log when the configured `peers` (resolved: `resolved`) name this node only
/// (`me`: its address and cluster port), `None` otherwise. A node skips itself among its peers,
/// so such peers never lead it to another member. Typical cause: several workers on one host
/// (pm2, Node's `cluster` module) given the same options; they can all bind the one cluster port
/// (it is shared), but a datagram sent to it reaches only one of them.
fn peers_only_me_warning(
    peers: &[Peer],
    resolved: &[SocketAddr],
    me: SocketAddr,
    group: Option<SocketAddr>,
) -> Option<String> {
    if resolved.is_empty() || resolved.iter().any(|p| *p != me) {
        return None;
    }
    let listed = json!(peers.iter().map(Peer::to_string).collect::<Vec<_>>());
    let outcome = match group {
        None => "it has no one to replicate to and stays a cluster of one".to_owned(),
        Some(group) => format!("they lead it to no other node (only multicast on {group} can)"),
    };
    let host = match me {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    Some(format!(
        "peers {listed} resolve to this node only ({me}, its own multicastPort): a node skips itself, so {outcome}. \
         Workers on one host (pm2, Node's cluster module) cannot reach each other through a port they share (a \
         datagram sent to it reaches only one of them): give each worker a multicastPort of its own (e.g. {} + \
         worker index) and list every worker's {host}:port in peers, or drop peers and use multicast on loopback \
         (ipv4 \"127.0.0.1\", multicastTTL 0, multicast not false).",
        me.port()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn peer(host: &str, port: u16) -> Peer {
        Peer { host: host.into(), port }
    }

    #[test]
    fn peers_resolving_to_this_node_only_are_reported() {
        let me = addr("127.0.0.1:4000");
        let peers = [peer("127.0.0.1", 4000)];
        let warning = peers_only_me_warning(&peers, &[me], me, None).expect("a warning");
        assert!(
            warning.starts_with(r#"peers ["127.0.0.1:4000"] resolve to this node only (127.0.0.1:4000"#),
            "{warning}"
        );
        for part in ["no one to replicate to", "multicastPort of its own", "4000 + worker index", "multicastTTL 0"] {
            assert!(warning.contains(part), "{part:?} missing from: {warning}");
        }
        // Names that resolve to this node (resolution deduplicates the addresses).
        let names = [peer("localhost", 4000), peer("127.0.0.1", 4000)];
        assert!(peers_only_me_warning(&names, &[me], me, None).is_some());
        // With multicast on, the peers are useless but the node is not alone for sure.
        let group = addr("239.255.77.77:4000");
        let warning = peers_only_me_warning(&peers, &[me], me, Some(group)).expect("a warning");
        assert!(warning.contains("only multicast on 239.255.77.77:4000"), "{warning}");
        assert!(!warning.contains("no one to replicate to"), "{warning}");
    }

    #[test]
    fn peers_naming_another_node_or_nothing_yet_are_not_reported() {
        let me = addr("127.0.0.1:4000");
        let peers = [peer("127.0.0.1", 4000), peer("127.0.0.1", 4001)];
        // This node among others (every worker lists every worker: the right configuration).
        assert_eq!(peers_only_me_warning(&peers, &[me, addr("127.0.0.1:4001")], me, None), None);
        // Another port, or another address with this port: another node.
        assert_eq!(peers_only_me_warning(&peers, &[addr("127.0.0.1:4001")], me, None), None);
        assert_eq!(peers_only_me_warning(&peers, &[addr("10.0.0.7:4000")], me, None), None);
        // Names not resolved (yet): they may name other nodes later, so nothing to say now.
        assert_eq!(peers_only_me_warning(&[peer("app.svc", 4000)], &[], me, None), None);
    }
}
