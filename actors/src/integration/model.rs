//! Converter and integration definitions: what an operator creates over REST or declares in the
//! config file, and what the catalog persists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::TenantId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ConverterKind {
    Uplink,
    Downlink,
}

impl ConverterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConverterKind::Uplink => "UPLINK",
            ConverterKind::Downlink => "DOWNLINK",
        }
    }
}

/// A data converter: a Rhai script (TBEL style) and how it is run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConverterDef {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub name: String,
    pub kind: ConverterKind,
    /// The decoder (uplink) or encoder (downlink) script.
    pub script: String,
    /// Record In/Out/Error events of every run.
    pub debug_mode: bool,
    pub created_time: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum IntegrationKind {
    Coap,
    Http,
}

impl IntegrationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IntegrationKind::Coap => "COAP",
            IntegrationKind::Http => "HTTP",
        }
    }

    pub fn parse(s: &str) -> Option<IntegrationKind> {
        match s {
            "COAP" => Some(IntegrationKind::Coap),
            "HTTP" => Some(IntegrationKind::Http),
            _ => None,
        }
    }
}

/// An integration: an endpoint third-party devices or platforms send to, named by its routing
/// key, and the converters that translate for it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntegrationDef {
    pub id: Uuid,
    pub tenant_id: TenantId,
    pub name: String,
    pub kind: IntegrationKind,
    /// The secret path segment of the endpoint (`/i/{routingKey}`, `/integrations/http/{..}`).
    pub routing_key: String,
    pub enabled: bool,
    /// Create a device the converter names on its first uplink; otherwise such a message is
    /// refused with an error event.
    pub allow_create_devices: bool,
    pub uplink_converter_id: Uuid,
    pub downlink_converter_id: Option<Uuid>,
    /// Added to every message's metadata for the converters.
    pub metadata: BTreeMap<String, String>,
    pub debug_mode: bool,
    pub created_time: i64,
}
