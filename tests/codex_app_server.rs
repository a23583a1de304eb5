//! End to end against the real Codex app-server: the codex-proxy binary supervises
//! `codex app-server`, which talks to an in-process model stub speaking the OpenAI
//! Responses API. Nothing leaves 127.0.0.1 (docs/codex-app-server.md has the set-up).
//!
//! The binary comes from `CODEX_APP_SERVER_BIN`, else the npm package under tests/npm.
//! Missing: the test fails under `CODEX_PROXY_REQUIRE_SERVERS=1` (CI), else it is skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::StreamExt;
use serde_json::{json, Value};

use common::scrape::{count, scrape, sum, Sample};
use common::{http, wait_until, Proxy};

/// Where scripts/install-test-deps.sh puts the native binary of npm `@openai/codex`.
const NPM_CODEX_BIN: &str =
    "tests/npm/node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex";

/// The model's reply, one Responses-API text delta per piece.
const DELTAS: [&str; 4] = ["Hello", " from", " the", " stub."];
/// Token counts the stub reports; distinct so that a swapped field shows.
const INPUT_TOKENS: u64 = 11;
const CACHED_INPUT_TOKENS: u64 = 3;
const OUTPUT_TOKENS: u64 = 7;
const REASONING_OUTPUT_TOKENS: u64 = 2;
const TOTAL_TOKENS: u64 = 18;
/// How long the stub waits before its first text delta.
const FIRST_DELTA_DELAY: Duration = Duration::from_millis(750);
/// A prompt containing this makes the stub answer 500.
const FAIL_MARKER: &str = "please-fail-this-turn";
/// A prompt containing this makes the stub's `response.completed` carry no usage.
const NO_USAGE_MARKER: &str = "report-no-usage";

/// The real app-server binary, or `None` (test skipped loudly) outside CI.
fn codex_bin() -> Option<PathBuf> {
    let path = std::env::var_os("CODEX_APP_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(NPM_CODEX_BIN));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("CODEX_PROXY_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!(
            "the Codex app-server is required (CODEX_PROXY_REQUIRE_SERVERS=1) but {} is missing; run scripts/install-test-deps.sh",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: Codex app-server not found at {} (scripts/install-test-deps.sh installs it)",
        path.display()
    );
    None
}

/// The Responses-API model stub; records the last user text of every request.
struct ModelStub {
    port: u16,
    prompts: Arc<Mutex<Vec<String>>>,
}

impl ModelStub {
    async fn start() -> ModelStub {
        let prompts = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/responses", post(responses))
            .with_state(prompts.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the model stub");
        let port = listener.local_addr().expect("stub address").port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ModelStub { port, prompts }
    }

    fn prompts(&self) -> Vec<String> {
        self.prompts.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

async fn responses(State(prompts): State<Arc<Mutex<Vec<String>>>>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let prompt = last_user_text(&request);
    if let Ok(mut p) = prompts.lock() {
        p.push(prompt.clone());
    }
    if prompt.contains(FAIL_MARKER) {
        let error = json!({"error": {"message": "stub failure", "type": "server_error"}});
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(error)).into_response();
    }
    // The events before the first delta go out at once; the rest after the delay, so
    // the first token reaches codex (and the proxy) no sooner than FIRST_DELTA_DELAY.
    let (head, tail) = sse_reply(!prompt.contains(NO_USAGE_MARKER));
    let body = futures_util::stream::iter([0, 1]).then(move |part| {
        let chunk = if part == 0 {
            head.clone()
        } else {
            tail.clone()
        };
        async move {
            if part == 1 {
                tokio::time::sleep(FIRST_DELTA_DELAY).await;
            }
            Ok::<_, std::convert::Infallible>(Bytes::from(chunk))
        }
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

/// The text of the last `user` message in a Responses-API `input` (codex puts the
/// prompt there, after its own developer and environment messages).
fn last_user_text(request: &Value) -> String {
    let input = request["input"].as_array().cloned().unwrap_or_default();
    input
        .iter()
        .rev()
        .find(|item| item["role"] == "user")
        .and_then(|item| item["content"].as_array())
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

/// A complete streamed response: created, a message item, its text deltas, the item
/// done, completed with usage (or without). Codex drops deltas that no
/// `output_item.added` announced. Returned in two parts: up to the first delta, and from it.
fn sse_reply(with_usage: bool) -> (String, String) {
    let item_id = "msg_stub_1";
    let mut events = vec![
        json!({"type": "response.created", "response": {"id": "resp_stub_1"}}),
        json!({"type": "response.output_item.added", "output_index": 0,
               "item": {"type": "message", "id": item_id, "role": "assistant", "content": []}}),
    ];
    for delta in DELTAS {
        events.push(
            json!({"type": "response.output_text.delta", "item_id": item_id,
                           "output_index": 0, "content_index": 0, "delta": delta}),
        );
    }
    events.push(
        json!({"type": "response.output_item.done", "output_index": 0,
        "item": {"type": "message", "id": item_id, "role": "assistant",
                 "content": [{"type": "output_text", "text": DELTAS.concat()}]}}),
    );
    let mut completed = json!({"type": "response.completed", "response": {"id": "resp_stub_1"}});
    if with_usage {
        completed["response"]["usage"] = json!({
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": CACHED_INPUT_TOKENS},
            "output_tokens": OUTPUT_TOKENS,
            "output_tokens_details": {"reasoning_tokens": REASONING_OUTPUT_TOKENS},
            "total_tokens": TOTAL_TOKENS,
        });
    }
    events.push(completed);
    let text = |events: &[Value]| -> String {
        events
            .iter()
            .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
            .collect()
    };
    (text(&events[..2]), text(&events[2..]))
}

/// The proxy, its codex worker's home, and the model stub behind it.
struct Stack {
    proxy: Proxy,
    stub: ModelStub,
    _codex_home: tempfile::TempDir,
}

impl Stack {
    /// Starts everything and waits until the worker's handshake is done, or `None` when
    /// the app-server is not installed (outside CI).
    async fn start() -> Option<Stack> {
        Stack::start_with("").await
    }

    /// Same, with `extra` appended to the proxy's configuration.
    async fn start_with(extra: &str) -> Option<Stack> {
        let codex = codex_bin()?;
        let stub = ModelStub::start().await;
        let codex_home = tempfile::tempdir().expect("codex home");
        std::fs::write(
            codex_home.path().join("config.toml"),
            codex_config(stub.port),
        )
        .expect("write codex config.toml");
        let config = format!(
            "[worker]\ncommand = [{}, \"app-server\"]\nstartup_timeout_ms = 60000\nhandshake_timeout_ms = 30000\n\
             [metrics]\nenabled = true\nmodels = [\"stub-model\"]\n{extra}",
            toml::Value::String(codex.display().to_string())
        );
        let home = codex_home.path().display().to_string();
        // CODEX_HOME keeps codex away from the account's ~/.codex; HOME so nothing else leaks.
        let proxy = Proxy::start(&config, &[("HOME", &home), ("CODEX_HOME", &home)]).await;
        proxy.wait_ready().await;
        Some(Stack {
            proxy,
            stub,
            _codex_home: codex_home,
        })
    }

    async fn chat(&self, prompt: &str, stream: bool) -> reqwest::Response {
        let body = json!({
            "model": "stub-model",
            "messages": [{"role": "user", "content": prompt}],
            "stream": stream,
        });
        http()
            .post(self.proxy.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .expect("POST /v1/chat/completions")
    }

    /// A non-streamed completion answered 200, then `/metrics` once it counts `turns` turns.
    async fn turn_counted(&self, prompt: &str, turns: f64) -> Vec<Sample> {
        let response = self.chat(prompt, false).await;
        assert_eq!(
            response.status(),
            200,
            "proxy log tail:\n{}",
            self.log_tail()
        );
        response.text().await.unwrap();
        wait_until(
            &format!("{turns} turns in /metrics"),
            Duration::from_secs(20),
            || async {
                let samples = scrape(&self.proxy).await;
                (sum(&samples, "codex_turns_total", &[]) == turns).then_some(samples)
            },
        )
        .await
    }

    /// The end of the proxy's log (codex logs there too, verbosely) for failure messages.
    fn log_tail(&self) -> String {
        let logs = self.proxy.logs();
        let start = logs.len().saturating_sub(8000);
        let start = (start..logs.len())
            .find(|&i| logs.is_char_boundary(i))
            .unwrap_or(logs.len());
        logs[start..].to_string()
    }
}

/// design.md §6: offline, a provider named "stub", no retries so a failure shows at once.
fn codex_config(stub_port: u16) -> String {
    format!(
        r#"model_provider = "stub"
model = "stub-model"
approval_policy = "never"
sandbox_mode = "read-only"

[features]
plugins = false

[model_providers.stub]
name = "stub"
base_url = "http://127.0.0.1:{stub_port}/v1"
wire_api = "responses"
requires_openai_auth = false
request_max_retries = 0
stream_max_retries = 0
"#
    )
}

/// The `data:` payloads of an SSE body, in order (comments and blank lines dropped).
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.trim().to_string())
        .collect()
}

#[tokio::test]
async fn non_streaming_completion_returns_the_models_text_and_token_usage() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let prompt = "Say hello through the real app-server";
    let response = stack.chat(prompt, false).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status,
        200,
        "body {body}; proxy log tail:\n{}",
        stack.log_tail()
    );

    assert_eq!(body["object"], "chat.completion", "{body}");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant", "{body}");
    assert_eq!(choice["message"]["content"], DELTAS.concat(), "{body}");
    assert_eq!(choice["finish_reason"], "stop", "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], INPUT_TOKENS, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], OUTPUT_TOKENS, "{body}");
    assert_eq!(body["usage"]["total_tokens"], TOTAL_TOKENS, "{body}");

    // The client's prompt travelled proxy → app-server → model.
    let prompts = stack.stub.prompts();
    assert!(
        prompts.iter().any(|p| p.contains(prompt)),
        "the stub never saw the prompt; it saw {prompts:?}"
    );
}

#[tokio::test]
async fn streaming_completion_sends_role_then_each_delta_in_order_then_finish_and_done() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let response = stack
        .chat("Stream hello through the real app-server", true)
        .await;
    assert_eq!(
        response.status(),
        200,
        "proxy log tail:\n{}",
        stack.log_tail()
    );
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let body = response.text().await.expect("SSE body");
    let data = sse_data(&body);

    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d:?}: {e}")))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{body}"
    );
    assert_eq!(
        chunks[0]["choices"][0]["delta"]["role"], "assistant",
        "{body}"
    );

    let contents: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(contents, DELTAS, "{body}");

    let finish = chunks.last().map(|c| &c["choices"][0]["finish_reason"]);
    assert_eq!(
        finish,
        Some(&json!("stop")),
        "the last chunk ends the choice: {body}"
    );
    let finishes = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .count();
    assert_eq!(finishes, 1, "{body}");
}

#[tokio::test]
async fn turn_failed_by_the_model_becomes_502_or_an_error_event_and_the_worker_serves_on() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let failing = format!("This one fails: {FAIL_MARKER}");
    let response = stack.chat(&failing, false).await;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(
        status,
        502,
        "body {body}; proxy log tail:\n{}",
        stack.log_tail()
    );
    assert_eq!(body["error"]["code"], "worker_error", "{body}");
    let prompts = stack.stub.prompts();
    assert!(
        prompts.iter().any(|p| p.contains(FAIL_MARKER)),
        "the failure must come from the model call; the stub saw {prompts:?}"
    );

    // Streaming: the headers are out before the turn fails, so an error event then [DONE].
    let response = stack.chat(&failing, true).await;
    assert_eq!(
        response.status(),
        200,
        "proxy log tail:\n{}",
        stack.log_tail()
    );
    let body = response.text().await.expect("SSE body");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let error: Value = data
        .iter()
        .rev()
        .nth(1)
        .and_then(|d| serde_json::from_str(d).ok())
        .unwrap_or(Value::Null);
    assert!(
        error["error"]["message"].is_string(),
        "an error event before [DONE]: {body}"
    );
    assert!(
        !body.contains(DELTAS[0]),
        "no model text on a failed turn: {body}"
    );

    // A failed turn leaves the worker usable.
    let next = stack.chat("And this one works", false).await;
    assert_eq!(next.status(), 200, "proxy log tail:\n{}", stack.log_tail());
    let body: Value = next.json().await.unwrap_or(Value::Null);
    assert_eq!(
        body["choices"][0]["message"]["content"],
        DELTAS.concat(),
        "{body}"
    );
}

#[tokio::test]
async fn model_work_families_equal_the_stubs_usage_and_see_its_first_token_delay() {
    let Some(stack) = Stack::start().await else {
        return;
    };
    let samples = stack.turn_counted("Count my tokens", 1.0).await;
    let model = ("model", "stub-model");
    for (kind, n) in [
        ("input", INPUT_TOKENS),
        ("cached_input", CACHED_INPUT_TOKENS),
        ("cache_write_input", 0),
        ("output", OUTPUT_TOKENS),
        ("reasoning_output", REASONING_OUTPUT_TOKENS),
    ] {
        assert_eq!(
            sum(&samples, "codex_tokens_total", &[model, ("kind", kind)]),
            n as f64,
            "{kind}"
        );
    }
    assert_eq!(
        sum(
            &samples,
            "codex_turns_total",
            &[model, ("outcome", "completed")]
        ),
        1.0
    );
    assert_eq!(sum(&samples, "codex_turns_without_usage_total", &[]), 0.0);
    // The stub's account has no rate-limit windows: codex reports them null, nothing is set.
    assert_eq!(count(&samples, "codex_rate_limit_used_ratio", &[]), 0);
    assert_eq!(
        sum(
            &samples,
            "codex_turn_items_total",
            &[model, ("kind", "agent_message")]
        ),
        1.0
    );
    // The first token came after the stub's 750 ms: in the bucket holding 0.75 s
    // (0.5, 1], not in the one below.
    let ttft = |le: &str| {
        sum(
            &samples,
            "codex_time_to_first_token_seconds_bucket",
            &[model, ("stream", "false"), ("le", le)],
        )
    };
    let took = sum(&samples, "codex_time_to_first_token_seconds_sum", &[model]);
    assert_eq!(
        (ttft("0.5"), ttft("1")),
        (0.0, 1.0),
        "first token after {took} s"
    );
    // Seven output tokens over the deltas' span: one observation.
    assert_eq!(
        sum(
            &samples,
            "codex_time_per_output_token_seconds_count",
            &[model]
        ),
        1.0
    );

    // A turn whose model call reports no usage adds no tokens and is counted as such.
    let after = stack
        .turn_counted(&format!("No usage: {NO_USAGE_MARKER}"), 2.0)
        .await;
    assert_eq!(
        sum(&after, "codex_tokens_total", &[]),
        sum(&samples, "codex_tokens_total", &[])
    );
    assert_eq!(
        sum(&after, "codex_turns_without_usage_total", &[model]),
        1.0
    );
}

#[tokio::test]
async fn the_cost_of_a_real_workers_turn_equals_the_stubs_usage_at_the_configured_prices() {
    let pricing = "[pricing.\"stub-model\"]\ninput = 1.25\ncached_input = 0.125\noutput = 10.0\nreasoning_output = 15.0\n";
    let Some(stack) = Stack::start_with(pricing).await else {
        return;
    };
    let samples = stack.turn_counted("What does this cost?", 1.0).await;
    // The Responses API's usage: cached tokens are part of input, reasoning of output.
    let uncached = (INPUT_TOKENS - CACHED_INPUT_TOKENS) as f64;
    let plain_output = (OUTPUT_TOKENS - REASONING_OUTPUT_TOKENS) as f64;
    let hand = (uncached * 1.25
        + CACHED_INPUT_TOKENS as f64 * 0.125
        + plain_output * 10.0
        + REASONING_OUTPUT_TOKENS as f64 * 15.0)
        / 1e6;
    let cost = sum(
        &samples,
        "codex_cost_usd_total",
        &[("model", "stub-model"), ("key", "none")],
    );
    assert!((cost - hand).abs() < 1e-9, "{cost} != {hand}");
    assert_eq!(sum(&samples, "codex_turns_unpriced_total", &[]), 0.0);
}
