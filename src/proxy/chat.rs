//! `POST /v1/chat/completions`: parses the OpenAI request, runs one worker turn and
//! answers as JSON (here) or as SSE ([`super::stream`]). What both answers share lives in
//! [`super::completion`].

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::completion::{self, ChatRequest};
use super::error::ApiError;
use super::guards::KeyIndex;
use super::stream;
use super::turn_metrics::{self, TurnTelemetry};
use super::AppState;
use crate::metrics::{ModelLabel, Outcome, RequestContext};
use crate::worker::{TurnEvent, TurnStatus, Usage};

pub(crate) async fn completions(
    State(state): State<AppState>,
    key: Option<Extension<KeyIndex>>,
    context: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let context = context.map(|Extension(c)| c);
    let context = context.as_ref();
    let accepted = Instant::now();
    let key = key.map(|Extension(k)| k).unwrap_or_default();
    if let Some(secs) = state.metrics.budgets.refusal(key.0, chrono::Utc::now()) {
        let names = state.config.key_names();
        let name = names.get(key.0).copied().unwrap_or_default();
        return ApiError::budget_spent(name, secs).into_response();
    }
    let request = match completion::parse(&headers, body, state.config.server.max_body_bytes.0) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let model = request.model().map(str::to_string);
    let mut response = if request.stream == Some(true) {
        stream::respond(&state, context, &headers, request, accepted, key).await
    } else {
        complete(&state, context, &headers, request, accepted, key)
            .await
            .unwrap_or_else(IntoResponse::into_response)
    };
    if let Some(model) = model {
        response.extensions_mut().insert(ModelLabel(model));
    }
    response
}

/// The non-streaming answer, bounded by `server.request_timeout` from start to end
/// (waiting for a worker slot included).
async fn complete(
    state: &AppState,
    context: Option<&RequestContext>,
    headers: &HeaderMap,
    request: ChatRequest,
    accepted: Instant,
    key: KeyIndex,
) -> Result<Response, ApiError> {
    let limit = state.config.server.request_timeout.0;
    let exemplar = context.map(|c| c.exemplar);
    let mut telemetry = TurnTelemetry::new(state.metrics.clone(), accepted, false, key.0, exemplar);
    let run = run_to_end(state, context, headers, request, &mut telemetry);
    match tokio::time::timeout(limit, run).await {
        Ok(result) => result,
        Err(_) => {
            telemetry.finish(Outcome::Timeout);
            Err(ApiError::timeout(limit))
        }
    }
}

async fn run_to_end(
    state: &AppState,
    context: Option<&RequestContext>,
    headers: &HeaderMap,
    request: ChatRequest,
    telemetry: &mut TurnTelemetry,
) -> Result<Response, ApiError> {
    let prompt = request.prompt()?;
    let (mut turn, _) =
        completion::admit_and_start(state, &request, prompt, telemetry, false).await?;
    let model = completion::response_model(request.model(), turn.model());
    let mut buffer = completion::tool_buffer(state, headers);
    let mut text = String::new();
    let mut usage = Usage::default();
    let mut last_error = None;
    while let Some(event) = turn.next_event().await {
        telemetry.observe(&event);
        match event {
            TurnEvent::Delta(d) => match buffer.as_mut() {
                Some(b) => text.push_str(&b.push(&d)),
                None => text.push_str(&d),
            },
            TurnEvent::Usage(u) => usage = u,
            TurnEvent::Item(_) => {}
            TurnEvent::Error(e) => last_error = Some(e),
            TurnEvent::Completed { status, error, .. } => {
                telemetry.finish(turn_metrics::outcome(status));
                if let Some(b) = buffer.as_mut() {
                    text.push_str(&b.finish());
                }
                if status != TurnStatus::Completed {
                    return Err(completion::turn_failed(status, error.or(last_error)));
                }
            }
        }
    }
    let body = json!({
        "id": completion::completion_id(context),
        "object": "chat.completion",
        "created": completion::unix_now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop",
        }],
        "usage": completion::usage_json(&usage),
    });
    Ok(Json(body).into_response())
}
