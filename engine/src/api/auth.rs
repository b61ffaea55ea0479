//! `POST /api/auth/login`, `POST /api/auth/token` (refresh) and `GET /api/auth/user`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::error::ApiError;
use super::{Caller, State};
use crate::auth::NULL_CUSTOMER;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/auth/login", web::post().to(login))
        .route("/api/auth/token", web::post().to(refresh))
        .route("/api/auth/user", web::get().to(user));
}

#[derive(Deserialize)]
struct Login {
    username: String,
    password: String,
}

async fn login(state: State, body: web::Json<Login>) -> Result<HttpResponse, ApiError> {
    let Login { username, password } = body.into_inner();
    let auth_state = state.clone();
    // Argon2 takes tens of milliseconds: keep it off the HTTP workers.
    let pair = web::block(move || auth_state.auth.login(&username, &password))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
    Ok(HttpResponse::Ok().json(pair))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Refresh {
    refresh_token: String,
}

async fn refresh(state: State, body: web::Json<Refresh>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.auth.refresh(&body.refresh_token)?))
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
