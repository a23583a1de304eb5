//! The guarded `GET /metrics` route.
//!
//! A scrape is admitted when any rule admits it:
//! 1. `allow_unauth`: everyone (development only);
//! 2. a token is configured and `Authorization: Bearer <token>` carries it (compared in
//!    constant time, so response timing does not reveal how much of a guess was right);
//! 3. `allow_loopback` and the client is on 127.0.0.0/8 or ::1.
//!
//! The client is the socket's peer address (axum `ConnectInfo`), never a header. Only
//! when that peer is one of `trusted_proxies` is `X-Forwarded-For` read: the client is
//! then its rightmost address that is not itself a trusted proxy. A local reverse proxy
//! that is not listed would make every scrape it forwards look like loopback, which is
//! why docs/metrics.md says to list it or to turn `allow_loopback` off.
//!
//! Everyone else gets 403 with a JSON reason. The body is the text format 0.0.4,
//! gzip-compressed when the scraper accepts gzip (Prometheus does).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, VARY,
};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use flate2::write::GzEncoder;
use flate2::Compression;

use super::Metrics;
use crate::auth::{bearer_token, is_loopback, token_matches};
use crate::config::MetricsConfig;
use crate::exposition::encode as text;

/// Where the scrape route is.
pub(crate) const SCRAPE_PATH: &str = "/metrics";

/// Who may scrape.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// Empty: no token admits anyone.
    token: Vec<u8>,
    allow_loopback: bool,
    allow_unauth: bool,
    trusted_proxies: Vec<IpAddr>,
}

/// Why a scrape was refused; the text goes into the 403 body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    WrongToken,
    NotAllowed,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Refusal::WrongToken => "the bearer token does not match metrics.token",
            Refusal::NotAllowed => {
                "scrape needs a loopback client (metrics.allow_loopback) or a bearer token (metrics.token)"
            }
        }
    }
}

impl Guard {
    pub(crate) fn new(config: &MetricsConfig) -> Self {
        Guard {
            token: config.token.as_bytes().to_vec(),
            allow_loopback: config.allow_loopback,
            allow_unauth: config.allow_unauth,
            trusted_proxies: config.trusted_proxies.clone(),
        }
    }

    /// Decides on a scrape from socket peer `peer` (None when the server was not given
    /// connection info: then nobody counts as loopback).
    pub(crate) fn admit(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        if self.allow_unauth {
            return Ok(());
        }
        let presented = bearer_token(headers);
        if presented.is_some_and(|token| token_matches(token, &self.token)) {
            return Ok(());
        }
        if self.allow_loopback && self.client(peer, headers).is_some_and(is_loopback) {
            return Ok(());
        }
        if presented.is_some() && !self.token.is_empty() {
            Err(Refusal::WrongToken)
        } else {
            Err(Refusal::NotAllowed)
        }
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

struct ScrapeState {
    renderer: Renderer,
    guard: Guard,
}

/// The `/metrics` route: `GET` (and so `HEAD`) behind the guard.
pub(crate) fn scrape_route<S>(metrics: Arc<Metrics>, config: &MetricsConfig) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let state = Arc::new(ScrapeState {
        renderer: Renderer::new(metrics),
        guard: Guard::new(config),
    });
    get(scrape).with_state(state)
}

async fn scrape(State(state): State<Arc<ScrapeState>>, request: Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let headers = request.headers();
    if let Err(refusal) = state.guard.admit(peer, headers) {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": { "type": "forbidden", "message": refusal.reason() } })),
        )
            .into_response();
    }
    let gzip = accepts_gzip(headers);
    match state.renderer.render(gzip) {
        Ok(body) => {
            let mut response = body.into_response();
            let h = response.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(text::CONTENT_TYPE));
            h.insert(VARY, HeaderValue::from_static("accept-encoding"));
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
        let snapshot = self.metrics.snapshot();
        let hint = self.last_len.load(Ordering::Relaxed);
        let mut text = String::with_capacity(hint + hint / 8);
        text::encode(&snapshot, &mut text);
        self.last_len.store(text.len(), Ordering::Relaxed);
        if !gzip {
            return Ok(text.into_bytes());
        }
        let mut encoder = GzEncoder::new(Vec::with_capacity(text.len() / 4), Compression::fast());
        encoder.write_all(text.as_bytes())?;
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
            Err(Refusal::NotAllowed)
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
        let router = Router::new().route("/metrics", scrape_route(metrics.clone(), config));
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
    async fn a_refused_scrape_gets_403_with_a_json_reason_and_no_metrics() {
        let (_, app) = app(&config("s3cret", true, false));
        let response = app
            .oneshot(scrape_request(REMOTE, &[("authorization", "Bearer guess")]))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["type"], "forbidden");
        assert!(json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match"));
        assert!(!String::from_utf8_lossy(&body).contains("s3cret"));
    }
}
