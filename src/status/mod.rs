//! `GET /status` (HTML) and `GET /status.json` (the same data, version 1 of the shape in
//! docs/status.md): the process, the worker, the last hour as charts, each push
//! destination. Behind the guard of `/metrics` (token, basic auth users, loopback).
//!
//! One source of truth: the worker, streams and destinations are `/healthz`'s report
//! (`proxy::health::report`, which reads `push::DestinationStatus`); this adds the process
//! and the history that [`history`]'s sampler keeps.

pub(crate) mod history;
pub(crate) mod html;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::config::Config;
use crate::metrics::scrape::{peer_of, Guard};
use crate::proxy::health::{report, HealthReport};
use crate::proxy::AppState;
use history::{History, Point};

/// The version of `/status.json`'s shape; a change that removes or retypes a field
/// bumps it.
pub const VERSION: u32 = 1;

/// The paths, also the values of the `route` label.
pub(crate) const PATHS: [&str; 2] = ["/status", "/status.json"];

/// What the process is: fixed at start, except the uptime.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProcessInfo {
    pub(crate) version: &'static str,
    pub(crate) uptime_seconds: u64,
    pub(crate) listen: String,
    pub(crate) tls: bool,
    pub(crate) instance: String,
    /// `None` on built-in defaults.
    pub(crate) config_file: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct HistoryView {
    pub(crate) interval_seconds: u64,
    /// Points kept at most (one hour).
    pub(crate) capacity: usize,
    pub(crate) status_families: [&'static str; 4],
    pub(crate) token_kinds: [&'static str; 5],
    pub(crate) points: Vec<Point>,
}

/// The whole view: `/status.json` as it is served, and what `/status` renders.
#[derive(Debug, Serialize)]
pub(crate) struct StatusView {
    pub(crate) version: u32,
    pub(crate) generated_at_unix_seconds: i64,
    pub(crate) process: ProcessInfo,
    /// `status`, `worker`, `maintenance`, `streams`, `push`: as in `/healthz`.
    #[serde(flatten)]
    pub(crate) health: HealthReport,
    pub(crate) history: HistoryView,
}

/// Everything the routes read.
pub(crate) struct Status {
    app: AppState,
    guard: Guard,
    history: History,
    started: Instant,
    process: ProcessInfo,
}

impl Status {
    /// The state of the routes; starts the sampler of the history.
    pub(crate) fn start(app: AppState, listen: SocketAddr, instance: &str) -> Arc<Status> {
        let config = &app.config;
        let guard = Guard::with_token(&config.metrics, app.secrets.metrics_token.clone());
        let history = History::default();
        let (metrics, push) = (app.metrics.clone(), app.push.clone());
        history::spawn_sampler(
            history.clone(),
            move || metrics.snapshot(),
            move || push.as_ref().map(|p| p.status()).unwrap_or_default(),
        );
        let process = ProcessInfo {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: 0,
            listen: listen.to_string(),
            tls: config.server.tls.is_some(),
            instance: instance.to_string(),
            config_file: config.source.as_deref().map(display_path),
        };
        Arc::new(Status {
            app,
            guard,
            history,
            started: Instant::now(),
            process,
        })
    }

    /// The view now.
    pub(crate) fn view(&self) -> StatusView {
        StatusView {
            version: VERSION,
            generated_at_unix_seconds: chrono::Utc::now().timestamp(),
            process: ProcessInfo {
                uptime_seconds: self.started.elapsed().as_secs(),
                ..self.process.clone()
            },
            health: report(&self.app),
            history: HistoryView {
                interval_seconds: history::INTERVAL.as_secs(),
                capacity: history::POINTS,
                status_families: history::FAMILIES,
                token_kinds: crate::metrics::model_work::TOKEN_KINDS,
                points: self.history.points(),
            },
        }
    }
}

fn display_path(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// `/status` and `/status.json`.
pub(crate) fn routes(status: Arc<Status>) -> Router {
    Router::new()
        .route(PATHS[0], get(page))
        .route(PATHS[1], get(json))
        .with_state(status)
}

async fn page(State(status): State<Arc<Status>>, request: Request) -> Response {
    if let Err(refused) = status
        .guard
        .check(peer_of(&request), request.headers())
        .await
    {
        return refused;
    }
    let mut response = html::render(&status.view()).into_response();
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(html::CONTENT_SECURITY_POLICY),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn json(State(status): State<Arc<Status>>, request: Request) -> Response {
    if let Err(refused) = status
        .guard
        .check(peer_of(&request), request.headers())
        .await
    {
        return refused;
    }
    let mut response = Json(status.view()).into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The page of a proxy with `destinations` remote-write destinations (never pushing:
/// not marked ready) and a full hour of history, for benchmarks. Call inside a runtime.
#[doc(hidden)]
#[derive(Debug)]
pub struct BenchPage {
    status: Arc<Status>,
    _pushers: crate::push::Pushers,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status").finish_non_exhaustive()
    }
}

impl BenchPage {
    pub fn new(destinations: usize) -> BenchPage {
        let mut text = String::new();
        for i in 0..destinations {
            text.push_str(&format!(
                "[[remote_write]]\nname = \"dest-{i}\"\nurl = \"http://user:pw@127.0.0.1:9/api/v1/write?x=1\"\n"
            ));
        }
        #[allow(clippy::expect_used)] // a constant configuration, checked by the bench itself
        let config = Arc::new(Config::parse(&text).expect("bench config"));
        #[allow(clippy::expect_used)]
        let metrics = crate::metrics::Metrics::new(&config.metrics).expect("registry");
        let source = {
            let m = metrics.clone();
            Arc::new(move || m.snapshot())
        };
        #[allow(clippy::expect_used)]
        let pushers = crate::push::Pushers::start(
            &config.remote_write,
            &[],
            source,
            metrics.registry(),
            "bench:1",
        )
        .expect("pushers");
        // A worker that never starts: the page shows it down, as a page often will.
        let worker = crate::worker::supervisor::start(
            config.worker.clone(),
            crate::worker::WorkerCommand {
                program: "/nonexistent/worker".into(),
                args: Vec::new(),
            },
        );
        let app = AppState::new(config, worker, metrics).with_push(pushers.handle());
        let status = Status::start(app, SocketAddr::from(([127, 0, 0, 1], 11435)), "bench:1");
        status.history.fill_for_bench(destinations);
        BenchPage {
            status,
            _pushers: pushers,
        }
    }

    /// The HTML of `/status`.
    pub fn render(&self) -> String {
        html::render(&self.status.view())
    }

    /// The JSON of `/status.json`.
    pub fn json(&self) -> String {
        serde_json::to_string(&self.status.view()).unwrap_or_default()
    }

    /// The registry the sampler reads.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.status.app.metrics.clone()
    }

    /// Bytes the history holds.
    pub fn history_bytes(&self) -> usize {
        self.status.history.memory_bytes()
    }
}
