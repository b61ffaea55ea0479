//! The embedded schema, its migrations (tracked in SQLite's `user_version`) and the batch write.

use actors::batch::{TsRow, WriteBatch};
use rusqlite::{Connection, params};

use super::encode;

/// Migration `i` brings the schema from version `i` to `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // v1. Keys are (device, key, ts) so a replayed batch overwrites instead of duplicating;
    // WITHOUT ROWID clusters a device's series by key and time, which is what range reads scan.
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
    // v2. Converter and integration definitions, as JSON documents.
    "CREATE TABLE catalog (
        id BLOB PRIMARY KEY,
        body TEXT NOT NULL
    );",
];

pub(super) fn migrate(c: &mut Connection) -> anyhow::Result<()> {
    let version: usize = c.pragma_query_value(None, "user_version", |r| r.get(0))?;
    anyhow::ensure!(
        version <= MIGRATIONS.len(),
        "the database has schema version {version}, newer than this engine knows ({}); \
         refusing to touch it",
        MIGRATIONS.len()
    );
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = c.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// Runs `stmt` (columns device_id, key, ts, type, v) once per row.
fn insert_ts_rows<'a>(
    stmt: &mut rusqlite::CachedStatement<'_>,
    rows: impl IntoIterator<Item = &'a TsRow>,
) -> rusqlite::Result<()> {
    for row in rows {
        let (kind, value) = encode(&row.value);
        stmt.execute(params![
            row.device_id.0.as_bytes(),
            row.key,
            row.ts,
            kind,
            value
        ])?;
    }
    Ok(())
}

pub(super) fn write_batch(c: &mut Connection, batch: &WriteBatch) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    {
        let mut ts = tx.prepare_cached(
            "INSERT OR REPLACE INTO ts_kv (device_id, key, ts, type, v) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        insert_ts_rows(&mut ts, &batch.timeseries)?;
        // Only a newer point replaces the latest value: batches of one device arrive in order,
        // but a device may send an old timestamp after a new one.
        let mut latest = tx.prepare_cached(
            "INSERT INTO ts_kv_latest (device_id, key, ts, type, v) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device_id, key) DO UPDATE
             SET ts = excluded.ts, type = excluded.type, v = excluded.v
             WHERE excluded.ts >= ts_kv_latest.ts",
        )?;
        insert_ts_rows(&mut latest, batch.latest())?;
        let mut attrs = tx.prepare_cached(
            "INSERT INTO attribute_kv (device_id, scope, key, last_update_ts, type, v)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (device_id, scope, key) DO UPDATE
             SET last_update_ts = excluded.last_update_ts, type = excluded.type, v = excluded.v
             WHERE excluded.last_update_ts >= attribute_kv.last_update_ts",
        )?;
        for row in &batch.attributes {
            let (kind, value) = encode(&row.value);
            attrs.execute(params![
                row.device_id.0.as_bytes(),
                row.scope.code(),
                row.key,
                row.last_update_ts,
                kind,
                value
            ])?;
        }
    }
    tx.commit()
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
}
