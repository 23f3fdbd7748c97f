use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::*;
use crate::engine::Engine;
use crate::metrics::{CLOCK_OFFSETS, MEMBERS, PREFIX};
use crate::options::Config;

#[test]
fn keys_and_metric_names_are_unique_and_follow_the_conventions() {
    let keys: HashSet<_> = STATS.iter().map(|s| s.key).collect();
    assert_eq!(keys.len(), STATS.len(), "a key declared twice");
    let mut names = vec![MEMBERS.name, CLOCK_OFFSETS.name];
    for stat in STATS {
        let (name, kind) = match stat.export {
            Export::No => continue,
            Export::Series { name, kind, .. } => (name, kind),
            Export::States { name, .. } => (name, Kind::Gauge),
            Export::ByKey { name, .. } => (name, Kind::Counter),
        };
        assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}: _total for counters only");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
        assert!(!stat.help.is_empty() && stat.help.ends_with('.'), "{}: help", stat.key);
        names.push(name);
    }
    assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len(), "a metric name declared twice");
}

/// Every declared figure is in `stats()` of a networked engine (the buffers' figures included,
/// which are read by key), as the type its export needs, and in `metrics()`; nothing else is.
#[test]
fn a_networked_engine_has_every_figure_and_exports_them() {
    let port = 20_000 + (std::process::id() as u16 % 20_000) + 5;
    let dir = std::env::temp_dir().join(format!("esm-stats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let persist = crate::persist::PersistConfig { path: dir.join("s.snap"), interval_ms: 60_000 };
    let config = Config {
        ipv4: Some(Ipv4Addr::LOCALHOST),
        multicast_ttl: 0,
        multicast_port: port,
        cluster: format!("stats-{}", std::process::id()),
        persist: Some(persist),
        ..Config::default()
    };
    let engine = Engine::start(config, crate::events::discard()).unwrap();
    let stats = engine.stats();
    let keys: Vec<&str> = stats.as_object().unwrap().keys().map(String::as_str).collect();
    let mut declared: Vec<&str> = STATS.iter().map(|s| s.key).filter(|k| *k != "networkError").collect();
    declared.sort_unstable();
    assert_eq!(keys, declared, "{stats}");
    let metrics = engine.metrics();
    for stat in STATS.iter().filter(|s| s.key != "networkError") {
        let value = &stats[stat.key];
        let name = match stat.export {
            Export::No => continue,
            Export::Series { name, .. } => {
                assert!(value.is_number() || value.is_boolean(), "{}: {value}", stat.key);
                name
            }
            Export::States { name, states } => {
                assert!(states.contains(&value.as_str().unwrap()), "{}: {value}", stat.key);
                name
            }
            Export::ByKey { name, .. } => {
                assert!(value.is_object(), "{}: {value}", stat.key);
                name
            }
        };
        let family = format!("# HELP {PREFIX}{name} {}\n# TYPE {PREFIX}{name} ", stat.help);
        assert!(metrics.contains(&family), "{name}:\n{metrics}");
    }
    engine.close();
    let closed = engine.stats();
    assert_eq!(closed["network"], "closed");
    let mut networked = STATS.iter().filter(|s| matches!(s.read, Read::NetCounter(_) | Read::Net(_) | Read::Buffer(_)));
    assert!(networked.clone().count() > 20 && networked.all(|s| closed.get(s.key).is_none()), "{closed}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failed_network_is_explained() {
    let config = Config { ipv4: Some(Ipv4Addr::new(203, 0, 113, 77)), ..Config::default() };
    let engine = Engine::start(config, crate::events::discard()).unwrap();
    let stats = engine.stats();
    assert_eq!(stats["network"], "failed");
    assert!(stats["networkError"].as_str().is_some_and(|e| e.contains("203.0.113.77")), "{stats}");
    assert!(stats.get("datagramsSent").is_none(), "{stats}");
}
