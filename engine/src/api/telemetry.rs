//! Reading telemetry and attributes, ThingsBoard's `/api/plugins/telemetry/...` paths and shapes.
//!
//! Every read is bounded before it reaches storage (`[api]`): `keys` de-duplicated and capped,
//! `limit` defaulted and capped, keys × points and aggregation buckets capped, time arithmetic
//! checked; refusals are 400s in ThingsBoard's error shape, counted by reason.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use actors::metrics::API_REQUESTS_REFUSED;
use actors::model::{AttributeScope, KvValue, now_ms};
use actors::ports::{Aggregation, Order, RangeQuery};
use metrics::counter;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::access::Op;
use super::device::owned_device;
use super::error::ApiError;
use super::{Caller, State};
use crate::config::ApiConfig;

/// The read limits, as the handlers get them (app data).
pub type Limits = web::Data<ApiConfig>;

/// A refusal by a read limit: counted under `reason`, answered 400 (errorCode 31).
fn refuse(reason: &'static str, message: impl Into<String>) -> ApiError {
    counter!(API_REQUESTS_REFUSED, "reason" => reason).increment(1);
    ApiError::bad_request(message)
}

const BASE: &str = "/api/plugins/telemetry/{entityType}/{entityId}";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        &format!("{BASE}/keys/timeseries"),
        web::get().to(timeseries_keys),
    )
    .route(
        &format!("{BASE}/values/timeseries"),
        web::get().to(timeseries),
    )
    .route(
        &format!("{BASE}/keys/attributes"),
        web::get().to(attribute_keys),
    )
    .route(
        &format!("{BASE}/keys/attributes/{{scope}}"),
        web::get().to(attribute_keys),
    )
    .route(
        &format!("{BASE}/values/attributes"),
        web::get().to(attributes),
    )
    .route(
        &format!("{BASE}/values/attributes/{{scope}}"),
        web::get().to(attributes),
    )
    .route(
        &format!("{BASE}/attributes/{{scope}}"),
        web::post().to(save_attributes),
    )
    .route(
        &format!("{BASE}/{{scope}}"),
        web::post().to(save_attributes),
    )
    .route(
        &format!("{BASE}/timeseries/{{scope}}"),
        web::post().to(save_timeseries),
    )
    .route(
        &format!("{BASE}/timeseries/{{scope}}/{{ttl}}"),
        web::post().to(save_timeseries),
    )
    .route(
        "/api/plugins/telemetry/{entityId}/{scope}",
        web::post().to(save_device_attributes),
    )
    .route(
        &format!("{BASE}/{{scope}}"),
        web::delete().to(delete_attributes),
    )
    .route(
        "/api/plugins/telemetry/{entityId}/{scope}",
        web::delete().to(delete_device_attributes),
    );
}

/// A shared-attribute change for an integration with a downlink converter serving `device`
/// (message type `kind`, metadata `scope = SHARED_SCOPE`).
async fn integration_downlink(
    state: &State,
    device: &actors::model::Device,
    kind: &str,
    msg: Value,
) -> Result<(), ApiError> {
    let metadata = [(
        "scope".to_owned(),
        AttributeScope::Shared.as_str().to_owned(),
    )]
    .into();
    state
        .integrations
        .downlink(device, kind, msg, metadata)
        .await
        .map(|_| ())
        .map_err(|e| ApiError::invalid(format!("Downlink converter failed: {e}")))
}

#[derive(Deserialize)]
struct DeletedKeys {
    keys: Option<String>,
}

/// `DELETE /api/plugins/telemetry/DEVICE/{id}/{scope}?keys=a,b`: deletes attributes of any
/// scope, as ThingsBoard does; 400 `Empty keys: []` without keys. Deleted shared attributes
/// reach the device's attribute-subscribed sessions as `{"deleted":[..]}` (and an integration
/// with a downlink converter as `ATTRIBUTES_DELETED`). 200 once storage has the deletion.
async fn delete_attributes(
    state: State,
    limits: Limits,
    caller: Caller,
    path: web::Path<EntityPath>,
    query: web::Query<DeletedKeys>,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let scope = path
        .scope()?
        .ok_or_else(|| ApiError::bad_request("Attribute scope is required"))?;
    let device = owned_device(&state, &caller, &path.entity_id, Op::Write).await?;
    let keys = parse_keys(query.keys.as_deref(), limits.max_keys_per_request)?
        .ok_or_else(|| refuse("empty_keys", "Empty keys: []"))?;
    // No stored key is longer than the ingress allows, nor holds control characters.
    let max = state.ingress.max_key_chars();
    if let Some(key) = keys
        .iter()
        .find(|k| k.chars().count() > max || k.chars().any(char::is_control))
    {
        return Err(refuse(
            "invalid_key",
            format!(
                "Invalid key {:?}: at most {max} characters, no control characters",
                key.chars().take(32).collect::<String>()
            ),
        ));
    }
    state
        .store
        .delete_attributes(device.id, scope, &keys, now_ms())
        .await?;
    if scope == AttributeScope::Shared {
        state
            .downlinks
            .shared_deleted(&device, keys.clone())
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        integration_downlink(
            &state,
            &device,
            "ATTRIBUTES_DELETED",
            json!({ "attributes": keys }),
        )
        .await?;
    }
    // WebSocket subscribers on every node hear of it through the device's owner. The deletion
    // is done: a queue that cannot take the notice is logged, not answered as a failure.
    if let Err(e) = state
        .downlinks
        .attributes_deleted(&device, scope, keys)
        .await
    {
        tracing::warn!(error = %e, device = %device.name, "websocket subscribers not told of deleted attributes");
    }
    Ok(HttpResponse::Ok().finish())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DevicePath {
    entity_id: String,
    scope: String,
}

impl DevicePath {
    /// The same request in the `/{entityType}/{entityId}/...` form.
    fn entity(self) -> EntityPath {
        EntityPath {
            entity_type: "DEVICE".to_owned(),
            entity_id: self.entity_id,
            scope: Some(self.scope),
        }
    }
}

/// `DELETE /api/plugins/telemetry/{deviceId}/{scope}?keys=..`: ThingsBoard's oldest form,
/// for devices only.
async fn delete_device_attributes(
    state: State,
    limits: Limits,
    caller: Caller,
    path: web::Path<DevicePath>,
    query: web::Query<DeletedKeys>,
) -> Result<HttpResponse, ApiError> {
    let path = path.into_inner().entity();
    delete_attributes(state, limits, caller, web::Path::from(path), query).await
}

/// Saves server-side or shared attributes (`{"key": value, ...}`) through the queue, as
/// ThingsBoard's `POST .../attributes/{scope}`. A shared attribute update is also a downlink
/// (`ATTRIBUTES_UPDATED`) for a device an integration with a downlink converter serves.
async fn save_attributes(
    state: State,
    caller: Caller,
    path: web::Path<EntityPath>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let scope = path
        .scope()?
        .ok_or_else(|| ApiError::bad_request("Attribute scope is required"))?;
    if scope == AttributeScope::Client {
        return Err(ApiError::bad_request(
            "CLIENT_SCOPE attributes are the device's own; save SERVER_SCOPE or SHARED_SCOPE",
        ));
    }
    let device = owned_device(&state, &caller, &path.entity_id, Op::Write).await?;
    let entries = actors::payload::parse_attributes(&body)
        .map_err(|e| ApiError::bad_request(format!("Invalid attributes: {e}")))?;
    let message = actors::model::Message {
        tenant_id: device.tenant_id,
        device_id: device.id,
        received_ts: now_ms(),
        body: actors::model::MessageBody::Attributes { scope, entries },
    };
    let accepted = state
        .ingress
        .publish_message(actors::ingress::Transport::Http, message)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    accepted
        .confirmed()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if scope == AttributeScope::Shared {
        let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        integration_downlink(&state, &device, "ATTRIBUTES_UPDATED", msg).await?;
    }
    Ok(HttpResponse::Ok().finish())
}

/// `POST /api/plugins/telemetry/{deviceId}/{scope}`: ThingsBoard's oldest form of
/// [`save_attributes`], for devices only.
async fn save_device_attributes(
    state: State,
    caller: Caller,
    path: web::Path<DevicePath>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let path = path.into_inner().entity();
    save_attributes(state, caller, web::Path::from(path), body).await
}

#[derive(Deserialize)]
struct TimeseriesPath {
    #[serde(rename = "entityType")]
    entity_type: String,
    #[serde(rename = "entityId")]
    entity_id: String,
}

/// `POST /api/plugins/telemetry/{entityType}/{entityId}/timeseries/{scope}[/{ttl}]`: time
/// series in the device API's formats (`{"k":v}`, `{"ts":..,"values":{..}}` or an array of
/// those), stored through the queue like a device's upload; 200 once the queue holds it.
/// ThingsBoard's scope (`ANY`) and TTL are accepted and not used.
async fn save_timeseries(
    state: State,
    caller: Caller,
    path: web::Path<TimeseriesPath>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let path = EntityPath {
        entity_type: path.entity_type.clone(),
        entity_id: path.entity_id.clone(),
        scope: None,
    };
    path.check_type()?;
    let device = owned_device(&state, &caller, &path.entity_id, Op::Write).await?;
    let received_ts = now_ms();
    let records = actors::payload::parse_telemetry(&body, received_ts)
        .map_err(|e| ApiError::bad_request(format!("Invalid time series: {e}")))?;
    let message = actors::model::Message {
        tenant_id: device.tenant_id,
        device_id: device.id,
        received_ts,
        body: actors::model::MessageBody::Telemetry(records),
    };
    let accepted = state
        .ingress
        .publish_message(actors::ingress::Transport::Http, message)
        .await
        .map_err(|e| match e.kind() {
            actors::ingress::RejectionKind::Unavailable => ApiError::unavailable(e.to_string()),
            _ => ApiError::bad_request(e.to_string()),
        })?;
    accepted
        .confirmed()
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    Ok(HttpResponse::Ok().finish())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EntityPath {
    entity_type: String,
    entity_id: String,
    scope: Option<String>,
}

impl EntityPath {
    fn check_type(&self) -> Result<(), ApiError> {
        if self.entity_type == "DEVICE" {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "Entity type {} is not supported; only DEVICE is",
                self.entity_type
            )))
        }
    }

    fn scope(&self) -> Result<Option<AttributeScope>, ApiError> {
        self.scope
            .as_deref()
            .map(|s| {
                AttributeScope::parse(s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "Invalid attribute scope: {s}; use CLIENT_SCOPE, SHARED_SCOPE or SERVER_SCOPE"
                    ))
                })
            })
            .transpose()
    }
}

/// ThingsBoard's `keys` parameter: comma separated, blanks ignored; absent or empty means all.
/// A key named twice is read once; more distinct keys than `max` is a 400.
fn parse_keys(keys: Option<&str>, max: usize) -> Result<Option<Vec<String>>, ApiError> {
    let Some(keys) = keys else {
        return Ok(None);
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for key in keys.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        if seen.insert(key) {
            if out.len() == max {
                return Err(too_many_keys(max));
            }
            out.push(key.to_owned());
        }
    }
    Ok((!out.is_empty()).then_some(out))
}

fn too_many_keys(max: usize) -> ApiError {
    refuse(
        "too_many_keys",
        format!(
            "Too many keys: at most {max} distinct keys per request (api.max_keys_per_request)"
        ),
    )
}

/// An integer query parameter, with an error that names it.
fn integer(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                let shown: String = v.chars().take(32).collect();
                refuse(
                    "bad_range",
                    format!("{name} must be a 64-bit integer, not {shown:?}"),
                )
            })
        })
        .transpose()
}

/// Buckets an aggregation of `[start, end)` by `interval` makes (one when `interval` is 0);
/// `None` when the range's span does not fit in an i64.
fn buckets(start: i64, end: i64, interval: i64) -> Option<u128> {
    let span = end.checked_sub(start)?;
    let span = u128::try_from(span).ok()?;
    Some(match u128::try_from(interval) {
        Ok(0) | Err(_) => 1,
        Ok(width) => span.div_ceil(width).max(1),
    })
}

/// Checks a range read against the limits and builds it.
fn range_query(
    limits: &ApiConfig,
    query: &TimeseriesQuery,
    keys: Vec<String>,
    start_ts: i64,
) -> Result<RangeQuery, ApiError> {
    let end_ts = integer("endTs", query.end_ts.as_deref())?.unwrap_or_else(now_ms);
    if end_ts < start_ts {
        return Err(refuse("bad_range", "endTs must not be before startTs"));
    }
    let agg = match query.agg.as_deref() {
        None => Aggregation::None,
        Some(a) => Aggregation::parse(a).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Invalid agg: {a}; use NONE, AVG, MIN, MAX, SUM or COUNT"
            ))
        })?,
    };
    let order = match query.order_by.as_deref() {
        None | Some("DESC") => Order::Desc,
        Some("ASC") => Order::Asc,
        Some(o) => {
            return Err(ApiError::bad_request(format!(
                "Invalid orderBy: {o}; use ASC or DESC"
            )));
        }
    };
    let interval = integer("interval", query.interval.as_deref())?.unwrap_or(0);
    if interval < 0 {
        return Err(ApiError::bad_request("interval must not be negative"));
    }
    let max_points = limits.max_points_per_response;
    let limit = match integer("limit", query.limit.as_deref())? {
        None => limits.default_limit,
        Some(l) => usize::try_from(l)
            .ok()
            .filter(|l| (1..=max_points).contains(l))
            .ok_or_else(|| {
                refuse(
                    "too_many_points",
                    format!(
                        "limit must be between 1 and {max_points} (api.max_points_per_response)"
                    ),
                )
            })?,
    };
    let per_key = if agg == Aggregation::None {
        limit as u128
    } else {
        let n = buckets(start_ts, end_ts, interval).ok_or_else(|| {
            refuse(
                "bad_range",
                format!(
                    "Invalid time range: endTs - startTs ({end_ts} - {start_ts}) does not fit in \
                     64 bits; ask for a shorter range"
                ),
            )
        })?;
        if n > limits.max_intervals as u128 {
            // ThingsBoard's own message for the same limit.
            return Err(refuse(
                "too_many_intervals",
                format!(
                    "Incorrect TsKvQuery. Number of intervals is to high - {n}. Please increase \
                     'interval' parameter for your query or reduce the time range of the query. \
                     At most {} intervals (api.max_intervals)",
                    limits.max_intervals
                ),
            ));
        }
        n
    };
    let points = per_key.saturating_mul(keys.len() as u128);
    if points > max_points as u128 {
        return Err(refuse(
            "too_many_points",
            format!(
                "The answer would hold up to {points} points ({} keys x {per_key}), more than \
                 the {max_points} a response may hold (api.max_points_per_response): ask for \
                 fewer keys, a smaller limit or a larger interval",
                keys.len()
            ),
        ));
    }
    Ok(RangeQuery {
        keys: Some(keys),
        start_ts,
        end_ts,
        interval,
        limit,
        agg,
        order,
    })
}

/// A value as the REST API shows it: typed with `useStrictDataTypes=true`, else a string, as
/// ThingsBoard does. JSON values are their text in both modes.
fn show(value: &KvValue, strict: bool) -> Value {
    if !strict {
        return Value::String(value.to_tb_string());
    }
    typed(value)
}

fn typed(value: &KvValue) -> Value {
    match value {
        KvValue::Bool(b) => Value::Bool(*b),
        KvValue::Long(l) => Value::from(*l),
        KvValue::Double(d) => Value::from(*d),
        KvValue::String(s) | KvValue::Json(s) => Value::String(s.clone()),
    }
}

async fn timeseries_keys(
    state: State,
    caller: Caller,
    path: web::Path<EntityPath>,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let device = owned_device(&state, &caller, &path.entity_id, Op::Read).await?;
    Ok(HttpResponse::Ok().json(state.store.timeseries_keys(device.id).await?))
}

/// Numbers are taken as text and parsed here, so that a bad one is answered with its name.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeseriesQuery {
    keys: Option<String>,
    start_ts: Option<String>,
    end_ts: Option<String>,
    interval: Option<String>,
    limit: Option<String>,
    agg: Option<String>,
    order_by: Option<String>,
    use_strict_data_types: Option<bool>,
}

async fn timeseries(
    state: State,
    limits: Limits,
    caller: Caller,
    path: web::Path<EntityPath>,
    query: web::Query<TimeseriesQuery>,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let device = owned_device(&state, &caller, &path.entity_id, Op::Read).await?;
    let strict = query.use_strict_data_types.unwrap_or(false);
    let keys = parse_keys(query.keys.as_deref(), limits.max_keys_per_request)?;
    let mut out = Map::new();
    match integer("startTs", query.start_ts.as_deref())? {
        None if query.end_ts.is_some() => {
            return Err(ApiError::bad_request("endTs needs startTs"));
        }
        None => {
            for latest in state.store.latest(device.id, keys.as_deref()).await? {
                let value = latest
                    .value
                    .as_ref()
                    .map_or(Value::Null, |v| show(v, strict));
                out.insert(latest.key, json!([{"ts": latest.ts, "value": value}]));
            }
        }
        Some(start_ts) => {
            let keys = match keys {
                Some(keys) => keys,
                None => {
                    let all = state.store.timeseries_keys(device.id).await?;
                    if all.len() > limits.max_keys_per_request {
                        return Err(too_many_keys(limits.max_keys_per_request));
                    }
                    all
                }
            };
            let range = range_query(&limits, &query, keys, start_ts)?;
            // The store enforces `query_timeout` itself; this only bounds a backend that does
            // not answer at all.
            let backstop = limits
                .query_timeout
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(5));
            let series = tokio::time::timeout(backstop, state.store.range(device.id, &range))
                .await
                .map_err(|_| {
                    ApiError::unavailable(format!("storage did not answer within {backstop:?}"))
                })??;
            for (key, points) in series {
                let points: Vec<Value> = points
                    .iter()
                    .map(|p| json!({"ts": p.ts, "value": show(&p.value, strict)}))
                    .collect();
                out.insert(key, Value::Array(points));
            }
        }
    }
    Ok(HttpResponse::Ok().json(out))
}

async fn attribute_keys(
    state: State,
    caller: Caller,
    path: web::Path<EntityPath>,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let scope = path.scope()?;
    let device = owned_device(&state, &caller, &path.entity_id, Op::Read).await?;
    Ok(HttpResponse::Ok().json(state.store.attribute_keys(device.id, scope).await?))
}

#[derive(Deserialize)]
struct AttributesQuery {
    keys: Option<String>,
}

async fn attributes(
    state: State,
    limits: Limits,
    caller: Caller,
    path: web::Path<EntityPath>,
    query: web::Query<AttributesQuery>,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let scope = path.scope()?;
    let device = owned_device(&state, &caller, &path.entity_id, Op::Read).await?;
    let keys = parse_keys(query.keys.as_deref(), limits.max_keys_per_request)?;
    let values = state
        .store
        .attributes(device.id, scope, keys.as_deref())
        .await?;
    let out: Vec<Value> = values
        .iter()
        .map(|a| json!({"lastUpdateTs": a.last_update_ts, "key": a.key, "value": typed(&a.value)}))
        .collect();
    Ok(HttpResponse::Ok().json(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parameter() {
        let keys = |s: Option<&str>, max| parse_keys(s, max).map_err(|e| e.message);
        let owned = |v: &[&str]| Some(v.iter().map(|&k| k.to_owned()).collect::<Vec<_>>());
        assert_eq!(keys(None, 3), Ok(None));
        assert_eq!(keys(Some(""), 3), Ok(None));
        assert_eq!(keys(Some("a, b,,c"), 3), Ok(owned(&["a", "b", "c"])));
        assert_eq!(keys(Some("a,a,b,a,b"), 2), Ok(owned(&["a", "b"])));
        assert!(keys(Some("a,b,c"), 2).is_err_and(|m| m.contains("at most 2")));
    }

    #[test]
    fn buckets_never_overflow() {
        let cases = [
            ((0, 700_000, 1000), Some(700)),
            ((0, 700_001, 1000), Some(701)),
            ((0, 10, 0), Some(1)),
            ((5, 5, 1000), Some(1)),
            ((1, 100_000, i64::MAX), Some(1)),
            ((0, i64::MAX, 1), Some(i64::MAX as u128)),
            ((i64::MIN, 0, 1000), None),
            ((i64::MIN, i64::MAX, i64::MAX), None),
            ((-1, i64::MAX, 1), None),
        ];
        for ((start, end, interval), want) in cases {
            assert_eq!(
                buckets(start, end, interval),
                want,
                "{start} {end} {interval}"
            );
        }
    }

    fn query(params: &str) -> TimeseriesQuery {
        web::Query::<TimeseriesQuery>::from_query(params)
            .expect("query parses")
            .into_inner()
    }

    #[test]
    fn range_limits() {
        let limits = ApiConfig::default();
        let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
        let check = |params: &str, n: usize| {
            let q = query(params);
            let start = integer("startTs", q.start_ts.as_deref())
                .map_err(|e| e.message.clone())?
                .unwrap_or(0);
            range_query(&limits, &q, keys(n), start)
                .map(|r| r.limit)
                .map_err(|e| e.message)
        };
        assert_eq!(check("startTs=0&endTs=10", 1), Ok(100));
        assert_eq!(check("startTs=0&endTs=10&limit=50000", 1), Ok(50_000));
        assert!(check("startTs=0&endTs=10&limit=50001", 1).is_err());
        assert!(check("startTs=0&endTs=10&limit=0", 1).is_err());
        assert!(check("startTs=0&endTs=10&limit=25000", 3).is_err());
        assert!(check("startTs=10&endTs=0", 1).is_err_and(|m| m.contains("endTs")));
        assert!(check("startTs=0&endTs=x", 1).is_err_and(|m| m.contains("endTs")));
        let agg = "agg=AVG&interval=1000&startTs=0";
        assert!(check(&format!("{agg}&endTs=700000"), 71).is_ok());
        assert!(check(&format!("{agg}&endTs=700000"), 72).is_err_and(|m| m.contains("points")));
        assert!(check(&format!("{agg}&endTs=700001"), 1).is_err_and(|m| m.contains("intervals")));
        let min = i64::MIN;
        assert!(
            check(&format!("agg=SUM&startTs={min}&endTs=0"), 1).is_err_and(|m| m.contains("range"))
        );
    }

    #[test]
    fn values_shown_as_thingsboard_does() {
        let cases = [
            (KvValue::Long(73), json!("73"), json!(73)),
            (KvValue::Double(42.0), json!("42.0"), json!(42.0)),
            (KvValue::Bool(true), json!("true"), json!(true)),
            (KvValue::String("x".into()), json!("x"), json!("x")),
            (
                KvValue::Json("{\"a\":1}".into()),
                json!("{\"a\":1}"),
                json!("{\"a\":1}"),
            ),
        ];
        for (value, loose, strict) in cases {
            assert_eq!(show(&value, false), loose, "{value:?}");
            assert_eq!(show(&value, true), strict, "{value:?}");
        }
    }
}
