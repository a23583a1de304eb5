//! Pushgateway delivery against the real `prometheus-pushgateway`, read back through its
//! `/api/v1/metrics` JSON API: grouping keys, PUT/POST semantics, the periodic loop, the
//! final push or DELETE at shutdown, the gateway's 400 message, and the `push` command.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use rustix::process::Signal;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use codex_proxy::config::{PushMethod, PushgatewayConfig};
use codex_proxy::exposition::parse;
use codex_proxy::push::http::{HttpClient, HttpSettings};
use codex_proxy::push::pushgateway::{
    protocol_headers, GroupingKey, Pushgateway, PushgatewayError,
};
use codex_proxy::push::{Pushers, Snapshot};
use common::{http, start_pushgateway, wait_until, Server};
use serde_json::Value;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn snapshot(exposition: &str) -> Snapshot {
    parse::parse(exposition).unwrap_or_else(|e| panic!("test exposition: {e}"))
}

fn gateway(server: &Server, job: &str, grouping: &[(&str, &str)], gzip: bool) -> Pushgateway {
    let key = GroupingKey::new(job, labels(grouping)).expect("grouping key");
    let headers = BTreeMap::new();
    let settings = HttpSettings {
        timeout: Duration::from_secs(5),
        headers: &headers,
        bearer_token_file: None,
        basic_auth: None,
        tls_ca_file: None,
    };
    let transport = HttpClient::new(&settings, protocol_headers(gzip)).expect("transport");
    Pushgateway::new(
        transport,
        &server.base.parse().expect("gateway URL"),
        key,
        gzip,
    )
}

/// All groups the gateway holds (`data` of `/api/v1/metrics`).
async fn groups(server: &Server) -> Vec<Value> {
    let body: Value = http()
        .get(format!("{}/api/v1/metrics", server.base))
        .send()
        .await
        .expect("GET /api/v1/metrics")
        .json()
        .await
        .expect("metrics JSON");
    body["data"].as_array().cloned().unwrap_or_default()
}

/// The group whose grouping labels are exactly `key` (job included), if any.
async fn group(server: &Server, key: &[(&str, &str)]) -> Option<Value> {
    let want: Value = key
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    groups(server)
        .await
        .into_iter()
        .find(|g| g["labels"] == want)
}

/// The value of family `name`'s only metric in a group, as the gateway renders it.
fn value(group: &Value, name: &str) -> Option<f64> {
    group[name]["metrics"][0]["value"].as_str()?.parse().ok()
}

/// Waits for the group and returns it.
async fn wait_group(server: &Server, key: &[(&str, &str)]) -> Value {
    wait_until("the group on the Pushgateway", DEADLINE, || async {
        group(server, key).await
    })
    .await
}

#[tokio::test]
async fn pushed_values_appear_under_their_grouping_labels() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let body = "# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total{queue=\"a\"} 7\n# TYPE temp gauge\ntemp 21.5\n";
    for (instance, gzip) in [("plain", false), ("gzipped", true)] {
        let pg = gateway(
            &server,
            "codex-proxy",
            &[("zone", "eu"), ("instance", instance)],
            gzip,
        );
        pg.push(PushMethod::Put, &snapshot(body))
            .await
            .expect("push accepted");
    }
    for instance in ["plain", "gzipped"] {
        let g = group(
            &server,
            &[
                ("job", "codex-proxy"),
                ("instance", instance),
                ("zone", "eu"),
            ],
        )
        .await
        .unwrap_or_else(|| panic!("group {instance} missing"));
        let jobs = &g["jobs_total"];
        assert_eq!(jobs["type"], "COUNTER");
        assert_eq!(jobs["help"], "Jobs.");
        let m = &jobs["metrics"][0];
        assert_eq!(m["value"], "7");
        assert_eq!(m["labels"]["queue"], "a");
        assert_eq!(m["labels"]["job"], "codex-proxy");
        assert_eq!(m["labels"]["instance"], instance);
        assert_eq!(m["labels"]["zone"], "eu");
        assert_eq!(value(&g, "temp"), Some(21.5));
    }
}

#[tokio::test]
async fn slash_and_empty_grouping_values_arrive_intact() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let pg = gateway(
        &server,
        "cleaner",
        &[("path", "/var/tmp"), ("empty", ""), ("name", "a b:c%")],
        false,
    );
    pg.push(PushMethod::Put, &snapshot("files_removed 3\n"))
        .await
        .expect("push accepted");
    let g = group(
        &server,
        &[
            ("job", "cleaner"),
            ("path", "/var/tmp"),
            ("empty", ""),
            ("name", "a b:c%"),
        ],
    )
    .await
    .expect("group with /var/tmp and an empty value");
    assert_eq!(value(&g, "files_removed"), Some(3.0));
}

#[tokio::test]
async fn put_replaces_the_group_while_post_keeps_other_families() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let key = [("job", "batch")];
    let pg = gateway(&server, "batch", &[], false);

    pg.push(PushMethod::Put, &snapshot("a 1\nb 2\n"))
        .await
        .unwrap();
    pg.push(PushMethod::Post, &snapshot("a 10\n"))
        .await
        .unwrap();
    let g = group(&server, &key).await.expect("group");
    assert_eq!(
        value(&g, "a"),
        Some(10.0),
        "POST replaces the family it carries"
    );
    assert_eq!(
        value(&g, "b"),
        Some(2.0),
        "POST keeps a family it does not carry"
    );

    pg.push(PushMethod::Put, &snapshot("a 11\n")).await.unwrap();
    let g = group(&server, &key).await.expect("group");
    assert_eq!(value(&g, "a"), Some(11.0));
    assert!(
        g.get("b").is_none(),
        "PUT removes a family no longer pushed: {g}"
    );
}

#[tokio::test]
async fn a_type_conflict_surfaces_the_gateways_400_message() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    gateway(&server, "first", &[], false)
        .push(
            PushMethod::Put,
            &snapshot("# TYPE shared counter\nshared 1\n"),
        )
        .await
        .unwrap();
    let err = gateway(&server, "second", &[], false)
        .push(
            PushMethod::Put,
            &snapshot("# TYPE shared gauge\nshared 1\n"),
        )
        .await
        .unwrap_err();
    match &err {
        PushgatewayError::Rejected { status, message } => {
            assert_eq!(*status, 400);
            assert!(
                message.contains("inconsistent with existing metrics"),
                "{message}"
            );
            // The gateway names either side of the conflict, in map order.
            assert!(
                message.contains("\"shared\"")
                    && (message.contains("is not a COUNTER") || message.contains("is not a GAUGE")),
                "{message}"
            );
        }
        other => panic!("expected a 400, got {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("the Pushgateway answered 400: pushed metrics are invalid"),
        "{err}"
    );
}

#[tokio::test]
async fn delete_removes_the_group() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let pg = gateway(&server, "gone", &[("instance", "x")], false);
    pg.push(PushMethod::Put, &snapshot("a 1\n")).await.unwrap();
    assert!(group(&server, &[("job", "gone"), ("instance", "x")])
        .await
        .is_some());
    pg.delete().await.expect("DELETE accepted");
    wait_until("the group to disappear", DEADLINE, || async {
        group(&server, &[("job", "gone"), ("instance", "x")])
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

/// A periodic task over a registry holding one gauge, with its lifecycle senders.
struct Running {
    gauge: prometheus::Gauge,
    registry: prometheus::Registry,
    pushers: Pushers,
}

impl Running {
    /// Starts the pushers' entry point with one `[[pushgateway]]` (job "loop", instance "t")
    /// over a registry holding one gauge.
    fn start(server: &Server, extra_config: &str) -> Running {
        let toml = format!(
            "url = \"{}\"\njob = \"loop\"\ngrouping = {{ instance = \"t\" }}\n{extra_config}",
            server.base
        );
        let config: PushgatewayConfig = toml::from_str(&toml).expect("pushgateway config");
        let registry = prometheus::Registry::new();
        let gauge = prometheus::Gauge::new("work_in_progress", "Work.").unwrap();
        registry.register(Box::new(gauge.clone())).unwrap();
        let source = {
            let registry = registry.clone();
            Arc::new(move || Snapshot::from_families(&registry.gather()))
        };
        let pushers = Pushers::start(&[], &[config], source, &registry, "127.0.0.1:1")
            .expect("pushers start");
        Running {
            gauge,
            registry,
            pushers,
        }
    }

    /// Begins shutdown with `grace`; the handle ends when the pushers are done.
    fn begin_shutdown(self, grace: Duration) -> (prometheus::Registry, JoinHandle<()>) {
        (self.registry, tokio::spawn(self.pushers.shutdown(grace)))
    }

    /// Shuts down with `grace` and waits for the pushers to finish.
    async fn shut_down(self, grace: Duration) -> prometheus::Registry {
        let (registry, done) = self.begin_shutdown(grace);
        tokio::time::timeout(grace + Duration::from_secs(5), done)
            .await
            .expect("pushers end within the grace")
            .expect("shutdown did not panic");
        registry
    }

    /// A `codex_push_*` counter or gauge of this destination, summed over other labels.
    fn self_metric(&self, name: &str, extra: &[(&str, &str)]) -> f64 {
        self_metric(&self.registry, name, extra)
    }
}

fn self_metric(registry: &prometheus::Registry, name: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels = vec![("destination", "pushgateway[0]"), ("kind", "pushgateway")];
    labels.extend_from_slice(extra);
    common::registry_value(registry, name, &labels)
}

const LOOP_KEY: [(&str, &str); 2] = [("job", "loop"), ("instance", "t")];

#[tokio::test]
async fn the_first_push_comes_at_ready_not_after_an_interval() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let running = Running::start(&server, "interval = \"1h\"\n");
    running.gauge.set(4.0);
    running.pushers.handle().mark_ready();
    let g = wait_group(&server, &LOOP_KEY).await;
    assert_eq!(value(&g, "work_in_progress"), Some(4.0));
    assert_eq!(
        running.self_metric("codex_push_requests_total", &[("outcome", "success")]),
        1.0
    );
    assert!(running.self_metric("codex_push_last_success_timestamp_seconds", &[]) > 0.0);
}

#[tokio::test]
async fn push_time_seconds_advances_on_each_push() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let running = Running::start(&server, "interval = \"200ms\"\n");
    running.pushers.handle().mark_ready();
    let mut last = value(&wait_group(&server, &LOOP_KEY).await, "push_time_seconds")
        .expect("push_time_seconds");
    for _ in 0..2 {
        last = wait_until("push_time_seconds to advance", DEADLINE, || async {
            let t = value(&group(&server, &LOOP_KEY).await?, "push_time_seconds")?;
            (t > last).then_some(t)
        })
        .await;
    }
    assert!(running.self_metric("codex_push_requests_total", &[("outcome", "success")]) >= 3.0);
}

#[tokio::test]
async fn the_cron_schedule_pushes_repeatedly() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let running = Running::start(&server, "cron = \"* * * * * *\"\n");
    running.pushers.handle().mark_ready();
    let first = value(&wait_group(&server, &LOOP_KEY).await, "push_time_seconds")
        .expect("push_time_seconds");
    wait_until(
        "a second push on the next cron second",
        DEADLINE,
        || async {
            let t = value(&group(&server, &LOOP_KEY).await?, "push_time_seconds")?;
            (t > first).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn shutdown_leaves_the_final_values_on_the_gateway() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let running = Running::start(&server, "interval = \"1h\"\n");
    running.gauge.set(1.0);
    running.pushers.handle().mark_ready();
    wait_group(&server, &LOOP_KEY).await;
    running.gauge.set(42.0);
    running.shut_down(Duration::from_secs(10)).await;
    let g = group(&server, &LOOP_KEY)
        .await
        .expect("group stays after shutdown");
    assert_eq!(
        value(&g, "work_in_progress"),
        Some(42.0),
        "the final push carries the last values"
    );
}

#[tokio::test]
async fn shutdown_with_delete_on_shutdown_removes_the_group() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let running = Running::start(&server, "interval = \"1h\"\ndelete_on_shutdown = true\n");
    running.pushers.handle().mark_ready();
    wait_group(&server, &LOOP_KEY).await;
    running.shut_down(Duration::from_secs(10)).await;
    wait_until("the group to be deleted", DEADLINE, || async {
        group(&server, &LOOP_KEY).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_final_push_is_retried_until_the_gateway_is_back() {
    let Some(mut server) = start_pushgateway().await else {
        return;
    };
    let running = Running::start(&server, "interval = \"1h\"\n");
    running.pushers.handle().mark_ready();
    wait_group(&server, &LOOP_KEY).await;
    running.gauge.set(7.0);
    server.stop().await;
    let (registry, done) = running.begin_shutdown(Duration::from_secs(30));
    wait_until("a failed final attempt", DEADLINE, || async {
        (self_metric(
            &registry,
            "codex_push_requests_total",
            &[("outcome", "network")],
        ) >= 1.0)
            .then_some(())
    })
    .await;
    server.start().await;
    tokio::time::timeout(Duration::from_secs(35), done)
        .await
        .expect("pushers end within the grace")
        .expect("shutdown did not panic");
    let g = group(&server, &LOOP_KEY)
        .await
        .expect("group after the gateway came back");
    assert_eq!(value(&g, "work_in_progress"), Some(7.0));
    assert!(self_metric(&registry, "codex_push_samples_retried_total", &[]) > 0.0);
    assert_eq!(
        self_metric(&registry, "codex_push_samples_dropped_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn a_rejected_push_is_counted_and_later_pushes_continue() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    // Another group already holds `work_in_progress` as a counter: our gauge conflicts.
    let other = gateway(&server, "other", &[], false);
    other
        .push(
            PushMethod::Put,
            &snapshot("# TYPE work_in_progress counter\nwork_in_progress 1\n"),
        )
        .await
        .unwrap();
    let running = Running::start(&server, "interval = \"200ms\"\n");
    running.gauge.set(5.0);
    running.pushers.handle().mark_ready();
    wait_until("a rejected push", DEADLINE, || async {
        (running.self_metric("codex_push_requests_total", &[("outcome", "http_4xx")]) >= 1.0)
            .then_some(())
    })
    .await;
    assert!(
        running.self_metric(
            "codex_push_samples_dropped_total",
            &[("reason", "rejected")]
        ) > 0.0
    );
    other.delete().await.unwrap();
    let g = wait_until("a later push to succeed", DEADLINE, || async {
        let g = group(&server, &LOOP_KEY).await?;
        value(&g, "work_in_progress").is_some().then_some(g)
    })
    .await;
    assert_eq!(value(&g, "work_in_progress"), Some(5.0));
}

/// Runs `codex-proxy push` with `args`, `stdin` piped in; (exit code, stderr).
fn push_command(args: &[&str], stdin: &str) -> (i32, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_codex-proxy"))
        .arg("push")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn codex-proxy push");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("codex-proxy push exits");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ROUND_TRIP: &str = r#"# HELP batch_records_total Records handled.
# TYPE batch_records_total counter
batch_records_total{source="C:\\data\\in",note="say \"hi\"\nbye"} 1027
# TYPE batch_last_size_bytes gauge
batch_last_size_bytes 5.5e+06
# HELP batch_duration_seconds How long a batch took.
# TYPE batch_duration_seconds histogram
batch_duration_seconds_bucket{le="0.5"} 2
batch_duration_seconds_bucket{le="1"} 5
batch_duration_seconds_bucket{le="+Inf"} 6
batch_duration_seconds_sum 4.25
batch_duration_seconds_count 6
"#;

#[tokio::test]
async fn the_push_command_round_trips_a_file() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.prom");
    std::fs::write(&file, ROUND_TRIP).unwrap();
    let (code, stderr) = push_command(
        &[
            "--gateway",
            &server.base,
            "--job",
            "nightly",
            "--label",
            "host=db-1",
            "--label",
            "dir=/srv/in",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("pushed 7 samples in 3 families"),
        "{stderr}"
    );

    let g = group(
        &server,
        &[("job", "nightly"), ("host", "db-1"), ("dir", "/srv/in")],
    )
    .await
    .expect("group");
    let counter = &g["batch_records_total"];
    assert_eq!(counter["type"], "COUNTER");
    assert_eq!(counter["help"], "Records handled.");
    let labels = &counter["metrics"][0]["labels"];
    assert_eq!(labels["source"], "C:\\data\\in");
    assert_eq!(labels["note"], "say \"hi\"\nbye");
    assert_eq!(counter["metrics"][0]["value"], "1027");
    assert_eq!(g["batch_last_size_bytes"]["type"], "GAUGE");
    assert_eq!(value(&g, "batch_last_size_bytes"), Some(5.5e6));
    let h = &g["batch_duration_seconds"];
    assert_eq!(h["type"], "HISTOGRAM");
    let m = &h["metrics"][0];
    assert_eq!(m["buckets"]["0.5"], "2");
    assert_eq!(m["buckets"]["1"], "5");
    assert_eq!(m["buckets"]["+Inf"], "6");
    assert_eq!(m["sum"], "4.25");
    assert_eq!(m["count"], "6");
}

#[tokio::test]
async fn the_push_command_reads_stdin_posts_and_deletes() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let key = [("job", "cron")];
    let base = ["--gateway", server.base.as_str(), "--job", "cron"];
    let run = |extra: &[&str], stdin: &str| {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        push_command(&args, stdin)
    };
    assert_eq!(run(&["-"], "a 1\nb 2\n").0, 0);
    assert_eq!(run(&["--method", "post"], "a 3\n").0, 0);
    let g = group(&server, &key).await.expect("group");
    assert_eq!((value(&g, "a"), value(&g, "b")), (Some(3.0), Some(2.0)));
    let (code, stderr) = run(&["--delete"], "");
    assert_eq!(code, 0, "{stderr}");
    wait_until("the group to be deleted", DEADLINE, || async {
        group(&server, &key).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_push_command_fails_with_the_gateways_message_or_the_bad_line() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let base = ["--gateway", server.base.as_str()];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str], stdin: &str| {
        let args = with(extra);
        push_command(&args.iter().map(String::as_str).collect::<Vec<_>>(), stdin)
    };
    assert_eq!(
        run(&["--job", "one"], "# TYPE shared counter\nshared 1\n").0,
        0
    );
    let (code, stderr) = run(&["--job", "two"], "# TYPE shared gauge\nshared 1\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("the Pushgateway answered 400: pushed metrics are invalid or inconsistent with existing metrics"), "{stderr}");

    let (code, stderr) = run(&["--job", "three"], "ok 1\nbroken{a=\"1\" 2\n");
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("stdin: line 2:"), "{stderr}");
    let (code, stderr) = run(
        &["--job", "three", "--label", "instance=a"],
        "m{instance=\"b\"} 1\n",
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("carries the label `instance`"), "{stderr}");
    assert!(
        group(&server, &[("job", "three")]).await.is_none(),
        "nothing was sent"
    );
    assert!(
        group(&server, &[("job", "three"), ("instance", "a")])
            .await
            .is_none(),
        "nothing was sent"
    );
}

#[tokio::test]
async fn the_push_command_sends_the_same_file_by_remote_write() {
    let Some(prometheus) = common::start_prometheus("").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.prom");
    std::fs::write(&file, ROUND_TRIP).unwrap();
    let url = format!("{}/api/v1/write", prometheus.base);
    let before = chrono::Utc::now().timestamp() as f64;
    let (code, stderr) = push_command(
        &[
            "--remote-write",
            &url,
            "--job",
            "nightly",
            "--label",
            "host=db-1",
            file.to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");

    let counter = wait_until("the counter in Prometheus", DEADLINE, || async {
        let r = prometheus.query("batch_records_total").await;
        r.as_array().filter(|a| !a.is_empty()).map(|a| a[0].clone())
    })
    .await;
    let series = &counter["metric"];
    assert_eq!(series["job"], "nightly");
    assert_eq!(series["host"], "db-1");
    assert_eq!(series["source"], "C:\\data\\in");
    assert_eq!(series["note"], "say \"hi\"\nbye");
    assert_eq!(counter["value"][1], "1027");
    let stamped = counter["value"][0].as_f64().expect("sample time");
    assert!(
        stamped >= before - 1.0,
        "stamped with the push time, got {stamped}"
    );

    let gauge = prometheus.query("batch_last_size_bytes").await;
    assert_eq!(gauge[0]["value"][1], "5500000");
    let buckets = prometheus.query("batch_duration_seconds_bucket").await;
    let by_le: BTreeMap<String, String> = buckets
        .as_array()
        .expect("bucket series")
        .iter()
        .map(|s| {
            (
                s["metric"]["le"].as_str().unwrap_or_default().to_string(),
                s["value"][1].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(by_le, labels(&[("0.5", "2"), ("1", "5"), ("+Inf", "6")]));
    assert_eq!(
        prometheus.query("batch_duration_seconds_sum").await[0]["value"][1],
        "4.25"
    );
    assert_eq!(
        prometheus.query("batch_duration_seconds_count").await[0]["value"][1],
        "6"
    );

    // Prometheus 2.42 reads a 2.0 body as an empty 1.0 request: `auto` notices (no
    // *-Written header) and sends it again as 1.0; `v2` alone fails rather than lose it.
    let with_protocol = |host: &str, protocol: &str| {
        push_command(
            &[
                "--remote-write",
                &url,
                "--protocol",
                protocol,
                "--job",
                "nightly",
                "--label",
                &format!("host={host}"),
                file.to_str().unwrap(),
            ],
            "",
        )
    };
    let (code, stderr) = with_protocol("db-2", "auto");
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("sending 1.0"), "{stderr}");
    let query = r#"batch_records_total{host="db-2"}"#;
    let value = wait_until("the auto push in Prometheus", DEADLINE, || async {
        let r = prometheus.query(query).await;
        r.as_array()
            .filter(|a| !a.is_empty())
            .map(|a| a[0]["value"][1].clone())
    })
    .await;
    assert_eq!(value, "1027");
    let (code, stderr) = with_protocol("db-3", "v2");
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("did not read the 2.0 request"), "{stderr}");
}

/// The value of the metric of family `name` whose labels include `with`.
fn metric_value(group: &Value, name: &str, with: &[(&str, &str)]) -> Option<f64> {
    group[name]["metrics"]
        .as_array()?
        .iter()
        .find(|m| with.iter().all(|(k, v)| m["labels"][*k] == *v))?["value"]
        .as_str()?
        .parse()
        .ok()
}

const BIN_KEY: [(&str, &str); 2] = [("job", "bin"), ("instance", "proxy")];

/// The real binary with one `[[pushgateway]]` that pushes only at ready and at shutdown.
async fn proxy_pushing_to(server: &Server, extra_config: &str) -> common::Proxy {
    let config = format!(
        "[[pushgateway]]\nurl = \"{}\"\njob = \"bin\"\ngrouping = {{ instance = \"proxy\" }}\ninterval = \"1h\"\n{extra_config}",
        server.base
    );
    common::Proxy::start(&config, &[]).await
}

#[tokio::test]
async fn sigterm_makes_the_binary_push_its_final_values() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let mut proxy = proxy_pushing_to(&server, "").await;
    let first = wait_group(&server, &BIN_KEY).await;
    let own = [("destination", "pushgateway[0]"), ("outcome", "success")];
    // The first push's snapshot was taken before any push succeeded.
    assert_eq!(
        metric_value(&first, "codex_push_requests_total", &own),
        Some(0.0),
        "{first}"
    );

    proxy.proc.signal(Signal::TERM);
    let status = proxy.proc.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; log:\n{}", proxy.logs());
    let last = group(&server, &BIN_KEY)
        .await
        .expect("the group stays after shutdown");
    // Only a push at shutdown can carry the first push's success.
    assert_eq!(
        metric_value(&last, "codex_push_requests_total", &own),
        Some(1.0),
        "{last}"
    );
    assert!(value(&last, "push_time_seconds") > value(&first, "push_time_seconds"));
}

#[tokio::test]
async fn sigterm_with_delete_on_shutdown_makes_the_binary_delete_its_group() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let mut proxy = proxy_pushing_to(&server, "delete_on_shutdown = true\n").await;
    wait_group(&server, &BIN_KEY).await;
    proxy.proc.signal(Signal::TERM);
    let status = proxy.proc.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}; log:\n{}", proxy.logs());
    wait_until("the group to be deleted", DEADLINE, || async {
        group(&server, &BIN_KEY).await.is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn without_an_instance_in_the_grouping_the_group_gets_the_default_instance() {
    let Some(server) = start_pushgateway().await else {
        return;
    };
    let toml = format!(
        "url = \"{}\"\njob = \"fleet\"\ninterval = \"1h\"\n",
        server.base
    );
    let config: PushgatewayConfig = toml::from_str(&toml).expect("pushgateway config");
    let registry = prometheus::Registry::new();
    let source = {
        let registry = registry.clone();
        Arc::new(move || Snapshot::from_families(&registry.gather()))
    };
    // Two replicas with the same configuration keep a group each.
    let a = Pushers::start(
        &[],
        std::slice::from_ref(&config),
        source.clone(),
        &registry,
        "host-a:11435",
    )
    .expect("pushers start");
    let other = prometheus::Registry::new();
    let b = Pushers::start(&[], &[config], source, &other, "host-b:11435").expect("pushers start");
    a.handle().mark_ready();
    b.handle().mark_ready();
    wait_group(&server, &[("job", "fleet"), ("instance", "host-a:11435")]).await;
    wait_group(&server, &[("job", "fleet"), ("instance", "host-b:11435")]).await;
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}
