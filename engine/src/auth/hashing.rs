//! The threads that check passwords. Argon2 fills the hash's memory cost (19 MiB with
//! `engine hash-password`) for tens of milliseconds; run on a general blocking pool, a burst of
//! logins ran hundreds at once and took gigabytes, which the allocator then kept. Here a fixed
//! number of threads takes checks from a bounded queue, and each thread keeps one Argon2 memory
//! buffer for its whole life, so logins cost at most `threads x memory cost`, allocated once;
//! a login that finds the queue full is refused at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use actors::metrics::AUTH_LOGIN_QUEUE;
use argon2::Block;
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A pool thread's Argon2 memory, grown to the largest cost asked and then reused.
pub type Scratch = Vec<Block>;

type Job = Box<dyn FnOnce(&mut Scratch) + Send>;

/// A fixed set of threads and the bounded queue feeding them.
pub struct HashPool {
    jobs: SyncSender<Job>,
    queued: Arc<AtomicI64>,
    threads: usize,
}

/// The queue is full: the caller answers "too many requests".
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl HashPool {
    /// `threads` checking threads (at least one), `capacity` jobs waiting at most. The threads
    /// end when the pool is dropped.
    pub fn new(threads: usize, capacity: usize) -> std::io::Result<HashPool> {
        let threads = threads.max(1);
        let (jobs, receiver) = sync_channel::<Job>(capacity);
        let receiver = Arc::new(Mutex::new(receiver));
        let queued = Arc::new(AtomicI64::new(0));
        for i in 0..threads {
            let (receiver, queued) = (receiver.clone(), queued.clone());
            std::thread::Builder::new()
                .name(format!("login-{i}"))
                .spawn(move || work(&receiver, &queued))?;
        }
        Ok(HashPool {
            jobs,
            queued,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a pool thread, with that thread's memory buffer; `Err(Full)` at once when
    /// the queue is full.
    pub fn try_run<T, F>(&self, f: F) -> Result<oneshot::Receiver<T>, Full>
    where
        T: Send + 'static,
        F: FnOnce(&mut Scratch) -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |scratch| {
            // The login may have given up waiting (its connection closed): nobody to tell.
            let _ = tx.send(f(scratch));
        });
        // Counted before the hand-over: a thread may take the job before `try_send` returns.
        let depth = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        match self.jobs.try_send(job) {
            Ok(()) => {
                metrics::gauge!(AUTH_LOGIN_QUEUE).set(depth as f64);
                Ok(rx)
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Full)
            }
        }
    }
}

fn work(receiver: &Mutex<Receiver<Job>>, queued: &AtomicI64) {
    let mut scratch = Scratch::new();
    loop {
        // The lock is held only while waiting for the next job, never while running one.
        let job = receiver.lock().recv();
        let Ok(job) = job else {
            return; // the pool was dropped
        };
        let depth = queued.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!(AUTH_LOGIN_QUEUE).set(depth.max(0) as f64);
        job(&mut scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_refuses_at_once_when_full() {
        let pool = HashPool::new(1, 1).expect("pool");
        assert_eq!(pool.try_run(|_| 2 + 2).expect("room").await, Ok(4));

        // Hold the only thread, fill the only queue slot: the next job is refused.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = pool
            .try_run(move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
                "busy"
            })
            .expect("room");
        started_rx.recv().expect("the thread took the job");
        let queued = pool.try_run(|_| "queued").expect("one slot");
        assert_eq!(pool.try_run(|_| "refused").err(), Some(Full));
        release_tx.send(()).expect("release");
        assert_eq!(busy.await, Ok("busy"));
        assert_eq!(queued.await, Ok("queued"));
        assert_eq!(pool.try_run(|_| "again").expect("room").await, Ok("again"));
    }
}
