//! OpenAI-shaped error responses: `{"error":{"message","type","code","retryable"?}}`.
//! A 5xx carries its [`ErrorCategory`] as a response extension for the metrics
//! middleware; a maintenance 503 and every 429 carry `Retry-After`.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::metrics::ErrorCategory;
use crate::worker::rpc::RpcError;
use crate::worker::WorkerError;

/// `Retry-After` of a 429: a slot or a stream frees whenever any turn ends, so a second
/// is a fair first wait; an SDK backs off further on its own if it is still busy.
pub(crate) const RETRY_AFTER_BUSY_SECS: u64 = 1;

#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    /// OpenAI's `type`, e.g. `invalid_request_error`.
    pub(crate) kind: &'static str,
    pub(crate) code: &'static str,
    pub(crate) retryable: Option<bool>,
    pub(crate) category: Option<ErrorCategory>,
    pub(crate) retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            message,
            kind,
            code,
            retryable: None,
            category: None,
            retry_after_secs: None,
        }
    }

    fn retryable(mut self) -> Self {
        self.retryable = Some(true);
        self
    }

    fn category(mut self, category: ErrorCategory) -> Self {
        self.category = Some(category);
        self
    }

    pub(crate) fn invalid_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            "invalid_api_key",
            "missing or invalid bearer token".to_string(),
        )
    }

    pub(crate) fn forbidden(message: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "forbidden",
            message.to_string(),
        )
    }

    pub(crate) fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "unknown_url",
            "no such route".to_string(),
        )
    }

    pub(crate) fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            "method not allowed on this route".to_string(),
        )
    }

    pub(crate) fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body exceeds {limit} bytes (server.max_body_bytes)"),
        )
    }

    pub(crate) fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            "expected `Content-Type: application/json`".to_string(),
        )
    }

    pub(crate) fn maintenance(retry_after_secs: u64) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "maintenance",
            "the proxy is in maintenance mode".to_string(),
        )
        .retryable()
        .category(ErrorCategory::Maintenance);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    pub(crate) fn worker_not_ready(why: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable",
            "worker_not_ready",
            format!("the worker is not ready ({why})"),
        )
        .retryable()
        .category(ErrorCategory::WorkerNotReady)
    }

    /// A 429: retryable, with `Retry-After`, so that an SDK's retry waits at least that.
    fn too_many(code: &'static str, message: String) -> Self {
        Self::too_many_after("rate_limit_error", code, message, RETRY_AFTER_BUSY_SECS)
    }

    /// The one constructor of every 429: `Retry-After: retry_after_secs`.
    fn too_many_after(
        kind: &'static str,
        code: &'static str,
        message: String,
        retry_after_secs: u64,
    ) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, kind, code, message).retryable();
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// The key's enforced budget is spent until its period ends in `retry_after_secs`.
    pub(crate) fn budget_spent(key: &str, retry_after_secs: u64) -> Self {
        Self::too_many_after(
            "insufficient_quota",
            "insufficient_quota",
            format!(
                "the budget of API key `{key}` is spent for this period; it resets in {retry_after_secs} s"
            ),
            retry_after_secs,
        )
    }

    /// The request cannot start at once (every worker slot, or for a stream every stream
    /// slot, is busy) and the admission queue holds `queue_max` requests.
    pub(crate) fn queue_full(queue_max: usize) -> Self {
        Self::too_many(
            "worker_busy",
            format!(
                "every worker slot (or, for a stream, every stream slot) is busy and {queue_max} requests are already waiting (worker.queue_max)"
            ),
        )
    }

    /// The request waited `waited` in the admission queue and was not admitted.
    pub(crate) fn queue_timeout(waited: std::time::Duration) -> Self {
        Self::too_many(
            "worker_busy",
            format!(
                "no worker slot (or, for a stream, stream slot) became free within {} ms (worker.queue_timeout)",
                waited.as_millis()
            ),
        )
    }

    /// `streams.on_full = "reject"` and `max` streams are open.
    pub(crate) fn too_many_streams(max: usize) -> Self {
        Self::too_many(
            "too_many_streams",
            format!("{max} streams are already open (streams.max_concurrency)"),
        )
    }

    /// The worker ran the turn and it failed.
    pub(crate) fn worker_failed(message: String) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "backend_error",
            "worker_error",
            message,
        )
        .category(ErrorCategory::WorkerError)
    }

    pub(crate) fn timeout(after: std::time::Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            "timeout",
            format!(
                "the worker did not finish within {} ms (server.request_timeout)",
                after.as_millis()
            ),
        )
        .retryable()
        .category(ErrorCategory::Timeout)
    }

    pub(crate) fn internal(message: String) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            message,
        )
        .category(ErrorCategory::Internal)
    }

    /// The body of this error as it goes into JSON or an SSE event.
    pub(crate) fn body(&self) -> serde_json::Value {
        let mut error = json!({
            "message": self.message,
            "type": self.kind,
            "code": self.code,
        });
        if let Some(r) = self.retryable {
            error["retryable"] = json!(r);
        }
        json!({ "error": error })
    }

    /// A body that could not be read: too large, or cut off.
    pub(crate) fn from_body_rejection(rejection: BytesRejection, limit: u64) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::too_large(limit)
        } else {
            Self::invalid_request("unreadable_body", rejection.body_text())
        }
    }
}

impl From<WorkerError> for ApiError {
    fn from(e: WorkerError) -> Self {
        match e {
            WorkerError::NotReady | WorkerError::Rpc(RpcError::Closed) => {
                ApiError::worker_not_ready("not accepting turns")
            }
            WorkerError::Rpc(RpcError::Rpc { .. }) | WorkerError::Protocol { .. } => {
                ApiError::worker_failed(e.to_string())
            }
            WorkerError::Aborted(_) => ApiError::internal(e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(category) = self.category.filter(|_| self.status.is_server_error()) {
            response.extensions_mut().insert(category);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 7235 §3.1: a 401 names the scheme that would succeed.
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_not_ready_has_the_documented_shape() {
        let e = ApiError::worker_not_ready("restarting");
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
        let body = e.body();
        assert_eq!(body["error"]["type"], "backend_unavailable");
        assert_eq!(body["error"]["code"], "worker_not_ready");
        assert_eq!(body["error"]["retryable"], true);
    }

    #[test]
    fn a_5xx_carries_its_category_and_a_4xx_none() {
        let r = ApiError::worker_failed("boom".into()).into_response();
        assert_eq!(
            r.extensions().get::<ErrorCategory>(),
            Some(&ErrorCategory::WorkerError)
        );
        let r = ApiError::queue_full(2).into_response();
        assert!(r.extensions().get::<ErrorCategory>().is_none());
    }

    #[test]
    fn every_429_carries_retry_after() {
        for e in [
            ApiError::queue_full(2),
            ApiError::queue_timeout(std::time::Duration::from_secs(60)),
            ApiError::too_many_streams(4),
        ] {
            let r = e.into_response();
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        }
    }

    #[test]
    fn a_spent_budget_is_an_insufficient_quota_429_with_the_time_to_the_reset() {
        let r = ApiError::budget_spent("team-a", 3600);
        assert_eq!(r.body()["error"]["type"], "insufficient_quota");
        let r = r.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3600");
    }

    #[test]
    fn maintenance_sets_retry_after() {
        let r = ApiError::maintenance(120).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "120");
    }
}
