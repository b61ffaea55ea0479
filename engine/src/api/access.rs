//! The access-check layer: which entities a signed-in user may see and act on. Every REST
//! handler and every WebSocket session (through [`UserViewer`]) asks here; no handler compares
//! tenants or customers itself.
//!
//! Roles, as ThingsBoard's:
//! - `TENANT_ADMIN`: everything of its tenant.
//! - `CUSTOMER_USER`: the devices and assets assigned to its customer: reads ([`Op::Read`]),
//!   and RPC, attribute and telemetry writes and renames ([`Op::Write`]); never creations,
//!   deletions, credentials or assignments ([`Op::Manage`]), nor anything of the tenant's own
//!   or of another customer. Handlers only a tenant administrator may call take a
//!   [`TenantAdmin`] instead of a [`Caller`].
//!
//! Answers, as ThingsBoard's: an entity that does not exist (or is another tenant's) is 404;
//! one that exists but is not the caller's is 403 "You don't have permission to perform this
//! operation!" (errorCode 20), and so is a role that may not call the endpoint.

use std::future::{Ready, ready};
use std::sync::Arc;

use actix_web::{FromRequest, HttpRequest, dev::Payload};
use actors::directory::{Asset, Authority, Customer, Directory, EntityRef, EntityType};
use actors::live::session::{DeviceQuery, Viewer};
use actors::model::{Device, DeviceId, TenantId};
use actors::ports::{DeviceRegistry, Page, PageRequest, StoreError};
use async_trait::async_trait;
use uuid::Uuid;

use super::Caller;
use super::error::ApiError;
use crate::auth::Principal;

/// Devices read per registry page while a filter the registry cannot apply (device types)
/// is scanned.
const SCAN_PAGE: usize = 1000;

/// What a caller wants to do with an entity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read it, its attributes, telemetry and credentials.
    Read,
    /// Update it, write its attributes and telemetry, send it RPC.
    Write,
    /// Create or delete it, change its credentials or its customer.
    Manage,
}

/// Whether `user` may do `op` on an entity of `tenant` assigned to `customer`.
pub fn permits(user: &Principal, tenant: TenantId, customer: Option<Uuid>, op: Op) -> bool {
    if tenant != user.tenant_id {
        return false;
    }
    match user.authority {
        Authority::TenantAdmin => true,
        Authority::CustomerUser => {
            op != Op::Manage && customer.is_some() && customer == user.customer_id
        }
    }
}

/// The customer a claim assigns a device to: the caller's, which must be a customer user
/// (ThingsBoard refuses administrators), else 403.
pub fn claimant(user: &Principal) -> Result<Uuid, ApiError> {
    match (user.authority, user.customer_id) {
        (Authority::CustomerUser, Some(customer)) => Ok(customer),
        _ => Err(ApiError::forbidden()),
    }
}

/// The caller is a tenant administrator, else 403.
pub fn tenant_admin(user: &Principal) -> Result<(), ApiError> {
    if user.is_tenant_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden())
    }
}

/// A caller that must be a tenant administrator: a customer user gets 403.
pub struct TenantAdmin(pub Principal);

impl FromRequest for TenantAdmin {
    type Error = ApiError;
    type Future = Ready<Result<TenantAdmin, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = match Caller::from_request(req, payload).into_inner() {
            Ok(caller) => caller,
            Err(e) => return ready(Err(e)),
        };
        ready(tenant_admin(&caller.0).map(|()| TenantAdmin(caller.0)))
    }
}

fn registry_error(e: actors::ports::RegistryError) -> StoreError {
    match e {
        actors::ports::RegistryError::Store(s) => s,
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The entities a user reaches: the registry's devices and the directory's customers and
/// assets.
#[derive(Clone)]
pub struct Access {
    pub registry: Arc<dyn DeviceRegistry>,
    pub directory: Arc<Directory>,
}

/// Why an entity is refused.
enum Refused {
    Missing,
    Forbidden,
}

impl Access {
    /// The device `id` and its customer, if it exists in `user`'s tenant.
    async fn find_device(
        &self,
        user: &Principal,
        id: DeviceId,
    ) -> Result<Option<(Arc<Device>, Option<Uuid>)>, StoreError> {
        match self.registry.get(id).await {
            Ok(Some(d)) if d.tenant_id == user.tenant_id => {
                let customer = self.directory.device_customer(d.id);
                Ok(Some((d, customer)))
            }
            Ok(_) => Ok(None),
            Err(e) => Err(registry_error(e)),
        }
    }

    async fn check_device(
        &self,
        user: &Principal,
        id: DeviceId,
        op: Op,
    ) -> Result<Result<(Arc<Device>, Option<Uuid>), Refused>, StoreError> {
        Ok(match self.find_device(user, id).await? {
            None => Err(Refused::Missing),
            Some((d, c)) if permits(user, d.tenant_id, c, op) => Ok((d, c)),
            Some(_) => Err(Refused::Forbidden),
        })
    }

    /// The device `id`, if `user` may do `op` on it: else 404 or 403.
    pub async fn device(
        &self,
        user: &Principal,
        id: DeviceId,
        op: Op,
    ) -> Result<Arc<Device>, ApiError> {
        self.device_with_customer(user, id, op)
            .await
            .map(|(d, _)| d)
    }

    /// [`Access::device`] and the customer the device is assigned to.
    pub async fn device_with_customer(
        &self,
        user: &Principal,
        id: DeviceId,
        op: Op,
    ) -> Result<(Arc<Device>, Option<Uuid>), ApiError> {
        match self.check_device(user, id, op).await? {
            Ok(found) => Ok(found),
            Err(Refused::Missing) => Err(ApiError::entity_not_found("Device", id.0)),
            Err(Refused::Forbidden) => Err(ApiError::forbidden()),
        }
    }

    /// The device `id` if `user` may read it; `None` whether it is missing or not theirs (a
    /// WebSocket subscription tells neither apart).
    pub async fn visible_device(
        &self,
        user: &Principal,
        id: DeviceId,
    ) -> Result<Option<Arc<Device>>, StoreError> {
        Ok(self
            .check_device(user, id, Op::Read)
            .await?
            .ok()
            .map(|(d, _)| d))
    }

    /// The asset `id`, if `user` may do `op` on it: else 404 or 403.
    pub fn asset(&self, user: &Principal, id: Uuid, op: Op) -> Result<Arc<Asset>, ApiError> {
        match self.directory.asset(id) {
            Some(a) if a.tenant_id == user.tenant_id => {
                if permits(user, a.tenant_id, a.customer_id, op) {
                    Ok(a)
                } else {
                    Err(ApiError::forbidden())
                }
            }
            _ => Err(ApiError::entity_not_found("Asset", id)),
        }
    }

    /// The customer `id`: a tenant administrator reaches every customer of its tenant, a
    /// customer user reads its own only.
    pub fn customer(&self, user: &Principal, id: Uuid, op: Op) -> Result<Arc<Customer>, ApiError> {
        match self.directory.customer(id) {
            Some(c) if c.tenant_id == user.tenant_id => {
                let own = user.customer_id == Some(c.id);
                if user.is_tenant_admin() || (own && op == Op::Read) {
                    Ok(c)
                } else {
                    Err(ApiError::forbidden())
                }
            }
            _ => Err(ApiError::entity_not_found("Customer", id)),
        }
    }

    /// The user `id`: an administrator reaches every user of its tenant, a user itself
    /// (never with `Op::Manage`).
    pub fn user(
        &self,
        user: &Principal,
        id: Uuid,
        op: Op,
    ) -> Result<Arc<actors::directory::User>, ApiError> {
        match self.directory.user(id) {
            Some(u) if u.tenant_id == user.tenant_id => {
                let own = u.id == user.user_id && op != Op::Manage;
                if user.is_tenant_admin() || own {
                    Ok(u)
                } else {
                    Err(ApiError::forbidden())
                }
            }
            _ => Err(ApiError::entity_not_found("User", id)),
        }
    }

    /// Any entity an app names (a relation's end): checked as its kind is.
    pub async fn entity(
        &self,
        user: &Principal,
        entity: EntityRef,
        op: Op,
    ) -> Result<(), ApiError> {
        match entity.entity_type {
            EntityType::Device => self.device(user, DeviceId(entity.id), op).await.map(|_| ()),
            EntityType::Asset => self.asset(user, entity.id, op).map(|_| ()),
            EntityType::Customer => self.customer(user, entity.id, op).map(|_| ()),
            EntityType::Tenant => {
                if entity.id != user.tenant_id.0 {
                    Err(ApiError::entity_not_found("Tenant", entity.id))
                } else if user.is_tenant_admin() {
                    Ok(())
                } else {
                    Err(ApiError::forbidden())
                }
            }
            EntityType::User => self.user(user, entity.id, op).map(|_| ()),
        }
    }

    /// The entity's name, if `user` may read it (relation infos).
    pub async fn readable_name(&self, user: &Principal, entity: EntityRef) -> Option<String> {
        if self.entity(user, entity, Op::Read).await.is_err() {
            return None;
        }
        Some(match entity.entity_type {
            EntityType::Device => self
                .registry
                .get(DeviceId(entity.id))
                .await
                .ok()??
                .name
                .clone(),
            EntityType::Asset => self.directory.asset(entity.id)?.name.clone(),
            EntityType::Customer => self.directory.customer(entity.id)?.title.clone(),
            EntityType::User => self.directory.user(entity.id)?.email.clone(),
            EntityType::Tenant => String::new(),
        })
    }

    /// A page of the devices `customer` has (assigned ones only), by name, filtered by name
    /// prefix and device types.
    pub async fn customer_devices(
        &self,
        customer: Uuid,
        query: &DeviceQuery,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, StoreError> {
        let mut found = Vec::new();
        for id in self.directory.customer_devices(customer) {
            let Some(d) = self.registry.get(id).await.map_err(registry_error)? else {
                continue;
            };
            let name_ok = query
                .name_prefix
                .as_deref()
                .is_none_or(|p| d.name.to_lowercase().starts_with(&p.to_lowercase()));
            let type_ok = query
                .types
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| *t == d.device_type));
            if name_ok && type_ok {
                found.push(d);
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        let total_elements = found.len();
        let data = found
            .into_iter()
            .skip(page.page.saturating_mul(page.page_size))
            .take(page.page_size)
            .collect();
        Ok(Page {
            data,
            total_elements,
        })
    }

    /// A page of the devices `user` sees: a customer user's customer's, or the tenant's.
    pub async fn devices(
        &self,
        user: &Principal,
        query: &DeviceQuery,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, StoreError> {
        if !user.is_tenant_admin() {
            // A customer user sees its customer's devices; one without a customer (none can
            // be made) sees none.
            return match user.customer_id {
                Some(customer) => self.customer_devices(customer, query, page).await,
                None => Ok(Page {
                    data: Vec::new(),
                    total_elements: 0,
                }),
            };
        }
        let tenant = user.tenant_id;
        let Some(types) = &query.types else {
            // Names are the registry's own filter: one page read.
            let request = PageRequest {
                page_size: page.page_size,
                page: page.page,
                text_search: query.name_prefix.clone(),
            };
            return self
                .registry
                .list(tenant, &request)
                .await
                .map_err(registry_error);
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
                if !types.iter().any(|t| *t == d.device_type) {
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

/// One user's view of the devices, for a WebSocket session. A session outlives its token's
/// check, so each command is checked against the user as it is then: one deleted since sees
/// nothing, one moved to another customer sees that customer's devices.
pub struct UserViewer {
    pub access: Access,
    pub user: Principal,
}

impl UserViewer {
    /// The user now: the configured administrator as signed in, a directory user as the
    /// directory has it (`None` once deleted).
    fn current(&self) -> Option<Principal> {
        match self.access.directory.user(self.user.user_id) {
            Some(u) => Some(Principal {
                authority: u.authority,
                customer_id: u.customer_id,
                ..self.user.clone()
            }),
            None if self.user.is_configured_admin => Some(self.user.clone()),
            None => None,
        }
    }
}

#[async_trait]
impl Viewer for UserViewer {
    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, StoreError> {
        match self.current() {
            Some(user) => self.access.visible_device(&user, id).await,
            None => Ok(None),
        }
    }

    async fn devices(
        &self,
        query: &DeviceQuery,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, StoreError> {
        match self.current() {
            Some(user) => self.access.devices(&user, query, page).await,
            None => Ok(Page {
                data: Vec::new(),
                total_elements: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(authority: Authority, customer: Option<Uuid>) -> Principal {
        Principal {
            username: "u".into(),
            user_id: Uuid::new_v4(),
            tenant_id: TenantId::from_name("t"),
            authority,
            customer_id: customer,
            is_configured_admin: false,
            session: Uuid::new_v4(),
        }
    }

    #[test]
    fn roles_reach_what_thingsboard_lets_them() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let tenant = TenantId::from_name("t");
        let other_tenant = TenantId::from_name("other");
        let admin = principal(Authority::TenantAdmin, None);
        let user_a = principal(Authority::CustomerUser, Some(a));
        // A customer user without a customer (none can be made) reaches nothing.
        let orphan = principal(Authority::CustomerUser, None);
        for op in [Op::Read, Op::Write, Op::Manage] {
            for customer in [None, Some(a), Some(b)] {
                assert!(permits(&admin, tenant, customer, op));
                assert!(!permits(&admin, other_tenant, customer, op));
                assert!(!permits(&orphan, tenant, customer, op));
            }
            assert_eq!(
                permits(&user_a, tenant, Some(a), op),
                op != Op::Manage,
                "{op:?}"
            );
            assert!(!permits(&user_a, tenant, Some(b), op));
            assert!(!permits(&user_a, tenant, None, op));
            assert!(!permits(&user_a, other_tenant, Some(a), op));
        }
        assert!(tenant_admin(&admin).is_ok());
        assert_eq!(
            tenant_admin(&user_a).err().map(|e| e.status.as_u16()),
            Some(403)
        );
    }
}
