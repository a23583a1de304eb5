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
//! - `protocols REGISTRY --rounds N`: remote-write 1.0 against 2.0 on the same registry, N
//!   steady-state conversions each: bytes per sample before and after snappy, and CPU per
//!   sample of the conversion (series, encoding, compression: all that differs between them).
//!
//! - `histograms REGISTRY --rounds N [--protocol v2]`: `histograms = "classic"`,
//!   `"native"` and `"both"` on the same registry, N steady-state 1.0 (or 2.0)
//!   conversions each: series (`TimeSeries` entries) and snappy bytes per push, and the
//!   ratios of native and both to classic.
//!
//! Build with `cargo build --release --example push_bench`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

#[path = "../benches/common/workload.rs"]
mod workload;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use codex_proxy::config::{Config, HistogramMode, MetricsConfig};
use codex_proxy::metrics::labels::method_index;
use codex_proxy::metrics::scrape::Renderer;
use codex_proxy::metrics::{ErrorCategory, FinishedRequest, Metrics};
use codex_proxy::push::remote_write::negotiate::Protocol;
use codex_proxy::push::remote_write::series::SeriesState;
use codex_proxy::push::Pushers;
use workload::Workload;

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
    if args.first().map(String::as_str) == Some("protocols") {
        let rounds = arg("--rounds")
            .parse()
            .unwrap_or_else(|_| usage("--rounds"));
        return protocols(&fill, rounds);
    }
    if args.first().map(String::as_str) == Some("histograms") {
        let rounds = arg("--rounds")
            .parse()
            .unwrap_or_else(|_| usage("--rounds"));
        let protocol = match args.iter().any(|a| a == "--protocol") {
            false => Protocol::V1,
            true if arg("--protocol") == "v2" => Protocol::V2,
            true if arg("--protocol") == "v1" => Protocol::V1,
            true => usage("--protocol"),
        };
        return histograms(&fill, rounds, protocol);
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
         push_bench phases REGISTRY\n       \
         push_bench protocols REGISTRY --rounds N\n       \
         push_bench histograms REGISTRY --rounds N [--protocol v1|v2]\n\
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

/// The registry filled from the workload as benches/metrics.rs fills it.
fn workload_registry(path: &str) -> Arc<Metrics> {
    Workload::load(Path::new(path))
        .and_then(|w| w.registry())
        .unwrap_or_else(|e| usage(&e))
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
                exemplar: None,
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

/// One JSON line per protocol, then the ratios of 2.0 to 1.0.
fn protocols(fill: &Fill, rounds: i64) {
    let metrics = registry(fill);
    let mut results = Vec::new();
    for protocol in [Protocol::V1, Protocol::V2] {
        let mut state = SeriesState::new(&Default::default(), "bench:1", 2000);
        state.set_protocol(protocol);
        let first = state.convert(&metrics.snapshot(), 1_700_000_000_000);
        first.unwrap_or_else(|e| usage(&e.to_string()));
        let (mut cpu, mut samples, mut raw, mut wire) = (0.0, 0u64, 0usize, 0usize);
        for i in 1..=rounds {
            let snapshot = metrics.snapshot();
            let t = cpu_seconds();
            let out = state
                .convert(&snapshot, 1_700_000_000_000 + i)
                .unwrap_or_else(|e| usage(&e.to_string()));
            cpu += cpu_seconds() - t;
            for b in &out.batches {
                samples += b.samples;
                wire += b.body().len();
                raw += snap::raw::decompress_len(b.body()).unwrap_or(0);
            }
        }
        let n = samples as f64;
        let r = (raw as f64 / n, wire as f64 / n, cpu * 1e9 / n);
        println!(
            "{{\"protocol\": \"{}\", \"samples\": {samples}, \"uncompressed_bytes_per_sample\": {:.1}, \
             \"snappy_bytes_per_sample\": {:.1}, \"convert_cpu_ns_per_sample\": {:.0}}}",
            protocol.as_str(),
            r.0,
            r.1,
            r.2
        );
        results.push(r);
    }
    let (v1, v2) = (results[0], results[1]);
    println!(
        "{{\"v2_to_v1_uncompressed\": {:.2}, \"v2_to_v1_snappy\": {:.2}, \"v2_to_v1_cpu\": {:.2}}}",
        v2.0 / v1.0,
        v2.1 / v1.1,
        v2.2 / v1.2
    );
}

/// One JSON line per `histograms` mode, then the ratios of native and both to classic.
fn histograms(fill: &Fill, rounds: i64, protocol: Protocol) {
    let metrics = registry(fill);
    let mut results = Vec::new();
    for mode in [
        HistogramMode::Classic,
        HistogramMode::Native,
        HistogramMode::Both,
    ] {
        let mut state =
            SeriesState::new(&Default::default(), "bench:1", 2000).with_histograms(mode, false);
        state.set_protocol(protocol);
        let first = state.convert(&metrics.snapshot(), 1_700_000_000_000);
        first.unwrap_or_else(|e| usage(&e.to_string()));
        let (mut series, mut wire) = (0u64, 0usize);
        for i in 1..=rounds {
            let out = state
                .convert(&metrics.snapshot(), 1_700_000_000_000 + i)
                .unwrap_or_else(|e| usage(&e.to_string()));
            for b in &out.batches {
                series += b.samples;
                wire += b.body().len();
            }
        }
        let r = (series as f64 / rounds as f64, wire as f64 / rounds as f64);
        println!(
            "{{\"histograms\": \"{}\", \"series_per_push\": {:.0}, \"snappy_bytes_per_push\": {:.0}}}",
            mode.as_str(),
            r.0,
            r.1
        );
        results.push(r);
    }
    let (classic, native, both) = (results[0], results[1], results[2]);
    println!(
        "{{\"native_to_classic_series\": {:.3}, \"native_to_classic_bytes\": {:.3}, \
         \"both_to_classic_series\": {:.3}, \"both_to_classic_bytes\": {:.3}}}",
        native.0 / classic.0,
        native.1 / classic.1,
        both.0 / classic.0,
        both.1 / classic.1
    );
}

async fn serve(fill: &Fill, listen: &str) {
    // Rendered as the proxy's own `GET /metrics` renders (uncompressed).
    let renderer = Arc::new(Renderer::new(registry(fill)));
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let renderer = renderer.clone();
            async move { renderer.render(false).unwrap_or_default() }
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
    pushers.handle().mark_ready();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    pushers.shutdown(Duration::from_secs(30)).await;
    let cpu = cpu_seconds() - cpu_start;
    let sent: f64 = metrics
        .snapshot()
        .families
        .iter()
        .filter(|f| f.name == "codex_push_samples_sent_total")
        .flat_map(|f| f.values.iter())
        .sum();
    println!(
        "{{\"series\": {built_series}, \"cpu_seconds\": {cpu:.3}, \"samples_sent\": {sent}, \
         \"rss_after_build_kb\": {rss_after_build}, \"rss_peak_kb\": {}}}",
        status_kb("VmHWM:")
    );
}

/// User + system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
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
