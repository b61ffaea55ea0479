//! Recent exchanges by (peer, message id), so that a retransmitted request is answered again
//! and never processed twice (RFC 7252 §4.5). Bounded by age, count and bytes; an exchange
//! forgotten before its lifetime to stay within a bound is counted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::metrics::{COAP_EVICTED, COAP_EXCHANGES};
use metrics::{counter, gauge};

pub type ExchangeKey = (SocketAddr, u16);

/// What one exchange is charged besides its answer: the map and queue entries and the answer's
/// allocation header (measured on 64-bit Linux, rounded up).
const EXCHANGE_OVERHEAD: usize = 200;

/// What is known of an exchange seen before.
#[derive(Clone, Debug, PartialEq)]
pub enum Seen {
    /// Being processed: a retransmission is ignored (the answer is on its way).
    Running,
    /// Answered with these bytes: a retransmission gets them again.
    Answered(Arc<[u8]>),
}

pub struct Exchanges {
    lifetime: Duration,
    max: usize,
    max_bytes: usize,
    by_key: HashMap<ExchangeKey, (Instant, Seen)>,
    /// Oldest first; always exactly the keys of `by_key` with their start.
    order: VecDeque<(Instant, ExchangeKey)>,
    /// Charged bytes: answers plus overhead.
    bytes: usize,
}

impl Exchanges {
    pub fn new(lifetime: Duration, max: usize, max_bytes: usize) -> Exchanges {
        Exchanges {
            lifetime,
            max: max.max(1),
            max_bytes,
            by_key: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
        }
    }

    /// `None` when the exchange is new (and now running); else what is known of it.
    pub fn begin(&mut self, key: ExchangeKey, now: Instant) -> Option<Seen> {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < self.lifetime {
                break;
            }
            self.pop_oldest(false);
        }
        if let Some((_, seen)) = self.by_key.get(&key) {
            return Some(seen.clone());
        }
        while self.order.len() >= self.max || self.bytes + EXCHANGE_OVERHEAD > self.max_bytes {
            if !self.pop_oldest(true) {
                break;
            }
        }
        self.by_key.insert(key, (now, Seen::Running));
        self.order.push_back((now, key));
        self.bytes += EXCHANGE_OVERHEAD;
        self.publish();
        None
    }

    /// Records the answer of a running exchange (one forgotten meanwhile stays forgotten).
    pub fn answer(&mut self, key: ExchangeKey, bytes: Arc<[u8]>) {
        let Some((_, seen)) = self.by_key.get_mut(&key) else {
            return;
        };
        let added = bytes.len();
        if let Seen::Answered(old) = std::mem::replace(seen, Seen::Answered(bytes)) {
            self.bytes -= old.len();
        }
        self.bytes += added;
        while self.bytes > self.max_bytes {
            if !self.pop_oldest(true) {
                break;
            }
        }
        self.publish();
    }

    /// Drops the oldest exchange; `early`: before its lifetime (counted).
    fn pop_oldest(&mut self, early: bool) -> bool {
        let Some((_, key)) = self.order.pop_front() else {
            return false;
        };
        if let Some((_, seen)) = self.by_key.remove(&key) {
            let answer = match seen {
                Seen::Answered(bytes) => bytes.len(),
                Seen::Running => 0,
            };
            self.bytes = self.bytes.saturating_sub(EXCHANGE_OVERHEAD + answer);
        }
        if early {
            counter!(COAP_EVICTED, "what" => "exchange").increment(1);
        }
        self.publish();
        true
    }

    fn publish(&self) {
        gauge!(COAP_EXCHANGES).set(self.by_key.len() as f64);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.order.len(), self.by_key.len());
        let charged: usize = self
            .by_key
            .values()
            .map(|(_, seen)| match seen {
                Seen::Answered(b) => b.len() + EXCHANGE_OVERHEAD,
                Seen::Running => EXCHANGE_OVERHEAD,
            })
            .sum();
        assert_eq!(charged, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().expect("addr")
    }

    #[test]
    fn retransmissions_are_recognised_until_the_lifetime_ends() {
        let mut ex = Exchanges::new(Duration::from_secs(10), 100, usize::MAX);
        let t0 = Instant::now();
        assert_eq!(ex.begin((peer(), 7), t0), None, "new");
        assert_eq!(ex.begin((peer(), 7), t0), Some(Seen::Running));
        ex.answer((peer(), 7), Arc::from(vec![1, 2]));
        assert_eq!(
            ex.begin((peer(), 7), t0),
            Some(Seen::Answered(Arc::from(vec![1, 2])))
        );
        assert_eq!(ex.begin((peer(), 8), t0), None, "another message id is new");
        ex.check_invariants();
        let later = t0 + Duration::from_secs(11);
        assert_eq!(
            ex.begin((peer(), 7), later),
            None,
            "forgotten after the lifetime"
        );
        ex.check_invariants();
    }

    #[test]
    fn the_cache_is_bounded_in_count_and_bytes() {
        let mut ex = Exchanges::new(Duration::from_secs(100), 3, usize::MAX);
        let now = Instant::now();
        for id in 0..10 {
            ex.begin((peer(), id), now);
            ex.check_invariants();
        }
        assert_eq!(ex.len(), 3);
        assert_eq!(ex.begin((peer(), 0), now), None, "the oldest went first");

        let max_bytes = 10 * (EXCHANGE_OVERHEAD + 1000);
        let mut ex = Exchanges::new(Duration::from_secs(100), 1_000_000, max_bytes);
        for id in 0..1000 {
            ex.begin((peer(), id), now);
            ex.answer((peer(), id), Arc::from(vec![0u8; 1000]));
            ex.check_invariants();
            assert!(ex.bytes <= max_bytes);
        }
        assert_eq!(ex.len(), 10);
        assert!(matches!(
            ex.begin((peer(), 999), now),
            Some(Seen::Answered(_))
        ));
    }

    #[test]
    fn an_exchange_is_forgotten_exactly_at_its_lifetime() {
        let mut ex = Exchanges::new(Duration::from_secs(10), 100, usize::MAX);
        let t0 = Instant::now();
        assert_eq!(ex.begin((peer(), 1), t0), None);
        let just_before = t0 + Duration::from_secs(10) - Duration::from_millis(1);
        assert_eq!(ex.begin((peer(), 1), just_before), Some(Seen::Running));
        assert_eq!(ex.begin((peer(), 1), t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn the_byte_bound_is_inclusive_and_holds_for_every_answer() {
        let now = Instant::now();
        // Exactly three exchanges fit.
        let mut ex = Exchanges::new(Duration::from_secs(100), 100, 3 * EXCHANGE_OVERHEAD);
        for id in 0..3 {
            assert_eq!(ex.begin((peer(), id), now), None);
        }
        assert_eq!(ex.len(), 3);
        assert_eq!(ex.begin((peer(), 0), now), Some(Seen::Running));

        // A second answer to one exchange replaces the first in the charge.
        let max_bytes = 10 * (EXCHANGE_OVERHEAD + 1000);
        let mut ex = Exchanges::new(Duration::from_secs(100), 100, max_bytes);
        for id in 0..10 {
            ex.begin((peer(), id), now);
            ex.answer((peer(), id), Arc::from(vec![0u8; 1000]));
        }
        ex.answer((peer(), 9), Arc::from(vec![0u8; 10]));
        ex.check_invariants();
        assert_eq!(ex.len(), 10);
        // One answer worth five exchanges makes room by forgetting as many as it takes.
        ex.begin((peer(), 10), now);
        ex.answer(
            (peer(), 10),
            Arc::from(vec![0u8; 5 * (EXCHANGE_OVERHEAD + 1000)]),
        );
        ex.check_invariants();
        assert!(ex.bytes <= max_bytes, "{} > {max_bytes}", ex.bytes);
        assert!(matches!(
            ex.begin((peer(), 10), now),
            Some(Seen::Answered(_))
        ));
    }

    /// A byte bound smaller than one exchange still lets each request through, one at a time.
    #[test]
    fn a_bound_below_one_exchange_keeps_just_the_newest() {
        let now = Instant::now();
        let mut ex = Exchanges::new(Duration::from_secs(100), 100, 1);
        for id in 0..3 {
            assert_eq!(ex.begin((peer(), id), now), None);
            assert_eq!(ex.len(), 1);
        }
        ex.check_invariants();
    }
}
