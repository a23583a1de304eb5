//! Which remote-write protocol a destination speaks, and what a receiver's answer says
//! about it.
//!
//! `protocol = "auto"` starts on 2.0 and falls back to 1.0, for the rest of the process's
//! life, at the first sign that the receiver does not understand 2.0 (the spec's own
//! signs, 2.0-rc.4 "Unsupported Request Content" and "Required Written Response Headers"):
//! - 415 Unsupported Media Type;
//! - 400 whose body says the content type is not supported (what 1.x receivers answer);
//! - a 2xx without any `X-Prometheus-Remote-Write-*-Written` header: a 1.x receiver that
//!   ignores `Content-Type` reads a 2.0 body as an empty 1.0 request (fields 1 to 3 are
//!   reserved in 2.0 for exactly that) and answers 204, having written nothing.
//!
//! In each case nothing was written, so the same batch is sent again as 1.0
//! (`transcode.rs`): nothing lost, nothing doubled. With a `queue_dir` the choice is kept
//! in `<queue_dir>/protocol`, so a restart does not ask again (deleting the file does).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};

use crate::config::RemoteWriteProtocol;

/// The wire protocol of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Remote-write 1.0: `prometheus.WriteRequest`.
    V1,
    /// Remote-write 2.0: `io.prometheus.write.v2.Request`.
    V2,
}

impl Protocol {
    /// The spec's version, as `/healthz` and the logs show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V1 => "1.0",
            Protocol::V2 => "2.0",
        }
    }

    /// The headers that differ between the protocols; they replace those of the client
    /// (`super::protocol_headers`, the 1.0 ones), which configured headers never override.
    pub(crate) fn headers(self) -> HeaderMap {
        let (content_type, version) = match self {
            Protocol::V1 => ("application/x-protobuf", "0.1.0"),
            Protocol::V2 => (
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                "2.0.0",
            ),
        };
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h.insert(VERSION_HEADER, HeaderValue::from_static(version));
        h
    }
}

pub(crate) const VERSION_HEADER: HeaderName =
    HeaderName::from_static("x-prometheus-remote-write-version");

/// The response headers of a 2.0 receiver: samples, histograms, exemplars written.
const SAMPLES_WRITTEN: &str = "x-prometheus-remote-write-samples-written";
const HISTOGRAMS_WRITTEN: &str = "x-prometheus-remote-write-histograms-written";
const EXEMPLARS_WRITTEN: &str = "x-prometheus-remote-write-exemplars-written";
const WRITTEN: [&str; 3] = [SAMPLES_WRITTEN, HISTOGRAMS_WRITTEN, EXEMPLARS_WRITTEN];

/// Where the negotiated protocol is kept, inside `queue_dir`.
const STORE_FILE: &str = "protocol";

/// One destination's protocol: configured, and for `auto`, negotiated.
#[derive(Debug)]
pub(crate) struct Negotiation {
    configured: RemoteWriteProtocol,
    /// Whether requests are made in 2.0 now.
    v2: AtomicBool,
    store: Option<PathBuf>,
    /// Identifies the receiver in the store: a stored choice for another URL is not used.
    url_key: String,
}

impl Negotiation {
    /// The protocol to start with: `v1` and `v2` as configured; `auto` 2.0, unless the
    /// store in `queue_dir` says this receiver fell back to 1.0 before.
    pub(crate) fn open(
        configured: RemoteWriteProtocol,
        queue_dir: Option<&Path>,
        url: &Url,
        destination: &str,
    ) -> Negotiation {
        let store = queue_dir.map(|d| d.join(STORE_FILE));
        let url_key = url_key(url);
        let v2 = match configured {
            RemoteWriteProtocol::V1 => false,
            RemoteWriteProtocol::V2 => true,
            RemoteWriteProtocol::Auto => {
                let stored = store.as_deref().and_then(|p| read_store(p, &url_key));
                if stored == Some(Protocol::V1) {
                    tracing::info!(
                        destination,
                        "remote-write 1.0, as negotiated before (kept in queue_dir/protocol)"
                    );
                }
                stored != Some(Protocol::V1)
            }
        };
        Negotiation {
            configured,
            v2: AtomicBool::new(v2),
            store,
            url_key,
        }
    }

    /// The protocol requests are made in now.
    pub(crate) fn current(&self) -> Protocol {
        if self.v2.load(Ordering::Acquire) {
            Protocol::V2
        } else {
            Protocol::V1
        }
    }

    /// Whether a receiver that does not understand 2.0 makes this destination fall back.
    pub(crate) fn may_fall_back(&self) -> bool {
        self.configured == RemoteWriteProtocol::Auto
    }

    /// Switches to 1.0 for good: logged and stored once, whoever calls it first.
    pub(crate) fn fall_back(&self, destination: &str, why: &str) {
        if !self.v2.swap(false, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(destination, why, "receiver does not understand remote-write 2.0: falling back to 1.0 for the life of the process; queued 2.0 requests are sent as 1.0");
        if let Some(path) = &self.store {
            let text = format!("1.0\nurl {}\n", self.url_key);
            if let Err(e) = std::fs::write(path, text) {
                tracing::warn!(destination, error = %e, "cannot keep the negotiated protocol in queue_dir: the next start asks again");
            }
        }
    }
}

/// The protocol kept in `path` for the receiver `url_key`, if any.
fn read_store(path: &Path, url_key: &str) -> Option<Protocol> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let protocol = match lines.next()? {
        "1.0" => Protocol::V1,
        "2.0" => Protocol::V2,
        _ => return None,
    };
    (lines.next()? == format!("url {url_key}")).then_some(protocol)
}

/// A fingerprint of the receiver's address: scheme, host, port and path, hashed, so that
/// neither credentials nor a query string are written to disk.
fn url_key(url: &Url) -> String {
    let address = format!(
        "{}://{}:{}{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default(),
        url.path()
    );
    format!("{:08x}", crc32fast::hash(address.as_bytes()))
}

/// What a 2xx answer to a 2.0 request says was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The three counts; a header that is missing or unreadable, when another is there,
    /// counts as 0 (the spec lets senders assume so).
    Counts {
        samples: u64,
        histograms: u64,
        exemplars: u64,
    },
    /// No `*-Written` header at all: a 1.x receiver that wrote nothing.
    NotUnderstood,
}

impl Written {
    /// Samples, histograms and exemplars together: what a request's `samples` counts.
    pub(crate) fn total(self) -> u64 {
        match self {
            Written::Counts {
                samples,
                histograms,
                exemplars,
            } => samples.saturating_add(histograms).saturating_add(exemplars),
            Written::NotUnderstood => 0,
        }
    }
}

/// Reads the `X-Prometheus-Remote-Write-*-Written` headers of a 2xx answer to a 2.0 request.
pub(crate) fn written(headers: &HeaderMap) -> Written {
    if !WRITTEN.iter().any(|h| headers.contains_key(*h)) {
        return Written::NotUnderstood;
    }
    let count = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Written::Counts {
        samples: count(SAMPLES_WRITTEN),
        histograms: count(HISTOGRAMS_WRITTEN),
        exemplars: count(EXEMPLARS_WRITTEN),
    }
}

/// Whether an answer says the receiver does not take native histograms: Prometheus 2.4x
/// without `--enable-feature=native-histograms` answers 500 with this body and stores
/// nothing of the request. A retry would get the same answer forever.
pub(crate) fn native_histograms_refused(status: StatusCode, message: &str) -> bool {
    status.is_server_error()
        && message
            .to_ascii_lowercase()
            .contains("native histograms are disabled")
}

/// Whether a 4xx answer to a 2.0 request says the receiver does not take 2.0: a 415, or a
/// 400 whose message is about the content type (a 1.x receiver that checks it).
pub(crate) fn unsupported(status: StatusCode, message: &str) -> bool {
    if status == StatusCode::UNSUPPORTED_MEDIA_TYPE {
        return true;
    }
    if status != StatusCode::BAD_REQUEST {
        return false;
    }
    let m = message.to_ascii_lowercase();
    let about_type = ["content type", "content-type", "media type", "proto="]
        .iter()
        .any(|s| m.contains(s));
    let refused = ["unsupported", "not supported", "unknown", "invalid"]
        .iter()
        .any(|s| m.contains(s));
    about_type && refused
}

#[cfg(test)]
mod tests {
    #[test]
    fn prometheus_refusing_native_histograms_is_recognised_only_as_a_5xx_saying_so() {
        let body = "native histograms are disabled\n";
        assert!(native_histograms_refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            body
        ));
        assert!(native_histograms_refused(
            StatusCode::BAD_GATEWAY,
            "Native histograms are disabled"
        ));
        assert!(!native_histograms_refused(
            StatusCode::INTERNAL_SERVER_ERROR,
            "disk full"
        ));
        assert!(!native_histograms_refused(StatusCode::BAD_REQUEST, body));
    }

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(*n, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn written_headers_are_counted_a_missing_one_as_zero_and_none_at_all_as_not_understood() {
        assert_eq!(written(&headers(&[])), Written::NotUnderstood);
        let all = written(&headers(&[
            (SAMPLES_WRITTEN, "5"),
            (HISTOGRAMS_WRITTEN, " 2"),
            (EXEMPLARS_WRITTEN, "1"),
        ]));
        assert_eq!(
            all,
            Written::Counts {
                samples: 5,
                histograms: 2,
                exemplars: 1
            }
        );
        assert_eq!(all.total(), 8);
        // Another Written header alone: no sample written; garbage reads as 0.
        let other = written(&headers(&[
            (HISTOGRAMS_WRITTEN, "0"),
            (SAMPLES_WRITTEN, "x"),
        ]));
        assert_eq!(other.total(), 0);
        let huge = written(&headers(&[
            (SAMPLES_WRITTEN, "18446744073709551615"),
            (EXEMPLARS_WRITTEN, "3"),
        ]));
        assert_eq!(huge.total(), u64::MAX, "no overflow");
    }

    #[test]
    fn only_415_or_a_400_about_the_content_type_means_unsupported() {
        assert!(unsupported(StatusCode::UNSUPPORTED_MEDIA_TYPE, ""));
        assert!(unsupported(
            StatusCode::BAD_REQUEST,
            "unsupported Content-Type \"application/x-protobuf;proto=io.prometheus.write.v2.Request\""
        ));
        assert!(!unsupported(StatusCode::BAD_REQUEST, "out of order sample"));
        assert!(!unsupported(
            StatusCode::NOT_FOUND,
            "unsupported content type"
        ));
    }

    #[test]
    fn a_fall_back_is_stored_for_this_receiver_only() {
        let dir = tempfile::tempdir().unwrap();
        let url = Url::parse("http://user:secret@127.0.0.1:9090/api/v1/write?token=x").unwrap();
        let other = Url::parse("http://127.0.0.1:9091/api/v1/write").unwrap();
        let auto = RemoteWriteProtocol::Auto;
        let n = Negotiation::open(auto, Some(dir.path()), &url, "d");
        assert_eq!(n.current(), Protocol::V2);
        n.fall_back("d", "415");
        assert_eq!(n.current(), Protocol::V1);
        let stored = std::fs::read_to_string(dir.path().join(STORE_FILE)).unwrap();
        assert!(!stored.contains("secret") && !stored.contains("token"));

        let again = Negotiation::open(auto, Some(dir.path()), &url, "d");
        assert_eq!(again.current(), Protocol::V1);
        let elsewhere = Negotiation::open(auto, Some(dir.path()), &other, "d");
        assert_eq!(elsewhere.current(), Protocol::V2);
        let forced = Negotiation::open(RemoteWriteProtocol::V2, Some(dir.path()), &url, "d");
        assert_eq!(forced.current(), Protocol::V2);
        assert!(!forced.may_fall_back());
    }
}
