//! Budgets per API key (`[[budgets]]`): the spend of the current calendar period (UTC),
//! the gauges `codex_budget_limit_usd{key}` and `codex_budget_spent_usd{key}`, the
//! refusal of an enforced budget's requests once it is spent, and the spend kept on disk
//! across restarts (`store`).
//!
//! Periods roll over on the calendar: whenever spend is added, a request is checked, or
//! the registry is read (`refresh`, before every scrape and push), so the spent gauge drops
//! to 0 at the period's start even when no request comes.

mod store;

use std::path::Path;
use std::sync::Mutex;

use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, Utc};
use prometheus::{Gauge, GaugeVec, Opts, Registry};

use crate::config::{Config, Period};
use crate::exposition::snapshot::{Family, Kind, Snapshot};
use store::{Stored, Writer};

/// The budgets of the configured keys.
pub(crate) struct Budgets {
    entries: Vec<Entry>,
    /// Key index (`Config::key_names`) → entry.
    by_key: Box<[Option<usize>]>,
    writer: Option<Writer>,
    limit: GaugeVec,
    spent: GaugeVec,
}

struct Entry {
    key: String,
    usd: f64,
    period: Period,
    enforce: bool,
    spend: Mutex<Spend>,
    spent_gauge: Gauge,
}

#[derive(Debug, Clone, Copy)]
struct Spend {
    /// Start of the period `spent` belongs to (unix seconds).
    period_start: i64,
    spent: f64,
}

impl Budgets {
    /// The budgets of `config`, their gauges registered, their spend of the current period
    /// read from `server.state_dir`. Problems with the state are logged, never fatal.
    pub(crate) fn new(
        config: &Config,
        registry: &Registry,
        now: DateTime<Utc>,
    ) -> Result<Budgets, prometheus::Error> {
        let limit = GaugeVec::new(
            Opts::new(
                "codex_budget_limit_usd",
                "The configured budget of an API key for its current period, in USD.",
            ),
            &["key"],
        )?;
        let spent = GaugeVec::new(
            Opts::new(
                "codex_budget_spent_usd",
                "What an API key's turns cost in its budget's current calendar period (UTC), in USD.",
            ),
            &["key"],
        )?;
        registry.register(Box::new(limit.clone()))?;
        registry.register(Box::new(spent.clone()))?;
        let dir = &config.server.state_dir;
        let persisted = !dir.as_os_str().is_empty();
        let stored = if persisted && !config.budgets.is_empty() {
            load_stored(dir)
        } else {
            if !config.budgets.is_empty() {
                tracing::warn!("budgets are configured but server.state_dir is empty: their spend starts from zero at every start");
            }
            Vec::new()
        };
        let entries: Vec<Entry> = config
            .budgets
            .iter()
            .map(|b| {
                let period_start = period_start(b.period, now).timestamp();
                let spent_before = stored
                    .iter()
                    .find(|s| {
                        s.key == b.key && s.period == b.period && s.period_start == period_start
                    })
                    .map_or(0.0, |s| s.spent_usd);
                limit.with_label_values(&[&b.key]).set(b.usd);
                let spent_gauge = spent.with_label_values(&[&b.key]);
                spent_gauge.set(spent_before);
                Entry {
                    key: b.key.clone(),
                    usd: b.usd,
                    period: b.period,
                    enforce: b.enforce,
                    spend: Mutex::new(Spend {
                        period_start,
                        spent: spent_before,
                    }),
                    spent_gauge,
                }
            })
            .collect();
        let by_key = config
            .key_names()
            .iter()
            .map(|name| entries.iter().position(|e| e.key == *name))
            .collect();
        let writer = if persisted && !entries.is_empty() {
            start_writer(dir)
        } else {
            None
        };
        Ok(Budgets {
            entries,
            by_key,
            writer,
            limit,
            spent,
        })
    }

    /// Declares (HELP and TYPE, no series) the gauges when no budget is configured: every
    /// family is in the first scrape.
    pub(crate) fn declare_empty(&self, snapshot: &mut Snapshot) {
        use prometheus::core::Collector;
        for desc in self.limit.desc().into_iter().chain(self.spent.desc()) {
            if !snapshot.families.iter().any(|f| f.name == desc.fq_name) {
                let family = Family::new(&desc.fq_name, &desc.help, Kind::Gauge, Vec::new().into());
                snapshot.families.push(family);
            }
        }
    }

    /// Whether the key has a budget (so that a turn of one without asks no clock).
    pub(crate) fn covers(&self, key: usize) -> bool {
        self.entry(key).is_some()
    }

    fn entry(&self, key: usize) -> Option<&Entry> {
        self.entries.get((*self.by_key.get(key)?)?)
    }

    /// Adds `usd` to the key's spend in the current period, and stores it.
    pub(crate) fn add(&self, key: usize, usd: f64, now: DateTime<Utc>) {
        let Some(entry) = self.entry(key) else {
            return;
        };
        if usd <= 0.0 {
            return;
        }
        {
            let mut spend = entry.lock();
            entry.roll(&mut spend, now);
            spend.spent += usd;
            entry.spent_gauge.set(spend.spent);
        }
        if let Some(writer) = &self.writer {
            writer.send(self.stored());
        }
    }

    /// When the key's budget is enforced and spent: the seconds until its period ends
    /// (the `Retry-After`).
    pub(crate) fn refusal(&self, key: usize, now: DateTime<Utc>) -> Option<u64> {
        let entry = self.entry(key).filter(|e| e.enforce)?;
        let mut spend = entry.lock();
        entry.roll(&mut spend, now);
        if spend.spent < entry.usd {
            return None;
        }
        let end = period_end(entry.period, now);
        Some(u64::try_from((end - now).num_seconds()).unwrap_or(0).max(1))
    }

    /// Rolls every budget over to the current period (its spent gauge to 0 when a new one
    /// began).
    pub(crate) fn refresh(&self, now: DateTime<Utc>) {
        for entry in &self.entries {
            let mut spend = entry.lock();
            entry.roll(&mut spend, now);
        }
    }

    fn stored(&self) -> Vec<Stored> {
        self.entries
            .iter()
            .map(|e| {
                let spend = *e.lock();
                Stored {
                    key: e.key.clone(),
                    period: e.period,
                    period_start: spend.period_start,
                    spent_usd: spend.spent,
                }
            })
            .collect()
    }
}

impl Entry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Spend> {
        self.spend.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn roll(&self, spend: &mut Spend, now: DateTime<Utc>) {
        let start = period_start(self.period, now).timestamp();
        if start != spend.period_start {
            *spend = Spend {
                period_start: start,
                spent: 0.0,
            };
            self.spent_gauge.set(0.0);
        }
    }
}

fn load_stored(dir: &Path) -> Vec<Stored> {
    match store::load(dir) {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!("budgets: {e}; every budget starts this period from zero");
            Vec::new()
        }
    }
}

fn start_writer(dir: &Path) -> Option<Writer> {
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::error!(
            "budgets: cannot create server.state_dir {}: {e}; spend will not survive a restart",
            dir.display()
        );
        return None;
    }
    Writer::start(dir.to_path_buf())
        .map_err(|e| tracing::error!("budgets: cannot start the state writer: {e}"))
        .ok()
}

/// 00:00 UTC of the first day of `now`'s period: the day, the week from Monday, the
/// month from the 1st.
pub(crate) fn period_start(period: Period, now: DateTime<Utc>) -> DateTime<Utc> {
    let day = now.date_naive();
    let first = match period {
        Period::Day => day,
        Period::Week => day - Days::days(i64::from(day.weekday().num_days_from_monday())),
        Period::Month => day.with_day(1).unwrap_or(day),
    };
    midnight(first)
}

/// The start of the period after `now`'s.
fn period_end(period: Period, now: DateTime<Utc>) -> DateTime<Utc> {
    let start = period_start(period, now).date_naive();
    let next = match period {
        Period::Day => start + Days::days(1),
        Period::Week => start + Days::days(7),
        Period::Month => start
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(start + Days::days(31)),
    };
    midnight(next)
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_time(chrono::NaiveTime::MIN).and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge(registry: &Registry, name: &str, key: &str) -> f64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .find(|m| m.get_label().iter().any(|l| l.value() == key))
            .map(|m| m.get_gauge().get_value())
            .unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn config(text: &str) -> Config {
        let c = Config::parse(text).unwrap();
        c.validate().unwrap();
        c
    }

    const TWO: &str = "[[server.api_keys]]\nname = \"a\"\nkey = \"ka\"\n[[server.api_keys]]\nname = \"b\"\nkey = \"kb\"\n[[budgets]]\nkey = \"a\"\nusd = 1.0\nperiod = \"day\"\nenforce = true\n";

    #[test]
    fn periods_follow_the_utc_calendar() {
        let now = at("2026-12-09T13:14:15Z"); // a Wednesday
        assert_eq!(period_start(Period::Day, now), at("2026-12-09T00:00:00Z"));
        assert_eq!(period_end(Period::Day, now), at("2026-12-10T00:00:00Z"));
        assert_eq!(period_start(Period::Week, now), at("2026-12-07T00:00:00Z"));
        assert_eq!(period_end(Period::Week, now), at("2026-12-14T00:00:00Z"));
        assert_eq!(period_start(Period::Month, now), at("2026-12-01T00:00:00Z"));
        assert_eq!(period_end(Period::Month, now), at("2027-01-01T00:00:00Z"));
        let feb = at("2028-02-29T23:59:59Z");
        assert_eq!(period_end(Period::Month, feb), at("2028-03-01T00:00:00Z"));
        assert_eq!(
            period_start(Period::Week, at("2026-12-07T00:00:00Z")),
            at("2026-12-07T00:00:00Z")
        );
    }

    #[test]
    fn an_enforced_budget_refuses_its_key_once_spent_until_the_period_ends() {
        let registry = Registry::new();
        let b = Budgets::new(&config(TWO), &registry, at("2026-12-09T10:00:00Z")).unwrap();
        let now = at("2026-12-09T23:59:00Z");
        assert_eq!(b.refusal(0, now), None);
        b.add(0, 0.6, now);
        assert_eq!(b.refusal(0, now), None);
        b.add(0, 0.4, now);
        assert_eq!(b.refusal(0, now), Some(60));
        // The other key has no budget.
        b.add(1, 5.0, now);
        assert_eq!(b.refusal(1, now), None);
        // The next day starts from zero.
        let tomorrow = at("2026-12-10T00:00:01Z");
        assert_eq!(b.refusal(0, tomorrow), None);
        let spent = gauge(&registry, "codex_budget_spent_usd", "a");
        assert_eq!(spent, 0.0);
    }

    #[test]
    fn gauges_start_at_zero_and_roll_over_when_read() {
        let registry = Registry::new();
        let b = Budgets::new(&config(TWO), &registry, at("2026-12-09T10:00:00Z")).unwrap();
        let gauge = |name| gauge(&registry, name, "a");
        assert_eq!(gauge("codex_budget_limit_usd"), 1.0);
        assert_eq!(gauge("codex_budget_spent_usd"), 0.0);
        b.add(0, 0.25, at("2026-12-09T10:00:00Z"));
        assert_eq!(gauge("codex_budget_spent_usd"), 0.25);
        b.refresh(at("2026-12-10T00:00:00Z"));
        assert_eq!(gauge("codex_budget_spent_usd"), 0.0);
    }

    #[test]
    fn spend_survives_a_restart_and_a_corrupt_file_starts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[server]\nstate_dir = {:?}\n{TWO}",
            dir.path().display().to_string()
        );
        let now = at("2026-12-09T10:00:00Z");
        // The writer stores asynchronously; wait for it (with a deadline).
        let stored = |spent: f64| {
            for _ in 0..1000 {
                if store::load(dir.path())
                    .is_ok_and(|s| s.first().is_some_and(|s| s.spent_usd == spent))
                {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            panic!("{spent} never stored");
        };
        {
            let b = Budgets::new(&config(&text), &Registry::new(), now).unwrap();
            b.add(0, 0.75, now);
            stored(0.75);
        }
        let registry = Registry::new();
        let b = Budgets::new(&config(&text), &registry, now).unwrap();
        assert_eq!(gauge(&registry, "codex_budget_spent_usd", "a"), 0.75);
        b.add(0, 0.25, now);
        assert!(b.refusal(0, now).is_some());
        stored(1.0);
        // Another period: the stored spend is not this one's.
        let registry = Registry::new();
        Budgets::new(&config(&text), &registry, at("2026-12-10T10:00:00Z")).unwrap();
        assert_eq!(gauge(&registry, "codex_budget_spent_usd", "a"), 0.0);
        std::fs::write(store::path(dir.path()), b"not a state file").unwrap();
        let registry = Registry::new();
        Budgets::new(&config(&text), &registry, now).unwrap();
        assert_eq!(gauge(&registry, "codex_budget_spent_usd", "a"), 0.0);
    }
}
