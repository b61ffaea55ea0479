//! Reads of the ClickHouse store. Every read groups by the table's ordering key and takes the
//! newest version (`argMax`), so rows written twice by a replayed batch count once even
//! before ClickHouse merges them away.

use std::collections::BTreeMap;

use actors::model::{AttributeScope, DeviceId, KvValue};
use actors::ports::{
    Aggregation, AttributeValue, LatestValue, Order, RangeQuery, RangeResult, StoreError, TsValue,
};
use clickhouse::{Client, Row};
use serde::Deserialize;

use super::{Typed, ch_error, kind, scope_code};

/// The six value columns of the newest version by `$by`, in `Typed`'s order.
macro_rules! newest_value {
    ($by:literal) => {
        concat!(
            "toInt8(argMax(type, ",
            $by,
            ")), argMax(bool_v, ",
            $by,
            "), argMax(long_v, ",
            $by,
            "), argMax(dbl_v, ",
            $by,
            "), argMax(str_v, ",
            $by,
            "), argMax(json_v, ",
            $by,
            ")"
        )
    };
}

#[derive(Row, Deserialize)]
struct KeyRead {
    key: String,
}

#[derive(Row, Deserialize)]
struct LatestRead {
    key: String,
    ts: i64,
    value: Typed<String>,
}

#[derive(Row, Deserialize)]
struct PointRead {
    ts: i64,
    value: Typed<String>,
}

#[derive(Row, Deserialize)]
struct AttributeRead {
    scope: i8,
    key: String,
    last_update_ts: i64,
    value: Typed<String>,
}

#[derive(Row, Deserialize)]
struct BucketRead {
    bucket: i64,
    count: u64,
    numbers: u64,
    doubles: u64,
    sum_long: i64,
    sum_double: f64,
    min_long: i64,
    max_long: i64,
    min_double: f64,
    max_double: f64,
}

fn device_param(device: DeviceId) -> String {
    device.0.to_string()
}

pub(super) async fn latest(
    client: &Client,
    device: DeviceId,
    keys: Option<&[String]>,
) -> Result<Vec<LatestValue>, StoreError> {
    let rows = client
        .query(concat!(
            "SELECT key, max(ts), ",
            newest_value!("(ts, ver)"),
            " FROM ts_kv_latest WHERE device_id = toUUID(?) GROUP BY key ORDER BY key"
        ))
        .bind(device_param(device))
        .fetch_all::<LatestRead>()
        .await
        .map_err(ch_error)?;
    let mut found = BTreeMap::new();
    for row in rows {
        if keys.is_some_and(|keys| !keys.contains(&row.key)) {
            continue;
        }
        found.insert(row.key, (row.ts, row.value.decode()?));
    }
    Ok(crate::store::latest_answer(found, keys))
}

pub(super) async fn timeseries_keys(
    client: &Client,
    device: DeviceId,
) -> Result<Vec<String>, StoreError> {
    let rows = client
        .query("SELECT DISTINCT key FROM ts_kv_latest WHERE device_id = toUUID(?) ORDER BY key")
        .bind(device_param(device))
        .fetch_all::<KeyRead>()
        .await
        .map_err(ch_error)?;
    Ok(rows.into_iter().map(|r| r.key).collect())
}

pub(super) async fn range(
    client: &Client,
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
        None => timeseries_keys(client, device).await?,
    };
    let mut result = RangeResult::new();
    for key in keys {
        let series = if query.agg == Aggregation::None {
            raw_series(client, device, &key, query).await?
        } else {
            aggregated_series(client, device, &key, query).await?
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

async fn raw_series(
    client: &Client,
    device: DeviceId,
    key: &str,
    q: &RangeQuery,
) -> Result<Vec<TsValue>, StoreError> {
    let sql = format!(
        "SELECT ts, {value} FROM ts_kv
         WHERE device_id = toUUID(?) AND key = ? AND ts >= ? AND ts < ?
         GROUP BY ts ORDER BY ts {order} LIMIT ?",
        value = newest_value!("ver"),
        order = order_sql(q.order)
    );
    let rows = client
        .query(&sql)
        .bind(device_param(device))
        .bind(key)
        .bind(q.start_ts)
        .bind(q.end_ts)
        .bind(u64::try_from(q.limit).unwrap_or(u64::MAX))
        .fetch_all::<PointRead>()
        .await
        .map_err(ch_error)?;
    rows.into_iter()
        .map(|r| {
            Ok(TsValue {
                ts: r.ts,
                value: r.value.decode()?,
            })
        })
        .collect()
}

/// Buckets of `interval` ms from `start_ts`, each reported at the middle of its (possibly
/// shortened) span, as ThingsBoard does, with the embedded store's type rules: numbers are
/// LONG and DOUBLE points; COUNT counts every point; SUM, MIN and MAX stay LONG when no DOUBLE
/// took part; AVG is always DOUBLE.
async fn aggregated_series(
    client: &Client,
    device: DeviceId,
    key: &str,
    q: &RangeQuery,
) -> Result<Vec<TsValue>, StoreError> {
    let interval = bucket_width(q)?;
    let sql = format!(
        "SELECT toInt64(intDiv(ts - toInt64(?), toInt64(?))) AS bucket,
                toUInt64(count()),
                toUInt64(countIf(t IN ({long}, {double}))),
                toUInt64(countIf(t = {double})),
                toInt64(sumIf(lv, t = {long})),
                toFloat64(sumIf(dv, t = {double})),
                toInt64(minIf(lv, t = {long})),
                toInt64(maxIf(lv, t = {long})),
                toFloat64(minIf(dv, t = {double})),
                toFloat64(maxIf(dv, t = {double}))
         FROM (
             SELECT ts, toInt8(argMax(type, ver)) AS t, argMax(long_v, ver) AS lv,
                    argMax(dbl_v, ver) AS dv
             FROM ts_kv
             WHERE device_id = toUUID(?) AND key = ? AND ts >= ? AND ts < ?
             GROUP BY ts
         )
         GROUP BY bucket ORDER BY bucket {order}",
        long = kind::LONG,
        double = kind::DOUBLE,
        order = order_sql(q.order)
    );
    let rows = client
        .query(&sql)
        .bind(q.start_ts)
        .bind(interval)
        .bind(device_param(device))
        .bind(key)
        .bind(q.start_ts)
        .bind(q.end_ts)
        .fetch_all::<BucketRead>()
        .await
        .map_err(ch_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let ts = bucket_middle(q, r.bucket, interval)?;
        let longs = r.numbers.saturating_sub(r.doubles);
        #[allow(clippy::cast_precision_loss)]
        let pick = |long: i64, double: f64, better: fn(f64, f64) -> f64| -> KvValue {
            match (longs, r.doubles) {
                (_, 0) => KvValue::Long(long),
                (0, _) => KvValue::Double(double),
                _ => KvValue::Double(better(long as f64, double)),
            }
        };
        #[allow(clippy::cast_precision_loss)]
        let value = match q.agg {
            Aggregation::Count => KvValue::Long(i64::try_from(r.count).unwrap_or(i64::MAX)),
            _ if r.numbers == 0 => continue,
            Aggregation::Avg => {
                KvValue::Double((r.sum_long as f64 + r.sum_double) / r.numbers as f64)
            }
            Aggregation::Sum if r.doubles == 0 => KvValue::Long(r.sum_long),
            Aggregation::Sum => KvValue::Double(r.sum_long as f64 + r.sum_double),
            Aggregation::Min => pick(r.min_long, r.min_double, f64::min),
            Aggregation::Max => pick(r.max_long, r.max_double, f64::max),
            Aggregation::None => unreachable!("raw series are read by raw_series"),
        };
        out.push(TsValue { ts, value });
    }
    Ok(out)
}

/// The width of the buckets: `interval`, or the whole range when it is 0. The range's span must
/// fit in an Int64, so that `ts - start_ts` never overflows in SQL either.
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

/// The middle of bucket `bucket`, its end cut at `end_ts`, as ThingsBoard reports it; without
/// overflow at the ends of the i64 range.
fn bucket_middle(q: &RangeQuery, bucket: i64, interval: i64) -> Result<i64, StoreError> {
    let start = bucket
        .checked_mul(interval)
        .and_then(|offset| q.start_ts.checked_add(offset))
        .ok_or_else(|| StoreError::Permanent(format!("bucket {bucket} is out of range")))?;
    let end = start.saturating_add(interval).min(q.end_ts);
    Ok(start + (end - start) / 2)
}

/// `AND toInt8(scope) = N` when one scope is asked for.
fn scope_filter(scope: Option<AttributeScope>) -> String {
    scope.map_or_else(String::new, |s| {
        format!(" AND toInt8(scope) = {}", scope_code(s))
    })
}

pub(super) async fn attributes(
    client: &Client,
    device: DeviceId,
    scope: Option<AttributeScope>,
    keys: Option<&[String]>,
) -> Result<Vec<AttributeValue>, StoreError> {
    let sql = format!(
        "SELECT toInt8(scope) AS s, key, max(last_update_ts), {value}
         FROM attribute_kv WHERE device_id = toUUID(?){filter}
         GROUP BY scope, key HAVING argMax(deleted, (last_update_ts, ver)) = 0
         ORDER BY s, key",
        value = newest_value!("(last_update_ts, ver)"),
        filter = scope_filter(scope)
    );
    let rows = client
        .query(&sql)
        .bind(device_param(device))
        .fetch_all::<AttributeRead>()
        .await
        .map_err(ch_error)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if keys.is_some_and(|keys| !keys.contains(&row.key)) {
            continue;
        }
        let scope = AttributeScope::from_code(i64::from(row.scope)).ok_or_else(|| {
            StoreError::Permanent(format!("unknown attribute scope {}", row.scope))
        })?;
        out.push(AttributeValue {
            scope,
            key: row.key,
            last_update_ts: row.last_update_ts,
            value: row.value.decode()?,
        });
    }
    Ok(out)
}

pub(super) async fn attribute_keys(
    client: &Client,
    device: DeviceId,
    scope: Option<AttributeScope>,
) -> Result<Vec<String>, StoreError> {
    let sql = format!(
        "SELECT DISTINCT key FROM (
             SELECT key, argMax(deleted, (last_update_ts, ver)) AS gone
             FROM attribute_kv WHERE device_id = toUUID(?){} GROUP BY scope, key
         ) WHERE gone = 0 ORDER BY key",
        scope_filter(scope)
    );
    let rows = client
        .query(&sql)
        .bind(device_param(device))
        .fetch_all::<KeyRead>()
        .await
        .map_err(ch_error)?;
    Ok(rows.into_iter().map(|r| r.key).collect())
}
