//! The distinct keys each device has sent, so the ingress can cap them
//! (`limits.max_keys_per_device`): a device that invents a new key with every message would
//! otherwise grow the key dictionaries, the latest-value tables and every key listing without
//! bound (one device reached 114,976 keys).
//!
//! Keys are kept as 64-bit hashes (SipHash with a per-process random key, so a peer cannot aim
//! for collisions; a collision only lets one key pass as one already known), in sets sharded by
//! device. Memory, measured: 19 bytes per key for a device at 1,000 keys, about 300 bytes for a
//! device with 10 keys (3 MiB for 10,000 such devices); at most about devices × 2 × limit × 20
//! bytes, 40 KiB per device at the default limit of 1,000 time-series and 1,000 attribute keys.
//! Counts start with the process: keys stored before a restart, or sent to another node, are
//! not counted (each node bounds what it admits).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use metrics::{Gauge, gauge};
use parking_lot::Mutex;

use crate::metrics::INGRESS_TRACKED_KEYS;
use crate::model::DeviceId;

/// Which key space a message's keys belong to; each has its own limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Telemetry,
    Attributes,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Telemetry => "time-series",
            KeyKind::Attributes => "attribute",
        })
    }
}

/// Shards of the device map: enough that ingress threads rarely wait for one another.
const SHARDS: usize = 64;

/// The set of a device's key hashes. The values are already hashes: store them as they are.
type KeySet = HashSet<u64, BuildHasherDefault<Identity>>;

#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Default)]
struct Known {
    telemetry: KeySet,
    attributes: KeySet,
}

impl Known {
    fn of(&mut self, kind: KeyKind) -> &mut KeySet {
        match kind {
            KeyKind::Telemetry => &mut self.telemetry,
            KeyKind::Attributes => &mut self.attributes,
        }
    }
}

/// The keys of every device, bounded per device and per kind. Shared by every ingress of the
/// process, whatever the transport.
pub struct DeviceKeys {
    /// Keys a device may have per kind; 0 switches the limit (and the tracking) off.
    max: usize,
    hasher: RandomState,
    shards: Box<[Mutex<HashMap<DeviceId, Known>>]>,
    tracked: Gauge,
}

impl DeviceKeys {
    pub fn new(max_per_device: usize) -> DeviceKeys {
        DeviceKeys {
            max: max_per_device,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            tracked: gauge!(INGRESS_TRACKED_KEYS),
        }
    }

    /// Admits one message's keys: records those the device did not have, or, when they would
    /// take it past the limit, records none and says so. Keys it has always pass.
    pub fn admit<'a>(
        &self,
        device: DeviceId,
        kind: KeyKind,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), TooManyKeys> {
        if self.max == 0 {
            return Ok(());
        }
        let shard = &self.shards[shard_of(device)];
        let mut devices = shard.lock();
        let known = devices.entry(device).or_default().of(kind);
        // Usually every key is known: nothing is allocated then.
        let mut added: Vec<u64> = Vec::new();
        for key in keys {
            let hash = self.hasher.hash_one(key);
            if known.insert(hash) {
                added.push(hash);
                if known.len() > self.max {
                    for hash in &added {
                        known.remove(hash);
                    }
                    return Err(TooManyKeys {
                        kind,
                        max: self.max,
                    });
                }
            }
        }
        drop(devices);
        if !added.is_empty() {
            self.tracked.increment(added.len() as f64);
        }
        Ok(())
    }
}

/// A message would take its device past `limits.max_keys_per_device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooManyKeys {
    pub kind: KeyKind,
    pub max: usize,
}

fn shard_of(device: DeviceId) -> usize {
    // UUIDv5 bytes are already uniformly spread.
    device.0.as_bytes()[15] as usize % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantId;

    fn device(name: &str) -> DeviceId {
        DeviceId::derive(TenantId::from_name("t"), name)
    }

    #[test]
    fn new_keys_pass_up_to_the_limit_and_known_keys_always() {
        let keys = DeviceKeys::new(3);
        let d = device("d");
        let t = KeyKind::Telemetry;
        assert_eq!(keys.admit(d, t, ["a", "b", "a"]), Ok(()));
        assert_eq!(keys.admit(d, t, ["c"]), Ok(()));
        // A message bringing one key too many is refused whole: "a" is known, "d" is not.
        assert_eq!(
            keys.admit(d, t, ["a", "d"]),
            Err(TooManyKeys { kind: t, max: 3 })
        );
        assert_eq!(keys.admit(d, t, ["c", "b", "a"]), Ok(()));
        assert_eq!(
            keys.admit(d, t, ["d"]),
            Err(TooManyKeys { kind: t, max: 3 })
        );
    }

    #[test]
    fn new_keys_move_the_tracked_keys_gauge_and_refused_ones_do_not() {
        let recorded = crate::test_metrics::Recorded::start();
        let keys = DeviceKeys::new(3);
        let d = device("d");
        let t = KeyKind::Telemetry;
        assert_eq!(keys.admit(d, t, ["a", "b"]), Ok(()));
        assert_eq!(keys.admit(d, t, ["a", "b"]), Ok(()));
        assert!(keys.admit(d, t, ["c", "e"]).is_err());
        assert_eq!(recorded.gauge(INGRESS_TRACKED_KEYS, &[]), 2.0);
        assert_eq!(keys.admit(d, t, ["c"]), Ok(()));
        assert_eq!(recorded.gauge(INGRESS_TRACKED_KEYS, &[]), 3.0);
    }

    #[test]
    fn the_refusal_names_the_kind_of_key() {
        use crate::ingress::QuotaError;
        let keys = DeviceKeys::new(1);
        let d = device("d");
        for (kind, words) in [
            (KeyKind::Telemetry, "has 1 time-series keys"),
            (KeyKind::Attributes, "has 1 attribute keys"),
        ] {
            assert_eq!(keys.admit(d, kind, ["a"]), Ok(()));
            let refusal = keys.admit(d, kind, ["b"]).expect_err("over the limit");
            let text = QuotaError::from(refusal).to_string();
            assert!(text.contains(words), "{text}");
        }
    }

    #[test]
    fn kinds_and_devices_count_apart() {
        let keys = DeviceKeys::new(2);
        let (d1, d2) = (device("d1"), device("d2"));
        assert_eq!(keys.admit(d1, KeyKind::Telemetry, ["a", "b"]), Ok(()));
        assert_eq!(keys.admit(d1, KeyKind::Attributes, ["x", "y"]), Ok(()));
        assert_eq!(keys.admit(d2, KeyKind::Telemetry, ["c", "d"]), Ok(()));
        assert!(keys.admit(d1, KeyKind::Telemetry, ["c"]).is_err());
        assert!(keys.admit(d1, KeyKind::Attributes, ["z"]).is_err());
    }

    #[test]
    fn zero_means_no_limit_and_no_tracking() {
        let keys = DeviceKeys::new(0);
        let many: Vec<String> = (0..10_000).map(|i| format!("k{i}")).collect();
        assert_eq!(
            keys.admit(
                device("d"),
                KeyKind::Telemetry,
                many.iter().map(String::as_str)
            ),
            Ok(())
        );
        assert!(keys.shards.iter().all(|s| s.lock().is_empty()));
    }

    #[test]
    fn a_message_over_the_limit_alone_is_refused() {
        let keys = DeviceKeys::new(2);
        assert!(
            keys.admit(device("d"), KeyKind::Telemetry, ["a", "b", "c"])
                .is_err()
        );
        assert_eq!(
            keys.admit(device("d"), KeyKind::Telemetry, ["a", "b"]),
            Ok(())
        );
    }
}
