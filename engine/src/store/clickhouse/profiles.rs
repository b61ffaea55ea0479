//! The ClickHouse store's device profiles (`device_profile`, migration 4), versioned rows as
//! in `records.rs`, ordered by `(tenant_id, id)` so a tenant's profiles are one slice.
//!
//! ClickHouse has no unique constraint: a save reads the tenant's profiles and the profiles
//! holding its provision key first, refuses a clash, and writes the profile and the cleared
//! old default in one insert. Two saves racing through two nodes can both pass the checks
//! (profiles are written rarely, by tenant administrators); reads then settle it the same way
//! on every node: by name or key the earliest created profile, the default the newest saved.

use actors::model::TenantId;
use actors::ports::{
    DeviceProfile, DeviceProfiles, Page, PageRequest, ProvisionType, RecordError, StoreError,
    check_profile_page, page_offset,
};
use async_trait::async_trait;
use clickhouse::Row;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::ch_error;
use super::records::ClickHouseRecords;

/// A row of `device_profile`, in its column order.
#[derive(Row, Serialize, Deserialize, Clone)]
struct ProfileRow {
    #[serde(with = "clickhouse::serde::uuid")]
    tenant_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    created_time: i64,
    name: String,
    is_default: u8,
    description: String,
    has_description: u8,
    provision_type: i8,
    provision_device_key: String,
    has_provision_device_key: u8,
    provision_device_secret: String,
    has_provision_device_secret: u8,
    deleted: u8,
    ver: u64,
}

impl ProfileRow {
    fn new(p: &DeviceProfile, ver: u64) -> ProfileRow {
        let text = |v: &Option<String>| (v.clone().unwrap_or_default(), u8::from(v.is_some()));
        let (description, has_description) = text(&p.description);
        let (provision_device_key, has_provision_device_key) = text(&p.provision_device_key);
        let (provision_device_secret, has_provision_device_secret) =
            text(&p.provision_device_secret);
        ProfileRow {
            tenant_id: p.tenant_id.0,
            id: p.id,
            created_time: p.created_time,
            name: p.name.clone(),
            is_default: u8::from(p.default),
            description,
            has_description,
            provision_type: p.provision_type.code(),
            provision_device_key,
            has_provision_device_key,
            provision_device_secret,
            has_provision_device_secret,
            deleted: 0,
            ver,
        }
    }

    fn into_profile(self) -> Result<DeviceProfile, StoreError> {
        let provision_type = ProvisionType::from_code(self.provision_type).ok_or_else(|| {
            StoreError::Permanent(format!(
                "device profile {} has an unknown provision type {}",
                self.id, self.provision_type
            ))
        })?;
        Ok(DeviceProfile {
            id: self.id,
            tenant_id: TenantId(self.tenant_id),
            created_time: self.created_time,
            name: self.name,
            default: self.is_default != 0,
            description: (self.has_description != 0).then_some(self.description),
            provision_type,
            provision_device_key: (self.has_provision_device_key != 0)
                .then_some(self.provision_device_key),
            provision_device_secret: (self.has_provision_device_secret != 0)
                .then_some(self.provision_device_secret),
        })
    }
}

/// The newest row of each profile, in [`ProfileRow`]'s order; callers add `WHERE`, then
/// [`GROUP`] and their own `HAVING` terms.
const NEWEST: &str = "SELECT tenant_id, id, argMax(created_time, ver) AS created,
                             argMax(name, ver) AS nm, argMax(is_default, ver) AS dflt,
                             argMax(description, ver), argMax(has_description, ver),
                             argMax(provision_type, ver), argMax(provision_device_key, ver) AS pkey,
                             argMax(has_provision_device_key, ver) AS has_pkey,
                             argMax(provision_device_secret, ver),
                             argMax(has_provision_device_secret, ver),
                             argMax(deleted, ver) AS is_deleted, max(ver) AS newest
                      FROM device_profile";
const GROUP: &str = "GROUP BY tenant_id, id HAVING is_deleted = 0";
/// The `HAVING` term of a case-insensitive name prefix, bound twice.
const PREFIX: &str = " AND lowerUTF8(substringUTF8(nm, 1, lengthUTF8(?))) = lowerUTF8(?)";

impl ClickHouseRecords {
    async fn profile_rows(&self, sql: &str, bind: &[&str]) -> Result<Vec<ProfileRow>, StoreError> {
        let mut query = self.client.query(sql);
        for value in bind {
            query = query.bind(*value);
        }
        query.fetch_all::<ProfileRow>().await.map_err(ch_error)
    }

    async fn first_profile(
        &self,
        sql: &str,
        bind: &[&str],
    ) -> Result<Option<DeviceProfile>, RecordError> {
        let rows = self.profile_rows(sql, bind).await?;
        Ok(rows
            .into_iter()
            .next()
            .map(ProfileRow::into_profile)
            .transpose()?)
    }

    async fn write_profiles(&self, rows: &[ProfileRow]) -> Result<(), StoreError> {
        let mut insert = self
            .client
            .insert::<ProfileRow>("device_profile")
            .await
            .map_err(ch_error)?;
        for row in rows {
            insert.write(row).await.map_err(ch_error)?;
        }
        insert.end().await.map_err(ch_error)
    }
}

#[async_trait]
impl DeviceProfiles for ClickHouseRecords {
    async fn save_profile(&self, profile: &DeviceProfile) -> Result<(), RecordError> {
        profile.validate()?;
        let tenant = profile.tenant_id.0.to_string();
        let theirs = self
            .profile_rows(
                &format!("{NEWEST} WHERE tenant_id = toUUID(?) {GROUP}"),
                &[&tenant],
            )
            .await?;
        let others = || theirs.iter().filter(|r| r.id != profile.id);
        if others().any(|r| r.name == profile.name) {
            return Err(RecordError::DuplicateName);
        }
        if let Some(key) = &profile.provision_device_key {
            let holders = self
                .profile_rows(
                    &format!("{NEWEST} {GROUP} AND has_pkey = 1 AND pkey = ?"),
                    &[key],
                )
                .await?;
            if holders.iter().any(|r| r.id != profile.id) {
                return Err(RecordError::DuplicateProvisionKey);
            }
        }
        let mut rows: Vec<ProfileRow> = Vec::new();
        if profile.default {
            for old in others().filter(|r| r.is_default != 0) {
                rows.push(ProfileRow {
                    is_default: 0,
                    ver: self.versions.next().max(old.ver.saturating_add(1)),
                    ..old.clone()
                });
            }
        }
        let replaced = theirs.iter().find(|r| r.id == profile.id);
        let ver = self.versions.next();
        let ver = replaced.map_or(ver, |r| ver.max(r.ver.saturating_add(1)));
        rows.push(ProfileRow::new(profile, ver));
        Ok(self.write_profiles(&rows).await?)
    }

    async fn profile(&self, id: Uuid) -> Result<Option<DeviceProfile>, RecordError> {
        self.first_profile(
            &format!("{NEWEST} WHERE id = toUUID(?) {GROUP}"),
            &[&id.to_string()],
        )
        .await
    }

    async fn profile_by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<DeviceProfile>, RecordError> {
        self.first_profile(
            &format!(
                "{NEWEST} WHERE tenant_id = toUUID(?) {GROUP} AND nm = ?
                 ORDER BY created, id LIMIT 1"
            ),
            &[&tenant.0.to_string(), name],
        )
        .await
    }

    async fn default_profile(
        &self,
        tenant: TenantId,
    ) -> Result<Option<DeviceProfile>, RecordError> {
        self.first_profile(
            &format!(
                "{NEWEST} WHERE tenant_id = toUUID(?) {GROUP} AND dflt = 1
                 ORDER BY newest DESC LIMIT 1"
            ),
            &[&tenant.0.to_string()],
        )
        .await
    }

    async fn profile_by_provision_key(
        &self,
        key: &str,
    ) -> Result<Option<DeviceProfile>, RecordError> {
        self.first_profile(
            &format!("{NEWEST} {GROUP} AND has_pkey = 1 AND pkey = ? ORDER BY created, id LIMIT 1"),
            &[key],
        )
        .await
    }

    async fn profiles(
        &self,
        tenant: TenantId,
        page: &PageRequest,
    ) -> Result<Page<DeviceProfile>, RecordError> {
        check_profile_page(page)?;
        let skip = page_offset(page.page, page.page_size)?;
        let tenant = tenant.0.to_string();
        let prefix = page.text_search.as_deref().filter(|t| !t.is_empty());
        let mut bind = vec![tenant.as_str()];
        let mut current = format!("{NEWEST} WHERE tenant_id = toUUID(?) {GROUP}");
        if let Some(prefix) = prefix {
            current.push_str(PREFIX);
            bind.extend([prefix, prefix]);
        }
        let rows = self
            .profile_rows(
                &format!("{current} ORDER BY nm, id LIMIT {skip}, {}", page.page_size),
                &bind,
            )
            .await?;
        let data = rows
            .into_iter()
            .map(ProfileRow::into_profile)
            .collect::<Result<Vec<_>, _>>()?;
        let mut count = self
            .client
            .query(&format!("SELECT count() FROM ({current})"));
        for value in &bind {
            count = count.bind(*value);
        }
        let total = count.fetch_one::<u64>().await.map_err(ch_error)?;
        Ok(Page {
            data,
            total_elements: usize::try_from(total).unwrap_or(usize::MAX),
        })
    }

    async fn delete_profile(&self, id: Uuid) -> Result<bool, RecordError> {
        let current = self
            .profile_rows(
                &format!("{NEWEST} WHERE id = toUUID(?) {GROUP}"),
                &[&id.to_string()],
            )
            .await?;
        if current.is_empty() {
            return Ok(false);
        }
        let rows: Vec<ProfileRow> = current
            .into_iter()
            .map(|r| ProfileRow {
                deleted: 1,
                ver: self.versions.next().max(r.ver.saturating_add(1)),
                ..r
            })
            .collect();
        self.write_profiles(&rows).await?;
        Ok(true)
    }
}
