//! What a topic's delivery tells the operator: one log line per change of
//! state, never one per retry.
//!
//! Every worker reports each batch's outcome to its topic's [`Health`], which
//! decides — from the outcome, the time, and what it said before — whether a
//! line is due, and returns it as a [`Notice`] value; [`emit`] logs it. Time
//! is an argument (as in `breaker`), so the rules are tested without a clock.
//!
//! ```text
//!          transient failure: WARN "unreachable" / "answers with errors"
//!   Up ───────────────────────────────────────────────▶ Unreachable | Failing
//!    ▲     429: WARN "rate-limiting", with the pause      RateLimited
//!    │     401/403/404/3xx: ERROR "paused", what to check Paused
//!    │                                                        │ breaker opens: WARN (once)
//!    │                                                        │ its first probe: INFO "half-open"
//!    │                                                        │ every other failure and probe: nothing
//!    │                                                        │ still bad after 5 min, 15, 35, ...: WARN reminder
//!    └──────── a success that closes the breaker: INFO "back" ┘
//! ```
//!
//! # Rules
//!
//! - H1 (one line per change): entering a bad condition logs one line and the
//!   success that ends it one more; the failures in between log nothing,
//!   whatever the retry rate. The breaker opening and its first probe log
//!   once per episode. `Unreachable` and `Failing` are one episode (the cause
//!   may alternate between a refused connection and a 503).
//! - H2 (reminders): a bad condition that lasts is recalled 5 minutes after it
//!   began, then at doubling intervals up to every 30 minutes, with how long
//!   and how many requests failed. A 10-minute outage logs five lines: down,
//!   breaker open, half-open, one reminder, back.
//! - H3 (flapping): a transient condition entered again within a minute of
//!   its last line is not logged, nor is the recovery that ends it; if it
//!   lasts a minute (or the breaker opens), its line is logged then. A
//!   collector that fails every other request logs at most two lines a
//!   minute. Configuration faults are always logged (they do not flap).
//! - H4 (no secrets): the collector is named by [`Sink::endpoint`], a URL
//!   without credentials or query; causes are the sinks' reasons, which never
//!   carry secrets.
//!
//! [`Sink::endpoint`]: super::sink::Sink::endpoint

use std::time::{Duration, Instant};

/// How long a bad condition lasts before its first reminder.
pub(crate) const REMIND_AFTER: Duration = Duration::from_secs(300);
/// Reminders double their interval up to this.
pub(crate) const REMIND_MAX: Duration = Duration::from_secs(1800);
/// A condition entered again within this of its last line is not logged (H3).
pub(crate) const FLAP_WINDOW: Duration = Duration::from_secs(60);

/// How a topic's collector is doing, as its last outcomes tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Delivering (or nothing has failed yet).
    Up,
    /// Requests fail before an answer: refused, reset, timed out, DNS, TLS.
    Unreachable,
    /// The collector answers with transient errors (5xx, 408, an unreadable body).
    Failing,
    /// The collector answers 429: every worker of the topic pauses.
    RateLimited,
    /// The collector refuses the configuration (401, 403, 404, a redirect):
    /// the topic is paused and probed slowly.
    Paused,
}

impl Condition {
    /// A stable lower-case name for stats and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Unreachable => "unreachable",
            Self::Failing => "failing",
            Self::RateLimited => "rate_limited",
            Self::Paused => "paused",
        }
    }

    /// The condition a transient failure with `reason` (a sink's
    /// `Delivery::Retry` reason) puts the topic in.
    pub(crate) fn of_transient(reason: &str) -> Self {
        const TRANSPORT: [&str; 4] = ["timeout", "connect error", "request error", "body error"];
        if reason.starts_with("http 429") {
            Self::RateLimited
        } else if TRANSPORT.iter().any(|p| reason.starts_with(p)) {
            Self::Unreachable
        } else {
            Self::Failing
        }
    }

    /// Conditions that count as one episode share a family (H1).
    fn family(self) -> usize {
        match self {
            Self::Up => 0,
            Self::Unreachable | Self::Failing => 1,
            Self::RateLimited => 2,
            Self::Paused => 3,
        }
    }
}

/// A line for the operator; [`emit`] logs it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Notice {
    /// WARN: the collector is unreachable or failing.
    Down { condition: Condition, cause: String },
    /// WARN: a 429 paused the topic for `pause`.
    RateLimited { pause: Duration, cause: String },
    /// ERROR: a configuration fault paused the topic.
    Paused {
        status: Option<u16>,
        cause: String,
        check: String,
        probe_every: Duration,
    },
    /// WARN: the breaker opened; the first probe goes in `probe_in`.
    BreakerOpen { probe_in: Duration },
    /// INFO: the breaker is half-open; one probe batch is on its way.
    Probing,
    /// WARN: a reminder that the condition lasts (H2).
    Still {
        condition: Condition,
        lasted: Duration,
        failures: u64,
        cause: String,
    },
    /// INFO: delivering again; `due` events waiting out a backoff were made due.
    Back {
        condition: Condition,
        lasted: Duration,
        failures: u64,
        breaker: bool,
        due: u64,
    },
}

/// One stretch of a bad condition.
#[derive(Debug)]
struct Episode {
    condition: Condition,
    since: Instant,
    /// Failed outcomes in the episode (requests, or batches of requests).
    failures: u64,
    cause: String,
    status: Option<u16>,
    /// Its entry line was logged (H3 may hold it back).
    logged: bool,
    breaker_opened: bool,
    breaker_logged: bool,
    probe_logged: bool,
    next_reminder: Instant,
    remind_every: Duration,
}

/// One topic's delivery health. Not synchronised: the topic holds it in a mutex.
#[derive(Debug, Default)]
pub(crate) struct Health {
    episode: Option<Episode>,
    /// When each family's entry line was last logged (H3).
    last_line: [Option<Instant>; 4],
    /// When a breaker-open line was last logged (H3).
    last_breaker_line: Option<Instant>,
}

fn within(last: Option<Instant>, now: Instant, window: Duration) -> bool {
    last.is_some_and(|t| now.saturating_duration_since(t) < window)
}

impl Health {
    /// The current condition.
    pub(crate) fn condition(&self) -> Condition {
        self.episode.as_ref().map_or(Condition::Up, |e| e.condition)
    }

    /// The cause of the current bad condition, if any.
    #[cfg(test)]
    pub(crate) fn last_error(&self) -> Option<&str> {
        self.episode.as_ref().map(|e| e.cause.as_str())
    }

    /// A transient failure (not a 429): the collector is unreachable or failing.
    pub(crate) fn failed(&mut self, cause: &str, now: Instant) -> Vec<Notice> {
        let condition = match Condition::of_transient(cause) {
            Condition::RateLimited => Condition::Failing,
            c => c,
        };
        self.bad(condition, cause, None, now, |c| Notice::Down {
            condition,
            cause: c.to_string(),
        })
    }

    /// A 429: the topic pauses for `pause`.
    pub(crate) fn rate_limited(
        &mut self,
        pause: Duration,
        cause: &str,
        now: Instant,
    ) -> Vec<Notice> {
        self.bad(Condition::RateLimited, cause, None, now, |c| {
            Notice::RateLimited {
                pause,
                cause: c.to_string(),
            }
        })
    }

    /// A configuration fault: the topic is paused and probed every `probe_every`.
    pub(crate) fn config_fault(
        &mut self,
        status: Option<u16>,
        cause: &str,
        check: &str,
        probe_every: Duration,
        now: Instant,
    ) -> Vec<Notice> {
        self.bad(Condition::Paused, cause, status, now, |c| Notice::Paused {
            status,
            cause: c.to_string(),
            check: check.to_string(),
            probe_every,
        })
    }

    fn bad(
        &mut self,
        condition: Condition,
        cause: &str,
        status: Option<u16>,
        now: Instant,
        entry: impl FnOnce(&str) -> Notice,
    ) -> Vec<Notice> {
        let family = condition.family();
        let same = self.episode.as_ref().is_some_and(|e| {
            e.condition.family() == family && (condition != Condition::Paused || e.status == status)
        });
        if !same {
            // Configuration faults do not flap: each new one is logged.
            let logged =
                condition == Condition::Paused || !within(self.last_line[family], now, FLAP_WINDOW);
            if logged {
                self.last_line[family] = Some(now);
            }
            self.episode = Some(Episode {
                condition,
                since: now,
                failures: 1,
                cause: cause.to_string(),
                status,
                logged,
                breaker_opened: false,
                breaker_logged: false,
                probe_logged: false,
                next_reminder: now + REMIND_AFTER,
                remind_every: REMIND_AFTER,
            });
            return if logged { vec![entry(cause)] } else { vec![] };
        }
        let Some(e) = self.episode.as_mut() else {
            return vec![];
        };
        e.failures += 1;
        e.condition = condition;
        e.cause = cause.to_string();
        if !e.logged {
            if now.saturating_duration_since(e.since) >= FLAP_WINDOW {
                e.logged = true;
                self.last_line[family] = Some(now);
                return vec![entry(cause)];
            }
            return vec![];
        }
        if now >= e.next_reminder {
            e.remind_every = (e.remind_every * 2).min(REMIND_MAX);
            e.next_reminder = now + e.remind_every;
            return vec![Notice::Still {
                condition,
                lasted: now.saturating_duration_since(e.since),
                failures: e.failures,
                cause: cause.to_string(),
            }];
        }
        vec![]
    }

    /// The breaker opened (after [`Health::failed`] or [`Health::rate_limited`]
    /// recorded the failure that opened it); the next probe goes in `probe_in`.
    pub(crate) fn breaker_opened(&mut self, probe_in: Duration, now: Instant) -> Vec<Notice> {
        let Some(e) = self.episode.as_mut() else {
            return vec![];
        };
        if e.breaker_opened {
            return vec![];
        }
        e.breaker_opened = true;
        let mut out = Vec::new();
        if !e.logged {
            // Consecutive failures enough to open the breaker are no flapping.
            e.logged = true;
            self.last_line[e.condition.family()] = Some(now);
            out.push(match e.condition {
                Condition::RateLimited => Notice::RateLimited {
                    pause: probe_in,
                    cause: e.cause.clone(),
                },
                condition => Notice::Down {
                    condition,
                    cause: e.cause.clone(),
                },
            });
        }
        if !within(self.last_breaker_line, now, FLAP_WINDOW) {
            e.breaker_logged = true;
            self.last_breaker_line = Some(now);
            out.push(Notice::BreakerOpen { probe_in });
        }
        out
    }

    /// A probe batch is on its way (the breaker is half-open).
    pub(crate) fn probing(&mut self) -> Vec<Notice> {
        match self.episode.as_mut() {
            Some(e) if e.breaker_logged && !e.probe_logged => {
                e.probe_logged = true;
                vec![Notice::Probing]
            }
            _ => vec![],
        }
    }

    /// A batch was delivered and the breaker is closed. Returns whether that
    /// ended a bad condition (the caller then makes the topic's retries due
    /// and fills in `due`), and the line to log, if any.
    pub(crate) fn delivered(&mut self, now: Instant) -> (bool, Vec<Notice>) {
        let Some(e) = self.episode.take() else {
            return (false, vec![]);
        };
        let notices = if e.logged {
            vec![Notice::Back {
                condition: e.condition,
                lasted: now.saturating_duration_since(e.since),
                failures: e.failures,
                breaker: e.breaker_opened,
                due: 0,
            }]
        } else {
            vec![]
        };
        (true, notices)
    }
}

/// A duration for people: `250ms`, `4.5s`, `10m 3s`.
pub(crate) fn human(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d < Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
    }
}

/// Logs `notice` for `topic`, whose collector is `collector` (its endpoint)
/// and is called `peer` in sentences (`Collector`, `NATS`: see `Sink::peer`).
pub(crate) fn emit(topic: &str, collector: &str, peer: &str, notice: &Notice) {
    match notice {
        Notice::Down {
            condition: Condition::Unreachable,
            cause,
        } => tracing::warn!(
            topic,
            collector,
            cause = %cause,
            "{peer} unreachable; events are kept and retried with backoff."
        ),
        Notice::Down { cause, .. } => tracing::warn!(
            topic,
            collector,
            cause = %cause,
            "{peer} answers with errors; events are kept and retried with backoff."
        ),
        Notice::RateLimited { pause, cause } => tracing::warn!(
            topic,
            collector,
            pause = %human(*pause),
            cause = %cause,
            "{peer} is rate-limiting; delivery pauses."
        ),
        Notice::Paused {
            status,
            cause,
            check,
            probe_every,
        } => {
            metrics::gauge!("evspool_topic_paused", "topic" => topic.to_string()).set(1.0);
            // A status only where there was one (an HTTP answer; NATS has none).
            match status {
                Some(status) => tracing::error!(
                    topic,
                    collector,
                    status,
                    cause = %cause,
                    check = %check,
                    probe_every = %human(*probe_every),
                    "{peer} refused the configuration; topic paused, every event kept."
                ),
                None => tracing::error!(
                    topic,
                    collector,
                    cause = %cause,
                    check = %check,
                    probe_every = %human(*probe_every),
                    "{peer} refused the configuration; topic paused, every event kept."
                ),
            }
        }
        Notice::BreakerOpen { probe_in } => tracing::warn!(
            topic,
            collector,
            probe_in = %human(*probe_in),
            "Breaker open: workers wait, and one probe batch at a time tests {}.", the(peer)
        ),
        Notice::Probing => tracing::info!(
            topic,
            collector,
            "Breaker half-open: probing {} with one batch.",
            the(peer)
        ),
        Notice::Still {
            condition,
            lasted,
            failures,
            cause,
        } => {
            let lasted = human(*lasted);
            match condition {
                Condition::Paused => tracing::warn!(
                    topic,
                    collector,
                    paused_for = %lasted,
                    probes = failures,
                    cause = %cause,
                    "Topic still paused by a configuration fault; every event kept."
                ),
                Condition::RateLimited => tracing::warn!(
                    topic,
                    collector,
                    limited_for = %lasted,
                    answers_429 = failures,
                    cause = %cause,
                    "{peer} still rate-limiting."
                ),
                _ => tracing::warn!(
                    topic,
                    collector,
                    down_for = %lasted,
                    failed_requests = failures,
                    cause = %cause,
                    "{peer} still not delivering; events are kept and retried."
                ),
            }
        }
        Notice::Back {
            condition,
            lasted,
            failures,
            breaker,
            due,
        } => {
            let lasted = human(*lasted);
            match (condition, breaker) {
                (Condition::Paused, _) => {
                    metrics::gauge!("evspool_topic_paused", "topic" => topic.to_string()).set(0.0);
                    tracing::info!(
                        topic,
                        collector,
                        paused_for = %lasted,
                        retrying_now = due,
                        "{peer} accepts the configuration again; topic resumed."
                    )
                }
                (Condition::RateLimited, _) => tracing::info!(
                    topic,
                    collector,
                    limited_for = %lasted,
                    retrying_now = due,
                    "Rate limiting over; delivery resumed."
                ),
                (_, true) => tracing::info!(
                    topic,
                    collector,
                    down_for = %lasted,
                    failed_requests = failures,
                    retrying_now = due,
                    "{peer} is back; breaker closed, delivery resumed."
                ),
                (_, false) => tracing::info!(
                    topic,
                    collector,
                    down_for = %lasted,
                    failed_requests = failures,
                    retrying_now = due,
                    "{peer} is back; delivery resumed."
                ),
            }
        }
    }
}

/// `peer` as it reads inside a sentence: `the collector`, but `NATS`.
fn the(peer: &str) -> String {
    if peer.chars().skip(1).any(|c| c.is_ascii_uppercase()) {
        peer.to_string()
    } else {
        format!("the {}", peer.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "connect error: error sending request: Connection refused";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Replays an outage of `length` with a failure every `every` and the
    /// breaker opening at the fifth, then a success; returns every notice.
    fn outage(length: Duration, every: Duration) -> Vec<Notice> {
        let mut h = Health::default();
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut t = Duration::ZERO;
        let mut n = 0;
        while t < length {
            n += 1;
            if n > 5 {
                // Once the breaker is open, every request is a probe.
                out.extend(h.probing());
            }
            out.extend(h.failed(REFUSED, t0 + t));
            if n == 5 {
                out.extend(h.breaker_opened(secs(2), t0 + t));
            }
            t += every;
        }
        let (was_bad, back) = h.delivered(t0 + length);
        assert!(was_bad);
        out.extend(back);
        out
    }

    #[test]
    fn a_ten_minute_outage_logs_five_lines_whatever_the_retry_rate() {
        for every in [Duration::from_millis(50), secs(1), secs(60)] {
            let notices = outage(secs(600), every);
            let kinds: Vec<&str> = notices
                .iter()
                .map(|n| match n {
                    Notice::Down { .. } => "down",
                    Notice::BreakerOpen { .. } => "open",
                    Notice::Probing => "probing",
                    Notice::Still { .. } => "still",
                    Notice::Back { .. } => "back",
                    _ => "other",
                })
                .collect();
            assert_eq!(
                kinds,
                ["down", "open", "probing", "still", "back"],
                "a failure every {every:?}"
            );
        }
    }

    #[test]
    fn reminders_come_at_doubling_intervals_up_to_thirty_minutes() {
        let mut h = Health::default();
        let t0 = Instant::now();
        let mut at = Vec::new();
        for s in 0..=(3 * 3600) {
            if !h.failed(REFUSED, t0 + secs(s)).is_empty() && s > 0 {
                at.push(s / 60);
            }
        }
        assert_eq!(at, [5, 15, 35, 65, 95, 125, 155]);
    }

    #[test]
    fn the_recovery_line_says_how_long_and_how_many_requests_failed() {
        let mut h = Health::default();
        let t0 = Instant::now();
        assert_eq!(
            h.failed("http 503: down", t0),
            [Notice::Down {
                condition: Condition::Failing,
                cause: "http 503: down".into()
            }]
        );
        assert!(h.failed(REFUSED, t0 + secs(1)).is_empty(), "same episode");
        assert_eq!(h.condition(), Condition::Unreachable);
        assert_eq!(h.last_error(), Some(REFUSED));
        let (was_bad, n) = h.delivered(t0 + secs(30));
        assert!(was_bad);
        assert_eq!(
            n,
            [Notice::Back {
                condition: Condition::Unreachable,
                lasted: secs(30),
                failures: 2,
                breaker: false,
                due: 0
            }]
        );
        assert_eq!(h.condition(), Condition::Up);
        assert_eq!(h.delivered(t0 + secs(31)), (false, vec![]), "no change");
    }

    #[test]
    fn a_flapping_collector_logs_at_most_two_lines_a_minute() {
        let mut h = Health::default();
        let t0 = Instant::now();
        let mut lines = 0;
        // Every other request fails, ten times a second, for ten minutes.
        for i in 0..6000u64 {
            let now = t0 + Duration::from_millis(i * 100);
            if i % 2 == 0 {
                lines += h.failed("http 502: bad gateway", now).len();
            } else {
                lines += h.delivered(now).1.len();
            }
        }
        assert!(lines <= 20, "{lines} lines in ten minutes");
        assert!(lines >= 2, "the first failure and its end are logged");
    }

    #[test]
    fn a_flap_that_lasts_a_minute_is_logged_late() {
        let mut h = Health::default();
        let t0 = Instant::now();
        assert_eq!(h.failed(REFUSED, t0).len(), 1);
        assert_eq!(h.delivered(t0 + secs(1)).1.len(), 1);
        // Down again 10 s later: held back (H3) ...
        assert!(h.failed(REFUSED, t0 + secs(10)).is_empty());
        assert!(h.failed(REFUSED, t0 + secs(40)).is_empty());
        // ... until it has lasted a minute.
        assert_eq!(h.failed(REFUSED, t0 + secs(71)).len(), 1);
    }

    #[test]
    fn rate_limits_and_config_faults_are_their_own_conditions() {
        let mut h = Health::default();
        let t0 = Instant::now();
        assert_eq!(
            h.rate_limited(secs(7), "http 429: slow down", t0),
            [Notice::RateLimited {
                pause: secs(7),
                cause: "http 429: slow down".into()
            }]
        );
        assert!(
            h.rate_limited(secs(7), "http 429: slow down", t0 + secs(8))
                .is_empty()
        );
        assert_eq!(h.condition(), Condition::RateLimited);
        // A 401 is a new condition: its own line, with what to check.
        let n = h.config_fault(
            Some(401),
            "http 401: no",
            "check the token",
            secs(60),
            t0 + secs(9),
        );
        assert!(
            matches!(&n[..], [Notice::Paused { status: Some(401), check, .. }] if check == "check the token"),
            "{n:?}"
        );
        assert!(
            h.config_fault(Some(401), "http 401: no", "", secs(60), t0 + secs(70))
                .is_empty()
        );
        // Fixing the token may reveal a wrong URL: a new fault, a new line.
        assert_eq!(
            h.config_fault(
                Some(404),
                "http 404",
                "check the URL",
                secs(60),
                t0 + secs(80)
            )
            .len(),
            1
        );
        let (_, back) = h.delivered(t0 + secs(140));
        assert!(
            matches!(
                &back[..],
                [Notice::Back {
                    condition: Condition::Paused,
                    ..
                }]
            ),
            "{back:?}"
        );
    }

    #[test]
    fn transient_reasons_are_classified() {
        for (reason, c) in [
            ("connect error: refused", Condition::Unreachable),
            ("timeout: operation timed out", Condition::Unreachable),
            ("request error: reset", Condition::Unreachable),
            ("http 503: down", Condition::Failing),
            ("http 200 with an unreadable body: eof", Condition::Failing),
            ("http 429: slow down", Condition::RateLimited),
        ] {
            assert_eq!(Condition::of_transient(reason), c, "{reason}");
        }
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(4500)), "4.5s");
        assert_eq!(human(Duration::from_secs(603)), "10m 3s");
    }
}
