//! `[server.tls]` on the proxy's own port, with certificates made by `openssl` and the
//! real `curl` as the client: 200 with the CA and the client certificate, refused without
//! the certificate when `client_auth = "require"`, plain HTTP refused on the TLS port; a
//! renewed certificate is served to new connections without a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::pki::{make_pki, Pki};
use common::{free_port, require_binary, wait_until, Proc, PROXY_BIN};

const DEADLINE: Duration = Duration::from_secs(30);

fn tls_config(pki: &Pki, client_auth: &str) -> String {
    format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = \"{client_auth}\"\n",
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    )
}

/// `codex-proxy serve` on a free port with `config`.
fn start(dir: &Path, config: &str) -> (Proc, u16) {
    let port = free_port();
    let path = dir.join("codex-proxy.toml");
    std::fs::write(&path, config).unwrap();
    let mut cmd = Command::new(PROXY_BIN);
    cmd.arg("serve").arg("--config").arg(&path);
    cmd.env("PROXY_LISTEN", format!("127.0.0.1:{port}"));
    cmd.env("RUST_LOG", "debug");
    (Proc::spawn(cmd, dir.join("proxy.log")), port)
}

/// curl's answer: `-w %{http_code}` on stdout; exit status 0 only when a response came.
fn curl(url: &str, args: &[&str]) -> Output {
    Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl")
}

fn with_cert(pki: &Pki) -> [&str; 6] {
    [
        "--cacert",
        pki.ca.to_str().unwrap(),
        "--cert",
        pki.client_cert.to_str().unwrap(),
        "--key",
        pki.client_key.to_str().unwrap(),
    ]
}

async fn wait_https(port: u16, args: &[&str]) {
    let url = format!("https://127.0.0.1:{port}/livez");
    wait_until("the proxy answers over TLS", DEADLINE, || {
        let out = curl(&url, args);
        async move { (out.status.success() && out.stdout == b"200").then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn with_client_auth_required_only_a_client_certificate_over_tls_gets_in() {
    if require_binary("openssl").is_none() || require_binary("curl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (proxy, port) = start(dir.path(), &tls_config(&pki, "require"));
    wait_https(port, &with_cert(&pki)).await;

    let url = format!("https://127.0.0.1:{port}/livez");
    // TLS 1.2 is enough; TLS 1.1 is not offered.
    let mut tls12 = with_cert(&pki).to_vec();
    tls12.extend(["--tlsv1.2", "--tls-max", "1.2"]);
    let out = curl(&url, &tls12);
    assert_eq!(
        out.stdout,
        b"200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = curl(
        &url,
        &[
            "--cacert",
            pki.ca.to_str().unwrap(),
            "--tlsv1.1",
            "--tls-max",
            "1.1",
        ],
    );
    assert!(!out.status.success(), "TLS 1.1 admitted");

    // Without the client certificate: the handshake fails, no HTTP answer at all.
    let out = curl(&url, &["--cacert", pki.ca.to_str().unwrap()]);
    assert!(
        !out.status.success(),
        "admitted without a client certificate"
    );
    assert_eq!(out.stdout, b"000");

    // Plain HTTP on the TLS port: closed without an HTTP answer.
    let out = curl(&format!("http://127.0.0.1:{port}/livez"), &[]);
    assert!(!out.status.success(), "plain HTTP answered");
    assert_eq!(out.stdout, b"000");

    // The proxy is still serving after all that.
    let out = curl(&url, &with_cert(&pki));
    assert_eq!(out.stdout, b"200", "{}", proxy.logs());
}

#[tokio::test]
async fn with_client_auth_request_a_client_without_a_certificate_is_admitted() {
    if require_binary("openssl").is_none() || require_binary("curl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let (_proxy, port) = start(dir.path(), &tls_config(&pki, "request"));
    wait_https(port, &["--cacert", pki.ca.to_str().unwrap()]).await;
    let out = curl(&format!("https://127.0.0.1:{port}/livez"), &with_cert(&pki));
    assert_eq!(out.stdout, b"200");
}

#[tokio::test]
async fn a_renewed_certificate_is_served_to_new_connections_without_a_restart() {
    if require_binary("openssl").is_none() || require_binary("curl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let old = make_pki(dir.path());
    let (proxy, port) = start(dir.path(), &tls_config(&old, "none"));
    wait_https(port, &["--cacert", old.ca.to_str().unwrap()]).await;

    // A new CA and server certificate, written over the configured files.
    let renewed = tempfile::tempdir().unwrap();
    let new = make_pki(renewed.path());
    for (from, to) in [
        (&new.server_key, &old.server_key),
        (&new.server_cert, &old.server_cert),
    ] {
        let tmp = to.with_extension("tmp");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
    wait_https(port, &["--cacert", new.ca.to_str().unwrap()]).await;
    let out = curl(
        &format!("https://127.0.0.1:{port}/livez"),
        &["--cacert", old.ca.to_str().unwrap()],
    );
    assert!(!out.status.success(), "still the old certificate");
    assert!(
        proxy.logs().contains("server.tls files changed"),
        "{}",
        proxy.logs()
    );
}

#[test]
fn a_missing_or_mismatched_tls_file_is_a_config_error_naming_its_key() {
    if require_binary("openssl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let check = |config: String| {
        let path = dir.path().join("check.toml");
        std::fs::write(&path, config).unwrap();
        Command::new(PROXY_BIN)
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check(tls_config(&pki, "require"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = check(tls_config(&pki, "none").replace("server.key", "nonexistent.key"));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.tls.key_file"));
    // The client's key does not fit the server's certificate.
    let out = check(tls_config(&pki, "none").replace("server.key", "client.key"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.tls.key_file") && !err.contains("PRIVATE KEY"),
        "{err}"
    );
    let out = check(
        "[server.tls]\ncert_file = \"a\"\nkey_file = \"b\"\nclient_auth = \"require\"\n".into(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.tls.client_ca_file"));
}
