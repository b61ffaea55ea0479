//! What every transport does with an uplink, whatever its protocol: check the size, parse and
//! normalise the payload, check the message against the limits (key length, data points per
//! message, distinct keys per device), and hand it to the queue. Pure apart from the producer
//! call, so the MQTT session actor, the HTTP device API and the integrations share one
//! implementation.

use std::sync::{Arc, LazyLock};
use std::time::Instant;

use metrics::{Counter, Histogram, counter, histogram};
use thiserror::Error;
use tracing::warn;

pub use crate::device_keys::KeyKind;
use crate::device_keys::{DeviceKeys, TooManyKeys};
use crate::log_limit::LogLimit;
use crate::metrics::{
    ACK_LATENCY, DATA_POINTS_RECEIVED, MESSAGES_ACCEPTED, MESSAGES_RECEIVED, MESSAGES_REJECTED,
};
use crate::model::{AttributeScope, Device, Message, MessageBody, now_ms};
use crate::payload::{PayloadError, parse_attributes, parse_telemetry};
use crate::ports::{Delivery, Producer, QueueError};

/// Rejected uplinks are logged at most 5 a second (bursts of 20), whatever the number of
/// peers: a device resending a bad payload in a loop cannot write the log at its line rate.
static REJECTED_LOG: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::new("uplink_rejected", 5, 20));

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Mqtt = 0,
    Http = 1,
    /// The CoAP integration.
    Coap = 2,
    /// The HTTP integration (`/api/v1/integrations/http/{routingKey}`).
    HttpIntegration = 3,
    /// Devices behind an MQTT gateway (`v1/gateway/*`).
    MqttGateway = 4,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Http => "http",
            Transport::Coap => "coap",
            Transport::HttpIntegration => "http_integration",
            Transport::MqttGateway => "mqtt_gateway",
        }
    }
}

/// What a device publishes to: `v1/devices/me/telemetry` or `v1/devices/me/attributes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uplink {
    Telemetry,
    Attributes,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Rejection {
    #[error(transparent)]
    Payload(#[from] PayloadError),
    #[error("payload of {size} bytes is over the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A limit on what one device or one message may hold.
    #[error(transparent)]
    Quota(#[from] QuotaError),
}

/// A message that would break a limit on keys or data points.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QuotaError {
    #[error(
        "the device has {max} {kind} keys, the most it may have (limits.max_keys_per_device): new keys are refused"
    )]
    TooManyKeys { kind: KeyKind, max: usize },
    #[error(
        "a message of {count} data points is over the limit of {max} (limits.max_data_points_per_message)"
    )]
    TooManyDataPoints { count: usize, max: usize },
    /// A gateway connection speaks for as many devices as it may.
    #[error(
        "the gateway has {max} devices connected, the most it may have (mqtt.gateway_max_devices)"
    )]
    TooManyGatewayDevices { max: usize },
    /// A device to be made for a gateway would pass the tenant's device limit.
    #[error("the tenant has {max} devices, the most it may have (devices.max_per_tenant)")]
    TooManyTenantDevices { max: u64 },
}

impl From<TooManyKeys> for QuotaError {
    fn from(e: TooManyKeys) -> QuotaError {
        QuotaError::TooManyKeys {
            kind: e.kind,
            max: e.max,
        }
    }
}

/// How a transport answers a rejection, whatever its exact cause.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectionKind {
    /// The payload cannot be taken as it is: HTTP 400, MQTT 5 PUBACK 0x99.
    BadPayload,
    /// Over the payload size: HTTP 413, MQTT 5 PUBACK 0x97.
    TooLarge,
    /// Over a limit on keys or data points: HTTP 400, MQTT 5 PUBACK 0x97 (Quota exceeded).
    Quota,
    /// The queue cannot take it now: HTTP 503, CoAP 5.03; MQTT closes the connection.
    Unavailable,
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Payload(e) => e.reason(),
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Queue(QueueError::Closed) => "queue_closed",
            Rejection::Queue(QueueError::Unavailable(_)) => "queue_unavailable",
            Rejection::Queue(QueueError::Rejected(_)) => "queue_rejected",
            Rejection::Quota(QuotaError::TooManyKeys { .. }) => "too_many_keys",
            Rejection::Quota(QuotaError::TooManyDataPoints { .. }) => "too_many_data_points",
            Rejection::Quota(QuotaError::TooManyGatewayDevices { .. }) => {
                "too_many_gateway_devices"
            }
            Rejection::Quota(QuotaError::TooManyTenantDevices { .. }) => "too_many_devices",
        }
    }

    pub fn kind(&self) -> RejectionKind {
        match self {
            Rejection::Payload(_) => RejectionKind::BadPayload,
            Rejection::TooLarge { .. } => RejectionKind::TooLarge,
            Rejection::Quota(_) => RejectionKind::Quota,
            Rejection::Queue(_) => RejectionKind::Unavailable,
        }
    }
}

/// The limits every uplink is checked against, whatever its transport. Clones share the
/// per-device key counts: give every ingress of a process the same one.
#[derive(Clone)]
pub struct Limits {
    /// Longest key, in characters.
    pub max_key_chars: usize,
    /// Most key-value entries in one message.
    pub max_data_points_per_message: usize,
    /// Distinct keys per device and kind (`DeviceKeys::max`; 0: no limit).
    pub keys: Arc<DeviceKeys>,
}

impl Limits {
    /// ThingsBoard's key column is `varchar(255)`.
    pub const DEFAULT_MAX_KEY_CHARS: usize = 255;
    pub const DEFAULT_MAX_DATA_POINTS_PER_MESSAGE: usize = 10_000;
    pub const DEFAULT_MAX_KEYS_PER_DEVICE: usize = 1_000;

    pub fn new(
        max_keys_per_device: usize,
        max_key_chars: usize,
        max_data_points_per_message: usize,
    ) -> Limits {
        Limits {
            max_key_chars,
            max_data_points_per_message,
            keys: Arc::new(DeviceKeys::new(max_keys_per_device)),
        }
    }

    /// Checks a message and admits its keys; nothing is recorded for a refused message.
    fn check(&self, message: &Message) -> Result<(), Rejection> {
        let points = message.data_points();
        if points > self.max_data_points_per_message {
            return Err(QuotaError::TooManyDataPoints {
                count: points,
                max: self.max_data_points_per_message,
            }
            .into());
        }
        if let Some(len) = message
            .entries()
            .map(|e| e.key.chars().count())
            .find(|&len| len > self.max_key_chars)
        {
            return Err(PayloadError::KeyTooLong {
                len,
                max: self.max_key_chars,
            }
            .into());
        }
        let kind = match message.body {
            MessageBody::Telemetry(_) => KeyKind::Telemetry,
            MessageBody::Attributes { .. } => KeyKind::Attributes,
            MessageBody::Device(_) => return Ok(()),
        };
        self.keys
            .admit(
                message.device_id,
                kind,
                message.entries().map(|e| e.key.as_str()),
            )
            .map_err(|e| QuotaError::from(e).into())
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::new(
            Limits::DEFAULT_MAX_KEYS_PER_DEVICE,
            Limits::DEFAULT_MAX_KEY_CHARS,
            Limits::DEFAULT_MAX_DATA_POINTS_PER_MESSAGE,
        )
    }
}

/// The shared uplink path. Cheap to clone behind an `Arc`; its only per-device state is the
/// bounded key counts of its [`Limits`].
pub struct Ingress {
    producer: Arc<dyn Producer>,
    max_payload: usize,
    limits: Limits,
    /// Metric handles resolved once: a labelled lookup per message costs ~30 times an increment.
    metrics: [Arc<TransportMetrics>; 5],
}

struct TransportMetrics {
    received: Counter,
    accepted: Counter,
    points: Counter,
    ack_latency: Histogram,
}

impl TransportMetrics {
    fn new(transport: Transport) -> Arc<TransportMetrics> {
        let t = transport.as_str();
        Arc::new(TransportMetrics {
            received: counter!(MESSAGES_RECEIVED, "transport" => t),
            accepted: counter!(MESSAGES_ACCEPTED, "transport" => t),
            points: counter!(DATA_POINTS_RECEIVED, "transport" => t),
            ack_latency: histogram!(ACK_LATENCY, "transport" => t),
        })
    }
}

/// An accepted uplink on its way into the queue: await [`Accepted::confirmed`] before
/// acknowledging the sender.
pub struct Accepted {
    delivery: Delivery,
    transport: Transport,
    metrics: Arc<TransportMetrics>,
    points: usize,
    received: Instant,
}

impl Accepted {
    /// Resolves once the queue holds the message; records the acknowledgement metrics.
    pub async fn confirmed(self) -> Result<(), Rejection> {
        let transport = self.transport.as_str();
        match self.delivery.await {
            Ok(()) => {
                self.metrics.accepted.increment(1);
                self.metrics.points.increment(self.points as u64);
                self.metrics.ack_latency.record(self.received.elapsed());
                Ok(())
            }
            Err(e) => {
                let rejection = Rejection::Queue(e);
                counter!(MESSAGES_REJECTED, "transport" => transport, "reason" => rejection.reason())
                    .increment(1);
                Err(rejection)
            }
        }
    }
}

impl Ingress {
    /// An ingress with the default [`Limits`]; see [`Ingress::with_limits`].
    pub fn new(producer: Arc<dyn Producer>, max_payload: usize) -> Ingress {
        Ingress {
            producer,
            max_payload,
            limits: Limits::default(),
            metrics: [
                TransportMetrics::new(Transport::Mqtt),
                TransportMetrics::new(Transport::Http),
                TransportMetrics::new(Transport::Coap),
                TransportMetrics::new(Transport::HttpIntegration),
                TransportMetrics::new(Transport::MqttGateway),
            ],
        }
    }

    /// The largest payload it takes, in bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The longest key it takes, in characters (`limits.max_key_length`).
    pub fn max_key_chars(&self) -> usize {
        self.limits.max_key_chars
    }

    /// The limits to check uplinks against; share one [`Limits`] between the ingresses of a
    /// process, so a device's keys are counted once whatever transport brings them.
    pub fn with_limits(mut self, limits: Limits) -> Ingress {
        self.limits = limits;
        self
    }

    /// Checks, parses and enqueues one uplink. Waits while the queue is full.
    pub async fn publish(
        &self,
        device: &Device,
        transport: Transport,
        uplink: Uplink,
        payload: &[u8],
    ) -> Result<Accepted, Rejection> {
        let received = Instant::now();
        let metrics = self.metrics[transport as usize].clone();
        metrics.received.increment(1);
        let result = self
            .prepare(device, uplink, payload)
            .and_then(|message| self.limits.check(&message).map(|()| message));
        let message = match result {
            Ok(message) => message,
            Err(rejection) => return Err(rejected(&device.name, transport, rejection)),
        };
        self.enqueue(transport, metrics, received, message)
            .await
            .map_err(|e| rejected(&device.name, transport, e.into()))
    }

    /// Enqueues a device event (`downlink::event`) for the owner of the device's partition and
    /// waits until the queue holds it (while the queue is full, too). Not an uplink: the
    /// uplink counters do not move.
    pub async fn publish_event(&self, message: Message) -> Result<(), QueueError> {
        self.producer.send(Arc::new(message)).await?.await
    }

    /// Enqueues a message made elsewhere (an integration's converter made it from a vendor
    /// payload), checked like a device's: values storage can give back (a script can compute
    /// an infinity), key length, data points, keys per device. Waits while the queue is full.
    pub async fn publish_message(
        &self,
        transport: Transport,
        message: Message,
    ) -> Result<Accepted, Rejection> {
        let received = Instant::now();
        let metrics = self.metrics[transport as usize].clone();
        metrics.received.increment(1);
        let device = message.device_id.to_string();
        let checked = message
            .validate_values()
            .map_err(|e| Rejection::Payload(e.into()))
            .and_then(|()| self.limits.check(&message));
        if let Err(rejection) = checked {
            return Err(rejected(&device, transport, rejection));
        }
        self.enqueue(transport, metrics, received, message)
            .await
            .map_err(|e| rejected(&device, transport, e.into()))
    }

    /// Hands a message to the queue; what the caller awaits before acknowledging.
    async fn enqueue(
        &self,
        transport: Transport,
        metrics: Arc<TransportMetrics>,
        received: Instant,
        message: Message,
    ) -> Result<Accepted, QueueError> {
        let points = message.data_points();
        let delivery = if points == 0 {
            // ThingsBoard accepts an empty object; there is nothing to store.
            Delivery::Done(Ok(()))
        } else {
            self.producer.send(Arc::new(message)).await?
        };
        Ok(Accepted {
            delivery,
            transport,
            metrics,
            points,
            received,
        })
    }

    fn prepare(
        &self,
        device: &Device,
        uplink: Uplink,
        payload: &[u8],
    ) -> Result<Message, Rejection> {
        if payload.len() > self.max_payload {
            return Err(Rejection::TooLarge {
                size: payload.len(),
                max: self.max_payload,
            });
        }
        let received_ts = now_ms();
        let body = match uplink {
            Uplink::Telemetry => MessageBody::Telemetry(parse_telemetry(payload, received_ts)?),
            Uplink::Attributes => MessageBody::Attributes {
                scope: AttributeScope::Client,
                entries: parse_attributes(payload)?,
            },
        };
        Ok(Message {
            tenant_id: device.tenant_id,
            device_id: device.id,
            received_ts,
            body,
        })
    }
}

/// Counts a rejection and logs it, rate-limited, with the peer's strings escaped (`?`).
fn rejected(device: &str, transport: Transport, rejection: Rejection) -> Rejection {
    let reason = rejection.reason();
    counter!(MESSAGES_REJECTED, "transport" => transport.as_str(), "reason" => reason).increment(1);
    if let Some(suppressed) = REJECTED_LOG.check() {
        warn!(
            device = ?device,
            transport = transport.as_str(),
            reason,
            error = ?rejection.to_string(),
            suppressed,
            "uplink rejected"
        );
    }
    rejection
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{
        ACK_LATENCY, DATA_POINTS_RECEIVED, MESSAGES_ACCEPTED, MESSAGES_RECEIVED, MESSAGES_REJECTED,
    };
    use crate::model::SharedMessage;
    use crate::model::{AccessToken, DeviceId, KvEntry, KvValue, TenantId, TsRecord};
    use crate::ports::{Delivery, Producer, QueueError};
    use crate::test_metrics::Recorded;
    use crate::testing::MemProducer;

    fn device(name: &str) -> Device {
        let tenant_id = TenantId::from_name("t");
        Device {
            id: DeviceId::derive(tenant_id, name),
            tenant_id,
            name: name.into(),
            device_type: "default".into(),
            label: None,
            token: AccessToken(format!("{name}-token")),
            created_time: 0,
            additional_info: None,
        }
    }

    fn ingress(limits: Limits) -> (Ingress, Arc<MemProducer>) {
        let producer = Arc::new(MemProducer::default());
        (
            Ingress::new(producer.clone(), 1024).with_limits(limits),
            producer,
        )
    }

    /// Publishes one telemetry payload; the rejection reason, or "ok".
    async fn reason(ingress: &Ingress, device: &Device, uplink: Uplink, payload: &str) -> String {
        match ingress
            .publish(device, Transport::Http, uplink, payload.as_bytes())
            .await
        {
            Ok(accepted) => match accepted.confirmed().await {
                Ok(()) => "ok".into(),
                Err(e) => e.reason().into(),
            },
            Err(e) => e.reason().into(),
        }
    }

    #[tokio::test]
    async fn limits_on_keys_and_points_hold_for_device_payloads() {
        let (ingress, producer) = ingress(Limits::new(3, 8, 4));
        let d = device("d");
        let cases = [
            (Uplink::Telemetry, r#"{"a":1,"b":2,"c":3}"#, "ok"),
            (Uplink::Telemetry, r#"{"d":1}"#, "too_many_keys"),
            (Uplink::Telemetry, r#"{"a":2}"#, "ok"),
            (Uplink::Attributes, r#"{"x":1,"y":1,"z":1}"#, "ok"),
            (Uplink::Attributes, r#"{"w":1}"#, "too_many_keys"),
            (Uplink::Telemetry, r#"{"abcdefghi":1}"#, "key_too_long"),
            (Uplink::Telemetry, r#"{"abcdefgh":1}"#, "too_many_keys"),
            (
                Uplink::Telemetry,
                r#"[{"ts":1,"values":{"a":1,"b":1,"c":1}},{"ts":2,"values":{"a":1,"b":1}}]"#,
                "too_many_data_points",
            ),
            (Uplink::Telemetry, r#"{"a":1e400}"#, "ok"),
        ];
        for (uplink, payload, want) in cases {
            assert_eq!(
                reason(&ingress, &d, uplink, payload).await,
                want,
                "{payload}"
            );
        }
        // Another device has its own count.
        assert_eq!(
            reason(&ingress, &device("e"), Uplink::Telemetry, r#"{"d":1}"#).await,
            "ok"
        );
        assert_eq!(producer.messages().len(), 5);
    }

    /// A producer whose deliveries resolve when the test says so.
    #[derive(Default)]
    struct HeldProducer {
        deliveries: parking_lot::Mutex<Vec<tokio::sync::oneshot::Sender<Result<(), QueueError>>>>,
    }

    #[async_trait::async_trait]
    impl Producer for HeldProducer {
        async fn send(&self, _message: SharedMessage) -> Result<Delivery, QueueError> {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.deliveries.lock().push(tx);
            Ok(Delivery::Pending(Box::pin(async move {
                rx.await.unwrap_or(Err(QueueError::Closed))
            })))
        }
    }

    #[tokio::test]
    async fn the_acknowledgement_waits_for_the_queue_and_is_counted_only_then() {
        let recorded = Recorded::start();
        let producer = Arc::new(HeldProducer::default());
        let ingress = Ingress::new(producer.clone(), 1024);
        let d = device("d");
        let mqtt = [("transport", "mqtt")];
        let mut confirmed = Vec::new();
        for _ in 0..2 {
            let accepted = ingress
                .publish(&d, Transport::Mqtt, Uplink::Telemetry, br#"{"a":1,"b":2}"#)
                .await
                .expect("accepted");
            confirmed.push(tokio::spawn(accepted.confirmed()));
        }
        tokio::task::yield_now().await;
        assert!(
            confirmed.iter().all(|c| !c.is_finished()),
            "no acknowledgement before the queue holds the message"
        );
        assert_eq!(recorded.counter(MESSAGES_RECEIVED, &mqtt), 2);
        assert_eq!(recorded.counter(MESSAGES_ACCEPTED, &mqtt), 0);

        let mut deliveries = std::mem::take(&mut *producer.deliveries.lock()).into_iter();
        let (first, second) = (
            deliveries.next().expect("one"),
            deliveries.next().expect("two"),
        );
        first.send(Ok(())).expect("delivered");
        second
            .send(Err(QueueError::Unavailable("broker down".into())))
            .expect("delivered");
        let mut results = Vec::new();
        for c in confirmed {
            results.push(c.await.expect("joined").map_err(|e| e.reason()));
        }
        assert_eq!(results, [Ok(()), Err("queue_unavailable")]);
        assert_eq!(recorded.counter(MESSAGES_ACCEPTED, &mqtt), 1);
        assert_eq!(recorded.counter(DATA_POINTS_RECEIVED, &mqtt), 2);
        assert_eq!(recorded.samples(ACK_LATENCY, &mqtt), 1);
        assert_eq!(
            recorded.counter(
                MESSAGES_REJECTED,
                &[("transport", "mqtt"), ("reason", "queue_unavailable")]
            ),
            1
        );
    }

    #[tokio::test]
    async fn limits_are_inclusive_and_refusals_counted_by_transport_and_reason() {
        let recorded = Recorded::start();
        // Payloads of exactly 64 bytes pass, and messages of exactly 4 data points.
        let producer = Arc::new(MemProducer::default());
        let ingress = Ingress::new(producer.clone(), 64).with_limits(Limits::new(0, 255, 4));
        let d = device("d");
        let fill = |n: usize| format!(r#"{{"k":"{}"}}"#, "x".repeat(n - 8));
        let cases = [
            (Transport::Mqtt, fill(64), "ok"),
            (Transport::Mqtt, fill(65), "too_large"),
            (
                Transport::Http,
                r#"{"a":1,"b":2,"c":3,"d":4}"#.to_owned(),
                "ok",
            ),
            (
                Transport::Coap,
                r#"{"a":1,"b":2,"c":3,"d":4,"e":5}"#.to_owned(),
                "too_many_data_points",
            ),
            (Transport::HttpIntegration, "{".to_owned(), "invalid_json"),
        ];
        for (transport, payload, want) in &cases {
            let got = match ingress
                .publish(&d, *transport, Uplink::Telemetry, payload.as_bytes())
                .await
            {
                Ok(accepted) => accepted
                    .confirmed()
                    .await
                    .map(|()| "ok")
                    .map_err(|e| e.reason()),
                Err(e) => Err(e.reason()),
            };
            assert_eq!(got.unwrap_or_else(|e| e), *want, "{payload}");
        }
        assert_eq!(producer.messages().len(), 2);
        for (transport, reason) in [
            ("mqtt", "too_large"),
            ("coap", "too_many_data_points"),
            ("http_integration", "invalid_json"),
        ] {
            assert_eq!(
                recorded.counter(
                    MESSAGES_REJECTED,
                    &[("transport", transport), ("reason", reason)]
                ),
                1,
                "{transport} {reason}"
            );
        }
        assert_eq!(
            recorded.counter(MESSAGES_ACCEPTED, &[("transport", "http")]),
            1
        );
    }

    #[tokio::test]
    async fn ingresses_sharing_limits_count_a_device_once() {
        let limits = Limits::new(2, 255, 100);
        let (mqtt, _) = ingress(limits.clone());
        let (http, _) = ingress(limits);
        let d = device("d");
        assert_eq!(
            reason(&mqtt, &d, Uplink::Telemetry, r#"{"a":1}"#).await,
            "ok"
        );
        assert_eq!(
            reason(&http, &d, Uplink::Telemetry, r#"{"b":1}"#).await,
            "ok"
        );
        assert_eq!(
            reason(&mqtt, &d, Uplink::Telemetry, r#"{"c":1}"#).await,
            "too_many_keys"
        );
    }

    #[tokio::test]
    async fn converter_messages_are_checked_like_payloads() {
        let (ingress, producer) = ingress(Limits::new(2, 255, 100));
        let d = device("d");
        let message = |entries: Vec<KvEntry>| Message {
            tenant_id: d.tenant_id,
            device_id: d.id,
            received_ts: 0,
            body: MessageBody::Telemetry(vec![TsRecord { ts: 1, entries }]),
        };
        let publish = |m: Message| {
            let ingress = &ingress;
            async move {
                match ingress.publish_message(Transport::Coap, m).await {
                    Ok(_) => "ok",
                    Err(e) => e.reason(),
                }
            }
        };
        let inf = message(vec![KvEntry::new("t", KvValue::Double(f64::INFINITY))]);
        assert_eq!(publish(inf).await, "not_finite");
        let nan = message(vec![KvEntry::new("t", KvValue::Double(f64::NAN))]);
        assert_eq!(publish(nan).await, "not_finite");
        let three = (0..3)
            .map(|i| KvEntry::new(format!("k{i}"), KvValue::Long(i)))
            .collect();
        assert_eq!(publish(message(three)).await, "too_many_keys");
        let ok = message(vec![KvEntry::new("t", KvValue::Double(1.5))]);
        assert_eq!(publish(ok).await, "ok");
        assert_eq!(producer.messages().len(), 1);
    }

    #[test]
    fn every_rejection_has_a_kind() {
        let cases = [
            (
                Rejection::Payload(PayloadError::Empty),
                RejectionKind::BadPayload,
            ),
            (
                Rejection::TooLarge { size: 2, max: 1 },
                RejectionKind::TooLarge,
            ),
            (
                Rejection::Quota(QuotaError::TooManyDataPoints { count: 2, max: 1 }),
                RejectionKind::Quota,
            ),
            (
                Rejection::Queue(QueueError::Closed),
                RejectionKind::Unavailable,
            ),
        ];
        for (rejection, kind) in cases {
            assert_eq!(rejection.kind(), kind, "{rejection}");
        }
    }
}
