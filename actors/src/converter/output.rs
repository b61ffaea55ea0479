//! What converters must return, checked field by field: anything else is an error naming the
//! field.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rhai::{Array, Blob, Dynamic, Map};

use super::ConvertError;
use super::helpers::dynamic_to_json;
use crate::model::{
    KvEntry, KvValue, MAX_DEVICE_NAME_CHARS, MAX_DEVICE_TYPE_CHARS, NameError, validate_name,
};

/// The entity an uplink record is about.
#[derive(Clone, Debug, PartialEq)]
pub enum Entity {
    Device { name: String, device_type: String },
    Asset { name: String, asset_type: String },
}

/// Data points with their time; `ts: None` means "when the message arrived".
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryRecord {
    pub ts: Option<i64>,
    pub values: Vec<KvEntry>,
}

/// One object of an uplink converter's output.
#[derive(Clone, Debug, PartialEq)]
pub struct UplinkRecord {
    pub entity: Entity,
    pub customer_name: Option<String>,
    pub group_name: Option<String>,
    pub attributes: Vec<KvEntry>,
    pub telemetry: Vec<TelemetryRecord>,
}

fn err<T>(message: impl Into<String>) -> Result<T, ConvertError> {
    Err(ConvertError::new(message))
}

fn kind(value: &Dynamic) -> &'static str {
    if value.is_map() {
        "an object"
    } else if value.is_array() {
        "an array"
    } else if value.is_string() {
        "a string"
    } else if value.is_unit() {
        "null"
    } else if value.is_int() || value.is_float() {
        "a number"
    } else if value.is_bool() {
        "a boolean"
    } else {
        "something else"
    }
}

fn optional_string(map: &Map, field: &str) -> Result<Option<String>, ConvertError> {
    match map.get(field) {
        None => Ok(None),
        Some(v) if v.is_unit() => Ok(None),
        Some(v) if v.is_string() => Ok(Some(v.to_string())),
        Some(v) => err(format!("{field} must be a string, got {}", kind(v))),
    }
}

/// A value as ThingsBoard types it: booleans, longs, doubles and strings stay themselves;
/// objects and arrays are kept as JSON.
fn kv_value(key: &str, value: &Dynamic, field: &str) -> Result<Option<KvValue>, ConvertError> {
    if value.is_unit() {
        return Ok(None);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Some(KvValue::Bool(b)));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Some(KvValue::Long(i)));
    }
    if let Ok(f) = value.as_float() {
        if !f.is_finite() {
            return err(format!("{field}.{key} is not a finite number"));
        }
        return Ok(Some(KvValue::Double(f)));
    }
    if value.is_string() {
        return Ok(Some(KvValue::String(value.to_string())));
    }
    if value.is_map() || value.is_array() {
        let json = dynamic_to_json(value).map_err(|e| {
            ConvertError::new(format!(
                "{field}.{key}: {}",
                ConvertError::from_eval(*e).message
            ))
        })?;
        return Ok(Some(KvValue::Json(json)));
    }
    err(format!(
        "{field}.{key} must be a boolean, number, string, object or array, got {}",
        value.type_name()
    ))
}

fn entries(value: &Dynamic, field: &str) -> Result<Vec<KvEntry>, ConvertError> {
    let Some(map) = value.read_lock::<Map>() else {
        return err(format!("{field} must be an object, got {}", kind(value)));
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map.iter() {
        if let Some(value) = kv_value(k, v, field)? {
            out.push(KvEntry::new(k.as_str(), value));
        }
    }
    Ok(out)
}

/// `telemetry`: a map of values, `{ts, values}`, or an array of either.
fn telemetry(value: &Dynamic) -> Result<Vec<TelemetryRecord>, ConvertError> {
    const SHAPES: &str = "telemetry must be an object of values, {ts, values}, or an array of them";
    if let Some(array) = value.read_lock::<Array>() {
        let mut out = Vec::new();
        for item in array.iter() {
            if item.is_array() {
                return err(SHAPES);
            }
            out.extend(telemetry(item)?);
        }
        return Ok(out);
    }
    let Some(map) = value.read_lock::<Map>() else {
        return err(format!("{SHAPES}, got {}", kind(value)));
    };
    match (map.get("ts"), map.get("values")) {
        (Some(ts), Some(values)) if map.len() == 2 => {
            let ts = ts
                .as_int()
                .or_else(|_| ts.as_float().map(|f| f as i64))
                .map_err(|_| {
                    ConvertError::new(format!("telemetry.ts must be a number, got {}", kind(ts)))
                })?;
            Ok(vec![TelemetryRecord {
                ts: Some(ts),
                values: entries(values, "telemetry.values")?,
            }])
        }
        _ => Ok(vec![TelemetryRecord {
            ts: None,
            values: entries(value, "telemetry")?,
        }]),
    }
}

/// A name the converter chose: it becomes a device (or asset) and is logged, so it must be what
/// ThingsBoard accepts and nothing that could forge a log line.
fn checked_name(
    field: &str,
    what: &'static str,
    name: String,
    max: usize,
) -> Result<String, ConvertError> {
    validate_name(what, &name, max)
        .map(|()| name)
        .map_err(|e: NameError| ConvertError::new(format!("{field}: {e}")))
}

fn record(value: &Dynamic) -> Result<UplinkRecord, ConvertError> {
    let Some(map) = value.read_lock::<Map>() else {
        return err(format!(
            "the converter must return an object or an array of objects, got {}",
            kind(value)
        ));
    };
    let entity = match (
        optional_string(&map, "deviceName")?,
        optional_string(&map, "assetName")?,
    ) {
        (Some(name), _) if !name.is_empty() => Entity::Device {
            name: checked_name("deviceName", "device name", name, MAX_DEVICE_NAME_CHARS)?,
            device_type: checked_name(
                "deviceType",
                "device type",
                optional_string(&map, "deviceType")?
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "default".into()),
                MAX_DEVICE_TYPE_CHARS,
            )?,
        },
        (None, Some(name)) if !name.is_empty() => Entity::Asset {
            name: checked_name("assetName", "asset name", name, MAX_DEVICE_NAME_CHARS)?,
            asset_type: checked_name(
                "assetType",
                "asset type",
                optional_string(&map, "assetType")?
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| "default".into()),
                MAX_DEVICE_TYPE_CHARS,
            )?,
        },
        _ => return err("deviceName (or assetName) must be a non-empty string"),
    };
    Ok(UplinkRecord {
        entity,
        customer_name: optional_string(&map, "customerName")?,
        group_name: optional_string(&map, "groupName")?,
        attributes: match map.get("attributes") {
            None => Vec::new(),
            Some(v) if v.is_unit() => Vec::new(),
            Some(v) => entries(v, "attributes")?,
        },
        telemetry: match map.get("telemetry") {
            None => Vec::new(),
            Some(v) if v.is_unit() => Vec::new(),
            Some(v) => telemetry(v)?,
        },
    })
}

pub(super) fn uplink_records(out: Dynamic) -> Result<Vec<UplinkRecord>, ConvertError> {
    if let Some(array) = out.read_lock::<Array>() {
        return array.iter().map(record).collect();
    }
    Ok(vec![record(&out)?])
}

#[derive(Clone, Debug, PartialEq)]
pub enum DownlinkContent {
    Json(String),
    Text(String),
    Binary(Vec<u8>),
}

/// A downlink converter's output: what to send the device, and metadata for the transport.
#[derive(Clone, Debug, PartialEq)]
pub struct Downlink {
    pub content: DownlinkContent,
    pub metadata: Vec<(String, String)>,
}

pub(super) fn downlink(out: Dynamic) -> Result<Downlink, ConvertError> {
    let Some(map) = out.read_lock::<Map>() else {
        return err(format!(
            "the downlink converter must return {{contentType, data, metadata}}, got {}",
            kind(&out)
        ));
    };
    let Some(data) = map.get("data") else {
        return err("data is missing");
    };
    let content_type = optional_string(&map, "contentType")?.unwrap_or_else(|| "JSON".into());
    let content = match content_type.as_str() {
        "JSON" if data.is_string() => {
            let text = data.to_string();
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| ConvertError::new(format!("data is not JSON: {e}")))?;
            DownlinkContent::Json(text)
        }
        "JSON" => DownlinkContent::Json(dynamic_to_json(data).map_err(|e| {
            ConvertError::new(format!("data: {}", ConvertError::from_eval(*e).message))
        })?),
        "TEXT" if data.is_string() => DownlinkContent::Text(data.to_string()),
        "TEXT" => {
            return err(format!(
                "data must be a string for TEXT, got {}",
                kind(data)
            ));
        }
        "BINARY" if data.is_blob() => DownlinkContent::Binary(
            data.read_lock::<Blob>()
                .map(|b| b.clone())
                .unwrap_or_default(),
        ),
        "BINARY" if data.is_string() => DownlinkContent::Binary(
            BASE64
                .decode(data.to_string().trim())
                .map_err(|e| ConvertError::new(format!("data must be base64 for BINARY: {e}")))?,
        ),
        "BINARY" => {
            return err(format!(
                "data must be bytes or base64 for BINARY, got {}",
                kind(data)
            ));
        }
        other => {
            return err(format!(
                "contentType must be JSON, TEXT or BINARY, got {other}"
            ));
        }
    };
    let metadata = match map.get("metadata") {
        None => Vec::new(),
        Some(v) if v.is_unit() => Vec::new(),
        Some(v) => {
            let Some(m) = v.read_lock::<Map>() else {
                return err(format!("metadata must be an object, got {}", kind(v)));
            };
            m.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        }
    };
    Ok(Downlink { content, metadata })
}

fn json_value(v: &KvValue) -> serde_json::Value {
    match v {
        KvValue::Bool(b) => serde_json::Value::Bool(*b),
        KvValue::Long(l) => serde_json::Value::from(*l),
        KvValue::Double(d) => serde_json::Value::from(*d),
        KvValue::String(s) => serde_json::Value::String(s.clone()),
        KvValue::Json(s) => {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.clone()))
        }
    }
}

fn json_entries(entries: &[KvEntry]) -> serde_json::Value {
    serde_json::Value::Object(
        entries
            .iter()
            .map(|e| (e.key.clone(), json_value(&e.value)))
            .collect(),
    )
}

impl UplinkRecord {
    /// The record in ThingsBoard's converter-output JSON (what `testUpLink` shows).
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        match &self.entity {
            Entity::Device { name, device_type } => {
                out.insert("deviceName".into(), name.clone().into());
                out.insert("deviceType".into(), device_type.clone().into());
            }
            Entity::Asset { name, asset_type } => {
                out.insert("assetName".into(), name.clone().into());
                out.insert("assetType".into(), asset_type.clone().into());
            }
        }
        if let Some(c) = &self.customer_name {
            out.insert("customerName".into(), c.clone().into());
        }
        if let Some(g) = &self.group_name {
            out.insert("groupName".into(), g.clone().into());
        }
        out.insert("attributes".into(), json_entries(&self.attributes));
        let telemetry: Vec<serde_json::Value> = self
            .telemetry
            .iter()
            .map(|t| match t.ts {
                Some(ts) => serde_json::json!({"ts": ts, "values": json_entries(&t.values)}),
                None => json_entries(&t.values),
            })
            .collect();
        out.insert(
            "telemetry".into(),
            match telemetry.len() {
                1 => telemetry.into_iter().next().unwrap_or_default(),
                _ => serde_json::Value::Array(telemetry),
            },
        );
        serde_json::Value::Object(out)
    }
}

impl Downlink {
    /// The downlink in ThingsBoard's converter-output JSON (what `testDownLink` shows).
    pub fn to_json(&self) -> serde_json::Value {
        let (content_type, data) = match &self.content {
            DownlinkContent::Json(s) => ("JSON", s.clone()),
            DownlinkContent::Text(s) => ("TEXT", s.clone()),
            DownlinkContent::Binary(b) => ("BINARY", BASE64.encode(b)),
        };
        serde_json::json!({
            "contentType": content_type,
            "data": data,
            "metadata": self
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
}
