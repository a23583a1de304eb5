//! `/status`'s costs (docs/performance.md, "Status page"):
//! - `status_html_4_destinations_full_hour` / `status_json_...`: one page (or its JSON)
//!   with four remote-write destinations and 360 points of history, as a browser polling
//!   every 5 s asks for it;
//! - `record_request_without_status` / `record_request_with_status_sampler`: recording one
//!   finished request in a registry nobody samples, and in the one the status page's
//!   sampler reads every 10 s, in the same run: the page adds nothing to the request path.
//!
//! Times are the benchmark thread's CPU time (criterion's numbers, see benches/metrics.rs).
//! The history's memory is printed before the benchmarks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common {
    pub mod cpu_time;
}

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use codex_proxy::config::MetricsConfig;
use codex_proxy::metrics::{FinishedRequest, Metrics};
use codex_proxy::status::BenchPage;
use common::cpu_time::ThreadCpuTime;
use criterion::measurement::WallTime;
use criterion::{black_box, Criterion};

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let page = runtime.block_on(async { BenchPage::new(4) });
    let html = page.render();
    assert_eq!(html.matches("<svg class=\"chart\"").count(), 5 + 4);
    println!(
        "history: {} bytes for 360 points and 4 destinations; page {} bytes, json {} bytes",
        page.history_bytes(),
        html.len(),
        page.json().len()
    );
    let none = runtime.block_on(async { BenchPage::new(0) });
    println!(
        "history: {} bytes for 360 points and no destination",
        none.history_bytes()
    );

    let mut c = Criterion::default()
        .with_measurement(ThreadCpuTime(WallTime))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();
    c.bench_function("status_html_4_destinations_full_hour", |b| {
        b.iter(|| black_box(page.render()))
    });
    c.bench_function("status_json_4_destinations_full_hour", |b| {
        b.iter(|| black_box(page.json()))
    });

    let now = Instant::now();
    let request = FinishedRequest {
        route: "/v1/chat/completions",
        method: 2,
        status: StatusCode::OK,
        model: Some("gpt-5-codex"),
        category: None,
        started: now,
        ended: now + Duration::from_millis(420),
        exemplar: None,
    };
    let plain = Metrics::new(&MetricsConfig::default()).unwrap();
    let sampled = page.metrics();
    c.bench_function("record_request_without_status", |b| {
        b.iter(|| plain.record(black_box(&request)))
    });
    c.bench_function("record_request_with_status_sampler", |b| {
        b.iter(|| sampled.record(black_box(&request)))
    });
    c.final_summary();
}
