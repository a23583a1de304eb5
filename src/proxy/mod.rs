//! The OpenAI-compatible HTTP API in front of the worker.
//!
//! Routes: `POST /v1/chat/completions` (JSON or SSE), `GET|HEAD /v1/models`, `/healthz`,
//! `/readyz`, `/livez`, and `POST /internal/maintenance`. Every error is OpenAI-shaped
//! JSON (see [`error`]), including the framework's own rejections.

pub mod chat;
pub mod error;
pub mod guards;
pub mod health;
pub mod maintenance;
pub mod models;
pub mod stream;
pub mod tool_buffer;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::Semaphore;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::worker::WorkerHandle;
use error::ApiError;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub worker: WorkerHandle,
    pub metrics: Arc<Metrics>,
    /// Maintenance mode; starts from `maintenance.enabled`, toggled at runtime.
    pub maintenance: Arc<AtomicBool>,
    /// One permit per open SSE stream (`streams.max_concurrency`).
    pub streams: Arc<Semaphore>,
    /// The pushers' status, for `/healthz`; `None` when no pushers were started.
    pub push: Option<crate::push::PushersHandle>,
}

impl AppState {
    pub fn new(config: Arc<Config>, worker: WorkerHandle, metrics: Arc<Metrics>) -> AppState {
        let maintenance = config.maintenance.enabled;
        metrics.set_maintenance(maintenance);
        AppState {
            streams: Arc::new(Semaphore::new(config.streams.max_concurrency)),
            maintenance: Arc::new(AtomicBool::new(maintenance)),
            config,
            worker,
            metrics,
            push: None,
        }
    }

    /// Shows the pushers' destinations in `/healthz`.
    pub fn with_push(mut self, push: crate::push::PushersHandle) -> AppState {
        self.push = Some(push);
        self
    }
}

/// The proxy's routes. `app::serve` wraps the result with the metrics middleware.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(models::list))
        .route_layer(from_fn_with_state(state.clone(), guards::v1_guard));
    // The body limit is enforced while the body is read (`Bytes`), then mapped to a JSON 413.
    let limit = usize::try_from(state.config.server.max_body_bytes.0).unwrap_or(usize::MAX);
    Router::new()
        .merge(v1)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/livez", get(health::livez))
        .route("/internal/maintenance", post(maintenance::toggle))
        .fallback(|| async { ApiError::not_found().into_response() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed().into_response() })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}
