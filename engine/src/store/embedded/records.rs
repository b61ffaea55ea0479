//! The embedded store's records of the two-way device API: persistent RPCs (`rpc`) and claim
//! requests (`claim_request`), schema v4. Small rows written one at a time by the writer.

use std::sync::Arc;

use actors::model::{DeviceId, TenantId};
use actors::ports::{
    ClaimRequest, DeviceRecords, MAX_PENDING_RPCS, MAX_RPC_PAGE_SIZE, Page, RecordError,
    RpcPageRequest, RpcRecord, RpcStatus, StoreError, check_page_size, page_offset,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

use super::{Db, sql_error};

pub struct EmbeddedRecords {
    pub(crate) db: Arc<Db>,
}

const RPC_COLUMNS: &str = "id, tenant_id, device_id, created_time, expiration_time, request, \
                           response, status, additional_info";

pub(super) fn uuid(row: &Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let bytes: Vec<u8> = row.get(i)?;
    Uuid::from_slice(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, Box::new(e))
    })
}

fn rpc_from_row(row: &Row<'_>) -> rusqlite::Result<RpcRecord> {
    let code: i8 = row.get(7)?;
    let status = RpcStatus::from_code(code).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            7,
            rusqlite::types::Type::Integer,
            format!("unknown RPC status {code}").into(),
        )
    })?;
    Ok(RpcRecord {
        id: uuid(row, 0)?,
        tenant_id: TenantId(uuid(row, 1)?),
        device_id: DeviceId(uuid(row, 2)?),
        created_time: row.get(3)?,
        expiration_time: row.get(4)?,
        request: row.get(5)?,
        response: row.get(6)?,
        status,
        additional_info: row.get(8)?,
    })
}

fn query_rpcs(
    c: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
) -> Result<Vec<RpcRecord>, StoreError> {
    let mut stmt = c.prepare_cached(sql).map_err(sql_error)?;
    stmt.query_map(params, rpc_from_row)
        .and_then(Iterator::collect::<rusqlite::Result<Vec<RpcRecord>>>)
        .map_err(sql_error)
}

fn claim_from_row(row: &Row<'_>) -> rusqlite::Result<ClaimRequest> {
    Ok(ClaimRequest {
        device_id: DeviceId(uuid(row, 0)?),
        secret_key: row.get(1)?,
        expiration_time: row.get(2)?,
    })
}

fn get_claim(c: &Connection, device: DeviceId) -> rusqlite::Result<Option<ClaimRequest>> {
    c.query_row(
        "SELECT device_id, secret_key, expiration_time FROM claim_request WHERE device_id = ?1",
        params![device.0.as_bytes()],
        claim_from_row,
    )
    .optional()
}

/// Runs `sql` with the record's fields as ?1..?9, in [`RPC_COLUMNS`]' order; rows changed.
fn write_rpc(c: &Connection, sql: &str, r: &RpcRecord) -> rusqlite::Result<usize> {
    c.execute(
        sql,
        params![
            r.id.as_bytes(),
            r.tenant_id.0.as_bytes(),
            r.device_id.0.as_bytes(),
            r.created_time,
            r.expiration_time,
            r.request,
            r.response,
            r.status.code(),
            r.additional_info
        ],
    )
}

#[async_trait]
impl DeviceRecords for EmbeddedRecords {
    async fn save_rpc(&self, rpc: &RpcRecord) -> Result<(), RecordError> {
        rpc.validate()?;
        let r = rpc.clone();
        self.db
            .write(move |c| {
                write_rpc(
                    c,
                    &format!(
                        "INSERT OR REPLACE INTO rpc ({RPC_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                    ),
                    &r,
                )
            })
            .await?;
        Ok(())
    }

    async fn update_rpc(&self, rpc: &RpcRecord) -> Result<bool, RecordError> {
        rpc.validate()?;
        let r = rpc.clone();
        let n = self
            .db
            .write(move |c| {
                write_rpc(
                    c,
                    "UPDATE rpc SET tenant_id = ?2, device_id = ?3, created_time = ?4,
                            expiration_time = ?5, request = ?6, response = ?7, status = ?8,
                            additional_info = ?9
                     WHERE id = ?1",
                    &r,
                )
            })
            .await?;
        Ok(n > 0)
    }

    async fn rpc(&self, id: Uuid) -> Result<Option<RpcRecord>, RecordError> {
        let found = self
            .db
            .read(move |c| {
                query_rpcs(
                    c,
                    &format!("SELECT {RPC_COLUMNS} FROM rpc WHERE id = ?1"),
                    &[&id.as_bytes().as_slice()],
                )
            })
            .await?;
        Ok(found.into_iter().next())
    }

    async fn device_rpcs(
        &self,
        device: DeviceId,
        page: &RpcPageRequest,
    ) -> Result<Page<RpcRecord>, RecordError> {
        check_page_size(page.page_size, MAX_RPC_PAGE_SIZE)?;
        let skip = page_offset(page.page, page.page_size)?;
        let size = i64::try_from(page.page_size).unwrap_or(i64::MAX);
        // -1 matches no status: the filter is off.
        let status = page.status.map_or(-1, RpcStatus::code);
        let (data, total) = self
            .db
            .read(move |c| {
                // One snapshot for the page and its count.
                let tx = c.unchecked_transaction().map_err(sql_error)?;
                let id = device.0.as_bytes().as_slice();
                let filter = "device_id = ?1 AND (?2 = -1 OR status = ?2)";
                let data = query_rpcs(
                    &tx,
                    &format!(
                        "SELECT {RPC_COLUMNS} FROM rpc WHERE {filter}
                         ORDER BY created_time DESC, id DESC LIMIT ?3 OFFSET ?4"
                    ),
                    &[&id, &status, &size, &skip],
                )?;
                let total: i64 = tx
                    .query_row(
                        &format!("SELECT COUNT(*) FROM rpc WHERE {filter}"),
                        params![id, status],
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

    async fn delete_rpc(&self, id: Uuid) -> Result<bool, RecordError> {
        let n = self
            .db
            .write(move |c| c.execute("DELETE FROM rpc WHERE id = ?1", params![id.as_bytes()]))
            .await?;
        Ok(n > 0)
    }

    async fn delete_rpcs_created_before(&self, before: i64) -> Result<(), RecordError> {
        self.db
            .write(move |c| c.execute("DELETE FROM rpc WHERE created_time < ?1", params![before]))
            .await?;
        Ok(())
    }

    async fn pending_rpcs(
        &self,
        device: DeviceId,
        limit: usize,
    ) -> Result<Vec<RpcRecord>, RecordError> {
        check_page_size(limit, MAX_PENDING_RPCS)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let pending = RpcStatus::ALL
            .into_iter()
            .filter(|s| s.is_pending())
            .map(|s| s.code().to_string())
            .collect::<Vec<_>>()
            .join(",");
        Ok(self
            .db
            .read(move |c| {
                query_rpcs(
                    c,
                    &format!(
                        "SELECT {RPC_COLUMNS} FROM rpc WHERE device_id = ?1 AND status IN ({pending})
                         ORDER BY created_time, id LIMIT ?2"
                    ),
                    &[&device.0.as_bytes().as_slice(), &limit],
                )
            })
            .await?)
    }

    async fn put_claim_if_absent(
        &self,
        claim: &ClaimRequest,
        now_ms: i64,
    ) -> Result<ClaimRequest, RecordError> {
        claim.validate()?;
        let claim = claim.clone();
        let standing = self
            .db
            .write(move |c| {
                let tx = c.transaction()?;
                // Inserted when absent; replaced only when the standing one has expired.
                tx.execute(
                    "INSERT INTO claim_request (device_id, secret_key, expiration_time)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (device_id) DO UPDATE
                     SET secret_key = excluded.secret_key,
                         expiration_time = excluded.expiration_time
                     WHERE claim_request.expiration_time <= ?4",
                    params![
                        claim.device_id.0.as_bytes(),
                        claim.secret_key,
                        claim.expiration_time,
                        now_ms
                    ],
                )?;
                let standing = get_claim(&tx, claim.device_id)?;
                tx.commit()?;
                Ok(standing.unwrap_or(claim))
            })
            .await?;
        Ok(standing)
    }

    async fn claim(&self, device: DeviceId) -> Result<Option<ClaimRequest>, RecordError> {
        Ok(self
            .db
            .read(move |c| get_claim(c, device).map_err(sql_error))
            .await?)
    }

    async fn delete_claim(&self, device: DeviceId) -> Result<bool, RecordError> {
        let n = self
            .db
            .write(move |c| {
                c.execute(
                    "DELETE FROM claim_request WHERE device_id = ?1",
                    params![device.0.as_bytes()],
                )
            })
            .await?;
        Ok(n > 0)
    }
}
