//! The node's handlers one case at a time: nodes wired by hand, in simulated time. (The
//! simulator, sim/, runs whole clusters under random faults.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sync::Pulled;
use super::{Node, Now, Output, Role, Settings};
use crate::clock::Clock;
use crate::crypto::Codec;
use crate::events::Event;
use crate::options::Config;
use crate::table::Table;
use crate::wire::{self, Header, Message, NodeInfo};

const CLUSTER: &str = "core-tests";

struct Harness {
    base: Instant,
    t: Duration,
}

impl Harness {
    fn new() -> Harness {
        Harness { base: Instant::now(), t: Duration::ZERO }
    }

    fn now(&self) -> Now {
        Now { instant: self.base + self.t, ms: 1_800_000_000_000 + self.t.as_millis() as u64 }
    }

    /// Node `id` at 10.0.0.`id`, multicast on, `waitForAck`.
    fn node(&self, id: u64) -> Node {
        let config = Config { wait_for_ack: true, ..Config::default() };
        let addr: SocketAddr = format!("10.0.0.{id}:4000{id}").parse().unwrap();
        let me = NodeInfo { addr, tcp_port: 5000, listen_port: 0 };
        let group = Some("239.1.2.3:4000".parse().unwrap());
        let settings = Settings::new(&config, Role::Member, me, group);
        let header = Header { cluster: wire::cluster_id(CLUSTER), node: id, incarnation: 1 };
        let codec = Arc::new(Codec::new(CLUSTER, &[]));
        Node::new(settings, header, codec, Arc::new(Table::new()), Arc::new(Clock::new(id)), id, self.now())
    }

    /// A packet as node `id` seals it.
    fn packet(id: u64, pn: u64, msg: &Message) -> Vec<u8> {
        let header = Header { cluster: wire::cluster_id(CLUSTER), node: id, incarnation: 1 };
        Codec::new(CLUSTER, &[]).seal(wire::encode(&header, msg), pn)
    }
}

fn addr(id: u64) -> SocketAddr {
    format!("10.0.0.{id}:4000{id}").parse().unwrap()
}

fn info(id: u64) -> NodeInfo {
    NodeInfo { addr: addr(id), tcp_port: 5000, listen_port: 0 }
}

fn outputs(node: &mut Node) -> Vec<Output> {
    std::iter::from_fn(|| node.poll_output()).collect()
}

fn messages(node: &mut Node) -> Vec<Message> {
    let cluster = wire::cluster_id(CLUSTER);
    let codec = Codec::new(CLUSTER, &[]);
    std::iter::from_fn(|| node.poll_transmit()).map(|t| codec.open_message(&t.bytes, cluster).unwrap().1).collect()
}

/// A node that starts and finds no one: ready, alone.
fn alone(h: &mut Harness, id: u64) -> Node {
    let mut node = h.node(id);
    node.start(h.now());
    h.t += Duration::from_secs(2);
    node.handle_timeout(h.now());
    assert!(node.is_ready());
    messages(&mut node);
    outputs(&mut node);
    node
}

#[test]
fn a_packet_is_accepted_once_and_a_retransmission_sealed_anew() {
    let mut h = Harness::new();
    let mut a = alone(&mut h, 1);
    let heartbeat = Message::Heartbeat { info: info(2), high_seq: 0, sent_ms: h.now().ms };
    let packet = Harness::packet(2, 7, &heartbeat);
    a.handle_datagram(h.now(), &packet, addr(2), true);
    a.handle_datagram(h.now(), &packet, addr(2), true);
    assert_eq!(a.counters().dropped.get("replay"), Some(&1));
    a.handle_datagram(h.now(), &Harness::packet(2, 8, &heartbeat), addr(2), true);
    assert_eq!(a.counters().opened, 2);
}

/// An `Ack` names the node it is meant for: a recording of one sent to another node (or a port
/// reused since) acknowledges nothing of this node's writes.
#[test]
fn an_ack_meant_for_another_node_acknowledges_nothing() {
    let mut h = Harness::new();
    let mut a = alone(&mut h, 1);
    a.handle_datagram(h.now(), &Harness::packet(2, 1, &Message::Join(info(2))), addr(2), true);
    outputs(&mut a);
    let set = crate::table::Op::Destroy { sid: "s".into(), version: crate::clock::Version { hlc: 1 << 20, node: 1 } };
    a.write_batch(vec![set], 1);
    let data = a.poll_data(h.now()).expect("a datagram");
    assert!(data.to.contains(&"239.1.2.3:4000".parse().unwrap()));
    assert_eq!(a.poll_data(h.now()), None, "the batch is sent: it waits for node 2");
    let acked = |a: &mut Node| outputs(a).iter().any(|o| matches!(o, Output::Event(Event::Acked { .. })));
    let for_3 = Harness::packet(2, 2, &Message::Ack { target: 3, high_seq: 1 });
    a.handle_datagram(h.now(), &for_3, addr(2), false);
    assert_eq!(a.counters().dropped.get("misdirected"), Some(&1));
    assert!(!acked(&mut a), "the write waits for node 2's own ack");
    a.handle_datagram(h.now(), &Harness::packet(2, 3, &Message::Ack { target: 1, high_seq: 1 }), addr(2), false);
    assert!(acked(&mut a));
}

/// A greeting that comes after the node's state transfer (a member whose greeting was late, or
/// which heard this node's join late) is covered by no transfer: the node syncs with it once,
/// and acknowledges nothing of its stream before.
#[test]
fn a_greeting_after_the_state_transfer_is_followed_by_a_sync() {
    let mut h = Harness::new();
    let mut a = alone(&mut h, 1);
    let greeting = Message::Greeting { info: info(2), high_seq: 10, sent_ms: h.now().ms };
    a.handle_datagram(h.now(), &Harness::packet(2, 1, &greeting), addr(2), false);
    h.t += Duration::from_millis(200);
    a.handle_timeout(h.now());
    let acks: Vec<Message> = messages(&mut a).into_iter().filter(|m| matches!(m, Message::Ack { .. })).collect();
    assert_eq!(acks, vec![], "nothing of node 2's stream is known yet");
    assert!(outputs(&mut a).iter().any(|o| matches!(o, Output::Sync { node: 2, full: false, .. })));
}

/// A state transfer's donor reports the members it sees gone. One heard here beyond what the
/// donor heard of it is only cut off from the donor: it stays. One that is not is dead, not left:
/// if it is alive after all, its next packet brings it back.
#[test]
fn members_a_donor_reports_gone_are_dead_unless_heard_beyond_it() {
    let h = Harness::new();
    let mut a = h.node(1);
    a.start(h.now());
    for (id, pn) in [(2, 1), (3, 1), (4, 9)] {
        a.handle_datagram(h.now(), &Harness::packet(id, pn, &Message::Join(info(id))), addr(id), true);
    }
    let Some(Output::Sync { node: donor, full: true, .. }) =
        outputs(&mut a).into_iter().find(|o| matches!(o, Output::Sync { .. }))
    else {
        panic!("a state transfer")
    };
    assert_eq!(donor, 2);
    let pulled = Pulled { departed: vec![(3, 1, 5), (4, 1, 5)], ..Pulled::default() };
    a.sync_done(2, true, Ok(pulled), h.now());
    let state = |a: &Node, id| a.members().get(id).map(|m| m.state.name());
    assert_eq!((state(&a, 3), state(&a, 4)), (Some("dead"), Some("alive")));
    let replayed = Harness::packet(3, 5, &Message::Heartbeat { info: info(3), high_seq: 0, sent_ms: 0 });
    a.handle_datagram(h.now(), &replayed, addr(3), true);
    assert_eq!(state(&a, 3), Some("dead"), "a recording is a replay now");
    let fresh = Harness::packet(3, 6, &Message::Heartbeat { info: info(3), high_seq: 0, sent_ms: 0 });
    a.handle_datagram(h.now(), &fresh, addr(3), true);
    assert_eq!(state(&a, 3), Some("alive"), "alive after all");
}

/// Until it knows whether a cluster is there, a starting node sends its writes (the members it
/// finds get them); once it found itself alone, it sends none.
#[test]
fn a_node_sends_its_writes_while_it_looks_for_its_cluster() {
    let mut h = Harness::new();
    let mut a = h.node(1);
    let audience = |a: &mut Node| {
        outputs(a).into_iter().filter_map(|o| if let Output::Audience(b) = o { Some(b) } else { None }).last()
    };
    assert_eq!(audience(&mut a), Some(true));
    a.start(h.now());
    h.t += Duration::from_secs(2);
    a.handle_timeout(h.now());
    assert_eq!(audience(&mut a), Some(false));
}

/// A node that found itself alone wrote what no member has. When it hears its first member, it
/// greets the group, and a member that greeting reaches pulls from it once (and acknowledges its
/// stream only then), even one that had pulled from it before those writes.
#[test]
fn a_node_no_longer_alone_greets_and_its_members_pull_what_it_wrote_alone() {
    let mut h = Harness::new();
    let mut a = alone(&mut h, 1);
    a.handle_datagram(
        h.now(),
        &Harness::packet(2, 1, &Message::Heartbeat { info: info(2), high_seq: 0, sent_ms: 0 }),
        addr(2),
        true,
    );
    let greeting = messages(&mut a).into_iter().find(|m| matches!(m, Message::Greeting { .. }));
    assert!(matches!(greeting, Some(Message::Greeting { info: i, .. }) if i == info(1)), "{greeting:?}");

    let mut b = alone(&mut h, 2);
    b.handle_datagram(h.now(), &Harness::packet(1, 1, &Message::Join(info(1))), addr(1), true);
    let greeting = Harness::packet(1, 2, &Message::Greeting { info: info(1), high_seq: 0, sent_ms: h.now().ms });
    b.handle_datagram(h.now(), &greeting, addr(1), true);
    h.t += Duration::from_millis(200);
    b.handle_timeout(h.now());
    assert!(outputs(&mut b).iter().any(|o| matches!(o, Output::Sync { node: 1, full: false, .. })));
}

/// An ask that comes after the query for its sid ended (the caller looked at the table just
/// before the answers were merged) is answered by the table, without another query.
#[test]
fn an_ask_after_the_answers_were_merged_sends_no_query() {
    use crate::table::{Data, Entry, Lookup};
    use crate::wire::Reply;
    let mut h = Harness::new();
    let mut a = alone(&mut h, 1);
    a.handle_datagram(h.now(), &Harness::packet(2, 1, &Message::Join(info(2))), addr(2), true);
    let token = a.ask("s", h.now()).expect("asked");
    assert!(messages(&mut a).iter().any(|m| matches!(m, Message::Query { .. })));
    let version = crate::clock::Version { hlc: 1 << 20, node: 2 };
    let entry = Entry {
        data: Data::Live("{}".into()),
        data_version: version,
        cookie_version: version,
        expires_at: u64::MAX,
        ..Entry::absent()
    };
    let answer = Message::Answer { token, reply: Reply::Entry { sid: "s".into(), entry } };
    a.handle_datagram(h.now(), &Harness::packet(2, 2, &answer), addr(2), false);
    assert!(outputs(&mut a).iter().any(|o| matches!(o, Output::Answered { token: t } if *t == token)));
    assert_eq!(a.table.lookup("s", h.now().ms), Lookup::Live("{}".into()));
    let again = a.ask("s", h.now()).expect("answered");
    assert!(outputs(&mut a).iter().any(|o| matches!(o, Output::Answered { token: t } if *t == again)));
    assert_eq!(messages(&mut a), vec![], "no second query");
    assert_eq!(a.counters().miss_queries, 1);
}
