//! A miss asks the cluster (docs/design.md §3.10; docs/how-it-works.md "Reading a session that
//! has not arrived yet").
//!
//! express-session asks the store only for sids of cookies it signed, so a `get` that finds
//! neither a session nor a tombstone is most often a session written on another node whose
//! replication has not arrived yet (a login answered by A, the next request sent to B). Before
//! answering "none", the node asks its alive members by unicast what they hold for the sid
//! (`Query`), merges their answers (`Answer`) like any replicated entry, and reads its table
//! again. Bounded three ways: one round trip of at most `missTimeout` ms; a token bucket on the
//! queries a node sends (a flood of unknown sids, say after every node restarted, costs at most
//! that); and concurrent asks for one sid share one query.
//!
//! This module keeps the bookkeeping, plain data driven with `now` (the node does the sends).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::clock::Version;
use crate::table::{Entry, Table};
use crate::wire::{NodeInfo, Reply};

/// `missTimeout` by default, ms: replication takes about 0.3 ms on a LAN, and up to tens of ms
/// when a loss is repaired; a query is one round trip, so this is only reached when an answer
/// is lost or a member is slow to answer.
pub const DEFAULT_TIMEOUT_MS: u64 = 20;
pub const MAX_TIMEOUT_MS: u64 = 10_000;
/// Queries a node sends at most: this many a second in the long run, and this many at once.
pub const QUERIES_PER_SECOND: f64 = 100.0;
pub const QUERY_BURST: f64 = 100.0;

pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full at first.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// What this node holds for `sid`, as an answer: its entry unless it may be forgotten (an expired
/// session, a tombstone past its retention), which says nothing the asker can use.
pub fn reply(table: &Table, sid: Arc<str>, now: u64) -> Reply {
    match table.kept(&sid, now) {
        Some(entry) => Reply::Entry { sid, entry },
        None => Reply::Nothing,
    }
}

/// One query in flight.
pub struct Query {
    pub sid: Arc<str>,
    /// Asked members that have not answered yet, and where they were asked.
    waiting: Vec<(u64, NodeInfo)>,
    /// The newest version a member holds in an entry too large for a datagram, and its TCP address.
    larger: Option<(Version, SocketAddr)>,
    /// When the query gives up on the members that have not answered.
    pub deadline: Instant,
}

impl Query {
    /// Asked members that never answered.
    pub fn unanswered(&self) -> usize {
        self.waiting.len()
    }

    /// Where to fetch an entry newer than `local` (the newest version this node holds), if a
    /// member reported one too large for a datagram.
    pub fn fetch_from(&self, local: Version) -> Option<SocketAddr> {
        self.larger.filter(|(version, _)| *version > local).map(|(_, tcp)| tcp)
    }
}

/// An answer taken (`Asks::answered`).
pub struct Answered {
    /// The entry to merge.
    pub entry: Option<(Arc<str>, Entry)>,
    /// It was the last answer awaited: the query is over once the entry is merged.
    pub complete: bool,
}

/// How a miss is asked about (`Asks::admit`).
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new query: send it (`asking`).
    New(u64),
    /// A query for the same sid is in flight: its end answers this ask too.
    Joined(u64),
    /// Over the rate limit: nothing is asked.
    RateLimited,
}

/// The queries of one node: the rate limit, and those in flight by token and by sid.
pub struct Asks {
    bucket: TokenBucket,
    next_token: u64,
    queries: BTreeMap<u64, Query>,
    by_sid: BTreeMap<Arc<str>, u64>,
}

impl Asks {
    /// `first_token`: not guessable from outside, so an answer must name a query in flight.
    pub fn new(now: Instant, first_token: u64) -> Asks {
        Asks {
            bucket: TokenBucket::new(QUERIES_PER_SECOND, QUERY_BURST, now),
            next_token: first_token,
            queries: BTreeMap::new(),
            by_sid: BTreeMap::new(),
        }
    }

    /// A token of no query (an ask the table answers at once).
    pub fn token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token = token.wrapping_add(1);
        token
    }

    /// Joins the query in flight for `sid`, or starts one, ending at `deadline`, if the rate
    /// limit allows.
    pub fn admit(&mut self, sid: &str, now: Instant, deadline: Instant) -> Admission {
        if let Some(token) = self.by_sid.get(sid).filter(|token| self.queries.contains_key(token)) {
            return Admission::Joined(*token);
        }
        if !self.bucket.take(now) {
            return Admission::RateLimited;
        }
        let token = self.token();
        let sid: Arc<str> = sid.into();
        self.queries.insert(token, Query { sid: sid.clone(), waiting: Vec::new(), larger: None, deadline });
        self.by_sid.insert(sid, token);
        Admission::New(token)
    }

    /// The members a query is sent to.
    pub fn asking(&mut self, token: u64, members: Vec<(u64, NodeInfo)>) {
        if let Some(query) = self.queries.get_mut(&token) {
            query.waiting = members;
        }
    }

    /// Records the answer of `node`, received from `from`. `None` when it is for no query in
    /// flight (late, after the timeout), from a node that was not asked or answered already,
    /// from another address than the one asked, or about another sid.
    pub fn answered(&mut self, token: u64, node: u64, from: SocketAddr, reply: Reply) -> Option<Answered> {
        let query = self.queries.get_mut(&token)?;
        let at = query.waiting.iter().position(|(id, info)| *id == node && info.addr == from)?;
        let entry = match reply {
            Reply::Nothing => None,
            Reply::Entry { sid, entry } if sid == query.sid => Some((sid, entry)),
            Reply::Entry { .. } => return None,
            Reply::TooLarge { version } => {
                let info = query.waiting[at].1;
                if query.larger.is_none_or(|(newest, _)| version > newest) {
                    query.larger = Some((version, SocketAddr::new(info.addr.ip(), info.tcp_port)));
                }
                None
            }
        };
        query.waiting.swap_remove(at);
        Some(Answered { entry, complete: query.waiting.is_empty() })
    }

    /// Forgets a query; returns it unless it was forgotten already.
    pub fn end(&mut self, token: u64) -> Option<Query> {
        let query = self.queries.remove(&token)?;
        if self.by_sid.get(&query.sid) == Some(&token) {
            self.by_sid.remove(&query.sid);
        }
        Some(query)
    }

    /// The earliest deadline of the queries in flight.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.queries.values().map(|q| q.deadline).min()
    }

    /// The queries whose deadline has come.
    pub fn due(&self, now: Instant) -> Vec<u64> {
        self.queries.iter().filter(|(_, q)| q.deadline <= now).map(|(token, _)| *token).collect()
    }

    /// Queries in flight (the simulator bounds them).
    pub fn in_flight(&self) -> usize {
        self.queries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::{Data, Lookup, Op};
    use std::time::Duration;

    fn member(id: u64, port: u16) -> (u64, NodeInfo) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        (id, NodeInfo { addr, tcp_port: port + 1, listen_port: 0 })
    }

    fn v(hlc: u64, node: u64) -> Version {
        Version { hlc, node }
    }

    fn live(doc: &str, version: Version, expires_at: u64) -> Entry {
        let data = Data::Live(doc.into());
        Entry { data, data_version: version, cookie_version: version, expires_at, ..Entry::absent() }
    }

    const LATER: Duration = Duration::from_millis(20);

    fn new_query(asks: &mut Asks, sid: &str, now: Instant) -> u64 {
        match asks.admit(sid, now, now + LATER) {
            Admission::New(token) => token,
            other => panic!("expected a new query, got {other:?}"),
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 10.0, t0);
        assert_eq!((0..50).filter(|_| bucket.take(t0)).count(), 10, "the burst");
        assert!(!bucket.take(t0 + Duration::from_millis(5)), "half a token");
        assert!(bucket.take(t0 + Duration::from_millis(10)), "one token in 10 ms");
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..50).filter(|_| bucket.take(later)).count(), 10, "never more than the burst");
        assert!(!bucket.take(t0), "a clock that goes back gives nothing");
    }

    #[test]
    fn asks_for_one_sid_share_a_query_and_only_new_queries_are_rate_limited() {
        let t0 = Instant::now();
        let mut asks = Asks::new(t0, 40);
        let first = new_query(&mut asks, "a", t0);
        assert_eq!(first, 40);
        assert_eq!(asks.admit("a", t0, t0), Admission::Joined(first));
        let others: Vec<u64> = (1..QUERY_BURST as usize).map(|i| new_query(&mut asks, &format!("s{i}"), t0)).collect();
        assert_eq!(asks.admit("over", t0, t0), Admission::RateLimited, "the burst is spent");
        assert_eq!(asks.admit("a", t0, t0), Admission::Joined(first), "joining costs nothing");
        assert_eq!(asks.next_deadline(), Some(t0 + LATER));
        assert_eq!(asks.due(t0 + LATER - Duration::from_nanos(1)), Vec::<u64>::new());
        assert_eq!(asks.due(t0 + LATER).len(), QUERY_BURST as usize);
        assert!(asks.end(first).is_some());
        assert!(asks.end(first).is_none(), "ended once");
        let left = |asks: &Asks| (asks.queries.len(), asks.by_sid.len(), asks.by_sid.contains_key("a"));
        assert_eq!(left(&asks), (others.len(), others.len(), false));
        others.iter().for_each(|token| _ = asks.end(*token));
        assert_eq!(left(&asks), (0, 0, false), "nothing left behind");
        assert_eq!(asks.next_deadline(), None);
    }

    #[test]
    fn answers_are_taken_once_from_the_members_asked_at_their_address() {
        let t0 = Instant::now();
        let mut asks = Asks::new(t0, 1);
        let token = new_query(&mut asks, "a", t0);
        let (b, c) = (member(2, 5000), member(3, 6000));
        asks.asking(token, vec![b, c]);
        let entry = live("{}", v(5, 2), u64::MAX);
        let from_b = b.1.addr;
        assert!(asks.answered(token + 1, b.0, from_b, Reply::Nothing).is_none(), "no such query");
        assert!(asks.answered(token, 9, from_b, Reply::Nothing).is_none(), "not asked");
        assert!(asks.answered(token, b.0, c.1.addr, Reply::Nothing).is_none(), "another address");
        let other_sid = Reply::Entry { sid: "b".into(), entry: entry.clone() };
        assert!(asks.answered(token, b.0, from_b, other_sid).is_none(), "another sid");
        let reply = Reply::Entry { sid: "a".into(), entry: entry.clone() };
        let Answered { entry: merge, complete } = asks.answered(token, b.0, from_b, reply).unwrap();
        assert_eq!(merge, Some(("a".into(), entry)));
        assert!(!complete, "C has not answered");
        assert!(asks.answered(token, b.0, from_b, Reply::Nothing).is_none(), "B answered already");
        let Answered { entry: merge, complete } = asks.answered(token, c.0, c.1.addr, Reply::Nothing).unwrap();
        assert!(merge.is_none());
        assert!(complete, "the last answer completes the query");
        assert_eq!(asks.end(token).map(|q| q.unanswered()), Some(0));
        assert!(asks.answered(token, c.0, c.1.addr, Reply::Nothing).is_none(), "late");
    }

    #[test]
    fn the_newest_entry_too_large_for_a_datagram_is_fetched_only_if_newer_than_what_arrived() {
        let t0 = Instant::now();
        let mut asks = Asks::new(t0, 1);
        let token = new_query(&mut asks, "a", t0);
        let (b, c, d) = (member(2, 5000), member(3, 6000), member(4, 7000));
        asks.asking(token, vec![b, c, d]);
        asks.answered(token, b.0, b.1.addr, Reply::TooLarge { version: v(7, 2) }).unwrap();
        asks.answered(token, c.0, c.1.addr, Reply::TooLarge { version: v(5, 3) }).unwrap();
        let ended = asks.end(token).unwrap();
        assert_eq!(ended.unanswered(), 1, "D did not answer");
        let b_tcp = SocketAddr::from(([127, 0, 0, 1], 5001));
        assert_eq!(ended.fetch_from(Version::ZERO), Some(b_tcp), "from the member with the newest");
        assert_eq!(ended.fetch_from(v(7, 2)), None, "this node has that version already");
        assert_eq!(ended.fetch_from(v(8, 1)), None);
    }

    /// Answers merge like replicated entries, in any order: the newest version wins, a tombstone
    /// answer keeps the session destroyed, and an entry the answerer may forget is no answer.
    #[test]
    fn answers_merge_by_version() {
        let now = 1_700_000_000_000;
        let older = live(r#"{"n":1}"#, v(1 << 16, 2), now + 60_000);
        let newer = live(r#"{"n":2}"#, v(2 << 16, 3), now + 60_000);
        let tombstone = Entry { data: Data::Deleted, data_version: v(3 << 16, 4), ..Entry::absent() };
        for answers in [[&older, &newer], [&newer, &older]] {
            let table = Table::new();
            answers.iter().for_each(|entry| _ = table.merge("a", entry));
            assert_eq!(table.lookup("a", now), Lookup::Live(r#"{"n":2}"#.into()));
        }
        for answers in [[&older, &newer, &tombstone], [&tombstone, &newer, &older], [&newer, &tombstone, &older]] {
            let table = Table::new();
            answers.iter().for_each(|entry| _ = table.merge("a", entry));
            assert_eq!(table.lookup("a", now), Lookup::Gone, "destroyed");
            table.merge("a", &older);
            assert_eq!(table.lookup("a", now), Lookup::Gone, "a destroyed session never comes back");
        }

        let holder = Table::new();
        holder.apply(&Op::Set { sid: "a".into(), doc: "{}".into(), expires_at: now + 10, version: v(1, 1) });
        assert!(matches!(reply(&holder, "a".into(), now), Reply::Entry { .. }));
        assert_eq!(reply(&holder, "a".into(), now + 10), Reply::Nothing, "expired");
        assert_eq!(reply(&holder, "b".into(), now), Reply::Nothing);
        holder.apply(&Op::Destroy { sid: "a".into(), version: v(now << 16, 1) });
        let tombstone = reply(&holder, "a".into(), now + 10);
        assert!(matches!(tombstone, Reply::Entry { entry: Entry { data: Data::Deleted, .. }, .. }), "{tombstone:?}");
    }
}
