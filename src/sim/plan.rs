//! What one seed simulates: the cluster's settings, the faults and when they happen, the
//! workload. Drawn from the seed alone.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How the nodes reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Multicast,
    /// `multicast: false` and every node's cluster port in `peers`.
    Peers,
    /// Both: members multicast reaches get no unicast copies.
    Both,
}

/// Slots whose `side` differs cannot reach each other from `start` to `end`.
#[derive(Clone, Debug)]
pub struct Partition {
    pub start: Duration,
    pub end: Duration,
    pub side: Vec<bool>,
}

/// A slot's node stops at `at`: killed (`graceful` false) or closed (its leave), and starts
/// again as a new incarnation `restart` later (if ever).
#[derive(Clone, Debug)]
pub struct Stop {
    pub slot: usize,
    pub at: Duration,
    pub graceful: bool,
    pub restart: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub slots: usize,
    /// When each slot's first node starts (joins during writes when later than 0).
    pub starts: Vec<Duration>,
    pub sealed: bool,
    pub transport: Transport,
    pub heartbeat: Duration,
    pub failure_timeout: Duration,
    pub wait_for_ack: bool,
    pub miss_timeout: Duration,
    /// Each slot's wall clock minus true time, ms.
    pub skew_ms: Vec<i64>,
    /// Faults and writes happen before this; afterwards the network is clean and quiet.
    pub faults_until: Duration,
    pub loss: f64,
    pub duplication: f64,
    /// One-way delay, µs: uniform in this range (so datagrams overtake each other).
    pub delay_us: (u64, u64),
    pub partitions: Vec<Partition>,
    pub stops: Vec<Stop>,
    /// Writes per second over the whole cluster.
    pub write_rate: f64,
    pub sids: usize,
    pub p_destroy: f64,
    pub p_touch: f64,
    pub p_clear: f64,
    /// Of writes: a get of a sid the node does not hold (a miss query).
    pub p_ask: f64,
    /// Sessions of several datagrams, and of many.
    pub p_fragmented: f64,
    pub p_large: f64,
    /// Forged, foreign, corrupted or replayed datagrams per second.
    pub garbage_rate: f64,
    /// A failed TCP sync (connection reset) while faults last.
    pub p_sync_failure: f64,
    pub retransmit_datagrams: usize,
    /// How long a session lives after its last write, and a tombstone's least retention after
    /// its destroy (long by default: nothing expires during a run).
    pub lifetime: Duration,
    pub retention: Duration,
    /// `persist`: every node snapshots its table this often (and on a graceful stop), and a
    /// node that starts again loads its slot's last snapshot before it joins.
    pub persist: Option<Duration>,
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

impl Plan {
    pub fn draw(seed: u64) -> Plan {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x005e_ed0f_c0de);
        let slots = rng.random_range(2..=5);
        let faults_until = ms(rng.random_range(3_000..12_000));
        let starts = (0..slots)
            .map(|i| {
                if i >= 2 && rng.random_bool(0.4) {
                    ms(rng.random_range(0..faults_until.as_millis() as u64))
                } else {
                    ms(0)
                }
            })
            .collect();
        let heartbeat = ms(*[100, 200, 500].get(rng.random_range(0..3)).unwrap());
        let failure_timeout = (heartbeat * 2).max(ms(rng.random_range(600..3_000)));
        let big_skew = rng.random_bool(0.3);
        let skew_ms = (0..slots)
            .map(|_| if big_skew { rng.random_range(-300_000..=300_000) } else { rng.random_range(-20..=20) })
            .collect();
        let transport = match rng.random_range(0..10) {
            0..=5 => Transport::Multicast,
            6..=8 => Transport::Peers,
            _ => Transport::Both,
        };
        let mut partitions = Vec::new();
        for _ in 0..rng.random_range(0..=2) {
            let start = ms(rng.random_range(0..faults_until.as_millis() as u64));
            let end = (start + ms(rng.random_range(200..8_000))).min(faults_until);
            let side = (0..slots).map(|_| rng.random_bool(0.5)).collect();
            partitions.push(Partition { start, end, side });
        }
        let mut stops = Vec::new();
        for _ in 0..rng.random_range(0..=2) {
            let slot = rng.random_range(0..slots);
            let at = ms(rng.random_range(0..faults_until.as_millis() as u64));
            let restart = rng.random_bool(0.7).then(|| ms(rng.random_range(10..4_000)));
            stops.push(Stop { slot, at, graceful: rng.random_bool(0.4), restart });
        }
        let persist = rng.random_bool(0.4).then(|| ms(rng.random_range(200..3_000)));
        if persist.is_some() && rng.random_bool(0.4) {
            // Every node stops at once (a deploy, a power cut) and starts again from its snapshot.
            let at = ms(rng.random_range(0..faults_until.as_millis() as u64));
            let graceful = rng.random_bool(0.5);
            for slot in 0..slots {
                stops.push(Stop { slot, at, graceful, restart: Some(ms(rng.random_range(10..3_000))) });
            }
        }
        Plan {
            slots,
            starts,
            sealed: rng.random_bool(0.5),
            transport,
            heartbeat,
            failure_timeout,
            wait_for_ack: rng.random_bool(0.5),
            miss_timeout: if rng.random_bool(0.8) { ms(20) } else { Duration::ZERO },
            skew_ms,
            faults_until,
            loss: if rng.random_bool(0.2) { 0.0 } else { rng.random_range(0.0..0.3) },
            duplication: if rng.random_bool(0.5) { 0.0 } else { rng.random_range(0.0..0.05) },
            delay_us: {
                let min = rng.random_range(20..500);
                (min, min + rng.random_range(0..5_000))
            },
            partitions,
            stops,
            write_rate: rng.random_range(20.0..150.0),
            sids: rng.random_range(5..60),
            p_destroy: rng.random_range(0.05..0.3),
            p_touch: rng.random_range(0.0..0.2),
            p_clear: if rng.random_bool(0.3) { 0.003 } else { 0.0 },
            p_ask: rng.random_range(0.0..0.1),
            p_fragmented: rng.random_range(0.0..0.1),
            p_large: if rng.random_bool(0.2) { 0.01 } else { 0.0 },
            garbage_rate: if rng.random_bool(0.5) { rng.random_range(1.0..50.0) } else { 0.0 },
            p_sync_failure: rng.random_range(0.0..0.2),
            retransmit_datagrams: if rng.random_bool(0.2) { rng.random_range(8..128) } else { 65_536 },
            lifetime: Duration::from_secs(86_400),
            retention: Duration::from_millis(crate::table::TOMBSTONE_MIN_RETENTION_MS),
            persist,
        }
    }

    /// A run where sessions live `lifetime`, and tombstones are forgotten `retention` after
    /// their destroy (or once the session expired): partitions of up to 15 s, clocks up to
    /// `skew_ms` apart, many destroys and touches of few sessions. For the study of the retention.
    pub fn draw_short_lived(seed: u64, lifetime: Duration, retention: Duration, skew_ms: i64) -> Plan {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x0072_e7e1_7100);
        let mut plan = Plan::draw(seed);
        plan.faults_until = ms(rng.random_range(20_000..40_000));
        plan.partitions = (0..rng.random_range(1..=3))
            .map(|_| {
                let start = ms(rng.random_range(0..plan.faults_until.as_millis() as u64));
                let side = (0..plan.slots).map(|_| rng.random_bool(0.5)).collect();
                Partition { start, end: (start + ms(rng.random_range(1_000..15_000))).min(plan.faults_until), side }
            })
            .collect();
        plan.skew_ms = (0..plan.slots).map(|_| rng.random_range(-skew_ms..=skew_ms)).collect();
        plan.stops.clear();
        plan.persist = None;
        plan.sids = rng.random_range(3..10);
        plan.p_destroy = 0.3;
        plan.p_touch = 0.3;
        plan.p_clear = 0.0;
        plan.lifetime = lifetime;
        plan.retention = retention;
        plan
    }

    /// When the last fault ends: partitions heal, stopped nodes are back (or gone for good).
    pub fn quiet_from(&self) -> Duration {
        let restarts = self.stops.iter().filter_map(|s| s.restart.map(|r| s.at + r));
        restarts.chain([self.faults_until]).max().unwrap_or(self.faults_until)
    }
}
