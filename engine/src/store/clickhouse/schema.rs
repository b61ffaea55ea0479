//! The ClickHouse schema and its migrations, tracked in a `schema_version` table.
//!
//! Everything here runs on ClickHouse 18.16 (Debian's package) and on current releases: no
//! column codecs, no `LowCardinality`, no TTL, no `DateTime64`, no `Map` or `JSON` types.
//!
//! Why these engines and keys:
//! - Every table is a `ReplacingMergeTree`. Delivery is at least once, so a batch may be
//!   written twice; rows with the same ordering key collapse when parts merge, and every read
//!   groups by that key (`argMax` by version) so a replay never shows before the merge either.
//! - The ordering keys are what the REST reads filter by: one device, one key, a time range
//!   (`ts_kv`), one device's keys (`ts_kv_latest`), one device's attributes by scope.
//!   Each read is then one contiguous slice of the primary index.
//! - `ts_kv` is partitioned by month of the data point's time, as ThingsBoard partitions its
//!   time series: old months can be dropped whole, and an insert of recent data touches one or
//!   two partitions (each partition an insert touches is a part to merge later).
//! - The other tables are small (one row per device and key) and not partitioned.
//! - Values are typed columns as ThingsBoard keeps them (`bool_v`, `long_v`, `dbl_v`, `str_v`,
//!   `json_v`) with an `Enum8` tag saying which one holds the value. They are not `Nullable`:
//!   a null map per column would cost a second stream per column on every insert and read.

use clickhouse::Client;
use clickhouse::error::Error;
use serde::Deserialize;

/// Migration `i` brings the schema from version `i` to `i + 1`; each statement is idempotent
/// (`IF NOT EXISTS`), so a migration interrupted halfway is run again safely. Append only.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS ts_kv (
        device_id UUID,
        key String,
        ts Int64,
        type Enum8('bool' = 1, 'long' = 2, 'double' = 3, 'string' = 4, 'json' = 5),
        bool_v UInt8,
        long_v Int64,
        dbl_v Float64,
        str_v String,
        json_v String,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    PARTITION BY toYYYYMM(toDateTime(intDiv(ts, 1000)))
    ORDER BY (device_id, key, ts)",
        // The version is the data point's time, so merges keep the newest point, whatever order
        // points arrived in.
        "CREATE TABLE IF NOT EXISTS ts_kv_latest (
        device_id UUID,
        key String,
        ts Int64,
        type Enum8('bool' = 1, 'long' = 2, 'double' = 3, 'string' = 4, 'json' = 5),
        bool_v UInt8,
        long_v Int64,
        dbl_v Float64,
        str_v String,
        json_v String,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ts)
    ORDER BY (device_id, key)",
        "CREATE TABLE IF NOT EXISTS attribute_kv (
        device_id UUID,
        scope Enum8('CLIENT_SCOPE' = 1, 'SHARED_SCOPE' = 2, 'SERVER_SCOPE' = 3),
        key String,
        last_update_ts Int64,
        type Enum8('bool' = 1, 'long' = 2, 'double' = 3, 'string' = 4, 'json' = 5),
        bool_v UInt8,
        long_v Int64,
        dbl_v Float64,
        str_v String,
        json_v String,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(last_update_ts)
    ORDER BY (device_id, scope, key)",
        // A delete is a newer row with `deleted = 1`.
        "CREATE TABLE IF NOT EXISTS device (
        id UUID,
        tenant_id UUID,
        name String,
        type String,
        label String,
        has_label UInt8,
        token String,
        created_time Int64,
        deleted UInt8,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY id",
    ],
    &[
        // Converter and integration definitions, as JSON documents; shared by the nodes.
        "CREATE TABLE IF NOT EXISTS catalog (
        id UUID,
        body String,
        deleted UInt8,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY id",
    ],
    &[
        // The records of the two-way device API (`records.rs`): persistent RPCs, a device's in
        // one slice of the index; claim requests, one per device. Mutable rows: a change or a
        // deletion is a newer row (`deleted = 1`), read back with `argMax` by `ver`.
        "CREATE TABLE IF NOT EXISTS rpc (
        device_id UUID,
        id UUID,
        tenant_id UUID,
        created_time Int64,
        expiration_time Int64,
        request String,
        response String,
        has_response UInt8,
        status Enum8('QUEUED' = 1, 'SENT' = 2, 'DELIVERED' = 3, 'SUCCESSFUL' = 4,
                     'TIMEOUT' = 5, 'EXPIRED' = 6, 'FAILED' = 7, 'DELETED' = 8),
        additional_info String,
        has_additional_info UInt8,
        deleted UInt8,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY (device_id, id)",
        "CREATE TABLE IF NOT EXISTS claim_request (
        device_id UUID,
        secret_key String,
        expiration_time Int64,
        deleted UInt8,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY device_id",
    ],
    &[
        // Device profiles (`profiles.rs`): a tenant's in one slice of the index. Mutable rows
        // as above; uniqueness of names and keys and the single default are kept by the writer.
        "CREATE TABLE IF NOT EXISTS device_profile (
        tenant_id UUID,
        id UUID,
        created_time Int64,
        name String,
        is_default UInt8,
        description String,
        has_description UInt8,
        provision_type Enum8('DISABLED' = 1, 'ALLOW_CREATE_NEW_DEVICES' = 2,
                             'CHECK_PRE_PROVISIONED_DEVICES' = 3),
        provision_device_key String,
        has_provision_device_key UInt8,
        provision_device_secret String,
        has_provision_device_secret UInt8,
        deleted UInt8,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY (tenant_id, id)",
    ],
    &[
        // Attribute deletion (`DELETE /api/plugins/telemetry/..`): a newer row with
        // `deleted = 1`; reads take the newest row per key and leave the key out when it is a
        // deletion. Rows written before have 0.
        "ALTER TABLE attribute_kv ADD COLUMN deleted UInt8 DEFAULT 0",
    ],
    &[
        // A device's `additionalInfo` (JSON text; `{"gateway":true}` makes a gateway); rows
        // written before have none.
        // One statement, so a failure cannot leave one column without the other.
        "ALTER TABLE device ADD COLUMN additional_info String DEFAULT '',
                            ADD COLUMN has_additional_info UInt8 DEFAULT 0",
    ],
    &[
        // The directory (`store/directory.rs`): customers, users, assets, device assignments
        // and relations, one JSON document each; a change or a deletion is a newer row.
        "CREATE TABLE IF NOT EXISTS directory (
        id UUID,
        body String,
        deleted UInt8,
        ver UInt64
    ) ENGINE = ReplacingMergeTree(ver)
    ORDER BY id",
    ],
];

#[derive(clickhouse::Row, Deserialize)]
struct Version {
    version: u32,
}

/// Creates the database if missing and brings its schema up to date.
pub(super) async fn migrate(server: &Client, database: &str) -> Result<(), MigrateError> {
    server
        .query(&format!("CREATE DATABASE IF NOT EXISTS {database}"))
        .execute()
        .await?;
    let db = server.clone().with_database(database);
    db.query(
        "CREATE TABLE IF NOT EXISTS schema_version (version UInt32, applied_at DateTime)
         ENGINE = TinyLog",
    )
    .execute()
    .await?;
    let current = db
        .query("SELECT toUInt32(max(version)) FROM schema_version")
        .fetch_one::<Version>()
        .await?
        .version as usize;
    if current > MIGRATIONS.len() {
        return Err(MigrateError::TooNew {
            found: current,
            known: MIGRATIONS.len(),
        });
    }
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(current) {
        for sql in *statements {
            db.query(sql).execute().await?;
        }
        db.query("INSERT INTO schema_version VALUES (?, now())")
            .bind(u32::try_from(i + 1).unwrap_or(u32::MAX))
            .execute()
            .await?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub(super) enum MigrateError {
    #[error(transparent)]
    ClickHouse(#[from] Error),
    #[error(
        "the database has schema version {found}, newer than this engine knows ({known}); \
         refusing to touch it"
    )]
    TooNew { found: usize, known: usize },
}
