//! Device sessions: one per connected device.
//!
//! - `handle.rs`: [`SessionHandle`], what a transport holds per connection: the ordered, bounded
//!   uplink hand-off to the queue, and the address of the session actor.
//! - `device.rs`: [`DeviceSession`], the actor that owns the session's state and handles its
//!   control messages (server-to-device messages).
//! - `outbound.rs`: [`Outbound`], the bounded `Send` channel every server-to-device message
//!   enters, drained by the connection's writer.
//! - `supervisor.rs`: [`SessionSupervisor`](supervisor::SessionSupervisor), the parent of every
//!   session.

mod device;
mod handle;
pub mod outbound;
pub mod supervisor;

pub use device::{DeviceSession, DeviceSessionArgs, SessionMsg};
pub use handle::{SessionArgs, SessionError, SessionHandle};
pub use outbound::Outbound;
