//! ThingsBoard's HTTP device API: `POST /api/v1/{token}/telemetry` and `.../attributes`,
//! `GET .../attributes` (attribute requests), `POST .../claim` (claim requests), and
//! `POST /api/v1/provision` (see `crate::provision`); its long polls and RPC are in
//! `super::http_downlink`.
//!
//! The token is checked from the path before any of the body is read: 401 for an unknown one,
//! whatever the body. Then 413 as soon as the body is known to be over the size limit (from
//! `Content-Length`, or while reading), 408 when it does not arrive within `http.body_timeout`,
//! 400 with the reason for a bad payload, 503 with `Retry-After` when the queue stays full, and
//! 200 only once the queue has the message.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::ingress::{Rejection, Transport, Uplink};
use actors::metrics::{CONNECTIONS_REFUSED, MESSAGES_REJECTED};
use actors::model::{Device, validate_access_token};
use bytes::BytesMut;
use futures::StreamExt;
use metrics::counter;

use super::http_server::{body_timed_out, is_body_timeout};
use crate::api::State;
use crate::provision::Provisioning;
use actors::model::now_ms;
use actors::ports::{ClaimRequest as StoredClaim, RecordError};
use actors::protocol::attributes::{self, AttributeRequest};
use actors::protocol::claim::ClaimRequest;
use actors::protocol::provision::ProvisionRequest;

#[derive(Clone, Debug)]
pub struct DeviceApiConfig {
    /// Longest a request waits for room in the queue before it is answered 503.
    pub queue_wait: Duration,
    /// How long a body may take to arrive (only named in the 408; the listener enforces it).
    pub body_timeout: Duration,
    /// Largest body, as the ingress checks it (`http.max_payload_size`).
    pub max_payload: usize,
    /// A long poll's wait when it names none; a device's own RPC's wait.
    pub request_timeout: Duration,
    /// The longest wait a long poll may ask for.
    pub max_request_timeout: Duration,
    /// Permits of the requests that wait (long polls, device RPCs): `http.max_waiting_requests`.
    pub waiting: std::sync::Arc<tokio::sync::Semaphore>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/provision", web::post().to(provision))
        .route("/api/v1/{token}/telemetry", web::post().to(telemetry))
        .route("/api/v1/{token}/attributes", web::post().to(attributes))
        .route(
            "/api/v1/{token}/attributes",
            web::get().to(attribute_request),
        )
        .route("/api/v1/{token}/claim", web::post().to(claim))
        .configure(super::http_downlink::routes);
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttributeLists {
    client_keys: Option<String>,
    shared_keys: Option<String>,
}

/// `GET /api/v1/{token}/attributes?clientKeys=a,b&sharedKeys=c`: the device's client and
/// shared attributes as ThingsBoard answers them (`{"client":{..},"shared":{..}}`, an empty
/// scope left out; no list at all asks for everything). Other parameters are ignored (the
/// Python SDK sends `client_keys`, and so gets every attribute, as from ThingsBoard).
async fn attribute_request(
    state: State,
    token: web::Path<String>,
    lists: web::Query<AttributeLists>,
) -> HttpResponse {
    let device = match authenticate(&state, &token).await {
        Ok(device) => device,
        Err(answer) => return answer,
    };
    let request =
        AttributeRequest::from_lists(lists.client_keys.as_deref(), lists.shared_keys.as_deref());
    match super::requested_attributes(&*state.store, device.id, &request).await {
        Ok((client, shared)) => HttpResponse::Ok()
            .content_type("application/json")
            .body(attributes::response(&client, &shared)),
        Err(e) if e.is_retryable() => busy(&e.to_string()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /api/v1/{token}/claim`: records the device's claim request (an optional
/// `{"secretKey":..,"durationMs":..}`; an empty body claims with no secret for 24 hours) with
/// ThingsBoard's put-if-absent rule: a request that stands and has not expired is kept. 200
/// with an empty body; the device is not told whether a request stood already.
async fn claim(
    state: State,
    req: HttpRequest,
    token: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    let (device, body) = match authenticated_body(&state, &req, &token, body).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let request = match ClaimRequest::parse(&body) {
        Ok(request) => request,
        Err(e) => return rejected(&Rejection::Payload(e)),
    };
    let now = now_ms();
    let claim = StoredClaim {
        device_id: device.id,
        secret_key: request.secret_key,
        expiration_time: now.saturating_add(request.duration_ms),
    };
    match state.records.put_claim_if_absent(&claim, now).await {
        Ok(_) => HttpResponse::Ok().finish(),
        Err(e) if e.is_retryable() => busy(&e.to_string()),
        Err(RecordError::Store(e)) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => text(
            StatusCode::BAD_REQUEST,
            format!("Invalid claim request: {e}"),
        ),
    }
}

/// `POST /api/v1/provision`: 200 with ThingsBoard's answer whatever the outcome (the `status`
/// says SUCCESS, NOT_FOUND or FAILURE); 400 for a body that is not a provisioning request,
/// 413 past the size limit, 500 when storage fails.
async fn provision(state: State, req: HttpRequest, body: web::Payload) -> HttpResponse {
    let body = match read_body(&state, &req, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    let request = match ProvisionRequest::parse(&body) {
        Ok(request) => request,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Invalid provision request: {e}"),
            );
        }
    };
    let provisioning = Provisioning {
        registry: &state.registry,
        profiles: &state.profiles,
        store: &state.store,
        ingress: &state.ingress,
    };
    match provisioning.provision(&request).await {
        Ok(outcome) => HttpResponse::Ok()
            .content_type("application/json")
            .body(outcome.render()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn telemetry(
    state: State,
    req: HttpRequest,
    token: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    upload(state, &req, &token, Uplink::Telemetry, body).await
}

async fn attributes(
    state: State,
    req: HttpRequest,
    token: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    upload(state, &req, &token, Uplink::Attributes, body).await
}

pub(super) fn text(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(message.into())
}

pub(super) fn busy(reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "1"))
        .content_type("text/plain; charset=utf-8")
        .body(format!("Server is busy: {reason}"))
}

async fn upload(
    state: State,
    req: &HttpRequest,
    token: &str,
    uplink: Uplink,
    body: web::Payload,
) -> HttpResponse {
    let (device, body) = match authenticated_body(&state, req, token, body).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    let publish = state
        .ingress
        .publish(&device, Transport::Http, uplink, &body);
    let accepted = match tokio::time::timeout(state.device_api.queue_wait, publish).await {
        Err(_) => return busy("queue is full"),
        Ok(Err(rejection)) => return rejected(&rejection),
        Ok(Ok(accepted)) => accepted,
    };
    match accepted.confirmed().await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(rejection) => rejected(&rejection),
    }
}

/// The device whose token is in the path, then the request's body (read only for a known
/// device), or the answer that refuses the request.
pub(super) async fn authenticated_body(
    state: &State,
    req: &HttpRequest,
    token: &str,
    body: web::Payload,
) -> Result<(std::sync::Arc<Device>, BytesMut), HttpResponse> {
    let device = authenticate(state, token).await?;
    let body = read_body(state, req, body).await?;
    Ok((device, body))
}

/// The device whose token is in the path, or the 401 (a token that cannot exist is not even
/// looked up).
pub(super) async fn authenticate(
    state: &State,
    token: &str,
) -> Result<std::sync::Arc<Device>, HttpResponse> {
    let unknown = || {
        counter!(CONNECTIONS_REFUSED, "transport" => "http", "reason" => "bad_token").increment(1);
        text(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: unknown access token",
        )
    };
    if validate_access_token(token).is_err() {
        return Err(unknown());
    }
    match state.registry.by_token(token).await {
        Ok(Some(device)) => Ok(device),
        Ok(None) => Err(unknown()),
        Err(e) => Err(busy(&e.to_string())),
    }
}

/// The whole body, at most the ingress's size limit: 413 at once when `Content-Length`
/// announces more, or as soon as reading passes it; 408 when it stops arriving in time.
pub(super) async fn read_body(
    state: &State,
    req: &HttpRequest,
    mut body: web::Payload,
) -> Result<BytesMut, HttpResponse> {
    let max = state.device_api.max_payload;
    let too_large = |size: usize| {
        counter!(MESSAGES_REJECTED, "transport" => "http", "reason" => "too_large").increment(1);
        rejected(&Rejection::TooLarge { size, max })
    };
    let announced = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = announced
        && length > max as u64
    {
        return Err(too_large(usize::try_from(length).unwrap_or(usize::MAX)));
    }
    let mut out =
        BytesMut::with_capacity(announced.map_or(0, |l| usize::try_from(l).unwrap_or(max)));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            if is_body_timeout(&e) {
                body_timed_out(true, state.device_api.body_timeout)
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("Invalid request body: {e}"),
                )
            }
        })?;
        let size = out.len().saturating_add(chunk.len());
        if size > max {
            return Err(too_large(size));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

pub(super) fn rejected(rejection: &Rejection) -> HttpResponse {
    match rejection {
        Rejection::TooLarge { .. } => text(StatusCode::PAYLOAD_TOO_LARGE, rejection.to_string()),
        Rejection::Payload(e) => text(StatusCode::BAD_REQUEST, format!("Invalid payload: {e}")),
        Rejection::Queue(e) => busy(&e.to_string()),
        Rejection::Quota(_) => text(StatusCode::BAD_REQUEST, rejection.to_string()),
    }
}
