//! The parsers of the options of `Kind::Custom` (declared in options.rs).

use super::*;

pub(super) fn family_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

pub(super) fn parse_family(c: &mut Config, value: &Value) -> Result<(), Invalid> {
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

pub(super) fn parse_group(c: &mut Config, value: &Value) -> Result<(), Invalid> {
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

pub(super) fn address<A: std::str::FromStr>(value: &Value, expecting: &str) -> Result<A, Invalid> {
    value.as_str().and_then(|s| s.parse().ok()).ok_or_else(|| expected(expecting, value))
}

/// A positive, finite number of seconds, in whole milliseconds (at least 1).
pub(super) fn seconds_to_ms(value: &Value, expecting: &str) -> Result<u64, Invalid> {
    value
        .as_f64()
        .filter(|s| s.is_finite() && *s > 0.0 && *s * 1000.0 < u64::MAX as f64)
        .map(secs_to_ms)
        .ok_or_else(|| expected(expecting, value))
}

pub(super) fn secs_to_ms(secs: f64) -> u64 {
    (secs * 1000.0).round().max(1.0) as u64
}

pub(super) fn parse_secrets(c: &mut Config, value: &Value) -> Result<(), Invalid> {
    c.secrets = match value {
        Value::Array(ring) if !ring.is_empty() => ring.iter().map(secret).collect::<Result<_, _>>()?,
        Value::Array(_) => return Err(expected("a non-empty array of keys", value)),
        single => vec![secret(single)?],
    };
    Ok(())
}

pub(super) fn secret(value: &Value) -> Result<Secret, Invalid> {
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

pub(super) fn parse_persist(c: &mut Config, value: &Value) -> Result<(), Invalid> {
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

pub(super) fn parse_peers(c: &mut Config, value: &Value) -> Result<(), Invalid> {
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
