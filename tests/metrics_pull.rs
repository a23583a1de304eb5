//! `GET /metrics` on the real binary: exact counts and label values after a known mix of
//! requests, the guard, gzip, `promtool check metrics` on a real scrape, and a real
//! Prometheus scraping with a bearer token.
//!
//! Expected counts come from a ledger of what the client itself saw (route, method,
//! status), so the harness's own polling (`/livez`, `/readyz`, `/healthz`) is counted like
//! any other request instead of being guessed at; a first scrape is the baseline.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use common::{http, require_binary, start_prometheus, wait_until, Proxy};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);
const TOKEN: &str = "scr4pe-t0ken";
/// Values that must never show in a scrape: a query string, a request id, prompt text,
/// a client's made-up model name, a raw unmatched path.
const PRIVATE: [&str; 5] = [
    "api_key=leak",
    "req-7f3a9c",
    "zebras",
    "prompt-as-model",
    "/no/such/path",
];

/// One series: metric name and its labels in name order.
type SeriesKey = (String, BTreeMap<String, String>);

/// Parses the text format's samples (comments skipped) into name + labels → value.
fn parse(text: &str) -> BTreeMap<SeriesKey, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                // Our label values hold no `",` sequence, so this split is exact here.
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").expect("label pair");
                    labels.insert(k.to_string(), v.trim_end_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
        };
        out.insert((name, labels), value);
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// (route, method, status_family, model, category for 5xx, else empty).
type Request = (String, String, String, String, String);

/// Every request the test made, as the metrics should see it.
#[derive(Default)]
struct Ledger {
    seen: Mutex<BTreeMap<Request, u64>>,
}

impl Ledger {
    fn note(&self, route: &str, method: &str, status: u16, model: &str, category: &str) {
        let family = format!("{}xx", status / 100);
        let category = if status >= 500 { category } else { "" };
        *self
            .seen
            .lock()
            .unwrap()
            .entry((
                route.into(),
                method.into(),
                family,
                model.into(),
                category.into(),
            ))
            .or_default() += 1;
    }

    fn forget_last_scrape(&self) {
        let key = (
            "/metrics".to_string(),
            "GET".to_string(),
            "2xx".to_string(),
            "unknown".to_string(),
            String::new(),
        );
        let mut seen = self.seen.lock().unwrap();
        let n = seen.get_mut(&key).expect("a scrape was noted");
        *n -= 1;
        if *n == 0 {
            seen.remove(&key);
        }
    }

    /// `codex_http_requests_total` (and every per-request count) expected per label set.
    fn requests(&self) -> BTreeMap<BTreeMap<String, String>, u64> {
        let mut out = BTreeMap::new();
        for ((route, method, family, model, _), n) in self.seen.lock().unwrap().iter() {
            let key = labels(&[
                ("route", route),
                ("method", method),
                ("status_family", family),
                ("model", model),
            ]);
            *out.entry(key).or_default() += n;
        }
        out
    }

    fn errors(&self) -> BTreeMap<BTreeMap<String, String>, u64> {
        let mut out = BTreeMap::new();
        for ((route, method, family, model, category), n) in self.seen.lock().unwrap().iter() {
            if family == "5xx" {
                let key = labels(&[
                    ("route", route),
                    ("method", method),
                    ("status_family", family),
                    ("model", model),
                    ("category", category),
                ]);
                *out.entry(key).or_default() += n;
            }
        }
        out
    }
}

/// The increase of every series of `name` between two scrapes, zeros left out.
fn increase(
    before: &BTreeMap<SeriesKey, f64>,
    after: &BTreeMap<SeriesKey, f64>,
    name: &str,
    drop_label: Option<&str>,
) -> BTreeMap<BTreeMap<String, String>, u64> {
    let mut out = BTreeMap::new();
    for ((n, l), v) in after {
        if n != name {
            continue;
        }
        let old = before.get(&(n.clone(), l.clone())).copied().unwrap_or(0.0);
        let delta = (v - old) as u64;
        if delta > 0 {
            let mut l = l.clone();
            if let Some(d) = drop_label {
                l.remove(d);
            }
            *out.entry(l).or_default() += delta;
        }
    }
    out
}

fn value(scrape: &BTreeMap<SeriesKey, f64>, name: &str, pairs: &[(&str, &str)]) -> f64 {
    scrape
        .get(&(name.to_string(), labels(pairs)))
        .copied()
        .unwrap_or_else(|| panic!("no series {name}{pairs:?}"))
}

struct Client<'a> {
    proxy: &'a Proxy,
    ledger: &'a Ledger,
}

impl Client<'_> {
    fn chat(&self, model: Option<&str>, stream: bool) -> reqwest::RequestBuilder {
        let mut body = json!({"stream": stream,
            "messages": [{"role": "user", "content": "tell me about zebras"}]});
        if let Some(m) = model {
            body["model"] = json!(m);
        }
        http()
            .post(self.proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .header("x-request-id", "req-7f3a9c")
            .body(body.to_string())
    }

    /// Sends, reads the whole body, notes it; returns status and body.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        route: &str,
        method: &str,
        model: &str,
        category: &str,
    ) -> (u16, String) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.text().await.expect("body");
        self.ledger.note(route, method, status, model, category);
        (status, body)
    }

    async fn health(&self) -> Value {
        let (status, body) = self
            .send(
                http().get(self.proxy.url("/healthz")),
                "/healthz",
                "GET",
                "unknown",
                "",
            )
            .await;
        assert_eq!(status, 200);
        serde_json::from_str(&body).expect("health JSON")
    }

    async fn wait_health(&self, what: &str, check: impl Fn(&Value) -> bool) {
        wait_until(what, DEADLINE, || async {
            let h = self.health().await;
            check(&h).then_some(())
        })
        .await;
    }

    /// A scrape with the bearer token; returns the text.
    async fn scrape(&self) -> String {
        let (status, text) = self
            .send(
                http().get(self.proxy.url("/metrics")).bearer_auth(TOKEN),
                "/metrics",
                "GET",
                "unknown",
                "",
            )
            .await;
        assert_eq!(status, 200, "{text}");
        text
    }
}

/// The known mix on one proxy, with the scrapes before and after it.
async fn run_mix() -> Mix {
    let config = format!(
        "[metrics]\nenabled = true\ntoken = \"{TOKEN}\"\nmodels = [\"gpt-5\"]\n\
         [worker]\nbackoff_initial_ms = 3000\nbackoff_max_ms = 3000\n"
    );
    let env = [
        ("DEMO_CRASH_AFTER_TURNS", "3"),
        ("DEMO_TOOL_BLOCKS", "unterminated"),
        ("DEMO_DELTA_DELAY_MS", "20"),
    ];
    let proxy = Proxy::start(&config, &env).await;
    proxy.wait_ready().await;
    let ledger = Ledger::default();
    let c = Client {
        proxy: &proxy,
        ledger: &ledger,
    };
    let before = c.scrape().await;

    // Turn 1: non-streamed, a model the worker advertised.
    let (status, body) = c
        .send(
            c.chat(Some("codex-demo"), false),
            "/v1/chat/completions",
            "POST",
            "codex-demo",
            "",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Turn 2: streamed in obsidian-xml mode; the reply's tool block never closes.
    let (status, body) = c
        .send(
            c.chat(Some("gpt-5"), true)
                .header("x-proxy-output-mode", "obsidian-xml"),
            "/v1/chat/completions",
            "POST",
            "gpt-5",
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    // Non-empty `"content":"…"` pieces: one per delta of the worker.
    let marker = "\"content\":\"";
    let stream_deltas = body
        .match_indices(marker)
        .filter(|(at, _)| !body[at + marker.len()..].starts_with('"'))
        .count() as f64;
    // 4xx: a broken body, an unknown path with a query string, a wrong method.
    let (status, _) = c
        .send(
            http()
                .post(proxy.url("/v1/chat/completions"))
                .header("content-type", "application/json")
                .body("{not json"),
            "/v1/chat/completions",
            "POST",
            "unknown",
            "",
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = c
        .send(
            http().get(proxy.url("/no/such/path?api_key=leak")),
            "unmatched",
            "GET",
            "unknown",
            "",
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = c
        .send(
            http().delete(proxy.url("/v1/models")),
            "/v1/models",
            "DELETE",
            "unknown",
            "",
        )
        .await;
    assert_eq!(status, 405);
    // Turn 3, with a model nobody listed; the worker exits after it.
    let (status, _) = c
        .send(
            c.chat(Some("prompt-as-model"), false),
            "/v1/chat/completions",
            "POST",
            "other",
            "",
        )
        .await;
    assert_eq!(status, 200);
    c.wait_health("the worker restarting", |h| {
        h["worker"]["state"] == "restarting"
    })
    .await;
    // 5xx while the supervisor waits out the 3 s backoff.
    let (status, body) = c
        .send(
            c.chat(Some("codex-demo"), false),
            "/v1/chat/completions",
            "POST",
            "unknown",
            "worker_not_ready",
        )
        .await;
    assert_eq!(status, 503, "{body}");
    c.wait_health("the worker ready again", |h| h["worker"]["ready"] == true)
        .await;
    // Maintenance on (loopback, no admin token), then two refused requests.
    let (status, _) = c
        .send(
            http()
                .post(proxy.url("/internal/maintenance"))
                .header("content-type", "application/json")
                .body(r#"{"enabled": true}"#),
            "/internal/maintenance",
            "POST",
            "unknown",
            "",
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = c
        .send(
            c.chat(Some("gpt-5"), false),
            "/v1/chat/completions",
            "POST",
            "unknown",
            "maintenance",
        )
        .await;
    assert_eq!(status, 503);
    let (status, _) = c
        .send(
            http().get(proxy.url("/v1/models")),
            "/v1/models",
            "GET",
            "unknown",
            "maintenance",
        )
        .await;
    assert_eq!(status, 503);

    let after = c.scrape().await;
    // A scrape is recorded when its body ends, so the last one is not in its own text.
    ledger.forget_last_scrape();
    Mix {
        proxy,
        ledger,
        before,
        after,
        stream_deltas,
    }
}

struct Mix {
    proxy: Proxy,
    ledger: Ledger,
    before: String,
    after: String,
    /// Content chunks of the streamed turn; the demo worker slept 20 ms before each.
    stream_deltas: f64,
}

#[tokio::test]
async fn a_known_mix_of_requests_shows_exact_counts_and_bounded_labels() {
    let Mix {
        proxy,
        ledger,
        before,
        after: after_text,
        stream_deltas,
    } = run_mix().await;
    let (before, after) = (parse(&before), parse(&after_text));
    let expected = ledger.requests();

    assert_eq!(
        increase(&before, &after, "codex_http_requests_total", None),
        expected,
        "requests; log:\n{}",
        proxy.logs()
    );
    // Histogram and summary count the same requests, at the end of each body.
    assert_eq!(
        increase(&before, &after, "codex_http_latency_ms_count", None),
        expected
    );
    assert_eq!(
        increase(&before, &after, "codex_http_latency_ms_bucket", Some("le"))
            .keys()
            .collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(
        increase(&before, &after, "codex_http_latency_summary_ms_count", None),
        expected
    );
    assert_eq!(
        increase(&before, &after, "codex_http_errors_total", None),
        ledger.errors()
    );

    // The stream's latency runs to its end: it covers every delta the worker delayed,
    // which a latency taken at the headers would not.
    let chat_stream = [
        ("route", "/v1/chat/completions"),
        ("method", "POST"),
        ("status_family", "2xx"),
        ("model", "gpt-5"),
    ];
    assert_eq!(
        value(&after, "codex_http_latency_ms_count", &chat_stream),
        1.0
    );
    assert!(stream_deltas >= 2.0);
    let stream_ms = value(&after, "codex_http_latency_ms_sum", &chat_stream);
    assert!(stream_ms >= 20.0 * stream_deltas, "{stream_ms} ms");

    // Live state, not refreshed at scrape time.
    assert_eq!(value(&after, "codex_worker_restarts_total", &[]), 1.0);
    assert_eq!(value(&after, "codex_worker_ready", &[]), 1.0);
    assert_eq!(value(&after, "codex_worker_backoff_ms", &[]), 0.0);
    assert_eq!(value(&after, "codex_maintenance_mode", &[]), 1.0);
    assert_eq!(value(&after, "codex_streams_active", &[]), 0.0);
    let obsidian_open = [("output_mode", "obsidian-xml"), ("reason", "open")];
    assert_eq!(
        value(&after, "codex_tool_buffer_started_total", &obsidian_open),
        1.0
    );
    let finalize = [("output_mode", "obsidian-xml"), ("reason", "finalize")];
    assert_eq!(
        value(&after, "codex_tool_buffer_aborted_total", &finalize),
        1.0
    );
    assert!(after
        .keys()
        .any(|(n, _)| n == "process_resident_memory_bytes"));

    for private in PRIVATE {
        assert!(
            !after_text.contains(private),
            "`{private}` leaked into the scrape"
        );
    }
    // Every label value is from its bounded set.
    // The connection families describe sockets, not requests: they carry no request labels.
    let request_families = after
        .keys()
        .filter(|(n, _)| n.starts_with("codex_http_") && !n.starts_with("codex_http_connections_"));
    for (name, l) in request_families {
        assert!(
            [
                "unmatched",
                "/v1/chat/completions",
                "/v1/models",
                "/healthz",
                "/readyz",
                "/livez",
                "/internal/maintenance",
                "/metrics",
                "/status",
                "/status.json"
            ]
            .contains(&l["route"].as_str()),
            "{name} {l:?}"
        );
        assert!(
            ["unknown", "other", "gpt-5", "codex-demo"].contains(&l["model"].as_str()),
            "{name} {l:?}"
        );
    }
}

#[tokio::test]
async fn promtool_finds_only_the_parity_names_in_a_real_scrape() {
    let Some(promtool) = require_binary("promtool") else {
        return;
    };
    let text = run_mix().await.after;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let findings: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let expected: BTreeSet<String> = [
        "codex_http_latency_ms metric names should not contain abbreviated units",
        "codex_http_latency_summary_ms metric name should not include type 'summary'",
        "codex_http_latency_summary_ms metric names should not contain abbreviated units",
        "codex_worker_backoff_ms metric names should not contain abbreviated units",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(findings, expected, "scrape:\n{text}");
}

async fn get_metrics(proxy: &Proxy, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = http().get(proxy.url("/metrics"));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("GET /metrics")
}

/// A refusal where a token would admit: 401 with a Bearer challenge and a JSON reason.
async fn refusal(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    let body: Value = response.json().await.expect("JSON 401");
    assert_eq!(body["error"]["type"], "unauthorized");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn disabled_metrics_have_no_route() {
    let proxy = Proxy::start("[metrics]\nenabled = false\n", &[]).await;
    assert_eq!(get_metrics(&proxy, &[]).await.status(), 404);
    assert_eq!(
        get_metrics(&proxy, &[("authorization", "Bearer x")])
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn loopback_scrapes_are_admitted_by_default_in_text_format_and_gzip() {
    let proxy = Proxy::start("[metrics]\nenabled = true\n", &[]).await;
    let plain = get_metrics(&proxy, &[]).await;
    assert_eq!(plain.status(), 200);
    assert_eq!(
        plain.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert!(plain
        .text()
        .await
        .unwrap()
        .contains("# TYPE codex_worker_ready gauge"));

    let zipped = get_metrics(&proxy, &[("accept-encoding", "gzip")]).await;
    assert_eq!(zipped.status(), 200);
    assert_eq!(zipped.headers()["content-encoding"], "gzip");
    let bytes = zipped.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("gzip body");
    assert!(text.contains("# TYPE codex_http_requests_total counter"));
}

#[tokio::test]
async fn without_loopback_only_the_right_token_is_admitted() {
    let config =
        format!("[metrics]\nenabled = true\nallow_loopback = false\ntoken = \"{TOKEN}\"\n");
    let proxy = Proxy::start(&config, &[]).await;
    let reason = refusal(get_metrics(&proxy, &[]).await).await;
    assert!(reason.contains("loopback"), "{reason}");
    // X-Forwarded-For from an untrusted peer changes nothing.
    let spoofed = get_metrics(&proxy, &[("x-forwarded-for", "127.0.0.1")]).await;
    refusal(spoofed).await;
    let wrong = format!("Bearer {TOKEN}x");
    let reason = refusal(get_metrics(&proxy, &[("authorization", wrong.as_str())]).await).await;
    assert!(reason.contains("does not match"), "{reason}");
    assert!(!reason.contains(TOKEN));
    let right = format!("Bearer {TOKEN}");
    let ok = get_metrics(&proxy, &[("authorization", right.as_str())]).await;
    assert_eq!(ok.status(), 200);
    // The refusals were counted, as 4xx on the /metrics route.
    let text = ok.text().await.unwrap();
    let scrape = parse(&text);
    let refused = [
        ("route", "/metrics"),
        ("method", "GET"),
        ("status_family", "4xx"),
        ("model", "unknown"),
    ];
    assert_eq!(value(&scrape, "codex_http_requests_total", &refused), 3.0);
    assert!(!text.contains(TOKEN));
}

#[tokio::test]
async fn allow_unauth_admits_a_scrape_without_token_or_loopback() {
    let config = "[metrics]\nenabled = true\nallow_loopback = false\nallow_unauth = true\n";
    let proxy = Proxy::start(config, &[]).await;
    assert_eq!(get_metrics(&proxy, &[]).await.status(), 200);
}

#[tokio::test]
async fn prometheus_scrapes_with_the_bearer_token_and_queries_the_request_count() {
    let config =
        format!("[metrics]\nenabled = true\nallow_loopback = false\ntoken = \"{TOKEN}\"\n");
    let proxy = Proxy::start(&config, &[]).await;
    proxy.wait_ready().await;
    for _ in 0..5 {
        let r = http().get(proxy.url("/v1/models")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let scrape = format!(
        "  - job_name: codex-proxy\n    scrape_interval: 1s\n    authorization:\n      credentials: {TOKEN}\n    static_configs:\n      - targets: [\"127.0.0.1:{}\"]\n",
        proxy.port
    );
    let Some(prometheus) = start_prometheus(&scrape).await else {
        return;
    };
    let query = r#"codex_http_requests_total{job="codex-proxy",route="/v1/models",method="GET",status_family="2xx",model="unknown"}"#;
    let result = wait_until("Prometheus to have scraped the proxy", DEADLINE, || async {
        let r = prometheus.query(query).await;
        (r.as_array().is_some_and(|a| a.len() == 1)).then_some(r)
    })
    .await;
    assert_eq!(result[0]["value"][1], "5", "{result}");
    // The target is up: the token was accepted, not merely tolerated.
    let up = prometheus.query(r#"up{job="codex-proxy"}"#).await;
    assert_eq!(up[0]["value"][1], "1", "{up}");
}
