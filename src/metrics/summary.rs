//! A sliding-window summary collector: the prometheus crate has no summary type.
//!
//! Semantics follow prom-client's summary with `maxAgeSeconds` and `ageBuckets`, so the
//! Node proxy's dashboards read the same thing:
//! - `_sum` and `_count` are cumulative since start (they never go down);
//! - the quantiles cover only recent observations. The window (config
//!   `metrics.summary_window`, default 10m) is split into [`AGES`] sub-windows; the
//!   oldest is dropped whenever a sub-window's time is up, so a quantile covers between
//!   4/5 of the window and the whole window (8 to 10 minutes by default). With no
//!   observation in the window the quantiles are `NaN`, as in the Go client.
//!
//! Each sub-window holds a log-bucketed sketch (the DDSketch idea): a value `v` lands in
//! bucket `ceil(ln v / ln γ)` with `γ = (1+α)/(1-α)`, and a quantile is reported as the
//! middle of its bucket, which is within α = 1% of the true sample of that rank. Values
//! are clamped to [`MIN_VALUE`, `MAX_VALUE`] (10 µs to ~2.8 h in milliseconds), so a
//! sub-window never holds more than [`MAX_BUCKETS`] buckets of 8 bytes whatever the
//! traffic: at most `AGES × MAX_BUCKETS × 8` bytes ≈ 41 KiB per label set, and in
//! practice a few hundred bytes (latencies of one route span a few decades at most).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType, Quantile, Summary};

use super::label_map::LabelMap;

/// Sub-windows per window (prom-client's `ageBuckets`).
pub const AGES: usize = 5;
/// Relative accuracy of every reported quantile.
pub const RELATIVE_ACCURACY: f64 = 0.01;
/// Smaller values (including 0 and negatives) count as this one.
pub const MIN_VALUE: f64 = 0.01;
/// Larger values count as this one.
pub const MAX_VALUE: f64 = 1e7;
/// Buckets between MIN_VALUE and MAX_VALUE: ln(1e9) / ln(γ) ≈ 1036, plus one.
pub const MAX_BUCKETS: usize = 1037;

/// ln γ with γ = (1+α)/(1-α) = 1.01/0.99 (checked by a test against RELATIVE_ACCURACY).
const LN_GAMMA: f64 = 0.020000666706669435;

/// Quantiles over a sliding window, one series per label set.
#[derive(Clone)]
pub struct SlidingSummaryVec {
    inner: Arc<Inner>,
}

struct Inner {
    desc: Desc,
    label_names: Vec<String>,
    quantiles: Vec<f64>,
    /// Length of one sub-window: window / AGES.
    age: Duration,
    series: LabelMap<SlidingSummary>,
}

impl SlidingSummaryVec {
    /// `quantiles` must lie in [0, 1]; `window` is split into [`AGES`] sub-windows.
    pub fn new(
        name: &str,
        help: &str,
        labels: &[&str],
        quantiles: &[f64],
        window: Duration,
    ) -> Result<Self, prometheus::Error> {
        if let Some(q) = quantiles.iter().find(|q| !(0.0..=1.0).contains(*q)) {
            return Err(prometheus::Error::Msg(format!(
                "quantile {q} of {name} is outside [0, 1]"
            )));
        }
        let label_names: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let desc = Desc::new(
            name.to_string(),
            help.to_string(),
            label_names.clone(),
            HashMap::new(),
        )?;
        let mut quantiles = quantiles.to_vec();
        quantiles.sort_by(f64::total_cmp);
        Ok(SlidingSummaryVec {
            inner: Arc::new(Inner {
                desc,
                label_names,
                quantiles,
                age: (window / AGES as u32).max(Duration::from_millis(1)),
                series: LabelMap::new(),
            }),
        })
    }

    /// The series of one label set, to keep and observe into without a lookup.
    /// `label_values` are in the order of the label names given to `new`.
    pub fn with_label_values(&self, label_values: &[&str]) -> SlidingSummary {
        self.inner.series.with(
            label_values,
            || self.new_series(Instant::now()),
            SlidingSummary::clone,
        )
    }

    pub fn observe(&self, label_values: &[&str], value: f64) {
        self.observe_at(label_values, value, Instant::now());
    }

    fn observe_at(&self, label_values: &[&str], value: f64, now: Instant) {
        self.inner.series.with(
            label_values,
            || self.new_series(now),
            |s| s.observe_at(value, now),
        );
    }

    fn new_series(&self, now: Instant) -> SlidingSummary {
        SlidingSummary(Arc::new(Mutex::new(Window::new(self.inner.age, now))))
    }

    fn collect_at(&self, now: Instant) -> Vec<MetricFamily> {
        let mut metrics = Vec::new();
        self.inner.series.for_each(|values, series| {
            let mut labels: Vec<LabelPair> = self
                .inner
                .label_names
                .iter()
                .zip(values)
                .map(|(name, value)| {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.clone());
                    pair.set_value(value.to_string());
                    pair
                })
                .collect();
            labels.sort_by(|a, b| a.name().cmp(b.name()));
            let mut metric = Metric::default();
            metric.set_label(labels);
            metric.set_summary(series.snapshot(&self.inner.quantiles, now));
            metrics.push(metric);
        });
        if metrics.is_empty() {
            return Vec::new();
        }
        let mut family = MetricFamily::default();
        family.set_name(self.inner.desc.fq_name.clone());
        family.set_help(self.inner.desc.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(metrics);
        vec![family]
    }
}

impl Collector for SlidingSummaryVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.inner.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.collect_at(Instant::now())
    }
}

/// One label set's summary. Cloning shares it.
#[derive(Clone)]
pub struct SlidingSummary(Arc<Mutex<Window>>);

impl SlidingSummary {
    pub fn observe(&self, value: f64) {
        self.observe_at(value, Instant::now());
    }

    /// Observes at a time the caller already read (the middleware has it).
    pub fn observe_at(&self, value: f64, now: Instant) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(value, now);
    }

    fn snapshot(&self, quantiles: &[f64], now: Instant) -> Summary {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot(quantiles, now)
    }
}

/// The ring of sub-windows of one series, and its cumulative sum and count.
struct Window {
    ages: [Sketch; AGES],
    /// Index in `ages` of the sub-window receiving observations.
    current: usize,
    current_started: Instant,
    /// `current_started + age`: before it, nothing rotates (one comparison per observe).
    current_ends: Instant,
    age: Duration,
    sum: f64,
    count: u64,
}

impl Window {
    fn new(age: Duration, now: Instant) -> Self {
        Window {
            ages: Default::default(),
            current: 0,
            current_started: now,
            current_ends: now + age,
            age,
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64, now: Instant) {
        // A NaN would poison the sum forever and has no rank: it is not an observation.
        if value.is_nan() {
            return;
        }
        self.rotate(now);
        self.sum += value;
        self.count += 1;
        self.ages[self.current].add(value);
    }

    /// Drops the sub-windows whose time is up; after a long pause all of them.
    fn rotate(&mut self, now: Instant) {
        if now < self.current_ends {
            return;
        }
        let elapsed = now.saturating_duration_since(self.current_started);
        let age_nanos = self.age.as_nanos();
        let steps = elapsed.as_nanos() / age_nanos;
        for _ in 0..steps.min(AGES as u128) {
            self.current = (self.current + 1) % AGES;
            self.ages[self.current].clear();
        }
        let into_current = (elapsed.as_nanos() % age_nanos) as u64;
        self.current_started = now - Duration::from_nanos(into_current);
        self.current_ends = self.current_started + self.age;
    }

    fn snapshot(&mut self, quantiles: &[f64], now: Instant) -> Summary {
        self.rotate(now);
        let mut merged: Vec<(i16, u32)> = self
            .ages
            .iter()
            .flat_map(|s| s.buckets.iter().copied())
            .collect();
        merged.sort_unstable_by_key(|&(index, _)| index);
        let total: u64 = merged.iter().map(|&(_, c)| u64::from(c)).sum();

        let mut out = Vec::with_capacity(quantiles.len());
        let mut seen = 0u64;
        let mut buckets = merged.iter().peekable();
        // `quantiles` is sorted, so one walk over the buckets serves all of them.
        for &q in quantiles {
            let value = if total == 0 {
                f64::NAN
            } else {
                // The sample of rank floor(q·(n-1)) (0-based) is the one reported.
                let rank = (q * (total - 1) as f64).floor() as u64;
                let mut index = None;
                while let Some(&&(i, c)) = buckets.peek() {
                    if seen + u64::from(c) > rank {
                        index = Some(i);
                        break;
                    }
                    seen += u64::from(c);
                    buckets.next();
                }
                index.map_or(f64::NAN, bucket_value)
            };
            let mut quantile = Quantile::default();
            quantile.set_quantile(q);
            quantile.set_value(value);
            out.push(quantile);
        }
        let mut summary = Summary::default();
        summary.set_sample_count(self.count);
        summary.set_sample_sum(self.sum);
        summary.set_quantile(out);
        summary
    }

    #[cfg(test)]
    fn buckets_held(&self) -> usize {
        self.ages.iter().map(|s| s.buckets.len()).sum()
    }
}

/// Counts per log bucket, sorted by bucket index; at most [`MAX_BUCKETS`] entries.
#[derive(Default)]
struct Sketch {
    buckets: Vec<(i16, u32)>,
}

impl Sketch {
    fn add(&mut self, value: f64) {
        let index = bucket_index(value);
        match self.buckets.binary_search_by_key(&index, |&(i, _)| i) {
            Ok(at) => self.buckets[at].1 = self.buckets[at].1.saturating_add(1),
            Err(at) => self.buckets.insert(at, (index, 1)),
        }
    }

    /// Forgets the counts but keeps the allocation for the next sub-window.
    fn clear(&mut self) {
        self.buckets.clear();
    }
}

fn bucket_index(value: f64) -> i16 {
    let v = value.clamp(MIN_VALUE, MAX_VALUE);
    // Within [-230, 806] by the clamp, so the cast cannot wrap.
    (v.ln() / LN_GAMMA).ceil() as i16
}

/// The middle of bucket `index` (γ^(i-1), γ^i], within α of anything in it.
fn bucket_value(index: i16) -> f64 {
    let gamma = LN_GAMMA.exp();
    2.0 * gamma.powi(i32::from(index)) / (gamma + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: [f64; 4] = [0.5, 0.9, 0.95, 0.99];

    fn summary(window: Duration) -> SlidingSummaryVec {
        SlidingSummaryVec::new("lat_ms", "help", &["route"], &Q, window).unwrap()
    }

    fn only_summary(s: &SlidingSummaryVec, now: Instant) -> Summary {
        let families = s.collect_at(now);
        assert_eq!(families.len(), 1);
        families[0].get_metric()[0].get_summary().clone()
    }

    fn assert_close(got: f64, want: f64) {
        let tolerance = RELATIVE_ACCURACY * want.abs() + 1e-9;
        assert!(
            (got - want).abs() <= tolerance,
            "got {got}, want {want} within 1%"
        );
    }

    #[test]
    fn quantiles_of_known_data_are_within_one_percent() {
        let s = summary(Duration::from_secs(600));
        let now = Instant::now();
        // 1..=1000 in a scrambled order: the sketch must not depend on arrival order.
        let mut values: Vec<f64> = (1..=1000).map(f64::from).collect();
        fastrand::Rng::with_seed(3).shuffle(&mut values);
        for v in &values {
            s.observe_at(&["/a"], *v, now);
        }
        let got = only_summary(&s, now);
        assert_eq!(got.sample_count(), 1000);
        assert_eq!(got.sample_sum(), 500_500.0);
        values.sort_by(f64::total_cmp);
        for (q, quantile) in Q.iter().zip(got.get_quantile()) {
            assert_eq!(quantile.quantile(), *q);
            let exact = values[(q * 999.0).floor() as usize];
            assert_close(quantile.value(), exact);
        }
    }

    #[test]
    fn a_skewed_latency_mix_reports_the_tail() {
        let s = summary(Duration::from_secs(600));
        let now = Instant::now();
        // 95 fast requests and 5 slow streams: p50 is fast, p99 is a stream.
        for _ in 0..95 {
            s.observe_at(&["/a"], 12.0, now);
        }
        for _ in 0..5 {
            s.observe_at(&["/a"], 30_000.0, now);
        }
        let q = only_summary(&s, now);
        assert_close(q.get_quantile()[0].value(), 12.0);
        assert_close(q.get_quantile()[1].value(), 12.0);
        assert_close(q.get_quantile()[3].value(), 30_000.0);
    }

    #[test]
    fn observations_expire_after_the_window_but_sum_and_count_stay() {
        let window = Duration::from_secs(600);
        let s = summary(window);
        let t0 = Instant::now();
        s.observe_at(&["/a"], 100.0, t0);
        // Still inside the window.
        let q = only_summary(&s, t0 + Duration::from_secs(479));
        assert_close(q.get_quantile()[0].value(), 100.0);
        // Past the window: the quantiles are empty, the cumulative part is not.
        let q = only_summary(&s, t0 + window + Duration::from_secs(1));
        assert!(q.get_quantile().iter().all(|x| x.value().is_nan()));
        assert_eq!(q.sample_count(), 1);
        assert_eq!(q.sample_sum(), 100.0);
    }

    #[test]
    fn the_window_slides_one_sub_window_at_a_time() {
        let window = Duration::from_secs(100); // sub-windows of 20 s
        let s = summary(window);
        let t0 = Instant::now();
        s.observe_at(&["/a"], 10.0, t0);
        s.observe_at(&["/a"], 1000.0, t0 + Duration::from_secs(50));
        // At 105 s the first sub-window (0-20 s) is gone, the one holding 50 s is not.
        let q = only_summary(&s, t0 + Duration::from_secs(105));
        assert_close(q.get_quantile()[0].value(), 1000.0);
        // At 150 s both are gone.
        let q = only_summary(&s, t0 + Duration::from_secs(150));
        assert!(q.get_quantile()[0].value().is_nan());
        assert_eq!(q.sample_count(), 2);
    }

    #[test]
    fn memory_per_series_is_bounded_whatever_the_values() {
        let s = summary(Duration::from_secs(600));
        let t0 = Instant::now();
        let mut rng = fastrand::Rng::with_seed(5);
        // A million observations over 10^-6 .. 10^12, spread over every sub-window.
        for i in 0..1_000_000u64 {
            let v = 10f64.powf(rng.f64() * 18.0 - 6.0);
            s.observe_at(&["/a"], v, t0 + Duration::from_millis(i % 600_000));
        }
        let held = s.inner.series.with(
            &["/a"],
            || unreachable!(),
            |w| w.0.lock().unwrap().buckets_held(),
        );
        assert!(held <= AGES * MAX_BUCKETS, "{held} buckets held");
        assert_eq!(bucket_index(0.0), bucket_index(MIN_VALUE));
        assert_eq!(bucket_index(f64::INFINITY), bucket_index(MAX_VALUE));
        assert_eq!(
            (bucket_index(MAX_VALUE) - bucket_index(MIN_VALUE) + 1) as usize,
            MAX_BUCKETS
        );
    }

    #[test]
    fn ln_gamma_matches_the_relative_accuracy() {
        let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
        assert!((LN_GAMMA - gamma.ln()).abs() < 1e-15);
    }

    #[test]
    fn nan_is_not_an_observation() {
        let s = summary(Duration::from_secs(600));
        let now = Instant::now();
        s.observe_at(&["/a"], f64::NAN, now);
        s.observe_at(&["/a"], 5.0, now);
        let q = only_summary(&s, now);
        assert_eq!(q.sample_count(), 1);
        assert_eq!(q.sample_sum(), 5.0);
    }

    #[test]
    fn renders_as_a_summary_in_the_text_format() {
        let registry = prometheus::Registry::new();
        let s = summary(Duration::from_secs(600));
        registry.register(Box::new(s.clone())).unwrap();
        // No series yet: no family at all, like an empty vec.
        assert!(registry.gather().is_empty());
        s.observe(&["/v1/models"], 42.0);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(text.contains("# TYPE lat_ms summary\n"), "{text}");
        assert!(text.contains("lat_ms{route=\"/v1/models\",quantile=\"0.99\"} 4"));
        assert!(text.contains("lat_ms_sum{route=\"/v1/models\"} 42\n"));
        assert!(text.contains("lat_ms_count{route=\"/v1/models\"} 1\n"));
    }

    #[test]
    fn a_quantile_outside_zero_one_is_refused() {
        let r = SlidingSummaryVec::new("x", "h", &[], &[1.5], Duration::from_secs(1));
        assert!(r.is_err());
    }
}
