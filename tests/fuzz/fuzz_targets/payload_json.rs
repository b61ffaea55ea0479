//! ThingsBoard's telemetry and attribute JSON formats, on arbitrary bytes: the parser must
//! answer Ok or a PayloadError, never panic, and never produce a value that reads back as
//! nothing (a non-finite double).
#![no_main]

use actors::model::KvValue;
use libfuzzer_sys::fuzz_target;

fn check(value: &KvValue) {
    if let KvValue::Double(d) = value {
        assert!(d.is_finite(), "a non-finite double was accepted: {d}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(records) = actors::payload::parse_telemetry(data, 1) {
        for record in &records {
            record.entries.iter().for_each(|kv| check(&kv.value));
        }
    }
    if let Ok(entries) = actors::payload::parse_attributes(data) {
        entries.iter().for_each(|kv| check(&kv.value));
    }
});
