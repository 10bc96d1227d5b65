//! Purging a topic's queued events (not its dead letters).
//!
//! Each group of chunks is chosen and removed in one critical section (a
//! `purge` transition), so a chunk a lease holds is never purged and a chunk
//! being purged is never leased. The purge is traced in the topic's log
//! (`queue/log/trace.rs`) and, with sled's removals, on disk before `purge`
//! returns: neither a crash nor a rebuild without sled brings it back.

use super::handle::Queue;
use super::ops::{apply_ops, persist_removals};
use super::topic::Topic;
use crate::error::QueueError;

/// Chunks purged per critical section: short holds of the index lock.
const PURGE_GROUP: usize = 256;

impl Queue {
    /// Deletes every committed, unleased event of `topic` (not dead letters),
    /// including durable events acknowledged before the call that the
    /// committer has not indexed yet. Returns how many. Leased events are
    /// left to their consumer.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidTopic`] if `topic` is not a topic name;
    /// [`QueueError::Storage`] if the deletions could not be written to sled
    /// (the events are gone from the queue; a reopen may bring them back).
    pub fn purge(&self, topic: &str) -> Result<u64, QueueError> {
        Topic::new(topic)?;
        let shared = &self.shared();
        shared.gate().check_open()?;
        // Durable events acknowledged a moment ago may still wait to be
        // indexed: index them first, as a lease does, so the purge takes them.
        super::commit::index_waiting(shared, topic);
        let mut purged = 0;
        loop {
            fail::fail_point!("queue::purge::before_claim");
            let gone = {
                let mut index = shared.catalog().lock();
                let Some(t) = index.topics.get_mut(topic) else {
                    break;
                };
                t.purge(PURGE_GROUP, shared.ceiling().totals())
            };
            if gone.events == 0 {
                break;
            }
            purged += gone.events;
        }
        if purged > 0 {
            shared.ceiling().space().signal();
            apply_ops(shared)?;
            // Durable before it returns: the trace and sled's removals.
            persist_removals(shared, topic)?;
            tracing::warn!(topic, events = purged, "Queued events purged.");
            metrics::counter!("evspool_purged_events_total", "topic" => topic.to_string(), "kind" => "queued")
                .increment(purged);
        }
        Ok(purged)
    }
}
