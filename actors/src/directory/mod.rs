//! The directory: a tenant's customers, users and assets, which customer each device is
//! assigned to, and the relations between entities. Small and read on every access check, so
//! all of it is held in memory (an [`Index`]) and written through to a [`DirectoryStore`];
//! every change is one store write, made before memory changes, so what a caller was told was
//! saved is durable.
//!
//! Writes are serialised (one at a time per node). With a store other nodes write too, the
//! engine re-reads it every `directory.reload_interval`: a change made on another node is seen
//! here within that time.
//!
//! Bounds: `directory.max_customers`, `max_users`, `max_assets` per tenant and `max_relations`
//! in all; an app cannot make the engine keep more.

mod index;
pub mod model;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::RwLock;
use thiserror::Error;
use uuid::Uuid;

use crate::model::{DeviceId, TenantId};
use crate::ports::{Page, PageRequest, StoreError};
use index::{Index, Removal};
pub use model::*;

/// Where the directory is kept.
#[async_trait]
pub trait DirectoryStore: Send + Sync + 'static {
    /// Every live document.
    async fn load(&self) -> Result<Vec<Doc>, StoreError>;

    /// Stores `put` (replacing documents with the same ids) and deletes `delete`, as one write.
    async fn write(&self, put: &[Doc], delete: &[Uuid]) -> Result<(), StoreError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectoryLimits {
    pub max_customers: usize,
    pub max_users: usize,
    pub max_assets: usize,
    pub max_relations: usize,
    /// Relations one entity may be an end of (so one list answer is bounded).
    pub max_relations_per_entity: usize,
    /// Relations the users of one customer may make, in all.
    pub max_relations_per_customer: usize,
}

impl Default for DirectoryLimits {
    fn default() -> Self {
        DirectoryLimits {
            max_customers: 10_000,
            max_users: 10_000,
            max_assets: 100_000,
            max_relations: 200_000,
            max_relations_per_entity: 1_000,
            max_relations_per_customer: 10_000,
        }
    }
}

#[derive(Debug, Error)]
pub enum DirectoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A limit of the engine's: what, and the bound.
    #[error("{0}")]
    Limit(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
}

/// A page of `items` (already filtered), sorted by `key`.
fn paged<T: Clone, K: Ord>(
    mut items: Vec<T>,
    page: &PageRequest,
    key: impl Fn(&T) -> K,
) -> Page<T> {
    items.sort_by_key(|item| key(item));
    let total_elements = items.len();
    let data = items
        .into_iter()
        .skip(page.page.saturating_mul(page.page_size))
        .take(page.page_size)
        .collect();
    Page {
        data,
        total_elements,
    }
}

/// Refuses a new entry when `tenant` already has `max` of `entries` (`kind` names them and
/// `directory.max_<kind>` is the setting).
fn room<T>(
    entries: &HashMap<Uuid, Arc<T>>,
    id: Uuid,
    tenant: TenantId,
    tenant_of: impl Fn(&T) -> TenantId,
    max: usize,
    kind: &str,
) -> Result<(), DirectoryError> {
    if entries.contains_key(&id) {
        return Ok(());
    }
    let count = entries.values().filter(|e| tenant_of(e) == tenant).count();
    if count >= max {
        return Err(DirectoryError::Limit(format!(
            "The tenant has {count} {kind}, the most this engine keeps (directory.max_{kind})"
        )));
    }
    Ok(())
}

/// `textSearch`, as this engine's device lists take it: a case-insensitive prefix of the name
/// (ThingsBoard matches it anywhere in the name).
fn matches(search: &Option<String>, text: &str) -> bool {
    search
        .as_deref()
        .is_none_or(|s| text.to_lowercase().starts_with(&s.to_lowercase()))
}

pub struct Directory {
    store: Arc<dyn DirectoryStore>,
    /// Other nodes write the store too: every write reads it first.
    shared: bool,
    limits: DirectoryLimits,
    index: RwLock<Index>,
    writer: tokio::sync::Mutex<()>,
}

impl Directory {
    /// Loads the directory from `store`.
    pub async fn open(
        store: Arc<dyn DirectoryStore>,
        limits: DirectoryLimits,
    ) -> Result<Directory, StoreError> {
        let index = Index::build(store.load().await?);
        index.report();
        Ok(Directory {
            store,
            shared: false,
            limits,
            index: RwLock::new(index),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// A directory over a store other nodes write too (ClickHouse): every write reads the
    /// store first, and [`Directory::reload`] is called every `directory.reload_interval`.
    pub fn shared(mut self) -> Directory {
        self.shared = true;
        self
    }

    /// Reads the store again (it is shared with other nodes).
    pub async fn reload(&self) -> Result<(), StoreError> {
        // Read without holding writes back; a write of this node's made meanwhile is in the
        // store, and its next write (or reload) reads it again.
        let index = Index::build(self.store.load().await?);
        let _serial = self.writer.lock().await;
        index.report();
        *self.index.write() = index;
        Ok(())
    }

    /// Takes this node's turn to write. With a store other nodes write too, it is read again
    /// first, so a change is checked against (and applied to) what every node wrote, not this
    /// node's copy of up to `reload_interval` ago.
    async fn serial(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, StoreError> {
        let guard = self.writer.lock().await;
        if self.shared {
            let index = Index::build(self.store.load().await?);
            index.report();
            *self.index.write() = index;
        }
        Ok(guard)
    }

    async fn write(&self, put: Vec<Doc>, delete: Removal) -> Result<(), DirectoryError> {
        if put.is_empty() && delete.is_empty() {
            return Ok(());
        }
        self.store.write(&put, &delete.ids()).await?;
        let mut index = self.index.write();
        index.apply(put, &delete);
        index.report();
        Ok(())
    }

    async fn put(&self, doc: Doc) -> Result<(), DirectoryError> {
        self.write(vec![doc], Removal::default()).await
    }

    // ---- customers ---------------------------------------------------------------------

    pub fn customer(&self, id: Uuid) -> Option<Arc<Customer>> {
        self.index.read().customers.get(&id).cloned()
    }

    /// A tenant's customers by title.
    pub fn customers(&self, tenant: TenantId, page: &PageRequest) -> Page<Arc<Customer>> {
        let found: Vec<Arc<Customer>> = self
            .index
            .read()
            .customers
            .values()
            .filter(|c| c.tenant_id == tenant && matches(&page.text_search, &c.title))
            .cloned()
            .collect();
        paged(found, page, |c| (c.title.clone(), c.id))
    }

    /// Creates or replaces a customer; a title another customer of the tenant has is refused.
    pub async fn save_customer(&self, customer: Customer) -> Result<Arc<Customer>, DirectoryError> {
        let _serial = self.serial().await?;
        {
            let index = self.index.read();
            if index.customers.values().any(|c| {
                c.tenant_id == customer.tenant_id
                    && c.title == customer.title
                    && c.id != customer.id
            }) {
                return Err(DirectoryError::Conflict(
                    "Customer with such title already exists!".into(),
                ));
            }
            room(
                &index.customers,
                customer.id,
                customer.tenant_id,
                |c| c.tenant_id,
                self.limits.max_customers,
                "customers",
            )?;
        }
        self.put(Doc::Customer(customer.clone())).await?;
        Ok(Arc::new(customer))
    }

    /// Deletes a customer, its users and its relations; its devices and assets go back to the
    /// tenant. Returns whether it existed.
    pub async fn delete_customer(&self, id: Uuid) -> Result<bool, DirectoryError> {
        let _serial = self.serial().await?;
        let (put, delete) = {
            let index = self.index.read();
            if !index.customers.contains_key(&id) {
                return Ok(false);
            }
            let mut delete = Removal {
                customers: vec![id],
                ..Removal::default()
            };
            delete.users = index
                .users
                .values()
                .filter(|u| u.customer_id == Some(id))
                .map(|u| u.id)
                .collect();
            delete.assignments = index
                .customer_devices
                .get(&id)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default();
            // Its own relations and its users'.
            let mut relations: BTreeSet<RelationKey> = index
                .relation_keys_of(EntityRef {
                    entity_type: EntityType::Customer,
                    id,
                })
                .into_iter()
                .collect();
            for user in &delete.users {
                relations.extend(index.relation_keys_of(EntityRef {
                    entity_type: EntityType::User,
                    id: *user,
                }));
            }
            delete.relations = relations.into_iter().collect();
            let put = index
                .assets
                .values()
                .filter(|a| a.customer_id == Some(id))
                .map(|a| {
                    Doc::Asset(Asset {
                        customer_id: None,
                        ..(**a).clone()
                    })
                })
                .collect();
            (put, delete)
        };
        self.write(put, delete).await?;
        Ok(true)
    }

    // ---- users -------------------------------------------------------------------------

    pub fn user(&self, id: Uuid) -> Option<Arc<User>> {
        self.index.read().users.get(&id).cloned()
    }

    pub fn user_by_email(&self, email: &str) -> Option<Arc<User>> {
        let index = self.index.read();
        let id = index.users_by_email.get(&email.to_lowercase())?;
        index.users.get(id).cloned()
    }

    pub fn user_by_activation(&self, token: &str) -> Option<Arc<User>> {
        let index = self.index.read();
        let id = index.users_by_activation.get(token)?;
        index.users.get(id).cloned()
    }

    /// A customer's users (`customer` given) or the tenant's administrators, by e-mail.
    pub fn users(
        &self,
        tenant: TenantId,
        customer: Option<Uuid>,
        page: &PageRequest,
    ) -> Page<Arc<User>> {
        let found: Vec<Arc<User>> = self
            .index
            .read()
            .users
            .values()
            .filter(|u| {
                u.tenant_id == tenant
                    && u.customer_id == customer
                    && matches(&page.text_search, &u.email)
            })
            .cloned()
            .collect();
        paged(found, page, |u| u.email.to_lowercase())
    }

    /// Creates (or replaces whole) a user; an e-mail another user has (in any case) is refused,
    /// as is `reserved` (the configured administrator's). A change of an existing user goes
    /// through [`Directory::update_user`].
    pub async fn save_user(&self, user: User, reserved: &str) -> Result<Arc<User>, DirectoryError> {
        let _serial = self.serial().await?;
        {
            let index = self.index.read();
            index.check_email(user.id, &user.email, reserved)?;
            index.check_customer(user.customer_id)?;
            room(
                &index.users,
                user.id,
                user.tenant_id,
                |u| u.tenant_id,
                self.limits.max_users,
                "users",
            )?;
        }
        self.put(Doc::User(user.clone())).await?;
        Ok(Arc::new(user))
    }

    /// Changes the user as it is when the change is made (not as a caller read it before):
    /// `change` gets the current record and answers the new one, or refuses. A user deleted
    /// meanwhile is not found, so a slow change (a password hashed) never brings one back.
    pub async fn update_user(
        &self,
        id: Uuid,
        reserved: &str,
        change: impl FnOnce(&User) -> Result<User, DirectoryError>,
    ) -> Result<Arc<User>, DirectoryError> {
        let _serial = self.serial().await?;
        let user = {
            let index = self.index.read();
            let current = index.users.get(&id).ok_or_else(|| {
                DirectoryError::NotFound(format!("User with id [{id}] is not found"))
            })?;
            let user = change(current)?;
            if user.id != id {
                return Err(DirectoryError::Conflict("A user's id cannot change".into()));
            }
            index.check_email(id, &user.email, reserved)?;
            index.check_customer(user.customer_id)?;
            user
        };
        self.put(Doc::User(user.clone())).await?;
        Ok(Arc::new(user))
    }

    pub async fn delete_user(&self, id: Uuid) -> Result<bool, DirectoryError> {
        let _serial = self.serial().await?;
        let relations = {
            let index = self.index.read();
            if !index.users.contains_key(&id) {
                return Ok(false);
            }
            index.relation_keys_of(EntityRef {
                entity_type: EntityType::User,
                id,
            })
        };
        self.write(
            Vec::new(),
            Removal {
                users: vec![id],
                relations,
                ..Removal::default()
            },
        )
        .await?;
        Ok(true)
    }

    // ---- assets ------------------------------------------------------------------------

    pub fn asset(&self, id: Uuid) -> Option<Arc<Asset>> {
        self.index.read().assets.get(&id).cloned()
    }

    pub fn asset_by_name(&self, tenant: TenantId, name: &str) -> Option<Arc<Asset>> {
        let index = self.index.read();
        let id = index.assets_by_name.get(&(tenant, name.to_owned()))?;
        index.assets.get(id).cloned()
    }

    /// A tenant's assets (`customer` `None`), or a customer's, of a type if given, by name.
    pub fn assets(
        &self,
        tenant: TenantId,
        customer: Option<Uuid>,
        asset_type: Option<&str>,
        page: &PageRequest,
    ) -> Page<Arc<Asset>> {
        let index = self.index.read();
        let keep = |a: &&Arc<Asset>| {
            a.tenant_id == tenant
                && asset_type.is_none_or(|t| t == a.asset_type)
                && matches(&page.text_search, &a.name)
        };
        let found: Vec<Arc<Asset>> = match customer {
            // A customer's: its own index, not a scan of the tenant's.
            Some(c) => index
                .customer_assets
                .get(&c)
                .into_iter()
                .flatten()
                .filter_map(|id| index.assets.get(id))
                .filter(keep)
                .cloned()
                .collect(),
            None => index.assets.values().filter(keep).cloned().collect(),
        };
        drop(index);
        paged(found, page, |a| (a.name.clone(), a.id))
    }

    /// What any saved asset must pass: its name free in the tenant, its customer there, room.
    fn check_asset(&self, index: &Index, asset: &Asset) -> Result<(), DirectoryError> {
        if index
            .assets_by_name
            .get(&(asset.tenant_id, asset.name.clone()))
            .is_some_and(|id| *id != asset.id)
        {
            return Err(DirectoryError::Conflict(
                "Asset with such name already exists!".into(),
            ));
        }
        index.check_customer(asset.customer_id)?;
        room(
            &index.assets,
            asset.id,
            asset.tenant_id,
            |a| a.tenant_id,
            self.limits.max_assets,
            "assets",
        )
    }

    /// Creates (or replaces whole) an asset; a name another asset of the tenant has is
    /// refused. A change of an existing asset goes through [`Directory::update_asset`].
    pub async fn save_asset(&self, asset: Asset) -> Result<Arc<Asset>, DirectoryError> {
        let _serial = self.serial().await?;
        self.check_asset(&self.index.read(), &asset)?;
        self.put(Doc::Asset(asset.clone())).await?;
        Ok(Arc::new(asset))
    }

    /// Changes the asset as it is when the change is made: `change` gets the current record.
    /// One deleted meanwhile is not found (never brought back), and a field the caller did not
    /// mean to change (its customer) keeps what another request set.
    pub async fn update_asset(
        &self,
        id: Uuid,
        change: impl FnOnce(&Asset) -> Result<Asset, DirectoryError>,
    ) -> Result<Arc<Asset>, DirectoryError> {
        let _serial = self.serial().await?;
        let asset = {
            let index = self.index.read();
            let current = index.assets.get(&id).ok_or_else(|| {
                DirectoryError::NotFound(format!("Asset with id [{id}] is not found"))
            })?;
            let asset = change(current)?;
            if asset.id != id {
                return Err(DirectoryError::Conflict(
                    "An asset's id cannot change".into(),
                ));
            }
            self.check_asset(&index, &asset)?;
            asset
        };
        self.put(Doc::Asset(asset.clone())).await?;
        Ok(Arc::new(asset))
    }

    /// Deletes an asset and its relations.
    pub async fn delete_asset(&self, id: Uuid) -> Result<bool, DirectoryError> {
        let _serial = self.serial().await?;
        let relations = {
            let index = self.index.read();
            if !index.assets.contains_key(&id) {
                return Ok(false);
            }
            index.relation_keys_of(EntityRef::asset(id))
        };
        self.write(
            Vec::new(),
            Removal {
                assets: vec![id],
                relations,
                ..Removal::default()
            },
        )
        .await?;
        Ok(true)
    }

    // ---- devices -----------------------------------------------------------------------

    /// The customer a device is assigned to.
    pub fn device_customer(&self, device: DeviceId) -> Option<Uuid> {
        self.index.read().assignments.get(&device).copied()
    }

    /// The devices assigned to a customer (at most the tenant's device limit).
    pub fn customer_devices(&self, customer: Uuid) -> Vec<DeviceId> {
        self.index
            .read()
            .customer_devices
            .get(&customer)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Assigns a device to a customer, or back to its tenant (`None`).
    pub async fn assign_device(
        &self,
        tenant: TenantId,
        device: DeviceId,
        customer: Option<Uuid>,
    ) -> Result<(), DirectoryError> {
        let _serial = self.serial().await?;
        match customer {
            Some(customer) => {
                if !self.index.read().customers.contains_key(&customer) {
                    return Err(DirectoryError::NotFound(format!(
                        "Customer with id [{customer}] is not found"
                    )));
                }
                self.put(Doc::Assignment {
                    device,
                    tenant_id: tenant,
                    customer,
                })
                .await
            }
            None => {
                let assigned = self.index.read().assignments.contains_key(&device);
                if !assigned {
                    return Ok(());
                }
                self.write(
                    Vec::new(),
                    Removal {
                        assignments: vec![device],
                        ..Removal::default()
                    },
                )
                .await
            }
        }
    }

    /// Assigns a device to `customer` only if it is assigned to nobody (a claim); returns
    /// whether it did.
    pub async fn claim_device(
        &self,
        tenant: TenantId,
        device: DeviceId,
        customer: Uuid,
    ) -> Result<bool, DirectoryError> {
        let _serial = self.serial().await?;
        {
            let index = self.index.read();
            index.check_customer(Some(customer))?;
            if index.assignments.contains_key(&device) {
                return Ok(false);
            }
        }
        self.put(Doc::Assignment {
            device,
            tenant_id: tenant,
            customer,
        })
        .await?;
        Ok(true)
    }

    /// A deleted device: its assignment and relations go too.
    pub async fn forget_device(&self, device: DeviceId) -> Result<(), DirectoryError> {
        let _serial = self.serial().await?;
        let delete = {
            let index = self.index.read();
            Removal {
                assignments: index
                    .assignments
                    .contains_key(&device)
                    .then_some(device)
                    .into_iter()
                    .collect(),
                relations: index.relation_keys_of(EntityRef::device(device)),
                ..Removal::default()
            }
        };
        self.write(Vec::new(), delete).await
    }

    // ---- relations ---------------------------------------------------------------------

    pub fn relation(&self, key: &RelationKey) -> Option<Relation> {
        self.index.read().relations.get(key).cloned()
    }

    /// Relations from `from` (`outgoing`) or to it, in a type group, of a type if given.
    pub fn relations(
        &self,
        entity: EntityRef,
        outgoing: bool,
        type_group: &str,
        relation_type: Option<&str>,
    ) -> Vec<Relation> {
        let index = self.index.read();
        let map = if outgoing {
            &index.by_from
        } else {
            &index.by_to
        };
        map.get(&entity)
            .into_iter()
            .flatten()
            .filter(|k| {
                k.type_group == type_group && relation_type.is_none_or(|t| t == k.relation_type)
            })
            .filter_map(|k| index.relations.get(k).cloned())
            .collect()
    }

    /// Creates or replaces a relation.
    pub async fn save_relation(&self, relation: Relation) -> Result<(), DirectoryError> {
        let _serial = self.serial().await?;
        {
            let index = self.index.read();
            // Both ends must still exist now (one may have been deleted since it was checked).
            for end in [relation.key.from, relation.key.to] {
                if !index.holds(end) {
                    return Err(DirectoryError::NotFound(format!(
                        "{} with id [{}] is not found",
                        end.entity_type.name(),
                        end.id
                    )));
                }
            }
            if !index.relations.contains_key(&relation.key) {
                let limits = &self.limits;
                if index.relations.len() >= limits.max_relations {
                    return Err(DirectoryError::Limit(format!(
                        "This engine keeps at most {} relations (directory.max_relations)",
                        limits.max_relations
                    )));
                }
                for end in [relation.key.from, relation.key.to] {
                    if index.relation_count(end) >= limits.max_relations_per_entity {
                        return Err(DirectoryError::Limit(format!(
                            "{} [{}] has {} relations, the most one entity may have \
                             (directory.max_relations_per_entity)",
                            end.entity_type.name(),
                            end.id,
                            limits.max_relations_per_entity
                        )));
                    }
                }
                if let Some(c) = relation.customer_id
                    && index.customer_relations.get(&c).copied().unwrap_or(0)
                        >= limits.max_relations_per_customer
                {
                    return Err(DirectoryError::Limit(format!(
                        "The customer's users made {} relations, the most they may \
                         (directory.max_relations_per_customer)",
                        limits.max_relations_per_customer
                    )));
                }
            }
        }
        // Saved again: it stays counted against whoever made it first.
        let relation = match self.index.read().relations.get(&relation.key) {
            Some(existing) => Relation {
                customer_id: existing.customer_id,
                ..relation
            },
            None => relation,
        };
        self.put(Doc::Relation(relation)).await
    }

    /// Returns whether the relation existed.
    pub async fn delete_relation(&self, key: &RelationKey) -> Result<bool, DirectoryError> {
        let _serial = self.serial().await?;
        if !self.index.read().relations.contains_key(key) {
            return Ok(false);
        }
        self.write(
            Vec::new(),
            Removal {
                relations: vec![key.clone()],
                ..Removal::default()
            },
        )
        .await?;
        Ok(true)
    }

    /// Deletes every relation `entity` is an end of (of `type_group` only, if given), in one
    /// write.
    pub async fn delete_relations_of(
        &self,
        entity: EntityRef,
        type_group: Option<&str>,
    ) -> Result<usize, DirectoryError> {
        let _serial = self.serial().await?;
        let mut relations = self.index.read().relation_keys_of(entity);
        relations.retain(|k| type_group.is_none_or(|g| g == k.type_group));
        let count = relations.len();
        self.write(
            Vec::new(),
            Removal {
                relations,
                ..Removal::default()
            },
        )
        .await?;
        Ok(count)
    }
}

/// A directory store in memory, for tests and as a reference.
#[derive(Default)]
pub struct MemoryDirectoryStore {
    docs: parking_lot::Mutex<HashMap<Uuid, Doc>>,
}

#[async_trait]
impl DirectoryStore for MemoryDirectoryStore {
    async fn load(&self) -> Result<Vec<Doc>, StoreError> {
        Ok(self.docs.lock().values().cloned().collect())
    }

    async fn write(&self, put: &[Doc], delete: &[Uuid]) -> Result<(), StoreError> {
        let mut docs = self.docs.lock();
        for id in delete {
            docs.remove(id);
        }
        for doc in put {
            docs.insert(doc.id(), doc.clone());
        }
        Ok(())
    }
}
