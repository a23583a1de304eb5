//! HTTP middleware: records the request families when the response body ends.
//!
//! The Node proxy took latency when headers were sent, so an SSE stream of two minutes
//! counted as a few milliseconds. Here a streamed response body is wrapped, and the
//! request is recorded once, when that body ends: its last frame, an error, or its drop
//! (the client went away, or hyper finished with it). A body already in memory is
//! recorded when the response is ready, which is its end but for the socket write.
//! Status and model are what the handler decided; a streamed response keeps the status
//! of its headers.
//!
//! Every request, recorded or not, gets its id here (`exemplar.rs`): the response carries it
//! as `x-request-id`, the handlers find it (and the exemplar it makes) in the request's
//! extensions as a [`RequestContext`], and the request's log line (target
//! `codex_proxy::access`, INFO) names it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use http_body::{Frame, SizeHint};
use tower::Service;

use super::exemplar::{self, ExemplarId, RequestId};
use super::labels::{self, RouteTemplates};
use super::{ErrorCategory, FinishedRequest, Metrics, ModelLabel};

/// The recording service, wrapped once around the whole router (routes and fallback).
///
/// Not a per-route layer (`Router::layer`), which would let it read axum's `MatchedPath`
/// but makes axum clone every route's service again for each request; and a plain
/// `Service` rather than `axum::middleware::from_fn`, which clones the inner service and
/// boxes a future per request. On a cheap route those costs were most of what metrics
/// cost. The route label comes from [`RouteTemplates`] instead.
#[derive(Clone)]
pub(crate) struct Record<S> {
    inner: S,
    /// `None`: nothing reads the HTTP families, so nothing is recorded.
    recorder: Option<Arc<Recorder>>,
}

struct Recorder {
    metrics: Arc<Metrics>,
    routes: RouteTemplates,
}

impl<S> Record<S> {
    /// Records every request `inner` serves; `routes` are `inner`'s route templates.
    pub(crate) fn new(inner: S, metrics: Arc<Metrics>, routes: RouteTemplates) -> Self {
        Record {
            inner,
            recorder: Some(Arc::new(Recorder { metrics, routes })),
        }
    }

    /// Serves `inner` and records nothing.
    pub(crate) fn off(inner: S) -> Self {
        Record {
            inner,
            recorder: None,
        }
    }
}

impl<S> Service<Request> for Record<S>
where
    S: Service<Request, Response = Response>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = S::Error;
    type Future = RecordFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        let started = Instant::now();
        let context = RequestContext::new(request.headers().get(exemplar::TRACEPARENT_HEADER));
        let head = self.recorder.as_ref().map(|recorder| Head {
            route: recorder.routes.label(request.uri().path()),
            recorder: recorder.clone(),
            method: labels::method_index(request.method()),
            started,
            context,
        });
        if head.is_none() {
            tracing::info!(target: ACCESS_TARGET, request_id = context.id.as_str(), method = %request.method(), "request");
        }
        let request_id = HeaderValue::from_bytes(context.id.as_bytes()).ok();
        request.extensions_mut().insert(context);
        RecordFuture {
            inner: self.inner.call(request),
            head,
            request_id,
        }
    }
}

/// The target of the per-request log line.
pub(crate) const ACCESS_TARGET: &str = "codex_proxy::access";

/// The request's id and the exemplar its observations keep, in the request's extensions.
/// Plain bytes (`Copy`): the recording head keeps a copy, with no allocation or reference
/// count per request.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    /// The completion id, also sent back as `x-request-id`.
    pub id: RequestId,
    pub exemplar: ExemplarId,
}

impl RequestContext {
    fn new(traceparent: Option<&HeaderValue>) -> RequestContext {
        let id = RequestId::random();
        let exemplar = ExemplarId::for_request(traceparent.map(HeaderValue::as_bytes), id);
        RequestContext { id, exemplar }
    }
}

/// What is known when the request arrives.
struct Head {
    recorder: Arc<Recorder>,
    route: &'static str,
    method: usize,
    started: Instant,
    context: RequestContext,
}

/// The inner response future; when it resolves, the request is recorded, or its streamed
/// body wrapped to be recorded at its end.
pub(crate) struct RecordFuture<F> {
    inner: F,
    head: Option<Head>,
    /// Set as `x-request-id` on the response.
    request_id: Option<HeaderValue>,
}

impl<F, E> Future for RecordFuture<F>
where
    F: Future<Output = Result<Response, E>> + Unpin,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = match Pin::new(&mut self.inner).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(response)) => response,
        };
        if let Some(id) = self.request_id.take() {
            response
                .headers_mut()
                .insert(exemplar::REQUEST_ID_HEADER, id);
        }
        let Some(head) = self.head.take() else {
            // Recording is off, or polled again after completion.
            return Poll::Ready(Ok(response));
        };
        let model = response
            .extensions_mut()
            .remove::<ModelLabel>()
            .map(|m| m.0);
        let pending = Pending {
            status: response.status(),
            category: response.extensions().get::<ErrorCategory>().copied(),
            model,
            head,
        };
        // A body already in memory (its size exactly known: JSON, empty) ends as hyper
        // writes it, microseconds from now: it is recorded now and spared the wrapper,
        // whose box and per-frame indirection were a quarter of what recording cost a
        // cheap request. Streams (SSE) have no exact size: they are recorded at their end.
        if response.body().size_hint().exact().is_some() {
            pending.record();
            return Poll::Ready(Ok(response));
        }
        Poll::Ready(Ok(response.map(|inner| {
            Body::new(RecordOnEnd {
                inner,
                pending: Some(pending),
            })
        })))
    }
}

/// What is known when the headers leave; recorded when the body ends.
struct Pending {
    head: Head,
    status: StatusCode,
    model: Option<String>,
    category: Option<ErrorCategory>,
}

impl Pending {
    fn record(self) {
        let ended = Instant::now();
        self.head.recorder.metrics.record(&FinishedRequest {
            route: self.head.route,
            method: self.head.method,
            status: self.status,
            model: self.model.as_deref(),
            category: self.category,
            started: self.head.started,
            ended,
            exemplar: Some(&self.head.context.exemplar),
        });
        tracing::info!(
            target: ACCESS_TARGET,
            request_id = self.head.context.id.as_str(),
            route = self.head.route,
            method = labels::METHODS[self.head.method.min(labels::METHODS.len() - 1)],
            status = self.status.as_u16(),
            latency_ms = ended.saturating_duration_since(self.head.started).as_secs_f64() * 1e3,
            "request",
        );
    }
}

/// A response body that records its request exactly once, when it ends.
struct RecordOnEnd {
    inner: Body,
    pending: Option<Pending>,
}

impl RecordOnEnd {
    fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.record();
        }
    }
}

impl HttpBody for RecordOnEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let ended = match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => true,
            // hyper stops polling a body that says it has ended after its last frame.
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if ended {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordOnEnd {
    /// The client went away mid-stream, or hyper never polled an empty body.
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MetricsConfig;
    use axum::body::to_bytes;
    use axum::http::Method;
    use axum::routing::{get, post};
    use axum::Router;
    use std::convert::Infallible;
    use std::time::Duration;
    use tower::ServiceExt;

    fn metrics() -> Arc<Metrics> {
        let config = MetricsConfig {
            models: vec!["gpt-5".into()],
            ..MetricsConfig::default()
        };
        Metrics::new(&config).unwrap()
    }

    /// The values of `family` for route, method, status family, model (and category).
    fn sample(m: &Metrics, family: &str, values: &[&str]) -> Option<Vec<f64>> {
        let mut labels = vec![
            ("method", values[1]),
            ("model", values[3]),
            ("route", values[0]),
            ("status_family", values[2]),
        ];
        if let Some(category) = values.get(4) {
            labels.insert(0, ("category", category));
        }
        m.snapshot().find(family, &labels).map(<[f64]>::to_vec)
    }

    fn counter(m: &Metrics, values: &[&str]) -> u64 {
        sample(m, "codex_http_requests_total", values).map_or(0, |v| v[0] as u64)
    }

    /// Sum and count of the latency histogram.
    fn latency(m: &Metrics, values: &[&str]) -> (f64, u64) {
        let v = sample(m, "codex_http_latency_ms", values).unwrap_or_default();
        let n = v.len();
        (v[n - 2], v[n - 1] as u64)
    }

    /// A router like the proxy's: a plain JSON route, a streamed route, a failing route.
    fn app(m: &Arc<Metrics>, release: Arc<tokio::sync::Notify>) -> Record<Router> {
        let streamed = move || {
            let release = release.clone();
            async move {
                let chunks = futures_util::stream::unfold(0, move |i| {
                    let release = release.clone();
                    async move {
                        match i {
                            0 => Some((Ok::<_, Infallible>(Bytes::from("data: a\n\n")), 1)),
                            1 => {
                                // The stream goes on until the test lets it end.
                                release.notified().await;
                                Some((Ok(Bytes::from("data: [DONE]\n\n")), 2))
                            }
                            _ => None,
                        }
                    }
                });
                let mut response = Response::new(Body::from_stream(chunks));
                response.extensions_mut().insert(ModelLabel("gpt-5".into()));
                response
            }
        };
        let failing = || async {
            let mut response = Response::new(Body::from("worker gone"));
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .extensions_mut()
                .insert(ErrorCategory::WorkerNotReady);
            response
                .extensions_mut()
                .insert(ModelLabel("prompt: tell me a secret".into()));
            response
        };
        let panicky = || async { StatusCode::INTERNAL_SERVER_ERROR };
        let routes = [
            ("/v1/models/{id}", get(|| async { "{}" })),
            ("/v1/chat/completions", post(streamed)),
            ("/v1/fail", post(failing)),
            ("/v1/oops", get(panicky)),
        ];
        let templates = RouteTemplates::new(routes.iter().map(|(t, _)| *t));
        let router = routes
            .into_iter()
            .fold(Router::new(), |router, (t, handler)| {
                router.route(t, handler)
            });
        Record::new(router, m.clone(), templates)
    }

    fn request(method: Method, uri: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_body_in_memory_is_counted_under_its_route_template_when_ready() {
        let m = metrics();
        let app = app(&m, Arc::default());
        let response = app
            .oneshot(request(Method::GET, "/v1/models/gpt-5?api_key=s3cret"))
            .await
            .unwrap();
        // Not read yet: the body is whole, so the request is recorded already.
        let body = response.into_body();
        assert_eq!(
            counter(&m, &["/v1/models/{id}", "GET", "2xx", "unknown"]),
            1
        );
        let (_, count) = latency(&m, &["/v1/models/{id}", "GET", "2xx", "unknown"]);
        assert_eq!(count, 1);
        to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(
            counter(&m, &["/v1/models/{id}", "GET", "2xx", "unknown"]),
            1
        );
    }

    /// A chat completion stream whose first event the client has read.
    async fn first_event_read(app: Record<Router>) -> Body {
        let response = app
            .oneshot(request(Method::POST, "/v1/chat/completions"))
            .await
            .unwrap();
        let mut body = response.into_body();
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(first.is_some());
        body
    }

    #[tokio::test]
    async fn every_response_carries_its_request_id_and_the_exemplar_names_it_or_the_trace() {
        let m = metrics();
        let app = app(&m, Arc::default());
        let response = app
            .clone()
            .oneshot(request(Method::GET, "/v1/models/x"))
            .await
            .unwrap();
        let id = response.headers()[exemplar::REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        assert!(id.starts_with("chatcmpl-"), "{id}");
        let mut traced = request(Method::GET, "/v1/models/x");
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        traced
            .headers_mut()
            .insert("traceparent", HeaderValue::from_static(tp));
        let response = app.clone().oneshot(traced).await.unwrap();
        assert!(response.headers().contains_key(exemplar::REQUEST_ID_HEADER));
        let mut bad = request(Method::GET, "/v1/models/x");
        bad.headers_mut()
            .insert("traceparent", HeaderValue::from_static("00-evil"));
        let response = app.oneshot(bad).await.unwrap();
        let bad_id = response.headers()[exemplar::REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        assert!(!response
            .headers()
            .values()
            .any(|v| v.as_bytes() == b"00-evil"));
        let snapshot = m.snapshot();
        let latency = snapshot
            .families
            .iter()
            .find(|f| f.name == "codex_http_latency_ms")
            .unwrap();
        let labels: Vec<_> = latency
            .exemplars
            .iter()
            .flatten()
            .map(|e| e.labels.clone())
            .collect();
        // The latest observation is its bucket's exemplar; every exemplar is one of the three.
        let expected = [
            vec![("request_id", id)],
            vec![
                ("span_id", "00f067aa0ba902b7".to_string()),
                ("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736".to_string()),
            ],
            vec![("request_id", bad_id.clone())],
        ];
        assert!(labels.iter().all(|l| expected.contains(l)), "{labels:?}");
        assert!(labels.contains(&vec![("request_id", bad_id)]));
    }

    #[tokio::test]
    async fn a_streamed_response_is_recorded_when_its_stream_ends() {
        let m = metrics();
        let release = Arc::new(tokio::sync::Notify::new());
        let app = app(&m, release.clone());
        let labels = ["/v1/chat/completions", "POST", "2xx", "gpt-5"];

        // Headers are out and the first event is read: nothing is recorded yet.
        let body = first_event_read(app).await;
        assert_eq!(counter(&m, &labels), 0);

        let held = Duration::from_millis(30);
        tokio::time::sleep(held).await;
        release.notify_one();
        to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(counter(&m, &labels), 1);
        // The latency covers the time the stream was held open, not only the headers.
        let (sum, count) = latency(&m, &labels);
        assert_eq!(count, 1);
        assert!(sum >= held.as_secs_f64() * 1e3);
    }

    #[tokio::test]
    async fn a_client_that_goes_away_mid_stream_is_recorded_once() {
        let m = metrics();
        let app = app(&m, Arc::default());
        let labels = ["/v1/chat/completions", "POST", "2xx", "gpt-5"];
        drop(first_event_read(app).await);
        assert_eq!(counter(&m, &labels), 1);
    }

    #[tokio::test]
    async fn a_5xx_counts_an_error_with_its_category_and_a_bounded_model() {
        let m = metrics();
        let app = app(&m, Arc::default());
        let response = app
            .clone()
            .oneshot(request(Method::POST, "/v1/fail"))
            .await
            .unwrap();
        drop(response);
        let response = app.oneshot(request(Method::GET, "/v1/oops")).await.unwrap();
        drop(response);
        let errors = |labels: &[&str]| {
            sample(&m, "codex_http_errors_total", labels).map_or(0, |v| v[0] as u64)
        };
        assert_eq!(
            errors(&["/v1/fail", "POST", "5xx", "other", "worker_not_ready"]),
            1
        );
        // No category attached: internal.
        assert_eq!(
            errors(&["/v1/oops", "GET", "5xx", "unknown", "internal"]),
            1
        );
        assert_eq!(counter(&m, &["/v1/fail", "POST", "5xx", "other"]), 1);
    }

    #[test]
    fn every_error_category_has_its_own_slot() {
        for (i, c) in ErrorCategory::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[tokio::test]
    async fn a_4xx_is_a_request_but_not_an_error() {
        let m = metrics();
        let app = app(&m, Arc::default());
        // Wrong method on a known route: 405 under that route.
        drop(
            app.oneshot(request(Method::DELETE, "/v1/fail"))
                .await
                .unwrap(),
        );
        assert_eq!(counter(&m, &["/v1/fail", "DELETE", "4xx", "unknown"]), 1);
        let mut text = String::new();
        crate::exposition::encode::encode(&m.snapshot(), &mut text);
        assert!(!text.contains("codex_http_errors_total{"), "{text}");
    }

    #[tokio::test]
    async fn ten_thousand_random_paths_and_methods_stay_within_the_bound() {
        let m = metrics();
        let app = app(&m, Arc::default());
        let mut rng = fastrand::Rng::with_seed(17);
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_./";
        let methods = ["GET", "POST", "PROPFIND", "BREW", "DELETE", "TRACE"];
        for _ in 0..10_000 {
            let len = rng.usize(0..120);
            let path: String = (0..len)
                .map(|_| ALPHABET[rng.usize(0..ALPHABET.len())] as char)
                .collect();
            let query = format!("?request_id={}", rng.u64(..));
            let method =
                Method::from_bytes(methods[rng.usize(0..methods.len())].as_bytes()).unwrap();
            let response = app
                .clone()
                .oneshot(request(method, &format!("/{path}{query}")))
                .await
                .unwrap();
            drop(response);
        }
        let snapshot = m.snapshot();
        let requests = snapshot
            .families
            .iter()
            .find(|f| f.name == "codex_http_requests_total")
            .unwrap();
        let mut total = 0;
        for (labels, values) in requests.metrics() {
            let route = &*labels.iter().find(|(n, _)| &**n == "route").unwrap().1;
            assert!(
                [
                    "unmatched",
                    "/v1/models/{id}",
                    "/v1/chat/completions",
                    "/v1/fail",
                    "/v1/oops"
                ]
                .contains(&route),
                "route label {route}"
            );
            total += values[0] as u64;
        }
        assert_eq!(total, 10_000);
        // routes (4 + unmatched) × 8 methods × 5 families × model values.
        let bound = 5 * 8 * 5 * m.labels.model_value_bound();
        assert!(requests.labels.len() <= bound);
        let mut text = String::new();
        crate::exposition::encode::encode(&snapshot, &mut text);
        assert!(!text.contains("request_id"));
    }
}
