//! Live data for apps: the hub that hands what the sink stored to the WebSocket sessions
//! watching those devices ([`LiveHub`]), and each session's subscriptions ([`session`]).
//!
//! The sink tells the hub after storage confirmed a batch (`AfterStore`), so an update a
//! client sees agrees with a REST read made when it arrives. The hub does no rendering: it
//! hands every session that watches one of the batch's devices, in one go, references to the
//! stored messages it wants, and the session's own task filters and renders them. A session
//! still holding `max_pending` changes or more when the next batch comes is told to close
//! (ThingsBoard's 1008 "Max pending updates limit reached!"), never buffered further: what a
//! slow client can make the engine hold is that many messages plus one sink batch, each
//! message already held by the pipeline. A client that keeps up is never closed for a burst:
//! a whole batch is taken as long as the previous ones were read.

pub mod session;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use metrics::counter;
use parking_lot::RwLock;
use tokio::sync::{Notify, mpsc};

use crate::downlink::event::Delivery;
use crate::downlink::router::{Downlinks, SessionSink};
use crate::metrics::LIVE_CHANGES;
use crate::model::{AttributeScope, Device, DeviceId, MessageBody, SharedMessage};

/// Something a watcher of a device learns.
#[derive(Clone, Debug)]
pub enum Change {
    /// Telemetry or attributes, stored.
    Stored(SharedMessage),
    /// Attributes deleted (REST), as of now.
    AttributesDeleted {
        device: DeviceId,
        scope: AttributeScope,
        keys: Arc<[String]>,
    },
}

impl Change {
    pub fn device(&self) -> DeviceId {
        match self {
            Change::Stored(m) => m.device_id,
            Change::AttributesDeleted { device, .. } => *device,
        }
    }
}

/// One session's inbox, as the hub holds it.
struct Watcher {
    id: u64,
    /// Unbounded, but fed only while `pending` is below `max_pending`.
    tx: mpsc::UnboundedSender<Vec<Change>>,
    /// Changes handed over and not yet taken by the session ([`Inbox::recv`]).
    pending: AtomicUsize,
    max_pending: usize,
    overflowed: AtomicBool,
    wake: Notify,
}

impl Watcher {
    /// Hands over a batch of changes, or marks the session overflowed.
    fn offer(&self, changes: Vec<Change>) {
        let n = changes.len();
        if self.pending.load(Ordering::Acquire) >= self.max_pending {
            counter!(LIVE_CHANGES, "outcome" => "overflow").increment(n as u64);
            if !self.overflowed.swap(true, Ordering::AcqRel) {
                self.wake.notify_one();
            }
            return;
        }
        self.pending.fetch_add(n, Ordering::AcqRel);
        if self.tx.send(changes).is_ok() {
            counter!(LIVE_CHANGES, "outcome" => "queued").increment(n as u64);
        } else {
            self.pending.fetch_sub(n, Ordering::AcqRel);
        }
    }
}

/// A session's side of its inbox.
pub struct Inbox {
    rx: mpsc::UnboundedReceiver<Vec<Change>>,
    me: Arc<Watcher>,
}

impl Inbox {
    #[cfg(test)]
    fn try_recv(&mut self) -> Option<Vec<Change>> {
        let changes = self.rx.try_recv().ok()?;
        self.me.pending.fetch_sub(changes.len(), Ordering::AcqRel);
        Some(changes)
    }

    /// The next batch of changes; they no longer count as pending.
    pub async fn recv(&mut self) -> Option<Vec<Change>> {
        let changes = self.rx.recv().await?;
        self.me.pending.fetch_sub(changes.len(), Ordering::AcqRel);
        Some(changes)
    }
}

/// A device watched on this node: its sessions, and the hub's subscription with the device's
/// owner (which sends what other nodes store, and deletions).
struct Watched {
    watchers: Vec<Arc<Watcher>>,
    /// The id `Downlinks` gave the hub's subscription for this device (0: none).
    subscription: u64,
    sink: Arc<dyn SessionSink>,
}

/// Who watches which device, on this node.
#[derive(Default)]
pub struct LiveHub {
    by_device: RwLock<HashMap<DeviceId, Watched>>,
    /// The node's downlinks, through which the hub tells devices' owners what it watches.
    /// Unset (tests of the hub alone): only this node's own stores reach it.
    downlinks: OnceLock<Arc<Downlinks>>,
    me: OnceLock<Weak<LiveHub>>,
    /// Devices watched: the sink's path costs one atomic load while nobody watches.
    watched: AtomicUsize,
    next_id: AtomicU64,
}

impl LiveHub {
    pub fn new() -> Arc<LiveHub> {
        let hub = Arc::new(LiveHub::default());
        let _ = hub.me.set(Arc::downgrade(&hub));
        hub
    }

    /// From now on the owners of watched devices are told (set once, at start, before any
    /// session watches).
    pub fn connect(&self, downlinks: Arc<Downlinks>) {
        let _ = self.downlinks.set(downlinks);
    }

    /// A new session's watch list, and its inbox: the session is closed when `max_pending`
    /// changes or more still wait in it as the next batch comes.
    pub fn watcher(self: &Arc<Self>, max_pending: usize) -> (Watch, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        let me = Arc::new(Watcher {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            pending: AtomicUsize::new(0),
            max_pending: max_pending.max(1),
            overflowed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let watch = Watch {
            hub: self.clone(),
            me: me.clone(),
            devices: HashMap::new(),
        };
        (watch, Inbox { rx, me })
    }

    /// Hands a change to every session watching its device, without waiting.
    pub fn publish(&self, change: Change) {
        self.publish_all(std::iter::once(change));
    }

    /// Hands changes (one stored batch) to the sessions watching their devices: each session
    /// gets the ones it wants in one go, without waiting.
    pub fn publish_all(&self, changes: impl IntoIterator<Item = Change>) {
        if self.watched.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut by_watcher: HashMap<u64, (Arc<Watcher>, Vec<Change>)> = HashMap::new();
        {
            let map = self.by_device.read();
            for change in changes {
                let Some(watched) = map.get(&change.device()) else {
                    continue;
                };
                for w in &watched.watchers {
                    by_watcher
                        .entry(w.id)
                        .or_insert_with(|| (w.clone(), Vec::new()))
                        .1
                        .push(change.clone());
                }
            }
        }
        for (w, changes) in by_watcher.into_values() {
            w.offer(changes);
        }
    }

    /// Devices watched by at least one session.
    pub fn watched_devices(&self) -> usize {
        self.watched.load(Ordering::Acquire)
    }

    fn add(&self, device: &Device, w: &Arc<Watcher>) {
        let mut map = self.by_device.write();
        match map.entry(device.id) {
            Entry::Occupied(mut e) => e.get_mut().watchers.push(w.clone()),
            Entry::Vacant(e) => {
                let sink: Arc<dyn SessionSink> = Arc::new(HubSink {
                    hub: self.me.get().cloned().unwrap_or_default(),
                    device: device.id,
                });
                let subscription = self
                    .downlinks
                    .get()
                    .map_or(0, |d| d.live_subscription(device, 0, true, &sink));
                e.insert(Watched {
                    watchers: vec![w.clone()],
                    subscription,
                    sink,
                });
                self.watched.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    fn remove(&self, device: &Device, id: u64) {
        let mut map = self.by_device.write();
        if let Entry::Occupied(mut e) = map.entry(device.id) {
            e.get_mut().watchers.retain(|w| w.id != id);
            if e.get().watchers.is_empty() {
                let watched = e.remove();
                self.watched.fetch_sub(1, Ordering::AcqRel);
                if let Some(d) = self.downlinks.get()
                    && watched.subscription != 0
                {
                    d.live_subscription(device, watched.subscription, false, &watched.sink);
                }
            }
        }
    }
}

/// What the device's owner sends the hub: changes another node stored, and deletions.
struct HubSink {
    hub: Weak<LiveHub>,
    device: DeviceId,
}

impl SessionSink for HubSink {
    fn deliver(&self, delivery: &Delivery) -> bool {
        let Some(hub) = self.hub.upgrade() else {
            return false;
        };
        match delivery {
            Delivery::Live(messages) => {
                hub.publish_all(messages.iter().map(|m| Change::Stored(m.clone())));
            }
            Delivery::LiveDeleted { scope, keys } => hub.publish(Change::AttributesDeleted {
                device: self.device,
                scope: *scope,
                keys: keys.clone().into(),
            }),
            Delivery::Rpc(_) | Delivery::Attributes(_) | Delivery::Deleted(_) => return false,
        }
        true
    }
}

/// The sink tells the hub of each stored batch.
impl crate::sink::AfterStore for LiveHub {
    fn stored(&self, message: &SharedMessage) {
        self.stored_batch(std::slice::from_ref(message));
    }

    fn stored_batch(&self, messages: &[SharedMessage]) {
        self.publish_all(
            messages
                .iter()
                .filter(|m| {
                    matches!(
                        m.body,
                        MessageBody::Telemetry(_) | MessageBody::Attributes { .. }
                    )
                })
                .map(|m| Change::Stored(m.clone())),
        );
    }
}

/// A session's watch list: devices it gets changes of, counted by how many of its
/// subscriptions need each. Dropping it stops them all.
pub struct Watch {
    hub: Arc<LiveHub>,
    me: Arc<Watcher>,
    devices: HashMap<DeviceId, (Arc<Device>, usize)>,
}

impl Watch {
    pub fn add(&mut self, device: &Arc<Device>) {
        match self.devices.entry(device.id) {
            Entry::Occupied(mut e) => e.get_mut().1 += 1,
            Entry::Vacant(e) => {
                self.hub.add(device, &self.me);
                e.insert((device.clone(), 1));
            }
        }
    }

    pub fn remove(&mut self, device: DeviceId) {
        if let Entry::Occupied(mut e) = self.devices.entry(device) {
            e.get_mut().1 -= 1;
            if e.get().1 == 0 {
                let (device, _) = e.remove();
                self.hub.remove(&device, self.me.id);
            }
        }
    }

    /// Whether this session watches `device`.
    pub fn watches(&self, device: DeviceId) -> bool {
        self.devices.contains_key(&device)
    }

    /// Resolves once a change could not be queued: the session is to close.
    pub async fn overflowed(&self) {
        self.overflow().wait().await;
    }

    /// The overflow signal on its own, to wait on beside the session's other work.
    pub fn overflow(&self) -> Overflow {
        Overflow(self.me.clone())
    }
}

/// Resolves [`Overflow::wait`] once a change for its session could not be queued.
pub struct Overflow(Arc<Watcher>);

impl Overflow {
    pub async fn wait(&self) {
        loop {
            let notified = self.0.wake.notified();
            if self.0.overflowed.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        for (device, _) in std::mem::take(&mut self.devices).into_values() {
            self.hub.remove(&device, self.me.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessToken, KvEntry, KvValue, Message, TenantId, TsRecord};

    fn device(n: u128) -> Arc<Device> {
        Arc::new(Device {
            id: DeviceId(uuid::Uuid::from_u128(n)),
            tenant_id: TenantId(uuid::Uuid::nil()),
            name: format!("d{n}"),
            device_type: "default".into(),
            label: None,
            token: AccessToken(format!("t{n}")),
            created_time: 0,
            additional_info: None,
        })
    }

    fn telemetry(device: DeviceId) -> Change {
        Change::Stored(Arc::new(Message {
            tenant_id: TenantId(uuid::Uuid::nil()),
            device_id: device,
            received_ts: 1,
            body: MessageBody::Telemetry(vec![TsRecord {
                ts: 1,
                entries: vec![KvEntry {
                    key: "t".into(),
                    value: KvValue::Long(1),
                }],
            }]),
        }))
    }

    #[tokio::test]
    async fn changes_reach_only_watchers_of_their_device() {
        let hub = LiveHub::new();
        let (da, db) = (device(1), device(2));
        let a = da.id;
        let (mut wa, mut ra) = hub.watcher(4);
        let (mut wb, mut rb) = hub.watcher(4);
        wa.add(&da);
        wa.add(&da);
        wb.add(&db);
        hub.publish(telemetry(a));
        assert_eq!(ra.try_recv().map(|c| c[0].device()), Some(a));
        assert!(rb.try_recv().is_none());
        // Counted: one removal of two keeps the watch.
        wa.remove(a);
        hub.publish(telemetry(a));
        assert!(ra.try_recv().is_some());
        wa.remove(a);
        hub.publish(telemetry(a));
        assert!(ra.try_recv().is_none());
        assert_eq!(hub.watched_devices(), 1);
        drop(wb);
        assert_eq!(hub.watched_devices(), 0);
    }

    #[tokio::test]
    async fn a_batch_is_taken_while_the_session_keeps_up_and_refused_once_it_does_not() {
        let hub = LiveHub::new();
        let da = device(1);
        let a = da.id;
        let (mut w, mut inbox) = hub.watcher(2);
        w.add(&da);
        // A burst larger than the bound, to a session with nothing pending: taken whole.
        hub.publish_all((0..5).map(|_| telemetry(a)));
        let pending = tokio::time::timeout(std::time::Duration::from_millis(20), w.overflowed());
        assert!(pending.await.is_err(), "not overflowed");
        assert_eq!(inbox.try_recv().map(|c| c.len()), Some(5));
        // Read: the next is taken too; left unread, the one after is refused.
        hub.publish_all((0..3).map(|_| telemetry(a)));
        hub.publish(telemetry(a));
        tokio::time::timeout(std::time::Duration::from_secs(5), w.overflowed())
            .await
            .expect("overflowed");
        assert_eq!(inbox.try_recv().map(|c| c.len()), Some(3));
        assert!(
            inbox.try_recv().is_none(),
            "the refused change was not queued"
        );
    }
}
