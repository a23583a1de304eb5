//! Newline-delimited JSON-RPC 2.0 over a child's stdio.
//!
//! One reader task parses each line the worker prints and either completes the pending
//! request with the same `id`, or routes a notification to the subscriber of its
//! `threadId` (each proxied request runs on its own thread, so the thread identifies the
//! turn). Notifications nobody subscribed to are dropped; requests the worker sends to
//! us (approvals and the like) are refused, since the proxy never grants anything.
//! One writer task owns stdin, so lines never interleave.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot, watch};

/// Longest line accepted from the worker; a longer one closes the transport rather than
/// growing memory without bound.
const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum RpcError {
    #[error("the worker connection is closed")]
    Closed,
    #[error("`{method}` failed: {message} (code {code})")]
    Rpc {
        method: String,
        code: i64,
        message: String,
    },
}

/// A notification from the worker.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Notification {
    pub(crate) method: String,
    pub(crate) params: Value,
    /// When the proxy read the line's bytes; only while the delta-latency trace is on.
    pub(crate) received: Option<Instant>,
}

enum Outgoing {
    Line(String),
    /// Close stdin: the app-server's cue to exit.
    Close,
}

type Pending = HashMap<u64, oneshot::Sender<Result<Value, (i64, String)>>>;

struct Shared {
    next_id: AtomicU64,
    pending: Mutex<Pending>,
    /// Subscribers by thread id, each with a token so that only its own subscription
    /// removes it.
    threads: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Notification>)>>,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    /// Where notifications about the account (no `threadId`, method `account/...`) go.
    account: Mutex<Option<mpsc::UnboundedSender<Notification>>>,
    /// Flips to true once the reader has stopped (worker gone or stdout closed).
    closed: watch::Receiver<bool>,
}

/// A cloneable handle on one worker connection.
#[derive(Clone)]
pub(crate) struct Rpc {
    shared: Arc<Shared>,
}

impl Rpc {
    /// Starts the reader and writer tasks on the worker's stdout and stdin.
    pub(crate) fn start<R, W>(reader: R, writer: W) -> Rpc
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (closed_tx, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            next_id: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
            threads: Mutex::new(HashMap::new()),
            account: Mutex::new(None),
            outgoing: out_tx,
            closed: closed_rx,
        });
        tokio::spawn(write_loop(writer, out_rx));
        tokio::spawn(read_loop(reader, Arc::downgrade(&shared), closed_tx));
        Rpc { shared }
    }

    /// Sends a request and waits for its response. Callers bound the wait with a timeout;
    /// a dropped call forgets its pending entry.
    pub(crate) async fn request(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pending).insert(id, tx);
        let _forget = ForgetPending {
            shared: &self.shared,
            id,
        };
        // A transport that closed before the insert would never answer: check after it.
        if self.is_closed() {
            return Err(RpcError::Closed);
        }
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err((code, message))) => Err(RpcError::Rpc {
                method: method.to_string(),
                code,
                message,
            }),
            Err(_) => Err(RpcError::Closed),
        }
    }

    /// Sends a request whose answer nobody waits for (used from `Drop`, which cannot await).
    pub(crate) fn request_detached(&self, method: &str, params: Value) -> Result<(), RpcError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
    }

    pub(crate) fn notify(&self, method: &str, params: Value) -> Result<(), RpcError> {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }

    /// Routes every later notification carrying `threadId == thread_id` to the receiver,
    /// until the [`ThreadSubscription`] is dropped.
    pub(crate) fn subscribe_thread(&self, thread_id: &str) -> ThreadSubscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let token = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.shared.threads).insert(thread_id.to_string(), (token, tx));
        ThreadSubscription {
            transport: self.clone(),
            thread_id: thread_id.to_string(),
            token,
            rx,
        }
    }

    /// Routes every later `account/...` notification (rate limits and the like) to the
    /// receiver, which ends when the connection does. A later call replaces the earlier.
    pub(crate) fn subscribe_account(&self) -> mpsc::UnboundedReceiver<Notification> {
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.shared.account) = Some(tx);
        rx
    }

    /// Closes the worker's stdin once the lines already queued are written.
    pub(crate) fn close_stdin(&self) {
        let _ = self.shared.outgoing.send(Outgoing::Close);
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves once the worker's stdout has ended.
    pub(crate) async fn closed(&self) {
        let mut rx = self.shared.closed.clone();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    fn send(&self, message: Value) -> Result<(), RpcError> {
        self.shared
            .outgoing
            .send(Outgoing::Line(message.to_string()))
            .map_err(|_| RpcError::Closed)
    }
}

/// Notifications of one thread; unsubscribes when dropped.
pub(crate) struct ThreadSubscription {
    transport: Rpc,
    thread_id: String,
    token: u64,
    rx: mpsc::UnboundedReceiver<Notification>,
}

impl ThreadSubscription {
    /// The next notification, or `None` once the worker connection is gone.
    pub(crate) async fn recv(&mut self) -> Option<Notification> {
        self.rx.recv().await
    }

    pub(crate) fn transport(&self) -> &Rpc {
        &self.transport
    }

    pub(crate) fn thread_id(&self) -> &str {
        &self.thread_id
    }
}

impl Drop for ThreadSubscription {
    fn drop(&mut self) {
        let mut threads = lock(&self.transport.shared.threads);
        if threads.get(&self.thread_id).map(|(token, _)| *token) == Some(self.token) {
            threads.remove(&self.thread_id);
        }
    }
}

struct ForgetPending<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for ForgetPending<'_> {
    fn drop(&mut self) {
        lock(&self.shared.pending).remove(&self.id);
    }
}

/// A poisoned lock only means another task panicked mid-update of a plain map; the map
/// itself is still usable, so keep serving rather than cascade the panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Outgoing::Line(mut line) => {
                line.push('\n');
                let written = async {
                    writer.write_all(line.as_bytes()).await?;
                    writer.flush().await
                };
                if let Err(e) = written.await {
                    tracing::debug!("worker stdin closed: {e}");
                    break;
                }
            }
            Outgoing::Close => break,
        }
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    reader: R,
    shared: std::sync::Weak<Shared>,
    closed: watch::Sender<bool>,
) {
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut last_read = None;
    loop {
        line.clear();
        // A line already (partly) in the buffer arrived with an earlier read and has
        // waited in the proxy since: its stamp is that read's.
        let buffered = !reader.buffer().is_empty();
        let mut limited = (&mut reader).take(MAX_LINE_BYTES as u64 + 1);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) if line.len() > MAX_LINE_BYTES => {
                tracing::warn!("worker printed a line over {MAX_LINE_BYTES} bytes; closing");
                break;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("reading worker stdout: {e}");
                break;
            }
        }
        if tracing::enabled!(target: super::DELTA_LATENCY_TARGET, tracing::Level::TRACE) {
            if !buffered || last_read.is_none() {
                last_read = Some(Instant::now());
            }
        } else {
            last_read = None;
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        dispatch(&shared, &line, last_read);
    }
    // Wake every waiter: pending requests fail with `Closed`, subscriptions end.
    let _ = closed.send(true);
    if let Some(shared) = shared.upgrade() {
        lock(&shared.pending).clear();
        lock(&shared.threads).clear();
        lock(&shared.account).take();
    }
}

fn dispatch(shared: &Shared, line: &[u8], received: Option<Instant>) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let msg: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            // Not JSON-RPC (a stray log line); the worker's content is not logged.
            tracing::debug!("ignoring a non-JSON line from the worker: {e}");
            return;
        }
    };
    let method = msg.get("method").and_then(Value::as_str);
    let id = msg.get("id");
    match (method, id) {
        (Some(method), Some(id)) => {
            tracing::debug!("refusing worker request `{method}`");
            let reply = json!({"jsonrpc": "2.0", "id": id, "error": {
                "code": -32601, "message": "codex-proxy does not serve this request"}});
            let _ = shared.outgoing.send(Outgoing::Line(reply.to_string()));
        }
        (Some(method), None) => {
            let method = method.to_string();
            route_notification(shared, method, msg, received);
        }
        (None, Some(id)) => complete_request(shared, id, &msg),
        (None, None) => tracing::debug!("ignoring a JSON line without method or id"),
    }
}

fn complete_request(shared: &Shared, id: &Value, msg: &Value) {
    let Some(id) = id.as_u64() else {
        tracing::debug!("ignoring a response with a foreign id");
        return;
    };
    let Some(tx) = lock(&shared.pending).remove(&id) else {
        // A detached request (turn/interrupt) or one whose caller gave up.
        return;
    };
    let outcome = match msg.get("error") {
        Some(err) => Err((
            err.get("code").and_then(Value::as_i64).unwrap_or(0),
            err.get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
        )),
        None => Ok(msg.get("result").cloned().unwrap_or(Value::Null)),
    };
    let _ = tx.send(outcome);
}

fn route_notification(shared: &Shared, method: String, mut msg: Value, received: Option<Instant>) {
    // Moved out rather than cloned: this runs once per delta.
    let params = msg
        .get_mut("params")
        .map(Value::take)
        .unwrap_or(Value::Null);
    let Some(thread_id) = params.get("threadId").and_then(Value::as_str) else {
        if method.starts_with("account/") {
            if let Some(tx) = lock(&shared.account).as_ref() {
                let _ = tx.send(Notification {
                    method,
                    params,
                    received,
                });
            }
        }
        return;
    };
    let subscriber = lock(&shared.threads)
        .get(thread_id)
        .map(|(_, tx)| tx.clone());
    if let Some(tx) = subscriber {
        let _ = tx.send(Notification {
            method,
            params,
            received,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A transport wired to an in-memory peer: returns the transport, the peer's view of
    /// what the proxy writes, and the peer's writer.
    fn pair() -> (
        Rpc,
        tokio::io::Lines<BufReader<tokio::io::DuplexStream>>,
        tokio::io::DuplexStream,
    ) {
        let (proxy_out, peer_in) = duplex(1 << 16);
        let (peer_out, proxy_in) = duplex(1 << 16);
        let t = Rpc::start(proxy_in, proxy_out);
        (t, BufReader::new(peer_in).lines(), peer_out)
    }

    async fn next_json(lines: &mut tokio::io::Lines<BufReader<tokio::io::DuplexStream>>) -> Value {
        let line = lines.next_line().await.unwrap().unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test]
    async fn responses_are_matched_by_id_even_out_of_order() {
        let (t, mut lines, mut peer) = pair();
        let a = tokio::spawn({
            let t = t.clone();
            async move { t.request("a", json!({})).await }
        });
        let first = next_json(&mut lines).await;
        let b = tokio::spawn({
            let t = t.clone();
            async move { t.request("b", json!({})).await }
        });
        let second = next_json(&mut lines).await;
        assert_eq!(first["method"], "a");
        assert_eq!(second["method"], "b");
        for (req, answer) in [(&second, "B"), (&first, "A")] {
            let line = json!({"jsonrpc":"2.0","id":req["id"],"result":{"v":answer}});
            peer.write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(a.await.unwrap().unwrap()["v"], "A");
        assert_eq!(b.await.unwrap().unwrap()["v"], "B");
    }

    #[tokio::test]
    async fn error_response_becomes_rpc_error() {
        let (t, mut lines, mut peer) = pair();
        let call = tokio::spawn({
            let t = t.clone();
            async move { t.request("thread/start", json!({})).await }
        });
        let req = next_json(&mut lines).await;
        let line = json!({"jsonrpc":"2.0","id":req["id"],"error":{"code":-32600,"message":"bad"}});
        peer.write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(
            err,
            RpcError::Rpc {
                method: "thread/start".into(),
                code: -32600,
                message: "bad".into()
            }
        );
    }

    #[tokio::test]
    async fn notifications_reach_only_their_thread_and_junk_is_ignored() {
        let (t, _lines, mut peer) = pair();
        let mut one = t.subscribe_thread("t1");
        let mut two = t.subscribe_thread("t2");
        let script = [
            "not json at all".to_string(),
            json!({"jsonrpc":"2.0","method":"configWarning","params":{"summary":"x"}}).to_string(),
            json!({"jsonrpc":"2.0","method":"item/agentMessage/delta","params":{"threadId":"t9","delta":"lost"}}).to_string(),
            json!({"jsonrpc":"2.0","method":"item/agentMessage/delta","params":{"threadId":"t2","delta":"for two"}}).to_string(),
            json!({"jsonrpc":"2.0","method":"item/agentMessage/delta","params":{"threadId":"t1","delta":"for one"}}).to_string(),
        ];
        for line in script {
            peer.write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(one.recv().await.unwrap().params["delta"], "for one");
        assert_eq!(two.recv().await.unwrap().params["delta"], "for two");
    }

    #[tokio::test]
    async fn notifications_carry_their_read_time_only_while_the_latency_trace_is_on() {
        let (t, _lines, mut peer) = pair();
        let mut sub = t.subscribe_thread("t1");
        let delta = json!({"jsonrpc":"2.0","method":"item/agentMessage/delta","params":{"threadId":"t1","delta":"x"}});
        let line = format!("{delta}\n");
        peer.write_all(line.as_bytes()).await.unwrap();
        assert_eq!(sub.recv().await.unwrap().received, None);

        // The test runtime has one thread, so the reader task sees this subscriber too.
        let trace = tracing_subscriber::fmt()
            .with_env_filter(format!("{}=trace", crate::worker::DELTA_LATENCY_TARGET))
            .with_writer(std::io::sink)
            .finish();
        let _on = tracing::subscriber::set_default(trace);
        let before = Instant::now();
        peer.write_all(line.as_bytes()).await.unwrap();
        let received = sub.recv().await.unwrap().received;
        assert!(received.is_some_and(|r| r >= before), "{received:?}");
    }

    #[tokio::test]
    async fn worker_requests_are_refused() {
        let (_t, mut lines, mut peer) = pair();
        let line = json!({"jsonrpc":"2.0","id":"srv-1","method":"item/commandExecution/requestApproval","params":{}});
        peer.write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let reply = next_json(&mut lines).await;
        assert_eq!(reply["id"], "srv-1");
        assert_eq!(reply["error"]["code"], -32601);
    }

    #[tokio::test]
    async fn closed_stdout_fails_pending_requests_and_ends_subscriptions() {
        let (t, mut lines, peer) = pair();
        let mut sub = t.subscribe_thread("t1");
        let call = tokio::spawn({
            let t = t.clone();
            async move { t.request("turn/start", json!({})).await }
        });
        next_json(&mut lines).await;
        drop(peer);
        assert_eq!(call.await.unwrap(), Err(RpcError::Closed));
        assert!(sub.recv().await.is_none());
        t.closed().await;
        assert_eq!(t.request("x", json!({})).await, Err(RpcError::Closed));
    }

    #[tokio::test]
    async fn close_stdin_ends_the_peer_input() {
        let (t, mut lines, _peer) = pair();
        t.notify("initialized", json!({})).unwrap();
        t.close_stdin();
        assert_eq!(next_json(&mut lines).await["method"], "initialized");
        assert!(lines.next_line().await.unwrap().is_none());
    }
}
