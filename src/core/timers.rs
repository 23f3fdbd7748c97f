//! What time drives: the join, the tick (heartbeats, failure detection, NAKs, coalesced acks,
//! syncs), the waits of acknowledged writes, and the deadlines of miss queries.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use super::api::{Now, Output, Role};
use super::membership::{Change, Member, MemberState, Members};
use super::node::{Bootstrap, Node};
use super::notices;
use crate::events::{Event, Level};
use crate::wire::Message;

/// Safety-net anti-entropy: one digest sync with a random member this often.
pub(super) const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(15);
/// A gap is NAKed after a random delay in [NAK_DELAY, 2 × NAK_DELAY): long enough for a merely
/// reordered datagram to arrive, short enough to keep replication latency low on loss.
const NAK_DELAY: Duration = Duration::from_millis(5);
/// Most sequence numbers asked for in one NAK.
const NAK_MAX_SEQS: u64 = 512;
/// While a leave waits for acks, its `AckRequest` is repeated this often: each one makes every
/// receiver ack at once (a lost `AckRequest`, or a lost `Ack`, costs this much).
pub(super) const LEAVING_REPEAT: Duration = Duration::from_millis(25);
/// `waitForAck` timeouts are logged at most this often (and counted always).
const ACK_TIMEOUT_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Node {
    /// Starts joining: `Join` during the discovery window (docs/how-it-works.md "Membership"),
    /// then the state transfer, then `Event::Ready`. An observer is ready at once.
    pub fn start(&mut self, now: Now) {
        if !matches!(self.bootstrap, Bootstrap::NotStarted) {
            return;
        }
        if self.settings.role == Role::Observer {
            self.bootstrap = Bootstrap::Done;
            return self.output(Output::Event(Event::Ready));
        }
        let deadline = now.instant + self.settings.discovery();
        self.bootstrap = Bootstrap::Discovering { deadline, next_join: now.instant };
        // Judged on the whole window, even when a unicast greeting ends the discovery early.
        self.silence_check = self.settings.group.map(|_| deadline);
        self.progress(now);
    }

    /// A timer fired: does whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        if self.gone {
            return;
        }
        if now.instant >= self.next_tick {
            self.next_tick = now.instant + self.settings.tick();
            self.tick(now);
        }
        if self.settings.wait_for_ack && self.waits.next_wake().is_some_and(|at| at <= now.instant) {
            self.settle_writes(now);
            self.ask_laggards(now);
        }
        for token in self.asks.due(now.instant) {
            self.end_query(token, now);
        }
        self.progress(now);
    }

    /// The steps that follow from the state rather than from one input: the join's next step,
    /// the hint about a silent group, the leave's.
    pub(super) fn progress(&mut self, now: Now) {
        if let Bootstrap::Discovering { deadline, next_join } = self.bootstrap {
            if self.members.reachable().next().is_some() || now.instant >= deadline {
                let mut donors: Vec<Member> = self.members.reachable().cloned().collect();
                donors.sort_by_key(|m| m.id);
                let alone = donors.is_empty();
                self.next_donor(donors.into(), alone, now);
            } else if now.instant >= next_join {
                // Repeated in the window: one lost datagram must not split the cluster.
                self.broadcast(&Message::Join(self.settings.me));
                let step = (self.settings.discovery() / 4).min(Duration::from_millis(100));
                self.bootstrap = Bootstrap::Discovering { deadline, next_join: now.instant + step };
            }
        }
        if self.silence_check.is_some_and(|at| now.instant >= at) {
            self.silence_check = None;
            self.hint_if_group_is_silent();
        }
        self.advance_leave(now);
    }

    /// Pulls the state from the next donor; when there is none left, the node is ready (with
    /// `transferred` false: what the members sent before they greeted it is unknown, so it syncs
    /// with each).
    pub(super) fn next_donor(&mut self, mut donors: VecDeque<Member>, transferred: bool, now: Now) {
        if let Some(donor) = donors.pop_front() {
            let tcp = SocketAddr::new(donor.info.addr.ip(), donor.info.tcp_port);
            self.output(Output::Sync { node: donor.id, tcp, full: true });
            self.bootstrap = Bootstrap::Transferring { donor, others: donors, started: now.instant };
            return;
        }
        if !transferred {
            for inbound in self.inbound.values_mut() {
                inbound.sync_wanted = true;
                inbound.history_unknown = true;
            }
        }
        self.bootstrap = Bootstrap::Done;
        self.ready = true;
        self.update_audience(now);
        self.output(Output::Event(Event::Ready));
    }

    /// "Multicast does not get through" is the first thing that goes wrong in a multicast
    /// cluster: say once what to check when the group was silent through the discovery window.
    fn hint_if_group_is_silent(&mut self) {
        let Some(group) = self.settings.group else { return };
        if !self.via_group.is_empty() || self.counters.own_loopback > 0 {
            return;
        }
        let hint = notices::silent_group(group, &self.settings);
        self.log(Level::Warn, hint);
    }

    fn tick(&mut self, now: Now) {
        if self.settings.role == Role::Member && now.instant >= self.next_heartbeat {
            // A steady cadence: ticks only decide how late a heartbeat may be, not how often.
            self.next_heartbeat = (self.next_heartbeat + self.settings.heartbeat).max(now.instant);
            let heartbeat =
                Message::Heartbeat { info: self.settings.me, high_seq: self.send.high_seq(), sent_ms: now.ms };
            self.broadcast(&heartbeat);
        }
        self.check_members(now);
        self.send_naks(now, None);
        self.send_acks(true);
        self.start_syncs(now);
    }

    fn check_members(&mut self, now: Now) {
        let changes = self.members.check(now.instant);
        // Long-gone members are forgotten without a change to report.
        self.update_audience(now);
        for (change, member) in changes {
            if change == Change::Dead {
                // If it comes back (a partition healed), it is heard anew and synced. Its last
                // datagrams (a tail nobody announced) may have reached some members only.
                self.forget_stream(member.id);
                self.sync_with_every_member();
            }
            self.report(Some((change, member)), now);
        }
        self.settle_writes(now);
        for _ in 0..self.reassembler.expire(now.instant) {
            self.counters.drop("fragmentTimeout");
        }
    }

    /// NAKs due now, to every sender, or only to `only`.
    pub(super) fn send_naks(&mut self, now: Now, only: Option<u64>) {
        let naks: Vec<(SocketAddr, Vec<(u64, u64)>)> = self
            .inbound
            .iter_mut()
            .filter(|(node, _)| only.is_none_or(|only| only == **node))
            .filter_map(|(_, i)| {
                let ranges = i.window.due_naks(now.instant, NAK_DELAY, NAK_MAX_SEQS);
                (!ranges.is_empty()).then_some((i.reply_to, ranges))
            })
            .collect();
        for (to, ranges) in naks {
            self.counters.naks_sent += 1;
            self.send_to(&Message::Nak { ranges }, to);
        }
    }

    /// The acks due: `periodic` (the tick), at most one per sender, and only if we have more of
    /// its stream than we said; otherwise only those the senders asked for.
    pub(super) fn send_acks(&mut self, periodic: bool) {
        let senders: Vec<u64> = self.inbound.keys().copied().collect();
        for node in senders {
            self.send_ack(node, periodic);
        }
    }

    /// Settles the writes whose members all acknowledged them (or are no longer alive), or whose
    /// `ackTimeout` passed, and tells the JS side (`waitForAck` only).
    pub(super) fn settle_writes(&mut self, now: Now) {
        if !self.settings.wait_for_ack {
            return;
        }
        let members = &self.members;
        let settled =
            self.waits.settle(&self.acks, |node, incarnation| is_alive(members, node, incarnation), now.instant);
        if settled.timed_out > 0 {
            self.counters.ack_timeouts += settled.timed_out;
            self.unlogged_ack_timeouts += settled.timed_out;
            if now.instant >= self.next_ack_timeout_log {
                self.next_ack_timeout_log = now.instant + ACK_TIMEOUT_LOG_INTERVAL;
                let names: Vec<String> =
                    settled.laggards.iter().map(|id| notices::member_name(*id, self.members.get(*id))).collect();
                let count = std::mem::take(&mut self.unlogged_ack_timeouts);
                let message = notices::ack_timeouts(count, &names, self.settings.ack_timeout, ACK_TIMEOUT_LOG_INTERVAL);
                self.log(Level::Warn, message);
            }
        }
        if let Some(through) = settled.through {
            self.output(Output::Event(Event::Acked { through }));
        }
    }

    /// `waitForAck`: asks members whose acks are late again (the datagram or its `Ack` was lost;
    /// a receiver with a gap NAKs it on its own).
    fn ask_laggards(&mut self, now: Now) {
        let members = &self.members;
        let probe = self.waits.probe(&self.acks, |node, incarnation| is_alive(members, node, incarnation), now.instant);
        let Some((last_seq, lagging)) = probe else { return };
        let to: Vec<SocketAddr> = lagging.iter().filter_map(|id| self.members.get(*id)).map(|m| m.info.addr).collect();
        let request = self.seal(&Message::AckRequest { last_seq });
        self.transmit(to, request);
    }
}

/// Whether (`node`, `incarnation`) is a member seen alive (not suspect, dead or departed).
fn is_alive(members: &Members, node: u64, incarnation: u64) -> bool {
    members.get(node).is_some_and(|m| m.incarnation == incarnation && m.state == MemberState::Alive)
}
