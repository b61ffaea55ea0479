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
//!
//! A call's expiry is cut to `http.max_request_timeout` from now, so a caller that went away
//! cannot hold one of the device's places for long.
//!
//! Persistent RPC (`"persistent":true`, one-way or two-way, either path): stored as `QUEUED`,
//! answered 200 `{"rpcId":".."}` at once; the owner of the device's state then keeps its record
//! up to date: `SENT` when a connection wrote it and waits for the PUBACK, `DELIVERED` when the
//! device acknowledged it (at QoS 0 and on HTTP long polls, when written; a one-way request
//! ends there), `TIMEOUT` when a send was not acknowledged within `mqtt.rpc_ack_timeout`
//! (each uses one of `retries`, default and at most 5; the request is sent again at the device's
//! next subscription), `SUCCESSFUL` with the reply in `response` (a reply that is not JSON as
//! `{"error":"<text>"}`, as ThingsBoard), `EXPIRED`, or `FAILED` (unacknowledged once more than
//! `retries` allow, the device has too many pending, or the reply is longer than 32 KiB). A
//! request not finished survives a restart: it is reloaded when the device next subscribes to
//! RPC. `GET /api/rpc/persistent/{rpcId}`, `GET
//! /api/rpc/persistent/device/{deviceId}?pageSize=&page=&rpcStatus=` (newest first; `DELETED`
//! is refused, 400) and `DELETE /api/rpc/persistent/{rpcId}` (the request is not sent any
//! more) read and remove them.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use actors::downlink::router::CallError;
use actors::downlink::rpc::{Direction, Resolution};
use actors::model::{Device, now_ms};
use actors::ports::{MAX_RPC_PAGE_SIZE, RecordError, RpcPageRequest, RpcRecord, RpcStatus};
use actors::protocol::rpc::{RestRpc, RestRpcError, stored_request};
use metrics::counter;
use serde::Deserialize;
use serde_json::{Value, json};

use super::access::Op;
use super::device::owned_device;
use super::error::{ApiError, ErrorCode};
use super::{Caller, State};
use actors::metrics::API_REQUESTS_REFUSED;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/rpc/persistent/device/{deviceId}",
        web::get().to(device_records),
    )
    .route("/api/rpc/persistent/{rpcId}", web::get().to(record))
    .route(
        "/api/rpc/persistent/{rpcId}",
        web::delete().to(delete_record),
    )
    .route(
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
    let device = owned_device(&state, &caller, &device_id, Op::Write).await?;
    let rpc = RestRpc::parse(&body, direction, now_ms()).map_err(|e| {
        counter!(API_REQUESTS_REFUSED, "reason" => "invalid_rpc").increment(1);
        match e {
            RestRpcError::InvalidBody => ApiError::bad_request("Invalid request body"),
            e => ApiError::invalid(e.to_string()),
        }
    })?;
    if rpc.persistent {
        return persist(&state, &device, rpc).await;
    }
    // A call waits at most `http.max_request_timeout`: a caller that went away cannot keep one
    // of the device's places for longer (ThingsBoard has no such bound).
    let mut rpc = rpc;
    let longest =
        i64::try_from(state.device_api.max_request_timeout.as_millis()).unwrap_or(i64::MAX);
    rpc.request.expires_at = rpc.request.expires_at.min(now_ms().saturating_add(longest));
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

/// Ids of persistent requests being stored on this node: a second request with the same
/// `requestUUID` at the same moment is refused like one that comes after.
static CREATING: std::sync::LazyLock<parking_lot::Mutex<std::collections::HashSet<uuid::Uuid>>> =
    std::sync::LazyLock::new(Default::default);

/// Forgets an id of [`CREATING`] however the request ends.
struct Creating(uuid::Uuid);

impl Drop for Creating {
    fn drop(&mut self) {
        CREATING.lock().remove(&self.0);
    }
}

/// Stores a persistent request as QUEUED and hands it to the device's owner.
async fn persist(state: &State, device: &Device, rpc: RestRpc) -> Result<HttpResponse, ApiError> {
    let id = rpc.request_uuid.unwrap_or_else(uuid::Uuid::new_v4);
    let duplicate = || {
        counter!(API_REQUESTS_REFUSED, "reason" => "duplicate_rpc").increment(1);
        ApiError::invalid(format!("RPC with id {id} already exists"))
    };
    if !CREATING.lock().insert(id) {
        return Err(duplicate());
    }
    let _creating = Creating(id);
    if state.records.rpc(id).await?.is_some() {
        return Err(duplicate());
    }
    // ThingsBoard reads `additionalInfo` back as JSON: what could not be read back (nested
    // deeper than serde_json reads) is refused now rather than lost.
    if serde_json::from_str::<Value>(&rpc.additional_info).is_err() {
        counter!(API_REQUESTS_REFUSED, "reason" => "invalid_rpc").increment(1);
        return Err(ApiError::bad_request(
            "additionalInfo is nested too deeply to be stored",
        ));
    }
    let record = RpcRecord {
        id,
        tenant_id: device.tenant_id,
        device_id: device.id,
        created_time: now_ms(),
        expiration_time: rpc.request.expires_at,
        request: stored_request(id, device.tenant_id, device.id, &rpc.request, rpc.retries),
        response: None,
        status: RpcStatus::Queued,
        additional_info: (rpc.additional_info != "null").then_some(rpc.additional_info),
    };
    state.records.save_rpc(&record).await.map_err(|e| match e {
        RecordError::Store(e) => ApiError::from(e),
        e => {
            counter!(API_REQUESTS_REFUSED, "reason" => "invalid_rpc").increment(1);
            ApiError::invalid(e.to_string())
        }
    })?;
    if let Err(e) = state.downlinks.persistent(device, id, rpc.request).await {
        // Not handed to the owner: it must not be sent later either.
        let failed = RpcRecord {
            status: RpcStatus::Failed,
            response: Some(json!({ "error": e.to_string() }).to_string()),
            ..record
        };
        let _ = state.records.update_rpc(&failed).await;
        return Err(ApiError::unavailable(e.to_string()));
    }
    Ok(HttpResponse::Ok().json(json!({ "rpcId": id })))
}

/// A stored RPC in ThingsBoard's shape.
fn record_json(r: &RpcRecord) -> Value {
    let json = |text: &Option<String>| {
        text.as_deref()
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .unwrap_or(Value::Null)
    };
    json!({
        "id": {"entityType": "RPC", "id": r.id},
        "createdTime": r.created_time,
        "tenantId": {"entityType": "TENANT", "id": r.tenant_id.0},
        "deviceId": {"entityType": "DEVICE", "id": r.device_id.0},
        "expirationTime": r.expiration_time,
        "request": json(&Some(r.request.clone())),
        "response": json(&r.response),
        "status": r.status.as_str(),
        "additionalInfo": json(&r.additional_info),
    })
}

/// The RPC `id` of a device the caller may do `op` on, or 404 (403 for another customer's).
async fn owned_record(
    state: &State,
    caller: &Caller,
    id: &str,
    op: Op,
) -> Result<RpcRecord, ApiError> {
    let id = uuid::Uuid::parse_str(id)
        .map_err(|_| ApiError::bad_request(format!("Invalid RPC id: {id:?} is not a UUID")))?;
    match state.records.rpc(id).await? {
        Some(r) => {
            state.access().device(&caller.0, r.device_id, op).await?;
            Ok(r)
        }
        None => Err(ApiError::not_found()),
    }
}

/// `GET /api/rpc/persistent/{rpcId}`.
async fn record(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let record = owned_record(&state, &caller, &id, Op::Read).await?;
    Ok(HttpResponse::Ok().json(record_json(&record)))
}

/// `DELETE /api/rpc/persistent/{rpcId}`: removed from storage and from the device's pending
/// requests.
async fn delete_record(
    state: State,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    // ThingsBoard lets tenant administrators only delete a record.
    let record = owned_record(&state, &caller, &id, Op::Manage).await?;
    state.records.delete_rpc(record.id).await?;
    if let Some(device) = state.registry.get(record.device_id).await? {
        state
            .downlinks
            .persistent_deleted(&device, record.id)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
    }
    Ok(HttpResponse::Ok().finish())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordsQuery {
    page_size: Option<usize>,
    page: Option<usize>,
    rpc_status: Option<String>,
}

/// `GET /api/rpc/persistent/device/{deviceId}?pageSize=&page=&rpcStatus=`: newest first;
/// `textSearch`, `sortProperty` and `sortOrder` are ignored.
async fn device_records(
    state: State,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<RecordsQuery>,
) -> Result<HttpResponse, ApiError> {
    let device = owned_device(&state, &caller, &id, Op::Read).await?;
    let page_size = query
        .page_size
        .filter(|s| *s > 0)
        .ok_or_else(|| {
            ApiError::bad_request("Parameter 'pageSize' is required and must be positive")
        })?
        .min(MAX_RPC_PAGE_SIZE);
    let status = match query.rpc_status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some("DELETED") => {
            return Err(ApiError::bad_request("RpcStatus: DELETED is not allowed!"));
        }
        Some(s) => Some(
            RpcStatus::parse(s)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid rpcStatus: {s:?}")))?,
        ),
    };
    let page = RpcPageRequest {
        page_size,
        page: query.page.unwrap_or(0),
        status,
    };
    let found = state.records.device_rpcs(device.id, &page).await?;
    let request = actors::ports::PageRequest {
        page_size,
        page: page.page,
        text_search: None,
    };
    Ok(HttpResponse::Ok().json(super::page_json(
        &request,
        found.total_elements,
        found.data.iter().map(record_json).collect(),
    )))
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
        // Only persistent requests are tracked to their acknowledgement; were a call's, the
        // device got it and did not answer.
        Resolution::Undelivered { .. } => HttpResponse::new(match version {
            Version::V2 => StatusCode::GATEWAY_TIMEOUT,
            Version::V1 => StatusCode::REQUEST_TIMEOUT,
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
