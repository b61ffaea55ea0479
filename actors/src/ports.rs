//! The ports the actors talk through: a queue (producer and consumer), a store and a device
//! registry. `engine` implements them (memory and Kafka queues, embedded and ClickHouse stores);
//! unit tests use the in-memory doubles of `crate::testing`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use thiserror::Error;

use crate::batch::WriteBatch;
use crate::model::{AttributeScope, Device, DeviceId, KvValue, SharedMessage, TenantId};

// ---------------------------------------------------------------------------------------------
// Queue

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is shutting down and takes no more messages.
    #[error("queue is closed")]
    Closed,
    /// The broker could not be reached or refused the message; trying again may succeed.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The message can never be accepted (too large, bad topic, ...).
    #[error("queue refused the message: {0}")]
    Rejected(String),
}

/// Resolves when the queue holds the message as durably as it ever will; only then may the
/// sender be acknowledged (MQTT PUBACK, HTTP 200).
pub enum Delivery {
    Done(Result<(), QueueError>),
    Pending(BoxFuture<'static, Result<(), QueueError>>),
}

impl Future for Delivery {
    type Output = Result<(), QueueError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Delivery::Done(result) => {
                Poll::Ready(std::mem::replace(result, Err(QueueError::Closed)))
            }
            Delivery::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}

#[async_trait]
pub trait Producer: Send + Sync + 'static {
    /// Waits until the queue has room for the message (this is where backpressure reaches the
    /// sender), then hands it over, keeping the order of messages of one device.
    async fn send(&self, message: SharedMessage) -> Result<Delivery, QueueError>;
}

/// A message read from a queue partition.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub partition: u32,
    pub offset: u64,
    pub message: SharedMessage,
}

#[async_trait]
pub trait Consumer: Send + 'static {
    /// Returns up to `max` messages from the partitions this consumer owns, as soon as `max` are
    /// there or `max_wait` has passed since the first one arrived (or since the call, when none
    /// arrives; then the result is empty).
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Delivered>, QueueError>;

    /// Marks `offset` of `partition` and everything before it as stored; the queue may then
    /// forget those messages.
    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), QueueError>;

    /// Messages produced to this consumer's partitions and not yet committed, where known.
    fn lag(&self) -> Option<u64> {
        None
    }
}

/// Records that a partition's messages up to an offset are stored, for queues whose reading
/// and committing are done by different parts (a consumer feeding rule chains, a sink
/// committing behind them).
#[async_trait]
pub trait OffsetCommitter: Send + Sync + 'static {
    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), QueueError>;

    fn lag(&self) -> Option<u64> {
        None
    }
}

/// Where a message goes that storage refuses for good (a type error, a value the server cannot
/// take), so it does not block its partition forever.
#[async_trait]
pub trait DeadLetters: Send + Sync + 'static {
    async fn dead_letter(&self, message: &SharedMessage, reason: &str) -> Result<(), QueueError>;
}

// ---------------------------------------------------------------------------------------------
// Storage

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// A fault that may pass: the server is down, busy or timed out. Retry.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (bad type, bad query); retrying cannot help.
    #[error("storage refused the request: {0}")]
    Permanent(String),
    /// The caller asked for something invalid (e.g. a bad range); shown to the user.
    #[error("{0}")]
    InvalidQuery(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    None,
    Avg,
    Min,
    Max,
    Sum,
    Count,
}

impl Aggregation {
    pub fn parse(s: &str) -> Option<Aggregation> {
        Some(match s {
            "NONE" => Aggregation::None,
            "AVG" => Aggregation::Avg,
            "MIN" => Aggregation::Min,
            "MAX" => Aggregation::Max,
            "SUM" => Aggregation::Sum,
            "COUNT" => Aggregation::Count,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// A time-range query, ThingsBoard's `ReadTsKvQuery`: `[start_ts, end_ts)`.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeQuery {
    /// `None`: every key the device has.
    pub keys: Option<Vec<String>>,
    pub start_ts: i64,
    pub end_ts: i64,
    /// Bucket width in milliseconds for aggregation; the whole range when 0.
    pub interval: i64,
    /// Most points per key when not aggregating.
    pub limit: usize,
    pub agg: Aggregation,
    pub order: Order,
}

/// One time-series value as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct TsValue {
    pub ts: i64,
    pub value: KvValue,
}

/// The latest value of a key; `None` when the key has no value.
#[derive(Clone, Debug, PartialEq)]
pub struct LatestValue {
    pub key: String,
    pub ts: i64,
    pub value: Option<KvValue>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttributeValue {
    pub scope: AttributeScope,
    pub key: String,
    pub last_update_ts: i64,
    pub value: KvValue,
}

/// Series per key, in the order the query asked for.
pub type RangeResult = BTreeMap<String, Vec<TsValue>>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes a batch atomically enough that a replay of the same batch changes nothing: a
    /// data point is identified by (device, key, ts), an attribute by (device, scope, key).
    async fn write(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError>;

    /// Latest value per key; every requested key appears, with `value: None` when missing.
    async fn latest(
        &self,
        device: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<LatestValue>, StoreError>;

    async fn timeseries_keys(&self, device: DeviceId) -> Result<Vec<String>, StoreError>;

    async fn range(&self, device: DeviceId, query: &RangeQuery) -> Result<RangeResult, StoreError>;

    /// Attributes of one scope, or of all scopes when `scope` is `None`.
    async fn attributes(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
        keys: Option<&[String]>,
    ) -> Result<Vec<AttributeValue>, StoreError>;

    async fn attribute_keys(
        &self,
        device: DeviceId,
        scope: Option<AttributeScope>,
    ) -> Result<Vec<String>, StoreError>;
}

// ---------------------------------------------------------------------------------------------
// Device registry

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    #[error("Device with such access token already exists!")]
    DuplicateToken,
    #[error("Device with such name already exists!")]
    DuplicateName,
    #[error("Requested item wasn't found!")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tenant already has as many devices as it may have; nothing was created.
    /// ThingsBoard's `EntitiesLimitException` (REST: 403, error code 41).
    #[error("Devices limit reached")]
    TooManyDevices { limit: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRequest {
    pub page_size: usize,
    pub page: usize,
    /// Case-insensitive name prefix, ThingsBoard's `textSearch`.
    pub text_search: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub total_elements: usize,
}

#[async_trait]
pub trait DeviceRegistry: Send + Sync + 'static {
    /// The hot path of every connect and HTTP upload: implementations answer from memory.
    async fn by_token(&self, token: &str) -> Result<Option<Arc<Device>>, RegistryError>;

    async fn get(&self, id: DeviceId) -> Result<Option<Arc<Device>>, RegistryError>;

    async fn by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<Arc<Device>>, RegistryError>;

    /// Inserts or replaces the device with this id; refuses a token or name another device has.
    /// An id nobody holds is a creation, with [`DeviceRegistry::create`]'s checks.
    async fn save(&self, device: Device) -> Result<Arc<Device>, RegistryError>;

    /// Creates a new device, refusing a name or token another device has
    /// ([`RegistryError::DuplicateName`] also when another node created the same device at the
    /// same moment and won) and a tenant at its device limit. The registry picks the id:
    /// `DeviceId::derive(tenant, name)`, or, when a device renamed since holds that one, the
    /// next free id derived from the name and a counter (the same on every node), so the renamed
    /// device is never replaced. `device.id` is ignored.
    async fn create(&self, device: Device) -> Result<Arc<Device>, RegistryError> {
        self.save(device).await
    }

    /// Returns whether the device existed.
    async fn delete(&self, id: DeviceId) -> Result<bool, RegistryError>;

    /// Devices of a tenant ordered by name.
    async fn list(
        &self,
        tenant: TenantId,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, RegistryError>;
}

/// The ids a new device named `name` may get, in the order they are tried: the name's own
/// (`DeviceId::derive`), then ids derived from the name and a counter, for when devices renamed
/// since hold the first ones. Derived, so every node tries the same ids in the same order. The
/// counter is joined with a NUL, which no device name contains.
pub fn device_id_candidates(tenant: TenantId, name: &str) -> impl Iterator<Item = DeviceId> + '_ {
    std::iter::once(DeviceId::derive(tenant, name))
        .chain((1u32..).map(move |n| DeviceId::derive(tenant, &format!("{name}\u{0}{n}"))))
}

/// How long to wait before retry `attempt` (0-based): doubling from `base`, capped at `max`.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << attempt.min(16)).min(max)
}

// ---------------------------------------------------------------------------------------------
// Integration catalog

/// Where converter and integration definitions are kept. Small and rarely written: the
/// integration hub holds all of them in memory and writes through.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    async fn load(
        &self,
    ) -> Result<
        (
            Vec<crate::integration::ConverterDef>,
            Vec<crate::integration::IntegrationDef>,
        ),
        StoreError,
    >;

    /// Inserts or replaces the converter with this id.
    async fn put_converter(&self, def: &crate::integration::ConverterDef)
    -> Result<(), StoreError>;

    /// Inserts or replaces the integration with this id.
    async fn put_integration(
        &self,
        def: &crate::integration::IntegrationDef,
    ) -> Result<(), StoreError>;

    /// Deletes the converter or integration with this id.
    async fn delete(&self, id: uuid::Uuid) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let got: Vec<u128> = (0..8).map(|a| backoff(a, base, max).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(backoff(100, base, max), max);
    }
}
