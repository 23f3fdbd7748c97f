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

mod parse;

pub use parse::parse_peer;
use parse::*;

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
mod tests;
