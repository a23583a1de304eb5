//! The guarded `GET /metrics` route.
//!
//! A scrape is admitted when any rule admits it:
//! 1. `allow_unauth`: everyone (development only);
//! 2. a token is configured and `Authorization: Bearer <token>` carries it (compared in
//!    constant time, so response timing does not reveal how much of a guess was right);
//! 3. `basic_auth_users` is configured and `Authorization: Basic` carries one of its users
//!    with the password of its bcrypt hash (verified once, then remembered: crate::auth);
//! 4. `allow_loopback` and the client is on 127.0.0.0/8 or ::1.
//!
//! The same guard stands in front of `/status` and `/status.json` (crate::status).
//!
//! The client is the socket's peer address (axum `ConnectInfo`), never a header. Only
//! when that peer is one of `trusted_proxies` is `X-Forwarded-For` read: the client is
//! then its rightmost address that is not itself a trusted proxy. A local reverse proxy
//! that is not listed would make every scrape it forwards look like loopback, which is
//! why docs/metrics.md says to list it or to turn `allow_loopback` off.
//!
//! Everyone else is refused with a JSON reason: 401 when a credential would admit them,
//! with `WWW-Authenticate: Bearer` when a token is configured and `WWW-Authenticate: Basic`
//! when users are (so that a browser asks for them), 403 when neither is configured (the peer is refused by its address, and no credential
//! can change that). The token may come from `metrics.token_file`, re-read as it rotates
//! (crate::secrets). The body is gzip-compressed when the scraper accepts gzip (Prometheus
//! does), in the format its `Accept` prefers ([`Format::negotiate`]): the delimited
//! protobuf (native histograms and exemplars), OpenMetrics 1.0 (exemplars), else the text
//! format 0.0.4, byte for byte as before and without exemplars.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY, WWW_AUTHENTICATE,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::Metrics;
use crate::auth::{basic_credentials, bearer_token, is_loopback, token_matches, BasicUsers};
use crate::config::MetricsConfig;
use crate::exposition::{encode as text, openmetrics, protobuf};
use crate::secrets::Secret;

/// Where the scrape route is.
pub(crate) const SCRAPE_PATH: &str = "/metrics";

/// Who may scrape.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// Unset: no token admits anyone.
    token: Secret,
    basic: BasicUsers,
    allow_loopback: bool,
    allow_unauth: bool,
    trusted_proxies: Vec<IpAddr>,
}

/// bcrypt verifications running at once, at most: a flood of wrong passwords costs ~70 ms
/// of CPU each, and must not take every core.
const BCRYPT_AT_ONCE: usize = 2;

/// Why a scrape was refused; the text goes into the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A token is configured; this one is wrong (401).
    WrongToken,
    /// A token is configured and none was given (401).
    NoToken,
    /// Basic auth users are configured and no credential was given (401).
    NoCredentials,
    /// Basic credentials were given and are not those of a configured user (401).
    WrongPassword,
    /// No token is configured and the peer's address is not admitted (403).
    NotAllowed,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::WrongToken => "the bearer token does not match metrics.token",
            Refusal::NoToken => {
                "scrape needs a bearer token (metrics.token) or a loopback client (metrics.allow_loopback)"
            }
            Refusal::NoCredentials => {
                "needs a user of metrics.basic_auth_users, a bearer token (metrics.token) or a loopback client (metrics.allow_loopback)"
            }
            Refusal::WrongPassword => "the user or password does not match metrics.basic_auth_users",
            Refusal::NotAllowed => {
                "scrape needs a loopback client (metrics.allow_loopback); no metrics.token is configured"
            }
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Refusal::NotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The Bearer challenge of a 401 (RFC 6750 §3): `invalid_token` when one was given.
    fn bearer_challenge(self) -> &'static str {
        match self {
            Refusal::WrongToken => r#"Bearer realm="metrics", error="invalid_token""#,
            _ => r#"Bearer realm="metrics""#,
        }
    }
}

/// The Basic challenge (RFC 7617 §2): what makes a browser ask for a user and password.
const BASIC_CHALLENGE: &str = r#"Basic realm="codex-proxy", charset="UTF-8""#;

impl Guard {
    /// A guard with the inline `metrics.token`.
    #[cfg(test)]
    pub(crate) fn new(config: &MetricsConfig) -> Self {
        Guard::with_token(config, Secret::inline(&config.token))
    }

    /// A guard whose token is `token` (inline or from `metrics.token_file`).
    pub(crate) fn with_token(config: &MetricsConfig, token: Secret) -> Self {
        Guard {
            token,
            basic: BasicUsers::new(&config.basic_auth_users),
            allow_loopback: config.allow_loopback,
            allow_unauth: config.allow_unauth,
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// Decides on a request from socket peer `peer` (None when the server was not given
    /// connection info: then nobody counts as loopback). Basic credentials not verified
    /// before cost a bcrypt verification here: see [`Guard::check`] for the async side.
    pub(crate) fn admit(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        if self.allow_unauth {
            return Ok(());
        }
        let presented = bearer_token(headers);
        let token = self.token.get();
        if let (Some(presented), Some(token)) = (presented, &token) {
            if token_matches(presented, token.as_bytes()) {
                return Ok(());
            }
        }
        let basic = self
            .basic
            .is_configured()
            .then(|| basic_credentials(headers))
            .flatten();
        if let Some(Some((user, password))) = &basic {
            if self.basic.verify(user, password) {
                return Ok(());
            }
        }
        if self.allow_loopback && self.client(peer, headers).is_some_and(is_loopback) {
            return Ok(());
        }
        if basic.is_some() {
            return Err(Refusal::WrongPassword);
        }
        match (token, presented) {
            (Some(_), Some(_)) => Err(Refusal::WrongToken),
            _ if self.basic.is_configured() => Err(Refusal::NoCredentials),
            (None, _) => Err(Refusal::NotAllowed),
            (Some(_), None) => Err(Refusal::NoToken),
        }
    }

    /// Whether deciding on this request would pay bcrypt (Basic credentials of a known
    /// configuration, not remembered).
    fn needs_bcrypt(&self, headers: &HeaderMap) -> bool {
        self.basic.is_configured()
            && matches!(basic_credentials(headers), Some(Some((user, password)))
                if !self.basic.is_remembered(&user, &password))
    }

    /// [`admit`](Self::admit) for a route: a bcrypt verification runs on a blocking thread
    /// (at most [`BCRYPT_AT_ONCE`] at a time), and a refusal is the response to send.
    /// `peer` is the request's `ConnectInfo` ([`peer_of`]).
    pub(crate) async fn check(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), Response> {
        static BCRYPT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BCRYPT_AT_ONCE);
        let decision = if self.needs_bcrypt(headers) {
            let _permit = BCRYPT.acquire().await;
            let (guard, headers) = (self.clone(), headers.clone());
            tokio::task::spawn_blocking(move || guard.admit(peer, &headers))
                .await
                .unwrap_or(Err(Refusal::NotAllowed))
        } else {
            self.admit(peer, headers)
        };
        decision.map_err(|refusal| self.refuse(refusal))
    }

    /// The refusal as a JSON response, with the challenges of what would admit.
    fn refuse(&self, refusal: Refusal) -> Response {
        let kind = if refusal.status() == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "unauthorized"
        };
        let mut response = (
            refusal.status(),
            Json(serde_json::json!({ "error": { "type": kind, "message": refusal.reason() } })),
        )
            .into_response();
        if refusal.status() == StatusCode::UNAUTHORIZED {
            let h = response.headers_mut();
            if self.token.get().is_some() {
                h.append(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(refusal.bearer_challenge()),
                );
            }
            if self.basic.is_configured() {
                h.append(WWW_AUTHENTICATE, HeaderValue::from_static(BASIC_CHALLENGE));
            }
        }
        response
    }

    /// The client's address: the socket peer, or, behind a trusted proxy, what that proxy
    /// says in `X-Forwarded-For`. `None` when unknown or unreadable.
    fn client(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer?.ip().to_canonical();
        if !self
            .trusted_proxies
            .iter()
            .any(|t| t.to_canonical() == peer)
        {
            return Some(peer);
        }
        let mut hops = Vec::new();
        for value in headers.get_all("x-forwarded-for") {
            for hop in value.to_str().ok()?.split(',') {
                hops.push(hop.trim().parse::<IpAddr>().ok()?.to_canonical());
            }
        }
        if hops.is_empty() {
            // The trusted proxy itself, not forwarding anyone.
            return Some(peer);
        }
        // Walk back from the nearest hop past our own proxies; a chain made only of
        // trusted proxies names none of them a client.
        hops.into_iter().rev().find(|hop| {
            !self
                .trusted_proxies
                .iter()
                .any(|t| t.to_canonical() == *hop)
        })
    }
}

/// The socket peer the server put into the request, if any.
pub(crate) fn peer_of(request: &Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

/// Whether `Accept-Encoding` admits gzip (`gzip`, `x-gzip` or `*`, with a q above 0).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused
                && (coding.eq_ignore_ascii_case("gzip")
                    || coding.eq_ignore_ascii_case("x-gzip")
                    || coding == "*")
        })
}

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Text 0.0.4: classic buckets, no exemplars.
    Text,
    /// OpenMetrics 1.0: classic buckets with exemplars, `# EOF` last.
    OpenMetrics,
    /// Delimited `io.prometheus.client.MetricFamily`: classic and native buckets, exemplars.
    Protobuf,
}

impl Format {
    /// The format `Accept` prefers: the highest `q` among those spoken (ties: the first
    /// listed), text when none is named.
    pub fn negotiate(headers: &HeaderMap) -> Format {
        let mut best = (Format::Text, 0.0f32);
        let ranges = headers
            .get_all(axum::http::header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for range in ranges {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let (mut q, mut proto, mut encoding, mut version) = (1.0f32, None, None, None);
            for p in parts {
                let Some((k, v)) = p.split_once('=') else {
                    continue;
                };
                let v = v.trim().trim_matches('"');
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.parse().unwrap_or(0.0),
                    "proto" => proto = Some(v.to_string()),
                    "encoding" => encoding = Some(v.to_string()),
                    "version" => version = Some(v.to_string()),
                    _ => {}
                }
            }
            let format = match media.as_str() {
                "application/vnd.google.protobuf"
                    if proto.as_deref() == Some("io.prometheus.client.MetricFamily")
                        && encoding.as_deref() == Some("delimited") =>
                {
                    Format::Protobuf
                }
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    Format::OpenMetrics
                }
                "text/plain" | "*/*" | "text/*" => Format::Text,
                _ => continue,
            };
            if q > best.1 {
                best = (format, q);
            }
        }
        best.0
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => text::CONTENT_TYPE,
            Format::OpenMetrics => openmetrics::CONTENT_TYPE,
            Format::Protobuf => protobuf::CONTENT_TYPE,
        }
    }
}

struct ScrapeState {
    renderer: Renderer,
    guard: Guard,
}

/// The `/metrics` route: `GET` (and so `HEAD`) behind the guard, whose token is `token`.
pub(crate) fn scrape_route<S>(
    metrics: Arc<Metrics>,
    config: &MetricsConfig,
    token: Secret,
) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let state = Arc::new(ScrapeState {
        renderer: Renderer::new(metrics),
        guard: Guard::with_token(config, token),
    });
    get(scrape).with_state(state)
}

async fn scrape(State(state): State<Arc<ScrapeState>>, request: Request) -> Response {
    let headers = request.headers();
    if let Err(refused) = state.guard.check(peer_of(&request), headers).await {
        return refused;
    }
    let gzip = accepts_gzip(headers);
    let format = Format::negotiate(headers);
    match state.renderer.render_as(format, gzip) {
        Ok(body) => {
            let mut response = body.into_response();
            let h = response.headers_mut();
            h.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            h.insert(VARY, HeaderValue::from_static("accept, accept-encoding"));
            if gzip {
                h.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot render /metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({ "error": { "type": "internal", "message": "cannot render metrics" } })),
            )
                .into_response()
        }
    }
}

/// Renders the registry in the text format.
#[derive(Debug)]
pub struct Renderer {
    metrics: Arc<Metrics>,
    /// Size of the last rendering: the next buffer starts that large, instead of
    /// growing (and copying) its way up to a few hundred KiB every scrape.
    last_len: AtomicUsize,
}

impl Renderer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Renderer {
            metrics,
            last_len: AtomicUsize::new(16 * 1024),
        }
    }

    /// The text format, gzip-compressed when asked.
    pub fn render(&self, gzip: bool) -> std::io::Result<Vec<u8>> {
        self.render_as(Format::Text, gzip)
    }

    /// `format`, gzip-compressed when asked.
    pub fn render_as(&self, format: Format, gzip: bool) -> std::io::Result<Vec<u8>> {
        let snapshot = self.metrics.snapshot();
        let hint = self.last_len.load(Ordering::Relaxed);
        let body = match format {
            Format::Text | Format::OpenMetrics => {
                let mut text = String::with_capacity(hint + hint / 8);
                if format == Format::Text {
                    text::encode(&snapshot, &mut text);
                } else {
                    openmetrics::encode(&snapshot, &mut text);
                }
                text.into_bytes()
            }
            Format::Protobuf => {
                let mut bytes = Vec::with_capacity(hint / 2);
                protobuf::encode(&snapshot, &mut bytes);
                bytes
            }
        };
        if format == Format::Text {
            self.last_len.store(body.len(), Ordering::Relaxed);
        }
        if !gzip {
            return Ok(body);
        }
        let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 4), Compression::fast());
        encoder.write_all(&body)?;
        encoder.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::Router;
    use std::io::Read;
    use tower::ServiceExt;

    const LOOPBACK: &str = "127.0.0.1:40000";
    const REMOTE: &str = "192.0.2.10:40000";

    fn config(token: &str, allow_loopback: bool, allow_unauth: bool) -> MetricsConfig {
        MetricsConfig {
            enabled: true,
            token: token.into(),
            allow_loopback,
            allow_unauth,
            ..MetricsConfig::default()
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn peer(addr: &str) -> Option<SocketAddr> {
        Some(addr.parse().unwrap())
    }

    #[test]
    fn accept_picks_protobuf_then_openmetrics_then_text_as_prometheus_asks() {
        let accept = |v: &str| Format::negotiate(&headers(&[("accept", v)]));
        // Prometheus 2.42 with native histograms on.
        let native = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(accept(native), Format::Protobuf);
        // Without: OpenMetrics first.
        let plain = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(accept(plain), Format::OpenMetrics);
        assert_eq!(accept("text/plain;version=0.0.4"), Format::Text);
        assert_eq!(
            accept("application/openmetrics-text;version=0.0.1"),
            Format::Text
        );
        assert_eq!(
            accept("application/vnd.google.protobuf;proto=other;encoding=delimited"),
            Format::Text
        );
        assert_eq!(accept("application/json"), Format::Text);
        assert_eq!(Format::negotiate(&HeaderMap::new()), Format::Text);
        let q = "text/plain;q=0.9,application/openmetrics-text;version=1.0.0;q=0.5";
        assert_eq!(accept(q), Format::Text);
    }

    #[test]
    fn loopback_is_admitted_when_allowed() {
        let g = Guard::new(&config("", true, false));
        assert_eq!(g.admit(peer(LOOPBACK), &HeaderMap::new()), Ok(()));
        assert_eq!(g.admit(peer("127.8.9.10:1"), &HeaderMap::new()), Ok(()));
        assert_eq!(g.admit(peer("[::1]:1"), &HeaderMap::new()), Ok(()));
        assert_eq!(
            g.admit(peer("[::ffff:127.0.0.1]:1"), &HeaderMap::new()),
            Ok(())
        );
    }

    #[test]
    fn loopback_is_refused_when_not_allowed() {
        let g = Guard::new(&config("", false, false));
        assert_eq!(
            g.admit(peer(LOOPBACK), &HeaderMap::new()),
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn a_remote_peer_needs_the_token() {
        let g = Guard::new(&config("s3cret", true, false));
        assert_eq!(
            g.admit(peer(REMOTE), &HeaderMap::new()),
            Err(Refusal::NoToken)
        );
        let good = headers(&[("authorization", "Bearer s3cret")]);
        assert_eq!(g.admit(peer(REMOTE), &good), Ok(()));
        let lower = headers(&[("authorization", "bearer s3cret")]);
        assert_eq!(g.admit(peer(REMOTE), &lower), Ok(()));
    }

    #[test]
    fn a_wrong_token_is_refused_with_its_own_reason() {
        let g = Guard::new(&config("s3cret", false, false));
        for wrong in [
            "Bearer s3cre",
            "Bearer s3cretX",
            "Bearer ",
            "Basic s3cret",
            "s3cret",
        ] {
            let h = headers(&[("authorization", wrong)]);
            assert!(g.admit(peer(REMOTE), &h).is_err(), "{wrong}");
        }
        let h = headers(&[("authorization", "Bearer nope")]);
        assert_eq!(g.admit(peer(LOOPBACK), &h), Err(Refusal::WrongToken));
        // Another scheme carries no bearer token at all.
        let h = headers(&[("authorization", "Basic s3cret")]);
        assert_eq!(g.admit(peer(LOOPBACK), &h), Err(Refusal::NoToken));
    }

    #[test]
    fn the_default_guard_admits_loopback_and_refuses_others_by_address() {
        let g = Guard::new(&MetricsConfig::default());
        assert_eq!(g.admit(peer(LOOPBACK), &HeaderMap::new()), Ok(()));
        assert_eq!(g.admit(peer("[::1]:1"), &HeaderMap::new()), Ok(()));
        for remote in [
            REMOTE,
            "10.1.2.3:1",
            "[2001:db8::1]:1",
            "[::ffff:10.0.0.1]:1",
        ] {
            assert_eq!(
                g.admit(peer(remote), &HeaderMap::new()),
                Err(Refusal::NotAllowed),
                "{remote}"
            );
            let h = headers(&[("authorization", "Bearer anything")]);
            assert_eq!(g.admit(peer(remote), &h), Err(Refusal::NotAllowed));
        }
    }

    #[test]
    fn no_token_configured_means_no_bearer_admits() {
        // An empty token must not match an empty `Bearer ` header.
        let g = Guard::new(&config("", false, false));
        for presented in ["Bearer ", "Bearer anything"] {
            let h = headers(&[("authorization", presented)]);
            assert_eq!(g.admit(peer(REMOTE), &h), Err(Refusal::NotAllowed));
        }
    }

    #[test]
    fn allow_unauth_admits_everyone() {
        let g = Guard::new(&config("s3cret", false, true));
        assert_eq!(g.admit(peer(REMOTE), &HeaderMap::new()), Ok(()));
        assert_eq!(g.admit(None, &HeaderMap::new()), Ok(()));
    }

    #[test]
    fn without_connection_info_nobody_is_loopback() {
        let g = Guard::new(&config("", true, false));
        assert!(g.admit(None, &HeaderMap::new()).is_err());
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let g = Guard::new(&config("", true, false));
        let spoof = headers(&[("x-forwarded-for", "127.0.0.1")]);
        assert!(g.admit(peer(REMOTE), &spoof).is_err());
    }

    #[test]
    fn forwarded_for_names_the_client_behind_a_trusted_proxy() {
        let mut c = config("", true, false);
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let g = Guard::new(&c);
        // A local reverse proxy forwarding a remote client: not loopback.
        let remote = headers(&[("x-forwarded-for", "192.0.2.7")]);
        assert!(g.admit(peer(LOOPBACK), &remote).is_err());
        // The client can prepend anything; only the hop our proxy appended counts.
        let spoofed = headers(&[("x-forwarded-for", "127.0.0.1, 192.0.2.7")]);
        assert!(g.admit(peer(LOOPBACK), &spoofed).is_err());
        // Two trusted hops, the client behind them on loopback.
        let chain = headers(&[("x-forwarded-for", "127.0.0.5, 10.0.0.2")]);
        assert_eq!(g.admit(peer(LOOPBACK), &chain), Ok(()));
        // A garbled header names nobody.
        let garbled = headers(&[("x-forwarded-for", "not-an-ip")]);
        assert!(g.admit(peer(LOOPBACK), &garbled).is_err());
        // The trusted proxy's own request, forwarding no one.
        assert_eq!(g.admit(peer(LOOPBACK), &HeaderMap::new()), Ok(()));
    }

    #[test]
    fn gzip_is_used_only_when_accepted() {
        assert!(accepts_gzip(&headers(&[("accept-encoding", "gzip")])));
        assert!(accepts_gzip(&headers(&[(
            "accept-encoding",
            "deflate, GZIP;q=0.5"
        )])));
        assert!(accepts_gzip(&headers(&[("accept-encoding", "*")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "gzip;q=0")])));
        assert!(!accepts_gzip(&headers(&[("accept-encoding", "identity")])));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    fn app(config: &MetricsConfig) -> (Arc<Metrics>, Router) {
        let metrics = Metrics::new(config).unwrap();
        let token = Secret::inline(&config.token);
        let router = Router::new().route("/metrics", scrape_route(metrics.clone(), config, token));
        (metrics, router)
    }

    fn scrape_request(from: &str, extra: &[(&'static str, &str)]) -> Request {
        let mut request = Request::builder().uri("/metrics");
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let mut request = request.body(Body::empty()).unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(from.parse().unwrap()));
        request
    }

    #[tokio::test]
    async fn an_admitted_scrape_gets_the_text_format() {
        let (metrics, app) = app(&config("", true, false));
        metrics.worker_restarts.inc();
        let response = app.oneshot(scrape_request(LOOPBACK, &[])).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], text::CONTENT_TYPE);
        assert!(response.headers().get(CONTENT_ENCODING).is_none());
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.contains("\ncodex_worker_restarts_total 1\n"), "{text}");
    }

    #[tokio::test]
    async fn a_scrape_accepting_gzip_gets_gzip() {
        let (metrics, app) = app(&config("", true, false));
        metrics.set_maintenance(true);
        let response = app
            .oneshot(scrape_request(LOOPBACK, &[("accept-encoding", "gzip")]))
            .await
            .unwrap();
        assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.contains("\ncodex_maintenance_mode 1\n"), "{text}");
    }

    #[tokio::test]
    async fn a_wrong_or_missing_token_gets_401_with_a_bearer_challenge_and_no_metrics() {
        let (_, app) = app(&config("s3cret", true, false));
        let cases = [
            (
                &[("authorization", "Bearer guess")][..],
                "does not match",
                true,
            ),
            (&[][..], "needs a bearer token", false),
        ];
        for (extra, reason, invalid) in cases {
            let response = app
                .clone()
                .oneshot(scrape_request(REMOTE, extra))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let challenge = response.headers()[WWW_AUTHENTICATE].to_str().unwrap();
            assert!(challenge.starts_with("Bearer "), "{challenge}");
            assert_eq!(challenge.contains("invalid_token"), invalid, "{challenge}");
            let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(json["error"]["type"], "unauthorized");
            assert!(json["error"]["message"].as_str().unwrap().contains(reason));
            assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
            assert!(!String::from_utf8_lossy(&body).contains("codex_"));
        }
    }

    fn basic_header(user: &str, password: &str) -> String {
        use base64::Engine as _;
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}")
    }

    fn basic_config(token: &str) -> MetricsConfig {
        let mut c = config(token, false, false);
        c.basic_auth_users = [("alice".to_string(), bcrypt::hash("pa55", 4).unwrap())].into();
        c
    }

    #[tokio::test]
    async fn basic_auth_admits_its_user_and_challenges_everyone_else_with_basic() {
        for token in ["", "s3cret"] {
            let (_, app) = app(&basic_config(token));
            let right = basic_header("alice", "pa55");
            for _ in 0..2 {
                // The second time from the memory of verified credentials.
                let response = app
                    .clone()
                    .oneshot(scrape_request(REMOTE, &[("authorization", &right)]))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK, "token {token:?}");
            }
            let wrong = basic_header("alice", "nope");
            let stranger = basic_header("mallory", "pa55");
            for extra in [
                &[][..],
                &[("authorization", wrong.as_str())][..],
                &[("authorization", stranger.as_str())][..],
                &[("authorization", "Basic !!")][..],
            ] {
                let response = app
                    .clone()
                    .oneshot(scrape_request(REMOTE, extra))
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{extra:?}");
                let challenges: Vec<_> = response
                    .headers()
                    .get_all(WWW_AUTHENTICATE)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_string())
                    .collect();
                assert!(
                    challenges.iter().any(|c| c.starts_with("Basic realm=")),
                    "{challenges:?}"
                );
                assert_eq!(
                    challenges.iter().any(|c| c.starts_with("Bearer")),
                    !token.is_empty(),
                    "{challenges:?}"
                );
            }
        }
    }

    #[test]
    fn a_wrong_password_is_told_apart_from_no_credentials() {
        let g = Guard::new(&basic_config(""));
        assert_eq!(
            g.admit(peer(REMOTE), &HeaderMap::new()),
            Err(Refusal::NoCredentials)
        );
        let h = headers(&[("authorization", &basic_header("alice", "x"))]);
        assert_eq!(g.admit(peer(REMOTE), &h), Err(Refusal::WrongPassword));
        // The bearer token still admits beside the users.
        let g = Guard::new(&basic_config("s3cret"));
        let h = headers(&[("authorization", "Bearer s3cret")]);
        assert_eq!(g.admit(peer(REMOTE), &h), Ok(()));
    }

    #[tokio::test]
    async fn a_peer_refused_by_address_gets_403_without_a_challenge() {
        let (_, app) = app(&config("", true, false));
        let response = app.oneshot(scrape_request(REMOTE, &[])).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get(WWW_AUTHENTICATE).is_none());
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["type"], "forbidden");
    }
}
