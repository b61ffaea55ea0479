//! The devices an uplink names: found, or created when the integration may create them, within
//! two limits. One uplink may name at most `max_devices_per_uplink` distinct devices (a
//! ten-byte datagram whose converter made a name per byte created 3 000 devices), and one
//! integration may create at most `max_devices_per_integration` while the engine runs. Past
//! either, the message is refused with an error event and the refusal is counted in
//! `engine_integration_devices_refused_total`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics::counter;
use tracing::info;
use uuid::Uuid;

use super::{Integrations, LiveIntegration, UplinkError};
use crate::converter::{ConvertError, Entity, UplinkRecord};
use crate::metrics::{DEVICES_CREATED, DEVICES_REFUSED};
use crate::model::{AccessToken, Device, DeviceId, now_ms};
use crate::ports::RegistryError;

impl Integrations {
    /// The converter's records, or a converter error when they name more distinct devices
    /// than one uplink may.
    pub(super) fn devices_per_uplink(
        &self,
        live: &LiveIntegration,
        records: Vec<UplinkRecord>,
    ) -> Result<Vec<UplinkRecord>, ConvertError> {
        let max = self.settings.max_devices_per_uplink;
        if max == 0 || records.len() <= max {
            return Ok(records);
        }
        let named = records
            .iter()
            .map(|r| match &r.entity {
                Entity::Device { name, .. } | Entity::Asset { name, .. } => name.as_str(),
            })
            .collect::<HashSet<_>>()
            .len();
        if named <= max {
            return Ok(records);
        }
        counter!(DEVICES_REFUSED, "integration" => live.def.name.clone(), "reason" => "per_uplink")
            .increment(1);
        Err(ConvertError::new(format!(
            "the converter named {named} devices in one message; an integration takes at most \
             {max} per message (integrations.max_devices_per_uplink)"
        )))
    }

    /// The device a converter named, created when the integration may create devices and has
    /// not created its limit.
    pub(super) async fn device(
        &self,
        live: &LiveIntegration,
        name: &str,
        device_type: &str,
    ) -> Result<Arc<Device>, UplinkError> {
        let def = &live.def;
        let registry_error = |e: RegistryError| UplinkError::Registry(e.to_string());
        if let Some(device) = self
            .registry
            .by_name(def.tenant_id, name)
            .await
            .map_err(registry_error)?
        {
            return Ok(device);
        }
        if !def.allow_create_devices {
            return Err(UplinkError::Refused(format!(
                "device {name:?} does not exist and integration {:?} may not create devices",
                def.name
            )));
        }
        // Reserve a place first, so concurrent uplinks cannot overshoot the limit together.
        let max = self.settings.max_devices_per_integration;
        let reserved = live.devices_created.fetch_add(1, Ordering::AcqRel);
        let release = || live.devices_created.fetch_sub(1, Ordering::AcqRel);
        if max != 0 && reserved >= max {
            release();
            counter!(DEVICES_REFUSED, "integration" => def.name.clone(), "reason" => "per_integration")
                .increment(1);
            return Err(UplinkError::Refused(format!(
                "device {name:?} not created: integration {:?} has created its limit of {max} \
                 devices (integrations.max_devices_per_integration)",
                def.name
            )));
        }
        let device = Device {
            id: DeviceId::derive(def.tenant_id, name),
            tenant_id: def.tenant_id,
            name: name.to_owned(),
            device_type: if device_type.is_empty() {
                "default".into()
            } else {
                device_type.to_owned()
            },
            label: None,
            token: AccessToken(Uuid::new_v4().simple().to_string()),
            created_time: now_ms(),
            additional_info: None,
        };
        match self.registry.create(device).await {
            Ok(device) => {
                counter!(DEVICES_CREATED, "integration" => def.name.clone()).increment(1);
                // Names are checked (no control characters) and still shown escaped.
                info!(device = ?device.name, integration = ?def.name, "device created by integration");
                Ok(device)
            }
            // Another message (or node) created it at the same moment: same id, same device.
            Err(RegistryError::DuplicateName) => {
                release();
                self.registry
                    .by_name(def.tenant_id, name)
                    .await
                    .map_err(registry_error)?
                    .ok_or_else(|| UplinkError::Registry("device vanished while created".into()))
            }
            Err(e) => {
                release();
                Err(registry_error(e))
            }
        }
    }
}
