//! Buffered events and the committer thread (group commit).
//!
//! Buffered producers append to their topic's open chunk under the writer
//! lock. The committer, a plain OS thread, runs a *round* every
//! `commit_interval`, when sealed chunks pile up, when a log has a chunk's
//! worth of durable appends waiting, or at once when `sync` asks:
//!
//! 1. seal every open chunk and take the sealed ones (their usage moves to
//!    their logs' `pending`, so every event is counted exactly once);
//! 2. append each topic's chunks to its log in one write (`queue/log.rs`),
//!    `fdatasync`ing it with `fsync = true`; a topic whose write fails loses
//!    those buffered events, counted as `storage_error` drops, and the round
//!    is marked failed for `sync` — except when the process is out of file
//!    descriptors: then nothing was written, the chunks go back in front of
//!    the sealed ones for the next round, and `sync` learns of the transient
//!    error;
//! 3. index every log's new entries (the round's and durable producers'):
//!    contiguous entries become one chunk of up to `chunk_max_events`, each a
//!    `commit` transition; with `fsync` only synced entries are indexed, so
//!    nothing is leased that a power cut could take back;
//! 4. write the traces transitions queued (`queue/trace.rs`), apply every
//!    queued sled write in one batch (`queue/ops.rs`) and publish the round
//!    for `sync`.
//!
//! With `fsync`, a log whose sync failed transiently (out of descriptors
//! reopening the file) is synced again at every round until it succeeds, and
//! `sync` reports the transient error meanwhile: buffered events are never
//! left written but unsynced and unindexed behind an `Ok`.

use super::ceiling::DropReason;
use super::entry::EntryKind;
use super::index::Usage;
use super::log::{Admit, Appended, Record};
use super::shared::Shared;
use super::storage::StorageError;
use crate::event::now_ms;
use crate::record::{self, ChunkIndex, StoredEvent};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    /// Per topic, the chunk being filled (absent once sealed, so idle topics cost nothing).
    pub(crate) open: HashMap<Arc<str>, OpenChunk>,
    /// Full chunks waiting for the committer, in seal order.
    pub(crate) sealed: Vec<(Arc<str>, OpenChunk)>,
    /// Payload bytes sealed and not yet written (backpressure).
    pub(crate) pending_bytes: u64,
    /// A caller of `sync` is waiting: start a round now.
    pub(crate) durable_requested: bool,
    /// Close was requested: run a last round and exit.
    pub(crate) shutdown: bool,
    /// A simulated crash was requested: exit at once, as a killed process would.
    pub(crate) crash: bool,
    /// Rounds that have sealed so far; round ids are 1, 2, ...
    pub(crate) sealed_rounds: u64,
}

impl Writer {
    /// Moves every non-empty open chunk to `sealed`.
    pub(crate) fn seal_all(&mut self) {
        let mut topics: Vec<Arc<str>> = self.open.keys().cloned().collect();
        topics.sort();
        for t in topics {
            if let Some(chunk) = self.open.remove(&t)
                && !chunk.events.is_empty()
            {
                self.pending_bytes += chunk.bytes;
                self.sealed.push((t, chunk));
            }
        }
    }
}

/// Rounds completed, for `sync`: a round is failed if a topic's write failed.
#[derive(Clone, Debug, Default)]
pub(crate) struct RoundMark {
    pub(crate) completed: u64,
    /// The last failed round and why.
    pub(crate) failed: Option<(u64, Arc<str>)>,
    /// The last round that put chunks back for the next one because the
    /// process ran out of descriptors (transient: nothing was lost).
    pub(crate) retry: Option<(u64, StorageError)>,
}

/// The committer thread's body.
pub(crate) fn run(shared: Arc<Shared>) {
    let interval = shared.cfg.commit_interval;
    let eager_bytes = shared.cfg.max_pending_bytes.as_u64() / 4;
    loop {
        let (sealed, round, shutdown) = {
            let mut w = shared.lock_writer();
            let deadline = Instant::now() + interval;
            loop {
                if w.shutdown
                    || w.durable_requested
                    || w.pending_bytes >= eager_bytes
                    || shared.index_requested.swap(false, Ordering::AcqRel)
                {
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
            if w.crash {
                // Whoever waits for a round learns it will not come.
                shared.rounds.send_modify(|m| {
                    m.completed = u64::MAX;
                    m.failed = Some((u64::MAX, Arc::from("the queue crashed")));
                });
                return;
            }
            w.seal_all();
            w.durable_requested = false;
            w.sealed_rounds += 1;
            let sealed = std::mem::take(&mut w.sealed);
            // The sealed events are the logs' to write now (writer → log).
            for (topic, chunk) in &sealed {
                shared
                    .log(topic)
                    .lock()
                    .pending
                    .add(chunk.events.len() as u64, chunk.bytes);
            }
            (sealed, w.sealed_rounds, w.shutdown)
        };
        let written: u64 = sealed.iter().map(|(_, c)| c.bytes).sum();
        let (mut failure, mut retry) = write_round(&shared, sealed);
        if shared.cfg.fsync {
            let (f, r) = resync(&shared);
            failure = failure.or(f);
            retry = retry.or(r);
        }
        fail::fail_point!("queue::commit::after_append");
        {
            let mut w = shared.lock_writer();
            w.pending_bytes = w.pending_bytes.saturating_sub(written);
        }
        shared.space.signal();
        index_logs(&shared);
        flush_traces(&shared);
        fail::fail_point!("queue::commit::after_write");
        if let Err(e) = shared.apply_ops() {
            tracing::error!(error = %e, "Writing the index failed; the store fails closed (events stay in their body files).");
        }
        if shutdown
            && let Ok(store) = shared.store()
            && let Err(e) = store.persist(shared.cfg.fsync)
        {
            shared.fail_closed(&e.to_string());
        }
        shared.reap(shutdown);
        shared.rounds.send_modify(|m| {
            m.completed = round;
            if let Some(reason) = failure {
                m.failed = Some((round, reason));
            }
            if let Some(e) = retry {
                m.retry = Some((round, e));
            }
        });
        if shutdown {
            return;
        }
    }
}

/// Appends a round's sealed chunks, one write per topic; returns why the
/// round failed, if it did, and the transient error that put a topic's chunks
/// back for the next round, if one did.
fn write_round(
    shared: &Shared,
    sealed: Vec<(Arc<str>, OpenChunk)>,
) -> (Option<Arc<str>>, Option<StorageError>) {
    // A map, not a scan: a round can seal chunks of thousands of topics.
    let mut by_topic: BTreeMap<Arc<str>, Vec<OpenChunk>> = BTreeMap::new();
    // Eviction under `drop_oldest` can empty a sealed chunk.
    for (topic, chunk) in sealed.into_iter().filter(|(_, c)| !c.events.is_empty()) {
        by_topic.entry(topic).or_default().push(chunk);
    }
    let mut failure: Option<Arc<str>> = None;
    let mut retry: Option<StorageError> = None;
    for (topic, chunks) in by_topic {
        let log = shared.log(&topic);
        let stored: Vec<Vec<StoredEvent<'_>>> = chunks
            .iter()
            .map(|c| {
                c.events
                    .iter()
                    .map(|e| StoredEvent {
                        seq: e.seq,
                        enqueued_at_ms: e.enqueued_at_ms,
                        payload: &e.payload,
                    })
                    .collect()
            })
            .collect();
        let encoded: Vec<Vec<u8>> = stored.iter().map(|ev| record::encode_chunk(ev)).collect();
        let records: Vec<Record<'_>> = stored
            .iter()
            .zip(&encoded)
            .map(|(ev, raw)| Record::new(ev, raw))
            .collect();
        let usage = Usage::new(
            chunks.iter().map(|c| c.events.len() as u64).sum(),
            chunks.iter().map(|c| c.bytes).sum(),
        );
        let appended = if shared.is_failed() {
            Err(None)
        } else {
            log.append(&shared.bodies, Admit::Committer, &records, EntryKind::New)
                .map_err(|e| {
                    shared.write_failed(&e);
                    Some(e)
                })
        };
        match appended {
            Ok(_) => {}
            Err(Some(e)) if e.is_transient() => {
                // Out of descriptors: nothing was written; the next round
                // tries again (accepted events are never dropped for it).
                drop(records);
                drop(encoded);
                drop(stored);
                requeue(shared, &topic, chunks, usage);
                retry.get_or_insert(e);
                continue;
            }
            Err(e) => {
                let reason = e.map_or_else(
                    || shared.failed_reason().unwrap_or_default(),
                    |e| e.to_string(),
                );
                drop_unwritten(shared, &topic, usage);
                failure.get_or_insert_with(|| Arc::from(reason.as_str()));
                continue;
            }
        }
        shared.mark_dirty(&topic);
        metrics::counter!("evspool_events_committed_total", "topic" => topic.to_string())
            .increment(usage.events);
        // Written but not synced: the events stay where they are (indexed
        // only if a later sync covers them; adopted at open if the disk kept
        // them), and `sync` callers learn the round failed.
        fail::fail_point!("queue::commit::before_sync");
        if shared.cfg.fsync
            && let Err(e) = log.sync()
        {
            shared.write_failed(&e);
            if e.is_transient() {
                // Out of descriptors reopening the file: written, not yet
                // synced (nor indexed); the next rounds sync it again, and
                // `sync` reports the transient error meanwhile.
                shared.mark_unsynced(&topic);
                retry.get_or_insert(e);
            } else {
                failure.get_or_insert_with(|| Arc::from(e.to_string().as_str()));
            }
        }
    }
    (failure, retry)
}

/// Syncs again the logs whose sync failed transiently (a round's, or the
/// syncer's after it gave up): nothing written is left unsynced, unindexed
/// and unreported (G8 in `queue/log.rs`). Returns a fatal failure and a
/// transient one, if a sync met them.
fn resync(shared: &Shared) -> (Option<Arc<str>>, Option<StorageError>) {
    let topics = shared.take_unsynced();
    let (mut failure, mut retry) = (None, None);
    for topic in topics {
        let Some(log) = shared.existing_log(&topic) else {
            continue;
        };
        match log.sync() {
            Ok(()) => shared.mark_dirty(&topic),
            Err(e) if e.is_transient() => {
                shared.mark_unsynced(&topic);
                retry.get_or_insert(e);
            }
            Err(e) => {
                shared.write_failed(&e);
                failure.get_or_insert_with(|| Arc::from(e.to_string().as_str()));
            }
        }
    }
    (failure, retry)
}

/// Writes the traces transitions queued since the last round, for every
/// topic that has some (`queue/trace.rs`); a write that fails leaves them
/// queued for the next round.
pub(crate) fn flush_traces(shared: &Shared) {
    let topics: Vec<Arc<str>> = shared
        .lock_index()
        .topics
        .iter()
        .filter(|(_, t)| t.log.traces.any())
        .map(|(name, _)| name.clone())
        .collect();
    for topic in topics {
        let log = shared.log(&topic);
        if let Err(e) = log.flush_traces(&shared.bodies, Admit::Committer) {
            shared.write_failed(&e);
            tracing::warn!(topic = %topic, error = %e, "Traces of removed events could not be written yet; the next round tries again.");
        }
    }
}

/// Puts back chunks whose write failed for lack of descriptors, in front of
/// everything sealed since (they are older): the next round writes them.
fn requeue(shared: &Shared, topic: &Arc<str>, chunks: Vec<OpenChunk>, usage: Usage) {
    shared
        .log(topic)
        .lock()
        .pending
        .sub(usage.events, usage.bytes);
    let mut w = shared.lock_writer();
    // Still pending: the round subtracts everything it took once it is done.
    w.pending_bytes += usage.bytes;
    let mut back: Vec<(Arc<str>, OpenChunk)> =
        chunks.into_iter().map(|c| (topic.clone(), c)).collect();
    back.append(&mut w.sealed);
    w.sealed = back;
    tracing::warn!(topic = %topic, events = usage.events, "Buffered events kept for the next commit round: the process is out of file descriptors.");
}

/// Accounts for buffered events whose write failed: they are gone (the
/// failed write was truncated back, G4 in `queue/log.rs`).
fn drop_unwritten(shared: &Shared, topic: &Arc<str>, usage: Usage) {
    let log = shared.log(topic);
    let mut st = log.lock();
    st.pending.sub(usage.events, usage.bytes);
    shared.totals.sub(usage.events, usage.bytes);
    drop(st);
    shared
        .drops
        .count(topic, DropReason::StorageError, usage.events);
    tracing::error!(
        topic = %topic,
        events = usage.events,
        "Buffered events could not be written to disk and are lost."
    );
}

/// Indexes the entries waiting in every dirty log (step 3 of a round).
pub(crate) fn index_logs(shared: &Shared) {
    let topics: Vec<Arc<str>> = std::mem::take(&mut *super::shared::lock(&shared.dirty))
        .into_iter()
        .collect();
    let now = now_ms();
    for topic in topics {
        if index_topic(shared, &topic, now) {
            shared.mark_dirty(&topic);
        }
    }
}

/// Indexes the entries waiting in `topic`'s log (with `fsync`, the synced
/// ones): contiguous entries become one chunk, each a `commit` transition,
/// and the checkpoint moves past them (G3). Returns whether entries still
/// wait (not synced yet).
pub(crate) fn index_topic(shared: &Shared, topic: &Arc<str>, now: u64) -> bool {
    let Some(log) = shared.existing_log(topic) else {
        return false;
    };
    let max_events = shared.cfg.chunk_max_events as u64;
    let max_bytes = shared.cfg.chunk_max_bytes.as_u64();
    let mut st = log.lock();
    let take = if shared.cfg.fsync {
        let synced = st.synced();
        st.unindexed
            .iter()
            .take_while(|a| a.end() <= synced)
            .count()
    } else {
        st.unindexed.len()
    };
    let entries: Vec<Appended> = st.unindexed.drain(..take).collect();
    let mut index = shared.lock_index();
    let t = shared.topic_index(&mut index, topic, &log);
    for (key, chunk) in coalesce(&entries, max_events, max_bytes) {
        t.commit(key, chunk, now);
    }
    let mut per_gen: HashMap<u32, u64> = HashMap::new();
    for a in &entries {
        *per_gen.entry(a.index.body_gen).or_default() += 1;
        st.unindexed_usage.sub(a.index.events as u64, a.index.bytes);
    }
    for (g, n) in per_gen {
        st.settled(g, n);
    }
    t.checkpoint(st.checkpoint());
    if !entries.is_empty() {
        t.wake();
    }
    !st.unindexed.is_empty()
}

/// Indexes `topic`'s waiting entries now (a consumer is about to lease), so
/// it never waits a round for events already written.
pub(crate) fn index_waiting(shared: &Shared, topic: &str) {
    let Some(log) = shared.existing_log(topic) else {
        return;
    };
    if log.lock().unindexed.is_empty() {
        return;
    }
    index_topic(shared, &log.topic, now_ms());
}

/// Groups entries into chunks: consecutive entries of one generation that
/// touch, with rising seqs, up to `max_events` events and `max_bytes` bytes.
pub(crate) fn coalesce(
    entries: &[Appended],
    max_events: u64,
    max_bytes: u64,
) -> Vec<(u64, ChunkIndex)> {
    let mut out: Vec<(u64, ChunkIndex)> = Vec::new();
    let mut prev: Option<&Appended> = None;
    for a in entries {
        let joins = match (prev, out.last()) {
            (Some(p), Some((_, c))) => {
                p.end() == (a.index.body_gen, a.index.body_offset)
                    && a.first_seq > p.index.last_seq
                    && c.events as u64 + a.index.events as u64 <= max_events
                    && c.bytes + a.index.bytes <= max_bytes
                    && c.body_len as u64 + a.index.body_len as u64 <= u32::MAX as u64
            }
            _ => false,
        };
        match out.last_mut() {
            Some((_, c)) if joins => c.extend(&a.index),
            _ => out.push((a.first_seq, a.index)),
        }
        prev = Some(a);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(generation: u32, offset: u64, span: u64, seq: u64, events: u32) -> Appended {
        Appended {
            first_seq: seq,
            index: ChunkIndex {
                events,
                bytes: events as u64 * 10,
                last_seq: seq + events as u64 - 1,
                first_enqueued_ms: seq,
                body_gen: 0,
                body_offset: 0,
                body_len: 0,
            }
            .placed(generation, offset, span as u32),
        }
    }

    #[test]
    fn touching_entries_become_one_chunk_up_to_the_limits() {
        let entries = [
            a(1, 40, 30, 1, 1),
            a(1, 70, 30, 2, 1),
            a(1, 100, 30, 3, 1),
            // A gap (another entry lies between): a new chunk.
            a(1, 200, 30, 4, 1),
            // Seqs going back (a buffered chunk committed late): a new chunk.
            a(1, 230, 30, 0, 1),
            // Another generation: a new chunk.
            a(2, 40, 30, 9, 1),
        ];
        let chunks = coalesce(&entries, 50, 1 << 20);
        let keys: Vec<(u64, u32, u64, u32)> = chunks
            .iter()
            .map(|(k, c)| (*k, c.events, c.body_offset, c.body_len))
            .collect();
        assert_eq!(
            keys,
            vec![
                (1, 3, 40, 90),
                (4, 1, 200, 30),
                (0, 1, 230, 30),
                (9, 1, 40, 30)
            ]
        );
        let small = coalesce(&entries[..3], 2, 1 << 20);
        assert_eq!(small.len(), 2, "at most 2 events a chunk");
        assert_eq!(small[0].1.last_seq, 2);
    }
}
