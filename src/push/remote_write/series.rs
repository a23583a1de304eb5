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
//! encoding or comparing of labels; `FamilyMemo`), and `requests.rs` decides whether they
//! can be overwritten in place in the previous request bodies. Anything else takes the
//! full path, which the unit tests hold equal to a conversion from scratch.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::encode::{encode_label, EncodeError};
use super::histograms::Extras;
use super::negotiate::Protocol;
use super::queue::Batch;
use super::requests::{Requests, Writer};
use crate::config::HistogramMode;
use crate::exposition::names::{is_valid_label_name, is_valid_metric_name};
use crate::exposition::snapshot::{Family, Kind, Labels};
use crate::push::Snapshot;

/// The label that holds the metric name.
const NAME: &str = "__name__";

/// `job` when the configuration gives none.
pub(crate) const DEFAULT_JOB: &str = "codex-proxy";

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
    last_timestamp_ms: Option<i64>,
    /// The previous snapshot's series and requests.
    requests: Requests,
    /// What the previous conversion made of each family, in snapshot order: valid with
    /// the series list of `requests`, which is replaced at the same moment.
    memo: Vec<FamilyMemo>,
    /// Native histograms and exemplars (`histograms.rs`).
    extras: Extras,
    max_series_per_request: usize,
}

/// The kept series and bodies are megabytes of bytes: `Debug` says only where it stands.
impl std::fmt::Debug for SeriesState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeriesState")
            .field("external_labels", &self.external.len())
            .field("last_timestamp_ms", &self.last_timestamp_ms)
            .finish_non_exhaustive()
    }
}

/// An external label, encoded once: every series carries it.
pub(super) struct External {
    name: String,
    encoded: Vec<u8>,
}

impl SeriesState {
    /// `external_labels` as configured; `job` and `instance` default to `codex-proxy` and
    /// `instance` (`<hostname>:<port>`) when not given.
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
            last_timestamp_ms: None,
            requests: Requests::new(max_series_per_request),
            memo: Vec::new(),
            extras: Extras::default(),
            max_series_per_request,
        }
    }

    /// Which histograms go out (`histograms`) and whether exemplars do (`send_exemplars`);
    /// classic only and none until told.
    pub fn with_histograms(mut self, mode: HistogramMode, send_exemplars: bool) -> SeriesState {
        self.extras.mode = mode;
        self.extras.send_exemplars = send_exemplars;
        self
    }

    /// Sends classic histograms only from the next conversion on, for good: the receiver
    /// does not take native ones. The native series sent so far are left to go stale at
    /// the receiver (it stored none of them).
    pub fn classic_only(&mut self) {
        self.extras.classic_only();
        // The memo may describe families whose classic series were left out.
        self.memo.clear();
    }

    /// The timestamp of the latest conversion's samples, if any.
    pub fn last_timestamp_ms(&self) -> Option<i64> {
        self.last_timestamp_ms
    }

    pub fn histogram_mode(&self) -> HistogramMode {
        self.extras.mode
    }

    /// A regular push: the snapshot's series at one timestamp, then stale markers for the
    /// series that disappeared since the previous call.
    pub fn convert(&mut self, snapshot: &Snapshot, now_ms: i64) -> Result<Converted, EncodeError> {
        self.convert_inner(snapshot, now_ms, false)
    }

    /// The push at shutdown: like [`convert`](Self::convert), then a stale marker for every
    /// series, one millisecond later, in requests of their own.
    pub(crate) fn convert_final(
        &mut self,
        snapshot: &Snapshot,
        now_ms: i64,
    ) -> Result<Converted, EncodeError> {
        self.convert_inner(snapshot, now_ms, true)
    }

    /// The protocol of the requests from the next conversion on (1.0 until told otherwise).
    /// Which series were sent, and so which get stale markers, carries over.
    pub fn set_protocol(&mut self, protocol: Protocol) {
        self.requests.set_protocol(protocol);
    }

    pub fn protocol(&self) -> Protocol {
        self.requests.protocol()
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
        let protocol = self.requests.protocol();
        self.requests.describe(&snapshot.families);
        let mut conversion = Conversion {
            external: &self.external,
            scratch: LabelScratch::default(),
            out: self.requests.start(ts),
            invalid_samples: 0,
        };
        // Taken out first: if encoding fails half-way, the next conversion starts without
        // a memo, which is always correct.
        let mut previous = std::mem::take(&mut self.memo).into_iter();
        let mut memo = Vec::with_capacity(snapshot.families.len());
        for family in &snapshot.families {
            let before = previous.next().filter(|m| m.describes(family));
            if self.extras.native_only(family) {
                memo.push(FamilyMemo::empty(family, None));
                continue;
            }
            memo.push(conversion.family(family, before)?);
        }
        let Conversion {
            out,
            invalid_samples,
            ..
        } = conversion;
        let final_at = final_push.then_some(ts + 1);
        let mut batches = if let Some(at) = final_at {
            self.last_timestamp_ms = Some(at);
            memo.clear();
            out.finish_final(at)?
        } else {
            out.finish()?
        };
        self.memo = memo;
        batches.extend(self.extras.convert(
            snapshot,
            &self.external,
            protocol,
            ts,
            final_at,
            self.max_series_per_request,
        )?);
        Ok(Converted {
            batches,
            invalid_samples,
        })
    }
}

/// What a conversion made of one family, kept for the next conversion: a metric whose labels
/// are the same `Arc` as last time (the live series' own, for the proxy's families) has the
/// same series as last time, so their encoded labels are taken from the previous snapshot's
/// series instead of being merged, encoded and compared again. Only valid together with the
/// series list it points into (the staleness list of `Requests`), which is replaced at the
/// same moment.
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
    /// Of a family none of whose metrics was sent (yet).
    fn empty(family: &Family, generated: Option<GeneratedLabels>) -> FamilyMemo {
        FamilyMemo {
            name: family.name.clone(),
            kind: family.kind,
            bounds: family.bounds.clone(),
            generated,
            metrics: Vec::new(),
        }
    }

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
struct Conversion<'r, 'x> {
    external: &'x [External],
    scratch: LabelScratch<'x>,
    out: Writer<'r>,
    /// Samples left out because a metric or label name is not valid.
    invalid_samples: u64,
}

impl<'x> Conversion<'_, 'x> {
    /// Emits every series of `family`; `before` is what the previous conversion made of
    /// it, if it was the same family at the same place.
    fn family(
        &mut self,
        family: &'x Family,
        before: Option<FamilyMemo>,
    ) -> Result<FamilyMemo, EncodeError> {
        let (generated, before) = before.map_or((None, Vec::new()), |b| (b.generated, b.metrics));
        let mut memo = FamilyMemo::empty(family, generated);
        memo.metrics.reserve(family.labels.len());
        let per_metric = family.samples_per_metric();
        if !is_valid_metric_name(&family.name) {
            self.invalid_samples += (family.labels.len() * per_metric) as u64;
            return Ok(memo);
        }
        self.scratch.next_family();
        for (i, (labels, values)) in family.metrics().enumerate() {
            let first = self.out.position();
            let unchanged = (before.get(i))
                .and_then(Option::as_ref)
                .filter(|m| Arc::ptr_eq(&m.labels, labels));
            let repeated = match unchanged {
                Some(m) => {
                    let values = metric_values(family.kind, values);
                    self.out.repeat(m.first, per_metric, values)?
                }
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
                    self.out.add(self.scratch.series(name, extra), v)?;
                }
            }
            let complete = self.out.position() - first == per_metric;
            memo.metrics.push(complete.then(|| MetricMemo {
                labels: labels.clone(),
                first,
            }));
        }
        Ok(memo)
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
pub(super) struct GeneratedLabels {
    pub(super) plain: Vec<u8>,
    pub(super) bucket: Vec<u8>,
    sum: Vec<u8>,
    count: Vec<u8>,
    /// `le` for a histogram, `quantile` for a summary.
    pub(super) bound_name: Option<&'static str>,
    /// `bound_name` of each finite bucket or quantile.
    pub(super) bounds: Vec<Vec<u8>>,
    /// `le="+Inf"`.
    pub(super) inf: Vec<u8>,
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

    pub(super) fn of(family: &Family) -> GeneratedLabels {
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
pub(super) struct LabelScratch<'x> {
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
    pub(super) fn next_family(&mut self) {
        self.valid_names.clear();
    }

    /// Takes the labels of a metric, minus empty values, and the external ones; a label of
    /// the metric wins over an external one of the same name. `extra` is the name of the
    /// family's generated label (`le`, `quantile`), if any. False when a name is invalid.
    pub(super) fn merge(
        &mut self,
        labels: &'x Labels,
        external: &'x [External],
        extra: Option<&str>,
    ) -> bool {
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
    pub(super) fn series(&mut self, name: &[u8], extra: Option<&[u8]>) -> &[u8] {
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
#[path = "series_tests.rs"]
mod tests;
