//! Dead letters: reading them, replaying them into the queue, purging them.
//!
//! Dead letters live in sled (`'D'` records) with their payloads. Replays and
//! purges of one topic are serialized by the topic's dead-letter lock, and each
//! starts by applying every queued sled write, so it reads the dead letters as
//! the index knows them (a settle's new dead letters may still be queued).
//! A replayed page is appended to the topic's log as a `requeued` entry
//! (after the traces of the letters' dead-lettering, `queue/log/trace.rs`), then
//! moved in one `replay` transition: the dead letters' removal and the new
//! chunk's index record are written by the same batch.

use super::handle::Queue;
use super::log::entry::EntryKind;
use super::log::{Admit, Record};
use super::ops::{apply_ops, persist_removals};
use super::shared::Shared;
use super::topic::Topic;
use crate::error::QueueError;
use crate::event::{EventId, now_ms};
use crate::record::{self, DeadLetter, StoredEvent};
use bytes::Bytes;
use std::sync::Arc;

/// A dead letter as read back from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadEvent {
    /// The event's stable id.
    pub id: EventId,
    /// Enqueue time, ms since the Unix epoch.
    pub enqueued_at_ms: u64,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_at_ms: u64,
    /// Delivery attempts it saw.
    pub attempts: u32,
    /// Why it was refused.
    pub reason: String,
    /// The producer's bytes.
    pub payload: Bytes,
}

impl Queue {
    /// Reads up to `limit` dead letters of `topic` with seq ≥ `from_seq`.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidTopic`] if `topic` is not a topic name;
    /// [`QueueError::Storage`] if sled fails to read.
    pub fn dead_letters(
        &self,
        topic: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadEvent>, QueueError> {
        Topic::new(topic)?;
        let shared = &self.shared();
        let letters = read_dead(shared, topic, from_seq, limit)?;
        Ok(letters
            .into_iter()
            .map(|d| DeadEvent {
                id: self.event_id(d.seq),
                enqueued_at_ms: d.enqueued_at_ms,
                dead_at_ms: d.dead_at_ms,
                attempts: d.attempts,
                reason: d.reason,
                payload: Bytes::from(d.payload),
            })
            .collect())
    }

    /// Moves the dead letters of `topic` that `filter` accepts back to the queue,
    /// ready for delivery, keeping their ids. Returns how many were moved.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled or the body file fails; what was moved
    /// before stays moved.
    pub fn replay_dead(
        &self,
        topic: &str,
        mut filter: impl FnMut(&DeadEvent) -> bool,
    ) -> Result<u64, QueueError> {
        let shared = &self.shared();
        shared.gate().check_open()?;
        let topic_t = Topic::new(topic)?;
        let topic_arc: Arc<str> = topic_t.arc().clone();
        let mut moved = 0u64;
        self.each_dead_page(topic, shared.cfg().chunk_max_events, |page| {
            let chosen: Vec<DeadEvent> = page.into_iter().filter(|d| filter(d)).collect();
            if chosen.is_empty() {
                return Ok(());
            }
            fail::fail_point!("queue::replay::after_read");
            let stored: Vec<StoredEvent<'_>> = chosen
                .iter()
                .map(|d| StoredEvent {
                    seq: d.id.seq(),
                    enqueued_at_ms: d.enqueued_at_ms,
                    payload: &d.payload,
                })
                .collect();
            let raw = record::encode_chunk(&stored);
            let rec = Record::new(&stored, &raw);
            let log = shared.logs().log(&topic_t);
            let placed = log
                .append(
                    shared.logs().bodies(),
                    Admit::Producer,
                    std::slice::from_ref(&rec),
                    EntryKind::Requeued,
                )
                .and_then(|p| {
                    if shared.cfg().fsync {
                        log.sync()?;
                    }
                    Ok(p[0])
                });
            let placed = match placed {
                Ok(p) => p,
                Err(e) => {
                    shared.gate().write_failed(&e);
                    return Err(e.into());
                }
            };
            let index = rec
                .summary
                .placed(placed.generation, placed.offset, placed.span as u32);
            let replayed: Vec<(u64, u64)> = chosen
                .iter()
                .map(|d| (d.id.seq(), d.payload.len() as u64))
                .collect();
            {
                let mut idx = shared.catalog().lock();
                let t = shared.catalog().topic_index(&mut idx, &topic_arc, &log);
                t.replay(
                    rec.first_seq,
                    index,
                    &replayed,
                    shared.ceiling().totals(),
                    now_ms(),
                );
                t.wake();
            }
            log.lock().settled(placed.generation, 1);
            // Make the move durable before the next page reads sled again.
            apply_ops(shared)?;
            moved += index.events as u64;
            Ok(())
        })?;
        if moved > 0 {
            tracing::info!(topic, events = moved, "Dead letters replayed.");
        }
        Ok(moved)
    }

    /// Deletes the dead letters of `topic` that `filter` accepts. Returns how many.
    ///
    /// # Errors
    ///
    /// [`QueueError::InvalidTopic`] if `topic` is not a topic name;
    /// [`QueueError::Storage`] if sled fails.
    pub fn purge_dead(
        &self,
        topic: &str,
        mut filter: impl FnMut(&DeadEvent) -> bool,
    ) -> Result<u64, QueueError> {
        Topic::new(topic)?;
        let shared = &self.shared();
        shared.gate().check_open()?;
        let mut removed = 0u64;
        self.each_dead_page(topic, 1000, |page| {
            fail::fail_point!("queue::purge_dead::after_read");
            let gone: Vec<(u64, u64)> = page
                .iter()
                .filter(|d| filter(d))
                .map(|d| (d.id.seq(), d.payload.len() as u64))
                .collect();
            if gone.is_empty() {
                return Ok(());
            }
            if let Some(t) = shared.catalog().lock().topics.get_mut(topic) {
                t.purge_dead(&gone, shared.ceiling().totals());
                removed += gone.len() as u64;
            }
            apply_ops(shared)?;
            Ok(())
        })?;
        if removed > 0 {
            // Durable before it returns: the trace and sled's removals.
            persist_removals(shared, topic)?;
            tracing::warn!(topic, events = removed, "Dead letters purged.");
            metrics::counter!("evspool_purged_events_total", "topic" => topic.to_string(), "kind" => "dead")
                .increment(removed);
        }
        Ok(removed)
    }

    /// Hands `topic`'s dead letters to `each`, `page` at a time in seq order,
    /// holding the topic's dead-letter lock throughout, so that replays and
    /// purges of one topic never interleave (each page is read after the
    /// previous one's changes were applied).
    fn each_dead_page(
        &self,
        topic: &str,
        page: usize,
        mut each: impl FnMut(Vec<DeadEvent>) -> Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        let serial = self.shared().dead_locks().get(topic);
        let _one = serial.lock().unwrap_or_else(|e| e.into_inner());
        let mut from = 0;
        loop {
            let letters = self.dead_letters(topic, from, page)?;
            let Some(last) = letters.last() else {
                return Ok(());
            };
            from = last.id.seq() + 1;
            each(letters)?;
        }
    }
}

/// Up to `limit` dead letters of `topic` with seq ≥ `from`, as the index
/// knows them: sled's, with the dead-letter writes still queued laid over
/// them (`TopicIndex::pending_dead`). Queued writes are applied first, so
/// the overlay is empty but while an apply holds the topic's writes back;
/// then a letter removed (purged, replayed, evicted) is not read again, and
/// one just dead-lettered is read.
pub(crate) fn read_dead(
    shared: &Shared,
    topic: &str,
    from: u64,
    limit: usize,
) -> Result<Vec<DeadLetter>, QueueError> {
    let _ = apply_ops(shared);
    // With the apply lock held no apply is half done: every write an apply
    // took is in sled or queued on the index again, so the overlay and
    // sled's answer agree (an apply between the two lost a removal).
    let _applying = shared.store().apply_lock();
    let pending = shared
        .catalog()
        .lock()
        .topics
        .get(topic)
        .map(|t| t.pending_dead())
        .unwrap_or_default();
    // Each removal waiting may hide one letter sled returns.
    let hidden = pending.values().filter(|d| d.is_none()).count();
    let raw = shared
        .store()
        .get()?
        .dead_range(topic, from, limit.saturating_add(hidden))?;
    let mut letters: std::collections::BTreeMap<u64, DeadLetter> = raw
        .into_iter()
        .filter(|(seq, _)| !pending.contains_key(seq))
        .filter_map(|(seq, bytes)| match record::decode_dead(&bytes) {
            Ok(d) => Some((seq, d)),
            Err(e) => {
                tracing::error!(topic, seq, error = %e, "Damaged dead letter skipped.");
                None
            }
        })
        .collect();
    letters.extend(
        pending
            .into_iter()
            .filter(|(seq, _)| *seq >= from)
            .filter_map(|(seq, d)| Some((seq, d?))),
    );
    Ok(letters.into_values().take(limit).collect())
}
