//! ThingsBoard's MQTT device API on ntex-mqtt: MQTT 3.1.1 and 5 on one listener.
//!
//! CONNECT carries the device's access token as username: empty → 0x04 (MQTT 5: 0x86), unknown
//! → 0x05 (0x87). Each accepted connection gets a `DeviceSession` actor, spawned on the network
//! worker's own runtime so a publish never changes threads. PUBLISH to
//! `v1/devices/me/telemetry` or `v1/devices/me/attributes` is acknowledged only once the queue
//! has the message; at most `receive_maximum` are in flight per connection, past which the
//! socket is not read. A bad payload closes an MQTT 3.1.1 connection (ThingsBoard's behaviour)
//! and gets an MQTT 5 PUBACK with reason 0x99 (0x97 when too large).
//!
//! ntex runs its own runtime, so the server lives on its own thread with an ntex `System`.

use std::io;
use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use actors::ingress::{Ingress, Rejection, Transport, Uplink};
use actors::metrics::{CONNECTIONS_REFUSED, MESSAGES_REJECTED};
use actors::model::Device;
use actors::ports::DeviceRegistry;
use actors::session::{SessionArgs, SessionError, SessionHandle};
use metrics::counter;
use ntex::service::cfg::SharedCfg;
use ntex::util::Bytes;
use ntex_mqtt::v5::codec::PublishAckReason;
use ntex_mqtt::{MqttServiceConfig, QoS, v3, v5};
use ractor::ActorCell;
use tracing::{debug, info, warn};

use crate::config::{MqttConfig, bytes};

pub const TELEMETRY_TOPIC: &str = "v1/devices/me/telemetry";
pub const ATTRIBUTES_TOPIC: &str = "v1/devices/me/attributes";

/// Topic filters a device may subscribe to (ThingsBoard's server-to-device topics).
const SUBSCRIBABLE: &[&str] = &[
    "v1/devices/me/attributes",
    "v1/devices/me/attributes/response/+",
    "v1/devices/me/rpc/request/+",
    "v1/devices/me/rpc/response/+",
];

fn uplink_of(topic: &str) -> Option<Uplink> {
    match topic {
        TELEMETRY_TOPIC => Some(Uplink::Telemetry),
        ATTRIBUTES_TOPIC => Some(Uplink::Attributes),
        _ => None,
    }
}

/// What every connection handler needs; shared by all network workers.
pub struct MqttContext {
    pub registry: Arc<dyn DeviceRegistry>,
    pub ingress: Arc<Ingress>,
    pub supervisor: ActorCell,
    pub receive_maximum: u16,
}

/// The state ntex keeps per connection.
pub struct Connection {
    device: Arc<Device>,
    session: SessionHandle<Bytes>,
    /// Publishes received and not yet answered. A DISCONNECT waits for them: ntex drops
    /// unfinished publish handlers when the connection closes, and a QoS 0 message sent just
    /// before DISCONNECT (what `mosquitto_pub -m` does) must still be stored.
    in_flight: InFlight,
}

#[derive(Default)]
struct InFlight {
    count: std::cell::Cell<usize>,
}

struct InFlightGuard<'a>(&'a InFlight);

impl InFlight {
    fn enter(&self) -> InFlightGuard<'_> {
        self.count.set(self.count.get() + 1);
        InFlightGuard(self)
    }

    /// Waits until no publish is in flight, or `limit` passed. A publish ntex has received may
    /// not have started yet: ntex polls it when the connection's dispatcher wakes, so wait in
    /// short timer ticks (each wakes the dispatcher) and stop after two quiet ones.
    async fn settle(&self, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut quiet = 0;
        while quiet < 2 && std::time::Instant::now() < deadline {
            quiet = if self.count.get() == 0 { quiet + 1 } else { 0 };
            ntex::time::sleep(ntex::time::Millis(1)).await;
        }
    }
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get().saturating_sub(1));
    }
}

/// Why a connection is closed; ntex logs it, we count it where it happens.
#[derive(Debug)]
pub enum Fault {
    Rejected(Rejection),
    SessionGone,
    Protocol(String),
}

impl From<()> for Fault {
    fn from((): ()) -> Self {
        Fault::Protocol("connection failed".into())
    }
}

impl TryFrom<Fault> for v5::PublishAck {
    type Error = Fault;

    fn try_from(fault: Fault) -> Result<Self, Fault> {
        Err(fault)
    }
}

enum Login {
    Device(Arc<Device>),
    EmptyToken,
    UnknownToken,
    Unavailable,
}

impl MqttContext {
    async fn login(&self, username: Option<&str>) -> Login {
        let token = username.unwrap_or_default();
        if token.is_empty() {
            counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "empty_token")
                .increment(1);
            return Login::EmptyToken;
        }
        match self.registry.by_token(token).await {
            Ok(Some(device)) => Login::Device(device),
            Ok(None) => {
                counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "bad_token")
                    .increment(1);
                debug!("mqtt connect with an unknown access token refused");
                Login::UnknownToken
            }
            Err(e) => {
                warn!(error = %e, "device registry unavailable, connect refused");
                Login::Unavailable
            }
        }
    }

    fn open(&self, device: Arc<Device>) -> Connection {
        let args = SessionArgs {
            device: device.clone(),
            ingress: self.ingress.clone(),
            transport: Transport::Mqtt,
        };
        let session =
            SessionHandle::open(self.supervisor.clone(), args, self.receive_maximum.into());
        debug!(device = %device.name, "mqtt session opened");
        Connection {
            device,
            session,
            in_flight: InFlight::default(),
        }
    }
}

impl Connection {
    /// The device sent PINGREQ: a keep-alive period passed without a publish. Its session actor
    /// is passivated unless a publish is still being handled.
    fn idle(&self) {
        if self.in_flight.count.get() == 0 && self.session.hibernate() {
            debug!(device = %self.device.name, "mqtt session hibernates");
        }
    }
}

fn unknown_topic(device: &Device, topic: &str) {
    counter!(MESSAGES_REJECTED, "transport" => "mqtt", "reason" => "unknown_topic").increment(1);
    warn!(device = %device.name, topic, "publish to an unsupported topic ignored");
}

/// Runs one publish through the session; `Ok` once the queue holds it.
async fn deliver(conn: &Connection, uplink: Uplink, payload: Bytes) -> Result<(), Fault> {
    match conn.session.publish(uplink, payload).await {
        Ok(accepted) => accepted.confirmed().await.map_err(Fault::Rejected),
        Err(SessionError::Rejected(rejection)) => Err(Fault::Rejected(rejection)),
        Err(SessionError::Gone) => Err(Fault::SessionGone),
    }
}

async fn read_payload<F>(read: F) -> Result<Bytes, Fault>
where
    F: Future<Output = Result<Bytes, ntex_mqtt::error::PayloadError>>,
{
    read.await
        .map_err(|e| Fault::Protocol(format!("payload: {e}")))
}

// --- MQTT 3.1.1 --------------------------------------------------------------------------------

async fn handshake_v3(
    ctx: Arc<MqttContext>,
    hs: v3::Handshake,
) -> Result<v3::HandshakeAck<Connection>, Fault> {
    let username = hs.packet().username.as_ref().map(|u| u.as_str().to_owned());
    Ok(match ctx.login(username.as_deref()).await {
        Login::Device(device) => hs.ack(ctx.open(device), false),
        Login::EmptyToken => hs.bad_username_or_pwd(),
        Login::UnknownToken => hs.not_authorized(),
        Login::Unavailable => hs.service_unavailable(),
    })
}

async fn publish_v3(session: v3::Session<Connection>, publish: v3::Publish) -> Result<(), Fault> {
    let conn: &Connection = &session;
    let _in_flight = conn.in_flight.enter();
    let Some(uplink) = uplink_of(publish.publish_topic()) else {
        // ThingsBoard acknowledges and drops publishes to topics it does not serve.
        unknown_topic(&conn.device, publish.publish_topic());
        return Ok(());
    };
    let payload = read_payload(publish.read_all()).await?;
    // MQTT 3.1.1 has no way to refuse one message: a bad one closes the connection.
    deliver(conn, uplink, payload).await
}

/// How long a DISCONNECT waits for the connection's publishes to be handed over.
const SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn protocol_v3(
    session: v3::Session<Connection>,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, Fault> {
    Ok(match msg {
        v3::ProtocolMessage::Subscribe(mut subscribe) => {
            for mut sub in subscribe.iter_mut() {
                if SUBSCRIBABLE.contains(&sub.topic().as_str()) {
                    let qos = sub.qos().min(QoS::AtLeastOnce);
                    sub.confirm(qos);
                } else {
                    sub.fail();
                }
            }
            subscribe.ack()
        }
        v3::ProtocolMessage::Unsubscribe(unsubscribe) => unsubscribe.ack(),
        v3::ProtocolMessage::PublishRelease(release) => release.ack(),
        v3::ProtocolMessage::Ping(ping) => {
            session.idle();
            ping.ack()
        }
        v3::ProtocolMessage::Disconnect(disconnect) => {
            session.in_flight.settle(SETTLE_LIMIT).await;
            disconnect.ack()
        }
    })
}

/// Connection-level events. When the peer is gone, publishes it sent before closing are still
/// handed over before ntex drops them.
async fn control_v3(
    session: v3::Session<Connection>,
    msg: ntex_mqtt::Control<Fault>,
) -> Result<Option<v3::codec::Encoded>, Fault> {
    if let ntex_mqtt::Control::Stop(reason) = msg {
        stopped(&session, reason).await;
    }
    Ok(None)
}

async fn stopped(conn: &Connection, reason: ntex_mqtt::Reason<Fault>) {
    match reason {
        ntex_mqtt::Reason::PeerGone(_) => conn.in_flight.settle(SETTLE_LIMIT).await,
        ntex_mqtt::Reason::Error(e) => {
            debug!(device = %conn.device.name, error = ?e, "mqtt connection closed")
        }
        ntex_mqtt::Reason::Protocol(e) => {
            debug!(device = %conn.device.name, error = ?e, "mqtt protocol error, connection closed");
        }
    }
}

// --- MQTT 5 ------------------------------------------------------------------------------------

async fn handshake_v5(
    ctx: Arc<MqttContext>,
    hs: v5::Handshake,
) -> Result<v5::HandshakeAck<Connection>, Fault> {
    use v5::codec::ConnectAckReason as Reason;
    let username = hs.packet().username.as_ref().map(|u| u.as_str().to_owned());
    Ok(match ctx.login(username.as_deref()).await {
        // QoS 2 is granted as 1: MQTT 5 clients learn it from CONNACK's Maximum QoS.
        Login::Device(device) => hs
            .ack(ctx.open(device))
            .with(|ack| ack.max_qos = QoS::AtLeastOnce),
        Login::EmptyToken => hs.failed(Reason::BadUserNameOrPassword),
        Login::UnknownToken => hs.failed(Reason::NotAuthorized),
        Login::Unavailable => hs.failed(Reason::ServerUnavailable),
    })
}

async fn publish_v5(
    session: v5::Session<Connection>,
    publish: v5::Publish,
) -> Result<v5::PublishAck, Fault> {
    let conn: &Connection = &session;
    let _in_flight = conn.in_flight.enter();
    let Some(uplink) = uplink_of(publish.publish_topic()) else {
        unknown_topic(&conn.device, publish.publish_topic());
        return Ok(publish
            .ack()
            .reason_code(PublishAckReason::TopicNameInvalid));
    };
    let payload = read_payload(publish.read_all()).await?;
    match deliver(conn, uplink, payload).await {
        Ok(()) => Ok(publish.ack()),
        Err(Fault::Rejected(Rejection::TooLarge { .. } | Rejection::Quota(_))) => {
            Ok(publish.ack().reason_code(PublishAckReason::QuotaExceeded))
        }
        Err(Fault::Rejected(Rejection::Payload(_))) => Ok(publish
            .ack()
            .reason_code(PublishAckReason::PayloadFormatInvalid)),
        Err(fault) => Err(fault),
    }
}

async fn protocol_v5(
    session: v5::Session<Connection>,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, Fault> {
    use v5::codec::SubscribeAckReason;
    Ok(match msg {
        v5::ProtocolMessage::Subscribe(mut subscribe) => {
            for mut sub in subscribe.iter_mut() {
                if SUBSCRIBABLE.contains(&sub.topic().as_str()) {
                    let qos = sub.options().qos.min(QoS::AtLeastOnce);
                    sub.confirm(qos);
                } else {
                    sub.fail(SubscribeAckReason::TopicFilterInvalid);
                }
            }
            subscribe.ack()
        }
        v5::ProtocolMessage::Unsubscribe(unsubscribe) => unsubscribe.ack(),
        v5::ProtocolMessage::PublishRelease(release) => release.ack(),
        v5::ProtocolMessage::Ping(ping) => {
            session.idle();
            ping.ack()
        }
        v5::ProtocolMessage::Disconnect(disconnect) => {
            session.in_flight.settle(SETTLE_LIMIT).await;
            disconnect.ack()
        }
        // Enhanced authentication is not offered; a client that tries it is disconnected.
        msg @ v5::ProtocolMessage::Auth(_) => msg.disconnect(),
    })
}

async fn control_v5(
    session: v5::Session<Connection>,
    msg: ntex_mqtt::Control<Fault>,
) -> Result<Option<v5::codec::Encoded>, Fault> {
    if let ntex_mqtt::Control::Stop(reason) = msg {
        stopped(&session, reason).await;
    }
    Ok(None)
}

// --- the server --------------------------------------------------------------------------------

/// The per-connection service ntex builds from the connection's session: each request goes to
/// `handler` together with that session.
fn per_session<S, Req, Res, Fut>(
    handler: fn(S, Req) -> Fut,
) -> impl ntex::service::ServiceFactory<Req, S, Response = Res, Error = Fault, InitError = Fault>
where
    S: Clone + 'static,
    Req: 'static,
    Fut: Future<Output = Result<Res, Fault>> + 'static,
{
    ntex::service::fn_factory_with_config(move |session: S| {
        ntex::util::Ready::Ok::<_, Fault>(ntex::service::fn_service(move |req| {
            handler(session.clone(), req)
        }))
    })
}

pub struct MqttServer {
    server: ntex::server::Server,
    thread: Option<JoinHandle<()>>,
}

impl MqttServer {
    /// Starts serving on `listener` (already bound, so tests can use port 0).
    pub fn start(
        listener: TcpListener,
        config: &MqttConfig,
        ctx: Arc<MqttContext>,
    ) -> io::Result<MqttServer> {
        let workers = if config.workers == 0 {
            num_cpus()
        } else {
            config.workers
        };
        let max_payload = u32::try_from(bytes(config.max_payload_size)).unwrap_or(u32::MAX);
        // Frames a little over the payload limit are read so the uplink path can refuse them
        // with the protocol's own answer; anything bigger is a protocol error.
        let service_cfg = MqttServiceConfig::new()
            .set_max_qos(QoS::ExactlyOnce)
            // A publish received just before the client closed (mosquitto_pub sends PUBLISH,
            // DISCONNECT and closes at once) is still handled; the client got no PUBACK, so
            // nothing is promised, but a device expects it stored.
            .set_handle_qos_after_disconnect(Some(QoS::ExactlyOnce))
            .set_max_size(max_payload.saturating_add(64 * 1024))
            .set_max_receive(config.receive_maximum)
            .set_max_receive_size(
                usize::try_from(max_payload)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(4),
            )
            .set_connect_timeout(ntex::time::Seconds(
                u16::try_from(config.connect_timeout.as_secs()).unwrap_or(u16::MAX),
            ))
            .set_handshake_timeout(ntex::time::Seconds(
                u16::try_from(config.connect_timeout.as_secs()).unwrap_or(u16::MAX),
            ));
        let grace = ntex::time::Millis(
            u32::try_from(config.shutdown_grace.as_millis()).unwrap_or(u32::MAX),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || {
                let system = ntex::rt::System::build()
                    .name("mqtt")
                    .disable_signals()
                    .build(ntex::rt::DefaultRuntime);
                system.block_on(async move {
                    let built = ntex::server::build()
                        .workers(workers)
                        .disable_signals()
                        .shutdown_timeout(grace)
                        .listen("mqtt", listener, move |_| {
                            let (c3, c5) = (ctx.clone(), ctx.clone());
                            async move {
                                ntex_mqtt::MqttServer::new()
                                    .v3(v3::MqttServer::new(move |hs| handshake_v3(c3.clone(), hs))
                                        .protocol(per_session(protocol_v3))
                                        .control(per_session(control_v3))
                                        .publish(per_session(publish_v3)))
                                    .v5(v5::MqttServer::new(move |hs| handshake_v5(c5.clone(), hs))
                                        .protocol(per_session(protocol_v5))
                                        .control(per_session(control_v5))
                                        .publish(per_session(publish_v5)))
                            }
                        });
                    match built {
                        Ok(builder) => {
                            let server = builder
                                .config("mqtt", SharedCfg::new("MQTT").add(service_cfg))
                                .run();
                            let _ = tx.send(Ok(server.clone()));
                            let _ = server.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        let server = rx
            .recv()
            .map_err(|_| io::Error::other("mqtt server thread died at start"))??;
        info!(workers, "mqtt server started");
        Ok(MqttServer {
            server,
            thread: Some(thread),
        })
    }

    /// Stops accepting, gives open connections the grace period, closes them, and returns once
    /// the server thread ended.
    pub async fn stop(mut self) {
        self.server.stop(true).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_device_api_topics_are_uplinks() {
        assert_eq!(
            uplink_of("v1/devices/me/telemetry"),
            Some(Uplink::Telemetry)
        );
        assert_eq!(
            uplink_of("v1/devices/me/attributes"),
            Some(Uplink::Attributes)
        );
        assert_eq!(uplink_of("v1/devices/me/telemetry/"), None);
        assert_eq!(uplink_of("v1/devices/me/attributes/request/1"), None);
        assert_eq!(uplink_of("other"), None);
    }
}
