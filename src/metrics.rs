//! `store.metrics()`: the `stats()` figures in the Prometheus text exposition format (0.0.4),
//! named after Prometheus conventions: one prefix, base units, `_total` for counters.

use std::fmt::Write;

use serde_json::Value;

const PREFIX: &str = "session_multicast_";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Gauge,
    Counter,
}

/// (stats key, metric name, type, help, factor to the base unit)
const SIMPLE: &[(&str, &str, Kind, &str, f64)] = &[
    ("sessions", "sessions", Kind::Gauge, "Live sessions held by this node.", 1.0),
    ("tombstones", "tombstones", Kind::Gauge, "Tombstones of destroyed sessions still kept.", 1.0),
    ("sessionBytes", "session_bytes", Kind::Gauge, "Bytes of session JSON held.", 1.0),
    ("entries", "entries", Kind::Gauge, "Entries in memory, expired ones not yet purged included.", 1.0),
    ("ready", "ready", Kind::Gauge, "1 once the node has joined and received the cluster's state.", 1.0),
    ("purged", "purged_total", Kind::Counter, "Expired sessions and old tombstones purged from memory.", 1.0),
    ("rejectedTooLarge", "rejected_too_large_total", Kind::Counter, "Writes refused for exceeding maxSessionBytes.", 1.0),
    ("localTouches", "local_touches_total", Kind::Counter, "Touches kept on this node, not replicated (touchAfter).", 1.0),
    ("datagramsSent", "datagrams_sent_total", Kind::Counter, "UDP datagrams sent.", 1.0),
    ("writeBatches", "write_batches_total", Kind::Counter, "Batches of local writes sent.", 1.0),
    ("directBatches", "direct_write_batches_total", Kind::Counter, "Batches of local writes sent from the JS thread.", 1.0),
    ("bytesSent", "sent_bytes_total", Kind::Counter, "UDP bytes sent.", 1.0),
    ("datagramsReceived", "datagrams_received_total", Kind::Counter, "UDP datagrams received.", 1.0),
    ("bytesReceived", "received_bytes_total", Kind::Counter, "UDP bytes received.", 1.0),
    ("retransmissions", "retransmissions_total", Kind::Counter, "Datagrams sent again in answer to NAKs.", 1.0),
    ("naksSent", "naks_sent_total", Kind::Counter, "Negative acknowledgements sent.", 1.0),
    ("naksReceived", "naks_received_total", Kind::Counter, "Negative acknowledgements received.", 1.0),
    ("acksSent", "acks_sent_total", Kind::Counter, "Cumulative acknowledgements sent to senders.", 1.0),
    ("acksReceived", "acks_received_total", Kind::Counter, "Cumulative acknowledgements received from members.", 1.0),
    ("ackTimeouts", "ack_timeouts_total", Kind::Counter, "waitForAck writes called back at ackTimeout.", 1.0),
    ("duplicates", "duplicate_datagrams_total", Kind::Counter, "Datagrams received more than once.", 1.0),
    ("stateTransfers", "state_transfers_total", Kind::Counter, "Full state transfers received.", 1.0),
    ("antiEntropySyncs", "anti_entropy_syncs_total", Kind::Counter, "Anti-entropy syncs completed.", 1.0),
    ("syncEntriesReceived", "sync_entries_received_total", Kind::Counter, "Entries received by anti-entropy syncs.", 1.0),
    ("missQueries", "miss_queries_total", Kind::Counter, "Gets that found nothing here and asked the alive members.", 1.0),
    ("missesRecovered", "misses_recovered_total", Kind::Counter, "Asked gets answered with a session another member held.", 1.0),
    ("missesNotFound", "misses_not_found_total", Kind::Counter, "Asked gets every asked member answered without a session.", 1.0),
    ("missTimeouts", "miss_timeouts_total", Kind::Counter, "Asked gets that reached missTimeout before every answer.", 1.0),
    ("missesRateLimited", "misses_rate_limited_total", Kind::Counter, "Gets that found nothing here and did not ask: rate limit.", 1.0),
    ("missingDatagrams", "missing_datagrams", Kind::Gauge, "Datagrams known to be missing and being asked for.", 1.0),
    ("retransmitBufferBytes", "retransmit_buffer_bytes", Kind::Gauge, "Bytes kept for retransmission.", 1.0),
    ("reassemblyBytes", "reassembly_bytes", Kind::Gauge, "Bytes held in partial fragmented messages.", 1.0),
    ("replicationLagMs", "replication_lag_seconds", Kind::Gauge, "Average age of remote writes on arrival.", 0.001),
];

fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    let kind = if kind == Kind::Counter { "counter" } else { "gauge" };
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {kind}");
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64().or_else(|| value.as_bool().map(|b| if b { 1.0 } else { 0.0 }))
}

/// Label values escaped as the format requires.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders `stats` (the `stats()` object) and `members` (the `members()` array).
pub fn render(stats: &Value, members: &[Value]) -> String {
    let mut out = String::new();
    for (key, name, kind, help, factor) in SIMPLE {
        if let Some(value) = stats.get(*key).and_then(number) {
            family(&mut out, name, *kind, help);
            let _ = writeln!(out, "{PREFIX}{name} {}", value * factor);
        }
    }
    if let Some(current) = stats.get("network").and_then(Value::as_str) {
        family(&mut out, "network", Kind::Gauge, "1 for the node's network state: up, off (not networked), failed (serving alone) or closed.");
        for state in ["up", "off", "failed", "closed"] {
            let _ = writeln!(out, "{PREFIX}network{{state=\"{state}\"}} {}", u8::from(state == current));
        }
    }
    family(&mut out, "members", Kind::Gauge, "Cluster members known to this node (itself included), by state.");
    for state in ["alive", "suspect", "dead", "left"] {
        let count = members.iter().filter(|m| m["state"] == state).count();
        let _ = writeln!(out, "{PREFIX}members{{state=\"{state}\"}} {count}");
    }
    // Reachable members only: a dead member's last offset would linger as if it were current.
    let offsets: Vec<(&Value, f64)> = members
        .iter()
        .filter(|m| m["state"] == "alive" || m["state"] == "suspect")
        .filter_map(|m| Some((m, m["clockOffsetMs"].as_f64()?)))
        .collect();
    if !offsets.is_empty() {
        let help = "A member's wall clock minus this node's, estimated from its heartbeats.";
        family(&mut out, "member_clock_offset_seconds", Kind::Gauge, help);
        for (m, ms) in offsets {
            let (node, address) = (m["id"].as_str().unwrap_or_default(), m["address"].as_str().unwrap_or_default());
            let _ = writeln!(
                out,
                "{PREFIX}member_clock_offset_seconds{{node=\"{}\",address=\"{}\"}} {}",
                label(node),
                label(address),
                ms / 1000.0
            );
        }
    }
    if let Some(dropped) = stats.get("dropped").and_then(Value::as_object) {
        family(&mut out, "dropped_total", Kind::Counter, "Input dropped, by reason.");
        for (reason, count) in dropped {
            let _ = writeln!(out, "{PREFIX}dropped_total{{reason=\"{}\"}} {}", label(reason), number(count).unwrap_or(0.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_families_with_help_type_and_base_units() {
        let stats = json!({
            "sessions": 3, "ready": true, "datagramsSent": 10, "replicationLagMs": 250, "network": "failed",
            "dropped": { "authFailed": 2, "we\"ird": 1 },
        });
        let members = [
            json!({ "state": "alive", "self": true, "clockOffsetMs": null }),
            json!({ "state": "dead", "id": "00000000000000d1", "clockOffsetMs": 5 }),
            json!({ "state": "alive", "id": "00000000000000a1", "address": "10.0.0.2", "clockOffsetMs": 3_600_001 }),
            json!({ "state": "suspect", "id": "00000000000000a2", "address": "10.0.0.3", "clockOffsetMs": -250 }),
            json!({ "state": "alive", "id": "00000000000000a3", "address": "10.0.0.4", "clockOffsetMs": null }),
        ];
        let text = render(&stats, &members);
        assert!(text.contains("# TYPE session_multicast_sessions gauge\nsession_multicast_sessions 3\n"));
        assert!(text.contains("# TYPE session_multicast_datagrams_sent_total counter\n"));
        assert!(text.contains("session_multicast_ready 1\n"));
        assert!(text.contains("session_multicast_replication_lag_seconds 0.25\n"));
        assert!(text.contains("session_multicast_members{state=\"dead\"} 1\n"));
        assert!(text.contains("# TYPE session_multicast_member_clock_offset_seconds gauge\n"));
        let series = "session_multicast_member_clock_offset_seconds";
        assert!(text.contains(&format!(r#"{series}{{node="00000000000000a1",address="10.0.0.2"}} 3600.001"#)), "{text}");
        assert!(text.contains("{node=\"00000000000000a2\",address=\"10.0.0.3\"} -0.25\n"));
        assert_eq!(text.matches("member_clock_offset_seconds{").count(), 2, "reachable members whose offset is known");
        assert!(text.contains("session_multicast_network{state=\"failed\"} 1\nsession_multicast_network{state=\"closed\"} 0\n"));
        assert!(text.contains("session_multicast_dropped_total{reason=\"authFailed\"} 2\n"));
        assert!(text.contains("reason=\"we\\\"ird\""));
        assert!(!text.contains("tombstones"), "absent figures are not invented");
        let alone = render(&stats, &[json!({ "state": "alive", "self": true, "clockOffsetMs": null })]);
        assert!(!alone.contains("clock_offset"), "no family without a series");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            assert!(text.contains(&format!("# TYPE {name} ")), "no TYPE for {name}");
        }
    }
}
