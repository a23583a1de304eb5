//! Snapshot → remote-write series, for one destination.
//!
//! Each metric of a snapshot's family becomes one or more series, the way the text format
//! would show it: counters, gauges and untyped metrics one series; histograms
//! `_bucket{le}` (with `le="+Inf"`, the count, always present), `_sum` and `_count`;
//! summaries `{quantile}`, `_sum` and `_count`. Every series gets the destination's
//! external labels (a label of the metric wins over an external one of the same name),
//! labels with empty values are left out, and the rest are sorted by name, unique, with
//! `__name__` in its place. Every sample of a snapshot gets the same timestamp, strictly
//! greater than the previous snapshot's, even if the clock stalls or steps back, so that
//! per series the timestamps always increase.
//!
//! A series present in the previous snapshot and missing from this one gets a stale
//! marker; the final snapshot at shutdown is followed by one for every series.
//!
//! Pushed once a second, most of a snapshot is the previous one with new values. A metric
//! whose labels are the same `Arc` as in the previous snapshot, in the same family at the
//! same place, has the same series as then: they are taken as they were (no merging,
//! encoding or comparing of labels; `FamilyMemo`), and as long as every series so far
//! came so, the encoder overwrites only their values and timestamp in the previous
//! request bodies (`RequestEncoder::replay`). Anything else takes the full path, which
//! the unit tests hold equal to a conversion from scratch.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::encode::{encode_label, EncodeError, RequestEncoder, STALE_NAN_BITS};
use super::queue::Batch;
use super::staleness::{Seen, Tracking};
use crate::exposition::names::{is_valid_label_name, is_valid_metric_name};
use crate::exposition::snapshot::{Family, Kind, Labels};
use crate::push::Snapshot;

/// The label that holds the metric name.
const NAME: &str = "__name__";

/// `job` when the configuration gives none.
pub const DEFAULT_JOB: &str = "codex-proxy";

/// The requests one snapshot became, in the order they must be sent.
#[derive(Debug, Default)]
pub struct Converted {
    pub batches: Vec<Batch>,
    /// Samples left out because a metric or label name is not valid for remote-write.
    pub invalid_samples: u64,
}

/// What one destination remembers between snapshots.
pub struct SeriesState {
    /// Sorted by name, non-empty values.
    external: Vec<External>,
    max_series_per_request: usize,
    last_timestamp_ms: Option<i64>,
    /// The series of the previous snapshot.
    seen: Seen,
    /// Kept for its buffers and for the previous conversion's bodies (`RequestEncoder::replay`).
    encoder: RequestEncoder,
    /// What the previous conversion made of each family, in snapshot order.
    memo: Vec<FamilyMemo>,
    /// Whether the encoder's bodies of the previous conversion hold its series in the
    /// order of `seen` (see [`RequestEncoder::begin`]).
    replayable: bool,
}

/// An external label, encoded once: every series carries it.
struct External {
    name: String,
    encoded: Vec<u8>,
}

impl SeriesState {
    /// `external_labels` as configured; `job` and `instance` default to `codex-proxy` and
    /// `instance` (the listen address) when not given.
    pub fn new(
        external_labels: &BTreeMap<String, String>,
        instance: &str,
        max_series_per_request: usize,
    ) -> SeriesState {
        let mut labels = external_labels.clone();
        labels
            .entry("job".to_string())
            .or_insert_with(|| DEFAULT_JOB.to_string());
        labels
            .entry("instance".to_string())
            .or_insert_with(|| instance.to_string());
        let external = labels
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(name, value)| {
                let mut encoded = Vec::new();
                encode_label(&name, &value, &mut encoded);
                External { name, encoded }
            })
            .collect();
        SeriesState {
            external,
            max_series_per_request: max_series_per_request.max(1),
            last_timestamp_ms: None,
            seen: Seen::default(),
            encoder: RequestEncoder::default(),
            memo: Vec::new(),
            replayable: false,
        }
    }

    /// A regular push: the snapshot's series at one timestamp, then stale markers for the
    /// series that disappeared since the previous call.
    pub fn convert(&mut self, snapshot: &Snapshot, now_ms: i64) -> Result<Converted, EncodeError> {
        self.convert_inner(snapshot, now_ms, false)
    }

    /// The push at shutdown: like [`convert`](Self::convert), then a stale marker for every
    /// series, one millisecond later, in requests of their own.
    pub fn convert_final(
        &mut self,
        snapshot: &Snapshot,
        now_ms: i64,
    ) -> Result<Converted, EncodeError> {
        self.convert_inner(snapshot, now_ms, true)
    }

    fn next_timestamp(&mut self, now_ms: i64) -> i64 {
        let ts = match self.last_timestamp_ms {
            Some(last) if now_ms <= last => last + 1,
            _ => now_ms,
        };
        self.last_timestamp_ms = Some(ts);
        ts
    }

    fn convert_inner(
        &mut self,
        snapshot: &Snapshot,
        now_ms: i64,
        final_push: bool,
    ) -> Result<Converted, EncodeError> {
        let ts = self.next_timestamp(now_ms);
        self.encoder.begin(ts, std::mem::take(&mut self.replayable));
        let mut conversion = Conversion {
            external: &self.external,
            scratch: LabelScratch::default(),
            tracking: self.seen.track(),
            out: Output {
                encoder: &mut self.encoder,
                batches: Vec::new(),
                max: self.max_series_per_request,
                sent: 0,
            },
            ts,
            invalid_samples: 0,
        };
        // Taken out first: if encoding fails half-way, the next conversion starts without
        // a memo, which is always correct.
        let mut previous = std::mem::take(&mut self.memo).into_iter();
        let mut memo = Vec::with_capacity(snapshot.families.len());
        for family in &snapshot.families {
            let before = previous.next().filter(|m| m.describes(family));
            memo.push(conversion.family(family, before)?);
        }
        let Conversion {
            tracking,
            mut out,
            invalid_samples,
            ..
        } = conversion;
        // The encoder's series are this snapshot's, in order, unless a label set was sent
        // untracked (a hash collision, see staleness.rs): only then can it not replay them.
        let replayable = out.sent == tracking.position() && !final_push;
        let stale = f64::from_bits(STALE_NAN_BITS);
        tracking.finish(|gone| out.push(gone, stale, ts))?;
        if final_push {
            out.flush()?;
            let at = ts + 1;
            for series in self.seen.iter() {
                out.push(series, stale, at)?;
            }
            self.seen.forget();
            self.last_timestamp_ms = Some(at);
            memo.clear();
        }
        let batches = out.finish()?;
        self.memo = memo;
        self.replayable = replayable;
        Ok(Converted {
            batches,
            invalid_samples,
        })
    }
}

/// Series → batches of at most `max` series each.
struct Output<'e> {
    encoder: &'e mut RequestEncoder,
    batches: Vec<Batch>,
    max: usize,
    /// Series sent so far.
    sent: usize,
}

impl Output<'_> {
    fn push(&mut self, labels: &[u8], value: f64, ts: i64) -> Result<(), EncodeError> {
        self.encoder.push(labels, value, ts);
        self.sent += 1;
        if self.encoder.len() >= self.max {
            self.flush()?;
        }
        Ok(())
    }

    /// The next series of the previous conversion again, with `value`, if the encoder is
    /// replaying it; false if not.
    fn replay(&mut self, value: f64) -> Result<bool, EncodeError> {
        if !self.encoder.replay(value) {
            return Ok(false);
        }
        self.sent += 1;
        if self.encoder.len() >= self.max {
            self.flush()?;
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<(), EncodeError> {
        if let Some(batch) = self.encoder.finish()? {
            self.batches.push(batch);
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Vec<Batch>, EncodeError> {
        self.flush()?;
        Ok(self.batches)
    }
}

/// What a conversion made of one family, kept for the next conversion: a metric whose labels
/// are the same `Arc` as last time (the live series' own, for the proxy's families) has the
/// same series as last time, so their encoded labels are taken from the previous snapshot's
/// series instead of being merged, encoded and compared again. Only valid together with the
/// series list it points into ([`Seen`]), which is replaced at the same moment.
struct FamilyMemo {
    name: String,
    kind: Kind,
    bounds: Arc<[f64]>,
    /// Encoded at the first metric that needs its labels encoded.
    generated: Option<GeneratedLabels>,
    /// Per metric, in order; `None` when not every series of it was added (a name not
    /// valid, a label set already sent in this snapshot).
    metrics: Vec<Option<MetricMemo>>,
}

struct MetricMemo {
    /// A clone: while it is held, no other label set can be allocated at its address, so a
    /// metric with the same pointer has these very labels.
    labels: Labels,
    /// Where its series start in the snapshot's list of series.
    first: usize,
}

impl FamilyMemo {
    /// Whether `family` yields the same generated labels: same name, kind and bounds (by
    /// bits: `0` and `-0` are written differently).
    fn describes(&self, family: &Family) -> bool {
        self.name == family.name
            && self.kind == family.kind
            && (Arc::ptr_eq(&self.bounds, &family.bounds)
                || (self.bounds.len() == family.bounds.len()
                    && (self.bounds.iter().zip(family.bounds.iter()))
                        .all(|(a, b)| a.to_bits() == b.to_bits())))
    }
}

/// One snapshot's conversion in progress.
struct Conversion<'t, 'o, 'x> {
    external: &'x [External],
    scratch: LabelScratch<'x>,
    tracking: Tracking<'t>,
    out: Output<'o>,
    ts: i64,
    /// Samples left out because a metric or label name is not valid.
    invalid_samples: u64,
}

impl<'x> Conversion<'_, '_, 'x> {
    /// Emits every series of `family`; `before` is what the previous conversion made of
    /// it, if it was the same family at the same place.
    fn family(
        &mut self,
        family: &'x Family,
        before: Option<FamilyMemo>,
    ) -> Result<FamilyMemo, EncodeError> {
        let (generated, before) = before.map_or((None, Vec::new()), |b| (b.generated, b.metrics));
        let mut memo = FamilyMemo {
            name: family.name.clone(),
            kind: family.kind,
            bounds: family.bounds.clone(),
            generated,
            metrics: Vec::with_capacity(family.labels.len()),
        };
        let per_metric = family.samples_per_metric();
        if !is_valid_metric_name(&family.name) {
            self.invalid_samples += (family.labels.len() * per_metric) as u64;
            return Ok(memo);
        }
        self.scratch.next_family();
        for (i, (labels, values)) in family.metrics().enumerate() {
            let first = self.tracking.position();
            let unchanged = (before.get(i))
                .and_then(Option::as_ref)
                .filter(|m| Arc::ptr_eq(&m.labels, labels));
            let repeated = match unchanged {
                Some(m) => self.repeat(m.first, per_metric, family.kind, values)?,
                None => false,
            };
            if !repeated {
                let generated = memo
                    .generated
                    .get_or_insert_with(|| GeneratedLabels::of(family));
                if !(self.scratch).merge(labels, self.external, generated.bound_name) {
                    self.invalid_samples += per_metric as u64;
                    memo.metrics.push(None);
                    continue;
                }
                let names = generated.series(family.kind);
                for ((name, extra), v) in names.zip(metric_values(family.kind, values)) {
                    let l = self.scratch.series(name, extra);
                    // The same label set twice in one request at one timestamp makes a
                    // strict receiver reject the whole request; keep the first.
                    if self.tracking.add(l) {
                        self.out.push(l, v, self.ts)?;
                    }
                }
            }
            let complete = self.tracking.position() - first == per_metric;
            memo.metrics.push(complete.then(|| MetricMemo {
                labels: labels.clone(),
                first,
            }));
        }
        Ok(memo)
    }

    /// Sends a metric's `values` with the previous snapshot's `count` series from `first`
    /// on, if they are next in line; false if not.
    fn repeat(
        &mut self,
        first: usize,
        count: usize,
        kind: Kind,
        values: &[f64],
    ) -> Result<bool, EncodeError> {
        if !self.tracking.repeat(first, count) {
            return Ok(false);
        }
        for (i, v) in (first..first + count).zip(metric_values(kind, values)) {
            if !self.out.replay(v)? {
                self.out.push(self.tracking.previous(i), v, self.ts)?;
            }
        }
        Ok(true)
    }
}

/// A metric's values in the order of its series (see [`GeneratedLabels::series`]).
fn metric_values(kind: Kind, values: &[f64]) -> impl Iterator<Item = f64> + '_ {
    let (bounded, tail) = match kind {
        Kind::Counter | Kind::Gauge | Kind::Untyped => {
            (&values[..0], [Some(values[0]), None, None])
        }
        Kind::Histogram | Kind::Summary => {
            let n = values.len() - 2;
            let (sum, count) = (values[n], values[n + 1]);
            let tail = if kind == Kind::Histogram {
                // `le="+Inf"` is the count.
                [Some(count), Some(sum), Some(count)]
            } else {
                [Some(sum), Some(count), None]
            };
            (&values[..n], tail)
        }
    };
    bounded.iter().copied().chain(tail.into_iter().flatten())
}

/// A series' encoded `__name__` label, and its `le` or `quantile` label if it has one.
type SeriesNames<'g> = (&'g [u8], Option<&'g [u8]>);

/// The labels a family's series get besides the metric's own, encoded once per family:
/// `__name__` of each kind of series, and `le` or `quantile` of each bound.
struct GeneratedLabels {
    plain: Vec<u8>,
    bucket: Vec<u8>,
    sum: Vec<u8>,
    count: Vec<u8>,
    /// `le` for a histogram, `quantile` for a summary.
    bound_name: Option<&'static str>,
    /// `bound_name` of each finite bucket or quantile.
    bounds: Vec<Vec<u8>>,
    /// `le="+Inf"`.
    inf: Vec<u8>,
}

impl GeneratedLabels {
    /// The `__name__` label and the `le` or `quantile` label of each series of a metric,
    /// in the order of the text format: counters, gauges one series; histograms a bucket
    /// per bound, `+Inf`, sum, count; summaries a series per quantile, sum, count.
    fn series(&self, kind: Kind) -> impl Iterator<Item = SeriesNames<'_>> {
        let (bounded, tail): (&[u8], [Option<SeriesNames<'_>>; 3]) = match kind {
            Kind::Counter | Kind::Gauge | Kind::Untyped => {
                (&self.plain, [Some((&self.plain, None)), None, None])
            }
            Kind::Histogram => (
                &self.bucket,
                [
                    Some((&self.bucket, Some(&self.inf))),
                    Some((&self.sum, None)),
                    Some((&self.count, None)),
                ],
            ),
            Kind::Summary => (
                &self.plain,
                [Some((&self.sum, None)), Some((&self.count, None)), None],
            ),
        };
        let bounds = self.bounds.iter();
        bounds
            .map(move |b| (bounded, Some(b.as_slice())))
            .chain(tail.into_iter().flatten())
    }

    fn of(family: &Family) -> GeneratedLabels {
        let label = |name: &str, value: &str| {
            let mut out = Vec::new();
            encode_label(name, value, &mut out);
            out
        };
        let bound_name = match family.kind {
            Kind::Histogram => Some("le"),
            Kind::Summary => Some("quantile"),
            Kind::Counter | Kind::Gauge | Kind::Untyped => None,
        };
        let name = &family.name;
        GeneratedLabels {
            plain: label(NAME, name),
            bucket: label(NAME, &format!("{name}_bucket")),
            sum: label(NAME, &format!("{name}_sum")),
            count: label(NAME, &format!("{name}_count")),
            bounds: bound_name.map_or_else(Vec::new, |n| {
                let bounds = family.bounds.iter();
                bounds.map(|&b| label(n, &format_float(b))).collect()
            }),
            inf: label("le", "+Inf"),
            bound_name,
        }
    }
}

/// The label bytes of a metric's series, in buffers reused from metric to metric (a
/// snapshot has hundreds of thousands). The metric's own labels and the external ones are
/// merged (both are sorted by name already) and encoded once per metric, and the places
/// of `__name__` and of the family's `le` or `quantile` among them found once; each series
/// then splices its own `__name__` and `le` or `quantile` in at those places, the only
/// labels that differ between the series of a histogram or summary.
#[derive(Default)]
struct LabelScratch<'x> {
    /// The merged label names, sorted, unique.
    names: Vec<&'x str>,
    /// End offset in `encoded` of each merged label.
    ends: Vec<usize>,
    encoded: Vec<u8>,
    /// The bytes of `encoded` that `__name__`, and `le` or `quantile`, replace: empty where
    /// no merged label has the name, just before the first label that sorts after it.
    name_cut: (usize, usize),
    extra_cut: (usize, usize),
    /// The last series' labels.
    out: Vec<u8>,
    /// Label names of this family found valid, in the order first seen: its metrics share
    /// them, so each is checked once.
    valid_names: Vec<&'x str>,
}

impl<'x> LabelScratch<'x> {
    /// Starts on the metrics of another family.
    fn next_family(&mut self) {
        self.valid_names.clear();
    }

    /// Takes the labels of a metric, minus empty values, and the external ones; a label of
    /// the metric wins over an external one of the same name. `extra` is the name of the
    /// family's generated label (`le`, `quantile`), if any. False when a name is invalid.
    fn merge(&mut self, labels: &'x Labels, external: &'x [External], extra: Option<&str>) -> bool {
        self.names.clear();
        self.ends.clear();
        self.encoded.clear();
        let mut external = external.iter().peekable();
        // An empty value means no label at all, whatever its name.
        for (i, (name, value)) in labels.iter().filter(|(_, v)| !v.is_empty()).enumerate() {
            let name: &'x str = name;
            // The metrics of a family usually have the same names in the same order: the
            // name at the same place is the one to try first.
            let known = self.valid_names.get(i) == Some(&name) || self.valid_names.contains(&name);
            if !known {
                if !is_valid_label_name(name) {
                    return false;
                }
                self.valid_names.push(name);
            }
            while let Some(e) = external.next_if(|e| e.name.as_str() < name) {
                self.push_encoded(&e.name, &e.encoded);
            }
            external.next_if(|e| e.name == name);
            // Of a name twice in one metric, the first is kept.
            if self.names.last() != Some(&name) {
                self.names.push(name);
                encode_label(name, value, &mut self.encoded);
                self.ends.push(self.encoded.len());
            }
        }
        for e in external {
            self.push_encoded(&e.name, &e.encoded);
        }
        self.name_cut = self.cut(NAME);
        if let Some(extra) = extra {
            self.extra_cut = self.cut(extra);
        }
        true
    }

    fn push_encoded(&mut self, name: &'x str, encoded: &[u8]) {
        self.names.push(name);
        self.encoded.extend_from_slice(encoded);
        self.ends.push(self.encoded.len());
    }

    /// The bytes a generated label `name` replaces; empty at its sorted place if none.
    fn cut(&self, name: &str) -> (usize, usize) {
        // A few names, and `__name__` sorts before nearly all: a scan beats a search.
        let at = (self.names.iter())
            .position(|&n| n >= name)
            .unwrap_or(self.names.len());
        let start = if at == 0 { 0 } else { self.ends[at - 1] };
        match self.names.get(at) {
            Some(&n) if n == name => (start, self.ends[at]),
            _ => (start, start),
        }
    }

    /// The labels of one series: `name` (an encoded `__name__` label), `extra` (the encoded
    /// `le` or `quantile` label) and the merged labels, in name order.
    fn series(&mut self, name: &[u8], extra: Option<&[u8]>) -> &[u8] {
        // "__name__" sorts before "le" and "quantile": its cut comes first.
        let ((a, b), (c, d)) = (self.name_cut, self.extra_cut);
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(&self.encoded[..a]);
        out.extend_from_slice(name);
        match extra {
            None => out.extend_from_slice(&self.encoded[b..]),
            Some(extra) => {
                out.extend_from_slice(&self.encoded[b..c]);
                out.extend_from_slice(extra);
                out.extend_from_slice(&self.encoded[d..]);
            }
        }
        out
    }
}

/// How the text format writes a bound or quantile, so that pushed and scraped series match.
fn format_float(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".to_string()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if v.is_nan() {
        "NaN".to_string()
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::remote_write::encode::decode;
    use crate::push::remote_write::proto::TimeSeries;
    use prometheus::proto::{
        Bucket, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary,
    };
    use prometheus::{CounterVec, Gauge, HistogramOpts, HistogramVec, Opts, Registry};

    const NOW: i64 = 1_700_000_000_000;

    /// Decodes every batch into (labels as "name=value" strings, value, timestamp).
    fn decoded(c: &Converted) -> Vec<(Vec<String>, f64, i64)> {
        c.batches
            .iter()
            .flat_map(|b| decode(&b.body).unwrap().timeseries)
            .map(|TimeSeries { labels, samples }| {
                assert_eq!(samples.len(), 1);
                let l = labels
                    .into_iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect();
                (l, samples[0].value, samples[0].timestamp)
            })
            .collect()
    }

    fn find<'a>(
        series: &'a [(Vec<String>, f64, i64)],
        want: &[&str],
    ) -> &'a (Vec<String>, f64, i64) {
        series
            .iter()
            .find(|(l, _, _)| want.iter().all(|w| l.contains(&w.to_string())))
            .unwrap_or_else(|| panic!("no series with {want:?} in {series:#?}"))
    }

    fn snap(families: &[MetricFamily]) -> Snapshot {
        Snapshot::from_families(families)
    }

    fn state() -> SeriesState {
        SeriesState::new(&BTreeMap::new(), "127.0.0.1:11435", 1000)
    }

    fn registry() -> (Registry, CounterVec, HistogramVec) {
        let r = Registry::new();
        let c = CounterVec::new(Opts::new("requests_total", "h"), &["route", "model"]).unwrap();
        let h = HistogramVec::new(
            HistogramOpts::new("latency_ms", "h").buckets(vec![0.5, 50.0]),
            &["route"],
        )
        .unwrap();
        let g = Gauge::new("ready", "h").unwrap();
        r.register(Box::new(c.clone())).unwrap();
        r.register(Box::new(h.clone())).unwrap();
        r.register(Box::new(g)).unwrap();
        (r, c, h)
    }

    #[test]
    fn counters_gauges_and_histograms_become_text_format_series_with_external_labels() {
        let (r, c, h) = registry();
        c.with_label_values(&["/v1/chat", "gpt"]).inc_by(3.0);
        h.with_label_values(&["/v1/chat"]).observe(7.0);
        let out = state().convert(&snap(&r.gather()), NOW).unwrap();
        assert_eq!(out.invalid_samples, 0);
        let s = decoded(&out);
        let ext = ["instance=127.0.0.1:11435", "job=codex-proxy"];
        let counter = find(&s, &["__name__=requests_total"]);
        assert_eq!(
            counter.0,
            [
                "__name__=requests_total",
                ext[0],
                ext[1],
                "model=gpt",
                "route=/v1/chat"
            ]
        );
        assert_eq!((counter.1, counter.2), (3.0, NOW));
        assert_eq!(find(&s, &["__name__=ready"]).1, 0.0);
        assert_eq!(find(&s, &["__name__=latency_ms_bucket", "le=0.5"]).1, 0.0);
        assert_eq!(find(&s, &["__name__=latency_ms_bucket", "le=50"]).1, 1.0);
        assert_eq!(find(&s, &["__name__=latency_ms_bucket", "le=+Inf"]).1, 1.0);
        assert_eq!(find(&s, &["__name__=latency_ms_sum"]).1, 7.0);
        assert_eq!(find(&s, &["__name__=latency_ms_count"]).1, 1.0);
        // counter, gauge, 2 buckets + Inf, sum, count
        assert_eq!(s.len(), 7);
    }

    fn summary_family() -> MetricFamily {
        let label = |n: &str, v: &str| {
            let mut l = LabelPair::default();
            l.set_name(n.into());
            l.set_value(v.into());
            l
        };
        let q = |q: f64, v: f64| {
            let mut x = Quantile::default();
            x.set_quantile(q);
            x.set_value(v);
            x
        };
        let mut s = Summary::default();
        s.set_quantile(vec![q(0.5, 10.0), q(0.99, 90.0)]);
        s.set_sample_sum(300.0);
        s.set_sample_count(12);
        // `job` here wins over the external one; the empty `model` is left out.
        let mut m = Metric::from_label(vec![label("job", "mine"), label("model", "")]);
        m.set_summary(s);
        let mut f = MetricFamily::default();
        f.set_name("latency_summary_ms".into());
        f.set_field_type(MetricType::SUMMARY);
        f.set_metric(vec![m]);
        f
    }

    #[test]
    fn summaries_become_quantile_sum_and_count_and_metric_labels_beat_external_ones() {
        let s = decoded(&state().convert(&snap(&[summary_family()]), NOW).unwrap());
        assert_eq!(s.len(), 4);
        let p99 = find(&s, &["quantile=0.99"]);
        assert_eq!(
            p99.0,
            [
                "__name__=latency_summary_ms",
                "instance=127.0.0.1:11435",
                "job=mine",
                "quantile=0.99"
            ]
        );
        assert_eq!(p99.1, 90.0);
        assert_eq!(find(&s, &["__name__=latency_summary_ms_sum"]).1, 300.0);
        assert_eq!(find(&s, &["__name__=latency_summary_ms_count"]).1, 12.0);
    }

    #[test]
    fn every_label_set_is_sorted_unique_and_non_empty() {
        let (r, c, h) = registry();
        c.with_label_values(&["/a", ""]).inc();
        h.with_label_values(&["/a"]).observe(1.0);
        let mut families = r.gather();
        families.push(summary_family());
        let ext: BTreeMap<String, String> = [
            ("zone".to_string(), "b".to_string()),
            ("aaa".into(), "1".into()),
        ]
        .into();
        let out = SeriesState::new(&ext, "i:1", 10)
            .convert(&snap(&families), NOW)
            .unwrap();
        for batch in &out.batches {
            for ts in decode(&batch.body).unwrap().timeseries {
                let names: Vec<&str> = ts.labels.iter().map(|l| l.name.as_str()).collect();
                assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
                assert!(names.contains(&"__name__"));
                assert!(ts
                    .labels
                    .iter()
                    .all(|l| !l.name.is_empty() && !l.value.is_empty()));
            }
        }
    }

    #[test]
    fn invalid_names_are_left_out_and_counted() {
        let mut bad_name = summary_family();
        bad_name.set_name("latency-ms".into());
        let mut bad_label = MetricFamily::default();
        bad_label.set_name("ok".into());
        bad_label.set_field_type(MetricType::GAUGE);
        let mut l = LabelPair::default();
        l.set_name("__reserved".into());
        l.set_value("x".into());
        bad_label.set_metric(vec![Metric::from_label(vec![l])]);
        let out = state().convert(&snap(&[bad_name, bad_label]), NOW).unwrap();
        assert!(out.batches.is_empty());
        assert_eq!(out.invalid_samples, 4 + 1);
        assert!(is_valid_metric_name("a:b_c9") && !is_valid_metric_name("9a"));
    }

    #[test]
    fn timestamps_strictly_increase_even_when_the_clock_stalls_or_steps_back() {
        let (r, c, _) = registry();
        c.with_label_values(&["/a", "m"]).inc();
        let mut st = state();
        let mut last = i64::MIN;
        for now in [NOW, NOW, NOW - 5000, NOW + 10] {
            let ts = decoded(&st.convert(&snap(&r.gather()), now).unwrap())[0].2;
            assert!(ts > last, "{ts} after {last}");
            last = ts;
        }
        assert_eq!(last, NOW + 10);
    }

    #[test]
    fn a_series_that_disappears_gets_one_stale_marker() {
        let (r, c, _) = registry();
        c.with_label_values(&["/a", "m"]).inc();
        c.with_label_values(&["/b", "m"]).inc();
        let mut st = state();
        st.convert(&snap(&r.gather()), NOW).unwrap();
        c.remove_label_values(&["/b", "m"]).unwrap();
        let s = decoded(&st.convert(&snap(&r.gather()), NOW + 1000).unwrap());
        let gone = find(&s, &["route=/b"]);
        assert_eq!(gone.1.to_bits(), STALE_NAN_BITS);
        assert_eq!(gone.2, NOW + 1000);
        assert_eq!(find(&s, &["route=/a"]).1, 1.0);
        // Once marked stale, it is forgotten.
        let s = decoded(&st.convert(&snap(&r.gather()), NOW + 2000).unwrap());
        assert!(s
            .iter()
            .all(|(l, _, _)| !l.contains(&"route=/b".to_string())));
    }

    #[test]
    fn final_push_marks_every_series_stale_after_its_last_sample() {
        let (r, c, _) = registry();
        c.with_label_values(&["/a", "m"]).inc();
        let mut st = state();
        let out = st.convert_final(&snap(&r.gather()), NOW).unwrap();
        let s = decoded(&out);
        let (values, stale): (Vec<_>, Vec<_>) = s
            .iter()
            .partition(|(_, v, _)| v.to_bits() != STALE_NAN_BITS);
        assert_eq!(values.len(), stale.len());
        for (labels, _, ts) in &values {
            let marker = stale.iter().find(|(l, _, _)| l == labels).unwrap();
            assert_eq!((*ts, marker.2), (NOW, NOW + 1));
        }
        // The markers travel in requests of their own, after the values.
        let last = decode(&out.batches.last().unwrap().body).unwrap();
        assert!(last.timeseries.iter().all(|t| t.samples[0].value.is_nan()));
    }

    #[test]
    fn large_snapshots_split_into_ordered_requests_of_at_most_max_series() {
        let (r, c, _) = registry();
        for i in 0..25 {
            c.with_label_values(&[&format!("/r{i:02}"), "m"]).inc();
        }
        let out = SeriesState::new(&BTreeMap::new(), "i", 10)
            .convert(&snap(&r.gather()), NOW)
            .unwrap();
        let sizes: Vec<u64> = out.batches.iter().map(|b| b.samples).collect();
        // 25 counters + 1 gauge (the histogram has no children yet).
        assert_eq!(sizes, [10, 10, 6]);
        let routes: Vec<String> = decoded(&out)
            .into_iter()
            .filter_map(|(l, _, _)| l.into_iter().find(|x| x.starts_with("route=")))
            .collect();
        let mut sorted = routes.clone();
        sorted.sort();
        assert_eq!(routes, sorted, "gather order is kept across requests");
    }

    #[test]
    fn generated_labels_take_their_sorted_place_and_win_over_namesakes() {
        // "Zone" sorts before "__name__"; the metric's own `le` gives way to the bucket's.
        let mut f = MetricFamily::default();
        f.set_name("h".into());
        f.set_field_type(MetricType::HISTOGRAM);
        let mut b = Bucket::default();
        b.set_upper_bound(1.0);
        b.set_cumulative_count(4);
        let mut h = prometheus::proto::Histogram::default();
        h.set_bucket(vec![b]);
        h.set_sample_count(5);
        let mut le = LabelPair::default();
        le.set_name("le".into());
        le.set_value("mine".into());
        let mut m = Metric::from_label(vec![le]);
        m.set_histogram(h);
        f.set_metric(vec![m]);
        let ext = BTreeMap::from([("Zone".to_string(), "z".to_string())]);
        let s = decoded(
            &SeriesState::new(&ext, "i", 100)
                .convert(&snap(&[f]), NOW)
                .unwrap(),
        );
        let bucket = find(&s, &["le=1"]);
        assert_eq!(
            bucket.0,
            [
                "Zone=z",
                "__name__=h_bucket",
                "instance=i",
                "job=codex-proxy",
                "le=1"
            ]
        );
        assert_eq!(find(&s, &["le=+Inf"]).1, 5.0);
        let sum = find(&s, &["__name__=h_sum"]);
        assert!(sum.0.contains(&"le=mine".to_string()), "{:?}", sum.0);
    }

    #[test]
    fn a_duplicate_label_set_is_sent_once() {
        let f = summary_family();
        let out = state().convert(&snap(&[f.clone(), f]), NOW).unwrap();
        assert_eq!(decoded(&out).len(), 4);
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|&(n, v)| (Box::from(n), Box::from(v)))
            .collect()
    }

    fn family(name: &str, kind: Kind, bounds: &[f64], metrics: &[(&Labels, &[f64])]) -> Family {
        let mut f = Family::new(name, "h", kind, bounds.into());
        for (l, v) in metrics {
            f.push((*l).clone(), v);
        }
        f
    }

    /// A snapshot of a counter, a histogram and a summary over the same two label sets, the
    /// way the proxy shares one label set between its families; `k` varies the values.
    fn shared(a: &Labels, b: &Labels, k: f64) -> Snapshot {
        Snapshot {
            families: vec![
                family(
                    "req_total",
                    Kind::Counter,
                    &[],
                    &[(a, &[k]), (b, &[2.0 * k])],
                ),
                family(
                    "req_ms",
                    Kind::Histogram,
                    &[-0.0, 10.0],
                    &[(a, &[0.0, k, k, 9.0 * k]), (b, &[1.0, 1.0, 2.0, k])],
                ),
                family(
                    "req_q",
                    Kind::Summary,
                    &[0.5, 0.99],
                    &[(a, &[k, 2.0 * k, 3.0, 4.0]), (b, &[5.0, 6.0, k, 1.0])],
                ),
            ],
        }
    }

    /// Converts `snapshot` as `state` and as a state that never saw a snapshot before (so
    /// encodes every label): both must send the same.
    fn same_as_fresh(state: &mut SeriesState, snapshot: &Snapshot, now: i64) -> Converted {
        let out = state.convert(snapshot, now).unwrap();
        let mut fresh = SeriesState::new(&BTreeMap::from([("zone".into(), "z".into())]), "i", 7);
        let expected = fresh.convert(snapshot, now).unwrap();
        let fresh_values: Vec<_> = decoded(&expected).into_iter().collect();
        let values: Vec<_> = decoded(&out)
            .into_iter()
            .filter(|(_, v, _)| v.to_bits() != STALE_NAN_BITS)
            .collect();
        assert_eq!(format!("{values:?}"), format!("{fresh_values:?}"));
        out
    }

    fn memo_state() -> SeriesState {
        SeriesState::new(&BTreeMap::from([("zone".into(), "z".into())]), "i", 7)
    }

    #[test]
    fn unchanged_labels_are_sent_from_the_previous_snapshot_exactly_as_encoded_anew() {
        let (a, b) = (labels(&[("route", "/a")]), labels(&[("route", "/b")]));
        let mut st = memo_state();
        same_as_fresh(&mut st, &shared(&a, &b, 1.0), NOW);
        for k in 2..5 {
            let out = same_as_fresh(&mut st, &shared(&a, &b, k as f64), NOW + k);
            assert_eq!(
                out.batches.iter().map(|b| b.samples).sum::<u64>(),
                2 * (1 + 5 + 4)
            );
        }
        // Every metric was taken from the memo, which points at the right series.
        assert!(st
            .memo
            .iter()
            .all(|f| f.metrics.iter().all(Option::is_some)));
        assert_eq!(st.memo[1].metrics[1].as_ref().unwrap().first, 2 + 5);
    }

    #[test]
    fn changed_labels_and_renamed_families_are_encoded_again() {
        let (a, b) = (labels(&[("route", "/a")]), labels(&[("route", "/b")]));
        let mut st = memo_state();
        same_as_fresh(&mut st, &shared(&a, &b, 1.0), NOW);
        // Another label set in `a`'s place: its own labels go out, `/a` is marked stale.
        let c = labels(&[("route", "/c")]);
        let out = same_as_fresh(&mut st, &shared(&c, &b, 2.0), NOW + 1);
        let s = decoded(&out);
        assert_eq!(
            find(&s, &["route=/a", "__name__=req_total"]).1.to_bits(),
            STALE_NAN_BITS
        );
        assert_eq!(find(&s, &["route=/c", "__name__=req_total"]).1, 2.0);
        // The same label sets under other family names: new names, old ones stale.
        let mut renamed = shared(&c, &b, 3.0);
        renamed.families[0].name = "other_total".into();
        let s = decoded(&same_as_fresh(&mut st, &renamed, NOW + 2));
        assert_eq!(find(&s, &["__name__=other_total", "route=/b"]).1, 6.0);
        let gone = find(&s, &["__name__=req_total", "route=/b"]);
        assert_eq!(gone.1.to_bits(), STALE_NAN_BITS);
        // Same name, other bounds (0 is written differently from -0): new `le` labels.
        let mut rebounded = renamed.clone();
        rebounded.families[1].bounds = [0.0, 10.0].into();
        let s = decoded(&same_as_fresh(&mut st, &rebounded, NOW + 3));
        assert_eq!(find(&s, &["le=0", "route=/c"]).1, 0.0);
        assert_eq!(find(&s, &["le=-0", "route=/c"]).1.to_bits(), STALE_NAN_BITS);
    }

    #[test]
    fn a_vanished_family_gets_stale_markers_and_its_return_is_sent_in_full() {
        let (a, b) = (labels(&[("route", "/a")]), labels(&[("route", "/b")]));
        let full = shared(&a, &b, 1.0);
        let mut st = memo_state();
        same_as_fresh(&mut st, &full, NOW);
        same_as_fresh(&mut st, &full, NOW + 1);
        let mut less = full.clone();
        less.families.remove(1);
        let s = decoded(&same_as_fresh(&mut st, &less, NOW + 2));
        let stale = s.iter().filter(|(_, v, _)| v.to_bits() == STALE_NAN_BITS);
        assert_eq!(stale.count(), 2 * 5, "the histogram's series");
        same_as_fresh(&mut st, &less, NOW + 3);
        let s = decoded(&same_as_fresh(&mut st, &full, NOW + 4));
        assert_eq!(s.len(), 2 * (1 + 5 + 4));
        // The final push marks every series, from the memo's series as from any.
        let out = st.convert_final(&full, NOW + 5).unwrap();
        let s = decoded(&out);
        assert_eq!(s.len(), 2 * 2 * (1 + 5 + 4));
        assert!(st.memo.is_empty());
    }
}
