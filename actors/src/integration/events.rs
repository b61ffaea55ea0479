//! Debug events of integrations and converters, in ThingsBoard's shape: what came in, what the
//! converter made of it, and what went wrong. Kept in memory and bounded in number per entity,
//! in age, and in bytes (each text of an event, each entity's events, all events), so debug
//! mode left on by mistake costs a fixed amount of memory whatever the payloads.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use parking_lot::Mutex;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::metrics::{DEBUG_EVENTS_DROPPED, DEBUG_EVENTS_TRUNCATED};
use crate::model::{TenantId, now_ms};

/// What one event costs besides its texts (ids, times, the JSON object, the queue slot): a
/// rough figure, so that many small events count too.
const EVENT_OVERHEAD: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// Every message through an integration with debug on.
    DebugIntegration,
    /// Every run of a converter with debug on: In, Out, Error.
    DebugConverter,
    /// A message that failed, recorded whatever the debug flag.
    Error,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::DebugIntegration => "DEBUG_INTEGRATION",
            EventKind::DebugConverter => "DEBUG_CONVERTER",
            EventKind::Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        match s {
            "DEBUG_INTEGRATION" => Some(EventKind::DebugIntegration),
            "DEBUG_CONVERTER" => Some(EventKind::DebugConverter),
            "ERROR" => Some(EventKind::Error),
            _ => None,
        }
    }
}

/// `INTEGRATION` or `CONVERTER`, as ThingsBoard names entity types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntityKind {
    Integration,
    Converter,
}

impl EntityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::Integration => "INTEGRATION",
            EntityKind::Converter => "CONVERTER",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: Uuid,
    pub created_time: i64,
    pub tenant_id: TenantId,
    pub entity: EntityKind,
    pub entity_id: Uuid,
    pub kind: EventKind,
    /// ThingsBoard's event body: `type`, `in`/`out`/`metadata`/`error` for converters,
    /// `message`/`status`/`error` for integrations.
    pub body: Value,
}

impl Event {
    pub fn to_json(&self, server: &str) -> Value {
        let mut body = self.body.clone();
        if let Some(map) = body.as_object_mut() {
            map.insert("server".into(), Value::String(server.to_owned()));
        }
        json!({
            "id": {"id": self.id},
            "createdTime": self.created_time,
            "tenantId": {"entityType": "TENANT", "id": self.tenant_id.0},
            "entityId": {"entityType": self.entity.as_str(), "id": self.entity_id},
            "type": self.kind.as_str(),
            "uid": self.id,
            "body": body,
        })
    }
}

/// A page of events, newest first unless asked otherwise.
pub struct EventQuery {
    pub kind: Option<EventKind>,
    pub start_ts: Option<i64>,
    pub end_ts: Option<i64>,
    pub page_size: usize,
    pub page: usize,
    pub ascending: bool,
}

/// Metadata names whose values are credentials (HTTP headers), shown as [`REDACTED`] in events.
const SECRET_NAMES: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-authorization",
    "cookie",
    "set-cookie",
];
/// Parts of a metadata name that mark its value as a credential wherever they appear.
const SECRET_PARTS: &[&str] = &[
    "token", "secret", "password", "api-key", "apikey", "api_key",
];
/// What an event shows for a credential.
pub const REDACTED: &str = "[redacted]";

/// Whether a metadata entry's value is a credential that events must not show.
pub fn is_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_NAMES.contains(&name.as_str()) || SECRET_PARTS.iter().any(|p| name.contains(p))
}

/// Metadata as events show it: credentials (an HTTP integration's `Authorization`, `Cookie`
/// and similar headers, anything named like a token or password) replaced by [`REDACTED`]. The
/// converter itself still gets them, as ThingsBoard's does.
pub fn shown_metadata(metadata: &std::collections::BTreeMap<String, String>) -> String {
    let shown: std::collections::BTreeMap<&str, &str> = metadata
        .iter()
        .map(|(k, v)| {
            let v = if is_secret(k) { REDACTED } else { v.as_str() };
            (k.as_str(), v)
        })
        .collect();
    serde_json::to_string(&shown).unwrap_or_default()
}

/// How many debug events are kept, and how large.
#[derive(Clone, Debug)]
pub struct EventLimits {
    /// Events kept per integration or converter; the oldest go first.
    pub per_entity: usize,
    /// Events older than this are dropped.
    pub ttl: Duration,
    /// Longest text of an event (`in`, `out`, `metadata`, `message`, `error`), in bytes; a
    /// longer one is cut, and the event says so.
    pub max_text_size: usize,
    /// Bytes of events kept per integration or converter; the oldest go first.
    pub max_bytes_per_entity: usize,
    /// Bytes of events kept in all; the oldest of any entity go first.
    pub max_bytes: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            per_entity: 1000,
            ttl: Duration::from_secs(86_400),
            max_text_size: 16 * 1024,
            max_bytes_per_entity: 4 * 1024 * 1024,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// An event with what it is counted as.
struct Kept {
    event: Arc<Event>,
    bytes: usize,
    /// Order of recording across all entities: events of the same millisecond still have an
    /// oldest, so eviction is deterministic.
    seq: u64,
}

#[derive(Default)]
struct Entity {
    events: VecDeque<Kept>,
    bytes: usize,
}

#[derive(Default)]
struct Store {
    by_entity: HashMap<Uuid, Entity>,
    bytes: usize,
    next_seq: u64,
}

impl Store {
    /// Drops the front event of `id`, if any, and counts it under `reason`.
    fn pop_front(&mut self, id: Uuid, reason: Option<&'static str>) -> bool {
        let Some(entity) = self.by_entity.get_mut(&id) else {
            return false;
        };
        let Some(kept) = entity.events.pop_front() else {
            return false;
        };
        entity.bytes -= kept.bytes;
        self.bytes -= kept.bytes;
        if let Some(reason) = reason {
            counter!(DEBUG_EVENTS_DROPPED, "reason" => reason).increment(1);
        }
        true
    }

    /// The entity whose oldest event is the oldest of all.
    fn oldest_entity(&self) -> Option<Uuid> {
        self.by_entity
            .iter()
            .filter_map(|(id, e)| e.events.front().map(|k| (k.seq, *id)))
            .min()
            .map(|(_, id)| id)
    }
}

pub struct DebugEvents {
    limits: EventLimits,
    store: Mutex<Store>,
}

/// Cuts `text` to at most `max` bytes (at a character boundary), saying so at its end.
fn cut(text: &mut String, max: usize) -> bool {
    if text.len() <= max {
        return false;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // A new string: truncating in place would keep the whole text's allocation.
    *text = format!("{}… [truncated: {} bytes in all]", &text[..end], text.len());
    true
}

/// Cuts the body's long texts; returns whether any was cut and the bytes the body holds.
fn shorten(body: &mut Value, max: usize) -> (bool, usize) {
    let mut truncated = false;
    let mut bytes = 0;
    if let Some(map) = body.as_object_mut() {
        for (key, value) in map.iter_mut() {
            bytes += key.len();
            match value {
                Value::String(text) => {
                    truncated |= cut(text, max);
                    bytes += text.len();
                }
                // Bodies are flat objects of texts; anything else is small or shown as text.
                other => {
                    let mut text = other.to_string();
                    if cut(&mut text, max) {
                        truncated = true;
                        *other = Value::String(text);
                    }
                    bytes += other.to_string().len();
                }
            }
        }
        if truncated {
            map.insert("truncated".into(), Value::Bool(true));
        }
    }
    (truncated, bytes)
}

impl DebugEvents {
    /// At most `per_entity` events per integration or converter, none older than `ttl`, and
    /// the default byte limits.
    pub fn new(per_entity: usize, ttl: Duration) -> DebugEvents {
        DebugEvents::with_limits(EventLimits {
            per_entity,
            ttl,
            ..EventLimits::default()
        })
    }

    pub fn with_limits(limits: EventLimits) -> DebugEvents {
        DebugEvents {
            limits: EventLimits {
                per_entity: limits.per_entity.max(1),
                ..limits
            },
            store: Mutex::new(Store::default()),
        }
    }

    fn oldest_kept(&self) -> i64 {
        now_ms().saturating_sub(i64::try_from(self.limits.ttl.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn record(
        &self,
        tenant_id: TenantId,
        entity: EntityKind,
        entity_id: Uuid,
        kind: EventKind,
        mut body: Value,
    ) {
        let (truncated, body_bytes) = shorten(&mut body, self.limits.max_text_size);
        if truncated {
            counter!(DEBUG_EVENTS_TRUNCATED).increment(1);
        }
        let bytes = body_bytes + EVENT_OVERHEAD;
        let event = Arc::new(Event {
            id: Uuid::new_v4(),
            created_time: now_ms(),
            tenant_id,
            entity,
            entity_id,
            kind,
            body,
        });
        let oldest = self.oldest_kept();
        let limits = &self.limits;
        let mut store = self.store.lock();
        while let Some(e) = store.by_entity.get(&entity_id) {
            let Some(front) = e.events.front() else {
                break;
            };
            let reason = if front.event.created_time < oldest {
                None
            } else if e.events.len() >= limits.per_entity {
                Some("count")
            } else if e.bytes + bytes > limits.max_bytes_per_entity {
                Some("entity_bytes")
            } else {
                break;
            };
            store.pop_front(entity_id, reason);
        }
        while store.bytes + bytes > limits.max_bytes {
            let Some(id) = store.oldest_entity() else {
                break;
            };
            store.pop_front(id, Some("total_bytes"));
        }
        store.bytes += bytes;
        let seq = store.next_seq;
        store.next_seq += 1;
        let e = store.by_entity.entry(entity_id).or_default();
        e.bytes += bytes;
        e.events.push_back(Kept { event, bytes, seq });
    }

    /// Bytes of the events kept, by their count: of one entity, and in all.
    pub fn bytes(&self, entity_id: Uuid) -> (usize, usize) {
        let store = self.store.lock();
        (
            store.by_entity.get(&entity_id).map_or(0, |e| e.bytes),
            store.bytes,
        )
    }

    /// The events of one entity that match, and how many match in all.
    pub fn query(&self, entity_id: Uuid, q: &EventQuery) -> (Vec<Arc<Event>>, usize) {
        let oldest = self.oldest_kept().max(q.start_ts.unwrap_or(i64::MIN));
        let end = q.end_ts.unwrap_or(i64::MAX);
        let store = self.store.lock();
        let Some(entity) = store.by_entity.get(&entity_id) else {
            return (Vec::new(), 0);
        };
        let events = entity.events.iter().map(|k| &k.event);
        let matching = |e: &&Arc<Event>| {
            e.created_time >= oldest && e.created_time <= end && q.kind.is_none_or(|k| k == e.kind)
        };
        let total = events.clone().filter(matching).count();
        let skip = q.page.saturating_mul(q.page_size);
        let page: Vec<_> = if q.ascending {
            events
                .filter(matching)
                .skip(skip)
                .take(q.page_size)
                .cloned()
                .collect()
        } else {
            events
                .rev()
                .filter(matching)
                .skip(skip)
                .take(q.page_size)
                .cloned()
                .collect()
        };
        (page, total)
    }

    /// Drops an entity's events (it was deleted).
    pub fn forget(&self, entity_id: Uuid) {
        let mut store = self.store.lock();
        if let Some(e) = store.by_entity.remove(&entity_id) {
            store.bytes -= e.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(kind: Option<EventKind>) -> EventQuery {
        EventQuery {
            kind,
            start_ts: None,
            end_ts: None,
            page_size: 10,
            page: 0,
            ascending: false,
        }
    }

    #[test]
    fn keeps_the_newest_events_per_entity() {
        let events = DebugEvents::new(3, Duration::from_secs(60));
        let (tenant, id) = (TenantId::from_name("t"), Uuid::new_v4());
        for n in 0..5 {
            events.record(
                tenant,
                EntityKind::Integration,
                id,
                EventKind::DebugIntegration,
                json!({"n": n}),
            );
        }
        let (page, total) = events.query(id, &query(None));
        assert_eq!(total, 3);
        let ns: Vec<_> = page.iter().map(|e| e.body["n"].clone()).collect();
        assert_eq!(ns, vec![json!(4), json!(3), json!(2)], "newest first");
    }

    #[test]
    fn filters_by_kind_and_pages() {
        let events = DebugEvents::new(100, Duration::from_secs(60));
        let (tenant, id) = (TenantId::from_name("t"), Uuid::new_v4());
        for n in 0..6 {
            let kind = if n % 2 == 0 {
                EventKind::Error
            } else {
                EventKind::DebugConverter
            };
            events.record(tenant, EntityKind::Converter, id, kind, json!({"n": n}));
        }
        let (page, total) = events.query(
            id,
            &EventQuery {
                page_size: 2,
                page: 1,
                ascending: true,
                ..query(Some(EventKind::Error))
            },
        );
        assert_eq!(total, 3);
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].body["n"], json!(4));
        events.forget(id);
        assert_eq!(events.query(id, &query(None)).1, 0);
    }

    #[test]
    fn long_texts_are_cut_and_the_event_says_so() {
        let events = DebugEvents::with_limits(EventLimits {
            max_text_size: 100,
            ..EventLimits::default()
        });
        let (tenant, id) = (TenantId::from_name("t"), Uuid::new_v4());
        let long = "é".repeat(1000);
        events.record(
            tenant,
            EntityKind::Converter,
            id,
            EventKind::DebugConverter,
            json!({"in": long, "out": "short", "error": ""}),
        );
        let (page, _) = events.query(id, &query(None));
        let body = &page[0].body;
        let shown = body["in"].as_str().expect("text");
        assert!(
            shown.starts_with(&"é".repeat(50)) && shown.ends_with("[truncated: 2000 bytes in all]"),
            "{shown}"
        );
        assert!(shown.len() < 200, "{} bytes", shown.len());
        assert_eq!(body["out"], "short");
        assert_eq!(body["truncated"], true);
    }

    #[test]
    fn events_are_bounded_in_bytes_per_entity_and_in_all() {
        let events = DebugEvents::with_limits(EventLimits {
            per_entity: 1000,
            max_text_size: 10_000,
            max_bytes_per_entity: 50_000,
            max_bytes: 120_000,
            ..EventLimits::default()
        });
        let tenant = TenantId::from_name("t");
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let payload = "x".repeat(5_000);
        for id in &ids {
            for n in 0..100 {
                events.record(
                    tenant,
                    EntityKind::Integration,
                    *id,
                    EventKind::DebugIntegration,
                    json!({"message": payload, "n": n}),
                );
                let (entity, all) = events.bytes(*id);
                assert!(entity <= 50_000, "{entity} bytes for one entity");
                assert!(all <= 120_000, "{all} bytes in all");
            }
        }
        // The newest events of the last entity are kept, the oldest entities gave way.
        let (page, total) = events.query(ids[3], &query(None));
        assert_eq!(page[0].body["n"], json!(99));
        assert!(total >= 9, "{total} events of 5 KB in 50 KB");
        assert_eq!(events.query(ids[0], &query(None)).1, 0);
        events.forget(ids[3]);
        let (_, all) = events.bytes(ids[3]);
        assert!(
            all <= 120_000 - 45_000,
            "forgotten events free their bytes: {all}"
        );
    }

    #[test]
    fn credentials_in_metadata_are_not_shown() {
        let metadata: std::collections::BTreeMap<String, String> = [
            ("authorization", "Bearer abc"),
            ("X-Authorization", "Bearer def"),
            ("cookie", "session=1"),
            ("set-cookie", "session=2"),
            ("proxy-authorization", "Basic xyz"),
            ("x-api-key", "k"),
            ("access_token", "t"),
            ("content-type", "application/json"),
            ("x-site", "plant-7"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let shown: Value = serde_json::from_str(&shown_metadata(&metadata)).expect("json");
        for secret in [
            "authorization",
            "X-Authorization",
            "cookie",
            "set-cookie",
            "proxy-authorization",
            "x-api-key",
            "access_token",
        ] {
            assert_eq!(shown[secret], REDACTED, "{secret}");
        }
        assert_eq!(shown["content-type"], "application/json");
        assert_eq!(shown["x-site"], "plant-7");
    }

    #[test]
    fn expired_events_are_not_shown() {
        let events = DebugEvents::new(100, Duration::ZERO);
        let (tenant, id) = (TenantId::from_name("t"), Uuid::new_v4());
        events.record(
            tenant,
            EntityKind::Integration,
            id,
            EventKind::Error,
            json!({}),
        );
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(events.query(id, &query(None)).1, 0);
    }
}
