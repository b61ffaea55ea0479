//! `ENTITY_DATA` and `ENTITY_COUNT`: which devices a query selects for the user, the page's
//! fields and latest values, and the `latestCmd` / `tsCmd` / `historyCmd` answers.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::{
    DeviceQuery, EntitySub, Outcome, SUBSCRIPTIONS_EXCEEDED, Session, attribute_kind, emit,
    fetch_message, group, range_query, shown,
};
use crate::model::{Device, DeviceId};
use crate::ports::{Aggregation, PageRequest, StoreError};
use crate::protocol::ws::{
    self, BAD_REQUEST, EntityDataCmd, EntityDataQuery, EntityFilter, EntityKey, INTERNAL_ERROR,
    TsCmd,
};

impl Session {
    pub(super) async fn entity_data(
        &mut self,
        c: EntityDataCmd,
        now: i64,
        out: &mut Vec<String>,
    ) -> Outcome {
        let id = c.cmd_id;
        let error = |code, msg: &str| ws::cmd_error(id, "ENTITY_DATA", code, msg);
        if id < 0 {
            return emit(out, error(BAD_REQUEST, "Cmd id is negative value!"));
        }
        if c.query.is_none()
            && c.latest_cmd.is_none()
            && c.ts_cmd.is_none()
            && c.history_cmd.is_none()
        {
            return emit(out, error(BAD_REQUEST, "Query is empty!"));
        }
        if let Some(query) = &c.query {
            if query.latest_values.len() > self.limits.max_keys
                || query.entity_fields.len() > self.limits.max_keys
            {
                return emit(
                    out,
                    error(
                        BAD_REQUEST,
                        &format!("Too many keys: at most {}", self.limits.max_keys),
                    ),
                );
            }
            let (devices, total, page_size, page) = match self.resolve(query).await {
                Ok(r) => r,
                Err((code, msg)) => return emit(out, error(code, &msg)),
            };
            if devices.len().saturating_mul(query.latest_values.len()) > self.limits.max_values {
                return emit(
                    out,
                    error(
                        BAD_REQUEST,
                        &format!(
                            "Too many values: entities x latest values may be at most {}",
                            self.limits.max_values
                        ),
                    ),
                );
            }
            self.drop_entity_sub(id);
            if !self.budget.take(devices.len()) {
                return Err(SUBSCRIPTIONS_EXCEEDED);
            }
            let mut data = Vec::with_capacity(devices.len());
            for (i, d) in devices.iter().enumerate() {
                self.watch.add(d);
                let mut latest = Map::new();
                fields(d, &query.entity_fields, &mut latest);
                if let Err(e) = self
                    .latest_values(d.id, &query.latest_values, &mut latest)
                    .await
                {
                    // Only the watches added so far are this subscription's.
                    for d in &devices[..=i] {
                        self.watch.remove(d.id);
                    }
                    self.budget.give(devices.len());
                    return emit(out, error(INTERNAL_ERROR, &fetch_message(&e)));
                }
                data.push(ws::entity_data(
                    "DEVICE",
                    &d.id.0.to_string(),
                    latest,
                    Map::new(),
                ));
            }
            out.push(ws::entity_data_page(
                id,
                self.limits.max_entities,
                data,
                total,
                page_size,
                page,
            ));
            self.entities.insert(
                id,
                EntitySub {
                    members: devices.iter().map(|d| d.id).collect(),
                    latest: Vec::new(),
                    series: HashSet::new(),
                },
            );
        }
        let Some(members) = self
            .entities
            .get(&id)
            .map(|s| s.members.iter().copied().collect::<Vec<_>>())
        else {
            return emit(out, error(BAD_REQUEST, "Query is empty!"));
        };
        if let Some(latest) = c.latest_cmd {
            if latest.keys.len() > self.limits.max_keys
                || members.len().saturating_mul(latest.keys.len()) > self.limits.max_values
            {
                return emit(
                    out,
                    error(
                        BAD_REQUEST,
                        &format!(
                            "Too many keys: at most {} keys, and entities x keys at most {}",
                            self.limits.max_keys, self.limits.max_values
                        ),
                    ),
                );
            }
            let mut update = Vec::new();
            for d in &members {
                let mut values = Map::new();
                if let Err(e) = self.latest_values(*d, &latest.keys, &mut values).await {
                    return emit(out, error(INTERNAL_ERROR, &fetch_message(&e)));
                }
                update.push(ws::entity_data(
                    "DEVICE",
                    &d.0.to_string(),
                    values,
                    Map::new(),
                ));
            }
            if let Some(sub) = self.entities.get_mut(&id) {
                sub.latest = latest.keys;
            }
            out.push(ws::entity_data_update(id, self.limits.max_entities, update));
        }
        if let Some(ts) = c.ts_cmd {
            let window = ts.time_window.unwrap_or(0).max(0);
            let start = ts.start_ts.unwrap_or(now.saturating_sub(window));
            let end = if window > 0 {
                start.saturating_add(window)
            } else {
                now
            };
            match self.series(&members, &ts, start, end).await {
                Ok(update) => {
                    out.push(ws::entity_data_update(id, self.limits.max_entities, update))
                }
                Err(msg) => return emit(out, error(BAD_REQUEST, &msg)),
            }
            if let Some(sub) = self.entities.get_mut(&id) {
                sub.series = ts.keys.into_iter().collect();
            }
        }
        if let Some(history) = c.history_cmd {
            let start = history.start_ts.unwrap_or(0);
            let end = history.end_ts.unwrap_or(now);
            match self.series(&members, &history, start, end).await {
                Ok(update) => {
                    out.push(ws::entity_data_update(id, self.limits.max_entities, update))
                }
                Err(msg) => return emit(out, error(BAD_REQUEST, &msg)),
            }
        }
        Ok(())
    }

    /// `timeseries` of each member over `[start, end]`, as `update` entries.
    async fn series(
        &self,
        members: &[DeviceId],
        cmd: &TsCmd,
        start: i64,
        end: i64,
    ) -> Result<Vec<Value>, String> {
        let keys: Vec<String> = ws::Keys::List(cmd.keys.clone()).list().unwrap_or_default();
        if keys.is_empty() {
            return Err("Keys are empty!".to_owned());
        }
        if keys.len() > self.limits.max_keys {
            return Err(format!("Too many keys: at most {}", self.limits.max_keys));
        }
        let key_count = keys.len();
        let query = range_query(
            &self.limits,
            Some(keys),
            start,
            end,
            cmd.interval,
            cmd.limit,
            cmd.agg.as_deref(),
        )?;
        let per_key = if query.agg == Aggregation::None || query.interval == 0 {
            query.limit
        } else {
            usize::try_from((query.end_ts - query.start_ts) / query.interval).unwrap_or(usize::MAX)
        };
        if members
            .len()
            .saturating_mul(key_count)
            .saturating_mul(per_key.max(1))
            > self.limits.max_values
        {
            return Err(format!(
                "Too many points: entities x keys x points may be at most {}",
                self.limits.max_values
            ));
        }
        let mut update = Vec::with_capacity(members.len());
        for d in members {
            let result = self
                .store
                .range(*d, &query)
                .await
                .map_err(|e| fetch_message(&e))?;
            let mut series = Map::new();
            for (key, points) in result {
                series.insert(
                    key,
                    Value::Array(
                        points
                            .iter()
                            .map(|p| ws::ts_value(p.ts, Some(&p.value.to_tb_string())))
                            .collect(),
                    ),
                );
            }
            update.push(ws::entity_data(
                "DEVICE",
                &d.0.to_string(),
                Map::new(),
                series,
            ));
        }
        Ok(update)
    }

    /// The current values of `keys` (time series and attributes) into `latest`, grouped by
    /// key type; a key without a value is `{"ts":0,"value":""}` as ThingsBoard's `EMPTY`.
    async fn latest_values(
        &self,
        device: DeviceId,
        keys: &[EntityKey],
        latest: &mut Map<String, Value>,
    ) -> Result<(), StoreError> {
        let series: Vec<String> = keys
            .iter()
            .filter(|k| k.kind == "TIME_SERIES")
            .map(|k| k.key.clone())
            .collect();
        if !series.is_empty() {
            let values = self.store.latest(device, Some(&series)).await?;
            let group = group(latest, "TIME_SERIES");
            for v in values {
                let value = v.value.map(|v| v.to_tb_string()).unwrap_or_default();
                let ts = if value.is_empty() { 0 } else { v.ts };
                group.insert(v.key, ws::ts_value(ts, Some(&value)));
            }
        }
        for k in keys {
            let Some(scope) = attribute_kind(&k.kind) else {
                continue;
            };
            let values = self
                .store
                .attributes(device, scope, Some(std::slice::from_ref(&k.key)))
                .await?;
            let found = values.into_iter().max_by_key(|a| a.last_update_ts);
            let value = found.map_or_else(
                || ws::ts_value(0, Some("")),
                |a| ws::ts_value(a.last_update_ts, Some(&a.value.to_tb_string())),
            );
            group(latest, &k.kind).insert(k.key.clone(), value);
        }
        Ok(())
    }

    /// The devices a query's filter selects for this user: one page of them, how many match,
    /// the page size and page.
    async fn resolve(
        &self,
        query: &EntityDataQuery,
    ) -> Result<(Vec<Arc<Device>>, usize, usize, usize), (i32, String)> {
        let page_size = usize::try_from(query.page_link.page_size.unwrap_or(10))
            .unwrap_or(0)
            .clamp(1, self.limits.max_entities);
        let page = usize::try_from(query.page_link.page.unwrap_or(0)).unwrap_or(0);
        let text = query
            .page_link
            .text_search
            .clone()
            .filter(|t| !t.is_empty());
        let (devices, total) = self
            .select(&query.entity_filter, page_size, page, text)
            .await?;
        Ok((devices, total, page_size, page))
    }

    async fn select(
        &self,
        filter: &Value,
        page_size: usize,
        page: usize,
        text: Option<String>,
    ) -> Result<(Vec<Arc<Device>>, usize), (i32, String)> {
        let filter: EntityFilter = serde_json::from_value(filter.clone()).map_err(|_| {
            (
                BAD_REQUEST,
                "Unsupported entity filter: use singleEntity, entityList, deviceType, entityType or entityName"
                    .to_owned(),
            )
        })?;
        let devices_only = |kind: &str| {
            if kind == "DEVICE" {
                Ok(())
            } else {
                Err((
                    BAD_REQUEST,
                    format!("Entity type {} is not supported", shown(kind)),
                ))
            }
        };
        let fetch = |e: StoreError| (INTERNAL_ERROR, fetch_message(&e));
        let listed = |ids: Vec<String>| async move {
            let mut found = Vec::new();
            for id in ids.iter().take(self.limits.max_entities) {
                if let Ok(uuid) = uuid::Uuid::parse_str(id.trim())
                    && let Some(d) = self.viewer.device(DeviceId(uuid)).await.map_err(fetch)?
                    && !found.iter().any(|f: &Arc<Device>| f.id == d.id)
                {
                    found.push(d);
                }
            }
            let total = found.len();
            let start = page.saturating_mul(page_size).min(total);
            let end = start.saturating_add(page_size).min(total);
            Ok::<_, (i32, String)>((found[start..end].to_vec(), total))
        };
        let query = match filter {
            EntityFilter::SingleEntity { single_entity } => {
                devices_only(&single_entity.entity_type)?;
                return listed(vec![single_entity.id]).await;
            }
            EntityFilter::EntityList {
                entity_type,
                entity_list,
            } => {
                devices_only(&entity_type)?;
                return listed(entity_list).await;
            }
            EntityFilter::DeviceType {
                device_type,
                device_types,
                device_name_filter,
            } => DeviceQuery {
                types: Some(
                    device_types
                        .into_iter()
                        .flatten()
                        .chain(device_type)
                        .collect(),
                ),
                name_prefix: device_name_filter.filter(|n| !n.is_empty()),
            },
            EntityFilter::EntityType { entity_type } => {
                devices_only(&entity_type)?;
                DeviceQuery::default()
            }
            EntityFilter::EntityName {
                entity_type,
                entity_name_filter,
            } => {
                devices_only(&entity_type)?;
                DeviceQuery {
                    types: None,
                    name_prefix: entity_name_filter.filter(|n| !n.is_empty()),
                }
            }
        };
        let query = DeviceQuery {
            name_prefix: query.name_prefix.or(text),
            ..query
        };
        let found = self
            .viewer
            .devices(
                &query,
                &PageRequest {
                    page_size,
                    page,
                    text_search: None,
                },
            )
            .await
            .map_err(fetch)?;
        Ok((found.data, found.total_elements))
    }

    pub(super) async fn entity_count(&self, id: i32, filter: Option<Value>) -> String {
        let Some(filter) = filter else {
            return ws::cmd_error(id, "COUNT_DATA", BAD_REQUEST, "Query is empty!");
        };
        match self.select(&filter, 1, 0, None).await {
            Ok((_, total)) => ws::count(id, "COUNT_DATA", total),
            Err((code, msg)) => ws::cmd_error(id, "COUNT_DATA", code, &msg),
        }
    }
}

/// An entity's fields (`ENTITY_FIELD` keys) into `latest`.
fn fields(d: &Device, keys: &[EntityKey], latest: &mut Map<String, Value>) {
    let wanted: Vec<&EntityKey> = keys.iter().filter(|k| k.kind == "ENTITY_FIELD").collect();
    if wanted.is_empty() {
        return;
    }
    let group = group(latest, "ENTITY_FIELD");
    for k in wanted {
        let value = match k.key.as_str() {
            "name" => d.name.clone(),
            "label" => d.label.clone().unwrap_or_default(),
            "type" => d.device_type.clone(),
            "createdTime" => d.created_time.to_string(),
            "id" => d.id.0.to_string(),
            _ => String::new(),
        };
        group.insert(k.key.clone(), ws::ts_value(0, Some(&value)));
    }
}
