//! Open chunks, sealing, and the committer thread (group commit).
//!
//! Producers append to their topic's open chunk under the writer lock; the seq
//! counter lives under the same lock, so "every seq ≤ N is in a chunk" holds
//! whenever the lock is free (I2 in `queue/mod.rs`). The committer, a plain OS
//! thread (sled's `flush` blocks), wakes every `commit_interval`, when sealed
//! chunks pile up, or at once when a durable producer is waiting. It seals every
//! open chunk, appends each topic's sealed chunks to its body generation file
//! in one `write` (plus an `fdatasync` with `fsync = true`), writes their index
//! records and the seq high-water in one atomic sled batch, and then hands them
//! to the lease index and publishes the durable mark, waking every producer
//! whose seq the round covers. sled flushes the index records in the
//! background; open adopts entries whose index records a crash lost (I1, I8 in
//! `queue/mod.rs`).

use super::Shared;
use super::lease::Usage;
use crate::ceiling::DropReason;
use crate::event::now_ms;
use crate::record::{self, ChunkIndex, StoredEvent};
use crate::storage::{TopicTree, WriteBatch};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// One event waiting in memory for its commit.
pub(crate) struct PendingEvent {
    pub(crate) seq: u64,
    pub(crate) enqueued_at_ms: u64,
    pub(crate) payload: Bytes,
}

/// A chunk being filled, or sealed and waiting for the committer.
#[derive(Default)]
pub(crate) struct OpenChunk {
    pub(crate) events: Vec<PendingEvent>,
    pub(crate) bytes: u64,
}

/// State guarded by the writer lock.
#[derive(Default)]
pub(crate) struct Writer {
    /// The next seq to hand out.
    pub(crate) next_seq: u64,
    /// Per topic, the chunk being filled.
    pub(crate) open: HashMap<Arc<str>, OpenChunk>,
    /// Full chunks waiting for the committer, in seal order.
    pub(crate) sealed: Vec<(Arc<str>, OpenChunk)>,
    /// Payload bytes in `sealed`.
    pub(crate) pending_bytes: u64,
    /// Per topic, what the committer took from `sealed` and is writing now: in
    /// neither `sealed` nor the lease index until `Shared::index_committed` moves
    /// it there under this lock, so `stats` and `readiness` count it as uncommitted.
    pub(crate) committing: HashMap<Arc<str>, Usage>,
    /// A durable producer is waiting: seal and flush now.
    pub(crate) durable_requested: bool,
    /// Close was requested: commit, flush and exit.
    pub(crate) shutdown: bool,
}

impl OpenChunk {
    /// An empty chunk with room for `events` events, so appends do not reallocate.
    pub(crate) fn with_capacity(events: usize) -> Self {
        Self {
            events: Vec::with_capacity(events),
            bytes: 0,
        }
    }
}

impl Writer {
    /// Moves every non-empty open chunk to `sealed`.
    pub(crate) fn seal_all(&mut self) {
        let mut topics: Vec<Arc<str>> = self
            .open
            .iter()
            .filter(|(_, c)| !c.events.is_empty())
            .map(|(t, _)| t.clone())
            .collect();
        topics.sort();
        for t in topics {
            if let Some(chunk) = self.open.get_mut(&t) {
                let chunk = std::mem::take(chunk);
                self.pending_bytes += chunk.bytes;
                self.sealed.push((t, chunk));
            }
        }
    }
}

/// What the committer publishes: everything with seq ≤ `seq` is written to
/// its body generation file (durable, see I1 in `queue/mod.rs`).
#[derive(Clone, Debug, Default)]
pub(crate) struct DurableMark {
    pub(crate) seq: u64,
    /// Set once a commit failed; durable waiters not yet covered get this error.
    pub(crate) failed: Option<Arc<str>>,
}

/// The committer thread's body.
pub(crate) fn run(shared: Arc<Shared>) {
    let interval = shared.cfg.commit_interval;
    let eager_bytes = shared.cfg.max_pending_bytes.as_u64() / 4;
    loop {
        let (sealed, mark, shutdown) = {
            let mut w = shared.lock_writer();
            let deadline = Instant::now() + interval;
            loop {
                if w.shutdown || w.durable_requested || w.pending_bytes >= eager_bytes {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                w = shared
                    .commit_cv
                    .wait_timeout(w, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            w.seal_all();
            // Durable waiters are served by this round's write; the request
            // only made the round start early.
            w.durable_requested = false;
            let sealed = std::mem::take(&mut w.sealed);
            for (topic, chunk) in &sealed {
                w.committing
                    .entry(topic.clone())
                    .or_default()
                    .add(chunk.events.len() as u64, chunk.bytes);
            }
            (sealed, w.next_seq.saturating_sub(1), w.shutdown)
        };
        let written: u64 = sealed.iter().map(|(_, c)| c.bytes).sum();
        let (committed, result) = write_sealed(&shared, sealed, mark + 1);
        fail::fail_point!("queue::commit::after_write");
        {
            let mut w = shared.lock_writer();
            w.pending_bytes = w.pending_bytes.saturating_sub(written);
        }
        shared.space.signal();
        // The chunks' entries are in their generation files now (`write`: they
        // survive kill -9; with `fsync` they were `fdatasync`ed), so they are
        // durable and may be leased: a crash before sled flushes their index
        // records is repaired at open, which adopts every entry at or above the
        // topic's persisted high-water that has no index record (I1, I8). sled
        // flushes the index in the background every `flush_interval`; closing
        // flushes it so the next open has nothing to adopt.
        // This round's share of deferred acks (see `Queue::settle`), in one
        // sled batch per topic.
        let result = result.and_then(|()| shared.apply_pending_acks().map(|_| ()));
        let result = result.and_then(|()| {
            if shutdown {
                shared.store.flush()?;
                if shared.cfg.fsync {
                    shared.store.sync_data_file()?;
                }
            }
            Ok(())
        });
        // After a failure the written chunks are indexed all the same: the store
        // fails closed to new events but keeps delivering what it holds.
        for (topic, tree, indexed, usage, body_gen) in committed {
            shared.index_committed(&topic, tree, indexed, usage, body_gen);
        }
        // Generations whose every chunk was acked go whole, off the ack path.
        if let Err(e) = shared.reap_generations(shutdown) {
            tracing::warn!(error = %e, "Dropping an acked body generation failed; the next open drops it.");
        }
        match result {
            Ok(()) => {
                shared.durable.send_if_modified(|m| {
                    let raised = mark > m.seq;
                    m.seq = m.seq.max(mark);
                    raised
                });
            }
            Err(e) => {
                shared.fail_closed(&e.to_string());
            }
        }
        if shutdown {
            return;
        }
    }
}

/// Chunks written to one topic's trees, to be indexed once flushed, with the
/// body generation pinned for them.
type Committed = (Arc<str>, TopicTree, Vec<(u64, ChunkIndex)>, Usage, u32);

/// Writes sealed chunks, one atomic batch per topic. Returns what was written
/// (for the caller to index after its flush) and the first error.
fn write_sealed(
    shared: &Shared,
    sealed: Vec<(Arc<str>, OpenChunk)>,
    high_water: u64,
) -> (Vec<Committed>, Result<(), crate::storage::StorageError>) {
    let mut committed = Vec::new();
    if sealed.is_empty() {
        return (committed, Ok(()));
    }
    let mut by_topic: Vec<(Arc<str>, Vec<OpenChunk>)> = Vec::new();
    for (topic, chunk) in sealed {
        match by_topic.iter_mut().find(|(t, _)| *t == topic) {
            Some((_, v)) => v.push(chunk),
            None => by_topic.push((topic, vec![chunk])),
        }
    }
    let mut first_err = None;
    for (topic, chunks) in by_topic {
        if shared.is_failed() {
            drop_unwritten(shared, &topic, &chunks);
            continue;
        }
        let tree = match shared.topic_tree(&topic) {
            Ok(t) => t,
            Err(e) => {
                drop_unwritten(shared, &topic, &chunks);
                first_err.get_or_insert(e);
                continue;
            }
        };
        let mut records = Vec::with_capacity(chunks.len());
        for chunk in &chunks {
            let events: Vec<StoredEvent<'_>> = chunk
                .events
                .iter()
                .map(|e| StoredEvent {
                    seq: e.seq,
                    enqueued_at_ms: e.enqueued_at_ms,
                    payload: &e.payload,
                })
                .collect();
            let (Some(first), Some(last)) = (events.first(), events.last()) else {
                continue;
            };
            let index = ChunkIndex {
                events: events.len() as u32,
                bytes: chunk.bytes,
                last_seq: last.seq,
                first_enqueued_ms: first.enqueued_at_ms,
                body_gen: 0,
                body_offset: 0,
                body_len: 0,
            };
            records.push((first.seq, record::encode_chunk(&events), index));
        }
        let n = records.len() as u64;
        let raw: Vec<(u64, &[u8])> = records.iter().map(|(k, r, _)| (*k, r.as_slice())).collect();
        let written = shared
            .append_bodies(&topic, &tree, &raw)
            .and_then(|(body_gen, at)| {
                fail::fail_point!("queue::commit::after_append");
                let mut batch = WriteBatch::default();
                for ((key, _, index), (offset, len)) in records.iter_mut().zip(at) {
                    index.body_gen = body_gen;
                    index.body_offset = offset;
                    index.body_len = len;
                    batch.put_index(*key, index);
                }
                batch.set_high_water(high_water);
                match tree.apply(batch) {
                    Ok(()) => Ok(body_gen),
                    Err(e) => {
                        shared.unpin_body(&topic, body_gen, n);
                        Err(e)
                    }
                }
            });
        match written {
            Ok(body_gen) => {
                let indexed: Vec<(u64, ChunkIndex)> =
                    records.into_iter().map(|(k, _, i)| (k, i)).collect();
                metrics::counter!("evspool_events_committed_total", "topic" => topic.to_string())
                    .increment(indexed.iter().map(|(_, i)| i.events as u64).sum());
                let events = chunks.iter().map(|c| c.events.len() as u64).sum();
                let bytes = chunks.iter().map(|c| c.bytes).sum();
                committed.push((topic, tree, indexed, Usage { events, bytes }, body_gen));
            }
            Err(e) => {
                drop_unwritten(shared, &topic, &chunks);
                first_err.get_or_insert(e);
            }
        }
    }
    let result = match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    };
    (committed, result)
}

/// Accounts for buffered events whose commit failed: they are gone.
fn drop_unwritten(shared: &Shared, topic: &Arc<str>, chunks: &[OpenChunk]) {
    let events: u64 = chunks.iter().map(|c| c.events.len() as u64).sum();
    let bytes: u64 = chunks.iter().map(|c| c.bytes).sum();
    {
        let mut w = shared.lock_writer();
        if let Some(u) = w.committing.get_mut(topic) {
            u.sub(events, bytes);
        }
    }
    shared.totals.sub(events, bytes);
    shared.drops.count(topic, DropReason::StorageError, events);
    tracing::error!(
        topic = %topic,
        events,
        at_ms = now_ms(),
        "Buffered events could not be written to disk and are lost."
    );
}
