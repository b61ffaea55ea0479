//! The device registry in the embedded database, with every device also held in memory: the
//! token lookup of each MQTT connect and HTTP upload is a hash-map read.

use std::collections::HashMap;
use std::sync::Arc;

use actors::model::{AccessToken, Device, DeviceId, TenantId};
use actors::ports::{DeviceRegistry, Page, PageRequest, RegistryError};
use async_trait::async_trait;
use parking_lot::RwLock;
use rusqlite::{Connection, Row, params};
use uuid::Uuid;

use super::Db;

pub struct EmbeddedRegistry {
    db: Arc<Db>,
    cache: RwLock<Cache>,
    /// Serialises saves, so the uniqueness checks against the cache and the insert are one step.
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

const COLUMNS: &str = "id, tenant_id, name, type, label, token, created_time";

fn uuid(row: &Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let bytes: Vec<u8> = row.get(i)?;
    Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn device_from_row(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: DeviceId(uuid(row, 0)?),
        tenant_id: TenantId(uuid(row, 1)?),
        name: row.get(2)?,
        device_type: row.get(3)?,
        label: row.get(4)?,
        token: AccessToken(row.get(5)?),
        created_time: row.get(6)?,
    })
}

impl EmbeddedRegistry {
    pub(super) fn load(db: Arc<Db>) -> anyhow::Result<EmbeddedRegistry> {
        let mut cache = Cache::default();
        {
            let c = db.writer.lock();
            let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM device"))?;
            for device in stmt.query_map([], device_from_row)? {
                cache.insert(Arc::new(device?));
            }
        }
        Ok(EmbeddedRegistry {
            db,
            cache: RwLock::new(cache),
            save_lock: tokio::sync::Mutex::new(()),
        })
    }
}

fn upsert(c: &Connection, d: &Device) -> rusqlite::Result<()> {
    c.execute(
        &format!("INSERT OR REPLACE INTO device ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
        params![
            d.id.0.as_bytes(),
            d.tenant_id.0.as_bytes(),
            d.name,
            d.device_type,
            d.label,
            d.token.0,
            d.created_time
        ],
    )?;
    Ok(())
}

#[async_trait]
impl DeviceRegistry for EmbeddedRegistry {
    async fn by_token(&self, token: &str) -> Result<Option<Arc<Device>>, RegistryError> {
        Ok(self.cache.read().by_token.get(token).cloned())
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
        let row = device.clone();
        self.db.write(move |c| upsert(c, &row)).await?;
        let mut cache = self.cache.write();
        cache.remove(device.id);
        cache.insert(device.clone());
        Ok(device)
    }

    async fn delete(&self, id: DeviceId) -> Result<bool, RegistryError> {
        let _serial = self.save_lock.lock().await;
        let deleted = self
            .db
            .write(move |c| c.execute("DELETE FROM device WHERE id = ?1", params![id.0.as_bytes()]))
            .await?;
        self.cache.write().remove(id);
        Ok(deleted > 0)
    }

    async fn list(
        &self,
        tenant: TenantId,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, RegistryError> {
        // Read from the cache: it is the registry, the database only makes it durable.
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
