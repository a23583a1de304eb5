//! The last hour of `/status`, at 10 s resolution: a sampler task reads the registry's
//! snapshot (the same one `/metrics` renders) and the pushers' status every
//! [`INTERVAL`], turns counters into rates between two readings, and keeps at most
//! [`POINTS`] points. Recording a request costs nothing more: nothing here is on the
//! request path.
//!
//! A point is a fixed set of `f32`s (NaN where there is no value, e.g. a time to first
//! token when no turn started) plus three per push destination;
//! [`History::memory_bytes`] says what the ring holds.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::exposition::snapshot::Snapshot;
use crate::metrics::model_work::TOKEN_KINDS;
use crate::push::DestinationStatus;

/// Time between two points.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// Points kept: one hour.
pub(crate) const POINTS: usize = 360;
/// The `status_family` values charted.
pub(crate) const FAMILIES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// One point of the history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Point {
    /// Unix seconds of the reading.
    pub(crate) t: i64,
    /// Requests per second by status family, in [`FAMILIES`]' order.
    pub(crate) requests_per_second: [f32; 4],
    /// 5xx of all requests in the interval, 0 to 1 (0 without requests).
    pub(crate) error_ratio: f32,
    pub(crate) streams_active: f32,
    /// Time to first token in seconds, p50 and p95 of the turns that started streaming in
    /// the interval (NaN, shown as `null`, when none did).
    pub(crate) ttft_p50_seconds: f32,
    pub(crate) ttft_p95_seconds: f32,
    /// Tokens per second by kind, in `TOKEN_KINDS`' order.
    pub(crate) tokens_per_second: [f32; 5],
    /// Per destination, in configuration order: queued bytes, queued requests, age of
    /// the oldest queued sample in seconds.
    pub(crate) destinations: Vec<[f32; 3]>,
}

/// Counter totals of one reading, to take rates against the next.
#[derive(Debug, Clone, Default)]
struct Totals {
    requests: [f64; 4],
    tokens: [f64; 5],
    /// Cumulative bucket counts of the time to first token, summed over its series, then
    /// the total count.
    ttft: Vec<f64>,
    ttft_bounds: Vec<f64>,
}

/// The ring of points. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    points: VecDeque<Point>,
    last: Option<(i64, Totals)>,
}

impl History {
    /// The points, oldest first.
    pub(crate) fn points(&self) -> Vec<Point> {
        self.lock().points.iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes the ring holds now (points and their destination vectors).
    pub(crate) fn memory_bytes(&self) -> usize {
        let inner = self.lock();
        inner.points.capacity() * size_of::<Point>()
            + inner
                .points
                .iter()
                .map(|p| p.destinations.capacity() * size_of::<[f32; 3]>())
                .sum::<usize>()
    }

    /// Takes one reading at unix second `now`. The first reading only sets the baseline
    /// of the counters.
    pub(crate) fn record(&self, now: i64, snapshot: &Snapshot, push: &[DestinationStatus]) {
        let totals = totals(snapshot);
        let streams = gauge(snapshot, "codex_streams_active");
        let destinations = push
            .iter()
            .map(|d| {
                [
                    d.queued_bytes as f32,
                    d.queued_requests as f32,
                    d.backlog_age_seconds.unwrap_or(0) as f32,
                ]
            })
            .collect();
        let mut inner = self.lock();
        let previous = inner.last.replace((now, totals.clone()));
        let Some((then, before)) = previous else {
            return;
        };
        let seconds = (now - then).max(1) as f64;
        let rate = |a: f64, b: f64| (((a - b).max(0.0)) / seconds) as f32;
        let requests_per_second =
            std::array::from_fn(|i| rate(totals.requests[i], before.requests[i]));
        let all: f64 = (0..4)
            .map(|i| totals.requests[i] - before.requests[i])
            .sum();
        let errors = totals.requests[3] - before.requests[3];
        let (p50, p95) = ttft_quantiles(&totals, &before);
        let point = Point {
            t: now,
            requests_per_second,
            error_ratio: if all > 0.0 {
                (errors / all) as f32
            } else {
                0.0
            },
            streams_active: streams as f32,
            ttft_p50_seconds: p50,
            ttft_p95_seconds: p95,
            tokens_per_second: std::array::from_fn(|i| rate(totals.tokens[i], before.tokens[i])),
            destinations,
        };
        if inner.points.len() == POINTS {
            inner.points.pop_front();
        }
        inner.points.push_back(point);
    }

    /// Fills the ring with `POINTS` points (benchmarks: a full hour).
    pub(crate) fn fill_for_bench(&self, destinations: usize) {
        let mut inner = self.lock();
        inner.points = (0..POINTS)
            .map(|i| {
                let x = i as f32;
                Point {
                    t: 1_700_000_000 + 10 * i as i64,
                    requests_per_second: [x.sin() + 2.0, 0.1, 0.3, 0.05],
                    error_ratio: 0.02,
                    streams_active: (i % 7) as f32,
                    ttft_p50_seconds: 0.4,
                    ttft_p95_seconds: 1.2 + (x / 50.0).cos(),
                    tokens_per_second: [120.0, 30.0, 0.0, 80.0 + x, 10.0],
                    destinations: vec![[4096.0 * x, x, 12.0]; destinations],
                }
            })
            .collect();
    }
}

/// Runs the sampler until the runtime ends: a reading now, then every [`INTERVAL`].
pub(crate) fn spawn_sampler(
    history: History,
    snapshot: impl Fn() -> Snapshot + Send + 'static,
    push: impl Fn() -> Vec<DestinationStatus> + Send + 'static,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            history.record(chrono::Utc::now().timestamp(), &snapshot(), &push());
        }
    });
}

fn gauge(snapshot: &Snapshot, name: &str) -> f64 {
    snapshot
        .families
        .iter()
        .filter(|f| f.name == name)
        .map(|f| f.values.iter().sum::<f64>())
        .sum()
}

/// The value of label `name` in `labels`, if set.
fn label<'a>(labels: &'a [(Box<str>, Box<str>)], name: &str) -> Option<&'a str> {
    labels.iter().find(|(n, _)| &**n == name).map(|(_, v)| &**v)
}

fn totals(snapshot: &Snapshot) -> Totals {
    let mut t = Totals::default();
    for family in &snapshot.families {
        match family.name.as_str() {
            "codex_http_requests_total" => {
                for (labels, values) in family.metrics() {
                    let slot = label(labels, "status_family")
                        .and_then(|f| FAMILIES.iter().position(|x| *x == f));
                    if let Some(i) = slot {
                        t.requests[i] += values[0];
                    }
                }
            }
            "codex_tokens_total" => {
                for (labels, values) in family.metrics() {
                    let slot = label(labels, "kind")
                        .and_then(|k| TOKEN_KINDS.iter().position(|x| *x == k));
                    if let Some(i) = slot {
                        t.tokens[i] += values[0];
                    }
                }
            }
            "codex_time_to_first_token_seconds" => {
                t.ttft_bounds = family.bounds.to_vec();
                let width = family.bounds.len() + 2;
                t.ttft = vec![0.0; family.bounds.len() + 1];
                for (_, values) in family.metrics() {
                    for (i, v) in values[..width - 2].iter().enumerate() {
                        t.ttft[i] += v;
                    }
                    t.ttft[width - 2] += values[width - 1];
                }
            }
            _ => {}
        }
    }
    t
}

/// p50 and p95 of the turns between two readings, interpolated within their bucket as
/// PromQL's `histogram_quantile` does; NaN when no turn started.
fn ttft_quantiles(now: &Totals, before: &Totals) -> (f32, f32) {
    if now.ttft.is_empty() || now.ttft.len() != before.ttft.len() {
        return (f32::NAN, f32::NAN);
    }
    let delta: Vec<f64> = now
        .ttft
        .iter()
        .zip(&before.ttft)
        .map(|(a, b)| (a - b).max(0.0))
        .collect();
    let count = delta[delta.len() - 1];
    if count <= 0.0 {
        return (f32::NAN, f32::NAN);
    }
    let q = |q: f64| -> f32 {
        let rank = q * count;
        let mut lower_bound = 0.0;
        let mut lower_count = 0.0;
        for (i, bound) in now.ttft_bounds.iter().enumerate() {
            if delta[i] >= rank {
                let in_bucket = delta[i] - lower_count;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower_count) / in_bucket
                } else {
                    0.0
                };
                return (lower_bound + (bound - lower_bound) * fraction) as f32;
            }
            lower_bound = *bound;
            lower_count = delta[i];
        }
        // In the +Inf bucket: the largest finite bound, as histogram_quantile answers.
        lower_bound as f32
    };
    (q(0.5), q(0.95))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricsConfig;
    use crate::metrics::{FinishedRequest, Metrics};

    #[test]
    fn rates_come_from_two_readings_and_the_ring_keeps_an_hour() {
        let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
        let history = History::default();
        history.record(1000, &metrics.snapshot(), &[]);
        assert!(
            history.points().is_empty(),
            "the first reading is a baseline"
        );
        let now = std::time::Instant::now();
        for status in [200, 200, 200, 503] {
            metrics.record(&FinishedRequest {
                route: "/v1/models",
                method: 0,
                status: axum::http::StatusCode::from_u16(status).unwrap(),
                model: None,
                category: None,
                started: now,
                ended: now,
                exemplar: None,
            });
        }
        history.record(1010, &metrics.snapshot(), &[]);
        let p = &history.points()[0];
        assert_eq!(p.requests_per_second, [0.3, 0.0, 0.0, 0.1]);
        assert_eq!(p.error_ratio, 0.25);
        assert!(
            p.ttft_p50_seconds.is_nan(),
            "no turn, no time to first token"
        );
        for i in 0..POINTS + 10 {
            history.record(1020 + 10 * i as i64, &metrics.snapshot(), &[]);
        }
        assert_eq!(history.points().len(), POINTS);
        assert!(history.memory_bytes() >= POINTS * size_of::<Point>());
    }

    #[test]
    fn ttft_quantiles_interpolate_within_the_bucket() {
        let before = Totals {
            ttft: vec![0.0, 0.0, 0.0],
            ttft_bounds: vec![1.0, 2.0],
            ..Totals::default()
        };
        // 10 turns: 4 under 1 s, 6 between 1 and 2 s.
        let now = Totals {
            ttft: vec![4.0, 10.0, 10.0],
            ..before.clone()
        };
        let (p50, p95) = ttft_quantiles(&now, &before);
        assert!((p50 - (1.0 + 1.0 / 6.0)).abs() < 1e-6, "{p50}");
        assert!((p95 - (1.0 + 5.5 / 6.0)).abs() < 1e-6, "{p95}");
    }
}
