use super::*;
use crate::push::remote_write::encode::{decode, STALE_NAN_BITS};
use crate::push::remote_write::proto::{v2, TimeSeries};
use crate::push::remote_write::transcode::to_v1;
use prometheus::proto::{Bucket, LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};
use prometheus::{CounterVec, Gauge, HistogramOpts, HistogramVec, Opts, Registry};
use prost::Message;

const NOW: i64 = 1_700_000_000_000;

/// Decodes every batch into (labels as "name=value" strings, value, timestamp).
/// 2.0 batches are read through their 1.0 conversion (itself tested in `transcode.rs`).
fn decoded(c: &Converted) -> Vec<(Vec<String>, f64, i64)> {
    c.batches
        .iter()
        .flat_map(|b| match b.protocol {
            Protocol::V1 => decode(&b.body).unwrap().timeseries,
            Protocol::V2 => decode(&to_v1(b).unwrap().body).unwrap().timeseries,
        })
        .map(
            |TimeSeries {
                 labels, samples, ..
             }| {
                assert_eq!(samples.len(), 1);
                let l = labels
                    .into_iter()
                    .map(|l| format!("{}={}", l.name, l.value))
                    .collect();
                (l, samples[0].value, samples[0].timestamp)
            },
        )
        .collect()
}

fn find<'a>(series: &'a [(Vec<String>, f64, i64)], want: &[&str]) -> &'a (Vec<String>, f64, i64) {
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
    fresh.set_protocol(state.protocol());
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

/// xorshift64*: the same sequences on every run, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

/// A registry that changes at random from push to push: metrics come, go and move, label
/// sets are replaced by equal or different ones, a family vanishes or is renamed, bounds
/// change, a label set comes twice, a timestamp's varint grows.
struct Churn {
    rng: Rng,
    /// Label sets, as the proxy hands them out: the same `Arc` while a series lives.
    pool: Vec<Labels>,
    /// Per family (counter, histogram, summary), its metrics as indices into `pool`.
    metrics: [Vec<usize>; 3],
    renamed: bool,
    histogram_gone: bool,
    zero_bound: f64,
    next_route: usize,
}

impl Churn {
    fn new(seed: u64) -> Churn {
        let mut churn = Churn {
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            pool: Vec::new(),
            metrics: [Vec::new(), Vec::new(), Vec::new()],
            renamed: false,
            histogram_gone: false,
            zero_bound: -0.0,
            next_route: 0,
        };
        for _ in 0..6 {
            let k = churn.new_labels();
            churn.pool.push(k);
        }
        churn.metrics = [vec![0, 1, 2, 3], vec![0, 1, 4], vec![2, 5]];
        churn
    }

    fn new_labels(&mut self) -> Labels {
        self.next_route += 1;
        let route = format!("/r{}", self.next_route);
        match self.next_route % 3 {
            0 => labels(&[("route", &route)]),
            // An empty value is no label; a metric's `job` wins over the external one.
            1 => labels(&[("model", ""), ("route", &route)]),
            _ => labels(&[("job", "mine"), ("route", &route)]),
        }
    }

    /// Changes the registry a little, or not at all (the usual case).
    fn step(&mut self) {
        for _ in 0..self.rng.below(3) {
            let f = self.rng.below(3);
            let n = self.metrics[f].len();
            match self.rng.below(9) {
                0 => {
                    let k = self.rng.below(self.pool.len());
                    let at = self.rng.below(n + 1);
                    self.metrics[f].insert(at, k);
                }
                1 if n > 0 => {
                    let at = self.rng.below(n);
                    self.metrics[f].remove(at);
                }
                2 if n > 1 => {
                    let (a, b) = (self.rng.below(n), self.rng.below(n));
                    self.metrics[f].swap(a, b);
                }
                3 => {
                    // The same label set in a new `Arc`.
                    let k = self.rng.below(self.pool.len());
                    self.pool[k] = self.pool[k].iter().cloned().collect();
                }
                4 => {
                    let k = self.rng.below(self.pool.len());
                    self.pool[k] = self.new_labels();
                }
                5 => self.histogram_gone = !self.histogram_gone,
                6 => self.renamed = !self.renamed,
                7 => {
                    self.zero_bound =
                        if self.zero_bound == 0.0 { 1.0 } else { 0.0 } * -self.zero_bound.signum()
                }
                _ => {}
            }
        }
    }

    fn snapshot(&mut self) -> Snapshot {
        let mut value = || [0.0, -0.0, 1.5, 7.0, 1e300][self.rng.below(5)];
        let mut families = Vec::new();
        let kinds = [
            (
                if self.renamed {
                    "other_total"
                } else {
                    "req_total"
                },
                Kind::Counter,
                vec![],
                1,
            ),
            ("req_ms", Kind::Histogram, vec![self.zero_bound, 10.0], 4),
            ("req_q", Kind::Summary, vec![0.5, 0.99], 4),
        ];
        for (f, (name, kind, bounds, per_metric)) in kinds.into_iter().enumerate() {
            if kind == Kind::Histogram && self.histogram_gone {
                continue;
            }
            let values: Vec<Vec<f64>> = (self.metrics[f].iter())
                .map(|_| (0..per_metric).map(|_| value()).collect())
                .collect();
            let metrics: Vec<(&Labels, &[f64])> = (self.metrics[f].iter())
                .zip(&values)
                .map(|(&k, v)| (&self.pool[k], v.as_slice()))
                .collect();
            families.push(family(name, kind, &bounds, &metrics));
        }
        Snapshot { families }
    }
}

#[test]
fn random_changes_between_pushes_send_the_bytes_of_the_full_path() {
    random_changes_between_pushes(Protocol::V1);
}

/// In 2.0 the overwritten series keep the symbols of their request, and a request cut
/// short keeps only the symbols of the series before the cut: the bytes are still those of
/// the full path, and the series and samples those 1.0 sends.
#[test]
fn random_changes_between_pushes_send_the_bytes_of_the_full_path_in_2_0() {
    random_changes_between_pushes(Protocol::V2);
}

fn random_changes_between_pushes(protocol: Protocol) {
    let mut overwritten = 0;
    for seed in 0..24 {
        let mut churn = Churn::new(seed);
        // The fast path, and the same pushes with no memo (nothing repeated, so nothing
        // overwritten): both must send the same bytes, stale markers and all.
        let (mut fast, mut full) = (memo_state(), memo_state());
        fast.set_protocol(protocol);
        full.set_protocol(protocol);
        let max_kept_bytes = [usize::MAX, 150, 400, 1000][seed as usize % 4];
        fast.requests.set_max_kept_bytes(max_kept_bytes);
        // From 2 to 3 varint bytes at 16,384 ms, for some seeds.
        let mut now = if seed % 2 == 0 { 16_370 } else { NOW };
        for push in 0..60 {
            churn.step();
            let snapshot = churn.snapshot();
            // As the state's clock: the fresh state compared with takes `now` as it is.
            now += 1 + churn.rng.below(2) as i64;
            let last = push == 59 || churn.rng.below(40) == 0;
            full.memo.clear();
            let (ours, theirs) = if last {
                let ours = fast.convert_final(&snapshot, now).unwrap();
                now += 1;
                (ours, full.convert_final(&snapshot, now - 1).unwrap())
            } else {
                let ours = same_as_fresh(&mut fast, &snapshot, now);
                overwritten += fast.requests.overwritten();
                (ours, full.convert(&snapshot, now).unwrap())
            };
            let bytes = |c: &Converted| -> Vec<(Vec<u8>, u64, i64)> {
                (c.batches.iter())
                    .map(|b| (b.body.to_vec(), b.samples, b.oldest_timestamp_ms))
                    .collect()
            };
            assert_eq!(bytes(&ours), bytes(&theirs), "seed {seed}, push {push}");
            assert_eq!(ours.invalid_samples, theirs.invalid_samples);
        }
    }
    // The shortcut was taken, not only refused.
    assert!(overwritten > 1000, "{overwritten}");
}

/// Every MUST of the 2.0 spec for a sender's series, and the metadata of each family's
/// series (a histogram's buckets, sum and count are of type histogram).
#[test]
fn series_in_2_0_have_refs_in_range_sorted_labels_and_their_family_metadata() {
    let (r, c, h) = registry();
    c.with_label_values(&["/v1/chat", "gpt"]).inc_by(3.0);
    h.with_label_values(&["/v1/chat"]).observe(7.0);
    let mut st = state();
    st.set_protocol(Protocol::V2);
    let out = st.convert(&snap(&r.gather()), NOW).unwrap();
    assert!(out.batches.iter().all(|b| b.protocol == Protocol::V2));
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&out.batches[0].body)
        .unwrap();
    let req = v2::Request::decode(raw.as_slice()).unwrap();
    assert_eq!(req.symbols[0], "");
    let mut types = BTreeMap::new();
    for ts in &req.timeseries {
        assert!(ts.labels_refs.len() % 2 == 0);
        assert!(ts
            .labels_refs
            .iter()
            .all(|&r| (r as usize) < req.symbols.len()));
        let pairs: Vec<(&str, &str)> = (ts.labels_refs.chunks(2))
            .map(|p| {
                (
                    req.symbols[p[0] as usize].as_str(),
                    req.symbols[p[1] as usize].as_str(),
                )
            })
            .collect();
        assert!(
            pairs.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, unique: {pairs:?}"
        );
        assert!(pairs.iter().all(|(n, v)| !n.is_empty() && !v.is_empty()));
        let name = pairs.iter().find(|(n, _)| *n == "__name__").unwrap().1;
        let meta = ts.metadata.unwrap();
        assert_eq!(req.symbols[meta.help_ref as usize], "h");
        assert_eq!(meta.unit_ref, 0);
        types.insert(name.to_string(), meta.r#type);
        assert_eq!(ts.samples.len(), 1);
    }
    use v2::metadata::MetricType;
    let t = |n: &str| types[n];
    assert_eq!(t("requests_total"), MetricType::Counter as i32);
    assert_eq!(t("ready"), MetricType::Gauge as i32);
    for n in ["latency_ms_bucket", "latency_ms_sum", "latency_ms_count"] {
        assert_eq!(t(n), MetricType::Histogram as i32);
    }
    let mut quantiles = state();
    quantiles.set_protocol(Protocol::V2);
    let out = quantiles.convert(&snap(&[summary_family()]), NOW).unwrap();
    let raw = snap::raw::Decoder::new()
        .decompress_vec(&out.batches[0].body)
        .unwrap();
    let req = v2::Request::decode(raw.as_slice()).unwrap();
    assert!(req
        .timeseries
        .iter()
        .all(|ts| ts.metadata.unwrap().r#type == MetricType::Summary as i32));
}
