//! The HTTP side of a destination, shared by remote-write and Pushgateway: one reqwest
//! client per destination (timeout; rustls trusting the system's roots plus
//! `tls_ca_file`, a client certificate for mTLS, `insecure_skip_verify`), the configured
//! extra headers, credentials read from files, and the bounded reading of a receiver's
//! error message.
//!
//! Protocol headers always win: a configured header with the same name (say a
//! `Content-Type`) is ignored with a warning, as are framing headers and, when credentials
//! are configured, `Authorization`. Credential files are read again for every request, so
//! that rotated tokens are picked up; their contents never reach a log or an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, RequestBuilder, Url};

use crate::config::{BasicAuthConfig, HttpDestination};

/// `User-Agent` of every push.
pub(crate) const USER_AGENT: &str = concat!("codex-proxy/", env!("CARGO_PKG_VERSION"));

/// How much of a receiver's error body is kept for an error or a log line.
pub(crate) const ERROR_BODY_LIMIT: usize = 512;

/// Headers only the HTTP stack may set.
const FRAMING: [HeaderName; 3] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::HOST,
];

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot read {what} file {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {path} is empty or holds characters not allowed in a header")]
    BadCredential { what: &'static str, path: PathBuf },
    #[error("no PEM certificate could be read from tls_ca_file {path}")]
    BadCa { path: PathBuf },
    #[error("no client certificate and key could be read from tls_cert_file {cert} and tls_key_file {key}")]
    BadIdentity { cert: PathBuf, key: PathBuf },
    #[error("invalid header `{name}`")]
    BadHeader { name: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

/// What a destination's configuration says about HTTP.
pub struct HttpSettings<'a> {
    pub timeout: Duration,
    pub headers: &'a BTreeMap<String, String>,
    pub bearer_token_file: Option<&'a Path>,
    pub basic_auth: Option<&'a BasicAuthConfig>,
    pub tls_ca_file: Option<&'a Path>,
}

/// Header values and credentials stay out of `Debug`: a configured header may carry a
/// token, and `Debug` output ends up in logs.
impl std::fmt::Debug for HttpSettings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The client side of TLS beyond the trusted roots.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientTls<'a> {
    /// PEM certificate (chain) and its PEM private key, for servers that require mTLS.
    pub cert_and_key: Option<(&'a Path, &'a Path)>,
    /// Accept any server certificate (testing only).
    pub insecure_skip_verify: bool,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

enum Credentials {
    None,
    Bearer(PathBuf),
    Basic {
        username: String,
        password_file: PathBuf,
    },
}

pub struct HttpClient {
    client: reqwest::Client,
    /// The configured headers that survived, then the protocol's.
    headers: HeaderMap,
    credentials: Credentials,
}

impl HttpClient {
    /// The client of a configured destination; `protocol` as in [`HttpClient::new`].
    pub(crate) fn for_destination(
        destination: &HttpDestination,
        protocol: HeaderMap,
    ) -> Result<HttpClient, HttpError> {
        let settings = HttpSettings {
            timeout: destination.timeout.0,
            headers: &destination.headers,
            bearer_token_file: destination.bearer_token_file.as_deref(),
            basic_auth: destination.basic_auth.as_ref(),
            tls_ca_file: destination.tls_ca_file.as_deref(),
        };
        let tls = ClientTls {
            cert_and_key: destination
                .tls_cert_file
                .as_deref()
                .zip(destination.tls_key_file.as_deref()),
            insecure_skip_verify: destination.insecure_skip_verify,
        };
        HttpClient::with_tls(&settings, tls, protocol)
    }

    /// Checks the credential files once, so that a typo fails at start-up, not at the first
    /// push. `protocol` are the headers of the protocol, sent on every request.
    pub fn new(settings: &HttpSettings<'_>, protocol: HeaderMap) -> Result<HttpClient, HttpError> {
        HttpClient::with_tls(settings, ClientTls::default(), protocol)
    }

    /// [`HttpClient::new`] with a client certificate or without certificate checks.
    pub fn with_tls(
        settings: &HttpSettings<'_>,
        tls: ClientTls<'_>,
        protocol: HeaderMap,
    ) -> Result<HttpClient, HttpError> {
        let credentials = match (settings.bearer_token_file, settings.basic_auth) {
            (Some(path), _) => Credentials::Bearer(path.to_path_buf()),
            (None, Some(b)) => Credentials::Basic {
                username: b.username.clone(),
                password_file: b.password_file.clone(),
            },
            (None, None) => Credentials::None,
        };
        authorization(&credentials)?;

        let mut headers = HeaderMap::new();
        let mut ignored = Vec::new();
        for (name, value) in settings.headers {
            let bad = || HttpError::BadHeader { name: name.clone() };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(value).map_err(|_| bad())?;
            let protected = protocol.contains_key(&name)
                || FRAMING.contains(&name)
                || (name == header::AUTHORIZATION && !matches!(credentials, Credentials::None));
            if protected {
                ignored.push(name.to_string());
            } else {
                headers.insert(name, value);
            }
        }
        if !ignored.is_empty() {
            tracing::warn!(headers = ?ignored, "configured headers ignored: the protocol or the credentials set them");
        }
        headers.extend(protocol);

        let mut builder = reqwest::Client::builder().timeout(settings.timeout);
        if let Some(path) = settings.tls_ca_file {
            let pem = std::fs::read(path).map_err(|source| HttpError::ReadFile {
                what: "tls_ca_file",
                path: path.to_path_buf(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| HttpError::BadCa {
                    path: path.to_path_buf(),
                })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = tls.cert_and_key {
            let bad = || HttpError::BadIdentity {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            };
            let mut pem = std::fs::read(cert).map_err(|source| HttpError::ReadFile {
                what: "tls_cert_file",
                path: cert.to_path_buf(),
                source,
            })?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|source| HttpError::ReadFile {
                what: "tls_key_file",
                path: key.to_path_buf(),
                source,
            })?);
            // reqwest reads the first key and every certificate of one PEM buffer.
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(|_| bad())?);
        }
        if tls.insecure_skip_verify {
            tracing::warn!(
                "insecure_skip_verify: server certificates are not checked for this destination"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        let client = builder
            .build()
            .map_err(|e| HttpError::Client(e.without_url()))?;
        Ok(HttpClient {
            client,
            headers,
            credentials,
        })
    }

    /// A request with every header set and the credentials read now.
    pub(crate) fn request(&self, method: Method, url: Url) -> Result<RequestBuilder, HttpError> {
        let mut headers = self.headers.clone();
        if let Some(auth) = authorization(&self.credentials)? {
            headers.insert(header::AUTHORIZATION, auth);
        }
        Ok(self.client.request(method, url).headers(headers))
    }
}

/// The `Authorization` value of `credentials`, read from their files; marked sensitive so
/// that no debug output shows it.
fn authorization(credentials: &Credentials) -> Result<Option<HeaderValue>, HttpError> {
    let mut value = match credentials {
        Credentials::None => return Ok(None),
        Credentials::Bearer(path) => {
            let token = read_secret("bearer_token_file", path)?;
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                HttpError::BadCredential {
                    what: "bearer_token_file",
                    path: path.clone(),
                }
            })?
        }
        Credentials::Basic {
            username,
            password_file,
        } => {
            let password = read_secret("basic_auth.password_file", password_file)?;
            let pair =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            HeaderValue::from_str(&format!("Basic {pair}")).map_err(|_| {
                HttpError::BadCredential {
                    what: "basic_auth.password_file",
                    path: password_file.clone(),
                }
            })?
        }
    };
    value.set_sensitive(true);
    Ok(Some(value))
}

/// A secret file's contents without surrounding whitespace (files usually end in a newline).
fn read_secret(what: &'static str, path: &Path) -> Result<String, HttpError> {
    let text = std::fs::read_to_string(path).map_err(|source| HttpError::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(HttpError::BadCredential {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(secret.to_string())
}

/// The start of a response body, for an error or a log line: at most `limit` bytes,
/// read chunk by chunk and the rest never read, so that a receiver answering with a huge
/// (or endless) body costs no more than one chunk of memory. Decoded lossily, blanks
/// trimmed, `…` appended when cut; a read error keeps what came before it.
pub(crate) async fn error_body(mut response: reqwest::Response, limit: usize) -> String {
    let mut kept = Vec::new();
    let mut cut = false;
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit - kept.len();
        if chunk.len() > room {
            kept.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        kept.extend_from_slice(&chunk);
    }
    excerpt(&kept, cut)
}

/// A transport error and its sources, `: `-separated (reqwest's own message is terse),
/// without the URL, which may carry credentials.
pub(crate) fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `bytes` as text; `cut` when they are the start of something longer.
fn excerpt(bytes: &[u8], cut: bool) -> String {
    let bytes = if cut {
        without_split_char(bytes)
    } else {
        bytes
    };
    let mut text = String::from_utf8_lossy(bytes).trim().to_string();
    if cut {
        text.push('…');
    }
    text
}

/// `bytes` without a UTF-8 sequence that the cut left incomplete at its end.
fn without_split_char(bytes: &[u8]) -> &[u8] {
    let tail = bytes.len().saturating_sub(3);
    for start in (tail..bytes.len()).rev() {
        let lead = bytes[start];
        if lead & 0xC0 == 0x80 {
            continue; // a continuation byte: the sequence starts further back
        }
        let len = match lead {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if bytes.len() - start < len {
            &bytes[..start]
        } else {
            bytes
        };
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings<'a>(headers: &'a BTreeMap<String, String>) -> HttpSettings<'a> {
        HttpSettings {
            timeout: Duration::from_secs(1),
            headers,
            bearer_token_file: None,
            basic_auth: None,
            tls_ca_file: None,
        }
    }

    fn protocol() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        h
    }

    #[test]
    fn configured_headers_never_override_protocol_or_framing_headers() {
        let headers: BTreeMap<String, String> = [
            ("Content-Type", "text/plain"),
            ("content-length", "3"),
            ("X-Scope-OrgID", "team-a"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let t = HttpClient::new(&settings(&headers), protocol()).unwrap();
        let req = t
            .request(Method::POST, Url::parse("http://127.0.0.1:1/").unwrap())
            .unwrap()
            .build()
            .unwrap();
        let h = req.headers();
        assert_eq!(h.get_all(header::CONTENT_TYPE).iter().count(), 1);
        assert_eq!(h[header::CONTENT_TYPE], "application/x-protobuf");
        assert_eq!(h["x-scope-orgid"], "team-a");
        assert!(h.get(header::CONTENT_LENGTH).is_none());
    }

    #[test]
    fn credentials_are_read_per_request_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-one\n").unwrap();
        let headers = BTreeMap::from([("Authorization".to_string(), "Bearer mine".to_string())]);
        let mut s = settings(&headers);
        s.bearer_token_file = Some(&token);
        let t = HttpClient::new(&s, protocol()).unwrap();
        let url = Url::parse("http://127.0.0.1:1/").unwrap();
        let auth = |t: &HttpClient| {
            let req = t
                .request(Method::POST, url.clone())
                .unwrap()
                .build()
                .unwrap();
            let v = req.headers()[header::AUTHORIZATION].clone();
            assert!(v.is_sensitive());
            assert!(!format!("{v:?}").contains("s3cret"));
            v.to_str().unwrap().to_string()
        };
        assert_eq!(
            auth(&t),
            "Bearer s3cret-one",
            "the file wins over a configured header"
        );
        std::fs::write(&token, "s3cret-two").unwrap();
        assert_eq!(
            auth(&t),
            "Bearer s3cret-two",
            "a rotated token is picked up"
        );

        std::fs::write(&token, "bad\ntoken").unwrap();
        let err = t.request(Method::POST, url).err().unwrap().to_string();
        assert!(
            !err.contains("bad") && err.contains("bearer_token_file"),
            "{err}"
        );
    }

    #[test]
    fn basic_auth_reads_the_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\n").unwrap();
        let basic = BasicAuthConfig {
            username: "alice".into(),
            password_file: pw,
        };
        let headers = BTreeMap::new();
        let mut s = settings(&headers);
        s.basic_auth = Some(&basic);
        let t = HttpClient::new(&s, protocol()).unwrap();
        let req = t
            .request(Method::POST, Url::parse("http://127.0.0.1:1/").unwrap())
            .unwrap()
            .build()
            .unwrap();
        // base64("alice:hunter2")
        assert_eq!(
            req.headers()[header::AUTHORIZATION],
            "Basic YWxpY2U6aHVudGVyMg=="
        );
    }

    #[test]
    fn missing_files_fail_at_start_naming_the_file_not_its_contents() {
        let headers = BTreeMap::new();
        let mut s = settings(&headers);
        let missing = PathBuf::from("/nonexistent/token");
        s.bearer_token_file = Some(&missing);
        let err = HttpClient::new(&s, protocol()).err().unwrap().to_string();
        assert!(err.contains("/nonexistent/token"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let mut s = settings(&headers);
        s.tls_ca_file = Some(&ca);
        assert!(matches!(
            HttpClient::new(&s, protocol()),
            Err(HttpError::BadCa { .. })
        ));

        let not_pem = dir.path().join("client.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let tls = ClientTls {
            cert_and_key: Some((&not_pem, &not_pem)),
            insecure_skip_verify: false,
        };
        assert!(matches!(
            HttpClient::with_tls(&settings(&headers), tls, protocol()),
            Err(HttpError::BadIdentity { .. })
        ));
        let tls = ClientTls {
            cert_and_key: Some((&missing, &not_pem)),
            insecure_skip_verify: false,
        };
        let err = HttpClient::with_tls(&settings(&headers), tls, protocol())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("tls_cert_file") && err.contains("/nonexistent/token"),
            "{err}"
        );
    }

    #[test]
    fn an_excerpt_is_cut_on_a_char_boundary_and_marked() {
        let text = "ééé".as_bytes();
        assert_eq!(excerpt(&text[..4], true), "éé…");
        assert_eq!(excerpt(&text[..5], true), "éé…");
        assert_eq!(excerpt("€".as_bytes(), false), "€");
        assert_eq!(excerpt(&"a€".as_bytes()[..3], true), "a…");
        assert_eq!(excerpt(&"a😀".as_bytes()[..4], true), "a…");
        assert_eq!(excerpt("  no room\n".as_bytes(), false), "no room");
        assert_eq!(excerpt(b"bad \xff byte", false), "bad \u{FFFD} byte");
    }

    /// Answers one request with a 400 whose chunked body never ends; how many body bytes
    /// it managed to write before the client went away.
    async fn endless_error_server(listener: tokio::net::TcpListener) -> u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended early");
            request.extend_from_slice(&buf[..n]);
        }
        let head = "HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
        let mut written = 0u64;
        // Bounded, should the client read on regardless: 4 GiB is far past any socket buffer.
        while written < 4 << 30 {
            if socket.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
            written += 64 * 1024;
        }
        written
    }

    #[tokio::test]
    async fn an_endless_error_body_is_read_only_up_to_the_limit() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(endless_error_server(listener));
        let response = reqwest::Client::new().post(url).send().await.unwrap();
        assert_eq!(response.status(), 400);
        let read = tokio::time::timeout(
            Duration::from_secs(20),
            error_body(response, ERROR_BODY_LIMIT),
        )
        .await
        .expect("the reader stops at the limit instead of reading the endless body");
        assert_eq!(read, format!("{}…", "x".repeat(ERROR_BODY_LIMIT)));
        let written = tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .expect("the server sees the client go away")
            .unwrap();
        assert!(written < 64 << 20, "the server wrote {written} bytes");
    }

    #[tokio::test]
    async fn a_short_error_body_is_kept_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await.unwrap();
            let body = " out of order: sample too old \n";
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        let response = reqwest::Client::new().post(url).send().await.unwrap();
        assert_eq!(
            error_body(response, ERROR_BODY_LIMIT).await,
            "out of order: sample too old"
        );
        server.await.unwrap();
    }
}
