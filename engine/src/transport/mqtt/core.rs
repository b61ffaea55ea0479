//! The version-neutral connection core: everything a connection does whatever its protocol
//! version. Login, opening the session (its outbound channel, writer and seat), publish,
//! subscribe and unsubscribe with the granted filters kept per connection, ping, disconnect, and
//! the accounting of publishes in flight. The v3.1.1 and v5 adapters (`v3.rs`, `v5.rs`) only
//! translate packets to these calls and outcomes to reason codes.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actors::ingress::{Ingress, Rejection, Transport};
use actors::metrics::{CONNECTIONS_REFUSED, DOWNLINKS, MESSAGES_REJECTED, MQTT_PROTOCOL_ERRORS};
use actors::model::{BasicCredentials, Device, is_basic_token};
use actors::payload::PayloadError as BadPayload;
use actors::ports::{
    ClaimRequest as StoredClaim, DeviceRecords, DeviceRegistry, RegistryError, Store,
};
use actors::protocol::attributes::{self, AttributeRequest};
use actors::protocol::claim::ClaimRequest;
use actors::protocol::rpc::{DeviceRpc, SESSION_LIMITS, SessionLimits};
use actors::session::outbound::{self, OutboundMeters, OutboundReceiver};
use actors::session::outbound::{DeliveryReport, Downlink, DownlinkQos, Tracked};
use actors::session::{SessionArgs, SessionError, SessionHandle};
use metrics::counter;
use ntex::util::Bytes;
use ntex_mqtt::QoS;
use ractor::ActorCell;

use super::admission::{Admission, Holder, Seat};
use super::dispatch::Settings;
use super::gateway::{GATEWAY_PREFIX, Gateway};
use super::peer_log::peer_event;
use super::topics::{
    BadTopic, CLAIM_TOPIC, DownlinkTopic, FilterRefusal, Subscriptions, attribute_request_id,
    rpc_request_id, rpc_response_id, uplink_of,
};
use actors::downlink::event::Delivery;
use actors::downlink::router::{Downlinks, SessionSink};
use actors::protocol::rpc;
use actors::session::Outbound;
use std::sync::atomic::{AtomicU8, Ordering};

/// What every connection handler needs; shared by all network workers.
pub struct MqttContext {
    pub registry: Arc<dyn DeviceRegistry>,
    /// Where claim requests are kept.
    pub records: Arc<dyn DeviceRecords>,
    /// Where attribute requests are answered from.
    pub store: Arc<dyn Store>,
    /// Device profiles: what a provision-only session's requests are decided against.
    pub profiles: Arc<dyn actors::ports::DeviceProfiles>,
    pub ingress: Arc<Ingress>,
    pub supervisor: ActorCell,
    /// `mqtt.receive_maximum`: publishes of one connection in flight at most.
    pub receive_maximum: u16,
    /// `mqtt.outbound_capacity`: server-to-device messages one connection's channel holds.
    pub outbound_capacity: usize,
    /// What `getSessionLimits` reports.
    pub session_limits: SessionLimits,
    /// `mqtt.client_rpc_timeout`: when a device's unanswered RPC request gets its timeout.
    pub client_rpc_timeout: Duration,
    /// The way back: shared attribute updates and server-side RPC for subscribed connections.
    pub downlinks: Arc<Downlinks>,
    /// `mqtt.gateway_max_devices`: devices one gateway connection may speak for at once.
    pub gateway_max_devices: usize,
    /// `mqtt.gateway_max_devices_total`, and how many devices gateways on this node speak for
    /// now.
    pub gateway_devices: Arc<super::gateway::DeviceBudget>,
}

/// A connection as the node's [`Downlinks`] see it: server-side RPC requests and shared
/// attribute updates go into its outbound channel at the QoS of the matching subscription.
/// A full channel drops the downlink (counted): a device that does not read cannot make the
/// engine hold more than `mqtt.outbound_capacity` messages for it. A persistent RPC request
/// carries a report to its owner: written, then acknowledged by the device's PUBACK (a dropped
/// one reports nothing, and times out at its owner).
struct MqttSink {
    outbound: Outbound,
    device: Arc<Device>,
    downlinks: Arc<Downlinks>,
    /// The granted QoS of `v1/devices/me/rpc/request/+` and of `v1/devices/me/attributes`.
    rpc_qos: AtomicU8,
    attributes_qos: AtomicU8,
}

/// The QoS a downlink goes at, from a subscription's granted QoS kept as a number (0: QoS 0;
/// anything else, a not-subscribed mark included: QoS 1).
pub(super) fn downlink_qos(granted: &AtomicU8) -> DownlinkQos {
    match granted.load(Ordering::Relaxed) {
        0 => DownlinkQos::AtMostOnce,
        _ => DownlinkQos::AtLeastOnce,
    }
}

impl SessionSink for MqttSink {
    fn deliver(&self, delivery: &Delivery) -> bool {
        let qos = downlink_qos;
        let downlink = match delivery {
            Delivery::Rpc(outgoing) => Downlink {
                topic: DownlinkTopic::RpcRequest(outgoing.id.unsigned_abs()).name(),
                payload: rpc::mqtt_request(&outgoing.request).into_bytes(),
                qos: qos(&self.rpc_qos),
                tracked: RpcDeliveryReport::tracked(&self.downlinks, &self.device, outgoing.record),
            },
            Delivery::Attributes(entries) => Downlink {
                topic: DownlinkTopic::Attributes.name(),
                payload: attributes::update(entries).into_bytes(),
                qos: qos(&self.attributes_qos),
                tracked: None,
            },
            Delivery::Deleted(keys) => Downlink {
                topic: DownlinkTopic::Attributes.name(),
                payload: attributes::deleted(keys).into_bytes(),
                qos: qos(&self.attributes_qos),
                tracked: None,
            },
            // A device session never watches as a live hub.
            Delivery::Live(_) | Delivery::LiveDeleted { .. } => return false,
        };
        self.outbound.try_send(downlink).is_ok()
    }
}

/// Tells a persistent RPC's owner what became of one send of it.
pub(crate) struct RpcDeliveryReport {
    pub(crate) downlinks: Arc<Downlinks>,
    pub(crate) device: Arc<Device>,
    pub(crate) record: uuid::Uuid,
}

impl RpcDeliveryReport {
    /// The report a persistent RPC's downlink carries (`record`); none for other requests.
    pub(crate) fn tracked(
        downlinks: &Arc<Downlinks>,
        device: &Arc<Device>,
        record: Option<uuid::Uuid>,
    ) -> Option<Tracked> {
        record.map(|record| {
            Tracked(Arc::new(RpcDeliveryReport {
                downlinks: downlinks.clone(),
                device: device.clone(),
                record,
            }))
        })
    }
}

impl DeliveryReport for RpcDeliveryReport {
    fn written(&self) {
        self.downlinks
            .rpc_delivery(&self.device, self.record, false);
    }

    fn acknowledged(&self) {
        self.downlinks.rpc_delivery(&self.device, self.record, true);
    }
}

/// The listener's shared state: the context, who is connected, the outbound channels' metrics.
pub(super) struct Node {
    pub(super) ctx: Arc<MqttContext>,
    pub(super) admission: Arc<Admission>,
    pub(super) meters: Arc<OutboundMeters>,
    pub(super) settings: Settings,
}

/// How a CONNECT's credentials came out.
pub(super) enum Login {
    Device(Arc<Device>),
    EmptyToken,
    UnknownToken,
    Unavailable,
}

impl Node {
    /// Finds the device whose access token is the CONNECT's username.
    pub(super) async fn login(
        &self,
        client_id: &str,
        username: Option<&str>,
        password: Option<&[u8]>,
    ) -> Login {
        let token = username.unwrap_or_default();
        if token.is_empty() && client_id.is_empty() {
            counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "empty_token")
                .increment(1);
            return Login::EmptyToken;
        }
        let registry = &self.ctx.registry;
        let unavailable = |e: RegistryError| {
            counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "unavailable")
                .increment(1);
            peer_event!(WARN, error = %e, "device registry unavailable, connect refused");
            Login::Unavailable
        };
        // An access token in the username (the password is ignored, as by ThingsBoard).
        if !token.is_empty() && !is_basic_token(token) {
            match registry.by_token(token).await {
                Ok(Some(device)) => return Login::Device(device),
                Ok(None) => {}
                Err(e) => return unavailable(e),
            }
        }
        // MQTT basic credentials: client id, user name and password together, then the user
        // name, then the client id, as ThingsBoard tries them.
        let password = password.map(String::from_utf8_lossy);
        for candidate in BasicCredentials::candidates(client_id, username, password.as_deref()) {
            match registry.by_token(&candidate.token().0).await {
                Ok(Some(device)) => return Login::Device(device),
                Ok(None) => {}
                Err(e) => return unavailable(e),
            }
        }
        if token.is_empty() {
            counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "empty_token")
                .increment(1);
            return Login::EmptyToken;
        }
        counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "bad_token").increment(1);
        peer_event!(DEBUG, "mqtt connect with unknown credentials refused");
        Login::UnknownToken
    }

    /// Opens the connection of a logged-in device: its outbound channel (the receiving end is
    /// the connection's, to write from), its session, and its seat among the device's sessions
    /// (which may push out an older one).
    pub(super) fn open(&self, device: Arc<Device>) -> (Rc<Connection>, OutboundReceiver) {
        // Read once: `additionalInfo` is JSON text.
        let gateway = device.is_gateway();
        let (outbound, receiver) = outbound::channel(
            outbound_capacity(gateway, self.ctx.outbound_capacity),
            self.meters.clone(),
        );
        let seat = self
            .admission
            .seat(&device, Holder::Connection(outbound.clone()));
        let args = SessionArgs {
            device: device.clone(),
            ingress: self.ctx.ingress.clone(),
            transport: Transport::Mqtt,
            outbound: outbound.clone(),
        };
        let session = SessionHandle::open(
            self.ctx.supervisor.clone(),
            args,
            self.ctx.receive_maximum.into(),
        );
        peer_event!(DEBUG, device = ?device.name, "mqtt session opened");
        let sink = Arc::new(MqttSink {
            outbound: outbound.clone(),
            device: device.clone(),
            downlinks: self.ctx.downlinks.clone(),
            rpc_qos: AtomicU8::new(1),
            attributes_qos: AtomicU8::new(1),
        });
        let gateway = gateway.then(Gateway::new);
        let connection = Connection {
            downlink_id: Cell::new(0),
            sink,
            announced: Cell::new(false),
            device,
            session,
            store: self.ctx.store.clone(),
            ctx: self.ctx.clone(),
            rpc_waiting: Rc::new(Cell::new(0)),
            subscriptions: Cell::new(Subscriptions::default()),
            outbound,
            _seat: seat,
            gateway,
            admission: self.admission.clone(),
        };
        (Rc::new(connection), receiver)
    }
}

/// A logged-in connection's state.
pub struct Connection {
    device: Arc<Device>,
    session: SessionHandle,
    store: Arc<dyn Store>,
    ctx: Arc<MqttContext>,
    /// The device's own RPC requests waiting for their timeout answer (at most
    /// `CLIENT_RPC_WAITING`).
    rpc_waiting: Rc<Cell<usize>>,
    /// The filters granted on this connection.
    subscriptions: Cell<Subscriptions>,
    /// Where answers to the device's requests go, like any server-to-device message.
    outbound: Outbound,
    /// Its place among its device's sessions.
    _seat: Seat,
    /// Its id among the node's sessions that take downlinks (0 until its first subscription
    /// to one), and how they reach it.
    downlink_id: Cell<u64>,
    sink: Arc<MqttSink>,
    /// Its subscriptions were told to the node's downlinks (so its end must be told too).
    announced: Cell<bool>,
    /// The devices it speaks for, when the device is a gateway.
    gateway: Option<Gateway>,
    /// Where the devices behind a gateway take their seats.
    admission: Arc<Admission>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.announced.get() {
            let sink: Arc<dyn SessionSink> = self.sink.clone();
            self.ctx.downlinks.subscriptions(
                &self.device,
                self.downlink_id.get(),
                false,
                false,
                &sink,
            );
        }
    }
}

/// What became of a PUBLISH (the adapters answer it each in their protocol's way).
#[derive(Debug, PartialEq)]
pub(super) enum Published {
    /// The queue holds it.
    Queued,
    /// Not a topic of the device API: dropped, as ThingsBoard does.
    UnknownTopic,
    /// Refused by the uplink path.
    Refused(Rejection),
    /// A gateway message of which some devices' parts were refused (this is the first of
    /// them) and the others queued: MQTT 5 says the reason, 3.1.1 acknowledges.
    PartlyRefused(Rejection),
    /// Not answered at all: a gateway topic from a device that is not a gateway (ThingsBoard
    /// sends no PUBACK).
    Unanswered,
}

/// Why the server closes a connection (MQTT 5 says it in DISCONNECT where it has a reason).
#[derive(Debug)]
pub enum Fault {
    Rejected(Rejection),
    SessionGone,
    BadTopic(BadTopic),
    /// MQTT 5 AUTH without an Authentication Method in CONNECT (MQTT 5 §4.12).
    UnexpectedAuth,
    /// CONNECT again [MQTT-3.1.0-2].
    SecondConnect,
    /// A packet the protocol does not allow here (a CONNACK, a SUBACK, ... from a client).
    Unexpected(&'static str),
    /// Bytes that are no packet of the protocol.
    Malformed(String),
    /// A packet larger than `mqtt.max_payload_size` and its headroom.
    TooLarge,
    /// No packet for one and a half keep-alive periods.
    KeepAlive,
    /// What was written to the peer stayed unread for `WRITE_STALL_LIMIT`.
    WriteStalled,
    /// An MQTT 5 Topic Alias over CONNACK's maximum, or one never set.
    TopicAlias,
    /// An MQTT 5 PUBLISH at a QoS over CONNACK's Maximum QoS.
    QosNotSupported,
}

impl Fault {
    /// The `reason` label of `engine_mqtt_protocol_errors_total`; `None` when the fault is not
    /// the peer's breach of the protocol (it is counted where it happens).
    pub(super) fn protocol_label(&self) -> Option<&'static str> {
        Some(match self {
            Fault::Rejected(_) | Fault::SessionGone | Fault::BadTopic(_) => return None,
            Fault::UnexpectedAuth => "unexpected_auth",
            Fault::SecondConnect => "second_connect",
            Fault::Unexpected(_) | Fault::TopicAlias | Fault::QosNotSupported => "violation",
            Fault::Malformed(_) | Fault::TooLarge => "malformed",
            Fault::KeepAlive | Fault::WriteStalled => "timeout",
        })
    }
}

/// A gateway's connection carries the downlinks of all its devices: its channel holds this
/// many times `mqtt.outbound_capacity`.
pub(super) const GATEWAY_OUTBOUND_FACTOR: usize = 64;

/// The outbound channel's capacity of a connection (of a gateway or not).
fn outbound_capacity(gateway: bool, capacity: usize) -> usize {
    if gateway {
        capacity.saturating_mul(GATEWAY_OUTBOUND_FACTOR)
    } else {
        capacity
    }
}

/// A connection's own RPC requests that may wait for their timeout answer at once.
const CLIENT_RPC_WAITING: usize = 16;

/// How long an answer (to an attribute request, a device's own RPC) waits for room in the
/// connection's outbound channel before it is dropped.
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl Connection {
    pub(super) fn device(&self) -> &Arc<Device> {
        &self.device
    }

    pub(super) fn ctx(&self) -> &MqttContext {
        &self.ctx
    }

    pub(super) fn outbound(&self) -> &Outbound {
        &self.outbound
    }

    pub(super) fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// Handles one PUBLISH: checks its topic, hands it to the session and waits until the
    /// queue holds it.
    pub(super) async fn publish(&self, topic: &str, payload: Bytes) -> Result<Published, Fault> {
        if let Some(bad) = BadTopic::of(topic) {
            counter!(MQTT_PROTOCOL_ERRORS, "reason" => bad.label()).increment(1);
            peer_event!(DEBUG, device = ?self.device.name, ?topic, "mqtt publish to an invalid topic name, connection closed");
            return Err(Fault::BadTopic(bad));
        }
        // Data first: the topics nearly every publish carries.
        let Some(uplink) = uplink_of(topic) else {
            if topic.starts_with(GATEWAY_PREFIX) {
                return Ok(match &self.gateway {
                    Some(gateway) => gateway.publish(self, topic, &payload).await,
                    None => {
                        // ThingsBoard logs it and answers nothing at all.
                        counter!(MESSAGES_REJECTED, "transport" => "mqtt", "reason" => "not_a_gateway")
                            .increment(1);
                        peer_event!(WARN, device = ?self.device.name, ?topic, "gateway topic from a device that is not a gateway ignored, unanswered");
                        Published::Unanswered
                    }
                });
            }
            return Ok(self.request(topic, &payload).await);
        };
        match self.session.publish(uplink, payload).await {
            Ok(accepted) => Ok(match accepted.confirmed().await {
                Ok(()) => Published::Queued,
                Err(rejection) => Published::Refused(rejection),
            }),
            Err(SessionError::Rejected(rejection)) => Ok(Published::Refused(rejection)),
            Err(SessionError::Gone) => Err(Fault::SessionGone),
        }
    }

    /// A publish that is not data: an attribute request, a claim request, the device's own RPC
    /// request, each answered on this connection; any other topic is dropped, as ThingsBoard
    /// does.
    async fn request(&self, topic: &str, payload: &[u8]) -> Published {
        enum Call {
            Attributes(Result<i32, ()>),
            Claim,
            Rpc(Result<i32, ()>),
            Reply(Result<i32, ()>),
        }
        let call = if let Some(id) = attribute_request_id(topic) {
            Call::Attributes(id)
        } else if let Some(id) = rpc_response_id(topic) {
            Call::Reply(id)
        } else if topic == CLAIM_TOPIC {
            Call::Claim
        } else if let Some(id) = rpc_request_id(topic) {
            Call::Rpc(id)
        } else {
            counter!(MESSAGES_REJECTED, "transport" => "mqtt", "reason" => "unknown_topic")
                .increment(1);
            peer_event!(WARN, device = ?self.device.name, ?topic, "publish to an unsupported topic ignored");
            return Published::UnknownTopic;
        };
        match call {
            Call::Attributes(id) => self.attribute_request(id, payload).await,
            Call::Claim => self.claim(payload).await,
            Call::Rpc(id) => self.device_rpc(id, payload).await,
            Call::Reply(id) => self.rpc_reply(id, payload).await,
        }
    }

    /// The device's reply to a server-side RPC (`v1/devices/me/rpc/response/{id}`), for the
    /// owner of its state (the REST caller waiting for it gets it from there); acknowledged once
    /// the queue holds it. A reply nobody waits for is ignored there, as ThingsBoard does.
    async fn rpc_reply(&self, id: Result<i32, ()>, payload: &[u8]) -> Published {
        let Ok(id) = id else {
            return Published::Refused(Rejection::Payload(BadPayload::WrongShape {
                found: "request id that is not a 32-bit integer",
                expected: "v1/devices/me/rpc/response/{id}",
            }));
        };
        if payload.len() > self.ctx.ingress.max_payload() {
            return Published::Refused(Rejection::TooLarge {
                size: payload.len(),
                max: self.ctx.ingress.max_payload(),
            });
        }
        match self
            .ctx
            .downlinks
            .reply(&self.device, id, payload.to_vec())
            .await
        {
            Ok(()) => Published::Queued,
            Err(e) => Published::Refused(Rejection::Queue(e)),
        }
    }

    /// Tells the node's downlinks what this connection now subscribes to.
    fn announce(&self) {
        let subscriptions = self.subscriptions.get();
        if let Some(gateway) = &self.gateway {
            let code = |q: Option<QoS>| match q {
                None => super::gateway::NOT_SUBSCRIBED,
                Some(QoS::AtMostOnce) => 0,
                Some(_) => 1,
            };
            gateway.qos.rpc.store(
                code(subscriptions.qos_for(super::gateway::RPC_TOPIC)),
                Ordering::Relaxed,
            );
            gateway.qos.attributes.store(
                code(subscriptions.qos_for(super::gateway::ATTRIBUTES_TOPIC)),
                Ordering::Relaxed,
            );
        }
        let rpc = subscriptions.qos_for(&DownlinkTopic::RpcRequest(0).name());
        let attributes = subscriptions.qos_for(&DownlinkTopic::Attributes.name());
        let code = |q: QoS| u8::from(q != QoS::AtMostOnce);
        if let Some(q) = rpc {
            self.sink.rpc_qos.store(code(q), Ordering::Relaxed);
        }
        if let Some(q) = attributes {
            self.sink.attributes_qos.store(code(q), Ordering::Relaxed);
        }
        if !self.announced.get() && rpc.is_none() && attributes.is_none() {
            return;
        }
        self.announced.set(true);
        let sink: Arc<dyn SessionSink> = self.sink.clone();
        let id = self.ctx.downlinks.subscriptions(
            &self.device,
            self.downlink_id.get(),
            rpc.is_some(),
            attributes.is_some(),
            &sink,
        );
        self.downlink_id.set(id);
    }

    /// An attribute request (`v1/devices/me/attributes/request/{id}`): the answer goes to
    /// `.../attributes/response/{id}` at the QoS of the device's matching subscription, QoS 1
    /// without one (ThingsBoard answers whether or not the device subscribed). An id that is
    /// not an integer or a payload that is not a request is refused like a bad payload; a
    /// negative id gets no answer, and neither does a request storage cannot read (the device
    /// times out, as with ThingsBoard).
    async fn attribute_request(&self, id: Result<i32, ()>, payload: &[u8]) -> Published {
        let request = match id.map(|id| (id, AttributeRequest::parse(payload))) {
            Ok((id, Ok(request))) => (id, request),
            Ok((_, Err(e))) => return Published::Refused(Rejection::Payload(e)),
            Err(()) => {
                return Published::Refused(Rejection::Payload(BadPayload::WrongShape {
                    found: "request id that is not a 32-bit integer",
                    expected: "v1/devices/me/attributes/request/{id}",
                }));
            }
        };
        let (id, request) = request;
        let Ok(id) = u32::try_from(id) else {
            return Published::Queued;
        };
        let read =
            crate::transport::requested_attributes(&*self.store, self.device.id, &request).await;
        let (client, shared) = match read {
            Ok(found) => found,
            Err(e) => {
                peer_event!(WARN, device = ?self.device.name, error = %e, "attribute request not answered: storage failed");
                return Published::Queued;
            }
        };
        let topic = DownlinkTopic::AttributeResponse(id).name();
        let qos = self.answer_qos(&topic);
        let downlink = Downlink {
            topic,
            payload: attributes::response(&client, &shared).into_bytes(),
            qos,
            tracked: None,
        };
        self.answer(downlink).await;
        Published::Queued
    }

    /// Sends an answer the device asked for. A full channel (a device that does not read)
    /// makes the publish that asked wait, as any downlink producer does, but at most
    /// [`ANSWER_WAIT`]: past it the answer is dropped (counted), so a device that stopped
    /// reading cannot hold its publishes, and with them the reading of its socket, for ever.
    pub(super) async fn answer(&self, downlink: Downlink) {
        if ntex::time::timeout(ANSWER_WAIT, self.outbound.send(downlink))
            .await
            .is_err()
        {
            counter!(DOWNLINKS, "outcome" => "answer_dropped").increment(1);
            peer_event!(DEBUG, device = ?self.device.name, "an answer to a device that does not read was dropped");
        }
    }

    /// The QoS of an answer on `topic`: the device's matching subscription's, QoS 1 without one
    /// (ThingsBoard answers whether or not the device subscribed).
    pub(super) fn answer_qos(&self, topic: &str) -> DownlinkQos {
        match self.subscriptions.get().qos_for(topic) {
            Some(QoS::AtMostOnce) => DownlinkQos::AtMostOnce,
            _ => DownlinkQos::AtLeastOnce,
        }
    }

    /// A claim request (`v1/devices/me/claim`, an optional `{"secretKey":..,"durationMs":..}`):
    /// kept with ThingsBoard's put-if-absent rule (one that stands and has not expired is
    /// kept); the device is not told which. A payload that is not a claim request is a bad
    /// payload; a store that cannot keep it is answered like a queue that cannot (retry).
    async fn claim(&self, payload: &[u8]) -> Published {
        match ClaimRequest::parse(payload) {
            Ok(request) => self.keep_claim(self.device.id, request).await,
            Err(e) => Published::Refused(Rejection::Payload(e)),
        }
    }

    /// Keeps a claim request of `device` (this one, or one behind this gateway).
    pub(super) async fn keep_claim(
        &self,
        device: actors::model::DeviceId,
        request: ClaimRequest,
    ) -> Published {
        let now = actors::model::now_ms();
        let claim = StoredClaim {
            device_id: device,
            secret_key: request.secret_key,
            expiration_time: now.saturating_add(request.duration_ms),
        };
        match self.ctx.records.put_claim_if_absent(&claim, now).await {
            Ok(_) => Published::Queued,
            Err(actors::ports::RecordError::Store(e)) => Published::Refused(Rejection::Queue(
                actors::ports::QueueError::Unavailable(e.to_string()),
            )),
            Err(e) => Published::Refused(Rejection::Payload(BadPayload::WrongShape {
                found: "claim request over its bounds",
                expected: if matches!(e, actors::ports::RecordError::TooLong { .. }) {
                    "a secretKey of at most 256 bytes"
                } else {
                    "a claim request"
                },
            })),
        }
    }

    /// A device's own RPC request (`v1/devices/me/rpc/request/{id}`,
    /// `{"method":..,"params":..}`): `getSessionLimits` is answered at once on
    /// `v1/devices/me/rpc/response/{id}` with the engine's limits; any other method, which no
    /// rule answers yet, gets ThingsBoard's `{"error":"timeout"}` after `mqtt.client_rpc_timeout`.
    /// At most `CLIENT_RPC_WAITING` wait per connection; past that a request is answered
    /// `{"error":"timeout"}` at once, so a device cannot make the engine hold timers without
    /// bound.
    async fn device_rpc(&self, id: Result<i32, ()>, payload: &[u8]) -> Published {
        let bad = |found| {
            Published::Refused(Rejection::Payload(BadPayload::WrongShape {
                found,
                expected: "{\"method\":..,\"params\":..} on v1/devices/me/rpc/request/{id}",
            }))
        };
        let Ok(id) = id else {
            return bad("request id that is not a 32-bit integer");
        };
        let Ok(request) = DeviceRpc::parse(payload, false) else {
            return bad("RPC request without a method");
        };
        let Ok(id) = u32::try_from(id) else {
            return Published::Queued;
        };
        let topic = DownlinkTopic::RpcResponse(id).name();
        let qos = self.answer_qos(&topic);
        if request.method == SESSION_LIMITS {
            // A gateway's devices have the same limits as a device of their own (the engine
            // has no separate gateway rate limits).
            let gateway_limits = self.gateway.as_ref().map(|_| &self.ctx.session_limits);
            let downlink = Downlink {
                topic,
                payload: self.ctx.session_limits.render(gateway_limits).into_bytes(),
                qos,
                tracked: None,
            };
            self.answer(downlink).await;
            return Published::Queued;
        }
        let timeout = Downlink {
            topic,
            payload: br#"{"error":"timeout"}"#.to_vec(),
            qos,
            tracked: None,
        };
        if self.rpc_waiting.get() >= CLIENT_RPC_WAITING {
            self.answer(timeout).await;
            return Published::Queued;
        }
        self.rpc_waiting.set(self.rpc_waiting.get() + 1);
        let waiting = self.rpc_waiting.clone();
        let outbound = self.outbound.clone();
        let after = self.ctx.client_rpc_timeout;
        ntex::rt::spawn(async move {
            ntex::time::sleep(after).await;
            waiting.set(waiting.get().saturating_sub(1));
            let _ = ntex::time::timeout(ANSWER_WAIT, outbound.send(timeout)).await;
        });
        Published::Queued
    }

    /// Grants `filter` (at most QoS 1) if the device API serves it, and keeps it.
    pub(super) fn subscribe(&self, filter: &str, qos: QoS) -> Result<QoS, FilterRefusal> {
        let mut subscriptions = self.subscriptions.get();
        let granted = subscriptions.subscribe(filter, qos);
        self.subscriptions.set(subscriptions);
        match granted {
            Ok(_) => self.announce(),
            Err(_) => {
                peer_event!(DEBUG, device = ?self.device.name, ?filter, "mqtt subscription refused")
            }
        }
        granted
    }

    /// Drops the subscription to `filter`; whether there was one.
    pub(super) fn unsubscribe(&self, filter: &str) -> bool {
        let mut subscriptions = self.subscriptions.get();
        let had = subscriptions.unsubscribe(filter);
        self.subscriptions.set(subscriptions);
        if had {
            self.announce();
        }
        had
    }

    /// The device sent PINGREQ: a keep-alive period passed without a publish. Its session actor
    /// is passivated unless a publish is still being handled (`idle` false).
    pub(super) fn ping(&self, idle: bool) {
        if idle && self.session.hibernate() {
            peer_event!(DEBUG, device = ?self.device.name, "mqtt session hibernates");
        }
    }

    /// The connection ended: why, counted and logged.
    pub(super) fn ended(&self, fault: Option<&Fault>) {
        let Some(fault) = fault else {
            peer_event!(DEBUG, device = ?self.device.name, "mqtt connection closed");
            return;
        };
        if let Some(label) = fault.protocol_label() {
            counter!(MQTT_PROTOCOL_ERRORS, "reason" => label).increment(1);
        }
        peer_event!(DEBUG, device = ?self.device.name, ?fault, "mqtt connection closed by the server");
    }
}
