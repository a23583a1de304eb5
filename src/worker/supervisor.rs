//! Spawns the worker, performs the `initialize`/`initialized` handshake, watches the
//! child, and restarts it with capped exponential backoff until `restart_max` failed
//! starts in a row; shuts it down gently (stdin closed, grace period, then kill).

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::{watch, Semaphore};

use super::rpc::Rpc;
use super::{Shared, WorkerHandle, WorkerState, WorkerStatus};
use crate::config::WorkerConfig;

/// The program and arguments that start one worker.
#[derive(Debug, Clone)]
pub(crate) struct WorkerCommand {
    pub(crate) program: std::path::PathBuf,
    pub(crate) args: Vec<String>,
}

impl WorkerCommand {
    /// The configured command, or this same binary's `demo-worker` when none is set.
    pub(crate) fn from_config(config: &WorkerConfig) -> std::io::Result<WorkerCommand> {
        match config.command.split_first() {
            Some((program, args)) => Ok(WorkerCommand {
                program: program.into(),
                args: args.to_vec(),
            }),
            None => Ok(WorkerCommand {
                program: std::env::current_exe()?,
                args: vec!["demo-worker".to_string()],
            }),
        }
    }
}

/// Starts supervising; the first launch begins at once.
pub(crate) fn start(config: WorkerConfig, command: WorkerCommand) -> WorkerHandle {
    let (status, _) = watch::channel(WorkerStatus::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        status,
        connection: Mutex::new(None),
        slots: Arc::new(Semaphore::new(config.max_concurrency)),
        max_concurrency: config.max_concurrency,
        shutdown,
        supervisor: Mutex::new(None),
    });
    let task = tokio::spawn(supervise(shared.clone(), config, command, shutdown_rx));
    *super::lock(&shared.supervisor) = Some(task);
    WorkerHandle { shared }
}

/// A worker whose program does not exist, so it never starts: for the tests of what
/// needs a handle but no worker (routing, admission: slots are handed out all the same).
#[cfg(test)]
pub(crate) fn start_never_ready(config: WorkerConfig) -> WorkerHandle {
    start(
        config,
        WorkerCommand {
            program: "/nonexistent/worker".into(),
            args: Vec::new(),
        },
    )
}

/// Delay before restart number `failures` (1-based): initial, doubling, capped.
pub(crate) fn backoff_delay(config: &WorkerConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(63);
    let ms = config
        .backoff_initial_ms
        .saturating_mul(1u64 << doublings)
        .min(config.backoff_max_ms);
    Duration::from_millis(ms)
}

/// How one launch ended.
enum Ended {
    Shutdown,
    Failed {
        state: WorkerState,
        error: String,
        was_ready: bool,
    },
}

async fn supervise(
    shared: Arc<Shared>,
    config: WorkerConfig,
    command: WorkerCommand,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        let (state, error, was_ready) =
            match run_once(&shared, &config, &command, &mut shutdown).await {
                Ended::Shutdown => return,
                Ended::Failed {
                    state,
                    error,
                    was_ready,
                } => (state, error, was_ready),
            };
        // A worker that reached ready earns a fresh backoff sequence.
        failures = if was_ready { 1 } else { failures + 1 };
        tracing::warn!("worker stopped: {error}");
        if failures > config.restart_max {
            tracing::error!(
                "worker failed {failures} times in a row; giving up (worker.restart_max = {})",
                config.restart_max
            );
            shared.update(|s| {
                s.state = WorkerState::RestartLimitExceeded;
                s.consecutive_failures = failures;
                s.last_error = Some(error);
                s.backoff_ms = 0;
            });
            return;
        }
        let delay = backoff_delay(&config, failures);
        shared.update(|s| {
            s.state = state;
            s.consecutive_failures = failures;
            s.last_error = Some(error);
        });
        shared.update(|s| {
            s.state = WorkerState::Restarting;
            s.backoff_ms = delay.as_millis() as u64;
        });
        tracing::info!("restarting the worker in {} ms", delay.as_millis());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping(&mut shutdown) => return,
        }
        shared.update(|s| {
            s.restarts += 1;
            s.backoff_ms = 0;
        });
    }
}

/// Launches one worker and serves it until it exits or shutdown begins.
async fn run_once(
    shared: &Arc<Shared>,
    config: &WorkerConfig,
    command: &WorkerCommand,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    if *shutdown.borrow() {
        return Ended::Shutdown;
    }
    shared.update(|s| {
        s.state = WorkerState::Launching;
        s.models.clear();
    });
    let mut child = match spawn(command, &config.log_level) {
        Ok(child) => child,
        Err(e) => {
            return Ended::Failed {
                state: WorkerState::Exited,
                error: format!("cannot start `{}`: {e}", command.program.display()),
                was_ready: false,
            }
        }
    };
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill().await;
        return Ended::Failed {
            state: WorkerState::Exited,
            error: "the worker's stdio could not be captured".to_string(),
            was_ready: false,
        };
    };
    let transport = Rpc::start(stdout, stdin);
    tokio::spawn(follow_account(
        shared.clone(),
        transport.subscribe_account(),
    ));
    shared.update(|s| s.state = WorkerState::HandshakePending);

    let limit = Duration::from_millis(config.handshake_timeout_ms.min(config.startup_timeout_ms));
    tokio::select! {
        outcome = tokio::time::timeout(limit, handshake(&transport)) => {
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("no answer to `initialize` within {} ms", limit.as_millis())),
            };
            if let Some(error) = error {
                let _ = child.kill().await;
                let exit = child.wait().await.map(|s| format!(" ({s})")).unwrap_or_default();
                return Ended::Failed {
                    state: WorkerState::HandshakeFailed,
                    error: format!("handshake failed: {error}{exit}"),
                    was_ready: false,
                };
            }
        }
        _ = stopping(shutdown) => {
            stop_child(child, &transport, config.shutdown_grace_ms).await;
            return Ended::Shutdown;
        }
    }

    shared.set_connection(Some(transport.clone()));
    shared.update(|s| {
        s.state = WorkerState::Ready;
        s.consecutive_failures = 0;
        s.last_error = None;
    });
    tracing::info!("worker ready");
    tokio::spawn(fetch_models(
        shared.clone(),
        transport.clone(),
        Duration::from_millis(config.handshake_timeout_ms),
    ));

    let ended = tokio::select! {
        status = child.wait() => {
            let error = match status {
                Ok(s) => format!("the worker exited ({s})"),
                Err(e) => format!("cannot wait for the worker: {e}"),
            };
            Ended::Failed { state: WorkerState::Exited, error, was_ready: true }
        }
        _ = transport.closed() => {
            // Usually the process is exiting and its stdout closed first: report its
            // status when it comes promptly; otherwise the worker is wedged.
            let error = match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                Ok(Ok(s)) => format!("the worker exited ({s})"),
                _ => {
                    let _ = child.kill().await;
                    "the worker closed its stdout".to_string()
                }
            };
            Ended::Failed { state: WorkerState::Exited, error, was_ready: true }
        }
        _ = stopping(shutdown) => {
            shared.set_connection(None);
            stop_child(child, &transport, config.shutdown_grace_ms).await;
            return Ended::Shutdown;
        }
    };
    shared.set_connection(None);
    ended
}

/// Resolves once shutdown has begun (the guard `wait_for` returns must not live across
/// an await: it is not `Send`).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Starts the worker with `RUST_LOG` set to `log_level` (removed when empty): the
/// proxy's own filter, meant for the proxy, would otherwise reach the worker too.
fn spawn(command: &WorkerCommand, log_level: &str) -> std::io::Result<Child> {
    let mut cmd = Command::new(&command.program);
    if log_level.is_empty() {
        cmd.env_remove("RUST_LOG");
    } else {
        cmd.env("RUST_LOG", log_level);
    }
    cmd.args(&command.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // The worker's own log lines join the proxy's stderr.
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
}

async fn handshake(transport: &Rpc) -> Result<(), String> {
    let params = json!({
        "clientInfo": {
            "name": "codex-proxy",
            "title": "codex-proxy",
            "version": env!("CARGO_PKG_VERSION"),
        },
        "capabilities": null,
    });
    transport
        .request("initialize", params)
        .await
        .map_err(|e| e.to_string())?;
    transport
        .notify("initialized", json!({}))
        .map_err(|e| e.to_string())
}

/// Keeps the status's rate limits up to date from the worker's reports, until the
/// connection ends.
async fn follow_account(
    shared: Arc<Shared>,
    mut notifications: tokio::sync::mpsc::UnboundedReceiver<super::rpc::Notification>,
) {
    while let Some(n) = notifications.recv().await {
        if n.method == "account/rateLimits/updated" {
            shared.update(|s| {
                s.rate_limits.merge(&n.params);
            });
        }
    }
}

/// Best effort: `/v1/models` and the model label allowlist use what the worker lists.
async fn fetch_models(shared: Arc<Shared>, transport: Rpc, limit: Duration) {
    let listed = tokio::time::timeout(limit, transport.request("model/list", json!({}))).await;
    let models: Vec<String> = match listed {
        Ok(Ok(result)) => result
            .get("data")
            .and_then(Value::as_array)
            .map(|models| {
                models
                    .iter()
                    .filter_map(|m| m.get("id").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        Ok(Err(e)) => {
            tracing::info!("the worker did not list its models: {e}");
            return;
        }
        Err(_) => {
            tracing::info!("the worker did not list its models in time");
            return;
        }
    };
    shared.update(|s| {
        if s.state == WorkerState::Ready {
            s.models = models;
        }
    });
}

/// Closes stdin (the app-server exits on EOF), waits the grace period, then kills.
async fn stop_child(mut child: Child, transport: &Rpc, grace_ms: u64) {
    transport.close_stdin();
    match tokio::time::timeout(Duration::from_millis(grace_ms), child.wait()).await {
        Ok(_) => tracing::info!("worker exited"),
        Err(_) => {
            tracing::warn!("worker still running after {grace_ms} ms; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> WorkerConfig {
        toml::from_str(toml).unwrap()
    }

    fn sh(script: &str) -> WorkerCommand {
        WorkerCommand {
            program: "sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    /// Answers `initialize` (the transport's first id is 1), then waits for EOF on stdin.
    const POLITE_WORKER: &str =
        r#"read line; echo '{"jsonrpc":"2.0","id":1,"result":{}}'; cat >/dev/null"#;

    async fn wait_state(handle: &WorkerHandle, state: WorkerState) -> WorkerStatus {
        let mut rx = handle.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(20), async {
            rx.wait_for(|s| s.state == state).await.map(|s| s.clone())
        })
        .await;
        match waited {
            Ok(Ok(status)) => status,
            _ => panic!("never reached {state:?}; last status {:?}", handle.status()),
        }
    }

    #[test]
    fn backoff_doubles_from_initial_and_stops_at_the_cap() {
        let c = config("backoff_initial_ms = 50\nbackoff_max_ms = 300");
        let delays: Vec<u64> = (1..=5)
            .map(|n| backoff_delay(&c, n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [50, 100, 200, 300, 300]);
        assert_eq!(backoff_delay(&c, u32::MAX).as_millis(), 300);
    }

    #[tokio::test]
    async fn a_worker_that_answers_initialize_becomes_ready_and_stops_on_stdin_close() {
        let handle = start(config("shutdown_grace_ms = 10000"), sh(POLITE_WORKER));
        let status = wait_state(&handle, WorkerState::Ready).await;
        assert!(status.ready);
        assert_eq!(status.restarts, 0);
        // `cat` ends at EOF, long before the grace period; the shutdown returns then.
        tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
            .await
            .expect("closing stdin should end the worker within the grace period");
        assert_eq!(handle.status().state, WorkerState::ShuttingDown);
        assert!(!handle.status().ready);
    }

    #[tokio::test]
    async fn a_worker_that_ignores_stdin_close_is_killed_after_the_grace_period() {
        let stubborn = r#"read line; echo '{"jsonrpc":"2.0","id":1,"result":{}}'; exec sleep 600"#;
        let handle = start(config("shutdown_grace_ms = 50"), sh(stubborn));
        wait_state(&handle, WorkerState::Ready).await;
        tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
            .await
            .expect("the worker should be killed after the grace period");
    }

    #[tokio::test]
    async fn failed_starts_back_off_then_give_up_at_restart_max() {
        let c = config("backoff_initial_ms = 1\nbackoff_max_ms = 4\nrestart_max = 3");
        let handle = start(c, sh("exit 3"));
        let status = wait_state(&handle, WorkerState::RestartLimitExceeded).await;
        assert_eq!(status.restarts, 3);
        assert_eq!(status.consecutive_failures, 4);
        assert!(!status.ready);
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("handshake failed"), "{error}");
    }

    #[tokio::test]
    async fn a_silent_worker_fails_its_handshake_by_timeout() {
        let c = config("handshake_timeout_ms = 50\nrestart_max = 0");
        let handle = start(c, sh("exec sleep 600"));
        let status = wait_state(&handle, WorkerState::RestartLimitExceeded).await;
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("within 50 ms"), "{error}");
    }

    #[tokio::test]
    async fn a_missing_program_is_reported_not_panicked() {
        let c = config("restart_max = 0");
        let command = WorkerCommand {
            program: "/nonexistent/codex".into(),
            args: vec![],
        };
        let handle = start(c, command);
        let status = wait_state(&handle, WorkerState::RestartLimitExceeded).await;
        let error = status.last_error.unwrap_or_default();
        assert!(error.contains("cannot start"), "{error}");
    }

    #[tokio::test]
    async fn a_worker_that_exits_after_ready_is_restarted_with_the_initial_backoff() {
        // Ready, then exits as soon as stdin delivers anything more (the `initialized`).
        let flaky = r#"read line; echo '{"jsonrpc":"2.0","id":1,"result":{}}'; read more; exit 1"#;
        let c = config("backoff_initial_ms = 20000\nbackoff_max_ms = 40000\nrestart_max = 5");
        let handle = start(c, sh(flaky));
        let status = wait_state(&handle, WorkerState::Restarting).await;
        assert_eq!(status.backoff_ms, 20000);
        assert_eq!(status.consecutive_failures, 1);
        assert!(status.last_error.unwrap_or_default().contains("exited"));
        handle.shutdown().await;
    }

    #[tokio::test]
    async fn the_worker_gets_its_own_log_level_not_the_proxys() {
        use tokio::io::AsyncReadExt;
        // Whatever the proxy's environment holds, the child sees only `log_level`.
        for (level, expected) in [
            ("warn", "warn"),
            ("codex_core=info", "codex_core=info"),
            ("", "<unset>"),
        ] {
            let mut child = spawn(&sh(r#"printf %s "${RUST_LOG-<unset>}""#), level).unwrap();
            let mut out = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .await
                .unwrap();
            assert_eq!(out, expected);
            child.wait().await.unwrap();
        }
    }
}
