//! Configuration: a TOML file (every key optional), then environment variables on top.
//!
//! Each default is written once, on its field, through `#[serde(default = ...)]`; the
//! `Default` impls deserialize an empty table so they cannot drift from the fields.
//! Every error names the key (`remote_write[0].interval`) or the environment variable.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration problem; `key` is the dotted path of the offending key or the env var.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.to_string(),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub worker: WorkerConfig,
    #[serde(default)]
    pub streams: StreamsConfig,
    #[serde(default)]
    pub maintenance: MaintenanceConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Zero or more remote-write destinations, each with its own queue.
    #[serde(default)]
    pub remote_write: Vec<RemoteWriteConfig>,
    /// Zero or more Pushgateway destinations.
    #[serde(default)]
    pub pushgateway: Vec<PushgatewayConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "d::listen")]
    pub listen: SocketAddr,
    /// When non-empty, `/v1/*` requires `Authorization: Bearer <api_key>`.
    #[serde(default, serialize_with = "mask")]
    pub api_key: String,
    /// Largest accepted request body; larger bodies get 413.
    #[serde(default = "d::max_body")]
    pub max_body_bytes: ByteSize,
    /// Longest a non-streaming completion may take before it fails with 504.
    #[serde(default = "d::request_timeout")]
    pub request_timeout: HumanDuration,
    /// Bearer token for `POST /internal/maintenance`; empty means loopback-only.
    #[serde(default, serialize_with = "mask")]
    pub admin_token: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Worker command line, e.g. `["codex", "app-server"]`; empty runs the built-in demo worker.
    #[serde(default)]
    pub command: Vec<String>,
    /// Turns one worker runs at once; beyond it a request gets a retryable 429.
    #[serde(default = "d::worker_max_concurrency")]
    pub max_concurrency: usize,
    /// First restart delay; it doubles after each failed start.
    #[serde(default = "d::backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Cap of the restart delay.
    #[serde(default = "d::backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Restarts without reaching ready in between before the supervisor gives up.
    #[serde(default = "d::restart_max")]
    pub restart_max: u32,
    /// Time from spawn to a ready worker (spawn plus handshake).
    #[serde(default = "d::startup_timeout_ms")]
    pub startup_timeout_ms: u64,
    /// Time the worker has to answer `initialize`.
    #[serde(default = "d::handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// After closing the worker's stdin on shutdown, how long to wait before killing it.
    #[serde(default = "d::shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// SSE streams served at once; beyond it: 429.
    #[serde(default = "d::streams_max")]
    pub max_concurrency: usize,
    /// Interval of `: keepalive` comments on an SSE stream.
    #[serde(default = "d::keepalive_ms")]
    pub keepalive_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Start in maintenance mode: `/v1/*` answers 503 with `Retry-After`.
    #[serde(default)]
    pub enabled: bool,
    /// Seconds sent in `Retry-After` while in maintenance.
    #[serde(default = "d::retry_after_secs")]
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics`; when false the route does not exist (404).
    #[serde(default)]
    pub enabled: bool,
    /// Bearer token that admits a scrape from anywhere.
    #[serde(default, serialize_with = "mask")]
    pub token: String,
    /// Admit scrapes from 127.0.0.0/8 and ::1 without a token.
    #[serde(default = "d::yes")]
    pub allow_loopback: bool,
    /// Admit everyone (development only).
    #[serde(default)]
    pub allow_unauth: bool,
    /// Allowlist for the `model` label; other values become `other`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed (e.g. the ForwardAuth proxy in front).
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Sliding window of the latency summary.
    #[serde(default = "d::summary_window")]
    pub summary_window: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    /// Name used in the `destination` label and logs; default: `remote_write[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Receiver URL, e.g. `http://127.0.0.1:9090/api/v1/write`.
    pub url: String,
    /// Push period; ignored when `cron` is set.
    #[serde(default = "d::push_interval")]
    pub interval: HumanDuration,
    /// 6-field cron expression (with seconds) instead of `interval`.
    #[serde(default)]
    pub cron: Option<String>,
    /// Random delay added to each scheduled push, up to this much.
    #[serde(default = "d::zero")]
    pub jitter: HumanDuration,
    /// Timeout of one HTTP request.
    #[serde(default = "d::push_timeout")]
    pub timeout: HumanDuration,
    /// Extra request headers (e.g. `X-Scope-OrgID`); they never override the protocol headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Labels added to every series; `job` and `instance` are defaulted when absent.
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// Durable queue directory; empty keeps the queue in memory only.
    #[serde(default)]
    pub queue_dir: Option<PathBuf>,
    /// Cap of the queue (disk or memory); past it the oldest requests are dropped.
    #[serde(default = "d::max_queue_bytes")]
    pub max_queue_bytes: ByteSize,
    /// Series per request; larger snapshots are split into ordered requests.
    #[serde(default = "d::max_series_per_request")]
    pub max_series_per_request: usize,
    /// First retry delay.
    #[serde(default = "d::min_backoff")]
    pub min_backoff: HumanDuration,
    /// Cap of the retry delay.
    #[serde(default = "d::max_backoff")]
    pub max_backoff: HumanDuration,
    /// Retry requests answered 429 (honouring `Retry-After`); when false they are dropped.
    #[serde(default = "d::yes")]
    pub retry_on_429: bool,
    /// File holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth; the password is read from a file.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// PEM file of extra CA certificates for TLS.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushgatewayConfig {
    /// Name used in the `destination` label and logs; default: `pushgateway[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Gateway base URL, e.g. `http://127.0.0.1:9091`.
    pub url: String,
    /// The `job` of the grouping key.
    #[serde(default = "d::job")]
    pub job: String,
    /// Further grouping labels, sent in name order after `job`.
    #[serde(default)]
    pub grouping: BTreeMap<String, String>,
    /// Push period; ignored when `cron` is set.
    #[serde(default = "d::push_interval")]
    pub interval: HumanDuration,
    /// 6-field cron expression (with seconds) instead of `interval`.
    #[serde(default)]
    pub cron: Option<String>,
    /// `put` replaces the whole group, `post` only the families pushed.
    #[serde(default)]
    pub method: PushMethod,
    /// On shutdown, DELETE the group instead of a final push.
    #[serde(default)]
    pub delete_on_shutdown: bool,
    /// Timeout of one HTTP request.
    #[serde(default = "d::push_timeout")]
    pub timeout: HumanDuration,
    /// Gzip the body (`Content-Encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// File holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth; the password is read from a file.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// PEM file of extra CA certificates for TLS.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushMethod {
    #[default]
    Put,
    Post,
}

/// Defaults, one function per field that has one.
mod d {
    use super::{ByteSize, HumanDuration};
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    pub fn listen() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 11435))
    }
    pub fn max_body() -> ByteSize {
        ByteSize(1024 * 1024)
    }
    pub fn request_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    pub fn worker_max_concurrency() -> usize {
        4
    }
    pub fn backoff_initial_ms() -> u64 {
        500
    }
    pub fn backoff_max_ms() -> u64 {
        5000
    }
    pub fn restart_max() -> u32 {
        25
    }
    pub fn startup_timeout_ms() -> u64 {
        15_000
    }
    pub fn handshake_timeout_ms() -> u64 {
        10_000
    }
    pub fn shutdown_grace_ms() -> u64 {
        5_000
    }
    pub fn streams_max() -> usize {
        4
    }
    pub fn keepalive_ms() -> u64 {
        15_000
    }
    pub fn retry_after_secs() -> u64 {
        120
    }
    pub fn yes() -> bool {
        true
    }
    pub fn summary_window() -> HumanDuration {
        HumanDuration(Duration::from_secs(600))
    }
    pub fn push_interval() -> HumanDuration {
        HumanDuration(Duration::from_secs(15))
    }
    pub fn push_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn zero() -> HumanDuration {
        HumanDuration(Duration::ZERO)
    }
    pub fn max_queue_bytes() -> ByteSize {
        ByteSize(256 * 1024 * 1024)
    }
    pub fn max_series_per_request() -> usize {
        2000
    }
    pub fn min_backoff() -> HumanDuration {
        HumanDuration(Duration::from_millis(100))
    }
    pub fn max_backoff() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn job() -> String {
        "codex-proxy".to_string()
    }
}

/// `Default` for a section = the section parsed from an empty table, so the field
/// attributes stay the single source of each default.
macro_rules! default_from_empty_table {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                toml::from_str("").expect("every field of this section has a default")
            }
        }
    )*};
}
default_from_empty_table!(
    Config,
    ServerConfig,
    WorkerConfig,
    StreamsConfig,
    MaintenanceConfig,
    MetricsConfig
);

/// Every environment variable that overrides a key, with the key it sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("PROXY_ENABLE_METRICS", "metrics.enabled"),
    ("PROXY_METRICS_TOKEN", "metrics.token"),
    ("PROXY_METRICS_ALLOW_LOOPBACK", "metrics.allow_loopback"),
    ("PROXY_METRICS_ALLOW_UNAUTH", "metrics.allow_unauth"),
    ("PROXY_MAINTENANCE_MODE", "maintenance.enabled"),
    ("PROXY_SSE_MAX_CONCURRENCY", "streams.max_concurrency"),
    ("PROXY_SSE_KEEPALIVE_MS", "streams.keepalive_ms"),
    ("PROXY_API_KEY", "server.api_key"),
    ("PROXY_LISTEN", "server.listen"),
    ("CODEX_BIN", "worker.command"),
    ("WORKER_MAX_CONCURRENCY", "worker.max_concurrency"),
    ("WORKER_BACKOFF_INITIAL_MS", "worker.backoff_initial_ms"),
    ("WORKER_BACKOFF_MAX_MS", "worker.backoff_max_ms"),
    ("WORKER_RESTART_MAX", "worker.restart_max"),
    ("WORKER_STARTUP_TIMEOUT_MS", "worker.startup_timeout_ms"),
    ("WORKER_HANDSHAKE_TIMEOUT_MS", "worker.handshake_timeout_ms"),
    ("WORKER_SHUTDOWN_GRACE_MS", "worker.shutdown_grace_ms"),
];

impl Config {
    /// Reads the file (when given), applies the environment, validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Config::parse(&text)?
            }
            None => Config::default(),
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML; the error names the dotted key path.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // toml's message carries the line, and for unknown fields names the field.
            let message = inner.message().to_string();
            // serde_path_to_error already ends the path with an unknown field's name.
            let key = if key == "." || key.is_empty() {
                unknown_field_name(&message).unwrap_or_else(|| "<file>".to_string())
            } else {
                key
            };
            ConfigError::invalid(key, message)
        })
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (var, _) in ENV_OVERRIDES {
            let Some(raw) = env(var) else { continue };
            let v = raw.trim();
            match *var {
                "PROXY_ENABLE_METRICS" => self.metrics.enabled = env_bool(var, v)?,
                "PROXY_METRICS_TOKEN" => self.metrics.token = v.to_string(),
                "PROXY_METRICS_ALLOW_LOOPBACK" => self.metrics.allow_loopback = env_bool(var, v)?,
                "PROXY_METRICS_ALLOW_UNAUTH" => self.metrics.allow_unauth = env_bool(var, v)?,
                "PROXY_MAINTENANCE_MODE" => self.maintenance.enabled = env_bool(var, v)?,
                "PROXY_SSE_MAX_CONCURRENCY" => self.streams.max_concurrency = env_num(var, v)?,
                "PROXY_SSE_KEEPALIVE_MS" => self.streams.keepalive_ms = env_num(var, v)?,
                "PROXY_API_KEY" => self.server.api_key = v.to_string(),
                "PROXY_LISTEN" => self.server.listen = env_num(var, v)?,
                "CODEX_BIN" if !v.is_empty() => {
                    self.worker.command = vec![v.to_string(), "app-server".to_string()];
                }
                "WORKER_MAX_CONCURRENCY" => self.worker.max_concurrency = env_num(var, v)?,
                "WORKER_BACKOFF_INITIAL_MS" => self.worker.backoff_initial_ms = env_num(var, v)?,
                "WORKER_BACKOFF_MAX_MS" => self.worker.backoff_max_ms = env_num(var, v)?,
                "WORKER_RESTART_MAX" => self.worker.restart_max = env_num(var, v)?,
                "WORKER_STARTUP_TIMEOUT_MS" => self.worker.startup_timeout_ms = env_num(var, v)?,
                "WORKER_HANDSHAKE_TIMEOUT_MS" => {
                    self.worker.handshake_timeout_ms = env_num(var, v)?
                }
                "WORKER_SHUTDOWN_GRACE_MS" => self.worker.shutdown_grace_ms = env_num(var, v)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks what serde cannot: ranges, URLs, cron expressions, label names.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        positive("worker.max_concurrency", w.max_concurrency as u64)?;
        positive("worker.backoff_initial_ms", w.backoff_initial_ms)?;
        if w.backoff_max_ms < w.backoff_initial_ms {
            return Err(ConfigError::invalid(
                "worker.backoff_max_ms",
                "must be at least worker.backoff_initial_ms",
            ));
        }
        positive("worker.handshake_timeout_ms", w.handshake_timeout_ms)?;
        positive("worker.startup_timeout_ms", w.startup_timeout_ms)?;
        positive(
            "streams.max_concurrency",
            self.streams.max_concurrency as u64,
        )?;
        positive("streams.keepalive_ms", self.streams.keepalive_ms)?;
        positive("server.max_body_bytes", self.server.max_body_bytes.0)?;
        if self.metrics.summary_window.0 < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "metrics.summary_window",
                "must be at least 1s",
            ));
        }
        for (i, m) in self.metrics.models.iter().enumerate() {
            if m.is_empty() || m.len() > 64 {
                return Err(ConfigError::invalid(
                    format!("metrics.models[{i}]"),
                    "must be 1 to 64 characters",
                ));
            }
        }
        for (i, rw) in self.remote_write.iter().enumerate() {
            let k = |f: &str| format!("remote_write[{i}].{f}");
            http_url(&k("url"), &rw.url)?;
            schedule(&k("interval"), &k("cron"), rw.interval, rw.cron.as_deref())?;
            positive(&k("timeout"), rw.timeout.0.as_millis() as u64)?;
            positive(&k("max_queue_bytes"), rw.max_queue_bytes.0)?;
            positive(
                &k("max_series_per_request"),
                rw.max_series_per_request as u64,
            )?;
            if rw.max_backoff.0 < rw.min_backoff.0 {
                return Err(ConfigError::invalid(
                    k("max_backoff"),
                    "must be at least min_backoff",
                ));
            }
            for name in rw.external_labels.keys() {
                label_name(&k("external_labels"), name)?;
            }
            for (name, value) in &rw.external_labels {
                if value.is_empty() {
                    return Err(ConfigError::invalid(
                        format!("{}.{name}", k("external_labels")),
                        "empty label values are not allowed in remote-write",
                    ));
                }
            }
            header_names(&k("headers"), &rw.headers)?;
        }
        for (i, pg) in self.pushgateway.iter().enumerate() {
            let k = |f: &str| format!("pushgateway[{i}].{f}");
            http_url(&k("url"), &pg.url)?;
            schedule(&k("interval"), &k("cron"), pg.interval, pg.cron.as_deref())?;
            positive(&k("timeout"), pg.timeout.0.as_millis() as u64)?;
            if pg.job.is_empty() {
                return Err(ConfigError::invalid(k("job"), "must not be empty"));
            }
            for name in pg.grouping.keys() {
                label_name(&k("grouping"), name)?;
                if name == "job" {
                    return Err(ConfigError::invalid(
                        k("grouping"),
                        "`job` is set by pushgateway.job, not in grouping",
                    ));
                }
            }
            header_names(&k("headers"), &pg.headers)?;
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// Whether the worker is the built-in demo worker.
    pub fn uses_demo_worker(&self) -> bool {
        self.worker.command.is_empty()
    }
}

fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

fn env_bool(var: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::invalid(var, format!("`{v}` is not a boolean"))),
    }
}

fn env_num<T: FromStr>(var: &str, v: &str) -> Result<T, ConfigError>
where
    T::Err: fmt::Display,
{
    v.parse()
        .map_err(|e| ConfigError::invalid(var, format!("`{v}`: {e}")))
}

fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, "must be greater than zero"));
    }
    Ok(())
}

fn http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(()),
        Ok(u) => Err(ConfigError::invalid(
            key,
            format!("scheme `{}` is not http or https", u.scheme()),
        )),
        // The URL may carry credentials: never echo it.
        Err(e) => Err(ConfigError::invalid(key, format!("not a URL: {e}"))),
    }
}

fn schedule(
    interval_key: &str,
    cron_key: &str,
    interval: HumanDuration,
    cron: Option<&str>,
) -> Result<(), ConfigError> {
    match cron {
        Some(expr) => cron::Schedule::from_str(expr)
            .map(|_| ())
            .map_err(|e| ConfigError::invalid(cron_key, format!("`{expr}`: {e}"))),
        None if interval.0.is_zero() => Err(ConfigError::invalid(
            interval_key,
            "must be greater than zero",
        )),
        None => Ok(()),
    }
}

/// Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not reserved (`__` prefix).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    !name.starts_with("__") && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn label_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if is_valid_label_name(name) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            format!("{key}.{name}"),
            "not a valid label name",
        ))
    }
}

fn header_names(key: &str, headers: &BTreeMap<String, String>) -> Result<(), ConfigError> {
    for (name, value) in headers {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "not a valid header name",
            ));
        }
        if reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(ConfigError::invalid(
                format!("{key}.{name}"),
                "not a valid header value",
            ));
        }
    }
    Ok(())
}

fn mask<S: Serializer>(secret: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_empty() { "" } else { "***" })
}

/// A duration written as `"250ms"`, `"15s"`, `"5m"`, `"1h"` (or `"1.5s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("`{s}` has no unit (ms, s, m, h)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a duration like 250ms, 15s, 5m"))?;
        let ms = match unit {
            "ms" => n,
            "s" => n * 1e3,
            "m" => n * 60e3,
            "h" => n * 3600e3,
            _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
        };
        if !ms.is_finite() || !(0.0..=1e13).contains(&ms) {
            return Err(format!("`{s}` is out of range"));
        }
        Ok(HumanDuration(Duration::from_micros((ms * 1e3) as u64)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 3_600_000 == 0 && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms % 60_000 == 0 && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A size written as `"256MiB"`, `"64KiB"`, `"1GB"` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size like 256MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            other => return Err(format!("`{s}`: unknown unit `{other}` (B, KiB, MiB, GiB)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b >= m && b % m == 0 {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:11435");
        assert_eq!(c.worker.backoff_initial_ms, 500);
        assert_eq!(c.streams.max_concurrency, 4);
        assert!(c.metrics.allow_loopback);
        assert!(!c.metrics.enabled);
        assert!(c.uses_demo_worker());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(err.to_string().contains("`server.lisen`"), "{err}");
    }

    #[test]
    fn bad_duration_names_the_nested_key() {
        let err =
            Config::parse("[[remote_write]]\nurl = \"http://x/\"\ninterval = \"15 parsecs\"\n")
                .unwrap_err();
        assert!(
            err.to_string().contains("remote_write[0].interval"),
            "{err}"
        );
    }

    #[test]
    fn bad_address_names_the_key() {
        let err = Config::parse("[server]\nlisten = \"nowhere\"\n").unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
    }

    #[test]
    fn env_overrides_file_and_bad_env_names_the_variable() {
        let env = |k: &str| (k == "WORKER_BACKOFF_INITIAL_MS").then(|| "50".to_string());
        let mut c = Config::parse("[worker]\nbackoff_initial_ms = 900\n").unwrap();
        c.apply_env(env).unwrap();
        assert_eq!(c.worker.backoff_initial_ms, 50);
        let bad = |k: &str| (k == "PROXY_ENABLE_METRICS").then(|| "perhaps".to_string());
        let err = c.apply_env(bad).unwrap_err();
        assert!(err.to_string().contains("PROXY_ENABLE_METRICS"), "{err}");
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(
            "250ms".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "1.5s".parse::<HumanDuration>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert_eq!(
            "5m".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(300)
        );
        assert!("5".parse::<HumanDuration>().is_err());
        assert_eq!("256MiB".parse::<ByteSize>().unwrap().0, 256 << 20);
        assert_eq!("100".parse::<ByteSize>().unwrap().0, 100);
        assert!("12 parsecs".parse::<ByteSize>().is_err());
    }

    #[test]
    fn secrets_are_masked_in_rendered_config() {
        let mut c = Config::load(None, no_env).unwrap();
        c.metrics.token = "hunter2".into();
        c.server.api_key = "sk-live".into();
        let out = c.to_masked_toml();
        assert!(
            !out.contains("hunter2") && !out.contains("sk-live"),
            "{out}"
        );
        assert!(out.contains("***"));
    }

    #[test]
    fn validation_rejects_cron_and_url_errors_by_key() {
        let c = Config::parse("[[pushgateway]]\nurl = \"ftp://x\"\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("pushgateway[0].url"), "{err}");
        let c = Config::parse("[[remote_write]]\nurl = \"http://x/\"\ncron = \"nope\"\n").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("remote_write[0].cron"), "{err}");
    }
}
