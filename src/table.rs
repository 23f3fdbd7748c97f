//! The session table: a last-writer-wins map keyed by sid (docs/design.md §2).
//!
//! Each sid holds two registers, each merged by version independently:
//! - the data register (the session JSON, or a tombstone after `destroy`), written by `set`;
//! - the cookie register (cookie JSON and absolute expiry), written by `set` and by `touch`.
//!
//! A `touch` therefore never reverts data written later by another node, and a `set` older than
//! a `touch` keeps the touched cookie. `clear` is a watermark: every write at or below it is void.
//! Merging is commutative and idempotent, so replicas that saw the same ops in any order agree.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use indexmap::IndexMap;
use parking_lot::RwLock;
use serde_json::value::RawValue;

use crate::clock::Version;

/// A session with neither cookie expiry, `ttl` nor `useSessionTTL` lives this long after its last
/// write.
pub const DEFAULT_LIFETIME_MS: u64 = 86_400_000;
/// A tombstone outlives the destroyed session's expiry, and lives at least this long, so that no
/// late or replayed write brings the session back.
pub const TOMBSTONE_MIN_RETENTION_MS: u64 = 3_600_000;

/// One replicated write. Local calls produce these; remote ones arrive in messages.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Set { sid: Arc<str>, doc: Arc<str>, expires_at: u64, version: Version },
    Touch { sid: Arc<str>, cookie: Option<Arc<str>>, expires_at: u64, version: Version },
    Destroy { sid: Arc<str>, version: Version },
    Clear { version: Version },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Nothing written yet (only a touch arrived), or voided by a clear.
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

    /// Not yet forgettable at `now`: a live session, or a tombstone within its retention.
    pub fn is_kept(&self, now: u64) -> bool {
        self.purge_at() > now
    }

    /// When the sweeper may forget this entry.
    fn purge_at(&self) -> u64 {
        match self.data {
            Data::Deleted => self.expires_at.max(self.data_version.millis() + TOMBSTONE_MIN_RETENTION_MS),
            _ => self.effective_expiry(),
        }
    }

    pub fn newest_version(&self) -> Version {
        self.data_version.max(self.cookie_version)
    }
}

/// Absolute expiry of a session written `now` (README "Session expiry", docs/design.md §2.6): the
/// cookie's own expiry, else now + `ttl` (one day when unset); with `session_ttl_ms`
/// (useSessionTTL) never later than now + that.
pub fn expiry(cookie_expires: Option<u64>, now: u64, session_ttl_ms: Option<u64>, ttl_ms: Option<u64>) -> u64 {
    let lifetime = |ms: u64| now.saturating_add(ms);
    let own = match (cookie_expires, ttl_ms, session_ttl_ms) {
        (Some(cookie), _, _) => cookie,
        (None, Some(ttl), _) => lifetime(ttl),
        (None, None, Some(session_ttl)) => lifetime(session_ttl),
        (None, None, None) => lifetime(DEFAULT_LIFETIME_MS),
    };
    session_ttl_ms.map_or(own, |session_ttl| own.min(lifetime(session_ttl)))
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
fn splice_leading_cookie(doc: &str, cookie: &str) -> Option<String> {
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

/// What the table holds for a sid (see `Table::lookup`).
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Live(Arc<str>),
    /// Known here and not live: destroyed, expired, or voided by a clear.
    Gone,
    /// Neither a session nor a tombstone: never heard of here, or only touched.
    Unknown,
}

/// Counts for `stats()`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    pub sessions: usize,
    pub tombstones: usize,
    pub session_bytes: usize,
    pub entries: usize,
}

/// Shards of the table: `export` holds one shard's read lock while it copies that shard, so a
/// shard must stay small (about 250 entries at 1,000,000 sessions: a few microseconds).
pub const SHARDS: usize = 4096;

pub struct Table {
    entries: DashMap<Box<str>, Entry>,
    clear_mark: RwLock<Version>,
    /// Bumped by every change to what `export` copies (see `changes`).
    changes: AtomicU64,
}

impl Default for Table {
    fn default() -> Self {
        Table { entries: DashMap::with_shard_amount(SHARDS), clear_mark: RwLock::default(), changes: AtomicU64::new(0) }
    }
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// A number that moves whenever a write changed the table (not for purges or local touches):
    /// equal readings mean nothing was written in between (persist.rs snapshots only then).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn changed(&self) -> bool {
        self.changes.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The session JSON if it exists and has not expired at `now`.
    pub fn get(&self, sid: &str, now: u64) -> Option<Arc<str>> {
        match self.lookup(sid, now) {
            Lookup::Live(doc) => Some(doc),
            Lookup::Gone | Lookup::Unknown => None,
        }
    }

    /// What `get` finds, telling a sid known here and not live from one never heard of.
    pub fn lookup(&self, sid: &str, now: u64) -> Lookup {
        let Some(entry) = self.entries.get(sid) else { return Lookup::Unknown };
        match &entry.data {
            Data::Live(doc) if entry.effective_expiry() > now => Lookup::Live(doc.clone()),
            // Only a touch arrived: the set it touched was written elsewhere.
            Data::Absent if entry.data_version == Version::ZERO => Lookup::Unknown,
            _ => Lookup::Gone,
        }
    }

    pub fn is_visible(&self, sid: &str, now: u64) -> bool {
        self.entries.get(sid).is_some_and(|e| e.is_visible(now))
    }

    pub fn clear_mark(&self) -> Version {
        *self.clear_mark.read()
    }

    /// Merges one write. Returns whether it changed anything (false for duplicates and for
    /// writes superseded by newer ones).
    pub fn apply(&self, op: &Op) -> bool {
        match op {
            Op::Clear { version } => self.apply_clear(*version),
            Op::Set { sid, doc, expires_at, version } => self.merge(
                sid,
                &Entry {
                    data: Data::Live(doc.clone()),
                    data_version: *version,
                    cookie_version: *version,
                    expires_at: *expires_at,
                    ..Entry::absent()
                },
            ),
            Op::Touch { sid, cookie, expires_at, version } => self.merge(
                sid,
                &Entry { cookie_version: *version, cookie: cookie.clone(), expires_at: *expires_at, ..Entry::absent() },
            ),
            Op::Destroy { sid, version } => {
                self.merge(sid, &Entry { data: Data::Deleted, data_version: *version, ..Entry::absent() })
            }
        }
    }

    /// Merges an entry register by register: each side keeps the newer version. Writes at or
    /// below the clear watermark were erased by that clear and are ignored.
    pub fn merge(&self, sid: &str, incoming: &Entry) -> bool {
        let mark = *self.clear_mark.read();
        let takes_data = incoming.data_version > mark;
        let takes_cookie = incoming.cookie_version > mark;
        if !takes_data && !takes_cookie {
            return false;
        }
        let update = |entry: &mut Entry| {
            let data_newer = takes_data && incoming.data_version > entry.data_version;
            let cookie_newer = takes_cookie && incoming.cookie_version > entry.cookie_version;
            if data_newer {
                entry.data = incoming.data.clone();
                entry.data_version = incoming.data_version;
            }
            if cookie_newer {
                entry.cookie_version = incoming.cookie_version;
                entry.cookie = incoming.cookie.clone();
                entry.expires_at = incoming.expires_at;
                entry.local_expires_at = 0;
            }
            // A cookie touched after the data was written replaces the data's own cookie.
            if (data_newer || cookie_newer) && entry.cookie_version > entry.data_version {
                if let (Data::Live(doc), Some(cookie)) = (&entry.data, &entry.cookie) {
                    if let Some(spliced) = splice_cookie(doc, cookie) {
                        entry.data = Data::Live(spliced.into());
                    }
                }
            }
            data_newer || cookie_newer
        };
        let changed = match self.entries.get_mut(sid) {
            Some(mut entry) => update(&mut entry),
            None => update(&mut self.entries.entry(sid.into()).or_insert_with(Entry::absent)),
        };
        changed && self.changed()
    }

    /// `merge` for a table being filled from a snapshot (persist/loader.rs): an entry for a sid
    /// not held yet is moved in as it is, with one lookup.
    pub fn restore(&self, sid: &str, entry: Entry) {
        if entry.data_version <= *self.clear_mark.read() && entry.cookie_version <= *self.clear_mark.read() {
            return;
        }
        match self.entries.entry(sid.into()) {
            dashmap::Entry::Vacant(slot) => {
                slot.insert(entry);
                self.changed();
            }
            dashmap::Entry::Occupied(held) => {
                drop(held);
                self.merge(sid, &entry);
            }
        }
    }

    /// Room for about `entries` entries, before a table is filled (persist/loader.rs): a shard that
    /// grows rehashes every key it holds, each a read of the key's own allocation. A hint: a
    /// shard that gets more grows as usual, and a reservation refused is no error.
    pub fn reserve(&mut self, entries: usize) {
        let per_shard = entries / SHARDS;
        // Shards fill unevenly (about ±√n): room for four standard deviations more.
        let _ = self.entries.try_reserve(per_shard + 4 * per_shard.isqrt() + 1);
    }

    /// The shard that holds (or would hold) `sid`: a loader that merges many entries at once
    /// merges them shard by shard, each shard's memory in cache (persist/loader.rs).
    pub fn shard_of(&self, sid: &str) -> usize {
        self.entries.determine_map(sid)
    }

    /// `touchAfter`: when a touch would move a live session's replicated expiry forward by less
    /// than `threshold_ms`, and that expiry is still more than `threshold_ms` away, the new expiry
    /// is kept on this node only (no new version, so digests and peers are unaffected) and this
    /// returns true. Otherwise nothing changes and the touch must be written as usual.
    pub fn extend_locally(&self, sid: &str, expires_at: u64, now: u64, threshold_ms: u64) -> bool {
        let Some(mut entry) = self.entries.get_mut(sid) else { return false };
        let replicated = entry.expires_at;
        let small_step = expires_at >= replicated && expires_at - replicated < threshold_ms;
        let far_from_expiry = replicated.saturating_sub(now) > threshold_ms;
        if !(matches!(entry.data, Data::Live(_)) && small_step && far_from_expiry) {
            return false;
        }
        entry.local_expires_at = entry.local_expires_at.max(expires_at);
        true
    }

    /// Raises the clear watermark to `mark` (state transfer, anti-entropy).
    pub fn merge_clear_mark(&self, mark: Version) -> bool {
        mark != Version::ZERO && self.apply_clear(mark)
    }

    fn apply_clear(&self, version: Version) -> bool {
        {
            let mut mark = self.clear_mark.write();
            if version <= *mark {
                return false;
            }
            *mark = version;
        }
        self.entries.retain(|_, entry| {
            if entry.data_version <= version {
                entry.data = Data::Absent;
            }
            entry.newest_version() > version
        });
        self.changed()
    }

    /// Every visible session as one JSON object keyed by sid (the shape of MemoryStore's `all`).
    pub fn all_json(&self, now: u64) -> String {
        let mut out = String::from("{");
        for item in self.entries.iter() {
            let entry = item.value();
            if let (Data::Live(doc), true) = (&entry.data, entry.effective_expiry() > now) {
                if out.len() > 1 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(&**item.key()).unwrap_or_default());
                out.push(':');
                out.push_str(doc);
            }
        }
        out.push('}');
        out
    }

    pub fn length(&self, now: u64) -> usize {
        self.entries.iter().filter(|e| e.is_visible(now)).count()
    }

    pub fn counts(&self, now: u64) -> TableCounts {
        let mut counts = TableCounts { entries: self.entries.len(), ..TableCounts::default() };
        for item in self.entries.iter() {
            match &item.data {
                Data::Live(doc) if item.effective_expiry() > now => {
                    counts.sessions += 1;
                    counts.session_bytes += doc.len();
                }
                Data::Deleted => counts.tombstones += 1,
                _ => {}
            }
        }
        counts
    }

    /// Forgets expired sessions and tombstones past their retention. Returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, entry| entry.purge_at() > now);
        before.saturating_sub(self.entries.len())
    }

    /// A copy of one entry (state transfer, anti-entropy, tests).
    pub fn entry(&self, sid: &str) -> Option<Entry> {
        self.entries.get(sid).map(|e| e.clone())
    }

    /// Entries not yet purgeable at `now` (only those in `buckets` of `bucket_count` when given),
    /// handed to `visit` in batches of about `batch_bytes`, without holding a lock across calls.
    pub fn snapshot(
        &self,
        now: u64,
        buckets: Option<(&[bool], usize)>,
        batch_bytes: usize,
        mut visit: impl FnMut(Vec<(Arc<str>, Entry)>),
    ) {
        let mut batch = Vec::new();
        let mut size = 0;
        for item in self.entries.iter() {
            if item.purge_at() <= now {
                continue;
            }
            if let Some((wanted, count)) = buckets {
                if !wanted[bucket_of(item.key(), count)] {
                    continue;
                }
            }
            size += item.key().len() + item.approx_bytes();
            batch.push((Arc::from(&**item.key()), item.value().clone()));
            if size >= batch_bytes {
                visit(std::mem::take(&mut batch));
                size = 0;
            }
        }
        if !batch.is_empty() {
            visit(batch);
        }
    }

    /// Every entry not purgeable at `now`, copied out one shard at a time: the shard's read lock is
    /// held only while its entries are cloned (reference counts, no session is copied), and
    /// `visit` gets them after it is released. Writers to a shard wait at most that long; readers
    /// never wait. An entry written while the export runs may be in it or not; every other entry
    /// is in it exactly once (persist.rs writes snapshots from this).
    /// `visit` owns each copy, and returns an empty one to fill next (a new one, or one it is
    /// done with), or `None` to stop. Returns the longest time a shard was held.
    pub fn export(&self, now: u64, mut visit: impl FnMut(ShardCopy) -> Option<ShardCopy>) -> std::time::Duration {
        let mut copy = ShardCopy::default();
        let mut longest = std::time::Duration::ZERO;
        for shard in self.entries.shards() {
            copy.clear();
            {
                let guard = shard.read();
                let held = std::time::Instant::now();
                // SAFETY: the read guard keeps the shard's table alive and unmodified while the
                // iterator and the references it yields are used, which is only inside this block.
                for bucket in unsafe { guard.iter() } {
                    let (sid, entry) = unsafe { bucket.as_ref() };
                    let entry = entry.get();
                    if entry.purge_at() > now {
                        copy.push(sid, entry);
                    }
                }
                longest = longest.max(held.elapsed());
            }
            if !copy.entries.is_empty() {
                match visit(copy) {
                    Some(next) => copy = next,
                    None => break,
                }
            }
        }
        longest
    }

    /// Order-independent digest of the table in `count` buckets by sid: two replicas with the
    /// same entries have the same digests, whatever order they merged them in.
    pub fn digest(&self, now: u64, count: usize) -> Vec<u64> {
        let mut digest = vec![0u64; count];
        for item in self.entries.iter() {
            if item.purge_at() > now {
                let bucket = bucket_of(item.key(), count);
                digest[bucket] = digest[bucket].wrapping_add(item.fingerprint(item.key()));
            }
        }
        digest
    }
}

/// The entries of one shard, copied by `Table::export`: the sids in one string, the entries
/// cloned (their session JSON shared, not copied).
#[derive(Default)]
pub struct ShardCopy {
    sids: String,
    ends: Vec<usize>,
    entries: Vec<Entry>,
}

impl ShardCopy {
    pub fn clear(&mut self) {
        self.sids.clear();
        self.ends.clear();
        self.entries.clear();
    }

    fn push(&mut self, sid: &str, entry: &Entry) {
        self.sids.push_str(sid);
        self.ends.push(self.sids.len());
        self.entries.push(entry.clone());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(start, end)| &self.sids[start..*end]).zip(&self.entries)
    }
}

/// FNV-1a, 64 bits: digests must agree across processes, builds and toolchains.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(mut self, bytes: &[u8]) -> Self {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_be_bytes())
    }
}

pub fn bucket_of(sid: &str, count: usize) -> usize {
    (Fnv::new().bytes(sid.as_bytes()).0 % count as u64) as usize
}

impl Entry {
    fn approx_bytes(&self) -> usize {
        let doc = match &self.data {
            Data::Live(doc) => doc.len(),
            _ => 0,
        };
        64 + doc + self.cookie.as_ref().map_or(0, |c| c.len())
    }

    /// Identifies the entry's state: sid, register versions and expiry.
    fn fingerprint(&self, sid: &str) -> u64 {
        let state = match self.data {
            Data::Absent => 0u8,
            Data::Live(_) => 1,
            Data::Deleted => 2,
        };
        let v = |h: Fnv, v: Version| h.u64(v.hlc).u64(v.node);
        let h = Fnv::new().bytes(sid.as_bytes()).bytes(&[0xff, state]);
        v(v(h, self.data_version), self.cookie_version).u64(self.expires_at).0
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(t.lookup("c", NOW), Lookup::Gone, "voided by a clear");
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
            let (Op::Set { version, .. }
            | Op::Touch { version, .. }
            | Op::Destroy { version, .. }
            | Op::Clear { version }) = &mut op;
            version.hlc = version.hlc * 64 + index;
            op
        }

        fn snapshot(t: &Table) -> Vec<(String, Option<String>, u64)> {
            ["a", "b", "c"]
                .iter()
                .map(|sid| {
                    let e = t.entry(sid);
                    let exp = e.as_ref().filter(|e| e.is_visible(0)).map_or(0, |e| e.expires_at);
                    (sid.to_string(), t.get(sid, 0).map(|d| d.to_string()), exp)
                })
                .collect()
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
        assert_eq!(shards, 1, "visit returning false stops the export");
    }

    #[test]
    fn changes_move_with_writes_only() {
        let t = Table::new();
        let before = t.changes();
        t.apply(&set("a", "{}", NOW + 10, v(2, 1)));
        let after_set = t.changes();
        assert!(after_set > before);
        t.apply(&set("a", "{}", NOW + 10, v(1, 1)));
        assert_eq!(t.changes(), after_set, "a write that lost changes nothing");
        t.extend_locally("a", NOW + 11, NOW, 100);
        t.sweep(NOW + 20);
        assert_eq!(t.changes(), after_set, "local touches and purges are not snapshotted");
        t.apply(&Op::Clear { version: v(3, 1) });
        assert!(t.changes() > after_set);
    }

    #[test]
    fn all_json_escapes_sids() {
        let t = Table::new();
        t.apply(&set("a\"b", r#"{"n":1}"#, NOW + 10, v(1, 1)));
        let all: serde_json::Value = serde_json::from_str(&t.all_json(NOW)).unwrap();
        assert_eq!(all["a\"b"]["n"], 1);
    }
}

#[cfg(test)]
mod shard_timing {
    use super::*;

    /// `cargo test --release --no-default-features shard_timing -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn set_get_ns() {
        let t = Table::new();
        let n = 200_000u64;
        let doc: Arc<str> = "x".repeat(1000).into();
        let sids: Vec<String> = (0..n).map(|i| format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
        for (i, sid) in sids.iter().enumerate() {
            t.apply(&Op::Set {
                sid: sid.as_str().into(),
                doc: doc.clone(),
                expires_at: u64::MAX,
                version: Version { hlc: i as u64 + 1, node: 1 },
            });
        }
        for round in 0..3 {
            let start = std::time::Instant::now();
            for (i, sid) in sids.iter().enumerate() {
                let v = Version { hlc: n * (round + 2) + i as u64, node: 1 };
                t.apply(&Op::Set { sid: sid.as_str().into(), doc: doc.clone(), expires_at: u64::MAX, version: v });
            }
            let set = start.elapsed().as_nanos() as f64 / n as f64;
            let start = std::time::Instant::now();
            let mut found = 0;
            for sid in &sids {
                found += usize::from(t.get(sid, 0).is_some());
            }
            let get = start.elapsed().as_nanos() as f64 / n as f64;
            println!("shards {SHARDS}: set {set:.0} ns, get {get:.0} ns ({found})");
        }
    }
}
