//! The way back to devices: the per-device state the owner of a device's queue partition keeps
//! (RPC requests in flight), in plain structs driven by their owner.

pub mod event;
pub mod owner;
pub mod router;
pub mod rpc;
