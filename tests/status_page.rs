//! `/status`, `/status.json` and `codex-proxy status` against real servers: two
//! remote-write destinations, a real Prometheus and a second one that is down, then up.
//! The page is loaded in headless Chromium: both destinations with their state, every
//! chart's SVG holds marks, nothing comes from elsewhere (no external URL in the DOM, and
//! a Chromium whose every non-loopback request would go through a counting proxy makes
//! none). The screenshot is kept under target/tmp. The guard: basic auth users (hashes by
//! `htpasswd`), 401 with a Basic challenge, a plain password refused by `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http, require_binary, start_prometheus, wait_until, Proxy, PROXY_BIN};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(90);

fn config(first: u16, second: u16) -> String {
    format!(
        "[[remote_write]]\nname = \"prometheus\"\nurl = \"http://127.0.0.1:{first}/api/v1/write\"\ninterval = \"1s\"\n\
         [[remote_write]]\nname = \"second\"\nurl = \"http://user:hunter2@127.0.0.1:{second}/api/v1/write?tenant=x\"\ninterval = \"1s\"\nmin_backoff = \"100ms\"\nmax_backoff = \"500ms\"\n"
    )
}

async fn status_json(proxy: &Proxy) -> Value {
    http()
        .get(proxy.url("/status.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Some completions (streamed, so that the time to first token is recorded) and a 404.
async fn traffic(proxy: &Proxy) {
    for stream in [true, false] {
        let body = serde_json::json!({"model": "codex-demo", "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]});
        let r = http()
            .post(proxy.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    }
    let _ = http().get(proxy.url("/nope")).send().await;
}

fn destination<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["push"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["destination"] == name)
        .unwrap_or_else(|| panic!("no destination {name} in {view}"))
}

/// `codex-proxy status --url URL`: its exit code and output.
fn status_command(url: &str) -> (i32, String) {
    let out = Command::new(PROXY_BIN)
        .args(["status", "--url", url])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Every field of `view` is documented in docs/status.md (as a `name` in a table's
/// first column), and the documented types hold.
fn check_documented_shape(view: &Value) {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/status.md"))
        .unwrap();
    let documented: BTreeSet<String> = doc
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or("");
            first
                .split(", ")
                .map(|n| n.trim().trim_matches('`').to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let has = |path: &str| documented.contains(path);
    assert_eq!(view["version"], 1);
    for (key, value) in view.as_object().unwrap() {
        assert!(
            documented.contains(key.as_str())
                || documented.iter().any(|d| d.starts_with(&format!("{key}."))),
            "top-level `{key}` undocumented"
        );
        match key.as_str() {
            "process" | "worker" | "streams" | "history" => {
                for inner in value.as_object().unwrap().keys() {
                    let path = format!("{key}.{inner}");
                    if path == "worker.rate_limits" {
                        assert!(documented.contains("worker.rate_limits.primary"));
                        continue;
                    }
                    assert!(has(&path), "`{path}` undocumented");
                }
            }
            _ => {}
        }
    }
    for d in view["push"].as_array().unwrap() {
        for k in d.as_object().unwrap().keys() {
            assert!(documented.contains(k.as_str()), "push[].`{k}` undocumented");
        }
        assert!(["ok", "retrying", "failing", "degraded"].contains(&d["state"].as_str().unwrap()));
        assert!(d["samples_sent"].is_u64());
        assert!(d["samples_dropped"].is_object());
    }
    for p in view["history"]["points"].as_array().unwrap() {
        for k in p.as_object().unwrap().keys() {
            assert!(
                documented.contains(k.as_str()),
                "history.points[].`{k}` undocumented"
            );
        }
        assert_eq!(p["requests_per_second"].as_array().unwrap().len(), 4);
        assert_eq!(p["tokens_per_second"].as_array().unwrap().len(), 5);
        assert!(p["t"].is_i64());
    }
    assert_eq!(view["history"]["interval_seconds"], 10);
    assert_eq!(view["history"]["capacity"], 360);
    for k in [
        "version",
        "uptime_seconds",
        "listen",
        "tls",
        "instance",
        "config_file",
    ] {
        assert!(view["process"].get(k).is_some(), "process.{k} missing");
    }
}

/// A TCP listener that counts connections: Chromium's proxy for everything not loopback.
async fn counting_proxy() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, count)
}

fn chromium(profile: &Path, proxy_port: u16, extra: &[&str], url: &str) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,2600",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        // Loopback goes direct (Chromium's implicit bypass); anything else would reach
        // the counting listener.
        .arg(format!("--proxy-server=http://127.0.0.1:{proxy_port}"))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium")
}

fn artifact_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_status_page_shows_a_real_and_a_down_destination_with_charts_and_loads_nothing_from_elsewhere(
) {
    let Some(prometheus) = start_prometheus("").await else {
        return;
    };
    let Some(mut second) = start_prometheus("").await else {
        return;
    };
    if require_binary("chromium").is_none() {
        return;
    }
    second.stop().await;
    let proxy = Proxy::start(&config(prometheus.port, second.port), &[]).await;
    proxy.wait_ready().await;

    // Two points of history need two readings 10 s apart, with traffic in between.
    let view = wait_until(
        "two points of history and both states",
        DEADLINE,
        || async {
            traffic(&proxy).await;
            let view = status_json(&proxy).await;
            let points = view["history"]["points"].as_array().map_or(0, Vec::len);
            let ok = destination(&view, "prometheus")["state"] == "ok"
                && destination(&view, "prometheus")["samples_sent"].as_u64() > Some(0)
                && destination(&view, "second")["state"] == "failing";
            let ttft = view["history"]["points"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["ttft_p95_seconds"].is_number()));
            (points >= 2 && ok && ttft).then_some(view)
        },
    )
    .await;
    check_documented_shape(&view);
    let second_view = destination(&view, "second");
    assert_eq!(
        second_view["url"],
        format!("http://127.0.0.1:{}/api/v1/write", second.port)
    );
    let error = second_view["last_error"].as_str().unwrap();
    assert!(error.len() <= 512 && error.contains("onnect"), "{error}");
    assert!(!view.to_string().contains("hunter2") && !view.to_string().contains("tenant"));

    let status_url = proxy.url("/status.json");
    let (code, out) = status_command(&status_url);
    assert_eq!(code, 1, "exit 1 while `second` is down: {out}");
    assert!(out.contains("second") && out.contains("failing"), "{out}");
    assert!(!out.contains('\x1b'), "colours when piped: {out}");

    // The page in a real browser.
    let profile = tempfile::tempdir().unwrap();
    let (proxy_port, elsewhere) = counting_proxy().await;
    let dom = chromium(
        profile.path(),
        proxy_port,
        &["--dump-dom"],
        &proxy.url("/status"),
    );
    let html = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(
        html.contains("<h1>codex-proxy"),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    for (name, state) in [("prometheus", "ok"), ("second", "failing")] {
        let heading = format!("<h2>{name} <span class=\"muted\">remote_write</span> <span class=\"state {state}\">{state}</span></h2>");
        assert!(html.contains(&heading), "{name} {state} not shown");
    }
    let charts: Vec<&str> = html.split("<svg class=\"chart\"").skip(1).collect();
    assert_eq!(charts.len(), 5 + 2, "five charts and one per destination");
    for chart in &charts {
        let svg = &chart[..chart.find("</svg>").unwrap()];
        assert!(
            svg.contains("<path class=\"line\" d=\"M") || svg.contains("<circle"),
            "a chart without marks: {svg}"
        );
    }
    let lower = html.to_lowercase();
    for attr in ["src=", "href=", "url("] {
        for (i, _) in lower.match_indices(attr) {
            let value = &lower[i + attr.len()..(i + attr.len() + 40).min(lower.len())];
            let value = value.trim_start_matches(['"', '\'']);
            assert!(
                !(value.starts_with("http:")
                    || value.starts_with("https:")
                    || value.starts_with("//")),
                "a reference elsewhere: {attr}{value}"
            );
        }
    }
    let shot = artifact_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        profile.path(),
        proxy_port,
        &[&format!("--screenshot={}", shot.display())],
        &proxy.url("/status"),
    );
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("screenshot of /status: {}", shot.display());
    assert_eq!(
        elsewhere.load(Ordering::SeqCst),
        0,
        "the page made a request that left the host"
    );

    // The second receiver comes up: once it has accepted a push, all is well.
    second.start().await;
    wait_until("`second` delivers", DEADLINE, || async {
        let view = status_json(&proxy).await;
        (destination(&view, "second")["state"] == "ok").then_some(())
    })
    .await;
    let (code, out) = status_command(&status_url);
    assert_eq!(code, 0, "exit 0 once both deliver: {out}");
}

fn htpasswd_hash(password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbBC", "10", "", password])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .trim_start_matches(':')
        .to_string()
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test]
async fn basic_auth_users_admit_to_status_and_metrics_and_everyone_else_gets_a_basic_challenge() {
    if require_binary("htpasswd").is_none() {
        return;
    }
    let hash = htpasswd_hash("correct horse");
    // Not loopback-admitted, so that the guard is all there is.
    let config =
        format!("[metrics]\nallow_loopback = false\nbasic_auth_users = {{ alice = \"{hash}\" }}\n");
    let proxy = Proxy::start(&config, &[]).await;
    for path in ["/status", "/status.json", "/metrics"] {
        for auth in [
            None,
            Some(basic("alice", "wrong")),
            Some(basic("bob", "correct horse")),
        ] {
            let mut request = http().get(proxy.url(path));
            if let Some(a) = &auth {
                request = request.header("authorization", a);
            }
            let r = request.send().await.unwrap();
            assert_eq!(r.status(), 401, "{path} {auth:?}");
            let challenge = r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(challenge.starts_with("Basic realm="), "{challenge}");
        }
        for _ in 0..2 {
            let r = http()
                .get(proxy.url(path))
                .header("authorization", basic("alice", "correct horse"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{path}");
        }
    }
    // The command passes them from the URL.
    let url = format!(
        "http://alice:correct%20horse@127.0.0.1:{}/status.json",
        proxy.port
    );
    let (code, out) = status_command(&url);
    assert!(code == 0 || code == 1, "{out}");
    assert!(
        out.contains("DESTINATION") || out.contains("no push destinations"),
        "{out}"
    );

    // A plain password where a hash belongs: exit 2 naming the key.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.toml");
    std::fs::write(
        &path,
        "[metrics]\nbasic_auth_users = { alice = \"correct horse\" }\n",
    )
    .unwrap();
    let out = Command::new(PROXY_BIN)
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics.basic_auth_users.alice") && !err.contains("correct horse"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_found_at_start_shows_its_replay_progress_and_logs_it_every_five_seconds() {
    let Some(mut prometheus) = start_prometheus("").await else {
        return;
    };
    prometheus.stop().await;
    let config = format!(
        "[[remote_write]]\nname = \"prom\"\nurl = \"{}/api/v1/write\"\ninterval = \"1s\"\n\
         queue_dir = \"queue\"\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\n",
        prometheus.base
    );
    let first = Proxy::start(&config, &[]).await;
    wait_until("a backlog of 3 requests", DEADLINE, || async {
        let view = status_json(&first).await;
        (destination(&view, "prom")["queued_requests"].as_u64() >= Some(3)).then_some(())
    })
    .await;
    let mut proc = first.proc;
    proc.signal(rustix::process::Signal::KILL);
    proc.wait_exit(Duration::from_secs(10)).await;

    let second = Proxy::start_in(first.dir, &config, &[]).await;
    let view = status_json(&second).await;
    let replay = &destination(&view, "prom")["backlog_replay"];
    let total = replay["total"]
        .as_u64()
        .unwrap_or_else(|| panic!("no replay in {view}"));
    assert!(total >= 3, "{replay}");
    assert_eq!(
        replay["done"], 0,
        "nothing delivered while the receiver is down"
    );
    second
        .wait_log(&format!(
            "replaying the backlog found at start: 0 of {total} requests delivered"
        ))
        .await;

    prometheus.start().await;
    second.wait_log("backlog replayed").await;
    let view = status_json(&second).await;
    assert!(
        destination(&view, "prom")["backlog_replay"].is_null(),
        "{view}"
    );
}
