//! Platform integrations: endpoints third-party devices and platforms send vendor payloads to
//! (CoAP, HTTP), each named by a routing key, each with an uplink converter that turns a
//! payload into devices' telemetry and attributes, and optionally a downlink converter.
//!
//! [`Integrations`] is the one address every transport talks to. It holds every definition in
//! memory (written through to a [`Catalog`]) with its converter compiled, so a changed
//! converter or integration takes effect for the next message without a restart. Converter
//! runs go to the [`ConverterPool`]'s threads, never the network event loops; each integration
//! may have a bounded number of messages in flight, so one flooded or slow integration cannot
//! take every place in the pool's queue from the others. A failing script fails its message
//! only: there is no blacklisting of a script after some errors.

pub mod events;
mod model;
pub mod pool;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{Counter, Histogram, counter, histogram};
use parking_lot::{Mutex, RwLock};
use rhai::AST;
use serde_json::{Value, json};
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{info, warn};
use uuid::Uuid;

pub use model::{ConverterDef, ConverterKind, IntegrationDef, IntegrationKind};

use crate::converter::{ConvertError, ConverterRuntime, Downlink, Entity, UplinkRecord};
use crate::ingress::{Ingress, Rejection, Transport};
use crate::metrics::{
    DEVICES_CREATED, INTEGRATION_CONVERSION_SECONDS, INTEGRATION_CONVERSIONS, INTEGRATION_ERRORS,
    INTEGRATION_MESSAGES, INTEGRATION_UNKNOWN_KEY,
};
use crate::model::{
    AccessToken, AttributeScope, Device, DeviceId, Message, MessageBody, TenantId, TsRecord, now_ms,
};
use crate::ports::{Catalog, DeviceRegistry, Page, PageRequest, RegistryError, StoreError};
use events::{DebugEvents, EntityKind, EventKind};
use pool::{ConverterPool, PoolError};

/// How integrations run.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Largest payload an integration accepts.
    pub max_payload: usize,
    /// Longest an uplink waits for room in a full queue before it is answered "overloaded".
    pub queue_wait: Duration,
    /// Messages one integration may have in conversion or on their way into the queue.
    pub max_in_flight: usize,
    /// Devices with a pending (HTTP) downlink at most; past it the oldest is dropped.
    pub max_pending_downlinks: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_payload: 64 * 1024,
            queue_wait: Duration::from_secs(5),
            max_in_flight: 1024,
            max_pending_downlinks: 100_000,
        }
    }
}

/// Why an uplink was not taken. Each maps to the transport's own code: see the CoAP and HTTP
/// integration adapters.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum UplinkError {
    #[error("no integration has this routing key")]
    NotFound,
    #[error("the integration is disabled")]
    Disabled,
    #[error("the payload is empty")]
    EmptyPayload,
    #[error("payload of {size} bytes is over the maximum of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("converter error: {0}")]
    Convert(ConvertError),
    /// The converter's output cannot be taken (a device that may not be created, an asset).
    #[error("{0}")]
    Refused(String),
    #[error("the integration is overloaded; retry later")]
    Overloaded,
    #[error(transparent)]
    Queue(Rejection),
    #[error("device registry: {0}")]
    Registry(String),
}

impl UplinkError {
    fn reason(&self) -> &'static str {
        match self {
            UplinkError::NotFound => "not_found",
            UplinkError::Disabled => "disabled",
            UplinkError::EmptyPayload => "empty",
            UplinkError::TooLarge { .. } => "too_large",
            UplinkError::Convert(_) => "converter",
            UplinkError::Refused(_) => "refused",
            UplinkError::Overloaded | UplinkError::Registry(_) => "overloaded",
            UplinkError::Queue(_) => "queue",
        }
    }

    /// Whether the sender should try again later (CoAP 5.03, HTTP 503).
    pub fn is_overload(&self) -> bool {
        matches!(
            self,
            UplinkError::Overloaded | UplinkError::Queue(_) | UplinkError::Registry(_)
        )
    }
}

/// A change of the catalog that cannot be made.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CatalogError {
    #[error("{0}")]
    Invalid(String),
    #[error("Requested item wasn't found!")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an uplink became.
#[derive(Debug, Default)]
pub struct UplinkOutcome {
    /// The devices it was about, in the converter's order.
    pub devices: Vec<Arc<Device>>,
    /// The pending downlink of the first device that had one (HTTP answers it synchronously).
    pub downlink: Option<Downlink>,
}

/// A converter as it runs: its definition and its compiled script (or why it did not compile).
struct LiveConverter {
    def: ConverterDef,
    ast: Result<Arc<AST>, ConvertError>,
}

struct LiveIntegration {
    def: IntegrationDef,
    uplink: Arc<LiveConverter>,
    downlink: Option<Arc<LiveConverter>>,
    in_flight: Arc<Semaphore>,
    messages: Counter,
    conversions: Counter,
    conversion_time: Histogram,
}

impl LiveIntegration {
    /// Whether this integration runs the converter `id` (uplink or downlink).
    fn uses(&self, id: Uuid) -> bool {
        self.uplink.def.id == id || self.downlink.as_ref().is_some_and(|d| d.def.id == id)
    }
}

#[derive(Default)]
struct State {
    converters: HashMap<Uuid, Arc<LiveConverter>>,
    integrations: HashMap<Uuid, Arc<LiveIntegration>>,
    by_key: HashMap<String, Arc<LiveIntegration>>,
}

/// The latest downlink per device, kept until its next uplink; bounded.
#[derive(Default)]
struct Pending {
    by_device: HashMap<DeviceId, Downlink>,
    order: VecDeque<DeviceId>,
    /// The integration a device last sent through: where its downlinks go.
    integration_of: HashMap<DeviceId, Uuid>,
}

pub struct Integrations {
    runtime: Arc<ConverterRuntime>,
    pool: ConverterPool,
    registry: Arc<dyn DeviceRegistry>,
    ingress: Arc<Ingress>,
    catalog: Arc<dyn Catalog>,
    events: Arc<DebugEvents>,
    settings: Settings,
    state: RwLock<State>,
    pending: Mutex<Pending>,
    /// Serialises catalog changes, so validation and the write are one step.
    changes: tokio::sync::Mutex<()>,
}

impl Integrations {
    /// Loads the catalog and compiles every converter.
    pub async fn start(
        runtime: Arc<ConverterRuntime>,
        pool: ConverterPool,
        registry: Arc<dyn DeviceRegistry>,
        ingress: Arc<Ingress>,
        catalog: Arc<dyn Catalog>,
        events: Arc<DebugEvents>,
        settings: Settings,
    ) -> Result<Integrations, StoreError> {
        let (converters, integrations) = catalog.load().await?;
        let hub = Integrations {
            runtime,
            pool,
            registry,
            ingress,
            catalog,
            events,
            settings,
            state: RwLock::new(State::default()),
            pending: Mutex::new(Pending::default()),
            changes: tokio::sync::Mutex::new(()),
        };
        {
            let mut state = hub.state.write();
            for def in converters {
                let live = hub.compile(def);
                state.converters.insert(live.def.id, live);
            }
            for def in integrations {
                match hub.link(&state, def.clone()) {
                    Ok(live) => {
                        state.by_key.insert(def.routing_key.clone(), live.clone());
                        state.integrations.insert(def.id, live);
                    }
                    Err(e) => warn!(integration = %def.name, error = %e, "integration not started"),
                }
            }
        }
        Ok(hub)
    }

    pub fn events(&self) -> &DebugEvents {
        &self.events
    }

    pub fn runtime(&self) -> &Arc<ConverterRuntime> {
        &self.runtime
    }

    fn compile(&self, def: ConverterDef) -> Arc<LiveConverter> {
        let ast = self.runtime.compile(&def.script);
        Arc::new(LiveConverter { def, ast })
    }

    /// An integration with its converters looked up; refuses references that do not fit.
    fn link(
        &self,
        state: &State,
        def: IntegrationDef,
    ) -> Result<Arc<LiveIntegration>, CatalogError> {
        let converter = |id: Uuid, kind: ConverterKind, role: &str| {
            let c = state
                .converters
                .get(&id)
                .filter(|c| c.def.tenant_id == def.tenant_id)
                .ok_or_else(|| CatalogError::Invalid(format!("{role} converter {id} not found")))?;
            if c.def.kind != kind {
                return Err(CatalogError::Invalid(format!(
                    "{role} converter '{}' is a {} converter",
                    c.def.name,
                    c.def.kind.as_str()
                )));
            }
            Ok(c.clone())
        };
        let uplink = converter(def.uplink_converter_id, ConverterKind::Uplink, "uplink")?;
        let downlink = def
            .downlink_converter_id
            .map(|id| converter(id, ConverterKind::Downlink, "downlink"))
            .transpose()?;
        let labels = [
            ("integration", def.name.clone()),
            ("type", def.kind.as_str().to_owned()),
        ];
        // Registered at zero so dashboards show every integration from its first scrape; an
        // increment of zero, so a relink (converter edit) does not reset the counters.
        for reason in crate::metrics::INTEGRATION_ERROR_REASONS {
            let mut l = labels.to_vec();
            l.push(("reason", (*reason).to_owned()));
            counter!(INTEGRATION_ERRORS, &l).increment(0);
        }
        counter!(DEVICES_CREATED, "integration" => def.name.clone()).increment(0);
        Ok(Arc::new(LiveIntegration {
            in_flight: Arc::new(Semaphore::new(self.settings.max_in_flight.max(1))),
            messages: counter!(INTEGRATION_MESSAGES, &labels),
            conversions: counter!(INTEGRATION_CONVERSIONS, &labels),
            conversion_time: histogram!(INTEGRATION_CONVERSION_SECONDS, &labels),
            uplink,
            downlink,
            def,
        }))
    }

    // -----------------------------------------------------------------------------------------
    // The catalog

    /// Creates or replaces a converter; integrations using it switch to the new script for
    /// their next message.
    pub async fn save_converter(&self, def: ConverterDef) -> Result<ConverterDef, CatalogError> {
        if def.name.trim().is_empty() {
            return Err(CatalogError::Invalid(
                "Converter name should be specified!".into(),
            ));
        }
        self.runtime
            .compile(&def.script)
            .map_err(|e| CatalogError::Invalid(format!("Converter script is invalid: {e}")))?;
        let _guard = self.changes.lock().await;
        {
            let state = self.state.read();
            if let Some(old) = state.converters.get(&def.id) {
                if old.def.tenant_id != def.tenant_id {
                    return Err(CatalogError::NotFound);
                }
                if old.def.kind != def.kind && state.integrations.values().any(|i| i.uses(def.id)) {
                    return Err(CatalogError::Invalid(
                        "The type of a converter an integration uses cannot be changed".into(),
                    ));
                }
            }
        }
        self.catalog.put_converter(&def).await?;
        let live = self.compile(def.clone());
        let mut state = self.state.write();
        state.converters.insert(def.id, live);
        // Relink every integration using it, so its next message runs the new script.
        let users: Vec<IntegrationDef> = state
            .integrations
            .values()
            .filter(|i| i.uses(def.id))
            .map(|i| i.def.clone())
            .collect();
        for user in users {
            if let Ok(live) = self.relink(&state, user) {
                state
                    .by_key
                    .insert(live.def.routing_key.clone(), live.clone());
                state.integrations.insert(live.def.id, live);
            }
        }
        info!(converter = %def.name, "converter saved");
        Ok(def)
    }

    /// Like [`link`](Self::link), but keeps the old integration's in-flight bound and metric
    /// handles (a relink is not a new integration).
    fn relink(
        &self,
        state: &State,
        def: IntegrationDef,
    ) -> Result<Arc<LiveIntegration>, CatalogError> {
        let fresh = self.link(state, def)?;
        let Some(old) = state.integrations.get(&fresh.def.id) else {
            return Ok(fresh);
        };
        if old.def.name != fresh.def.name || old.def.kind != fresh.def.kind {
            return Ok(fresh);
        }
        Ok(Arc::new(LiveIntegration {
            def: fresh.def.clone(),
            uplink: fresh.uplink.clone(),
            downlink: fresh.downlink.clone(),
            in_flight: old.in_flight.clone(),
            messages: old.messages.clone(),
            conversions: old.conversions.clone(),
            conversion_time: old.conversion_time.clone(),
        }))
    }

    /// Creates or replaces an integration.
    pub async fn save_integration(
        &self,
        def: IntegrationDef,
    ) -> Result<IntegrationDef, CatalogError> {
        if def.name.trim().is_empty() {
            return Err(CatalogError::Invalid(
                "Integration name should be specified!".into(),
            ));
        }
        if def.routing_key.is_empty()
            || def.routing_key.len() > 255
            || def
                .routing_key
                .chars()
                .any(|c| c.is_whitespace() || c == '/' || c == '?' || c == '#')
        {
            return Err(CatalogError::Invalid(
                "Routing key must be 1 to 255 characters without spaces, '/', '?' or '#'".into(),
            ));
        }
        let _guard = self.changes.lock().await;
        {
            let state = self.state.read();
            if let Some(old) = state.integrations.get(&def.id)
                && old.def.tenant_id != def.tenant_id
            {
                return Err(CatalogError::NotFound);
            }
            if let Some(other) = state.by_key.get(&def.routing_key)
                && other.def.id != def.id
            {
                return Err(CatalogError::Invalid(
                    "Integration with such routing key already exists!".into(),
                ));
            }
            // Check the converters before writing anything.
            self.link(&state, def.clone())?;
        }
        self.catalog.put_integration(&def).await?;
        let mut state = self.state.write();
        let live = self.relink(&state, def.clone())?;
        if let Some(old) = state.integrations.insert(def.id, live.clone())
            && old.def.routing_key != def.routing_key
        {
            state.by_key.remove(&old.def.routing_key);
        }
        state.by_key.insert(def.routing_key.clone(), live);
        info!(integration = %def.name, kind = def.kind.as_str(), enabled = def.enabled, "integration saved");
        Ok(def)
    }

    pub async fn delete_converter(&self, tenant: TenantId, id: Uuid) -> Result<(), CatalogError> {
        let _guard = self.changes.lock().await;
        {
            let state = self.state.read();
            let Some(c) = state
                .converters
                .get(&id)
                .filter(|c| c.def.tenant_id == tenant)
            else {
                return Err(CatalogError::NotFound);
            };
            if let Some(user) = state.integrations.values().find(|i| i.uses(id)) {
                return Err(CatalogError::Invalid(format!(
                    "The converter '{}' is used by the integration '{}' and cannot be deleted!",
                    c.def.name, user.def.name
                )));
            }
        }
        self.catalog.delete(id).await?;
        self.state.write().converters.remove(&id);
        self.events.forget(id);
        Ok(())
    }

    pub async fn delete_integration(&self, tenant: TenantId, id: Uuid) -> Result<(), CatalogError> {
        let _guard = self.changes.lock().await;
        let owned = self
            .state
            .read()
            .integrations
            .get(&id)
            .is_some_and(|i| i.def.tenant_id == tenant);
        if !owned {
            return Err(CatalogError::NotFound);
        }
        self.catalog.delete(id).await?;
        let mut state = self.state.write();
        if let Some(old) = state.integrations.remove(&id) {
            state.by_key.remove(&old.def.routing_key);
        }
        self.events.forget(id);
        Ok(())
    }

    pub fn converter(&self, tenant: TenantId, id: Uuid) -> Option<ConverterDef> {
        self.state
            .read()
            .converters
            .get(&id)
            .filter(|c| c.def.tenant_id == tenant)
            .map(|c| c.def.clone())
    }

    pub fn integration(&self, tenant: TenantId, id: Uuid) -> Option<IntegrationDef> {
        self.state
            .read()
            .integrations
            .get(&id)
            .filter(|i| i.def.tenant_id == tenant)
            .map(|i| i.def.clone())
    }

    /// The tenant's integration with this routing key.
    pub fn integration_by_key(&self, tenant: TenantId, key: &str) -> Option<IntegrationDef> {
        self.state
            .read()
            .by_key
            .get(key)
            .filter(|i| i.def.tenant_id == tenant)
            .map(|i| i.def.clone())
    }

    /// A tenant's converters ordered by name, optionally of one kind.
    pub fn converters(
        &self,
        tenant: TenantId,
        kind: Option<ConverterKind>,
        page: &PageRequest,
    ) -> Page<ConverterDef> {
        let all: Vec<ConverterDef> = self
            .state
            .read()
            .converters
            .values()
            .filter(|c| c.def.tenant_id == tenant && kind.is_none_or(|k| k == c.def.kind))
            .map(|c| c.def.clone())
            .collect();
        paged(all, page, |c| &c.name)
    }

    /// A tenant's integrations ordered by name.
    pub fn integrations(&self, tenant: TenantId, page: &PageRequest) -> Page<IntegrationDef> {
        let all: Vec<IntegrationDef> = self
            .state
            .read()
            .integrations
            .values()
            .filter(|i| i.def.tenant_id == tenant)
            .map(|i| i.def.clone())
            .collect();
        paged(all, page, |i| &i.name)
    }

    // -----------------------------------------------------------------------------------------
    // Uplinks

    /// Converts one vendor payload sent to `routing_key` and hands the resulting messages to
    /// the queue; resolves once the queue holds all of them.
    pub async fn uplink(
        &self,
        kind: IntegrationKind,
        routing_key: &str,
        payload: Vec<u8>,
        transport_metadata: BTreeMap<String, String>,
    ) -> Result<UplinkOutcome, UplinkError> {
        let live = self
            .state
            .read()
            .by_key
            .get(routing_key)
            .filter(|i| i.def.kind == kind)
            .cloned();
        let Some(live) = live else {
            counter!(INTEGRATION_UNKNOWN_KEY, "type" => kind.as_str()).increment(1);
            return Err(UplinkError::NotFound);
        };
        live.messages.increment(1);
        let result = self.uplink_to(&live, payload, transport_metadata).await;
        if let Err(e) = &result {
            counter!(
                INTEGRATION_ERRORS,
                "integration" => live.def.name.clone(),
                "type" => live.def.kind.as_str(),
                "reason" => e.reason()
            )
            .increment(1);
        }
        result
    }

    async fn uplink_to(
        &self,
        live: &Arc<LiveIntegration>,
        payload: Vec<u8>,
        transport_metadata: BTreeMap<String, String>,
    ) -> Result<UplinkOutcome, UplinkError> {
        let def = &live.def;
        if !def.enabled {
            return Err(UplinkError::Disabled);
        }
        if payload.len() > self.settings.max_payload {
            let e = UplinkError::TooLarge {
                size: payload.len(),
                max: self.settings.max_payload,
            };
            self.integration_error(live, &payload, &e);
            return Err(e);
        }
        if payload.is_empty() {
            self.integration_error(live, &payload, &UplinkError::EmptyPayload);
            return Err(UplinkError::EmptyPayload);
        }
        let Ok(_permit) = live.in_flight.clone().try_acquire_owned() else {
            return Err(UplinkError::Overloaded);
        };
        let mut metadata = def.metadata.clone();
        metadata.extend(transport_metadata);
        let converter = live.uplink.clone();
        let ast = match &converter.ast {
            Ok(ast) => ast.clone(),
            Err(e) => {
                let e = UplinkError::Convert(e.clone());
                self.integration_error(live, &payload, &e);
                return Err(e);
            }
        };
        let runtime = self.runtime.clone();
        let started = Instant::now();
        let (converted, payload, metadata) = self
            .pool
            .run(move || {
                let converted = runtime.uplink_compiled(&ast, &payload, &metadata);
                (converted, payload, metadata)
            })
            .await
            .map_err(|e| match e {
                PoolError::Full | PoolError::Stopped => UplinkError::Overloaded,
                PoolError::Panicked => {
                    UplinkError::Convert(ConvertError::new("the converter host failed"))
                }
            })?;
        live.conversion_time.record(started.elapsed());
        live.conversions.increment(1);
        if converter.def.debug_mode || converted.is_err() {
            self.converter_event(&converter.def, &payload, &metadata, &converted);
        }
        let records = match converted {
            Ok(records) => records,
            Err(e) => {
                let e = UplinkError::Convert(e);
                self.integration_error(live, &payload, &e);
                return Err(e);
            }
        };
        match self.deliver(live, records).await {
            Ok(outcome) => {
                if def.debug_mode {
                    self.events.record(
                        def.tenant_id,
                        EntityKind::Integration,
                        def.id,
                        EventKind::DebugIntegration,
                        json!({
                            "type": "Uplink",
                            "messageType": message_type(&payload),
                            "message": show(&payload),
                            "status": "OK",
                            "error": "",
                        }),
                    );
                }
                Ok(outcome)
            }
            Err(e) => {
                self.integration_error(live, &payload, &e);
                Err(e)
            }
        }
    }

    /// Resolves (or creates) the devices and enqueues their messages.
    async fn deliver(
        &self,
        live: &Arc<LiveIntegration>,
        records: Vec<UplinkRecord>,
    ) -> Result<UplinkOutcome, UplinkError> {
        let def = &live.def;
        let transport = match def.kind {
            IntegrationKind::Coap => Transport::Coap,
            IntegrationKind::Http => Transport::HttpIntegration,
        };
        // Resolve every device first, so a refused one stops the message before any of it is
        // enqueued.
        let mut targets = Vec::with_capacity(records.len());
        for record in records {
            let device = match &record.entity {
                Entity::Device { name, device_type } => {
                    self.device(live, name, device_type).await?
                }
                Entity::Asset { name, .. } => {
                    return Err(UplinkError::Refused(format!(
                        "asset '{name}': this engine stores devices only; return deviceName"
                    )));
                }
            };
            targets.push((device, record));
        }
        let mut outcome = UplinkOutcome::default();
        let received_ts = now_ms();
        for (device, record) in targets {
            let mut messages = Vec::with_capacity(2);
            if !record.attributes.is_empty() {
                messages.push(MessageBody::Attributes {
                    scope: AttributeScope::Client,
                    entries: record.attributes,
                });
            }
            let telemetry: Vec<TsRecord> = record
                .telemetry
                .into_iter()
                .filter(|t| !t.values.is_empty())
                .map(|t| TsRecord {
                    ts: t.ts.unwrap_or(received_ts),
                    entries: t.values,
                })
                .collect();
            if !telemetry.is_empty() {
                messages.push(MessageBody::Telemetry(telemetry));
            }
            for body in messages {
                let message = Message {
                    tenant_id: device.tenant_id,
                    device_id: device.id,
                    received_ts,
                    body,
                };
                let publish = self.ingress.publish_message(transport, message);
                let accepted = tokio::time::timeout(self.settings.queue_wait, publish)
                    .await
                    .map_err(|_| UplinkError::Overloaded)?
                    .map_err(UplinkError::Queue)?;
                accepted.confirmed().await.map_err(UplinkError::Queue)?;
            }
            outcome.devices.push(device);
        }
        let mut pending = self.pending.lock();
        for device in &outcome.devices {
            pending.integration_of.insert(device.id, def.id);
            if outcome.downlink.is_none()
                && let Some(d) = pending.by_device.remove(&device.id)
            {
                outcome.downlink = Some(d);
            }
        }
        Ok(outcome)
    }

    /// The device a converter named, created when the integration may create devices.
    async fn device(
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
                "device '{name}' does not exist and integration '{}' may not create devices",
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
        };
        match self.registry.create(device).await {
            Ok(device) => {
                counter!(DEVICES_CREATED, "integration" => def.name.clone()).increment(1);
                info!(device = %device.name, integration = %def.name, "device created by integration");
                Ok(device)
            }
            // Another message (or node) created it at the same moment: same id, same device.
            Err(RegistryError::DuplicateName) => self
                .registry
                .by_name(def.tenant_id, name)
                .await
                .map_err(registry_error)?
                .ok_or_else(|| UplinkError::Registry("device vanished while created".into())),
            Err(e) => Err(registry_error(e)),
        }
    }

    fn integration_error(&self, live: &LiveIntegration, payload: &[u8], e: &UplinkError) {
        let def = &live.def;
        self.events.record(
            def.tenant_id,
            EntityKind::Integration,
            def.id,
            if def.debug_mode {
                EventKind::DebugIntegration
            } else {
                EventKind::Error
            },
            json!({
                "type": "Uplink",
                "messageType": message_type(payload),
                "message": show(payload),
                "status": "ERROR",
                "error": e.to_string(),
            }),
        );
    }

    fn converter_event(
        &self,
        def: &ConverterDef,
        payload: &[u8],
        metadata: &BTreeMap<String, String>,
        converted: &Result<Vec<UplinkRecord>, ConvertError>,
    ) {
        let (out, error) = match converted {
            Ok(records) => {
                let out = match records.as_slice() {
                    [one] => one.to_json(),
                    many => Value::Array(many.iter().map(UplinkRecord::to_json).collect()),
                };
                (
                    serde_json::to_string(&out).unwrap_or_default(),
                    String::new(),
                )
            }
            Err(e) => (String::new(), e.to_string()),
        };
        self.events.record(
            def.tenant_id,
            EntityKind::Converter,
            def.id,
            if def.debug_mode {
                EventKind::DebugConverter
            } else {
                EventKind::Error
            },
            json!({
                "type": "Uplink",
                "inMessageType": message_type(payload),
                "in": show(payload),
                "out": out,
                "metadata": serde_json::to_string(metadata).unwrap_or_default(),
                "error": error,
            }),
        );
    }

    // -----------------------------------------------------------------------------------------
    // Downlinks

    /// Runs the downlink converter of the integration `device` last sent through, and keeps
    /// the result for the device's next uplink (replacing an older one). Returns whether a
    /// downlink was queued: false when no integration with a downlink converter serves it.
    pub async fn downlink(
        &self,
        device: &Device,
        msg_type: &str,
        msg: Value,
        metadata: BTreeMap<String, String>,
    ) -> Result<bool, ConvertError> {
        let Some(integration) = self.pending.lock().integration_of.get(&device.id).copied() else {
            return Ok(false);
        };
        let live = self.state.read().integrations.get(&integration).cloned();
        let Some((live, converter)) = live.and_then(|l| l.downlink.clone().map(|c| (l.clone(), c)))
        else {
            return Ok(false);
        };
        let ast = converter.ast.clone()?;
        let runtime = self.runtime.clone();
        let integration_metadata = live.def.metadata.clone();
        let msg_type = msg_type.to_owned();
        let mut metadata = metadata;
        metadata.insert("deviceName".into(), device.name.clone());
        metadata.insert("deviceType".into(), device.device_type.clone());
        let msg_text = msg.to_string();
        let in_text = msg_text.clone();
        let result = self
            .pool
            .run(move || {
                let msg = crate::converter::helpers::json_to_dynamic(&msg_text, "msg")
                    .map_err(|e| ConvertError::new(e.to_string()))?;
                runtime.downlink_compiled(&ast, msg, &msg_type, &metadata, &integration_metadata)
            })
            .await
            .map_err(|e| ConvertError::new(e.to_string()))
            .and_then(|r| r);
        if converter.def.debug_mode || result.is_err() {
            self.events.record(
                converter.def.tenant_id,
                EntityKind::Converter,
                converter.def.id,
                if converter.def.debug_mode {
                    EventKind::DebugConverter
                } else {
                    EventKind::Error
                },
                json!({
                    "type": "Downlink",
                    "inMessageType": "JSON",
                    "in": in_text,
                    "out": result.as_ref().map(|d| d.to_json().to_string()).unwrap_or_default(),
                    "error": result.as_ref().err().map(ToString::to_string).unwrap_or_default(),
                }),
            );
        }
        let downlink = result?;
        let mut pending = self.pending.lock();
        if pending.by_device.insert(device.id, downlink).is_none() {
            pending.order.push_back(device.id);
        }
        while pending.by_device.len() > self.settings.max_pending_downlinks {
            let Some(oldest) = pending.order.pop_front() else {
                break;
            };
            pending.by_device.remove(&oldest);
        }
        // `order` may hold ids whose downlink was taken; keep it from growing past the map.
        if pending.order.len() > 2 * self.settings.max_pending_downlinks.max(1) {
            let Pending {
                by_device, order, ..
            } = &mut *pending;
            order.retain(|id| by_device.contains_key(id));
        }
        Ok(true)
    }
}

fn paged<T: Clone>(mut all: Vec<T>, page: &PageRequest, name: impl Fn(&T) -> &String) -> Page<T> {
    if let Some(prefix) = &page.text_search {
        let prefix = prefix.to_lowercase();
        all.retain(|t| name(t).to_lowercase().starts_with(&prefix));
    }
    all.sort_by(|a, b| name(a).cmp(name(b)));
    let total_elements = all.len();
    let data = all
        .into_iter()
        .skip(page.page.saturating_mul(page.page_size))
        .take(page.page_size)
        .collect();
    Page {
        data,
        total_elements,
    }
}

/// ThingsBoard's message type of a payload: JSON, TEXT or BINARY.
fn message_type(payload: &[u8]) -> &'static str {
    match std::str::from_utf8(payload) {
        Ok(text) if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => "JSON",
        Ok(_) => "TEXT",
        Err(_) => "BINARY",
    }
}

/// A payload as an event shows it: text as is, binary as Base64.
fn show(payload: &[u8]) -> String {
    use base64::Engine as _;
    match std::str::from_utf8(payload) {
        Ok(text) => text.to_owned(),
        Err(_) => base64::engine::general_purpose::STANDARD.encode(payload),
    }
}
