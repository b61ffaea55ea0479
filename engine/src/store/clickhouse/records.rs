//! The ClickHouse store's records of the two-way device API: persistent RPCs (`rpc`) and claim
//! requests (`claim_request`), schema version 3.
//!
//! Both are mutable rows in `ReplacingMergeTree(ver)` tables: a change or a deletion is a newer
//! row (`deleted = 1` for a deletion), and every read takes each key's newest row with
//! `argMax(_, ver)` grouped by the ordering key, filtering deleted and status only after the
//! versions collapsed (see the device table for why not `FINAL` with `WHERE`). All of it runs on
//! ClickHouse 18.16.
//!
//! `rpc` is ordered by `(device_id, id)`: a device's page is one slice of the index. A read by
//! id alone reads the `id` column of the whole table; RPC rows are few beside time series.
//! RPC versions are the store's write clock: a device's RPCs are written by its owner, one
//! node at a time.

use std::sync::Arc;

use actors::model::{DeviceId, TenantId};
use actors::ports::{
    ClaimRequest, DeviceRecords, MAX_PENDING_RPCS, MAX_RPC_PAGE_SIZE, Page, RecordError,
    RpcPageRequest, RpcRecord, RpcStatus, StoreError, check_page_size, page_offset,
};
use async_trait::async_trait;
use clickhouse::{Client, Row};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Versions, ch_error};

pub struct ClickHouseRecords {
    pub(crate) client: Client,
    pub(crate) versions: Arc<Versions>,
}

/// A row of `rpc`, in its column order.
#[derive(Row, Serialize, Deserialize)]
struct RpcRow {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    id: Uuid,
    #[serde(with = "clickhouse::serde::uuid")]
    tenant_id: Uuid,
    created_time: i64,
    expiration_time: i64,
    request: String,
    response: String,
    has_response: u8,
    status: i8,
    additional_info: String,
    has_additional_info: u8,
    deleted: u8,
    ver: u64,
}

impl RpcRow {
    fn new(r: &RpcRecord, deleted: bool, ver: u64) -> RpcRow {
        RpcRow {
            device_id: r.device_id.0,
            id: r.id,
            tenant_id: r.tenant_id.0,
            created_time: r.created_time,
            expiration_time: r.expiration_time,
            request: r.request.clone(),
            response: r.response.clone().unwrap_or_default(),
            has_response: u8::from(r.response.is_some()),
            status: r.status.code(),
            additional_info: r.additional_info.clone().unwrap_or_default(),
            has_additional_info: u8::from(r.additional_info.is_some()),
            deleted: u8::from(deleted),
            ver,
        }
    }

    fn into_record(self) -> Result<RpcRecord, StoreError> {
        let status = RpcStatus::from_code(self.status).ok_or_else(|| {
            StoreError::Permanent(format!(
                "RPC {} has an unknown status {}",
                self.id, self.status
            ))
        })?;
        Ok(RpcRecord {
            id: self.id,
            tenant_id: TenantId(self.tenant_id),
            device_id: DeviceId(self.device_id),
            created_time: self.created_time,
            expiration_time: self.expiration_time,
            request: self.request,
            response: (self.has_response != 0).then_some(self.response),
            status,
            additional_info: (self.has_additional_info != 0).then_some(self.additional_info),
        })
    }
}

/// The newest row of each RPC, in [`RpcRow`]'s order; callers add `WHERE`, then
/// [`RPC_GROUP`] and their own `HAVING` terms.
const RPC_NEWEST: &str = "SELECT device_id, id, argMax(tenant_id, ver),
                                 argMax(created_time, ver) AS created, argMax(expiration_time, ver),
                                 argMax(request, ver), argMax(response, ver),
                                 argMax(has_response, ver), argMax(status, ver) AS st,
                                 argMax(additional_info, ver), argMax(has_additional_info, ver),
                                 argMax(deleted, ver) AS is_deleted, max(ver)
                          FROM rpc";
const RPC_GROUP: &str = "GROUP BY device_id, id HAVING is_deleted = 0";

/// A row of `claim_request`, in its column order.
#[derive(Row, Serialize, Deserialize)]
struct ClaimRow {
    #[serde(with = "clickhouse::serde::uuid")]
    device_id: Uuid,
    secret_key: String,
    expiration_time: i64,
    deleted: u8,
    ver: u64,
}

impl ClaimRow {
    fn to_claim(&self) -> ClaimRequest {
        ClaimRequest {
            device_id: DeviceId(self.device_id),
            secret_key: self.secret_key.clone(),
            expiration_time: self.expiration_time,
        }
    }
}

/// Versions of `claim_request` rows, so that put-if-absent holds across nodes without a lock:
///
/// ```text
///  63  62 ........ 48  47 ............ 8  7 ... 0
///  0   generation      inverted stamp     inverted tie
/// ```
///
/// A request that replaces nothing, an expired or a deleted one takes the generation above the
/// one it read, so it beats every row before it; two requests that read the same state race in
/// the same generation, where the earlier one (inverted milliseconds since 2020, then a hash
/// of the request, the same on every node) has the higher version and stands, and the writer
/// reads back which one did. A deletion takes the next generation's highest version.
mod claim_version {
    const GENERATION_SHIFT: u32 = 48;
    const MAX_GENERATION: u64 = (1 << 15) - 1;
    const STAMP_SHIFT: u32 = 8;
    const MAX_STAMP: u64 = (1 << 40) - 1;
    const MAX_TIE: u64 = (1 << STAMP_SHIFT) - 1;
    const ORDER_BITS: u64 = (1 << GENERATION_SHIFT) - 1;
    /// 2020-01-01T00:00:00Z.
    const EPOCH_MS: i64 = 1_577_836_800_000;

    fn next_generation(previous: Option<u64>) -> u64 {
        previous.map_or(0, |v| ((v >> GENERATION_SHIFT) + 1).min(MAX_GENERATION))
    }

    /// FNV-1a of the request: stable across builds and nodes.
    fn tie(secret: &str, expiration_time: i64) -> u64 {
        let bytes = secret.bytes().chain(expiration_time.to_le_bytes());
        let hash = bytes.fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        hash & MAX_TIE
    }

    pub(super) fn put(
        previous: Option<u64>,
        now_ms: i64,
        secret: &str,
        expiration_time: i64,
    ) -> u64 {
        let stamp = u64::try_from(now_ms.saturating_sub(EPOCH_MS))
            .unwrap_or(0)
            .min(MAX_STAMP);
        (next_generation(previous) << GENERATION_SHIFT)
            | ((MAX_STAMP - stamp) << STAMP_SHIFT)
            | (MAX_TIE - tie(secret, expiration_time))
    }

    pub(super) fn deletion(previous: u64) -> u64 {
        (next_generation(Some(previous)) << GENERATION_SHIFT) | ORDER_BITS
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const NOW: i64 = 1_800_000_000_000;

        #[test]
        fn the_first_request_of_a_generation_stands_and_later_generations_win() {
            let first = put(None, NOW, "a", 1);
            assert!(first > put(None, NOW + 1, "b", 1), "the earlier one stands");
            assert_ne!(put(None, NOW, "a", 1), put(None, NOW, "b", 1));
            let replaced = put(Some(first), NOW + 10, "c", 1);
            assert!(replaced > first, "a replacement goes above what it read");
            let deleted = deletion(replaced);
            assert!(deleted > replaced && deleted > put(Some(first), NOW, "d", 1));
            assert!(put(Some(deleted), NOW + 20, "e", 1) > deleted);
        }
    }
}

impl ClickHouseRecords {
    async fn insert<T: clickhouse::RowOwned + clickhouse::RowWrite>(
        &self,
        table: &str,
        row: &T,
    ) -> Result<(), StoreError> {
        let mut insert = self.client.insert::<T>(table).await.map_err(ch_error)?;
        insert.write(row).await.map_err(ch_error)?;
        insert.end().await.map_err(ch_error)
    }

    async fn rpcs(&self, sql: &str, bind: &[String]) -> Result<Vec<RpcRecord>, StoreError> {
        let mut query = self.client.query(sql);
        for value in bind {
            query = query.bind(value.as_str());
        }
        let rows = query.fetch_all::<RpcRow>().await.map_err(ch_error)?;
        rows.into_iter().map(RpcRow::into_record).collect()
    }

    /// The device's newest claim row, deleted or not.
    async fn claim_row(&self, device: DeviceId) -> Result<Option<ClaimRow>, StoreError> {
        self.client
            .query(
                "SELECT device_id, argMax(secret_key, ver), argMax(expiration_time, ver),
                        argMax(deleted, ver), max(ver)
                 FROM claim_request WHERE device_id = toUUID(?) GROUP BY device_id",
            )
            .bind(device.0.to_string())
            .fetch_optional::<ClaimRow>()
            .await
            .map_err(ch_error)
    }
}

/// The `HAVING` term of a status filter. The name comes from [`RpcStatus`], never from input.
fn status_term(status: Option<RpcStatus>) -> String {
    status.map_or_else(String::new, |s| format!(" AND st = '{}'", s.as_str()))
}

#[async_trait]
impl DeviceRecords for ClickHouseRecords {
    async fn save_rpc(&self, rpc: &RpcRecord) -> Result<(), RecordError> {
        rpc.validate()?;
        let row = RpcRow::new(rpc, false, self.versions.next());
        Ok(self.insert("rpc", &row).await?)
    }

    async fn rpc(&self, id: Uuid) -> Result<Option<RpcRecord>, RecordError> {
        let found = self
            .rpcs(
                &format!("{RPC_NEWEST} WHERE id = toUUID(?) {RPC_GROUP}"),
                &[id.to_string()],
            )
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
        let current = format!(
            "{RPC_NEWEST} WHERE device_id = toUUID(?) {RPC_GROUP}{}",
            status_term(page.status)
        );
        let device = device.0.to_string();
        let data = self
            .rpcs(
                &format!(
                    "{current} ORDER BY created DESC, id DESC LIMIT {skip}, {}",
                    page.page_size
                ),
                std::slice::from_ref(&device),
            )
            .await?;
        let total = self
            .client
            .query(&format!("SELECT count() FROM ({current})"))
            .bind(device.as_str())
            .fetch_one::<u64>()
            .await
            .map_err(ch_error)?;
        Ok(Page {
            data,
            total_elements: usize::try_from(total).unwrap_or(usize::MAX),
        })
    }

    async fn delete_rpc(&self, id: Uuid) -> Result<bool, RecordError> {
        let Some(current) = self.rpc(id).await? else {
            return Ok(false);
        };
        let row = RpcRow::new(&current, true, self.versions.next());
        self.insert("rpc", &row).await?;
        Ok(true)
    }

    /// A deletion row (newer version, `deleted = 1`) for every live record created before
    /// `before`; only `deleted` of such a row is ever read.
    async fn delete_rpcs_created_before(&self, before: i64) -> Result<(), RecordError> {
        let ver = self.versions.next();
        self.client
            .query(&format!(
                "INSERT INTO rpc (device_id, id, tenant_id, created_time, expiration_time, request,
                                  response, has_response, status, additional_info,
                                  has_additional_info, deleted, ver)
                 SELECT device_id, id, any(tenant_id), argMax(created_time, ver) AS created,
                        0, '', '', 0, argMax(status, ver), '', 0, 1, {ver}
                 FROM rpc GROUP BY device_id, id
                 HAVING argMax(deleted, ver) = 0 AND created < ?"
            ))
            .bind(before)
            .execute()
            .await
            .map_err(|e| RecordError::Store(ch_error(e)))?;
        Ok(())
    }

    async fn pending_rpcs(
        &self,
        device: DeviceId,
        limit: usize,
    ) -> Result<Vec<RpcRecord>, RecordError> {
        check_page_size(limit, MAX_PENDING_RPCS)?;
        Ok(self
            .rpcs(
                &format!(
                    "{RPC_NEWEST} WHERE device_id = toUUID(?) {RPC_GROUP} AND st IN ({})
                     ORDER BY created, id LIMIT {limit}",
                    RpcStatus::ALL
                        .into_iter()
                        .filter(|s| s.is_pending())
                        .map(|s| format!("'{}'", s.as_str()))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
                &[device.0.to_string()],
            )
            .await?)
    }

    async fn put_claim_if_absent(
        &self,
        claim: &ClaimRequest,
        now_ms: i64,
    ) -> Result<ClaimRequest, RecordError> {
        claim.validate()?;
        let current = self.claim_row(claim.device_id).await?;
        if let Some(row) = &current
            && row.deleted == 0
            && !row.to_claim().is_expired(now_ms)
        {
            return Ok(row.to_claim());
        }
        let row = ClaimRow {
            device_id: claim.device_id.0,
            secret_key: claim.secret_key.clone(),
            expiration_time: claim.expiration_time,
            deleted: 0,
            ver: claim_version::put(
                current.map(|r| r.ver),
                now_ms,
                &claim.secret_key,
                claim.expiration_time,
            ),
        };
        self.insert("claim_request", &row).await?;
        // Another node may have put one in the same generation; the earlier one stands.
        let standing = self.claim_row(claim.device_id).await?;
        Ok(match standing {
            Some(r) if r.deleted == 0 => r.to_claim(),
            _ => claim.clone(),
        })
    }

    async fn claim(&self, device: DeviceId) -> Result<Option<ClaimRequest>, RecordError> {
        let row = self.claim_row(device).await?;
        Ok(row.filter(|r| r.deleted == 0).map(|r| r.to_claim()))
    }

    async fn delete_claim(&self, device: DeviceId) -> Result<bool, RecordError> {
        let Some(current) = self.claim_row(device).await?.filter(|r| r.deleted == 0) else {
            return Ok(false);
        };
        let row = ClaimRow {
            deleted: 1,
            ver: claim_version::deletion(current.ver),
            ..current
        };
        self.insert("claim_request", &row).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use actors::ports::{DeviceRecords, RpcStatus};
    use harness::servers::ClickHouse;

    use super::*;
    use crate::config::{StoreConfig, StoreKind};
    use crate::store::clickhouse::ClickHouseStore;

    const NOW: i64 = 1_800_000_000_000;

    /// Two nodes read the same empty state and both put a claim: the one that wrote later (by
    /// its clock) does not replace the earlier one, neither in reads nor after a merge; and a
    /// deleted RPC stays deleted after a merge.
    #[tokio::test(flavor = "multi_thread")]
    async fn racing_claims_settle_on_the_earlier_one_and_merges_keep_deletions() {
        let server = ClickHouse::start().expect("clickhouse starts");
        let config = StoreConfig {
            kind: StoreKind::Clickhouse,
            url: server.url(),
            database: "race".into(),
            ..StoreConfig::default()
        };
        let (store, _) = ClickHouseStore::open(&config).await.expect("opens");
        let records = store.records();
        let d = DeviceId::derive(TenantId::from_name("race"), "claimed");
        let x = ClaimRequest {
            device_id: d,
            secret_key: "x".into(),
            expiration_time: NOW + 60_000,
        };
        assert_eq!(records.put_claim_if_absent(&x, NOW).await.expect("put"), x);
        // The other node's write, from the state it read before `x` was there.
        let y = ClaimRow {
            device_id: d.0,
            secret_key: "y".into(),
            expiration_time: NOW + 60_000,
            deleted: 0,
            ver: claim_version::put(None, NOW + 5, "y", NOW + 60_000),
        };
        records.insert("claim_request", &y).await.expect("insert");
        assert_eq!(records.claim(d).await.expect("claim"), Some(x.clone()));

        let rpc = RpcRecord {
            id: Uuid::new_v4(),
            tenant_id: TenantId::from_name("race"),
            device_id: d,
            created_time: NOW,
            expiration_time: NOW + 1,
            request: "{}".into(),
            response: None,
            status: RpcStatus::Queued,
            additional_info: None,
        };
        records.save_rpc(&rpc).await.expect("save");
        assert!(records.delete_rpc(rpc.id).await.expect("delete"));
        for table in ["claim_request", "rpc"] {
            server
                .query(&format!("OPTIMIZE TABLE race.{table} FINAL"))
                .await
                .expect("merge");
        }
        assert_eq!(records.claim(d).await.expect("claim"), Some(x));
        assert_eq!(records.rpc(rpc.id).await.expect("get"), None);
        assert!(
            records
                .pending_rpcs(d, 10)
                .await
                .expect("pending")
                .is_empty()
        );
    }
}
