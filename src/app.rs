//! `serve`: builds the registry, the worker supervisor, the HTTP server and the pushers,
//! and shuts them down in order on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::metrics::{Metrics, MetricsError};
use crate::proxy::{self, AppState};
use crate::push::{PushError, Pushers, PushersHandle};
use crate::worker::{supervisor, WorkerCommand, WorkerStatus};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error("cannot locate the demo worker (this executable): {0}")]
    WorkerCommand(std::io::Error),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error(transparent)]
    Push(#[from] PushError),
    #[error("invalid config key `{key}`: {message}")]
    Tls { key: &'static str, message: String },
}

/// Runs the proxy until a shutdown signal.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let metrics = Metrics::from_config(&config)?;
    let addr = config.server.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    tracing::info!(
        "listening on {addr}{}",
        if config.server.tls.is_some() {
            " (TLS)"
        } else {
            ""
        }
    );

    let port = listener.local_addr().map_or(addr.port(), |a| a.port());
    let instance = default_instance(port);
    let pushers = {
        let snapshot_of = metrics.clone();
        let source = Arc::new(move || snapshot_of.snapshot());
        Pushers::start(
            &config.remote_write,
            &config.pushgateway,
            source,
            metrics.registry(),
            &instance,
        )?
    };

    let command = WorkerCommand::from_config(&config.worker).map_err(ServeError::WorkerCommand)?;
    let worker = supervisor::start(config.worker.clone(), command);
    tokio::spawn(bridge_worker_metrics(
        worker.subscribe(),
        metrics.clone(),
        FirstPush {
            push: pushers.handle(),
            at_most: Duration::from_millis(config.worker.startup_timeout_ms),
        },
    ));

    let state =
        AppState::new(config.clone(), worker.clone(), metrics.clone()).with_push(pushers.handle());
    let secrets = state.secrets.clone();
    secrets.watch();
    let (router, mut templates) = proxy::router(state.clone());
    let router = if config.status.enabled {
        templates.extend(crate::status::PATHS);
        let listen = listener.local_addr().unwrap_or(addr);
        router.merge(crate::status::routes(crate::status::Status::start(
            state, listen, &instance,
        )))
    } else {
        router
    };
    let app = crate::metrics::attach(
        router,
        templates,
        &metrics,
        &config,
        secrets.metrics_token.clone(),
    );

    let tls = match &config.server.tls {
        Some(tls) => Some(crate::tls::Tls::start(tls).map_err(|e| ServeError::Tls {
            key: e.key,
            message: e.message,
        })?),
        None => None,
    };
    let (stop_accepting, stopped) = oneshot::channel::<()>();
    let server = crate::server::serve_with_tls(
        listener,
        app,
        crate::server::Limits::from_config(&config.server),
        metrics.connections.clone(),
        tls,
        async {
            let _ = stopped.await;
        },
    );
    let mut server = tokio::spawn(server);

    tokio::select! {
        result = &mut server => {
            // The server only ends by itself on an error.
            worker.shutdown().await;
            pushers.shutdown(config.server.shutdown_grace.0).await;
            return match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(ServeError::Http(e)),
                Err(e) => Err(ServeError::Http(std::io::Error::other(e))),
            };
        }
        _ = shutdown_signal() => {}
    }
    tracing::info!("shutting down: no new connections; stopping the worker");
    let _ = stop_accepting.send(());
    // Closing the worker ends every running turn, so open streams finish promptly.
    worker.shutdown().await;
    // The worker has had its own grace; connections and then the final push get this one.
    let grace = config.server.shutdown_grace.0;
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        tracing::warn!(
            "connections still open after {} ms; closing them",
            grace.as_millis()
        );
        server.abort();
    }
    // Last, so that the final push counts every request that was served; it gets the same
    // grace again to be delivered.
    pushers.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// When the pushers may send their first snapshot: once the worker is first ready, so that
/// it shows a started proxy, or after the worker's startup timeout at the latest (where
/// nobody can scrape, a worker that never comes up must still be reported:
/// `codex_worker_ready` 0, restarts).
struct FirstPush {
    push: PushersHandle,
    at_most: Duration,
}

/// Keeps `codex_worker_ready`, `codex_worker_backoff_ms` and `codex_worker_restarts_total`
/// in step with the supervisor as it changes, not when scraped. The restart counter
/// grows by the increase of the supervisor's cumulative count. The worker's advertised
/// models become allowed `model` label values (capped, see metrics::labels); its rate
/// limits become `codex_rate_limit_*`.
///
/// The first push is released here too, and only after the gauges hold the status that
/// released it: were it a task of its own, its snapshot could fall between the worker
/// turning ready and the gauge saying so, and a healthy proxy's first push would report
/// its worker down for a whole interval.
async fn bridge_worker_metrics(
    mut status: watch::Receiver<WorkerStatus>,
    metrics: Arc<Metrics>,
    first: FirstPush,
) {
    let mut restarts_seen = 0;
    let mut first_push = Some(first.push);
    let startup_deadline = tokio::time::sleep(first.at_most);
    tokio::pin!(startup_deadline);
    let mut startup_over = false;
    loop {
        let ready = apply_worker_status(&status.borrow_and_update(), &metrics, &mut restarts_seen);
        if ready || startup_over {
            if let Some(push) = first_push.take() {
                push.mark_ready();
            }
        }
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() {
                    // The supervisor is gone: whatever the gauges say now is the truth to push.
                    if let Some(push) = first_push.take() {
                        push.mark_ready();
                    }
                    return;
                }
            }
            // Loops back to apply the latest status before releasing the push.
            () = &mut startup_deadline, if first_push.is_some() && !startup_over => {
                startup_over = true;
            }
        }
    }
}

/// Copies one worker status into the gauges; returns whether the worker is ready.
fn apply_worker_status(s: &WorkerStatus, metrics: &Metrics, restarts_seen: &mut u64) -> bool {
    metrics.worker_ready.set(i64::from(s.ready));
    metrics
        .worker_backoff_ms
        .set(i64::try_from(s.backoff_ms).unwrap_or(i64::MAX));
    if s.restarts > *restarts_seen {
        metrics.worker_restarts.inc_by(s.restarts - *restarts_seen);
        *restarts_seen = s.restarts;
    }
    metrics.labels.add_worker_models(&s.models);
    let now = crate::metrics::unix_seconds(chrono::Utc::now());
    for (index, known) in [&s.rate_limits.primary, &s.rate_limits.secondary]
        .into_iter()
        .enumerate()
    {
        if let Some(w) = known {
            metrics.rate_limits.set_window(
                index,
                w.used_percent.map(|p| p / 100.0),
                w.resets_at.map(|t| t as f64),
                w.window_duration_mins.map(|m| m as f64 * 60.0),
                now,
            );
        }
    }
    metrics.rate_limits.set_account(
        s.rate_limits.credits_balance,
        s.rate_limits.plan_type.as_deref(),
    );
    s.ready
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// The default `instance` label of pushed series and of the Pushgateway's grouping key:
/// `<hostname>:<port>`. Replicas of one deployment listen on the same unspecified address
/// (`0.0.0.0:11435`), so the listen address would make them overwrite each other; the host
/// name tells them apart (a container's is its own). `external_labels.instance` (and
/// `grouping.instance`) override it.
pub(crate) fn default_instance(port: u16) -> String {
    let uname = rustix::system::uname();
    let host = uname.nodename().to_string_lossy();
    let host = host.trim();
    let host = if host.is_empty() { "localhost" } else { host };
    format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::WorkerState;

    #[test]
    fn the_default_instance_is_the_host_name_and_port_never_an_unspecified_address() {
        let instance = default_instance(11435);
        let (host, port) = instance.rsplit_once(':').unwrap();
        assert_eq!(port, "11435");
        assert!(!host.is_empty());
        assert_ne!(host, "0.0.0.0");
        assert_ne!(host, "[::]");
        assert_eq!(host, rustix::system::uname().nodename().to_str().unwrap());
    }

    /// Pushers with no destination: only the first-push gate is observed.
    fn first_push(at_most: Duration) -> (Pushers, FirstPush) {
        let registry = prometheus::Registry::new();
        let source: Arc<dyn crate::push::SnapshotSource> = Arc::new(crate::push::Snapshot::default);
        let pushers = Pushers::start(&[], &[], source, &registry, "test:1").unwrap();
        let first = FirstPush {
            push: pushers.handle(),
            at_most,
        };
        (pushers, first)
    }

    #[tokio::test]
    async fn the_first_push_is_released_only_after_the_gauges_show_the_ready_worker() {
        let metrics = Metrics::new(&Default::default()).unwrap();
        let (tx, rx) = watch::channel(WorkerStatus::default());
        let (pushers, first) = first_push(Duration::from_secs(3600));
        let handle = pushers.handle();
        tokio::spawn(bridge_worker_metrics(rx, metrics.clone(), first));
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!handle.is_ready(), "released before the worker was ready");
        tx.send_modify(|s| {
            s.state = WorkerState::Ready;
            s.ready = true;
            s.restarts = 1;
        });
        // Whenever the gate is seen open, the gauges must already say what opened it.
        for _ in 0..10_000 {
            if handle.is_ready() {
                assert_eq!(metrics.worker_ready.get(), 1);
                assert_eq!(metrics.worker_restarts.get(), 1);
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("the first push was never released");
    }

    #[tokio::test]
    async fn a_worker_that_never_comes_up_is_pushed_after_the_startup_timeout() {
        let metrics = Metrics::new(&Default::default()).unwrap();
        let (tx, rx) = watch::channel(WorkerStatus::default());
        let (pushers, first) = first_push(Duration::from_millis(50));
        let handle = pushers.handle();
        tx.send_modify(|s| {
            s.state = WorkerState::Restarting;
            s.backoff_ms = 500;
        });
        tokio::spawn(bridge_worker_metrics(rx, metrics.clone(), first));
        for _ in 0..400 {
            if handle.is_ready() {
                assert_eq!(metrics.worker_ready.get(), 0);
                assert_eq!(metrics.worker_backoff_ms.get(), 500);
                drop(tx);
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the first push was never released for a worker that stays down");
    }

    #[tokio::test]
    async fn worker_gauges_follow_the_status_and_restarts_count_up_by_the_delta() {
        let metrics = Metrics::new(&Default::default()).unwrap();
        let (tx, rx) = watch::channel(WorkerStatus::default());
        let (_pushers, first) = first_push(Duration::from_secs(3600));
        tokio::spawn(bridge_worker_metrics(rx, metrics.clone(), first));
        let wait = |what: &'static str, check: Box<dyn Fn(&Metrics) -> bool>| {
            let metrics = metrics.clone();
            async move {
                for _ in 0..400 {
                    if check(&metrics) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                panic!("metrics never showed {what}");
            }
        };
        tx.send_modify(|s| {
            s.state = WorkerState::Ready;
            s.ready = true;
        });
        wait("ready", Box::new(|m| m.worker_ready.get() == 1)).await;
        tx.send_modify(|s| {
            s.state = WorkerState::Restarting;
            s.ready = false;
            s.backoff_ms = 800;
            s.restarts = 2;
        });
        wait(
            "backoff and restarts",
            Box::new(|m| {
                m.worker_ready.get() == 0
                    && m.worker_backoff_ms.get() == 800
                    && m.worker_restarts.get() == 2
            }),
        )
        .await;
        tx.send_modify(|s| {
            s.backoff_ms = 0;
            s.restarts = 3;
        });
        wait(
            "the next restart",
            Box::new(|m| m.worker_backoff_ms.get() == 0 && m.worker_restarts.get() == 3),
        )
        .await;
    }
}
