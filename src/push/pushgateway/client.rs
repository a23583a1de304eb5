//! One request to one group of a Pushgateway: PUT/POST a body, or DELETE the group.

use std::io::Write;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};

use crate::config::HttpUrl;
use crate::config::{HistogramMode, PushMethod};
use crate::exposition::snapshot::Snapshot;
use crate::exposition::{encode, protobuf};
use crate::push::http::{error_body, error_chain, HttpClient, ERROR_BODY_LIMIT, USER_AGENT};

use super::group::{render, render_protobuf, GroupingKey};
use super::PushgatewayError;

/// The headers of every request; configured headers never override them.
pub fn protocol_headers(gzip: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(encode::CONTENT_TYPE),
    );
    h.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h
}

/// One Pushgateway and one group on it.
pub struct Pushgateway {
    /// Built with [`protocol_headers`] of the same `gzip`.
    transport: HttpClient,
    url: Url,
    key: GroupingKey,
    gzip: bool,
    /// Bodies in the delimited protobuf format rather than text.
    protobuf: bool,
}

/// The URL stays out of `Debug`: it may carry credentials.
impl std::fmt::Debug for Pushgateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pushgateway")
            .field("key", &self.key)
            .field("gzip", &self.gzip)
            .field("protobuf", &self.protobuf)
            .finish_non_exhaustive()
    }
}

impl Pushgateway {
    /// `base` is the gateway's address (`http://host:9091`, or with a route prefix; the
    /// group's path follows the prefix); `transport` must carry
    /// [`protocol_headers(gzip)`](protocol_headers).
    pub fn new(transport: HttpClient, base: &HttpUrl, key: GroupingKey, gzip: bool) -> Pushgateway {
        let base = base.as_url();
        let mut url = base.clone();
        url.set_path(&format!(
            "{}{}",
            base.path().trim_end_matches('/'),
            key.path()
        ));
        Pushgateway {
            transport,
            url,
            key,
            gzip,
            protobuf: false,
        }
    }

    /// With `native` or `both`, pushes the delimited protobuf format (classic and native
    /// buckets, exemplars) instead of text.
    pub fn with_histograms(mut self, mode: HistogramMode) -> Pushgateway {
        self.protobuf = mode != HistogramMode::Classic;
        self
    }

    /// The body of a push of `snapshot`, in this gateway's format.
    pub(crate) fn render(&self, snapshot: &Snapshot) -> Result<Vec<u8>, PushgatewayError> {
        if self.protobuf {
            render_protobuf(snapshot, &self.key)
        } else {
            render(snapshot, &self.key).map(String::into_bytes)
        }
    }

    /// Renders and sends `snapshot`: PUT replaces the group, POST only the families sent.
    pub async fn push(
        &self,
        method: PushMethod,
        snapshot: &Snapshot,
    ) -> Result<(), PushgatewayError> {
        let body = self.render(snapshot)?;
        self.send_body(method, &body).await
    }

    /// Sends an already rendered body (the final push retries the same one).
    pub(crate) async fn send_body(
        &self,
        method: PushMethod,
        body: &[u8],
    ) -> Result<(), PushgatewayError> {
        let method = match method {
            PushMethod::Put => Method::PUT,
            PushMethod::Post => Method::POST,
        };
        let body = if self.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(body)
                .and_then(|()| gz.finish())
                .map_err(|e| PushgatewayError::Render(format!("gzip: {e}")))?
        } else {
            body.to_vec()
        };
        let request = self.request(method)?.body(body);
        if !self.protobuf {
            return answer(request.send().await).await;
        }
        // The transport's Content-Type is the text format's: replaced, not added beside.
        let (client, request) = request.build_split();
        let mut request = request.map_err(transport_error)?;
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(protobuf::CONTENT_TYPE),
        );
        answer(client.execute(request).await).await
    }

    /// Deletes the whole group (the gateway answers 202).
    pub async fn delete(&self) -> Result<(), PushgatewayError> {
        answer(self.request(Method::DELETE)?.send().await).await
    }

    fn request(&self, method: Method) -> Result<reqwest::RequestBuilder, PushgatewayError> {
        self.transport
            .request(method, self.url.clone())
            .map_err(|e| PushgatewayError::Credentials(e.to_string()))
    }
}

/// 200 and 202 are success; anything else is an error carrying the gateway's message.
async fn answer(
    response: Result<reqwest::Response, reqwest::Error>,
) -> Result<(), PushgatewayError> {
    let response = response.map_err(transport_error)?;
    let status = response.status();
    if status == StatusCode::OK || status == StatusCode::ACCEPTED {
        return Ok(());
    }
    Err(PushgatewayError::Rejected {
        status: status.as_u16(),
        message: error_body(response, ERROR_BODY_LIMIT).await,
    })
}

fn transport_error(e: reqwest::Error) -> PushgatewayError {
    if e.is_timeout() {
        PushgatewayError::Timeout
    } else {
        PushgatewayError::Network(error_chain(e))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::push::http::HttpSettings;

    fn transport(gzip: bool) -> HttpClient {
        let headers = BTreeMap::from([
            ("Content-Type".to_string(), "application/json".to_string()),
            ("X-Team".to_string(), "a".to_string()),
        ]);
        let settings = HttpSettings {
            timeout: Duration::from_secs(1),
            headers: &headers,
            bearer_token_file: None,
            basic_auth: None,
            tls_ca_file: None,
        };
        HttpClient::new(&settings, protocol_headers(gzip)).unwrap()
    }

    fn key() -> GroupingKey {
        GroupingKey::new("j", BTreeMap::new()).unwrap()
    }

    fn base(url: &str) -> HttpUrl {
        url.parse().unwrap()
    }

    #[test]
    fn url_keeps_a_route_prefix_and_refuses_other_schemes() {
        let pg = Pushgateway::new(transport(false), &base("http://h:9091/pgw/"), key(), false);
        assert_eq!(pg.url.as_str(), "http://h:9091/pgw/metrics/job/j");
        assert!("ftp://h".parse::<HttpUrl>().is_err());
    }

    #[test]
    fn a_parsed_base_gets_the_same_group_url_as_the_joined_text() {
        let key = GroupingKey::new(
            "job/with/slash",
            BTreeMap::from([("name".to_string(), "Προ μ?#%".to_string())]),
        )
        .unwrap();
        for text in ["http://h:9091", "http://h:9091/pgw/", "https://u:p@h/a//"] {
            let joined = format!("{}{}", text.trim_end_matches('/'), key.path());
            let pg = Pushgateway::new(transport(false), &base(text), key.clone(), false);
            assert_eq!(pg.url, Url::parse(&joined).unwrap(), "{text}");
        }
    }

    #[test]
    fn requests_carry_the_exact_content_type_whatever_is_configured() {
        let pg = Pushgateway::new(transport(true), &base("http://h:9091"), key(), true);
        let request = pg.request(Method::PUT).unwrap().build().unwrap();
        let h = request.headers();
        assert_eq!(h.get_all(header::CONTENT_TYPE).iter().count(), 1);
        assert_eq!(h[header::CONTENT_TYPE], encode::CONTENT_TYPE);
        assert_eq!(h[header::CONTENT_ENCODING], "gzip");
        assert_eq!(h["x-team"], "a");
        assert!(h[header::USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("codex-proxy/"));
    }
}
