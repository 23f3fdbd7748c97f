//! Every figure of `store.stats()`, declared once in `STATS`: its key, where its value comes from,
//! and how `store.metrics()` exports it (name, type, help text, factor to the base unit).
//! `Engine::stats()` and `Engine::metrics()` both render one `Snapshot` of them (metrics.rs), so
//! no figure can be in one and silently missing from the other; test/operations.test.js checks
//! index.d.ts and the tables of docs/operations.md against the declarations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Map, Value};

use crate::core::{Buffers, Counters as NetCounters};
use crate::engine::Counters;
use crate::persist::PersistStats;
use crate::table::TableCounts;

/// One figure of `stats()`.
pub struct StatDecl {
    /// Its key in `stats()`.
    pub key: &'static str,
    /// Where its value comes from.
    read: Read,
    /// How `metrics()` exports it.
    pub export: Export,
    /// What it is, in one line: the metric's HELP text when it is exported.
    pub help: &'static str,
}

/// Where a figure's value comes from.
enum Read {
    /// The session table (always there).
    Table(fn(&TableCounts) -> usize),
    /// A counter of the engine (always there).
    Local(fn(&Counters) -> &AtomicU64),
    /// The node itself: its network state, members, readiness (`None`: not there).
    Node(fn(&Sources) -> Option<Reading>),
    /// A counter of the cluster node (there while networked).
    NetCounter(fn(&NetCounters) -> u64),
    /// Another figure of the cluster node (there while networked).
    Net(fn(&NetCounters) -> Reading),
    /// What the node holds for the protocol (there while networked).
    Buffer(fn(&Buffers) -> u64),
    /// A figure of the snapshots (there with `persist`).
    Persist(fn(&PersistStats) -> Reading),
}

/// How `metrics()` exports a figure.
#[derive(Clone, Copy)]
pub enum Export {
    /// Not a metric (`members` is: by state, from `members()`; see metrics.rs).
    No,
    /// One series, `name` after the prefix, its value times `scale` (to the base unit).
    Series { name: &'static str, kind: Kind, scale: f64 },
    /// A gauge with one series per state: 1 for the current one, 0 for the others.
    States { name: &'static str, states: &'static [&'static str] },
    /// A counter with one series per key of the figure (an object), as the `label`.
    ByKey { name: &'static str, label: &'static str },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Gauge,
    Counter,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        }
    }
}

/// The value of a figure.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Count(u64),
    Number(f64),
    Flag(bool),
    State(&'static str),
    Text(String),
    ByKey(BTreeMap<&'static str, u64>),
}

impl Reading {
    /// As a sample value: counts and numbers, and 1 or 0 for a flag.
    pub fn number(&self) -> Option<f64> {
        match self {
            Reading::Count(n) => Some(*n as f64),
            Reading::Number(x) => Some(*x),
            Reading::Flag(b) => Some(if *b { 1.0 } else { 0.0 }),
            Reading::State(_) | Reading::Text(_) | Reading::ByKey(_) => None,
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Reading::Count(n) => json!(n),
            Reading::Number(x) => json!(x),
            Reading::Flag(b) => json!(b),
            Reading::State(s) => json!(s),
            Reading::Text(s) => json!(s),
            Reading::ByKey(map) => json!(map),
        }
    }
}

const fn counter(name: &'static str) -> Export {
    Export::Series { name, kind: Kind::Counter, scale: 1.0 }
}

const fn gauge(name: &'static str) -> Export {
    Export::Series { name, kind: Kind::Gauge, scale: 1.0 }
}

/// Every figure of `stats()`, in the order of index.d.ts; `metrics()` exports them in this order.
pub static STATS: &[StatDecl] = &[
    StatDecl {
        key: "sessions",
        read: Read::Table(|t| t.sessions),
        export: gauge("sessions"),
        help: "Live sessions held by this node.",
    },
    StatDecl {
        key: "tombstones",
        read: Read::Table(|t| t.tombstones),
        export: gauge("tombstones"),
        help: "Tombstones of destroyed sessions still kept.",
    },
    StatDecl {
        key: "sessionBytes",
        read: Read::Table(|t| t.session_bytes),
        export: gauge("session_bytes"),
        help: "Bytes of session JSON held.",
    },
    StatDecl {
        key: "entries",
        read: Read::Table(|t| t.entries),
        export: gauge("entries"),
        help: "Entries in memory, expired ones not yet purged included.",
    },
    StatDecl {
        key: "purged",
        read: Read::Local(|c| &c.purged),
        export: counter("purged_total"),
        help: "Expired sessions and old tombstones purged from memory.",
    },
    StatDecl {
        key: "rejectedTooLarge",
        read: Read::Local(|c| &c.too_large),
        export: counter("rejected_too_large_total"),
        help: "Writes refused for exceeding maxSessionBytes.",
    },
    StatDecl {
        key: "localTouches",
        read: Read::Local(|c| &c.local_touches),
        export: counter("local_touches_total"),
        help: "Touches kept on this node, not replicated (touchAfter).",
    },
    StatDecl {
        key: "network",
        read: Read::Node(|s| Some(Reading::State(s.network))),
        export: Export::States { name: "network", states: &["up", "off", "failed", "closed"] },
        help: "1 for the node's network state: up, off (not networked), failed (serving alone) or closed.",
    },
    StatDecl {
        key: "networkError",
        read: Read::Node(|s| s.network_error.map(|e| Reading::Text(e.to_owned()))),
        export: Export::No,
        help: "Why the network could not start, when network is failed.",
    },
    StatDecl {
        key: "members",
        read: Read::Node(|s| Some(Reading::Count(s.members as u64))),
        export: Export::No,
        help: "Reachable members (alive or suspect), this node included.",
    },
    StatDecl {
        key: "ready",
        read: Read::Node(|s| Some(Reading::Flag(s.ready))),
        export: gauge("ready"),
        help: "1 once the node has joined and received the cluster's state.",
    },
    StatDecl {
        key: "snapshotsWritten",
        read: Read::Persist(|p| count(&p.snapshots)),
        export: counter("snapshots_written_total"),
        help: "Snapshots written to disk (persist).",
    },
    StatDecl {
        key: "snapshotFailures",
        read: Read::Persist(|p| count(&p.failures)),
        export: counter("snapshot_failures_total"),
        help: "Snapshots that could not be written; the previous one stayed.",
    },
    StatDecl {
        key: "lastSnapshotAt",
        read: Read::Persist(|p| count(&p.last_at)),
        export: Export::Series { name: "last_snapshot_timestamp_seconds", kind: Kind::Gauge, scale: 0.001 },
        help: "When the last snapshot written began (epoch); 0 before the first.",
    },
    StatDecl {
        key: "lastSnapshotMs",
        read: Read::Persist(|p| Reading::Number((p.last_us.load(Ordering::Relaxed) as f64 / 100.0).round() / 10.0)),
        export: Export::Series { name: "last_snapshot_duration_seconds", kind: Kind::Gauge, scale: 0.001 },
        help: "How long the last snapshot took to write, fsyncs included.",
    },
    StatDecl {
        key: "lastSnapshotBytes",
        read: Read::Persist(|p| count(&p.last_bytes)),
        export: gauge("last_snapshot_bytes"),
        help: "Size of the last snapshot file written.",
    },
    StatDecl {
        key: "lastSnapshotSessions",
        read: Read::Persist(|p| count(&p.last_sessions)),
        export: gauge("last_snapshot_sessions"),
        help: "Live sessions in the last snapshot written.",
    },
    StatDecl {
        key: "snapshotsRejected",
        read: Read::Persist(|p| count(&p.rejected)),
        export: counter("snapshots_rejected_total"),
        help: "Snapshot files not loaded at start (bad, foreign or unreadable), set aside.",
    },
    StatDecl {
        key: "snapshotLoadedSessions",
        read: Read::Persist(|p| count(&p.loaded_sessions)),
        export: gauge("snapshot_loaded_sessions"),
        help: "Live sessions loaded from the snapshot at start.",
    },
    StatDecl {
        key: "datagramsSent",
        read: Read::NetCounter(|n| n.datagrams_sent),
        export: counter("datagrams_sent_total"),
        help: "UDP datagrams sent.",
    },
    StatDecl {
        key: "writeBatches",
        read: Read::NetCounter(|n| n.write_batches),
        export: counter("write_batches_total"),
        help: "Batches of local writes handed to the network thread.",
    },
    StatDecl {
        key: "directBatches",
        read: Read::NetCounter(|n| n.direct_batches),
        export: counter("direct_write_batches_total"),
        help: "Batches of local writes the JS thread sent itself, without waking the network thread.",
    },
    StatDecl {
        key: "bytesSent",
        read: Read::NetCounter(|n| n.bytes_sent),
        export: counter("sent_bytes_total"),
        help: "UDP bytes sent.",
    },
    StatDecl {
        key: "datagramsReceived",
        read: Read::NetCounter(|n| n.datagrams_received),
        export: counter("datagrams_received_total"),
        help: "UDP datagrams received.",
    },
    StatDecl {
        key: "bytesReceived",
        read: Read::NetCounter(|n| n.bytes_received),
        export: counter("received_bytes_total"),
        help: "UDP bytes received.",
    },
    StatDecl {
        key: "retransmissions",
        read: Read::NetCounter(|n| n.retransmissions),
        export: counter("retransmissions_total"),
        help: "Datagrams sent again in answer to NAKs.",
    },
    StatDecl {
        key: "naksSent",
        read: Read::NetCounter(|n| n.naks_sent),
        export: counter("naks_sent_total"),
        help: "Negative acknowledgements sent.",
    },
    StatDecl {
        key: "naksReceived",
        read: Read::NetCounter(|n| n.naks_received),
        export: counter("naks_received_total"),
        help: "Negative acknowledgements received.",
    },
    StatDecl {
        key: "acksSent",
        read: Read::NetCounter(|n| n.acks_sent),
        export: counter("acks_sent_total"),
        help: "Cumulative acknowledgements sent to senders.",
    },
    StatDecl {
        key: "acksReceived",
        read: Read::NetCounter(|n| n.acks_received),
        export: counter("acks_received_total"),
        help: "Cumulative acknowledgements received from members.",
    },
    StatDecl {
        key: "ackTimeouts",
        read: Read::NetCounter(|n| n.ack_timeouts),
        export: counter("ack_timeouts_total"),
        help: "waitForAck writes called back at ackTimeout.",
    },
    StatDecl {
        key: "duplicates",
        read: Read::NetCounter(|n| n.duplicates),
        export: counter("duplicate_datagrams_total"),
        help: "Datagrams received more than once.",
    },
    StatDecl {
        key: "ownLoopback",
        read: Read::NetCounter(|n| n.own_loopback),
        export: Export::No,
        help: "This node's own multicast datagrams looped back to it (a diagnostic of the doctor).",
    },
    StatDecl {
        key: "stateTransfers",
        read: Read::NetCounter(|n| n.state_transfers),
        export: counter("state_transfers_total"),
        help: "Full state transfers received.",
    },
    StatDecl {
        key: "antiEntropySyncs",
        read: Read::NetCounter(|n| n.anti_entropy_syncs),
        export: counter("anti_entropy_syncs_total"),
        help: "Anti-entropy syncs completed.",
    },
    StatDecl {
        key: "syncEntriesReceived",
        read: Read::NetCounter(|n| n.sync_entries_received),
        export: counter("sync_entries_received_total"),
        help: "Entries received by anti-entropy syncs.",
    },
    StatDecl {
        key: "missQueries",
        read: Read::NetCounter(|n| n.miss_queries),
        export: counter("miss_queries_total"),
        help: "Gets that found nothing here and asked the alive members.",
    },
    StatDecl {
        key: "missesRecovered",
        read: Read::NetCounter(|n| n.misses_recovered),
        export: counter("misses_recovered_total"),
        help: "Asked gets answered with a session another member held.",
    },
    StatDecl {
        key: "missesNotFound",
        read: Read::NetCounter(|n| n.misses_not_found),
        export: counter("misses_not_found_total"),
        help: "Asked gets every asked member answered without a session.",
    },
    StatDecl {
        key: "missTimeouts",
        read: Read::NetCounter(|n| n.miss_timeouts),
        export: counter("miss_timeouts_total"),
        help: "Asked gets that reached missTimeout before every answer.",
    },
    StatDecl {
        key: "missesRateLimited",
        read: Read::NetCounter(|n| n.misses_rate_limited),
        export: counter("misses_rate_limited_total"),
        help: "Gets that found nothing here and did not ask: rate limit.",
    },
    StatDecl {
        key: "replicationLagMs",
        read: Read::Net(|n| Reading::Number((n.replication_lag_ms * 10.0).round() / 10.0)),
        export: Export::Series { name: "replication_lag_seconds", kind: Kind::Gauge, scale: 0.001 },
        help: "Average age of remote writes on arrival.",
    },
    StatDecl {
        key: "missingDatagrams",
        read: Read::Buffer(|b| b.missing_datagrams),
        export: gauge("missing_datagrams"),
        help: "Datagrams known to be missing and being asked for.",
    },
    StatDecl {
        key: "retransmitBufferBytes",
        read: Read::Buffer(|b| b.retransmit_buffer_bytes),
        export: gauge("retransmit_buffer_bytes"),
        help: "Bytes kept for retransmission.",
    },
    StatDecl {
        key: "reassemblyBytes",
        read: Read::Buffer(|b| b.reassembly_bytes),
        export: gauge("reassembly_bytes"),
        help: "Bytes held in partial fragmented messages.",
    },
    StatDecl {
        key: "dropped",
        read: Read::Net(|n| Reading::ByKey(n.dropped.clone())),
        export: Export::ByKey { name: "dropped_total", label: "reason" },
        help: "Input dropped, by reason.",
    },
];

fn count(counter: &AtomicU64) -> Reading {
    Reading::Count(counter.load(Ordering::Relaxed))
}

/// What the figures are read from, gathered once per `stats()` or `metrics()`.
pub struct Sources<'a> {
    pub table: TableCounts,
    pub counters: &'a Counters,
    /// `"up"`, `"off"`, `"failed"` or `"closed"`.
    pub network: &'static str,
    pub network_error: Option<&'a str>,
    /// With `persist`: the snapshots' figures.
    pub persist: Option<&'a PersistStats>,
    /// Reachable members, this node included.
    pub members: usize,
    pub ready: bool,
    /// While networked: the node's counters and buffers.
    pub net: Option<Net>,
}

/// The node's figures, copied at one moment.
pub struct Net {
    pub counters: NetCounters,
    pub buffers: Buffers,
}

/// The figures present at one moment, in the order of `STATS`.
pub struct Snapshot(Vec<(&'static StatDecl, Reading)>);

impl Snapshot {
    pub fn take(sources: &Sources) -> Snapshot {
        let load = |counter: &AtomicU64| Reading::Count(counter.load(Ordering::Relaxed));
        let read = |stat: &StatDecl| match stat.read {
            Read::Table(get) => Some(Reading::Count(get(&sources.table) as u64)),
            Read::Local(get) => Some(load(get(sources.counters))),
            Read::Node(get) => get(sources),
            Read::NetCounter(get) => sources.net.as_ref().map(|net| Reading::Count(get(&net.counters))),
            Read::Net(get) => sources.net.as_ref().map(|net| get(&net.counters)),
            Read::Buffer(get) => sources.net.as_ref().map(|net| Reading::Count(get(&net.buffers))),
            Read::Persist(get) => sources.persist.map(get),
        };
        Snapshot(STATS.iter().filter_map(|stat| Some((stat, read(stat)?))).collect())
    }

    /// The figures present, each with its declaration.
    pub fn iter(&self) -> impl Iterator<Item = &(&'static StatDecl, Reading)> {
        self.0.iter()
    }

    /// `stats()`.
    pub fn to_json(&self) -> Value {
        Value::Object(self.0.iter().map(|(stat, reading)| (stat.key.to_owned(), reading.to_json())).collect())
    }

    /// A snapshot of the figures given (engine tests).
    #[cfg(test)]
    pub fn of(figures: Vec<(&str, Reading)>) -> Snapshot {
        Snapshot(figures.into_iter().map(|(key, reading)| (stat(key).expect("a declared figure"), reading)).collect())
    }
}

/// The declaration of a figure, by its key in `stats()`.
pub fn stat(key: &str) -> Option<&'static StatDecl> {
    STATS.iter().find(|s| s.key == key)
}

/// The declarations, for the tests of index.d.ts and docs/operations.md (lib.rs exposes them to JS).
pub fn declarations() -> Value {
    let entries = STATS.iter().map(|stat| {
        let networked = matches!(stat.read, Read::NetCounter(_) | Read::Net(_) | Read::Buffer(_));
        let mut entry = Map::new();
        entry.insert("key".into(), json!(stat.key));
        entry.insert("networked".into(), json!(networked));
        entry.insert("persisted".into(), json!(matches!(stat.read, Read::Persist(_))));
        entry.insert("help".into(), json!(stat.help));
        let metric = match stat.export {
            Export::No => None,
            Export::Series { name, kind, scale } => Some((name, kind, json!({ "scale": scale }))),
            Export::States { name, states } => Some((name, Kind::Gauge, json!({ "label": "state", "values": states }))),
            Export::ByKey { name, label } => Some((name, Kind::Counter, json!({ "label": label }))),
        };
        if let Some((name, kind, mut metric)) = metric {
            metric["name"] = json!(format!("{}{name}", crate::metrics::PREFIX));
            metric["type"] = json!(kind.name());
            entry.insert("metric".into(), metric);
        }
        Value::Object(entry)
    });
    Value::Array(entries.collect())
}

#[cfg(test)]
mod tests;
