//! The ClickHouse store: time series, latest values, attributes and the device registry in a
//! ClickHouse database, over HTTP with the `clickhouse` crate (RowBinary).
//!
//! The crate's schema validation is off: it asks the server for column metadata in a way
//! ClickHouse 18.16 cannot answer. The row structs below therefore follow the column order of
//! `schema.rs` exactly, and reads name their columns in the order of the struct they fill.

mod profiles;
mod query;
mod records;
mod registry;
mod schema;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use actors::batch::WriteBatch;
use actors::model::{AttributeScope, DeviceId, KvValue};
use actors::ports::{AttributeValue, LatestValue, RangeQuery, RangeResult, Store, StoreError};
use anyhow::Context;
use async_trait::async_trait;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use records::ClickHouseRecords;
pub use registry::ClickHouseRegistry;

use crate::config::StoreConfig;

#[derive(Clone)]
pub struct ClickHouseStore {
    client: Client,
    versions: Arc<Versions>,
}

/// Row versions: the write time in nanoseconds, strictly increasing within the process, so a
/// later write of the same key wins even within one nanosecond.
#[derive(Default)]
pub(crate) struct Versions(AtomicU64);

impl Versions {
    pub(crate) fn next(&self) -> u64 {
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        )
        .unwrap_or(u64::MAX);
        let mut last = self.0.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self
                .0
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

impl ClickHouseStore {
    /// Connects, creates the database if missing and migrates it; fails with a clear message
    /// when the server cannot be reached.
    pub async fn open(
        config: &StoreConfig,
    ) -> anyhow::Result<(ClickHouseStore, ClickHouseRegistry)> {
        let server = Client::default()
            .with_url(&config.url)
            .with_user(&config.user)
            .with_password(&config.password)
            .with_validation(false);
        server
            .query("SELECT 1")
            .fetch_one::<u8>()
            .await
            .with_context(|| format!("cannot reach ClickHouse at {}", config.url))?;
        schema::migrate(&server, &config.database)
            .await
            .with_context(|| format!("cannot migrate ClickHouse database {}", config.database))?;
        let client = server.with_database(&config.database);
        let versions = Arc::new(Versions::default());
        let registry = registry::load(client.clone(), versions.clone())
            .await
            .context("cannot load the devices from ClickHouse")?;
        Ok((ClickHouseStore { client, versions }, registry))
    }

    /// Persistent RPCs, claim requests and device profiles, in the same database (shared by
    /// the nodes).
    pub fn records(&self) -> ClickHouseRecords {
        ClickHouseRecords {
            client: self.client.clone(),
            versions: self.versions.clone(),
        }
    }

    /// Customers, users, assets, assignments and relations, in the same database.
    pub fn directory(&self) -> crate::store::directory::ch::ClickHouseDirectory {
        crate::store::directory::ch::ClickHouseDirectory {
            client: self.client.clone(),
            versions: self.versions.clone(),
        }
    }

    /// Converter and integration definitions, in the same database (shared by the nodes).
    pub fn catalog(&self) -> crate::store::catalog::ch::ClickHouseCatalog {
        crate::store::catalog::ch::ClickHouseCatalog {
            client: self.client.clone(),
            versions: self.versions.clone(),
        }
    }
}

/// Server error codes worth retrying: the server is overloaded, out of memory, has too many
/// parts to merge, timed out, or lost a replica or its network. Anything else the server says
/// is about the request itself and will not pass.
const RETRYABLE_CODES: &[u32] = &[
    3,   // UNEXPECTED_END_OF_FILE (connection cut mid-request)
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY
    252, // TOO_MANY_PARTS
    285, // TOO_FEW_LIVE_REPLICAS
    319, // UNKNOWN_STATUS_OF_INSERT
    425, // SYSTEM_ERROR
];

/// The `Code: N` of a server error message.
fn server_code(message: &str) -> Option<u32> {
    let rest = &message[message.find("Code: ")? + 6..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

pub(crate) fn ch_error(e: clickhouse::error::Error) -> StoreError {
    use clickhouse::error::Error as E;
    match &e {
        E::Network(_) | E::TimedOut => StoreError::Unavailable(e.to_string()),
        E::BadResponse(message) => match server_code(message) {
            Some(code) if RETRYABLE_CODES.contains(&code) => StoreError::Unavailable(e.to_string()),
            // An HTTP error without a ClickHouse code comes from something in between (a
            // proxy, a restarting server).
            None => StoreError::Unavailable(e.to_string()),
            Some(_) => StoreError::Permanent(e.to_string()),
        },
        _ => StoreError::Permanent(e.to_string()),
    }
}

/// The `type` tag of the value columns, as in the schema's `Enum8`.
pub(crate) mod kind {
    pub const BOOL: i8 = 1;
    pub const LONG: i8 = 2;
    pub const DOUBLE: i8 = 3;
    pub const STRING: i8 = 4;
    pub const JSON: i8 = 5;
}

/// The typed value columns of one row; only the column `kind` names holds the value. Rows
/// spell these six fields out in this order (RowBinary has no nesting).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Typed<S> {
    kind: i8,
    bool_v: u8,
    long_v: i64,
    dbl_v: f64,
    str_v: S,
    json_v: S,
}

fn encode(value: &KvValue) -> Typed<&str> {
    let mut t = Typed {
        kind: 0,
        bool_v: 0,
        long_v: 0,
        dbl_v: 0.0,
        str_v: "",
        json_v: "",
    };
    match value {
        KvValue::Bool(b) => (t.kind, t.bool_v) = (kind::BOOL, u8::from(*b)),
        KvValue::Long(l) => (t.kind, t.long_v) = (kind::LONG, *l),
        KvValue::Double(d) => (t.kind, t.dbl_v) = (kind::DOUBLE, *d),
        KvValue::String(s) => (t.kind, t.str_v) = (kind::STRING, s),
        KvValue::Json(s) => (t.kind, t.json_v) = (kind::JSON, s),
    }
    t
}

impl Typed<String> {
    fn decode(self) -> Result<KvValue, StoreError> {
        Ok(match self.kind {
            kind::BOOL => KvValue::Bool(self.bool_v != 0),
            kind::LONG => KvValue::Long(self.long_v),
            kind::DOUBLE => KvValue::Double(self.dbl_v),
            kind::STRING => KvValue::String(self.str_v),
            kind::JSON => KvValue::Json(self.json_v),
            other => {
                return Err(StoreError::Permanent(format!(
                    "stored value of type {other} is corrupt"
                )));
            }
        })
    }
}

/// A row of `ts_kv` and of `ts_kv_latest`.
#[derive(Row, Serialize)]
struct TsKvRow<'a> {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    key: &'a str,
    ts: i64,
    #[serde(rename = "type")]
    kind: i8,
    bool_v: u8,
    long_v: i64,
    dbl_v: f64,
    str_v: &'a str,
    json_v: &'a str,
    ver: u64,
}

impl<'a> TsKvRow<'a> {
    fn new(row: &'a actors::batch::TsRow, ver: u64) -> Self {
        let v = encode(&row.value);
        TsKvRow {
            device_id: row.device_id.0,
            key: &row.key,
            ts: row.ts,
            kind: v.kind,
            bool_v: v.bool_v,
            long_v: v.long_v,
            dbl_v: v.dbl_v,
            str_v: v.str_v,
            json_v: v.json_v,
            ver,
        }
    }
}

#[derive(Row, Serialize)]
struct AttributeRow<'a> {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    scope: i8,
    key: &'a str,
    last_update_ts: i64,
    #[serde(rename = "type")]
    kind: i8,
    bool_v: u8,
    long_v: i64,
    dbl_v: f64,
    str_v: &'a str,
    json_v: &'a str,
    ver: u64,
    deleted: u8,
}

impl<'a> AttributeRow<'a> {
    fn new(row: &'a actors::batch::AttributeRow, ver: u64) -> Self {
        let v = encode(&row.value);
        AttributeRow {
            device_id: row.device_id.0,
            scope: scope_code(row.scope),
            key: &row.key,
            last_update_ts: row.last_update_ts,
            kind: v.kind,
            bool_v: v.bool_v,
            long_v: v.long_v,
            dbl_v: v.dbl_v,
            str_v: v.str_v,
            json_v: v.json_v,
            ver,
            deleted: 0,
        }
    }

    /// The row that says `key` was deleted at `ts`.
    fn deletion(device: DeviceId, scope: AttributeScope, key: &'a str, ts: i64, ver: u64) -> Self {
        AttributeRow {
            device_id: device.0,
            scope: scope_code(scope),
            key,
            last_update_ts: ts,
            kind: kind::STRING,
            bool_v: 0,
            long_v: 0,
            dbl_v: 0.0,
            str_v: "",
            json_v: "",
            ver,
            deleted: 1,
        }
    }
}

pub(crate) fn scope_code(scope: AttributeScope) -> i8 {
    i8::try_from(scope.code()).unwrap_or(0)
}

impl ClickHouseStore {
    async fn insert_ts<'a>(
        &self,
        table: &str,
        rows: impl Iterator<Item = &'a actors::batch::TsRow>,
        ver: u64,
    ) -> Result<(), StoreError> {
        let mut insert = self
            .client
            .insert::<TsKvRow<'_>>(table)
            .await
            .map_err(ch_error)?;
        for row in rows {
            insert
                .write(&TsKvRow::new(row, ver))
                .await
                .map_err(ch_error)?;
        }
        insert.end().await.map_err(ch_error)
    }
}

#[async_trait]
impl Store for ClickHouseStore {
    /// Three inserts (time series, latest values, attributes). Not atomic together, but each
    /// is idempotent, so the sink's retry of the whole batch after a partial failure is safe.
    async fn write(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        let ver = self.versions.next();
        if !batch.timeseries.is_empty() {
            self.insert_ts("ts_kv", batch.timeseries.iter(), ver)
                .await?;
            self.insert_ts("ts_kv_latest", batch.latest(), ver).await?;
        }
        if !batch.attributes.is_empty() {
            let mut insert = self
                .client
                .insert::<AttributeRow<'_>>("attribute_kv")
                .await
                .map_err(ch_error)?;
            for row in &batch.attributes {
                insert
                    .write(&AttributeRow::new(row, ver))
                    .await
                    .map_err(ch_error)?;
            }
            insert.end().await.map_err(ch_error)?;
        }
        Ok(())
    }

    async fn latest(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<LatestValue>, StoreError> {
        query::latest(&self.client, device, keys).await
    }

    async fn timeseries_keys(&self, device: DeviceId) -> Result<Vec<String>, StoreError> {
        query::timeseries_keys(&self.client, device).await
    }

    async fn range(&self, device: DeviceId, query: &RangeQuery) -> Result<RangeResult, StoreError> {
        query::range(&self.client, device, query).await
    }

    /// A deletion row per key, newer than any row written before it.
    async fn delete_attributes(
        &self,
        device: DeviceId,
        scope: AttributeScope,
        keys: &[String],
        ts: i64,
    ) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let ver = self.versions.next();
        let mut insert = self
            .client
            .insert::<AttributeRow<'_>>("attribute_kv")
            .await
            .map_err(ch_error)?;
        for key in keys {
            insert
                .write(&AttributeRow::deletion(device, scope, key, ts, ver))
                .await
                .map_err(ch_error)?;
        }
        insert.end().await.map_err(ch_error)
    }

    async fn attributes(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
        keys: Option<&[String]>,
    ) -> Result<Vec<AttributeValue>, StoreError> {
        query::attributes(&self.client, device, scope, keys).await
    }

    async fn attribute_keys(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
    ) -> Result<Vec<String>, StoreError> {
        query::attribute_keys(&self.client, device, scope).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreKind;
    use harness::servers::ClickHouse;

    fn config(server: &ClickHouse, database: &str) -> StoreConfig {
        StoreConfig {
            kind: StoreKind::Clickhouse,
            url: server.url(),
            database: database.into(),
            ..StoreConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn passes_the_store_contract() {
        let server = ClickHouse::start().expect("clickhouse starts");
        let (store, registry) = ClickHouseStore::open(&config(&server, "contract"))
            .await
            .expect("opens");
        crate::store::contract::store_suite(&store).await;
        crate::store::contract::registry_suite(&registry).await;
        crate::store::contract::catalog_suite(&store.catalog()).await;
        crate::store::contract::directory_suite(&store.directory(), true).await;
        crate::store::contract::records_suite(&store.records()).await;
        crate::store::contract::profiles_suite(&store.records()).await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn data_survives_a_reopen_and_migrations_run_once() {
        let server = ClickHouse::start().expect("clickhouse starts");
        let (device, rpc) = {
            let (store, registry) = ClickHouseStore::open(&config(&server, "durable"))
                .await
                .expect("opens");
            let rpc = crate::store::contract::write_records_sample(&store.records()).await;
            (
                crate::store::contract::write_sample(&store, &registry).await,
                rpc,
            )
        };
        let (store, registry) = ClickHouseStore::open(&config(&server, "durable"))
            .await
            .expect("reopens");
        crate::store::contract::check_sample(&store, &registry, device).await;
        crate::store::contract::check_records_sample(&store.records(), &rpc).await;
        let versions = server
            .query("SELECT count(), max(version) FROM durable.schema_version")
            .await
            .expect("query");
        assert_eq!(
            versions.trim(),
            "7\t7",
            "seven migrations (tables, the catalog, the device records, the device profiles, \
             attribute deletion, device additional info, the directory), each recorded once"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_unreachable_server_is_a_clear_error() {
        let port = harness::servers::free_port().expect("port");
        let config = StoreConfig {
            kind: StoreKind::Clickhouse,
            url: format!("http://127.0.0.1:{port}"),
            ..StoreConfig::default()
        };
        let err = ClickHouseStore::open(&config).await.err().expect("fails");
        assert!(
            format!("{err:#}").contains("cannot reach ClickHouse at http://127.0.0.1:"),
            "{err:#}"
        );
    }

    #[test]
    fn server_codes_decide_what_is_retried() {
        let msg = |code: u32| {
            format!("Code: {code}, e.displayText() = DB::Exception: something, e.what() = x")
        };
        assert_eq!(server_code(&msg(252)), Some(252));
        assert_eq!(server_code("no code here"), None);
        let retryable =
            |m: String| ch_error(clickhouse::error::Error::BadResponse(m)).is_retryable();
        assert!(retryable(msg(252)), "too many parts passes");
        assert!(retryable(msg(241)), "memory limit passes");
        assert!(!retryable(msg(53)), "a type mismatch does not");
        assert!(!retryable(msg(62)), "a syntax error does not");
        assert!(retryable("502 Bad Gateway".into()));
    }

    #[test]
    fn versions_strictly_increase() {
        let v = Versions::default();
        let a = v.next();
        let b = v.next();
        assert!(b > a);
    }
}
