//! The pusher's own `codex_push_*` families (docs/metrics.md). They live in the same
//! registry as everything else, so they show in `/metrics` and are pushed too.
//!
//! `destination` is the configured name or `<kind>[<index>]`, never a URL (it could carry
//! credentials). `kind` is `remote_write` or `pushgateway`.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// `outcome` values of `codex_push_requests_total`.
pub(crate) const OUTCOMES: [&str; 6] = [
    "success", "http_4xx", "http_429", "http_5xx", "timeout", "network",
];

/// `reason` values of `codex_push_samples_dropped_total`.
pub(crate) const DROP_REASONS: [&str; 6] = [
    "rejected",     // a 4xx other than 429: the receiver will never take it
    "rate_limited", // a 429 with retry_on_429 = false
    "queue_full",   // the oldest requests, pushed out by max_queue_bytes
    "corrupt",      // a torn or corrupt record found in the durable queue
    "shutdown",     // still queued in memory when the shutdown grace ran out
    "too_old",      // older than max_sample_age when it would have been sent
];

#[derive(Clone)]
pub(crate) struct PushMetrics {
    /// HTTP requests to destinations, by outcome.
    pub(crate) requests: IntCounterVec,
    pub(crate) samples_sent: IntCounterVec,
    pub(crate) samples_retried: IntCounterVec,
    pub(crate) samples_dropped: IntCounterVec,
    /// Samples of requests answered 2xx that the receiver says it did not write
    /// (remote-write 2.0's `X-Prometheus-Remote-Write-Samples-Written`).
    pub(crate) samples_rejected: IntCounterVec,
    pub(crate) queue_bytes: IntGaugeVec,
    pub(crate) queue_requests: IntGaugeVec,
    /// Timestamp (seconds) of the oldest sample still queued; 0 when the queue is empty.
    pub(crate) queue_oldest_sample_timestamp: IntGaugeVec,
    /// 1 when a durable queue fell back to memory (unwritable or full disk).
    pub(crate) queue_degraded: IntGaugeVec,
    /// Requests found in the durable queue at start and sent again.
    pub(crate) replayed_requests: IntCounterVec,
    pub(crate) last_success_timestamp: IntGaugeVec,
    /// Age of the oldest queued sample; 0 when the queue is empty.
    pub(crate) queue_oldest_sample_age: IntGaugeVec,
    pub(crate) requests_in_flight: IntGaugeVec,
    /// The current in-flight limit (`max_in_flight`, halved by 429s, regrowing).
    pub(crate) in_flight_limit: IntGaugeVec,
}

impl PushMetrics {
    pub(crate) fn register(registry: &Registry) -> Result<PushMetrics, prometheus::Error> {
        let dest = &["destination", "kind"];
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge = |name: &str, help: &str| -> Result<IntGaugeVec, prometheus::Error> {
            let g = IntGaugeVec::new(Opts::new(name, help), dest)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(PushMetrics {
            requests: counter(
                "codex_push_requests_total",
                "Push HTTP requests by outcome.",
                &["destination", "kind", "outcome"],
            )?,
            samples_sent: counter(
                "codex_push_samples_sent_total",
                "Samples accepted by the destination.",
                dest,
            )?,
            samples_retried: counter(
                "codex_push_samples_retried_total",
                "Samples sent again after a retryable failure.",
                dest,
            )?,
            samples_dropped: counter(
                "codex_push_samples_dropped_total",
                "Samples given up on, by reason.",
                &["destination", "kind", "reason"],
            )?,
            samples_rejected: counter(
                "codex_push_samples_rejected_total",
                "Samples of accepted requests that the receiver says it did not write.",
                dest,
            )?,
            queue_bytes: gauge(
                "codex_push_queue_bytes",
                "Bytes of encoded requests waiting.",
            )?,
            queue_requests: gauge("codex_push_queue_requests", "Encoded requests waiting.")?,
            queue_oldest_sample_timestamp: gauge(
                "codex_push_queue_oldest_sample_timestamp_seconds",
                "Unix time of the oldest queued sample; 0 when the queue is empty.",
            )?,
            queue_degraded: gauge(
                "codex_push_queue_degraded",
                "1 when the durable queue fell back to memory.",
            )?,
            replayed_requests: counter(
                "codex_push_replayed_requests_total",
                "Requests found in the durable queue at start-up and sent again.",
                dest,
            )?,
            last_success_timestamp: gauge(
                "codex_push_last_success_timestamp_seconds",
                "Unix time of the last accepted push.",
            )?,
            queue_oldest_sample_age: gauge(
                "codex_push_queue_oldest_sample_age_seconds",
                "Age of the oldest queued sample when the queue last changed; 0 when empty.",
            )?,
            requests_in_flight: gauge(
                "codex_push_requests_in_flight",
                "Requests sent and not answered yet.",
            )?,
            in_flight_limit: gauge(
                "codex_push_in_flight_limit",
                "Requests allowed in flight now: max_in_flight, halved by 429s, regrowing.",
            )?,
        })
    }
}

/// How one push request ended; the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Success,
    Http4xx,
    Http429,
    Http5xx,
    Timeout,
    Network,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        OUTCOMES[self as usize]
    }
}

/// Why samples were given up on; the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    Rejected,
    RateLimited,
    QueueFull,
    Corrupt,
    Shutdown,
    TooOld,
}

/// The children of one destination, bound once: every outcome and reason shows from the
/// start (as 0), and recording costs no label lookup.
pub(crate) struct DestinationMetrics {
    requests: Vec<IntCounter>,
    samples_sent: IntCounter,
    samples_retried: IntCounter,
    samples_dropped: Vec<IntCounter>,
    samples_rejected: IntCounter,
    queue_bytes: IntGauge,
    queue_requests: IntGauge,
    queue_oldest_sample_timestamp: IntGauge,
    pub(crate) queue_degraded: IntGauge,
    pub(crate) replayed_requests: IntCounter,
    last_success_timestamp: IntGauge,
    queue_oldest_sample_age: IntGauge,
    requests_in_flight: IntGauge,
    in_flight_limit: IntGauge,
}

impl PushMetrics {
    /// `destination` is the configured name or `<kind>[<index>]`.
    pub(crate) fn destination(&self, destination: &str, kind: &str) -> DestinationMetrics {
        let d = [destination, kind];
        DestinationMetrics {
            requests: OUTCOMES
                .iter()
                .map(|o| self.requests.with_label_values(&[destination, kind, o]))
                .collect(),
            samples_sent: self.samples_sent.with_label_values(&d),
            samples_retried: self.samples_retried.with_label_values(&d),
            samples_dropped: DROP_REASONS
                .iter()
                .map(|r| {
                    self.samples_dropped
                        .with_label_values(&[destination, kind, r])
                })
                .collect(),
            samples_rejected: self.samples_rejected.with_label_values(&d),
            queue_bytes: self.queue_bytes.with_label_values(&d),
            queue_requests: self.queue_requests.with_label_values(&d),
            queue_oldest_sample_timestamp: self.queue_oldest_sample_timestamp.with_label_values(&d),
            queue_degraded: self.queue_degraded.with_label_values(&d),
            replayed_requests: self.replayed_requests.with_label_values(&d),
            last_success_timestamp: self.last_success_timestamp.with_label_values(&d),
            queue_oldest_sample_age: self.queue_oldest_sample_age.with_label_values(&d),
            requests_in_flight: self.requests_in_flight.with_label_values(&d),
            in_flight_limit: self.in_flight_limit.with_label_values(&d),
        }
    }
}

/// A destination's sample counters, for its status: the counters are the one record of
/// what was sent and dropped.
#[derive(Debug, Clone)]
pub(crate) struct SampleCounters {
    sent: IntCounter,
    dropped: Vec<IntCounter>,
}

impl SampleCounters {
    pub(crate) fn sent(&self) -> u64 {
        self.sent.get()
    }

    /// Samples dropped, by reason (every reason, 0 included).
    pub(crate) fn dropped(&self) -> std::collections::BTreeMap<&'static str, u64> {
        DROP_REASONS
            .iter()
            .zip(&self.dropped)
            .map(|(reason, c)| (*reason, c.get()))
            .collect()
    }
}

impl DestinationMetrics {
    pub(crate) fn counters(&self) -> SampleCounters {
        SampleCounters {
            sent: self.samples_sent.clone(),
            dropped: self.samples_dropped.clone(),
        }
    }

    pub(crate) fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].inc();
    }

    /// Samples the destination accepted, now.
    pub(crate) fn sent(&self, samples: u64) {
        self.samples_sent.inc_by(samples);
        self.last_success_timestamp
            .set(chrono::Utc::now().timestamp());
    }

    pub(crate) fn retried(&self, samples: u64) {
        self.samples_retried.inc_by(samples);
    }

    /// Samples a receiver answered 2xx to without writing them.
    pub(crate) fn rejected(&self, samples: u64) {
        self.samples_rejected.inc_by(samples);
    }

    pub(crate) fn dropped(&self, reason: DropReason, samples: u64) {
        self.samples_dropped[reason as usize].inc_by(samples);
    }

    /// Samples sent and dropped (every reason) so far.
    pub(crate) fn totals(&self) -> (u64, u64) {
        let dropped = self.samples_dropped.iter().map(IntCounter::get).sum();
        (self.samples_sent.get(), dropped)
    }

    pub(crate) fn queue(&self, stats: &super::remote_write::queue::QueueStats, now_ms: i64) {
        self.queue_bytes.set(clamp_i64(stats.bytes));
        self.queue_requests.set(clamp_i64(stats.requests));
        let oldest_secs = stats
            .oldest_timestamp_ms
            .map_or(0, |ms| ms.div_euclid(1000));
        self.queue_oldest_sample_timestamp.set(oldest_secs);
        self.queue_oldest_sample_age.set(
            stats
                .oldest_timestamp_ms
                .map_or(0, |ms| (now_ms - ms).max(0).div_euclid(1000)),
        );
        self.queue_degraded.set(i64::from(stats.degraded));
    }

    pub(crate) fn window(&self, in_flight: usize, limit: usize) {
        self.requests_in_flight.set(clamp_i64(in_flight as u64));
        self.in_flight_limit.set(clamp_i64(limit as u64));
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(registry: &Registry, name: &str, label: (&str, &str)) -> Option<f64> {
        registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .find(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == label.0 && l.value() == label.1)
            })
            .map(|m| m.get_counter().get_value())
    }

    #[test]
    fn every_outcome_and_reason_shows_from_the_start_and_counts_apart() {
        let registry = Registry::new();
        let d = PushMetrics::register(&registry)
            .unwrap()
            .destination("primary", "remote_write");
        for o in OUTCOMES {
            assert_eq!(
                value(&registry, "codex_push_requests_total", ("outcome", o)),
                Some(0.0)
            );
        }
        d.request(Outcome::Http429);
        d.dropped(DropReason::QueueFull, 7);
        assert_eq!(Outcome::Http429.as_str(), "http_429");
        let requests = |o| value(&registry, "codex_push_requests_total", ("outcome", o));
        assert_eq!(requests("http_429"), Some(1.0));
        assert_eq!(requests("http_4xx"), Some(0.0));
        let dropped = |r| value(&registry, "codex_push_samples_dropped_total", ("reason", r));
        assert_eq!(dropped("queue_full"), Some(7.0));
        assert_eq!(dropped("rejected"), Some(0.0));
    }
}
