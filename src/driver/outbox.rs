//! Local writes on their way to the network.
//!
//! Waking the network thread costs a syscall and an inter-processor interrupt, more than the
//! write itself; so a write only queues until the JS adapter's flush, once per event-loop turn
//! that wrote. A few writes then leave from the JS thread itself when no batch is in flight
//! (`Driver::flush` in driver/calls.rs, `take_at_most`); more are handed to the network thread, a burst of writes
//! in one turn costing one wake-up (`flush`). The queue also hands itself over once it holds
//! `FLUSH_OPS` writes or `FLUSH_BYTES` bytes (a long synchronous loop of writes does not pile
//! up), and the cluster's tick drains what was already queued at the tick before, so a missing
//! flush delays a write by two ticks at most, never loses it (and a write is never taken from
//! under the event-loop turn that made it, whose flush comes at its end).

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::table::Op;
use crate::wire;

/// Writes that wake the network thread without waiting for a flush.
const FLUSH_OPS: usize = 256;
/// Queued bytes that wake the network thread without waiting for a flush.
const FLUSH_BYTES: usize = 256 << 10;

#[derive(Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    ready: Notify,
    /// Some node may hear the writes: a member that has not left is known (set by the cluster).
    /// A node alone sends none: whoever joins later gets them by its state transfer, and a node
    /// that hears this one again after a partition syncs with it (docs/how-it-works.md "A node alone").
    audience: AtomicBool,
}

#[derive(Default)]
struct Queue {
    ops: Vec<Op>,
    bytes: usize,
    /// Writes pushed so far: the number of the last one (they are numbered 1, 2, 3…).
    pushed: u64,
    /// `pushed` at the last `flush_stale`.
    pushed_at_tick: u64,
}

impl Outbox {
    pub fn set_audience(&self, audience: bool) {
        self.audience.store(audience, Ordering::Release);
    }

    /// Whether writes are worth queueing: some member may hear them.
    pub fn has_audience(&self) -> bool {
        self.audience.load(Ordering::Acquire)
    }

    /// Queues a write; returns its number (see ack_wait.rs).
    pub fn push(&self, op: Op) -> u64 {
        let mut queue = self.queue.lock();
        queue.bytes += wire::op_len(&op);
        queue.ops.push(op);
        queue.pushed += 1;
        let number = queue.pushed;
        if queue.ops.len() >= FLUSH_OPS || queue.bytes >= FLUSH_BYTES {
            drop(queue);
            self.ready.notify_one();
        }
        number
    }

    /// Hands the queued writes to the network thread.
    pub fn flush(&self) {
        if !self.queue.lock().ops.is_empty() {
            self.ready.notify_one();
        }
    }

    /// The tick's hand-over: only if the oldest write queued was already there at the previous
    /// tick (its turn's flush did not come).
    pub fn flush_stale(&self) {
        let mut queue = self.queue.lock();
        let oldest = queue.pushed + 1 - queue.ops.len() as u64;
        let stale = !queue.ops.is_empty() && oldest <= queue.pushed_at_tick;
        queue.pushed_at_tick = queue.pushed;
        drop(queue);
        if stale {
            self.ready.notify_one();
        }
    }

    /// Everything queued so far, in write order, and the number of the last write taken.
    pub fn take(&self) -> (Vec<Op>, u64) {
        let mut queue = self.queue.lock();
        queue.bytes = 0;
        (std::mem::take(&mut queue.ops), queue.pushed)
    }

    /// `take`, if the queue holds at most `max_bytes`; else None, and nothing is taken.
    pub fn take_at_most(&self, max_bytes: usize) -> Option<(Vec<Op>, u64)> {
        let mut queue = self.queue.lock();
        if queue.bytes > max_bytes {
            return None;
        }
        queue.bytes = 0;
        Some((std::mem::take(&mut queue.ops), queue.pushed))
    }

    /// Waits for a flush (the queue may be empty by then: a tick may have drained it).
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    /// Waits for a flush, then takes the queue (possibly empty).
    pub async fn flushed(&self) -> Vec<Op> {
        self.wait().await;
        self.take().0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::clock::Version;

    fn op(i: usize) -> Op {
        Op::Destroy { sid: format!("s{i}").into(), version: Version { hlc: i as u64, node: 1 } }
    }

    fn flushed_within(outbox: &Outbox, ms: u64) -> Option<Vec<Op>> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        rt.block_on(async { tokio::time::timeout(Duration::from_millis(ms), outbox.flushed()).await.ok() })
    }

    #[test]
    fn writes_wait_for_a_flush_and_come_out_in_order() {
        let outbox = Outbox::default();
        assert_eq!((0..3).map(|i| outbox.push(op(i))).collect::<Vec<_>>(), [1, 2, 3], "numbered");
        assert!(flushed_within(&outbox, 50).is_none(), "no flush, no hand-over");
        outbox.flush();
        let batch = flushed_within(&outbox, 1000).expect("handed over after a flush");
        assert_eq!(batch, (0..3).map(op).collect::<Vec<_>>());
        assert_eq!(outbox.take(), (vec![], 3), "the numbering goes on");
    }

    #[test]
    fn a_full_queue_hands_itself_over() {
        let outbox = Outbox::default();
        for i in 0..FLUSH_OPS {
            outbox.push(op(i));
        }
        assert_eq!(flushed_within(&outbox, 1000).expect("handed over at FLUSH_OPS").len(), FLUSH_OPS);
    }

    #[test]
    fn the_tick_takes_only_writes_a_flush_missed() {
        let outbox = Outbox::default();
        outbox.push(op(0));
        outbox.flush_stale();
        assert!(flushed_within(&outbox, 50).is_none(), "queued since this tick: its turn may still flush it");
        outbox.push(op(1));
        outbox.flush_stale();
        assert_eq!(flushed_within(&outbox, 1000).expect("stale by the next tick").len(), 2);
        outbox.push(op(2));
        outbox.flush_stale();
        assert!(flushed_within(&outbox, 50).is_none(), "the numbering goes on across hand-overs");
    }

    #[test]
    fn a_flush_of_nothing_wakes_nobody() {
        let outbox = Outbox::default();
        outbox.flush();
        assert!(flushed_within(&outbox, 50).is_none());
    }
}
