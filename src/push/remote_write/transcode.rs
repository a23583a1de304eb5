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
    #[error("not a remote-write 2.0 request: {0}")]
    Protobuf(#[from] prost::DecodeError),
    #[error("a label reference points past the symbol table")]
    BadRef,
}

/// The 1.0 request carrying what the 2.0 `batch` carries.
pub(crate) fn to_v1(batch: &Batch) -> Result<Batch, TranscodeError> {
    let raw = snap::raw::Decoder::new().decompress_vec(&batch.body)?;
    let request = v2::Request::decode(raw.as_slice())?;
    let symbol = |r: u32| {
        request
            .symbols
            .get(r as usize)
            .ok_or(TranscodeError::BadRef)
    };
    let mut timeseries = Vec::with_capacity(request.timeseries.len());
    for series in &request.timeseries {
        let labels = series
            .labels_refs
            .chunks(2)
            .map(|pair| match *pair {
                [name, value] => Ok(proto::Label {
                    name: symbol(name)?.clone(),
                    value: symbol(value)?.clone(),
                }),
                _ => Err(TranscodeError::BadRef),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let samples = (series.samples.iter())
            .map(|s| proto::Sample {
                value: s.value,
                timestamp: s.timestamp,
            })
            .collect();
        timeseries.push(proto::TimeSeries {
            labels,
            samples,
            ..Default::default()
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
}
