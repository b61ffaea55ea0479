//! The device table in ClickHouse, behind the shared in-memory registry. Nodes share it: a
//! token this node does not know is looked up in the table before it is refused, so a device
//! created through another node connects here too.

use std::sync::Arc;

use actors::model::{AccessToken, Device, DeviceId, TenantId};
use actors::ports::StoreError;
use async_trait::async_trait;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Versions, ch_error};
use crate::store::registry::{CachedRegistry, DeviceTable};

pub type ClickHouseRegistry = CachedRegistry<DeviceRows>;

pub struct DeviceRows {
    client: Client,
    versions: Arc<Versions>,
}

/// A row of `device`, in its column order.
#[derive(Row, Serialize, Deserialize)]
struct DeviceRow {
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    tenant_id: Uuid,
    name: String,
    #[serde(rename = "type")]
    device_type: String,
    label: String,
    has_label: u8,
    token: String,
    created_time: i64,
    deleted: u8,
    ver: u64,
}

impl DeviceRow {
    fn new(d: &Device, deleted: bool, ver: u64) -> DeviceRow {
        DeviceRow {
            id: d.id.0,
            tenant_id: d.tenant_id.0,
            name: d.name.clone(),
            device_type: d.device_type.clone(),
            label: d.label.clone().unwrap_or_default(),
            has_label: u8::from(d.label.is_some()),
            token: d.token.0.clone(),
            created_time: d.created_time,
            deleted: u8::from(deleted),
            ver,
        }
    }

    fn into_device(self) -> Device {
        Device {
            id: DeviceId(self.id),
            tenant_id: TenantId(self.tenant_id),
            name: self.name,
            device_type: self.device_type,
            label: (self.has_label != 0).then_some(self.label),
            token: AccessToken(self.token),
            created_time: self.created_time,
        }
    }
}

/// The newest version of every device, deleted ones left out (the table is small: one row per
/// device and change). Not `FINAL` with `WHERE deleted = 0`: old servers may move that filter
/// before the versions collapse and show a deleted device's previous version.
const CURRENT: &str = "SELECT id, argMax(tenant_id, ver), argMax(name, ver), argMax(type, ver),
                              argMax(label, ver), argMax(has_label, ver),
                              argMax(token, ver) AS current_token, argMax(created_time, ver),
                              argMax(deleted, ver) AS is_deleted, max(ver)
                       FROM device GROUP BY id HAVING is_deleted = 0";

pub(super) async fn load(
    client: Client,
    versions: Arc<Versions>,
) -> Result<ClickHouseRegistry, StoreError> {
    let rows = client
        .query(CURRENT)
        .fetch_all::<DeviceRow>()
        .await
        .map_err(ch_error)?;
    Ok(CachedRegistry::new(
        DeviceRows { client, versions },
        rows.into_iter().map(DeviceRow::into_device),
    ))
}

impl DeviceRows {
    async fn insert(&self, row: &DeviceRow) -> Result<(), StoreError> {
        let mut insert = self
            .client
            .insert::<DeviceRow>("device")
            .await
            .map_err(ch_error)?;
        insert.write(row).await.map_err(ch_error)?;
        insert.end().await.map_err(ch_error)
    }
}

#[async_trait]
impl DeviceTable for DeviceRows {
    async fn upsert(&self, device: Arc<Device>) -> Result<(), StoreError> {
        self.insert(&DeviceRow::new(&device, false, self.versions.next()))
            .await
    }

    async fn delete(&self, id: DeviceId) -> Result<(), StoreError> {
        let tombstone = Device {
            id,
            tenant_id: TenantId(Uuid::nil()),
            name: String::new(),
            device_type: String::new(),
            label: None,
            token: AccessToken(String::new()),
            created_time: 0,
        };
        self.insert(&DeviceRow::new(&tombstone, true, self.versions.next()))
            .await
    }

    async fn find_by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        let rows = self
            .client
            .query(&format!("{CURRENT} AND current_token = ?"))
            .bind(token)
            .fetch_all::<DeviceRow>()
            .await
            .map_err(ch_error)?;
        Ok(rows.into_iter().next().map(DeviceRow::into_device))
    }
}
