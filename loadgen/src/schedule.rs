//! Open-loop pacing. A total rate is shared by `lanes` independent senders (devices or HTTP
//! workers); lane `i` sends its `k`-th message at `start + phase_i + k * period`, with phases
//! spread evenly so the total is steady rather than bursty. A sender that falls behind sends at
//! once and the lag (how late it was) is reported: it measures the engine pushing back.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    start: Instant,
    period: Duration,
    phase: Duration,
}

impl Schedule {
    /// The schedule of lane `lane` of `lanes` sharing `total_rate` messages per second.
    pub fn lane(start: Instant, total_rate: f64, lanes: usize, lane: usize) -> Schedule {
        let lanes = lanes.max(1);
        let period = Duration::from_secs_f64(lanes as f64 / total_rate.max(f64::MIN_POSITIVE));
        #[allow(clippy::cast_possible_truncation)]
        let phase = period.mul_f64(lane as f64 / lanes as f64);
        Schedule {
            start,
            period,
            phase,
        }
    }

    /// When message `k` (0-based) of this lane is due.
    pub fn due(&self, k: u64) -> Instant {
        #[allow(clippy::cast_precision_loss)]
        let offset = self.period.mul_f64(k as f64);
        self.start + self.phase + offset
    }

    /// How late message `k` is when sent at `now` (zero when on time or early).
    pub fn lag(&self, k: u64, now: Instant) -> Duration {
        now.saturating_duration_since(self.due(k))
    }

    pub fn period(&self) -> Duration {
        self.period
    }
}

/// How many messages lane `lane` of `lanes` sends out of `total`: the remainder goes to the
/// first lanes.
pub fn share(total: u64, lanes: usize, lane: usize) -> u64 {
    let lanes = lanes.max(1) as u64;
    let lane = lane as u64;
    total / lanes + u64::from(lane < total % lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_interleave_into_a_steady_total_rate() {
        let start = Instant::now();
        // 1000 msg/s over 4 lanes: each lane every 4 ms, phases 0, 1, 2, 3 ms.
        let lanes: Vec<Schedule> = (0..4)
            .map(|i| Schedule::lane(start, 1000.0, 4, i))
            .collect();
        assert_eq!(lanes[0].period(), Duration::from_millis(4));
        let mut due: Vec<Duration> = lanes
            .iter()
            .flat_map(|l| (0..3).map(|k| l.due(k) - start))
            .collect();
        due.sort();
        let want: Vec<Duration> = (0..12).map(Duration::from_millis).collect();
        for (got, want) in due.iter().zip(&want) {
            let diff = got.abs_diff(*want);
            assert!(diff < Duration::from_micros(1), "{got:?} vs {want:?}");
        }
    }

    #[test]
    fn lag_is_how_late_a_message_went_out() {
        let start = Instant::now();
        let s = Schedule::lane(start, 10.0, 1, 0);
        assert_eq!(s.lag(0, start), Duration::ZERO);
        assert_eq!(
            s.lag(1, start + Duration::from_millis(50)),
            Duration::ZERO,
            "early is not late"
        );
        let late = s.lag(1, start + Duration::from_millis(130));
        assert!(
            late.abs_diff(Duration::from_millis(30)) < Duration::from_micros(1),
            "{late:?}"
        );
    }

    #[test]
    fn shares_add_up_to_the_total() {
        let cases = [(10, 3), (0, 4), (7, 7), (5, 8), (1_000_003, 16)];
        for (total, lanes) in cases {
            let sum: u64 = (0..lanes).map(|i| share(total, lanes, i)).sum();
            assert_eq!(sum, total, "{total} over {lanes}");
            let max = (0..lanes)
                .map(|i| share(total, lanes, i))
                .max()
                .unwrap_or(0);
            let min = (0..lanes)
                .map(|i| share(total, lanes, i))
                .min()
                .unwrap_or(0);
            assert!(max - min <= 1);
        }
    }
}
