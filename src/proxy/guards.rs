//! Guards in front of `/v1/*`: API key, maintenance, worker readiness.

use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::auth::bearer_matches;

/// Runs before every `/v1/*` handler, in this order: a wrong or missing API key is 401
/// (so strangers learn nothing about the backend), maintenance is 503 with
/// `Retry-After`, a worker that is not ready is 503 `worker_not_ready`.
pub(crate) async fn v1_guard(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(api_key) = state.secrets.api_key.get() {
        if !bearer_matches(request.headers(), &api_key) {
            return ApiError::unauthorized().into_response();
        }
    }
    if state.maintenance.load(Ordering::Relaxed) {
        return ApiError::maintenance(state.config.maintenance.retry_after_secs).into_response();
    }
    let status = state.worker.status();
    if !status.ready {
        let why = serde_json::to_value(status.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return ApiError::worker_not_ready(&why).into_response();
    }
    next.run(request).await
}
