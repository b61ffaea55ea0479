//! The embedded store's device profiles (`device_profile`, schema v5). A save checks the
//! tenant's names and all provision keys and clears the tenant's old default in the same
//! transaction as the write; the schema's unique indexes hold the same rules underneath.

use actors::model::TenantId;
use actors::ports::{
    DeviceProfile, DeviceProfiles, Page, PageRequest, ProvisionType, RecordError, StoreError,
    check_profile_page, page_offset,
};
use async_trait::async_trait;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};
use uuid::Uuid;

use super::records::{EmbeddedRecords, uuid};
use super::sql_error;

const COLUMNS: &str = "id, tenant_id, created_time, name, is_default, description, \
                       provision_type, provision_device_key, provision_device_secret";

fn profile_from_row(row: &Row<'_>) -> rusqlite::Result<DeviceProfile> {
    let code: i8 = row.get(6)?;
    let provision_type = ProvisionType::from_code(code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            6,
            rusqlite::types::Type::Integer,
            format!("unknown provision type {code}").into(),
        )
    })?;
    Ok(DeviceProfile {
        id: uuid(row, 0)?,
        tenant_id: TenantId(uuid(row, 1)?),
        created_time: row.get(2)?,
        name: row.get(3)?,
        default: row.get(4)?,
        description: row.get(5)?,
        provision_type,
        provision_device_key: row.get(7)?,
        provision_device_secret: row.get(8)?,
    })
}

fn select(
    c: &Connection,
    filter: &str,
    params: &[&dyn ToSql],
) -> Result<Vec<DeviceProfile>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM device_profile WHERE {filter}"
        ))
        .map_err(sql_error)?;
    stmt.query_map(params, profile_from_row)
        .and_then(Iterator::collect::<rusqlite::Result<Vec<DeviceProfile>>>)
        .map_err(sql_error)
}

/// Whether a profile other than `id` matches `filter` (whose last parameter is `id`).
fn taken(c: &Connection, filter: &str, params: &[&dyn ToSql]) -> rusqlite::Result<bool> {
    c.query_row(
        &format!(
            "SELECT 1 FROM device_profile WHERE {filter} AND id != ?{}",
            params.len()
        ),
        params,
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

fn save(c: &mut Connection, p: &DeviceProfile) -> rusqlite::Result<Result<(), RecordError>> {
    let tx = c.transaction()?;
    let (id, tenant) = (
        p.id.as_bytes().as_slice(),
        p.tenant_id.0.as_bytes().as_slice(),
    );
    if taken(
        &tx,
        "tenant_id = ?1 AND name = ?2",
        &[&tenant, &p.name, &id],
    )? {
        return Ok(Err(RecordError::DuplicateName));
    }
    if let Some(key) = &p.provision_device_key
        && taken(&tx, "provision_device_key = ?1", &[key, &id])?
    {
        return Ok(Err(RecordError::DuplicateProvisionKey));
    }
    if p.default {
        tx.execute(
            "UPDATE device_profile SET is_default = 0
             WHERE tenant_id = ?1 AND is_default = 1 AND id != ?2",
            params![tenant, id],
        )?;
    }
    tx.execute(
        &format!(
            "INSERT INTO device_profile ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (id) DO UPDATE SET
                 tenant_id = excluded.tenant_id, created_time = excluded.created_time,
                 name = excluded.name, is_default = excluded.is_default,
                 description = excluded.description, provision_type = excluded.provision_type,
                 provision_device_key = excluded.provision_device_key,
                 provision_device_secret = excluded.provision_device_secret"
        ),
        params![
            id,
            tenant,
            p.created_time,
            p.name,
            p.default,
            p.description,
            p.provision_type.code(),
            p.provision_device_key,
            p.provision_device_secret
        ],
    )?;
    tx.commit()?;
    Ok(Ok(()))
}

impl EmbeddedRecords {
    /// The first profile `filter` selects, with `values` as its parameters.
    async fn one(
        &self,
        filter: &'static str,
        values: Vec<Value>,
    ) -> Result<Option<DeviceProfile>, RecordError> {
        let found = self
            .db
            .read(move |c| {
                let params: Vec<&dyn ToSql> = values.iter().map(|v| v as &dyn ToSql).collect();
                select(c, filter, &params)
            })
            .await?;
        Ok(found.into_iter().next())
    }
}

fn blob(id: Uuid) -> Value {
    Value::Blob(id.as_bytes().to_vec())
}

#[async_trait]
impl DeviceProfiles for EmbeddedRecords {
    async fn save_profile(&self, profile: &DeviceProfile) -> Result<(), RecordError> {
        profile.validate()?;
        let p = profile.clone();
        self.db.write(move |c| save(c, &p)).await?
    }

    async fn profile(&self, id: Uuid) -> Result<Option<DeviceProfile>, RecordError> {
        self.one("id = ?1", vec![blob(id)]).await
    }

    async fn profile_by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<DeviceProfile>, RecordError> {
        let values = vec![blob(tenant.0), Value::Text(name.to_owned())];
        self.one("tenant_id = ?1 AND name = ?2", values).await
    }

    async fn default_profile(
        &self,
        tenant: TenantId,
    ) -> Result<Option<DeviceProfile>, RecordError> {
        self.one("tenant_id = ?1 AND is_default = 1", vec![blob(tenant.0)])
            .await
    }

    async fn profile_by_provision_key(
        &self,
        key: &str,
    ) -> Result<Option<DeviceProfile>, RecordError> {
        self.one(
            "provision_device_key = ?1",
            vec![Value::Text(key.to_owned())],
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
        let size = i64::try_from(page.page_size).unwrap_or(i64::MAX);
        // A case-insensitive prefix (ASCII case, as SQLite's `lower`); empty matches all.
        let prefix = page.text_search.clone().unwrap_or_default();
        let (data, total) = self
            .db
            .read(move |c| {
                // One snapshot for the page and its count.
                let tx = c.unchecked_transaction().map_err(sql_error)?;
                let tenant = tenant.0.as_bytes().as_slice();
                let filter = "tenant_id = ?1 AND substr(lower(name), 1, length(?2)) = lower(?2)";
                let data = select(
                    &tx,
                    &format!("{filter} ORDER BY name, id LIMIT ?3 OFFSET ?4"),
                    &[&tenant, &prefix, &size, &skip],
                )?;
                let total: i64 = tx
                    .query_row(
                        &format!("SELECT COUNT(*) FROM device_profile WHERE {filter}"),
                        params![tenant, prefix],
                        |r| r.get(0),
                    )
                    .map_err(sql_error)?;
                tx.commit().map_err(sql_error)?;
                Ok((data, total))
            })
            .await?;
        Ok(Page {
            data,
            total_elements: usize::try_from(total).unwrap_or(0),
        })
    }

    async fn delete_profile(&self, id: Uuid) -> Result<bool, RecordError> {
        let n = self
            .db
            .write(move |c| {
                c.execute(
                    "DELETE FROM device_profile WHERE id = ?1",
                    params![id.as_bytes()],
                )
            })
            .await?;
        Ok(n > 0)
    }
}
