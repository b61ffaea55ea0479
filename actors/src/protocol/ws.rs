//! ThingsBoard's WebSocket telemetry API (reference §5), as pure functions: the two command
//! wrappers a client sends (`/api/ws/plugins/telemetry`'s `{tsSubCmds, ..}` and `/api/ws`'s
//! `{authCmd, cmds}`), read into one [`Cmd`] list, and the messages the server sends back.
//!
//! Values always go out as strings (ThingsBoard's `getValueAsString`), a key never written as
//! `null`, a deletion as `[0, ""]`; `subscriptionId` is the client's `cmdId`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// ThingsBoard's `SubscriptionErrorCode`s.
pub const NO_ERROR: i32 = 0;
pub const INTERNAL_ERROR: i32 = 1;
pub const BAD_REQUEST: i32 = 2;
pub const UNAUTHORIZED: i32 = 3;

/// `keys` of a legacy command: ThingsBoard takes a comma-separated string; some clients send
/// an array, which is taken too.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Keys {
    #[default]
    None,
    Text(String),
    List(Vec<String>),
}

impl Keys {
    /// The keys named, in order, without blanks or repeats; `None` means every key.
    pub fn list(&self) -> Option<Vec<String>> {
        let names: Vec<&str> = match self {
            Keys::None => return None,
            Keys::Text(t) => t.split(',').collect(),
            Keys::List(l) => l.iter().map(String::as_str).collect(),
        };
        let mut out: Vec<String> = Vec::new();
        for n in names.into_iter().map(str::trim).filter(|n| !n.is_empty()) {
            if !out.iter().any(|k| k == n) {
                out.push(n.to_owned());
            }
        }
        (!out.is_empty()).then_some(out)
    }
}

/// `TIMESERIES` / `ATTRIBUTES` / `TIMESERIES_HISTORY` and the legacy `tsSubCmds`,
/// `attrSubCmds`, `historyCmds`: one shape, as in ThingsBoard.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SubCmd {
    #[serde(default)]
    pub cmd_id: i32,
    #[serde(default)]
    pub entity_type: Option<String>,
    #[serde(default)]
    pub entity_id: Option<String>,
    #[serde(default)]
    pub keys: Keys,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub unsubscribe: bool,
    #[serde(default)]
    pub start_ts: Option<i64>,
    #[serde(default)]
    pub end_ts: Option<i64>,
    #[serde(default)]
    pub time_window: Option<i64>,
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub agg: Option<String>,
}

/// A key of an entity-data query: `{"type":"TIME_SERIES","key":"temp"}`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
pub struct EntityKey {
    #[serde(rename = "type")]
    pub kind: String,
    pub key: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityIdJson {
    pub entity_type: String,
    pub id: String,
}

/// The entity filters this engine serves (reference §5.3; entities are devices).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EntityFilter {
    SingleEntity {
        #[serde(rename = "singleEntity")]
        single_entity: EntityIdJson,
    },
    #[serde(rename_all = "camelCase")]
    EntityList {
        entity_type: String,
        #[serde(default)]
        entity_list: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    DeviceType {
        #[serde(default)]
        device_type: Option<String>,
        #[serde(default)]
        device_types: Option<Vec<String>>,
        #[serde(default)]
        device_name_filter: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    EntityType { entity_type: String },
    #[serde(rename_all = "camelCase")]
    EntityName {
        entity_type: String,
        #[serde(default)]
        entity_name_filter: Option<String>,
    },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PageLink {
    #[serde(default)]
    pub page_size: Option<i64>,
    #[serde(default)]
    pub page: Option<i64>,
    #[serde(default)]
    pub text_search: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityDataQuery {
    pub entity_filter: Value,
    #[serde(default)]
    pub page_link: PageLink,
    #[serde(default)]
    pub entity_fields: Vec<EntityKey>,
    #[serde(default)]
    pub latest_values: Vec<EntityKey>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LatestCmd {
    #[serde(default)]
    pub keys: Vec<EntityKey>,
}

/// `tsCmd` (a window that then follows live data) and `historyCmd` (one answer).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TsCmd {
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub start_ts: Option<i64>,
    #[serde(default)]
    pub end_ts: Option<i64>,
    #[serde(default)]
    pub time_window: Option<i64>,
    #[serde(default)]
    pub interval: Option<i64>,
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub agg: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityDataCmd {
    #[serde(default)]
    pub cmd_id: i32,
    #[serde(default)]
    pub query: Option<EntityDataQuery>,
    #[serde(default)]
    pub latest_cmd: Option<LatestCmd>,
    #[serde(default)]
    pub ts_cmd: Option<TsCmd>,
    #[serde(default)]
    pub history_cmd: Option<TsCmd>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityCountCmd {
    #[serde(default)]
    pub cmd_id: i32,
    #[serde(default)]
    pub query: Option<EntityCountQuery>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EntityCountQuery {
    pub entity_filter: Value,
}

/// A command that only names its id (the `*_UNSUBSCRIBE` family, and commands for features
/// this engine has nothing for).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IdCmd {
    #[serde(default)]
    pub cmd_id: i32,
}

/// `authCmd`: `{"cmdId":0,"token":"<JWT>"}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthCmd {
    #[serde(default)]
    pub token: Option<String>,
}

/// One command, whichever wrapper brought it.
#[derive(Clone, Debug, PartialEq)]
pub enum Cmd {
    Attributes(SubCmd),
    Timeseries(SubCmd),
    History(SubCmd),
    EntityData(Box<EntityDataCmd>),
    EntityDataUnsubscribe(i32),
    EntityCount(EntityCountCmd),
    EntityCountUnsubscribe(i32),
    /// Alarms: this engine raises none, so a subscription is an empty one.
    AlarmData(i32),
    AlarmCount(i32),
    AlarmStatus(i32),
    /// Notifications: none are ever sent here.
    Notifications(i32),
    NotificationsCount(i32),
    /// A command that changes nothing here (unsubscribing from the above, marking
    /// notifications read).
    Ignored,
}

/// What a client sent: an optional `authCmd` and the commands, in ThingsBoard's order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    pub auth: Option<AuthCmd>,
    pub cmds: Vec<Cmd>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wrapper {
    #[serde(default)]
    auth_cmd: Option<AuthCmd>,
    #[serde(default)]
    cmds: Option<Vec<Typed>>,
    #[serde(default)]
    attr_sub_cmds: Vec<SubCmd>,
    #[serde(default)]
    ts_sub_cmds: Vec<SubCmd>,
    #[serde(default)]
    history_cmds: Vec<SubCmd>,
    #[serde(default)]
    entity_data_cmds: Vec<EntityDataCmd>,
    #[serde(default)]
    entity_data_unsubscribe_cmds: Vec<IdCmd>,
    #[serde(default)]
    alarm_data_cmds: Vec<IdCmd>,
    #[serde(default)]
    alarm_data_unsubscribe_cmds: Vec<IdCmd>,
    #[serde(default)]
    entity_count_cmds: Vec<EntityCountCmd>,
    #[serde(default)]
    entity_count_unsubscribe_cmds: Vec<IdCmd>,
    #[serde(default)]
    alarm_count_cmds: Vec<IdCmd>,
    #[serde(default)]
    alarm_count_unsubscribe_cmds: Vec<IdCmd>,
}

/// `cmds[]` of `/api/ws`, by their `type`.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
enum Typed {
    Attributes(SubCmd),
    Timeseries(SubCmd),
    TimeseriesHistory(SubCmd),
    EntityData(Box<EntityDataCmd>),
    EntityCount(EntityCountCmd),
    AlarmData(IdCmd),
    AlarmCount(IdCmd),
    AlarmStatus(IdCmd),
    Notifications(IdCmd),
    NotificationsCount(IdCmd),
    MarkNotificationsAsRead(serde::de::IgnoredAny),
    MarkAllNotificationsAsRead(serde::de::IgnoredAny),
    EntityDataUnsubscribe(IdCmd),
    EntityCountUnsubscribe(IdCmd),
    AlarmDataUnsubscribe(serde::de::IgnoredAny),
    AlarmCountUnsubscribe(serde::de::IgnoredAny),
    AlarmStatusUnsubscribe(serde::de::IgnoredAny),
    NotificationsUnsubscribe(serde::de::IgnoredAny),
}

impl From<Typed> for Cmd {
    fn from(t: Typed) -> Cmd {
        match t {
            Typed::Attributes(c) => Cmd::Attributes(c),
            Typed::Timeseries(c) => Cmd::Timeseries(c),
            Typed::TimeseriesHistory(c) => Cmd::History(c),
            Typed::EntityData(c) => Cmd::EntityData(c),
            Typed::EntityCount(c) => Cmd::EntityCount(c),
            Typed::EntityDataUnsubscribe(c) => Cmd::EntityDataUnsubscribe(c.cmd_id),
            Typed::EntityCountUnsubscribe(c) => Cmd::EntityCountUnsubscribe(c.cmd_id),
            Typed::AlarmData(c) => Cmd::AlarmData(c.cmd_id),
            Typed::AlarmCount(c) => Cmd::AlarmCount(c.cmd_id),
            Typed::AlarmStatus(c) => Cmd::AlarmStatus(c.cmd_id),
            Typed::Notifications(c) => Cmd::Notifications(c.cmd_id),
            Typed::NotificationsCount(c) => Cmd::NotificationsCount(c.cmd_id),
            Typed::MarkNotificationsAsRead(_)
            | Typed::MarkAllNotificationsAsRead(_)
            | Typed::AlarmDataUnsubscribe(_)
            | Typed::AlarmCountUnsubscribe(_)
            | Typed::AlarmStatusUnsubscribe(_)
            | Typed::NotificationsUnsubscribe(_) => Cmd::Ignored,
        }
    }
}

/// Reads one text frame. Both wrappers are accepted on both endpoints: the legacy lists are
/// taken in ThingsBoard's order (attributes, time series, history, entity data, ...), then
/// `cmds`. `Err` is ThingsBoard's "Failed to parse the payload".
pub fn parse(text: &str) -> Result<Frame, serde_json::Error> {
    // serde would read a struct from an array too; a command is an object.
    if !text.trim_start().starts_with('{') {
        return Err(serde::de::Error::custom("a command is a JSON object"));
    }
    let w: Wrapper = serde_json::from_str(text)?;
    let mut cmds = Vec::new();
    cmds.extend(w.attr_sub_cmds.into_iter().map(Cmd::Attributes));
    cmds.extend(w.ts_sub_cmds.into_iter().map(Cmd::Timeseries));
    cmds.extend(w.history_cmds.into_iter().map(Cmd::History));
    cmds.extend(
        w.entity_data_cmds
            .into_iter()
            .map(|c| Cmd::EntityData(Box::new(c))),
    );
    cmds.extend(
        w.entity_data_unsubscribe_cmds
            .into_iter()
            .map(|c| Cmd::EntityDataUnsubscribe(c.cmd_id)),
    );
    cmds.extend(
        w.alarm_data_cmds
            .into_iter()
            .map(|c| Cmd::AlarmData(c.cmd_id)),
    );
    cmds.extend(
        w.alarm_data_unsubscribe_cmds
            .into_iter()
            .map(|_| Cmd::Ignored),
    );
    cmds.extend(w.entity_count_cmds.into_iter().map(Cmd::EntityCount));
    cmds.extend(
        w.entity_count_unsubscribe_cmds
            .into_iter()
            .map(|c| Cmd::EntityCountUnsubscribe(c.cmd_id)),
    );
    cmds.extend(
        w.alarm_count_cmds
            .into_iter()
            .map(|c| Cmd::AlarmCount(c.cmd_id)),
    );
    cmds.extend(
        w.alarm_count_unsubscribe_cmds
            .into_iter()
            .map(|_| Cmd::Ignored),
    );
    cmds.extend(w.cmds.unwrap_or_default().into_iter().map(Cmd::from));
    cmds.retain(|c| *c != Cmd::Ignored);
    Ok(Frame {
        auth: w.auth_cmd,
        cmds,
    })
}

/// One point of a legacy update: `[ts, "value"]`, `[ts, null]` for a key never written.
pub type Point = (i64, Option<String>);

/// A `TIMESERIES` / `ATTRIBUTES` / history message (reference §5.5): keys sorted, each with
/// its points as given; `latestValues` holds the ts of each key's last point.
pub fn data_update(cmd_id: i32, data: &BTreeMap<String, Vec<Point>>) -> String {
    let mut points = Map::new();
    let mut latest = Map::new();
    for (key, list) in data {
        points.insert(
            key.clone(),
            Value::Array(list.iter().map(|(ts, v)| json!([ts, v])).collect()),
        );
        if let Some((ts, _)) = list.last() {
            latest.insert(key.clone(), json!(ts));
        }
    }
    json!({
        "subscriptionId": cmd_id,
        "errorCode": NO_ERROR,
        "errorMsg": null,
        "data": points,
        "latestValues": latest,
    })
    .to_string()
}

/// An error for a legacy-shaped command.
pub fn data_error(cmd_id: i32, code: i32, message: &str) -> String {
    json!({
        "subscriptionId": cmd_id,
        "errorCode": code,
        "errorMsg": message,
        "data": null,
        "latestValues": {},
    })
    .to_string()
}

/// `{"ts":..,"value":".."}` of an entity-data reply.
pub fn ts_value(ts: i64, value: Option<&str>) -> Value {
    json!({"ts": ts, "value": value})
}

/// One entity of an `ENTITY_DATA` reply: `latest` by key type, `timeseries` by key.
pub fn entity_data(
    entity_type: &str,
    id: &str,
    latest: Map<String, Value>,
    timeseries: Map<String, Value>,
) -> Value {
    json!({
        "entityId": {"entityType": entity_type, "id": id},
        "latest": latest,
        "timeseries": timeseries,
        "aggLatest": null,
    })
}

/// The first reply of an `ENTITY_DATA` query: the page of entities.
pub fn entity_data_page(
    cmd_id: i32,
    allowed: usize,
    data: Vec<Value>,
    total_elements: usize,
    page_size: usize,
    page: usize,
) -> String {
    let total_pages = total_elements.div_ceil(page_size.max(1));
    json!({
        "cmdId": cmd_id,
        "errorCode": NO_ERROR,
        "errorMsg": null,
        "cmdUpdateType": "ENTITY_DATA",
        "allowedEntities": allowed,
        "data": {
            "data": data,
            "totalPages": total_pages,
            "totalElements": total_elements,
            "hasNext": page + 1 < total_pages,
        },
        "update": null,
    })
    .to_string()
}

/// A later `ENTITY_DATA` reply: only the entities and keys that changed.
pub fn entity_data_update(cmd_id: i32, allowed: usize, update: Vec<Value>) -> String {
    json!({
        "cmdId": cmd_id,
        "errorCode": NO_ERROR,
        "errorMsg": null,
        "cmdUpdateType": "ENTITY_DATA",
        "allowedEntities": allowed,
        "data": null,
        "update": update,
    })
    .to_string()
}

/// An error for a command of the `cmdId` family (`ENTITY_DATA`, `ENTITY_COUNT`, ...).
pub fn cmd_error(cmd_id: i32, update_type: &str, code: i32, message: &str) -> String {
    json!({
        "cmdId": cmd_id,
        "errorCode": code,
        "errorMsg": message,
        "cmdUpdateType": update_type,
    })
    .to_string()
}

/// `ENTITY_COUNT`'s and `ALARM_COUNT`'s reply.
pub fn count(cmd_id: i32, update_type: &str, count: usize) -> String {
    json!({
        "cmdId": cmd_id,
        "errorCode": NO_ERROR,
        "errorMsg": null,
        "cmdUpdateType": update_type,
        "count": count,
    })
    .to_string()
}

/// An `ALARM_DATA` subscription's first reply: an empty page (no alarms are raised here).
pub fn empty_alarm_page(cmd_id: i32) -> String {
    json!({
        "cmdId": cmd_id,
        "errorCode": NO_ERROR,
        "errorMsg": null,
        "cmdUpdateType": "ALARM_DATA",
        "allowedEntities": 0,
        "totalEntities": 0,
        "data": {"data": [], "totalPages": 0, "totalElements": 0, "hasNext": false},
        "update": null,
    })
    .to_string()
}

/// `NOTIFICATIONS_COUNT`'s reply: nothing unread.
pub fn notifications_count(cmd_id: i32) -> String {
    json!({
        "cmdId": cmd_id,
        "errorCode": NO_ERROR,
        "errorMsg": null,
        "cmdUpdateType": "NOTIFICATIONS_COUNT",
        "totalUnreadCount": 0,
    })
    .to_string()
}

/// `NOTIFICATIONS`' reply: no notifications.
pub fn notifications(cmd_id: i32) -> String {
    json!({
        "cmdId": cmd_id,
        "errorCode": NO_ERROR,
        "errorMsg": null,
        "cmdUpdateType": "NOTIFICATIONS",
        "totalUnreadCount": 0,
        "notifications": [],
        "update": null,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmds(text: &str) -> Vec<Cmd> {
        parse(text).expect("parses").cmds
    }

    #[test]
    fn legacy_lists_come_in_thingsboards_order() {
        let got = cmds(
            r#"{"tsSubCmds":[{"cmdId":2,"entityType":"DEVICE","entityId":"x","keys":"a,b"}],
                "attrSubCmds":[{"cmdId":1,"entityType":"DEVICE","entityId":"x"}],
                "historyCmds":[{"cmdId":3,"keys":"a","startTs":0,"endTs":5}]}"#,
        );
        let ids: Vec<i32> = got
            .iter()
            .map(|c| match c {
                Cmd::Attributes(s) | Cmd::Timeseries(s) | Cmd::History(s) => s.cmd_id,
                _ => -99,
            })
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        let Cmd::Timeseries(ts) = &got[1] else {
            panic!("{got:?}")
        };
        assert_eq!(ts.keys.list(), Some(vec!["a".to_owned(), "b".to_owned()]));
    }

    #[test]
    fn unified_commands_are_read_by_type() {
        let frame = parse(
            r#"{"authCmd":{"cmdId":0,"token":"t"},
                "cmds":[{"type":"TIMESERIES","cmdId":1,"entityType":"DEVICE","entityId":"x","keys":["a"," a ","b"]},
                        {"type":"ENTITY_DATA_UNSUBSCRIBE","cmdId":4},
                        {"type":"MARK_ALL_NOTIFICATIONS_AS_READ","cmdId":5},
                        {"type":"NOTIFICATIONS_COUNT","cmdId":6}]}"#,
        )
        .expect("parses");
        assert_eq!(frame.auth.and_then(|a| a.token).as_deref(), Some("t"));
        assert_eq!(frame.cmds.len(), 3);
        let Cmd::Timeseries(ts) = &frame.cmds[0] else {
            panic!()
        };
        assert_eq!(ts.keys.list(), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(frame.cmds[1], Cmd::EntityDataUnsubscribe(4));
        assert_eq!(frame.cmds[2], Cmd::NotificationsCount(6));
    }

    #[test]
    fn bad_frames_are_errors() {
        for bad in [
            "",
            "nope",
            "[]",
            r#"{"cmds":[{"type":"NO_SUCH","cmdId":1}]}"#,
            r#"{"cmds":[{"cmdId":1}]}"#,
            r#"{"tsSubCmds":{"cmdId":1}}"#,
            r#"{"tsSubCmds":[{"cmdId":"one"}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse("{}").expect("empty is fine"), Frame::default());
    }

    #[test]
    fn blank_keys_mean_every_key() {
        assert_eq!(Keys::Text(" , ".into()).list(), None);
        assert_eq!(Keys::None.list(), None);
        assert_eq!(Keys::List(vec![]).list(), None);
    }

    #[test]
    fn updates_have_thingsboards_shape() {
        let mut data = BTreeMap::new();
        data.insert(
            "temp".to_owned(),
            vec![(1, Some("21.5".to_owned())), (2, None)],
        );
        data.insert("a".to_owned(), vec![(0, Some(String::new()))]);
        let v: Value = serde_json::from_str(&data_update(7, &data)).expect("json");
        assert_eq!(
            v,
            json!({"subscriptionId":7,"errorCode":0,"errorMsg":null,
                   "data":{"a":[[0,""]],"temp":[[1,"21.5"],[2,null]]},
                   "latestValues":{"a":0,"temp":2}})
        );
        let e: Value = serde_json::from_str(&data_error(-1, BAD_REQUEST, "x")).expect("json");
        assert_eq!(e["errorCode"], 2);
        assert_eq!(e["data"], Value::Null);
    }

    #[test]
    fn entity_filters_parse() {
        let f: EntityFilter = serde_json::from_value(json!({
            "type":"deviceType","deviceTypes":["thermo"],"deviceNameFilter":"T"
        }))
        .expect("filter");
        assert!(matches!(f, EntityFilter::DeviceType { .. }));
        let f: EntityFilter = serde_json::from_value(json!({
            "type":"singleEntity","singleEntity":{"entityType":"DEVICE","id":"x"}
        }))
        .expect("filter");
        assert!(matches!(f, EntityFilter::SingleEntity { .. }));
        assert!(serde_json::from_value::<EntityFilter>(json!({"type":"relationsQuery"})).is_err());
    }
}
