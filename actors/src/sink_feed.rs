//! The sink's [`Consumer`] when rule chains stand between the queue and the sink: it reads
//! what the rule chains save from a bounded channel, and commits through the queue's
//! [`OffsetCommitter`].
//!
//! A batch the sink polled is kept until the sink commits it. A sink that crashes in between
//! is restarted by its supervisor with a new `FeedConsumer` over the same feed, whose first
//! poll hands out that batch again: nothing read from the queue is skipped.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc};

use crate::ports::{Consumer, Delivered, OffsetCommitter, QueueError};

pub struct Feed {
    rx: mpsc::Receiver<Delivered>,
    /// Polled and not yet committed.
    pending: Vec<Delivered>,
}

/// One feed, shared by a sink and the sinks that replace it.
#[derive(Clone)]
pub struct SharedFeed(Arc<Mutex<Feed>>);

impl SharedFeed {
    pub fn new(rx: mpsc::Receiver<Delivered>) -> SharedFeed {
        SharedFeed(Arc::new(Mutex::new(Feed {
            rx,
            pending: Vec::new(),
        })))
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
                Ok(Some(d)) => out.push(d),
                // Every rule chain is gone (the node stops): what was sent is all there is.
                Ok(None) | Err(_) => break,
            }
            // Take what is already there without waiting for each.
            while out.len() < max {
                match feed.rx.try_recv() {
                    Ok(d) => out.push(d),
                    Err(_) => break,
                }
            }
        }
        feed.pending.clone_from(&out);
        Ok(out)
    }

    async fn commit(&mut self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
        self.committer.commit(offsets).await?;
        self.feed.0.lock().await.pending.clear();
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
    struct Commits(std::sync::Mutex<Vec<(u32, u64)>>);

    #[async_trait]
    impl OffsetCommitter for Commits {
        async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), QueueError> {
            self.0.lock().expect("lock").extend_from_slice(offsets);
            Ok(())
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
            tx.send(delivered(i)).await.expect("open");
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
}
