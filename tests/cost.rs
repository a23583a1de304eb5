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

/// `team-a` may spend 1.5 turns a day, enforced; `team-b` has no budget.
fn budget(usd: f64, state_dir: &str) -> String {
    format!(
        "{KEYS}{PRICING}\n[server]\nstate_dir = {state_dir:?}\n\n[[budgets]]\nkey = \"team-a\"\nusd = {usd}\nperiod = \"day\"\nenforce = true\n"
    )
}

const TEAM_A: &str = "sk-team-a-0123456789";
const TEAM_B: &str = "sk-team-b-9876543210";

/// Seconds from now to the next 00:00 UTC.
fn seconds_to_midnight() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    86_400 - now % 86_400
}

#[tokio::test]
async fn a_spent_enforced_budget_refuses_its_key_with_429_and_retry_after_and_other_keys_pass() {
    let proxy = start(&budget(1.5 * TURN_USD, "state"), &[("DEMO_USAGE", USAGE)]).await;
    let samples = scrape(&proxy).await;
    assert_eq!(
        sum(&samples, "codex_budget_spent_usd", &[("key", "team-a")]),
        0.0
    );
    assert_eq!(
        count(&samples, "codex_budget_spent_usd", &[("key", "team-a")]),
        1
    );
    let limit = sum(&samples, "codex_budget_limit_usd", &[("key", "team-a")]);
    assert!((limit - 1.5 * TURN_USD).abs() < 1e-12);
    for _ in 0..2 {
        assert_eq!(chat(&proxy, Some(TEAM_A)).await.status(), 200);
    }
    let refused = chat(&proxy, Some(TEAM_A)).await;
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "insufficient_quota", "{body}");
    // Until the day ends (UTC); a second of slack for the clock ticking in between.
    let to_midnight = seconds_to_midnight();
    assert!(
        retry_after >= 1 && retry_after.abs_diff(to_midnight) <= 2,
        "Retry-After {retry_after}, midnight in {to_midnight}"
    );
    assert_eq!(chat(&proxy, Some(TEAM_B)).await.status(), 200);
    let samples = scrape(&proxy).await;
    let spent = sum(&samples, "codex_budget_spent_usd", &[("key", "team-a")]);
    assert!((spent - 2.0 * TURN_USD).abs() < 1e-12, "{spent}");
    assert_eq!(
        sum(&samples, "codex_turns_total", &[("key", "team-a")]),
        2.0
    );
}

/// The stored spend of `key`, once the state file holds it.
fn stored_spend(dir: &std::path::Path, key: &str) -> Option<f64> {
    let text = std::fs::read_to_string(dir.join("state/budgets.state")).ok()?;
    let (_, body) = text.split_once('\n')?;
    let body: serde_json::Value = serde_json::from_str(body).ok()?;
    body["budgets"]
        .as_array()?
        .iter()
        .find(|b| b["key"] == key)?["spent_usd"]
        .as_f64()
}

#[tokio::test]
async fn spend_survives_kill_9_and_a_restart_still_refuses_the_spent_key() {
    // Half a turn: the first turn spends it all.
    let config = budget(0.5 * TURN_USD, "state");
    let proxy = start(&config, &[("DEMO_USAGE", USAGE)]).await;
    assert_eq!(chat(&proxy, Some(TEAM_A)).await.status(), 200);
    let dir = proxy.dir.path().to_path_buf();
    wait_until("the spend on disk", DEADLINE, || async {
        stored_spend(&dir, "team-a")
            .filter(|s| (s - TURN_USD).abs() < 1e-12)
            .map(|_| ())
    })
    .await;
    let Proxy { proc, dir, .. } = proxy;
    proc.signal(rustix::process::Signal::KILL);
    drop(proc);

    let proxy = Proxy::start_in(dir, &config, &[("DEMO_USAGE", USAGE)]).await;
    proxy.wait_ready().await;
    let samples = scrape(&proxy).await;
    let spent = sum(&samples, "codex_budget_spent_usd", &[("key", "team-a")]);
    assert!(
        (spent - TURN_USD).abs() < 1e-12,
        "spent after restart: {spent}"
    );
    let refused = chat(&proxy, Some(TEAM_A)).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(chat(&proxy, Some(TEAM_B)).await.status(), 200);
}

#[tokio::test]
async fn a_corrupt_state_file_is_logged_and_the_proxy_starts_from_zero() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("team-b.key"), "sk-team-b-9876543210\n").unwrap();
    std::fs::create_dir(dir.path().join("state")).unwrap();
    std::fs::write(
        dir.path().join("state/budgets.state"),
        "codex-proxy-budgets v1 crc32=00000000\n{\"budgets\":[{\"key\":\"team-a\"",
    )
    .unwrap();
    let proxy = Proxy::start_in(
        dir,
        &budget(0.5 * TURN_USD, "state"),
        &[("DEMO_USAGE", USAGE)],
    )
    .await;
    proxy.wait_ready().await;
    proxy.wait_log("corrupt").await;
    assert!(proxy.logs().contains("ERROR"), "{}", proxy.logs());
    let samples = scrape(&proxy).await;
    assert_eq!(
        sum(&samples, "codex_budget_spent_usd", &[("key", "team-a")]),
        0.0
    );
    assert_eq!(chat(&proxy, Some(TEAM_A)).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_window_reads_0_once_its_reset_time_passes_in_metrics_and_in_pushes() {
    let Some(prometheus) = common::start_prometheus("").await else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // A few seconds ahead: long enough to see 0.42 first, even on a loaded machine
    // (checked below: the test reads 0.42 before the reset time or fails to prove anything).
    let resets_at = now + 4;
    let limits = format!(
        "primary=42@{resets_at},secondary=91@{},credits=12.5,plan=pro",
        now + 86_400
    );
    let config = format!(
        "[metrics]\nmodels = [\"codex-demo\"]\n[[remote_write]]\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n",
        prometheus.base
    );
    let proxy = Proxy::start(&config, &[("DEMO_RATE_LIMITS", limits.as_str())]).await;
    proxy.wait_ready().await;
    assert_eq!(chat(&proxy, None).await.status(), 200);
    let samples = scrape_until(&proxy, "the first report", |s| {
        count(s, "codex_rate_limit_used_ratio", &[]) == 2
    })
    .await;
    let read_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let used = |s: &[Sample], w| sum(s, "codex_rate_limit_used_ratio", &[("window", w)]);
    if read_at < resets_at {
        assert_eq!(used(&samples, "primary"), 0.42);
    }
    assert_eq!(used(&samples, "secondary"), 0.91);
    assert_eq!(
        sum(
            &samples,
            "codex_rate_limit_window_seconds",
            &[("window", "primary")]
        ),
        18_000.0
    );
    assert_eq!(sum(&samples, "codex_rate_limit_credits_balance", &[]), 12.5);
    assert_eq!(
        sum(&samples, "codex_plan_info", &[("plan_type", "pro")]),
        1.0
    );
    assert_eq!(
        sum(
            &samples,
            "codex_rate_limit_resets_at_seconds",
            &[("window", "primary")]
        ),
        resets_at as f64
    );

    // No new report comes (no turn): the window empties by itself at its reset time.
    let samples = scrape_until(&proxy, "the primary window reset", |s| {
        used(s, "primary") == 0.0
    })
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now >= resets_at, "0 before the reset time");
    assert_eq!(
        used(&samples, "secondary"),
        0.91,
        "the other window is untouched"
    );
    let instance = format!("{}:{}", common::hostname(), proxy.port);
    let query = format!(r#"codex_rate_limit_used_ratio{{instance="{instance}",window="primary"}}"#);
    prometheus.wait_scalar(&query, 0.0, DEADLINE).await;
}

#[tokio::test]
async fn turns_refused_by_an_account_limit_are_counted_by_limit() {
    let proxy = Proxy::start(
        "[metrics]\nmodels = [\"codex-demo\"]\n",
        &[("DEMO_TURN_FAIL", "usage_limit")],
    )
    .await;
    proxy.wait_ready().await;
    let samples = scrape(&proxy).await;
    assert_eq!(count(&samples, "codex_turns_limit_reached_total", &[]), 2);
    assert_eq!(chat(&proxy, None).await.status(), 502);
    let samples = scrape_until(&proxy, "one turn refused by the usage limit", |s| {
        sum(
            s,
            "codex_turns_limit_reached_total",
            &[("limit", "usage_limit")],
        ) == 1.0
    })
    .await;
    assert_eq!(
        sum(
            &samples,
            "codex_turns_limit_reached_total",
            &[("limit", "rate_limit")]
        ),
        0.0
    );
    assert_eq!(
        sum(&samples, "codex_turns_total", &[("outcome", "failed")]),
        1.0
    );
}
