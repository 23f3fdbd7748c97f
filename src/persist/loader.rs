//! Loading the snapshot at start, before the node joins: into a table of its own, which the
//! engine starts with only when the whole file checked out. A file that does not is renamed
//! aside (never deleted), and the node starts without it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use parking_lot::Mutex;

use super::format::{self, DecodeError, End, FormatError, Header, Keys, KIND_END, KIND_ENTRIES};
use crate::table::{Entry, Table};

/// What the load found.
pub enum Loaded {
    /// No snapshot at the path (a first start).
    Missing,
    Loaded(Summary),
    /// A file that is not a snapshot this node can load: why, and where it was moved.
    Rejected {
        reason: Rejection,
        moved: Result<PathBuf, io::Error>,
    },
}

/// A loaded snapshot: the table, and figures for the log and `stats()`.
pub struct Summary {
    pub table: Table,
    pub header: Header,
    /// Records in the file.
    pub entries: u64,
    /// Entries merged (the others had expired, or were tombstones past their retention).
    pub kept: u64,
    /// Live sessions among the kept entries.
    pub sessions: u64,
    /// The highest clock value the snapshot names: the node's clock starts above it.
    pub clock: u64,
    pub bytes: u64,
    pub ms: f64,
}

/// Why a file was rejected.
#[derive(Debug)]
pub enum Rejection {
    Format(FormatError),
    /// It could not be read (permissions, a directory, an I/O error).
    Unreadable(io::Error),
}

impl Rejection {
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Format(e) => e.kind(),
            Rejection::Unreadable(_) => "unreadable",
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Rejection::Format(e) => e.reason(),
            Rejection::Unreadable(e) => format!("unreadable: {e}"),
        }
    }
}

/// Loads the snapshot at `path` into a new table, dropping what is purgeable at `now`.
pub fn load(path: &Path, cluster: &str, keys: &Keys, now: u64) -> Loaded {
    let started = Instant::now();
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) => return reject(path, Rejection::Unreadable(e)),
    };
    let len = match file.metadata() {
        Ok(meta) if meta.is_dir() => return reject(path, Rejection::Unreadable(io::Error::other("it is a directory"))),
        Ok(meta) => meta.len(),
        Err(e) => return reject(path, Rejection::Unreadable(e)),
    };
    let mut table = Table::new();
    match read_into(&mut table, file, len, cluster, keys, now) {
        Ok((header, end, counts)) => {
            table.merge_clear_mark(end.clear_mark);
            Loaded::Loaded(Summary {
                table,
                header,
                entries: end.entries,
                kept: counts.kept,
                sessions: counts.sessions,
                clock: counts.clock.max(end.clock).max(end.clear_mark.hlc),
                bytes: len,
                ms: started.elapsed().as_secs_f64() * 1000.0,
            })
        }
        Err(DecodeError::Format(e)) => reject(path, Rejection::Format(e)),
        Err(DecodeError::Io(e)) => reject(path, Rejection::Unreadable(e)),
    }
}

/// Records handed to a merging thread at once, at most: enough for several per shard of the table
/// (`table::SHARDS`), so that merging them shard by shard finds each shard's memory in cache. A
/// batch is a sixteenth of the file's records, at least `MERGE_BATCH_MIN`: merging starts sooner.
const MERGE_BATCH: usize = 1 << 16;
const MERGE_BATCH_MIN: usize = 1 << 12;

/// What the decoding counted.
#[derive(Default)]
struct Counts {
    entries: u64,
    kept: u64,
    sessions: u64,
    clock: u64,
}

/// The records of one frame that are kept, decoded, on their way to a thread that merges them.
#[derive(Default)]
struct Batch {
    sids: String,
    ends: Vec<usize>,
    entries: Vec<Entry>,
}

impl Batch {
    fn push(&mut self, sid: &str, entry: Entry) {
        self.sids.push_str(sid);
        self.ends.push(self.sids.len());
        self.entries.push(entry);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Merges the records into `table` shard by shard, leaving the batch empty.
    fn merge_into(&mut self, table: &Table, order: &mut Vec<(u32, u32)>) {
        let sid = |i: usize| &self.sids[if i == 0 { 0 } else { self.ends[i - 1] }..self.ends[i]];
        order.clear();
        order.extend((0..self.len()).map(|i| (table.shard_of(sid(i)) as u32, i as u32)));
        order.sort_unstable();
        let entries = &mut self.entries;
        for run in order.chunk_by(|a, b| a.0 == b.0) {
            let records = run
                .iter()
                .map(|&(_, i)| (sid(i as usize), std::mem::replace(&mut entries[i as usize], Entry::absent())));
            table.restore(run[0].0 as usize, records);
        }
        self.sids.clear();
        self.ends.clear();
        self.entries.clear();
    }
}

/// Decodes the records of a checked frame's payload: the kept ones into `batch`.
fn decode_payload(payload: &[u8], now: u64, counts: &mut Counts, batch: &mut Batch) -> Result<(), FormatError> {
    let (mut clock, mut kept, mut sessions) = (counts.clock, 0, 0);
    let records = format::decode_entries(payload, |sid, entry| {
        clock = entry.newest_version().hlc.max(clock);
        if entry.is_kept(now) {
            kept += 1;
            sessions += u64::from(entry.is_visible(now));
            batch.push(sid, entry);
        }
    })?;
    counts.entries += records;
    counts.kept += kept;
    counts.sessions += sessions;
    counts.clock = clock;
    Ok(())
}

/// A frame read and checked (decrypted, when sealed).
enum Frame {
    /// An entries frame: its payload is `body[..payload]`.
    Entries {
        body: Vec<u8>,
        payload: usize,
    },
    End(End),
}

/// Frames of a sealed file read and decrypted ahead of the decoding, at most.
const FRAMES_AHEAD: usize = 2;

/// Reads the file into `table`. The calling thread decodes the frames: the sessions' memory is
/// allocated there (in Node, the JS thread, whose allocator arena grows in large steps, where a
/// new thread's grows one page per system call). Other threads merge the decoded records into
/// the table (hashing, the table's memory), so the two halves run on two cores at once. A
/// sealed file is read and decrypted by one more thread, ahead of the decoding: decryption is a
/// third of its load's work (a plaintext file's checksum is too little work for a thread of its
/// own, which made its load slower). The table is sized from the first frame beforehand.
fn read_into(
    table: &mut Table,
    file: File,
    len: u64,
    cluster: &str,
    keys: &Keys,
    now: u64,
) -> Result<(Header, End, Counts), DecodeError> {
    // Unbuffered: a frame's body is read straight into its buffer (a buffered reader would copy
    // half the file once more); its 5-byte head costs one more system call per megabyte.
    let (header, opener, mut frames) = format::open(file, len, cluster, keys)?;
    let mut counts = Counts::default();
    let mut body = Vec::new();
    let mut first = Batch::default();
    let mut frame = Some(frames.next(&mut body)?);
    let mut batch_len = MERGE_BATCH;
    if let Some((index, KIND_ENTRIES)) = frame {
        decode_payload(opener.open(index, KIND_ENTRIES, &mut body)?, now, &mut counts, &mut first)?;
        // The first frame's records per byte, over the whole file.
        let estimate = u128::from(counts.entries) * u128::from(len) / (body.len().max(1) as u128);
        let estimate = usize::try_from(estimate).unwrap_or(usize::MAX);
        table.reserve(estimate);
        batch_len = (estimate / 16).clamp(MERGE_BATCH_MIN, MERGE_BATCH);
        frame = None;
    }
    let sealed = opener.is_sealed();
    let opener = &opener;
    // The next frame, read into `spare` (or the one read already, in its own body), checked.
    let mut read_frame = move |mut spare: Vec<u8>| -> Result<Frame, DecodeError> {
        let (index, kind) = match frame.take() {
            Some(read) => {
                spare = std::mem::take(&mut body);
                read
            }
            None => frames.next(&mut spare)?,
        };
        match kind {
            KIND_ENTRIES => {
                let payload = opener.open(index, KIND_ENTRIES, &mut spare)?.len();
                Ok(Frame::Entries { body: spare, payload })
            }
            KIND_END => Ok(Frame::End(frames.end(opener, index, &mut spare)?)),
            _ => Err(FormatError::Corrupted("frame kind").into()),
        }
    };
    let table = &*table;
    let mergers = std::thread::available_parallelism().map_or(2, |n| n.get()).saturating_sub(1).clamp(1, 3);
    let (work, batches) = mpsc::sync_channel::<Batch>(mergers * 2);
    let batches = Mutex::new(batches);
    let (give_back, spare) = mpsc::channel::<Batch>();
    let end = std::thread::scope(|scope| {
        for _ in 0..mergers {
            let (batches, give_back) = (&batches, give_back.clone());
            scope.spawn(move || merge_batches(batches, table, |batch| drop(give_back.send(batch))));
        }
        let end = if sealed {
            let (read, opened) = mpsc::sync_channel::<Result<Frame, DecodeError>>(FRAMES_AHEAD);
            let (spent, spare_bodies) = mpsc::channel::<Vec<u8>>();
            // Stops at the end frame, at its first fault (sent on), or once the decoding stopped
            // (which drops `opened`).
            scope.spawn(move || loop {
                let frame = read_frame(spare_bodies.try_recv().unwrap_or_default());
                let last = !matches!(frame, Ok(Frame::Entries { .. }));
                if read.send(frame).is_err() || last {
                    return;
                }
            });
            let next_frame = move |body| {
                let _ = spent.send(body);
                opened.recv().map_err(|_| stopped())?
            };
            decode_frames(next_frame, first, batch_len, now, &mut counts, &work, &spare)
        } else {
            decode_frames(read_frame, first, batch_len, now, &mut counts, &work, &spare)
        };
        drop(work); // the mergers finish what was sent, then stop
        end
    })?;
    if end.entries != counts.entries {
        return Err(FormatError::Corrupted("entry count").into());
    }
    Ok((header, end, counts))
}

/// Merges the batches that `batches` gives, each handed to `give_back` once merged, until it is
/// empty and closed. Several threads merge from one `batches` at once: the lock is held only to
/// take a batch, never while merging it.
fn merge_batches(batches: &Mutex<mpsc::Receiver<Batch>>, table: &Table, give_back: impl Fn(Batch)) {
    let mut order = Vec::new();
    loop {
        let next = batches.lock().recv();
        let Ok(mut batch) = next else { return };
        batch.merge_into(table, &mut order);
        give_back(batch);
    }
}

fn stopped() -> DecodeError {
    FormatError::Corrupted("loading stopped").into()
}

/// Decodes the frames that `next_frame` returns (it takes back each decoded frame's body) into
/// batches for the mergers, from the batch `first`, up to the end frame.
fn decode_frames(
    mut next_frame: impl FnMut(Vec<u8>) -> Result<Frame, DecodeError>,
    first: Batch,
    batch_len: usize,
    now: u64,
    counts: &mut Counts,
    work: &mpsc::SyncSender<Batch>,
    spare: &mpsc::Receiver<Batch>,
) -> Result<End, DecodeError> {
    let mut batch = first;
    let mut body = Vec::new();
    loop {
        match next_frame(body)? {
            Frame::Entries { body: read, payload } => {
                decode_payload(&read[..payload], now, counts, &mut batch)?;
                body = read;
                if batch.len() >= batch_len {
                    let next = spare.try_recv().unwrap_or_default();
                    work.send(std::mem::replace(&mut batch, next)).map_err(|_| stopped())?;
                }
            }
            Frame::End(end) => {
                work.send(batch).map_err(|_| stopped())?;
                return Ok(end);
            }
        }
    }
}

/// Moves a rejected file aside, to `<path>.rejected-<epoch ms>`.
fn reject(path: &Path, reason: Rejection) -> Loaded {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".rejected-{}", crate::clock::now_ms()));
    let aside = PathBuf::from(aside);
    let moved = std::fs::rename(path, &aside).map(|()| aside);
    Loaded::Rejected { reason, moved }
}

#[cfg(test)]
mod tests;
