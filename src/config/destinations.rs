//! Push destinations: `[[remote_write]]` and `[[pushgateway]]`.
//!
//! What every destination has (name, URL, schedule, HTTP settings) is one type,
//! [`HttpDestination`], flattened into each kind so that the file keeps flat keys
//! (`url`, `interval`, `headers` directly under `[[remote_write]]`). serde reports errors
//! in flattened keys at the section, without the key: `Config::parse` names it (see
//! `flattened_key` in mod.rs); the kinds' `deny_unknown_fields` still refuses unknown keys.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use reqwest::Url;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::schema::{mib, millis, num, secs, yes};
use super::units::{ByteSize, HumanDuration};

/// The keys every push destination has; the kinds flatten it into their own table.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpDestination {
    /// Name used in the `destination` label and logs; default: `<kind>[<index>]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Where to push, e.g. `http://127.0.0.1:9090/api/v1/write`.
    pub url: HttpUrl,
    /// Push period; ignored when `cron` is set.
    #[serde(default = "secs::<15>")]
    pub interval: HumanDuration,
    /// 6-field cron expression (with seconds) instead of `interval`.
    #[serde(default)]
    pub cron: Option<String>,
    /// Timeout of one HTTP request.
    #[serde(default = "secs::<10>")]
    pub timeout: HumanDuration,
    /// Extra request headers (e.g. `X-Scope-OrgID`); they never override the protocol headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// File holding a bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// Basic auth; the password is read from a file.
    #[serde(default)]
    pub basic_auth: Option<BasicAuthConfig>,
    /// PEM file of CA certificates trusted in addition to the system's roots.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) for mTLS; needs `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Accept any server certificate (testing only; logged as a warning at start).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl HttpDestination {
    /// The key that sets the schedule: `cron` when given, else `interval`.
    pub fn schedule_key(&self) -> &'static str {
        if self.cron.is_some() {
            "cron"
        } else {
            "interval"
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteWriteConfig {
    #[serde(flatten)]
    pub destination: HttpDestination,
    /// Random delay added to each scheduled push, up to this much.
    #[serde(default = "secs::<0>")]
    pub jitter: HumanDuration,
    /// Labels added to every series; `job` and `instance` are defaulted when absent.
    #[serde(default)]
    pub external_labels: BTreeMap<String, String>,
    /// Durable queue directory; empty keeps the queue in memory only.
    #[serde(default)]
    pub queue_dir: Option<PathBuf>,
    /// Cap of the queue (disk or memory); past it the oldest requests are dropped.
    #[serde(default = "mib::<256>")]
    pub max_queue_bytes: ByteSize,
    /// Series per request; larger snapshots are split into ordered requests.
    #[serde(default = "num::<usize, 2000>")]
    pub max_series_per_request: usize,
    /// First retry delay.
    #[serde(default = "millis::<100>")]
    pub min_backoff: HumanDuration,
    /// Cap of the retry delay.
    #[serde(default = "secs::<30>")]
    pub max_backoff: HumanDuration,
    /// Retry requests answered 429 (honouring `Retry-After`); when false they are dropped.
    #[serde(default = "yes")]
    pub retry_on_429: bool,
    /// Wire protocol: `v1` (remote-write 1.0), `v2` (2.0 with metadata), or `auto`: 2.0,
    /// falling back to 1.0 for good when the receiver turns out not to understand it.
    #[serde(default)]
    pub protocol: RemoteWriteProtocol,
    /// Requests in flight at once; per-series order is always kept (1: one at a time).
    #[serde(default = "num::<usize, 4>")]
    pub max_in_flight: usize,
    /// Requests whose newest sample is older than this at send time are dropped and
    /// counted (`reason="too_old"`); empty (the default) keeps everything.
    #[serde(default, with = "off_or_some")]
    pub max_sample_age: Option<HumanDuration>,
    /// Cap on request body bytes sent per second; empty (the default) sends at full speed.
    #[serde(default, with = "off_or_some")]
    pub max_bytes_per_second: Option<ByteSize>,
    /// `classic`: `_bucket{le}`, `_sum`, `_count`, which every receiver takes. `native`:
    /// a histogram family's native series instead (`TimeSeries.histograms`: field 4 in
    /// 1.0, 3 in 2.0); `both`: both. A receiver that refuses native histograms turns it to
    /// `classic`.
    #[serde(default)]
    pub histograms: HistogramMode,
    /// Send exemplars (`TimeSeries.exemplars`: field 3 in 1.0, 4 in 2.0), Prometheus' name
    /// and default.
    #[serde(default)]
    pub send_exemplars: bool,
}

/// Optional durations and sizes: an empty string (or an absent key) means off.
mod off_or_some {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr<Err = String>,
    {
        let s = String::deserialize(d)?;
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }

    pub(super) fn serialize<S: Serializer, T: Display>(
        v: &Option<T>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_str(""),
        }
    }
}

/// `[[remote_write]] protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RemoteWriteProtocol {
    #[default]
    V1,
    V2,
    Auto,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushgatewayConfig {
    /// `url` is the gateway's base URL, e.g. `http://127.0.0.1:9091`, with a route prefix
    /// when the gateway has one.
    #[serde(flatten)]
    pub destination: HttpDestination,
    /// The `job` of the grouping key.
    #[serde(default = "job")]
    pub job: String,
    /// Further grouping labels, sent in name order after `job`.
    #[serde(default)]
    pub grouping: BTreeMap<String, String>,
    /// `put` replaces the whole group, `post` only the families pushed.
    #[serde(default)]
    pub method: PushMethod,
    /// On shutdown, DELETE the group instead of a final push.
    #[serde(default)]
    pub delete_on_shutdown: bool,
    /// Gzip the body (`Content-Encoding: gzip`).
    #[serde(default)]
    pub gzip: bool,
    /// `classic`: the text format, classic buckets only. `native` or `both`: the delimited
    /// protobuf, which carries every histogram's classic and native buckets and the
    /// exemplars (Pushgateway 1.5.1 keeps them; docs/pushgateway.md).
    #[serde(default)]
    pub histograms: HistogramMode,
}

/// Which histogram buckets a destination receives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramMode {
    /// `_bucket{le}`, `_sum`, `_count`: what every receiver takes.
    #[default]
    Classic,
    /// Native (exponential) buckets.
    Native,
    /// Both.
    Both,
}

impl HistogramMode {
    /// As in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            HistogramMode::Classic => "classic",
            HistogramMode::Native => "native",
            HistogramMode::Both => "both",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushMethod {
    #[default]
    Put,
    Post,
}

fn job() -> String {
    "codex-proxy".to_string()
}

/// An `http` or `https` URL, parsed once when the configuration is read; the destinations
/// use it as is. It may carry credentials, so no error message ever shows it, and its
/// password is masked wherever it is shown (`check-config`, `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl(Url);

impl HttpUrl {
    pub fn as_url(&self) -> &Url {
        &self.0
    }

    /// The URL with its password, if it has one, replaced by `***`.
    fn masked(&self) -> String {
        let mut url = self.0.clone();
        if url.password().is_some() {
            // Only fails for URLs that cannot have credentials, which this one has.
            let _ = url.set_password(Some("***"));
        }
        url.into()
    }
}

impl std::fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HttpUrl").field(&self.masked()).finish()
    }
}

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match Url::parse(s) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(HttpUrl(u)),
            Ok(u) => Err(format!("scheme `{}` is not http or https", u.scheme())),
            Err(e) => Err(format!("not a URL: {e}")),
        }
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}
