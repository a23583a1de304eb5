//! `/healthz` (a JSON report), `/readyz` (200 once the worker is ready) and `/livez`
//! (200 while the process serves). Maintenance mode does not affect them.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::worker::WorkerStatus;

/// The `/healthz` body. A new section is one field here and one line in [`report`].
#[derive(Debug, Serialize)]
pub(crate) struct HealthReport {
    /// `ok` when the worker is ready, else `degraded`.
    pub(crate) status: &'static str,
    pub(crate) worker: WorkerHealth,
    pub(crate) maintenance: bool,
    pub(crate) streams: StreamsHealth,
    /// Each push destination: queued requests and bytes, last accepted push.
    pub(crate) push: Vec<crate::push::DestinationStatus>,
}

#[derive(Debug, Serialize)]
pub(crate) struct WorkerHealth {
    #[serde(flatten)]
    pub(crate) status: WorkerStatus,
    /// Turns running now, and the cap (`worker.max_concurrency`).
    pub(crate) in_flight: usize,
    pub(crate) max_concurrency: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct StreamsHealth {
    pub(crate) active: usize,
    pub(crate) max: usize,
}

pub(crate) fn report(state: &AppState) -> HealthReport {
    let status = state.worker.status();
    let max_streams = state.config.streams.max_concurrency;
    HealthReport {
        status: if status.ready { "ok" } else { "degraded" },
        worker: WorkerHealth {
            status,
            in_flight: state.worker.in_flight(),
            max_concurrency: state.config.worker.max_concurrency,
        },
        maintenance: state.maintenance.load(Ordering::Relaxed),
        streams: StreamsHealth {
            active: max_streams - state.streams.available_permits(),
            max: max_streams,
        },
        push: state.push.as_ref().map(|p| p.status()).unwrap_or_default(),
    }
}

pub(crate) async fn healthz(State(state): State<AppState>) -> Json<HealthReport> {
    Json(report(&state))
}

pub(crate) async fn readyz(State(state): State<AppState>) -> Response {
    let status = state.worker.status();
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut response = (
        code,
        Json(json!({"ready": status.ready, "state": status.state})),
    )
        .into_response();
    if !status.ready {
        // A probe of a worker that is down is an expected answer, not an `internal` error.
        response
            .extensions_mut()
            .insert(crate::metrics::ErrorCategory::WorkerNotReady);
    }
    response
}

pub(crate) async fn livez() -> Json<serde_json::Value> {
    Json(json!({"live": true}))
}
