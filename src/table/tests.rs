use indexmap::IndexMap;
use serde_json::value::RawValue;

use super::entry::splice_leading_cookie;
use super::*;

const NOW: u64 = 1_700_000_000_000;

fn v(hlc: u64, node: u64) -> Version {
    Version { hlc, node }
}

fn set(sid: &str, doc: &str, expires_at: u64, version: Version) -> Op {
    Op::Set { sid: sid.into(), doc: doc.into(), expires_at, version }
}

fn touch(sid: &str, cookie: &str, expires_at: u64, version: Version) -> Op {
    Op::Touch { sid: sid.into(), cookie: Some(cookie.into()), expires_at, version }
}

fn destroy(sid: &str, version: Version) -> Op {
    Op::Destroy { sid: sid.into(), version }
}

fn doc(table: &Table, sid: &str) -> Option<String> {
    table.get(sid, NOW).map(|d| d.to_string())
}

#[test]
fn set_get_and_newer_set_wins() {
    let t = Table::new();
    assert!(t.apply(&set("a", r#"{"n":1}"#, NOW + 10, v(1, 1))));
    assert!(t.apply(&set("a", r#"{"n":2}"#, NOW + 10, v(2, 1))));
    assert!(!t.apply(&set("a", r#"{"n":0}"#, NOW + 10, v(1, 9))), "older write must lose");
    assert_eq!(doc(&t, "a").as_deref(), Some(r#"{"n":2}"#));
    assert!(!t.apply(&set("a", r#"{"n":2}"#, NOW + 10, v(2, 1))), "duplicate is a no-op");
}

/// Unknown: neither a session nor a tombstone, so possibly a session not arrived yet; any
/// state this node knows of is not (see miss.rs).
#[test]
fn lookup_tells_an_unknown_sid_from_one_known_and_not_live() {
    let t = Table::new();
    assert_eq!(t.lookup("a", NOW), Lookup::Unknown);
    t.apply(&touch("a", "{}", NOW + 10, v(2, 1)));
    assert_eq!(t.lookup("a", NOW), Lookup::Unknown, "only a touch: its set was written elsewhere");
    t.apply(&set("a", r#"{"n":1}"#, NOW + 10, v(1, 1)));
    assert_eq!(t.lookup("a", NOW), Lookup::Live(r#"{"n":1,"cookie":{}}"#.into()));
    assert_eq!(t.lookup("a", NOW + 10), Lookup::Gone, "expired");
    t.apply(&destroy("b", v(3, 1)));
    assert_eq!(t.lookup("b", NOW), Lookup::Gone, "destroyed");
    t.apply(&set("c", "{}", NOW + 10, v(4, 1)));
    t.apply(&touch("c", "{}", NOW + 10, v(6, 1)));
    t.apply(&Op::Clear { version: v(5, 1) });
    assert_eq!(t.lookup("c", NOW), Lookup::Unknown, "the set voided by a clear, a touch after it: as if only touched");
}

#[test]
fn expiry_is_millisecond_precise() {
    let t = Table::new();
    t.apply(&set("a", "{}", NOW + 5, v(1, 1)));
    assert!(t.get("a", NOW + 4).is_some());
    assert!(t.get("a", NOW + 5).is_none(), "expires_at <= now is expired");
    assert_eq!(t.length(NOW + 4), 1);
    assert_eq!(t.length(NOW + 5), 0);
    assert_eq!(t.all_json(NOW + 5), "{}");
}

#[test]
fn touch_replaces_cookie_and_expiry_but_not_data() {
    let t = Table::new();
    t.apply(&set("a", r#"{"cookie":{"maxAge":1},"user":"ann"}"#, NOW + 10, v(1, 1)));
    assert!(t.apply(&touch("a", r#"{"maxAge":2}"#, NOW + 1000, v(2, 1))));
    assert_eq!(doc(&t, "a").as_deref(), Some(r#"{"cookie":{"maxAge":2},"user":"ann"}"#));
    assert!(t.is_visible("a", NOW + 500));
}

#[test]
fn older_set_arriving_after_touch_keeps_touched_cookie() {
    let t = Table::new();
    t.apply(&touch("a", r#"{"maxAge":2}"#, NOW + 1000, v(3, 2)));
    assert!(doc(&t, "a").is_none(), "a touch alone creates no visible session");
    t.apply(&set("a", r#"{"cookie":{"maxAge":1},"user":"bob"}"#, NOW + 10, v(2, 1)));
    assert_eq!(doc(&t, "a").as_deref(), Some(r#"{"cookie":{"maxAge":2},"user":"bob"}"#));
    assert_eq!(t.entry("a").unwrap().expires_at, NOW + 1000);
}

#[test]
fn newer_set_arriving_after_touch_wins_entirely() {
    let t = Table::new();
    t.apply(&set("a", r#"{"cookie":{"maxAge":1},"n":1}"#, NOW + 10, v(1, 1)));
    t.apply(&touch("a", r#"{"maxAge":2}"#, NOW + 1000, v(2, 1)));
    t.apply(&set("a", r#"{"cookie":{"maxAge":3},"n":2}"#, NOW + 20, v(3, 2)));
    assert_eq!(doc(&t, "a").as_deref(), Some(r#"{"cookie":{"maxAge":3},"n":2}"#));
    assert_eq!(t.entry("a").unwrap().cookie, None);
}

#[test]
fn destroy_leaves_a_tombstone_that_beats_older_writes() {
    let t = Table::new();
    t.apply(&set("a", "{}", NOW + 10_000, v(1, 1)));
    assert!(t.apply(&destroy("a", v(2, 1))));
    assert!(!t.apply(&set("a", r#"{"late":true}"#, NOW + 10_000, v(1, 0))));
    t.apply(&set("a", r#"{"late":true}"#, NOW + 10_000, v(1, 5)));
    assert!(doc(&t, "a").is_none());
    assert_eq!(t.counts(NOW).tombstones, 1);
    // A write after the destroy is a new session.
    t.apply(&set("a", r#"{"again":1}"#, NOW + 10_000, v(3, 1)));
    assert_eq!(doc(&t, "a").as_deref(), Some(r#"{"again":1}"#));
}

#[test]
fn tombstone_outlives_session_expiry_then_is_swept() {
    let t = Table::new();
    let destroyed_at = v(NOW << 16, 1);
    t.apply(&set("a", "{}", NOW + 7_200_000, v(1, 1)));
    t.apply(&destroy("a", destroyed_at));
    assert_eq!(t.sweep(NOW + 7_199_999), 0);
    assert_eq!(t.sweep(NOW + 7_200_000), 1);
    t.apply(&destroy("b", destroyed_at));
    assert_eq!(t.sweep(NOW + TOMBSTONE_MIN_RETENTION_MS - 1), 0);
    assert_eq!(t.sweep(NOW + TOMBSTONE_MIN_RETENTION_MS), 1);
}

#[test]
fn sweep_purges_expired_sessions_only() {
    let t = Table::new();
    t.apply(&set("old", "{}", NOW, v(1, 1)));
    t.apply(&set("new", "{}", NOW + 1, v(1, 1)));
    assert_eq!(t.sweep(NOW), 1);
    assert!(t.entry("old").is_none());
    assert!(t.is_visible("new", NOW));
}

#[test]
fn clear_voids_older_writes_in_any_order() {
    let t = Table::new();
    t.apply(&set("a", "{}", NOW + 10, v(1, 1)));
    t.apply(&set("b", "{}", NOW + 10, v(5, 1)));
    assert!(t.apply(&Op::Clear { version: v(3, 2) }));
    assert!(doc(&t, "a").is_none());
    assert!(doc(&t, "b").is_some(), "writes newer than the clear survive");
    assert!(!t.apply(&set("c", "{}", NOW + 10, v(2, 1))), "late write older than the clear");
    assert_eq!(t.length(NOW), 1);
    assert!(!t.apply(&Op::Clear { version: v(2, 2) }), "an older clear changes nothing");
}

#[test]
fn splice_keeps_member_order_and_rejects_non_objects() {
    assert_eq!(
        splice_cookie(r#"{"a":1,"cookie":null,"b":[1,2]}"#, r#"{"x":1}"#).as_deref(),
        Some(r#"{"a":1,"cookie":{"x":1},"b":[1,2]}"#)
    );
    assert_eq!(splice_cookie(r#"{"a":1}"#, "true").as_deref(), Some(r#"{"a":1,"cookie":true}"#));
    assert_eq!(splice_cookie("[1]", "{}"), None);
    assert_eq!(splice_cookie("{}", "{bad"), None);
}

/// The fast path (cookie first, as express-session writes it) gives exactly what the full
/// parse gives, braces, quotes and escapes in strings included; anything else falls back.
#[test]
fn splice_of_a_leading_cookie_matches_the_full_parse() {
    let full = |doc: &str, cookie: &str| {
        let mut members: IndexMap<String, &RawValue> = serde_json::from_str(doc).unwrap();
        members.insert("cookie".to_owned(), serde_json::from_str(cookie).unwrap());
        serde_json::to_string(&members).unwrap()
    };
    let cookie = r#"{"originalMaxAge":60000,"expires":"2030-01-01T00:00:00.000Z","path":"/"}"#;
    for doc in [
        r#"{"cookie":{"path":"/"},"user":"a"}"#,
        r#"{"cookie":{"path":"/{\"}[","nested":{"a":[1,{"b":"}"}]}},"user":{"x":"\\"}}"#,
        r#"{"cookie":{}}"#,
        r#"{"cookie":{"a":"\\\""},"b":"}"}"#,
    ] {
        assert_eq!(splice_leading_cookie(doc, cookie).as_deref(), Some(full(doc, cookie).as_str()), "{doc}");
        assert_eq!(splice_cookie(doc, cookie), Some(full(doc, cookie)));
    }
    // Not first, not an object, unterminated, trailing garbage: the full parse decides.
    for doc in [r#"{"a":1,"cookie":{}}"#, r#"{"cookie":null,"a":1}"#, r#"{"cookie":{"a":"}"#, r#"{"cookie":{}x"#] {
        assert_eq!(splice_leading_cookie(doc, cookie), None, "{doc}");
    }
    assert_eq!(splice_cookie(r#"{"cookie":null,"a":1}"#, cookie), Some(full(r#"{"cookie":null,"a":1}"#, cookie)));
}

/// touchAfter: a small step is kept local (seen by get, not by the digest), a large step, a
/// step back or a near expiry is not, and a newer replicated cookie voids the local one.
#[test]
fn small_touches_extend_the_local_expiry_only() {
    let t = Table::new();
    t.apply(&set("a", r#"{"cookie":{}}"#, NOW + 1000, v(1, 1)));
    let digest = t.digest(NOW, 4);
    assert!(t.extend_locally("a", NOW + 1050, NOW, 100));
    assert!(t.get("a", NOW + 1020).is_some(), "the local expiry is enforced");
    assert_eq!(t.digest(NOW, 4), digest, "nothing replicated changed");
    assert_eq!(t.entry("a").unwrap().newest_version(), v(1, 1));
    assert!(!t.extend_locally("a", NOW + 1100, NOW, 100), "a step of threshold_ms is replicated");
    assert!(!t.extend_locally("a", NOW + 900, NOW, 100), "a step back is replicated");
    assert!(!t.extend_locally("a", NOW + 1050, NOW + 950, 100), "an expiry this close is replicated");
    assert!(!t.extend_locally("b", NOW + 50, NOW, 100), "unknown sid");
    t.apply(&touch("a", "{}", NOW + 500, v(2, 1)));
    assert!(t.get("a", NOW + 600).is_none(), "a newer replicated cookie voids the local expiry");
    t.apply(&destroy("a", v(3, 1)));
    assert!(!t.extend_locally("a", NOW + 550, NOW, 100), "a tombstone is never extended");
}

#[test]
fn expiry_rules() {
    assert_eq!(expiry(Some(NOW + 5), NOW, None, None), NOW + 5);
    assert_eq!(expiry(None, NOW, None, None), NOW + DEFAULT_LIFETIME_MS);
    assert_eq!(expiry(None, NOW, Some(50), None), NOW + 50);
    assert_eq!(expiry(Some(NOW + 10), NOW, Some(50), None), NOW + 10);
    assert_eq!(expiry(Some(NOW + 90), NOW, Some(50), None), NOW + 50);
    // ttl replaces the one-day default, never a cookie's expiry; useSessionTTL caps it.
    assert_eq!(expiry(None, NOW, None, Some(70)), NOW + 70);
    assert_eq!(expiry(Some(NOW + 5), NOW, None, Some(70)), NOW + 5);
    assert_eq!(expiry(None, NOW, Some(50), Some(70)), NOW + 50);
    assert_eq!(expiry(None, NOW, Some(90), Some(70)), NOW + 70);
}

/// Random writes to a few sids from a few nodes, applied in two random orders with
/// duplicates: both replicas must end identical (commutative, idempotent merge).
mod convergence {
    use super::*;
    use proptest::prelude::*;

    fn op_strategy() -> impl Strategy<Value = Op> {
        let sid = prop::sample::select(vec!["a", "b", "c"]);
        let version = (1u64..40, 1u64..4).prop_map(|(hlc, node)| Version { hlc, node });
        let expires = NOW..NOW + 100;
        prop_oneof![
            (sid.clone(), 0u32..5, expires.clone(), version.clone())
                .prop_map(|(sid, n, exp, v)| { set(sid, &format!(r#"{{"cookie":{{"c":{n}}},"n":{n}}}"#), exp, v) }),
            (sid.clone(), 0u32..5, expires, version.clone()).prop_map(|(sid, n, exp, v)| touch(
                sid,
                &format!(r#"{{"c":{n}}}"#),
                exp,
                v
            )),
            (sid, version.clone()).prop_map(|(sid, v)| destroy(sid, v)),
            version.prop_map(|version| Op::Clear { version }),
        ]
    }

    fn unique(mut op: Op, index: u64) -> Op {
        let (Op::Set { version, .. } | Op::Touch { version, .. } | Op::Destroy { version, .. } | Op::Clear { version }) =
            &mut op;
        version.hlc = version.hlc * 64 + index;
        op
    }

    /// Everything a replica holds, registers and versions included (what digests compare):
    /// not only what `get` shows. But a tombstone's retention, which depends on the writes each
    /// node saw before or after the destroy (it only ever grows: see `Entry::merge`).
    fn snapshot(t: &Table) -> (Vec<Option<Entry>>, Vec<u64>, Version) {
        let replicated = |e: Entry| {
            if matches!(e.data, Data::Deleted) && e.cookie_version == Version::ZERO {
                Entry { expires_at: 0, ..e }
            } else {
                e
            }
        };
        (["a", "b", "c"].iter().map(|sid| t.entry(sid).map(replicated)).collect(), t.digest(0, 4), t.clear_mark())
    }

    proptest! {
        #[test]
        fn any_order_converges(
            ops in prop::collection::vec(op_strategy(), 1..40),
            order in Just(()).prop_perturb(|_, mut rng| rng.random::<u64>()),
        ) {
            // Every write has its own version, as clock ticks guarantee.
            let ops: Vec<Op> = ops.into_iter().enumerate().map(|(i, op)| unique(op, i as u64)).collect();
            let forward = Table::new();
            for op in &ops { forward.apply(op); }
            let mut shuffled: Vec<&Op> = ops.iter().chain(ops.iter().take(5)).collect();
            let mut seed = order;
            for i in (1..shuffled.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (seed >> 33) as usize % (i + 1));
            }
            let other = Table::new();
            for op in shuffled { other.apply(op); }
            prop_assert_eq!(snapshot(&forward), snapshot(&other));
        }
    }
}

#[test]
fn replicas_merging_entries_agree_and_digests_match() {
    let a = Table::new();
    let b = Table::new();
    a.apply(&set("x", r#"{"cookie":{},"n":1}"#, NOW + 10, v(1, 1)));
    a.apply(&touch("x", r#"{"t":1}"#, NOW + 20, v(3, 1)));
    b.apply(&set("x", r#"{"cookie":{},"n":2}"#, NOW + 10, v(2, 2)));
    b.apply(&destroy("y", v(NOW << 16, 2)));
    assert_ne!(a.digest(NOW, 16), b.digest(NOW, 16));
    let mut from_a = Vec::new();
    a.snapshot(NOW, None, 1, |batch| from_a.extend(batch));
    let mut from_b = Vec::new();
    b.snapshot(NOW, None, 1 << 20, |batch| from_b.extend(batch));
    from_a.iter().for_each(|(sid, e)| {
        b.merge(sid, e);
    });
    from_b.iter().for_each(|(sid, e)| {
        a.merge(sid, e);
    });
    assert_eq!(a.digest(NOW, 16), b.digest(NOW, 16));
    assert_eq!(doc(&a, "x").as_deref(), Some(r#"{"cookie":{"t":1},"n":2}"#));
    assert_eq!(doc(&b, "x"), doc(&a, "x"));
    assert_eq!(a.counts(NOW).tombstones, 1);
}

#[test]
fn snapshot_filters_buckets() {
    let t = Table::new();
    for i in 0..50 {
        t.apply(&set(&format!("s{i}"), "{}", NOW + 10, v(1, 1)));
    }
    let mut wanted = vec![false; 4];
    wanted[2] = true;
    let mut seen = Vec::new();
    t.snapshot(NOW, Some((&wanted, 4)), 1 << 20, |batch| seen.extend(batch));
    assert!(!seen.is_empty() && seen.len() < 50);
    assert!(seen.iter().all(|(sid, _)| bucket_of(sid, 4) == 2));
}

#[test]
fn all_json_escapes_sids() {
    let t = Table::new();
    t.apply(&set("a\"b", r#"{"n":1}"#, NOW + 10, v(1, 1)));
    let all: serde_json::Value = serde_json::from_str(&t.all_json(NOW)).unwrap();
    assert_eq!(all["a\"b"]["n"], 1);
}

/// Resident memory per tombstone: N sessions of express-session's 32-character sids set, then
/// destroyed; RSS after minus RSS before, over N. A measurement, run alone:
/// `cargo test --release --no-default-features tombstone_memory -- --ignored --nocapture`.
#[test]
#[ignore]
fn tombstone_memory() {
    let rss = || {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        statm.split_whitespace().nth(1).and_then(|pages| pages.parse::<usize>().ok()).unwrap_or(0) * 4096
    };
    for n in [100_000usize, 300_000, 1_000_000] {
        let sids: Vec<String> = (0..n).map(|i| format!("{i:0>32}")).collect();
        let t = Table::new();
        let before = rss();
        for (i, sid) in sids.iter().enumerate() {
            let at = (NOW << 16) + 2 * i as u64;
            t.apply(&set(sid, r#"{"cookie":{},"user":"ada"}"#, NOW + 86_400_000, v(at, 1)));
            t.apply(&destroy(sid, v(at + 1, 1)));
        }
        let per = (rss() - before) as f64 / n as f64;
        assert_eq!(t.counts(NOW).tombstones, n);
        println!("{n} tombstones: {per:.0} bytes each (sid: 32)");
    }
}

/// Every entry not purgeable comes out once, tombstones and touched-only entries included.
#[test]
fn export_copies_every_kept_entry_once() {
    let t = Table::new();
    for i in 0..10_000 {
        t.apply(&set(&format!("s{i}"), &format!(r#"{{"n":{i}}}"#), NOW + 10, v(1, 1)));
    }
    t.apply(&destroy("s1", v(NOW << 16, 2)));
    t.apply(&touch("only-touched", "{}", NOW + 10, v(3, 1)));
    t.apply(&set("expired", "{}", NOW - 1, v(1, 1)));
    let mut seen = std::collections::HashMap::new();
    t.export(NOW, |shard| {
        for (sid, e) in shard.iter() {
            assert!(seen.insert(sid.to_owned(), e.clone()).is_none(), "{sid} twice");
        }
        Some(shard)
    });
    assert_eq!(seen.len(), 10_001);
    assert_eq!(seen["s2"], t.entry("s2").unwrap());
    assert_eq!(seen["s1"].data, Data::Deleted);
    assert!(seen.contains_key("only-touched") && !seen.contains_key("expired"));
    let mut shards = 0;
    t.export(NOW, |_| {
        shards += 1;
        None
    });
    assert_eq!(shards, 1, "visit returning None stops the export");
}

/// A restored entry lands as it was, a compact tombstone included, and merges with one held.
#[test]
fn restore_moves_entries_in_and_merges_with_held_ones() {
    let t = Table::new();
    let source = Table::new();
    source.apply(&set("a", r#"{"n":1}"#, NOW + 10, v(5, 1)));
    source.apply(&set("gone", "{}", NOW + 10, v(NOW << 16, 1)));
    source.apply(&destroy("gone", v((NOW << 16) + 1, 1)));
    t.apply(&set("a", r#"{"n":2}"#, NOW + 10, v(6, 2)));
    for sid in ["a", "gone"] {
        t.restore(t.shard_of(sid), [(sid, source.entry(sid).unwrap())]);
    }
    assert_eq!(t.get("a", NOW).as_deref(), Some(r#"{"n":2}"#), "the newer write held stays");
    assert_eq!(t.lookup("gone", NOW), Lookup::Gone);
    assert_eq!(t.entry("gone"), source.entry("gone"));
    assert_eq!((t.counts(NOW).sessions, t.counts(NOW).tombstones), (1, 1));
}

#[test]
fn changes_move_with_writes_and_local_extensions_only() {
    let t = Table::new();
    let before = t.changes();
    t.apply(&set("a", "{}", NOW + 1_000, v(2, 1)));
    let after_set = t.changes();
    assert!(after_set > before);
    t.apply(&set("a", "{}", NOW + 1_000, v(1, 1)));
    assert_eq!(t.changes(), after_set, "a write that lost changes nothing");
    assert!(!t.extend_locally("a", NOW + 2_000, NOW, 100), "a large step is written as usual");
    assert_eq!(t.changes(), after_set);
    assert!(t.extend_locally("a", NOW + 1_050, NOW, 100));
    let after_extension = t.changes();
    assert!(after_extension > after_set, "an expiry kept on this node goes into the next snapshot");
    assert!(t.extend_locally("a", NOW + 1_040, NOW, 100));
    assert_eq!(t.changes(), after_extension, "an extension that extends nothing changes nothing");
    t.sweep(NOW + 20);
    assert_eq!(t.changes(), after_extension, "purges are not snapshotted");
    t.apply(&Op::Clear { version: v(3, 1) });
    assert!(t.changes() > after_extension);
}

/// get and set cost with `SHARDS` shards:
/// `cargo test --release --no-default-features set_get_ns -- --ignored --nocapture`.
#[test]
#[ignore]
fn set_get_ns() {
    let t = Table::new();
    let n = 200_000u64;
    let doc: Arc<str> = "x".repeat(1000).into();
    let sids: Vec<String> = (0..n).map(|i| format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
    let write =
        |sid: &str, hlc: u64| Op::Set { sid: sid.into(), doc: doc.clone(), expires_at: u64::MAX, version: v(hlc, 1) };
    for (i, sid) in sids.iter().enumerate() {
        t.apply(&write(sid, i as u64 + 1));
    }
    for round in 0..3 {
        let start = std::time::Instant::now();
        for (i, sid) in sids.iter().enumerate() {
            t.apply(&write(sid, n * (round + 2) + i as u64));
        }
        let set = start.elapsed().as_nanos() as f64 / n as f64;
        let start = std::time::Instant::now();
        let found = sids.iter().filter(|sid| t.get(sid, 0).is_some()).count();
        let get = start.elapsed().as_nanos() as f64 / n as f64;
        println!("shards {SHARDS}: set {set:.0} ns, get {get:.0} ns ({found})");
    }
}
