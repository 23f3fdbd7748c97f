//! What the node takes and gives: its settings, the moment of each input, and its outputs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Event;
use crate::options::{Config, Peer};
use crate::wire::NodeInfo;

/// Datagrams kept for retransmission.
const RETRANSMIT_DATAGRAMS: usize = 65_536;

/// A moment as the driver read it: the monotonic instant for timers, and the wall clock (epoch
/// ms) for what other nodes see (heartbeats' send times, expiries, versions' ages).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub ms: u64,
}

/// What the node takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Member,
    /// The doctor: learns who is there from joins, greetings and heartbeats, answers and sends
    /// probes, and takes part in nothing else (no join, no heartbeat, no stream, no leave).
    Observer,
}

/// The protocol's settings, from the store's options and the node's sockets.
#[derive(Clone, Debug)]
pub struct Settings {
    pub role: Role,
    /// What this node announces: its unicast address, TCP port and cluster port.
    pub me: NodeInfo,
    /// The multicast group; `None` without multicast.
    pub group: Option<SocketAddr>,
    /// The configured peers (names), for what the node says about them.
    pub peers: Vec<Peer>,
    pub multicast_ttl: u32,
    pub heartbeat: Duration,
    pub failure_timeout: Duration,
    pub max_clock_skew_ms: u64,
    pub wait_for_ack: bool,
    pub ack_timeout: Duration,
    pub miss_timeout: Duration,
    /// Bytes of partial fragmented messages held at most.
    pub reassembly_budget: usize,
    /// Datagrams kept for retransmission (engine tests make it small to force syncs).
    pub retransmit_datagrams: usize,
}

impl Settings {
    pub fn new(config: &Config, role: Role, me: NodeInfo, group: Option<SocketAddr>) -> Settings {
        Settings {
            role,
            me,
            group,
            peers: config.peers.clone(),
            multicast_ttl: config.multicast_ttl,
            heartbeat: Duration::from_millis(config.heartbeat_interval_ms),
            failure_timeout: Duration::from_millis(config.failure_timeout_ms),
            max_clock_skew_ms: config.max_clock_skew_ms,
            wait_for_ack: config.wait_for_ack,
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            miss_timeout: Duration::from_millis(config.miss_timeout_ms),
            reassembly_budget: (config.max_session_bytes * 4).max(16 << 20),
            retransmit_datagrams: RETRANSMIT_DATAGRAMS,
        }
    }

    /// The period of the node's periodic work (heartbeats are due on their own cadence).
    pub(super) fn tick(&self) -> Duration {
        (self.heartbeat / 4).clamp(Duration::from_millis(5), Duration::from_millis(100))
    }

    /// How long a joining node listens for members before it pulls the state (or finds itself alone).
    pub(super) fn discovery(&self) -> Duration {
        (self.heartbeat * 2).max(Duration::from_millis(300))
    }
}

/// A datagram to send, to each of `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: Vec<SocketAddr>,
    pub bytes: Vec<u8>,
}

/// What the node asks of its driver, besides datagrams.
#[derive(Debug)]
pub enum Output {
    Event(Event),
    /// Pull from member `node` over TCP: the whole table (`full`: the state transfer) or the
    /// buckets whose digests differ (anti-entropy); then call `sync_done`.
    Sync {
        node: u64,
        tcp: SocketAddr,
        full: bool,
    },
    /// Fetch over TCP what the member at `tcp` holds for `sid` (an entry too large for an answer
    /// datagram), giving up at `deadline`; then call `fetch_done`.
    Fetch {
        token: u64,
        sid: Arc<str>,
        tcp: SocketAddr,
        deadline: Instant,
    },
    /// The miss query `token` is over: what the members held is merged into the table.
    Answered {
        token: u64,
    },
    /// Whether some member may hear this node's writes: a node alone queues none
    /// (docs/how-it-works.md "A node alone").
    Audience(bool),
    /// The leave is over: the final `Leave`s are queued and the node acts on nothing any more;
    /// the warning to log when the members' acks did not all come.
    Left {
        warning: Option<String>,
    },
}

/// Gauges of what the node holds for the protocol (`stats()`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buffers {
    pub missing_datagrams: u64,
    pub retransmit_buffer_bytes: u64,
    pub reassembly_bytes: u64,
}
