//! One circuit breaker per topic, shared by the topic's workers.
//!
//! ```text
//!            failure_threshold consecutive failures
//!  Closed ───────────────────────────────────────────▶ Open{until}
//!    ▲                                                    │ until passes
//!    │ probe succeeds                                     ▼
//!    └──────────────────────────────────────────── HalfOpen (one probe in flight)
//!                                   probe fails: Open again, for twice as long (≤ open_max)
//! ```
//!
//! While open, workers wait; while half-open, exactly one worker sends a probe
//! batch and every other worker waits for its outcome — no retry storm when the
//! collector comes back. `pause_until` (a 429 `Retry-After`, a configuration
//! fault) holds every worker of the topic until the given time, then lets one
//! probe through the same way.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Defaults to 5 consecutive failures: one bad request is noise, five are an outage.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// Defaults to 2 s before the first probe, like the first backoff step.
pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(2);
/// Defaults to 60 s between probes at most, like the backoff cap.
pub const DEFAULT_OPEN_MAX: Duration = Duration::from_secs(60);

/// Breaker settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before the first probe.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// The longest it stays open between probes (doubling from `open_for`).
    #[serde(with = "humantime_serde")]
    pub open_max: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            open_for: DEFAULT_OPEN_FOR,
            open_max: DEFAULT_OPEN_MAX,
        }
    }
}

impl BreakerConfig {
    /// Checks the fields; the error names the field.
    ///
    /// # Errors
    ///
    /// `ConfigError::Invalid` naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |name: &str, reason: &str| {
            Err(ConfigError::Invalid {
                name: format!("breaker.{name}"),
                reason: reason.into(),
            })
        };
        if self.failure_threshold == 0 {
            return invalid("failure_threshold", "must be at least 1");
        }
        if self.open_for.is_zero() {
            return invalid("open_for", "must be greater than 0");
        }
        if self.open_max < self.open_for {
            return invalid("open_max", "must be at least breaker.open_for");
        }
        Ok(())
    }
}

/// What a worker may do now.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Send normally.
    Allowed,
    /// Send one probe batch; report its outcome (or `abandon_probe`).
    Probe,
    /// Wait this long, then ask again.
    Wait(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, open_for: Duration },
    HalfOpen { probing: bool, open_for: Duration },
}

/// A topic's breaker.
#[doc(hidden)]
#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: Mutex<State>,
}

/// How long a waiting worker sleeps before asking again while a probe is out.
const PROBE_POLL: Duration = Duration::from_millis(20);

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: BreakerConfig) -> Self {
        Self {
            cfg,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks whether a worker may send now.
    pub fn acquire(&self, now: Instant) -> Permit {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Permit::Allowed,
            State::Open { until, open_for } => {
                if now >= until {
                    *s = State::HalfOpen {
                        probing: true,
                        open_for,
                    };
                    Permit::Probe
                } else {
                    Permit::Wait(until - now)
                }
            }
            State::HalfOpen { probing: true, .. } => Permit::Wait(PROBE_POLL),
            State::HalfOpen {
                probing: false,
                open_for,
            } => {
                *s = State::HalfOpen {
                    probing: true,
                    open_for,
                };
                Permit::Probe
            }
        }
    }

    /// A request succeeded: the breaker closes — unless it is open and its time
    /// has not come (a 429's `Retry-After` or a configuration-fault pause that a
    /// request sent earlier must not lift). Returns whether it is closed now.
    pub fn record_success(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if let State::Open { until, .. } = *s
            && now < until
        {
            return false;
        }
        *s = State::Closed { failures: 0 };
        true
    }

    /// A request failed transiently. Returns how long the breaker stays open
    /// when this failure opened it (from closed, or a failed probe), else `None`.
    pub fn record_failure(&self, now: Instant) -> Option<Duration> {
        let mut s = self.lock();
        let before = *s;
        *s = match before {
            State::Closed { failures } if failures + 1 < self.cfg.failure_threshold => {
                State::Closed {
                    failures: failures + 1,
                }
            }
            State::Closed { .. } => State::Open {
                until: now + self.cfg.open_for,
                open_for: self.cfg.open_for,
            },
            State::HalfOpen { open_for, .. } => {
                let next = (open_for * 2).min(self.cfg.open_max);
                State::Open {
                    until: now + next,
                    open_for: next,
                }
            }
            // A straggler from before the breaker opened: keep the current window.
            open @ State::Open { .. } => open,
        };
        match (before, *s) {
            (State::Open { .. }, _) => None,
            (_, State::Open { open_for, .. }) => Some(open_for),
            _ => None,
        }
    }

    /// Starts half-open: the next worker sends one probe batch while the
    /// others wait for its outcome. A forwarder starts this way when events
    /// from before a restart are waiting: if the collector is still down, one
    /// request finds out, not one per worker.
    pub fn probe_first(&self) {
        let mut s = self.lock();
        if let State::Closed { .. } = *s {
            *s = State::HalfOpen {
                probing: false,
                open_for: self.cfg.open_for,
            };
        }
    }

    /// A probe found nothing to send: let the next worker probe instead.
    pub fn abandon_probe(&self) {
        let mut s = self.lock();
        if let State::HalfOpen { open_for, .. } = *s {
            *s = State::HalfOpen {
                probing: false,
                open_for,
            };
        }
    }

    /// Holds every worker until `until` (a 429 `Retry-After`, a configuration
    /// fault), then lets one probe through.
    pub fn pause_until(&self, until: Instant) {
        let mut s = self.lock();
        let open_for = match *s {
            State::Open { open_for, .. } | State::HalfOpen { open_for, .. } => open_for,
            State::Closed { .. } => self.cfg.open_for,
        };
        let until = match *s {
            State::Open { until: cur, .. } => cur.max(until),
            _ => until,
        };
        *s = State::Open { until, open_for };
    }

    /// `closed`, `open` or `half_open`, for stats and metrics.
    pub fn state_name(&self) -> &'static str {
        match *self.lock() {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_secs(1),
            open_max: Duration::from_secs(4),
        })
    }

    #[test]
    fn it_opens_after_the_threshold_of_consecutive_failures() {
        let b = breaker();
        let t = Instant::now();
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.acquire(t), Permit::Allowed);
        assert!(b.record_success(t));
        b.record_failure(t);
        b.record_failure(t);
        assert_eq!(b.state_name(), "closed");
        assert_eq!(
            b.record_failure(t),
            Some(Duration::from_secs(1)),
            "it opens now"
        );
        assert_eq!(b.state_name(), "open");
        assert_eq!(b.acquire(t), Permit::Wait(Duration::from_secs(1)));
        assert_eq!(b.record_failure(t), None, "already open");
    }

    #[test]
    fn starting_with_a_probe_lets_one_worker_through_and_a_failure_opens_it() {
        let b = breaker();
        let t = Instant::now();
        b.probe_first();
        assert_eq!(b.acquire(t), Permit::Probe);
        assert_eq!(b.acquire(t), Permit::Wait(PROBE_POLL));
        assert_eq!(b.record_failure(t), Some(Duration::from_secs(2)));
        assert_eq!(b.state_name(), "open");
        // A good probe closes it.
        let b = breaker();
        b.probe_first();
        assert_eq!(b.acquire(t), Permit::Probe);
        assert!(b.record_success(t));
        assert_eq!(b.acquire(t), Permit::Allowed);
    }

    #[test]
    fn exactly_one_of_eight_workers_gets_the_probe() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        let later = t + Duration::from_secs(1);
        let permits: Vec<Permit> = (0..8).map(|_| b.acquire(later)).collect();
        assert_eq!(permits.iter().filter(|p| **p == Permit::Probe).count(), 1);
        assert!(
            permits
                .iter()
                .all(|p| matches!(p, Permit::Probe | Permit::Wait(_)))
        );
        assert!(b.record_success(later));
        assert_eq!(b.acquire(later), Permit::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long_up_to_the_max() {
        let b = breaker();
        let mut t = Instant::now();
        for _ in 0..3 {
            b.record_failure(t);
        }
        let mut waits = Vec::new();
        for _ in 0..4 {
            t += Duration::from_secs(10);
            assert_eq!(b.acquire(t), Permit::Probe);
            b.record_failure(t);
            match b.acquire(t) {
                Permit::Wait(d) => waits.push(d.as_secs()),
                p => panic!("expected a wait, got {p:?}"),
            }
        }
        assert_eq!(waits, vec![2, 4, 4, 4]);
    }

    #[test]
    fn an_abandoned_probe_passes_to_the_next_worker() {
        let b = breaker();
        let t = Instant::now();
        b.pause_until(t + Duration::from_millis(10));
        let later = t + Duration::from_millis(10);
        assert_eq!(b.acquire(later), Permit::Probe);
        assert!(matches!(b.acquire(later), Permit::Wait(_)));
        b.abandon_probe();
        assert_eq!(b.acquire(later), Permit::Probe);
    }

    #[test]
    fn a_success_from_a_request_sent_before_a_pause_does_not_lift_it() {
        let b = breaker();
        let t = Instant::now();
        b.pause_until(t + Duration::from_secs(1));
        // Another worker's request, sent before the 429, comes back 200.
        assert!(!b.record_success(t + Duration::from_millis(100)));
        assert_eq!(
            b.acquire(t + Duration::from_millis(100)),
            Permit::Wait(Duration::from_millis(900))
        );
        // The probe after the pause closes it.
        assert_eq!(b.acquire(t + Duration::from_secs(1)), Permit::Probe);
        assert!(b.record_success(t + Duration::from_secs(1)));
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn a_pause_holds_every_worker_then_probes() {
        let b = breaker();
        let t = Instant::now();
        b.pause_until(t + Duration::from_secs(3));
        assert_eq!(b.acquire(t), Permit::Wait(Duration::from_secs(3)));
        // A shorter pause does not cut a longer one short.
        b.pause_until(t + Duration::from_secs(1));
        assert_eq!(b.acquire(t), Permit::Wait(Duration::from_secs(3)));
        assert_eq!(b.acquire(t + Duration::from_secs(3)), Permit::Probe);
        assert!(b.record_success(t + Duration::from_secs(3)));
        assert_eq!(b.state_name(), "closed");
    }
}
