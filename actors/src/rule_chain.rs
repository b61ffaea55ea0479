//! Rule chains: what happens to a message between the queue and storage.
//!
//! One [`RuleChainActor`] runs per queue partition a node owns (started when the partition's
//! first record arrives, stopped when it is revoked), so a partition's messages are handled in
//! order and partitions in parallel. The partition's consumer puts each message, with a
//! [`Ticket`] (the hand-off is bounded), into the partition's [`Lane`] and nudges the actor
//! (`Work`); the actor runs the messages through its [`RuleChain`] in order and hands them to
//! the sink through a bounded channel, waiting when the sink is behind: what the chain saves
//! as [`Routed::Save`], what it drops as [`Routed::Skip`] (only the offset, so the sink commits
//! past it). The sink writes in batches and commits the offsets it stored.
//!
//! A message leaves the lane only once the sink's channel has it. A chain that fails (a panic
//! in a rule) is restarted by the [`crate::rule_chain_supervisor::RuleChainSupervisor`] over
//! the same lane, so it starts again at the message it failed on: nothing read from the queue
//! is dropped. A message the chain fails on `MAX_ATTEMPTS` times is skipped (counted as
//! `failed`), so one poisonous message cannot stop its partition.
//!
//! [`DefaultRuleChain`] is ThingsBoard's root rule chain reduced to what storage needs: a
//! message-type switch, then "save time series" (time series and latest values) for
//! telemetry and "save attributes" for attributes. Configurable chains plug in here.

use std::collections::VecDeque;
use std::sync::Arc;

use metrics::{Counter, counter};
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;
use tracing::error;

use crate::downlink::router::Downlinks;
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
    /// Not stored: the chain failed on it `MAX_ATTEMPTS` times.
    Failed,
    /// A device event, handed to the device's owner (`downlink`); not stored.
    DeviceState,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::SaveTimeseries => "save_timeseries",
            Outcome::SaveAttributes => "save_attributes",
            Outcome::Dropped(_) => "dropped",
            Outcome::Failed => "failed",
            Outcome::DeviceState => "device_state",
        }
    }
}

pub trait RuleChain: Send + 'static {
    fn process(&mut self, message: &SharedMessage) -> Outcome;
}

/// Routes by message type: telemetry to "save time series", attributes to "save attributes",
/// device events to the device's state this node owns. Shared attribute updates reach the
/// device's subscribed sessions once stored (the sink's `AfterStore`), as ThingsBoard notifies
/// the device actor after its save.
#[derive(Default)]
pub struct DefaultRuleChain {
    downlinks: Option<Arc<Downlinks>>,
}

impl DefaultRuleChain {
    /// A chain that keeps its devices' state in `downlinks`.
    pub fn with_downlinks(downlinks: Arc<Downlinks>) -> DefaultRuleChain {
        DefaultRuleChain {
            downlinks: Some(downlinks),
        }
    }
}

impl RuleChain for DefaultRuleChain {
    fn process(&mut self, message: &SharedMessage) -> Outcome {
        match &message.body {
            MessageBody::Device(event) => {
                if let Some(downlinks) = &self.downlinks {
                    downlinks.owner_event(message.device_id, event.clone());
                }
                Outcome::DeviceState
            }
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

/// What a rule chain hands the sink, in partition order.
#[derive(Clone, Debug)]
pub enum Routed {
    /// To be stored.
    Save(Delivered),
    /// Not stored (a rule dropped it, or the chain failed on it every time): only its offset
    /// is committed, once everything before it is stored.
    Skip { partition: u32, offset: u64 },
}

impl Routed {
    pub fn partition(&self) -> u32 {
        match self {
            Routed::Save(d) => d.partition,
            Routed::Skip { partition, .. } => *partition,
        }
    }

    pub fn offset(&self) -> u64 {
        match self {
            Routed::Save(d) => d.offset,
            Routed::Skip { offset, .. } => *offset,
        }
    }
}

/// Times the chain may fail on one message before the message is skipped.
pub const MAX_ATTEMPTS: u32 = 3;

/// One partition's messages between its consumer and its rule chain. It outlives the chain's
/// actor: a restarted chain finds the message it failed on at the front.
#[derive(Default)]
pub struct Lane {
    state: Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    /// The running actor; `None` while it is being restarted.
    actor: Option<ActorRef<RuleChainMsg>>,
    /// Handed over and not yet passed to the sink, each with its ticket.
    queue: VecDeque<(Delivered, Ticket)>,
    /// Failures of the chain on the message at the front.
    failures: u32,
    /// The partition was revoked or the node stops: finish the queue, take nothing more.
    closed: bool,
}

impl Lane {
    pub(crate) fn set_actor(&self, actor: Option<ActorRef<RuleChainMsg>>) {
        self.state.lock().actor = actor;
    }

    /// Counts a failure of the chain on the front message.
    pub(crate) fn failed(&self) {
        self.state.lock().failures += 1;
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.state.lock().closed
    }

    /// Closes the lane; the running actor finishes the queue, then stops.
    pub(crate) fn close(&self) {
        let actor = {
            let mut state = self.state.lock();
            state.closed = true;
            state.actor.clone()
        };
        if let Some(actor) = actor {
            let _ = actor.drain();
        }
    }

    fn front(&self) -> Option<(Delivered, u32)> {
        let state = self.state.lock();
        state
            .queue
            .front()
            .map(|(d, _)| (d.clone(), state.failures))
    }

    fn pop(&self) {
        let mut state = self.state.lock();
        state.queue.pop_front();
        state.failures = 0;
    }
}

pub struct RuleChainActor;

pub struct RuleChainArgs {
    pub partition: u32,
    pub chain: Box<dyn RuleChain>,
    /// To the sink, in partition order.
    pub sink: mpsc::Sender<Routed>,
    pub lane: Arc<Lane>,
}

pub struct RuleChainState {
    chain: Box<dyn RuleChain>,
    sink: mpsc::Sender<Routed>,
    lane: Arc<Lane>,
    /// `engine_rule_chain_messages_total` per outcome, resolved once, not per message.
    counted: OutcomeCounters,
}

struct OutcomeCounters([Counter; 5]);

impl OutcomeCounters {
    const OUTCOMES: [Outcome; 5] = [
        Outcome::SaveTimeseries,
        Outcome::SaveAttributes,
        Outcome::Dropped(""),
        Outcome::Failed,
        Outcome::DeviceState,
    ];

    fn new() -> OutcomeCounters {
        OutcomeCounters(
            Self::OUTCOMES.map(|o| counter!(RULE_CHAIN_MESSAGES, "outcome" => o.as_str())),
        )
    }

    fn count(&self, outcome: Outcome) {
        let i = match outcome {
            Outcome::SaveTimeseries => 0,
            Outcome::SaveAttributes => 1,
            Outcome::Dropped(_) => 2,
            Outcome::Failed => 3,
            Outcome::DeviceState => 4,
        };
        self.0[i].increment(1);
    }
}

pub enum RuleChainMsg {
    /// The lane has messages.
    Work,
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
            lane: args.lane,
            counted: OutcomeCounters::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut RuleChainState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            RuleChainMsg::Work => {
                // Everything in the lane, in order; nudges that find it empty do nothing.
                while let Some((delivered, failures)) = state.lane.front() {
                    let routed = state.route(delivered, failures);
                    // Waits while the sink is behind; the message stays in the lane (its
                    // ticket held) meanwhile, so the partition's consumer waits too.
                    state
                        .sink
                        .send(routed)
                        .await
                        .map_err(|_| "the sink is gone")?;
                    state.lane.pop();
                }
            }
        }
        Ok(())
    }
}

impl RuleChainState {
    /// Runs one message through the chain (a panic here fails the actor, and its supervisor
    /// restarts it on the same message), or skips it when the chain failed on it too often.
    fn route(&mut self, delivered: Delivered, failures: u32) -> Routed {
        let outcome = if failures >= MAX_ATTEMPTS {
            error!(
                partition = delivered.partition,
                offset = delivered.offset,
                failures,
                "the rule chain failed on this message every time; skipped"
            );
            Outcome::Failed
        } else {
            self.chain.process(&delivered.message)
        };
        self.counted.count(outcome);
        match outcome {
            Outcome::SaveTimeseries | Outcome::SaveAttributes => Routed::Save(delivered),
            Outcome::Dropped(_) | Outcome::Failed | Outcome::DeviceState => Routed::Skip {
                partition: delivered.partition,
                offset: delivered.offset,
            },
        }
    }
}

/// The rule chain of the partition stopped; it takes no more messages.
#[derive(Debug, PartialEq, Eq)]
pub struct RuleChainGone;

/// The consumer's handle on one partition's rule chain, whichever instance of it runs.
#[derive(Clone)]
pub struct RuleChainHandle {
    lane: Arc<Lane>,
    bound: Bound,
}

impl RuleChainHandle {
    pub(crate) fn new(lane: Arc<Lane>, mailbox_capacity: usize) -> RuleChainHandle {
        RuleChainHandle {
            lane,
            bound: Bound::new("rule_chain", mailbox_capacity),
        }
    }

    /// Hands one message over; waits while the lane is full. `Err` when the partition's
    /// chain was stopped (the message was not taken).
    pub async fn deliver(&self, delivered: Delivered) -> Result<(), RuleChainGone> {
        let ticket = self.bound.ticket().await.ok_or(RuleChainGone)?;
        self.push([(delivered, ticket)])
    }

    /// Hands over several messages of the partition, in order: those that find room at once
    /// are pushed together (one lock, one nudge), the rest wait for room as [`Self::deliver`]
    /// does.
    pub async fn deliver_all(
        &self,
        messages: impl IntoIterator<Item = Delivered>,
    ) -> Result<(), RuleChainGone> {
        let mut ready = Vec::new();
        for delivered in messages {
            match self.bound.try_ticket() {
                Some(ticket) => ready.push((delivered, ticket)),
                None => {
                    self.push(ready.drain(..))?;
                    let ticket = self.bound.ticket().await.ok_or(RuleChainGone)?;
                    ready.push((delivered, ticket));
                }
            }
        }
        self.push(ready)
    }

    fn push(
        &self,
        messages: impl IntoIterator<Item = (Delivered, Ticket)>,
    ) -> Result<(), RuleChainGone> {
        let actor = {
            let mut state = self.lane.state.lock();
            if state.closed {
                return Err(RuleChainGone);
            }
            let was_empty = state.queue.is_empty();
            state.queue.extend(messages);
            // The actor works until it finds the lane empty, so only messages that find the
            // lane empty need to wake it (one nudge per burst, not one per message).
            if !was_empty || state.queue.is_empty() {
                return Ok(());
            }
            state.actor.clone()
        };
        // Without an actor (being restarted), the restarted one is nudged by its supervisor.
        if let Some(actor) = actor {
            let _ = actor.send_message(RuleChainMsg::Work);
        }
        Ok(())
    }

    /// Works through what the lane holds, then stops (the partition was revoked or the node
    /// stops). Every clone of the handle is stopped with it.
    pub fn stop(self) {
        self.lane.close();
    }
}

/// Shares one chain type among partitions: each partition gets its own instance (and a new
/// one when its chain is restarted).
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
            assert_eq!(DefaultRuleChain::default().process(&message(body)), want);
        }
    }

    #[tokio::test]
    async fn messages_reach_the_sink_in_partition_order_and_drops_only_as_offsets() {
        use crate::rule_chain_supervisor::{RuleChainSupervisorArgs, RuleChains};

        let (tx, mut rx) = mpsc::channel(4);
        let (chains, _) = RuleChains::start(RuleChainSupervisorArgs {
            make_chain: Arc::new(|_| Box::new(DefaultRuleChain::default())),
            sink: tx,
            lane_capacity: 2,
        })
        .await
        .expect("starts");
        let chain = chains.chain(3).await.expect("started");
        let mut got = Vec::new();
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
            // More than the channel and the lane hold: the reader below makes room.
            if offset == 4 {
                let first = rx.recv().await.expect("delivered");
                got.push(first);
            }
            chain.deliver(delivered).await.expect("alive");
        }
        // The chains finish what they hold while the sink (this test) reads.
        let drained = tokio::spawn(async move { chains.drain().await });
        while let Some(routed) = rx.recv().await {
            got.push(routed);
        }
        drained.await.expect("drained");
        let seen: Vec<(bool, u32, u64)> = got
            .iter()
            .map(|r| (matches!(r, Routed::Save(_)), r.partition(), r.offset()))
            .collect();
        assert_eq!(
            seen,
            [
                (true, 3, 0),
                (true, 3, 1),
                (false, 3, 2),
                (true, 3, 3),
                (true, 3, 4),
                (true, 3, 5)
            ]
        );
        let late = Delivered {
            partition: 3,
            offset: 6,
            message: message(MessageBody::Telemetry(vec![])),
        };
        assert_eq!(chain.deliver(late).await, Err(RuleChainGone), "stopped");
    }
}
