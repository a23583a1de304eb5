//! The pusher's cost, for scripts/bench/push-cost.sh. The registry is the proxy's own
//! families, filled either from `--workload FILE` (scripts/bench/promclient/workload.json:
//! the ~2,800 series the metrics benchmark uses, the SMALL set) or with `--series N`
//! synthetic label combinations (the LARGE set).
//!
//! - `serve REGISTRY --listen ADDR`: serves it as `GET /metrics` (text format), for
//!   vmagent to scrape.
//! - `push REGISTRY --url URL --interval D --seconds S`: remote-writes it for S seconds,
//!   then prints one JSON line: CPU seconds spent after the registry was built, samples
//!   delivered, resident memory after the build and at its peak.
//! - `phases REGISTRY`: CPU time of a snapshot (`Metrics::snapshot()` and freeing it,
//!   "gather") and of a conversion (series, encoding, compression) of the registry in the
//!   steady state: where a push's CPU goes.
//!
//! Build with `cargo build --release --example push_bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use codex_proxy::config::{Config, MetricsConfig};
use codex_proxy::metrics::labels::method_index;
use codex_proxy::metrics::{AbortReason, ErrorCategory, FinishedRequest, Metrics, ToolBufferEvent};
use codex_proxy::push::series::SeriesState;
use codex_proxy::push::Pushers;
use prometheus::{Encoder, TextEncoder};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| usage(&format!("missing {name}")))
    };
    let fill = if args.iter().any(|a| a == "--workload") {
        Fill::Workload(arg("--workload"))
    } else {
        Fill::Synthetic(
            arg("--series")
                .parse()
                .unwrap_or_else(|_| usage("--series")),
        )
    };
    if args.first().map(String::as_str) == Some("phases") {
        return phases(&fill);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| usage(&e.to_string()));
    match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(serve(&fill, &arg("--listen"))),
        Some("push") => {
            let seconds: u64 = arg("--seconds")
                .parse()
                .unwrap_or_else(|_| usage("--seconds"));
            runtime.block_on(push(&fill, &arg("--url"), &arg("--interval"), seconds));
        }
        _ => usage("mode"),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "push_bench: {problem}\n\
         usage: push_bench serve REGISTRY --listen ADDR\n       \
         push_bench push REGISTRY --url URL --interval 5s --seconds 60\n       \
         push_bench phases REGISTRY\n\
         REGISTRY: --workload FILE | --series N"
    );
    std::process::exit(2)
}

/// What fills the registry.
enum Fill {
    Workload(String),
    Synthetic(usize),
}

fn registry(fill: &Fill) -> Arc<Metrics> {
    match fill {
        Fill::Workload(path) => workload_registry(path),
        Fill::Synthetic(series) => synthetic_registry(*series),
    }
}

#[derive(serde::Deserialize)]
struct Workload {
    models: Vec<String>,
    http: Vec<HttpSet>,
    errors: Vec<ErrorSet>,
    tool_buffer: Vec<ToolSet>,
}

#[derive(serde::Deserialize)]
struct HttpSet {
    route: String,
    method: String,
    status_family: String,
    model: String,
    observations: Vec<f64>,
}

#[derive(serde::Deserialize)]
struct ErrorSet {
    route: String,
    method: String,
    model: String,
    category: String,
}

#[derive(serde::Deserialize)]
struct ToolSet {
    family: String,
    output_mode: String,
    reason: String,
    count: u64,
}

/// The registry filled from the workload as benches/metrics.rs fills it: every
/// observation of every label set recorded once through the middleware's recorder.
fn workload_registry(path: &str) -> Arc<Metrics> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| usage(&format!("{path}: {e}")));
    let w: Workload =
        serde_json::from_str(&text).unwrap_or_else(|e| usage(&format!("{path}: {e}")));
    let config = MetricsConfig {
        models: w.models.clone(),
        ..MetricsConfig::default()
    };
    let metrics = Metrics::new(&config).unwrap_or_else(|e| usage(&e.to_string()));
    let categories = [
        ErrorCategory::WorkerNotReady,
        ErrorCategory::WorkerBusy,
        ErrorCategory::WorkerError,
        ErrorCategory::Timeout,
        ErrorCategory::Maintenance,
        ErrorCategory::Internal,
    ];
    let base = Instant::now();
    for set in &w.http {
        let category = w
            .errors
            .iter()
            .find(|e| e.route == set.route && e.method == set.method && e.model == set.model)
            .filter(|_| set.status_family == "5xx")
            .and_then(|e| categories.into_iter().find(|c| c.as_str() == e.category));
        let status = match set.status_family.as_str() {
            "2xx" => StatusCode::OK,
            "3xx" => StatusCode::NOT_MODIFIED,
            "4xx" => StatusCode::NOT_FOUND,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let method = Method::from_bytes(set.method.as_bytes()).unwrap_or(Method::GET);
        for ms in &set.observations {
            metrics.record(&FinishedRequest {
                route: &set.route,
                method: method_index(&method),
                status,
                model: (set.model != "unknown").then_some(set.model.as_str()),
                category,
                started: base,
                ended: base + Duration::from_secs_f64(ms / 1e3),
            });
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
    metrics
}

/// The proxy's families with label combinations added until they make `target` series:
/// 97 routes × GET/POST × 2xx/4xx/5xx × as many models as it takes, three requests each.
fn synthetic_registry(target: usize) -> Arc<Metrics> {
    const ROUTES: usize = 97;
    let base = registry_with_models(0).snapshot().sample_count();
    // One label set: requests, errors (5xx only, one in three), 9 buckets + Inf + sum +
    // count, 4 quantiles + sum + count.
    let per_combo = 1 + 12 + 6;
    let combos = target.saturating_sub(base) / per_combo;
    let models = combos.div_ceil(ROUTES);
    let metrics = registry_with_models(models);
    let started = Instant::now();
    for combo in 0..combos {
        let route = format!("/v1/r{}", combo % ROUTES);
        let model = format!("model-{}", combo / ROUTES);
        let method = [Method::GET, Method::POST][combo % 2].clone();
        let status = [
            StatusCode::OK,
            StatusCode::NOT_FOUND,
            StatusCode::BAD_GATEWAY,
        ][combo % 3];
        for ms in [40, 180, 900] {
            metrics.record(&FinishedRequest {
                route: &route,
                method: method_index(&method),
                status,
                model: Some(&model),
                category: Some(ErrorCategory::WorkerError),
                started,
                ended: started + Duration::from_millis(ms),
            });
        }
    }
    metrics
}

/// The proxy's families, with `model-0` .. `model-{n-1}` on the model allowlist.
fn registry_with_models(n: usize) -> Arc<Metrics> {
    let config = MetricsConfig {
        models: (0..n).map(|i| format!("model-{i}")).collect(),
        ..MetricsConfig::default()
    };
    Metrics::new(&config).unwrap_or_else(|e| usage(&e.to_string()))
}

fn phases(fill: &Fill) {
    let metrics = registry(fill);
    let mut state = SeriesState::new(&Default::default(), "bench:1", 2000);
    // The first conversion also indexes every series (nothing to compare with yet).
    let first = state.convert(&metrics.snapshot(), 1_700_000_000_000);
    first.unwrap_or_else(|e| usage(&e.to_string()));
    let (mut gather, mut convert, mut samples) = (0.0, 0.0, 0);
    for i in 1..=5 {
        let t = cpu_seconds();
        let snapshot = metrics.snapshot();
        gather += cpu_seconds() - t;
        let t = cpu_seconds();
        let out = state
            .convert(&snapshot, 1_700_000_000_000 + i)
            .unwrap_or_else(|e| usage(&e.to_string()));
        convert += cpu_seconds() - t;
        samples += out.batches.iter().map(|b| b.samples).sum::<u64>();
        // Freeing the snapshot is part of its cost.
        let t = cpu_seconds();
        drop(snapshot);
        gather += cpu_seconds() - t;
    }
    let per_sample = |cpu: f64| cpu * 1e9 / samples as f64;
    println!(
        "{{\"samples\": {samples}, \"gather_cpu_ns_per_sample\": {:.0}, \
         \"convert_cpu_ns_per_sample\": {:.0}}}",
        per_sample(gather),
        per_sample(convert)
    );
}

async fn serve(fill: &Fill, listen: &str) {
    let metrics = registry(fill);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                let mut body = Vec::new();
                let _ = TextEncoder::new().encode(&metrics.gather(), &mut body);
                body
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .unwrap_or_else(|e| usage(&e.to_string()));
    let _ = axum::serve(listener, app).await;
}

async fn push(fill: &Fill, url: &str, interval: &str, seconds: u64) {
    let metrics = registry(fill);
    let built_series = metrics.snapshot().sample_count();
    let rss_after_build = status_kb("VmRSS:");
    let cpu_start = cpu_seconds();
    let config = Config::parse(&format!(
        "[[remote_write]]\nname = \"bench\"\nurl = \"{url}\"\ninterval = \"{interval}\"\n"
    ))
    .unwrap_or_else(|e| usage(&e.to_string()));
    let source = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.snapshot())
    };
    let pushers = Pushers::start(
        &config.remote_write,
        &[],
        source,
        metrics.registry(),
        "bench:1",
    )
    .unwrap_or_else(|e| usage(&e.to_string()));
    pushers.mark_ready();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    pushers.shutdown(Duration::from_secs(30)).await;
    let cpu = cpu_seconds() - cpu_start;
    let sent: f64 = metrics
        .gather()
        .iter()
        .filter(|f| f.name() == "codex_push_samples_sent_total")
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_counter().get_value())
        .sum();
    println!(
        "{{\"series\": {built_series}, \"cpu_seconds\": {cpu:.3}, \"samples_sent\": {sent}, \
         \"rss_after_build_kb\": {rss_after_build}, \"rss_peak_kb\": {}}}",
        status_kb("VmHWM:")
    );
}

/// User + system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// A `kB` line of /proc/self/status (VmRSS, VmHWM).
fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
