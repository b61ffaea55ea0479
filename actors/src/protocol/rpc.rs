//! RPC bodies in ThingsBoard's shapes: what an app posts to the REST API, what a device gets,
//! what a device asks the server, and the server's own answer to `getSessionLimits`.

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::downlink::rpc::{Direction, RpcRequest};

/// `server.rest.server_side_rpc.default_timeout`: a request without `timeout` expires after
/// this many milliseconds.
pub const DEFAULT_TIMEOUT_MS: i64 = 10_000;
/// `server.rest.server_side_rpc.min_timeout`: a shorter `timeout` is raised to this.
pub const MIN_TIMEOUT_MS: i64 = 5_000;
/// `actors.rpc.max_retries`: a persistent request's `retries` is capped here, and a request
/// that gives none has this many.
pub const MAX_RETRIES: u32 = 5;

/// The retries a request has: those it asked for (negative: none), at most [`MAX_RETRIES`];
/// [`MAX_RETRIES`] when it asked for none (ThingsBoard's rule).
pub fn effective_retries(asked: Option<i64>) -> u32 {
    asked.map_or(MAX_RETRIES, |n| {
        u32::try_from(n.max(0))
            .unwrap_or(MAX_RETRIES)
            .min(MAX_RETRIES)
    })
}

/// An app's request, as `POST /api/rpc/{oneway,twoway}/{deviceId}` (and `/api/plugins/rpc/..`)
/// take it.
#[derive(Debug, PartialEq)]
pub struct RestRpc {
    pub request: RpcRequest,
    pub persistent: bool,
    /// `retries` as the caller gave it (stored so in the record); the request holds the
    /// number it has.
    pub retries: Option<i64>,
    /// JSON text stored with a persistent request (`null` when absent).
    pub additional_info: String,
    /// The id the caller chose (`requestUUID`), if any.
    pub request_uuid: Option<uuid::Uuid>,
}

/// Why an app's request body was refused (400 on the REST API).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestRpcError {
    #[error("Invalid request body")]
    InvalidBody,
    #[error("Request is missing the \"method\" string")]
    NoMethod,
    #[error("\"requestUUID\" is not a UUID")]
    BadUuid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    #[serde(borrow)]
    method: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
    timeout: Option<i64>,
    expiration_time: Option<i64>,
    persistent: Option<bool>,
    retries: Option<i64>,
    #[serde(borrow)]
    additional_info: Option<&'a RawValue>,
    #[serde(rename = "requestUUID")]
    request_uuid: Option<String>,
}

impl RestRpc {
    /// Reads an app's request at `now` (ms): expiry is `expirationTime` when given, else now
    /// plus `timeout` raised to at least [`MIN_TIMEOUT_MS`] (default [`DEFAULT_TIMEOUT_MS`]).
    pub fn parse(body: &[u8], direction: Direction, now: i64) -> Result<RestRpc, RestRpcError> {
        let body: Body<'_> = serde_json::from_slice(body).map_err(|_| RestRpcError::InvalidBody)?;
        let method = body
            .method
            .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
            .ok_or(RestRpcError::NoMethod)?;
        let expires_at = match body.expiration_time {
            Some(at) => at,
            None => now.saturating_add(
                body.timeout
                    .unwrap_or(DEFAULT_TIMEOUT_MS)
                    .max(MIN_TIMEOUT_MS),
            ),
        };
        let request_uuid = body
            .request_uuid
            .map(|u| uuid::Uuid::parse_str(&u).map_err(|_| RestRpcError::BadUuid))
            .transpose()?;
        Ok(RestRpc {
            request: RpcRequest {
                method,
                params: body
                    .params
                    .map_or_else(|| "null".to_owned(), |p| p.get().to_owned()),
                direction,
                expires_at,
                retries: effective_retries(body.retries),
            },
            persistent: body.persistent.unwrap_or(false),
            retries: body.retries,
            additional_info: body
                .additional_info
                .map_or_else(|| "null".to_owned(), |i| i.get().to_owned()),
            request_uuid,
        })
    }
}

fn push_method_and_params(out: &mut String, request: &RpcRequest) {
    out.push_str("\"method\":");
    out.push_str(&serde_json::to_string(&request.method).unwrap_or_else(|_| "\"\"".to_owned()));
    out.push_str(",\"params\":");
    out.push_str(&request.params);
}

/// What an MQTT device gets on `v1/devices/me/rpc/request/{id}`: no `id` in the body.
pub fn mqtt_request(request: &RpcRequest) -> String {
    let mut out = String::from("{");
    push_method_and_params(&mut out, request);
    out.push('}');
    out
}

/// What an HTTP device's long poll returns: the id in the body.
pub fn http_request(id: i32, request: &RpcRequest) -> String {
    let mut out = String::from("{\"id\":");
    out.push_str(itoa::Buffer::new().format(id));
    out.push(',');
    push_method_and_params(&mut out, request);
    out.push('}');
    out
}

/// The `request` of a persistent RPC's record, as ThingsBoard stores its `ToDeviceRpcRequest`:
/// `{"id":..,"tenantId":{..},"deviceId":{..},"oneway":..,"expirationTime":..,
/// "body":{"method":..,"params":"<JSON text>"},"persisted":true,"retries":..}`.
pub fn stored_request(
    id: uuid::Uuid,
    tenant: crate::model::TenantId,
    device: crate::model::DeviceId,
    request: &RpcRequest,
    retries: Option<i64>,
) -> String {
    serde_json::json!({
        "id": id,
        "tenantId": {"entityType": "TENANT", "id": tenant.0},
        "deviceId": {"entityType": "DEVICE", "id": device.0},
        "oneway": request.direction == Direction::OneWay,
        "expirationTime": request.expires_at,
        "body": {"method": request.method, "params": request.params},
        "persisted": true,
        "retries": retries,
    })
    .to_string()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    oneway: bool,
    expiration_time: i64,
    body: StoredBody,
    #[serde(default)]
    retries: Option<i64>,
}

#[derive(Deserialize)]
struct StoredBody {
    method: String,
    params: String,
}

/// The request a record's `request` holds (see [`stored_request`]); `None` for text that is not
/// one.
pub fn parse_stored_request(text: &str) -> Option<RpcRequest> {
    let stored: Stored = serde_json::from_str(text).ok()?;
    Some(RpcRequest {
        method: stored.body.method,
        params: stored.body.params,
        direction: if stored.oneway {
            Direction::OneWay
        } else {
            Direction::TwoWay
        },
        expires_at: stored.expiration_time,
        retries: effective_retries(stored.retries),
    })
}

/// A device's own request (`v1/devices/me/rpc/request/{id}`, `POST /api/v1/{token}/rpc`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceRpc {
    pub method: String,
    /// The JSON text of `params`; `null` when absent.
    pub params: String,
}

impl DeviceRpc {
    /// `method` must be a string; `params` may be any JSON. `params_required`: the HTTP API
    /// refuses a request without `params` (ThingsBoard answers 500), MQTT does not.
    pub fn parse(payload: &[u8], params_required: bool) -> Result<DeviceRpc, RestRpcError> {
        /// Present, even as `null` (which `Option` alone would read as absent).
        fn present<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<&'de RawValue>, D::Error> {
            <&RawValue>::deserialize(d).map(Some)
        }
        #[derive(Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            method: Option<&'a RawValue>,
            #[serde(borrow, default, deserialize_with = "present")]
            params: Option<&'a RawValue>,
        }
        let raw: Raw<'_> =
            serde_json::from_slice(payload).map_err(|_| RestRpcError::InvalidBody)?;
        let method = raw
            .method
            .and_then(|m| serde_json::from_str::<String>(m.get()).ok())
            .ok_or(RestRpcError::NoMethod)?;
        if params_required && raw.params.is_none() {
            return Err(RestRpcError::InvalidBody);
        }
        Ok(DeviceRpc {
            method,
            params: raw
                .params
                .map_or_else(|| "null".to_owned(), |p| p.get().to_owned()),
        })
    }
}

/// The method ThingsBoard's MQTT transport answers itself (on the v1 topic only).
pub const SESSION_LIMITS: &str = "getSessionLimits";

/// The engine's limits as `getSessionLimits` reports them. Rate limits are ThingsBoard's
/// `capacity:seconds[,..]` strings; `None` is JSON `null` (no limit).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionLimits {
    pub max_payload_size: u64,
    pub max_inflight_messages: u64,
    pub messages: Option<String>,
    pub telemetry_messages: Option<String>,
    pub telemetry_data_points: Option<String>,
}

impl SessionLimits {
    /// `{"maxPayloadSize":..,"maxInflightMessages":..,"rateLimits":{..}}`; a gateway's answer
    /// also carries `gatewayRateLimits` (ThingsBoard's mapping: the gateway's own limits there,
    /// its devices' in `rateLimits`).
    pub fn render(&self, gateway: Option<&SessionLimits>) -> String {
        fn rates(l: &SessionLimits) -> serde_json::Value {
            serde_json::json!({
                "messages": l.messages,
                "telemetryMessages": l.telemetry_messages,
                "telemetryDataPoints": l.telemetry_data_points,
            })
        }
        let mut body = serde_json::json!({
            "maxPayloadSize": self.max_payload_size,
            "maxInflightMessages": self.max_inflight_messages,
            "rateLimits": rates(self),
        });
        if let (Some(gateway), Some(map)) = (gateway, body.as_object_mut()) {
            map.insert("gatewayRateLimits".into(), rates(gateway));
        }
        body.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_timeouts_follow_thingsboard() {
        // (body, expires_at for now = 1_000_000)
        let cases = [
            (r#"{"method":"m","params":{}}"#, 1_010_000),
            (r#"{"method":"m","params":{},"timeout":1000}"#, 1_005_000),
            (r#"{"method":"m","params":{},"timeout":60000}"#, 1_060_000),
            (r#"{"method":"m","params":{},"timeout":-5}"#, 1_005_000),
            // expirationTime wins, unclamped, even when already past.
            (
                r#"{"method":"m","params":{},"timeout":60000,"expirationTime":999}"#,
                999,
            ),
        ];
        for (body, expires) in cases {
            let rpc = RestRpc::parse(body.as_bytes(), Direction::TwoWay, 1_000_000);
            assert_eq!(rpc.map(|r| r.request.expires_at), Ok(expires), "{body}");
        }
    }

    #[test]
    fn rest_bodies_keep_params_and_options() {
        let rpc = RestRpc::parse(
            br#"{"method":"setGpio","params":{"pin":7,"on":true},"persistent":true,"retries":9,"additionalInfo":{"a":1},"requestUUID":"6f1e5b8a-37a4-4c7e-9a53-2a2c1d1f0b1c"}"#,
            Direction::OneWay,
            0,
        );
        let Ok(rpc) = rpc else {
            panic!("refused: {rpc:?}");
        };
        assert_eq!(rpc.request.method, "setGpio");
        assert_eq!(rpc.request.params, r#"{"pin":7,"on":true}"#);
        assert!(rpc.persistent);
        assert_eq!(rpc.retries, Some(9), "stored as given");
        assert_eq!(rpc.request.retries, MAX_RETRIES, "capped");
        for (body, retries) in [
            (r#"{"method":"m"}"#, MAX_RETRIES),
            (r#"{"method":"m","retries":null}"#, MAX_RETRIES),
            (r#"{"method":"m","retries":0}"#, 0),
            (r#"{"method":"m","retries":2}"#, 2),
            (r#"{"method":"m","retries":-3}"#, 0),
        ] {
            let rpc = RestRpc::parse(body.as_bytes(), Direction::TwoWay, 0);
            assert_eq!(rpc.map(|r| r.request.retries), Ok(retries), "{body}");
        }
        assert_eq!(rpc.additional_info, r#"{"a":1}"#);
        assert!(rpc.request_uuid.is_some());
        let bare = RestRpc::parse(br#"{"method":"reboot"}"#, Direction::OneWay, 0);
        assert_eq!(bare.map(|r| r.request.params), Ok("null".to_owned()));
    }

    #[test]
    fn bad_rest_bodies_are_refused() {
        let cases = [
            ("not json", RestRpcError::InvalidBody),
            ("[1]", RestRpcError::InvalidBody),
            (r#"{"params":{}}"#, RestRpcError::NoMethod),
            (r#"{"method":7}"#, RestRpcError::NoMethod),
            (
                r#"{"method":"m","timeout":"soon"}"#,
                RestRpcError::InvalidBody,
            ),
            (r#"{"method":"m","requestUUID":"x"}"#, RestRpcError::BadUuid),
        ];
        for (body, error) in cases {
            assert_eq!(
                RestRpc::parse(body.as_bytes(), Direction::TwoWay, 0).map(|_| ()),
                Err(error),
                "{body}"
            );
        }
    }

    #[test]
    fn device_bodies() {
        let request = RpcRequest {
            method: "setGpio".into(),
            params: r#"{"pin":7}"#.into(),
            direction: Direction::TwoWay,
            expires_at: 0,
            retries: 0,
        };
        assert_eq!(
            mqtt_request(&request),
            r#"{"method":"setGpio","params":{"pin":7}}"#
        );
        assert_eq!(
            http_request(0, &request),
            r#"{"id":0,"method":"setGpio","params":{"pin":7}}"#
        );
        assert_eq!(
            DeviceRpc::parse(br#"{"method":"getTime"}"#, false),
            Ok(DeviceRpc {
                method: "getTime".into(),
                params: "null".into()
            })
        );
        assert_eq!(
            DeviceRpc::parse(br#"{"method":"getTime"}"#, true),
            Err(RestRpcError::InvalidBody)
        );
        assert_eq!(DeviceRpc::parse(b"{}", false), Err(RestRpcError::NoMethod));
    }

    #[test]
    fn session_limits_render_as_thingsboard() {
        let device = SessionLimits {
            max_payload_size: 65536,
            max_inflight_messages: 100,
            messages: Some("20:600".into()),
            telemetry_messages: None,
            telemetry_data_points: None,
        };
        let parsed: serde_json::Value =
            serde_json::from_str(&device.render(None)).unwrap_or_default();
        assert_eq!(
            parsed,
            serde_json::json!({"maxPayloadSize":65536,"maxInflightMessages":100,
                "rateLimits":{"messages":"20:600","telemetryMessages":null,"telemetryDataPoints":null}})
        );
        let parsed: serde_json::Value =
            serde_json::from_str(&device.render(Some(&SessionLimits::default())))
                .unwrap_or_default();
        assert_eq!(
            parsed["gatewayRateLimits"],
            serde_json::json!({"messages":null,"telemetryMessages":null,"telemetryDataPoints":null})
        );
    }

    #[test]
    fn a_stored_request_reads_back_as_it_was() {
        let tenant = crate::model::TenantId::from_name("t");
        let device = crate::model::DeviceId::derive(tenant, "d");
        for direction in [Direction::OneWay, Direction::TwoWay] {
            let request = RpcRequest {
                method: "set\"x".into(),
                params: r#"{"a":[1,"b"]}"#.into(),
                direction,
                expires_at: 1_234,
                retries: 2,
            };
            let text = stored_request(uuid::Uuid::from_u128(7), tenant, device, &request, Some(2));
            let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(json["body"]["params"], r#"{"a":[1,"b"]}"#);
            assert_eq!(json["persisted"], true);
            assert_eq!(json["retries"], 2);
            assert_eq!(parse_stored_request(&text), Some(request));
        }
        let request = RpcRequest {
            method: "m".into(),
            params: "null".into(),
            direction: Direction::TwoWay,
            expires_at: 1,
            retries: MAX_RETRIES,
        };
        let text = stored_request(uuid::Uuid::from_u128(8), tenant, device, &request, None);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .map(|j| j["retries"].is_null()),
            Some(true)
        );
        assert_eq!(parse_stored_request(&text), Some(request));
        assert_eq!(parse_stored_request("{}"), None);
        assert_eq!(parse_stored_request("not json"), None);
    }

    #[test]
    fn a_device_request_with_null_params_has_them() {
        let rpc = DeviceRpc::parse(br#"{"method":"m","params":null}"#, true).expect("taken");
        assert_eq!(rpc.params, "null");
        assert!(DeviceRpc::parse(br#"{"method":"m"}"#, true).is_err());
        assert_eq!(
            DeviceRpc::parse(br#"{"method":"m"}"#, false)
                .expect("taken")
                .params,
            "null"
        );
    }
}
