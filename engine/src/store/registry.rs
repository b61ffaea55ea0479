//! The device registry every store backend shares: all devices held in memory (the token lookup
//! of each MQTT connect and HTTP upload is a hash-map read), made durable by a backend's
//! [`DeviceTable`].
//!
//! With a table other nodes write too (ClickHouse), the memory is this node's view, not the
//! whole truth: a token, name or id it does not hold is looked up in the table before it is
//! called unknown, and a creation is checked against the table, so a device another node
//! created is found, never created a second time. Unknown tokens and names are remembered for
//! a short time (`devices.unknown_cache_ttl`), so a device retrying a deleted token does not
//! cost a table query per attempt: a device created on *another* node with a token this node
//! just found unknown connects here once that time has passed (one created through this node,
//! at once).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actors::metrics::{
    REGISTRY_CREATION_CONFLICTS, REGISTRY_DEVICES_REFUSED, REGISTRY_NEGATIVE_CACHE,
    REGISTRY_TABLE_LOOKUPS,
};
use actors::model::{Device, DeviceId, MAX_ACCESS_TOKEN_CHARS, MAX_DEVICE_NAME_CHARS, TenantId};
use actors::ports::{
    DeviceRegistry, Page, PageRequest, RegistryError, StoreError, device_id_candidates,
};
use async_trait::async_trait;
use hashlink::LinkedHashMap;
use metrics::counter;
use parking_lot::{Mutex, RwLock};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Where a backend keeps its devices.
#[async_trait]
pub trait DeviceTable: Send + Sync + 'static {
    /// Whether other nodes write this table too. Then what this node does not hold is looked up
    /// in it, and creations are checked against it.
    fn shared(&self) -> bool {
        false
    }

    /// Writes a device no node holds under this id. Returns the device the table holds under
    /// the id afterwards: on a shared table another node may have created a device with the
    /// same id at the same moment, and the first creation wins.
    async fn create(&self, device: Arc<Device>) -> Result<Device, StoreError>;

    /// Replaces the device with this id (a rename, new credentials); wins over creations.
    async fn update(&self, device: Arc<Device>) -> Result<(), StoreError>;

    async fn delete(&self, id: DeviceId) -> Result<(), StoreError>;

    /// The live devices that hold `device`'s token, its name in its tenant, or one of
    /// `ids`: what a creation or change must not clash with. Only shared tables answer; the
    /// others are all in memory already.
    async fn clashes(
        &self,
        _device: &Device,
        _ids: &[DeviceId],
    ) -> Result<Vec<Device>, StoreError> {
        Ok(Vec::new())
    }

    /// A device this node does not hold, by token; only shared tables answer.
    async fn find_by_token(&self, _token: &str) -> Result<Option<Device>, StoreError> {
        Ok(None)
    }

    /// A device this node does not hold, by name; only shared tables answer.
    async fn find_by_name(
        &self,
        _tenant: TenantId,
        _name: &str,
    ) -> Result<Option<Device>, StoreError> {
        Ok(None)
    }

    /// A device this node does not hold, by id; only shared tables answer.
    async fn find_by_id(&self, _id: DeviceId) -> Result<Option<Device>, StoreError> {
        Ok(None)
    }
}

/// The registry's limits (`[devices]` in the configuration).
#[derive(Clone, Debug)]
pub struct RegistryLimits {
    /// Most devices per tenant; 0: no limit.
    pub max_per_tenant: u64,
    /// Unknown tokens and names remembered as unknown, at most.
    pub unknown_cache_size: usize,
    /// How long one is remembered.
    pub unknown_cache_ttl: Duration,
    /// Lookups in a shared table at once; more wait.
    pub max_concurrent_lookups: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            max_per_tenant: 1_000_000,
            unknown_cache_size: 10_000,
            unknown_cache_ttl: Duration::from_secs(10),
            max_concurrent_lookups: 8,
        }
    }
}

pub struct CachedRegistry<T> {
    table: T,
    cache: RwLock<Cache>,
    /// Serialises saves, so the uniqueness checks against the cache and the write are one step.
    save_lock: tokio::sync::Mutex<()>,
    unknown: Unknown,
    /// Bounds the queries a flood of unknown tokens sends to a shared table at once, so they
    /// cannot take the server's query slots from the sinks' inserts.
    lookups: Semaphore,
    max_per_tenant: u64,
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<DeviceId, Arc<Device>>,
    by_token: HashMap<String, Arc<Device>>,
    by_name: HashMap<(TenantId, String), Arc<Device>>,
    per_tenant: HashMap<TenantId, u64>,
    /// Counts local writes: a device read from the table while one happened may be older than
    /// what the write put in memory, and is not cached over it.
    writes: u64,
}

impl Cache {
    fn insert(&mut self, device: Arc<Device>) {
        self.remove(device.id);
        self.by_token.insert(device.token.0.clone(), device.clone());
        self.by_name
            .insert((device.tenant_id, device.name.clone()), device.clone());
        *self.per_tenant.entry(device.tenant_id).or_default() += 1;
        self.by_id.insert(device.id, device);
    }

    fn remove(&mut self, id: DeviceId) -> Option<Arc<Device>> {
        let old = self.by_id.remove(&id)?;
        // Only the entries that are this device's: another device may have taken its token
        // or name since (seen from the table).
        if self.by_token.get(&old.token.0).is_some_and(|d| d.id == id) {
            self.by_token.remove(&old.token.0);
        }
        let name = (old.tenant_id, old.name.clone());
        if self.by_name.get(&name).is_some_and(|d| d.id == id) {
            self.by_name.remove(&name);
        }
        if let Some(n) = self.per_tenant.get_mut(&old.tenant_id) {
            *n = n.saturating_sub(1);
        }
        Some(old)
    }

    fn devices_of(&self, tenant: TenantId) -> u64 {
        self.per_tenant.get(&tenant).copied().unwrap_or(0)
    }
}

/// A token or a device name looked up and not found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Token(String),
    Name(TenantId, String),
}

/// The negative cache: bounded in entries (the oldest goes first) and in age. Keys are bounded
/// in size too: a token or name longer than any device can have is never looked up.
struct Unknown {
    entries: Mutex<LinkedHashMap<Key, Instant>>,
    capacity: usize,
    ttl: Duration,
}

impl Unknown {
    fn new(limits: &RegistryLimits) -> Unknown {
        Unknown {
            entries: Mutex::new(LinkedHashMap::new()),
            capacity: limits.unknown_cache_size,
            ttl: limits.unknown_cache_ttl,
        }
    }

    /// Whether `key` was found unknown less than the TTL ago; counts the answer.
    fn remembers(&self, key: &Key) -> bool {
        let mut entries = self.entries.lock();
        let known_unknown = match entries.get(key) {
            Some(at) if at.elapsed() < self.ttl => true,
            Some(_) => {
                entries.remove(key);
                false
            }
            None => false,
        };
        drop(entries);
        let result = if known_unknown { "hit" } else { "miss" };
        counter!(REGISTRY_NEGATIVE_CACHE, "result" => result).increment(1);
        known_unknown
    }

    fn insert(&self, key: Key) {
        if self.capacity == 0 || self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock();
        entries.replace(key, Instant::now());
        while entries.len() > self.capacity {
            entries.pop_front();
        }
    }

    fn forget(&self, device: &Device) {
        let mut entries = self.entries.lock();
        entries.remove(&Key::Token(device.token.0.clone()));
        entries.remove(&Key::Name(device.tenant_id, device.name.clone()));
    }
}

/// Most ids tried for one new device; past it, the name's ids are all held by devices renamed
/// since, which takes that many renames away from one name.
const MAX_ID_CANDIDATES: usize = 64;
/// Candidate ids checked against a shared table per query.
const CANDIDATES_PER_QUERY: usize = 4;

impl<T: DeviceTable> CachedRegistry<T> {
    /// `devices`: everything the table holds now. Default limits; see [`Self::limited`].
    pub fn new(table: T, devices: impl IntoIterator<Item = Device>) -> Self {
        let mut cache = Cache::default();
        for device in devices {
            cache.insert(Arc::new(device));
        }
        let limits = RegistryLimits::default();
        CachedRegistry {
            table,
            cache: RwLock::new(cache),
            save_lock: tokio::sync::Mutex::new(()),
            unknown: Unknown::new(&limits),
            lookups: Semaphore::new(limits.max_concurrent_lookups),
            max_per_tenant: limits.max_per_tenant,
        }
    }

    /// The same registry under these limits.
    #[must_use]
    pub fn limited(mut self, limits: &RegistryLimits) -> Self {
        self.unknown = Unknown::new(limits);
        self.lookups = Semaphore::new(limits.max_concurrent_lookups.max(1));
        self.max_per_tenant = limits.max_per_tenant;
        self
    }

    /// Looks `key` up in a shared table through `find`, unless it was found unknown lately;
    /// caches what it finds and remembers what it does not.
    async fn look_up<F>(&self, key: Key, find: F) -> Result<Option<Arc<Device>>, RegistryError>
    where
        F: std::future::Future<Output = Result<Option<Device>, StoreError>>,
    {
        if !self.table.shared() || self.unknown.remembers(&key) {
            return Ok(None);
        }
        let by = match key {
            Key::Token(_) => "token",
            Key::Name(..) => "name",
        };
        let found = self.query_table(by, find).await?;
        if found.is_none() {
            self.unknown.insert(key);
        }
        Ok(found)
    }

    /// Asks the shared table through `find`, within the bound on lookups at once, and caches
    /// what it finds.
    async fn query_table<F>(
        &self,
        by: &'static str,
        find: F,
    ) -> Result<Option<Arc<Device>>, RegistryError>
    where
        F: std::future::Future<Output = Result<Option<Device>, StoreError>>,
    {
        let writes = self.cache.read().writes;
        let found = {
            let _permit = self.lookups.acquire().await;
            counter!(REGISTRY_TABLE_LOOKUPS, "by" => by).increment(1);
            find.await?
        };
        Ok(found.map(|d| self.remember(d, writes)))
    }

    /// Caches a device read from the table, unless this node wrote it since the read began
    /// (then memory is newer).
    fn remember(&self, device: Device, writes_before: u64) -> Arc<Device> {
        let mut cache = self.cache.write();
        if cache.writes != writes_before
            && let Some(held) = cache.by_id.get(&device.id)
        {
            return held.clone();
        }
        let device = Arc::new(device);
        cache.insert(device.clone());
        device
    }

    fn cache_write(&self, device: Arc<Device>) {
        self.unknown.forget(&device);
        let mut cache = self.cache.write();
        cache.writes += 1;
        cache.insert(device);
    }

    /// Refuses a token or a name another device holds (`own`: the id the device keeps, if it
    /// exists). On a shared table also asks the table, which also reports which of `ids` are
    /// held; returns those.
    async fn check_clashes(
        &self,
        device: &Device,
        own: Option<DeviceId>,
        ids: &[DeviceId],
    ) -> Result<Vec<DeviceId>, RegistryError> {
        let clash = |d: &Device| {
            if Some(d.id) == own {
                None
            } else if d.token == device.token {
                Some(RegistryError::DuplicateToken)
            } else if d.tenant_id == device.tenant_id && d.name == device.name {
                Some(RegistryError::DuplicateName)
            } else {
                None
            }
        };
        {
            let cache = self.cache.read();
            let held = [
                cache.by_token.get(&device.token.0),
                cache.by_name.get(&(device.tenant_id, device.name.clone())),
            ];
            if let Some(e) = held.into_iter().flatten().find_map(|d| clash(d)) {
                return Err(e);
            }
        }
        if !self.table.shared() {
            let cache = self.cache.read();
            return Ok(ids
                .iter()
                .copied()
                .filter(|id| cache.by_id.contains_key(id))
                .collect());
        }
        let writes = self.cache.read().writes;
        let found = {
            let _permit = self.lookups.acquire().await;
            counter!(REGISTRY_TABLE_LOOKUPS, "by" => "check").increment(1);
            self.table.clashes(device, ids).await?
        };
        let mut held = Vec::new();
        let mut refused = None;
        for d in found {
            if ids.contains(&d.id) {
                held.push(d.id);
            }
            if refused.is_none() {
                refused = clash(&d);
            }
            self.remember(d, writes);
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(held),
        }
    }

    fn check_limit(&self, tenant: TenantId) -> Result<(), RegistryError> {
        if self.max_per_tenant > 0 && self.cache.read().devices_of(tenant) >= self.max_per_tenant {
            counter!(REGISTRY_DEVICES_REFUSED, "reason" => "tenant_limit").increment(1);
            return Err(RegistryError::TooManyDevices {
                limit: self.max_per_tenant,
            });
        }
        Ok(())
    }

    /// Writes a new device under `device.id` (checked free) and caches what the table holds
    /// afterwards. Call with the save lock held.
    async fn insert_new(&self, device: Device) -> Result<Arc<Device>, RegistryError> {
        let device = Arc::new(device);
        let held = self.table.create(device.clone()).await?;
        if held.token != device.token || held.name != device.name {
            // Another node created a device under this id at the same moment, and first.
            counter!(REGISTRY_CREATION_CONFLICTS).increment(1);
            let winner = Arc::new(held);
            self.cache_write(winner);
            return Err(RegistryError::DuplicateName);
        }
        self.cache_write(device.clone());
        Ok(device)
    }

    /// The first id of `device`'s name no device holds.
    async fn free_id(&self, device: &Device) -> Result<DeviceId, RegistryError> {
        let mut candidates = device_id_candidates(device.tenant_id, &device.name)
            .take(MAX_ID_CANDIDATES)
            .peekable();
        while candidates.peek().is_some() {
            let batch: Vec<DeviceId> = candidates.by_ref().take(CANDIDATES_PER_QUERY).collect();
            let held = self.check_clashes(device, None, &batch).await?;
            if let Some(id) = batch.into_iter().find(|id| !held.contains(id)) {
                return Ok(id);
            }
        }
        Err(StoreError::Permanent(format!(
            "every id of the device name {:?} is held by a renamed device",
            device.name
        ))
        .into())
    }
}

#[async_trait]
impl<T: DeviceTable> DeviceRegistry for CachedRegistry<T> {
    async fn by_token(&self, token: &str) -> Result<Option<Arc<Device>>, RegistryError> {
        if let Some(device) = self.cache.read().by_token.get(token).cloned() {
            return Ok(Some(device));
        }
        if token.is_empty() || token.chars().count() > MAX_ACCESS_TOKEN_CHARS {
            return Ok(None);
        }
        self.look_up(
            Key::Token(token.to_owned()),
            self.table.find_by_token(token),
        )
        .await
    }

    async fn get(&self, id: DeviceId) -> Result<Option<Arc<Device>>, RegistryError> {
        if let Some(device) = self.cache.read().by_id.get(&id).cloned() {
            return Ok(Some(device));
        }
        if !self.table.shared() {
            return Ok(None);
        }
        self.query_table("id", self.table.find_by_id(id)).await
    }

    async fn by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<Arc<Device>>, RegistryError> {
        let cached = self
            .cache
            .read()
            .by_name
            .get(&(tenant, name.to_owned()))
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        if name.is_empty() || name.chars().count() > MAX_DEVICE_NAME_CHARS {
            return Ok(None);
        }
        self.look_up(
            Key::Name(tenant, name.to_owned()),
            self.table.find_by_name(tenant, name),
        )
        .await
    }

    async fn save(&self, device: Device) -> Result<Arc<Device>, RegistryError> {
        let _serial = self.save_lock.lock().await;
        if !self.cache.read().by_id.contains_key(&device.id) {
            // A device the caller did not read first (an update reads it, which caches it): a
            // creation. Another node may hold the id already; then the name is taken.
            let held = self.check_clashes(&device, None, &[device.id]).await?;
            if held.contains(&device.id) {
                return Err(RegistryError::DuplicateName);
            }
            self.check_limit(device.tenant_id)?;
            return self.insert_new(device).await;
        }
        self.check_clashes(&device, Some(device.id), &[]).await?;
        let device = Arc::new(device);
        self.table.update(device.clone()).await?;
        self.cache_write(device.clone());
        Ok(device)
    }

    async fn create(&self, device: Device) -> Result<Arc<Device>, RegistryError> {
        let _serial = self.save_lock.lock().await;
        self.check_limit(device.tenant_id)?;
        let id = self.free_id(&device).await?;
        self.insert_new(Device { id, ..device }).await
    }

    async fn delete(&self, id: DeviceId) -> Result<bool, RegistryError> {
        let _serial = self.save_lock.lock().await;
        if self.get(id).await?.is_none() {
            return Ok(false);
        }
        self.table.delete(id).await?;
        let mut cache = self.cache.write();
        cache.writes += 1;
        Ok(cache.remove(id).is_some())
    }

    async fn list(
        &self,
        tenant: TenantId,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, RegistryError> {
        // Read from the cache: it is the registry, the table only makes it durable (with a
        // shared table: the devices this node holds).
        let cache = self.cache.read();
        let search = page.text_search.as_deref().map(str::to_lowercase);
        let mut matching: Vec<&Arc<Device>> = cache
            .by_id
            .values()
            .filter(|d| d.tenant_id == tenant)
            .filter(|d| {
                search
                    .as_deref()
                    .is_none_or(|s| d.name.to_lowercase().starts_with(s))
            })
            .collect();
        matching.sort_by(|a, b| a.name.cmp(&b.name));
        let total_elements = matching.len();
        let data = matching
            .into_iter()
            .skip(page.page.saturating_mul(page.page_size))
            .take(page.page_size)
            .cloned()
            .collect();
        Ok(Page {
            data,
            total_elements,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::contract::device;

    /// A shared table (as ClickHouse's is) that holds nothing and counts the lookups it gets.
    #[derive(Default)]
    struct Counting {
        lookups: AtomicUsize,
    }

    #[async_trait]
    impl DeviceTable for Arc<Counting> {
        fn shared(&self) -> bool {
            true
        }

        async fn create(&self, device: Arc<Device>) -> Result<Device, StoreError> {
            Ok((*device).clone())
        }

        async fn update(&self, _: Arc<Device>) -> Result<(), StoreError> {
            Ok(())
        }

        async fn delete(&self, _: DeviceId) -> Result<(), StoreError> {
            Ok(())
        }

        async fn find_by_token(&self, _: &str) -> Result<Option<Device>, StoreError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }
    }

    fn limits(max_per_tenant: u64, unknown_cache_ttl: Duration) -> RegistryLimits {
        RegistryLimits {
            max_per_tenant,
            unknown_cache_size: 2,
            unknown_cache_ttl,
            max_concurrent_lookups: 1,
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    /// An unknown token asked for again and again (a device whose credentials were deleted,
    /// reconnecting in a loop) costs one lookup in the shared table, not one per attempt.
    #[tokio::test]
    async fn an_unknown_token_is_looked_up_in_the_table_once() {
        let table = Arc::new(Counting::default());
        let registry = CachedRegistry::new(table.clone(), []);
        for _ in 0..3 {
            assert!(registry.by_token("nope").await.expect("lookup").is_none());
        }
        assert_eq!(table.lookups.load(Ordering::SeqCst), 1);
    }

    /// The negative cache forgets: when it is full (the oldest first), at once for a token
    /// this node gives a device, and after its TTL.
    #[tokio::test]
    async fn the_negative_cache_is_bounded_and_forgets() {
        let table = Arc::new(Counting::default());
        let registry = CachedRegistry::new(table.clone(), []).limited(&limits(0, LONG));
        let lookups = || table.lookups.load(Ordering::SeqCst);
        for token in ["t1", "t1", "t2", "t3", "t1"] {
            assert!(registry.by_token(token).await.expect("lookup").is_none());
        }
        assert_eq!(
            lookups(),
            4,
            "t1 remembered once, then dropped to keep the last two"
        );

        registry.create(device("d", "t3")).await.expect("created");
        assert!(registry.by_token("t3").await.expect("lookup").is_some());
        assert_eq!(lookups(), 4);

        let long = "x".repeat(MAX_ACCESS_TOKEN_CHARS + 1);
        assert!(registry.by_token(&long).await.expect("lookup").is_none());
        assert_eq!(lookups(), 4, "a token no device can have is not looked up");

        let table = Arc::new(Counting::default());
        let ttl = Duration::from_millis(1);
        let short = CachedRegistry::new(table.clone(), []).limited(&limits(0, ttl));
        assert!(short.by_token("t1").await.expect("lookup").is_none());
        tokio::time::sleep(ttl * 10).await;
        assert!(short.by_token("t1").await.expect("lookup").is_none());
        assert_eq!(
            table.lookups.load(Ordering::SeqCst),
            2,
            "forgotten after the TTL"
        );
    }

    /// A tenant at its device limit cannot create more, other tenants can, and a deletion
    /// makes room; updates of existing devices are not creations.
    #[tokio::test]
    async fn a_tenant_cannot_create_more_devices_than_its_limit() {
        let registry =
            CachedRegistry::new(Arc::new(Counting::default()), []).limited(&limits(2, LONG));
        let a = registry.create(device("a", "ta")).await.expect("first");
        registry.create(device("b", "tb")).await.expect("second");
        assert_eq!(
            registry.create(device("c", "tc")).await.err(),
            Some(RegistryError::TooManyDevices { limit: 2 })
        );
        assert_eq!(
            registry.save(device("c", "tc")).await.err(),
            Some(RegistryError::TooManyDevices { limit: 2 }),
            "a save of a new id is a creation"
        );
        let renamed = Device {
            name: "a2".into(),
            ..(*a).clone()
        };
        registry
            .save(renamed)
            .await
            .expect("an update is not a creation");
        let other = Device {
            tenant_id: TenantId::from_name("other"),
            ..device("c", "tc")
        };
        registry.create(other).await.expect("another tenant");
        assert!(registry.delete(a.id).await.expect("delete"));
        registry
            .create(device("c", "tc2"))
            .await
            .expect("room again");
    }
}
