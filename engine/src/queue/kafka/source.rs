//! The consumer side: one consumer-group member per node reads the ingest topic and hands each
//! record to the rule-chain actor of its partition (spawned on the partition's first record,
//! stopped when the partition is revoked). The sink, behind the rule chains, stores offsets
//! once storage confirmed their batch; librdkafka commits stored offsets every second, before
//! a revocation completes, and when the node leaves the group.
//!
//! Revocation waits (up to `REVOKE_WAIT`) until everything handed to the revoked partitions'
//! rule chains is stored and committed, so the next owner starts where this node stopped.
//! Whatever is not stored by then is read again by the next owner: stores collapse repeated
//! rows, so a user never sees it twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use actors::metrics::{DEAD_LETTERS, QUEUE_LAG};
use actors::ports::{Delivered, OffsetCommitter, QueueError};
use actors::rule_chain::{MakeRuleChain, RuleChainArgs, RuleChainHandle};
use anyhow::Context;
use async_trait::async_trait;
use metrics::{counter, gauge};
use parking_lot::{Condvar, Mutex};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::wire;
use crate::config::QueueConfig;

/// Longest a revocation waits for the revoked partitions' messages to be stored.
const REVOKE_WAIT: Duration = Duration::from_secs(10);

type KafkaConsumer = StreamConsumer<SourceContext>;

/// Per partition: the last offset handed to its rule chain and the last one stored.
#[derive(Default)]
struct Progress {
    state: Mutex<ProgressState>,
    stored_changed: Condvar,
}

#[derive(Default)]
struct ProgressState {
    dispatched: HashMap<i32, i64>,
    stored: HashMap<i32, i64>,
    /// Revoked since the source last looked; their rule chains are to be stopped.
    revoked: Vec<i32>,
}

impl Progress {
    fn caught_up(state: &ProgressState, partition: i32) -> bool {
        match state.dispatched.get(&partition) {
            None => true,
            Some(d) => state.stored.get(&partition).is_some_and(|s| s >= d),
        }
    }
}

pub struct SourceContext {
    topic: String,
    progress: Arc<Progress>,
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = list
            .elements_for_topic(&self.topic)
            .iter()
            .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
            .collect();
        info!(?partitions, "kafka partitions revoked, finishing them");
        let deadline = Instant::now() + REVOKE_WAIT;
        let finished = tokio::task::block_in_place(|| {
            let mut state = self.progress.state.lock();
            while !partitions.iter().all(|p| Progress::caught_up(&state, *p)) {
                if self
                    .progress
                    .stored_changed
                    .wait_until(&mut state, deadline)
                    .timed_out()
                {
                    return false;
                }
            }
            for p in &partitions {
                state.dispatched.remove(p);
                state.stored.remove(p);
            }
            state.revoked.extend(&partitions);
            true
        });
        if !finished {
            warn!(
                ?partitions,
                "revoked partitions not fully stored in time; their next owner reads the rest again"
            );
        }
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            debug!(error = %e, "commit before revocation");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = list
                    .elements_for_topic(&self.topic)
                    .iter()
                    .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
                    .collect();
                info!(?partitions, "kafka partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => error!(error = %e, "kafka rebalance failed"),
        }
    }
}

/// Stores offsets the sink committed; librdkafka commits them to the group.
pub struct KafkaCommitter {
    consumer: Arc<KafkaConsumer>,
    topic: String,
    progress: Arc<Progress>,
    lag: Arc<AtomicI64>,
}

#[async_trait]
impl OffsetCommitter for KafkaCommitter {
    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
        let mut list = TopicPartitionList::new();
        for &(partition, offset) in offsets {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            let next = i64::try_from(offset).unwrap_or(i64::MAX).saturating_add(1);
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next))
                .map_err(|e| QueueError::Unavailable(e.to_string()))?;
        }
        if let Err(e) = self.consumer.store_offsets(&list) {
            // A partition revoked meanwhile: its next owner reads these again.
            debug!(error = %e, "offsets of partitions no longer assigned not stored");
        }
        let mut state = self.progress.state.lock();
        for &(partition, offset) in offsets {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            let offset = i64::try_from(offset).unwrap_or(i64::MAX);
            let stored = state.stored.entry(partition).or_insert(offset);
            *stored = (*stored).max(offset);
        }
        drop(state);
        self.progress.stored_changed.notify_all();
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        u64::try_from(self.lag.load(Ordering::Relaxed)).ok()
    }
}

pub struct KafkaSource;

/// The running source: stop it, then (once the sink drained) finish it.
pub struct SourceHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    consumer: Arc<KafkaConsumer>,
}

impl KafkaSource {
    /// Joins the consumer group and starts reading. What the rule chains save goes to `sink`.
    pub fn start(
        config: &QueueConfig,
        instance_id: &str,
        make_chain: MakeRuleChain,
        sink: mpsc::Sender<Delivered>,
    ) -> anyhow::Result<(SourceHandle, Arc<KafkaCommitter>)> {
        let progress = Arc::new(Progress::default());
        let lag = Arc::new(AtomicI64::new(0));
        let context = SourceContext {
            topic: config.topic.clone(),
            progress: progress.clone(),
        };
        let mut c = super::client_config(config);
        c.set("group.id", &config.group_id)
            .set("group.instance.id", instance_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000");
        let consumer: KafkaConsumer = super::with_user_properties(c, config)
            .create_with_context(context)
            .context("cannot create the Kafka consumer")?;
        consumer
            .subscribe(&[&config.topic])
            .with_context(|| format!("cannot subscribe to {}", config.topic))?;
        let consumer = Arc::new(consumer);
        let committer = Arc::new(KafkaCommitter {
            consumer: consumer.clone(),
            topic: config.topic.clone(),
            progress: progress.clone(),
            lag,
        });
        let (stop, stopped) = watch::channel(false);
        let run = Run {
            consumer: consumer.clone(),
            progress,
            make_chain,
            sink,
            mailbox: config.partition_capacity,
            chains: HashMap::new(),
        };
        let task = tokio::spawn(run.run(stopped.clone()));
        tokio::spawn(measure_lag(
            consumer.clone(),
            config.topic.clone(),
            committer.lag.clone(),
            stopped,
        ));
        Ok((
            SourceHandle {
                stop,
                task,
                consumer,
            },
            committer,
        ))
    }
}

struct Run {
    consumer: Arc<KafkaConsumer>,
    progress: Arc<Progress>,
    make_chain: MakeRuleChain,
    sink: mpsc::Sender<Delivered>,
    mailbox: usize,
    chains: HashMap<i32, RuleChainHandle>,
}

impl Run {
    async fn run(mut self, mut stopped: watch::Receiver<bool>) {
        let consumer = self.consumer.clone();
        loop {
            let record = tokio::select! {
                _ = stopped.changed() => break,
                record = consumer.recv() => record,
            };
            let record = match record {
                Ok(record) => (
                    record.partition(),
                    record.offset(),
                    record.payload().map(wire::decode),
                ),
                Err(e) => {
                    warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            self.stop_revoked();
            self.handle(record).await;
        }
        for (_, chain) in self.chains.drain() {
            chain.stop();
        }
        debug!("kafka source stopped");
    }

    fn stop_revoked(&mut self) {
        let revoked = std::mem::take(&mut self.progress.state.lock().revoked);
        for p in revoked {
            if let Some(chain) = self.chains.remove(&p) {
                chain.stop();
            }
        }
    }

    async fn handle(
        &mut self,
        (partition, offset, decoded): (
            i32,
            i64,
            Option<Result<actors::model::Message, wire::WireError>>,
        ),
    ) {
        let message = match decoded {
            Some(Ok(message)) => Arc::new(message),
            Some(Err(e)) => {
                counter!(DEAD_LETTERS, "reason" => "undecodable").increment(1);
                warn!(partition, offset, error = %e, "undecodable record skipped");
                return;
            }
            None => {
                warn!(partition, offset, "empty record skipped");
                return;
            }
        };
        let chain = match self.chains.get(&partition) {
            Some(chain) => chain,
            None => {
                let p = u32::try_from(partition).unwrap_or_default();
                let args = RuleChainArgs {
                    partition: p,
                    chain: (self.make_chain)(p),
                    sink: self.sink.clone(),
                };
                match RuleChainHandle::spawn(args, self.mailbox).await {
                    Ok(chain) => self.chains.entry(partition).or_insert(chain),
                    Err(e) => {
                        error!(partition, error = %e, "cannot start the rule chain");
                        return;
                    }
                }
            }
        };
        self.progress
            .state
            .lock()
            .dispatched
            .insert(partition, offset);
        let delivered = Delivered {
            partition: u32::try_from(partition).unwrap_or_default(),
            offset: u64::try_from(offset).unwrap_or_default(),
            message,
        };
        if chain.deliver(delivered).await.is_err() {
            error!(
                partition,
                "rule chain is gone; the partition is read again after a restart"
            );
        }
    }
}

impl SourceHandle {
    /// Stops reading; the rule chains finish what they hold.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }

    /// Commits what was stored and leaves the group.
    pub fn finish(self) {
        let consumer = self.consumer;
        tokio::task::block_in_place(|| {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                debug!(error = %e, "final commit");
            }
            consumer.unsubscribe();
        });
    }
}

/// How often the lag is measured.
const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Every `LAG_INTERVAL`, the messages of this node's partitions not yet stored: each
/// partition's high watermark (asked of the broker) less its committed offset.
async fn measure_lag(
    consumer: Arc<KafkaConsumer>,
    topic: String,
    lag: Arc<AtomicI64>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            () = tokio::time::sleep(LAG_INTERVAL) => {}
        }
        let (consumer, topic) = (consumer.clone(), topic.clone());
        let measured = tokio::task::spawn_blocking(move || -> Option<i64> {
            let timeout = Duration::from_secs(5);
            let committed = consumer.committed(timeout).ok()?;
            let mut total = 0;
            for element in committed.elements_for_topic(&topic) {
                let (_, high) = consumer
                    .fetch_watermarks(&topic, element.partition(), timeout)
                    .ok()?;
                let done = match element.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                };
                total += (high - done).max(0);
            }
            Some(total)
        })
        .await;
        if let Ok(Some(total)) = measured {
            lag.store(total, Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)]
            gauge!(QUEUE_LAG).set(total as f64);
        }
    }
}
