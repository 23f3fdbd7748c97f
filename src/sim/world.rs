//! The simulated cluster: nodes (the real `core::Node`, with a table and a clock each) on the
//! in-memory network of net.rs, driven in simulated time the way driver/ drives them for real.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

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

    // ---------------------------------------------------------------------------------------
    // TCP: pulls and fetches, sealed and opened like the driver's frames

    /// A frame sealed by the node in `slot`.
    fn seal(&mut self, slot: usize, msg: &Message) -> Vec<u8> {
        let live = self.slots[slot].live.as_mut().expect("a live node");
        let pn = live.node.next_packet_number();
        live.codec.seal(wire::encode(&live.header, msg), pn)
    }

    /// A frame opened by the node in `slot`, checked like a datagram.
    fn open(&mut self, slot: usize, frame: &[u8]) -> Result<Message, &'static str> {
        let live = self.slots[slot].live.as_mut().expect("a live node");
        let (header, msg, pn) = live.codec.open_message(frame, live.header.cluster).map_err(|e| e.reason())?;
        live.node.accept(&header, pn).map_err(|e| e.reason())?;
        if !live.opened.insert((header.node, header.incarnation, pn)) {
            self.fail(format!("slot {slot}: a frame was accepted twice"));
        }
        Ok(msg)
    }

    fn server(&self, target: u64, tcp: SocketAddr) -> Option<usize> {
        self.slots.iter().position(|s| s.live.as_ref().is_some_and(|l| l.tcp == tcp && l.header.node == target))
    }

    /// A request reaches the server: it answers from its table, or the connection fails.
    fn serve(&mut self, slot: usize, incarnation: u64, target: u64, tcp: SocketAddr, full: bool) {
        let puller_now = self.now(slot);
        let Some(puller) = self.live(slot, incarnation) else { return };
        let request = sync::request(&puller.table, target, full, puller_now.ms);
        let failed = |why| Event::SyncFailed { slot, incarnation, target, full, why };
        let faulty = self.t < self.plan.faults_until;
        let Some(server) = self.server(target, tcp) else {
            return self.queue.at(self.t + Duration::from_millis(1), failed("connection refused"));
        };
        if !net::connected(&self.plan, slot, server, self.t) {
            return self.queue.at(self.t + CONNECT_TIMEOUT, failed("connect timed out"));
        }
        if faulty && self.rng.random_bool(self.plan.p_sync_failure) {
            let at = self.t + self.delay();
            return self.queue.at(at, failed("connection reset"));
        }
        let sealed = self.seal(slot, &request);
        let answer = self.open(server, &sealed).and_then(|request| {
            let server_now = self.now(server);
            let live = self.slots[server].live.as_mut().expect("the server");
            let source = live.node.sync_source();
            sync::respond(&live.table, target, request, source, server_now.ms)
        });
        match answer {
            Ok(messages) => {
                let frames: Vec<Vec<u8>> = messages.iter().map(|m| self.seal(server, m)).collect();
                let bytes: usize = frames.iter().map(Vec::len).sum();
                let at = self.t + self.delay() + Duration::from_nanos(bytes as u64 * 10);
                self.queue.at(at, Event::SyncFrames { slot, incarnation, target, full, frames });
            }
            Err(why) => {
                let at = self.t + self.delay();
                self.queue.at(at, failed(why))
            }
        }
    }

    fn pulled(&mut self, slot: usize, incarnation: u64, target: u64, full: bool, frames: Vec<Vec<u8>>) {
        if self.live(slot, incarnation).is_none() {
            return;
        }
        let server = self.slots.iter().position(|s| s.live.as_ref().is_some_and(|l| l.header.node == target));
        if !server.is_some_and(|server| net::connected(&self.plan, slot, server, self.t)) {
            let why = "the peer went silent";
            return self.queue.at(self.t + IDLE_TIMEOUT, Event::SyncFailed { slot, incarnation, target, full, why });
        }
        let mut pull = Pull::default();
        let mut result = Err("the transfer ended early".to_owned());
        for frame in &frames {
            let merged = self.open(slot, frame).and_then(|msg| {
                let live = self.slots[slot].live.as_ref().expect("the puller");
                pull.frame(&live.table, &live.clock, msg, frame.len())
            });
            match merged {
                Ok(Some(pulled)) => result = Ok(pulled),
                Ok(None) => continue,
                Err(why) => result = Err(why.to_owned()),
            }
            break;
        }
        let line = match &result {
            Ok(pulled) => format!("slot {slot}: pulled {} entries from {target:016x} (full {full})", pulled.entries),
            Err(why) => format!("slot {slot}: pull from {target:016x} failed: {why}"),
        };
        self.note(line);
        let now = self.now(slot);
        let live = self.slots[slot].live.as_mut().expect("the puller");
        live.node.sync_done(target, full, result, now);
        self.drain(slot);
    }

    fn serve_fetch(
        &mut self,
        slot: usize,
        incarnation: u64,
        token: u64,
        sid: Arc<str>,
        tcp: SocketAddr,
        deadline: Duration,
    ) {
        if self.live(slot, incarnation).is_none() {
            return;
        }
        let Some(server) = self.slots.iter().position(|s| s.live.as_ref().is_some_and(|l| l.tcp == tcp)) else {
            let frame = Err("connection refused");
            return self.queue.at(self.t, Event::FetchFrame { slot, incarnation, token, sid, frame });
        };
        let arrival = self.t + self.delay();
        if !net::connected(&self.plan, slot, server, self.t) || arrival > deadline {
            return self.queue.at(deadline, Event::FetchFrame { slot, incarnation, token, sid, frame: Ok(None) });
        }
        let query = self.seal(slot, &Message::Query { token, sid: sid.clone() });
        let answer = self.open(server, &query).and_then(|query| {
            let server_now = self.now(server);
            let live = self.slots[server].live.as_mut().expect("the server");
            let target = live.header.node;
            sync::respond(&live.table, target, query, live.node.sync_source(), server_now.ms)
        });
        let frame = answer.map(|messages| Some(self.seal(server, &messages[0])));
        self.queue.at(arrival, Event::FetchFrame { slot, incarnation, token, sid, frame });
    }

    fn fetched(
        &mut self,
        slot: usize,
        incarnation: u64,
        token: u64,
        sid: Arc<str>,
        frame: Result<Option<Vec<u8>>, &'static str>,
    ) {
        if self.live(slot, incarnation).is_none() {
            return;
        }
        let fetched = match frame {
            Ok(None) => Fetched::TimedOut,
            Err(why) => Fetched::Failed(why.into()),
            Ok(Some(frame)) => match self.open(slot, &frame) {
                Ok(msg) => {
                    let live = self.slots[slot].live.as_ref().expect("the asker");
                    match sync::fetched(&live.table, &live.clock, token, &sid, msg) {
                        Ok(()) => Fetched::Done,
                        Err(why) => Fetched::Failed(why.into()),
                    }
                }
                Err(why) => Fetched::Failed(why.into()),
            },
        };
        let now = self.now(slot);
        let live = self.slots[slot].live.as_mut().expect("the asker");
        live.node.fetch_done(token, fetched, now);
        self.drain(slot);
    }

    // ---------------------------------------------------------------------------------------
    // The workload

    fn write(&mut self) {
        if self.t >= self.plan.faults_until {
            return;
        }
        let next = self.t + exp(&mut self.rng, self.plan.write_rate);
        self.queue.at(next, Event::Write);
        let writers: Vec<usize> =
            (0..self.slots.len()).filter(|i| self.slots[*i].live.as_ref().is_some_and(|l| !l.leaving)).collect();
        if writers.is_empty() {
            return;
        }
        let slot = writers[self.rng.random_range(0..writers.len())];
        let sid: Arc<str> = format!("s{}", self.rng.random_range(0..self.plan.sids)).into();
        let now = self.now(slot);
        let roll: f64 = self.rng.random();
        let plan = &self.plan;
        let (p_ask, p_clear, p_destroy, p_touch) = (plan.p_ask, plan.p_clear, plan.p_destroy, plan.p_touch);
        let (p_fragmented, p_large) = (plan.p_fragmented, plan.p_large);
        let lifetime = plan.lifetime.as_millis() as u64;
        if roll < p_ask {
            return self.ask(slot, &sid);
        }
        let size = match self.rng.random::<f64>() {
            r if r < p_large => self.rng.random_range(60_000..150_000),
            r if r < p_large + p_fragmented => self.rng.random_range(1_400..20_000),
            _ => self.rng.random_range(20..1_000),
        };
        let n: u32 = self.rng.random();
        let live = self.slots[slot].live.as_mut().expect("a writer");
        let version = live.clock.tick_at(now.ms);
        let roll = roll - p_ask;
        let op = if roll < p_clear {
            Op::Clear { version }
        } else if roll < p_clear + p_destroy {
            Op::Destroy { sid, version }
        } else if roll < p_clear + p_destroy + p_touch {
            let cookie = Some(format!(r#"{{"t":{n}}}"#).into());
            Op::Touch { sid, cookie, expires_at: now.ms + lifetime, version }
        } else {
            let doc = format!(r#"{{"cookie":{{"n":{n}}},"pad":"{}"}}"#, "x".repeat(size)).into();
            Op::Set { sid, doc, expires_at: now.ms + lifetime, version }
        };
        live.table.apply(&op);
        let index = self.history.writes.len();
        self.history.writes.push(Written::of(live.header.node, &op));
        // As the engine: a node with no audience queues nothing (docs/how-it-works.md "A node alone").
        if live.audience {
            live.pushed += 1;
            live.numbered.push_back((live.pushed, index));
            live.queued.push(op);
            if !live.flush_due {
                live.flush_due = true;
                let incarnation = live.header.incarnation;
                let at = self.t + Duration::from_micros(self.rng.random_range(0..1_000));
                self.queue.at(at, Event::Flush { slot, incarnation });
            }
        }
    }

    /// The end of the writing turn: the queued writes leave together.
    fn flush(&mut self, slot: usize, incarnation: u64) {
        let wait_for_ack = self.plan.wait_for_ack;
        let Some(live) = self.live(slot, incarnation) else { return };
        live.flush_due = false;
        if live.leaving || live.queued.is_empty() {
            return;
        }
        if wait_for_ack {
            let alive = live.node.members().all().filter(|m| m.state == MemberState::Alive);
            let alive = alive.map(|m| (m.id, m.incarnation)).collect();
            live.batches.push_back((live.pushed, alive));
        }
        let (ops, last) = (std::mem::take(&mut live.queued), live.pushed);
        live.node.write_batch(ops, last);
        let now = self.now(slot);
        while let Some(datagram) = self.slots[slot].live.as_mut().and_then(|l| l.node.poll_data(now)) {
            self.transmit(slot, datagram);
        }
        self.drain(slot);
    }

    fn ask(&mut self, slot: usize, sid: &Arc<str>) {
        let now = self.now(slot);
        let live = self.slots[slot].live.as_mut().expect("an asker");
        if live.table.lookup(sid, now.ms) != Lookup::Unknown || !live.node.can_ask() {
            return;
        }
        if let Some(token) = live.node.ask(sid, now) {
            live.asked.insert(token);
        }
        self.drain(slot);
    }

    /// Forged, foreign, corrupted or replayed datagrams, to a live node.
    fn garbage(&mut self) {
        if self.t >= self.plan.faults_until {
            return;
        }
        let next = self.t + exp(&mut self.rng, self.plan.garbage_rate);
        self.queue.at(next, Event::Garbage);
        let targets: Vec<usize> = (0..self.slots.len()).filter(|i| self.slots[*i].live.is_some()).collect();
        if targets.is_empty() || self.captured.is_empty() {
            return;
        }
        let slot = targets[self.rng.random_range(0..targets.len())];
        let (from, mut bytes) = self.captured[self.rng.random_range(0..self.captured.len())].clone();
        let genuine = match self.rng.random_range(0..4) {
            0 => true,
            1 => {
                let at = self.rng.random_range(0..bytes.len());
                bytes[at] ^= 1 << self.rng.random_range(0..8);
                false
            }
            2 => {
                let other = Header { cluster: wire::cluster_id("another"), node: 77, incarnation: 1 };
                bytes = Codec::new("another", &[]).seal(wire::encode(&other, &Message::Leave), 1);
                false
            }
            _ => {
                bytes = (0..self.rng.random_range(0..200)).map(|_| self.rng.random()).collect();
                false
            }
        };
        let incarnation = self.slots[slot].live.as_ref().expect("a target").header.incarnation;
        self.queue.at(self.t, Event::Deliver { slot, incarnation, from, via_group: false, bytes, genuine });
    }

    // ---------------------------------------------------------------------------------------
    // Checks while it runs

    /// `waitForAck`: writes up to `through` are settled. Unless some timed out, every member
    /// alive when they left, and alive still, holds them (read your writes on any node).
    fn acked(&mut self, slot: usize, through: u64) {
        let live = self.slots[slot].live.as_mut().expect("the writer");
        let timeouts = live.node.counters().ack_timeouts;
        let timed_out = timeouts > live.ack_timeouts;
        live.ack_timeouts = timeouts;
        let mut due = Vec::new();
        while live.batches.front().is_some_and(|(last, _)| *last <= through) {
            let (last, alive) = live.batches.pop_front().expect("a batch");
            let writes: Vec<usize> = std::iter::from_fn(|| {
                live.numbered.pop_front_if(|(number, _)| *number <= last).map(|(_, index)| index)
            })
            .collect();
            let still: Vec<(u64, u64)> = alive
                .into_iter()
                .filter(|(id, inc)| {
                    live.node.members().get(*id).is_some_and(|m| m.incarnation == *inc && m.state == MemberState::Alive)
                })
                .collect();
            due.push((writes, still));
        }
        if timed_out {
            return;
        }
        for (writes, members) in due {
            for (id, incarnation) in members {
                let holder = self.slots.iter().find_map(|s| s.live.as_ref().filter(|l| l.header.node == id));
                let Some(holder) = holder.filter(|l| l.header.incarnation == incarnation) else { continue };
                if let Some(w) = writes.iter().map(|i| &self.history.writes[*i]).find(|w| !w.held_by(&holder.table)) {
                    let held = w.sid.as_ref().and_then(|sid| holder.table.entry(sid));
                    let why = format!("slot {slot}: write {w:?} acknowledged, but member {id:016x} holds {held:?}");
                    return self.fail(why);
                }
            }
        }
    }

    /// Invariants at any time: no session comes back, the buffers stay bounded.
    fn check(&mut self) {
        let sids: Vec<Arc<str>> = (0..self.plan.sids).map(|i| format!("s{i}").into()).collect();
        for slot in 0..self.slots.len() {
            let Some(live) = self.slots[slot].live.as_ref() else { continue };
            let (node, table, now) = (live.header.node, live.table.clone(), self.now(slot).ms);
            let (retransmit, senders, queries) = live.node.held();
            let reassembly = live.node.buffers().reassembly_bytes;
            if retransmit > self.plan.retransmit_datagrams || senders > crate::core::replay::MAX_SENDERS {
                self.fail(format!("slot {slot}: unbounded: {retransmit} datagrams kept, {senders} replay windows"));
            }
            if reassembly > REASSEMBLY_BUDGET || queries > crate::core::miss::QUERY_BURST as usize {
                self.fail(format!("slot {slot}: unbounded: {reassembly} bytes reassembling, {queries} queries"));
            }
            for sid in &sids {
                if let Err(why) = self.history.data_never_goes_back(node, sid, &table, now) {
                    self.fail(why);
                }
            }
        }
    }
}

impl Live {
    pub fn pending_asks(&self) -> usize {
        self.asked.len()
    }
}
