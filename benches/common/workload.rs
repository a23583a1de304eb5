//! The metrics benchmarks' workload, `scripts/bench/promclient/workload.json` (made by
//! `workload.js`; prom-client's side is filled from the same file), shared by
//! `benches/metrics.rs` and `examples/push_bench.rs` (which includes this file by path).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use codex_proxy::config::MetricsConfig;
use codex_proxy::metrics::labels::method_index;
use codex_proxy::metrics::{AbortReason, ErrorCategory, FinishedRequest, Metrics, ToolBufferEvent};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct Workload {
    models: Vec<String>,
    http: Vec<HttpSet>,
    errors: Vec<ErrorSet>,
    tool_buffer: Vec<ToolSet>,
}

#[derive(Deserialize)]
struct HttpSet {
    route: String,
    method: String,
    status_family: String,
    model: String,
    observations: Vec<f64>,
}

#[derive(Deserialize)]
struct ErrorSet {
    route: String,
    method: String,
    model: String,
    category: String,
}

#[derive(Deserialize)]
struct ToolSet {
    family: String,
    output_mode: String,
    reason: String,
    count: u64,
}

impl Workload {
    pub fn load(path: &Path) -> Result<Workload, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e} (node workload.js > workload.json)", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Every request of the workload, one per observation, label set after label set,
    /// all started at `base`.
    pub fn requests(&self, base: Instant) -> Result<Vec<FinishedRequest<'_>>, String> {
        let mut out = Vec::new();
        for set in &self.http {
            let method = Method::from_bytes(set.method.as_bytes())
                .map_err(|_| format!("workload: bad method {:?}", set.method))?;
            let category = self
                .errors
                .iter()
                .find(|e| e.route == set.route && e.method == set.method && e.model == set.model)
                .filter(|_| set.status_family == "5xx")
                .map(|e| {
                    let named = ErrorCategory::ALL
                        .into_iter()
                        .find(|c| c.as_str() == e.category);
                    named.unwrap_or(ErrorCategory::Internal)
                });
            let status = match set.status_family.as_str() {
                "2xx" => StatusCode::OK,
                "3xx" => StatusCode::NOT_MODIFIED,
                "4xx" => StatusCode::NOT_FOUND,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            out.extend(set.observations.iter().map(|ms| FinishedRequest {
                route: &set.route,
                method: method_index(&method),
                status,
                // "other" stays "other": it is not on the allowlist.
                model: (set.model != "unknown").then_some(set.model.as_str()),
                category,
                started: base,
                ended: base + Duration::from_secs_f64(ms / 1e3),
                exemplar: None,
            }));
        }
        Ok(out)
    }

    /// A registry filled as prom-client's: every request recorded once, the tool-buffer
    /// counters, the worker and stream gauges.
    pub fn registry(&self) -> Result<Arc<Metrics>, String> {
        let config = MetricsConfig {
            models: self.models.clone(),
            ..MetricsConfig::default()
        };
        let metrics = Metrics::new(&config).map_err(|e| e.to_string())?;
        for request in self.requests(Instant::now())? {
            metrics.record(&request);
        }
        for t in &self.tool_buffer {
            let event = match (t.family.as_str(), t.reason.as_str()) {
                ("started", _) => ToolBufferEvent::Started,
                ("flushed", _) => ToolBufferEvent::Flushed,
                (_, "nested_open") => ToolBufferEvent::Aborted(AbortReason::NestedOpen),
                (_, "finalize") => ToolBufferEvent::Aborted(AbortReason::Finalize),
                _ => ToolBufferEvent::Aborted(AbortReason::Disconnect),
            };
            for _ in 0..t.count {
                metrics.tool_buffer(&t.output_mode, event);
            }
        }
        metrics.worker_restarts.inc();
        metrics.worker_ready.set(1);
        metrics.streams_active.set(2);
        Ok(metrics)
    }
}
