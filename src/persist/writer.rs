//! Writing a snapshot, crash-safe: the table is streamed into the spare file `<path>.prev` (mode
//! 0600), which is fsynced, swapped with `<path>` in one rename, and the directory fsynced. Until
//! the rename, the snapshot at `<path>` is untouched; after it, the new one is complete and
//! durable, and `<path>.prev` holds the one before. The next snapshot overwrites that file in
//! place: its blocks are allocated already. A periodic snapshot skips the page cache (`O_DIRECT`,
//! Linux), which costs the kernel less than filling and writing back a gigabyte of cache; the last
//! one, at close, goes through it, so that the next start reads it from memory
//! (docs/persistence.md "Writing a snapshot"). Runs on an engine thread (never the JS thread);
//! the table is held one shard at a time (`Table::export`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::format::{Encoder, Header, Keys};
use super::pace::Pacer;
use crate::clock::{now_ms, Clock};
use crate::table::Table;

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
    /// CPU time of the thread that wrote it, fsyncs included.
    pub cpu_ms: f64,
    /// The longest the table's lock of one shard was held (see `Table::export`), in µs.
    pub longest_hold_us: f64,
    /// Of `ms`, the pauses of a periodic snapshot (pace.rs): the rest was its work.
    pub paused_ms: f64,
    /// Written over the previous snapshot's file, rather than into a new one.
    pub in_place: bool,
    /// Written with `O_DIRECT` from start to end (a periodic snapshot, where the file system
    /// takes it).
    pub direct: bool,
}

/// Why a snapshot was not written. The previous snapshot is still in place.
#[derive(Debug)]
pub enum WriteError {
    /// A write, fsync or rename failed: what it was doing, and the error.
    Io { stage: &'static str, error: io::Error },
    /// Stopped on purpose (the engine closes and writes its final snapshot instead).
    Cancelled,
    /// A background snapshot starved (`keep_going`): stopped, to be written again at nice 10.
    Starved,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Io { stage, error } => write!(f, "{stage}: {error}"),
            WriteError::Cancelled => f.write_str("cancelled"),
            WriteError::Starved => f.write_str("starved of CPU time"),
        }
    }
}

/// The file a snapshot is written into before it replaces `path`; between snapshots, the
/// previous snapshot (never loaded: only `path` is).
pub fn spare_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".prev");
    PathBuf::from(name)
}

/// Writes a snapshot of `table` to `path`, on the calling thread. `cancel` stops it (the spare
/// file is removed); `before_rename` runs once the spare file is complete and fsynced (tests
/// stop there to play a crash). `within`: a periodic snapshot, whose work is spread out to end
/// within that time when it can (pace.rs), written with `O_DIRECT` (see `Sink`).
#[allow(clippy::too_many_arguments)]
pub fn write(
    path: &Path,
    header: Header,
    keys: &Keys,
    table: &Table,
    clock: &Clock,
    cancel: &AtomicBool,
    within: Option<Duration>,
    before_rename: &dyn Fn(&Path) -> io::Result<()>,
) -> Result<Written, WriteError> {
    let started = Instant::now();
    let spare = spare_path(path);
    let cpu_before = thread_cpu();
    let result = write_spare(&spare, header, keys, table, clock, cancel, within).and_then(|mut written| {
        before_rename(&spare).map_err(|error| WriteError::Io { stage: "before the rename", error })?;
        swap(&spare, path).map_err(|error| WriteError::Io { stage: "renaming the new snapshot", error })?;
        let dir_sync = Instant::now();
        sync_dir(path).map_err(|error| WriteError::Io { stage: "syncing the directory", error })?;
        written.sync_ms += dir_sync.elapsed().as_secs_f64() * 1000.0;
        Ok(written)
    });
    match result {
        Ok(written) => Ok(Written {
            ms: started.elapsed().as_secs_f64() * 1000.0,
            cpu_ms: thread_cpu().saturating_sub(cpu_before).as_secs_f64() * 1000.0,
            ..written
        }),
        Err(e) => {
            // Whatever is left of it is not a snapshot; the previous one stays.
            let _ = std::fs::remove_file(&spare);
            Err(e)
        }
    }
}

/// Streams the table into the spare file and fsyncs it (`ms` and `cpu_ms` left at 0: `write`
/// measures them). One thread copies a shard of the table (holding its lock for that copy only),
/// encodes the copy and writes it, shard after shard: on a machine of two cores, the other core
/// stays free for the JS thread.
fn write_spare(
    spare: &Path,
    header: Header,
    keys: &Keys,
    table: &Table,
    clock: &Clock,
    cancel: &AtomicBool,
    within: Option<Duration>,
) -> Result<Written, WriteError> {
    let io = |stage: &'static str| move |error| WriteError::Io { stage, error };
    let (file, in_place) = open_spare(spare).map_err(io("opening the spare file"))?;
    let now = now_ms();
    let (mut cancelled, mut starved) = (false, false);
    let mut encoder = Encoder::new(header, keys);
    let mut sink = Sink::new(file, within.is_some());
    let mut pacer = within.map(|within| Pacer::new(Instant::now(), within));
    let mut paused = Duration::ZERO;
    let longest = table.export(now, |copy| {
        cancelled = cancel.load(Ordering::Relaxed);
        if cancelled {
            return None;
        }
        starved = !keep_going();
        if starved {
            return None;
        }
        for (sid, entry) in copy.iter() {
            encoder.push(sid, entry);
        }
        if !sink.drain(&mut encoder) {
            return None;
        }
        if let Some(pacer) = &mut pacer {
            let time = pacer.pause(Instant::now(), copy.done());
            paused += time;
            cancelled = !pause(time, cancel);
        }
        (!cancelled).then_some(copy)
    });
    if cancelled {
        return Err(WriteError::Cancelled);
    }
    if starved {
        return Err(WriteError::Starved);
    }
    encoder.finish(table.clear_mark(), clock.high_water(), now_ms());
    sink.finish(&mut encoder);
    if let Some(error) = sink.error.take() {
        return Err(WriteError::Io { stage: "writing", error });
    }
    // What is left of the older, longer snapshot goes.
    sink.file.set_len(sink.bytes).map_err(io("writing"))?;
    if let Some(pacer) = &mut pacer {
        // The last chunk too, so that the fsync has only the file's metadata left to write.
        sink.write_back_rest().map_err(io("writing"))?;
        let time = pacer.pause(Instant::now(), 1.0);
        paused += time;
        if !pause(time, cancel) {
            return Err(WriteError::Cancelled);
        }
    }
    let sync = Instant::now();
    sink.file.sync_all().map_err(io("syncing the new snapshot"))?;
    Ok(Written {
        entries: encoder.entries(),
        sessions: encoder.sessions(),
        bytes: sink.bytes,
        ms: 0.0,
        sync_ms: sync.elapsed().as_secs_f64() * 1000.0,
        cpu_ms: 0.0,
        longest_hold_us: longest.as_secs_f64() * 1e6,
        paused_ms: paused.as_secs_f64() * 1000.0,
        in_place,
        direct: sink.direct.is_some(),
    })
}

/// A periodic snapshot's thread runs as `SCHED_IDLE` (Linux): any other thread that wants a core
/// (the JS thread, the network thread, the kernel's) takes it from the snapshot at once, where a
/// nice value only weighs their shares. A snapshot that gets starved that way (a core for less
/// than a quarter of the time it wanted one, over a second or more: every core busy) stops
/// (`keep_going`), and is written again on a new thread at nice 10 (`run_after_starving`), so
/// that it ends: a thread cannot leave `SCHED_IDLE` without `CAP_SYS_NICE` (or an `RLIMIT_NICE`
/// of 20), which a process not run by root seldom has. Best effort: nothing changes where it is
/// refused, or elsewhere than Linux.
pub(super) fn run_in_background() {
    #[cfg(target_os = "linux")]
    // SAFETY: a system call about the calling thread (pid 0), with a parameter that outlives it.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 {
            BACKGROUND.set(Some(Background {
                since: Instant::now(),
                cpu: thread_cpu(),
                waited: Duration::ZERO,
                run_queue: run_queue_time(),
            }));
        }
    }
}

#[cfg(target_os = "linux")]
thread_local! {
    /// `None` unless this thread runs as `SCHED_IDLE`.
    static BACKGROUND: std::cell::Cell<Option<Background>> = const { std::cell::Cell::new(None) };
}

#[cfg(target_os = "linux")]
#[derive(Clone, Copy)]
struct Background {
    /// When the thread became `SCHED_IDLE`, and its CPU time then.
    since: Instant,
    cpu: Duration,
    /// Time since spent waiting on purpose (`pause`): not starvation.
    waited: Duration,
    /// The thread's `run_queue_time` then, where the kernel counts it.
    run_queue: Option<Duration>,
}

/// How long the calling thread has been runnable but waiting for a core, since it began
/// (`/proc/thread-self/schedstat`: time on a core, that wait, turns on a core); `None` where the
/// kernel does not count it (no `CONFIG_SCHED_INFO`: the turns read 0).
#[cfg(target_os = "linux")]
fn run_queue_time() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().skip(1).map(|field| field.parse::<u64>().ok());
    let (waiting, turns) = (fields.next()??, fields.next()??);
    (turns > 0).then(|| Duration::from_nanos(waiting))
}

/// Counts `time` this thread waited on purpose, out of its starvation (`keep_going`).
fn waited(time: Duration) {
    #[cfg(target_os = "linux")]
    if let Some(b) = BACKGROUND.get() {
        BACKGROUND.set(Some(Background { waited: b.waited + time, ..b }));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = time;
}

/// Whether a background snapshot that wanted a core for `wanted` and got `cpu` of it is starved.
#[cfg(target_os = "linux")]
fn starved(wanted: Duration, cpu: Duration) -> bool {
    wanted >= Duration::from_secs(1) && cpu < wanted / 4
}

/// Pauses the snapshot for `time`, in steps short enough that `cancel` (a close) does not wait
/// for it: false once cancelled.
pub(super) fn pause(time: Duration, cancel: &AtomicBool) -> bool {
    const STEP: Duration = Duration::from_millis(10);
    let until = Instant::now() + time;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let slept = Instant::now();
        std::thread::sleep(left.min(STEP));
        waited(slept.elapsed());
    }
}

/// A snapshot written again after a starved one (`WriteError::Starved`), on a new thread: at
/// nice 10, its share of a busy core is weighed against the others' (110/1134 next to one thread
/// at nice 0), where `SCHED_IDLE`'s is next to nothing (3/1027).
pub(super) fn run_after_starving() {
    #[cfg(target_os = "linux")]
    // SAFETY: a system call about the calling thread only, with no memory passed.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, libc::syscall(libc::SYS_gettid) as libc::id_t, 10);
    }
}

/// Called between two shards: false once a `SCHED_IDLE` thread is starved. Also keeps a periodic
/// snapshot off the JS thread's core (off_core.rs), as each `write` does.
pub(super) fn keep_going() -> bool {
    super::off_core::check();
    #[cfg(target_os = "linux")]
    if let Some(b) = BACKGROUND.get() {
        let cpu = thread_cpu().saturating_sub(b.cpu);
        return !match (b.run_queue, run_queue_time()) {
            // Time blocked on the disk (a write with `O_DIRECT`, a write-back) is not wanting a core.
            (Some(then), Some(now)) => starved(cpu + now.saturating_sub(then), cpu),
            // Else the wall clock, but for the pauses: a snapshot that waits for its disk a lot can
            // be taken for starved, and is then written again at nice 10.
            _ => starved(b.since.elapsed().saturating_sub(b.waited), cpu),
        };
    }
    true
}

/// Whether the calling thread runs as `SCHED_IDLE` (tests).
#[cfg(all(test, target_os = "linux"))]
pub(super) fn is_background() -> bool {
    // SAFETY: a query about the calling thread.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_IDLE }
}

/// The calling thread's CPU time.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: writes into `t`, which lives through the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Opens the spare file to be overwritten in place (true), or a new one when there is none. A
/// spare that another name also holds (a hard link: someone's backup of a snapshot), or that is
/// a symbolic link, is never written through: it is removed, and a new file made.
fn open_spare(spare: &Path) -> io::Result<(File, bool)> {
    use std::os::unix::fs::MetadataExt;
    // Not truncated: overwritten in place, and cut to the new length at the end.
    let open = |new: bool| {
        let mut options = OpenOptions::new();
        options.write(true).mode(0o600).custom_flags(libc::O_NOFOLLOW);
        if new { options.create_new(true) } else { options.create(true).truncate(false) }.open(spare)
    };
    match open(false) {
        Ok(file) => {
            let meta = file.metadata()?;
            if meta.is_file() && meta.nlink() == 1 {
                // A file made by someone else keeps its mode: a snapshot is never readable by others.
                file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                return Ok((file, meta.len() > 0));
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {}
        Err(e) => return Err(e),
    }
    std::fs::remove_file(spare)?;
    Ok((open(true)?, false))
}

/// Writes through the page cache are of whole pages but the last: over a file that is not in
/// the page cache, writing part of a page would read the page back first.
const PAGE: usize = 4096;

/// The spare file, and what was written to it. A periodic snapshot's sink (Linux) writes with
/// `O_DIRECT` (`Direct`), where the file system takes it; else, paced, it writes back every
/// `WRITEBACK_CHUNK` bytes as it goes and waits for the disk. Either way the disk's work is
/// spread over the snapshot, a slice of the work it then pauses for (pace.rs): left to the final
/// fsync, the write-back of a large snapshot is one burst that slows every thread of the machine
/// while it lasts (a virtual machine's disk is emulated on the host's cores).
struct Sink {
    file: File,
    /// Bytes of the snapshot taken from the encoder (some may wait in `direct`'s buffer).
    bytes: u64,
    /// The first write error; nothing is written after it.
    error: Option<io::Error>,
    /// Through the page cache, paced: the bytes written back so far.
    written_back: Option<u64>,
    direct: Option<Direct>,
}

const WRITEBACK_CHUNK: u64 = 8 << 20;

/// The most one `write` copies through the page cache (a shard's frames are hundreds of KiB).
/// `SCHED_IDLE` gives the core up at once in user space; on a kernel without preemption, a thread
/// inside a system call keeps it until the kernel offers it. Shorter calls bound that time: with
/// them, a snapshot moved the p99 less (docs/persistence.md "Writing a snapshot").
const WRITE_PIECE: usize = 64 << 10;

impl Sink {
    /// `periodic`: written with `O_DIRECT` if the file system takes it, else paced write-back.
    fn new(file: File, periodic: bool) -> Sink {
        let direct = (periodic && set_direct(&file, true)).then(Direct::new);
        let written_back = (periodic && direct.is_none()).then_some(0);
        Sink { file, bytes: 0, error: None, written_back, direct }
    }

    /// Writes the whole pages the encoder has ready; false once a write failed.
    fn drain(&mut self, encoder: &mut Encoder) -> bool {
        self.write(encoder, PAGE)
    }

    /// Writes all the encoder has left (and, direct, what waits in the buffer).
    fn finish(&mut self, encoder: &mut Encoder) {
        if self.write(encoder, 1) && self.direct.as_ref().is_some_and(|d| d.filled > 0) {
            let result = self.flush_direct();
            self.failed(result);
        }
    }

    /// Writes what the encoder has ready, in a multiple of `unit` bytes (direct: all of it, into
    /// the buffer first).
    fn write(&mut self, encoder: &mut Encoder, unit: usize) -> bool {
        if self.error.is_some() {
            return false;
        }
        let Some(out) = encoder.take() else { return true };
        let len = if self.direct.is_some() { out.len() } else { out.len() / unit * unit };
        let result = self.put(&out[..len]);
        encoder.taken(len);
        self.failed(result)
    }

    /// Keeps `result`'s error, if any: false then.
    fn failed(&mut self, result: io::Result<()>) -> bool {
        match result {
            Ok(()) => true,
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// Writes `data` next: direct, through the buffer (written out whenever full); else at once,
    /// in pieces of at most `WRITE_PIECE`, paced.
    fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        while let Some(direct) = &mut self.direct {
            if data.is_empty() {
                return Ok(());
            }
            let n = direct.copy(data);
            self.bytes += n as u64;
            data = &data[n..];
            if direct.filled == DIRECT_CHUNK {
                self.flush_direct()?;
            }
        }
        for piece in data.chunks(WRITE_PIECE) {
            super::off_core::check();
            self.file.write_all_at(piece, self.bytes)?;
            self.bytes += piece.len() as u64;
        }
        self.pace()
    }

    /// Writes the direct buffer out, its last block padded with zeros (cut off at the end). A
    /// file system that takes `O_DIRECT` at open but refuses a write of it (`EINVAL`) gets this
    /// and the rest through the page cache.
    fn flush_direct(&mut self) -> io::Result<()> {
        let Some(direct) = &mut self.direct else { return Ok(()) };
        super::off_core::check();
        let (at, block) = (direct.flushed, direct.block());
        let result = match refused_direct_write().map_or_else(|| self.file.write_all_at(block, at), Err) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && set_direct(&self.file, false) => {
                let result = self.file.write_all_at(block, at);
                self.direct = None;
                self.written_back = Some(at);
                return result;
            }
            result => result,
        };
        direct.flushed += block.len() as u64;
        direct.filled = 0;
        result
    }

    /// Paced through the page cache: once a chunk more is written, writes it back and waits for
    /// it.
    fn pace(&mut self) -> io::Result<()> {
        match self.written_back {
            Some(from) if self.bytes - from >= WRITEBACK_CHUNK => self.write_back_rest(),
            _ => Ok(()),
        }
    }

    /// Paced through the page cache: writes back what is not yet, and waits for it.
    fn write_back_rest(&mut self) -> io::Result<()> {
        let Some(from) = self.written_back else { return Ok(()) };
        if self.bytes > from {
            write_back(&self.file, from, self.bytes - from)?;
        }
        self.written_back = Some(self.bytes);
        Ok(())
    }
}

/// `O_DIRECT` writes must start at, and be a multiple of, the device's logical block (512 or
/// 4096 bytes: 4096 serves both), from memory aligned the same way.
const ALIGN: usize = 4096;

/// Each direct write: long enough that the disk sees few requests, short enough that a pause of
/// the snapshot (pace.rs) comes often.
const DIRECT_CHUNK: usize = 1 << 20;

/// The buffer of a sink writing with `O_DIRECT`: `DIRECT_CHUNK` bytes aligned to `ALIGN`, inside
/// a longer `Vec` (no allocator call with an alignment, no unsafe code).
struct Direct {
    memory: Vec<u8>,
    /// Where the aligned part starts in `memory`.
    start: usize,
    /// Bytes waiting in the buffer.
    filled: usize,
    /// Bytes written to the file (a multiple of `DIRECT_CHUNK`, but for the last write).
    flushed: u64,
}

impl Direct {
    fn new() -> Direct {
        let memory = vec![0; DIRECT_CHUNK + ALIGN];
        let start = memory.as_ptr().align_offset(ALIGN);
        Direct { memory, start, filled: 0, flushed: 0 }
    }

    /// Copies as much of `data` as the buffer has room for: how much.
    fn copy(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(DIRECT_CHUNK - self.filled);
        let at = self.start + self.filled;
        self.memory[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n;
        n
    }

    /// What waits, padded with zeros to a whole block.
    fn block(&mut self) -> &[u8] {
        let len = self.filled.next_multiple_of(ALIGN);
        let block = &mut self.memory[self.start..self.start + len];
        block[self.filled..].fill(0);
        block
    }
}

/// Turns `O_DIRECT` on or off for `file`: whether it is now as asked (Linux only).
fn set_direct(file: &File, on: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if refused_direct_open() && on {
            return false;
        }
        // SAFETY: system calls on a descriptor `file` owns, with no memory passed.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            let flags = if on { flags | libc::O_DIRECT } else { flags & !libc::O_DIRECT };
            flags >= 0 && libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = file;
        !on
    }
}

/// Tests play a file system that refuses `O_DIRECT` at open (`Open`) or at the first write
/// (`Write`), as some do; the file systems this machine has take it.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum RefuseDirect {
    Open,
    Write,
}

#[cfg(test)]
thread_local! {
    pub(super) static REFUSE_DIRECT: std::cell::Cell<Option<RefuseDirect>> = const { std::cell::Cell::new(None) };
}

fn refused_direct_open() -> bool {
    #[cfg(test)]
    return REFUSE_DIRECT.get() == Some(RefuseDirect::Open);
    #[cfg(not(test))]
    false
}

fn refused_direct_write() -> Option<io::Error> {
    #[cfg(test)]
    if REFUSE_DIRECT.get() == Some(RefuseDirect::Write) {
        return Some(io::Error::from_raw_os_error(libc::EINVAL));
    }
    None
}

/// Writes `len` bytes of `file` from `offset` back to the disk, and waits until they are.
#[cfg(target_os = "linux")]
fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a system call on a descriptor `file` owns, with no memory passed.
    match unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) } {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Elsewhere, the final fsync writes everything back at once.
#[cfg(not(target_os = "linux"))]
fn write_back(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}

/// Puts the new snapshot `spare` at `path` in one atomic rename. On Linux the two files swap
/// (`renameat2` with `RENAME_EXCHANGE`), so the previous snapshot's file is the next spare; a
/// first snapshot, or a file system that cannot swap, is a plain rename.
fn swap(spare: &Path, path: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let from = CString::new(spare.as_os_str().as_bytes())?;
        let to = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: two NUL-terminated paths that outlive the call; the raw system call, as the
        // glibc wrapper is newer than the glibc the engine is built for.
        let swapped = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if swapped == 0 {
            return Ok(());
        }
    }
    std::fs::rename(spare, path)
}

/// Makes the rename durable: fsync of the directory that holds `path`.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}
