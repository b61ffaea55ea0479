//! The device table in ClickHouse, behind the shared in-memory registry. Nodes share it: a
//! token, name or id this node does not hold is looked up in the table before it is called
//! unknown, and a creation is checked against it, so a device created through another node is
//! found here too and never created a second time.
//!
//! Two nodes may still create the same device at the same moment (both checked before either
//! wrote). The row versions settle it the same way on every node and in every merge: the first
//! creation wins, and a node reads the device back after writing it, so the one that lost
//! learns the winner (see [`version`]). What is left: a node whose write reached the server
//! after the other node had already read back is the one case where both believe they won;
//! it takes two creations of one device within the time of one insert, and one of them
//! delayed between taking its version and the server storing it.

use std::collections::HashMap;
use std::sync::Arc;

use actors::model::{AccessToken, Device, DeviceId, TenantId};
use actors::ports::StoreError;
use async_trait::async_trait;
use clickhouse::{Client, Row};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Versions, ch_error};
use crate::store::registry::{CachedRegistry, DeviceTable};

pub type ClickHouseRegistry = CachedRegistry<DeviceRows>;

pub struct DeviceRows {
    client: Client,
    /// The clock of row versions.
    clock: Arc<Versions>,
    /// The newest row version of every device this node read or wrote, and whether that row
    /// is a deletion: a change must go above it, a re-creation above the deletion.
    current: Mutex<HashMap<DeviceId, Newest>>,
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
    additional_info: String,
    has_additional_info: u8,
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
            additional_info: d.additional_info.clone().unwrap_or_default(),
            has_additional_info: u8::from(d.additional_info.is_some()),
        }
    }

    fn to_device(&self) -> Device {
        Device {
            id: DeviceId(self.id),
            tenant_id: TenantId(self.tenant_id),
            name: self.name.clone(),
            device_type: self.device_type.clone(),
            label: (self.has_label != 0).then(|| self.label.clone()),
            token: AccessToken(self.token.clone()),
            created_time: self.created_time,
            additional_info: (self.has_additional_info != 0).then(|| self.additional_info.clone()),
        }
    }
}

/// Row versions of `device`, a `ReplacingMergeTree(ver)`: the row with the highest version is
/// an id's current state, in reads (`argMax`) and in merges alike.
///
/// ```text
///  63  62     61 ... 48     47     46 .............. 6    5 ... 0
///  0   1      life          kind   stamp                  tie
/// ```
///
/// - Bit 62 set: this layout. Versions written before it were write times in nanoseconds
///   (below 2^61 until 2043), so every version of this layout is above them.
/// - `life`: 0 for the first device under an id, one more than the deleted device's for each
///   creation after a deletion, so a re-created device beats the deletion.
/// - `kind`: 0 creation, 1 change (rename, new credentials, deletion): within a life, every
///   change beats every creation, so an explicit update wins over a late creation.
/// - `stamp`: milliseconds since 2020 (to 2089). A creation stores it inverted, so the first
///   creation has the highest version and wins; a change stores it as is, so the latest wins,
///   and always at least one above the version it replaces.
/// - `tie`: creations in the same millisecond are ordered by a hash of their token, the same
///   on every node.
mod version {
    const LAYOUT: u64 = 1 << 62;
    const LIFE_SHIFT: u32 = 48;
    const MAX_LIFE: u64 = (1 << 14) - 1;
    const CHANGE: u64 = 1 << 47;
    const STAMP_SHIFT: u32 = 6;
    const MAX_STAMP: u64 = (1 << 41) - 1;
    const MAX_TIE: u64 = (1 << STAMP_SHIFT) - 1;
    /// 2020-01-01T00:00:00Z.
    const EPOCH_MS: i64 = 1_577_836_800_000;

    fn life(ver: u64) -> u64 {
        if ver & LAYOUT == 0 {
            0
        } else {
            (ver >> LIFE_SHIFT) & MAX_LIFE
        }
    }

    fn stamp(now_ms: i64) -> u64 {
        u64::try_from(now_ms.saturating_sub(EPOCH_MS))
            .unwrap_or(0)
            .min(MAX_STAMP)
    }

    /// FNV-1a: stable across builds and nodes, unlike std's hasher.
    fn tie(token: &str) -> u64 {
        let hash = token.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        hash & MAX_TIE
    }

    /// A creation's version. `previous`: the newest version the id has, and whether it is a
    /// deletion (then this is a new life); a live one is a creation racing it, in its life.
    pub(super) fn creation(previous: Option<(u64, bool)>, now_ms: i64, token: &str) -> u64 {
        let life = match previous {
            Some((p, true)) if p & LAYOUT != 0 => (life(p) + 1).min(MAX_LIFE),
            Some((p, _)) => life(p),
            None => 0,
        };
        let order = ((MAX_STAMP - stamp(now_ms)) << STAMP_SHIFT) | (MAX_TIE - tie(token));
        LAYOUT | (life << LIFE_SHIFT) | order
    }

    /// A change's version: above every creation of the device's life and above `current`.
    pub(super) fn change(current: u64, now_ms: i64) -> u64 {
        let computed =
            LAYOUT | (life(current) << LIFE_SHIFT) | CHANGE | (stamp(now_ms) << STAMP_SHIFT);
        computed.max(current.saturating_add(1))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const NOW: i64 = 1_800_000_000_000;

        #[test]
        fn the_first_creation_wins_and_any_change_beats_creations() {
            let first = creation(None, NOW, "a");
            let later = creation(None, NOW + 1, "b");
            assert!(first > later, "the first creation wins");
            let same_ms = [creation(None, NOW, "x"), creation(None, NOW, "y")];
            assert_ne!(same_ms[0], same_ms[1], "a tie is broken by the token");
            let rename = change(later, NOW + 2);
            assert!(
                rename > first,
                "a change wins over every creation of its life"
            );
            let stale_clock = change(rename, NOW - 60_000);
            assert!(
                stale_clock > rename,
                "a change always replaces the one it saw"
            );
        }

        #[test]
        fn a_re_creation_beats_the_deletion_and_old_versions() {
            let created = creation(None, NOW, "a");
            let deleted = change(created, NOW + 1);
            let again = creation(Some((deleted, true)), NOW + 2, "b");
            assert!(again > deleted, "re-created after the deletion");
            let late_first_life = creation(None, NOW - 5, "c");
            assert!(again > late_first_life);
            let nanos = u64::try_from(NOW).expect("positive") * 1_000_000;
            assert!(
                creation(Some((nanos, true)), NOW, "a") > nanos,
                "above the old layout"
            );
            assert!(change(nanos, NOW) > nanos);
        }
    }
}

/// The newest version of devices, grouped by id; callers add `WHERE`, `GROUP BY id` and
/// filter deleted ones themselves. Not `FINAL` with `WHERE deleted = 0`: old servers may move
/// that filter before the versions collapse and show a deleted device's previous version.
const NEWEST: &str = "SELECT id, argMax(tenant_id, ver), argMax(name, ver), argMax(type, ver),
                             argMax(label, ver), argMax(has_label, ver), argMax(token, ver),
                             argMax(created_time, ver), argMax(deleted, ver) AS is_deleted,
                             max(ver), argMax(additional_info, ver),
                             argMax(has_additional_info, ver)
                      FROM device";

/// An id's newest row as this node last saw it.
#[derive(Clone, Copy, Debug, Default)]
struct Newest {
    ver: u64,
    deleted: bool,
}

impl Newest {
    fn of(row: &DeviceRow) -> Newest {
        Newest {
            ver: row.ver,
            deleted: row.deleted != 0,
        }
    }
}

pub(super) async fn load(
    client: Client,
    versions: Arc<Versions>,
) -> Result<ClickHouseRegistry, StoreError> {
    let rows = client
        .query(&format!("{NEWEST} GROUP BY id HAVING is_deleted = 0"))
        .fetch_all::<DeviceRow>()
        .await
        .map_err(ch_error)?;
    let current = rows
        .iter()
        .map(|r| (DeviceId(r.id), Newest::of(r)))
        .collect();
    let devices: Vec<Device> = rows.iter().map(DeviceRow::to_device).collect();
    Ok(CachedRegistry::new(
        DeviceRows {
            client,
            clock: versions,
            current: Mutex::new(current),
        },
        devices,
    ))
}

/// A UUID as a ClickHouse expression (ours, not a peer's: formatted, not bound).
fn uuid_sql(id: Uuid) -> String {
    format!("toUUID('{}')", id.hyphenated())
}

impl DeviceRows {
    async fn insert(&self, row: &DeviceRow) -> Result<(), StoreError> {
        let mut insert = self
            .client
            .insert::<DeviceRow>("device")
            .await
            .map_err(ch_error)?;
        insert.write(row).await.map_err(ch_error)?;
        insert.end().await.map_err(ch_error)?;
        self.note(row);
        Ok(())
    }

    fn note(&self, row: &DeviceRow) {
        let mut current = self.current.lock();
        let newest = current.entry(DeviceId(row.id)).or_default();
        if row.ver >= newest.ver {
            *newest = Newest::of(row);
        }
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(self.clock.next() / 1_000_000).unwrap_or(i64::MAX)
    }

    /// The newest rows of the ids `filter` selects (deleted ones too), their versions noted.
    async fn newest(&self, filter: &str, bind: &[&str]) -> Result<Vec<DeviceRow>, StoreError> {
        let mut query = self
            .client
            .query(&format!("{NEWEST} WHERE {filter} GROUP BY id"));
        for value in bind {
            query = query.bind(*value);
        }
        let rows = query.fetch_all::<DeviceRow>().await.map_err(ch_error)?;
        for row in &rows {
            self.note(row);
        }
        Ok(rows)
    }

    /// The live device among `rows` that `matches`, the earliest created if several do (a
    /// clash left by a race); `matches` looks at the newest row, not at older names or tokens.
    fn live(rows: &[DeviceRow], matches: impl Fn(&DeviceRow) -> bool) -> Option<Device> {
        rows.iter()
            .filter(|r| r.deleted == 0 && matches(r))
            .min_by_key(|r| (r.created_time, r.id))
            .map(DeviceRow::to_device)
    }

    /// The newest version of `id`, from memory or the table; 0 when it has no row.
    async fn current_version(&self, id: DeviceId) -> Result<u64, StoreError> {
        if let Some(newest) = self.current.lock().get(&id).copied() {
            return Ok(newest.ver);
        }
        let rows = self
            .newest(&format!("id = {}", uuid_sql(id.0)), &[])
            .await?;
        Ok(rows.first().map_or(0, |r| r.ver))
    }
}

#[async_trait]
impl DeviceTable for DeviceRows {
    fn shared(&self) -> bool {
        true
    }

    async fn create(&self, device: Arc<Device>) -> Result<Device, StoreError> {
        // Whatever the table held under this id (a deleted device) was read by the clash
        // check just before; a re-creation goes above it.
        let previous = self
            .current
            .lock()
            .get(&device.id)
            .map(|n| (n.ver, n.deleted));
        let ver = version::creation(previous, self.now_ms(), &device.token.0);
        let started = std::time::Instant::now();
        self.insert(&DeviceRow::new(&device, false, ver)).await?;
        // Another node may have created a device under this id meanwhile: read back which
        // creation won, after giving one that took its version before ours as long to reach
        // the server as ours took.
        tokio::time::sleep(started.elapsed()).await;
        let rows = self
            .newest(&format!("id = {}", uuid_sql(device.id.0)), &[])
            .await?;
        Ok(Self::live(&rows, |_| true).unwrap_or_else(|| (*device).clone()))
    }

    async fn update(&self, device: Arc<Device>) -> Result<(), StoreError> {
        let ver = version::change(self.current_version(device.id).await?, self.now_ms());
        self.insert(&DeviceRow::new(&device, false, ver)).await
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
            additional_info: None,
        };
        let ver = version::change(self.current_version(id).await?, self.now_ms());
        self.insert(&DeviceRow::new(&tombstone, true, ver)).await
    }

    async fn clashes(&self, device: &Device, ids: &[DeviceId]) -> Result<Vec<Device>, StoreError> {
        let mut filter = format!(
            "token = ? OR (tenant_id = {} AND name = ?)",
            uuid_sql(device.tenant_id.0)
        );
        if !ids.is_empty() {
            let list: Vec<String> = ids.iter().map(|id| uuid_sql(id.0)).collect();
            filter.push_str(&format!(" OR id IN ({})", list.join(", ")));
        }
        let rows = self
            .newest(
                &format!("id IN (SELECT id FROM device WHERE {filter})"),
                &[&device.token.0, &device.name],
            )
            .await?;
        Ok(rows
            .iter()
            .filter(|r| {
                r.deleted == 0
                    && (r.token == device.token.0
                        || (r.tenant_id == device.tenant_id.0 && r.name == device.name)
                        || ids.contains(&DeviceId(r.id)))
            })
            .map(DeviceRow::to_device)
            .collect())
    }

    async fn find_by_token(&self, token: &str) -> Result<Option<Device>, StoreError> {
        let rows = self
            .newest("id IN (SELECT id FROM device WHERE token = ?)", &[token])
            .await?;
        Ok(Self::live(&rows, |r| r.token == token))
    }

    async fn find_by_name(
        &self,
        tenant: TenantId,
        name: &str,
    ) -> Result<Option<Device>, StoreError> {
        let filter = format!(
            "id IN (SELECT id FROM device WHERE tenant_id = {} AND name = ?)",
            uuid_sql(tenant.0)
        );
        let rows = self.newest(&filter, &[name]).await?;
        Ok(Self::live(&rows, |r| {
            r.tenant_id == tenant.0 && r.name == name
        }))
    }

    async fn find_by_id(&self, id: DeviceId) -> Result<Option<Device>, StoreError> {
        let rows = self
            .newest(&format!("id = {}", uuid_sql(id.0)), &[])
            .await?;
        Ok(Self::live(&rows, |_| true))
    }
}

#[cfg(test)]
mod tests {
    use actors::model::{AccessToken, Device, DeviceId, TenantId};
    use actors::ports::{DeviceRegistry, RegistryError};
    use harness::servers::ClickHouse;

    use crate::config::{StoreConfig, StoreKind};
    use crate::store::clickhouse::ClickHouseStore;

    fn tenant() -> TenantId {
        TenantId::from_name("nodes")
    }

    fn device(name: &str, token: &str) -> Device {
        Device {
            id: DeviceId::derive(tenant(), name),
            tenant_id: tenant(),
            name: name.into(),
            device_type: "default".into(),
            label: None,
            token: AccessToken(token.into()),
            created_time: actors::model::now_ms(),
            additional_info: None,
        }
    }

    /// A node of a cluster: its own registry over the shared database.
    async fn node(server: &ClickHouse) -> super::ClickHouseRegistry {
        let config = StoreConfig {
            kind: StoreKind::Clickhouse,
            url: server.url(),
            database: "nodes".into(),
            ..StoreConfig::default()
        };
        ClickHouseStore::open(&config).await.expect("opens").1
    }

    async fn token_of(registry: &dyn DeviceRegistry, name: &str) -> Option<String> {
        registry
            .by_name(tenant(), name)
            .await
            .expect("lookup")
            .map(|d| d.token.0.clone())
    }

    /// Node B loaded before node A created a device. B creating the same device (as an
    /// integration does on its first uplink naming it) neither makes a second one nor replaces
    /// its token; B finds it by name, and a node started afterwards sees its real token.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_device_created_on_one_node_is_not_created_again_on_another() {
        let server = ClickHouse::start().expect("clickhouse starts");
        let a = node(&server).await;
        let b = node(&server).await;
        a.save(device("shared", "tok-real"))
            .await
            .expect("created on A");

        let again = b.save(device("shared", "tok-other")).await;
        assert_eq!(again.err(), Some(RegistryError::DuplicateName));
        let again = b.create(device("shared", "tok-other")).await;
        assert_eq!(again.err(), Some(RegistryError::DuplicateName));
        assert_eq!(token_of(&b, "shared").await.as_deref(), Some("tok-real"));

        let c = node(&server).await;
        assert_eq!(token_of(&c, "shared").await.as_deref(), Some("tok-real"));
        assert!(c.by_token("tok-real").await.expect("lookup").is_some());
        assert!(c.by_token("tok-other").await.expect("lookup").is_none());
        assert!(a.by_token("tok-real").await.expect("lookup").is_some());
    }

    /// Two nodes' tables over one database, each with its own clock and memory of versions.
    async fn two_tables(server: &ClickHouse) -> (super::DeviceRows, super::DeviceRows) {
        let config = StoreConfig {
            kind: StoreKind::Clickhouse,
            url: server.url(),
            database: "race".into(),
            ..StoreConfig::default()
        };
        let (store, _) = ClickHouseStore::open(&config).await.expect("opens");
        let table = || super::DeviceRows {
            client: store.client.clone(),
            clock: std::sync::Arc::default(),
            current: parking_lot::Mutex::default(),
        };
        (table(), table())
    }

    /// Two nodes both checked that a device does not exist, then both create it: the table
    /// keeps the first creation, on the node that lost too (which learns the winner when it
    /// reads back); an explicit change wins over a creation that comes later still; after a
    /// deletion, a creation makes the device anew.
    #[tokio::test(flavor = "multi_thread")]
    async fn the_first_creation_wins_and_a_change_wins_over_creations() {
        use std::sync::Arc;

        use crate::store::registry::DeviceTable;

        let server = ClickHouse::start().expect("clickhouse starts");
        let (x, y) = two_tables(&server).await;
        let first = Arc::new(device("race", "tok-x"));
        let late = Arc::new(device("race", "tok-y"));
        assert_eq!(x.create(first.clone()).await.expect("create"), *first);
        assert_eq!(
            y.create(late.clone()).await.expect("create"),
            *first,
            "the later creation lost, and its node reads the winner back"
        );
        let newest = || async {
            let (z, _) = two_tables(&server).await;
            z.find_by_id(first.id)
                .await
                .expect("read")
                .map(|d| d.token.0)
        };
        assert_eq!(newest().await.as_deref(), Some("tok-x"));

        let renamed = Arc::new(Device {
            token: AccessToken("tok-new".into()),
            ..(*first).clone()
        });
        x.update(renamed.clone()).await.expect("update");
        let later_still = Arc::new(device("race", "tok-z"));
        assert_eq!(
            y.create(later_still).await.expect("create"),
            *renamed,
            "a change beats creations"
        );
        assert_eq!(newest().await.as_deref(), Some("tok-new"));

        x.delete(first.id).await.expect("delete");
        assert!(newest().await.is_none());
        let reborn = Arc::new(device("race", "tok-reborn"));
        // What the registry's check before a creation reads: the deletion's version.
        y.clashes(&reborn, &[reborn.id]).await.expect("check");
        assert_eq!(y.create(reborn.clone()).await.expect("create"), *reborn);
        assert_eq!(newest().await.as_deref(), Some("tok-reborn"));
    }
}
