//! Pushgateway delivery: the grouping-key URL, the text-format body, one request, and
//! the periodic loop of a `[[pushgateway]]` destination (design.md §4).
//!
//! The gateway keeps only the latest push of a group, so nothing is queued: a periodic
//! push that fails is not retried (the next one carries fresher values); only the final
//! push at shutdown is retried, until the shutdown grace runs out.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use prometheus::proto::{MetricFamily, MetricType};
use reqwest::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{is_valid_label_name, PushMethod, PushgatewayConfig};

use super::self_metrics::PushMetrics;
use super::SnapshotSource;

/// The exact Content-Type of a text-format 0.0.4 push.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Families the gateway adds to every group itself; a pushed one would be overwritten.
pub const RESERVED_FAMILIES: [&str; 2] = ["push_time_seconds", "push_failure_time_seconds"];

/// How much of a gateway's error body is kept in the error and the log.
const MAX_MESSAGE_CHARS: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum PushgatewayError {
    #[error("the job name must not be empty")]
    EmptyJob,
    #[error("`{0}` is not a valid label name")]
    InvalidLabelName(String),
    #[error("`job` cannot be a grouping label: it is the job name")]
    JobInGrouping,
    #[error("metric `{family}` carries the label `{label}`, which the grouping key sets (the gateway would overwrite it)")]
    LabelCollision { family: String, label: String },
    #[error("metric `{0}` is reserved: the Pushgateway sets it for each group")]
    ReservedFamily(String),
    #[error("invalid Pushgateway URL: {0}")]
    Url(String),
    #[error("cannot render the text format: {0}")]
    Render(String),
    #[error("the Pushgateway answered {status}: {message}")]
    Rejected { status: u16, message: String },
    #[error("the request timed out")]
    Timeout,
    #[error("cannot reach the Pushgateway: {0}")]
    Network(String),
}

impl PushgatewayError {
    /// The `outcome` label of `codex_push_requests_total` for a failed request.
    pub fn outcome(&self) -> &'static str {
        match self {
            PushgatewayError::Rejected { status: 429, .. } => "http_429",
            PushgatewayError::Rejected { status, .. } if *status >= 500 => "http_5xx",
            PushgatewayError::Rejected { .. } => "http_4xx",
            PushgatewayError::Timeout => "timeout",
            _ => "network",
        }
    }

    /// Whether the request was sent and failed (as opposed to refused before sending).
    pub fn is_delivery(&self) -> bool {
        matches!(
            self,
            PushgatewayError::Rejected { .. }
                | PushgatewayError::Timeout
                | PushgatewayError::Network(_)
        )
    }

    /// Whether sending the same request again may succeed: 5xx, timeouts, connection errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            PushgatewayError::Rejected { status, .. } => *status >= 500,
            PushgatewayError::Timeout | PushgatewayError::Network(_) => true,
            _ => false,
        }
    }
}

/// `job` plus further grouping labels: which group of the gateway a push replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupingKey {
    job: String,
    labels: BTreeMap<String, String>,
}

impl GroupingKey {
    /// Refuses what the gateway would reject or misread: an empty job, an invalid label
    /// name, `job` among the grouping labels.
    pub fn new(
        job: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<GroupingKey, PushgatewayError> {
        if job.is_empty() {
            return Err(PushgatewayError::EmptyJob);
        }
        for name in labels.keys() {
            if name == "job" {
                return Err(PushgatewayError::JobInGrouping);
            }
            if !is_valid_label_name(name) {
                return Err(PushgatewayError::InvalidLabelName(name.clone()));
            }
        }
        Ok(GroupingKey {
            job: job.to_string(),
            labels,
        })
    }

    /// `/metrics/job/<job>{/<label>/<value>}`: job first, then labels in name order.
    pub fn path(&self) -> String {
        let mut path = String::from("/metrics");
        push_segment(&mut path, "job", &self.job);
        for (name, value) in &self.labels {
            push_segment(&mut path, name, value);
        }
        path
    }

    /// Label names a pushed metric must not carry: the gateway sets them from the path.
    fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once("job").chain(self.labels.keys().map(String::as_str))
    }
}

/// Appends `/<name>/<value>`. A value with `/`, or an empty one, cannot travel as a path
/// segment (the router would split or drop it): it goes as `<name>@base64/<url-safe>`,
/// `=` for empty. Others are percent-encoded.
fn push_segment(path: &mut String, name: &str, value: &str) {
    path.push('/');
    path.push_str(name);
    if value.is_empty() {
        path.push_str("@base64/=");
    } else if value.contains('/') {
        path.push_str("@base64/");
        path.push_str(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value));
    } else {
        path.push('/');
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                path.push(byte as char);
            } else {
                path.push_str(&format!("%{byte:02X}"));
            }
        }
    }
}

/// The text-format body of a push: no timestamps, LF endings, a final newline.
///
/// Refuses a metric that carries `job` or a grouping label, and the gateway's own
/// `push_time_seconds`/`push_failure_time_seconds`. Families without metrics are skipped.
pub fn render(families: Vec<MetricFamily>, key: &GroupingKey) -> Result<String, PushgatewayError> {
    let encoder = prometheus::TextEncoder::new();
    let mut body = String::new();
    for mut family in families {
        if family.get_metric().is_empty() {
            continue;
        }
        if RESERVED_FAMILIES.contains(&family.name()) {
            return Err(PushgatewayError::ReservedFamily(family.name().to_string()));
        }
        let name = family.name().to_string();
        for metric in family.mut_metric() {
            if let Some(label) = metric
                .get_label()
                .iter()
                .find(|l| key.names().any(|n| n == l.name()))
            {
                return Err(PushgatewayError::LabelCollision {
                    family: name,
                    label: label.name().to_string(),
                });
            }
            // The gateway rejects pushes with timestamps.
            metric.set_timestamp_ms(0);
        }
        let render = |families: &[MetricFamily], body: &mut String| {
            encoder
                .encode_utf8(families, body)
                .map_err(|e| PushgatewayError::Render(e.to_string()))
        };
        if family.get_field_type() == MetricType::UNTYPED {
            // The crate's encoder has no untyped case (it panics): render the values as a
            // gauge, then put the type line right.
            family.set_field_type(MetricType::GAUGE);
            for metric in family.mut_metric() {
                let mut gauge = prometheus::proto::Gauge::default();
                #[allow(deprecated)] // the only accessor of an untyped value in prometheus 0.14
                gauge.set_value(metric.get_untyped().get_value());
                metric.set_gauge(gauge);
            }
            let mut text = String::new();
            render(&[family], &mut text)?;
            let name = text_type_name(&text);
            body.push_str(&text.replacen(
                &format!("# TYPE {name} gauge\n"),
                &format!("# TYPE {name} untyped\n"),
                1,
            ));
        } else {
            render(&[family], &mut body)?;
        }
    }
    Ok(body)
}

/// The metric name of the first `# TYPE` line of a rendered family.
fn text_type_name(text: &str) -> &str {
    text.lines()
        .find_map(|l| l.strip_prefix("# TYPE "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_default()
}

/// Samples a body carries (lines other than comments), for the sent/dropped counters.
pub fn count_samples(families: &[MetricFamily]) -> u64 {
    families
        .iter()
        .map(|f| {
            let per_metric = |m: &prometheus::proto::Metric| -> u64 {
                match f.get_field_type() {
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        let has_inf = h
                            .get_bucket()
                            .iter()
                            .any(|b| b.upper_bound() == f64::INFINITY);
                        h.get_bucket().len() as u64 + u64::from(!has_inf) + 2
                    }
                    MetricType::SUMMARY => m.get_summary().get_quantile().len() as u64 + 2,
                    _ => 1,
                }
            };
            f.get_metric().iter().map(per_metric).sum::<u64>()
        })
        .sum()
}

/// One Pushgateway and one group on it.
#[derive(Clone)]
pub struct Pushgateway {
    client: reqwest::Client,
    url: reqwest::Url,
    key: GroupingKey,
    timeout: Duration,
    gzip: bool,
}

impl Pushgateway {
    /// `base` is the gateway's address (`http://host:9091`, or with a route prefix).
    pub fn new(
        client: reqwest::Client,
        base: &str,
        key: GroupingKey,
        timeout: Duration,
        gzip: bool,
    ) -> Result<Pushgateway, PushgatewayError> {
        let joined = format!("{}{}", base.trim_end_matches('/'), key.path());
        // Never echo the URL: it may carry credentials.
        let url = reqwest::Url::parse(&joined).map_err(|e| PushgatewayError::Url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(PushgatewayError::Url(format!(
                "scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        Ok(Pushgateway {
            client,
            url,
            key,
            timeout,
            gzip,
        })
    }

    pub fn key(&self) -> &GroupingKey {
        &self.key
    }

    /// Renders and sends `families`: PUT replaces the group, POST only the families sent.
    pub async fn push(
        &self,
        method: PushMethod,
        families: Vec<MetricFamily>,
    ) -> Result<(), PushgatewayError> {
        let body = render(families, &self.key)?;
        self.send_body(method, body).await
    }

    /// Sends an already rendered body (the final push retries the same bytes).
    pub async fn send_body(
        &self,
        method: PushMethod,
        body: String,
    ) -> Result<(), PushgatewayError> {
        let method = match method {
            PushMethod::Put => Method::PUT,
            PushMethod::Post => Method::POST,
        };
        let mut request = self
            .client
            .request(method, self.url.clone())
            .timeout(self.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
        if self.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let compressed = gz
                .write_all(body.as_bytes())
                .and_then(|()| gz.finish())
                .map_err(|e| PushgatewayError::Render(format!("gzip: {e}")))?;
            request = request
                .header(CONTENT_ENCODING, HeaderValue::from_static("gzip"))
                .body(compressed);
        } else {
            request = request.body(body);
        }
        answer(request.send().await).await
    }

    /// Deletes the whole group (the gateway answers 202).
    pub async fn delete(&self) -> Result<(), PushgatewayError> {
        let request = self
            .client
            .request(Method::DELETE, self.url.clone())
            .timeout(self.timeout);
        answer(request.send().await).await
    }
}

/// 200 and 202 are success; anything else is an error carrying the gateway's message.
async fn answer(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<(), PushgatewayError> {
    let response = response.map_err(transport_error)?;
    let status = response.status();
    if status == StatusCode::OK || status == StatusCode::ACCEPTED {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(PushgatewayError::Rejected {
        status: status.as_u16(),
        message: truncate(body.trim(), MAX_MESSAGE_CHARS),
    })
}

fn transport_error(e: reqwest::Error) -> PushgatewayError {
    if e.is_timeout() {
        PushgatewayError::Timeout
    } else {
        // Without the URL: it may carry credentials.
        PushgatewayError::Network(error_chain(&e.without_url()))
    }
}

/// An error and its sources, `: `-separated (reqwest's own message is terse).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// Unix time now, in seconds.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The `codex_push_*` series of one destination.
#[derive(Clone)]
struct Recorder {
    metrics: PushMetrics,
    destination: String,
}

impl Recorder {
    const KIND: &'static str = "pushgateway";

    fn request(&self, result: &Result<(), PushgatewayError>, samples: u64) {
        let outcome = match result {
            Ok(()) => "success",
            Err(e) => e.outcome(),
        };
        self.metrics
            .requests
            .with_label_values(&[&self.destination, Self::KIND, outcome])
            .inc();
        if result.is_ok() {
            self.metrics
                .samples_sent
                .with_label_values(&[&self.destination, Self::KIND])
                .inc_by(samples);
            self.metrics
                .last_success_timestamp
                .with_label_values(&[&self.destination, Self::KIND])
                .set(unix_now());
        }
    }

    fn dropped(&self, reason: &str, samples: u64) {
        self.metrics
            .samples_dropped
            .with_label_values(&[&self.destination, Self::KIND, reason])
            .inc_by(samples);
    }

    fn retried(&self, samples: u64) {
        self.metrics
            .samples_retried
            .with_label_values(&[&self.destination, Self::KIND])
            .inc_by(samples);
    }
}

/// The `destination` label and log name: the configured name, else `pushgateway[<index>]`;
/// never the URL (it may carry credentials).
pub fn destination_name(index: usize, config: &PushgatewayConfig) -> String {
    config
        .name
        .clone()
        .unwrap_or_else(|| format!("pushgateway[{index}]"))
}

/// One `[[pushgateway]]` destination: pushes a snapshot as soon as the proxy is ready,
/// then on every tick of its schedule, and once more (or DELETEs the group) at shutdown.
pub struct PushgatewayTask {
    gateway: Pushgateway,
    method: PushMethod,
    delete_on_shutdown: bool,
    schedule: seam::Schedule,
    recorder: Recorder,
}

/// Why a wait ended.
enum Wake {
    Ready,
    /// Shutdown began; the final push must be done by this instant.
    Shutdown(Instant),
}

impl PushgatewayTask {
    pub fn from_config(
        index: usize,
        config: &PushgatewayConfig,
        metrics: PushMetrics,
    ) -> Result<PushgatewayTask, PushgatewayError> {
        let key = GroupingKey::new(&config.job, config.grouping.clone())?;
        let client = seam::client(config)?;
        let gateway = Pushgateway::new(client, &config.url, key, config.timeout.0, config.gzip)?;
        Ok(PushgatewayTask {
            gateway,
            method: config.method,
            delete_on_shutdown: config.delete_on_shutdown,
            schedule: seam::Schedule::from_config(config)?,
            recorder: Recorder {
                metrics,
                destination: destination_name(index, config),
            },
        })
    }

    /// Runs until shutdown; returns once the final push (or DELETE) is done or the
    /// deadline passed.
    pub async fn run(self, source: Arc<dyn SnapshotSource>, mut lifecycle: seam::Lifecycle) {
        let deadline = match lifecycle.wait_ready().await {
            Wake::Ready => self.periodic(&*source, &mut lifecycle).await,
            Wake::Shutdown(deadline) => deadline,
        };
        if self.delete_on_shutdown {
            self.final_attempts(deadline, 0, || self.gateway.delete())
                .await;
            return;
        }
        let families = source.snapshot();
        let samples = count_samples(&families);
        match render(families, self.gateway.key()) {
            Ok(body) => {
                let sent = self
                    .final_attempts(deadline, samples, || {
                        self.gateway.send_body(self.method, body.clone())
                    })
                    .await;
                if !sent {
                    self.recorder.dropped("shutdown", samples);
                }
            }
            Err(e) => self.refused(&e, samples),
        }
    }

    /// Pushes now, then on each tick, until shutdown begins; returns its deadline.
    async fn periodic(
        &self,
        source: &dyn SnapshotSource,
        lifecycle: &mut seam::Lifecycle,
    ) -> Instant {
        let mut tick = Instant::now();
        loop {
            tokio::select! {
                deadline = lifecycle.shutdown() => return deadline,
                () = tokio::time::sleep_until(tick) => {}
            }
            // A push in flight when shutdown begins is abandoned for the final one.
            tokio::select! {
                deadline = lifecycle.shutdown() => return deadline,
                () = self.push_once(source) => {}
            }
            tick = self.schedule.next_after(tick);
        }
    }

    async fn push_once(&self, source: &dyn SnapshotSource) {
        let families = source.snapshot();
        let samples = count_samples(&families);
        let body = match render(families, self.gateway.key()) {
            Ok(body) => body,
            Err(e) => return self.refused(&e, samples),
        };
        let result = self.gateway.send_body(self.method, body).await;
        self.recorder.request(&result, samples);
        match result {
            Ok(()) => {
                tracing::debug!(destination = %self.recorder.destination, samples, "pushed to the Pushgateway")
            }
            Err(e) => {
                if !e.is_retryable() {
                    self.recorder.dropped("rejected", samples);
                }
                // Not retried: the next push carries fresher values.
                tracing::warn!(destination = %self.recorder.destination, "Pushgateway push failed: {e}");
            }
        }
    }

    /// Tries `attempt` until it succeeds, fails for good, or `deadline` passes; whether it
    /// succeeded. Retries 5xx, timeouts and connection errors with a doubling pause.
    async fn final_attempts<F, Fut>(&self, deadline: Instant, samples: u64, attempt: F) -> bool
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), PushgatewayError>>,
    {
        let what = if self.delete_on_shutdown {
            "DELETE"
        } else {
            "final push"
        };
        let mut pause = FINAL_RETRY_MIN_PAUSE;
        loop {
            let result = tokio::time::timeout_at(deadline, attempt())
                .await
                .unwrap_or(Err(PushgatewayError::Timeout));
            self.recorder.request(&result, samples);
            let error = match result {
                Ok(()) => {
                    tracing::info!(destination = %self.recorder.destination, "Pushgateway {what} done");
                    return true;
                }
                Err(e) => e,
            };
            let now = Instant::now();
            if !error.is_retryable() || now + pause >= deadline {
                tracing::warn!(destination = %self.recorder.destination, "Pushgateway {what} failed, giving up: {error}");
                if !error.is_retryable() {
                    self.recorder.dropped("rejected", samples);
                    // Counted as rejected, not again as shutdown.
                    return true;
                }
                return false;
            }
            tracing::warn!(destination = %self.recorder.destination, "Pushgateway {what} failed, retrying: {error}");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(FINAL_RETRY_MAX_PAUSE);
            self.recorder.retried(samples);
        }
    }

    /// A snapshot refused before sending (a label the grouping key sets, a reserved name).
    fn refused(&self, e: &PushgatewayError, samples: u64) {
        self.recorder.dropped("rejected", samples);
        tracing::error!(destination = %self.recorder.destination, "Pushgateway push refused: {e}");
    }
}

const FINAL_RETRY_MIN_PAUSE: Duration = Duration::from_millis(100);
const FINAL_RETRY_MAX_PAUSE: Duration = Duration::from_secs(2);

/// Stand-ins for what branch `rw` provides in `push/mod.rs` (lifecycle signals),
/// `push/schedule.rs` and `push/transport.rs`. MERGE: replace with those once on main.
pub mod seam {
    use std::str::FromStr;

    use super::*;

    /// Readiness and shutdown, as sent by the pushers' entry point.
    pub struct Lifecycle {
        pub ready: watch::Receiver<bool>,
        /// `Some(deadline)` once shutdown began.
        pub shutdown: watch::Receiver<Option<Instant>>,
    }

    impl Lifecycle {
        pub(super) async fn wait_ready(&mut self) -> Wake {
            tokio::select! {
                deadline = shutdown_begun(&mut self.shutdown) => Wake::Shutdown(deadline),
                ready = self.ready.wait_for(|r| *r) => match ready {
                    Ok(_) => Wake::Ready,
                    // The entry point is gone: nothing will ever start us; stop now.
                    Err(_) => Wake::Shutdown(Instant::now()),
                },
            }
        }

        /// Resolves once shutdown began, with its deadline.
        pub(super) async fn shutdown(&mut self) -> Instant {
            shutdown_begun(&mut self.shutdown).await
        }
    }

    /// Resolves once shutdown began, with its deadline (now, if the sender is gone).
    async fn shutdown_begun(shutdown: &mut watch::Receiver<Option<Instant>>) -> Instant {
        match shutdown.wait_for(Option::is_some).await {
            Ok(deadline) => deadline.unwrap_or_else(Instant::now),
            Err(_) => Instant::now(),
        }
    }

    pub enum Schedule {
        Every(Duration),
        Cron(Box<cron::Schedule>),
    }

    impl Schedule {
        pub fn from_config(config: &PushgatewayConfig) -> Result<Schedule, PushgatewayError> {
            match &config.cron {
                Some(expr) => cron::Schedule::from_str(expr)
                    .map(|s| Schedule::Cron(Box::new(s)))
                    .map_err(|e| PushgatewayError::Url(format!("cron `{expr}`: {e}"))),
                None => Ok(Schedule::Every(config.interval.0)),
            }
        }

        /// The tick after `previous`; never in the past (missed ticks are skipped).
        pub fn next_after(&self, previous: Instant) -> Instant {
            let now = Instant::now();
            match self {
                Schedule::Every(interval) => {
                    let next = previous + *interval;
                    if next > now {
                        next
                    } else {
                        now + *interval
                    }
                }
                Schedule::Cron(schedule) => {
                    let wait = schedule
                        .upcoming(chrono::Utc)
                        .next()
                        .and_then(|at| (at - chrono::Utc::now()).to_std().ok())
                        .unwrap_or(Duration::from_secs(3600));
                    now + wait
                }
            }
        }
    }

    /// A client with the user's headers and our User-Agent.
    pub fn client(config: &PushgatewayConfig) -> Result<reqwest::Client, PushgatewayError> {
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &config.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| PushgatewayError::Url(format!("header `{name}`: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| PushgatewayError::Url(format!("header `{name}`: {e}")))?;
            headers.insert(name, value);
        }
        reqwest::Client::builder()
            .user_agent(concat!("codex-proxy/", env!("CARGO_PKG_VERSION")))
            .default_headers(headers)
            .build()
            .map_err(|e| PushgatewayError::Network(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::{Gauge, LabelPair, Metric};

    fn key(job: &str, labels: &[(&str, &str)]) -> Result<GroupingKey, PushgatewayError> {
        GroupingKey::new(
            job,
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn gauge_family(name: &str, labels: &[(&str, &str)], value: f64) -> MetricFamily {
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::from_gauge(g);
        m.set_label(
            labels
                .iter()
                .map(|(n, v)| {
                    let mut l = LabelPair::default();
                    l.set_name(n.to_string());
                    l.set_value(v.to_string());
                    l
                })
                .collect(),
        );
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_string());
        mf.set_help("help".to_string());
        mf.set_field_type(MetricType::GAUGE);
        mf.set_metric(vec![m]);
        mf
    }

    #[test]
    fn path_has_job_first_then_labels_in_name_order() {
        let k = key("batch", &[("zone", "eu"), ("instance", "host-a:9100")]).unwrap();
        assert_eq!(
            k.path(),
            "/metrics/job/batch/instance/host-a%3A9100/zone/eu"
        );
    }

    #[test]
    fn slash_and_empty_values_go_as_base64_others_percent_encoded() {
        let k = key(
            "job/with/slash",
            &[("path", "/var/tmp"), ("empty", ""), ("name", "Προ μ?#%")],
        )
        .unwrap();
        assert_eq!(
            k.path(),
            "/metrics/job@base64/am9iL3dpdGgvc2xhc2g/empty@base64/=/name/%CE%A0%CF%81%CE%BF%20%CE%BC%3F%23%25/path@base64/L3Zhci90bXA"
        );
        // The URL-safe alphabet: standard base64 of "/??>" is "Lz8/Pg==".
        let k = key("j", &[("v", "/??>")]).unwrap();
        assert_eq!(k.path(), "/metrics/job/j/v@base64/Lz8_Pg");
    }

    #[test]
    fn empty_job_bad_label_names_and_job_label_are_refused() {
        assert!(matches!(key("", &[]), Err(PushgatewayError::EmptyJob)));
        assert!(matches!(
            key("j", &[("job", "x")]),
            Err(PushgatewayError::JobInGrouping)
        ));
        for bad in ["1x", "a-b", "__reserved", ""] {
            let e = key("j", &[(bad, "x")]).unwrap_err();
            assert!(
                matches!(e, PushgatewayError::InvalidLabelName(_)),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn body_is_text_format_with_lf_final_newline_and_no_timestamps() {
        let mut family = gauge_family("temp", &[("room", "a")], 21.5);
        family.mut_metric()[0].set_timestamp_ms(1_700_000_000_000);
        let body = render(vec![family], &key("j", &[]).unwrap()).unwrap();
        assert_eq!(
            body,
            "# HELP temp help\n# TYPE temp gauge\ntemp{room=\"a\"} 21.5\n"
        );
        assert!(!body.contains('\r'));
    }

    #[test]
    fn untyped_families_render_with_the_untyped_type_line() {
        let families = crate::push::text::parse("# HELP u x\nu{a=\"1\"} 3\ng 2\n").unwrap();
        let body = render(families, &key("j", &[]).unwrap()).unwrap();
        assert_eq!(
            body,
            "# HELP u x\n# TYPE u untyped\nu{a=\"1\"} 3\n# TYPE g untyped\ng 2\n"
        );
    }

    #[test]
    fn metrics_carrying_job_or_a_grouping_label_are_refused() {
        let k = key("j", &[("instance", "a")]).unwrap();
        for label in ["job", "instance"] {
            let e = render(vec![gauge_family("m", &[(label, "x")], 1.0)], &k).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("metric `m` carries the label `{label}`")),
                "{e}"
            );
        }
        assert!(render(vec![gauge_family("m", &[("other", "x")], 1.0)], &k).is_ok());
        let e = render(vec![gauge_family("push_time_seconds", &[], 1.0)], &k).unwrap_err();
        assert!(matches!(e, PushgatewayError::ReservedFamily(_)), "{e}");
    }

    #[test]
    fn empty_families_are_skipped() {
        let mut empty = gauge_family("e", &[], 0.0);
        empty.set_metric(vec![]);
        assert_eq!(render(vec![empty], &key("j", &[]).unwrap()).unwrap(), "");
    }

    #[test]
    fn samples_are_counted_per_text_line() {
        let families = crate::push::text::parse(
            "a 1\nb 2\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n\
             # TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n",
        )
        .unwrap();
        let body = render(families.clone(), &key("j", &[]).unwrap()).unwrap();
        let lines = body.lines().filter(|l| !l.starts_with('#')).count() as u64;
        assert_eq!(count_samples(&families), lines);
        assert_eq!(lines, 2 + 4 + 3);
    }

    #[test]
    fn outcomes_and_retryability_follow_the_status() {
        let rejected = |status| PushgatewayError::Rejected {
            status,
            message: String::new(),
        };
        assert_eq!(rejected(400).outcome(), "http_4xx");
        assert!(!rejected(400).is_retryable());
        assert_eq!(rejected(429).outcome(), "http_429");
        assert_eq!(rejected(503).outcome(), "http_5xx");
        assert!(rejected(503).is_retryable());
        assert!(PushgatewayError::Timeout.is_retryable());
        assert_eq!(PushgatewayError::Network("x".into()).outcome(), "network");
    }

    #[test]
    fn url_keeps_a_route_prefix_and_refuses_other_schemes() {
        let client = reqwest::Client::new();
        let k = key("j", &[]).unwrap();
        let pg = Pushgateway::new(
            client.clone(),
            "http://h:9091/pgw/",
            k.clone(),
            Duration::from_secs(1),
            false,
        )
        .unwrap();
        assert_eq!(pg.url.as_str(), "http://h:9091/pgw/metrics/job/j");
        assert!(Pushgateway::new(client, "ftp://h", k, Duration::from_secs(1), false).is_err());
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        assert_eq!(truncate("ééé", 2), "éé…");
        assert_eq!(truncate("ab", 2), "ab");
    }
}
