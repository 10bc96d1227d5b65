//! Per-topic event rates for `evspool top`: events accepted by ingest and
//! events delivered, sampled once a second into a five-minute ring.
//!
//! Ingest counts what it accepts ([`Rates::ingested`]); a sampler task
//! ([`sample_every_second`]) turns the running totals (accepted here,
//! delivered from the forwarder's counters) into per-second deltas. A counter
//! that goes backwards (it cannot today) yields 0, never a wrapped number.

use crate::admin_api::{HISTORY_SECONDS, RateHistory};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Running totals and the per-second history.
#[derive(Default)]
pub struct Rates(Mutex<Inner>);

#[derive(Default)]
struct Inner {
    /// Events accepted per topic since start.
    ingested: BTreeMap<String, u64>,
    /// The totals (in, out) at the last sample.
    last: BTreeMap<String, (u64, u64)>,
    /// Per-second deltas, oldest first, at most `HISTORY_SECONDS`.
    history: BTreeMap<String, VecDeque<(u64, u64)>>,
}

impl Rates {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ingest accepted `n` events into `topic`.
    pub fn ingested(&self, topic: &str, n: u64) {
        if n == 0 {
            return;
        }
        let mut inner = self.lock();
        match inner.ingested.get_mut(topic) {
            Some(c) => *c += n,
            None => {
                inner.ingested.insert(topic.to_string(), n);
            }
        }
    }

    /// Takes one sample: `delivered` holds each routed topic's running total.
    pub fn sample(&self, delivered: &BTreeMap<String, u64>) {
        let mut inner = self.lock();
        let Inner {
            ingested,
            last,
            history,
        } = &mut *inner;
        let topics: std::collections::BTreeSet<&String> =
            ingested.keys().chain(delivered.keys()).collect();
        for topic in topics {
            let now = (
                ingested.get(topic).copied().unwrap_or(0),
                delivered.get(topic).copied().unwrap_or(0),
            );
            let before = last.insert(topic.clone(), now).unwrap_or((0, 0));
            let h = history.entry(topic.clone()).or_default();
            h.push_back((
                now.0.saturating_sub(before.0),
                now.1.saturating_sub(before.1),
            ));
            while h.len() > HISTORY_SECONDS {
                h.pop_front();
            }
        }
    }

    /// The history of every sampled topic.
    pub fn history(&self) -> BTreeMap<String, RateHistory> {
        self.lock()
            .history
            .iter()
            .map(|(t, h)| {
                (
                    t.clone(),
                    RateHistory {
                        ins: h.iter().map(|s| s.0).collect(),
                        outs: h.iter().map(|s| s.1).collect(),
                    },
                )
            })
            .collect()
    }
}

/// Samples `state`'s rates once a second for as long as the daemon runs (it
/// holds the state weakly, so shutdown can take it back).
pub async fn sample_every_second(state: std::sync::Weak<super::AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let delivered = state
            .forwarder
            .stats()
            .into_iter()
            .map(|(t, s)| (t, s.delivered))
            .collect();
        state.rates.sample(&delivered);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(t, n)| (t.to_string(), *n)).collect()
    }

    #[test]
    fn samples_are_per_second_deltas_of_the_running_totals() {
        let r = Rates::default();
        r.ingested("track", 30);
        r.sample(&delivered(&[("track", 0)]));
        r.ingested("track", 5);
        r.ingested("track", 5);
        r.sample(&delivered(&[("track", 25)]));
        r.sample(&delivered(&[("track", 40), ("engage", 3)]));
        let h = r.history();
        assert_eq!(h["track"].ins, [30, 10, 0]);
        assert_eq!(h["track"].outs, [0, 25, 15]);
        assert_eq!(
            h["engage"].outs,
            [3],
            "a topic appears with its first sample"
        );
    }

    #[test]
    fn the_history_keeps_the_last_five_minutes_only() {
        let r = Rates::default();
        for i in 0..(HISTORY_SECONDS as u64 + 10) {
            r.ingested("t", i + 1);
            r.sample(&BTreeMap::new());
        }
        let ins = &r.history()["t"].ins;
        assert_eq!(ins.len(), HISTORY_SECONDS);
        assert_eq!(ins.first(), Some(&11));
        assert_eq!(ins.last(), Some(&(HISTORY_SECONDS as u64 + 10)));
    }
}
