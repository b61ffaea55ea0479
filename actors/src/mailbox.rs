//! Bounded hand-off in front of an actor. A ractor mailbox is unbounded, so a sender first takes
//! a permit; the permit travels inside the message and is returned when the handler drops it.
//! A full mailbox therefore makes its sender wait, and the wait is measured.

use std::sync::Arc;
use std::time::Instant;

use metrics::{Gauge, Histogram, gauge, histogram};
use tokio::sync::{Semaphore, TryAcquireError};

use crate::metrics::{MAILBOX_BLOCKED, MAILBOX_DEPTH};

/// The permits of one bounded mailbox.
#[derive(Clone, Debug)]
pub struct Bound {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    permits: Semaphore,
    capacity: usize,
    /// Handles resolved once per mailbox, not per message.
    depth: Gauge,
    blocked: Histogram,
}

/// A taken place in a mailbox, freed when dropped (that is, when the message was handled).
#[derive(Debug)]
pub struct Ticket {
    inner: Arc<Inner>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.inner.permits.add_permits(1);
        self.inner.depth.decrement(1.0);
    }
}

impl Bound {
    /// `name` labels the metrics; `capacity` is how many messages may wait.
    pub fn new(name: &'static str, capacity: usize) -> Bound {
        Bound {
            inner: Arc::new(Inner {
                permits: Semaphore::new(capacity.max(1)),
                capacity: capacity.max(1),
                depth: gauge!(MAILBOX_DEPTH, "mailbox" => name),
                blocked: histogram!(MAILBOX_BLOCKED, "mailbox" => name),
            }),
        }
    }

    /// Whether no ticket is out: nothing waits in the mailbox or is being handled.
    pub fn is_idle(&self) -> bool {
        self.inner.permits.available_permits() == self.inner.capacity
    }

    /// A ticket if there is room now.
    pub fn try_ticket(&self) -> Option<Ticket> {
        self.inner.permits.try_acquire().ok()?.forget();
        self.inner.depth.increment(1.0);
        Some(Ticket {
            inner: self.inner.clone(),
        })
    }

    /// Waits for room; `None` if the semaphore was closed (it never is while a `Bound` lives).
    pub async fn ticket(&self) -> Option<Ticket> {
        let inner = &self.inner;
        match inner.permits.try_acquire() {
            Ok(permit) => permit.forget(),
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {
                let started = Instant::now();
                inner.permits.acquire().await.ok()?.forget();
                inner.blocked.record(started.elapsed());
            }
        }
        inner.depth.increment(1.0);
        Some(Ticket {
            inner: inner.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_mailbox_makes_the_sender_wait() {
        let bound = Bound::new("test", 2);
        let a = bound.ticket().await.expect("open");
        let _b = bound.ticket().await.expect("open");
        let third = tokio::time::timeout(Duration::from_millis(50), bound.ticket()).await;
        assert!(third.is_err(), "a third ticket must wait while two are out");
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(5), bound.ticket()).await;
        assert!(matches!(third, Ok(Some(_))));
    }
}
