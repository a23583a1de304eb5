//! Remote-write from the real binary into the real receivers, both at once: Prometheus
//! (remote-write receiver on) and VictoriaMetrics. After traffic and a few pushes each
//! answers PromQL over the pushed series with the values `/metrics` shows; on SIGTERM the
//! series end with stale markers.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use rustix::process::Signal;

use std::time::Duration;

use common::scrape::{scrape, sum, text};
use common::{hostname, http, start_prometheus, start_victoria_metrics, wait_until, Proxy};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(30);
const ROUTE: &str = "/v1/chat/completions";

/// The sum of `codex_http_requests_total` for `ROUTE` in the proxy's own `/metrics`.
async fn requests_in_metrics(proxy: &Proxy) -> f64 {
    requests_in(proxy, ROUTE).await
}

/// The sum of `codex_http_requests_total` for `route` in the proxy's own `/metrics`.
async fn requests_in(proxy: &Proxy, route: &str) -> f64 {
    sum(
        &scrape(proxy).await,
        "codex_http_requests_total",
        &[("route", route)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_series_match_metrics_in_both_receivers_and_end_stale_on_sigterm() {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    let Some(victoria) = start_victoria_metrics().await else {
        return;
    };
    let config = format!(
        "[metrics]\nenabled = true\n\
         [[remote_write]]\nname = \"prometheus\"\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n\
         [[remote_write]]\nname = \"victoria\"\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n",
        prometheus.base, victoria.base
    );
    let mut proxy = Proxy::start(&config, &[("DEMO_DELTA_DELAY_MS", "20")]).await;
    proxy.wait_ready().await;
    for i in 0..6 {
        chat_once(&proxy, &format!("hello {i}"), i % 2 == 0).await;
    }
    let expected = requests_in_metrics(&proxy).await;
    assert_eq!(expected, 6.0);

    let instance = format!("{}:{}", hostname(), proxy.port);
    let requests = format!(
        r#"sum(codex_http_requests_total{{job="codex-proxy",instance="{instance}",route="{ROUTE}"}})"#
    );
    let median = format!(
        r#"histogram_quantile(0.5, sum by (le) (codex_http_latency_ms_bucket{{job="codex-proxy",route="{ROUTE}"}}))"#
    );
    let mut medians = Vec::new();
    for server in [&prometheus, &victoria] {
        server.wait_scalar(&requests, expected, DEADLINE).await;
        medians.push(
            wait_until("a histogram quantile", DEADLINE, || async {
                server.scalar(&median).await.filter(|v| v.is_finite())
            })
            .await,
        );
    }
    // Both computed it from the same pushed buckets.
    assert!((medians[0] - medians[1]).abs() < 1e-9, "{medians:?}");
    assert!(medians[0] > 0.0 && medians[0] <= 10_000.0, "{medians:?}");

    let health = proxy.healthz().await.expect("/healthz JSON");
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

    // Without stale markers Prometheus would keep answering for 5 minutes.
    proxy.proc.signal(Signal::TERM);
    let status = proxy.proc.wait_exit(DEADLINE).await;
    assert!(status.success(), "{}", proxy.logs());
    for server in [&prometheus, &victoria] {
        let what = format!("{requests} gone from {}", server.base);
        wait_until(&what, DEADLINE, || async {
            let result = server.query(&requests).await;
            result
                .as_array()
                .is_some_and(|a| a.is_empty())
                .then_some(())
        })
        .await;
    }
}

/// `/healthz`'s push section, once it answers.
async fn push_health(proxy: &Proxy) -> Option<Vec<serde_json::Value>> {
    proxy.healthz().await?["push"].as_array().cloned()
}

/// One chat completion, answered 200.
async fn chat_once(proxy: &Proxy, prompt: &str, stream: bool) {
    let body = json!({"model": "codex-demo", "stream": stream,
                      "messages": [{"role": "user", "content": prompt}]});
    let status = http()
        .post(proxy.url(ROUTE))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("chat request")
        .status();
    assert_eq!(status, 200);
}

async fn chat(proxy: &Proxy, n: usize) {
    for i in 0..n {
        chat_once(proxy, &format!("hi {i}"), false).await;
    }
}

/// `protocol = "auto"` with durable queues, into Prometheus 2.42 and VictoriaMetrics, which
/// speak 1.0 only and answer a 2.0 body 204 without `*-Written` headers: a first process
/// queues 2.0 requests while both are down and is killed; the next one, on the same
/// queues, falls back to 1.0 for both and delivers the old process's 2.0 requests as 1.0.
/// Each receiver then holds the values each process's `/metrics` showed, each sample once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_ends_on_1_0_in_both_receivers_with_queued_2_0_requests_delivered_across_a_restart() {
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    let Some(mut victoria) = start_victoria_metrics().await else {
        return;
    };
    prometheus.stop().await;
    victoria.stop().await;
    let config = format!(
        "[metrics]\nenabled = true\n\
         [[remote_write]]\nname = \"prometheus\"\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n\
         protocol = \"auto\"\nqueue_dir = \"queue-prometheus\"\nmin_backoff = \"50ms\"\nmax_backoff = \"300ms\"\n\
         [[remote_write]]\nname = \"victoria\"\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n\
         protocol = \"auto\"\nqueue_dir = \"queue-victoria\"\nmin_backoff = \"50ms\"\nmax_backoff = \"300ms\"\n",
        prometheus.base, victoria.base
    );
    let mut first = Proxy::start(&config, &[("DEMO_DELTA_DELAY_MS", "20")]).await;
    first.wait_ready().await;
    chat(&first, 6).await;
    assert_eq!(requests_in_metrics(&first).await, 6.0);
    // Snapshots taken after the traffic are queued, all 2.0.
    let queued = |min: u64| {
        let first = &first;
        async move {
            let push = push_health(first).await?;
            let ok = push.iter().all(|d| {
                d["protocol"] == "2.0" && d["queued_requests"].as_u64().unwrap_or(0) >= min
            });
            ok.then_some(())
        }
    };
    wait_until("2.0 requests queued", DEADLINE, || queued(3)).await;
    let after_traffic = push_health(&first).await.unwrap()[0]["queued_requests"]
        .as_u64()
        .unwrap();
    wait_until("snapshots after the traffic", DEADLINE, || {
        queued(after_traffic + 2)
    })
    .await;
    let old_instance = format!("{}:{}", hostname(), first.port);
    first.proc.signal(Signal::KILL);
    first.proc.wait_exit(DEADLINE).await;

    prometheus.start().await;
    victoria.start().await;
    let second = Proxy::start_in(first.dir, &config, &[("DEMO_DELTA_DELAY_MS", "20")]).await;
    second.wait_ready().await;
    chat(&second, 3).await;
    assert_eq!(requests_in_metrics(&second).await, 3.0);
    let new_instance = format!("{}:{}", hostname(), second.port);

    let sum = |instance: &str| {
        format!(r#"sum(codex_http_requests_total{{instance="{instance}",route="{ROUTE}"}})"#)
    };
    for server in [&prometheus, &victoria] {
        for (instance, expected) in [(&old_instance, 6.0), (&new_instance, 3.0)] {
            server.wait_scalar(&sum(instance), expected, DEADLINE).await;
        }
    }
    let push = wait_until("both on 1.0, queues drained", DEADLINE, || async {
        let push = push_health(&second).await?;
        let done = push
            .iter()
            .all(|d| d["protocol"] == "1.0" && d["queued_requests"] == 0);
        done.then_some(push)
    })
    .await;
    assert_eq!(push.len(), 2);
    // Nothing doubled: VictoriaMetrics keeps a sample sent twice, Prometheus does not.
    let count = format!(r#"count_over_time(codex_worker_ready{{instance="{old_instance}"}}[10m])"#);
    let in_prometheus = prometheus.scalar(&count).await.expect("old samples");
    let in_victoria = victoria.scalar(&count).await.expect("old samples");
    assert_eq!(in_prometheus, in_victoria);
    assert!(in_prometheus >= (after_traffic + 2) as f64);
    let metrics = text(&second).await;
    for line in metrics.lines().filter(|l| {
        l.starts_with("codex_push_samples_dropped_total{")
            || l.starts_with("codex_push_samples_rejected_total{")
    }) {
        assert!(line.ends_with(" 0"), "{line}");
    }
    for server in [&prometheus, &victoria] {
        let logs = server.logs().to_lowercase();
        assert!(
            !logs.contains("out of order") && !logs.contains("out-of-order"),
            "{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_0_0_0_0_with_one_config_keep_four_instances_apart() {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    // The same file for every replica, as in a deployment: only the port differs.
    let config = format!(
        "[metrics]\nenabled = true\n\
         [[remote_write]]\nurl = \"{}/api/v1/write\"\ninterval = \"300ms\"\n",
        prometheus.base
    );
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        replicas.push(Proxy::start_listening(dir, "0.0.0.0", &config, &[]).await);
    }
    const MODELS: &str = "/v1/models";
    for (i, proxy) in replicas.iter().enumerate() {
        proxy.wait_ready().await;
        for _ in 0..=i {
            http()
                .get(proxy.url(MODELS))
                .send()
                .await
                .expect("GET /v1/models");
        }
    }
    let mut in_metrics = 0.0;
    for proxy in &replicas {
        in_metrics += requests_in(proxy, MODELS).await;
    }
    assert_eq!(in_metrics, 10.0, "1 + 2 + 3 + 4 requests");
    let total = format!(r#"sum(codex_http_requests_total{{route="{MODELS}"}})"#);
    prometheus.wait_scalar(&total, in_metrics, DEADLINE).await;
    let instances = prometheus
        .query(r#"count by (instance) (codex_worker_ready)"#)
        .await;
    let mut names: Vec<String> = instances
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_string))
        .collect();
    names.sort();
    let mut expected: Vec<String> = replicas
        .iter()
        .map(|p| format!("{}:{}", hostname(), p.port))
        .collect();
    expected.sort();
    assert_eq!(names, expected, "one instance per replica, none 0.0.0.0");
    let dropped = r#"sum(codex_push_samples_dropped_total) or vector(0)"#;
    assert_eq!(prometheus.scalar(dropped).await, Some(0.0));
    let logs = prometheus.logs();
    for reject in [
        "out of order",
        "Out of order",
        "out of bounds",
        "duplicate sample",
    ] {
        assert!(
            !logs.contains(reject),
            "Prometheus rejected samples:\n{logs}"
        );
    }
}

/// The first push of a healthy proxy reports its worker ready. With an interval of an hour
/// only that first push arrives, so each of 30 starts shows exactly what it carried: in the
/// real Prometheus by remote-write, and in the real Pushgateway's group. The gauge and the
/// release of the first push were once set by two racing tasks, and about one start in
/// four pushed `codex_worker_ready` 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_30_first_pushes_carries_the_ready_worker_to_prometheus_and_the_pushgateway() {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    let Some(gateway) = common::start_pushgateway().await else {
        return;
    };
    for start in 0..30 {
        let instance = format!("first-push-{start}");
        let config = format!(
            "[[remote_write]]\nurl = \"{}/api/v1/write\"\ninterval = \"1h\"\n\
             external_labels = {{ instance = \"{instance}\" }}\n\
             [[pushgateway]]\nurl = \"{}\"\njob = \"first-push\"\ninterval = \"1h\"\n\
             grouping = {{ instance = \"{instance}\" }}\n",
            prometheus.base, gateway.base
        );
        let mut proxy = Proxy::start(&config, &[]).await;
        let query = format!(r#"codex_worker_ready{{instance="{instance}"}}"#);
        let in_prometheus = wait_until(&query, DEADLINE, || prometheus.scalar(&query)).await;
        let in_gateway = wait_until("the group on the Pushgateway", DEADLINE, || async {
            let body: serde_json::Value = http()
                .get(format!("{}/api/v1/metrics", gateway.base))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let group = body["data"]
                .as_array()?
                .iter()
                .find(|g| g["labels"]["instance"] == instance.as_str())?
                .clone();
            group["codex_worker_ready"]["metrics"][0]["value"]
                .as_str()?
                .parse::<f64>()
                .ok()
        })
        .await;
        assert_eq!(
            (in_prometheus, in_gateway),
            (1.0, 1.0),
            "start {start}: the first push reported the worker down\n{}",
            proxy.logs()
        );
        // No final push: what the receivers hold stays the first push.
        proxy.proc.signal(Signal::KILL);
        proxy.proc.wait_exit(DEADLINE).await;
    }
}
