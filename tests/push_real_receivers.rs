//! Remote-write into the real receivers, both at once: Prometheus (remote-write receiver
//! on) and VictoriaMetrics. After traffic and a few pushes, each answers PromQL over the
//! pushed series with the values the registry holds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use codex_proxy::config::{Config, MetricsConfig};
use codex_proxy::metrics::Metrics;
use codex_proxy::push::Pushers;
use common::{start_prometheus, start_victoria_metrics, wait_until, Proxy, Server};

/// The single value of an instant query, once the server has one.
async fn scalar(server: &Server, promql: &str) -> Option<f64> {
    let result = server.query(promql).await;
    let samples = result.as_array()?;
    if samples.len() != 1 {
        return None;
    }
    samples[0]["value"][1].as_str()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_and_victoria_metrics_answer_queries_over_pushed_series() {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    let Some(victoria) = start_victoria_metrics().await else {
        return;
    };

    let metrics = Metrics::new(&MetricsConfig::default()).unwrap();
    let labels = ["/v1/chat/completions", "POST", "2xx", "unknown"];
    metrics.requests.with_label_values(&labels).inc_by(7);
    for ms in [120.0, 150.0, 180.0, 700.0] {
        metrics.latency.with_label_values(&labels).observe(ms);
    }

    let config = Config::parse(&format!(
        "[[remote_write]]\nname = \"prometheus\"\nurl = \"{}/api/v1/write\"\ninterval = \"200ms\"\n\
         [[remote_write]]\nname = \"victoria\"\nurl = \"{}/api/v1/write\"\ninterval = \"200ms\"\n",
        prometheus.base, victoria.base
    ))
    .unwrap();
    let source = {
        let metrics = metrics.clone();
        Arc::new(move || metrics.gather())
    };
    let pushers = Pushers::start(
        &config.remote_write,
        &config.pushgateway,
        source,
        metrics.registry(),
        "127.0.0.1:11435",
    )
    .unwrap();
    pushers.mark_ready();

    // More traffic between pushes: the receivers must end up with the latest value.
    wait_until("a few pushes", Duration::from_secs(20), || async {
        let pushed = pushers
            .status()
            .iter()
            .all(|s| s.last_success_unix_seconds.is_some());
        pushed.then_some(())
    })
    .await;
    metrics.requests.with_label_values(&labels).inc_by(3);
    let expected = metrics.requests.with_label_values(&labels).get() as f64;
    assert_eq!(expected, 10.0);

    let requests =
        r#"sum(codex_http_requests_total{job="codex-proxy",instance="127.0.0.1:11435"})"#;
    let p50 =
        r#"histogram_quantile(0.5, sum by (le) (codex_http_latency_ms_bucket{job="codex-proxy"}))"#;
    for server in [&prometheus, &victoria] {
        let what = format!("{requests} = {expected} on {}", server.base);
        wait_until(&what, Duration::from_secs(30), || async {
            (scalar(server, requests).await == Some(expected)).then_some(())
        })
        .await;
        // Two of four observations are at most 150 ms, in the (100, 200] bucket.
        let median = wait_until("a histogram quantile", Duration::from_secs(30), || async {
            scalar(server, p50).await
        })
        .await;
        assert!(
            (100.0..=200.0).contains(&median),
            "p50 = {median} on {}",
            server.base
        );
    }
    pushers.shutdown(Duration::from_secs(5)).await;
}

/// The real binary pushes to both once its worker is ready, reports the destinations in
/// `/healthz`, and on SIGTERM ends every series with a stale marker: the receivers stop
/// returning them at once instead of for the 5-minute lookback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_pushes_when_ready_and_marks_its_series_stale_on_sigterm() {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    let Some(victoria) = start_victoria_metrics().await else {
        return;
    };
    let config = format!(
        "[[remote_write]]\nname = \"prometheus\"\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n\
         [[remote_write]]\nname = \"victoria\"\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n",
        prometheus.base, victoria.base
    );
    let mut proxy = Proxy::start(&config, &[]).await;
    proxy.wait_ready().await;
    let ready = format!(
        r#"codex_worker_ready{{job="codex-proxy",instance="127.0.0.1:{}"}}"#,
        proxy.port
    );
    for server in [&prometheus, &victoria] {
        wait_until(
            &format!("{ready} = 1 on {}", server.base),
            Duration::from_secs(30),
            || async { (scalar(server, &ready).await == Some(1.0)).then_some(()) },
        )
        .await;
    }
    let health: serde_json::Value = common::http()
        .get(proxy.url("/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let push = health["push"]
        .as_array()
        .expect("a push section in /healthz");
    let names: Vec<&str> = push
        .iter()
        .filter_map(|d| d["destination"].as_str())
        .collect();
    assert_eq!(names, ["prometheus", "victoria"]);
    assert!(
        push.iter().all(|d| d["last_success_unix_seconds"].is_i64()),
        "{push:?}"
    );

    proxy.proc.signal(libc::SIGTERM);
    let status = proxy.proc.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", proxy.logs());
    for server in [&prometheus, &victoria] {
        wait_until(
            &format!("{ready} gone from {}", server.base),
            Duration::from_secs(30),
            || async {
                let result = server.query(&ready).await;
                result
                    .as_array()
                    .is_some_and(|a| a.is_empty())
                    .then_some(())
            },
        )
        .await;
    }
}
