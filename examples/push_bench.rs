//! The pusher's cost, for scripts/bench/push-cost.sh. Two modes over the same synthetic
//! registry (the proxy's real families, filled with enough label combinations to reach
//! `--series`):
//!
//! - `serve --series N --listen ADDR`: serves it as `GET /metrics` (text format), for
//!   vmagent to scrape; its cost is not measured.
//! - `push --series N --url URL --interval D --seconds S`: remote-writes it for S seconds,
//!   then prints one JSON line: CPU seconds spent after the registry was built, samples
//!   delivered, resident memory after the build and at its peak.
//!
//! - `phases --series N`: CPU time of a gather and of a conversion (series, encoding,
//!   compression) of the registry, to show where a push's CPU goes.
//!
//! Build with `cargo build --release --example push_bench`.

use std::sync::Arc;
use std::time::Duration;

use codex_proxy::config::{Config, MetricsConfig};
use codex_proxy::metrics::Metrics;
use codex_proxy::push::series::SeriesState;
use codex_proxy::push::Pushers;
use prometheus::proto::{MetricFamily, MetricType};
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
    let series: usize = arg("--series")
        .parse()
        .unwrap_or_else(|_| usage("--series"));
    if args.first().map(String::as_str) == Some("phases") {
        return phases(series);
    }
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| usage(&e.to_string()));
    match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(serve(series, &arg("--listen"))),
        Some("push") => {
            let seconds: u64 = arg("--seconds")
                .parse()
                .unwrap_or_else(|_| usage("--seconds"));
            runtime.block_on(push(series, &arg("--url"), &arg("--interval"), seconds));
        }
        _ => usage("mode"),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "push_bench: {problem}\nusage: push_bench serve --series N --listen ADDR\n       \
         push_bench push --series N --url URL --interval 5s --seconds 60"
    );
    std::process::exit(2)
}

/// The proxy's families with label combinations added until they make `target` series.
fn synthetic_registry(target: usize) -> Arc<Metrics> {
    let metrics = Metrics::new(&MetricsConfig::default()).unwrap_or_else(|e| usage(&e.to_string()));
    let add = |combo: usize| {
        let route = format!("/v1/r{}", combo % 97);
        let model = format!("model-{}", combo / 97);
        let methods = ["GET", "POST"];
        let statuses = ["2xx", "4xx", "5xx"];
        let labels = [
            route.as_str(),
            methods[combo % 2],
            statuses[combo % 3],
            model.as_str(),
        ];
        metrics
            .requests
            .with_label_values(&labels)
            .inc_by(1 + combo as u64 % 50);
        for ms in [40.0, 180.0, 900.0] {
            metrics.latency.with_label_values(&labels).observe(ms);
            metrics.latency_summary.observe(&labels, ms);
        }
    };
    let base = series_count(&metrics.gather());
    add(0);
    let per_combo = (series_count(&metrics.gather()) - base).max(1);
    let combos = target.saturating_sub(base).div_ceil(per_combo);
    (1..combos).for_each(add);
    metrics
}

/// Series a snapshot becomes (as in the text format).
fn series_count(families: &[MetricFamily]) -> usize {
    families
        .iter()
        .flat_map(|f| f.get_metric().iter().map(move |m| (f.get_field_type(), m)))
        .map(|(t, m)| match t {
            MetricType::HISTOGRAM => m.get_histogram().get_bucket().len() + 3,
            MetricType::SUMMARY => m.get_summary().get_quantile().len() + 2,
            _ => 1,
        })
        .sum()
}

fn phases(series: usize) {
    let metrics = synthetic_registry(series);
    let mut state = SeriesState::new(&Default::default(), "bench:1", 2000);
    let (mut gather, mut convert, mut samples) = (0.0, 0.0, 0);
    for i in 0..5 {
        let t = cpu_seconds();
        let families = metrics.gather();
        gather += cpu_seconds() - t;
        let t = cpu_seconds();
        let out = state
            .convert(&families, 1_700_000_000_000 + i)
            .unwrap_or_else(|e| usage(&e.to_string()));
        convert += cpu_seconds() - t;
        samples += out.batches.iter().map(|b| b.samples).sum::<u64>();
    }
    let per_sample = |cpu: f64| cpu * 1e9 / samples as f64;
    println!(
        "{{\"samples\": {samples}, \"gather_cpu_ns_per_sample\": {:.0}, \"convert_cpu_ns_per_sample\": {:.0}}}",
        per_sample(gather),
        per_sample(convert)
    );
}

async fn serve(series: usize, listen: &str) {
    let metrics = synthetic_registry(series);
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

async fn push(series: usize, url: &str, interval: &str, seconds: u64) {
    let metrics = synthetic_registry(series);
    let built_series = series_count(&metrics.gather());
    let rss_after_build = status_kb("VmRSS:");
    let cpu_start = cpu_seconds();
    let config = Config::parse(&format!(
        "[[remote_write]]\nname = \"bench\"\nurl = \"{url}\"\ninterval = \"{interval}\"\n"
    ))
    .unwrap_or_else(|e| usage(&e.to_string()));
    let source = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.gather())
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
