//! The remote-write pusher against an in-process receiver that decodes every request
//! (snappy + protobuf) and answers as each test scripts it: what a real server cannot show
//! (exact headers, injected failures, retry timing, shutdown markers). The real receivers
//! are in push_real_receivers.rs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
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
use codex_proxy::push::remote_write::proto::v2;
use codex_proxy::push::{Pushers, Snapshot};
use common::wait_until;
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use prometheus::{CounterVec, Gauge, HistogramOpts, HistogramVec, Opts, Registry};
use prost::Message;

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
    /// The series as the receiver read them (a 1.x receiver reads a 2.0 body as 1.0).
    series: Vec<Series>,
    /// A 2.0 request: its metadata type per series (same order as `series`), and what it
    /// breaks of the spec's MUSTs for senders.
    v2: Option<V2Request>,
    status: StatusCode,
    at: Instant,
}

#[derive(Debug, Clone, Default)]
struct V2Request {
    types: Vec<i32>,
    helps: Vec<String>,
    violations: Vec<String>,
    /// Native histograms: the series' labels, metadata type, the histogram.
    histograms: Vec<Histogram2>,
    exemplars: Vec<Exemplar2>,
}

/// A native histogram of a 2.0 request: its series' labels, metadata type, the histogram.
type Histogram2 = (Vec<(String, String)>, i32, v2::Histogram);

/// An exemplar of a 2.0 request, its labels read through the symbol table.
#[derive(Debug, Clone)]
struct Exemplar2 {
    series: Vec<(String, String)>,
    labels: Vec<(String, String)>,
    value: f64,
    ts: i64,
}

impl Received {
    /// The value of header `name`, which the request carries exactly once.
    fn one_header(&self, name: &str) -> String {
        let values: Vec<_> = self.headers.get_all(name).iter().collect();
        assert_eq!(values.len(), 1, "{name}: {values:?}");
        values[0].to_str().unwrap().to_string()
    }

    fn is_v2(&self) -> bool {
        self.headers["content-type"]
            == "application/x-protobuf;proto=io.prometheus.write.v2.Request"
    }
}

/// An answer the receiver gives to one request instead of 200.
#[derive(Clone)]
struct Reply {
    status: StatusCode,
    retry_after: Option<&'static str>,
    /// `X-Prometheus-Remote-Write-Samples-Written` lower than the samples received by this.
    unwritten: u64,
}

fn reply(status: u16) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        retry_after: None,
        unwritten: 0,
    }
}

/// Which remote-write the receiver speaks.
#[derive(Clone, Copy, Default, PartialEq)]
enum Speaks {
    /// 1.0 and 2.0, by `Content-Type`, with the `*-Written` headers (Prometheus 3).
    #[default]
    Both,
    /// 1.0 only, `Content-Type` not looked at, no `*-Written` headers (Prometheus 2.x).
    V1IgnoringType,
    /// 1.0 only, 415 to anything else.
    V1Refusing,
}

#[derive(Default)]
struct ReceiverState {
    log: Mutex<Vec<Received>>,
    /// Answers for the next requests, in order; 200 when empty.
    script: Mutex<VecDeque<Reply>>,
    speaks: Speaks,
    /// How long each answer takes (a receiver far away).
    delay: Duration,
    /// Requests being answered now, and the most ever at once.
    open: AtomicUsize,
    max_open: AtomicUsize,
    /// As Prometheus does: a request with a sample not newer than its series' newest
    /// stored one is refused whole (400), and nothing of it stored.
    strict: bool,
    /// The newest stored timestamp of each series (`strict` only).
    newest: Mutex<HashMap<Vec<(String, String)>, i64>>,
    /// What a 2.0 answer says of native histograms and exemplars.
    writes: Writes,
}

/// What the 2.0 receiver says it wrote besides samples.
#[derive(Clone, Copy, Default, PartialEq)]
enum Writes {
    /// Every histogram and exemplar, and says so.
    #[default]
    All,
    /// No histogram: answers 2xx with `Samples-Written` and `Exemplars-Written` only (a
    /// receiver that does not know native histograms, and breaks the spec's MUST).
    NoHistogramsHeaderMissing,
    /// No exemplar: `Exemplars-Written: 0` (a receiver without exemplar storage).
    NoExemplars,
}

impl ReceiverState {
    /// The scripted answer for this request; 200 once the script is through.
    fn next_answer(&self) -> Reply {
        self.script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(reply(200))
    }

    fn record(
        &self,
        headers: HeaderMap,
        body: Bytes,
        series: Vec<Series>,
        v2: Option<V2Request>,
        status: StatusCode,
    ) {
        self.log.lock().unwrap().push(Received {
            headers,
            body,
            series,
            v2,
            status,
            at: Instant::now(),
        });
    }
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(script: Vec<Reply>) -> Receiver {
        Receiver::speaking(Speaks::Both, script).await
    }

    async fn speaking(speaks: Speaks, script: Vec<Reply>) -> Receiver {
        Receiver::serve(speaks, script, Duration::ZERO).await
    }

    /// A receiver that takes `delay` to answer each request.
    async fn start_slow(script: Vec<Reply>, delay: Duration) -> Receiver {
        Receiver::serve(Speaks::Both, script, delay).await
    }

    /// A slow receiver that refuses what arrives out of order, as Prometheus does.
    async fn start_strict(script: Vec<Reply>, delay: Duration) -> Receiver {
        Receiver::with_state(ReceiverState {
            script: Mutex::new(script.into()),
            delay,
            strict: true,
            ..ReceiverState::default()
        })
        .await
    }

    async fn serve(speaks: Speaks, script: Vec<Reply>, delay: Duration) -> Receiver {
        Receiver::with_state(ReceiverState {
            script: Mutex::new(script.into()),
            speaks,
            delay,
            ..ReceiverState::default()
        })
        .await
    }

    async fn with_state(state: ReceiverState) -> Receiver {
        let state = Arc::new(state);
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
    let v2_type = headers.get("content-type").is_some_and(|t| {
        t.to_str()
            .is_ok_and(|t| t.ends_with(";proto=io.prometheus.write.v2.Request"))
    });
    if v2_type && state.speaks == Speaks::V1Refusing {
        let status = StatusCode::UNSUPPORTED_MEDIA_TYPE;
        state.record(headers, body, Vec::new(), None, status);
        return (status, "unsupported content type").into_response();
    }
    if v2_type && state.speaks == Speaks::Both {
        return receive_v2(state, headers, body);
    }
    let request = match decode(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("undecodable: {e}")).into_response(),
    };
    let series: Vec<Series> = request
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
    let mut answer = state.next_answer();
    if state.strict && answer.status == StatusCode::OK {
        let mut newest = state.newest.lock().unwrap();
        let in_order = series
            .iter()
            .try_fold(HashMap::new(), |mut seen, s: &Series| {
                let last = seen.get(&s.labels).or(newest.get(&s.labels)).copied();
                (last.is_none_or(|last| s.ts > last)).then(|| {
                    seen.insert(s.labels.clone(), s.ts);
                    seen
                })
            });
        match in_order {
            Some(seen) => newest.extend(seen),
            None => answer = reply(400),
        }
    }
    state.record(headers, body, series, None, answer.status);
    if !state.delay.is_zero() {
        let open = state.open.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_open.fetch_max(open, Ordering::SeqCst);
        tokio::time::sleep(state.delay).await;
        state.open.fetch_sub(1, Ordering::SeqCst);
    }
    let mut response = (answer.status, "receiver says: no thanks").into_response();
    if let Some(after) = answer.retry_after {
        response
            .headers_mut()
            .insert("retry-after", after.parse().unwrap());
    }
    response
}

/// A 2.0 request, read with the generated types, checked against every MUST of the spec
/// for senders, and answered with the `*-Written` headers.
fn receive_v2(state: Arc<ReceiverState>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match snap::raw::Decoder::new()
        .decompress_vec(&body)
        .map_err(|e| e.to_string())
        .and_then(|raw| v2::Request::decode(raw.as_slice()).map_err(|e| e.to_string()))
    {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("undecodable: {e}")).into_response(),
    };
    let mut bad = Vec::new();
    if request.symbols.first().map(String::as_str) != Some("") {
        bad.push("symbols[0] is not \"\"".to_string());
    }
    let mut unique = request.symbols.clone();
    unique.sort();
    unique.dedup();
    if unique.len() != request.symbols.len() {
        bad.push("symbols repeat".to_string());
    }
    let symbol = |r: u32| request.symbols.get(r as usize).cloned();
    let (mut series, mut v2) = (Vec::new(), V2Request::default());
    for ts in &request.timeseries {
        if ts.labels_refs.len() % 2 != 0 {
            bad.push(format!("odd labels_refs {:?}", ts.labels_refs));
        }
        let Some(labels) = (ts.labels_refs.chunks(2))
            .map(|p| Some((symbol(p[0])?, symbol(*p.get(1)?)?)))
            .collect::<Option<Vec<(String, String)>>>()
        else {
            bad.push(format!("a ref out of range in {:?}", ts.labels_refs));
            continue;
        };
        if !labels.windows(2).all(|w| w[0].0 < w[1].0) {
            bad.push(format!("labels not sorted and unique: {labels:?}"));
        }
        if labels.iter().any(|(n, v)| n.is_empty() || v.is_empty()) {
            bad.push(format!("an empty label name or value: {labels:?}"));
        }
        if !labels.iter().any(|(n, _)| n == "__name__") {
            bad.push(format!("no __name__: {labels:?}"));
        }
        if ts.samples.is_empty() == ts.histograms.is_empty() {
            bad.push(format!("not one of samples and histograms: {labels:?}"));
        }
        if !(ts.histograms.windows(2)).all(|w| w[0].timestamp <= w[1].timestamp) {
            bad.push(format!("histograms out of timestamp order: {labels:?}"));
        }
        if !ts
            .samples
            .windows(2)
            .all(|w| w[0].timestamp <= w[1].timestamp)
        {
            bad.push(format!("samples out of timestamp order: {labels:?}"));
        }
        let Some(meta) = ts.metadata else {
            bad.push(format!("no metadata: {labels:?}"));
            continue;
        };
        for r in [meta.help_ref, meta.unit_ref] {
            if symbol(r).is_none() {
                bad.push(format!("metadata ref {r} out of range"));
            }
        }
        for h in &ts.histograms {
            v2.histograms.push((labels.clone(), meta.r#type, h.clone()));
        }
        for e in &ts.exemplars {
            let Some(l) = (e.labels_refs.chunks(2))
                .map(|p| Some((symbol(p[0])?, symbol(*p.get(1)?)?)))
                .collect::<Option<Vec<(String, String)>>>()
            else {
                bad.push(format!("an exemplar ref out of range: {:?}", e.labels_refs));
                continue;
            };
            if e.timestamp == 0 {
                bad.push(format!("an exemplar without timestamp: {labels:?}"));
            }
            if !l.windows(2).all(|w| w[0].0 < w[1].0) {
                bad.push(format!("exemplar labels not sorted: {l:?}"));
            }
            v2.exemplars.push(Exemplar2 {
                series: labels.clone(),
                labels: l,
                value: e.value,
                ts: e.timestamp,
            });
        }
        for s in &ts.samples {
            v2.types.push(meta.r#type);
            v2.helps.push(symbol(meta.help_ref).unwrap_or_default());
            series.push(Series {
                labels: labels.clone(),
                value: s.value,
                ts: s.timestamp,
            });
        }
    }
    v2.violations = bad;
    let answer = state.next_answer();
    let written = (series.len() as u64).saturating_sub(answer.unwritten);
    let (histograms, exemplars) = (v2.histograms.len() as u64, v2.exemplars.len() as u64);
    state.record(headers, body, series, Some(v2), answer.status);
    let mut response = (answer.status, "receiver says: no thanks").into_response();
    let h = response.headers_mut();
    h.insert("x-prometheus-remote-write-samples-written", written.into());
    match state.writes {
        Writes::All => {
            h.insert(
                "x-prometheus-remote-write-histograms-written",
                histograms.into(),
            );
            h.insert(
                "x-prometheus-remote-write-exemplars-written",
                exemplars.into(),
            );
        }
        Writes::NoHistogramsHeaderMissing => {
            h.insert(
                "x-prometheus-remote-write-exemplars-written",
                exemplars.into(),
            );
        }
        Writes::NoExemplars => {
            h.insert(
                "x-prometheus-remote-write-histograms-written",
                histograms.into(),
            );
            h.insert("x-prometheus-remote-write-exemplars-written", 0.into());
        }
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
        common::registry_value(&self.registry, name, labels)
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

/// Waits until at least `n` requests are queued for the first destination.
async fn wait_queued(pushers: &Pushers, n: u64, what: &str) {
    wait_until(what, WAIT, || async {
        (pushers.handle().status()[0].queued_requests >= n).then_some(())
    })
    .await;
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
        let one = |name: &str| r.one_header(name);
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
            .find(|s| s.name() == name && label.is_none_or(|(n, v)| s.label(n) == Some(v)))
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
    wait_queued(&pushers, 3, "a backlog").await;
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
        retry_after: Some("1"),
        ..reply(429)
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

/// The `codex_push_*` counters of destination `remote_write[0]`.
fn counter(app: &App, name: &str, extra: Option<(&str, &str)>) -> f64 {
    let mut labels = vec![("destination", "remote_write[0]"), ("kind", "remote_write")];
    labels.extend(extra);
    app.self_metric(name, &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_2_0_meet_every_sender_must_of_the_spec_and_carry_metadata() {
    let rx = Receiver::start(vec![]).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "protocol = \"v2\"\ninterval = \"100ms\"\n\
         headers = { \"Content-Type\" = \"text/plain\", \"X-Prometheus-Remote-Write-Version\" = \"9\" }",
    ));
    pushers.handle().mark_ready();
    rx.wait_for_requests(2).await;
    app.latency
        .remove_label_values(&["/v1/chat/completions"])
        .unwrap();
    assert_eq!(pushers.handle().status()[0].protocol, Some("2.0"));
    pushers.shutdown(Duration::from_secs(10)).await;

    let log = rx.log();
    for r in &log {
        let one = |name: &str| r.one_header(name);
        assert_eq!(one("content-encoding"), "snappy");
        assert_eq!(
            one("content-type"),
            "application/x-protobuf;proto=io.prometheus.write.v2.Request"
        );
        assert_eq!(one("x-prometheus-remote-write-version"), "2.0.0");
        assert!(one("user-agent").starts_with("codex-proxy/"));
        let v2 = r.v2.as_ref().expect("read as 2.0");
        assert_eq!(v2.violations, Vec::<String>::new());
        for ((s, t), help) in r.series.iter().zip(&v2.types).zip(&v2.helps) {
            let (want_type, want_help) = match s.name() {
                "codex_http_requests_total" => (1, "requests"),
                "codex_worker_ready" => (2, "ready"),
                n if n.starts_with("codex_http_latency_ms_") => (3, "latency"),
                n if n.starts_with("codex_http_latency_summary_ms") => (5, "latency summary"),
                _ => continue,
            };
            assert_eq!(
                (*t, help.as_str()),
                (want_type, want_help),
                "{:?}",
                s.labels
            );
        }
    }
    // Stale markers as in 1.0: the removed histogram child when it went, then every series.
    let all: Vec<&Series> = log.iter().flat_map(|r| &r.series).collect();
    assert!(all
        .iter()
        .any(|s| s.is_stale() && s.name() == "codex_http_latency_ms_bucket"));
    let last = log.last().unwrap();
    assert!(!last.series.is_empty() && last.series.iter().all(|s| s.is_stale()));
    let accepted: Vec<&Received> = log.iter().collect();
    assert_timestamps_increase_per_series(&accepted);
    // Declared from the start, and nothing rejected.
    let names: Vec<String> = app
        .registry
        .gather()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    assert!(names
        .iter()
        .any(|n| n == "codex_push_samples_rejected_total"));
    assert_eq!(
        counter(&app, "codex_push_samples_rejected_total", None),
        0.0
    );
}

/// `auto` against a receiver that answers `answer` to 2.0: the first request is 2.0, the
/// same series at the same timestamp come again as 1.0 right after, and everything after
/// is 1.0, with nothing dropped.
async fn auto_falls_back_and_resends_the_batch_as_1_0(rx: Receiver) -> Vec<Received> {
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "protocol = \"auto\"\ninterval = \"150ms\"",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(4).await;
    assert!(log[0].is_v2());
    assert!(log[1..].iter().all(|r| !r.is_v2()), "1.0 from then on");
    let first_ts = log[1].series[0].ts;
    let sent = decode_any(&log[0]);
    assert_eq!(sent.len(), log[1].series.len());
    assert!(
        sent.iter().all(|s| s.ts == first_ts),
        "the same batch, not the next snapshot"
    );
    assert_timestamps_increase_per_series(&log[1..].iter().collect::<Vec<_>>());
    assert_eq!(pushers.handle().status()[0].protocol, Some("1.0"));
    for reason in ["rejected", "rate_limited", "queue_full", "corrupt"] {
        let dropped = counter(
            &app,
            "codex_push_samples_dropped_total",
            Some(("reason", reason)),
        );
        assert_eq!(dropped, 0.0, "{reason}");
    }
    pushers.shutdown(Duration::from_secs(5)).await;
    log
}

/// The series of a 2.0 request whatever the receiver made of it.
fn decode_any(r: &Received) -> Vec<Series> {
    let raw = snap::raw::Decoder::new().decompress_vec(&r.body).unwrap();
    let req = v2::Request::decode(raw.as_slice()).unwrap();
    (req.timeseries.iter())
        .map(|ts| Series {
            labels: (ts.labels_refs.chunks(2))
                .map(|p| {
                    let s = |i: u32| req.symbols[i as usize].clone();
                    (s(p[0]), s(p[1]))
                })
                .collect(),
            value: ts.samples[0].value,
            ts: ts.samples[0].timestamp,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_1_0_on_415_and_loses_nothing() {
    let rx = Receiver::speaking(Speaks::V1Refusing, vec![]).await;
    let log = auto_falls_back_and_resends_the_batch_as_1_0(rx).await;
    assert_eq!(log[0].status, 415);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_1_0_on_a_2xx_without_written_headers_and_loses_nothing() {
    let rx = Receiver::speaking(Speaks::V1IgnoringType, vec![reply(204)]).await;
    let log = auto_falls_back_and_resends_the_batch_as_1_0(rx).await;
    // What a 1.x receiver made of the 2.0 body: an empty request, "written" with a 204.
    assert_eq!(log[0].status, 204);
    assert!(log[0].series.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_protocol_v2_a_2xx_without_written_headers_is_a_counted_drop() {
    let rx = Receiver::speaking(Speaks::V1IgnoringType, vec![]).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "protocol = \"v2\"\ninterval = \"100ms\"",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(2).await;
    assert!(log.iter().all(Received::is_v2), "never falls back");
    assert_ne!(log[1].body, log[0].body, "not resent");
    let dropped = wait_until("the drop counted", WAIT, || async {
        let d = counter(
            &app,
            "codex_push_samples_dropped_total",
            Some(("reason", "rejected")),
        );
        (d >= decode_any(&log[0]).len() as f64).then_some(d)
    })
    .await;
    assert!(dropped > 0.0);
    assert_eq!(pushers.handle().status()[0].protocol, Some("2.0"));
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_that_wrote_fewer_samples_is_counted_as_rejected_and_not_resent() {
    let short = Reply {
        unwritten: 3,
        ..reply(200)
    };
    let rx = Receiver::start(vec![short]).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "protocol = \"auto\"\ninterval = \"100ms\"",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(2).await;
    assert!(
        log.iter().all(Received::is_v2),
        "a short count is no reason to fall back"
    );
    assert!(log[1].series[0].ts > log[0].series[0].ts, "not resent");
    assert_eq!(
        counter(&app, "codex_push_samples_rejected_total", None),
        3.0
    );
    assert_eq!(pushers.handle().status()[0].protocol, Some("2.0"));
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_2_0_batches_from_disk_are_sent_as_1_0_in_order_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let extra = format!(
        "protocol = \"auto\"\ninterval = \"50ms\"\nmin_backoff = \"20ms\"\nmax_backoff = \"40ms\"\n\
         queue_dir = \"{}\"",
        queue.display()
    );
    // A receiver that is down for everything: 2.0 batches pile up on disk.
    let down = Receiver::start(vec![reply(503); 1000]).await;
    let app = App::new();
    let pushers = app.start(&destination(&down.url, &extra));
    pushers.handle().mark_ready();
    wait_queued(&pushers, 4, "a backlog on disk").await;
    pushers.shutdown(Duration::from_millis(200)).await;
    let tried: Vec<Received> = down.log();
    assert!(tried.iter().all(Received::is_v2));

    // The next process meets a 1.x receiver: the backlog, all 2.0, arrives as 1.0.
    let rx = Receiver::speaking(Speaks::V1IgnoringType, vec![]).await;
    let app = App::new();
    let pushers = app.start(&destination(&rx.url, &extra));
    assert!(pushers.handle().status()[0].queued_requests >= 4);
    pushers.handle().mark_ready();
    let log = wait_until("the backlog delivered as 1.0", WAIT, || async {
        let log = rx.log();
        let v1 = log.iter().filter(|r| !r.is_v2()).count();
        (v1 >= 5 && pushers.handle().status()[0].queued_requests == 0).then_some(log)
    })
    .await;
    assert!(log[0].is_v2() && log[0].series.is_empty());
    let v1: Vec<&Received> = log.iter().filter(|r| !r.is_v2()).collect();
    // The first one tried before the restart comes first: nothing lost, in order.
    let first = decode_any(&tried[0]);
    assert_eq!(v1[0].series.len(), first.len());
    assert_eq!(v1[0].series[0].ts, first[0].ts);
    assert_timestamps_increase_per_series(&v1);
    let stored = std::fs::read_to_string(queue.join("protocol")).unwrap();
    assert!(stored.starts_with("1.0\n"), "{stored}");
    assert_eq!(
        counter(
            &app,
            "codex_push_samples_dropped_total",
            Some(("reason", "corrupt"))
        ),
        0.0
    );
    pushers.shutdown(Duration::from_secs(5)).await;

    // And the start after that does not ask again, which check-config tells beforehand.
    let config = dir.path().join("codex-proxy.toml");
    std::fs::write(&config, destination(&rx.url, &extra)).unwrap();
    let out = std::process::Command::new(common::PROXY_BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("protocol = \"auto\""), "{text}");
    assert!(
        text.contains(
            "# remote_write remote_write[0]: protocol in use: remote-write 1.0, negotiated before"
        ),
        "{text}"
    );
    let app = App::new();
    let pushers = app.start(&destination(&rx.url, &extra));
    assert_eq!(pushers.handle().status()[0].protocol, Some("1.0"));
    pushers.shutdown(Duration::from_millis(100)).await;
}

/// Accepted requests in the order they arrived. A series never goes back in time: each
/// sample is newer than the series' last one, or (a request resent after a restart) the
/// same sample again, same timestamp and same value, which a TSDB takes as a duplicate.
fn accepted(log: &[Received]) -> Vec<&Received> {
    let ok: Vec<&Received> = log.iter().filter(|r| r.status == 200).collect();
    let mut last: HashMap<Vec<(String, String)>, (i64, u64)> = HashMap::new();
    for r in &ok {
        for s in &r.series {
            let sample = (s.ts, s.value.to_bits());
            if let Some(prev) = last.insert(s.labels.clone(), sample) {
                assert!(
                    s.ts > prev.0 || sample == prev,
                    "{:?}: {sample:?} after {prev:?}",
                    s.labels
                );
            }
        }
    }
    ok
}

/// Distinct series accepted per snapshot timestamp.
fn complete_snapshots(ok: &[&Received]) -> BTreeMap<i64, usize> {
    let mut per_ts: BTreeMap<i64, std::collections::HashSet<&[(String, String)]>> = BTreeMap::new();
    for r in ok {
        for s in r.series.iter().filter(|s| !s.is_stale()) {
            per_ts.entry(s.ts).or_default().insert(&s.labels);
        }
    }
    per_ts.into_iter().map(|(ts, s)| (ts, s.len())).collect()
}

/// The snapshots (timestamp, series) with fewer series than the fullest one.
fn incomplete_snapshots(per_ts: &BTreeMap<i64, usize>) -> Vec<(&i64, &usize)> {
    let full = per_ts.values().copied().max().unwrap();
    per_ts.iter().filter(|(_, &n)| n != full).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_requests_are_open_at_once_against_a_receiver_50ms_away() {
    let rx = Receiver::start_slow(vec![], Duration::from_millis(50)).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "interval = \"1h\"\nmax_series_per_request = 4\nmax_in_flight = 4",
    ));
    pushers.handle().mark_ready();
    let log = rx.wait_for_requests(8).await;
    wait_until("the first snapshot delivered", WAIT, || async {
        (pushers.handle().status()[0].queued_requests == 0).then_some(())
    })
    .await;
    assert_eq!(
        rx.state.max_open.load(Ordering::SeqCst),
        4,
        "exactly max_in_flight requests were open at once"
    );
    let ts: Vec<i64> = log
        .iter()
        .flat_map(|r| r.series.iter().map(|s| s.ts))
        .collect();
    assert!(ts.windows(2).all(|w| w[0] == w[1]), "one snapshot");
    let status = &pushers.handle().status()[0];
    assert_eq!(status.in_flight_limit, 4);
    assert_eq!(
        app.self_metric(
            "codex_push_in_flight_limit",
            &[("destination", "remote_write[0]")]
        ),
        4.0
    );
    pushers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_series_goes_back_in_time_across_a_5xx_a_429_with_retry_after_and_parallel_requests() {
    let rate_limited = Reply {
        retry_after: Some("1"),
        ..reply(429)
    };
    let mut script = vec![reply(200); 5];
    script.push(reply(503));
    script.extend(vec![reply(200); 7]);
    script.push(rate_limited);
    script.extend(vec![reply(200); 3]);
    script.push(reply(500));
    let rx = Receiver::start_slow(script, Duration::from_millis(50)).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "interval = \"100ms\"\nmax_series_per_request = 4\nmax_in_flight = 4\nmin_backoff = \"20ms\"\nmax_backoff = \"40ms\"",
    ));
    pushers.handle().mark_ready();
    // Past the scripted failures, and long enough after the 429 for snapshots to pile up.
    let log = wait_until(
        "30 snapshots delivered after the failures",
        WAIT,
        || async {
            let log = rx.log();
            let ok = log.iter().filter(|r| r.status == 200).count();
            (log.len() > 20 && ok >= 30 * 8).then_some(log)
        },
    )
    .await;
    pushers.shutdown(Duration::from_secs(5)).await;
    let log = rx
        .log()
        .into_iter()
        .take(log.len().max(1))
        .collect::<Vec<_>>();
    let ok = accepted(&log);
    assert_timestamps_increase_per_series(&ok);
    assert!(rx.state.max_open.load(Ordering::SeqCst) <= 4);
    let failed: Vec<&Received> = log.iter().filter(|r| r.status != 200).collect();
    assert_eq!(failed.len(), 3);
    for f in failed {
        assert!(
            ok.iter().any(|r| r.body == f.body
                || f.series.iter().all(|s| r
                    .series
                    .iter()
                    .any(|x| x.labels == s.labels && x.ts == s.ts))),
            "a failed request was delivered later"
        );
    }
    // Every snapshot but the one in flight at shutdown arrived whole.
    let per_ts = complete_snapshots(&ok);
    let partial = incomplete_snapshots(&per_ts).len();
    assert!(partial <= 1, "{per_ts:?}");
    let rate_limited_at = log.iter().position(|r| r.status == 429).unwrap();
    let next = &log[rate_limited_at + 1..];
    let after = log[rate_limited_at].at + Duration::from_millis(950);
    assert!(
        next.iter().filter(|r| r.at < after).count() <= 3,
        "only requests already in flight may arrive during Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_disk_backlog_goes_out_in_parallel_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("queue");
    let extra = format!(
        "interval = \"250ms\"\nmax_series_per_request = 4\nmax_in_flight = 4\nmin_backoff = \"200ms\"\nmax_backoff = \"400ms\"\nqueue_dir = \"{}\"",
        queue.display()
    );
    // First life: the receiver answers the first snapshot, then refuses for a while.
    let mut script = vec![reply(200); 12];
    script.extend(vec![reply(503); 40]);
    let rx = Receiver::start_slow(script, Duration::from_millis(50)).await;
    let first = App::new();
    let pushers = first.start(&destination(&rx.url, &extra));
    pushers.handle().mark_ready();
    wait_queued(&pushers, 60, "a backlog on disk").await;
    drop(pushers); // killed: no final push, the queue stays as it is on disk
    rx.state.script.lock().unwrap().clear();
    let before = rx.log().len();
    let second = App::new();
    let pushers = second.start(&destination(&rx.url, &extra));
    pushers.handle().mark_ready();
    let status = wait_until("the backlog replayed", WAIT, || async {
        let s = pushers.handle().status()[0].clone();
        (s.replayed_requests >= 60 && s.queued_requests < 20).then_some(s)
    })
    .await;
    assert!(!status.queue_degraded, "the first life's queue was closed");
    pushers.shutdown(Duration::from_secs(5)).await;
    let log = rx.log();
    let ok = accepted(&log);
    assert!(log.len() > before);
    assert!(
        rx.state.max_open.load(Ordering::SeqCst) >= 2,
        "replay went in parallel"
    );
    let per_ts = complete_snapshots(&ok);
    let partial = incomplete_snapshots(&per_ts);
    assert!(
        partial.len() <= 2,
        "snapshots with missing series: {partial:?}"
    );
}

/// A tmpfs of 256 KiB, unmounted on drop; `None` where mounting is not permitted.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_falls_back_to_memory_loses_nothing_under_the_cap_and_returns_to_disk() {
    let Some(disk) = SmallDisk::mount() else {
        assert_ne!(
            std::env::var("CODEX_PROXY_REQUIRE_SERVERS").as_deref(),
            Ok("1"),
            "mounting a 256 KiB tmpfs failed (needs root); CODEX_PROXY_REQUIRE_SERVERS=1 forbids skipping"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        return;
    };
    let rx = Receiver::start(vec![reply(503); 100_000]).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        &format!(
            "interval = \"20ms\"\nmin_backoff = \"50ms\"\nmax_backoff = \"100ms\"\n\
             max_queue_bytes = \"64MiB\"\nqueue_dir = \"{}\"",
            disk.0.path().join("q").display()
        ),
    ));
    pushers.handle().mark_ready();
    let degraded_at = wait_until("the disk full and the queue in memory", WAIT, || async {
        let s = pushers.handle().status()[0].clone();
        s.queue_degraded.then_some(s.queued_requests)
    })
    .await;
    let dest = [("destination", "remote_write[0]")];
    assert_eq!(app.self_metric("codex_push_queue_degraded", &dest), 1.0);
    wait_queued(
        &pushers,
        degraded_at + 20,
        "snapshots still queued, in memory",
    )
    .await;
    rx.state.script.lock().unwrap().clear();
    // The disk part drains, its segments go, and a later push moves memory back to disk
    // (tried every 30 s).
    wait_until("back on disk", Duration::from_secs(60), || async {
        (!pushers.handle().status()[0].queue_degraded).then_some(())
    })
    .await;
    assert_eq!(app.self_metric("codex_push_queue_degraded", &dest), 0.0);
    pushers.shutdown(Duration::from_secs(10)).await;
    let dropped = app.self_metric("codex_push_samples_dropped_total", &dest);
    assert_eq!(dropped, 0.0, "under the byte cap nothing is lost");
    let log = rx.log();
    let ok = accepted(&log);
    assert_timestamps_increase_per_series(&ok);
    let per_ts = complete_snapshots(&ok);
    let partial = incomplete_snapshots(&per_ts);
    assert!(
        partial.len() <= 1,
        "snapshots with missing series: {partial:?}"
    );
    assert!(per_ts.len() as u64 > degraded_at + 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_drains_in_parallel_lanes_across_failures_and_a_series_change_losing_and_doubling_nothing(
) {
    // Down while the backlog builds; then up, answering some requests 503, 500 and 429.
    let rx = Receiver::start_strict(vec![reply(503); 1_000_000], Duration::from_millis(20)).await;
    let app = App::new();
    let pushers = app.start(&destination(
        &rx.url,
        "interval = \"50ms\"\nmax_series_per_request = 16\nmax_in_flight = 4\nmin_backoff = \"20ms\"\nmax_backoff = \"40ms\"",
    ));
    pushers.handle().mark_ready();
    wait_queued(&pushers, 200, "a backlog").await;
    // A series that sorts before most others comes mid-backlog: every later one moves on.
    app.requests.with_label_values(&["/v1/a", "gpt"]).inc();
    let queued = pushers.handle().status()[0].queued_requests;
    wait_queued(&pushers, queued + 200, "more backlog after the change").await;
    let failures = [
        503, 200, 500, 200, 200, 429, 200, 503, 200, 200, 500, 503, 200, 429,
    ];
    *rx.state.script.lock().unwrap() = failures.iter().map(|&s| reply(s)).collect();
    wait_until("the backlog drained", WAIT, || async {
        (pushers.handle().status()[0].queued_requests < 10).then_some(())
    })
    .await;
    pushers.shutdown(Duration::from_secs(5)).await;

    let log = rx.log();
    assert!(
        log.iter().all(|r| r.status != 400),
        "the strict receiver refused a request out of order"
    );
    let ok: Vec<&Received> = log.iter().filter(|r| r.status == 200).collect();
    assert!(
        ok.iter().any(|r| {
            let ts: std::collections::HashSet<i64> = r.series.iter().map(|s| s.ts).collect();
            ts.len() > 1
        }),
        "snapshots were joined"
    );
    assert!(
        rx.state.max_open.load(Ordering::SeqCst) >= 2,
        "lanes in parallel"
    );
    // Nothing doubled: each (series, timestamp) stored once.
    let mut stored = std::collections::HashSet::new();
    for s in ok.iter().flat_map(|r| &r.series) {
        assert!(stored.insert((s.labels.clone(), s.ts)), "{s:?} twice");
    }
    // Nothing lost: every snapshot whole, with the new series from its first one on.
    let per_ts = complete_snapshots(&ok);
    let is_new = |s: &Series| s.label("route") == Some("/v1/a");
    let changed_at = ok
        .iter()
        .flat_map(|r| &r.series)
        .filter(|s| is_new(s))
        .map(|s| s.ts)
        .min()
        .unwrap();
    let full_before = per_ts.range(..changed_at).map(|(_, &n)| n).max().unwrap();
    let last_ts = *per_ts.keys().last().unwrap();
    for (&ts, &n) in &per_ts {
        let want = if ts < changed_at {
            full_before
        } else {
            full_before + 1
        };
        assert!(
            n == want || ts == last_ts,
            "snapshot {ts}: {n} series of {want}"
        );
    }
    let dest = [("destination", "remote_write[0]")];
    assert_eq!(
        app.self_metric("codex_push_samples_dropped_total", &dest),
        0.0
    );
    assert_eq!(
        app.self_metric("codex_push_samples_sent_total", &dest),
        stored.len() as f64,
        "the sent counter is what the receiver stored"
    );
}

// Native histograms and exemplars over 2.0, from the real proxy (its demo worker's time to
// first token is just above 0.3 s) to the in-process 2.0 receiver, which reads them with
// the generated types and answers the `*-Written` headers as told.

const TTFT: &str = "codex_time_to_first_token_seconds";
/// A client's own W3C trace context.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.unwrap().as_millis() as i64
}

/// The real proxy pushing 2.0 with `histograms = "native"` and exemplars to `rx`.
async fn proxy_pushing_native_2_0(rx: &Receiver) -> common::Proxy {
    let config = format!(
        "[metrics]\nenabled = true\nmodels = [\"codex-demo\"]\n\
         [[remote_write]]\nurl = \"{}\"\nprotocol = \"v2\"\ninterval = \"200ms\"\n\
         histograms = \"native\"\nsend_exemplars = true\n",
        rx.url
    );
    let proxy = common::Proxy::start(&config, &[("DEMO_FIRST_DELTA_DELAY_MS", "300")]).await;
    proxy.wait_ready().await;
    proxy
}

/// One non-streaming chat completion; the `x-request-id` the client was given.
async fn chat(proxy: &common::Proxy, traceparent: Option<&str>) -> String {
    let mut request = common::http()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(r#"{"model":"codex-demo","messages":[{"role":"user","content":"hi"}]}"#);
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"].to_str().unwrap();
    id.to_string()
}

/// The destination's `codex_push_samples_rejected_total` on the proxy's `/metrics`.
async fn rejected(proxy: &common::Proxy) -> f64 {
    let samples = common::scrape::scrape(proxy).await;
    let labels = [("destination", "remote_write[0]")];
    common::scrape::sum(&samples, "codex_push_samples_rejected_total", &labels)
}

/// Every native `TTFT` histogram received, with its series' labels and metadata type, oldest
/// first, stale markers left out.
fn ttft_histograms(log: &[Received]) -> Vec<Histogram2> {
    (log.iter().filter_map(|r| r.v2.as_ref()))
        .flat_map(|v2| v2.histograms.iter().cloned())
        .filter(|(l, _, h)| {
            l.iter().any(|(n, v)| n == "__name__" && v == TTFT) && h.sum.to_bits() != STALE_NAN_BITS
        })
        .collect()
}

/// The absolute count of each occupied bucket of an integer histogram, by bucket index.
fn buckets(h: &v2::Histogram) -> Vec<(i32, i64)> {
    let (mut out, mut index, mut count) = (Vec::new(), 0i32, 0i64);
    let mut deltas = h.positive_deltas.iter();
    for (k, span) in h.positive_spans.iter().enumerate() {
        index += span.offset + if k == 0 { 0 } else { 1 };
        for j in 0..span.length {
            count += deltas.next().expect("a delta per bucket");
            if count != 0 {
                out.push((index + j as i32, count));
            }
        }
        index += span.length as i32 - 1;
    }
    assert!(deltas.next().is_none(), "a delta per bucket, no more");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_histograms_and_exemplars_reach_a_2_0_receiver_field_by_field() {
    use v2::histogram::{Count, ZeroCount};
    let rx = Receiver::start(vec![]).await;
    let started = now_ms();
    let proxy = proxy_pushing_native_2_0(&rx).await;
    let plain = chat(&proxy, None).await;
    // The series the non-streaming requests count in (the streaming one stays at 0).
    let non_streaming = |log: &[Received]| {
        let stream = ("stream".to_string(), "false".to_string());
        (ttft_histograms(log).into_iter()).rfind(|(l, _, _)| l.contains(&stream))
    };
    let ids = |log: &[Received]| -> Vec<Exemplar2> {
        (log.iter().filter_map(|r| r.v2.as_ref()))
            .flat_map(|v2| v2.exemplars.iter().cloned())
            .filter(|e| e.series.iter().any(|(n, v)| n == "__name__" && v == TTFT))
            .collect()
    };
    // A bucket keeps its latest exemplar: the second request waits until the first one's
    // went out, in case both land in the same bucket.
    wait_until("the first exemplar", WAIT, || async {
        (!ids(&rx.log()).is_empty()).then_some(())
    })
    .await;
    let traced = chat(&proxy, Some(&format!("00-{TRACE_ID}-{SPAN_ID}-01"))).await;
    let log = wait_until(
        "both requests in a ttft histogram and both exemplars",
        WAIT,
        || async {
            let log = rx.log();
            let counted =
                non_streaming(&log).is_some_and(|(_, _, h)| h.count == Some(Count::CountInt(2)));
            (counted && ids(&log).len() >= 2).then_some(log)
        },
    )
    .await;
    let received_by = now_ms();
    for r in &log {
        let v2 = r.v2.as_ref().expect("every request in 2.0");
        assert_eq!(v2.violations, Vec::<String>::new());
        assert!(
            r.series.iter().all(|s| !s.name().starts_with(TTFT)),
            "no classic ttft series with histograms = \"native\""
        );
    }
    let (labels, metric_type, h) = non_streaming(&log).unwrap();
    assert_eq!(metric_type, 3, "METRIC_TYPE_HISTOGRAM");
    let label = |n: &str| labels.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(
        (label("model"), label("stream")),
        (Some("codex-demo"), Some("false"))
    );
    assert_eq!(h.schema, 3);
    assert_eq!(h.zero_threshold, 2f64.powi(-128));
    assert_eq!(h.zero_count, Some(ZeroCount::ZeroCountInt(0)));
    assert!(h.negative_spans.is_empty() && h.negative_deltas.is_empty());
    assert!(
        h.positive_counts.is_empty() && h.negative_counts.is_empty(),
        "integer counts"
    );
    assert_eq!(h.reset_hint, 0);
    assert!(
        (started..=received_by).contains(&h.timestamp),
        "{}",
        h.timestamp
    );
    // The buckets hold both observations, each just above 0.3 s: bucket i is
    // (2^((i-1)/8), 2^(i/8)], and the sum lies between the bounds of the occupied ones.
    let occupied = buckets(&h);
    assert_eq!(
        occupied.iter().map(|(_, c)| c).sum::<i64>(),
        2,
        "{occupied:?}"
    );
    let bound = |i: i32| 2f64.powf(f64::from(i) / 8.0);
    assert!(
        occupied.iter().all(|&(i, _)| bound(i) > 0.3),
        "{occupied:?}"
    );
    let low: f64 = occupied.iter().map(|&(i, c)| bound(i - 1) * c as f64).sum();
    let high: f64 = occupied.iter().map(|&(i, c)| bound(i) * c as f64).sum();
    assert!(low < h.sum && h.sum <= high, "{low} < {} <= {high}", h.sum);

    // The exemplars: on the native series, each id once, labels through the symbols.
    let exemplars = ids(&log);
    let by = |name: &str, value: &str| -> Vec<&Exemplar2> {
        (exemplars.iter())
            .filter(|e| e.labels.iter().any(|(n, v)| n == name && v == value))
            .collect()
    };
    let mine = by("request_id", &plain);
    assert_eq!(mine.len(), 1, "sent once: {exemplars:?}");
    assert_eq!(mine[0].labels.len(), 1);
    let theirs = by("trace_id", TRACE_ID);
    assert_eq!(theirs.len(), 1, "{exemplars:?}");
    let want = [("span_id", SPAN_ID), ("trace_id", TRACE_ID)];
    let got: Vec<(&str, &str)> = (theirs[0].labels.iter())
        .map(|(n, v)| (&**n, &**v))
        .collect();
    assert_eq!(got, want, "the client's own trace, not our id {traced}");
    for e in [mine[0], theirs[0]] {
        assert_eq!(e.series, labels, "on the native series");
        assert!(e.value > 0.3 && e.value < h.sum, "{}", e.value);
        assert!((started..=received_by).contains(&e.ts), "{}", e.ts);
        assert!(e.ts <= h.timestamp, "observed before the push that sent it");
    }
    // The receiver said it wrote everything: nothing rejected, still native.
    assert_eq!(rejected(&proxy).await, 0.0);
    let push = proxy.healthz().await.unwrap()["push"][0].clone();
    assert_eq!(
        (push["protocol"].as_str(), push["histograms"].as_str()),
        (Some("2.0"), Some("native"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_0_answer_without_histograms_written_turns_the_destination_to_classic_once() {
    let rx = Receiver::with_state(ReceiverState {
        writes: Writes::NoHistogramsHeaderMissing,
        ..ReceiverState::default()
    })
    .await;
    let proxy = proxy_pushing_native_2_0(&rx).await;
    chat(&proxy, None).await;
    wait_until("the fallback in /healthz", WAIT, || async {
        let push = proxy.healthz().await?["push"][0].clone();
        (push["histograms"] == "classic (receiver has no native histograms)").then_some(())
    })
    .await;
    chat(&proxy, None).await;
    // Both observations arrive as classic series, still in 2.0.
    let count = format!("{TTFT}_count");
    let log = wait_until("the classic ttft count at 2", WAIT, || async {
        let log = rx.log();
        let done = (log.iter().flat_map(|r| &r.series))
            .any(|s| s.name() == count && s.value == 2.0 && s.label("stream") == Some("false"));
        done.then_some(log)
    })
    .await;
    assert!(log.iter().all(Received::is_v2));
    // No histogram was made after the switch: every one is older than the first classic
    // bucket (the producer's classic series start then; refused ones add none).
    let bucket = format!("{TTFT}_bucket");
    let switch = (log.iter().flat_map(|r| &r.series))
        .filter(|s| s.name() == bucket)
        .map(|s| s.ts)
        .min()
        .unwrap();
    let refused = ttft_histograms(&log);
    assert!(!refused.is_empty(), "native first");
    assert!(refused.iter().all(|(_, _, h)| h.timestamp < switch));
    // Each refused request came again at once as the classic `_count` and `_sum` of its
    // native series, same labels, same time, same values.
    let resent = |log: &[Received], (labels, _, h): &Histogram2| {
        let v2::histogram::Count::CountInt(n) = h.count.unwrap() else {
            panic!("integer counts");
        };
        [("_count", n as f64), ("_sum", h.sum)]
            .iter()
            .all(|(suffix, value)| {
                let mut want = labels.clone();
                want[0].1.push_str(suffix);
                (log.iter().flat_map(|r| &r.series))
                    .any(|s| s.labels == want && s.ts == h.timestamp && s.value == *value)
            })
    };
    let log = wait_until("each refused histogram as classic", WAIT, || async {
        let log = rx.log();
        refused.iter().all(|h| resent(&log, h)).then_some(log)
    })
    .await;
    // Nothing sent twice, nothing lost: nothing counted as rejected.
    let mut bodies: Vec<&Bytes> = log.iter().map(|r| &r.body).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), log.len(), "no request sent again as it was");
    assert_eq!(rejected(&proxy).await, 0.0);
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("--enable-feature=native-histograms").count(),
        1,
        "logged once, naming the flag"
    );
    assert!(logs.contains("Histograms-Written 0 or missing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_0_receiver_that_stores_no_exemplars_is_counted_and_logged_once() {
    let rx = Receiver::with_state(ReceiverState {
        writes: Writes::NoExemplars,
        ..ReceiverState::default()
    })
    .await;
    let proxy = proxy_pushing_native_2_0(&rx).await;
    // Two exemplars sent (the second request after the first one's went), neither written.
    for n in [1.0, 2.0] {
        chat(&proxy, None).await;
        wait_until("the unwritten exemplar counted", WAIT, || async {
            (rejected(&proxy).await >= n).then_some(())
        })
        .await;
    }
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("did not store every exemplar").count(),
        1,
        "logged once"
    );
    // Histograms are written: still native, and they keep coming.
    let push = proxy.healthz().await.unwrap()["push"][0].clone();
    assert_eq!(push["histograms"], "native");
    let seen = ttft_histograms(&rx.log()).len();
    wait_until("more native histograms", WAIT, || async {
        (ttft_histograms(&rx.log()).len() > seen).then_some(())
    })
    .await;
}
