//! The admission queue in front of the worker: a request that cannot start at once waits
//! in one bounded FIFO (`worker.queue_max`, `worker.queue_timeout`) instead of being
//! refused, as LLM servers do. A non-streamed request waits for a worker slot; a streamed
//! one for a stream slot (`streams.max_concurrency`) and a worker slot, in the same line
//! (unless `streams.on_full = "reject"`, where a stream finds its stream slot at once or
//! gets 429). Past either bound a request gets 429 with `Retry-After`. A waiting request
//! that is dropped (its client went away, or the request timed out) leaves the line and
//! `codex_worker_queue_depth` at once, holding nothing.
//!
//! The line is strict: only its head waits for slots, so a request is admitted after
//! every request that arrived before it, whatever each waits for. A non-streamed request
//! behind a stream that waits for a stream slot waits too, even with a worker slot free:
//! the price of a line that nobody can jump, which with the defaults (4 streams, 4 worker
//! slots, a stream holding both) is short.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::{OnFull, StreamsConfig, WorkerConfig};
use crate::metrics::{Metrics, StreamGuard};
use crate::worker::{WorkerHandle, WorkerSlot};

pub(crate) struct Admission {
    /// Held by the head of the line while it waits for its slots. Tokio's mutex is fair,
    /// so the line behind it is served in arrival order.
    head: Mutex<()>,
    /// Requests waiting right now; never above `queue_max`.
    waiting: AtomicUsize,
    queue_max: usize,
    queue_timeout: Duration,
    /// One permit per open SSE stream.
    streams: Arc<Semaphore>,
    max_streams: usize,
    on_full: OnFull,
    metrics: Arc<Metrics>,
}

/// What an admitted request holds: its worker slot, and for a stream its stream slot.
pub(crate) struct Admitted {
    pub(crate) worker: WorkerSlot,
    pub(crate) stream: Option<StreamSlot>,
}

/// One of the `streams.max_concurrency` stream slots, counted in `codex_streams_active`
/// while held. The gauge goes down before the slot is given back (fields drop in order),
/// so it never reads above the cap.
pub(crate) struct StreamSlot {
    _active: StreamGuard,
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    pub(crate) fn new(
        worker: &WorkerConfig,
        streams: &StreamsConfig,
        metrics: Arc<Metrics>,
    ) -> Admission {
        Admission {
            head: Mutex::new(()),
            waiting: AtomicUsize::new(0),
            queue_max: worker.queue_max,
            queue_timeout: worker.queue_timeout.0,
            streams: Arc::new(Semaphore::new(streams.max_concurrency)),
            max_streams: streams.max_concurrency,
            on_full: streams.on_full,
            metrics,
        }
    }

    /// Requests waiting in the line right now.
    pub(crate) fn depth(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub(crate) fn queue_max(&self) -> usize {
        self.queue_max
    }

    /// Stream slots held right now.
    pub(crate) fn streams_open(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    /// The slots for one turn (and its stream, when `stream`): at once when they are free
    /// and nobody waits, else after the requests queued before this one. Records the wait
    /// in `codex_worker_wait_seconds`, for a stream the wait for both slots.
    pub(crate) async fn admit(
        &self,
        worker: &WorkerHandle,
        stream: bool,
    ) -> Result<Admitted, ApiError> {
        let arrived = Instant::now();
        let mut held = None;
        if stream && self.on_full == OnFull::Reject {
            let permit = self.streams.clone().try_acquire_owned();
            let permit = permit.map_err(|_| ApiError::too_many_streams(self.max_streams))?;
            held = Some(self.stream_slot(permit));
        }
        let needs_stream = stream && held.is_none();
        if let Ok(_head) = self.head.try_lock() {
            if let Some((worker, stream)) = self.take_free(worker, needs_stream) {
                self.metrics.model_work.observe_wait(0.0);
                let stream = held.or(stream);
                return Ok(Admitted { worker, stream });
            }
        }
        let max = self.queue_max;
        self.waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| ApiError::queue_full(max))?;
        let _place = Place(self);
        self.metrics.model_work.queue_depth.inc();
        let wait = async {
            let _head = self.head.lock().await;
            // Slots are held only by requests already admitted, which give them back
            // without the line's help: the head never waits on a slot it blocks.
            let stream = match needs_stream {
                true => Some(self.streams.clone().acquire_owned().await.ok()?),
                false => None,
            };
            let worker = worker.slot().await?;
            Some((worker, stream.map(|p| self.stream_slot(p))))
        };
        match tokio::time::timeout(self.queue_timeout, wait).await {
            Ok(Some((worker, stream))) => {
                let waited = arrived.elapsed().as_secs_f64();
                self.metrics.model_work.observe_wait(waited);
                let stream = held.or(stream);
                Ok(Admitted { worker, stream })
            }
            Ok(None) => Err(ApiError::worker_not_ready("its slots are closed")),
            Err(_) => Err(ApiError::queue_timeout(self.queue_timeout)),
        }
    }

    /// Both slots if both are free now; neither otherwise.
    fn take_free(
        &self,
        worker: &WorkerHandle,
        needs_stream: bool,
    ) -> Option<(WorkerSlot, Option<StreamSlot>)> {
        let stream = match needs_stream {
            true => Some(self.streams.clone().try_acquire_owned().ok()?),
            false => None,
        };
        let worker = worker.try_slot()?;
        Some((worker, stream.map(|p| self.stream_slot(p))))
    }

    fn stream_slot(&self, permit: OwnedSemaphorePermit) -> StreamSlot {
        StreamSlot {
            _active: self.metrics.stream_guard(),
            _permit: permit,
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
        let admission = Arc::new(Admission::new(
            &config.worker,
            &config.streams,
            metrics.clone(),
        ));
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
        let first = admission.admit(&worker, false).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..2 {
            let (worker, admission, tx) = (worker.clone(), admission.clone(), tx.clone());
            tokio::spawn(async move {
                let slot = admission.admit(&worker, false).await;
                tx.send((i, slot.is_ok())).unwrap();
                // Hold the slot a moment so the order shows.
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
            depth_becomes(&metrics, i + 1).await;
        }
        let refused = admission.admit(&worker, false).await.err().unwrap();
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
        let _held = admission.admit(&worker, false).await.unwrap();
        let e = admission.admit(&worker, false).await.err().unwrap();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(e.message.contains("worker.queue_timeout"), "{}", e.message);
        assert_eq!(metrics.model_work.queue_depth.get(), 0);
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_the_queue_at_once_and_takes_no_slot() {
        let (worker, admission, metrics) = setup("[worker]\nmax_concurrency = 1\n");
        let held = admission.admit(&worker, false).await.unwrap();
        let waiting = {
            let (worker, admission) = (worker.clone(), admission.clone());
            tokio::spawn(async move { admission.admit(&worker, false).await.is_ok() })
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
        let _held = admission.admit(&worker, false).await.unwrap();
        let e = admission.admit(&worker, false).await.err().unwrap();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn a_stream_waits_for_a_stream_slot_in_the_same_line_and_nobody_jumps_it() {
        let (worker, admission, metrics) =
            setup("[worker]\nmax_concurrency = 2\n[streams]\nmax_concurrency = 1\n");
        let open = admission.admit(&worker, true).await.unwrap();
        assert_eq!(admission.streams_open(), 1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, stream) in [(0, true), (1, false)] {
            let (worker, admission, tx) = (worker.clone(), admission.clone(), tx.clone());
            tokio::spawn(async move {
                let admitted = admission.admit(&worker, stream).await.unwrap();
                tx.send((i, admitted.stream.is_some())).unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
            depth_becomes(&metrics, i + 1).await;
        }
        // A worker slot is free, yet the plain request waits behind the stream.
        assert_eq!(worker.in_flight(), 1);
        assert!(rx.try_recv().is_err());
        drop(open);
        assert_eq!(rx.recv().await, Some((0, true)));
        assert_eq!(rx.recv().await, Some((1, false)));
        depth_becomes(&metrics, 0).await;
        assert_eq!(metrics.streams_peak(), 1);
        assert_eq!(metrics.model_work.worker_wait.get_sample_count(), 3);
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn a_stream_waiting_for_a_stream_slot_past_queue_timeout_gets_429() {
        let (worker, admission, metrics) =
            setup("[worker]\nqueue_timeout = \"50ms\"\n[streams]\nmax_concurrency = 1\n");
        let _open = admission.admit(&worker, true).await.unwrap();
        let e = admission.admit(&worker, true).await.err().unwrap();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after_secs, Some(1));
        assert!(e.message.contains("worker.queue_timeout"), "{}", e.message);
        assert_eq!(metrics.model_work.queue_depth.get(), 0);
        assert_eq!(admission.streams_open(), 1);
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn a_dropped_stream_waiter_leaves_the_queue_and_takes_no_stream_slot() {
        let (worker, admission, metrics) = setup("[streams]\nmax_concurrency = 1\n");
        let open = admission.admit(&worker, true).await.unwrap();
        let waiting = {
            let (worker, admission) = (worker.clone(), admission.clone());
            tokio::spawn(async move { admission.admit(&worker, true).await.is_ok() })
        };
        depth_becomes(&metrics, 1).await;
        waiting.abort();
        depth_becomes(&metrics, 0).await;
        drop(open);
        assert_eq!(admission.streams_open(), 0);
        assert_eq!(metrics.streams_active.get(), 0);
        assert_eq!(worker.in_flight(), 0);
        worker.shutdown().await;
    }

    #[tokio::test]
    async fn with_on_full_reject_a_stream_past_the_cap_gets_429_at_once() {
        let (worker, admission, metrics) =
            setup("[streams]\nmax_concurrency = 1\non_full = \"reject\"\n");
        let _open = admission.admit(&worker, true).await.unwrap();
        let e = admission.admit(&worker, true).await.err().unwrap();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::TOO_MANY_REQUESTS, "too_many_streams")
        );
        assert_eq!(e.retry_after_secs, Some(1));
        assert_eq!(metrics.model_work.queue_depth.get(), 0);
        // A request that is no stream still gets in.
        assert!(admission.admit(&worker, false).await.is_ok());
        worker.shutdown().await;
    }
}
