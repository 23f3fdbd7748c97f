//! How a periodic snapshot spreads its work over time (docs/persistence.md "Writing a
//! snapshot"). After each slice of work (a shard of the table encoded and written, a write-back
//! waited for), the snapshot pauses `PAUSE_PER_WORK` times as long as the slice took, so that it
//! is busy an eighth of the time at most; but it never pauses while it is behind its schedule
//! (its share of the table done by the same share of `within`), so that it still ends within
//! `within` when it can. No clock and no sleep here: the writer passes `now` and sleeps.

use std::time::{Duration, Instant};

/// The pause after a slice of work, as a multiple of the slice's wall time.
const PAUSE_PER_WORK: u32 = 7;

/// Pauses shorter than this are saved up: each pause costs two context switches.
const MIN_PAUSE: Duration = Duration::from_millis(4);

pub(super) struct Pacer {
    started: Instant,
    within: Duration,
    /// The end of the last pause: the slice of work in progress began then.
    busy_since: Instant,
    /// Pause owed for the work done since the last pause.
    owed: Duration,
}

impl Pacer {
    /// A snapshot that begins `now` and is to end within `within`.
    pub(super) fn new(now: Instant, within: Duration) -> Pacer {
        Pacer { started: now, within, busy_since: now, owed: Duration::ZERO }
    }

    /// A slice of work ended `now`, with `done` (0 to 1) of the snapshot done: how long to pause
    /// now. Owed pause is forgiven while the snapshot is behind its schedule.
    pub(super) fn pause(&mut self, now: Instant, done: f64) -> Duration {
        self.owed += now.saturating_duration_since(self.busy_since) * PAUSE_PER_WORK;
        self.busy_since = now;
        if self.owed < MIN_PAUSE {
            return Duration::ZERO;
        }
        let due = self.started + self.within.mul_f64(done.clamp(0.0, 1.0));
        let pause = std::mem::take(&mut self.owed).min(due.saturating_duration_since(now));
        self.busy_since = now + pause;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_slice_of_work_earns_seven_times_its_length_of_pause() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, 1000 * MS);
        assert_eq!(pacer.pause(t0 + 2 * MS, 0.5), 14 * MS);
        // The next slice begins at the pause's end.
        assert_eq!(pacer.pause(t0 + 17 * MS, 0.6), 7 * MS);
    }

    #[test]
    fn short_slices_save_their_pause_up() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, 1000 * MS);
        assert_eq!(pacer.pause(t0 + Duration::from_micros(300), 0.1), Duration::ZERO);
        assert_eq!(pacer.pause(t0 + Duration::from_micros(600), 0.2), Duration::from_micros(4200));
    }

    #[test]
    fn behind_its_schedule_it_does_not_pause() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(t0, 100 * MS);
        // 60 ms in, a tenth done: behind.
        assert_eq!(pacer.pause(t0 + 60 * MS, 0.1), Duration::ZERO);
        // What was owed then is not paid later.
        assert_eq!(pacer.pause(t0 + 61 * MS, 0.9), 7 * MS);
        // Just ahead: the pause ends on the schedule.
        let mut pacer = Pacer::new(t0, 100 * MS);
        assert_eq!(pacer.pause(t0 + 10 * MS, 0.12), 2 * MS);
    }

    proptest! {
        /// Over any run of slices: it pauses seven times its work at most, never past its
        /// schedule, so that it ends within `within` plus its own work at the latest.
        #[test]
        fn pauses_keep_the_duty_and_the_schedule(
            slices in proptest::collection::vec(0u64..20_000, 1..200),
            within_ms in 1u32..5_000,
        ) {
            let t0 = Instant::now();
            let within = within_ms * MS;
            let mut pacer = Pacer::new(t0, within);
            let (mut now, mut work, mut paused) = (t0, Duration::ZERO, Duration::ZERO);
            for (k, micros) in slices.iter().enumerate() {
                let slice = Duration::from_micros(*micros);
                now += slice;
                work += slice;
                let done = (k + 1) as f64 / slices.len() as f64;
                let pause = pacer.pause(now, done);
                // Never a pause past the schedule.
                prop_assert!(pause.is_zero() || now + pause <= t0 + within.mul_f64(done));
                now += pause;
                paused += pause;
            }
            prop_assert!(paused <= work * PAUSE_PER_WORK);
            prop_assert!(now - t0 <= within + work);
        }
    }
}
