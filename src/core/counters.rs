//! The node's counters for `stats()` (declared in stats.rs, which reads them): plain numbers,
//! counted by the node as it handles its inputs and makes its outputs.

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    pub datagrams_sent: u64,
    pub bytes_sent: u64,
    /// Batches of local writes sent (several writes share a wake-up of the network thread, or a
    /// direct send).
    pub write_batches: u64,
    /// Of those, the batches sent whole from the writing thread (the driver's direct sends).
    pub direct_batches: u64,
    pub datagrams_received: u64,
    pub bytes_received: u64,
    pub retransmissions: u64,
    pub naks_sent: u64,
    pub naks_received: u64,
    pub acks_sent: u64,
    pub acks_received: u64,
    /// `waitForAck` writes whose callback was called at `ackTimeout`, not after every ack.
    pub ack_timeouts: u64,
    pub duplicates: u64,
    pub own_loopback: u64,
    /// Packets authenticated and accepted by the replay windows (the simulator checks that no
    /// packet is accepted twice).
    pub opened: u64,
    pub state_transfers: u64,
    pub anti_entropy_syncs: u64,
    pub sync_entries_received: u64,
    /// Gets that found nothing here and asked the alive members, and how each ended: the session
    /// found, every member answered without one, or the timeout came first.
    pub miss_queries: u64,
    pub misses_recovered: u64,
    pub misses_not_found: u64,
    pub miss_timeouts: u64,
    /// Gets that found nothing here and did not ask: over the rate limit.
    pub misses_rate_limited: u64,
    /// Average age of remote writes on arrival, in ms (exponentially weighted).
    pub replication_lag_ms: f64,
    /// Input dropped, by reason (docs/security.md "Drop counters").
    pub dropped: BTreeMap<&'static str, u64>,
}

impl Counters {
    pub fn drop(&mut self, reason: &'static str) {
        *self.dropped.entry(reason).or_default() += 1;
    }

    /// Folds the age of one remote write, written at `written_ms` and received at `now_ms` (wall
    /// clocks of two nodes, roughly in step under NTP: an estimate, not a measurement).
    pub fn note_lag(&mut self, written_ms: u64, now_ms: u64) {
        let age = now_ms.saturating_sub(written_ms).min(3_600_000) as f64;
        self.replication_lag_ms += (age - self.replication_lag_ms) * 0.05;
    }

    pub fn sent(&mut self, bytes: usize, destinations: usize) {
        self.datagrams_sent += destinations as u64;
        self.bytes_sent += (bytes * destinations) as u64;
    }
}
