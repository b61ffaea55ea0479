//! Bounded hand-off in front of an actor. A ractor mailbox is unbounded, so a sender first takes
//! a permit; the permit travels inside the message and is returned when the handler drops it.
//! A full mailbox therefore makes its sender wait, and the wait is measured.

use std::sync::Arc;
use std::time::Instant;

use metrics::{gauge, histogram};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::metrics::{MAILBOX_BLOCKED, MAILBOX_DEPTH};

/// The permits of one bounded mailbox.
#[derive(Clone, Debug)]
pub struct Bound {
    permits: Arc<Semaphore>,
    name: &'static str,
}

/// A taken place in a mailbox, freed when dropped (that is, when the message was handled).
#[derive(Debug)]
pub struct Ticket {
    _permit: OwnedSemaphorePermit,
    name: &'static str,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        gauge!(MAILBOX_DEPTH, "mailbox" => self.name).decrement(1.0);
    }
}

impl Bound {
    /// `name` labels the metrics; `capacity` is how many messages may wait.
    pub fn new(name: &'static str, capacity: usize) -> Bound {
        Bound {
            permits: Arc::new(Semaphore::new(capacity.max(1))),
            name,
        }
    }

    /// Waits for room; `None` once the mailbox was closed.
    pub async fn ticket(&self) -> Option<Ticket> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return None,
            Err(TryAcquireError::NoPermits) => {
                let started = Instant::now();
                let permit = self.permits.clone().acquire_owned().await.ok()?;
                histogram!(MAILBOX_BLOCKED, "mailbox" => self.name).record(started.elapsed());
                permit
            }
        };
        gauge!(MAILBOX_DEPTH, "mailbox" => self.name).increment(1.0);
        Some(Ticket {
            _permit: permit,
            name: self.name,
        })
    }

    pub fn close(&self) {
        self.permits.close();
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
        bound.close();
        assert!(bound.ticket().await.is_none());
    }
}
