//! What the JSON answer ([`super::chat`]) and the SSE answer ([`super::stream`]) of
//! `POST /v1/chat/completions` share: the parsed request and its prompt, admission and
//! the start of the turn, the tool buffer, and the pieces of the response (id, model,
//! usage, the error of a failed turn). Both answers depend on this module, and it on
//! neither, so the two stay one-way: `chat` picks `stream` for a streamed request.
//!
//! The prompt: each message's text (a string `content`, or the `text` of its content
//! parts of type `text`; other parts such as images are skipped) prefixed with its role,
//! `"<role>: <text>"`, messages separated by a blank line. Messages without text are
//! skipped. The worker gets this as one text input on a fresh ephemeral thread.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap};
use serde::Deserialize;
use serde_json::json;

use super::admission::StreamSlot;
use super::error::ApiError;
use super::tool_buffer::ToolBuffer;
use super::turn_metrics::TurnTelemetry;
use super::AppState;
use crate::metrics::RequestContext;
use crate::worker::{Turn, TurnRequest, TurnStatus, Usage};

/// The request header that selects the output mode (contract).
pub(crate) const OUTPUT_MODE_HEADER: &str = "x-proxy-output-mode";
/// The output mode that turns the tool buffer on.
pub(crate) const OBSIDIAN_XML: &str = "obsidian-xml";

/// The fields of an OpenAI chat request the proxy uses; others are accepted and ignored.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatRequest {
    #[serde(default)]
    pub(crate) model: Option<String>,
    pub(crate) messages: Vec<Message>,
    #[serde(default)]
    pub(crate) stream: Option<bool>,
    #[serde(default)]
    pub(crate) stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Message {
    pub(crate) role: String,
    #[serde(default)]
    pub(crate) content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct Part {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct StreamOptions {
    #[serde(default)]
    pub(crate) include_usage: bool,
}

impl ChatRequest {
    /// The model asked for; an empty string counts as none.
    pub(crate) fn model(&self) -> Option<&str> {
        self.model.as_deref().filter(|m| !m.is_empty())
    }

    pub(crate) fn prompt(&self) -> Result<String, ApiError> {
        let mut sections = Vec::new();
        for message in &self.messages {
            let text = match &message.content {
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => parts
                    .iter()
                    .filter(|p| p.kind == "text")
                    .filter_map(|p| p.text.as_deref())
                    .collect::<Vec<_>>()
                    .join("\n"),
                None => String::new(),
            };
            if !text.trim().is_empty() {
                sections.push(format!("{}: {}", message.role, text));
            }
        }
        if sections.is_empty() {
            return Err(ApiError::invalid_request(
                "missing_messages",
                "`messages` holds no text",
            ));
        }
        Ok(sections.join("\n\n"))
    }
}

/// 415 unless the request says it is JSON (`application/json`, parameters allowed).
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        });
    if is_json {
        Ok(())
    } else {
        Err(ApiError::unsupported_media_type())
    }
}

/// Reads and checks the body: 413, 415 or 400, each as JSON.
pub(crate) fn parse(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: u64,
) -> Result<ChatRequest, ApiError> {
    let body = body.map_err(|e| ApiError::from_body_rejection(e, limit))?;
    require_json(headers)?;
    let request: ChatRequest = serde_json::from_slice(&body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_request"
        };
        ApiError::invalid_request(code, format!("invalid request body: {e}"))
    })?;
    if request.messages.is_empty() {
        return Err(ApiError::invalid_request(
            "missing_messages",
            "`messages` must not be empty",
        ));
    }
    Ok(request)
}

/// Whether the client chose the `obsidian-xml` output mode.
pub(crate) fn wants_tool_buffer(headers: &HeaderMap) -> bool {
    headers
        .get(OUTPUT_MODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OBSIDIAN_XML))
}

/// A tool buffer reporting to the metrics, when the output mode asks for one.
pub(crate) fn tool_buffer(state: &AppState, headers: &HeaderMap) -> Option<ToolBuffer> {
    wants_tool_buffer(headers).then(|| {
        let metrics = state.metrics.clone();
        ToolBuffer::new(Box::new(move |event| {
            tracing::debug!("tool buffer: {event:?}");
            metrics.tool_buffer(OBSIDIAN_XML, event);
        }))
    })
}

/// Waits in the admission queue for a worker slot (and, for a `stream`, a stream slot),
/// then starts the turn for `prompt` (the request's, already checked) in it. The stream
/// slot comes back to be held for as long as the stream is open.
pub(crate) async fn admit_and_start(
    state: &AppState,
    request: &ChatRequest,
    prompt: String,
    telemetry: &mut TurnTelemetry,
    stream: bool,
) -> Result<(Turn, Option<StreamSlot>), ApiError> {
    let admitted = state.admission.admit(&state.worker, stream).await?;
    let granted = Instant::now();
    let turn = state
        .worker
        .start_turn(
            TurnRequest {
                prompt,
                model: request.model().map(str::to_string),
            },
            admitted.worker,
        )
        .await?;
    telemetry.started(granted, turn.model().or(request.model()));
    Ok((turn, admitted.stream))
}

/// OpenAI's `usage` object for the worker's counts.
pub(crate) fn usage_json(usage: &Usage) -> serde_json::Value {
    json!({
        "prompt_tokens": usage.input,
        "completion_tokens": usage.output,
        "total_tokens": usage.total,
    })
}

/// The error for a turn that did not complete.
pub(crate) fn turn_failed(status: TurnStatus, error: Option<String>) -> ApiError {
    let message = match (status, error) {
        (_, Some(e)) => format!("the worker's turn failed: {e}"),
        (TurnStatus::Interrupted, None) => "the worker's turn was interrupted".to_string(),
        (TurnStatus::WorkerLost, None) => "the worker exited during the turn".to_string(),
        _ => "the worker's turn failed".to_string(),
    };
    ApiError::worker_failed(message)
}

/// The model named in responses: the client's, else the worker's, else `codex`.
pub(crate) fn response_model(asked: Option<&str>, worker: Option<&str>) -> String {
    asked.or(worker).unwrap_or("codex").to_string()
}

/// The request's id (`x-request-id`) as the completion id; a fresh one when the request
/// came in without the middleware (unit tests).
pub(crate) fn completion_id(context: Option<&RequestContext>) -> String {
    context
        .map_or_else(crate::metrics::exemplar::RequestId::random, |c| c.id)
        .to_string()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn request(body: &str) -> Result<ChatRequest, ApiError> {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        parse(&h, Ok(Bytes::from(body.to_string())), 1 << 20)
    }

    #[test]
    fn prompt_joins_text_of_string_and_part_contents_with_roles() {
        let r = request(
            r#"{"model":"m","messages":[
                {"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{}},{"type":"text","text":"there"}]},
                {"role":"assistant","content":null}
            ],"temperature":0.2}"#,
        )
        .unwrap();
        assert_eq!(r.prompt().unwrap(), "system: be brief\n\nuser: hi\nthere");
        assert_eq!(r.model(), Some("m"));
    }

    #[test]
    fn bad_bodies_are_named_4xx() {
        let e = request("{not json").unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_json"));
        let e = request(r#"{"model":"m"}"#).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (400, "invalid_request"));
        assert!(e.message.contains("messages"), "{}", e.message);
        let e = request(r#"{"messages":[]}"#).unwrap_err();
        assert_eq!(e.code, "missing_messages");
        let r = request(r#"{"messages":[{"role":"user","content":"  "}]}"#).unwrap();
        assert_eq!(r.prompt().unwrap_err().code, "missing_messages");
        let e = parse(&HeaderMap::new(), Ok(Bytes::from_static(b"{}")), 10).unwrap_err();
        assert_eq!(e.status.as_u16(), 415);
    }

    #[test]
    fn output_mode_header_selects_the_tool_buffer() {
        let mut h = HeaderMap::new();
        assert!(!wants_tool_buffer(&h));
        h.insert(OUTPUT_MODE_HEADER, HeaderValue::from_static("text"));
        assert!(!wants_tool_buffer(&h));
        h.insert(OUTPUT_MODE_HEADER, HeaderValue::from_static("obsidian-xml"));
        assert!(wants_tool_buffer(&h));
    }
}
