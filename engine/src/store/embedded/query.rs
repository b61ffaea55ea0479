//! Reads of the embedded store: latest values, ranges with aggregation, attributes.

use std::collections::BTreeMap;

use actors::model::{AttributeScope, DeviceId, KvValue};
use actors::ports::{
    Aggregation, AttributeValue, LatestValue, Order, RangeQuery, RangeResult, StoreError, TsValue,
};
use rusqlite::types::Value;
use rusqlite::{Connection, params, params_from_iter};

use super::{decode, kind, sql_error};

fn id(device: DeviceId) -> Vec<u8> {
    device.0.as_bytes().to_vec()
}

pub(super) fn latest(
    c: &Connection,
    device: DeviceId,
    keys: Option<&[String]>,
) -> Result<Vec<LatestValue>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT key, ts, type, v FROM ts_kv_latest WHERE device_id = ?1 ORDER BY key",
        )
        .map_err(sql_error)?;
    let mut rows = stmt.query(params![id(device)]).map_err(sql_error)?;
    let mut found = BTreeMap::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let key: String = row.get(0).map_err(sql_error)?;
        if keys.is_some_and(|keys| !keys.contains(&key)) {
            continue;
        }
        let ts: i64 = row.get(1).map_err(sql_error)?;
        let value = decode(
            row.get(2).map_err(sql_error)?,
            row.get_ref(3).map_err(sql_error)?,
        )?;
        found.insert(key, (ts, value));
    }
    Ok(crate::store::latest_answer(found, keys))
}

pub(super) fn timeseries_keys(c: &Connection, device: DeviceId) -> Result<Vec<String>, StoreError> {
    let mut stmt = c
        .prepare_cached("SELECT key FROM ts_kv_latest WHERE device_id = ?1 ORDER BY key")
        .map_err(sql_error)?;
    let keys = stmt
        .query_map(params![id(device)], |r| r.get(0))
        .map_err(sql_error)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(sql_error)?;
    Ok(keys)
}

pub(super) fn range(
    c: &Connection,
    device: DeviceId,
    query: &RangeQuery,
) -> Result<RangeResult, StoreError> {
    if query.end_ts < query.start_ts {
        return Err(StoreError::InvalidQuery(
            "endTs must not be before startTs".into(),
        ));
    }
    let keys = match &query.keys {
        Some(keys) => keys.clone(),
        None => timeseries_keys(c, device)?,
    };
    let mut result = RangeResult::new();
    for key in keys {
        let series = if query.agg == Aggregation::None {
            raw_series(c, device, &key, query)?
        } else {
            aggregated_series(c, device, &key, query)?
        };
        if !series.is_empty() {
            result.insert(key, series);
        }
    }
    Ok(result)
}

fn order_sql(order: Order) -> &'static str {
    match order {
        Order::Asc => "ASC",
        Order::Desc => "DESC",
    }
}

fn raw_series(
    c: &Connection,
    device: DeviceId,
    key: &str,
    q: &RangeQuery,
) -> Result<Vec<TsValue>, StoreError> {
    let sql = format!(
        "SELECT ts, type, v FROM ts_kv WHERE device_id = ?1 AND key = ?2 AND ts >= ?3 AND ts < ?4
         ORDER BY ts {} LIMIT ?5",
        order_sql(q.order)
    );
    let mut stmt = c.prepare_cached(&sql).map_err(sql_error)?;
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query(params![id(device), key, q.start_ts, q.end_ts, limit])
        .map_err(sql_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let ts = row.get(0).map_err(sql_error)?;
        let value = decode(
            row.get(1).map_err(sql_error)?,
            row.get_ref(2).map_err(sql_error)?,
        )?;
        out.push(TsValue { ts, value });
    }
    Ok(out)
}

/// Buckets of `interval` ms from `start_ts`, each reported at the middle of its (possibly
/// shortened) span, as ThingsBoard does. Numbers are LONG and DOUBLE points; COUNT counts every
/// point; SUM, MIN and MAX stay LONG when no DOUBLE took part; AVG is always DOUBLE. A SUM of
/// LONGs past the i64 range (SQLite's `SUM` fails with "integer overflow") is read again as a
/// DOUBLE total.
fn aggregated_series(
    c: &Connection,
    device: DeviceId,
    key: &str,
    q: &RangeQuery,
) -> Result<Vec<TsValue>, StoreError> {
    match aggregate(c, device, key, q, "SUM") {
        Err(StoreError::Permanent(m))
            if q.agg == Aggregation::Sum && m.contains("integer overflow") =>
        {
            aggregate(c, device, key, q, "TOTAL")
        }
        other => other,
    }
}

fn aggregate(
    c: &Connection,
    device: DeviceId,
    key: &str,
    q: &RangeQuery,
    sum: &str,
) -> Result<Vec<TsValue>, StoreError> {
    let interval = bucket_width(q)?;
    let sql = format!(
        "SELECT (ts - ?3) / ?5 AS bucket,
                COUNT(*),
                SUM(type IN ({long}, {double})),
                SUM(type = {double}),
                AVG(CASE WHEN type IN ({long}, {double}) THEN v END),
                {sum}(CASE WHEN type IN ({long}, {double}) THEN v END),
                MIN(CASE WHEN type IN ({long}, {double}) THEN v END),
                MAX(CASE WHEN type IN ({long}, {double}) THEN v END)
         FROM ts_kv WHERE device_id = ?1 AND key = ?2 AND ts >= ?3 AND ts < ?4
         GROUP BY bucket ORDER BY bucket {order}",
        long = kind::LONG,
        double = kind::DOUBLE,
        order = order_sql(q.order)
    );
    let mut stmt = c.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows = stmt
        .query(params_from_iter([
            Value::Blob(id(device)),
            Value::Text(key.to_owned()),
            Value::Integer(q.start_ts),
            Value::Integer(q.end_ts),
            Value::Integer(interval),
        ]))
        .map_err(sql_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let bucket: i64 = row.get(0).map_err(sql_error)?;
        let count: i64 = row.get(1).map_err(sql_error)?;
        let numbers: i64 = row.get(2).map_err(sql_error)?;
        let doubles: i64 = row.get(3).map_err(sql_error)?;
        let ts = bucket_middle(q, bucket, interval)?;
        let number = |i: usize| -> Result<KvValue, StoreError> {
            let v: Value = row.get(i).map_err(sql_error)?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
            Ok(match v {
                Value::Integer(l) if doubles == 0 => KvValue::Long(l),
                Value::Integer(l) => KvValue::Double(l as f64),
                Value::Real(d) if doubles == 0 && d.fract() == 0.0 && fits_i64(d) => {
                    KvValue::Long(d as i64)
                }
                Value::Real(d) => KvValue::Double(d),
                _ => KvValue::Long(0),
            })
        };
        let value = match q.agg {
            Aggregation::Count => KvValue::Long(count),
            _ if numbers == 0 => continue,
            Aggregation::Avg => KvValue::Double(row.get(4).map_err(sql_error)?),
            Aggregation::Sum => number(5)?,
            Aggregation::Min => number(6)?,
            Aggregation::Max => number(7)?,
            Aggregation::None => unreachable!("raw series are read by raw_series"),
        };
        out.push(TsValue { ts, value });
    }
    Ok(out)
}

/// Whether a whole double converts to an i64 without saturating.
#[allow(clippy::cast_precision_loss)]
fn fits_i64(d: f64) -> bool {
    (i64::MIN as f64..i64::MAX as f64).contains(&d)
}

/// The width of the buckets: `interval`, or the whole range when it is 0. The range's span must
/// fit in an i64, so that `ts - start_ts` never overflows in SQL either.
fn bucket_width(q: &RangeQuery) -> Result<i64, StoreError> {
    let span = q.end_ts.checked_sub(q.start_ts).ok_or_else(|| {
        StoreError::InvalidQuery(format!(
            "Invalid time range: endTs - startTs ({} - {}) does not fit in 64 bits",
            q.end_ts, q.start_ts
        ))
    })?;
    Ok(if q.interval <= 0 {
        span.max(1)
    } else {
        q.interval
    })
}

/// The middle of bucket `bucket` (the `bucket`-th `interval` from `start_ts`), its end cut at
/// `end_ts`, as ThingsBoard reports it; without overflow at the ends of the i64 range.
fn bucket_middle(q: &RangeQuery, bucket: i64, interval: i64) -> Result<i64, StoreError> {
    let start = bucket
        .checked_mul(interval)
        .and_then(|offset| q.start_ts.checked_add(offset))
        .ok_or_else(|| StoreError::Permanent(format!("bucket {bucket} is out of range")))?;
    let end = start.saturating_add(interval).min(q.end_ts);
    Ok(start + (end - start) / 2)
}

pub(super) fn attributes(
    c: &Connection,
    device: DeviceId,
    scope: Option<AttributeScope>,
    keys: Option<&[String]>,
) -> Result<Vec<AttributeValue>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT scope, key, last_update_ts, type, v FROM attribute_kv
             WHERE device_id = ?1 AND (?2 IS NULL OR scope = ?2) ORDER BY scope, key",
        )
        .map_err(sql_error)?;
    let mut rows = stmt
        .query(params![id(device), scope.map(AttributeScope::code)])
        .map_err(sql_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let key: String = row.get(1).map_err(sql_error)?;
        if keys.is_some_and(|keys| !keys.contains(&key)) {
            continue;
        }
        let code: i64 = row.get(0).map_err(sql_error)?;
        let scope = AttributeScope::from_code(code)
            .ok_or_else(|| StoreError::Permanent(format!("unknown attribute scope {code}")))?;
        out.push(AttributeValue {
            scope,
            key,
            last_update_ts: row.get(2).map_err(sql_error)?,
            value: decode(
                row.get(3).map_err(sql_error)?,
                row.get_ref(4).map_err(sql_error)?,
            )?,
        });
    }
    Ok(out)
}

pub(super) fn attribute_keys(
    c: &Connection,
    device: DeviceId,
    scope: Option<AttributeScope>,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT DISTINCT key FROM attribute_kv
             WHERE device_id = ?1 AND (?2 IS NULL OR scope = ?2) ORDER BY key",
        )
        .map_err(sql_error)?;
    let keys = stmt
        .query_map(params![id(device), scope.map(AttributeScope::code)], |r| {
            r.get(0)
        })
        .map_err(sql_error)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .map_err(sql_error)?;
    Ok(keys)
}
