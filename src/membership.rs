//! Cluster membership: who is there, and who stopped answering (DESIGN §3).
//!
//! Every datagram from a node counts as "heard". A node silent for `suspect_after` is suspect,
//! for `dead_after` (failureTimeout) dead; a `Leave` makes it left at once. A node is identified
//! by a random id drawn at each start, and its incarnation is its start time: a restarted node is
//! a new member, and the old one is declared dead or left. Dead and left members are listed a
//! while, then forgotten.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

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
        })
    }

    pub fn is_reachable(&self) -> bool {
        matches!(self.state, MemberState::Alive | MemberState::Suspect)
    }
}

pub struct Members {
    members: HashMap<u64, Member>,
    suspect_after: Duration,
    dead_after: Duration,
    forget_after: Duration,
}

impl Members {
    pub fn new(heartbeat: Duration, failure_timeout: Duration) -> Self {
        Members {
            members: HashMap::new(),
            // Two missed heartbeats (not one lost) make a node suspect, never later than failureTimeout.
            suspect_after: (heartbeat * 5 / 2).min(failure_timeout),
            dead_after: failure_timeout,
            forget_after: failure_timeout * 20,
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
        let member = Member { id, incarnation, info, state: MemberState::Alive, last_heard: now, last_heard_ms: now_ms };
        self.members.insert(id, member.clone());
        Some((Change::Join, member))
    }

    /// A node announced its graceful leave.
    pub fn left(&mut self, id: u64, incarnation: u64) -> Option<(Change, Member)> {
        let m = self.members.get_mut(&id)?;
        if m.incarnation != incarnation || m.state == MemberState::Left {
            return None;
        }
        m.state = MemberState::Left;
        Some((Change::Leave, m.clone()))
    }

    /// Suspicion and death by silence; forgets long-gone members.
    pub fn check(&mut self, now: Instant) -> Vec<(Change, Member)> {
        let mut changes = Vec::new();
        let forget_after = self.forget_after;
        self.members.retain(|_, m| {
            let silent = now.saturating_duration_since(m.last_heard);
            !matches!(m.state, MemberState::Dead | MemberState::Left) || silent < forget_after
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

    fn info(port: u16) -> NodeInfo {
        NodeInfo { addr: ([127, 0, 0, 1], port).into(), tcp_port: port + 1, listen_port: 4000 }
    }

    #[test]
    fn join_suspect_dead_then_forgotten() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL);
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
        let mut m = Members::new(HB, FAIL);
        m.heard(1, 10, Some(info(5000)), t0, 0);
        m.check(t0 + FAIL);
        let (change, member) = m.heard(1, 10, None, t0 + FAIL * 2, 5).unwrap();
        assert_eq!(change, Change::Alive);
        assert_eq!(member.state, MemberState::Alive);
    }

    #[test]
    fn leave_is_final_for_that_incarnation() {
        let t0 = Instant::now();
        let mut m = Members::new(HB, FAIL);
        m.heard(1, 10, Some(info(5000)), t0, 0);
        assert_eq!(m.left(1, 9), None, "a leave from another incarnation");
        assert_eq!(m.left(1, 10).unwrap().0, Change::Leave);
        assert_eq!(m.heard(1, 10, Some(info(5000)), t0, 0), None, "late datagram after leave");
        assert!(m.check(t0 + FAIL * 2).is_empty(), "left members are not declared dead");
    }

    #[test]
    fn unknown_nodes_need_an_address() {
        let mut m = Members::new(HB, FAIL);
        assert_eq!(m.heard(2, 1, None, Instant::now(), 0), None);
        assert!(m.get(2).is_none());
    }
}
