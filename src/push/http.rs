//! The HTTP side of a destination, shared by remote-write and Pushgateway: one reqwest
//! client per destination (timeout, extra CA certificates over rustls), the configured
//! extra headers, and credentials read from files.
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
pub const USER_AGENT: &str = concat!("codex-proxy/", env!("CARGO_PKG_VERSION"));

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
    pub fn for_destination(
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
        HttpClient::new(&settings, protocol)
    }

    /// Checks the credential files once, so that a typo fails at start-up, not at the first
    /// push. `protocol` are the headers of the protocol, sent on every request.
    pub fn new(settings: &HttpSettings<'_>, protocol: HeaderMap) -> Result<HttpClient, HttpError> {
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
    pub fn request(&self, method: Method, url: Url) -> Result<RequestBuilder, HttpError> {
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
    }
}
