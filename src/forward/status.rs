//! What a topic's collector looks like from here: the state its last
//! requests left it in, since when, and the last error — the snapshot behind
//! `evspool top` and `/admin/forward`.
//!
//! ```text
//!  Idle ──any answer──▶ Up ◀──────── a request delivered ────────┐
//!                        │                                        │
//!                        ├─ transient failure ─────────▶ Down ───┤
//!                        ├─ Retry-After (429, 503) ────▶ RateLimited
//!                        └─ 401/403/404/3xx ───────────▶ Paused ──┘
//! ```
//!
//! The state follows the outcome of each settled batch; it never drives
//! delivery (the breaker and the backoff do that). A batch whose events were
//! all refused as too large sends no request and leaves the state as it was.

use super::worker::Gathered;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// The collector as a topic's last requests found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CollectorState {
    /// No request has been answered yet.
    #[default]
    Idle,
    /// The last request was answered (delivered, or refused per record).
    Up,
    /// The last request failed transiently (connect error, timeout, 5xx): retrying.
    Down,
    /// The collector asked for a pause (`Retry-After`, e.g. a 429): waiting it out.
    RateLimited,
    /// The collector refused the configuration (401, 403, 404, redirect): the
    /// topic is paused and probes slowly.
    Paused,
}

impl CollectorState {
    /// The state as a word for people: `idle`, `up`, `down`, `rate-limited`, `paused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Up => "up",
            Self::Down => "down",
            Self::RateLimited => "rate-limited",
            Self::Paused => "paused",
        }
    }
}

impl std::fmt::Display for CollectorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A topic's collector state, since when, and its last error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Status {
    pub(crate) state: CollectorState,
    /// When `state` was entered, ms since the epoch.
    pub(crate) since_ms: Option<u64>,
    /// The last failure or refusal, as the sink reported it.
    pub(crate) last_error: Option<String>,
    /// When it happened, ms since the epoch.
    pub(crate) last_error_at_ms: Option<u64>,
}

/// The status of one topic, shared by its workers.
#[derive(Default)]
pub(crate) struct StatusCell(Mutex<Status>);

impl StatusCell {
    /// A copy of the current status.
    pub(crate) fn get(&self) -> Status {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records what one settled batch's requests came to, at `now_ms`.
    pub(crate) fn observe(&self, g: &Gathered, now_ms: u64) {
        let (state, error) = if let Some((_, reason)) = &g.config_fault {
            (Some(CollectorState::Paused), Some(reason.clone()))
        } else if g.transient {
            let state = if g.retry_after.is_some() {
                CollectorState::RateLimited
            } else {
                CollectorState::Down
            };
            (Some(state), Some(g.retry_reason.clone()))
        } else {
            let refused = g.dead.first().map(|(_, r)| format!("rejected: {r}"));
            ((g.requests > 0).then_some(CollectorState::Up), refused)
        };
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = state
            && (state != s.state || s.since_ms.is_none())
        {
            s.state = state;
            s.since_ms = Some(now_ms);
        }
        if let Some(e) = error {
            s.last_error = Some(e);
            s.last_error_at_ms = Some(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gathered(f: impl FnOnce(&mut Gathered)) -> Gathered {
        let mut g = Gathered {
            requests: 1,
            ..Default::default()
        };
        f(&mut g);
        g
    }

    /// Each batch outcome, and the state and last error it leaves.
    #[test]
    fn each_outcome_sets_the_state_and_the_last_error() {
        let cases: Vec<(Gathered, CollectorState, Option<&str>)> = vec![
            (gathered(|g| g.delivered = 50), CollectorState::Up, None),
            (
                gathered(|g| {
                    g.transient = true;
                    g.retry_reason = "connect error: connection refused".into();
                }),
                CollectorState::Down,
                Some("connect error: connection refused"),
            ),
            (
                gathered(|g| {
                    g.transient = true;
                    g.retry_after = Some(std::time::Duration::from_secs(7));
                    g.retry_reason = "http 429: slow down".into();
                }),
                CollectorState::RateLimited,
                Some("http 429: slow down"),
            ),
            (
                gathered(|g| {
                    g.config_fault = Some((Some(401), "http 401: bad token".into()));
                }),
                CollectorState::Paused,
                Some("http 401: bad token"),
            ),
            (
                gathered(|g| {
                    g.delivered = 49;
                    g.dead = vec![(7, "http 400: field `event` missing".into())];
                }),
                CollectorState::Up,
                Some("rejected: http 400: field `event` missing"),
            ),
        ];
        for (g, state, error) in cases {
            let cell = StatusCell::default();
            cell.observe(&g, 1_000);
            let s = cell.get();
            assert_eq!(s.state, state, "{g:?}");
            assert_eq!(s.last_error.as_deref(), error, "{g:?}");
            assert_eq!(s.since_ms, Some(1_000));
            assert_eq!(s.last_error_at_ms, error.map(|_| 1_000));
        }
    }

    #[test]
    fn the_state_keeps_its_start_time_and_the_last_error_survives_recovery() {
        let cell = StatusCell::default();
        let down = gathered(|g| {
            g.transient = true;
            g.retry_reason = "timeout".into();
        });
        cell.observe(&down, 1_000);
        cell.observe(&down, 2_000);
        assert_eq!(
            cell.get().since_ms,
            Some(1_000),
            "still down since the first"
        );
        assert_eq!(cell.get().last_error_at_ms, Some(2_000));
        cell.observe(&gathered(|g| g.delivered = 1), 3_000);
        let s = cell.get();
        assert_eq!((s.state, s.since_ms), (CollectorState::Up, Some(3_000)));
        assert_eq!(
            s.last_error.as_deref(),
            Some("timeout"),
            "kept for the operator"
        );
    }

    #[test]
    fn a_batch_that_sent_no_request_leaves_the_state_alone() {
        let cell = StatusCell::default();
        cell.observe(
            &Gathered {
                requests: 0,
                dead: vec![(1, "too_large: 2000000 bytes".into())],
                ..Default::default()
            },
            5,
        );
        let s = cell.get();
        assert_eq!(s.state, CollectorState::Idle);
        assert_eq!(s.since_ms, None);
        assert_eq!(
            s.last_error.as_deref(),
            Some("rejected: too_large: 2000000 bytes")
        );
    }
}
