//! Assets over REST, ThingsBoard's paths and shapes: create/update, get, delete (with its
//! relations), the tenant's and a customer's lists, look-up by name, assigning to customers.

use actix_web::{HttpResponse, web};
use actors::directory::{Asset, EntityType};
use actors::model::now_ms;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::access::{Op, TenantAdmin};
use super::device::customer_id_json;
use super::entity::{
    IdBody, MAX_PAGE, TypedPageQuery, id_json, info_json, info_text, optional_text, parse_uuid,
    required_text,
};
use super::error::ApiError;
use super::{Caller, State, page_json};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/asset", web::post().to(save))
        .route("/api/asset/{id}", web::get().to(get))
        .route("/api/asset/{id}", web::delete().to(delete))
        .route("/api/tenant/assets", web::get().to(tenant_assets))
        .route("/api/tenant/asset", web::get().to(by_name))
        .route("/api/customer/{id}/assets", web::get().to(customer_assets))
        .route(
            "/api/customer/{customerId}/asset/{assetId}",
            web::post().to(assign),
        )
        .route("/api/customer/asset/{assetId}", web::delete().to(unassign));
}

pub fn asset_json(a: &Asset) -> Value {
    json!({
        "id": id_json(EntityType::Asset, a.id),
        "createdTime": a.created_time,
        "tenantId": id_json(EntityType::Tenant, a.tenant_id.0),
        "customerId": customer_id_json(a.customer_id),
        "name": a.name,
        "type": a.asset_type,
        "label": a.label,
        "assetProfileId": {
            "entityType": "ASSET_PROFILE",
            "id": Uuid::new_v5(&a.tenant_id.0, format!("asset profile:{}", a.asset_type).as_bytes()),
        },
        "additionalInfo": info_json(a.additional_info.as_deref()),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssetBody {
    id: Option<IdBody>,
    name: Option<String>,
    #[serde(rename = "type")]
    asset_type: Option<String>,
    label: Option<String>,
    #[serde(default)]
    additional_info: Option<Box<serde_json::value::RawValue>>,
}

/// `POST /api/asset`: create (a tenant administrator) or update (also a customer user, its
/// customer's assets). A missing `type` is `"default"`, as ThingsBoard's default profile.
async fn save(
    state: State,
    caller: Caller,
    body: web::Json<AssetBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = required_text("asset name", body.name, "Asset name should be specified!")?;
    let asset_type = optional_text("asset type", body.asset_type)?
        .filter(|t| !t.trim().is_empty())
        .unwrap_or_else(|| "default".into());
    let label = optional_text("asset label", body.label)?;
    let additional_info = info_text(body.additional_info)?;
    let asset = match body.id {
        Some(id) => {
            let existing = state.access().asset(&caller.0, id.uuid()?, Op::Write)?;
            // On the asset as it is when saved: its customer stays what it is then.
            let saved = state
                .directory
                .update_asset(existing.id, |current| {
                    Ok(Asset {
                        name,
                        asset_type,
                        label,
                        additional_info,
                        ..current.clone()
                    })
                })
                .await?;
            return Ok(HttpResponse::Ok().json(asset_json(&saved)));
        }
        None => {
            super::access::tenant_admin(&caller.0)?;
            Asset {
                id: Uuid::new_v4(),
                tenant_id: caller.0.tenant_id,
                customer_id: None,
                created_time: now_ms(),
                name,
                asset_type,
                label,
                additional_info,
            }
        }
    };
    let saved = state.directory.save_asset(asset).await?;
    Ok(HttpResponse::Ok().json(asset_json(&saved)))
}

async fn get(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let asset = state
        .access()
        .asset(&caller.0, parse_uuid(&id)?, Op::Read)?;
    Ok(HttpResponse::Ok().json(asset_json(&asset)))
}

/// Deletes the asset and every relation it is an end of.
async fn delete(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let asset = state
        .access()
        .asset(&caller.0, parse_uuid(&id)?, Op::Manage)?;
    state.directory.delete_asset(asset.id).await?;
    Ok(HttpResponse::Ok().finish())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AssetListQuery {
    asset_name: Option<String>,
    #[serde(flatten)]
    page: TypedPageQueryText,
}

/// [`TypedPageQuery`] as query text (flattening needs every field as a string).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypedPageQueryText {
    page_size: Option<String>,
    page: Option<String>,
    text_search: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

impl TypedPageQueryText {
    fn typed(&self) -> Result<TypedPageQuery, ApiError> {
        let number = |name: &str, v: &Option<String>| -> Result<Option<usize>, ApiError> {
            v.as_deref()
                .map(|s| {
                    s.parse().map_err(|_| {
                        ApiError::bad_request(format!("Invalid request parameters: {name}={s:?}"))
                    })
                })
                .transpose()
        };
        Ok(TypedPageQuery {
            page_size: number("pageSize", &self.page_size)?,
            page: number("page", &self.page)?,
            text_search: self.text_search.clone(),
            kind: self.kind.clone(),
        })
    }
}

/// `GET /api/tenant/assets?pageSize=&page=[&type=&textSearch=]`, or `?assetName=` (one
/// asset).
async fn tenant_assets(
    state: State,
    caller: TenantAdmin,
    query: web::Query<AssetListQuery>,
) -> Result<HttpResponse, ApiError> {
    if let Some(name) = &query.asset_name {
        return one_by_name(&state, &caller, name);
    }
    let query = query.page.typed()?;
    let request = query.request(MAX_PAGE)?;
    let page = state
        .directory
        .assets(caller.0.tenant_id, None, query.kind(), &request);
    let data = page.data.iter().map(|a| asset_json(a)).collect();
    Ok(HttpResponse::Ok().json(page_json(&request, page.total_elements, data)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NameQuery {
    asset_name: String,
}

/// `GET /api/tenant/asset?assetName=` (the newer clients' spelling).
async fn by_name(
    state: State,
    caller: TenantAdmin,
    query: web::Query<NameQuery>,
) -> Result<HttpResponse, ApiError> {
    one_by_name(&state, &caller, &query.asset_name)
}

fn one_by_name(state: &State, caller: &TenantAdmin, name: &str) -> Result<HttpResponse, ApiError> {
    match state.directory.asset_by_name(caller.0.tenant_id, name) {
        Some(a) => Ok(HttpResponse::Ok().json(asset_json(&a))),
        None => Err(ApiError::not_found()),
    }
}

async fn customer_assets(
    state: State,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<TypedPageQuery>,
) -> Result<HttpResponse, ApiError> {
    let customer = state
        .access()
        .customer(&caller.0, parse_uuid(&id)?, Op::Read)?;
    let request = query.request(MAX_PAGE)?;
    let page = state.directory.assets(
        caller.0.tenant_id,
        Some(customer.id),
        query.kind(),
        &request,
    );
    let data = page.data.iter().map(|a| asset_json(a)).collect();
    Ok(HttpResponse::Ok().json(page_json(&request, page.total_elements, data)))
}

async fn assign(
    state: State,
    caller: TenantAdmin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (customer, asset) = path.into_inner();
    let access = state.access();
    let customer = access.customer(&caller.0, parse_uuid(&customer)?, Op::Manage)?;
    let asset = access.asset(&caller.0, parse_uuid(&asset)?, Op::Manage)?;
    let saved = state
        .directory
        .update_asset(asset.id, |current| {
            Ok(Asset {
                customer_id: Some(customer.id),
                ..current.clone()
            })
        })
        .await?;
    Ok(HttpResponse::Ok().json(asset_json(&saved)))
}

async fn unassign(
    state: State,
    caller: TenantAdmin,
    asset: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let asset = state
        .access()
        .asset(&caller.0, parse_uuid(&asset)?, Op::Manage)?;
    if asset.customer_id.is_none() {
        return Err(ApiError::bad_request(
            "Asset isn't assigned to any customer!",
        ));
    }
    let saved = state
        .directory
        .update_asset(asset.id, |current| {
            Ok(Asset {
                customer_id: None,
                ..current.clone()
            })
        })
        .await?;
    Ok(HttpResponse::Ok().json(asset_json(&saved)))
}
