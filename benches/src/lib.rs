//! Benchmarks of the hot paths. The criterion benches live in `benches/benches/`; run them with
//! `cargo bench -p benches`. Sample payloads shared by them are here.

/// ThingsBoard's smart-meter style telemetry, one object without a timestamp.
pub const OBJECT: &str =
    r#"{"pulseCounter":123456,"leakage":false,"batteryLevel":87.5,"model":"SM-100"}"#;

/// The reference's object with every value type.
pub const ALL_TYPES: &str = r#"{"stringKey":"value1","booleanKey":true,"doubleKey":42.0,"longKey":73,
"jsonKey":{"someNumber":42,"someArray":[1,2,3],"someNestedObject":{"key":"value"}}}"#;

/// An array of plain objects.
pub const ARRAY: &str = r#"[{"key1":"value1"},{"key2":true},{"key3":3.5}]"#;

/// The timestamped form.
pub const WITH_TS: &str =
    r#"{"ts":1451649600512,"values":{"pulseCounter":123456,"leakage":false,"batteryLevel":87.5}}"#;

/// An industrial PLC with many keys.
pub fn many_keys(n: usize) -> String {
    let fields: Vec<String> = (0..n)
        .map(|i| format!(r#""tag{i}":{}.25"#, i * 3))
        .collect();
    format!("{{{}}}", fields.join(","))
}
