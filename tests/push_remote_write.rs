//! The remote-write pusher against an in-process receiver that decodes every request
//! (snappy + protobuf) and answers as each test scripts it: what a real server cannot show
//! (exact headers, injected failures, retry timing, shutdown markers). The real receivers
//! are in push_real_receivers.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use codex_proxy::config::Config;
use codex_proxy::push::remote_write::encode::{decode, STALE_NAN_BITS};
use codex_proxy::push::{Pushers, Snapshot};
use common::wait_until;
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use prometheus::{CounterVec, Gauge, HistogramOpts, HistogramVec, Opts, Registry};

const INSTANCE: &str = "test-host:11435";
const WAIT: Duration = Duration::from_secs(20);

/// One decoded series: sorted (name, value) labels, the sample value and timestamp.
#[derive(Debug, Clone)]
struct Series {
    labels: Vec<(String, String)>,
    value: f64,
    ts: i64,
}

impl Series {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn name(&self) -> &str {
        self.label("__name__").unwrap_or("")
    }
    fn is_stale(&self) -> bool {
        self.value.to_bits() == STALE_NAN_BITS
    }
}

/// A request as received, with the status it was answered.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    series: Vec<Series>,
    status: StatusCode,
    at: Instant,
}

/// An answer the receiver gives to one request instead of 200.
#[derive(Clone)]
struct Reply {
    status: StatusCode,
    retry_after: Option<&'static str>,
}

fn reply(status: u16) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        retry_after: None,
    }
}

#[derive(Default)]
struct ReceiverState {
    log: Mutex<Vec<Received>>,
    /// Answers for the next requests, in order; 200 when empty.
    script: Mutex<VecDeque<Reply>>,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(script: Vec<Reply>) -> Receiver {
        let state = Arc::new(ReceiverState {
            log: Mutex::default(),
            script: Mutex::new(script.into()),
        });
        let app = Router::new()
            .route("/api/v1/write", post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Receiver {
            url: format!("http://{addr}/api/v1/write"),
            state,
        }
    }

    fn log(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    async fn wait_for_requests(&self, n: usize) -> Vec<Received> {
        wait_until(&format!("{n} requests"), WAIT, || async {
            let log = self.log();
            (log.len() >= n).then_some(log)
        })
        .await
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request = match decode(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("undecodable: {e}")).into_response(),
    };
    let series = request
        .timeseries
        .into_iter()
        .flat_map(|ts| {
            let labels: Vec<(String, String)> =
                ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
            ts.samples.into_iter().map(move |s| Series {
                labels: labels.clone(),
                value: s.value,
                ts: s.timestamp,
            })
        })
        .collect();
    let answer = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(reply(200));
    state.log.lock().unwrap().push(Received {
        headers,
        body,
        series,
        status: answer.status,
        at: Instant::now(),
    });
    let mut response = (answer.status, "receiver says: no thanks").into_response();
    if let Some(after) = answer.retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.parse().unwrap());
    }
    response
}

/// The application side: a registry with a counter, a gauge, a histogram, plus a summary
/// family (the prometheus crate has no summary type) added to each snapshot.
struct App {
    registry: Registry,
    requests: CounterVec,
    latency: HistogramVec,
}

impl App {
    fn new() -> App {
        let registry = Registry::new();
        let requests = CounterVec::new(
            Opts::new("codex_http_requests_total", "requests"),
            &["route", "model"],
        )
        .unwrap();
        let latency = HistogramVec::new(
            HistogramOpts::new("codex_http_latency_ms", "latency").buckets(vec![50.0, 400.0]),
            &["route"],
        )
        .unwrap();
        let ready = Gauge::new("codex_worker_ready", "ready").unwrap();
        ready.set(1.0);
        registry.register(Box::new(requests.clone())).unwrap();
        registry.register(Box::new(latency.clone())).unwrap();
        registry.register(Box::new(ready)).unwrap();
        requests
            .with_label_values(&["/v1/chat/completions", "gpt"])
            .inc_by(2.0);
        requests.with_label_values(&["/v1/models", ""]).inc();
        latency
            .with_label_values(&["/v1/chat/completions"])
            .observe(120.0);
        App {
            registry,
            requests,
            latency,
        }
    }

    /// Starts the pushers of `config` (TOML with `[[remote_write]]` tables) over this registry.
    fn start(&self, config: &str) -> Pushers {
        let config = Config::parse(config).unwrap();
        config.validate().unwrap();
        let registry = self.registry.clone();
        let source = Arc::new(move || {
            let mut families = registry.gather();
            families.push(summary_family());
            Snapshot::from_families(&families)
        });
        Pushers::start(
            &config.remote_write,
            &config.pushgateway,
            source,
            &self.registry,
            INSTANCE,
        )
        .unwrap()
    }

    /// Value of a `codex_push_*` child in the registry, by label values.
    fn self_metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                labels.iter().all(|(n, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *n && l.value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
            .sum()
    }
}

fn summary_family() -> MetricFamily {
    let q = |q: f64, v: f64| {
        let mut x = Quantile::default();
        x.set_quantile(q);
        x.set_value(v);
        x
    };
    let mut s = Summary::default();
    s.set_quantile(vec![q(0.5, 110.0), q(0.95, 120.0)]);
    s.set_sample_sum(230.0);
    s.set_sample_count(2);
    let mut route = LabelPair::default();
    route.set_name("route".into());
    route.set_value("/v1/chat/completions".into());
    let mut m = Metric::from_label(vec![route]);
    m.set_summary(s);
    let mut f = MetricFamily::default();
    f.set_name("codex_http_latency_summary_ms".into());
    f.set_help("latency summary".into());
    f.set_field_type(MetricType::SUMMARY);
    f.set_metric(vec![m]);
    f
}

fn destination(url: &str, extra: &str) -> String {
    format!("[[remote_write]]\nurl = \"{url}\"\n{extra}\n")
}

/// Every series' timestamps, in the order the receiver accepted them, strictly increase.
fn assert_timestamps_increase_per_series(requests: &[&Received]) {
    let mut last: HashMap<Vec<(String, String)>, i64> = HashMap::new();
    for r in requests {
        for s in &r.series {
            if let Some(prev) = last.insert(s.labels.clone(), s.ts) {
                assert!(s.ts > prev, "{:?}: {} after {prev}", s.labels, s.ts);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_carry_the_protocol_headers_and_well_formed_series() {
    let rx = Receiver::start(vec![]).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "name = \"primary\"\ninterval = \"100ms\"\n\
         headers = { \"Content-Type\" = \"text/plain\", \"X-Scope-OrgID\" = \"team-a\" }",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(3).await;

    for r in &log {
        let one = |name: &str| {
            let values: Vec<_> = r.headers.get_all(name).iter().collect();
            assert_eq!(values.len(), 1, "{name}: {values:?}");
            values[0].to_str().unwrap().to_string()
        };
        assert_eq!(one("content-encoding"), "snappy");
        assert_eq!(one("content-type"), "application/x-protobuf");
        assert_eq!(one("x-prometheus-remote-write-version"), "0.1.0");
        assert_eq!(
            one("user-agent"),
            format!("codex-proxy/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(one("x-scope-orgid"), "team-a");
        assert!(r.headers.get("authorization").is_none());
        for s in &r.series {
            let names: Vec<&str> = s.labels.iter().map(|(n, _)| n.as_str()).collect();
            assert!(
                names.windows(2).all(|w| w[0] < w[1]),
                "sorted, unique: {names:?}"
            );
            assert!(names.contains(&"__name__"), "{names:?}");
            assert!(s.labels.iter().all(|(n, v)| !n.is_empty() && !v.is_empty()));
            assert_eq!(s.label("job"), Some("codex-proxy"));
            assert_eq!(s.label("instance"), Some(INSTANCE));
            assert!(!s.is_stale(), "no stale markers while every series lives");
        }
        let stamps: Vec<i64> = r.series.iter().map(|s| s.ts).collect();
        assert!(
            stamps.windows(2).all(|w| w[0] == w[1]),
            "one timestamp per snapshot"
        );
    }

    let first = &log[0].series;
    let find = |name: &str, label: Option<(&str, &str)>| {
        first
            .iter()
            .find(|s| s.name() == name && label.map_or(true, |(n, v)| s.label(n) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {label:?} in {first:#?}"))
            .value
    };
    assert_eq!(
        find("codex_http_requests_total", Some(("model", "gpt"))),
        2.0
    );
    let no_model = first
        .iter()
        .find(|s| s.label("route") == Some("/v1/models"))
        .unwrap();
    assert_eq!(
        no_model.label("model"),
        None,
        "empty label values are left out"
    );
    assert_eq!(find("codex_worker_ready", None), 1.0);
    assert_eq!(
        find("codex_http_latency_ms_bucket", Some(("le", "50"))),
        0.0
    );
    assert_eq!(
        find("codex_http_latency_ms_bucket", Some(("le", "400"))),
        1.0
    );
    assert_eq!(
        find("codex_http_latency_ms_bucket", Some(("le", "+Inf"))),
        1.0
    );
    assert_eq!(find("codex_http_latency_ms_sum", None), 120.0);
    assert_eq!(find("codex_http_latency_ms_count", None), 1.0);
    assert_eq!(
        find("codex_http_latency_summary_ms", Some(("quantile", "0.95"))),
        120.0
    );
    assert_eq!(find("codex_http_latency_summary_ms_sum", None), 230.0);
    assert_eq!(find("codex_http_latency_summary_ms_count", None), 2.0);

    let accepted: Vec<&Received> = log.iter().collect();
    assert_timestamps_increase_per_series(&accepted);

    // The pusher's own families are in the registry, and pushed like every other.
    let dest = [("destination", "primary"), ("kind", "remote_write")];
    assert!(app.self_metric("codex_push_samples_sent_total", &dest) > 0.0);
    let success = [dest[0], dest[1], ("outcome", "success")];
    assert!(app.self_metric("codex_push_requests_total", &success) >= 1.0);
    assert!(log[2]
        .series
        .iter()
        .any(|s| s.name() == "codex_push_samples_sent_total"
            && s.label("destination") == Some("primary")));
    assert!(pushers.handle().status()[0]
        .last_success_unix_seconds
        .is_some());
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_500_is_resent_byte_identical_and_one_answered_400_never() {
    let rx = Receiver::start(vec![reply(500), reply(200), reply(400)]).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "interval = \"150ms\"\nmin_backoff = \"10ms\"\nmax_backoff = \"20ms\"",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(6).await;

    assert_eq!(log[0].status, 500);
    assert_eq!(log[1].body, log[0].body, "the retry resends the same bytes");
    assert_eq!(log[1].series[0].ts, log[0].series[0].ts);
    assert_eq!(log[2].status, 400);
    assert!(
        log[3..].iter().all(|r| r.body != log[2].body),
        "a request answered 400 is never sent again"
    );
    assert!(log[3].series[0].ts > log[2].series[0].ts);
    let accepted: Vec<&Received> = log.iter().filter(|r| r.status == 200).collect();
    assert_timestamps_increase_per_series(&accepted);

    let dest = [("destination", "remote_write[0]"), ("kind", "remote_write")];
    let outcome = |o| {
        app.self_metric(
            "codex_push_requests_total",
            &[dest[0], dest[1], ("outcome", o)],
        )
    };
    assert_eq!(outcome("http_5xx"), 1.0);
    assert_eq!(outcome("http_4xx"), 1.0);
    let rejected = [dest[0], dest[1], ("reason", "rejected")];
    assert_eq!(
        app.self_metric("codex_push_samples_dropped_total", &rejected),
        log[2].series.len() as f64
    );
    assert_eq!(
        app.self_metric("codex_push_samples_retried_total", &dest),
        log[0].series.len() as f64
    );
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_keeps_the_backlog_and_it_drains_in_order_when_back() {
    let outage = vec![reply(503); 10];
    let rx = Receiver::start(outage).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "interval = \"50ms\"\nmin_backoff = \"40ms\"\nmax_backoff = \"80ms\"",
    ));
    pushers.handle().mark_ready();
    // Snapshots pile up behind the failing one while the receiver is down.
    wait_until("a backlog", WAIT, || async {
        (pushers.handle().status()[0].queued_requests >= 3).then_some(())
    })
    .await;
    let log = wait_until("the backlog drained", WAIT, || async {
        let log = rx.log();
        let ok = log.iter().filter(|r| r.status == 200).count();
        (ok >= 4).then_some(log)
    })
    .await;
    let accepted: Vec<&Received> = log.iter().filter(|r| r.status == 200).collect();
    assert_eq!(
        accepted[0].body, log[0].body,
        "the first snapshot is delivered first, unchanged"
    );
    assert_timestamps_increase_per_series(&accepted);
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_429_is_retried_no_sooner_than_retry_after() {
    let rate_limited = Reply {
        status: StatusCode::TOO_MANY_REQUESTS,
        retry_after: Some("1"),
    };
    let rx = Receiver::start(vec![rate_limited]).await;
    let app = App::new();
    // Without Retry-After the backoff would resend within milliseconds.
    let pushers = app.start(&destination(
        &rx.url,
        "interval = \"1h\"\nmin_backoff = \"1ms\"\nmax_backoff = \"2ms\"",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(2).await;
    assert_eq!(log[0].status, 429);
    assert_eq!(log[1].body, log[0].body);
    let waited = log[1].at - log[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "resent after {waited:?}"
    );
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_429_is_dropped_when_retry_on_429_is_off() {
    let rx = Receiver::start(vec![reply(429)]).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "interval = \"100ms\"\nretry_on_429 = false\nmin_backoff = \"1ms\"\nmax_backoff = \"2ms\"",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(2).await;
    assert_ne!(log[1].body, log[0].body);
    let reason = [
        ("destination", "remote_write[0]"),
        ("reason", "rate_limited"),
    ];
    assert_eq!(
        app.self_metric("codex_push_samples_dropped_total", &reason),
        log[0].series.len() as f64
    );
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_pushes_a_final_snapshot_then_stale_markers_for_every_series() {
    let rx = Receiver::start(vec![]).await;
    let app = App::new();
    let pushers = app.start(&destination(&rx.url, "interval = \"1h\""));
    pushers.handle().mark_ready();
    rx.wait_for_requests(1).await;
    app.requests
        .with_label_values(&["/v1/chat/completions", "gpt"])
        .inc();
    app.latency
        .remove_label_values(&["/v1/chat/completions"])
        .unwrap();
    pushers.shutdown(Duration::from_secs(10)).await;

    let log = rx.log();
    let all: Vec<&Series> = log.iter().flat_map(|r| &r.series).collect();
    let (stale, values): (Vec<&Series>, Vec<&Series>) = all.iter().partition(|s| s.is_stale());
    assert!(log.iter().all(|r| r.status == 200));
    // The final snapshot carries the latest value.
    let final_count = values
        .iter()
        .rev()
        .find(|s| s.label("model") == Some("gpt"))
        .map(|s| s.value);
    assert_eq!(final_count, Some(3.0));
    // Every series ever sent ends with a stale marker after its last sample.
    let mut last_sample: BTreeMap<&Vec<(String, String)>, i64> = BTreeMap::new();
    for s in &values {
        last_sample.insert(&s.labels, s.ts);
    }
    for (labels, ts) in last_sample {
        let marker = stale
            .iter()
            .find(|s| &s.labels == labels)
            .unwrap_or_else(|| panic!("no stale marker for {labels:?}"));
        assert!(
            marker.ts > ts,
            "{labels:?}: marker {} after {ts}",
            marker.ts
        );
    }
    // The removed histogram child was marked when it disappeared, in the final snapshot.
    assert!(stale
        .iter()
        .any(|s| s.name() == "codex_http_latency_ms_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_and_basic_auth_credentials_reach_the_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    let password = dir.path().join("password");
    std::fs::write(&token, "tok-123\n").unwrap();
    std::fs::write(&password, "pa55\n").unwrap();
    let bearer_rx = Receiver::start(vec![]).await;
    let basic_rx = Receiver::start(vec![]).await;
    let app = App::new();
    let config = destination(
        &bearer_rx.url,
        &format!(
            "interval = \"1h\"\nbearer_token_file = \"{}\"",
            token.display()
        ),
    ) + &destination(
        &basic_rx.url,
        &format!(
            "interval = \"1h\"\nbasic_auth = {{ username = \"ops\", password_file = \"{}\" }}",
            password.display()
        ),
    );
    let pushers = app.start(&config);
    pushers.handle().mark_ready();
    let bearer = bearer_rx.wait_for_requests(1).await;
    let basic = basic_rx.wait_for_requests(1).await;
    assert_eq!(bearer[0].headers["authorization"], "Bearer tok-123");
    // base64("ops:pa55")
    assert_eq!(basic[0].headers["authorization"], "Basic b3BzOnBhNTU=");
    let names: Vec<String> = pushers
        .handle()
        .status()
        .into_iter()
        .map(|s| s.destination)
        .collect();
    assert_eq!(names, ["remote_write[0]", "remote_write[1]"]);
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_gets_ready_is_still_reported_after_its_startup_timeout() {
    let rx = Receiver::start(vec![]).await;
    let _proxy = common::Proxy::start(
        &destination(&rx.url, "interval = \"1h\""),
        &[
            ("DEMO_FAIL_HANDSHAKE", "1"),
            ("WORKER_STARTUP_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    let log = rx.wait_for_requests(1).await;
    let ready = log[0]
        .series
        .iter()
        .find(|s| s.name() == "codex_worker_ready")
        .expect("codex_worker_ready pushed");
    assert_eq!(ready.value, 0.0);
}
