//! The account's rate limits as the worker reports them (`account/rateLimits/updated`):
//! how full each window is and when it resets, its length, the credits balance, the plan,
//! and the turns refused because a limit was reached.
//!
//! A window whose `resets_at` has passed with no newer report is empty: its used ratio is
//! 0 from then on, in every snapshot (scrape or push), not the last reported value. The
//! gauges are re-derived from the last report whenever one arrives and before every
//! snapshot.

use std::sync::Mutex;

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};

use crate::exposition::snapshot::{Family, Kind, Snapshot};
use crate::worker::LimitReached;

/// Values of `window` on the rate-limit gauges.
pub(crate) const RATE_LIMIT_WINDOWS: [&str; 2] = ["primary", "secondary"];

/// Values of `plan_type` on `codex_plan_info`: the app-server's `PlanType` (schema of
/// `codex app-server generate-json-schema`, Codex 0.169); any other value is `other`.
const PLAN_TYPES: [&str; 20] = [
    "free",
    "go",
    "plus",
    "pro",
    "prolite",
    "promax",
    "team",
    "self_serve_business_prolite",
    "self_serve_business_usage_based",
    "business",
    "ent26",
    "enterprise_cbp_automation",
    "enterprise_cbp_usage_based",
    "enterprise",
    "edu",
    "edu_plus",
    "edu_pro",
    "sci",
    "sci_plus",
    "unknown",
];

/// One window's last report.
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    used_ratio: Option<f64>,
    resets_at: Option<f64>,
}

pub(crate) struct RateLimitGauges {
    used: GaugeVec,
    resets_at: GaugeVec,
    window_seconds: GaugeVec,
    credits: GaugeVec,
    plan: GaugeVec,
    limit_reached: IntCounterVec,
    windows: Mutex<[Window; 2]>,
}

impl RateLimitGauges {
    pub(crate) fn new(registry: &Registry) -> Result<RateLimitGauges, prometheus::Error> {
        let gauge =
            |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let g = RateLimitGauges {
            used: gauge(
                "codex_rate_limit_used_ratio",
                "Share of the account's rate-limit window used (0-1), from the worker's latest report; 0 once the window has reset.",
                &["window"],
            )?,
            resets_at: gauge(
                "codex_rate_limit_resets_at_seconds",
                "Unix time at which the account's rate-limit window resets, from the worker's latest report.",
                &["window"],
            )?,
            window_seconds: gauge(
                "codex_rate_limit_window_seconds",
                "Length of the account's rate-limit window, from the worker's latest report.",
                &["window"],
            )?,
            credits: gauge(
                "codex_rate_limit_credits_balance",
                "The account's credits balance, from the worker's latest report.",
                &[],
            )?,
            plan: gauge(
                "codex_plan_info",
                "1 for the account's plan type, from the worker's latest report.",
                &["plan_type"],
            )?,
            limit_reached: IntCounterVec::new(
                Opts::new(
                    "codex_turns_limit_reached_total",
                    "Turns refused because an account limit was reached (codexErrorInfo usageLimitExceeded or rateLimitExceeded).",
                ),
                &["limit"],
            )?,
            windows: Mutex::new([Window::default(); 2]),
        };
        registry.register(Box::new(g.used.clone()))?;
        registry.register(Box::new(g.resets_at.clone()))?;
        registry.register(Box::new(g.window_seconds.clone()))?;
        registry.register(Box::new(g.credits.clone()))?;
        registry.register(Box::new(g.plan.clone()))?;
        registry.register(Box::new(g.limit_reached.clone()))?;
        for limit in LimitReached::ALL {
            g.limit_reached.with_label_values(&[limit.as_str()]);
        }
        Ok(g)
    }

    /// Takes one window's report (`index` into [`RATE_LIMIT_WINDOWS`]); a value still
    /// unknown leaves its series absent (a 0 would claim an unused limit).
    pub(crate) fn set_window(
        &self,
        index: usize,
        used_ratio: Option<f64>,
        resets_at: Option<f64>,
        window_seconds: Option<f64>,
        now: f64,
    ) {
        let Some(name) = RATE_LIMIT_WINDOWS.get(index) else {
            return;
        };
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = &mut windows[index];
        w.used_ratio = used_ratio.or(w.used_ratio);
        w.resets_at = resets_at.or(w.resets_at);
        if let Some(at) = w.resets_at {
            self.resets_at.with_label_values(&[name]).set(at);
        }
        if let Some(secs) = window_seconds {
            self.window_seconds.with_label_values(&[name]).set(secs);
        }
        self.apply(name, *w, now);
    }

    /// The credits balance and the plan, when reported.
    pub(crate) fn set_account(&self, credits: Option<f64>, plan: Option<&str>) {
        if let Some(c) = credits {
            self.credits.with_label_values::<&str>(&[]).set(c);
        }
        if let Some(plan) = plan {
            let value = PLAN_TYPES
                .iter()
                .find(|p| **p == plan)
                .copied()
                .unwrap_or("other");
            let current = self.plan.with_label_values(&[value]);
            if current.get() != 1.0 {
                // One plan at a time: the previous one's series goes.
                self.plan.reset();
                self.plan.with_label_values(&[value]).set(1.0);
            }
        }
    }

    pub(crate) fn limit_reached(&self, limit: LimitReached) {
        self.limit_reached
            .with_label_values(&[limit.as_str()])
            .inc();
    }

    /// Empties every window whose reset time has passed (`now` in Unix seconds).
    pub(crate) fn refresh(&self, now: f64) {
        let windows = *self.windows.lock().unwrap_or_else(|p| p.into_inner());
        for (name, w) in RATE_LIMIT_WINDOWS.iter().zip(windows) {
            self.apply(name, w, now);
        }
    }

    fn apply(&self, name: &str, w: Window, now: f64) {
        let Some(used) = w.used_ratio else {
            return;
        };
        let reset = w.resets_at.is_some_and(|at| at <= now);
        self.used
            .with_label_values(&[name])
            .set(if reset { 0.0 } else { used });
    }

    /// Declares the families without series yet (nothing reported yet).
    pub(crate) fn declare_empty(&self, snapshot: &mut Snapshot) {
        use prometheus::core::Collector;
        let gauges: [&dyn Collector; 5] = [
            &self.used,
            &self.resets_at,
            &self.window_seconds,
            &self.credits,
            &self.plan,
        ];
        for desc in gauges.iter().flat_map(|c| c.desc()) {
            if !snapshot.families.iter().any(|f| f.name == desc.fq_name) {
                let family = Family::new(&desc.fq_name, &desc.help, Kind::Gauge, Vec::new().into());
                snapshot.families.push(family);
            }
        }
    }

    /// `codex_rate_limit_used_ratio{window}`, when reported (for tests).
    #[cfg(test)]
    pub(crate) fn used(&self, window: &str) -> Option<f64> {
        use prometheus::core::Collector;
        self.used
            .collect()
            .iter()
            .flat_map(|f| f.get_metric().iter())
            .find(|m| m.get_label().iter().any(|l| l.value() == window))
            .map(|m| m.get_gauge().get_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_appears_when_reported_and_is_empty_once_its_reset_time_passed() {
        let g = RateLimitGauges::new(&Registry::new()).unwrap();
        assert_eq!(g.used("primary"), None);
        g.set_window(0, Some(0.42), Some(1000.0), Some(18000.0), 990.0);
        assert_eq!(g.used("primary"), Some(0.42));
        assert_eq!(g.used("secondary"), None);
        g.refresh(999.0);
        assert_eq!(g.used("primary"), Some(0.42));
        g.refresh(1000.0);
        assert_eq!(g.used("primary"), Some(0.0));
        // The same stale report again (the worker's status changed otherwise): still 0.
        g.set_window(0, Some(0.42), Some(1000.0), None, 1001.0);
        assert_eq!(g.used("primary"), Some(0.0));
        // A new window's report counts again.
        g.set_window(0, Some(0.05), Some(2000.0), None, 1002.0);
        assert_eq!(g.used("primary"), Some(0.05));
    }

    #[test]
    fn the_plan_is_one_bounded_series_and_limits_reached_start_at_zero() {
        let registry = Registry::new();
        let g = RateLimitGauges::new(&registry).unwrap();
        let series = |name: &str| -> Vec<(String, f64)> {
            registry
                .gather()
                .iter()
                .filter(|f| f.name() == name)
                .flat_map(|f| f.get_metric().iter())
                .map(|m| {
                    let label = m.get_label().first().map(|l| l.value().to_string());
                    let v = m.get_gauge().get_value() + m.get_counter().get_value();
                    (label.unwrap_or_default(), v)
                })
                .collect()
        };
        assert_eq!(series("codex_turns_limit_reached_total").len(), 2);
        g.set_account(Some(3.5), Some("plus"));
        g.set_account(None, Some("pro"));
        assert_eq!(series("codex_plan_info"), [("pro".to_string(), 1.0)]);
        g.set_account(None, Some("<script>"));
        assert_eq!(series("codex_plan_info"), [("other".to_string(), 1.0)]);
        assert_eq!(
            series("codex_rate_limit_credits_balance"),
            [(String::new(), 3.5)]
        );
        g.limit_reached(LimitReached::Usage);
        assert!(
            series("codex_turns_limit_reached_total").contains(&("usage_limit".to_string(), 1.0))
        );
    }
}
