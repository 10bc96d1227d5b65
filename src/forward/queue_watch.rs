//! What the queue tells the operator: events dropped (per reason, per
//! minute), the ceiling reached, and the store accepting events again after
//! failing closed. The forwarder's monitor feeds [`QueueWatch`] the queue's
//! stats once a second; it returns [`QueueNotice`] values that [`emit`] logs.
//! Time is an argument, so the rules are tested without a clock.
//!
//! # Rules
//!
//! - QW1 (drops): the first drop of an episode logs one line naming the
//!   reasons and counts (WARN; ERROR for `storage_error`, which is accepted
//!   events lost). While drops go on, a summary with the rate per reason per
//!   minute follows after a minute, then at doubling intervals up to ten
//!   minutes. When nothing has been dropped for 30 s, one INFO line gives the
//!   episode's totals. An hour at the ceiling logs ten lines.
//! - QW2 (ceiling without drops): under `reject` and `block`, which refuse
//!   instead of dropping, the queue reaching 99% of its ceiling logs one WARN
//!   and falling back under 95% one INFO (the gap keeps a queue hovering at
//!   the limit from logging every second).
//! - QW3 (store): the store failing closed is logged by the queue itself
//!   (ERROR, with the storage error); its accepting events again is logged here.

use crate::Stats;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The first drop summary comes this long after the first drop.
const SUMMARY_FIRST: Duration = Duration::from_secs(60);
/// Summaries double their interval up to this.
const SUMMARY_MAX: Duration = Duration::from_secs(600);
/// A drop episode ends after this long without a drop.
const QUIET: Duration = Duration::from_secs(30);
/// QW2: at the ceiling from this use, in percent ...
const CEILING_REACHED: f64 = 99.0;
/// ... and below it again under this.
const CEILING_LEFT: f64 = 95.0;

/// A line about the queue; [`emit`] logs it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum QueueNotice {
    /// Events started being dropped, with the counts so far by reason.
    Dropping {
        dropped: BTreeMap<String, u64>,
        policy: String,
        used_percent: f64,
    },
    /// Drops go on: events per minute by reason over the last `window`.
    StillDropping {
        per_minute: BTreeMap<String, u64>,
        window: Duration,
    },
    /// No drop for 30 s: the episode's totals and how long it lasted.
    Stopped {
        dropped: BTreeMap<String, u64>,
        lasted: Duration,
    },
    /// QW2: the queue is at its ceiling under a refusing policy.
    AtCeiling { policy: String, used_percent: f64 },
    /// QW2: below the ceiling again.
    BelowCeiling { used_percent: f64 },
    /// QW3: the store accepts new events again.
    StoreAccepting,
}

#[derive(Debug)]
struct Episode {
    since: Instant,
    last_drop: Instant,
    window_start: Instant,
    window: BTreeMap<String, u64>,
    total: BTreeMap<String, u64>,
    every: Duration,
    next_summary: Instant,
}

/// The queue as last observed, and the drop episode in progress.
#[derive(Debug)]
pub(crate) struct QueueWatch {
    seen: BTreeMap<String, u64>,
    episode: Option<Episode>,
    at_ceiling: bool,
    failed: bool,
}

fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

impl QueueWatch {
    /// Starts from `stats`: what was dropped before is not news.
    pub(crate) fn new(stats: &Stats, _now: Instant) -> Self {
        Self {
            seen: stats.drops.clone(),
            episode: None,
            at_ceiling: false,
            failed: stats.failed_closed.is_some(),
        }
    }

    /// Compares `stats` with the last observation; returns what to log.
    pub(crate) fn observe(&mut self, stats: &Stats, now: Instant) -> Vec<QueueNotice> {
        let mut out = Vec::new();
        let delta: BTreeMap<String, u64> = stats
            .drops
            .iter()
            .filter_map(|(k, &n)| {
                let d = n.saturating_sub(self.seen.get(k).copied().unwrap_or(0));
                (d > 0).then(|| (k.clone(), d))
            })
            .collect();
        self.seen = stats.drops.clone();
        if !delta.is_empty() {
            match &mut self.episode {
                None => {
                    out.push(QueueNotice::Dropping {
                        dropped: delta.clone(),
                        policy: stats.ceiling.policy.clone(),
                        used_percent: stats.ceiling.used_percent,
                    });
                    self.episode = Some(Episode {
                        since: now,
                        last_drop: now,
                        window_start: now,
                        window: BTreeMap::new(),
                        total: delta,
                        every: SUMMARY_FIRST,
                        next_summary: now + SUMMARY_FIRST,
                    });
                }
                Some(e) => {
                    e.last_drop = now;
                    add(&mut e.window, &delta);
                    add(&mut e.total, &delta);
                }
            }
        }
        if let Some(e) = &mut self.episode {
            if now >= e.next_summary {
                let window = now.saturating_duration_since(e.window_start);
                if !e.window.is_empty() {
                    let minutes = window.as_secs_f64().max(1.0) / 60.0;
                    out.push(QueueNotice::StillDropping {
                        per_minute: e
                            .window
                            .iter()
                            .map(|(k, v)| (k.clone(), (*v as f64 / minutes).round() as u64))
                            .collect(),
                        window,
                    });
                }
                e.window.clear();
                e.window_start = now;
                e.every = (e.every * 2).min(SUMMARY_MAX);
                e.next_summary = now + e.every;
            }
            if now.saturating_duration_since(e.last_drop) >= QUIET {
                out.push(QueueNotice::Stopped {
                    dropped: std::mem::take(&mut e.total),
                    lasted: e.last_drop.saturating_duration_since(e.since),
                });
                self.episode = None;
            }
        }
        if matches!(stats.ceiling.policy.as_str(), "reject" | "block") {
            let used = stats.ceiling.used_percent;
            if !self.at_ceiling && used >= CEILING_REACHED {
                self.at_ceiling = true;
                out.push(QueueNotice::AtCeiling {
                    policy: stats.ceiling.policy.clone(),
                    used_percent: used,
                });
            } else if self.at_ceiling && used < CEILING_LEFT {
                self.at_ceiling = false;
                out.push(QueueNotice::BelowCeiling { used_percent: used });
            }
        }
        let failed = stats.failed_closed.is_some();
        if self.failed && !failed {
            out.push(QueueNotice::StoreAccepting);
        }
        self.failed = failed;
        out
    }
}

/// `ceiling_newest=12, max_age=3` (with `suffix` after each count).
fn counts(m: &BTreeMap<String, u64>, suffix: &str) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}{suffix}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Logs `notice`.
pub(crate) fn emit(notice: &QueueNotice) {
    match notice {
        QueueNotice::Dropping {
            dropped,
            policy,
            used_percent,
        } => {
            let text = counts(dropped, "");
            if dropped.contains_key("storage_error") {
                tracing::error!(
                    dropped = %text,
                    "Events accepted with buffered durability were lost: their commit failed and the store fails closed."
                );
            } else if dropped.keys().any(|k| k.starts_with("ceiling")) {
                tracing::warn!(
                    dropped = %text,
                    policy = %policy,
                    used_percent,
                    "Queue at its ceiling: events are dropped by its policy, each one counted."
                );
            } else {
                tracing::warn!(
                    dropped = %text,
                    "Events older than max_age are dropped at lease, each one counted."
                );
            }
        }
        QueueNotice::StillDropping { per_minute, window } => tracing::warn!(
            dropped = %counts(per_minute, "/min"),
            over = %super::health::human(*window),
            "Events are still being dropped."
        ),
        QueueNotice::Stopped { dropped, lasted } => tracing::info!(
            dropped = %counts(dropped, ""),
            lasted = %super::health::human(*lasted),
            "No event dropped for 30s; drops stopped."
        ),
        QueueNotice::AtCeiling {
            policy,
            used_percent,
        } => tracing::warn!(
            policy = %policy,
            used_percent,
            "Queue at its ceiling: new events are refused (ingest answers 503) until delivery makes room."
        ),
        QueueNotice::BelowCeiling { used_percent } => tracing::info!(
            used_percent,
            "Queue below its ceiling again; new events are accepted."
        ),
        QueueNotice::StoreAccepting => {
            tracing::info!("The store accepts new events again.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(drops: &[(&str, u64)], policy: &str, used: f64, failed: bool) -> Stats {
        let mut s = Stats {
            drops: drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Stats::default()
        };
        s.ceiling.policy = policy.to_string();
        s.ceiling.used_percent = used;
        s.failed_closed = failed.then(|| "No space left on device".to_string());
        s
    }

    #[test]
    fn an_hour_at_the_ceiling_logs_a_handful_of_lines_with_rates_per_minute() {
        let t0 = Instant::now();
        let mut w = QueueWatch::new(&stats(&[("max_age", 5)], "drop_newest", 80.0, false), t0);
        let mut lines = Vec::new();
        // 100 drops a second for an hour, then nothing.
        for s in 1..=3700u64 {
            let n = 100 * s.min(3600);
            let st = stats(
                &[("ceiling_newest", n), ("max_age", 5)],
                "drop_newest",
                100.0,
                false,
            );
            lines.extend(w.observe(&st, t0 + Duration::from_secs(s)));
        }
        assert!(
            matches!(&lines[0], QueueNotice::Dropping { dropped, policy, .. }
                if dropped == &BTreeMap::from([("ceiling_newest".to_string(), 100)]) && policy == "drop_newest"),
            "{:?}",
            lines[0]
        );
        let rates: Vec<u64> = lines
            .iter()
            .filter_map(|l| match l {
                QueueNotice::StillDropping { per_minute, .. } => {
                    per_minute.get("ceiling_newest").copied()
                }
                _ => None,
            })
            .collect();
        assert!(rates.iter().all(|r| *r == 6000), "{rates:?}");
        assert_eq!(lines.len(), 10, "{lines:?}");
        match lines.last() {
            Some(QueueNotice::Stopped { dropped, lasted }) => {
                assert_eq!(dropped.get("ceiling_newest"), Some(&360_000));
                assert_eq!(*lasted, Duration::from_secs(3599));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_refusing_policy_at_its_ceiling_logs_once_and_again_once_below() {
        let t0 = Instant::now();
        let mut w = QueueWatch::new(&stats(&[], "reject", 10.0, false), t0);
        let mut lines = Vec::new();
        for (s, used) in [99.5, 100.0, 97.0, 99.9, 94.0, 96.0]
            .into_iter()
            .enumerate()
        {
            lines.extend(w.observe(
                &stats(&[], "reject", used, false),
                t0 + Duration::from_secs(s as u64),
            ));
        }
        assert_eq!(
            lines,
            [
                QueueNotice::AtCeiling {
                    policy: "reject".into(),
                    used_percent: 99.5
                },
                QueueNotice::BelowCeiling { used_percent: 94.0 }
            ]
        );
    }

    #[test]
    fn the_store_accepting_again_is_logged() {
        let t0 = Instant::now();
        let mut w = QueueWatch::new(&stats(&[], "drop_newest", 0.0, true), t0);
        assert!(
            w.observe(&stats(&[], "drop_newest", 0.0, true), t0)
                .is_empty()
        );
        assert_eq!(
            w.observe(&stats(&[], "drop_newest", 0.0, false), t0),
            [QueueNotice::StoreAccepting]
        );
    }
}
