//! The durable queue's backlog, for scripts/bench/backlog-drain.sh. A synthetic registry
//! of `--series` gauges, all changed before every snapshot.
//!
//! - `fill --series N --interval D --url URL --samples S [--queue-dir DIR]
//!   [--series-per-request K]`: pushes to URL
//!   (a receiver that is down, or vmagent) until S samples were queued, then shuts down
//!   gracefully. With `--queue-dir` the requests wait in the durable queue. Prints one JSON
//!   line: snapshots, samples, and the resident memory after each snapshot.
//! - `drain --queue-dir DIR --url URL [--extra TOML]`: starts on the queue and runs until it
//!   is empty. `--extra` adds keys to the destination (e.g. `max_in_flight = 1`). Prints one
//!   JSON line: seconds from start to empty, samples delivered, peak memory.
//! - `live --queue-dir DIR --url URL --series N --interval D --seconds S [--extra TOML]`:
//!   starts on the queue with the same synthetic registry pushed live every D (the same
//!   series as `fill`'s durable queue), for S seconds. Prints the start time (Unix ms), for
//!   the script to see when the receiver holds a sample newer than that.
//! - `open --queue-dir DIR`: opens the durable queue (the receiver is never asked) and prints
//!   resident memory before and after, and the peak: what opening a full queue costs.
//!
//! Build with `cargo build --release --example backlog_drain`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codex_proxy::config::Config;
use codex_proxy::push::{Pushers, Snapshot};
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let need = |name: &str| arg(name).unwrap_or_else(|| usage(&format!("missing {name}")));
    let runtime = tokio::runtime::Runtime::new().unwrap_or_else(|e| usage(&e.to_string()));
    match args.first().map(String::as_str) {
        Some("fill") => {
            let series: usize = need("--series")
                .parse()
                .unwrap_or_else(|_| usage("--series"));
            let samples: u64 = need("--samples")
                .parse()
                .unwrap_or_else(|_| usage("--samples"));
            let per_request: usize = arg("--series-per-request")
                .map_or(Ok(2000), |v| v.parse())
                .unwrap_or_else(|_| usage("--series-per-request"));
            let config = config(
                &need("--url"),
                &need("--interval"),
                arg("--queue-dir").as_deref(),
                per_request,
                "",
            );
            runtime.block_on(fill(series, config, samples));
        }
        Some("drain") => runtime.block_on(drain(
            &need("--queue-dir"),
            &need("--url"),
            &arg("--extra").unwrap_or_default(),
        )),
        Some("open") => runtime.block_on(open(&need("--queue-dir"))),
        Some("live") => {
            let series: usize = need("--series")
                .parse()
                .unwrap_or_else(|_| usage("--series"));
            let seconds: u64 = need("--seconds")
                .parse()
                .unwrap_or_else(|_| usage("--seconds"));
            let config = config(
                &need("--url"),
                &need("--interval"),
                Some(&need("--queue-dir")),
                2000,
                &arg("--extra").unwrap_or_default(),
            );
            runtime.block_on(live(series, config, seconds));
        }
        _ => usage("mode"),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "backlog_drain: {problem}\nusage: backlog_drain fill --series N --interval 250ms --url URL --samples S [--queue-dir DIR]\n       \
         backlog_drain drain --queue-dir DIR --url URL"
    );
    std::process::exit(2)
}

/// `extra`: further keys of the destination, TOML lines (e.g. `max_in_flight = 1`).
fn config(
    url: &str,
    interval: &str,
    queue_dir: Option<&str>,
    per_request: usize,
    extra: &str,
) -> Config {
    let queue = queue_dir.map_or(String::new(), |d| format!("queue_dir = \"{d}\"\n"));
    let text = format!(
        "[[remote_write]]\nname = \"bench\"\nurl = \"{url}\"\ninterval = \"{interval}\"\n{queue}\
         max_queue_bytes = \"1GiB\"\nmax_series_per_request = {per_request}\nmin_backoff = \"50ms\"\nmax_backoff = \"1s\"\n{extra}\n"
    );
    Config::parse(&text).unwrap_or_else(|e| usage(&e.to_string()))
}

fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The `codex_push_*` counter `name` of the bench destination.
fn counter(registry: &Registry, name: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// A registry of `series` gauges `bench_value{i="0"}`, `{i="1"}`, ...
fn synthetic(series: usize) -> (Registry, Vec<IntGauge>) {
    let registry = Registry::new();
    let gauges = IntGaugeVec::new(Opts::new("bench_value", "Synthetic series."), &["i"])
        .unwrap_or_else(|e| usage(&e.to_string()));
    registry
        .register(Box::new(gauges.clone()))
        .unwrap_or_else(|e| usage(&e.to_string()));
    let children = (0..series)
        .map(|i| gauges.with_label_values(&[&i.to_string()]))
        .collect();
    (registry, children)
}

async fn fill(series: usize, config: Config, target: u64) {
    let (registry, children) = synthetic(series);
    let snapshots = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let memory = Arc::new(Mutex::new(Vec::<(u64, u64)>::new()));
    let source = {
        let (registry, snapshots, samples, memory) = (
            registry.clone(),
            snapshots.clone(),
            samples.clone(),
            memory.clone(),
        );
        Arc::new(move || {
            let n = snapshots.fetch_add(1, Ordering::SeqCst) as i64;
            for (i, c) in children.iter().enumerate() {
                c.set(n * 7 + i as i64);
            }
            let snapshot = Snapshot::from_families(&registry.gather());
            let count = snapshot.sample_count() as u64;
            let total = samples.fetch_add(count, Ordering::SeqCst) + count;
            if let Ok(mut m) = memory.lock() {
                m.push((total, rss_kb("VmRSS:")));
            }
            snapshot
        })
    };
    // Distinct `instance` labels keep the two fills' series apart in the receiver.
    let instance = if config.remote_write[0].queue_dir.is_some() {
        "fill-durable"
    } else {
        "fill-memory"
    };
    let pushers = Pushers::start(&config.remote_write, &[], source, &registry, instance)
        .unwrap_or_else(|e| usage(&e.to_string()));
    pushers.handle().mark_ready();
    while samples.load(Ordering::SeqCst) < target {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The final snapshot is queued too; a memory queue delivers within the grace.
    pushers.shutdown(Duration::from_secs(10)).await;
    let memory = memory.lock().map(|m| m.clone()).unwrap_or_default();
    println!(
        "{}",
        serde_json::json!({
            "snapshots": snapshots.load(Ordering::SeqCst),
            "samples": samples.load(Ordering::SeqCst),
            "series": series,
            "rss_kb": memory,
        })
    );
}

async fn open(queue_dir: &str) {
    let registry = Registry::new();
    // Nothing listens on port 9: the backlog stays where it is.
    let config = config(
        "http://127.0.0.1:9/api/v1/write",
        "1h",
        Some(queue_dir),
        2000,
        "",
    );
    let idle_kb = rss_kb("VmRSS:");
    let idle_hwm_kb = rss_kb("VmHWM:");
    let started = Instant::now();
    let source = Arc::new(Snapshot::default);
    let pushers = Pushers::start(&config.remote_write, &[], source, &registry, "bench")
        .unwrap_or_else(|e| usage(&e.to_string()));
    let seconds = started.elapsed().as_secs_f64();
    let status = pushers.handle().status();
    println!(
        "{}",
        serde_json::json!({
            "queued_requests": status[0].queued_requests,
            "queued_bytes": status[0].queued_bytes,
            "open_seconds": seconds,
            "rss_idle_kb": idle_kb,
            "hwm_idle_kb": idle_hwm_kb,
            "rss_after_open_kb": rss_kb("VmRSS:"),
            "hwm_after_open_kb": rss_kb("VmHWM:"),
        })
    );
    drop(pushers);
}

async fn live(series: usize, config: Config, seconds: u64) {
    let (registry, children) = synthetic(series);
    let source = {
        let registry = registry.clone();
        let n = AtomicU64::new(1_000_000);
        Arc::new(move || {
            let n = n.fetch_add(1, Ordering::SeqCst) as i64;
            for (i, c) in children.iter().enumerate() {
                c.set(n * 7 + i as i64);
            }
            Snapshot::from_families(&registry.gather())
        })
    };
    let started_ms = chrono::Utc::now().timestamp_millis();
    println!("{}", serde_json::json!({ "started_unix_ms": started_ms }));
    let pushers = Pushers::start(&config.remote_write, &[], source, &registry, "fill-durable")
        .unwrap_or_else(|e| usage(&e.to_string()));
    pushers.handle().mark_ready();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let too_old = registry
        .gather()
        .iter()
        .filter(|f| f.name() == "codex_push_samples_dropped_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| m.get_label().iter().any(|l| l.value() == "too_old"))
        .map(|m| m.get_counter().get_value() as u64)
        .sum::<u64>();
    pushers.shutdown(Duration::from_secs(5)).await;
    println!("{}", serde_json::json!({ "dropped_too_old": too_old }));
}

async fn drain(queue_dir: &str, url: &str, extra: &str) {
    let registry = Registry::new();
    // An hour between snapshots: besides the backlog, only the first one at start.
    let config = config(url, "1h", Some(queue_dir), 2000, extra);
    let start = Instant::now();
    let source = Arc::new(Snapshot::default);
    let pushers = Pushers::start(&config.remote_write, &[], source, &registry, "bench")
        .unwrap_or_else(|e| usage(&e.to_string()));
    pushers.handle().mark_ready();
    let mut peak = 0;
    loop {
        peak = peak.max(rss_kb("VmRSS:"));
        let queued: u64 = pushers
            .handle()
            .status()
            .iter()
            .map(|s| s.queued_requests)
            .sum();
        if queued == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = start.elapsed().as_secs_f64();
    let sent = counter(&registry, "codex_push_samples_sent_total");
    pushers.shutdown(Duration::from_secs(5)).await;
    println!(
        "{}",
        serde_json::json!({
            "seconds": seconds,
            "samples_sent": sent,
            "rss_peak_kb": peak.max(rss_kb("VmHWM:")),
        })
    );
}
