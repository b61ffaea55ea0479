//! The one budget of log lines MQTT peers can trigger (one per packet or per connection): a
//! device sending garbage in a loop cannot write the log at its line rate.

use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actors::metrics::MQTT_LOG_LINES_SUPPRESSED;
use metrics::counter;
use tracing::warn;

/// Logs an event a peer can cause (one per packet or per connection) within the process's
/// budget for such lines. Peer-controlled values are given as `?` fields (escaped).
macro_rules! peer_event {
    ($level:ident, $($field:tt)+) => {
        if tracing::enabled!(tracing::Level::$level) && $crate::transport::mqtt::peer_log::admitted() {
            tracing::event!(tracing::Level::$level, $($field)+);
        }
    };
}
pub(super) use peer_event;

/// A token bucket for the log lines peers can trigger: `BURST` lines at once, then one per
/// `REFILL`. Lines held back are counted, and their number is logged in one line at most every
/// `REPORT_EVERY`, at the next line a peer triggers.
struct LogBudget {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
    reported: Option<Instant>,
}

impl LogBudget {
    const BURST: u32 = 20;
    const REFILL: Duration = Duration::from_secs(1);
    const REPORT_EVERY: Duration = Duration::from_secs(10);

    fn new(now: Instant) -> LogBudget {
        LogBudget {
            tokens: Self::BURST,
            refilled: now,
            suppressed: 0,
            reported: None,
        }
    }

    /// Whether a line may go out at `now`, and how many held-back lines to report first
    /// (0: none).
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let periods =
            now.saturating_duration_since(self.refilled).as_millis() / Self::REFILL.as_millis();
        if periods > 0 {
            let periods = u32::try_from(periods).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(periods).min(Self::BURST);
            self.refilled = if self.tokens == Self::BURST {
                now
            } else {
                // Fewer than BURST periods passed: no overflow.
                self.refilled + Self::REFILL * periods
            };
        }
        let admitted = self.tokens > 0;
        if admitted {
            self.tokens -= 1;
        } else {
            self.suppressed += 1;
        }
        let due = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= Self::REPORT_EVERY);
        if self.suppressed > 0 && due {
            self.reported = Some(now);
            (admitted, std::mem::take(&mut self.suppressed))
        } else {
            (admitted, 0)
        }
    }
}

static PEER_LOGS: LazyLock<Mutex<LogBudget>> =
    LazyLock::new(|| Mutex::new(LogBudget::new(Instant::now())));

/// Takes one line from the process's budget of peer-triggered log lines.
pub(super) fn admitted() -> bool {
    let (admitted, report) = PEER_LOGS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(Instant::now());
    if !admitted {
        counter!(MQTT_LOG_LINES_SUPPRESSED).increment(1);
    }
    if report > 0 {
        warn!(
            suppressed = report,
            "mqtt log lines triggered by peers were suppressed"
        );
    }
    admitted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_lets_a_burst_through_then_one_per_period() {
        let t0 = Instant::now();
        let mut budget = LogBudget::new(t0);
        for _ in 0..LogBudget::BURST {
            assert_eq!(budget.admit(t0), (true, 0));
        }
        // The first line held back is reported at once (nothing was reported before).
        assert_eq!(budget.admit(t0), (false, 1));
        for _ in 0..5 {
            assert_eq!(budget.admit(t0), (false, 0));
        }
        // One period later, one line; the count waits for the report period.
        let t1 = t0 + LogBudget::REFILL;
        assert_eq!(budget.admit(t1), (true, 0));
        assert_eq!(budget.admit(t1), (false, 0));
        let t2 = t0 + LogBudget::REPORT_EVERY;
        assert_eq!(budget.admit(t2), (true, 6));
        // A quiet spell refills the whole burst, no more.
        let t3 = t2 + LogBudget::REFILL * 1000;
        for _ in 0..LogBudget::BURST {
            assert!(budget.admit(t3).0);
        }
        assert!(!budget.admit(t3).0);
    }
}
