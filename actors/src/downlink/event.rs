//! Device events: what travels the ingest queue, keyed by device like its telemetry, to the
//! owner of the device's partition, who keeps the device's server-side state
//! ([`super::owner::Owned`]). They are never stored; the rule chain hands them to the owner and
//! commits past them.

use std::sync::Arc;

use crate::downlink::rpc::{Resolution, RpcRequest};
use crate::model::KvEntry;

/// A node's name (`<data_dir>/node-id`), where downlinks for its sessions and answers for its
/// callers are sent.
pub type NodeId = Arc<str>;

/// Who waits for an RPC's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A REST call on `node`, under the id that node gave it.
    Call { node: NodeId, call: u64 },
    /// A persistent RPC: its stored record, which the owner keeps up to date.
    Record { id: uuid::Uuid },
}

/// One event for a device's owner.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceEvent {
    /// A session of the device on `node` now subscribes to these downlinks. Sent when they
    /// change; both false: the session ended. `seq` grows per session, so an event overtaken by
    /// a later one (they are sent by separate tasks) is ignored.
    Session {
        node: NodeId,
        session: u64,
        seq: u64,
        rpc: bool,
        attributes: bool,
        /// A node's live hub: it gets every stored change of the device (its WebSocket
        /// sessions watch it).
        live: bool,
        /// A session that takes one downlink and ends (an HTTP long poll): when it subscribes,
        /// only the first pending request goes to it (ThingsBoard's sync sessions).
        once: bool,
    },
    /// A server-side RPC to the device.
    RpcRequest { caller: Caller, request: RpcRequest },
    /// The device's reply to request `id`, as it sent it.
    RpcReply { id: i32, payload: Vec<u8> },
    /// Shared attributes deleted: subscribed sessions get `{"deleted":[..]}`.
    SharedDeleted { keys: Vec<String> },
    /// Attributes of any scope deleted: watching nodes' live hubs are told.
    AttributesDeleted {
        scope: crate::model::AttributeScope,
        keys: Vec<String>,
    },
    /// The REST call `call` of `node` went away before its outcome: its request is dropped.
    CallAbandoned { node: NodeId, call: u64 },
    /// A persistent RPC was deleted: it is not sent any more.
    RpcDeleted { id: uuid::Uuid },
    /// A session wrote persistent RPC `record` to the device (`acknowledged` false: it waits
    /// for the PUBACK), or the device acknowledged it (true; at QoS 0 and on HTTP, written).
    RpcDelivery {
        record: uuid::Uuid,
        acknowledged: bool,
    },
    /// `node` holds only these sessions of the device: sent by a node that got a delivery no
    /// session of its own wanted (the owner knew a session the node no longer has: the node
    /// restarted, or the session's end was lost). The owner forgets the node's others.
    /// Sessions with ids from `below` up are newer than the list, and kept.
    NodeSessions {
        node: NodeId,
        sessions: Vec<u64>,
        below: u64,
    },
}

/// What the owner sends a node.
#[derive(Clone, Debug, PartialEq)]
pub enum ToNode {
    /// For the device's sessions on that node.
    Deliver {
        device: crate::model::DeviceId,
        delivery: Delivery,
    },
    /// The outcome of a caller's RPC.
    Resolve { call: u64, resolution: Resolution },
}

/// A downlink for a device's sessions: each subscribed session of the right kind gets it.
#[derive(Clone, Debug, PartialEq)]
pub enum Delivery {
    /// A server-side RPC request under its id (to RPC-subscribed sessions).
    Rpc(crate::downlink::rpc::Outgoing),
    /// Shared attributes changed (to attribute-subscribed sessions).
    Attributes(Vec<KvEntry>),
    /// Shared attributes deleted.
    Deleted(Vec<String>),
    /// Changes of the device stored by the owner's sink (one batch's), for a watching node's
    /// live hub.
    Live(Vec<crate::model::SharedMessage>),
    /// Attributes deleted, for a watching node's live hub.
    LiveDeleted {
        scope: crate::model::AttributeScope,
        keys: Vec<String>,
    },
}
