//! `Downlinks`, a node's half of the way back, in three parts:
//!
//! - the owner's side: the [`Owned`] state of the devices whose partitions this node owns, fed
//!   device events by the rule chains ([`Downlinks::owner_event`]) and the clock (a ticker
//!   expiring requests), its effects sent where they belong;
//! - the sessions' side: this node's sessions that want downlinks (MQTT connections, HTTP long
//!   polls), each behind a [`SessionSink`]; their subscriptions are announced to the owner as
//!   device events through the queue, at most one announcement in flight per session (later
//!   changes are coalesced), and what the owner sends this node is handed to them;
//! - the callers' side: REST calls waiting for an RPC's outcome, by call id, bounded; and
//!   persistent RPCs, whose stored records the owner keeps up to date (one writer task, in the
//!   order the changes happened) and reloads, still queued, when the device first subscribes to
//!   RPC after a start.
//!
//! Messages for another node go through the [`DownlinkBus`] (Kafka: that node's downlink
//! topic); for this node they are handled in place.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::counter;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tracing::warn;

use crate::downlink::event::{Caller, Delivery, DeviceEvent, NodeId, ToNode};
use crate::downlink::owner::{Effect, Owned, RecordChange};
use crate::downlink::rpc::{Resolution, RpcRequest};
use crate::ingress::Ingress;
use crate::metrics::{DOWNLINKS, RPC_CALLS, RPC_RECORDS};
use crate::model::{Device, DeviceId, KvEntry, Message, MessageBody, now_ms};
use crate::ports::{
    DeviceRecords, MAX_PENDING_RPCS, MAX_RPC_RESPONSE_BYTES, QueueError, RecordError, RpcStatus,
};
use crate::protocol::rpc::parse_stored_request;

/// Where a session's downlinks go.
pub trait SessionSink: Send + Sync {
    /// Hands over one downlink; false when the session could not take it (gone, or its
    /// bounded channel full: the downlink is dropped and counted).
    fn deliver(&self, delivery: &Delivery) -> bool;
}

/// The way to other nodes.
pub trait DownlinkBus: Send + Sync {
    fn send(&self, node: &NodeId, message: ToNode);
}

/// One node, no other: what the memory queue runs with. A message for another node cannot
/// exist there; it is counted and dropped.
pub struct NoBus;

impl DownlinkBus for NoBus {
    fn send(&self, node: &NodeId, _message: ToNode) {
        counter!(DOWNLINKS, "outcome" => "no_route").increment(1);
        warn!(%node, "downlink for another node, and no bus to send it on");
    }
}

/// Why an RPC call got no outcome.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// As many calls wait on this node as may (`rpc.max_waiting_calls`).
    #[error("too many RPC calls are waiting on this node")]
    Busy,
    #[error("the queue cannot take the request: {0}")]
    Queue(#[from] QueueError),
}

/// Settings of a node's downlinks.
#[derive(Clone, Debug)]
pub struct DownlinkSettings {
    /// RPC requests pending per device, past which one is refused.
    pub rpc_per_device: usize,
    /// REST calls that may wait for an outcome on this node at once.
    pub max_waiting_calls: usize,
    /// How often requests are checked for expiry.
    pub tick: Duration,
    /// A persistent RPC's send the device does not acknowledge within this is a TIMEOUT
    /// (`mqtt.rpc_ack_timeout`, ThingsBoard's `transport.mqtt.timeout`).
    pub rpc_ack_timeout: Duration,
}

impl Default for DownlinkSettings {
    fn default() -> Self {
        DownlinkSettings {
            rpc_per_device: 64,
            max_waiting_calls: 10_000,
            tick: Duration::from_millis(100),
            rpc_ack_timeout: Duration::from_millis(
                crate::downlink::rpc::DEFAULT_ACK_TIMEOUT_MS.unsigned_abs(),
            ),
        }
    }
}

struct LocalSession {
    id: u64,
    /// Takes one downlink and ends (an HTTP long poll).
    once: bool,
    tenant: crate::model::TenantId,
    rpc: bool,
    attributes: bool,
    /// The node's live hub, watching the device.
    live: bool,
    sink: Arc<dyn SessionSink>,
    /// Changes made, and announced to the owner.
    seq: u64,
    announced: u64,
    announcing: bool,
}

/// A node's downlinks; see the module's text.
pub struct Downlinks {
    node: NodeId,
    settings: DownlinkSettings,
    ingress: Arc<Ingress>,
    bus: Arc<dyn DownlinkBus>,
    records: Arc<dyn DeviceRecords>,
    /// To the task that writes persistent RPCs' changes, in order. Unbounded, but each pending
    /// request (bounded per device) makes at most two changes.
    record_changes: tokio::sync::mpsc::UnboundedSender<(uuid::Uuid, RecordChange)>,
    /// Devices whose queued persistent RPCs were reloaded since the start (at most one entry
    /// per device of the registry).
    reloaded: Mutex<HashSet<DeviceId>>,
    runtime: tokio::runtime::Handle,
    owned: Mutex<Owned>,
    sessions: Mutex<HashMap<DeviceId, Vec<LocalSession>>>,
    next_session: AtomicU64,
    /// Some owned device is watched by a live hub (kept after each device event).
    live_any: std::sync::atomic::AtomicBool,
    calls: Mutex<HashMap<u64, oneshot::Sender<Resolution>>>,
    next_call: AtomicU64,
}

impl Downlinks {
    /// A node's downlinks; spawns the expiry ticker and the record writer on the current tokio
    /// runtime.
    pub fn start(
        node: NodeId,
        settings: DownlinkSettings,
        ingress: Arc<Ingress>,
        records: Arc<dyn DeviceRecords>,
        bus: Arc<dyn DownlinkBus>,
    ) -> Arc<Downlinks> {
        let (record_changes, changes) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_records(records.clone(), changes));
        let downlinks = Arc::new(Downlinks {
            owned: Mutex::new(Owned::new(
                settings.rpc_per_device,
                i64::try_from(settings.rpc_ack_timeout.as_millis()).unwrap_or(i64::MAX),
            )),
            node,
            settings,
            ingress,
            bus,
            records,
            record_changes,
            reloaded: Mutex::new(HashSet::new()),
            runtime: tokio::runtime::Handle::current(),
            sessions: Mutex::new(HashMap::new()),
            // Unique across restarts of the node: the owner (maybe another node) still knows
            // the sessions of its last run, and ignores an event older than one it has.
            live_any: std::sync::atomic::AtomicBool::new(false),
            next_session: AtomicU64::new(
                u64::try_from(now_ms()).unwrap_or(1).saturating_mul(1_000),
            ),
            calls: Mutex::new(HashMap::new()),
            // Unique across restarts too: an outcome for a call of the node's last run, still
            // on its way, must not reach a call of this one.
            next_call: AtomicU64::new(u64::try_from(now_ms()).unwrap_or(1).saturating_mul(1_000)),
        });
        let weak = Arc::downgrade(&downlinks);
        let tick = downlinks.settings.tick;
        downlinks.runtime.spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(downlinks) = weak.upgrade() else {
                    return;
                };
                let effects = downlinks.owned.lock().expire(now_ms());
                downlinks.apply(effects);
            }
        });
        downlinks
    }

    // The owner's side.

    /// A device event read from the queue by one of this node's rule chains.
    pub fn owner_event(self: &Arc<Self>, device: DeviceId, event: DeviceEvent) {
        if let DeviceEvent::Session { rpc: true, .. } = &event
            && self.reloaded.lock().insert(device)
        {
            let me = self.clone();
            self.runtime.spawn(async move { me.reload(device).await });
        }
        let effects = {
            let mut owned = self.owned.lock();
            let effects = owned.handle(device, event, now_ms());
            self.live_any.store(owned.any_live(), Ordering::Release);
            effects
        };
        self.apply(effects);
    }

    /// Gives the owner the device's persistent RPCs not finished in storage (ThingsBoard
    /// reloads only QUEUED ones, so a request sent and not acknowledged or answered before a
    /// restart would stay SENT, TIMEOUT or DELIVERED for good; here it is sent again, and its
    /// retries count afresh); those expired meanwhile are marked so.
    async fn reload(self: Arc<Self>, device: DeviceId) {
        let pending = match self.records.pending_rpcs(device, MAX_PENDING_RPCS).await {
            Ok(pending) => pending,
            Err(e) => {
                // The next subscription tries again.
                self.reloaded.lock().remove(&device);
                counter!(RPC_RECORDS, "outcome" => "reload_failed").increment(1);
                warn!(error = %e, %device, "pending persistent RPCs could not be read");
                return;
            }
        };
        let now = now_ms();
        for record in pending {
            let request = match parse_stored_request(&record.request) {
                // A one-way request the device acknowledged is done.
                Some(request)
                    if record.status == RpcStatus::Delivered
                        && request.direction == crate::downlink::rpc::Direction::OneWay =>
                {
                    continue;
                }
                Some(request) if record.expiration_time > now => request,
                _ => {
                    let expired = RecordChange::Done(Resolution::Expired {
                        sent: record.status != RpcStatus::Queued,
                    });
                    let _ = self.record_changes.send((record.id, expired));
                    continue;
                }
            };
            counter!(RPC_RECORDS, "outcome" => "reloaded").increment(1);
            let caller = Caller::Record { id: record.id };
            let effects =
                self.owned
                    .lock()
                    .handle(device, DeviceEvent::RpcRequest { caller, request }, now);
            self.apply(effects);
        }
    }

    /// Shared attributes of a device this node owns changed (and are stored).
    pub fn owner_shared_updated(&self, device: DeviceId, entries: &[KvEntry]) {
        let effects = self.owned.lock().shared_updated(device, entries);
        self.apply(effects);
    }
}

/// The sink of the node that owns a device's partition tells it once shared attributes are
/// stored; their subscribed sessions get the change then, so what a device reads right after
/// the update agrees with it.
impl crate::sink::AfterStore for Downlinks {
    fn stored_batch(&self, messages: &[crate::model::SharedMessage]) {
        for m in messages {
            self.stored(m);
        }
        // Live hubs of other nodes watching a device get its changes, one bus message per
        // device and batch (this node's hub hears of them from the sink itself).
        if !self.live_any.load(Ordering::Acquire) {
            return;
        }
        let mut forward: HashMap<(NodeId, DeviceId), Vec<crate::model::SharedMessage>> =
            HashMap::new();
        {
            let owned = self.owned.lock();
            for m in messages {
                if !matches!(
                    m.body,
                    MessageBody::Telemetry(_) | MessageBody::Attributes { .. }
                ) {
                    continue;
                }
                for node in owned.live_nodes(m.device_id) {
                    if node != self.node {
                        forward
                            .entry((node, m.device_id))
                            .or_default()
                            .push(m.clone());
                    }
                }
            }
        }
        for ((node, device), messages) in forward {
            // Bus messages stay well under Kafka's default message.max.bytes (1 MB).
            for part in live_parts(messages) {
                self.bus.send(
                    &node,
                    ToNode::Deliver {
                        device,
                        delivery: Delivery::Live(part),
                    },
                );
            }
        }
    }

    fn stored(&self, message: &crate::model::SharedMessage) {
        if let MessageBody::Attributes {
            scope: crate::model::AttributeScope::Shared,
            entries,
        } = &message.body
            && !entries.is_empty()
        {
            self.owner_shared_updated(message.device_id, entries);
        }
    }
}

/// Encoded size a bus message of forwarded changes stays under.
const LIVE_PART_BYTES: usize = 256 * 1024;

/// Splits a device's forwarded changes into parts of about [`LIVE_PART_BYTES`] each (a message
/// on its own may be larger: the ingress bounds it by its own limits).
fn live_parts(messages: Vec<crate::model::SharedMessage>) -> Vec<Vec<crate::model::SharedMessage>> {
    let size = |m: &crate::model::SharedMessage| {
        m.entries()
            .map(|e| {
                e.key.len()
                    + match &e.value {
                        crate::model::KvValue::String(s) | crate::model::KvValue::Json(s) => {
                            s.len()
                        }
                        _ => 8,
                    }
                    + 16
            })
            .sum::<usize>()
            + 64
    };
    let mut parts = Vec::new();
    let mut part = Vec::new();
    let mut bytes = 0;
    for m in messages {
        let n = size(&m);
        if !part.is_empty() && bytes + n > LIVE_PART_BYTES {
            parts.push(std::mem::take(&mut part));
            bytes = 0;
        }
        bytes += n;
        part.push(m);
    }
    if !part.is_empty() {
        parts.push(part);
    }
    parts
}

impl Downlinks {
    fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::Send { node, message } if node == self.node => self.receive(message),
                Effect::Send { node, message } => self.bus.send(&node, message),
                Effect::Record { id, change, .. } => {
                    let _ = self.record_changes.send((id, change));
                }
            }
        }
    }

    /// A message for this node: from its own owner's side, or read from its downlink topic.
    pub fn receive(&self, message: ToNode) {
        match message {
            ToNode::Deliver { device, delivery } => self.deliver(device, &delivery),
            ToNode::Resolve { call, resolution } => {
                if let Some(waiting) = self.calls.lock().remove(&call) {
                    let _ = waiting.send(resolution);
                }
            }
        }
    }

    fn deliver(&self, device: DeviceId, delivery: &Delivery) {
        let wants = |s: &LocalSession| match delivery {
            Delivery::Rpc(_) => s.rpc,
            Delivery::Attributes(_) | Delivery::Deleted(_) => s.attributes,
            Delivery::Live(_) | Delivery::LiveDeleted { .. } => s.live,
        };
        let (sinks, held, below) = {
            let sessions = self.sessions.lock();
            // Sessions made from here on have ids from `below` up: the owner keeps those.
            let below = self.next_session.load(Ordering::Relaxed);
            match sessions.get(&device) {
                Some(sessions) => (
                    sessions
                        .iter()
                        .filter(|s| wants(s))
                        .map(|s| s.sink.clone())
                        .collect::<Vec<Arc<dyn SessionSink>>>(),
                    sessions.iter().map(|s| s.id).collect(),
                    below,
                ),
                None => (Vec::new(), Vec::new(), below),
            }
        };
        if sinks.is_empty() {
            // The owner knows a session of this node that is gone: it is told which it holds.
            counter!(DOWNLINKS, "outcome" => "no_session").increment(1);
            let event = DeviceEvent::NodeSessions {
                node: self.node.clone(),
                sessions: held,
                below,
            };
            // The queue routes by device; the tenant is not needed for a device event.
            let message = event_message(crate::model::TenantId(uuid::Uuid::nil()), device, event);
            let ingress = self.ingress.clone();
            self.runtime.spawn(async move {
                if let Err(e) = ingress.publish_event(message).await {
                    warn!(error = %e, "the owner could not be told of a gone session");
                }
            });
            return;
        }
        for sink in sinks {
            let outcome = if sink.deliver(delivery) {
                "delivered"
            } else {
                "dropped"
            };
            counter!(DOWNLINKS, "outcome" => outcome).increment(1);
        }
    }

    /// This node's partitions changed (Kafka): at an assignment every node announces all its
    /// sessions anew (every member of the group gets one at each rebalance), so a partition's
    /// new owner learns the sessions of its devices. What an owner kept of a partition it gave
    /// up stays until it ends by itself (requests expire, and their callers get their timeout
    /// status); a partition that stays with its owner keeps its pending requests.
    pub fn rebalanced(self: &Arc<Self>, assigned: bool) {
        if !assigned {
            // A partition that comes back must reload its devices' queued persistent RPCs:
            // another owner may have changed them meanwhile.
            self.reloaded.lock().clear();
            return;
        }
        let mut start = Vec::new();
        {
            let mut sessions = self.sessions.lock();
            for (device, list) in sessions.iter_mut() {
                for s in list.iter_mut() {
                    s.seq += 1;
                    if !s.announcing {
                        s.announcing = true;
                        start.push((s.tenant, *device, s.id));
                    }
                }
            }
        }
        for (tenant, device, id) in start {
            let me = self.clone();
            self.runtime
                .spawn(async move { me.announce(tenant, device, id).await });
        }
    }

    // The sessions' side.

    /// Session `id` of `device` now wants these downlinks (both false: it ended); the owner is
    /// told through the queue. A session's first call passes id 0 and keeps the id returned (0
    /// when it wants nothing yet): ids are given under the sessions' lock, so a list of this
    /// node's sessions and the next id, taken together, tell the owner exactly which are gone.
    pub fn subscriptions(
        self: &Arc<Self>,
        device: &Device,
        id: u64,
        rpc: bool,
        attributes: bool,
        sink: &Arc<dyn SessionSink>,
    ) -> u64 {
        self.change(device, id, rpc, attributes, false, false, sink)
    }

    /// [`Downlinks::subscriptions`] of this node's live hub: while `watching`, the owner sends
    /// it every change of the device its sink stores (when the owner is another node) and
    /// every attribute deletion.
    pub fn live_subscription(
        self: &Arc<Self>,
        device: &Device,
        id: u64,
        watching: bool,
        sink: &Arc<dyn SessionSink>,
    ) -> u64 {
        self.change(device, id, false, false, watching, false, sink)
    }

    /// [`Downlinks::subscriptions`] of a session that takes one downlink and ends (an HTTP long
    /// poll): of the requests pending when it subscribes, it gets the first.
    pub fn poll_subscriptions(
        self: &Arc<Self>,
        device: &Device,
        id: u64,
        rpc: bool,
        attributes: bool,
        sink: &Arc<dyn SessionSink>,
    ) -> u64 {
        self.change(device, id, rpc, attributes, false, true, sink)
    }

    #[allow(clippy::too_many_arguments)]
    fn change(
        self: &Arc<Self>,
        device: &Device,
        id: u64,
        rpc: bool,
        attributes: bool,
        live: bool,
        once: bool,
        sink: &Arc<dyn SessionSink>,
    ) -> u64 {
        let (id, start) = {
            let mut sessions = self.sessions.lock();
            let known = sessions
                .get(&device.id)
                .and_then(|list| list.iter().position(|s| s.id == id));
            if known.is_none() && !rpc && !attributes && !live {
                return id;
            }
            let list = sessions.entry(device.id).or_default();
            let (id, at) = match known {
                Some(at) => (id, at),
                None => {
                    let id = if id == 0 {
                        self.next_session.fetch_add(1, Ordering::Relaxed)
                    } else {
                        id
                    };
                    list.push(LocalSession {
                        id,
                        once,
                        tenant: device.tenant_id,
                        rpc,
                        attributes,
                        live,
                        sink: sink.clone(),
                        seq: 0,
                        announced: 0,
                        announcing: false,
                    });
                    (id, list.len() - 1)
                }
            };
            let s = &mut list[at];
            if s.seq > 0 && s.rpc == rpc && s.attributes == attributes && s.live == live {
                return id;
            }
            s.rpc = rpc;
            s.attributes = attributes;
            s.live = live;
            s.seq += 1;
            let start = !s.announcing;
            s.announcing = true;
            (id, start)
        };
        if start {
            let me = self.clone();
            let (tenant, device) = (device.tenant_id, device.id);
            self.runtime
                .spawn(async move { me.announce(tenant, device, id).await });
        }
        id
    }

    /// Tells the owner the session's latest subscriptions until it has heard the last change;
    /// forgets a session that ended once that is said.
    async fn announce(&self, tenant: crate::model::TenantId, device: DeviceId, id: u64) {
        loop {
            let state = {
                let mut sessions = self.sessions.lock();
                let Some(list) = sessions.get_mut(&device) else {
                    return;
                };
                let Some(at) = list.iter().position(|s| s.id == id) else {
                    return;
                };
                let s = &mut list[at];
                if s.announced == s.seq {
                    s.announcing = false;
                    if !s.rpc && !s.attributes && !s.live {
                        list.remove(at);
                        if list.is_empty() {
                            sessions.remove(&device);
                        }
                    }
                    return;
                }
                (s.seq, s.rpc, s.attributes, s.live, s.once)
            };
            let (seq, rpc, attributes, live, once) = state;
            let event = DeviceEvent::Session {
                node: self.node.clone(),
                session: id,
                seq,
                rpc,
                attributes,
                live,
                once,
            };
            if let Err(e) = self
                .ingress
                .publish_event(event_message(tenant, device, event))
                .await
            {
                // The owner will not know of this change; the next one says it all again.
                counter!(DOWNLINKS, "outcome" => "announce_failed").increment(1);
                warn!(error = %e, "a session's subscriptions could not be announced");
            }
            let mut sessions = self.sessions.lock();
            if let Some(s) = sessions
                .get_mut(&device)
                .and_then(|list| list.iter_mut().find(|s| s.id == id))
            {
                s.announced = seq;
            }
        }
    }

    // The callers' side.

    /// Sends `request` to `device` and waits for its outcome: the owner's, or, should none
    /// come (the owner's node went away), [`Resolution::Expired`] a second after expiry.
    pub async fn call(
        &self,
        device: &Device,
        request: RpcRequest,
    ) -> Result<Resolution, CallError> {
        let expires_at = request.expires_at;
        let (id, answer) = {
            let mut calls = self.calls.lock();
            if calls.len() >= self.settings.max_waiting_calls {
                counter!(RPC_CALLS, "outcome" => "busy").increment(1);
                return Err(CallError::Busy);
            }
            let id = self.next_call.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            calls.insert(id, tx);
            (id, rx)
        };
        let forget = Forget {
            downlinks: self,
            tenant: device.tenant_id,
            device: device.id,
            id,
        };
        let event = DeviceEvent::RpcRequest {
            caller: Caller::Call {
                node: self.node.clone(),
                call: id,
            },
            request,
        };
        self.ingress
            .publish_event(event_message(device.tenant_id, device.id, event))
            .await?;
        let wait = u64::try_from(expires_at.saturating_sub(now_ms()).max(0)).unwrap_or(0);
        let outcome = tokio::time::timeout(Duration::from_millis(wait + 1_000), answer).await;
        drop(forget);
        let resolution = match outcome {
            Ok(Ok(resolution)) => resolution,
            _ => Resolution::Expired { sent: true },
        };
        let label = match &resolution {
            Resolution::Sent => "sent",
            Resolution::Reply(_) => "replied",
            Resolution::Expired { sent: true } => "timeout",
            Resolution::Expired { sent: false } => "not_delivered",
            Resolution::Refused => "refused",
            Resolution::Undelivered { .. } => "undelivered",
        };
        counter!(RPC_CALLS, "outcome" => label).increment(1);
        Ok(resolution)
    }

    /// Hands a persistent RPC, already stored as QUEUED under `id`, to the device's owner.
    pub async fn persistent(
        &self,
        device: &Device,
        id: uuid::Uuid,
        request: RpcRequest,
    ) -> Result<(), QueueError> {
        let event = DeviceEvent::RpcRequest {
            caller: Caller::Record { id },
            request,
        };
        self.ingress
            .publish_event(event_message(device.tenant_id, device.id, event))
            .await?;
        counter!(RPC_CALLS, "outcome" => "persisted").increment(1);
        Ok(())
    }

    /// A persistent RPC was deleted: its owner stops sending it.
    pub async fn persistent_deleted(
        &self,
        device: &Device,
        id: uuid::Uuid,
    ) -> Result<(), QueueError> {
        let event = DeviceEvent::RpcDeleted { id };
        self.ingress
            .publish_event(event_message(device.tenant_id, device.id, event))
            .await
    }

    /// Attributes of `device` were deleted: its owner tells the nodes whose live hubs watch
    /// it (this one too).
    pub async fn attributes_deleted(
        &self,
        device: &Device,
        scope: crate::model::AttributeScope,
        keys: Vec<String>,
    ) -> Result<(), QueueError> {
        let event = DeviceEvent::AttributesDeleted { scope, keys };
        self.ingress
            .publish_event(event_message(device.tenant_id, device.id, event))
            .await
    }

    /// Shared attributes of `device` were deleted: its owner tells the attribute-subscribed
    /// sessions.
    pub async fn shared_deleted(
        &self,
        device: &Device,
        keys: Vec<String>,
    ) -> Result<(), QueueError> {
        let event = DeviceEvent::SharedDeleted { keys };
        self.ingress
            .publish_event(event_message(device.tenant_id, device.id, event))
            .await
    }

    /// A session wrote persistent RPC `record` to `device` (`acknowledged` false), or the
    /// device acknowledged it: its owner is told (called from a connection's task; the event
    /// is published by a task of its own).
    pub fn rpc_delivery(&self, device: &Device, record: uuid::Uuid, acknowledged: bool) {
        let event = DeviceEvent::RpcDelivery {
            record,
            acknowledged,
        };
        let message = event_message(device.tenant_id, device.id, event);
        let ingress = self.ingress.clone();
        self.runtime.spawn(async move {
            if let Err(e) = ingress.publish_event(message).await {
                counter!(RPC_RECORDS, "outcome" => "delivery_report_failed").increment(1);
                warn!(error = %e, "a persistent RPC's delivery could not be told to its owner");
            }
        });
    }

    /// A device's reply to request `id`, for its owner.
    pub async fn reply(
        &self,
        device: &Device,
        id: i32,
        payload: Vec<u8>,
    ) -> Result<(), QueueError> {
        let event = DeviceEvent::RpcReply { id, payload };
        self.ingress
            .publish_event(event_message(device.tenant_id, device.id, event))
            .await
    }
}

/// Writes persistent RPCs' changes in the order they happened. A store that is down is tried
/// again a few times, a second apart; past that the change is lost (counted) and the record
/// keeps its last status.
async fn write_records(
    records: Arc<dyn DeviceRecords>,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<(uuid::Uuid, RecordChange)>,
) {
    while let Some((id, change)) = changes.recv().await {
        let mut attempt = 0;
        let outcome = loop {
            match write_record(&*records, id, &change).await {
                Err(e) if e.is_retryable() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                outcome => break outcome,
            }
        };
        let label = match outcome {
            Ok(true) => "written",
            Ok(false) => "gone",
            Err(e) => {
                warn!(error = %e, rpc = %id, "a persistent RPC's status could not be stored");
                "write_failed"
            }
        };
        counter!(RPC_RECORDS, "outcome" => label).increment(1);
    }
}

/// One change to a stored RPC; false when the record is gone or already final.
async fn write_record(
    records: &dyn DeviceRecords,
    id: uuid::Uuid,
    change: &RecordChange,
) -> Result<bool, RecordError> {
    let Some(mut record) = records.rpc(id).await? else {
        return Ok(false);
    };
    if !record.status.is_pending() {
        return Ok(false);
    }
    let error = |message: &str| Some(serde_json::json!({ "error": message }).to_string());
    match change {
        // A send's progress never takes back a delivery.
        RecordChange::Sent | RecordChange::Timeout if record.status == RpcStatus::Delivered => {
            return Ok(false);
        }
        RecordChange::Sent => record.status = RpcStatus::Sent,
        RecordChange::Timeout => record.status = RpcStatus::Timeout,
        RecordChange::Delivered | RecordChange::Done(Resolution::Sent) => {
            record.status = RpcStatus::Delivered;
        }
        RecordChange::Done(Resolution::Undelivered { retries }) => {
            record.status = RpcStatus::Failed;
            record.response = error(&format!(
                "There was a Timeout and all retry attempts have been exhausted. Retry attempts set: {retries}"
            ));
        }
        RecordChange::Done(Resolution::Reply(reply)) => {
            let text = String::from_utf8_lossy(reply);
            record.status = RpcStatus::Successful;
            record.response = if text.trim().is_empty() {
                None
            } else if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
                Some(text.into_owned())
            } else {
                // ThingsBoard keeps a reply that is not JSON as an error, and the status
                // SUCCESSFUL.
                error(&text)
            };
            if record
                .response
                .as_ref()
                .is_some_and(|r| r.len() > MAX_RPC_RESPONSE_BYTES)
            {
                record.status = RpcStatus::Failed;
                record.response = error(&format!(
                    "The reply is longer than {MAX_RPC_RESPONSE_BYTES} bytes"
                ));
            }
        }
        RecordChange::Done(Resolution::Expired { .. }) => record.status = RpcStatus::Expired,
        RecordChange::Done(Resolution::Refused) => {
            record.status = RpcStatus::Failed;
            record.response = error("The device has as many RPC requests pending as it may");
        }
    }
    records.update_rpc(&record).await
}

/// Removes a call's entry however its wait ends (the REST caller may go away mid-wait).
/// A call that ends with no outcome (its caller went away, or the safety timeout) is told to
/// the owner, so the request does not keep one of the device's places until it expires.
struct Forget<'a> {
    downlinks: &'a Downlinks,
    tenant: crate::model::TenantId,
    device: DeviceId,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let d = self.downlinks;
        if d.calls.lock().remove(&self.id).is_none() {
            return;
        }
        let event = DeviceEvent::CallAbandoned {
            node: d.node.clone(),
            call: self.id,
        };
        let message = event_message(self.tenant, self.device, event);
        let ingress = d.ingress.clone();
        d.runtime.spawn(async move {
            let _ = ingress.publish_event(message).await;
        });
    }
}

fn event_message(tenant: crate::model::TenantId, device: DeviceId, event: DeviceEvent) -> Message {
    Message {
        tenant_id: tenant,
        device_id: device,
        received_ts: now_ms(),
        body: MessageBody::Device(event),
    }
}
