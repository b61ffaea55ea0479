//! Customers over REST, ThingsBoard's paths and shapes: create/update, get, list, delete; a
//! customer's devices; assigning devices to customers and back; claiming (a customer user
//! takes a device that asked to be claimed, a tenant takes it back).

use actix_web::{HttpResponse, web};
use actors::directory::{Contact, Customer, EntityType};
use actors::live::session::DeviceQuery;
use actors::model::{DeviceId, now_ms};
use actors::protocol::claim::{self, ClaimAnswer};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::access::{Op, TenantAdmin};
use super::device::device_json;
use super::entity::{
    IdBody, MAX_PAGE, TypedPageQuery, id_json, info_json, info_text, optional_text, parse_uuid,
    required_text,
};
use super::error::ApiError;
use super::{Caller, PageQuery, State, page_json};

pub fn routes(cfg: &mut web::ServiceConfig) {
    // The claim paths first: `/api/customer/device/{name}/claim` has as many segments as
    // `/api/customer/{customerId}/device/{deviceId}`.
    cfg.route(
        "/api/customer/device/{deviceName}/claim",
        web::post().to(claim),
    )
    .route(
        "/api/customer/device/{deviceName}/claim",
        web::delete().to(reclaim),
    )
    .route("/api/customer", web::post().to(save))
    .route("/api/customers", web::get().to(list))
    .route("/api/customer/{id}", web::get().to(get))
    .route("/api/customer/{id}", web::delete().to(delete))
    .route("/api/customer/{id}/title", web::get().to(title))
    .route("/api/customer/{id}/devices", web::get().to(devices))
    .route("/api/customer/{id}/deviceInfos", web::get().to(devices))
    .route(
        "/api/customer/{customerId}/device/{deviceId}",
        web::post().to(assign_device),
    )
    .route(
        "/api/customer/device/{deviceId}",
        web::delete().to(unassign_device),
    );
}

pub fn customer_json(c: &Customer) -> Value {
    let mut v = json!({
        "id": id_json(EntityType::Customer, c.id),
        "createdTime": c.created_time,
        "tenantId": id_json(EntityType::Tenant, c.tenant_id.0),
        "title": c.title,
        "name": c.title,
        "additionalInfo": info_json(c.additional_info.as_deref()),
    });
    for (name, value) in c.contact.fields() {
        v[name] = json!(value);
    }
    v
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CustomerBody {
    id: Option<IdBody>,
    title: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    country: Option<String>,
    state: Option<String>,
    city: Option<String>,
    address: Option<String>,
    address2: Option<String>,
    zip: Option<String>,
    #[serde(default)]
    additional_info: Option<Box<serde_json::value::RawValue>>,
}

async fn save(
    state: State,
    caller: TenantAdmin,
    body: web::Json<CustomerBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let title = required_text(
        "customer title",
        body.title,
        "Customer title should be specified!",
    )?;
    if title == "Public" {
        return Err(ApiError::bad_request(
            "'Public' title for customer is system reserved!",
        ));
    }
    let contact = Contact {
        email: optional_text("email", body.email)?,
        phone: optional_text("phone", body.phone)?,
        country: optional_text("country", body.country)?,
        state: optional_text("state", body.state)?,
        city: optional_text("city", body.city)?,
        address: optional_text("address", body.address)?,
        address2: optional_text("address2", body.address2)?,
        zip: optional_text("zip", body.zip)?,
    };
    let additional_info = info_text(body.additional_info)?;
    let access = state.access();
    let customer = match body.id {
        Some(id) => {
            let existing = access.customer(&caller.0, id.uuid()?, Op::Write)?;
            Customer {
                title,
                contact,
                additional_info,
                ..(*existing).clone()
            }
        }
        None => Customer {
            id: Uuid::new_v4(),
            tenant_id: caller.0.tenant_id,
            created_time: now_ms(),
            title,
            contact,
            additional_info,
        },
    };
    let saved = state.directory.save_customer(customer).await?;
    Ok(HttpResponse::Ok().json(customer_json(&saved)))
}

async fn get(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let customer = state
        .access()
        .customer(&caller.0, parse_uuid(&id)?, Op::Read)?;
    Ok(HttpResponse::Ok().json(customer_json(&customer)))
}

/// `GET /api/customer/{id}/title`: the title as plain text.
async fn title(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let customer = state
        .access()
        .customer(&caller.0, parse_uuid(&id)?, Op::Read)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(customer.title.clone()))
}

async fn list(
    state: State,
    caller: TenantAdmin,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let request = query.request(MAX_PAGE)?;
    let page = state.directory.customers(caller.0.tenant_id, &request);
    let data = page.data.iter().map(|c| customer_json(c)).collect();
    Ok(HttpResponse::Ok().json(page_json(&request, page.total_elements, data)))
}

/// Deletes the customer and its users; its devices and assets go back to the tenant.
async fn delete(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let customer = state
        .access()
        .customer(&caller.0, parse_uuid(&id)?, Op::Manage)?;
    state.directory.delete_customer(customer.id).await?;
    Ok(HttpResponse::Ok().finish())
}

/// `GET /api/customer/{id}/devices?pageSize=&page=[&type=&textSearch=]`.
async fn devices(
    state: State,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<TypedPageQuery>,
) -> Result<HttpResponse, ApiError> {
    let access = state.access();
    let customer = access.customer(&caller.0, parse_uuid(&id)?, Op::Read)?;
    let request = query.request(MAX_PAGE)?;
    let filter = DeviceQuery {
        name_prefix: request.text_search.clone(),
        types: query.kind().map(|k| vec![k.to_owned()]),
    };
    let page = access
        .customer_devices(customer.id, &filter, &request)
        .await?;
    let data = page
        .data
        .iter()
        .map(|d| device_json(d, Some(customer.id)))
        .collect();
    Ok(HttpResponse::Ok().json(page_json(&request, page.total_elements, data)))
}

async fn assign_device(
    state: State,
    caller: TenantAdmin,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (customer, device) = path.into_inner();
    let access = state.access();
    let customer = access.customer(&caller.0, parse_uuid(&customer)?, Op::Manage)?;
    let device = access
        .device(&caller.0, DeviceId(parse_uuid(&device)?), Op::Manage)
        .await?;
    state
        .directory
        .assign_device(device.tenant_id, device.id, Some(customer.id))
        .await?;
    Ok(HttpResponse::Ok().json(device_json(&device, Some(customer.id))))
}

async fn unassign_device(
    state: State,
    caller: TenantAdmin,
    device: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (device, customer) = state
        .access()
        .device_with_customer(&caller.0, DeviceId(parse_uuid(&device)?), Op::Manage)
        .await?;
    if customer.is_none() {
        return Err(ApiError::bad_request(
            "Device isn't assigned to any customer!",
        ));
    }
    state
        .directory
        .assign_device(device.tenant_id, device.id, None)
        .await?;
    Ok(HttpResponse::Ok().json(device_json(&device, None)))
}

/// The device of the caller's tenant named `name`, or 404.
async fn device_by_name(
    state: &State,
    user: &crate::auth::Principal,
    name: &str,
) -> Result<std::sync::Arc<actors::model::Device>, ApiError> {
    state
        .registry
        .by_name(user.tenant_id, name)
        .await?
        .ok_or_else(|| ApiError {
            message: format!("Device with name [{name}] is not found"),
            ..ApiError::not_found()
        })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ClaimBody {
    #[serde(default)]
    secret_key: Option<String>,
}

/// ThingsBoard's refusal of a claim: 400 with a bare JSON string.
fn claim_refused(response: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(response)
}

/// `POST /api/customer/device/{deviceName}/claim` `{"secretKey":..}`, customer users only
/// (ThingsBoard §4.7): SUCCESS assigns the device to the user's customer and consumes the
/// device's claim request; a wrong secret or an expired request is "FAILURE" while the
/// device is nobody's, "CLAIMED" once it is somebody's.
async fn claim(
    state: State,
    caller: Caller,
    name: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let user = caller.0;
    let customer = super::access::claimant(&user)?;
    // ThingsBoard fails on a missing body; `{}` and no body both mean no secret here.
    let body: ClaimBody = if body.iter().all(u8::is_ascii_whitespace) {
        ClaimBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))?
    };
    let secret = body.secret_key.unwrap_or_default();
    let device = device_by_name(&state, &user, &name).await?;
    let owned = state.directory.device_customer(device.id).is_some();
    let request = state
        .records
        .claim(device.id)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if let ClaimAnswer::Refuse(answer) = claim::decide(request.as_ref(), &secret, now_ms(), owned) {
        return Ok(claim_refused(answer));
    }
    let claimed = state
        .directory
        .claim_device(device.tenant_id, device.id, customer)
        .await?;
    // The request is used up either way, as ThingsBoard removes it.
    state
        .records
        .delete_claim(device.id)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    if !claimed {
        return Ok(claim_refused("CLAIMED"));
    }
    Ok(HttpResponse::Ok().json(json!({
        "device": device_json(&device, Some(customer)),
        "response": "SUCCESS",
    })))
}

/// `DELETE /api/customer/device/{deviceName}/claim`: the device goes back to the tenant. A
/// tenant administrator may take back any device of the tenant; a customer user only one of
/// its customer's (ThingsBoard lets it take any, which would let one customer strip another's
/// devices).
async fn reclaim(
    state: State,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = caller.0;
    let device = device_by_name(&state, &user, &name).await?;
    let customer = state.directory.device_customer(device.id);
    if !super::access::permits(&user, device.tenant_id, customer, Op::Write) {
        return Err(ApiError::forbidden());
    }
    if customer.is_some() {
        state
            .directory
            .assign_device(device.tenant_id, device.id, None)
            .await?;
    }
    Ok(HttpResponse::Ok().finish())
}
