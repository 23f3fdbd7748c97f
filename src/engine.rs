//! The engine behind one store: the session table, the clock that versions local writes, the
//! cluster node that replicates them, and the background runtime all of it runs on.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;

use crate::clock::{now_ms, Clock};
use crate::cluster::{Cluster, LEAVE_TIMEOUT};
use crate::crypto::Codec;
use crate::events::{Event, EventSink, Level};
use crate::link::Link;
use crate::options::Config;
use crate::outbox::Outbox;
use crate::persist::Persist;
use crate::stats::{Snapshot, Sources};
use crate::table::{expiry, Lookup, Op, Table};
use crate::wire::{self, Header};

/// How often expired sessions and old tombstones are purged from memory.
const SWEEP_INTERVAL: Duration = Duration::from_millis(1000);
/// Beyond `LEAVE_TIMEOUT`, time for the sends of the leave before `close()` gives up on it.
const LEAVE_MARGIN: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteError {
    /// The session (or touched cookie) exceeds `maxSessionBytes`.
    TooLarge,
}

/// The engine's own counters for `stats()` (declared in stats.rs, which reads them).
#[derive(Default)]
pub struct Counters {
    pub purged: AtomicU64,
    pub too_large: AtomicU64,
    pub local_touches: AtomicU64,
}

pub struct Engine {
    config: Config,
    header: Header,
    pub(crate) clock: Arc<Clock>,
    pub(crate) table: Arc<Table>,
    counters: Arc<Counters>,
    /// Local writes on their way to the cluster; `None` when the node is not networked.
    outbox: Option<Arc<Outbox>>,
    /// Why the network could not start, when it could not (the store then serves alone).
    network_error: Option<String>,
    /// Snapshots on disk (`persist`), when configured.
    pub(crate) persist: Option<Arc<Persist>>,
    /// Taken by `close()`: dropping it stops every thread and releases the event callback.
    running: Mutex<Option<Running>>,
}

struct Running {
    runtime: tokio::runtime::Runtime,
    cluster: Option<Arc<Cluster>>,
}

impl Engine {
    /// Starts the engine. Only a runtime that cannot start is an error: a network that cannot
    /// start is reported through `events` (an error) and in `stats()`, and the store serves on
    /// alone: express-session must keep its sessions (docs/operations.md "Errors at start").
    pub fn start(config: Config, events: EventSink) -> std::io::Result<Engine> {
        let node_id = rand::random::<u64>() | 1;
        let header = Header { cluster: wire::cluster_id(&config.cluster), node: node_id, incarnation: now_ms() };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("session-multicast")
            .enable_all()
            .build()?;
        let clock = Arc::new(Clock::new(node_id));
        // The snapshot is loaded before the node joins: what the cluster sends merges by version.
        // Not for the doctor's observer, which takes the store's options: the file is the store's.
        let persist = (config.persist.as_ref().filter(|_| !config.observer))
            .map(|p| Arc::new(Persist::new(&config, p, node_id, header.incarnation, events.clone())));
        let table = Arc::new(persist.as_ref().map_or_else(Table::new, |p| p.load(&clock)));
        let counters = Arc::<Counters>::default();
        runtime.spawn(sweep_forever(table.clone(), counters.clone()));
        if let Some(persist) = &persist {
            runtime.spawn(persist.clone().run(table.clone(), clock.clone()));
        }

        let (mut outbox, mut cluster, mut network_error) = (None, None, None);
        if config.multicast.is_some() || !config.peers.is_empty() {
            if config.secrets.is_empty() {
                events(Event::Log {
                    level: Level::Warn,
                    message: format!(
                        "cluster \"{}\" is unauthenticated: without the \"secret\" option anyone on the network can read and inject sessions",
                        config.cluster
                    ),
                });
            }
            let link = Arc::new(Link::new(header, Codec::new(&config.cluster, &config.secrets)));
            let queue = Arc::new(Outbox::default());
            let _runtime = runtime.enter();
            match Cluster::start(config.clone(), link, table.clone(), clock.clone(), events.clone(), queue.clone()) {
                Ok(started) => {
                    outbox = Some(queue);
                    cluster = Some(started);
                }
                Err(e) => {
                    let message = format!("cannot join the cluster: {e}; serving this node's sessions alone");
                    events(Event::Error {
                        code: "ERR_NETWORK",
                        message: format!("express-session-multicast: {message}"),
                    });
                    events(Event::Ready);
                    network_error = Some(message);
                }
            }
        } else {
            events(Event::Ready);
        }
        let running = Mutex::new(Some(Running { runtime, cluster }));
        Ok(Engine { config, header, clock, table, counters, outbox, network_error, persist, running })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn get(&self, sid: &str) -> Option<Arc<str>> {
        self.table.get(sid, now_ms())
    }

    /// What `get` serves. `Unknown` (neither a session nor a tombstone here) only when asking
    /// the cluster is worth it (see `ask`); otherwise that is `Gone`.
    pub fn lookup(&self, sid: &str) -> Lookup {
        match self.table.lookup(sid, now_ms()) {
            Lookup::Unknown if !self.cluster().is_some_and(|c| c.can_ask()) => Lookup::Gone,
            found => found,
        }
    }

    /// Asks the alive members about a sid `lookup` found `Unknown` (docs/how-it-works.md "Reading
    /// a session that has not arrived yet"). `None` when nothing is asked: over the rate limit, or the
    /// network is closed.
    pub fn ask(&self, sid: &str) -> Option<Asked> {
        let running = self.running.lock();
        let Some(Running { runtime, cluster: Some(cluster) }) = &*running else { return None };
        let query = Box::pin(cluster.ask(sid)?);
        Some(Asked { runtime: runtime.handle().clone(), query, table: self.table.clone(), sid: sid.into() })
    }

    /// Stores a session. Returns its ticket: with `waitForAck`, the number of the write to wait
    /// for (see ack_wait.rs), else 0 (nothing to wait for).
    pub fn set(&self, sid: &str, doc: String, cookie_expires: Option<u64>) -> Result<u64, WriteError> {
        self.check_size(doc.len())?;
        let now = now_ms();
        let op = Op::Set {
            sid: sid.into(),
            doc: doc.into(),
            expires_at: self.expiry(cookie_expires, now),
            version: self.clock.tick_at(now),
        };
        Ok(self.write(op))
    }

    /// Persists a new cookie and expiry without touching the data. With `touchAfter`, a touch
    /// that moves the expiry only a little is kept on this node (see `Table::extend_locally`), and
    /// has nothing to wait for (ticket 0).
    pub fn touch(&self, sid: &str, cookie: Option<String>, cookie_expires: Option<u64>) -> Result<u64, WriteError> {
        self.check_size(cookie.as_ref().map_or(0, String::len))?;
        let now = now_ms();
        let expires_at = self.expiry(cookie_expires, now);
        let threshold = self.config.touch_after_ms;
        if threshold > 0 && self.table.extend_locally(sid, expires_at, now, threshold) {
            self.counters.local_touches.fetch_add(1, Ordering::Relaxed);
            return Ok(0);
        }
        let op =
            Op::Touch { sid: sid.into(), cookie: cookie.map(Arc::from), expires_at, version: self.clock.tick_at(now) };
        Ok(self.write(op))
    }

    fn expiry(&self, cookie_expires: Option<u64>, now: u64) -> u64 {
        expiry(cookie_expires, now, self.config.session_ttl_ms, self.config.ttl_ms)
    }

    /// Returns the write's ticket (see `set`).
    pub fn destroy(&self, sid: &str) -> u64 {
        self.write(Op::Destroy { sid: sid.into(), version: self.clock.tick() })
    }

    /// Returns the write's ticket (see `set`).
    pub fn clear(&self) -> u64 {
        self.write(Op::Clear { version: self.clock.tick() })
    }

    /// Hands the writes made since the last flush to the network thread; with `direct`, a few
    /// are sent from this thread instead when no batch is in flight (see outbox.rs and
    /// `Cluster::flush`).
    pub fn flush(&self, direct: bool) {
        let Some(outbox) = &self.outbox else { return };
        match direct.then(|| self.cluster()).flatten() {
            Some(cluster) => cluster.flush(),
            None => outbox.flush(),
        }
    }

    pub fn all_json(&self) -> String {
        self.table.all_json(now_ms())
    }

    pub fn length(&self) -> usize {
        self.table.length(now_ms())
    }

    /// The figures of `stats()` and `metrics()` (declared in stats.rs).
    fn snapshot(&self) -> Snapshot {
        let cluster = self.cluster();
        let sources = Sources {
            table: self.table.counts(now_ms()),
            counters: &self.counters,
            network: self.network_state(),
            network_error: self.network_error.as_deref(),
            persist: self.persist.as_ref().map(|p| &p.stats),
            members: 1 + cluster.as_ref().map_or(0, |c| c.reachable_members()),
            ready: cluster.as_ref().is_none_or(|c| c.is_ready()),
            net: cluster.as_ref().map(|c| (&c.stats, c.buffers_json())),
        };
        Snapshot::take(&sources)
    }

    pub fn stats(&self) -> serde_json::Value {
        self.snapshot().to_json()
    }

    /// `"up"`, `"off"` (not networked by configuration), `"failed"` (serving alone after a
    /// network failure at start) or `"closed"`.
    fn network_state(&self) -> &'static str {
        match (&*self.running.lock(), &self.network_error) {
            (None, _) => "closed",
            (Some(_), Some(_)) => "failed",
            (Some(Running { cluster: None, .. }), None) => "off",
            (Some(Running { cluster: Some(_), .. }), None) => "up",
        }
    }

    /// `stats()` and `members()` in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let members = self.members();
        crate::metrics::render(&self.snapshot(), members.as_array().map_or(&[], Vec::as_slice))
    }

    /// This node first, then every member it knows of.
    pub fn members(&self) -> serde_json::Value {
        let cluster = self.cluster();
        let (address, port, tcp_port) = match &cluster {
            Some(c) => (Some(c.me().addr.ip().to_string()), Some(c.me().addr.port()), Some(c.me().tcp_port)),
            None => (self.config.ipv4.map(|ip| ip.to_string()), None, None),
        };
        let mut members = vec![json!({
            "id": format!("{:016x}", self.header.node),
            "address": address,
            "port": port,
            "tcpPort": tcp_port,
            "incarnation": self.header.incarnation,
            // A node whose network failed at start serves alone, cut off from the cluster.
            "state": if self.network_error.is_some() { "isolated" } else { "alive" },
            "self": true,
            "lastHeard": null,
            // This node's clock is the one the others' offsets are measured against.
            "clockOffsetMs": null,
        })];
        if let Some(cluster) = &cluster {
            members.extend(cluster.members_json());
        }
        serde_json::Value::Array(members)
    }

    /// Leaves the cluster (see `close_reporting`), then stops every background task and thread.
    /// Idempotent.
    pub fn close(&self) {
        let _ = self.close_reporting();
    }

    /// `close()`, returning the warning to log when the leave timed out. The leave sends the
    /// writes still queued and waits until every live member has acknowledged them, at most
    /// `LEAVE_TIMEOUT` (1 s), then announces the leave (see `Cluster::leave`).
    pub fn close_reporting(&self) -> Option<String> {
        let Running { runtime, cluster } = self.running.lock().take()?;
        let mut warning = None;
        if let Some(cluster) = &cluster {
            // The leave keeps to LEAVE_TIMEOUT by itself; this bounds the sends around it too.
            let leave = async { tokio::time::timeout(LEAVE_TIMEOUT + LEAVE_MARGIN, cluster.leave()).await };
            warning = runtime.block_on(leave).unwrap_or_else(|_| {
                let ms = (LEAVE_TIMEOUT + LEAVE_MARGIN).as_millis();
                Some(format!("leave: not done after {ms} ms; the other nodes will see this node dead"))
            });
        }
        if let Some(persist) = &self.persist {
            // The last snapshot, on an engine thread, once the network is quiet.
            let (persist, table, clock) = (persist.clone(), self.table.clone(), self.clock.clone());
            let _ = runtime.block_on(runtime.spawn_blocking(move || persist.close(&table, &clock)));
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
        warning
    }

    /// Sends connectivity probes of these datagram sizes (the doctor).
    pub fn probe(&self, sizes: Vec<u32>) {
        if let Some(Running { runtime, cluster: Some(cluster) }) = &*self.running.lock() {
            runtime.spawn(cluster.clone().probe(sizes));
        }
    }

    /// What the probes found so far; `null` when the node is not networked.
    pub fn probe_report(&self) -> serde_json::Value {
        self.cluster().map_or(serde_json::Value::Null, |c| c.probe_report())
    }

    fn cluster(&self) -> Option<Arc<Cluster>> {
        self.running.lock().as_ref().and_then(|r| r.cluster.clone())
    }

    fn check_size(&self, bytes: usize) -> Result<(), WriteError> {
        if bytes > self.config.max_session_bytes {
            self.counters.too_large.fetch_add(1, Ordering::Relaxed);
            return Err(WriteError::TooLarge);
        }
        Ok(())
    }

    /// Applies a local write and queues it for the cluster; returns its ticket (see `set`). Applied
    /// first: a member that appears after the check below gets the write by its state transfer.
    fn write(&self, op: Op) -> u64 {
        self.table.apply(&op);
        match &self.outbox {
            Some(outbox) if outbox.has_audience() => {
                let number = outbox.push(op);
                if self.config.wait_for_ack {
                    number
                } else {
                    0
                }
            }
            _ => 0,
        }
    }
}

/// A query about a miss, not started yet.
pub struct Asked {
    runtime: tokio::runtime::Handle,
    query: Pin<Box<dyn Future<Output = ()> + Send>>,
    table: Arc<Table>,
    sid: Arc<str>,
}

impl Asked {
    /// Runs the query; `answer` gets the session once it is over, on the engine's thread. If the
    /// engine closes first, `answer` is dropped uncalled.
    pub fn then(self, answer: impl FnOnce(Option<Arc<str>>) + Send + 'static) {
        let Asked { runtime, query, table, sid } = self;
        runtime.spawn(async move {
            query.await;
            answer(table.get(&sid, now_ms()));
        });
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

async fn sweep_forever(table: Arc<Table>, counters: Arc<Counters>) {
    let mut ticker = tokio::time::interval(SWEEP_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let purged = table.sweep(now_ms());
        counters.purged.fetch_add(purged as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(config: Config) -> Engine {
        Engine::start(Config { multicast: None, ..config }, crate::events::discard()).unwrap()
    }

    fn loopback_cluster(name: &str, nodes: usize, hooks: crate::options::TestHooks) -> Vec<Engine> {
        loopback_nodes(name, vec![hooks; nodes])
    }

    /// One node per item of `hooks`, each with its own.
    fn loopback_nodes(name: &str, hooks: Vec<crate::options::TestHooks>) -> Vec<Engine> {
        let port = 20_000 + (std::process::id() as u16 % 20_000) + name.len() as u16 * 7;
        let config = |hooks| Config {
            ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
            multicast_ttl: 0,
            multicast_port: port,
            cluster: format!("{name}-{}", std::process::id()),
            heartbeat_interval_ms: 50,
            failure_timeout_ms: 1000,
            // Generous on a busy test machine: a query ends at once when every member answered.
            miss_timeout_ms: 2_000,
            hooks,
            ..Config::default()
        };
        let nodes = hooks.into_iter().map(|h| Engine::start(config(h), crate::events::discard()).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(400));
        nodes
    }

    fn member_state(node: &Engine, id: u64) -> Option<String> {
        let id = format!("{id:016x}");
        let members = node.members();
        let member = members.as_array()?.iter().find(|m| m["id"] == id.as_str())?;
        member["state"].as_str().map(str::to_owned)
    }

    fn wait_for_convergence(nodes: &[Engine], sessions: usize) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let digest = |n: &Engine| n.table.digest(now_ms(), 64);
        let converged = || nodes.iter().all(|n| n.length() == sessions && digest(n) == digest(&nodes[0]));
        while !converged() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn stat(nodes: &[Engine], name: &str) -> u64 {
        nodes.iter().map(|n| n.stats()[name].as_u64().unwrap_or(0)).sum()
    }

    /// Three engines on loopback, each dropping 20% of the datagrams it receives: every write
    /// still reaches every node, repaired by NAKs and retransmissions.
    #[test]
    fn every_write_arrives_despite_loss() {
        let hooks = crate::options::TestHooks { inbound_loss: 0.2, ..Default::default() };
        let nodes = loopback_cluster("loss", 3, hooks);
        let expires = Some(now_ms() + 600_000);
        for i in 0..3_000 {
            let writer = &nodes[i % 3];
            writer.set(&format!("s{i}"), format!(r#"{{"n":{i}}}"#), expires).unwrap();
            if i % 7 == 0 {
                writer.touch(&format!("s{i}"), Some(format!(r#"{{"t":{i}}}"#)), expires).unwrap();
            }
            // As the JS adapter does at the end of an event-loop turn (the other tests rely on
            // the tick's flush).
            if i % 10 == 0 {
                writer.flush(false);
            }
        }
        nodes[1].destroy("s42");
        assert!(wait_for_convergence(&nodes, 2_999), "stats: {}", nodes[0].stats());
        for n in &nodes {
            assert_eq!(n.get("s42"), None);
            assert_eq!(n.get("s7").as_deref(), Some(r#"{"n":7,"cookie":{"t":7}}"#), "the touch replicated too");
        }
        assert!(stat(&nodes, "retransmissions") > 0, "loss must have been repaired by retransmission");
        nodes.iter().for_each(Engine::close);
    }

    /// A direct flush sends a few writes from the calling thread (`directBatches`): their
    /// datagrams are sequenced and kept for retransmission (B drops 20% of what it receives: they
    /// are repaired like any), and with `waitForAck` every write is acknowledged. One that finds
    /// the state lock taken is finished by the network thread, still in order; a batch larger
    /// than DIRECT_BYTES is handed over whole. A close right after a direct send delivers
    /// everything.
    #[test]
    fn direct_sends_and_hand_overs_deliver_in_order_and_are_acknowledged() {
        let acked = Arc::new(AtomicU64::new(0));
        let seen = acked.clone();
        let events: crate::events::EventSink = Arc::new(move |event| {
            if let crate::events::Event::Acked { through } = event {
                seen.fetch_max(through, Ordering::SeqCst);
            }
        });
        let port = 20_000 + (std::process::id() as u16 % 20_000) + 311;
        let config = |wait_for_ack, inbound_loss| Config {
            ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
            multicast_ttl: 0,
            multicast_port: port,
            cluster: format!("direct-{}", std::process::id()),
            heartbeat_interval_ms: 50,
            failure_timeout_ms: 1000,
            wait_for_ack,
            ack_timeout_ms: 5_000,
            hooks: crate::options::TestHooks { inbound_loss, ..Default::default() },
            ..Config::default()
        };
        let a = Engine::start(config(true, 0.0), events).unwrap();
        let b = Engine::start(config(false, 0.2), crate::events::discard()).unwrap();
        assert!(wait_until(|| a.stats()["members"] == 2 && b.stats()["members"] == 2));
        assert!(wait_until(|| a.stats()["ready"] == true && b.stats()["ready"] == true));
        let expires = Some(now_ms() + 600_000);
        let batches = |what: &str| a.stats()[what].as_u64().unwrap();
        let acked_through = |n: u64| wait_until(|| acked.load(Ordering::SeqCst) >= n);

        // Lone writes, a session of two fragments among them: sent directly, acknowledged.
        for i in 0..30 {
            let pad = if i == 7 { 2_000 } else { 100 };
            let ticket = a.set(&format!("d{i}"), format!(r#"{{"pad":"{}"}}"#, "x".repeat(pad)), expires).unwrap();
            a.flush(true);
            assert!(acked_through(ticket), "write {ticket} acknowledged: {}", a.stats());
        }
        // Sent from here unless the network thread held the state lock at that moment.
        let direct = batches("directBatches");
        assert!(batches("writeBatches") == 30 && direct >= 20, "{}", a.stats());

        // The state lock taken: the network thread finishes the burst.
        let cluster = a.cluster().unwrap();
        let ticket = a.set("busy", "{}".into(), expires).unwrap();
        cluster.with_state_locked(|| a.flush(true));
        assert!(acked_through(ticket), "handed over, then acknowledged: {}", a.stats());
        assert_eq!((batches("writeBatches"), batches("directBatches")), (31, direct));

        // More than DIRECT_BYTES: handed over whole.
        let mut last = 0;
        for i in 0..10 {
            last = a.set(&format!("big{i}"), format!(r#"{{"pad":"{}"}}"#, "x".repeat(1_000)), expires).unwrap();
        }
        a.flush(true);
        assert!(acked_through(last), "{}", a.stats());
        assert_eq!((batches("writeBatches"), batches("directBatches")), (32, direct));

        // A direct send, then a close at once: B has it when close() returns.
        a.set("last", "{}".into(), expires).unwrap();
        a.flush(true);
        assert_eq!(batches("writeBatches"), 33);
        assert_eq!(a.close_reporting(), None);
        assert_eq!(b.length(), 30 + 1 + 10 + 1);
        assert_eq!(b.get("d7").map(|doc| doc.len()), Some(2_010));
        assert_eq!(b.stats()["missingDatagrams"], 0);
        b.close();
    }

    /// Multicast loops every datagram back to its sender: the node recognizes its own by header
    /// and source address and drops them as `ownLoopback`, not as drops or replays; a second
    /// node still gets every write.
    #[test]
    fn own_looped_back_datagrams_are_recognized_not_dropped_as_bad() {
        let nodes = loopback_cluster("own-echo", 2, Default::default());
        let expires = Some(now_ms() + 600_000);
        // ≈1 KB each: one datagram per write.
        for i in 0..500 {
            nodes[0].set(&format!("s{i}"), format!(r#"{{"pad":"{}"}}"#, "x".repeat(1_000)), expires).unwrap();
            nodes[0].flush(false);
        }
        assert!(wait_for_convergence(&nodes, 500), "stats: {}", nodes[1].stats());
        std::thread::sleep(Duration::from_millis(200));
        let stats = nodes[0].stats();
        assert!(stats["ownLoopback"].as_u64().unwrap() >= 500, "stats: {stats}");
        assert_eq!(stats["dropped"], serde_json::json!({}), "stats: {stats}");
        nodes.iter().for_each(Engine::close);
    }

    /// With a retransmit buffer of 16 datagrams, most gaps can no longer be repaired from it: the
    /// sender answers `Gone` and the receiver repairs by anti-entropy over TCP.
    #[test]
    fn gaps_beyond_the_retransmit_buffer_are_repaired_by_anti_entropy() {
        let hooks = crate::options::TestHooks { inbound_loss: 0.3, retransmit_datagrams: 16, ..Default::default() };
        let nodes = loopback_cluster("gone", 2, hooks);
        let expires = Some(now_ms() + 600_000);
        for i in 0..2_000 {
            nodes[0].set(&format!("s{i}"), format!(r#"{{"pad":"{}"}}"#, "x".repeat(1_000)), expires).unwrap();
        }
        assert!(wait_for_convergence(&nodes, 2_000), "stats: {}", nodes[1].stats());
        assert!(stat(&nodes, "antiEntropySyncs") > 0, "stats: {}", nodes[1].stats());
        nodes.iter().for_each(Engine::close);
    }

    /// No multicast at all: three nodes on their own ports, each listing all three in `peers`.
    /// The third starts late (a peer down at start), joins through the peers list and gets the
    /// state; writes from every node reach every node, with 10% loss.
    #[test]
    fn unicast_peers_replicate_without_multicast() {
        let base = 40_000 + (std::process::id() % 10_000) as u16;
        let ports = [base, base + 1, base + 2];
        let peers: Vec<crate::options::Peer> =
            ports.iter().map(|port| crate::options::Peer { host: "localhost".into(), port: *port }).collect();
        let node = |port: u16| {
            let config = Config {
                ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
                multicast: None,
                multicast_port: port,
                peers: peers.clone(),
                cluster: format!("peers-{base}"),
                heartbeat_interval_ms: 50,
                failure_timeout_ms: 1000,
                hooks: crate::options::TestHooks { inbound_loss: 0.1, ..Default::default() },
                ..Config::default()
            };
            Engine::start(config, crate::events::discard()).unwrap()
        };
        let mut nodes = vec![node(ports[0]), node(ports[1])];
        std::thread::sleep(Duration::from_millis(400));
        let expires = Some(now_ms() + 600_000);
        for i in 0..500 {
            nodes[i % 2].set(&format!("s{i}"), format!(r#"{{"n":{i}}}"#), expires).unwrap();
        }
        nodes.push(node(ports[2]));
        std::thread::sleep(Duration::from_millis(600));
        for i in 500..1_000 {
            nodes[i % 3].set(&format!("s{i}"), format!(r#"{{"n":{i}}}"#), expires).unwrap();
        }
        assert!(wait_for_convergence(&nodes, 1_000), "stats: {}", nodes[2].stats());
        assert_eq!(nodes[2].stats()["stateTransfers"], 1);
        assert_eq!(nodes[0].stats()["members"], 3);
        nodes.iter().for_each(Engine::close);
    }

    /// A node that leaves right after its last writes takes none of them with it. Three nodes on
    /// loopback, the two receivers dropping 20% of the datagrams they receive: A writes 200
    /// sessions (handed to its network thread every 20 writes, as the JS adapter does at the end
    /// of an event-loop turn) and closes at once. When close() returns, B and C hold all 200: the
    /// leave waited until both acknowledged A's last datagram, repairing their losses meanwhile.
    /// Then they list A as left (or dead, if both copies of its Leave were lost), with nothing
    /// missing. Five runs.
    #[test]
    fn a_leaving_node_delivers_its_last_writes_despite_loss() {
        let lossy = crate::options::TestHooks { inbound_loss: 0.2, ..Default::default() };
        let mut naks_and_acks = (0, 0);
        for run in 0..5 {
            let hooks = vec![Default::default(), lossy.clone(), lossy.clone()];
            let nodes = loopback_nodes(&format!("lossy-leave{run}"), hooks);
            let (a, receivers) = (&nodes[0], &nodes[1..]);
            let expires = Some(now_ms() + 600_000);
            for i in 0..200 {
                a.set(&format!("s{i}"), format!(r#"{{"run":{run},"n":{i}}}"#), expires).unwrap();
                if i % 20 == 19 {
                    a.flush(false);
                }
            }
            let started = std::time::Instant::now();
            let warning = a.close_reporting();
            let took = started.elapsed();
            let counts: Vec<usize> = receivers.iter().map(Engine::length).collect();
            let when = format!("run {run}: sessions on B and C when A's close() returned ({took:?}); {warning:?}");
            assert_eq!(counts, [200, 200], "{when}");
            assert_eq!(warning, None, "run {run}");
            for n in receivers {
                assert_eq!(n.get("s199").as_deref(), Some(format!(r#"{{"run":{run},"n":199}}"#).as_str()));
                // Left; dead (after failureTimeout) if both copies of A's Leave were lost.
                let gone = || matches!(member_state(n, a.header.node).as_deref(), Some("left" | "dead"));
                assert!(wait_until(gone), "run {run}: A still listed as {:?}", member_state(n, a.header.node));
                assert_eq!(n.stats()["missingDatagrams"], 0, "run {run}: {}", n.stats());
            }
            naks_and_acks.0 += stat(receivers, "naksSent");
            naks_and_acks.1 += stat(receivers, "acksSent");
            nodes.iter().for_each(Engine::close);
        }
        assert!(naks_and_acks.0 > 0 && naks_and_acks.1 > 0, "losses repaired, acks sent: {naks_and_acks:?}");
    }

    /// The leave is bounded. B, a fake member speaking the wire format, sends heartbeats (so it
    /// stays alive to A) and never acknowledges anything: A's close() returns after
    /// LEAVE_TIMEOUT with a warning naming B, not C, which did acknowledge and has A's write.
    #[test]
    fn a_leave_that_times_out_names_the_members_that_did_not_acknowledge() {
        use crate::wire::{Message, NodeInfo};
        let nodes = loopback_cluster("leave-timeout", 2, Default::default());
        let (a, c) = (&nodes[0], &nodes[1]);
        let port = a.members()[0]["port"].as_u64().unwrap() as u16;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b_id = 0x5e4d_0002;
        let header = Header { cluster: wire::cluster_id(&a.config.cluster), node: b_id, incarnation: now_ms() };
        let b = Link::new(header, Codec::new(&a.config.cluster, &[]));
        let info = NodeInfo { addr: socket.local_addr().unwrap(), tcp_port: 9, listen_port: 0 };
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                socket.send_to(&b.seal(&Message::Join(info)), ("127.0.0.1", port)).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    let heartbeat = Message::Heartbeat { info, high_seq: 0, sent_ms: now_ms() };
                    let _ = socket.send_to(&b.seal(&heartbeat), ("127.0.0.1", port));
                }
            });
            assert!(wait_until(|| a.stats()["members"] == 3), "A sees B and C: {}", a.members());
            a.set("s", "{}".into(), Some(now_ms() + 600_000)).unwrap();
            let started = std::time::Instant::now();
            let warning = a.close_reporting();
            let took = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            let warning = warning.expect("a warning");
            let bound = LEAVE_TIMEOUT + LEAVE_MARGIN + Duration::from_millis(500);
            assert!(took >= LEAVE_TIMEOUT && took < bound, "{took:?}");
            assert!(warning.starts_with("leave: after 10"), "{warning}");
            let named = format!(
                "1 live member(s) had not acknowledged this node's last datagram (seq 1): {b_id:016x} at {}",
                info.addr
            );
            assert!(warning.contains(&named), "{warning}");
            assert_eq!(c.get("s").as_deref(), Some("{}"));
        });
        nodes.iter().for_each(Engine::close);
    }

    /// Data from a node after its `Leave` (a late retransmission, or a replay) is dropped as
    /// `departedSender`: it re-creates no stream of that node, so nothing of it is NAKed and
    /// `missingDatagrams` stays 0. The node here is a fake member speaking the wire format.
    #[test]
    fn data_after_a_leave_reopens_no_stream_and_is_never_naked() {
        use crate::wire::{Kind, Message, NodeInfo, Payload};
        let nodes = loopback_cluster("departed-sender", 1, Default::default());
        let node = &nodes[0];
        let port = node.members()[0]["port"].as_u64().unwrap() as u16;
        let to = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let cluster = wire::cluster_id(&node.config.cluster);
        let id = 0x5e4d_0001;
        let header = Header { cluster, node: id, incarnation: now_ms() };
        let fake = Link::new(header, Codec::new(&node.config.cluster, &[]));
        let send = |msg: &Message| socket.send_to(&fake.seal(msg), to).unwrap();
        let set = |seq: u64, sid: &str| {
            let version = crate::clock::Version { hlc: now_ms() << 16, node: id };
            let op = Op::Set { sid: sid.into(), doc: "{}".into(), expires_at: now_ms() + 600_000, version };
            Message::Data { seq, ask_ack: false, payload: Payload::Ops(vec![op]) }
        };
        send(&Message::Join(NodeInfo { addr: socket.local_addr().unwrap(), tcp_port: 9, listen_port: 0 }));
        send(&set(1, "before"));
        assert!(wait_until(|| node.get("before").is_some()), "a member's data is applied");
        send(&Message::Leave);
        assert!(wait_until(|| member_state(node, id).as_deref() == Some("left")));

        // Late: one datagram that would open its stream again at 5, one that would leave 6..=7 missing.
        send(&set(5, "late-5"));
        send(&set(8, "late-8"));
        let mut kinds = Vec::new();
        let mut buf = [0u8; 2048];
        let until = std::time::Instant::now() + Duration::from_millis(400);
        while std::time::Instant::now() < until {
            if let Ok(n) = socket.recv(&mut buf) {
                kinds.extend(wire::peek_header(&buf[..n], cluster).map(|(kind, _)| kind));
            }
        }
        assert!(!kinds.contains(&Kind::Nak), "NAKed a departed node: {kinds:?}");
        let stats = node.stats();
        assert_eq!(stats["missingDatagrams"], 0, "{stats}");
        assert_eq!(stats["dropped"]["departedSender"], 2, "{stats}");
        assert_eq!((node.get("late-5"), node.get("late-8")), (None, None));
        nodes.iter().for_each(Engine::close);
    }

    /// What `ask` answers, waited for.
    fn ask(node: &Engine, sid: &str) -> Option<Arc<str>> {
        let (sender, answer) = std::sync::mpsc::channel();
        node.ask(sid).expect("asked").then(move |doc| sender.send(doc).unwrap());
        answer.recv_timeout(Duration::from_secs(10)).expect("an answer")
    }

    /// A receives no `Data` from B: what B writes exists on B only. A `get` on A that finds
    /// nothing asks B and gets its session (in a datagram, or over TCP when it does not fit
    /// one), merged into A's table so the next get is local; a sid B destroyed comes back as a
    /// tombstone, and a sid nobody holds as nothing, once B answered.
    #[test]
    fn a_miss_asks_the_alive_members_and_merges_what_they_hold() {
        let deaf = crate::options::TestHooks { drop_inbound_data: true, ..Default::default() };
        let nodes = loopback_nodes("miss-asks-cluster", vec![deaf, Default::default()]);
        let (a, b) = (&nodes[0], &nodes[1]);
        assert!(wait_until(|| a.stats()["members"] == 2 && b.stats()["members"] == 2));
        let expires = Some(now_ms() + 600_000);
        let large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(100_000));
        b.set("small", r#"{"n":1}"#.into(), expires).unwrap();
        b.set("large", large.clone(), expires).unwrap();
        b.set("destroyed", "{}".into(), expires).unwrap();
        b.destroy("destroyed");
        b.flush(false);
        std::thread::sleep(Duration::from_millis(200));
        for sid in ["small", "large", "destroyed", "nowhere"] {
            assert_eq!(a.lookup(sid), Lookup::Unknown, "{sid} is not on A");
        }

        let started = std::time::Instant::now();
        assert_eq!(ask(a, "small").as_deref(), Some(r#"{"n":1}"#));
        assert!(started.elapsed() < Duration::from_millis(1_000), "B answered: no timeout ({:?})", started.elapsed());
        assert_eq!(a.lookup("small"), Lookup::Live(r#"{"n":1}"#.into()), "merged: the next get is local");
        assert_eq!(ask(a, "large").as_deref(), Some(large.as_str()));
        assert_eq!(ask(a, "destroyed"), None);
        assert_eq!(a.lookup("destroyed"), Lookup::Gone, "the tombstone was merged");
        assert_eq!(ask(a, "nowhere"), None);
        assert_eq!(a.lookup("nowhere"), Lookup::Unknown);
        let stats = a.stats();
        let counts = ["missQueries", "missesRecovered", "missesNotFound", "missTimeouts", "missesRateLimited"];
        let counts = counts.map(|k| &stats[k]);
        assert_eq!(counts, [4, 2, 2, 0, 0], "{stats}");
        assert_eq!(stats["dropped"], serde_json::json!({}), "{stats}");
        nodes.iter().for_each(Engine::close);
    }

    fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn set_get_touch_destroy() {
        let e = engine(Config::default());
        e.set("s", r#"{"cookie":{"a":1},"n":1}"#.into(), Some(now_ms() + 60_000)).unwrap();
        assert_eq!(e.get("s").as_deref(), Some(r#"{"cookie":{"a":1},"n":1}"#));
        e.touch("s", Some(r#"{"a":2}"#.into()), Some(now_ms() + 60_000)).unwrap();
        assert_eq!(e.get("s").as_deref(), Some(r#"{"cookie":{"a":2},"n":1}"#));
        e.destroy("s");
        assert_eq!(e.get("s"), None);
        assert_eq!(e.stats()["tombstones"], 1);
    }

    #[test]
    fn too_large_is_refused_and_nothing_else_changes() {
        let e = engine(Config { max_session_bytes: 10, ..Config::default() });
        e.set("ok", "{}".into(), None).unwrap();
        assert_eq!(e.set("big", "x".repeat(11), None), Err(WriteError::TooLarge));
        assert_eq!(e.get("big"), None);
        assert_eq!(e.length(), 1);
        assert_eq!(e.stats()["rejectedTooLarge"], 1);
    }

    #[test]
    fn session_ttl_caps_cookie_expiry() {
        let e = engine(Config { session_ttl_ms: Some(30), ..Config::default() });
        e.set("s", "{}".into(), Some(now_ms() + 60_000)).unwrap();
        assert!(e.get("s").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(e.get("s"), None);
    }

    #[test]
    fn sweeper_purges_in_background_and_close_is_idempotent() {
        let e = engine(Config::default());
        e.set("s", "{}".into(), Some(now_ms() + 5)).unwrap();
        std::thread::sleep(SWEEP_INTERVAL + Duration::from_millis(300));
        assert_eq!(e.stats()["entries"], 0);
        assert_eq!(e.stats()["purged"], 1);
        e.close();
        e.close();
    }
}
