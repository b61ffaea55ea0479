//! Run statistics, shared by every simulated device, and the final report (text and JSON).
//! Counters are atomics (read live by the progress bar); latency histograms are sharded by
//! device so thousands of connections do not contend on one lock, and merged at the end.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

const SHARDS: usize = 64;
/// Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant digits.
const MAX_MICROS: u64 = 600_000_000;

pub struct Stats {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub connected: AtomicU64,
    failures: Mutex<BTreeMap<String, u64>>,
    connect_failures: Mutex<BTreeMap<String, u64>>,
    latency: Vec<Mutex<Histogram<u64>>>,
    lag: Vec<Mutex<Histogram<u64>>>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap_or_else(|_| unreachable!("valid bounds"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(MAX_MICROS)
        .clamp(1, MAX_MICROS)
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            failures: Mutex::default(),
            connect_failures: Mutex::default(),
            latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
            lag: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }
}

impl Stats {
    pub fn sent(&self) {
        self.sent_n(1);
    }

    pub fn sent_n(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
    }

    pub fn acked(&self, lane: usize, latency: Duration) {
        self.acked_n(lane, &[latency], 0);
    }

    /// Acknowledgements taken together: `latencies` of those that have one, plus `unmeasured`
    /// that do not (QoS 0 publishes confirmed by a PINGRESP). One lock for the lot.
    pub fn acked_n(&self, lane: usize, latencies: &[Duration], unmeasured: u64) {
        self.acked
            .fetch_add(latencies.len() as u64 + unmeasured, Ordering::Relaxed);
        if latencies.is_empty() {
            return;
        }
        let mut h = lock(&self.latency[lane % SHARDS]);
        for l in latencies {
            let _ = h.record(micros(*l));
        }
    }

    /// How late an open-loop message left; recorded for every message, zero when on time.
    pub fn lag(&self, lane: usize, lag: Duration) {
        self.lags(lane, &[lag]);
    }

    pub fn lags(&self, lane: usize, lags: &[Duration]) {
        let mut h = lock(&self.lag[lane % SHARDS]);
        for l in lags {
            let _ = h.record(micros(*l));
        }
    }

    pub fn failed(&self, reason: &str, count: u64) {
        *lock(&self.failures).entry(reason.to_owned()).or_default() += count;
    }

    pub fn connect_failed(&self, reason: &str) {
        *lock(&self.connect_failures)
            .entry(reason.to_owned())
            .or_default() += 1;
    }

    /// What a worker process (`--processes`) hands its parent: its counters, and its
    /// histograms as (value, count) pairs.
    pub fn worker_report(&self, devices: Vec<DeviceCount>) -> WorkerReport {
        let pairs = |shards: &[Mutex<Histogram<u64>>]| {
            let mut all = histogram();
            for shard in shards {
                let _ = all.add(&*lock(shard));
            }
            all.iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect()
        };
        WorkerReport {
            sent: self.sent.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            connected: self.connected.load(Ordering::Relaxed),
            failures: lock(&self.failures).clone(),
            connect_failures: lock(&self.connect_failures).clone(),
            latency: pairs(&self.latency),
            lag: pairs(&self.lag),
            devices,
        }
    }

    /// Adds a worker's report to these statistics.
    pub fn absorb(&self, w: &WorkerReport) {
        self.sent.fetch_add(w.sent, Ordering::Relaxed);
        self.acked.fetch_add(w.acked, Ordering::Relaxed);
        self.connected.fetch_add(w.connected, Ordering::Relaxed);
        for (reason, n) in &w.failures {
            *lock(&self.failures).entry(reason.clone()).or_default() += n;
        }
        for (reason, n) in &w.connect_failures {
            *lock(&self.connect_failures)
                .entry(reason.clone())
                .or_default() += n;
        }
        let mut latency = lock(&self.latency[0]);
        for &(value, count) in &w.latency {
            let _ = latency.record_n(value.clamp(1, MAX_MICROS), count);
        }
        drop(latency);
        let mut lag = lock(&self.lag[0]);
        for &(value, count) in &w.lag {
            let _ = lag.record_n(value.clamp(1, MAX_MICROS), count);
        }
    }

    pub fn report(&self, transport: &str, elapsed: Duration) -> Report {
        let mut latency = histogram();
        for shard in &self.latency {
            let _ = latency.add(&*lock(shard));
        }
        let mut lag = histogram();
        for shard in &self.lag {
            let _ = lag.add(&*lock(shard));
        }
        let acked = self.acked.load(Ordering::Relaxed);
        let failures = lock(&self.failures).clone();
        let connect_failures = lock(&self.connect_failures).clone();
        Report {
            transport: transport.to_owned(),
            elapsed_seconds: elapsed.as_secs_f64(),
            sent: self.sent.load(Ordering::Relaxed),
            acked,
            failed: failures.values().sum(),
            failures,
            connections_ok: self.connected.load(Ordering::Relaxed),
            connections_failed: connect_failures.values().sum(),
            connect_failures,
            #[allow(clippy::cast_precision_loss)]
            acked_per_second: if elapsed.is_zero() {
                0.0
            } else {
                acked as f64 / elapsed.as_secs_f64()
            },
            latency_ms: Percentiles::of(&latency),
            schedule_lag_ms: Percentiles::of(&lag),
            verify: None,
        }
    }
}

/// One device's counts, as a worker process reports them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceCount {
    pub lane: usize,
    pub sent: u64,
    pub acked: u64,
}

/// A worker process's statistics, merged by its parent into one report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    pub sent: u64,
    pub acked: u64,
    pub connected: u64,
    pub failures: BTreeMap<String, u64>,
    pub connect_failures: BTreeMap<String, u64>,
    /// Latency histogram (microseconds) as (value, count) pairs.
    pub latency: Vec<(u64, u64)>,
    pub lag: Vec<(u64, u64)>,
    pub devices: Vec<DeviceCount>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Percentiles {
        #[allow(clippy::cast_precision_loss)]
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verify {
    pub devices: u64,
    /// Data points (of the counted key) the engine acknowledged.
    pub expected: u64,
    /// Data points found stored.
    pub stored: u64,
    /// Devices with fewer stored than acknowledged.
    pub missing_devices: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub transport: String,
    pub elapsed_seconds: f64,
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    pub connections_ok: u64,
    pub connections_failed: u64,
    pub connect_failures: BTreeMap<String, u64>,
    pub acked_per_second: f64,
    pub latency_ms: Percentiles,
    pub schedule_lag_ms: Percentiles,
    pub verify: Option<Verify>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "transport        {}", self.transport)?;
        writeln!(f, "duration         {:.2} s", self.elapsed_seconds)?;
        if self.transport == "coap" {
            // Connectionless: every simulated device can send.
            writeln!(f, "devices          {}", self.connections_ok)?;
        } else {
            writeln!(
                f,
                "connections      {} ok, {} failed",
                self.connections_ok, self.connections_failed
            )?;
        }
        for (reason, n) in &self.connect_failures {
            writeln!(f, "  refused        {n} × {reason}")?;
        }
        writeln!(
            f,
            "messages         {} sent, {} acked, {} failed",
            self.sent, self.acked, self.failed
        )?;
        for (reason, n) in &self.failures {
            writeln!(f, "  failed         {n} × {reason}")?;
        }
        writeln!(
            f,
            "throughput       {:.0} acked msg/s",
            self.acked_per_second
        )?;
        let l = &self.latency_ms;
        writeln!(
            f,
            "ack latency ms   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )?;
        let s = &self.schedule_lag_ms;
        if s.count > 0 {
            writeln!(
                f,
                "schedule lag ms  p50 {:.3}  p99 {:.3}  max {:.3}",
                s.p50, s.p99, s.max
            )?;
        }
        if let Some(v) = &self.verify {
            writeln!(
                f,
                "verify           {} of {} acked data points stored over {} devices; {} devices missing data",
                v.stored, v.expected, v.devices, v.missing_devices
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_counts_and_percentiles() {
        let stats = Stats::default();
        for i in 1..=1000u64 {
            stats.sent();
            stats.acked(
                usize::try_from(i).unwrap_or(0),
                Duration::from_micros(i * 10),
            );
        }
        stats.sent();
        stats.failed("disconnected", 1);
        stats.connected.fetch_add(3, Ordering::Relaxed);
        stats.connect_failed("bad_token (0x05)");
        let r = stats.report("mqtt", Duration::from_secs(2));
        assert_eq!((r.sent, r.acked, r.failed), (1001, 1000, 1));
        assert_eq!((r.connections_ok, r.connections_failed), (3, 1));
        assert!((r.acked_per_second - 500.0).abs() < 1e-9);
        // 10 µs .. 10 ms uniformly: the median is about 5 ms.
        assert!((r.latency_ms.p50 - 5.0).abs() < 0.05, "{:?}", r.latency_ms);
        assert!((r.latency_ms.max - 10.0).abs() < 0.05, "{:?}", r.latency_ms);
        assert!(r.latency_ms.p99 >= r.latency_ms.p90 && r.latency_ms.p999 >= r.latency_ms.p99);
        let text = r.to_string();
        assert!(text.contains("1001 sent, 1000 acked, 1 failed"), "{text}");
        assert!(text.contains("1 × bad_token (0x05)"), "{text}");
        let json = serde_json::to_value(&r).expect("json");
        assert_eq!(json["acked"], 1000);
        assert_eq!(json["failures"]["disconnected"], 1);
    }

    #[test]
    fn worker_reports_merge_into_the_same_percentiles() {
        // One process recording everything, and the same latencies split over three workers,
        // must report the same counts and percentiles.
        let single = Stats::default();
        let workers: Vec<Stats> = (0..3).map(|_| Stats::default()).collect();
        for i in 1..=3000u64 {
            let latency = Duration::from_micros(i * i % 50_000 + 1);
            single.sent();
            single.acked(0, latency);
            let w = &workers[usize::try_from(i % 3).unwrap_or(0)];
            w.sent();
            w.acked(usize::try_from(i).unwrap_or(0), latency);
        }
        workers[1].failed("disconnected by the server", 4);
        workers[2].connect_failed("refused: unknown access token (0x05)");
        let merged = Stats::default();
        for w in &workers {
            let report = w.worker_report(vec![DeviceCount {
                lane: 0,
                sent: 1,
                acked: 1,
            }]);
            let line = serde_json::to_string(&report).expect("json");
            merged.absorb(&serde_json::from_str(&line).expect("parses"));
        }
        let (a, b) = (
            single.report("mqtt", Duration::from_secs(1)),
            merged.report("mqtt", Duration::from_secs(1)),
        );
        assert_eq!((b.sent, b.acked), (3000, 3000));
        assert_eq!(a.latency_ms, b.latency_ms);
        assert_eq!(b.failures.get("disconnected by the server"), Some(&4));
        assert_eq!(b.connections_failed, 1);
    }

    #[test]
    fn coap_reports_devices_not_connections() {
        let stats = Stats::default();
        stats.connected.fetch_add(5, Ordering::Relaxed);
        let text = stats.report("coap", Duration::from_secs(1)).to_string();
        assert!(text.contains("devices          5"), "{text}");
        assert!(!text.contains("connections"), "{text}");
    }

    #[test]
    fn an_empty_run_reports_zeroes() {
        let r = Stats::default().report("http", Duration::ZERO);
        assert_eq!(r.acked_per_second, 0.0);
        assert_eq!(r.latency_ms, Percentiles::default());
    }
}
