//! What every transport does with an uplink, whatever its protocol: check the size, parse and
//! normalise the payload, and hand the message to the queue. Pure apart from the producer call,
//! so the MQTT session actor and the HTTP device API share one implementation.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Histogram, counter, histogram};
use thiserror::Error;
use tracing::warn;

use crate::metrics::{
    ACK_LATENCY, DATA_POINTS_RECEIVED, MESSAGES_ACCEPTED, MESSAGES_RECEIVED, MESSAGES_REJECTED,
};
use crate::model::{AttributeScope, Device, Message, MessageBody, now_ms};
use crate::payload::{PayloadError, parse_attributes, parse_telemetry};
use crate::ports::{Delivery, Producer, QueueError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Mqtt = 0,
    Http = 1,
    /// The CoAP integration.
    Coap = 2,
    /// The HTTP integration (`/api/v1/integrations/http/{routingKey}`).
    HttpIntegration = 3,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mqtt => "mqtt",
            Transport::Http => "http",
            Transport::Coap => "coap",
            Transport::HttpIntegration => "http_integration",
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
}

impl Rejection {
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Payload(e) => e.reason(),
            Rejection::TooLarge { .. } => "too_large",
            Rejection::Queue(QueueError::Closed) => "queue_closed",
            Rejection::Queue(QueueError::Unavailable(_)) => "queue_unavailable",
            Rejection::Queue(QueueError::Rejected(_)) => "queue_rejected",
        }
    }
}

/// The shared uplink path. Cheap to clone behind an `Arc`; holds no per-device state.
pub struct Ingress {
    producer: Arc<dyn Producer>,
    max_payload: usize,
    /// Metric handles resolved once: a labelled lookup per message costs ~30 times an increment.
    metrics: [Arc<TransportMetrics>; 4],
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
    pub fn new(producer: Arc<dyn Producer>, max_payload: usize) -> Ingress {
        Ingress {
            producer,
            max_payload,
            metrics: [
                TransportMetrics::new(Transport::Mqtt),
                TransportMetrics::new(Transport::Http),
                TransportMetrics::new(Transport::Coap),
                TransportMetrics::new(Transport::HttpIntegration),
            ],
        }
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
        let result = self.prepare(device, uplink, payload);
        let message = match result {
            Ok(message) => message,
            Err(rejection) => return Err(self.rejected(device, transport, rejection)),
        };
        self.enqueue(transport, metrics, received, message)
            .await
            .map_err(|e| self.rejected(device, transport, e.into()))
    }

    /// Enqueues a message made elsewhere (an integration's converter made it from a vendor
    /// payload). Waits while the queue is full.
    pub async fn publish_message(
        &self,
        transport: Transport,
        message: Message,
    ) -> Result<Accepted, Rejection> {
        let received = Instant::now();
        let metrics = self.metrics[transport as usize].clone();
        metrics.received.increment(1);
        self.enqueue(transport, metrics, received, message)
            .await
            .map_err(|e| {
                let rejection = Rejection::Queue(e);
                counter!(MESSAGES_REJECTED, "transport" => transport.as_str(), "reason" => rejection.reason())
                    .increment(1);
                rejection
            })
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

    fn rejected(&self, device: &Device, transport: Transport, rejection: Rejection) -> Rejection {
        let reason = rejection.reason();
        counter!(MESSAGES_REJECTED, "transport" => transport.as_str(), "reason" => reason)
            .increment(1);
        warn!(
            device = %device.name,
            transport = transport.as_str(),
            reason,
            error = %rejection,
            "uplink rejected"
        );
        rejection
    }
}
