//! Native histograms and exemplars end to end: the real `codex-proxy` binary with its demo
//! worker (`DEMO_FIRST_DELTA_DELAY_MS=300`: every time to first token is just above 0.3 s),
//! scraped by a real Prometheus 2.42 with `--enable-feature=native-histograms,
//! exemplar-storage` (which negotiates the protobuf format), and its OpenMetrics output
//! read by the `prometheus_client` Python package's OpenMetrics parser. The same Prometheus
//! as a remote-write receiver (`histograms = "native"`, `send_exemplars`), and one started
//! without the feature, to which the pusher falls back to classic series.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::process::Command;

use rustix::process::Signal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{
    http, start_prometheus, start_prometheus_with, start_victoria_metrics, wait_until, Proxy,
    Server,
};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);
const FEATURES: &str = "--enable-feature=native-histograms,exemplar-storage";
/// A client's own W3C trace context.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN_ID: &str = "00f067aa0ba902b7";

fn config() -> String {
    "[metrics]\nenabled = true\nmodels = [\"codex-demo\"]\n".to_string()
}

/// One chat completion; its `x-request-id`, checked to equal the completion's `id`.
async fn chat(proxy: &Proxy, stream: bool, traceparent: Option<&str>) -> String {
    let mut request = http()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            json!({"model": "codex-demo", "stream": stream,
                   "messages": [{"role": "user", "content": "hi"}]})
            .to_string(),
        );
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body = response.text().await.unwrap();
    let completion_id = if stream {
        let first = body.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        serde_json::from_str::<Value>(first).unwrap()["id"].clone()
    } else {
        serde_json::from_str::<Value>(&body).unwrap()["id"].clone()
    };
    assert_eq!(
        completion_id,
        json!(id),
        "the request id is the completion id"
    );
    id
}

/// The labels of every exemplar Prometheus holds for `query`, from ten minutes ago on.
async fn exemplar_labels(prometheus: &Server, query: &str) -> Vec<Value> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body: Value = http()
        .get(format!("{}/api/v1/query_exemplars", prometheus.base))
        .query(&[
            ("query", query.to_string()),
            ("start", (now - 600).to_string()),
            ("end", (now + 600).to_string()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut labels = Vec::new();
    for series in body["data"].as_array().into_iter().flatten() {
        for e in series["exemplars"].as_array().into_iter().flatten() {
            labels.push(e["labels"].clone());
        }
    }
    labels
}

/// Waits until `prometheus` counts `n` times to first token in the native histogram, then
/// returns its median, asserted within one native bucket (schema 3: factor 2^(1/8)) of
/// 0.3 s: the bucket holding 0.3 s is (0.2973, 0.3242], the next (0.3242, 0.3536].
async fn native_ttft_median_near_300ms(prometheus: &Server, n: f64) -> f64 {
    let count = "sum(histogram_count(codex_time_to_first_token_seconds))";
    prometheus.wait_scalar(count, n, DEADLINE).await;
    let median = "histogram_quantile(0.5, sum(codex_time_to_first_token_seconds))";
    let q = prometheus.scalar(median).await.unwrap();
    let factor = 2f64.powf(1.0 / 8.0);
    assert!(
        q > 0.3 / factor && q <= 0.3 * factor * factor,
        "native p50 {q} not within one bucket of 0.3 s"
    );
    q
}

/// The proxy's config with a remote-write destination to `prometheus` every 300 ms.
fn remote_write_config(prometheus: &Server, extra: &str) -> String {
    format!(
        "{}[[remote_write]]\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n{extra}\n",
        config(),
        prometheus.base
    )
}

#[tokio::test]
async fn remote_write_with_native_histograms_gives_prometheus_native_ttft_and_the_clients_ids_as_exemplars(
) {
    let Some(prometheus) = start_prometheus_with("", &[FEATURES]).await else {
        return;
    };
    let config = remote_write_config(
        &prometheus,
        "histograms = \"native\"\nsend_exemplars = true",
    );
    let mut proxy = Proxy::start(&config, &[("DEMO_FIRST_DELTA_DELAY_MS", "300")]).await;
    proxy.wait_ready().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(chat(&proxy, i % 2 == 0, None).await);
    }
    let n = ids.len() as f64;
    native_ttft_median_near_300ms(&prometheus, n).await;
    // "native": the family's classic series are not sent.
    let classic = prometheus
        .query("count(codex_time_to_first_token_seconds_bucket)")
        .await;
    assert_eq!(classic, json!([]), "{classic}");
    // The exemplars are the ids the clients were given, and each of those requests'
    // exemplar arrives, the first push's too (Prometheus 2.42 drops an exemplar sent
    // beside the first histogram of a series: ours come after it).
    let ttft = "codex_time_to_first_token_seconds";
    let seen = wait_until("the clients' ids as exemplars", DEADLINE, || async {
        let labels = exemplar_labels(&prometheus, ttft).await;
        let got: Vec<String> = (labels.iter())
            .filter_map(|l| l["request_id"].as_str().map(str::to_string))
            .collect();
        ids.iter().all(|id| got.contains(id)).then_some(got)
    })
    .await;
    for id in &seen {
        assert!(ids.contains(id), "{id} was not given to a client");
    }
    for id in &ids {
        assert!(proxy.logs().contains(id.as_str()), "{id} not in the log");
    }
    // At shutdown every native series gets a histogram stale marker, which Prometheus
    // takes: the series is gone from an instant query, and no push failed.
    proxy.proc.signal(Signal::TERM);
    assert!(proxy.proc.wait_exit(DEADLINE).await.success());
    let logs = proxy.logs();
    assert!(
        !logs.contains("push rejected") && !logs.contains("push failed"),
        "{logs}"
    );
    let live = "count(codex_time_to_first_token_seconds)";
    wait_until("the native series stale", DEADLINE, || async {
        (prometheus.query(live).await == json!([])).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_prometheus_without_native_histograms_gets_classic_series_and_the_fallback_shows_in_healthz(
) {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    let config = remote_write_config(&prometheus, "histograms = \"native\"");
    let proxy = Proxy::start(&config, &[("DEMO_FIRST_DELTA_DELAY_MS", "300")]).await;
    proxy.wait_ready().await;
    let first = chat(&proxy, false, None).await;
    let health = wait_until("the fallback in /healthz", DEADLINE, || async {
        let push = proxy.healthz().await?["push"][0].clone();
        (push["histograms"] == "classic (receiver has no native histograms)").then_some(push)
    })
    .await;
    assert_eq!(health["kind"], "remote_write", "{health}");
    for _ in 0..3 {
        chat(&proxy, true, None).await;
    }
    // Every observation arrives as classic series, and the queue drains.
    let count = "sum(codex_time_to_first_token_seconds_count)";
    prometheus.wait_scalar(count, 4.0, DEADLINE).await;
    let le = r#"sum(codex_time_to_first_token_seconds_bucket{le="+Inf"})"#;
    prometheus.wait_scalar(le, 4.0, DEADLINE).await;
    wait_until("an empty queue", DEADLINE, || async {
        let push = proxy.healthz().await?["push"][0].clone();
        (push["queued_requests"] == 0 && push["requests_in_flight"] == 0).then_some(())
    })
    .await;
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("--enable-feature=native-histograms").count(),
        1,
        "logged once, naming the flag"
    );
    assert!(logs.contains(&first));
}

#[tokio::test]
async fn prometheus_with_native_histograms_scrapes_native_ttft_and_the_clients_ids_as_exemplars() {
    let proxy = Proxy::start(&config(), &[("DEMO_FIRST_DELTA_DELAY_MS", "300")]).await;
    proxy.wait_ready().await;
    let scrape = format!(
        "  - job_name: codex-proxy\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
        proxy.port
    );
    let Some(prometheus) = start_prometheus_with(&scrape, &[FEATURES]).await else {
        return;
    };
    // The proxy answers Prometheus' Accept with the delimited protobuf.
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    let r = http()
        .get(proxy.url("/metrics"))
        .header("accept", accept)
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/vnd.google.protobuf"));

    let mut ids = Vec::new();
    let traceparent = format!("00-{TRACE_ID}-{SPAN_ID}-01");
    for i in 0..6 {
        ids.push(chat(&proxy, i % 2 == 0, None).await);
    }
    // A client with its own trace: the exemplar holds its trace, not the request id.
    let traced = chat(&proxy, false, Some(&traceparent)).await;
    let n = 7.0;

    let q = native_ttft_median_near_300ms(&prometheus, n).await;
    // The classic buckets put every observation in (0.25, 0.5]: Prometheus' interpolation
    // gives the middle of that bucket.
    let classic = 0.25 + 0.25 * 0.5;
    eprintln!(
        "TTFT p50: native {q:.4} s (error {:+.1} %), classic {classic} s (error {:+.1} %)",
        (q - 0.3) / 0.3 * 100.0,
        (classic - 0.3) / 0.3 * 100.0
    );

    // Exemplars: the ids the clients were given, or their own trace, and nothing else.
    let exemplars = |query: &'static str| exemplar_labels(&prometheus, query);
    // A bucket keeps its latest exemplar, and Prometheus 2.42 takes one exemplar per
    // native histogram and scrape, its lowest bucket's: each id is awaited on time to
    // first token, whose observations all fall in one classic bucket (0.25, 0.5], before
    // the next request replaces it.
    let ttft = "codex_time_to_first_token_seconds";
    wait_until("the client's trace as an exemplar", DEADLINE, || async {
        let labels = exemplars(ttft).await;
        let traced = |l: &Value| l["trace_id"] == TRACE_ID && l["span_id"] == SPAN_ID;
        labels.iter().any(traced).then_some(())
    })
    .await;
    // A malformed traceparent is ignored, and the request id is used.
    let malformed = chat(&proxy, true, Some("00-zz-garbage")).await;
    ids.push(malformed.clone());
    wait_until("the request id as an exemplar", DEADLINE, || async {
        let labels = exemplars(ttft).await;
        labels
            .iter()
            .any(|l| l["request_id"] == json!(malformed))
            .then_some(())
    })
    .await;
    let chat_latency = r#"codex_http_latency_ms{route="/v1/chat/completions"}"#;
    let seen = wait_until("latency exemplars", DEADLINE, || async {
        let labels = exemplars(chat_latency).await;
        (!labels.is_empty()).then_some(labels)
    })
    .await;
    for labels in &seen {
        let keys: Vec<&String> = labels.as_object().unwrap().keys().collect();
        match labels.get("request_id").and_then(Value::as_str) {
            Some(id) => {
                assert!(
                    ids.contains(&id.to_string()),
                    "{id} was not given to a client"
                );
                assert_eq!(keys.len(), 1, "{labels}");
            }
            None => assert_eq!(labels["trace_id"], TRACE_ID, "{labels}"),
        }
    }
    // The ids are in the proxy's log lines of their requests.
    for id in &ids {
        assert!(
            proxy.logs().contains(id.as_str()),
            "{id} not in the proxy's log"
        );
    }
    assert!(!seen
        .iter()
        .any(|l| l.get("request_id") == Some(&json!(traced))));
    // Time to first token and turn duration keep the same ids.
    for family in [ttft, "codex_turn_duration_seconds"] {
        let labels = exemplars(family).await;
        assert!(!labels.is_empty(), "no exemplars on {family}");
        for l in labels {
            let known = l["trace_id"] == TRACE_ID
                || l["request_id"]
                    .as_str()
                    .is_some_and(|id| ids.contains(&id.to_string()));
            assert!(known, "{family}: {l}");
        }
    }
    assert!(!proxy.logs().contains("zz-garbage"));
}

#[tokio::test]
async fn the_openmetrics_output_parses_with_prometheus_client_and_carries_exemplars() {
    let Some(python) = common::python_with("prometheus_client.openmetrics.parser") else {
        return;
    };
    let proxy = Proxy::start(&config(), &[]).await;
    proxy.wait_ready().await;
    let id = chat(&proxy, false, None).await;
    let r = http()
        .get(proxy.url("/metrics"))
        .header("accept", "application/openmetrics-text;version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    let body = r.text().await.unwrap();
    assert!(body.ends_with("# EOF\n"));
    let path = proxy.dir.path().join("metrics.om");
    std::fs::write(&path, &body).unwrap();
    // Prints each exemplar's labels as `family request_id`, after a full, strict parse.
    let script = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = open(sys.argv[1]).read()
for family in text_string_to_metric_families(text):
    for s in family.samples:
        if s.exemplar is not None:
            print(family.name, s.exemplar.labels.get("request_id", ""), s.exemplar.timestamp)
"#;
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "prometheus_client refused the output: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "codex_http_latency_ms",
        "codex_time_to_first_token_seconds",
        "codex_turn_duration_seconds",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(family) && l.contains(&id)),
            "no exemplar naming {id} on {family}: {stdout}"
        );
    }
    // The default text format is unchanged: no exemplars.
    let text = http()
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!text.contains(" # {") && !text.contains("# EOF"));
}

#[tokio::test]
async fn a_pushgateway_destination_with_native_histograms_pushes_them_and_prometheus_reads_them() {
    let Some(gateway) = common::start_pushgateway().await else {
        return;
    };
    let config = format!(
        "{}[[pushgateway]]\nurl = \"{}\"\ninterval = \"300ms\"\nhistograms = \"native\"\ngrouping = {{ instance = \"t\" }}\n",
        config(),
        gateway.base
    );
    let proxy = Proxy::start(&config, &[]).await;
    proxy.wait_ready().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(chat(&proxy, i == 0, None).await);
    }
    let scrape = format!(
        "  - job_name: pgw\n    honor_labels: true\n    scrape_interval: 1s\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
        gateway.port
    );
    let Some(prometheus) = start_prometheus_with(&scrape, &[FEATURES]).await else {
        return;
    };
    let count = r#"sum(histogram_count(codex_time_to_first_token_seconds{job="codex-proxy",instance="t"}))"#;
    prometheus.wait_scalar(count, 3.0, DEADLINE).await;
    // The gateway still shows the classic buckets to a text scrape.
    let text = http()
        .get(format!("{}/metrics", gateway.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("codex_time_to_first_token_seconds_bucket{"),
        "{text}"
    );
}

/// What docs/remote-write.md says of VictoriaMetrics 1.79: it answers 204 to a request with
/// native histograms and exemplars and stores neither (its 1.0 decoder skips fields 3 and
/// 4), so with `histograms = "both"` the classic series arrive and the native one does not.
#[tokio::test]
async fn victoria_metrics_takes_the_classic_series_and_silently_drops_native_histograms() {
    let Some(vm) = start_victoria_metrics().await else {
        return;
    };
    let config = remote_write_config(&vm, "histograms = \"both\"\nsend_exemplars = true");
    let proxy = Proxy::start(&config, &[("DEMO_FIRST_DELTA_DELAY_MS", "300")]).await;
    proxy.wait_ready().await;
    for _ in 0..3 {
        chat(&proxy, false, None).await;
    }
    let count = "sum(codex_time_to_first_token_seconds_count)";
    vm.wait_scalar(count, 3.0, DEADLINE).await;
    wait_until("requests delivered", DEADLINE, || async {
        let push = proxy.healthz().await?["push"][0].clone();
        let delivered = push["queued_requests"] == 0 && push["last_success_unix_seconds"].is_i64();
        delivered.then_some(())
    })
    .await;
    assert_eq!(
        vm.query("codex_time_to_first_token_seconds").await,
        json!([])
    );
    let logs = proxy.logs();
    assert!(
        !logs.contains("push rejected") && !logs.contains("push failed"),
        "{logs}"
    );
    let health = proxy.healthz().await.unwrap();
    assert_eq!(health["push"][0]["histograms"], "both");
}

/// The value of `promql` as Prometheus answers it at `at_ms` (ms since the epoch).
async fn scalar_at(prometheus: &Server, promql: &str, at_ms: i64) -> Option<f64> {
    let body: Value = http()
        .get(format!("{}/api/v1/query", prometheus.base))
        .query(&[
            ("query", promql.to_string()),
            ("time", format!("{:.3}", at_ms as f64 / 1000.0)),
        ])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let result = body["data"]["result"].as_array()?;
    (result.len() == 1).then(|| result[0]["value"][1].as_str()?.parse().ok())?
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A durable queue of native histograms, built in 2.0 (`protocol = "auto"`) while the
/// receiver is down, replayed into a Prometheus 2.42 without native histograms: the 2.0
/// requests fall back to 1.0 (204 without `*-Written`), the ones holding histograms are
/// refused (500 `native histograms are disabled`, once each) and sent again as the classic
/// `_count` and `_sum` of their native series. Every queued push's count lands at its own
/// timestamp, the queue drains, nothing is dropped, and nothing is retried again.
#[tokio::test]
async fn a_queued_backlog_of_native_histograms_reaches_a_prometheus_without_them_as_classic_counts()
{
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    prometheus.stop().await;
    let config = remote_write_config(
        &prometheus,
        "histograms = \"native\"\nprotocol = \"auto\"\nqueue_dir = \"queue\"\n\
         min_backoff = \"50ms\"\nmax_backoff = \"300ms\"",
    );
    let proxy = Proxy::start(&config, &[("DEMO_FIRST_DELTA_DELAY_MS", "300")]).await;
    proxy.wait_ready().await;
    let push = || async { proxy.healthz().await.map(|h| h["push"][0].clone()) };
    let queued = |min: u64| async move {
        let p = push().await?;
        (p["queued_requests"].as_u64()? >= min).then_some(p)
    };
    let before = wait_until("a push queued", DEADLINE, || queued(2)).await;
    assert_eq!(before["protocol"], "2.0");
    let before_traffic_ms = now_ms();
    let now_queued = before["queued_requests"].as_u64().unwrap();
    // Pushes are 300 ms apart and so are the requests: they land in different pushes.
    for _ in 0..3 {
        chat(&proxy, false, None).await;
    }
    let after = push().await.unwrap()["queued_requests"].as_u64().unwrap();
    wait_until("pushes after the traffic queued", DEADLINE, || {
        queued(after + 2)
    })
    .await;
    let after_traffic_ms = now_ms();
    assert!(
        std::fs::read_dir(proxy.dir.path().join("queue"))
            .unwrap()
            .count()
            > 0
    );
    assert!(after > now_queued);

    prometheus.start().await;
    let health = wait_until("both fallbacks in /healthz", DEADLINE, || async {
        let p = push().await?;
        let done = p["protocol"] == "1.0"
            && p["histograms"] == "classic (receiver has no native histograms)"
            && p["queued_requests"] == 0
            && p["requests_in_flight"] == 0;
        done.then_some(p)
    })
    .await;
    assert_eq!(health["kind"], "remote_write");
    // The backlog's counts, each at its own time: none before the traffic, all three
    // after it, both before Prometheus was up again.
    let count = r#"sum(codex_time_to_first_token_seconds_count{stream="false"})"#;
    let sum = r#"sum(codex_time_to_first_token_seconds_sum{stream="false"})"#;
    let at = |ms| scalar_at(&prometheus, count, ms);
    assert_eq!(at(before_traffic_ms).await, Some(0.0));
    assert_eq!(at(after_traffic_ms).await, Some(3.0));
    let total = scalar_at(&prometheus, sum, after_traffic_ms).await.unwrap();
    assert!(total > 0.9 && total < 3.0, "{total}");
    // The live pushes go on classic.
    chat(&proxy, false, None).await;
    prometheus.wait_scalar(count, 4.0, DEADLINE).await;
    let classic = r#"count(codex_time_to_first_token_seconds_bucket{stream="false"})"#;
    assert!(prometheus.scalar(classic).await.unwrap() > 1.0);
    // Nothing dropped; each refused request refused once: no 5xx after the drain.
    let samples = common::scrape::scrape(&proxy).await;
    let mine = [("destination", "remote_write[0]")];
    let dropped = common::scrape::sum(&samples, "codex_push_samples_dropped_total", &mine);
    assert_eq!(dropped, 0.0);
    let refused = [("destination", "remote_write[0]"), ("outcome", "http_5xx")];
    let refusals = common::scrape::sum(&samples, "codex_push_requests_total", &refused);
    assert!(refusals >= 1.0 && refusals <= after as f64, "{refusals}");
    let success = [("destination", "remote_write[0]"), ("outcome", "success")];
    let delivered = common::scrape::sum(&samples, "codex_push_requests_total", &success);
    wait_until("more pushes delivered", DEADLINE, || async {
        let s = common::scrape::scrape(&proxy).await;
        (common::scrape::sum(&s, "codex_push_requests_total", &success) > delivered + 3.0)
            .then_some(())
    })
    .await;
    let samples = common::scrape::scrape(&proxy).await;
    assert_eq!(
        common::scrape::sum(&samples, "codex_push_requests_total", &refused),
        refusals,
        "no retry after the switch"
    );
    let logs = proxy.logs();
    assert_eq!(
        logs.matches("--enable-feature=native-histograms").count(),
        1,
        "logged once, naming the flag"
    );
}
