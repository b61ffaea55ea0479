//! Device profiles in ThingsBoard's paths and shapes: `POST /api/deviceProfile` (create or
//! update), `GET`/`DELETE /api/deviceProfile/{id}`, `GET /api/deviceProfiles` (pages),
//! `GET /api/deviceProfileInfo/default`, `POST /api/deviceProfile/{id}/default`.
//!
//! A device belongs to the profile whose name is its `type`. Every tenant has a default
//! profile, named `default`, made on first need. A profile's id is derived from its tenant and
//! the name it was created with, so a device's `deviceProfileId` names its profile without a
//! look-up. The provisioning settings sit where ThingsBoard keeps them: `provisionType` and
//! `provisionDeviceKey` at the top, the secret in
//! `profileData.provisionConfiguration.provisionDeviceSecret`.

use actix_web::{HttpResponse, web};
use actors::model::{TenantId, now_ms};
use actors::ports::{DeviceProfile, ProvisionType, RecordError};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::access::TenantAdmin;
use super::error::ApiError;
use super::{Caller, State};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/deviceProfile", web::post().to(save))
        .route("/api/deviceProfile/{id}", web::get().to(get))
        .route("/api/deviceProfile/{id}", web::delete().to(delete))
        .route(
            "/api/deviceProfile/{id}/default",
            web::post().to(make_default),
        )
        .route("/api/deviceProfiles", web::get().to(list))
        .route(
            "/api/deviceProfileInfo/default",
            web::get().to(default_info),
        );
}

/// The name of the profile every tenant has.
pub const DEFAULT_PROFILE: &str = "default";

/// The id of the tenant's profile created as `name` (also what a device of that type names
/// as its `deviceProfileId`).
pub fn profile_id(tenant: TenantId, name: &str) -> Uuid {
    Uuid::new_v5(&tenant.0, format!("profile:{name}").as_bytes())
}

impl From<RecordError> for ApiError {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Store(e) => e.into(),
            other => ApiError::bad_request(other.to_string()),
        }
    }
}

fn provision_type_name(t: ProvisionType) -> &'static str {
    match t {
        ProvisionType::Disabled => "DISABLED",
        ProvisionType::AllowCreateNewDevices => "ALLOW_CREATE_NEW_DEVICES",
        ProvisionType::CheckPreProvisionedDevices => "CHECK_PRE_PROVISIONED_DEVICES",
    }
}

fn parse_provision_type(s: &str) -> Result<ProvisionType, ApiError> {
    ProvisionType::ALL
        .into_iter()
        .find(|t| provision_type_name(*t) == s)
        .ok_or_else(|| ApiError::bad_request(format!("Unknown provision type: {s}")))
}

pub fn profile_json(p: &DeviceProfile) -> Value {
    json!({
        "id": {"entityType": "DEVICE_PROFILE", "id": p.id},
        "createdTime": p.created_time,
        "tenantId": {"entityType": "TENANT", "id": p.tenant_id.0},
        "name": p.name,
        "description": p.description,
        "default": p.default,
        "type": "DEFAULT",
        "transportType": "DEFAULT",
        "provisionType": provision_type_name(p.provision_type),
        "provisionDeviceKey": p.provision_device_key,
        "profileData": {
            "configuration": {"type": "DEFAULT"},
            "transportConfiguration": {"type": "DEFAULT"},
            "provisionConfiguration": {
                "type": provision_type_name(p.provision_type),
                "provisionDeviceSecret": p.provision_device_secret,
            },
        },
    })
}

/// The tenant's default profile, made when the tenant has none.
pub async fn default_profile(state: &State, tenant: TenantId) -> Result<DeviceProfile, ApiError> {
    if let Some(p) = state.profiles.default_profile(tenant).await? {
        return Ok(p);
    }
    let existing = state
        .profiles
        .profile_by_name(tenant, DEFAULT_PROFILE)
        .await?;
    let profile = DeviceProfile {
        default: true,
        ..existing.unwrap_or_else(|| DeviceProfile {
            id: profile_id(tenant, DEFAULT_PROFILE),
            tenant_id: tenant,
            created_time: now_ms(),
            name: DEFAULT_PROFILE.into(),
            default: true,
            description: Some("Default device profile".into()),
            provision_type: ProvisionType::Disabled,
            provision_device_key: None,
            provision_device_secret: None,
        })
    };
    state.profiles.save_profile(&profile).await?;
    Ok(profile)
}

/// The caller's profile with this id, or 404.
async fn owned(state: &State, caller: &TenantAdmin, id: &str) -> Result<DeviceProfile, ApiError> {
    let id = Uuid::parse_str(id)
        .map_err(|_| ApiError::bad_request(format!("Invalid UUID string: {id}")))?;
    match state.profiles.profile(id).await? {
        Some(p) if p.tenant_id == caller.0.tenant_id => Ok(p),
        _ => Err(ApiError::not_found()),
    }
}

#[derive(Deserialize)]
struct IdJson {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProvisionConfiguration {
    #[serde(rename = "type")]
    provision_type: Option<String>,
    provision_device_secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileData {
    provision_configuration: Option<ProvisionConfiguration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProfileBody {
    id: Option<IdJson>,
    name: Option<String>,
    description: Option<String>,
    default: Option<bool>,
    provision_type: Option<String>,
    provision_device_key: Option<String>,
    profile_data: Option<ProfileData>,
}

async fn save(
    state: State,
    caller: TenantAdmin,
    body: web::Json<ProfileBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let tenant = caller.0.tenant_id;
    let name = body
        .name
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("Device profile name should be specified!"))?;
    let provisioning = body.profile_data.and_then(|d| d.provision_configuration);
    let provision_type = match body.provision_type.as_deref().or(provisioning
        .as_ref()
        .and_then(|c| c.provision_type.as_deref()))
    {
        Some(t) => parse_provision_type(t)?,
        None => ProvisionType::Disabled,
    };
    let secret = provisioning.and_then(|c| c.provision_device_secret);
    let key = body.provision_device_key.filter(|k| !k.is_empty());
    if provision_type != ProvisionType::Disabled
        && (key.is_none() || secret.as_deref().is_none_or(str::is_empty))
    {
        return Err(ApiError::bad_request(
            "Provision device key and secret should be specified!",
        ));
    }
    let base = match body.id {
        Some(id) => owned(&state, &caller, &id.id).await?,
        None => {
            if state
                .profiles
                .profile_by_name(tenant, &name)
                .await?
                .is_some()
            {
                return Err(RecordError::DuplicateName.into());
            }
            DeviceProfile {
                id: profile_id(tenant, &name),
                tenant_id: tenant,
                created_time: now_ms(),
                name: name.clone(),
                default: false,
                description: None,
                provision_type,
                provision_device_key: None,
                provision_device_secret: None,
            }
        }
    };
    let profile = DeviceProfile {
        name,
        // A default profile stays default until another is made default.
        default: base.default || body.default.unwrap_or(false),
        description: body.description,
        provision_type,
        provision_device_key: key,
        provision_device_secret: secret,
        ..base
    };
    state.profiles.save_profile(&profile).await?;
    Ok(HttpResponse::Ok().json(profile_json(&profile)))
}

async fn get(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let profile = owned(&state, &caller, &id).await?;
    Ok(HttpResponse::Ok().json(profile_json(&profile)))
}

async fn delete(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let profile = owned(&state, &caller, &id).await?;
    if profile.default {
        return Err(ApiError::bad_request(
            "Deleting of default device profile is prohibited!",
        ));
    }
    state.profiles.delete_profile(profile.id).await?;
    Ok(HttpResponse::Ok().finish())
}

async fn make_default(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let profile = DeviceProfile {
        default: true,
        ..owned(&state, &caller, &id).await?
    };
    state.profiles.save_profile(&profile).await?;
    Ok(HttpResponse::Ok().json(profile_json(&profile)))
}

async fn default_info(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let profile = default_profile(&state, caller.0.tenant_id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "id": {"entityType": "DEVICE_PROFILE", "id": profile.id},
        "tenantId": {"entityType": "TENANT", "id": profile.tenant_id.0},
        "name": profile.name,
        "type": "DEFAULT",
        "transportType": "DEFAULT",
        "defaultDashboardId": null,
        "image": null,
    })))
}

async fn list(
    state: State,
    caller: TenantAdmin,
    query: web::Query<super::PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let tenant = caller.0.tenant_id;
    // The tenant's default profile exists before anyone lists them.
    default_profile(&state, tenant).await?;
    let request = query.request(actors::ports::MAX_PROFILE_PAGE_SIZE)?;
    let page = state.profiles.profiles(tenant, &request).await?;
    let data: Vec<Value> = page.data.iter().map(profile_json).collect();
    Ok(HttpResponse::Ok().json(super::page_json(&request, page.total_elements, data)))
}
