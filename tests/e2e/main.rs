//! End-to-end tests: the real `engine` binary on loopback ports, real clients on real sockets.
//! One test binary, one module per area.

mod apps;
mod backpressure;
mod claims;
mod converters;
mod dashboards;
mod downlinks;
mod durability;
mod gateway;
mod hostile;
mod http_device_api;
mod integrations;
mod loadgen;
mod mqtt_device_api;
mod production;
mod provisioning;
mod rest_api;
mod sdk;
mod websocket;

use std::path::PathBuf;
use std::time::Duration;

/// Storage is written in batches: reads poll for up to this long. It only bounds a failure (a
/// passing read returns as soon as the data is there), so it is generous for loaded machines.
pub const SETTLE: Duration = Duration::from_secs(60);

pub fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("e2e/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}
