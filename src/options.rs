//! Store options: parsing, validation and defaults.
//!
//! Every option is declared once, in `OPTIONS`: its name, how its value is checked and applied,
//! its default, and how `store.options` shows it. The list of known options, the parsing, the
//! defaults (`Config::default`) and `Config::to_json` all come from there; test/options.test.js
//! checks index.d.ts and the README against it.
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

/// The validated options.
/// Its fields are set by the declarations of `OPTIONS`, defaults included.
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
    /// `persist`: where and how often the table is written to disk (see persist/); `None` = never.
    pub persist: Option<crate::persist::PersistConfig>,
}

/// The declared defaults of every option (see `OPTIONS`).
impl Default for Config {
    fn default() -> Self {
        Config::from_json(&Value::Null).expect("the declared defaults are valid")
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

// ---------------------------------------------------------------------------------------------
// The declarations

/// One option of the store: everything about it but its text in index.d.ts and the README (which
/// test/options.test.js checks against these).
pub struct OptionDecl {
    /// Its name in JS.
    pub name: &'static str,
    /// How its value is checked, applied and shown.
    pub kind: Kind,
    /// Its value when it is not given (or given as `null` or `undefined`).
    pub default: Lit,
    /// What it is, in one line.
    pub doc: &'static str,
}

/// How an option's value is checked, applied to the `Config`, and shown in `store.options`.
pub enum Kind {
    /// `true` or `false`.
    Bool { set: fn(&mut Config, bool), get: fn(&Config) -> bool },
    /// An integer from `min` to `max`.
    Integer { min: u64, max: u64, set: fn(&mut Config, u64), get: fn(&Config) -> u64 },
    /// Any other value: `parse` checks and applies it, `show` gives it back as `store.options` shows it.
    Custom { parse: fn(&mut Config, &Value) -> Result<(), Invalid>, show: fn(&Config) -> Value },
    /// Another name of the option named, not shown; given both names, they must agree.
    Alias(&'static str),
    /// Checked and applied by lib/options.js: the engine never sees it.
    Js,
}

/// An option's value when it is not given, as a user would write it.
#[derive(Clone, Copy, Debug)]
pub enum Lit {
    /// None: the option stays unset (see its `Config` field), or lib/options.js decides (`Kind::Js`).
    Unset,
    Bool(bool),
    Int(u64),
    Str(&'static str),
    /// `[]`.
    EmptyList,
}

/// What is wrong with a value, in words that follow the option's name.
#[derive(Debug)]
pub struct Invalid(String);

fn expected(what: impl fmt::Display, got: &Value) -> Invalid {
    Invalid(format!("must be {what} (got {got})"))
}

macro_rules! boolean {
    ($field:ident) => {
        Kind::Bool { set: |c, on| c.$field = on, get: |c| c.$field }
    };
}

macro_rules! integer {
    ($min:expr, $max:expr, $field:ident as $ty:ty) => {
        Kind::Integer { min: $min, max: $max, set: |c, n| c.$field = n as $ty, get: |c| c.$field as u64 }
    };
}

/// Every option, in the order of the docs. `Config::from_json` applies the engine's options in
/// this order, each one given or its default (so `use` comes first: it sets the default group of
/// its family for `multicast`), then the rules between options.
pub static OPTIONS: &[OptionDecl] = &[
    OptionDecl {
        name: "use",
        kind: Kind::Custom { parse: parse_family, show: |c| json!(family_name(c.family)) },
        default: Lit::Str("v4"),
        doc: "IP family of the cluster: \"v4\" or \"v6\".",
    },
    OptionDecl {
        name: "multicast",
        kind: Kind::Custom {
            parse: parse_group,
            show: |c| c.multicast.map_or(Value::Bool(false), |ip| Value::String(ip.to_string())),
        },
        default: Lit::Unset,
        doc: "Multicast group address (228.0.0.5 for v4, ff15::5 for v6), or false: unicast peers only.",
    },
    OptionDecl {
        name: "multicastPort",
        kind: integer!(1, 65535, multicast_port as u16),
        default: Lit::Int(4000),
        doc: "UDP port of the group, and with peers the port the node also listens on for them.",
    },
    OptionDecl {
        name: "ipv4",
        kind: Kind::Custom {
            parse: |c, v| {
                c.ipv4 = Some(address(v, "an IPv4 address string")?);
                Ok(())
            },
            show: |c| json!(c.ipv4.map(|ip| ip.to_string())),
        },
        default: Lit::Unset,
        doc: "Address of the interface to send, join and announce (default: the first non-internal one).",
    },
    OptionDecl {
        name: "ipv6",
        kind: Kind::Custom {
            parse: |c, v| {
                c.ipv6 = Some(address(v, "an IPv6 address string")?);
                Ok(())
            },
            show: |c| json!(c.ipv6.map(|ip| ip.to_string())),
        },
        default: Lit::Unset,
        doc: "The same with use: \"v6\".",
    },
    OptionDecl {
        name: "multicastTTL",
        kind: integer!(0, 255, multicast_ttl as u32),
        default: Lit::Int(1),
        doc: "IP TTL (hop limit) of multicast datagrams; 0 keeps them on this host.",
    },
    OptionDecl {
        name: "useSessionTTL",
        // Some(0) until the rules after the table make it sessionTTL, which is applied after this.
        kind: Kind::Bool { set: |c, on| c.session_ttl_ms = on.then_some(0), get: |c| c.session_ttl_ms.is_some() },
        default: Lit::Bool(false),
        doc: "A session expires sessionTTL seconds after its last set or touch (or its cookie's expiry if earlier).",
    },
    OptionDecl {
        name: "sessionTTL",
        kind: Kind::Custom {
            parse: |c, v| {
                seconds_to_ms(v, "a positive number of seconds")?;
                c.session_ttl_secs = v.as_f64().unwrap_or_default();
                Ok(())
            },
            show: |c| json!(c.session_ttl_secs),
        },
        default: Lit::Int(5000),
        doc: "Seconds, with useSessionTTL.",
    },
    OptionDecl {
        name: "ttl",
        kind: Kind::Custom {
            // A function is lib/options.js's: it calls it at each write, and the engine gets the expiry.
            parse: |c, v| {
                c.ttl_ms = Some(seconds_to_ms(v, "a positive number of seconds, or a function returning one")?);
                Ok(())
            },
            show: |c| json!(c.ttl_ms.unwrap_or(crate::table::DEFAULT_LIFETIME_MS) as f64 / 1000.0),
        },
        default: Lit::Unset,
        doc: "Seconds a session whose cookie has no expiry lives, or a function of the session returning them.",
    },
    OptionDecl {
        name: "disableTouch",
        kind: boolean!(disable_touch),
        default: Lit::Bool(false),
        doc: "touch stores nothing: a session's expiry moves only when it is saved.",
    },
    OptionDecl {
        name: "touchAfter",
        kind: Kind::Custom {
            parse: |c, v| {
                c.touch_after_ms = match v.as_f64() {
                    Some(0.0) => 0,
                    _ => seconds_to_ms(v, "a number of seconds, 0 or more")?,
                };
                Ok(())
            },
            show: |c| json!(c.touch_after_ms as f64 / 1000.0),
        },
        default: Lit::Int(0),
        doc: "Seconds: a touch moving a session's expiry forward by less is kept on this node.",
    },
    OptionDecl {
        name: "waitForAck",
        kind: boolean!(wait_for_ack),
        default: Lit::Bool(false),
        doc: "A write is called back once every other live node has applied it (or at ackTimeout).",
    },
    OptionDecl {
        name: "ackTimeout",
        kind: integer!(1, 60_000, ack_timeout_ms as u64),
        default: Lit::Int(300),
        doc: "Milliseconds a write waits for the acks with waitForAck.",
    },
    OptionDecl {
        name: "serializer",
        kind: Kind::Js,
        default: Lit::Unset,
        doc: "{ stringify, parse } for sessions that hold what JSON cannot (default: JSON).",
    },
    OptionDecl {
        name: "gracefullShutdown",
        kind: boolean!(graceful_shutdown),
        default: Lit::Bool(true),
        doc: "Leave the cluster when the process ends (close() on exit, SIGINT, SIGTERM).",
    },
    OptionDecl {
        name: "gracefulShutdown",
        kind: Kind::Alias("gracefullShutdown"),
        default: Lit::Unset,
        doc: "Alias of gracefullShutdown (the historical spelling).",
    },
    OptionDecl {
        name: "logger",
        kind: Kind::Js,
        default: Lit::Unset,
        doc: "Where the store logs: an object with info, warn and error methods (default: console).",
    },
    OptionDecl {
        name: "secret",
        kind: Kind::Custom {
            parse: parse_secrets,
            show: |c| match c.secrets.len() {
                0 => Value::Null,
                n => json!(format!("<{n} key(s)>")),
            },
        },
        default: Lit::Unset,
        doc: "Cluster key: a passphrase, 32 key bytes, or an array of them (a key ring); never shown.",
    },
    OptionDecl {
        name: "cluster",
        kind: Kind::Custom {
            parse: |c, v| {
                const EXPECTED: &str = "a non-empty string of at most 64 bytes";
                let name =
                    v.as_str().filter(|s| !s.is_empty() && s.len() <= 64).ok_or_else(|| expected(EXPECTED, v))?;
                c.cluster = name.to_owned();
                Ok(())
            },
            show: |c| json!(c.cluster),
        },
        default: Lit::Str("default"),
        doc: "Cluster name: nodes of different names ignore each other.",
    },
    OptionDecl {
        name: "peers",
        kind: Kind::Custom {
            parse: parse_peers,
            show: |c| json!(c.peers.iter().map(Peer::to_string).collect::<Vec<_>>()),
        },
        default: Lit::EmptyList,
        doc: "Unicast peers, \"host:port\", for networks without multicast.",
    },
    OptionDecl {
        name: "maxSessionBytes",
        // A session must fit one fragmented message (65,535 datagrams).
        kind: integer!(1, 1 << 26, max_session_bytes as usize),
        default: Lit::Int(1 << 20),
        doc: "Largest session accepted, in bytes of its JSON.",
    },
    OptionDecl {
        name: "heartbeatInterval",
        kind: integer!(10, 60_000, heartbeat_interval_ms as u64),
        default: Lit::Int(500),
        doc: "Milliseconds between heartbeats.",
    },
    OptionDecl {
        name: "failureTimeout",
        kind: integer!(20, 3_600_000, failure_timeout_ms as u64),
        default: Lit::Int(3000),
        doc: "Milliseconds of silence after which a member is dead; at least twice heartbeatInterval.",
    },
    OptionDecl {
        name: "maxClockSkew",
        kind: integer!(0, 86_400_000, max_clock_skew_ms as u64),
        default: Lit::Int(1000),
        doc: "Milliseconds: a member whose clock is further from this node's is warned about; 0: never.",
    },
    OptionDecl {
        name: "missTimeout",
        kind: integer!(0, crate::core::miss::MAX_TIMEOUT_MS, miss_timeout_ms as u64),
        default: Lit::Int(crate::core::miss::DEFAULT_TIMEOUT_MS),
        doc: "Milliseconds a get of a sid unknown here waits for the live members' answers; 0: it does not ask.",
    },
    OptionDecl {
        name: "persist",
        kind: Kind::Custom {
            parse: parse_persist,
            show: |c| match &c.persist {
                None => Value::Null,
                Some(p) => json!({ "path": p.path.to_string_lossy(), "interval": p.interval_ms as f64 / 1000.0 }),
            },
        },
        default: Lit::Unset,
        doc: "Snapshots of the sessions on disk: a file path, or { path, interval } (seconds, default 60).",
    },
];

/// The declaration of an option, by name.
pub fn option(name: &str) -> Option<&'static OptionDecl> {
    OPTIONS.iter().find(|o| o.name == name)
}

impl OptionDecl {
    /// Whether the engine takes it (the others are lib/options.js's).
    pub fn is_engine(&self) -> bool {
        !matches!(self.kind, Kind::Js)
    }

    /// Checks `value` and applies it to `c`; `given` is every option given.
    fn apply(&self, c: &mut Config, value: &Value, given: &Map<String, Value>) -> Result<(), Invalid> {
        match &self.kind {
            Kind::Bool { set, .. } => set(c, value.as_bool().ok_or_else(|| expected("true or false", value))?),
            Kind::Integer { min, max, set, .. } => set(
                c,
                value
                    .as_u64()
                    .filter(|n| (*min..=*max).contains(n))
                    .ok_or_else(|| expected(format!("an integer from {min} to {max}"), value))?,
            ),
            Kind::Custom { parse, .. } => parse(c, value)?,
            Kind::Alias(of) => {
                let target = option(of).expect("an alias names a declared option");
                let mut alone = c.clone();
                target.apply(&mut alone, value, given)?;
                if given.get(*of).is_some_and(|v| !v.is_null()) && target.show(&alone) != target.show(c) {
                    return Err(Invalid(format!("is an alias of \"{of}\"; they were given different values")));
                }
                *c = alone;
            }
            Kind::Js => {}
        }
        Ok(())
    }

    /// The option as `store.options` shows it; `None` for those it does not show.
    pub fn show(&self, c: &Config) -> Option<Value> {
        match &self.kind {
            Kind::Bool { get, .. } => Some(json!(get(c))),
            Kind::Integer { get, .. } => Some(json!(get(c))),
            Kind::Custom { show, .. } => Some(show(c)),
            Kind::Alias(_) | Kind::Js => None,
        }
    }
}

impl Lit {
    fn to_json(self) -> Option<Value> {
        match self {
            Lit::Unset => None,
            Lit::Bool(b) => Some(json!(b)),
            Lit::Int(n) => Some(json!(n)),
            Lit::Str(s) => Some(json!(s)),
            Lit::EmptyList => Some(json!([])),
        }
    }
}

/// The declarations, for the tests of index.d.ts and the README (lib.rs exposes them to JS).
pub fn declarations() -> Value {
    let defaults = Config::default();
    let entries = OPTIONS.iter().map(|o| {
        let mut entry = json!({ "name": o.name, "doc": o.doc, "engine": o.is_engine(), "shown": false });
        if let Some(shown) = o.show(&defaults) {
            entry["shown"] = json!(true);
            entry["default"] = shown;
        }
        match &o.kind {
            Kind::Bool { .. } => entry["type"] = json!("boolean"),
            Kind::Integer { min, max, .. } => {
                entry["type"] = json!("integer");
                entry["range"] = json!([min, max]);
            }
            Kind::Alias(of) => entry["aliasOf"] = json!(of),
            Kind::Custom { .. } | Kind::Js => {}
        }
        entry
    });
    Value::Array(entries.collect())
}

// ---------------------------------------------------------------------------------------------
// The parsers of the options of `Kind::Custom`

fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

fn parse_family(c: &mut Config, value: &Value) -> Result<(), Invalid> {
    c.family = match value.as_str() {
        Some("v4") => Family::V4,
        Some("v6") => Family::V6,
        _ => return Err(expected("\"v4\" or \"v6\"", value)),
    };
    // The default group of the family; `multicast`, applied next, may replace it.
    c.multicast = Some(match c.family {
        Family::V4 => IpAddr::V4(DEFAULT_GROUP_V4),
        Family::V6 => IpAddr::V6(DEFAULT_GROUP_V6),
    });
    Ok(())
}

fn parse_group(c: &mut Config, value: &Value) -> Result<(), Invalid> {
    let expecting = match c.family {
        Family::V4 => "an IPv4 multicast address (224.0.0.0/4) or false",
        Family::V6 => "an IPv6 multicast address (ff00::/8) or false",
    };
    c.multicast = match value {
        Value::Bool(false) => None,
        Value::String(s) => match (c.family, s.parse::<IpAddr>()) {
            (Family::V4, Ok(ip @ IpAddr::V4(a))) if a.is_multicast() => Some(ip),
            (Family::V6, Ok(ip @ IpAddr::V6(a))) if a.is_multicast() => Some(ip),
            _ => return Err(expected(expecting, value)),
        },
        _ => return Err(expected(expecting, value)),
    };
    Ok(())
}

fn address<A: std::str::FromStr>(value: &Value, expecting: &str) -> Result<A, Invalid> {
    value.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| expected(expecting, value))
}

/// A positive, finite number of seconds, in whole milliseconds (at least 1).
fn seconds_to_ms(value: &Value, expecting: &str) -> Result<u64, Invalid> {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0 && *s * 1000.0 < u64::MAX as f64)
        .map(secs_to_ms)
        .ok_or_else(|| expected(expecting, value))
}

fn secs_to_ms(secs: f64) -> u64 {
    (secs * 1000.0).round().max(1.0) as u64
}

fn parse_secrets(c: &mut Config, value: &Value) -> Result<(), Invalid> {
    c.secrets = match value {
        Value::Array(ring) if !ring.is_empty() => ring.iter().map(secret).collect::<Result<_, _>>()?,
        Value::Array(_) => return Err(expected("a non-empty array of keys", value)),
        single => vec![secret(single)?],
    };
    Ok(())
}

fn secret(value: &Value) -> Result<Secret, Invalid> {
    const EXPECTED: &str = "a non-empty passphrase, a 32-byte Buffer, or an array of them";
    match value {
        Value::String(s) if !s.is_empty() => Ok(Secret::Passphrase(s.clone())),
        Value::Object(o) => {
            let bytes = o
                .get("base64")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .ok_or_else(|| expected(EXPECTED, value))?;
            let key: [u8; KEY_BYTES] = bytes.as_slice().try_into().map_err(|_| {
                Invalid(format!("Buffer keys must be exactly {KEY_BYTES} bytes (got {} bytes)", bytes.len()))
            })?;
            Ok(Secret::Key(key))
        }
        _ => Err(expected(EXPECTED, value)),
    }
}

fn parse_persist(c: &mut Config, value: &Value) -> Result<(), Invalid> {
    const EXPECTED: &str = "a file path, or an object { path, interval } (interval: seconds, 1 or more)";
    let (path, interval) = match value {
        Value::Bool(false) => {
            c.persist = None;
            return Ok(());
        }
        Value::String(path) => (path.as_str(), None),
        Value::Object(o) => {
            if let Some(key) = o.keys().find(|k| !["path", "interval"].contains(&k.as_str())) {
                return Err(Invalid(format!("has no field \"{key}\" (it takes path and interval)")));
            }
            let path = o.get("path").and_then(Value::as_str).ok_or_else(|| expected(EXPECTED, value))?;
            (path, o.get("interval").filter(|v| !v.is_null()))
        }
        _ => return Err(expected(EXPECTED, value)),
    };
    if path.is_empty() || path.contains('\0') {
        return Err(expected("a non-empty file path", &json!(path)));
    }
    let interval_ms = match interval {
        None => crate::persist::DEFAULT_INTERVAL_MS,
        Some(v) => v
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 1.0 && *s <= 31_536_000.0)
            .map(secs_to_ms)
            .ok_or_else(|| Invalid(format!("interval must be a number of seconds from 1 to 31536000 (got {v})")))?,
    };
    let path = std::path::absolute(path).map_err(|e| Invalid(format!("path {path:?} cannot be resolved: {e}")))?;
    c.persist = Some(crate::persist::PersistConfig { path, interval_ms });
    Ok(())
}

fn parse_peers(c: &mut Config, value: &Value) -> Result<(), Invalid> {
    const EXPECTED: &str = "an array of \"host:port\" strings";
    let list = value.as_array().ok_or_else(|| expected(EXPECTED, value))?;
    c.peers = list
        .iter()
        .map(|p| p.as_str().and_then(parse_peer).ok_or_else(|| expected(EXPECTED, p)))
        .collect::<Result<_, _>>()?;
    Ok(())
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

// ---------------------------------------------------------------------------------------------

impl Config {
    /// Every field unset, before the options (their defaults included) are applied.
    fn unset() -> Config {
        Config {
            family: Family::V4,
            multicast: None,
            multicast_port: 0,
            ipv4: None,
            ipv6: None,
            multicast_ttl: 0,
            session_ttl_ms: None,
            session_ttl_secs: 0.0,
            ttl_ms: None,
            disable_touch: false,
            touch_after_ms: 0,
            wait_for_ack: false,
            ack_timeout_ms: 0,
            graceful_shutdown: false,
            secrets: Vec::new(),
            cluster: String::new(),
            peers: Vec::new(),
            max_session_bytes: 0,
            heartbeat_interval_ms: 0,
            failure_timeout_ms: 0,
            max_clock_skew_ms: 0,
            miss_timeout_ms: 0,
            persist: None,
        }
    }

    /// Validates the user's options (a JSON object) and fills in the defaults.
    pub fn from_json(options: &Value) -> Result<Config, OptionError> {
        let empty = Map::new();
        let map = match options {
            Value::Object(map) => map,
            Value::Null => &empty,
            other => {
                return Err(OptionError { option: "options".into(), message: expected("an object", other).0 });
            }
        };
        let engine = || OPTIONS.iter().filter(|o| o.is_engine());
        if let Some(unknown) = map.keys().find(|k| !engine().any(|o| o.name == k.as_str())) {
            let known: Vec<&str> = engine().map(|o| o.name).collect();
            return Err(OptionError {
                option: unknown.clone(),
                message: format!("is not an option of this store (known options: {})", known.join(", ")),
            });
        }
        let mut c = Config::unset();
        for decl in engine() {
            let value = match (map.get(decl.name).filter(|v| !v.is_null()), decl.default.to_json()) {
                (Some(given), _) => given.clone(),
                (None, Some(default)) => default,
                (None, None) => continue,
            };
            decl.apply(&mut c, &value, map)
                .map_err(|Invalid(message)| OptionError { option: decl.name.into(), message })?;
        }

        // The rules between options.
        if c.session_ttl_ms.is_some() {
            c.session_ttl_ms = Some(secs_to_ms(c.session_ttl_secs));
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
        Value::Object(OPTIONS.iter().filter_map(|o| Some((o.name.to_owned(), o.show(self)?))).collect())
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
        let shown: Vec<&str> =
            OPTIONS.iter().filter(|o| o.show(&Config::default()).is_some()).map(|o| o.name).collect();
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
}
