//! Reading the proxy's own `/metrics` in tests: the text format's samples, summed over
//! the series that carry given labels.

use std::collections::BTreeMap;

use super::{http, Proxy};

/// One sample: name, labels, value.
pub type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of a text-format body (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    // The proxy's label values hold no `",` sequence, so this split is exact.
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label pair");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            (name, labels, value)
        })
        .collect()
}

/// The body of `GET /metrics` from loopback (admitted by default).
pub async fn text(proxy: &Proxy) -> String {
    let response = http()
        .get(proxy.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "is [metrics] enabled?");
    response.text().await.expect("/metrics body")
}

/// The samples of `GET /metrics` from loopback.
pub async fn scrape(proxy: &Proxy) -> Vec<Sample> {
    parse(&text(proxy).await)
}

/// The samples of `name` carrying every pair of `labels`.
fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> {
    samples.iter().filter(move |(n, l, _)| {
        n == name
            && labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
    })
}

/// The sum of `name` over the series carrying every pair of `labels`.
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    matching(samples, name, labels).map(|(_, _, v)| v).sum()
}

/// How many series of `name` carry every pair of `labels`.
pub fn count(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> usize {
    matching(samples, name, labels).count()
}
