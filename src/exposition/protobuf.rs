//! The protobuf scrape format: varint-length-delimited `io.prometheus.client.MetricFamily`
//! messages (`proto/metrics.proto`), what Prometheus asks for first when its native
//! histograms are on. It is the only scrape format that carries native histograms: each
//! histogram metric holds its classic buckets (with their exemplars), and its native ones.

use prost::Message;

use super::snapshot::{Exemplar, Family, Kind, NativeHistogram, Snapshot};

/// The prost types of `proto/metrics.proto`.
pub(crate) mod proto {
    #![allow(
        missing_docs,
        clippy::doc_markdown,
        unused_qualifications,
        unreachable_pub
    )]
    include!(concat!(env!("OUT_DIR"), "/io.prometheus.client.rs"));
}

/// `Content-Type` of what [`encode`] writes.
pub(crate) const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Appends `snapshot` to `out`: one length-delimited `MetricFamily` per family name.
pub(crate) fn encode(snapshot: &Snapshot, out: &mut Vec<u8>) {
    encode_families(&snapshot.families, out);
}

/// Appends `families` (sorted by name) to `out`, as [`encode`] does a snapshot's.
pub(crate) fn encode_families<'a>(
    families: impl IntoIterator<Item = &'a Family>,
    out: &mut Vec<u8>,
) {
    let mut current: Option<proto::MetricFamily> = None;
    for family in families {
        if current.as_ref().is_some_and(|mf| mf.name() != family.name) {
            if let Some(mf) = current.take() {
                put(&mf, out);
            }
        }
        let mf = current.get_or_insert_with(|| proto::MetricFamily {
            name: Some(family.name.clone()),
            help: Some(family.help.clone()),
            r#type: Some(metric_type(family.kind) as i32),
            metric: Vec::new(),
        });
        for (m, (labels, values)) in family.metrics().enumerate() {
            mf.metric.push(metric(family, m, labels, values));
        }
    }
    if let Some(mf) = current {
        put(&mf, out);
    }
}

fn put(mf: &proto::MetricFamily, out: &mut Vec<u8>) {
    // Writing into a Vec cannot run out of room.
    let _ = mf.encode_length_delimited(out);
}

fn metric_type(kind: Kind) -> proto::MetricType {
    match kind {
        Kind::Counter => proto::MetricType::Counter,
        Kind::Gauge => proto::MetricType::Gauge,
        Kind::Histogram => proto::MetricType::Histogram,
        Kind::Summary => proto::MetricType::Summary,
        Kind::Untyped => proto::MetricType::Untyped,
    }
}

fn metric(
    family: &Family,
    m: usize,
    labels: &[(Box<str>, Box<str>)],
    values: &[f64],
) -> proto::Metric {
    let mut out = proto::Metric {
        label: labels
            .iter()
            .map(|(n, v)| proto::LabelPair {
                name: Some(n.to_string()),
                value: Some(v.to_string()),
            })
            .collect(),
        ..Default::default()
    };
    let n = family.bounds.len();
    match family.kind {
        Kind::Counter => {
            out.counter = Some(proto::Counter {
                value: Some(values[0]),
                exemplar: None,
            })
        }
        Kind::Gauge => {
            out.gauge = Some(proto::Gauge {
                value: Some(values[0]),
            })
        }
        Kind::Untyped => {
            out.untyped = Some(proto::Untyped {
                value: Some(values[0]),
            })
        }
        Kind::Summary => {
            out.summary = Some(proto::Summary {
                sample_count: Some(values[n + 1] as u64),
                sample_sum: Some(values[n]),
                quantile: family
                    .bounds
                    .iter()
                    .zip(values)
                    .map(|(&q, &v)| proto::Quantile {
                        quantile: Some(q),
                        value: Some(v),
                    })
                    .collect(),
            })
        }
        Kind::Histogram => {
            let exemplar = |i: usize| {
                family
                    .exemplars
                    .get(m * (n + 1) + i)
                    .and_then(Option::as_ref)
                    .map(exemplar)
            };
            let mut bucket: Vec<proto::Bucket> = family
                .bounds
                .iter()
                .zip(values)
                .enumerate()
                .map(|(i, (&bound, &count))| proto::Bucket {
                    cumulative_count: Some(count as u64),
                    upper_bound: Some(bound),
                    exemplar: exemplar(i),
                })
                .collect();
            // The +Inf bucket is implied by the count, but an exemplar needs it.
            if let Some(e) = exemplar(n) {
                bucket.push(proto::Bucket {
                    cumulative_count: Some(values[n + 1] as u64),
                    upper_bound: Some(f64::INFINITY),
                    exemplar: Some(e),
                });
            }
            let mut h = proto::Histogram {
                sample_count: Some(values[n + 1] as u64),
                sample_sum: Some(values[n]),
                bucket,
                ..Default::default()
            };
            if let Some(native) = family.native.get(m) {
                set_native(&mut h, native);
            }
            out.histogram = Some(h);
        }
    }
    out
}

fn set_native(h: &mut proto::Histogram, native: &NativeHistogram) {
    h.schema = Some(native.schema);
    h.zero_threshold = Some(native.zero_threshold);
    h.zero_count = Some(native.zero_count);
    h.positive_span = native
        .spans
        .iter()
        .map(|&(offset, length)| proto::BucketSpan {
            offset: Some(offset),
            length: Some(length),
        })
        .collect();
    h.positive_delta = native.deltas.clone();
    if h.positive_span.is_empty() && native.zero_count == 0 {
        h.positive_span.push(proto::BucketSpan {
            offset: Some(0),
            length: Some(0),
        });
    }
}

fn exemplar(e: &Exemplar) -> proto::Exemplar {
    proto::Exemplar {
        label: e
            .labels
            .iter()
            .map(|(n, v)| proto::LabelPair {
                name: Some(n.to_string()),
                value: Some(v.clone()),
            })
            .collect(),
        value: Some(e.value),
        timestamp: Some(proto::Timestamp {
            seconds: Some(e.timestamp_ms.div_euclid(1000)),
            nanos: Some((e.timestamp_ms.rem_euclid(1000) * 1_000_000) as i32),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn decode_all(mut bytes: &[u8]) -> Vec<proto::MetricFamily> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            out.push(proto::MetricFamily::decode_length_delimited(&mut bytes).unwrap());
        }
        out
    }

    #[test]
    fn a_histogram_carries_classic_and_native_buckets_and_exemplars() {
        let mut h = Family::new("h_seconds", "H.", Kind::Histogram, Arc::new([0.5]));
        h.push(Arc::new([("a".into(), "x".into())]), &[1.0, 0.8, 2.0]);
        h.push(Arc::new([("a".into(), "y".into())]), &[0.0, 0.0, 0.0]);
        h.native = vec![
            NativeHistogram {
                schema: 3,
                zero_threshold: 1e-9,
                zero_count: 0,
                count: 2,
                sum: 0.8,
                spans: vec![(-8, 1), (2, 1)],
                deltas: vec![1, 0],
            },
            NativeHistogram::default(),
        ];
        let e = Exemplar {
            labels: vec![("request_id", "chatcmpl-1".into())],
            value: 0.6,
            timestamp_ms: 1_700_000_000_250,
        };
        h.exemplars = vec![None, Some(e), None, None];
        let mut c = Family::new("c_total", "C.", Kind::Counter, Arc::new([]));
        c.push(Arc::new([]), &[7.0]);
        let mut out = Vec::new();
        encode(
            &Snapshot {
                families: vec![c, h],
            },
            &mut out,
        );
        let families = decode_all(&out);
        assert_eq!(families.len(), 2);
        assert_eq!(
            families[0].metric[0].counter.as_ref().unwrap().value,
            Some(7.0)
        );
        let hist = families[1].metric[0].histogram.as_ref().unwrap();
        assert_eq!(hist.sample_count, Some(2));
        assert_eq!(hist.schema, Some(3));
        assert_eq!(hist.positive_delta, vec![1, 0]);
        assert_eq!(hist.positive_span[1].offset, Some(2));
        // The +Inf exemplar brings the +Inf bucket.
        assert_eq!(hist.bucket.len(), 2);
        assert_eq!(hist.bucket[1].upper_bound, Some(f64::INFINITY));
        let ex = hist.bucket[1].exemplar.as_ref().unwrap();
        assert_eq!(ex.label[0].value.as_deref(), Some("chatcmpl-1"));
        let ts = ex.timestamp.as_ref().unwrap();
        assert_eq!(
            (ts.seconds, ts.nanos),
            (Some(1_700_000_000), Some(250_000_000))
        );
        // No observations yet: a no-op span marks it native.
        let empty = families[1].metric[1].histogram.as_ref().unwrap();
        assert_eq!(empty.positive_span.len(), 1);
        assert_eq!(empty.positive_span[0].length, Some(0));
        assert_eq!(empty.schema, Some(0));
    }
}
