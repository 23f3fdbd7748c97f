//! Datagrams out: local writes packed into sequenced `Data` datagrams (fragmenting large ops),
//! who gets what goes to the cluster, and the graceful leave.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::api::{Now, Output, Role, Transmit};
use super::fragment;
use super::membership::MemberState;
use super::node::{Leaving, Node, LEAVE_TIMEOUT};
use super::notices;
use crate::table::Op;
use crate::wire::{self, Message, Payload, DATA_OVERHEAD, MAX_DATAGRAM};

/// Copies of the final `Leave`: at 20% loss, 2 copies miss a receiver 4% of the time, 4 copies 0.2%.
const LEAVE_COPIES: usize = 4;

/// A batch of local writes on its way out, packed into `Data` datagrams one at a time.
pub(super) struct Burst {
    ops: VecDeque<Op>,
    /// Ops for the next datagram, and its size so far.
    pending: Vec<Op>,
    size: usize,
    /// The pieces of an op too large for one datagram, sequenced and kept, not sent yet.
    fragments: VecDeque<Vec<u8>>,
    /// The number of the batch's last write (see ack_wait.rs).
    last_write: u64,
}

impl Node {
    /// Local writes to send, numbered up to `last_write` (already applied to the table by the
    /// writing thread). They leave through `poll_data`, in order, after the batches before them.
    pub fn write_batch(&mut self, ops: Vec<Op>, last_write: u64) {
        if self.gone || ops.is_empty() {
            return;
        }
        self.counters.write_batches += 1;
        let burst =
            Burst { ops: ops.into(), pending: Vec::new(), size: DATA_OVERHEAD, fragments: VecDeque::new(), last_write };
        self.bursts.push_back(burst);
    }

    /// The next datagram of the local writes, sealed: its sequence number is allocated and the
    /// datagram kept for retransmission as it is made. With `waitForAck`, the last datagram of a
    /// batch asks for acks at once, and the batch's writes then wait for the members alive now.
    pub fn poll_data(&mut self, now: Now) -> Option<Transmit> {
        loop {
            let mut burst = self.bursts.pop_front()?;
            if let Some(packet) = self.next_packet(&mut burst) {
                self.bursts.push_front(burst);
                let to = self.broadcast_targets();
                self.counters.sent(packet.len(), to.len());
                return Some(Transmit { to, bytes: packet });
            }
            if self.settings.wait_for_ack && !self.gone {
                let alive = self.alive();
                self.waits.add(burst.last_write, self.send.high_seq(), alive, now.instant);
                self.settle_writes(now);
            }
        }
    }

    fn next_packet(&mut self, burst: &mut Burst) -> Option<Vec<u8>> {
        let ask_ack = self.settings.wait_for_ack;
        loop {
            if let Some(packet) = burst.fragments.pop_front() {
                return Some(self.seal_encoded(packet));
            }
            let Some(op) = burst.ops.front() else {
                if burst.pending.is_empty() {
                    return None;
                }
                let packet = self.data_packet(std::mem::take(&mut burst.pending), ask_ack);
                return Some(self.seal_encoded(packet));
            };
            let len = wire::op_len(op);
            if DATA_OVERHEAD + len > MAX_DATAGRAM {
                // The last datagram of the batch when nothing is left for a final `Data`.
                let last = ask_ack && burst.ops.len() == 1 && burst.pending.is_empty();
                let encoded = wire::encode_op(op);
                match fragment::split(&encoded) {
                    Some(pieces) => burst.fragments = self.fragment_packets(&pieces, last),
                    None => self.counters.drop("opTooLarge"),
                }
                burst.ops.pop_front();
                continue;
            }
            if burst.size + len > MAX_DATAGRAM || burst.pending.len() == u16::MAX as usize {
                let packet = self.data_packet(std::mem::take(&mut burst.pending), false);
                burst.size = DATA_OVERHEAD;
                return Some(self.seal_encoded(packet));
            }
            burst.size += len;
            burst.pending.extend(burst.ops.pop_front());
        }
    }

    fn data_packet(&mut self, ops: Vec<Op>, ask_ack: bool) -> Vec<u8> {
        let seq = self.send.next_seq();
        let packet = wire::encode(&self.header, &Message::Data { seq, ask_ack, payload: Payload::Ops(ops) });
        self.send.keep(seq, packet.as_slice().into());
        packet
    }

    /// The pieces of one op, on consecutive sequence numbers; `ask_ack`: the last one asks for
    /// acks at once.
    fn fragment_packets(&mut self, pieces: &[&[u8]], ask_ack: bool) -> VecDeque<Vec<u8>> {
        let count = pieces.len() as u16;
        let mut first_seq = 0;
        let mut packets = VecDeque::with_capacity(pieces.len());
        for (index, piece) in pieces.iter().enumerate() {
            let seq = self.send.next_seq();
            if index == 0 {
                first_seq = seq;
            }
            let payload = Payload::Fragment { first_seq, index: index as u16, count, bytes: piece.to_vec() };
            let ask_ack = ask_ack && index + 1 == count as usize;
            let packet = wire::encode(&self.header, &Message::Data { seq, ask_ack, payload });
            self.send.keep(seq, packet.as_slice().into());
            packets.push_back(packet);
        }
        packets
    }

    /// To every node: the group, plus unicast copies for whoever multicast does not reach.
    pub(super) fn broadcast(&mut self, msg: &Message) {
        let bytes = self.seal(msg);
        let to = self.broadcast_targets();
        self.transmit(to, bytes);
    }

    fn broadcast_targets(&self) -> Vec<SocketAddr> {
        let mut to: Vec<SocketAddr> = self.settings.group.into_iter().collect();
        // Without peers, multicast reaches everyone.
        if !self.settings.peers.is_empty() || self.settings.group.is_none() {
            to.extend(self.unicast_targets());
        }
        to
    }

    /// Members not heard through the group (dead ones too, so a healed partition finds us), and
    /// configured peers that are no known member yet (discovery).
    fn unicast_targets(&self) -> Vec<SocketAddr> {
        let members = self.members.all();
        let mut targets: Vec<SocketAddr> = members
            .filter(|m| m.state != MemberState::Left && !self.via_group.contains(&m.id))
            .map(|m| m.info.addr)
            .collect();
        let known: Vec<SocketAddr> =
            self.members.reachable().map(|m| SocketAddr::new(m.info.addr.ip(), m.info.listen_port)).collect();
        let me = SocketAddr::new(self.settings.me.addr.ip(), self.settings.me.listen_port);
        targets.extend(self.peers.iter().filter(|p| **p != me && !known.contains(p)));
        targets
    }

    /// Graceful leave: the writes handed over so far go out first (the driver hands over the last
    /// ones before), then `AckRequest { last_seq }` (repeated, see timers.rs) until every live
    /// (alive) member has acknowledged `last_seq`, answering their NAKs meanwhile, or until
    /// LEAVE_TIMEOUT; then `Leave`, LEAVE_COPIES times (a lost `Leave` costs a failureTimeout,
    /// and the member is reported dead instead of left). Ends with `Output::Left`.
    pub fn leave(&mut self, now: Now) {
        if self.leaving.is_some() || self.gone {
            return;
        }
        if self.settings.role == Role::Observer {
            self.gone = true;
            return self.output(Output::Left { warning: None });
        }
        while let Some(data) = self.poll_data(now) {
            self.transmits.push_back(data);
        }
        let last_seq = self.send.high_seq();
        self.leaving = Some(Leaving {
            started: now.instant,
            deadline: now.instant + LEAVE_TIMEOUT,
            last_seq,
            next_request: now.instant,
        });
        self.progress(now);
    }

    /// Repeats the `AckRequest` when due; ends the leave once every alive member acknowledged,
    /// or at its deadline.
    pub(super) fn advance_leave(&mut self, now: Now) {
        let Some(leaving) = &self.leaving else { return };
        let (last_seq, started, deadline, next_request) =
            (leaving.last_seq, leaving.started, leaving.deadline, leaving.next_request);
        let lagging = self.acks.lagging(last_seq, self.alive());
        if lagging.is_empty() || now.instant >= deadline {
            self.gone = true;
            self.leaving = None;
            for _ in 0..LEAVE_COPIES {
                self.broadcast(&Message::Leave);
            }
            let lagging: Vec<_> = lagging.iter().filter_map(|id| self.members.get(*id)).collect();
            let warning = notices::leave_timed_out(&lagging, last_seq, now.instant - started);
            return self.output(Output::Left { warning });
        }
        if now.instant >= next_request {
            self.broadcast(&Message::AckRequest { last_seq });
            if let Some(leaving) = &mut self.leaving {
                leaving.next_request = now.instant + super::timers::LEAVING_REPEAT;
            }
        }
    }
}
