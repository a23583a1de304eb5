//! `codex-proxy healthcheck`: exit 0 when `/readyz` answers 200, for container health
//! checks in images without curl.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;

use crate::push::http::{error_chain, HttpClient, HttpSettings};

/// `/readyz` of a server listening on `listen`; an unspecified address (`0.0.0.0`, `::`)
/// is asked on loopback, where it answers too.
pub fn readyz_url(listen: SocketAddr) -> String {
    local_url(listen, false, "/readyz")
}

/// `path` on a server listening on `listen` (loopback for an unspecified address), over
/// https when `tls`.
pub fn local_url(listen: SocketAddr, tls: bool, path: &str) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}{path}", SocketAddr::new(ip, listen.port()))
}

/// GETs `url`: exit 0 on 200, 1 on any other answer or none within `timeout`, 2 when the
/// URL is not one. One line on stderr says which.
pub fn healthcheck(url: &str, timeout: Duration) -> ExitCode {
    let url = match url.parse::<crate::config::HttpUrl>() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("codex-proxy healthcheck: --url: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("codex-proxy healthcheck: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let status = runtime.block_on(async {
        let settings = HttpSettings {
            timeout,
            headers: &BTreeMap::new(),
            bearer_token_file: None,
            basic_auth: None,
            tls_ca_file: None,
        };
        let client = HttpClient::new(&settings, HeaderMap::new()).map_err(|e| e.to_string())?;
        let response = client
            .request(Method::GET, url.as_url().clone())
            .map_err(|e| e.to_string())?
            .send()
            .await
            .map_err(error_chain)?;
        Ok::<_, String>(response.status())
    });
    match status {
        Ok(s) if s == reqwest::StatusCode::OK => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("codex-proxy healthcheck: not ready ({s})");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("codex-proxy healthcheck: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unspecified_listen_address_is_asked_on_loopback() {
        let url = |listen: &str| readyz_url(listen.parse().unwrap());
        assert_eq!(url("0.0.0.0:11435"), "http://127.0.0.1:11435/readyz");
        assert_eq!(url("[::]:8080"), "http://[::1]:8080/readyz");
        assert_eq!(url("10.0.0.5:80"), "http://10.0.0.5:80/readyz");
    }
}
