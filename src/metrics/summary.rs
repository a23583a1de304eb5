//! The quantiles of a sliding-window summary: the prometheus crate has no summary type.
//!
//! Semantics follow prom-client's summary with `maxAgeSeconds` and `ageBuckets`, so the
//! Node proxy's dashboards read the same thing:
//! - `_sum` and `_count` are cumulative since start (they never go down; the HTTP
//!   series keeps them, shared with its histogram, see http.rs);
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
//! sub-window never counts more than [`MAX_BUCKETS`] buckets whatever the traffic.
//! A sub-window's counts are a dense array over the range of buckets it has seen, so an
//! observation is an index and an increment (a search in a sparse list was a quarter of
//! recording a request): at most `AGES × MAX_BUCKETS × 4` bytes ≈ 20 KiB per label set,
//! in practice 1-2 KiB per sub-window (latencies of one route span a few decades).

use std::sync::LazyLock;
use std::time::{Duration, Instant};

/// Sub-windows per window (prom-client's `ageBuckets`).
pub(crate) const AGES: usize = 5;
/// Relative accuracy of every reported quantile.
pub(crate) const RELATIVE_ACCURACY: f64 = 0.01;
/// Smaller values (including 0 and negatives) count as this one.
pub(crate) const MIN_VALUE: f64 = 0.01;
/// Larger values count as this one.
pub(crate) const MAX_VALUE: f64 = 1e7;
/// Buckets between MIN_VALUE and MAX_VALUE: ln(1e9) / ln(γ) ≈ 1036, plus one.
pub(crate) const MAX_BUCKETS: usize = 1037;

/// ln γ with γ = (1+α)/(1-α) = 1.01/0.99 (checked by a test against RELATIVE_ACCURACY).
const LN_GAMMA: f64 = 0.020000666706669435;
/// 1 / ln γ: a bucket index is a multiplication away from the log, not a division.
const INV_LN_GAMMA: f64 = 1.0 / LN_GAMMA;

/// The ring of sub-windows of one series.
pub(crate) struct SlidingWindow {
    ages: [Sketch; AGES],
    /// Index in `ages` of the sub-window receiving observations.
    current: usize,
    current_started: Instant,
    /// `current_started + age`: before it, nothing rotates (one comparison per observe).
    current_ends: Instant,
    age: Duration,
}

impl SlidingWindow {
    /// `window` is split into [`AGES`] sub-windows (of at least a millisecond).
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        let age = (window / AGES as u32).max(Duration::from_millis(1));
        SlidingWindow {
            ages: Default::default(),
            current: 0,
            current_started: now,
            current_ends: now + age,
            age,
        }
    }

    /// A NaN has no rank: it is not an observation.
    pub(crate) fn observe(&mut self, value: f64, now: Instant) {
        if value.is_nan() {
            return;
        }
        self.rotate(now);
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

    /// Appends the value of each of `quantiles` (ascending) over the window at `now` to
    /// `out`: `NaN` for all when the window holds nothing. `merged` is scratch space, kept
    /// by the caller so that a snapshot of many series allocates once.
    pub(crate) fn quantiles(
        &mut self,
        quantiles: &[f64],
        now: Instant,
        merged: &mut Vec<u32>,
        out: &mut Vec<f64>,
    ) {
        self.rotate(now);
        let mut used = self.ages.iter().filter(|s| !s.counts.is_empty());
        let (Some(one), None) = (used.next(), used.next()) else {
            return self.merged_quantiles(quantiles, merged, out);
        };
        // One sub-window holds everything (a label set that was quiet for a while): its
        // counts are the window's, no merge needed.
        walk(&one.counts, one.offset, quantiles, out);
    }

    /// [`quantiles`](Self::quantiles) when several sub-windows (or none) hold counts.
    fn merged_quantiles(&self, quantiles: &[f64], merged: &mut Vec<u32>, out: &mut Vec<f64>) {
        let used = self.ages.iter().filter(|s| !s.counts.is_empty());
        let Some(first) = used.clone().map(|s| s.offset).min() else {
            out.extend(quantiles.iter().map(|_| f64::NAN));
            return;
        };
        let end = used.clone().map(Sketch::end).max().unwrap_or(first);
        merged.clear();
        merged.resize(usize::from(end.abs_diff(first)), 0);
        for s in used {
            let at = usize::from(s.offset.abs_diff(first));
            for (m, &c) in merged[at..].iter_mut().zip(&s.counts) {
                *m = m.saturating_add(c);
            }
        }
        walk(merged, first, quantiles, out);
    }

    #[cfg(test)]
    fn buckets_held(&self) -> usize {
        self.ages.iter().map(|s| s.counts.capacity()).sum()
    }
}

/// Counts of the buckets `offset..offset + counts.len()`; empty when nothing was added.
#[derive(Default)]
struct Sketch {
    offset: i16,
    counts: Vec<u32>,
}

impl Sketch {
    fn add(&mut self, value: f64) {
        let index = bucket_index(value);
        if self.counts.is_empty() {
            self.offset = index;
        }
        if index < self.offset {
            // Rare once a label set has seen its range: widen the array downwards.
            let grow = usize::from(self.offset.abs_diff(index));
            self.reserve(self.counts.len() + grow);
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let at = usize::from(index.abs_diff(self.offset));
        if at >= self.counts.len() {
            self.reserve(at + 1);
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] = self.counts[at].saturating_add(1);
    }

    /// Room for `len` counts: doubling as a `Vec` does, but never past [`MAX_BUCKETS`],
    /// the most a sub-window can need.
    fn reserve(&mut self, len: usize) {
        if len > self.counts.capacity() {
            let target = (self.counts.capacity() * 2).clamp(len, MAX_BUCKETS.max(len));
            self.counts.reserve_exact(target - self.counts.len());
        }
    }

    /// One past the last bucket held.
    fn end(&self) -> i16 {
        self.offset + self.counts.len() as i16
    }

    /// Forgets the counts but keeps the allocation for the next sub-window.
    fn clear(&mut self) {
        self.counts.clear();
    }
}

fn bucket_index(value: f64) -> i16 {
    let x = ln(value.clamp(MIN_VALUE, MAX_VALUE)) * INV_LN_GAMMA;
    // Within [-230, 806] by the clamp, so the casts cannot wrap. `ceil` by hand: the
    // library call was a tenth of recording a request.
    let truncated = x as i16;
    truncated + i16::from(f64::from(truncated) < x)
}

/// `ln v` for a positive, normal `v`, within 2e-13 of the library's: the library call was
/// a tenth of what recording a request costs. `v = m · 2^e` with `m` in [1, 2); `m` lies in
/// one of 256 cells starting at `c`, whose `ln c` and `1 / c` are tabled, and
/// `ln m = ln c + ln(1 + t)` with `t = m / c − 1 < 1/256`, four terms of whose series leave
/// an error below t⁵/5. A bucket index moves only for a value within ~1e-14 (relative) of
/// a bucket's bound, where either bucket is within the accuracy promised.
fn ln(v: f64) -> f64 {
    static CELLS: LazyLock<[(f64, f64); 256]> = LazyLock::new(|| {
        std::array::from_fn(|i| {
            let c = 1.0 + i as f64 / 256.0;
            (c.ln(), 1.0 / c)
        })
    });
    let bits = v.to_bits();
    let e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let (ln_c, inv_c) = CELLS[((bits >> 44) & 0xff) as usize];
    let t = m * inv_c - 1.0;
    let ln_1_plus_t = t * (1.0 - t * (0.5 - t * (1.0 / 3.0 - t * 0.25)));
    e as f64 * std::f64::consts::LN_2 + ln_c + ln_1_plus_t
}

/// Appends the value of each of `quantiles` (ascending) for the counts of the buckets
/// `first..first + counts.len()`: the sample of rank floor(q·(n-1)) (0-based) is reported.
fn walk(counts: &[u32], first: i16, quantiles: &[f64], out: &mut Vec<f64>) {
    let total: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let mut seen = 0u64;
    let mut next = 0usize;
    // `quantiles` is sorted, so one walk over the buckets serves all of them.
    for &q in quantiles {
        let rank = (q * total.saturating_sub(1) as f64).floor() as u64;
        while next < counts.len() && seen + u64::from(counts[next]) <= rank {
            seen += u64::from(counts[next]);
            next += 1;
        }
        out.push(if next < counts.len() {
            bucket_value(first + next as i16)
        } else {
            f64::NAN
        });
    }
}

/// The middle of bucket `index` (γ^(i-1), γ^i], within α of anything in it.
fn bucket_value(index: i16) -> f64 {
    const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
    2.0 * (f64::from(index) * LN_GAMMA).exp() / (GAMMA + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: [f64; 4] = [0.5, 0.9, 0.95, 0.99];

    fn quantiles(w: &mut SlidingWindow, now: Instant) -> Vec<f64> {
        let mut out = Vec::new();
        w.quantiles(&Q, now, &mut Vec::new(), &mut out);
        out
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
        let now = Instant::now();
        let mut w = SlidingWindow::new(Duration::from_secs(600), now);
        // 1..=1000 in a scrambled order: the sketch must not depend on arrival order.
        let mut values: Vec<f64> = (1..=1000).map(f64::from).collect();
        fastrand::Rng::with_seed(3).shuffle(&mut values);
        for v in &values {
            w.observe(*v, now);
        }
        values.sort_by(f64::total_cmp);
        for (q, got) in Q.iter().zip(quantiles(&mut w, now)) {
            let exact = values[(q * 999.0).floor() as usize];
            assert_close(got, exact);
        }
    }

    #[test]
    fn a_skewed_latency_mix_reports_the_tail() {
        let now = Instant::now();
        let mut w = SlidingWindow::new(Duration::from_secs(600), now);
        // 95 fast requests and 5 slow streams: p50 is fast, p99 is a stream.
        for _ in 0..95 {
            w.observe(12.0, now);
        }
        for _ in 0..5 {
            w.observe(30_000.0, now);
        }
        let q = quantiles(&mut w, now);
        assert_close(q[0], 12.0);
        assert_close(q[1], 12.0);
        assert_close(q[3], 30_000.0);
    }

    #[test]
    fn observations_expire_after_the_window() {
        let window = Duration::from_secs(600);
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(window, t0);
        w.observe(100.0, t0);
        // Still inside the window.
        assert_close(quantiles(&mut w, t0 + Duration::from_secs(479))[0], 100.0);
        // Past the window: the quantiles are empty.
        let q = quantiles(&mut w, t0 + window + Duration::from_secs(1));
        assert!(q.iter().all(|x| x.is_nan()));
    }

    #[test]
    fn the_window_slides_one_sub_window_at_a_time() {
        let window = Duration::from_secs(100); // sub-windows of 20 s
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(window, t0);
        w.observe(10.0, t0);
        w.observe(1000.0, t0 + Duration::from_secs(50));
        // At 105 s the first sub-window (0-20 s) is gone, the one holding 50 s is not.
        assert_close(quantiles(&mut w, t0 + Duration::from_secs(105))[0], 1000.0);
        // At 150 s both are gone.
        assert!(quantiles(&mut w, t0 + Duration::from_secs(150))[0].is_nan());
    }

    #[test]
    fn memory_per_series_is_bounded_whatever_the_values() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(Duration::from_secs(600), t0);
        let mut rng = fastrand::Rng::with_seed(5);
        // A million observations over 10^-6 .. 10^12, spread over every sub-window.
        for i in 0..1_000_000u64 {
            let v = 10f64.powf(rng.f64() * 18.0 - 6.0);
            w.observe(v, t0 + Duration::from_millis(i % 600_000));
        }
        let held = w.buckets_held();
        assert!(held <= AGES * MAX_BUCKETS, "{held} buckets held");
        assert_eq!(bucket_index(0.0), bucket_index(MIN_VALUE));
        assert_eq!(bucket_index(f64::INFINITY), bucket_index(MAX_VALUE));
        assert_eq!(
            (bucket_index(MAX_VALUE) - bucket_index(MIN_VALUE) + 1) as usize,
            MAX_BUCKETS
        );
    }

    #[test]
    fn bucket_index_is_the_ceiling_of_the_log() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..100_000 {
            let v = 10f64.powf(rng.f64() * 9.0 - 2.0);
            let x = (v.ln() * INV_LN_GAMMA).ceil() as i16;
            assert_eq!(bucket_index(v), x, "{v}");
        }
        assert_eq!(bucket_index(1.0), 0);
        assert_eq!(
            bucket_index(0.5),
            (0.5f64.ln() * INV_LN_GAMMA).ceil() as i16
        );
    }

    #[test]
    fn the_tabled_ln_agrees_with_the_library_over_the_clamped_range() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut values: Vec<f64> = (0..200_000)
            .map(|_| 10f64.powf(rng.f64() * 9.0 - 2.0))
            .collect();
        // Cell edges, octave edges and the clamp's ends.
        values.extend((0..=512).map(|i| 1.0 + i as f64 / 256.0));
        values.extend([MIN_VALUE, MAX_VALUE, 0.5, 1.0, 2.0, 1.0 - f64::EPSILON]);
        for v in values {
            let err = (ln(v) - v.ln()).abs();
            assert!(err < 2e-13, "ln({v}): {} vs {}", ln(v), v.ln());
        }
    }

    #[test]
    fn ln_gamma_matches_the_relative_accuracy() {
        let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
        assert!((LN_GAMMA - gamma.ln()).abs() < 1e-15);
    }

    #[test]
    fn nan_is_not_an_observation() {
        let now = Instant::now();
        let mut w = SlidingWindow::new(Duration::from_secs(600), now);
        w.observe(f64::NAN, now);
        assert!(quantiles(&mut w, now)[0].is_nan());
        w.observe(5.0, now);
        assert_close(quantiles(&mut w, now)[0], 5.0);
    }
}
