//! `GET /admin/overview`: one document with everything `evspool top` draws,
//! so a refresh is one request.

use evspool::Stats;
use evspool::forward::RouteStats;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How far back the rate history goes, in one-second samples: five minutes,
/// enough to see an outage begin and end on one screen.
pub const HISTORY_SECONDS: usize = 300;

/// Everything about a running daemon that `evspool top` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    /// The daemon's version.
    pub version: String,
    /// The daemon's pid.
    pub pid: u32,
    /// When the daemon started, ms since the epoch.
    pub started_at_ms: u64,
    /// When this overview was taken, ms since the epoch.
    pub at_ms: u64,
    /// Whether the forwarder sends (`active = false` stores only).
    pub active: bool,
    /// The queue: per-topic counts, ceiling, drops, failing closed.
    pub stats: Stats,
    /// Per routed topic: forwarding counters, collector state, last error.
    /// A topic missing here has no sink: its events are stored, not sent.
    pub forward: BTreeMap<String, RouteStats>,
    /// Per topic: events accepted and delivered each second.
    pub rates: BTreeMap<String, RateHistory>,
}

/// Events in and out of one topic, per second, oldest first, at most
/// [`HISTORY_SECONDS`] samples (fewer just after the daemon started).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateHistory {
    /// Events accepted by ingest in each second.
    #[serde(rename = "in")]
    pub ins: Vec<u64>,
    /// Events the collector acknowledged in each second.
    #[serde(rename = "out")]
    pub outs: Vec<u64>,
}

impl RateHistory {
    /// The mean rate (events per second) over the last `secs` samples, in and out.
    pub fn recent(&self, secs: usize) -> (f64, f64) {
        fn mean(v: &[u64], secs: usize) -> f64 {
            let n = v.len().min(secs);
            if n == 0 {
                return 0.0;
            }
            v[v.len() - n..].iter().sum::<u64>() as f64 / n as f64
        }
        (mean(&self.ins, secs), mean(&self.outs, secs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_rates_average_the_last_samples_only() {
        let h = RateHistory {
            ins: vec![100, 0, 10, 20],
            outs: vec![5],
        };
        assert_eq!(h.recent(2), (15.0, 5.0));
        assert_eq!(h.recent(10), (32.5, 5.0));
        assert_eq!(RateHistory::default().recent(5), (0.0, 0.0));
    }

    #[test]
    fn the_wire_names_are_in_and_out() {
        let h = RateHistory {
            ins: vec![1],
            outs: vec![2],
        };
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"in":[1],"out":[2]}"#
        );
    }
}
