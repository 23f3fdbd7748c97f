//! Writing a snapshot, crash-safe: the table is streamed into `<path>.tmp` (mode 0600), which is
//! fsynced, renamed over `<path>`, and the directory fsynced. Until the rename, the previous
//! snapshot at `<path>` is untouched; after it, the new one is complete and durable. Runs on an
//! engine thread (never the JS thread); the table is held one shard at a time (`Table::export`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use super::format::{Encoder, Header, Keys};
use crate::clock::{now_ms, Clock};
use crate::table::{ShardCopy, Table};

/// What a written snapshot holds, and what it cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Written {
    pub entries: u64,
    pub sessions: u64,
    pub bytes: u64,
    /// From the first entry to the rename done, wall clock.
    pub ms: f64,
    /// Of that, the fsyncs (file and directory).
    pub sync_ms: f64,
    /// CPU time of the threads that wrote it (Linux; 0 where unknown).
    pub cpu_ms: f64,
    /// The longest the table's lock of one shard was held (see `Table::export`), in µs.
    pub longest_hold_us: f64,
}

/// Why a snapshot was not written. The previous snapshot is still in place.
#[derive(Debug)]
pub enum WriteError {
    /// A write, fsync or rename failed: what it was doing, and the error.
    Io { stage: &'static str, error: io::Error },
    /// Stopped on purpose (the engine closes and writes its final snapshot instead).
    Cancelled,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Io { stage, error } => write!(f, "{stage}: {error}"),
            WriteError::Cancelled => f.write_str("cancelled"),
        }
    }
}

pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

/// Writes a snapshot of `table` to `path`. `cancel` stops it (the temporary file is removed);
/// `before_rename` runs once the temporary file is complete and fsynced (tests stop there to
/// play a crash). `background`: the encoding and writing run at a lower priority.
#[allow(clippy::too_many_arguments)]
pub fn write(
    path: &Path,
    header: Header,
    keys: &Keys,
    table: &Table,
    clock: &Clock,
    cancel: &AtomicBool,
    background: bool,
    before_rename: &dyn Fn(&Path) -> io::Result<()>,
) -> Result<Written, WriteError> {
    let started = Instant::now();
    let tmp = temp_path(path);
    let cpu_before = thread_cpu_ms();
    let result = write_temp(&tmp, header, keys, table, clock, cancel, background).and_then(|mut written| {
        before_rename(&tmp).map_err(|error| WriteError::Io { stage: "before the rename", error })?;
        std::fs::rename(&tmp, path).map_err(|error| WriteError::Io { stage: "renaming the temporary file", error })?;
        let dir_sync = Instant::now();
        sync_dir(path).map_err(|error| WriteError::Io { stage: "syncing the directory", error })?;
        written.sync_ms += dir_sync.elapsed().as_secs_f64() * 1000.0;
        Ok(written)
    });
    match result {
        Ok(written) => Ok(Written {
            ms: started.elapsed().as_secs_f64() * 1000.0,
            cpu_ms: written.cpu_ms + thread_cpu_ms().zip(cpu_before).map_or(0.0, |(after, before)| after - before),
            ..written
        }),
        Err(e) => {
            // Whatever is left of it is not a snapshot; the previous one stays.
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Streams the table into the temporary file and fsyncs it (`ms` left at 0). This thread copies
/// the table's shards (holding each one's lock: it must not wait behind other threads then);
/// another encodes and writes them, at a lower priority when `background`.
fn write_temp(
    tmp: &Path,
    header: Header,
    keys: &Keys,
    table: &Table,
    clock: &Clock,
    cancel: &AtomicBool,
    background: bool,
) -> Result<Written, WriteError> {
    let io = |stage: &'static str| move |error| WriteError::Io { stage, error };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io("creating the temporary file"))?;
    // An older temporary file keeps its mode: the snapshot is never readable by others.
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io("creating the temporary file"))?;
    let now = now_ms();
    let mut cancelled = false;
    let (to_encoder, copies) = mpsc::sync_channel::<ShardCopy>(4);
    let (give_back, spare) = mpsc::channel::<ShardCopy>();
    let (longest, encoded) = std::thread::scope(|scope| {
        let encoding = std::thread::Builder::new().name("session-multicast-snapshot-writer".into()).spawn_scoped(
            scope,
            move || {
                if background {
                    lower_priority();
                }
                let cpu_before = thread_cpu_ms();
                let mut encoder = Encoder::new(header, keys);
                let mut sink = Sink { file, bytes: 0, error: None };
                for copy in copies {
                    for (sid, entry) in copy.iter() {
                        encoder.push(sid, entry);
                    }
                    if !sink.drain(&mut encoder) {
                        break; // dropping `copies` stops the export
                    }
                    let _ = give_back.send(copy);
                }
                let cpu = thread_cpu_ms().zip(cpu_before).map_or(0.0, |(after, before)| after - before);
                (encoder, sink, cpu)
            },
        );
        let Ok(encoding) = encoding else { return (std::time::Duration::ZERO, None) };
        let longest = table.export(now, |copy| {
            cancelled = cancel.load(Ordering::Relaxed);
            if cancelled || to_encoder.send(copy).is_err() {
                return None;
            }
            Some(spare.try_recv().unwrap_or_default())
        });
        drop(to_encoder);
        (longest, encoding.join().ok())
    });
    if cancelled {
        return Err(WriteError::Cancelled);
    }
    let Some((mut encoder, mut sink, encode_cpu_ms)) = encoded else {
        return Err(WriteError::Io { stage: "writing", error: io::Error::other("the writing thread could not run") });
    };
    encoder.finish(table.clear_mark(), clock.high_water(), now_ms());
    sink.drain(&mut encoder);
    if let Some(error) = sink.error.take() {
        return Err(WriteError::Io { stage: "writing", error });
    }
    let sync = Instant::now();
    sink.file.sync_all().map_err(io("syncing the temporary file"))?;
    Ok(Written {
        entries: encoder.entries(),
        sessions: encoder.sessions(),
        bytes: sink.bytes,
        ms: 0.0,
        sync_ms: sync.elapsed().as_secs_f64() * 1000.0,
        cpu_ms: encode_cpu_ms,
        longest_hold_us: longest.as_secs_f64() * 1e6,
    })
}

/// Lowers the calling thread's scheduling priority (nice 10; Linux, where a nice value is per
/// thread): when the JS thread or the network thread compete with it for a core, they come
/// first. Best effort: nothing changes where it is refused.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls about the calling thread's own id, with no memory passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// The temporary file, and what was written to it.
struct Sink {
    file: File,
    bytes: u64,
    /// The first write error; nothing is written after it.
    error: Option<io::Error>,
}

impl Sink {
    /// Writes what the encoder has ready; false once a write failed.
    fn drain(&mut self, encoder: &mut Encoder) -> bool {
        if self.error.is_some() {
            return false;
        }
        if let Some(out) = encoder.take() {
            if let Err(e) = self.file.write_all(out) {
                self.error = Some(e);
                return false;
            }
            self.bytes += out.len() as u64;
            encoder.taken();
        }
        true
    }
}

/// Makes the rename durable: fsync of the directory that holds `path`.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// CPU time of the calling thread so far, in ms (Linux: /proc/thread-self/schedstat).
fn thread_cpu_ms() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e6)
}
