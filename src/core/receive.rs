//! Datagrams in: the checks every packet passes, then one handler per message kind.

use std::net::SocketAddr;
use std::sync::Arc;

use super::api::{Now, Role};
use super::miss::Answered;
use super::node::Node;
use super::reliable::Receipt;
use super::sync;
use crate::clock::Version;
use crate::events::Level;
use crate::table::Op;
use crate::wire::{self, Header, Message, NodeInfo, Payload, Reply, MAX_DATAGRAM};

/// Most datagrams resent for one NAK.
const RESEND_LIMIT: usize = 512;

impl Node {
    /// A datagram arrived from `from`, on the group's socket (`via_group`) or another. Whatever
    /// it is, it is counted and dropped or acted upon; nothing in it can make the node fail.
    pub fn handle_datagram(&mut self, now: Now, bytes: &[u8], from: SocketAddr, via_group: bool) {
        if self.gone {
            return;
        }
        self.counters.datagrams_received += 1;
        self.counters.bytes_received += bytes.len() as u64;
        // Multicast loops every datagram back to its sender: recognized by header and source
        // address, it is dropped before the crypto and the decoding it would cost. A recording
        // of our packets sent from anywhere else is authenticated like any packet, and counted
        // as the replay it is.
        let own = self.header;
        let looped_back = from == self.settings.me.addr
            && wire::peek_header(bytes, own.cluster).is_ok_and(|(_, h)| h.node == own.node);
        if looped_back {
            self.counters.own_loopback += 1;
            return;
        }
        let opened = self.codec.open_message(bytes, own.cluster).and_then(|(header, msg, pn)| {
            self.accept(&header, pn)?;
            Ok((header, msg))
        });
        let (header, msg) = match opened {
            Ok(opened) => opened,
            Err(e) => return self.counters.drop(e.reason()),
        };
        if header.node == own.node {
            // Authenticated and fresh, our id, another address: our own packet relayed back to
            // us (a NAT, a proxy). Nothing to apply.
            self.counters.own_loopback += 1;
            return;
        }
        let departed = self.members.has_departed(header.node, header.incarnation);
        if departed && !matches!(msg, Message::Leave | Message::Ping { .. } | Message::Pong { .. }) {
            // Late (a retransmission or a heartbeat sent just before its Leave) or replayed: a
            // node that left never becomes a member again, and its stream is not tracked again.
            return self.counters.drop("departedSender");
        }
        // Members only: forged sender ids must not grow the set.
        if via_group && self.members.get(header.node).is_some() {
            self.via_group.insert(header.node);
        }
        match (self.settings.role, msg) {
            (_, Message::Ping { token, .. }) => self.on_ping(token, bytes.len(), from, now),
            (_, Message::Pong { token, .. }) => _ = self.probes.answered(header.node, from, token, now.instant),
            (Role::Observer, msg) => self.observe(&header, msg, now),
            (Role::Member, Message::Join(info)) => self.on_join(&header, info, now),
            (Role::Member, Message::Greeting { info, high_seq, sent_ms }) => {
                self.on_greeting(&header, info, high_seq, sent_ms, now)
            }
            (Role::Member, Message::Heartbeat { info, high_seq, sent_ms }) => {
                self.on_heartbeat(&header, info, high_seq, sent_ms, now)
            }
            (Role::Member, Message::Leave) => self.on_leave(&header, now),
            (Role::Member, Message::AckRequest { last_seq }) => self.on_ack_request(&header, last_seq, from, now),
            (Role::Member, Message::Ack { target, high_seq }) => self.on_ack(&header, target, high_seq, now),
            (Role::Member, Message::Data { seq, ask_ack, payload }) => {
                self.on_data(&header, seq, ask_ack, payload, from, now)
            }
            (Role::Member, Message::Nak { ranges }) => self.on_nak(&header, &ranges, from),
            (Role::Member, Message::Gone { oldest }) => self.on_gone(&header, oldest),
            (Role::Member, Message::Query { token, sid }) => self.on_query(&header, token, sid, from, now),
            (Role::Member, Message::Answer { token, reply }) => self.on_answer(&header, token, reply, from, now),
            (Role::Member, Message::SyncRequest { .. } | Message::SyncChunk { .. } | Message::SyncEnd { .. }) => {
                self.counters.drop("unexpectedKind")
            }
        }
        self.progress(now);
    }

    /// Whether a `Data` datagram asked for an ack at once. The driver handles the datagrams
    /// already waiting in its socket first, then `send_asked_acks`: one ack per sender per burst.
    pub fn acks_asked(&self) -> bool {
        self.ack_asked
    }

    /// The acks senders asked for (see `acks_asked`).
    pub fn send_asked_acks(&mut self) {
        if std::mem::take(&mut self.ack_asked) {
            self.send_acks(false);
        }
    }

    /// An observer (the doctor) learns who is there, and takes part in nothing else.
    fn observe(&mut self, header: &Header, msg: Message, now: Now) {
        match msg {
            Message::Join(info) => self.heard(header, Some(info), now),
            Message::Greeting { info, sent_ms, .. } | Message::Heartbeat { info, sent_ms, .. } => {
                self.heard(header, Some(info), now);
                self.clock_sample(header, sent_ms, now);
            }
            _ => {}
        }
    }

    fn on_ping(&mut self, token: u64, size: usize, from: SocketAddr, now: Now) {
        if self.pongs.take(now.instant) {
            self.send_to(&Message::Pong { token, size: size as u32 }, from);
        }
    }

    fn on_join(&mut self, header: &Header, info: NodeInfo, now: Now) {
        self.heard(header, Some(info), now);
        // A new node: its stream starts at 1, and it wants to hear from us at once.
        self.open_inbound(header, 1, info.addr, false, now);
        // It may bring sessions of its own, loaded from a snapshot (persist): pull them once (a
        // digest sync, which costs nothing when it has none we lack).
        if let Some(inbound) = self.inbound.get_mut(&header.node).filter(|i| i.incarnation == header.incarnation) {
            inbound.sync_wanted = true;
        }
        let greeting = Message::Greeting { info: self.settings.me, high_seq: self.send.high_seq(), sent_ms: now.ms };
        self.send_to(&greeting, info.addr);
    }

    fn on_greeting(&mut self, header: &Header, info: NodeInfo, high_seq: u64, sent_ms: u64, now: Now) {
        self.heard(header, Some(info), now);
        self.clock_sample(header, sent_ms, now);
        // The state transfer covers what the member sent before: unless it is over already (a
        // late greeting, or a member that was alone greeting its first audience: it may hold
        // writes it never sent), then a sync with the member does, once, and its stream is
        // acknowledged only then.
        let transferred = self.ready;
        if !self.open_inbound(header, high_seq + 1, info.addr, transferred, now) && transferred {
            if let Some(inbound) = self.inbound.get_mut(&header.node).filter(|i| i.incarnation == header.incarnation) {
                inbound.sync_wanted = true;
                inbound.history_unknown = true;
            }
        }
    }

    fn on_heartbeat(&mut self, header: &Header, info: NodeInfo, high_seq: u64, sent_ms: u64, now: Now) {
        self.heard(header, Some(info), now);
        self.clock_sample(header, sent_ms, now);
        // Heard first by heartbeat: we missed its join or our greeting, so sync once.
        if !self.open_inbound(header, high_seq + 1, info.addr, true, now) {
            if let Some(inbound) = self.inbound.get_mut(&header.node) {
                inbound.window.note_high(high_seq, now.instant);
            }
        }
    }

    fn on_leave(&mut self, header: &Header, now: Now) {
        let change = self.members.announced_leave(header.node, header.incarnation);
        let unfinished = self.stream_unfinished(header.node);
        self.forget_stream(header.node);
        if unfinished {
            self.sync_with_every_member();
        }
        self.report(change, now);
        self.settle_writes(now);
    }

    fn on_ack_request(&mut self, header: &Header, last_seq: u64, from: SocketAddr, now: Now) {
        self.heard(header, None, now);
        if self.members.get(header.node).is_none() {
            return self.counters.drop("unknownSender");
        }
        // Normally its stream is tracked already; if not, what came before is unknown (synced
        // once, and acknowledged only then).
        self.open_inbound(header, last_seq.saturating_add(1), from, true, now);
        match self.inbound.get_mut(&header.node) {
            Some(inbound) if inbound.incarnation == header.incarnation => {
                inbound.window.ask_ack(last_seq, now.instant);
                inbound.window.expedite(now.instant);
            }
            _ => return self.counters.drop("staleIncarnation"),
        }
        self.send_ack(header.node, false);
        // Its leave (or its writes) wait: what is due is asked for now, not at the next tick.
        self.send_naks(now, Some(header.node));
    }

    fn on_ack(&mut self, header: &Header, target: u64, high_seq: u64, now: Now) {
        if target != self.header.node {
            // Another node's ack, recorded and replayed here (or a port reused since it was sent).
            return self.counters.drop("misdirected");
        }
        self.heard(header, None, now);
        self.counters.acks_received += 1;
        if self.members.get(header.node).is_none_or(|m| m.incarnation != header.incarnation) {
            return self.counters.drop("unknownSender");
        }
        let moved = self.acks.ack(header.node, header.incarnation, high_seq, self.send.high_seq());
        // What every reachable member holds is never NAKed again: no need to keep it.
        let reachable = self.members.reachable().map(|m| (m.id, m.incarnation));
        if let Some(everywhere) = self.acks.acked_by_all(reachable) {
            self.send.trim_through(everywhere);
        }
        if moved {
            self.settle_writes(now);
        }
    }

    fn on_data(&mut self, header: &Header, seq: u64, ask_ack: bool, payload: Payload, from: SocketAddr, now: Now) {
        self.heard(header, None, now);
        // Streams are tracked for members only, so forged sender ids cost no memory; a member
        // heard first by its data is synced once for what came before.
        if self.members.get(header.node).is_none() {
            return self.counters.drop("unknownSender");
        }
        self.open_inbound(header, seq, from, true, now);
        let receipt = match self.inbound.get_mut(&header.node) {
            Some(inbound) if inbound.incarnation == header.incarnation => inbound.window.receive(seq, now.instant),
            _ => return self.counters.drop("staleIncarnation"),
        };
        if receipt == Receipt::Duplicate {
            self.counters.duplicates += 1;
            return;
        }
        self.apply_payload(header, payload, now);
        // Applied first: an ack says what this node holds. Sent after the driver's burst when the
        // sender asked (its writes wait for it); otherwise at the tick. A repair that completes
        // what a sender asked for is acknowledged at once too.
        let due = self.inbound.get_mut(&header.node).is_some_and(|inbound| {
            if ask_ack {
                inbound.window.ask_ack(seq, now.instant);
            }
            inbound.window.asked_ack_due()
        });
        self.ack_asked |= due;
    }

    fn on_nak(&mut self, header: &Header, ranges: &[(u64, u64)], from: SocketAddr) {
        self.counters.naks_received += 1;
        // Retransmissions go only to members, at the address they announced: a forged NAK
        // cannot turn this node into an amplifier aimed at someone else.
        let known = self.members.get(header.node).is_some_and(|m| m.is_reachable() && m.info.addr == from);
        if !known {
            return self.counters.drop("nakFromStranger");
        }
        let (datagrams, gone) = self.send.resend(ranges, RESEND_LIMIT);
        self.counters.retransmissions += datagrams.len() as u64;
        for datagram in datagrams {
            // Sealed anew: a packet number is never used twice.
            let sealed = self.seal_encoded(datagram.to_vec());
            self.transmit(vec![from], sealed);
        }
        if gone {
            let oldest = self.send.oldest();
            self.send_to(&Message::Gone { oldest }, from);
        }
    }

    fn on_gone(&mut self, header: &Header, oldest: u64) {
        if let Some(inbound) = self.inbound.get_mut(&header.node) {
            inbound.window.gone(oldest);
        }
    }

    fn on_query(&mut self, header: &Header, token: u64, sid: Arc<str>, from: SocketAddr, now: Now) {
        self.heard(header, None, now);
        // Answers go only to members, at the address they announced: a forged query cannot aim
        // them at someone else.
        if !self.members.get(header.node).is_some_and(|m| m.is_reachable() && m.info.addr == from) {
            return self.counters.drop("queryFromStranger");
        }
        let answer = self.answer(token, sid, now);
        self.transmit(vec![from], answer);
    }

    /// The sealed `Answer` to a query for `sid`: the entry when it fits a datagram, else its
    /// version (the asker fetches it over TCP).
    fn answer(&mut self, token: u64, sid: Arc<str>, now: Now) -> Vec<u8> {
        let reply = super::miss::reply(&self.table, sid, now.ms);
        let version = match &reply {
            Reply::Entry { entry, .. } => entry.newest_version(),
            _ => Version::ZERO,
        };
        let mut packet = wire::encode(&self.header, &Message::Answer { token, reply });
        if packet.len() + wire::TRAILER_BUDGET > MAX_DATAGRAM {
            packet = wire::encode(&self.header, &Message::Answer { token, reply: Reply::TooLarge { version } });
        }
        self.seal_encoded(packet)
    }

    fn on_answer(&mut self, header: &Header, token: u64, reply: Reply, from: SocketAddr, now: Now) {
        self.heard(header, None, now);
        let Some(Answered { entry, complete }) = self.asks.answered(token, header.node, from, reply) else {
            return self.counters.drop("unexpectedAnswer");
        };
        if let Some((sid, entry)) = entry {
            sync::merge(&self.table, &self.clock, &sid, &entry);
        }
        if complete {
            self.end_query(token, now);
        }
    }

    fn apply_payload(&mut self, header: &Header, payload: Payload, now: Now) {
        match payload {
            Payload::Ops(ops) => ops.iter().for_each(|op| self.apply_remote(op, now)),
            Payload::Fragment { first_seq, index, count, bytes } => {
                let (node, incarnation) = (header.node, header.incarnation);
                match self.reassembler.add(node, incarnation, first_seq, index, count, bytes, now.instant) {
                    Ok(Some(message)) => match wire::decode_op(&message) {
                        Ok(op) => self.apply_remote(&op, now),
                        Err(e) => self.counters.drop(e.reason()),
                    },
                    Ok(None) => {}
                    Err(e) => self.counters.drop(e.reason()),
                }
            }
        }
    }

    fn apply_remote(&mut self, op: &Op, now: Now) {
        let version = op.version();
        self.clock.observe(version);
        self.counters.note_lag(version.millis(), now.ms);
        self.table.apply(op);
    }

    /// Folds the send time a member's heartbeat or greeting carries into its clock offset, and
    /// warns (rate-limited, see `ClockOffset::warning_due`) when the offset exceeds maxClockSkew.
    fn clock_sample(&mut self, header: &Header, sent_ms: u64, now: Now) {
        let (node, incarnation) = (header.node, header.incarnation);
        let warning = self.members.clock_sample(node, incarnation, sent_ms, now.ms, now.instant);
        if let Some((offset, member)) = warning {
            let message = super::notices::clock_skew(&member, offset, self.settings.max_clock_skew_ms);
            self.log(Level::Warn, message);
        }
    }
}
