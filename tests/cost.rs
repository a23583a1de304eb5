//! Who used what and what it cost, end to end with the real `codex-proxy` binary and its
//! demo worker: named API keys as the `key` label, prices, budgets that survive restarts
//! (kill -9 included), and rate-limit windows that reset.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::time::Duration;

use common::scrape::{count, scrape, sum, Sample};
use common::{http, wait_until, Proxy};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(20);
const USAGE: &str = "input=11,cached_input=3,cache_write_input=1,output=7,reasoning_output=2";

/// Two named keys, `/metrics` on, the demo model an allowed label value.
const KEYS: &str = r#"
[metrics]
models = ["codex-demo"]

[[server.api_keys]]
name = "team-a"
key = "sk-team-a-0123456789"

[[server.api_keys]]
name = "team-b"
key_file = "team-b.key"
"#;

async fn chat(proxy: &Proxy, key: Option<&str>) -> reqwest::Response {
    let mut request = http()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(
            json!({"model": "codex-demo",
                   "messages": [{"role": "user", "content": "hello"}]})
            .to_string(),
        );
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    request.send().await.expect("request to the proxy")
}

/// Starts the proxy in a directory holding `team-b.key`.
async fn start(config: &str, env: &[(&str, &str)]) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("team-b.key"), "sk-team-b-9876543210\n").unwrap();
    let proxy = Proxy::start_in(dir, config, env).await;
    proxy.wait_ready().await;
    proxy
}

async fn scrape_until(proxy: &Proxy, what: &str, check: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
    wait_until(what, DEADLINE, || async {
        let samples = scrape(proxy).await;
        check(&samples).then_some(samples)
    })
    .await
}

#[tokio::test]
async fn each_named_key_admits_and_its_name_labels_its_turns_and_tokens() {
    let proxy = start(KEYS, &[("DEMO_USAGE", USAGE)]).await;
    // Declared at zero for both names before any turn.
    let samples = scrape(&proxy).await;
    for key in ["team-a", "team-b"] {
        assert_eq!(
            count(&samples, "codex_turns_total", &[("key", key)]),
            6,
            "{key}: every outcome at 0 before the first turn"
        );
    }
    assert_eq!(chat(&proxy, None).await.status(), 401);
    assert_eq!(
        chat(&proxy, Some("sk-team-a-012345678")).await.status(),
        401
    );
    assert_eq!(
        chat(&proxy, Some("sk-team-a-0123456789")).await.status(),
        200
    );
    for _ in 0..2 {
        assert_eq!(
            chat(&proxy, Some("sk-team-b-9876543210")).await.status(),
            200
        );
    }
    let samples = scrape_until(&proxy, "three turns", |s| {
        sum(s, "codex_turns_total", &[]) == 3.0
    })
    .await;
    let turns = |key| {
        sum(
            &samples,
            "codex_turns_total",
            &[("key", key), ("outcome", "completed")],
        )
    };
    assert_eq!((turns("team-a"), turns("team-b")), (1.0, 2.0));
    let output = |key| {
        sum(
            &samples,
            "codex_tokens_total",
            &[("key", key), ("kind", "output")],
        )
    };
    assert_eq!((output("team-a"), output("team-b")), (7.0, 14.0));
    // The name only: never the key, on any family.
    let text = common::scrape::text(&proxy).await;
    assert!(!text.contains("sk-team"), "a key reached /metrics");
    assert!(!proxy.logs().contains("sk-team"), "a key reached the log");
    // Families other than the three keyed ones carry no key label.
    for (name, labels, _) in &samples {
        if labels.contains_key("key") {
            assert!(
                [
                    "codex_turns_total",
                    "codex_tokens_total",
                    "codex_cost_usd_total"
                ]
                .contains(&name.as_str()),
                "{name} has a key label"
            );
        }
    }
}

/// Prices of the demo model: every kind its own, so a kind priced twice or not at all
/// shows in the sum.
const PRICING: &str = r#"
[pricing."codex-demo"]
input = 1.25
cached_input = 0.125
output = 10.0
reasoning_output = 12.5
cache_write_input = 1.5
"#;

/// One `USAGE` turn at `PRICING`, by hand: 11 input of which 3 cached and 1 written to
/// the cache, so 7 uncached; 7 output of which 2 reasoning, so 5 plain.
const TURN_USD: f64 = (7.0 * 1.25 + 3.0 * 0.125 + 1.0 * 1.5 + 5.0 * 10.0 + 2.0 * 12.5) / 1e6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_per_key_equals_the_hand_computation_in_metrics_and_in_prometheus() {
    let Some(prometheus) = common::start_prometheus("").await else {
        return;
    };
    let config = format!(
        "{KEYS}{PRICING}\n[[remote_write]]\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n",
        prometheus.base
    );
    let proxy = start(&config, &[("DEMO_USAGE", USAGE)]).await;
    let samples = scrape(&proxy).await;
    assert_eq!(
        count(&samples, "codex_cost_usd_total", &[]),
        2,
        "declared at 0 per key"
    );
    assert_eq!(sum(&samples, "codex_cost_usd_total", &[]), 0.0);
    assert_eq!(
        count(
            &samples,
            "codex_turns_unpriced_total",
            &[("model", "codex-demo")]
        ),
        1
    );
    for _ in 0..3 {
        assert_eq!(
            chat(&proxy, Some("sk-team-a-0123456789")).await.status(),
            200
        );
    }
    assert_eq!(
        chat(&proxy, Some("sk-team-b-9876543210")).await.status(),
        200
    );
    let samples = scrape_until(&proxy, "four turns", |s| {
        sum(s, "codex_turns_total", &[]) == 4.0
    })
    .await;
    let cost = |key| {
        sum(
            &samples,
            "codex_cost_usd_total",
            &[("key", key), ("model", "codex-demo")],
        )
    };
    assert!(
        (cost("team-a") - 3.0 * TURN_USD).abs() < 1e-9,
        "{}",
        cost("team-a")
    );
    assert!(
        (cost("team-b") - TURN_USD).abs() < 1e-9,
        "{}",
        cost("team-b")
    );
    assert_eq!(sum(&samples, "codex_turns_unpriced_total", &[]), 0.0);

    let instance = format!("{}:{}", common::hostname(), proxy.port);
    for (key, expected) in [("team-a", 3.0 * TURN_USD), ("team-b", TURN_USD)] {
        let query = format!(r#"codex_cost_usd_total{{instance="{instance}",key="{key}"}}"#);
        wait_until(&format!("{query} = {expected}"), DEADLINE, || async {
            let value = prometheus.scalar(&query).await?;
            ((value - expected).abs() < 1e-9).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_model_without_a_price_counts_unpriced_turns_and_no_cost() {
    let proxy = start(KEYS, &[("DEMO_USAGE", USAGE)]).await;
    assert_eq!(
        chat(&proxy, Some("sk-team-a-0123456789")).await.status(),
        200
    );
    let samples = scrape_until(&proxy, "one unpriced turn", |s| {
        sum(s, "codex_turns_unpriced_total", &[("model", "codex-demo")]) == 1.0
    })
    .await;
    assert_eq!(sum(&samples, "codex_cost_usd_total", &[]), 0.0);
}
