//! The flow as a whole: parsing, defaults, the keys errors name, the rendered config.

use std::time::Duration;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_err(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

#[test]
fn empty_file_gives_documented_defaults() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:11435");
    assert_eq!(c.server.shutdown_grace.0, Duration::from_secs(5));
    assert_eq!(c.worker.backoff_initial_ms, 500);
    assert_eq!(c.worker.shutdown_grace_ms, 5000);
    assert_eq!(c.streams.max_concurrency, 4);
    assert_eq!(c.streams.on_full, OnFull::Queue);
    assert!(c.metrics.allow_loopback);
    assert!(
        c.metrics.enabled,
        "/metrics is served (on loopback) by default"
    );
    assert!(!c.metrics.allow_unauth && c.metrics.token.is_empty());
    assert!(c.worker.command.is_empty(), "the demo worker runs");
    assert_eq!(c.worker.log_level, "warn");
    assert_eq!(c.worker.queue_max, 256);
    assert_eq!(c.worker.queue_timeout.0, Duration::from_secs(60));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.server.header_read_timeout.0, Duration::from_secs(30));
    assert_eq!(c.server.idle_timeout.0, Duration::from_secs(60));
    assert_eq!(c.server.max_connections, 10_000);
}

#[test]
fn the_seed_behaviour_without_metrics_is_one_key_away() {
    let c = Config::parse("[metrics]\nenabled = false\n").unwrap();
    assert!(!c.metrics.enabled);
    let c = Config::load(None, |k| {
        (k == "PROXY_ENABLE_METRICS").then(|| "false".into())
    })
    .unwrap();
    assert!(!c.metrics.enabled);
}

#[test]
fn a_secret_file_and_its_inline_key_together_are_an_error_naming_the_file_key() {
    let cases = [
        (
            "[metrics]\ntoken = \"t\"\ntoken_file = \"/f\"\n",
            "metrics.token_file",
        ),
        (
            "[server]\napi_key = \"k\"\napi_key_file = \"/f\"\n",
            "server.api_key_file",
        ),
        (
            "[server]\nadmin_token = \"a\"\nadmin_token_file = \"/f\"\n",
            "server.admin_token_file",
        ),
    ];
    for (text, key) in cases {
        let err = Config::parse(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        assert!(err.contains("not both"), "{err}");
    }
    // The environment counts as inline: a token from it and a file from the file clash.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "t0k3n\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        format!("[metrics]\ntoken_file = {:?}\n", file.display().to_string()),
    )
    .unwrap();
    let err = Config::load(Some(&path), |k| {
        (k == "PROXY_METRICS_TOKEN").then(|| "x".into())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("metrics.token_file"), "{err}");
    assert!(Config::load(Some(&path), no_env).is_ok());
}

#[test]
fn a_missing_or_empty_secret_file_stops_loading_naming_the_key_not_the_contents() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (file, why) in [
        (dir.path().join("missing"), "cannot read"),
        (empty, "is empty"),
    ] {
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\napi_key_file = {:?}\n",
                file.display().to_string()
            ),
        )
        .unwrap();
        let err = Config::load(Some(&path), no_env).unwrap_err().to_string();
        assert!(
            err.contains("`server.api_key_file`") && err.contains(why),
            "{err}"
        );
    }
}

#[test]
fn a_client_certificate_needs_its_key_and_the_reverse() {
    for kind in ["remote_write", "pushgateway"] {
        for (line, key) in [
            ("tls_cert_file = \"/c.pem\"", "tls_key_file"),
            ("tls_key_file = \"/k.pem\"", "tls_cert_file"),
        ] {
            let text = format!("[[{kind}]]\nurl = \"https://x/\"\n{line}\n");
            let err = Config::parse(&text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("`{kind}[0].{key}`")), "{err}");
        }
        let text = format!(
            "[[{kind}]]\nurl = \"https://x/\"\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\ninsecure_skip_verify = true\n"
        );
        Config::parse(&text).unwrap().validate().unwrap();
    }
}

#[test]
fn connection_limits_must_be_positive() {
    for (line, key) in [
        ("max_connections = 0", "server.max_connections"),
        ("header_read_timeout = \"0s\"", "server.header_read_timeout"),
        ("idle_timeout = \"0s\"", "server.idle_timeout"),
    ] {
        let err = Config::parse(&format!("[server]\n{line}\n"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{err}");
    }
    let c = Config::parse("[server]\nheader_read_timeout = \"1m30s\"\n").unwrap();
    assert_eq!(c.server.header_read_timeout.0, Duration::from_secs(90));
}

#[test]
fn a_destination_without_more_than_its_url_gets_the_documented_defaults() {
    let c = Config::parse(
        "[[remote_write]]\nurl = \"http://r/api/v1/write\"\n\
         [[pushgateway]]\nurl = \"http://g:9091\"\n",
    )
    .unwrap();
    let rw = &c.remote_write[0];
    assert_eq!(
        rw.destination.url.as_url().as_str(),
        "http://r/api/v1/write"
    );
    assert_eq!(rw.destination.interval.0, Duration::from_secs(15));
    assert_eq!(rw.destination.timeout.0, Duration::from_secs(10));
    assert_eq!(rw.jitter.0, Duration::ZERO);
    assert_eq!(rw.max_queue_bytes.0, 256 << 20);
    assert_eq!(rw.max_series_per_request, 2000);
    assert_eq!(rw.min_backoff.0, Duration::from_millis(100));
    assert_eq!(rw.max_backoff.0, Duration::from_secs(30));
    assert!(rw.retry_on_429);
    assert_eq!(rw.histograms, HistogramMode::Classic);
    assert!(!rw.send_exemplars);
    assert_eq!(rw.protocol, RemoteWriteProtocol::V1);
    let pg = &c.pushgateway[0];
    assert_eq!(pg.destination.interval.0, Duration::from_secs(15));
    assert_eq!(pg.job, "codex-proxy");
    assert_eq!(pg.method, PushMethod::Put);
    assert!(!pg.gzip && !pg.delete_on_shutdown);
}

#[test]
fn unknown_key_is_named() {
    let err = parse_err("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
    assert!(err.contains("`server.lisen`"), "{err}");
    let err = parse_err("[sever]\n");
    assert!(err.contains("`sever`"), "{err}");
}

#[test]
fn unknown_key_in_a_destination_is_named_though_its_shared_keys_are_flattened() {
    for kind in ["remote_write", "pushgateway"] {
        let err = parse_err(&format!("[[{kind}]]\nurl = \"http://x/\"\nbogus = 1\n"));
        assert!(err.contains(&format!("`{kind}[0].bogus`")), "{err}");
    }
    // A key of the other kind is unknown here.
    let err = parse_err("[[remote_write]]\nurl = \"http://x/\"\njob = \"j\"\n");
    assert!(err.contains("`remote_write[0].job`"), "{err}");
    // Inside a shared key's own table.
    let err = parse_err(
        "[[pushgateway]]\nurl = \"http://x/\"\n\
         basic_auth = { username = \"u\", password_file = \"p\", pasword = \"x\" }\n",
    );
    assert!(err.contains("`pushgateway[0].basic_auth.pasword`"), "{err}");
}

#[test]
fn bad_duration_names_the_nested_key() {
    let err = parse_err("[[remote_write]]\nurl = \"http://x/\"\ninterval = \"15 parsecs\"\n");
    assert!(err.contains("remote_write[0].interval"), "{err}");
}

#[test]
fn type_errors_in_shared_and_own_destination_keys_name_the_key() {
    let cases = [
        // Shared keys (flattened).
        ("pushgateway", "timeout = \"soon\"", "timeout"),
        ("pushgateway", "headers = 3", "headers"),
        ("remote_write", "tls_ca_file = 3", "tls_ca_file"),
        ("remote_write", "url = \"ftp://x\"", "url"),
        (
            "remote_write",
            "basic_auth = { username = \"u\" }",
            "basic_auth",
        ),
        // The kinds' own keys.
        (
            "remote_write",
            "max_queue_bytes = \"lots\"",
            "max_queue_bytes",
        ),
        ("pushgateway", "method = \"patch\"", "method"),
        ("remote_write", "protocol = \"v3\"", "protocol"),
        ("remote_write", "histograms = \"sparse\"", "histograms"),
        ("remote_write", "send_exemplars = \"yes\"", "send_exemplars"),
    ];
    for (kind, line, key) in cases {
        let url = if line.starts_with("url") {
            ""
        } else {
            "url = \"http://x/\"\n"
        };
        // The second section makes sure the index is the failing one's.
        let text = format!("[[{kind}]]\nurl = \"http://ok/\"\n[[{kind}]]\n{url}{line}\n");
        let err = parse_err(&text);
        assert!(err.contains(&format!("`{kind}[1].{key}`")), "{text}\n{err}");
    }
}

#[test]
fn a_destination_without_url_is_named_at_its_section() {
    let err = parse_err("[[pushgateway]]\njob = \"j\"\n");
    assert!(err.contains("`pushgateway[0]`"), "{err}");
    assert!(err.contains("url"), "{err}");
}

#[test]
fn bad_address_names_the_key() {
    let err = parse_err("[server]\nlisten = \"nowhere\"\n");
    assert!(err.contains("server.listen"), "{err}");
}

#[test]
fn secrets_are_masked_in_rendered_config() {
    let mut c = Config::load(None, no_env).unwrap();
    c.metrics.token = "hunter2".into();
    c.server.api_key = "sk-live".into();
    let out = c.to_masked_toml();
    assert!(
        !out.contains("hunter2") && !out.contains("sk-live"),
        "{out}"
    );
    assert!(out.contains("***"));
}

#[test]
fn a_password_in_a_destination_url_is_masked_when_shown() {
    let c = Config::parse(
        "[[remote_write]]\nurl = \"https://team:s3cret@mimir.example/api/v1/push\"\n",
    )
    .unwrap();
    let out = c.to_masked_toml();
    assert!(!out.contains("s3cret"), "{out}");
    assert!(
        out.contains("https://team:***@mimir.example/api/v1/push"),
        "{out}"
    );
    assert!(!format!("{c:?}").contains("s3cret"));
    // Only what is shown is masked: the destination still sends the real credentials.
    assert_eq!(
        c.remote_write[0].destination.url.as_url().password(),
        Some("s3cret")
    );
}

#[test]
fn the_rendered_config_keeps_destination_keys_flat_and_reads_back() {
    let text = "[[remote_write]]\nname = \"m\"\nurl = \"https://m/api/v1/push\"\n\
                headers = { X-Scope-OrgID = \"a\" }\nbasic_auth = { username = \"u\", password_file = \"/p\" }\n\
                queue_dir = \"/q\"\n\
                [[pushgateway]]\nurl = \"http://g:9091/prefix/\"\ncron = \"*/5 * * * * *\"\ngzip = true\n";
    let c = Config::parse(text).unwrap();
    let out = c.to_masked_toml();
    let again = Config::parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(again.to_masked_toml(), out);
    let doc: toml::Table = out.parse().unwrap();
    let rw = doc["remote_write"][0].as_table().unwrap();
    assert_eq!(rw["url"].as_str(), Some("https://m/api/v1/push"));
    assert_eq!(rw["max_queue_bytes"].as_str(), Some("256MiB"));
    assert!(rw.get("destination").is_none(), "{out}");
    let pg = doc["pushgateway"][0].as_table().unwrap();
    assert_eq!(pg["cron"].as_str(), Some("*/5 * * * * *"));
}

#[test]
fn streams_on_full_is_queue_or_reject_from_the_file_or_the_environment() {
    let c = Config::parse("[streams]\non_full = \"reject\"\n").unwrap();
    assert_eq!(c.streams.on_full, OnFull::Reject);
    let e = parse_err("[streams]\non_full = \"drop\"\n");
    assert!(e.contains("streams.on_full"), "{e}");
    let c = Config::load(None, |k| {
        (k == "PROXY_SSE_ON_FULL").then(|| "reject".into())
    })
    .unwrap();
    assert_eq!(c.streams.on_full, OnFull::Reject);
    let e = Config::load(None, |k| (k == "PROXY_SSE_ON_FULL").then(|| "wait".into()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("PROXY_SSE_ON_FULL") && e.contains("queue or reject"),
        "{e}"
    );
}

#[test]
fn named_keys_are_checked_by_key() {
    let check = |text: &str| -> String {
        match Config::parse(text).and_then(|c| c.validate()) {
            Ok(()) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let both = "[[server.api_keys]]\nname = \"a\"\nkey = \"k\"\nkey_file = \"/f\"\n";
    assert!(
        check(both).contains("`server.api_keys[0].key_file`"),
        "{}",
        check(both)
    );
    let neither = "[[server.api_keys]]\nname = \"a\"\n";
    assert!(check(neither).contains("`server.api_keys[0].key`"));
    let twice = "[[server.api_keys]]\nname = \"a\"\nkey = \"k\"\n[[server.api_keys]]\nname = \"a\"\nkey = \"j\"\n";
    assert!(check(twice).contains("`server.api_keys[1].name`"));
    for bad in ["none", "", "a b", "ä"] {
        let text = format!("[[server.api_keys]]\nname = {bad:?}\nkey = \"k\"\n");
        assert!(
            check(&text).contains("`server.api_keys[0].name`"),
            "{bad:?}"
        );
    }
    let taken = "[server]\napi_key = \"x\"\n[[server.api_keys]]\nname = \"default\"\nkey = \"k\"\n";
    assert!(check(taken).contains("`server.api_keys[0].name`"));
    let ok = "[server]\napi_key = \"x\"\n[[server.api_keys]]\nname = \"team-a\"\nkey = \"k\"\n";
    assert_eq!(check(ok), "");
    let c = Config::parse(ok).unwrap();
    assert_eq!(c.key_names(), ["default", "team-a"]);
    assert!(!c.to_masked_toml().contains("\"k\""));
    assert!(Config::default().key_names().is_empty());
}

#[test]
fn a_negative_or_non_numeric_price_is_refused_naming_its_key() {
    let base = "[pricing.\"gpt-5\"]\ninput = 1.25\ncached_input = 0.125\noutput = 10.0\n";
    let c = Config::parse(base).unwrap();
    c.validate().unwrap();
    let negative = format!("{base}reasoning_output = -1.0\n");
    let err = Config::parse(&negative)
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`pricing.\"gpt-5\".reasoning_output`"),
        "{err}"
    );
    let err = Config::parse(&base.replace("1.25", "\"cheap\""))
        .unwrap_err()
        .to_string();
    assert!(err.contains("pricing.gpt-5.input"), "{err}");
    let err = Config::parse(&base.replace("output = 10.0", "output = nan"))
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(err.contains("`pricing.\"gpt-5\".output`"), "{err}");
    let err = Config::parse("[pricing.m]\ninput = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("pricing.m"), "{err}");
}
