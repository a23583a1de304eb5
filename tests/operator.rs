//! Operator conventions, end to end against the real binary: `/metrics` on by default
//! (loopback only), 401 with a Bearer challenge, the bearer scheme in any case on every
//! guarded route, secrets from files rotated while running, every family in the first
//! scrape, `RUST_LOG` directives, JSON logs without secrets, the worker's own log level,
//! `--config` before the subcommand and `CODEX_PROXY_CONFIG`, and `healthcheck`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{free_port, http, wait_until, Proc, Proxy, PROXY_BIN};
use rustix::process::Signal;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

async fn status(proxy: &Proxy, path: &str, auth: Option<&str>) -> reqwest::Response {
    let mut request = http().get(proxy.url(path));
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await.expect("request")
}

fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Starts the binary with `args` (a config file is written for `config`), waits for /livez.
async fn spawn(dir: &Path, args: &[&str], config: &str, env: &[(&str, &str)]) -> (Proc, String) {
    let port = free_port();
    let config_path = dir.join("codex-proxy.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new(PROXY_BIN);
    for arg in args {
        cmd.arg(arg.replace("{config}", &config_path.display().to_string()));
    }
    cmd.current_dir(dir)
        .env("PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let proc = Proc::spawn(cmd, dir.join(format!("proxy-{port}.log")));
    let base = format!("http://127.0.0.1:{port}");
    let client = http();
    wait_until("proxy /readyz", DEADLINE, || {
        let client = client.clone();
        let url = format!("{base}/readyz");
        async move {
            let r = client.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    (proc, base)
}

#[tokio::test]
async fn a_fresh_default_start_serves_metrics_on_loopback_and_one_variable_turns_it_off() {
    let proxy = Proxy::start("", &[]).await;
    let response = status(&proxy, "/metrics", None).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.contains("# TYPE codex_worker_ready gauge"), "{text}");
    // A reload signal does not end a proxy that has no secret files to read.
    proxy.proc.signal(Signal::HUP);
    proxy
        .wait_log("SIGHUP: reading the secret files again")
        .await;
    assert_eq!(status(&proxy, "/livez", None).await.status(), 200);

    let off = Proxy::start("", &[("PROXY_ENABLE_METRICS", "false")]).await;
    assert_eq!(status(&off, "/metrics", None).await.status(), 404);
    let off = Proxy::start("[metrics]\nenabled = false\n", &[]).await;
    assert_eq!(status(&off, "/metrics", None).await.status(), 404);
}

/// The family names docs/metrics.md lists in its tables.
fn documented_families() -> Vec<String> {
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md"))
        .expect("docs/metrics.md");
    let mut names = Vec::new();
    for line in docs.lines().filter(|l| l.starts_with("| `codex_")) {
        let first_cell = line.split('|').nth(1).unwrap_or("");
        for name in first_cell.split('`').skip(1).step_by(2) {
            if name.starts_with("codex_") && !name.contains('*') {
                names.push(name.to_string());
            }
        }
    }
    assert!(
        names.len() > 10,
        "too few families found in docs/metrics.md: {names:?}"
    );
    names
}

#[tokio::test]
async fn every_documented_family_is_in_the_first_scrape_and_closed_label_sets_start_at_zero() {
    // Both kinds of destination, on a closed port: their `codex_push_*` families exist too.
    let closed = free_port();
    let config = format!(
        "[[remote_write]]\nurl = \"http://127.0.0.1:{closed}/api/v1/write\"\ninterval = \"1h\"\n\
         [[pushgateway]]\nurl = \"http://127.0.0.1:{closed}\"\ninterval = \"1h\"\n"
    );
    let proxy = Proxy::start(&config, &[]).await;
    let first = status(&proxy, "/metrics", None).await.text().await.unwrap();
    let missing: Vec<String> = documented_families()
        .into_iter()
        .filter(|name| !first.contains(&format!("# TYPE {name} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the first scrape: {missing:?}\n{first}"
    );
    for (family, reason) in [
        ("codex_tool_buffer_started_total", "open"),
        ("codex_tool_buffer_flushed_total", "closed"),
        ("codex_tool_buffer_aborted_total", "nested_open"),
        ("codex_tool_buffer_aborted_total", "finalize"),
        ("codex_tool_buffer_aborted_total", "disconnect"),
    ] {
        let series = format!("{family}{{output_mode=\"obsidian-xml\",reason=\"{reason}\"}} 0\n");
        assert!(first.contains(&series), "no {series:?} in\n{first}");
    }
    for reason in ["max_connections", "header_timeout", "idle_timeout"] {
        let series = format!("codex_http_connections_refused_total{{reason=\"{reason}\"}} 0\n");
        assert!(first.contains(&series), "no {series:?} in\n{first}");
    }
}

#[tokio::test]
async fn a_missing_or_wrong_scrape_token_gets_401_with_a_bearer_challenge() {
    let config = "[metrics]\nallow_loopback = false\ntoken = \"scr4pe\"\n";
    let proxy = Proxy::start(config, &[]).await;
    for (auth, invalid) in [(None, false), (Some("Bearer wrong"), true)] {
        let response = status(&proxy, "/metrics", auth).await;
        assert_eq!(response.status(), 401, "{auth:?}");
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert_eq!(challenge.contains("invalid_token"), invalid, "{challenge}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["type"], "unauthorized");
        assert!(!body.to_string().contains("scr4pe"));
    }
    assert_eq!(
        status(&proxy, "/metrics", Some("Bearer scr4pe"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_accepted_in_any_case_on_every_guarded_route() {
    let config = "[server]\napi_key = \"k3y\"\nadmin_token = \"adm1n\"\n\
                  [metrics]\nallow_loopback = false\ntoken = \"scr4pe\"\n";
    let proxy = Proxy::start(config, &[]).await;
    proxy.wait_ready().await;
    let refused = status(&proxy, "/v1/models", None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let models = status(&proxy, "/v1/models", Some(&format!("{scheme} k3y"))).await;
        assert_eq!(models.status(), 200, "{scheme} on /v1/models");
        let metrics = status(&proxy, "/metrics", Some(&format!("{scheme} scr4pe"))).await;
        assert_eq!(metrics.status(), 200, "{scheme} on /metrics");
        let toggle = http()
            .post(proxy.url("/internal/maintenance"))
            .header("authorization", format!("{scheme} adm1n"))
            .header("content-type", "application/json")
            .body(r#"{"enabled": false}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(toggle.status(), 200, "{scheme} on /internal/maintenance");
    }
}

#[tokio::test]
async fn rotated_secret_files_take_effect_without_a_restart() {
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("metrics-token");
    let key_file = secrets.path().join("api-key");
    std::fs::write(&token_file, "token-one\n").unwrap();
    std::fs::write(&key_file, "key-one\n").unwrap();
    let config = format!(
        "[server]\napi_key_file = {}\n[metrics]\nallow_loopback = false\ntoken_file = {}\n",
        toml_path(&key_file),
        toml_path(&token_file)
    );
    let proxy = Proxy::start(&config, &[]).await;
    proxy.wait_ready().await;
    assert_eq!(
        status(&proxy, "/metrics", Some("Bearer token-one"))
            .await
            .status(),
        200
    );
    assert_eq!(
        status(&proxy, "/v1/models", Some("Bearer key-one"))
            .await
            .status(),
        200
    );

    // Rotated the way a secret volume does it: a new file renamed over the old one.
    let rotate = |path: &Path, value: &str| {
        let next = path.with_extension("next");
        std::fs::write(&next, value).unwrap();
        std::fs::rename(&next, path).unwrap();
    };
    let admitted = |path: &'static str, auth: String| {
        let proxy = &proxy;
        move || {
            let auth = auth.clone();
            async move { (status(proxy, path, Some(&auth)).await.status() == 200).then_some(()) }
        }
    };
    rotate(&token_file, "token-two\n");
    rotate(&key_file, "key-two\n");
    wait_until(
        "the rotated metrics token",
        DEADLINE,
        admitted("/metrics", "Bearer token-two".into()),
    )
    .await;
    wait_until(
        "the rotated API key",
        DEADLINE,
        admitted("/v1/models", "Bearer key-two".into()),
    )
    .await;
    assert_eq!(
        status(&proxy, "/metrics", Some("Bearer token-one"))
            .await
            .status(),
        401
    );
    assert_eq!(
        status(&proxy, "/v1/models", Some("Bearer key-one"))
            .await
            .status(),
        401
    );

    // SIGHUP reads them at once; the process keeps serving.
    rotate(&token_file, "token-three");
    proxy.proc.signal(Signal::HUP);
    wait_until(
        "the token after SIGHUP",
        DEADLINE,
        admitted("/metrics", "Bearer token-three".into()),
    )
    .await;

    // A rotation that leaves the file empty keeps the last token instead of none.
    std::fs::write(&token_file, "").unwrap();
    proxy.proc.signal(Signal::HUP);
    proxy
        .wait_log(&format!(
            "{} is empty; keeping the previous value",
            token_file.display()
        ))
        .await;
    assert_eq!(
        status(&proxy, "/metrics", Some("Bearer token-three"))
            .await
            .status(),
        200
    );
    assert_eq!(status(&proxy, "/metrics", None).await.status(), 401);
    let logs = proxy.logs();
    for secret in [
        "token-one",
        "token-two",
        "token-three",
        "key-one",
        "key-two",
    ] {
        assert!(!logs.contains(secret), "the log shows {secret}:\n{logs}");
    }
}

#[tokio::test]
async fn rust_log_directives_filter_by_target() {
    // The proxy's start-up line is in `codex_proxy::app`, the worker's in
    // `codex_proxy::worker::supervisor`: only the first passes this filter.
    let proxy = Proxy::start("", &[("RUST_LOG", "warn,codex_proxy::app=info")]).await;
    proxy.wait_ready().await;
    let mut proc = proxy.proc;
    proc.signal(Signal::TERM);
    proc.wait_exit(DEADLINE).await;
    let logs = proc.logs();
    assert!(logs.contains("listening on"), "{logs}");
    assert!(logs.contains("shutting down"), "{logs}");
    assert!(!logs.contains("worker ready"), "{logs}");
    assert!(!logs.contains("DEBUG"), "{logs}");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_carry_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t0ken-in-a-file").unwrap();
    let config = format!(
        "[server]\napi_key = \"sk-inline-key\"\nadmin_token = \"adm1n-token\"\n\
         [metrics]\ntoken_file = {}\n\
         [[remote_write]]\nurl = \"http://user:pa55word@127.0.0.1:{}/api/v1/write\"\ninterval = \"200ms\"\n",
        toml_path(&token_file),
        free_port()
    );
    let (mut proc, base) = spawn(
        dir.path(),
        &["--log-format", "json", "serve", "--config", "{config}"],
        &config,
        &[("RUST_LOG", "debug")],
    )
    .await;
    let client = http();
    for auth in [
        "Bearer sk-inline-key",
        "Bearer wrong",
        "Bearer t0ken-in-a-file",
    ] {
        for path in ["/v1/models", "/metrics"] {
            let _ = client
                .get(format!("{base}{path}"))
                .header("authorization", auth)
                .send()
                .await
                .unwrap()
                .bytes()
                .await;
        }
    }
    std::fs::write(&token_file, "r0tated-token").unwrap();
    proc.signal(Signal::HUP);
    wait_until("the rotation to be logged", DEADLINE, || {
        let logs = proc.logs();
        async move { logs.contains("secret file changed").then_some(()) }
    })
    .await;
    proc.signal(Signal::TERM);
    proc.wait_exit(DEADLINE).await;
    let logs = proc.logs();
    let mut lines = 0;
    for line in logs.lines() {
        let event: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\nlog:\n{logs}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "{logs}");
    for secret in [
        "sk-inline-key",
        "adm1n-token",
        "t0ken-in-a-file",
        "r0tated-token",
        "pa55word",
    ] {
        assert!(!logs.contains(secret), "the log shows {secret}:\n{logs}");
    }
}

#[tokio::test]
async fn the_worker_gets_its_own_log_level_never_the_proxys_rust_log() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("worker-rust-log");
    let script = format!(
        "printf %s \"${{RUST_LOG-unset}}\" > {}; exec {} demo-worker",
        seen.display(),
        PROXY_BIN
    );
    for (config, expected) in [
        (String::new(), "warn"),
        (
            "log_level = \"codex_core=info\"\n".to_string(),
            "codex_core=info",
        ),
    ] {
        let text = format!("[worker]\ncommand = [\"sh\", \"-c\", {script:?}]\n{config}");
        let (mut proc, _) = spawn(
            dir.path(),
            &["serve", "--config", "{config}"],
            &text,
            &[("RUST_LOG", "debug")],
        )
        .await;
        assert_eq!(std::fs::read_to_string(&seen).unwrap(), expected);
        proc.signal(Signal::TERM);
        proc.wait_exit(DEADLINE).await;
    }
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(PROXY_BIN);
    cmd.args(args).env_remove("CODEX_PROXY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run codex-proxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_is_a_global_option_with_codex_proxy_config_as_its_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:19999\"\nidle_timeout = \"1m30s\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    for (args, env) in [
        (vec!["--config", path, "check-config"], vec![]),
        (vec!["check-config", "--config", path], vec![]),
        (vec!["check-config"], vec![("CODEX_PROXY_CONFIG", path)]),
    ] {
        let (code, out, err) = run(&args, &env);
        assert_eq!(code, 0, "{args:?} {env:?}: {err}");
        assert!(
            out.contains("listen = \"127.0.0.1:19999\""),
            "{args:?}: {out}"
        );
        assert!(out.contains("idle_timeout = \"1m30s\""), "{out}");
    }
    // A secret file beside its inline key: exit 2 naming the key.
    std::fs::write(
        &file,
        "[metrics]\ntoken = \"x\"\ntoken_file = \"/run/secrets/t\"\n",
    )
    .unwrap();
    let (code, _, err) = run(&["--config", path, "check-config"], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("metrics.token_file"), "{err}");
}

#[tokio::test]
async fn healthcheck_exits_0_when_ready_and_1_otherwise() {
    let proxy = Proxy::start("", &[]).await;
    proxy.wait_ready().await;
    let url = proxy.url("/readyz");
    assert_eq!(run(&["healthcheck", "--url", &url], &[]).0, 0);
    // Without --url: /readyz of the configured listen address.
    let listen = format!("127.0.0.1:{}", proxy.port);
    assert_eq!(run(&["healthcheck"], &[("PROXY_LISTEN", &listen)]).0, 0);

    let closed = format!("http://127.0.0.1:{}/readyz", free_port());
    let (code, _, err) = run(&["healthcheck", "--url", &closed, "--timeout", "2s"], &[]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(run(&["healthcheck", "--url", "ftp://x/"], &[]).0, 2);

    // A proxy whose worker never starts answers /readyz 503.
    let down = Proxy::start("[worker]\ncommand = [\"/nonexistent/codex\"]\n", &[]).await;
    let (code, _, err) = run(&["healthcheck", "--url", &down.url("/readyz")], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("503"), "{err}");
}
