//! State transfer and anti-entropy over TCP (docs/design.md §3.9).
//!
//! A node asks a peer for `SyncRequest(Full)` when it joins, or `SyncRequest(Digest)` with its
//! per-bucket digests to repair what multicast lost. The peer answers with `SyncChunk` frames
//! (the entries of every bucket, or of the buckets that differ), then `SyncEnd` carrying its
//! sequence number when its snapshot began: everything it sent before that is now covered.
//! Frames are wire packets behind a 4-byte big-endian length.
//!
//! A `Query` for one sid gets one `Answer` frame with the entry, whatever its size: how a node
//! fetches an entry too large for the datagram of a UDP answer (see miss.rs).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::clock::{now_ms, Clock};
use crate::link::Link;
use crate::miss;
use crate::table::{Entry, Table};
use crate::wire::{Message, Reply, SyncMode};

/// Buckets of the anti-entropy digest: 8 KiB of digest, and a difference in one session costs
/// a transfer of about 1/1024 of the table.
pub const DIGEST_BUCKETS: usize = 1024;
/// Target size of one `SyncChunk` frame.
const CHUNK_BYTES: usize = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A peer that sends nothing for this long is given up on.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connecting peer must send its request within this, so stalled connections free their slot.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What both ends of a sync need to know.
pub struct SyncContext {
    pub table: Arc<Table>,
    pub clock: Arc<Clock>,
    /// Seals and opens every frame, exactly as datagrams.
    pub link: Arc<Link>,
    /// Largest frame accepted: one entry must fit (maxSessionBytes plus room).
    pub max_frame: usize,
}

impl SyncContext {
    /// Merges an entry from another node, as a replicated write.
    pub fn merge(&self, sid: &str, entry: &Entry) {
        self.clock.observe(entry.newest_version());
        self.table.merge(sid, entry);
    }
}

/// What a finished pull brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub entries: usize,
    pub bytes: usize,
    /// The peer's sequence number when its snapshot began.
    pub high_seq: u64,
    /// Senders the peer remembers that are not live members (see `Message::SyncEnd`).
    pub departed: Vec<(u64, u64, u64)>,
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

/// Answers one sync request on an accepted connection. `high_seq` is read before the snapshot;
/// `departed` goes along in `SyncEnd`.
pub async fn serve(
    ctx: &SyncContext,
    mut stream: TcpStream,
    high_seq: u64,
    departed: Vec<(u64, u64, u64)>,
) -> io::Result<()> {
    // A request is a few KiB at most (a digest), whatever the frame limit for entries.
    let frame = read_frame(&mut stream, 64 * 1024, REQUEST_TIMEOUT).await?;
    let (_, request) = ctx.link.open(&frame).map_err(|e| invalid(e.reason()))?;
    let (target, mode) = match request {
        Message::SyncRequest { target, mode } => (target, mode),
        Message::Query { token, sid } => {
            let answer = Message::Answer { token, reply: miss::reply(&ctx.table, sid, now_ms()) };
            write_frame(&mut stream, &ctx.link.seal(&answer)).await?;
            return stream.shutdown().await;
        }
        _ => return Err(invalid("expected a sync request or a query")),
    };
    if target != ctx.link.header().node {
        return Err(invalid("a sync request meant for another node"));
    }
    let now = now_ms();
    let wanted = match mode {
        SyncMode::Full => None,
        SyncMode::Digest(theirs) if theirs.len() == DIGEST_BUCKETS => {
            let ours = ctx.table.digest(now, DIGEST_BUCKETS);
            Some(ours.iter().zip(&theirs).map(|(a, b)| a != b).collect::<Vec<bool>>())
        }
        SyncMode::Digest(_) => return Err(invalid("digest of the wrong size")),
    };
    let mut batches = Vec::new();
    ctx.table.snapshot(now, wanted.as_deref().map(|w| (w, DIGEST_BUCKETS)), CHUNK_BYTES, |b| batches.push(b));
    let clear_mark = ctx.table.clear_mark();
    if batches.is_empty() {
        batches.push(Vec::new()); // the clear watermark travels even with no entries
    }
    for entries in batches {
        let chunk = ctx.link.seal(&Message::SyncChunk { clear_mark, entries });
        write_frame(&mut stream, &chunk).await?;
    }
    write_frame(&mut stream, &ctx.link.seal(&Message::SyncEnd { high_seq, departed })).await?;
    stream.shutdown().await
}

/// Pulls a full state transfer (`full`) or the differing buckets from node `target` at `peer`,
/// merging everything into the table as it arrives.
pub async fn pull(ctx: &SyncContext, target: u64, peer: SocketAddr, full: bool) -> io::Result<Pulled> {
    let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await??;
    stream.set_nodelay(true)?;
    let mode = if full { SyncMode::Full } else { SyncMode::Digest(ctx.table.digest(now_ms(), DIGEST_BUCKETS)) };
    write_frame(&mut stream, &ctx.link.seal(&Message::SyncRequest { target, mode })).await?;
    let mut pulled = Pulled { entries: 0, bytes: 0, high_seq: 0, departed: Vec::new() };
    loop {
        let frame = read_frame(&mut stream, ctx.max_frame, IDLE_TIMEOUT).await?;
        pulled.bytes += frame.len();
        match ctx.link.open(&frame).map_err(|e| invalid(e.reason()))?.1 {
            Message::SyncChunk { clear_mark, entries } => {
                ctx.clock.observe(clear_mark);
                ctx.table.merge_clear_mark(clear_mark);
                for (sid, entry) in &entries {
                    ctx.merge(sid, entry);
                }
                pulled.entries += entries.len();
            }
            Message::SyncEnd { high_seq, departed } => {
                pulled.high_seq = high_seq;
                pulled.departed = departed;
                return Ok(pulled);
            }
            _ => return Err(invalid("unexpected message in a sync")),
        }
    }
}

/// Fetches what the node at `peer` holds for `sid` and merges it (an entry too large for the
/// datagram of an answer).
pub async fn fetch(ctx: &SyncContext, peer: SocketAddr, token: u64, sid: Arc<str>) -> io::Result<()> {
    let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await??;
    stream.set_nodelay(true)?;
    write_frame(&mut stream, &ctx.link.seal(&Message::Query { token, sid: sid.clone() })).await?;
    let frame = read_frame(&mut stream, ctx.max_frame, IDLE_TIMEOUT).await?;
    match ctx.link.open(&frame).map_err(|e| invalid(e.reason()))?.1 {
        Message::Answer { token: answered, reply } if answered == token => match reply {
            Reply::Entry { sid: held, entry } if held == sid => ctx.merge(&held, &entry),
            Reply::Nothing => {}
            _ => return Err(invalid("an answer about something else")),
        },
        _ => return Err(invalid("expected the answer to the query")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Codec;
    use crate::options::Secret;
    use crate::table::Op;
    use crate::wire::Header;
    use tokio::net::TcpListener;

    fn context(node: u64) -> SyncContext {
        let codec = Codec::new("transfer", &[Secret::Key([9; 32])]);
        SyncContext {
            table: Arc::new(Table::new()),
            clock: Arc::new(Clock::new(node)),
            link: Arc::new(Link::new(Header { cluster: 5, node, incarnation: 1 }, codec)),
            max_frame: 4 << 20,
        }
    }

    async fn serve_once(ctx: Arc<SyncContext>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve(&ctx, stream, 77, vec![(8, 9, 10)]).await.unwrap();
        });
        addr
    }

    fn fill(ctx: &SyncContext, n: usize, bytes: usize) {
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
                assert!(serve(&donor, stream, 0, Vec::new()).await.is_err());
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
        assert!(serve(&ctx, stream, 0, Vec::new()).await.is_err());
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
                    results.push(serve(&ctx, stream, 0, Vec::new()).await.is_err());
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
