//! Server-side RPC from apps: `POST /api/plugins/rpc/{oneway,twoway}/{deviceId}` (v1) and
//! `POST /api/rpc/{oneway,twoway}/{deviceId}` (v2), with ThingsBoard's bodies, timeouts and
//! statuses. The request travels the queue to the owner of the device's state, which sends it
//! to the device's RPC-subscribed sessions (or keeps it until one subscribes) and sends the
//! outcome back to this node.
//!
//! | outcome | v1 | v2 |
//! | --- | --- | --- |
//! | one-way handed to the device | 200, empty | 200, empty |
//! | two-way reply | 200, the reply (JSON; empty stays empty) | same |
//! | reply that is not JSON | 406 | 406 |
//! | sent, no reply before expiry | 408 | 504 |
//! | never sent (no RPC subscription in time) | 409 | 504 |
//! | the device has `rpc_per_device` requests pending | 429 | 429 |
//! | this node has `max_waiting_calls` calls waiting | 503 | 503 |

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use actors::downlink::router::CallError;
use actors::downlink::rpc::{Direction, Resolution};
use actors::model::now_ms;
use actors::protocol::rpc::{RestRpc, RestRpcError};
use metrics::counter;

use super::device::owned_device;
use super::error::{ApiError, ErrorCode};
use super::{Caller, State};
use actors::metrics::API_REQUESTS_REFUSED;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/plugins/rpc/{direction}/{deviceId}",
        web::post().to(|state, caller, path, body| call(state, caller, path, body, Version::V1)),
    )
    .route(
        "/api/rpc/{direction}/{deviceId}",
        web::post().to(|state, caller, path, body| call(state, caller, path, body, Version::V2)),
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

async fn call(
    state: State,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Bytes,
    version: Version,
) -> Result<HttpResponse, ApiError> {
    let (direction, device_id) = path.into_inner();
    let direction = match direction.as_str() {
        "oneway" => Direction::OneWay,
        "twoway" => Direction::TwoWay,
        _ => return Err(ApiError::no_such_resource()),
    };
    let device = owned_device(&state, &caller, &device_id).await?;
    let rpc = RestRpc::parse(&body, direction, now_ms()).map_err(|e| {
        counter!(API_REQUESTS_REFUSED, "reason" => "invalid_rpc").increment(1);
        match e {
            RestRpcError::InvalidBody => ApiError::bad_request("Invalid request body"),
            e => ApiError::invalid(e.to_string()),
        }
    })?;
    if rpc.persistent {
        counter!(API_REQUESTS_REFUSED, "reason" => "persistent_rpc").increment(1);
        return Err(ApiError::invalid(
            "Persistent RPC is not served by this engine yet",
        ));
    }
    let resolution = state
        .downlinks
        .call(&device, rpc.request)
        .await
        .map_err(|e| match e {
            CallError::Busy => ApiError::unavailable(e.to_string()),
            CallError::Queue(e) => ApiError::unavailable(e.to_string()),
        })?;
    Ok(answer(resolution, version))
}

/// The REST answer to an RPC's outcome.
fn answer(resolution: Resolution, version: Version) -> HttpResponse {
    match resolution {
        Resolution::Sent => HttpResponse::Ok().finish(),
        Resolution::Reply(reply) if reply.iter().all(u8::is_ascii_whitespace) => {
            HttpResponse::Ok().finish()
        }
        Resolution::Reply(reply) => {
            if serde_json::from_slice::<serde::de::IgnoredAny>(&reply).is_ok() {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(reply)
            } else {
                HttpResponse::NotAcceptable().finish()
            }
        }
        Resolution::Expired { sent } => HttpResponse::new(match (version, sent) {
            (Version::V2, _) => StatusCode::GATEWAY_TIMEOUT,
            (Version::V1, true) => StatusCode::REQUEST_TIMEOUT,
            (Version::V1, false) => StatusCode::CONFLICT,
        }),
        Resolution::Refused => actix_web::ResponseError::error_response(&ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: ErrorCode::TooManyRequests,
            message: "The device has as many RPC requests pending as it may".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_answered_as_thingsboard_does() {
        let status = |r: Resolution, v| answer(r, v).status().as_u16();
        for v in [Version::V1, Version::V2] {
            assert_eq!(status(Resolution::Sent, v), 200);
            assert_eq!(status(Resolution::Reply(b"{\"a\":1}".to_vec()), v), 200);
            assert_eq!(status(Resolution::Reply(Vec::new()), v), 200);
            assert_eq!(status(Resolution::Reply(b"ok".to_vec()), v), 406);
            assert_eq!(status(Resolution::Refused, v), 429);
        }
        assert_eq!(status(Resolution::Expired { sent: true }, Version::V1), 408);
        assert_eq!(
            status(Resolution::Expired { sent: false }, Version::V1),
            409
        );
        assert_eq!(status(Resolution::Expired { sent: true }, Version::V2), 504);
        assert_eq!(
            status(Resolution::Expired { sent: false }, Version::V2),
            504
        );
    }
}
