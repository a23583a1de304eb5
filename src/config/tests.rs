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
    assert!(c.metrics.allow_loopback);
    assert!(!c.metrics.enabled);
    assert!(c.worker.command.is_empty(), "the demo worker runs");
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
