//! Guards in front of `/v1/*`: API key, maintenance, worker readiness.

use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;
use crate::auth::{bearer_token, matching_key};

/// Which configured API key admitted a request (its index in `Config::key_names`; 0 when
/// no key is configured, which is the `key` label `none`). The guard puts it into the
/// request's extensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyIndex(pub(crate) usize);

/// Runs before every `/v1/*` handler, in this order: a wrong or missing API key is 401
/// (so strangers learn nothing about the backend), maintenance is 503 with
/// `Retry-After`, a worker that is not ready is 503 `worker_not_ready`.
pub(crate) async fn v1_guard(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let keys = state.secrets.api_keys.current();
    if !keys.is_empty() {
        let token = bearer_token(request.headers()).unwrap_or_default();
        let Some(index) = matching_key(token, &keys) else {
            return ApiError::unauthorized().into_response();
        };
        request.extensions_mut().insert(KeyIndex(index));
    }
    if state.maintenance.load(Ordering::Relaxed) {
        return ApiError::maintenance(state.config.maintenance.retry_after_secs).into_response();
    }
    // In place: a clone of the status (model list, rate limits) per request was a
    // twentieth of what a cheap request costs.
    let not_ready = state
        .worker
        .with_status(|status| (!status.ready).then_some(status.state));
    if let Some(worker_state) = not_ready {
        let why = serde_json::to_value(worker_state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        return ApiError::worker_not_ready(&why).into_response();
    }
    next.run(request).await
}
