//! The metrics layer's costs, on the workload prom-client is measured with
//! (scripts/bench/promclient/workload.json; scripts/bench/metrics-vs-promclient.sh runs
//! both sides and writes the ratios to docs/performance.md):
//! - `record_request`: recording one finished request (requests counter, latency
//!   histogram, latency summary), what the middleware does when a body ends, cycling
//!   over all label sets; `record_request_one_series`: the same on one busy label set
//!   (since native histograms: classic and native buckets), `_exemplar`: with the
//!   request's exemplar too, what the middleware records;
//! - `render_text` / `render_gzip`: `GET /metrics` for a registry holding the same
//!   families and label sets (~2,800 series), the families the proxy declares at start
//!   (model work, connections; prom-client's side declares the same ones, from this
//!   side's first render) and the process_* families;
//!   `render_openmetrics` / `render_protobuf`: the other formats `/metrics` negotiates.
//!
//! Times are the benchmark thread's CPU time, not wall time: the machines this runs on
//! are shared, and CPU time does not count the moments another process had the core.
//! The prom-client side measures its process CPU time the same way.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common {
    pub mod cpu_time;
    pub mod workload;
}

use std::path::Path;
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use codex_proxy::metrics::exemplar::{ExemplarId, RequestId};
use codex_proxy::metrics::scrape::{Format, Renderer};
use codex_proxy::metrics::FinishedRequest;
use common::cpu_time::ThreadCpuTime;
use common::workload::Workload;
use criterion::measurement::WallTime;
use criterion::{black_box, Criterion};

fn load() -> Workload {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench/promclient/workload.json");
    Workload::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn main() {
    let w = load();
    let metrics = w.registry().unwrap_or_else(|e| panic!("{e}"));
    let renderer = Renderer::new(metrics.clone());

    let text = String::from_utf8(renderer.render(false).expect("render")).expect("utf-8");
    let samples = text.lines().filter(|l| !l.starts_with('#')).count();
    let process = text.lines().filter(|l| l.starts_with("process_")).count();
    // Read by scripts/bench/metrics-vs-promclient.sh.
    println!(
        "series: {} (plus {process} process_* series)",
        samples - process
    );
    // The prom-client side declares the families it does not fill from the workload (those
    // the proxy declares at start: model work, connections, ...) from this render, so that
    // both sides render the same families and series.
    if let Some(path) = std::env::var_os("METRICS_BENCH_RENDER_OUT") {
        std::fs::write(&path, &text).expect("write the first render");
    }

    let mut c = Criterion::default()
        .with_measurement(ThreadCpuTime(WallTime))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();

    // Every request of the workload, made up front so that only recording is timed.
    let finished = w.requests(Instant::now()).unwrap_or_else(|e| panic!("{e}"));
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
    // The same busy label set with an exemplar (the request's id), as the middleware
    // records every request since native histograms and exemplars came.
    let id = ExemplarId::Request(RequestId::from_u64(0x0123_4567_89ab_cdef));
    let mut with_exemplar = FinishedRequest { ..*chat };
    with_exemplar.exemplar = Some(&id);
    c.bench_function("record_request_one_series_exemplar", |b| {
        b.iter(|| metrics.record(black_box(&with_exemplar)))
    });
    for (name, format) in [
        ("render_openmetrics", Format::OpenMetrics),
        ("render_protobuf", Format::Protobuf),
    ] {
        let size = renderer.render_as(format, false).expect("render").len();
        println!("{name}: {size} bytes");
        c.bench_function(name, |b| {
            b.iter(|| black_box(renderer.render_as(format, false).expect("render")))
        });
    }
    println!("render_text: {} bytes", text.len());
    c.bench_function("render_text", |b| {
        b.iter(|| black_box(renderer.render(false).expect("render")))
    });
    c.bench_function("render_gzip", |b| {
        b.iter(|| black_box(renderer.render(true).expect("render")))
    });
    c.final_summary();
}
