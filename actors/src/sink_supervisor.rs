//! The parent of the sinks. Receives `Drain` from the engine at shutdown and supervision events
//! from its sinks. A crashed sink is started again with a fresh consumer, which resumes from the
//! committed offsets: the batch it was writing is read and written again (stores make that a
//! no-op), so a crash delays data and never loses it.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::error;

use crate::metrics::SINK_RESTARTS;
use crate::sink::{Sink, SinkArgs, SinkMsg, SinkStats};

pub struct SinkSupervisor;

/// Builds the arguments of sink `i` (a new consumer of its share of the partitions).
pub type MakeSink = Arc<dyn Fn(usize) -> SinkArgs + Send + Sync>;

pub struct SinkSupervisorArgs {
    pub sinks: usize,
    pub make: MakeSink,
}

pub struct SinkSupervisorState {
    make: MakeSink,
    sinks: Vec<ActorRef<SinkMsg>>,
    restarts: u64,
}

pub enum SinkSupervisorMsg {
    /// Drains every sink, replies with their totals, and stops.
    Drain(RpcReplyPort<SinkStats>),
    Restarts(RpcReplyPort<u64>),
}

/// Pause before restarting a crashed sink, so a sink that crashes at once does not spin.
const RESTART_DELAY: Duration = Duration::from_millis(100);

async fn spawn_sink(
    myself: &ActorRef<SinkSupervisorMsg>,
    make: &MakeSink,
    i: usize,
) -> Result<ActorRef<SinkMsg>, ActorProcessingErr> {
    let (sink, _) = Actor::spawn_linked(None, Sink, make(i), myself.get_cell()).await?;
    Ok(sink)
}

impl Actor for SinkSupervisor {
    type Msg = SinkSupervisorMsg;
    type State = SinkSupervisorState;
    type Arguments = SinkSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SinkSupervisorArgs,
    ) -> Result<SinkSupervisorState, ActorProcessingErr> {
        let mut sinks = Vec::with_capacity(args.sinks);
        for i in 0..args.sinks {
            sinks.push(spawn_sink(&myself, &args.make, i).await?);
        }
        Ok(SinkSupervisorState {
            make: args.make,
            sinks,
            restarts: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut SinkSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SinkSupervisorMsg::Restarts(reply) => {
                let _ = reply.send(state.restarts);
            }
            SinkSupervisorMsg::Drain(reply) => {
                let mut total = SinkStats::default();
                for i in 0..state.sinks.len() {
                    // A sink that crashes while draining is replaced and drained again.
                    let stats = loop {
                        match ractor::call!(state.sinks[i], SinkMsg::Drain) {
                            Ok(stats) => break stats,
                            Err(e) => {
                                error!(sink = i, error = %e, "sink failed while draining, restarting it");
                                state.restarts += 1;
                                counter!(SINK_RESTARTS).increment(1);
                                tokio::time::sleep(RESTART_DELAY).await;
                                state.sinks[i] = spawn_sink(&myself, &state.make, i).await?;
                            }
                        }
                    };
                    total.batches += stats.batches;
                    total.messages += stats.messages;
                    total.data_points += stats.data_points;
                    total.failed_writes += stats.failed_writes;
                }
                let _ = reply.send(total);
                myself.stop(Some("drained".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut SinkSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(who, err) = event {
            let Some(i) = state.sinks.iter().position(|s| s.get_id() == who.get_id()) else {
                return Ok(());
            };
            error!(sink = i, error = %err, "sink crashed, restarting it from the committed offsets");
            state.restarts += 1;
            counter!(SINK_RESTARTS).increment(1);
            tokio::time::sleep(RESTART_DELAY).await;
            state.sinks[i] = spawn_sink(&myself, &state.make, i).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, KvEntry, KvValue, Message, MessageBody, TenantId, TsRecord};
    use crate::sink::SinkConfig;
    use crate::testing::{MemStore, VecQueue};

    #[tokio::test]
    async fn a_crashed_sink_is_restarted_and_loses_nothing() {
        let queue = VecQueue::default();
        let tenant = TenantId::from_name("t");
        for ts in 0..5 {
            queue.push(Message {
                tenant_id: tenant,
                device_id: DeviceId::derive(tenant, "d"),
                received_ts: ts,
                body: MessageBody::Telemetry(vec![TsRecord {
                    ts,
                    entries: vec![KvEntry::new("v", KvValue::Long(ts))],
                }]),
            });
        }
        let store = Arc::new(MemStore::default());
        store.panic_on_next_write();
        let (q, s) = (queue.clone(), store.clone());
        let make: MakeSink = Arc::new(move |_| SinkArgs {
            // A fresh consumer re-reads from the committed offset, as a real queue's does.
            consumer: Box::new(q.reopened()),
            store: s.clone(),
            dead_letters: None,
            config: SinkConfig {
                batch_size: 10,
                batch_interval: Duration::from_millis(10),
                ..SinkConfig::default()
            },
            after_store: None,
        });
        let (supervisor, handle) =
            Actor::spawn(None, SinkSupervisor, SinkSupervisorArgs { sinks: 1, make })
                .await
                .expect("starts");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let restarts = ractor::call!(supervisor, SinkSupervisorMsg::Restarts).expect("alive");
        assert_eq!(restarts, 1);
        let stats = ractor::call!(supervisor, SinkSupervisorMsg::Drain).expect("drained");
        handle.await.expect("stops");
        assert_eq!(store.points(), 5, "every message stored once: {stats:?}");
        assert_eq!(queue.committed(), Some(4));
    }
}
