//! The OpenAI-compatible HTTP API in front of the worker.
//!
//! Routes: `POST /v1/chat/completions` (JSON or SSE), `GET|HEAD /v1/models`, `/healthz`,
//! `/readyz`, `/livez`, and `POST /internal/maintenance`. Every error is OpenAI-shaped
//! JSON (see [`error`]), including the framework's own rejections.

pub(crate) mod admission;
pub(crate) mod chat;
pub(crate) mod completion;
pub(crate) mod error;
pub(crate) mod guards;
pub(crate) mod health;
pub(crate) mod maintenance;
pub(crate) mod models;
pub(crate) mod stream;
pub(crate) mod tool_buffer;
pub(crate) mod turn_metrics;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::{get, post, MethodRouter};
use axum::Router;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::worker::WorkerHandle;
use error::ApiError;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) config: Arc<Config>,
    pub(crate) worker: WorkerHandle,
    pub(crate) metrics: Arc<Metrics>,
    /// Maintenance mode; starts from `maintenance.enabled`, toggled at runtime.
    pub(crate) maintenance: Arc<AtomicBool>,
    /// The bounded FIFO in front of the worker's slots and the stream slots.
    pub(crate) admission: Arc<admission::Admission>,
    /// The pushers' status, for `/healthz`; `None` when no pushers were started.
    pub(crate) push: Option<crate::push::PushersHandle>,
    /// `server.api_key` and `server.admin_token`, inline or from their files (rotating).
    /// Behind one `Arc`: the state is cloned for every request, and `Secrets` is four.
    pub(crate) secrets: Arc<crate::secrets::Secrets>,
}

impl AppState {
    pub(crate) fn new(
        config: Arc<Config>,
        worker: WorkerHandle,
        metrics: Arc<Metrics>,
    ) -> AppState {
        let maintenance = config.maintenance.enabled;
        metrics.set_maintenance(maintenance);
        AppState {
            secrets: Arc::new(crate::secrets::Secrets::from_config(&config)),
            admission: Arc::new(admission::Admission::new(
                &config.worker,
                &config.streams,
                metrics.clone(),
            )),
            maintenance: Arc::new(AtomicBool::new(maintenance)),
            config,
            worker,
            metrics,
            push: None,
        }
    }

    /// Shows the pushers' destinations in `/healthz`.
    pub(crate) fn with_push(mut self, push: crate::push::PushersHandle) -> AppState {
        self.push = Some(push);
        self
    }
}

/// The proxy's router and its route templates, which are the values of the `route`
/// label (see `metrics::labels::RouteTemplates`). Both come from one table, so a route
/// added here is labelled without more work. `app::serve` wraps the router with the
/// metrics.
pub(crate) fn router(state: AppState) -> (Router, Vec<&'static str>) {
    let v1_guard = || from_fn_with_state(state.clone(), guards::v1_guard);
    let routes: [(&'static str, MethodRouter<AppState>); 6] = [
        (
            "/v1/chat/completions",
            post(chat::completions).route_layer(v1_guard()),
        ),
        ("/v1/models", get(models::list).route_layer(v1_guard())),
        ("/healthz", get(health::healthz)),
        ("/readyz", get(health::readyz)),
        ("/livez", get(health::livez)),
        ("/internal/maintenance", post(maintenance::toggle)),
    ];
    let templates = routes.iter().map(|(template, _)| *template).collect();
    let router = routes
        .into_iter()
        .fold(Router::new(), |router, (template, handler)| {
            router.route(template, handler)
        });
    // The body limit is enforced while the body is read (`Bytes`), then mapped to a JSON 413.
    let limit = usize::try_from(state.config.server.max_body_bytes.0).unwrap_or(usize::MAX);
    let router = router
        .fallback(|| async { ApiError::not_found().into_response() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed().into_response() })
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state);
    (router, templates)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::labels::RouteTemplates;
    use crate::worker::supervisor;
    use axum::body::Body;
    use axum::extract::Request;
    use axum::http::{Method, StatusCode};
    use tower::ServiceExt;

    /// The `route` label is worked out from the path before routing; this checks it
    /// against what the router itself does: a path is labelled `unmatched` exactly when
    /// the router answers it from the not-found fallback.
    #[tokio::test]
    async fn the_route_label_agrees_with_the_router_on_every_path() {
        let config = Arc::new(Config::default());
        // A worker that never starts: routing does not need one.
        let worker = supervisor::start_never_ready(config.worker.clone());
        let metrics = Metrics::new(&config.metrics).unwrap();
        let (router, templates) = router(AppState::new(config, worker.clone(), metrics));
        let labels = RouteTemplates::new(templates.iter().copied());

        async fn body(response: axum::response::Response) -> axum::body::Bytes {
            axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
        }
        let fallback = body(ApiError::not_found().into_response()).await;

        let mut paths: Vec<String> = templates.iter().map(|t| t.to_string()).collect();
        for t in &templates {
            paths.extend([format!("{t}/"), format!("{t}/x"), t.to_uppercase()]);
        }
        paths
            .extend(["/", "//", "/v1", "/v1/", "/wp-login.php", "/v1/models%2F"].map(String::from));
        for path in paths {
            for method in [Method::GET, Method::POST, Method::DELETE] {
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&path)
                    .body(Body::empty())
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                let fell_through =
                    response.status() == StatusCode::NOT_FOUND && body(response).await == fallback;
                assert_eq!(
                    labels.label(&path) == "unmatched",
                    fell_through,
                    "{method} {path}"
                );
            }
        }
        worker.shutdown().await;
    }
}
