//! Storage backends behind the `Store`, `DeviceRegistry` and `DeviceRecords` ports. Every
//! backend passes the shared contract suite in `contract`.

pub mod catalog;
pub mod clickhouse;
pub mod directory;
pub mod embedded;
pub mod paused;
pub mod registry;

#[cfg(test)]
pub mod contract;

use std::collections::BTreeMap;

use actors::model::{KvValue, now_ms};
use actors::ports::LatestValue;

/// The latest values as ThingsBoard answers them, from what a backend found per key: every
/// key when none were asked for; otherwise every requested key, a missing one with no value
/// and the time of the request.
pub(crate) fn latest_answer(
    mut found: BTreeMap<String, (i64, KvValue)>,
    keys: Option<&[String]>,
) -> Vec<LatestValue> {
    match keys {
        None => found
            .into_iter()
            .map(|(key, (ts, value))| LatestValue {
                key,
                ts,
                value: Some(value),
            })
            .collect(),
        Some(keys) => keys
            .iter()
            .map(|key| match found.remove(key) {
                Some((ts, value)) => LatestValue {
                    key: key.clone(),
                    ts,
                    value: Some(value),
                },
                None => LatestValue {
                    key: key.clone(),
                    ts: now_ms(),
                    value: None,
                },
            })
            .collect(),
    }
}
