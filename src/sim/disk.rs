//! `persist` in the simulator: each slot's snapshot file, written from the node's table as
//! persist/writer.rs does (`Table::export`, the clear watermark, the clock's high-water mark)
//! and loaded into a new incarnation's table as persist/loader.rs does, before it joins.

use std::sync::Arc;

use super::check::Written;
use crate::clock::{Clock, Version};
use crate::table::{Entry, Table};

/// What a snapshot file holds.
pub struct Snapshot {
    entries: Vec<(Arc<str>, Entry)>,
    clear_mark: Version,
    clock: u64,
}

impl Snapshot {
    pub fn take(table: &Table, clock: &Clock, now: u64) -> Snapshot {
        let mut entries = Vec::new();
        table.export(now, |copy| {
            entries.extend(copy.iter().map(|(sid, entry)| (Arc::from(sid), entry.clone())));
            Some(copy)
        });
        Snapshot { entries, clear_mark: table.clear_mark(), clock: clock.high_water() }
    }

    /// Fills `table` (new, empty) and sets `clock` above every version written before. Returns
    /// the writes the snapshot brought back: once the node is up and the cluster converged, each
    /// is on every node (what a snapshot held survives a restart of every node).
    pub fn load(&self, table: &Table, clock: &Clock, now: u64) -> Vec<Written> {
        let mut restored = Vec::new();
        for (sid, entry) in self.entries.iter().filter(|(_, entry)| entry.is_kept(now)) {
            table.restore(table.shard_of(sid), [(&**sid, entry.clone())]);
            restored.extend(Written::held_in(sid, entry));
        }
        table.merge_clear_mark(self.clear_mark);
        clock.observe(Version { hlc: self.clock, node: 0 });
        restored
    }
}
