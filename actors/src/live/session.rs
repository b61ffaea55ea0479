//! One WebSocket session's subscriptions (reference §5): commands in, ThingsBoard's messages
//! out. A subscription first gets a snapshot read from storage, then only changes; the session
//! watches a device in the hub before it reads the snapshot, so nothing this node's sink stores
//! after the read is missed (a change stored while the snapshot was read may come once more as
//! an update). For a device another node owns, changes come once the owner has heard of the
//! watch (one trip through the queue); one stored in that window is in a later snapshot or
//! REST read, not in an update.
//!
//! What a user may see is decided by its [`Viewer`], the engine's access-check layer; this
//! module never looks at tenants or customers itself.
//!
//! Bounds: keys per command ([`Limits::max_keys`]), points per key ([`Limits::max_points`]),
//! entities per `ENTITY_DATA` subscription ([`Limits::max_entities`]), and subscriptions per
//! user across its sessions ([`Budget`]; an `ENTITY_DATA` subscription counts one per
//! entity). Past the last one the session is closed (1008), as ThingsBoard does.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Change, Watch};
use crate::model::{AttributeScope, Device, DeviceId, MessageBody};
use crate::ports::{
    Aggregation, Order, Page, PageRequest, RangeQuery, RangeResult, Store, StoreError,
};
use crate::protocol::ws::{
    self, BAD_REQUEST, Cmd, EntityKey, INTERNAL_ERROR, Point, SubCmd, UNAUTHORIZED,
};

/// The access-check layer, for one user: which devices it may see.
#[async_trait]
pub trait Viewer: Send + Sync {
    /// The device, if it exists and this user may see it.
    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, StoreError>;
    /// One page of the devices this user may see that `query` selects, and how many match.
    async fn devices(
        &self,
        query: &DeviceQuery,
        page: &PageRequest,
    ) -> Result<Page<Arc<Device>>, StoreError>;
}

/// Which devices an entity filter selects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceQuery {
    /// Device types (profile names); `None`: any.
    pub types: Option<Vec<String>>,
    /// Case-insensitive name prefix.
    pub name_prefix: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Keys one command may name.
    pub max_keys: usize,
    /// Points per key of a time-series read (`limit`, or aggregation buckets).
    pub max_points: usize,
    /// Entities one `ENTITY_DATA` subscription may cover.
    pub max_entities: usize,
    /// Values one command may read in all: entities x keys x points.
    pub max_values: usize,
}

/// Subscriptions a user may hold across its sessions; each session takes from and gives back
/// to one shared count.
pub struct Budget {
    used: Arc<AtomicUsize>,
    max: usize,
    held: usize,
}

impl Budget {
    pub fn new(used: Arc<AtomicUsize>, max: usize) -> Budget {
        Budget { used, max, held: 0 }
    }

    fn take(&mut self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= self.max)
            })
            .is_ok();
        if taken {
            self.held += n;
        }
        taken
    }

    fn give(&mut self, n: usize) {
        let n = n.min(self.held);
        self.held -= n;
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.used.fetch_sub(self.held, Ordering::AcqRel);
    }
}

/// The session is to close with this WebSocket code and reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closing {
    pub code: u16,
    pub reason: &'static str,
}

const SUBSCRIPTIONS_EXCEEDED: Closing = Closing {
    code: 1008,
    reason: "Max subscriptions limit reached!",
};

struct TsSub {
    device: DeviceId,
    keys: Option<HashSet<String>>,
    /// `scope: LATEST_TELEMETRY`: a point older than the last one sent for its key is not sent.
    latest_only: bool,
    last: HashMap<String, i64>,
}

struct AttrSub {
    device: DeviceId,
    scope: Option<AttributeScope>,
    keys: Option<HashSet<String>>,
}

struct EntitySub {
    members: HashSet<DeviceId>,
    /// Keys of `latestCmd`, by their key type.
    latest: Vec<EntityKey>,
    /// Keys of `tsCmd`.
    series: HashSet<String>,
}

/// One WebSocket session's subscriptions.
pub struct Session {
    viewer: Arc<dyn Viewer>,
    store: Arc<dyn Store>,
    watch: Watch,
    limits: Limits,
    budget: Budget,
    ts: HashMap<i32, TsSub>,
    attrs: HashMap<i32, AttrSub>,
    entities: HashMap<i32, EntitySub>,
}

/// An answer to one command: messages, or the reason to close the session.
type Outcome = Result<(), Closing>;

impl Session {
    pub fn new(
        viewer: Arc<dyn Viewer>,
        store: Arc<dyn Store>,
        watch: Watch,
        limits: Limits,
        budget: Budget,
    ) -> Session {
        Session {
            viewer,
            store,
            watch,
            limits,
            budget,
            ts: HashMap::new(),
            attrs: HashMap::new(),
            entities: HashMap::new(),
        }
    }

    /// The watch list, for the session's task to wait on overflow.
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    /// Runs one command, appending what the client is to get to `out`.
    pub async fn command(&mut self, cmd: Cmd, now: i64, out: &mut Vec<String>) -> Outcome {
        match cmd {
            Cmd::Timeseries(c) => self.timeseries(c, now, out).await,
            Cmd::Attributes(c) => self.attributes(c, out).await,
            Cmd::History(c) => {
                self.history(c, now, out).await;
                Ok(())
            }
            Cmd::EntityData(c) => self.entity_data(*c, now, out).await,
            Cmd::EntityDataUnsubscribe(id) => {
                self.drop_entity_sub(id);
                Ok(())
            }
            Cmd::EntityCount(c) => {
                out.push(
                    self.entity_count(c.cmd_id, c.query.map(|q| q.entity_filter))
                        .await,
                );
                Ok(())
            }
            Cmd::AlarmData(id) => {
                out.push(ws::empty_alarm_page(id));
                Ok(())
            }
            Cmd::AlarmCount(id) => {
                out.push(ws::count(id, "ALARM_COUNT", 0));
                Ok(())
            }
            Cmd::AlarmStatus(id) => {
                out.push(
                    serde_json::json!({"cmdId": id, "errorCode": 0, "errorMsg": null,
                        "cmdUpdateType": "ALARM_STATUS", "active": false})
                    .to_string(),
                );
                Ok(())
            }
            Cmd::Notifications(id) => {
                out.push(ws::notifications(id));
                Ok(())
            }
            Cmd::NotificationsCount(id) => {
                out.push(ws::notifications_count(id));
                Ok(())
            }
            Cmd::EntityCountUnsubscribe(_) | Cmd::Ignored => Ok(()),
        }
    }

    /// Subscriptions held now (an `ENTITY_DATA` one counts one per entity).
    pub fn subscriptions(&self) -> usize {
        self.budget.held
    }

    /// Checks a legacy command's id and entity, as ThingsBoard does, and finds the device.
    async fn target(&self, c: &SubCmd) -> Result<Arc<Device>, String> {
        if c.cmd_id < 0 {
            return Err(ws::data_error(
                c.cmd_id,
                BAD_REQUEST,
                "Cmd id is negative value!",
            ));
        }
        let id = c.entity_id.as_deref().unwrap_or("").trim();
        if id.is_empty() {
            return Err(ws::data_error(c.cmd_id, BAD_REQUEST, "Device id is empty!"));
        }
        let kind = c.entity_type.as_deref().unwrap_or("DEVICE");
        if kind != "DEVICE" {
            return Err(ws::data_error(
                c.cmd_id,
                BAD_REQUEST,
                &format!("Entity type {} is not supported", shown(kind)),
            ));
        }
        let Ok(uuid) = uuid::Uuid::parse_str(id) else {
            return Err(ws::data_error(c.cmd_id, BAD_REQUEST, "Invalid entity id!"));
        };
        match self.viewer.device(DeviceId(uuid)).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(ws::data_error(c.cmd_id, UNAUTHORIZED, "Unauthorized")),
            Err(_) => Err(ws::data_error(
                c.cmd_id,
                INTERNAL_ERROR,
                "Failed to fetch data!",
            )),
        }
    }

    fn keys(&self, c: &SubCmd) -> Result<Option<Vec<String>>, String> {
        let keys = c.keys.list();
        if keys
            .as_ref()
            .is_some_and(|k| k.len() > self.limits.max_keys)
        {
            return Err(ws::data_error(
                c.cmd_id,
                BAD_REQUEST,
                &format!("Too many keys: at most {}", self.limits.max_keys),
            ));
        }
        Ok(keys)
    }

    /// An unsubscribe: with an entity id, the command's own subscription; without one, every
    /// subscription of the session (ThingsBoard's rule).
    fn unsubscribe(&mut self, c: &SubCmd, attributes: bool) {
        if c.entity_id.as_deref().is_none_or(|e| e.trim().is_empty()) {
            self.drop_all();
        } else if attributes {
            self.drop_attr_sub(c.cmd_id);
        } else {
            self.drop_ts_sub(c.cmd_id);
        }
    }

    /// A subscribe command's device and keys; `None` when the command was an unsubscribe or
    /// was answered with an error.
    async fn opening(
        &mut self,
        c: &SubCmd,
        attributes: bool,
        out: &mut Vec<String>,
    ) -> Option<(Arc<Device>, Option<Vec<String>>)> {
        if c.unsubscribe {
            self.unsubscribe(c, attributes);
            return None;
        }
        let found = match self.target(c).await {
            Ok(device) => self.keys(c).map(|keys| (device, keys)),
            Err(e) => Err(e),
        };
        match found {
            Ok(found) => Some(found),
            Err(e) => {
                out.push(e);
                None
            }
        }
    }

    async fn timeseries(&mut self, c: SubCmd, now: i64, out: &mut Vec<String>) -> Outcome {
        let Some((device, keys)) = self.opening(&c, false, out).await else {
            return Ok(());
        };
        // The new watch first: a subscription that replaces one of the same device keeps the
        // device watched throughout.
        self.watch.add(&device);
        self.drop_ts_sub(c.cmd_id);
        if !self.budget.take(1) {
            self.watch.remove(device.id);
            return Err(SUBSCRIPTIONS_EXCEEDED);
        }
        let mut sub = TsSub {
            device: device.id,
            keys: keys.as_ref().map(|k| k.iter().cloned().collect()),
            latest_only: c.scope.as_deref() == Some("LATEST_TELEMETRY"),
            last: HashMap::new(),
        };
        let snapshot = match c.time_window.filter(|w| *w > 0) {
            Some(window) => {
                let start = c.start_ts.unwrap_or(now.saturating_sub(window));
                let query =
                    match self.range(c.cmd_id, keys, start, start.saturating_add(window), &c) {
                        Ok(q) => q,
                        Err(e) => {
                            self.watch.remove(device.id);
                            self.budget.give(1);
                            return emit(out, e);
                        }
                    };
                self.store.range(device.id, &query).await.map(series_points)
            }
            None => self
                .store
                .latest(device.id, keys.as_deref())
                .await
                .map(|values| {
                    values
                        .into_iter()
                        .map(|l| {
                            let point = match l.value {
                                Some(v) => (l.ts, Some(v.to_tb_string())),
                                None => (now, None),
                            };
                            (l.key, vec![point])
                        })
                        .collect()
                }),
        };
        match snapshot {
            Ok(data) => {
                for (key, points) in &data {
                    if let Some(max) = points.iter().filter(|p| p.1.is_some()).map(|p| p.0).max() {
                        sub.last.insert(key.clone(), max);
                    }
                }
                out.push(ws::data_update(c.cmd_id, &data));
                self.ts.insert(c.cmd_id, sub);
            }
            Err(e) => {
                self.watch.remove(device.id);
                self.budget.give(1);
                out.push(fetch_failed(c.cmd_id, &e));
            }
        }
        Ok(())
    }

    async fn attributes(&mut self, c: SubCmd, out: &mut Vec<String>) -> Outcome {
        let Some((device, keys)) = self.opening(&c, true, out).await else {
            return Ok(());
        };
        let scope = match c.scope.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => match AttributeScope::parse(s) {
                Some(scope) => Some(scope),
                None => {
                    return emit(
                        out,
                        ws::data_error(
                            c.cmd_id,
                            BAD_REQUEST,
                            &format!("Invalid attribute scope: {}", shown(s)),
                        ),
                    );
                }
            },
        };
        self.watch.add(&device);
        self.drop_attr_sub(c.cmd_id);
        if !self.budget.take(1) {
            self.watch.remove(device.id);
            return Err(SUBSCRIPTIONS_EXCEEDED);
        }
        match self
            .store
            .attributes(device.id, scope, keys.as_deref())
            .await
        {
            Ok(values) => {
                let mut data: BTreeMap<String, Vec<Point>> = BTreeMap::new();
                for a in values {
                    data.entry(a.key)
                        .or_default()
                        .push((a.last_update_ts, Some(a.value.to_tb_string())));
                }
                out.push(ws::data_update(c.cmd_id, &data));
                self.attrs.insert(
                    c.cmd_id,
                    AttrSub {
                        device: device.id,
                        scope,
                        keys: keys.map(|k| k.into_iter().collect()),
                    },
                );
            }
            Err(e) => {
                self.watch.remove(device.id);
                self.budget.give(1);
                out.push(fetch_failed(c.cmd_id, &e));
            }
        }
        Ok(())
    }

    /// `historyCmds` / `TIMESERIES_HISTORY`: one answer, no subscription.
    async fn history(&mut self, c: SubCmd, now: i64, out: &mut Vec<String>) {
        let device = match self.target(&c).await {
            Ok(d) => d,
            Err(e) => return out.push(e),
        };
        let keys = match self.keys(&c) {
            Ok(Some(k)) => k,
            Ok(None) => return out.push(ws::data_error(c.cmd_id, BAD_REQUEST, "Keys are empty!")),
            Err(e) => return out.push(e),
        };
        let start = c.start_ts.unwrap_or(0);
        let end = c.end_ts.unwrap_or(now);
        let query = match self.range(c.cmd_id, Some(keys), start, end, &c) {
            Ok(q) => q,
            Err(e) => return out.push(e),
        };
        match self.store.range(device.id, &query).await {
            Ok(result) => out.push(ws::data_update(c.cmd_id, &series_points(result))),
            Err(e) => out.push(fetch_failed(c.cmd_id, &e)),
        }
    }

    /// A range read in ThingsBoard's defaults (newest first, 100 points), within the limits.
    fn range(
        &self,
        cmd_id: i32,
        keys: Option<Vec<String>>,
        start: i64,
        end: i64,
        c: &SubCmd,
    ) -> Result<RangeQuery, String> {
        range_query(
            &self.limits,
            keys,
            start,
            end,
            c.interval,
            c.limit,
            c.agg.as_deref(),
        )
        .map_err(|e| ws::data_error(cmd_id, BAD_REQUEST, &e))
    }

    fn drop_ts_sub(&mut self, id: i32) {
        if let Some(sub) = self.ts.remove(&id) {
            self.watch.remove(sub.device);
            self.budget.give(1);
        }
    }

    fn drop_attr_sub(&mut self, id: i32) {
        if let Some(sub) = self.attrs.remove(&id) {
            self.watch.remove(sub.device);
            self.budget.give(1);
        }
    }

    fn drop_entity_sub(&mut self, id: i32) {
        if let Some(sub) = self.entities.remove(&id) {
            for d in &sub.members {
                self.watch.remove(*d);
            }
            self.budget.give(sub.members.len());
        }
    }

    fn drop_all(&mut self) {
        let ts: Vec<i32> = self.ts.keys().copied().collect();
        let attrs: Vec<i32> = self.attrs.keys().copied().collect();
        let entities: Vec<i32> = self.entities.keys().copied().collect();
        ts.into_iter().for_each(|id| self.drop_ts_sub(id));
        attrs.into_iter().for_each(|id| self.drop_attr_sub(id));
        entities.into_iter().for_each(|id| self.drop_entity_sub(id));
    }

    /// What a stored change means for each subscription, appended to `out`.
    pub fn change(&mut self, change: &Change, out: &mut Vec<String>) {
        let device = change.device();
        if !self.watch.watches(device) {
            return;
        }
        match change {
            Change::Stored(m) => match &m.body {
                MessageBody::Telemetry(records) => {
                    for (id, sub) in self.ts.iter_mut().filter(|(_, s)| s.device == device) {
                        let mut data: BTreeMap<String, Vec<Point>> = BTreeMap::new();
                        for r in records {
                            for e in &r.entries {
                                if sub.keys.as_ref().is_some_and(|k| !k.contains(&e.key)) {
                                    continue;
                                }
                                if sub.latest_only {
                                    match sub.last.entry(e.key.clone()) {
                                        Entry::Occupied(last) if *last.get() > r.ts => continue,
                                        Entry::Occupied(mut last) => *last.get_mut() = r.ts,
                                        Entry::Vacant(v) => {
                                            v.insert(r.ts);
                                        }
                                    }
                                }
                                data.entry(e.key.clone())
                                    .or_default()
                                    .push((r.ts, Some(e.value.to_tb_string())));
                            }
                        }
                        if !data.is_empty() {
                            out.push(ws::data_update(*id, &data));
                        }
                    }
                    let max = self.limits.max_entities;
                    for (id, sub) in &self.entities {
                        if !sub.members.contains(&device) {
                            continue;
                        }
                        let mut latest = Map::new();
                        let mut series = Map::new();
                        for r in records {
                            for e in &r.entries {
                                let value = e.value.to_tb_string();
                                if sub
                                    .latest
                                    .iter()
                                    .any(|k| k.kind == "TIME_SERIES" && k.key == e.key)
                                {
                                    newest(group(&mut latest, "TIME_SERIES"), &e.key, r.ts, &value);
                                }
                                if sub.series.contains(&e.key)
                                    && let Value::Array(points) = series
                                        .entry(e.key.clone())
                                        .or_insert_with(|| Value::Array(Vec::new()))
                                {
                                    points.push(ws::ts_value(r.ts, Some(&value)));
                                }
                            }
                        }
                        if !latest.is_empty() || !series.is_empty() {
                            let entity =
                                ws::entity_data("DEVICE", &device.0.to_string(), latest, series);
                            out.push(ws::entity_data_update(*id, max, vec![entity]));
                        }
                    }
                }
                MessageBody::Attributes { scope, entries } => {
                    let values: Vec<(&str, Option<String>)> = entries
                        .iter()
                        .map(|e| (e.key.as_str(), Some(e.value.to_tb_string())))
                        .collect();
                    self.attributes_changed(device, *scope, m.received_ts, &values, out);
                }
                MessageBody::Device(_) => {}
            },
            Change::AttributesDeleted { scope, keys, .. } => {
                let values: Vec<(&str, Option<String>)> = keys
                    .iter()
                    .map(|k| (k.as_str(), Some(String::new())))
                    .collect();
                self.attributes_changed(device, *scope, 0, &values, out);
            }
        }
    }

    /// Attribute values (or deletions, as `""` at ts 0) for the subscriptions that want them.
    fn attributes_changed(
        &self,
        device: DeviceId,
        scope: AttributeScope,
        ts: i64,
        values: &[(&str, Option<String>)],
        out: &mut Vec<String>,
    ) {
        for (id, sub) in self.attrs.iter().filter(|(_, s)| s.device == device) {
            if sub.scope.is_some_and(|s| s != scope) {
                continue;
            }
            let data: BTreeMap<String, Vec<Point>> = values
                .iter()
                .filter(|(k, _)| sub.keys.as_ref().is_none_or(|keys| keys.contains(*k)))
                .map(|(k, v)| ((*k).to_owned(), vec![(ts, v.clone())]))
                .collect();
            if !data.is_empty() {
                out.push(ws::data_update(*id, &data));
            }
        }
        for (id, sub) in self.entities.iter() {
            if !sub.members.contains(&device) {
                continue;
            }
            let mut latest = Map::new();
            for k in &sub.latest {
                let Some(want) = attribute_kind(&k.kind) else {
                    continue;
                };
                if want.is_some_and(|w| w != scope) {
                    continue;
                }
                if let Some((_, v)) = values.iter().find(|(key, _)| *key == k.key) {
                    group(&mut latest, &k.kind).insert(
                        k.key.clone(),
                        ws::ts_value(ts, Some(v.as_deref().unwrap_or(""))),
                    );
                }
            }
            if !latest.is_empty() {
                let entity = ws::entity_data("DEVICE", &device.0.to_string(), latest, Map::new());
                out.push(ws::entity_data_update(
                    *id,
                    self.limits.max_entities,
                    vec![entity],
                ));
            }
        }
    }
}

fn emit(out: &mut Vec<String>, message: String) -> Outcome {
    out.push(message);
    Ok(())
}

/// At most 64 characters of a client's text, for an error message.
fn shown(s: &str) -> String {
    s.chars().take(64).collect()
}

fn fetch_message(e: &StoreError) -> String {
    match e {
        StoreError::InvalidQuery(m) => m.clone(),
        _ => "Failed to fetch data!".to_owned(),
    }
}

fn fetch_failed(cmd_id: i32, e: &StoreError) -> String {
    let code = if matches!(e, StoreError::InvalidQuery(_)) {
        BAD_REQUEST
    } else {
        INTERNAL_ERROR
    };
    ws::data_error(cmd_id, code, &fetch_message(e))
}

/// The attribute scope an entity key type reads: `Some(None)` for `ATTRIBUTE` (any scope),
/// `None` for a key type that is not an attribute.
fn attribute_kind(kind: &str) -> Option<Option<AttributeScope>> {
    Some(match kind {
        "ATTRIBUTE" => None,
        "CLIENT_ATTRIBUTE" => Some(AttributeScope::Client),
        "SHARED_ATTRIBUTE" => Some(AttributeScope::Shared),
        "SERVER_ATTRIBUTE" => Some(AttributeScope::Server),
        _ => return None,
    })
}

fn group<'a>(latest: &'a mut Map<String, Value>, kind: &str) -> &'a mut Map<String, Value> {
    let v = latest
        .entry(kind.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// Keeps the newest point of a key in a `latest` group.
fn newest(group: &mut Map<String, Value>, key: &str, ts: i64, value: &str) {
    let older = group
        .get(key)
        .and_then(|v| v.get("ts"))
        .and_then(Value::as_i64)
        .is_none_or(|t| t <= ts);
    if older {
        group.insert(key.to_owned(), ws::ts_value(ts, Some(value)));
    }
}

fn series_points(result: RangeResult) -> BTreeMap<String, Vec<Point>> {
    result
        .into_iter()
        .map(|(key, points)| {
            let list = points
                .into_iter()
                .map(|p| (p.ts, Some(p.value.to_tb_string())))
                .collect();
            (key, list)
        })
        .collect()
}

/// A range read: ThingsBoard's defaults (100 points, newest first), capped by the limits.
fn range_query(
    limits: &Limits,
    keys: Option<Vec<String>>,
    start: i64,
    end: i64,
    interval: Option<i64>,
    limit: Option<i64>,
    agg: Option<&str>,
) -> Result<RangeQuery, String> {
    if end < start {
        return Err("endTs must not be before startTs".to_owned());
    }
    let Some(span) = end.checked_sub(start) else {
        return Err("The time range is too long".to_owned());
    };
    let agg = match agg.filter(|a| !a.is_empty()) {
        None => Aggregation::None,
        Some(a) => Aggregation::parse(a).ok_or_else(|| format!("Invalid agg: {}", shown(a)))?,
    };
    let interval = interval.unwrap_or(0).max(0);
    if agg != Aggregation::None && interval > 0 {
        let buckets = span / interval;
        if usize::try_from(buckets).map_or(true, |b| b > limits.max_points) {
            return Err(format!(
                "Too many intervals: at most {} per key",
                limits.max_points
            ));
        }
    }
    let limit = usize::try_from(limit.unwrap_or(0)).unwrap_or(0);
    let limit = if limit == 0 { 100 } else { limit }.min(limits.max_points);
    if keys
        .as_ref()
        .is_some_and(|k| k.len().saturating_mul(limit) > limits.max_values)
    {
        return Err(format!(
            "Too many points: keys x limit may be at most {}",
            limits.max_values
        ));
    }
    Ok(RangeQuery {
        keys,
        start_ts: start,
        end_ts: end,
        interval,
        limit,
        agg,
        order: Order::Desc,
    })
}

mod entity;
#[cfg(test)]
mod tests;
