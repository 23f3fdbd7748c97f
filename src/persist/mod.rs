//! Snapshots of the table on disk (option `persist`, docs/persistence.md): written every
//! `interval` while something changed and when the engine closes, loaded at start before the
//! node joins. The engine calls `Persist::load` in `Engine::start`, `Persist::run` on its
//! runtime, and `Persist::close` in `Engine::close`; stats.rs reads `PersistStats`.
//!
//! - format.rs: the file format (pure).
//! - writer.rs: writing a snapshot crash-safely (spare file, fsync, rename, fsync of the dir).
//! - loader.rs: reading one back, and setting a bad file aside.
//! - lock.rs: one writing process per file.
//! - pace.rs: how a periodic snapshot spreads its work over time (pure).
//! - off_core.rs: a periodic snapshot keeps off the JS thread's core.

pub mod format;
pub mod loader;
pub mod lock;
mod off_core;
mod pace;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::format::{Header, Keys};
use self::loader::Loaded;
use self::lock::FileLock;
use self::writer::{WriteError, Written};
use crate::clock::{now_ms, Clock};
use crate::events::{Event, EventSink, Level};
use crate::options::Config;
use crate::table::Table;

/// A failing snapshot is reported as an `error` event at most this often (every failure counts).
const ERROR_REPORT_INTERVAL: Duration = Duration::from_secs(60);
/// A periodic snapshot that took this share of its half interval or more ran out of it.
const PACE_REPORT_SHARE: f64 = 0.95;
/// How often such a snapshot is logged, at most.
const PACE_REPORT_EVERY: Duration = Duration::from_secs(3600);

/// The `persist` option.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistConfig {
    /// Absolute.
    pub path: PathBuf,
    pub interval_ms: u64,
}

pub const DEFAULT_INTERVAL_MS: u64 = 60_000;

/// The figures of `stats()` (declared in stats.rs).
#[derive(Default)]
pub struct PersistStats {
    pub snapshots: AtomicU64,
    pub failures: AtomicU64,
    /// Epoch ms when the last snapshot written began; 0: none yet.
    pub last_at: AtomicU64,
    /// In µs.
    pub last_us: AtomicU64,
    pub last_bytes: AtomicU64,
    pub last_sessions: AtomicU64,
    pub rejected: AtomicU64,
    pub loaded_sessions: AtomicU64,
}

pub struct Persist {
    config: PersistConfig,
    cluster: String,
    node: u64,
    incarnation: u64,
    keys: Keys,
    events: EventSink,
    pub stats: PersistStats,
    /// Held while a snapshot is written: one at a time.
    writing: Mutex<()>,
    /// Set by `close`: a periodic snapshot in progress stops, and no other starts.
    closing: AtomicBool,
    /// `Table::changes()` when the last snapshot written began (or the load ended).
    saved_changes: Mutex<Option<u64>>,
    last_error_report: Mutex<Option<Instant>>,
    /// When a periodic snapshot last ran out of its half interval (`report_pace`).
    last_pace_report: Mutex<Option<Instant>>,
    /// The file's lock, once this process holds it: only its holder writes (lock.rs).
    lock: Mutex<Option<FileLock>>,
    /// Another process held the lock when this one last tried (logged once per change).
    locked_out: AtomicBool,
    /// The thread that made the store (the JS thread): periodic snapshots keep off its core.
    home: off_core::Thread,
}

impl Persist {
    pub fn new(config: &Config, persist: &PersistConfig, node: u64, incarnation: u64, events: EventSink) -> Persist {
        Persist {
            config: persist.clone(),
            cluster: config.cluster.clone(),
            node,
            incarnation,
            keys: Keys::new(&config.cluster, &config.secrets),
            events,
            stats: PersistStats::default(),
            writing: Mutex::new(()),
            closing: AtomicBool::new(false),
            saved_changes: Mutex::new(None),
            last_error_report: Mutex::new(None),
            last_pace_report: Mutex::new(None),
            lock: Mutex::new(None),
            locked_out: AtomicBool::new(false),
            home: off_core::Thread::current(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.config.path
    }

    fn log(&self, level: Level, message: String) {
        (self.events)(Event::Log { level, message: format!("persist: {message}") });
    }

    /// Logs (at most once an hour) a periodic snapshot that ran out of its half interval
    /// (`needed_interval`).
    fn report_pace(&self, written: &Written, within: Duration) {
        let Some(needed_s) = needed_interval(written, within) else { return };
        let mut last = self.last_pace_report.lock();
        if last.is_some_and(|at| at.elapsed() < PACE_REPORT_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let writing_ms = written.ms - written.sync_ms;
        self.log(
            Level::Info,
            format!(
                "the snapshot of {} sessions took {:.0} ms to write, its whole half interval ({:.0} ms of work, {:.0} ms of pauses): it ran busier than an eighth of a core, and slowed the calls that met it; an interval of {needed_s} s or more lets it keep its pace (docs/persistence.md, Operations)",
                written.sessions,
                writing_ms,
                writing_ms - written.paused_ms,
                written.paused_ms
            ),
        );
    }

    /// Whether this process may write the file: it holds the file's lock, or takes it now (the
    /// process that held it stopped). A lock that cannot be made lets the write go on, to fail
    /// and be reported as such.
    fn may_write(&self) -> bool {
        let mut lock = self.lock.lock();
        if lock.is_some() {
            return true;
        }
        let path = self.config.path.display();
        match FileLock::try_acquire(&self.config.path) {
            Ok(None) => {
                if !self.locked_out.swap(true, Ordering::Relaxed) {
                    self.log(
                        Level::Warn,
                        format!(
                            "another process writes {path} (it holds {}): this one loaded it but does not write it, and takes over when that process stops",
                            lock::lock_path(&self.config.path).display()
                        ),
                    );
                }
                false
            }
            Ok(Some(held)) => {
                *lock = Some(held);
                if self.locked_out.swap(false, Ordering::Relaxed) {
                    self.log(Level::Info, format!("the process that wrote {path} stopped: this one writes it now"));
                }
                true
            }
            Err(_) => true,
        }
    }

    /// Loads the snapshot, if there is a good one: the table to start with (empty otherwise).
    /// The clock is moved past every version the snapshot names.
    pub fn load(&self, clock: &Clock) -> Table {
        // The first process to start on a file writes it; the others learn so now.
        self.may_write();
        let path = self.config.path.display();
        if !self.keys.is_sealed() {
            self.log(
                Level::Warn,
                format!(
                    "snapshots in {path} are plaintext: without the \"secret\" option, anyone who can read the file reads the sessions"
                ),
            );
        }
        let table = match loader::load(&self.config.path, &self.cluster, &self.keys, now_ms()) {
            Loaded::Missing => {
                self.log(Level::Info, format!("no snapshot at {path}: starting empty"));
                Table::new()
            }
            Loaded::Loaded(summary) => {
                clock.observe(crate::clock::Version { hlc: summary.clock, node: 0 });
                self.stats.loaded_sessions.store(summary.sessions, Ordering::Relaxed);
                let age_s = now_ms().saturating_sub(summary.header.written_at) / 1000;
                self.log(
                    Level::Info,
                    format!(
                        "loaded {path}: {} sessions ({} entries kept of {}, the others expired), {} bytes in {:.0} ms; written {age_s} s ago by node {:016x}",
                        summary.sessions, summary.kept, summary.entries, summary.bytes, summary.ms, summary.header.node
                    ),
                );
                summary.table
            }
            Loaded::Rejected { reason, moved } => {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let moved = match moved {
                    Ok(aside) => format!("moved to {}", aside.display()),
                    Err(e) => format!("and could not be moved aside ({e})"),
                };
                (self.events)(Event::Error {
                    code: "ERR_SNAPSHOT_REJECTED",
                    message: format!(
                        "express-session-multicast: persist: the snapshot {path} was not loaded ({}): {}; {moved}. This node starts without it",
                        reason.kind(),
                        reason.reason()
                    ),
                });
                Table::new()
            }
        };
        *self.saved_changes.lock() = Some(table.changes());
        table
    }

    /// Writes a snapshot now, unless nothing changed since the last one (`None` then). Blocks:
    /// call it from an engine thread (the periodic ones run it in the background:
    /// `writer::run_in_background`). `cancel` stops it.
    /// `spread`: a periodic snapshot, whose work is spread over up to half the interval
    /// (pace.rs); the last one, at close, is written as fast as the disk goes.
    pub fn snapshot(
        &self,
        table: &Table,
        clock: &Clock,
        cancel: &AtomicBool,
        spread: bool,
    ) -> Option<Result<Written, WriteError>> {
        let _writing = self.writing.lock();
        let changes = table.changes();
        if cancel.load(Ordering::Relaxed) || *self.saved_changes.lock() == Some(changes) || !self.may_write() {
            return None;
        }
        let started_at = now_ms();
        let header = Header {
            cluster: self.cluster.clone(),
            node: self.node,
            incarnation: self.incarnation,
            written_at: started_at,
            key_id: 0,
            nonce: rand::random(),
        };
        let within = spread.then(|| Duration::from_millis(self.config.interval_ms / 2));
        let result =
            writer::write(&self.config.path, header, &self.keys, table, clock, cancel, within, &before_rename_hook);
        let path = self.config.path.display();
        match &result {
            Ok(w) => {
                *self.saved_changes.lock() = Some(changes);
                let s = &self.stats;
                s.snapshots.fetch_add(1, Ordering::Relaxed);
                s.last_at.store(started_at, Ordering::Relaxed);
                s.last_us.store((w.ms * 1000.0) as u64, Ordering::Relaxed);
                s.last_bytes.store(w.bytes, Ordering::Relaxed);
                s.last_sessions.store(w.sessions, Ordering::Relaxed);
                *self.last_error_report.lock() = None;
                self.log(
                    Level::Debug,
                    format!(
                        "snapshot written to {path}: {} sessions ({} entries), {} bytes in {:.1} ms (cpu {:.1} ms, fsync {:.1} ms, longest hold of a shard {:.1} µs), {}, {}",
                        w.sessions, w.entries, w.bytes, w.ms, w.cpu_ms, w.sync_ms, w.longest_hold_us,
                        if w.in_place { "over the previous snapshot's file" } else { "a new file" },
                        if w.direct { "O_DIRECT" } else { "through the page cache" }
                    ),
                );
                if let Some(within) = within {
                    self.report_pace(w, within);
                }
            }
            Err(WriteError::Cancelled) => {}
            Err(WriteError::Starved) => self.log(
                Level::Info,
                format!(
                    "the snapshot to {path} got too little CPU time (every core busy): it is written again at nice 10"
                ),
            ),
            Err(e) => {
                let failures = self.stats.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let mut last = self.last_error_report.lock();
                if last.is_none_or(|at| at.elapsed() >= ERROR_REPORT_INTERVAL) {
                    *last = Some(Instant::now());
                    (self.events)(Event::Error {
                        code: "ERR_SNAPSHOT_FAILED",
                        message: format!(
                            "express-session-multicast: persist: the snapshot to {path} failed ({e}); the previous snapshot stays, and the store serves on ({failures} failure(s) so far; next report in a minute at most)"
                        ),
                    });
                }
            }
        }
        Some(result)
    }

    /// Every `interval`, a snapshot if something changed; on a blocking thread of the runtime.
    pub async fn run(self: Arc<Self>, table: Arc<Table>, clock: Arc<Clock>) {
        let period = Duration::from_millis(self.config.interval_ms);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.closing.load(Ordering::Relaxed) {
            ticker.tick().await;
            // A starved snapshot is written again at once, on a new thread (writer.rs).
            for after_starving in [false, true] {
                let (persist, table, clock) = (self.clone(), table.clone(), clock.clone());
                let (done, finished) = tokio::sync::oneshot::channel();
                let spawned = std::thread::Builder::new().name("session-multicast-snapshot".into()).spawn(move || {
                    // It copies the table shard by shard: a JS thread that wants a core comes
                    // first (one that waits for a shard this thread holds yields its core to it).
                    if after_starving {
                        writer::run_after_starving()
                    } else {
                        writer::run_in_background()
                    }
                    off_core::keep_off(persist.home);
                    let result = persist.snapshot(&table, &clock, &persist.closing, true);
                    let _ = done.send(matches!(result, Some(Err(WriteError::Starved))));
                });
                match (spawned, finished.await) {
                    (Ok(_), Ok(true)) => continue,
                    (Ok(_), Ok(false)) => {}
                    // A panic would be a bug: it ends this snapshot (counted as a failure), not
                    // the loop.
                    _ => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.log(Level::Error, "a snapshot could not run or stopped on an internal error".into());
                    }
                }
                break;
            }
        }
    }

    /// The last snapshot, when the engine closes: stops a periodic one in progress, then writes
    /// (if anything changed since the last one). Blocks: call it from an engine thread.
    pub fn close(&self, table: &Table, clock: &Clock) -> Option<Result<Written, WriteError>> {
        self.closing.store(true, Ordering::Relaxed);
        let result = self.snapshot(table, clock, &AtomicBool::new(false), false);
        // Another process on the same file takes over from its next interval.
        *self.lock.lock() = None;
        if let Some(Ok(w)) = &result {
            self.log(
                Level::Info,
                format!(
                    "snapshot written to {} at close: {} sessions, {} bytes in {:.0} ms",
                    self.config.path.display(),
                    w.sessions,
                    w.bytes,
                    w.ms
                ),
            );
        }
        result
    }
}

/// When a periodic snapshot's paced writing (its fsyncs at the end are not paced) took its whole
/// half interval `within`: its work, paced to an eighth of a core, did not fit, so it ran busier,
/// and the calls that met it were slower (docs/persistence.md, Operations: "Interval and table
/// size"). Then the interval, in seconds, that would let it keep its pace: eight times its work,
/// in half the interval.
fn needed_interval(written: &Written, within: Duration) -> Option<u64> {
    let writing_ms = written.ms - written.sync_ms;
    if writing_ms < within.as_secs_f64() * 1000.0 * PACE_REPORT_SHARE {
        return None;
    }
    let work_ms = (writing_ms - written.paused_ms).max(0.0);
    Some((work_ms * 16.0 / 1000.0).ceil().max(1.0) as u64)
}

/// For tests of a crash between the write and the rename: with the environment variable
/// `EXPRESS_SESSION_MULTICAST_TEST_PAUSE_BEFORE_RENAME` set to a path, a snapshot whose
/// spare file is complete and fsynced creates that file and stops there for good (the test
/// then kills the process). Read only at that point; not an option.
fn before_rename_hook(_spare: &Path) -> std::io::Result<()> {
    if let Some(marker) = std::env::var_os("EXPRESS_SESSION_MULTICAST_TEST_PAUSE_BEFORE_RENAME") {
        std::fs::write(marker, b"paused")?;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
