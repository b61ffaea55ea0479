//! Users over REST, ThingsBoard's paths and shapes: a tenant administrator creates tenant
//! administrators and customer users (`POST /api/user`), reads, lists and deletes them, and
//! hands out activation links; the user sets a password through the link
//! (`/api/noauth/activate`, in `auth.rs`) and logs in.

use actix_web::{HttpRequest, HttpResponse, web};
use actors::directory::{Authority, DirectoryError, EntityType, User};
use actors::model::now_ms;
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::access::{Op, TenantAdmin};
use super::device::customer_id_json;
use super::entity::{
    IdBody, MAX_PAGE, id_json, info_json, info_text, optional_text, parse_uuid, required_text,
};
use super::error::ApiError;
use super::{Caller, PageQuery, State, page_json};
use crate::auth::Principal;

/// Characters of an activation token.
const ACTIVATION_TOKEN_CHARS: usize = 40;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/user", web::post().to(save))
        .route("/api/user/{id}", web::get().to(get))
        .route("/api/user/{id}", web::delete().to(delete))
        .route(
            "/api/user/{id}/activationLink",
            web::get().to(activation_link),
        )
        .route("/api/customer/{id}/users", web::get().to(customer_users))
        .route("/api/tenant/users", web::get().to(tenant_users));
}

pub fn user_json(u: &User) -> Value {
    json!({
        "id": id_json(EntityType::User, u.id),
        "createdTime": u.created_time,
        "tenantId": id_json(EntityType::Tenant, u.tenant_id.0),
        "customerId": customer_id_json(u.customer_id),
        "email": u.email,
        "name": u.email,
        "authority": u.authority.as_str(),
        "firstName": u.first_name,
        "lastName": u.last_name,
        "phone": u.phone,
        "additionalInfo": info_json(u.additional_info.as_deref()),
    })
}

/// The signed-in user in ThingsBoard's shape (`GET /api/auth/user`).
pub fn principal_json(state: &State, me: &Principal) -> Value {
    if let Some(user) = state.directory.user(me.user_id) {
        return user_json(&user);
    }
    json!({
        "id": id_json(EntityType::User, me.user_id),
        "tenantId": id_json(EntityType::Tenant, me.tenant_id.0),
        "customerId": customer_id_json(None),
        "email": me.username,
        "name": me.username,
        "authority": me.authority.as_str(),
        "additionalInfo": {},
    })
}

/// Until when a link made now is valid.
fn activation_expiry(state: &State) -> i64 {
    now_ms().saturating_add(i64::try_from(state.activation_ttl.as_millis()).unwrap_or(i64::MAX))
}

fn new_activation_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(ACTIVATION_TOKEN_CHARS)
        .map(char::from)
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    id: Option<IdBody>,
    email: Option<String>,
    authority: Option<String>,
    customer_id: Option<IdBody>,
    first_name: Option<String>,
    last_name: Option<String>,
    phone: Option<String>,
    #[serde(default)]
    additional_info: Option<Box<serde_json::value::RawValue>>,
}

/// A plausible e-mail: something, `@`, something; no spaces.
fn check_email(email: &str) -> Result<(), ApiError> {
    let ok = email
        .split_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "Invalid email address format '{email}'!"
        )))
    }
}

/// `POST /api/user[?sendActivationMail=]`: create (a tenant administrator) or update (a
/// tenant administrator, or a user its own record). No mail is sent: the activation link is
/// read with `GET /api/user/{id}/activationLink`.
async fn save(
    state: State,
    caller: Caller,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, ApiError> {
    let me = caller.0;
    let body = body.into_inner();
    let email = required_text("email", body.email, "User email should be specified!")?;
    check_email(&email)?;
    let first_name = optional_text("first name", body.first_name)?;
    let last_name = optional_text("last name", body.last_name)?;
    let phone = optional_text("phone", body.phone)?;
    let additional_info = info_text(body.additional_info)?;
    let asked = match body.authority.as_deref() {
        Some(a) => Some(Authority::parse(a).ok_or_else(ApiError::forbidden)?),
        None => None,
    };
    let customer_asked = match &body.customer_id {
        Some(c) => Some(c.uuid()?).filter(|id| id.to_string() != crate::auth::NULL_CUSTOMER),
        None => None,
    };
    if let Some(c) = customer_asked {
        state.access().customer(&me, c, Op::Read)?;
    }
    // The role's customer: a customer user needs one of this tenant's, an administrator none.
    let settle = |user: User| match user.authority {
        Authority::CustomerUser if user.customer_id.is_none() => Err(DirectoryError::Conflict(
            "Customer user should be assigned to customer!".into(),
        )),
        Authority::CustomerUser => Ok(user),
        Authority::TenantAdmin => Ok(User {
            customer_id: None,
            ..user
        }),
    };
    let reserved = state.auth.admin_username();
    let saved = match body.id {
        Some(id) => {
            let id = id.uuid()?;
            state.access().user(&me, id, Op::Write)?;
            // Applied to the user as it is when saved, so a password changed meanwhile stays.
            state
                .directory
                .update_user(id, reserved, |existing| {
                    let (authority, customer_id) = if me.is_tenant_admin() {
                        (
                            asked.unwrap_or(existing.authority),
                            customer_asked.or(existing.customer_id),
                        )
                    } else {
                        // A customer user edits its own name and contact, nothing else.
                        (existing.authority, existing.customer_id)
                    };
                    settle(User {
                        email,
                        authority,
                        customer_id,
                        first_name,
                        last_name,
                        phone,
                        additional_info,
                        ..existing.clone()
                    })
                })
                .await?
        }
        None => {
            super::access::tenant_admin(&me)?;
            let authority =
                asked.ok_or_else(|| ApiError::bad_request("User authority isn't defined!"))?;
            let user = settle(User {
                id: Uuid::new_v4(),
                tenant_id: me.tenant_id,
                customer_id: customer_asked,
                created_time: now_ms(),
                email,
                authority,
                first_name,
                last_name,
                phone,
                additional_info,
                password_hash: None,
                activate_token: Some(new_activation_token()),
                activate_expires: activation_expiry(&state),
            })?;
            state.directory.save_user(user, reserved).await?
        }
    };
    Ok(HttpResponse::Ok().json(user_json(&saved)))
}

async fn get(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = state.access().user(&caller.0, parse_uuid(&id)?, Op::Read)?;
    Ok(HttpResponse::Ok().json(user_json(&user)))
}

async fn delete(
    state: State,
    caller: TenantAdmin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = state
        .access()
        .user(&caller.0, parse_uuid(&id)?, Op::Manage)?;
    state.directory.delete_user(user.id).await?;
    Ok(HttpResponse::Ok().finish())
}

/// `GET /api/user/{id}/activationLink`: the link as plain text, as ThingsBoard answers it
/// (`<scheme>://<host>:<port>/api/noauth/activate?activateToken=..`).
async fn activation_link(
    state: State,
    caller: TenantAdmin,
    req: HttpRequest,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let mut user = state
        .access()
        .user(&caller.0, parse_uuid(&id)?, Op::Manage)?;
    if user.activate_token.is_none() {
        return Err(ApiError::bad_request("User is already activated!"));
    }
    // An expired link is replaced by a new one (valid `directory.activation_ttl` again).
    if user.activate_expires <= now_ms() {
        let expires = activation_expiry(&state);
        user = state
            .directory
            .update_user(user.id, state.auth.admin_username(), |current| {
                if current.activate_token.is_none() {
                    return Err(DirectoryError::Conflict(
                        "User is already activated!".into(),
                    ));
                }
                Ok(User {
                    activate_token: Some(new_activation_token()),
                    activate_expires: expires,
                    ..current.clone()
                })
            })
            .await?;
    }
    let token = user.activate_token.as_deref().unwrap_or_default();
    // The address the caller used (a proxy's `Forwarded` / `X-Forwarded-*` headers
    // included); no port when it gave none, so the scheme's own applies.
    let info = req.connection_info();
    let link = format!(
        "{}://{}/api/noauth/activate?activateToken={token}",
        info.scheme(),
        info.host()
    );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(link))
}

async fn customer_users(
    state: State,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    super::access::tenant_admin(&caller.0)?;
    let customer = state
        .access()
        .customer(&caller.0, parse_uuid(&id)?, Op::Read)?;
    let request = query.request(MAX_PAGE)?;
    let page = state
        .directory
        .users(caller.0.tenant_id, Some(customer.id), &request);
    let data = page.data.iter().map(|u| user_json(u)).collect();
    Ok(HttpResponse::Ok().json(page_json(&request, page.total_elements, data)))
}

/// The tenant's administrators created through the API (the configured one is not listed).
async fn tenant_users(
    state: State,
    caller: TenantAdmin,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let request = query.request(MAX_PAGE)?;
    let page = state.directory.users(caller.0.tenant_id, None, &request);
    let data = page.data.iter().map(|u| user_json(u)).collect();
    Ok(HttpResponse::Ok().json(page_json(&request, page.total_elements, data)))
}
