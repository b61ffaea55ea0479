//! What the directory keeps: customers, users, assets, which customer a device is assigned
//! to, and relations between entities, in the serde form they are stored in.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{DeviceId, TenantId};

/// Longest title, name, type, label, e-mail or contact field, in characters (ThingsBoard's
/// columns are 255 wide).
pub const MAX_FIELD_CHARS: usize = 255;
/// Longest `additionalInfo`, in bytes of JSON text.
pub const MAX_INFO_BYTES: usize = 16 * 1024;
/// Longest `additionalInfo` of a relation (there may be many more relations than entities).
pub const MAX_RELATION_INFO_BYTES: usize = 1024;

/// The kinds of entity an app names by `{"entityType":..,"id":..}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EntityType {
    Tenant,
    Customer,
    User,
    Device,
    Asset,
}

impl EntityType {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityType::Tenant => "TENANT",
            EntityType::Customer => "CUSTOMER",
            EntityType::User => "USER",
            EntityType::Device => "DEVICE",
            EntityType::Asset => "ASSET",
        }
    }

    /// As ThingsBoard names the kind in messages ("Device with id [..] is not found").
    pub fn name(self) -> &'static str {
        match self {
            EntityType::Tenant => "Tenant",
            EntityType::Customer => "Customer",
            EntityType::User => "User",
            EntityType::Device => "Device",
            EntityType::Asset => "Asset",
        }
    }

    pub fn parse(s: &str) -> Option<EntityType> {
        Some(match s {
            "TENANT" => EntityType::Tenant,
            "CUSTOMER" => EntityType::Customer,
            "USER" => EntityType::User,
            "DEVICE" => EntityType::Device,
            "ASSET" => EntityType::Asset,
            _ => return None,
        })
    }
}

/// One entity: its kind and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRef {
    pub entity_type: EntityType,
    pub id: Uuid,
}

impl EntityRef {
    pub fn device(id: DeviceId) -> EntityRef {
        EntityRef {
            entity_type: EntityType::Device,
            id: id.0,
        }
    }

    pub fn asset(id: Uuid) -> EntityRef {
        EntityRef {
            entity_type: EntityType::Asset,
            id,
        }
    }
}

/// Contact fields ThingsBoard's customers carry, all optional text.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Contact {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub country: Option<String>,
    pub state: Option<String>,
    pub city: Option<String>,
    pub address: Option<String>,
    pub address2: Option<String>,
    pub zip: Option<String>,
}

impl Contact {
    pub fn fields(&self) -> [(&'static str, &Option<String>); 8] {
        [
            ("email", &self.email),
            ("phone", &self.phone),
            ("country", &self.country),
            ("state", &self.state),
            ("city", &self.city),
            ("address", &self.address),
            ("address2", &self.address2),
            ("zip", &self.zip),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub created_time: i64,
    pub title: String,
    #[serde(default)]
    pub contact: Contact,
    /// JSON text; `None` for `null`.
    pub additional_info: Option<String>,
}

/// A user's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Authority {
    TenantAdmin,
    CustomerUser,
}

impl Authority {
    pub fn as_str(self) -> &'static str {
        match self {
            Authority::TenantAdmin => "TENANT_ADMIN",
            Authority::CustomerUser => "CUSTOMER_USER",
        }
    }

    pub fn parse(s: &str) -> Option<Authority> {
        match s {
            "TENANT_ADMIN" => Some(Authority::TenantAdmin),
            "CUSTOMER_USER" => Some(Authority::CustomerUser),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub id: Uuid,
    pub tenant_id: TenantId,
    /// The customer a `CUSTOMER_USER` belongs to; `None` for a tenant administrator.
    pub customer_id: Option<Uuid>,
    pub created_time: i64,
    /// The login name, unique without regard to case.
    pub email: String,
    pub authority: Authority,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub additional_info: Option<String>,
    /// An Argon2 PHC string; `None` until the account is activated.
    pub password_hash: Option<String>,
    /// The token of the activation link, until the account is activated.
    pub activate_token: Option<String>,
    /// Until when (ms since the epoch) the activation link is valid.
    #[serde(default)]
    pub activate_expires: i64,
}

impl User {
    /// Changes whenever the password does; a user's tokens carry it, so a password change
    /// outdates them.
    pub fn credentials(&self) -> Uuid {
        Uuid::new_v5(
            &self.id,
            self.password_hash.as_deref().unwrap_or("").as_bytes(),
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Asset {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub customer_id: Option<Uuid>,
    pub created_time: i64,
    pub name: String,
    #[serde(rename = "type")]
    pub asset_type: String,
    pub label: Option<String>,
    pub additional_info: Option<String>,
}

/// ThingsBoard's relation type groups.
pub const TYPE_GROUPS: [&str; 6] = [
    "COMMON",
    "ALARM",
    "DASHBOARD",
    "RULE_CHAIN",
    "RULE_NODE",
    "EDGE",
];

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelationKey {
    pub from: EntityRef,
    pub to: EntityRef,
    pub relation_type: String,
    pub type_group: String,
}

impl RelationKey {
    /// The id its stored document has: the same on every node for the same relation.
    pub fn doc_id(&self) -> Uuid {
        let text = format!(
            "relation:{}:{}:{}:{}:{}:{}",
            self.from.entity_type.as_str(),
            self.from.id,
            self.to.entity_type.as_str(),
            self.to.id,
            self.type_group,
            self.relation_type
        );
        Uuid::new_v5(&crate::model::ID_NAMESPACE, text.as_bytes())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Relation {
    pub tenant_id: TenantId,
    /// The customer whose user made it (counted against `directory.max_relations_per_customer`);
    /// `None` for a tenant administrator's.
    #[serde(default)]
    pub customer_id: Option<Uuid>,
    #[serde(flatten)]
    pub key: RelationKey,
    pub additional_info: Option<String>,
}

/// One stored document of the directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Doc {
    Customer(Customer),
    User(User),
    Asset(Asset),
    Relation(Relation),
    /// A device assigned to a customer (absent: the tenant's own).
    Assignment {
        device: DeviceId,
        tenant_id: TenantId,
        customer: Uuid,
    },
}

impl Doc {
    /// The document's id in the store.
    pub fn id(&self) -> Uuid {
        match self {
            Doc::Customer(c) => c.id,
            Doc::User(u) => u.id,
            Doc::Asset(a) => a.id,
            Doc::Relation(r) => r.key.doc_id(),
            Doc::Assignment { device, .. } => assignment_id(*device),
        }
    }
}

/// The id of a device's assignment document.
pub fn assignment_id(device: DeviceId) -> Uuid {
    Uuid::new_v5(&device.0, b"customer assignment")
}
