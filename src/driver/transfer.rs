//! The TCP side of state transfers, anti-entropy syncs and fetches (what travels is decided in
//! core/sync.rs, docs/design.md §3.9): connections, frames (wire packets behind a 4-byte big-endian length) and
//! timeouts.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::clock::{now_ms, Clock};
use crate::core::sync::{self, Pull, Pulled, Source};
use crate::table::Table;
use crate::wire::{self, DecodeError, Header, Message};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that sends nothing for this long is given up on.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connecting peer must send its request within this, so stalled connections free their slot.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A request is a few KiB at most (a digest), whatever the frame limit for entries.
const MAX_REQUEST: usize = 64 * 1024;

/// One end of a sync: seals and opens frames exactly as datagrams (the node's packet numbers and
/// replay windows), and the table and clock the sync reads or merges into.
pub trait Endpoint {
    fn seal(&self, msg: &Message) -> Vec<u8>;
    fn open(&self, frame: &[u8]) -> Result<(Header, Message), DecodeError>;
    fn node_id(&self) -> u64;
    fn table(&self) -> &Table;
    fn clock(&self) -> &Clock;
    /// Largest frame accepted: one entry must fit (maxSessionBytes plus room).
    fn max_frame(&self) -> usize;
}

async fn write_frame(stream: &mut TcpStream, packet: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(4 + packet.len());
    frame.extend_from_slice(&(packet.len() as u32).to_be_bytes());
    frame.extend_from_slice(packet);
    stream.write_all(&frame).await
}

async fn read_frame(stream: &mut TcpStream, max_frame: usize, wait: Duration) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    timeout(wait, stream.read_exact(&mut len)).await??;
    let len = u32::from_be_bytes(len) as usize;
    if len > max_frame {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes is too large")));
    }
    let mut frame = vec![0u8; len];
    timeout(wait, stream.read_exact(&mut frame)).await??;
    Ok(frame)
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn open(ep: &impl Endpoint, frame: &[u8]) -> io::Result<Message> {
    ep.open(frame).map(|(_, msg)| msg).map_err(|e| invalid(e.reason()))
}

/// Answers one request (a sync or a query) on an accepted connection; `source` is read before.
pub async fn serve(ep: &impl Endpoint, mut stream: TcpStream, source: Source) -> io::Result<()> {
    let frame = read_frame(&mut stream, MAX_REQUEST, REQUEST_TIMEOUT).await?;
    let request = open(ep, &frame)?;
    let frames = sync::respond(ep.table(), ep.node_id(), request, source, now_ms()).map_err(invalid)?;
    for msg in &frames {
        write_frame(&mut stream, &ep.seal(msg)).await?;
    }
    stream.shutdown().await
}

/// Pulls a full state transfer (`full`) or the differing buckets from node `target` at `peer`,
/// merging everything into the table as it arrives.
pub async fn pull(ep: &impl Endpoint, target: u64, peer: SocketAddr, full: bool) -> io::Result<Pulled> {
    let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await??;
    stream.set_nodelay(true)?;
    let request = sync::request(ep.table(), target, full, now_ms());
    write_frame(&mut stream, &ep.seal(&request)).await?;
    let mut pull = Pull::default();
    loop {
        let frame = read_frame(&mut stream, ep.max_frame(), IDLE_TIMEOUT).await?;
        let msg = open(ep, &frame)?;
        if let Some(pulled) = pull.frame(ep.table(), ep.clock(), msg, frame.len()).map_err(invalid)? {
            return Ok(pulled);
        }
    }
}

/// Fetches what the node at `peer` holds for `sid` and merges it (an entry too large for the
/// datagram of an answer).
pub async fn fetch(ep: &impl Endpoint, peer: SocketAddr, token: u64, sid: Arc<str>) -> io::Result<()> {
    let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await??;
    stream.set_nodelay(true)?;
    write_frame(&mut stream, &ep.seal(&Message::Query { token, sid: sid.clone() })).await?;
    let frame = read_frame(&mut stream, ep.max_frame(), IDLE_TIMEOUT).await?;
    let msg = open(ep, &frame)?;
    sync::fetched(ep.table(), ep.clock(), token, &sid, msg).map_err(invalid)
}

/// TCP frames are sealed and opened by the node's packet numbers and replay windows, shared with
/// its datagrams; the crypto runs outside the node's lock.
impl Endpoint for super::Driver {
    fn seal(&self, msg: &Message) -> Vec<u8> {
        let pn = self.node.lock().next_packet_number();
        self.parts.codec.seal(wire::encode(&self.parts.header, msg), pn)
    }

    fn open(&self, frame: &[u8]) -> Result<(Header, Message), DecodeError> {
        let (header, msg, pn) = self.parts.codec.open_message(frame, self.parts.header.cluster)?;
        self.node.lock().accept(&header, pn)?;
        Ok((header, msg))
    }

    fn node_id(&self) -> u64 {
        self.parts.header.node
    }

    fn table(&self) -> &Table {
        &self.parts.table
    }

    fn clock(&self) -> &Clock {
        &self.parts.clock
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use parking_lot::Mutex;
    use tokio::net::TcpListener;

    use super::*;
    use crate::core::replay::ReplayGuard;
    use crate::core::sync::DIGEST_BUCKETS;
    use crate::crypto::Codec;
    use crate::options::Secret;
    use crate::table::Op;

    /// An endpoint of its own (a node's own has its packet numbers and replay windows).
    struct Ctx {
        header: Header,
        codec: Codec,
        next_pn: AtomicU64,
        replay: Mutex<ReplayGuard>,
        table: Table,
        clock: Clock,
    }

    impl Endpoint for Ctx {
        fn seal(&self, msg: &Message) -> Vec<u8> {
            self.codec.seal(crate::wire::encode(&self.header, msg), self.next_pn.fetch_add(1, Ordering::Relaxed))
        }
        fn open(&self, frame: &[u8]) -> Result<(Header, Message), DecodeError> {
            let (header, msg, pn) = self.codec.open_message(frame, self.header.cluster)?;
            if !self.replay.lock().accept(header.node, header.incarnation, pn) {
                return Err(DecodeError::Replay);
            }
            Ok((header, msg))
        }
        fn node_id(&self) -> u64 {
            self.header.node
        }
        fn table(&self) -> &Table {
            &self.table
        }
        fn clock(&self) -> &Clock {
            &self.clock
        }
        fn max_frame(&self) -> usize {
            4 << 20
        }
    }

    fn context(node: u64) -> Ctx {
        Ctx {
            header: Header { cluster: 5, node, incarnation: 1 },
            codec: Codec::new("transfer", &[Secret::Key([9; 32])]),
            next_pn: AtomicU64::new(1),
            replay: Mutex::new(ReplayGuard::new()),
            table: Table::new(),
            clock: Clock::new(node),
        }
    }

    fn source() -> Source {
        Source { high_seq: 77, departed: vec![(8, 9, 10)] }
    }

    async fn serve_once(ctx: Arc<Ctx>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(&*ctx, stream, source()).await.unwrap();
        });
        addr
    }

    fn fill(ctx: &Ctx, n: usize, bytes: usize) {
        let doc: Arc<str> = format!(r#"{{"pad":"{}"}}"#, "x".repeat(bytes)).into();
        for i in 0..n {
            let version = ctx.clock.tick();
            ctx.table.apply(&Op::Set {
                sid: format!("s{i}").into(),
                doc: doc.clone(),
                expires_at: now_ms() + 60_000,
                version,
            });
        }
    }

    #[tokio::test]
    async fn full_transfer_copies_everything_in_chunks() {
        let donor = Arc::new(context(1));
        fill(&donor, 2_000, 1_000);
        donor.table.apply(&Op::Destroy { sid: "s0".into(), version: donor.clock.tick() });
        let addr = serve_once(donor.clone()).await;
        let joiner = context(2);
        let pulled = pull(&joiner, 1, addr, true).await.unwrap();
        assert_eq!(pulled.entries, 2_000);
        assert_eq!(pulled.high_seq, 77);
        assert_eq!(pulled.departed, vec![(8, 9, 10)]);
        assert!(pulled.bytes > 2_000_000);
        assert_eq!(joiner.table.digest(now_ms(), 64), donor.table.digest(now_ms(), 64));
        assert_eq!(joiner.table.length(now_ms()), 1_999);
        assert!(joiner.clock.tick() > donor.table.entry("s0").unwrap().data_version);
    }

    #[tokio::test]
    async fn digest_sync_sends_only_differing_buckets() {
        let donor = Arc::new(context(1));
        fill(&donor, 1_000, 10);
        let peer = context(2);
        let addr = serve_once(donor.clone()).await;
        pull(&peer, 1, addr, true).await.unwrap();
        donor.table.apply(&Op::Set {
            sid: "new".into(),
            doc: "{}".into(),
            expires_at: now_ms() + 60_000,
            version: donor.clock.tick(),
        });
        let addr = serve_once(donor.clone()).await;
        let pulled = pull(&peer, 1, addr, false).await.unwrap();
        assert!(pulled.entries >= 1 && pulled.entries < 20, "sent {} entries", pulled.entries);
        assert!(peer.table.get("new", now_ms()).is_some());
        assert_eq!(peer.table.digest(now_ms(), DIGEST_BUCKETS), donor.table.digest(now_ms(), DIGEST_BUCKETS));
    }

    #[tokio::test]
    async fn a_query_fetches_one_entry_whatever_its_size() {
        let holder = Arc::new(context(1));
        fill(&holder, 3, 2_000_000);
        let asker = context(2);
        fetch(&asker, serve_once(holder.clone()).await, 5, "s1".into()).await.unwrap();
        assert_eq!(asker.table.entry("s1"), holder.table.entry("s1"));
        assert_eq!(asker.table.length(now_ms()), 1, "that entry only");
        fetch(&asker, serve_once(holder.clone()).await, 6, "unknown".into()).await.unwrap();
        assert_eq!(asker.table.entry("unknown"), None);
        assert!(asker.clock.tick() > holder.table.entry("s1").unwrap().data_version);
    }

    #[tokio::test]
    async fn a_request_for_another_node_is_refused() {
        let donor = Arc::new(context(1));
        let addr = {
            let donor = donor.clone();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (stream, _) = listener.accept().await.unwrap();
                assert!(serve(&*donor, stream, source()).await.is_err());
            });
            addr
        };
        assert!(pull(&context(2), 99, addr, true).await.is_err());
    }

    #[tokio::test]
    async fn a_peer_that_stalls_is_dropped() {
        let ctx = Arc::new(context(1));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _silent = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let started = std::time::Instant::now();
        assert!(serve(&*ctx, stream, source()).await.is_err());
        assert!(started.elapsed() < REQUEST_TIMEOUT + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn garbage_and_oversized_frames_are_refused() {
        let ctx = Arc::new(context(1));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..2 {
                    let (stream, _) = listener.accept().await.unwrap();
                    results.push(serve(&*ctx, stream, source()).await.is_err());
                }
                results
            })
        };
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]).await.unwrap();
        let mut s2 = TcpStream::connect(addr).await.unwrap();
        s2.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert_eq!(server.await.unwrap(), vec![true, true]);
    }
}
