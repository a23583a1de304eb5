//! Remote-write request bodies: protobuf `WriteRequest` (proto/remote_write.proto), then
//! snappy **block** compression. Each batch is encoded once; a retry resends the same bytes.
//!
//! The protobuf is written field by field (prost's wire types and varint lengths) rather than by
//! building `proto::WriteRequest` values: a snapshot of 190,000 series would otherwise
//! allocate two `String`s per label per push. A series' labels are encoded once into the
//! bytes of its `labels` field; the same bytes serve as its identity for stale markers
//! (`series.rs`). The unit tests decode the output with the derived `proto` types.
//!
//! The encoder keeps the uncompressed bodies of a conversion's requests until the next
//! one (a snapshot's worth of bytes, about the size of the staleness index): a conversion
//! that repeats the previous series in order rewrites 8 value bytes and the timestamp of
//! each in place rather than copying its labels again.

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
///
/// It keeps the uncompressed bodies of one conversion's batches for the next one: while a
/// conversion repeats the previous one's series in the same order (the usual case: same
/// registry, new values), [`replay`](Self::replay) overwrites just the value and timestamp
/// of each series in place instead of writing the series again.
pub struct RequestEncoder {
    /// The uncompressed `WriteRequest` of the current batch.
    body: Vec<u8>,
    samples: u64,
    oldest_timestamp_ms: i64,
    /// The last timestamp and its varint.
    timestamp: (i64, Vec<u8>),
    compressed: Vec<u8>,
    snappy: snap::raw::Encoder,
    /// The bodies of this conversion's finished batches, in order.
    finished: Vec<Vec<u8>>,
    /// The previous conversion's bodies still to come, in reverse order (the next on top).
    previous: Vec<Vec<u8>>,
    /// While replaying: where in `body` the next series to overwrite starts.
    replay: Option<usize>,
    /// Bytes held by `finished`, and their bound.
    kept_bytes: usize,
    max_kept_bytes: usize,
}

/// At most this many bytes of bodies are kept for the next conversion (about 70,000 series
/// of the proxy's families); the series after them are written anew each time.
const MAX_KEPT_BYTES: usize = 16 << 20;

impl Default for RequestEncoder {
    fn default() -> Self {
        RequestEncoder {
            body: Vec::new(),
            samples: 0,
            oldest_timestamp_ms: i64::MAX,
            timestamp: (0, Vec::new()),
            compressed: Vec::new(),
            snappy: snap::raw::Encoder::new(),
            finished: Vec::new(),
            previous: Vec::new(),
            replay: None,
            kept_bytes: 0,
            max_kept_bytes: MAX_KEPT_BYTES,
        }
    }
}

impl RequestEncoder {
    /// Starts a conversion whose samples are at `timestamp_ms`. With `replayable`, the
    /// caller vouches that the previous conversion's series, up to the first that was not
    /// replayed, are the ones it will [`replay`](Self::replay), in order, and that they all
    /// had one timestamp.
    pub fn begin(&mut self, timestamp_ms: i64, replayable: bool) {
        let previous_len = self.timestamp.1.len();
        self.set_timestamp(timestamp_ms);
        // The previous bodies are reused as buffers in any case.
        self.previous = std::mem::take(&mut self.finished);
        self.previous.reverse();
        self.kept_bytes = 0;
        self.body = self.previous.pop().unwrap_or_default();
        let same_layout = previous_len == self.timestamp.1.len();
        self.replay = (replayable && same_layout && !self.body.is_empty()).then_some(0);
        if self.replay.is_none() {
            self.stop_replay();
            self.body.clear();
        }
        self.samples = 0;
        self.oldest_timestamp_ms = i64::MAX;
    }

    fn set_timestamp(&mut self, timestamp_ms: i64) {
        if self.timestamp.0 != timestamp_ms || self.timestamp.1.is_empty() {
            // The samples of a snapshot share their timestamp: encode it once.
            self.timestamp.1.clear();
            put_varint(timestamp_ms as u64, &mut self.timestamp.1);
            self.timestamp.0 = timestamp_ms;
        }
    }

    /// Gives the next series of the previous conversion `value` and this conversion's
    /// timestamp, in place; false when not replaying (then [`push`](Self::push) it).
    pub fn replay(&mut self, value: f64) -> bool {
        let Some(at) = self.replay else {
            return false;
        };
        let Some(end) = series_end(&self.body, at) else {
            return false;
        };
        let ts = &self.timestamp.1;
        let ts_at = end - ts.len();
        let value_at = ts_at - 1 - 8;
        self.body[value_at..value_at + 8].copy_from_slice(&value.to_bits().to_le_bytes());
        self.body[ts_at..end].copy_from_slice(ts);
        self.replay = Some(end);
        self.samples += 1;
        self.oldest_timestamp_ms = self.oldest_timestamp_ms.min(self.timestamp.0);
        true
    }

    /// Stops replaying: what follows is written anew.
    fn stop_replay(&mut self) {
        if let Some(at) = self.replay.take() {
            self.body.truncate(at);
        }
        for body in &mut self.previous {
            body.clear();
        }
    }

    /// Adds a series with one sample; `labels` are bytes from [`encode_label`].
    pub fn push(&mut self, labels: &[u8], value: f64, timestamp_ms: i64) {
        self.stop_replay();
        // Sample { double value = 1; int64 timestamp = 2; }: both fields always written,
        // so that -0.0 and the stale NaN keep their exact bits.
        self.set_timestamp(timestamp_ms);
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
        if let Some(at) = self.replay {
            // The previous batch had more series: they are not part of this one.
            self.body.truncate(at);
        }
        // Grown, never shrunk: resizing it down and up again from batch to batch would
        // zero the difference each time.
        let room = snap::raw::max_compress_len(self.body.len());
        if self.compressed.len() < room {
            self.compressed.resize(room, 0);
        }
        let n = self.snappy.compress(&self.body, &mut self.compressed)?;
        let batch = Batch {
            // A copy of exactly `n` bytes, so that a queued batch holds no slack.
            body: Bytes::copy_from_slice(&self.compressed[..n]),
            samples: self.samples,
            oldest_timestamp_ms: self.oldest_timestamp_ms,
        };
        if self.kept_bytes + self.body.len() > self.max_kept_bytes {
            // Past the bound, the body is only a buffer for the next batch.
            self.stop_replay();
            self.previous = Vec::new();
            self.body.clear();
        } else {
            // Kept until the next conversion: without the slack of growing by doubling.
            if self.body.capacity() - self.body.len() > self.body.len() / 8 {
                self.body.shrink_to_fit();
            }
            self.kept_bytes += self.body.capacity();
            let mut next = self.previous.pop().unwrap_or_default();
            if self.replay.is_some() && !next.is_empty() {
                self.replay = Some(0);
            } else {
                self.replay = None;
                next.clear();
            }
            self.finished.push(std::mem::replace(&mut self.body, next));
        }
        self.samples = 0;
        self.oldest_timestamp_ms = i64::MAX;
        Ok(Some(batch))
    }
}

/// The end of the series that starts at `at` in `body`, if one does.
fn series_end(body: &[u8], at: usize) -> Option<usize> {
    if body.get(at) != Some(&SERIES_KEY) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::proto::{Label, Sample, TimeSeries, WriteRequest};
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

    /// Decodes batches into (first label value, value, timestamp) per series.
    fn series(batches: &[Batch]) -> Vec<(String, u64, i64)> {
        batches
            .iter()
            .flat_map(|b| decode(&b.body).unwrap().timeseries)
            .map(|t| {
                (
                    t.labels[0].value.clone(),
                    t.samples[0].value.to_bits(),
                    t.samples[0].timestamp,
                )
            })
            .collect()
    }

    /// Runs one conversion: `replays` values replayed (or pushed when the encoder
    /// refuses), then `pushes` series pushed, in batches of `max`.
    fn conversion(
        enc: &mut RequestEncoder,
        ts: i64,
        replayable: bool,
        replays: &[(&str, f64)],
        pushes: &[(&str, f64)],
        max: usize,
    ) -> (Vec<Batch>, usize) {
        enc.begin(ts, replayable);
        let (mut batches, mut replayed) = (Vec::new(), 0);
        let flush = |enc: &mut RequestEncoder, batches: &mut Vec<Batch>| {
            if enc.len() >= max {
                batches.extend(enc.finish().unwrap());
            }
        };
        for &(name, v) in replays {
            if enc.replay(v) {
                replayed += 1;
            } else {
                enc.push(&labels(&[("__name__", name)]), v, ts);
            }
            flush(enc, &mut batches);
        }
        for &(name, v) in pushes {
            enc.push(&labels(&[("__name__", name)]), v, ts);
            flush(enc, &mut batches);
        }
        batches.extend(enc.finish().unwrap());
        (batches, replayed)
    }

    #[test]
    fn replayed_series_carry_the_new_values_and_timestamp_across_batches() {
        let mut enc = RequestEncoder::default();
        // "c" long enough for a series length of two varint bytes.
        let long = "c".repeat(200);
        let names = ["a", "b", long.as_str(), "d", "e"];
        let first: Vec<(&str, f64)> = names.iter().map(|&n| (n, 1.0)).collect();
        let (batches, replayed) = conversion(&mut enc, 1_000, false, &first, &[], 2);
        assert_eq!((batches.len(), replayed), (3, 0));

        // Same series, new values: all replayed, in batches of 2 as before.
        let second: Vec<(&str, f64)> = names.iter().map(|&n| (n, 2.0)).collect();
        let (batches, replayed) = conversion(&mut enc, 1_001, true, &second, &[], 2);
        assert_eq!(replayed, 5);
        assert_eq!(
            batches.iter().map(|b| b.samples).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        let expected: Vec<_> = names
            .iter()
            .map(|&n| (n.to_string(), 2f64.to_bits(), 1_001))
            .collect();
        assert_eq!(series(&batches), expected);

        // Three repeated, then something new: the rest is written anew, the old tail gone.
        let (batches, replayed) = conversion(
            &mut enc,
            1_002,
            true,
            &[("a", 3.0), ("b", 3.0), (long.as_str(), 3.0)],
            &[("x", 9.0)],
            2,
        );
        assert_eq!(replayed, 3);
        let got = series(&batches);
        let names: Vec<&str> = got.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b", long.as_str(), "x"]);
        assert!(got.iter().all(|&(_, _, ts)| ts == 1_002));

        // Fewer series than last time: the last batch ends where the replay stopped.
        let (batches, _) = conversion(&mut enc, 1_003, true, &[("a", 4.0)], &[], 2);
        assert_eq!(series(&batches), [("a".to_string(), 4f64.to_bits(), 1_003)]);
    }

    #[test]
    fn only_the_bodies_within_the_bound_are_kept_and_replayed() {
        let mut enc = RequestEncoder {
            max_kept_bytes: 70,
            ..RequestEncoder::default()
        };
        // Series of 31 bytes, two per batch: only the first batch's body fits the bound.
        let names = ["a", "b", "c", "d", "e"];
        let first: Vec<(&str, f64)> = names.iter().map(|&n| (n, 1.0)).collect();
        conversion(&mut enc, 1_000, false, &first, &[], 2);
        let second: Vec<(&str, f64)> = names.iter().map(|&n| (n, 2.0)).collect();
        let (batches, replayed) = conversion(&mut enc, 1_001, true, &second, &[], 2);
        assert_eq!(replayed, 2);
        let expected: Vec<_> = (names.iter())
            .map(|&n| (n.to_string(), 2f64.to_bits(), 1_001))
            .collect();
        assert_eq!(series(&batches), expected);
        assert!(enc.kept_bytes <= 70 && enc.finished.len() == 1);
    }

    #[test]
    fn no_replay_when_not_vouched_for_or_the_timestamp_changes_length() {
        let mut enc = RequestEncoder::default();
        conversion(&mut enc, 100, false, &[("a", 1.0)], &[], 10);
        // 100 takes one varint byte, 200 two: the old series cannot be overwritten in place.
        let (batches, replayed) = conversion(&mut enc, 200, true, &[("a", 2.0)], &[], 10);
        assert_eq!(replayed, 0);
        assert_eq!(series(&batches), [("a".to_string(), 2f64.to_bits(), 200)]);
        let (_, replayed) = conversion(&mut enc, 201, false, &[("a", 3.0)], &[], 10);
        assert_eq!(replayed, 0);
        let (batches, replayed) = conversion(&mut enc, 202, true, &[("a", 4.0)], &[], 10);
        assert_eq!(replayed, 1);
        assert_eq!(series(&batches), [("a".to_string(), 4f64.to_bits(), 202)]);
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
