//! The directory's in-memory index: the documents, indexed the ways they are read, and what
//! a write removes.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use uuid::Uuid;

use super::DirectoryError;
use super::model::*;
use crate::model::{DeviceId, TenantId};

/// The documents, indexed the ways they are read.
#[derive(Default)]
pub(super) struct Index {
    pub(super) customers: HashMap<Uuid, Arc<Customer>>,
    pub(super) users: HashMap<Uuid, Arc<User>>,
    pub(super) users_by_email: HashMap<String, Uuid>,
    pub(super) users_by_activation: HashMap<String, Uuid>,
    pub(super) assets: HashMap<Uuid, Arc<Asset>>,
    pub(super) assets_by_name: HashMap<(TenantId, String), Uuid>,
    pub(super) customer_assets: HashMap<Uuid, BTreeSet<Uuid>>,
    pub(super) assignments: HashMap<DeviceId, Uuid>,
    pub(super) customer_devices: HashMap<Uuid, BTreeSet<DeviceId>>,
    pub(super) relations: HashMap<RelationKey, Relation>,
    /// Relations made by each customer's users.
    pub(super) customer_relations: HashMap<Uuid, usize>,
    pub(super) by_from: HashMap<EntityRef, BTreeSet<RelationKey>>,
    pub(super) by_to: HashMap<EntityRef, BTreeSet<RelationKey>>,
}

impl Index {
    /// Sets `engine_directory_entries`.
    pub(super) fn report(&self) {
        for (kind, count) in [
            ("customers", self.customers.len()),
            ("users", self.users.len()),
            ("assets", self.assets.len()),
            ("assignments", self.assignments.len()),
            ("relations", self.relations.len()),
        ] {
            metrics::gauge!(crate::metrics::DIRECTORY_ENTRIES, "kind" => kind).set(count as f64);
        }
    }

    pub(super) fn build(docs: Vec<Doc>) -> Index {
        let mut index = Index::default();
        for doc in docs {
            index.apply_put(doc);
        }
        index
    }

    pub(super) fn apply_put(&mut self, doc: Doc) {
        match doc {
            Doc::Customer(c) => {
                self.customers.insert(c.id, Arc::new(c));
            }
            Doc::User(u) => {
                self.remove_user(u.id);
                self.users_by_email.insert(u.email.to_lowercase(), u.id);
                if let Some(token) = &u.activate_token {
                    self.users_by_activation.insert(token.clone(), u.id);
                }
                self.users.insert(u.id, Arc::new(u));
            }
            Doc::Asset(a) => {
                self.remove_asset(a.id);
                self.assets_by_name
                    .insert((a.tenant_id, a.name.clone()), a.id);
                if let Some(customer) = a.customer_id {
                    self.customer_assets
                        .entry(customer)
                        .or_default()
                        .insert(a.id);
                }
                self.assets.insert(a.id, Arc::new(a));
            }
            Doc::Relation(r) => {
                self.remove_relation(&r.key);
                if let Some(c) = r.customer_id {
                    *self.customer_relations.entry(c).or_default() += 1;
                }
                self.by_from
                    .entry(r.key.from)
                    .or_default()
                    .insert(r.key.clone());
                self.by_to
                    .entry(r.key.to)
                    .or_default()
                    .insert(r.key.clone());
                self.relations.insert(r.key.clone(), r);
            }
            Doc::Assignment {
                device, customer, ..
            } => {
                self.unassign(device);
                self.assignments.insert(device, customer);
                self.customer_devices
                    .entry(customer)
                    .or_default()
                    .insert(device);
            }
        }
    }

    pub(super) fn remove_user(&mut self, id: Uuid) -> Option<Arc<User>> {
        let user = self.users.remove(&id)?;
        // Only this user's entries: another (a duplicate two nodes made at once) keeps its own.
        let email = user.email.to_lowercase();
        if self.users_by_email.get(&email) == Some(&id) {
            self.users_by_email.remove(&email);
        }
        if let Some(token) = &user.activate_token
            && self.users_by_activation.get(token) == Some(&id)
        {
            self.users_by_activation.remove(token);
        }
        Some(user)
    }

    pub(super) fn remove_asset(&mut self, id: Uuid) -> Option<Arc<Asset>> {
        let asset = self.assets.remove(&id)?;
        let name = (asset.tenant_id, asset.name.clone());
        if self.assets_by_name.get(&name) == Some(&id) {
            self.assets_by_name.remove(&name);
        }
        if let Some(customer) = asset.customer_id
            && let Some(set) = self.customer_assets.get_mut(&customer)
        {
            set.remove(&id);
            if set.is_empty() {
                self.customer_assets.remove(&customer);
            }
        }
        Some(asset)
    }

    pub(super) fn unassign(&mut self, device: DeviceId) {
        if let Some(customer) = self.assignments.remove(&device)
            && let Some(set) = self.customer_devices.get_mut(&customer)
        {
            set.remove(&device);
            if set.is_empty() {
                self.customer_devices.remove(&customer);
            }
        }
    }

    pub(super) fn remove_relation(&mut self, key: &RelationKey) -> bool {
        let Some(relation) = self.relations.remove(key) else {
            return false;
        };
        if let Some(c) = relation.customer_id
            && let Some(count) = self.customer_relations.get_mut(&c)
        {
            *count -= 1;
            if *count == 0 {
                self.customer_relations.remove(&c);
            }
        }
        for (map, end) in [(&mut self.by_from, key.from), (&mut self.by_to, key.to)] {
            if let Some(set) = map.get_mut(&end) {
                set.remove(key);
                if set.is_empty() {
                    map.remove(&end);
                }
            }
        }
        true
    }

    /// Whether `entity` (not a device: those are the registry's) exists.
    pub(super) fn holds(&self, entity: EntityRef) -> bool {
        match entity.entity_type {
            EntityType::Customer => self.customers.contains_key(&entity.id),
            EntityType::User => self.users.contains_key(&entity.id),
            EntityType::Asset => self.assets.contains_key(&entity.id),
            EntityType::Device | EntityType::Tenant => true,
        }
    }

    /// A customer named by a write must exist when the write is made.
    pub(super) fn check_customer(&self, customer: Option<Uuid>) -> Result<(), DirectoryError> {
        match customer {
            Some(c) if !self.customers.contains_key(&c) => Err(DirectoryError::NotFound(format!(
                "Customer with id [{c}] is not found"
            ))),
            _ => Ok(()),
        }
    }

    /// An e-mail user `id` may have: nobody else's, in any case, nor `reserved`.
    pub(super) fn check_email(
        &self,
        id: Uuid,
        email: &str,
        reserved: &str,
    ) -> Result<(), DirectoryError> {
        let lower = email.to_lowercase();
        let taken = self
            .users_by_email
            .get(&lower)
            .is_some_and(|other| *other != id);
        if taken || lower == reserved.to_lowercase() {
            return Err(DirectoryError::Conflict(format!(
                "User with email '{email}'  already present in database!"
            )));
        }
        Ok(())
    }

    /// Relations `entity` is an end of.
    pub(super) fn relation_count(&self, entity: EntityRef) -> usize {
        self.by_from.get(&entity).map_or(0, BTreeSet::len)
            + self.by_to.get(&entity).map_or(0, BTreeSet::len)
    }

    /// Every relation `entity` is an end of.
    pub(super) fn relation_keys_of(&self, entity: EntityRef) -> Vec<RelationKey> {
        let mut keys: BTreeSet<RelationKey> = BTreeSet::new();
        for map in [&self.by_from, &self.by_to] {
            if let Some(set) = map.get(&entity) {
                keys.extend(set.iter().cloned());
            }
        }
        keys.into_iter().collect()
    }

    /// Applies a write that was stored.
    pub(super) fn apply(&mut self, put: Vec<Doc>, delete: &Removal) {
        for id in &delete.users {
            self.remove_user(*id);
        }
        for id in &delete.assets {
            self.remove_asset(*id);
        }
        for id in &delete.customers {
            self.customers.remove(id);
            self.customer_devices.remove(id);
        }
        for device in &delete.assignments {
            self.unassign(*device);
        }
        for key in &delete.relations {
            self.remove_relation(key);
        }
        for doc in put {
            self.apply_put(doc);
        }
    }
}

/// What a write deletes, by kind.
#[derive(Default)]
pub(super) struct Removal {
    pub(super) customers: Vec<Uuid>,
    pub(super) users: Vec<Uuid>,
    pub(super) assets: Vec<Uuid>,
    pub(super) assignments: Vec<DeviceId>,
    pub(super) relations: Vec<RelationKey>,
}

impl Removal {
    pub(super) fn ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = Vec::new();
        ids.extend(&self.customers);
        ids.extend(&self.users);
        ids.extend(&self.assets);
        ids.extend(self.assignments.iter().map(|d| assignment_id(*d)));
        ids.extend(self.relations.iter().map(RelationKey::doc_id));
        ids
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ids().is_empty()
    }
}
