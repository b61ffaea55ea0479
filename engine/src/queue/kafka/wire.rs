//! The record format of the `ingest` topic: `proto/ingest.proto`, version 1, as prost structs
//! written by hand (no protoc at build time). The test below pins every field number to that
//! file.

use actors::downlink::event::{Caller, DeviceEvent, NodeId};
use actors::downlink::rpc::{Direction, RpcRequest};
use actors::model::{
    AttributeScope, DeviceId, KvEntry, KvValue, Message, MessageBody, TenantId, TsRecord,
};
use prost::Message as _;
use uuid::Uuid;

/// The `format` header of every record.
pub const FORMAT: &str = "engine.ingest.v1";

#[derive(Clone, PartialEq, prost::Message)]
pub struct IngestMessage {
    #[prost(bytes = "vec", tag = "1")]
    pub tenant_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub device_id: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub received_ts: i64,
    #[prost(oneof = "Body", tags = "4, 5, 6")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "4")]
    Telemetry(Telemetry),
    #[prost(message, tag = "5")]
    Attributes(Attributes),
    #[prost(message, tag = "6")]
    Device(WireDeviceEvent),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireDeviceEvent {
    #[prost(oneof = "WireEvent", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub event: Option<WireEvent>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WireEvent {
    #[prost(message, tag = "1")]
    Session(SessionEvent),
    #[prost(message, tag = "2")]
    RpcRequest(RpcRequestEvent),
    #[prost(message, tag = "3")]
    RpcReply(RpcReplyEvent),
    #[prost(message, tag = "4")]
    SharedDeleted(SharedDeletedEvent),
    #[prost(message, tag = "5")]
    RpcDeleted(RpcDeletedEvent),
    #[prost(message, tag = "6")]
    NodeSessions(NodeSessionsEvent),
    #[prost(message, tag = "7")]
    CallAbandoned(CallAbandonedEvent),
    #[prost(message, tag = "8")]
    RpcDelivery(RpcDeliveryEvent),
    #[prost(message, tag = "9")]
    AttributesDeleted(AttributesDeletedEvent),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionEvent {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(uint64, tag = "2")]
    pub session: u64,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    #[prost(bool, tag = "4")]
    pub rpc: bool,
    #[prost(bool, tag = "5")]
    pub attributes: bool,
    #[prost(bool, tag = "6")]
    pub once: bool,
    #[prost(bool, tag = "7")]
    pub live: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcRequestEvent {
    #[prost(string, tag = "1")]
    pub caller_node: String,
    #[prost(uint64, tag = "2")]
    pub call: u64,
    #[prost(string, tag = "3")]
    pub method: String,
    #[prost(string, tag = "4")]
    pub params: String,
    #[prost(bool, tag = "5")]
    pub two_way: bool,
    #[prost(int64, tag = "6")]
    pub expires_at: i64,
    #[prost(bytes = "vec", tag = "7")]
    pub record_id: Vec<u8>,
    #[prost(uint32, tag = "8")]
    pub retries: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcReplyEvent {
    #[prost(int32, tag = "1")]
    pub id: i32,
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct SharedDeletedEvent {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
}

/// Attributes of one scope deleted (an ingest event, and a downlink bus delivery).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributesDeletedEvent {
    #[prost(int32, tag = "1")]
    pub scope: i32,
    #[prost(string, repeated, tag = "2")]
    pub keys: Vec<String>,
}

impl AttributesDeletedEvent {
    pub fn new(scope: AttributeScope, keys: &[String]) -> AttributesDeletedEvent {
        AttributesDeletedEvent {
            scope: i32::try_from(scope.code()).unwrap_or(0),
            keys: keys.to_vec(),
        }
    }

    pub fn scope(&self) -> Result<AttributeScope, WireError> {
        AttributeScope::from_code(i64::from(self.scope))
            .ok_or_else(|| WireError::Invalid(format!("unknown scope {}", self.scope)))
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CallAbandonedEvent {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(uint64, tag = "2")]
    pub call: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeSessionsEvent {
    #[prost(string, tag = "1")]
    pub node: String,
    #[prost(uint64, repeated, tag = "2")]
    pub sessions: Vec<u64>,
    #[prost(uint64, tag = "3")]
    pub below: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcDeletedEvent {
    #[prost(bytes = "vec", tag = "1")]
    pub record_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcDeliveryEvent {
    #[prost(bytes = "vec", tag = "1")]
    pub record_id: Vec<u8>,
    #[prost(bool, tag = "2")]
    pub acknowledged: bool,
}

fn event_to_wire(event: &DeviceEvent) -> WireDeviceEvent {
    let event = match event {
        DeviceEvent::Session {
            node,
            session,
            seq,
            rpc,
            attributes,
            live,
            once,
        } => WireEvent::Session(SessionEvent {
            node: node.to_string(),
            session: *session,
            seq: *seq,
            rpc: *rpc,
            attributes: *attributes,
            once: *once,
            live: *live,
        }),
        DeviceEvent::AttributesDeleted { scope, keys } => {
            WireEvent::AttributesDeleted(AttributesDeletedEvent::new(*scope, keys))
        }
        DeviceEvent::RpcRequest { caller, request } => WireEvent::RpcRequest(RpcRequestEvent {
            caller_node: match caller {
                Caller::Call { node, .. } => node.to_string(),
                Caller::Record { .. } => String::new(),
            },
            call: match caller {
                Caller::Call { call, .. } => *call,
                Caller::Record { .. } => 0,
            },
            record_id: match caller {
                Caller::Call { .. } => Vec::new(),
                Caller::Record { id } => id.as_bytes().to_vec(),
            },
            method: request.method.clone(),
            params: request.params.clone(),
            two_way: request.direction == Direction::TwoWay,
            expires_at: request.expires_at,
            retries: request.retries,
        }),
        DeviceEvent::RpcReply { id, payload } => WireEvent::RpcReply(RpcReplyEvent {
            id: *id,
            payload: payload.clone(),
        }),
        DeviceEvent::SharedDeleted { keys } => {
            WireEvent::SharedDeleted(SharedDeletedEvent { keys: keys.clone() })
        }
        DeviceEvent::RpcDeleted { id } => WireEvent::RpcDeleted(RpcDeletedEvent {
            record_id: id.as_bytes().to_vec(),
        }),
        DeviceEvent::RpcDelivery {
            record,
            acknowledged,
        } => WireEvent::RpcDelivery(RpcDeliveryEvent {
            record_id: record.as_bytes().to_vec(),
            acknowledged: *acknowledged,
        }),
        DeviceEvent::CallAbandoned { node, call } => WireEvent::CallAbandoned(CallAbandonedEvent {
            node: node.to_string(),
            call: *call,
        }),
        DeviceEvent::NodeSessions {
            node,
            sessions,
            below,
        } => WireEvent::NodeSessions(NodeSessionsEvent {
            node: node.to_string(),
            sessions: sessions.clone(),
            below: *below,
        }),
    };
    WireDeviceEvent { event: Some(event) }
}

fn event_from_wire(event: WireDeviceEvent) -> Result<DeviceEvent, WireError> {
    Ok(match event.event {
        Some(WireEvent::Session(s)) => DeviceEvent::Session {
            node: NodeId::from(s.node),
            session: s.session,
            seq: s.seq,
            rpc: s.rpc,
            attributes: s.attributes,
            live: s.live,
            once: s.once,
        },
        Some(WireEvent::AttributesDeleted(d)) => DeviceEvent::AttributesDeleted {
            scope: d.scope()?,
            keys: d.keys,
        },
        Some(WireEvent::RpcRequest(r)) => DeviceEvent::RpcRequest {
            caller: if r.record_id.is_empty() {
                Caller::Call {
                    node: NodeId::from(r.caller_node),
                    call: r.call,
                }
            } else {
                Caller::Record {
                    id: record_id(&r.record_id)?,
                }
            },
            request: RpcRequest {
                method: r.method,
                params: r.params,
                direction: direction(r.two_way),
                expires_at: r.expires_at,
                retries: r.retries,
            },
        },
        Some(WireEvent::RpcReply(r)) => DeviceEvent::RpcReply {
            id: r.id,
            payload: r.payload,
        },
        Some(WireEvent::SharedDeleted(d)) => DeviceEvent::SharedDeleted { keys: d.keys },
        Some(WireEvent::RpcDeleted(d)) => DeviceEvent::RpcDeleted {
            id: record_id(&d.record_id)?,
        },
        Some(WireEvent::RpcDelivery(d)) => DeviceEvent::RpcDelivery {
            record: record_id(&d.record_id)?,
            acknowledged: d.acknowledged,
        },
        Some(WireEvent::CallAbandoned(a)) => DeviceEvent::CallAbandoned {
            node: NodeId::from(a.node),
            call: a.call,
        },
        Some(WireEvent::NodeSessions(n)) => DeviceEvent::NodeSessions {
            node: NodeId::from(n.node),
            sessions: n.sessions,
            below: n.below,
        },
        None => {
            return Err(WireError::Invalid(
                "a device event without its event".into(),
            ));
        }
    })
}

/// An RPC's direction from the wire's `two_way`.
pub(super) fn direction(two_way: bool) -> Direction {
    if two_way {
        Direction::TwoWay
    } else {
        Direction::OneWay
    }
}

fn record_id(bytes: &[u8]) -> Result<uuid::Uuid, WireError> {
    uuid::Uuid::from_slice(bytes)
        .map_err(|_| WireError::Invalid("an RPC record id that is not 16 bytes".into()))
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Telemetry {
    #[prost(message, repeated, tag = "1")]
    pub records: Vec<WireRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireRecord {
    #[prost(int64, tag = "1")]
    pub ts: i64,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<WireEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Attributes {
    #[prost(int32, tag = "1")]
    pub scope: i32,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<WireEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireEntry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(oneof = "WireValue", tags = "2, 3, 4, 5, 6")]
    pub value: Option<WireValue>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WireValue {
    #[prost(bool, tag = "2")]
    BoolV(bool),
    #[prost(int64, tag = "3")]
    LongV(i64),
    #[prost(double, tag = "4")]
    DoubleV(f64),
    #[prost(string, tag = "5")]
    StringV(String),
    #[prost(string, tag = "6")]
    JsonV(String),
}

pub(super) fn entry_to_wire(e: &KvEntry) -> WireEntry {
    WireEntry {
        key: e.key.clone(),
        value: Some(match &e.value {
            KvValue::Bool(b) => WireValue::BoolV(*b),
            KvValue::Long(l) => WireValue::LongV(*l),
            KvValue::Double(d) => WireValue::DoubleV(*d),
            KvValue::String(s) => WireValue::StringV(s.clone()),
            KvValue::Json(s) => WireValue::JsonV(s.clone()),
        }),
    }
}

pub(super) fn entry_from_wire(e: WireEntry) -> Result<KvEntry, WireError> {
    let value = match e.value {
        Some(WireValue::BoolV(b)) => KvValue::Bool(b),
        Some(WireValue::LongV(l)) => KvValue::Long(l),
        Some(WireValue::DoubleV(d)) => KvValue::Double(d),
        Some(WireValue::StringV(s)) => KvValue::String(s),
        Some(WireValue::JsonV(s)) => KvValue::Json(s),
        None => return Err(WireError::Invalid(format!("key {} has no value", e.key))),
    };
    Ok(KvEntry { key: e.key, value })
}

pub fn encode(message: &Message) -> Vec<u8> {
    let body = match &message.body {
        MessageBody::Telemetry(records) => Body::Telemetry(Telemetry {
            records: records
                .iter()
                .map(|r| WireRecord {
                    ts: r.ts,
                    entries: r.entries.iter().map(entry_to_wire).collect(),
                })
                .collect(),
        }),
        MessageBody::Attributes { scope, entries } => Body::Attributes(Attributes {
            scope: i32::try_from(scope.code()).unwrap_or(0),
            entries: entries.iter().map(entry_to_wire).collect(),
        }),
        MessageBody::Device(event) => Body::Device(event_to_wire(event)),
    };
    IngestMessage {
        tenant_id: message.tenant_id.0.as_bytes().to_vec(),
        device_id: message.device_id.0.as_bytes().to_vec(),
        received_ts: message.received_ts,
        body: Some(body),
    }
    .encode_to_vec()
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    #[error("not a protobuf IngestMessage: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("invalid IngestMessage: {0}")]
    Invalid(String),
}

fn uuid(bytes: &[u8], what: &str) -> Result<Uuid, WireError> {
    Uuid::from_slice(bytes).map_err(|_| WireError::Invalid(format!("{what} is not 16 bytes")))
}

pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    let wire = IngestMessage::decode(bytes)?;
    let body = match wire.body {
        Some(Body::Telemetry(t)) => MessageBody::Telemetry(
            t.records
                .into_iter()
                .map(|r| {
                    Ok(TsRecord {
                        ts: r.ts,
                        entries: r
                            .entries
                            .into_iter()
                            .map(entry_from_wire)
                            .collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<_, WireError>>()?,
        ),
        Some(Body::Attributes(a)) => MessageBody::Attributes {
            scope: AttributeScope::from_code(i64::from(a.scope))
                .ok_or_else(|| WireError::Invalid(format!("unknown scope {}", a.scope)))?,
            entries: a
                .entries
                .into_iter()
                .map(entry_from_wire)
                .collect::<Result<_, _>>()?,
        },
        Some(Body::Device(event)) => MessageBody::Device(event_from_wire(event)?),
        None => return Err(WireError::Invalid("no body".into())),
    };
    Ok(Message {
        tenant_id: TenantId(uuid(&wire.tenant_id, "tenant_id")?),
        device_id: DeviceId(uuid(&wire.device_id, "device_id")?),
        received_ts: wire.received_ts,
        body,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn sample() -> Vec<Message> {
        let tenant = TenantId::from_name("t");
        let device = DeviceId::derive(tenant, "d");
        let entries = vec![
            KvEntry::new("b", KvValue::Bool(true)),
            KvEntry::new("l", KvValue::Long(-5)),
            KvEntry::new("d", KvValue::Double(2.5)),
            KvEntry::new("s", KvValue::String("x".into())),
            KvEntry::new("j", KvValue::Json(r#"{"a":1}"#.into())),
        ];
        vec![
            Message {
                tenant_id: tenant,
                device_id: device,
                received_ts: 7,
                body: MessageBody::Telemetry(vec![TsRecord {
                    ts: 5,
                    entries: entries.clone(),
                }]),
            },
            Message {
                tenant_id: tenant,
                device_id: device,
                received_ts: 8,
                body: MessageBody::Attributes {
                    scope: AttributeScope::Shared,
                    entries,
                },
            },
        ]
        .into_iter()
        .chain(
            [
                DeviceEvent::Session {
                    node: NodeId::from("n1"),
                    session: 3,
                    seq: 2,
                    rpc: true,
                    attributes: false,
                    live: true,
                    once: true,
                },
                DeviceEvent::AttributesDeleted {
                    scope: AttributeScope::Server,
                    keys: vec!["a".into()],
                },
                DeviceEvent::RpcRequest {
                    caller: Caller::Call {
                        node: NodeId::from("n2"),
                        call: 9,
                    },
                    request: RpcRequest {
                        method: "m".into(),
                        params: r#"{"a":1}"#.into(),
                        direction: Direction::TwoWay,
                        expires_at: 1_000,
                        retries: 0,
                    },
                },
                DeviceEvent::RpcReply {
                    id: -1,
                    payload: b"ok".to_vec(),
                },
                DeviceEvent::SharedDeleted {
                    keys: vec!["a".into(), "b".into()],
                },
                DeviceEvent::RpcRequest {
                    caller: Caller::Record {
                        id: uuid::Uuid::from_u128(77),
                    },
                    request: RpcRequest {
                        method: "p".into(),
                        params: "null".into(),
                        direction: Direction::OneWay,
                        expires_at: 2_000,
                        retries: 3,
                    },
                },
                DeviceEvent::RpcDeleted {
                    id: uuid::Uuid::from_u128(78),
                },
                DeviceEvent::RpcDelivery {
                    record: uuid::Uuid::from_u128(79),
                    acknowledged: true,
                },
                DeviceEvent::RpcDelivery {
                    record: uuid::Uuid::from_u128(80),
                    acknowledged: false,
                },
                DeviceEvent::NodeSessions {
                    node: NodeId::from("n3"),
                    sessions: vec![4, 5],
                    below: 9,
                },
                DeviceEvent::CallAbandoned {
                    node: NodeId::from("n4"),
                    call: 6,
                },
            ]
            .map(|event| Message {
                tenant_id: tenant,
                device_id: device,
                received_ts: 9,
                body: MessageBody::Device(event),
            }),
        )
        .collect()
    }

    #[test]
    fn messages_round_trip() {
        for message in sample() {
            assert_eq!(decode(&encode(&message)).expect("decodes"), message);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(matches!(decode(b"\xff\xff\xff"), Err(WireError::Decode(_))));
        assert!(matches!(decode(b""), Err(WireError::Invalid(_))));
    }

    /// The number of `field` in `message` of proto/ingest.proto.
    pub(in crate::queue::kafka) fn proto_number(message: &str, field: &str) -> u32 {
        let proto = include_str!("../../../../proto/ingest.proto");
        let start = proto
            .find(&format!("message {message} {{"))
            .unwrap_or_else(|| panic!("message {message} in the proto"));
        let body = &proto[start..];
        let body = &body[..body.find("\n}").unwrap_or(body.len())];
        let line = body
            .lines()
            .find(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                words.windows(2).any(|w| w[0] == field && w[1] == "=")
            })
            .unwrap_or_else(|| panic!("{message}.{field} in the proto"));
        let after = line.split('=').nth(1).expect("a number").trim_start();
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("a number")
    }

    /// The field number of the first key a message's encoding starts with.
    pub(in crate::queue::kafka) fn first_tag(bytes: &[u8]) -> u32 {
        u32::from(bytes[0] >> 3)
    }

    /// Every `name = N;` of proto/ingest.proto is the tag prost writes for that field, checked
    /// by encoding a message that sets the field and reading the first key byte.
    #[test]
    fn the_structs_match_the_proto_file() {
        let number = proto_number;
        let tag = |bytes: Vec<u8>| first_tag(&bytes);
        let entry = |value| WireEntry {
            key: String::new(),
            value: Some(value),
        };
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            (
                "IngestMessage",
                "tenant_id",
                IngestMessage {
                    tenant_id: vec![1],
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "IngestMessage",
                "device_id",
                IngestMessage {
                    device_id: vec![1],
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "IngestMessage",
                "received_ts",
                IngestMessage {
                    received_ts: 1,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "IngestMessage",
                "telemetry",
                IngestMessage {
                    body: Some(Body::Telemetry(Telemetry::default())),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "IngestMessage",
                "attributes",
                IngestMessage {
                    body: Some(Body::Attributes(Attributes::default())),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
            (
                "Telemetry",
                "records",
                Telemetry {
                    records: vec![WireRecord::default()],
                }
                .encode_to_vec(),
            ),
            (
                "TsRecord",
                "ts",
                WireRecord {
                    ts: 1,
                    entries: vec![],
                }
                .encode_to_vec(),
            ),
            (
                "TsRecord",
                "entries",
                WireRecord {
                    ts: 0,
                    entries: vec![WireEntry::default()],
                }
                .encode_to_vec(),
            ),
            (
                "Attributes",
                "scope",
                Attributes {
                    scope: 1,
                    entries: vec![],
                }
                .encode_to_vec(),
            ),
            (
                "Attributes",
                "entries",
                Attributes {
                    scope: 0,
                    entries: vec![WireEntry::default()],
                }
                .encode_to_vec(),
            ),
            (
                "KvEntry",
                "key",
                WireEntry {
                    key: "k".into(),
                    value: None,
                }
                .encode_to_vec(),
            ),
            (
                "KvEntry",
                "bool_v",
                entry(WireValue::BoolV(true)).encode_to_vec(),
            ),
            (
                "KvEntry",
                "long_v",
                entry(WireValue::LongV(1)).encode_to_vec(),
            ),
            (
                "KvEntry",
                "double_v",
                entry(WireValue::DoubleV(1.0)).encode_to_vec(),
            ),
            (
                "KvEntry",
                "string_v",
                entry(WireValue::StringV("s".into())).encode_to_vec(),
            ),
            (
                "KvEntry",
                "json_v",
                entry(WireValue::JsonV("{}".into())).encode_to_vec(),
            ),
            (
                "IngestMessage",
                "device",
                IngestMessage {
                    body: Some(Body::Device(WireDeviceEvent::default())),
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        ];
        let event = |e| WireDeviceEvent { event: Some(e) }.encode_to_vec();
        let session = SessionEvent::default;
        let request = RpcRequestEvent::default;
        let more: Vec<(&str, &str, Vec<u8>)> = vec![
            (
                "DeviceEvent",
                "session",
                event(WireEvent::Session(session())),
            ),
            (
                "DeviceEvent",
                "rpc_request",
                event(WireEvent::RpcRequest(request())),
            ),
            (
                "DeviceEvent",
                "rpc_reply",
                event(WireEvent::RpcReply(RpcReplyEvent::default())),
            ),
            (
                "DeviceEvent",
                "shared_deleted",
                event(WireEvent::SharedDeleted(SharedDeletedEvent::default())),
            ),
            (
                "DeviceEvent",
                "rpc_deleted",
                event(WireEvent::RpcDeleted(RpcDeletedEvent::default())),
            ),
            (
                "DeviceEvent",
                "rpc_delivery",
                event(WireEvent::RpcDelivery(RpcDeliveryEvent::default())),
            ),
            (
                "DeviceEvent",
                "attributes_deleted",
                event(WireEvent::AttributesDeleted(
                    AttributesDeletedEvent::default(),
                )),
            ),
            (
                "AttributesDeletedEvent",
                "scope",
                AttributesDeletedEvent {
                    scope: 1,
                    keys: Vec::new(),
                }
                .encode_to_vec(),
            ),
            (
                "AttributesDeletedEvent",
                "keys",
                AttributesDeletedEvent {
                    scope: 0,
                    keys: vec!["k".into()],
                }
                .encode_to_vec(),
            ),
            (
                "RpcDeliveryEvent",
                "record_id",
                RpcDeliveryEvent {
                    record_id: vec![1],
                    acknowledged: false,
                }
                .encode_to_vec(),
            ),
            (
                "RpcDeliveryEvent",
                "acknowledged",
                RpcDeliveryEvent {
                    record_id: vec![],
                    acknowledged: true,
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "retries",
                RpcRequestEvent {
                    retries: 1,
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "DeviceEvent",
                "node_sessions",
                event(WireEvent::NodeSessions(NodeSessionsEvent::default())),
            ),
            (
                "DeviceEvent",
                "call_abandoned",
                event(WireEvent::CallAbandoned(CallAbandonedEvent::default())),
            ),
            (
                "CallAbandonedEvent",
                "node",
                CallAbandonedEvent {
                    node: "n".into(),
                    call: 0,
                }
                .encode_to_vec(),
            ),
            (
                "CallAbandonedEvent",
                "call",
                CallAbandonedEvent {
                    node: String::new(),
                    call: 1,
                }
                .encode_to_vec(),
            ),
            (
                "NodeSessionsEvent",
                "node",
                NodeSessionsEvent {
                    node: "n".into(),
                    sessions: vec![],
                    below: 0,
                }
                .encode_to_vec(),
            ),
            (
                "NodeSessionsEvent",
                "sessions",
                NodeSessionsEvent {
                    node: String::new(),
                    sessions: vec![1],
                    below: 0,
                }
                .encode_to_vec(),
            ),
            (
                "NodeSessionsEvent",
                "below",
                NodeSessionsEvent {
                    node: String::new(),
                    sessions: vec![],
                    below: 1,
                }
                .encode_to_vec(),
            ),
            (
                "SessionEvent",
                "node",
                SessionEvent {
                    node: "n".into(),
                    ..session()
                }
                .encode_to_vec(),
            ),
            (
                "SessionEvent",
                "session",
                SessionEvent {
                    session: 1,
                    ..session()
                }
                .encode_to_vec(),
            ),
            (
                "SessionEvent",
                "seq",
                SessionEvent {
                    seq: 1,
                    ..session()
                }
                .encode_to_vec(),
            ),
            (
                "SessionEvent",
                "rpc",
                SessionEvent {
                    rpc: true,
                    ..session()
                }
                .encode_to_vec(),
            ),
            (
                "SessionEvent",
                "attributes",
                SessionEvent {
                    attributes: true,
                    ..session()
                }
                .encode_to_vec(),
            ),
            (
                "SessionEvent",
                "once",
                SessionEvent {
                    once: true,
                    ..session()
                }
                .encode_to_vec(),
            ),
            (
                "SessionEvent",
                "live",
                SessionEvent {
                    live: true,
                    ..session()
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "caller_node",
                RpcRequestEvent {
                    caller_node: "n".into(),
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "call",
                RpcRequestEvent {
                    call: 1,
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "method",
                RpcRequestEvent {
                    method: "m".into(),
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "params",
                RpcRequestEvent {
                    params: "p".into(),
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "two_way",
                RpcRequestEvent {
                    two_way: true,
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "expires_at",
                RpcRequestEvent {
                    expires_at: 1,
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "RpcRequestEvent",
                "record_id",
                RpcRequestEvent {
                    record_id: vec![1],
                    ..request()
                }
                .encode_to_vec(),
            ),
            (
                "RpcDeletedEvent",
                "record_id",
                RpcDeletedEvent { record_id: vec![1] }.encode_to_vec(),
            ),
            (
                "RpcReplyEvent",
                "id",
                RpcReplyEvent {
                    id: 1,
                    payload: vec![],
                }
                .encode_to_vec(),
            ),
            (
                "RpcReplyEvent",
                "payload",
                RpcReplyEvent {
                    id: 0,
                    payload: vec![1],
                }
                .encode_to_vec(),
            ),
            (
                "SharedDeletedEvent",
                "keys",
                SharedDeletedEvent {
                    keys: vec!["k".into()],
                }
                .encode_to_vec(),
            ),
        ];
        for (message, field, bytes) in cases.into_iter().chain(more) {
            assert_eq!(tag(bytes), number(message, field), "{message}.{field}");
        }
    }
}
