use super::*;

fn err(options: Value) -> OptionError {
    Config::from_json(&options).expect_err("options should be rejected")
}

#[test]
fn defaults() {
    let c = Config::from_json(&json!({})).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.multicast, Some(IpAddr::V4(DEFAULT_GROUP_V4)));
    let v6 = Config::from_json(&json!({ "use": "v6" })).unwrap();
    assert_eq!(v6.multicast, Some(IpAddr::V6(DEFAULT_GROUP_V6)));
}

#[test]
fn every_error_names_its_option() {
    let cases = [
        (json!({ "use": "v5" }), "use"),
        (json!({ "multicast": "10.0.0.1" }), "multicast"),
        (json!({ "use": "v6", "multicast": "228.0.0.5" }), "multicast"),
        (json!({ "multicastPort": 70000 }), "multicastPort"),
        (json!({ "ipv4": "::1" }), "ipv4"),
        (json!({ "ipv6": "1.2.3.4" }), "ipv6"),
        (json!({ "multicastTTL": 256 }), "multicastTTL"),
        (json!({ "useSessionTTL": "yes" }), "useSessionTTL"),
        (json!({ "sessionTTL": 0 }), "sessionTTL"),
        (json!({ "ttl": 0 }), "ttl"),
        (json!({ "ttl": "1h" }), "ttl"),
        (json!({ "disableTouch": 1 }), "disableTouch"),
        (json!({ "touchAfter": -1 }), "touchAfter"),
        (json!({ "waitForAck": 1 }), "waitForAck"),
        (json!({ "ackTimeout": 0 }), "ackTimeout"),
        (json!({ "gracefullShutdown": "no" }), "gracefullShutdown"),
        (json!({ "gracefullShutdown": true, "gracefulShutdown": false }), "gracefulShutdown"),
        (json!({ "secret": "" }), "secret"),
        (json!({ "secret": { "base64": "AAAA" } }), "secret"),
        (json!({ "secret": [] }), "secret"),
        (json!({ "cluster": "" }), "cluster"),
        (json!({ "peers": ["nohost"] }), "peers"),
        (json!({ "peers": ["h:99999"] }), "peers"),
        (json!({ "maxSessionBytes": 1.5 }), "maxSessionBytes"),
        (json!({ "heartbeatInterval": 0 }), "heartbeatInterval"),
        (json!({ "heartbeatInterval": 500, "failureTimeout": 900 }), "failureTimeout"),
        (json!({ "maxClockSkew": -1 }), "maxClockSkew"),
        (json!({ "maxClockSkew": 1.5 }), "maxClockSkew"),
        (json!({ "maxClockSkew": 86_400_001 }), "maxClockSkew"),
        (json!({ "missTimeout": -1 }), "missTimeout"),
        (json!({ "missTimeout": 10_001 }), "missTimeout"),
        (json!({ "missTimeout": "20" }), "missTimeout"),
        (json!({ "multicastTtl": 1 }), "multicastTtl"),
        (json!({ "persist": "" }), "persist"),
        (json!({ "persist": 1 }), "persist"),
        (json!({ "persist": true }), "persist"),
        (json!({ "persist": { "interval": 5 } }), "persist"),
        (json!({ "persist": { "path": "s.snap", "interval": 0.5 } }), "persist"),
        (json!({ "persist": { "path": "s.snap", "interval": "60" } }), "persist"),
        (json!({ "persist": { "path": "s.snap", "every": 60 } }), "persist"),
    ];
    for (options, name) in cases {
        let e = err(options.clone());
        assert_eq!(e.option, name, "{options}");
        assert!(e.to_string().contains(&format!("\"{name}\"")), "{e}");
    }
}

#[test]
fn the_declarations_are_consistent() {
    let names: std::collections::HashSet<_> = OPTIONS.iter().map(|o| o.name).collect();
    assert_eq!(names.len(), OPTIONS.len(), "an option declared twice");
    for o in OPTIONS {
        assert!(!o.doc.is_empty(), "{}: doc", o.name);
        if let Kind::Alias(of) = o.kind {
            assert!(option(of).is_some_and(|t| t.show(&Config::default()).is_some()), "{}: alias of {of}", o.name);
        }
        if !o.is_engine() {
            assert!(matches!(o.default, Lit::Unset), "{}: lib/options.js has its default", o.name);
        }
    }
    // store.options shows every engine option but the aliases, with its default.
    let shown: Vec<&str> = OPTIONS.iter().filter(|o| o.show(&Config::default()).is_some()).map(|o| o.name).collect();
    let defaults = Config::default().to_json();
    let mut keys: Vec<&str> = defaults.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = shown.clone();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(shown.len(), 23);
    // Each declared default, given explicitly, changes nothing.
    for o in OPTIONS.iter().filter(|o| o.is_engine()) {
        if let Some(default) = o.default.to_json() {
            let given = Config::from_json(&json!({ o.name: default })).unwrap();
            assert_eq!(given, Config::default(), "{}", o.name);
        }
    }
}

#[test]
fn an_unknown_option_is_named_with_the_known_ones() {
    let e = err(json!({ "logger": {} }));
    assert_eq!(e.option, "logger", "lib/options.js takes the JS-only options out");
    assert_eq!(
        e.message,
        "is not an option of this store (known options: use, multicast, multicastPort, ipv4, ipv6, multicastTTL, \
         useSessionTTL, sessionTTL, ttl, disableTouch, touchAfter, waitForAck, ackTimeout, gracefullShutdown, \
         gracefulShutdown, secret, cluster, peers, maxSessionBytes, heartbeatInterval, failureTimeout, \
         maxClockSkew, missTimeout, persist)"
    );
}

#[test]
fn errors_give_what_was_expected_and_what_was_given() {
    let message = |options: Value| err(options).to_string();
    assert_eq!(
        message(json!({ "multicastPort": "4000" })),
        "express-session-multicast: option \"multicastPort\" must be an integer from 1 to 65535 (got \"4000\")"
    );
    assert_eq!(
        message(json!({ "waitForAck": 1 })),
        "express-session-multicast: option \"waitForAck\" must be true or false (got 1)"
    );
    assert_eq!(
        message(json!({ "peers": ["a:1", "b"] })),
        "express-session-multicast: option \"peers\" must be an array of \"host:port\" strings (got \"b\")"
    );
    assert!(message(json!({ "secret": { "base64": "AAAA" } }))
        .ends_with("\"secret\" Buffer keys must be exactly 32 bytes (got 3 bytes)"));
    assert!(message(json!({ "gracefullShutdown": true, "gracefulShutdown": false }))
        .ends_with("\"gracefulShutdown\" is an alias of \"gracefullShutdown\"; they were given different values"));
    assert!(!Config::from_json(&json!({ "gracefulShutdown": false })).unwrap().graceful_shutdown);
    assert!(Config::from_json(&json!({ "gracefullShutdown": false, "gracefulShutdown": false })).is_ok());
    assert_eq!(message(json!("x")), "express-session-multicast: option \"options\" must be an object (got \"x\")");
    let v6 = Config::from_json(&json!({ "use": "v6", "multicast": false })).unwrap();
    assert_eq!((v6.family, v6.multicast), (Family::V6, None));
}

#[test]
fn accepts_every_valid_option() {
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let c = Config::from_json(&json!({
        "use": "v4", "multicast": "239.1.2.3", "multicastPort": 4001, "ipv4": "127.0.0.1",
        "multicastTTL": 0, "useSessionTTL": true, "sessionTTL": 0.05, "gracefulShutdown": false,
        "secret": ["pass", { "base64": key }], "cluster": "shop", "peers": ["a.svc:4000", "[fd00::1]:5"],
        "maxSessionBytes": 1000, "heartbeatInterval": 100, "failureTimeout": 600, "missTimeout": 0,
        "ttl": 1.5, "disableTouch": true, "touchAfter": 60, "waitForAck": true, "ackTimeout": 50,
        "maxClockSkew": 250,
    }))
    .unwrap();
    assert_eq!((c.wait_for_ack, c.ack_timeout_ms), (true, 50));
    assert_eq!((c.max_clock_skew_ms, c.to_json()["maxClockSkew"].clone()), (250, json!(250)));
    assert_eq!(Config::from_json(&json!({ "maxClockSkew": 0 })).unwrap().max_clock_skew_ms, 0);
    assert_eq!((c.ttl_ms, c.disable_touch, c.touch_after_ms), (Some(1500), true, 60_000));
    assert_eq!(c.to_json()["ttl"], json!(1.5));
    assert_eq!((c.miss_timeout_ms, &c.to_json()["missTimeout"]), (0, &json!(0)));
    assert_eq!(Config::default().miss_timeout_ms, crate::core::miss::DEFAULT_TIMEOUT_MS);
    assert_eq!(Config::from_json(&json!({ "touchAfter": 0 })).unwrap().touch_after_ms, 0);
    assert_eq!(c.session_ttl_ms, Some(50));
    assert!(!c.graceful_shutdown);
    assert_eq!(c.secrets, vec![Secret::Passphrase("pass".into()), Secret::Key([7; 32])]);
    assert_eq!(c.peers[1], Peer { host: "fd00::1".into(), port: 5 });
    assert_eq!(c.to_json()["peers"], json!(["a.svc:4000", "[fd00::1]:5"]));
    assert_eq!(Config::from_json(&json!({ "multicast": false })).unwrap().multicast, None);
    assert_eq!(c.to_json()["secret"], "<2 key(s)>");
    let persist = |v: Value| Config::from_json(&json!({ "persist": v })).unwrap().persist;
    let cwd = std::env::current_dir().unwrap();
    let p = persist(json!("s.snap")).unwrap();
    assert_eq!((p.path, p.interval_ms), (cwd.join("s.snap"), 60_000));
    let p = persist(json!({ "path": "/var/lib/app/s.snap", "interval": 1.5 })).unwrap();
    assert_eq!((p.path.to_str().unwrap(), p.interval_ms), ("/var/lib/app/s.snap", 1_500));
    assert_eq!(persist(json!(false)), None);
    assert_eq!(Config::default().persist, None);
    let shown = Config::from_json(&json!({ "persist": { "path": "/s.snap", "interval": 5 } })).unwrap().to_json();
    assert_eq!(shown["persist"], json!({ "path": "/s.snap", "interval": 5.0 }));
    assert_eq!(Config::default().to_json()["persist"], Value::Null);
}
