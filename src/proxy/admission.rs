//! The admission queue in front of the worker: a request that finds every worker slot
//! busy waits for one in a bounded FIFO (`worker.queue_max`, `worker.queue_timeout`)
//! instead of being refused, as LLM servers do. Past either bound it gets 429 with
//! `Retry-After`. A waiting request that is dropped (its client went away, or the request
//! timed out) leaves the line and `codex_worker_queue_depth` at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::ApiError;
use crate::config::WorkerConfig;
use crate::metrics::Metrics;
use crate::worker::{WorkerHandle, WorkerSlot};

pub(crate) struct Admission {
    /// Requests waiting right now; never above `queue_max`.
    waiting: AtomicUsize,
    queue_max: usize,
    queue_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Admission {
    pub(crate) fn new(config: &WorkerConfig, metrics: Arc<Metrics>) -> Admission {
        Admission {
            waiting: AtomicUsize::new(0),
            queue_max: config.queue_max,
            queue_timeout: config.queue_timeout.0,
            metrics,
        }
    }

    /// Requests waiting for a worker slot right now.
    pub(crate) fn depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub(crate) fn queue_max(&self) -> usize {
        self.queue_max
    }

    /// A worker slot for one turn: at once when one is free and nobody waits, else after
    /// the requests queued before this one. Records the wait in `codex_worker_wait_seconds`.
    pub(crate) async fn admit(&self, worker: &WorkerHandle) -> Result<WorkerSlot, ApiError> {
        let arrived = Instant::now();
        if let Some(slot) = worker.try_slot() {
            self.metrics.model_work.worker_wait.observe(0.0);
            return Ok(slot);
        }
        let max = self.queue_max;
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| ApiError::queue_full(max))?;
        let _place = Place(self);
        self.metrics.model_work.queue_depth.inc();
        match tokio::time::timeout(self.queue_timeout, worker.slot()).await {
            Ok(Some(slot)) => {
                let waited = arrived.elapsed().as_secs_f64();
                self.metrics.model_work.worker_wait.observe(waited);
                Ok(slot)
            }
            Ok(None) => Err(ApiError::worker_not_ready("its slots are closed")),
            Err(_) => Err(ApiError::queue_timeout(self.queue_timeout)),
        }
    }
}

/// A place in the queue, given up when dropped: served, timed out, or abandoned.
struct Place<'a>(&'a Admission);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.model_work.queue_depth.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::worker::supervisor;
    use axum::http::StatusCode;

    /// A worker that never starts: slots are handed out all the same.
    fn setup(toml: &str) -> (WorkerHandle, Arc<Admission>, Arc<Metrics>) {
        let config = Config::parse(toml).unwrap();
        let worker = supervisor::start_never_ready(config.worker.clone());
        let metrics = Metrics::new(&config.metrics).unwrap();
        let admission = Arc::new(Admission::new(&config.worker, metrics.clone()));
        (worker, admission, metrics)
    }

    async fn depth_becomes(metrics: &Metrics, n: i64) {
        for _ in 0..400 {
            if metrics.model_work.queue_depth.get() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("queue depth never became {n}");
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order_and_the_overflow_is_refused() {
        let (worker, admission, metrics) = setup("[worker]\nmax_concurrency = 1\nqueue_max = 2\n");
        let first = admission.admit(&worker).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..2 {
            let (worker, admission, tx) = (worker.clone(), admission.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = admission.admit(&worker).await;
                tx.send((i, slot.is_ok())).unwrap();
                // Hold the slot a moment so the order shows.
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
            depth_becomes(&metrics, i + 1).await;
        }
        let refused = admission.admit(&worker).await.err().unwrap();
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.retry_after_secs, Some(1));
        drop(first);
        assert_eq!(rx.recv().await, Some((0, true)));
        assert_eq!(rx.recv().await, Some((1, true)));
        depth_becomes(&metrics, 0).await;
        assert_eq!(metrics.model_work.worker_wait.get_sample_count(), 3);
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn a_waiter_past_queue_timeout_gets_429() {
        let (worker, admission, metrics) =
            setup("[worker]\nmax_concurrency = 1\nqueue_timeout = \"50ms\"\n");
        let _held = admission.admit(&worker).await.unwrap();
        let e = admission.admit(&worker).await.err().unwrap();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.message.contains("worker.queue_timeout"), "{}", e.message);
        assert_eq!(metrics.model_work.queue_depth.get(), 0);
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue_at_once_and_takes_no_slot() {
        let (worker, admission, metrics) = setup("[worker]\nmax_concurrency = 1\n");
        let held = admission.admit(&worker).await.unwrap();
        let waiting = {
            let (worker, admission) = (worker.clone(), admission.clone());
            tokio::spawn(async move { admission.admit(&worker).await.is_ok() })
        };
        depth_becomes(&metrics, 1).await;
        waiting.abort();
        depth_becomes(&metrics, 0).await;
        drop(held);
        // The abandoned place took nothing: the freed slot is there for the next comer.
        assert!(worker.try_slot().is_some());
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn queue_max_zero_refuses_a_busy_worker_at_once() {
        let (worker, admission, _) = setup("[worker]\nmax_concurrency = 1\nqueue_max = 0\n");
        let _held = admission.admit(&worker).await.unwrap();
        let e = admission.admit(&worker).await.err().unwrap();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        worker.shutdown().await;
    }
}
