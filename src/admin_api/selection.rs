//! Replay and purge selections, and what applying one to a queue means. The
//! daemon applies a selection it was sent to its queue; the CLI applies the
//! same selection to a store it opened itself. One definition, so both ways
//! of running a command do the same thing.

use evspool::Queue;
use serde::{Deserialize, Serialize};

/// A replay or purge selection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    /// The topic.
    pub topic: String,
    /// Dead letters (true) or queued events (false; purge only).
    #[serde(default)]
    pub dead: bool,
    /// Only dead letters whose reason contains this.
    #[serde(default)]
    pub reason: Option<String>,
    /// Only events with seq ≥ this.
    #[serde(default)]
    pub from_seq: Option<u64>,
    /// Only events with seq ≤ this.
    #[serde(default)]
    pub to_seq: Option<u64>,
    /// Count only.
    #[serde(default)]
    pub dry_run: bool,
}

/// How many events a selection matched and how many were changed.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Changed {
    /// Events the selection matched.
    pub matched: u64,
    /// Events changed (0 for a dry run).
    pub changed: u64,
}

impl Changed {
    fn all(n: u64) -> Self {
        Self {
            matched: n,
            changed: n,
        }
    }
}

impl Selection {
    /// Whether an event with `seq` (and, for dead letters, `reason`) is selected.
    pub fn matches(&self, seq: u64, reason: &str) -> bool {
        self.from_seq.is_none_or(|f| seq >= f)
            && self.to_seq.is_none_or(|t| seq <= t)
            && self.reason.as_deref().is_none_or(|r| reason.contains(r))
    }

    /// Counts the dead letters the selection matches, changing nothing.
    fn count_dead(&self, q: &Queue) -> anyhow::Result<Changed> {
        let mut matched = 0;
        let mut from = 0;
        loop {
            let page = q.dead_letters(&self.topic, from, 1000)?;
            let Some(last) = page.last() else { break };
            from = last.id.seq() + 1;
            matched += page
                .iter()
                .filter(|d| self.matches(d.id.seq(), &d.reason))
                .count() as u64;
        }
        Ok(Changed {
            matched,
            changed: 0,
        })
    }

    /// Moves the selected dead letters back to the queue (counts them for a dry run).
    ///
    /// # Errors
    ///
    /// The queue's error (failing closed, storage).
    pub fn replay(&self, q: &Queue) -> anyhow::Result<Changed> {
        if self.dry_run {
            return self.count_dead(q);
        }
        Ok(Changed::all(q.replay_dead(&self.topic, |d| {
            self.matches(d.id.seq(), &d.reason)
        })?))
    }

    /// Deletes the selected dead letters, or every queued event of the topic
    /// (counts them for a dry run).
    ///
    /// # Errors
    ///
    /// The queue's error (failing closed, storage).
    pub fn purge(&self, q: &Queue) -> anyhow::Result<Changed> {
        if self.dead {
            if self.dry_run {
                return self.count_dead(q);
            }
            return Ok(Changed::all(q.purge_dead(&self.topic, |d| {
                self.matches(d.id.seq(), &d.reason)
            })?));
        }
        // What `purge` would take: ready (with the written entries it indexes
        // first) and retrying events.
        let r = q.readiness(&self.topic);
        let queued = r.ready_events + r.retrying_events;
        if self.dry_run {
            return Ok(Changed {
                matched: queued,
                changed: 0,
            });
        }
        Ok(Changed::all(q.purge(&self.topic)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Found by review: once `purge` took durable events acknowledged a
    /// moment before it, the dry run (which counted the index only) said
    /// "0 matched" and `--yes` deleted 3.
    #[tokio::test]
    async fn a_dry_run_purge_counts_what_the_purge_then_takes() {
        for fsync in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            // No commit round during the test: every durable ack stays
            // written but not indexed.
            let cfg = evspool::QueueConfig {
                fsync,
                commit_interval: Duration::from_secs(60),
                ..evspool::QueueConfig::default()
            };
            let q = Queue::open(dir.path(), cfg).unwrap();
            for i in 0..3 {
                let _ = q
                    .enqueue_durable("t", format!("{{\"n\":{i}}}"))
                    .await
                    .unwrap();
            }
            let sel = Selection {
                topic: "t".into(),
                dry_run: true,
                ..Selection::default()
            };
            let dry = sel.purge(&q).unwrap();
            let real = Selection {
                dry_run: false,
                ..sel
            }
            .purge(&q)
            .unwrap();
            assert_eq!(
                (dry.matched, dry.changed, real.changed),
                (3, 0, 3),
                "fsync={fsync}: the dry run matched {}, the purge took {}",
                dry.matched,
                real.changed
            );
            q.close();
        }
    }
}
