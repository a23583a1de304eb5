//! The model-work families' costs (docs/performance.md, "Model work"):
//! - `record_turn`: recording one finished turn in every new family (turn counter,
//!   duration, time to first token, time per output token, five token kinds, two item
//!   kinds), what the proxy does once per turn; thread CPU time, as in benches/metrics.rs.
//! - the delay between a worker delta and its SSE bytes, at 1 and at 100 concurrent
//!   streams, with the release binary and its demo worker, two ways:
//!   - end to end: the worker stamps every delta with the `CLOCK_MONOTONIC` time it
//!     writes it (`DEMO_DELTA_TIMESTAMPS=1`); the client here reads the clock again when
//!     the bytes arrive. This holds the worker's pipe, the loopback socket and the
//!     client's own wake-up too, so it bounds the proxy's share from above. Run with the
//!     proxy's tracing off, as in production; the proxy's CPU per delta comes from here.
//!   - the proxy's own part: the same load again with
//!     `RUST_LOG=codex_proxy::delta_latency=trace` and JSON logs; the proxy then reports,
//!     per delta, the time from reading its line off the worker's stdout to handing its
//!     SSE event to hyper (`delta_to_sse_ns`), and this bench reads the proxy's stderr.
//!
//!   Printed as p50 / p99 (not a criterion statistic: a distribution is the point).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common {
    pub mod cpu_time;
}

use std::io::BufRead;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use codex_proxy::config::MetricsConfig;
use codex_proxy::metrics::model_work::ITEM_KINDS;
use codex_proxy::metrics::{FinishedTurn, Metrics, Outcome, TokenCounts};
use common::cpu_time::ThreadCpuTime;
use criterion::measurement::WallTime;
use criterion::{black_box, Criterion};

/// The demo worker's pause before each delta.
const DELTA_INTERVAL: Duration = Duration::from_millis(20);

fn monotonic_nanos() -> u128 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
}

fn bench_record_turn() {
    let config: MetricsConfig = toml::from_str("models = [\"gpt-5\"]").unwrap();
    let metrics = Metrics::new(&config).unwrap();
    let mut items = [0; ITEM_KINDS.len()];
    items[0] = 1; // agent_message
    items[2] = 2; // command_execution
    let turn = FinishedTurn {
        model: Some("gpt-5"),
        stream: true,
        outcome: Outcome::Completed,
        duration: Duration::from_millis(4200),
        time_to_first_token: Some(Duration::from_millis(800)),
        first_to_last_delta: Some(Duration::from_millis(3100)),
        tokens: Some(TokenCounts([1200, 800, 0, 310, 120])),
        items,
    };
    let mut c = Criterion::default()
        .with_measurement(ThreadCpuTime(WallTime))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    c.bench_function("record_turn", |b| {
        b.iter(|| metrics.record_turn(black_box(&turn)))
    });
    c.final_summary();
}

/// The release binary with the demo worker, killed when dropped.
struct Proxy {
    child: Child,
    base: String,
    /// The proxy's own `delta_to_sse_ns` reports, in the order it logged them (only when
    /// started with the trace on).
    own: Arc<Mutex<Vec<u64>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With `trace`, the proxy logs JSON to a pipe read here for its `delta_to_sse_ns`
/// reports; without, it logs warnings only, as in production.
fn start_proxy(streams: usize, trace: bool) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[worker]\nmax_concurrency = {streams}\n[streams]\nmax_concurrency = {streams}\n\
             [metrics]\nenabled = true\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_codex-proxy"));
    command
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env("DEMO_DELTA_TIMESTAMPS", "1")
        .env(
            "DEMO_DELTA_DELAY_MS",
            DELTA_INTERVAL.as_millis().to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if trace {
        command
            .arg("--log-format")
            .arg("json")
            .env("RUST_LOG", "warn,codex_proxy::delta_latency=trace")
            .stderr(Stdio::piped());
    } else {
        command.env("RUST_LOG", "warn");
    }
    let mut child = command.spawn().unwrap();
    let own = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = child.stderr.take() {
        // Read at once and apart from the client's thread, so the proxy never waits on
        // a full pipe.
        let own = own.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let event: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(event) => event,
                    Err(_) => {
                        eprintln!("{line}");
                        continue;
                    }
                };
                match event.get("delta_to_sse_ns").and_then(|v| v.as_u64()) {
                    Some(ns) => own.lock().unwrap().push(ns),
                    None => eprintln!("{line}"),
                }
            }
        });
    }
    Proxy {
        child,
        base: format!("http://127.0.0.1:{port}"),
        own,
        _dir: dir,
    }
}

/// Latencies (ns) of every delta of one stream: arrival of the bytes minus the stamp.
async fn one_stream(client: reqwest::Client, url: String, prompt: String) -> Vec<u64> {
    let body = serde_json::json!({"model": "codex-demo", "stream": true,
        "messages": [{"role": "user", "content": prompt}]});
    let mut response = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut latencies = Vec::new();
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        let arrived = monotonic_nanos();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        // Whole events only: an event split across reads is finished by the next one.
        let Some(end) = pending.rfind("\n\n") else {
            continue;
        };
        for event in pending[..end].split("\n\n") {
            let Some(stamp) = event
                .split("\"content\":\"")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .and_then(|n| n.parse::<u128>().ok())
            else {
                continue;
            };
            latencies.push(arrived.saturating_sub(stamp) as u64);
        }
        pending.drain(..end + 2);
    }
    latencies
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1e3
}

/// CPU time (user + system) the process `pid` has used so far, from `/proc/<pid>/stat`.
fn process_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = rustix::param::clock_ticks_per_second();
    Duration::from_nanos(ticks * 1_000_000_000 / per_second)
}

struct Measured {
    /// Every delta's end-to-end latency (ns), sorted.
    end_to_end: Vec<u64>,
    /// Every delta's proxy-own latency (ns), sorted; empty without the trace.
    own: Vec<u64>,
    /// CPU time of the proxy process (not its worker) over the counted rounds.
    cpu: Duration,
}

/// `concurrent` streams at once, `rounds` times, after a warm-up round.
async fn measure(concurrent: usize, rounds: usize, trace: bool) -> Measured {
    let proxy = start_proxy(concurrent, trace);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(format!("{}/readyz", proxy.base)).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the proxy never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("{}/v1/chat/completions", proxy.base);
    // About 40 deltas of 6 characters each, 20 ms apart.
    let prompt = "word ".repeat(46);
    let mut all = Vec::new();
    let mut cpu_before = Duration::ZERO;
    let mut warm_up_deltas = 0;
    // The first round warms up connections and the worker; not counted.
    for round in 0..=rounds {
        if round == 1 {
            cpu_before = process_cpu(proxy.child.id());
        }
        // Spread over one delta interval, as independent clients are: started together,
        // the streams' deltas would all fall due in the same millisecond every 20 ms and
        // measure the burst's queue instead of the proxy.
        let streams = (0..concurrent).map(|i| {
            let start = DELTA_INTERVAL * i as u32 / concurrent as u32;
            let (client, url, prompt) = (client.clone(), url.clone(), prompt.clone());
            tokio::spawn(async move {
                tokio::time::sleep(start).await;
                one_stream(client, url, prompt).await
            })
        });
        let results = futures_util::future::join_all(streams).await;
        for r in results {
            let r = r.unwrap();
            if round > 0 {
                all.extend(r);
            } else {
                warm_up_deltas += r.len();
            }
        }
    }
    let cpu = process_cpu(proxy.child.id()) - cpu_before;
    all.sort_unstable();
    let mut own = Vec::new();
    if trace {
        // One report per delta, logged before its bytes went out; the warm-up's come
        // first, since the counted rounds began after every warm-up stream had ended.
        let expected = warm_up_deltas + all.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.own.lock().unwrap().len() < expected {
            assert!(
                Instant::now() < deadline,
                "the proxy reported {} deltas of {expected}",
                proxy.own.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        own = proxy.own.lock().unwrap()[warm_up_deltas..].to_vec();
        own.sort_unstable();
    }
    Measured {
        end_to_end: all,
        own,
        cpu,
    }
}

fn bench_delta_to_sse() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (concurrent, rounds) in [(1, 20), (100, 3)] {
        let m = runtime.block_on(measure(concurrent, rounds, false));
        println!(
            "delta_to_sse/{concurrent}_streams end to end (worker stamp to client): {} deltas, \
             p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs; proxy CPU {:.1} µs per delta \
             (whole process, requests and streams included)",
            m.end_to_end.len(),
            percentile(&m.end_to_end, 0.5),
            percentile(&m.end_to_end, 0.99),
            percentile(&m.end_to_end, 1.0),
            m.cpu.as_secs_f64() * 1e6 / m.end_to_end.len() as f64,
        );
        let m = runtime.block_on(measure(concurrent, rounds, true));
        println!(
            "delta_to_sse/{concurrent}_streams proxy's own (line read to SSE event handed to \
             hyper): {} deltas, p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs; with the trace on: \
             end to end p50 {:.0} µs, p99 {:.0} µs, proxy CPU {:.1} µs per delta",
            m.own.len(),
            percentile(&m.own, 0.5),
            percentile(&m.own, 0.99),
            percentile(&m.own, 1.0),
            percentile(&m.end_to_end, 0.5),
            percentile(&m.end_to_end, 0.99),
            m.cpu.as_secs_f64() * 1e6 / m.end_to_end.len() as f64,
        );
    }
}

fn main() {
    bench_record_turn();
    bench_delta_to_sse();
}
