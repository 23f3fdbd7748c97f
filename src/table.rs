//! The session table: a last-writer-wins map keyed by sid (docs/design.md §2).
//!
//! Each sid holds two registers, each merged by version independently:
//! - the data register (the session JSON, or a tombstone after `destroy`), written by `set`;
//! - the cookie register (cookie JSON and absolute expiry), written by `set` and by `touch`.
//!
//! A `touch` therefore never reverts data written later by another node, and a `set` older than
//! a `touch` keeps the touched cookie. `clear` is a watermark: every write at or below it is void.
//! Merging is commutative and idempotent, so replicas that saw the same ops in any order agree.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use foldhash::fast::RandomState;
use parking_lot::RwLock;

use crate::clock::Version;

mod entry;
mod tomb;

pub use entry::{splice_cookie, Data, Entry, Op};
use tomb::Tomb;

/// A session with neither cookie expiry, `ttl` nor `useSessionTTL` lives this long after its last
/// write.
pub const DEFAULT_LIFETIME_MS: u64 = 86_400_000;
/// A tombstone outlives the destroyed session's expiry, and lives at least this long, so that no
/// late or replayed write brings the session back.
pub const TOMBSTONE_MIN_RETENTION_MS: u64 = 3_600_000;

/// Absolute expiry of a session written `now` (README "Session expiry"): the cookie's own expiry,
/// else now + `ttl` (one day when unset); with `session_ttl_ms` (useSessionTTL) never later than
/// now + that.
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

/// What the table holds for a sid (see `Table::lookup`).
#[derive(Clone, Debug, PartialEq)]
pub enum Lookup {
    Live(Arc<str>),
    /// Known here and not live: destroyed, or expired.
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

/// Shards of the table, each behind its own lock: writes to different sids rarely wait for
/// each other (the JS thread's local writes, the network thread's merges), and `export` holds one
/// shard's read lock while it copies that shard, so a shard must stay small (about 250 entries at
/// 1,000,000 sessions: a few microseconds).
pub const SHARDS: usize = 4096;

/// The sessions and tombstones of a shard. A sid is in one of the two maps at most; a tombstone
/// is kept compact (tomb.rs) unless it cannot be. The maps hash with foldhash, seeded at random
/// per process: a quarter of SipHash's cost, and a sid reaches them only from express-session
/// (which signs its cookies) or from the cluster.
#[derive(Default)]
struct Shard {
    entries: HashMap<Box<str>, Entry, RandomState>,
    tombs: HashSet<Tomb, RandomState>,
}

impl Shard {
    fn get(&self, sid: &str) -> Option<Entry> {
        self.entries.get(sid).cloned().or_else(|| self.tombs.get(sid.as_bytes()).map(Tomb::entry))
    }

    /// Stores the state of `sid`: a tombstone compactly when it can be; nothing for an entry
    /// that holds nothing.
    fn put(&mut self, sid: &str, entry: Entry) {
        if let Some(tomb) = Tomb::of(sid, &entry) {
            self.entries.remove(sid);
            self.tombs.replace(tomb);
        } else if entry.newest_version() != Version::ZERO {
            self.tombs.remove(sid.as_bytes());
            self.entries.insert(sid.into(), entry);
        }
    }

    /// `Table::merge` of one entry, the shard locked and the clear mark read.
    fn merge(&mut self, sid: &str, incoming: &Entry, mark: Version) -> bool {
        if let Some(entry) = self.entries.get_mut(sid) {
            let changed = entry.merge(incoming, mark);
            if let Some(tomb) = Tomb::of(sid, entry) {
                self.entries.remove(sid);
                self.tombs.replace(tomb);
            }
            changed
        } else {
            let mut entry = self.tombs.get(sid.as_bytes()).map_or_else(Entry::absent, Tomb::entry);
            let changed = entry.merge(incoming, mark);
            self.put(sid, entry);
            changed
        }
    }

    fn len(&self) -> usize {
        self.entries.len() + self.tombs.len()
    }

    /// Every entry, tombstones expanded.
    fn each(&self, mut visit: impl FnMut(&str, &Entry)) {
        self.entries.iter().for_each(|(sid, entry)| visit(sid, entry));
        for tomb in &self.tombs {
            visit(tomb.sid(), &tomb.entry());
        }
    }

    fn sweep(&mut self, now: u64, retention_ms: u64) {
        self.entries.retain(|_, entry| entry.purge_at(retention_ms) > now);
        self.tombs.retain(|tomb| tomb.purge_at(retention_ms) > now);
    }
}

pub struct Table {
    shards: Box<[RwLock<Shard>]>,
    /// Picks a sid's shard: a hasher of its own seed and kind, so that which shard holds a sid says
    /// nothing about where its shard's map puts it.
    router: foldhash::quality::RandomState,
    clear_mark: RwLock<Version>,
    /// A tombstone's least retention after its destroy.
    retention_ms: u64,
    /// Bumped by every change to what `export` copies (see `changes`).
    changes: AtomicU64,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            router: foldhash::quality::RandomState::default(),
            clear_mark: RwLock::default(),
            retention_ms: TOMBSTONE_MIN_RETENTION_MS,
            changes: AtomicU64::new(0),
        }
    }
}

impl Table {
    pub fn new() -> Self {
        Self::default()
    }

    /// A table whose tombstones are kept at least `retention_ms` after their destroy (the
    /// simulator's study of the retention).
    #[cfg(test)]
    pub fn with_retention(retention_ms: u64) -> Self {
        Table { retention_ms, ..Self::default() }
    }

    fn shard(&self, sid: &str) -> &RwLock<Shard> {
        &self.shards[self.shard_of(sid)]
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
        let shard = self.shard(sid).read();
        let Some(entry) = shard.entries.get(sid) else {
            return if shard.tombs.contains(sid.as_bytes()) { Lookup::Gone } else { Lookup::Unknown };
        };
        match &entry.data {
            Data::Live(doc) if entry.effective_expiry() > now => Lookup::Live(doc.clone()),
            // Only a touch arrived: the set it touched was written elsewhere.
            Data::Absent if entry.data_version == Version::ZERO => Lookup::Unknown,
            _ => Lookup::Gone,
        }
    }

    pub fn is_visible(&self, sid: &str, now: u64) -> bool {
        self.shard(sid).read().entries.get(sid).is_some_and(|e| e.is_visible(now))
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
        if incoming.data_version <= mark && incoming.cookie_version <= mark {
            return false;
        }
        let changed = self.shard(sid).write().merge(sid, incoming, mark);
        changed && self.changed()
    }

    /// `merge` for a table being filled from a snapshot (persist/loader.rs), for entries of the
    /// one shard `shard` (see `shard_of`) at once: one lock of the shard, one reading of the clear
    /// mark and one count of the change for them all (threads that fill a table together would
    /// otherwise pass those shared words between their cores at every entry). An entry for a sid
    /// not held yet is moved in as it is.
    pub fn restore<'a>(&self, shard: usize, entries: impl IntoIterator<Item = (&'a str, Entry)>) {
        let mark = *self.clear_mark.read();
        let mut changed = false;
        let mut locked = self.shards[shard].write();
        for (sid, entry) in entries {
            debug_assert_eq!(self.shard_of(sid), shard);
            if entry.data_version <= mark && entry.cookie_version <= mark {
                continue;
            }
            if locked.entries.contains_key(sid) || locked.tombs.contains(sid.as_bytes()) {
                changed |= locked.merge(sid, &entry, mark);
            } else {
                locked.put(sid, entry);
                changed = true;
            }
        }
        drop(locked);
        if changed {
            self.changed();
        }
    }

    /// A number that moves whenever a write changed the table, or `touchAfter` an expiry kept on
    /// this node (not for purges):
    /// equal readings mean nothing was written in between (persist/mod.rs snapshots only then).
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn changed(&self) -> bool {
        self.changes.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Room for about `entries` sessions, before a table is filled (persist/loader.rs): a shard
    /// that grows rehashes every key it holds, each a read of the key's own allocation. A hint: a
    /// shard that gets more grows as usual, and a reservation refused is no error.
    pub fn reserve(&mut self, entries: usize) {
        let per_shard = entries / SHARDS;
        // Shards fill unevenly (about ±√n): room for four standard deviations more.
        for shard in self.shards.iter_mut() {
            let _ = shard.get_mut().entries.try_reserve(per_shard + 4 * per_shard.isqrt() + 1);
        }
    }

    /// The shard that holds (or would hold) `sid`: a loader that merges many entries at once
    /// merges them shard by shard, each shard's memory in cache (persist/loader.rs).
    pub fn shard_of(&self, sid: &str) -> usize {
        self.router.hash_one(sid) as usize % SHARDS
    }

    /// `touchAfter`: when a touch would move a live session's replicated expiry forward by less
    /// than `threshold_ms`, and that expiry is still more than `threshold_ms` away, the new expiry
    /// is kept on this node only (no new version, so digests and peers are unaffected) and this
    /// returns true. Otherwise nothing changes and the touch must be written as usual.
    pub fn extend_locally(&self, sid: &str, expires_at: u64, now: u64, threshold_ms: u64) -> bool {
        let mut shard = self.shard(sid).write();
        let Some(entry) = shard.entries.get_mut(sid) else { return false };
        let replicated = entry.expires_at;
        let small_step = expires_at >= replicated && expires_at - replicated < threshold_ms;
        let far_from_expiry = replicated.saturating_sub(now) > threshold_ms;
        if !(matches!(entry.data, Data::Live(_)) && small_step && far_from_expiry) {
            return false;
        }
        if expires_at > entry.local_expires_at {
            entry.local_expires_at = expires_at;
            // Not replicated, but in the next snapshot.
            self.changed();
        }
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
        // A register the clear voids goes back to "never written": as if its write had arrived
        // after the clear (and been ignored), so replicas agree whatever the order of arrival.
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            shard.tombs.retain(|tomb| tomb.version() > version);
            shard.entries.retain(|_, entry| {
                if entry.data_version <= version {
                    entry.data = Data::Absent;
                    entry.data_version = Version::ZERO;
                }
                if entry.cookie_version <= version {
                    entry.cookie_version = Version::ZERO;
                    entry.cookie = None;
                    entry.expires_at = 0;
                    entry.local_expires_at = 0;
                }
                entry.newest_version() > version
            });
        }
        self.changed()
    }

    /// Every visible session as one JSON object keyed by sid (the shape of MemoryStore's `all`).
    pub fn all_json(&self, now: u64) -> String {
        let mut out = String::from("{");
        for shard in self.shards.iter() {
            for (sid, entry) in &shard.read().entries {
                if let (Data::Live(doc), true) = (&entry.data, entry.effective_expiry() > now) {
                    if out.len() > 1 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(&**sid).unwrap_or_default());
                    out.push(':');
                    out.push_str(doc);
                }
            }
        }
        out.push('}');
        out
    }

    pub fn length(&self, now: u64) -> usize {
        self.shards.iter().map(|s| s.read().entries.values().filter(|e| e.is_visible(now)).count()).sum()
    }

    pub fn counts(&self, now: u64) -> TableCounts {
        let mut counts = TableCounts::default();
        for shard in self.shards.iter() {
            let shard = shard.read();
            counts.entries += shard.len();
            counts.tombstones += shard.tombs.len();
            for entry in shard.entries.values() {
                match &entry.data {
                    Data::Live(doc) if entry.effective_expiry() > now => {
                        counts.sessions += 1;
                        counts.session_bytes += doc.len();
                    }
                    Data::Deleted => counts.tombstones += 1,
                    _ => {}
                }
            }
        }
        counts
    }

    /// Forgets expired sessions and tombstones past their retention. Returns how many.
    pub fn sweep(&self, now: u64) -> usize {
        let mut purged = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.write();
            let before = shard.len();
            shard.sweep(now, self.retention_ms);
            purged += before - shard.len();
        }
        purged
    }

    /// A copy of one entry (state transfer, anti-entropy, tests).
    pub fn entry(&self, sid: &str) -> Option<Entry> {
        self.shard(sid).read().get(sid)
    }

    /// The entry of `sid` unless it may be forgotten at `now` (an expired session, a tombstone
    /// past its retention): what an answer to a miss gives.
    pub fn kept(&self, sid: &str, now: u64) -> Option<Entry> {
        self.entry(sid).filter(|e| e.purge_at(self.retention_ms) > now)
    }

    /// Entries not yet purgeable at `now` (only those in `buckets` of `bucket_count` when given),
    /// handed to `visit` in batches of about `batch_bytes`, no lock held while `visit` runs.
    pub fn snapshot(
        &self,
        now: u64,
        buckets: Option<(&[bool], usize)>,
        batch_bytes: usize,
        mut visit: impl FnMut(Vec<(Arc<str>, Entry)>),
    ) {
        let mut batch = Vec::new();
        let mut size = 0;
        for shard in self.shards.iter() {
            let mut taken: Vec<(Arc<str>, Entry)> = Vec::new();
            shard.read().each(|sid, entry| {
                let wanted = buckets.is_none_or(|(wanted, count)| wanted[bucket_of(sid, count)]);
                if entry.purge_at(self.retention_ms) > now && wanted {
                    taken.push((Arc::from(sid), entry.clone()));
                }
            });
            for (sid, entry) in taken {
                size += sid.len() + entry.approx_bytes();
                batch.push((sid, entry));
                if size >= batch_bytes {
                    visit(std::mem::take(&mut batch));
                    size = 0;
                }
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
    /// is in it exactly once (persist/writer.rs writes snapshots from this).
    /// `visit` owns each copy, and returns an empty one to fill next (a new one, or one it is
    /// done with), or `None` to stop. Returns the longest time a shard was held.
    pub fn export(&self, now: u64, mut visit: impl FnMut(ShardCopy) -> Option<ShardCopy>) -> std::time::Duration {
        let mut copy = ShardCopy::default();
        let mut longest = std::time::Duration::ZERO;
        for (index, shard) in self.shards.iter().enumerate() {
            copy.clear();
            copy.shard = index;
            {
                let shard = shard.read();
                let held = std::time::Instant::now();
                shard.each(|sid, entry| {
                    if entry.purge_at(self.retention_ms) > now {
                        copy.push(sid, entry);
                    }
                });
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
        for shard in self.shards.iter() {
            shard.read().each(|sid, entry| {
                if entry.purge_at(self.retention_ms) > now {
                    let bucket = bucket_of(sid, count);
                    digest[bucket] = digest[bucket].wrapping_add(entry.fingerprint(sid));
                }
            });
        }
        digest
    }
}

/// The entries of one shard, copied by `Table::export`: the sids in one string, the entries
/// cloned (their session JSON shared, not copied).
#[derive(Default)]
pub struct ShardCopy {
    /// Which shard, of `SHARDS`.
    shard: usize,
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

    /// The share of the table exported once this copy is (0 to 1).
    pub fn done(&self) -> f64 {
        (self.shard + 1) as f64 / SHARDS as f64
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

#[cfg(test)]
mod tests;
