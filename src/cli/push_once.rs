//! `codex-proxy push`: validate a text-format exposition (a file or stdin) and deliver it
//! once, for scripts and cron jobs: to a Pushgateway group (or DELETE the group), or by
//! remote-write with the current time as timestamp. Exit status: 0 delivered, 1 the
//! destination refused it or could not be reached, 2 bad input or arguments (nothing
//! was sent).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;

use crate::config::{HttpUrl, PushMethod, RemoteWriteProtocol};

use crate::exposition::parse::{self as text, ParseError};
use crate::push::http::{error_body, error_chain, HttpClient, HttpSettings, ERROR_BODY_LIMIT};
use crate::push::pushgateway::{self, GroupingKey, Pushgateway, PushgatewayError};
use crate::push::remote_write;
use crate::push::remote_write::encode::EncodeError;
use crate::push::remote_write::negotiate::{self, Protocol, Written};
use crate::push::remote_write::queue::Batch;
use crate::push::remote_write::series::SeriesState;
use crate::push::Snapshot;

/// Series per remote-write request (the `max_series_per_request` default).
const REMOTE_WRITE_SERIES_PER_REQUEST: usize = 2000;

/// Where the exposition comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// `-` is stdin, anything else a path.
    pub(crate) fn from_arg(arg: Option<PathBuf>) -> Input {
        match arg {
            Some(p) if p.as_os_str() != "-" => Input::File(p),
            _ => Input::Stdin,
        }
    }

    fn describe(&self) -> String {
        match self {
            Input::Stdin => "stdin".to_string(),
            Input::File(p) => p.display().to_string(),
        }
    }
}

/// Where it goes, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// PUT or POST the exposition to the group at this Pushgateway.
    Pushgateway { url: String, method: PushMethod },
    /// DELETE the group at this Pushgateway; there is no input.
    DeleteGroup { url: String },
    /// POST it by remote-write, every sample stamped with the current time; `auto` tries
    /// 2.0 and sends again as 1.0 if the receiver does not understand it.
    RemoteWrite {
        url: String,
        protocol: RemoteWriteProtocol,
    },
}

impl Target {
    /// The destination URL, parsed as every configured one is (http or https); the error
    /// names the flag, never the URL, which may carry credentials.
    fn url(&self) -> Result<HttpUrl, OneShotError> {
        let (flag, url) = match self {
            Target::Pushgateway { url, .. } | Target::DeleteGroup { url } => ("--gateway", url),
            Target::RemoteWrite { url, .. } => ("--remote-write", url),
        };
        url.parse()
            .map_err(|message| OneShotError::Url { flag, message })
    }
}

/// One `push` invocation, as parsed from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) target: Target,
    pub(crate) input: Input,
    /// The Pushgateway's `job`, or the `job` label of every remote-write series.
    pub(crate) job: String,
    /// Further grouping labels, or further labels of every remote-write series.
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OneShotError {
    #[error("cannot read {what}: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Parse { what: String, source: ParseError },
    #[error("{what} holds no samples (to remove a group, use --delete)")]
    Empty { what: String },
    #[error("--label `{0}` is given twice")]
    DuplicateLabel(String),
    #[error("--label `{0}` is not NAME=VALUE")]
    BadLabel(String),
    #[error("{flag}: {message}")]
    Url { flag: &'static str, message: String },
    #[error("cannot start: {0}")]
    Setup(String),
    #[error("{0}")]
    Pushgateway(#[from] PushgatewayError),
    #[error("cannot encode the remote-write request: {0}")]
    Encode(#[from] EncodeError),
    #[error("the remote-write receiver answered {status}: {message}")]
    RemoteWriteRejected { status: u16, message: String },
    #[error("cannot reach the remote-write receiver: {0}")]
    RemoteWriteUnreachable(String),
    #[error("the remote-write receiver wrote {written} of {sent} samples")]
    RemoteWritePartial { written: u64, sent: u64 },
    #[error("the remote-write receiver answered 2xx without any X-Prometheus-Remote-Write-*-Written header: it did not read the 2.0 request (a 1.x receiver? try --protocol auto or v1)")]
    RemoteWriteNotUnderstood,
    #[error("cannot send the request again as remote-write 1.0: {0}")]
    Transcode(String),
}

impl OneShotError {
    /// 2 when the input or the arguments are at fault (nothing was sent), else 1.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            // Sent, and refused or lost on the way.
            OneShotError::Pushgateway(e) if e.outcome().is_some() => 1,
            OneShotError::RemoteWriteRejected { .. }
            | OneShotError::RemoteWriteUnreachable(_)
            | OneShotError::RemoteWritePartial { .. }
            | OneShotError::RemoteWriteNotUnderstood
            | OneShotError::Transcode(_)
            | OneShotError::Setup(_) => 1,
            _ => 2,
        }
    }
}

/// What was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delivered {
    pub(crate) families: usize,
    pub(crate) samples: u64,
}

/// `--label NAME=VALUE` arguments into a map; a name given twice is an error.
pub(crate) fn labels_from_args(args: &[String]) -> Result<BTreeMap<String, String>, OneShotError> {
    let mut labels = BTreeMap::new();
    for arg in args {
        let (name, value) = arg
            .split_once('=')
            .ok_or_else(|| OneShotError::BadLabel(arg.clone()))?;
        if labels.insert(name.to_string(), value.to_string()).is_some() {
            return Err(OneShotError::DuplicateLabel(name.to_string()));
        }
    }
    Ok(labels)
}

/// Reads and validates the input, then delivers it; nothing is sent when the input is bad.
pub(crate) fn run(request: Request) -> Result<Delivered, OneShotError> {
    // The same rules for both targets: `job` must be set, label names valid, and no
    // metric may carry a label that the command line sets.
    let key = GroupingKey::new(&request.job, request.labels.clone())?;
    let url = request.target.url()?;
    let snapshot = match request.target {
        Target::DeleteGroup { .. } => Snapshot::default(),
        _ => load(&request.input)?,
    };
    for family in &snapshot.families {
        key.check_labels(family)?;
    }
    let delivered = Delivered {
        families: family_count(&snapshot),
        samples: snapshot.sample_count() as u64,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| OneShotError::Setup(format!("runtime: {e}")))?;
    runtime.block_on(async {
        match &request.target {
            Target::Pushgateway { method, .. } => {
                let gateway = pushgateway(&url, key, request.timeout)?;
                gateway.push(*method, &snapshot).await?;
            }
            Target::DeleteGroup { .. } => {
                pushgateway(&url, key, request.timeout)?.delete().await?;
            }
            Target::RemoteWrite { protocol, .. } => {
                remote_write(&url, &key, &snapshot, request.timeout, *protocol).await?;
            }
        }
        Ok(delivered)
    })
}

fn transport(timeout: Duration, protocol: HeaderMap) -> Result<HttpClient, OneShotError> {
    let no_headers = BTreeMap::new();
    let settings = HttpSettings {
        timeout,
        headers: &no_headers,
        bearer_token_file: None,
        basic_auth: None,
        tls_ca_file: None,
    };
    HttpClient::new(&settings, protocol).map_err(|e| OneShotError::Setup(e.to_string()))
}

fn pushgateway(
    url: &HttpUrl,
    key: GroupingKey,
    timeout: Duration,
) -> Result<Pushgateway, OneShotError> {
    let transport = transport(timeout, pushgateway::protocol_headers(false))?;
    Ok(Pushgateway::new(transport, url, key, false))
}

/// Sends the snapshot by remote-write, `job` and the labels added to every series, in
/// as many requests as it takes, in order; no stale markers (the series stay visible).
async fn remote_write(
    url: &HttpUrl,
    key: &GroupingKey,
    snapshot: &Snapshot,
    timeout: Duration,
    protocol: RemoteWriteProtocol,
) -> Result<(), OneShotError> {
    let labels: BTreeMap<String, String> = key
        .labels()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    // No default `instance`: only what the command line gives.
    let mut series = SeriesState::new(&labels, "", REMOTE_WRITE_SERIES_PER_REQUEST);
    if protocol != RemoteWriteProtocol::V1 {
        series.set_protocol(Protocol::V2);
    }
    let converted = series.convert(snapshot, chrono::Utc::now().timestamp_millis())?;
    let transport = transport(timeout, remote_write::protocol_headers())?;
    let mut fell_back = false;
    for batch in converted.batches {
        let mut batch = batch;
        loop {
            if fell_back && batch.protocol == Protocol::V2 {
                batch = remote_write::to_v1(&batch)
                    .map_err(|e| OneShotError::Transcode(e.to_string()))?;
            }
            match send_once(&transport, url, &batch).await? {
                Sent::Done => break,
                Sent::NotUnderstood if protocol == RemoteWriteProtocol::Auto => {
                    eprintln!("codex-proxy: the receiver does not understand remote-write 2.0; sending 1.0");
                    fell_back = true;
                }
                Sent::NotUnderstood => return Err(OneShotError::RemoteWriteNotUnderstood),
            }
        }
    }
    Ok(())
}

/// How one request went, when it did not fail outright.
enum Sent {
    Done,
    /// The receiver does not understand 2.0 (nothing was written).
    NotUnderstood,
}

async fn send_once(
    transport: &HttpClient,
    url: &HttpUrl,
    batch: &Batch,
) -> Result<Sent, OneShotError> {
    let request = transport
        .request(Method::POST, url.as_url().clone())
        .map_err(|e| OneShotError::Setup(e.to_string()))?
        .headers(batch.protocol.headers())
        .body(batch.body.clone());
    let response = request.send().await.map_err(|e| {
        // Without the URL: it may carry credentials.
        OneShotError::RemoteWriteUnreachable(error_chain(e))
    })?;
    let status = response.status();
    let v2 = batch.protocol == Protocol::V2;
    if status.is_success() {
        if !v2 {
            return Ok(Sent::Done);
        }
        // Classic series only: every sample counts in `Samples-Written`.
        return match negotiate::written(response.headers()) {
            Written::NotUnderstood => Ok(Sent::NotUnderstood),
            w if w.total() >= batch.samples => Ok(Sent::Done),
            w => Err(OneShotError::RemoteWritePartial {
                written: w.total(),
                sent: batch.samples,
            }),
        };
    }
    let message = error_body(response, ERROR_BODY_LIMIT).await;
    if v2 && negotiate::unsupported(status, &message) {
        return Ok(Sent::NotUnderstood);
    }
    Err(OneShotError::RemoteWriteRejected {
        status: status.as_u16(),
        message,
    })
}

/// Families as the input names them: the parts of one family that the snapshot split
/// by their bounds (they sit side by side) count once.
fn family_count(snapshot: &Snapshot) -> usize {
    let names = snapshot.families.iter().map(|f| f.name.as_str());
    let mut previous = None;
    names
        .filter(|&name| previous.replace(name) != Some(name))
        .count()
}

/// The input, parsed strictly; an input without samples is refused.
pub(crate) fn load(input: &Input) -> Result<Snapshot, OneShotError> {
    let what = input.describe();
    let read_error = |source| OneShotError::Read {
        what: what.clone(),
        source,
    };
    let bytes = match input {
        Input::Stdin => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(read_error)?;
            buf
        }
        Input::File(path) => std::fs::read(path).map_err(read_error)?,
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
        ))
    })?;
    let snapshot = text::parse(&text).map_err(|source| OneShotError::Parse {
        what: what.clone(),
        source,
    })?;
    if snapshot.families.is_empty() {
        return Err(OneShotError::Empty { what });
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_duplicates_or_missing_equals_are_refused() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let labels = labels_from_args(&args(&["instance=a", "path=/x=y", "empty="])).unwrap();
        assert_eq!(labels["path"], "/x=y");
        assert_eq!(labels["empty"], "");
        assert!(matches!(
            labels_from_args(&args(&["a=1", "a=2"])),
            Err(OneShotError::DuplicateLabel(_))
        ));
        assert!(matches!(
            labels_from_args(&args(&["novalue"])),
            Err(OneShotError::BadLabel(_))
        ));
    }

    #[test]
    fn bad_input_is_refused_naming_the_file_and_line_with_exit_code_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        std::fs::write(&path, "ok 1\nbad{ 2\n").unwrap();
        let e = load(&Input::File(path.clone())).unwrap_err();
        assert!(e.to_string().contains("m.prom: line 2:"), "{e}");
        assert_eq!(e.exit_code(), 2);

        std::fs::write(&path, "# only a comment\n").unwrap();
        assert!(matches!(
            load(&Input::File(path.clone())),
            Err(OneShotError::Empty { .. })
        ));
        std::fs::write(&path, [b'a', b' ', 0xff, b'\n']).unwrap();
        assert!(load(&Input::File(path))
            .unwrap_err()
            .to_string()
            .contains("not UTF-8"));
        let missing = load(&Input::File(dir.path().join("missing"))).unwrap_err();
        assert_eq!(missing.exit_code(), 2);
    }

    #[test]
    fn a_bad_url_is_bad_input_naming_its_flag_for_every_target() {
        let url = "ftp://user:s3cret@gateway:9091".to_string();
        for target in [
            Target::Pushgateway {
                url: url.clone(),
                method: PushMethod::Put,
            },
            Target::DeleteGroup { url: url.clone() },
            Target::RemoteWrite {
                url: url.clone(),
                protocol: RemoteWriteProtocol::V1,
            },
        ] {
            let e = target.url().unwrap_err();
            assert_eq!(e.exit_code(), 2, "{e}");
            let message = e.to_string();
            assert!(message.starts_with("--"), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
    }

    #[test]
    fn a_family_split_by_its_buckets_counts_as_one_family() {
        let snapshot = text::parse(
            "# TYPE h histogram\nh_bucket{a=\"1\",le=\"1\"} 1\nh_bucket{a=\"1\",le=\"+Inf\"} 1\n\
             h_sum{a=\"1\"} 1\nh_count{a=\"1\"} 1\nh_bucket{a=\"2\",le=\"+Inf\"} 0\n\
             h_sum{a=\"2\"} 0\nh_count{a=\"2\"} 0\ng 1\n",
        )
        .unwrap();
        assert_eq!(snapshot.families.len(), 3);
        assert_eq!(family_count(&snapshot), 2);
    }

    #[test]
    fn a_dash_means_stdin() {
        assert_eq!(Input::from_arg(Some("-".into())), Input::Stdin);
        assert_eq!(Input::from_arg(None), Input::Stdin);
        assert_eq!(Input::from_arg(Some("f".into())), Input::File("f".into()));
    }

    #[test]
    fn a_metric_carrying_a_command_line_label_is_refused_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        std::fs::write(&path, "m{instance=\"x\"} 1\n").unwrap();
        // Nothing listens on port 9: the refusal must come before any connection.
        let url = "http://127.0.0.1:9".to_string();
        for target in [
            Target::Pushgateway {
                url: url.clone(),
                method: PushMethod::Put,
            },
            Target::RemoteWrite {
                url: url.clone(),
                protocol: RemoteWriteProtocol::V1,
            },
        ] {
            let request = Request {
                target,
                input: Input::File(path.clone()),
                job: "j".into(),
                labels: BTreeMap::from([("instance".to_string(), "a".to_string())]),
                timeout: Duration::from_secs(1),
            };
            let e = run(request).unwrap_err();
            assert!(
                e.to_string().contains("carries the label `instance`"),
                "{e}"
            );
            assert_eq!(e.exit_code(), 2);
        }
    }
}
