//! Durable remote-write delivery against the real Prometheus: a receiver outage, the real
//! proxy killed with SIGKILL during one, a damaged queue segment, and a queue over its
//! byte cap.
//!
//! The library tests push `durable_test_tick`, whose value is the number of the snapshot
//! (1, 2, 3, ...): reading `durable_test_tick[10m]` back shows which ticks arrived, in
//! which order, and whether any arrived twice. The real-binary test counts the snapshots
//! each process logged as queued against the samples the receiver holds.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use rustix::process::Signal;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use codex_proxy::config::Config;
use codex_proxy::push::{Pushers, Snapshot};
use common::{start_prometheus, wait_until, Proxy, Server};
use prometheus::{IntGauge, Registry};

/// Snapshots of one gauge holding the tick number; each `snapshot()` is one tick.
struct Ticks {
    registry: Registry,
    gauge: IntGauge,
    count: AtomicU64,
}

impl Ticks {
    fn new() -> Arc<Ticks> {
        let registry = Registry::new();
        let gauge = IntGauge::new("durable_test_tick", "Number of the snapshot.").unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        Arc::new(Ticks {
            registry,
            gauge,
            count: AtomicU64::new(0),
        })
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    fn source(self: &Arc<Self>) -> Arc<dyn codex_proxy::push::SnapshotSource> {
        let ticks = Arc::clone(self);
        Arc::new(move || {
            let n = ticks.count.fetch_add(1, Ordering::SeqCst) + 1;
            ticks.gauge.set(n as i64);
            Snapshot::from_families(&ticks.registry.gather())
        })
    }
}

fn remote_write(
    prometheus: &Server,
    queue_dir: &Path,
    interval: &str,
    max_queue_bytes: &str,
) -> Config {
    Config::parse(&format!(
        "[[remote_write]]\nname = \"prom\"\nurl = \"{}/api/v1/write\"\ninterval = \"{interval}\"\n\
         queue_dir = \"{}\"\nmax_queue_bytes = \"{max_queue_bytes}\"\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n",
        prometheus.base,
        queue_dir.display()
    ))
    .unwrap()
}

fn start_pushers(config: &Config, ticks: &Arc<Ticks>, registry: &Registry) -> Pushers {
    capture_logs();
    let pushers = Pushers::start(
        &config.remote_write,
        &config.pushgateway,
        ticks.source(),
        registry,
        "test",
    )
    .unwrap();
    pushers.handle().mark_ready();
    pushers
}

/// The tick numbers Prometheus holds, in timestamp order.
async fn stored_ticks(prometheus: &Server) -> Vec<u64> {
    let result = prometheus.query("durable_test_tick[10m]").await;
    let Some(values) = result.get(0).and_then(|s| s["values"].as_array()) else {
        return Vec::new();
    };
    values
        .iter()
        .filter_map(|v| v[1].as_str()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .collect()
}

/// A `codex_push_*` value of destination `prom` in `registry` (0 when absent).
fn push_metric(registry: &Registry, name: &str, reason: Option<&str>) -> u64 {
    let mut labels = vec![("destination", "prom")];
    labels.extend(reason.map(|r| ("reason", r)));
    common::registry_value(registry, name, &labels) as u64
}

fn queued(pushers: &Pushers) -> u64 {
    pushers
        .handle()
        .status()
        .iter()
        .map(|s| s.queued_requests)
        .sum()
}

/// Waits until Prometheus holds exactly `expected(ticks so far)` with nothing queued.
async fn wait_delivered(
    prometheus: &Server,
    pushers: &Pushers,
    expected: impl Fn() -> Vec<u64>,
) -> Vec<u64> {
    let mut last = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let stored = stored_ticks(prometheus).await;
            if queued(pushers) == 0 && stored == expected() {
                return stored;
            }
            last = stored;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "Prometheus never held the expected ticks; last seen {last:?}, expected {:?}",
            expected()
        )
    })
}

async fn wait_ticks(ticks: &Ticks, n: u64) {
    wait_until(&format!("{n} ticks"), Duration::from_secs(60), || async {
        (ticks.count() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tick_arrives_exactly_once_after_a_receiver_outage() {
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    let queue_dir = tempfile::tempdir().unwrap();
    let ticks = Ticks::new();
    let registry = Registry::new();
    let config = remote_write(&prometheus, queue_dir.path(), "1s", "256MiB");
    let pushers = start_pushers(&config, &ticks, &registry);
    wait_delivered(&prometheus, &pushers, || {
        (1..=ticks.count().max(2)).collect()
    })
    .await;

    prometheus.stop().await;
    let before = ticks.count();
    wait_ticks(&ticks, before + 20).await;
    assert!(
        queued(&pushers) >= 19,
        "the outage queued only {}",
        queued(&pushers)
    );
    prometheus.start().await;

    let stored = wait_delivered(&prometheus, &pushers, || (1..=ticks.count()).collect()).await;
    assert!(stored.len() as u64 >= before + 20);
    assert_eq!(
        push_metric(&registry, "codex_push_samples_dropped_total", None),
        0,
        "samples were dropped"
    );
    assert_eq!(
        push_metric(&registry, "codex_push_samples_sent_total", None),
        ticks.count()
    );
    pushers.shutdown(Duration::from_secs(5)).await;
}

/// Lines of a proxy log saying a snapshot went into the queue (logged once it is there).
fn snapshots_queued(proxy: &Proxy) -> u64 {
    proxy.logs().matches("snapshot queued").count() as u64
}

async fn wait_snapshots(proxy: &Proxy, n: u64) {
    wait_until(
        &format!("{n} snapshots queued"),
        Duration::from_secs(60),
        || async { (snapshots_queued(proxy) >= n).then_some(()) },
    )
    .await;
}

/// Samples of `codex_worker_ready` (one per snapshot) the receiver holds.
async fn stored_snapshots(prometheus: &Server) -> u64 {
    let result = prometheus
        .query(r#"count_over_time(codex_worker_ready{instance="durable-test"}[10m])"#)
        .await;
    result
        .get(0)
        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The first push destination in the proxy's `/healthz`.
async fn healthz_push(proxy: &Proxy) -> Option<serde_json::Value> {
    Some(proxy.healthz().await?["push"][0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_snapshot_arrives_once_when_the_proxy_is_killed_during_an_outage() {
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    // The queue lives in the proxy's working directory, which the restart reuses.
    let config = format!(
        "[[remote_write]]\nname = \"prom\"\nurl = \"{}/api/v1/write\"\ninterval = \"1s\"\n\
         queue_dir = \"queue\"\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n\
         external_labels = {{ instance = \"durable-test\" }}\n",
        prometheus.base
    );
    let first = Proxy::start(&config, &[]).await;
    wait_until(
        "the first snapshots in Prometheus",
        Duration::from_secs(60),
        || async { (stored_snapshots(&prometheus).await >= 2).then_some(()) },
    )
    .await;

    prometheus.stop().await;
    let at_stop = snapshots_queued(&first);
    wait_snapshots(&first, at_stop + 8).await;
    let mut proc = first.proc;
    proc.signal(Signal::KILL);
    proc.wait_exit(Duration::from_secs(10)).await;
    // Only snapshots that reached the queue are logged: one being taken at the kill is not.
    let made_by_first = proc.logs().matches("snapshot queued").count() as u64;

    let second = Proxy::start_in(first.dir, &config, &[]).await;
    wait_snapshots(&second, 10).await;
    prometheus.start().await;

    let mut last = (0, 0);
    let delivered = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let made_before = made_by_first + snapshots_queued(&second);
            let stored = stored_snapshots(&prometheus).await;
            let made_after = made_by_first + snapshots_queued(&second);
            if healthz_push(&second)
                .await
                .is_some_and(|p| p["queued_requests"] == 0)
                && made_before == made_after
                && stored == made_after
            {
                return stored;
            }
            last = (stored, made_after);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let delivered = delivered.unwrap_or_else(|_| {
        panic!(
            "stored / made = {last:?}\nfirst proxy:\n{}\nsecond proxy:\n{}",
            proc.logs(),
            second.logs()
        )
    });
    // Everything made arrived once: none dropped, none doubled. What the first proxy left
    // in the queue was replayed by the second.
    assert!(delivered >= made_by_first + 10);
    let replayed = healthz_push(&second)
        .await
        .map(|p| p["replayed_requests"].clone());
    assert!(
        replayed
            .as_ref()
            .and_then(|r| r.as_u64())
            .is_some_and(|r| r >= 8),
        "replayed: {replayed:?}"
    );
}

/// Cuts the newest data segment in `queue_dir` in the middle of its last record.
fn truncate_last_record(queue_dir: &Path) {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(queue_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "seg") && std::fs::metadata(p).unwrap().len() > 0
        })
        .collect();
    segments.sort();
    let newest = segments.last().expect("a segment with data");
    let len = std::fs::metadata(newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_cut_mid_record_is_logged_and_everything_else_delivered() {
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    prometheus.stop().await;
    let queue_dir = tempfile::tempdir().unwrap();
    let ticks = Ticks::new();
    let config = remote_write(&prometheus, queue_dir.path(), "200ms", "256MiB");
    let pushers = start_pushers(&config, &ticks, &Registry::new());
    wait_until("5 queued requests", Duration::from_secs(30), || async {
        (queued(&pushers) >= 5).then_some(())
    })
    .await;
    // The final push queues the last snapshot, then the stale markers in a request of their
    // own (series.rs): the cut below falls in that markers request.
    pushers.shutdown(Duration::from_millis(300)).await;
    truncate_last_record(queue_dir.path());

    prometheus.start().await;
    let registry = Registry::new();
    let pushers = start_pushers(&config, &ticks, &registry);
    let stored = wait_delivered(&prometheus, &pushers, || (1..=ticks.count()).collect()).await;
    assert!(stored.len() >= 5);
    assert_eq!(
        push_metric(
            &registry,
            "codex_push_samples_dropped_total",
            Some("corrupt")
        ),
        1,
        "the one stale marker in the cut record"
    );
    let logs = captured_logs();
    let line = logs.lines().find(|l| {
        l.contains("torn or corrupt") && l.contains(&queue_dir.path().display().to_string())
    });
    assert!(
        line.is_some_and(|l| l.contains("skipped 1")),
        "no single warning for the cut record in:\n{logs}"
    );
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_tiny_cap_the_oldest_requests_are_dropped_and_counted() {
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    let queue_dir = tempfile::tempdir().unwrap();
    let ticks = Ticks::new();
    let registry = Registry::new();
    // A request of this one series is about 100 bytes: a handful fit.
    let config = remote_write(&prometheus, queue_dir.path(), "200ms", "600B");
    let pushers = start_pushers(&config, &ticks, &registry);
    wait_delivered(&prometheus, &pushers, || {
        (1..=ticks.count().max(2)).collect()
    })
    .await;

    prometheus.stop().await;
    let before = ticks.count();
    wait_ticks(&ticks, before + 30).await;
    let dropped = wait_until("queue_full drops", Duration::from_secs(30), || async {
        let d = push_metric(
            &registry,
            "codex_push_samples_dropped_total",
            Some("queue_full"),
        );
        (d > 0).then_some(d)
    })
    .await;
    prometheus.start().await;

    // What arrives is everything but a run of the oldest queued ticks, as long as the
    // drop counter says.
    let stored = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let stored = stored_ticks(&prometheus).await;
            let dropped = push_metric(
                &registry,
                "codex_push_samples_dropped_total",
                Some("queue_full"),
            );
            let expected = ticks.count() - dropped;
            if queued(&pushers) == 0
                && stored.len() as u64 == expected
                && stored.last() == Some(&ticks.count())
            {
                return (stored, dropped);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the backlog never drained");
    let (stored, dropped_total) = stored;
    assert!(dropped_total >= dropped);
    let gaps: Vec<(u64, u64)> = stored
        .windows(2)
        .filter(|w| w[1] != w[0] + 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert_eq!(
        gaps.len(),
        1,
        "the dropped ticks are not one run of the oldest: {stored:?}"
    );
    let (last_before_gap, first_after_gap) = gaps[0];
    assert_eq!(
        first_after_gap - last_before_gap - 1,
        dropped_total,
        "{stored:?}"
    );
    assert!(
        last_before_gap >= before,
        "ticks delivered before the outage went missing: {stored:?}"
    );
    pushers.shutdown(Duration::from_secs(5)).await;
}

/// Everything the library logs in this test binary, for assertions on log lines.
fn capture_logs() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(|| LogSink)
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .try_init();
    });
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// `protocol = "auto"` with a durable queue: ticks queued as 2.0 while Prometheus 2.42 (a
/// 1.0-only receiver) is down, then the process restarts on that queue. The first 2.0
/// request comes back 204 without any `*-Written` header (Prometheus read it as an empty
/// 1.0 request), so the destination falls back to 1.0 and sends every queued 2.0 batch,
/// from disk, as 1.0: every tick exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_delivers_queued_2_0_ticks_as_1_0_exactly_once_across_a_restart() {
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    prometheus.stop().await;
    let queue_dir = tempfile::tempdir().unwrap();
    let ticks = Ticks::new();
    let mut config = remote_write(&prometheus, queue_dir.path(), "200ms", "256MiB");
    config.remote_write[0].protocol = codex_proxy::config::RemoteWriteProtocol::Auto;

    let registry = Registry::new();
    let pushers = start_pushers(&config, &ticks, &registry);
    assert_eq!(pushers.handle().status()[0].protocol, Some("2.0"));
    wait_ticks(&ticks, 8).await;
    pushers.shutdown(Duration::from_millis(300)).await;
    let queued_before = ticks.count();
    assert!(
        !queue_dir.path().join("protocol").exists(),
        "nothing negotiated yet"
    );

    prometheus.start().await;
    let registry = Registry::new();
    let pushers = start_pushers(&config, &ticks, &registry);
    let stored = wait_delivered(&prometheus, &pushers, || (1..=ticks.count()).collect()).await;
    assert!(stored.len() as u64 > queued_before);
    assert_eq!(pushers.handle().status()[0].protocol, Some("1.0"));
    let kept = std::fs::read_to_string(queue_dir.path().join("protocol")).unwrap();
    assert!(kept.starts_with("1.0\n"), "{kept}");
    assert_eq!(
        push_metric(&registry, "codex_push_samples_dropped_total", None),
        0,
        "samples were dropped"
    );
    let logs = prometheus.logs();
    assert!(!logs.contains("out of order"), "{logs}");
    pushers.shutdown(Duration::from_secs(5)).await;
}
