//! One `[[pushgateway]]` destination (design.md §4): the first push as soon as the proxy
//! is ready, then one on every tick of the schedule, and at shutdown a final push (or, with
//! `delete_on_shutdown`, a DELETE of the group).
//!
//! The gateway keeps only the latest push of a group, so nothing is queued: a periodic
//! push that fails is not retried (the next one carries fresher values). Only the final
//! push, or the DELETE, is retried on 5xx, timeouts and connection errors, until the
//! shutdown grace runs out.
//!
//! `group.rs` builds what is sent (grouping key, text body); `client.rs` sends it.

mod client;
mod group;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::http::HttpClient;
use super::retry::Backoff;
use super::schedule::Schedule;
use super::self_metrics::{DestinationMetrics, DropReason, Outcome};
use super::signal::{Ready, Shutdown};
use super::{Context, DestinationStatus, PushError, SnapshotSource, Started};
use crate::config::{PushMethod, PushgatewayConfig};

pub use client::{protocol_headers, Pushgateway};
pub use group::GroupingKey;

/// The destination kind, in the `kind` label and `/healthz`.
pub(crate) const KIND: &str = "pushgateway";

/// Pause before the first retry of the final push; it doubles up to the max.
const FINAL_RETRY_MIN: Duration = Duration::from_millis(100);
const FINAL_RETRY_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum PushgatewayError {
    #[error("the job name must not be empty")]
    EmptyJob,
    #[error("`{0}` is not a valid label name")]
    InvalidLabelName(String),
    #[error("`job` cannot be a grouping label: it is the job name")]
    JobInGrouping,
    #[error("metric `{family}` carries the label `{label}`, which the grouping key sets (the gateway would overwrite it)")]
    LabelCollision { family: String, label: String },
    #[error("metric `{0}` is reserved: the Pushgateway sets it for each group")]
    ReservedFamily(String),
    #[error("cannot render the text format: {0}")]
    Render(String),
    /// A credential file could not be read: the request was not sent.
    #[error("{0}")]
    Credentials(String),
    #[error("the Pushgateway answered {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("the request timed out")]
    Timeout,
    #[error("cannot reach the Pushgateway: {0}")]
    Network(String),
}

impl PushgatewayError {
    /// How the request ended, for `codex_push_requests_total`; `None` if it was never sent.
    pub(crate) fn outcome(&self) -> Option<Outcome> {
        match self {
            PushgatewayError::Rejected { status: 429, .. } => Some(Outcome::Http429),
            PushgatewayError::Rejected { status, .. } if *status >= 500 => Some(Outcome::Http5xx),
            PushgatewayError::Rejected { .. } => Some(Outcome::Http4xx),
            PushgatewayError::Timeout => Some(Outcome::Timeout),
            PushgatewayError::Network(_) => Some(Outcome::Network),
            _ => None,
        }
    }

    /// Whether the same request may succeed later: 5xx, timeouts, connection errors, and
    /// a credential file that may be fixed or rotated meanwhile.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            PushgatewayError::Rejected { status, .. } => *status >= 500,
            PushgatewayError::Timeout
            | PushgatewayError::Network(_)
            | PushgatewayError::Credentials(_) => true,
            _ => false,
        }
    }
}

/// Starts the destination's loop; the first push waits for `ctx.ready`.
pub(crate) fn start(
    index: usize,
    config: &PushgatewayConfig,
    ctx: &Context,
) -> Result<Started, PushError> {
    let name = super::destination_name(config.destination.name.as_deref(), KIND, index);
    let invalid = |field: &str, message: String| PushError::Config {
        key: format!("pushgateway[{index}]{field}"),
        message,
    };
    // The same default `instance` as remote-write's, so replicas keep groups of their own.
    let mut grouping = config.grouping.clone();
    grouping
        .entry("instance".to_string())
        .or_insert_with(|| ctx.instance.clone());
    let key = GroupingKey::new(&config.job, grouping).map_err(|e| {
        let field = if matches!(e, PushgatewayError::EmptyJob) {
            ".job"
        } else {
            ".grouping"
        };
        invalid(field, e.to_string())
    })?;
    let transport = HttpClient::for_destination(&config.destination, protocol_headers(config.gzip))
        .map_err(|e| invalid("", e.to_string()))?;
    let gateway = Pushgateway::new(transport, &config.destination.url, key, config.gzip)
        .with_histograms(config.histograms);
    let schedule = Schedule::new(
        config.destination.interval.0,
        config.destination.cron.as_deref(),
        Duration::ZERO,
    )
    .map_err(|e| {
        invalid(
            &format!(".{}", config.destination.schedule_key()),
            e.to_string(),
        )
    })?;
    let url = config.destination.url.as_url().clone();
    let (status, status_rx) = watch::channel(DestinationStatus::new(&name, KIND, &url));
    let metrics = ctx.metrics.destination(&name, KIND);
    let counters = metrics.counters();
    let dest = Destination {
        metrics,
        name,
        url,
        gateway: Arc::new(gateway),
        method: config.method,
        delete_on_shutdown: config.delete_on_shutdown,
        status,
    };
    let task = tokio::spawn(run(
        dest,
        schedule,
        ctx.source.clone(),
        ctx.ready.clone(),
        ctx.shutdown.clone(),
    ));
    Ok(Started {
        status: status_rx,
        counters,
        task,
    })
}

struct Destination {
    name: String,
    url: reqwest::Url,
    gateway: Arc<Pushgateway>,
    method: PushMethod,
    delete_on_shutdown: bool,
    metrics: DestinationMetrics,
    status: watch::Sender<DestinationStatus>,
}

/// A rendered snapshot, ready to send.
struct Body {
    bytes: Vec<u8>,
    samples: u64,
}

async fn run(
    dest: Destination,
    mut schedule: Schedule,
    source: Arc<dyn SnapshotSource>,
    mut ready: Ready,
    mut shutdown: Shutdown,
) {
    shutdown.wait_ready(&mut ready).await;
    while shutdown.next_tick(&mut schedule).await {
        // A push still in flight when shutdown begins gives way to the final one.
        tokio::select! {
            biased;
            _ = shutdown.requested() => break,
            _ = dest.push_once(&source) => {}
        }
    }
    let deadline = shutdown.requested().await;
    if dest.delete_on_shutdown {
        dest.final_attempts(deadline, "DELETE", 0, || dest.gateway.delete())
            .await;
        return;
    }
    let Some(body) = dest.snapshot(&source).await else {
        return;
    };
    let delivered = dest
        .final_attempts(deadline, "final push", body.samples, || {
            dest.gateway.send_body(dest.method, &body.bytes)
        })
        .await;
    if !delivered {
        dest.metrics.dropped(DropReason::Shutdown, body.samples);
    }
}

impl Destination {
    /// Takes and renders a snapshot on a blocking thread (a large registry takes a while).
    /// `None` when the snapshot is refused (counted and logged here).
    async fn snapshot(&self, source: &Arc<dyn SnapshotSource>) -> Option<Body> {
        let (source, gateway) = (source.clone(), self.gateway.clone());
        let work = tokio::task::spawn_blocking(move || {
            let snapshot = source.snapshot();
            let samples = snapshot.sample_count() as u64;
            (samples, gateway.render(&snapshot))
        })
        .await;
        match work {
            Ok((samples, Ok(bytes))) => Some(Body { bytes, samples }),
            Ok((samples, Err(e))) => {
                // Every later snapshot will be refused too: a configuration problem.
                self.metrics.dropped(DropReason::Rejected, samples);
                tracing::error!(destination = %self.name, error = %e, "snapshot not pushed");
                None
            }
            Err(e) => {
                tracing::error!(destination = %self.name, error = %e, "snapshot failed");
                None
            }
        }
    }

    async fn push_once(&self, source: &Arc<dyn SnapshotSource>) {
        let Some(body) = self.snapshot(source).await else {
            return;
        };
        let result = self.gateway.send_body(self.method, &body.bytes).await;
        self.record(&result, body.samples);
        match result {
            Ok(()) => tracing::debug!(destination = %self.name, samples = body.samples, "pushed"),
            Err(e) => {
                if !e.is_retryable() {
                    self.metrics.dropped(DropReason::Rejected, body.samples);
                }
                tracing::warn!(destination = %self.name, error = %e, "push failed; the next push carries fresher values");
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or `deadline` passes; whether it
    /// succeeded or was refused for good (counted as rejected, then).
    async fn final_attempts<F, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        samples: u64,
        attempt: F,
    ) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), PushgatewayError>>,
    {
        let mut backoff = Backoff::new(FINAL_RETRY_MIN, FINAL_RETRY_MAX);
        let mut failures = 0u32;
        loop {
            if failures > 0 {
                self.metrics.retried(samples);
            }
            let result = tokio::time::timeout_at(deadline, attempt())
                .await
                .unwrap_or(Err(PushgatewayError::Timeout));
            self.record(&result, samples);
            let error = match result {
                Ok(()) => {
                    tracing::info!(destination = %self.name, failures, "{what} done");
                    return true;
                }
                Err(e) => e,
            };
            failures += 1;
            if !error.is_retryable() {
                self.metrics.dropped(DropReason::Rejected, samples);
                tracing::error!(destination = %self.name, error = %error, "{what} refused");
                return true;
            }
            let pause = backoff.next_delay();
            if Instant::now() + pause >= deadline {
                tracing::error!(destination = %self.name, error = %error, failures, "{what} failed; shutdown grace over");
                return false;
            }
            tracing::warn!(destination = %self.name, error = %error, "{what} failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }

    /// Counts a request (if it was sent) and a success.
    fn record(&self, result: &Result<(), PushgatewayError>, samples: u64) {
        match result {
            Ok(()) => {
                self.metrics.request(Outcome::Success);
                self.metrics.sent(samples);
                crate::push::record_success(&self.status);
            }
            Err(e) => {
                if let Some(outcome) = e.outcome() {
                    self.metrics.request(outcome);
                }
                crate::push::record_failure(&self.status, &self.url, &e.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_and_retryability_follow_the_status() {
        let rejected = |status| PushgatewayError::Rejected {
            status,
            message: String::new(),
        };
        assert_eq!(rejected(400).outcome(), Some(Outcome::Http4xx));
        assert!(!rejected(400).is_retryable());
        assert_eq!(rejected(429).outcome(), Some(Outcome::Http429));
        assert_eq!(rejected(503).outcome(), Some(Outcome::Http5xx));
        assert!(rejected(503).is_retryable());
        assert!(PushgatewayError::Timeout.is_retryable());
        assert_eq!(
            PushgatewayError::Network("x".into()).outcome(),
            Some(Outcome::Network)
        );
        assert_eq!(PushgatewayError::EmptyJob.outcome(), None, "never sent");
        assert!(!PushgatewayError::ReservedFamily("x".into()).is_retryable());
    }
}
