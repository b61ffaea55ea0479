//! A session's subscriptions without sockets: commands against a small store, then changes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::*;
use crate::batch::WriteBatch;
use crate::live::{Change, LiveHub};
use crate::model::{AccessToken, KvEntry, KvValue, Message, TenantId, TsRecord};
use crate::ports::{AttributeValue, LatestValue};
use crate::protocol::ws::parse;

/// Latest values and attributes fixed at construction; no history.
struct Fixed {
    latest: Vec<(String, i64, KvValue)>,
}

#[async_trait]
impl Store for Fixed {
    async fn write(&self, _: Arc<WriteBatch>) -> Result<(), StoreError> {
        Ok(())
    }

    async fn latest(
        &self,
        _: DeviceId,
        keys: Option<&[String]>,
    ) -> Result<Vec<LatestValue>, StoreError> {
        let all: Vec<String> = self.latest.iter().map(|l| l.0.clone()).collect();
        Ok(keys
            .map_or(all, <[String]>::to_vec)
            .into_iter()
            .map(|key| {
                let found = self.latest.iter().find(|l| l.0 == key);
                LatestValue {
                    ts: found.map_or(0, |f| f.1),
                    value: found.map(|f| f.2.clone()),
                    key,
                }
            })
            .collect())
    }

    async fn timeseries_keys(&self, _: DeviceId) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn range(&self, _: DeviceId, _: &RangeQuery) -> Result<RangeResult, StoreError> {
        Ok(BTreeMap::new())
    }

    async fn attributes(
        &self,
        _: DeviceId,
        _: Option<AttributeScope>,
        _: Option<&[String]>,
    ) -> Result<Vec<AttributeValue>, StoreError> {
        Ok(Vec::new())
    }

    async fn attribute_keys(
        &self,
        _: DeviceId,
        _: Option<AttributeScope>,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn delete_attributes(
        &self,
        _: DeviceId,
        _: AttributeScope,
        _: &[String],
        _: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Sees one device.
struct One(Arc<Device>);

#[async_trait]
impl Viewer for One {
    async fn device(&self, id: DeviceId) -> Result<Option<Arc<Device>>, StoreError> {
        Ok((id == self.0.id).then(|| self.0.clone()))
    }

    async fn devices(
        &self,
        _: &DeviceQuery,
        _: &PageRequest,
    ) -> Result<Page<Arc<Device>>, StoreError> {
        Ok(Page {
            data: vec![self.0.clone()],
            total_elements: 1,
        })
    }
}

const DEVICE: DeviceId = DeviceId(uuid::Uuid::from_u128(7));

fn session(max_subscriptions: usize) -> Session {
    let device = Arc::new(Device {
        id: DEVICE,
        tenant_id: TenantId(uuid::Uuid::nil()),
        name: "d".into(),
        device_type: "default".into(),
        label: None,
        token: AccessToken("t".into()),
        created_time: 0,
        additional_info: None,
    });
    let (watch, _rx) = LiveHub::new().watcher(16);
    Session::new(
        Arc::new(One(device)),
        Arc::new(Fixed {
            latest: vec![("temp".into(), 5, KvValue::Double(20.0))],
        }),
        watch,
        Limits {
            max_keys: 4,
            max_points: 100,
            max_entities: 10,
            max_values: 1000,
        },
        Budget::new(Arc::new(AtomicUsize::new(0)), max_subscriptions),
    )
}

/// Runs a frame's commands; the messages as JSON.
async fn run(s: &mut Session, frame: Value) -> Result<Vec<Value>, Closing> {
    let mut out = Vec::new();
    for cmd in parse(&frame.to_string()).expect("frame").cmds {
        s.command(cmd, 1000, &mut out).await?;
    }
    Ok(out
        .iter()
        .map(|m| serde_json::from_str(m).expect("json"))
        .collect())
}

fn changed(s: &mut Session, change: Change) -> Vec<Value> {
    let mut out = Vec::new();
    s.change(&change, &mut out);
    out.iter()
        .map(|m| serde_json::from_str(m).expect("json"))
        .collect()
}

fn telemetry(points: &[(i64, &str, KvValue)]) -> Change {
    Change::Stored(Arc::new(Message {
        tenant_id: TenantId(uuid::Uuid::nil()),
        device_id: DEVICE,
        received_ts: 1,
        body: MessageBody::Telemetry(
            points
                .iter()
                .map(|(ts, key, value)| TsRecord {
                    ts: *ts,
                    entries: vec![KvEntry {
                        key: (*key).into(),
                        value: value.clone(),
                    }],
                })
                .collect(),
        ),
    }))
}

fn ts_sub(id: i32, keys: &str, scope: &str) -> Value {
    json!({"tsSubCmds": [{"cmdId": id, "entityType": "DEVICE", "entityId": DEVICE.0.to_string(), "keys": keys, "scope": scope}]})
}

#[tokio::test]
async fn latest_only_subscriptions_skip_older_points_and_others_keep_them() {
    let mut s = session(10);
    let first = run(&mut s, ts_sub(1, "temp", "LATEST_TELEMETRY"))
        .await
        .expect("runs");
    assert_eq!(first[0]["data"]["temp"], json!([[5, "20.0"]]));
    run(&mut s, ts_sub(2, "temp", "")).await.expect("runs");
    let mut got = changed(&mut s, telemetry(&[(3, "temp", KvValue::Long(1))]));
    got.sort_by_key(|m| m["subscriptionId"].as_i64());
    assert_eq!(got.len(), 1, "only the plain subscription: {got:?}");
    assert_eq!(got[0]["subscriptionId"], 2);
    let got = changed(
        &mut s,
        telemetry(&[
            (9, "temp", KvValue::Bool(true)),
            (9, "other", KvValue::Long(1)),
        ]),
    );
    assert_eq!(got.len(), 2);
    for m in got {
        assert_eq!(m["data"], json!({"temp": [[9, "true"]]}), "keys filtered");
    }
}

#[tokio::test]
async fn subscriptions_past_the_budget_close_and_are_given_back() {
    let mut s = session(2);
    run(&mut s, ts_sub(1, "temp", "")).await.expect("one");
    run(&mut s, ts_sub(1, "temp", ""))
        .await
        .expect("the same id again");
    run(&mut s, ts_sub(2, "", "")).await.expect("two");
    assert_eq!(s.subscriptions(), 2);
    let third = run(&mut s, ts_sub(3, "", "")).await;
    assert_eq!(third, Err(SUBSCRIPTIONS_EXCEEDED));
    // Unsubscribing with an empty entity id cancels them all.
    run(
        &mut s,
        json!({"tsSubCmds": [{"cmdId": 1, "entityId": "", "unsubscribe": true}]}),
    )
    .await
    .expect("runs");
    assert_eq!(s.subscriptions(), 0);
    assert!(changed(&mut s, telemetry(&[(3, "temp", KvValue::Long(1))])).is_empty());
}

#[tokio::test]
async fn deletions_reach_attribute_subscriptions_as_empty_values() {
    let mut s = session(10);
    let id = DEVICE.0.to_string();
    run(
        &mut s,
        json!({"attrSubCmds": [
            {"cmdId": 1, "entityType": "DEVICE", "entityId": id, "scope": "SHARED_SCOPE"},
            {"cmdId": 2, "entityType": "DEVICE", "entityId": id, "scope": "SERVER_SCOPE", "keys": "a"}]}),
    )
    .await
    .expect("runs");
    let got = changed(
        &mut s,
        Change::AttributesDeleted {
            device: DEVICE,
            scope: AttributeScope::Shared,
            keys: vec!["a".to_owned(), "b".to_owned()].into(),
        },
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["data"], json!({"a": [[0, ""]], "b": [[0, ""]]}));
}
