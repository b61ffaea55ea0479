//! ThingsBoard's JSON payload formats for telemetry and attributes, parsed into the domain model.
//!
//! Telemetry is one of: an object of key-values; an array of such objects; `{"ts", "values"}`;
//! or an array mixing the two. Attributes are an object of key-values. Values keep the type the
//! device sent, by the rules of ThingsBoard's `JsonConverter`: a JSON string is a STRING, `true`
//! and `false` a BOOLEAN, a number with a fraction or exponent a DOUBLE (an exponent form with an
//! integral value a LONG), any other number a LONG, an object or array JSON. `null` is refused.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use thiserror::Error;

use crate::model::{KvEntry, KvValue, TsRecord};

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
    #[error("value of key {key:?} is an integer out of the 64-bit range: {text}")]
    BigInteger { key: String, text: String },
    #[error("\"ts\" must be an integer number of milliseconds, got {0}")]
    BadTimestamp(String),
    #[error("\"values\" must be a JSON object")]
    BadValues,
    #[error("key must not be empty")]
    EmptyKey,
}

impl PayloadError {
    /// A short, fixed label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            PayloadError::Empty => "empty",
            PayloadError::InvalidJson(_) => "invalid_json",
            PayloadError::WrongShape { .. } => "wrong_shape",
            PayloadError::NullValue { .. } => "null_value",
            PayloadError::BigInteger { .. } => "big_integer",
            PayloadError::BadTimestamp(_) => "bad_timestamp",
            PayloadError::BadValues => "bad_values",
            PayloadError::EmptyKey => "empty_key",
        }
    }
}

/// Parses a telemetry payload; `server_ts` stamps records that carry no `ts`.
pub fn parse_telemetry(bytes: &[u8], server_ts: i64) -> Result<Vec<TsRecord>, PayloadError> {
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

/// Parses an attributes payload: one object of key-values.
pub fn parse_attributes(bytes: &[u8]) -> Result<Vec<KvEntry>, PayloadError> {
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
        Kind::String => KvValue::String(unquote(text)?),
        Kind::Bool => KvValue::Bool(text == "true"),
        Kind::Object | Kind::Array => KvValue::Json(text.to_owned()),
        Kind::Null => {
            return Err(PayloadError::NullValue {
                key: key.to_owned(),
            });
        }
        Kind::Number => parse_number(key, text)?,
    })
}

fn unquote(text: &str) -> Result<String, PayloadError> {
    let inner = &text[1..text.len() - 1];
    if inner.contains('\\') {
        serde_json::from_str(text).map_err(invalid_json)
    } else {
        Ok(inner.to_owned())
    }
}

fn parse_number(key: &str, text: &str) -> Result<KvValue, PayloadError> {
    let has_exponent = text.contains(['e', 'E']);
    if text.contains('.') && !has_exponent {
        return Ok(KvValue::Double(parse_f64(text)?));
    }
    if has_exponent {
        let d = parse_f64(text)?;
        let integral = d.fract() == 0.0 && d.abs() < 9.2e18 && !text.contains('.');
        #[allow(clippy::cast_possible_truncation)]
        return Ok(if integral {
            KvValue::Long(d as i64)
        } else {
            KvValue::Double(d)
        });
    }
    text.parse::<i64>()
        .map(KvValue::Long)
        .map_err(|_| PayloadError::BigInteger {
            key: key.to_owned(),
            text: text.to_owned(),
        })
}

fn parse_f64(text: &str) -> Result<f64, PayloadError> {
    text.parse::<f64>()
        .map_err(|e| PayloadError::InvalidJson(format!("bad number {text}: {e}")))
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
    fn number_rules() {
        let cases: &[(&str, KvValue)] = &[
            ("0", Long(0)),
            ("-5", Long(-5)),
            ("9223372036854775807", Long(i64::MAX)),
            ("1.5", Double(1.5)),
            ("-0.25", Double(-0.25)),
            ("42.0", Double(42.0)),
            ("1e3", Long(1000)),
            ("1E2", Long(100)),
            ("1.5e3", Double(1500.0)),
            ("2.5e-1", Double(0.25)),
            ("1e-3", Double(0.001)),
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
    fn rejections() {
        let cases = [
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
            (r#"{"a":92233720368547758070}"#, "big_integer"),
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
