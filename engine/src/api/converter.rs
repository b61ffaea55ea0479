//! Converters over REST: `testUpLink` and `testDownLink` run a script on a sample, in
//! ThingsBoard's shapes, without touching any data. The script runs on the converter pool (the
//! threads sized for scripts, behind the same bounded queue as integrations' conversions),
//! never on an HTTP worker; a saturated pool answers 503.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Value, json};

use actors::integration::pool::PoolError;

use super::State;
use super::access::TenantAdmin;
use super::error::ApiError;

fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::Full | PoolError::Stopped => {
            ApiError::unavailable("the converter pool is busy; retry later")
        }
        PoolError::Panicked => ApiError::internal("the converter host failed"),
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/converter/testUpLink", web::post().to(test_uplink))
        .route("/api/converter/testDownLink", web::post().to(test_downlink));
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestUplink {
    /// The sample payload, Base64-encoded (ThingsBoard's UI sends it so).
    payload: String,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    decoder: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TestDownlink {
    /// The rule engine message, as JSON text or a JSON value.
    msg: Value,
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    #[serde(default)]
    msg_type: String,
    #[serde(default)]
    integration_metadata: BTreeMap<String, Value>,
    encoder: String,
}

/// Metadata values as the scripts see them: strings.
fn strings(m: BTreeMap<String, Value>) -> BTreeMap<String, String> {
    m.into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            (k, s)
        })
        .collect()
}

/// ThingsBoard answers 200 either way: the output as JSON text, or the error.
fn answer(result: Result<Value, String>) -> HttpResponse {
    match result {
        Ok(output) => HttpResponse::Ok().json(json!({
            "output": serde_json::to_string_pretty(&output).unwrap_or_default(),
            "error": "",
        })),
        Err(error) => HttpResponse::Ok().json(json!({"output": "", "error": error})),
    }
}

async fn test_uplink(
    state: State,
    _caller: TenantAdmin,
    body: web::Json<TestUplink>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let payload = BASE64
        .decode(body.payload.trim())
        .map_err(|e| ApiError::invalid(format!("payload must be Base64: {e}")))?;
    let metadata = strings(body.metadata);
    let result = state
        .integrations
        .run_script(move |runtime| {
            runtime
                .uplink(&body.decoder, &payload, &metadata)
                .map(|records| match records.as_slice() {
                    [one] => one.to_json(),
                    many => Value::Array(many.iter().map(|r| r.to_json()).collect()),
                })
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(pool_error)?;
    Ok(answer(result))
}

async fn test_downlink(
    state: State,
    _caller: TenantAdmin,
    body: web::Json<TestDownlink>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let msg_text = match &body.msg {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let msg = actors::converter::helpers::json_to_dynamic(&msg_text, "msg")
        .map_err(|e| ApiError::invalid(format!("msg must be JSON: {e}")))?;
    let (metadata, integration) = (strings(body.metadata), strings(body.integration_metadata));
    let result = state
        .integrations
        .run_script(move |runtime| {
            runtime
                .downlink(&body.encoder, msg, &body.msg_type, &metadata, &integration)
                .map(|d| d.to_json())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(pool_error)?;
    Ok(answer(result))
}
