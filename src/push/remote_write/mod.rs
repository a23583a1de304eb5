//! One `[[remote_write]]` destination: two tasks around its queue.
//!
//! - The **producer** waits for ready, then on every tick of the schedule takes a snapshot,
//!   turns it into encoded batches (`series.rs`, `encode.rs`) and appends them to the queue,
//!   all on a thread of its own so that a large registry never stalls the proxy's runtime.
//!   On shutdown it adds the final snapshot and the stale markers of every series.
//! - The **sender** sends the front batch, and removes it only once delivered or
//!   deliberately dropped. Failures are retried with backoff while newer batches wait
//!   behind, in order; once the receiver is back, the backlog drains back to back.
//!
//! Only the queue is shared: a slow or dead receiver delays nothing but this sender, and
//! the queue's byte cap bounds what it costs.
//!
//! Requests are made in the protocol `negotiate.rs` says (1.0 or 2.0, `encode.rs` and
//! `encode_v2.rs`); a queued 2.0 batch meets a destination that fell back to 1.0 (or a
//! queued native histogram one that turned to classic) only in the sender, which converts
//! it (`transcode.rs`) before each attempt (`attempt.rs`, which also judges the answer).

mod attempt;
pub mod encode;
mod encode_v2;
mod histograms;
mod lanes;
pub mod negotiate;
pub mod proto;
pub(crate) mod queue;
mod requests;
mod sender;
pub mod series;
mod snapshot_thread;
mod staleness;
mod transcode;
mod window;
mod wire;

pub(crate) use transcode::to_v1;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::Url;
use tokio::sync::{watch, Notify};

use super::http::{HttpClient, USER_AGENT};
use super::schedule::Schedule;
use super::self_metrics::{DestinationMetrics, DropReason};
use super::signal::{Ready, Shutdown};
use super::{Context, DestinationStatus, PushError, Started};
use crate::config::{HistogramMode, RemoteWriteConfig};
use negotiate::{Negotiation, Protocol};
use queue::durable::DurableQueue;
use queue::memory::MemoryQueue;
use queue::{Queue, QueueStats};
use series::SeriesState;
use snapshot_thread::SnapshotThread;

/// The destination kind, in the `kind` label and `/healthz`.
pub(crate) const KIND: &str = "remote_write";

/// Starts the destination's tasks; the first snapshot waits for `ctx.ready`.
pub(crate) fn start(
    index: usize,
    config: &RemoteWriteConfig,
    ctx: &Context,
) -> Result<Started, PushError> {
    let name = super::destination_name(config.destination.name.as_deref(), KIND, index);
    let key = |field: &str| format!("remote_write[{index}].{field}");
    let transport =
        HttpClient::for_destination(&config.destination, protocol_headers()).map_err(|e| {
            PushError::Config {
                key: format!("remote_write[{index}]"),
                message: e.to_string(),
            }
        })?;
    let schedule = Schedule::new(
        config.destination.interval.0,
        config.destination.cron.as_deref(),
        config.jitter.0,
    )
    .map_err(|e| PushError::Config {
        key: key(config.destination.schedule_key()),
        message: e.to_string(),
    })?;
    let series = SeriesState::new(
        &config.external_labels,
        &ctx.instance,
        config.max_series_per_request,
    )
    .with_histograms(config.histograms, config.send_exemplars);
    let snapshots =
        SnapshotThread::spawn(format!("push-{index}")).map_err(|e| PushError::Config {
            key: format!("remote_write[{index}]"),
            message: format!("cannot start the snapshot thread: {e}"),
        })?;
    let metrics = ctx.metrics.destination(&name, KIND);
    let queue = open_queue(config, &metrics);
    let negotiation = Negotiation::open(
        config.protocol,
        config.queue_dir.as_deref(),
        config.destination.url.as_url(),
        &name,
    );
    let initial = queue.stats();
    metrics.queue(&initial, chrono::Utc::now().timestamp_millis());
    let replayed = metrics.replayed_requests.get();
    let (status, status_rx) = watch::channel(DestinationStatus {
        replayed_requests: replayed,
        protocol: Some(negotiation.current().as_str()),
        backlog_replay: (replayed > 0).then_some(super::Replay {
            done: 0,
            total: replayed,
        }),
        histograms: Some(config.histograms.as_str()),
        ..DestinationStatus::new(&name, KIND, config.destination.url.as_url())
    });
    if replayed > 0 {
        tokio::spawn(log_replay(name.clone(), status_rx.clone()));
    }
    let counters = metrics.counters();
    let dest = Arc::new(Destination {
        name,
        url: config.destination.url.as_url().clone(),
        transport,
        retry_on_429: config.retry_on_429,
        min_backoff: config.min_backoff.0,
        max_backoff: config.max_backoff.0,
        queue: Arc::new(Mutex::new(queue)),
        on_disk: config.queue_dir.is_some(),
        metrics,
        status,
        wake: Notify::new(),
        producer_done: AtomicBool::new(false),
        negotiation,
        native_refused: AtomicBool::new(false),
        native_until_ms: AtomicI64::new(i64::MAX),
        exemplars_short: AtomicBool::new(false),
        native_only: config.histograms == HistogramMode::Native,
    });
    dest.publish(&initial);
    let producer = tokio::spawn(produce(
        dest.clone(),
        snapshots,
        series,
        schedule,
        ctx.source.clone(),
        ctx.ready.clone(),
        ctx.shutdown.clone(),
    ));
    let limits = window::Limits::new(
        config.max_in_flight,
        config.max_sample_age.map(|a| a.0),
        config.max_bytes_per_second.map(|b| b.0),
        config.max_queue_bytes.0,
    );
    let sender = tokio::spawn(sender::send(dest, limits, ctx.shutdown.clone()));
    let task = tokio::spawn(async move {
        // Aborting this task (the pushers dropped without a shutdown) stops both at once,
        // so that the queue is closed as after a kill.
        let _stop = AbortOnDrop([producer.abort_handle(), sender.abort_handle()]);
        // A panic in either is a bug; it must not take the proxy down, only this pusher.
        let _ = producer.await;
        let _ = sender.await;
    });
    Ok(Started {
        status: status_rx,
        counters,
        task,
    })
}

/// How often the progress of a backlog replay is logged.
const REPLAY_LOG_EVERY: Duration = Duration::from_secs(5);

/// Logs a backlog replay's progress every [`REPLAY_LOG_EVERY`] until it is done (or the
/// destination is gone).
async fn log_replay(name: String, status: watch::Receiver<DestinationStatus>) {
    let mut tick = tokio::time::interval(REPLAY_LOG_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        if status.has_changed().is_err() {
            return;
        }
        let Some(replay) = status.borrow().backlog_replay else {
            tracing::info!(destination = %name, "backlog replayed");
            return;
        };
        tracing::info!(
            destination = %name,
            done = replay.done,
            total = replay.total,
            "replaying the backlog found at start: {} of {} requests delivered",
            replay.done,
            replay.total
        );
    }
}

/// For `check-config`: the protocol each `[[remote_write]]` would make its requests in now,
/// with `auto`'s choice as kept in its `queue_dir`.
pub fn protocols_in_use(configs: &[RemoteWriteConfig]) -> Vec<String> {
    use crate::config::RemoteWriteProtocol as Configured;
    configs
        .iter()
        .enumerate()
        .map(|(index, config)| {
            let name = super::destination_name(config.destination.name.as_deref(), KIND, index);
            let protocol = Negotiation::open(
                config.protocol,
                config.queue_dir.as_deref(),
                config.destination.url.as_url(),
                &name,
            )
            .current();
            let how = match (config.protocol, protocol) {
                (Configured::Auto, Protocol::V1) => ", negotiated before (kept in queue_dir)",
                (Configured::Auto, Protocol::V2) => {
                    ", until the receiver shows it does not understand 2.0"
                }
                _ => "",
            };
            format!(
                "remote_write {name}: protocol in use: remote-write {}{how}",
                protocol.as_str()
            )
        })
        .collect()
}

struct AbortOnDrop([tokio::task::AbortHandle; 2]);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The headers remote-write 1.0 requires on every request; configured ones never override them.
/// A request in 2.0 replaces the type and version with its own (`Protocol::headers`).
pub(crate) fn protocol_headers() -> HeaderMap {
    let mut h = Protocol::V1.headers();
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    h
}

/// The queue of this destination. What a durable queue found at start is counted here:
/// requests to replay, corrupt records skipped, requests over a lowered cap.
fn open_queue(config: &RemoteWriteConfig, metrics: &DestinationMetrics) -> Box<dyn Queue> {
    let Some(dir) = &config.queue_dir else {
        return Box::new(MemoryQueue::new(config.max_queue_bytes.0));
    };
    let (queue, recovery) = DurableQueue::open(dir, config.max_queue_bytes.0);
    count_recovery(metrics, &recovery);
    Box::new(queue)
}

fn count_recovery(metrics: &DestinationMetrics, recovery: &queue::disk::Recovery) {
    metrics.replayed_requests.inc_by(recovery.replayed.requests);
    metrics.dropped(DropReason::Corrupt, recovery.corrupt.samples);
    metrics.dropped(DropReason::QueueFull, recovery.over_cap.samples);
}

type SharedQueue = Arc<Mutex<Box<dyn Queue>>>;

struct Destination {
    name: String,
    url: Url,
    transport: HttpClient,
    retry_on_429: bool,
    min_backoff: Duration,
    max_backoff: Duration,
    queue: SharedQueue,
    /// Whether queue operations may touch files (`queue_dir` is set).
    on_disk: bool,
    metrics: DestinationMetrics,
    status: watch::Sender<DestinationStatus>,
    /// Wakes the sender when the producer queued something or finished.
    wake: Notify,
    producer_done: AtomicBool,
    negotiation: Negotiation,
    /// The receiver refused native histograms: classic only from now on.
    native_refused: AtomicBool,
    /// The newest timestamp of a request that may hold native histograms (every one until
    /// the producer has switched to classic): such queued requests are sent without them.
    native_until_ms: AtomicI64,
    /// A 2.0 receiver stored fewer exemplars than sent (logged once).
    exemplars_short: AtomicBool,
    /// `histograms = "native"`: requests hold no classic series of the native ones, so a
    /// refused native series is sent as its classic `_count` and `_sum`.
    native_only: bool,
}

impl Destination {
    /// Runs `op` on the queue: on a blocking thread when the queue is on disk (file I/O),
    /// in place when it is in memory (a thread hop would cost more than the operation).
    async fn with_queue<R: Send + 'static>(
        &self,
        op: impl FnOnce(&mut dyn Queue) -> R + Send + 'static,
    ) -> Option<R> {
        let queue = self.queue.clone();
        let run = move || {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            let out = op(q.as_mut());
            (out, q.stats())
        };
        let joined = if self.on_disk {
            tokio::task::spawn_blocking(run).await
        } else {
            Ok(run())
        };
        match joined {
            Ok((out, stats)) => {
                self.publish(&stats);
                Some(out)
            }
            Err(e) => {
                tracing::error!(destination = %self.name, error = %e, "queue operation failed");
                None
            }
        }
    }

    /// Queue depth to the gauges and `/healthz`.
    fn publish(&self, stats: &QueueStats) {
        let now_ms = chrono::Utc::now().timestamp_millis();
        self.metrics.queue(stats, now_ms);
        self.status.send_modify(|s| {
            s.queued_requests = stats.requests;
            s.queued_bytes = stats.bytes;
            s.oldest_queued_sample_unix_seconds =
                stats.oldest_timestamp_ms.map(|ms| ms.div_euclid(1000));
            s.backlog_age_seconds = stats
                .oldest_timestamp_ms
                .map(|ms| (now_ms - ms).max(0).div_euclid(1000));
            s.queue_degraded = stats.degraded;
        });
    }

    /// `acks` more requests delivered, in queue order: the first ones are the backlog.
    fn acknowledged(&self, acks: usize) {
        self.status.send_if_modified(|s| {
            let Some(replay) = &mut s.backlog_replay else {
                return false;
            };
            replay.done = (replay.done + acks as u64).min(replay.total);
            if replay.done == replay.total {
                s.backlog_replay = None;
            }
            true
        });
    }

    /// The receiver does not take native histograms (`why`): classic only from now on,
    /// logged once naming Prometheus' flag, shown in `/healthz`.
    fn refuse_native(&self, why: &str) {
        if self.native_refused.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(destination = %self.name, why, "receiver refused native histograms (Prometheus: start it with --enable-feature=native-histograms): classic histograms only for the life of the process; queued requests are sent without native histograms");
        self.status
            .send_modify(|s| s.histograms = Some("classic (receiver has no native histograms)"));
    }

    /// Requests in flight and the current limit to the gauges and `/healthz`.
    fn publish_window(&self, in_flight: usize, limit: usize) {
        self.metrics.window(in_flight, limit);
        self.status.send_if_modified(|s| {
            let changed = s.requests_in_flight != in_flight || s.in_flight_limit != limit;
            s.requests_in_flight = in_flight;
            s.in_flight_limit = limit;
            changed
        });
    }
}

/// The producer task.
async fn produce(
    dest: Arc<Destination>,
    snapshots: SnapshotThread,
    series: SeriesState,
    mut schedule: Schedule,
    source: Arc<dyn super::SnapshotSource>,
    mut ready: Ready,
    mut shutdown: Shutdown,
) {
    let series = Arc::new(Mutex::new(series));
    shutdown.wait_ready(&mut ready).await;
    while shutdown.next_tick(&mut schedule).await {
        snapshot(&dest, &snapshots, &series, &source, false).await;
    }
    snapshot(&dest, &snapshots, &series, &source, true).await;
    dest.producer_done.store(true, Ordering::Release);
    dest.wake.notify_one();
}

/// Takes one snapshot and queues its batches (the final one with every stale marker).
async fn snapshot(
    dest: &Arc<Destination>,
    snapshots: &SnapshotThread,
    series: &Arc<Mutex<SeriesState>>,
    source: &Arc<dyn super::SnapshotSource>,
    final_push: bool,
) {
    let (source, series, queue) = (source.clone(), series.clone(), dest.queue.clone());
    let protocol = dest.negotiation.current();
    let native_refused = dest.native_refused.load(Ordering::Acquire);
    let dest_for_work = dest.clone();
    let work = snapshots
        .run(move || {
            let snapshot = source.snapshot();
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut state = series.lock().unwrap_or_else(PoisonError::into_inner);
            state.set_protocol(protocol);
            if native_refused && state.histogram_mode() != HistogramMode::Classic {
                state.classic_only();
                let until = state.last_timestamp_ms().unwrap_or(i64::MIN);
                dest_for_work
                    .native_until_ms
                    .store(until, Ordering::Release);
            }
            let converted = if final_push {
                state.convert_final(&snapshot, now_ms)
            } else {
                state.convert(&snapshot, now_ms)
            };
            drop(snapshot);
            let converted = converted?;
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            let mut dropped = queue::Dropped::default();
            for batch in converted.batches {
                let d = q.push(batch);
                dropped.requests += d.requests;
                dropped.samples += d.samples;
            }
            Ok::<_, encode::EncodeError>((converted.invalid_samples, dropped, q.stats()))
        })
        .await;
    match work {
        Some(Ok((invalid, dropped, stats))) => {
            if invalid > 0 {
                tracing::warn!(destination = %dest.name, samples = invalid, "samples left out: metric or label name not valid for remote-write");
                dest.metrics.dropped(DropReason::Rejected, invalid);
            }
            if dropped.requests > 0 {
                tracing::warn!(destination = %dest.name, requests = dropped.requests, samples = dropped.samples, "queue full: oldest requests dropped");
                dest.metrics.dropped(DropReason::QueueFull, dropped.samples);
            }
            tracing::debug!(destination = %dest.name, queued_requests = stats.requests, "snapshot queued");
            dest.publish(&stats);
            dest.wake.notify_one();
        }
        Some(Err(e)) => {
            tracing::error!(destination = %dest.name, error = %e, "snapshot not queued")
        }
        None => tracing::error!(destination = %dest.name, "snapshot failed"),
    }
}

/// What to do with a request after one attempt.
enum Verdict {
    Delivered,
    Drop(DropReason),
    /// Send it again, after the receiver's `Retry-After` if it gave one; `rate_limited`
    /// after a 429 (the in-flight limit shrinks).
    Retry {
        after: Option<Duration>,
        rate_limited: bool,
    },
    /// The receiver does not understand 2.0 (the reason why): fall back to 1.0 and send
    /// the same batch again, as 1.0, at once.
    FallBack(&'static str),
    /// The receiver does not take native histograms (and stored nothing of the request):
    /// classic only from now on, and the same batch again at once, without them.
    ClassicOnly,
}

/// Empties the queue; returns the samples it held.
fn drain(q: &mut dyn Queue) -> u64 {
    let mut samples = 0;
    while let Some(b) = q.front() {
        samples += b.samples;
        q.ack();
    }
    samples
}
