//! Remote-write over HTTPS to a real Prometheus that requires a client certificate
//! (`--web.config.file`, `client_auth_type: RequireAndVerifyClientCert`), with a CA, a
//! server and a client certificate made for the test by the `openssl` command: refused
//! without the client certificate (or without trusting the CA), delivered with it; and
//! trusted through the system's store (`SSL_CERT_FILE`) without `tls_ca_file`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::{make_pki, Pki};
use common::{free_port, require_binary, wait_until, Proc, Proxy};

const DEADLINE: Duration = Duration::from_secs(60);

/// An HTTPS client that trusts the test CA and presents the client certificate.
fn client(pki: &Pki) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let mut pem = std::fs::read(&pki.client_cert).unwrap();
    pem.extend(std::fs::read(&pki.client_key).unwrap());
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Prometheus on HTTPS, requiring a client certificate signed by the test CA.
async fn start_tls_prometheus(dir: &Path, pki: &Pki) -> Option<(Proc, String)> {
    let bin = require_binary("prometheus")?;
    let port = free_port();
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        ),
    )
    .unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1s\n").unwrap();
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--web.config.file={}", web.display()))
        .arg("--web.enable-remote-write-receiver")
        .arg("--log.level=warn")
        .current_dir(dir);
    let proc = Proc::spawn(cmd, dir.join("prometheus.log"));
    let base = format!("https://127.0.0.1:{port}");
    let https = client(pki);
    wait_until("Prometheus on HTTPS ready", DEADLINE, || {
        let https = https.clone();
        let url = format!("{base}/-/ready");
        async move {
            let r = https.get(url).send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    Some((proc, base))
}

/// `codex_push_requests_total` of `destination` in the proxy's own `/metrics`, by outcome.
async fn outcomes(proxy: &Proxy, destination: &str) -> Vec<(String, f64)> {
    common::scrape::scrape(proxy)
        .await
        .into_iter()
        .filter(|(name, labels, _)| {
            name == "codex_push_requests_total"
                && labels.get("destination").map(String::as_str) == Some(destination)
        })
        .filter_map(|(_, labels, value)| Some((labels.get("outcome")?.clone(), value)))
        .collect()
}

fn count(outcomes: &[(String, f64)], success: bool) -> f64 {
    outcomes
        .iter()
        .filter(|(o, _)| (o == "success") == success)
        .map(|(_, v)| v)
        .sum()
}

fn destination(name: &str, url: &str, lines: &[String]) -> String {
    format!(
        "[[remote_write]]\nname = \"{name}\"\nurl = \"{url}\"\ninterval = \"300ms\"\nmin_backoff = \"100ms\"\nmax_backoff = \"300ms\"\n{}\n",
        lines.join("\n")
    )
}

#[tokio::test]
async fn mtls_remote_write_is_refused_without_the_client_certificate_and_delivered_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let Some((_prometheus, base)) = start_tls_prometheus(dir.path(), &pki).await else {
        return;
    };
    let url = format!("{base}/api/v1/write");
    let path = |p: &Path| format!("{:?}", p.display().to_string());
    let ca = format!("tls_ca_file = {}", path(&pki.ca));
    let cert = format!("tls_cert_file = {}", path(&pki.client_cert));
    let key = format!("tls_key_file = {}", path(&pki.client_key));
    let config = [
        destination("mtls", &url, &[ca.clone(), cert.clone(), key.clone()]),
        destination("no-client-cert", &url, std::slice::from_ref(&ca)),
        destination("untrusted-ca", &url, &[cert.clone(), key.clone()]),
    ]
    .concat();
    let proxy = Proxy::start(&config, &[("SSL_CERT_FILE", "/nonexistent/ca.pem")]).await;
    proxy.wait_ready().await;

    wait_until(
        "a delivery with the client certificate",
        DEADLINE,
        || async { (count(&outcomes(&proxy, "mtls").await, true) >= 1.0).then_some(()) },
    )
    .await;
    for refused in ["no-client-cert", "untrusted-ca"] {
        let seen = wait_until(&format!("{refused} to fail"), DEADLINE, || async {
            let o = outcomes(&proxy, refused).await;
            (count(&o, false) >= 2.0).then_some(o)
        })
        .await;
        assert_eq!(count(&seen, true), 0.0, "{refused}: {seen:?}");
    }
    // The series are in Prometheus, read back over the same mTLS.
    let https = client(&pki);
    let query = format!("{base}/api/v1/query");
    let result = wait_until("the pushed series in Prometheus", DEADLINE, || {
        let https = https.clone();
        let query = query.clone();
        async move {
            let body: serde_json::Value = https
                .get(query)
                .query(&[("query", "codex_worker_ready{job=\"codex-proxy\"}")])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let result = body["data"]["result"].clone();
            result
                .as_array()
                .is_some_and(|a| !a.is_empty())
                .then_some(result)
        }
    })
    .await;
    assert_eq!(result[0]["value"][1], "1", "{result}");

    // Without tls_ca_file, the system's store decides: here SSL_CERT_FILE names the test CA.
    let system = destination("system-roots", &url, &[cert, key]);
    let trusting = Proxy::start(&system, &[("SSL_CERT_FILE", pki.ca.to_str().unwrap())]).await;
    wait_until(
        "a delivery trusted through the system's store",
        DEADLINE,
        || async { (count(&outcomes(&trusting, "system-roots").await, true) >= 1.0).then_some(()) },
    )
    .await;
}
