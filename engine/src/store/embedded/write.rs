//! The batch write, in one transaction: time-series points as blocks per series, the latest
//! value per key, attributes.
//!
//! A series' points of one batch become one block (more when they span more than
//! [`MAX_SPAN`] or hold more than `MAX_POINTS`). No time appears in two blocks of a series,
//! which is what lets reads merge blocks without looking for duplicates: when a batch brings
//! points no newer than the newest stored (a replay after a crash, a device sending an old
//! timestamp), the blocks that could hold their times are rewritten without them first, so
//! the new point replaces the old as `INSERT OR REPLACE` did on a row per point. The newest
//! time per series is remembered, so the usual batch (every point newer) reads nothing.

use foldhash::{HashMap, HashMapExt};

use actors::batch::WriteBatch;
use actors::model::{AttributeScope, DeviceId, KvValue};
use actors::ports::StoreError;
use hashlink::LruCache;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::block::{self, MAX_SPAN};
use super::encode;

/// Series whose id and newest time the writer remembers (about 100 bytes each); one it
/// forgot costs two indexed look-ups at its next write.
const CACHED_SERIES: usize = 1 << 18;

#[derive(Clone, Copy)]
struct Series {
    id: i64,
    /// The newest time stored in the series (`i64::MIN` when none).
    newest: i64,
}

/// What the writer remembers of the series it wrote, as committed: a batch's changes are
/// taken in only after its transaction commits.
pub(super) struct SeriesCache(LruCache<(DeviceId, String), Series>);

impl SeriesCache {
    pub(super) fn new() -> SeriesCache {
        SeriesCache(LruCache::new(CACHED_SERIES))
    }
}

pub(super) fn write_batch(
    c: &mut Connection,
    cache: &mut SeriesCache,
    batch: &WriteBatch,
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    let written = write_timeseries(&tx, cache, batch)?;
    write_latest_and_attributes(&tx, batch)?;
    tx.commit()?;
    for (key, series) in written {
        cache.0.insert(key, series);
    }
    Ok(())
}

type Point<'a> = (i64, &'a KvValue);

/// Writes the batch's blocks; returns the series it wrote, as they are once committed.
fn write_timeseries(
    tx: &Transaction<'_>,
    cache: &mut SeriesCache,
    batch: &WriteBatch,
) -> rusqlite::Result<Vec<((DeviceId, String), Series)>> {
    let mut by_series: HashMap<(DeviceId, &str), Vec<Point<'_>>> = HashMap::new();
    for row in &batch.timeseries {
        by_series
            .entry((row.device_id, row.key.as_str()))
            .or_default()
            .push((row.ts, &row.value));
    }
    let mut written = Vec::with_capacity(by_series.len());
    let mut data = Vec::new();
    for ((device, key), mut points) in by_series {
        // Stable: of points with the same time, the later arrival wins, as a replacing store.
        points.sort_by_key(|p| p.0);
        points.dedup_by(|later, earlier| {
            let same = later.0 == earlier.0;
            if same {
                *earlier = *later;
            }
            same
        });
        let key = (device, key.to_owned());
        let mut series = match cache.0.get(&key) {
            Some(series) => *series,
            None => load_series(tx, device, &key.1)?,
        };
        for run in block::runs(&points) {
            if run[0].0 <= series.newest {
                remove_times(tx, series.id, run, &mut data)?;
            }
            insert_block(tx, series.id, run.iter().copied(), &mut data)?;
        }
        if let Some(&(last, _)) = points.last() {
            series.newest = series.newest.max(last);
        }
        written.push((key, series));
    }
    Ok(written)
}

/// The series' id (created when new) and newest stored time.
fn load_series(tx: &Transaction<'_>, device: DeviceId, key: &str) -> rusqlite::Result<Series> {
    let found: Option<i64> = tx
        .prepare_cached("SELECT id FROM ts_series WHERE device_id = ?1 AND key = ?2")?
        .query_row(params![device.0.as_bytes(), key], |r| r.get(0))
        .optional()?;
    let id = match found {
        Some(id) => id,
        None => {
            tx.prepare_cached("INSERT INTO ts_series (device_id, key) VALUES (?1, ?2)")?
                .execute(params![device.0.as_bytes(), key])?;
            tx.last_insert_rowid()
        }
    };
    // The newest point is in a block starting at most MAX_SPAN before the last block starts.
    let newest: Option<i64> = tx
        .prepare_cached(
            "SELECT MAX(end_ts) FROM ts_block WHERE series = ?1
             AND start_ts >= (SELECT MAX(start_ts) FROM ts_block WHERE series = ?1) - ?2",
        )?
        .query_row(params![id, MAX_SPAN], |r| r.get(0))?;
    Ok(Series {
        id,
        newest: newest.unwrap_or(i64::MIN),
    })
}

/// Rewrites the stored blocks of `series` that hold any of the run's times without them.
fn remove_times(
    tx: &Transaction<'_>,
    series: i64,
    run: &[Point<'_>],
    data: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    let (first, last) = (run[0].0, run[run.len() - 1].0);
    let candidates = tx
        .prepare_cached(
            "SELECT start_ts, data FROM ts_block
             WHERE series = ?1 AND start_ts >= ?2 AND start_ts <= ?3 AND end_ts >= ?4",
        )?
        .query_map(
            params![series, first.saturating_sub(MAX_SPAN), last, first],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
        )?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (start, stored) in candidates {
        let mut kept = Vec::new();
        let mut replaced = false;
        block::decode(start, &stored, |ts, value| {
            if run.binary_search_by_key(&ts, |p| p.0).is_ok() {
                replaced = true;
            } else {
                kept.push((ts, value));
            }
        })
        .map_err(store_error)?;
        if replaced {
            tx.prepare_cached("DELETE FROM ts_block WHERE series = ?1 AND start_ts = ?2")?
                .execute(params![series, start])?;
            if !kept.is_empty() {
                insert_block(tx, series, kept.iter().map(|(ts, v)| (*ts, v)), data)?;
            }
        }
    }
    Ok(())
}

/// Inserts one block: points sorted by time, within [`MAX_SPAN`], none already stored.
pub(super) fn insert_block<'a>(
    tx: &Transaction<'_>,
    series: i64,
    points: impl ExactSizeIterator<Item = Point<'a>> + Clone,
    data: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    let mut times = points.clone().map(|p| p.0);
    let Some(start) = times.next() else {
        return Ok(());
    };
    let end = times.last().unwrap_or(start);
    block::encode(points, data);
    tx.prepare_cached(
        "INSERT INTO ts_block (series, start_ts, end_ts, data) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![series, start, end, &data[..]])?;
    Ok(())
}

fn store_error(e: StoreError) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(e))
}

fn write_latest_and_attributes(tx: &Transaction<'_>, batch: &WriteBatch) -> rusqlite::Result<()> {
    // Only a newer point replaces the latest value: batches of one device arrive in order,
    // but a device may send an old timestamp after a new one.
    let mut latest = tx.prepare_cached(
        "INSERT INTO ts_kv_latest (device_id, key, ts, type, v) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device_id, key) DO UPDATE
         SET ts = excluded.ts, type = excluded.type, v = excluded.v
         WHERE excluded.ts >= ts_kv_latest.ts",
    )?;
    for row in batch.latest() {
        let (kind, value) = encode(&row.value);
        latest.execute(params![
            row.device_id.0.as_bytes(),
            row.key,
            row.ts,
            kind,
            value
        ])?;
    }
    let mut attrs = tx.prepare_cached(
        "INSERT INTO attribute_kv (device_id, scope, key, last_update_ts, type, v)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (device_id, scope, key) DO UPDATE
         SET last_update_ts = excluded.last_update_ts, type = excluded.type, v = excluded.v,
             deleted = 0
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
    Ok(())
}

/// Deletes attributes as of `ts`: each key becomes a tombstone at `ts` unless it holds a newer
/// value (the type and value of a tombstone are never read).
pub(super) fn delete_attributes(
    c: &mut Connection,
    device: DeviceId,
    scope: AttributeScope,
    keys: &[String],
    ts: i64,
) -> rusqlite::Result<()> {
    let tx = c.transaction()?;
    {
        let mut delete = tx.prepare_cached(
            "INSERT INTO attribute_kv (device_id, scope, key, last_update_ts, type, v, deleted)
             VALUES (?1, ?2, ?3, ?4, 0, NULL, 1)
             ON CONFLICT (device_id, scope, key) DO UPDATE
             SET last_update_ts = excluded.last_update_ts, deleted = 1, v = NULL
             WHERE excluded.last_update_ts >= attribute_kv.last_update_ts",
        )?;
        for key in keys {
            delete.execute(params![device.0.as_bytes(), scope.code(), key, ts])?;
        }
    }
    tx.commit()
}
