//! The device registry every store backend shares: all devices held in memory (the token lookup
//! of each MQTT connect and HTTP upload is a hash-map read), made durable by a backend's
//! [`DeviceTable`].

use std::collections::HashMap;
use std::sync::Arc;

use actors::model::{Device, DeviceId, TenantId};
use actors::ports::{DeviceRegistry, Page, PageRequest, RegistryError, StoreError};
use async_trait::async_trait;
use parking_lot::RwLock;

/// Where a backend keeps its devices.
#[async_trait]
pub trait DeviceTable: Send + Sync + 'static {
    /// Inserts or replaces the device with this id.
    async fn upsert(&self, device: Arc<Device>) -> Result<(), StoreError>;

    async fn delete(&self, id: DeviceId) -> Result<(), StoreError>;

    /// A device this node does not hold, looked up by token: one another node created since
    /// this one loaded. Backends that one node owns alone have none.
    async fn find_by_token(&self, _token: &str) -> Result<Option<Device>, StoreError> {
        Ok(None)
    }
}

pub struct CachedRegistry<T> {
    table: T,
    cache: RwLock<Cache>,
    /// Serialises saves, so the uniqueness checks against the cache and the write are one step.
    save_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    by_id: HashMap<DeviceId, Arc<Device>>,
    by_token: HashMap<String, Arc<Device>>,
    by_name: HashMap<(TenantId, String), Arc<Device>>,
}

impl Cache {
    fn insert(&mut self, device: Arc<Device>) {
        self.remove(device.id);
        self.by_token.insert(device.token.0.clone(), device.clone());
        self.by_name
            .insert((device.tenant_id, device.name.clone()), device.clone());
        self.by_id.insert(device.id, device);
    }

    fn remove(&mut self, id: DeviceId) -> Option<Arc<Device>> {
        let old = self.by_id.remove(&id)?;
        self.by_token.remove(&old.token.0);
        self.by_name.remove(&(old.tenant_id, old.name.clone()));
        Some(old)
    }
}

impl<T: DeviceTable> CachedRegistry<T> {
    /// `devices`: everything the table holds now.
    pub fn new(table: T, devices: impl IntoIterator<Item = Device>) -> Self {
        let mut cache = Cache::default();
        for device in devices {
            cache.insert(Arc::new(device));
        }
        CachedRegistry {
            table,
            cache: RwLock::new(cache),
            save_lock: tokio::sync::Mutex::new(()),
        }
    }
}

#[async_trait]
impl<T: DeviceTable> DeviceRegistry for CachedRegistry<T> {
    async fn by_token(&self, token: &str) -> Result<Option<Arc<Device>>, RegistryError> {
        if let Some(device) = self.cache.read().by_token.get(token).cloned() {
            return Ok(Some(device));
        }
        let Some(device) = self.table.find_by_token(token).await? else {
            return Ok(None);
        };
        let device = Arc::new(device);
        self.cache.write().insert(device.clone());
        Ok(Some(device))
    }

    async fn get(&self, id: DeviceId) -> Result<Option<Arc<Device>>, RegistryError> {
        Ok(self.cache.read().by_id.get(&id).cloned())
    }

    async fn by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<Arc<Device>>, RegistryError> {
        Ok(self
            .cache
            .read()
            .by_name
            .get(&(tenant, name.to_owned()))
            .cloned())
    }

    async fn save(&self, device: Device) -> Result<Arc<Device>, RegistryError> {
        let _serial = self.save_lock.lock().await;
        {
            let cache = self.cache.read();
            if cache
                .by_token
                .get(&device.token.0)
                .is_some_and(|d| d.id != device.id)
            {
                return Err(RegistryError::DuplicateToken);
            }
            if cache
                .by_name
                .get(&(device.tenant_id, device.name.clone()))
                .is_some_and(|d| d.id != device.id)
            {
                return Err(RegistryError::DuplicateName);
            }
        }
        let device = Arc::new(device);
        self.table.upsert(device.clone()).await?;
        self.cache.write().insert(device.clone());
        Ok(device)
    }

    async fn delete(&self, id: DeviceId) -> Result<bool, RegistryError> {
        let _serial = self.save_lock.lock().await;
        if !self.cache.read().by_id.contains_key(&id) {
            return Ok(false);
        }
        self.table.delete(id).await?;
        Ok(self.cache.write().remove(id).is_some())
    }

    async fn list(
        &self,
        tenant: TenantId,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, RegistryError> {
        // Read from the cache: it is the registry, the table only makes it durable.
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
