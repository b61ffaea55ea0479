//! In-memory doubles of the ports for unit tests of the actors (and of benches). Deliberately
//! simple: the real memory queue and embedded store are adapters in `engine`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::batch::WriteBatch;
use crate::model::{AttributeScope, DeviceId, Message, SharedMessage};
use crate::ports::{
    AttributeValue, Consumer, Delivered, Delivery, LatestValue, Producer, QueueError, RangeQuery,
    RangeResult, Store, StoreError,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Records what it is sent; panics for chosen devices (to crash a session on purpose).
#[derive(Default)]
pub struct MemProducer {
    sent: Mutex<Vec<SharedMessage>>,
    panic_for: Mutex<HashSet<DeviceId>>,
}

impl MemProducer {
    pub fn messages(&self) -> Vec<SharedMessage> {
        lock(&self.sent).clone()
    }

    pub fn panic_for(&self, device: DeviceId) {
        lock(&self.panic_for).insert(device);
    }
}

#[async_trait]
impl Producer for MemProducer {
    async fn send(&self, message: SharedMessage) -> Result<Delivery, QueueError> {
        let crash = lock(&self.panic_for).contains(&message.device_id);
        assert!(
            !crash,
            "test producer told to panic for device {}",
            message.device_id
        );
        lock(&self.sent).push(message);
        Ok(Delivery::Done(Ok(())))
    }
}

/// One partition, a vector and a committed offset.
#[derive(Clone, Default)]
pub struct VecQueue {
    inner: Arc<Mutex<VecQueueInner>>,
}

#[derive(Default)]
struct VecQueueInner {
    messages: Vec<SharedMessage>,
    read: usize,
    committed: Option<u64>,
}

impl VecQueue {
    pub fn push(&self, message: Message) {
        lock(&self.inner).messages.push(Arc::new(message));
    }

    pub fn committed(&self) -> Option<u64> {
        lock(&self.inner).committed
    }

    /// The same queue seen by a new consumer: reading resumes after the committed offset.
    pub fn reopened(&self) -> VecQueue {
        let mut inner = lock(&self.inner);
        inner.read = inner
            .committed
            .map_or(0, |c| usize::try_from(c + 1).unwrap_or(usize::MAX));
        drop(inner);
        self.clone()
    }
}

#[async_trait]
impl Consumer for VecQueue {
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Delivered>, QueueError> {
        let batch: Vec<Delivered> = {
            let mut inner = lock(&self.inner);
            let start = inner.read;
            let end = (start + max).min(inner.messages.len());
            inner.read = end;
            (start..end)
                .map(|i| Delivered {
                    partition: 0,
                    offset: i as u64,
                    message: inner.messages[i].clone(),
                })
                .collect()
        };
        if batch.is_empty() {
            tokio::time::sleep(max_wait).await;
        }
        Ok(batch)
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
        let mut inner = lock(&self.inner);
        for (_, offset) in offsets {
            inner.committed = Some(inner.committed.map_or(*offset, |c| c.max(*offset)));
        }
        Ok(())
    }
}

/// Keeps written batches; can be switched "down" to fail every write with a retryable error.
#[derive(Default)]
pub struct MemStore {
    batches: Mutex<Vec<Arc<WriteBatch>>>,
    down: AtomicBool,
    panic_next: AtomicBool,
    refused_key: Mutex<Option<String>>,
}

impl MemStore {
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The next write panics (a bug in a store, as the sink sees it).
    pub fn panic_on_next_write(&self) {
        self.panic_next.store(true, Ordering::SeqCst);
    }

    /// Every batch with a data point of this key is refused for good (a type error, say).
    pub fn refuse_key(&self, key: &str) {
        *lock(&self.refused_key) = Some(key.to_owned());
    }

    pub fn points(&self) -> usize {
        lock(&self.batches).iter().map(|b| b.data_points()).sum()
    }
}

fn unsupported() -> StoreError {
    StoreError::Permanent("queries are not supported by the test store".into())
}

#[async_trait]
impl Store for MemStore {
    async fn write(&self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("test store is down".into()));
        }
        assert!(
            !self.panic_next.swap(false, Ordering::SeqCst),
            "test store told to panic"
        );
        if let Some(key) = lock(&self.refused_key).as_deref()
            && batch.timeseries.iter().any(|row| row.key == key)
        {
            return Err(StoreError::Permanent(format!("key {key} refused")));
        }
        lock(&self.batches).push(batch);
        Ok(())
    }

    async fn latest(
        &self,
        _: DeviceId,
        _: Option<&[String]>,
    ) -> Result<Vec<LatestValue>, StoreError> {
        Err(unsupported())
    }

    async fn timeseries_keys(&self, _: DeviceId) -> Result<Vec<String>, StoreError> {
        Err(unsupported())
    }

    async fn range(&self, _: DeviceId, _: &RangeQuery) -> Result<RangeResult, StoreError> {
        Err(unsupported())
    }

    async fn attributes(
        &self,
        _: DeviceId,
        _: Option<AttributeScope>,
        _: Option<&[String]>,
    ) -> Result<Vec<AttributeValue>, StoreError> {
        Err(unsupported())
    }

    async fn attribute_keys(
        &self,
        _: DeviceId,
        _: Option<AttributeScope>,
    ) -> Result<Vec<String>, StoreError> {
        Err(unsupported())
    }

    async fn delete_attributes(
        &self,
        _: DeviceId,
        _: AttributeScope,
        _: &[String],
        _: i64,
    ) -> Result<(), StoreError> {
        Err(unsupported())
    }
}

/// The default rule chain, except that it panics on the messages `fails_on` picks (a bug in
/// a rule, as its supervisor sees it).
pub struct FaultyChain {
    fails_on: Box<dyn Fn(&Message) -> bool + Send>,
}

impl FaultyChain {
    pub fn new(fails_on: impl Fn(&Message) -> bool + Send + 'static) -> FaultyChain {
        FaultyChain {
            fails_on: Box::new(fails_on),
        }
    }
}

impl crate::rule_chain::RuleChain for FaultyChain {
    fn process(&mut self, message: &SharedMessage) -> crate::rule_chain::Outcome {
        assert!(!(self.fails_on)(message), "test rule chain told to fail");
        crate::rule_chain::DefaultRuleChain::default().process(message)
    }
}

/// Keeps dead-lettered messages with their reasons.
#[derive(Default)]
pub struct MemDeadLetters(Mutex<Vec<(SharedMessage, String)>>);

impl MemDeadLetters {
    pub fn letters(&self) -> Vec<(SharedMessage, String)> {
        lock(&self.0).clone()
    }
}

#[async_trait]
impl crate::ports::DeadLetters for MemDeadLetters {
    async fn dead_letter(
        &self,
        message: &SharedMessage,
        reason: &str,
    ) -> Result<(), crate::ports::QueueError> {
        lock(&self.0).push((message.clone(), reason.to_owned()));
        Ok(())
    }
}

/// Devices in a map; refuses a second device with a taken name, like the real registries.
#[derive(Default)]
pub struct MemRegistry(Mutex<Vec<Arc<crate::model::Device>>>);

impl MemRegistry {
    pub fn devices(&self) -> Vec<Arc<crate::model::Device>> {
        lock(&self.0).clone()
    }
}

#[async_trait]
impl crate::ports::DeviceRegistry for MemRegistry {
    async fn by_token(
        &self,
        token: &str,
    ) -> Result<Option<Arc<crate::model::Device>>, crate::ports::RegistryError> {
        Ok(lock(&self.0).iter().find(|d| d.token.0 == token).cloned())
    }

    async fn get(
        &self,
        id: DeviceId,
    ) -> Result<Option<Arc<crate::model::Device>>, crate::ports::RegistryError> {
        Ok(lock(&self.0).iter().find(|d| d.id == id).cloned())
    }

    async fn by_name(
        &self,
        tenant: crate::model::TenantId,
        name: &str,
    ) -> Result<Option<Arc<crate::model::Device>>, crate::ports::RegistryError> {
        Ok(lock(&self.0)
            .iter()
            .find(|d| d.tenant_id == tenant && d.name == name)
            .cloned())
    }

    async fn save(
        &self,
        device: crate::model::Device,
    ) -> Result<Arc<crate::model::Device>, crate::ports::RegistryError> {
        let mut all = lock(&self.0);
        if all
            .iter()
            .any(|d| d.id != device.id && d.tenant_id == device.tenant_id && d.name == device.name)
        {
            return Err(crate::ports::RegistryError::DuplicateName);
        }
        all.retain(|d| d.id != device.id);
        let device = Arc::new(device);
        all.push(device.clone());
        Ok(device)
    }

    async fn create(
        &self,
        device: crate::model::Device,
    ) -> Result<Arc<crate::model::Device>, crate::ports::RegistryError> {
        let mut all = lock(&self.0);
        if all
            .iter()
            .any(|d| d.tenant_id == device.tenant_id && d.name == device.name)
        {
            return Err(crate::ports::RegistryError::DuplicateName);
        }
        let id = crate::ports::device_id_candidates(device.tenant_id, &device.name)
            .find(|id| all.iter().all(|d| d.id != *id))
            .unwrap_or(device.id);
        let device = Arc::new(crate::model::Device { id, ..device });
        all.push(device.clone());
        Ok(device)
    }

    async fn delete(&self, id: DeviceId) -> Result<bool, crate::ports::RegistryError> {
        let mut all = lock(&self.0);
        let before = all.len();
        all.retain(|d| d.id != id);
        Ok(all.len() != before)
    }

    async fn list(
        &self,
        tenant: crate::model::TenantId,
        page: &crate::ports::PageRequest,
    ) -> Result<crate::ports::Page<Arc<crate::model::Device>>, crate::ports::RegistryError> {
        let all: Vec<_> = lock(&self.0)
            .iter()
            .filter(|d| d.tenant_id == tenant)
            .cloned()
            .collect();
        Ok(crate::ports::Page {
            total_elements: all.len(),
            data: all
                .into_iter()
                .skip(page.page * page.page_size)
                .take(page.page_size)
                .collect(),
        })
    }
}

/// Converter and integration definitions in memory.
#[derive(Default)]
pub struct MemCatalog {
    converters: Mutex<Vec<crate::integration::ConverterDef>>,
    integrations: Mutex<Vec<crate::integration::IntegrationDef>>,
}

#[async_trait]
impl crate::ports::Catalog for MemCatalog {
    async fn load(
        &self,
    ) -> Result<
        (
            Vec<crate::integration::ConverterDef>,
            Vec<crate::integration::IntegrationDef>,
        ),
        StoreError,
    > {
        Ok((
            lock(&self.converters).clone(),
            lock(&self.integrations).clone(),
        ))
    }

    async fn put_converter(
        &self,
        def: &crate::integration::ConverterDef,
    ) -> Result<(), StoreError> {
        let mut all = lock(&self.converters);
        all.retain(|c| c.id != def.id);
        all.push(def.clone());
        Ok(())
    }

    async fn put_integration(
        &self,
        def: &crate::integration::IntegrationDef,
    ) -> Result<(), StoreError> {
        let mut all = lock(&self.integrations);
        all.retain(|c| c.id != def.id);
        all.push(def.clone());
        Ok(())
    }

    async fn delete(&self, id: uuid::Uuid) -> Result<(), StoreError> {
        lock(&self.converters).retain(|c| c.id != id);
        lock(&self.integrations).retain(|c| c.id != id);
        Ok(())
    }
}

/// Claim requests in memory (ThingsBoard's put-if-absent); persistent RPCs are not kept (every
/// RPC call fails, as [`MemStore`]'s queries do).
#[derive(Default)]
pub struct MemRecords {
    claims: Mutex<std::collections::HashMap<DeviceId, crate::ports::ClaimRequest>>,
}

#[async_trait]
impl crate::ports::DeviceRecords for MemRecords {
    async fn save_rpc(&self, _: &crate::ports::RpcRecord) -> Result<(), crate::ports::RecordError> {
        Err(unsupported().into())
    }

    async fn rpc(
        &self,
        _: uuid::Uuid,
    ) -> Result<Option<crate::ports::RpcRecord>, crate::ports::RecordError> {
        Err(unsupported().into())
    }

    async fn device_rpcs(
        &self,
        _: DeviceId,
        _: &crate::ports::RpcPageRequest,
    ) -> Result<crate::ports::Page<crate::ports::RpcRecord>, crate::ports::RecordError> {
        Err(unsupported().into())
    }

    async fn delete_rpc(&self, _: uuid::Uuid) -> Result<bool, crate::ports::RecordError> {
        Err(unsupported().into())
    }

    async fn pending_rpcs(
        &self,
        _: DeviceId,
        _: usize,
    ) -> Result<Vec<crate::ports::RpcRecord>, crate::ports::RecordError> {
        Err(unsupported().into())
    }

    async fn delete_rpcs_created_before(&self, _: i64) -> Result<(), crate::ports::RecordError> {
        Err(unsupported().into())
    }

    async fn put_claim_if_absent(
        &self,
        claim: &crate::ports::ClaimRequest,
        now_ms: i64,
    ) -> Result<crate::ports::ClaimRequest, crate::ports::RecordError> {
        claim.validate()?;
        let mut claims = lock(&self.claims);
        match claims.get(&claim.device_id) {
            Some(standing) if standing.expiration_time > now_ms => Ok(standing.clone()),
            _ => {
                claims.insert(claim.device_id, claim.clone());
                Ok(claim.clone())
            }
        }
    }

    async fn claim(
        &self,
        device: DeviceId,
    ) -> Result<Option<crate::ports::ClaimRequest>, crate::ports::RecordError> {
        Ok(lock(&self.claims).get(&device).cloned())
    }

    async fn delete_claim(&self, device: DeviceId) -> Result<bool, crate::ports::RecordError> {
        Ok(lock(&self.claims).remove(&device).is_some())
    }
}
