//! The embedded store's device table, behind the shared in-memory registry.

use std::sync::Arc;

use actors::model::{AccessToken, Device, DeviceId, TenantId};
use actors::ports::StoreError;
use async_trait::async_trait;
use rusqlite::{Connection, Row, params};
use uuid::Uuid;

use super::Db;
use crate::store::registry::{CachedRegistry, DeviceTable};

pub type EmbeddedRegistry = CachedRegistry<DeviceRows>;

/// The `device` table of the embedded database.
pub struct DeviceRows {
    db: Arc<Db>,
}

const COLUMNS: &str = "id, tenant_id, name, type, label, token, created_time, additional_info";

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
        additional_info: row.get(7)?,
    })
}

pub(super) fn load(db: Arc<Db>) -> anyhow::Result<EmbeddedRegistry> {
    let devices = {
        let c = db.writer.lock();
        let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM device"))?;
        stmt.query_map([], device_from_row)?
            .collect::<rusqlite::Result<Vec<Device>>>()?
    };
    Ok(CachedRegistry::new(DeviceRows { db }, devices))
}

fn insert(c: &Connection, d: &Device) -> rusqlite::Result<()> {
    // Not `OR REPLACE`: that would delete whatever row holds the same token or name.
    c.execute(
        &format!("INSERT INTO device ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"),
        params![
            d.id.0.as_bytes(),
            d.tenant_id.0.as_bytes(),
            d.name,
            d.device_type,
            d.label,
            d.token.0,
            d.created_time,
            d.additional_info
        ],
    )?;
    Ok(())
}

fn update(c: &Connection, d: &Device) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE device SET tenant_id = ?2, name = ?3, type = ?4, label = ?5, token = ?6,
                created_time = ?7, additional_info = ?8
         WHERE id = ?1",
        params![
            d.id.0.as_bytes(),
            d.tenant_id.0.as_bytes(),
            d.name,
            d.device_type,
            d.label,
            d.token.0,
            d.created_time,
            d.additional_info
        ],
    )?;
    Ok(())
}

#[async_trait]
impl DeviceTable for DeviceRows {
    async fn create(&self, device: Arc<Device>) -> Result<Device, StoreError> {
        let row = device.clone();
        self.db.write(move |c| insert(c, &row)).await?;
        Ok((*device).clone())
    }

    async fn update(&self, device: Arc<Device>) -> Result<(), StoreError> {
        self.db.write(move |c| update(c, &device)).await
    }

    async fn delete(&self, id: DeviceId) -> Result<(), StoreError> {
        self.db
            .write(move |c| c.execute("DELETE FROM device WHERE id = ?1", params![id.0.as_bytes()]))
            .await
            .map(|_| ())
    }
}
