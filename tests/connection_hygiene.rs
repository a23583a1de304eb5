//! Connections cannot be held for free: half-sent request heads (a slow client or a
//! slowloris) are closed after `server.header_read_timeout`, while a normal request and an
//! SSE stream that outlives the timeout are served throughout. (The idle keep-alive timeout
//! and `max_connections` have unit tests in src/server.rs.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::time::{Duration, Instant};

use common::{http, wait_until, Proxy};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// As many as the issue found held open 35 s later.
const SLOW_CLIENTS: usize = 1200;

/// Reads until the server closes; how long after `opened` that was, or `None` when it
/// stayed open for `limit`.
async fn closed_after(mut stream: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 512];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn half_sent_heads_are_closed_after_the_header_timeout_while_requests_and_streams_go_on() {
    let config = "[server]\nheader_read_timeout = \"1s\"\n[streams]\nkeepalive_ms = 200\n";
    // 80-odd deltas 40 ms apart: the stream lasts about three header timeouts.
    let proxy = Proxy::start(config, &[("DEMO_DELTA_DELAY_MS", "40")]).await;
    proxy.wait_ready().await;

    let stream_url = proxy.url("/v1/chat/completions");
    let stream = tokio::spawn(async move {
        let started = Instant::now();
        let body = json!({"model": "codex-demo", "stream": true,
                          "messages": [{"role": "user", "content": "x".repeat(480)}]});
        let response = http().post(stream_url).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        (started.elapsed(), text)
    });
    let healthz = proxy.url("/healthz");
    wait_until("the stream to be open", Duration::from_secs(30), || {
        let url = healthz.clone();
        async move {
            let h: serde_json::Value = http().get(url).send().await.ok()?.json().await.ok()?;
            (h["streams"]["active"] == 1).then_some(())
        }
    })
    .await;

    let addr = format!("127.0.0.1:{}", proxy.port);
    let mut slow = Vec::with_capacity(SLOW_CLIENTS);
    for _ in 0..SLOW_CLIENTS {
        // Stamped before connecting: the server may accept (and start its timer) before
        // this task sees connect return.
        let opened = Instant::now();
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push((s, opened));
    }
    // Served while they hang.
    let r = http().get(proxy.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let limit = Duration::from_secs(20);
    let closes = futures_util::future::join_all(
        slow.into_iter()
            .map(|(s, opened)| closed_after(s, opened, limit)),
    )
    .await;
    let still_open = closes.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        still_open, 0,
        "{still_open} half-sent requests still open after {limit:?}"
    );
    let closes: Vec<Duration> = closes.into_iter().flatten().collect();
    let earliest = closes.iter().min().unwrap();
    let latest = closes.iter().max().unwrap();
    // The timer starts at accept, which is after `opened`.
    assert!(
        *earliest >= HEADER_TIMEOUT,
        "one was closed after only {earliest:?}"
    );
    eprintln!("{SLOW_CLIENTS} half-sent heads closed between {earliest:?} and {latest:?}");

    // Still served afterwards, and the stream ran to its end, past the header timeout.
    let r = http().get(proxy.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (took, text) = stream.await.unwrap();
    assert!(took > HEADER_TIMEOUT * 2, "the stream took only {took:?}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}
