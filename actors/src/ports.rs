//! The ports the actors talk through: a queue (producer and consumer), a store and a device
//! registry. `engine` implements them (memory and Kafka queues, embedded and ClickHouse stores);
//! unit tests use the in-memory doubles of `crate::testing`.
//!
//! The stored records of the two-way device API (persistent RPCs, claim requests, device
//! profiles) are behind `DeviceRecords` and `DeviceProfiles`, with the bounds of their fields.

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

    /// Deletes `keys` of one scope of a device's attributes as of `ts` (ms); keys it does not
    /// have are ignored, and so is a value written after `ts`.
    async fn delete_attributes(
        &self,
        device: DeviceId,
        scope: AttributeScope,
        keys: &[String],
        ts: i64,
    ) -> Result<(), StoreError>;
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

/// A node's live sessions of devices (MQTT connections, devices behind gateways).
pub trait DeviceSessions: Send + Sync {
    /// Ends every session of `device` on this node: it was deleted or its credentials
    /// changed (ThingsBoard closes them too). Its own connections are closed (MQTT 5:
    /// DISCONNECT 0x98, administrative action); gateways let it go.
    fn close(&self, device: DeviceId);
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

// ---------------------------------------------------------------------------------------------
// Device records: persistent RPCs and claim requests (issue 13)

/// Most bytes of a persistent RPC's `request` (the serialised request: method, params, oneway,
/// retries, ...). The app chooses it.
pub const MAX_RPC_REQUEST_BYTES: usize = 32 * 1024;
/// Most bytes of a persistent RPC's `response`. The device chooses it.
pub const MAX_RPC_RESPONSE_BYTES: usize = 32 * 1024;
/// Most bytes of a persistent RPC's `additionalInfo`. The app chooses it.
pub const MAX_RPC_ADDITIONAL_INFO_BYTES: usize = 4 * 1024;
/// Most records in one page of a device's RPCs: with the bounds above, at most about 6.8 MB
/// of text per page.
pub const MAX_RPC_PAGE_SIZE: usize = 100;
/// Most records [`DeviceRecords::pending_rpcs`] returns at once.
pub const MAX_PENDING_RPCS: usize = 1_000;
/// Most bytes of a claim request's secret key. The device chooses it.
pub const MAX_CLAIM_SECRET_BYTES: usize = 256;

/// Why a record was refused or could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A text field is longer than its documented maximum; nothing was written.
    #[error("{field} is {len} bytes long, longer than the {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    /// A field that must hold JSON does not; nothing was written.
    #[error("{field} is not valid JSON")]
    NotJson { field: &'static str },
    /// A field that must not be empty is.
    #[error("{field} should be specified")]
    Missing { field: &'static str },
    /// A page size of 0 or above the maximum of its kind.
    #[error("page size {size} is outside 1..={max}")]
    PageSize { size: usize, max: usize },
    /// A page so far on that its first row's offset does not fit a 64-bit integer.
    #[error("page {page} of {size} is out of range")]
    PageOutOfRange { page: usize, size: usize },
    /// Another device profile of the tenant has this name.
    #[error("Device profile with such name already exists!")]
    DuplicateName,
    /// Another device profile has this provision device key.
    #[error("Device profile with such provision device key already exists!")]
    DuplicateProvisionKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RecordError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RecordError::Store(e) if e.is_retryable())
    }
}

/// Refuses `value` when it is longer than `max` bytes.
pub fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), RecordError> {
    if value.len() > max {
        return Err(RecordError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

/// Refuses `value` when it is longer than `max` bytes or not one JSON value.
fn check_json(field: &'static str, value: &str, max: usize) -> Result<(), RecordError> {
    check_len(field, value, max)?;
    serde_json::from_str::<serde::de::IgnoredAny>(value)
        .map(|_| ())
        .map_err(|_| RecordError::NotJson { field })
}

/// Refuses a page size of 0 or above `max`.
pub fn check_page_size(size: usize, max: usize) -> Result<(), RecordError> {
    if size == 0 || size > max {
        return Err(RecordError::PageSize { size, max });
    }
    Ok(())
}

/// The offset of a page's first row, refused when it does not fit a signed 64-bit integer
/// (what SQLite and ClickHouse count rows in).
pub fn page_offset(page: usize, size: usize) -> Result<i64, RecordError> {
    page.checked_mul(size)
        .and_then(|o| i64::try_from(o).ok())
        .ok_or(RecordError::PageOutOfRange { page, size })
}

/// ThingsBoard's `RpcStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RpcStatus {
    Queued,
    Sent,
    Delivered,
    Successful,
    Timeout,
    Expired,
    Failed,
    Deleted,
}

impl RpcStatus {
    pub const ALL: [RpcStatus; 8] = [
        RpcStatus::Queued,
        RpcStatus::Sent,
        RpcStatus::Delivered,
        RpcStatus::Successful,
        RpcStatus::Timeout,
        RpcStatus::Expired,
        RpcStatus::Failed,
        RpcStatus::Deleted,
    ];

    /// The name ThingsBoard gives it (`"QUEUED"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RpcStatus::Queued => "QUEUED",
            RpcStatus::Sent => "SENT",
            RpcStatus::Delivered => "DELIVERED",
            RpcStatus::Successful => "SUCCESSFUL",
            RpcStatus::Timeout => "TIMEOUT",
            RpcStatus::Expired => "EXPIRED",
            RpcStatus::Failed => "FAILED",
            RpcStatus::Deleted => "DELETED",
        }
    }

    pub fn parse(s: &str) -> Option<RpcStatus> {
        RpcStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// 1-based, in the order of [`RpcStatus::ALL`]: how the stores keep it.
    pub fn code(self) -> i8 {
        match self {
            RpcStatus::Queued => 1,
            RpcStatus::Sent => 2,
            RpcStatus::Delivered => 3,
            RpcStatus::Successful => 4,
            RpcStatus::Timeout => 5,
            RpcStatus::Expired => 6,
            RpcStatus::Failed => 7,
            RpcStatus::Deleted => 8,
        }
    }

    pub fn from_code(code: i8) -> Option<RpcStatus> {
        RpcStatus::ALL.into_iter().find(|st| st.code() == code)
    }

    /// Not finished: the request may still be sent or answered (QUEUED, SENT, DELIVERED,
    /// TIMEOUT).
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            RpcStatus::Queued | RpcStatus::Sent | RpcStatus::Delivered | RpcStatus::Timeout
        )
    }
}

/// A persistent RPC, ThingsBoard's `Rpc`. The JSON fields are kept as text, verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcRecord {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    /// Milliseconds since the epoch.
    pub created_time: i64,
    /// Milliseconds since the epoch.
    pub expiration_time: i64,
    /// JSON, at most [`MAX_RPC_REQUEST_BYTES`].
    pub request: String,
    /// JSON, at most [`MAX_RPC_RESPONSE_BYTES`]; `None` until the device answered.
    pub response: Option<String>,
    pub status: RpcStatus,
    /// JSON, at most [`MAX_RPC_ADDITIONAL_INFO_BYTES`].
    pub additional_info: Option<String>,
}

impl RpcRecord {
    /// Checks the bounds of the fields a peer controls; every store calls it before writing.
    pub fn validate(&self) -> Result<(), RecordError> {
        check_json("request", &self.request, MAX_RPC_REQUEST_BYTES)?;
        if let Some(response) = &self.response {
            check_json("response", response, MAX_RPC_RESPONSE_BYTES)?;
        }
        if let Some(info) = &self.additional_info {
            check_json("additionalInfo", info, MAX_RPC_ADDITIONAL_INFO_BYTES)?;
        }
        Ok(())
    }
}

/// A page of a device's RPCs, newest first (by created time, then id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcPageRequest {
    /// 1..=[`MAX_RPC_PAGE_SIZE`].
    pub page_size: usize,
    /// 0-based.
    pub page: usize,
    /// Only records of this status.
    pub status: Option<RpcStatus>,
}

/// A pending device-side claim (§1.8): the secret the claiming user must give, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    pub device_id: DeviceId,
    /// At most [`MAX_CLAIM_SECRET_BYTES`]; empty is a valid secret.
    pub secret_key: String,
    /// Milliseconds since the epoch.
    pub expiration_time: i64,
}

impl ClaimRequest {
    pub fn validate(&self) -> Result<(), RecordError> {
        check_len("secretKey", &self.secret_key, MAX_CLAIM_SECRET_BYTES)
    }

    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expiration_time <= now_ms
    }
}

/// The stored records of the two-way device API that must survive a restart: persistent RPCs
/// and claim requests. Written by the device's owner (one node at a time), read by the REST API.
#[async_trait]
pub trait DeviceRecords: Send + Sync + 'static {
    /// Inserts the RPC, or replaces the one with its id.
    async fn save_rpc(&self, rpc: &RpcRecord) -> Result<(), RecordError>;

    /// Replaces the RPC with its id only if one is stored (a status change must not bring back
    /// a record deleted meanwhile); returns whether it was. A store that cannot do this in one
    /// step checks, then saves (a deletion between the two is lost).
    async fn update_rpc(&self, rpc: &RpcRecord) -> Result<bool, RecordError> {
        if self.rpc(rpc.id).await?.is_none() {
            return Ok(false);
        }
        self.save_rpc(rpc).await?;
        Ok(true)
    }

    async fn rpc(&self, id: uuid::Uuid) -> Result<Option<RpcRecord>, RecordError>;

    /// One page of the device's RPCs, newest first, and how many there are in all (with the
    /// status filter applied).
    async fn device_rpcs(
        &self,
        device: DeviceId,
        page: &RpcPageRequest,
    ) -> Result<Page<RpcRecord>, RecordError>;

    /// Returns whether the RPC existed.
    async fn delete_rpc(&self, id: uuid::Uuid) -> Result<bool, RecordError>;

    /// Deletes every RPC created before `before` (ms), whatever its status: the records' TTL.
    async fn delete_rpcs_created_before(&self, before: i64) -> Result<(), RecordError>;

    /// The device's RPCs not finished ([`RpcStatus::is_pending`]), oldest first, at most
    /// `limit` (1..=[`MAX_PENDING_RPCS`]): what the device's owner reloads on start.
    async fn pending_rpcs(
        &self,
        device: DeviceId,
        limit: usize,
    ) -> Result<Vec<RpcRecord>, RecordError>;

    /// ThingsBoard's put-if-absent: stores `claim` unless the device has a claim request that
    /// has not expired at `now_ms`. Returns the request that stands afterwards.
    async fn put_claim_if_absent(
        &self,
        claim: &ClaimRequest,
        now_ms: i64,
    ) -> Result<ClaimRequest, RecordError>;

    /// The device's claim request as stored, expired or not.
    async fn claim(&self, device: DeviceId) -> Result<Option<ClaimRequest>, RecordError>;

    /// Returns whether there was one.
    async fn delete_claim(&self, device: DeviceId) -> Result<bool, RecordError>;
}

// ---------------------------------------------------------------------------------------------
// Device profiles: what provisioning needs of them (issue 13)

/// Most bytes of a device profile's name (ThingsBoard's column is 255 characters).
pub const MAX_PROFILE_NAME_BYTES: usize = 255;
/// Most bytes of a device profile's description.
pub const MAX_PROFILE_DESCRIPTION_BYTES: usize = 1024;
/// Most bytes of a provision device key, and of a provision device secret.
pub const MAX_PROVISION_CREDENTIAL_BYTES: usize = 255;
/// Most profiles in one page of a tenant's (with the bounds above, at most about 1.8 MB).
pub const MAX_PROFILE_PAGE_SIZE: usize = 1_000;

/// ThingsBoard's `DeviceProfileProvisionType`, without the X.509 chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProvisionType {
    Disabled,
    AllowCreateNewDevices,
    CheckPreProvisionedDevices,
}

impl ProvisionType {
    pub const ALL: [ProvisionType; 3] = [
        ProvisionType::Disabled,
        ProvisionType::AllowCreateNewDevices,
        ProvisionType::CheckPreProvisionedDevices,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProvisionType::Disabled => "DISABLED",
            ProvisionType::AllowCreateNewDevices => "ALLOW_CREATE_NEW_DEVICES",
            ProvisionType::CheckPreProvisionedDevices => "CHECK_PRE_PROVISIONED_DEVICES",
        }
    }

    pub fn parse(s: &str) -> Option<ProvisionType> {
        ProvisionType::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// 1-based, in the order of [`ProvisionType::ALL`]: how the stores keep it.
    pub fn code(self) -> i8 {
        match self {
            ProvisionType::Disabled => 1,
            ProvisionType::AllowCreateNewDevices => 2,
            ProvisionType::CheckPreProvisionedDevices => 3,
        }
    }

    pub fn from_code(code: i8) -> Option<ProvisionType> {
        ProvisionType::ALL.into_iter().find(|t| t.code() == code)
    }
}

/// A device profile, ThingsBoard's `DeviceProfile`: the fields provisioning needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceProfile {
    pub id: uuid::Uuid,
    pub tenant_id: TenantId,
    /// Milliseconds since the epoch.
    pub created_time: i64,
    /// Unique in the tenant; 1..=[`MAX_PROFILE_NAME_BYTES`] bytes.
    pub name: String,
    /// The tenant's default profile; a tenant has at most one.
    pub default: bool,
    /// At most [`MAX_PROFILE_DESCRIPTION_BYTES`].
    pub description: Option<String>,
    pub provision_type: ProvisionType,
    /// Unique among all profiles; at most [`MAX_PROVISION_CREDENTIAL_BYTES`].
    pub provision_device_key: Option<String>,
    /// At most [`MAX_PROVISION_CREDENTIAL_BYTES`].
    pub provision_device_secret: Option<String>,
}

impl DeviceProfile {
    /// Checks the bounds of the fields a peer controls; every store calls it before writing.
    pub fn validate(&self) -> Result<(), RecordError> {
        if self.name.is_empty() {
            return Err(RecordError::Missing { field: "name" });
        }
        check_len("name", &self.name, MAX_PROFILE_NAME_BYTES)?;
        if let Some(d) = &self.description {
            check_len("description", d, MAX_PROFILE_DESCRIPTION_BYTES)?;
        }
        if let Some(k) = &self.provision_device_key {
            check_len("provisionDeviceKey", k, MAX_PROVISION_CREDENTIAL_BYTES)?;
        }
        if let Some(s) = &self.provision_device_secret {
            check_len("provisionDeviceSecret", s, MAX_PROVISION_CREDENTIAL_BYTES)?;
        }
        Ok(())
    }
}

/// Checks a page request of profiles: its size, and a text search no longer than a name.
pub fn check_profile_page(page: &PageRequest) -> Result<(), RecordError> {
    check_page_size(page.page_size, MAX_PROFILE_PAGE_SIZE)?;
    if let Some(text) = &page.text_search {
        check_len("textSearch", text, MAX_PROFILE_NAME_BYTES)?;
    }
    Ok(())
}

/// The tenants' device profiles; small and rarely written (by tenant administrators), read by
/// provisioning and device creation.
#[async_trait]
pub trait DeviceProfiles: Send + Sync + 'static {
    /// Inserts the profile, or replaces the one with its id. Refuses a name another profile of
    /// the tenant has ([`RecordError::DuplicateName`]) and a provision key another profile has
    /// ([`RecordError::DuplicateProvisionKey`]); a default profile clears the tenant's old one.
    async fn save_profile(&self, profile: &DeviceProfile) -> Result<(), RecordError>;

    async fn profile(&self, id: uuid::Uuid) -> Result<Option<DeviceProfile>, RecordError>;

    async fn profile_by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<DeviceProfile>, RecordError>;

    async fn default_profile(&self, tenant: TenantId)
    -> Result<Option<DeviceProfile>, RecordError>;

    /// The profile whose provision device key this is (provisioning's first look-up).
    async fn profile_by_provision_key(
        &self,
        key: &str,
    ) -> Result<Option<DeviceProfile>, RecordError>;

    /// The tenant's profiles by name (then id), a page at a time; `text_search` is a
    /// case-insensitive name prefix. Page sizes: 1..=[`MAX_PROFILE_PAGE_SIZE`].
    async fn profiles(
        &self,
        tenant: TenantId,
        page: &PageRequest,
    ) -> Result<Page<DeviceProfile>, RecordError>;

    /// Returns whether the profile existed.
    async fn delete_profile(&self, id: uuid::Uuid) -> Result<bool, RecordError>;
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

    #[test]
    fn provision_types_round_trip() {
        for t in ProvisionType::ALL {
            assert_eq!(ProvisionType::parse(t.as_str()), Some(t));
            assert_eq!(ProvisionType::from_code(t.code()), Some(t));
        }
        assert_eq!(ProvisionType::parse("X509_CERTIFICATE_CHAIN"), None);
    }

    #[test]
    fn rpc_statuses_round_trip() {
        for status in RpcStatus::ALL {
            assert_eq!(RpcStatus::parse(status.as_str()), Some(status));
            assert_eq!(RpcStatus::from_code(status.code()), Some(status));
        }
        assert_eq!(RpcStatus::parse("queued"), None);
        assert_eq!(RpcStatus::from_code(0), None);
    }

    #[test]
    fn record_bounds_are_checked() {
        let rpc = RpcRecord {
            id: uuid::Uuid::nil(),
            tenant_id: TenantId::from_name("t"),
            device_id: DeviceId::derive(TenantId::from_name("t"), "d"),
            created_time: 1,
            expiration_time: 2,
            request: r#"{"method":"m"}"#.into(),
            response: None,
            status: RpcStatus::Queued,
            additional_info: None,
        };
        assert_eq!(rpc.validate(), Ok(()));
        type Case = (fn(&mut RpcRecord), RecordError);
        let cases: &[Case] = &[
            (
                |r| r.request = format!("\"{}\"", "x".repeat(MAX_RPC_REQUEST_BYTES)),
                RecordError::TooLong {
                    field: "request",
                    len: MAX_RPC_REQUEST_BYTES + 2,
                    max: MAX_RPC_REQUEST_BYTES,
                },
            ),
            (
                |r| r.response = Some("ok".into()),
                RecordError::NotJson { field: "response" },
            ),
            (
                |r| r.additional_info = Some("{".into()),
                RecordError::NotJson {
                    field: "additionalInfo",
                },
            ),
        ];
        for (change, want) in cases {
            let mut bad = rpc.clone();
            change(&mut bad);
            assert_eq!(bad.validate().as_ref(), Err(want));
        }
        let claim = ClaimRequest {
            device_id: rpc.device_id,
            secret_key: "s".repeat(MAX_CLAIM_SECRET_BYTES + 1),
            expiration_time: 5,
        };
        assert!(matches!(
            claim.validate(),
            Err(RecordError::TooLong {
                field: "secretKey",
                ..
            })
        ));
        assert!(claim.is_expired(5) && !claim.is_expired(4));
        assert!(check_page_size(0, 10).is_err() && check_page_size(11, 10).is_err());
        assert_eq!(check_page_size(10, 10), Ok(()));
        assert_eq!(page_offset(3, 10), Ok(30));
        assert!(page_offset(usize::MAX, 2).is_err());
    }
}
