//! `DeviceSession`, the actor of one connected device: it owns the session's state and handles
//! its control messages.
//!
//! Receives `Downlink` from its [`SessionHandle`](super::SessionHandle) (the way server-to-device
//! messages reach a session); sends each to its connection's [`Outbound`] channel, waiting while
//! that is full, so a device that does not read holds back this actor, then (through the
//! handle's bounded mailbox) whoever sends to it. Uplinks do not pass through this actor: the
//! handle hands them to the queue itself, in order (see `handle.rs`). Linked to the
//! [`SessionSupervisor`](super::supervisor::SessionSupervisor), so a crash ends this session
//! only.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::outbound::{Downlink, Outbound};
use crate::mailbox::Ticket;
use crate::model::Device;

pub struct DeviceSession;

/// What the actor starts from; the handle keeps a copy to respawn it after hibernation.
#[derive(Clone)]
pub struct DeviceSessionArgs {
    pub device: Arc<Device>,
    pub outbound: Outbound,
}

pub struct DeviceSessionState {
    #[allow(dead_code)] // the device's state lives here as the two-way API grows
    device: Arc<Device>,
    outbound: Outbound,
}

pub enum SessionMsg {
    /// A server-to-device message for the connection. The ticket is the message's place in
    /// this actor's mailbox, given back once the outbound channel took it.
    Downlink { downlink: Downlink, ticket: Ticket },
}

impl Actor for DeviceSession {
    type Msg = SessionMsg;
    type State = DeviceSessionState;
    type Arguments = DeviceSessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: DeviceSessionArgs,
    ) -> Result<DeviceSessionState, ActorProcessingErr> {
        Ok(DeviceSessionState {
            device: args.device,
            outbound: args.outbound,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut DeviceSessionState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Downlink { downlink, ticket } => {
                // Fails only when the connection is gone; the channel counted the drop.
                let _ = state.outbound.send(downlink).await;
                drop(ticket);
            }
        }
        Ok(())
    }
}
