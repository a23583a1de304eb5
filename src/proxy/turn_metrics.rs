//! What one request's turn records in the model-work families, gathered while it runs
//! and recorded once when it ends (`Metrics::record_turn`). Whoever holds the
//! [`TurnTelemetry`] decides the outcome; if it is dropped before that, the client went
//! away (the handler's future or the SSE body was dropped), and that is the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::exemplar::ExemplarId;
use crate::metrics::model_work::{item_kind_index, ITEM_KINDS};
use crate::metrics::{FinishedTurn, Metrics, Outcome, TokenCounts};
use crate::worker::{TurnEvent, TurnStatus, Usage};

pub(crate) struct TurnTelemetry {
    metrics: Arc<Metrics>,
    /// When the proxy accepted the request: time to first token counts from here.
    accepted: Instant,
    stream: bool,
    /// The API key that asked (index of its name).
    key: usize,
    /// Set once the turn has begun: a turn is counted only from then on.
    started: Option<Started>,
    first_token: Option<Duration>,
    first_delta: Option<Instant>,
    last_delta: Option<Instant>,
    usage: Option<TokenCounts>,
    limit_reached: Option<crate::worker::LimitReached>,
    items: [u32; ITEM_KINDS.len()],
    recorded: bool,
    /// The request's, kept as the exemplar of its observations.
    exemplar: Option<ExemplarId>,
}

struct Started {
    at: Instant,
    /// The raw model name, bounded by the label rules when recorded.
    model: Option<String>,
}

impl TurnTelemetry {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        accepted: Instant,
        stream: bool,
        key: usize,
        exemplar: Option<ExemplarId>,
    ) -> Self {
        TurnTelemetry {
            metrics,
            accepted,
            stream,
            key,
            started: None,
            first_token: None,
            first_delta: None,
            last_delta: None,
            usage: None,
            limit_reached: None,
            items: [0; ITEM_KINDS.len()],
            recorded: false,
            exemplar,
        }
    }

    /// The turn began at `at` (its worker slot was granted then). `model` is the model
    /// that runs it: the worker's word for the thread, else the client's.
    pub(crate) fn started(&mut self, at: Instant, model: Option<&str>) {
        self.started = Some(Started {
            at,
            model: model.map(str::to_string),
        });
    }

    /// Takes in one of the turn's events as it arrives from the worker.
    pub(crate) fn observe(&mut self, event: &TurnEvent) {
        match event {
            TurnEvent::Delta(_) => {
                let now = Instant::now();
                if self.first_delta.is_none() {
                    self.first_delta = Some(now);
                    if !self.stream {
                        self.first_token = Some(now - self.accepted);
                    }
                }
                self.last_delta = Some(now);
            }
            TurnEvent::Usage(usage) => self.usage = Some(token_counts(usage)),
            TurnEvent::Item(kind) => {
                if let Some(i) = item_kind_index(kind) {
                    self.items[i] = self.items[i].saturating_add(1);
                }
            }
            TurnEvent::Completed { limit, .. } => self.limit_reached = *limit,
            TurnEvent::Error(_) => {}
        }
    }

    /// The first content byte of a streamed answer is being written to the client.
    pub(crate) fn first_content_sent(&mut self) {
        if self.first_token.is_none() {
            self.first_token = Some(self.accepted.elapsed());
        }
    }

    /// Records the turn once with `outcome`; nothing when it never began.
    pub(crate) fn finish(&mut self, outcome: Outcome) {
        let Some(started) = self.started.as_ref() else {
            return;
        };
        if self.recorded {
            return;
        }
        self.recorded = true;
        let first_to_last_delta = self
            .first_delta
            .zip(self.last_delta)
            .map(|(first, last)| last - first);
        self.metrics.record_turn(&FinishedTurn {
            model: started.model.as_deref(),
            key: self.key,
            stream: self.stream,
            outcome,
            duration: started.at.elapsed(),
            time_to_first_token: self.first_token,
            first_to_last_delta,
            tokens: self.usage,
            limit_reached: self.limit_reached,
            items: self.items,
            exemplar: self.exemplar.as_ref(),
        });
    }
}

impl Drop for TurnTelemetry {
    fn drop(&mut self) {
        self.finish(Outcome::ClientDisconnected);
    }
}

/// The outcome of a turn the worker ended.
pub(crate) fn outcome(status: TurnStatus) -> Outcome {
    match status {
        TurnStatus::Completed => Outcome::Completed,
        TurnStatus::Failed => Outcome::Failed,
        TurnStatus::Interrupted => Outcome::Interrupted,
        TurnStatus::WorkerLost => Outcome::WorkerLost,
    }
}

fn token_counts(u: &Usage) -> TokenCounts {
    TokenCounts([
        u.input,
        u.cached_input,
        u.cache_write_input,
        u.output,
        u.reasoning_output,
    ])
}
