//! `codex-proxy demo-worker`: a deterministic stand-in for `codex app-server` that speaks
//! the subset the proxy uses (design.md §6), so the proxy runs and is tested with no Codex
//! installed. It echoes the prompt back in small deltas (small enough that tags split
//! across deltas), and its test knobs come from the environment:
//!
//! | variable | effect |
//! |---|---|
//! | `DEMO_DELTA_DELAY_MS` | sleep this long before each delta |
//! | `DEMO_CRASH_AFTER_TURNS` | exit with status 1 after this many completed turns |
//! | `DEMO_FAIL_HANDSHAKE` | `1`: exit before answering `initialize` |
//! | `DEMO_TOOL_BLOCKS` | `1`: a complete `<use_tool>` block; `nested`: an opener inside an open block; `unterminated`: an opener never closed |
//! | `DEMO_TURN_FAIL` | `1`: every turn ends with an `error` and status `failed`; `usage_limit` / `rate_limit`: the same, its `codexErrorInfo` `usageLimitExceeded` / `rateLimitExceeded` |
//! | `DEMO_FIRST_DELTA_DELAY_MS` | sleep this long before the first delta (instead of `DEMO_DELTA_DELAY_MS`) |
//! | `DEMO_USAGE` | the usage every turn reports: `input=11,cached_input=3,cache_write_input=0,output=7,reasoning_output=2` (missing kinds are 0), or `none` for no usage report; unset: input = the prompt's words, output = the deltas sent |
//! | `DEMO_ITEMS` | item types each turn reports as `item/completed` before its message, e.g. `commandExecution,fileChange` (the `userMessage` and `agentMessage` items are always reported) |
//! | `DEMO_RATE_LIMITS` | after each turn, `account/rateLimits/updated` with these windows: `primary=42@1900000000,secondary=91` (used percent, `@` resets-at unix seconds; each window 300 minutes long), optionally `credits=12.5` (the credits balance) and `plan=pro` (the plan type) |
//! | `DEMO_INTERRUPT_AFTER_DELTAS` | each turn ends `interrupted` after this many deltas, as if stopped by its user |
//! | `DEMO_CRASH_AFTER_DELTAS` | exit with status 1 after this many deltas of a turn (a crash mid-turn) |
//! | `DEMO_HOLD_FILE` | a path: each turn waits before its first delta until that file exists (an interrupt still ends it), so a test holds worker slots for exactly as long as it needs, with no clock |
//! | `DEMO_DELTA_TIMESTAMPS` | `1`: each delta's text is the `CLOCK_MONOTONIC` time it was sent, in nanoseconds, then `;` (the benchmark of the proxy's own delay reads it) |
//!
//! It logs one line to stderr per interrupted turn (`demo-worker: turn <id> interrupted`),
//! which is how tests see that an interrupt reached the worker.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

/// The only model the demo worker advertises.
pub(crate) const DEMO_MODEL: &str = "codex-demo";
/// Characters per delta: small, so that `<use_tool ...>` spans several deltas.
const DELTA_CHARS: usize = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ToolBlocks {
    None,
    Complete,
    Nested,
    Unterminated,
}

/// The `DEMO_*` knobs.
#[derive(Debug, Clone)]
pub struct DemoKnobs {
    pub(crate) delta_delay: Duration,
    pub(crate) crash_after_turns: Option<u64>,
    pub(crate) fail_handshake: bool,
    pub(crate) tool_blocks: ToolBlocks,
    /// The `codexErrorInfo` every turn fails with.
    pub(crate) turn_fail: Option<&'static str>,
    pub(crate) first_delta_delay: Option<Duration>,
    /// `None`: derived from the prompt and the reply; `Some(None)`: no usage report.
    pub(crate) usage: Option<Option<Value>>,
    pub(crate) items: Vec<String>,
    pub(crate) rate_limits: Option<Value>,
    pub(crate) interrupt_after_deltas: Option<u64>,
    pub(crate) crash_after_deltas: Option<u64>,
    pub(crate) delta_timestamps: bool,
    pub(crate) hold_file: Option<std::path::PathBuf>,
}

impl DemoKnobs {
    /// Reads the knobs; a value that does not parse leaves the knob off.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> DemoKnobs {
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let on = |k: &str| get(k).is_some_and(|v| v.trim() == "1");
        DemoKnobs {
            delta_delay: Duration::from_millis(num("DEMO_DELTA_DELAY_MS").unwrap_or(0)),
            crash_after_turns: num("DEMO_CRASH_AFTER_TURNS"),
            fail_handshake: on("DEMO_FAIL_HANDSHAKE"),
            tool_blocks: match get("DEMO_TOOL_BLOCKS").as_deref().map(str::trim) {
                Some("1") => ToolBlocks::Complete,
                Some("nested") => ToolBlocks::Nested,
                Some("unterminated") => ToolBlocks::Unterminated,
                _ => ToolBlocks::None,
            },
            turn_fail: get("DEMO_TURN_FAIL").and_then(|v| match v.trim() {
                "1" => Some("other"),
                "usage_limit" => Some("usageLimitExceeded"),
                "rate_limit" => Some("rateLimitExceeded"),
                _ => None,
            }),
            first_delta_delay: num("DEMO_FIRST_DELTA_DELAY_MS").map(Duration::from_millis),
            usage: get("DEMO_USAGE").map(|v| usage_knob(&v)),
            items: get("DEMO_ITEMS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            rate_limits: get("DEMO_RATE_LIMITS").map(|v| rate_limits_knob(&v)),
            interrupt_after_deltas: num("DEMO_INTERRUPT_AFTER_DELTAS"),
            crash_after_deltas: num("DEMO_CRASH_AFTER_DELTAS"),
            delta_timestamps: on("DEMO_DELTA_TIMESTAMPS"),
            hold_file: get("DEMO_HOLD_FILE")
                .filter(|v| !v.trim().is_empty())
                .map(std::path::PathBuf::from),
        }
    }
}

/// `DEMO_USAGE` as a `TokenUsageBreakdown`; `none` gives `None`.
fn usage_knob(value: &str) -> Option<Value> {
    if value.trim() == "none" {
        return None;
    }
    let n = |key: &str| {
        value
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (input, cached, cache_write, output, reasoning) = (
        n("input"),
        n("cached_input"),
        n("cache_write_input"),
        n("output"),
        n("reasoning_output"),
    );
    Some(json!({
        "inputTokens": input, "cachedInputTokens": cached, "cacheWriteInputTokens": cache_write,
        "outputTokens": output, "reasoningOutputTokens": reasoning,
        "totalTokens": input + output,
    }))
}

/// `DEMO_RATE_LIMITS` as the params of `account/rateLimits/updated`.
fn rate_limits_knob(value: &str) -> Value {
    let mut limits = json!({"primary": null, "secondary": null});
    for pair in value.split(',') {
        let Some((window, spec)) = pair.split_once('=') else {
            continue;
        };
        let (used, resets_at) = match spec.split_once('@') {
            Some((used, at)) => (used, at.trim().parse::<i64>().ok()),
            None => (spec, None),
        };
        let Ok(used) = used.trim().parse::<i64>() else {
            continue;
        };
        limits[window.trim()] =
            json!({"usedPercent": used, "resetsAt": resets_at, "windowDurationMins": 300});
    }
    if let Some(balance) = value
        .split(',')
        .find_map(|p| p.trim().strip_prefix("credits="))
    {
        limits["credits"] =
            json!({"hasCredits": true, "unlimited": false, "balance": balance.trim()});
    }
    if let Some(plan) = value
        .split(',')
        .find_map(|p| p.trim().strip_prefix("plan="))
    {
        limits["planType"] = json!(plan.trim());
    }
    json!({"rateLimits": limits})
}

/// The full reply to `prompt`; what the deltas add up to.
pub(crate) fn reply_text(prompt: &str, tool_blocks: ToolBlocks) -> String {
    let echo = format!("Echo: {prompt}");
    match tool_blocks {
        ToolBlocks::None => echo,
        ToolBlocks::Complete => {
            format!("{echo}\n<use_tool name=\"note\"><text>demo</text></use_tool>\nDone.")
        }
        ToolBlocks::Nested => format!(
            "{echo}\n<use_tool name=\"outer\">first <use_tool name=\"inner\">second</use_tool>\nDone."
        ),
        ToolBlocks::Unterminated => format!("{echo}\n<use_tool name=\"open\">never closed"),
    }
}

/// Splits `text` into deltas of at most `DELTA_CHARS` characters.
pub(crate) fn deltas(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(DELTA_CHARS)
        .map(|c| c.iter().collect())
        .collect()
}

enum Out {
    Line(Value),
    /// Flush everything before it, then end with this exit code.
    Exit(i32),
}

struct State {
    knobs: DemoKnobs,
    out: mpsc::UnboundedSender<Out>,
    next_id: AtomicU64,
    completed_turns: AtomicU64,
    /// Interrupt switches of the running turns, by turn id.
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
}

/// Serves one app-server session on `input`/`output`; returns the process exit code.
pub async fn run<R, W>(input: R, output: W, knobs: DemoKnobs) -> i32
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (out, out_rx) = mpsc::unbounded_channel();
    let mut writer = tokio::spawn(write_loop(output, out_rx));
    let state = Arc::new(State {
        knobs,
        out,
        next_id: AtomicU64::new(1),
        completed_turns: AtomicU64::new(0),
        running: Mutex::new(HashMap::new()),
    });
    let mut lines = BufReader::new(input).lines();
    loop {
        tokio::select! {
            code = &mut writer => return code.unwrap_or(1),
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    if let Some(code) = handle_line(&state, &line) {
                        let _ = state.out.send(Out::Exit(code));
                        return writer.await.unwrap_or(1);
                    }
                }
                // EOF on stdin: the proxy is shutting us down.
                _ => {
                    let _ = state.out.send(Out::Exit(0));
                    return writer.await.unwrap_or(1);
                }
            },
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut output: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
) -> i32 {
    while let Some(msg) = rx.recv().await {
        match msg {
            Out::Line(v) => {
                let line = format!("{v}\n");
                if output.write_all(line.as_bytes()).await.is_err() || output.flush().await.is_err()
                {
                    return 1;
                }
            }
            Out::Exit(code) => {
                let _ = output.flush().await;
                return code;
            }
        }
    }
    0
}

/// Handles one line; `Some(code)` ends the session.
fn handle_line(state: &Arc<State>, line: &str) -> Option<i32> {
    let Ok(msg) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
    let Some(id) = msg.get("id").cloned() else {
        return None; // notifications (`initialized`) and responses need no answer
    };
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    let result = match method {
        "initialize" if state.knobs.fail_handshake => return Some(1),
        "initialize" => json!({
            "userAgent": format!("codex-proxy-demo/{}", env!("CARGO_PKG_VERSION")),
            "codexHome": "",
            "platformFamily": std::env::consts::FAMILY,
            "platformOs": std::env::consts::OS,
        }),
        "model/list" => json!({
            "data": [{"id": DEMO_MODEL, "model": DEMO_MODEL, "displayName": "Demo echo",
                      "hidden": false, "isDefault": true}],
            "nextCursor": null,
        }),
        "thread/start" => {
            let n = state.next_id.fetch_add(1, Ordering::Relaxed);
            let model = params
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(DEMO_MODEL);
            json!({"thread": {"id": format!("thr_{n}")}, "model": model})
        }
        "turn/start" => {
            let n = state.next_id.fetch_add(1, Ordering::Relaxed);
            let turn_id = format!("turn_{n}");
            let thread_id = params
                .get("threadId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let prompt = params
                .pointer("/input/0/text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let (interrupt, interrupted) = watch::channel(false);
            lock(&state.running).insert(turn_id.clone(), interrupt);
            // The answer goes out before the first notification of the turn.
            respond(
                state,
                id,
                json!({"turn": {"id": turn_id, "status": "inProgress"}}),
            );
            tokio::spawn(run_turn(
                state.clone(),
                thread_id,
                turn_id,
                prompt,
                interrupted,
            ));
            return None;
        }
        "turn/interrupt" => {
            let turn_id = params.get("turnId").and_then(Value::as_str).unwrap_or("");
            if let Some(switch) = lock(&state.running).get(turn_id) {
                switch.send_replace(true);
            }
            json!({})
        }
        _ => {
            let error =
                json!({"code": -32601, "message": format!("demo-worker: no method `{method}`")});
            let _ = state.out.send(Out::Line(
                json!({"jsonrpc": "2.0", "id": id, "error": error}),
            ));
            return None;
        }
    };
    respond(state, id, result);
    None
}

fn respond(state: &State, id: Value, result: Value) {
    let _ = state.out.send(Out::Line(
        json!({"jsonrpc": "2.0", "id": id, "result": result}),
    ));
}

fn notify(state: &State, method: &str, params: Value) {
    let _ = state.out.send(Out::Line(
        json!({"jsonrpc": "2.0", "method": method, "params": params}),
    ));
}

async fn run_turn(
    state: Arc<State>,
    thread_id: String,
    turn_id: String,
    prompt: String,
    mut interrupted: watch::Receiver<bool>,
) {
    let ids = json!({"threadId": thread_id, "turnId": turn_id});
    let with_ids = |mut v: Value| {
        v["threadId"] = ids["threadId"].clone();
        v["turnId"] = ids["turnId"].clone();
        v
    };
    let complete = |status: &str, error: Value| {
        notify(
            &state,
            "turn/completed",
            json!({"threadId": thread_id, "turn": {"id": turn_id, "status": status, "items": [], "error": error}}),
        );
    };

    if let Some(info) = state.knobs.turn_fail {
        let error =
            json!({"message": "demo-worker: turn failed (DEMO_TURN_FAIL)", "codexErrorInfo": info});
        notify(
            &state,
            "error",
            with_ids(json!({"error": error, "willRetry": false})),
        );
        complete("failed", error);
    } else {
        let item = |kind: &str, n: usize| {
            notify(
                &state,
                "item/completed",
                with_ids(
                    json!({"item": {"type": kind, "id": format!("item_{n}")}, "completedAtMs": 0}),
                ),
            );
        };
        item("userMessage", 0);
        for (n, kind) in state.knobs.items.iter().enumerate() {
            item(kind, n + 1);
        }
        let pieces = deltas(&reply_text(&prompt, state.knobs.tool_blocks));
        if let Some(hold) = &state.knobs.hold_file {
            while !hold.exists() && !*interrupted.borrow() {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = interrupted.wait_for(|i| *i) => {}
                }
            }
        }
        let mut sent = 0u64;
        let mut stopped = false;
        let mut ended_by_user = false;
        for piece in &pieces {
            let delay = match (sent, state.knobs.first_delta_delay) {
                (0, Some(first)) => first,
                _ => state.knobs.delta_delay,
            };
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = interrupted.wait_for(|i| *i) => {}
                }
            }
            if *interrupted.borrow() {
                stopped = true;
                break;
            }
            if state.knobs.interrupt_after_deltas == Some(sent) {
                ended_by_user = true;
                break;
            }
            let delta = if state.knobs.delta_timestamps {
                format!("{};", super::monotonic_nanos())
            } else {
                piece.clone()
            };
            notify(
                &state,
                "item/agentMessage/delta",
                with_ids(json!({"itemId": "msg_1", "delta": delta})),
            );
            sent += 1;
            if state.knobs.crash_after_deltas == Some(sent) {
                eprintln!("demo-worker: crashing mid-turn (DEMO_CRASH_AFTER_DELTAS)");
                let _ = state.out.send(Out::Exit(1));
                return;
            }
        }
        if !stopped && !ended_by_user {
            item("agentMessage", state.knobs.items.len() + 1);
        }
        let input = prompt.split_whitespace().count() as u64;
        let usage = match &state.knobs.usage {
            None => Some(
                json!({"inputTokens": input, "outputTokens": sent, "totalTokens": input + sent,
                                "cachedInputTokens": 0, "reasoningOutputTokens": 0}),
            ),
            Some(fixed) => fixed.clone(),
        };
        if let Some(usage) = usage {
            notify(
                &state,
                "thread/tokenUsage/updated",
                with_ids(json!({"tokenUsage": {"last": usage, "total": usage}})),
            );
        }
        if let Some(limits) = &state.knobs.rate_limits {
            notify(&state, "account/rateLimits/updated", limits.clone());
        }
        if ended_by_user {
            complete("interrupted", Value::Null);
        } else if stopped {
            eprintln!("demo-worker: turn {turn_id} interrupted after {sent} deltas");
            complete("interrupted", Value::Null);
        } else {
            complete("completed", Value::Null);
        }
    }
    lock(&state.running).remove(&turn_id);

    let done = state.completed_turns.fetch_add(1, Ordering::SeqCst) + 1;
    if state.knobs.crash_after_turns == Some(done) {
        eprintln!("demo-worker: crashing after {done} turns (DEMO_CRASH_AFTER_TURNS)");
        let _ = state.out.send(Out::Exit(1));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::rpc::Rpc;
    use crate::worker::turn::{TurnEvent, TurnStatus};
    use tokio::io::duplex;

    fn knobs(env: &[(&str, &str)]) -> DemoKnobs {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        DemoKnobs::from_env(|k| env.get(k).cloned())
    }

    /// A transport talking to an in-process demo worker; the join handle yields its exit code.
    fn session(k: DemoKnobs) -> (Rpc, tokio::task::JoinHandle<i32>) {
        let (proxy_out, demo_in) = duplex(1 << 16);
        let (demo_out, proxy_in) = duplex(1 << 16);
        let demo = tokio::spawn(run(demo_in, demo_out, k));
        (Rpc::start(proxy_in, proxy_out), demo)
    }

    /// Handshake, thread and turn by hand; returns the turn and its thread id.
    async fn start_turn(t: &Rpc, prompt: &str) -> (crate::worker::turn::Turn, String) {
        t.request("initialize", json!({})).await.unwrap();
        let thread = t.request("thread/start", json!({})).await.unwrap();
        let thread_id = thread["thread"]["id"].as_str().unwrap().to_string();
        let sub = t.subscribe_thread(&thread_id);
        let turn = t
            .request(
                "turn/start",
                json!({"threadId": thread_id, "input": [{"type": "text", "text": prompt}]}),
            )
            .await
            .unwrap();
        let slot = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let turn_id = turn["turn"]["id"].as_str().unwrap().to_string();
        (
            crate::worker::turn::Turn::new(sub, turn_id, None, slot),
            thread_id,
        )
    }

    async fn collect(turn: &mut crate::worker::turn::Turn) -> (String, Vec<TurnEvent>) {
        let mut text = String::new();
        let mut events = Vec::new();
        while let Some(e) = turn.next_event().await {
            if let TurnEvent::Delta(d) = &e {
                text.push_str(d);
            }
            events.push(e);
        }
        (text, events)
    }

    #[tokio::test]
    async fn a_turn_echoes_the_prompt_in_several_deltas_then_usage_and_completion() {
        let (t, _demo) = session(knobs(&[]));
        let (mut turn, _) = start_turn(&t, "hello there").await;
        let (text, events) = collect(&mut turn).await;
        assert_eq!(text, "Echo: hello there");
        let deltas = events
            .iter()
            .filter(|e| matches!(e, TurnEvent::Delta(_)))
            .count();
        assert!(deltas > 1);
        assert!(events.contains(&TurnEvent::Usage(crate::worker::Usage {
            input: 2,
            output: deltas as u64,
            total: 2 + deltas as u64,
            ..Default::default()
        })));
        assert!(events.contains(&TurnEvent::Item("agentMessage".into())));
        assert_eq!(
            events.last(),
            Some(&TurnEvent::Completed {
                status: TurnStatus::Completed,
                error: None,
                limit: None
            })
        );
    }

    #[tokio::test]
    async fn usage_items_and_rate_limit_knobs_are_reported_as_set() {
        let (t, _demo) = session(knobs(&[
            (
                "DEMO_USAGE",
                "input=11,cached_input=3,output=7,reasoning_output=2",
            ),
            ("DEMO_ITEMS", "commandExecution,fileChange"),
            ("DEMO_RATE_LIMITS", "primary=42@1900000000,secondary=91"),
        ]));
        let mut account = t.subscribe_account();
        let (mut turn, _) = start_turn(&t, "hi").await;
        let (_, events) = collect(&mut turn).await;
        let usage = crate::worker::Usage {
            input: 11,
            cached_input: 3,
            cache_write_input: 0,
            output: 7,
            reasoning_output: 2,
            total: 18,
        };
        assert!(events.contains(&TurnEvent::Usage(usage)), "{events:?}");
        let items: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                TurnEvent::Item(k) => Some(k.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(
            items,
            [
                "userMessage",
                "commandExecution",
                "fileChange",
                "agentMessage"
            ]
        );
        let report = account.recv().await.unwrap();
        assert_eq!(report.method, "account/rateLimits/updated");
        let mut limits = crate::worker::RateLimits::default();
        assert!(limits.merge(&report.params));
        assert_eq!(limits.primary.unwrap().resets_at, Some(1_900_000_000));
        assert_eq!(limits.secondary.unwrap().used_percent, Some(91.0));
    }

    #[tokio::test]
    async fn usage_none_reports_no_usage_and_interrupt_after_deltas_ends_interrupted() {
        let (t, _demo) = session(knobs(&[
            ("DEMO_USAGE", "none"),
            ("DEMO_INTERRUPT_AFTER_DELTAS", "1"),
        ]));
        let (mut turn, _) = start_turn(&t, "a longer prompt than six characters").await;
        let (text, events) = collect(&mut turn).await;
        assert_eq!(text.chars().count(), DELTA_CHARS);
        assert!(!events.iter().any(|e| matches!(e, TurnEvent::Usage(_))));
        assert!(matches!(
            events.last(),
            Some(TurnEvent::Completed {
                status: TurnStatus::Interrupted,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn crash_after_deltas_loses_the_worker_mid_turn() {
        let (t, demo) = session(knobs(&[("DEMO_CRASH_AFTER_DELTAS", "2")]));
        let (mut turn, _) = start_turn(&t, "a longer prompt than twelve characters").await;
        let (text, events) = collect(&mut turn).await;
        assert_eq!(text.chars().count(), 2 * DELTA_CHARS);
        assert!(matches!(
            events.last(),
            Some(TurnEvent::Completed {
                status: TurnStatus::WorkerLost,
                ..
            })
        ));
        assert_eq!(demo.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn dropping_a_turn_interrupts_it_in_the_worker() {
        let (t, _demo) = session(knobs(&[("DEMO_DELTA_DELAY_MS", "20")]));
        let (mut turn, thread) = start_turn(&t, &"word ".repeat(200)).await;
        loop {
            match turn.next_event().await {
                Some(TurnEvent::Delta(_)) => break,
                Some(TurnEvent::Item(_)) => {}
                other => panic!("expected a delta, got {other:?}"),
            }
        }
        drop(turn);
        // Watch the thread from outside (no await since the drop: nothing is missed).
        let mut watcher = t.subscribe_thread(&thread);
        loop {
            let n = watcher
                .recv()
                .await
                .expect("the worker should end the turn");
            if n.method == "turn/completed" {
                assert_eq!(n.params["turn"]["status"], "interrupted");
                break;
            }
        }
    }

    #[tokio::test]
    async fn turn_fail_sends_an_error_and_a_failed_completion() {
        let (t, _demo) = session(knobs(&[("DEMO_TURN_FAIL", "1")]));
        let (mut turn, _) = start_turn(&t, "x").await;
        let (_, events) = collect(&mut turn).await;
        assert!(matches!(events[0], TurnEvent::Error(_)));
        assert!(matches!(
            events.last(),
            Some(TurnEvent::Completed {
                status: TurnStatus::Failed,
                error: Some(_),
                limit: None
            })
        ));
    }

    #[tokio::test]
    async fn crash_after_turns_exits_1_after_reporting_the_turn() {
        let (t, demo) = session(knobs(&[("DEMO_CRASH_AFTER_TURNS", "1")]));
        let (mut turn, _) = start_turn(&t, "bye").await;
        let (text, events) = collect(&mut turn).await;
        assert_eq!(text, "Echo: bye");
        assert!(matches!(
            events.last(),
            Some(TurnEvent::Completed {
                status: TurnStatus::Completed,
                ..
            })
        ));
        assert_eq!(demo.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn fail_handshake_exits_before_answering_initialize() {
        let (t, demo) = session(knobs(&[("DEMO_FAIL_HANDSHAKE", "1")]));
        assert!(t.request("initialize", json!({})).await.is_err());
        assert_eq!(demo.await.unwrap(), 1);
    }

    #[test]
    fn tool_block_replies_hold_their_tags_and_split_them_across_deltas() {
        let complete = reply_text("p", ToolBlocks::Complete);
        assert_eq!(complete.matches("<use_tool").count(), 1);
        assert_eq!(complete.matches("</use_tool>").count(), 1);
        assert!(deltas(&complete).iter().all(|d| !d.contains("<use_tool")));
        let nested = reply_text("p", ToolBlocks::Nested);
        assert_eq!(nested.matches("<use_tool").count(), 2);
        assert_eq!(nested.matches("</use_tool>").count(), 1);
        let open = reply_text("p", ToolBlocks::Unterminated);
        assert_eq!(open.matches("</use_tool>").count(), 0);
        assert_eq!(deltas("héllo wörld").concat(), "héllo wörld");
    }
}
