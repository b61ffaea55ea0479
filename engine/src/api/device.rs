//! Devices over REST, ThingsBoard's paths and shapes: create/update, get, list and look up by
//! name, credentials, delete.

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use actors::metrics::API_REQUESTS_REFUSED;
use actors::model::{
    AccessToken, BasicCredentials, Device, DeviceId, MAX_ADDITIONAL_INFO_BYTES,
    MAX_DEVICE_NAME_CHARS, MAX_DEVICE_TYPE_CHARS, NameError, is_basic_token, now_ms,
    validate_access_token, validate_device_name, validate_name,
};
use metrics::counter;
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::access::{Op, TenantAdmin};
use super::error::ApiError;
use super::{Caller, State};
use crate::auth::NULL_CUSTOMER;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/device", web::post().to(save))
        .route("/api/device/credentials", web::post().to(save_credentials))
        .route("/api/device/{id}", web::get().to(get))
        .route("/api/device/{id}", web::delete().to(delete))
        .route("/api/device/{id}/credentials", web::get().to(credentials))
        .route("/api/tenant/devices", web::get().to(list));
}

/// `{"entityType":"CUSTOMER","id":..}` of `customer`, ThingsBoard's null id for none.
pub fn customer_id_json(customer: Option<Uuid>) -> Value {
    match customer {
        Some(c) => json!({"entityType": "CUSTOMER", "id": c}),
        None => json!({"entityType": "CUSTOMER", "id": NULL_CUSTOMER}),
    }
}

/// A device in ThingsBoard's shape, with the customer it is assigned to.
pub fn device_json(d: &Device, customer: Option<Uuid>) -> Value {
    json!({
        "id": {"entityType": "DEVICE", "id": d.id.0},
        "createdTime": d.created_time,
        "tenantId": {"entityType": "TENANT", "id": d.tenant_id.0},
        "customerId": customer_id_json(customer),
        "name": d.name,
        "type": d.device_type,
        "label": d.label,
        "deviceProfileId": {"entityType": "DEVICE_PROFILE", "id": super::profile::profile_id(d.tenant_id, &d.device_type)},
        "additionalInfo": d
            .additional_info
            .as_deref()
            .and_then(|text| serde_json::from_str::<Value>(text).ok())
            .unwrap_or(Value::Null),
    })
}

/// The device's credentials in ThingsBoard's shape. MQTT basic credentials are kept only as
/// the digest their token holds, so their `credentialsValue` (client id, user name, password)
/// is shown as given when they were just saved, and `null` afterwards.
fn credentials_json(d: &Device, basic: Option<&BasicCredentials>) -> Value {
    let (kind, value) = if is_basic_token(&d.token.0) {
        let value = basic.map_or(Value::Null, |b| {
            Value::String(
                json!({"clientId": b.client_id, "userName": b.user_name, "password": b.password})
                    .to_string(),
            )
        });
        ("MQTT_BASIC", value)
    } else {
        ("ACCESS_TOKEN", Value::Null)
    };
    json!({
        "id": {"id": Uuid::new_v5(&d.id.0, b"credentials")},
        "createdTime": d.created_time,
        "deviceId": {"entityType": "DEVICE", "id": d.id.0},
        "credentialsType": kind,
        "credentialsId": d.token.0,
        "credentialsValue": value,
    })
}

/// A 20-character alphanumeric token (or device name), as ThingsBoard generates.
pub fn new_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(20)
        .map(char::from)
        .collect()
}

pub fn parse_id(s: &str) -> Result<DeviceId, ApiError> {
    Uuid::parse_str(s)
        .map(DeviceId)
        .map_err(|_| ApiError::bad_request(format!("Invalid UUID string: {s}")))
}

/// The device with this id if the caller may do `op` on it; else 404, or 403 when it is
/// not the caller's.
pub async fn owned_device(
    state: &State,
    caller: &Caller,
    id: &str,
    op: Op,
) -> Result<Arc<Device>, ApiError> {
    state.access().device(&caller.0, parse_id(id)?, op).await
}

/// A refused name, type or label: 400 with errorCode 31, as ThingsBoard's data validation.
fn bad_name(e: NameError) -> ApiError {
    counter!(API_REQUESTS_REFUSED, "reason" => "invalid_name").increment(1);
    ApiError::bad_request(capitalized(&e.to_string()))
}

/// An access token must pass [`validate_access_token`] and hold no `/` (it is a path segment
/// of the HTTP device API).
fn check_token(token: &str) -> Result<(), ApiError> {
    let refused = |message: String| {
        counter!(API_REQUESTS_REFUSED, "reason" => "invalid_token").increment(1);
        ApiError::bad_request(capitalized(&message))
    };
    validate_access_token(token).map_err(|e| refused(e.to_string()))?;
    if token.contains('/') {
        return Err(refused("access token must not contain '/'".into()));
    }
    Ok(())
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[derive(Deserialize)]
struct EntityIdJson {
    id: String,
}

#[derive(Deserialize)]
struct DeviceBody {
    id: Option<EntityIdJson>,
    name: Option<String>,
    #[serde(rename = "type")]
    device_type: Option<String>,
    /// ThingsBoard 3.2+ clients name the profile instead of the type.
    #[serde(rename = "deviceProfileId")]
    device_profile_id: Option<EntityIdJson>,
    label: Option<String>,
    /// Any JSON; `{"gateway":true}` makes a gateway.
    #[serde(rename = "additionalInfo", default)]
    additional_info: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SaveQuery {
    access_token: Option<String>,
}

async fn save(
    state: State,
    caller: Caller,
    query: web::Query<SaveQuery>,
    body: web::Json<DeviceBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("Device name should be specified!"))?;
    validate_device_name(&name).map_err(bad_name)?;
    let name = name.trim().to_owned();
    let device_type = match (
        body.device_type.filter(|t| !t.is_empty()),
        body.device_profile_id,
    ) {
        (Some(t), _) => {
            validate_name("device type", &t, MAX_DEVICE_TYPE_CHARS).map_err(bad_name)?;
            t
        }
        // The profile's name is the device's type.
        (None, Some(profile)) => {
            let id = Uuid::parse_str(&profile.id).map_err(|_| {
                ApiError::bad_request(format!("Invalid UUID string: {}", profile.id))
            })?;
            match state.profiles.profile(id).await? {
                Some(p) if p.tenant_id == caller.0.tenant_id => p.name,
                _ => {
                    return Err(ApiError::bad_request(
                        "Device profile is referencing to non-existent device profile!",
                    ));
                }
            }
        }
        (None, None) => "default".into(),
    };
    if let Some(label) = body.label.as_deref().filter(|l| !l.trim().is_empty()) {
        validate_name("device label", label, MAX_DEVICE_NAME_CHARS).map_err(bad_name)?;
    }
    if let Some(token) = &query.access_token {
        check_token(token)?;
    }
    let additional_info = match body.additional_info.map(|raw| raw.get().to_owned()) {
        Some(text) if text.len() > MAX_ADDITIONAL_INFO_BYTES => {
            return Err(ApiError::bad_request(format!(
                "additionalInfo is longer than {MAX_ADDITIONAL_INFO_BYTES} bytes"
            )));
        }
        Some(text) if text != "null" => {
            // Nested deeper than it can be read back: refused, not kept and shown as null.
            serde_json::from_str::<Value>(&text)
                .map_err(|e| ApiError::bad_request(format!("additionalInfo is unreadable: {e}")))?;
            Some(text)
        }
        _ => None,
    };
    let tenant = caller.0.tenant_id;
    let device = match body.id {
        // Update: keep the id (and the token unless a new one is given). A customer user may
        // rename its customer's devices, not change their credentials.
        Some(id) => {
            let op = if query.access_token.is_some() {
                Op::Manage
            } else {
                Op::Write
            };
            let existing = owned_device(&state, &caller, &id.id, op).await?;
            // A customer user may relabel its devices and change their additionalInfo, not
            // rename them (a gateway's sub-device is found by name), retype them, or make or
            // unmake a gateway (which may then speak for any device of the tenant).
            let updated = Device {
                name: name.clone(),
                device_type: device_type.clone(),
                additional_info: additional_info.clone(),
                ..(*existing).clone()
            };
            if !caller.0.is_tenant_admin()
                && (updated.name != existing.name
                    || updated.device_type != existing.device_type
                    || updated.is_gateway() != existing.is_gateway())
            {
                return Err(ApiError::forbidden());
            }
            Device {
                name,
                device_type,
                label: body.label,
                token: query
                    .access_token
                    .clone()
                    .map_or_else(|| existing.token.clone(), AccessToken),
                additional_info,
                ..(*existing).clone()
            }
        }
        // Create: the registry picks the id (the name's own unless a renamed device holds it).
        None => {
            super::access::tenant_admin(&caller.0)?;
            let device = Device {
                id: DeviceId::derive(tenant, &name),
                tenant_id: tenant,
                name,
                device_type,
                label: body.label,
                token: AccessToken(query.access_token.clone().unwrap_or_else(new_token)),
                created_time: now_ms(),
                additional_info,
            };
            let saved = state.registry.create(device).await?;
            return Ok(HttpResponse::Ok().json(device_json(&saved, None)));
        }
    };
    let token_changed = state
        .registry
        .get(device.id)
        .await?
        .is_some_and(|before| before.token != device.token);
    let saved = state.registry.save(device).await?;
    if token_changed {
        state.sessions.close(saved.id);
    }
    let customer = state.directory.device_customer(saved.id);
    Ok(HttpResponse::Ok().json(device_json(&saved, customer)))
}

async fn get(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (device, customer) = state
        .access()
        .device_with_customer(&caller.0, parse_id(&id)?, Op::Read)
        .await?;
    Ok(HttpResponse::Ok().json(device_json(&device, customer)))
}

async fn delete(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &caller, &id, Op::Manage).await?;
    // Its customer assignment and relations go first: a device made later under the same
    // name (the same id) must not inherit them, whatever fails next.
    state.directory.forget_device(device.id).await?;
    state.registry.delete(device.id).await?;
    // Its connections (and gateways' sessions for it) end, as ThingsBoard ends them.
    state.sessions.close(device.id);
    Ok(HttpResponse::Ok().finish())
}

async fn credentials(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &caller, &id, Op::Read).await?;
    Ok(HttpResponse::Ok().json(credentials_json(&device, None)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialsBody {
    device_id: EntityIdJson,
    credentials_type: Option<String>,
    credentials_id: Option<String>,
    /// For `MQTT_BASIC`: the JSON text `{"clientId":..,"userName":..,"password":..}`.
    credentials_value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BasicValue {
    client_id: Option<String>,
    user_name: Option<String>,
    password: Option<String>,
}

async fn save_credentials(
    state: State,
    caller: Caller,
    body: web::Json<CredentialsBody>,
) -> Result<HttpResponse, ApiError> {
    let refused = |message: String| {
        counter!(API_REQUESTS_REFUSED, "reason" => "invalid_credentials").increment(1);
        ApiError::bad_request(message)
    };
    let (token, basic) = match body.credentials_type.as_deref() {
        None | Some("ACCESS_TOKEN") => {
            let token = body
                .credentials_id
                .as_deref()
                .ok_or_else(|| refused("Device credentials id should be specified".into()))?;
            check_token(token)?;
            (AccessToken(token.to_owned()), None)
        }
        Some("MQTT_BASIC") => {
            let value: BasicValue = body
                .credentials_value
                .as_deref()
                .and_then(|v| serde_json::from_str(v).ok())
                .ok_or_else(|| {
                    refused(
                        "MQTT_BASIC credentialsValue must be the JSON text of \
                         {\"clientId\",\"userName\",\"password\"}"
                            .into(),
                    )
                })?;
            let basic = BasicCredentials::new(value.client_id, value.user_name, value.password)
                .map_err(|e| refused(capitalized(&e.to_string())))?;
            (basic.token(), Some(basic))
        }
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "{other} credentials are not supported; ACCESS_TOKEN and MQTT_BASIC are"
            )));
        }
    };
    let device = owned_device(&state, &caller, &body.device_id.id, Op::Manage).await?;
    let updated = Device {
        token,
        ..(*device).clone()
    };
    let changed = updated.token != device.token;
    let saved = state.registry.save(updated).await?;
    if changed {
        // Connected with the old credentials: closed, as ThingsBoard closes them.
        state.sessions.close(saved.id);
    }
    Ok(HttpResponse::Ok().json(credentials_json(&saved, basic.as_ref())))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    device_name: Option<String>,
    // Not `#[serde(flatten)]`: query strings hold only text, which flattening cannot type.
    page_size: Option<usize>,
    page: Option<usize>,
    text_search: Option<String>,
}

async fn list(
    state: State,
    caller: TenantAdmin,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = caller.0.tenant_id;
    if let Some(name) = &query.device_name {
        return match state.registry.by_name(tenant, name).await? {
            Some(d) => {
                let customer = state.directory.device_customer(d.id);
                Ok(HttpResponse::Ok().json(device_json(&d, customer)))
            }
            None => Err(ApiError::not_found()),
        };
    }
    let request = super::PageQuery {
        page_size: query.page_size,
        page: query.page,
        text_search: query.text_search.clone(),
    }
    .request(10_000)?;
    let page = state.registry.list(tenant, &request).await?;
    let data: Vec<Value> = page
        .data
        .iter()
        .map(|d| device_json(d, state.directory.device_customer(d.id)))
        .collect();
    Ok(HttpResponse::Ok().json(super::page_json(&request, page.total_elements, data)))
}
