//! The simulated cluster: nodes (the real `core::Node`, with a table and a clock each) on the
//! in-memory network of net.rs, driven in simulated time the way driver/ drives them for real.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

mod checks;
mod tcp;
mod workload;

use super::check::{History, Written};
use super::disk::Snapshot;
use super::net::{self, Event, Queue};
use super::plan::{Plan, Transport};
use crate::clock::Clock;
use crate::core::membership::MemberState;
use crate::core::sync::{self, Fetched, Pull};
use crate::core::{Node, Now, Output, Role, Settings, Transmit};
use crate::crypto::Codec;
use crate::events::Event as NodeEvent;
use crate::options::{Config, Peer, Secret};
use crate::table::{Lookup, Op, Table};
use crate::wire::{self, Header, Message, NodeInfo};

pub const CLUSTER: &str = "sim";
/// The wall clock at simulated time 0, ms.
const WALL0: u64 = 1_800_000_000_000;
const GROUP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(239, 1, 2, 3)), 4000);
const CLUSTER_PORT: u16 = 4000;
/// The real driver's TCP timeouts: to connect, and of a stalled transfer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Partial fragmented messages held at most (`maxSessionBytes` 1 MiB: the 16 MiB floor).
const REASSEMBLY_BUDGET: u64 = 16 << 20;

pub struct Live {
    pub node: Node,
    pub table: Arc<Table>,
    clock: Arc<Clock>,
    codec: Arc<Codec>,
    pub header: Header,
    addr: SocketAddr,
    tcp: SocketAddr,
    audience: bool,
    /// Writes made and not flushed yet, and the number of the last one.
    queued: Vec<Op>,
    pushed: u64,
    flush_due: bool,
    /// `waitForAck`: each batch flushed (its last write) and the members alive then.
    batches: VecDeque<(u64, Vec<(u64, u64)>)>,
    /// The writes numbered (write number, index in the history).
    numbered: VecDeque<(u64, usize)>,
    ack_timeouts: u64,
    pub ready: bool,
    leaving: bool,
    asked: BTreeSet<u64>,
    /// Every packet this node opened: none twice.
    opened: HashSet<(u64, u64, u64)>,
}

pub struct Slot {
    pub skew_ms: i64,
    ip: Ipv4Addr,
    pub live: Option<Live>,
    /// The slot's snapshot file (`persist`): the last one its nodes wrote.
    snapshot: Option<Snapshot>,
}

pub struct World {
    pub plan: Plan,
    rng: SmallRng,
    pub t: Duration,
    base: Instant,
    queue: Queue,
    pub slots: Vec<Slot>,
    next_port: u16,
    pub history: History,
    /// Genuine datagrams seen on the wire, replayed by the garbage.
    captured: Vec<(SocketAddr, Vec<u8>)>,
    pub trace: VecDeque<String>,
    pub failure: Option<String>,
}

fn exp(rng: &mut SmallRng, per_second: f64) -> Duration {
    Duration::from_secs_f64(-(1.0 - rng.random::<f64>()).ln() / per_second)
}

impl World {
    pub fn new(seed: u64, plan: Plan) -> World {
        let slots = (0..plan.slots)
            .map(|i| Slot {
                skew_ms: plan.skew_ms[i],
                ip: Ipv4Addr::new(10, 0, 0, i as u8 + 1),
                live: None,
                snapshot: None,
            })
            .collect();
        let mut world = World {
            rng: SmallRng::seed_from_u64(seed),
            t: Duration::ZERO,
            base: Instant::now(),
            queue: Queue::default(),
            slots,
            next_port: 40_000,
            history: History::default(),
            captured: Vec::new(),
            trace: VecDeque::new(),
            failure: None,
            plan,
        };
        for slot in 0..world.plan.slots {
            world.queue.at(world.plan.starts[slot], Event::Start { slot });
        }
        for index in 0..world.plan.stops.len() {
            world.queue.at(world.plan.stops[index].at, Event::Stop { index });
        }
        world.queue.at(Duration::ZERO, Event::Write);
        if world.plan.garbage_rate > 0.0 {
            world.queue.at(Duration::ZERO, Event::Garbage);
        }
        world.queue.at(Duration::from_secs(1), Event::Sweep);
        world.queue.at(Duration::ZERO, Event::Check);
        world
    }

    pub fn note(&mut self, line: String) {
        if self.trace.len() == 400 {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>9.3} ms  {line}", self.t.as_secs_f64() * 1e3));
    }

    pub fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.note(format!("FAILED: {why}"));
            self.failure = Some(why);
        }
    }

    /// The moment on the clocks of slot `slot`.
    fn now(&self, slot: usize) -> Now {
        let ms = (WALL0 + self.t.as_millis() as u64).saturating_add_signed(self.slots[slot].skew_ms);
        Now { instant: self.base + self.t, ms }
    }

    fn live(&mut self, slot: usize, incarnation: u64) -> Option<&mut Live> {
        self.slots[slot].live.as_mut().filter(|l| l.header.incarnation == incarnation)
    }

    /// Runs until `until`, or the first failure.
    pub fn run(&mut self, until: Duration) {
        while self.failure.is_none() {
            let timer = self.earliest_timer();
            let event = self.queue.next_at();
            let next = match (timer, event) {
                (Some((at, _)), Some(e)) if at < e => at,
                (Some((at, _)), None) => at,
                (_, Some(e)) => e,
                (None, None) => return,
            };
            if next > until {
                return;
            }
            self.t = self.t.max(next);
            match timer {
                Some((at, slot)) if at <= next && event.is_none_or(|e| at < e) => {
                    let now = self.now(slot);
                    if let Some(live) = self.slots[slot].live.as_mut() {
                        live.node.handle_timeout(now);
                    }
                    self.drain(slot);
                }
                _ => {
                    let (_, event) = self.queue.pop().expect("an event");
                    self.handle(event);
                }
            }
        }
    }

    fn earliest_timer(&self) -> Option<(Duration, usize)> {
        let timers = self.slots.iter().enumerate().filter_map(|(i, s)| {
            let at = s.live.as_ref()?.node.poll_timeout()?;
            Some((at.saturating_duration_since(self.base), i))
        });
        timers.min()
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver { slot, incarnation, from, via_group, bytes, genuine } => {
                self.deliver(slot, incarnation, from, via_group, &bytes, genuine)
            }
            Event::SyncServe { slot, incarnation, target, tcp, full } => {
                self.serve(slot, incarnation, target, tcp, full)
            }
            Event::SyncFrames { slot, incarnation, target, full, frames } => {
                self.pulled(slot, incarnation, target, full, frames)
            }
            Event::SyncFailed { slot, incarnation, target, full, why } => {
                let now = self.now(slot);
                if let Some(live) = self.live(slot, incarnation) {
                    live.node.sync_done(target, full, Err(why.into()), now);
                    self.drain(slot);
                }
            }
            Event::FetchServe { slot, incarnation, token, sid, tcp, deadline } => {
                self.serve_fetch(slot, incarnation, token, sid, tcp, deadline)
            }
            Event::FetchFrame { slot, incarnation, token, sid, frame } => {
                self.fetched(slot, incarnation, token, sid, frame)
            }
            Event::Write => self.write(),
            Event::Flush { slot, incarnation } => self.flush(slot, incarnation),
            Event::Start { slot } => self.start(slot),
            Event::Stop { index } => self.stop(index),
            Event::Snapshot { slot, incarnation } => {
                if self.live(slot, incarnation).is_some() {
                    self.snapshot(slot);
                    let interval = self.plan.persist.unwrap_or(Duration::MAX);
                    self.queue.at(self.t + interval, Event::Snapshot { slot, incarnation });
                }
            }
            Event::Garbage => self.garbage(),
            Event::Sweep => {
                for slot in 0..self.slots.len() {
                    let now = self.now(slot);
                    if let Some(live) = &self.slots[slot].live {
                        live.table.sweep(now.ms);
                    }
                }
                self.queue.at(self.t + Duration::from_secs(1), Event::Sweep);
            }
            Event::Check => {
                self.check();
                self.queue.at(self.t + Duration::from_millis(250), Event::Check);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Nodes

    fn start(&mut self, slot: usize) {
        if self.slots[slot].live.is_some() {
            return;
        }
        let plan = &self.plan;
        let now = self.now(slot);
        let node_id = self.rng.random::<u64>() | 1;
        let header = Header { cluster: wire::cluster_id(CLUSTER), node: node_id, incarnation: now.ms };
        let ip = self.slots[slot].ip;
        let addr = SocketAddr::new(IpAddr::V4(ip), self.next_port);
        let tcp = SocketAddr::new(IpAddr::V4(ip), self.next_port + 1);
        self.next_port += 2;
        let peers_mode = plan.transport != Transport::Multicast;
        let peers: Vec<Peer> = if peers_mode {
            self.slots.iter().map(|s| Peer { host: s.ip.to_string(), port: CLUSTER_PORT }).collect()
        } else {
            Vec::new()
        };
        let config = Config {
            heartbeat_interval_ms: plan.heartbeat.as_millis() as u64,
            failure_timeout_ms: plan.failure_timeout.as_millis() as u64,
            wait_for_ack: plan.wait_for_ack,
            ack_timeout_ms: 300,
            miss_timeout_ms: plan.miss_timeout.as_millis() as u64,
            peers,
            ..Config::default()
        };
        let group = (plan.transport != Transport::Peers).then_some(GROUP);
        let me = NodeInfo { addr, tcp_port: tcp.port(), listen_port: if peers_mode { CLUSTER_PORT } else { 0 } };
        let mut settings = Settings::new(&config, Role::Member, me, group);
        settings.retransmit_datagrams = plan.retransmit_datagrams;
        let secrets = if plan.sealed { vec![Secret::Key([7; 32])] } else { Vec::new() };
        let codec = Arc::new(Codec::new(CLUSTER, &secrets));
        let table = Arc::new(Table::with_retention(plan.retention.as_millis() as u64));
        let clock = Arc::new(Clock::new(node_id));
        let restored = self.slots[slot].snapshot.as_ref().map(|snapshot| snapshot.load(&table, &clock, now.ms));
        let mut node = Node::new(settings, header, codec.clone(), table.clone(), clock.clone(), self.rng.random(), now);
        if peers_mode {
            let mut resolved: Vec<SocketAddr> =
                self.slots.iter().map(|s| SocketAddr::new(IpAddr::V4(s.ip), CLUSTER_PORT)).collect();
            resolved.sort();
            node.set_peers(resolved);
        }
        node.start(now);
        if let Some(restored) = restored {
            self.note(format!("slot {slot}: node {node_id:016x} loads {} writes from its snapshot", restored.len()));
            self.history.restored.insert((node_id, header.incarnation), restored);
        }
        if let Some(interval) = self.plan.persist {
            self.queue.at(self.t + interval, Event::Snapshot { slot, incarnation: header.incarnation });
        }
        self.slots[slot].live = Some(Live {
            node,
            table,
            clock,
            codec,
            header,
            addr,
            tcp,
            audience: false,
            queued: Vec::new(),
            pushed: 0,
            flush_due: false,
            batches: VecDeque::new(),
            numbered: VecDeque::new(),
            ack_timeouts: 0,
            ready: false,
            leaving: false,
            asked: BTreeSet::new(),
            opened: HashSet::new(),
        });
        self.note(format!("slot {slot}: node {node_id:016x} starts at {addr}"));
        self.drain(slot);
    }

    fn stop(&mut self, index: usize) {
        let stop = self.plan.stops[index].clone();
        let now = self.now(stop.slot);
        let Some(live) = self.slots[stop.slot].live.as_mut() else { return };
        if live.leaving {
            return;
        }
        let node = live.header.node;
        if stop.graceful {
            // As the driver's leave: the writes still queued go out first.
            live.leaving = true;
            let (ops, last) = (std::mem::take(&mut live.queued), live.pushed);
            live.node.write_batch(ops, last);
            live.node.leave(now);
            self.note(format!("slot {}: node {node:016x} leaves", stop.slot));
            self.drain(stop.slot);
        } else {
            self.history.crashed.insert(node);
            self.slots[stop.slot].live = None;
            self.note(format!("slot {}: node {node:016x} killed", stop.slot));
        }
        if let Some(after) = stop.restart {
            self.queue.at(self.t + after, Event::Start { slot: stop.slot });
        }
    }

    /// The node in `slot` writes its snapshot file.
    fn snapshot(&mut self, slot: usize) {
        let now = self.now(slot).ms;
        let Some(live) = self.slots[slot].live.as_ref() else { return };
        self.slots[slot].snapshot = Some(Snapshot::take(&live.table, &live.clock, now));
    }

    /// Sends what the node wants sent, and acts on its other outputs.
    fn drain(&mut self, slot: usize) {
        loop {
            let Some(live) = self.slots[slot].live.as_mut() else { return };
            if let Some(datagram) = live.node.poll_transmit() {
                self.transmit(slot, datagram);
            } else if let Some(output) = live.node.poll_output() {
                self.act(slot, output);
            } else {
                return;
            }
        }
    }

    fn act(&mut self, slot: usize, output: Output) {
        let now = self.now(slot);
        let t = self.t;
        let Some(live) = self.slots[slot].live.as_mut() else { return };
        let (node, incarnation) = (live.header.node, live.header.incarnation);
        match output {
            Output::Event(NodeEvent::Acked { through }) => self.acked(slot, through),
            Output::Event(NodeEvent::Ready) => live.ready = true,
            Output::Event(NodeEvent::Member { change, node: member }) => {
                let line = format!("slot {slot}: {} {}", member["id"].as_str().unwrap_or("?"), change.name());
                self.note(line);
            }
            Output::Event(NodeEvent::Log { message, .. }) => {
                if message.starts_with("state transfer") || message.contains("failed") {
                    self.note(format!("slot {slot}: {message}"));
                }
            }
            Output::Event(NodeEvent::Error { message, .. }) => {
                self.fail(format!("slot {slot}: error event: {message}"))
            }
            Output::Audience(audience) => live.audience = audience,
            Output::Answered { token } => _ = live.asked.remove(&token),
            Output::Sync { node: target, tcp, full } => {
                let at = t + self.delay();
                self.queue.at(at, Event::SyncServe { slot, incarnation, target, tcp, full });
            }
            Output::Fetch { token, sid, tcp, deadline } => {
                let deadline = deadline.saturating_duration_since(self.base);
                let at = t + self.delay();
                self.queue.at(at, Event::FetchServe { slot, incarnation, token, sid, tcp, deadline });
            }
            Output::Left { warning } => {
                if warning.is_none() {
                    let alive = live.node.members().all().filter(|m| m.state == MemberState::Alive);
                    let custodians = alive.map(|m| (m.id, m.incarnation)).collect();
                    self.history.left_cleanly.insert(node, custodians);
                } else {
                    self.history.left_warned.insert(node);
                }
                // As `close()`: the last snapshot once the leave is over.
                if self.plan.persist.is_some() {
                    self.snapshot(slot);
                }
                self.slots[slot].live = None;
                self.note(format!("slot {slot}: node {node:016x} left at {} ({warning:?})", now.ms));
            }
        }
    }

    fn delay(&mut self) -> Duration {
        Duration::from_micros(self.rng.random_range(self.plan.delay_us.0..=self.plan.delay_us.1))
    }

    /// The slots a datagram sent to `to` reaches, and whether through the group.
    fn reached_by(&self, to: SocketAddr) -> Vec<(usize, bool)> {
        if to == GROUP {
            return (0..self.slots.len()).filter(|i| self.slots[*i].live.is_some()).map(|i| (i, true)).collect();
        }
        let peers = self.plan.transport != Transport::Multicast;
        let listens = |s: &Slot| peers && to == SocketAddr::new(IpAddr::V4(s.ip), CLUSTER_PORT);
        let reached = self
            .slots
            .iter()
            .position(|s| s.live.as_ref().is_some_and(|l| l.addr == to) || (s.live.is_some() && listens(s)));
        reached.map(|i| (i, false)).into_iter().collect()
    }

    fn transmit(&mut self, from_slot: usize, datagram: Transmit) {
        let Some(from) = self.slots[from_slot].live.as_ref().map(|l| l.addr) else { return };
        if self.captured.len() < 256 {
            self.captured.push((from, datagram.bytes.clone()));
        } else {
            let i = self.rng.random_range(0..self.captured.len() * 4);
            if i < self.captured.len() {
                self.captured[i] = (from, datagram.bytes.clone());
            }
        }
        for to in &datagram.to {
            for (slot, via_group) in self.reached_by(*to) {
                let incarnation = self.slots[slot].live.as_ref().map_or(0, |l| l.header.incarnation);
                for at in net::fates(&self.plan, &mut self.rng, from_slot, slot, self.t) {
                    let bytes = datagram.bytes.clone();
                    self.queue.at(at, Event::Deliver { slot, incarnation, from, via_group, bytes, genuine: true });
                }
            }
        }
    }

    fn deliver(
        &mut self,
        slot: usize,
        incarnation: u64,
        from: SocketAddr,
        via_group: bool,
        bytes: &[u8],
        genuine: bool,
    ) {
        let now = self.now(slot);
        let Some(live) = self.live(slot, incarnation) else { return };
        let before = live.node.counters().opened;
        live.node.handle_datagram(now, bytes, from, via_group);
        let opened = live.node.counters().opened > before;
        if live.node.acks_asked() {
            live.node.send_asked_acks();
        }
        if opened {
            let key = wire::peek_header(bytes, live.header.cluster).map(|(_, h)| (h.node, h.incarnation));
            let key = key.map(|(node, inc)| (node, inc, wire::packet_number(bytes)));
            let fresh = key.is_ok_and(|key| live.opened.insert(key));
            if !genuine || !fresh {
                self.fail(format!("slot {slot}: a packet was accepted twice, or a forged one at all: {key:?}"));
            }
        }
        self.drain(slot);
    }
}

impl Live {
    pub fn pending_asks(&self) -> usize {
        self.asked.len()
    }
}
