//! Rate limits for log lines a peer can trigger. A device that sends a bad payload in a loop
//! must not be able to write the engine's log at its line rate: each such log site owns a
//! [`LogLimit`], a token bucket (governor's GCRA) that lets bursts through, then one line per
//! interval; the lines it holds back are counted, reported on the next line that passes (as a
//! `suppressed` field) and in `engine_log_lines_suppressed_total{site}`.
//!
//! ```
//! use std::sync::LazyLock;
//! use actors::log_limit::LogLimit;
//!
//! static REJECTED: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::new("uplink_rejected", 5, 20));
//!
//! if let Some(suppressed) = REJECTED.check() {
//!     tracing::warn!(suppressed, "uplink rejected");
//! }
//! ```

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use metrics::{Counter, counter};

use crate::metrics::LOG_LINES_SUPPRESSED;

/// One log site's budget. Share it (a `static` or an `Arc`): the budget is per site, across
/// every peer, so the log's volume is bounded whatever the number of peers.
pub struct LogLimit {
    limiter: DefaultDirectRateLimiter,
    /// Lines held back since the last one that passed.
    suppressed: AtomicU64,
    counter: Counter,
}

impl LogLimit {
    /// `per_second` lines a second on average, bursts of up to `burst` lines (both at least 1).
    /// `site` labels the suppressed-lines counter; list it in `metrics::LOG_SITES`.
    pub fn new(site: &'static str, per_second: u32, burst: u32) -> LogLimit {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        LogLimit {
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            suppressed: AtomicU64::new(0),
            counter: counter!(LOG_LINES_SUPPRESSED, "site" => site),
        }
    }

    /// `Some(n)`: log this line, and say that `n` lines were held back before it. `None`: leave
    /// it out; it is counted.
    pub fn check(&self) -> Option<u64> {
        if self.limiter.check().is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            self.counter.increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_held_back_and_reported() {
        // One line a second: within this test, only the burst passes.
        let limit = LogLimit::new("test", 1, 3);
        let passed: Vec<Option<u64>> = (0..10).map(|_| limit.check()).collect();
        assert_eq!(&passed[..3], &[Some(0), Some(0), Some(0)]);
        assert!(passed[3..].iter().all(Option::is_none), "{passed:?}");
        assert_eq!(limit.suppressed.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn the_next_line_that_passes_carries_the_count() {
        let limit = LogLimit::new("test", 1000, 1);
        assert_eq!(limit.check(), Some(0));
        let mut held = 0;
        let reported = loop {
            match limit.check() {
                None => held += 1,
                Some(n) => break n,
            }
        };
        assert_eq!(reported, held);
    }

    #[test]
    fn zero_rates_are_taken_as_one() {
        let limit = LogLimit::new("test", 0, 0);
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
    }
}
