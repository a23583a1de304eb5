//! Remote-write request bodies: protobuf `WriteRequest` (proto/remote_write.proto), then
//! snappy **block** compression. Each batch is encoded once; a retry resends the same bytes.
//!
//! The protobuf is written field by field (prost's wire types and varint lengths) rather than by
//! building `proto::WriteRequest` values: a snapshot of 190,000 series would otherwise
//! allocate two `String`s per label per push. A series' labels are encoded once into the
//! bytes of its `labels` field; the same bytes serve as its identity for stale markers
//! (`series.rs`). The unit tests decode the output with the derived `proto` types.

use bytes::Bytes;
use prost::encoding::{encoded_len_varint, WireType};

use super::queue::Batch;

/// The stale marker: a NaN that receivers read as "this series ended here".
pub const STALE_NAN_BITS: u64 = 0x7ff0000000000002;

#[derive(Debug, thiserror::Error)]
#[error("cannot compress a remote-write request: {0}")]
pub struct EncodeError(#[from] snap::Error);

/// Appends one `Label` entry (field 1 of `TimeSeries`) to `out`. Calling it for each label
/// of a series, in name order, yields the series' label bytes for [`RequestEncoder::push`].
pub fn encode_label(name: &str, value: &str, out: &mut Vec<u8>) {
    let label_len = string_field_len(name) + string_field_len(value);
    out.push(LABEL_KEY);
    put_varint(label_len as u64, out);
    out.push(NAME_KEY);
    put_varint(name.len() as u64, out);
    out.extend_from_slice(name.as_bytes());
    out.push(VALUE_KEY);
    put_varint(value.len() as u64, out);
    out.extend_from_slice(value.as_bytes());
}

/// A field key as its single byte: `(field << 3) | wire type`, for fields below 16.
const fn key(field: u32, wire_type: WireType) -> u8 {
    ((field << 3) | wire_type as u32) as u8
}

/// `WriteRequest.timeseries` and `TimeSeries.labels` (both field 1, messages).
const SERIES_KEY: u8 = key(1, WireType::LengthDelimited);
const LABEL_KEY: u8 = key(1, WireType::LengthDelimited);
/// `Label.name`, `Label.value`.
const NAME_KEY: u8 = key(1, WireType::LengthDelimited);
const VALUE_KEY: u8 = key(2, WireType::LengthDelimited);
/// `TimeSeries.samples`.
const SAMPLE_KEY: u8 = key(2, WireType::LengthDelimited);
/// `Sample.value` (double), `Sample.timestamp` (int64).
const SAMPLE_VALUE_KEY: u8 = key(1, WireType::SixtyFourBit);
const SAMPLE_TIMESTAMP_KEY: u8 = key(2, WireType::Varint);

/// Appends `n` as a protobuf varint: seven bits a byte, low bits first.
#[inline]
fn put_varint(mut n: u64, out: &mut Vec<u8>) {
    if n < 0x80 {
        out.push(n as u8);
        return;
    }
    // A series' length: most take two bytes.
    if n < 0x4000 {
        out.extend_from_slice(&[(n as u8) | 0x80, (n >> 7) as u8]);
        return;
    }
    let mut bytes = [0u8; 10];
    let mut i = 0;
    while n >= 0x80 {
        bytes[i] = (n as u8) | 0x80;
        n >>= 7;
        i += 1;
    }
    bytes[i] = n as u8;
    out.extend_from_slice(&bytes[..=i]);
}

/// Builds one `WriteRequest` series by series, then compresses it into a [`Batch`].
pub struct RequestEncoder {
    /// The uncompressed `WriteRequest` so far; reused across batches.
    body: Vec<u8>,
    samples: u64,
    oldest_timestamp_ms: i64,
    /// The last timestamp and its varint.
    timestamp: (i64, Vec<u8>),
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl Default for RequestEncoder {
    fn default() -> Self {
        RequestEncoder {
            body: Vec::new(),
            samples: 0,
            oldest_timestamp_ms: i64::MAX,
            timestamp: (0, Vec::new()),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }
}

impl RequestEncoder {
    /// Adds a series with one sample; `labels` are bytes from [`encode_label`].
    pub fn push(&mut self, labels: &[u8], value: f64, timestamp_ms: i64) {
        // Sample { double value = 1; int64 timestamp = 2; }: both fields always written,
        // so that -0.0 and the stale NaN keep their exact bits.
        if self.timestamp.0 != timestamp_ms || self.timestamp.1.is_empty() {
            // The samples of a snapshot share their timestamp: encode it once.
            self.timestamp.1.clear();
            put_varint(timestamp_ms as u64, &mut self.timestamp.1);
            self.timestamp.0 = timestamp_ms;
        }
        let ts = &self.timestamp.1;
        let sample_len = 1 + 8 + 1 + ts.len();
        let series_len = labels.len() + 1 + encoded_len_varint(sample_len as u64) + sample_len;
        let out = &mut self.body;
        out.push(SERIES_KEY);
        put_varint(series_len as u64, out);
        out.extend_from_slice(labels);
        out.push(SAMPLE_KEY);
        put_varint(sample_len as u64, out);
        out.push(SAMPLE_VALUE_KEY);
        out.extend_from_slice(&value.to_bits().to_le_bytes());
        out.push(SAMPLE_TIMESTAMP_KEY);
        out.extend_from_slice(ts);
        self.samples += 1;
        self.oldest_timestamp_ms = self.oldest_timestamp_ms.min(timestamp_ms);
    }

    /// Series added since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.samples as usize
    }

    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// Compresses what was added into a batch and starts over; `None` when nothing was added.
    pub fn finish(&mut self) -> Result<Option<Batch>, EncodeError> {
        if self.samples == 0 {
            return Ok(None);
        }
        self.compressed
            .resize(snap::raw::max_compress_len(self.body.len()), 0);
        let n = self.snappy.compress(&self.body, &mut self.compressed)?;
        let batch = Batch {
            // A copy of exactly `n` bytes, so that a queued batch holds no slack.
            body: Bytes::copy_from_slice(&self.compressed[..n]),
            samples: self.samples,
            oldest_timestamp_ms: self.oldest_timestamp_ms,
        };
        self.body.clear();
        self.samples = 0;
        self.oldest_timestamp_ms = i64::MAX;
        Ok(Some(batch))
    }
}

/// Bytes of a string field with a one-byte key.
fn string_field_len(s: &str) -> usize {
    1 + encoded_len_varint(s.len() as u64) + s.len()
}

/// Decodes a batch body; used by the tests and by nothing on the send path.
pub fn decode(body: &[u8]) -> Result<super::proto::WriteRequest, DecodeError> {
    let raw = snap::raw::Decoder::new().decompress_vec(body)?;
    Ok(prost::Message::decode(raw.as_slice())?)
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not snappy block format: {0}")]
    Snappy(#[from] snap::Error),
    #[error("not a WriteRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::proto::{Label, Sample, TimeSeries, WriteRequest};
    use prost::Message;

    fn labels(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (n, v) in pairs {
            encode_label(n, v, &mut out);
        }
        out
    }

    #[test]
    fn encoded_request_decodes_to_the_same_series_with_prost() {
        let mut enc = RequestEncoder::default();
        let a = labels(&[("__name__", "up"), ("job", "codex-proxy")]);
        let long_value = "x".repeat(300); // a length that needs a two-byte varint
        let b = labels(&[("__name__", "temp_celsius"), ("room", &long_value)]);
        enc.push(&a, 1.0, 1_700_000_000_000);
        enc.push(&b, -0.0, 1_700_000_000_001);
        enc.push(&a, f64::from_bits(STALE_NAN_BITS), 1_700_000_000_002);
        assert_eq!(enc.len(), 3);
        let batch = enc.finish().unwrap().unwrap();
        assert_eq!(batch.samples, 3);
        assert_eq!(batch.oldest_timestamp_ms, 1_700_000_000_000);
        assert!(enc.is_empty());

        let req = decode(&batch.body).unwrap();
        let label = |n: &str, v: &str| Label {
            name: n.into(),
            value: v.into(),
        };
        assert_eq!(req.timeseries.len(), 3);
        assert_eq!(
            req.timeseries[0].labels,
            vec![label("__name__", "up"), label("job", "codex-proxy")]
        );
        assert_eq!(req.timeseries[1].labels[1].value, long_value);
        assert_eq!(
            req.timeseries[1].samples[0].value.to_bits(),
            (-0.0f64).to_bits()
        );
        let stale = &req.timeseries[2].samples[0];
        assert_eq!(stale.value.to_bits(), STALE_NAN_BITS);
        assert_eq!(stale.timestamp, 1_700_000_000_002);
    }

    #[test]
    fn hand_encoding_matches_prost_for_non_default_values() {
        // prost leaves out default-valued fields; with none here, the bytes must agree.
        let msg = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "__name__".into(),
                    value: "x".into(),
                }],
                samples: vec![Sample {
                    value: 2.5,
                    timestamp: 42,
                }],
            }],
        };
        let mut enc = RequestEncoder::default();
        enc.push(&labels(&[("__name__", "x")]), 2.5, 42);
        assert_eq!(enc.body, msg.encode_to_vec());
    }

    #[test]
    fn varints_match_prost_at_every_length() {
        for n in [
            0,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            1_700_000_000_000,
            u64::MAX,
        ] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            put_varint(n, &mut ours);
            prost::encoding::encode_varint(n, &mut theirs);
            assert_eq!(ours, theirs, "{n}");
        }
    }

    #[test]
    fn empty_encoder_yields_no_batch_and_garbage_does_not_decode() {
        assert!(RequestEncoder::default().finish().unwrap().is_none());
        assert!(decode(b"not snappy at all").is_err());
    }
}
