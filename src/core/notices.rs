//! What the node says in its log lines and warnings: each names what happened, what it does,
//! and what to check.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;

use super::api::Settings;
use super::membership::Member;
use crate::options::Peer;

/// How a member is named in a warning: its id, and its address when known.
pub(super) fn member_name(id: u64, member: Option<&Member>) -> String {
    member.map_or(format!("{id:016x}"), |m| format!("{id:016x} at {}", m.info.addr))
}

/// The warning of a leave that timed out: the live members that had not acknowledged `last_seq`
/// after `waited`; `None` when they all did.
pub(super) fn leave_timed_out(lagging: &[&Member], last_seq: u64, waited: Duration) -> Option<String> {
    if lagging.is_empty() {
        return None;
    }
    let names: Vec<String> = lagging.iter().map(|m| member_name(m.id, Some(m))).collect();
    Some(format!(
        "leave: after {} ms, {} live member(s) had not acknowledged this node's last datagram (seq {last_seq}): {}; \
         they may miss its last writes (anti-entropy brings them those another member has)",
        waited.as_millis(),
        names.len(),
        names.join(", "),
    ))
}

/// `waitForAck` writes called back at `ackTimeout`: `count` of them since the last warning,
/// not acknowledged by the members `names`.
pub(super) fn ack_timeouts(count: u64, names: &[String], ack_timeout: Duration, every: Duration) -> String {
    format!(
        "waitForAck: {count} write(s) called back after ackTimeout ({} ms) without every member's ack \
         (not acknowledged by {}); they are stored here and replicate as soon as the members \
         get them (this warning: at most once per {} s, every timeout counted in stats().ackTimeouts)",
        ack_timeout.as_millis(),
        names.join(", "),
        every.as_secs(),
    )
}

/// "Multicast does not get through" is the first thing that goes wrong in a multicast cluster:
/// what to check when the group was silent through the discovery window.
pub(super) fn silent_group(group: SocketAddr, settings: &Settings) -> String {
    format!(
        "multicast: in {} ms this node heard neither its own datagrams nor any other node on {group}. \
         Check that the firewall lets UDP port {} through, that multicastTTL ({}) covers the hops between \
         hosts, that the interface ({}) is the one that reaches the other nodes, and IGMP snooping on the \
         switches. Where multicast is not available (most clouds, Kubernetes), list the nodes in the \
         \"peers\" option, or run `npx express-session-multicast doctor`.",
        settings.discovery().as_millis(),
        group.port(),
        settings.multicast_ttl,
        settings.me.addr.ip(),
    )
}

/// The warning to log when member `member`'s clock is `offset_ms` ahead of this node's (behind
/// when negative), beyond maxClockSkew (`max_skew_ms`): what it does, and what to do.
pub(super) fn clock_skew(member: &Member, offset_ms: i64, max_skew_ms: u64) -> String {
    let side = if offset_ms > 0 { "ahead of" } else { "behind" };
    let (fast, slow) = if offset_ms > 0 { ("that member", "this node") } else { ("this node", "that member") };
    let seconds = format!("{:.3} s", offset_ms.unsigned_abs() as f64 / 1000.0);
    format!(
        "clock skew: member {:016x} at {}: its clock is {seconds} {side} this node's (maxClockSkew {max_skew_ms} ms). \
         Session expiry is an absolute time on the writer's clock: sessions written on {fast} live {seconds} longer \
         on {slow}, and sessions written on {slow} expire {seconds} early on {fast} (at once when their lifetime is \
         shorter); and {fast} wins concurrent writes to a session. Synchronize the clocks of every node (NTP: \
         chrony, ntpd or systemd-timesyncd); the node whose clock is off against every other member is the one to fix.",
        member.id, member.info.addr,
    )
}

/// The warning to log when the configured `peers` (resolved: `resolved`) name this node only
/// (`me`: its address and cluster port), `None` otherwise. A node skips itself among its peers,
/// so such peers never lead it to another member. Typical cause: several workers on one host
/// (pm2, Node's `cluster` module) given the same options; they can all bind the one cluster port
/// (it is shared), but a datagram sent to it reaches only one of them.
pub(super) fn peers_only_me(
    peers: &[Peer],
    resolved: &[SocketAddr],
    me: SocketAddr,
    group: Option<SocketAddr>,
) -> Option<String> {
    if resolved.is_empty() || resolved.iter().any(|p| *p != me) {
        return None;
    }
    let listed = json!(peers.iter().map(Peer::to_string).collect::<Vec<_>>());
    let outcome = match group {
        None => "it has no one to replicate to and stays a cluster of one".to_owned(),
        Some(group) => format!("they lead it to no other node (only multicast on {group} can)"),
    };
    let host = match me {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    Some(format!(
        "peers {listed} resolve to this node only ({me}, its own multicastPort): a node skips itself, so {outcome}. \
         Workers on one host (pm2, Node's cluster module) cannot reach each other through a port they share (a \
         datagram sent to it reaches only one of them): give each worker a multicastPort of its own (e.g. {} + \
         worker index) and list every worker's {host}:port in peers, or drop peers and use multicast on loopback \
         (ipv4 \"127.0.0.1\", multicastTTL 0, multicast not false).",
        me.port()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn peer(host: &str, port: u16) -> Peer {
        Peer { host: host.into(), port }
    }

    #[test]
    fn peers_resolving_to_this_node_only_are_reported() {
        let me = addr("127.0.0.1:4000");
        let peers = [peer("127.0.0.1", 4000)];
        let warning = peers_only_me(&peers, &[me], me, None).expect("a warning");
        assert!(
            warning.starts_with(r#"peers ["127.0.0.1:4000"] resolve to this node only (127.0.0.1:4000"#),
            "{warning}"
        );
        for part in ["no one to replicate to", "multicastPort of its own", "4000 + worker index", "multicastTTL 0"] {
            assert!(warning.contains(part), "{part:?} missing from: {warning}");
        }
        // Names that resolve to this node (resolution deduplicates the addresses).
        let names = [peer("localhost", 4000), peer("127.0.0.1", 4000)];
        assert!(peers_only_me(&names, &[me], me, None).is_some());
        // With multicast on, the peers are useless but the node is not alone for sure.
        let group = addr("239.255.77.77:4000");
        let warning = peers_only_me(&peers, &[me], me, Some(group)).expect("a warning");
        assert!(warning.contains("only multicast on 239.255.77.77:4000"), "{warning}");
        assert!(!warning.contains("no one to replicate to"), "{warning}");
    }

    #[test]
    fn peers_naming_another_node_or_nothing_yet_are_not_reported() {
        let me = addr("127.0.0.1:4000");
        let peers = [peer("127.0.0.1", 4000), peer("127.0.0.1", 4001)];
        // This node among others (every worker lists every worker: the right configuration).
        assert_eq!(peers_only_me(&peers, &[me, addr("127.0.0.1:4001")], me, None), None);
        // Another port, or another address with this port: another node.
        assert_eq!(peers_only_me(&peers, &[addr("127.0.0.1:4001")], me, None), None);
        assert_eq!(peers_only_me(&peers, &[addr("10.0.0.7:4000")], me, None), None);
        // Names not resolved (yet): they may name other nodes later, so nothing to say now.
        assert_eq!(peers_only_me(&[peer("app.svc", 4000)], &[], me, None), None);
    }
}
