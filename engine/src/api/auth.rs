//! `POST /api/auth/login`, `POST /api/auth/token` (refresh), `POST /api/auth/logout` and
//! `GET /api/auth/user`.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpRequest, HttpResponse, ResponseError, error::JsonPayloadError, web};
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, ErrorCode};
use super::{Caller, State};
use crate::auth::{LoginError, NULL_CUSTOMER, Peer};

/// Largest body the auth endpoints read: a username, a password or a token is far smaller, and
/// nothing more is read from a client that is not logged in yet (answered 413 past it).
const MAX_BODY: usize = 16 * 1024;

/// Headers a reverse proxy adds: the client is not the TCP peer.
const FORWARDING_HEADERS: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

pub fn routes(cfg: &mut web::ServiceConfig) {
    let json = || {
        web::JsonConfig::default()
            .limit(MAX_BODY)
            .error_handler(|err, _req| body_error(err).into())
    };
    cfg.service(
        web::resource("/api/auth/login")
            .app_data(json())
            .route(web::post().to(login)),
    )
    .service(
        web::resource("/api/auth/token")
            .app_data(json())
            .route(web::post().to(refresh)),
    )
    .route("/api/auth/logout", web::post().to(logout))
    .route("/api/auth/user", web::get().to(user));
}

/// ThingsBoard answers an oversized body 413 with errorCode 31; anything else unreadable 400.
fn body_error(err: JsonPayloadError) -> ApiError {
    match err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: ErrorCode::BadRequestParams,
                message: format!("Payload size exceeds the limit of {MAX_BODY} bytes"),
            }
        }
        err => ApiError::invalid(format!("Invalid request body: {err}")),
    }
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

async fn login(
    state: State,
    req: HttpRequest,
    body: web::Json<Login>,
) -> Result<HttpResponse, LoginError> {
    let Login { username, password } = body.into_inner();
    let peer = Peer {
        address: req.peer_addr().map(|a| a.ip()),
        forwarded: FORWARDING_HEADERS
            .iter()
            .any(|h| req.headers().contains_key(*h)),
    };
    let pair = state.auth.login(username, password, peer).await?;
    Ok(HttpResponse::Ok().json(pair))
}

/// Locked and demo refusals are authentication failures (401, errorCode 10, as ThingsBoard's
/// locked accounts); limits of the engine's own are 429 with errorCode 33 and `Retry-After`.
impl ResponseError for LoginError {
    fn status_code(&self) -> StatusCode {
        match self {
            LoginError::BadCredentials | LoginError::UserLocked(_) | LoginError::DemoRemote => {
                StatusCode::UNAUTHORIZED
            }
            LoginError::AddressLimited(_) | LoginError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            LoginError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let code = match status {
            StatusCode::UNAUTHORIZED => ErrorCode::Authentication,
            StatusCode::TOO_MANY_REQUESTS => ErrorCode::TooManyRequests,
            _ => ErrorCode::General,
        };
        let mut resp = ApiError {
            status,
            code,
            message: self.to_string(),
        }
        .error_response();
        if let Some(wait) = self.retry_after() {
            // Whole seconds, rounded up: never "0", which would invite an immediate retry.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Refresh {
    refresh_token: String,
}

async fn refresh(state: State, body: web::Json<Refresh>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.auth.refresh(&body.refresh_token)?))
}

/// Ends the caller's session (ThingsBoard answers 200 with no body).
async fn logout(state: State, caller: Caller) -> Result<HttpResponse, ApiError> {
    let me = caller.0;
    // Saving the revocation list is file I/O: off the HTTP workers.
    web::block(move || state.auth.logout(&me))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("logout failed: {e:#}")))?;
    Ok(HttpResponse::Ok().finish())
}

async fn user(caller: Caller) -> HttpResponse {
    let me = caller.0;
    HttpResponse::Ok().json(json!({
        "id": {"entityType": "USER", "id": me.user_id},
        "tenantId": {"entityType": "TENANT", "id": me.tenant_id.0},
        "customerId": {"entityType": "CUSTOMER", "id": NULL_CUSTOMER},
        "email": me.username,
        "name": me.username,
        "authority": "TENANT_ADMIN",
    }))
}
