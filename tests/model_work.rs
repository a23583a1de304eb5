//! The model-work families and the admission queue, end to end: the real `codex-proxy`
//! binary with its demo worker (whose `DEMO_*` knobs make token counts, items, rate
//! limits and each turn outcome exact), read through `/metrics` and through a real
//! Prometheus receiving the remote-write.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::time::{Duration, Instant};

use common::scrape::{count, scrape, sum, Sample};
use common::{http, start_prometheus, wait_until, Proxy};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);
const OUTCOMES: [&str; 6] = [
    "completed",
    "failed",
    "interrupted",
    "client_disconnected",
    "timeout",
    "worker_lost",
];
/// What `DEMO_USAGE` makes every turn report, and its parts by kind.
const USAGE: &str = "input=11,cached_input=3,cache_write_input=1,output=7,reasoning_output=2";
const USAGE_BY_KIND: [(&str, f64); 5] = [
    ("input", 11.0),
    ("cached_input", 3.0),
    ("cache_write_input", 1.0),
    ("output", 7.0),
    ("reasoning_output", 2.0),
];

/// `/metrics` on, and the demo model an allowed label value from the first request on.
fn config(extra: &str) -> String {
    format!("[metrics]\nenabled = true\nmodels = [\"codex-demo\"]\n{extra}")
}

fn chat(prompt: &str, stream: bool) -> String {
    json!({"model": "codex-demo", "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
    .to_string()
}

fn chat_request(
    client: &reqwest::Client,
    proxy: &Proxy,
    prompt: &str,
    stream: bool,
) -> reqwest::RequestBuilder {
    client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(prompt, stream))
}

async fn post(proxy: &Proxy, prompt: &str, stream: bool) -> reqwest::Response {
    chat_request(&http(), proxy, prompt, stream)
        .send()
        .await
        .expect("request to the proxy")
}

/// Scrapes until `check` holds, and returns that scrape.
async fn scrape_until(proxy: &Proxy, what: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    wait_until(what, DEADLINE, || async {
        let samples = scrape(proxy).await;
        check(&samples).then_some(samples)
    })
    .await
}

/// `codex_turns_total` shows one turn, with `outcome`, and every other outcome at 0.
fn assert_only_outcome(samples: &[Sample], outcome: &str) {
    assert_only_outcome_n(samples, outcome, 1.0);
    for o in OUTCOMES {
        let labels = [("model", "codex-demo"), ("outcome", o)];
        assert_eq!(
            count(samples, "codex_turns_total", &labels),
            1,
            "{o}: every outcome has a series"
        );
        let expected = if o == outcome { 1.0 } else { 0.0 };
        assert_eq!(
            sum(samples, "codex_turn_duration_seconds_count", &labels),
            expected,
            "{o}"
        );
    }
}

/// `codex_turns_total` shows `n` turns with `outcome`, and every other outcome at 0.
fn assert_only_outcome_n(samples: &[Sample], outcome: &str, n: f64) {
    for o in OUTCOMES {
        let labels = [("model", "codex-demo"), ("outcome", o)];
        let expected = if o == outcome { n } else { 0.0 };
        assert_eq!(sum(samples, "codex_turns_total", &labels), expected, "{o}");
    }
}

async fn turns_show(proxy: &Proxy, outcome: &str) -> Vec<Sample> {
    scrape_until(proxy, &format!("a turn counted as {outcome}"), |s| {
        sum(s, "codex_turns_total", &[]) >= 1.0
    })
    .await
}

#[tokio::test]
async fn every_family_is_declared_at_start_with_closed_label_sets_at_zero() {
    // No allowlist: families whose model has not been seen yet are declared all the same.
    let proxy = Proxy::start("[metrics]\nenabled = true\n", &[]).await;
    proxy.wait_ready().await;
    let text = common::scrape::text(&proxy).await;
    for family in [
        "codex_tokens_total counter",
        "codex_time_to_first_token_seconds histogram",
        "codex_time_per_output_token_seconds histogram",
        "codex_turn_duration_seconds histogram",
        "codex_turns_total counter",
        "codex_turns_without_usage_total counter",
        "codex_turn_items_total counter",
        "codex_worker_wait_seconds histogram",
        "codex_worker_queue_depth gauge",
        "codex_rate_limit_used_ratio gauge",
        "codex_rate_limit_resets_at_seconds gauge",
    ] {
        assert!(text.contains(&format!("# TYPE {family}")), "{family}");
    }
    assert_eq!(
        count(&common::scrape::parse(&text), "codex_turns_total", &[]),
        0
    );
    // With an allowlisted model its closed label sets are there at 0 from the start.
    let proxy = Proxy::start(&config(""), &[]).await;
    proxy.wait_ready().await;
    let samples = scrape(&proxy).await;
    assert_eq!(
        count(&samples, "codex_tokens_total", &[("model", "codex-demo")]),
        5
    );
    assert_eq!(
        count(&samples, "codex_turns_total", &[("model", "codex-demo")]),
        6
    );
    assert_eq!(sum(&samples, "codex_turns_total", &[]), 0.0);
    // No rate-limit report yet: no gauge claims a value.
    assert_eq!(count(&samples, "codex_rate_limit_used_ratio", &[]), 0);
}

#[tokio::test]
async fn twenty_concurrent_requests_are_all_answered_with_the_default_queue() {
    let proxy = Proxy::start(&config(""), &[("DEMO_FIRST_DELTA_DELAY_MS", "300")]).await;
    proxy.wait_ready().await;
    let client = http();
    let requests = (0..20).map(|i| {
        let request = chat_request(&client, &proxy, &format!("request {i}"), false);
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(statuses, vec![200; 20]);
    let samples = scrape(&proxy).await;
    assert_eq!(sum(&samples, "codex_worker_wait_seconds_count", &[]), 20.0);
    // Four slots, 300 ms turns: most of them waited for one.
    assert!(sum(&samples, "codex_worker_wait_seconds_sum", &[]) > 0.3);
    assert_eq!(sum(&samples, "codex_worker_queue_depth", &[]), 0.0);
    assert_eq!(
        sum(&samples, "codex_turns_total", &[("outcome", "completed")]),
        20.0
    );
}

#[tokio::test]
async fn with_queue_max_2_and_four_slots_six_are_answered_and_fourteen_get_429_at_once() {
    // Turns hold their slots until the file exists, so the refusals are seen before any
    // answer by causality, not by a clock.
    let hold_dir = tempfile::tempdir().unwrap();
    let hold = hold_dir.path().join("release");
    let proxy = Proxy::start(
        &config("[worker]\nmax_concurrency = 4\nqueue_max = 2\n"),
        &[("DEMO_HOLD_FILE", hold.to_str().unwrap())],
    )
    .await;
    proxy.wait_ready().await;
    let client = http();
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let request = chat_request(&client, &proxy, &format!("request {i}"), false);
            tokio::spawn(async move {
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string());
                let body: Value = response.json().await.unwrap();
                (status, retry_after, body)
            })
        })
        .collect();
    scrape_until(&proxy, "4 turns running, 2 queued, 14 refused", |s| {
        sum(s, "codex_worker_queue_depth", &[]) == 2.0
            && sum(
                s,
                "codex_http_requests_total",
                &[("route", "/v1/chat/completions"), ("status_family", "4xx")],
            ) == 14.0
    })
    .await;
    let queued_seen = Instant::now();
    // Refused at once, not after waiting: no turn has ended yet.
    let health = proxy.healthz().await.unwrap();
    assert_eq!(health["worker"]["in_flight"], 4);
    let held_for = queued_seen.elapsed().as_secs_f64();
    std::fs::write(&hold, "").unwrap();
    let answers: Vec<_> = futures_util::future::join_all(requests)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ok: Vec<_> = answers.iter().filter(|a| a.0 == 200).collect();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!((ok.len(), refused.len()), (6, 14), "{answers:?}");
    for (_, retry_after, body) in &refused {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["code"], "worker_busy", "{body}");
        assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    }
    let samples = scrape(&proxy).await;
    assert_eq!(sum(&samples, "codex_worker_wait_seconds_count", &[]), 6.0);
    // The two queued were waiting before the queue was seen full and until after the release.
    assert!(sum(&samples, "codex_worker_wait_seconds_sum", &[]) >= 2.0 * held_for);
}

#[tokio::test]
async fn a_client_that_gives_up_while_queued_leaves_the_queue_at_once() {
    // The running turn holds its slot until the file exists: no clock decides who is first.
    let hold_dir = tempfile::tempdir().unwrap();
    let hold = hold_dir.path().join("release");
    let proxy = Proxy::start(
        &config("[worker]\nmax_concurrency = 1\n"),
        &[("DEMO_HOLD_FILE", hold.to_str().unwrap())],
    )
    .await;
    proxy.wait_ready().await;
    let running = {
        let request = chat_request(&http(), &proxy, "first", false);
        tokio::spawn(async move { request.send().await.unwrap().status().as_u16() })
    };
    wait_until("the first request in its turn", DEADLINE, || async {
        (proxy.healthz().await?["worker"]["in_flight"] == 1).then_some(())
    })
    .await;
    let queued = {
        let request = chat_request(&http(), &proxy, "second", false);
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()) })
    };
    scrape_until(&proxy, "one request queued", |s| {
        sum(s, "codex_worker_queue_depth", &[]) == 1.0
    })
    .await;
    queued.abort();
    scrape_until(&proxy, "the queue empty again", |s| {
        sum(s, "codex_worker_queue_depth", &[]) == 0.0
    })
    .await;
    // Gone while the running turn still holds the only slot.
    let health = proxy.healthz().await.unwrap();
    assert_eq!(health["worker"]["in_flight"], 1);
    std::fs::write(&hold, "").unwrap();

    assert_eq!(running.await.unwrap(), 200);
    let samples = scrape(&proxy).await;
    // Only the first ran: the abandoned request never took the slot.
    assert_eq!(sum(&samples, "codex_turns_total", &[]), 1.0);
    assert_eq!(sum(&samples, "codex_worker_wait_seconds_count", &[]), 1.0);
}

#[tokio::test]
async fn a_completed_turn_counts_its_usage_items_timings_and_the_rate_limits() {
    let proxy = Proxy::start(
        &config(""),
        &[
            ("DEMO_USAGE", USAGE),
            (
                "DEMO_ITEMS",
                "commandExecution,fileChange,commandExecution,sleep",
            ),
            ("DEMO_RATE_LIMITS", "primary=42@1900000000,secondary=91"),
            ("DEMO_FIRST_DELTA_DELAY_MS", "300"),
        ],
    )
    .await;
    proxy.wait_ready().await;
    assert_eq!(post(&proxy, "not streamed", false).await.status(), 200);
    let streamed = post(&proxy, "streamed", true).await;
    assert_eq!(streamed.status(), 200);
    streamed.text().await.unwrap();

    let samples = scrape_until(&proxy, "two turns and the rate limits", |s| {
        sum(s, "codex_turns_total", &[]) == 2.0 && count(s, "codex_rate_limit_used_ratio", &[]) == 2
    })
    .await;
    let model = ("model", "codex-demo");
    assert_only_outcome_n(&samples, "completed", 2.0);
    for (kind, n) in USAGE_BY_KIND {
        assert_eq!(
            sum(&samples, "codex_tokens_total", &[model, ("kind", kind)]),
            2.0 * n,
            "{kind}"
        );
    }
    assert_eq!(sum(&samples, "codex_turns_without_usage_total", &[]), 0.0);
    for (kind, n) in [
        ("command_execution", 4.0),
        ("file_change", 2.0),
        ("agent_message", 2.0),
        ("other", 2.0),
        ("reasoning", 0.0),
    ] {
        assert_eq!(
            sum(&samples, "codex_turn_items_total", &[model, ("kind", kind)]),
            n,
            "{kind}"
        );
    }
    // The user's own message is not something the turn produced.
    assert_eq!(sum(&samples, "codex_turn_items_total", &[]), 10.0);
    for stream in ["false", "true"] {
        let labels = [model, ("stream", stream)];
        let name = "codex_time_to_first_token_seconds_bucket";
        assert_eq!(
            sum(&samples, "codex_time_to_first_token_seconds_count", &labels),
            1.0
        );
        // The first delta came 300 ms after the turn started.
        assert_eq!(
            sum(&samples, name, &[labels[0], labels[1], ("le", "0.25")]),
            0.0
        );
        assert_eq!(
            sum(&samples, name, &[labels[0], labels[1], ("le", "5")]),
            1.0
        );
    }
    assert_eq!(
        sum(
            &samples,
            "codex_time_per_output_token_seconds_count",
            &[model]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &samples,
            "codex_rate_limit_used_ratio",
            &[("window", "primary")]
        ),
        0.42
    );
    assert_eq!(
        sum(
            &samples,
            "codex_rate_limit_used_ratio",
            &[("window", "secondary")]
        ),
        0.91
    );
    assert_eq!(
        sum(
            &samples,
            "codex_rate_limit_resets_at_seconds",
            &[("window", "primary")]
        ),
        1.9e9
    );
    // No reset time was reported for the secondary window: no series claims one.
    assert_eq!(
        count(
            &samples,
            "codex_rate_limit_resets_at_seconds",
            &[("window", "secondary")]
        ),
        0
    );
}

#[tokio::test]
async fn a_turn_without_usage_counts_no_tokens_and_is_counted_without_usage() {
    let proxy = Proxy::start(&config(""), &[("DEMO_USAGE", "none")]).await;
    proxy.wait_ready().await;
    assert_eq!(post(&proxy, "hello", false).await.status(), 200);
    let samples = turns_show(&proxy, "completed").await;
    assert_only_outcome(&samples, "completed");
    assert_eq!(sum(&samples, "codex_tokens_total", &[]), 0.0);
    assert_eq!(
        sum(
            &samples,
            "codex_turns_without_usage_total",
            &[("model", "codex-demo")]
        ),
        1.0
    );
    assert_eq!(
        sum(&samples, "codex_time_per_output_token_seconds_count", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_failed_turn_is_counted_once_as_failed() {
    let proxy = Proxy::start(&config(""), &[("DEMO_TURN_FAIL", "1")]).await;
    proxy.wait_ready().await;
    assert_eq!(post(&proxy, "fail", false).await.status(), 502);
    assert_only_outcome(&turns_show(&proxy, "failed").await, "failed");
}

#[tokio::test]
async fn a_turn_the_worker_interrupts_is_counted_once_as_interrupted() {
    let proxy = Proxy::start(&config(""), &[("DEMO_INTERRUPT_AFTER_DELTAS", "1")]).await;
    proxy.wait_ready().await;
    assert_eq!(post(&proxy, "stop me midway", false).await.status(), 502);
    assert_only_outcome(&turns_show(&proxy, "interrupted").await, "interrupted");
}

#[tokio::test]
async fn a_worker_crash_mid_turn_is_counted_once_as_worker_lost() {
    let proxy = Proxy::start(&config(""), &[("DEMO_CRASH_AFTER_DELTAS", "2")]).await;
    proxy.wait_ready().await;
    let body = post(&proxy, "crash in the middle of this", true)
        .await
        .text()
        .await
        .unwrap();
    assert!(body.contains("the worker exited during the turn"), "{body}");
    assert_only_outcome(&turns_show(&proxy, "worker_lost").await, "worker_lost");
}

#[tokio::test]
async fn a_request_timeout_mid_turn_is_counted_once_as_timeout() {
    let proxy = Proxy::start(
        &config("[server]\nrequest_timeout = \"300ms\"\n"),
        &[("DEMO_DELTA_DELAY_MS", "100")],
    )
    .await;
    proxy.wait_ready().await;
    assert_eq!(post(&proxy, &"word ".repeat(50), false).await.status(), 504);
    assert_only_outcome(&turns_show(&proxy, "timeout").await, "timeout");
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_is_counted_once_as_client_disconnected() {
    let proxy = Proxy::start(&config(""), &[("DEMO_DELTA_DELAY_MS", "50")]).await;
    proxy.wait_ready().await;
    let mut response = post(&proxy, &"word ".repeat(100), true).await;
    let mut received = String::new();
    while !received.contains("Echo") {
        let chunk = response.chunk().await.unwrap().expect("stream ended early");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(response);
    let samples = turns_show(&proxy, "client_disconnected").await;
    assert_only_outcome(&samples, "client_disconnected");
    // Its first token was written before it left.
    assert_eq!(
        sum(
            &samples,
            "codex_time_to_first_token_seconds_count",
            &[("stream", "true")]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_receiving_the_remote_write_sums_the_tokens_sent() {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    let config = config(&format!(
        "[[remote_write]]\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n",
        prometheus.base
    ));
    let proxy = Proxy::start(&config, &[("DEMO_USAGE", USAGE)]).await;
    proxy.wait_ready().await;
    for i in 0..3 {
        let response = post(&proxy, &format!("turn {i}"), i == 1).await;
        assert_eq!(response.status(), 200);
        response.text().await.unwrap();
    }
    let per_turn: f64 = USAGE_BY_KIND.iter().map(|(_, n)| n).sum();
    let sent = 3.0 * per_turn;
    let samples = scrape_until(&proxy, "three turns", |s| {
        sum(s, "codex_turns_total", &[]) == 3.0
    })
    .await;
    assert_eq!(sum(&samples, "codex_tokens_total", &[]), sent);

    // The default `instance` is `<hostname>:<port>`.
    let instance = format!("{}:{}", common::hostname(), proxy.port);
    let query = format!(r#"sum(codex_tokens_total{{instance="{instance}"}})"#);
    prometheus.wait_scalar(&query, sent, DEADLINE).await;
    let output = format!(r#"sum(codex_tokens_total{{instance="{instance}",kind="output"}})"#);
    assert_eq!(prometheus.scalar(&output).await, Some(21.0));
}
