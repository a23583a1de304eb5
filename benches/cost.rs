//! The costs of named keys, prices and budgets (docs/performance.md, "Keys, cost and
//! budgets"), each side of every comparison measured in this one run, as thread CPU time
//! (the machine is shared; ratios are the figures to read):
//! - `auth_100_keys_hit` / `auth_100_keys_miss`: finding a bearer token among 100 named
//!   keys of 40 bytes, every key compared in constant time (what the `/v1/*` guard does per
//!   request once it has the token), for a token that is the last key and one that is none;
//! - `record_turn_today`: recording a turn with no keys and no prices (what today's
//!   configuration does: `key="none"`, no cost);
//! - `record_turn_key_cost`: the same turn for the 4th of 5 named keys with its model
//!   priced (the key label and `codex_cost_usd_total`);
//! - `record_turn_key_cost_budget`: the same with a budget on that key (no state_dir), i.e.
//!   the spend added under the budget's lock.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test or bench that panics has failed, with its message

mod common {
    pub mod cpu_time;
}

use std::sync::Arc;
use std::time::Duration;

use codex_proxy::auth::matching_key;
use codex_proxy::config::{Config, MetricsConfig};
use codex_proxy::metrics::model_work::ITEM_KINDS;
use codex_proxy::metrics::{FinishedTurn, Metrics, Outcome, TokenCounts};
use common::cpu_time::ThreadCpuTime;
use criterion::measurement::WallTime;
use criterion::{black_box, Criterion};

const KEYS: &str = r#"
[metrics]
models = ["gpt-5"]
[pricing."gpt-5"]
input = 1.25
cached_input = 0.125
output = 10.0
"#;

fn keyed(budget: bool) -> Config {
    let mut text = KEYS.to_string();
    for i in 0..5 {
        text.push_str(&format!(
            "[[server.api_keys]]\nname = \"team-{i}\"\nkey = \"sk-{i:038}\"\n"
        ));
    }
    if budget {
        text.push_str("[[budgets]]\nkey = \"team-3\"\nusd = 1e12\nperiod = \"month\"\n");
    }
    let config = Config::parse(&text).unwrap();
    config.validate().unwrap();
    config
}

fn main() {
    let mut c = Criterion::default()
        .with_measurement(ThreadCpuTime(WallTime))
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let keys: Arc<[Arc<str>]> = (0..100)
        .map(|i| Arc::from(format!("sk-{i:038}").as_str()))
        .collect();
    let hit = format!("sk-{:038}", 99);
    let miss = format!("sk-{:038}", 100);
    c.bench_function("auth_100_keys_hit", |b| {
        b.iter(|| matching_key(black_box(hit.as_bytes()), &keys))
    });
    c.bench_function("auth_100_keys_miss", |b| {
        b.iter(|| matching_key(black_box(miss.as_bytes()), &keys))
    });

    let mut items = [0; ITEM_KINDS.len()];
    items[0] = 1;
    items[2] = 2;
    let turn = FinishedTurn {
        model: Some("gpt-5"),
        key: 0,
        stream: true,
        outcome: Outcome::Completed,
        duration: Duration::from_millis(4200),
        time_to_first_token: Some(Duration::from_millis(800)),
        first_to_last_delta: Some(Duration::from_millis(3100)),
        tokens: Some(TokenCounts([1200, 800, 0, 310, 120])),
        limit_reached: None,
        exemplar: None,
        items,
    };
    let today: MetricsConfig = toml::from_str("models = [\"gpt-5\"]").unwrap();
    let today = Metrics::new(&today).unwrap();
    c.bench_function("record_turn_today", |b| {
        b.iter(|| today.record_turn(black_box(&turn)))
    });
    let keyed_turn = FinishedTurn {
        key: 3,
        ..turn.clone()
    };
    let with_cost = Metrics::from_config(&keyed(false)).unwrap();
    c.bench_function("record_turn_key_cost", |b| {
        b.iter(|| with_cost.record_turn(black_box(&keyed_turn)))
    });
    let with_budget = Metrics::from_config(&keyed(true)).unwrap();
    c.bench_function("record_turn_key_cost_budget", |b| {
        b.iter(|| with_budget.record_turn(black_box(&keyed_turn)))
    });
    c.final_summary();
}
