//! The HTTP integration endpoint: `POST /api/v1/integrations/http/{routingKey}` with a JSON,
//! text or binary body. The request headers (lower-case names) and query parameters go into
//! the converter's metadata, as ThingsBoard passes them; debug events show credentials among
//! them (`authorization`, `cookie`, ...) redacted. Answers: 200 (with the device's pending downlink as the body, if
//! there is one), 404 unknown or disabled integration, 400 empty payload, converter error or
//! refused device (with the reason), 413 too large, 503 with `Retry-After` when overloaded.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use actors::converter::DownlinkContent;
use actors::integration::{IntegrationKind, UplinkError};

use crate::api::State;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/api/v1/integrations/http/{routingKey}",
        web::post().to(uplink),
    );
}

async fn uplink(
    state: State,
    request: HttpRequest,
    routing_key: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let mut metadata = BTreeMap::new();
    for (name, value) in request.headers() {
        if let Ok(value) = value.to_str() {
            metadata.insert(name.as_str().to_owned(), value.to_owned());
        }
    }
    if let Ok(query) = web::Query::<BTreeMap<String, String>>::from_query(request.query_string()) {
        metadata.extend(query.into_inner());
    }
    let outcome = state
        .integrations
        .uplink(IntegrationKind::Http, &routing_key, body.to_vec(), metadata)
        .await;
    match outcome {
        Ok(outcome) => match outcome.downlink {
            None => HttpResponse::Ok().finish(),
            Some(downlink) => {
                let mut response = HttpResponse::Ok();
                for (k, v) in &downlink.metadata {
                    if let (Ok(name), Ok(value)) = (
                        actix_web::http::header::HeaderName::try_from(k.as_str()),
                        actix_web::http::header::HeaderValue::try_from(v.as_str()),
                    ) {
                        response.insert_header((name, value));
                    }
                }
                match downlink.content {
                    DownlinkContent::Json(text) => {
                        response.content_type("application/json").body(text)
                    }
                    DownlinkContent::Text(text) => response.content_type("text/plain").body(text),
                    DownlinkContent::Binary(bytes) => response
                        .content_type("application/octet-stream")
                        .body(bytes),
                }
            }
        },
        Err(e) => {
            let status = match &e {
                UplinkError::NotFound | UplinkError::Disabled => StatusCode::NOT_FOUND,
                UplinkError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                UplinkError::EmptyPayload | UplinkError::Convert(_) | UplinkError::Refused(_) => {
                    StatusCode::BAD_REQUEST
                }
                UplinkError::Overloaded | UplinkError::Queue(_) | UplinkError::Registry(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            };
            let mut response = HttpResponse::build(status);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                response.insert_header(("Retry-After", "1"));
            }
            response.content_type("text/plain").body(e.to_string())
        }
    }
}
