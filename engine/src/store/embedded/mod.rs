//! The embedded store: SQLite (rusqlite, bundled) in `<data_dir>/engine.db`, holding the time
//! series (as blocks of points per series and batch: `block.rs`, `write.rs`), the latest value
//! per key, attributes by scope, and the device registry.
//!
//! One writer connection (SQLite has one writer anyway) and a small pool of reader connections,
//! all used from tokio's blocking pool, never on an async worker. WAL mode with
//! `synchronous=NORMAL`: a committed batch survives a crash of the process.
//!
//! Range reads (scans that may take seconds) take one reader fewer than the pool holds, so
//! latest values, attributes, keys and the registry always find a reader; each runs under a
//! time budget, enforced by SQLite's progress handler, and stops when its caller gives up.

mod block;
mod profiles;
mod query;
mod records;
mod registry;
mod schema;
mod write;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actors::batch::WriteBatch;
use actors::metrics::{API_REQUESTS_REFUSED, STORE_READS_RUNNING, STORE_READS_WAITING};
use actors::model::{AttributeScope, DeviceId, KvValue};
use actors::ports::{AttributeValue, LatestValue, RangeQuery, RangeResult, Store, StoreError};
use async_trait::async_trait;
use metrics::{Gauge, counter, gauge};
use parking_lot::Mutex;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use records::EmbeddedRecords;
pub use registry::EmbeddedRegistry;

/// Reader connections. Four keep a two-core machine's reads parallel without starving the
/// writer of I/O.
const READERS: usize = 4;
/// Range reads at once: one reader fewer than the pool, so the other reads never queue behind
/// scans.
const HEAVY_READERS: usize = READERS - 1;
/// SQLite virtual-machine steps between two checks of a read's budget (a few microseconds).
const BUDGET_CHECK_STEPS: i32 = 1000;
/// Time budget of a range read unless [`EmbeddedStore::with_read_budget`] sets one.
const DEFAULT_READ_BUDGET: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Db>,
    read_budget: Duration,
}

pub(crate) struct Db {
    writer: Mutex<Connection>,
    /// The series the writer knows; locked only while the writer is held.
    series: Mutex<write::SeriesCache>,
    /// Reader connections not in use; a holder of a `free_readers` permit always finds one.
    readers: Mutex<Vec<Connection>>,
    free_readers: Arc<Semaphore>,
    heavy_readers: Arc<Semaphore>,
}

/// A reader taken from the pool; it goes back when dropped, even when the read panicked.
struct Lease {
    db: Arc<Db>,
    conn: Option<Connection>,
    _permit: OwnedSemaphorePermit,
}

impl std::ops::Deref for Lease {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.db.readers.lock().push(conn);
        }
    }
}

/// One more in a gauge while alive.
struct Counted(Gauge);

impl Counted {
    fn new(name: &'static str, kind: &'static str) -> Counted {
        let g = gauge!(name, "kind" => kind);
        g.increment(1.0);
        Counted(g)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Sets its flag when dropped: tells a running read that its caller is gone.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Db {
    /// Runs `f` with the writer connection on the blocking pool.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || f(&mut db.writer.lock()).map_err(sql_error))
            .await
            .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    /// Takes a reader (waiting for one when all are in use).
    async fn lease(self: &Arc<Self>, kind: &'static str) -> Result<Lease, StoreError> {
        let waiting = Counted::new(STORE_READS_WAITING, kind);
        let permit = self
            .free_readers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("storage is closing".into()))?;
        drop(waiting);
        let conn = self.readers.lock().pop().ok_or_else(|| {
            StoreError::Permanent("reader pool is empty while a permit is held".into())
        })?;
        Ok(Lease {
            db: self.clone(),
            conn: Some(conn),
            _permit: permit,
        })
    }

    /// Runs a cheap read (one indexed look-up) with a reader on the blocking pool.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let lease = self.lease("light").await?;
        tokio::task::spawn_blocking(move || {
            let _running = Counted::new(STORE_READS_RUNNING, "light");
            f(&lease)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }

    /// Runs a scan that may take long: at most [`HEAVY_READERS`] at once, after waiting at most
    /// `budget` for a turn (else `Unavailable`), and stopped once it has run for `budget` or
    /// its caller has gone (then `InvalidQuery` naming the budget).
    pub(crate) async fn read_heavy<T, F>(
        self: &Arc<Self>,
        budget: Duration,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let waiting = Counted::new(STORE_READS_WAITING, "heavy");
        let turn = tokio::time::timeout(budget, self.heavy_readers.clone().acquire_owned()).await;
        drop(waiting);
        let Ok(Ok(turn)) = turn else {
            counter!(API_REQUESTS_REFUSED, "reason" => "busy").increment(1);
            return Err(StoreError::Unavailable(format!(
                "storage is busy: {HEAVY_READERS} range reads are running and this one waited \
                 {budget:?} for its turn; try again"
            )));
        };
        let lease = self.lease("heavy").await?;
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel = CancelOnDrop(cancelled.clone());
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let _running = Counted::new(STORE_READS_RUNNING, "heavy");
            let deadline = Instant::now() + budget;
            let stopped = Arc::new(AtomicBool::new(false));
            let stop = stopped.clone();
            lease.progress_handler(
                BUDGET_CHECK_STEPS,
                Some(move || {
                    let over = cancelled.load(Ordering::Relaxed) || Instant::now() >= deadline;
                    stop.store(over, Ordering::Relaxed);
                    over
                }),
            );
            let result = f(&lease);
            lease.progress_handler(0, None::<fn() -> bool>);
            if stopped.load(Ordering::Relaxed) {
                counter!(API_REQUESTS_REFUSED, "reason" => "time_budget").increment(1);
                return Err(StoreError::InvalidQuery(format!(
                    "the read was stopped at its time budget of {budget:?}: ask for fewer \
                     keys, a shorter range or a larger interval"
                )));
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("storage task failed: {e}")))?
    }
}

pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
    match e.sqlite_error_code() {
        Some(DatabaseBusy | DatabaseLocked | DiskFull | SystemIoFailure) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Permanent(e.to_string()),
    }
}

impl EmbeddedStore {
    /// Opens (creating and migrating as needed) the database in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<(EmbeddedStore, EmbeddedRegistry)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
        let path = dir.join("engine.db");
        let mut writer = Connection::open(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        configure(&writer)?;
        schema::migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| {
                let c = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.busy_timeout(Duration::from_secs(5))?;
                Ok(c)
            })
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let db = Arc::new(Db {
            writer: Mutex::new(writer),
            series: Mutex::new(write::SeriesCache::new()),
            readers: Mutex::new(readers),
            free_readers: Arc::new(Semaphore::new(READERS)),
            heavy_readers: Arc::new(Semaphore::new(HEAVY_READERS)),
        });
        let registry = registry::load(db.clone())?;
        Ok((
            EmbeddedStore {
                db,
                read_budget: DEFAULT_READ_BUDGET,
            },
            registry,
        ))
    }

    /// Sets how long one range read may wait for its turn and then run (`api.query_timeout`).
    #[must_use]
    pub fn with_read_budget(self, budget: Duration) -> EmbeddedStore {
        EmbeddedStore {
            read_budget: budget,
            ..self
        }
    }

    /// Persistent RPCs, claim requests and device profiles, in the same database.
    pub fn records(&self) -> EmbeddedRecords {
        EmbeddedRecords {
            db: self.db.clone(),
        }
    }

    /// Customers, users, assets, assignments and relations, in the same database.
    pub fn directory(&self) -> crate::store::directory::embedded::EmbeddedDirectory {
        crate::store::directory::embedded::EmbeddedDirectory {
            db: self.db.clone(),
        }
    }

    /// Converter and integration definitions, in the same database.
    pub fn catalog(&self) -> crate::store::catalog::embedded::EmbeddedCatalog {
        crate::store::catalog::embedded::EmbeddedCatalog {
            db: self.db.clone(),
        }
    }
}

/// The writer's page cache, in KiB: a batch dirties a leaf per busy series (a few MiB for
/// thousands of series) and must not spill them to the WAL mid-transaction, nor read back the
/// pages it wrote a batch ago.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// WAL pages between two checkpoints (SQLite's default is 1 000): a series' last leaf is
/// written again by every batch until it is full, and a checkpoint copies it once however
/// often it was written since the last one. The WAL file grows to about this many pages
/// (4 KiB each) before a checkpoint starts over from its beginning.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    c.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// Type codes of the `type` column; the value itself is in `v` with SQLite's matching class.
pub(crate) mod kind {
    pub const BOOL: i64 = 1;
    pub const LONG: i64 = 2;
    pub const DOUBLE: i64 = 3;
    pub const STRING: i64 = 4;
    pub const JSON: i64 = 5;
}

pub(crate) fn encode(value: &KvValue) -> (i64, ToSqlOutput<'_>) {
    match value {
        KvValue::Bool(b) => (
            kind::BOOL,
            ToSqlOutput::Owned(Value::Integer(i64::from(*b))),
        ),
        KvValue::Long(l) => (kind::LONG, ToSqlOutput::Owned(Value::Integer(*l))),
        KvValue::Double(d) => (kind::DOUBLE, ToSqlOutput::Owned(Value::Real(*d))),
        KvValue::String(s) => (
            kind::STRING,
            ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        ),
        KvValue::Json(s) => (
            kind::JSON,
            ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        ),
    }
}

pub(crate) fn decode(kind_code: i64, v: ValueRef<'_>) -> Result<KvValue, StoreError> {
    let bad = || StoreError::Permanent(format!("stored value of type {kind_code} is corrupt"));
    let text = |v: ValueRef<'_>| v.as_str().map(str::to_owned).map_err(|_| bad());
    Ok(match kind_code {
        kind::BOOL => KvValue::Bool(v.as_i64().map_err(|_| bad())? != 0),
        kind::LONG => KvValue::Long(v.as_i64().map_err(|_| bad())?),
        #[allow(clippy::cast_precision_loss)]
        kind::DOUBLE => KvValue::Double(match v {
            ValueRef::Real(d) => d,
            ValueRef::Integer(i) => i as f64,
            _ => return Err(bad()),
        }),
        kind::STRING => KvValue::String(text(v)?),
        kind::JSON => KvValue::Json(text(v)?),
        _ => return Err(bad()),
    })
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn write(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        let db = self.db.clone();
        self.db
            .write(move |c| write::write_batch(c, &mut db.series.lock(), &batch))
            .await
    }

    async fn latest(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<LatestValue>, StoreError> {
        let keys = keys.map(<[String]>::to_vec);
        self.db
            .read(move |c| query::latest(c, device, keys.as_deref()))
            .await
    }

    async fn timeseries_keys(&self, device: DeviceId) -> Result<Vec<String>, StoreError> {
        self.db
            .read(move |c| query::timeseries_keys(c, device))
            .await
    }

    async fn range(&self, device: DeviceId, query: &RangeQuery) -> Result<RangeResult, StoreError> {
        let query = query.clone();
        self.db
            .read_heavy(self.read_budget, move |c| query::range(c, device, &query))
            .await
    }

    async fn attributes(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
        keys: Option<&[String]>,
    ) -> Result<Vec<AttributeValue>, StoreError> {
        let keys = keys.map(<[String]>::to_vec);
        self.db
            .read(move |c| query::attributes(c, device, scope, keys.as_deref()))
            .await
    }

    async fn attribute_keys(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
    ) -> Result<Vec<String>, StoreError> {
        self.db
            .read(move |c| query::attribute_keys(c, device, scope))
            .await
    }

    async fn delete_attributes(
        &self,
        device: DeviceId,
        scope: AttributeScope,
        keys: &[String],
        ts: i64,
    ) -> Result<(), StoreError> {
        let keys = keys.to_vec();
        self.db
            .write(move |c| write::delete_attributes(c, device, scope, &keys, ts))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_store_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, registry) = EmbeddedStore::open(dir.path()).expect("opens");
        crate::store::contract::store_suite(&store).await;
        crate::store::contract::registry_suite(&registry).await;
        crate::store::contract::catalog_suite(&store.catalog()).await;
        crate::store::contract::directory_suite(&store.directory(), false).await;
        crate::store::contract::records_suite(&store.records()).await;
        crate::store::contract::profiles_suite(&store.records()).await;
    }

    #[tokio::test]
    async fn data_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = {
            let (store, registry) = EmbeddedStore::open(dir.path()).expect("opens");
            crate::store::contract::write_sample(&store, &registry).await
        };
        let (store, registry) = EmbeddedStore::open(dir.path()).expect("reopens");
        crate::store::contract::check_sample(&store, &registry, device).await;
    }

    #[tokio::test]
    async fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rpc = {
            let (store, _) = EmbeddedStore::open(dir.path()).expect("opens");
            crate::store::contract::write_records_sample(&store.records()).await
        };
        let (store, _) = EmbeddedStore::open(dir.path()).expect("reopens");
        crate::store::contract::check_records_sample(&store.records(), &rpc).await;
    }

    mod blocks {
        use actors::model::{KvEntry, Message, MessageBody, TenantId, TsRecord};
        use actors::ports::{Aggregation, Order, RangeQuery};

        use super::*;

        fn device() -> DeviceId {
            DeviceId::derive(TenantId::from_name("t"), "blocks")
        }

        async fn write(store: &EmbeddedStore, points: &[(i64, i64)]) {
            let messages: Vec<Message> = points
                .iter()
                .map(|&(ts, v)| Message {
                    tenant_id: TenantId::from_name("t"),
                    device_id: device(),
                    received_ts: ts,
                    body: MessageBody::Telemetry(vec![TsRecord {
                        ts,
                        entries: vec![KvEntry::new("n", KvValue::Long(v))],
                    }]),
                })
                .collect();
            let batch = WriteBatch::from_messages(messages.iter());
            store.write(Arc::new(batch)).await.expect("write");
        }

        async fn read(store: &EmbeddedStore, order: Order, limit: usize) -> Vec<(i64, i64)> {
            let q = RangeQuery {
                keys: Some(vec!["n".into()]),
                start_ts: 0,
                end_ts: i64::MAX,
                interval: 0,
                limit,
                agg: Aggregation::None,
                order,
            };
            let got = store.range(device(), &q).await.expect("range");
            got.get("n")
                .map(|s| {
                    s.iter()
                        .map(|p| match p.value {
                            KvValue::Long(v) => (p.ts, v),
                            ref other => panic!("not a long: {other:?}"),
                        })
                        .collect()
                })
                .unwrap_or_default()
        }

        fn open() -> (tempfile::TempDir, EmbeddedStore) {
            let dir = tempfile::tempdir().expect("tempdir");
            let (store, _) = EmbeddedStore::open(dir.path()).expect("opens");
            (dir, store)
        }

        /// A sink restarted after a crash replays from its last commit, in batches cut
        /// elsewhere; newer values of the same times replace the old ones, never add to them.
        #[tokio::test]
        async fn a_replay_cut_differently_replaces_and_never_duplicates() {
            let (dir, store) = open();
            let points: Vec<(i64, i64)> = (0..300).map(|i| (i * 10, i)).collect();
            for chunk in points.chunks(100) {
                write(&store, chunk).await;
            }
            let replay: Vec<(i64, i64)> = (50..250).map(|i| (i * 10, -i)).collect();
            write(&store, &replay).await;
            // The same again, through a store that has not seen the series (a restart).
            let (again, _) = EmbeddedStore::open(dir.path()).expect("reopens");
            write(&again, &replay[..120]).await;
            let want: Vec<(i64, i64)> = (0..300)
                .map(|i| (i * 10, if (50..250).contains(&i) { -i } else { i }))
                .collect();
            assert_eq!(read(&store, Order::Asc, 50_000).await, want);
            let mut desc = want.clone();
            desc.reverse();
            assert_eq!(read(&again, Order::Desc, 50_000).await, desc);
        }

        /// Batches cut anywhere around the same three points store all three.
        #[tokio::test]
        async fn consecutive_batches_keep_every_point() {
            let t = 1_796_195_288_338;
            let cases: &[&[&[(i64, i64)]]] = &[
                &[&[(t - 3, 1), (t, 2)], &[(t + 204, 4)]],
                &[&[(t - 3, 1)], &[(t, 2), (t + 204, 4)]],
                &[&[(t - 3, 1), (t, 2)], &[(t, 2), (t + 204, 4)]],
                &[&[(t - 3, 1)], &[(t, 2)], &[(t + 204, 4)]],
            ];
            for batches in cases {
                let (_dir, store) = open();
                for batch in *batches {
                    write(&store, batch).await;
                }
                let got = read(&store, Order::Desc, 100).await;
                assert_eq!(got, [(t + 204, 4), (t, 2), (t - 3, 1)], "{batches:?}");
            }
        }

        /// Old points arriving after new ones land in blocks that overlap in time; reads still
        /// come out in order, and a limit stops at the right point either way.
        #[tokio::test]
        async fn overlapping_blocks_read_in_order_with_limits() {
            let (_dir, store) = open();
            // Blocks far apart (more than a block's span), then late points between them.
            write(&store, &[(100_000, 1), (100_010, 2), (100_020, 3)]).await;
            write(&store, &[(300_000, 7), (300_010, 8)]).await;
            write(&store, &[(100_015, 4), (299_999, 6), (200_000, 5)]).await;
            write(&store, &[(100_005, 9)]).await;
            let all = [
                (100_000, 1),
                (100_005, 9),
                (100_010, 2),
                (100_015, 4),
                (100_020, 3),
                (200_000, 5),
                (299_999, 6),
                (300_000, 7),
                (300_010, 8),
            ];
            for limit in 1..=all.len() {
                assert_eq!(
                    read(&store, Order::Asc, limit).await,
                    all[..limit],
                    "{limit}"
                );
                let desc: Vec<(i64, i64)> = all.iter().rev().take(limit).copied().collect();
                assert_eq!(read(&store, Order::Desc, limit).await, desc, "{limit}");
            }
            let q = RangeQuery {
                keys: Some(vec!["n".into()]),
                start_ts: 100_010,
                end_ts: 300_000,
                interval: 100_000,
                limit: 100,
                agg: Aggregation::Sum,
                order: Order::Desc,
            };
            let got = store.range(device(), &q).await.expect("sum");
            let sums: Vec<(i64, KvValue)> =
                got["n"].iter().map(|p| (p.ts, p.value.clone())).collect();
            assert_eq!(
                sums,
                [(250_005, KvValue::Long(6)), (150_010, KvValue::Long(14))]
            );
        }
    }
}
