//! What keeps one script run inside its limits where Rhai's own checks do not reach: the
//! wall-time deadline, checked at every operation and inside helpers, and the size checks a
//! helper makes before it allocates.
//!
//! Rhai checks the size of a function's result only after the function returned, so a helper
//! that sizes an allocation from its arguments (`padEnd("x", 1e12, "y")`) would abort the
//! process before any check; each such helper asks [`string_fits`], [`array_fits`] or
//! [`map_fits`] first. Rhai calls the progress callback once per operation, but one operation
//! can be a helper or built-in working on a megabyte: a deadline looked at every 1 024
//! operations let a loop of such calls run for seconds past its limit. The callback now looks
//! at a coarse clock at every operation (an atomic load, a few milliseconds behind the real
//! clock, advanced by one thread only while scripts run), and helpers look at the real clock.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rhai::{Dynamic, EvalAltResult, NativeCallContext, Position};

/// How far the coarse clock may lag the real one while scripts run.
const TICK: Duration = Duration::from_millis(2);

/// Nesting of maps and arrays that helpers which walk a value recursively accept (the same as
/// serde_json's parser, so whatever `JSON.parse` returns can be written back).
pub const MAX_DEPTH: usize = 128;

pub type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

/// A script error with this message.
pub fn error<T>(message: impl Into<String>) -> Result<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    )))
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since [`epoch`], as of the clock thread's last tick.
static COARSE_NOW: AtomicU64 = AtomicU64::new(0);
/// Runs in progress on any thread: the clock thread ticks only while there are some.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// When the run on this thread must end, in milliseconds since [`epoch`]; `u64::MAX` when
    /// no run is in progress.
    static DEADLINE: Cell<u64> = const { Cell::new(u64::MAX) };
}

/// The clock thread, started on the first run; `None` if it could not be spawned (then only
/// the real-clock checks hold the deadline).
fn clock() -> Option<&'static Thread> {
    static CLOCK: OnceLock<Option<Thread>> = OnceLock::new();
    CLOCK
        .get_or_init(|| {
            std::thread::Builder::new()
                .name("script-clock".into())
                .spawn(|| {
                    loop {
                        if RUNNING.load(Ordering::Acquire) == 0 {
                            // An `unpark` sent before this `park` makes it return at once, so
                            // a run starting now is not missed.
                            std::thread::park();
                            continue;
                        }
                        COARSE_NOW.fetch_max(millis(Instant::now()), Ordering::Relaxed);
                        std::thread::sleep(TICK);
                    }
                })
                .ok()
                .map(|handle| handle.thread().clone())
        })
        .as_ref()
}

/// The deadline of the run on this thread, in force until dropped.
pub struct Run {
    /// Bound to the thread whose deadline it set.
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Starts a run on this thread that must end within `limit`.
pub fn start(limit: Duration) -> Run {
    let now = millis(Instant::now());
    let limit = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
    COARSE_NOW.fetch_max(now, Ordering::Relaxed);
    DEADLINE.set(now.saturating_add(limit));
    if RUNNING.fetch_add(1, Ordering::AcqRel) == 0
        && let Some(clock) = clock()
    {
        clock.unpark();
    }
    Run {
        _not_send: std::marker::PhantomData,
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        DEADLINE.set(u64::MAX);
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether this thread's run is past its deadline by the coarse clock: cheap enough to ask at
/// every operation.
pub fn expired_coarse() -> bool {
    COARSE_NOW.load(Ordering::Relaxed) >= DEADLINE.get()
}

/// Whether this thread's run is past its deadline by the real clock.
pub fn expired() -> bool {
    let deadline = DEADLINE.get();
    deadline != u64::MAX && millis(Instant::now()) >= deadline
}

/// Fails the run when it is past its deadline. Helpers call it before and during long work.
pub fn check_deadline() -> Result<()> {
    if expired() {
        return Err(Box::new(EvalAltResult::ErrorTerminated(
            Dynamic::UNIT,
            Position::NONE,
        )));
    }
    Ok(())
}

/// A limit as Rhai reads it: 0 means none.
fn limit(max: usize) -> usize {
    if max == 0 { usize::MAX } else { max }
}

/// Checks that a string of `bytes` (`None`: more than a `usize` holds) fits the run's string
/// limit, before anything is allocated.
pub fn string_fits(ctx: &NativeCallContext, helper: &str, bytes: Option<usize>) -> Result<()> {
    let max = limit(ctx.engine().max_string_size());
    match bytes {
        Some(n) if n <= max => Ok(()),
        Some(n) => error(format!(
            "{helper}: the result would be {n} bytes, over the string limit of {max} bytes"
        )),
        None => error(format!(
            "{helper}: the result would be over the string limit of {max} bytes"
        )),
    }
}

/// Checks that an array or blob of `items` fits the run's array limit.
pub fn array_fits(ctx: &NativeCallContext, helper: &str, items: Option<usize>) -> Result<()> {
    let max = limit(ctx.engine().max_array_size());
    match items {
        Some(n) if n <= max => Ok(()),
        Some(n) => error(format!(
            "{helper}: the result would have {n} items, over the array limit of {max}"
        )),
        None => error(format!(
            "{helper}: the result would be over the array limit of {max} items"
        )),
    }
}

/// Checks that a map of `entries` (nested maps' included) fits the run's map limit.
pub fn map_fits(ctx: &NativeCallContext, helper: &str, entries: Option<usize>) -> Result<()> {
    let max = limit(ctx.engine().max_map_size());
    match entries {
        Some(n) if n <= max => Ok(()),
        Some(n) => error(format!(
            "{helper}: the result would have {n} entries, over the map limit of {max}"
        )),
        None => error(format!(
            "{helper}: the result would be over the map limit of {max} entries"
        )),
    }
}

/// The sizes Rhai's limits apply to, counted as Rhai counts them: array and blob items
/// (nested ones included), map entries, and bytes of string values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sizes {
    pub items: usize,
    pub entries: usize,
    pub bytes: usize,
}

impl Sizes {
    /// The sizes of `value`. Recursive, like Rhai's own check that runs on the same value
    /// after every call; the converter threads' stacks are sized for it.
    pub fn of(value: &Dynamic) -> Sizes {
        let mut sizes = Sizes::default();
        sizes.add(value);
        sizes
    }

    /// The sizes of an array's elements, the array counted as an array.
    pub fn of_array(array: &rhai::Array) -> Sizes {
        let mut sizes = Sizes {
            items: array.len(),
            ..Sizes::default()
        };
        array.iter().for_each(|v| sizes.add(v));
        sizes
    }

    fn add(&mut self, value: &Dynamic) {
        if let Some(blob) = value.read_lock::<rhai::Blob>() {
            self.items += blob.len();
        } else if let Some(array) = value.read_lock::<rhai::Array>() {
            self.items += array.len();
            array.iter().for_each(|v| self.add(v));
        } else if let Some(map) = value.read_lock::<rhai::Map>() {
            self.entries += map.len();
            map.values().for_each(|v| self.add(v));
        } else if let Some(s) = value.read_lock::<rhai::ImmutableString>() {
            self.bytes += s.len();
        }
    }
}

/// Whether `value` nests maps and arrays at most `max` deep. Recurses at most `max + 1` levels.
pub fn depth_within(value: &Dynamic, max: usize) -> bool {
    if let Some(array) = value.read_lock::<rhai::Array>() {
        return max > 0 && array.iter().all(|v| depth_within(v, max - 1));
    }
    if let Some(map) = value.read_lock::<rhai::Map>() {
        return max > 0 && map.values().all(|v| depth_within(v, max - 1));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Helpers call `check_deadline` before and during long work: it fails once the run's time
    /// is up, and only while a run is on.
    #[test]
    fn the_deadline_holds_while_a_run_is_on() {
        assert!(check_deadline().is_ok(), "no run, no deadline");
        {
            let _run = start(Duration::from_secs(3600));
            assert!(check_deadline().is_ok(), "within its time");
        }
        {
            let _run = start(Duration::ZERO);
            assert!(expired());
            assert!(matches!(
                *check_deadline().expect_err("past its deadline"),
                EvalAltResult::ErrorTerminated(..)
            ));
        }
        assert!(!expired(), "the end of the run lifts its deadline");
        assert!(check_deadline().is_ok());
    }

    /// Scripts are checked against the coarse clock at every operation: it must tick while a
    /// run is on (the real clock is read only every 256 operations).
    #[test]
    fn the_coarse_clock_ticks_while_a_run_is_on() {
        let _run = start(Duration::from_millis(5));
        // Other tests' runs move the coarse time too (`start` does), so the clock thread is
        // also asked for directly.
        assert!(clock().is_some(), "the clock thread runs");
        let waited = Instant::now();
        while !expired_coarse() {
            // Only bounds a hang: the clock ticks every 2 ms.
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "the coarse clock never passed the deadline"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `array.pad` counts what the array holds already against the limit before it grows.
    #[test]
    fn pad_counts_the_items_an_array_has() {
        use std::collections::BTreeMap;
        let rt = crate::converter::ConverterRuntime::new(&crate::converter::Limits {
            max_array_size: 10,
            ..crate::converter::Limits::default()
        });
        let err = rt
            .uplink(
                "let a = [1, 2, 3, 4, 5, 6]; a.pad(11, 0); #{deviceName: \"d\"}",
                b"",
                &BTreeMap::new(),
            )
            .expect_err("over the array limit");
        assert!(
            err.message.contains("pad: the result would have 11 items"),
            "{err}"
        );
        assert!(
            rt.uplink(
                "let a = [1, 2, 3, 4, 5, 6]; a.pad(10, 0); #{deviceName: \"d\"}",
                b"",
                &BTreeMap::new()
            )
            .is_ok()
        );
    }

    /// Sizes are counted as Rhai counts them: array and blob items, nested ones included, map
    /// entries, and bytes of strings.
    #[test]
    fn sizes_count_items_entries_and_bytes_at_every_level() {
        let mut map = rhai::Map::new();
        map.insert("a".into(), Dynamic::from("xyz"));
        map.insert(
            "b".into(),
            Dynamic::from(vec![Dynamic::from(1_i64), Dynamic::from(2_i64)]),
        );
        let array: rhai::Array = vec![
            Dynamic::from_blob(vec![1, 2, 3]),
            Dynamic::from_map(map),
            Dynamic::from("hello"),
        ];
        let want = Sizes {
            items: 3 + 3 + 2,
            entries: 2,
            bytes: 3 + 5,
        };
        assert_eq!(Sizes::of(&Dynamic::from_array(array.clone())), want);
        assert_eq!(Sizes::of_array(&array), want);
    }

    #[test]
    fn depth_counts_arrays_and_maps_alike() {
        let nest = |depth: usize, map: bool| {
            let mut value = Dynamic::from(1_i64);
            for _ in 0..depth {
                value = if map {
                    let mut m = rhai::Map::new();
                    m.insert("k".into(), value);
                    Dynamic::from_map(m)
                } else {
                    Dynamic::from_array(vec![value])
                };
            }
            value
        };
        for map in [false, true] {
            assert!(depth_within(&nest(0, map), 0));
            assert!(!depth_within(&nest(1, map), 0), "map: {map}");
            assert!(depth_within(&nest(3, map), 3), "map: {map}");
            assert!(!depth_within(&nest(3, map), 2), "map: {map}");
        }
        assert!(!depth_within(&Dynamic::from_array(vec![]), 0));
    }
}
