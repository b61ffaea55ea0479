//! ThingsBoard's HTTP device API: `POST /api/v1/{token}/telemetry` and `.../attributes`.
//!
//! 200 only once the queue has the message; 401 for an unknown token; 400 with the reason for a
//! bad payload; 413 over the size limit; 503 with `Retry-After` when the queue stays full.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use actors::ingress::{Rejection, Transport, Uplink};
use metrics::counter;

use crate::api::State;
use actors::metrics::CONNECTIONS_REFUSED;

#[derive(Clone, Debug)]
pub struct DeviceApiConfig {
    /// Longest a request waits for room in the queue before it is answered 503.
    pub queue_wait: Duration,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/{token}/telemetry", web::post().to(telemetry))
        .route("/api/v1/{token}/attributes", web::post().to(attributes));
}

async fn telemetry(state: State, token: web::Path<String>, body: web::Bytes) -> HttpResponse {
    upload(state, &token, Uplink::Telemetry, body).await
}

async fn attributes(state: State, token: web::Path<String>, body: web::Bytes) -> HttpResponse {
    upload(state, &token, Uplink::Attributes, body).await
}

fn text(status: StatusCode, message: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/plain; charset=utf-8")
        .body(message.into())
}

fn busy(reason: &str) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .insert_header(("Retry-After", "1"))
        .content_type("text/plain; charset=utf-8")
        .body(format!("Server is busy: {reason}"))
}

async fn upload(state: State, token: &str, uplink: Uplink, body: web::Bytes) -> HttpResponse {
    let device = match state.registry.by_token(token).await {
        Ok(Some(device)) => device,
        Ok(None) => {
            counter!(CONNECTIONS_REFUSED, "transport" => "http", "reason" => "bad_token")
                .increment(1);
            return text(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: unknown access token",
            );
        }
        Err(e) => return busy(&e.to_string()),
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

fn rejected(rejection: &Rejection) -> HttpResponse {
    match rejection {
        Rejection::TooLarge { .. } => text(StatusCode::PAYLOAD_TOO_LARGE, rejection.to_string()),
        Rejection::Payload(e) => text(StatusCode::BAD_REQUEST, format!("Invalid payload: {e}")),
        Rejection::Queue(e) => busy(&e.to_string()),
        Rejection::Quota(_) => text(StatusCode::BAD_REQUEST, rejection.to_string()),
    }
}
