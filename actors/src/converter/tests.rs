use std::collections::BTreeMap;
use std::sync::Arc;

use rhai::Scope;

use super::output::{Entity, TelemetryRecord};
use super::*;
use crate::model::{KvEntry, KvValue};

fn runtime() -> ConverterRuntime {
    ConverterRuntime::new(&Limits::default())
}

/// Runs a snippet and shows its value as Rhai prints it.
fn eval(rt: &ConverterRuntime, script: &str) -> Result<String, ConvertError> {
    let ast = rt.compile(script)?;
    let mut scope = Scope::new();
    scope.push_constant("JSON", helpers::JsonApi);
    rt.run(&ast, &mut scope).map(|v| {
        if v.is_blob() {
            format!("{:?}", v.cast::<rhai::Blob>())
        } else {
            v.to_string()
        }
    })
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn every_helper_behaves_as_in_tbel() {
    let cases: &[(&str, &str)] = &[
        (r#"decodeToString(stringToBytes("héllo"))"#, "héllo"),
        (
            r#"decodeToJson(stringToBytes("{\"a\":[1,2.5]}")).a[1]"#,
            "2.5",
        ),
        (r#"stringToBytes("AB")"#, "[65, 66]"),
        ("bytesToString([72, 105])", "Hi"),
        (r#"btoa("Hello, world")"#, "SGVsbG8sIHdvcmxk"),
        (r#"atob("SGVsbG8sIHdvcmxk")"#, "Hello, world"),
        (r#"base64ToBytes("AQID")"#, "[1, 2, 3]"),
        ("bytesToBase64([1, 2, 3])", "AQID"),
        ("bytesToHex([186, 171, 0, 255])", "BAAB00FF"),
        (r#"hexToBytes("0x01FF")"#, "[1, 255]"),
        (r#"parseInt("42")"#, "42"),
        (r#"parseInt("-0x1F")"#, "-31"),
        (r#"parseInt("ff", 16)"#, "255"),
        (r#"parseInt("1010", 2)"#, "10"),
        (r#"parseLong("9007199254740993")"#, "9007199254740993"),
        (r#"parseFloat("25.7\n")"#, "25.7"),
        (r#"parseDouble("1e3")"#, "1000.0"),
        (r#"parseHexToInt("BBAA")"#, "48042"),
        (r#"parseHexToInt("BBAA", false)"#, "43707"),
        (r#"parseHexToInt("FFFFFFFF")"#, "-1"),
        (r#"parseLittleEndianHexToInt("BBAA")"#, "43707"),
        (r#"parseBigEndianHexToInt("BBAA")"#, "48042"),
        (r#"parseHexToLong("FFFFFFFFFF")"#, "1099511627775"),
        (r#"parseLittleEndianHexToLong("0100000000000000")"#, "1"),
        (r#"parseHexToFloat("41C80000")"#, "25.0"),
        (r#"parseLittleEndianHexToFloat("0000C841")"#, "25.0"),
        (r#"parseHexToDouble("4039000000000000")"#, "25.0"),
        ("parseBytesToInt([0, 0, 1, 2], 2, 2)", "258"),
        ("parseBytesToInt([0, 0, 1, 2], 2, 2, false)", "513"),
        ("parseBytesToInt([255, 255, 255, 255], 0, 4)", "-1"),
        ("parseBytesToLong([0, 0, 0, 0, 0, 0, 1, 0], 0, 8)", "256"),
        ("parseBytesToFloat([65, 200, 0, 0], 0)", "25.0"),
        ("parseBytesToDouble([64, 57, 0, 0, 0, 0, 0, 0], 0)", "25.0"),
        ("toFixed(0.345, 1)", "0.3"),
        ("toFixed(0.345, 2)", "0.35"),
        ("toFixed(-2.5, 0)", "-3.0"),
        (r#"padStart("7", 3, "0")"#, "007"),
        (r#"padEnd("ab", 5, "xy")"#, "abxyx"),
        ("isNaN(0.0 / 0.0)", "true"),
        (r#"isNaN("12.5")"#, "false"),
        (r#"isNaN("abc")"#, "true"),
        (r#"isBinary("1010")"#, "true"),
        (r#"isBinary("102")"#, "false"),
        (r#"isHexadecimal("0xBEEF")"#, "true"),
        (r#"isHexadecimal("XYZ")"#, "false"),
        (
            r#"toFlatMap(#{a: #{b: 1, c: [5, 6]}, d: "x"}).to_json()"#,
            r#"{"a.b":1,"a.c.0":5,"a.c.1":6,"d":"x"}"#,
        ),
        (r#"toFlatMap(#{a: #{b: 1}}, false).to_json()"#, r#"{"b":1}"#),
        (
            r#"toFlatMap(#{a: #{b: 1}, s: 2}, ["s"]).to_json()"#,
            r#"{"a.b":1}"#,
        ),
        (r#"JSON.parse("{\"k\":true}").k"#, "true"),
        (r#"JSON.stringify(#{k: [1, "two"]})"#, r#"{"k":[1,"two"]}"#),
        (r#""a,b".length"#, "3"),
        (r#"[1, 2].length"#, "2"),
        (r#""x\"y".replaceAll("\"", "")"#, "xy"),
    ];
    let rt = runtime();
    for (script, want) in cases {
        let got = eval(&rt, script);
        assert_eq!(got.as_deref(), Ok(*want), "{script}");
    }
}

#[test]
fn helpers_fail_with_a_message_naming_them() {
    let cases: &[(&str, &str)] = &[
        (
            r#"parseInt("12x")"#,
            "parseInt: not a number in base 10: 12x",
        ),
        (r#"parseInt("1", 99)"#, "parseInt: radix must be 2 to 36"),
        (
            r#"hexToBytes("ABC")"#,
            "hexToBytes: hex string must have an even length",
        ),
        (
            "parseBytesToInt([1, 2], 0, 5)",
            "parseBytesToInt: length must be 1 to 4",
        ),
        (
            "parseBytesToInt([1, 2], 1, 2)",
            "parseBytesToInt: offset 1 + length 2 is past the end",
        ),
        (r#"atob("***")"#, "atob: not base64"),
        (
            r#"decodeToJson(stringToBytes("{oops"))"#,
            "decodeToJson: not JSON",
        ),
        (r#"raiseError("bad frame")"#, "bad frame"),
    ];
    let rt = runtime();
    for (script, want) in cases {
        let got = eval(&rt, script).expect_err(script);
        assert!(got.message.contains(want), "{script}: {got}");
    }
}

#[test]
fn the_coap_guides_csv_decoder_runs() {
    let rt = runtime();
    let script = include_str!("../../../examples/converters/coap-csv.rhai");
    // `echo -e '...' | coap-client ... -f-` sends the line with its newline.
    let out = rt
        .uplink(
            script,
            b"SN-001,default,temperature,25.7,humidity,69\n",
            &meta(&[]),
        )
        .expect("converts");
    assert_eq!(
        out,
        [UplinkRecord {
            entity: Entity::Device {
                name: "SN-001".into(),
                device_type: "default".into()
            },
            customer_name: None,
            group_name: None,
            attributes: vec![],
            telemetry: vec![TelemetryRecord {
                ts: None,
                values: vec![
                    KvEntry::new("humidity", KvValue::Double(69.0)),
                    KvEntry::new("temperature", KvValue::Double(25.7)),
                ]
            }]
        }]
    );
}

#[test]
fn the_json_and_hex_examples_run() {
    let rt = runtime();
    let out = rt
        .uplink(
            include_str!("../../../examples/converters/json-uplink.rhai"),
            br#"{"serialNumber":"SN-111","model":"Model A","temperature":42,"humidity":80.5}"#,
            &meta(&[("integrationName", "Test integration")]),
        )
        .expect("converts");
    assert_eq!(
        out[0].entity,
        Entity::Device {
            name: "SN-111".into(),
            device_type: "thermostat".into()
        }
    );
    assert!(out[0].attributes.contains(&KvEntry::new(
        "integrationName",
        KvValue::String("Test integration".into())
    )));
    assert!(
        out[0].telemetry[0]
            .values
            .contains(&KvEntry::new("temperature", KvValue::Long(42)))
    );

    let out = rt
        .uplink(
            include_str!("../../../examples/converters/hex-records.rhai"),
            br#"[{"ts":1600000000000,"value":"005F00E1"},{"ts":1600000060000,"value":"005E00DF"}]"#,
            &meta(&[("deviceName", "Sensor B")]),
        )
        .expect("converts");
    assert_eq!(out[0].telemetry.len(), 2);
    assert_eq!(out[0].telemetry[1].ts, Some(1_600_000_060_000));
    assert_eq!(
        out[0].telemetry[0].values,
        [
            KvEntry::new("battery", KvValue::Long(95)),
            KvEntry::new("temperature", KvValue::Double(22.5)),
        ]
    );
}

#[test]
fn the_downlink_example_runs() {
    let rt = runtime();
    let msg = super::helpers::json_to_dynamic(r#"{"uploadFrequency":60}"#, "test").expect("json");
    let out = rt
        .downlink(
            include_str!("../../../examples/converters/mqtt-downlink.rhai"),
            msg,
            "ATTRIBUTES_UPDATED",
            &meta(&[("deviceName", "sensorA"), ("firmwareVersion", "1.2.3")]),
            &meta(&[]),
        )
        .expect("converts");
    assert_eq!(
        out.content,
        DownlinkContent::Json(r#"{"firmwareVersion":"1.2.3","tempFreq":60}"#.into())
    );
    assert_eq!(
        out.metadata,
        [("topic".into(), "temp-sensor/sensorA/upload".into())]
    );
}

#[test]
fn converter_output_rules() {
    let ok: &[(&str, usize)] = &[
        (r#"#{deviceName: "d", telemetry: #{t: 1}}"#, 1),
        (r#"[#{deviceName: "a"}, #{deviceName: "b"}]"#, 2),
        (
            r#"#{assetName: "building", assetType: "site", attributes: #{floors: 3}}"#,
            1,
        ),
        (
            r#"#{deviceName: "d", telemetry: #{ts: 5, values: #{t: 1}}}"#,
            1,
        ),
        (
            r#"#{deviceName: "d", telemetry: [#{ts: 5, values: #{t: 1}}, #{u: 2}]}"#,
            1,
        ),
    ];
    let bad: &[(&str, &str)] = &[
        (
            "42",
            "the converter must return an object or an array of objects, got a number",
        ),
        (
            r#"#{deviceType: "x"}"#,
            "deviceName (or assetName) must be a non-empty string",
        ),
        (
            r#"#{deviceName: ""}"#,
            "deviceName (or assetName) must be a non-empty string",
        ),
        (
            r#"#{deviceName: 5}"#,
            "deviceName must be a string, got a number",
        ),
        (
            r#"#{deviceName: "d", telemetry: 5}"#,
            "telemetry must be an object of values",
        ),
        (
            r#"#{deviceName: "d", telemetry: [[1]]}"#,
            "telemetry must be an object of values",
        ),
        (
            r#"#{deviceName: "d", telemetry: #{ts: "x", values: #{}}}"#,
            "telemetry.ts must be a number",
        ),
        (
            r#"#{deviceName: "d", attributes: [1]}"#,
            "attributes must be an object, got an array",
        ),
        (
            r#"#{deviceName: "d", telemetry: #{t: 1.0 / 0.0}}"#,
            "telemetry.t is not a finite number",
        ),
        (
            r#"#{deviceName: "d", customerName: 1}"#,
            "customerName must be a string",
        ),
    ];
    let rt = runtime();
    for (script, count) in ok {
        let out = rt.uplink(script, b"", &meta(&[])).expect(script);
        assert_eq!(out.len(), *count, "{script}");
    }
    let typed = rt
        .uplink(
            r#"#{deviceName: "d", deviceType: "", telemetry: #{b: true, l: 1, d: 1.5, s: "x", j: #{a: [1]}, n: ()}}"#,
            b"",
            &meta(&[]),
        )
        .expect("converts");
    assert_eq!(
        typed[0].entity,
        Entity::Device {
            name: "d".into(),
            device_type: "default".into()
        }
    );
    assert_eq!(
        typed[0].telemetry[0].values,
        [
            KvEntry::new("b", KvValue::Bool(true)),
            KvEntry::new("d", KvValue::Double(1.5)),
            KvEntry::new("j", KvValue::Json(r#"{"a":[1]}"#.into())),
            KvEntry::new("l", KvValue::Long(1)),
            KvEntry::new("s", KvValue::String("x".into())),
        ]
    );
    for (script, want) in bad {
        let err = rt.uplink(script, b"", &meta(&[])).expect_err(script);
        assert!(err.message.contains(want), "{script}: {err}");
    }
}

#[test]
fn limits_stop_a_runaway_script_for_that_message_only() {
    let rt = ConverterRuntime::new(&Limits {
        max_operations: u64::MAX,
        max_wall_time: std::time::Duration::from_millis(50),
        ..Limits::default()
    });
    let err = rt.uplink("loop {}", b"", &meta(&[])).expect_err("stopped");
    assert!(err.message.contains("time limit"), "{err}");
    let rt = runtime();
    let err = rt
        .uplink("let x = 0; loop { x += 1; }", b"", &meta(&[]))
        .expect_err("stopped");
    assert!(err.message.contains("operations limit"), "{err}");
    let err = rt
        .uplink(r#"let s = "x"; loop { s += s; }"#, b"", &meta(&[]))
        .expect_err("stopped");
    assert!(err.message.to_lowercase().contains("string"), "{err}");
    let err = rt
        .uplink("fn f(n) { f(n + 1) } f(0)", b"", &meta(&[]))
        .expect_err("stopped");
    assert!(!err.message.is_empty());
    // The runtime is fine afterwards.
    assert!(rt.uplink(r#"#{deviceName: "ok"}"#, b"", &meta(&[])).is_ok());
}

#[test]
fn errors_carry_their_position_and_scripts_are_compiled_once() {
    let rt = runtime();
    let err = rt.compile("let x = ;").expect_err("syntax");
    assert_eq!(err.position.map(|p| p.0), Some(1));
    assert!(err.message.starts_with("syntax error"), "{err}");
    let err = rt
        .uplink("let a = 1;\nraiseError(\"no \" + a);", b"", &meta(&[]))
        .expect_err("raised");
    assert_eq!(err.message, "no 1");
    assert_eq!(err.position.map(|p| p.0), Some(2));

    let script = r#"#{deviceName: "d"}"#;
    let first = rt.compile(script).expect("compiles");
    let again = rt.compile(script).expect("cached");
    assert!(
        Arc::ptr_eq(&first, &again),
        "the same text is compiled once"
    );
    let changed = rt.compile(r#"#{deviceName: "e"}"#).expect("compiles");
    assert!(!Arc::ptr_eq(&first, &changed));
}

#[test]
fn metadata_and_payload_reach_the_script() {
    let rt = runtime();
    let out = rt
        .uplink(
            r#"#{deviceName: metadata["Option:uri"], attributes: #{size: payload.len(), first: payload[0]}}"#,
            &[7, 8, 9],
            &meta(&[("Option:uri", "/i/abc")]),
        )
        .expect("converts");
    assert_eq!(
        out[0].entity,
        Entity::Device {
            name: "/i/abc".into(),
            device_type: "default".into()
        }
    );
    assert_eq!(
        out[0].attributes,
        [
            KvEntry::new("first", KvValue::Long(7)),
            KvEntry::new("size", KvValue::Long(3)),
        ]
    );
}
