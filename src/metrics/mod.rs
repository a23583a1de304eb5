//! The one metrics registry of the process, the label rules, the HTTP middleware and
//! the guarded `/metrics` route. Names, types and labels are a contract (docs/metrics.md):
//! dashboards and alerts built for the Node proxy query them.

pub(crate) mod connections;
pub mod cost;
pub mod exemplar;
pub(crate) mod http;
mod label_map;
pub mod labels;
pub(crate) mod middleware;
pub mod model_work;
pub(crate) mod native;
#[cfg(target_os = "linux")]
mod process;
pub(crate) mod rate_limits;
pub mod scrape;
pub(crate) mod summary;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::Router;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::budget::Budgets;
use crate::config::{Config, MetricsConfig};
use crate::exposition::snapshot::Snapshot;
use connections::ConnectionMetrics;
pub use http::FinishedRequest;
use http::HttpFamilies;
pub(crate) use labels::LabelRules;
pub use middleware::RequestContext;
use model_work::ModelWork;
pub use model_work::{FinishedTurn, Outcome, TokenCounts};

/// Latency buckets in milliseconds, built around the 1500 ms p95 budget.
pub(crate) const LATENCY_BUCKETS_MS: [f64; 9] = [
    50.0, 100.0, 200.0, 400.0, 800.0, 1200.0, 2000.0, 5000.0, 10000.0,
];
/// Quantiles of the latency summary.
pub(crate) const SUMMARY_QUANTILES: [f64; 4] = [0.5, 0.9, 0.95, 0.99];

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric: {0}")]
    Register(#[from] prometheus::Error),
}

/// Raw model name a handler attaches to its response (as an extension); the middleware
/// turns it into a bounded label value with [`LabelRules`].
#[derive(Debug, Clone)]
pub(crate) struct ModelLabel(pub String);

/// Error category a handler attaches to a 5xx response (as an extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCategory {
    WorkerNotReady,
    WorkerBusy,
    WorkerError,
    Timeout,
    Maintenance,
    Internal,
}

impl ErrorCategory {
    /// Every category, in declaration order (`ALL[c as usize] == c`).
    pub const ALL: [ErrorCategory; 6] = [
        ErrorCategory::WorkerNotReady,
        ErrorCategory::WorkerBusy,
        ErrorCategory::WorkerError,
        ErrorCategory::Timeout,
        ErrorCategory::Maintenance,
        ErrorCategory::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCategory::WorkerNotReady => "worker_not_ready",
            ErrorCategory::WorkerBusy => "worker_busy",
            ErrorCategory::WorkerError => "worker_error",
            ErrorCategory::Timeout => "timeout",
            ErrorCategory::Maintenance => "maintenance",
            ErrorCategory::Internal => "internal",
        }
    }
}

/// What happened to a `<use_tool>` block in the tool buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolBufferEvent {
    /// An opener was seen and text is being held back.
    Started,
    /// The block closed and was emitted once.
    Flushed,
    /// Held text was flushed verbatim without a closed block.
    Aborted(AbortReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    NestedOpen,
    Finalize,
    Disconnect,
}

impl AbortReason {
    /// Every reason, for the series declared at start.
    pub(crate) const ALL: [AbortReason; 3] = [
        AbortReason::NestedOpen,
        AbortReason::Finalize,
        AbortReason::Disconnect,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AbortReason::NestedOpen => "nested_open",
            AbortReason::Finalize => "finalize",
            AbortReason::Disconnect => "disconnect",
        }
    }
}

/// Every family of the proxy path: the HTTP families in [`HttpFamilies`], the others in
/// one application-owned prometheus registry (which the pushers add their own to).
pub struct Metrics {
    registry: Registry,
    http: HttpFamilies,
    pub(crate) labels: LabelRules,
    pub worker_restarts: IntCounter,
    pub worker_backoff_ms: IntGauge,
    pub worker_ready: IntGauge,
    pub streams_active: IntGauge,
    /// The streams open now, counted before the gauge goes up and after it goes down, so
    /// that its high-water mark bounds every value the gauge ever had.
    streams_open: AtomicUsize,
    /// The most streams open at once since start (`/healthz` `streams.peak`).
    streams_peak: AtomicUsize,
    pub(crate) tool_buffer_started: IntCounterVec,
    pub(crate) tool_buffer_flushed: IntCounterVec,
    pub(crate) tool_buffer_aborted: IntCounterVec,
    pub(crate) maintenance_mode: IntGauge,
    /// Tokens, turns, time to first token, the admission queue, rate limits.
    pub(crate) model_work: ModelWork,
    /// The budgets' spend and gauges; turns add their cost here.
    pub(crate) budgets: Budgets,
    pub(crate) rate_limits: rate_limits::RateLimitGauges,
    /// Open and refused connections, recorded by the accept loop (crate::server).
    pub(crate) connections: ConnectionMetrics,
}

impl std::fmt::Debug for Metrics {
    /// The families are read through `/metrics`; this only says which registry it is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The registry for a proxy without API keys (every turn is `key="none"`).
    pub fn new(config: &MetricsConfig) -> Result<Arc<Metrics>, MetricsError> {
        let whole = Config {
            metrics: config.clone(),
            ..Config::default()
        };
        Metrics::build(&whole, config, cost::Prices::default())
    }

    /// The registry for the whole configuration: the `key` label takes the configured key
    /// names, and the priced models are allowed `model` label values (their cost would
    /// otherwise be `other`).
    pub fn from_config(config: &Config) -> Result<Arc<Metrics>, MetricsError> {
        let mut metrics = config.metrics.clone();
        for model in config.pricing.keys() {
            if !metrics.models.contains(model) {
                metrics.models.push(model.clone());
            }
        }
        let prices = cost::Prices::new(&config.pricing);
        Metrics::build(config, &metrics, prices)
    }

    /// `whole` for the keys and budgets, `config` (its `[metrics]`, priced models allowed)
    /// for the rest.
    fn build(
        whole: &Config,
        config: &MetricsConfig,
        prices: cost::Prices,
    ) -> Result<Arc<Metrics>, MetricsError> {
        let keys = whole.key_names();
        let registry = Registry::new();
        let worker_restarts = IntCounter::new(
            "codex_worker_restarts_total",
            "Worker restarts since the proxy started.",
        )?;
        let worker_backoff_ms = IntGauge::new(
            "codex_worker_backoff_ms",
            "Delay before the pending worker restart in milliseconds, 0 when none is pending.",
        )?;
        let worker_ready = IntGauge::new(
            "codex_worker_ready",
            "1 when the worker has completed its handshake and accepts turns.",
        )?;
        let streams_active = IntGauge::new("codex_streams_active", "SSE streams being served.")?;
        let tb = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["output_mode", "reason"])
        };
        let tool_buffer_started = tb(
            "codex_tool_buffer_started_total",
            "Tool blocks whose opener started buffering.",
        )?;
        let tool_buffer_flushed = tb(
            "codex_tool_buffer_flushed_total",
            "Tool blocks emitted whole after their closer.",
        )?;
        let tool_buffer_aborted = tb(
            "codex_tool_buffer_aborted_total",
            "Buffered tool text flushed verbatim without a closed block.",
        )?;
        let maintenance_mode = IntGauge::new(
            "codex_maintenance_mode",
            "1 while maintenance mode answers /v1/* with 503.",
        )?;

        registry.register(Box::new(worker_restarts.clone()))?;
        registry.register(Box::new(worker_backoff_ms.clone()))?;
        registry.register(Box::new(worker_ready.clone()))?;
        registry.register(Box::new(streams_active.clone()))?;
        registry.register(Box::new(tool_buffer_started.clone()))?;
        registry.register(Box::new(tool_buffer_flushed.clone()))?;
        registry.register(Box::new(tool_buffer_aborted.clone()))?;
        registry.register(Box::new(maintenance_mode.clone()))?;
        #[cfg(target_os = "linux")]
        registry.register(Box::new(process::ProcessCollector::new()?))?;
        // Every series of a closed label set exists from the start at 0, so that `rate()`
        // and alerts see 0 before the first event rather than no data. Only the
        // `obsidian-xml` mode runs the tool buffer.
        let mode = labels::output_mode("obsidian-xml");
        tool_buffer_started.with_label_values(&[mode, "open"]);
        tool_buffer_flushed.with_label_values(&[mode, "closed"]);
        for reason in AbortReason::ALL {
            tool_buffer_aborted.with_label_values(&[mode, reason.as_str()]);
        }

        let labels = LabelRules::new(&config.models);
        let model_work = ModelWork::new(&registry, &labels, &config.models, &keys, prices)?;
        let budgets = Budgets::new(whole, &registry, chrono::Utc::now())?;
        let rate_limits = rate_limits::RateLimitGauges::new(&registry)?;
        let connections = ConnectionMetrics::new(&registry)?;
        Ok(Arc::new(Metrics {
            registry,
            http: HttpFamilies::new(labels.model_value_bound(), config.summary_window.0),
            labels,
            worker_restarts,
            worker_backoff_ms,
            worker_ready,
            streams_active,
            streams_open: AtomicUsize::new(0),
            streams_peak: AtomicUsize::new(0),
            tool_buffer_started,
            tool_buffer_flushed,
            tool_buffer_aborted,
            maintenance_mode,
            model_work,
            budgets,
            rate_limits,
            connections,
        }))
    }

    /// The registry, for other parts (the pusher's self-metrics) to register into.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Records one finished request in the HTTP families (what the middleware does when
    /// a response body ends).
    pub fn record(&self, request: &FinishedRequest<'_>) {
        self.http
            .record(request, self.labels.model_slot(request.model));
    }

    /// A snapshot of every family, sorted by name: what `/metrics` renders and what the
    /// pushers send.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        self.http.snapshot(std::time::Instant::now(), &mut snapshot);
        // A budget period or a rate-limit window that ended shows as such in this
        // snapshot, whether or not anything happened since.
        let now = chrono::Utc::now();
        self.budgets.refresh(now);
        self.rate_limits.refresh(unix_seconds(now));
        // The registry's families with native buckets and exemplars attached.
        let mut registry = self.model_work.snapshot(&self.registry);
        self.budgets.declare_empty(&mut registry);
        self.rate_limits.declare_empty(&mut registry);
        snapshot.merge(registry);
        snapshot
    }

    pub fn tool_buffer(&self, output_mode: &str, event: ToolBufferEvent) {
        let mode = labels::output_mode(output_mode);
        match event {
            ToolBufferEvent::Started => self
                .tool_buffer_started
                .with_label_values(&[mode, "open"])
                .inc(),
            ToolBufferEvent::Flushed => self
                .tool_buffer_flushed
                .with_label_values(&[mode, "closed"])
                .inc(),
            ToolBufferEvent::Aborted(r) => self
                .tool_buffer_aborted
                .with_label_values(&[mode, r.as_str()])
                .inc(),
        }
    }

    /// Records one ended turn in the model-work families (once per turn).
    /// Returns the turn's cost in USD, when its model is priced and it reported usage.
    pub fn record_turn(&self, turn: &FinishedTurn<'_>) -> Option<f64> {
        if let Some(limit) = turn.limit_reached {
            self.rate_limits.limit_reached(limit);
        }
        let cost = self.model_work.record(&self.labels, turn)?;
        if self.budgets.covers(turn.key) {
            self.budgets.add(turn.key, cost, chrono::Utc::now());
        }
        Some(cost)
    }

    pub(crate) fn set_maintenance(&self, on: bool) {
        self.maintenance_mode.set(on as i64);
    }

    /// Counts one SSE stream until the guard drops (stream ended, failed or client gone).
    pub(crate) fn stream_guard(self: &Arc<Self>) -> StreamGuard {
        let open = self.streams_open.fetch_add(1, Ordering::AcqRel) + 1;
        self.streams_peak.fetch_max(open, Ordering::AcqRel);
        self.streams_active.inc();
        StreamGuard(self.clone())
    }

    /// The most SSE streams open at once since start: `codex_streams_active` never read
    /// more than this.
    pub(crate) fn streams_peak(&self) -> usize {
        self.streams_peak.load(Ordering::Acquire)
    }
}

/// Adds the metrics to the application's router, whose route templates are `templates`
/// (the values of the `route` label), and wraps the router, fallback included, in the
/// recording service.
///
/// - `GET /metrics` exists only when `metrics.enabled` (the default; otherwise it is a 404
///   like any unknown path), admitting what `token` (inline or from its file) and the
///   guard rules admit. The server must put the peer's `ConnectInfo<SocketAddr>` into
///   each request (crate::server does) for the loopback rule to see it; without it no
///   scrape counts as loopback.
/// - Requests are recorded only when something reads them: `/metrics` is enabled or a
///   push destination is configured.
pub(crate) fn attach(
    router: Router,
    mut templates: Vec<&'static str>,
    metrics: &Arc<Metrics>,
    config: &Config,
    token: crate::secrets::Secret,
) -> middleware::Record<Router> {
    let router = if config.metrics.enabled {
        templates.push(scrape::SCRAPE_PATH);
        router.route(
            scrape::SCRAPE_PATH,
            scrape::scrape_route(metrics.clone(), &config.metrics, token),
        )
    } else {
        router
    };
    let read =
        config.metrics.enabled || !config.remote_write.is_empty() || !config.pushgateway.is_empty();
    if !read {
        return middleware::Record::off(router);
    }
    middleware::Record::new(
        router,
        metrics.clone(),
        labels::RouteTemplates::new(templates),
    )
}

/// `now` in Unix seconds, as the worker's `resetsAt` is.
pub(crate) fn unix_seconds(now: chrono::DateTime<chrono::Utc>) -> f64 {
    now.timestamp_millis() as f64 / 1000.0
}

/// Decrements `codex_streams_active` when dropped.
pub(crate) struct StreamGuard(Arc<Metrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams_active.dec();
        self.0.streams_open.fetch_sub(1, Ordering::AcqRel);
    }
}
