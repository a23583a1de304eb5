//! Shared test harness: free ports, deadline waits, the real codex-proxy binary, and the
//! real receivers (Prometheus, Pushgateway, VictoriaMetrics) started on 127.0.0.1.
//!
//! With `CODEX_PROXY_REQUIRE_SERVERS=1` (set by scripts/test.sh, so always in CI) a
//! missing server binary fails the test; without it the test prints why and returns.
#![allow(dead_code)]

pub mod pki;
pub mod scrape;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_codex-proxy");

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// Polls `probe` every 25 ms until it yields `Some`, or panics naming `what` at the deadline.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// The binary of a real server, or `None` (test skipped loudly) outside CI.
pub fn require_binary(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None if std::env::var("CODEX_PROXY_REQUIRE_SERVERS").as_deref() == Ok("1") => {
            panic!("`{name}` is required (CODEX_PROXY_REQUIRE_SERVERS=1) but not on PATH; run scripts/install-test-deps.sh")
        }
        None => {
            eprintln!("SKIPPED: `{name}` not on PATH (scripts/install-test-deps.sh installs it)");
            None
        }
    }
}

/// A Python that imports `module`: `CODEX_PROXY_PYTHON`, else the venv that
/// scripts/install-test-deps.sh makes (tests/python/.venv), else `python3`. `None` (test
/// skipped loudly) when none can, outside CI; with `CODEX_PROXY_REQUIRE_SERVERS=1` the test
/// fails instead.
pub fn python_with(module: &str) -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/.venv/bin/python");
    let candidates = std::env::var_os("CODEX_PROXY_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(venv.is_file().then_some(venv))
        .chain(Some(PathBuf::from("python3")));
    for python in candidates {
        let imports = Command::new(&python)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if imports {
            return Some(python);
        }
    }
    if std::env::var("CODEX_PROXY_REQUIRE_SERVERS").as_deref() == Ok("1") {
        panic!("a Python with `{module}` is required (CODEX_PROXY_REQUIRE_SERVERS=1); run scripts/install-test-deps.sh");
    }
    eprintln!("SKIPPED: no Python with `{module}` (scripts/install-test-deps.sh installs it)");
    None
}

/// A child process killed when dropped, with its output in a file for failure messages.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc { child, log }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, sig);
        }
    }

    /// Waits for the exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "process did not exit within {timeout:?}; log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real codex-proxy binary on a free port.
pub struct Proxy {
    pub proc: Proc,
    pub port: u16,
    pub base: String,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts `codex-proxy serve` with `config` (TOML, may be empty) and extra environment;
    /// the listen address comes from `PROXY_LISTEN`. Waits until `/livez` answers.
    pub async fn start(config: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, config, env).await
    }

    /// Same, in a given directory (to restart on the same durable queue).
    pub async fn start_in(dir: tempfile::TempDir, config: &str, env: &[(&str, &str)]) -> Proxy {
        Self::start_listening(dir, "127.0.0.1", config, env).await
    }

    /// Same, listening on `host` (e.g. `0.0.0.0`, as in a container) and a free port.
    pub async fn start_listening(
        dir: tempfile::TempDir,
        host: &str,
        config: &str,
        env: &[(&str, &str)],
    ) -> Proxy {
        let port = free_port();
        let config_path = dir.path().join("codex-proxy.toml");
        std::fs::write(&config_path, config).expect("write config");
        let mut cmd = Command::new(PROXY_BIN);
        cmd.arg("serve").arg("--config").arg(&config_path);
        cmd.current_dir(dir.path());
        cmd.env("PROXY_LISTEN", format!("{host}:{port}"));
        cmd.env("RUST_LOG", "debug");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = dir.path().join(format!("proxy-{port}.log"));
        let proc = Proc::spawn(cmd, log);
        let proxy = Proxy {
            proc,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = http();
        let url = proxy.url("/livez");
        wait_until("proxy /livez", Duration::from_secs(20), || {
            let client = client.clone();
            let url = url.clone();
            async move { client.get(&url).send().await.ok().map(|_| ()) }
        })
        .await;
        proxy
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Waits until `/readyz` answers 200 (worker handshake done).
    pub async fn wait_ready(&self) {
        let client = http();
        let url = self.url("/readyz");
        wait_until("proxy /readyz 200", Duration::from_secs(30), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// `/healthz` as JSON, once it answers.
    pub async fn healthz(&self) -> Option<serde_json::Value> {
        http()
            .get(self.url("/healthz"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    pub fn logs(&self) -> String {
        self.proc.logs()
    }

    /// Waits until the proxy's log holds `text`.
    pub async fn wait_log(&self, text: &str) {
        wait_until(
            &format!("{text:?} in the log"),
            Duration::from_secs(30),
            || async { self.logs().contains(text).then_some(()) },
        )
        .await;
    }
}

/// This machine's host name: the default `instance` is `<hostname>:<port>`.
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// A real server (Prometheus, Pushgateway, VictoriaMetrics) on a free port.
pub struct Server {
    pub proc: Option<Proc>,
    pub port: u16,
    pub base: String,
    pub dir: tempfile::TempDir,
    bin: PathBuf,
    args: Vec<String>,
    ready_path: &'static str,
}

impl Server {
    async fn launch(
        bin: PathBuf,
        args: impl Fn(u16, &Path) -> Vec<String>,
        ready_path: &'static str,
    ) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let args = args(port, dir.path());
        let mut server = Server {
            proc: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            dir,
            bin,
            args,
            ready_path,
        };
        server.start().await;
        server
    }

    /// (Re)starts the process with the same port, data and arguments.
    pub async fn start(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args).current_dir(self.dir.path());
        let name = self
            .bin
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("server");
        let log = self.dir.path().join(format!("{name}.log"));
        self.proc = Some(Proc::spawn(cmd, log));
        let client = http();
        let url = format!("{}{}", self.base, self.ready_path);
        wait_until(&format!("{name} ready"), Duration::from_secs(60), || {
            let client = client.clone();
            let url = url.clone();
            async move {
                let r = client.get(&url).send().await.ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    /// Stops the process (SIGTERM, then waits); the data directory stays for a restart.
    pub async fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.signal(Signal::TERM);
            p.wait_exit(Duration::from_secs(30)).await;
        }
    }

    pub fn logs(&self) -> String {
        self.proc.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    /// Instant query through the Prometheus-compatible HTTP API; returns `data.result`.
    pub async fn query(&self, promql: &str) -> serde_json::Value {
        let url = format!("{}/api/v1/query", self.base);
        let body: serde_json::Value = http()
            .get(&url)
            .query(&[("query", promql)])
            .send()
            .await
            .expect("query request")
            .json()
            .await
            .expect("query json");
        body["data"]["result"].clone()
    }

    /// The single value of an instant query, once the server has one.
    pub async fn scalar(&self, promql: &str) -> Option<f64> {
        let result = self.query(promql).await;
        let samples = result.as_array()?;
        if samples.len() != 1 {
            return None;
        }
        samples[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until the instant query `promql` has the single value `expected`.
    pub async fn wait_scalar(&self, promql: &str, expected: f64, timeout: Duration) {
        let what = format!("{promql} = {expected} on {}", self.base);
        wait_until(&what, timeout, || async {
            (self.scalar(promql).await == Some(expected)).then_some(())
        })
        .await;
    }
}

/// Prometheus with the remote-write receiver on; `scrape_configs` is YAML (may be empty).
pub async fn start_prometheus(scrape_configs: &str) -> Option<Server> {
    start_prometheus_with(scrape_configs, &[]).await
}

/// Same, with extra flags (e.g. `--enable-feature=native-histograms,exemplar-storage`).
pub async fn start_prometheus_with(scrape_configs: &str, flags: &[&str]) -> Option<Server> {
    let bin = require_binary("prometheus")?;
    let flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    let scrape = scrape_configs.to_string();
    Some(
        Server::launch(
            bin,
            move |port, dir| {
                let cfg = dir.join("prometheus.yml");
                let body = format!(
                    "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{}",
                    if scrape.is_empty() {
                        String::new()
                    } else {
                        format!("scrape_configs:\n{scrape}\n")
                    }
                );
                std::fs::write(&cfg, body).expect("prometheus.yml");
                vec![
                    format!("--config.file={}", cfg.display()),
                    format!("--storage.tsdb.path={}", dir.join("data").display()),
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    "--web.enable-remote-write-receiver".into(),
                    "--log.level=warn".into(),
                ]
                .into_iter()
                .chain(flags.iter().cloned())
                .collect()
            },
            "/-/ready",
        )
        .await,
    )
}

pub async fn start_pushgateway() -> Option<Server> {
    let bin = require_binary("prometheus-pushgateway")?;
    Some(
        Server::launch(
            bin,
            |port, dir| {
                vec![
                    format!("--web.listen-address=127.0.0.1:{port}"),
                    format!("--persistence.file={}", dir.join("pgw.data").display()),
                    "--log.level=warn".into(),
                ]
            },
            "/-/ready",
        )
        .await,
    )
}

pub async fn start_victoria_metrics() -> Option<Server> {
    let bin = require_binary("victoria-metrics")?;
    Some(
        Server::launch(
            bin,
            |port, dir| {
                vec![
                    format!("-httpListenAddr=127.0.0.1:{port}"),
                    format!("-storageDataPath={}", dir.join("vm").display()),
                    "-loggerLevel=WARN".into(),
                    "-search.latencyOffset=0s".into(),
                ]
            },
            "/health",
        )
        .await,
    )
}

/// Sum of the counter and gauge values of family `name` over the series carrying every
/// label pair in `labels` (0 when none does).
pub fn registry_value(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| m.get_counter().get_value() + m.get_gauge().get_value())
        .sum()
}
