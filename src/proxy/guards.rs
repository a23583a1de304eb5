//! Guards in front of `/v1/*` (API key, maintenance, worker readiness) and the bearer
//! and loopback checks shared with the admin route.

use std::net::IpAddr;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// Runs before every `/v1/*` handler, in this order: a wrong or missing API key is 401
/// (so strangers learn nothing about the backend), maintenance is 503 with
/// `Retry-After`, a worker that is not ready is 503 `worker_not_ready`.
pub async fn v1_guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let api_key = &state.config.server.api_key;
    if !api_key.is_empty() && !bearer_matches(request.headers(), api_key) {
        return ApiError::unauthorized().into_response();
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

/// `Authorization: Bearer <secret>`, compared in constant time.
pub fn bearer_matches(headers: &HeaderMap, secret: &str) -> bool {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(token) => token.trim().as_bytes().ct_eq(secret.as_bytes()).into(),
        None => false,
    }
}

/// The TCP peer is loopback (127.0.0.0/8, ::1, or ::ffff:127.x). Only the socket's own
/// peer address counts, never a forwarding header.
pub fn is_loopback(peer: IpAddr) -> bool {
    peer.to_canonical().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn auth(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_must_match_exactly() {
        assert!(bearer_matches(&auth("Bearer s3cret"), "s3cret"));
        assert!(!bearer_matches(&auth("Bearer s3cre"), "s3cret"));
        assert!(!bearer_matches(&auth("Bearer s3cret!"), "s3cret"));
        assert!(!bearer_matches(&auth("Basic s3cret"), "s3cret"));
        assert!(!bearer_matches(&HeaderMap::new(), "s3cret"));
    }

    #[test]
    fn loopback_includes_mapped_v4_and_excludes_others() {
        assert!(is_loopback("127.0.0.1".parse().unwrap()));
        assert!(is_loopback("127.8.9.10".parse().unwrap()));
        assert!(is_loopback("::1".parse().unwrap()));
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("10.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}
