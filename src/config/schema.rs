//! The sections that configure the proxy itself: `[server]`, `[worker]`, `[streams]`,
//! `[maintenance]`, `[metrics]`. Push destinations are in `destinations.rs`.
//!
//! Each default is written once, on its field (`#[serde(default = "secs::<300>")]` reads
//! "300 seconds"); `Default` parses an empty table, so it cannot drift from the fields.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use super::accounting::ApiKeyConfig;
use super::units::{ByteSize, HumanDuration};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    #[serde(default = "listen")]
    pub listen: SocketAddr,
    /// When non-empty, `/v1/*` requires `Authorization: Bearer <api_key>`.
    #[serde(default, serialize_with = "mask")]
    pub api_key: String,
    /// Largest accepted request body; larger bodies get 413.
    #[serde(default = "mib::<1>")]
    pub max_body_bytes: ByteSize,
    /// Longest a non-streaming completion may take before it fails with 504.
    #[serde(default = "secs::<300>")]
    pub request_timeout: HumanDuration,
    /// Bearer token for `POST /internal/maintenance`; empty means loopback-only.
    #[serde(default, serialize_with = "mask")]
    pub admin_token: String,
    /// On SIGTERM/SIGINT, how long open connections get to finish, and then how long the
    /// push destinations get for their final push. The worker has its own
    /// (`worker.shutdown_grace_ms`).
    #[serde(default = "secs::<5>")]
    pub shutdown_grace: HumanDuration,
    /// File holding `api_key` instead (surrounding blanks trimmed); re-read when it
    /// changes or on SIGHUP. Setting both is an error.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// File holding `admin_token` instead, read like `api_key_file`.
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// A connection that has not sent a complete request head this long after it opened
    /// (or after the first byte of a later request) is closed.
    #[serde(default = "secs::<30>")]
    pub header_read_timeout: HumanDuration,
    /// A keep-alive connection with no request in progress is closed after this long.
    #[serde(default = "secs::<60>")]
    pub idle_timeout: HumanDuration,
    /// Open connections at most; beyond it a new connection is refused at once.
    #[serde(default = "num::<usize, 10000>")]
    pub max_connections: usize,
    /// Named API keys beside `api_key` (which is the key named `default`); any of them
    /// admits `/v1/*`, and its name becomes the `key` label.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Directory of the state that must survive restarts (the budgets' spend). Empty: none
    /// is kept, and budgets start from zero at every start (with a warning).
    #[serde(default)]
    pub state_dir: PathBuf,
    /// Serve HTTPS instead of HTTP on `listen` (then plain HTTP there is refused).
    #[serde(default)]
    pub tls: Option<TlsServerConfig>,
}

/// `[server.tls]`: exporter-toolkit's `tls_server_config`, in rustls. TLS 1.2 at least.
/// The files are read again when they change; new connections get the new ones.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsServerConfig {
    /// The server's certificate chain (PEM), leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to; needed by
    /// `client_auth = "request"` and `"require"`.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// Whether clients present a certificate.
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// `server.tls.client_auth`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// One is asked for; a client without one is admitted, one with a certificate that
    /// does not chain to `client_ca_file` is refused (exporter-toolkit's
    /// `VerifyClientCertIfGiven`).
    Request,
    /// A certificate chaining to `client_ca_file` is required
    /// (`RequireAndVerifyClientCert`).
    Require,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (one line per event) or `json` (one object per line, for log shippers);
    /// `--log-format` wins. Which events: `RUST_LOG` directives, `info` by default.
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("`{s}` is not text or json")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Worker command line, e.g. `["codex", "app-server"]`; empty runs the built-in demo worker.
    #[serde(default)]
    pub command: Vec<String>,
    /// Turns one worker runs at once; further requests wait in a FIFO queue for a slot.
    #[serde(default = "num::<usize, 4>")]
    pub max_concurrency: usize,
    /// Requests that may wait for a worker slot; past it a request gets 429 with
    /// `Retry-After` at once (0: no queue, a busy worker refuses at once).
    #[serde(default = "num::<usize, 256>")]
    pub queue_max: usize,
    /// Longest a request waits in the queue for a worker slot before it gets 429 with
    /// `Retry-After`.
    #[serde(default = "secs::<60>")]
    pub queue_timeout: HumanDuration,
    /// First restart delay; it doubles after each failed start.
    #[serde(default = "num::<u64, 500>")]
    pub backoff_initial_ms: u64,
    /// Cap of the restart delay.
    #[serde(default = "num::<u64, 5000>")]
    pub backoff_max_ms: u64,
    /// Restarts without reaching ready in between before the supervisor gives up.
    #[serde(default = "num::<u32, 25>")]
    pub restart_max: u32,
    /// Time from spawn to a ready worker (spawn plus handshake).
    #[serde(default = "num::<u64, 15000>")]
    pub startup_timeout_ms: u64,
    /// Time the worker has to answer `initialize`.
    #[serde(default = "num::<u64, 10000>")]
    pub handshake_timeout_ms: u64,
    /// After closing the worker's stdin on shutdown, how long to wait before killing it.
    #[serde(default = "num::<u64, 5000>")]
    pub shutdown_grace_ms: u64,
    /// The worker's `RUST_LOG`, set on its command: the proxy's own `RUST_LOG` never
    /// reaches it, so that debugging the proxy does not make the worker log every turn.
    #[serde(default = "warn")]
    pub log_level: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsConfig {
    /// SSE streams open at once, at most; what happens to one more is `on_full`.
    #[serde(default = "num::<usize, 4>")]
    pub max_concurrency: usize,
    /// Interval of `: keepalive` comments on an SSE stream.
    #[serde(default = "num::<u64, 15000>")]
    pub keepalive_ms: u64,
    /// A streamed request that finds `max_concurrency` streams open: `queue` waits in the
    /// admission queue (FIFO, shared with non-streamed requests, bounded by
    /// `worker.queue_max` and `worker.queue_timeout`); `reject` answers 429 at once.
    #[serde(default)]
    pub on_full: OnFull,
}

/// What a streamed request gets when every stream slot is taken (`streams.on_full`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Wait for a slot in the admission queue, like a request for a busy worker.
    #[default]
    Queue,
    /// 429 with `Retry-After` at once.
    Reject,
}

impl std::str::FromStr for OnFull {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "queue" => Ok(OnFull::Queue),
            "reject" => Ok(OnFull::Reject),
            _ => Err(format!("`{s}` is not queue or reject")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// Start in maintenance mode: `/v1/*` answers 503 with `Retry-After`.
    #[serde(default)]
    pub enabled: bool,
    /// Seconds sent in `Retry-After` while in maintenance.
    #[serde(default = "num::<u64, 120>")]
    pub retry_after_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` (guarded: loopback or the token); when false the route does
    /// not exist (404).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Bearer token that admits a scrape from anywhere.
    #[serde(default, serialize_with = "mask")]
    pub token: String,
    /// File holding `token` instead, read like `server.api_key_file`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Admit scrapes from 127.0.0.0/8 and ::1 without a token.
    #[serde(default = "yes")]
    pub allow_loopback: bool,
    /// Admit everyone (development only).
    #[serde(default)]
    pub allow_unauth: bool,
    /// Users admitted with HTTP Basic auth (`/metrics` and `/status`), name → bcrypt
    /// hash (`htpasswd -nbBC 10 "" PASSWORD`), as in exporter-toolkit's web config. A
    /// plain password is a config error.
    #[serde(default, serialize_with = "mask_map")]
    pub basic_auth_users: BTreeMap<String, String>,
    /// Allowlist for the `model` label; other values become `other`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Peers whose `X-Forwarded-For` is believed (e.g. the ForwardAuth proxy in front).
    #[serde(default)]
    pub trusted_proxies: Vec<IpAddr>,
    /// Sliding window of the latency summary.
    #[serde(default = "secs::<600>")]
    pub summary_window: HumanDuration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Serve `GET /status` (HTML) and `GET /status.json`, behind the guard of
    /// `/metrics`; when false the routes do not exist (404).
    #[serde(default = "yes")]
    pub enabled: bool,
}

/// `Default` for a section = the section parsed from an empty table, so that the field
/// attributes stay the single source of each default.
macro_rules! default_from_empty_table {
    ($($t:ty),*) => {$(
        impl Default for $t {
            // The input is a constant and every field of the section has a default: this
            // cannot fail at run time (`empty_file_gives_documented_defaults` proves it).
            #[allow(clippy::expect_used)]
            fn default() -> Self {
                toml::from_str("").expect("every field of this section has a default")
            }
        }
    )*};
}
pub(super) use default_from_empty_table;

default_from_empty_table!(
    ServerConfig,
    WorkerConfig,
    StreamsConfig,
    MaintenanceConfig,
    MetricsConfig,
    LogConfig,
    StatusConfig
);

// Default values, named so that the attribute reads as the value: `num::<u64, 500>` is the
// u64 500 (up to 65535), `secs::<15>` fifteen seconds, `mib::<256>` 256 MiB.

pub(super) fn num<T: From<u16>, const N: u16>() -> T {
    T::from(N)
}

pub(super) fn secs<const N: u64>() -> HumanDuration {
    HumanDuration(Duration::from_secs(N))
}

pub(super) fn millis<const N: u64>() -> HumanDuration {
    HumanDuration(Duration::from_millis(N))
}

pub(super) fn mib<const N: u64>() -> ByteSize {
    ByteSize(N << 20)
}

pub(super) fn yes() -> bool {
    true
}

fn warn() -> String {
    "warn".to_string()
}

fn listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 11435))
}

/// Renders each value of a map of secrets as `***`, keeping the names.
fn mask_map<S: Serializer>(map: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(map.keys().map(|k| (k, "***")))
}

/// Renders a secret as `***` (or empty when unset) in `check-config`'s output.
pub(super) fn mask<S: Serializer>(secret: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(if secret.is_empty() { "" } else { "***" })
}
