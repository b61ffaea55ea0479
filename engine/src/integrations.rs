//! Converters and integrations declared in the config file, created (or brought back to their
//! declared form) at every start. Their ids derive from the tenant and their names, so a
//! restart updates them in place instead of adding copies.

use actors::integration::events::{DebugEvents, EventLimits};
use actors::integration::{
    ConverterDef, ConverterKind, IntegrationDef, IntegrationKind, Integrations, Settings,
};
use actors::model::{TenantId, now_ms};
use anyhow::Context;
use tracing::info;
use uuid::Uuid;

use crate::config::{IntegrationsConfig, bytes};

/// How the integration hub runs, from its configuration.
pub fn settings(c: &IntegrationsConfig) -> Settings {
    Settings {
        max_payload: bytes(c.max_payload_size),
        queue_wait: c.queue_wait,
        max_in_flight: c.max_in_flight_per_integration,
        max_pending_downlinks: c.max_pending_downlinks,
        max_devices_per_uplink: c.max_devices_per_uplink,
        max_devices_per_integration: c.max_devices_per_integration,
    }
}

/// The debug-event store, bounded as configured.
pub fn debug_events(c: &IntegrationsConfig) -> DebugEvents {
    DebugEvents::with_limits(EventLimits {
        per_entity: c.debug_events_per_entity,
        ttl: c.debug_event_ttl,
        max_text_size: bytes(c.debug_event_max_text_size),
        max_bytes_per_entity: bytes(c.debug_events_max_bytes_per_entity),
        max_bytes: bytes(c.debug_events_max_bytes),
    })
}

fn converter_id(tenant: TenantId, name: &str) -> Uuid {
    Uuid::new_v5(&tenant.0, format!("converter:{name}").as_bytes())
}

pub async fn declare(
    hub: &Integrations,
    config: &IntegrationsConfig,
    tenant: TenantId,
) -> anyhow::Result<()> {
    for c in &config.converter {
        let script = match (&c.script, &c.script_file) {
            (Some(script), _) => script.clone(),
            (None, Some(file)) => std::fs::read_to_string(file).with_context(|| {
                format!("converter '{}': cannot read {}", c.name, file.display())
            })?,
            (None, None) => anyhow::bail!("converter '{}' has no script", c.name),
        };
        let id = converter_id(tenant, &c.name);
        let created_time = hub
            .converter(tenant, id)
            .map_or_else(now_ms, |old| old.created_time);
        hub.save_converter(ConverterDef {
            id,
            tenant_id: tenant,
            name: c.name.clone(),
            kind: if c.kind == "downlink" {
                ConverterKind::Downlink
            } else {
                ConverterKind::Uplink
            },
            script,
            debug_mode: c.debug,
            created_time,
        })
        .await
        .with_context(|| format!("converter '{}'", c.name))?;
    }
    for i in &config.integration {
        let id = Uuid::new_v5(&tenant.0, format!("integration:{}", i.name).as_bytes());
        let created_time = hub
            .integration(tenant, id)
            .map_or_else(now_ms, |old| old.created_time);
        hub.save_integration(IntegrationDef {
            id,
            tenant_id: tenant,
            name: i.name.clone(),
            kind: IntegrationKind::parse(&i.kind.to_uppercase())
                .with_context(|| format!("integration '{}': unknown type {}", i.name, i.kind))?,
            routing_key: i.routing_key.clone(),
            enabled: i.enabled,
            allow_create_devices: i.allow_create_devices,
            uplink_converter_id: converter_id(tenant, &i.uplink_converter),
            downlink_converter_id: i
                .downlink_converter
                .as_deref()
                .map(|name| converter_id(tenant, name)),
            metadata: i.metadata.clone(),
            debug_mode: i.debug,
            created_time,
        })
        .await
        .with_context(|| format!("integration '{}'", i.name))?;
    }
    if !config.converter.is_empty() || !config.integration.is_empty() {
        info!(
            converters = config.converter.len(),
            integrations = config.integration.len(),
            "declared integrations applied"
        );
    }
    Ok(())
}
