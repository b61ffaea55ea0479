//! Rule chains: what happens to a message between the queue and storage.
//!
//! One [`RuleChainActor`] runs per queue partition a node owns (spawned when the partition is
//! assigned, stopped when it is revoked), so a partition's messages are handled in order and
//! partitions in parallel. It receives `Deliver` from the partition's consumer, which takes a
//! [`Ticket`] first (the mailbox is bounded), runs the message through its [`RuleChain`], and
//! hands what the chain saves to the sink through a bounded channel, waiting when the sink is
//! behind. The sink writes in batches and commits the offsets it stored.
//!
//! [`DefaultRuleChain`] is ThingsBoard's root rule chain reduced to what storage needs: a
//! message-type switch, then "save time series" (time series and latest values) for
//! telemetry and "save attributes" for attributes. Configurable chains plug in here.

use std::sync::Arc;

use metrics::counter;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::mailbox::{Bound, Ticket};
use crate::metrics::RULE_CHAIN_MESSAGES;
use crate::model::{MessageBody, SharedMessage};
use crate::ports::Delivered;

/// What a rule chain decided for one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Saved as time series and latest values.
    SaveTimeseries,
    /// Saved as attributes of its scope.
    SaveAttributes,
    /// Not stored; the label says which node dropped it.
    Dropped(&'static str),
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::SaveTimeseries => "save_timeseries",
            Outcome::SaveAttributes => "save_attributes",
            Outcome::Dropped(_) => "dropped",
        }
    }
}

pub trait RuleChain: Send + 'static {
    fn process(&mut self, message: &SharedMessage) -> Outcome;
}

/// Routes by message type: telemetry to "save time series", attributes to "save attributes".
#[derive(Default)]
pub struct DefaultRuleChain;

impl RuleChain for DefaultRuleChain {
    fn process(&mut self, message: &SharedMessage) -> Outcome {
        match &message.body {
            MessageBody::Telemetry(records) if records.iter().all(|r| r.entries.is_empty()) => {
                Outcome::Dropped("empty_telemetry")
            }
            MessageBody::Telemetry(_) => Outcome::SaveTimeseries,
            MessageBody::Attributes { entries, .. } if entries.is_empty() => {
                Outcome::Dropped("empty_attributes")
            }
            MessageBody::Attributes { .. } => Outcome::SaveAttributes,
        }
    }
}

pub struct RuleChainActor;

pub struct RuleChainArgs {
    pub partition: u32,
    pub chain: Box<dyn RuleChain>,
    /// To the sink: what the chain saves, in partition order.
    pub sink: mpsc::Sender<Delivered>,
}

pub struct RuleChainState {
    chain: Box<dyn RuleChain>,
    sink: mpsc::Sender<Delivered>,
}

pub enum RuleChainMsg {
    Deliver {
        delivered: Delivered,
        ticket: Ticket,
    },
}

impl Actor for RuleChainActor {
    type Msg = RuleChainMsg;
    type State = RuleChainState;
    type Arguments = RuleChainArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RuleChainArgs,
    ) -> Result<RuleChainState, ActorProcessingErr> {
        tracing::debug!(partition = args.partition, "rule chain started");
        Ok(RuleChainState {
            chain: args.chain,
            sink: args.sink,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut RuleChainState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RuleChainMsg::Deliver { delivered, ticket } => {
                let outcome = state.chain.process(&delivered.message);
                counter!(RULE_CHAIN_MESSAGES, "outcome" => outcome.as_str()).increment(1);
                if !matches!(outcome, Outcome::Dropped(_)) {
                    // Waits while the sink is behind; the ticket is held meanwhile, so the
                    // partition's consumer waits too.
                    state
                        .sink
                        .send(delivered)
                        .await
                        .map_err(|_| "the sink is gone")?;
                }
                drop(ticket);
            }
        }
        Ok(())
    }
}

/// The rule chain actor stopped; it takes no more messages.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleChainGone;

/// The consumer's handle on one partition's rule chain.
pub struct RuleChainHandle {
    actor: ActorRef<RuleChainMsg>,
    bound: Bound,
}

impl RuleChainHandle {
    pub async fn spawn(
        args: RuleChainArgs,
        mailbox_capacity: usize,
    ) -> Result<RuleChainHandle, ractor::SpawnErr> {
        let (actor, _join) = Actor::spawn(None, RuleChainActor, args).await?;
        Ok(RuleChainHandle {
            actor,
            bound: Bound::new("rule_chain", mailbox_capacity),
        })
    }

    /// Hands one message over; waits while the mailbox is full. `Err` when the actor is gone
    /// (the message was not taken; the partition is read again after a restart).
    pub async fn deliver(&self, delivered: Delivered) -> Result<(), RuleChainGone> {
        let ticket = self.bound.ticket().await.ok_or(RuleChainGone)?;
        self.actor
            .send_message(RuleChainMsg::Deliver { delivered, ticket })
            .map_err(|_| RuleChainGone)
    }

    /// Works through the mailbox, then stops (the partition was revoked or the node stops).
    pub fn stop(self) {
        let _ = self.actor.drain();
    }
}

/// Shares one chain type among partitions: each partition gets its own instance.
pub type MakeRuleChain = Arc<dyn Fn(u32) -> Box<dyn RuleChain> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttributeScope, DeviceId, KvEntry, KvValue, Message, TenantId, TsRecord};

    fn message(body: MessageBody) -> SharedMessage {
        let tenant = TenantId::from_name("t");
        Arc::new(Message {
            tenant_id: tenant,
            device_id: DeviceId::derive(tenant, "d"),
            received_ts: 1,
            body,
        })
    }

    #[test]
    fn the_default_chain_routes_by_message_type() {
        let entry = || vec![KvEntry::new("k", KvValue::Long(1))];
        let cases = [
            (
                MessageBody::Telemetry(vec![TsRecord {
                    ts: 1,
                    entries: entry(),
                }]),
                Outcome::SaveTimeseries,
            ),
            (
                MessageBody::Attributes {
                    scope: AttributeScope::Client,
                    entries: entry(),
                },
                Outcome::SaveAttributes,
            ),
            (
                MessageBody::Telemetry(vec![TsRecord {
                    ts: 1,
                    entries: vec![],
                }]),
                Outcome::Dropped("empty_telemetry"),
            ),
            (
                MessageBody::Attributes {
                    scope: AttributeScope::Shared,
                    entries: vec![],
                },
                Outcome::Dropped("empty_attributes"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(DefaultRuleChain.process(&message(body)), want);
        }
    }

    #[tokio::test]
    async fn messages_reach_the_sink_in_partition_order_and_drops_do_not() {
        let (tx, mut rx) = mpsc::channel(4);
        let chain = RuleChainHandle::spawn(
            RuleChainArgs {
                partition: 3,
                chain: Box::new(DefaultRuleChain),
                sink: tx,
            },
            2,
        )
        .await
        .expect("spawns");
        for offset in 0..6u64 {
            let entries = if offset == 2 {
                vec![]
            } else {
                vec![KvEntry::new("k", KvValue::Long(1))]
            };
            let delivered = Delivered {
                partition: 3,
                offset,
                message: message(MessageBody::Telemetry(vec![TsRecord { ts: 1, entries }])),
            };
            // More than the channel and the mailbox hold: the reader below makes room.
            if offset == 4 {
                let first = rx.recv().await.expect("delivered");
                assert_eq!(first.offset, 0);
            }
            chain
                .deliver(delivered)
                .await
                .map_err(|_| ())
                .expect("alive");
        }
        chain.stop();
        let mut offsets = vec![0];
        while let Some(d) = rx.recv().await {
            offsets.push(d.offset);
        }
        assert_eq!(offsets, [0, 1, 3, 4, 5]);
    }
}
