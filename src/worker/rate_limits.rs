//! The account's rate limits, from `account/rateLimits/updated`. Reports may be sparse
//! (a window, or a field of one, missing or null): each is merged into the last known
//! values rather than replacing them.

use serde::Serialize;
use serde_json::Value;

/// The latest known state of both windows; a window stays `None` until reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct RateLimits {
    pub(crate) primary: Option<RateLimitWindow>,
    pub(crate) secondary: Option<RateLimitWindow>,
    /// The account's credits balance (`credits.balance`, a decimal string on the wire).
    pub(crate) credits_balance: Option<f64>,
    /// The account's plan (`planType`), e.g. `plus`, `pro`, `team`.
    pub(crate) plan_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct RateLimitWindow {
    /// Percent of the window used, 0–100.
    pub(crate) used_percent: Option<f64>,
    /// Unix seconds at which the window resets.
    pub(crate) resets_at: Option<i64>,
    pub(crate) window_duration_mins: Option<i64>,
}

impl RateLimits {
    /// Merges the `params` of one `account/rateLimits/updated`; returns whether anything
    /// was taken from it.
    pub(crate) fn merge(&mut self, params: &Value) -> bool {
        let Some(report) = params.get("rateLimits") else {
            return false;
        };
        let primary = merge_window(&mut self.primary, report.get("primary"));
        let secondary = merge_window(&mut self.secondary, report.get("secondary"));
        let balance = report
            .pointer("/credits/balance")
            .and_then(|b| match b {
                Value::String(s) => s.trim().parse::<f64>().ok(),
                other => other.as_f64(),
            })
            .filter(|b| b.is_finite());
        if balance.is_some() {
            self.credits_balance = balance;
        }
        let plan = report.get("planType").and_then(Value::as_str);
        if let Some(plan) = plan {
            self.plan_type = Some(plan.to_string());
        }
        primary || secondary || balance.is_some() || plan.is_some()
    }
}

fn merge_window(known: &mut Option<RateLimitWindow>, report: Option<&Value>) -> bool {
    let Some(report) = report.filter(|r| r.is_object()) else {
        return false;
    };
    let used = report
        .get("usedPercent")
        .and_then(Value::as_f64)
        .filter(|p| p.is_finite());
    let resets_at = report.get("resetsAt").and_then(Value::as_i64);
    let duration = report.get("windowDurationMins").and_then(Value::as_i64);
    if used.is_none() && resets_at.is_none() && duration.is_none() {
        return false;
    }
    let window = known.get_or_insert_with(RateLimitWindow::default);
    window.used_percent = used.or(window.used_percent);
    window.resets_at = resets_at.or(window.resets_at);
    window.window_duration_mins = duration.or(window.window_duration_mins);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_sparse_report_keeps_the_last_known_values() {
        let mut limits = RateLimits::default();
        assert!(limits.merge(&json!({"rateLimits": {
            "primary": {"usedPercent": 42, "resetsAt": 1_900_000_000i64, "windowDurationMins": 300},
            "secondary": null,
        }})));
        assert_eq!(limits.secondary, None);
        // Only the secondary window, then only the primary's percentage.
        assert!(limits.merge(&json!({"rateLimits": {
            "secondary": {"usedPercent": 91.5, "resetsAt": null},
        }})));
        assert!(limits.merge(&json!({"rateLimits": {"primary": {"usedPercent": 57}}})));
        let primary = limits.primary.clone().unwrap();
        assert_eq!(primary.used_percent, Some(57.0));
        assert_eq!(primary.resets_at, Some(1_900_000_000));
        assert_eq!(primary.window_duration_mins, Some(300));
        let secondary = limits.secondary.clone().unwrap();
        assert_eq!(secondary.used_percent, Some(91.5));
        assert_eq!(secondary.resets_at, None);
        assert!(limits.merge(&json!({"rateLimits": {
            "credits": {"hasCredits": true, "unlimited": false, "balance": "12.50"},
            "planType": "pro",
        }})));
        assert_eq!(limits.credits_balance, Some(12.5));
        assert_eq!(limits.plan_type.as_deref(), Some("pro"));
        assert!(limits.primary.is_some(), "kept");
        // Nothing usable: nothing changes.
        let before = limits.clone();
        assert!(!limits.merge(&json!({"rateLimits": {"primary": {}}})));
        assert!(!limits.merge(&json!({"other": 1})));
        assert_eq!(limits, before);
    }
}
