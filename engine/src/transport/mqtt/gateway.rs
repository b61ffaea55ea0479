//! The gateway API on a gateway device's connection (`v1/gateway/*`): one MQTT connection
//! speaking for many devices, named in each message.
//!
//! Each device the gateway names gets a session of its own on this connection
//! ([`SubDevice`]): a [`SessionHandle`] like a direct connection's, so every device keeps its
//! order, bounds and metrics (transport `mqtt_gateway`), and a [`SessionSink`] through which
//! its shared attribute changes and RPC requests reach the gateway, tagged with its name. A
//! device is found by name in the gateway's tenant, or created (type from `connect`, else
//! `default`; `additionalInfo.lastConnectedGateway` names the gateway), the first time the
//! gateway mentions it on this connection; from then on it is connected (subscribed to shared
//! attribute changes and RPC, as ThingsBoard subscribes it) until `v1/gateway/disconnect` or
//! the end of the connection. A gateway holds at most `mqtt.gateway_max_devices` devices at
//! once; a message naming one more is refused for that device (quota).
//!
//! A multi-device message is split per device; a device's part that is refused (bad payload,
//! over a limit, a name that cannot be a device) does not stop the others. The PUBACK comes
//! once every accepted part is queued: MQTT 5 gives the first refused part's reason, 3.1.1 a
//! plain PUBACK (it has no way to say). A message that is not a JSON object is refused whole
//! (3.1.1 closes the connection, MQTT 5 PUBACK 0x99), and a queue that cannot take data
//! closes the connection either way, so the gateway sends it again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use actors::downlink::event::Delivery;
use actors::downlink::router::{Downlinks, SessionSink};
use actors::ingress::{Accepted, QuotaError, Rejection, Transport, Uplink};
use actors::metrics::MESSAGES_REJECTED;
use actors::model::{AccessToken, Device, DeviceId, MAX_DEVICE_TYPE_CHARS, now_ms};
use actors::model::{validate_device_name, validate_name};
use actors::payload::PayloadError as BadPayload;
use actors::ports::{QueueError, RegistryError};
use actors::protocol::claim::ClaimRequest;
use actors::protocol::gateway::{self, Connect, GatewayAttributeRequest, RpcReply};
use actors::session::outbound::{Downlink, DownlinkQos, Tracked};
use actors::session::{Outbound, SessionArgs, SessionError, SessionHandle};
use metrics::counter;

use super::admission::{Holder, PushedOut, Seat};
use super::core::{Connection, Published, RpcDeliveryReport};
use super::peer_log::peer_event;

/// Where the gateway API's messages come and go.
pub const GATEWAY_PREFIX: &str = "v1/gateway/";
pub const CONNECT_TOPIC: &str = "v1/gateway/connect";
pub const DISCONNECT_TOPIC: &str = "v1/gateway/disconnect";
pub const TELEMETRY_TOPIC: &str = "v1/gateway/telemetry";
pub const ATTRIBUTES_TOPIC: &str = "v1/gateway/attributes";
pub const ATTRIBUTES_REQUEST_TOPIC: &str = "v1/gateway/attributes/request";
pub const ATTRIBUTES_RESPONSE_TOPIC: &str = "v1/gateway/attributes/response";
pub const RPC_TOPIC: &str = "v1/gateway/rpc";
pub const CLAIM_TOPIC: &str = "v1/gateway/claim";

/// The QoS of a gateway's subscription, shared with its devices' sinks (written by the
/// connection, read wherever a downlink is delivered): 0, 1, or [`NOT_SUBSCRIBED`].
pub(super) struct GatewayQos {
    pub(super) rpc: AtomicU8,
    pub(super) attributes: AtomicU8,
}

/// No subscription: downlinks go at QoS 1 all the same (ThingsBoard sends them regardless).
pub(super) const NOT_SUBSCRIBED: u8 = u8::MAX;

impl GatewayQos {
    fn of(q: &AtomicU8) -> DownlinkQos {
        match q.load(Ordering::Relaxed) {
            0 => DownlinkQos::AtMostOnce,
            _ => DownlinkQos::AtLeastOnce,
        }
    }
}

/// How many devices the gateways on a node speak for at once, within
/// `mqtt.gateway_max_devices_total`.
pub struct DeviceBudget {
    max: usize,
    used: std::sync::atomic::AtomicUsize,
}

impl DeviceBudget {
    pub fn new(max: usize) -> DeviceBudget {
        DeviceBudget {
            max,
            used: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// One place, if one is free; given back when the returned place drops.
    fn take(self: &Arc<Self>) -> Option<Place> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Place(self.clone()))
    }
}

/// A device's place in the node's [`DeviceBudget`].
struct Place(Arc<DeviceBudget>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One device behind the gateway, while connected.
struct SubDevice {
    device: Arc<Device>,
    session: SessionHandle,
    _place: Place,
    /// Its downlink subscription, ended when it goes or when a newer session of the device
    /// (its own connection, another gateway's) pushes it out.
    subscription: Arc<Subscription>,
    /// Its place among the device's sessions.
    _seat: Seat,
}

impl Drop for SubDevice {
    fn drop(&mut self) {
        self.subscription.end();
    }
}

/// A device's downlink subscription through the gateway; ended once, from the gateway's task
/// or from whichever thread seats a newer session of the device.
struct Subscription {
    device: Arc<Device>,
    sink: Arc<SubDeviceSink>,
    downlinks: Arc<Downlinks>,
    /// Its id among the node's downlink sessions.
    id: AtomicU64,
    ended: AtomicBool,
}

impl Subscription {
    fn end(&self) {
        if !self.ended.swap(true, Ordering::SeqCst) {
            self.unsubscribe();
        }
    }

    fn unsubscribe(&self) {
        let sink: Arc<dyn SessionSink> = self.sink.clone();
        self.downlinks.subscriptions(
            &self.device,
            self.id.load(Ordering::SeqCst),
            false,
            false,
            &sink,
        );
    }

    fn is_ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }
}

impl PushedOut for Subscription {
    /// A newer session of the device took over: its downlinks stop coming here now; the
    /// gateway lets the device go when it next names it (and connects it anew then, taking
    /// over in turn, as ThingsBoard's sessions do).
    fn pushed_out(&self) {
        peer_event!(INFO, device = ?self.device.name, "a gateway's session of a device taken over by a newer session");
        self.end();
    }
}

/// How a device's downlinks reach the gateway: into the gateway connection's outbound channel,
/// tagged with the device's name. A full channel drops the downlink (counted), as for a
/// direct connection.
struct SubDeviceSink {
    outbound: Outbound,
    device: Arc<Device>,
    qos: Arc<GatewayQos>,
    downlinks: Arc<Downlinks>,
}

impl SessionSink for SubDeviceSink {
    fn deliver(&self, delivery: &Delivery) -> bool {
        let name = &self.device.name;
        let downlink = match delivery {
            Delivery::Rpc(outgoing) => Downlink {
                topic: RPC_TOPIC.to_owned(),
                payload: gateway::rpc_request(name, outgoing.id, &outgoing.request).into_bytes(),
                qos: GatewayQos::of(&self.qos.rpc),
                tracked: outgoing.record.map(|record| {
                    Tracked(Arc::new(RpcDeliveryReport {
                        downlinks: self.downlinks.clone(),
                        device: self.device.clone(),
                        record,
                    }))
                }),
            },
            Delivery::Attributes(entries) => Downlink {
                topic: ATTRIBUTES_TOPIC.to_owned(),
                payload: gateway::attributes_update(name, entries).into_bytes(),
                qos: GatewayQos::of(&self.qos.attributes),
                tracked: None,
            },
            Delivery::Deleted(keys) => Downlink {
                topic: ATTRIBUTES_TOPIC.to_owned(),
                payload: gateway::attributes_deleted(name, keys).into_bytes(),
                qos: GatewayQos::of(&self.qos.attributes),
                tracked: None,
            },
            // A device session never watches as a live hub.
            Delivery::Live(_) | Delivery::LiveDeleted { .. } => return false,
        };
        self.outbound.try_send(downlink).is_ok()
    }
}

/// A gateway connection's devices.
pub(super) struct Gateway {
    devices: RefCell<HashMap<String, Rc<SubDevice>>>,
    /// Taken, in the order the gateway's messages came, while a message's parts are handed to
    /// their devices' sessions: a message waiting to make a device does not let a later one
    /// overtake it for another device of both.
    handover: tokio::sync::Mutex<()>,
    pub(super) qos: Arc<GatewayQos>,
}

fn refused(found: &'static str, expected: &'static str) -> Rejection {
    Rejection::Payload(BadPayload::WrongShape { found, expected })
}

/// A refusal of a message about one device: a quota is answered, not a reason to close a
/// 3.1.1 gateway's connection (ThingsBoard acknowledges it), anything else refuses the message.
fn refused_whole(rejection: Rejection) -> Published {
    match rejection {
        Rejection::Quota(_) => Published::PartlyRefused(rejection),
        rejection => Published::Refused(rejection),
    }
}

/// `additionalInfo.lastConnectedGateway` of `device` names `gateway` (ThingsBoard writes it
/// when a gateway makes the device and when another gateway connects it). A device whose
/// `additionalInfo` is not an object is left as it is; a store that cannot take the change
/// leaves the old mark (logged), the device is used all the same.
async fn mark_gateway(
    ctx: &super::core::MqttContext,
    device: Arc<Device>,
    gateway: &Device,
) -> Arc<Device> {
    let id = gateway.id.0.to_string();
    let mut info = match device.additional_info.as_deref() {
        None => serde_json::Map::new(),
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(info)) => info,
            _ => return device,
        },
    };
    if info.get("lastConnectedGateway").and_then(|v| v.as_str()) == Some(id.as_str()) {
        return device;
    }
    info.insert("lastConnectedGateway".into(), serde_json::Value::String(id));
    let marked = Device {
        additional_info: Some(serde_json::Value::Object(info).to_string()),
        ..(*device).clone()
    };
    if marked
        .additional_info
        .as_ref()
        .is_some_and(|text| text.len() > actors::model::MAX_ADDITIONAL_INFO_BYTES)
    {
        return device;
    }
    match ctx.registry.save(marked).await {
        Ok(saved) => saved,
        Err(e) => {
            peer_event!(WARN, device = ?device.name, error = %e, "lastConnectedGateway not recorded");
            device
        }
    }
}

/// A message of the wrong shape, refused whole.
fn bad(e: BadPayload) -> Published {
    let r = Rejection::Payload(e);
    count_refused(&r);
    Published::Refused(r)
}

fn count_refused(rejection: &Rejection) {
    counter!(MESSAGES_REJECTED, "transport" => Transport::MqttGateway.as_str(), "reason" => rejection.reason())
        .increment(1);
}

impl Gateway {
    pub(super) fn new() -> Gateway {
        Gateway {
            devices: RefCell::new(HashMap::new()),
            handover: tokio::sync::Mutex::new(()),
            qos: Arc::new(GatewayQos {
                rpc: AtomicU8::new(NOT_SUBSCRIBED),
                attributes: AtomicU8::new(NOT_SUBSCRIBED),
            }),
        }
    }

    /// Devices connected through it, once those pushed out by a newer session of theirs are
    /// let go (so they hold no places); called at the quota only, as it looks at them all.
    fn len_at_quota(&self, max: usize) -> usize {
        let mut devices = self.devices.borrow_mut();
        if devices.len() >= max {
            devices.retain(|_, sub| !sub.subscription.is_ended());
        }
        devices.len()
    }

    /// Handles a PUBLISH on a `v1/gateway/...` topic.
    pub(super) async fn publish(
        &self,
        conn: &Connection,
        topic: &str,
        payload: &[u8],
    ) -> Published {
        // `mqtt.max_payload_size` holds for the whole message, as for a device's own.
        let max = conn.ctx().ingress.max_payload();
        if payload.len() > max {
            let r = Rejection::TooLarge {
                size: payload.len(),
                max,
            };
            count_refused(&r);
            return Published::Refused(r);
        }
        match topic {
            TELEMETRY_TOPIC => self.data(conn, Uplink::Telemetry, payload).await,
            ATTRIBUTES_TOPIC => self.data(conn, Uplink::Attributes, payload).await,
            CONNECT_TOPIC => match Connect::parse(payload) {
                Ok(connect) => {
                    match self
                        .resolve(conn, &connect.device, connect.device_type.as_deref())
                        .await
                    {
                        Ok(_) => Published::Queued,
                        Err(r) => {
                            count_refused(&r);
                            refused_whole(r)
                        }
                    }
                }
                Err(e) => bad(e),
            },
            DISCONNECT_TOPIC => match gateway::parse_disconnect(payload) {
                // Unknown or not connected names are ignored, as by ThingsBoard.
                Ok(name) => {
                    let gone = self.devices.borrow_mut().remove(&name);
                    if gone.is_some() {
                        peer_event!(DEBUG, gateway = ?conn.device().name, device = ?name, "gateway device disconnected");
                    }
                    Published::Queued
                }
                Err(e) => bad(e),
            },
            ATTRIBUTES_REQUEST_TOPIC => self.attribute_request(conn, payload).await,
            RPC_TOPIC => self.rpc_reply(conn, payload).await,
            CLAIM_TOPIC => self.claims(conn, payload).await,
            _ => {
                counter!(MESSAGES_REJECTED, "transport" => Transport::MqttGateway.as_str(), "reason" => "unknown_topic")
                    .increment(1);
                peer_event!(WARN, gateway = ?conn.device().name, ?topic, "publish to an unsupported gateway topic ignored");
                Published::UnknownTopic
            }
        }
    }

    /// The device connected through the gateway under `name`, unless a newer session of the
    /// device pushed it out (then it is let go).
    fn connected(&self, name: &str) -> Option<Rc<SubDevice>> {
        let mut devices = self.devices.borrow_mut();
        match devices.get(name) {
            Some(known) if known.subscription.is_ended() => {
                devices.remove(name);
                None
            }
            known => known.cloned(),
        }
    }

    /// The device the gateway names, connected through it from now on: found in the gateway's
    /// tenant, or created.
    async fn resolve(
        &self,
        conn: &Connection,
        name: &str,
        device_type: Option<&str>,
    ) -> Result<Rc<SubDevice>, Rejection> {
        if let Some(known) = self.connected(name) {
            return Ok(known);
        }
        if name == conn.device().name {
            // Its session for itself would push out its own connection.
            return Err(refused(
                "gateway naming itself",
                "the name of a device behind the gateway",
            ));
        }
        if validate_device_name(name).is_err() {
            return Err(refused(
                "device name that cannot be a device's",
                "a device name of 1 to 255 characters",
            ));
        }
        let ctx = conn.ctx();
        if self.len_at_quota(ctx.gateway_max_devices) >= ctx.gateway_max_devices {
            return Err(Rejection::Quota(QuotaError::TooManyGatewayDevices {
                max: ctx.gateway_max_devices,
            }));
        }
        let gateway_device = conn.device();
        let tenant = gateway_device.tenant_id;
        let unavailable =
            |e: RegistryError| Rejection::Queue(QueueError::Unavailable(e.to_string()));
        let device = match ctx
            .registry
            .by_name(tenant, name)
            .await
            .map_err(unavailable)?
        {
            Some(device) => device,
            None => {
                let device_type = match device_type {
                    Some(t) if validate_name("device type", t, MAX_DEVICE_TYPE_CHARS).is_err() => {
                        return Err(refused(
                            "device type that cannot be a profile's name",
                            "a type of at most 255 characters",
                        ));
                    }
                    Some(t) => t.to_owned(),
                    None => "default".to_owned(),
                };
                let new = Device {
                    id: DeviceId::derive(tenant, name),
                    tenant_id: tenant,
                    name: name.to_owned(),
                    device_type,
                    label: None,
                    token: AccessToken(crate::api::device::new_token()),
                    created_time: now_ms(),
                    additional_info: Some(
                        serde_json::json!({"lastConnectedGateway": gateway_device.id.0})
                            .to_string(),
                    ),
                };
                match ctx.registry.create(new).await {
                    Ok(created) => {
                        peer_event!(DEBUG, gateway = ?gateway_device.name, device = ?name, "device created by its gateway");
                        created
                    }
                    // Made meanwhile (by this gateway's other message, or elsewhere).
                    Err(RegistryError::DuplicateName) => ctx
                        .registry
                        .by_name(tenant, name)
                        .await
                        .map_err(unavailable)?
                        .ok_or_else(|| {
                            Rejection::Queue(QueueError::Unavailable(
                                "a device made and gone at once".into(),
                            ))
                        })?,
                    Err(RegistryError::TooManyDevices { limit }) => {
                        return Err(Rejection::Quota(QuotaError::TooManyTenantDevices {
                            max: limit,
                        }));
                    }
                    Err(RegistryError::DuplicateToken) => {
                        return Err(Rejection::Queue(QueueError::Unavailable(
                            "a new token clashed".into(),
                        )));
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
        };
        let device = mark_gateway(ctx, device, gateway_device).await;
        // A concurrent message may have connected it meanwhile.
        if let Some(known) = self.connected(name) {
            return Ok(known);
        }
        if self.len_at_quota(ctx.gateway_max_devices) >= ctx.gateway_max_devices {
            return Err(Rejection::Quota(QuotaError::TooManyGatewayDevices {
                max: ctx.gateway_max_devices,
            }));
        }
        let Some(place) = ctx.gateway_devices.take() else {
            return Err(Rejection::Quota(QuotaError::TooManyGatewayDevices {
                max: ctx.gateway_devices.max,
            }));
        };
        let sink = Arc::new(SubDeviceSink {
            outbound: conn.outbound().clone(),
            device: device.clone(),
            qos: self.qos.clone(),
            downlinks: ctx.downlinks.clone(),
        });
        let session = SessionHandle::open(
            ctx.supervisor.clone(),
            SessionArgs {
                device: device.clone(),
                ingress: ctx.ingress.clone(),
                transport: Transport::MqttGateway,
                outbound: conn.outbound().clone(),
            },
            ctx.receive_maximum.into(),
        );
        let subscription = Arc::new(Subscription {
            device: device.clone(),
            sink: sink.clone(),
            downlinks: ctx.downlinks.clone(),
            id: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        });
        // A seat among the device's sessions: past `mqtt.max_connections_per_device` (1 by
        // default) the oldest goes, be it the device's own connection or another gateway's.
        let seat = conn
            .admission()
            .seat(&device, Holder::Gateway(subscription.clone()));
        // Connected: it takes shared attribute changes and RPC, and gets the RPCs waiting for
        // it (ThingsBoard subscribes a gateway's device to both at once).
        let sink_dyn: Arc<dyn SessionSink> = sink;
        let id = ctx
            .downlinks
            .subscriptions(&device, 0, true, true, &sink_dyn);
        // SeqCst here and in `Subscription`: of this store and the push-out's swap, whichever
        // comes second sees the other, so one of the two always unsubscribes.
        subscription.id.store(id, Ordering::SeqCst);
        if subscription.is_ended() {
            // Pushed out before it had its id: the subscription just made ends too.
            subscription.unsubscribe();
        }
        let sub = Rc::new(SubDevice {
            device: device.clone(),
            session,
            _place: place,
            subscription,
            _seat: seat,
        });
        self.devices
            .borrow_mut()
            .insert(name.to_owned(), sub.clone());
        peer_event!(DEBUG, gateway = ?gateway_device.name, device = ?name, "gateway device connected");
        Ok(sub)
    }

    /// `v1/gateway/telemetry` (each device's part an array) and `v1/gateway/attributes`
    /// (each an object): every part handed to its device's session, acknowledged once all are
    /// queued.
    async fn data(&self, conn: &Connection, uplink: Uplink, payload: &[u8]) -> Published {
        let parts = match gateway::parts(payload) {
            Ok(parts) => parts,
            Err(e) => return bad(e),
        };
        let mut first_refusal: Option<Rejection> = None;
        let mut taken: Vec<Accepted> = Vec::with_capacity(parts.len());
        // `counted`: the uplink path counted it already.
        let mut refuse = |rejection: Rejection, name: &str, counted: bool| {
            if !counted {
                count_refused(&rejection);
            }
            peer_event!(DEBUG, gateway = ?conn.device().name, device = ?name, error = %rejection, "a gateway device's data refused");
            if first_refusal.is_none() {
                first_refusal = Some(rejection);
            }
        };
        let handover = self.handover.lock().await;
        for (name, part) in &parts {
            let fits = match uplink {
                Uplink::Telemetry => gateway::is_array(part),
                Uplink::Attributes => gateway::is_object(part),
            };
            if !fits {
                refuse(
                    refused(
                        "device part of the wrong shape",
                        match uplink {
                            Uplink::Telemetry => "an array of telemetry per device",
                            Uplink::Attributes => "an object of attributes per device",
                        },
                    ),
                    name,
                    false,
                );
                continue;
            }
            let sub = match self.resolve(conn, name, None).await {
                Ok(sub) => sub,
                Err(r @ Rejection::Queue(_)) => return Published::Refused(r),
                Err(r) => {
                    refuse(r, name, false);
                    continue;
                }
            };
            match sub.session.publish(uplink, part.get().as_bytes()).await {
                Ok(accepted) => taken.push(accepted),
                Err(SessionError::Rejected(r @ Rejection::Queue(_))) => {
                    return Published::Refused(r);
                }
                Err(SessionError::Rejected(r)) => refuse(r, name, true),
                Err(SessionError::Gone) => {
                    return Published::Refused(Rejection::Queue(QueueError::Unavailable(
                        "a gateway device's session is gone".into(),
                    )));
                }
            }
        }
        drop(handover);
        let nothing_taken = taken.is_empty();
        for accepted in taken {
            match accepted.confirmed().await {
                Ok(()) => {}
                Err(r @ Rejection::Queue(_)) => return Published::Refused(r),
                Err(r) => refuse(r, "?", true),
            }
        }
        match first_refusal {
            None => Published::Queued,
            // Nothing of the message was taken: refused as a whole (ThingsBoard: a message no
            // entry of which survives is invalid).
            Some(r) if nothing_taken => refused_whole(r),
            Some(r) => Published::PartlyRefused(r),
        }
    }

    /// `v1/gateway/attributes/request`: the answer on `v1/gateway/attributes/response`, at the
    /// gateway's subscription QoS (QoS 1 without one).
    async fn attribute_request(&self, conn: &Connection, payload: &[u8]) -> Published {
        let request = match GatewayAttributeRequest::parse(payload) {
            Ok(request) => request,
            Err(e) => return bad(e),
        };
        let sub = match self.resolve(conn, &request.device, None).await {
            Ok(sub) => sub,
            Err(r) => return refused_whole(r),
        };
        let read = crate::transport::requested_attributes(
            &*conn.ctx().store,
            sub.device.id,
            &request.request,
        )
        .await;
        let (client, shared) = match read {
            Ok(found) => found,
            Err(e) => {
                peer_event!(WARN, gateway = ?conn.device().name, error = %e, "gateway attribute request not answered: storage failed");
                return Published::Queued;
            }
        };
        let downlink = Downlink {
            topic: ATTRIBUTES_RESPONSE_TOPIC.to_owned(),
            payload: gateway::attribute_response(&request, &client, &shared).into_bytes(),
            qos: conn.answer_qos(ATTRIBUTES_RESPONSE_TOPIC),
            tracked: None,
        };
        conn.answer(downlink).await;
        Published::Queued
    }

    /// `v1/gateway/rpc` from the gateway: a device's reply, for the owner of its state.
    async fn rpc_reply(&self, conn: &Connection, payload: &[u8]) -> Published {
        let reply = match RpcReply::parse(payload) {
            Ok(reply) => reply,
            Err(e) => return bad(e),
        };
        let max = conn.ctx().ingress.max_payload();
        if reply.data.len() > max {
            return Published::Refused(Rejection::TooLarge {
                size: reply.data.len(),
                max,
            });
        }
        let sub = match self.resolve(conn, &reply.device, None).await {
            Ok(sub) => sub,
            Err(r) => return refused_whole(r),
        };
        match conn
            .ctx()
            .downlinks
            .reply(&sub.device, reply.id, reply.data.into_bytes())
            .await
        {
            Ok(()) => Published::Queued,
            Err(e) => Published::Refused(Rejection::Queue(e)),
        }
    }

    /// `v1/gateway/claim`: `{"A":{"secretKey":..,"durationMs":..}}`, a claim request per
    /// device, kept as a device's own would be.
    async fn claims(&self, conn: &Connection, payload: &[u8]) -> Published {
        let parts = match gateway::parts(payload) {
            Ok(parts) => parts,
            Err(e) => return bad(e),
        };
        let mut first_refusal = None;
        let _handover = self.handover.lock().await;
        for (name, part) in &parts {
            let outcome = match ClaimRequest::parse(part.get().as_bytes()) {
                Err(e) => bad(e),
                Ok(request) => match self.resolve(conn, name, None).await {
                    Ok(sub) => conn.keep_claim(sub.device.id, request).await,
                    Err(r) => Published::Refused(r),
                },
            };
            match outcome {
                Published::Refused(r @ Rejection::Queue(_)) => return Published::Refused(r),
                Published::Refused(r) => {
                    count_refused(&r);
                    first_refusal.get_or_insert(r);
                }
                _ => {}
            }
        }
        match first_refusal {
            None => Published::Queued,
            Some(r) if parts.len() == 1 => refused_whole(r),
            Some(r) => Published::PartlyRefused(r),
        }
    }
}
