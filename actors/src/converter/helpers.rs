//! The helper library TBEL users expect, as Rhai functions with TBEL's names and semantics.
//! Every helper is documented with an example in `docs/converters.md`.
//!
//! Bytes are Rhai blobs (`payload` is one); helpers that take bytes also take an array of
//! integers. Errors are script errors with a message naming the helper, so a converter fails
//! for that message only.
//!
//! A helper whose result's size follows from its arguments checks that size against the run's
//! limits before it allocates (see [`guard`](super::guard)), and one that walks its input looks
//! at the run's deadline as it goes: no argument can make a helper abort the process or
//! outlast the run's wall time.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rhai::{Array, Blob, Dynamic, Engine, FLOAT, INT, ImmutableString, Map, NativeCallContext};

use super::guard::{
    MAX_DEPTH, Result, Sizes, array_fits, check_deadline, depth_within, error, map_fits,
    string_fits,
};

/// Shown of a peer's text in an error message at most, in characters.
const SHOWN: usize = 40;

/// The start of `text` for an error message, escaped.
fn shown(text: &str) -> String {
    let mut out: String = text.chars().take(SHOWN).collect();
    if text.chars().nth(SHOWN).is_some() {
        out.push('…');
    }
    format!("{out:?}")
}

/// Runs `f` on bytes from a blob (borrowed, not copied), an array of integers (each taken as
/// its low 8 bits, as Java's bytes are), or a string (its UTF-8 bytes).
fn with_bytes<T>(value: &Dynamic, helper: &str, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    if let Some(blob) = value.read_lock::<Blob>() {
        return f(&blob);
    }
    if let Some(s) = value.read_lock::<ImmutableString>() {
        return f(s.as_bytes());
    }
    if let Some(array) = value.read_lock::<Array>() {
        let bytes = array
            .iter()
            .map(|v| {
                v.as_int()
                    .map(|i| (i & 0xff) as u8)
                    .or_else(|_| error(format!("{helper}: bytes must be integers")))
            })
            .collect::<Result<Vec<u8>>>()?;
        return f(&bytes);
    }
    error(format!(
        "{helper}: expected bytes, got {}",
        value.type_name()
    ))
}

/// Text from bytes as `String::from_utf8_lossy` makes it, refused before decoding when it
/// cannot fit the string limit (the text is at least as long as the bytes).
fn lossy(ctx: &NativeCallContext, bytes: &[u8], helper: &str) -> Result<String> {
    check_deadline()?;
    string_fits(ctx, helper, Some(bytes.len()))?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// `hex` without its `0x` prefix and surrounding spaces, checked to be at most `max_bytes`
/// bytes once decoded.
fn hex_digits<'a>(hex: &'a str, max_bytes: Option<usize>, helper: &str) -> Result<&'a str> {
    let hex = hex.trim().trim_start_matches("0x").trim_start_matches("0X");
    if !hex.len().is_multiple_of(2) {
        return error(format!(
            "{helper}: hex string must have an even length: {}",
            shown(hex)
        ));
    }
    if let Some(max) = max_bytes
        && hex.len() / 2 > max
    {
        return error(format!(
            "{helper}: at most {max} bytes, got {} hex digits",
            hex.len()
        ));
    }
    Ok(hex)
}

fn hex_bytes(hex: &str, helper: &str) -> Result<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .map_or_else(
                    || error(format!("{helper}: not a hex string: {}", shown(hex))),
                    Ok,
                )
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
        Err(_) => error(format!(
            "{helper}: not a number in base {radix}: {}",
            shown(s)
        )),
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
        .or_else(|_| error(format!("{helper}: not a number: {}", shown(s))))
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

/// `s` padded to `target` characters with `fill` repeated, at its start or end (JavaScript's
/// `padStart`/`padEnd`). The result's size is computed, and checked, before it is built.
pub(super) fn pad(
    ctx: &NativeCallContext,
    s: &str,
    target: INT,
    fill: &str,
    start: bool,
    helper: &str,
) -> Result<String> {
    check_deadline()?;
    // A negative target pads nothing, as in JavaScript.
    let target = usize::try_from(target).unwrap_or(0);
    let len = s.chars().count();
    if len >= target || fill.is_empty() {
        return Ok(s.to_owned());
    }
    let missing = target - len;
    let fill_chars = fill.chars().count();
    let (cycles, rest) = (missing / fill_chars, missing % fill_chars);
    let rest_bytes: usize = fill.chars().take(rest).map(char::len_utf8).sum();
    let bytes = cycles
        .checked_mul(fill.len())
        .and_then(|b| b.checked_add(rest_bytes))
        .and_then(|b| b.checked_add(s.len()));
    string_fits(ctx, helper, bytes)?;
    let mut out = String::with_capacity(bytes.unwrap_or_default());
    if !start {
        out.push_str(s);
    }
    out.push_str(&fill.repeat(cycles));
    out.extend(fill.chars().take(rest));
    if start {
        out.push_str(s);
    }
    Ok(out)
}

/// `s` with every `from` replaced by `to` (every character boundary when `from` is empty, as
/// Rust's `str::replace` does). The result's size is computed, and checked, before it is built.
pub(super) fn replace(
    ctx: &NativeCallContext,
    s: &str,
    from: &str,
    to: &str,
    helper: &str,
) -> Result<String> {
    check_deadline()?;
    let count = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let bytes = count
        .checked_mul(to.len())
        .and_then(|b| b.checked_add(s.len() - count * from.len()));
    string_fits(ctx, helper, bytes)?;
    check_deadline()?;
    Ok(s.replace(from, to))
}

/// What `toFlatMap` builds, with what it has used of the run's limits so far.
struct Flattener<'a> {
    ctx: &'a NativeCallContext<'a>,
    path_in_key: bool,
    exclude: HashSet<&'a str>,
    out: Map,
    /// Bytes of the result's keys so far: keys are strings the run holds too (Rhai does not
    /// count map keys), and a long path repeated for every leaf would otherwise be unbounded.
    key_bytes: usize,
}

const FLAT: &str = "toFlatMap";

impl Flattener<'_> {
    /// Nested maps and arrays to one level: `{"a":{"b":1},"c":[5]}` -> `{"a.b":1,"c.0":5}`,
    /// or with `path_in_key = false` -> `{"b":1,"c":5}`. Keys in `exclude` are left out.
    fn flatten(&mut self, prefix: &str, value: &Dynamic, depth: usize) -> Result<()> {
        if depth > MAX_DEPTH {
            return error(format!("{FLAT}: nested deeper than {MAX_DEPTH} levels"));
        }
        if let Some(map) = value.read_lock::<Map>() {
            for (k, v) in map.iter() {
                if !self.exclude.contains(k.as_str()) {
                    let key = self.key(prefix, k)?;
                    self.put(key, v, depth)?;
                }
            }
        } else if let Some(array) = value.read_lock::<Array>() {
            for (i, v) in array.iter().enumerate() {
                let key = if self.path_in_key {
                    self.key(prefix, &i.to_string())?
                } else {
                    prefix.rsplit('.').next().unwrap_or(prefix).to_owned()
                };
                self.put(key, v, depth)?;
            }
        }
        Ok(())
    }

    fn key(&self, prefix: &str, k: &str) -> Result<String> {
        let len = prefix.len().saturating_add(k.len()).saturating_add(1);
        // A path is at most as long as the keys of the result.
        string_fits(self.ctx, FLAT, Some(self.key_bytes.saturating_add(len)))?;
        Ok(if self.path_in_key && !prefix.is_empty() {
            format!("{prefix}.{k}")
        } else {
            k.to_owned()
        })
    }

    fn put(&mut self, key: String, v: &Dynamic, depth: usize) -> Result<()> {
        if v.is_map() || v.is_array() {
            return self.flatten(&key, v, depth + 1);
        }
        if self.out.len().is_multiple_of(1024) {
            check_deadline()?;
        }
        if !self.out.contains_key(key.as_str()) {
            map_fits(self.ctx, FLAT, Some(self.out.len() + 1))?;
            self.key_bytes = self.key_bytes.saturating_add(key.len());
            string_fits(self.ctx, FLAT, Some(self.key_bytes))?;
        }
        self.out.insert(key.into(), v.clone());
        Ok(())
    }
}

fn flat(ctx: &NativeCallContext, map: &Map, path_in_key: bool, exclude: &Array) -> Result<Map> {
    let exclude: Vec<String> = exclude.iter().map(ToString::to_string).collect();
    let mut flattener = Flattener {
        ctx,
        path_in_key,
        exclude: exclude.iter().map(String::as_str).collect(),
        out: Map::new(),
        key_bytes: 0,
    };
    for (k, v) in map.iter() {
        if !flattener.exclude.contains(k.as_str()) {
            let key = flattener.key("", k)?;
            flattener.put(key, v, 1)?;
        }
    }
    Ok(flattener.out)
}

/// Parses JSON text into Rhai values (objects are maps, numbers `INT` or `FLOAT`), with no
/// limits but serde_json's nesting limit: for text the engine itself made.
pub fn json_to_dynamic(text: &str, helper: &str) -> Result<Dynamic> {
    let value: serde_json::Value =
        serde_json::from_str(text).or_else(|e| error(format!("{helper}: not JSON: {e}")))?;
    rhai::serde::to_dynamic(value)
}

/// The array items, map entries and string bytes of a JSON value, counted as Rhai counts them.
/// Recursive; serde_json's parser nests at most 128 levels.
fn json_sizes(value: &serde_json::Value, sizes: &mut Sizes) {
    match value {
        serde_json::Value::Array(items) => {
            sizes.items += items.len();
            items.iter().for_each(|v| json_sizes(v, sizes));
        }
        serde_json::Value::Object(entries) => {
            sizes.entries += entries.len();
            entries.values().for_each(|v| json_sizes(v, sizes));
        }
        serde_json::Value::String(s) => sizes.bytes += s.len(),
        _ => {}
    }
}

/// [`json_to_dynamic`] for scripts: the text must fit the run's string limit, and the values it
/// holds its array, map and string limits, checked before they become Rhai values.
fn parse_json(ctx: &NativeCallContext, text: &[u8], helper: &str) -> Result<Dynamic> {
    check_deadline()?;
    string_fits(ctx, helper, Some(text.len()))?;
    let value: serde_json::Value =
        serde_json::from_slice(text).or_else(|e| error(format!("{helper}: not JSON: {e}")))?;
    let mut sizes = Sizes::default();
    json_sizes(&value, &mut sizes);
    array_fits(ctx, helper, Some(sizes.items))?;
    map_fits(ctx, helper, Some(sizes.entries))?;
    string_fits(ctx, helper, Some(sizes.bytes))?;
    check_deadline()?;
    rhai::serde::to_dynamic(value)
}

/// Rhai values as JSON text. Refuses values nested deeper than [`MAX_DEPTH`] (the conversion
/// recurses once per level).
pub fn dynamic_to_json(value: &Dynamic) -> Result<String> {
    if !depth_within(value, MAX_DEPTH) {
        return error(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    let json: serde_json::Value = rhai::serde::from_dynamic(value)?;
    Ok(json.to_string())
}

/// A writer that refuses to grow past `max` bytes.
struct Bounded {
    out: Vec<u8>,
    max: usize,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.max {
            return Err(std::io::Error::other("over the string limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// JSON text of a script's value, written into a buffer that may not outgrow the run's string
/// limit. `nested` are the values to check for depth first (serialisation recurses once per
/// level).
pub(super) fn stringify<'a, T: serde::Serialize>(
    ctx: &NativeCallContext,
    value: &T,
    nested: impl IntoIterator<Item = &'a Dynamic>,
    helper: &str,
) -> Result<String> {
    check_deadline()?;
    if !nested.into_iter().all(|v| depth_within(v, MAX_DEPTH)) {
        return error(format!("{helper}: nested deeper than {MAX_DEPTH} levels"));
    }
    let max = match ctx.engine().max_string_size() {
        0 => usize::MAX,
        max => max,
    };
    let mut out = Bounded {
        out: Vec::new(),
        max,
    };
    if let Err(e) = serde_json::to_writer(&mut out, value) {
        if e.is_io() {
            return string_fits(ctx, helper, None).map(|()| String::new());
        }
        return error(format!("{helper}: {e}"));
    }
    String::from_utf8(out.out).or_else(|_| error(format!("{helper}: not UTF-8")))
}

/// The `JSON` object of scripts: `JSON.parse(text)`, `JSON.stringify(value)`.
#[derive(Clone, Copy, Default)]
pub struct JsonApi;

pub fn register(engine: &mut Engine) {
    // Encoding.
    // The payload is a blob: decode it in place, without a copy.
    engine.register_fn(
        "decodeToString",
        |ctx: NativeCallContext, payload: &mut Blob| lossy(&ctx, payload, "decodeToString"),
    );
    engine.register_fn(
        "decodeToString",
        |ctx: NativeCallContext, payload: Dynamic| {
            with_bytes(&payload, "decodeToString", |b| {
                lossy(&ctx, b, "decodeToString")
            })
        },
    );
    engine.register_fn(
        "decodeToJson",
        |ctx: NativeCallContext, payload: &mut Blob| parse_json(&ctx, payload, "decodeToJson"),
    );
    engine.register_fn(
        "decodeToJson",
        |ctx: NativeCallContext, payload: Dynamic| {
            with_bytes(&payload, "decodeToJson", |b| {
                parse_json(&ctx, b, "decodeToJson")
            })
        },
    );
    engine.register_fn(
        "stringToBytes",
        |ctx: NativeCallContext, s: ImmutableString| -> Result<Blob> {
            array_fits(&ctx, "stringToBytes", Some(s.len()))?;
            Ok(s.as_bytes().to_vec())
        },
    );
    engine.register_fn("bytesToString", |ctx: NativeCallContext, b: Dynamic| {
        with_bytes(&b, "bytesToString", |b| lossy(&ctx, b, "bytesToString"))
    });
    engine.register_fn(
        "btoa",
        |ctx: NativeCallContext, s: ImmutableString| -> Result<String> {
            check_deadline()?;
            string_fits(&ctx, "btoa", base64::encoded_len(s.len(), true))?;
            Ok(BASE64.encode(s.as_bytes()))
        },
    );
    engine.register_fn(
        "atob",
        |ctx: NativeCallContext, s: ImmutableString| -> Result<String> {
            check_deadline()?;
            let bytes = BASE64
                .decode(s.trim())
                .or_else(|e| error(format!("atob: not base64: {e}")))?;
            lossy(&ctx, &bytes, "atob")
        },
    );
    engine.register_fn(
        "base64ToBytes",
        |ctx: NativeCallContext, s: ImmutableString| -> Result<Blob> {
            check_deadline()?;
            array_fits(
                &ctx,
                "base64ToBytes",
                Some(base64::decoded_len_estimate(s.trim().len())),
            )?;
            BASE64
                .decode(s.trim())
                .or_else(|e| error(format!("base64ToBytes: not base64: {e}")))
        },
    );
    engine.register_fn("bytesToBase64", |ctx: NativeCallContext, b: Dynamic| {
        with_bytes(&b, "bytesToBase64", |b| {
            check_deadline()?;
            string_fits(&ctx, "bytesToBase64", base64::encoded_len(b.len(), true))?;
            Ok(BASE64.encode(b))
        })
    });
    engine.register_fn("bytesToHex", |ctx: NativeCallContext, b: Dynamic| {
        with_bytes(&b, "bytesToHex", |b| {
            check_deadline()?;
            string_fits(&ctx, "bytesToHex", b.len().checked_mul(2))?;
            const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
            let mut out = String::with_capacity(b.len() * 2);
            for x in b {
                out.push(char::from(DIGITS[usize::from(x >> 4)]));
                out.push(char::from(DIGITS[usize::from(x & 0xf)]));
            }
            Ok(out)
        })
    });
    engine.register_fn(
        "hexToBytes",
        |ctx: NativeCallContext, s: ImmutableString| -> Result<Blob> {
            check_deadline()?;
            let hex = hex_digits(&s, None, "hexToBytes")?;
            array_fits(&ctx, "hexToBytes", Some(hex.len() / 2))?;
            hex_bytes(hex, "hexToBytes")
        },
    );

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
        register_hex(engine, name, big, 4, |b, _| Ok(Dynamic::from(int_from(b))));
    }
    for (name, big) in [
        ("parseHexToLong", None),
        ("parseBigEndianHexToLong", Some(true)),
        ("parseLittleEndianHexToLong", Some(false)),
    ] {
        register_hex(engine, name, big, 8, |b, _| Ok(Dynamic::from(long_from(b))));
    }
    for (name, big) in [
        ("parseHexToFloat", None),
        ("parseBigEndianHexToFloat", Some(true)),
        ("parseLittleEndianHexToFloat", Some(false)),
    ] {
        register_hex(engine, name, big, 4, |b, h| {
            Ok(Dynamic::from(float_from(b, h)?))
        });
    }
    for (name, big) in [
        ("parseHexToDouble", None),
        ("parseBigEndianHexToDouble", Some(true)),
        ("parseLittleEndianHexToDouble", Some(false)),
    ] {
        register_hex(engine, name, big, 8, |b, h| {
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
        |ctx: NativeCallContext, s: ImmutableString, n: INT, fill: ImmutableString| {
            pad(&ctx, &s, n, &fill, true, "padStart")
        },
    );
    engine.register_fn(
        "padEnd",
        |ctx: NativeCallContext, s: ImmutableString, n: INT, fill: ImmutableString| {
            pad(&ctx, &s, n, &fill, false, "padEnd")
        },
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
    engine.register_fn("toFlatMap", |ctx: NativeCallContext, m: Map| {
        flat(&ctx, &m, true, &Array::new())
    });
    engine.register_fn(
        "toFlatMap",
        |ctx: NativeCallContext, m: Map, path_in_key: bool| {
            flat(&ctx, &m, path_in_key, &Array::new())
        },
    );
    engine.register_fn(
        "toFlatMap",
        |ctx: NativeCallContext, m: Map, exclude: Array| flat(&ctx, &m, true, &exclude),
    );
    engine.register_fn(
        "toFlatMap",
        |ctx: NativeCallContext, m: Map, exclude: Array, path_in_key: bool| {
            flat(&ctx, &m, path_in_key, &exclude)
        },
    );

    // Errors.
    engine.register_fn("raiseError", |message: ImmutableString| -> Result<()> {
        error(message.to_string())
    });

    // JSON.
    engine.register_type_with_name::<JsonApi>("JSON");
    engine.register_fn(
        "parse",
        |ctx: NativeCallContext, _: &mut JsonApi, text: ImmutableString| {
            parse_json(&ctx, text.as_bytes(), "JSON.parse")
        },
    );
    engine.register_fn(
        "stringify",
        |ctx: NativeCallContext, _: &mut JsonApi, value: Dynamic| {
            stringify(&ctx, &value, [&value], "JSON.stringify")
        },
    );

    // What JavaScript-minded scripts reach for.
    engine.register_get("length", |a: &mut Array| a.len() as INT);
    engine.register_get("length", |b: &mut Blob| b.len() as INT);
    engine.register_get("length", |s: &mut ImmutableString| s.chars().count() as INT);
    engine.register_fn(
        "replaceAll",
        |ctx: NativeCallContext,
         s: &mut ImmutableString,
         from: ImmutableString,
         to: ImmutableString| replace(&ctx, s, &from, &to, "replaceAll"),
    );
    // Case changes make at most three bytes of one (Rhai checks the result's size after).
    engine.register_fn("toUpperCase", |s: &mut ImmutableString| -> Result<String> {
        check_deadline()?;
        Ok(s.to_uppercase())
    });
    engine.register_fn("toLowerCase", |s: &mut ImmutableString| -> Result<String> {
        check_deadline()?;
        Ok(s.to_lowercase())
    });
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

    super::builtins::register(engine);
}

type Decode = fn(&[u8], &str) -> Result<Dynamic>;

/// Registers a hex-text decoder of at most `max` bytes.
fn register_hex(
    engine: &mut Engine,
    name: &'static str,
    big: Option<bool>,
    max: usize,
    decode: Decode,
) {
    let run = move |hex: &str, big_endian: bool| -> Result<Dynamic> {
        let mut b = hex_bytes(hex_digits(hex, Some(max), name)?, name)?;
        if !big_endian {
            b.reverse();
        }
        decode(&b, name)
    };
    match big {
        // parseHexToX(hex) and parseHexToX(hex, bigEndian)
        None => {
            engine.register_fn(name, move |hex: ImmutableString| run(&hex, true));
            engine.register_fn(name, move |hex: ImmutableString, big_endian: bool| {
                run(&hex, big_endian)
            });
        }
        Some(big_endian) => {
            engine.register_fn(name, move |hex: ImmutableString| run(&hex, big_endian));
        }
    }
}

fn register_bytes(engine: &mut Engine, name: &'static str, max: usize, decode: Decode) {
    let default_length = max as INT;
    let run = move |b: &Dynamic, offset: INT, length: INT, big_endian: bool| {
        with_bytes(b, name, |bytes| {
            decode(&window(bytes, offset, length, big_endian, max, name)?, name)
        })
    };
    engine.register_fn(
        name,
        move |b: Dynamic, offset: INT, length: INT, big_endian: bool| {
            run(&b, offset, length, big_endian)
        },
    );
    engine.register_fn(name, move |b: Dynamic, offset: INT, length: INT| {
        run(&b, offset, length, true)
    });
    engine.register_fn(name, move |b: Dynamic, offset: INT| {
        run(&b, offset, default_length, true)
    });
}
