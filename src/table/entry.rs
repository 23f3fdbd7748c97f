//! A sid's entry: its two registers, and how an incoming write merges into them (see table.rs).

use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::value::RawValue;

use super::Fnv;
use crate::clock::Version;

/// One replicated write. Local calls produce these; remote ones arrive in messages.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Set { sid: Arc<str>, doc: Arc<str>, expires_at: u64, version: Version },
    Touch { sid: Arc<str>, cookie: Option<Arc<str>>, expires_at: u64, version: Version },
    Destroy { sid: Arc<str>, version: Version },
    Clear { version: Version },
}

impl Op {
    pub fn version(&self) -> Version {
        match self {
            Op::Set { version, .. }
            | Op::Touch { version, .. }
            | Op::Destroy { version, .. }
            | Op::Clear { version } => *version,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Nothing written yet (only a touch arrived), or voided by a clear (its version then back to
    /// zero: as if never written, whether the write came before the clear or after).
    Absent,
    /// The session JSON exactly as `get` serves it (the newest cookie already in place).
    Live(Arc<str>),
    /// Destroyed: a tombstone.
    Deleted,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub data: Data,
    pub data_version: Version,
    pub cookie_version: Version,
    /// The touched cookie JSON, kept while the touch is newer than the data (a later-arriving
    /// older `set` must get it spliced in too). `None` when the data's own cookie is current.
    pub cookie: Option<Arc<str>>,
    /// Absolute expiry, epoch ms, from the cookie register.
    pub expires_at: u64,
    /// A later expiry from touches kept on this node (`touchAfter`); never replicated, and void
    /// once a newer cookie version arrives.
    pub local_expires_at: u64,
}

impl Entry {
    pub fn absent() -> Self {
        Entry {
            data: Data::Absent,
            data_version: Version::ZERO,
            cookie_version: Version::ZERO,
            cookie: None,
            expires_at: 0,
            local_expires_at: 0,
        }
    }

    /// The expiry this node enforces: the replicated one, or a later local touch's.
    pub fn effective_expiry(&self) -> u64 {
        self.expires_at.max(self.local_expires_at)
    }

    pub fn is_visible(&self, now: u64) -> bool {
        matches!(self.data, Data::Live(_)) && self.effective_expiry() > now
    }

    /// Not yet forgettable at `now` under the default tombstone retention: a live session, or a
    /// tombstone within its retention (what a snapshot's loader keeps).
    pub fn is_kept(&self, now: u64) -> bool {
        self.purge_at(super::TOMBSTONE_MIN_RETENTION_MS) > now
    }

    /// When the sweeper may forget this entry (`retention_ms`: a tombstone's least).
    pub(super) fn purge_at(&self, retention_ms: u64) -> u64 {
        match self.data {
            Data::Deleted => tombstone_purge_at(self.data_version, self.expires_at, retention_ms),
            _ => self.effective_expiry(),
        }
    }

    /// Merges `incoming` register by register: each side keeps the newer version. Writes at or
    /// below the clear watermark `mark` were erased by that clear and are ignored. Returns
    /// whether a register changed (not for a write the destroy voids).
    pub(super) fn merge(&mut self, incoming: &Entry, mark: Version) -> bool {
        let data_newer = incoming.data_version > mark && incoming.data_version > self.data_version;
        let cookie_newer = incoming.cookie_version > mark && incoming.cookie_version > self.cookie_version;
        let (expiry_before, versions_before) = (self.expires_at, (self.data_version, self.cookie_version));
        if data_newer {
            self.data = incoming.data.clone();
            self.data_version = incoming.data_version;
        }
        if cookie_newer {
            self.cookie_version = incoming.cookie_version;
            self.cookie = incoming.cookie.clone();
            self.expires_at = incoming.expires_at;
            self.local_expires_at = 0;
        }
        // A cookie touched after the data was written replaces the data's own cookie.
        if (data_newer || cookie_newer) && self.cookie_version > self.data_version {
            if let (Data::Live(doc), Some(cookie)) = (&self.data, &self.cookie) {
                if let Some(spliced) = splice_cookie(doc, cookie) {
                    self.data = Data::Live(spliced.into());
                }
            }
        }
        // A destroy voids the cookie register of the session it destroyed (touches made before it
        // no longer matter), whatever the order they arrive in. What is left of them is how long
        // copies of the session may live elsewhere: the tombstone's retention (the latest expiry
        // any of its writes here carried).
        if matches!(self.data, Data::Deleted) && self.cookie_version <= self.data_version {
            self.expires_at = expiry_before.max(self.expires_at).max(incoming.expires_at);
            self.cookie_version = Version::ZERO;
            self.cookie = None;
            self.local_expires_at = 0;
        }
        (self.data_version, self.cookie_version) != versions_before
    }

    pub fn newest_version(&self) -> Version {
        self.data_version.max(self.cookie_version)
    }
}

/// When a tombstone of a destroy at `version` may be forgotten: once every copy of the
/// session, here or anywhere, has expired (`expires_at`: the latest expiry its writes carried),
/// and at least `retention_ms` after the destroy (TOMBSTONE_MIN_RETENTION_MS).
pub(super) fn tombstone_purge_at(version: Version, expires_at: u64, retention_ms: u64) -> u64 {
    expires_at.max(version.millis().saturating_add(retention_ms))
}

/// Replaces the top-level `cookie` of a session JSON object, keeping every other member as is.
/// Returns `None` when `doc` is not a JSON object (it is then served unchanged).
pub fn splice_cookie(doc: &str, cookie: &str) -> Option<String> {
    let cookie: &RawValue = serde_json::from_str(cookie).ok()?;
    splice_leading_cookie(doc, cookie.get()).or_else(|| {
        let mut members: IndexMap<String, &RawValue> = serde_json::from_str(doc).ok()?;
        members.insert("cookie".to_owned(), cookie);
        serde_json::to_string(&members).ok()
    })
}

/// express-session writes the cookie first (`{"cookie":{…},…}`): then only the cookie is
/// scanned and replaced, not the whole session (a touch of a 16 KB session was a 16 KB parse).
pub(super) fn splice_leading_cookie(doc: &str, cookie: &str) -> Option<String> {
    const LEAD: &str = r#"{"cookie":"#;
    let old = doc.strip_prefix(LEAD)?;
    let rest = &old[object_len(old.as_bytes())?..];
    if !(rest.starts_with(',') || rest.starts_with('}')) {
        return None;
    }
    Some([LEAD, cookie, rest].concat())
}

/// Length of the JSON object at the start of `json` (strings and escapes respected), if it is
/// one and it ends.
fn object_len(json: &[u8]) -> Option<usize> {
    if json.first() != Some(&b'{') {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &byte) in json.iter().enumerate() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

impl Entry {
    pub(super) fn approx_bytes(&self) -> usize {
        let doc = match &self.data {
            Data::Live(doc) => doc.len(),
            _ => 0,
        };
        64 + doc + self.cookie.as_ref().map_or(0, |c| c.len())
    }

    /// Identifies the entry's state: sid, register versions and expiry. Not a tombstone's
    /// retention, which depends on the writes each node saw (see `merge`).
    pub(super) fn fingerprint(&self, sid: &str) -> u64 {
        let state = match self.data {
            Data::Absent => 0u8,
            Data::Live(_) => 1,
            Data::Deleted => 2,
        };
        let void = matches!(self.data, Data::Deleted) && self.cookie_version == Version::ZERO;
        let expiry = if void { 0 } else { self.expires_at };
        let v = |h: Fnv, v: Version| h.u64(v.hlc).u64(v.node);
        let h = Fnv::new().bytes(sid.as_bytes()).bytes(&[0xff, state]);
        v(v(h, self.data_version), self.cookie_version).u64(expiry).0
    }
}
