//! ThingsBoard's device-facing message shapes, as pure functions: what a device may ask and
//! what the server answers, independent of the transport that carries them.

pub mod attributes;
pub mod claim;
pub mod gateway;
pub mod provision;
pub mod rpc;
pub mod ws;
