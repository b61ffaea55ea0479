//! The converter worker pool: a fixed set of OS threads (one per core by default) that run
//! converter scripts, so a script never runs on a network event loop or a tokio worker. Jobs
//! wait in one bounded queue; when it is full, [`ConverterPool::run`] refuses at once and the
//! transport answers "overloaded" (CoAP 5.03, HTTP 503) instead of piling work up.

use std::panic::AssertUnwindSafe;
use std::thread::JoinHandle;

use crossbeam_channel::{Sender, TrySendError, bounded};
use metrics::gauge;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::metrics::CONVERTER_POOL_QUEUED;

type Job = Box<dyn FnOnce() + Send>;

/// Stack of a worker thread. Rhai walks nested values recursively (its size checks, clones,
/// drops, printing), and nothing but the array and map limits and the time to build them bounds
/// how deep a script nests: a 2 MiB stack overflowed, aborting the process, at about 2 000
/// levels unoptimised. Untouched stack pages cost address space only.
const WORKER_STACK: usize = 64 * 1024 * 1024;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PoolError {
    #[error("the converter pool is saturated")]
    Full,
    #[error("the converter pool has stopped")]
    Stopped,
    #[error("the converter panicked")]
    Panicked,
}

pub struct ConverterPool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl ConverterPool {
    /// `threads` workers (0: one per core) behind a queue of `capacity` jobs.
    pub fn new(threads: usize, capacity: usize) -> ConverterPool {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
        } else {
            threads
        };
        let (tx, rx) = bounded::<Job>(capacity.max(1));
        let workers = (0..threads)
            .filter_map(|i| {
                let rx = rx.clone();
                std::thread::Builder::new()
                    .name(format!("converter-{i}"))
                    .stack_size(WORKER_STACK)
                    .spawn(move || {
                        for job in rx {
                            gauge!(CONVERTER_POOL_QUEUED).decrement(1.0);
                            job();
                        }
                    })
                    .ok()
            })
            .collect();
        ConverterPool {
            jobs: Some(tx),
            threads: workers,
        }
    }

    /// Worker threads running.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Runs `f` on a worker and waits for its result without blocking the caller's thread.
    pub async fn run<T, F>(&self, f: F) -> Result<T, PoolError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let jobs = self.jobs.as_ref().ok_or(PoolError::Stopped)?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(result.map_err(|_| PoolError::Panicked));
        });
        match jobs.try_send(job) {
            Ok(()) => gauge!(CONVERTER_POOL_QUEUED).increment(1.0),
            Err(TrySendError::Full(_)) => return Err(PoolError::Full),
            Err(TrySendError::Disconnected(_)) => return Err(PoolError::Stopped),
        }
        rx.await.map_err(|_| PoolError::Stopped)?
    }
}

impl Drop for ConverterPool {
    /// Lets the workers finish the queued jobs, then joins them.
    fn drop(&mut self) {
        self.jobs.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_jobs_off_the_calling_thread() {
        let pool = ConverterPool::new(2, 8);
        let caller = std::thread::current().id();
        let worker = pool.run(|| std::thread::current().id()).await.expect("ran");
        assert_ne!(worker, caller);
        assert_eq!(pool.threads(), 2);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let pool = Arc::new(ConverterPool::new(1, 1));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let p = pool.clone();
        // One job blocks the only worker, one waits in the queue; a third does not fit.
        let busy = tokio::spawn(async move {
            p.run(move || {
                s.fetch_add(1, Ordering::SeqCst);
                let _ = release_rx.recv();
            })
            .await
        });
        while started.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let p = pool.clone();
        let queued = tokio::spawn(async move { p.run(|| 7).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(pool.run(|| 8).await, Err(PoolError::Full));
        release_tx.send(()).expect("release");
        assert_eq!(busy.await.expect("joined"), Ok(()));
        assert_eq!(queued.await.expect("joined"), Ok(7));
        assert_eq!(pool.run(|| 9).await, Ok(9), "room again once drained");
    }

    #[tokio::test]
    async fn a_deeply_nested_script_value_fits_a_worker_stack() {
        use crate::converter::{ConverterRuntime, Limits};
        let pool = ConverterPool::new(1, 1);
        let runtime = ConverterRuntime::new(&Limits {
            max_operations: u64::MAX,
            max_wall_time: Duration::from_secs(600),
            ..Limits::default()
        });
        let out = pool
            .run(move || {
                runtime.uplink(
                    r#"let a = []; for n in 0..2000 { a = [a]; } #{deviceName: "deep"}"#,
                    b"",
                    &Default::default(),
                )
            })
            .await;
        assert!(matches!(out, Ok(Ok(_))), "{out:?}");
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_worker_lives_on() {
        let pool = ConverterPool::new(1, 4);
        let r: Result<(), _> = pool.run(|| panic!("script host bug")).await;
        assert_eq!(r, Err(PoolError::Panicked));
        assert_eq!(pool.run(|| 1).await, Ok(1));
    }
}
