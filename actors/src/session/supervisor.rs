//! The parent of every device session. Receives supervision events from the session actors
//! linked to it, `Failed` from session handles whose uplink path panicked (uplinks do not run in
//! the actor), and `Stats` queries; sends nothing. A crashed session is logged and counted, and
//! stays down: its connection closes and the device reconnects, as a device would after any
//! fault. Each session reports at most one failure, so its mailbox holds at most one message per
//! session.

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::error;

use crate::metrics::SESSIONS_FAILED;

pub struct SessionSupervisor;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SupervisorStats {
    pub failed: u64,
}

pub enum SupervisorMsg {
    Stats(RpcReplyPort<SupervisorStats>),
    /// A session's uplink path panicked (`device` is the device's name).
    Failed {
        device: String,
        error: String,
    },
}

impl Actor for SessionSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorStats;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        _args: (),
    ) -> Result<SupervisorStats, ActorProcessingErr> {
        Ok(SupervisorStats::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut SupervisorStats,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::Stats(reply) => {
                let _ = reply.send(*state);
            }
            SupervisorMsg::Failed { device, error } => {
                state.failed += 1;
                counter!(SESSIONS_FAILED).increment(1);
                error!(device = ?device, error = ?error, "device session crashed");
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SupervisorStats,
    ) -> Result<(), ActorProcessingErr> {
        // Unlike ractor's default, a child's end never stops the supervisor.
        if let SupervisionEvent::ActorFailed(who, err) = event {
            state.failed += 1;
            counter!(SESSIONS_FAILED).increment(1);
            error!(actor = %who.get_id(), error = %err, "device session crashed");
        }
        Ok(())
    }
}
