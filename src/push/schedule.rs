//! When to take a snapshot: every `interval` (sub-second allowed) or on a 6-field `cron`
//! expression (seconds first, UTC), plus an optional random `jitter`; the first push happens
//! at once, not one period later.
//!
//! Built on the `cron` crate (to parse and iterate expressions) and tokio timers rather than
//! `tokio-cron-scheduler`: each destination's loop stays one sequential task that owns its
//! order of snapshots, and the dependency tree stays small.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::{Instant, Interval, MissedTickBehavior};

#[derive(Debug, thiserror::Error)]
pub(crate) enum ScheduleError {
    #[error("invalid cron expression `{expr}`: {message}")]
    Cron { expr: String, message: String },
    #[error("the push interval must be greater than zero")]
    ZeroInterval,
}

enum Cadence {
    Every(Interval),
    Cron(Box<cron::Schedule>),
}

pub(crate) struct Schedule {
    cadence: Cadence,
    jitter: Duration,
    started: bool,
}

impl Schedule {
    /// `cron`, when given, wins over `interval`. Must be called inside a tokio runtime.
    pub(crate) fn new(
        interval: Duration,
        cron: Option<&str>,
        jitter: Duration,
    ) -> Result<Schedule, ScheduleError> {
        let cadence = match cron {
            Some(expr) => {
                let schedule = cron::Schedule::from_str(expr).map_err(|e| ScheduleError::Cron {
                    expr: expr.to_string(),
                    message: e.to_string(),
                })?;
                Cadence::Cron(Box::new(schedule))
            }
            None if interval.is_zero() => return Err(ScheduleError::ZeroInterval),
            None => {
                let mut every = tokio::time::interval_at(Instant::now() + interval, interval);
                // After a slow snapshot, carry on with the grid rather than catching up.
                every.set_missed_tick_behavior(MissedTickBehavior::Skip);
                Cadence::Every(every)
            }
        };
        Ok(Schedule {
            cadence,
            jitter,
            started: false,
        })
    }

    /// Waits until the next push is due: at once on the first call. A cron expression with
    /// no future match never fires again (only shutdown ends the loop then).
    pub(crate) async fn tick(&mut self) {
        if !self.started {
            self.started = true;
            return;
        }
        match &mut self.cadence {
            Cadence::Every(every) => {
                every.tick().await;
            }
            Cadence::Cron(schedule) => match cron_delay(schedule, Utc::now()) {
                Some(delay) => tokio::time::sleep(delay).await,
                None => std::future::pending().await,
            },
        }
        if !self.jitter.is_zero() {
            tokio::time::sleep(self.jitter.mul_f64(fastrand::f64())).await;
        }
    }
}

/// Time from `now` to the next match of `schedule`, if there is one.
fn cron_delay(schedule: &cron::Schedule, now: DateTime<Utc>) -> Option<Duration> {
    let next = schedule.after(&now).next()?;
    (next - now).to_std().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn six_field_cron_fires_on_the_next_matching_second() {
        let every_15s = cron::Schedule::from_str("*/15 * * * * *").unwrap();
        let d = cron_delay(&every_15s, at("2024-05-01T10:00:07.250Z")).unwrap();
        assert_eq!(d, Duration::from_millis(7750));
        let on_the_minute = cron::Schedule::from_str("0 * * * * *").unwrap();
        let d = cron_delay(&on_the_minute, at("2024-05-01T10:00:00Z")).unwrap();
        assert_eq!(
            d,
            Duration::from_secs(60),
            "a match at `now` is not the next one"
        );
    }

    #[test]
    fn a_cron_expression_without_future_matches_has_no_delay() {
        let past = cron::Schedule::from_str("0 0 0 1 1 * 2001").unwrap();
        assert_eq!(cron_delay(&past, at("2024-05-01T10:00:00Z")), None);
    }

    #[tokio::test]
    async fn first_tick_is_immediate_and_bad_settings_are_refused() {
        let mut s = Schedule::new(Duration::from_secs(3600), None, Duration::ZERO).unwrap();
        // Completes without waiting an hour: the first push is not one interval late.
        s.tick().await;
        assert!(matches!(
            Schedule::new(Duration::ZERO, None, Duration::ZERO),
            Err(ScheduleError::ZeroInterval)
        ));
        assert!(matches!(
            Schedule::new(Duration::ZERO, Some("every tuesday"), Duration::ZERO),
            Err(ScheduleError::Cron { .. })
        ));
    }
}
