//! Attribute requests from devices and what the server sends back, in ThingsBoard's shapes.
//!
//! A request (MQTT `v1/devices/me/attributes/request/{id}`, HTTP `GET .../attributes`) names
//! client and shared keys as comma-separated strings; the answer is
//! `{"client":{..},"shared":{..}}`, each inner object left out when empty. A shared attribute
//! change reaches subscribed devices as `{"key":value,..}` (only the changed keys), a deletion
//! as `{"deleted":["key",..]}`. Values keep the type they were stored with (a double always
//! with a fractional part, a JSON value embedded as JSON).

use serde_json::value::RawValue;

use crate::model::{KvEntry, KvValue, format_double};
use crate::payload::PayloadError;

/// Which keys of one scope a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keys {
    /// Every key of the scope.
    All,
    /// These keys (none: nothing of the scope).
    Only(Vec<String>),
}

impl Keys {
    pub fn none() -> Keys {
        Keys::Only(Vec::new())
    }

    /// Whether `key` is asked for.
    pub fn wants(&self, key: &str) -> bool {
        match self {
            Keys::All => true,
            Keys::Only(keys) => keys.iter().any(|k| k == key),
        }
    }

    /// ThingsBoard's split: on `,` with no trimming (`"a, b"` asks for `a` and ` b`);
    /// duplicates collapse. An empty string asks for the key `""`.
    fn split(list: &str) -> Keys {
        let mut keys: Vec<String> = Vec::new();
        for key in list.split(',') {
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_owned());
            }
        }
        Keys::Only(keys)
    }
}

/// The client and shared keys one request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeRequest {
    pub client: Keys,
    pub shared: Keys,
}

impl AttributeRequest {
    /// The selection rule of ThingsBoard's device actor: neither list given asks for every
    /// client and every shared attribute; one list alone asks for nothing of the other scope.
    pub fn from_lists(client: Option<&str>, shared: Option<&str>) -> AttributeRequest {
        match (client, shared) {
            (None, None) => AttributeRequest {
                client: Keys::All,
                shared: Keys::All,
            },
            (client, shared) => AttributeRequest {
                client: client.map_or_else(Keys::none, Keys::split),
                shared: shared.map_or_else(Keys::none, Keys::split),
            },
        }
    }

    /// An MQTT request's payload: a JSON object with optional `clientKeys` and `sharedKeys`.
    /// A list is read as ThingsBoard's `getAsString` does: a string, a number's text, or a
    /// one-element array of those; anything else makes the request invalid.
    pub fn parse(payload: &[u8]) -> Result<AttributeRequest, PayloadError> {
        #[derive(serde::Deserialize)]
        struct Lists<'a> {
            #[serde(borrow, rename = "clientKeys")]
            client: Option<&'a RawValue>,
            #[serde(borrow, rename = "sharedKeys")]
            shared: Option<&'a RawValue>,
        }
        let Some(first) = payload.iter().find(|b| !b.is_ascii_whitespace()) else {
            return Err(PayloadError::Empty);
        };
        if *first != b'{' {
            return Err(PayloadError::WrongShape {
                found: "value other than an object",
                expected: "object",
            });
        }
        let lists: Lists<'_> = serde_json::from_slice(payload)
            .map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
        let client = lists.client.map(as_string).transpose()?;
        let shared = lists.shared.map(as_string).transpose()?;
        Ok(AttributeRequest::from_lists(
            client.as_deref(),
            shared.as_deref(),
        ))
    }
}

/// Gson's `getAsString` of a list value.
fn as_string(raw: &RawValue) -> Result<String, PayloadError> {
    let value: serde_json::Value =
        serde_json::from_str(raw.get()).map_err(|e| PayloadError::InvalidJson(e.to_string()))?;
    match value {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        serde_json::Value::Array(mut items) if items.len() == 1 => match items.pop() {
            Some(serde_json::Value::String(s)) => Ok(s),
            Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
            Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
            _ => Err(not_a_list()),
        },
        _ => Err(not_a_list()),
    }
}

fn not_a_list() -> PayloadError {
    PayloadError::WrongShape {
        found: "key list that is not a string",
        expected: "clientKeys and sharedKeys as comma-separated strings",
    }
}

/// Appends `value` as ThingsBoard writes it to a device.
pub fn push_typed(out: &mut String, value: &KvValue) {
    match value {
        KvValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        KvValue::Long(l) => out.push_str(itoa::Buffer::new().format(*l)),
        KvValue::Double(d) => out.push_str(&format_double(*d)),
        KvValue::String(s) => push_string(out, s),
        // Kept as its text when stored; embedded as JSON, as ThingsBoard does.
        KvValue::Json(s) => out.push_str(s),
    }
}

fn push_string(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

fn push_object(out: &mut String, entries: &[KvEntry]) {
    out.push('{');
    for (i, entry) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(out, &entry.key);
        out.push(':');
        push_typed(out, &entry.value);
    }
    out.push('}');
}

/// The answer to an attribute request: `{"client":{..},"shared":{..}}`, an empty scope left
/// out, `{}` when nothing matched.
pub fn response(client: &[KvEntry], shared: &[KvEntry]) -> String {
    let mut out = String::from("{");
    if !client.is_empty() {
        out.push_str("\"client\":");
        push_object(&mut out, client);
    }
    if !shared.is_empty() {
        if !client.is_empty() {
            out.push(',');
        }
        out.push_str("\"shared\":");
        push_object(&mut out, shared);
    }
    out.push('}');
    out
}

/// A shared attribute update for subscribed devices: the changed keys only.
pub fn update(entries: &[KvEntry]) -> String {
    let mut out = String::new();
    push_object(&mut out, entries);
    out
}

/// A shared attribute deletion for subscribed devices.
pub fn deleted(keys: &[String]) -> String {
    let mut out = String::from("{\"deleted\":[");
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_string(&mut out, key);
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(keys: &[&str]) -> Keys {
        Keys::Only(keys.iter().map(|k| (*k).to_owned()).collect())
    }

    #[test]
    fn requests_select_as_thingsboard_does() {
        let cases: &[(&str, Keys, Keys)] = &[
            ("{}", Keys::All, Keys::All),
            (r#"{"clientKeys":"fw"}"#, only(&["fw"]), only(&[])),
            (r#"{"sharedKeys":"a,b"}"#, only(&[]), only(&["a", "b"])),
            (
                r#"{"clientKeys":"fw,battery","sharedKeys":"interval"}"#,
                only(&["fw", "battery"]),
                only(&["interval"]),
            ),
            // No trimming; duplicates collapse; an empty string asks for the key "".
            (r#"{"sharedKeys":"a, b,a"}"#, only(&[]), only(&["a", " b"])),
            (r#"{"clientKeys":""}"#, only(&[""]), only(&[])),
            // getAsString: a number's text, a one-element array.
            (r#"{"sharedKeys":42}"#, only(&[]), only(&["42"])),
            (r#"{"sharedKeys":["x,y"]}"#, only(&[]), only(&["x", "y"])),
            // null is absent.
            (r#"{"clientKeys":null}"#, Keys::All, Keys::All),
        ];
        for (payload, client, shared) in cases {
            let parsed = AttributeRequest::parse(payload.as_bytes());
            assert_eq!(
                parsed,
                Ok(AttributeRequest {
                    client: client.clone(),
                    shared: shared.clone()
                }),
                "{payload}"
            );
        }
    }

    #[test]
    fn invalid_requests_are_refused() {
        for payload in [
            "",
            "  ",
            "[]",
            "\"fw\"",
            "{bad",
            "[null,null]",
            r#"{"sharedKeys":["a","b"]}"#,
            r#"{"sharedKeys":{"a":1}}"#,
        ] {
            assert!(
                AttributeRequest::parse(payload.as_bytes()).is_err(),
                "{payload:?} accepted"
            );
        }
    }

    #[test]
    fn http_query_lists_follow_the_same_rule() {
        assert_eq!(
            AttributeRequest::from_lists(None, Some("interval,nope")),
            AttributeRequest {
                client: only(&[]),
                shared: only(&["interval", "nope"])
            }
        );
        assert!(
            AttributeRequest::from_lists(None, None)
                .client
                .wants("anything")
        );
    }

    #[test]
    fn values_keep_their_type_on_the_way_out() {
        let client = [
            KvEntry::new("fw", KvValue::Double(1.2)),
            KvEntry::new("n", KvValue::Long(42)),
            KvEntry::new("d", KvValue::Double(42.0)),
        ];
        let shared = [
            KvEntry::new("on", KvValue::Bool(true)),
            KvEntry::new("mode", KvValue::String("eco \"x\"".into())),
            KvEntry::new("cfg", KvValue::Json(r#"{"a":[1,2]}"#.into())),
        ];
        assert_eq!(
            response(&client, &shared),
            r#"{"client":{"fw":1.2,"n":42,"d":42.0},"shared":{"on":true,"mode":"eco \"x\"","cfg":{"a":[1,2]}}}"#
        );
        assert_eq!(response(&[], &shared[..1]), r#"{"shared":{"on":true}}"#);
        assert_eq!(response(&client[1..2], &[]), r#"{"client":{"n":42}}"#);
        assert_eq!(response(&[], &[]), "{}");
        assert_eq!(update(&client[1..2]), r#"{"n":42}"#);
        assert_eq!(
            deleted(&["interval".into(), "mo\"de".into()]),
            r#"{"deleted":["interval","mo\"de"]}"#
        );
    }
}
