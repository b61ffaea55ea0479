//! Converters, integrations and their debug events over REST, in ThingsBoard's paths and
//! shapes: `POST /api/converter` and `/api/integration` create or update (with `id`), `GET` and
//! `DELETE /api/{converter,integration}/{id}`, `GET /api/converters` and `/api/integrations`
//! list a page, `GET /api/events/{entityType}/{entityId}[/{eventType}]` reads debug events.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use actors::integration::events::{EventKind, EventQuery};
use actors::integration::{
    CatalogError, ConverterDef, ConverterKind, IntegrationDef, IntegrationKind,
};
use actors::model::now_ms;
use actors::ports::PageRequest;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::State;
use super::access::TenantAdmin;
use super::error::ApiError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/converter", web::post().to(save_converter))
        .route("/api/converters", web::get().to(list_converters))
        .route("/api/converter/{id}", web::get().to(get_converter))
        .route("/api/converter/{id}", web::delete().to(delete_converter))
        .route("/api/integration", web::post().to(save_integration))
        .route("/api/integrations", web::get().to(list_integrations))
        .route(
            "/api/integration/routingKey/{key}",
            web::get().to(integration_by_key),
        )
        .route("/api/integration/{id}", web::get().to(get_integration))
        .route(
            "/api/integration/{id}",
            web::delete().to(delete_integration),
        )
        .route(
            "/api/events/{entityType}/{entityId}/{eventType}",
            web::get().to(events_of_type),
        )
        .route("/api/events/{entityType}/{entityId}", web::get().to(events));
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        match e {
            CatalogError::Invalid(m) => ApiError::invalid(m),
            CatalogError::NotFound => ApiError::not_found(),
            CatalogError::Busy => ApiError::unavailable("the converter pool is busy; retry later"),
            CatalogError::Store(e) => e.into(),
        }
    }
}

fn entity_id(kind: &str, id: Uuid) -> Value {
    json!({"entityType": kind, "id": id})
}

fn parse_uuid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::bad_request(format!("Invalid UUID string: {s}")))
}

#[derive(Deserialize)]
struct EntityIdJson {
    id: String,
}

// ---------------------------------------------------------------------------------------------
// Converters

pub fn converter_json(c: &ConverterDef) -> Value {
    let configuration = match c.kind {
        ConverterKind::Uplink => json!({"scriptLang": "TBEL", "tbelDecoder": c.script}),
        ConverterKind::Downlink => json!({"scriptLang": "TBEL", "tbelEncoder": c.script}),
    };
    json!({
        "id": entity_id("CONVERTER", c.id),
        "createdTime": c.created_time,
        "tenantId": entity_id("TENANT", c.tenant_id.0),
        "name": c.name,
        "type": c.kind.as_str(),
        "debugMode": c.debug_mode,
        "configuration": configuration,
        "additionalInfo": null,
        "edgeTemplate": false,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverterBody {
    id: Option<EntityIdJson>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    debug_mode: bool,
    #[serde(default)]
    configuration: ConverterConfiguration,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverterConfiguration {
    tbel_decoder: Option<String>,
    decoder: Option<String>,
    tbel_encoder: Option<String>,
    encoder: Option<String>,
}

async fn save_converter(
    state: State,
    caller: TenantAdmin,
    body: web::Json<ConverterBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = caller.0.tenant_id;
    let kind = match body.kind.as_deref() {
        Some("UPLINK") | None => ConverterKind::Uplink,
        Some("DOWNLINK") => ConverterKind::Downlink,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "Converter type must be UPLINK or DOWNLINK, not {other}"
            )));
        }
    };
    let c = body.configuration;
    // Scripts are Rhai in TBEL's style; the TBEL field wins, the JavaScript one is accepted
    // for scripts already written in the common subset.
    let script = match kind {
        ConverterKind::Uplink => c.tbel_decoder.or(c.decoder),
        ConverterKind::Downlink => c.tbel_encoder.or(c.encoder),
    }
    .filter(|s| !s.trim().is_empty())
    .ok_or_else(|| {
        ApiError::invalid(match kind {
            ConverterKind::Uplink => "configuration.tbelDecoder should be specified!",
            ConverterKind::Downlink => "configuration.tbelEncoder should be specified!",
        })
    })?;
    let (id, created_time) = match body.id {
        Some(id) => {
            let id = parse_uuid(&id.id)?;
            let old = state
                .integrations
                .converter(tenant, id)
                .ok_or_else(ApiError::not_found)?;
            (id, old.created_time)
        }
        None => (Uuid::new_v4(), now_ms()),
    };
    let saved = state
        .integrations
        .save_converter(ConverterDef {
            id,
            tenant_id: tenant,
            name: body.name.unwrap_or_default().trim().to_owned(),
            kind,
            script,
            debug_mode: body.debug_mode,
            created_time,
        })
        .await?;
    Ok(HttpResponse::Ok().json(converter_json(&saved)))
}

async fn get_converter(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let c = state
        .integrations
        .converter(caller.0.tenant_id, parse_uuid(&id)?)
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(converter_json(&c)))
}

async fn delete_converter(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .integrations
        .delete_converter(caller.0.tenant_id, parse_uuid(&id)?)
        .await?;
    Ok(HttpResponse::Ok().finish())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageQuery {
    page_size: Option<usize>,
    page: Option<usize>,
    text_search: Option<String>,
    converter_type: Option<String>,
}

impl PageQuery {
    fn request(&self) -> Result<PageRequest, ApiError> {
        let page_size = self.page_size.filter(|s| *s > 0).ok_or_else(|| {
            ApiError::bad_request("Parameter 'pageSize' is required and must be positive")
        })?;
        Ok(PageRequest {
            page_size: page_size.min(10_000),
            page: self.page.unwrap_or(0),
            text_search: self.text_search.clone().filter(|t| !t.is_empty()),
        })
    }
}

fn page_json(data: Vec<Value>, total: usize, request: &PageRequest) -> Value {
    let total_pages = total.div_ceil(request.page_size);
    json!({
        "data": data,
        "totalPages": total_pages,
        "totalElements": total,
        "hasNext": request.page.checked_add(1).is_some_and(|next| next < total_pages),
    })
}

async fn list_converters(
    state: State,
    caller: TenantAdmin,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let request = query.request()?;
    let kind = match query.converter_type.as_deref() {
        None | Some("") => None,
        Some("UPLINK") => Some(ConverterKind::Uplink),
        Some("DOWNLINK") => Some(ConverterKind::Downlink),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "converterType must be UPLINK or DOWNLINK, not {other}"
            )));
        }
    };
    let page = state
        .integrations
        .converters(caller.0.tenant_id, kind, &request);
    let data = page.data.iter().map(converter_json).collect();
    Ok(HttpResponse::Ok().json(page_json(data, page.total_elements, &request)))
}

// ---------------------------------------------------------------------------------------------
// Integrations

pub fn integration_json(i: &IntegrationDef) -> Value {
    json!({
        "id": entity_id("INTEGRATION", i.id),
        "createdTime": i.created_time,
        "tenantId": entity_id("TENANT", i.tenant_id.0),
        "name": i.name,
        "type": i.kind.as_str(),
        "routingKey": i.routing_key,
        "enabled": i.enabled,
        "allowCreateDevicesOrAssets": i.allow_create_devices,
        "defaultConverterId": entity_id("CONVERTER", i.uplink_converter_id),
        "downlinkConverterId": i.downlink_converter_id.map(|id| entity_id("CONVERTER", id)),
        "debugMode": i.debug_mode,
        "remote": false,
        "secret": null,
        "configuration": {
            "metadata": i.metadata,
            "clientConfiguration": {"securityMode": "NO_SECURE"},
        },
        "additionalInfo": null,
        "edgeTemplate": false,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IntegrationBody {
    id: Option<EntityIdJson>,
    name: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    routing_key: Option<String>,
    enabled: Option<bool>,
    allow_create_devices_or_assets: Option<bool>,
    default_converter_id: Option<EntityIdJson>,
    downlink_converter_id: Option<EntityIdJson>,
    #[serde(default)]
    debug_mode: bool,
    #[serde(default)]
    configuration: IntegrationConfiguration,
}

#[derive(Default, Deserialize)]
struct IntegrationConfiguration {
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
}

async fn save_integration(
    state: State,
    caller: TenantAdmin,
    body: web::Json<IntegrationBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = caller.0.tenant_id;
    let kind = body
        .kind
        .as_deref()
        .and_then(IntegrationKind::parse)
        .ok_or_else(|| ApiError::invalid("Integration type must be COAP or HTTP"))?;
    let uplink = body.default_converter_id.ok_or_else(|| {
        ApiError::invalid("defaultConverterId (the uplink converter) should be specified!")
    })?;
    let old = match &body.id {
        Some(id) => Some(
            state
                .integrations
                .integration(tenant, parse_uuid(&id.id)?)
                .ok_or_else(ApiError::not_found)?,
        ),
        None => None,
    };
    let routing_key = body
        .routing_key
        .filter(|k| !k.is_empty())
        .or_else(|| old.as_ref().map(|o| o.routing_key.clone()))
        .unwrap_or_else(|| Uuid::new_v4().to_string());
    let metadata = body
        .configuration
        .metadata
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, v)
        })
        .collect();
    let def = IntegrationDef {
        id: old.as_ref().map_or_else(Uuid::new_v4, |o| o.id),
        tenant_id: tenant,
        name: body.name.unwrap_or_default().trim().to_owned(),
        kind,
        routing_key,
        enabled: body.enabled.unwrap_or(true),
        allow_create_devices: body.allow_create_devices_or_assets.unwrap_or(true),
        uplink_converter_id: parse_uuid(&uplink.id)?,
        downlink_converter_id: body
            .downlink_converter_id
            .map(|d| parse_uuid(&d.id))
            .transpose()?,
        metadata,
        debug_mode: body.debug_mode,
        created_time: old.as_ref().map_or_else(now_ms, |o| o.created_time),
    };
    let saved = state.integrations.save_integration(def).await?;
    Ok(HttpResponse::Ok().json(integration_json(&saved)))
}

async fn get_integration(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let i = state
        .integrations
        .integration(caller.0.tenant_id, parse_uuid(&id)?)
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(integration_json(&i)))
}

async fn integration_by_key(
    state: State,
    caller: TenantAdmin,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let found = state
        .integrations
        .integration_by_key(caller.0.tenant_id, &key)
        .ok_or_else(ApiError::not_found)?;
    Ok(HttpResponse::Ok().json(integration_json(&found)))
}

async fn delete_integration(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state
        .integrations
        .delete_integration(caller.0.tenant_id, parse_uuid(&id)?)
        .await?;
    Ok(HttpResponse::Ok().finish())
}

async fn list_integrations(
    state: State,
    caller: TenantAdmin,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let request = query.request()?;
    let page = state
        .integrations
        .integrations(caller.0.tenant_id, &request);
    let data = page.data.iter().map(integration_json).collect();
    Ok(HttpResponse::Ok().json(page_json(data, page.total_elements, &request)))
}

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EventsQuery {
    page_size: Option<usize>,
    page: Option<usize>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    sort_order: Option<String>,
    event_type: Option<String>,
}

async fn events_of_type(
    state: State,
    caller: TenantAdmin,
    path: web::Path<(String, String, String)>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (entity_type, entity_id, event_type) = path.into_inner();
    answer_events(
        &state,
        &caller,
        &entity_type,
        &entity_id,
        Some(&event_type),
        &query,
    )
}

async fn events(
    state: State,
    caller: TenantAdmin,
    path: web::Path<(String, String)>,
    query: web::Query<EventsQuery>,
) -> Result<HttpResponse, ApiError> {
    let (entity_type, entity_id) = path.into_inner();
    let event_type = query.event_type.clone();
    answer_events(
        &state,
        &caller,
        &entity_type,
        &entity_id,
        event_type.as_deref(),
        &query,
    )
}

fn answer_events(
    state: &State,
    caller: &TenantAdmin,
    entity_type: &str,
    entity_id: &str,
    event_type: Option<&str>,
    query: &EventsQuery,
) -> Result<HttpResponse, ApiError> {
    let tenant = caller.0.tenant_id;
    let id = parse_uuid(entity_id)?;
    let owned = match entity_type {
        "INTEGRATION" => state.integrations.integration(tenant, id).is_some(),
        "CONVERTER" => state.integrations.converter(tenant, id).is_some(),
        other => {
            return Err(ApiError::bad_request(format!(
                "Events are kept for INTEGRATION and CONVERTER entities, not {other}"
            )));
        }
    };
    if !owned {
        return Err(ApiError::not_found());
    }
    let kind = match event_type {
        None | Some("") => None,
        Some(t) => Some(EventKind::parse(t).ok_or_else(|| {
            ApiError::bad_request(format!(
                "eventType must be DEBUG_INTEGRATION, DEBUG_CONVERTER or ERROR, not {t}"
            ))
        })?),
    };
    let page_size = query.page_size.filter(|s| *s > 0).ok_or_else(|| {
        ApiError::bad_request("Parameter 'pageSize' is required and must be positive")
    })?;
    let q = EventQuery {
        kind,
        start_ts: query.start_time,
        end_ts: query.end_time,
        page_size: page_size.min(10_000),
        page: query.page.unwrap_or(0),
        ascending: query.sort_order.as_deref() == Some("ASC"),
    };
    let (events, total) = state.integrations.events().query(id, &q);
    let server = state.node_id.as_str();
    let data: Vec<Value> = events.iter().map(|e| e.to_json(server)).collect();
    let request = PageRequest {
        page_size: q.page_size,
        page: q.page,
        text_search: None,
    };
    Ok(HttpResponse::Ok().json(page_json(data, total, &request)))
}
