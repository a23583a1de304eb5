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
    /// Requests waiting in the admission queue (for a worker slot, and streams also for a
    /// stream slot), and its bound (`worker.queue_max`).
    pub(crate) queue_depth: usize,
    pub(crate) queue_max: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct StreamsHealth {
    /// Stream slots held now, and the cap (`streams.max_concurrency`).
    pub(crate) active: usize,
    pub(crate) max: usize,
    /// The most streams open at once since start (the high-water mark of
    /// `codex_streams_active`).
    pub(crate) peak: usize,
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
            queue_depth: state.admission.depth(),
            queue_max: state.admission.queue_max(),
        },
        maintenance: state.maintenance.load(Ordering::Relaxed),
        streams: StreamsHealth {
            active: state.admission.streams_open(),
            max: max_streams,
            peak: state.metrics.streams_peak(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::worker::{supervisor, WorkerCommand};

    fn worker_json(state: &AppState) -> serde_json::Value {
        serde_json::to_value(report(state)).unwrap()["worker"].clone()
    }

    #[tokio::test]
    async fn healthz_shows_the_admission_queue_depth_and_its_bound() {
        let config =
            Arc::new(Config::parse("[worker]\nmax_concurrency = 1\nqueue_max = 3\n").unwrap());
        // A worker that never starts: slots are handed out all the same.
        let worker = supervisor::start(
            config.worker.clone(),
            WorkerCommand {
                program: "/nonexistent/worker".into(),
                args: Vec::new(),
            },
        );
        let metrics = Metrics::new(&config.metrics).unwrap();
        let state = AppState::new(config, worker.clone(), metrics);
        let idle = worker_json(&state);
        assert_eq!(
            (idle["queue_depth"].clone(), idle["queue_max"].clone()),
            (0.into(), 3.into())
        );

        let held = state.admission.admit(&worker, false).await.unwrap();
        let waiter = {
            let (state, worker) = (state.clone(), worker.clone());
            tokio::spawn(async move { state.admission.admit(&worker, false).await.is_ok() })
        };
        let mut waiting = worker_json(&state);
        for _ in 0..400 {
            if waiting["queue_depth"] == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
            waiting = worker_json(&state);
        }
        assert_eq!(waiting["queue_depth"], 1, "{waiting}");
        assert_eq!(waiting["in_flight"], 1);

        drop(held);
        assert!(waiter.await.unwrap(), "the waiter got the freed slot");
        assert_eq!(worker_json(&state)["queue_depth"], 0);
        worker.shutdown().await;
    }
}
