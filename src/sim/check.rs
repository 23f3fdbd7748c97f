//! What the simulator checks: the history of every write, and the invariants over the nodes'
//! tables, counters and buffers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::clock::Version;
use crate::table::{Data, Entry, Op, Table};

/// Which register of a sid a write sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Register {
    Data,
    Cookie,
    /// The clear watermark.
    Clear,
}

/// One local write, as its writer made it.
#[derive(Clone, Debug)]
pub struct Written {
    /// The writer: its node id (a new one at each start).
    pub node: u64,
    pub sid: Option<Arc<str>>,
    pub register: Register,
    pub version: Version,
}

impl Written {
    pub fn of(node: u64, op: &Op) -> Written {
        let (sid, register) = match op {
            Op::Set { sid, .. } | Op::Destroy { sid, .. } => (Some(sid.clone()), Register::Data),
            Op::Touch { sid, .. } => (Some(sid.clone()), Register::Cookie),
            Op::Clear { .. } => (None, Register::Clear),
        };
        Written { node, sid, register, version: op.version() }
    }

    /// The writes an entry holds: its data register's and its cookie register's.
    pub fn held_in(sid: &Arc<str>, entry: &Entry) -> Vec<Written> {
        let registers = [(Register::Data, entry.data_version), (Register::Cookie, entry.cookie_version)];
        let written = registers.into_iter().filter(|(_, version)| *version != Version::ZERO);
        written
            .map(|(register, version)| Written { node: version.node, sid: Some(sid.clone()), register, version })
            .collect()
    }

    /// Whether `table` holds this write, or a newer one that supersedes it.
    pub fn held_by(&self, table: &Table) -> bool {
        let mark = table.clear_mark();
        if mark >= self.version {
            return true;
        }
        let Some(sid) = &self.sid else { return false };
        let Some(entry) = table.entry(sid) else { return false };
        match self.register {
            Register::Data => entry.data_version >= self.version,
            // A destroy after a touch voids it (the session it touched is gone).
            Register::Cookie => {
                let voided = matches!(entry.data, Data::Deleted) && entry.data_version >= self.version;
                entry.cookie_version >= self.version || voided
            }
            Register::Clear => false,
        }
    }
}

/// Every write, and what became of the writers.
#[derive(Default)]
pub struct History {
    pub writes: Vec<Written>,
    /// Writers killed (their last writes may be lost).
    pub crashed: BTreeSet<u64>,
    /// Writers that left with every live member's ack, and those members (who hold everything
    /// the writer wrote: while one of them is up, nothing of the writer's may be lost).
    pub left_cleanly: BTreeMap<u64, Vec<(u64, u64)>>,
    /// Writers that left without all the acks (warned about).
    pub left_warned: BTreeSet<u64>,
    /// Per (node, sid): the highest data version it held, and whether that was a tombstone.
    pub seen: BTreeMap<(u64, Arc<str>), Version>,
    /// Per incarnation (node, incarnation) started from a snapshot: the writes it loaded.
    pub restored: BTreeMap<(u64, u64), Vec<Written>>,
}

impl History {
    /// Writes nothing may lose: their writer (node, incarnation) is up at the end, or left with
    /// every ack and one of the members that acknowledged is up.
    pub fn must_survive<'a>(&'a self, up: &'a BTreeSet<(u64, u64)>) -> impl Iterator<Item = &'a Written> {
        let kept = |node: &u64| {
            up.iter().any(|(id, _)| id == node)
                || self.left_cleanly.get(node).is_some_and(|custodians| custodians.iter().any(|c| up.contains(c)))
        };
        self.writes.iter().filter(move |w| kept(&w.node))
    }

    /// The data register of `sid` on node `node` never goes back: a session live again (at
    /// `now`, the node's clock) below a version this node already held (a destroy, or a newer
    /// set) came back from the dead.
    pub fn data_never_goes_back(&mut self, node: u64, sid: &Arc<str>, table: &Table, now: u64) -> Result<(), String> {
        let Some(entry) = table.entry(sid) else { return Ok(()) };
        let key = (node, sid.clone());
        let before = self.seen.get(&key).copied().unwrap_or(Version::ZERO);
        if entry.is_visible(now) && entry.data_version < before && table.clear_mark() < before {
            return Err(format!(
                "node {node:016x}: session {sid:?} is live again at version {:?}, below {before:?} that it held before",
                entry.data_version
            ));
        }
        if entry.data_version > before {
            self.seen.insert(key, entry.data_version);
        }
        Ok(())
    }
}
