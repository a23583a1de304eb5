//! The four HTTP families, kept together per label set:
//! `codex_http_requests_total`, `codex_http_errors_total`, `codex_http_latency_ms` and
//! `codex_http_latency_summary_ms`.
//!
//! A finished request updates all of them at once, so one label set holds one lock with
//! everything in it (count, sum, histogram buckets, the summary's window): recording a
//! request is one lookup and one uncontended lock, where the crate's separate counter,
//! histogram and a summary beside them took nine atomic read-modify-writes. The families
//! agree by construction: the request count is the histogram's and the summary's count.
//! A snapshot walks the label sets in the order they were created and writes the values
//! straight into a [`Snapshot`]'s flat vectors, with no per-sample allocation.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::exemplar::{ExemplarId, StoredExemplar};
use super::label_map::LabelMap;
use super::labels::{self, METHODS, STATUS_FAMILIES};
use super::native::NativeBuckets;
use super::summary::SlidingWindow;
use super::{ErrorCategory, LATENCY_BUCKETS_MS, SUMMARY_QUANTILES};
use crate::exposition::snapshot::{Family, Kind, Labels, Snapshot};

const REQUESTS: (&str, &str) = (
    "codex_http_requests_total",
    "HTTP requests served, by route template, method, status family and model.",
);
const ERRORS: (&str, &str) = (
    "codex_http_errors_total",
    "HTTP responses with status >= 500, by category.",
);
const LATENCY: (&str, &str) = (
    "codex_http_latency_ms",
    "Request latency in milliseconds, measured to the end of the response body.",
);
const LATENCY_SUMMARY: (&str, &str) = (
    "codex_http_latency_summary_ms",
    "Request latency in milliseconds over a sliding window.",
);

/// [`LATENCY_BUCKETS_MS`] in nanoseconds: a request's bucket is found by comparing
/// integers, exactly.
const BOUNDS_NS: [u64; LATENCY_BUCKETS_MS.len()] = {
    let mut out = [0; LATENCY_BUCKETS_MS.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = (LATENCY_BUCKETS_MS[i] * 1e6) as u64;
        i += 1;
    }
    out
};

/// One request whose response body has ended.
#[derive(Debug)]
pub struct FinishedRequest<'a> {
    /// A bounded value from `labels::route`.
    pub route: &'a str,
    /// Index into `labels::METHODS`, from `labels::method_index`.
    pub method: usize,
    pub status: StatusCode,
    /// The raw model name the handler attached; the label rules bound it.
    pub model: Option<&'a str>,
    /// The category the handler attached; only read for 5xx.
    pub category: Option<ErrorCategory>,
    pub started: Instant,
    pub ended: Instant,
    /// Kept as the exemplar of the latency bucket it lands in.
    pub exemplar: Option<&'a ExemplarId>,
}

/// Every HTTP label set, found by route, then model, then method and status family.
pub(crate) struct HttpFamilies {
    routes: LabelMap<RouteSeries>,
    /// How many values the model label can take (`LabelRules::model_value_bound`).
    model_slots: usize,
    summary_window: Duration,
    /// Label sets in the last snapshot: the next one sizes its vectors by it.
    last_snapshot_len: AtomicUsize,
}

/// The label sets of one route, by the model's place among the model label's values
/// (`LabelRules::model_slot`), filled on first use.
struct RouteSeries {
    models: Box<[OnceLock<Box<ModelSeries>>]>,
}

/// The label sets of one (route, model): one per method × status family.
struct ModelSeries {
    slots: [OnceLock<Box<HttpSeries>>; METHODS.len() * STATUS_FAMILIES.len()],
}

/// One (route, method, status_family, model) label set.
struct HttpSeries {
    labels: Labels,
    state: Mutex<SeriesState>,
    /// `codex_http_errors_total` by `ErrorCategory as usize`, made on first use.
    errors: [OnceLock<ErrorSeries>; ErrorCategory::ALL.len()],
}

struct SeriesState {
    /// Observations per latency bucket (not cumulative); those above the largest bound
    /// are `count` minus the rest.
    buckets: [u64; LATENCY_BUCKETS_MS.len()],
    sum: f64,
    count: u64,
    window: SlidingWindow,
    native: NativeBuckets,
    /// The latest exemplar of each classic bucket, `+Inf` last.
    exemplars: [Option<StoredExemplar>; LATENCY_BUCKETS_MS.len() + 1],
}

struct ErrorSeries {
    labels: Labels,
    count: AtomicU64,
}

impl HttpFamilies {
    /// `model_slots` is `LabelRules::model_value_bound`, `summary_window` is
    /// `metrics.summary_window`.
    pub(crate) fn new(model_slots: usize, summary_window: Duration) -> HttpFamilies {
        HttpFamilies {
            routes: LabelMap::new(),
            model_slots,
            summary_window,
            last_snapshot_len: AtomicUsize::new(0),
        }
    }

    /// Records one request; `model` is the bounded label value and its slot
    /// (`LabelRules::model_slot`).
    pub(crate) fn record(&self, request: &FinishedRequest<'_>, (model_slot, model): (usize, &str)) {
        let family = labels::status_family_index(request.status);
        // An index past the list counts as the last value, `OTHER`.
        let method = request.method.min(METHODS.len() - 1);
        let elapsed = request.ended.saturating_duration_since(request.started);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let make_route = || RouteSeries {
            models: (0..self.model_slots).map(|_| OnceLock::new()).collect(),
        };
        self.routes.with(request.route, make_route, |route| {
            let Some(by_model) = route.models.get(model_slot) else {
                return; // a slot past the bound the rules gave: not a label value
            };
            let by_model = by_model.get_or_init(|| {
                Box::new(ModelSeries {
                    slots: std::array::from_fn(|_| OnceLock::new()),
                })
            });
            let slot = &by_model.slots[method * STATUS_FAMILIES.len() + family];
            let series = slot.get_or_init(|| {
                let labels = [
                    ("method", METHODS[method]),
                    ("model", model),
                    ("route", request.route),
                    ("status_family", STATUS_FAMILIES[family]),
                ];
                Box::new(HttpSeries::new(&labels, self.summary_window, request.ended))
            });
            series.observe(nanos, request.ended, request.exemplar);
            if STATUS_FAMILIES[family] == "5xx" {
                let category = request.category.unwrap_or(ErrorCategory::Internal);
                series.errors[category as usize]
                    .get_or_init(|| ErrorSeries {
                        labels: with_label(&series.labels, ("category", category.as_str())),
                        count: AtomicU64::new(0),
                    })
                    .count
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Every label set, in a stable order: routes as they came, then models by slot, then
    /// method and status family.
    fn for_each(&self, mut f: impl FnMut(&HttpSeries)) {
        self.routes.for_each(|_, route| {
            let models = route.models.iter().filter_map(OnceLock::get);
            for series in models.flat_map(|m| m.slots.iter().filter_map(OnceLock::get)) {
                f(series);
            }
        });
    }

    /// The four families as of `now`, appended to `out` (those without a series left out).
    pub(crate) fn snapshot(&self, now: Instant, out: &mut Snapshot) {
        let bounds: Arc<[f64]> = LATENCY_BUCKETS_MS.into();
        let quantiles: Arc<[f64]> = SUMMARY_QUANTILES.into();
        let (name, help) = REQUESTS;
        let mut requests = Family::new(name, help, Kind::Counter, Arc::new([]));
        let (name, help) = ERRORS;
        let mut errors = Family::new(name, help, Kind::Counter, Arc::new([]));
        let (name, help) = LATENCY;
        let mut latency = Family::new(name, help, Kind::Histogram, bounds);
        let (name, help) = LATENCY_SUMMARY;
        let mut summary = Family::new(name, help, Kind::Summary, quantiles.clone());
        let expected = self.last_snapshot_len.load(Ordering::Relaxed);
        for family in [&mut requests, &mut latency, &mut summary] {
            family.reserve(expected);
        }
        let mut merged = Vec::new();
        let mut values = Vec::with_capacity(LATENCY_BUCKETS_MS.len() + 2);
        latency.native.reserve(expected);
        latency
            .exemplars
            .reserve(expected * (LATENCY_BUCKETS_MS.len() + 1));
        self.for_each(|series| {
            let mut state = series.state.lock().unwrap_or_else(|p| p.into_inner());
            let (sum, count) = (state.sum, state.count as f64);
            requests.push(series.labels.clone(), &[count]);
            values.clear();
            let mut cumulative = 0;
            for n in state.buckets {
                cumulative += n;
                values.push(cumulative as f64);
            }
            values.extend([sum, count]);
            latency.push(series.labels.clone(), &values);
            latency.native.push(state.native.snapshot(state.count, sum));
            let exemplars = state.exemplars.iter();
            latency
                .exemplars
                .extend(exemplars.map(|e| e.as_ref().map(StoredExemplar::to_snapshot)));
            values.clear();
            state
                .window
                .quantiles(&quantiles, now, &mut merged, &mut values);
            drop(state);
            values.extend([sum, count]);
            summary.push(series.labels.clone(), &values);
            for e in series.errors.iter().filter_map(OnceLock::get) {
                let n = e.count.load(Ordering::Relaxed) as f64;
                errors.push(e.labels.clone(), &[n]);
            }
        });
        self.last_snapshot_len
            .store(requests.labels.len(), Ordering::Relaxed);
        // Empty families too: every family is declared (HELP and TYPE) from the first
        // scrape on, before its first series.
        out.families.extend([errors, latency, summary, requests]);
    }

    /// Label sets (route, method, status family, model) seen so far.
    #[cfg(test)]
    fn len(&self) -> usize {
        let mut n = 0;
        self.for_each(|_| n += 1);
        n
    }
}

impl HttpSeries {
    fn new(labels: &[(&str, &str)], summary_window: Duration, now: Instant) -> HttpSeries {
        HttpSeries {
            labels: labels.iter().map(|&(n, v)| (n.into(), v.into())).collect(),
            state: Mutex::new(SeriesState {
                buckets: [0; LATENCY_BUCKETS_MS.len()],
                sum: 0.0,
                count: 0,
                window: SlidingWindow::new(summary_window, now),
                native: NativeBuckets::new(),
                exemplars: Default::default(),
            }),
            errors: Default::default(),
        }
    }

    fn observe(&self, nanos: u64, now: Instant, exemplar: Option<&ExemplarId>) {
        // `le` is inclusive: a value equal to a bound belongs to that bound's bucket.
        let bucket = BOUNDS_NS.partition_point(|&le| le < nanos);
        // A multiplication, not `as_secs_f64`'s division: the last bits do not matter here.
        let ms = nanos as f64 * 1e-6;
        let stored = exemplar.map(|id| StoredExemplar::new(id, ms, now));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = state.buckets.get_mut(bucket) {
            *n += 1;
        }
        state.native.observe(ms);
        if let Some(stored) = stored {
            // `bucket` is at most the number of bounds: the `+Inf` slot.
            state.exemplars[bucket] = Some(stored);
        }
        state.sum += ms;
        state.count += 1;
        state.window.observe(ms, now);
    }
}

/// `labels` plus one more, kept sorted by name.
fn with_label(labels: &Labels, (name, value): (&str, &str)) -> Labels {
    let mut out: Vec<(Box<str>, Box<str>)> = labels.to_vec();
    let at = out.partition_point(|(n, _)| &**n < name);
    out.insert(at, (name.into(), value.into()));
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exemplar::RequestId;

    fn request(
        route: &str,
        status: u16,
        ms: u64,
        category: Option<ErrorCategory>,
    ) -> FinishedRequest<'_> {
        let started = Instant::now();
        FinishedRequest {
            route,
            method: 1,
            status: StatusCode::from_u16(status).unwrap(),
            model: None,
            category,
            started,
            ended: started + Duration::from_millis(ms),
            exemplar: None,
        }
    }

    fn snapshot(h: &HttpFamilies) -> Snapshot {
        let mut s = Snapshot::default();
        h.snapshot(Instant::now(), &mut s);
        s
    }

    #[test]
    fn one_request_updates_all_three_families_of_its_label_set() {
        let h = HttpFamilies::new(4, Duration::from_secs(600));
        h.record(&request("/v1/models", 200, 100, None), (2, "unknown"));
        h.record(&request("/v1/models", 200, 150, None), (2, "unknown"));
        h.record(&request("/v1/models", 200, 20_000, None), (2, "unknown"));
        let s = snapshot(&h);
        let labels = [
            ("method", METHODS[1]),
            ("model", "unknown"),
            ("route", "/v1/models"),
            ("status_family", "2xx"),
        ];
        assert_eq!(
            s.find("codex_http_requests_total", &labels),
            Some(&[3.0][..])
        );
        // 100 is in its own bucket (le is inclusive), 150 in le=200, 20 s above all.
        let histogram = s.find("codex_http_latency_ms", &labels).unwrap();
        assert_eq!(
            histogram[..9],
            [0.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
        );
        assert!((histogram[9] - 20_250.0).abs() < 1e-9);
        assert_eq!(histogram[10], 3.0);
        let summary = s.find("codex_http_latency_summary_ms", &labels).unwrap();
        assert_eq!(summary.len(), SUMMARY_QUANTILES.len() + 2);
        assert!((summary[0] - 150.0).abs() <= 1.5, "p50 {}", summary[0]);
        assert_eq!(summary[4..], histogram[9..]);
        // No 5xx: the error family is declared, without series.
        let errors = s
            .families
            .iter()
            .find(|f| f.name == "codex_http_errors_total")
            .expect("declared before its first series");
        assert!(errors.labels.is_empty());
    }

    #[test]
    fn latency_keeps_native_buckets_and_the_latest_exemplar_of_each_bucket() {
        let h = HttpFamilies::new(4, Duration::from_secs(600));
        let ids: Vec<ExemplarId> = (0..3)
            .map(|i| ExemplarId::Request(RequestId::from_u64(i)))
            .collect();
        for (ms, id) in [(100, &ids[0]), (90, &ids[1]), (20_000, &ids[2])] {
            let mut r = request("/v1/models", 200, ms, None);
            r.exemplar = Some(id);
            h.record(&r, (2, "unknown"));
        }
        let s = snapshot(&h);
        let latency = s
            .families
            .iter()
            .find(|f| f.name == "codex_http_latency_ms")
            .unwrap();
        let native = &latency.native[0];
        assert_eq!((native.count, native.schema), (3, 3));
        assert_eq!(native.deltas.iter().sum::<i64>(), 1); // buckets 1, 1, 1: deltas 1, 0, 0
        assert_eq!(native.spans.len(), 3);
        let exemplars = &latency.exemplars[..LATENCY_BUCKETS_MS.len() + 1];
        // 90 then 100 ms landed in le=100: the latest is kept; 20 s is in +Inf.
        let request_id = |i: usize| exemplars[i].as_ref().map(|e| e.labels[0].1.clone());
        assert_eq!(request_id(1).as_deref(), Some("chatcmpl-0000000000000001"));
        assert_eq!(exemplars[1].as_ref().unwrap().value, 90.0);
        assert_eq!(request_id(9).as_deref(), Some("chatcmpl-0000000000000002"));
        assert_eq!(request_id(0), None);
    }

    #[test]
    fn a_5xx_counts_an_error_by_category_internal_when_none_is_given() {
        let h = HttpFamilies::new(4, Duration::from_secs(600));
        let busy = Some(ErrorCategory::WorkerBusy);
        h.record(&request("/v1/chat/completions", 503, 5, busy), (0, "m"));
        h.record(&request("/v1/chat/completions", 500, 5, None), (0, "m"));
        h.record(&request("/v1/chat/completions", 404, 5, busy), (0, "m"));
        let s = snapshot(&h);
        let labels = |category| {
            [
                ("category", category),
                ("method", METHODS[1]),
                ("model", "m"),
                ("route", "/v1/chat/completions"),
                ("status_family", "5xx"),
            ]
        };
        assert_eq!(
            s.find("codex_http_errors_total", &labels("worker_busy")),
            Some(&[1.0][..])
        );
        assert_eq!(
            s.find("codex_http_errors_total", &labels("internal")),
            Some(&[1.0][..])
        );
        let errors = s
            .families
            .iter()
            .find(|f| f.name == "codex_http_errors_total");
        assert_eq!(errors.map(|f| f.labels.len()), Some(2));
    }

    #[test]
    fn label_sets_keep_their_order_from_snapshot_to_snapshot() {
        let h = HttpFamilies::new(4, Duration::from_secs(600));
        let routes: Vec<String> = (0..50).map(|i| format!("/r{}", (i * 37) % 50)).collect();
        for r in &routes {
            h.record(&request(r, 200, 1, None), (0, "m"));
        }
        let order = |s: &Snapshot| -> Vec<String> {
            let f = s
                .families
                .iter()
                .find(|f| f.name == "codex_http_requests_total")
                .unwrap();
            f.labels.iter().map(|l| l[2].1.to_string()).collect()
        };
        let first = order(&snapshot(&h));
        assert_eq!(first, routes);
        h.record(&request("/new", 200, 1, None), (0, "m"));
        let second = order(&snapshot(&h));
        assert_eq!(second[..50], first[..]);
        assert_eq!(second[50], "/new");
        assert_eq!(h.len(), 51);
    }
}
