//! What the directory's REST endpoints share: ids in ThingsBoard's `{"entityType","id"}`
//! shape, text and `additionalInfo` checks, page queries with ThingsBoard's spellings.

use actors::directory::{EntityRef, EntityType, MAX_FIELD_CHARS, MAX_INFO_BYTES};
use actors::model::validate_name;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;

/// `{"entityType": .., "id": ..}` as a body carries it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdBody {
    pub id: String,
    pub entity_type: Option<String>,
}

impl IdBody {
    pub fn uuid(&self) -> Result<Uuid, ApiError> {
        parse_uuid(&self.id)
    }

    /// The entity it names; its `entityType` is required.
    pub fn entity(&self) -> Result<EntityRef, ApiError> {
        let kind = self
            .entity_type
            .as_deref()
            .ok_or_else(|| ApiError::bad_request("entityType should be specified!"))?;
        entity_ref(kind, &self.id)
    }
}

pub fn parse_uuid(s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::bad_request(format!("Invalid UUID string: {s}")))
}

/// An entity named by its type and id as query parameters or path segments.
pub fn entity_ref(kind: &str, id: &str) -> Result<EntityRef, ApiError> {
    let entity_type = EntityType::parse(kind).ok_or_else(|| {
        ApiError::bad_request(format!(
            "Unsupported entity type: {kind:?} (DEVICE, ASSET, CUSTOMER, TENANT and USER are)"
        ))
    })?;
    Ok(EntityRef {
        entity_type,
        id: parse_uuid(id)?,
    })
}

pub fn id_json(kind: EntityType, id: Uuid) -> Value {
    json!({"entityType": kind.as_str(), "id": id})
}

pub fn ref_json(entity: EntityRef) -> Value {
    id_json(entity.entity_type, entity.id)
}

/// A required name: not blank, at most [`MAX_FIELD_CHARS`], no control characters; 400
/// with `missing` when absent.
pub fn required_text(
    what: &'static str,
    value: Option<String>,
    missing: &str,
) -> Result<String, ApiError> {
    let value = value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request(missing))?;
    optional_text(what, Some(value)).map(|v| v.unwrap_or_default())
}

/// An optional text field, checked as [`required_text`] when present.
pub fn optional_text(
    what: &'static str,
    value: Option<String>,
) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.is_empty() => Ok(Some(v)),
        Some(v) => {
            validate_name(what, &v, MAX_FIELD_CHARS)
                .map_err(|e| ApiError::bad_request(capitalized(&e.to_string())))?;
            Ok(Some(v))
        }
        None => Ok(None),
    }
}

/// `additionalInfo` as given (any JSON, at most [`MAX_INFO_BYTES`]); `None` for `null`.
pub fn info_text(
    raw: Option<Box<serde_json::value::RawValue>>,
) -> Result<Option<String>, ApiError> {
    info_text_within(raw, MAX_INFO_BYTES)
}

/// [`info_text`] with another bound. JSON nested deeper than it can be read back (128
/// levels) is refused rather than kept and shown as `null`.
pub fn info_text_within(
    raw: Option<Box<serde_json::value::RawValue>>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match raw.map(|r| r.get().to_owned()) {
        Some(text) if text.len() > max => Err(ApiError::bad_request(format!(
            "additionalInfo is longer than {max} bytes"
        ))),
        Some(text) if text != "null" => {
            serde_json::from_str::<Value>(&text)
                .map_err(|e| ApiError::bad_request(format!("additionalInfo is unreadable: {e}")))?;
            Ok(Some(text))
        }
        _ => Ok(None),
    }
}

pub fn info_json(text: Option<&str>) -> Value {
    text.and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null)
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// A page query with a `type` filter (device and asset lists).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypedPageQuery {
    pub page_size: Option<usize>,
    pub page: Option<usize>,
    pub text_search: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl TypedPageQuery {
    pub fn request(&self, max: usize) -> Result<actors::ports::PageRequest, ApiError> {
        super::PageQuery {
            page_size: self.page_size,
            page: self.page,
            text_search: self.text_search.clone(),
        }
        .request(max)
    }

    pub fn kind(&self) -> Option<&str> {
        self.kind.as_deref().filter(|k| !k.is_empty())
    }
}

/// The largest page a directory list returns.
pub const MAX_PAGE: usize = 10_000;
