//! The checks made while a seed runs: acknowledged writes are where they must be, no session
//! comes back, the buffers stay bounded.

use super::*;

impl World {
    /// `waitForAck`: writes up to `through` are settled. Unless some timed out, every member
    /// alive when they left, and alive still, holds them (read your writes on any node).
    pub(super) fn acked(&mut self, slot: usize, through: u64) {
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
    pub(super) fn check(&mut self) {
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
