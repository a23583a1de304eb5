//! A queued 2.0 request, sent again as 1.0 after a fallback (`negotiate.rs`).
//!
//! A compressed 2.0 body holds everything a 1.0 request needs: the body is decoded with
//! the generated types, each series' `labels_refs` are looked up in its symbol table, and
//! the same series with the same samples are encoded as a 1.0 `WriteRequest` (metadata,
//! which 1.0 cannot carry, is left out). This works alike for batches made a moment ago
//! and for those found in the durable queue at start, and the queue itself is never
//! rewritten: a batch is converted when it is about to be sent.

use bytes::Bytes;
use prost::Message;

use super::negotiate::Protocol;
use super::proto::{self, v2};
use super::queue::Batch;

#[derive(Debug, thiserror::Error)]
pub(crate) enum TranscodeError {
    #[error("not snappy block format: {0}")]
    Snappy(#[from] snap::Error),
    #[error("not a remote-write request: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("a label reference points past the symbol table")]
    BadRef,
}

/// The 1.0 request carrying what the 2.0 `batch` carries.
pub(crate) fn to_v1(batch: &Batch) -> Result<Batch, TranscodeError> {
    let request = decode_v2(batch)?;
    let mut timeseries = Vec::with_capacity(request.timeseries.len());
    for series in &request.timeseries {
        let labels = labels(&request.symbols, &series.labels_refs)?;
        let samples = (series.samples.iter())
            .map(|s| proto::Sample {
                value: s.value,
                timestamp: s.timestamp,
            })
            .collect();
        let exemplars = (series.exemplars.iter())
            .map(|e| {
                Ok(proto::Exemplar {
                    labels: self::labels(&request.symbols, &e.labels_refs)?,
                    value: e.value,
                    timestamp: e.timestamp,
                })
            })
            .collect::<Result<Vec<_>, TranscodeError>>()?;
        // The same message in both protocols (`proto/remote_write_v2.proto`): its bytes
        // read as the 1.0 type.
        let histograms = (series.histograms.iter())
            .map(|h| proto::Histogram::decode(h.encode_to_vec().as_slice()))
            .collect::<Result<Vec<_>, _>>()?;
        if !histograms.is_empty() && !exemplars.is_empty() {
            // 1.0 receivers append a series' exemplars before its histograms: they go in
            // an entry of their own, after it, as `histograms.rs` writes 1.0.
            timeseries.push(proto::TimeSeries {
                labels: labels.clone(),
                histograms,
                ..Default::default()
            });
            timeseries.push(proto::TimeSeries {
                labels,
                exemplars,
                ..Default::default()
            });
            continue;
        }
        timeseries.push(proto::TimeSeries {
            labels,
            samples,
            exemplars,
            histograms,
        });
    }
    let body = proto::WriteRequest { timeseries }.encode_to_vec();
    let compressed = snap::raw::Encoder::new().compress_vec(&body)?;
    Ok(Batch {
        body: Bytes::from(compressed),
        protocol: Protocol::V1,
        ..batch.clone()
    })
}

fn decode_v2(batch: &Batch) -> Result<v2::Request, TranscodeError> {
    let raw = snap::raw::Decoder::new().decompress_vec(&batch.body)?;
    Ok(v2::Request::decode(raw.as_slice())?)
}

/// The labels that `refs`, name and value pairs, point to in `symbols`.
fn labels(symbols: &[String], refs: &[u32]) -> Result<Vec<proto::Label>, TranscodeError> {
    let symbol = |r: u32| symbols.get(r as usize).ok_or(TranscodeError::BadRef);
    refs.chunks(2)
        .map(|pair| match *pair {
            [name, value] => Ok(proto::Label {
                name: symbol(name)?.clone(),
                value: symbol(value)?.clone(),
            }),
            _ => Err(TranscodeError::BadRef),
        })
        .collect()
}

/// What a 2.0 request holds, counted as its receiver's `*-Written` headers count.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Contents {
    pub(crate) samples: u64,
    pub(crate) histograms: u64,
    pub(crate) exemplars: u64,
}

/// Counts what the 2.0 `batch` holds (read only when an answer's headers say that less
/// was written than sent, to tell which kind fell short).
pub(crate) fn contents(batch: &Batch) -> Result<Contents, TranscodeError> {
    let mut c = Contents::default();
    for s in decode_v2(batch)?.timeseries {
        c.samples += s.samples.len() as u64;
        c.histograms += s.histograms.len() as u64;
        c.exemplars += s.exemplars.len() as u64;
    }
    Ok(c)
}

/// `batch` without its native histograms, for a receiver that refuses them
/// (`histograms.rs` puts them in requests of their own); `None` when it holds none. The
/// same queued request is converted at each attempt: only requests made before the
/// fallback can hold histograms.
///
/// With `counts` (`histograms = "native"`: the request has no classic series of them), each
/// native series becomes its classic `_count` and `_sum` series, the histogram's count and
/// sum at its timestamp (a stale marker's NaN stays one): those two are exact, while no
/// classic bucket can be told from exponential ones. Without it (`"both"`), the classic
/// series are in the request already, and the native ones just go. An entry left with
/// nothing is left out, and so are the exemplars of a native series (the receiver has no
/// such series).
pub(crate) fn without_histograms(
    batch: &Batch,
    counts: bool,
) -> Result<Option<Batch>, TranscodeError> {
    let raw = snap::raw::Decoder::new().decompress_vec(&batch.body)?;
    let body = match batch.protocol {
        Protocol::V1 => {
            let request = proto::WriteRequest::decode(raw.as_slice())?;
            if request.timeseries.iter().all(|s| s.histograms.is_empty()) {
                return Ok(None);
            }
            let native: Vec<Vec<proto::Label>> = (request.timeseries.iter())
                .filter(|s| !s.histograms.is_empty())
                .map(|s| s.labels.clone())
                .collect();
            let mut timeseries = Vec::with_capacity(request.timeseries.len());
            for s in request.timeseries {
                if s.histograms.is_empty() {
                    if !s.samples.is_empty()
                        || (!s.exemplars.is_empty() && !native.contains(&s.labels))
                    {
                        timeseries.push(s);
                    }
                    continue;
                }
                if !counts {
                    continue;
                }
                for (suffix, value) in COUNT_AND_SUM {
                    let mut labels = s.labels.clone();
                    for l in labels.iter_mut().filter(|l| l.name == "__name__") {
                        l.value.push_str(suffix);
                    }
                    let samples = (s.histograms.iter())
                        .map(|h| proto::Sample {
                            value: value(h.sum, h.count.as_ref().map(count_v1)),
                            timestamp: h.timestamp,
                        })
                        .collect();
                    timeseries.push(proto::TimeSeries {
                        labels,
                        samples,
                        ..Default::default()
                    });
                }
            }
            proto::WriteRequest { timeseries }.encode_to_vec()
        }
        Protocol::V2 => {
            let mut request = v2::Request::decode(raw.as_slice())?;
            if request.timeseries.iter().all(|s| s.histograms.is_empty()) {
                return Ok(None);
            }
            // A native series' exemplars ride with its histogram: they go with it. Symbols
            // no series uses any more may stay.
            let mut timeseries = Vec::with_capacity(request.timeseries.len());
            for s in std::mem::take(&mut request.timeseries) {
                if s.histograms.is_empty() {
                    timeseries.push(s);
                    continue;
                }
                if !counts {
                    continue;
                }
                for (suffix, value) in COUNT_AND_SUM {
                    let mut labels_refs = s.labels_refs.clone();
                    for pair in labels_refs.chunks_mut(2) {
                        let name = request.symbols.get(pair[0] as usize);
                        if let (Some("__name__"), Some(&v)) =
                            (name.map(String::as_str), pair.get(1))
                        {
                            let renamed = format!("{}{suffix}", symbol(&request.symbols, v)?);
                            pair[1] = intern(&mut request.symbols, renamed);
                        }
                    }
                    let samples = (s.histograms.iter())
                        .map(|h| v2::Sample {
                            value: value(h.sum, h.count.as_ref().map(count_v2)),
                            timestamp: h.timestamp,
                        })
                        .collect();
                    timeseries.push(v2::TimeSeries {
                        labels_refs,
                        samples,
                        metadata: s.metadata,
                        ..Default::default()
                    });
                }
            }
            request.timeseries = timeseries;
            request.encode_to_vec()
        }
    };
    let compressed = snap::raw::Encoder::new().compress_vec(&body)?;
    Ok(Some(Batch {
        body: Bytes::from(compressed),
        ..batch.clone()
    }))
}

/// The classic series a native one keeps when refused, and their value from its sum and
/// count (the count of a stale marker is 0: its NaN sum marks both stale).
type Classic = (&'static str, fn(f64, Option<f64>) -> f64);
const COUNT_AND_SUM: [Classic; 2] = [
    ("_count", |sum, count| {
        if sum.is_nan() {
            sum
        } else {
            count.unwrap_or(0.0)
        }
    }),
    ("_sum", |sum, _| sum),
];

fn count_v1(c: &proto::histogram::Count) -> f64 {
    match *c {
        proto::histogram::Count::CountInt(n) => n as f64,
        proto::histogram::Count::CountFloat(f) => f,
    }
}

fn count_v2(c: &v2::histogram::Count) -> f64 {
    match *c {
        v2::histogram::Count::CountInt(n) => n as f64,
        v2::histogram::Count::CountFloat(f) => f,
    }
}

fn symbol(symbols: &[String], r: u32) -> Result<&String, TranscodeError> {
    symbols.get(r as usize).ok_or(TranscodeError::BadRef)
}

/// The index of `s` in `symbols`, added at the end if missing.
fn intern(symbols: &mut Vec<String>, s: String) -> u32 {
    match symbols.iter().position(|x| *x == s) {
        Some(i) => i as u32,
        None => {
            symbols.push(s);
            (symbols.len() - 1) as u32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exposition::snapshot::{Family, Kind};
    use crate::push::remote_write::encode::{decode, encode_label, Body, RequestEncoder};

    #[test]
    fn a_2_0_batch_becomes_the_1_0_batch_of_the_same_series_and_samples() {
        let pairs: [&[(&str, &str)]; 2] = [
            &[("__name__", "up"), ("job", "a")],
            &[("__name__", "x_total"), ("job", "a"), ("path", "/v1")],
        ];
        let values = [1.0, f64::from_bits(super::super::encode::STALE_NAN_BITS)];
        let (mut v1, mut v2) = (RequestEncoder::default(), RequestEncoder::default());
        v2.set_protocol(Protocol::V2);
        v2.describe(&[Family::new("up", "Up.", Kind::Gauge, Vec::new().into())]);
        let (mut b1, mut b2) = (Body::default(), Body::default());
        for (p, v) in pairs.iter().zip(values) {
            let mut labels = Vec::new();
            for (n, val) in p.iter() {
                encode_label(n, val, &mut labels);
            }
            v1.write_series(&mut b1, &labels, v, 1_700_000_000_123);
            v2.write_series(&mut b2, &labels, v, 1_700_000_000_123);
        }
        let want = v1.compress_body(&b1, 2, 1_700_000_000_123).unwrap();
        let queued = v2.compress_body(&b2, 2, 1_700_000_000_123).unwrap();
        assert_eq!(queued.protocol, Protocol::V2);
        let got = to_v1(&queued).unwrap();
        assert_eq!(got.protocol, Protocol::V1);
        assert_eq!(
            (got.samples, got.oldest_timestamp_ms),
            (2, 1_700_000_000_123)
        );
        let (got, want) = (decode(&got.body).unwrap(), decode(&want.body).unwrap());
        assert_eq!(got.timeseries.len(), 2);
        for (g, w) in got.timeseries.iter().zip(&want.timeseries) {
            assert_eq!(g.labels, w.labels);
            assert_eq!(g.samples[0].value.to_bits(), w.samples[0].value.to_bits());
            assert_eq!(g.samples[0].timestamp, w.samples[0].timestamp);
        }
    }

    /// One histogram series `t_seconds{route="/v1"}` (bound 1.0) with one observation of
    /// 0.5 s, its native bucket and that bucket's exemplar.
    fn one_native_series() -> crate::push::Snapshot {
        use crate::exposition::snapshot::{Exemplar, NativeHistogram};
        use std::sync::Arc;

        let mut f = Family::new("t_seconds", "h", Kind::Histogram, Arc::from([1.0]));
        f.push(
            Arc::from([("route".into(), "/v1".into())]),
            &[1.0, 0.5, 1.0],
        );
        f.native.push(NativeHistogram {
            schema: 3,
            count: 1,
            sum: 0.5,
            spans: vec![(-8, 1)],
            deltas: vec![1],
            ..Default::default()
        });
        f.exemplars.extend([
            Some(Exemplar {
                labels: vec![("request_id", "r1".into())],
                value: 0.5,
                timestamp_ms: 1_700_000_000_000,
            }),
            None,
        ]);
        crate::push::Snapshot { families: vec![f] }
    }

    #[test]
    fn without_histograms_keeps_the_classic_series_and_bucket_exemplars_of_a_batch() {
        use crate::config::HistogramMode;
        use crate::push::remote_write::series::SeriesState;

        let snapshot = one_native_series();
        let convert = |mode| {
            let mut s = SeriesState::new(&Default::default(), "i", 100).with_histograms(mode, true);
            s.convert(&snapshot, 1_700_000_000_001).unwrap().batches
        };
        let strip = |batches: Vec<Batch>| -> Vec<proto::TimeSeries> {
            let mut out = Vec::new();
            for b in &batches {
                let b = without_histograms(b, false)
                    .unwrap()
                    .unwrap_or_else(|| b.clone());
                assert_eq!(b.protocol, Protocol::V1);
                out.extend(decode(&b.body).unwrap().timeseries);
            }
            out
        };
        // "both": the classic series and the bucket's exemplar stay, the native one goes.
        let both = strip(convert(HistogramMode::Both));
        assert_eq!(both.len(), 4 + 1);
        assert!(both.iter().all(|s| s.histograms.is_empty()));
        assert_eq!(both.iter().filter(|s| !s.exemplars.is_empty()).count(), 1);
        // "native": nothing is left of the native series, not even its exemplar.
        assert!(strip(convert(HistogramMode::Native)).is_empty());
        // A batch without histograms is sent as it is.
        let classic = convert(HistogramMode::Classic);
        assert!(without_histograms(&classic[0], true).unwrap().is_none());
        assert!(without_histograms(
            &Batch {
                body: Bytes::from_static(b"garbage"),
                protocol: Protocol::V1,
                samples: 1,
                oldest_timestamp_ms: 0,
            },
            true
        )
        .is_err());
    }

    #[test]
    fn a_damaged_2_0_batch_is_an_error_not_a_panic() {
        let bad = Batch {
            body: Bytes::from_static(b"garbage"),
            protocol: Protocol::V2,
            samples: 1,
            oldest_timestamp_ms: 0,
        };
        assert!(to_v1(&bad).is_err());
    }

    #[test]
    fn a_2_0_native_batch_becomes_1_0_with_its_histograms_then_its_exemplars_or_loses_them() {
        use crate::config::HistogramMode;
        use crate::push::remote_write::series::SeriesState;

        let snapshot = one_native_series();
        let mut s = SeriesState::new(&Default::default(), "i", 100)
            .with_histograms(HistogramMode::Native, true);
        s.set_protocol(Protocol::V2);
        let batches = s.convert(&snapshot, 1_700_000_000_001).unwrap().batches;
        assert_eq!(batches.len(), 1);
        let queued = &batches[0];
        assert_eq!(
            contents(queued).unwrap(),
            Contents {
                samples: 0,
                histograms: 1,
                exemplars: 1
            }
        );

        let v1 = decode(&to_v1(queued).unwrap().body).unwrap().timeseries;
        assert_eq!(
            v1.len(),
            2,
            "the histogram, then its exemplar in an entry of its own"
        );
        assert_eq!(v1[0].labels, v1[1].labels);
        let h = &v1[0].histograms[0];
        assert_eq!((h.schema, h.sum, h.timestamp), (3, 0.5, 1_700_000_000_001));
        assert_eq!(h.count, Some(proto::histogram::Count::CountInt(1)));
        assert_eq!(
            (h.positive_spans[0].offset, h.positive_deltas.clone()),
            (-8, vec![1])
        );
        assert!(v1[0].exemplars.is_empty() && v1[1].histograms.is_empty());
        let e = &v1[1].exemplars[0];
        assert_eq!(
            (&*e.labels[0].name, &*e.labels[0].value),
            ("request_id", "r1")
        );
        assert_eq!((e.value, e.timestamp), (0.5, 1_700_000_000_000));

        // Refused with "both": nothing is left of the native series, in either protocol.
        let stripped = without_histograms(queued, false).unwrap().unwrap();
        assert_eq!(stripped.protocol, Protocol::V2);
        assert_eq!(contents(&stripped).unwrap(), Contents::default());
        let v1 = to_v1(queued).unwrap();
        let stripped = without_histograms(&v1, false).unwrap().unwrap();
        assert!(decode(&stripped.body).unwrap().timeseries.is_empty());

        // With "native": its exact classic `_count` and `_sum`, with the series' labels.
        let want = [("t_seconds_count", 1.0), ("t_seconds_sum", 0.5)];
        let kept = to_v1(&without_histograms(queued, true).unwrap().unwrap()).unwrap();
        for b in [kept, without_histograms(&v1, true).unwrap().unwrap()] {
            let got: Vec<_> = (decode(&b.body).unwrap().timeseries.iter())
                .map(|s| {
                    assert!(s.histograms.is_empty() && s.exemplars.is_empty());
                    let l = |n: &str| s.labels.iter().find(|l| l.name == n).unwrap().value.clone();
                    assert_eq!(l("route"), "/v1");
                    assert_eq!(s.samples[0].timestamp, 1_700_000_000_001);
                    (l("__name__"), s.samples[0].value)
                })
                .collect();
            let got: Vec<(&str, f64)> = got.iter().map(|(n, v)| (n.as_str(), *v)).collect();
            assert_eq!(got, want);
        }
        // A stale marker stays one in both.
        let final_push = s
            .convert_final(&snapshot, 1_700_000_000_100)
            .unwrap()
            .batches;
        let stale = final_push.last().unwrap();
        let kept = without_histograms(stale, true).unwrap().unwrap();
        let series = decode(&to_v1(&kept).unwrap().body).unwrap().timeseries;
        assert_eq!(series.len(), 2);
        for t in &series {
            assert_eq!(
                t.samples[0].value.to_bits(),
                super::super::encode::STALE_NAN_BITS
            );
        }
    }
}
