//! The supervised app-server worker: JSON-RPC transport over stdio, the supervisor that
//! spawns, handshakes and restarts it, one turn's event stream, and the built-in demo
//! worker.
//!
//! The proxy sees only [`WorkerHandle`]: its status (also as a watch channel, so gauges
//! stay live without polling), its slots (the per-worker concurrency cap, handed out in
//! arrival order), and `start_turn`, which runs one request on a fresh ephemeral thread
//! in a slot the caller holds.

pub mod demo;
pub(crate) mod rate_limits;
pub(crate) mod rpc;
pub(crate) mod supervisor;
pub(crate) mod turn;

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::{watch, Semaphore};

pub(crate) use rate_limits::RateLimits;
use rpc::{Rpc, RpcError};
pub(crate) use supervisor::WorkerCommand;
pub use turn::LimitReached;
pub(crate) use turn::{Turn, TurnEvent, TurnStatus, Usage};

/// The tracing target of one TRACE event per streamed delta: `delta_to_sse_ns`, the time
/// from the proxy reading the delta's line off the worker's stdout to handing its SSE
/// event to hyper; `sent_at_ns`, that hand-over on [`monotonic_nanos`]'s clock; and the
/// `completion_id` the client sees. Off unless `RUST_LOG` enables it (e.g.
/// `codex_proxy::delta_latency=trace`); the benchmark of the proxy's own delay reads it
/// (docs/performance.md, "Model work").
pub(crate) const DELTA_LATENCY_TARGET: &str = "codex_proxy::delta_latency";

/// `CLOCK_MONOTONIC` in nanoseconds: one clock for every process of the machine, so
/// stamps taken by the demo worker, the proxy and a benchmark client compare.
pub(crate) fn monotonic_nanos() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

/// Where the worker is in its life; serialized in `/healthz` as snake_case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum WorkerState {
    NotStarted,
    Launching,
    HandshakePending,
    /// Handshake complete: turns are accepted.
    Ready,
    HandshakeFailed,
    Exited,
    /// Waiting `backoff_ms` before the next launch.
    Restarting,
    /// Gave up after `worker.restart_max` failed starts in a row.
    RestartLimitExceeded,
    ShuttingDown,
}

/// A snapshot of the worker, published on every change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct WorkerStatus {
    pub(crate) state: WorkerState,
    pub(crate) ready: bool,
    /// Launches after the first one, since the proxy started (cumulative).
    pub(crate) restarts: u64,
    /// Delay before the pending restart; 0 when none is pending.
    pub(crate) backoff_ms: u64,
    /// Failed starts or exits since the worker was last ready.
    pub(crate) consecutive_failures: u32,
    /// Why the worker last stopped or failed to start.
    pub(crate) last_error: Option<String>,
    /// Models the worker advertised (`model/list`), empty until known.
    pub(crate) models: Vec<String>,
    /// The account's rate limits as last reported (`account/rateLimits/updated`),
    /// kept across restarts: they belong to the account, not to one worker process.
    pub(crate) rate_limits: RateLimits,
}

impl Default for WorkerStatus {
    fn default() -> Self {
        WorkerStatus {
            state: WorkerState::NotStarted,
            ready: false,
            restarts: 0,
            backoff_ms: 0,
            consecutive_failures: 0,
            last_error: None,
            models: Vec::new(),
            rate_limits: RateLimits::default(),
        }
    }
}

/// Why a turn could not start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WorkerError {
    #[error("the worker is not ready")]
    NotReady,
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("starting the turn failed: {0}")]
    Aborted(String),
    #[error("the worker answered `{method}` without {missing}")]
    Protocol {
        method: &'static str,
        missing: &'static str,
    },
}

/// One request for the worker: the prompt and, optionally, the model to use.
#[derive(Debug, Clone)]
pub(crate) struct TurnRequest {
    pub(crate) prompt: String,
    pub(crate) model: Option<String>,
}

/// State shared by the handle and the supervisor task.
pub(crate) struct Shared {
    pub(crate) status: watch::Sender<WorkerStatus>,
    /// The live connection, present only while the worker is ready.
    pub(crate) connection: Mutex<Option<Rpc>>,
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max_concurrency: usize,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) supervisor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    /// Applies `change` unless shutdown already began: a late restart must not make a
    /// stopping worker look alive again.
    pub(crate) fn update(&self, change: impl FnOnce(&mut WorkerStatus)) {
        self.status.send_if_modified(|s| {
            if s.state == WorkerState::ShuttingDown {
                return false;
            }
            let before = s.clone();
            change(s);
            s.ready = s.state == WorkerState::Ready;
            *s != before
        });
    }

    pub(crate) fn set_connection(&self, transport: Option<Rpc>) {
        *lock(&self.connection) = transport;
    }
}

/// The proxy's view of the worker. Cheap to clone.
#[derive(Clone)]
pub(crate) struct WorkerHandle {
    shared: Arc<Shared>,
}

impl WorkerHandle {
    pub(crate) fn status(&self) -> WorkerStatus {
        self.shared.status.borrow().clone()
    }

    /// Reads the status in place, for a caller that needs one field of it per request
    /// (a clone would copy the model list and the rate limits each time).
    pub(crate) fn with_status<R>(&self, read: impl FnOnce(&WorkerStatus) -> R) -> R {
        read(&self.shared.status.borrow())
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<WorkerStatus> {
        self.shared.status.subscribe()
    }

    /// Turns running right now.
    pub(crate) fn in_flight(&self) -> usize {
        self.shared.max_concurrency - self.shared.slots.available_permits()
    }

    /// A free slot, if there is one and nobody is waiting for one already.
    pub(crate) fn try_slot(&self) -> Option<WorkerSlot> {
        self.shared
            .slots
            .clone()
            .try_acquire_owned()
            .ok()
            .map(WorkerSlot)
    }

    /// Waits for a slot; waiters are served in arrival order (the semaphore is fair), and
    /// one that is dropped leaves the line at once. `None` only if the slots were closed,
    /// which nothing does.
    pub(crate) async fn slot(&self) -> Option<WorkerSlot> {
        self.shared
            .slots
            .clone()
            .acquire_owned()
            .await
            .ok()
            .map(WorkerSlot)
    }

    /// Starts one turn on a fresh thread, in `slot`, which the turn holds until it ends.
    /// Callers bound the wait with their own timeout.
    pub(crate) async fn start_turn(
        &self,
        request: TurnRequest,
        slot: WorkerSlot,
    ) -> Result<Turn, WorkerError> {
        let transport = lock(&self.shared.connection)
            .clone()
            .ok_or(WorkerError::NotReady)?;
        let WorkerSlot(slot) = slot;

        // The two requests run in a task of their own: when the caller gives up midway
        // (client gone, timeout), the task still finishes, and dropping the `Turn` it
        // made interrupts the turn in the worker instead of leaving it running unseen.
        tokio::spawn(open_turn(transport, request, slot))
            .await
            .unwrap_or_else(|e| Err(WorkerError::Aborted(e.to_string())))
    }

    /// Stops the worker: no new turns, stdin closed, `shutdown_grace_ms` to exit, then
    /// killed. Returns once the child is gone.
    pub(crate) async fn shutdown(&self) {
        self.shared.update(|s| {
            s.state = WorkerState::ShuttingDown;
            s.backoff_ms = 0;
        });
        self.shared.set_connection(None);
        self.shared.shutdown.send_replace(true);
        let task = lock(&self.shared.supervisor).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// One of the worker's `max_concurrency` turn slots, held until dropped.
pub(crate) struct WorkerSlot(tokio::sync::OwnedSemaphorePermit);

/// `thread/start` (ephemeral, never asks for approval, read-only sandbox), then
/// `turn/start` with the prompt as one text input.
async fn open_turn(
    transport: Rpc,
    request: TurnRequest,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> Result<Turn, WorkerError> {
    let mut params = json!({
        "approvalPolicy": "never",
        "sandbox": "read-only",
        "ephemeral": true,
    });
    if let Some(model) = &request.model {
        params["model"] = Value::String(model.clone());
    }
    let started = transport.request("thread/start", params).await?;
    let thread_id = started
        .pointer("/thread/id")
        .and_then(Value::as_str)
        .ok_or(WorkerError::Protocol {
            method: "thread/start",
            missing: "thread.id",
        })?;
    let model = started
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    // Subscribe before `turn/start` so no delta of the turn can slip past.
    let subscription = transport.subscribe_thread(thread_id);
    let input = json!([{"type": "text", "text": request.prompt, "text_elements": []}]);
    let turn = transport
        .request("turn/start", json!({"threadId": thread_id, "input": input}))
        .await?;
    let turn_id =
        turn.pointer("/turn/id")
            .and_then(Value::as_str)
            .ok_or(WorkerError::Protocol {
                method: "turn/start",
                missing: "turn.id",
            })?;
    Ok(Turn::new(subscription, turn_id.to_string(), model, slot))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
