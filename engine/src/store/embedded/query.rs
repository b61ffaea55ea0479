//! Reads of the embedded store: latest values, ranges with aggregation, attributes.

use std::collections::BTreeMap;

use actors::model::{AttributeScope, DeviceId, KvValue};
use actors::ports::{
    Aggregation, AttributeValue, LatestValue, Order, RangeQuery, RangeResult, StoreError, TsValue,
};
use rusqlite::{Connection, OptionalExtension, params};

use super::block::{self, MAX_SPAN};
use super::{decode, sql_error};

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
        let Some(id) = series_id(c, device, &key)? else {
            continue;
        };
        let series = if query.agg == Aggregation::None {
            raw_series(c, id, query)?
        } else {
            aggregated_series(c, id, query)?
        };
        if !series.is_empty() {
            result.insert(key, series);
        }
    }
    Ok(result)
}

/// The id of the series (device, key), if it was ever written.
fn series_id(c: &Connection, device: DeviceId, key: &str) -> Result<Option<i64>, StoreError> {
    c.prepare_cached("SELECT id FROM ts_series WHERE device_id = ?1 AND key = ?2")
        .map_err(sql_error)?
        .query_row(params![id(device), key], |r| r.get(0))
        .optional()
        .map_err(sql_error)
}

/// Calls `f` with every point of `series` in `[start, end)`, in `order`, until it returns
/// false. Blocks are read in start order; a point is handed on once no block still to come can
/// hold an earlier one (ascending: none starts before it; descending: none reaches past it, as
/// a block spans at most [`MAX_SPAN`]). No time is in two blocks (see `write.rs`).
fn each_point(
    c: &Connection,
    series: i64,
    start: i64,
    end: i64,
    order: Order,
    mut f: impl FnMut(i64, KvValue) -> bool,
) -> Result<(), StoreError> {
    let sql = match order {
        Order::Asc => {
            "SELECT start_ts, data FROM ts_block WHERE series = ?1 AND start_ts >= ?2
             AND start_ts < ?3 AND end_ts >= ?4 ORDER BY start_ts ASC"
        }
        Order::Desc => {
            "SELECT start_ts, data FROM ts_block WHERE series = ?1 AND start_ts >= ?2
             AND start_ts < ?3 AND end_ts >= ?4 ORDER BY start_ts DESC"
        }
    };
    let mut stmt = c.prepare_cached(sql).map_err(sql_error)?;
    let mut rows = stmt
        .query(params![series, start.saturating_sub(MAX_SPAN), end, start])
        .map_err(sql_error)?;
    let mut pending: BTreeMap<i64, KvValue> = BTreeMap::new();
    // Hands on the pending points the next blocks cannot precede; false when `f` is done.
    let mut release = |pending: &mut BTreeMap<i64, KvValue>, bound: Option<i64>| -> bool {
        loop {
            let next = match order {
                Order::Asc => pending.first_entry(),
                Order::Desc => pending.last_entry(),
            };
            let Some(next) = next else { return true };
            let ready = match (order, bound) {
                (_, None) => true,
                (Order::Asc, Some(block_start)) => *next.key() < block_start,
                (Order::Desc, Some(block_start)) => {
                    *next.key() > block_start.saturating_add(MAX_SPAN)
                }
            };
            if !ready {
                return true;
            }
            let (ts, value) = next.remove_entry();
            if !f(ts, value) {
                return false;
            }
        }
    };
    while let Some(row) = rows.next().map_err(sql_error)? {
        let block_start: i64 = row.get(0).map_err(sql_error)?;
        if !release(&mut pending, Some(block_start)) {
            return Ok(());
        }
        let data = row.get_ref(1).map_err(sql_error)?;
        let data = data.as_blob().map_err(|e| sql_error(e.into()))?;
        block::decode(block_start, data, |ts, value| {
            if ts >= start && ts < end {
                pending.insert(ts, value);
            }
        })?;
    }
    release(&mut pending, None);
    Ok(())
}

fn raw_series(c: &Connection, series: i64, q: &RangeQuery) -> Result<Vec<TsValue>, StoreError> {
    let mut out = Vec::new();
    if q.limit == 0 {
        return Ok(out);
    }
    each_point(c, series, q.start_ts, q.end_ts, q.order, |ts, value| {
        out.push(TsValue { ts, value });
        out.len() < q.limit
    })?;
    Ok(out)
}

/// One bucket's numbers, as SQLite's aggregates kept them on a row per point: LONG and DOUBLE
/// points are numbers; COUNT counts every point.
struct Bucket {
    index: i64,
    count: i64,
    numbers: i64,
    doubles: i64,
    /// The LONGs' exact sum (no i64 overflow to fall back from).
    longs: i128,
    /// Every number's sum as a double, compensated (Kahan-Babuska-Neumaier, as SQLite's SUM).
    sum: f64,
    error: f64,
    min: Option<KvValue>,
    max: Option<KvValue>,
}

impl Bucket {
    fn new(index: i64) -> Bucket {
        Bucket {
            index,
            count: 0,
            numbers: 0,
            doubles: 0,
            longs: 0,
            sum: 0.0,
            error: 0.0,
            min: None,
            max: None,
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn add(&mut self, value: KvValue) {
        self.count += 1;
        let x = match value {
            KvValue::Long(l) => {
                self.longs += i128::from(l);
                l as f64
            }
            KvValue::Double(d) => {
                self.doubles += 1;
                d
            }
            _ => return,
        };
        self.numbers += 1;
        let t = self.sum + x;
        self.error += if self.sum.abs() >= x.abs() {
            (self.sum - t) + x
        } else {
            (x - t) + self.sum
        };
        self.sum = t;
        // Ties keep the first, as SQLite's MIN and MAX do.
        if self.min.as_ref().is_none_or(|m| less(&value, m)) {
            self.min = Some(value.clone());
        }
        if self.max.as_ref().is_none_or(|m| less(m, &value)) {
            self.max = Some(value);
        }
    }

    /// The bucket's value; `None` when it has no numbers and a number was asked for.
    #[allow(clippy::cast_precision_loss)]
    fn value(&self, agg: Aggregation) -> Option<KvValue> {
        // A number keeps the LONG type only when no DOUBLE took part.
        let typed = |v: &KvValue| match v {
            KvValue::Long(l) if self.doubles > 0 => KvValue::Double(*l as f64),
            other => other.clone(),
        };
        match agg {
            Aggregation::Count => Some(KvValue::Long(self.count)),
            _ if self.numbers == 0 => None,
            Aggregation::Avg if self.doubles == 0 => {
                Some(KvValue::Double(self.longs as f64 / self.numbers as f64))
            }
            Aggregation::Avg => Some(KvValue::Double(
                (self.sum + self.error) / self.numbers as f64,
            )),
            Aggregation::Sum if self.doubles == 0 => Some(match i64::try_from(self.longs) {
                Ok(l) => KvValue::Long(l),
                Err(_) => KvValue::Double(self.longs as f64),
            }),
            Aggregation::Sum => Some(KvValue::Double(self.sum + self.error)),
            Aggregation::Min => self.min.as_ref().map(typed),
            Aggregation::Max => self.max.as_ref().map(typed),
            Aggregation::None => unreachable!("raw series are not aggregated"),
        }
    }
}

/// Numeric order of two numbers, LONG against DOUBLE by value.
#[allow(clippy::cast_precision_loss)]
fn less(a: &KvValue, b: &KvValue) -> bool {
    match (a, b) {
        (KvValue::Long(a), KvValue::Long(b)) => a < b,
        (KvValue::Long(a), KvValue::Double(b)) => (*a as f64) < *b,
        (KvValue::Double(a), KvValue::Long(b)) => *a < (*b as f64),
        (KvValue::Double(a), KvValue::Double(b)) => a < b,
        _ => false,
    }
}

/// Buckets of `interval` ms from `start_ts`, each reported at the middle of its (possibly
/// shortened) span, as ThingsBoard does. Numbers are LONG and DOUBLE points; COUNT counts every
/// point; SUM, MIN and MAX stay LONG when no DOUBLE took part (a SUM past the i64 range becomes
/// a DOUBLE); AVG is always DOUBLE.
fn aggregated_series(
    c: &Connection,
    series: i64,
    q: &RangeQuery,
) -> Result<Vec<TsValue>, StoreError> {
    let interval = bucket_width(q)?;
    let mut buckets: Vec<Bucket> = Vec::new();
    each_point(c, series, q.start_ts, q.end_ts, Order::Asc, |ts, value| {
        // ts is in [start_ts, end_ts), whose span fits in an i64.
        let index = (ts - q.start_ts) / interval;
        if buckets.last().is_none_or(|b| b.index != index) {
            buckets.push(Bucket::new(index));
        }
        if let Some(bucket) = buckets.last_mut() {
            bucket.add(value);
        }
        true
    })?;
    if q.order == Order::Desc {
        buckets.reverse();
    }
    let mut out = Vec::with_capacity(buckets.len());
    for bucket in &buckets {
        if let Some(value) = bucket.value(q.agg) {
            out.push(TsValue {
                ts: bucket_middle(q, bucket.index, interval)?,
                value,
            });
        }
    }
    Ok(out)
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
             WHERE device_id = ?1 AND (?2 IS NULL OR scope = ?2) AND deleted = 0
             ORDER BY scope, key",
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
             WHERE device_id = ?1 AND (?2 IS NULL OR scope = ?2) AND deleted = 0 ORDER BY key",
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
