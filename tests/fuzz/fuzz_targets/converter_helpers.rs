//! The converter helper library under hostile arguments: every TBEL helper is called with
//! fuzzed arguments (huge and negative numbers, long and odd strings, arrays) through a real
//! converter run with the default limits. A run must end in a result or a script error: never a
//! panic, an abort, an allocation past libFuzzer's `-malloc_limit_mb`, or a run past its limits.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use actors::converter::{ConverterRuntime, Limits};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

const HELPERS: &[&str] = &[
    "atob", "base64ToBytes", "btoa", "bytesToBase64", "bytesToHex", "bytesToString",
    "decodeToJson", "decodeToString", "hexToBytes", "isBinary", "isHexadecimal", "isNaN",
    "padEnd", "padStart", "parseBigEndianHexToDouble", "parseBigEndianHexToFloat",
    "parseBigEndianHexToInt", "parseBigEndianHexToLong", "parseBytesToDouble",
    "parseBytesToFloat", "parseBytesToInt", "parseBytesToLong", "parseDouble", "parseFloat",
    "parseHexToDouble", "parseHexToFloat", "parseHexToInt", "parseHexToLong", "parseInt",
    "parseLittleEndianHexToDouble", "parseLittleEndianHexToFloat", "parseLittleEndianHexToInt",
    "parseLittleEndianHexToLong", "parseLong", "raiseError", "replaceAll", "stringToBytes",
    "stringify", "substring", "toFixed", "toFlatMap", "toLowerCase", "toUpperCase",
];

#[derive(Arbitrary, Debug)]
enum Arg {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Payload,
    Repeat(String, u16),
    Array(Vec<i64>),
}

impl Arg {
    fn script(&self) -> String {
        match self {
            Arg::Int(i) => format!("{i}"),
            Arg::Float(f) if f.is_finite() => format!("{f:?}"),
            Arg::Float(_) => "0.5".to_owned(),
            Arg::Bool(b) => format!("{b}"),
            Arg::Str(s) => format!("{s:?}"),
            Arg::Payload => "payload".to_owned(),
            Arg::Repeat(s, n) => format!("{s:?}.pad({n}, \"x\")"),
            Arg::Array(v) => format!("{v:?}"),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Call {
    helper: u8,
    args: Vec<Arg>,
    payload: Vec<u8>,
}

fn runtime() -> &'static ConverterRuntime {
    static RUNTIME: OnceLock<ConverterRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| ConverterRuntime::new(&Limits::default()))
}

fuzz_target!(|call: Call| {
    let helper = HELPERS[usize::from(call.helper) % HELPERS.len()];
    let args: Vec<String> = call.args.iter().take(4).map(Arg::script).collect();
    let script = format!(
        "let r = {helper}({});\n#{{deviceName: \"fuzz\", telemetry: #{{v: 1}}}}",
        args.join(", ")
    );
    // Ok or a script error: both are fine; what must not happen is a panic or an abort.
    let _ = runtime().uplink(&script, &call.payload, &BTreeMap::new());
});
