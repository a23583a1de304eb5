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
//!     SSE event to hyper (`delta_to_sse_ns`), with that hand-over's `CLOCK_MONOTONIC`
//!     time and the completion id, read here from the proxy's stderr. Matched to what
//!     the client saw (the k-th delta of a completion), they also split the end-to-end
//!     figure into before the proxy read the line and after it handed the event over.
//!
//!   Printed as p50 / p99 (not a criterion statistic: a distribution is the point).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common {
    pub mod cpu_time;
}

use std::collections::HashMap;
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

fn bench_record_turn() {
    let config: MetricsConfig = toml::from_str("models = [\"gpt-5\"]").unwrap();
    let metrics = Metrics::new(&config).unwrap();
    let mut items = [0; ITEM_KINDS.len()];
    items[0] = 1; // agent_message
    items[2] = 2; // command_execution
    let turn = FinishedTurn {
        model: Some("gpt-5"),
        key: 0,
        stream: true,
        outcome: Outcome::Completed,
        duration: Duration::from_millis(4200),
        time_to_first_token: Some(Duration::from_millis(800)),
        first_to_last_delta: Some(Duration::from_millis(3100)),
        tokens: Some(TokenCounts([1200, 800, 0, 310, 120])),
        limit_reached: None,
        items,
        exemplar: None,
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

/// One `delta_to_sse` report of the proxy's, in the order it logged them.
struct OwnReport {
    completion_id: String,
    /// Line read off the worker's stdout → SSE event handed to hyper.
    own_ns: u64,
    /// The hand-over, on the `CLOCK_MONOTONIC` clock.
    sent_at_ns: u64,
}

/// The release binary with the demo worker, killed when dropped.
struct Proxy {
    child: Child,
    base: String,
    /// The proxy's reports (only when started with the trace on).
    own: Arc<Mutex<Vec<OwnReport>>>,
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
                let report = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|e| {
                        Some(OwnReport {
                            completion_id: e.get("completion_id")?.as_str()?.to_string(),
                            own_ns: e.get("delta_to_sse_ns")?.as_u64()?,
                            sent_at_ns: e.get("sent_at_ns")?.as_u64()?,
                        })
                    });
                match report {
                    Some(report) => own.lock().unwrap().push(report),
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

/// What the client saw of one stream.
struct StreamSeen {
    completion_id: String,
    /// Per delta, in order: the worker's stamp and the arrival of its bytes (ns).
    deltas: Vec<(u64, u64)>,
}

async fn one_stream(client: reqwest::Client, url: String, prompt: String) -> StreamSeen {
    let body = serde_json::json!({"model": "codex-demo", "stream": true,
        "messages": [{"role": "user", "content": prompt}]});
    let mut response = client.post(url).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let mut seen = StreamSeen {
        completion_id: String::new(),
        deltas: Vec::new(),
    };
    let mut pending = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        let arrived = monotonic_nanos();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        // Whole events only: an event split across reads is finished by the next one.
        let Some(end) = pending.rfind("\n\n") else {
            continue;
        };
        for event in pending[..end].split("\n\n") {
            if seen.completion_id.is_empty() {
                if let Some(id) = event
                    .split("\"id\":\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                {
                    seen.completion_id = id.to_string();
                }
            }
            let Some(stamp) = event
                .split("\"content\":\"")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            seen.deltas.push((stamp, arrived));
        }
        pending.drain(..end + 2);
    }
    seen
}

fn monotonic_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
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

/// Per delta of the counted rounds, each sorted (ns).
#[derive(Default)]
struct Measured {
    /// Worker stamp → bytes at the client.
    end_to_end: Vec<u64>,
    /// With the trace only: line read by the proxy → SSE event handed to hyper.
    own: Vec<u64>,
    /// With the trace only: worker stamp → line read by the proxy (the worker's write,
    /// the pipe, and the proxy's reader waiting to run).
    before_read: Vec<u64>,
    /// With the trace only: SSE event handed to hyper → bytes at the client (hyper's
    /// write, loopback, the client's wake-up).
    after_handover: Vec<u64>,
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
    let mut streams_seen = Vec::new();
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
            let seen = r.unwrap();
            if round > 0 {
                streams_seen.push(seen);
            } else {
                warm_up_deltas += seen.deltas.len();
            }
        }
    }
    let mut m = Measured {
        cpu: process_cpu(proxy.child.id()) - cpu_before,
        ..Measured::default()
    };
    for seen in &streams_seen {
        m.end_to_end.extend(
            seen.deltas
                .iter()
                .map(|(stamp, arrived)| arrived.saturating_sub(*stamp)),
        );
    }
    if trace {
        // One report per delta, logged before its bytes went out, so all are coming.
        let expected = warm_up_deltas + m.end_to_end.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while proxy.own.lock().unwrap().len() < expected {
            assert!(
                Instant::now() < deadline,
                "the proxy reported {} deltas of {expected}",
                proxy.own.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut reports: HashMap<String, Vec<(u64, u64)>> = HashMap::new();
        for r in proxy.own.lock().unwrap().iter() {
            reports
                .entry(r.completion_id.clone())
                .or_default()
                .push((r.own_ns, r.sent_at_ns));
        }
        // The k-th delta the client saw of a stream is the k-th the proxy reported for it.
        for seen in &streams_seen {
            let ours = &reports[&seen.completion_id];
            assert_eq!(ours.len(), seen.deltas.len(), "{}", seen.completion_id);
            for (&(stamp, arrived), &(own, sent)) in seen.deltas.iter().zip(ours) {
                m.own.push(own);
                m.before_read.push((sent - own).saturating_sub(stamp));
                m.after_handover.push(arrived.saturating_sub(sent));
            }
        }
    }
    for v in [
        &mut m.end_to_end,
        &mut m.own,
        &mut m.before_read,
        &mut m.after_handover,
    ] {
        v.sort_unstable();
    }
    m
}

fn p50_p99(sorted: &[u64]) -> String {
    format!(
        "p50 {:.1} µs, p99 {:.1} µs, max {:.0} µs",
        percentile(sorted, 0.5),
        percentile(sorted, 0.99),
        percentile(sorted, 1.0)
    )
}

fn bench_delta_to_sse() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (concurrent, rounds) in [(1, 20), (100, 3)] {
        let m = runtime.block_on(measure(concurrent, rounds, false));
        let per_delta = |m: &Measured| m.cpu.as_secs_f64() * 1e6 / m.end_to_end.len() as f64;
        println!(
            "delta_to_sse/{concurrent}_streams, trace off: {} deltas; end to end (worker stamp \
             to client) {}; proxy CPU {:.1} µs per delta (whole process)",
            m.end_to_end.len(),
            p50_p99(&m.end_to_end),
            per_delta(&m),
        );
        let m = runtime.block_on(measure(concurrent, rounds, true));
        println!(
            "delta_to_sse/{concurrent}_streams, trace on: {} deltas; proxy's own (line read to \
             SSE event handed to hyper) {}; before it (worker stamp to line read) {}; after it \
             (hand-over to client) {}; end to end {}; proxy CPU {:.1} µs per delta",
            m.own.len(),
            p50_p99(&m.own),
            p50_p99(&m.before_read),
            p50_p99(&m.after_handover),
            p50_p99(&m.end_to_end),
            per_delta(&m),
        );
    }
}

fn main() {
    bench_record_turn();
    bench_delta_to_sse();
}
