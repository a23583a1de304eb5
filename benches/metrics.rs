//! The metrics layer's costs, on the workload prom-client is measured with
//! (scripts/bench/promclient/workload.json; scripts/bench/metrics-vs-promclient.sh runs
//! both sides and writes the ratios to docs/performance.md):
//! - `record_request`: recording one finished request (requests counter, latency
//!   histogram, latency summary), what the middleware does when a body ends, cycling
//!   over all label sets; `record_request_one_series`: the same on one busy label set;
//! - `render_text` / `render_gzip`: `GET /metrics` for a registry holding the same
//!   families and label sets (~2,800 series) plus the process_* families.
//!
//! Times are the benchmark thread's CPU time, not wall time: the machines this runs on
//! are shared, and CPU time does not count the moments another process had the core.
//! The prom-client side measures its process CPU time the same way.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use codex_proxy::config::MetricsConfig;
use codex_proxy::metrics::labels::method_index;
use codex_proxy::metrics::route::Renderer;
use codex_proxy::metrics::{AbortReason, ErrorCategory, FinishedRequest, Metrics, ToolBufferEvent};
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{black_box, Criterion};
use serde::Deserialize;

#[derive(Deserialize)]
struct Workload {
    models: Vec<String>,
    http: Vec<HttpSet>,
    errors: Vec<ErrorSet>,
    tool_buffer: Vec<ToolSet>,
}

#[derive(Deserialize)]
struct HttpSet {
    route: String,
    method: String,
    status_family: String,
    model: String,
    observations: Vec<f64>,
}

#[derive(Deserialize)]
struct ErrorSet {
    route: String,
    method: String,
    model: String,
    category: String,
}

#[derive(Deserialize)]
struct ToolSet {
    family: String,
    output_mode: String,
    reason: String,
    count: u64,
}

fn load() -> Workload {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/promclient/workload.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (node workload.js > workload.json)", path.display()));
    serde_json::from_str(&text).expect("workload.json")
}

fn status(family: &str) -> StatusCode {
    match family {
        "2xx" => StatusCode::OK,
        "3xx" => StatusCode::NOT_MODIFIED,
        "4xx" => StatusCode::NOT_FOUND,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn category(name: &str) -> ErrorCategory {
    [
        ErrorCategory::WorkerNotReady,
        ErrorCategory::WorkerBusy,
        ErrorCategory::WorkerError,
        ErrorCategory::Timeout,
        ErrorCategory::Maintenance,
        ErrorCategory::Internal,
    ]
    .into_iter()
    .find(|c| c.as_str() == name)
    .unwrap_or(ErrorCategory::Internal)
}

/// The requests of one label set.
#[derive(Clone, Copy)]
struct Request<'a> {
    set: &'a HttpSet,
    method: usize,
    status: StatusCode,
    category: Option<ErrorCategory>,
    model: Option<&'a str>,
}

fn requests(w: &Workload) -> Vec<Request<'_>> {
    w.http
        .iter()
        .map(|set| {
            let category = w
                .errors
                .iter()
                .find(|e| e.route == set.route && e.method == set.method && e.model == set.model)
                .filter(|_| set.status_family == "5xx")
                .map(|e| category(&e.category));
            let method = Method::from_bytes(set.method.as_bytes()).expect("method");
            Request {
                set,
                method: method_index(&method),
                status: status(&set.status_family),
                category,
                model: (set.model != "unknown").then_some(set.model.as_str()),
            }
        })
        .collect()
}

fn record(metrics: &Metrics, r: &Request<'_>, i: usize, base: Instant) {
    let ms = r.set.observations[i % r.set.observations.len()];
    metrics.record(&FinishedRequest {
        route: &r.set.route,
        method: r.method,
        status: r.status,
        model: r.model,
        category: r.category,
        started: base,
        ended: base + Duration::from_secs_f64(ms / 1e3),
    });
}

/// The registry filled as prom-client's: every observation of every label set once.
fn filled(w: &Workload) -> Arc<Metrics> {
    // "other" stays "other": it is not on the allowlist.
    let config = MetricsConfig {
        models: w.models.clone(),
        ..MetricsConfig::default()
    };
    let metrics = Metrics::new(&config).expect("metrics");
    let base = Instant::now();
    for r in requests(w) {
        for i in 0..r.set.observations.len() {
            record(&metrics, &r, i, base);
        }
    }
    for t in &w.tool_buffer {
        let event = match (t.family.as_str(), t.reason.as_str()) {
            ("started", _) => ToolBufferEvent::Started,
            ("flushed", _) => ToolBufferEvent::Flushed,
            (_, "nested_open") => ToolBufferEvent::Aborted(AbortReason::NestedOpen),
            (_, "finalize") => ToolBufferEvent::Aborted(AbortReason::Finalize),
            _ => ToolBufferEvent::Aborted(AbortReason::Disconnect),
        };
        for _ in 0..t.count {
            metrics.tool_buffer(&t.output_mode, event);
        }
    }
    metrics.worker_restarts.inc();
    metrics.worker_ready.set(1);
    metrics.streams_active.set(2);
    metrics
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), shown like wall time.
struct ThreadCpuTime(WallTime);

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill in.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpuTime {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, started: Duration) -> Duration {
        thread_cpu_now().saturating_sub(started)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        self.0.formatter()
    }
}

fn main() {
    let w = load();
    let metrics = filled(&w);
    let renderer = Renderer::new(metrics.clone());

    let text = String::from_utf8(renderer.render(false).expect("render")).expect("utf-8");
    let samples = text.lines().filter(|l| !l.starts_with('#')).count();
    let process = text.lines().filter(|l| l.starts_with("process_")).count();
    // Read by scripts/bench/metrics-vs-promclient.sh.
    println!(
        "series: {} (plus {process} process_* series)",
        samples - process
    );

    let mut c = Criterion::default()
        .with_measurement(ThreadCpuTime(WallTime))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();

    // Every request of the workload, made up front so that only recording is timed.
    let base = Instant::now();
    let finished: Vec<FinishedRequest<'_>> = requests(&w)
        .into_iter()
        .flat_map(|r| {
            let set = r.set;
            set.observations.iter().map(move |ms| FinishedRequest {
                route: &set.route,
                method: r.method,
                status: r.status,
                model: r.model,
                category: r.category,
                started: base,
                ended: base + Duration::from_secs_f64(ms / 1e3),
            })
        })
        .collect();
    // Each request in another of the 145 label sets: every record reaches cold cache
    // lines, as prom-client's side does.
    let mut i = 0usize;
    c.bench_function("record_request", |b| {
        b.iter(|| {
            // A compare, not `%`: a division would cost a fifth of what is measured.
            i += 1;
            if i == finished.len() {
                i = 0;
            }
            metrics.record(black_box(&finished[i]));
        })
    });
    // One busy label set (a route under load): the steady-state cost.
    let chat = finished
        .iter()
        .find(|r| r.route == "/v1/chat/completions" && r.status == StatusCode::OK)
        .expect("a 2xx chat label set in the workload");
    // prom-client's side observes that set's first latency; so does this one.
    c.bench_function("record_request_one_series", |b| {
        b.iter(|| metrics.record(black_box(chat)))
    });
    c.bench_function("render_text", |b| {
        b.iter(|| black_box(renderer.render(false).expect("render")))
    });
    c.bench_function("render_gzip", |b| {
        b.iter(|| black_box(renderer.render(true).expect("render")))
    });
    c.final_summary();
}
