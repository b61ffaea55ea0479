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
//! Before ntex-mqtt reads a connection, the listener peeks at its first bytes: a CONNECT of a
//! protocol level other than 4 or 5 gets CONNACK 0x01, one past `max_connections` gets 0x03
//! (MQTT 5: 0x97). A device holds at most `max_connections_per_device` sessions; a new one
//! closes the oldest (ThingsBoard's behaviour). A second CONNECT, a PUBLISH topic that is empty,
//! holds U+0000 or a wildcard close the connection (MQTT 5 with the DISCONNECT reason the spec
//! names). Log lines a peer can trigger go through one rate limit per process.
//!
//! ntex runs its own runtime, so the server lives on its own thread with an ntex `System`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use actors::ingress::{Ingress, Rejection, Transport, Uplink};
use actors::metrics::{
    CONNECTIONS_REFUSED, MESSAGES_REJECTED, MQTT_CONNECTIONS_OPEN, MQTT_LOG_LINES_SUPPRESSED,
    MQTT_PROTOCOL_ERRORS, MQTT_SESSIONS_TAKEN_OVER,
};
use actors::model::{Device, DeviceId};
use actors::ports::DeviceRegistry;
use actors::session::{SessionArgs, SessionError, SessionHandle};
use metrics::{counter, gauge};
use ntex::io::Io;
use ntex::service::cfg::SharedCfg;
use ntex::service::dev::ApplyCtx;
use ntex::service::{Middleware, Service, ServiceCtx};
use ntex::util::{Bytes, BytesMut};
use ntex_mqtt::error::{DispatcherError, ProtocolError};
use ntex_mqtt::v5::codec::{DisconnectReasonCode, PublishAckReason};
use ntex_mqtt::{MqttServiceConfig, QoS, v3, v5};
use ractor::ActorCell;
use tokio::sync::oneshot;
use tracing::{Level, info, warn};

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

/// The uplink a device PUBLISH topic carries; `None` for a topic the device API does not take.
pub fn uplink_of(topic: &str) -> Option<Uplink> {
    match topic {
        TELEMETRY_TOPIC => Some(Uplink::Telemetry),
        ATTRIBUTES_TOPIC => Some(Uplink::Attributes),
        _ => None,
    }
}

// --- logs a peer can trigger ---------------------------------------------------------------------

/// Logs an event a peer can cause (one per packet or per connection) within the process's
/// budget for such lines. Peer-controlled values are given as `?` fields (escaped).
macro_rules! peer_event {
    ($level:ident, $($field:tt)+) => {
        if tracing::enabled!(Level::$level) && peer_log_admitted() {
            tracing::event!(Level::$level, $($field)+);
        }
    };
}

/// A token bucket for the log lines peers can trigger: `BURST` lines at once, then one per
/// `REFILL`. Lines held back are counted, and their number is logged in one line at most every
/// `REPORT_EVERY`, at the next line a peer triggers.
struct LogBudget {
    tokens: u32,
    refilled: Instant,
    suppressed: u64,
    reported: Option<Instant>,
}

impl LogBudget {
    const BURST: u32 = 20;
    const REFILL: Duration = Duration::from_secs(1);
    const REPORT_EVERY: Duration = Duration::from_secs(10);

    fn new(now: Instant) -> LogBudget {
        LogBudget {
            tokens: Self::BURST,
            refilled: now,
            suppressed: 0,
            reported: None,
        }
    }

    /// Whether a line may go out at `now`, and how many held-back lines to report first
    /// (0: none).
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let periods =
            now.saturating_duration_since(self.refilled).as_millis() / Self::REFILL.as_millis();
        if periods > 0 {
            let periods = u32::try_from(periods).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(periods).min(Self::BURST);
            self.refilled = if self.tokens == Self::BURST {
                now
            } else {
                // Fewer than BURST periods passed: no overflow.
                self.refilled + Self::REFILL * periods
            };
        }
        let admitted = self.tokens > 0;
        if admitted {
            self.tokens -= 1;
        } else {
            self.suppressed += 1;
        }
        let due = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= Self::REPORT_EVERY);
        if self.suppressed > 0 && due {
            self.reported = Some(now);
            (admitted, std::mem::take(&mut self.suppressed))
        } else {
            (admitted, 0)
        }
    }
}

static PEER_LOGS: LazyLock<Mutex<LogBudget>> =
    LazyLock::new(|| Mutex::new(LogBudget::new(Instant::now())));

/// Takes one line from the process's budget of peer-triggered log lines.
fn peer_log_admitted() -> bool {
    let (admitted, report) = PEER_LOGS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .admit(Instant::now());
    if !admitted {
        counter!(MQTT_LOG_LINES_SUPPRESSED).increment(1);
    }
    if report > 0 {
        warn!(
            suppressed = report,
            "mqtt log lines triggered by peers were suppressed"
        );
    }
    admitted
}

// --- the first bytes of a connection -------------------------------------------------------------

/// The protocol versions served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V3,
    V5,
}

/// CONNACK 0x01, unacceptable protocol version, in the MQTT 3.1.1 form: MQTT 3.1 reads it too,
/// and nothing is known of the form a client of a future level would read.
const CONNACK_UNSUPPORTED_VERSION: [u8; 4] = [0x20, 0x02, 0x00, 0x01];
/// CONNACK 0x03, server unavailable (MQTT 3.1.1).
const CONNACK_UNAVAILABLE_V3: [u8; 4] = [0x20, 0x02, 0x00, 0x03];
/// CONNACK 0x97, quota exceeded, without properties (MQTT 5).
const CONNACK_QUOTA_EXCEEDED_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x97, 0x00];

/// What the start of a connection's first packet says. ntex-mqtt closes a connection whose
/// CONNECT has a protocol level it does not speak, without the CONNACK 0x01 MQTT 3.1.1
/// §3.1.2.2 requires: the listener reads this first.
/// What the first bytes of a connection are, read before ntex-mqtt sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    Mqtt(Version),
    /// A CONNECT of another protocol level (MQTT 3.1's `MQIsdp` level 3 included).
    UnsupportedLevel(u8),
    /// Not an MQTT CONNECT: closed without an answer [MQTT-3.1.0-1], [MQTT-3.1.2-1].
    NotMqtt,
}

/// The fixed header of the packet at the start of `buf`: (header length, remaining length);
/// `None` while incomplete, `Some(Err)` when the length is malformed.
fn fixed_header(buf: &[u8]) -> Option<Result<(usize, usize), ()>> {
    let mut remaining = 0usize;
    for (i, byte) in buf.iter().skip(1).take(4).enumerate() {
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(Ok((i + 2, remaining)));
        }
    }
    (buf.len() >= 5).then_some(Err(()))
}

/// Reads `buf` as the start of a connection; `None` until enough of it arrived.
pub fn opening(buf: &[u8]) -> Option<Opening> {
    if *buf.first()? != 0x10 {
        return Some(Opening::NotMqtt);
    }
    let Ok((header, remaining)) = fixed_header(buf)? else {
        return Some(Opening::NotMqtt);
    };
    let body = &buf[header..];
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    if name_len > 6 || remaining < 2 + name_len + 1 {
        return Some(Opening::NotMqtt);
    }
    let name = body.get(2..2 + name_len)?;
    let level = *body.get(2 + name_len)?;
    Some(match (name, level) {
        (b"MQTT", 4) => Opening::Mqtt(Version::V3),
        (b"MQTT", 5) => Opening::Mqtt(Version::V5),
        (b"MQTT" | b"MQIsdp", level) => Opening::UnsupportedLevel(level),
        _ => Opening::NotMqtt,
    })
}

/// Reads the [`Opening`] without consuming it: ntex-mqtt reads the same bytes next.
struct PeekOpening;

impl ntex::codec::Decoder for PeekOpening {
    type Item = Opening;
    type Error = std::convert::Infallible;

    fn decode(&self, src: &mut BytesMut) -> Result<Option<Opening>, Self::Error> {
        Ok(opening(src))
    }
}

/// Consumes the first packet once it is all there, so that closing after the answer does not
/// reset the connection over unread bytes (the peer could lose the answer).
struct SkipPacket;

impl ntex::codec::Decoder for SkipPacket {
    type Item = ();
    type Error = ();

    fn decode(&self, src: &mut BytesMut) -> Result<Option<()>, ()> {
        match fixed_header(src) {
            None => Ok(None),
            Some(Err(())) => Err(()),
            Some(Ok((header, remaining))) => {
                let len = header.saturating_add(remaining);
                if src.len() < len {
                    return Ok(None);
                }
                let _ = src.split_to(len);
                Ok(Some(()))
            }
        }
    }
}

/// Decides whether ntex-mqtt gets this new connection: `false` once it was answered here or
/// closed. The CONNECT must start within `connect_timeout` (ntex-mqtt gives it as long again
/// to complete).
async fn first_bytes(io: &ntex::io::Io, socket: &Socket, connect_timeout: Duration) -> bool {
    let verdict = ntex::time::timeout(connect_timeout, async {
        let Ok(Some(opening)) = io.recv(&PeekOpening).await else {
            return None;
        };
        let refusal: (&'static [u8], &'static str) = match opening {
            Opening::Mqtt(_) if !socket.past_cap => return Some(None),
            Opening::Mqtt(Version::V3) => (&CONNACK_UNAVAILABLE_V3, "max_connections"),
            Opening::Mqtt(Version::V5) => (&CONNACK_QUOTA_EXCEEDED_V5, "max_connections"),
            Opening::UnsupportedLevel(_) => (&CONNACK_UNSUPPORTED_VERSION, "unsupported_protocol"),
            Opening::NotMqtt => {
                counter!(MQTT_PROTOCOL_ERRORS, "reason" => "not_mqtt").increment(1);
                peer_event!(
                    DEBUG,
                    ?opening,
                    "mqtt connection not starting with a CONNECT closed"
                );
                return None;
            }
        };
        // The whole CONNECT is read before answering, as a client expects.
        io.recv(&SkipPacket).await.ok().flatten()?;
        counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => refusal.1).increment(1);
        peer_event!(
            DEBUG,
            ?opening,
            reason = refusal.1,
            "mqtt connection refused"
        );
        Some(Some(refusal.0))
    })
    .await;
    match verdict {
        Ok(Some(None)) => true,
        Ok(Some(Some(answer))) => {
            if io.encode_slice(answer).is_ok() {
                let _ = ntex::time::timeout(Duration::from_secs(1), io.shutdown()).await;
            }
            false
        }
        // Timed out, closed, or not MQTT: nothing to answer.
        Ok(None) | Err(()) => false,
    }
}

// --- admission: the connection cap and each device's sessions ------------------------------------

/// How many MQTT sockets the open-files limit leaves room for: the limit minus `reserve`, or
/// half the limit when it is too small to keep the whole reserve.
fn socket_budget(open_files: u64, reserve: usize) -> usize {
    let open_files = usize::try_from(open_files).unwrap_or(usize::MAX);
    if open_files / 2 > reserve {
        open_files - reserve
    } else {
        open_files / 2
    }
}

/// `mqtt.max_connections` within the socket budget, leaving a sixteenth of it to answer the
/// connections refused past the cap.
fn connection_cap(configured: usize, budget: usize) -> usize {
    configured.min(budget - budget / 16).max(1)
}

/// Each device's sessions, oldest first; a session past `max` pushes the oldest out.
struct Sessions<T> {
    max: usize,
    next: u64,
    by_device: HashMap<DeviceId, VecDeque<(u64, T)>>,
}

impl<T> Sessions<T> {
    fn new(max: usize) -> Sessions<T> {
        Sessions {
            max,
            next: 0,
            by_device: HashMap::new(),
        }
    }

    /// Adds a session of `device`; returns its id and the sessions it pushed out.
    fn join(&mut self, device: DeviceId, session: T) -> (u64, Vec<T>) {
        let id = self.next;
        self.next += 1;
        let live = self.by_device.entry(device).or_default();
        live.push_back((id, session));
        let mut out = Vec::new();
        while live.len() > self.max {
            out.extend(live.pop_front().map(|(_, session)| session));
        }
        (id, out)
    }

    fn leave(&mut self, device: DeviceId, id: u64) {
        if let Some(live) = self.by_device.get_mut(&device) {
            // Ids only grow, so each device's sessions are sorted by id.
            if let Ok(at) = live.binary_search_by_key(&id, |(i, _)| *i) {
                live.remove(at);
            }
            if live.is_empty() {
                self.by_device.remove(&device);
            }
        }
    }
}

/// Who is connected: the sockets open (behind `mqtt.max_connections`) and each device's
/// sessions (behind `mqtt.max_connections_per_device`). Shared by all network workers.
struct Admission {
    max_connections: usize,
    open: AtomicUsize,
    /// Each session's way to be told to close; the lock is held only to add or remove one.
    sessions: Mutex<Sessions<oneshot::Sender<()>>>,
}

/// A socket being served; counted as open until dropped.
struct Socket {
    admission: Arc<Admission>,
    /// It was accepted with `max_connections` sockets already open.
    past_cap: bool,
}

/// A session's place among its device's; given up when dropped.
struct Seat {
    admission: Arc<Admission>,
    device: DeviceId,
    id: u64,
}

impl Admission {
    fn new(max_connections: usize, max_per_device: usize) -> Admission {
        Admission {
            max_connections,
            open: AtomicUsize::new(0),
            sessions: Mutex::new(Sessions::new(max_per_device)),
        }
    }

    fn accept(self: &Arc<Self>) -> Socket {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        gauge!(MQTT_CONNECTIONS_OPEN).increment(1.0);
        Socket {
            admission: self.clone(),
            past_cap: before >= self.max_connections,
        }
    }

    /// Seats a new session of `device`; the sessions it pushes out are told to close.
    fn seat(self: &Arc<Self>, device: &Device, close: oneshot::Sender<()>) -> Seat {
        let (id, out) = self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join(device.id, close);
        for old in out {
            counter!(MQTT_SESSIONS_TAKEN_OVER).increment(1);
            peer_event!(INFO, device = ?device.name, "mqtt session taken over by a new connection of its device");
            let _ = old.send(());
        }
        Seat {
            admission: self.clone(),
            device: device.id,
            id,
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.admission.open.fetch_sub(1, Ordering::Relaxed);
        gauge!(MQTT_CONNECTIONS_OPEN).decrement(1.0);
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.admission
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leave(self.device, self.id);
    }
}

/// Runs `close` on the connection's own worker (ntex's sink is not `Send`) when a newer session
/// of its device takes over; returns the way to ask for it.
fn on_takeover(close: impl FnOnce() + 'static) -> oneshot::Sender<()> {
    let (tx, rx) = oneshot::channel();
    ntex::rt::spawn(async move {
        // An error: the session ended first and dropped its seat.
        if rx.await.is_ok() {
            close();
        }
    })
    .detach();
    tx
}

// --- protocol checks ntex-mqtt leaves to the server ----------------------------------------------

/// A PUBLISH topic name no server may accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadTopic {
    /// MQTT 3.1.1 §4.7.3 [MQTT-4.7.3-1]; MQTT 5: a protocol error without a Topic Alias.
    Empty,
    /// U+0000 makes the packet malformed: MQTT 3.1.1 §1.5.3, MQTT 5 §1.5.4.
    Nul,
    /// Wildcards are for filters only [MQTT-3.3.2-2] (ntex-mqtt already refuses them).
    Wildcard,
}

impl BadTopic {
    fn of(topic: &str) -> Option<BadTopic> {
        if topic.is_empty() {
            Some(BadTopic::Empty)
        } else if topic.contains('\0') {
            Some(BadTopic::Nul)
        } else if topic.contains(['+', '#']) {
            Some(BadTopic::Wildcard)
        } else {
            None
        }
    }

    fn label(self) -> &'static str {
        match self {
            BadTopic::Empty => "empty_topic",
            BadTopic::Nul => "nul_in_topic",
            BadTopic::Wildcard => "wildcard_in_topic",
        }
    }

    /// The MQTT 5 DISCONNECT reason.
    fn reason(self) -> DisconnectReasonCode {
        match self {
            BadTopic::Nul => DisconnectReasonCode::MalformedPacket,
            BadTopic::Empty | BadTopic::Wildcard => DisconnectReasonCode::ProtocolError,
        }
    }
}

/// Refuses a topic name the protocol forbids; the connection is closed.
fn check_topic(device: &Device, topic: &str) -> Result<(), Fault> {
    match BadTopic::of(topic) {
        None => Ok(()),
        Some(bad) => {
            counter!(MQTT_PROTOCOL_ERRORS, "reason" => bad.label()).increment(1);
            peer_event!(DEBUG, device = ?device.name, ?topic, "mqtt publish to an invalid topic name, connection closed");
            Err(Fault::BadTopic(bad))
        }
    }
}

/// Why [`OneConnect`] closed a connection.
const SECOND_CONNECT: &str = "second CONNECT on a connection [MQTT-3.1.0-2]";

/// Closes a connection that sends CONNECT again [MQTT-3.1.0-2]: ntex-mqtt's dispatchers ignore
/// it. MQTT 5 gets DISCONNECT 0x82 (protocol error).
struct OneConnect;

struct OneConnectService<S> {
    inner: S,
}

impl<S, C> Middleware<S, C> for OneConnect {
    type Service = OneConnectService<S>;

    fn create(&self, inner: S, _: C) -> OneConnectService<S> {
        OneConnectService { inner }
    }
}

impl<S, E> Service<v3::codec::Decoded> for OneConnectService<S>
where
    S: Service<v3::codec::Decoded, Error = DispatcherError<E>>,
{
    type Response = S::Response;
    type Error = S::Error;

    ntex::forward_ready!(inner);
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(
        &self,
        req: v3::codec::Decoded,
        ctx: ServiceCtx<'_, Self>,
    ) -> Result<S::Response, S::Error> {
        if let v3::codec::Decoded::Packet(v3::codec::Packet::Connect(_), _) = req {
            return Err(second_connect());
        }
        ctx.call(&self.inner, req).await
    }
}

impl<S, E> Service<v5::codec::Decoded> for OneConnectService<S>
where
    S: Service<v5::codec::Decoded, Error = DispatcherError<E>>,
{
    type Response = S::Response;
    type Error = S::Error;

    ntex::forward_ready!(inner);
    ntex::forward_poll!(inner);
    ntex::forward_shutdown!(inner);

    async fn call(
        &self,
        req: v5::codec::Decoded,
        ctx: ServiceCtx<'_, Self>,
    ) -> Result<S::Response, S::Error> {
        if let v5::codec::Decoded::Packet(v5::codec::Packet::Connect(_), _) = req {
            return Err(second_connect());
        }
        ctx.call(&self.inner, req).await
    }
}

fn second_connect<E>() -> DispatcherError<E> {
    DispatcherError::Protocol(ProtocolError::generic_violation(SECOND_CONNECT))
}

/// The label of a protocol error ntex-mqtt (or [`OneConnect`]) closed a connection for.
fn protocol_error_label(error: &ProtocolError) -> &'static str {
    match error {
        ProtocolError::ProtocolViolation(v) if v.message() == SECOND_CONNECT => "second_connect",
        ProtocolError::ProtocolViolation(v) if v.message().starts_with("[MQTT-3.3.2-2]") => {
            "wildcard_in_topic"
        }
        ProtocolError::ProtocolViolation(_) => "violation",
        ProtocolError::Decode(_) | ProtocolError::Encode(_) => "malformed",
        ProtocolError::KeepAliveTimeout | ProtocolError::ReadTimeout => "timeout",
    }
}

// --- connections ---------------------------------------------------------------------------------

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
    /// Its place among its device's sessions.
    _seat: Seat,
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
    BadTopic(BadTopic),
    /// MQTT 5 AUTH without an Authentication Method in CONNECT (MQTT 5 §4.12).
    UnexpectedAuth,
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
                peer_event!(DEBUG, "mqtt connect with an unknown access token refused");
                Login::UnknownToken
            }
            Err(e) => {
                counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "unavailable")
                    .increment(1);
                peer_event!(WARN, error = %e, "device registry unavailable, connect refused");
                Login::Unavailable
            }
        }
    }

    fn open(&self, device: Arc<Device>, seat: Seat) -> Connection {
        let args = SessionArgs {
            device: device.clone(),
            ingress: self.ingress.clone(),
            transport: Transport::Mqtt,
        };
        let session =
            SessionHandle::open(self.supervisor.clone(), args, self.receive_maximum.into());
        peer_event!(DEBUG, device = ?device.name, "mqtt session opened");
        Connection {
            device,
            session,
            in_flight: InFlight::default(),
            _seat: seat,
        }
    }
}

impl Connection {
    /// The device sent PINGREQ: a keep-alive period passed without a publish. Its session actor
    /// is passivated unless a publish is still being handled.
    fn idle(&self) {
        if self.in_flight.count.get() == 0 && self.session.hibernate() {
            peer_event!(DEBUG, device = ?self.device.name, "mqtt session hibernates");
        }
    }
}

fn unknown_topic(device: &Device, topic: &str) {
    counter!(MESSAGES_REJECTED, "transport" => "mqtt", "reason" => "unknown_topic").increment(1);
    peer_event!(WARN, device = ?device.name, ?topic, "publish to an unsupported topic ignored");
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
    admission: Arc<Admission>,
    hs: v3::Handshake,
) -> Result<v3::HandshakeAck<Connection>, Fault> {
    let username = hs.packet().username.as_ref().map(|u| u.as_str().to_owned());
    Ok(match ctx.login(username.as_deref()).await {
        Login::Device(device) => {
            let sink = hs.sink();
            let seat = admission.seat(&device, on_takeover(move || sink.close()));
            hs.ack(ctx.open(device, seat), false)
        }
        Login::EmptyToken => hs.bad_username_or_pwd(),
        Login::UnknownToken => hs.not_authorized(),
        Login::Unavailable => hs.service_unavailable(),
    })
}

async fn publish_v3(session: v3::Session<Connection>, publish: v3::Publish) -> Result<(), Fault> {
    let conn: &Connection = &session;
    let _in_flight = conn.in_flight.enter();
    check_topic(&conn.device, publish.publish_topic())?;
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
            peer_event!(DEBUG, device = ?conn.device.name, error = ?e, "mqtt connection closed");
        }
        ntex_mqtt::Reason::Protocol(e) => {
            let label = protocol_error_label(e.get_ref());
            counter!(MQTT_PROTOCOL_ERRORS, "reason" => label).increment(1);
            peer_event!(DEBUG, device = ?conn.device.name, error = ?e, "mqtt protocol error, connection closed");
        }
    }
}

// --- MQTT 5 ------------------------------------------------------------------------------------

async fn handshake_v5(
    ctx: Arc<MqttContext>,
    admission: Arc<Admission>,
    hs: v5::Handshake,
) -> Result<v5::HandshakeAck<Connection>, Fault> {
    use v5::codec::ConnectAckReason as Reason;
    // Enhanced authentication (MQTT 5 §4.12) is not offered: whatever the method, 0x8C.
    if let Some(method) = &hs.packet().auth_method {
        counter!(CONNECTIONS_REFUSED, "transport" => "mqtt", "reason" => "bad_auth_method")
            .increment(1);
        peer_event!(
            DEBUG,
            ?method,
            "mqtt 5 connect with an authentication method refused"
        );
        return Ok(hs.failed(Reason::BadAuthenticationMethod));
    }
    let username = hs.packet().username.as_ref().map(|u| u.as_str().to_owned());
    Ok(match ctx.login(username.as_deref()).await {
        // QoS 2 is granted as 1: MQTT 5 clients learn it from CONNACK's Maximum QoS.
        Login::Device(device) => {
            let sink = hs.sink();
            let seat = admission.seat(
                &device,
                on_takeover(move || {
                    sink.close_with_reason(v5::codec::Disconnect::new(
                        DisconnectReasonCode::SessionTakenOver,
                    ));
                }),
            );
            hs.ack(ctx.open(device, seat))
                .with(|ack| ack.max_qos = QoS::AtLeastOnce)
        }
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
    check_topic(&conn.device, publish.publish_topic())?;
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
        // Enhanced authentication is not offered (CONNECT with a method gets 0x8C), so AUTH is a
        // protocol error. An error, not `disconnect_with`: ntex-mqtt closes the socket before
        // writing a DISCONNECT given that way.
        v5::ProtocolMessage::Auth(_) => {
            counter!(MQTT_PROTOCOL_ERRORS, "reason" => "unexpected_auth").increment(1);
            return Err(Fault::UnexpectedAuth);
        }
    })
}

async fn control_v5(
    session: v5::Session<Connection>,
    msg: ntex_mqtt::Control<Fault>,
) -> Result<Option<v5::codec::Encoded>, Fault> {
    let ntex_mqtt::Control::Stop(reason) = msg else {
        return Ok(None);
    };
    // ntex-mqtt answers an application error with DISCONNECT 0x83; these have their own.
    let answer = match &reason {
        ntex_mqtt::Reason::Error(e) => match e.get_ref() {
            Fault::BadTopic(bad) => Some(bad.reason()),
            Fault::UnexpectedAuth => Some(DisconnectReasonCode::ProtocolError),
            _ => None,
        },
        _ => None,
    };
    stopped(&session, reason).await;
    Ok(answer.map(|code| v5::codec::Packet::from(v5::codec::Disconnect::new(code)).into()))
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
        // Every socket is a descriptor: past the budget the listener stops accepting (the
        // kernel's backlog holds newcomers); below it, `max_connections` refuses with CONNACK,
        // and a sixteenth of the budget stays free to answer those refusals.
        let open_files = rlimit::Resource::NOFILE
            .get()
            .map_or(u64::MAX, |(soft, _)| soft);
        let budget = socket_budget(open_files, config.open_files_reserve);
        let max_connections = connection_cap(config.max_connections, budget);
        if max_connections < config.max_connections {
            warn!(
                configured = config.max_connections,
                open_files,
                reserve = config.open_files_reserve,
                max_connections,
                "mqtt.max_connections lowered to fit the open-files limit"
            );
        }
        let admission = Arc::new(Admission::new(
            max_connections,
            config.max_connections_per_device,
        ));
        let per_worker = budget.div_ceil(workers.max(1));
        let connect_timeout = config.connect_timeout;
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
                        .maxconn(per_worker)
                        .disable_signals()
                        .shutdown_timeout(grace)
                        .listen("mqtt", listener, move |_| {
                            let (c3, c5) = (ctx.clone(), ctx.clone());
                            let (a3, a5) = (admission.clone(), admission.clone());
                            let gate = admission.clone();
                            async move {
                                let mqtt = ntex_mqtt::MqttServer::new()
                                    .v3(v3::MqttServer::new(move |hs| {
                                        handshake_v3(c3.clone(), a3.clone(), hs)
                                    })
                                    .middleware(OneConnect)
                                    .protocol(per_session(protocol_v3))
                                    .control(per_session(control_v3))
                                    .publish(per_session(publish_v3)))
                                    .v5(v5::MqttServer::new(move |hs| {
                                        handshake_v5(c5.clone(), a5.clone(), hs)
                                    })
                                    .middleware(OneConnect)
                                    .protocol(per_session(protocol_v5))
                                    .control(per_session(control_v5))
                                    .publish(per_session(publish_v5)));
                                ntex::service::apply_fn_factory::<_, Io, _, _, _, _, _, _>(
                                    mqtt,
                                    async move |io: Io, mqtt: &ApplyCtx<'_, _>| {
                                        let socket = gate.accept();
                                        if !first_bytes(&io, &socket, connect_timeout).await {
                                            return Ok(());
                                        }
                                        mqtt.call(io).await
                                    },
                                )
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
        info!(
            workers,
            max_connections,
            per_device = config.max_connections_per_device,
            "mqtt server started"
        );
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

    /// A CONNECT's first bytes with this protocol name and level.
    fn connect(name: &[u8], level: u8) -> Vec<u8> {
        let mut body = vec![0, u8::try_from(name.len()).unwrap_or(u8::MAX)];
        body.extend_from_slice(name);
        body.extend([level, 0x02, 0, 60, 0, 0]);
        let mut packet = vec![0x10, u8::try_from(body.len()).unwrap_or(u8::MAX)];
        packet.extend(body);
        packet
    }

    #[test]
    fn the_first_bytes_tell_the_protocol_level() {
        use Opening::*;
        let cases: &[(Vec<u8>, Option<Opening>)] = &[
            (connect(b"MQTT", 4), Some(Mqtt(Version::V3))),
            (connect(b"MQTT", 5), Some(Mqtt(Version::V5))),
            (connect(b"MQTT", 3), Some(UnsupportedLevel(3))),
            (connect(b"MQTT", 6), Some(UnsupportedLevel(6))),
            (connect(b"MQTT", 0), Some(UnsupportedLevel(0))),
            (connect(b"MQIsdp", 3), Some(UnsupportedLevel(3))),
            (connect(b"MQTX", 4), Some(NotMqtt)),
            (connect(b"MQTTMQTT", 4), Some(NotMqtt)),
            (b"GET / HTTP/1.1\r\n".to_vec(), Some(NotMqtt)),
            // PUBLISH first [MQTT-3.1.0-1].
            (vec![0x30, 0x02, 0x00, 0x00], Some(NotMqtt)),
            // A remaining length of five bytes.
            (vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x01], Some(NotMqtt)),
            // Too short to hold the level it claims.
            (
                vec![0x10, 0x02, 0x00, 0x04, b'M', b'Q', b'T', b'T', 4],
                Some(NotMqtt),
            ),
            // Not all there yet.
            (vec![], None),
            (vec![0x10], None),
            (vec![0x10, 0x80], None),
            (connect(b"MQTT", 4)[..8].to_vec(), None),
        ];
        for (bytes, want) in cases {
            assert_eq!(opening(bytes), *want, "{bytes:02x?}");
        }
    }

    #[test]
    fn skip_packet_consumes_exactly_one_whole_packet() {
        use ntex::codec::Decoder;
        let mut two = BytesMut::from(&connect(b"MQTT", 4)[..]);
        two.extend_from_slice(&[0xc0, 0x00]);
        let whole = two.len() - 2;
        let mut partial = BytesMut::from(&two[..whole - 1]);
        assert_eq!(SkipPacket.decode(&mut partial), Ok(None));
        assert_eq!(
            partial.len(),
            whole - 1,
            "nothing consumed until it is all there"
        );
        assert_eq!(SkipPacket.decode(&mut two), Ok(Some(())));
        assert_eq!(&two[..], &[0xc0, 0x00]);
        let mut malformed = BytesMut::from(&[0x10, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(SkipPacket.decode(&mut malformed), Err(()));
    }

    #[test]
    fn a_device_past_its_sessions_pushes_out_the_oldest() {
        let (a, b) = (
            DeviceId(uuid::Uuid::from_u128(1)),
            DeviceId(uuid::Uuid::from_u128(2)),
        );
        let mut one = Sessions::new(1);
        let (a1, out) = one.join(a, "a1");
        assert!(out.is_empty());
        let (_, out) = one.join(b, "b1");
        assert!(out.is_empty(), "another device has its own place");
        let (a2, out) = one.join(a, "a2");
        assert_eq!(out, ["a1"]);
        one.leave(a, a1); // the pushed-out session ends later: nothing to do
        let (_, out) = one.join(a, "a3");
        assert_eq!(out, ["a2"]);
        one.leave(a, a2);

        let mut two = Sessions::new(2);
        let (x1, _) = two.join(a, "x1");
        two.join(a, "x2");
        two.leave(a, x1);
        let (_, out) = two.join(a, "x3");
        assert!(out.is_empty(), "a session that ended frees its place");
        let (_, out) = two.join(a, "x4");
        assert_eq!(out, ["x2"]);
        assert_eq!(two.by_device[&a].len(), 2);
    }

    #[test]
    fn ended_sessions_leave_nothing_behind() {
        let a = DeviceId(uuid::Uuid::from_u128(1));
        let mut sessions = Sessions::new(1);
        let ids: Vec<u64> = (0..100).map(|i| sessions.join(a, i).0).collect();
        for id in ids {
            sessions.leave(a, id);
        }
        assert!(sessions.by_device.is_empty());
    }

    #[test]
    fn the_log_budget_lets_a_burst_through_then_one_per_period() {
        let t0 = Instant::now();
        let mut budget = LogBudget::new(t0);
        for _ in 0..LogBudget::BURST {
            assert_eq!(budget.admit(t0), (true, 0));
        }
        // The first line held back is reported at once (nothing was reported before).
        assert_eq!(budget.admit(t0), (false, 1));
        for _ in 0..5 {
            assert_eq!(budget.admit(t0), (false, 0));
        }
        // One period later, one line; the count waits for the report period.
        let t1 = t0 + LogBudget::REFILL;
        assert_eq!(budget.admit(t1), (true, 0));
        assert_eq!(budget.admit(t1), (false, 0));
        let t2 = t0 + LogBudget::REPORT_EVERY;
        assert_eq!(budget.admit(t2), (true, 6));
        // A quiet spell refills the whole burst, no more.
        let t3 = t2 + LogBudget::REFILL * 1000;
        for _ in 0..LogBudget::BURST {
            assert!(budget.admit(t3).0);
        }
        assert!(!budget.admit(t3).0);
    }

    #[test]
    fn the_socket_budget_keeps_the_reserve_for_everything_else() {
        assert_eq!(socket_budget(1_048_576, 1024), 1_047_552);
        assert_eq!(socket_budget(20_000, 1024), 18_976);
        // Too small a limit for the whole reserve: half of it each.
        assert_eq!(socket_budget(1024, 1024), 512);
        assert_eq!(socket_budget(u64::MAX, 1024), usize::MAX - 1024);
        assert_eq!(connection_cap(100_000, 1_047_552), 100_000);
        assert_eq!(connection_cap(100_000, 18_976), 17_790);
        assert_eq!(connection_cap(100_000, 0), 1);
    }

    #[test]
    fn topic_names_the_protocol_forbids() {
        assert_eq!(BadTopic::of(""), Some(BadTopic::Empty));
        assert_eq!(
            BadTopic::of("v1/devices/me/telemetry\0"),
            Some(BadTopic::Nul)
        );
        assert_eq!(BadTopic::of("a/+/b"), Some(BadTopic::Wildcard));
        assert_eq!(BadTopic::of("#"), Some(BadTopic::Wildcard));
        assert_eq!(BadTopic::of("v1/devices/me/telemetry"), None);
        assert_eq!(BadTopic::of("/"), None);
        assert_eq!(
            BadTopic::Nul.reason(),
            DisconnectReasonCode::MalformedPacket
        );
        assert_eq!(
            BadTopic::Empty.reason(),
            DisconnectReasonCode::ProtocolError
        );
    }
}
