use super::*;
use crate::engine::Engine;
use crate::options::Secret;
use crate::table::Op;
use std::sync::atomic::AtomicU32;

static DIRS: AtomicU32 = AtomicU32::new(0);

/// A directory of this test's own, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let n = DIRS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("esm-persist-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
    fn file(&self) -> PathBuf {
        self.0.join("sessions.snap")
    }
    /// The directory's files but the lock's (lock.rs), which stays.
    fn names(&self) -> Vec<String> {
        let files = std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned());
        let mut names: Vec<String> = files.filter(|name| !name.ends_with(".lock")).collect();
        names.sort();
        names
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Events = Arc<Mutex<Vec<Event>>>;

fn config(path: &Path, interval_ms: u64, secrets: &[&str]) -> Config {
    Config {
        multicast: None,
        cluster: "persist-test".into(),
        secrets: secrets.iter().map(|s| Secret::Passphrase(s.to_string())).collect(),
        persist: Some(PersistConfig { path: path.to_owned(), interval_ms }),
        ..Config::default()
    }
}

fn start(config: Config) -> (Engine, Events) {
    let events = Events::default();
    let sink = events.clone();
    let engine = Engine::start(config, Arc::new(move |e| sink.lock().push(e))).unwrap();
    (engine, events)
}

/// The engine stops without `close()`, as if killed: the kernel releases its file's lock.
fn killed(engine: Engine) {
    if let Some(persist) = &engine.persist {
        *persist.lock.lock() = None;
    }
    std::mem::forget(engine);
}

fn errors(events: &Events) -> Vec<(&'static str, String)> {
    events
        .lock()
        .iter()
        .filter_map(|e| match e {
            Event::Error { code, message } => Some((*code, message.clone())),
            _ => None,
        })
        .collect()
}

/// The header of a snapshot a test writes with `writer::write` directly.
fn test_header() -> Header {
    Header { cluster: "persist-test".into(), node: 1, incarnation: 1, written_at: 1, key_id: 0, nonce: [0; 16] }
}

fn logs(events: &Events) -> Vec<String> {
    events
        .lock()
        .iter()
        .filter_map(|e| match e {
            Event::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn wait_until(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Two engines on one file (the workers of one host): the first to start writes it, the
/// other does not, and takes over once the first stopped.
#[test]
fn one_engine_writes_a_file_the_other_takes_over_when_it_stops() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &[]));
    let (b, b_events) = start(config(&dir.file(), 60_000, &[]));
    let written = |engine: &Engine| engine.stats()["snapshotsWritten"].as_u64().unwrap();
    assert!(logs(&b_events).iter().any(|l| l.contains("another process writes")), "{:?}", logs(&b_events));
    b.set("from-b", "{}".into(), None).unwrap();
    b.close();
    assert_eq!(written(&b), 0, "b does not write a file a holds");
    a.set("from-a", "{}".into(), None).unwrap();
    a.close();
    assert_eq!(written(&a), 1);
    let (c, _) = start(config(&dir.file(), 60_000, &[]));
    assert!(c.get("from-a").is_some() && c.get("from-b").is_none(), "a's snapshot, whole");
    c.set("from-c", "{}".into(), None).unwrap();
    c.close();
    assert_eq!(written(&c), 1, "a stopped: c writes");
}

/// Sessions, their expiries, tombstones, touches and a clear survive close() and a new start;
/// what expired meanwhile does not; the clock starts above everything written before.
#[test]
fn everything_written_before_close_is_back_after_a_restart() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &[]));
    let now = crate::clock::now_ms();
    a.set("old", "{}".into(), Some(now + 600_000)).unwrap();
    a.clear();
    for i in 0..1_000 {
        a.set(&format!("s{i}"), format!(r#"{{"cookie":{{"n":{i}}},"i":{i}}}"#), Some(now + 600_000 + i)).unwrap();
    }
    a.touch("s1", Some(r#"{"n":"touched"}"#.into()), Some(now + 900_000)).unwrap();
    a.destroy("s2");
    a.set("short", "{}".into(), Some(now + 300)).unwrap();
    let before = a.table.entry("s3").unwrap();
    let high = a.clock.high_water();
    a.close();
    assert_eq!(a.stats()["snapshotsWritten"], 1);
    assert_eq!(dir.names(), ["sessions.snap"], "no temporary file left");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.file()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    std::thread::sleep(Duration::from_millis(350));

    let (b, events) = start(config(&dir.file(), 60_000, &[]));
    assert_eq!(b.length(), 999, "{:?}", logs(&events));
    assert_eq!(b.table.entry("s3").unwrap(), before, "versions and expiry as they were");
    assert_eq!(b.get("s1").as_deref(), Some(r#"{"cookie":{"n":"touched"},"i":1}"#));
    assert_eq!(b.table.entry("s1").unwrap().expires_at, now + 900_000);
    assert_eq!(b.get("s2"), None);
    assert_eq!(b.table.entry("s2").unwrap().data, crate::table::Data::Deleted, "the tombstone is back");
    assert_eq!((b.get("old"), b.get("short")), (None, None), "cleared, expired");
    assert!(b.table.clear_mark() > crate::clock::Version::ZERO);
    assert!(b.clock.tick().hlc > high, "new versions are above every one written before");
    assert_eq!(b.stats()["snapshotLoadedSessions"], 999);
    assert_eq!(b.stats()["snapshotsRejected"], 0);
    assert!(errors(&events).is_empty(), "{:?}", errors(&events));
    assert!(logs(&events).iter().any(|l| l.contains("plaintext")), "the start log says the snapshot is plaintext");
    // Nothing changed since: close() writes nothing.
    b.close();
    assert_eq!(b.stats()["snapshotsWritten"], 0);
}

/// A later expiry that `touchAfter` kept on this node only is in the snapshot (and alone makes
/// one due): after a restart the session lives until then, not just until the replicated expiry.
#[test]
fn a_touch_after_extension_survives_a_restart() {
    let dir = Dir::new();
    let config = |interval_ms| Config { touch_after_ms: 60_000, ..config(&dir.file(), interval_ms, &[]) };
    let (a, _) = start(config(300));
    let now = crate::clock::now_ms();
    a.set("s", "{}".into(), Some(now + 600_000)).unwrap();
    assert!(wait_until(|| a.stats()["snapshotsWritten"] == 1));
    assert_eq!(a.touch("s", None, Some(now + 630_000)).unwrap(), 0, "kept on this node");
    assert_eq!(a.table.entry("s").unwrap().expires_at, now + 600_000, "not replicated");
    assert!(wait_until(|| a.stats()["snapshotsWritten"] == 2), "the extension alone makes a snapshot due");
    killed(a);
    let (b, _) = start(config(60_000));
    let entry = b.table.entry("s").unwrap();
    assert_eq!((entry.expires_at, entry.local_expires_at), (now + 600_000, now + 630_000));
    assert!(b.table.get("s", now + 615_000).is_some(), "alive past the replicated expiry");
    b.close();
}

/// The clock's high-water mark is persisted even when no entry carries it any more.
#[test]
fn the_clock_high_water_mark_survives_without_the_entries() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &[]));
    a.set("s", "{}".into(), None).unwrap();
    // Then a version seen from a node whose clock is an hour ahead (its entry since gone):
    // no entry of the snapshot carries it, only the clock's high-water mark.
    let future = crate::clock::Version { hlc: (crate::clock::now_ms() + 3_600_000) << 16, node: 3 };
    a.clock.observe(future);
    a.close();
    assert!(a.table.entry("s").unwrap().newest_version() < future);
    let (b, _) = start(config(&dir.file(), 60_000, &[]));
    assert!(b.clock.tick() > future);
}

/// Periodic snapshots: one per interval while something changed, none while nothing did.
#[test]
fn interval_snapshots_only_while_something_changed() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 300, &[]));
    a.set("a", "{}".into(), None).unwrap();
    assert!(wait_until(|| a.stats()["snapshotsWritten"] == 1));
    let at = a.stats()["lastSnapshotAt"].as_u64().unwrap();
    assert!(at.abs_diff(crate::clock::now_ms()) < 5_000);
    std::thread::sleep(Duration::from_millis(900));
    assert_eq!(a.stats()["snapshotsWritten"], 1, "nothing changed: no snapshot");
    a.set("b", "{}".into(), None).unwrap();
    assert!(wait_until(|| a.stats()["snapshotsWritten"] == 2));
    let stats = a.stats();
    assert_eq!(stats["lastSnapshotSessions"], 2);
    assert_eq!(stats["lastSnapshotBytes"], std::fs::metadata(dir.file()).unwrap().len());
    assert!(stats["lastSnapshotMs"].as_f64().unwrap() > 0.0, "{stats}");
    // A SIGKILL now: what the last snapshot held comes back.
    let (b, _) = start(config(&dir.file(), 300, &[]));
    assert_eq!(b.length(), 2);
    a.close();
}

/// A periodic snapshot whose paced work does not fit in half the interval is logged once an
/// hour at most, with an interval that would let it keep its pace.
#[test]
fn a_snapshot_that_runs_out_of_its_half_interval_is_logged() {
    let dir = Dir::new();
    let pace_logs = |events: &Events| -> Vec<String> {
        logs(events).into_iter().filter(|l| l.contains("its whole half interval")).collect()
    };
    // 20 MB in 100 ms at an eighth of a core: it cannot.
    let (a, events) = start(config(&dir.file(), 200, &[]));
    let session = format!(r#"{{"cookie":{{}},"data":"{}"}}"#, "x".repeat(1000));
    for i in 0..20_000 {
        a.set(&format!("s{i}"), session.clone(), None).unwrap();
    }
    assert!(wait_until(|| !pace_logs(&events).is_empty()), "{:?}", logs(&events));
    let line = &pace_logs(&events)[0];
    let number_after =
        |text: &str| -> u64 { line.split(text).nth(1).and_then(|r| r.split(' ').next()).unwrap().parse().unwrap() };
    assert!((1..=20_000).contains(&number_after("snapshot of ")), "{line}");
    assert!(number_after("an interval of ") >= 1, "{line}");
    let written = a.stats()["snapshotsWritten"].as_u64().unwrap();
    assert!(wait_until(|| a.stats()["snapshotsWritten"].as_u64().unwrap() >= written + 2 || {
        a.set("more", "{}".into(), None).unwrap();
        false
    }));
    assert_eq!(pace_logs(&events).len(), 1, "once an hour at most: {:?}", pace_logs(&events));
    a.close();
}

#[test]
fn only_a_snapshot_whose_paced_writing_ran_out_asks_for_a_longer_interval() {
    let written = |ms: f64, sync_ms: f64, paused_ms: f64| Written {
        entries: 1,
        sessions: 1,
        bytes: 1,
        ms,
        sync_ms,
        cpu_ms: 0.0,
        longest_hold_us: 0.0,
        paused_ms,
        in_place: true,
        direct: true,
    };
    let half = Duration::from_millis(1000);
    // At its pace: eight times 100 ms of work.
    assert_eq!(needed_interval(&written(800.0, 0.0, 700.0), half), None);
    // A slow fsync at the end is not the pace's: no longer interval would shorten it.
    assert_eq!(needed_interval(&written(1_600.0, 1_500.0, 0.0), half), None);
    // 400 ms of work pressed into its half interval: 6.4 s would have let it keep its pace.
    assert_eq!(needed_interval(&written(1_000.0, 0.0, 600.0), half), Some(7));
    // Work alone past the half interval.
    assert_eq!(needed_interval(&written(3_010.0, 10.0, 0.0), half), Some(48));
}

/// A crash after the spare file is complete and before the rename: the previous snapshot
/// loads, and the next snapshot is written over the leftover.
#[test]
fn a_crash_before_the_rename_leaves_the_previous_snapshot() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &[]));
    a.set("first", "{}".into(), None).unwrap();
    a.close();
    let (b, _) = start(config(&dir.file(), 60_000, &[]));
    b.set("second", "{}".into(), None).unwrap();
    let p = b.persist.clone().unwrap();
    let left = dir.0.join("left-by-the-crash");
    let crash = |tmp: &Path| {
        std::fs::copy(tmp, &left)?;
        Err(std::io::Error::other("crash"))
    };
    let result =
        writer::write(p.path(), test_header(), &p.keys, &b.table, &b.clock, &AtomicBool::new(false), None, &crash);
    assert!(matches!(result, Err(WriteError::Io { stage: "before the rename", .. })), "{result:?}");
    std::fs::rename(&left, writer::spare_path(p.path())).unwrap(); // as a crash leaves it
    killed(b); // no close(): as if killed

    let (c, events) = start(config(&dir.file(), 60_000, &[]));
    assert_eq!((c.get("first").is_some(), c.get("second").is_some()), (true, false));
    assert!(errors(&events).is_empty());
    c.set("third", "{}".into(), None).unwrap();
    c.close();
    assert_eq!(dir.names(), ["sessions.snap", "sessions.snap.prev"]);
    let (d, _) = start(config(&dir.file(), 60_000, &[]));
    assert_eq!([d.get("first").is_some(), d.get("second").is_some(), d.get("third").is_some()], [true, false, true]);
    d.close();
}

/// From the third snapshot on, each is written over the file of the one before the last (in
/// place, then the two files swap), and cut to its own length: a shorter snapshot over a longer
/// one loads whole, and so does the previous one, kept at `<path>.prev` until the next.
#[test]
fn snapshots_are_written_over_the_previous_ones_file() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &[]));
    let p = a.persist.clone().unwrap();
    let inode = |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
    let snapshot = || {
        writer::write(p.path(), test_header(), &p.keys, &a.table, &a.clock, &AtomicBool::new(false), None, &|_| Ok(()))
            .unwrap()
    };
    for i in 0..2_000 {
        a.set(&format!("s{i}"), format!(r#"{{"pad":"{}"}}"#, "x".repeat(200)), None).unwrap();
    }
    let first = snapshot();
    let first_inode = inode(&dir.file());
    assert_eq!(dir.names(), ["sessions.snap"]);
    a.clear();
    a.set("after-the-clear", "{}".into(), None).unwrap();
    let second = snapshot();
    assert_eq!(dir.names(), ["sessions.snap", "sessions.snap.prev"]);
    assert_eq!(inode(&writer::spare_path(&dir.file())), first_inode, "the first snapshot's file is the spare");
    let third = snapshot();
    assert_eq!([first.in_place, second.in_place, third.in_place], [false, false, true]);
    assert_eq!(inode(&dir.file()), first_inode, "written over the first snapshot's file");
    assert!(third.bytes < first.bytes / 10, "{third:?}");
    assert_eq!(std::fs::metadata(dir.file()).unwrap().len(), third.bytes, "cut to its length");
    // A backup made by a hard link, or a spare that is a symbolic link, is never written through.
    let backup = dir.0.join("backup");
    std::fs::hard_link(writer::spare_path(&dir.file()), &backup).unwrap();
    let kept = std::fs::read(&backup).unwrap();
    let fourth = snapshot();
    assert!(!fourth.in_place);
    assert_eq!(std::fs::read(&backup).unwrap(), kept, "the hard-linked backup is untouched");
    std::fs::remove_file(writer::spare_path(&dir.file())).unwrap();
    std::os::unix::fs::symlink(&backup, writer::spare_path(&dir.file())).unwrap();
    let fifth = snapshot();
    assert!(!fifth.in_place);
    assert_eq!(std::fs::read(&backup).unwrap(), kept, "the file a symbolic link points to is untouched");
    std::fs::remove_file(&backup).unwrap();
    a.close();

    let (b, _) = start(config(&dir.file(), 60_000, &[]));
    assert_eq!((b.length(), b.get("after-the-clear").is_some()), (1, true));
    b.close();
    std::fs::rename(writer::spare_path(&dir.file()), dir.file()).unwrap();
    let (c, events) = start(config(&dir.file(), 60_000, &[]));
    assert_eq!((c.length(), c.get("after-the-clear").is_some(), errors(&events).len()), (1, true, 0), "the one before");
    c.close();
}

/// A periodic snapshot is written with `O_DIRECT` into a new file and in place over a longer one,
/// its last block padded and cut off; where the file system refuses `O_DIRECT` at open or at a
/// write, through the page cache. Every way, the snapshot loads whole.
#[test]
fn periodic_snapshots_skip_the_page_cache_where_the_file_system_lets_them() {
    let clock = Clock::new(1);
    let now = now_ms();
    let set = |table: &Table, i: usize, len: usize| {
        let doc = format!(r#"{{"n":{i},"pad":"{}"}}"#, "y".repeat(len));
        table.apply(&Op::Set {
            sid: format!("s{i}").into(),
            doc: doc.into(),
            expires_at: now + 600_000,
            version: clock.tick(),
        });
    };
    for refuse in [None, Some(writer::RefuseDirect::Open), Some(writer::RefuseDirect::Write)] {
        writer::REFUSE_DIRECT.set(refuse);
        let dir = Dir::new();
        let keys = Keys::new("persist-test", &[]);
        let mut sizes = vec![];
        // Into new files (the first two), then in place with fewer sessions: the file's tail goes.
        for (round, sessions) in [(0, 12_000), (1, 12_000), (2, 7_001)] {
            let table = Table::new();
            (0..sessions).for_each(|i| set(&table, i, 300 + (i + round) % 700));
            let within = Some(Duration::from_millis(1));
            let written = writer::write(
                &dir.file(),
                test_header(),
                &keys,
                &table,
                &clock,
                &AtomicBool::new(false),
                within,
                &|_| Ok(()),
            )
            .unwrap();
            assert_eq!((written.direct, written.in_place), (refuse.is_none(), round == 2), "{refuse:?} {written:?}");
            assert!(written.bytes > 3 << 20 && !written.bytes.is_multiple_of(4096), "{written:?}");
            assert_eq!(std::fs::metadata(dir.file()).unwrap().len(), written.bytes);
            let Loaded::Loaded(loaded) = loader::load(&dir.file(), "persist-test", &keys, now) else {
                panic!("{refuse:?}: not loaded")
            };
            assert_eq!(loaded.kept, sessions as u64);
            for i in 0..sessions {
                let sid = format!("s{i}");
                assert_eq!(loaded.table.entry(&sid), table.entry(&sid), "{refuse:?} {sid}");
            }
            sizes.push(written.bytes);
        }
        assert!(sizes[2] < sizes[1]);
    }
    writer::REFUSE_DIRECT.set(None);
}

/// Held by the tests that keep one core busy: each on its own, or the other would starve it.
#[cfg(target_os = "linux")]
static ONE_CORE: Mutex<()> = Mutex::new(());

/// Holds the calling thread, and the threads it starts from then on, to one core.
#[cfg(target_os = "linux")]
fn one_core() {
    let first = super::off_core::allowed_cores().and_then(|cores| cores.first().copied()).unwrap_or(0);
    super::off_core::run_on(std::iter::once(first));
}

/// Drops `CAP_SYS_NICE` from the calling thread's effective capabilities, and so from the threads
/// it starts from then on (a no-op where it has none): they may then not raise their priority,
/// as in a process not run by root.
#[cfg(target_os = "linux")]
fn without_cap_sys_nice() {
    // _LINUX_CAPABILITY_VERSION_3, this thread; then two words of effective, permitted and
    // inheritable capabilities.
    let mut header = [0x2008_0522u32, 0];
    let mut data = [[0u32; 3]; 2];
    // SAFETY: capget and capset with a version 3 header and the two data words they take.
    unsafe {
        if libc::syscall(libc::SYS_capget, header.as_mut_ptr(), data.as_mut_ptr()) == 0 {
            data[0][0] &= !(1 << 23); // CAP_SYS_NICE
            libc::syscall(libc::SYS_capset, header.as_mut_ptr(), data.as_ptr());
        }
    }
}

/// Two threads that keep the first core of the calling thread busy until `stop`.
#[cfg(target_os = "linux")]
fn keep_busy(stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                one_core();
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop()
                }
            })
        })
        .collect()
}

/// A background snapshot's thread that is blocked (as on its disk, here asleep) for over a second
/// is not starved: it did not want a core meanwhile.
#[cfg(target_os = "linux")]
#[test]
fn time_blocked_is_not_starvation() {
    let going = std::thread::spawn(|| {
        writer::run_in_background();
        assert!(writer::is_background());
        std::thread::sleep(Duration::from_millis(1_300));
        writer::keep_going()
    });
    assert!(going.join().unwrap(), "taken for starved");
}

/// An engine whose cores other threads keep busy (here one core, that two threads keep busy), in
/// a process not run by root: its periodic snapshot starves, stops, is written again at nice 10,
/// and ends.
#[cfg(target_os = "linux")]
#[test]
fn an_engine_on_busy_cores_still_writes_its_snapshots() {
    let _alone = ONE_CORE.lock();
    let dir = Dir::new();
    let file = dir.file();
    // The engine's threads, and its snapshots' threads, inherit the core and the capabilities.
    let (written, events) = std::thread::spawn(move || {
        one_core();
        without_cap_sys_nice();
        let stop = Arc::new(AtomicBool::new(false));
        let busy = keep_busy(&stop);
        let (engine, events) = start(config(&file, 1_000, &[]));
        for i in 0..300_000 {
            engine.set(&format!("s{i}"), "x".repeat(200).as_str().into(), None).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while engine.stats()["snapshotsWritten"] == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let written = engine.stats()["snapshotsWritten"].as_u64();
        stop.store(true, Ordering::Relaxed);
        busy.into_iter().for_each(|t| t.join().unwrap());
        engine.close();
        (written, events)
    })
    .join()
    .unwrap();
    assert!(
        logs(&events).iter().any(|m| m.contains("written again at nice 10")),
        "not starved: the test proves nothing"
    );
    assert!(written.unwrap() >= 1, "no snapshot within 30 s");
}

/// A periodic snapshot runs as `SCHED_IDLE`: it keeps that while it gets a core; starved by
/// threads that keep its core busy, it stops after a second, and written again on a new thread at
/// nice 10, it ends. Without `CAP_SYS_NICE`, as a process not run by root: such a thread cannot
/// leave `SCHED_IDLE`. The threads are held to one core, so that other tests running meanwhile
/// neither end the starvation nor suffer from it much.
#[cfg(target_os = "linux")]
#[test]
fn a_starved_background_snapshot_is_written_again_at_nice_10() {
    use std::sync::mpsc;
    let _alone = ONE_CORE.lock();
    let table = Arc::new(Table::new());
    let clock = Arc::new(Clock::new(1));
    let doc: Arc<str> = "x".repeat(200).into();
    for i in 0..300_000 {
        table.apply(&Op::Set {
            sid: format!("s{i}").into(),
            doc: doc.clone(),
            expires_at: now_ms() + 600_000,
            version: clock.tick(),
        });
    }
    let dir = Dir::new();
    // On one core, in the background (or after a starved one, at nice 10): (the result, how
    // long, still SCHED_IDLE at the end).
    let snapshot = |after_starving: bool| {
        let (table, clock, file) = (table.clone(), clock.clone(), dir.file());
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || {
            one_core();
            without_cap_sys_nice();
            if after_starving {
                writer::run_after_starving()
            } else {
                writer::run_in_background()
            }
            let started = Instant::now();
            let written = writer::write(
                &file,
                test_header(),
                &Keys::new("persist-test", &[]),
                &table,
                &clock,
                &AtomicBool::new(false),
                None,
                &|_| Ok(()),
            );
            let _ = done.send((written.map(|_| ()), started.elapsed(), writer::is_background()));
        });
        result
    };
    let (written, took, background) = snapshot(false).recv().unwrap();
    assert!(
        written.is_ok() && (background || took >= Duration::from_secs(1)),
        "a snapshot that gets a core stays SCHED_IDLE"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let busy = keep_busy(&stop);
    // SCHED_IDLE's share of a core two threads keep busy is 3/2051: the ≈150 ms of this snapshot
    // would take 100 s. Starved, it stops after a second.
    let first = snapshot(false).recv_timeout(Duration::from_secs(20));
    // At nice 10, its share is 110/2158: about 3 s.
    let again = snapshot(true).recv_timeout(Duration::from_secs(20));
    stop.store(true, Ordering::Relaxed);
    busy.into_iter().for_each(|t| t.join().unwrap());
    let (written, took, _) = first.expect("a starved snapshot did not stop within 20 s");
    assert!(
        matches!(written, Err(WriteError::Starved)) && took >= Duration::from_secs(1),
        "{written:?} after {took:?}"
    );
    let (written, took, background) = again.expect("a snapshot written again at nice 10 did not end within 20 s");
    assert!(written.is_ok() && !background, "{written:?} after {took:?}");
}

/// A snapshot of many frames, of more records than a batch of the loader
/// (`loader::MERGE_BATCH`), loads whole, plaintext and sealed: every kept entry as it was,
/// nothing else.
#[test]
fn a_large_snapshot_loads_whole() {
    let table = Table::new();
    let clock = Clock::new(1);
    let now = now_ms();
    let doc = |i: usize| format!(r#"{{"cookie":{{"n":{i}}},"pad":"{}"}}"#, "é".repeat(i % 800));
    for i in 0..90_000 {
        let sid: Arc<str> = format!("s{i}").into();
        let expires_at = if i % 97 == 0 { now - 1 } else { now + 600_000 };
        table.apply(&Op::Set { sid: sid.clone(), doc: doc(i).into(), expires_at, version: clock.tick() });
        if i % 5 == 0 {
            let cookie = Some(format!(r#"{{"t":{i}}}"#).into());
            table.apply(&Op::Touch { sid: sid.clone(), cookie, expires_at: now + 700_000, version: clock.tick() });
        }
        if i % 11 == 0 {
            table.apply(&Op::Destroy { sid, version: clock.tick() });
        }
    }
    for secrets in [&[][..], &["a key"][..]] {
        let dir = Dir::new();
        let config = config(&dir.file(), 60_000, secrets);
        let keys = Keys::new(&config.cluster, &config.secrets);
        let header = Header { cluster: config.cluster.clone(), ..test_header() };
        let written = writer::write(
            &dir.file(),
            header,
            &keys,
            &table,
            &clock,
            &AtomicBool::new(false),
            Some(Duration::from_millis(200)),
            &|_| Ok(()),
        )
        .unwrap();
        assert!(written.bytes > 64 * format::FRAME_BYTES as u64, "{written:?}");
        // Loaded later: the sessions not touched have expired meanwhile, the rest are kept.
        let later = now + 650_000;
        let Loaded::Loaded(loaded) = loader::load(&dir.file(), &config.cluster, &keys, later) else {
            panic!("not loaded")
        };
        let (mut written, mut kept) = (0, 0);
        for i in 0..90_000 {
            let sid = format!("s{i}");
            let entry = table.entry(&sid).unwrap();
            written += u64::from(entry.is_kept(now));
            kept += u64::from(entry.is_kept(later));
            assert_eq!(loaded.table.entry(&sid), Some(entry).filter(|e| e.is_kept(later)), "{sid}");
        }
        assert_eq!((loaded.entries, loaded.kept), (written, kept));
        assert!(kept < written && written < 90_000);
        // A fault deep in the file, found by the reading thread while the frames before it are
        // decoded and merged: the whole file is rejected, and set aside.
        let good = std::fs::read(dir.file()).unwrap();
        let mut flipped = good.clone();
        flipped[good.len() * 3 / 4] ^= 0x01;
        for (bad, kind) in [(flipped, "corrupted"), (good[..good.len() * 3 / 4].to_vec(), "truncated")] {
            std::fs::write(dir.file(), &bad).unwrap();
            let Loaded::Rejected { reason, moved } = loader::load(&dir.file(), &config.cluster, &keys, later) else {
                panic!("{kind}: loaded")
            };
            assert_eq!(reason.kind(), kind);
            std::fs::remove_file(moved.unwrap()).unwrap();
        }
    }
}

/// A close stops a periodic snapshot in the middle of its paced work: the spare file goes, and
/// the previous snapshot stays as it was.
#[test]
fn a_paced_snapshot_stopped_midway_leaves_the_previous_one() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &[]));
    a.set("before", "{}".into(), None).unwrap();
    let p = a.persist.clone().unwrap();
    writer::write(p.path(), test_header(), &p.keys, &a.table, &a.clock, &AtomicBool::new(false), None, &|_| Ok(()))
        .unwrap();
    let previous = std::fs::read(p.path()).unwrap();
    let pad = "x".repeat(1000);
    for i in 0..50_000 {
        a.set(&format!("s{i}"), format!(r#"{{"pad":"{pad}"}}"#), None).unwrap();
    }
    let cancel = Arc::new(AtomicBool::new(false));
    let writing = {
        let (p, table, clock, cancel) = (p.clone(), a.table.clone(), a.clock.clone(), cancel.clone());
        std::thread::spawn(move || {
            let within = Some(Duration::from_secs(60));
            writer::write(p.path(), test_header(), &p.keys, &table, &clock, &cancel, within, &|_| Ok(()))
        })
    };
    // Midway: a part of it is in the spare file.
    let spare = writer::spare_path(p.path());
    assert!(wait_until(|| std::fs::metadata(&spare).is_ok_and(|m| m.len() > 8 << 20)));
    cancel.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let result = writing.join().unwrap();
    assert!(matches!(result, Err(WriteError::Cancelled)), "{result:?}");
    assert!(stopped.elapsed() < Duration::from_secs(5), "{:?}", stopped.elapsed());
    assert_eq!(std::fs::read(p.path()).unwrap(), previous);
    assert!(!spare.exists());
    a.close();
}

/// A close does not wait for the end of a periodic snapshot's pause (pace.rs), however long.
#[test]
fn a_pause_ends_when_the_snapshot_is_cancelled() {
    let cancel = Arc::new(AtomicBool::new(false));
    let pausing = {
        let cancel = cancel.clone();
        std::thread::spawn(move || writer::pause(Duration::from_secs(60), &cancel))
    };
    std::thread::sleep(Duration::from_millis(50));
    cancel.store(true, Ordering::Relaxed);
    let cancelled = Instant::now();
    assert!(!pausing.join().unwrap());
    assert!(cancelled.elapsed() < Duration::from_secs(5), "{:?}", cancelled.elapsed());
}

/// A cancelled snapshot (the engine closing) leaves the previous one as it was.
#[test]
fn a_cancelled_snapshot_changes_nothing() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &[]));
    for i in 0..10_000 {
        a.set(&format!("s{i}"), "{}".into(), None).unwrap();
    }
    let p = a.persist.clone().unwrap();
    let cancelled =
        writer::write(p.path(), test_header(), &p.keys, &a.table, &a.clock, &AtomicBool::new(true), None, &|_| Ok(()));
    assert!(matches!(cancelled, Err(WriteError::Cancelled)));
    assert_eq!(dir.names(), Vec::<String>::new());
    a.close();
}

/// Every kind of bad file: an `error` event with its reason, counted, moved aside with its
/// bytes, and the node starts empty and serves.
#[test]
fn bad_files_are_set_aside_and_the_node_starts_without_them() {
    let dir = Dir::new();
    let (a, _) = start(config(&dir.file(), 60_000, &["key-1"]));
    for i in 0..3_000 {
        a.set(&format!("s{i}"), format!(r#"{{"pad":"{}"}}"#, "x".repeat(500)), None).unwrap();
    }
    a.close();
    let good = std::fs::read(dir.file()).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0x10;
    let mut future = good.clone();
    future[8..10].copy_from_slice(&7u16.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, Config, &str)> = vec![
        ("truncated", good[..good.len() - 100].to_vec(), config(&dir.file(), 60_000, &["key-1"]), "truncated"),
        ("cut in its header", good[..20].to_vec(), config(&dir.file(), 60_000, &["key-1"]), "truncated"),
        ("corrupted", flipped, config(&dir.file(), 60_000, &["key-1"]), "corrupted"),
        ("future format", future, config(&dir.file(), 60_000, &["key-1"]), "futureFormat"),
        ("not a snapshot", b"{\"sessions\":{}}".to_vec(), config(&dir.file(), 60_000, &["key-1"]), "notASnapshot"),
        (
            "foreign cluster",
            good.clone(),
            Config { cluster: "other".into(), ..config(&dir.file(), 60_000, &["key-1"]) },
            "foreignCluster",
        ),
        ("wrong key", good.clone(), config(&dir.file(), 60_000, &["key-2"]), "unknownKey"),
        ("rotated-out key", good.clone(), config(&dir.file(), 60_000, &["key-3", "key-2"]), "unknownKey"),
        ("sealed, no secret", good.clone(), config(&dir.file(), 60_000, &[]), "sealed"),
    ];
    for (what, bytes, config, kind) in cases {
        std::fs::write(dir.file(), &bytes).unwrap();
        let (node, events) = start(config);
        let errors = errors(&events);
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert_eq!(errors[0].0, "ERR_SNAPSHOT_REJECTED", "{what}");
        assert!(errors[0].1.contains(&format!("({kind})")), "{what}: {}", errors[0].1);
        assert_eq!(node.stats()["snapshotsRejected"], 1, "{what}");
        assert_eq!(node.length(), 0, "{what}: nothing of a bad file is kept");
        let aside: Vec<String> = dir.names().into_iter().filter(|n| n.contains(".rejected-")).collect();
        assert_eq!(aside.len(), 1, "{what}: {:?}", dir.names());
        assert!(errors[0].1.contains(&aside[0]), "{what}: the message says where it went");
        assert_eq!(std::fs::read(dir.0.join(&aside[0])).unwrap(), bytes, "{what}: moved, not changed");
        std::fs::remove_file(dir.0.join(&aside[0])).unwrap();
        assert!(!dir.file().exists());
        node.set("serves", "{}".into(), None).unwrap();
        assert!(node.get("serves").is_some());
        killed(node); // not closed: its snapshot must not replace the next case's file
    }
    // An unreadable path (a directory): the same.
    std::fs::create_dir(dir.file()).unwrap();
    let (node, events) = start(config(&dir.file(), 60_000, &["key-1"]));
    assert!(errors(&events)[0].1.contains("(unreadable)"), "{:?}", errors(&events));
    assert_eq!(node.stats()["snapshotsRejected"], 1);
    killed(node);
    // The key ring opens the old key's snapshot, and the next snapshot is sealed with the new key.
    std::fs::write(dir.file(), &good).unwrap();
    let (rotated, events) = start(config(&dir.file(), 60_000, &["key-2", "key-1"]));
    assert_eq!(rotated.length(), 3_000, "{:?}", errors(&events));
    rotated.set("new", "{}".into(), None).unwrap();
    rotated.close();
    let (new_key_only, events) = start(config(&dir.file(), 60_000, &["key-2"]));
    assert_eq!(new_key_only.length(), 3_001, "{:?}", errors(&events));
    assert!(!logs(&events).iter().any(|l| l.contains("plaintext")));
    new_key_only.close();
}

/// A snapshot that cannot be written (here: its directory is gone) fails with a coded error,
/// counted; the store serves on, and the next interval tries again.
#[test]
fn a_failing_snapshot_is_reported_and_the_store_serves_on() {
    let dir = Dir::new();
    let path = dir.0.join("missing-dir").join("s.snap");
    let (a, events) = start(config(&path, 200, &[]));
    a.set("a", "{}".into(), None).unwrap();
    assert!(wait_until(|| a.stats()["snapshotFailures"].as_u64() >= Some(1)));
    a.set("b", "{}".into(), None).unwrap();
    assert!(wait_until(|| a.stats()["snapshotFailures"].as_u64() >= Some(2)));
    let errors = errors(&events);
    assert_eq!(errors.len(), 1, "reported once a minute at most: {errors:?}");
    assert_eq!(errors[0].0, "ERR_SNAPSHOT_FAILED");
    assert!(errors[0].1.contains("opening the spare file") && errors[0].1.contains("s.snap"), "{}", errors[0].1);
    assert_eq!(a.length(), 2);
    assert_eq!(a.stats()["snapshotsWritten"], 0);
    a.close();
}

/// `cargo test --release --no-default-features persist::tests::timing -- --ignored --nocapture`:
/// what a snapshot of N ≈1 KB sessions costs here (bench/persist.js measures it from JS).
/// `PERIODIC=1`: written as a periodic snapshot is (`O_DIRECT`), but without pauses.
mod timing {
    use super::*;
    use crate::table::Op;

    #[test]
    #[ignore]
    fn timing() {
        let n: usize = std::env::var("N").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
        // Spread within 1 ms: behind its schedule from the start, it never pauses.
        let periodic = std::env::var_os("PERIODIC").is_some();
        let dir = std::env::temp_dir().join(format!("esm-timing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.snap");
        let config =
            // Cluster "default", as the JS options default to: a node can load the file kept (KEEP).
            Config { persist: Some(PersistConfig { path: path.clone(), interval_ms: if periodic { 2 } else { 60_000 } }), cluster: "default".into(), ..Config::default() };
        // SECRET: sealed with it.
        let config =
            Config { secrets: std::env::var("SECRET").ok().map(Secret::Passphrase).into_iter().collect(), ..config };
        if let Some(file) = std::env::var_os("LOAD_ONLY") {
            let config = Config { persist: Some(PersistConfig { path: file.into(), interval_ms: 60_000 }), ..config };
            let persist = Persist::new(&config, config.persist.as_ref().unwrap(), 1, 1, crate::events::discard());
            let t = Instant::now();
            let loaded = persist.load(&Clock::new(2));
            println!("load: {} entries in {:?}", loaded.length(now_ms()), t.elapsed());
            return;
        }
        let clock = Clock::new(1);
        let table = Table::new();
        let now = now_ms();
        let doc = format!(r#"{{"cookie":{{"expires":"2030-01-01T00:00:00.000Z"}},"pad":"{}"}}"#, "x".repeat(940));
        for i in 0..n {
            let op = Op::Set {
                sid: format!("{i:032}").into(),
                doc: doc.clone().into(),
                expires_at: now + 3_600_000,
                version: clock.tick(),
            };
            table.apply(&op);
        }
        let persist = Persist::new(&config, config.persist.as_ref().unwrap(), 1, 1, crate::events::discard());
        let repeat: usize = std::env::var("REPEAT").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
        for _ in 0..repeat {
            let t = Instant::now();
            table.apply(&Op::Destroy { sid: "x".into(), version: clock.tick() });
            let w = persist.snapshot(&table, &clock, &AtomicBool::new(false), periodic).unwrap().unwrap();
            println!("write {n}: {w:?} ({:?})", t.elapsed());
        }
        drop(table);
        if std::env::var_os("SKIP_LOAD").is_some() {
            return;
        }
        let t = Instant::now();
        let loaded = persist.load(&Clock::new(2));
        println!("load {n}: {} entries in {:?}", loaded.length(now), t.elapsed());
        if std::env::var_os("KEEP").is_some() {
            return println!("kept {}", path.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A node with a passphrase, networked and with `persist`, stretches it once at start (Argon2id:
/// tens of milliseconds) for both the wire's codec and the snapshots' keys.
#[test]
fn a_passphrase_is_stretched_once() {
    let dir = Dir::new();
    let networked = Config {
        multicast: Config::default().multicast,
        ipv4: Some(std::net::Ipv4Addr::LOCALHOST),
        multicast_ttl: 0,
        multicast_port: 40_000 + (std::process::id() % 20_000) as u16,
        cluster: format!("stretched-{}", std::process::id()),
        ..config(&dir.file(), 60_000, &["a passphrase"])
    };
    let before = crate::crypto::STRETCHED.with(|n| n.get());
    let (engine, _events) = start(networked);
    assert_eq!(engine.stats()["network"], "up");
    assert_eq!(crate::crypto::STRETCHED.with(|n| n.get()) - before, 1);
    engine.close();
}
