//! Native (sparse, exponential) histogram buckets, recorded beside each classic histogram.
//!
//! The prometheus crate has no native histograms, so every histogram series keeps this
//! small companion next to its classic buckets, under the same short lock. The facts follow
//! Prometheus' native histogram model (io.prometheus.client `Histogram` fields 5-14 and
//! client_golang's parameters), checked against client_golang `prometheus/histogram.go`:
//!
//! - **Schema 3**: bucket `i` holds `(2^((i-1)/8), 2^(i/8)]`, upper bound inclusive, so
//!   consecutive bounds differ by a factor of 2^(2^-3) ≈ 1.0905 (the largest factor not
//!   above client_golang's usual `NativeHistogramBucketFactor = 1.1`). Index 0 ends at 1.
//! - **At most [`MAX_BUCKETS`] populated buckets** (client_golang's common setting): past
//!   it the resolution halves (schema − 1; bucket `i` goes to `ceil(i/2)`), as client_golang
//!   does when neither a reset nor a wider zero bucket is configured, down to schema −4.
//! - **Zero threshold [`ZERO_THRESHOLD`] = 2^-128**, client_golang's default: observations
//!   at or below it (zero waits, and negative values, which a duration never is) count in
//!   the zero bucket. The negative side is therefore always empty.
//!
//! Counts are kept densely from the lowest to the highest populated index: a latency
//! distribution spans a few dozen octaves at most, so the vector stays small, and it only
//! grows (allocates) when an observation lands outside the range seen so far.

use std::sync::Mutex;
use std::time::Instant;

use super::exemplar::{ExemplarId, StoredExemplar};
use crate::exposition::snapshot::{Exemplar, NativeHistogram};

/// The schema new series start at: factor 2^(2^-3) ≈ 1.09.
pub(crate) const SCHEMA: i32 = 3;
/// The lowest schema the reduction goes to (the lowest Prometheus accepts).
pub(crate) const MIN_SCHEMA: i32 = -4;
/// Populated buckets a series may hold before its resolution halves.
pub(crate) const MAX_BUCKETS: usize = 160;
/// Observations at or below it count in the zero bucket: 2^-128, client_golang's default.
pub(crate) const ZERO_THRESHOLD: f64 = 2.938735877055719e-39;

/// `2^(j/8)` for `j` in 0..=8: the bucket bounds within one octave at schema 3.
const OCTAVE_BOUNDS: [f64; 9] = [
    1.0,
    1.0905077326652577,
    1.189207115002721,
    1.2968395546510096,
    std::f64::consts::SQRT_2,
    1.5422108254079407,
    1.681792830507429,
    1.8340080864093424,
    2.0,
];

/// The mantissa's top four fraction bits split [1, 2) in 16 cells, 1/16 wide. Bounds of
/// [`OCTAVE_BOUNDS`] are at least 0.09 apart, so a cell holds at most one of them: per
/// cell, how many bounds lie below its start, and the one inside it (2, above every
/// mantissa, when none is). Computed at compile time from the bounds themselves.
const CELLS: ([i32; 16], [f64; 16]) = {
    let mut below = [0; 16];
    let mut inside = [2.0; 16];
    let mut c = 0;
    while c < 16 {
        let (start, end) = (1.0 + c as f64 / 16.0, 1.0 + (c + 1) as f64 / 16.0);
        let mut k = 0;
        while k < OCTAVE_BOUNDS.len() {
            let b = OCTAVE_BOUNDS[k];
            if b < start {
                below[c] += 1;
            } else if b < end {
                inside[c] = b;
            }
            k += 1;
        }
        c += 1;
    }
    (below, inside)
};

/// The schema-3 index of the bucket holding `v`, a finite value above the zero threshold.
fn index_at_schema_3(v: f64) -> i32 {
    let bits = v.to_bits();
    // v = m · 2^e with m in [1, 2): e from the exponent bits, m from the mantissa bits.
    // Subnormals are far below the zero threshold, so the exponent is always biased > 0.
    let e = ((bits >> 52) & 0x7ff) as i32 - 1023;
    let m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    // ceil(8 · log2 m), the number of bounds below m (m = 1 is the top of the octave
    // below): those below m's cell, plus the one inside it if m is above it. One table
    // read and one compare where a search of the nine bounds took four dependent ones.
    let cell = ((bits >> 48) & 0xf) as usize;
    let j = CELLS.0[cell] + i32::from(CELLS.1[cell] < m);
    e * 8 + j
}

/// The index of `v`'s bucket at `schema` (≤ 3): a bucket at schema `s − 1` is the union of
/// buckets `2i − 1` and `2i` at schema `s`, so each step down is `ceil(i / 2)`.
pub(crate) fn bucket_index(v: f64, schema: i32) -> i32 {
    let (v, past_max) = if v == f64::INFINITY {
        // Prometheus puts +Inf one bucket past the largest finite value's.
        (f64::MAX, 1)
    } else {
        (v, 0)
    };
    let shift = SCHEMA - schema;
    let i3 = index_at_schema_3(v);
    ((i3 + (1 << shift) - 1) >> shift) + past_max
}

/// One series' native buckets (its count and sum are the classic histogram's).
#[derive(Debug, Clone)]
pub(crate) struct NativeBuckets {
    schema: i32,
    /// The bucket index of `counts[0]`.
    offset: i32,
    counts: Vec<u64>,
    /// Non-zero entries of `counts`.
    populated: usize,
    zero_count: u64,
}

impl Default for NativeBuckets {
    fn default() -> Self {
        NativeBuckets::new()
    }
}

impl NativeBuckets {
    pub(crate) const fn new() -> NativeBuckets {
        NativeBuckets {
            schema: SCHEMA,
            offset: 0,
            counts: Vec::new(),
            populated: 0,
            zero_count: 0,
        }
    }

    pub(crate) fn observe(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        if v <= ZERO_THRESHOLD {
            self.zero_count += 1;
            return;
        }
        let index = bucket_index(v, self.schema);
        // The usual case, a bucket already populated, in one compare: an index below the
        // offset wraps to far past the end.
        let k = index.wrapping_sub(self.offset) as u32 as usize;
        if let Some(n) = self.counts.get_mut(k).filter(|n| **n > 0) {
            *n += 1;
            return;
        }
        let slot = self.slot(index);
        self.counts[slot] += 1;
        if self.counts[slot] == 1 {
            self.populated += 1;
            while self.populated > MAX_BUCKETS && self.schema > MIN_SCHEMA {
                self.halve_resolution();
            }
        }
    }

    /// The place of bucket `index` in `counts`, growing it to cover the index.
    fn slot(&mut self, index: i32) -> usize {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(0);
            return 0;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let slot = (index - self.offset) as usize;
        if slot >= self.counts.len() {
            self.counts.resize(slot + 1, 0);
        }
        slot
    }

    /// Schema − 1: each pair of buckets `2i − 1`, `2i` merges into bucket `i`.
    fn halve_resolution(&mut self) {
        let half = |i: i32| (i + 1) >> 1;
        let new_offset = half(self.offset);
        let last = self.offset + self.counts.len() as i32 - 1;
        let mut merged = vec![0u64; (half(last) - new_offset + 1) as usize];
        for (k, &n) in self.counts.iter().enumerate() {
            merged[(half(self.offset + k as i32) - new_offset) as usize] += n;
        }
        self.populated = merged.iter().filter(|&&n| n > 0).count();
        self.counts = merged;
        self.offset = new_offset;
        self.schema -= 1;
    }

    /// The buckets as a native histogram with the classic side's `count` and `sum`:
    /// spans of consecutive populated buckets, and each bucket's count as the delta from
    /// the previous bucket's (the wire form of io.prometheus.client and prompb alike).
    pub(crate) fn snapshot(&self, count: u64, sum: f64) -> NativeHistogram {
        let mut spans: Vec<(i32, u32)> = Vec::new();
        let mut deltas = Vec::with_capacity(self.populated);
        let mut previous: i64 = 0;
        // The index after the last span's end.
        let mut next = 0;
        for (k, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let index = self.offset + k as i32;
            match spans.last_mut() {
                Some(span) if index == next => span.1 += 1,
                Some(_) => spans.push((index - next, 1)),
                None => spans.push((index, 1)),
            }
            next = index + 1;
            deltas.push(n as i64 - previous);
            previous = n as i64;
        }
        NativeHistogram {
            schema: self.schema,
            zero_threshold: ZERO_THRESHOLD,
            zero_count: self.zero_count,
            count,
            sum,
            spans,
            deltas,
        }
    }
}

/// The native buckets and exemplars kept beside one of the prometheus crate's classic
/// histogram series, which has neither. One short uncontended lock per observation.
#[derive(Debug)]
pub(crate) struct Companion {
    /// The classic bounds, to find the bucket an exemplar belongs to.
    bounds: &'static [f64],
    state: Mutex<CompanionState>,
}

#[derive(Debug)]
struct CompanionState {
    native: NativeBuckets,
    /// The latest exemplar of each classic bucket, `+Inf` last.
    exemplars: Box<[Option<StoredExemplar>]>,
}

impl Companion {
    pub(crate) fn new(bounds: &'static [f64]) -> Companion {
        Companion {
            bounds,
            state: Mutex::new(CompanionState {
                native: NativeBuckets::new(),
                exemplars: vec![None; bounds.len() + 1].into(),
            }),
        }
    }

    /// Records `v` (observed at `at`) after the classic histogram has: a reader that takes
    /// the companion first and the classic histogram second never sees more native than
    /// classic observations.
    pub(crate) fn observe(&self, v: f64, exemplar: Option<&ExemplarId>, at: Instant) {
        let stored = exemplar.map(|id| StoredExemplar::new(id, v, at));
        // `le` is inclusive, as in the classic histogram.
        let bucket = self.bounds.partition_point(|&le| le < v);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.native.observe(v);
        if let (Some(stored), Some(slot)) = (stored, state.exemplars.get_mut(bucket)) {
            *slot = Some(stored);
        }
    }

    /// The native buckets (count and sum to be filled in from the classic side) and the
    /// exemplars, one per classic bucket.
    pub(crate) fn read(&self) -> (NativeHistogram, Vec<Option<Exemplar>>) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let exemplars = state.exemplars.iter();
        let exemplars = exemplars.map(|e| e.as_ref().map(StoredExemplar::to_snapshot));
        (state.native.snapshot(0, 0.0), exemplars.collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octave_bounds_are_the_powers_of_two_to_the_eighth() {
        for (j, &b) in OCTAVE_BOUNDS.iter().enumerate() {
            let exact = (j as f64 / 8.0).exp2();
            assert!(
                (b - exact).abs() <= f64::EPSILON * 2.0,
                "{j}: {b} vs {exact}"
            );
        }
        assert_eq!(ZERO_THRESHOLD, 2f64.powi(-128));
    }

    /// The index by definition: the count of octave bounds below the mantissa, searched.
    fn index_at_schema_3_by_search(v: f64) -> i32 {
        let bits = v.to_bits();
        let e = ((bits >> 52) & 0x7ff) as i32 - 1023;
        let m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
        e * 8 + OCTAVE_BOUNDS.partition_point(|&b| b < m) as i32
    }

    #[test]
    fn the_table_index_equals_the_searched_one_over_many_values() {
        // Every bound, scaled across octaves, and its neighbours on both sides, where an
        // off-by-one would show.
        for e in -130..=1023 {
            for &b in &OCTAVE_BOUNDS {
                let v = b * 2f64.powi(e);
                if !v.is_finite() || v <= ZERO_THRESHOLD {
                    continue;
                }
                for v in [v, v.next_down(), v.next_up()] {
                    assert_eq!(
                        index_at_schema_3(v),
                        index_at_schema_3_by_search(v),
                        "{v:e}"
                    );
                }
            }
        }
        // Cell edges, and random values over the whole positive range.
        for c in 0..=16 {
            let v = 1.0 + c as f64 / 16.0;
            for v in [v, v.next_down(), v.next_up()] {
                assert_eq!(
                    index_at_schema_3(v),
                    index_at_schema_3_by_search(v),
                    "{v:e}"
                );
            }
        }
        let mut rng = fastrand::Rng::with_seed(9);
        let mut checked = 0;
        while checked < 1_000_000 {
            let v = f64::from_bits(rng.u64(..0x7ff0_0000_0000_0000));
            if v > ZERO_THRESHOLD {
                assert_eq!(
                    index_at_schema_3(v),
                    index_at_schema_3_by_search(v),
                    "{v:e}"
                );
                checked += 1;
            }
        }
    }

    #[test]
    fn bucket_upper_bounds_are_inclusive_at_schema_3() {
        // Bucket 0 is (2^(-1/8), 1]; bucket 1 starts just above 1.
        assert_eq!(bucket_index(1.0, 3), 0);
        assert_eq!(bucket_index(1.0000001, 3), 1);
        assert_eq!(bucket_index(1.0905077326652577, 3), 1);
        let above = f64::from_bits(1.0905077326652577f64.to_bits() + 1);
        assert_eq!(bucket_index(above, 3), 2);
        assert_eq!(bucket_index(2.0, 3), 8);
        assert_eq!(bucket_index(0.5, 3), -8);
        assert_eq!(bucket_index(0.3, 3), -13); // 2^(-14/8)=0.297 < 0.3 <= 2^(-13/8)=0.324
                                               // Every value lies in (base^(i-1), base^i].
        let base = 2f64.powf(1.0 / 8.0);
        for &v in &[1e-6, 0.003, 0.049, 0.3, 7.5, 1234.5, 9e9] {
            let i = bucket_index(v, 3);
            assert!(base.powi(i - 1) < v * (1.0 + 1e-12) && v <= base.powi(i) * (1.0 + 1e-12));
        }
    }

    #[test]
    fn lower_schemas_merge_pairs_of_buckets_as_client_golang_does() {
        // Schema 0: bucket i is (2^(i-1), 2^i]; client_golang: key = exp (frac 0.5: exp-1).
        assert_eq!(bucket_index(1.0, 0), 0);
        assert_eq!(bucket_index(1.5, 0), 1);
        assert_eq!(bucket_index(2.0, 0), 1);
        assert_eq!(bucket_index(2.1, 0), 2);
        assert_eq!(bucket_index(0.3, 0), -1);
        // Schema -1: (4^(i-1), 4^i].
        assert_eq!(bucket_index(4.0, -1), 1);
        assert_eq!(bucket_index(4.5, -1), 2);
        assert_eq!(bucket_index(0.3, -1), 0);
        assert_eq!(
            bucket_index(f64::INFINITY, 3),
            bucket_index(f64::MAX, 3) + 1
        );
    }

    /// The `q` quantile of a native histogram, as Prometheus 2.42's `histogram_quantile`
    /// reads one: the bucket holding the rank, interpolated linearly within it.
    fn native_quantile(b: &NativeBuckets, q: f64) -> f64 {
        let total: u64 = b.counts.iter().sum::<u64>() + b.zero_count;
        let rank = q * total as f64;
        let base = 2f64.powf(2f64.powi(-b.schema));
        let mut seen = b.zero_count as f64;
        for (k, &n) in b.counts.iter().enumerate() {
            if n > 0 && seen + n as f64 >= rank {
                let i = b.offset + k as i32;
                let (lower, upper) = (base.powi(i - 1), base.powi(i));
                return lower + (upper - lower) * (rank - seen) / n as f64;
            }
            seen += n as f64;
        }
        f64::NAN
    }

    /// The same on classic buckets (`bounds`, non-cumulative `counts`, +Inf last).
    fn classic_quantile(bounds: &[f64], counts: &[u64], q: f64) -> f64 {
        let total: u64 = counts.iter().sum();
        let rank = q * total as f64;
        let mut seen = 0.0;
        for (i, &n) in counts.iter().enumerate() {
            if seen + n as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
                let Some(&upper) = bounds.get(i) else {
                    return bounds[bounds.len() - 1];
                };
                return lower + (upper - lower) * (rank - seen) / n as f64;
            }
            seen += n as f64;
        }
        f64::NAN
    }

    /// docs/performance.md's accuracy figures: `cargo test --lib native_accuracy --
    /// --nocapture` prints them.
    #[test]
    fn native_accuracy_on_a_log_normal_sample_is_within_5_percent() {
        use crate::metrics::model_work::TTFT_BUCKETS;
        // Time to first token, log-normal: median 0.7 s, sigma 0.9.
        let mut rng = fastrand::Rng::with_seed(21);
        let mut sample: Vec<f64> = (0..100_000)
            .map(|_| {
                // Box-Muller.
                let (u, v) = (1.0 - rng.f64(), rng.f64());
                let z = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
                (0.7f64.ln() + 0.9 * z).exp()
            })
            .collect();
        let mut native = NativeBuckets::new();
        let mut classic = vec![0u64; TTFT_BUCKETS.len() + 1];
        for &v in &sample {
            native.observe(v);
            classic[TTFT_BUCKETS.partition_point(|&le| le < v)] += 1;
        }
        sample.sort_by(f64::total_cmp);
        for q in [0.5, 0.9, 0.99] {
            let truth = sample[(q * sample.len() as f64) as usize - 1];
            let n = native_quantile(&native, q);
            let c = classic_quantile(&TTFT_BUCKETS, &classic, q);
            let (n_err, c_err) = ((n - truth) / truth, (c - truth) / truth);
            println!(
                "p{}: true {truth:.4} s, native {n:.4} ({:+.2} %), classic {c:.4} ({:+.2} %)",
                q * 100.0,
                n_err * 100.0,
                c_err * 100.0
            );
            assert!(n_err.abs() <= 0.05, "p{q}: native {n} vs {truth}");
        }
        println!(
            "native buckets: {} at schema {}",
            native.populated, native.schema
        );
    }

    #[test]
    fn spans_and_deltas_describe_the_populated_buckets() {
        let mut b = NativeBuckets::new();
        for v in [1.0, 1.0, 1.05, 2.0, 0.0] {
            b.observe(v);
        }
        let h = b.snapshot(5, 5.05);
        assert_eq!(h.schema, 3);
        assert_eq!(h.zero_count, 1);
        // Buckets 0 (two), 1 (one), then a gap to 8 (one).
        assert_eq!(h.spans, vec![(0, 2), (6, 1)]);
        assert_eq!(h.deltas, vec![2, -1, 0]);
        let empty = NativeBuckets::new().snapshot(0, 0.0);
        assert!(empty.spans.is_empty() && empty.deltas.is_empty());
    }

    #[test]
    fn past_160_buckets_the_resolution_halves_and_counts_are_kept() {
        let mut b = NativeBuckets::new();
        // 161 distinct schema-3 buckets: 2^(k/8) for k in 0..=160.
        let mut total = 0;
        for k in 0..=160 {
            b.observe((k as f64 / 8.0).exp2());
            total += 1;
        }
        assert_eq!(b.schema, 2);
        assert!(b.populated <= MAX_BUCKETS);
        assert_eq!(b.counts.iter().sum::<u64>(), total);
        // Each value is still in the bucket that holds it at the new schema.
        let h = b.snapshot(total, 0.0);
        assert_eq!(h.spans[0].0, bucket_index(1.0, 2));
        // A very wide range keeps halving, never below -4.
        let mut wide = NativeBuckets::new();
        for k in -1000..1000 {
            wide.observe((k as f64 / 2.0).exp2());
        }
        assert!(wide.schema < 2 && wide.schema >= MIN_SCHEMA);
        assert!(wide.populated <= MAX_BUCKETS);
        // 2^-500 ..= 2^-128 are at or below the zero threshold.
        assert_eq!(wide.zero_count, 745);
        assert_eq!(wide.counts.iter().sum::<u64>() + wide.zero_count, 2000);
    }
}
