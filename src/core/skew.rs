//! Clock offsets of members, from the wall-clock time their `Heartbeat`s and `Greeting`s carry
//! (docs/how-it-works.md "Clocks", docs/design.md §3.13). Pure: no clock, no I/O, every time is an input.
//!
//! One sample is the member's wall clock when it sent, minus this node's when the message was
//! handled: the true offset less the one-way delay (network, queues, a busy receiver). Delays
//! only make a sample smaller, never larger, so the largest of the last `SAMPLES` is the one
//! least delayed, as NTP keeps its least-delayed sample: one late heartbeat, or seven, cannot move
//! the estimate. The estimate is therefore a lower bound of the offset, short by the smallest
//! recent delay: microseconds on a LAN. (It overstates a negative offset by as much.)

use std::time::{Duration, Instant};

/// Samples kept per member: the last 8 heartbeats (4 s at the default heartbeatInterval).
pub const SAMPLES: usize = 8;
/// A warning about one member is repeated at most this often, unless its offset changed a lot.
pub const WARN_INTERVAL: Duration = Duration::from_secs(600);

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClockOffset {
    /// A ring of offsets in ms; the first `count` are filled.
    samples: [i64; SAMPLES],
    count: usize,
    next: usize,
    /// When this member's offset was last warned about, and the offset then.
    warned: Option<(Instant, i64)>,
}

impl ClockOffset {
    /// Adds the sample of one message sent at `sent_ms` (the sender's clock) and handled at
    /// `received_ms` (this node's clock), both epoch ms.
    pub fn sample(&mut self, sent_ms: u64, received_ms: u64) {
        let offset = (i128::from(sent_ms) - i128::from(received_ms)).clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        self.samples[self.next] = offset;
        self.next = (self.next + 1) % SAMPLES;
        self.count = (self.count + 1).min(SAMPLES);
    }

    /// The member's clock minus this node's, in ms (positive: the member's clock is ahead), or
    /// `None` before the first sample.
    pub fn estimate(&self) -> Option<i64> {
        self.samples[..self.count].iter().copied().max()
    }

    /// The offset to warn about now, if any: beyond `max_skew_ms` (0: never), judged on a full
    /// window of samples (so not on one heartbeat alone), and not warned about in the last
    /// `WARN_INTERVAL` unless it moved since by at least the offset warned about (doubled, say).
    pub fn warning_due(&mut self, max_skew_ms: u64, now: Instant) -> Option<i64> {
        let offset = self.estimate().filter(|_| self.count == SAMPLES)?;
        if max_skew_ms == 0 || offset.unsigned_abs() <= max_skew_ms {
            return None;
        }
        let due = self.warned.is_none_or(|(at, warned)| {
            now.saturating_duration_since(at) >= WARN_INTERVAL || offset.abs_diff(warned) >= warned.unsigned_abs()
        });
        if due {
            self.warned = Some((now, offset));
        }
        due.then_some(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;
    const HOUR: i64 = 3_600_000;

    /// Samples of a member whose clock is `offset` ms off, each message delayed by `delays` ms.
    fn offsets(offset: i64, delays: &[u64]) -> ClockOffset {
        let mut clock = ClockOffset::default();
        for (i, delay) in delays.iter().enumerate() {
            let sent_true = NOW + i as u64 * 500;
            clock.sample(sent_true.saturating_add_signed(offset), sent_true + delay);
        }
        clock
    }

    #[test]
    fn unknown_until_the_first_sample() {
        assert_eq!(ClockOffset::default().estimate(), None);
        assert_eq!(offsets(HOUR, &[0]).estimate(), Some(HOUR));
        assert_eq!(offsets(-HOUR, &[0]).estimate(), Some(-HOUR));
    }

    #[test]
    fn a_delayed_heartbeat_does_not_move_the_estimate() {
        let steady = offsets(HOUR, &[1; SAMPLES]);
        let one_late = offsets(HOUR, &[1, 1, 1, 2_000, 1, 1, 1, 1]);
        assert_eq!(steady.estimate(), Some(HOUR - 1));
        assert_eq!(one_late.estimate(), Some(HOUR - 1));
        // Seven late ones neither, as long as one came through quickly.
        assert_eq!(offsets(0, &[900, 800, 700, 2, 600, 500, 400, 300]).estimate(), Some(-2));
    }

    #[test]
    fn a_clock_step_is_followed_within_a_window() {
        let mut clock = offsets(HOUR, &[0; SAMPLES]);
        // The member's clock is set right (stepped back an hour): the old samples age out.
        for i in 0..SAMPLES {
            assert_eq!(clock.estimate(), Some(HOUR), "after {i} new samples");
            clock.sample(NOW, NOW);
        }
        assert_eq!(clock.estimate(), Some(0));
        // A step forward shows at once.
        clock.sample(NOW + 5_000, NOW);
        assert_eq!(clock.estimate(), Some(5_000));
    }

    #[test]
    fn absurd_timestamps_saturate() {
        let mut clock = ClockOffset::default();
        clock.sample(u64::MAX, 0);
        assert_eq!(clock.estimate(), Some(i64::MAX));
        let mut clock = ClockOffset::default();
        clock.sample(0, u64::MAX);
        assert_eq!(clock.estimate(), Some(i64::MIN));
    }

    #[test]
    fn warns_beyond_the_threshold_once_a_window_is_full() {
        let t0 = Instant::now();
        let mut clock = offsets(HOUR, &[0; SAMPLES - 1]);
        assert_eq!(clock.warning_due(1_000, t0), None, "not on fewer than SAMPLES heartbeats");
        clock.sample(NOW + HOUR as u64, NOW);
        assert_eq!(clock.warning_due(0, t0), None, "maxClockSkew 0: never");
        assert_eq!(clock.warning_due(1_000, t0), Some(HOUR));
        assert_eq!(offsets(-HOUR, &[0; SAMPLES]).warning_due(1_000, t0), Some(-HOUR), "behind, too");
        assert_eq!(offsets(1_000, &[0; SAMPLES]).warning_due(1_000, t0), None, "at the threshold: fine");
        assert_eq!(offsets(-1_001, &[0; SAMPLES]).warning_due(1_000, t0), Some(-1_001));
        assert_eq!(offsets(5, &[0; SAMPLES]).warning_due(1, t0), Some(5));
    }

    #[test]
    fn warnings_are_repeated_after_ten_minutes_or_when_the_offset_moves_a_lot() {
        let t0 = Instant::now();
        let mut clock = offsets(2_000, &[0; SAMPLES]);
        assert_eq!(clock.warning_due(1_000, t0), Some(2_000));
        assert_eq!(clock.warning_due(1_000, t0 + Duration::from_secs(1)), None);
        assert_eq!(clock.warning_due(1_000, t0 + WARN_INTERVAL - Duration::from_millis(1)), None);
        assert_eq!(clock.warning_due(1_000, t0 + WARN_INTERVAL), Some(2_000));
        let t1 = t0 + WARN_INTERVAL;
        // Grown, but not doubled: quiet. Doubled: said again at once.
        for _ in 0..SAMPLES {
            clock.sample(NOW + 3_999, NOW);
        }
        assert_eq!(clock.warning_due(1_000, t1 + Duration::from_secs(1)), None);
        clock.sample(NOW + 4_000, NOW);
        assert_eq!(clock.warning_due(1_000, t1 + Duration::from_secs(2)), Some(4_000));
        // Flipped to the other side (as far off): said again.
        for _ in 0..SAMPLES {
            clock.sample(NOW - 4_000, NOW);
        }
        assert_eq!(clock.warning_due(1_000, t1 + Duration::from_secs(3)), Some(-4_000));
        // Back within the threshold: nothing to say; beyond it again, within ten minutes, by
        // less than it moved: quiet.
        for _ in 0..SAMPLES {
            clock.sample(NOW, NOW);
        }
        assert_eq!(clock.warning_due(1_000, t1 + Duration::from_secs(4)), None);
        for _ in 0..SAMPLES {
            clock.sample(NOW - 1_500, NOW);
        }
        assert_eq!(clock.warning_due(1_000, t1 + Duration::from_secs(5)), None);
    }

    proptest! {
        /// With any delays, the estimate is at most the true offset, and short of it by no more
        /// than the smallest delay of the window.
        #[test]
        fn the_estimate_is_the_offset_less_the_smallest_recent_delay(
            offset in -10 * HOUR..10 * HOUR,
            delays in prop::collection::vec(0u64..5_000, 1..3 * SAMPLES),
        ) {
            let estimate = offsets(offset, &delays).estimate().unwrap();
            let window = &delays[delays.len().saturating_sub(SAMPLES)..];
            let least = *window.iter().min().unwrap() as i64;
            prop_assert_eq!(estimate, offset - least);
        }

        /// One heartbeat delayed by any amount, anywhere in a window of prompt ones (≤ 1 ms),
        /// moves the estimate by at most 1 ms.
        #[test]
        fn one_outlier_is_ignored(offset in -HOUR..HOUR, late in 0usize..SAMPLES, delay in 0u64..60_000) {
            let mut delays = [1u64; SAMPLES];
            delays[late] = delay;
            let estimate = offsets(offset, &delays).estimate().unwrap();
            prop_assert!((offset - 1..=offset).contains(&estimate), "{} for {}", estimate, offset);
        }
    }
}
