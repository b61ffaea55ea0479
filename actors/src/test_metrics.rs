//! What the actors record in metrics, read back in unit tests: a recorder local to the test's
//! thread (tests on tokio's current-thread runtime run on it), so parallel tests do not see
//! each other's values.

use std::cell::RefCell;
use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

/// Records the metrics of the current thread until dropped.
pub struct Recorded {
    snapshotter: Snapshotter,
    /// A snapshot drains the recorder (counters and gauges swap to 0, histograms empty), so
    /// what every snapshot took is added up here: counters and sample counts are totals, and a
    /// gauge is the sum of its increments and decrements (gauges set to a value are not read
    /// this way).
    totals: RefCell<HashMap<CompositeKey, f64>>,
    _guard: metrics::LocalRecorderGuard<'static>,
}

impl Recorded {
    pub fn start() -> Recorded {
        // Leaked: a test's recorder lives as long as the test, and the guard needs 'static.
        let recorder: &'static DebuggingRecorder = Box::leak(Box::new(DebuggingRecorder::new()));
        let snapshotter = recorder.snapshotter();
        let guard = metrics::set_default_local_recorder(recorder);
        Recorded {
            snapshotter,
            totals: RefCell::default(),
            _guard: guard,
        }
    }

    fn total(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut totals = self.totals.borrow_mut();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let change = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(samples) => samples.len() as f64,
            };
            *totals.entry(key).or_default() += change;
        }
        totals
            .iter()
            .filter(|(key, _)| matches(key, kind, name, labels))
            .map(|(_, v)| v)
            .sum()
    }

    /// The total of the counters named `name` whose labels include `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.total(MetricKind::Counter, name, labels) as u64
    }

    /// The gauges named `name` with `labels`, as the sum of their increments and decrements.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.total(MetricKind::Gauge, name, labels)
    }

    /// How many samples the histograms named `name` with `labels` have taken.
    pub fn samples(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.total(MetricKind::Histogram, name, labels) as usize
    }
}

fn matches(key: &CompositeKey, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> bool {
    key.kind() == kind
        && key.key().name() == name
        && labels.iter().all(|(k, v)| {
            key.key()
                .labels()
                .any(|label| label.key() == *k && label.value() == *v)
        })
}
