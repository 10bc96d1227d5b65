//! Exponential backoff with full jitter, and `Retry-After`.
//!
//! `delay(attempt) = uniform(0, min(max, base · 2^attempt))` ("full jitter"):
//! retries of many batches spread out instead of arriving in waves. When the
//! collector says how long to wait (`Retry-After`), that wins, clamped to
//! `retry_after_max` so a bogus header cannot park a topic for a year.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime};

/// Defaults to 2 s: Mixpanel's guidance for retrying failed requests.
pub const DEFAULT_BASE: Duration = Duration::from_secs(2);
/// Defaults to 60 s: Mixpanel's guidance caps the doubling at a minute.
pub const DEFAULT_MAX: Duration = Duration::from_secs(60);
/// Defaults to 10 minutes: the longest `Retry-After` honoured as given.
pub const DEFAULT_RETRY_AFTER_MAX: Duration = Duration::from_secs(600);

/// Backoff settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffConfig {
    /// The first retry waits up to this.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// No retry waits longer than this (before `Retry-After`).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// The longest `Retry-After` honoured.
    #[serde(with = "humantime_serde")]
    pub retry_after_max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            base: DEFAULT_BASE,
            max: DEFAULT_MAX,
            retry_after_max: DEFAULT_RETRY_AFTER_MAX,
        }
    }
}

impl BackoffConfig {
    /// Checks the fields; the error names the field.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` naming `backoff.base`, `backoff.max` or `backoff.retry_after_max`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, reason: &str| {
            Err(ConfigError::Invalid {
                name: format!("backoff.{name}"),
                reason: reason.into(),
            })
        };
        if self.base.is_zero() {
            return invalid("base", "must be greater than 0");
        }
        if self.max < self.base {
            return invalid("max", "must be at least backoff.base");
        }
        if self.retry_after_max.is_zero() {
            return invalid("retry_after_max", "must be greater than 0");
        }
        Ok(())
    }
}

/// The backoff schedule of one topic.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Backoff {
    cfg: BackoffConfig,
}

impl Backoff {
    /// A schedule over a validated config.
    pub fn new(cfg: BackoffConfig) -> Self {
        Self { cfg }
    }

    /// The upper bound of the jittered delay after `attempts` failures (0-based).
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let factor = 1u64.checked_shl(attempts.min(32)).unwrap_or(u64::MAX);
        let nanos = (self.cfg.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.cfg.max)
    }

    /// How long to wait before the next attempt: the collector's `hint`
    /// (clamped to `retry_after_max`) when given, else full jitter over
    /// [`Backoff::ceiling`]. The RNG is injected so tests are deterministic.
    pub fn delay(
        &self,
        attempts: u32,
        hint: Option<Duration>,
        rng: &mut fastrand::Rng,
    ) -> Duration {
        if let Some(h) = hint {
            return h.min(self.cfg.retry_after_max);
        }
        let ceiling = self.ceiling(attempts).as_millis() as u64;
        Duration::from_millis(rng.u64(0..=ceiling))
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP date (relative to `now`).
/// A date in the past means "now" (zero). Unparseable values are `None`.
#[doc(hidden)]
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs.min(1e9)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(BackoffConfig::default())
    }

    #[test]
    fn the_ceiling_doubles_from_base_to_max() {
        let b = backoff();
        let secs: Vec<u64> = (0..8).map(|a| b.ceiling(a).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let b = backoff();
        let mut rng = fastrand::Rng::with_seed(7);
        for attempt in 0..10 {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..200 {
                let d = b.delay(attempt, None, &mut rng);
                assert!(
                    d <= b.ceiling(attempt),
                    "{d:?} over {:?}",
                    b.ceiling(attempt)
                );
                seen.insert(d.as_millis() / 100);
            }
            assert!(seen.len() > 5, "jitter does not spread: {seen:?}");
        }
    }

    #[test]
    fn retry_after_wins_but_is_clamped() {
        let b = backoff();
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            b.delay(9, Some(Duration::from_secs(3)), &mut rng),
            Duration::from_secs(3)
        );
        assert_eq!(
            b.delay(0, Some(Duration::from_secs(86_400)), &mut rng),
            DEFAULT_RETRY_AFTER_MAX
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Sun, 22 Nov 2026 10:00:00 GMT").unwrap();
        let cases: [(&str, Option<u64>); 6] = [
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("Sun, 22 Nov 2026 10:00:30 GMT", Some(30)),
            ("Sun, 22 Nov 2026 09:00:00 GMT", Some(0)),
            ("soon", None),
            ("-5", None),
        ];
        for (value, want) in cases {
            assert_eq!(
                parse_retry_after(value, now).map(|d| d.as_secs()),
                want,
                "Retry-After: {value}"
            );
        }
    }

    #[test]
    fn validation_names_the_field() {
        let cfg = BackoffConfig {
            max: Duration::from_millis(1),
            ..BackoffConfig::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("backoff.max")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_of_sleeps_follows_the_delays() {
        let b = Backoff::new(BackoffConfig {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            retry_after_max: Duration::from_secs(600),
        });
        let mut rng = fastrand::Rng::with_seed(3);
        let start = tokio::time::Instant::now();
        let mut total = Duration::ZERO;
        for attempt in 0..6 {
            let d = b.delay(attempt, None, &mut rng);
            total += d;
            tokio::time::sleep(d).await;
        }
        assert_eq!(start.elapsed(), total);
        assert!(total <= Duration::from_secs(2 + 4 + 8 + 16 + 32 + 60));
    }
}
