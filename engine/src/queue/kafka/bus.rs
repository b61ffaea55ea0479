//! The downlink bus over Kafka: every node reads a topic of its own,
//! `<queue.downlink_topic_prefix><node id>` (one partition, read from its end, no group
//! offsets: what was sent to a node before it started is for sessions and callers it no longer
//! has), and the owner of a device's state writes there what the node's sessions or REST
//! callers must get (`ToNode` of `proto/ingest.proto`).
//!
//! Bounds: a node's bus producer holds at most `BUS_BUFFERED` messages not yet written; past it
//! a downlink is dropped and counted (`engine_downlinks_total{outcome="bus_full"}`), as a
//! downlink to a session whose channel is full is. A message that cannot be written within
//! `BUS_TIMEOUT` is dropped and counted (`bus_failed`); the REST caller waiting for it gets
//! its timeout status.

use std::sync::Arc;
use std::time::Duration;

use actors::downlink::event::{Delivery, NodeId, ToNode};
use actors::downlink::router::{DownlinkBus, Downlinks};
use actors::downlink::rpc::{Direction, Outgoing, Resolution, RpcRequest};
use actors::metrics::DOWNLINKS;
use actors::model::DeviceId;
use anyhow::Context;
use metrics::counter;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{info, warn};

use super::wire::{self, AttributesDeletedEvent, SharedDeletedEvent, WireEntry, WireError};
use crate::config::QueueConfig;

/// Messages the bus producer holds unwritten at most.
const BUS_BUFFERED: usize = 100_000;
/// How long the bus producer tries to write a message.
const BUS_TIMEOUT: Duration = Duration::from_secs(10);

/// A node's downlink topic.
pub fn topic_of(config: &QueueConfig, node: &str) -> String {
    format!("{}{node}", config.downlink_topic_prefix)
}

/// The way to other nodes: a Kafka producer writing to their topics.
pub struct KafkaBus {
    producer: FutureProducer,
    prefix: String,
}

impl KafkaBus {
    pub fn new(config: &QueueConfig) -> anyhow::Result<KafkaBus> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &config.brokers)
            .set("acks", "1")
            .set("linger.ms", "0")
            .set("message.timeout.ms", BUS_TIMEOUT.as_millis().to_string())
            .set("queue.buffering.max.messages", BUS_BUFFERED.to_string());
        for (k, v) in &config.properties {
            c.set(k, v);
        }
        Ok(KafkaBus {
            producer: c
                .create()
                .context("cannot create the downlink bus producer")?,
            prefix: config.downlink_topic_prefix.clone(),
        })
    }
}

impl DownlinkBus for KafkaBus {
    fn send(&self, node: &NodeId, message: ToNode) {
        let topic = format!("{}{node}", self.prefix);
        let payload = encode(&message);
        let record = FutureRecord::<[u8], [u8]>::to(&topic).payload(&payload);
        match self.producer.send_result(record) {
            Ok(delivery) => {
                tokio::spawn(async move {
                    if !matches!(delivery.await, Ok(Ok(_))) {
                        counter!(DOWNLINKS, "outcome" => "bus_failed").increment(1);
                    }
                });
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                counter!(DOWNLINKS, "outcome" => "bus_full").increment(1);
            }
            Err((e, _)) => {
                counter!(DOWNLINKS, "outcome" => "bus_failed").increment(1);
                warn!(error = %e, %node, "a downlink could not be sent to its node");
            }
        }
    }
}

/// Stops the node's bus reader.
pub struct BusListener {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl BusListener {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Creates this node's downlink topic if missing and reads it from its end, handing every
/// message to `downlinks`.
pub async fn listen(
    config: &QueueConfig,
    node: &str,
    downlinks: Arc<Downlinks>,
) -> anyhow::Result<BusListener> {
    let topic = topic_of(config, node);
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        c.create().context("cannot create the Kafka admin client")?;
    let options = AdminOptions::new().operation_timeout(Some(config.connect_timeout));
    let new = NewTopic::new(
        &topic,
        1,
        TopicReplication::Fixed(config.replication_factor),
    );
    for result in admin
        .create_topics([&new], &options)
        .await
        .context("cannot create the node's downlink topic")?
    {
        match result {
            Ok(_) => info!(topic, "downlink topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create Kafka topic {topic}: {code}"),
        }
    }
    c.set("group.id", format!("{node}-downlinks"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer: StreamConsumer = c
        .create()
        .context("cannot create the downlink bus consumer")?;
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(&topic, 0, Offset::End)
        .context("the downlink topic's partition")?;
    consumer
        .assign(&partitions)
        .context("cannot read the node's downlink topic")?;
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                received = consumer.recv() => match received {
                    Ok(message) => match decode(message.payload().unwrap_or_default()) {
                        Ok(message) => downlinks.receive(message),
                        Err(e) => {
                            counter!(DOWNLINKS, "outcome" => "bus_invalid").increment(1);
                            warn!(error = %e, "a downlink bus message that is not one");
                        }
                    },
                    Err(e) => {
                        warn!(error = %e, "the downlink topic cannot be read; trying again");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
        }
    });
    Ok(BusListener { stop, task })
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireToNode {
    #[prost(oneof = "WireToNodeKind", tags = "1, 2")]
    pub message: Option<WireToNodeKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WireToNodeKind {
    #[prost(message, tag = "1")]
    Deliver(WireDeliver),
    #[prost(message, tag = "2")]
    Resolve(WireResolve),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireDeliver {
    #[prost(bytes = "vec", tag = "1")]
    pub device_id: Vec<u8>,
    #[prost(oneof = "WireDelivery", tags = "2, 3, 4, 5, 6")]
    pub delivery: Option<WireDelivery>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum WireDelivery {
    #[prost(message, tag = "2")]
    Rpc(WireRpc),
    #[prost(message, tag = "3")]
    Attributes(WireAttributes),
    #[prost(message, tag = "4")]
    Deleted(SharedDeletedEvent),
    #[prost(message, tag = "5")]
    Live(WireLive),
    #[prost(message, tag = "6")]
    LiveDeleted(AttributesDeletedEvent),
}

/// Changes of a device stored by its owner (one batch's), for the node's live hub: encoded
/// `IngestMessage`s.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WireLive {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub messages: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireRpc {
    #[prost(int32, tag = "1")]
    pub id: i32,
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(string, tag = "3")]
    pub params: String,
    #[prost(bool, tag = "4")]
    pub two_way: bool,
    #[prost(int64, tag = "5")]
    pub expires_at: i64,
    #[prost(bytes = "vec", tag = "6")]
    pub record_id: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireAttributes {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<WireEntry>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WireResolve {
    #[prost(uint64, tag = "1")]
    pub call: u64,
    #[prost(enumeration = "Outcome", tag = "2")]
    pub outcome: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub reply: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub retries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum Outcome {
    Sent = 0,
    Reply = 1,
    ExpiredSent = 2,
    ExpiredNotSent = 3,
    Refused = 4,
    Undelivered = 5,
}

pub fn encode(message: &ToNode) -> Vec<u8> {
    let kind = match message {
        ToNode::Deliver { device, delivery } => WireToNodeKind::Deliver(WireDeliver {
            device_id: device.0.as_bytes().to_vec(),
            delivery: Some(match delivery {
                Delivery::Rpc(o) => WireDelivery::Rpc(WireRpc {
                    id: o.id,
                    method: o.request.method.clone(),
                    params: o.request.params.clone(),
                    two_way: o.request.direction == Direction::TwoWay,
                    expires_at: o.request.expires_at,
                    record_id: o.record.map(|r| r.as_bytes().to_vec()).unwrap_or_default(),
                }),
                Delivery::Attributes(entries) => WireDelivery::Attributes(WireAttributes {
                    entries: entries.iter().map(wire::entry_to_wire).collect(),
                }),
                Delivery::Deleted(keys) => {
                    WireDelivery::Deleted(SharedDeletedEvent { keys: keys.clone() })
                }
                Delivery::Live(messages) => WireDelivery::Live(WireLive {
                    messages: messages.iter().map(|m| wire::encode(m)).collect(),
                }),
                Delivery::LiveDeleted { scope, keys } => {
                    WireDelivery::LiveDeleted(AttributesDeletedEvent::new(*scope, keys))
                }
            }),
        }),
        ToNode::Resolve { call, resolution } => {
            let (outcome, reply, retries) = match resolution {
                Resolution::Sent => (Outcome::Sent, Vec::new(), 0),
                Resolution::Reply(reply) => (Outcome::Reply, reply.clone(), 0),
                Resolution::Expired { sent: true } => (Outcome::ExpiredSent, Vec::new(), 0),
                Resolution::Expired { sent: false } => (Outcome::ExpiredNotSent, Vec::new(), 0),
                Resolution::Refused => (Outcome::Refused, Vec::new(), 0),
                Resolution::Undelivered { retries } => (Outcome::Undelivered, Vec::new(), *retries),
            };
            WireToNodeKind::Resolve(WireResolve {
                call: *call,
                outcome: outcome as i32,
                reply,
                retries,
            })
        }
    };
    WireToNode {
        message: Some(kind),
    }
    .encode_to_vec()
}

pub fn decode(bytes: &[u8]) -> Result<ToNode, WireError> {
    let invalid = |what: &str| WireError::Invalid(format!("a downlink bus message {what}"));
    match WireToNode::decode(bytes)?.message {
        Some(WireToNodeKind::Deliver(d)) => {
            let device = uuid::Uuid::from_slice(&d.device_id)
                .map_err(|_| invalid("whose device id is not 16 bytes"))?;
            let delivery = match d.delivery {
                Some(WireDelivery::Rpc(r)) => Delivery::Rpc(Outgoing {
                    id: r.id,
                    record: if r.record_id.is_empty() {
                        None
                    } else {
                        Some(
                            uuid::Uuid::from_slice(&r.record_id)
                                .map_err(|_| invalid("whose RPC record id is not 16 bytes"))?,
                        )
                    },
                    request: RpcRequest {
                        method: r.method,
                        params: r.params,
                        direction: wire::direction(r.two_way),
                        expires_at: r.expires_at,
                        // Only the owner counts retries.
                        retries: 0,
                    },
                }),
                Some(WireDelivery::Attributes(a)) => Delivery::Attributes(
                    a.entries
                        .into_iter()
                        .map(wire::entry_from_wire)
                        .collect::<Result<_, _>>()?,
                ),
                Some(WireDelivery::Deleted(d)) => Delivery::Deleted(d.keys),
                Some(WireDelivery::Live(live)) => Delivery::Live(
                    live.messages
                        .iter()
                        .map(|bytes| wire::decode(bytes).map(std::sync::Arc::new))
                        .collect::<Result<_, _>>()?,
                ),
                Some(WireDelivery::LiveDeleted(d)) => Delivery::LiveDeleted {
                    scope: d.scope()?,
                    keys: d.keys,
                },
                None => return Err(invalid("without its delivery")),
            };
            Ok(ToNode::Deliver {
                device: DeviceId(device),
                delivery,
            })
        }
        Some(WireToNodeKind::Resolve(r)) => {
            let resolution = match Outcome::try_from(r.outcome) {
                Ok(Outcome::Sent) => Resolution::Sent,
                Ok(Outcome::Reply) => Resolution::Reply(r.reply),
                Ok(Outcome::ExpiredSent) => Resolution::Expired { sent: true },
                Ok(Outcome::ExpiredNotSent) => Resolution::Expired { sent: false },
                Ok(Outcome::Refused) => Resolution::Refused,
                Ok(Outcome::Undelivered) => Resolution::Undelivered { retries: r.retries },
                Err(_) => return Err(invalid("with an unknown outcome")),
            };
            Ok(ToNode::Resolve {
                call: r.call,
                resolution,
            })
        }
        None => Err(invalid("without its message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::model::{KvEntry, KvValue, TenantId};

    #[test]
    fn every_message_for_a_node_reads_back_as_it_was() {
        let device = DeviceId::derive(TenantId::from_name("t"), "d");
        let request = RpcRequest {
            method: "m".into(),
            params: r#"{"a":1}"#.into(),
            direction: Direction::TwoWay,
            expires_at: 5,
            retries: 0,
        };
        let messages = [
            ToNode::Deliver {
                device,
                delivery: Delivery::Rpc(Outgoing {
                    id: 3,
                    request: request.clone(),
                    record: None,
                }),
            },
            ToNode::Deliver {
                device,
                delivery: Delivery::Rpc(Outgoing {
                    id: 4,
                    request,
                    record: Some(uuid::Uuid::from_u128(12)),
                }),
            },
            ToNode::Deliver {
                device,
                delivery: Delivery::Attributes(vec![
                    KvEntry::new("n", KvValue::Long(1)),
                    KvEntry::new("j", KvValue::Json("{}".into())),
                ]),
            },
            ToNode::Deliver {
                device,
                delivery: Delivery::Deleted(vec!["a".into()]),
            },
            ToNode::Deliver {
                device,
                delivery: Delivery::Live(vec![std::sync::Arc::new(actors::model::Message {
                    tenant_id: actors::model::TenantId(uuid::Uuid::from_u128(5)),
                    device_id: device,
                    received_ts: 7,
                    body: actors::model::MessageBody::Telemetry(vec![actors::model::TsRecord {
                        ts: 6,
                        entries: vec![KvEntry::new("t", KvValue::Double(1.5))],
                    }]),
                })]),
            },
            ToNode::Deliver {
                device,
                delivery: Delivery::LiveDeleted {
                    scope: actors::model::AttributeScope::Client,
                    keys: vec!["a".into()],
                },
            },
        ]
        .into_iter()
        .chain(
            [
                Resolution::Sent,
                Resolution::Reply(b"ok".to_vec()),
                Resolution::Expired { sent: true },
                Resolution::Expired { sent: false },
                Resolution::Refused,
                Resolution::Undelivered { retries: 2 },
            ]
            .map(|resolution| ToNode::Resolve {
                call: 9,
                resolution,
            }),
        );
        for message in messages {
            assert_eq!(decode(&encode(&message)), Ok(message));
        }
        assert!(decode(b"\x0a\x00").is_err());
        assert!(decode(b"").is_err());
        assert!(decode(b"\xff\xff").is_err());
    }

    /// Every field of the bus's messages has the number proto/ingest.proto gives it.
    #[test]
    fn the_structs_match_the_proto_file() {
        use crate::queue::kafka::wire::tests::{first_tag, proto_number};
        let rpc = WireRpc::default;
        let deliver = WireDeliver::default;
        let resolve = WireResolve::default;
        let cases: Vec<(&str, &str, Vec<u8>)> = vec![
            (
                "ToNode",
                "deliver",
                WireToNode {
                    message: Some(WireToNodeKind::Deliver(deliver())),
                }
                .encode_to_vec(),
            ),
            (
                "ToNode",
                "resolve",
                WireToNode {
                    message: Some(WireToNodeKind::Resolve(resolve())),
                }
                .encode_to_vec(),
            ),
            (
                "Deliver",
                "device_id",
                WireDeliver {
                    device_id: vec![1],
                    ..deliver()
                }
                .encode_to_vec(),
            ),
            (
                "Deliver",
                "rpc",
                WireDeliver {
                    delivery: Some(WireDelivery::Rpc(rpc())),
                    ..deliver()
                }
                .encode_to_vec(),
            ),
            (
                "Deliver",
                "attributes",
                WireDeliver {
                    delivery: Some(WireDelivery::Attributes(WireAttributes::default())),
                    ..deliver()
                }
                .encode_to_vec(),
            ),
            (
                "Deliver",
                "deleted",
                WireDeliver {
                    delivery: Some(WireDelivery::Deleted(SharedDeletedEvent::default())),
                    ..deliver()
                }
                .encode_to_vec(),
            ),
            (
                "Deliver",
                "live",
                WireDeliver {
                    delivery: Some(WireDelivery::Live(WireLive::default())),
                    ..deliver()
                }
                .encode_to_vec(),
            ),
            (
                "LiveDelivery",
                "messages",
                WireLive {
                    messages: vec![vec![1]],
                }
                .encode_to_vec(),
            ),
            (
                "Deliver",
                "live_deleted",
                WireDeliver {
                    delivery: Some(WireDelivery::LiveDeleted(AttributesDeletedEvent::default())),
                    ..deliver()
                }
                .encode_to_vec(),
            ),
            (
                "RpcDelivery",
                "id",
                WireRpc { id: 1, ..rpc() }.encode_to_vec(),
            ),
            (
                "RpcDelivery",
                "method",
                WireRpc {
                    method: "m".into(),
                    ..rpc()
                }
                .encode_to_vec(),
            ),
            (
                "RpcDelivery",
                "params",
                WireRpc {
                    params: "p".into(),
                    ..rpc()
                }
                .encode_to_vec(),
            ),
            (
                "RpcDelivery",
                "two_way",
                WireRpc {
                    two_way: true,
                    ..rpc()
                }
                .encode_to_vec(),
            ),
            (
                "RpcDelivery",
                "expires_at",
                WireRpc {
                    expires_at: 1,
                    ..rpc()
                }
                .encode_to_vec(),
            ),
            (
                "RpcDelivery",
                "record_id",
                WireRpc {
                    record_id: vec![1],
                    ..rpc()
                }
                .encode_to_vec(),
            ),
            (
                "Resolve",
                "retries",
                WireResolve {
                    retries: 1,
                    ..resolve()
                }
                .encode_to_vec(),
            ),
            (
                "AttributesDelivery",
                "entries",
                WireAttributes {
                    entries: vec![WireEntry::default()],
                }
                .encode_to_vec(),
            ),
            (
                "Resolve",
                "call",
                WireResolve {
                    call: 1,
                    ..resolve()
                }
                .encode_to_vec(),
            ),
            (
                "Resolve",
                "outcome",
                WireResolve {
                    outcome: Outcome::Reply as i32,
                    ..resolve()
                }
                .encode_to_vec(),
            ),
            (
                "Resolve",
                "reply",
                WireResolve {
                    reply: vec![1],
                    ..resolve()
                }
                .encode_to_vec(),
            ),
        ];
        for (message, field, bytes) in cases {
            assert_eq!(
                first_tag(&bytes),
                proto_number(message, field),
                "{message}.{field}"
            );
        }
        let proto = include_str!("../../../../proto/ingest.proto");
        for (name, value) in [
            ("SENT", Outcome::Sent),
            ("REPLY", Outcome::Reply),
            ("EXPIRED_SENT", Outcome::ExpiredSent),
            ("EXPIRED_NOT_SENT", Outcome::ExpiredNotSent),
            ("REFUSED", Outcome::Refused),
            ("UNDELIVERED", Outcome::Undelivered),
        ] {
            assert!(
                proto.contains(&format!("  {name} = {};", value as i32)),
                "{name}"
            );
        }
    }
}
