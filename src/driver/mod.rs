//! The driver: tokio tasks that move bytes and time between the node's sockets and its protocol
//! core (core/), which decides everything. On the engine's runtime (one thread):
//! - `receive`, one per socket (the group's, the cluster port's with `peers`, the unicast one):
//!   hands each datagram to the node, and those already waiting in the socket before the acks
//!   they made due (one ack per sender per burst);
//! - `send_writes`: hands the writes the JS thread queued (outbox.rs) to the node and sends
//!   their datagrams; a few leave from the JS thread itself when no batch is in flight (`flush`);
//! - `timers`: calls the node at its next deadline;
//! - `accept`: serves pulls and fetches over TCP (transfer.rs);
//! - for each output of the node: its datagrams sent, a pull or a fetch run over TCP, an event
//!   passed to JS, the answer of a miss handed to its callbacks (`pump`).

mod calls;
pub mod outbox;
pub mod transfer;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{oneshot, Notify};

use crate::clock::{now_ms, Clock};
use crate::core::sync::Fetched;
use crate::core::{Node, Now, Output, Role, Settings, Transmit};
use crate::crypto::Codec;
use crate::events::{Event, EventSink, Level};
use crate::options::Config;
use crate::table::Table;
use crate::wire::{Header, DATA_OVERHEAD, MAX_DATAGRAM};
use outbox::Outbox;
use transport::Sockets;

/// Datagrams sent back to back before yielding, so a burst doesn't overflow receivers' buffers.
const BURST: usize = 32;
/// Queued bytes that leave from the writing thread when no batch is in flight (`flush`): a few
/// datagrams, so the JS thread never sends for long.
const DIRECT_BYTES: usize = 4 * (MAX_DATAGRAM - DATA_OVERHEAD);
/// Syncs served at once; further connections are closed at once (peers retry later).
const MAX_CONCURRENT_SYNCS: usize = 8;
/// Datagrams already waiting in a socket are handled before the acks they make due are sent: one
/// cumulative ack per sender per burst, at most this many datagrams apart.
const RECEIVE_BURST: usize = 64;
/// Peer names are resolved again this often (a Kubernetes headless service gains and loses pods).
const PEER_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Called with what the table holds once a miss query is over (`Driver::ask`).
pub type Answer = Box<dyn FnOnce(Option<Arc<str>>) + Send>;

/// The sid a miss query asks about, and who waits for its end.
type Waiting = (Arc<str>, Vec<Answer>);

/// Faults injected by engine tests into what the driver receives (never in a user's build).
#[cfg(test)]
#[derive(Clone, Debug, Default)]
pub struct TestHooks {
    /// Fraction of received datagrams dropped.
    pub inbound_loss: f64,
    /// Drops every `Data` datagram received: the writes of other nodes do not arrive (until an
    /// anti-entropy sync), so a `get` here has to ask for them (miss.rs).
    pub drop_inbound_data: bool,
    /// Datagrams kept for retransmission (a small buffer forces anti-entropy repairs).
    pub retransmit_datagrams: Option<usize>,
}

/// What the engine shares with its driver.
pub struct Parts {
    pub header: Header,
    pub codec: Arc<Codec>,
    pub table: Arc<Table>,
    pub clock: Arc<Clock>,
    pub events: EventSink,
    pub outbox: Arc<Outbox>,
}

pub struct Driver {
    node: Mutex<Node>,
    parts: Parts,
    unicast: UdpSocket,
    config: Config,
    /// Largest TCP frame accepted: one entry must fit (maxSessionBytes plus room).
    max_frame: usize,
    /// Held while local writes are sent (by the send task, by a direct send and whoever finishes
    /// it, by the leave): their datagrams leave in order, and nothing after the leave's.
    sending: Arc<tokio::sync::Mutex<()>>,
    runtime: tokio::runtime::Handle,
    /// Wakes the timer task: an earlier deadline, or outputs to pump.
    wake: Notify,
    /// The deadline the timer task sleeps until, in ns since `epoch`.
    armed: AtomicU64,
    epoch: Instant,
    /// Who waits for the end of each miss query, and the sid asked.
    waiters: Mutex<HashMap<u64, Waiting>>,
    left: Mutex<Option<oneshot::Sender<Option<String>>>>,
    #[cfg(test)]
    hooks: TestHooks,
}

/// The moment, read from both clocks.
fn now() -> Now {
    Now { instant: Instant::now(), ms: now_ms() }
}

impl Driver {
    /// Opens the sockets and starts every task. Must run inside the engine's runtime.
    pub fn start(
        config: &Config,
        role: Role,
        parts: Parts,
        #[cfg(test)] hooks: TestHooks,
    ) -> std::io::Result<Arc<Driver>> {
        let Sockets { group, group_addr, listen, unicast, tcp, me } = transport::open(config, role)?;
        #[allow(unused_mut)] // set by engine tests
        let mut settings = Settings::new(config, role, me, group_addr);
        #[cfg(test)]
        if let Some(datagrams) = hooks.retransmit_datagrams {
            settings.retransmit_datagrams = datagrams;
        }
        let (table, clock) = (parts.table.clone(), parts.clock.clone());
        let node = Node::new(settings, parts.header, parts.codec.clone(), table, clock, rand::random(), now());
        let driver = Arc::new(Driver {
            node: Mutex::new(node),
            parts,
            unicast,
            config: config.clone(),
            max_frame: config.max_session_bytes * 2 + (1 << 20),
            sending: Arc::new(tokio::sync::Mutex::new(())),
            runtime: tokio::runtime::Handle::current(),
            wake: Notify::new(),
            armed: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
            waiters: Mutex::new(HashMap::new()),
            left: Mutex::new(None),
            #[cfg(test)]
            hooks,
        });
        for (socket, via_group) in [(group, true), (listen, false)] {
            if let Some(socket) = socket {
                tokio::spawn(driver.clone().receive(Some(socket), via_group));
            }
        }
        tokio::spawn(driver.clone().receive(None, false));
        tokio::spawn(driver.clone().send_writes());
        tokio::spawn(driver.clone().timers());
        tokio::spawn(driver.clone().accept(tcp));
        tokio::spawn(driver.clone().bootstrap());
        Ok(driver)
    }

    /// Runs `f` with the node locked (what the JS thread reads: stats, members, …).
    pub fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        f(&mut self.node.lock())
    }

    // -----------------------------------------------------------------------------------------
    // Tasks

    /// Receives on `socket` (the unicast socket when `None`); `via_group`: it is the group's.
    async fn receive(self: Arc<Self>, socket: Option<UdpSocket>, via_group: bool) {
        let socket = socket.as_ref().unwrap_or(&self.unicast);
        let mut buf = vec![0u8; 65_536];
        loop {
            match socket.recv_from(&mut buf).await {
                Ok((n, from)) => self.datagram(&buf[..n], from, via_group).await,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            if self.node.lock().acks_asked() {
                for _ in 0..RECEIVE_BURST {
                    let Ok((n, from)) = socket.try_recv_from(&mut buf) else { break };
                    self.datagram(&buf[..n], from, via_group).await;
                }
                self.node.lock().send_asked_acks();
                self.pump().await;
            }
        }
    }

    async fn datagram(self: &Arc<Self>, bytes: &[u8], from: SocketAddr, via_group: bool) {
        #[cfg(test)]
        if self.hooks.drops(bytes, self.parts.header.cluster) {
            return;
        }
        self.node.lock().handle_datagram(now(), bytes, from, via_group);
        self.pump().await;
    }

    async fn send_writes(self: Arc<Self>) {
        loop {
            self.parts.outbox.wait().await;
            let sending = self.sending.lock().await;
            let (ops, last_write) = self.parts.outbox.take();
            self.node.lock().write_batch(ops, last_write);
            self.send_data().await;
            drop(sending);
            self.pump().await;
        }
    }

    /// Sends the datagrams of the writes handed to the node (`sending` held).
    async fn send_data(&self) {
        let mut sent = 0;
        loop {
            let data = self.node.lock().poll_data(now());
            let Some(datagram) = data else { return };
            self.send(&datagram).await;
            sent += 1;
            if sent % BURST == 0 {
                tokio::task::yield_now().await;
            }
        }
    }

    async fn timers(self: Arc<Self>) {
        let tick = self.with_node(|n| n.tick_period());
        let mut next_stale = Instant::now() + tick;
        loop {
            let deadline = self.node.lock().poll_timeout();
            let at = deadline.map_or(next_stale, |at| at.min(next_stale));
            self.armed.store(self.nanos(at), Ordering::Release);
            let _ = tokio::time::timeout_at(at.into(), self.wake.notified()).await;
            let now = now();
            if now.instant >= next_stale {
                // Writes nobody flushed go out within two ticks.
                self.parts.outbox.flush_stale();
                next_stale = now.instant + tick;
            }
            self.node.lock().handle_timeout(now);
            self.pump().await;
            if self.node.lock().is_gone() {
                return;
            }
        }
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_SYNCS));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.node.lock().count_drop("syncBusy");
                continue;
            };
            let driver = self.clone();
            tokio::spawn(async move {
                // Read before the snapshot: what the puller may take as covered.
                let source = driver.node.lock().sync_source();
                if transfer::serve(&*driver, stream, source).await.is_err() {
                    driver.node.lock().count_drop("syncServeFailed");
                }
                drop(slot);
            });
        }
    }

    async fn bootstrap(self: Arc<Self>) {
        if !self.config.peers.is_empty() {
            self.resolve_peers().await;
            tokio::spawn(self.clone().resolve_peers_forever());
        }
        self.node.lock().start(now());
        self.pump().await;
    }

    /// Resolves the configured peers now, keeping the addresses of the node's family.
    async fn resolve_peers(self: &Arc<Self>) {
        let ipv4 = self.with_node(|n| n.me().addr.is_ipv4());
        let mut resolved = Vec::new();
        for peer in &self.config.peers {
            match tokio::net::lookup_host((peer.host.as_str(), peer.port)).await {
                Ok(addrs) => resolved.extend(addrs.filter(|a| a.is_ipv4() == ipv4)),
                Err(e) => {
                    let message = format!("peer {}:{} does not resolve: {e}", peer.host, peer.port);
                    (self.parts.events)(Event::Log { level: Level::Debug, message });
                }
            }
        }
        resolved.sort();
        resolved.dedup();
        self.node.lock().set_peers(resolved);
        self.pump().await;
    }

    async fn resolve_peers_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PEER_RESOLVE_INTERVAL).await;
            self.resolve_peers().await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // The node's outputs

    /// Sends the node's datagrams, then acts on its other outputs (in this order: the `Leave`s
    /// leave before the engine stops), and keeps the timer task's deadline.
    async fn pump(self: &Arc<Self>) {
        let (datagrams, outputs, deadline) = {
            let mut node = self.node.lock();
            let datagrams: Vec<Transmit> = std::iter::from_fn(|| node.poll_transmit()).collect();
            let outputs: Vec<Output> = std::iter::from_fn(|| node.poll_output()).collect();
            (datagrams, outputs, node.poll_timeout())
        };
        if deadline.is_some_and(|at| self.is_earlier(at)) {
            self.wake.notify_one();
        }
        for (i, datagram) in datagrams.iter().enumerate() {
            self.send(datagram).await;
            if (i + 1) % BURST == 0 {
                tokio::task::yield_now().await;
            }
        }
        for output in outputs {
            self.act(output);
        }
    }

    fn act(self: &Arc<Self>, output: Output) {
        match output {
            Output::Event(event) => (self.parts.events)(event),
            Output::Audience(audience) => self.parts.outbox.set_audience(audience),
            Output::Left { warning } => {
                if let Some(left) = self.left.lock().take() {
                    let _ = left.send(warning);
                }
            }
            Output::Answered { token } => {
                let Some((sid, answers)) = self.waiters.lock().remove(&token) else { return };
                let held = self.parts.table.get(&sid, now_ms());
                answers.into_iter().for_each(|answer| answer(held.clone()));
            }
            Output::Sync { node, tcp, full } => {
                let driver = self.clone();
                tokio::spawn(async move {
                    let pulled = transfer::pull(&*driver, node, tcp, full).await.map_err(|e| e.to_string());
                    driver.node.lock().sync_done(node, full, pulled, now());
                    driver.pump().await;
                });
            }
            Output::Fetch { token, sid, tcp, deadline } => {
                let driver = self.clone();
                tokio::spawn(async move {
                    let fetch = transfer::fetch(&*driver, tcp, token, sid);
                    let fetched = match tokio::time::timeout_at(deadline.into(), fetch).await {
                        Ok(Ok(())) => Fetched::Done,
                        Ok(Err(e)) => Fetched::Failed(e.to_string()),
                        Err(_) => Fetched::TimedOut,
                    };
                    driver.node.lock().fetch_done(token, fetched, now());
                    driver.pump().await;
                });
            }
        }
    }

    async fn send(&self, datagram: &Transmit) {
        for to in &datagram.to {
            if self.unicast.send_to(&datagram.bytes, *to).await.is_err() {
                // Lost datagrams are repaired like any loss; the cause is counted.
                self.node.lock().send_failed(datagram.bytes.len());
            }
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Whether `at` comes before the timer task's deadline.
    fn is_earlier(&self, at: Instant) -> bool {
        self.nanos(at) < self.armed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
impl TestHooks {
    fn drops(&self, bytes: &[u8], cluster: u32) -> bool {
        use rand::Rng;
        let lost = self.inbound_loss > 0.0 && rand::rng().random_bool(self.inbound_loss);
        let data = || crate::wire::peek_header(bytes, cluster).is_ok_and(|(kind, _)| kind == crate::wire::Kind::Data);
        lost || (self.drop_inbound_data && data())
    }
}
