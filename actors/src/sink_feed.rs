//! The sink's [`Consumer`] when rule chains stand between the queue and the sink: it reads
//! what the rule chains route from a bounded channel, and commits through the queue's
//! [`OffsetCommitter`].
//!
//! A batch the sink polled is kept until the sink commits it. A sink that crashes in between
//! is restarted by its supervisor with a new `FeedConsumer` over the same feed, whose first
//! poll hands out that batch again: nothing read from the queue is skipped.
//!
//! Messages a chain did not save ([`Routed::Skip`]) are not handed to the sink, but their
//! offsets are committed with the batch read alongside them (everything before them in their
//! partition is then stored), or at once when nothing to store came with them: a partition
//! whose last messages were dropped is not left uncommitted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc};

use crate::ports::{Consumer, Delivered, OffsetCommitter, QueueError};
use crate::rule_chain::Routed;

pub struct Feed {
    rx: mpsc::Receiver<Routed>,
    /// Polled and not yet committed.
    pending: Vec<Delivered>,
    /// Skipped offsets read with `pending` (or alone), the last per partition.
    skipped: BTreeMap<u32, u64>,
}

/// One feed, shared by a sink and the sinks that replace it.
#[derive(Clone)]
pub struct SharedFeed(Arc<Mutex<Feed>>);

impl SharedFeed {
    pub fn new(rx: mpsc::Receiver<Routed>) -> SharedFeed {
        SharedFeed(Arc::new(Mutex::new(Feed {
            rx,
            pending: Vec::new(),
            skipped: BTreeMap::new(),
        })))
    }
}

impl Feed {
    fn take(&mut self, routed: Routed, out: &mut Vec<Delivered>) {
        match routed {
            Routed::Save(d) => out.push(d),
            Routed::Skip { partition, offset } => {
                let last = self.skipped.entry(partition).or_insert(offset);
                *last = (*last).max(offset);
            }
        }
    }
}

pub struct FeedConsumer {
    feed: SharedFeed,
    committer: Arc<dyn OffsetCommitter>,
}

impl FeedConsumer {
    pub fn new(feed: SharedFeed, committer: Arc<dyn OffsetCommitter>) -> FeedConsumer {
        FeedConsumer { feed, committer }
    }
}

#[async_trait]
impl Consumer for FeedConsumer {
    async fn poll(&mut self, max: usize, max_wait: Duration) -> Result<Vec<Delivered>, QueueError> {
        let mut feed = self.feed.0.lock().await;
        if !feed.pending.is_empty() {
            return Ok(feed.pending.clone());
        }
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + max_wait;
        while out.len() < max {
            match tokio::time::timeout_at(deadline, feed.rx.recv()).await {
                Ok(Some(routed)) => feed.take(routed, &mut out),
                // Every rule chain is gone (the node stops): what was sent is all there is.
                Ok(None) | Err(_) => break,
            }
            // Take what is already there without waiting for each.
            while out.len() < max {
                match feed.rx.try_recv() {
                    Ok(routed) => feed.take(routed, &mut out),
                    Err(_) => break,
                }
            }
        }
        if out.is_empty() && !feed.skipped.is_empty() {
            // Only skipped messages, and everything read before them is committed already.
            let offsets: Vec<(u32, u64)> = feed.skipped.iter().map(|(p, o)| (*p, *o)).collect();
            self.committer.commit(&offsets).await?;
            feed.skipped.clear();
        }
        feed.pending.clone_from(&out);
        Ok(out)
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
        let mut feed = self.feed.0.lock().await;
        let mut all: BTreeMap<u32, u64> = std::mem::take(&mut feed.skipped);
        for &(partition, offset) in offsets {
            let last = all.entry(partition).or_insert(offset);
            *last = (*last).max(offset);
        }
        let all: Vec<(u32, u64)> = all.into_iter().collect();
        if let Err(e) = self.committer.commit(&all).await {
            // Keep the skipped offsets for the next commit.
            for (p, o) in all {
                if !offsets.iter().any(|(q, _)| *q == p) {
                    feed.skipped.insert(p, o);
                }
            }
            return Err(e);
        }
        feed.pending.clear();
        Ok(())
    }

    fn lag(&self) -> Option<u64> {
        self.committer.lag()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, Message, MessageBody, TenantId};

    #[derive(Default)]
    struct Commits(
        std::sync::Mutex<Vec<(u32, u64)>>,
        std::sync::atomic::AtomicBool,
    );

    impl Commits {
        /// Makes the next commits fail (the broker is away) or succeed again.
        fn fail(&self, fail: bool) {
            self.1.store(fail, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl OffsetCommitter for Commits {
        async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(QueueError::Unavailable("broker away".into()));
            }
            self.0.lock().expect("lock").extend_from_slice(offsets);
            Ok(())
        }

        fn lag(&self) -> Option<u64> {
            Some(self.0.lock().expect("lock").len() as u64 + 40)
        }
    }

    fn delivered(offset: u64) -> Delivered {
        let tenant = TenantId::from_name("t");
        Delivered {
            partition: 0,
            offset,
            message: Arc::new(Message {
                tenant_id: tenant,
                device_id: DeviceId::derive(tenant, "d"),
                received_ts: 0,
                body: MessageBody::Telemetry(vec![]),
            }),
        }
    }

    #[tokio::test]
    async fn an_uncommitted_batch_is_handed_out_again_to_the_next_consumer() {
        let (tx, rx) = mpsc::channel(10);
        let feed = SharedFeed::new(rx);
        let commits = Arc::new(Commits::default());
        for i in 0..3 {
            tx.send(Routed::Save(delivered(i))).await.expect("open");
        }
        let wait = Duration::from_millis(20);
        let mut crashed = FeedConsumer::new(feed.clone(), commits.clone());
        let first: Vec<u64> = crashed
            .poll(2, wait)
            .await
            .expect("poll")
            .iter()
            .map(|d| d.offset)
            .collect();
        assert_eq!(first, [0, 1]);
        drop(crashed);

        let mut next = FeedConsumer::new(feed, commits.clone());
        let again: Vec<u64> = next
            .poll(2, wait)
            .await
            .expect("poll")
            .iter()
            .map(|d| d.offset)
            .collect();
        assert_eq!(again, [0, 1], "the uncommitted batch comes back");
        next.commit(&[(0, 1)]).await.expect("commit");
        let rest: Vec<u64> = next
            .poll(2, wait)
            .await
            .expect("poll")
            .iter()
            .map(|d| d.offset)
            .collect();
        assert_eq!(rest, [2]);
        assert_eq!(*commits.0.lock().expect("lock"), [(0, 1)]);
    }

    /// Offsets of messages a chain dropped are committed with the batch read alongside them,
    /// or on their own when nothing else came: a partition ending in dropped messages is
    /// committed to its end.
    #[tokio::test]
    async fn skipped_offsets_are_committed_too() {
        let (tx, rx) = mpsc::channel(10);
        let commits = Arc::new(Commits::default());
        let mut consumer = FeedConsumer::new(SharedFeed::new(rx), commits.clone());
        let wait = Duration::from_millis(20);
        tx.send(Routed::Save(delivered(0))).await.expect("open");
        tx.send(Routed::Skip {
            partition: 0,
            offset: 1,
        })
        .await
        .expect("open");
        let batch = consumer.poll(10, wait).await.expect("poll");
        assert_eq!(batch.len(), 1, "only what is to be stored");
        consumer.commit(&[(0, 0)]).await.expect("commit");
        assert_eq!(*commits.0.lock().expect("lock"), [(0, 1)]);

        tx.send(Routed::Skip {
            partition: 0,
            offset: 2,
        })
        .await
        .expect("open");
        assert!(consumer.poll(10, wait).await.expect("poll").is_empty());
        assert_eq!(*commits.0.lock().expect("lock"), [(0, 1), (0, 2)]);
    }

    /// A poll waits up to its `max_wait` for the first message.
    #[tokio::test(start_paused = true)]
    async fn a_poll_waits_for_a_message_that_comes_within_its_wait() {
        let (tx, rx) = mpsc::channel(10);
        let mut consumer = FeedConsumer::new(SharedFeed::new(rx), Arc::new(Commits::default()));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            tx.send(Routed::Save(delivered(7))).await.expect("open");
            // Keep the channel open past the poll's wait.
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let started = tokio::time::Instant::now();
        let batch = consumer
            .poll(10, Duration::from_secs(30))
            .await
            .expect("poll");
        assert_eq!(batch.iter().map(|d| d.offset).collect::<Vec<_>>(), [7]);
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    /// Skipped offsets whose commit failed are committed with the next batch; those of the
    /// failed batch's own partitions come back with that batch, which is handed out again.
    #[tokio::test]
    async fn skipped_offsets_survive_a_failed_commit() {
        let (tx, rx) = mpsc::channel(10);
        let commits = Arc::new(Commits::default());
        let mut consumer = FeedConsumer::new(SharedFeed::new(rx), commits.clone());
        let wait = Duration::from_millis(20);
        tx.send(Routed::Skip {
            partition: 3,
            offset: 9,
        })
        .await
        .expect("open");
        tx.send(Routed::Save(delivered(0))).await.expect("open");
        assert_eq!(consumer.poll(10, wait).await.expect("poll").len(), 1);
        commits.fail(true);
        assert!(consumer.commit(&[(0, 0)]).await.is_err());
        commits.fail(false);
        let again = consumer.poll(10, wait).await.expect("poll");
        assert_eq!(again.len(), 1, "the uncommitted batch comes back");
        consumer.commit(&[(0, 0)]).await.expect("commit");
        assert_eq!(*commits.0.lock().expect("lock"), [(0, 0), (3, 9)]);
    }

    #[tokio::test]
    async fn the_lag_is_the_queues() {
        let (_tx, rx) = mpsc::channel(1);
        let consumer = FeedConsumer::new(SharedFeed::new(rx), Arc::new(Commits::default()));
        assert_eq!(consumer.lag(), Some(40));
    }
}
