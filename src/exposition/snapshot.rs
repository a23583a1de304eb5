//! A registry's values at one moment: what `/metrics` renders and what the pushers send.
//!
//! The prometheus crate's own snapshot (`Registry::gather()`, protobuf `MetricFamily`)
//! allocates two strings per label and a message per bucket on every call, sorts every
//! family, and frees it all again: for a large registry that was most of a push's CPU.
//! A [`Snapshot`] costs one allocation per family instead: each metric's labels are an
//! [`Labels`] shared with the live series (cloning it is a reference count), and the
//! values of all metrics of a family sit in one flat vector.
//!
//! Order is part of the contract: a producer lists a family's metrics in the same order
//! from one snapshot to the next (new ones anywhere, usually at the end), which lets the
//! pusher compare consecutive snapshots series by series.

use std::sync::Arc;

use prometheus::proto::{MetricFamily, MetricType};

/// One metric's labels, sorted by name. Values may be empty (the text format keeps them;
/// remote-write leaves such labels out).
pub(crate) type Labels = Arc<[(Box<str>, Box<str>)]>;

/// Every family, sorted by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub families: Vec<Family>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

/// The metrics of one family that share its bounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub(crate) help: String,
    pub(crate) kind: Kind,
    /// Histogram: the finite bucket upper bounds, ascending (the `+Inf` bucket is the
    /// count). Summary: the quantiles, ascending. Empty for the other kinds.
    pub(crate) bounds: Arc<[f64]>,
    /// One entry per metric.
    pub(crate) labels: Vec<Labels>,
    /// [`stride`](Family::stride) values per metric, in the order of `labels`. Counter,
    /// gauge, untyped: the value. Histogram: the cumulative count of each bound, then the
    /// sum, then the count. Summary: the value of each quantile, then the sum, the count.
    pub values: Vec<f64>,
    /// Histogram families that record them: one native histogram per metric, in the
    /// order of `labels`. Empty otherwise.
    pub(crate) native: Vec<NativeHistogram>,
    /// Families that keep exemplars: `bounds.len() + 1` entries per metric (one per
    /// classic bucket, `+Inf` last), in the order of `labels`. Empty otherwise.
    pub(crate) exemplars: Vec<Option<Exemplar>>,
}

/// A native histogram at one moment, in the wire form shared by io.prometheus.client's
/// `Histogram` (fields 5-14) and prompb's: positive buckets only (durations are never
/// negative), as spans of consecutive buckets and count deltas.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct NativeHistogram {
    pub schema: i32,
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub count: u64,
    pub sum: f64,
    /// (offset, length): the first offset is the first bucket's index, later ones the gap
    /// after the previous span.
    pub spans: Vec<(i32, u32)>,
    /// Each bucket's count minus the previous bucket's (the first: minus 0).
    pub deltas: Vec<i64>,
}

/// The latest observation of one bucket with the ids of the request that made it. Its
/// labels are `trace_id` and `span_id`, or `request_id`: never a series label.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exemplar {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Family {
    /// An empty family.
    pub(crate) fn new(name: &str, help: &str, kind: Kind, bounds: Arc<[f64]>) -> Family {
        Family {
            name: name.to_string(),
            help: help.to_string(),
            kind,
            bounds,
            labels: Vec::new(),
            values: Vec::new(),
            native: Vec::new(),
            exemplars: Vec::new(),
        }
    }

    /// Values per metric.
    pub(crate) fn stride(&self) -> usize {
        match self.kind {
            Kind::Histogram | Kind::Summary => self.bounds.len() + 2,
            Kind::Counter | Kind::Gauge | Kind::Untyped => 1,
        }
    }

    /// Each metric's labels and values.
    pub(crate) fn metrics(&self) -> impl Iterator<Item = (&Labels, &[f64])> {
        self.labels
            .iter()
            .zip(self.values.chunks_exact(self.stride()))
    }

    /// Room for `metrics` more metrics.
    pub(crate) fn reserve(&mut self, metrics: usize) {
        self.labels.reserve(metrics);
        self.values.reserve(metrics * self.stride());
    }

    /// Adds a metric; `values` must hold [`stride`](Family::stride) values.
    pub(crate) fn push(&mut self, labels: Labels, values: &[f64]) {
        debug_assert_eq!(values.len(), self.stride());
        self.labels.push(labels);
        self.values.extend_from_slice(values);
    }

    /// Lines one metric takes in the text format (series in remote-write): histograms
    /// one per bound, `+Inf`, sum and count; summaries one per quantile, sum and count.
    pub(crate) fn samples_per_metric(&self) -> usize {
        match self.kind {
            Kind::Histogram => self.bounds.len() + 3,
            Kind::Summary => self.bounds.len() + 2,
            Kind::Counter | Kind::Gauge | Kind::Untyped => 1,
        }
    }
}

impl Snapshot {
    /// Samples (lines of the text format) in the snapshot.
    pub fn sample_count(&self) -> usize {
        self.families
            .iter()
            .map(|f| f.labels.len() * f.samples_per_metric())
            .sum()
    }

    /// The values of the metric of family `name` with exactly these labels (in name
    /// order), if there is one.
    #[cfg(test)]
    pub(crate) fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&[f64]> {
        let same = |l: &Labels| {
            l.len() == labels.len()
                && l.iter()
                    .zip(labels)
                    .all(|((n, v), (want_n, want_v))| **n == **want_n && **v == **want_v)
        };
        self.families
            .iter()
            .filter(|f| f.name == name)
            .flat_map(Family::metrics)
            .find(|(l, _)| same(l))
            .map(|(_, values)| values)
    }

    /// Adds `other`'s families and keeps the families sorted by name (stable: of two
    /// families with one name, the one already here comes first).
    pub(crate) fn merge(&mut self, other: Snapshot) {
        self.families.extend(other.families);
        self.families.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// From the crate's snapshot. Timestamps are dropped. A histogram's explicit `+Inf`
    /// bucket is dropped (its count is the sample count); metrics of one family whose
    /// bounds differ go into consecutive families of the same name.
    pub fn from_families(families: &[MetricFamily]) -> Snapshot {
        let mut out = Vec::new();
        for mf in families {
            let kind = match mf.get_field_type() {
                MetricType::COUNTER => Kind::Counter,
                MetricType::GAUGE => Kind::Gauge,
                MetricType::HISTOGRAM => Kind::Histogram,
                MetricType::SUMMARY => Kind::Summary,
                MetricType::UNTYPED => Kind::Untyped,
            };
            let mut current: Option<Family> = None;
            let mut values = Vec::new();
            for m in mf.get_metric() {
                values.clear();
                let bounds: Vec<f64> = match kind {
                    Kind::Histogram => {
                        let h = m.get_histogram();
                        let finite = h
                            .get_bucket()
                            .iter()
                            .filter(|b| b.upper_bound() != f64::INFINITY);
                        values.extend(finite.clone().map(|b| b.cumulative_count() as f64));
                        values.extend([h.get_sample_sum(), h.get_sample_count() as f64]);
                        finite.map(|b| b.upper_bound()).collect()
                    }
                    Kind::Summary => {
                        let s = m.get_summary();
                        values.extend(s.get_quantile().iter().map(|q| q.value()));
                        values.extend([s.sample_sum(), s.sample_count() as f64]);
                        s.get_quantile().iter().map(|q| q.quantile()).collect()
                    }
                    Kind::Counter => {
                        values.push(m.get_counter().get_value());
                        Vec::new()
                    }
                    Kind::Gauge => {
                        values.push(m.get_gauge().get_value());
                        Vec::new()
                    }
                    Kind::Untyped => {
                        #[allow(deprecated)] // the only accessor in prometheus 0.14
                        values.push(m.get_untyped().get_value());
                        Vec::new()
                    }
                };
                if current.as_ref().is_some_and(|f| *f.bounds != *bounds) {
                    out.extend(current.take());
                }
                let family = current
                    .get_or_insert_with(|| Family::new(mf.name(), mf.help(), kind, bounds.into()));
                let mut labels: Vec<(Box<str>, Box<str>)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().into(), l.value().into()))
                    .collect();
                labels.sort_by(|a, b| a.0.cmp(&b.0));
                family.push(labels.into(), &values);
            }
            out.push(
                current.unwrap_or_else(|| Family::new(mf.name(), mf.help(), kind, Arc::new([]))),
            );
        }
        // Stable: consecutive families of one name keep their order.
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Snapshot { families: out }
    }
}

/// The crate's form of a snapshot, for tests that compare against the crate's own
/// encoder or build input the crate's way.
#[cfg(test)]
mod crate_form {
    use super::*;
    use prometheus::proto::{
        Bucket, Counter, Gauge, Histogram, LabelPair, Metric, Quantile, Summary,
    };

    impl Snapshot {
        /// The crate's form.
        pub(crate) fn to_families(&self) -> Vec<MetricFamily> {
            self.families
                .iter()
                .map(|f| {
                    let mut mf = MetricFamily::default();
                    mf.set_name(f.name.clone());
                    mf.set_help(f.help.clone());
                    mf.set_field_type(match f.kind {
                        Kind::Counter => MetricType::COUNTER,
                        Kind::Gauge => MetricType::GAUGE,
                        Kind::Histogram => MetricType::HISTOGRAM,
                        Kind::Summary => MetricType::SUMMARY,
                        Kind::Untyped => MetricType::UNTYPED,
                    });
                    let metrics = f
                        .metrics()
                        .map(|(labels, values)| proto_metric(f, labels, values));
                    mf.set_metric(metrics.collect());
                    mf
                })
                .collect()
        }
    }

    fn proto_metric(family: &Family, labels: &Labels, values: &[f64]) -> Metric {
        let mut m = Metric::default();
        m.set_label(
            labels
                .iter()
                .map(|(n, v)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(n.to_string());
                    pair.set_value(v.to_string());
                    pair
                })
                .collect(),
        );
        let n = family.bounds.len();
        match family.kind {
            Kind::Counter => {
                let mut c = Counter::default();
                c.set_value(values[0]);
                m.set_counter(c);
            }
            Kind::Gauge => {
                let mut g = Gauge::default();
                g.set_value(values[0]);
                m.set_gauge(g);
            }
            #[allow(deprecated)] // the only setters in prometheus 0.14
            Kind::Untyped => {
                let mut u = prometheus::proto::Untyped::default();
                u.set_value(values[0]);
                m.set_untyped(u);
            }
            Kind::Histogram => {
                let mut h = Histogram::default();
                let buckets = family.bounds.iter().zip(values).map(|(&bound, &count)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(bound);
                    b.set_cumulative_count(count as u64);
                    b
                });
                h.set_bucket(buckets.collect());
                h.set_sample_sum(values[n]);
                h.set_sample_count(values[n + 1] as u64);
                m.set_histogram(h);
            }
            Kind::Summary => {
                let mut s = Summary::default();
                let quantiles = family.bounds.iter().zip(values).map(|(&q, &v)| {
                    let mut quantile = Quantile::default();
                    quantile.set_quantile(q);
                    quantile.set_value(v);
                    quantile
                });
                s.set_quantile(quantiles.collect());
                s.set_sample_sum(values[n]);
                s.set_sample_count(values[n + 1] as u64);
                m.set_summary(s);
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::proto::Bucket;
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};

    fn registry() -> Registry {
        let r = Registry::new();
        let c = IntCounterVec::new(Opts::new("c_total", "A counter."), &["b", "a"]).unwrap();
        c.with_label_values(&["x", "y"]).inc_by(3);
        c.with_label_values(&["z", ""]).inc();
        let h = HistogramVec::new(
            HistogramOpts::new("h_ms", "A histogram.").buckets(vec![1.0, 10.0]),
            &["route"],
        )
        .unwrap();
        h.with_label_values(&["/v1"]).observe(5.0);
        h.with_label_values(&["/v1"]).observe(50.0);
        let g = IntGauge::new("g", "A gauge.").unwrap();
        g.set(-4);
        r.register(Box::new(c)).unwrap();
        r.register(Box::new(h)).unwrap();
        r.register(Box::new(g)).unwrap();
        r
    }

    #[test]
    fn values_sit_flat_per_metric_with_labels_sorted_by_name() {
        let s = Snapshot::from_families(&registry().gather());
        let names: Vec<_> = s.families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["c_total", "g", "h_ms"]);
        let h = &s.families[2];
        assert_eq!(h.kind, Kind::Histogram);
        assert_eq!(*h.bounds, [1.0, 10.0]);
        let (labels, values) = h.metrics().next().unwrap();
        assert_eq!(&*labels[0].0, "route");
        assert_eq!(values, [0.0, 1.0, 55.0, 2.0]);
        let c = &s.families[0];
        let (labels, values) = c.metrics().find(|(l, _)| &*l[1].1 == "x").unwrap();
        let names: Vec<_> = labels.iter().map(|(n, _)| &**n).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(values, [3.0]);
        // A histogram is 2 bounds + Inf + sum + count; two counters; one gauge.
        assert_eq!(s.sample_count(), 5 + 2 + 1);
    }

    #[test]
    fn the_crate_form_round_trips() {
        let families = registry().gather();
        let s = Snapshot::from_families(&families);
        assert_eq!(s.to_families(), families);
        assert_eq!(Snapshot::from_families(&s.to_families()), s);
    }

    #[test]
    fn metrics_with_other_bounds_go_to_a_family_of_their_own() {
        let mut mf = Snapshot::from_families(&registry().gather()).to_families();
        let h = &mut mf[2];
        let mut odd = h.get_metric()[0].clone();
        let mut hist = odd.get_histogram().clone();
        let mut buckets = hist.get_bucket().to_vec();
        buckets.truncate(1);
        let mut b = Bucket::default();
        b.set_upper_bound(f64::INFINITY);
        b.set_cumulative_count(2);
        buckets.push(b);
        hist.set_bucket(buckets);
        odd.set_histogram(hist);
        let mut metrics = h.get_metric().to_vec();
        metrics.push(odd);
        h.set_metric(metrics);
        let s = Snapshot::from_families(&mf);
        let bounds: Vec<_> = s
            .families
            .iter()
            .filter(|f| f.name == "h_ms")
            .map(|f| f.bounds.to_vec())
            .collect();
        assert_eq!(bounds, [vec![1.0, 10.0], vec![1.0]]);
    }
}
