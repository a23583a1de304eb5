//! `POST /internal/maintenance {"enabled": bool}`: switches maintenance mode at runtime.
//! With `server.admin_token` set, the caller needs `Authorization: Bearer <token>`;
//! without it, only loopback peers may call.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::completion::require_json;
use super::error::ApiError;
use super::AppState;
use crate::auth::{bearer_matches, is_loopback};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Toggle {
    enabled: bool,
}

pub(crate) async fn toggle(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Some(token) = state.secrets.admin_token.get() {
        if !bearer_matches(&headers, &token) {
            return ApiError::unauthorized().into_response();
        }
    } else if !is_loopback(peer.ip()) {
        return ApiError::forbidden("set server.admin_token to allow non-loopback callers")
            .into_response();
    }
    let limit = state.config.server.max_body_bytes.0;
    let body = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from_body_rejection(e, limit).into_response(),
    };
    if let Err(e) = require_json(&headers) {
        return e.into_response();
    }
    let toggle: Toggle = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return ApiError::invalid_request(
                "invalid_json",
                format!("expected {{\"enabled\": bool}}: {e}"),
            )
            .into_response()
        }
    };
    let was = state.maintenance.swap(toggle.enabled, Ordering::Relaxed);
    state.metrics.set_maintenance(toggle.enabled);
    if was != toggle.enabled {
        tracing::warn!(
            "maintenance mode {}",
            if toggle.enabled { "on" } else { "off" }
        );
    }
    Json(json!({"maintenance": toggle.enabled})).into_response()
}
