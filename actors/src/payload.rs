//! ThingsBoard's JSON payload formats for telemetry and attributes, parsed into the domain model.
//!
//! Telemetry is one of: an object of key-values; an array of such objects; `{"ts", "values"}`;
//! or an array mixing the two. Attributes are an object of key-values. Values keep the type the
//! device sent, by the rules of ThingsBoard's `JsonConverter`: a JSON string is a STRING, `true`
//! and `false` a BOOLEAN, an object or array JSON, and a number a LONG, a DOUBLE or a STRING of
//! its digits as [`parse_number`] tells. `null` is refused.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::model::{KvEntry, KvValue, TsRecord, ValueError};

/// Why a payload was refused; the text is what the device or operator sees.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PayloadError {
    #[error("payload is empty")]
    Empty,
    #[error("payload is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("payload is a JSON {found}, expected {expected}")]
    WrongShape {
        found: &'static str,
        expected: &'static str,
    },
    #[error("value of key {key:?} is null")]
    NullValue { key: String },
    #[error("value of key {key:?} is a number out of range: {text:?}")]
    NumberOutOfRange { key: String, text: String },
    #[error("\"ts\" must be an integer number of milliseconds, got {0}")]
    BadTimestamp(String),
    #[error("\"values\" must be a JSON object")]
    BadValues,
    #[error("key must not be empty")]
    EmptyKey,
    #[error("value of key {key:?} is JSON nested deeper than {max} levels")]
    TooDeep { key: String, max: usize },
    #[error("a key of {len} characters is over the maximum of {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error(transparent)]
    Value(#[from] ValueError),
}

impl PayloadError {
    /// A short, fixed label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::Empty => "empty",
            PayloadError::InvalidJson(_) => "invalid_json",
            PayloadError::WrongShape { .. } => "wrong_shape",
            PayloadError::NullValue { .. } => "null_value",
            PayloadError::NumberOutOfRange { .. } => "number_out_of_range",
            PayloadError::BadTimestamp(_) => "bad_timestamp",
            PayloadError::BadValues => "bad_values",
            PayloadError::EmptyKey => "empty_key",
            PayloadError::TooDeep { .. } => "json_too_deep",
            PayloadError::KeyTooLong { .. } => "key_too_long",
            PayloadError::Value(ValueError::NotFinite { .. }) => "not_finite",
        }
    }
}

/// Runs `parse` on `bytes`; when they are not JSON, on their strict form if Gson's lenient
/// reader would have taken them (see [`crate::lenient`]), keeping the first error otherwise.
fn strict_or_lenient<T>(
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, PayloadError>,
) -> Result<T, PayloadError> {
    match parse(bytes) {
        Err(PayloadError::InvalidJson(e)) => match crate::lenient::to_strict(bytes) {
            Some(strict) => parse(strict.as_bytes()).map_err(|second| match second {
                PayloadError::InvalidJson(_) => PayloadError::InvalidJson(e),
                other => other,
            }),
            None => Err(PayloadError::InvalidJson(e)),
        },
        other => other,
    }
}

/// Parses a telemetry payload; `server_ts` stamps records that carry no `ts`. Payloads
/// ThingsBoard's lenient JSON reader takes (`{temperature:42}`) are taken too.
pub fn parse_telemetry(bytes: &[u8], server_ts: i64) -> Result<Vec<TsRecord>, PayloadError> {
    strict_or_lenient(bytes, |bytes| parse_telemetry_strict(bytes, server_ts))
}

fn parse_telemetry_strict(bytes: &[u8], server_ts: i64) -> Result<Vec<TsRecord>, PayloadError> {
    match parse_top(bytes)? {
        Top::Object(fields) => Ok(vec![object_to_record(fields, server_ts)?]),
        Top::Array(items) => {
            let mut records = Vec::with_capacity(items.len());
            for item in items {
                match classify(item) {
                    Kind::Object => {
                        let fields = object_fields(item)?;
                        records.push(object_to_record(fields, server_ts)?);
                    }
                    other => {
                        return Err(PayloadError::WrongShape {
                            found: other.name(),
                            expected: "object inside the telemetry array",
                        });
                    }
                }
            }
            Ok(merge_server_ts(records, server_ts))
        }
    }
}

/// Parses an attributes payload: one object of key-values (lenient JSON taken as for
/// telemetry).
pub fn parse_attributes(bytes: &[u8]) -> Result<Vec<KvEntry>, PayloadError> {
    strict_or_lenient(bytes, parse_attributes_strict)
}

fn parse_attributes_strict(bytes: &[u8]) -> Result<Vec<KvEntry>, PayloadError> {
    match parse_top(bytes)? {
        Top::Object(fields) => fields_to_entries(fields),
        Top::Array(_) => Err(PayloadError::WrongShape {
            found: "array",
            expected: "object",
        }),
    }
}

enum Top<'a> {
    Object(Fields<'a>),
    Array(Vec<&'a RawValue>),
}

type Fields<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

fn parse_top(bytes: &[u8]) -> Result<Top<'_>, PayloadError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PayloadError::Empty);
    }
    let raw: &RawValue = serde_json::from_slice(bytes).map_err(invalid_json)?;
    match classify(raw) {
        Kind::Object => Ok(Top::Object(object_fields(raw)?)),
        Kind::Array => {
            let items: Vec<&RawValue> = serde_json::from_str(raw.get()).map_err(invalid_json)?;
            Ok(Top::Array(items))
        }
        other => Err(PayloadError::WrongShape {
            found: other.name(),
            expected: "object or array",
        }),
    }
}

fn invalid_json(e: serde_json::Error) -> PayloadError {
    PayloadError::InvalidJson(e.to_string())
}

fn object_fields(raw: &RawValue) -> Result<Fields<'_>, PayloadError> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let fields = de.deserialize_map(FieldsVisitor).map_err(invalid_json)?;
    Ok(fields)
}

/// Collects an object's fields in document order, borrowing keys and values from the input.
struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            fields.push((key.0, value));
        }
        Ok(fields)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<Self::Value, A::Error> {
        Err(de::Error::invalid_type(de::Unexpected::Seq, &self))
    }
}

/// A string that borrows from the input unless it had escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Object,
    Array,
    String,
    Bool,
    Null,
    Number,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::String => "string",
            Kind::Bool => "boolean",
            Kind::Null => "null",
            Kind::Number => "number",
        }
    }
}

/// A `RawValue` is valid JSON without surrounding whitespace, so its first byte tells its kind.
fn classify(raw: &RawValue) -> Kind {
    match raw.get().as_bytes().first() {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(b'"') => Kind::String,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'n') => Kind::Null,
        _ => Kind::Number,
    }
}

fn object_to_record(fields: Fields<'_>, server_ts: i64) -> Result<TsRecord, PayloadError> {
    let ts = fields.iter().find(|(k, _)| k == "ts").map(|(_, v)| *v);
    let values = fields.iter().find(|(k, _)| k == "values").map(|(_, v)| *v);
    match (ts, values) {
        // ThingsBoard's rule: an object holding both "ts" and "values" is the timestamped form.
        (Some(ts), Some(values)) => {
            let ts = parse_ts(ts)?;
            if classify(values) != Kind::Object {
                return Err(PayloadError::BadValues);
            }
            Ok(TsRecord {
                ts,
                entries: fields_to_entries(object_fields(values)?)?,
            })
        }
        _ => Ok(TsRecord {
            ts: server_ts,
            entries: fields_to_entries(fields)?,
        }),
    }
}

fn parse_ts(raw: &RawValue) -> Result<i64, PayloadError> {
    let text = raw.get();
    if classify(raw) == Kind::Number
        && let Ok(ts) = text.parse::<i64>()
    {
        return Ok(ts);
    }
    Err(PayloadError::BadTimestamp(text.to_owned()))
}

fn fields_to_entries(fields: Fields<'_>) -> Result<Vec<KvEntry>, PayloadError> {
    let mut entries = Vec::with_capacity(fields.len());
    for (key, raw) in fields {
        if key.is_empty() {
            return Err(PayloadError::EmptyKey);
        }
        let value = parse_value(&key, raw)?;
        entries.push(KvEntry {
            key: key.into_owned(),
            value,
        });
    }
    Ok(entries)
}

fn parse_value(key: &str, raw: &RawValue) -> Result<KvValue, PayloadError> {
    let text = raw.get();
    Ok(match classify(raw) {
        Kind::String => {
            let string = unquote(text)?;
            // ThingsBoard's type cast (`transport.json.type_cast_enabled`, on by default): a
            // string that is a plain decimal number is stored as that number.
            if is_parsable(&string)
                && let Ok(number) = parse_number(key, &string)
            {
                number
            } else {
                KvValue::String(string)
            }
        }
        Kind::Bool => KvValue::Bool(text == "true"),
        Kind::Object | Kind::Array => {
            if json_depth(text) > MAX_JSON_DEPTH {
                return Err(PayloadError::TooDeep {
                    key: key.to_owned(),
                    max: MAX_JSON_DEPTH,
                });
            }
            KvValue::Json(text.to_owned())
        }
        Kind::Null => {
            return Err(PayloadError::NullValue {
                key: key.to_owned(),
            });
        }
        Kind::Number => parse_number(key, text)?,
    })
}

/// Deepest nesting of a JSON value kept: serde_json's own default, so whatever is stored can be
/// parsed back by a default parser (the raw-value scan that reads payloads has no such limit).
const MAX_JSON_DEPTH: usize = 128;

/// Nesting depth of valid JSON text.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Apache Commons' `NumberUtils.isParsable`, which ThingsBoard's type cast asks: an optional
/// `-`, then digits with at most one `.` that does not end the text; no sign `+`, exponent or
/// hexadecimal.
fn is_parsable(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty()
        && !digits.ends_with('.')
        && digits.bytes().filter(|&b| b == b'.').count() <= 1
        && digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

fn unquote(text: &str) -> Result<String, PayloadError> {
    let inner = &text[1..text.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str(text).map_err(invalid_json)
    } else {
        Ok(inner.to_owned())
    }
}

/// Longest plain-digit form a number kept as a STRING is written in; past it the text the
/// device sent is kept instead, so `1e400` (401 digits) costs what its sender paid for it.
const MAX_PLAIN_NUMBER_CHARS: usize = 64;
/// ThingsBoard's `JsonConverter` keeps a DOUBLE only with at most this many decimals.
const MAX_DOUBLE_SCALE: i64 = 16;

/// Types a JSON number as ThingsBoard's `JsonConverter` does (with its default type cast): it
/// reads the text as a `BigDecimal`. An integral value not written as a plain decimal fraction
/// (`42`, `1e3`, `1.5e3`, not `42.0`) is a LONG if one holds it; any other value is a DOUBLE if
/// it has at most 16 decimals; everything else is kept as a STRING of its digits. Where
/// ThingsBoard would store an infinite DOUBLE (a fraction with over 308 integral digits), the
/// STRING is kept too: nothing is stored that reads back as `null`. A scale past Java's `int`
/// (`1e99999999999`) is refused, as `BigDecimal` refuses it.
fn parse_number(key: &str, text: &str) -> Result<KvValue, PayloadError> {
    if !text.contains(['e', 'E']) {
        // The common forms, without building a decimal: `42`, `-7`, `21.5`.
        match text.split_once('.') {
            None => {
                if let Ok(long) = text.parse::<i64>() {
                    return Ok(KvValue::Long(long));
                }
            }
            Some((_, frac)) if frac.len() <= MAX_DOUBLE_SCALE as usize => {
                if let Some(double) = finite_double(text) {
                    return Ok(double);
                }
            }
            Some(_) => {}
        }
    }
    let number = Decimal::parse(text).ok_or_else(|| PayloadError::NumberOutOfRange {
        key: key.to_owned(),
        text: text.to_owned(),
    })?;
    let simple_double = text.contains('.') && !text.contains(['e', 'E']);
    if number.is_integral() && !simple_double {
        if let Some(long) = number.to_i64() {
            return Ok(KvValue::Long(long));
        }
    } else if number.scale <= MAX_DOUBLE_SCALE
        && let Some(double) = finite_double(text)
    {
        return Ok(double);
    }
    Ok(KvValue::String(number.plain_or(text)))
}

/// The DOUBLE of a JSON number's text, unless it is past f64's range; -0.0 is 0.0 (BigDecimal
/// has no negative zero).
fn finite_double(text: &str) -> Option<KvValue> {
    let d = text.parse::<f64>().ok().filter(|d| d.is_finite())?;
    Some(KvValue::Double(if d == 0.0 { 0.0 } else { d }))
}

/// A JSON number as `BigDecimal` sees it: its digits (the unscaled value) × 10^-`scale`.
struct Decimal<'a> {
    negative: bool,
    /// The digits before and after the decimal point, as written.
    int: &'a str,
    frac: &'a str,
    /// Decimals: fractional digits minus the exponent.
    scale: i64,
}

impl<'a> Decimal<'a> {
    /// `None` when the scale does not fit Java's `int`, as `new BigDecimal(text)` refuses it.
    fn parse(text: &'a str) -> Option<Decimal<'a>> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let exponent: i64 = match exponent {
            None => 0,
            // JSON grammar: digits only after an optional sign, so only overflow can fail.
            Some(e) => e.parse().ok()?,
        };
        let frac_len = i64::try_from(frac.len()).ok()?;
        let scale = frac_len.checked_sub(exponent)?;
        i32::try_from(scale).ok()?;
        Some(Decimal {
            negative,
            int: int.trim_start_matches('0'),
            frac,
            scale,
        })
    }

    /// The significant digits: integral and fractional, leading zeros removed.
    fn digits(&self) -> impl Iterator<Item = u8> + '_ {
        let all = self.int.bytes().chain(self.frac.bytes());
        let mut leading = true;
        all.filter(move |&b| {
            leading = leading && b == b'0';
            !leading
        })
    }

    fn digit_count(&self) -> usize {
        self.digits().count()
    }

    /// Zeros ending the digits (for a non-zero value).
    fn trailing_zeros(&self) -> usize {
        let all = self.int.bytes().chain(self.frac.bytes());
        all.rev().take_while(|&b| b == b'0').count()
    }

    fn is_zero(&self) -> bool {
        self.digit_count() == 0
    }

    /// `stripTrailingZeros().scale() <= 0`.
    fn is_integral(&self) -> bool {
        self.is_zero() || self.scale <= self.trailing_zeros() as i64
    }

    /// `longValueExact()`, for an integral value.
    fn to_i64(&self) -> Option<i64> {
        if self.is_zero() {
            return Some(0);
        }
        let zeros_after = -self.scale;
        let digit_count = self.digit_count() as i64;
        // Digits kept: all but the fractional trailing zeros the scale removes.
        let kept = digit_count - self.scale.max(0);
        if kept + zeros_after.max(0) > 19 {
            return None;
        }
        let mut magnitude: u128 = 0;
        for b in self.digits().take(usize::try_from(kept).ok()?) {
            magnitude = magnitude * 10 + u128::from(b - b'0');
        }
        for _ in 0..zeros_after.max(0) {
            magnitude *= 10;
        }
        let signed = if self.negative {
            -i128::try_from(magnitude).ok()?
        } else {
            i128::try_from(magnitude).ok()?
        };
        i64::try_from(signed).ok()
    }

    /// `toPlainString()` when it is short, else the text as sent.
    fn plain_or(&self, text: &str) -> String {
        let digits: String = self.digits().map(char::from).collect();
        let digits = if digits.is_empty() {
            "0".to_owned()
        } else {
            digits
        };
        let scale = self.scale;
        let len = digits.len() as i64;
        let plain_len = i64::from(self.negative && !self.is_zero())
            + if scale <= 0 {
                len - scale
            } else if len > scale {
                len + 1
            } else {
                scale + 2
            };
        if plain_len > (MAX_PLAIN_NUMBER_CHARS.max(text.len())) as i64 {
            return text.to_owned();
        }
        let mut plain = String::with_capacity(plain_len as usize);
        if self.negative && !self.is_zero() {
            plain.push('-');
        }
        if scale <= 0 {
            plain.push_str(&digits);
            plain.extend(std::iter::repeat_n('0', (-scale) as usize));
        } else if len > scale {
            let (int, frac) = digits.split_at((len - scale) as usize);
            plain.push_str(int);
            plain.push('.');
            plain.push_str(frac);
        } else {
            plain.push_str("0.");
            plain.extend(std::iter::repeat_n('0', (scale - len) as usize));
            plain.push_str(&digits);
        }
        plain
    }
}

/// Records without a client timestamp all got the same server timestamp: ThingsBoard stores an
/// array of plain objects as one data point per key, so merge them into one record.
fn merge_server_ts(records: Vec<TsRecord>, server_ts: i64) -> Vec<TsRecord> {
    if records.iter().filter(|r| r.ts == server_ts).count() < 2 {
        return records;
    }
    let mut merged = TsRecord {
        ts: server_ts,
        entries: Vec::new(),
    };
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        if record.ts == server_ts {
            merged.entries.extend(record.entries);
        } else {
            out.push(record);
        }
    }
    out.insert(0, merged);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KvValue::*;

    const NOW: i64 = 1_700_000_000_000;

    fn s(v: &str) -> KvValue {
        String(v.to_owned())
    }

    /// Runs one telemetry case: the payload, then the records it must give.
    fn check_telemetry(payload: &str, want: &[(i64, &[(&str, KvValue)])]) {
        let got = parse_telemetry(payload.as_bytes(), NOW)
            .unwrap_or_else(|e| panic!("{payload}: unexpected error {e}"));
        let want: Vec<TsRecord> = want
            .iter()
            .map(|(ts, entries)| TsRecord {
                ts: *ts,
                entries: entries
                    .iter()
                    .map(|(k, v)| KvEntry::new(*k, v.clone()))
                    .collect(),
            })
            .collect();
        assert_eq!(got, want, "{payload}");
    }

    fn check_rejected(payload: &str, reason: &str) {
        let telemetry = parse_telemetry(payload.as_bytes(), NOW);
        match telemetry {
            Err(e) => assert_eq!(e.reason(), reason, "{payload}: {e}"),
            Ok(r) => panic!("{payload}: accepted as {r:?}, expected {reason}"),
        }
    }

    #[test]
    fn telemetry_formats_of_the_reference() {
        check_telemetry(
            r#"{"temperature":42}"#,
            &[(NOW, &[("temperature", Long(42))])],
        );
        check_telemetry(
            r#"{"key1":"value1", "key2":"value2"}"#,
            &[(NOW, &[("key1", s("value1")), ("key2", s("value2"))])],
        );
        check_telemetry(
            r#"[{"key1":"value1"}, {"key2":true}]"#,
            &[(NOW, &[("key1", s("value1")), ("key2", Bool(true))])],
        );
        check_telemetry(
            r#"{"ts":1451649600512, "values":{"key1":"value1", "key2":"value2"}}"#,
            &[(
                1_451_649_600_512,
                &[("key1", s("value1")), ("key2", s("value2"))],
            )],
        );
        check_telemetry(
            r#"[{"ts":1,"values":{"a":1}},{"ts":2,"values":{"a":2}}]"#,
            &[(1, &[("a", Long(1))]), (2, &[("a", Long(2))])],
        );
        check_telemetry(
            r#"[{"ts":1,"values":{"a":1}},{"b":2}]"#,
            &[(1, &[("a", Long(1))]), (NOW, &[("b", Long(2))])],
        );
        check_telemetry("{}", &[(NOW, &[])]);
        check_telemetry("[]", &[]);
    }

    #[test]
    fn values_keep_their_type() {
        let payload = r#"{
          "stringKey":"value1", "booleanKey":true, "doubleKey":42.0, "longKey":73,
          "jsonKey": {"someNumber": 42, "someArray": [1,2,3], "someNestedObject": {"key": "value"}}
        }"#;
        check_telemetry(
            payload,
            &[(
                NOW,
                &[
                    ("stringKey", s("value1")),
                    ("booleanKey", Bool(true)),
                    ("doubleKey", Double(42.0)),
                    ("longKey", Long(73)),
                    (
                        "jsonKey",
                        Json(
                            r#"{"someNumber": 42, "someArray": [1,2,3], "someNestedObject": {"key": "value"}}"#
                                .into(),
                        ),
                    ),
                ],
            )],
        );
    }

    #[test]
    fn numeric_strings_are_type_cast_as_thingsboard_does() {
        let attrs = parse_attributes(
            br#"{"a":"5","b":"1.5","c":"-7","d":".5","e":"1e3","f":"+1","g":"1.","h":"x1","i":"","j":"99999999999999999999","k":"-"}"#,
        )
        .expect("parses");
        let got: Vec<(&str, &KvValue)> = attrs.iter().map(|e| (e.key.as_str(), &e.value)).collect();
        assert_eq!(
            got,
            [
                ("a", &KvValue::Long(5)),
                ("b", &KvValue::Double(1.5)),
                ("c", &KvValue::Long(-7)),
                ("d", &KvValue::Double(0.5)),
                ("e", &KvValue::String("1e3".into())),
                ("f", &KvValue::String("+1".into())),
                ("g", &KvValue::String("1.".into())),
                ("h", &KvValue::String("x1".into())),
                ("i", &KvValue::String("".into())),
                ("j", &KvValue::String("99999999999999999999".into())),
                ("k", &KvValue::String("-".into())),
            ]
        );
    }

    #[test]
    fn number_rules() {
        // ThingsBoard's JsonConverter (type cast on, its default): an integral value not
        // written as a plain decimal fraction is a LONG when one holds it, else a STRING; any
        // other value is a DOUBLE with at most 16 decimals, else a STRING. A STRING holds the
        // plain digits (BigDecimal.toPlainString) or, when those would be long, the text sent.
        let cases: &[(&str, KvValue)] = &[
            ("0", Long(0)),
            ("-0", Long(0)),
            ("-5", Long(-5)),
            ("9223372036854775807", Long(i64::MAX)),
            ("-9223372036854775808", Long(i64::MIN)),
            ("9223372036854775808", s("9223372036854775808")),
            ("-9223372036854775809", s("-9223372036854775809")),
            (
                "1000000000000000000000000000000",
                s("1000000000000000000000000000000"),
            ),
            ("1.5", Double(1.5)),
            ("-0.25", Double(-0.25)),
            ("42.0", Double(42.0)),
            ("0.0", Double(0.0)),
            ("1e3", Long(1000)),
            ("1E2", Long(100)),
            ("1E+2", Long(100)),
            ("1.5e3", Long(1500)),
            ("1.0e0", Long(1)),
            ("0e5", Long(0)),
            ("12e-1", Double(1.2)),
            ("2.5e-1", Double(0.25)),
            ("1e-3", Double(0.001)),
            ("1e-16", Double(1e-16)),
            ("1e-17", s("0.00000000000000001")),
            ("0.1234567890123456", Double(0.123_456_789_012_345_6)),
            ("0.30000000000000004", s("0.30000000000000004")),
            ("9.2e18", Long(9_200_000_000_000_000_000)),
            ("1e19", s("10000000000000000000")),
            ("-1.5e20", s("-150000000000000000000")),
            ("1e400", s("1e400")),
            ("-1E+400", s("-1E+400")),
            ("1e-400", s("1e-400")),
            ("1.5e-400", s("1.5e-400")),
            ("[1,2]", Json("[1,2]".into())),
            (r#""a\"b""#, s("a\"b")),
            (r#""\u00e9""#, s("é")),
            ("false", Bool(false)),
        ];
        for (value, want) in cases {
            let payload = format!(r#"{{"k":{value}}}"#);
            check_telemetry(&payload, &[(NOW, &[("k", want.clone())])]);
        }
    }

    #[test]
    fn negative_zero_is_stored_as_zero() {
        // BigDecimal has no negative zero: ThingsBoard stores -0.0 as 0.0.
        let got = parse_telemetry(br#"{"k":-0.0}"#, NOW).expect("parses");
        let KvValue::Double(d) = got[0].entries[0].value else {
            panic!("{got:?}")
        };
        assert!(d == 0.0 && d.is_sign_positive(), "{d}");
    }

    #[test]
    fn no_number_reads_back_as_nothing() {
        // A value past f64's range with a fraction would be +inf as a DOUBLE.
        let wide = format!("{}.5", "9".repeat(400));
        let got = parse_telemetry(format!(r#"{{"k":{wide}}}"#).as_bytes(), NOW).expect("parses");
        assert_eq!(got[0].entries[0].value, s(&wide));
        for payload in [r#"{"k":1e400}"#, r#"{"k":-1e400}"#, r#"{"k":1e-400}"#] {
            let got = parse_telemetry(payload.as_bytes(), NOW).expect(payload);
            assert!(
                got[0].entries.iter().all(|e| e.value.is_storable()),
                "{payload}: {got:?}"
            );
        }
    }

    #[test]
    fn rejections() {
        // Deeper than serde_json's default of 128 levels: refused, so it never comes back to
        // a parser that cannot read it.
        let deep = format!(r#"{{"a":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        let cases: [(&str, &str); 20] = [
            ("", "empty"),
            ("   ", "empty"),
            ("{", "invalid_json"),
            ("not json", "invalid_json"),
            ("{\"a\":1} trailing", "invalid_json"),
            ("42", "wrong_shape"),
            ("\"text\"", "wrong_shape"),
            ("null", "wrong_shape"),
            ("[1,2]", "wrong_shape"),
            ("[[{\"a\":1}]]", "wrong_shape"),
            (r#"{"a":null}"#, "null_value"),
            (r#"{"a":1e99999999999999999999}"#, "number_out_of_range"),
            (r#"{"a":1e-3000000000}"#, "number_out_of_range"),
            (&deep, "json_too_deep"),
            (r#"{"ts":"x","values":{"a":1}}"#, "bad_timestamp"),
            (r#"{"ts":1.5,"values":{"a":1}}"#, "bad_timestamp"),
            (r#"{"ts":1,"values":[1]}"#, "bad_values"),
            (r#"{"ts":1,"values":5}"#, "bad_values"),
            (r#"{"":1}"#, "empty_key"),
            ("\u{feff}{}", "invalid_json"),
        ];
        for (payload, reason) in cases {
            check_rejected(payload, reason);
        }
    }

    #[test]
    fn json_values_up_to_128_levels_are_kept() {
        let nested = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let at_limit = nested(MAX_JSON_DEPTH);
        check_telemetry(
            &format!(r#"{{"k":{at_limit}}}"#),
            &[(NOW, &[("k", Json(at_limit.clone()))])],
        );
        // Brackets inside strings do not count.
        let text = format!(r#"{{"s":"{}\"[","n":[1]}}"#, "[".repeat(300));
        assert_eq!(json_depth(&text), 2);
        check_rejected(
            &format!(r#"{{"k":{}}}"#, nested(MAX_JSON_DEPTH + 1)),
            "json_too_deep",
        );
    }

    #[test]
    fn attributes_are_one_object() {
        let got = parse_attributes(br#"{"attribute1": "value1", "attribute2": true}"#);
        assert_eq!(
            got,
            Ok(vec![
                KvEntry::new("attribute1", s("value1")),
                KvEntry::new("attribute2", Bool(true))
            ])
        );
        let cases = [
            ("[{\"a\":1}]", "wrong_shape"),
            ("", "empty"),
            ("{\"a\":null}", "null_value"),
        ];
        for (payload, reason) in cases {
            let err = parse_attributes(payload.as_bytes()).expect_err(payload);
            assert_eq!(err.reason(), reason, "{payload}");
        }
    }

    #[test]
    fn object_with_only_ts_is_plain_values() {
        // ThingsBoard treats "ts" as a timestamp only together with "values".
        check_telemetry(r#"{"ts":5}"#, &[(NOW, &[("ts", Long(5))])]);
    }
}
