//! `verify`: read every queued chunk, quarantine the damaged, and recount the
//! accounting from the index.
//!
//! The recount holds the writer lock, every topic log's lock and the index
//! lock at once (in that order), so it sees each live event exactly once:
//! buffered, sealed, being written, written and waiting for its round, or
//! indexed. Any difference from the running totals (C1 in
//! `queue/ceiling.rs`) or from a topic's per-state usage (L2 in
//! `queue/index/mod.rs`) is reported and repaired.

use super::handle::Queue;
use super::index::chunk::Held;
use super::log::read::read_chunk;
use super::ops::apply_ops;
use super::quarantine::contain_damage;
use super::shared::Shared;
use super::usage::Usage;
use crate::error::QueueError;
use crate::record;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What [`Queue::verify`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Chunks read and decoded.
    pub checked: u64,
    /// Damaged entries (or damaged parts of a chunk's span) moved to
    /// quarantine; the intact entries of their chunks stay queued.
    pub quarantined: u64,
    /// The live-event totals the queue was running with.
    pub recorded: Usage,
    /// The totals recounted from the index; `recorded` now equals it.
    pub counted: Usage,
    /// Topics whose per-state counters differed from a recount (repaired).
    pub drifted_topics: Vec<String>,
}

impl VerifyReport {
    /// Whether any counter had drifted from its recount.
    pub fn drifted(&self) -> bool {
        self.recorded != self.counted || !self.drifted_topics.is_empty()
    }
}

impl Shared {
    /// Recounts the live events and each topic's per-state usage, repairing
    /// the running counters; returns (recorded, counted, drifted topics).
    pub(crate) fn recount(&self) -> (Usage, Usage, Vec<String>) {
        let w = self.buffer().lock();
        let logs = self.logs().all();
        let guards: Vec<_> = logs.iter().map(|l| l.lock()).collect();
        let mut index = self.catalog().lock();
        let mut counted = Usage::default();
        for c in w.open.values().chain(w.sealed.iter().map(|(_, c)| c)) {
            counted.add(c.events.len() as u64, c.bytes);
        }
        for st in &guards {
            counted.add(st.pending.events, st.pending.bytes);
            counted.add(st.unindexed_usage.events, st.unindexed_usage.bytes);
        }
        let mut drifted = Vec::new();
        let mut dead = Usage::default();
        for (name, t) in index.topics.iter_mut() {
            dead.add(t.dead_usage.events, t.dead_usage.bytes);
            let states = t.recount();
            for s in &states {
                counted.add(s.events, s.bytes);
            }
            let running = [
                t.ready_usage,
                t.delayed_usage,
                t.leased_usage,
                t.moving_usage,
            ];
            if running != states {
                tracing::error!(topic = %name, ?running, ?states, "Per-state usage drifted from a recount; repaired.");
                t.set_usage(states);
                drifted.push(name.to_string());
            }
        }
        let (de, db) = self.ceiling().totals().dead();
        if (de, db) != (dead.events, dead.bytes) {
            tracing::error!(
                recorded_events = de,
                recorded_bytes = db,
                counted_events = dead.events,
                counted_bytes = dead.bytes,
                "Dead-letter totals drifted from a recount; repaired."
            );
            self.ceiling().totals().set_dead(dead.events, dead.bytes);
            drifted.push("(dead letters)".to_string());
        }
        let (e, b) = self.ceiling().totals().get();
        let recorded = Usage::new(e, b);
        if recorded != counted {
            tracing::error!(
                ?recorded,
                ?counted,
                "Live-event totals drifted from a recount; repaired."
            );
            metrics::counter!("evspool_accounting_repairs_total").increment(1);
            self.ceiling().totals().set(counted.events, counted.bytes);
        }
        drop(index);
        drop(guards);
        drop(w);
        (recorded, counted, drifted)
    }
}

impl Queue {
    /// Decodes every queued chunk, quarantining the damaged, then recounts
    /// the live-event totals and per-state counters from the index and
    /// repairs any drift (reported in the result and logged at ERROR).
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if a body file or sled fails to read.
    pub fn verify(&self) -> Result<VerifyReport, QueueError> {
        let shared = &self.shared();
        shared.gate().check_open()?;
        let mut report = VerifyReport::default();
        type TopicChunks = (Arc<str>, Vec<(u64, record::ChunkIndex)>);
        let topics: Vec<TopicChunks> = shared
            .catalog()
            .lock()
            .topics
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.chunks.iter().map(|(k, c)| (*k, c.index)).collect(),
                )
            })
            .collect();
        for (name, keys) in topics {
            let log = shared.logs().existing(&name);
            for (key, seen) in keys {
                // Pinned while read; gone or moved meanwhile means settled meanwhile.
                {
                    let mut index = shared.catalog().lock();
                    let Some(t) = index.topics.get_mut(&name) else {
                        continue;
                    };
                    if t.chunks.get(&key).map(|c| c.index) != Some(seen) {
                        continue;
                    }
                    t.pin(seen.body_gen);
                }
                let read = read_chunk(shared.logs().bodies(), log.as_ref(), key, &seen);
                if let Some(t) = shared.catalog().lock().topics.get_mut(&name) {
                    t.unpin(seen.body_gen);
                }
                report.checked += 1;
                let read = read?;
                if read.intact() {
                    continue;
                }
                let now = crate::event::now_ms();
                if contain_damage(shared, &name, key, Held::Unleased(seen), &read, now)? {
                    report.quarantined += read.damaged.len() as u64;
                    shared.ceiling().space().signal();
                }
            }
        }
        apply_ops(shared)?;
        let (recorded, counted, drifted) = shared.recount();
        report.recorded = recorded;
        report.counted = counted;
        report.drifted_topics = drifted;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Queue, QueueConfig};

    #[tokio::test]
    async fn verify_reports_and_repairs_totals_and_counters_that_drifted() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path(), QueueConfig::default()).unwrap();
        for i in 0..7 {
            let _ = q.enqueue_durable("t", format!("e{i}")).await.unwrap();
        }
        q.sync().await.unwrap();
        let clean = q.verify().unwrap();
        assert!(!clean.drifted(), "{clean:?}");
        assert_eq!((clean.counted.events, clean.counted.bytes), (7, 14));
        // A bug's worth of drift: totals off by 5 events, a counter by 3.
        q.shared().ceiling().totals().add(5, 50);
        q.shared()
            .catalog()
            .lock()
            .topics
            .get_mut("t")
            .unwrap()
            .ready_usage
            .add(3, 3);
        let report = q.verify().unwrap();
        assert!(report.drifted());
        assert_eq!((report.recorded.events, report.counted.events), (12, 7));
        assert_eq!(report.drifted_topics, vec!["t".to_string()]);
        assert_eq!(q.stats().total.events, 7, "repaired");
        assert_eq!(q.readiness("t").ready_events, 7, "repaired");
        assert!(!q.verify().unwrap().drifted(), "and stays repaired");
    }

    /// From the review of the pile's settle per generation run: the
    /// committer's index of a pile spanning several generations (rotation
    /// forced between durable appends), with and without fsync, leaves
    /// nothing in flight, no usage waiting, no drift.
    #[tokio::test]
    async fn a_pile_across_generations_is_indexed_and_settled_per_generation() {
        for fsync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = QueueConfig {
                fsync,
                commit_interval: std::time::Duration::from_secs(60),
                ..QueueConfig::default()
            };
            let q = Queue::open(dir.path(), cfg).unwrap();
            let shared = q.shared();
            let mut n = 0u64;
            for round in 0..4 {
                for i in 0..(5 + round) {
                    let _ = q
                        .enqueue_durable("t", format!("r{round}e{i}"))
                        .await
                        .unwrap();
                    n += 1;
                }
                let log = shared.logs().existing("t").unwrap();
                log.lock().rotate = true;
            }
            let log = shared.logs().existing("t").unwrap();
            {
                let st = log.lock();
                let gens: std::collections::BTreeSet<u32> =
                    st.unindexed.iter().map(|a| a.index.body_gen).collect();
                assert!(
                    gens.len() >= 3,
                    "fsync {fsync}: pile spans {gens:?}, inflight {:?}",
                    st.inflight
                );
            }
            crate::queue::commit::index_waiting(&shared, "t");
            q.sync().await.unwrap();
            crate::queue::commit::index_waiting(&shared, "t");
            {
                let st = log.lock();
                assert!(st.unindexed.is_empty(), "fsync {fsync}: all indexed");
                assert_eq!(st.unindexed_usage, crate::queue::usage::Usage::default());
                let cur = st.generation;
                assert!(
                    st.inflight.keys().all(|g| *g == cur),
                    "fsync {fsync}: an old generation still in flight: {:?} (current {cur})",
                    st.inflight
                );
            }
            let report = q.verify().unwrap();
            assert!(!report.drifted(), "fsync {fsync}: {report:?}");
            assert_eq!(report.counted.events, n);
        }
    }
}
