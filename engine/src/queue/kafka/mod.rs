//! The Kafka queue (rdkafka, bundled librdkafka): topic set-up through the admin API, an
//! idempotent keyed producer whose delivery reports release the sender's acknowledgement, and
//! a consumer-group source feeding one rule-chain actor per assigned partition.
//!
//! Record format: `proto/ingest.proto` (see `wire`). Between nodes, the downlink bus (`bus`).

pub mod bus;
mod source;
pub mod wire;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::metrics::{QUEUE_IN_FLIGHT, QUEUE_PRODUCE_BLOCKED, QUEUE_PRODUCE_LATENCY};
use actors::model::SharedMessage;
use actors::ports::{DeadLetters, Delivery, Producer, QueueError, backoff};
use anyhow::Context;
use async_trait::async_trait;
use metrics::{Gauge, Histogram, gauge, histogram};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tracing::{info, warn};

pub use source::{KafkaSource, SourceHandle};

use crate::config::QueueConfig;

/// The settings both clients share: brokers, then the user's own properties.
fn client_config(config: &QueueConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers);
    c
}

fn with_user_properties(mut c: ClientConfig, config: &QueueConfig) -> ClientConfig {
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
}

/// Creates the ingest and dead-letter topics when missing. Fails with a clear message when no
/// broker answers within `connect_timeout`.
pub async fn ensure_topics(config: &QueueConfig) -> anyhow::Result<()> {
    let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(
        with_user_properties(client_config(config), config)
            .create()
            .context("cannot create the Kafka admin client")?,
    );
    let timeout = config.connect_timeout;
    // librdkafka's metadata call blocks: on the blocking pool, not on an async worker.
    let asking = admin.clone();
    let metadata =
        tokio::task::spawn_blocking(move || asking.inner().fetch_metadata(None, timeout))
            .await
            .context("the Kafka metadata request failed")?
            .with_context(|| {
                format!(
                    "cannot reach the Kafka brokers at {} within {:?}",
                    config.brokers, timeout
                )
            })?;
    let existing: Vec<&str> = metadata.topics().iter().map(|t| t.name()).collect();
    let wanted = [config.topic.as_str(), config.dead_letter_topic.as_str()];
    let missing: Vec<NewTopic<'_>> = wanted
        .iter()
        .filter(|t| !existing.contains(t))
        .map(|t| {
            NewTopic::new(
                t,
                i32::try_from(config.partitions).unwrap_or(i32::MAX),
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(missing.iter(), &options)
        .await
        .context("cannot create the Kafka topics")?;
    for result in results {
        match result {
            Ok(topic) => info!(topic, partitions = config.partitions, "kafka topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                info!(topic, "kafka topic created meanwhile by another node");
            }
            Err((topic, code)) => anyhow::bail!("cannot create Kafka topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// The producer side of the queue: every uplink becomes one record of the ingest topic, keyed
/// by device id.
#[derive(Clone)]
pub struct KafkaProducer {
    inner: Arc<ProducerInner>,
}

struct ProducerInner {
    producer: FutureProducer,
    topic: String,
    dead_letter_topic: String,
    /// Records sent and not yet confirmed; a sender waits for a permit.
    in_flight: Arc<Semaphore>,
    in_flight_gauge: Gauge,
    blocked: Histogram,
    latency: Histogram,
}

impl KafkaProducer {
    pub fn new(config: &QueueConfig) -> anyhow::Result<KafkaProducer> {
        let mut c = client_config(config);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("linger.ms", config.linger.as_millis().to_string())
            // A broker outage holds acknowledgements back instead of failing them: records
            // wait in librdkafka until a broker takes them.
            .set("message.timeout.ms", "0")
            .set(
                "queue.buffering.max.messages",
                (config.max_in_flight + config.max_in_flight / 10 + 1000).to_string(),
            );
        let producer: FutureProducer = with_user_properties(c, config)
            .create()
            .context("cannot create the Kafka producer")?;
        Ok(KafkaProducer {
            inner: Arc::new(ProducerInner {
                producer,
                topic: config.topic.clone(),
                dead_letter_topic: config.dead_letter_topic.clone(),
                in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
                in_flight_gauge: gauge!(QUEUE_IN_FLIGHT),
                blocked: histogram!(QUEUE_PRODUCE_BLOCKED),
                latency: histogram!(QUEUE_PRODUCE_LATENCY),
            }),
        })
    }

    async fn permit(&self) -> Result<InFlight, QueueError> {
        let inner = &self.inner;
        let permit = match inner.in_flight.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(QueueError::Closed),
            Err(TryAcquireError::NoPermits) => {
                let started = Instant::now();
                let permit = inner
                    .in_flight
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| QueueError::Closed)?;
                inner.blocked.record(started.elapsed());
                permit
            }
        };
        inner.in_flight_gauge.increment(1.0);
        Ok(InFlight {
            _permit: permit,
            gauge: inner.in_flight_gauge.clone(),
        })
    }

    /// Hands a record to librdkafka, waiting while its local queue is full (never dropping,
    /// never spinning: the wait doubles up to 100 ms).
    async fn enqueue(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<rdkafka::producer::DeliveryFuture, QueueError> {
        let mut attempt = 0;
        loop {
            let record = FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers.clone());
            match self.inner.producer.send_result(record) {
                Ok(future) => return Ok(future),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let delay = backoff(
                        attempt,
                        Duration::from_millis(1),
                        Duration::from_millis(100),
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err((e, _)) => return Err(QueueError::Rejected(e.to_string())),
            }
        }
    }
}

#[async_trait]
impl DeadLetters for KafkaProducer {
    /// Sends a message storage refused for good to the dead-letter topic, with the reason.
    async fn dead_letter(&self, message: &SharedMessage, reason: &str) -> Result<(), QueueError> {
        let payload = wire::encode(message);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "format",
                value: Some(wire::FORMAT),
            })
            .insert(Header {
                key: "reason",
                value: Some(reason),
            });
        let topic = self.inner.dead_letter_topic.clone();
        let future = self
            .enqueue(&topic, message.device_id.0.as_bytes(), &payload, headers)
            .await?;
        match future.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(QueueError::Unavailable(e.to_string())),
            Err(_) => Err(QueueError::Closed),
        }
    }
}

impl KafkaProducer {
    /// Waits until every record sent is confirmed, or `timeout` passed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        let producer = self.inner.producer.clone();
        tokio::task::spawn_blocking(move || producer.flush(timeout))
            .await
            .map_err(|_| KafkaError::Canceled)?
    }

    /// Stops taking messages: senders waiting for room are told the queue closed.
    pub fn close(&self) {
        self.inner.in_flight.close();
    }
}

/// One record on its way: holds a place among `max_in_flight` until the broker confirmed it.
struct InFlight {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, message: SharedMessage) -> Result<Delivery, QueueError> {
        let in_flight = self.permit().await?;
        let payload = wire::encode(&message);
        let headers = OwnedHeaders::new().insert(Header {
            key: "format",
            value: Some(wire::FORMAT),
        });
        let started = Instant::now();
        let future = self
            .enqueue(
                &self.inner.topic,
                message.device_id.0.as_bytes(),
                &payload,
                headers,
            )
            .await?;
        let latency = self.inner.latency.clone();
        Ok(Delivery::Pending(Box::pin(async move {
            let result = future.await;
            drop(in_flight);
            latency.record(started.elapsed());
            match result {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => {
                    warn!(error = %e, "kafka refused a record");
                    Err(QueueError::Unavailable(e.to_string()))
                }
                Err(_) => Err(QueueError::Closed),
            }
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::model::{DeviceId, KvEntry, KvValue, Message, MessageBody, TenantId, TsRecord};
    use harness::servers::Tansu;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message as _};

    fn config(broker: &Tansu, topic: &str) -> QueueConfig {
        QueueConfig {
            brokers: broker.brokers(),
            topic: topic.into(),
            dead_letter_topic: format!("{topic}.dlq"),
            partitions: 2,
            ..QueueConfig::default()
        }
    }

    fn message() -> SharedMessage {
        let tenant = TenantId::from_name("t");
        Arc::new(Message {
            tenant_id: tenant,
            device_id: DeviceId::derive(tenant, "d"),
            received_ts: 5,
            body: MessageBody::Telemetry(vec![TsRecord {
                ts: 5,
                entries: vec![KvEntry::new("k", KvValue::Long(7))],
            }]),
        })
    }

    /// The first record of `topic`, with its headers.
    fn first_record(config: &QueueConfig, topic: &str) -> (Vec<u8>, Vec<(String, String)>) {
        let consumer: BaseConsumer = client_config(config)
            .set("group.id", "dlq-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).expect("subscribe");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) {
                let headers = record
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return (record.payload().unwrap_or_default().to_vec(), headers);
            }
        }
        panic!("no record on {topic} within 30 s");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn records_and_dead_letters_carry_the_format_and_the_reason() {
        let broker = Tansu::start().expect("tansu starts");
        let config = config(&broker, "wire-test");
        ensure_topics(&config).await.expect("topics");
        // A second time finds them there.
        ensure_topics(&config).await.expect("topics again");
        let producer = KafkaProducer::new(&config).expect("producer");

        let delivery = producer.send(message()).await.expect("sent");
        delivery.await.expect("the broker confirmed");
        let (payload, headers) = first_record(&config, "wire-test");
        assert_eq!(wire::decode(&payload).expect("decodes"), *message());
        assert!(headers.contains(&("format".into(), wire::FORMAT.into())));

        producer
            .dead_letter(&message(), "storage refused: type mismatch")
            .await
            .expect("dead-lettered");
        let (payload, headers) = first_record(&config, "wire-test.dlq");
        assert_eq!(wire::decode(&payload).expect("decodes"), *message());
        assert!(
            headers.contains(&("reason".into(), "storage refused: type mismatch".into())),
            "{headers:?}"
        );
    }
}
