//! `store.metrics()`: the `stats()` figures in the Prometheus text exposition format (0.0.4),
//! named after Prometheus conventions: one prefix, base units, `_total` for counters. The figures
//! and how each is exported are declared in stats.rs; the families from `members()` here.

use std::fmt::Write;

use serde_json::{json, Value};

use crate::stats::{Export, Kind, Reading, Snapshot};

pub const PREFIX: &str = "session_multicast_";

/// A family made from `members()`: both gauges.
pub struct MemberFamily {
    /// After the prefix.
    pub name: &'static str,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

pub const MEMBERS: MemberFamily = MemberFamily {
    name: "members",
    labels: &["state"],
    help: "Cluster members known to this node (itself included), by state.",
};

pub const CLOCK_OFFSETS: MemberFamily = MemberFamily {
    name: "member_clock_offset_seconds",
    labels: &["node", "address"],
    help: "A member's wall clock minus this node's, estimated from its heartbeats.",
};

fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    let _ = writeln!(out, "# HELP {PREFIX}{name} {help}\n# TYPE {PREFIX}{name} {}", kind.name());
}

/// Label values escaped as the format requires.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Renders the figures of `stats` (see stats.rs) and `members` (the `members()` array).
pub fn render(stats: &Snapshot, members: &[Value]) -> String {
    let mut out = String::new();
    for (stat, reading) in stats.iter() {
        match (stat.export, reading) {
            (Export::No, _) => {}
            (Export::Series { name, kind, scale }, reading) => {
                if let Some(value) = reading.number() {
                    family(&mut out, name, kind, stat.help);
                    let _ = writeln!(out, "{PREFIX}{name} {}", value * scale);
                }
            }
            (Export::States { name, states }, Reading::State(current)) => {
                family(&mut out, name, Kind::Gauge, stat.help);
                for state in states {
                    let _ = writeln!(out, "{PREFIX}{name}{{state=\"{state}\"}} {}", u8::from(state == current));
                }
            }
            (Export::ByKey { name, label: key }, Reading::ByKey(counts)) => {
                family(&mut out, name, Kind::Counter, stat.help);
                for (value, count) in counts {
                    let _ = writeln!(out, "{PREFIX}{name}{{{key}=\"{}\"}} {}", label(value), *count as f64);
                }
            }
            // Not a state or an object: a mistake in STATS, which the tests of stats.rs catch.
            (Export::States { .. } | Export::ByKey { .. }, _) => {}
        }
    }
    family(&mut out, MEMBERS.name, Kind::Gauge, MEMBERS.help);
    for state in ["alive", "suspect", "dead", "left"] {
        let count = members.iter().filter(|m| m["state"] == state).count();
        let _ = writeln!(out, "{PREFIX}{}{{state=\"{state}\"}} {count}", MEMBERS.name);
    }
    // Reachable members only: a dead member's last offset would linger as if it were current.
    let offsets: Vec<(&Value, f64)> = members
        .iter()
        .filter(|m| m["state"] == "alive" || m["state"] == "suspect")
        .filter_map(|m| Some((m, m["clockOffsetMs"].as_f64()?)))
        .collect();
    if !offsets.is_empty() {
        family(&mut out, CLOCK_OFFSETS.name, Kind::Gauge, CLOCK_OFFSETS.help);
        for (m, ms) in offsets {
            let (node, address) = (m["id"].as_str().unwrap_or_default(), m["address"].as_str().unwrap_or_default());
            let _ = writeln!(
                out,
                "{PREFIX}{}{{node=\"{}\",address=\"{}\"}} {}",
                CLOCK_OFFSETS.name,
                label(node),
                label(address),
                ms / 1000.0
            );
        }
    }
    out
}

/// The families made from `members()`, for the tests of docs/operations.md (lib.rs exposes them to JS).
pub fn declarations() -> Value {
    let families = [MEMBERS, CLOCK_OFFSETS]
        .iter()
        .map(|f| json!({ "name": format!("{PREFIX}{}", f.name), "type": "gauge", "labels": f.labels, "help": f.help }));
    Value::Array(families.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_with_help_type_and_base_units() {
        let stats = Snapshot::of(vec![
            ("sessions", Reading::Count(3)),
            ("ready", Reading::Flag(true)),
            ("datagramsSent", Reading::Count(10)),
            ("replicationLagMs", Reading::Number(250.0)),
            ("network", Reading::State("failed")),
            ("dropped", Reading::ByKey([("authFailed", 2), ("we\"ird", 1)].into())),
        ]);
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
        assert!(
            text.contains(&format!(r#"{series}{{node="00000000000000a1",address="10.0.0.2"}} 3600.001"#)),
            "{text}"
        );
        assert!(text.contains("{node=\"00000000000000a2\",address=\"10.0.0.3\"} -0.25\n"));
        assert_eq!(text.matches("member_clock_offset_seconds{").count(), 2, "reachable members whose offset is known");
        assert!(text.contains(
            "session_multicast_network{state=\"failed\"} 1\nsession_multicast_network{state=\"closed\"} 0\n"
        ));
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
