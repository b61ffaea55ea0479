//! The access-check layer: which entities a signed-in user may see and act on. REST handlers
//! (through [`super::device::owned_device`]) and WebSocket sessions (through [`UserViewer`])
//! ask here; no handler compares tenants itself.
//!
//! Roles today: the tenant administrator sees every device of its tenant. A device of another
//! tenant, or one that does not exist, is the same answer: not found.

use std::sync::Arc;

use actors::live::session::{DeviceQuery, Viewer};
use actors::model::{Device, DeviceId};
use actors::ports::{DeviceRegistry, Page, PageRequest, StoreError};
use async_trait::async_trait;

use crate::auth::Principal;

/// Devices read per registry page while a filter the registry cannot apply (device types)
/// is scanned.
const SCAN_PAGE: usize = 1000;

/// Whether `user` may see `device`.
pub fn may_see(user: &Principal, device: &Device) -> bool {
    device.tenant_id == user.tenant_id
}

/// The device `id`, if `user` may see it.
pub async fn device(
    registry: &dyn DeviceRegistry,
    user: &Principal,
    id: DeviceId,
) -> Result<Option<Arc<Device>>, StoreError> {
    match registry.get(id).await {
        Ok(Some(d)) if may_see(user, &d) => Ok(Some(d)),
        Ok(_) => Ok(None),
        Err(e) => Err(registry_error(e)),
    }
}

fn registry_error(e: actors::ports::RegistryError) -> StoreError {
    match e {
        actors::ports::RegistryError::Store(s) => s,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// One user's view of the devices, for a WebSocket session.
pub struct UserViewer {
    pub registry: Arc<dyn DeviceRegistry>,
    pub user: Principal,
}

#[async_trait]
impl Viewer for UserViewer {
    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, StoreError> {
        device(self.registry.as_ref(), &self.user, id).await
    }

    async fn devices(
        &self,
        query: &DeviceQuery,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, StoreError> {
        let tenant = self.user.tenant_id;
        let Some(types) = &query.types else {
            // Names are the registry's own filter: one page read.
            let request = PageRequest {
                page_size: page.page_size,
                page: page.page,
                text_search: query.name_prefix.clone(),
            };
            let found = self
                .registry
                .list(tenant, &request)
                .await
                .map_err(registry_error)?;
            return Ok(Page {
                data: found
                    .data
                    .into_iter()
                    .filter(|d| may_see(&self.user, d))
                    .collect(),
                total_elements: found.total_elements,
            });
        };
        // Device types: the tenant's devices are scanned (bounded by devices.max_per_tenant).
        let mut matching = 0usize;
        let mut data = Vec::new();
        let first = page.page.saturating_mul(page.page_size);
        let mut scan = 0;
        loop {
            let request = PageRequest {
                page_size: SCAN_PAGE,
                page: scan,
                text_search: query.name_prefix.clone(),
            };
            let found = self
                .registry
                .list(tenant, &request)
                .await
                .map_err(registry_error)?;
            let last = found.data.len() < SCAN_PAGE;
            for d in found.data {
                if !may_see(&self.user, &d) || !types.iter().any(|t| *t == d.device_type) {
                    continue;
                }
                if matching >= first && data.len() < page.page_size {
                    data.push(d);
                }
                matching += 1;
            }
            if last {
                break;
            }
            scan += 1;
        }
        Ok(Page {
            data,
            total_elements: matching,
        })
    }
}
