//! The sink: moves messages from the queue into storage, in batches.
//!
//! Receives `Tick` from itself (one poll-write-commit round each) and `Drain` from the engine at
//! shutdown. Reads the queue through a [`Consumer`], writes through a [`Store`]. Offsets are
//! committed only after the store confirmed the batch that held them, so a crash replays
//! instead of losing; a store that is down stops the polling (the queue fills and pushes back on
//! the senders) and the sink catches up by itself when it returns.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics::{counter, gauge, histogram};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{debug, error, warn};

use crate::batch::WriteBatch;
use crate::metrics::DEAD_LETTERS;
use crate::metrics::{
    DATA_POINTS_STORED, QUEUE_LAG, SINK_BATCH_MESSAGES, SINK_WRITE_LATENCY, STORAGE_ERRORS,
};
use crate::ports::{Consumer, DeadLetters, Delivered, Store, StoreError, backoff};

pub struct Sink;

#[derive(Clone, Debug)]
pub struct SinkConfig {
    /// Most messages per storage write.
    pub batch_size: usize,
    /// Longest a message waits for its batch to fill before it is written anyway.
    pub batch_interval: Duration,
    /// First retry delay after a failed write or commit; doubles up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
}

impl Default for SinkConfig {
    fn default() -> Self {
        SinkConfig {
            batch_size: 10_000,
            batch_interval: Duration::from_millis(100),
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

pub struct SinkArgs {
    pub consumer: Box<dyn Consumer>,
    pub store: Arc<dyn Store>,
    pub config: SinkConfig,
    /// Where messages the store refuses for good go. Without one, such a batch is retried
    /// until an operator fixes the cause (the embedded store never refuses valid data).
    pub dead_letters: Option<Arc<dyn DeadLetters>>,
    /// Told of every message of a batch once the batch is stored.
    pub after_store: Option<Arc<dyn AfterStore>>,
}

/// What happens once data is stored: the way back pushes shared attribute changes from here,
/// so a device that reads its attributes right after an update sees it (ThingsBoard notifies
/// after its save too).
pub trait AfterStore: Send + Sync {
    fn stored(&self, message: &crate::model::SharedMessage);

    /// A whole batch, stored (what the sink calls).
    fn stored_batch(&self, messages: &[crate::model::SharedMessage]) {
        for m in messages {
            self.stored(m);
        }
    }
}

/// Several listeners, told in order.
pub struct AfterStoreAll(pub Vec<Arc<dyn AfterStore>>);

impl AfterStore for AfterStoreAll {
    fn stored(&self, message: &crate::model::SharedMessage) {
        for after in &self.0 {
            after.stored(message);
        }
    }

    fn stored_batch(&self, messages: &[crate::model::SharedMessage]) {
        for after in &self.0 {
            after.stored_batch(messages);
        }
    }
}

pub struct SinkState {
    consumer: Box<dyn Consumer>,
    store: Arc<dyn Store>,
    config: SinkConfig,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    after_store: Option<Arc<dyn AfterStore>>,
    draining: Option<RpcReplyPort<SinkStats>>,
    stats: SinkStats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub batches: u64,
    pub messages: u64,
    pub data_points: u64,
    pub failed_writes: u64,
}

pub enum SinkMsg {
    Tick,
    /// Write everything the queue holds, then reply and stop. Sent once the transports stopped.
    Drain(RpcReplyPort<SinkStats>),
}

impl Actor for Sink {
    type Msg = SinkMsg;
    type State = SinkState;
    type Arguments = SinkArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SinkArgs,
    ) -> Result<SinkState, ActorProcessingErr> {
        myself.send_message(SinkMsg::Tick)?;
        Ok(SinkState {
            consumer: args.consumer,
            store: args.store,
            config: args.config,
            dead_letters: args.dead_letters,
            after_store: args.after_store,
            draining: None,
            stats: SinkStats::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut SinkState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SinkMsg::Drain(reply) => state.draining = Some(reply),
            SinkMsg::Tick => {
                let wrote = state.round().await;
                if !wrote && let Some(reply) = state.draining.take() {
                    let _ = reply.send(state.stats);
                    myself.stop(Some("drained".into()));
                    return Ok(());
                }
                myself.send_message(SinkMsg::Tick)?;
            }
        }
        Ok(())
    }
}

impl SinkState {
    /// One poll-write-commit round; returns whether it found anything to write.
    async fn round(&mut self) -> bool {
        let wait = if self.draining.is_some() {
            Duration::from_millis(20)
        } else {
            self.config.batch_interval
        };
        let polled = self.consumer.poll(self.config.batch_size, wait).await;
        if let Some(lag) = self.consumer.lag() {
            #[allow(clippy::cast_precision_loss)]
            gauge!(QUEUE_LAG).set(lag as f64);
        }
        let delivered = match polled {
            Ok(delivered) => delivered,
            Err(e) => {
                warn!(error = %e, "queue poll failed");
                tokio::time::sleep(self.config.retry_base).await;
                return true;
            }
        };
        if delivered.is_empty() {
            return false;
        }
        let batch = Arc::new(WriteBatch::from_messages(
            delivered.iter().map(|d| &*d.message),
        ));
        let mut dead = Vec::new();
        if let Err(refused) = self.write(batch.clone()).await {
            dead = self.isolate(&delivered, &refused).await;
        }
        if let Some(after) = &self.after_store {
            // A dead-lettered message was not stored: nothing to tell.
            let stored: Vec<crate::model::SharedMessage> = delivered
                .iter()
                .enumerate()
                .filter(|(i, _)| !dead.contains(i))
                .map(|(_, d)| d.message.clone())
                .collect();
            after.stored_batch(&stored);
        }
        self.commit(&delivered).await;
        self.stats.batches += 1;
        self.stats.messages += delivered.len() as u64;
        self.stats.data_points += batch.data_points() as u64;
        #[allow(clippy::cast_precision_loss)]
        histogram!(SINK_BATCH_MESSAGES).record(delivered.len() as f64);
        counter!(DATA_POINTS_STORED).increment(batch.data_points() as u64);
        true
    }

    /// Writes until the store confirms. Nothing was acknowledged to anyone on the strength of
    /// this write except the queue's hold on the messages, so giving up would lose data. `Err`
    /// only for a permanent refusal when there is a dead-letter queue to take it.
    async fn write(&mut self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match self.store.write(batch.clone()).await {
                Ok(()) => {
                    histogram!(SINK_WRITE_LATENCY).record(started.elapsed());
                    debug!(points = batch.data_points(), "batch stored");
                    return Ok(());
                }
                Err(e) => {
                    self.stats.failed_writes += 1;
                    let kind = if e.is_retryable() {
                        "retryable"
                    } else {
                        "permanent"
                    };
                    counter!(STORAGE_ERRORS, "kind" => kind).increment(1);
                    if !e.is_retryable() && self.dead_letters.is_some() {
                        return Err(e);
                    }
                    let delay = backoff(attempt, self.config.retry_base, self.config.retry_max);
                    if e.is_retryable() {
                        warn!(error = %e, attempt, retry_in = ?delay, "storage write failed");
                    } else {
                        error!(error = %e, attempt, retry_in = ?delay, "storage refused a batch");
                    }
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// A batch was refused for good: writes its messages one by one and sends those refused
    /// on their own to the dead-letter queue, with the reason, so the rest is stored and the
    /// partition moves on.
    /// Returns the indices of the messages dead-lettered.
    async fn isolate(&mut self, delivered: &[Delivered], refused: &StoreError) -> Vec<usize> {
        warn!(error = %refused, messages = delivered.len(), "storage refused a batch; isolating the bad messages");
        let mut dead = Vec::new();
        let Some(dead_letters) = self.dead_letters.clone() else {
            return dead;
        };
        for (i, d) in delivered.iter().enumerate() {
            let single = Arc::new(WriteBatch::from_messages([&*d.message]));
            let Err(e) = self.write(single).await else {
                continue;
            };
            dead.push(i);
            let reason = e.to_string();
            let mut attempt = 0;
            while let Err(q) = dead_letters.dead_letter(&d.message, &reason).await {
                let delay = backoff(attempt, self.config.retry_base, self.config.retry_max);
                warn!(error = %q, "dead-letter queue unavailable");
                tokio::time::sleep(delay).await;
                attempt = attempt.saturating_add(1);
            }
            counter!(DEAD_LETTERS, "reason" => "storage_refused").increment(1);
            error!(
                partition = d.partition,
                offset = d.offset,
                reason,
                "message dead-lettered"
            );
        }
        dead
    }

    async fn commit(&mut self, delivered: &[Delivered]) {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for d in delivered {
            let offset = last.entry(d.partition).or_insert(d.offset);
            *offset = (*offset).max(d.offset);
        }
        let offsets: Vec<(u32, u64)> = last.into_iter().collect();
        let mut attempt = 0;
        while let Err(e) = self.consumer.commit(&offsets).await {
            let delay = backoff(attempt, self.config.retry_base, self.config.retry_max);
            warn!(error = %e, attempt, "offset commit failed");
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceId;
    use crate::model::{KvEntry, KvValue, Message, MessageBody, TenantId, TsRecord};
    use crate::testing::{MemStore, VecQueue};

    fn message(device: &str, ts: i64) -> Message {
        keyed(device, ts, "v")
    }

    fn keyed(device: &str, ts: i64, key: &str) -> Message {
        let tenant = TenantId::from_name("t");
        Message {
            tenant_id: tenant,
            device_id: DeviceId::derive(tenant, device),
            received_ts: ts,
            body: MessageBody::Telemetry(vec![TsRecord {
                ts,
                entries: vec![KvEntry::new(key, KvValue::Long(ts))],
            }]),
        }
    }

    fn config() -> SinkConfig {
        SinkConfig {
            batch_size: 3,
            batch_interval: Duration::from_millis(20),
            retry_base: Duration::from_millis(5),
            retry_max: Duration::from_millis(20),
        }
    }

    #[tokio::test]
    async fn writes_in_batches_and_commits_after_the_write() {
        let queue = VecQueue::default();
        for ts in 0..7 {
            queue.push(message("d", ts));
        }
        let store = Arc::new(MemStore::default());
        let args = SinkArgs {
            consumer: Box::new(queue.clone()),
            store: store.clone(),
            config: config(),
            dead_letters: None,
            after_store: None,
        };
        let (sink, handle) = Actor::spawn(None, Sink, args).await.expect("sink starts");
        let stats = ractor::call!(sink, SinkMsg::Drain).expect("drained");
        handle.await.expect("sink stops");
        assert_eq!(stats.messages, 7);
        assert_eq!(stats.data_points, 7);
        assert_eq!(stats.batches, 3, "7 messages in batches of at most 3");
        assert_eq!(store.points(), 7);
        assert_eq!(queue.committed(), Some(6));
    }

    /// Counts the messages it is told were stored.
    #[derive(Default)]
    struct Told(std::sync::atomic::AtomicUsize);

    impl AfterStore for Told {
        fn stored(&self, _: &crate::model::SharedMessage) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_store_that_is_down_holds_the_offsets_and_is_caught_up_after() {
        let queue = VecQueue::default();
        queue.push(message("d", 1));
        queue.push(message("d", 2));
        let store = Arc::new(MemStore::default());
        store.set_down(true);
        // A store that is down is waited for, never a reason to dead-letter.
        let dead = Arc::new(crate::testing::MemDeadLetters::default());
        let told = Arc::new(Told::default());
        let args = SinkArgs {
            consumer: Box::new(queue.clone()),
            store: store.clone(),
            config: config(),
            dead_letters: Some(dead.clone()),
            after_store: Some(told.clone()),
        };
        let (sink, handle) = Actor::spawn(None, Sink, args).await.expect("sink starts");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(store.points(), 0);
        assert_eq!(
            told.0.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "nothing is told stored before it is"
        );
        assert_eq!(
            queue.committed(),
            None,
            "nothing is committed while the store is down"
        );
        store.set_down(false);
        let stats = ractor::call!(sink, SinkMsg::Drain).expect("drained");
        handle.await.expect("sink stops");
        assert!(stats.failed_writes >= 2, "{stats:?}");
        assert_eq!(store.points(), 2);
        assert_eq!(
            told.0.load(std::sync::atomic::Ordering::Relaxed),
            2,
            "told once stored"
        );
        assert!(dead.letters().is_empty(), "nothing dead-lettered");
        assert_eq!(queue.committed(), Some(1));
    }

    #[tokio::test]
    async fn a_message_refused_for_good_is_dead_lettered_and_the_rest_stored() {
        let queue = VecQueue::default();
        queue.push(message("d", 1));
        queue.push(keyed("d", 2, "poison"));
        queue.push(message("d", 3));
        let store = Arc::new(MemStore::default());
        store.refuse_key("poison");
        let dead = Arc::new(crate::testing::MemDeadLetters::default());
        let args = SinkArgs {
            consumer: Box::new(queue.clone()),
            store: store.clone(),
            config: config(),
            dead_letters: Some(dead.clone()),
            after_store: None,
        };
        let (sink, handle) = Actor::spawn(None, Sink, args).await.expect("sink starts");
        ractor::call!(sink, SinkMsg::Drain).expect("drained");
        handle.await.expect("sink stops");
        assert_eq!(store.points(), 2, "the good messages are stored");
        let letters = dead.letters();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].0.received_ts, 2);
        assert!(letters[0].1.contains("poison"), "{}", letters[0].1);
        assert_eq!(queue.committed(), Some(2), "the partition moved on");
    }
}
