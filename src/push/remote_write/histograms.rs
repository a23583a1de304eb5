//! Native histograms and exemplars: in 1.0, Prometheus' extensions of `TimeSeries`
//! (prompb/types.proto: field 3 `exemplars`, field 4 `histograms`); in 2.0, the spec's own
//! fields (`TimeSeries.histograms` 3 and `exemplars` 4, exemplar labels in the symbol
//! table, metadata `HISTOGRAM`; `encode_v2.rs` writes them). The `Histogram` message has the
//! same field numbers and types in both, so one encoding of it serves both.
//!
//! They go in requests of their own, after a snapshot's classic series (same timestamp,
//! so the order rule of `window.rs` treats them as part of that snapshot), rather than
//! inside the series bodies that `requests.rs` overwrites in place: a histogram or an
//! exemplar has no fixed size, and the in-place path depends on one. The extra requests
//! hold few series (one per histogram metric), so their labels are merged again at each
//! push instead of being remembered.
//!
//! - A native series has the family's bare name (`codex_time_to_first_token_seconds{...}`)
//!   and one `Histogram` with integer counts.
//! - Exemplars ride in a `TimeSeries` of their own that has the labels of the series they
//!   belong to and no samples: the `_bucket{le}` series, or with `histograms = "native"`
//!   the native series. Prometheus 2.42 appends a 1.0 `TimeSeries`' exemplars before its
//!   histograms, so an exemplar beside the first histogram of a new series would be
//!   dropped; in an entry of its own after the histogram's, the series exists. In 2.0 a
//!   native series' exemplars go beside its histogram: Prometheus' 2.0 receiver appends
//!   them after it. Only exemplars newer than the previous push are sent.
//! - A native series that disappears, and every one at shutdown, gets a histogram stale
//!   marker: a `Histogram` whose sum is the stale NaN (Prometheus' `value.IsStaleNaN` on
//!   `Histogram.sum`).

use bytes::Bytes;

use super::encode::{EncodeError, STALE_NAN_BITS};
use super::encode_v2::{SeriesWriter, Symbols};
use super::negotiate::Protocol;
use super::proto::{self, histogram, BucketSpan};
use super::queue::Batch;
use super::series::{External, GeneratedLabels, LabelScratch};
use super::wire::{key, put_varint};
use crate::config::HistogramMode;
use crate::exposition::names::is_valid_metric_name;
use crate::exposition::snapshot::{Exemplar, Family, Kind, NativeHistogram};
use crate::push::Snapshot;

/// `WriteRequest.timeseries`; 1.0 `TimeSeries.histograms` (field 4).
const SERIES_KEY: u8 = key(1, prost::encoding::WireType::LengthDelimited);
const V1_HISTOGRAM_KEY: u8 = key(4, prost::encoding::WireType::LengthDelimited);

/// What a destination sends besides the classic series, and what it sent last time.
#[derive(Debug, Default)]
pub(super) struct Extras {
    pub(super) mode: HistogramMode,
    pub(super) send_exemplars: bool,
    /// The encoded labels of the native series of the previous push, in order.
    sent: Vec<Vec<u8>>,
    /// The previous push's timestamp: exemplars up to it were sent then.
    previous_ms: Option<i64>,
}

impl Extras {
    /// Whether `family`'s classic series are left out: `histograms = "native"` and the
    /// family has native buckets to send instead.
    pub(super) fn native_only(&self, family: &Family) -> bool {
        self.mode == HistogramMode::Native
            && family.kind == Kind::Histogram
            && !family.native.is_empty()
    }

    /// From now on classic only; the native series sent so far get no stale markers
    /// (the receiver stored none).
    pub(super) fn classic_only(&mut self) {
        self.mode = HistogramMode::Classic;
        self.sent.clear();
    }

    fn sends_native(&self) -> bool {
        self.mode != HistogramMode::Classic
    }

    /// The extra requests of a snapshot at `ts`, in `protocol`; with `final_at`, then a
    /// stale marker for every native series at that time.
    pub(super) fn convert(
        &mut self,
        snapshot: &Snapshot,
        external: &[External],
        protocol: Protocol,
        ts: i64,
        final_at: Option<i64>,
        max_series: usize,
    ) -> Result<Vec<Batch>, EncodeError> {
        let mut out = Out::new(max_series, protocol);
        if !self.sends_native() && !self.send_exemplars {
            self.sent.clear();
            return Ok(out.batches);
        }
        if protocol == Protocol::V2 {
            out.v2.describe(&snapshot.families);
        }
        let mut now = Vec::new();
        let mut scratch = LabelScratch::default();
        let since = self.previous_ms;
        for family in &snapshot.families {
            if family.kind != Kind::Histogram || !is_valid_metric_name(&family.name) {
                continue;
            }
            let native = self.sends_native() && !family.native.is_empty();
            let exemplars = self.send_exemplars && !family.exemplars.is_empty();
            if !native && !exemplars {
                continue;
            }
            let generated = GeneratedLabels::of(family);
            let per_metric = family.bounds.len() + 1;
            scratch.next_family();
            for (i, (labels, values)) in family.metrics().enumerate() {
                if !scratch.merge(labels, external, generated.bound_name) {
                    continue;
                }
                let fresh = |e: &&Exemplar| since.is_none_or(|s| e.timestamp_ms > s);
                let metric_exemplars = if exemplars {
                    family.exemplars.get(i * per_metric..(i + 1) * per_metric)
                } else {
                    None
                };
                if let Some(h) = native.then(|| family.native.get(i)).flatten() {
                    let series = scratch.series(&generated.plain, None).to_vec();
                    let mut mine = Vec::new();
                    if let (HistogramMode::Native, Some(all)) = (self.mode, metric_exemplars) {
                        mine.extend(all.iter().flatten().filter(fresh));
                        mine.sort_by_key(|e| e.timestamp_ms);
                    }
                    out.native(&series, Some(histogram(h, ts)), &mine, ts)?;
                    now.push(series);
                }
                if self.mode == HistogramMode::Native && native {
                    continue;
                }
                for (b, e) in metric_exemplars.into_iter().flatten().enumerate() {
                    let Some(e) = e.as_ref().filter(|e| fresh(e)) else {
                        continue;
                    };
                    let le = generated.bounds.get(b).unwrap_or(&generated.inf);
                    let series = scratch.series(&generated.bucket, Some(le)).to_vec();
                    // The bucket's count: the bounded ones, then `+Inf`, the count (the
                    // values end with sum and count).
                    let n = values.len().saturating_sub(2);
                    let count = if b < n {
                        values.get(b)
                    } else {
                        values.get(n + 1)
                    };
                    out.series(&series, count.copied(), &[e], None, ts)?;
                }
            }
        }
        let stale = |at| NativeHistogramStale(at).into();
        let previous = std::mem::replace(&mut self.sent, now);
        if !previous.is_empty() {
            let current: std::collections::HashSet<&[u8]> =
                self.sent.iter().map(Vec::as_slice).collect();
            for gone in previous.iter().filter(|s| !current.contains(s.as_slice())) {
                out.series(gone, None, &[], Some(stale(ts)), ts)?;
            }
        }
        out.flush()?;
        if let Some(at) = final_at {
            for series in std::mem::take(&mut self.sent) {
                out.series(&series, None, &[], Some(stale(at)), at)?;
            }
            out.flush()?;
        }
        self.previous_ms = Some(final_at.unwrap_or(ts));
        Ok(out.batches)
    }
}

/// The stale marker of a native series at a time.
struct NativeHistogramStale(i64);

impl From<NativeHistogramStale> for proto::Histogram {
    fn from(NativeHistogramStale(at): NativeHistogramStale) -> proto::Histogram {
        proto::Histogram {
            count: Some(histogram::Count::CountInt(0)),
            sum: f64::from_bits(STALE_NAN_BITS),
            zero_count: Some(histogram::ZeroCount::ZeroCountInt(0)),
            timestamp: at,
            ..Default::default()
        }
    }
}

/// A native histogram in prompb's form, integer counts.
fn histogram(h: &NativeHistogram, ts: i64) -> proto::Histogram {
    proto::Histogram {
        count: Some(histogram::Count::CountInt(h.count)),
        sum: h.sum,
        schema: h.schema,
        zero_threshold: h.zero_threshold,
        zero_count: Some(histogram::ZeroCount::ZeroCountInt(h.zero_count)),
        positive_spans: (h.spans.iter())
            .map(|&(offset, length)| BucketSpan { offset, length })
            .collect(),
        positive_deltas: h.deltas.clone(),
        timestamp: ts,
        ..Default::default()
    }
}

/// The extra requests being written, in one protocol.
struct Out {
    max_series: usize,
    protocol: Protocol,
    /// 2.0: the series' metadata, and the request's symbols.
    v2: SeriesWriter,
    symbols: Symbols,
    /// 2.0: the last sample timestamp and its varint.
    timestamp: (i64, Vec<u8>),
    body: Vec<u8>,
    entry: Vec<u8>,
    series: usize,
    samples: u64,
    oldest_ms: i64,
    batches: Vec<Batch>,
}

impl Out {
    fn new(max_series: usize, protocol: Protocol) -> Out {
        Out {
            max_series: max_series.max(1),
            protocol,
            v2: SeriesWriter::default(),
            symbols: Symbols::default(),
            timestamp: (0, Vec::new()),
            body: Vec::new(),
            entry: Vec::new(),
            series: 0,
            samples: 0,
            oldest_ms: i64::MAX,
            batches: Vec::new(),
        }
    }

    /// A native series' histogram and the exemplars of its buckets: in 1.0 the exemplars
    /// in an entry of their own after the histogram's (see the module's doc), in 2.0
    /// beside it.
    fn native(
        &mut self,
        labels: &[u8],
        histogram: Option<proto::Histogram>,
        exemplars: &[&Exemplar],
        at: i64,
    ) -> Result<(), EncodeError> {
        if self.protocol == Protocol::V2 {
            return self.series(labels, None, exemplars, histogram, at);
        }
        self.series(labels, None, &[], histogram, at)?;
        if !exemplars.is_empty() {
            self.series(labels, None, exemplars, None, at)?;
        }
        Ok(())
    }

    /// One `TimeSeries`: `labels` (encoded 1.0 `Label` fields), exemplars, a histogram.
    /// `sample` is the value at `at` of the series whose exemplars these are: 2.0 wants a
    /// sample or a histogram in every series, and the same value at the same time again is
    /// no new point; 1.0 leaves it out (Prometheus takes exemplars alone there).
    fn series(
        &mut self,
        labels: &[u8],
        sample: Option<f64>,
        exemplars: &[&Exemplar],
        histogram: Option<proto::Histogram>,
        at: i64,
    ) -> Result<(), EncodeError> {
        // The `Histogram` message has the same fields in 1.0 and 2.0: one encoding serves.
        let histogram = histogram.map(|h| prost::Message::encode_to_vec(&h));
        match self.protocol {
            Protocol::V1 => {
                self.entry.clear();
                self.entry.extend_from_slice(labels);
                for e in exemplars {
                    let exemplar = proto::Exemplar {
                        labels: (e.labels.iter())
                            .map(|(name, value)| proto::Label {
                                name: (*name).to_string(),
                                value: value.clone(),
                            })
                            .collect(),
                        value: e.value,
                        timestamp: e.timestamp_ms,
                    };
                    prost::encoding::message::encode(3, &exemplar, &mut self.entry);
                }
                if let Some(h) = &histogram {
                    self.entry.push(V1_HISTOGRAM_KEY);
                    put_varint(h.len() as u64, &mut self.entry);
                    self.entry.extend_from_slice(h);
                }
                self.body.push(SERIES_KEY);
                put_varint(self.entry.len() as u64, &mut self.body);
                self.body.extend_from_slice(&self.entry);
            }
            Protocol::V2 => {
                if self.timestamp.0 != at || self.timestamp.1.is_empty() {
                    self.timestamp.1.clear();
                    put_varint(at as u64, &mut self.timestamp.1);
                    self.timestamp.0 = at;
                }
                let sample = sample.map(|v| (v, self.timestamp.1.as_slice()));
                let (body, symbols) = (&mut self.body, &mut self.symbols);
                (self.v2).write_native(
                    body,
                    symbols,
                    labels,
                    sample,
                    histogram.as_deref(),
                    exemplars,
                );
                self.samples += u64::from(sample.is_some());
            }
        }
        // The push's time, not an exemplar's: the order rule of `window.rs` knows a
        // snapshot's requests by it.
        self.oldest_ms = self.oldest_ms.min(at);
        self.series += 1;
        // A histogram and each exemplar count as one sample, as the 2.0 receiver's
        // `*-Written` headers count them.
        self.samples += u64::from(histogram.is_some()) + exemplars.len() as u64;
        if self.series >= self.max_series {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EncodeError> {
        if self.series == 0 {
            return Ok(());
        }
        if self.protocol == Protocol::V2 {
            // The symbol table goes first; the request's series follow it.
            let mut wire = self.symbols.encoded().to_vec();
            wire.extend_from_slice(&self.body);
            self.body = wire;
            self.symbols.clear();
        }
        let compressed = snap::raw::Encoder::new().compress_vec(&self.body)?;
        self.batches.push(Batch {
            body: Bytes::from(compressed),
            protocol: self.protocol,
            samples: self.samples,
            oldest_timestamp_ms: self.oldest_ms,
        });
        self.body.clear();
        self.series = 0;
        self.samples = 0;
        self.oldest_ms = i64::MAX;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::exposition::snapshot::Labels;
    use crate::push::remote_write::encode::decode;
    use crate::push::remote_write::proto::TimeSeries;
    use crate::push::remote_write::series::SeriesState;

    const NOW: i64 = 1_700_000_000_000;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(n, v)| (Box::from(*n), Box::from(*v)))
            .collect::<Vec<_>>()
            .into()
    }

    fn exemplar(id: &str, value: f64, at: i64) -> Option<Exemplar> {
        Some(Exemplar {
            labels: vec![("request_id", id.to_string())],
            value,
            timestamp_ms: at,
        })
    }

    /// `ttft_seconds{route="/v1"}`, classic bounds 0.1 and 1, two observations (0.3 and
    /// 2) and an exemplar in the `le="1"` bucket; `metrics` metrics of it.
    fn snapshot(metrics: usize, exemplar_at: i64) -> Snapshot {
        let mut f = Family::new("ttft_seconds", "h", Kind::Histogram, Arc::from([0.1, 1.0]));
        for i in 0..metrics {
            f.push(
                labels(&[("route", &format!("/v{i}"))]),
                &[0.0, 1.0, 2.3, 2.0],
            );
            f.native.push(NativeHistogram {
                schema: 3,
                zero_threshold: 2.938735877055719e-39,
                zero_count: 0,
                count: 2,
                sum: 2.3,
                spans: vec![(-14, 1), (21, 1)],
                deltas: vec![1, 0],
            });
            f.exemplars
                .extend([None, exemplar(&format!("req-{i}"), 0.3, exemplar_at), None]);
        }
        Snapshot { families: vec![f] }
    }

    fn state(mode: HistogramMode, exemplars: bool) -> SeriesState {
        SeriesState::new(&BTreeMap::new(), "i:1", 1000).with_histograms(mode, exemplars)
    }

    fn series(batches: &[Batch]) -> Vec<TimeSeries> {
        batches
            .iter()
            .flat_map(|b| decode(&b.body).unwrap().timeseries)
            .collect()
    }

    fn name(s: &TimeSeries) -> String {
        let l = |n: &str| {
            s.labels
                .iter()
                .find(|l| l.name == n)
                .map(|l| l.value.clone())
        };
        match l("le") {
            Some(le) => format!("{}{{le={le}}}", l("__name__").unwrap()),
            None => l("__name__").unwrap(),
        }
    }

    #[test]
    fn native_mode_sends_one_native_series_per_metric_and_no_classic_series() {
        let out = state(HistogramMode::Native, false)
            .convert(&snapshot(1, NOW - 5), NOW)
            .unwrap();
        let all = series(&out.batches);
        let names: Vec<_> = all.iter().map(name).collect();
        assert_eq!(names, ["ttft_seconds"]);
        let s = &all[0];
        assert!(s.samples.is_empty() && s.exemplars.is_empty());
        let labels: Vec<_> = (s.labels.iter()).map(|l| (&*l.name, &*l.value)).collect();
        assert_eq!(
            labels,
            [
                ("__name__", "ttft_seconds"),
                ("instance", "i:1"),
                ("job", "codex-proxy"),
                ("route", "/v0")
            ]
        );
        let h = &s.histograms[0];
        assert_eq!(h.count, Some(histogram::Count::CountInt(2)));
        assert_eq!(h.zero_count, Some(histogram::ZeroCount::ZeroCountInt(0)));
        assert_eq!((h.sum, h.schema, h.timestamp), (2.3, 3, NOW));
        assert_eq!(h.zero_threshold, 2.938735877055719e-39);
        let spans: Vec<_> = (h.positive_spans.iter())
            .map(|s| (s.offset, s.length))
            .collect();
        assert_eq!(spans, [(-14, 1), (21, 1)]);
        assert_eq!(h.positive_deltas, [1, 0]);
        assert!(h.negative_spans.is_empty() && h.positive_counts.is_empty());
        assert!(out.batches.iter().all(|b| b.oldest_timestamp_ms == NOW));
    }

    #[test]
    fn both_sends_classic_then_native_and_classic_sends_no_extension_fields() {
        let out = state(HistogramMode::Both, false)
            .convert(&snapshot(1, NOW - 5), NOW)
            .unwrap();
        let names: Vec<_> = series(&out.batches).iter().map(name).collect();
        assert_eq!(
            names,
            [
                "ttft_seconds_bucket{le=0.1}",
                "ttft_seconds_bucket{le=1}",
                "ttft_seconds_bucket{le=+Inf}",
                "ttft_seconds_sum",
                "ttft_seconds_count",
                "ttft_seconds"
            ]
        );
        let classic = state(HistogramMode::Classic, false)
            .convert(&snapshot(1, NOW - 5), NOW)
            .unwrap();
        let all = series(&classic.batches);
        assert_eq!(all.len(), 5);
        assert!(all
            .iter()
            .all(|s| s.histograms.is_empty() && s.exemplars.is_empty()));
    }

    #[test]
    fn exemplars_go_on_the_bucket_series_once_each_or_on_the_native_series_in_native_mode() {
        let mut both = state(HistogramMode::Both, true);
        let all = series(&both.convert(&snapshot(1, NOW - 5), NOW).unwrap().batches);
        let with: Vec<_> = all.iter().filter(|s| !s.exemplars.is_empty()).collect();
        assert_eq!(with.len(), 1);
        assert_eq!(name(with[0]), "ttft_seconds_bucket{le=1}");
        assert!(with[0].samples.is_empty() && with[0].histograms.is_empty());
        let e = &with[0].exemplars[0];
        assert_eq!((e.value, e.timestamp), (0.3, NOW - 5));
        assert_eq!(
            (&*e.labels[0].name, &*e.labels[0].value),
            ("request_id", "req-0")
        );
        // The same exemplar at the next push: not sent again.
        let again = series(
            &both
                .convert(&snapshot(1, NOW - 5), NOW + 1000)
                .unwrap()
                .batches,
        );
        assert!(again.iter().all(|s| s.exemplars.is_empty()));

        let all = series(
            &state(HistogramMode::Native, true)
                .convert(&snapshot(1, NOW - 5), NOW)
                .unwrap()
                .batches,
        );
        // The histogram first, then its exemplar in an entry of its own.
        assert_eq!(all.len(), 2);
        assert_eq!(name(&all[1]), "ttft_seconds");
        assert_eq!(all[0].labels, all[1].labels);
        assert!(!all[0].histograms.is_empty() && all[0].exemplars.is_empty());
        assert_eq!(all[1].exemplars[0].labels[0].value, "req-0");
    }

    #[test]
    fn a_native_series_that_disappears_or_ends_at_shutdown_gets_a_histogram_stale_marker() {
        let mut s = state(HistogramMode::Native, false);
        s.convert(&snapshot(2, NOW - 5), NOW).unwrap();
        let all = series(
            &s.convert(&snapshot(1, NOW - 5), NOW + 1000)
                .unwrap()
                .batches,
        );
        assert_eq!(all.len(), 2);
        let stale = &all[1].histograms[0];
        assert_eq!(all[1].labels.last().unwrap().value, "/v1");
        assert_eq!(stale.sum.to_bits(), STALE_NAN_BITS);
        assert_eq!(stale.timestamp, NOW + 1000);
        let all = series(
            &s.convert_final(&snapshot(1, NOW - 5), NOW + 2000)
                .unwrap()
                .batches,
        );
        let stale: Vec<_> = all
            .iter()
            .filter(|t| t.histograms[0].sum.to_bits() == STALE_NAN_BITS)
            .collect();
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].histograms[0].timestamp, NOW + 2001);
    }

    #[test]
    fn classic_only_turns_native_mode_back_into_classic_series() {
        let mut s = state(HistogramMode::Native, false);
        s.convert(&snapshot(1, NOW - 5), NOW).unwrap();
        s.classic_only();
        assert_eq!(s.histogram_mode(), HistogramMode::Classic);
        let all = series(
            &s.convert(&snapshot(1, NOW - 5), NOW + 1000)
                .unwrap()
                .batches,
        );
        let names: Vec<_> = all.iter().map(name).collect();
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(all.iter().all(|t| t.histograms.is_empty()));
    }

    /// The 2.0 requests of a conversion, decoded, with their symbols resolved.
    fn v2_series(batches: &[Batch]) -> Vec<(Vec<(String, String)>, proto::v2::TimeSeries)> {
        use prost::Message;
        let mut out = Vec::new();
        for b in batches {
            assert_eq!(b.protocol, Protocol::V2);
            let raw = snap::raw::Decoder::new().decompress_vec(&b.body).unwrap();
            let request = proto::v2::Request::decode(raw.as_slice()).unwrap();
            assert_eq!(request.symbols[0], "");
            let sym = |r: &u32| request.symbols[*r as usize].clone();
            for ts in request.timeseries {
                let labels = (ts.labels_refs.chunks(2))
                    .map(|p| (sym(&p[0]), sym(&p[1])))
                    .collect();
                out.push((labels, ts));
            }
        }
        out
    }

    #[test]
    fn in_2_0_a_native_series_carries_its_histogram_exemplars_and_histogram_metadata() {
        use proto::v2::histogram::{Count, ZeroCount};
        let mut s = state(HistogramMode::Native, true);
        s.set_protocol(Protocol::V2);
        let mut snap = snapshot(1, NOW - 5);
        snap.families[0].exemplars[0] = Some(Exemplar {
            labels: vec![
                ("span_id", "00f067aa0ba902b7".into()),
                ("trace_id", "4bf9".into()),
            ],
            value: 0.05,
            timestamp_ms: NOW - 9,
        });
        let out = s.convert(&snap, NOW).unwrap();
        let all = v2_series(&out.batches);
        assert_eq!(
            all.len(),
            1,
            "no classic series, the exemplars beside the histogram"
        );
        let (labels, ts) = &all[0];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (&**n, &**v)).collect();
        assert_eq!(
            labels,
            [
                ("__name__", "ttft_seconds"),
                ("instance", "i:1"),
                ("job", "codex-proxy"),
                ("route", "/v0")
            ]
        );
        assert!(ts.samples.is_empty());
        let meta = ts.metadata.as_ref().unwrap();
        assert_eq!(
            meta.r#type,
            proto::v2::metadata::MetricType::Histogram as i32
        );
        let h = &ts.histograms[0];
        assert_eq!(h.count, Some(Count::CountInt(2)));
        assert_eq!(h.zero_count, Some(ZeroCount::ZeroCountInt(0)));
        assert_eq!((h.sum, h.schema, h.timestamp), (2.3, 3, NOW));
        assert_eq!(h.zero_threshold, 2.938735877055719e-39);
        let spans: Vec<_> = (h.positive_spans.iter())
            .map(|s| (s.offset, s.length))
            .collect();
        assert_eq!(spans, [(-14, 1), (21, 1)]);
        assert_eq!(h.positive_deltas, [1, 0]);
        assert!(h.negative_spans.is_empty() && h.positive_counts.is_empty());
        assert_eq!(h.reset_hint, 0);
        // Oldest first; labels through the symbol table, sorted by name.
        let raw = snap::raw::Decoder::new()
            .decompress_vec(&out.batches[0].body)
            .unwrap();
        let symbols = <proto::v2::Request as prost::Message>::decode(raw.as_slice())
            .unwrap()
            .symbols;
        let exemplars: Vec<_> = (ts.exemplars.iter())
            .map(|e| {
                let l: Vec<&str> = e
                    .labels_refs
                    .iter()
                    .map(|r| &*symbols[*r as usize])
                    .collect();
                (l, e.value, e.timestamp)
            })
            .collect();
        assert_eq!(
            exemplars,
            [
                (
                    vec!["span_id", "00f067aa0ba902b7", "trace_id", "4bf9"],
                    0.05,
                    NOW - 9
                ),
                (vec!["request_id", "req-0"], 0.3, NOW - 5),
            ]
        );
        assert_eq!(out.batches[0].samples, 3, "a histogram and two exemplars");

        // Gone at the next push: a histogram stale marker, with its metadata.
        let out = s
            .convert(&Snapshot { families: vec![] }, NOW + 1000)
            .unwrap();
        let all = v2_series(&out.batches);
        let h = &all[0].1.histograms[0];
        assert_eq!((h.sum.to_bits(), h.timestamp), (STALE_NAN_BITS, NOW + 1000));
    }

    #[test]
    fn in_2_0_both_sends_classic_and_native_and_bucket_exemplars_on_their_bucket() {
        let mut s = state(HistogramMode::Both, true);
        s.set_protocol(Protocol::V2);
        let out = s.convert(&snapshot(1, NOW - 5), NOW).unwrap();
        assert!(out.batches.iter().all(|b| b.protocol == Protocol::V2));
        let all = v2_series(&out.batches);
        let name = |l: &[(String, String)]| {
            let get = |n: &str| l.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
            match get("le") {
                Some(le) => format!("{}{{le={le}}}", get("__name__").unwrap()),
                None => get("__name__").unwrap(),
            }
        };
        let names: Vec<_> = all.iter().map(|(l, _)| name(l)).collect();
        assert_eq!(
            names,
            [
                "ttft_seconds_bucket{le=0.1}",
                "ttft_seconds_bucket{le=1}",
                "ttft_seconds_bucket{le=+Inf}",
                "ttft_seconds_sum",
                "ttft_seconds_count",
                "ttft_seconds",
                "ttft_seconds_bucket{le=1}",
            ]
        );
        assert!(all[5].1.exemplars.is_empty() && all[5].1.histograms.len() == 1);
        let bucket = &all[6].1;
        // 2.0 wants a sample or a histogram in every series: the bucket's own, again.
        assert!(bucket.histograms.is_empty());
        let sample = &bucket.samples[..];
        assert_eq!(
            (sample.len(), sample[0].value, sample[0].timestamp),
            (1, 1.0, NOW)
        );
        let e = &bucket.exemplars[0];
        assert_eq!((e.value, e.timestamp), (0.3, NOW - 5));
        assert_eq!(out.batches.last().unwrap().samples, 1 + 1 + 1);
        let histogram = proto::v2::metadata::MetricType::Histogram as i32;
        assert!(all
            .iter()
            .all(|(_, t)| t.metadata.as_ref().unwrap().r#type == histogram));
    }
}
