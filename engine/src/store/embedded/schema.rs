//! The embedded schema and its migrations (tracked in SQLite's `user_version`).

use actors::model::KvValue;
use rusqlite::{Connection, Transaction, params};

use super::block;
use super::write::insert_block;

/// A migration's SQL, then, when the data changes shape, the code that moves it.
type Migration = (
    &'static str,
    Option<fn(&Transaction<'_>) -> rusqlite::Result<()>>,
);

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only.
const MIGRATIONS: &[Migration] = &[
    // v1. Keys are (device, key, ts) so a replayed batch overwrites instead of duplicating;
    // WITHOUT ROWID clusters a device's series by key and time, which is what range reads scan.
    (
        "CREATE TABLE device (
        id BLOB PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        label TEXT,
        token TEXT NOT NULL UNIQUE,
        created_time INTEGER NOT NULL,
        UNIQUE (tenant_id, name)
    );
    CREATE TABLE ts_kv (
        device_id BLOB NOT NULL,
        key TEXT NOT NULL,
        ts INTEGER NOT NULL,
        type INTEGER NOT NULL,
        v,
        PRIMARY KEY (device_id, key, ts)
    ) WITHOUT ROWID;
    CREATE TABLE ts_kv_latest (
        device_id BLOB NOT NULL,
        key TEXT NOT NULL,
        ts INTEGER NOT NULL,
        type INTEGER NOT NULL,
        v,
        PRIMARY KEY (device_id, key)
    ) WITHOUT ROWID;
    CREATE TABLE attribute_kv (
        device_id BLOB NOT NULL,
        scope INTEGER NOT NULL,
        key TEXT NOT NULL,
        last_update_ts INTEGER NOT NULL,
        type INTEGER NOT NULL,
        v,
        PRIMARY KEY (device_id, scope, key)
    ) WITHOUT ROWID;",
        None,
    ),
    // v2. Converter and integration definitions, as JSON documents.
    (
        "CREATE TABLE catalog (
        id BLOB PRIMARY KEY,
        body TEXT NOT NULL
    );",
        None,
    ),
    // v3. Time series as blocks of points (see `block.rs`) instead of a row per point: one
    // B-tree insert per series and batch instead of one per point, which is what the writer
    // spent its time on. A series id stands for (device, key) in every block's key.
    // `ts_block` is WITHOUT ROWID because a block of a batch is a few hundred bytes and reads
    // scan a series' blocks in time order; `ts_kv`'s rows are moved into blocks.
    (
        "CREATE TABLE ts_series (
        id INTEGER PRIMARY KEY,
        device_id BLOB NOT NULL,
        key TEXT NOT NULL,
        UNIQUE (device_id, key)
    );
    CREATE TABLE ts_block (
        series INTEGER NOT NULL,
        start_ts INTEGER NOT NULL,
        end_ts INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (series, start_ts)
    ) WITHOUT ROWID;",
        Some(rows_into_blocks),
    ),
    // v4. The stored records of the two-way device API (`records.rs`): persistent RPCs, read
    // by id and by device newest first (the index also serves the QUEUED reload, filtered), and
    // claim requests, one per device.
    (
        "CREATE TABLE rpc (
        id BLOB PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        device_id BLOB NOT NULL,
        created_time INTEGER NOT NULL,
        expiration_time INTEGER NOT NULL,
        request TEXT NOT NULL,
        response TEXT,
        status INTEGER NOT NULL,
        additional_info TEXT
    );
    CREATE INDEX rpc_by_device ON rpc (device_id, created_time, id);
    CREATE INDEX rpc_by_device_status ON rpc (device_id, status, created_time, id);
    CREATE TABLE claim_request (
        device_id BLOB PRIMARY KEY,
        secret_key TEXT NOT NULL,
        expiration_time INTEGER NOT NULL
    ) WITHOUT ROWID;",
        None,
    ),
    // v5. Device profiles (`profiles.rs`). SQLite itself keeps names unique per tenant,
    // provision keys unique (NULLs apart) and one default per tenant (a partial index).
    (
        "CREATE TABLE device_profile (
        id BLOB PRIMARY KEY,
        tenant_id BLOB NOT NULL,
        created_time INTEGER NOT NULL,
        name TEXT NOT NULL,
        is_default INTEGER NOT NULL,
        description TEXT,
        provision_type INTEGER NOT NULL,
        provision_device_key TEXT UNIQUE,
        provision_device_secret TEXT,
        UNIQUE (tenant_id, name)
    );
    CREATE UNIQUE INDEX device_profile_default ON device_profile (tenant_id)
        WHERE is_default = 1;",
        None,
    ),
    // v6. Attribute deletion: the row stays as a tombstone (`deleted = 1`) at the deletion's
    // time, so a write queued before the deletion and stored after it (older
    // `last_update_ts`) does not bring the key back. Reads skip tombstones.
    (
        "ALTER TABLE attribute_kv ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;",
        None,
    ),
    // v7. A device's `additionalInfo` (JSON text; `{"gateway":true}` makes a gateway).
    ("ALTER TABLE device ADD COLUMN additional_info TEXT;", None),
    // v8. The directory (`store/directory.rs`): customers, users, assets, device assignments
    // and relations, one JSON document each, read whole at start-up.
    (
        "CREATE TABLE directory (
        id BLOB PRIMARY KEY,
        body TEXT NOT NULL
    );",
        None,
    ),
];

pub(super) fn migrate(c: &mut Connection) -> anyhow::Result<()> {
    let version: usize = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    anyhow::ensure!(
        version <= MIGRATIONS.len(),
        "the database has schema version {version}, newer than this engine knows ({}); \
         refusing to touch it",
        MIGRATIONS.len()
    );
    for (i, (sql, data)) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        if let Some(data) = data {
            data(&tx)?;
        }
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Points of one series held at once while converting: a series of any length is moved in
/// slices of this many.
const CONVERT_SLICE: usize = 16 * block::MAX_POINTS;

/// v3: every `ts_kv` row into blocks, series by series, then `ts_kv` goes.
fn rows_into_blocks(tx: &Transaction<'_>) -> rusqlite::Result<()> {
    let mut rows =
        tx.prepare("SELECT device_id, key, ts, type, v FROM ts_kv ORDER BY device_id, key, ts")?;
    let mut rows = rows.query([])?;
    let mut series: Option<(Vec<u8>, String, i64)> = None;
    let mut points: Vec<(i64, KvValue)> = Vec::new();
    let mut data = Vec::new();
    let flush = |series: i64,
                 points: &mut Vec<(i64, KvValue)>,
                 data: &mut Vec<u8>|
     -> rusqlite::Result<()> {
        for run in block::runs(points) {
            insert_block(tx, series, run.iter().map(|(ts, v)| (*ts, v)), data)?;
        }
        points.clear();
        Ok(())
    };
    while let Some(row) = rows.next()? {
        let device: Vec<u8> = row.get(0)?;
        let key: String = row.get(1)?;
        if series
            .as_ref()
            .is_none_or(|(d, k, _)| *d != device || *k != key)
        {
            if let Some((_, _, id)) = series {
                flush(id, &mut points, &mut data)?;
            }
            tx.execute(
                "INSERT INTO ts_series (device_id, key) VALUES (?1, ?2)",
                params![device, key],
            )?;
            series = Some((device, key, tx.last_insert_rowid()));
        }
        let value = super::decode(row.get(3)?, row.get_ref(4)?)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        points.push((row.get(2)?, value));
        if points.len() >= CONVERT_SLICE
            && let Some((_, _, id)) = series
        {
            flush(id, &mut points, &mut data)?;
        }
    }
    if let Some((_, _, id)) = series {
        flush(id, &mut points, &mut data)?;
    }
    drop(rows);
    tx.execute_batch("DROP TABLE ts_kv")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_idempotent_and_a_newer_schema_is_refused() {
        let mut c = Connection::open_in_memory().expect("open");
        migrate(&mut c).expect("first");
        migrate(&mut c).expect("second run changes nothing");
        c.pragma_update(None, "user_version", 99).expect("set");
        let err = migrate(&mut c).expect_err("newer schema");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    /// A database of schema v3 (the last before the device records) and one of v4 (before
    /// the device profiles) open: their devices and data are kept, and every record of the
    /// two-way device API can be written and read.
    #[tokio::test]
    async fn older_databases_open_with_their_data_and_take_records() {
        for version in [3, 4] {
            opens_from(version).await;
        }
    }

    async fn opens_from(version: usize) {
        use actors::ports::{DeviceProfiles, DeviceRecords, DeviceRegistry, ProvisionType};

        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut c = Connection::open(dir.path().join("engine.db")).expect("open");
            for (sql, data) in &MIGRATIONS[..version] {
                let tx = c.transaction().expect("tx");
                tx.execute_batch(sql).expect("old schema");
                if let Some(data) = data {
                    data(&tx).expect("old data");
                }
                tx.commit().expect("commit");
            }
            c.pragma_update(None, "user_version", version).expect("set");
            let d = crate::store::contract::device("old", "tok-old");
            c.execute(
                "INSERT INTO device (id, tenant_id, name, type, label, token, created_time)
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5, 1)",
                params![
                    d.id.0.as_bytes(),
                    d.tenant_id.0.as_bytes(),
                    d.name,
                    d.device_type,
                    d.token.0
                ],
            )
            .expect("device");
        }
        let (store, registry) = super::super::EmbeddedStore::open(dir.path()).expect("migrates");
        let kept = registry.by_token("tok-old").await.expect("lookup");
        assert_eq!(
            kept.map(|d| d.name.clone()),
            Some("old".into()),
            "v{version}"
        );
        let rpc = crate::store::contract::write_records_sample(&store.records()).await;
        crate::store::contract::check_records_sample(&store.records(), &rpc).await;
        let records: &dyn DeviceRecords = &store.records();
        assert!(records.delete_rpc(rpc.id).await.expect("delete"));
        let profile = actors::ports::DeviceProfile {
            id: uuid::Uuid::new_v4(),
            tenant_id: actors::model::TenantId::from_name("t"),
            created_time: 1,
            name: "default".into(),
            default: true,
            description: None,
            provision_type: ProvisionType::Disabled,
            provision_device_key: None,
            provision_device_secret: None,
        };
        let profiles: &dyn DeviceProfiles = &store.records();
        profiles.save_profile(&profile).await.expect("profile");
        let got = profiles.default_profile(profile.tenant_id).await;
        assert_eq!(got.expect("default"), Some(profile), "v{version}");
    }

    /// A database of schema v2 (a row per point in `ts_kv`) opens with every point readable.
    #[test]
    fn points_of_a_v2_database_move_into_blocks() {
        use actors::model::{DeviceId, TenantId};
        use actors::ports::{Aggregation, Order, RangeQuery};

        let mut c = Connection::open_in_memory().expect("open");
        for (sql, _) in &MIGRATIONS[..2] {
            c.execute_batch(sql).expect("old schema");
        }
        c.pragma_update(None, "user_version", 2).expect("set");
        let d = DeviceId::derive(TenantId::from_name("t"), "old");
        let other = DeviceId::derive(TenantId::from_name("t"), "other");
        let insert = |device: DeviceId, key: &str, ts: i64, value: KvValue| {
            let (kind, v) = super::super::encode(&value);
            c.execute(
                "INSERT INTO ts_kv (device_id, key, ts, type, v) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![device.0.as_bytes(), key, ts, kind, v],
            )
            .expect("insert");
        };
        // More points than a block holds, and times further apart than a block spans.
        for ts in 0..3_000 {
            insert(d, "n", ts * 100, KvValue::Long(ts));
        }
        insert(d, "s", 5, KvValue::String("five".into()));
        insert(other, "n", 5, KvValue::Double(0.5));
        migrate(&mut c).expect("migrates");

        let query = |key: &str, agg| RangeQuery {
            keys: Some(vec![key.to_owned()]),
            start_ts: 0,
            end_ts: i64::MAX,
            interval: 0,
            limit: 50_000,
            agg,
            order: Order::Asc,
        };
        let got = super::super::query::range(&c, d, &query("n", Aggregation::None)).expect("range");
        let points: Vec<(i64, KvValue)> =
            got["n"].iter().map(|p| (p.ts, p.value.clone())).collect();
        let want: Vec<(i64, KvValue)> =
            (0..3_000).map(|ts| (ts * 100, KvValue::Long(ts))).collect();
        assert_eq!(points, want);
        let sum = super::super::query::range(&c, d, &query("n", Aggregation::Sum)).expect("sum");
        assert_eq!(sum["n"][0].value, KvValue::Long((0..3_000).sum()));
        let s = super::super::query::range(&c, d, &query("s", Aggregation::None)).expect("s");
        assert_eq!(s["s"][0].value, KvValue::String("five".into()));
        let o = super::super::query::range(&c, other, &query("n", Aggregation::None)).expect("o");
        assert_eq!(o["n"][0].value, KvValue::Double(0.5));
        let left: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name = 'ts_kv'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(left, 0, "ts_kv is gone");
    }
}
