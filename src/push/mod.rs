//! The pusher: schedule → snapshot → encode → queue → transport, per destination.
//!
//! It knows nothing of the proxy or the worker: it is handed a way to take a registry
//! snapshot ([`Snapshot`], flat values per family) and a registry for its own
//! `codex_push_*` families, and delivers snapshots to each configured destination.
//!
//! [`Pushers::start`] spawns one independent loop per destination; [`PushersHandle::mark_ready`]
//! allows the first push; [`Pushers::shutdown`] makes every loop push a final snapshot
//! (remote-write: with stale markers) and waits for delivery up to a grace deadline.
//! Everything runs in its own tokio tasks, snapshots on a thread per destination: a slow or dead
//! receiver never delays the caller.

pub mod http;
pub mod pushgateway;
pub mod remote_write;
pub(crate) mod retry;
pub(crate) mod schedule;
pub(crate) mod self_metrics;
mod signal;

use std::sync::Arc;
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{PushgatewayConfig, RemoteWriteConfig};
use self_metrics::PushMetrics;
use signal::{Ready, Shutdown};

/// What the pusher delivers: the registry's values at one moment.
pub type Snapshot = crate::exposition::snapshot::Snapshot;

/// Where snapshots come from; the application passes a closure over its registry.
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot(&self) -> Snapshot;
}

impl<F> SnapshotSource for F
where
    F: Fn() -> Snapshot + Send + Sync + 'static,
{
    fn snapshot(&self) -> Snapshot {
        self()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot register the codex_push_* metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A destination cannot start; `key` names the configuration key.
    #[error("invalid config key `{key}`: {message}")]
    Config { key: String, message: String },
}

/// Consecutive failed requests after which a destination is `failing` rather than
/// `retrying`.
pub const FAILING_AFTER: u32 = 3;

/// Longest last error kept, in bytes.
pub const LAST_ERROR_MAX: usize = 512;

/// One destination's state, for `/healthz` and `/status` (docs/status.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DestinationStatus {
    /// The configured name, or `<kind>[<index>]`.
    pub destination: String,
    /// `remote_write` or `pushgateway`.
    pub kind: &'static str,
    /// The URL's scheme, host, port and path: never its credentials or query.
    pub url: String,
    /// `ok`, `retrying` (the last requests failed, fewer than [`FAILING_AFTER`]),
    /// `failing` (at least that many in a row) or `degraded` (delivering, but a durable
    /// queue fell back to memory).
    pub state: &'static str,
    /// Failed requests since the last success.
    pub consecutive_failures: u32,
    /// The last failure, sanitised (no URL credentials, no control characters) and at
    /// most [`LAST_ERROR_MAX`] bytes; kept after a success, as history.
    pub last_error: Option<String>,
    pub last_error_unix_seconds: Option<i64>,
    /// Samples accepted by the destination since start (`codex_push_samples_sent_total`).
    pub samples_sent: u64,
    /// Samples given up on since start, by reason (`codex_push_samples_dropped_total`).
    pub samples_dropped: std::collections::BTreeMap<&'static str, u64>,
    /// A backlog found in the durable queue at start, while it is being sent.
    pub backlog_replay: Option<Replay>,
    pub queued_requests: u64,
    pub queued_bytes: u64,
    /// Unix time of the oldest sample still queued, if any.
    pub oldest_queued_sample_unix_seconds: Option<i64>,
    /// The durable queue keeps batches in memory because its disk refused them.
    pub queue_degraded: bool,
    /// Requests found in the durable queue at start and sent again.
    pub replayed_requests: u64,
    /// Unix time of the last accepted push, if any.
    pub last_success_unix_seconds: Option<i64>,
    /// Remote-write: the protocol requests are made in now, `1.0` or `2.0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// Remote-write: the histograms sent, `classic`, `native` or `both`, or `classic
    /// (receiver has no native histograms)` after the receiver refused them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub histograms: Option<&'static str>,
    /// Requests sent and not answered yet.
    pub requests_in_flight: usize,
    /// How many may be in flight now (`max_in_flight`, halved by 429s, regrowing).
    pub in_flight_limit: usize,
    /// Age of the oldest sample still queued, if any.
    pub backlog_age_seconds: Option<i64>,
}

/// Progress of a backlog replay: requests delivered of those found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Replay {
    pub done: u64,
    pub total: u64,
}

impl DestinationStatus {
    pub(crate) fn new(
        destination: &str,
        kind: &'static str,
        url: &reqwest::Url,
    ) -> DestinationStatus {
        DestinationStatus {
            destination: destination.to_string(),
            kind,
            url: display_url(url),
            state: "ok",
            consecutive_failures: 0,
            last_error: None,
            last_error_unix_seconds: None,
            samples_sent: 0,
            samples_dropped: Default::default(),
            backlog_replay: None,
            queued_requests: 0,
            queued_bytes: 0,
            oldest_queued_sample_unix_seconds: None,
            queue_degraded: false,
            replayed_requests: 0,
            last_success_unix_seconds: None,
            protocol: None,
            histograms: None,
            requests_in_flight: 0,
            in_flight_limit: 1,
            backlog_age_seconds: None,
        }
    }
}

/// `state` from the other fields.
fn state_of(s: &DestinationStatus) -> &'static str {
    if s.consecutive_failures >= FAILING_AFTER {
        "failing"
    } else if s.consecutive_failures > 0 {
        "retrying"
    } else if s.queue_degraded {
        "degraded"
    } else {
        "ok"
    }
}

/// Records a failed request in `status`: `error` sanitised and bounded.
pub(crate) fn record_failure(
    status: &watch::Sender<DestinationStatus>,
    url: &reqwest::Url,
    error: &str,
) {
    let error = sanitise(error, url);
    status.send_modify(|s| {
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        s.last_error = Some(error);
        s.last_error_unix_seconds = Some(chrono::Utc::now().timestamp());
    });
}

/// Records an accepted request in `status`.
pub(crate) fn record_success(status: &watch::Sender<DestinationStatus>) {
    status.send_modify(|s| {
        s.consecutive_failures = 0;
        s.last_success_unix_seconds = Some(chrono::Utc::now().timestamp());
    });
}

/// The URL as it may be shown: scheme, host, port, path.
pub(crate) fn display_url(url: &reqwest::Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// `text` fit to be shown: the URL with credentials or query replaced by its displayable
/// form, control characters as blanks, at most [`LAST_ERROR_MAX`] bytes.
pub(crate) fn sanitise(text: &str, url: &reqwest::Url) -> String {
    let mut text = text.replace(url.as_str(), &display_url(url));
    if let Some(password) = url.password().filter(|p| !p.is_empty()) {
        text = text.replace(password, "***");
    }
    let mut out = String::with_capacity(text.len().min(LAST_ERROR_MAX));
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > LAST_ERROR_MAX {
            break;
        }
        out.push(c);
    }
    out
}

/// A destination's name in labels and logs: the configured one, else `<kind>[<index>]`
/// (never the URL, which may carry credentials).
pub(crate) fn destination_name(configured: Option<&str>, kind: &str, index: usize) -> String {
    configured.map_or_else(|| format!("{kind}[{index}]"), str::to_string)
}

/// What every destination loop is started with.
pub(crate) struct Context {
    pub(crate) source: Arc<dyn SnapshotSource>,
    pub(crate) metrics: PushMetrics,
    /// The default `instance` label (`<hostname>:<port>`), also in the Pushgateway grouping.
    pub(crate) instance: String,
    pub(crate) ready: Ready,
    pub(crate) shutdown: Shutdown,
}

/// A running destination loop.
pub(crate) struct Started {
    pub(crate) status: watch::Receiver<DestinationStatus>,
    /// Its sample counters, read into the status when it is asked for.
    pub(crate) counters: self_metrics::SampleCounters,
    pub(crate) task: JoinHandle<()>,
}

/// The running destination loops.
#[derive(Debug)]
pub struct Pushers {
    tasks: Vec<JoinHandle<()>>,
    handle: PushersHandle,
    shutdown: watch::Sender<Option<Instant>>,
}

/// A cheap, cloneable view of the pushers for the rest of the application: allow the first
/// push, read the status for `/healthz`.
#[derive(Debug, Clone)]
pub struct PushersHandle {
    ready: watch::Sender<bool>,
    statuses: Arc<
        [(
            watch::Receiver<DestinationStatus>,
            self_metrics::SampleCounters,
        )],
    >,
}

impl PushersHandle {
    /// Allows the first push (at once) and the schedule after it. Idempotent.
    pub fn mark_ready(&self) {
        self.ready.send_replace(true);
    }

    /// Whether the first push has been allowed.
    #[cfg(test)]
    pub(crate) fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Queue depth and last success of every destination, in configuration order.
    pub fn status(&self) -> Vec<DestinationStatus> {
        self.statuses
            .iter()
            .map(|(status, counters)| {
                let mut s = status.borrow().clone();
                s.state = state_of(&s);
                s.samples_sent = counters.sent();
                s.samples_dropped = counters.dropped();
                s
            })
            .collect()
    }
}

impl Pushers {
    /// Registers the `codex_push_*` families in `registry` and starts one loop per
    /// destination; none pushes before [`PushersHandle::mark_ready`]. `instance` is the
    /// default `instance` label (`<hostname>:<port>`). Must be called inside a tokio runtime.
    pub fn start(
        remote_write: &[RemoteWriteConfig],
        pushgateway: &[PushgatewayConfig],
        source: Arc<dyn SnapshotSource>,
        registry: &Registry,
        instance: &str,
    ) -> Result<Pushers, PushError> {
        let (ready, ready_rx) = watch::channel(false);
        let (shutdown, shutdown_rx) = watch::channel(None);
        let ctx = Context {
            source,
            metrics: PushMetrics::register(registry)?,
            instance: instance.to_string(),
            ready: Ready(ready_rx),
            shutdown: Shutdown(shutdown_rx),
        };
        let mut started = Vec::new();
        let mut start_all = || -> Result<(), PushError> {
            for (i, config) in remote_write.iter().enumerate() {
                started.push(remote_write::start(i, config, &ctx)?);
            }
            for (i, config) in pushgateway.iter().enumerate() {
                started.push(pushgateway::start(i, config, &ctx)?);
            }
            Ok(())
        };
        if let Err(e) = start_all() {
            for s in &started {
                s.task.abort();
            }
            return Err(e);
        }
        let (tasks, statuses): (Vec<_>, Vec<_>) = started
            .into_iter()
            .map(|s| (s.task, (s.status, s.counters)))
            .unzip();
        Ok(Pushers {
            tasks,
            handle: PushersHandle {
                ready,
                statuses: statuses.into(),
            },
            shutdown,
        })
    }

    /// A handle to mark readiness and read the status from elsewhere.
    pub fn handle(&self) -> PushersHandle {
        self.handle.clone()
    }

    /// Final push of every destination, delivered within `grace`; loops still running
    /// after it are stopped.
    pub async fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.shutdown.send_replace(Some(deadline));
        // The loops stop themselves at the deadline; a little slack lets them count
        // and log what they had to give up.
        let hard_stop = deadline + Duration::from_millis(200);
        for task in std::mem::take(&mut self.tasks) {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(hard_stop, task).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for Pushers {
    /// Without [`shutdown`](Pushers::shutdown) the loops stop at once, with no final push.
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn a_shown_url_and_error_carry_no_credentials_or_query_and_are_bounded() {
        let url = reqwest::Url::parse("https://user:s3cret@rw.example:8443/api/v1/write?token=t0k")
            .unwrap();
        assert_eq!(display_url(&url), "https://rw.example:8443/api/v1/write");
        let shown = sanitise(&format!("error sending to {url}: s3cret\nline two"), &url);
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0k"),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
        let long = sanitise(&"é".repeat(400), &url);
        assert!(long.len() <= LAST_ERROR_MAX && long.len() >= LAST_ERROR_MAX - 1);
    }

    #[test]
    fn the_state_follows_failures_then_the_queue() {
        let url = reqwest::Url::parse("http://x/").unwrap();
        let mut s = DestinationStatus::new("d", "remote_write", &url);
        assert_eq!(state_of(&s), "ok");
        s.queue_degraded = true;
        assert_eq!(state_of(&s), "degraded");
        s.consecutive_failures = 1;
        assert_eq!(state_of(&s), "retrying");
        s.consecutive_failures = FAILING_AFTER;
        assert_eq!(state_of(&s), "failing");
    }
}
