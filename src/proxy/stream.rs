//! The SSE answer of `POST /v1/chat/completions` with `"stream": true`: a first chunk with
//! the assistant role, one chunk per piece of text, `: keepalive` comments while the
//! worker is quiet, a final chunk with `finish_reason` (and a usage chunk when
//! `stream_options.include_usage`), then `data: [DONE]`. A failed turn becomes an
//! `{"error":...}` event, then `data: [DONE]`.
//!
//! A streamed request waits for its stream slot and worker slot in the admission queue
//! ([`super::admission`]). Everything a stream holds (its turn, tool buffer, stream slot
//! with the active-stream gauge) lives in the body's state, so a client that goes away drops it all at once: the turn
//! is interrupted, held tool text is counted as a disconnect, and the slot frees.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::admission::StreamSlot;
use super::completion::{self, ChatRequest};
use super::error::ApiError;
use super::guards::KeyIndex;
use super::tool_buffer::ToolBuffer;
use super::turn_metrics::{self, TurnTelemetry};
use super::AppState;
use crate::metrics::RequestContext;
use crate::worker::{Turn, TurnEvent, TurnStatus, Usage, DELTA_LATENCY_TARGET};

pub(crate) async fn respond(
    state: &AppState,
    context: Option<&RequestContext>,
    headers: &HeaderMap,
    request: ChatRequest,
    accepted: Instant,
    key: KeyIndex,
) -> Response {
    match open(state, context, headers, request, accepted, key).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn open(
    state: &AppState,
    context: Option<&RequestContext>,
    headers: &HeaderMap,
    request: ChatRequest,
    accepted: Instant,
    key: KeyIndex,
) -> Result<Response, ApiError> {
    let prompt = request.prompt()?;
    // The wait in the admission queue counts against `server.request_timeout` and, via
    // `accepted`, in the time to first token.
    let limit = state.config.server.request_timeout.0;
    let exemplar = context.map(|c| c.exemplar);
    let mut telemetry = TurnTelemetry::new(state.metrics.clone(), accepted, true, key.0, exemplar);
    let start = completion::admit_and_start(state, &request, prompt, &mut telemetry, true);
    let (turn, slot) = match tokio::time::timeout(limit, start).await {
        Ok(started) => started?,
        Err(_) => {
            telemetry.finish(crate::metrics::Outcome::Timeout);
            return Err(ApiError::timeout(limit));
        }
    };

    let model = completion::response_model(request.model(), turn.model());
    let mut body = StreamBody {
        turn: Some(turn),
        buffer: completion::tool_buffer(state, headers),
        queue: VecDeque::new(),
        id: completion::completion_id(context),
        created: completion::unix_now(),
        model,
        include_usage: request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage),
        usage: None,
        last_error: None,
        telemetry,
        _slot: slot,
    };
    body.queue_chunk(json!({"role": "assistant", "content": ""}), None, None);
    let events = futures_util::stream::unfold(body, |mut body| async move {
        let event = body.next().await?;
        Some((Ok::<_, Infallible>(event), body))
    });
    let keepalive = KeepAlive::new()
        .interval(Duration::from_millis(state.config.streams.keepalive_ms))
        .text("keepalive");
    Ok(Sse::new(events).keep_alive(keepalive).into_response())
}

struct Queued {
    event: Event,
    /// Whether it carries content (the first such is the time to first token).
    content: bool,
    /// When the proxy read the worker line of the delta it carries (delta-latency trace).
    received: Option<Instant>,
}

struct StreamBody {
    /// `None` once the turn has ended (its worker slot is then free already).
    turn: Option<Turn>,
    buffer: Option<ToolBuffer>,
    /// Events ready to go out, in order.
    queue: VecDeque<Queued>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    usage: Option<Usage>,
    last_error: Option<String>,
    /// Records the turn when it ends, or as `client_disconnected` when the body is
    /// dropped first.
    telemetry: TurnTelemetry,
    /// The stream slot, counted in `codex_streams_active` (always `Some` for a stream).
    _slot: Option<StreamSlot>,
}

impl StreamBody {
    /// The next event to send; `None` when the stream is over.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(queued) = self.queue.pop_front() {
                if queued.content {
                    self.telemetry.first_content_sent();
                }
                // The caller hands the event to hyper without awaiting anything else.
                if let Some(received) = queued.received {
                    tracing::trace!(
                        target: DELTA_LATENCY_TARGET,
                        delta_to_sse_ns = received.elapsed().as_nanos() as u64,
                        sent_at_ns = crate::worker::monotonic_nanos(),
                        completion_id = %self.id,
                    );
                }
                return Some(queued.event);
            }
            let turn = self.turn.as_mut()?;
            let event = turn.next_event().await;
            if let Some(event) = &event {
                self.telemetry.observe(event);
            }
            match event {
                Some(TurnEvent::Delta(d)) => {
                    let text = match self.buffer.as_mut() {
                        Some(b) => b.push(&d),
                        None => d,
                    };
                    let received = self.turn.as_ref().and_then(Turn::received);
                    self.queue_text(text, received);
                }
                Some(TurnEvent::Usage(usage)) => self.usage = Some(usage),
                Some(TurnEvent::Item(_)) => {}
                Some(TurnEvent::Error(e)) => self.last_error = Some(e),
                Some(TurnEvent::Completed { status, error, .. }) => self.end(status, error),
                None => self.end(TurnStatus::WorkerLost, None),
            }
        }
    }

    fn end(&mut self, status: TurnStatus, error: Option<String>) {
        self.turn = None;
        self.telemetry.finish(turn_metrics::outcome(status));
        if let Some(text) = self.buffer.as_mut().map(ToolBuffer::finish) {
            self.queue_text(text, None);
        }
        if status == TurnStatus::Completed {
            self.queue_chunk(json!({}), Some("stop"), None);
            if let (true, Some(usage)) = (self.include_usage, self.usage) {
                let mut chunk = self.chunk(Vec::new());
                chunk["usage"] = completion::usage_json(&usage);
                self.queue_event(Event::default().data(chunk.to_string()));
            }
        } else {
            let error = completion::turn_failed(status, error.or(self.last_error.take()));
            self.queue_event(Event::default().data(error.body().to_string()));
        }
        self.queue_event(Event::default().data("[DONE]"));
    }

    /// `received`: when the proxy read the worker line of the delta giving `text`.
    fn queue_text(&mut self, text: String, received: Option<Instant>) {
        if !text.is_empty() {
            self.queue_chunk(json!({"content": text}), None, received);
        }
    }

    fn queue_chunk(
        &mut self,
        delta: Value,
        finish_reason: Option<&str>,
        received: Option<Instant>,
    ) {
        let content = delta.get("content").is_some_and(|c| c != "");
        let choice = json!({"index": 0, "delta": delta, "finish_reason": finish_reason});
        let chunk = self.chunk(vec![choice]);
        self.queue.push_back(Queued {
            event: Event::default().data(chunk.to_string()),
            content,
            received,
        });
    }

    fn queue_event(&mut self, event: Event) {
        self.queue.push_back(Queued {
            event,
            content: false,
            received: None,
        });
    }

    fn chunk(&self, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}
