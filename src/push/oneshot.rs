//! `codex-proxy push`: validate a text-format exposition (a file or stdin) and deliver it
//! once, for scripts and cron jobs. Exit status: 0 delivered, 1 the destination refused it
//! or could not be reached, 2 bad input or arguments (nothing was sent).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use prometheus::proto::MetricFamily;

use crate::config::PushMethod;

use super::pushgateway::{
    count_samples, protocol_headers, GroupingKey, Pushgateway, PushgatewayError,
};
use super::text::{self, ParseError};
use super::transport::{Transport, TransportSettings};

/// Where the exposition comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl Input {
    /// `-` is stdin, anything else a path.
    pub fn from_arg(arg: Option<PathBuf>) -> Input {
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

/// What to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// PUT or POST the exposition to the group.
    Push { input: Input, method: PushMethod },
    /// DELETE the whole group; there is no input.
    Delete,
}

/// One `push` invocation, as parsed from the command line.
#[derive(Debug, Clone)]
pub struct Request {
    pub gateway: String,
    pub job: String,
    pub labels: BTreeMap<String, String>,
    pub action: Action,
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum OneShotError {
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
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("{0}")]
    Pushgateway(#[from] PushgatewayError),
}

impl OneShotError {
    /// 2 when the input or the arguments are at fault (nothing was sent), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            // Sent, and refused or lost on the way.
            OneShotError::Pushgateway(e) if e.outcome().is_some() => 1,
            OneShotError::Runtime(_) => 1,
            _ => 2,
        }
    }
}

/// What was delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub families: usize,
    pub samples: u64,
}

/// `--label NAME=VALUE` arguments into a map; a name given twice is an error.
pub fn labels_from_args(args: &[String]) -> Result<BTreeMap<String, String>, OneShotError> {
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
pub fn run(request: Request) -> Result<Delivered, OneShotError> {
    let key = GroupingKey::new(&request.job, request.labels.clone())?;
    let families = match &request.action {
        Action::Push { input, .. } => Some(load(input)?),
        Action::Delete => None,
    };
    let no_headers = BTreeMap::new();
    let settings = TransportSettings {
        timeout: request.timeout,
        headers: &no_headers,
        bearer_token_file: None,
        basic_auth: None,
        tls_ca_file: None,
    };
    let transport = Transport::new(&settings, protocol_headers(false))
        .map_err(|e| PushgatewayError::Network(e.to_string()))?;
    let gateway = Pushgateway::new(transport, &request.gateway, key, false)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(OneShotError::Runtime)?;
    runtime.block_on(async {
        match (&request.action, families) {
            (Action::Push { method, .. }, Some(families)) => {
                let delivered = Delivered {
                    families: families.len(),
                    samples: count_samples(&families),
                };
                gateway.push(*method, families).await?;
                Ok(delivered)
            }
            _ => {
                gateway.delete().await?;
                Ok(Delivered {
                    families: 0,
                    samples: 0,
                })
            }
        }
    })
}

/// The input, parsed strictly; an input without samples is refused.
pub fn load(input: &Input) -> Result<Vec<MetricFamily>, OneShotError> {
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
    let families = text::parse(&text).map_err(|source| OneShotError::Parse {
        what: what.clone(),
        source,
    })?;
    if families.is_empty() {
        return Err(OneShotError::Empty { what });
    }
    Ok(families)
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
    fn a_dash_means_stdin() {
        assert_eq!(Input::from_arg(Some("-".into())), Input::Stdin);
        assert_eq!(Input::from_arg(None), Input::Stdin);
        assert_eq!(Input::from_arg(Some("f".into())), Input::File("f".into()));
    }

    #[test]
    fn a_metric_carrying_a_grouping_label_is_refused_before_sending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.prom");
        std::fs::write(&path, "m{instance=\"x\"} 1\n").unwrap();
        let request = Request {
            // Nothing listens here: the refusal must come before any connection.
            gateway: "http://127.0.0.1:9".into(),
            job: "j".into(),
            labels: BTreeMap::from([("instance".to_string(), "a".to_string())]),
            action: Action::Push {
                input: Input::File(path),
                method: PushMethod::Put,
            },
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
