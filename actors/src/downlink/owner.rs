//! The server-side state of the devices whose queue partitions a node owns: which sessions,
//! on which nodes, subscribe to RPC and to shared attributes, and each device's RPC requests
//! ([`DeviceRpcs`]). Plain data fed device events and the clock; every decision comes back as
//! [`Effect`]s (downlinks to nodes, outcomes to callers) for the owner's driver to send.
//!
//! Bounds: at most [`MAX_SESSIONS`] sessions are remembered per device (past it the oldest long
//! poll is forgotten, else the oldest session: the MQTT listener keeps one live session per
//! device by default),
//! each device's pending RPCs are bounded by `rpc_capacity`, and a device's state is let go once
//! it has neither sessions nor pending requests, all but its RPC id counter: ids keep counting
//! while the engine runs, as ThingsBoard's device actor counts them (an HTTP device's long poll
//! is a session that ends with every request, and the official HTTP SDK cannot answer id 0
//! twice: it posts a reply to id 0 as a request of its own). A kept counter costs about 40
//! bytes per device that ever got an RPC; the number of devices is bounded by the registry's
//! `devices.max_per_tenant`.

use std::collections::{HashMap, HashSet};

use crate::downlink::event::{Caller, Delivery, DeviceEvent, NodeId, ToNode};
use crate::downlink::rpc::{Acknowledged, DeviceRpcs, Resolution};
use crate::model::{DeviceId, KvEntry};

/// Sessions remembered per device.
pub const MAX_SESSIONS: usize = 16;

/// How long, and how many, persistent RPCs that ended are remembered, so a copy of one that
/// arrives late (reloaded from storage while its queued event was on its way, or the other way
/// round) is not sent again.
const DONE_RECORDS_KEEP_MS: i64 = 10 * 60 * 1000;
const DONE_RECORDS_MAX: usize = 100_000;

/// Something for the owner's driver to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send a message to a node.
    Send { node: NodeId, message: ToNode },
    /// A persistent RPC's record changes.
    Record {
        device: DeviceId,
        id: uuid::Uuid,
        change: RecordChange,
    },
}

/// How a persistent RPC's record changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordChange {
    /// A session wrote it to the device and waits for the acknowledgement (`SENT`).
    Sent,
    /// The device did not acknowledge a send in time (`TIMEOUT`); it has retries left.
    Timeout,
    /// A two-way request reached the device: it waits for the reply (`DELIVERED`).
    Delivered,
    /// It ended as the resolution says.
    Done(Resolution),
}

#[derive(Clone, Debug)]
struct SessionRef {
    node: NodeId,
    session: u64,
    seq: u64,
    rpc: bool,
    attributes: bool,
    /// A node's live hub watching the device.
    live: bool,
    /// Takes one downlink and ends (an HTTP long poll): the first to go when the device has
    /// as many sessions as it may.
    once: bool,
}

struct DeviceState {
    /// Oldest first.
    sessions: Vec<SessionRef>,
    rpcs: DeviceRpcs<Caller>,
}

impl DeviceState {
    fn rpc_online(&self) -> bool {
        self.sessions.iter().any(|s| s.rpc)
    }

    /// Forgets the sessions that take one downlink and just got one of `what` (a long poll
    /// answers and ends: a later downlink must wait for the next poll, not go to this one).
    fn took(&mut self, what: impl Fn(&SessionRef) -> bool) {
        self.sessions.retain(|s| !(s.once && what(s)));
    }

    /// The nodes holding a session that wants `what`, each once.
    fn nodes(&self, what: impl Fn(&SessionRef) -> bool) -> Vec<NodeId> {
        let mut nodes: Vec<NodeId> = Vec::new();
        for s in self.sessions.iter().filter(|s| what(s)) {
            if !nodes.contains(&s.node) {
                nodes.push(s.node.clone());
            }
        }
        nodes
    }
}

/// What a session subscribes to.
#[derive(Clone, Copy, Debug)]
struct Wants {
    rpc: bool,
    attributes: bool,
    live: bool,
}

/// The owned devices' state.
pub struct Owned {
    /// Devices with a live session (kept by [`Owned::tidy`]), so the sink's path skips the
    /// lookup while nobody watches.
    live: HashSet<DeviceId>,
    devices: HashMap<DeviceId, DeviceState>,
    /// The RPC id counters of devices whose state was let go (those that got an RPC).
    next_ids: HashMap<DeviceId, i32>,
    /// Persistent RPCs that ended, oldest first, with when.
    done_records: std::collections::VecDeque<(i64, uuid::Uuid)>,
    done_ids: HashSet<uuid::Uuid>,
    /// Devices with requests pending: what [`Owned::expire`] looks at.
    pending: HashSet<DeviceId>,
    rpc_capacity: usize,
    ack_timeout_ms: i64,
}

impl Owned {
    /// State whose devices may each have `rpc_capacity` RPCs pending, whose persistent RPCs'
    /// sends time out when not acknowledged within `ack_timeout_ms`.
    pub fn new(rpc_capacity: usize, ack_timeout_ms: i64) -> Owned {
        Owned {
            live: HashSet::new(),
            devices: HashMap::new(),
            next_ids: HashMap::new(),
            done_records: std::collections::VecDeque::new(),
            done_ids: HashSet::new(),
            pending: HashSet::new(),
            rpc_capacity,
            ack_timeout_ms,
        }
    }

    fn state(&mut self, device: DeviceId) -> &mut DeviceState {
        let capacity = self.rpc_capacity;
        let ack_timeout = self.ack_timeout_ms;
        let next_ids = &mut self.next_ids;
        self.devices.entry(device).or_insert_with(|| DeviceState {
            sessions: Vec::new(),
            rpcs: DeviceRpcs::resumed(capacity, next_ids.remove(&device).unwrap_or(0))
                .with_ack_timeout(ack_timeout),
        })
    }

    /// Forgets a device with nothing left to keep.
    fn tidy(&mut self, device: DeviceId) {
        if self
            .devices
            .get(&device)
            .is_some_and(|state| state.sessions.iter().any(|s| s.live))
        {
            self.live.insert(device);
        } else {
            self.live.remove(&device);
        }
        if let Some(state) = self.devices.get(&device) {
            if state.rpcs.is_empty() {
                self.pending.remove(&device);
                if state.sessions.is_empty() {
                    let next_id = state.rpcs.next_id();
                    self.devices.remove(&device);
                    if next_id != 0 {
                        self.next_ids.insert(device, next_id);
                    }
                }
            } else {
                self.pending.insert(device);
            }
        }
    }

    /// Handles one event of `device` at `now` (ms).
    pub fn handle(&mut self, device: DeviceId, event: DeviceEvent, now: i64) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            DeviceEvent::Session {
                node,
                session,
                seq,
                rpc,
                attributes,
                live,
                once,
            } => self.session(
                device,
                node,
                session,
                seq,
                Wants {
                    rpc,
                    attributes,
                    live,
                },
                once,
                now,
                &mut effects,
            ),
            DeviceEvent::RpcRequest { caller, request } => {
                if let Caller::Record { id } = caller
                    && self.done_ids.contains(&id)
                {
                    return effects;
                }
                let state = self.state(device);
                // A stored request reloaded at start may also still be on its way through the
                // queue: it is taken once.
                if matches!(caller, Caller::Record { .. })
                    && state.rpcs.find(|c| *c == caller).is_some()
                {
                    return effects;
                }
                let online = state.rpc_online();
                let record = match caller {
                    Caller::Record { id } => Some(id),
                    Caller::Call { .. } => None,
                };
                match state
                    .rpcs
                    .submit(request, caller.clone(), now, online, record)
                {
                    Ok(submitted) => {
                        if let Some(outgoing) = submitted.send {
                            for node in state.nodes(|s| s.rpc) {
                                effects.push(Effect::Send {
                                    node,
                                    message: ToNode::Deliver {
                                        device,
                                        delivery: Delivery::Rpc(outgoing.clone()),
                                    },
                                });
                            }
                            state.took(|s| s.rpc);
                        }
                        if let Some((caller, resolution)) = submitted.done {
                            effects.push(resolve(device, caller, resolution));
                        }
                    }
                    Err(_) => effects.push(resolve(device, caller, Resolution::Refused)),
                }
            }
            DeviceEvent::RpcReply { id, payload } => {
                if let Some(state) = self.devices.get_mut(&device)
                    && let Some((caller, resolution)) = state.rpcs.reply(id, payload)
                {
                    effects.push(resolve(device, caller, resolution));
                }
            }
            DeviceEvent::CallAbandoned { node, call } => {
                if let Some(state) = self.devices.get_mut(&device)
                    && let Some(at) = state.rpcs.find(|c| {
                        *c == Caller::Call {
                            node: node.clone(),
                            call,
                        }
                    })
                {
                    state.rpcs.cancel(at);
                }
            }
            DeviceEvent::NodeSessions {
                node,
                sessions,
                below,
            } => {
                if let Some(state) = self.devices.get_mut(&device) {
                    state.sessions.retain(|s| {
                        s.node != node || s.session >= below || sessions.contains(&s.session)
                    });
                }
            }
            DeviceEvent::RpcDelivery {
                record,
                acknowledged,
            } => {
                if let Some(state) = self.devices.get_mut(&device)
                    && let Some(at) = state.rpcs.find(|c| *c == Caller::Record { id: record })
                {
                    let change = if acknowledged {
                        match state.rpcs.acknowledged(at) {
                            Some(Acknowledged::Delivered) => Some(RecordChange::Delivered),
                            Some(Acknowledged::Done(_, resolution)) => {
                                Some(RecordChange::Done(resolution))
                            }
                            None => None,
                        }
                    } else {
                        state.rpcs.written(at).then_some(RecordChange::Sent)
                    };
                    if let Some(change) = change {
                        effects.push(Effect::Record {
                            device,
                            id: record,
                            change,
                        });
                    }
                }
            }
            DeviceEvent::RpcDeleted { id } => {
                if let Some(state) = self.devices.get_mut(&device)
                    && let Some(at) = state.rpcs.find(|c| *c == Caller::Record { id })
                {
                    state.rpcs.cancel(at);
                }
            }
            DeviceEvent::AttributesDeleted { scope, keys } => {
                if let Some(state) = self.devices.get(&device) {
                    deliver(
                        &mut effects,
                        state.nodes(|s| s.live),
                        device,
                        &Delivery::LiveDeleted { scope, keys },
                    );
                }
            }
            DeviceEvent::SharedDeleted { keys } => {
                if let Some(state) = self.devices.get_mut(&device) {
                    deliver(
                        &mut effects,
                        state.nodes(|s| s.attributes),
                        device,
                        &Delivery::Deleted(keys),
                    );
                    state.took(|s| s.attributes);
                }
            }
        }
        self.tidy(device);
        self.remember_done(&effects, now);
        effects
    }

    /// Remembers the persistent RPCs these effects end; forgets those ended long ago.
    fn remember_done(&mut self, effects: &[Effect], now: i64) {
        for effect in effects {
            if let Effect::Record {
                id,
                change: RecordChange::Done(_),
                ..
            } = effect
                && self.done_ids.insert(*id)
            {
                self.done_records.push_back((now, *id));
            }
        }
        while let Some(&(at, id)) = self.done_records.front() {
            if at > now.saturating_sub(DONE_RECORDS_KEEP_MS)
                && self.done_records.len() <= DONE_RECORDS_MAX
            {
                break;
            }
            self.done_records.pop_front();
            self.done_ids.remove(&id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn session(
        &mut self,
        device: DeviceId,
        node: NodeId,
        session: u64,
        seq: u64,
        wants: Wants,
        once: bool,
        now: i64,
        effects: &mut Vec<Effect>,
    ) {
        let Wants {
            rpc,
            attributes,
            live,
        } = wants;
        let none = !rpc && !attributes && !live;
        let state = self.state(device);
        let at = state
            .sessions
            .iter()
            .position(|s| s.node == node && s.session == session);
        let newly_rpc = match at {
            Some(i) if state.sessions[i].seq >= seq => return,
            Some(i) => {
                let s = &mut state.sessions[i];
                let newly = rpc && !s.rpc;
                s.seq = seq;
                s.rpc = rpc;
                s.attributes = attributes;
                s.live = live;
                if none {
                    state.sessions.remove(i);
                }
                newly
            }
            None if none => false,
            None => {
                if state.sessions.len() >= MAX_SESSIONS {
                    // A long poll goes first (the oldest), so polls never push out a
                    // connection that stays.
                    let at = state.sessions.iter().position(|s| s.once).unwrap_or(0);
                    state.sessions.remove(at);
                }
                state.sessions.push(SessionRef {
                    node: node.clone(),
                    session,
                    seq,
                    rpc,
                    attributes,
                    live,
                    once,
                });
                rpc
            }
        };
        // ThingsBoard sends every pending request to a session that subscribes (BURST).
        // A session that takes one downlink gets only the first (ThingsBoard's sync session).
        if newly_rpc && !state.rpcs.is_empty() {
            let (outgoing, done) = if once {
                state.rpcs.subscribed_once(now)
            } else {
                state.rpcs.subscribed(now)
            };
            for o in outgoing {
                effects.push(Effect::Send {
                    node: node.clone(),
                    message: ToNode::Deliver {
                        device,
                        delivery: Delivery::Rpc(o),
                    },
                });
            }
            effects.extend(done.into_iter().map(|(c, r)| resolve(device, c, r)));
            if once {
                state.took(|s| s.node == node && s.session == session);
            }
        }
    }

    /// Nodes whose live hubs watch `device`.
    pub fn live_nodes(&self, device: DeviceId) -> Vec<NodeId> {
        self.devices
            .get(&device)
            .map(|state| state.nodes(|s| s.live))
            .unwrap_or_default()
    }

    /// Whether any owned device is watched by a live hub.
    pub fn any_live(&self) -> bool {
        !self.live.is_empty()
    }

    /// Shared attributes of `device` changed: its attribute-subscribed sessions get them.
    pub fn shared_updated(&mut self, device: DeviceId, entries: &[KvEntry]) -> Vec<Effect> {
        let mut effects = Vec::new();
        if let Some(state) = self.devices.get_mut(&device) {
            deliver(
                &mut effects,
                state.nodes(|s| s.attributes),
                device,
                &Delivery::Attributes(entries.to_vec()),
            );
            state.took(|s| s.attributes);
        }
        effects
    }

    /// Ends every request whose time is up at `now`.
    pub fn expire(&mut self, now: i64) -> Vec<Effect> {
        let due: Vec<DeviceId> = self
            .pending
            .iter()
            .filter(|d| {
                self.devices
                    .get(d)
                    .and_then(|s| s.rpcs.next_deadline())
                    .is_some_and(|at| at <= now)
            })
            .copied()
            .collect();
        let mut effects = Vec::new();
        for device in due {
            if let Some(state) = self.devices.get_mut(&device) {
                let due = state.rpcs.expire(now);
                for id in due.timed_out {
                    if let Some(Caller::Record { id }) = state.rpcs.caller(id) {
                        effects.push(Effect::Record {
                            device,
                            id: *id,
                            change: RecordChange::Timeout,
                        });
                    }
                }
                effects.extend(due.ended.into_iter().map(|(c, r)| resolve(device, c, r)));
            }
            self.tidy(device);
        }
        self.remember_done(&effects, now);
        effects
    }

    /// Every session on `node` ended (the node stopped or restarted).
    pub fn node_gone(&mut self, node: &str) {
        let devices: Vec<DeviceId> = self.devices.keys().copied().collect();
        for device in devices {
            if let Some(state) = self.devices.get_mut(&device) {
                state.sessions.retain(|s| &*s.node != node);
            }
            self.tidy(device);
        }
    }

    /// Devices with state kept.
    pub fn len(&self) -> usize {
        self.devices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }
}

fn resolve(device: DeviceId, caller: Caller, resolution: Resolution) -> Effect {
    match caller {
        Caller::Call { node, call } => Effect::Send {
            node,
            message: ToNode::Resolve { call, resolution },
        },
        Caller::Record { id } => Effect::Record {
            device,
            id,
            change: RecordChange::Done(resolution),
        },
    }
}

fn deliver(effects: &mut Vec<Effect>, nodes: Vec<NodeId>, device: DeviceId, delivery: &Delivery) {
    for node in nodes {
        effects.push(Effect::Send {
            node,
            message: ToNode::Deliver {
                device,
                delivery: delivery.clone(),
            },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downlink::rpc::{Direction, Outgoing, RpcRequest};
    use crate::model::{KvValue, TenantId};

    fn device() -> DeviceId {
        DeviceId::derive(TenantId::from_name("t"), "d")
    }

    fn node(n: &str) -> NodeId {
        NodeId::from(n)
    }

    fn caller(call: u64) -> Caller {
        Caller::Call {
            node: node("rest"),
            call,
        }
    }

    fn request(direction: Direction, expires_at: i64) -> RpcRequest {
        RpcRequest {
            method: "m".into(),
            params: "{}".into(),
            direction,
            expires_at,
            retries: 0,
        }
    }

    fn session(n: &str, session: u64, seq: u64, rpc: bool, attributes: bool) -> DeviceEvent {
        DeviceEvent::Session {
            node: node(n),
            session,
            seq,
            rpc,
            attributes,
            live: false,
            once: false,
        }
    }

    fn rpc(call: u64, direction: Direction, expires_at: i64) -> DeviceEvent {
        DeviceEvent::RpcRequest {
            caller: caller(call),
            request: request(direction, expires_at),
        }
    }

    fn delivered(effects: &[Effect]) -> Vec<(String, i32)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    node,
                    message:
                        ToNode::Deliver {
                            delivery: Delivery::Rpc(Outgoing { id, .. }),
                            ..
                        },
                } => Some((node.to_string(), *id)),
                _ => None,
            })
            .collect()
    }

    fn resolved(effects: &[Effect]) -> Vec<(u64, Resolution)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send {
                    message: ToNode::Resolve { call, resolution },
                    ..
                } => Some((*call, resolution.clone())),
                _ => None,
            })
            .collect()
    }

    fn nodes(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Send { node, .. } => Some(node.to_string()),
                Effect::Record { .. } => None,
            })
            .collect()
    }

    fn records(effects: &[Effect]) -> Vec<(uuid::Uuid, RecordChange)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Record { id, change, .. } => Some((*id, change.clone())),
                Effect::Send { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_request_to_a_subscribed_device_goes_to_its_node_and_the_reply_to_the_caller() {
        let mut owned = Owned::new(4, 1_000);
        assert!(
            owned
                .handle(device(), session("b", 1, 1, true, false), 0)
                .is_empty()
        );
        let effects = owned.handle(device(), rpc(7, Direction::TwoWay, 1_000), 0);
        assert_eq!(delivered(&effects), [("b".into(), 0)]);
        assert!(resolved(&effects).is_empty());
        let effects = owned.handle(
            device(),
            DeviceEvent::RpcReply {
                id: 0,
                payload: b"{\"ok\":1}".to_vec(),
            },
            10,
        );
        assert_eq!(
            resolved(&effects),
            [(7, Resolution::Reply(b"{\"ok\":1}".to_vec()))]
        );
        assert_eq!(nodes(&effects), ["rest"]);
        // A second reply to the same id finds nothing.
        let again = DeviceEvent::RpcReply {
            id: 0,
            payload: vec![],
        };
        assert!(owned.handle(device(), again, 11).is_empty());
    }

    #[test]
    fn a_request_waits_for_a_subscription_and_expires_told_apart_by_delivery() {
        let mut owned = Owned::new(4, 1_000);
        assert!(
            owned
                .handle(device(), rpc(1, Direction::TwoWay, 100), 0)
                .is_empty()
        );
        assert!(
            owned
                .handle(device(), rpc(2, Direction::OneWay, 100), 0)
                .is_empty()
        );
        assert!(
            owned
                .handle(device(), rpc(3, Direction::TwoWay, 50), 0)
                .is_empty()
        );
        // Expired before anyone subscribed: never sent.
        assert_eq!(
            resolved(&owned.expire(60)),
            [(3, Resolution::Expired { sent: false })]
        );
        // A session subscribes: both pending requests go out, the one-way one is done.
        let effects = owned.handle(device(), session("b", 1, 1, true, true), 70);
        assert_eq!(delivered(&effects), [("b".into(), 0), ("b".into(), 1)]);
        assert_eq!(resolved(&effects), [(2, Resolution::Sent)]);
        assert_eq!(
            resolved(&owned.expire(100)),
            [(1, Resolution::Expired { sent: true })]
        );
        assert!(owned.expire(1_000).is_empty());
    }

    #[test]
    fn sessions_come_and_go_in_their_own_order() {
        let mut owned = Owned::new(4, 1_000);
        owned.handle(device(), session("b", 1, 2, true, false), 0);
        // An older event of the same session, overtaken: ignored.
        owned.handle(device(), session("b", 1, 1, false, false), 0);
        let effects = owned.handle(device(), rpc(1, Direction::OneWay, 100), 0);
        assert_eq!(delivered(&effects), [("b".into(), 0)]);
        assert_eq!(resolved(&effects), [(1, Resolution::Sent)]);
        // The session ends: the device is offline again and its state let go, but for its
        // id counter: the next request gets the next id.
        owned.handle(device(), session("b", 1, 3, false, false), 0);
        assert!(owned.is_empty());
        assert!(
            owned
                .handle(device(), rpc(2, Direction::OneWay, 100), 0)
                .is_empty()
        );
        assert_eq!(owned.len(), 1);
        let effects = owned.handle(device(), session("c", 1, 1, true, false), 0);
        assert_eq!(delivered(&effects), [("c".into(), 1)]);
    }

    #[test]
    fn sessions_on_two_nodes_both_get_requests_and_updates_once_per_node() {
        let mut owned = Owned::new(4, 1_000);
        owned.handle(device(), session("a", 1, 1, true, true), 0);
        owned.handle(device(), session("b", 2, 1, true, false), 0);
        owned.handle(device(), session("a", 3, 1, false, true), 0);
        let effects = owned.handle(device(), rpc(1, Direction::TwoWay, 100), 0);
        assert_eq!(delivered(&effects), [("a".into(), 0), ("b".into(), 0)]);
        let entries = [KvEntry {
            key: "k".into(),
            value: KvValue::Long(1),
        }];
        assert_eq!(nodes(&owned.shared_updated(device(), &entries)), ["a"]);
        let deleted = owned.handle(
            device(),
            DeviceEvent::SharedDeleted {
                keys: vec!["k".into()],
            },
            0,
        );
        assert_eq!(deleted.len(), 1);
        owned.node_gone("a");
        assert!(owned.shared_updated(device(), &entries).is_empty());
    }

    #[test]
    fn past_the_bound_a_request_is_refused_at_once() {
        let mut owned = Owned::new(2, 1_000);
        owned.handle(device(), rpc(1, Direction::TwoWay, 100), 0);
        owned.handle(device(), rpc(2, Direction::TwoWay, 100), 0);
        let effects = owned.handle(device(), rpc(3, Direction::TwoWay, 100), 0);
        assert_eq!(resolved(&effects), [(3, Resolution::Refused)]);
    }

    #[test]
    fn sessions_per_device_are_bounded() {
        let mut owned = Owned::new(2, 1_000);
        for s in 0..(MAX_SESSIONS as u64 + 5) {
            owned.handle(device(), session("a", s, 1, true, false), 0);
        }
        let effects = owned.handle(device(), rpc(1, Direction::OneWay, 100), 0);
        assert_eq!(delivered(&effects).len(), 1);
        assert_eq!(owned.devices[&device()].sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn a_persistent_request_keeps_its_record_up_to_date() {
        let mut owned = Owned::new(4, 1_000);
        let stored = |id: u128, direction, expires_at| DeviceEvent::RpcRequest {
            caller: Caller::Record {
                id: uuid::Uuid::from_u128(id),
            },
            request: request(direction, expires_at),
        };
        let id = uuid::Uuid::from_u128;
        // Offline: nothing yet; the same record again (reloaded and queued) is taken once.
        assert!(
            owned
                .handle(device(), stored(1, Direction::TwoWay, 100), 0)
                .is_empty()
        );
        assert!(
            owned
                .handle(device(), stored(1, Direction::TwoWay, 100), 0)
                .is_empty()
        );
        assert!(
            owned
                .handle(device(), stored(2, Direction::OneWay, 100), 0)
                .is_empty()
        );
        assert!(
            owned
                .handle(device(), stored(3, Direction::OneWay, 100), 0)
                .is_empty()
        );
        // Deleted before it was sent: never sent.
        owned.handle(device(), DeviceEvent::RpcDeleted { id: id(3) }, 0);
        let effects = owned.handle(device(), session("b", 1, 1, true, false), 10);
        assert_eq!(delivered(&effects), [("b".into(), 0), ("b".into(), 1)]);
        // Handed over is not yet delivered: the session says when it wrote and when the
        // device acknowledged.
        assert!(records(&effects).is_empty());
        let delivery = |n: u128, acknowledged| DeviceEvent::RpcDelivery {
            record: id(n),
            acknowledged,
        };
        let mut changes = Vec::new();
        for (n, acknowledged) in [
            (1, false),
            (1, false),
            (1, true),
            (1, false),
            (2, true),
            (3, true),
        ] {
            changes.extend(records(&owned.handle(
                device(),
                delivery(n, acknowledged),
                15,
            )));
        }
        assert_eq!(
            changes,
            [
                (id(1), RecordChange::Sent),
                (id(1), RecordChange::Delivered),
                (id(2), RecordChange::Done(Resolution::Sent)),
            ]
        );
        let reply = DeviceEvent::RpcReply {
            id: 0,
            payload: b"{}".to_vec(),
        };
        assert_eq!(
            records(&owned.handle(device(), reply, 20)),
            [(id(1), RecordChange::Done(Resolution::Reply(b"{}".to_vec())))]
        );
        // Online: sent at once (id 2 went to the deleted one); then it expires unanswered.
        let effects = owned.handle(device(), stored(4, Direction::TwoWay, 100), 30);
        assert_eq!(delivered(&effects), [("b".into(), 3)]);
        assert!(records(&effects).is_empty());
        assert_eq!(
            records(&owned.expire(100)),
            [(
                id(4),
                RecordChange::Done(Resolution::Expired { sent: true })
            )]
        );
    }

    #[test]
    fn sessions_a_node_no_longer_has_are_forgotten() {
        let mut owned = Owned::new(4, 1_000);
        owned.handle(device(), session("a", 1, 1, true, false), 0);
        owned.handle(device(), session("a", 2, 1, false, true), 0);
        owned.handle(device(), session("b", 3, 1, true, false), 0);
        // Node a says it holds only session 2: its session 1 is gone, b's stays.
        owned.handle(
            device(),
            DeviceEvent::NodeSessions {
                node: node("a"),
                sessions: vec![2],
                below: 4,
            },
            0,
        );
        let effects = owned.handle(device(), rpc(1, Direction::OneWay, 100), 0);
        assert_eq!(delivered(&effects), [("b".into(), 0)]);
        let entries = [KvEntry::new("k", KvValue::Long(1))];
        assert_eq!(nodes(&owned.shared_updated(device(), &entries)), ["a"]);
    }

    #[test]
    fn a_session_that_takes_one_downlink_gets_only_the_first_pending_request() {
        let mut owned = Owned::new(4, 1_000);
        owned.handle(device(), rpc(1, Direction::OneWay, 100), 0);
        owned.handle(device(), rpc(2, Direction::OneWay, 100), 0);
        let poll = |session, seq, rpc| DeviceEvent::Session {
            node: node("h"),
            session,
            seq,
            rpc,
            attributes: false,
            live: false,
            once: true,
        };
        let effects = owned.handle(device(), poll(1, 1, true), 0);
        assert_eq!(delivered(&effects), [("h".into(), 0)]);
        assert_eq!(resolved(&effects), [(1, Resolution::Sent)]);
        owned.handle(device(), poll(1, 2, false), 0);
        // The next poll gets the second.
        let effects = owned.handle(device(), poll(2, 1, true), 0);
        assert_eq!(delivered(&effects), [("h".into(), 1)]);
        assert_eq!(resolved(&effects), [(2, Resolution::Sent)]);
    }

    #[test]
    fn long_polls_never_push_out_a_connection_that_stays() {
        let mut owned = Owned::new(4, 1_000);
        owned.handle(device(), session("m", 1, 1, true, true), 0);
        for poll in 2..(MAX_SESSIONS as u64 + 10) {
            let event = DeviceEvent::Session {
                node: node("h"),
                session: poll,
                seq: 1,
                rpc: false,
                attributes: true,
                live: false,
                once: true,
            };
            owned.handle(device(), event, 0);
        }
        let effects = owned.handle(device(), rpc(1, Direction::OneWay, 100), 0);
        assert_eq!(delivered(&effects), [("m".into(), 0)]);
        assert_eq!(owned.devices[&device()].sessions.len(), MAX_SESSIONS);
    }

    #[test]
    fn an_abandoned_call_frees_its_place() {
        let mut owned = Owned::new(2, 1_000);
        owned.handle(device(), rpc(1, Direction::TwoWay, i64::MAX), 0);
        owned.handle(device(), rpc(2, Direction::TwoWay, i64::MAX), 0);
        assert_eq!(
            resolved(&owned.handle(device(), rpc(3, Direction::TwoWay, i64::MAX), 0)),
            [(3, Resolution::Refused)]
        );
        let abandoned = DeviceEvent::CallAbandoned {
            node: node("rest"),
            call: 1,
        };
        owned.handle(device(), abandoned, 0);
        assert!(
            owned
                .handle(device(), rpc(4, Direction::TwoWay, i64::MAX), 0)
                .is_empty()
        );
        // The one abandoned (id 0) is not sent to a session that subscribes; the others are (a
        // refused request takes no id).
        let effects = owned.handle(device(), session("b", 1, 1, true, false), 0);
        assert_eq!(delivered(&effects), [("b".into(), 1), ("b".into(), 2)]);
    }

    #[test]
    fn a_long_poll_takes_one_downlink_and_the_next_waits_for_the_next_poll() {
        let mut owned = Owned::new(4, 1_000);
        let poll = |session, rpc, attributes| DeviceEvent::Session {
            node: node("h"),
            session,
            seq: 1,
            rpc,
            attributes,
            live: false,
            once: true,
        };
        owned.handle(device(), poll(1, true, false), 0);
        let effects = owned.handle(device(), rpc(1, Direction::OneWay, 100), 0);
        assert_eq!(resolved(&effects), [(1, Resolution::Sent)]);
        // The poll answered: the next request waits (its end may not have come yet).
        assert!(
            owned
                .handle(device(), rpc(2, Direction::OneWay, 100), 0)
                .is_empty()
        );
        let effects = owned.handle(device(), poll(2, true, false), 0);
        assert_eq!(resolved(&effects), [(2, Resolution::Sent)]);
        // Attribute polls likewise.
        owned.handle(device(), poll(3, false, true), 0);
        let entries = [KvEntry::new("k", KvValue::Long(1))];
        assert_eq!(nodes(&owned.shared_updated(device(), &entries)), ["h"]);
        assert!(owned.shared_updated(device(), &entries).is_empty());
    }

    #[test]
    fn a_persistent_request_that_ended_is_not_taken_again() {
        let mut owned = Owned::new(4, 1_000);
        let stored = || DeviceEvent::RpcRequest {
            caller: Caller::Record {
                id: uuid::Uuid::from_u128(9),
            },
            request: request(Direction::OneWay, 100),
        };
        owned.handle(device(), session("b", 1, 1, true, false), 0);
        assert_eq!(delivered(&owned.handle(device(), stored(), 0)).len(), 1);
        let acknowledged = DeviceEvent::RpcDelivery {
            record: uuid::Uuid::from_u128(9),
            acknowledged: true,
        };
        assert_eq!(records(&owned.handle(device(), acknowledged, 5)).len(), 1);
        // Its other copy (reloaded from storage, or queued): not sent again.
        assert!(owned.handle(device(), stored(), 10).is_empty());
        // Long after, it is forgotten (storage says it is no longer queued by then).
        owned.expire(DONE_RECORDS_KEEP_MS + 20);
        assert_eq!(delivered(&owned.handle(device(), stored(), 0)).len(), 1);
    }

    #[test]
    fn unacknowledged_sends_of_a_persistent_request_time_out_then_fail() {
        let mut owned = Owned::new(4, 1_000);
        let id = uuid::Uuid::from_u128(5);
        owned.handle(device(), session("b", 1, 1, true, false), 0);
        let stored = DeviceEvent::RpcRequest {
            caller: Caller::Record { id },
            request: RpcRequest {
                retries: 1,
                ..request(Direction::TwoWay, 100_000)
            },
        };
        assert_eq!(delivered(&owned.handle(device(), stored, 0)).len(), 1);
        assert!(owned.expire(999).is_empty());
        assert_eq!(records(&owned.expire(1_000)), [(id, RecordChange::Timeout)]);
        // Sent again when the device subscribes again (it reconnected), and again not
        // acknowledged: out of retries.
        owned.handle(device(), session("b", 1, 2, false, false), 2_000);
        let effects = owned.handle(device(), session("b", 2, 1, true, false), 2_000);
        assert_eq!(delivered(&effects), [("b".into(), 0)]);
        assert_eq!(
            records(&owned.expire(3_000)),
            [(
                id,
                RecordChange::Done(Resolution::Undelivered { retries: 1 })
            )]
        );
        assert!(owned.is_empty() || owned.expire(200_000).is_empty());
    }
}
