//! The HTTP/1.1 server: its own accept loop around hyper, so that connections are bounded
//! and cannot be held open for free.
//!
//! - `server.max_connections`: one permit per open connection; past the limit a new
//!   connection gets a one-line 503 and is closed at once, instead of the process running
//!   out of file descriptors.
//! - `server.header_read_timeout`: a new connection, or a kept-alive one that started its
//!   next request, must complete the request head within it or is closed (a slow client
//!   or a slowloris holds nothing for long).
//! - `server.idle_timeout`: a kept-alive connection with no request in progress is closed
//!   after it.
//!
//! A request whose head is complete is never cut by these: from the head to the end of
//! its response body (an SSE stream included) the connection has no deadline. hyper's own
//! `header_read_timeout` is not used because its clock also runs while a kept-alive
//! connection is idle, which would make the two timeouts one.
//!
//! With `[server.tls]` each accepted connection first completes a TLS handshake (within
//! `header_read_timeout`) and is then served the same way; a client that does not speak
//! TLS fails the handshake and is closed, so plain HTTP on that port gets nothing.
//!
//! Shutdown: the listener closes, every connection finishes its request in progress and
//! closes, and [`serve`] returns when the last one has (the caller bounds the wait).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::Service;

use crate::config::ServerConfig;
use crate::metrics::connections::{ConnectionMetrics, Refusal};

/// What a connection may cost.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: u32,
}

impl Limits {
    pub(crate) fn from_config(server: &ServerConfig) -> Limits {
        Limits {
            header_read_timeout: server.header_read_timeout.0,
            idle_timeout: server.idle_timeout.0,
            max_connections: u32::try_from(server.max_connections).unwrap_or(u32::MAX),
        }
    }
}

/// What a refused connection reads before it is closed.
const REFUSED: &[u8] =
    b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\nretry-after: 1\r\n\r\n";

/// How often at most a refusal (or an accept error) is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` until `shutdown` completes, then until every connection
/// has finished. Each request carries its peer as `ConnectInfo<SocketAddr>`; open and
/// refused connections are counted in `metrics`.
#[cfg(test)]
pub(crate) async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    serve_with_tls(listener, service, limits, metrics, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given.
pub(crate) async fn serve_with_tls<S>(
    listener: TcpListener,
    service: S,
    limits: Limits,
    metrics: ConnectionMetrics,
    tls: Option<crate::tls::Tls>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let permits = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS as u32);
    let slots = Arc::new(Semaphore::new(permits as usize));
    let (stop, stopped) = watch::channel(false);
    let mut refused: u64 = 0;
    let mut last_log: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_per_connection(&e) => continue,
            Err(e) => {
                // Out of file descriptors or memory: wait instead of spinning.
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::error!("cannot accept connections: {e}");
                    last_log = Some(Instant::now());
                }
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused += 1;
            metrics.refused(Refusal::MaxConnections);
            let _ = stream.try_write(REFUSED);
            drop(stream);
            if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                tracing::warn!(
                    refused,
                    "server.max_connections ({permits}) reached: new connections are refused"
                );
                last_log = Some(Instant::now());
            }
            continue;
        };
        // Without TCP_NODELAY a small SSE event written while the previous one is still
        // unacknowledged waits for that ACK (Nagle), which the client may delay: measured,
        // a delta then reached the client up to a delta interval late (docs/performance.md).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let service = service.clone();
        let stopped = stopped.clone();
        let open = metrics.opened();
        let metrics = metrics.clone();
        let acceptor = tls.as_ref().map(crate::tls::Tls::acceptor);
        tokio::spawn(async move {
            match acceptor {
                None => serve_connection(stream, peer, service, limits, &metrics, stopped).await,
                Some(acceptor) => {
                    // The handshake is part of the request head's time.
                    let handshake =
                        tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, service, limits, &metrics, stopped).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS handshake within server.header_read_timeout")
                        }
                    }
                }
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Each connection holds a permit until it ends.
    let _ = slots.acquire_many(permits).await;
    Ok(())
}

/// Accept errors that concern one connection only (it went away before it was accepted).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

async fn serve_connection<S, T>(
    stream: T,
    peer: SocketAddr,
    service: S,
    limits: Limits,
    metrics: &ConnectionMetrics,
    mut stopped: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let on_request = activity.clone();
    let handler = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let busy = Activity::request_started(&on_request);
        request.extensions_mut().insert(ConnectInfo(peer));
        let mut service = service.clone();
        async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            let response = service.call(request.map(Body::new)).await?;
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _busy: busy }))
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, handler);
    tokio::pin!(connection);
    // Resolves once the server stops accepting (or is gone).
    let stop = async move {
        if !*stopped.borrow_and_update() {
            let _ = stopped.changed().await;
        }
    };
    tokio::pin!(stop);
    let mut stopping = false;
    // The phase changes only while hyper polls the connection, in this task (reading the
    // socket, calling the service, ending or dropping a body), so its deadline is worked
    // out after each such poll, and nothing needs to wake the task for it. The timer is
    // armed no later than the deadline and moved only when the deadline comes sooner
    // (a head sent in pieces); when it fires for a deadline that has moved on, it is
    // moved after it. A request served within one poll thus costs the timer nothing.
    let first = Instant::now() + limits.header_read_timeout;
    let timer = tokio::time::sleep_until(first);
    tokio::pin!(timer);
    let mut armed = Some(first);
    let expired = std::future::poll_fn(|cx| loop {
        if let Poll::Ready(result) = connection.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!(%peer, "connection ended: {e}");
            }
            return Poll::Ready(None);
        }
        if !stopping && stop.as_mut().poll(cx).is_ready() {
            stopping = true;
            connection.as_mut().graceful_shutdown();
            continue;
        }
        let Some(deadline) = activity.deadline(&limits) else {
            // Busy: no deadline until the response ends, in a later poll.
            return Poll::Pending;
        };
        if armed.is_none_or(|at| deadline < at) {
            timer.as_mut().reset(deadline);
            armed = Some(deadline);
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        armed = None;
        if let Some(why) = activity.expired(&limits) {
            return Poll::Ready(Some(why));
        }
    })
    .await;
    if let Some(why) = expired {
        // No request is in progress: dropping the connection closes it.
        tracing::debug!(%peer, "closing the connection: {}", explain(why));
        metrics.refused(why);
    }
}

fn explain(why: Refusal) -> &'static str {
    match why {
        Refusal::HeaderTimeout => "no complete request head within server.header_read_timeout",
        Refusal::IdleTimeout => "idle for server.idle_timeout",
        Refusal::MaxConnections => "server.max_connections reached",
    }
}

/// Where a connection is between requests.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for (the rest of) a request head since then.
    Head(Instant),
    /// Kept alive with nothing sent since then.
    Idle(Instant),
    /// Requests whose head is complete and whose response body has not ended.
    Busy(usize),
}

/// The phase, shared by the socket, the service and the response bodies of one
/// connection; all of them run inside the connection's own polls.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            // A new connection is expected to send its request at once.
            phase: Mutex::new(Phase::Head(Instant::now())),
        }
    }

    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        match *self.phase() {
            Phase::Head(since) => Some(since + limits.header_read_timeout),
            Phase::Idle(since) => Some(since + limits.idle_timeout),
            Phase::Busy(_) => None,
        }
    }

    /// Which timeout has run out, if one has.
    fn expired(&self, limits: &Limits) -> Option<Refusal> {
        let now = Instant::now();
        match *self.phase() {
            Phase::Head(since) if now >= since + limits.header_read_timeout => {
                Some(Refusal::HeaderTimeout)
            }
            Phase::Idle(since) if now >= since + limits.idle_timeout => Some(Refusal::IdleTimeout),
            _ => None,
        }
    }

    /// Bytes arrived: on an idle connection they start the next request head.
    fn bytes_read(&self) {
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
        }
    }

    /// A request head is complete; the connection is busy until the guard drops.
    fn request_started(this: &Arc<Activity>) -> Busy {
        let mut phase = this.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        };
        drop(phase);
        Busy(this.clone())
    }
}

/// Held from a request's head to the end of its response body.
#[derive(Debug)]
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut phase = self.0.phase();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
    }
}

/// A response body that keeps its connection busy until it ends or is dropped.
#[derive(Debug)]
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket (or the TLS stream over it), telling the connection's [`Activity`] when
/// bytes arrive.
#[derive(Debug)]
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn limits(header: u64, idle: u64, max: u32) -> Limits {
        Limits {
            header_read_timeout: Duration::from_millis(header),
            idle_timeout: Duration::from_millis(idle),
            max_connections: max,
        }
    }

    /// A server on a free port; dropping the sender stops it.
    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route("/slow", get(|| async { Body::from_stream(slow_body()) }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let metrics = ConnectionMetrics::unregistered().unwrap();
        tokio::spawn(serve(listener, app, limits, metrics, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Ten chunks 100 ms apart: a body that outlives short timeouts several times over.
    fn slow_body() -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
        futures_util::stream::unfold(0u8, |n| async move {
            if n == 10 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            Some((Ok(Bytes::from(format!("chunk{n};"))), n + 1))
        })
    }

    /// Reads until EOF or error; true when the peer closed the connection within `within`.
    async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(within, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok()
    }

    #[tokio::test]
    async fn requests_see_their_peer_address() {
        let (addr, _stop) = start(limits(5000, 5000, 10)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        let local = s.local_addr().unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        assert!(out.ends_with(&local.to_string()), "{out}");
    }

    #[tokio::test]
    async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
        let (addr, _stop) = start(limits(60_000, 200, 10)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        // The header timeout is a minute: only the idle timeout can close it this soon.
        assert!(closed_within(&mut s, Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_next_head_sent_in_pieces_is_closed_by_the_header_timeout_not_the_idle_one() {
        // Idle for a minute would keep it; the head's 2 s must apply from its first byte.
        let (addr, _stop) = start(limits(2_000, 60_000, 10)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains(&s.local_addr().unwrap().to_string()) {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the first response ended");
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"GET /peer HTTP/1.1\r\nhost: ").await.unwrap();
        assert!(closed_within(&mut s, Duration::from_secs(30)).await);
    }

    #[tokio::test]
    async fn a_response_in_progress_is_never_cut_by_the_timeouts() {
        // Both timeouts are a fifth of the body's duration.
        let (addr, _stop) = start(limits(200, 200, 10)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        for n in 0..10 {
            assert!(out.contains(&format!("chunk{n};")), "{out}");
        }
    }

    #[tokio::test]
    async fn past_max_connections_a_new_connection_is_refused_at_once() {
        let (addr, _stop) = start(limits(60_000, 60_000, 2)).await;
        let _a = TcpStream::connect(addr).await.unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let mut c = TcpStream::connect(addr).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut answer))
            .await
            .expect("the third connection is closed at once")
            .ok();
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        // Once one closes, a new connection is served again.
        drop(_a);
        let mut ok = false;
        for _ in 0..200 {
            let mut d = TcpStream::connect(addr).await.unwrap();
            d.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = d.read_to_end(&mut out).await;
            if out.starts_with(b"HTTP/1.1 200") {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "a freed slot is used again");
    }
}
