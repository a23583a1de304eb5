//! One running turn: the worker's notifications for its thread, translated into the few
//! events the proxy needs. Dropping an unfinished turn sends `turn/interrupt`, which is
//! how a client that goes away stops the work and frees its slot.

use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::OwnedSemaphorePermit;

use super::rpc::{Notification, ThreadSubscription};

/// How a turn ended, as the worker reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TurnStatus {
    Completed,
    Failed,
    Interrupted,
    /// The worker exited or closed its output before reporting the turn's end.
    WorkerLost,
}

/// Token counts of a turn, as the app-server reports them (`TokenUsageBreakdown`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub(crate) input: u64,
    pub(crate) cached_input: u64,
    pub(crate) cache_write_input: u64,
    pub(crate) output: u64,
    pub(crate) reasoning_output: u64,
    pub(crate) total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TurnEvent {
    /// A piece of the assistant's reply.
    Delta(String),
    /// Token counts of the turn so far (each report replaces the previous one).
    Usage(Usage),
    /// An item the turn finished (`item/completed`), by its app-server type
    /// (`agentMessage`, `commandExecution`, ...).
    Item(String),
    /// The worker reported an error it will not retry.
    Error(String),
    /// The last event of every turn.
    Completed {
        status: TurnStatus,
        error: Option<String>,
        /// The turn was refused because an account limit was reached (its error's
        /// `codexErrorInfo`).
        limit: Option<LimitReached>,
    },
}

/// Which account limit refused a turn, from `codexErrorInfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitReached {
    /// `usageLimitExceeded`: the plan's usage limit (a rate-limit window is full).
    Usage,
    /// `rateLimitExceeded`: the model provider's rate limit.
    Rate,
}

impl LimitReached {
    pub const ALL: [LimitReached; 2] = [LimitReached::Usage, LimitReached::Rate];

    pub fn as_str(self) -> &'static str {
        match self {
            LimitReached::Usage => "usage_limit",
            LimitReached::Rate => "rate_limit",
        }
    }

    fn from_error(error: &Value) -> Option<LimitReached> {
        match error.get("codexErrorInfo").and_then(Value::as_str)? {
            "usageLimitExceeded" => Some(LimitReached::Usage),
            "rateLimitExceeded" => Some(LimitReached::Rate),
            _ => None,
        }
    }
}

pub(crate) struct Turn {
    subscription: ThreadSubscription,
    turn_id: String,
    model: Option<String>,
    finished: bool,
    /// When the proxy read the worker line of the last event returned (delta-latency
    /// trace only).
    received: Option<Instant>,
    /// Held for the turn's life: the per-worker concurrency cap.
    _slot: OwnedSemaphorePermit,
}

impl Turn {
    pub(crate) fn new(
        subscription: ThreadSubscription,
        turn_id: String,
        model: Option<String>,
        slot: OwnedSemaphorePermit,
    ) -> Turn {
        Turn {
            subscription,
            turn_id,
            model,
            finished: false,
            received: None,
            _slot: slot,
        }
    }

    /// The model the worker chose for the thread, when it said.
    pub(crate) fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// When the proxy read the worker's line of the event `next_event` returned last;
    /// `None` unless the delta-latency trace is on ([`super::DELTA_LATENCY_TARGET`]).
    pub(crate) fn received(&self) -> Option<Instant> {
        self.received
    }

    /// The next event; `None` after `Completed`. A worker that dies mid-turn yields a
    /// `Completed { status: WorkerLost }` so every turn has an end.
    pub(crate) async fn next_event(&mut self) -> Option<TurnEvent> {
        while !self.finished {
            let Some(n) = self.subscription.recv().await else {
                self.finished = true;
                self.received = None;
                return Some(TurnEvent::Completed {
                    status: TurnStatus::WorkerLost,
                    error: Some("the worker exited during the turn".to_string()),
                    limit: None,
                });
            };
            if let Some(event) = self.translate(&n) {
                self.received = n.received;
                if matches!(event, TurnEvent::Completed { .. }) {
                    self.finished = true;
                }
                return Some(event);
            }
        }
        None
    }

    fn translate(&self, n: &Notification) -> Option<TurnEvent> {
        let p = &n.params;
        // One turn per thread, but be strict anyway: a stray turn id is not ours.
        let turn_id = p
            .get("turnId")
            .or_else(|| p.pointer("/turn/id"))
            .and_then(Value::as_str);
        if turn_id.is_some_and(|id| id != self.turn_id) {
            return None;
        }
        match n.method.as_str() {
            "item/agentMessage/delta" => {
                let delta = p.get("delta").and_then(Value::as_str)?;
                Some(TurnEvent::Delta(delta.to_string()))
            }
            "thread/tokenUsage/updated" => {
                // `total` covers every model call of the thread, and the thread (a fresh
                // ephemeral one per request) holds only this turn: its latest value is the
                // whole turn however many model calls it made, and a report repeated for
                // the same call changes nothing. `last` is only the latest call.
                let usage = p
                    .pointer("/tokenUsage/total")
                    .or_else(|| p.pointer("/tokenUsage/last"))?;
                let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
                Some(TurnEvent::Usage(Usage {
                    input: n("inputTokens"),
                    cached_input: n("cachedInputTokens"),
                    cache_write_input: n("cacheWriteInputTokens"),
                    output: n("outputTokens"),
                    reasoning_output: n("reasoningOutputTokens"),
                    total: n("totalTokens"),
                }))
            }
            "item/completed" => {
                let kind = p.pointer("/item/type").and_then(Value::as_str)?;
                Some(TurnEvent::Item(kind.to_string()))
            }
            "error" if p.get("willRetry").and_then(Value::as_bool) != Some(true) => {
                Some(TurnEvent::Error(error_message(p.get("error"))))
            }
            "turn/completed" => {
                let status = match p.pointer("/turn/status").and_then(Value::as_str) {
                    Some("completed") => TurnStatus::Completed,
                    Some("interrupted") => TurnStatus::Interrupted,
                    _ => TurnStatus::Failed,
                };
                let turn_error = p.pointer("/turn/error").filter(|e| !e.is_null());
                let error = turn_error.map(|e| error_message(Some(e)));
                let limit = turn_error.and_then(LimitReached::from_error);
                Some(TurnEvent::Completed {
                    status,
                    error,
                    limit,
                })
            }
            _ => None,
        }
    }
}

fn error_message(error: Option<&Value>) -> String {
    error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("the worker reported an error")
        .to_string()
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let params = json!({"threadId": self.subscription.thread_id(), "turnId": self.turn_id});
        if self
            .subscription
            .transport()
            .request_detached("turn/interrupt", params)
            .is_ok()
        {
            tracing::debug!("turn abandoned by its client: sent turn/interrupt");
        }
    }
}
