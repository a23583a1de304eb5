//! Native histograms and exemplars for remote-write 1.0, in Prometheus' extensions of
//! `TimeSeries` (prompb/types.proto: field 3 `exemplars`, field 4 `histograms`).
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
//!   the native series. Prometheus 2.42 appends a `TimeSeries`' exemplars before its
//!   histograms, so an exemplar beside the first histogram of a new series would be
//!   dropped; in an entry of its own after the histogram's, the series exists. Only
//!   exemplars newer than the previous push are sent.
//! - A native series that disappears, and every one at shutdown, gets a histogram stale
//!   marker: a `Histogram` whose sum is the stale NaN (Prometheus' `value.IsStaleNaN` on
//!   `Histogram.sum`).

use bytes::Bytes;

use super::encode::{EncodeError, STALE_NAN_BITS};
use super::negotiate::Protocol;
use super::proto::{self, histogram, BucketSpan};
use super::queue::Batch;
use super::series::{External, GeneratedLabels, LabelScratch};
use super::wire::{key, put_varint};
use crate::config::HistogramMode;
use crate::exposition::names::is_valid_metric_name;
use crate::exposition::snapshot::{Exemplar, Family, Kind, NativeHistogram};
use crate::push::Snapshot;

/// `WriteRequest.timeseries`.
const SERIES_KEY: u8 = key(1, prost::encoding::WireType::LengthDelimited);

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
    pub(super) fn native_only(&self, family: &Family, protocol: Protocol) -> bool {
        self.mode == HistogramMode::Native
            && protocol == Protocol::V1
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

    /// The extra requests of a snapshot at `ts`; with `final_at`, then a stale marker for
    /// every native series at that time. Nothing in 2.0 (its histograms are not written).
    pub(super) fn convert(
        &mut self,
        snapshot: &Snapshot,
        external: &[External],
        protocol: Protocol,
        ts: i64,
        final_at: Option<i64>,
        max_series: usize,
    ) -> Result<Vec<Batch>, EncodeError> {
        let mut out = Out::new(max_series);
        if protocol != Protocol::V1 || (!self.sends_native() && !self.send_exemplars) {
            self.sent.clear();
            return Ok(out.batches);
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
            for (i, labels) in family.labels.iter().enumerate() {
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
                    out.series(&series, &[], Some(histogram(h, ts)), ts)?;
                    if self.mode == HistogramMode::Native {
                        if let Some(all) = metric_exemplars {
                            let mut mine: Vec<_> = all.iter().flatten().filter(fresh).collect();
                            mine.sort_by_key(|e| e.timestamp_ms);
                            if !mine.is_empty() {
                                out.series(&series, &mine, None, ts)?;
                            }
                        }
                    }
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
                    out.series(&series, &[e], None, ts)?;
                }
            }
        }
        let stale = |at| NativeHistogramStale(at).into();
        let previous = std::mem::replace(&mut self.sent, now);
        if !previous.is_empty() {
            let current: std::collections::HashSet<&[u8]> =
                self.sent.iter().map(Vec::as_slice).collect();
            for gone in previous.iter().filter(|s| !current.contains(s.as_slice())) {
                out.series(gone, &[], Some(stale(ts)), ts)?;
            }
        }
        out.flush()?;
        if let Some(at) = final_at {
            for series in std::mem::take(&mut self.sent) {
                out.series(&series, &[], Some(stale(at)), at)?;
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

/// The extra requests being written.
struct Out {
    max_series: usize,
    body: Vec<u8>,
    entry: Vec<u8>,
    series: usize,
    samples: u64,
    oldest_ms: i64,
    batches: Vec<Batch>,
}

impl Out {
    fn new(max_series: usize) -> Out {
        Out {
            max_series: max_series.max(1),
            body: Vec::new(),
            entry: Vec::new(),
            series: 0,
            samples: 0,
            oldest_ms: i64::MAX,
            batches: Vec::new(),
        }
    }

    /// One `TimeSeries`: `labels` (encoded `Label` fields), exemplars, a histogram.
    fn series(
        &mut self,
        labels: &[u8],
        exemplars: &[&Exemplar],
        histogram: Option<proto::Histogram>,
        at: i64,
    ) -> Result<(), EncodeError> {
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
        if let Some(h) = histogram {
            prost::encoding::message::encode(4, &h, &mut self.entry);
        }
        self.body.push(SERIES_KEY);
        put_varint(self.entry.len() as u64, &mut self.body);
        self.body.extend_from_slice(&self.entry);
        // The push's time, not an exemplar's: the order rule of `window.rs` knows a
        // snapshot's requests by it.
        self.oldest_ms = self.oldest_ms.min(at);
        self.series += 1;
        // A histogram or an exemplar counts as one sample.
        self.samples += 1;
        if self.series >= self.max_series {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), EncodeError> {
        if self.series == 0 {
            return Ok(());
        }
        let compressed = snap::raw::Encoder::new().compress_vec(&self.body)?;
        self.batches.push(Batch {
            body: Bytes::from(compressed),
            protocol: Protocol::V1,
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
}
