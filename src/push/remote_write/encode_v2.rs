//! Remote-write 2.0 request bodies: protobuf `io.prometheus.write.v2.Request`
//! (proto/remote_write_v2.proto), written field by field like 1.0's (`encode.rs`).
//!
//! A series comes in as its 1.0 label bytes (`encode_label`, the identity `staleness.rs`
//! keeps) and goes out as `labels_refs` into the request's symbol table, its metadata
//! (type and help of its family, unit empty) and its sample. Each request has a symbol table
//! of its own, starting with `""`, holding the strings its series use, each once.
//!
//! Two choices keep 2.0 as cheap as 1.0 from push to push:
//! - Fields go in the order `labels_refs`, `metadata`, `samples` (protobuf lets fields come in
//!   any order), so that a series ends with its sample exactly as in 1.0, and the in-place
//!   overwrite of `requests.rs` works unchanged: the symbols a series refers to stay in its
//!   request's table, which is kept with the body.
//! - The symbol table is kept already encoded as `symbols` fields; it goes in front of the
//!   series when the request is compressed.
//!
//! Native histograms and exemplars (`histograms.rs`) go through
//! [`SeriesWriter::write_native`]: the same `labels_refs` and `metadata`, then `histograms`
//! and `exemplars` instead of a sample, in requests of their own.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use prost::encoding::{encoded_len_varint, WireType};

use super::proto::v2;
use super::wire::{key, put_sample, put_varint, read_varint, sample_len};
use crate::exposition::snapshot::{Exemplar, Family, Kind};

/// `Request.timeseries` (field 5).
pub(crate) const SERIES_KEY: u8 = key(5, WireType::LengthDelimited);
/// `Request.symbols` (field 4).
const SYMBOL_KEY: u8 = key(4, WireType::LengthDelimited);
/// `TimeSeries.labels_refs` (field 1, packed).
const REFS_KEY: u8 = key(1, WireType::LengthDelimited);
/// `TimeSeries.histograms` (field 3), `TimeSeries.exemplars` (field 4).
const HISTOGRAM_KEY: u8 = key(3, WireType::LengthDelimited);
const EXEMPLARS_FIELD: u32 = 4;
/// `TimeSeries.metadata` (field 5).
const METADATA_KEY: u8 = key(5, WireType::LengthDelimited);
/// `Metadata.type`, `Metadata.help_ref` (`unit_ref`, field 4, is always 0 and left out).
const TYPE_KEY: u8 = key(1, WireType::Varint);
const HELP_KEY: u8 = key(3, WireType::Varint);

/// `Metadata.MetricType` of a family's series: every series of a classic histogram
/// (`_bucket`, `_sum`, `_count`) or summary has the family's type, as Prometheus sends them.
pub(crate) fn metric_type(kind: Kind) -> i32 {
    use super::proto::v2::metadata::MetricType;
    let t = match kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram => MetricType::Histogram,
        Kind::Summary => MetricType::Summary,
        Kind::Untyped => MetricType::Unspecified,
    };
    t as i32
}

/// A fast hash for short strings (symbols, metric names): FxHash's mixing step. The strings
/// are the registry's own names and label values, so no flooding defence is needed.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl FxHasher {
    #[inline]
    fn add(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(5) ^ w).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// One request's symbol table, encoded as it goes on the wire.
#[derive(Default)]
pub(crate) struct Symbols {
    /// `symbols` fields back to back; empty until the first symbol (then `""` is first).
    encoded: Vec<u8>,
    /// Where each symbol's field starts in `encoded`.
    starts: Vec<u32>,
    index: FastMap<Box<[u8]>, u32>,
}

impl Symbols {
    pub(crate) fn len(&self) -> usize {
        self.starts.len()
    }

    pub(crate) fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    pub(crate) fn clear(&mut self) {
        self.encoded.clear();
        self.starts.clear();
        self.index.clear();
    }

    /// The index of `s`, added if new.
    #[inline]
    pub(crate) fn intern(&mut self, s: &[u8]) -> u32 {
        if self.starts.is_empty() {
            self.push(b"");
        }
        if s.is_empty() {
            return 0;
        }
        match self.index.get(s) {
            Some(&i) => i,
            None => self.push(s),
        }
    }

    fn push(&mut self, s: &[u8]) -> u32 {
        let i = self.starts.len() as u32;
        self.starts.push(self.encoded.len() as u32);
        self.encoded.push(SYMBOL_KEY);
        put_varint(s.len() as u64, &mut self.encoded);
        self.encoded.extend_from_slice(s);
        self.index.insert(s.into(), i);
        i
    }

    /// Keeps the first `n` symbols (those of the series kept before them: a series' new
    /// symbols come after every symbol of the series before it).
    pub(crate) fn truncate(&mut self, n: usize) {
        if n >= self.starts.len() {
            return;
        }
        let cut = self.starts[n] as usize;
        let mut at = cut;
        while at < self.encoded.len() {
            // Our own writer's bytes: a varint that does not end cannot be there.
            let Some((len, used)) = read_varint(&self.encoded[at + 1..]) else {
                break;
            };
            let s = &self.encoded[at + 1 + used..at + 1 + used + len as usize];
            self.index.remove(s);
            at += 1 + used + len as usize;
        }
        self.encoded.truncate(cut);
        self.starts.truncate(n);
    }

    pub(crate) fn capacity(&self) -> usize {
        self.encoded.capacity() + self.starts.capacity() * 4 + self.index.capacity() * 32
    }
}

/// Type and help of a series, by its metric name.
struct Meta {
    metric_type: i32,
    help: Box<[u8]>,
}

/// What a 2.0 writer keeps across requests: each series name's metadata, and scratch.
#[derive(Default)]
pub(crate) struct SeriesWriter {
    /// By series name (`x`, `x_bucket`, `x_sum`, `x_count`...). Names of families that went
    /// away stay: their stale markers still need their metadata, and the registry's set of
    /// families is bounded.
    metadata: FastMap<Box<[u8]>, Meta>,
    name: String,
    refs: Vec<u32>,
    /// `write_native`'s fields before they go into the series.
    payload: Vec<u8>,
}

impl SeriesWriter {
    /// Learns the metadata of every series of `families`.
    pub(crate) fn describe(&mut self, families: &[Family]) {
        for family in families {
            let metric_type = metric_type(family.kind);
            let suffixes: &[&str] = match family.kind {
                Kind::Counter | Kind::Gauge | Kind::Untyped => &[""],
                // The bare name is the native series' (`histograms.rs`).
                Kind::Histogram => &["", "_bucket", "_sum", "_count"],
                Kind::Summary => &["", "_sum", "_count"],
            };
            for suffix in suffixes {
                self.name.clear();
                self.name.push_str(&family.name);
                self.name.push_str(suffix);
                let known = self.metadata.get(self.name.as_bytes()).is_some_and(|m| {
                    m.metric_type == metric_type && *m.help == *family.help.as_bytes()
                });
                if !known {
                    let meta = Meta {
                        metric_type,
                        help: family.help.as_bytes().into(),
                    };
                    self.metadata.insert(self.name.as_bytes().into(), meta);
                }
            }
        }
    }

    /// Appends a series with one sample to `body`, its strings to `symbols`; `labels` are
    /// 1.0 label bytes from `encode_label`, `timestamp` the sample's timestamp varint.
    pub(crate) fn write(
        &mut self,
        body: &mut Vec<u8>,
        symbols: &mut Symbols,
        labels: &[u8],
        value: f64,
        timestamp: &[u8],
    ) {
        let len = 1 + encoded_len_varint(sample_len(timestamp.len()) as u64);
        self.entry(
            body,
            symbols,
            labels,
            len + sample_len(timestamp.len()),
            |body| put_sample(body, value, timestamp),
        );
    }

    /// Appends a series holding `sample` (value, timestamp varint) or `histogram` (its
    /// bytes as `histograms.rs` encodes it, 1.0 and 2.0 alike), then `exemplars`, whose
    /// labels go into `symbols` as well. Prometheus' 2.0 receiver appends a series'
    /// exemplars after its samples and histograms, so they can ride together.
    pub(crate) fn write_native(
        &mut self,
        body: &mut Vec<u8>,
        symbols: &mut Symbols,
        labels: &[u8],
        sample: Option<(f64, &[u8])>,
        histogram: Option<&[u8]>,
        exemplars: &[&Exemplar],
    ) {
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        if let Some((value, timestamp)) = sample {
            put_sample(&mut payload, value, timestamp);
        }
        if let Some(h) = histogram {
            payload.push(HISTOGRAM_KEY);
            put_varint(h.len() as u64, &mut payload);
            payload.extend_from_slice(h);
        }
        for e in exemplars {
            let refs = e
                .labels
                .iter()
                .flat_map(|(name, value)| {
                    [
                        symbols.intern(name.as_bytes()),
                        symbols.intern(value.as_bytes()),
                    ]
                })
                .collect();
            let exemplar = v2::Exemplar {
                labels_refs: refs,
                value: e.value,
                timestamp: e.timestamp_ms,
            };
            prost::encoding::message::encode(EXEMPLARS_FIELD, &exemplar, &mut payload);
        }
        self.entry(body, symbols, labels, payload.len(), |body| {
            body.extend_from_slice(&payload)
        });
        self.payload = payload;
    }

    /// One `TimeSeries`: `labels_refs`, `metadata`, then `payload_len` bytes of fields that
    /// `payload` writes.
    #[inline]
    fn entry(
        &mut self,
        body: &mut Vec<u8>,
        symbols: &mut Symbols,
        labels: &[u8],
        payload_len: usize,
        payload: impl FnOnce(&mut Vec<u8>),
    ) {
        self.refs.clear();
        let mut meta = None;
        for (name, value) in LabelPairs(labels) {
            self.refs.push(symbols.intern(name));
            self.refs.push(symbols.intern(value));
            if name == b"__name__" {
                meta = self.metadata.get(value);
            }
        }
        let (metric_type, help) = meta.map_or((0, 0), |m| (m.metric_type, symbols.intern(&m.help)));
        let refs_len: usize = self.refs.iter().map(|&r| varint_len(r)).sum();
        let mut meta_len = 0;
        if metric_type != 0 {
            meta_len += 1 + varint_len(metric_type as u32);
        }
        if help != 0 {
            meta_len += 1 + varint_len(help);
        }
        let series_len = (1 + encoded_len_varint(refs_len as u64) + refs_len)
            + (1 + encoded_len_varint(meta_len as u64) + meta_len)
            + payload_len;
        body.push(SERIES_KEY);
        put_varint(series_len as u64, body);
        body.push(REFS_KEY);
        put_varint(refs_len as u64, body);
        for &r in &self.refs {
            put_varint(u64::from(r), body);
        }
        body.push(METADATA_KEY);
        put_varint(meta_len as u64, body);
        if metric_type != 0 {
            body.push(TYPE_KEY);
            put_varint(metric_type as u64, body);
        }
        if help != 0 {
            body.push(HELP_KEY);
            put_varint(u64::from(help), body);
        }
        payload(body);
    }
}

#[inline]
fn varint_len(n: u32) -> usize {
    encoded_len_varint(u64::from(n))
}

/// The (name, value) pairs of 1.0 label bytes written by `encode_label`.
struct LabelPairs<'a>(&'a [u8]);

impl<'a> Iterator for LabelPairs<'a> {
    type Item = (&'a [u8], &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        // Label field: key, length, then name field (key, length, bytes) and value field.
        let rest = self.0.get(1..)?;
        let (label_len, used) = read_varint(rest)?;
        let label = rest.get(used..used + label_len as usize)?;
        self.0 = &rest[used + label_len as usize..];
        let (name_len, used) = read_varint(label.get(1..)?)?;
        let name_end = 1 + used + name_len as usize;
        let name = label.get(1 + used..name_end)?;
        let (value_len, used) = read_varint(label.get(name_end + 1..)?)?;
        let value_at = name_end + 1 + used;
        let value = label.get(value_at..value_at + value_len as usize)?;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::encode::encode_labels as labels;
    use prost::Message;

    fn timestamp(ts: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(ts as u64, &mut out);
        out
    }

    fn request(symbols: &Symbols, body: &[u8]) -> v2::Request {
        let mut wire = symbols.encoded().to_vec();
        wire.extend_from_slice(body);
        v2::Request::decode(wire.as_slice()).unwrap()
    }

    fn family(name: &str, help: &str, kind: Kind) -> Family {
        Family::new(name, help, kind, Vec::new().into())
    }

    #[test]
    fn written_series_decode_with_the_generated_types_to_what_prost_would_send() {
        let mut writer = SeriesWriter::default();
        writer.describe(&[
            family("up", "Whether it is up.", Kind::Gauge),
            family("lat", "Latency.", Kind::Histogram),
        ]);
        let (mut body, mut symbols) = (Vec::new(), Symbols::default());
        let long = "x".repeat(300);
        let a = labels(&[("__name__", "up"), ("job", "codex-proxy")]);
        let b = labels(&[
            ("__name__", "lat_bucket"),
            ("job", "codex-proxy"),
            ("le", &long),
        ]);
        let c = labels(&[("__name__", "unknown"), ("job", "j")]);
        writer.write(
            &mut body,
            &mut symbols,
            &a,
            1.0,
            &timestamp(1_700_000_000_000),
        );
        writer.write(
            &mut body,
            &mut symbols,
            &b,
            -0.0,
            &timestamp(1_700_000_000_000),
        );
        writer.write(&mut body, &mut symbols, &c, f64::NAN, &timestamp(5));
        let got = request(&symbols, &body);

        let sym = |s: &str| got.symbols.iter().position(|x| x == s).unwrap() as u32;
        let series = |refs: &[&str], t: i32, help: &str, value: f64, ts: i64| v2::TimeSeries {
            labels_refs: refs.iter().map(|s| sym(s)).collect(),
            samples: vec![v2::Sample {
                value,
                timestamp: ts,
            }],
            metadata: Some(v2::Metadata {
                r#type: t,
                help_ref: sym(help),
                unit_ref: 0,
            }),
            ..Default::default()
        };
        let want = v2::Request {
            symbols: got.symbols.clone(),
            timeseries: vec![
                series(
                    &["__name__", "up", "job", "codex-proxy"],
                    2,
                    "Whether it is up.",
                    1.0,
                    1_700_000_000_000,
                ),
                series(
                    &["__name__", "lat_bucket", "job", "codex-proxy", "le", &long],
                    3,
                    "Latency.",
                    -0.0,
                    1_700_000_000_000,
                ),
                series(&["__name__", "unknown", "job", "j"], 0, "", f64::NAN, 5),
            ],
        };
        assert_eq!(got.symbols[0], "");
        let mut unique = got.symbols.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), got.symbols.len(), "each symbol once");
        // Prost's own encoding of the same message decodes to the same thing (NaN aside,
        // compared by bits).
        let again = v2::Request::decode(want.encode_to_vec().as_slice()).unwrap();
        assert_eq!(got.timeseries[..2], again.timeseries[..2]);
        assert_eq!(
            got.timeseries[2].labels_refs,
            again.timeseries[2].labels_refs
        );
        assert_eq!(got.timeseries[2].metadata, again.timeseries[2].metadata);
        assert!(got.timeseries[2].samples[0].value.is_nan());
        assert_eq!(
            got.timeseries[1].samples[0].value.to_bits(),
            (-0.0f64).to_bits()
        );
    }

    #[test]
    fn truncating_the_symbols_forgets_the_later_ones_and_reuses_their_places() {
        let mut writer = SeriesWriter::default();
        let (mut body, mut symbols) = (Vec::new(), Symbols::default());
        let ts = timestamp(7);
        writer.write(
            &mut body,
            &mut symbols,
            &labels(&[("__name__", "a")]),
            1.0,
            &ts,
        );
        let (kept_body, kept_symbols) = (body.len(), symbols.len());
        writer.write(
            &mut body,
            &mut symbols,
            &labels(&[("__name__", "b")]),
            1.0,
            &ts,
        );
        body.truncate(kept_body);
        symbols.truncate(kept_symbols);
        writer.write(
            &mut body,
            &mut symbols,
            &labels(&[("__name__", "c"), ("x", "a")]),
            2.0,
            &ts,
        );
        let got = request(&symbols, &body);
        assert_eq!(got.symbols, ["", "__name__", "a", "c", "x"]);
        assert_eq!(got.timeseries[1].labels_refs, [1, 3, 4, 2]);
    }
}
