//! The consumer side: one consumer-group member per node reads the ingest topic and hands each
//! record to the rule chain of its partition (started on the partition's first record, by the
//! node's rule-chain supervisor). The sink, behind the rule chains, stores offsets once
//! storage confirmed their batch; librdkafka commits stored offsets every second, at a
//! revocation, and when the node leaves the group.
//!
//! The consumer runs on a thread of its own, not on a tokio worker: librdkafka calls the
//! rebalance callback from inside `poll`, on that thread, and the callback may wait there (for
//! the revoked partitions' messages to be stored) without holding up any async task. Records
//! are handed to the rule chains from that thread through the runtime's handle.
//!
//! Rebalances are made cheap to go through again and again (a starved broker that misses
//! heartbeats makes the group rebalance every few seconds, and each one must still let the
//! partitions move on):
//! - A revocation waits (up to `REVOKE_WAIT`) until what was handed to the revoked
//!   partitions' rule chains is stored, and commits without waiting for the coordinator's
//!   answer, so the next owner starts where this node stopped.
//! - The rule chains of revoked partitions are kept until the assignment that follows: a
//!   partition that comes straight back keeps its chain, and is resumed right after the last
//!   record this node read rather than from the group's committed offset, so nothing in
//!   flight is dropped or read again and no offset fetch is needed. Only partitions assigned
//!   elsewhere have their chains stopped (they finish what they hold).
//! - When librdkafka reports the assignment lost (the member was expelled, so another member
//!   may have read the partitions meanwhile), nothing is committed and a partition that comes
//!   back starts from the committed offset; its chain still stores what it holds.
//! - The session timeout is Kafka's default of 45 s, so a broker that answers heartbeats late
//!   for a while does not expel the member.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use actors::metrics::{DEAD_LETTERS, QUEUE_LAG, QUEUE_PARTITIONS_ASSIGNED, QUEUE_REBALANCES};
use actors::model::Message;
use actors::ports::{Delivered, OffsetCommitter, QueueError};
use actors::rule_chain::{MakeRuleChain, Routed, RuleChainHandle};
use actors::rule_chain_supervisor::{RuleChainSupervisorArgs, RuleChains};
use anyhow::Context;
use async_trait::async_trait;
use metrics::{counter, gauge};
use parking_lot::{Condvar, Mutex};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::wire;
use crate::config::QueueConfig;

/// Longest a revocation waits for the revoked partitions' messages to be stored.
const REVOKE_WAIT: Duration = Duration::from_secs(10);
/// How long one `poll` waits for a record; also how soon the consumer notices a stop.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// Kafka's default since 3.0: a member is expelled after this long without a heartbeat.
const SESSION_TIMEOUT: Duration = Duration::from_secs(45);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// At most one consumer-error warning per this long (a broker outage reports an error per
/// poll).
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

type KafkaConsumer = BaseConsumer<SourceContext>;

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
}

impl Progress {
    fn caught_up(state: &ProgressState, partition: i32) -> bool {
        match state.dispatched.get(&partition) {
            None => true,
            Some(d) => state.stored.get(&partition).is_some_and(|s| s >= d),
        }
    }

    /// Waits until everything handed to `partitions`' chains is stored, or `deadline`.
    fn wait_stored(&self, partitions: &[i32], deadline: Instant) -> bool {
        let mut state = self.state.lock();
        while !partitions.iter().all(|p| Self::caught_up(&state, *p)) {
            if self
                .stored_changed
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                return false;
            }
        }
        true
    }

    fn forget(&self, partition: i32) {
        let mut state = self.state.lock();
        state.dispatched.remove(&partition);
        state.stored.remove(&partition);
    }
}

/// What the consumer thread and its rebalance callback share (both run on that thread; the
/// locks are never contended by it, only by the committer for `progress`).
pub struct SourceContext {
    topic: String,
    progress: Arc<Progress>,
    /// The running rule chain of each partition this node reads or just had revoked.
    chains: Mutex<HashMap<i32, RuleChainHandle>>,
    /// Revoked partitions whose chains are kept in case they come straight back, with the
    /// last offset handed to them (`None`: the assignment was lost, start from the committed
    /// offset).
    kept: Mutex<HashMap<i32, Option<i64>>>,
    /// Told of every revocation (false) and assignment (true), after the source's own work.
    on_rebalance: OnRebalance,
}

/// What else must know of this node's partitions changing: the downlinks (the owner's state of
/// the devices is kept per partition owner): at a revocation they forget which devices'
/// persistent RPCs they reloaded, at an assignment every node announces its sessions anew.
pub type OnRebalance = Arc<dyn Fn(bool) + Send + Sync>;

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(consumer, tpl);
                if let Err(e) = consumer.unassign() {
                    error!(error = %e, "kafka unassign failed");
                }
                (self.on_rebalance)(false);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.assign(tpl);
                if let Err(e) = consumer.assign(tpl) {
                    error!(error = %e, "kafka assign failed");
                }
                (self.on_rebalance)(true);
            }
            other => {
                error!(error = ?other, "kafka rebalance failed");
                gauge!(QUEUE_PARTITIONS_ASSIGNED).set(0.0);
                if let Err(e) = consumer.unassign() {
                    error!(error = %e, "kafka unassign failed");
                }
            }
        }
    }
}

impl SourceContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(rdkafka::topic_partition_list::TopicPartitionListElem::partition)
            .collect()
    }

    fn revoke(&self, consumer: &KafkaConsumer, tpl: &TopicPartitionList) {
        counter!(QUEUE_REBALANCES, "kind" => "revoke").increment(1);
        // The eager protocol revokes the whole assignment.
        gauge!(QUEUE_PARTITIONS_ASSIGNED).set(0.0);
        let partitions = self.partitions(tpl);
        if consumer.assignment_lost() {
            // Another member may own these now: commit nothing, and read them from the
            // committed offsets if they come back. The chains keep storing what they hold.
            warn!(?partitions, "kafka partitions lost");
            let mut kept = self.kept.lock();
            for p in partitions {
                kept.insert(p, None);
            }
            return;
        }
        info!(?partitions, "kafka partitions revoked, finishing them");
        if !self
            .progress
            .wait_stored(&partitions, Instant::now() + REVOKE_WAIT)
        {
            warn!(
                ?partitions,
                "revoked partitions not fully stored in time; their next owner reads the rest again"
            );
        }
        // Queued before this member rejoins, so the coordinator has it before the next owner
        // asks; not waited for, so a slow coordinator does not stretch the rebalance.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            debug!(error = %e, "commit before revocation");
        }
        let dispatched = self.progress.state.lock().dispatched.clone();
        let mut kept = self.kept.lock();
        for p in partitions {
            kept.insert(p, dispatched.get(&p).copied());
        }
    }

    /// Resumes the partitions that came straight back after their last record read, and
    /// stops the chains of those that went elsewhere.
    fn assign(&self, tpl: &mut TopicPartitionList) {
        counter!(QUEUE_REBALANCES, "kind" => "assign").increment(1);
        let partitions = self.partitions(tpl);
        #[allow(clippy::cast_precision_loss)]
        gauge!(QUEUE_PARTITIONS_ASSIGNED).set(partitions.len() as f64);
        let kept = std::mem::take(&mut *self.kept.lock());
        let mut chains = self.chains.lock();
        let mut resumed = Vec::new();
        for (p, last) in kept {
            if !partitions.contains(&p) {
                if let Some(chain) = chains.remove(&p) {
                    chain.stop();
                }
                self.progress.forget(p);
                continue;
            }
            match last {
                Some(last) => {
                    if let Err(e) =
                        tpl.set_partition_offset(&self.topic, p, Offset::Offset(last + 1))
                    {
                        warn!(partition = p, error = %e, "cannot resume the partition where it was");
                    } else {
                        resumed.push(p);
                    }
                }
                // Lost: from the committed offset. The old chain finishes what it holds; the
                // partition gets a new one.
                None => {
                    if let Some(chain) = chains.remove(&p) {
                        chain.stop();
                    }
                    self.progress.forget(p);
                }
            }
        }
        info!(?partitions, ?resumed, "kafka partitions assigned");
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
    stop: Arc<AtomicBool>,
    stopped: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
    consumer: Arc<KafkaConsumer>,
    chains: RuleChains,
}

impl KafkaSource {
    /// Joins the consumer group and starts reading on a thread of its own. What the rule
    /// chains route goes to `sink`.
    pub async fn start(
        config: &QueueConfig,
        instance_id: &str,
        make_chain: MakeRuleChain,
        sink: mpsc::Sender<Routed>,
        on_rebalance: OnRebalance,
    ) -> anyhow::Result<(SourceHandle, Arc<KafkaCommitter>)> {
        let progress = Arc::new(Progress::default());
        let lag = Arc::new(AtomicI64::new(0));
        let context = SourceContext {
            topic: config.topic.clone(),
            progress: progress.clone(),
            chains: Mutex::new(HashMap::new()),
            kept: Mutex::new(HashMap::new()),
            on_rebalance,
        };
        let mut c = super::client_config(config);
        c.set("group.id", &config.group_id)
            .set("group.instance.id", instance_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set(
                "session.timeout.ms",
                SESSION_TIMEOUT.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                HEARTBEAT_INTERVAL.as_millis().to_string(),
            );
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
        let (chains, _) = RuleChains::start(RuleChainSupervisorArgs {
            make_chain,
            sink,
            lane_capacity: config.partition_capacity,
        })
        .await
        .context("cannot start the rule chains")?;
        let stop = Arc::new(AtomicBool::new(false));
        let (stopped, stopped_rx) = watch::channel(false);
        let run = Run {
            consumer: consumer.clone(),
            chains: chains.clone(),
            runtime: tokio::runtime::Handle::current(),
            stop: stop.clone(),
            stopped: stopped_rx.clone(),
            errors: ErrorLog::default(),
        };
        let thread = std::thread::Builder::new()
            .name("kafka-consumer".into())
            .spawn(move || run.run())
            .context("cannot start the Kafka consumer thread")?;
        tokio::spawn(measure_lag(
            consumer.clone(),
            config.topic.clone(),
            committer.lag.clone(),
            stopped_rx,
        ));
        Ok((
            SourceHandle {
                stop,
                stopped,
                thread: Some(thread),
                consumer,
                chains,
            },
            committer,
        ))
    }
}

/// Consumer errors, logged at most once per `ERROR_LOG_INTERVAL` with how many were not.
#[derive(Default)]
struct ErrorLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl ErrorLog {
    fn warn(&mut self, error: &KafkaError) {
        if self
            .last
            .is_some_and(|at| at.elapsed() < ERROR_LOG_INTERVAL)
        {
            self.suppressed += 1;
            return;
        }
        warn!(error = %error, suppressed = self.suppressed, "kafka consumer error");
        self.last = Some(Instant::now());
        self.suppressed = 0;
    }
}

/// The consumer thread.
struct Run {
    consumer: Arc<KafkaConsumer>,
    chains: RuleChains,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    /// The same stop, for waits on the runtime.
    stopped: watch::Receiver<bool>,
    errors: ErrorLog,
}

impl Run {
    fn run(mut self) {
        let consumer = self.consumer.clone();
        while !self.stop.load(Ordering::Acquire) {
            let record = match consumer.poll(POLL_WAIT) {
                None => continue,
                Some(Ok(record)) => (
                    record.partition(),
                    record.offset(),
                    record.payload().map(wire::decode),
                ),
                Some(Err(e)) => {
                    self.errors.warn(&e);
                    std::thread::sleep(POLL_WAIT);
                    continue;
                }
            };
            self.handle(record);
        }
        for (_, chain) in consumer.context().chains.lock().drain() {
            chain.stop();
        }
        debug!("kafka consumer stopped");
    }

    fn handle(
        &mut self,
        (partition, offset, decoded): (i32, i64, Option<Result<Message, wire::WireError>>),
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
        let context = self.consumer.context();
        let partition_index = u32::try_from(partition).unwrap_or_default();
        let existing = context.chains.lock().get(&partition).cloned();
        let chain = match existing {
            Some(chain) => chain,
            None => match self.runtime.block_on(self.chains.chain(partition_index)) {
                Ok(chain) => {
                    context.chains.lock().insert(partition, chain.clone());
                    chain
                }
                Err(_) => {
                    error!(partition, "cannot start the rule chain");
                    return;
                }
            },
        };
        context
            .progress
            .state
            .lock()
            .dispatched
            .insert(partition, offset);
        let delivered = Delivered {
            partition: partition_index,
            offset: u64::try_from(offset).unwrap_or_default(),
            message,
        };
        // Waits while the chain's lane is full, here on the consumer's own thread; a stop
        // ends the wait (the record stays in Kafka).
        let mut stopped = self.stopped.clone();
        let delivered = self.runtime.block_on(async {
            tokio::select! {
                taken = chain.deliver(delivered) => taken.is_ok(),
                _ = stopped.wait_for(|s| *s) => false,
            }
        });
        if !delivered && !self.stop.load(Ordering::Acquire) {
            error!(
                partition,
                "rule chain is gone; the partition is read again after a restart"
            );
        }
    }
}

impl SourceHandle {
    /// Stops reading; the rule chains finish what they hold, and this returns once they have
    /// handed it all to the sink.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.stopped.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        let restarts = self.chains.drain().await;
        debug!(restarts, "rule chains stopped");
    }

    /// Commits what was stored and leaves the group.
    pub async fn finish(self) {
        let consumer = self.consumer;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                debug!(error = %e, "final commit");
            }
            consumer.unsubscribe();
        })
        .await;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use actors::model::{DeviceId, KvEntry, KvValue, MessageBody, TenantId, TsRecord};
    use actors::ports::Producer;
    use actors::rule_chain::DefaultRuleChain;
    use harness::servers::Tansu;
    use tokio::task::JoinHandle;

    use super::*;
    use crate::queue::kafka::{KafkaProducer, ensure_topics};

    fn config(broker: &Tansu) -> QueueConfig {
        QueueConfig {
            brokers: broker.brokers(),
            topic: "rebalance".into(),
            dead_letter_topic: "rebalance.dlq".into(),
            partitions: 4,
            partition_capacity: 100,
            group_id: "rebalance".into(),
            ..QueueConfig::default()
        }
    }

    /// A node's consumer, with a sink double that commits every record as it arrives.
    struct Node {
        source: SourceHandle,
        got: Arc<Mutex<Vec<(u32, u64)>>>,
        sink: JoinHandle<()>,
    }

    impl Node {
        async fn start(config: &QueueConfig, instance: &str) -> Node {
            let (tx, mut rx) = mpsc::channel(64);
            let make: MakeRuleChain = Arc::new(|_| Box::new(DefaultRuleChain::default()));
            let (source, committer) =
                KafkaSource::start(config, instance, make, tx, Arc::new(|_| ()))
                    .await
                    .expect("starts");
            let got = Arc::new(Mutex::new(Vec::new()));
            let seen = got.clone();
            let sink = tokio::spawn(async move {
                while let Some(routed) = rx.recv().await {
                    let at = (routed.partition(), routed.offset());
                    seen.lock().push(at);
                    committer.commit(&[at]).await.expect("commit");
                }
            });
            Node { source, got, sink }
        }

        fn got(&self) -> Vec<(u32, u64)> {
            self.got.lock().clone()
        }

        async fn stop(mut self) {
            self.source.stop().await;
            self.source.finish().await;
            let _ = self.sink.await;
        }
    }

    async fn produce(producer: &KafkaProducer, from: usize, count: usize) {
        let tenant = TenantId::from_name("t");
        for i in from..from + count {
            let message = Arc::new(Message {
                tenant_id: tenant,
                // Many devices, so both partitions get records.
                device_id: DeviceId::derive(tenant, &format!("d{i}")),
                received_ts: 0,
                body: MessageBody::Telemetry(vec![TsRecord {
                    ts: 1,
                    entries: vec![KvEntry::new("k", KvValue::Long(1))],
                }]),
            });
            let delivery = producer.send(message).await.expect("sent");
            delivery.await.expect("confirmed");
        }
    }

    /// Waits until the nodes together have read `count` distinct records.
    async fn read_all(nodes: &[&Node], count: usize) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let all: BTreeSet<(u32, u64)> = nodes.iter().flat_map(|n| n.got()).collect();
            if all.len() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} records read within 120 s",
                all.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn without_repeats(got: &[(u32, u64)]) -> bool {
        got.iter().collect::<BTreeSet<_>>().len() == got.len()
    }

    /// Nodes join the group one after the other while records arrive: every record is read,
    /// and a node that keeps a partition through a rebalance goes on right after the last
    /// record it read (no node reads a record twice). On a single-threaded runtime, so the
    /// rebalance callback cannot be waiting on a tokio worker: there is none to spare.
    /// (No node leaves: tansu keeps a departed static member's partitions, see the README.)
    #[tokio::test]
    async fn partitions_keep_flowing_through_rebalances() {
        let broker = Tansu::start().expect("tansu starts");
        let config = config(&broker);
        ensure_topics(&config).await.expect("topics");
        let producer = KafkaProducer::new(&config).expect("producer");

        let mut nodes = vec![Node::start(&config, "node-0").await];
        produce(&producer, 0, 20).await;
        let mut sent = 20;
        read_all(&nodes.iter().collect::<Vec<_>>(), sent).await;
        for n in 1..=2 {
            let joining = Node::start(&config, &format!("node-{n}")).await;
            // Until the new node reads too: the group has shared the partitions out again.
            let deadline = Instant::now() + Duration::from_secs(120);
            while joining.got().is_empty() {
                assert!(Instant::now() < deadline, "node {n} never got a partition");
                produce(&producer, sent, 1).await;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            nodes.push(joining);
            produce(&producer, sent, 20).await;
            sent += 20;
            read_all(&nodes.iter().collect::<Vec<_>>(), sent).await;
            for (i, node) in nodes.iter().enumerate() {
                assert!(without_repeats(&node.got()), "node {i} read a record twice");
            }
        }
        for node in nodes {
            node.stop().await;
        }
    }
}
