//! Loading the snapshot at start, before the node joins: into a table of its own, which the
//! engine starts with only when the whole file checked out. A file that does not is renamed
//! aside (never deleted), and the node starts without it.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use parking_lot::Mutex;

use super::format::{self, DecodeError, End, FormatError, Header, Keys, KIND_END, KIND_ENTRIES};
use crate::table::Table;

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
    let table = Table::new();
    match read_into(&table, file, len, cluster, keys, now) {
        Ok((header, end, figures)) => {
            table.merge_clear_mark(end.clear_mark);
            Loaded::Loaded(Summary {
                table,
                header,
                entries: end.entries,
                kept: figures.kept.load(Ordering::Relaxed),
                sessions: figures.sessions.load(Ordering::Relaxed),
                clock: figures.clock.load(Ordering::Relaxed).max(end.clock).max(end.clear_mark.hlc),
                bytes: len,
                ms: started.elapsed().as_secs_f64() * 1000.0,
            })
        }
        Err(DecodeError::Format(e)) => reject(path, Rejection::Format(e)),
        Err(DecodeError::Io(e)) => reject(path, Rejection::Unreadable(e)),
    }
}

/// What the loading threads counted.
#[derive(Default)]
struct Figures {
    entries: AtomicU64,
    kept: AtomicU64,
    sessions: AtomicU64,
    clock: AtomicU64,
}

/// Reads the file into `table`: this thread reads the frames, and one thread per core checks,
/// decodes and merges them (the bulk of the work), so a large snapshot loads in parallel.
fn read_into(
    table: &Table,
    file: File,
    len: u64,
    cluster: &str,
    keys: &Keys,
    now: u64,
) -> Result<(Header, End, Figures), DecodeError> {
    let (header, opener, mut frames) = format::open(BufReader::with_capacity(1 << 20, file), len, cluster, keys)?;
    let figures = Figures::default();
    let failed: Mutex<Option<FormatError>> = Mutex::new(None);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    let (work, jobs) = mpsc::sync_channel::<(u64, Vec<u8>)>(workers * 2);
    let jobs = Mutex::new(jobs);
    let (give_back, spare) = mpsc::channel::<Vec<u8>>();
    let end = std::thread::scope(|scope| {
        for _ in 0..workers {
            let give_back = give_back.clone();
            let (jobs, opener, figures, failed) = (&jobs, &opener, &figures, &failed);
            scope.spawn(move || loop {
                let job = jobs.lock().recv();
                let Ok((index, mut body)) = job else { return };
                if failed.lock().is_none() {
                    let (mut clock, mut kept, mut sessions) = (0, 0, 0);
                    let merged = opener.open(index, KIND_ENTRIES, &mut body).and_then(|payload| {
                        format::decode_entries(payload, |sid, entry| {
                            clock = entry.newest_version().hlc.max(clock);
                            if entry.is_kept(now) {
                                kept += 1;
                                sessions += u64::from(entry.is_visible(now));
                                table.restore(sid, entry);
                            }
                        })
                    });
                    match merged {
                        Ok(n) => {
                            figures.entries.fetch_add(n, Ordering::Relaxed);
                            figures.kept.fetch_add(kept, Ordering::Relaxed);
                            figures.sessions.fetch_add(sessions, Ordering::Relaxed);
                            figures.clock.fetch_max(clock, Ordering::Relaxed);
                        }
                        Err(e) => drop(failed.lock().get_or_insert(e)),
                    }
                }
                let _ = give_back.send(body);
            });
        }
        drop(give_back);
        let mut body = Vec::new();
        let end = loop {
            if let Some(e) = failed.lock().clone() {
                break Err(e.into());
            }
            match frames.next(&mut body) {
                Ok((index, KIND_ENTRIES)) => {
                    let full = std::mem::replace(&mut body, spare.try_recv().unwrap_or_default());
                    if work.send((index, full)).is_err() {
                        break Err(FormatError::Corrupted("loading stopped").into());
                    }
                }
                Ok((index, KIND_END)) => break frames.end(&opener, index, &mut body).map_err(DecodeError::from),
                Ok(_) => break Err(FormatError::Corrupted("frame kind").into()),
                Err(e) => break Err(e),
            }
        };
        drop(work); // the workers finish what was sent, then stop
        end
    });
    if let Some(e) = failed.into_inner() {
        return Err(e.into());
    }
    let end = end?;
    if end.entries != figures.entries.load(Ordering::Relaxed) {
        return Err(FormatError::Corrupted("entry count").into());
    }
    Ok((header, end, figures))
}

/// Moves a rejected file aside, to `<path>.rejected-<epoch ms>`.
fn reject(path: &Path, reason: Rejection) -> Loaded {
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".rejected-{}", crate::clock::now_ms()));
    let aside = PathBuf::from(aside);
    let moved = std::fs::rename(path, &aside).map(|()| aside);
    Loaded::Rejected { reason, moved }
}
