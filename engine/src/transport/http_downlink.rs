//! The HTTP device API's way back, as ThingsBoard's `DeviceApiController` serves it:
//!
//! | request | answer |
//! | --- | --- |
//! | `GET /api/v1/{token}/rpc?timeout=ms` | 200 `{"id":N,"method":..,"params":..}`: the next RPC request (a pending one at once); 408 empty when none came in time |
//! | `GET /api/v1/{token}/attributes/updates?timeout=ms` | 200 `{"key":value,..}` or `{"deleted":[..]}`: the next shared attribute change (never the current state); 408 empty when none came |
//! | `POST /api/v1/{token}/rpc/{id}` | 200 empty: the body is the device's reply to request `id` (an unknown id is ignored, as ThingsBoard does); 400 for an id that is not a 32-bit integer |
//! | `POST /api/v1/{token}/rpc` | the device's own request `{"method":..,"params":..}` (`params` required): 200 `{"error":"timeout"}` after `http.request_timeout`, since no rule answers a device's request yet (ThingsBoard's answer when its rule chain does not) |
//!
//! A long poll is a session of its own that lives for one message: it subscribes like an MQTT
//! session (through the queue, to the device's owner), takes the first downlink, and ends.
//! `timeout` is in milliseconds; absent or 0 means `http.request_timeout`, and no wait is longer
//! than `http.max_request_timeout`. Requests waiting at once, all devices together, are bounded
//! by `http.max_waiting_requests`; past it a request is answered 503 at once. Every answer for
//! an unknown token is 401, before anything else is read.
//!
//! A long poll that subscribes while several requests are pending gets the first; the others
//! wait for the next poll (ThingsBoard's sync sessions). Difference from ThingsBoard,
//! deliberate: a malformed body is 400 with the reason (its controller answers 500).

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::downlink::event::Delivery;
use actors::downlink::router::{Downlinks, SessionSink};
use actors::ingress::Rejection;
use actors::metrics::API_REQUESTS_REFUSED;
use actors::model::Device;
use actors::payload::PayloadError as BadPayload;
use actors::protocol::{attributes, rpc};
use metrics::counter;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::http::{authenticate, authenticated_body, busy, read_body, rejected, text};
use crate::api::State;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/v1/{token}/rpc", web::get().to(rpc_poll))
        .route("/api/v1/{token}/rpc", web::post().to(device_rpc))
        .route("/api/v1/{token}/rpc/{id}", web::post().to(rpc_reply))
        .route(
            "/api/v1/{token}/attributes/updates",
            web::get().to(attribute_poll),
        );
}

#[derive(serde::Deserialize)]
struct Wait {
    timeout: Option<u64>,
}

/// What a long poll waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Poll {
    Rpc,
    Attributes,
}

/// A long poll's session: takes the first downlink, refuses the rest.
struct PollSink {
    slot: Mutex<Option<oneshot::Sender<Delivery>>>,
}

impl SessionSink for PollSink {
    fn deliver(&self, delivery: &Delivery) -> bool {
        match self.slot.lock().take() {
            Some(answer) => answer.send(delivery.clone()).is_ok(),
            None => false,
        }
    }
}

/// Ends a long poll's subscription however the request ends (the client may go away).
struct Unsubscribe {
    downlinks: Arc<Downlinks>,
    device: Arc<Device>,
    id: u64,
    sink: Arc<dyn SessionSink>,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.downlinks
            .poll_subscriptions(&self.device, self.id, false, false, &self.sink);
    }
}

/// A permit to wait, if one is free.
fn waiting_permit(state: &State) -> Option<OwnedSemaphorePermit> {
    state.device_api.waiting.clone().try_acquire_owned().ok()
}

/// The answer when no permit is free.
fn too_many_waiting() -> HttpResponse {
    counter!(API_REQUESTS_REFUSED, "reason" => "too_many_waiting").increment(1);
    busy("as many device requests are waiting as may")
}

/// The wait a device asked for, as ThingsBoard reads it.
fn wait_of(state: &State, asked: Option<u64>) -> Duration {
    let api = &state.device_api;
    match asked {
        None | Some(0) => api.request_timeout,
        Some(ms) => Duration::from_millis(ms),
    }
    .min(api.max_request_timeout)
}

async fn poll(state: State, token: &str, asked: Option<u64>, what: Poll) -> HttpResponse {
    let device = match authenticate(&state, token).await {
        Ok(device) => device,
        Err(answer) => return answer,
    };
    let Some(_permit) = waiting_permit(&state) else {
        return too_many_waiting();
    };
    let (answer, delivered) = oneshot::channel();
    let sink: Arc<dyn SessionSink> = Arc::new(PollSink {
        slot: Mutex::new(Some(answer)),
    });
    let downlinks = state.downlinks.clone();
    let (rpc, attributes) = (what == Poll::Rpc, what == Poll::Attributes);
    let id = downlinks.poll_subscriptions(&device, 0, rpc, attributes, &sink);
    let unsubscribe = Unsubscribe {
        downlinks,
        device,
        id,
        sink,
    };
    let json = |body: String| {
        HttpResponse::Ok()
            .content_type("application/json")
            .body(body)
    };
    match tokio::time::timeout(wait_of(&state, asked), delivered).await {
        Ok(Ok(Delivery::Rpc(outgoing))) => {
            // A persistent request is delivered once it is the poll's answer (ThingsBoard's
            // HTTP transport says DELIVERED there too).
            if let Some(record) = outgoing.record {
                state
                    .downlinks
                    .rpc_delivery(&unsubscribe.device, record, true);
            }
            json(rpc::http_request(outgoing.id, &outgoing.request))
        }
        Ok(Ok(Delivery::Attributes(entries))) => json(attributes::update(&entries)),
        Ok(Ok(Delivery::Deleted(keys))) => json(attributes::deleted(&keys)),
        _ => HttpResponse::new(StatusCode::REQUEST_TIMEOUT),
    }
}

/// `GET /api/v1/{token}/rpc?timeout=ms`.
async fn rpc_poll(state: State, token: web::Path<String>, wait: web::Query<Wait>) -> HttpResponse {
    poll(state, &token, wait.timeout, Poll::Rpc).await
}

/// `GET /api/v1/{token}/attributes/updates?timeout=ms`.
async fn attribute_poll(
    state: State,
    token: web::Path<String>,
    wait: web::Query<Wait>,
) -> HttpResponse {
    poll(state, &token, wait.timeout, Poll::Attributes).await
}

/// `POST /api/v1/{token}/rpc/{id}`: the device's reply, handed to the request's owner.
async fn rpc_reply(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Payload,
) -> HttpResponse {
    let (token, id) = path.into_inner();
    let device = match authenticate(&state, &token).await {
        Ok(device) => device,
        Err(answer) => return answer,
    };
    let Ok(id) = id.parse::<i32>() else {
        counter!(API_REQUESTS_REFUSED, "reason" => "invalid_rpc").increment(1);
        return text(
            StatusCode::BAD_REQUEST,
            format!("Invalid RPC request id: {id:?} is not a 32-bit integer"),
        );
    };
    let body = match read_body(&state, &req, body).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    match state.downlinks.reply(&device, id, body.to_vec()).await {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(e) => rejected(&Rejection::Queue(e)),
    }
}

/// `POST /api/v1/{token}/rpc`: the device's own request.
async fn device_rpc(
    state: State,
    req: HttpRequest,
    token: web::Path<String>,
    body: web::Payload,
) -> HttpResponse {
    let (_device, body) = match authenticated_body(&state, &req, &token, body).await {
        Ok(found) => found,
        Err(answer) => return answer,
    };
    if let Err(e) = rpc::DeviceRpc::parse(&body, true) {
        counter!(API_REQUESTS_REFUSED, "reason" => "invalid_rpc").increment(1);
        return rejected(&Rejection::Payload(match e {
            rpc::RestRpcError::InvalidBody
                if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() =>
            {
                BadPayload::InvalidJson("a device RPC request must be JSON".into())
            }
            _ => BadPayload::WrongShape {
                found: "object without a string \"method\" and a \"params\"",
                expected: "{\"method\":..,\"params\":..}",
            },
        }));
    }
    let Some(_permit) = waiting_permit(&state) else {
        return too_many_waiting();
    };
    // No rule chain answers a device's request yet: ThingsBoard's answer when none does.
    tokio::time::sleep(state.device_api.request_timeout).await;
    HttpResponse::Ok()
        .content_type("application/json")
        .body(r#"{"error":"timeout"}"#)
}
