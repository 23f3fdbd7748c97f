//! Connectivity probes for `npx express-session-multicast doctor`.
//!
//! The doctor runs the engine as an observer: it listens to the cluster (heartbeats tell it who
//! is there) without joining it, and sends `Ping`s of several sizes to the group and to the
//! configured peers. Every node answers with a `Pong` naming the size that arrived, so the report
//! shows who answered, the round trips, and which datagram sizes get through.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Most `Pong`s a node sends per second: answering probes must stay cheap.
pub const MAX_PONGS_PER_SECOND: u32 = 200;

struct Reply {
    node: u64,
    from: SocketAddr,
    size: u32,
    rtt: Duration,
}

#[derive(Default)]
pub struct Probes {
    next_token: u64,
    sent: HashMap<u64, (u32, Instant)>,
    replies: Vec<Reply>,
}

impl Probes {
    /// Records a ping of `size` bytes sent now; returns its token.
    pub fn sent(&mut self, size: u32, now: Instant) -> u64 {
        self.next_token += 1;
        self.sent.insert(self.next_token, (size, now));
        self.next_token
    }

    /// Records a pong; false when its token is not one of ours.
    pub fn answered(&mut self, node: u64, from: SocketAddr, token: u64, now: Instant) -> bool {
        let Some((size, at)) = self.sent.get(&token) else { return false };
        self.replies.push(Reply { node, from, size: *size, rtt: now.saturating_duration_since(*at) });
        true
    }

    /// Per answering node: its address, the sizes that got through, and round-trip times.
    pub fn report(&self) -> Value {
        let mut by_node: HashMap<u64, (SocketAddr, Vec<u32>, Vec<f64>)> = HashMap::new();
        for r in &self.replies {
            let entry = by_node.entry(r.node).or_insert((r.from, Vec::new(), Vec::new()));
            entry.1.push(r.size);
            entry.2.push(r.rtt.as_secs_f64() * 1e6);
        }
        let mut nodes: Vec<Value> = by_node
            .into_iter()
            .map(|(node, (from, mut sizes, mut rtts))| {
                sizes.sort_unstable();
                sizes.dedup();
                rtts.sort_by(f64::total_cmp);
                json!({
                    "id": format!("{node:016x}"),
                    "address": from.to_string(),
                    "sizes": sizes,
                    "rttMicros": { "min": rtts[0], "median": rtts[rtts.len() / 2], "max": rtts[rtts.len() - 1] },
                })
            })
            .collect();
        nodes.sort_by(|a, b| a["address"].as_str().cmp(&b["address"].as_str()));
        let mut sizes: Vec<u32> = self.sent.values().map(|(size, _)| *size).collect();
        sizes.sort_unstable();
        sizes.dedup();
        json!({ "sizesSent": sizes, "answers": nodes })
    }
}

/// A budget of `MAX_PONGS_PER_SECOND`, refilled every second.
pub struct PongBudget {
    window: Instant,
    used: u32,
}

impl PongBudget {
    pub fn new(now: Instant) -> Self {
        PongBudget { window: now, used: 0 }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.used = 0;
        }
        self.used += 1;
        self.used <= MAX_PONGS_PER_SECOND
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_grouped_by_node_with_sizes_and_round_trips() {
        let t0 = Instant::now();
        let mut p = Probes::default();
        let small = p.sent(512, t0);
        let large = p.sent(4000, t0);
        let from: SocketAddr = "198.18.0.2:5000".parse().unwrap();
        assert!(p.answered(7, from, small, t0 + Duration::from_micros(300)));
        assert!(!p.answered(7, from, 999, t0), "not our token");
        let report = p.report();
        assert_eq!(report["sizesSent"], json!([512, 4000]));
        assert_eq!(report["answers"][0]["sizes"], json!([512]), "the 4000-byte probe got no answer");
        assert_eq!(report["answers"][0]["rttMicros"]["min"], 300.0);
        assert!(large > small);
    }

    #[test]
    fn pongs_are_rate_limited() {
        let t0 = Instant::now();
        let mut budget = PongBudget::new(t0);
        assert_eq!((0..MAX_PONGS_PER_SECOND + 10).filter(|_| budget.take(t0)).count(), MAX_PONGS_PER_SECOND as usize);
        assert!(budget.take(t0 + Duration::from_secs(1)));
    }
}
