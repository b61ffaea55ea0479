//! Device provisioning, as ThingsBoard's `DeviceProvisionServiceImpl` decides it, for every
//! transport that carries a request (HTTP `POST /api/v1/provision`, MQTT's provision-only
//! session).
//!
//! - an empty key or secret, an unknown key, a wrong secret or a profile that does not
//!   provision: `NOT_FOUND`;
//! - "allow create new devices": a new device (named as asked, or a random 20-character name)
//!   of the profile's type with the token asked for (or a new one): `SUCCESS`; a name that
//!   exists already: `FAILURE`;
//! - "check pre-provisioned devices": the profile's device of that name, not provisioned yet,
//!   answers with its existing token: `SUCCESS`; unknown, of another profile or provisioned
//!   already: `FAILURE`.
//!
//! A provisioned device gets the server attribute `provisionState = "provisioned"` (through
//! the queue, as every attribute write). `MQTT_BASIC` credentials are answered as asked
//! (`credentialsValue` `{"clientId","userName","password"}`); X.509 ones `FAILURE`.

use std::sync::Arc;

use actors::ingress::{Ingress, Transport};
use actors::model::{
    AccessToken, AttributeScope, BasicCredentials, Device, DeviceId, KvEntry, KvValue, Message,
    MessageBody, is_basic_token, now_ms, validate_access_token, validate_device_name,
};
use actors::ports::{DeviceProfiles, DeviceRegistry, ProvisionType, RegistryError, Store};
use actors::protocol::provision::{Credentials, ProvisionOutcome, ProvisionRequest};

/// The server attribute that marks a provisioned device.
pub const PROVISION_STATE: &str = "provisionState";
const PROVISIONED: &str = "provisioned";

/// What provisioning reads and writes.
pub struct Provisioning<'a> {
    pub registry: &'a Arc<dyn DeviceRegistry>,
    pub profiles: &'a Arc<dyn DeviceProfiles>,
    pub store: &'a Arc<dyn Store>,
    pub ingress: &'a Arc<Ingress>,
}

/// Why a request could not be decided (the storage or the queue failed): the transport's
/// internal error.
#[derive(Debug, thiserror::Error)]
#[error("provisioning failed: {0}")]
pub struct ProvisionError(String);

fn failed(e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError(e.to_string())
}

impl Provisioning<'_> {
    pub async fn provision(
        &self,
        request: &ProvisionRequest,
    ) -> Result<ProvisionOutcome, ProvisionError> {
        if request.key.is_empty() || request.secret.is_empty() {
            return Ok(ProvisionOutcome::NotFound);
        }
        let Some(profile) = self
            .profiles
            .profile_by_provision_key(&request.key)
            .await
            .map_err(failed)?
        else {
            return Ok(ProvisionOutcome::NotFound);
        };
        if profile.provision_device_secret.as_deref() != Some(request.secret.as_str()) {
            return Ok(ProvisionOutcome::NotFound);
        }
        // The token a new device gets: the one asked for (or a new one), or the one MQTT basic
        // credentials stand for.
        let (token, basic) = match &request.credentials {
            Credentials::AccessToken(token) => (token.clone(), None),
            Credentials::MqttBasic {
                client_id,
                username,
                password,
            } => match BasicCredentials::new(client_id.clone(), username.clone(), password.clone())
            {
                Ok(basic) => (None, Some(basic)),
                Err(_) => return Ok(ProvisionOutcome::Failure),
            },
            Credentials::X509(_) => return Ok(ProvisionOutcome::Failure),
        };
        let tenant = profile.tenant_id;
        let device = match profile.provision_type {
            ProvisionType::Disabled => return Ok(ProvisionOutcome::NotFound),
            ProvisionType::AllowCreateNewDevices => {
                let name = request
                    .device_name
                    .clone()
                    .unwrap_or_else(crate::api::device::new_token);
                if validate_device_name(&name).is_err()
                    || token
                        .as_deref()
                        .is_some_and(|t| validate_access_token(t).is_err() || t.contains('/'))
                {
                    return Ok(ProvisionOutcome::Failure);
                }
                if self
                    .registry
                    .by_name(tenant, &name)
                    .await
                    .map_err(failed)?
                    .is_some()
                {
                    return Ok(ProvisionOutcome::Failure);
                }
                let device = Device {
                    id: DeviceId::derive(tenant, &name),
                    tenant_id: tenant,
                    name,
                    device_type: profile.name.clone(),
                    label: None,
                    token: match &basic {
                        Some(basic) => basic.token(),
                        None => AccessToken(token.unwrap_or_else(crate::api::device::new_token)),
                    },
                    created_time: now_ms(),
                    // ThingsBoard marks a device provisioned with `"gateway": true` so.
                    additional_info: request.gateway.then(|| r#"{"gateway":true}"#.to_owned()),
                };
                match self.registry.create(device).await {
                    Ok(device) => device,
                    Err(
                        RegistryError::DuplicateName
                        | RegistryError::DuplicateToken
                        | RegistryError::TooManyDevices { .. },
                    ) => return Ok(ProvisionOutcome::Failure),
                    Err(e) => return Err(failed(e)),
                }
            }
            ProvisionType::CheckPreProvisionedDevices => {
                let Some(name) = &request.device_name else {
                    return Ok(ProvisionOutcome::Failure);
                };
                let device = match self.registry.by_name(tenant, name).await.map_err(failed)? {
                    Some(d) if d.device_type == profile.name => d,
                    _ => return Ok(ProvisionOutcome::Failure),
                };
                let state = self
                    .store
                    .attributes(
                        device.id,
                        Some(AttributeScope::Server),
                        Some(&[PROVISION_STATE.to_owned()]),
                    )
                    .await
                    .map_err(failed)?;
                if state
                    .iter()
                    .any(|a| a.value == KvValue::String(PROVISIONED.into()))
                {
                    return Ok(ProvisionOutcome::Failure);
                }
                device
            }
        };
        let outcome = if is_basic_token(&device.token.0) {
            // MQTT basic credentials are kept only as the digest their token holds, so a
            // pre-provisioned device holding some cannot be told them: it is provisioned only
            // when it asked for exactly those.
            match basic {
                Some(basic) if basic.token() == device.token => {
                    ProvisionOutcome::Success(request.credentials.clone())
                }
                _ => return Ok(ProvisionOutcome::Failure),
            }
        } else {
            ProvisionOutcome::Success(Credentials::AccessToken(Some(device.token.0.clone())))
        };
        self.mark_provisioned(&device).await?;
        Ok(outcome)
    }

    async fn mark_provisioned(&self, device: &Device) -> Result<(), ProvisionError> {
        let message = Message {
            tenant_id: device.tenant_id,
            device_id: device.id,
            received_ts: now_ms(),
            body: MessageBody::Attributes {
                scope: AttributeScope::Server,
                entries: vec![KvEntry::new(
                    PROVISION_STATE,
                    KvValue::String(PROVISIONED.into()),
                )],
            },
        };
        let accepted = self
            .ingress
            .publish_message(Transport::Http, message)
            .await
            .map_err(failed)?;
        accepted.confirmed().await.map_err(failed)
    }
}
