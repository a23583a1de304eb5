//! The pusher: schedule → snapshot → encode → durable queue → transport.
//!
//! It knows nothing of the proxy or the worker: it is handed a way to take a registry
//! snapshot (`Vec<MetricFamily>`) and a registry for its own `codex_push_*` families,
//! and delivers snapshots to each configured destination.

pub mod queue;
pub mod self_metrics;

use prometheus::proto::MetricFamily;

/// What the pusher delivers: one gather() of the registry.
pub type Snapshot = Vec<MetricFamily>;

/// Where snapshots come from; the application passes a closure over its registry.
pub trait SnapshotSource: Send + Sync + 'static {
    fn snapshot(&self) -> Snapshot;
}

impl<F> SnapshotSource for F
where
    F: Fn() -> Snapshot + Send + Sync + 'static,
{
    fn snapshot(&self) -> Snapshot {
        self()
    }
}
