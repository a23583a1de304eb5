//! Remote-write request bodies: protobuf `WriteRequest` (proto/remote_write.proto), then
//! snappy **block** compression. Each batch is encoded once; a retry resends the same bytes.
//!
//! The protobuf is written field by field (prost's wire types and varint lengths) rather than by
//! building `proto::WriteRequest` values: a snapshot of 190,000 series would otherwise
//! allocate two `String`s per label per push. A series' labels are encoded once into the
//! bytes of its `labels` field; the same bytes serve as its identity for stale markers
//! (`staleness.rs`). The unit tests decode the output with the derived `proto` types.
//!
//! A series written once can be given a new sample in place ([`RequestEncoder::overwrite`]):
//! when that is allowed is decided in one place, `requests.rs`.

use bytes::Bytes;
use prost::encoding::{encoded_len_varint, WireType};

use super::encode_v2::{self, SeriesWriter, Symbols};
use super::negotiate::Protocol;
use super::queue::Batch;
use super::wire::{key, put_sample, put_varint, sample_len, SAMPLE_KEY};
use crate::exposition::snapshot::Family;

/// The stale marker: a NaN that receivers read as "this series ended here".
pub const STALE_NAN_BITS: u64 = 0x7ff0000000000002;

#[derive(Debug, thiserror::Error)]
#[error("cannot compress a remote-write request: {0}")]
pub struct EncodeError(#[from] snap::Error);

/// Appends one `Label` entry (field 1 of `TimeSeries`) to `out`. Calling it for each label
/// of a series, in name order, yields the series' label bytes for [`RequestEncoder::write`].
pub(crate) fn encode_label(name: &str, value: &str, out: &mut Vec<u8>) {
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

/// `WriteRequest.timeseries` and `TimeSeries.labels` (both field 1, messages).
const SERIES_KEY: u8 = key(1, WireType::LengthDelimited);
const LABEL_KEY: u8 = key(1, WireType::LengthDelimited);
/// `Label.name`, `Label.value`.
const NAME_KEY: u8 = key(1, WireType::LengthDelimited);
const VALUE_KEY: u8 = key(2, WireType::LengthDelimited);
/// One request's uncompressed body: its series and, in 2.0, the symbols they refer to.
#[derive(Default)]
pub(crate) struct Body {
    pub(crate) series: Vec<u8>,
    /// 2.0 only.
    symbols: Symbols,
    /// 2.0 only: the symbols in use after each series (`marks[k]` after series `k`), so
    /// that cutting the body after `k` series cuts the symbols they alone used.
    marks: Vec<u32>,
}

impl Body {
    pub(crate) fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.series.clear();
        self.symbols.clear();
        self.marks.clear();
    }

    /// Keeps the first `series` series, which end at byte `at`.
    pub(crate) fn truncate(&mut self, at: usize, series: usize) {
        self.series.truncate(at);
        if let Some(&n) = series.checked_sub(1).and_then(|i| self.marks.get(i)) {
            self.symbols.truncate(n as usize);
        } else if series == 0 {
            self.symbols.clear();
        }
        self.marks.truncate(series);
    }

    /// Bytes it holds on to, including slack.
    pub(crate) fn capacity(&self) -> usize {
        self.series.capacity() + self.symbols.capacity() + self.marks.capacity() * 4
    }

    pub(crate) fn shrink_to_fit(&mut self) {
        self.series.shrink_to_fit();
    }
}

/// Writes series into request bodies and bodies into compressed requests, in either
/// protocol; which body a series goes into, and when a written series is overwritten rather
/// than written again, is for `requests.rs` to say.
pub(crate) struct RequestEncoder {
    protocol: Protocol,
    /// The last timestamp and its varint.
    timestamp: (i64, Vec<u8>),
    v2: SeriesWriter,
    /// 2.0: the symbols and the series of a request together, before compression.
    wire: Vec<u8>,
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
}

impl Default for RequestEncoder {
    fn default() -> Self {
        RequestEncoder {
            protocol: Protocol::V1,
            timestamp: (0, Vec::new()),
            v2: SeriesWriter::default(),
            wire: Vec::new(),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
        }
    }
}

impl RequestEncoder {
    pub(crate) fn protocol(&self) -> Protocol {
        self.protocol
    }

    pub(crate) fn set_protocol(&mut self, protocol: Protocol) {
        self.protocol = protocol;
    }

    /// Learns the type and help of the series of `families` (2.0 sends them).
    pub(crate) fn describe(&mut self, families: &[Family]) {
        if self.protocol == Protocol::V2 {
            self.v2.describe(families);
        }
    }

    /// Appends a series with one sample to `body`, in this encoder's protocol.
    pub(crate) fn write_series(
        &mut self,
        body: &mut Body,
        labels: &[u8],
        value: f64,
        timestamp_ms: i64,
    ) {
        match self.protocol {
            Protocol::V1 => self.write(&mut body.series, labels, value, timestamp_ms),
            Protocol::V2 => {
                self.set_timestamp(timestamp_ms);
                let ts = &self.timestamp.1;
                (self.v2).write(&mut body.series, &mut body.symbols, labels, value, ts);
                body.marks.push(body.symbols.len() as u32);
            }
        }
    }

    fn series_key(&self) -> u8 {
        match self.protocol {
            Protocol::V1 => SERIES_KEY,
            Protocol::V2 => encode_v2::SERIES_KEY,
        }
    }

    fn set_timestamp(&mut self, timestamp_ms: i64) {
        if self.timestamp.0 != timestamp_ms || self.timestamp.1.is_empty() {
            // The samples of a snapshot share their timestamp: encode it once.
            self.timestamp.1.clear();
            put_varint(timestamp_ms as u64, &mut self.timestamp.1);
            self.timestamp.0 = timestamp_ms;
        }
    }

    /// Appends a series with one sample to `body`; `labels` are bytes from [`encode_label`].
    pub(crate) fn write(
        &mut self,
        body: &mut Vec<u8>,
        labels: &[u8],
        value: f64,
        timestamp_ms: i64,
    ) {
        self.set_timestamp(timestamp_ms);
        let ts = &self.timestamp.1;
        let sample_len = sample_len(ts.len());
        let series_len = labels.len() + 1 + encoded_len_varint(sample_len as u64) + sample_len;
        body.push(SERIES_KEY);
        put_varint(series_len as u64, body);
        body.extend_from_slice(labels);
        put_sample(body, value, ts);
    }

    /// Gives the series that [`write`](Self::write) put at `at` in `body` the sample
    /// `value` at `timestamp_ms`, in place; returns where the next series starts. The
    /// caller makes sure that its timestamp's varint has the length of this one's
    /// ([`timestamp_len`]): the bytes after it cannot move. `None`, and nothing changed,
    /// when no series with a sample of that length starts at `at`.
    // Called for nearly every series of a steady push: a call each costs 2 % of a conversion.
    #[inline]
    pub(crate) fn overwrite(
        &mut self,
        body: &mut [u8],
        at: usize,
        value: f64,
        timestamp_ms: i64,
    ) -> Option<usize> {
        self.set_timestamp(timestamp_ms);
        let ts = &self.timestamp.1;
        let end = series_end(body, at, self.series_key())?;
        let sample_len = sample_len(ts.len());
        // The sample field's key and one-byte length: the length tells the old varint's.
        let sample_at = end.checked_sub(2 + sample_len).filter(|&s| s > at)?;
        if body[sample_at..sample_at + 2] != [SAMPLE_KEY, sample_len as u8] {
            return None;
        }
        let value_at = sample_at + 3;
        body[value_at..value_at + 8].copy_from_slice(&value.to_bits().to_le_bytes());
        body[end - ts.len()..end].copy_from_slice(ts);
        Some(end)
    }

    /// Compresses `body`, which holds `samples` series whose oldest sample is at
    /// `oldest_timestamp_ms`, into a batch of this encoder's protocol.
    pub(crate) fn compress_body(
        &mut self,
        body: &Body,
        samples: u64,
        oldest_timestamp_ms: i64,
    ) -> Result<Batch, EncodeError> {
        match self.protocol {
            Protocol::V1 => self.compress(&body.series, samples, oldest_timestamp_ms),
            Protocol::V2 => {
                let mut wire = std::mem::take(&mut self.wire);
                wire.clear();
                wire.extend_from_slice(body.symbols.encoded());
                wire.extend_from_slice(&body.series);
                let batch = self.compress(&wire, samples, oldest_timestamp_ms);
                self.wire = wire;
                Ok(Batch {
                    protocol: Protocol::V2,
                    ..batch?
                })
            }
        }
    }

    /// Compresses the 1.0 `body`, which holds `samples` series whose oldest sample is at
    /// `oldest_timestamp_ms`, into a batch.
    pub(crate) fn compress(
        &mut self,
        body: &[u8],
        samples: u64,
        oldest_timestamp_ms: i64,
    ) -> Result<Batch, EncodeError> {
        // Grown, never shrunk: resizing it down and up again from batch to batch would
        // zero the difference each time.
        let room = snap::raw::max_compress_len(body.len());
        if self.compressed.len() < room {
            self.compressed.resize(room, 0);
        }
        let n = self.snappy.compress(body, &mut self.compressed)?;
        Ok(Batch {
            // A copy of exactly `n` bytes, so that a queued batch holds no slack.
            body: Bytes::copy_from_slice(&self.compressed[..n]),
            protocol: Protocol::V1,
            samples,
            oldest_timestamp_ms,
        })
    }
}

/// Bytes of a timestamp's varint in a sample.
pub(crate) fn timestamp_len(timestamp_ms: i64) -> usize {
    encoded_len_varint(timestamp_ms as u64)
}

/// The end of the series that starts at `at` in `body`, if one does.
#[inline]
fn series_end(body: &[u8], at: usize, series_key: u8) -> Option<usize> {
    if body.get(at) != Some(&series_key) {
        return None;
    }
    // Most series' lengths take two varint bytes.
    if let [b0 @ 0x80..=0xff, b1 @ 0..=0x7f, ..] = body.get(at + 1..)? {
        let end = at + 3 + (usize::from(b0 & 0x7f) | usize::from(*b1) << 7);
        return (end <= body.len()).then_some(end);
    }
    let mut len = 0u64;
    for (i, &b) in body.get(at + 1..)?.iter().take(10).enumerate() {
        len |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            let end = at + 2 + i + usize::try_from(len).ok()?;
            return (end <= body.len()).then_some(end);
        }
    }
    None
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

/// The label bytes `encode_label` writes for `pairs`, in order.
#[cfg(test)]
pub(crate) fn encode_labels(pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in pairs {
        encode_label(n, v, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_labels as labels;
    use super::*;
    use crate::push::remote_write::proto::{Label, Sample, TimeSeries, WriteRequest};
    use prost::Message;

    #[test]
    fn encoded_request_decodes_to_the_same_series_with_prost() {
        let mut enc = RequestEncoder::default();
        let mut body = Vec::new();
        let a = labels(&[("__name__", "up"), ("job", "codex-proxy")]);
        let long_value = "x".repeat(300); // a length that needs a two-byte varint
        let b = labels(&[("__name__", "temp_celsius"), ("room", &long_value)]);
        enc.write(&mut body, &a, 1.0, 1_700_000_000_000);
        enc.write(&mut body, &b, -0.0, 1_700_000_000_001);
        enc.write(
            &mut body,
            &a,
            f64::from_bits(STALE_NAN_BITS),
            1_700_000_000_002,
        );
        let batch = enc.compress(&body, 3, 1_700_000_000_000).unwrap();
        assert_eq!(batch.samples, 3);
        assert_eq!(batch.oldest_timestamp_ms, 1_700_000_000_000);

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
    fn an_overwritten_series_is_the_series_written_with_the_new_sample() {
        let mut enc = RequestEncoder::default();
        let short = labels(&[("__name__", "a")]);
        // A series length of two varint bytes.
        let long = labels(&[("__name__", "b"), ("room", &"x".repeat(200))]);
        let (mut body, mut expected) = (Vec::new(), Vec::new());
        for l in [&short, &long, &short] {
            enc.write(&mut body, l, 1.0, 1_700_000_000_000);
            enc.write(&mut expected, l, -2.5, 1_700_000_000_999);
        }
        let mut at = 0;
        for _ in 0..3 {
            at = enc
                .overwrite(&mut body, at, -2.5, 1_700_000_000_999)
                .unwrap();
        }
        assert_eq!(at, body.len());
        assert_eq!(body, expected);
        // Past the end, or not at the start of a series: nothing.
        assert_eq!(enc.overwrite(&mut body, at, 1.0, 1_700_000_000_999), None);
        assert_eq!(enc.overwrite(&mut body, 1, 1.0, 1_700_000_000_999), None);
        assert_eq!(body, expected);
    }

    #[test]
    fn a_sample_whose_timestamp_has_another_length_is_not_overwritten() {
        let mut enc = RequestEncoder::default();
        let mut body = Vec::new();
        enc.write(&mut body, &labels(&[("__name__", "a")]), 1.0, 100);
        let before = body.clone();
        // 100 takes one varint byte, 200 two.
        assert_ne!(timestamp_len(100), timestamp_len(200));
        assert_eq!(enc.overwrite(&mut body, 0, 2.0, 200), None);
        assert_eq!(body, before);
        assert_eq!(enc.overwrite(&mut body, 0, 2.0, 101), Some(body.len()));
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
                ..Default::default()
            }],
        };
        let mut body = Vec::new();
        RequestEncoder::default().write(&mut body, &labels(&[("__name__", "x")]), 2.5, 42);
        assert_eq!(body, msg.encode_to_vec());
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
            assert_eq!(timestamp_len(n as i64), theirs.len());
        }
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(decode(b"not snappy at all").is_err());
    }
}
