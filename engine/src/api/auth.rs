//! `POST /api/auth/login`, `POST /api/auth/token` (refresh), `POST /api/auth/logout`,
//! `GET /api/auth/user`, `POST /api/auth/changePassword` and the activation of a new user's
//! account (`/api/noauth/activate`).

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::{HttpRequest, HttpResponse, ResponseError, error::JsonPayloadError, web};
use serde::Deserialize;

use super::error::{ApiError, ErrorCode};
use super::{Caller, State};
use crate::auth::{LoginError, Peer};
use actors::directory::DirectoryError;

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
    .service(
        web::resource("/api/noauth/activate")
            .app_data(json())
            .route(web::post().to(activate))
            .route(web::get().to(activation_page)),
    )
    .service(
        web::resource("/api/auth/changePassword")
            .app_data(json())
            .route(web::post().to(change_password)),
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
            LoginError::BadCredentials
            | LoginError::NotActive
            | LoginError::UserLocked(_)
            | LoginError::DemoRemote => StatusCode::UNAUTHORIZED,
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

async fn user(state: State, caller: Caller) -> HttpResponse {
    HttpResponse::Ok().json(super::user::principal_json(&state, &caller.0))
}

/// ThingsBoard's default password policy, 6 to 72 characters (Argon2 takes more; BCrypt,
/// which ThingsBoard uses, does not), refused with its wording: 400, errorCode 31.
fn check_password_policy(password: &str) -> Result<(), ApiError> {
    let len = password.chars().count();
    if len < 6 {
        return Err(ApiError::bad_request(
            "Password must be 6 or more characters in length.",
        ));
    }
    if len > 72 {
        return Err(ApiError::bad_request(
            "Password must be no more than 72 characters in length.",
        ));
    }
    Ok(())
}

fn login_error(e: LoginError) -> ApiError {
    ApiError {
        status: e.status_code(),
        code: ErrorCode::TooManyRequests,
        message: e.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Activate {
    activate_token: String,
    password: String,
}

/// `POST /api/noauth/activate[?sendActivationMail=]` `{"activateToken","password"}`: sets the
/// new user's password and logs it in (a token pair, as ThingsBoard answers).
async fn activate(state: State, body: web::Json<Activate>) -> Result<HttpResponse, ApiError> {
    let Activate {
        activate_token,
        password,
    } = body.into_inner();
    check_password_policy(&password)?;
    let unknown = || {
        ApiError::bad_request(format!(
            "Unable to find user credentials by activateToken [{activate_token}]"
        ))
    };
    let user = state
        .directory
        .user_by_activation(&activate_token)
        .ok_or_else(unknown)?;
    if user.activate_expires <= actors::model::now_ms() {
        return Err(ApiError::bad_request("Activation token expired"));
    }
    let hash = state
        .auth
        .hash_new_password(password)
        .await
        .map_err(login_error)?;
    // Applied to the user as it is now: deleted, moved or activated by someone else while the
    // password was hashed is respected (the token is used once).
    let saved = state
        .directory
        .update_user(user.id, state.auth.admin_username(), |current| {
            if current.activate_token.as_deref() != Some(activate_token.as_str()) {
                return Err(DirectoryError::Conflict(unknown().message));
            }
            Ok(actors::directory::User {
                password_hash: Some(hash),
                activate_token: None,
                activate_expires: 0,
                ..current.clone()
            })
        })
        .await
        .map_err(|e| match e {
            DirectoryError::NotFound(_) => unknown(),
            other => other.into(),
        })?;
    Ok(HttpResponse::Ok().json(state.auth.issue_for(&saved)))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActivationQuery {
    activate_token: Option<String>,
}

/// `GET /api/noauth/activate?activateToken=`: where ThingsBoard's web UI takes a link's
/// follower (its page to choose a password): 303 to that page for a valid token, 409 for an
/// unknown or used one. This engine has no web UI; apps `POST` here instead.
async fn activation_page(state: State, query: web::Query<ActivationQuery>) -> HttpResponse {
    let Some(token) = query.activate_token.as_deref() else {
        return HttpResponse::Conflict().finish();
    };
    match state.directory.user_by_activation(token) {
        Some(user) if user.activate_expires > actors::model::now_ms() => HttpResponse::SeeOther()
            .insert_header((
                actix_web::http::header::LOCATION,
                format!("/login/createPassword?activateToken={token}"),
            ))
            .finish(),
        Some(_) => HttpResponse::SeeOther()
            .insert_header((actix_web::http::header::LOCATION, "/activationLinkExpired"))
            .finish(),
        None => HttpResponse::Conflict().finish(),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// `POST /api/auth/changePassword`: a new token pair; the user's other tokens are outdated
/// (they carry the old credentials' fingerprint).
async fn change_password(
    state: State,
    caller: Caller,
    body: web::Json<ChangePassword>,
) -> Result<HttpResponse, ApiError> {
    let ChangePassword {
        current_password,
        new_password,
    } = body.into_inner();
    let Some(user) = state.directory.user(caller.0.user_id) else {
        return Err(ApiError::bad_request(
            "The configured administrator's password is set in the configuration file \
             (auth.password_hash, made with `engine hash-password`)",
        ));
    };
    if !state
        .auth
        .check_password(&user, current_password)
        .await
        .map_err(login_error)?
    {
        return Err(ApiError::bad_request("Current password doesn't match!"));
    }
    check_password_policy(&new_password)?;
    let hash = state
        .auth
        .hash_new_password(new_password)
        .await
        .map_err(login_error)?;
    // Only the password changes, on the user as it is now; one deleted meanwhile stays so,
    // and a password changed meanwhile by another request is not overwritten.
    let saved = state
        .directory
        .update_user(user.id, state.auth.admin_username(), |current| {
            if current.password_hash != user.password_hash {
                return Err(DirectoryError::Conflict(
                    "The password was changed meanwhile: try again".into(),
                ));
            }
            Ok(actors::directory::User {
                password_hash: Some(hash),
                ..current.clone()
            })
        })
        .await?;
    Ok(HttpResponse::Ok().json(state.auth.issue_for(&saved)))
}
