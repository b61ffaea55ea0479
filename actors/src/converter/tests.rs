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
            r#"parseInt: not a number in base 10: "12x""#,
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
    // Time enough for the operations limit to come first, even unoptimised.
    let rt = ConverterRuntime::new(&Limits {
        max_wall_time: std::time::Duration::from_secs(120),
        ..Limits::default()
    });
    let err = rt
        .uplink("let x = 0; loop { x += 1; }", b"", &meta(&[]))
        .expect_err("stopped");
    assert!(err.message.contains("operations limit"), "{err}");
    let err = rt
        .uplink(r#"let s = "x"; loop { s += s; }"#, b"", &meta(&[]))
        .expect_err("stopped");
    assert!(err.message.to_lowercase().contains("string"), "{err}");
    // Recursion stops at the call-depth limit (32 calls), long before the operations limit:
    // the same script 40 calls deep runs when the depth limit is higher.
    let deep = r#"fn f(n) { if n < 40 { f(n + 1) } else { n } } #{deviceName: "d" + f(0)}"#;
    let err = rt.uplink(deep, b"", &meta(&[])).expect_err("stopped");
    assert!(err.message.contains("Stack overflow"), "{err}");
    assert!(!err.message.contains("operations limit"), "{err}");
    let deeper = ConverterRuntime::new(&Limits {
        max_call_levels: 64,
        ..Limits::default()
    });
    assert!(deeper.uplink(deep, b"", &meta(&[])).is_ok());
    let err = rt
        .uplink("fn f(n) { f(n + 1) } f(0)", b"", &meta(&[]))
        .expect_err("stopped");
    assert!(err.message.contains("Stack overflow"), "{err}");
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

/// Limits small enough that every case below is quick: strings of 1 000 bytes, arrays of 100
/// items, maps of 10 entries.
fn small() -> ConverterRuntime {
    ConverterRuntime::new(&Limits {
        max_string_size: 1000,
        max_array_size: 100,
        max_map_size: 10,
        ..Limits::default()
    })
}

/// Runs `script` as an uplink converter on `payload` and returns its error.
fn refused(rt: &ConverterRuntime, script: &str, payload: &[u8]) -> String {
    match rt.uplink(script, payload, &meta(&[])) {
        Ok(out) => panic!("{script}: not refused, made {out:?}"),
        Err(e) => e.message,
    }
}

#[test]
fn helpers_check_the_size_of_what_they_make_before_they_make_it() {
    // (script, payload, the start of the error)
    let cases: &[(&str, &[u8], &str)] = &[
        (
            r#"padEnd("x", 1000000000000, "y")"#,
            b"",
            "padEnd: the result would be 1000000000000 bytes, over the string limit of 1000 bytes",
        ),
        (
            r#"padStart("x", 9223372036854775807, "yz")"#,
            b"",
            "padStart: the result would be",
        ),
        (
            r#"padEnd("x", 600, "é")"#,
            b"",
            "padEnd: the result would be 1199 bytes",
        ),
        (
            r#"let s = "x"; s.pad(100000, "y"); s"#,
            b"",
            "pad: the result would be 100000 bytes",
        ),
        (
            r#"let s = "a"; s.pad(1000, "a"); s.replace("a", "bb"); s"#,
            b"",
            "replace: the result would be 2000 bytes",
        ),
        (
            r#"let s = "a"; s.pad(1000, "a"); s.replaceAll("a", "bb")"#,
            b"",
            "replaceAll: the result would be 2000 bytes",
        ),
        (
            r#"let s = "a"; s.pad(200, "a"); stringToBytes(s)"#,
            b"",
            "stringToBytes: the result would have 200 items, over the array limit of 100",
        ),
        (
            r#"let s = "0"; s.pad(400, "0"); hexToBytes(s)"#,
            b"",
            "hexToBytes: the result would have 200 items",
        ),
        (
            r#"let s = "A"; s.pad(400, "A"); base64ToBytes(s)"#,
            b"",
            "base64ToBytes: the result would have 300 items",
        ),
        (
            r#"let s = "a"; s.pad(900, "a"); btoa(s)"#,
            b"",
            "btoa: the result would be 1200 bytes",
        ),
        (
            r#"let s = "a"; s.pad(900, "a"); bytesToBase64(s)"#,
            b"",
            "bytesToBase64: the result would be 1200 bytes",
        ),
        (
            r#"let s = "a"; s.pad(600, "a"); bytesToHex(s)"#,
            b"",
            "bytesToHex: the result would be 1200 bytes",
        ),
        (
            "decodeToString(payload)",
            &[b'x'; 2000],
            "decodeToString: the result would be 2000 bytes",
        ),
        (
            "decodeToJson(payload)",
            b"[0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0]",
            "decodeToJson: the result would have 150 items",
        ),
        (
            r#"let s = "[0"; s.pad(300, ",0"); JSON.parse(s + "]")"#,
            b"",
            "JSON.parse: the result would have 150 items",
        ),
        (
            r#"let a = []; a.pad(100, "xxxxxxxxxx"); JSON.stringify(a)"#,
            b"",
            "JSON.stringify: the result would be over the string limit of 1000 bytes",
        ),
        (
            r#"let k = "k"; k.pad(300, "k"); let m = #{}; m[k] = [1, 2, 3, 4, 5]; toFlatMap(m)"#,
            b"",
            "toFlatMap: the result would be 1208 bytes, over the string limit",
        ),
        (
            "let m = #{a: []}; m.a.pad(20, 1); toFlatMap(m)",
            b"",
            "toFlatMap: the result would have 11 entries, over the map limit of 10",
        ),
        (
            r#"parseHexToInt("00000000000000000000")"#,
            b"",
            "parseHexToInt: at most 4 bytes",
        ),
        (r#"hexToBytes("aé1")"#, b"", "hexToBytes: not a hex string"),
    ];
    let rt = small();
    for (script, payload, want) in cases {
        let got = refused(&rt, script, payload);
        assert!(got.starts_with(want), "{script}: {got}");
    }
    // The runtime serves on.
    assert!(rt.uplink(r#"#{deviceName: "ok"}"#, b"", &meta(&[])).is_ok());
}

#[test]
fn sizes_past_any_memory_are_refused_under_the_default_limits_too() {
    let cases: &[(&str, &str)] = &[
        (
            r#"padEnd("x", 1000000000000, "y")"#,
            "padEnd: the result would be 1000000000000 bytes, over the string limit of 1048576 bytes",
        ),
        (
            r#"let s = "a"; s.pad(1000000, "a"); let t = s; s.replace("a", t); s"#,
            "replace: the result would be 1000000000000 bytes",
        ),
        (
            // 2^48 copies of a 65 535-byte blob: Rhai's own check multiplies unchecked and
            // wraps to zero.
            "let a = []; a.pad(281474976710656, blob(65535)); a.len()",
            "pad: the result would be over the array limit",
        ),
    ];
    // Time enough for the sizes to be the limit that fails, even unoptimised.
    let rt = ConverterRuntime::new(&Limits {
        max_wall_time: std::time::Duration::from_secs(120),
        ..Limits::default()
    });
    for (script, want) in cases {
        let got = refused(&rt, script, b"");
        assert!(got.starts_with(want), "{script}: {got}");
    }
}

#[test]
fn helpers_refuse_values_nested_past_their_depth() {
    let deep = "let a = #{}; for i in 0..200 { a = #{x: a}; }";
    let cases: &[(&str, &str)] = &[
        ("toFlatMap(a)", "toFlatMap: nested deeper than 128 levels"),
        (
            "JSON.stringify(a)",
            "JSON.stringify: nested deeper than 128 levels",
        ),
        ("a.to_json()", "to_json: nested deeper than 128 levels"),
        (
            r#"#{deviceName: "d", telemetry: #{v: a}}"#,
            "telemetry.v: nested deeper than 128 levels",
        ),
    ];
    let rt = runtime();
    for (tail, want) in cases {
        let script = format!("{deep} {tail}");
        let got = refused(&rt, &script, b"");
        assert!(got.starts_with(want), "{tail}: {got}");
    }
}

#[test]
fn padding_with_nothing_ends() {
    // Rhai's own `pad` looped forever on an empty padding string, holding its thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let out = runtime().uplink(
            r#"let s = "x"; s.pad(10, ""); #{deviceName: s + padEnd("y", 5, "")}"#,
            b"",
            &meta(&[]),
        );
        let _ = tx.send(out);
    });
    let out = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the script ended")
        .expect("converts");
    assert_eq!(
        out[0].entity,
        Entity::Device {
            name: "xy".into(),
            device_type: "default".into()
        }
    );
}

#[test]
fn the_deadline_holds_at_every_operation_not_every_thousand() {
    // With no time at all, the first operation is already late: a handful of operations (a
    // helper, a sort) used to run on until the 1 024th.
    let rt = ConverterRuntime::new(&Limits {
        max_wall_time: std::time::Duration::ZERO,
        max_operations: u64::MAX,
        ..Limits::default()
    });
    for script in [
        r#"let s = padEnd("x", 1000, "y"); #{deviceName: s}"#,
        r#"let a = []; a.pad(1000, "z"); a.sort(); #{deviceName: "d"}"#,
    ] {
        let err = rt.uplink(script, b"", &meta(&[])).expect_err(script);
        assert!(err.message.contains("time limit"), "{script}: {err}");
    }
}

#[test]
fn converter_made_names_are_checked() {
    let long = "n".repeat(crate::model::MAX_DEVICE_NAME_CHARS + 1);
    let cases: Vec<(String, &str)> = vec![
        (
            r#"#{deviceName: "bad\nERROR forged"}"#.into(),
            "deviceName: device name must not contain control characters",
        ),
        (
            r#"#{deviceName: "\x1b[31mred"}"#.into(),
            "deviceName: device name must not contain control characters",
        ),
        (
            format!(r#"#{{deviceName: "{long}"}}"#),
            "deviceName: device name is longer than 255 characters",
        ),
        (
            r#"#{deviceName: "ok", deviceType: "t\r\nERROR x"}"#.into(),
            "deviceType: device type must not contain control characters",
        ),
        (
            r#"#{assetName: "a\nb"}"#.into(),
            "assetName: asset name must not contain control characters",
        ),
    ];
    let rt = runtime();
    for (script, want) in cases {
        let got = refused(&rt, &script, b"");
        assert_eq!(got, want, "{script}");
    }
}

/// The array, map and call-depth limits each stop a script with an error that names that
/// limit, and only past the configured size: under it the same script runs.
#[test]
fn array_map_and_call_depth_limits_are_each_told_apart() {
    // Deep calls in an unoptimised build need more than a test thread's stack, as they get
    // on the converter pool's threads.
    std::thread::Builder::new()
        .stack_size(64 * 1024 * 1024)
        .spawn(limits_told_apart)
        .expect("thread")
        .join()
        .expect("passed");
}

fn limits_told_apart() {
    let rt = ConverterRuntime::new(&Limits {
        max_array_size: 100,
        max_map_size: 10,
        // 16: neither Rhai's default of 8 (debug builds) nor of 64 (release builds).
        max_call_levels: 16,
        // Time enough for the limit under test to be the one that fails, even unoptimised.
        max_wall_time: std::time::Duration::from_secs(120),
        ..Limits::default()
    });
    let array = |n: usize| {
        format!(
            "let a = []; for i in 0..{n} {{ a.push(i); }} #{{deviceName: \"d\", telemetry: #{{n: a.len()}}}}"
        )
    };
    let map = |n: usize| {
        format!(
            "let m = #{{}}; for i in 0..{n} {{ m[`k${{i}}`] = i; }} #{{deviceName: \"d\", telemetry: #{{n: m.len()}}}}"
        )
    };
    let depth = |n: usize| {
        format!(
            "fn f(n) {{ if n == 0 {{ 0 }} else {{ 1 + f(n - 1) }} }} #{{deviceName: \"d\", telemetry: #{{n: f({n})}}}}"
        )
    };
    for script in [array(100), map(10), depth(12)] {
        rt.uplink(&script, b"", &meta(&[]))
            .unwrap_or_else(|e| panic!("{script}: within the limits, but {e}"));
    }
    let cases = [
        (array(101), "size of array"),
        (map(11), "size of object map"),
        (depth(30), "stack overflow"),
    ];
    for (script, want) in &cases {
        let error = refused(&rt, script, b"").to_lowercase();
        assert!(error.contains(want), "{script}: {error}");
        for (_, other) in cases.iter().filter(|(_, w)| w != want) {
            assert!(!error.contains(other), "{script}: {error}");
        }
        assert!(!error.contains("operations") && !error.contains("time limit"));
    }
}
