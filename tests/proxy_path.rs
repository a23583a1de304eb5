//! The proxy path end to end: the real `codex-proxy` binary with its built-in demo worker
//! (its `DEMO_*` knobs set on the proxy, which passes its environment on), driven over
//! HTTP like any OpenAI client would.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use rustix::process::Signal;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http, wait_until, Proxy, PROXY_BIN};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(20);

fn chat(prompt: &str, stream: bool) -> Value {
    json!({"model": "codex-demo", "stream": stream,
           "messages": [{"role": "user", "content": prompt}]})
}

async fn post(proxy: &Proxy, body: &Value, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = http()
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("request to the proxy")
}

/// Status and JSON body.
async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("response body");
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, body)
}

async fn get_json(proxy: &Proxy, path: &str) -> (u16, Value) {
    json_of(http().get(proxy.url(path)).send().await.expect("GET")).await
}

async fn health(proxy: &Proxy) -> Value {
    get_json(proxy, "/healthz").await.1
}

/// One SSE event: a `data:` payload or a `:` comment.
#[derive(Debug, PartialEq)]
enum Sse {
    Data(String),
    Comment(String),
}

fn parse_sse(text: &str) -> Vec<Sse> {
    text.split("\n\n")
        .filter(|block| !block.is_empty())
        .map(|block| {
            if let Some(data) = block.strip_prefix("data: ") {
                Sse::Data(data.to_string())
            } else if let Some(comment) = block.strip_prefix(':') {
                Sse::Comment(comment.trim().to_string())
            } else {
                panic!("unexpected SSE block {block:?}")
            }
        })
        .collect()
}

/// The `delta.content` of each chunk, in order (empty ones skipped).
fn contents(events: &[Sse]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Sse::Data(d) if d != "[DONE]" => serde_json::from_str::<Value>(d).ok(),
            _ => None,
        })
        .filter_map(|chunk| {
            chunk
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|c| !c.is_empty())
        .collect()
}

async fn stream_events(proxy: &Proxy, prompt: &str, headers: &[(&str, &str)]) -> Vec<Sse> {
    let response = post(proxy, &chat(prompt, true), headers).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    parse_sse(&response.text().await.expect("SSE body"))
}

/// Waits until `/healthz` satisfies `check`.
async fn wait_health(proxy: &Proxy, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_until(what, DEADLINE, || async {
        let h = health(proxy).await;
        check(&h).then_some(h)
    })
    .await
}

#[tokio::test]
async fn non_streamed_completion_is_openai_json_with_usage() {
    let proxy = Proxy::start("", &[]).await;
    proxy.wait_ready().await;
    let (status, body) = json_of(post(&proxy, &chat("hello world", false), &[]).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "codex-demo");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Echo: user: hello world"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The demo worker counts prompt words in and deltas out.
    let usage = &body["usage"];
    assert_eq!(usage["prompt_tokens"], 3);
    assert!(
        usage["completion_tokens"].as_u64().unwrap_or(0) > 1,
        "{usage}"
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(3 + usage["completion_tokens"].as_u64().unwrap_or(0))
    );

    let (status, models) = get_json(&proxy, "/v1/models").await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "codex-demo");
    let head = http().head(proxy.url("/v1/models")).send().await.unwrap();
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn streamed_completion_sends_role_deltas_keepalives_finish_and_done() {
    // Deltas 60 ms apart, keepalives every 20 ms: the quiet gaps carry comments.
    let config = "[streams]\nkeepalive_ms = 20\n";
    let proxy = Proxy::start(config, &[("DEMO_DELTA_DELAY_MS", "60")]).await;
    proxy.wait_ready().await;
    let events = stream_events(&proxy, "stream me", &[]).await;

    let Some(Sse::Data(first)) = events.first() else {
        panic!("{events:?}")
    };
    let first: Value = serde_json::from_str(first).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    assert!(
        events.contains(&Sse::Comment("keepalive".into())),
        "{events:?}"
    );

    let pieces = contents(&events);
    assert!(pieces.len() > 1, "expected several deltas: {pieces:?}");
    assert_eq!(pieces.concat(), "Echo: user: stream me");

    let data: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Sse::Data(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(data.last().map(|d| d.as_str()), Some("[DONE]"));
    let last_chunk: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(last_chunk["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn with_on_full_reject_streams_past_the_cap_get_429_json_at_once() {
    let config = "[streams]\nmax_concurrency = 1\non_full = \"reject\"\n";
    let proxy = Proxy::start(config, &[("DEMO_DELTA_DELAY_MS", "100")]).await;
    proxy.wait_ready().await;
    let long = "word ".repeat(100);
    let open = post(&proxy, &chat(&long, true), &[]).await;
    assert_eq!(open.status(), 200);

    let refused = post(&proxy, &chat("one more", true), &[]).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, body) = json_of(refused).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_streams");
    assert_eq!(body["error"]["retryable"], true);
    // Non-streaming requests are not streams: they still go through.
    let (status, _) = json_of(post(&proxy, &chat("plain", false), &[]).await).await;
    assert_eq!(status, 200);
    drop(open);
}

#[tokio::test]
async fn turns_past_the_worker_cap_without_a_queue_get_retryable_429() {
    let config = "[worker]\nmax_concurrency = 1\nqueue_max = 0\n";
    let proxy = Proxy::start(config, &[("DEMO_DELTA_DELAY_MS", "100")]).await;
    proxy.wait_ready().await;
    let long = "word ".repeat(100);
    let open = post(&proxy, &chat(&long, true), &[]).await;
    assert_eq!(open.status(), 200);
    let refused = post(&proxy, &chat("blocked", false), &[]).await;
    assert_eq!(refused.headers()["retry-after"], "1");
    let (status, body) = json_of(refused).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "worker_busy");
    assert_eq!(body["error"]["retryable"], true);
    assert_eq!(health(&proxy).await["worker"]["in_flight"], 1);
    drop(open);
}

#[tokio::test]
async fn worker_down_answers_503_then_recovers_after_the_backoff() {
    let config = "[worker]\nbackoff_initial_ms = 2000\nbackoff_max_ms = 4000\n";
    let proxy = Proxy::start(config, &[("DEMO_CRASH_AFTER_TURNS", "1")]).await;
    proxy.wait_ready().await;
    let (status, _) = json_of(post(&proxy, &chat("last words", false), &[]).await).await;
    assert_eq!(status, 200);

    // The worker exits after that turn; while the supervisor waits out the backoff
    // (2 s, ample to look), the proxy says the worker is not ready.
    let h = wait_health(&proxy, "the worker to be restarting", |h| {
        h["worker"]["state"] == "restarting"
    })
    .await;
    assert_eq!(h["worker"]["backoff_ms"], 2000);
    assert!(
        h["worker"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("exited")),
        "{h}"
    );
    let (status, body) = json_of(post(&proxy, &chat("anyone?", false), &[]).await).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "backend_unavailable");
    assert_eq!(body["error"]["code"], "worker_not_ready");
    assert_eq!(body["error"]["retryable"], true);
    let (status, _) = get_json(&proxy, "/readyz").await;
    assert_eq!(status, 503);

    wait_until("recovery after the backoff", DEADLINE, || async {
        let (status, _) = json_of(post(&proxy, &chat("back?", false), &[]).await).await;
        (status == 200).then_some(())
    })
    .await;
    assert!(health(&proxy).await["worker"]["restarts"].as_u64() >= Some(1));
}

#[tokio::test]
async fn handshake_failures_back_off_doubling_to_the_cap_then_hit_the_restart_limit() {
    let config = "[worker]\nbackoff_initial_ms = 400\nbackoff_max_ms = 800\nrestart_max = 3\n";
    let proxy = Proxy::start(config, &[("DEMO_FAIL_HANDSHAKE", "1")]).await;

    // Pending delay seen in /healthz, by the number of restarts done at that moment.
    let seen: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let last = wait_until("restart_limit_exceeded", DEADLINE, || {
        let seen = seen.clone();
        let proxy = &proxy;
        async move {
            let h = health(proxy).await;
            let w = &h["worker"];
            let backoff = w["backoff_ms"].as_u64().unwrap_or(0);
            if backoff > 0 {
                let restarts = w["restarts"].as_u64().unwrap_or(u64::MAX);
                seen.lock().unwrap().insert(restarts, backoff);
            }
            (w["state"] == "restart_limit_exceeded").then_some(h)
        }
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, BTreeMap::from([(0, 400), (1, 800), (2, 800)]));

    let w = &last["worker"];
    assert_eq!(w["restarts"], 3);
    assert_eq!(w["ready"], false);
    assert_eq!(w["backoff_ms"], 0);
    assert!(
        w["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("handshake failed")),
        "{w}"
    );
    let (status, body) = json_of(post(&proxy, &chat("hello?", false), &[]).await).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "worker_not_ready");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("restart_limit_exceeded")));
    let (status, _) = get_json(&proxy, "/livez").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn client_disconnect_interrupts_the_turn_and_frees_the_stream_slot() {
    let config = "[streams]\nmax_concurrency = 1\n[worker]\nmax_concurrency = 1\n";
    let proxy = Proxy::start(config, &[("DEMO_DELTA_DELAY_MS", "50")]).await;
    proxy.wait_ready().await;

    let client = http();
    let mut response = client
        .post(proxy.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(chat(&"word ".repeat(200), true).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Wait for real content, so the turn is under way in the worker.
    let mut received = String::new();
    while !received.contains("Echo") {
        let chunk = response.chunk().await.unwrap().expect("stream ended early");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(health(&proxy).await["streams"]["active"], 1);
    drop(response);
    drop(client);

    wait_health(&proxy, "the slot to free", |h| {
        h["streams"]["active"] == 0 && h["worker"]["in_flight"] == 0
    })
    .await;
    wait_until("the worker to see turn/interrupt", DEADLINE, || async {
        proxy
            .logs()
            .contains("demo-worker: turn ")
            .then(|| proxy.logs().contains(" interrupted after "))
            .filter(|seen| *seen)
    })
    .await;
    // The freed slot takes a new stream, which runs to the end.
    let events = stream_events(&proxy, "next", &[]).await;
    assert_eq!(contents(&events).concat(), "Echo: user: next");
}

#[tokio::test]
async fn a_complete_tool_block_is_held_and_emitted_once() {
    let proxy = Proxy::start("", &[("DEMO_TOOL_BLOCKS", "1")]).await;
    proxy.wait_ready().await;
    let block = "<use_tool name=\"note\"><text>demo</text></use_tool>";

    // Text mode: the block arrives in pieces like everything else.
    let plain = contents(&stream_events(&proxy, "t", &[]).await);
    assert!(plain.iter().all(|c| !c.contains(block)), "{plain:?}");

    let held =
        contents(&stream_events(&proxy, "t", &[("x-proxy-output-mode", "obsidian-xml")]).await);
    assert_eq!(held.concat(), plain.concat());
    let with_tag: Vec<&String> = held.iter().filter(|c| c.contains("use_tool")).collect();
    assert_eq!(with_tag.len(), 1, "{held:?}");
    assert!(with_tag[0].contains(block), "{held:?}");
}

#[tokio::test]
async fn a_nested_opener_flushes_the_held_text_verbatim() {
    let proxy = Proxy::start("", &[("DEMO_TOOL_BLOCKS", "nested")]).await;
    proxy.wait_ready().await;
    let plain = contents(&stream_events(&proxy, "t", &[]).await).concat();
    let held =
        contents(&stream_events(&proxy, "t", &[("x-proxy-output-mode", "obsidian-xml")]).await);
    assert_eq!(held.concat(), plain, "nothing lost or rewritten");
    // The outer opener's text goes out as one piece when the inner opener shows up,
    // and the inner block then closes whole.
    assert!(
        held.contains(&"<use_tool name=\"outer\">first ".to_string()),
        "{held:?}"
    );
    assert!(
        held.iter()
            .any(|c| c.starts_with("<use_tool name=\"inner\">second</use_tool>")),
        "{held:?}"
    );
}

#[tokio::test]
async fn an_unterminated_block_is_flushed_at_the_end_of_the_turn() {
    let proxy = Proxy::start("", &[("DEMO_TOOL_BLOCKS", "unterminated")]).await;
    proxy.wait_ready().await;
    let mode = [("x-proxy-output-mode", "obsidian-xml")];
    let held = contents(&stream_events(&proxy, "t", &mode).await);
    assert_eq!(
        held.last().map(String::as_str),
        Some("<use_tool name=\"open\">never closed")
    );
    // Non-streaming requests go through the same buffer and lose nothing either.
    let (status, body) = json_of(post(&proxy, &chat("t", false), &mode).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["choices"][0]["message"]["content"], held.concat());
}

#[tokio::test]
async fn maintenance_toggles_at_runtime_and_health_routes_keep_answering() {
    let proxy = Proxy::start("[server]\nadmin_token = \"adm1n\"\n", &[]).await;
    proxy.wait_ready().await;
    let toggle = |enabled: bool, token: Option<&'static str>| {
        let mut request = http()
            .post(proxy.url("/internal/maintenance"))
            .header("content-type", "application/json")
            .body(json!({ "enabled": enabled }).to_string());
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    let (status, _) = json_of(toggle(true, None).await.unwrap()).await;
    assert_eq!(status, 401, "the admin token is required");
    let (status, _) = json_of(toggle(true, Some("wrong")).await.unwrap()).await;
    assert_eq!(status, 401);
    let (status, body) = json_of(toggle(true, Some("adm1n")).await.unwrap()).await;
    assert_eq!((status, &body["maintenance"]), (200, &json!(true)));

    let response = post(&proxy, &chat("hi", false), &[]).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "120");
    let (_, body) = json_of(response).await;
    assert_eq!(body["error"]["code"], "maintenance");
    let (status, _) = get_json(&proxy, "/v1/models").await;
    assert_eq!(status, 503);
    assert_eq!(health(&proxy).await["maintenance"], true);
    assert_eq!(get_json(&proxy, "/readyz").await.0, 200);
    assert_eq!(get_json(&proxy, "/livez").await.0, 200);

    let (status, _) = json_of(toggle(false, Some("adm1n")).await.unwrap()).await;
    assert_eq!(status, 200);
    let (status, _) = json_of(post(&proxy, &chat("hi", false), &[]).await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn maintenance_from_the_environment_and_loopback_toggle_without_token() {
    let config = "[maintenance]\nretry_after_secs = 7\n";
    let proxy = Proxy::start(config, &[("PROXY_MAINTENANCE_MODE", "1")]).await;
    proxy.wait_ready().await;
    let response = post(&proxy, &chat("hi", false), &[]).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    // No admin token: a loopback caller may switch it off.
    let off = http()
        .post(proxy.url("/internal/maintenance"))
        .header("content-type", "application/json")
        .body(r#"{"enabled": false}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(off.status(), 200);
    let (status, _) = json_of(post(&proxy, &chat("hi", false), &[]).await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_failed_turn_is_502_or_an_sse_error_then_done() {
    let proxy = Proxy::start("", &[("DEMO_TURN_FAIL", "1")]).await;
    proxy.wait_ready().await;
    let (status, body) = json_of(post(&proxy, &chat("fail", false), &[]).await).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "worker_error");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("DEMO_TURN_FAIL")));

    let events = stream_events(&proxy, "fail", &[]).await;
    let data: Vec<&String> = events
        .iter()
        .filter_map(|e| match e {
            Sse::Data(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(data.last().map(|d| d.as_str()), Some("[DONE]"));
    let error: Value = serde_json::from_str(data[data.len() - 2]).unwrap();
    assert_eq!(error["error"]["code"], "worker_error");
}

#[tokio::test]
async fn bad_input_gets_4xx_json_and_the_worker_keeps_serving() {
    let proxy = Proxy::start("[server]\nmax_body_bytes = \"1KiB\"\n", &[]).await;
    proxy.wait_ready().await;
    let raw = |body: String, content_type: &'static str| {
        http()
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let cases = [
        (
            raw("{\"messages\": [".into(), "application/json"),
            400,
            "invalid_json",
        ),
        (
            raw("{\"model\": \"m\"}".into(), "application/json"),
            400,
            "invalid_request",
        ),
        (
            raw("{\"messages\": []}".into(), "application/json"),
            400,
            "missing_messages",
        ),
        (
            raw(chat("x", false).to_string(), "text/plain"),
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                chat(&"x".repeat(2048), false).to_string(),
                "application/json",
            ),
            413,
            "request_too_large",
        ),
    ];
    for (request, status, code) in cases {
        let (got, body) = json_of(request.await.unwrap()).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}"
        );
    }
    let (status, body) = get_json(&proxy, "/v1/chat/completions").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    let (status, body) = get_json(&proxy, "/no/such/route?secret=1").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("unknown_url"))
    );

    let (status, _) = json_of(post(&proxy, &chat("still here", false), &[]).await).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_api_key_guards_v1_but_not_the_health_routes() {
    let proxy = Proxy::start("", &[("PROXY_API_KEY", "sk-test")]).await;
    proxy.wait_ready().await;
    let (status, body) = get_json(&proxy, "/v1/models").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let ok = http()
        .get(proxy.url("/v1/models"))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let (status, _) = json_of(
        post(
            &proxy,
            &chat("hi", false),
            &[("authorization", "Bearer sk-test")],
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(get_json(&proxy, "/healthz").await.0, 200);
    assert!(
        !proxy.logs().contains("sk-test"),
        "the key must not be logged"
    );
}

#[tokio::test]
async fn a_slow_non_streamed_turn_times_out_with_504_and_is_interrupted() {
    let config = "[server]\nrequest_timeout = \"300ms\"\n";
    let proxy = Proxy::start(config, &[("DEMO_DELTA_DELAY_MS", "100")]).await;
    proxy.wait_ready().await;
    let (status, body) = json_of(post(&proxy, &chat(&"word ".repeat(100), false), &[]).await).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "timeout");
    wait_health(&proxy, "the turn's slot to free", |h| {
        h["worker"]["in_flight"] == 0
    })
    .await;
    wait_until("the worker to see turn/interrupt", DEADLINE, || async {
        proxy.logs().contains(" interrupted after ").then_some(())
    })
    .await;
}

#[tokio::test]
async fn sigterm_ends_open_streams_stops_the_worker_and_exits_cleanly() {
    let config = "[worker]\nshutdown_grace_ms = 5000\n";
    let mut proxy = Proxy::start(config, &[("DEMO_DELTA_DELAY_MS", "100")]).await;
    proxy.wait_ready().await;
    let open = post(&proxy, &chat(&"word ".repeat(100), true), &[]).await;
    assert_eq!(open.status(), 200);
    proxy.proc.signal(Signal::TERM);
    // The stream is not cut: it ends with an error event and [DONE].
    let events = parse_sse(&open.text().await.expect("stream body"));
    assert_eq!(events.last(), Some(&Sse::Data("[DONE]".into())));
    let status = proxy.proc.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status:?}\n{}", proxy.logs());
    let logs = proxy.logs();
    assert!(logs.contains("worker exited"), "{logs}");
}

#[test]
fn bad_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    /// TOML, environment, and the key or variable the error must name.
    type Case = (
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: [Case; 6] = [
        ("[server]\nlisen = \"x\"\n", &[], "server.lisen"),
        ("[streams]\non_full = \"drop\"\n", &[], "streams.on_full"),
        ("", &[("PROXY_SSE_ON_FULL", "wait")], "PROXY_SSE_ON_FULL"),
        ("[server]\nlisten = \"nowhere\"\n", &[], "server.listen"),
        (
            "[server]\nrequest_timeout = \"5 parsecs\"\n",
            &[],
            "server.request_timeout",
        ),
        (
            "",
            &[("WORKER_BACKOFF_INITIAL_MS", "soon")],
            "WORKER_BACKOFF_INITIAL_MS",
        ),
    ];
    for (i, (toml, env, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, toml).unwrap();
        for command in ["check-config", "serve"] {
            let out = std::process::Command::new(PROXY_BIN)
                .arg(command)
                .arg("--config")
                .arg(&path)
                .envs(env.iter().copied())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{command} {toml:?}: {stderr}");
            assert!(stderr.contains(key), "{command} {toml:?}: {stderr}");
        }
    }
}
