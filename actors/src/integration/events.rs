//! Debug events of integrations and converters, in ThingsBoard's shape: what came in, what the
//! converter made of it, and what went wrong. Kept in memory, bounded per entity and by age, so
//! debug mode left on by mistake costs a fixed amount of memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::{TenantId, now_ms};

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

pub struct DebugEvents {
    per_entity: usize,
    ttl: Duration,
    by_entity: Mutex<HashMap<Uuid, VecDeque<Arc<Event>>>>,
}

impl DebugEvents {
    /// At most `per_entity` events per integration or converter, none older than `ttl`.
    pub fn new(per_entity: usize, ttl: Duration) -> DebugEvents {
        DebugEvents {
            per_entity: per_entity.max(1),
            ttl,
            by_entity: Mutex::new(HashMap::new()),
        }
    }

    fn oldest_kept(&self) -> i64 {
        now_ms().saturating_sub(i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX))
    }

    pub fn record(
        &self,
        tenant_id: TenantId,
        entity: EntityKind,
        entity_id: Uuid,
        kind: EventKind,
        body: Value,
    ) {
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
        let mut all = self.by_entity.lock();
        let events = all.entry(entity_id).or_default();
        while events
            .front()
            .is_some_and(|e| events.len() >= self.per_entity || e.created_time < oldest)
        {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The events of one entity that match, and how many match in all.
    pub fn query(&self, entity_id: Uuid, q: &EventQuery) -> (Vec<Arc<Event>>, usize) {
        let oldest = self.oldest_kept().max(q.start_ts.unwrap_or(i64::MIN));
        let end = q.end_ts.unwrap_or(i64::MAX);
        let all = self.by_entity.lock();
        let Some(events) = all.get(&entity_id) else {
            return (Vec::new(), 0);
        };
        let matching = |e: &&Arc<Event>| {
            e.created_time >= oldest && e.created_time <= end && q.kind.is_none_or(|k| k == e.kind)
        };
        let total = events.iter().filter(matching).count();
        let skip = q.page.saturating_mul(q.page_size);
        let page: Vec<_> = if q.ascending {
            events
                .iter()
                .filter(matching)
                .skip(skip)
                .take(q.page_size)
                .cloned()
                .collect()
        } else {
            events
                .iter()
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
        self.by_entity.lock().remove(&entity_id);
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
