//! When to send a failed request again: capped exponential backoff with jitter, and the
//! receiver's own `Retry-After` when it gives one.

use std::time::{Duration, SystemTime};

/// The delay before each retry of one request: `min_backoff`, doubling per failure up to
/// `max_backoff`, each drawn at random from the upper half of that step so that many
/// senders cut off together do not come back together.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// The wait after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step(self.failures);
        self.failures = self.failures.saturating_add(1);
        jittered(step, self.min, fastrand::f64())
    }

    /// The cap of the wait after `failures` earlier failures: `min · 2^failures ≤ max`.
    fn step(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.min(31);
        self.min.saturating_mul(factor).min(self.max)
    }
}

/// A point in `[step/2, step]`, never below `min`; `unit` is uniform in `[0, 1)`.
fn jittered(step: Duration, min: Duration, unit: f64) -> Duration {
    let half = step / 2;
    (half + half.mul_f64(unit.clamp(0.0, 1.0))).max(min)
}

/// `Retry-After` as a delay: delta-seconds (`120`) or an HTTP date (a past date is 0).
/// `None` when absent or malformed, and the backoff applies instead.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn steps_double_from_min_and_stop_at_max() {
        let b = Backoff::new(100 * MS, 1000 * MS);
        let steps: Vec<u128> = (0..6).map(|f| b.step(f).as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            b.step(u32::MAX),
            1000 * MS,
            "no overflow after many failures"
        );
    }

    #[test]
    fn jitter_stays_in_the_upper_half_and_never_below_min() {
        assert_eq!(jittered(800 * MS, 100 * MS, 0.0), 400 * MS);
        assert_eq!(jittered(800 * MS, 100 * MS, 0.999_999).as_millis(), 799);
        assert_eq!(jittered(100 * MS, 100 * MS, 0.0), 100 * MS);
        let mut b = Backoff::new(10 * MS, 50 * MS);
        for _ in 0..100 {
            let d = b.next_delay();
            assert!((10 * MS..=50 * MS).contains(&d), "{d:?}");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
