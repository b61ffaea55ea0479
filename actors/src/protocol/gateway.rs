//! The gateway API's messages (`v1/gateway/*`), in ThingsBoard's shapes: one MQTT connection
//! of a gateway device speaks for many devices, each named in the message.
//!
//! Uplinks name devices as the keys of one object (`{"A":[..],"B":[..]}` for telemetry,
//! `{"A":{..}}` for attributes and claims); each device's part is handed on as its own JSON
//! text, so a bad part refuses that device's data only. `connect`, `disconnect`, attribute
//! requests and RPC replies name one device in a `device` field. What goes back to the gateway
//! carries the device's name: `{"device":"A","data":{..}}` for shared attribute changes and RPC
//! requests (the request's `id` inside `data`), `{"id":..,"device":"A","value"|"values":..}`
//! for attribute requests.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::downlink::rpc::RpcRequest;
use crate::model::KvEntry;
use crate::payload::PayloadError;
use crate::protocol::attributes::{AttributeRequest, Keys, push_typed};

/// One device's part of a multi-device message: its name and its JSON, as sent.
pub type Part<'a> = (String, &'a RawValue);

fn shape(found: &'static str, expected: &'static str) -> PayloadError {
    PayloadError::WrongShape { found, expected }
}

fn first_byte(payload: &[u8]) -> Result<u8, PayloadError> {
    payload
        .iter()
        .copied()
        .find(|b| !b.is_ascii_whitespace())
        .ok_or(PayloadError::Empty)
}

/// The parts of `v1/gateway/telemetry`, `v1/gateway/attributes` (uplink) or `v1/gateway/claim`:
/// a JSON object keyed by device name, in the order sent (a name given twice gives two parts).
pub fn parts(payload: &[u8]) -> Result<Vec<Part<'_>>, PayloadError> {
    struct Parts;
    impl<'de> Visitor<'de> for Parts {
        type Value = Vec<Part<'de>>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object keyed by device name")
        }

        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut parts = Vec::new();
            while let Some((name, part)) = map.next_entry::<String, &'de RawValue>()? {
                parts.push((name, part));
            }
            Ok(parts)
        }
    }
    if first_byte(payload)? != b'{' {
        return Err(shape(
            "value other than an object",
            "an object keyed by device name",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let parts = (&mut de)
        .deserialize_map(Parts)
        .map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
    de.end()
        .map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
    Ok(parts)
}

/// Whether a telemetry part is an array (ThingsBoard skips a device whose part is not).
pub fn is_array(part: &RawValue) -> bool {
    part.get().trim_start().starts_with('[')
}

/// Whether an attributes or claim part is an object.
pub fn is_object(part: &RawValue) -> bool {
    part.get().trim_start().starts_with('{')
}

/// `v1/gateway/connect`: `{"device":"A","type":"T"}` (`type` optional; `null` is absent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connect {
    pub device: String,
    pub device_type: Option<String>,
}

fn device_name(device: Option<serde_json::Value>) -> Result<String, PayloadError> {
    match device {
        Some(serde_json::Value::String(name)) if !name.is_empty() => Ok(name),
        _ => Err(shape(
            "message without a device name",
            "\"device\" as a non-empty string",
        )),
    }
}

fn object<'a, T: Deserialize<'a>>(
    payload: &'a [u8],
    expected: &'static str,
) -> Result<T, PayloadError> {
    if first_byte(payload)? != b'{' {
        return Err(shape("value other than an object", expected));
    }
    serde_json::from_slice(payload).map_err(|e| PayloadError::InvalidJson(e.to_string()))
}

impl Connect {
    pub fn parse(payload: &[u8]) -> Result<Connect, PayloadError> {
        #[derive(Deserialize)]
        struct Raw {
            device: Option<serde_json::Value>,
            #[serde(rename = "type")]
            device_type: Option<serde_json::Value>,
        }
        let raw: Raw = object(payload, "{\"device\":..,\"type\":..}")?;
        let device_type = match raw.device_type {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(t)) if t.is_empty() => None,
            Some(serde_json::Value::String(t)) => Some(t),
            Some(_) => return Err(shape("type that is not a string", "\"type\" as a string")),
        };
        Ok(Connect {
            device: device_name(raw.device)?,
            device_type,
        })
    }
}

/// `v1/gateway/disconnect`: `{"device":"A"}`.
pub fn parse_disconnect(payload: &[u8]) -> Result<String, PayloadError> {
    #[derive(Deserialize)]
    struct Raw {
        device: Option<serde_json::Value>,
    }
    let raw: Raw = object(payload, "{\"device\":..}")?;
    device_name(raw.device)
}

/// `v1/gateway/attributes/request`: ThingsBoard's form `{"id":1,"device":"A","client":false,
/// "key":"k"}` (or `"keys":["k1","k2"]`; `key` wins), one scope per request; also the form the
/// reference text documents, `{"id":1,"device":"A","client":["k1"],"shared":["k2"]}`, which
/// ThingsBoard itself refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAttributeRequest {
    pub id: i64,
    pub device: String,
    pub request: AttributeRequest,
    /// How many names were asked for: more than one makes the answer `values`, even with one
    /// found (ThingsBoard's `isMultipleAttributesRequest`).
    pub requested: usize,
}

impl GatewayAttributeRequest {
    pub fn parse(payload: &[u8]) -> Result<GatewayAttributeRequest, PayloadError> {
        #[derive(Deserialize)]
        struct Raw {
            id: Option<serde_json::Value>,
            device: Option<serde_json::Value>,
            client: Option<serde_json::Value>,
            shared: Option<serde_json::Value>,
            key: Option<serde_json::Value>,
            keys: Option<serde_json::Value>,
        }
        let raw: Raw = object(
            payload,
            "{\"id\":..,\"device\":..,\"client\":..,\"keys\":..}",
        )?;
        let id = raw
            .id
            .as_ref()
            .and_then(serde_json::Value::as_i64)
            .ok_or_else(|| shape("request without an integer id", "\"id\" as an integer"))?;
        let device = device_name(raw.device)?;
        let names = |value: serde_json::Value| -> Result<Vec<String>, PayloadError> {
            let not_names = || {
                shape(
                    "key list that is not strings",
                    "keys as an array of strings",
                )
            };
            let mut names: Vec<String> = Vec::new();
            for item in value.as_array().ok_or_else(not_names)? {
                let name = item.as_str().ok_or_else(not_names)?;
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_owned());
                }
            }
            Ok(names)
        };
        let (request, requested) = match (raw.client, raw.shared) {
            // The documented form: lists per scope.
            (client @ Some(serde_json::Value::Array(_)), shared)
            | (client @ None, shared @ Some(serde_json::Value::Array(_))) => {
                let client = client.map(names).transpose()?.unwrap_or_default();
                let shared = shared.map(names).transpose()?.unwrap_or_default();
                let requested = client.len() + shared.len();
                (
                    AttributeRequest {
                        client: Keys::Only(client),
                        shared: Keys::Only(shared),
                    },
                    requested,
                )
            }
            (Some(serde_json::Value::Bool(client)), _) => {
                let keys = match (raw.key, raw.keys) {
                    (Some(serde_json::Value::String(key)), _) => vec![key],
                    (_, Some(keys)) => names(keys)?,
                    _ => {
                        return Err(shape(
                            "request without keys",
                            "\"key\" as a string or \"keys\" as an array",
                        ));
                    }
                };
                let requested = keys.len();
                // No names: every attribute of both scopes (ThingsBoard's device actor rule).
                let scope = if keys.is_empty() {
                    Keys::All
                } else {
                    Keys::Only(keys)
                };
                let request = match (client, &scope) {
                    (_, Keys::All) => AttributeRequest {
                        client: Keys::All,
                        shared: Keys::All,
                    },
                    (true, _) => AttributeRequest {
                        client: scope,
                        shared: Keys::none(),
                    },
                    (false, _) => AttributeRequest {
                        client: Keys::none(),
                        shared: scope,
                    },
                };
                (request, requested)
            }
            _ => {
                return Err(shape(
                    "request without its scope",
                    "\"client\" as true or false",
                ));
            }
        };
        Ok(GatewayAttributeRequest {
            id,
            device,
            request,
            requested,
        })
    }
}

fn push_string(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

fn push_values(out: &mut String, entries: &[&KvEntry]) {
    out.push('{');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(out, &e.key);
        out.push(':');
        push_typed(out, &e.value);
    }
    out.push('}');
}

/// The answer on `v1/gateway/attributes/response`: `"value"` when one name was asked for
/// and found, `"values"` with whatever was found otherwise, neither when nothing was.
pub fn attribute_response(
    request: &GatewayAttributeRequest,
    client: &[KvEntry],
    shared: &[KvEntry],
) -> String {
    let mut out = String::from("{\"id\":");
    out.push_str(itoa::Buffer::new().format(request.id));
    out.push_str(",\"device\":");
    push_string(&mut out, &request.device);
    let found: Vec<&KvEntry> = client.iter().chain(shared).collect();
    match found.as_slice() {
        [] => {}
        [one] if request.requested <= 1 => {
            out.push_str(",\"value\":");
            push_typed(&mut out, &one.value);
        }
        _ => {
            out.push_str(",\"values\":");
            push_values(&mut out, &found);
        }
    }
    out.push('}');
    out
}

/// A shared attribute change of a device behind the gateway, on `v1/gateway/attributes`.
pub fn attributes_update(device: &str, entries: &[KvEntry]) -> String {
    let mut out = String::from("{\"device\":");
    push_string(&mut out, device);
    out.push_str(",\"data\":");
    push_values(&mut out, &entries.iter().collect::<Vec<_>>());
    out.push('}');
    out
}

/// Shared attributes of a device behind the gateway deleted, on `v1/gateway/attributes`.
pub fn attributes_deleted(device: &str, keys: &[String]) -> String {
    let mut out = String::from("{\"device\":");
    push_string(&mut out, device);
    out.push_str(",\"data\":{\"deleted\":[");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(&mut out, key);
    }
    out.push_str("]}}");
    out
}

/// A server-side RPC request to a device behind the gateway, on `v1/gateway/rpc`: the id
/// inside `data`.
pub fn rpc_request(device: &str, id: i32, request: &RpcRequest) -> String {
    let mut out = String::from("{\"device\":");
    push_string(&mut out, device);
    out.push_str(",\"data\":");
    out.push_str(&crate::protocol::rpc::http_request(id, request));
    out.push('}');
    out
}

/// The gateway's reply to a device's RPC, on `v1/gateway/rpc`:
/// `{"device":"A","id":0,"data":<any JSON>}`, all three required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcReply {
    pub device: String,
    pub id: i32,
    /// The JSON text of `data`, as sent.
    pub data: String,
}

impl RpcReply {
    pub fn parse(payload: &[u8]) -> Result<RpcReply, PayloadError> {
        #[derive(Deserialize)]
        struct Raw<'a> {
            device: Option<serde_json::Value>,
            id: Option<serde_json::Value>,
            #[serde(borrow)]
            data: Option<&'a RawValue>,
        }
        let raw: Raw<'_> = object(payload, "{\"device\":..,\"id\":..,\"data\":..}")?;
        let device = device_name(raw.device)?;
        let id = raw
            .id
            .as_ref()
            .and_then(serde_json::Value::as_i64)
            .and_then(|id| i32::try_from(id).ok())
            .ok_or_else(|| shape("reply without a 32-bit integer id", "\"id\" as an integer"))?;
        let data = raw
            .data
            .ok_or_else(|| shape("reply without data", "\"data\" with the reply"))?;
        Ok(RpcReply {
            device,
            id,
            data: data.get().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downlink::rpc::Direction;
    use crate::model::KvValue;

    fn names<'a>(parts: &[Part<'a>]) -> Vec<(String, String)> {
        parts
            .iter()
            .map(|(n, p)| (n.clone(), p.get().to_owned()))
            .collect()
    }

    #[test]
    fn a_multi_device_message_splits_into_parts_in_order() {
        let payload = br#"{"B":[{"ts":1,"values":{"t":1}}], "A":{"x":1}, "B":[{"t":2}]}"#;
        let split = parts(payload).expect("parts");
        assert_eq!(
            names(&split),
            [
                ("B".into(), r#"[{"ts":1,"values":{"t":1}}]"#.into()),
                ("A".into(), r#"{"x":1}"#.into()),
                ("B".into(), r#"[{"t":2}]"#.into()),
            ]
        );
        assert!(is_array(split[0].1) && !is_array(split[1].1));
        assert!(is_object(split[1].1) && !is_object(split[0].1));
        assert_eq!(parts(b"{}").map(|p| p.len()), Ok(0));
    }

    #[test]
    fn bad_multi_device_messages_are_refused() {
        for payload in [
            &b""[..],
            b"  ",
            b"[1]",
            b"\"A\"",
            b"{\"A\":",
            b"{\"A\":1} x",
            b"{1:2}",
        ] {
            assert!(
                parts(payload).is_err(),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn connect_and_disconnect_name_one_device() {
        let cases: [(&[u8], Option<Connect>); 7] = [
            (
                br#"{"device":"A","type":"Pump"}"#,
                Some(Connect {
                    device: "A".into(),
                    device_type: Some("Pump".into()),
                }),
            ),
            (
                br#"{"device":"A"}"#,
                Some(Connect {
                    device: "A".into(),
                    device_type: None,
                }),
            ),
            (
                br#"{"device":"A","type":null}"#,
                Some(Connect {
                    device: "A".into(),
                    device_type: None,
                }),
            ),
            (br#"{"device":""}"#, None),
            (br#"{"device":7}"#, None),
            (br#"{"type":"x"}"#, None),
            (br#"{"device":"A","type":3}"#, None),
        ];
        for (payload, want) in cases {
            assert_eq!(
                Connect::parse(payload).ok(),
                want,
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        assert_eq!(parse_disconnect(br#"{"device":"A"}"#), Ok("A".into()));
        assert!(parse_disconnect(b"[]").is_err());
        assert!(parse_disconnect(b"{}").is_err());
    }

    #[test]
    fn attribute_requests_in_thingsboards_form_and_the_documented_one() {
        let only = |v: &[&str]| Keys::Only(v.iter().map(|s| s.to_string()).collect());
        let cases: [(&[u8], AttributeRequest, usize); 6] = [
            (
                br#"{"id":1,"device":"A","client":false,"key":"interval"}"#,
                AttributeRequest {
                    client: Keys::none(),
                    shared: only(&["interval"]),
                },
                1,
            ),
            (
                br#"{"id":1,"device":"A","client":true,"keys":["a","b","a"]}"#,
                AttributeRequest {
                    client: only(&["a", "b"]),
                    shared: Keys::none(),
                },
                2,
            ),
            // `key` wins over `keys`.
            (
                br#"{"id":1,"device":"A","client":true,"key":"k","keys":["a","b"]}"#,
                AttributeRequest {
                    client: only(&["k"]),
                    shared: Keys::none(),
                },
                1,
            ),
            (
                br#"{"id":1,"device":"A","client":false,"keys":[]}"#,
                AttributeRequest {
                    client: Keys::All,
                    shared: Keys::All,
                },
                0,
            ),
            (
                br#"{"id":1,"device":"A","client":["c1"],"shared":["s1","s2"]}"#,
                AttributeRequest {
                    client: only(&["c1"]),
                    shared: only(&["s1", "s2"]),
                },
                3,
            ),
            (
                br#"{"id":1,"device":"A","shared":["s1"]}"#,
                AttributeRequest {
                    client: Keys::none(),
                    shared: only(&["s1"]),
                },
                1,
            ),
        ];
        for (payload, request, requested) in cases {
            let parsed = GatewayAttributeRequest::parse(payload).expect("parsed");
            assert_eq!(
                (parsed.request, parsed.requested),
                (request, requested),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        for bad in [
            &br#"{"device":"A","client":true,"key":"k"}"#[..],
            br#"{"id":"1","device":"A","client":true,"key":"k"}"#,
            br#"{"id":1,"client":true,"key":"k"}"#,
            br#"{"id":1,"device":"A","key":"k"}"#,
            br#"{"id":1,"device":"A","client":true}"#,
            br#"{"id":1,"device":"A","client":true,"keys":[1]}"#,
            br#"{"id":1,"device":"A","client":"yes","key":"k"}"#,
            b"[]",
        ] {
            assert!(
                GatewayAttributeRequest::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn attribute_responses_follow_thingsboards_value_and_values_rules() {
        let request = |requested| GatewayAttributeRequest {
            id: 1,
            device: "A".into(),
            request: AttributeRequest {
                client: Keys::All,
                shared: Keys::All,
            },
            requested,
        };
        let interval = KvEntry::new("interval", KvValue::Long(30));
        let mode = KvEntry::new("mode", KvValue::String("eco".into()));
        let cases = [
            (
                1,
                vec![interval.clone()],
                r#"{"id":1,"device":"A","value":30}"#,
            ),
            (
                2,
                vec![interval.clone()],
                r#"{"id":1,"device":"A","values":{"interval":30}}"#,
            ),
            (
                2,
                vec![interval.clone(), mode.clone()],
                r#"{"id":1,"device":"A","values":{"interval":30,"mode":"eco"}}"#,
            ),
            (1, vec![], r#"{"id":1,"device":"A"}"#),
            (
                0,
                vec![interval.clone(), mode],
                r#"{"id":1,"device":"A","values":{"interval":30,"mode":"eco"}}"#,
            ),
        ];
        for (requested, found, want) in cases {
            assert_eq!(attribute_response(&request(requested), &found, &[]), want);
        }
        assert_eq!(
            attribute_response(&request(1), &[], &[interval]),
            r#"{"id":1,"device":"A","value":30}"#
        );
    }

    #[test]
    fn downlinks_name_the_device() {
        let entries = [KvEntry::new("interval", KvValue::Long(60))];
        assert_eq!(
            attributes_update("A \"x\"", &entries),
            r#"{"device":"A \"x\"","data":{"interval":60}}"#
        );
        assert_eq!(
            attributes_deleted("A", &["interval".into()]),
            r#"{"device":"A","data":{"deleted":["interval"]}}"#
        );
        let request = RpcRequest {
            method: "setGpio".into(),
            params: r#"{"pin":1}"#.into(),
            direction: Direction::TwoWay,
            expires_at: 0,
            retries: 0,
        };
        assert_eq!(
            rpc_request("A", 0, &request),
            r#"{"device":"A","data":{"id":0,"method":"setGpio","params":{"pin":1}}}"#
        );
    }

    #[test]
    fn rpc_replies_need_device_id_and_data() {
        assert_eq!(
            RpcReply::parse(br#"{"device":"A","id":0,"data":{"ok":1}}"#),
            Ok(RpcReply {
                device: "A".into(),
                id: 0,
                data: r#"{"ok":1}"#.into()
            })
        );
        for bad in [
            &br#"{"id":0,"data":{}}"#[..],
            br#"{"device":"A","data":{}}"#,
            br#"{"device":"A","id":0}"#,
            br#"{"device":"A","id":4294967296,"data":1}"#,
            b"[]",
        ] {
            assert!(
                RpcReply::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
