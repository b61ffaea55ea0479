//! The in-memory queue: partitions keyed by device id, bounded, with consumer offsets.
//!
//! A message stays in its partition until a sink commits an offset at or past it, so the bound
//! counts everything not yet stored: when storage stalls the partitions fill and senders wait
//! (`send` blocks on the partition's free places, fairly, in arrival order). Nothing is ever
//! dropped. The queue lives in the process, so a crash loses what was not stored yet; a
//! graceful shutdown drains it.
//!
//! The engine reads it as it reads Kafka ([`MemorySource`]): each partition's messages go to
//! that partition's rule chain, the chains hand what they route to the sink, and the sink
//! commits through [`MemoryCommitter`] once storage has a batch. Tests and benches may also
//! read it directly with a [`MemoryConsumer`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::metrics::{QUEUE_DEPTH, QUEUE_PRODUCE_BLOCKED};
use actors::model::{DeviceId, SharedMessage};
use actors::ports::{Consumer, Delivered, Delivery, OffsetCommitter, Producer, QueueError};
use actors::rule_chain::{MakeRuleChain, Routed, RuleChainHandle};
use actors::rule_chain_supervisor::{RuleChainSupervisorArgs, RuleChains};
use anyhow::Context;
use async_trait::async_trait;
use metrics::{Gauge, Histogram, gauge, histogram};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, TryAcquireError, mpsc, watch};
use tracing::{debug, error};

#[derive(Clone)]
pub struct MemoryQueue {
    shared: Arc<Shared>,
}

struct Shared {
    partitions: Vec<Partition>,
    /// Metric handles resolved once, not per message.
    depth: Gauge,
    blocked: Histogram,
    /// Wakes the consumer of a partition set; one per consumer.
    wakers: Vec<Arc<Notify>>,
}

struct Partition {
    log: Mutex<Log>,
    /// One permit per free place.
    room: Semaphore,
    waker: Arc<Notify>,
}

#[derive(Default)]
struct Log {
    /// Offset of `messages[0]`; everything before it was committed.
    first: u64,
    messages: VecDeque<SharedMessage>,
}

impl Log {
    fn end(&self) -> u64 {
        self.first + self.messages.len() as u64
    }
}

impl MemoryQueue {
    /// `partitions` partitions of `capacity` messages each, shared out round-robin among
    /// `consumers` consumers.
    pub fn new(partitions: u32, capacity: usize, consumers: usize) -> MemoryQueue {
        let consumers = consumers.clamp(1, partitions as usize);
        let wakers: Vec<Arc<Notify>> = (0..consumers).map(|_| Arc::new(Notify::new())).collect();
        let partitions = (0..partitions as usize)
            .map(|p| Partition {
                log: Mutex::new(Log::default()),
                room: Semaphore::new(capacity),
                waker: wakers[p % consumers].clone(),
            })
            .collect();
        MemoryQueue {
            shared: Arc::new(Shared {
                partitions,
                wakers,
                depth: gauge!(QUEUE_DEPTH),
                blocked: histogram!(QUEUE_PRODUCE_BLOCKED),
            }),
        }
    }

    pub fn consumers(&self) -> usize {
        self.shared.wakers.len()
    }

    /// The consumer for share `index` of the partitions. It starts at the committed offsets,
    /// so a replacement for a crashed consumer re-reads what was not stored.
    pub fn consumer(&self, index: usize) -> MemoryConsumer {
        let count = self.consumers();
        let partitions: Vec<u32> = (0..self.shared.partitions.len())
            .filter(|p| p % count == index % count)
            .filter_map(|p| u32::try_from(p).ok())
            .collect();
        let positions = partitions
            .iter()
            .map(|&p| self.shared.partitions[p as usize].log.lock().first)
            .collect();
        MemoryConsumer {
            shared: self.shared.clone(),
            waker: self.shared.wakers[index % count].clone(),
            partitions,
            positions,
        }
    }

    /// Refuses further sends; senders waiting for room get `QueueError::Closed`.
    pub fn close(&self) {
        for partition in &self.shared.partitions {
            partition.room.close();
        }
    }

    /// Messages held (not yet committed) over all partitions.
    pub fn depth(&self) -> u64 {
        self.shared.depth()
    }

    fn partition_of(&self, device: DeviceId) -> usize {
        // UUIDv5 bits are uniformly spread; the low 64 suffice.
        #[allow(clippy::cast_possible_truncation)]
        let low = device.0.as_u128() as u64;
        (low % self.shared.partitions.len() as u64) as usize
    }
}

#[async_trait]
impl Producer for MemoryQueue {
    async fn send(&self, message: SharedMessage) -> Result<Delivery, QueueError> {
        let partition = &self.shared.partitions[self.partition_of(message.device_id)];
        let permit = match partition.room.try_acquire() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(QueueError::Closed),
            Err(TryAcquireError::NoPermits) => {
                let started = Instant::now();
                let permit = partition
                    .room
                    .acquire()
                    .await
                    .map_err(|_| QueueError::Closed)?;
                self.shared.blocked.record(started.elapsed());
                permit
            }
        };
        // The place is given back by `commit`, not when this permit goes out of scope.
        permit.forget();
        partition.log.lock().messages.push_back(message);
        self.shared.depth.increment(1.0);
        partition.waker.notify_one();
        Ok(Delivery::Done(Ok(())))
    }
}

pub struct MemoryConsumer {
    shared: Arc<Shared>,
    waker: Arc<Notify>,
    partitions: Vec<u32>,
    /// Next offset to read, per owned partition (same order as `partitions`).
    positions: Vec<u64>,
}

impl MemoryConsumer {
    fn fetch(&mut self, max: usize, out: &mut Vec<Delivered>) {
        for (i, &p) in self.partitions.iter().enumerate() {
            if out.len() >= max {
                return;
            }
            let log = self.shared.partitions[p as usize].log.lock();
            let start = self.positions[i].max(log.first);
            let end = log.end().min(start + (max - out.len()) as u64);
            for offset in start..end {
                #[allow(clippy::cast_possible_truncation)]
                let message = log.messages[(offset - log.first) as usize].clone();
                out.push(Delivered {
                    partition: p,
                    offset,
                    message,
                });
            }
            self.positions[i] = end.max(self.positions[i]);
        }
    }
}

#[async_trait]
impl Consumer for MemoryConsumer {
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Delivered>, QueueError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut out = Vec::new();
        let waker = self.waker.clone();
        loop {
            // Register for a wake-up before looking, so a send in between is not missed.
            let notified = waker.notified();
            self.fetch(max, &mut out);
            if out.len() >= max {
                return Ok(out);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.fetch(max, &mut out);
                return Ok(out);
            }
        }
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
        self.shared.commit(offsets)
    }

    fn lag(&self) -> Option<u64> {
        Some(
            self.partitions
                .iter()
                .map(|&p| self.shared.partitions[p as usize].log.lock().messages.len() as u64)
                .sum(),
        )
    }
}

impl Shared {
    /// Forgets every message up to each offset and gives its place back to senders.
    fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
        for &(p, offset) in offsets {
            let partition = self
                .partitions
                .get(p as usize)
                .ok_or_else(|| QueueError::Rejected(format!("no partition {p}")))?;
            let freed = {
                let mut log = partition.log.lock();
                let upto = (offset + 1).min(log.end());
                let freed = upto.saturating_sub(log.first);
                #[allow(clippy::cast_possible_truncation)]
                log.messages.drain(..freed as usize);
                log.first += freed;
                freed
            };
            #[allow(clippy::cast_possible_truncation)]
            partition.room.add_permits(freed as usize);
            #[allow(clippy::cast_precision_loss)]
            self.depth.decrement(freed as f64);
        }
        Ok(())
    }

    /// Messages held (not yet committed) over all partitions.
    fn depth(&self) -> u64 {
        self.partitions
            .iter()
            .map(|p| p.log.lock().messages.len() as u64)
            .sum()
    }
}

/// The sink's commits, when rule chains read the queue.
pub struct MemoryCommitter {
    shared: Arc<Shared>,
}

#[async_trait]
impl OffsetCommitter for MemoryCommitter {
    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
        self.shared.commit(offsets)
    }

    fn lag(&self) -> Option<u64> {
        Some(self.shared.depth())
    }
}

/// Messages one read hands to the rule chains at most.
const READ_BATCH: usize = 1024;
/// How long one read waits for messages; also how soon a stop is noticed.
const READ_WAIT: Duration = Duration::from_millis(100);
/// The pause after a read that found messages (see `Reader::run`): what it adds to the time
/// from PUBACK to storage is well below the sink's own batching (`store.batch_interval`).
const GATHER: Duration = Duration::from_millis(1);

/// Reads every partition of the queue, in order, and hands each message to its partition's
/// rule chain (started on the partition's first message); a full chain makes the reader wait.
pub struct MemorySource {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
    chains: RuleChains,
}

impl MemorySource {
    /// Starts reading `queue` (made for one consumer: this reader takes every partition);
    /// what the chains route goes to `sink`.
    pub async fn start(
        queue: &MemoryQueue,
        make_chain: MakeRuleChain,
        sink: mpsc::Sender<Routed>,
        lane_capacity: usize,
    ) -> anyhow::Result<(MemorySource, Arc<dyn OffsetCommitter>)> {
        let (chains, _) = RuleChains::start(RuleChainSupervisorArgs {
            make_chain,
            sink,
            lane_capacity,
        })
        .await
        .context("cannot start the rule chains")?;
        let (stop, stopped) = watch::channel(false);
        let mut reader = Reader {
            consumer: queue.consumer(0),
            chains: chains.clone(),
            handles: Vec::new(),
            stopped,
        };
        let task = tokio::spawn(async move { reader.run().await });
        let committer = Arc::new(MemoryCommitter {
            shared: queue.shared.clone(),
        });
        Ok((
            MemorySource {
                stop,
                task: Some(task),
                chains,
            },
            committer,
        ))
    }

    /// Reads what the queue still holds (it is closed: nothing more comes), hands it to the
    /// rule chains, and returns once they have handed it all to the sink.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let restarts = self.chains.drain().await;
        debug!(restarts, "rule chains stopped");
    }
}

struct Reader {
    consumer: MemoryConsumer,
    chains: RuleChains,
    /// Each partition's chain, once started.
    handles: Vec<Option<RuleChainHandle>>,
    stopped: watch::Receiver<bool>,
}

impl Reader {
    /// Hands over what the partitions hold. A read that found messages is followed by a pause
    /// of `GATHER` before the next, so a busy queue is read in runs of many messages (one
    /// wake-up of this task, of each rule chain and of the sink per run) instead of waking
    /// them for every message; a read that found none waits for the next send.
    async fn run(&mut self) {
        self.handles = vec![None; self.consumer.shared.partitions.len()];
        let waker = self.consumer.waker.clone();
        let mut batch = Vec::with_capacity(READ_BATCH);
        loop {
            let stopping = *self.stopped.borrow();
            // Registered before looking, so a send in between is not missed.
            let notified = waker.notified();
            self.consumer.fetch(READ_BATCH, &mut batch);
            if batch.is_empty() {
                // Stopping: the queue is closed, so an empty read means it is all read.
                if stopping {
                    return;
                }
                let _ = tokio::time::timeout(READ_WAIT, notified).await;
                continue;
            }
            // `fetch` reads partition after partition: each run goes to its chain at once.
            while let Some(first) = batch.first() {
                let partition = first.partition;
                let run = batch
                    .iter()
                    .take_while(|d| d.partition == partition)
                    .count();
                let Some(chain) = self.chain(partition).await else {
                    error!(partition, "cannot start the rule chain; the node stops");
                    return;
                };
                if chain.deliver_all(batch.drain(..run)).await.is_err() {
                    error!(partition, "rule chain is gone; the node stops");
                    return;
                }
            }
            if !stopping {
                tokio::time::sleep(GATHER).await;
            }
        }
    }

    /// The chain of `partition`, started on first use.
    async fn chain(&mut self, partition: u32) -> Option<&RuleChainHandle> {
        let slot = partition as usize;
        if self.handles.get(slot)?.is_none() {
            let chain = self.chains.chain(partition).await.ok()?;
            self.handles[slot] = Some(chain);
        }
        self.handles.get(slot)?.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actors::model::{Message, MessageBody, TenantId};

    fn message(device: &str) -> SharedMessage {
        let tenant = TenantId::from_name("t");
        Arc::new(Message {
            tenant_id: tenant,
            device_id: DeviceId::derive(tenant, device),
            received_ts: 0,
            body: MessageBody::Telemetry(vec![]),
        })
    }

    #[tokio::test]
    async fn a_device_keeps_its_partition_and_its_order() {
        let queue = MemoryQueue::new(4, 100, 1);
        let mut consumer = queue.consumer(0);
        for _ in 0..10 {
            queue
                .send(message("a"))
                .await
                .expect("send")
                .await
                .expect("delivered");
        }
        let got = consumer
            .poll(100, Duration::from_millis(10))
            .await
            .expect("poll");
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|d| d.partition == got[0].partition));
        let offsets: Vec<u64> = got.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    }

    /// Devices spread over the partitions, each consumer reads its own share, and together they
    /// read every message exactly once; a poll never hands out more than asked.
    #[tokio::test]
    async fn consumers_share_the_partitions_and_read_each_message_once() {
        let queue = MemoryQueue::new(4, 100, 2);
        assert_eq!(queue.consumers(), 2);
        let mut consumers = [queue.consumer(0), queue.consumer(1)];
        for d in 0..40 {
            queue
                .send(message(&format!("d{d}")))
                .await
                .expect("send")
                .await
                .expect("delivered");
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut partitions_of = [
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        ];
        for (i, consumer) in consumers.iter_mut().enumerate() {
            loop {
                let got = consumer
                    .poll(3, Duration::from_millis(10))
                    .await
                    .expect("poll");
                if got.is_empty() {
                    break;
                }
                assert!(got.len() <= 3, "a poll of 3 handed out {}", got.len());
                for d in got {
                    partitions_of[i].insert(d.partition);
                    assert!(seen.insert((d.partition, d.offset)), "read twice: {d:?}");
                }
            }
        }
        assert_eq!(seen.len(), 40, "every message read once");
        assert_eq!(partitions_of[0], [0, 2].into());
        assert_eq!(partitions_of[1], [1, 3].into());
    }

    #[tokio::test]
    async fn a_full_partition_makes_senders_wait_until_a_commit() {
        let queue = MemoryQueue::new(1, 2, 1);
        let mut consumer = queue.consumer(0);
        queue.send(message("a")).await.expect("room");
        queue.send(message("a")).await.expect("room");
        let third = tokio::time::timeout(Duration::from_millis(50), queue.send(message("a"))).await;
        assert!(third.is_err(), "the third send must wait");

        let got = consumer
            .poll(10, Duration::from_millis(10))
            .await
            .expect("poll");
        assert_eq!(got.len(), 2);
        // Reading is not enough: only a commit frees places.
        let still = tokio::time::timeout(Duration::from_millis(50), queue.send(message("a"))).await;
        assert!(still.is_err());
        consumer.commit(&[(0, 0)]).await.expect("commit");
        let sent = tokio::time::timeout(Duration::from_secs(5), queue.send(message("a"))).await;
        assert!(matches!(sent, Ok(Ok(_))));
        assert_eq!(queue.depth(), 2);
    }

    #[tokio::test]
    async fn a_new_consumer_resumes_from_the_committed_offset() {
        let queue = MemoryQueue::new(1, 10, 1);
        for _ in 0..5 {
            queue.send(message("a")).await.expect("send");
        }
        let mut first = queue.consumer(0);
        let got = first
            .poll(10, Duration::from_millis(10))
            .await
            .expect("poll");
        assert_eq!(got.len(), 5);
        first.commit(&[(0, 1)]).await.expect("commit");
        drop(first);
        let mut second = queue.consumer(0);
        let again = second
            .poll(10, Duration::from_millis(10))
            .await
            .expect("poll");
        let offsets: Vec<u64> = again.iter().map(|d| d.offset).collect();
        assert_eq!(offsets, [2, 3, 4]);
        assert_eq!(second.lag(), Some(3));
    }

    /// Time is paused: it only moves when every task waits, straight to the next timer. A poll
    /// woken by the send returns at the send's time; one that is not woken returns only at its
    /// deadline (fetching once more then), an hour later on the paused clock.
    #[tokio::test(start_paused = true)]
    async fn poll_wakes_when_a_message_arrives() {
        let queue = MemoryQueue::new(2, 10, 1);
        let mut consumer = queue.consumer(0);
        let q = queue.clone();
        let started = tokio::time::Instant::now();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            q.send(message("late")).await.expect("send");
        });
        let max_wait = Duration::from_secs(3600);
        let got = consumer.poll(1, max_wait).await.expect("poll");
        assert_eq!(got.len(), 1);
        assert!(
            started.elapsed() < max_wait,
            "the poll returned at its deadline, not when the message came"
        );
    }

    /// The same for every consumer of several: each is woken by sends to its own partitions.
    #[tokio::test(start_paused = true)]
    async fn every_consumer_is_woken_by_its_own_partitions() {
        let queue = MemoryQueue::new(4, 10, 2);
        for index in 0..2 {
            // A device whose partition belongs to consumer `index`.
            let device = (0..)
                .map(|n| format!("d{n}"))
                .find(|d| {
                    let tenant = TenantId::from_name("t");
                    queue.partition_of(DeviceId::derive(tenant, d)) % 2 == index
                })
                .expect("some device");
            let mut consumer = queue.consumer(index);
            let q = queue.clone();
            let started = tokio::time::Instant::now();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                q.send(message(&device)).await.expect("send");
            });
            let max_wait = Duration::from_secs(3600);
            let got = consumer.poll(1, max_wait).await.expect("poll");
            assert_eq!(got.len(), 1);
            assert!(
                started.elapsed() < max_wait,
                "consumer {index} was not woken by a send to its partition"
            );
        }
    }

    #[tokio::test]
    async fn close_refuses_senders() {
        let queue = MemoryQueue::new(1, 1, 1);
        queue.send(message("a")).await.expect("room");
        let q = queue.clone();
        let waiting = tokio::spawn(async move { q.send(message("a")).await.err() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue.close();
        assert_eq!(waiting.await.expect("joined"), Some(QueueError::Closed));
    }
}
