//! Cluster membership: who is there, and who stopped answering (docs/design.md §3.5).
//!
//! Every datagram from a node counts as "heard". A node silent for `suspect_after` is suspect,
//! for `dead_after` (failureTimeout) dead; a `Leave` makes it left at once. A node is identified
//! by a random id drawn at each start, and its incarnation is its start time: a restarted node is
//! a new member, and the old one is declared dead or left. Dead and left members are listed a
//! while, then forgotten; an incarnation that announced its leave is remembered longer (up to
//! `MAX_MEMBERS` of them), so nothing it sent late makes it a member again, and so is the fact
//! that a forgotten incarnation was a member (for the departed senders a donor reports). Each
//! member's clock offset is estimated from the send times its heartbeats carry (`skew`).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::skew::ClockOffset;
use crate::wire::NodeInfo;

/// Most members tracked (dead and left ones included until forgotten).
pub const MAX_MEMBERS: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl MemberState {
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

/// What happened to a member (the JS `member` event's `type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Join,
    Leave,
    Suspect,
    Dead,
    /// A suspect or dead member was heard again (a stall or a partition ended).
    Alive,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Join => "join",
            Change::Leave => "leave",
            Change::Suspect => "suspect",
            Change::Dead => "dead",
            Change::Alive => "alive",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: u64,
    pub incarnation: u64,
    pub info: NodeInfo,
    pub state: MemberState,
    pub last_heard: Instant,
    /// Epoch ms of `last_heard`, for users.
    pub last_heard_ms: u64,
    /// How far its wall clock is from ours.
    pub clock: ClockOffset,
}

impl Member {
    pub fn to_json(&self) -> Value {
        json!({
            "id": format!("{:016x}", self.id),
            "address": self.info.addr.ip().to_string(),
            "port": self.info.addr.port(),
            "tcpPort": self.info.tcp_port,
            "incarnation": self.incarnation,
            "state": self.state.name(),
            "self": false,
            "lastHeard": self.last_heard_ms,
            "clockOffsetMs": self.clock.estimate(),
        })
    }

    pub fn is_reachable(&self) -> bool {
        matches!(self.state, MemberState::Alive | MemberState::Suspect)
    }
}

/// A set of (id, incarnation) that forgets the oldest beyond MAX_MEMBERS.
#[derive(Default)]
struct Recent {
    order: VecDeque<(u64, u64)>,
    set: HashSet<(u64, u64)>,
}

impl Recent {
    fn insert(&mut self, key: (u64, u64)) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > MAX_MEMBERS {
                if let Some(oldest) = self.order.pop_front() {
                    self.set.remove(&oldest);
                }
            }
        }
    }

    fn contains(&self, key: (u64, u64)) -> bool {
        self.set.contains(&key)
    }
}

pub struct Members {
    /// By id: ordered, so every walk over the members is the same in a replayed simulation.
    members: BTreeMap<u64, Member>,
    /// Incarnations that announced their leave.
    departed: Recent,
    /// Incarnations that were members, then were forgotten.
    forgotten: Recent,
    suspect_after: Duration,
    dead_after: Duration,
    forget_after: Duration,
    /// maxClockSkew (0: never warn).
    max_clock_skew_ms: u64,
}

impl Members {
    pub fn new(heartbeat: Duration, failure_timeout: Duration, max_clock_skew_ms: u64) -> Self {
        Members {
            members: BTreeMap::new(),
            departed: Recent::default(),
            forgotten: Recent::default(),
            // Two missed heartbeats (not one lost) make a node suspect, never later than failureTimeout.
            suspect_after: (heartbeat * 5 / 2).min(failure_timeout),
            dead_after: failure_timeout,
            forget_after: failure_timeout * 20,
            max_clock_skew_ms,
        }
    }

    /// Records that node `id` was heard. `info` is its announced address when the message
    /// carried one. Returns the change to report, if any.
    pub fn heard(
        &mut self,
        id: u64,
        incarnation: u64,
        info: Option<NodeInfo>,
        now: Instant,
        now_ms: u64,
    ) -> Option<(Change, Member)> {
        if self.departed.contains((id, incarnation)) {
            // Late or replayed: a node that left never comes back under the same incarnation.
            return None;
        }
        if let Some(m) = self.members.get_mut(&id) {
            if m.state == MemberState::Left || incarnation != m.incarnation {
                // A late datagram from before its leave, or a forged one: not a sign of life.
                return None;
            }
            m.last_heard = now;
            m.last_heard_ms = now_ms;
            if let Some(info) = info {
                m.info = info;
            }
            if m.state == MemberState::Alive {
                return None;
            }
            m.state = MemberState::Alive;
            return Some((Change::Alive, m.clone()));
        }
        // An unknown node must tell us where it is before it becomes a member, and the table is
        // bounded: a flood of forged ids cannot grow it without limit.
        let info = info?;
        if self.members.len() >= MAX_MEMBERS {
            return None;
        }
        let member = Member {
            id,
            incarnation,
            info,
            state: MemberState::Alive,
            last_heard: now,
            last_heard_ms: now_ms,
            clock: ClockOffset::default(),
        };
        self.members.insert(id, member.clone());
        Some((Change::Join, member))
    }

    /// Notes the wall-clock time (`sent_ms`, its clock) at which a member sent the message
    /// handled at `now_ms` (this node's clock). Returns the member and its clock offset when
    /// that offset is worth a warning now (see `ClockOffset::warning_due`).
    pub fn clock_sample(
        &mut self,
        id: u64,
        incarnation: u64,
        sent_ms: u64,
        now_ms: u64,
        now: Instant,
    ) -> Option<(i64, Member)> {
        let m = self.members.get_mut(&id).filter(|m| m.incarnation == incarnation && m.state != MemberState::Left)?;
        m.clock.sample(sent_ms, now_ms);
        let offset = m.clock.warning_due(self.max_clock_skew_ms, now)?;
        Some((offset, m.clone()))
    }

    /// A node announced its graceful leave (its final `Leave`): it is left at once, and that
    /// incarnation is remembered as departed even after the member is forgotten.
    pub fn announced_leave(&mut self, id: u64, incarnation: u64) -> Option<(Change, Member)> {
        self.departed.insert((id, incarnation));
        self.left(id, incarnation)
    }

    /// Whether that incarnation of node `id` announced its leave to this node: nothing it sends
    /// is acted upon any more. (A member a donor reports gone is left, but not departed: the
    /// donor may be the one cut off from it.)
    pub fn has_departed(&self, id: u64, incarnation: u64) -> bool {
        self.departed.contains((id, incarnation))
    }

    /// Whether that incarnation of node `id` is or was a member here (listed, forgotten after it
    /// died or left, or departed), as far as memory goes: a node heard, but never admitted, is
    /// not (it may be joining).
    pub fn was_member(&self, id: u64, incarnation: u64) -> bool {
        self.members.get(&id).is_some_and(|m| m.incarnation == incarnation)
            || self.forgotten.contains((id, incarnation))
            || self.departed.contains((id, incarnation))
    }

    /// Marks a member left (an announced leave, or one a state transfer's donor reports).
    pub fn left(&mut self, id: u64, incarnation: u64) -> Option<(Change, Member)> {
        let m = self.members.get_mut(&id)?;
        if m.incarnation != incarnation || m.state == MemberState::Left {
            return None;
        }
        m.state = MemberState::Left;
        Some((Change::Leave, m.clone()))
    }

    /// Marks a member dead without waiting for its silence (a state transfer's donor reports it
    /// gone): if it is alive after all, the next packet it sends makes it alive again.
    pub fn declare_dead(&mut self, id: u64, incarnation: u64) -> Option<(Change, Member)> {
        let m = self.members.get_mut(&id).filter(|m| m.incarnation == incarnation && m.is_reachable())?;
        m.state = MemberState::Dead;
        Some((Change::Dead, m.clone()))
    }

    /// Suspicion and death by silence; forgets long-gone members.
    pub fn check(&mut self, now: Instant) -> Vec<(Change, Member)> {
        let mut changes = Vec::new();
        let forget_after = self.forget_after;
        let forgotten = &mut self.forgotten;
        self.members.retain(|_, m| {
            let silent = now.saturating_duration_since(m.last_heard);
            let keep = !matches!(m.state, MemberState::Dead | MemberState::Left) || silent < forget_after;
            if !keep {
                forgotten.insert((m.id, m.incarnation));
            }
            keep
        });
        for m in self.members.values_mut() {
            let silent = now.saturating_duration_since(m.last_heard);
            let change = match m.state {
                MemberState::Alive | MemberState::Suspect if silent >= self.dead_after => {
                    m.state = MemberState::Dead;
                    Change::Dead
                }
                MemberState::Alive if silent >= self.suspect_after => {
                    m.state = MemberState::Suspect;
                    Change::Suspect
                }
                _ => continue,
            };
            changes.push((change, m.clone()));
        }
        changes
    }

    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.get(&id)
    }

    pub fn reachable(&self) -> impl Iterator<Item = &Member> {
        self.members.values().filter(|m| m.is_reachable())
    }

    pub fn all(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HB: Duration = Duration::from_millis(100);
    const FAIL: Duration = Duration::from_millis(600);
    const SKEW: u64 = 1_000;

    fn info(port: u16) -> NodeInfo {
        NodeInfo { addr: ([127, 0, 0, 1], port).into(), tcp_port: port + 1, listen_port: 4000 }
    }

    #[test]
    fn join_suspect_dead_then_forgotten() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL, SKEW);
        assert_eq!(m.heard(1, 10, Some(info(5000)), t0, 0).unwrap().0, Change::Join);
        assert_eq!(m.heard(1, 10, None, t0, 0), None, "already alive");
        assert!(m.check(t0 + HB).is_empty());
        assert!(m.check(t0 + HB * 2).is_empty(), "one lost heartbeat is not suspicious");
        let suspect = m.check(t0 + HB * 5 / 2);
        assert_eq!(suspect[0].0, Change::Suspect);
        let dead = m.check(t0 + FAIL);
        assert_eq!(dead[0].0, Change::Dead);
        assert_eq!(m.reachable().count(), 0);
        assert!(m.check(t0 + FAIL * 21).is_empty());
        assert!(m.get(1).is_none(), "dead members are forgotten");
    }

    #[test]
    fn a_stalled_node_heard_again_is_alive() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL, SKEW);
        m.heard(1, 10, Some(info(5000)), t0, 0);
        m.check(t0 + FAIL);
        let (change, member) = m.heard(1, 10, None, t0 + FAIL * 2, 5).unwrap();
        assert_eq!(change, Change::Alive);
        assert_eq!(member.state, MemberState::Alive);
    }

    #[test]
    fn leave_is_final_for_that_incarnation() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL, SKEW);
        m.heard(1, 10, Some(info(5000)), t0, 0);
        assert_eq!(m.left(1, 9), None, "a leave from another incarnation");
        assert_eq!(m.left(1, 10).unwrap().0, Change::Leave);
        assert_eq!(m.heard(1, 10, Some(info(5000)), t0, 0), None, "late datagram after leave");
        assert!(m.check(t0 + FAIL * 2).is_empty(), "left members are not declared dead");
    }

    #[test]
    fn a_departed_incarnation_is_remembered_after_it_is_forgotten() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL, SKEW);
        m.heard(1, 10, Some(info(5000)), t0, 0);
        assert!(!m.has_departed(1, 10));
        assert_eq!(m.announced_leave(1, 10).unwrap().0, Change::Leave);
        assert_eq!(m.announced_leave(1, 10), None, "the second Leave changes nothing");
        assert!(m.has_departed(1, 10));
        assert!(!m.has_departed(1, 11), "another incarnation is another member");
        m.check(t0 + FAIL * 21);
        assert!(m.get(1).is_none(), "left members are forgotten");
        assert!(m.has_departed(1, 10), "but not their leave");
        let late = m.heard(1, 10, Some(info(5000)), t0 + FAIL * 22, 0);
        assert_eq!(late, None, "a late heartbeat does not bring it back");
        assert!(m.get(1).is_none());
        assert_eq!(m.heard(1, 11, Some(info(5000)), t0, 0).unwrap().0, Change::Join, "a restart does");

        // Left through a donor's report: left, but not departed (the donor may be the one cut off).
        m.heard(2, 20, Some(info(5001)), t0, 0);
        m.left(2, 20);
        assert!(!m.has_departed(2, 20));

        // Bounded: the oldest departures are forgotten first.
        for id in 100..100 + MAX_MEMBERS as u64 {
            m.announced_leave(id, 1);
        }
        assert!(!m.has_departed(1, 10));
        assert!(m.has_departed(100, 1) && m.has_departed(99 + MAX_MEMBERS as u64, 1));
        assert_eq!((m.departed.order.len(), m.departed.set.len()), (MAX_MEMBERS, MAX_MEMBERS));
    }

    #[test]
    fn members_are_remembered_as_members_after_they_are_forgotten() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL, SKEW);
        assert!(!m.was_member(1, 10), "heard of, never admitted");
        m.heard(1, 10, Some(info(5000)), t0, 0);
        m.heard(2, 20, Some(info(5001)), t0, 0);
        m.announced_leave(2, 20);
        m.check(t0 + FAIL);
        assert!(m.was_member(1, 10) && m.was_member(2, 20), "dead, left");
        m.check(t0 + FAIL * 21);
        assert!(m.get(1).is_none() && m.get(2).is_none());
        assert!(m.was_member(1, 10) && m.was_member(2, 20), "forgotten, but was a member");
        assert!(!m.was_member(1, 11), "another incarnation");
        let back = m.heard(1, 10, Some(info(5000)), t0 + FAIL * 22, 0);
        assert_eq!(back.unwrap().0, Change::Join, "a dead member may come back");
    }

    #[test]
    fn clock_offsets_are_tracked_per_member_and_warned_about_once() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL, SKEW);
        let now_ms = 1_800_000_000_000;
        assert_eq!(m.clock_sample(1, 10, now_ms, now_ms, t0), None, "not a member yet");
        m.heard(1, 10, Some(info(5000)), t0, now_ms);
        assert_eq!(m.get(1).unwrap().to_json()["clockOffsetMs"], Value::Null, "unknown until heard");
        let mut warnings = Vec::new();
        for i in 0..20 {
            let at = t0 + HB * i;
            let sent = now_ms + 3_600_000 + i as u64 * 100;
            warnings.extend(m.clock_sample(1, 10, sent, now_ms + i as u64 * 100 + 1, at).map(|(offset, _)| offset));
        }
        assert_eq!(warnings, [3_599_999], "once, after a window of samples");
        assert_eq!(m.get(1).unwrap().to_json()["clockOffsetMs"], 3_599_999);
        assert_eq!(m.clock_sample(1, 9, 0, now_ms, t0), None, "another incarnation");
        assert_eq!(m.get(1).unwrap().clock.estimate(), Some(3_599_999), "is not sampled");
    }

    #[test]
    fn unknown_nodes_need_an_address() {
        let mut m = Members::new(HB, FAIL, SKEW);
        assert_eq!(m.heard(2, 1, None, Instant::now(), 0), None);
        assert!(m.get(2).is_none());
    }
}
