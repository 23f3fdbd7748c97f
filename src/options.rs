//! Store options: parsing, validation and defaults (DESIGN §1).
//!
//! The JS layer hands over the user's options as JSON (Buffers as `{"base64": …}`); every error
//! names the option and what was expected, and becomes a `TypeError` in JS.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use serde_json::{json, Map, Value};

pub const DEFAULT_GROUP_V4: Ipv4Addr = Ipv4Addr::new(228, 0, 0, 5);
/// Transient (flag 1), site-local (scope 5) IPv6 multicast group.
pub const DEFAULT_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0, 5);
pub const KEY_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Passphrase(String),
    Key([u8; KEY_BYTES]),
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub host: String,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub family: Family,
    /// Multicast group; `None` = unicast `peers` only.
    pub multicast: Option<IpAddr>,
    pub multicast_port: u16,
    /// Interface address to send, join and announce; `None` = first non-internal address.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub multicast_ttl: u32,
    /// `Some(ms)` when `useSessionTTL` is on.
    pub session_ttl_ms: Option<u64>,
    pub session_ttl_secs: f64,
    /// `ttl` in ms: the lifetime of a session whose cookie has no expiry; `None` = one day.
    /// (A `ttl` function is evaluated in JS and arrives as the write's expiry.)
    pub ttl_ms: Option<u64>,
    /// `disableTouch`: `touch` stores nothing (applied in JS).
    pub disable_touch: bool,
    /// `touchAfter` in ms: a touch moving the replicated expiry forward by less is kept local.
    pub touch_after_ms: u64,
    /// `waitForAck`: a write's callback waits for the members' acks (see ack_wait.rs).
    pub wait_for_ack: bool,
    /// `ackTimeout` in ms: how long a write waits for them at most.
    pub ack_timeout_ms: u64,
    pub graceful_shutdown: bool,
    /// Key ring: the first seals, all open. Empty = unauthenticated cluster.
    pub secrets: Vec<Secret>,
    pub cluster: String,
    pub peers: Vec<Peer>,
    pub max_session_bytes: usize,
    pub heartbeat_interval_ms: u64,
    pub failure_timeout_ms: u64,
    /// `maxClockSkew`: a member's clock further than this from ours is warned about; 0 = never.
    pub max_clock_skew_ms: u64,
    /// `missTimeout`: how long a `get` of a sid unknown here waits for the live members' answers
    /// (see miss.rs); 0 = it does not ask.
    pub miss_timeout_ms: u64,
    /// Not a user option: the doctor runs the engine as an observer that listens and probes
    /// without joining the cluster.
    pub observer: bool,
    /// Not user options: knobs for engine tests.
    pub hooks: TestHooks,
}

/// Knobs that let engine tests reach the repair paths; never set from JS.
#[derive(Clone, Debug, PartialEq)]
pub struct TestHooks {
    /// Fraction of received datagrams dropped on purpose.
    pub inbound_loss: f64,
    /// Datagrams kept for retransmission (a small buffer forces anti-entropy repairs).
    pub retransmit_datagrams: usize,
    /// Drops every `Data` datagram received: the writes of other nodes do not arrive (until an
    /// anti-entropy sync), so a `get` here has to ask for them (miss.rs).
    pub drop_inbound_data: bool,
}

impl Default for TestHooks {
    fn default() -> Self {
        TestHooks { inbound_loss: 0.0, retransmit_datagrams: 65_536, drop_inbound_data: false }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            family: Family::V4,
            multicast: Some(IpAddr::V4(DEFAULT_GROUP_V4)),
            multicast_port: 4000,
            ipv4: None,
            ipv6: None,
            multicast_ttl: 1,
            session_ttl_ms: None,
            session_ttl_secs: 5000.0,
            ttl_ms: None,
            disable_touch: false,
            touch_after_ms: 0,
            wait_for_ack: false,
            ack_timeout_ms: 300,
            graceful_shutdown: true,
            secrets: Vec::new(),
            cluster: "default".into(),
            peers: Vec::new(),
            max_session_bytes: 1 << 20,
            heartbeat_interval_ms: 500,
            failure_timeout_ms: 3000,
            max_clock_skew_ms: 1000,
            miss_timeout_ms: crate::miss::DEFAULT_TIMEOUT_MS,
            observer: false,
            hooks: TestHooks::default(),
        }
    }
}

/// An invalid option: its name and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub option: String,
    pub message: String,
}

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "express-session-multicast: option \"{}\" {}", self.option, self.message)
    }
}

impl std::error::Error for OptionError {}

fn invalid(option: &str, expected: &str, got: &Value) -> OptionError {
    OptionError { option: option.into(), message: format!("must be {expected} (got {got})") }
}

const KNOWN: &[&str] = &[
    "use",
    "multicast",
    "multicastPort",
    "ipv4",
    "ipv6",
    "multicastTTL",
    "useSessionTTL",
    "sessionTTL",
    "ttl",
    "disableTouch",
    "touchAfter",
    "waitForAck",
    "ackTimeout",
    "gracefullShutdown",
    "gracefulShutdown",
    "secret",
    "cluster",
    "peers",
    "maxSessionBytes",
    "heartbeatInterval",
    "failureTimeout",
    "maxClockSkew",
    "missTimeout",
];

fn integer(name: &str, value: &Value, min: u64, max: u64) -> Result<u64, OptionError> {
    value
        .as_u64()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| invalid(name, &format!("an integer from {min} to {max}"), value))
}

/// A positive, finite number of seconds, in whole milliseconds (at least 1).
fn seconds_to_ms(name: &str, value: &Value, expected: &str) -> Result<u64, OptionError> {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0 && *s * 1000.0 < u64::MAX as f64)
        .map(secs_to_ms)
        .ok_or_else(|| invalid(name, expected, value))
}

fn secs_to_ms(secs: f64) -> u64 {
    (secs * 1000.0).round().max(1.0) as u64
}

fn boolean(name: &str, value: &Value) -> Result<bool, OptionError> {
    value.as_bool().ok_or_else(|| invalid(name, "true or false", value))
}

fn string<'a>(name: &str, value: &'a Value, expected: &str) -> Result<&'a str, OptionError> {
    value.as_str().ok_or_else(|| invalid(name, expected, value))
}

fn secret(value: &Value) -> Result<Secret, OptionError> {
    const EXPECTED: &str = "a non-empty passphrase, a 32-byte Buffer, or an array of them";
    match value {
        Value::String(s) if !s.is_empty() => Ok(Secret::Passphrase(s.clone())),
        Value::Object(o) => {
            let bytes = o
                .get("base64")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .ok_or_else(|| invalid("secret", EXPECTED, value))?;
            let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| OptionError {
                option: "secret".into(),
                message: format!("Buffer keys must be exactly {KEY_BYTES} bytes (got {} bytes)", bytes.len()),
            })?;
            Ok(Secret::Key(key))
        }
        _ => Err(invalid("secret", EXPECTED, value)),
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `"host:port"` (IPv6 literals in brackets: `"[fd00::1]:4000"`).
pub fn parse_peer(entry: &str) -> Option<Peer> {
    let (host, port) = entry.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let valid_host = !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'));
    valid_host.then(|| Peer { host: host.to_owned(), port })
}

impl Config {
    /// Validates the user's options (a JSON object) and fills in the defaults.
    pub fn from_json(options: &Value) -> Result<Config, OptionError> {
        let empty = Map::new();
        let map = match options {
            Value::Object(map) => map,
            Value::Null => &empty,
            other => return Err(invalid("options", "an object", other)),
        };
        if let Some(unknown) = map.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(OptionError {
                option: unknown.clone(),
                message: format!("is not an option of this store (known options: {})", KNOWN.join(", ")),
            });
        }
        let mut c = Config::default();
        let get = |name: &str| map.get(name).filter(|v| !v.is_null());

        if let Some(v) = get("use") {
            c.family = match v.as_str() {
                Some("v4") => Family::V4,
                Some("v6") => Family::V6,
                _ => return Err(invalid("use", "\"v4\" or \"v6\"", v)),
            };
        }
        if c.family == Family::V6 {
            c.multicast = Some(IpAddr::V6(DEFAULT_GROUP_V6));
        }
        if let Some(v) = get("multicast") {
            let expected = match c.family {
                Family::V4 => "an IPv4 multicast address (224.0.0.0/4) or false",
                Family::V6 => "an IPv6 multicast address (ff00::/8) or false",
            };
            c.multicast = match v {
                Value::Bool(false) => None,
                Value::String(s) => match (c.family, s.parse::<IpAddr>()) {
                    (Family::V4, Ok(ip @ IpAddr::V4(a))) if a.is_multicast() => Some(ip),
                    (Family::V6, Ok(ip @ IpAddr::V6(a))) if a.is_multicast() => Some(ip),
                    _ => return Err(invalid("multicast", expected, v)),
                },
                _ => return Err(invalid("multicast", expected, v)),
            };
        }
        if let Some(v) = get("multicastPort") {
            c.multicast_port = integer("multicastPort", v, 1, 65535)? as u16;
        }
        if let Some(v) = get("ipv4") {
            let s = string("ipv4", v, "an IPv4 address string")?;
            c.ipv4 = Some(s.parse().map_err(|_| invalid("ipv4", "an IPv4 address string", v))?);
        }
        if let Some(v) = get("ipv6") {
            let s = string("ipv6", v, "an IPv6 address string")?;
            c.ipv6 = Some(s.parse().map_err(|_| invalid("ipv6", "an IPv6 address string", v))?);
        }
        if let Some(v) = get("multicastTTL") {
            c.multicast_ttl = integer("multicastTTL", v, 0, 255)? as u32;
        }
        if let Some(v) = get("sessionTTL") {
            seconds_to_ms("sessionTTL", v, "a positive number of seconds")?;
            c.session_ttl_secs = v.as_f64().unwrap_or_default();
        }
        if let Some(v) = get("ttl") {
            c.ttl_ms = Some(seconds_to_ms("ttl", v, "a positive number of seconds, or a function returning one")?);
        }
        if let Some(v) = get("disableTouch") {
            c.disable_touch = boolean("disableTouch", v)?;
        }
        if let Some(v) = get("touchAfter") {
            c.touch_after_ms = match v.as_f64() {
                Some(0.0) => 0,
                _ => seconds_to_ms("touchAfter", v, "a number of seconds, 0 or more")?,
            };
        }
        if let Some(v) = get("waitForAck") {
            c.wait_for_ack = boolean("waitForAck", v)?;
        }
        if let Some(v) = get("ackTimeout") {
            c.ack_timeout_ms = integer("ackTimeout", v, 1, 60_000)?;
        }
        if let Some(v) = get("useSessionTTL") {
            if boolean("useSessionTTL", v)? {
                c.session_ttl_ms = Some(secs_to_ms(c.session_ttl_secs));
            }
        }
        let graceful = [get("gracefullShutdown"), get("gracefulShutdown")];
        let [legacy, alias] = [("gracefullShutdown", graceful[0]), ("gracefulShutdown", graceful[1])]
            .map(|(name, v)| v.map(|v| boolean(name, v)).transpose());
        match (legacy?, alias?) {
            (Some(a), Some(b)) if a != b => {
                return Err(OptionError {
                    option: "gracefulShutdown".into(),
                    message: "is an alias of \"gracefullShutdown\"; they were given different values".into(),
                })
            }
            (Some(value), _) | (None, Some(value)) => c.graceful_shutdown = value,
            (None, None) => {}
        }
        if let Some(v) = get("secret") {
            c.secrets = match v {
                Value::Array(ring) if !ring.is_empty() => ring.iter().map(secret).collect::<Result<_, _>>()?,
                Value::Array(_) => return Err(invalid("secret", "a non-empty array of keys", v)),
                single => vec![secret(single)?],
            };
        }
        if let Some(v) = get("cluster") {
            let name = string("cluster", v, "a non-empty string of at most 64 bytes")?;
            if name.is_empty() || name.len() > 64 {
                return Err(invalid("cluster", "a non-empty string of at most 64 bytes", v));
            }
            c.cluster = name.to_owned();
        }
        if let Some(v) = get("peers") {
            let expected = "an array of \"host:port\" strings";
            let list = v.as_array().ok_or_else(|| invalid("peers", expected, v))?;
            c.peers = list
                .iter()
                .map(|p| p.as_str().and_then(parse_peer).ok_or_else(|| invalid("peers", expected, p)))
                .collect::<Result<_, _>>()?;
        }
        if let Some(v) = get("maxSessionBytes") {
            // A session must fit one fragmented message (65,535 datagrams).
            c.max_session_bytes = integer("maxSessionBytes", v, 1, 1 << 26)? as usize;
        }
        if let Some(v) = get("heartbeatInterval") {
            c.heartbeat_interval_ms = integer("heartbeatInterval", v, 10, 60_000)?;
        }
        if let Some(v) = get("failureTimeout") {
            c.failure_timeout_ms = integer("failureTimeout", v, 20, 3_600_000)?;
        }
        if let Some(v) = get("maxClockSkew") {
            c.max_clock_skew_ms = integer("maxClockSkew", v, 0, 86_400_000)?;
        }
        if let Some(v) = get("missTimeout") {
            c.miss_timeout_ms = integer("missTimeout", v, 0, crate::miss::MAX_TIMEOUT_MS)?;
        }
        if c.failure_timeout_ms < 2 * c.heartbeat_interval_ms {
            return Err(OptionError {
                option: "failureTimeout".into(),
                message: format!(
                    "must be at least twice heartbeatInterval ({} ms) (got {} ms)",
                    c.heartbeat_interval_ms, c.failure_timeout_ms
                ),
            });
        }
        Ok(c)
    }

    /// The normalized options as the user sees them (`store.options`); secrets are not shown.
    pub fn to_json(&self) -> Value {
        json!({
            "use": match self.family { Family::V4 => "v4", Family::V6 => "v6" },
            "multicast": self.multicast.map_or(Value::Bool(false), |ip| Value::String(ip.to_string())),
            "multicastPort": self.multicast_port,
            "ipv4": self.ipv4.map(|ip| ip.to_string()),
            "ipv6": self.ipv6.map(|ip| ip.to_string()),
            "multicastTTL": self.multicast_ttl,
            "useSessionTTL": self.session_ttl_ms.is_some(),
            "sessionTTL": self.session_ttl_secs,
            "ttl": self.ttl_ms.unwrap_or(crate::table::DEFAULT_LIFETIME_MS) as f64 / 1000.0,
            "disableTouch": self.disable_touch,
            "touchAfter": self.touch_after_ms as f64 / 1000.0,
            "waitForAck": self.wait_for_ack,
            "ackTimeout": self.ack_timeout_ms,
            "gracefullShutdown": self.graceful_shutdown,
            "secret": if self.secrets.is_empty() { Value::Null } else { json!(format!("<{} key(s)>", self.secrets.len())) },
            "cluster": self.cluster,
            "peers": self.peers.iter().map(Peer::to_string).collect::<Vec<_>>(),
            "maxSessionBytes": self.max_session_bytes,
            "heartbeatInterval": self.heartbeat_interval_ms,
            "failureTimeout": self.failure_timeout_ms,
            "maxClockSkew": self.max_clock_skew_ms,
            "missTimeout": self.miss_timeout_ms,
        })
    }
}

#[cfg(test)]
mod tests {
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
        ];
        for (options, name) in cases {
            let e = err(options.clone());
            assert_eq!(e.option, name, "{options}");
            assert!(e.to_string().contains(&format!("\"{name}\"")), "{e}");
        }
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
        assert_eq!(Config::default().miss_timeout_ms, crate::miss::DEFAULT_TIMEOUT_MS);
        assert_eq!(Config::from_json(&json!({ "touchAfter": 0 })).unwrap().touch_after_ms, 0);
        assert_eq!(c.session_ttl_ms, Some(50));
        assert!(!c.graceful_shutdown);
        assert_eq!(c.secrets, vec![Secret::Passphrase("pass".into()), Secret::Key([7; 32])]);
        assert_eq!(c.peers[1], Peer { host: "fd00::1".into(), port: 5 });
        assert_eq!(c.to_json()["peers"], json!(["a.svc:4000", "[fd00::1]:5"]));
        assert_eq!(Config::from_json(&json!({ "multicast": false })).unwrap().multicast, None);
        assert_eq!(c.to_json()["secret"], "<2 key(s)>");
    }
}
