//! The embedded store: SQLite (rusqlite, bundled) in `<data_dir>/engine.db`, holding the time
//! series, the latest value per key, attributes by scope, and the device registry.
//!
//! One writer connection (SQLite has one writer anyway) and a few reader connections, all used
//! from tokio's blocking pool, never on an async worker. WAL mode with `synchronous=NORMAL`: a
//! committed batch survives a crash of the process.

mod query;
mod registry;
mod schema;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use actors::batch::WriteBatch;
use actors::model::{AttributeScope, DeviceId, KvValue};
use actors::ports::{AttributeValue, LatestValue, RangeQuery, RangeResult, Store, StoreError};
use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OpenFlags};

pub use registry::EmbeddedRegistry;

const READERS: usize = 4;

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Db>,
}

pub(crate) struct Db {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
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

    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let i = db.next_reader.fetch_add(1, Ordering::Relaxed) % db.readers.len();
            f(&db.readers[i].lock())
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
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                Ok(Mutex::new(c))
            })
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let db = Arc::new(Db {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        });
        let registry = registry::load(db.clone())?;
        Ok((EmbeddedStore { db }, registry))
    }

    /// Converter and integration definitions, in the same database.
    pub fn catalog(&self) -> crate::store::catalog::embedded::EmbeddedCatalog {
        crate::store::catalog::embedded::EmbeddedCatalog {
            db: self.db.clone(),
        }
    }
}

fn configure(c: &Connection) -> rusqlite::Result<()> {
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "NORMAL")?;
    c.busy_timeout(std::time::Duration::from_secs(5))?;
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
        self.db.write(move |c| schema::write_batch(c, &batch)).await
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
        self.db.read(move |c| query::range(c, device, &query)).await
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
}
