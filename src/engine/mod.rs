//! The engine behind one store: the session table, the clock that versions local writes, and,
//! when networked, the node that replicates them (its protocol core driven by driver/), all on
//! a background runtime. The JS thread reads and writes the table directly.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::json;

use crate::clock::{now_ms, Clock};
use crate::core::{Role, LEAVE_TIMEOUT};
use crate::crypto::{derive_key, Codec};
use crate::driver::outbox::Outbox;
use crate::driver::{Answer, Driver, Parts};
use crate::events::{Event, EventSink, Level};
use crate::options::{Config, Secret};
use crate::persist::Persist;
use crate::stats::{Net, Snapshot, Sources};
use crate::table::{expiry, Lookup, Op, Table};
use crate::wire::{self, Header};

#[cfg(test)]
use crate::driver::TestHooks;

#[cfg(test)]
mod tests;

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
    /// Snapshots on disk (`persist`), when configured.
    pub(crate) persist: Option<Arc<Persist>>,
    /// Local writes on their way to the cluster; `None` when the node is not networked.
    outbox: Option<Arc<Outbox>>,
    /// Why the network could not start, when it could not (the store then serves alone).
    network_error: Option<String>,
    /// Taken by `close()`: dropping it stops every thread and releases the event callback.
    running: Mutex<Option<Running>>,
}

struct Running {
    runtime: tokio::runtime::Runtime,
    driver: Option<Arc<Driver>>,
}

impl Engine {
    /// Starts the engine. Only a runtime that cannot start is an error: a network that cannot
    /// start is reported through `events` (an error) and in `stats()`, and the store serves on
    /// alone: express-session must keep its sessions (docs/operations.md "Errors at start").
    pub fn start(config: Config, events: EventSink) -> std::io::Result<Engine> {
        Self::launch(
            config,
            events,
            Role::Member,
            #[cfg(test)]
            TestHooks::default(),
        )
    }

    /// An engine that observes and probes the cluster without joining it (the doctor).
    pub fn observer(config: Config, events: EventSink) -> std::io::Result<Engine> {
        Self::launch(
            config,
            events,
            Role::Observer,
            #[cfg(test)]
            TestHooks::default(),
        )
    }

    /// `start`, with faults injected into what the node receives.
    #[cfg(test)]
    pub fn start_with(config: Config, events: EventSink, hooks: TestHooks) -> std::io::Result<Engine> {
        Self::launch(config, events, Role::Member, hooks)
    }

    fn launch(
        mut config: Config,
        events: EventSink,
        role: Role,
        #[cfg(test)] hooks: TestHooks,
    ) -> std::io::Result<Engine> {
        // Each passphrase is stretched once (Argon2id, about 25 ms): the wire's codec and the
        // snapshots' keys are both derived from the cluster key it gives.
        config.secrets = config.secrets.iter().map(|secret| Secret::Key(derive_key(secret, &config.cluster))).collect();
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
        let persist = (config.persist.as_ref().filter(|_| role == Role::Member))
            .map(|p| Arc::new(Persist::new(&config, p, node_id, header.incarnation, events.clone())));
        let table = Arc::new(persist.as_ref().map_or_else(Table::new, |p| p.load(&clock)));
        if let Some(persist) = &persist {
            runtime.spawn(persist.clone().run(table.clone(), clock.clone()));
        }
        let counters = Arc::<Counters>::default();
        runtime.spawn(sweep_forever(table.clone(), counters.clone()));

        let (mut outbox, mut driver, mut network_error) = (None, None, None);
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
            let queue = Arc::new(Outbox::default());
            let codec = Arc::new(Codec::new(&config.cluster, &config.secrets));
            let parts = Parts {
                header,
                codec,
                table: table.clone(),
                clock: clock.clone(),
                events: events.clone(),
                outbox: queue.clone(),
            };
            let _runtime = runtime.enter();
            match Driver::start(
                &config,
                role,
                parts,
                #[cfg(test)]
                hooks,
            ) {
                Ok(started) => {
                    outbox = Some(queue);
                    driver = Some(started);
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
        let running = Mutex::new(Some(Running { runtime, driver }));
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
            Lookup::Unknown if !self.driver().is_some_and(|d| d.with_node(|n| n.can_ask())) => Lookup::Gone,
            found => found,
        }
    }

    /// Asks the alive members about a sid `lookup` found `Unknown` (docs/how-it-works.md "Reading
    /// a session that has not arrived yet"); `answer` gets the session once they answered, on the engine's
    /// thread (dropped uncalled if the engine closes first). False when nothing is asked: over
    /// the rate limit, or the network is closed.
    pub fn ask(&self, sid: &str, answer: impl FnOnce(Option<Arc<str>>) + Send + 'static) -> bool {
        let answer: Answer = Box::new(answer);
        self.driver().is_some_and(|d| d.ask(sid, answer))
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
    /// are sent from this thread instead when no batch is in flight (see `Driver::flush`).
    pub fn flush(&self, direct: bool) {
        let Some(outbox) = &self.outbox else { return };
        match direct.then(|| self.driver()).flatten() {
            Some(driver) => driver.flush(),
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
        let driver = self.driver();
        let node = driver.as_ref().map(|d| {
            d.with_node(|n| {
                (n.reachable_members(), n.is_ready(), Net { counters: n.counters().clone(), buffers: n.buffers() })
            })
        });
        let sources = Sources {
            table: self.table.counts(now_ms()),
            counters: &self.counters,
            network: self.network_state(),
            network_error: self.network_error.as_deref(),
            persist: self.persist.as_ref().map(|p| &p.stats),
            members: 1 + node.as_ref().map_or(0, |(reachable, _, _)| *reachable),
            ready: node.as_ref().is_none_or(|(_, ready, _)| *ready),
            net: node.map(|(_, _, net)| net),
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
            (Some(Running { driver: None, .. }), None) => "off",
            (Some(Running { driver: Some(_), .. }), None) => "up",
        }
    }

    /// `stats()` and `members()` in the Prometheus text format.
    pub fn metrics(&self) -> String {
        let members = self.members();
        crate::metrics::render(&self.snapshot(), members.as_array().map_or(&[], Vec::as_slice))
    }

    /// This node first, then every member it knows of.
    pub fn members(&self) -> serde_json::Value {
        let driver = self.driver();
        let known = driver.as_ref().map(|d| d.with_node(|n| (n.me(), n.members_json())));
        let (address, port, tcp_port) = match &known {
            Some((me, _)) => (Some(me.addr.ip().to_string()), Some(me.addr.port()), Some(me.tcp_port)),
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
        if let Some((_, others)) = known {
            members.extend(others);
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
    /// `LEAVE_TIMEOUT` (1 s), then announces the leave (see `Node::leave`).
    pub fn close_reporting(&self) -> Option<String> {
        let Running { runtime, driver } = self.running.lock().take()?;
        let mut warning = None;
        if let Some(driver) = &driver {
            // The leave keeps to LEAVE_TIMEOUT by itself; this bounds the sends around it too.
            let leave = async { tokio::time::timeout(LEAVE_TIMEOUT + LEAVE_MARGIN, driver.leave()).await };
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
        if let Some(driver) = self.driver() {
            driver.probe(&sizes);
        }
    }

    /// What the probes found so far; `null` when the node is not networked.
    pub fn probe_report(&self) -> serde_json::Value {
        self.driver().map_or(serde_json::Value::Null, |d| d.with_node(|n| n.probe_report()))
    }

    fn driver(&self) -> Option<Arc<Driver>> {
        self.running.lock().as_ref().and_then(|r| r.driver.clone())
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
