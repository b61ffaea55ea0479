//! The helper library TBEL users expect, as Rhai functions with TBEL's names and semantics.
//! Every helper is documented with an example in `docs/converters.md`.
//!
//! Bytes are Rhai blobs (`payload` is one); helpers that take bytes also take an array of
//! integers. Errors are script errors with a message naming the helper, so a converter fails
//! for that message only.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rhai::{
    Array, Blob, Dynamic, Engine, EvalAltResult, FLOAT, INT, ImmutableString, Map, Position,
};

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

fn error<T>(message: impl Into<String>) -> Result<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(message.into()),
        Position::NONE,
    )))
}

/// Bytes from a blob, an array of integers (each taken as its low 8 bits, as Java's bytes
/// are), or a string (its UTF-8 bytes).
fn bytes_of(value: &Dynamic, helper: &str) -> Result<Vec<u8>> {
    if value.is_blob() {
        return Ok(value
            .read_lock::<Blob>()
            .map(|b| b.clone())
            .unwrap_or_default());
    }
    if value.is_string() {
        return Ok(value.clone().into_string().unwrap_or_default().into_bytes());
    }
    if value.is_array() {
        let array = value
            .read_lock::<Array>()
            .map(|a| a.clone())
            .unwrap_or_default();
        return array
            .iter()
            .map(|v| {
                v.as_int()
                    .map(|i| (i & 0xff) as u8)
                    .or_else(|_| error(format!("{helper}: bytes must be integers")))
            })
            .collect();
    }
    error(format!(
        "{helper}: expected bytes, got {}",
        value.type_name()
    ))
}

fn hex_bytes(hex: &str, helper: &str) -> Result<Vec<u8>> {
    let hex = hex.trim().trim_start_matches("0x").trim_start_matches("0X");
    if !hex.len().is_multiple_of(2) {
        return error(format!(
            "{helper}: hex string must have an even length: {hex}"
        ));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16)
                .or_else(|_| error(format!("{helper}: not a hex string: {hex}")))
        })
        .collect()
}

/// `length` bytes from `offset`, most significant first.
fn window(
    bytes: &[u8],
    offset: INT,
    length: INT,
    big_endian: bool,
    max: usize,
    helper: &str,
) -> Result<Vec<u8>> {
    let (Ok(offset), Ok(length)) = (usize::try_from(offset), usize::try_from(length)) else {
        return error(format!("{helper}: offset and length must not be negative"));
    };
    if length == 0 || length > max {
        return error(format!("{helper}: length must be 1 to {max}, got {length}"));
    }
    let Some(slice) = bytes.get(offset..offset.saturating_add(length)) else {
        return error(format!(
            "{helper}: offset {offset} + length {length} is past the end ({} bytes)",
            bytes.len()
        ));
    };
    let mut out = slice.to_vec();
    if !big_endian {
        out.reverse();
    }
    Ok(out)
}

fn unsigned(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// A Java `int` from up to 4 bytes: 4 bytes are signed, fewer are unsigned.
fn int_from(bytes: &[u8]) -> INT {
    let v = unsigned(bytes);
    if bytes.len() == 4 {
        INT::from(v as u32 as i32)
    } else {
        v as INT
    }
}

fn long_from(bytes: &[u8]) -> INT {
    unsigned(bytes) as i64
}

fn float_from(bytes: &[u8], helper: &str) -> Result<FLOAT> {
    match bytes.len() {
        4 => Ok(FLOAT::from(f32::from_bits(unsigned(bytes) as u32))),
        n => error(format!("{helper}: a float is 4 bytes, got {n}")),
    }
}

fn double_from(bytes: &[u8], helper: &str) -> Result<FLOAT> {
    match bytes.len() {
        8 => Ok(f64::from_bits(unsigned(bytes))),
        4 => float_from(bytes, helper),
        n => error(format!("{helper}: a double is 8 bytes, got {n}")),
    }
}

fn parse_int_radix(s: &str, radix: INT, helper: &str) -> Result<INT> {
    let Ok(radix) = u32::try_from(radix) else {
        return error(format!("{helper}: bad radix {radix}"));
    };
    if !(2..=36).contains(&radix) {
        return error(format!("{helper}: radix must be 2 to 36, got {radix}"));
    }
    let t = s.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let digits = if radix == 16 {
        digits.trim_start_matches("0x").trim_start_matches("0X")
    } else {
        digits
    };
    match i64::from_str_radix(digits, radix) {
        Ok(v) => Ok(if negative { -v } else { v }),
        Err(_) => error(format!("{helper}: not a number in base {radix}: {s}")),
    }
}

/// TBEL's `parseInt(s)`: decimal, or hex with a `0x` prefix.
fn parse_int_auto(s: &str, helper: &str) -> Result<INT> {
    let t = s.trim();
    let unsigned = t.trim_start_matches(['-', '+']);
    if unsigned.starts_with("0x") || unsigned.starts_with("0X") {
        parse_int_radix(t, 16, helper)
    } else {
        parse_int_radix(t, 10, helper)
    }
}

fn parse_float(s: &str, helper: &str) -> Result<FLOAT> {
    s.trim()
        .parse::<f64>()
        .or_else(|_| error(format!("{helper}: not a number: {s}")))
}

/// Rounds half up to `precision` decimals, as TBEL's `toFixed` (Java's `BigDecimal`) does.
fn to_fixed(value: FLOAT, precision: INT) -> FLOAT {
    let digits = i32::try_from(precision.clamp(0, 15)).unwrap_or(0);
    let factor = 10f64.powi(digits);
    // The decimal text of the value, not its binary expansion, decides ties (0.345 -> 0.35).
    let shifted: f64 = format!("{value}e{digits}")
        .parse()
        .unwrap_or(value * factor);
    let rounded = if shifted >= 0.0 {
        (shifted + 0.5).floor()
    } else {
        (shifted - 0.5).ceil()
    };
    rounded / factor
}

fn pad(s: &str, target: INT, fill: &str, start: bool) -> String {
    let target = usize::try_from(target).unwrap_or(0);
    let len = s.chars().count();
    if len >= target || fill.is_empty() {
        return s.to_owned();
    }
    let padding: String = fill.chars().cycle().take(target - len).collect();
    if start {
        format!("{padding}{s}")
    } else {
        format!("{s}{padding}")
    }
}

/// Nested maps and arrays to one level: `{"a":{"b":1},"c":[5]}` -> `{"a.b":1,"c.0":5}`, or
/// with `path_in_key = false` -> `{"b":1,"c":5}`. Keys in `exclude` are left out.
fn flatten(prefix: &str, value: &Dynamic, path_in_key: bool, exclude: &[String], out: &mut Map) {
    let key_for = |k: &str| {
        if path_in_key && !prefix.is_empty() {
            format!("{prefix}.{k}")
        } else {
            k.to_owned()
        }
    };
    let mut put = |key: String, v: &Dynamic| {
        if v.is_map() || v.is_array() {
            flatten(&key, v, path_in_key, exclude, out);
        } else {
            out.insert(key.into(), v.clone());
        }
    };
    if let Some(map) = value.read_lock::<Map>() {
        for (k, v) in map.iter() {
            if !exclude.iter().any(|e| e == k.as_str()) {
                put(key_for(k), v);
            }
        }
    } else if let Some(array) = value.read_lock::<Array>() {
        for (i, v) in array.iter().enumerate() {
            let key = if path_in_key {
                key_for(&i.to_string())
            } else {
                prefix.rsplit('.').next().unwrap_or(prefix).to_owned()
            };
            put(key, v);
        }
    }
}

fn strings(array: &Array) -> Vec<String> {
    array.iter().map(|v| v.to_string()).collect()
}

/// Parses JSON text into Rhai values (objects are maps, numbers `INT` or `FLOAT`).
pub fn json_to_dynamic(text: &str, helper: &str) -> Result<Dynamic> {
    let value: serde_json::Value =
        serde_json::from_str(text).or_else(|e| error(format!("{helper}: not JSON: {e}")))?;
    rhai::serde::to_dynamic(value)
}

/// Rhai values as JSON text.
pub fn dynamic_to_json(value: &Dynamic) -> Result<String> {
    let json: serde_json::Value = rhai::serde::from_dynamic(value)?;
    Ok(json.to_string())
}

/// The `JSON` object of scripts: `JSON.parse(text)`, `JSON.stringify(value)`.
#[derive(Clone, Copy, Default)]
pub struct JsonApi;

pub fn register(engine: &mut Engine) {
    // Encoding.
    // The payload is a blob: decode it in place, without a copy.
    engine.register_fn("decodeToString", |payload: &mut Blob| -> String {
        String::from_utf8_lossy(payload).into_owned()
    });
    engine.register_fn("decodeToString", |payload: Dynamic| -> Result<String> {
        Ok(String::from_utf8_lossy(&bytes_of(&payload, "decodeToString")?).into_owned())
    });
    engine.register_fn("decodeToJson", |payload: &mut Blob| -> Result<Dynamic> {
        json_to_dynamic(&String::from_utf8_lossy(payload), "decodeToJson")
    });
    engine.register_fn("decodeToJson", |payload: Dynamic| -> Result<Dynamic> {
        let bytes = bytes_of(&payload, "decodeToJson")?;
        json_to_dynamic(&String::from_utf8_lossy(&bytes), "decodeToJson")
    });
    engine.register_fn("stringToBytes", |s: ImmutableString| -> Blob {
        s.as_bytes().to_vec()
    });
    engine.register_fn("bytesToString", |b: Dynamic| -> Result<String> {
        Ok(String::from_utf8_lossy(&bytes_of(&b, "bytesToString")?).into_owned())
    });
    engine.register_fn("btoa", |s: ImmutableString| -> String {
        BASE64.encode(s.as_bytes())
    });
    engine.register_fn("atob", |s: ImmutableString| -> Result<String> {
        let bytes = BASE64
            .decode(s.trim())
            .or_else(|e| error(format!("atob: not base64: {e}")))?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    });
    engine.register_fn("base64ToBytes", |s: ImmutableString| -> Result<Blob> {
        BASE64
            .decode(s.trim())
            .or_else(|e| error(format!("base64ToBytes: not base64: {e}")))
    });
    engine.register_fn("bytesToBase64", |b: Dynamic| -> Result<String> {
        Ok(BASE64.encode(bytes_of(&b, "bytesToBase64")?))
    });
    engine.register_fn("bytesToHex", |b: Dynamic| -> Result<String> {
        Ok(bytes_of(&b, "bytesToHex")?
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect())
    });
    engine.register_fn("hexToBytes", |s: ImmutableString| -> Result<Blob> {
        hex_bytes(&s, "hexToBytes")
    });

    // Numbers from text.
    engine.register_fn("parseInt", |s: ImmutableString| {
        parse_int_auto(&s, "parseInt")
    });
    engine.register_fn("parseInt", |s: ImmutableString, radix: INT| {
        parse_int_radix(&s, radix, "parseInt")
    });
    engine.register_fn("parseLong", |s: ImmutableString| {
        parse_int_auto(&s, "parseLong")
    });
    engine.register_fn("parseLong", |s: ImmutableString, radix: INT| {
        parse_int_radix(&s, radix, "parseLong")
    });
    engine.register_fn("parseFloat", |s: ImmutableString| {
        parse_float(&s, "parseFloat")
    });
    engine.register_fn("parseDouble", |s: ImmutableString| {
        parse_float(&s, "parseDouble")
    });
    // Already numbers: TBEL accepts them too.
    engine.register_fn("parseFloat", |x: FLOAT| x);
    engine.register_fn("parseFloat", |x: INT| x as FLOAT);
    engine.register_fn("parseDouble", |x: FLOAT| x);
    engine.register_fn("parseInt", |x: INT| x);

    // Numbers from hex text: big-endian unless told otherwise.
    for (name, big) in [
        ("parseHexToInt", None),
        ("parseBigEndianHexToInt", Some(true)),
        ("parseLittleEndianHexToInt", Some(false)),
    ] {
        register_hex(engine, name, big, |b, h| {
            if b.len() > 4 {
                return error(format!("{h}: an int is at most 4 bytes"));
            }
            Ok(Dynamic::from(int_from(b)))
        });
    }
    for (name, big) in [
        ("parseHexToLong", None),
        ("parseBigEndianHexToLong", Some(true)),
        ("parseLittleEndianHexToLong", Some(false)),
    ] {
        register_hex(engine, name, big, |b, h| {
            if b.len() > 8 {
                return error(format!("{h}: a long is at most 8 bytes"));
            }
            Ok(Dynamic::from(long_from(b)))
        });
    }
    for (name, big) in [
        ("parseHexToFloat", None),
        ("parseBigEndianHexToFloat", Some(true)),
        ("parseLittleEndianHexToFloat", Some(false)),
    ] {
        register_hex(engine, name, big, |b, h| {
            Ok(Dynamic::from(float_from(b, h)?))
        });
    }
    for (name, big) in [
        ("parseHexToDouble", None),
        ("parseBigEndianHexToDouble", Some(true)),
        ("parseLittleEndianHexToDouble", Some(false)),
    ] {
        register_hex(engine, name, big, |b, h| {
            Ok(Dynamic::from(double_from(b, h)?))
        });
    }

    // Numbers from bytes: (bytes, offset, length, bigEndian = true).
    register_bytes(engine, "parseBytesToInt", 4, |b, _| {
        Ok(Dynamic::from(int_from(b)))
    });
    register_bytes(engine, "parseBytesToLong", 8, |b, _| {
        Ok(Dynamic::from(long_from(b)))
    });
    register_bytes(engine, "parseBytesToFloat", 4, |b, h| {
        Ok(Dynamic::from(float_from(b, h)?))
    });
    register_bytes(engine, "parseBytesToDouble", 8, |b, h| {
        Ok(Dynamic::from(double_from(b, h)?))
    });

    // Formatting and checks.
    engine.register_fn("toFixed", to_fixed);
    engine.register_fn("toFixed", |x: INT, p: INT| to_fixed(x as FLOAT, p));
    engine.register_fn(
        "padStart",
        |s: ImmutableString, n: INT, fill: ImmutableString| pad(&s, n, &fill, true),
    );
    engine.register_fn(
        "padEnd",
        |s: ImmutableString, n: INT, fill: ImmutableString| pad(&s, n, &fill, false),
    );
    engine.register_fn("isNaN", |x: FLOAT| x.is_nan());
    engine.register_fn("isNaN", |_: INT| false);
    engine.register_fn("isNaN", |s: ImmutableString| {
        s.trim().parse::<f64>().map_or(true, f64::is_nan)
    });
    engine.register_fn("isBinary", |s: ImmutableString| {
        !s.is_empty() && s.chars().all(|c| c == '0' || c == '1')
    });
    engine.register_fn("isHexadecimal", |s: ImmutableString| {
        let t = s.trim_start_matches("0x").trim_start_matches("0X");
        !t.is_empty() && t.chars().all(|c| c.is_ascii_hexdigit())
    });

    // Maps.
    engine.register_fn("toFlatMap", |m: Map| flat(&m, true, &[]));
    engine.register_fn("toFlatMap", |m: Map, path_in_key: bool| {
        flat(&m, path_in_key, &[])
    });
    engine.register_fn("toFlatMap", |m: Map, exclude: Array| {
        flat(&m, true, &strings(&exclude))
    });
    engine.register_fn("toFlatMap", |m: Map, exclude: Array, path_in_key: bool| {
        flat(&m, path_in_key, &strings(&exclude))
    });

    // Errors.
    engine.register_fn("raiseError", |message: ImmutableString| -> Result<()> {
        error(message.to_string())
    });

    // JSON.
    engine.register_type_with_name::<JsonApi>("JSON");
    engine.register_fn("parse", |_: &mut JsonApi, text: ImmutableString| {
        json_to_dynamic(&text, "JSON.parse")
    });
    engine.register_fn("stringify", |_: &mut JsonApi, value: Dynamic| {
        dynamic_to_json(&value)
    });

    // What JavaScript-minded scripts reach for.
    engine.register_get("length", |a: &mut Array| a.len() as INT);
    engine.register_get("length", |b: &mut Blob| b.len() as INT);
    engine.register_get("length", |s: &mut ImmutableString| s.chars().count() as INT);
    engine.register_fn(
        "replaceAll",
        |s: &mut ImmutableString, from: ImmutableString, to: ImmutableString| {
            s.replace(from.as_str(), to.as_str())
        },
    );
    engine.register_fn("toUpperCase", |s: &mut ImmutableString| s.to_uppercase());
    engine.register_fn("toLowerCase", |s: &mut ImmutableString| s.to_lowercase());
    engine.register_fn(
        "substring",
        |s: &mut ImmutableString, start: INT, end: INT| {
            let start = usize::try_from(start).unwrap_or(0);
            let end = usize::try_from(end).unwrap_or(0);
            s.chars()
                .skip(start)
                .take(end.saturating_sub(start))
                .collect::<String>()
        },
    );
}

fn flat(map: &Map, path_in_key: bool, exclude: &[String]) -> Map {
    let mut out = Map::new();
    flatten(
        "",
        &Dynamic::from_map(map.clone()),
        path_in_key,
        exclude,
        &mut out,
    );
    out
}

type Decode = fn(&[u8], &str) -> Result<Dynamic>;

fn register_hex(engine: &mut Engine, name: &'static str, big: Option<bool>, decode: Decode) {
    match big {
        // parseHexToX(hex) and parseHexToX(hex, bigEndian)
        None => {
            engine.register_fn(name, move |hex: ImmutableString| -> Result<Dynamic> {
                decode(&hex_bytes(&hex, name)?, name)
            });
            engine.register_fn(
                name,
                move |hex: ImmutableString, big_endian: bool| -> Result<Dynamic> {
                    let mut b = hex_bytes(&hex, name)?;
                    if !big_endian {
                        b.reverse();
                    }
                    decode(&b, name)
                },
            );
        }
        Some(big_endian) => {
            engine.register_fn(name, move |hex: ImmutableString| -> Result<Dynamic> {
                let mut b = hex_bytes(&hex, name)?;
                if !big_endian {
                    b.reverse();
                }
                decode(&b, name)
            });
        }
    }
}

fn register_bytes(engine: &mut Engine, name: &'static str, max: usize, decode: Decode) {
    let default_length = max as INT;
    engine.register_fn(
        name,
        move |b: Dynamic, offset: INT, length: INT, big_endian: bool| -> Result<Dynamic> {
            let bytes = bytes_of(&b, name)?;
            decode(
                &window(&bytes, offset, length, big_endian, max, name)?,
                name,
            )
        },
    );
    engine.register_fn(
        name,
        move |b: Dynamic, offset: INT, length: INT| -> Result<Dynamic> {
            let bytes = bytes_of(&b, name)?;
            decode(&window(&bytes, offset, length, true, max, name)?, name)
        },
    );
    engine.register_fn(name, move |b: Dynamic, offset: INT| -> Result<Dynamic> {
        let bytes = bytes_of(&b, name)?;
        decode(
            &window(&bytes, offset, default_length, true, max, name)?,
            name,
        )
    });
}
