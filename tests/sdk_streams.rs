//! Streamed chat completions from the official `openai` Python SDK (tests/python, pinned in
//! its requirements.txt, installed by scripts/install-test-deps.sh), many at once, against
//! the real binary on its embedded defaults: streams wait their turn in the admission queue
//! with the non-streamed requests, and only past its bounds get 429 (issue 24).
//!
//! The SDK never retries (`max_retries=0`), so every refusal shows. The demo worker's
//! `DEMO_HOLD_FILE` holds every turn before its first delta until the script makes the
//! file, which it does once each request is admitted, refused or queued: the counts are
//! exact with no clock involved. `/healthz` `streams.peak` is the high-water mark of
//! `codex_streams_active`, read after the run.
//!
//! The same SDK also reads `/v1/models`, whose JSON the proxy writes by hand.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::scrape::{scrape, sum};
use common::{wait_until, Proxy};
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/stream_burst.py");
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs the script with `args` and returns the JSON it prints.
async fn run(python: PathBuf, args: Vec<String>) -> Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(SCRIPT)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "script failed: {stderr}\n{stdout}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

/// Starts the proxy with `config`, turns held until the script releases them.
async fn held_proxy(config: &str) -> (Proxy, String) {
    let dir = tempfile::tempdir().unwrap();
    let hold = dir.path().join("release").display().to_string();
    let proxy = Proxy::start_in(
        dir,
        config,
        &[("DEMO_HOLD_FILE", &hold), ("DEMO_DELTA_DELAY_MS", "5")],
    )
    .await;
    proxy.wait_ready().await;
    (proxy, hold)
}

async fn burst(python: PathBuf, proxy: &Proxy, n: usize, hold: &str) -> Value {
    run(
        python,
        vec![
            "burst".into(),
            proxy.base.clone(),
            n.to_string(),
            hold.to_string(),
        ],
    )
    .await
}

/// Each served stream carried the demo worker's whole reply, in several deltas, then
/// `[DONE]`; returns how many were served.
fn assert_served_in_full(results: &[Value]) -> usize {
    let served: Vec<&Value> = results.iter().filter(|r| r["status"] == 200).collect();
    for r in &served {
        let i = r["i"].as_u64().unwrap();
        assert_eq!(
            r["content"],
            format!("Echo: user: stream number {i}"),
            "{r}"
        );
        assert!(r["content_chunks"].as_u64() > Some(1), "{r}");
        assert_eq!(r["done"], true, "{r}");
    }
    served.len()
}

/// The stream cap held all along, and the queue emptied.
async fn assert_cap_held_and_queue_empty(out: &Value, proxy: &Proxy) {
    assert_eq!(out["after"]["streams"]["peak"], 4, "{}", out["after"]);
    assert!(out["sampled_active_max"].as_f64() <= Some(4.0), "{out}");
    let samples = scrape(proxy).await;
    assert_eq!(sum(&samples, "codex_worker_queue_depth", &[]), 0.0);
    assert_eq!(sum(&samples, "codex_streams_active", &[]), 0.0);
}

#[tokio::test]
async fn fifty_sdk_streams_at_once_wait_their_turn_and_all_complete_with_every_delta() {
    let Some(python) = common::python_with("openai") else {
        return;
    };
    let (proxy, hold) = held_proxy("").await;
    let out = burst(python, &proxy, 50, &hold).await;
    let results = out["results"].as_array().unwrap();
    assert_eq!(results.len(), 50);
    assert_eq!(assert_served_in_full(results), 50, "{out}");
    // Before the release: 4 streams open (the cap), the other 46 waiting in the queue.
    let at_release = &out["at_release"];
    assert_eq!(at_release["counts"]["admitted"], 4, "{at_release}");
    assert_eq!(at_release["worker"]["queue_depth"], 46, "{at_release}");
    assert_eq!(at_release["streams"]["active"], 4, "{at_release}");
    assert_cap_held_and_queue_empty(&out, &proxy).await;

    let samples = scrape(&proxy).await;
    // Every stream's wait is in the wait histogram, and in its time to first token.
    assert_eq!(sum(&samples, "codex_worker_wait_seconds_count", &[]), 50.0);
    let waited = sum(&samples, "codex_worker_wait_seconds_sum", &[]);
    let ttft = sum(
        &samples,
        "codex_time_to_first_token_seconds_sum",
        &[("stream", "true")],
    );
    assert!(
        waited > 0.0 && ttft >= waited,
        "ttft {ttft} < wait {waited}"
    );
    assert_eq!(
        sum(&samples, "codex_turns_total", &[("outcome", "completed")]),
        50.0
    );
}

#[tokio::test]
async fn past_queue_max_exactly_the_overflow_of_forty_sdk_streams_gets_429_with_retry_after() {
    let Some(python) = common::python_with("openai") else {
        return;
    };
    let (proxy, hold) = held_proxy("[worker]\nqueue_max = 8\n").await;
    let out = burst(python, &proxy, 40, &hold).await;
    let results = out["results"].as_array().unwrap();
    // 4 streams open, 8 queued, the other 28 refused.
    let refused: Vec<&Value> = results.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(refused.len(), 28, "{out}");
    for r in &refused {
        assert_eq!(r["retry_after"], "1", "{r}");
        assert_eq!(r["code"], "worker_busy", "{r}");
    }
    assert_eq!(assert_served_in_full(results), 12, "{out}");
    assert_eq!(out["at_release"]["worker"]["queue_depth"], 8, "{out}");
    assert_cap_held_and_queue_empty(&out, &proxy).await;
}

#[tokio::test]
async fn with_on_full_reject_sdk_streams_past_the_cap_get_429_at_once() {
    let Some(python) = common::python_with("openai") else {
        return;
    };
    let (proxy, hold) = held_proxy("[streams]\non_full = \"reject\"\n").await;
    let out = burst(python, &proxy, 40, &hold).await;
    let results = out["results"].as_array().unwrap();
    let refused: Vec<&Value> = results.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(refused.len(), 36, "{out}");
    for r in &refused {
        assert_eq!(r["retry_after"], "1", "{r}");
        assert_eq!(r["code"], "too_many_streams", "{r}");
    }
    assert_eq!(assert_served_in_full(results), 4, "{out}");
    // Nobody waited: refused while the 4 turns were still held.
    assert_eq!(out["at_release"]["worker"]["queue_depth"], 0, "{out}");
    assert_eq!(out["at_release"]["counts"]["refused"], 36, "{out}");
    assert_cap_held_and_queue_empty(&out, &proxy).await;
}

#[tokio::test]
async fn an_sdk_stream_that_gives_up_while_queued_leaves_the_queue_and_its_turn_never_starts() {
    let Some(python) = common::python_with("openai") else {
        return;
    };
    // The hold file is never made: the 4 holders keep their slots until they give up.
    let (proxy, hold) = held_proxy("").await;
    let _ = hold;
    let out = run(
        python,
        vec!["disconnect".into(), proxy.base.clone(), "4".into()],
    )
    .await;
    assert_eq!(out["counts"]["admitted"], 4, "{out}");
    assert_eq!(out["at_queued"]["worker"]["in_flight"], 4, "{out}");
    // It left while every slot was still held, so it cannot have been admitted.
    let left = &out["after_leaving"];
    assert_eq!(left["worker"]["in_flight"], 4, "{left}");
    assert_eq!(left["streams"]["active"], 4, "{left}");

    // The holders gave up too: 4 turns ran, all ended by their clients, none for the 5th.
    let samples = wait_until("the holders' turns recorded", DEADLINE, || async {
        let samples = scrape(&proxy).await;
        (sum(&samples, "codex_turns_total", &[]) >= 4.0).then_some(samples)
    })
    .await;
    assert_eq!(sum(&samples, "codex_turns_total", &[]), 4.0);
    assert_eq!(
        sum(
            &samples,
            "codex_turns_total",
            &[("outcome", "client_disconnected")]
        ),
        4.0
    );
    assert_eq!(sum(&samples, "codex_worker_wait_seconds_count", &[]), 4.0);
    assert_eq!(sum(&samples, "codex_worker_queue_depth", &[]), 0.0);
    // The worker saw 4 turns, each interrupted before its first delta.
    wait_until("the worker to interrupt 4 turns", DEADLINE, || async {
        let logs = proxy.logs();
        (logs.matches(" interrupted after 0 deltas").count() >= 4).then_some(())
    })
    .await;
    assert_eq!(
        proxy.logs().matches(" interrupted after 0 deltas").count(),
        4
    );
}

#[tokio::test]
async fn the_sdk_parses_the_workers_model_list() {
    let Some(python) = common::python_with("openai") else {
        return;
    };
    let proxy = Proxy::start("", &[]).await;
    proxy.wait_ready().await;
    let out = run(python, vec!["models".into(), proxy.url("")]).await;
    assert_eq!(
        out["models"],
        serde_json::json!([
            {"id": "codex-demo", "object": "model", "created": 0, "owned_by": "codex"}
        ]),
        "{out}"
    );
}
