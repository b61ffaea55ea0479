//! Reading telemetry and attributes, ThingsBoard's `/api/plugins/telemetry/...` paths and shapes.

use actix_web::{HttpResponse, web};
use actors::model::{AttributeScope, KvValue, now_ms};
use actors::ports::{Aggregation, Order, RangeQuery};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::device::owned_device;
use super::error::ApiError;
use super::{Caller, State};

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
    );
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
    let device = owned_device(&state, &caller, &path.entity_id).await?;
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
        let metadata = [("scope".to_owned(), scope.as_str().to_owned())].into();
        state
            .integrations
            .downlink(&device, "ATTRIBUTES_UPDATED", msg, metadata)
            .await
            .map_err(|e| ApiError::invalid(format!("Downlink converter failed: {e}")))?;
    }
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
fn parse_keys(keys: Option<&str>) -> Option<Vec<String>> {
    let keys: Vec<String> = keys?
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned)
        .collect();
    (!keys.is_empty()).then_some(keys)
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
    let device = owned_device(&state, &caller, &path.entity_id).await?;
    Ok(HttpResponse::Ok().json(state.store.timeseries_keys(device.id).await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeseriesQuery {
    keys: Option<String>,
    start_ts: Option<i64>,
    end_ts: Option<i64>,
    interval: Option<i64>,
    limit: Option<usize>,
    agg: Option<String>,
    order_by: Option<String>,
    use_strict_data_types: Option<bool>,
}

async fn timeseries(
    state: State,
    caller: Caller,
    path: web::Path<EntityPath>,
    query: web::Query<TimeseriesQuery>,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let device = owned_device(&state, &caller, &path.entity_id).await?;
    let strict = query.use_strict_data_types.unwrap_or(false);
    let keys = parse_keys(query.keys.as_deref());
    let mut out = Map::new();
    match (query.start_ts, query.end_ts) {
        (None, None) => {
            for latest in state.store.latest(device.id, keys.as_deref()).await? {
                let value = latest
                    .value
                    .as_ref()
                    .map_or(Value::Null, |v| show(v, strict));
                out.insert(latest.key, json!([{"ts": latest.ts, "value": value}]));
            }
        }
        (Some(start_ts), end_ts) => {
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
            let interval = query.interval.unwrap_or(0);
            if interval < 0 {
                return Err(ApiError::bad_request("interval must not be negative"));
            }
            let range = RangeQuery {
                keys,
                start_ts,
                end_ts: end_ts.unwrap_or_else(now_ms),
                interval,
                limit: query.limit.unwrap_or(100).max(1),
                agg,
                order,
            };
            for (key, points) in state.store.range(device.id, &range).await? {
                let points: Vec<Value> = points
                    .iter()
                    .map(|p| json!({"ts": p.ts, "value": show(&p.value, strict)}))
                    .collect();
                out.insert(key, Value::Array(points));
            }
        }
        (None, Some(_)) => return Err(ApiError::bad_request("endTs needs startTs")),
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
    let device = owned_device(&state, &caller, &path.entity_id).await?;
    Ok(HttpResponse::Ok().json(state.store.attribute_keys(device.id, scope).await?))
}

#[derive(Deserialize)]
struct AttributesQuery {
    keys: Option<String>,
}

async fn attributes(
    state: State,
    caller: Caller,
    path: web::Path<EntityPath>,
    query: web::Query<AttributesQuery>,
) -> Result<HttpResponse, ApiError> {
    path.check_type()?;
    let scope = path.scope()?;
    let device = owned_device(&state, &caller, &path.entity_id).await?;
    let keys = parse_keys(query.keys.as_deref());
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
        assert_eq!(parse_keys(None), None);
        assert_eq!(parse_keys(Some("")), None);
        assert_eq!(
            parse_keys(Some("a, b,,c")),
            Some(vec!["a".into(), "b".into(), "c".into()])
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
