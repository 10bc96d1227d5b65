//! Buffered events and the committer thread (group commit).
//!
//! Buffered producers append to their topic's open chunk under the writer
//! lock. The committer, a plain OS thread, runs a *round* every
//! `commit_interval`, when sealed chunks pile up, when a log has a chunk's
//! worth of durable appends waiting, or at once when `sync` asks:
//!
//! 1. seal every open chunk and take the sealed ones (their usage moves to
//!    their logs' `pending`, so every event is counted exactly once);
//! 2. append each topic's chunks to its log in one write (`queue/log/mod.rs`),
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
//! 4. write the traces transitions queued (`queue/log/trace.rs`), apply every
//!    queued sled write in one batch (`queue/ops.rs`) and publish the round
//!    for `sync`.
//!
//! Between rounds, a settlement (an ack, a dead letter) asks for a
//! *persist*: the committer applies the queued sled writes at once, at most
//! every [`PERSIST_GAP`] (`persist_settled`), and so does a round that finds
//! one asked for. An apply writes them to the index journal
//! (`storage/journal.rs`) before sled, which a kill does not lose as it
//! loses sled's in-process buffer: without the persist a restart re-sent
//! every batch acknowledged in the last round and flush interval (measured
//! with `tests/torture/resends.rs` at ~3,000 events/s: 180–760 events per
//! kill, 0–40 of them leased at the kill). With it a kill takes back only
//! the leases in flight and the settlements of the last couple of
//! milliseconds.
//!
//! With `fsync`, a log whose sync failed transiently (out of descriptors
//! reopening the file) is synced again at every round until it succeeds, and
//! `sync` reports the transient error meanwhile: buffered events are never
//! left written but unsynced and unindexed behind an `Ok`.

use super::buffer::OpenChunk;
use super::ceiling::DropReason;
use super::log::entry::EntryKind;
use super::log::{Admit, Appended, Record, coalesce};
use super::ops::apply_ops;
use super::reap::Round;
use super::shared::Shared;
use super::storage::{StorageError, Store};
use super::topic::Topic;
use super::usage::Usage;
use crate::event::now_ms;
use crate::record::{self, StoredEvent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The committer thread's body.
pub(crate) fn run(shared: Arc<Shared>) {
    let interval = shared.cfg().commit_interval;
    let eager_bytes = shared.cfg().max_pending_bytes.as_u64() / 4;
    let mut last_persist: Option<Instant> = None;
    loop {
        let (sealed, round, shutdown) = {
            let mut w = shared.buffer().lock();
            let deadline = Instant::now() + interval;
            loop {
                if w.shutdown
                    || w.durable_requested
                    || w.pending_bytes >= eager_bytes
                    || shared.buffer().take_index_request()
                {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                let mut until = deadline;
                if shared.buffer().persist_requested() {
                    let due = last_persist.map_or(now, |t| t + PERSIST_GAP);
                    if now >= due {
                        // Between rounds: settlements reach sled's file now.
                        drop(w);
                        persist_settled(&shared);
                        last_persist = Some(Instant::now());
                        w = shared.buffer().lock();
                        continue;
                    }
                    until = until.min(due);
                }
                w = shared.buffer().wait(w, until - now);
            }
            if w.crash {
                // Whoever waits for a round learns it will not come.
                shared.buffer().rounds().send_modify(|m| {
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
                    .logs()
                    .log(topic)
                    .lock()
                    .pending
                    .add(chunk.events.len() as u64, chunk.bytes);
            }
            (sealed, w.sealed_rounds, w.shutdown)
        };
        let written: u64 = sealed.iter().map(|(_, c)| c.bytes).sum();
        let (mut failure, mut retry) = write_round(&shared, sealed);
        if shared.cfg().fsync {
            let (f, r) = resync(&shared);
            failure = failure.or(f);
            retry = retry.or(r);
        }
        fail::fail_point!("queue::commit::after_append");
        {
            let mut w = shared.buffer().lock();
            w.pending_bytes = w.pending_bytes.saturating_sub(written);
        }
        shared.ceiling().space().signal();
        index_logs(&shared);
        flush_traces(&shared);
        fail::fail_point!("queue::commit::after_write");
        if let Err(e) = apply_ops(&shared) {
            tracing::error!(error = %e, "Writing the index failed; the store fails closed (events stay in their body files).");
        } else if !shutdown
            && shared.buffer().persist_requested()
            && last_persist.is_none_or(|t| t.elapsed() >= PERSIST_GAP)
        {
            // Not sooner than the gap after the last: the wait above takes
            // a request that is not due yet (rounds can come every 1 ms).
            persist_settled(&shared);
            last_persist = Some(Instant::now());
        }
        if shutdown
            && let Ok(store) = shared.store().get()
            && let Err(e) = store.persist(shared.cfg().fsync)
        {
            shared.gate().fail_closed(&e.to_string());
        }
        reap(&shared, shutdown);
        shared.buffer().rounds().send_modify(|m| {
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

/// Least time between two flushes for settlements ([`persist_settled`]):
/// bounds the flushes to 500 a second under a steady stream of acks, while
/// what a kill can take back stays a couple of milliseconds of them.
const PERSIST_GAP: Duration = Duration::from_millis(2);

/// Makes the settlements queued so far survive a kill: applies every queued
/// sled write, which writes them to the index journal first
/// (`storage/journal.rs`), where a kill does not lose them as it loses
/// sled's in-memory buffer. Before the journal this flushed sled every
/// time, and before that an ack reached sled's file only at sled's next
/// background flush (`flush_interval`), so a restart re-sent every batch
/// acknowledged in the last half second. A failed apply fails the store
/// closed (sled refuses writes after an I/O error).
fn persist_settled(shared: &Shared) {
    // Counted by a test (`fail::cfg_callback`): at most one per gap.
    fail::fail_point!("queue::commit::persist_settled");
    shared.buffer().take_persist_request();
    if let Err(e) = apply_ops(shared) {
        tracing::error!(error = %e, "Writing the index failed; the store fails closed (events stay in their body files).");
    }
}

/// Appends a round's sealed chunks, one write per topic; returns why the
/// round failed, if it did, and the transient error that put a topic's chunks
/// back for the next round, if one did.
fn write_round(
    shared: &Shared,
    sealed: Vec<(Topic, OpenChunk)>,
) -> (Option<Arc<str>>, Option<StorageError>) {
    // A map, not a scan: a round can seal chunks of thousands of topics.
    let mut by_topic: BTreeMap<Topic, Vec<OpenChunk>> = BTreeMap::new();
    // Eviction under `drop_oldest` can empty a sealed chunk.
    for (topic, chunk) in sealed.into_iter().filter(|(_, c)| !c.events.is_empty()) {
        by_topic.entry(topic).or_default().push(chunk);
    }
    let mut failure: Option<Arc<str>> = None;
    let mut retry: Option<StorageError> = None;
    for (topic, chunks) in by_topic {
        let log = shared.logs().log(&topic);
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
        let appended = if shared.gate().is_failed() {
            Err(None)
        } else {
            log.append(
                shared.logs().bodies(),
                Admit::Committer,
                &records,
                EntryKind::New,
            )
            .map_err(|e| {
                shared.gate().write_failed(&e);
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
                    || shared.gate().failed_reason().unwrap_or_default(),
                    |e| e.to_string(),
                );
                drop_unwritten(shared, &topic, usage);
                failure.get_or_insert_with(|| Arc::from(reason.as_str()));
                continue;
            }
        }
        shared.logs().mark_dirty(topic.arc());
        metrics::counter!("evspool_events_committed_total", "topic" => topic.to_string())
            .increment(usage.events);
        // Written but not synced: the events stay where they are (indexed
        // only if a later sync covers them; adopted at open if the disk kept
        // them), and `sync` callers learn the round failed.
        fail::fail_point!("queue::commit::before_sync");
        if shared.cfg().fsync
            && let Err(e) = log.sync()
        {
            shared.gate().write_failed(&e);
            if e.is_transient() {
                // Out of descriptors reopening the file: written, not yet
                // synced (nor indexed); the next rounds sync it again, and
                // `sync` reports the transient error meanwhile.
                shared.logs().mark_unsynced(topic.arc());
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
/// and unreported (G8 in `queue/log/mod.rs`). Returns a fatal failure and a
/// transient one, if a sync met them.
fn resync(shared: &Shared) -> (Option<Arc<str>>, Option<StorageError>) {
    let topics = shared.logs().take_unsynced();
    let (mut failure, mut retry) = (None, None);
    for topic in topics {
        let Some(log) = shared.logs().existing(&topic) else {
            continue;
        };
        match log.sync() {
            Ok(()) => shared.logs().mark_dirty(&topic),
            Err(e) if e.is_transient() => {
                shared.logs().mark_unsynced(&topic);
                retry.get_or_insert(e);
            }
            Err(e) => {
                shared.gate().write_failed(&e);
                failure.get_or_insert_with(|| Arc::from(e.to_string().as_str()));
            }
        }
    }
    (failure, retry)
}

/// Writes the traces transitions queued since the last round, for every
/// topic that has some (`queue/log/trace.rs`); a write that fails leaves them
/// queued for the next round.
pub(crate) fn flush_traces(shared: &Shared) {
    let topics: Vec<Arc<str>> = shared
        .catalog()
        .lock()
        .topics
        .iter()
        .filter(|(_, t)| t.log.traces.any())
        .map(|(name, _)| name.clone())
        .collect();
    for topic in topics {
        // A topic's index shares its log's signals: the log exists.
        let Some(log) = shared.logs().existing(&topic) else {
            continue;
        };
        if let Err(e) = log.flush_traces(shared.logs().bodies(), Admit::Committer) {
            shared.gate().write_failed(&e);
            tracing::warn!(topic = %topic, error = %e, "Traces of removed events could not be written yet; the next round tries again.");
        }
    }
}

/// Puts back chunks whose write failed for lack of descriptors, in front of
/// everything sealed since (they are older): the next round writes them.
fn requeue(shared: &Shared, topic: &Topic, chunks: Vec<OpenChunk>, usage: Usage) {
    shared
        .logs()
        .log(topic)
        .lock()
        .pending
        .sub(usage.events, usage.bytes);
    let mut w = shared.buffer().lock();
    // Still pending: the round subtracts everything it took once it is done.
    w.pending_bytes += usage.bytes;
    let mut back: Vec<(Topic, OpenChunk)> =
        chunks.into_iter().map(|c| (topic.clone(), c)).collect();
    back.append(&mut w.sealed);
    w.sealed = back;
    tracing::warn!(topic = %topic, events = usage.events, "Buffered events kept for the next commit round: the process is out of file descriptors.");
}

/// Accounts for buffered events whose write failed: they are gone (the
/// failed write was truncated back, G4 in `queue/log/mod.rs`).
fn drop_unwritten(shared: &Shared, topic: &Topic, usage: Usage) {
    let log = shared.logs().log(topic);
    let mut st = log.lock();
    st.pending.sub(usage.events, usage.bytes);
    shared.ceiling().totals().sub(usage.events, usage.bytes);
    drop(st);
    shared
        .ceiling()
        .drops()
        .count(topic.arc(), DropReason::StorageError, usage.events);
    tracing::error!(
        topic = %topic,
        events = usage.events,
        "Buffered events could not be written to disk and are lost."
    );
}

/// Indexes the entries waiting in every dirty log (step 3 of a round).
pub(crate) fn index_logs(shared: &Shared) {
    let topics: Vec<Arc<str>> = shared.logs().take_dirty().into_iter().collect();
    let now = now_ms();
    for topic in topics {
        if index_topic(shared, &topic, now) {
            shared.logs().mark_dirty(&topic);
        }
    }
}

/// Indexes the entries waiting in `topic`'s log (with `fsync`, the synced
/// ones): contiguous entries become one chunk, each a `commit` transition,
/// and the checkpoint moves past them (G3). Returns whether entries still
/// wait (not synced yet).
pub(crate) fn index_topic(shared: &Shared, topic: &Arc<str>, now: u64) -> bool {
    let Some(log) = shared.logs().existing(topic) else {
        return false;
    };
    let max_events = shared.cfg().chunk_max_events as u64;
    let max_bytes = shared.cfg().chunk_max_bytes.as_u64();
    let mut st = log.lock();
    let take = if shared.cfg().fsync {
        let synced = st.synced();
        st.unindexed
            .iter()
            .take_while(|a| a.end() <= synced)
            .count()
    } else {
        st.unindexed.len()
    };
    // Under the log's lock, which durable producers wait on: the common
    // whole-pile take moves the vector instead of copying it.
    let entries: Vec<Appended> = if take == st.unindexed.len() {
        std::mem::take(&mut st.unindexed)
    } else {
        st.unindexed.drain(..take).collect()
    };
    let mut index = shared.catalog().lock();
    let t = shared.catalog().topic_index(&mut index, topic, &log);
    let floor = t.high_water;
    for (key, chunk) in coalesce(&entries, floor, max_events, max_bytes) {
        t.commit(key, chunk, now);
    }
    // Entries come in append order, so a generation's are one run: settle
    // per run, not per entry (a pile of 64k single-event entries is indexed
    // under the log's lock).
    for run in entries.chunk_by(|a, b| a.index.body_gen == b.index.body_gen) {
        st.settled(run[0].index.body_gen, run.len() as u64);
    }
    let events = entries.iter().map(|a| a.index.events as u64).sum();
    let bytes = entries.iter().map(|a| a.index.bytes).sum();
    st.unindexed_usage.sub(events, bytes);
    t.checkpoint(st.checkpoint());
    if !entries.is_empty() {
        t.wake();
    }
    !st.unindexed.is_empty()
}

/// Indexes `topic`'s waiting entries now (a consumer is about to lease), so
/// it never waits a round for events already written.
pub(crate) fn index_waiting(shared: &Shared, topic: &str) {
    let Some(log) = shared.logs().existing(topic) else {
        return;
    };
    if log.lock().unindexed.is_empty() {
        return;
    }
    index_topic(shared, log.topic.arc(), now_ms());
}

/// Runs a deletion round of drained generations if one is due (`now`: at
/// once, inline; otherwise on a thread of its own). The index is applied
/// and flushed (synced with `fsync`) first: the removals of the index
/// records naming a generation reach disk before its file goes (`reap.rs`).
pub(crate) fn reap(shared: &Arc<Shared>, now: bool) {
    let Some(batch) = shared.reaper().take(shared.logs(), shared.catalog(), now) else {
        return;
    };
    let round = {
        let shared = Arc::clone(shared);
        move || {
            // Keeps what is left and ends a background round, even if the
            // round panics (a bug): `reap.rs`.
            let mut round = Round::new(shared.reaper(), batch, !now);
            fail::fail_point!("queue::reap::round");
            match flush_index(&shared) {
                Ok(store) => shared.reaper().delete(
                    &mut round,
                    shared.logs(),
                    shared.catalog(),
                    &store,
                    shared.dead_locks(),
                ),
                Err(e) => {
                    tracing::warn!(error = %e, files = round.len(), "Drained body generations kept: the index could not be flushed first.");
                    round.keep_all();
                }
            }
        }
    };
    if now {
        round();
    } else {
        shared.reaper().spawn(round);
    }
}

/// Applies every queued sled write and flushes sled (and syncs it with
/// `fsync`); returns sled.
fn flush_index(shared: &Shared) -> Result<Arc<Store>, StorageError> {
    apply_ops(shared)?;
    let store = shared
        .store()
        .get()
        .map_err(|e| StorageError::io("flush", std::io::Error::other(e.to_string())))?;
    store.flush()?;
    if shared.cfg().fsync {
        store.sync_data_file()?;
    }
    Ok(store)
}
