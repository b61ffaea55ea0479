//! The write batch a sink hands to storage: the rows of many messages, flattened and with the
//! latest value per key already reduced, so a store only encodes and sends.
//!
//! The last line of defence for values: one storage cannot give back (a non-finite DOUBLE,
//! which every store reads back as `null`) is left out, counted and logged (rate-limited). The
//! ingress refuses such values; this catches a producer that did not (an older node's record
//! on Kafka, a future code path).

use std::sync::LazyLock;

use foldhash::{HashMap, HashMapExt};

use metrics::counter;
use tracing::warn;

use crate::log_limit::LogLimit;
use crate::metrics::SINK_VALUES_DROPPED;
use crate::model::{AttributeScope, DeviceId, KvEntry, KvValue, Message, MessageBody};

static DROPPED_LOG: LazyLock<LogLimit> =
    LazyLock::new(|| LogLimit::new("sink_value_dropped", 1, 10));

/// Whether storage can take the entry; counts and logs one it cannot.
fn storable(message: &Message, entry: &KvEntry) -> bool {
    if entry.value.is_storable() {
        return true;
    }
    counter!(SINK_VALUES_DROPPED, "reason" => "not_finite").increment(1);
    if let Some(suppressed) = DROPPED_LOG.check() {
        warn!(
            device = %message.device_id,
            key = ?entry.key,
            value = ?entry.value,
            suppressed,
            "value storage cannot give back left out of the batch"
        );
    }
    false
}

#[derive(Clone, Debug, PartialEq)]
pub struct TsRow {
    pub device_id: DeviceId,
    pub key: String,
    pub ts: i64,
    pub value: KvValue,
}

#[derive(Clone, Debug, PartialEq)]
pub struct AttributeRow {
    pub device_id: DeviceId,
    pub scope: AttributeScope,
    pub key: String,
    pub last_update_ts: i64,
    pub value: KvValue,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct WriteBatch {
    /// Every time-series data point, in arrival order.
    pub timeseries: Vec<TsRow>,
    /// Indices into `timeseries` of the newest point per (device, key); a store keeps it only
    /// where it is newer than what it has. See [`WriteBatch::latest`].
    latest: Vec<usize>,
    /// The last update per (device, scope, key), in arrival order.
    pub attributes: Vec<AttributeRow>,
}

impl WriteBatch {
    pub fn from_messages<'a>(messages: impl IntoIterator<Item = &'a Message>) -> WriteBatch {
        let mut batch = WriteBatch::default();
        let mut latest: HashMap<(DeviceId, &str), usize> = HashMap::new();
        let mut attrs: HashMap<(DeviceId, AttributeScope, &str), usize> = HashMap::new();
        for message in messages {
            match &message.body {
                MessageBody::Telemetry(records) => {
                    for record in records {
                        for entry in record.entries.iter().filter(|e| storable(message, e)) {
                            let index = batch.timeseries.len();
                            match latest.get(&(message.device_id, entry.key.as_str())) {
                                Some(&i) if batch.timeseries[batch.latest[i]].ts > record.ts => {}
                                Some(&i) => batch.latest[i] = index,
                                None => {
                                    latest.insert(
                                        (message.device_id, entry.key.as_str()),
                                        batch.latest.len(),
                                    );
                                    batch.latest.push(index);
                                }
                            }
                            batch.timeseries.push(TsRow {
                                device_id: message.device_id,
                                key: entry.key.clone(),
                                ts: record.ts,
                                value: entry.value.clone(),
                            });
                        }
                    }
                }
                MessageBody::Device(_) => {}
                MessageBody::Attributes { scope, entries } => {
                    for entry in entries.iter().filter(|e| storable(message, e)) {
                        let row = AttributeRow {
                            device_id: message.device_id,
                            scope: *scope,
                            key: entry.key.clone(),
                            last_update_ts: message.received_ts,
                            value: entry.value.clone(),
                        };
                        match attrs.get(&(message.device_id, *scope, entry.key.as_str())) {
                            Some(&i) => batch.attributes[i] = row,
                            None => {
                                attrs.insert(
                                    (message.device_id, *scope, entry.key.as_str()),
                                    batch.attributes.len(),
                                );
                                batch.attributes.push(row);
                            }
                        }
                    }
                }
            }
        }
        batch
    }

    /// The newest point per (device, key), in first-seen order.
    pub fn latest(&self) -> impl Iterator<Item = &TsRow> {
        self.latest.iter().map(|&i| &self.timeseries[i])
    }

    /// Data points this batch stores (time-series points plus attribute values).
    pub fn data_points(&self) -> usize {
        self.timeseries.len() + self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timeseries.is_empty() && self.attributes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvEntry, TenantId, TsRecord};

    fn telemetry(device: DeviceId, records: &[(i64, &str, i64)]) -> Message {
        Message {
            tenant_id: TenantId::from_name("t"),
            device_id: device,
            received_ts: 0,
            body: MessageBody::Telemetry(
                records
                    .iter()
                    .map(|(ts, k, v)| TsRecord {
                        ts: *ts,
                        entries: vec![KvEntry::new(*k, KvValue::Long(*v))],
                    })
                    .collect(),
            ),
        }
    }

    #[test]
    fn latest_keeps_the_newest_point_per_key() {
        let d = DeviceId::derive(TenantId::from_name("t"), "d");
        let m1 = telemetry(d, &[(5, "a", 1), (3, "a", 2), (4, "b", 3)]);
        let m2 = telemetry(d, &[(5, "a", 9), (1, "b", 4)]);
        let batch = WriteBatch::from_messages([&m1, &m2]);
        assert_eq!(batch.timeseries.len(), 5);
        let latest: Vec<(&str, i64, &KvValue)> = batch
            .latest()
            .map(|r| (r.key.as_str(), r.ts, &r.value))
            .collect();
        // Equal timestamps: the later arrival wins, as a replacing store would do.
        assert_eq!(
            latest,
            [("a", 5, &KvValue::Long(9)), ("b", 4, &KvValue::Long(3))]
        );
        assert_eq!(batch.data_points(), 5);
    }

    #[test]
    fn values_storage_cannot_give_back_are_left_out() {
        let d = DeviceId::derive(TenantId::from_name("t"), "d");
        let t = TenantId::from_name("t");
        let telemetry = Message {
            tenant_id: t,
            device_id: d,
            received_ts: 0,
            body: MessageBody::Telemetry(vec![TsRecord {
                ts: 1,
                entries: vec![
                    KvEntry::new("inf", KvValue::Double(f64::INFINITY)),
                    KvEntry::new("ok", KvValue::Double(1.5)),
                    KvEntry::new("nan", KvValue::Double(f64::NAN)),
                ],
            }]),
        };
        let attributes = Message {
            tenant_id: t,
            device_id: d,
            received_ts: 0,
            body: MessageBody::Attributes {
                scope: AttributeScope::Client,
                entries: vec![
                    KvEntry::new("ninf", KvValue::Double(f64::NEG_INFINITY)),
                    KvEntry::new("fw", KvValue::Long(2)),
                ],
            },
        };
        let batch = WriteBatch::from_messages([&telemetry, &attributes]);
        let keys: Vec<&str> = batch.timeseries.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["ok"]);
        assert_eq!(batch.latest().count(), 1);
        let keys: Vec<&str> = batch.attributes.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, ["fw"]);
    }

    #[test]
    fn attributes_keep_the_last_update() {
        let d = DeviceId::derive(TenantId::from_name("t"), "d");
        let attr = |v: i64, ts: i64| Message {
            tenant_id: TenantId::from_name("t"),
            device_id: d,
            received_ts: ts,
            body: MessageBody::Attributes {
                scope: AttributeScope::Client,
                entries: vec![KvEntry::new("fw", KvValue::Long(v))],
            },
        };
        let batch = WriteBatch::from_messages([&attr(1, 10), &attr(2, 11)]);
        assert_eq!(batch.attributes.len(), 1);
        assert_eq!(batch.attributes[0].value, KvValue::Long(2));
        assert_eq!(batch.attributes[0].last_update_ts, 11);
    }
}
