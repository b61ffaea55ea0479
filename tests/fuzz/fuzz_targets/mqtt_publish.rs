//! The MQTT publish path's hand-written parts on arbitrary bytes: the first-bytes reader that
//! runs before the version adapters (protocol level, connection cap answers), then a PUBLISH's topic and
//! payload as the device API takes them (topic → uplink kind → ThingsBoard JSON parser). None
//! may panic; ntex-mqtt's own codec is fuzzed upstream.
#![no_main]

use actors::ingress::Uplink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = engine::transport::mqtt::opening(data);
    // A topic, a zero byte, a payload: as a PUBLISH carries them.
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let topic = std::str::from_utf8(topic).unwrap_or("v1/devices/me/telemetry");
    match engine::transport::mqtt::uplink_of(topic) {
        Some(Uplink::Telemetry) => {
            let _ = actors::payload::parse_telemetry(payload, 1);
        }
        Some(Uplink::Attributes) => {
            let _ = actors::payload::parse_attributes(payload);
        }
        _ => {}
    }
});
