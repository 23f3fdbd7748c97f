//! A miss asks the alive members (docs/how-it-works.md "Reading a session that has not arrived
//! yet"): the node's side of miss.rs (docs/design.md §3.10).

use std::sync::Arc;

use super::api::{Now, Output};
use super::membership::MemberState;
use super::miss::Admission;
use super::node::Node;
use super::sync::Fetched;
use crate::clock::Version;
use crate::events::Level;
use crate::table::Lookup;
use crate::wire::{self, Message, NodeInfo, MAX_DATAGRAM};

impl Node {
    /// Asks the alive members about `sid`, or joins the query in flight for it: `Output::Answered`
    /// with the returned token tells when it is over, its answers merged. `None` when nothing is
    /// asked (the rate limit, or a sid too long for a datagram).
    pub fn ask(&mut self, sid: &str, now: Now) -> Option<u64> {
        if wire::QUERY_OVERHEAD + sid.len() > MAX_DATAGRAM {
            return None;
        }
        if self.table.lookup(sid, now.ms) != Lookup::Unknown {
            // A query ended (its answers merged) since the caller looked: the table answers.
            let token = self.asks.token();
            self.output(Output::Answered { token });
            return Some(token);
        }
        let token = match self.asks.admit(sid, now.instant, now.instant + self.settings.miss_timeout) {
            Admission::Joined(token) => return Some(token),
            Admission::RateLimited => {
                self.counters.misses_rate_limited += 1;
                return None;
            }
            Admission::New(token) => token,
        };
        let members: Vec<(u64, NodeInfo)> =
            self.members.all().filter(|m| m.state == MemberState::Alive).map(|m| (m.id, m.info)).collect();
        if members.is_empty() {
            self.asks.end(token);
            self.output(Output::Answered { token });
            return Some(token);
        }
        let to = members.iter().map(|(_, info)| info.addr).collect();
        self.asks.asking(token, members);
        self.counters.miss_queries += 1;
        let query = self.seal(&Message::Query { token, sid: sid.into() });
        self.transmit(to, query);
        Some(token)
    }

    /// Every asked member answered, or the deadline came: the query ends, unless a member holds
    /// a newer entry too large for its answer, which is fetched first.
    pub(super) fn end_query(&mut self, token: u64, now: Now) {
        let Some(query) = self.asks.end(token) else { return };
        let timed_out = query.unanswered() > 0;
        let local = self.table.entry(&query.sid).map_or(Version::ZERO, |e| e.newest_version());
        if let Some(tcp) = query.fetch_from(local) {
            self.fetching.insert(token, (query.sid.clone(), timed_out, tcp));
            return self.output(Output::Fetch { token, sid: query.sid, tcp, deadline: query.deadline });
        }
        self.conclude_query(token, &query.sid, timed_out, now);
    }

    /// The fetch of query `token`'s entry ended (`Output::Fetch`).
    pub fn fetch_done(&mut self, token: u64, fetched: Fetched, now: Now) {
        let Some((sid, mut timed_out, peer)) = self.fetching.remove(&token) else { return };
        match fetched {
            Fetched::Done => {}
            Fetched::Failed(e) => {
                self.counters.drop("fetchFailed");
                self.log(Level::Debug, format!("fetching session {sid:?} from {peer} failed: {e}"));
            }
            Fetched::TimedOut => timed_out = true,
        }
        self.conclude_query(token, &sid, timed_out, now);
    }

    fn conclude_query(&mut self, token: u64, sid: &Arc<str>, timed_out: bool, now: Now) {
        if self.table.get(sid, now.ms).is_some() {
            self.counters.misses_recovered += 1;
        } else if timed_out {
            self.counters.miss_timeouts += 1;
        } else {
            self.counters.misses_not_found += 1;
        }
        self.output(Output::Answered { token });
    }
}
