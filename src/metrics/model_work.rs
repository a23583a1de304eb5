//! The model-work families: what the worker's turns cost and how they went (tokens, time
//! to first token, time per output token, turn duration and outcome, item kinds), the
//! admission queue in front of the worker (the account's rate limits: `rate_limits.rs`).
//!
//! Every family lives in the one prometheus registry, so `/metrics`, remote-write and the
//! Pushgateway carry it. Label sets that are closed (token kinds, outcomes, item kinds,
//! the `stream` flag) are created together for a model value the first time that value is
//! seen (the allowlisted models at start), so `rate()` and alerts see 0 rather than
//! nothing. A model value's series are kept in a slot of their own (the label rule's
//! dense index), so recording a turn looks nothing up by name.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use prometheus::{
    Counter, CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};

use super::cost::Prices;
use super::exemplar::ExemplarId;
use super::labels::LabelRules;
use super::native::{Companion, NativeBuckets};
use crate::exposition::snapshot::{Exemplar, Family, Kind, NativeHistogram, Snapshot};

/// Values of `kind` on `codex_tokens_total`, in [`TokenCounts`]' order.
pub const TOKEN_KINDS: [&str; 5] = [
    "input",
    "cached_input",
    "cache_write_input",
    "output",
    "reasoning_output",
];

/// Buckets of `codex_time_to_first_token_seconds`: from a cached reply to a minute of
/// thinking; the bounds an operator's p50/p95 usually fall between are the denser ones.
pub const TTFT_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
];
/// Buckets of `codex_time_per_output_token_seconds` (streaming speed 1 000 to 4
/// tokens/s).
pub const TPOT_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5,
];
/// Buckets of `codex_turn_duration_seconds`: agent turns run from seconds to many minutes.
pub const TURN_BUCKETS: [f64; 13] = [
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];
/// Buckets of `codex_worker_wait_seconds`; the first holds the requests that found a
/// free slot (wait 0).
pub const WAIT_BUCKETS: [f64; 12] = [
    0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// How a turn ended, from the proxy's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The worker reported `completed`.
    Completed,
    /// The worker reported `failed`.
    Failed,
    /// The worker reported `interrupted` without the proxy asking.
    Interrupted,
    /// The client went away before the turn ended (the proxy then interrupts it).
    ClientDisconnected,
    /// `server.request_timeout` ran out during the turn.
    Timeout,
    /// The worker exited or closed its output during the turn.
    WorkerLost,
}

impl Outcome {
    /// Every outcome, in declaration order (`ALL[o as usize] == o`).
    pub const ALL: [Outcome; 6] = [
        Outcome::Completed,
        Outcome::Failed,
        Outcome::Interrupted,
        Outcome::ClientDisconnected,
        Outcome::Timeout,
        Outcome::WorkerLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::Timeout => "timeout",
            Outcome::WorkerLost => "worker_lost",
        }
    }
}

/// Values of `kind` on `codex_turn_items_total`: the item kinds an operator asks about
/// (what the agent did), then `other`. Inputs the turn did not produce (`userMessage`,
/// `hookPrompt`) are not counted at all.
pub const ITEM_KINDS: [&str; 11] = [
    "agent_message",
    "reasoning",
    "command_execution",
    "file_change",
    "mcp_tool_call",
    "dynamic_tool_call",
    "web_search",
    "image_generation",
    "plan",
    "context_compaction",
    "other",
];

/// The place in [`ITEM_KINDS`] of an app-server `ThreadItem` type; `None` for the input
/// items that a turn does not produce.
pub fn item_kind_index(item_type: &str) -> Option<usize> {
    let index = match item_type {
        "userMessage" | "hookPrompt" => return None,
        "agentMessage" => 0,
        "reasoning" => 1,
        "commandExecution" => 2,
        "fileChange" => 3,
        "mcpToolCall" => 4,
        "dynamicToolCall" => 5,
        "webSearch" => 6,
        "imageGeneration" => 7,
        "plan" => 8,
        "contextCompaction" => 9,
        _ => ITEM_KINDS.len() - 1,
    };
    Some(index)
}

/// A turn's token usage, in [`TOKEN_KINDS`]' order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts(pub [u64; 5]);

impl TokenCounts {
    pub fn output(&self) -> u64 {
        self.0[3]
    }
}

/// One turn that has ended, as recorded once.
#[derive(Debug, Clone)]
pub struct FinishedTurn<'a> {
    /// The raw model name; the label rules bound it.
    pub model: Option<&'a str>,
    /// The API key that asked for it: its index among the configured key names (0, the
    /// `key` label `none`, when none is configured).
    pub key: usize,
    /// Whether the client asked for SSE.
    pub stream: bool,
    pub outcome: Outcome,
    /// From the turn's start (a worker slot held) to its end.
    pub duration: Duration,
    /// From the request being accepted to the first content byte (streamed) or the first
    /// delta (not streamed); `None` when no content came.
    pub time_to_first_token: Option<Duration>,
    /// From the first delta to the last one, read from the worker.
    pub first_to_last_delta: Option<Duration>,
    /// `None` when the worker reported no usage for the turn.
    pub tokens: Option<TokenCounts>,
    /// The account limit that refused the turn, if one did.
    pub limit_reached: Option<crate::worker::LimitReached>,
    /// How many items of each of [`ITEM_KINDS`] the turn produced.
    pub items: [u32; ITEM_KINDS.len()],
    /// The request's, kept as the exemplar of its time to first token and duration.
    pub exemplar: Option<&'a ExemplarId>,
}

/// The series of one value of the `model` label.
struct ModelSeries {
    /// Per key (index of the key name), per token kind.
    tokens: Box<[[IntCounter; TOKEN_KINDS.len()]]>,
    /// `stream="false"`, then `stream="true"`.
    time_to_first_token: [Histogram; 2],
    time_per_output_token: Histogram,
    duration: [Histogram; Outcome::ALL.len()],
    /// Per key, per outcome.
    turns: Box<[[IntCounter; Outcome::ALL.len()]]>,
    without_usage: IntCounter,
    items: [IntCounter; ITEM_KINDS.len()],
    /// Per key.
    cost: Box<[Counter]>,
    unpriced: IntCounter,
    /// The price of this model value, looked up once: a priced model is an allowed label
    /// value, so its label value is its name.
    price: Option<super::cost::Price>,
    /// The native buckets and exemplars of the histograms above, in their order.
    time_to_first_token_native: [Companion; 2],
    time_per_output_token_native: Companion,
    duration_native: [Companion; Outcome::ALL.len()],
    model: Box<str>,
}

/// One companion's reading, matched to its classic series after the registry's gather.
struct CompanionRead {
    family: &'static str,
    /// The series' label values in label-name order.
    values: [Option<Box<str>>; 2],
    native: NativeHistogram,
    exemplars: Vec<Option<Exemplar>>,
}

const TTFT: &str = "codex_time_to_first_token_seconds";
const TPOT: &str = "codex_time_per_output_token_seconds";
const DURATION: &str = "codex_turn_duration_seconds";
const WAIT: &str = "codex_worker_wait_seconds";

/// The model-work families and the admission-queue and rate-limit gauges.
pub(crate) struct ModelWork {
    tokens: IntCounterVec,
    time_to_first_token: HistogramVec,
    time_per_output_token: HistogramVec,
    duration: HistogramVec,
    turns: IntCounterVec,
    without_usage: IntCounterVec,
    items: IntCounterVec,
    cost: CounterVec,
    unpriced: IntCounterVec,
    prices: Prices,
    /// One slot per value the model label can take (`LabelRules::model_slot`).
    models: Box<[OnceLock<ModelSeries>]>,
    /// Values of the `key` label: the configured key names, or `none`.
    keys: Box<[String]>,
    pub(crate) worker_wait: Histogram,
    worker_wait_native: Companion,
    pub(crate) queue_depth: IntGauge,
}

impl ModelWork {
    /// `keys`: the configured key names (`Config::key_names`); empty when `/v1/*` needs
    /// no key, and then every turn is `key="none"`.
    pub(crate) fn new(
        registry: &Registry,
        labels: &LabelRules,
        allowed_models: &[String],
        keys: &[&str],
        prices: Prices,
    ) -> Result<ModelWork, prometheus::Error> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )
        };
        let work = ModelWork {
            tokens: counter(
                "codex_tokens_total",
                "Tokens the worker's turns used, by model, kind and API key name, counted once per turn.",
                &["model", "kind", "key"],
            )?,
            time_to_first_token: histogram(
                TTFT,
                "From the request being accepted to the first content byte (streamed) or the first delta (not streamed).",
                &TTFT_BUCKETS,
                &["model", "stream"],
            )?,
            time_per_output_token: histogram(
                TPOT,
                "(last delta - first delta) / (output tokens - 1), for turns with at least 2 output tokens.",
                &TPOT_BUCKETS,
                &["model"],
            )?,
            duration: histogram(
                DURATION,
                "From a turn's start (a worker slot held) to its end, by outcome.",
                &TURN_BUCKETS,
                &["model", "outcome"],
            )?,
            turns: counter(
                "codex_turns_total",
                "Turns that ended, by outcome and API key name.",
                &["model", "outcome", "key"],
            )?,
            without_usage: counter(
                "codex_turns_without_usage_total",
                "Turns whose worker reported no token usage.",
                &["model"],
            )?,
            items: counter(
                "codex_turn_items_total",
                "Items the worker's turns produced, by kind.",
                &["model", "kind"],
            )?,
            cost: CounterVec::new(
                Opts::new(
                    "codex_cost_usd_total",
                    "What the worker's turns cost in USD at the configured prices, by model and API key name.",
                ),
                &["model", "key"],
            )?,
            unpriced: counter(
                "codex_turns_unpriced_total",
                "Turns of a model without a configured price: their cost is not in codex_cost_usd_total.",
                &["model"],
            )?,
            prices,
            models: (0..labels.model_value_bound())
                .map(|_| OnceLock::new())
                .collect(),
            keys: if keys.is_empty() {
                vec![crate::config::NO_KEY_NAME.to_string()].into()
            } else {
                keys.iter().map(|k| k.to_string()).collect()
            },
            worker_wait: Histogram::with_opts(
                HistogramOpts::new(
                    WAIT,
                    "Time a request waited for a worker slot before its turn started; 0 when one was free.",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
            )?,
            worker_wait_native: Companion::new(&WAIT_BUCKETS),
            queue_depth: IntGauge::new(
                "codex_worker_queue_depth",
                "Requests waiting for a worker slot.",
            )?,
        };
        registry.register(Box::new(work.tokens.clone()))?;
        registry.register(Box::new(work.time_to_first_token.clone()))?;
        registry.register(Box::new(work.time_per_output_token.clone()))?;
        registry.register(Box::new(work.duration.clone()))?;
        registry.register(Box::new(work.turns.clone()))?;
        registry.register(Box::new(work.without_usage.clone()))?;
        registry.register(Box::new(work.items.clone()))?;
        registry.register(Box::new(work.cost.clone()))?;
        registry.register(Box::new(work.unpriced.clone()))?;
        registry.register(Box::new(work.worker_wait.clone()))?;
        registry.register(Box::new(work.queue_depth.clone()))?;
        for model in allowed_models {
            work.series(labels.model_slot(Some(model)));
        }
        Ok(work)
    }

    /// Adds, without series, each family that has none yet: every family is declared
    /// (HELP and TYPE) from the first scrape on, and the crate's `gather` leaves out a
    /// vector without children (a model not seen yet, a rate limit not reported yet).
    pub(crate) fn declare_empty(&self, snapshot: &mut Snapshot) {
        use prometheus::core::Collector;
        let families: [(&dyn Collector, Kind, &[f64]); 9] = [
            (&self.cost, Kind::Counter, &[]),
            (&self.unpriced, Kind::Counter, &[]),
            (&self.tokens, Kind::Counter, &[]),
            (&self.time_to_first_token, Kind::Histogram, &TTFT_BUCKETS),
            (&self.time_per_output_token, Kind::Histogram, &TPOT_BUCKETS),
            (&self.duration, Kind::Histogram, &TURN_BUCKETS),
            (&self.turns, Kind::Counter, &[]),
            (&self.without_usage, Kind::Counter, &[]),
            (&self.items, Kind::Counter, &[]),
        ];
        for (collector, kind, bounds) in families {
            for desc in collector.desc() {
                if !snapshot.families.iter().any(|f| f.name == desc.fq_name) {
                    let family = Family::new(&desc.fq_name, &desc.help, kind, bounds.into());
                    snapshot.families.push(family);
                }
            }
        }
    }

    /// The series of one model value, created (every closed label set at 0) on first use.
    fn series(&self, (slot, model): (usize, &str)) -> &ModelSeries {
        self.models[slot].get_or_init(|| ModelSeries {
            tokens: self
                .keys
                .iter()
                .map(|key| TOKEN_KINDS.map(|k| self.tokens.with_label_values(&[model, k, key])))
                .collect(),
            time_to_first_token: ["false", "true"]
                .map(|s| self.time_to_first_token.with_label_values(&[model, s])),
            time_per_output_token: self.time_per_output_token.with_label_values(&[model]),
            duration: Outcome::ALL.map(|o| self.duration.with_label_values(&[model, o.as_str()])),
            turns: self
                .keys
                .iter()
                .map(|key| {
                    Outcome::ALL.map(|o| self.turns.with_label_values(&[model, o.as_str(), key]))
                })
                .collect(),
            without_usage: self.without_usage.with_label_values(&[model]),
            items: ITEM_KINDS.map(|k| self.items.with_label_values(&[model, k])),
            cost: self
                .keys
                .iter()
                .map(|key| self.cost.with_label_values(&[model, key]))
                .collect(),
            unpriced: self.unpriced.with_label_values(&[model]),
            price: self.prices.get(Some(model)).copied(),
            time_to_first_token_native: [(); 2].map(|_| Companion::new(&TTFT_BUCKETS)),
            time_per_output_token_native: Companion::new(&TPOT_BUCKETS),
            duration_native: Outcome::ALL.map(|_| Companion::new(&TURN_BUCKETS)),
            model: model.into(),
        })
    }

    /// Records one wait for a worker slot, classic and native.
    pub(crate) fn observe_wait(&self, seconds: f64) {
        self.worker_wait.observe(seconds);
        self.worker_wait_native
            .observe(seconds, None, Instant::now());
    }

    /// Reads every companion; done before the registry's gather, so that no native
    /// histogram holds an observation its classic series has not counted yet.
    fn read_companions(&self) -> Vec<CompanionRead> {
        let mut out = Vec::new();
        let mut read = |family, values: [Option<&str>; 2], c: &Companion| {
            let (native, exemplars) = c.read();
            out.push(CompanionRead {
                family,
                values: values.map(|v| v.map(Box::from)),
                native,
                exemplars,
            });
        };
        read(WAIT, [None, None], &self.worker_wait_native);
        for series in self.models.iter().filter_map(OnceLock::get) {
            let model = Some(&*series.model);
            for (c, stream) in series
                .time_to_first_token_native
                .iter()
                .zip(["false", "true"])
            {
                read(TTFT, [model, Some(stream)], c);
            }
            read(TPOT, [model, None], &series.time_per_output_token_native);
            for (c, outcome) in series.duration_native.iter().zip(Outcome::ALL) {
                read(DURATION, [model, Some(outcome.as_str())], c);
            }
        }
        out
    }

    /// A snapshot of the registry's families with the native buckets and exemplars of
    /// each histogram series attached, and every family declared.
    pub(crate) fn snapshot(&self, registry: &Registry) -> Snapshot {
        let mut reads = self.read_companions();
        let mut snapshot = Snapshot::from_families(&registry.gather());
        self.declare_empty(&mut snapshot);
        let names = [TTFT, TPOT, DURATION, WAIT];
        for family in snapshot.families.iter_mut() {
            if family.kind != Kind::Histogram || !names.contains(&family.name.as_str()) {
                continue;
            }
            let n = family.bounds.len();
            let mut native = Vec::with_capacity(family.labels.len());
            let mut exemplars = Vec::with_capacity(family.labels.len() * (n + 1));
            for (labels, values) in family.metrics() {
                let same = |r: &CompanionRead| {
                    r.family == family.name
                        && labels.len() == r.values.iter().flatten().count()
                        && labels
                            .iter()
                            .zip(r.values.iter().flatten())
                            .all(|(l, v)| *l.1 == **v)
                };
                let (sum, count) = (values[n], values[n + 1] as u64);
                match reads.iter().position(same) {
                    Some(at) => {
                        let read = reads.swap_remove(at);
                        native.push(NativeHistogram {
                            count,
                            sum,
                            ..read.native
                        });
                        exemplars.extend(read.exemplars);
                    }
                    // Created between the companions' reading and the gather: no
                    // native observation is known yet.
                    None => {
                        native.push(NativeBuckets::new().snapshot(count, sum));
                        exemplars.extend(std::iter::repeat_n(None, n + 1));
                    }
                }
            }
            family.native = native;
            family.exemplars = exemplars;
        }
        snapshot
    }

    /// Records the turn; returns its cost in USD when its model has a price and the worker
    /// reported usage.
    pub(crate) fn record(&self, labels: &LabelRules, turn: &FinishedTurn<'_>) -> Option<f64> {
        let series = self.series(labels.model_slot(turn.model));
        // An index from outside the configured names cannot happen; `none`'s slot (or
        // the first key's) is the safe place rather than a panic.
        let key = if turn.key < self.keys.len() {
            turn.key
        } else {
            0
        };
        let outcome = turn.outcome as usize;
        series.turns[key][outcome].inc();
        let now = Instant::now();
        let duration = turn.duration.as_secs_f64();
        series.duration[outcome].observe(duration);
        series.duration_native[outcome].observe(duration, turn.exemplar, now);
        if let Some(ttft) = turn.time_to_first_token {
            let (ttft, stream) = (ttft.as_secs_f64(), usize::from(turn.stream));
            series.time_to_first_token[stream].observe(ttft);
            series.time_to_first_token_native[stream].observe(ttft, turn.exemplar, now);
        }
        match turn.tokens {
            Some(tokens) => {
                for (counter, n) in series.tokens[key].iter().zip(tokens.0) {
                    if n > 0 {
                        counter.inc_by(n);
                    }
                }
                if let (Some(span), 2..) = (turn.first_to_last_delta, tokens.output()) {
                    let per_token = span.as_secs_f64() / (tokens.output() - 1) as f64;
                    series.time_per_output_token.observe(per_token);
                    series
                        .time_per_output_token_native
                        .observe(per_token, None, now);
                }
            }
            None => series.without_usage.inc(),
        }
        for (counter, n) in series.items.iter().zip(turn.items) {
            if n > 0 {
                counter.inc_by(u64::from(n));
            }
        }
        let Some(price) = &series.price else {
            series.unpriced.inc();
            return None;
        };
        let cost = price.cost(&turn.tokens?);
        if cost > 0.0 {
            series.cost[key].inc_by(cost);
        }
        Some(cost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::exemplar::RequestId;

    fn family_values(registry: &Registry, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .map(|m| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name().to_string(), l.value().to_string()))
                    .collect();
                let value = m.get_counter().get_value()
                    + m.get_gauge().get_value()
                    + m.get_histogram().get_sample_count() as f64;
                (labels, value)
            })
            .collect()
    }

    fn setup(allowed: &[&str]) -> (Registry, LabelRules, ModelWork) {
        let allowed: Vec<String> = allowed.iter().map(|m| m.to_string()).collect();
        let registry = Registry::new();
        let labels = LabelRules::new(&allowed);
        let work = ModelWork::new(&registry, &labels, &allowed, &[], Prices::default()).unwrap();
        (registry, labels, work)
    }

    fn turn(outcome: Outcome) -> FinishedTurn<'static> {
        FinishedTurn {
            model: Some("gpt-5"),
            key: 0,
            stream: true,
            outcome,
            duration: Duration::from_millis(1200),
            time_to_first_token: Some(Duration::from_millis(300)),
            first_to_last_delta: Some(Duration::from_millis(600)),
            tokens: Some(TokenCounts([11, 3, 0, 7, 2])),
            limit_reached: None,
            items: {
                let mut items = [0; ITEM_KINDS.len()];
                items[0] = 1;
                items[2] = 2;
                items
            },
            exemplar: None,
        }
    }

    #[test]
    fn an_allowlisted_model_has_every_closed_label_set_at_zero_from_the_start() {
        let (registry, _, _) = setup(&["gpt-5"]);
        let turns = family_values(&registry, "codex_turns_total");
        assert_eq!(turns.len(), Outcome::ALL.len());
        assert!(turns.iter().all(|(_, v)| *v == 0.0));
        assert_eq!(
            family_values(&registry, "codex_tokens_total").len(),
            TOKEN_KINDS.len()
        );
        assert_eq!(
            family_values(&registry, "codex_turn_items_total").len(),
            ITEM_KINDS.len()
        );
        assert_eq!(
            family_values(&registry, "codex_time_to_first_token_seconds").len(),
            2
        );
    }

    #[test]
    fn the_key_label_takes_the_key_names_every_pair_declared_and_none_without_keys() {
        let (registry, _, _) = setup(&["gpt-5"]);
        let keys: Vec<_> = family_values(&registry, "codex_turns_total")
            .into_iter()
            .filter_map(|(l, _)| l.into_iter().find(|(k, _)| k == "key").map(|(_, v)| v))
            .collect();
        assert!(
            !keys.is_empty() && keys.iter().all(|k| k == "none"),
            "{keys:?}"
        );

        let registry = Registry::new();
        let allowed = vec!["gpt-5".to_string()];
        let labels = LabelRules::new(&allowed);
        let work = ModelWork::new(
            &registry,
            &labels,
            &allowed,
            &["team-a", "team-b"],
            Prices::default(),
        )
        .unwrap();
        assert_eq!(
            family_values(&registry, "codex_turns_total").len(),
            2 * Outcome::ALL.len()
        );
        assert_eq!(
            family_values(&registry, "codex_tokens_total").len(),
            2 * TOKEN_KINDS.len()
        );
        let mut t = turn(Outcome::Completed);
        t.key = 1;
        work.record(&labels, &t);
        let with = |name: &str, key: &str| -> f64 {
            family_values(&registry, name)
                .into_iter()
                .filter(|(l, _)| l.iter().any(|(k, v)| k == "key" && v == key))
                .map(|(_, v)| v)
                .sum()
        };
        assert_eq!(with("codex_turns_total", "team-b"), 1.0);
        assert_eq!(with("codex_turns_total", "team-a"), 0.0);
        assert_eq!(with("codex_tokens_total", "team-b"), 23.0);
        assert_eq!(with("codex_tokens_total", "team-a"), 0.0);
        // Families without the key label keep theirs.
        assert!(family_values(&registry, "codex_turn_items_total")
            .iter()
            .all(|(l, _)| l.iter().all(|(k, _)| k != "key")));
    }

    #[test]
    fn cost_grows_per_key_at_the_price_and_unpriced_models_are_counted() {
        let registry = Registry::new();
        let allowed = vec!["gpt-5".to_string()];
        let labels = LabelRules::new(&allowed);
        let price: crate::config::PriceConfig =
            toml::from_str("input = 1.25\ncached_input = 0.125\noutput = 10.0").unwrap();
        let prices = Prices::new([(&"gpt-5".to_string(), &price)]);
        let work = ModelWork::new(&registry, &labels, &allowed, &["a", "b"], prices).unwrap();
        assert_eq!(family_values(&registry, "codex_cost_usd_total").len(), 2);
        assert_eq!(
            family_values(&registry, "codex_turns_unpriced_total").len(),
            1
        );
        let mut t = turn(Outcome::Completed);
        t.key = 1;
        let hand = (8.0 * 1.25 + 3.0 * 0.125 + 7.0 * 10.0) / 1e6;
        for _ in 0..3 {
            let cost = work.record(&labels, &t).unwrap();
            assert!((cost - hand).abs() < 1e-15);
        }
        let cost: Vec<_> = family_values(&registry, "codex_cost_usd_total");
        let of = |key: &str| {
            cost.iter()
                .find(|(l, _)| l.iter().any(|(k, v)| k == "key" && v == key))
                .map(|(_, v)| *v)
                .unwrap()
        };
        assert!((of("b") - 3.0 * hand).abs() < 1e-12, "{}", of("b"));
        assert_eq!(of("a"), 0.0);
        t.model = Some("unpriced-model");
        assert_eq!(work.record(&labels, &t), None);
        let unpriced: f64 = family_values(&registry, "codex_turns_unpriced_total")
            .iter()
            .filter(|(l, _)| l.iter().any(|(k, v)| k == "model" && v == "other"))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(unpriced, 1.0);
    }

    #[test]
    fn a_turn_counts_its_tokens_outcome_items_and_timings_once() {
        let (registry, labels, work) = setup(&["gpt-5"]);
        work.record(&labels, &turn(Outcome::Completed));
        let value = |name: &str, pairs: &[(&str, &str)]| {
            family_values(&registry, name)
                .into_iter()
                .filter(|(l, _)| {
                    pairs
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        for (kind, n) in TOKEN_KINDS.iter().zip([11.0, 3.0, 0.0, 7.0, 2.0]) {
            assert_eq!(value("codex_tokens_total", &[("kind", kind)]), n, "{kind}");
        }
        assert_eq!(value("codex_turns_total", &[("outcome", "completed")]), 1.0);
        assert_eq!(value("codex_turns_total", &[]), 1.0);
        assert_eq!(
            value("codex_turn_items_total", &[("kind", "command_execution")]),
            2.0
        );
        assert_eq!(
            value("codex_time_to_first_token_seconds", &[("stream", "true")]),
            1.0
        );
        assert_eq!(value("codex_time_per_output_token_seconds", &[]), 1.0);
        // 0.6 s over 7 - 1 tokens.
        let tpot = registry
            .gather()
            .iter()
            .find(|f| f.name() == "codex_time_per_output_token_seconds")
            .map(|f| f.get_metric()[0].get_histogram().get_sample_sum())
            .unwrap();
        assert!((tpot - 0.1).abs() < 1e-9, "{tpot}");
        assert_eq!(value("codex_turns_without_usage_total", &[]), 0.0);
    }

    #[test]
    fn every_histogram_series_carries_native_buckets_and_its_turns_exemplar() {
        let (registry, labels, work) = setup(&["gpt-5"]);
        let id = ExemplarId::Request(RequestId::from_u64(0xaa));
        let mut t = turn(Outcome::Completed);
        t.exemplar = Some(&id);
        work.record(&labels, &t);
        work.observe_wait(0.0);
        let s = work.snapshot(&registry);
        for name in [TTFT, TPOT, DURATION, WAIT] {
            let f = s.families.iter().find(|f| f.name == name).unwrap();
            assert_eq!(f.native.len(), f.labels.len(), "{name}");
            assert_eq!(f.exemplars.len(), f.labels.len() * (f.bounds.len() + 1));
            for (native, (_, values)) in f.native.iter().zip(f.metrics()) {
                let n = f.bounds.len();
                assert_eq!(native.count, values[n + 1] as u64, "{name}");
                let buckets: i64 = native
                    .deltas
                    .iter()
                    .scan(0, |c, d| {
                        *c += d;
                        Some(*c)
                    })
                    .sum();
                assert_eq!(buckets as u64 + native.zero_count, native.count, "{name}");
            }
        }
        let ttft = s.families.iter().find(|f| f.name == TTFT).unwrap();
        let with = ttft.exemplars.iter().flatten().collect::<Vec<_>>();
        assert_eq!(with.len(), 1);
        assert_eq!(with[0].value, 0.3);
        assert_eq!(
            with[0].labels,
            vec![("request_id", "chatcmpl-00000000000000aa".to_string())]
        );
        // The zero wait is in the zero bucket.
        let wait = s.families.iter().find(|f| f.name == WAIT).unwrap();
        assert_eq!(wait.native[0].zero_count, 1);
    }

    #[test]
    fn a_turn_without_usage_counts_no_tokens_and_is_counted_itself() {
        let (registry, labels, work) = setup(&[]);
        let mut t = turn(Outcome::Failed);
        t.tokens = None;
        t.model = Some("not-allowed");
        work.record(&labels, &t);
        let tokens: f64 = family_values(&registry, "codex_tokens_total")
            .iter()
            .map(|(_, v)| v)
            .sum();
        assert_eq!(tokens, 0.0);
        let without = family_values(&registry, "codex_turns_without_usage_total");
        assert_eq!(
            without,
            vec![(vec![("model".to_string(), "other".to_string())], 1.0)]
        );
        assert_eq!(
            family_values(&registry, "codex_time_per_output_token_seconds")[0].1,
            0.0
        );
    }

    #[test]
    fn one_output_token_gives_no_time_per_output_token() {
        let (registry, labels, work) = setup(&["gpt-5"]);
        let mut t = turn(Outcome::Completed);
        t.tokens = Some(TokenCounts([1, 0, 0, 1, 0]));
        work.record(&labels, &t);
        assert_eq!(
            family_values(&registry, "codex_time_per_output_token_seconds")[0].1,
            0.0
        );
    }

    #[test]
    fn item_types_map_to_a_bounded_kind_and_inputs_are_not_counted() {
        assert_eq!(item_kind_index("userMessage"), None);
        assert_eq!(item_kind_index("hookPrompt"), None);
        assert_eq!(
            item_kind_index("commandExecution").map(|i| ITEM_KINDS[i]),
            Some("command_execution")
        );
        for unknown in ["sleep", "imageView", "enteredReviewMode", "<script>", ""] {
            assert_eq!(
                item_kind_index(unknown).map(|i| ITEM_KINDS[i]),
                Some("other")
            );
        }
    }
}
