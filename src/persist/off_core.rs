//! Keeps a periodic snapshot's thread off the core the JS thread last ran on (Linux, where the
//! process may use two cores or more): docs/persistence.md "Writing a snapshot". The kernel
//! counts a core that runs only a `SCHED_IDLE` thread as idle, and wakes a sleeping thread on the
//! core it last ran on when that one is idle: the JS thread, woken by a timer or a request, then
//! waits for the snapshot to be switched out, and finds its caches full of the snapshot's data.
//! Held off that core, the snapshot leaves it idle for the JS thread. Best effort: nothing
//! changes where a call is refused.

/// A thread to keep the snapshot off: the one that made the store (the JS thread).
#[derive(Clone, Copy, Debug)]
pub struct Thread(#[cfg(target_os = "linux")] libc::pid_t);

impl Thread {
    #[cfg(target_os = "linux")]
    pub fn current() -> Thread {
        // SAFETY: a system call about the calling thread, with no memory passed.
        Thread(unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn current() -> Thread {
        Thread()
    }
}

/// From now on, the calling thread (a snapshot's) keeps off `thread`'s core: `check` moves it.
pub(super) fn keep_off(thread: Thread) {
    #[cfg(target_os = "linux")]
    OFF_CORE.set(linux::OffCore::new(thread.0));
    #[cfg(not(target_os = "linux"))]
    let _ = thread;
}

/// Called as the snapshot goes (between two writes, two shards): looks where the thread kept
/// off last ran, at most every `CHECK_EVERY`, and moves the calling thread to the other cores
/// when that changed.
pub(super) fn check() {
    #[cfg(target_os = "linux")]
    OFF_CORE.with_borrow_mut(|off| {
        if let Some(off) = off {
            off.check(std::time::Instant::now());
        }
    });
}

/// A check reads a line of /proc (2.2 µs on the bench machine): four times a millisecond of work
/// is enough to follow the JS thread, which the kernel moves seldom, and costs the snapshot under
/// 1 % of its CPU time.
#[cfg(target_os = "linux")]
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_micros(250);

/// For tests that pin threads (persist/tests.rs).
#[cfg(all(test, target_os = "linux"))]
pub(super) use linux::{allowed_cores, run_on};

#[cfg(target_os = "linux")]
thread_local! {
    static OFF_CORE: std::cell::RefCell<Option<linux::OffCore>> = const { std::cell::RefCell::new(None) };
}

#[cfg(target_os = "linux")]
mod linux {
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::time::Instant;

    pub(super) struct OffCore {
        /// `/proc/self/task/<tid>/stat` of the thread kept off.
        stat: File,
        /// The cores the calling thread may run on at all.
        allowed: Vec<usize>,
        /// The core kept off now.
        avoided: Option<usize>,
        next_check: Instant,
    }

    impl OffCore {
        /// `None` where there is no other core to go to, or the thread cannot be looked at.
        pub(super) fn new(thread: libc::pid_t) -> Option<OffCore> {
            let allowed = allowed_cores()?;
            if allowed.len() < 2 {
                return None;
            }
            let stat = File::open(format!("/proc/self/task/{thread}/stat")).ok()?;
            Some(OffCore { stat, allowed, avoided: None, next_check: Instant::now() })
        }

        pub(super) fn check(&mut self, now: Instant) {
            if now < self.next_check {
                return;
            }
            self.next_check = now + super::CHECK_EVERY;
            let mut line = [0u8; 1024];
            let Ok(len) = self.stat.read_at(&mut line, 0) else { return };
            let Some(cpu) = super::last_cpu(&line[..len]) else { return };
            if self.avoided != Some(cpu) && run_on(self.allowed.iter().copied().filter(|&c| c != cpu)) {
                self.avoided = Some(cpu);
            }
        }
    }

    /// The cores the calling thread may run on.
    pub(in crate::persist) fn allowed_cores() -> Option<Vec<usize>> {
        // SAFETY: an all-zero cpu_set_t is the empty set; `sched_getaffinity` writes into it,
        // of the size passed; `CPU_ISSET` reads it at indexes below its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
                return None;
            }
            Some((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
        }
    }

    /// Moves the calling thread to `cores` (not to none): whether it was moved.
    pub(in crate::persist) fn run_on(cores: impl Iterator<Item = usize>) -> bool {
        // SAFETY: as in `allowed_cores`; `CPU_SET` writes only below the set's size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for core in cores.filter(|&c| c < libc::CPU_SETSIZE as usize) {
                libc::CPU_SET(core, &mut set);
            }
            libc::CPU_COUNT(&set) > 0 && libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0
        }
    }
}

/// The core a thread last ran on, from its `/proc/<pid>/task/<tid>/stat` line: field 39 (the
/// name, field 2, is in parentheses and may itself hold spaces and parentheses).
#[cfg(target_os = "linux")]
fn last_cpu(stat: &[u8]) -> Option<usize> {
    let after_name = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    let field = after_name.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).nth(39 - 3)?;
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_last_cpu_is_field_39_whatever_the_name() {
        let fields_after_name: Vec<String> =
            (3..=52).map(|n| if n == 39 { "7".into() } else { format!("{}", n * 11) }).collect();
        for name in ["node", "a (b) c", "))", "session multicast"] {
            let line = format!("1234 ({name}) {}\n", fields_after_name.join(" "));
            assert_eq!(last_cpu(line.as_bytes()), Some(7), "{line}");
        }
        assert_eq!(last_cpu(b"1234 (node) S 1 2"), None);
        assert_eq!(last_cpu(b"garbage"), None);
    }

    fn pin_to(cpu: usize) {
        assert!(run_on(std::iter::once(cpu)));
    }

    fn allowed() -> Vec<usize> {
        allowed_cores().unwrap()
    }

    /// A thread standing for the JS thread runs on one core, then on another: the snapshot's
    /// thread follows, on every allowed core but that one.
    #[test]
    fn a_snapshot_keeps_off_the_core_of_the_js_thread_as_it_moves() {
        let cores = allowed();
        if cores.len() < 2 {
            eprintln!("skipped: this process may run on {} core(s); the test needs two", cores.len());
            return;
        }
        let (to_home, home_rx) = std::sync::mpsc::channel::<usize>();
        let (from_home, moved) = std::sync::mpsc::channel::<Thread>();
        let home = std::thread::spawn(move || {
            for cpu in home_rx {
                pin_to(cpu);
                // Run there, so that the kernel records it as the last core.
                let until = std::time::Instant::now() + std::time::Duration::from_millis(20);
                while std::time::Instant::now() < until {}
                from_home.send(Thread::current()).unwrap();
            }
        });
        let snapshot = std::thread::spawn(move || {
            for (k, &js_core) in [cores[0], cores[1], cores[0]].iter().enumerate() {
                to_home.send(js_core).unwrap();
                let js = moved.recv().unwrap();
                if k == 0 {
                    keep_off(js);
                }
                std::thread::sleep(CHECK_EVERY);
                check();
                let now = allowed();
                assert!(!now.contains(&js_core), "the snapshot may still run on core {js_core}: {now:?}");
                assert_eq!(now.len(), cores.len() - 1, "{now:?} of {cores:?}");
            }
        });
        snapshot.join().unwrap();
        home.join().unwrap();
    }
}
