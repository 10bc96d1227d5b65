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
        let queued = q
            .stats()
            .topics
            .get(&self.topic)
            .map(|t| t.ready.events + t.retrying.events)
            .unwrap_or(0);
        if self.dry_run {
            return Ok(Changed {
                matched: queued,
                changed: 0,
            });
        }
        Ok(Changed::all(q.purge(&self.topic)?))
    }
}
