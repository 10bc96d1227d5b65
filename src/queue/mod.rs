//! The durable queue: chunks of events in sled, leased to consumers in batches.
//!
//! # Design constraints
//!
//! Measured on our 2-core machines, sled 0.34.7 costs about 6 µs per key
//! operation: one key per event caps a queue near 160k enqueues/s and 130k
//! consumes/s. Storing events 50 to a value (a *chunk*) amortises that cost
//! fifty-fold, so the queue's unit of storage, leasing and acknowledgement is
//! the chunk, and `chunk_max_events` defaults to the batch size (50).
//!
//! # How it operates
//!
//! ```text
//! enqueue ─▶ open chunk (memory, per topic) ─seal─▶ sealed list ─committer─▶ sled batch
//!                                                                     │
//!                     lease(≤ batch) ◀── ready ◀── index insert ◀─────┘
//!                        │
//!       ack ── delete chunk ◀┤── nack ── retry record, delayed until not-before
//!                            └── settle(partial) ── rewrite rest + dead letters (one batch)
//! ```
//!
//! 1. `enqueue` validates the topic and size, applies the ceiling policy, assigns
//!    the next seq and appends to the topic's open chunk — memory only.
//! 2. A chunk is sealed when full (`chunk_max_events` or `chunk_max_bytes`), at
//!    every `commit_interval`, or at once when a durable producer waits.
//! 3. The committer appends each topic's sealed chunks to the topic's body
//!    generation file in one `write` (`fdatasync`ed with `fsync = true`), writes
//!    their index records and the seq high-water in one atomic sled batch, then
//!    indexes them as ready and publishes the durable mark. sled flushes the
//!    index in the background (`flush_interval`).
//! 4. `lease` hands out whole ready chunks from the head of a topic, up to
//!    `max_events`, with a deadline. Ack deletes them; nack writes a retry record
//!    (attempts, not-before, last error); `settle` handles mixed outcomes.
//!
//! # On-disk format
//!
//! See `queue/storage.rs` for the trees and keys and [`crate::record`]
//! for the record framing (format byte + bincode + CRC32). Format version 2.
//!
//! # Invariants
//!
//! - I1 (no loss): an event whose `enqueue_durable` returned `Ok(Accepted)` is in
//!   a chunk entry written to its generation file, and stays queued until it is
//!   acked, dead-lettered, or dropped by a counted policy. *Mechanism*: the
//!   durable mark is published only after the `write` (and `fdatasync` with
//!   `fsync`); open adopts every entry at or above the topic's persisted seq
//!   high-water that has no index record (its index batch was not flushed yet);
//!   deletes happen only in `settle`, eviction and `max_age`, and a generation
//!   file is deleted only after sled has flushed the deletion of every index
//!   record naming it.
//! - I2 (seq order): seqs are assigned under the writer lock together with the
//!   append, so when the committer seals under that lock every seq below
//!   `next_seq` is in a sealed chunk; the durable mark never covers a seq that
//!   is not yet written.
//! - I3 (unique seqs across restarts): each commit batch raises the topic's
//!   high-water record atomically with its chunks; open resumes above every
//!   high-water, index and dead letter seen. sled's `generate_id` is not used.
//! - I4 (at-least-once): leases are memory only; a crash or reopen makes every
//!   stored chunk ready again. A lease that outlives `lease_timeout` is released.
//! - I5 (atomic transitions): every change to one chunk's records — and the dead
//!   letters a partial outcome produces — is one sled batch on the topic's tree.
//!   A plain ack (every event delivered) is the exception in timing only: its
//!   deletions are written by the committer's next round, with the round's
//!   other acks, in one batch per topic; before a generation file is deleted,
//!   every deferred ack is written and flushed. A crash in between delivers
//!   those events again (I4).
//! - I6 (exact accounting): see `queue/ceiling.rs`, C1–C3.
//! - I7 (contained damage): a record failing its CRC is copied to `quarantine`,
//!   removed, counted, and the queue goes on; opening never panics.
//! - I8 (ids are never reused): no consumer sees an event before its chunk entry
//!   is written to its generation file. *Mechanism*: the committer indexes
//!   chunks only after the `write`, and open resumes seqs above every adopted
//!   entry. A crash can lose buffered events still in memory and their seqs may
//!   be handed out again, but only seqs no sink ever saw; without this, a sink
//!   deduplicating on ids would drop the event that reuses one. (An entry
//!   adopted at open after its ack was lost is delivered again, same id: the
//!   at-least-once duplicate of I4.)

pub(crate) mod ceiling;
pub(crate) mod commit;
pub(crate) mod lease;
mod open;
mod resume;
pub use open::{CompactReport, compact, store_size};
pub(crate) mod storage;

use crate::ceiling::{DropReason, Drops, Space, Totals};
use crate::config::{OverflowPolicy, QueueConfig};
use crate::error::QueueError;
use crate::event::{Event, EventId, now_ms};
use crate::record::{self, ChunkIndex, DeadLetter, RetryState, StoredEvent};
use bytes::Bytes;
use commit::{DurableMark, OpenChunk, PendingEvent, Writer};
use lease::{ChunkInfo, ChunkState, Index, LeaseInfo, TopicIndex};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use storage::{BodyTree, StorageError, Store, TopicTree, WriteBatch};
use tokio::sync::watch;

pub use lease::Usage;

/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 64;

/// What happened to an event handed to `enqueue`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Enqueued {
    /// Stored (buffered or durable, per the call); it will be delivered at least once.
    Accepted(EventId),
    /// Discarded by the ceiling policy and counted under `reason`.
    Dropped(DropReason),
}

impl Enqueued {
    /// The event's id if it was accepted.
    pub fn id(&self) -> Option<&EventId> {
        match self {
            Self::Accepted(id) => Some(id),
            Self::Dropped(_) => None,
        }
    }
}

/// The per-event outcome of a delivery attempt, for [`Queue::settle`].
///
/// Events of the lease named in neither `dead` nor `retry` count as delivered.
#[derive(Clone, Debug, Default)]
pub struct Settlement {
    dead: HashMap<u64, String>,
    retry: HashSet<u64>,
    retry_after: Duration,
    retry_reason: String,
}

impl Settlement {
    /// Every event delivered.
    pub fn delivered() -> Self {
        Self::default()
    }

    /// Marks the event with `seq` for the dead-letter store with `reason`.
    pub fn dead(mut self, seq: u64, reason: impl Into<String>) -> Self {
        self.dead.insert(seq, reason.into());
        self
    }

    /// Marks the event with `seq` to be retried.
    pub fn retry(mut self, seq: u64) -> Self {
        self.retry.insert(seq);
        self
    }

    /// When and why retried events may be leased again.
    pub fn retry_after(mut self, after: Duration, reason: impl Into<String>) -> Self {
        self.retry_after = after;
        self.retry_reason = reason.into();
        self
    }

    /// Events marked dead.
    pub fn dead_count(&self) -> usize {
        self.dead.len()
    }
}

/// What `settle` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleReport {
    /// Events acknowledged and deleted.
    pub delivered: u64,
    /// Events moved to the dead-letter store.
    pub dead: u64,
    /// Events kept for a later attempt.
    pub retried: u64,
}

/// A batch of events held by one consumer until settled.
///
/// Settle it with [`Queue::ack`], [`Queue::nack`], [`Queue::settle`] or
/// [`Queue::release`]. Dropping it unsettled releases it (no attempt counted).
#[derive(Debug)]
pub struct Lease {
    id: u64,
    topic: Arc<str>,
    chunks: Vec<LeasedChunk>,
    events: Vec<Event>,
    shared: Weak<Shared>,
    settled: bool,
}

#[derive(Debug, Clone)]
struct LeasedChunk {
    key: u64,
    start: usize,
    end: usize,
    attempts: u32,
    index: ChunkIndex,
}

impl Lease {
    /// The lease id (unique within this process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The topic the events belong to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The events, in enqueue order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the lease holds no events (never true for a lease handed out).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Sum of payload bytes.
    pub fn bytes(&self) -> u64 {
        self.events.iter().map(|e| e.payload.len() as u64).sum()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled
            && let Some(shared) = self.shared.upgrade()
        {
            shared.lock_index().release(self.id, now_ms());
        }
    }
}

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

/// A queued event as `peek` shows it, with its chunk's delivery state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeekedEvent {
    /// The event.
    pub event: Event,
    /// Whether a consumer holds it right now.
    pub leased: bool,
    /// Not leased again before this time (ms since the epoch), after a failure.
    pub not_before_ms: Option<u64>,
    /// The last delivery failure, if any.
    pub last_error: Option<String>,
}

/// Readiness of a topic, for consumers deciding whether to lease or wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Events leaseable now.
    pub ready_events: u64,
    /// Events waiting for the committer (leaseable after the next commit).
    pub uncommitted_events: u64,
    /// When the next delayed chunk becomes due, if any.
    pub next_due_in: Option<Duration>,
    /// Events held by consumers.
    pub leased_events: u64,
    /// Events waiting out a retry backoff.
    pub retrying_events: u64,
}

impl Readiness {
    /// Every live event of the topic: ready, uncommitted, leased or retrying.
    pub fn depth(&self) -> u64 {
        self.ready_events + self.uncommitted_events + self.leased_events + self.retrying_events
    }
}

/// A point-in-time view of one topic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicStats {
    /// Leaseable now (including retries whose backoff has passed).
    pub ready: Usage,
    /// Waiting out a retry backoff.
    pub retrying: Usage,
    /// Held by a consumer.
    pub leased: Usage,
    /// Accepted but not yet committed to sled.
    pub uncommitted: Usage,
    /// In the dead-letter store.
    pub dead: Usage,
    /// Enqueue time of the oldest live event (ms since the epoch).
    pub oldest_enqueued_ms: Option<u64>,
    /// Age of the oldest live event in ms.
    pub oldest_age_ms: Option<u64>,
    /// Events dropped, by reason.
    pub drops: BTreeMap<String, u64>,
}

/// The ceiling as configured and how much of it is used.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CeilingStats {
    /// The event limit.
    pub max_events: u64,
    /// The logical byte limit.
    pub max_bytes: u64,
    /// The overflow policy.
    pub policy: String,
    /// max(events/max_events, bytes/max_bytes) in percent.
    pub used_percent: f64,
}

/// A point-in-time view of the whole queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The store's instance id (the first part of every event id).
    pub instance_id: String,
    /// On-disk format version.
    pub format: u8,
    /// Per topic.
    pub topics: BTreeMap<String, TopicStats>,
    /// Live events (everything not yet delivered, dead letters excluded).
    pub total: Usage,
    /// The ceiling and its use.
    pub ceiling: CeilingStats,
    /// Events dropped, by reason, all topics.
    pub drops: BTreeMap<String, u64>,
    /// Damaged records moved to quarantine.
    pub quarantined_records: u64,
    /// Bytes of quarantined records.
    pub quarantined_bytes: u64,
    /// What sled's files take on disk (about 2x logical; see `compact`).
    pub size_on_disk: u64,
    /// Set when the queue refuses new events after a storage error.
    pub failed_closed: Option<String>,
    /// What opening had to repair (damaged store moved aside, stale snapshots, ...).
    pub recovered: Vec<String>,
}

/// The durable queue. Cheap to clone; every clone is the same queue.
///
/// Opening takes an exclusive lock on the directory: one process per store.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.inner.shared.dir)
            .field("instance", &self.inner.shared.instance)
            .finish()
    }
}

struct Inner {
    shared: Arc<Shared>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.stop_committer(&self.committer);
    }
}

/// State shared by the queue handle, the committer thread and unsettled leases.
pub(crate) struct Shared {
    pub(crate) cfg: QueueConfig,
    dir: PathBuf,
    pub(crate) store: Store,
    instance: Arc<str>,
    /// Open and sealed chunks, the seq counter; see `commit`.
    writer: Mutex<Writer>,
    /// Wakes the committer.
    pub(crate) commit_cv: Condvar,
    /// Wakes producers waiting for space.
    pub(crate) space: Space,
    /// Committed chunks and leases; see `lease`. Lock order: writer, then index.
    index: Mutex<Index>,
    /// Per-topic generation counters consumers wait on.
    generations: Mutex<HashMap<Arc<str>, Arc<watch::Sender<u64>>>>,
    /// Serializes starting body generations. Lock order: rotation, then index.
    rotation: Mutex<()>,
    /// Drained generations waiting to be deleted, and when that last happened.
    /// Lock order: doomed, then index.
    doomed: Mutex<Doomed>,
    /// A reaper thread is deleting generations.
    reaping: AtomicBool,
    /// The last reaper thread; closing waits for it (it holds the store).
    reaper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Acks settled but not yet written to sled: the committer writes them
    /// in one batch per topic every round (see `settle`). Lock order: last.
    pending_acks: Mutex<PendingAcks>,
    /// Held while pending acks are written, so a flush that follows taking
    /// this lock covers every ack taken before (see `delete_generations`).
    ack_apply: Mutex<()>,
    /// The committer has stopped: acks are written at once.
    committer_stopped: AtomicBool,
    /// The durable mark; see `commit::DurableMark`.
    pub(crate) durable: watch::Sender<DurableMark>,
    pub(crate) totals: Totals,
    pub(crate) drops: Drops,
    failed: AtomicBool,
    failed_reason: Mutex<Option<String>>,
    next_lease: AtomicU64,
    quarantined: AtomicU64,
    recovered: Vec<String>,
    /// Held for the queue's lifetime: the directory lock.
    _lock: std::fs::File,
}

/// Drained generations (topic, number) waiting to be deleted, and when the
/// last deletion round ran.
type Doomed = (Instant, Vec<(Arc<str>, u32)>);

/// Per topic: its tree and the chunks (key, body generation, never failed) whose
/// index records an ack is to delete.
type PendingAcks = HashMap<Arc<str>, (TopicTree, Vec<(u64, u32, bool)>)>;

/// How often drained body generations are deleted (each deletion round costs a
/// whole sled flush first).
const REAP_INTERVAL: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks a topic name: 1–64 characters of `[A-Za-z0-9_.-]`.
///
/// # Errors
///
/// `QueueError::InvalidTopic` naming what is wrong.
pub fn validate_topic(topic: &str) -> Result<(), QueueError> {
    let bad = |reason| {
        Err(QueueError::InvalidTopic {
            topic: topic.chars().take(80).collect(),
            reason,
        })
    };
    if topic.is_empty() {
        return bad("must not be empty");
    }
    if topic.len() > MAX_TOPIC_LEN {
        return bad("longer than 64 characters");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

/// A leased chunk to read: its key and the body generation tree holding it
/// (`None` if the generation is unknown: the record is missing).
struct ChunkRead {
    key: u64,
    body: Option<BodyTree>,
}

enum TryEnqueue {
    Done(Enqueued),
    /// No room yet: wait and try again with the payload handed back.
    Wait(Bytes),
}

impl Shared {
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    pub(crate) fn lock_index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Enters the failing-closed state: new events are refused until reopen.
    pub(crate) fn fail_closed(&self, reason: &str) {
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(
                reason,
                "Storage failed; refusing new events until the store is reopened."
            );
            metrics::gauge!("evspool_failed_closed").set(1.0);
            *lock(&self.failed_reason) = Some(reason.to_string());
        }
        let r: Arc<str> = Arc::from(reason);
        self.durable.send_modify(|m| m.failed = Some(r));
    }

    fn generation(&self, topic: &Arc<str>) -> Arc<watch::Sender<u64>> {
        lock(&self.generations)
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(watch::channel(0).0))
            .clone()
    }

    /// The topic's index entry, created (empty) if the topic has none yet.
    fn topic_index<'a>(
        &self,
        index: &'a mut Index,
        topic: &Arc<str>,
        tree: &TopicTree,
    ) -> &'a mut TopicIndex {
        index.topics.entry(topic.clone()).or_insert_with(|| {
            let next = self
                .store
                .body_generations(topic)
                .last()
                .map_or(1, |g| g + 1);
            TopicIndex::new(tree.clone(), self.generation(topic), next)
        })
    }

    /// Pins the topic's current body generation for `chunks` records of `bytes`
    /// about to be written, starting a new generation first when one is due
    /// (L4 in `lease`). The caller unpins once the records are indexed (or failed).
    fn pin_body(
        &self,
        topic: &Arc<str>,
        tree: &TopicTree,
        chunks: u64,
        bytes: u64,
    ) -> Result<(u32, BodyTree), StorageError> {
        {
            let mut index = self.lock_index();
            let t = self.topic_index(&mut index, topic, tree);
            if !t.needs_new_generation()
                && let Some(pinned) = t.pin_current(chunks, bytes)
            {
                return Ok(pinned);
            }
        }
        let _rotating = lock(&self.rotation);
        let next = {
            let mut index = self.lock_index();
            let t = self.topic_index(&mut index, topic, tree);
            if !t.needs_new_generation()
                && let Some(pinned) = t.pin_current(chunks, bytes)
            {
                return Ok(pinned);
            }
            t.next_generation()
        };
        let body = self.store.body(topic, next)?;
        let mut index = self.lock_index();
        let t = self.topic_index(&mut index, topic, tree);
        t.start_generation(next, body);
        Ok(t.pin_current(chunks, bytes)
            .expect("the generation just started is current"))
    }

    /// Appends chunk records (`(first seq, record)`) to the topic's current body
    /// generation, pinned for them: returns the generation and each record's
    /// (offset, length). Bodies are written before the index records naming
    /// them (storage: "Body generations"). The pin is released here if the
    /// write fails; otherwise the caller releases it once the records are
    /// indexed (or their index write failed).
    pub(crate) fn append_bodies(
        &self,
        topic: &Arc<str>,
        tree: &TopicTree,
        records: &[(u64, &[u8])],
    ) -> Result<(u32, Vec<(u64, u32)>), StorageError> {
        let n = records.len() as u64;
        let bytes = records.iter().map(|(_, r)| r.len() as u64).sum();
        let (body_gen, body) = self.pin_body(topic, tree, n, bytes)?;
        match body.put_chunks(records.iter().copied()) {
            Ok(at) => Ok((body_gen, at)),
            Err(e) => {
                self.unpin_body(topic, body_gen, n);
                Err(e)
            }
        }
    }

    /// Releases a pin taken by [`Shared::append_bodies`] or a reader.
    pub(crate) fn unpin_body(&self, topic: &str, body_gen: u32, chunks: u64) {
        if let Some(t) = self.lock_index().topics.get_mut(topic) {
            t.unpin(body_gen, chunks);
        }
    }

    /// Deletes the body generations no chunk needs any more, at most once per
    /// `REAP_INTERVAL`, on a short-lived thread (the sled flush it needs first
    /// can wait behind the disk's writeback for half a second); with `now`
    /// (close), at once and inline. Returns how many it deleted inline.
    pub(crate) fn reap_generations(self: &Arc<Self>, now: bool) -> Result<usize, StorageError> {
        let batch = {
            let mut doomed = lock(&self.doomed);
            {
                let mut index = self.lock_index();
                for (name, t) in index.topics.iter_mut() {
                    doomed.1.extend(
                        t.take_unused_generations()
                            .into_iter()
                            .map(|g| (name.clone(), g)),
                    );
                }
            }
            if doomed.1.is_empty() || (!now && doomed.0.elapsed() < REAP_INTERVAL) {
                return Ok(0);
            }
            if !now && self.reaping.swap(true, Ordering::AcqRel) {
                return Ok(0);
            }
            doomed.0 = Instant::now();
            std::mem::take(&mut doomed.1)
        };
        if now {
            return self.delete_generations(batch);
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("evspool-reaper".into())
            .spawn(move || {
                if let Err(e) = shared.delete_generations(batch) {
                    tracing::warn!(error = %e, "Deleting drained body generations failed; the next open deletes them.");
                }
                shared.reaping.store(false, Ordering::Release);
            });
        match spawned {
            Ok(handle) => *lock(&self.reaper) = Some(handle),
            Err(_) => self.reaping.store(false, Ordering::Release),
        }
        Ok(0)
    }

    /// Writes the acks `settle` deferred, one sled batch per topic. Returns how
    /// many chunks' records it deleted.
    pub(crate) fn apply_pending_acks(&self) -> Result<usize, StorageError> {
        let _applying = lock(&self.ack_apply);
        let pending = std::mem::take(&mut *lock(&self.pending_acks));
        let mut n = 0;
        for (_, (tree, keys)) in pending {
            let mut batch = WriteBatch::default();
            for (key, body_gen, fresh) in &keys {
                if *fresh {
                    batch.remove_fresh_chunk(*key, *body_gen);
                } else {
                    batch.remove_chunk(*key, *body_gen);
                }
            }
            tree.apply(batch)?;
            n += keys.len();
        }
        Ok(n)
    }

    /// Flushes sled, then deletes the generation files (see `reap_generations`).
    fn delete_generations(&self, batch: Vec<(Arc<str>, u32)>) -> Result<usize, StorageError> {
        // Acks deferred by `settle` may be what emptied these generations:
        // written first, so the flush below covers them.
        self.apply_pending_acks()?;
        // The index records that named these generations were deleted in sled
        // batches that may not be flushed yet; a crash after the files are gone
        // but before that flush would bring back records pointing nowhere (and
        // lose a partial rewrite's new chunk, written elsewhere). Flush first.
        // (On error they stay on disk: the next open deletes them.)
        self.store.flush()?;
        if self.cfg.fsync {
            self.store.sync_data_file()?;
        }
        let n = batch.len();
        for (topic, g) in batch {
            self.store.drop_body(&topic, g)?;
        }
        Ok(n)
    }

    pub(crate) fn topic_tree(&self, topic: &Arc<str>) -> Result<TopicTree, StorageError> {
        if let Some(t) = self.lock_index().topics.get(topic) {
            return Ok(t.tree.clone());
        }
        self.store.topic(topic)
    }

    /// Makes freshly committed chunks leaseable.
    ///
    /// `written` is what the committer took from `sealed` for these chunks; it
    /// leaves `Writer::committing` in the same critical section (writer, then
    /// index lock) that indexes the chunks, so no snapshot misses them.
    /// `body_gen` is the generation the committer pinned for them; unpinned here,
    /// once they are indexed.
    pub(crate) fn index_committed(
        &self,
        topic: &Arc<str>,
        tree: TopicTree,
        chunks: Vec<(u64, ChunkIndex)>,
        written: Usage,
        body_gen: u32,
    ) {
        let mut w = self.lock_writer();
        if let Some(u) = w.committing.get_mut(topic) {
            u.sub(written.events, written.bytes);
        }
        let mut index = self.lock_index();
        let t = self.topic_index(&mut index, topic, &tree);
        let now = now_ms();
        let n = chunks.len() as u64;
        for (key, idx) in chunks {
            t.insert(key, ChunkInfo::fresh(idx), now);
        }
        t.unpin(body_gen, n);
        t.wake();
    }

    fn stop_committer(&self, handle: &Mutex<Option<std::thread::JoinHandle<()>>>) {
        {
            let mut w = self.lock_writer();
            w.shutdown = true;
        }
        self.commit_cv.notify_all();
        if let Some(h) = lock(handle).take() {
            let _ = h.join();
        }
        // A reaper thread holds the store (and its lock) until it is done.
        let reaper = lock(&self.reaper).take();
        if let Some(h) = reaper {
            let _ = h.join();
        }
        self.committer_stopped.store(true, Ordering::Release);
        // Acks settled while the committer stopped.
        if self.apply_pending_acks().is_ok() {
            let _ = self.store.flush();
        }
    }

    fn try_enqueue(
        &self,
        topic: &str,
        payload: Bytes,
        durable: bool,
    ) -> Result<TryEnqueue, QueueError> {
        let size = payload.len() as u64;
        let max = self.cfg.max_event_bytes.as_u64();
        if size > max {
            return Err(QueueError::TooLarge { size, max });
        }
        if self.is_failed() {
            return Err(QueueError::FailedClosed {
                reason: lock(&self.failed_reason).clone().unwrap_or_default(),
            });
        }
        let ceiling = &self.cfg.ceiling;
        let mut w = self.lock_writer();
        if w.shutdown {
            return Err(QueueError::Closed);
        }
        if w.pending_bytes >= self.cfg.max_pending_bytes.as_u64() {
            // The committer is behind: wait on local disk, never drop for this.
            self.commit_cv.notify_all();
            return Ok(TryEnqueue::Wait(payload));
        }
        if !self
            .totals
            .fits(size, ceiling.max_events, ceiling.max_bytes.as_u64())
        {
            let topic_arc = self.intern(&w, topic);
            match ceiling.policy {
                OverflowPolicy::DropNewest => {
                    self.drops.count(&topic_arc, DropReason::CeilingNewest, 1);
                    return Ok(TryEnqueue::Done(Enqueued::Dropped(
                        DropReason::CeilingNewest,
                    )));
                }
                OverflowPolicy::Reject => return Err(self.full_error()),
                OverflowPolicy::Block => return Ok(TryEnqueue::Wait(payload)),
                OverflowPolicy::DropOldest => {
                    if !self.evict_oldest(&mut w, size) {
                        self.drops.count(&topic_arc, DropReason::CeilingNewest, 1);
                        return Ok(TryEnqueue::Done(Enqueued::Dropped(
                            DropReason::CeilingNewest,
                        )));
                    }
                }
            }
        }
        let seq = w.next_seq;
        w.next_seq += 1;
        let now = now_ms();
        let max_events = self.cfg.chunk_max_events;
        let max_bytes = self.cfg.chunk_max_bytes.as_u64();
        if !w.open.contains_key(topic) {
            w.open
                .insert(Arc::from(topic), OpenChunk::with_capacity(max_events));
        }
        let writer = &mut *w;
        let chunk = writer.open.get_mut(topic).expect("inserted above");
        // A chunk is sealed before an event that would overflow its bytes, and
        // after the event that fills it; both are rare next to plain appends.
        let seal =
            |chunk: &mut OpenChunk, sealed: &mut Vec<(Arc<str>, OpenChunk)>, pending: &mut u64| {
                let full = std::mem::replace(chunk, OpenChunk::with_capacity(max_events));
                *pending += full.bytes;
                sealed.push((Arc::from(topic), full));
            };
        if !chunk.events.is_empty() && chunk.bytes + size > max_bytes {
            seal(chunk, &mut writer.sealed, &mut writer.pending_bytes);
        }
        chunk.events.push(PendingEvent {
            seq,
            enqueued_at_ms: now,
            payload,
        });
        chunk.bytes += size;
        self.totals.add(1, size);
        if chunk.events.len() >= max_events || chunk.bytes >= max_bytes {
            seal(chunk, &mut writer.sealed, &mut writer.pending_bytes);
        }
        // Only the first durable producer of a round wakes the committer; the
        // others ride on the same round (one futex call per round, not per event).
        if durable && !std::mem::replace(&mut w.durable_requested, true) {
            drop(w);
            self.commit_cv.notify_all();
        }
        Ok(TryEnqueue::Done(Enqueued::Accepted(EventId::new(
            self.instance.clone(),
            seq,
        ))))
    }

    fn intern(&self, w: &Writer, topic: &str) -> Arc<str> {
        if let Some((k, _)) = w.open.get_key_value(topic) {
            return k.clone();
        }
        Arc::from(topic)
    }

    fn full_error(&self) -> QueueError {
        let (events, bytes) = self.totals.get();
        QueueError::Full {
            events,
            bytes,
            max_events: self.cfg.ceiling.max_events,
            max_bytes: self.cfg.ceiling.max_bytes.as_u64(),
        }
    }

    /// Evicts the oldest unleased events until `size` more bytes fit (or nothing
    /// is left to evict). Returns whether the new event fits now.
    fn evict_oldest(&self, w: &mut Writer, size: u64) -> bool {
        let ceiling = &self.cfg.ceiling;
        let max_bytes = ceiling.max_bytes.as_u64();
        for _ in 0..1024 {
            if self.totals.fits(size, ceiling.max_events, max_bytes) {
                return true;
            }
            // Oldest committed, unleased chunk across all topics (seqs are global).
            let victim = {
                let index = self.lock_index();
                index
                    .topics
                    .iter()
                    .filter_map(|(name, t)| {
                        t.chunks
                            .iter()
                            .find(|(_, c)| !matches!(c.state, ChunkState::Leased(_)))
                            .map(|(k, c)| (*k, c.index.body_gen, name.clone(), t.tree.clone()))
                    })
                    .min_by_key(|(k, _, _, _)| *k)
            };
            if let Some((key, body_gen, name, tree)) = victim {
                let mut batch = WriteBatch::default();
                batch.remove_chunk(key, body_gen);
                if tree.apply(batch).is_err() {
                    return false;
                }
                let mut index = self.lock_index();
                if let Some(t) = index.topics.get_mut(&name)
                    && let Some(info) = t.remove(key)
                {
                    let (e, b) = (info.index.events as u64, info.index.bytes);
                    self.totals.sub(e, b);
                    self.drops.count(&name, DropReason::CeilingOldest, e);
                }
                continue;
            }
            // Nothing committed to evict: drop the oldest uncommitted event, the
            // lowest seq at the head of a sealed chunk (full, waiting for the
            // committer) or of an open one, and count it under its own topic.
            enum Head {
                Sealed(usize),
                Open(Arc<str>),
            }
            let sealed = w
                .sealed
                .iter()
                .enumerate()
                .filter_map(|(i, (_, c))| c.events.first().map(|e| (e.seq, Head::Sealed(i))));
            let open = w
                .open
                .iter()
                .filter_map(|(t, c)| c.events.first().map(|e| (e.seq, Head::Open(t.clone()))));
            let (from, chunk, was_sealed) = match sealed.chain(open).min_by_key(|(seq, _)| *seq) {
                Some((_, Head::Sealed(i))) => {
                    let (t, c) = &mut w.sealed[i];
                    (t.clone(), c, true)
                }
                Some((_, Head::Open(t))) => {
                    let c = w.open.get_mut(&t).expect("found above");
                    (t, c, false)
                }
                None => return false,
            };
            let n = chunk.events.remove(0).payload.len() as u64;
            chunk.bytes -= n;
            if was_sealed {
                // Sealed bytes are pending for the committer; keep the sum exact.
                w.pending_bytes = w.pending_bytes.saturating_sub(n);
            }
            self.totals.sub(1, n);
            self.drops.count(&from, DropReason::CeilingOldest, 1);
        }
        self.totals.fits(size, ceiling.max_events, max_bytes)
    }

    fn space_freed(&self) {
        self.space.signal();
    }
}

impl Queue {
    /// Opens the store in `dir`, creating it (mode 0700) if needed.
    ///
    /// Before opening, stale `snap.*.generating` files are moved aside. A store
    /// so damaged that sled cannot open it (or panics) is moved to
    /// `dir/damaged-<time>` and a fresh one created; this is logged at ERROR and
    /// listed in [`Stats::recovered`]. Every committed chunk is leaseable after
    /// open (leases do not survive a restart).
    ///
    /// # Errors
    ///
    /// [`OpenError`](crate::OpenError): invalid config, directory locked by another
    /// process, a newer on-disk format, not an evspool directory, or I/O errors.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let queue = evspool::Queue::open(dir.path(), evspool::QueueConfig::default()).unwrap();
    /// let outcome = queue.enqueue("track", br#"{"event":"signup"}"#.to_vec()).unwrap();
    /// assert!(outcome.id().is_some());
    /// ```
    pub fn open(dir: impl AsRef<Path>, cfg: QueueConfig) -> Result<Queue, crate::OpenError> {
        open::open(dir.as_ref(), cfg)
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Queue {
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("evspool-committer".into())
            .spawn(move || commit::run(s))
            .expect("spawning the committer thread");
        Queue {
            inner: Arc::new(Inner {
                shared,
                committer: Mutex::new(Some(handle)),
            }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.shared().dir
    }

    /// The configuration the queue runs with.
    pub fn config(&self) -> &QueueConfig {
        &self.shared().cfg
    }

    /// The store's instance id.
    pub fn instance_id(&self) -> &str {
        &self.shared().instance
    }

    /// The stable id of the event with `seq` in this store.
    pub fn event_id(&self, seq: u64) -> EventId {
        EventId::new(self.shared().instance.clone(), seq)
    }

    /// Whether `events` more events of `bytes` in total fit under the ceiling now.
    /// Lets a caller refuse a whole request up front instead of half of it.
    pub fn would_fit(&self, events: u64, bytes: u64) -> bool {
        let (e, b) = self.shared().totals.get();
        let c = &self.shared().cfg.ceiling;
        e + events <= c.max_events && b + bytes <= c.max_bytes.as_u64()
    }

    /// Appends an event, buffered: returns at once, without touching the disk
    /// or the network. The event becomes durable at the next commit and sled
    /// flush (`commit_interval` + `flush_interval`); a crash before then can lose it.
    ///
    /// Under the `block` policy at the ceiling this blocks the calling thread up
    /// to `block_timeout`; use [`Queue::enqueue_durable`] from async code then.
    ///
    /// # Errors
    ///
    /// [`QueueError::Full`] under `reject` (or `block` after its timeout),
    /// [`QueueError::TooLarge`], [`QueueError::InvalidTopic`],
    /// [`QueueError::FailedClosed`] after a storage error, [`QueueError::Closed`].
    pub fn enqueue(&self, topic: &str, payload: impl Into<Bytes>) -> Result<Enqueued, QueueError> {
        validate_topic(topic)?;
        let mut payload: Bytes = payload.into();
        let shared = self.shared();
        let deadline = Instant::now() + shared.cfg.ceiling.block_timeout;
        loop {
            payload = match shared.try_enqueue(topic, payload, false)? {
                TryEnqueue::Done(outcome) => return Ok(outcome),
                TryEnqueue::Wait(payload) => payload,
            };
            // Take the generation, then look once more: a signal in between is not missed.
            let seen = shared.space.generation();
            payload = match shared.try_enqueue(topic, payload, false)? {
                TryEnqueue::Done(outcome) => return Ok(outcome),
                TryEnqueue::Wait(payload) => payload,
            };
            if !self.still_waiting(deadline)? {
                return Err(shared.full_error());
            }
            shared.space.wait_sync(
                seen,
                deadline.min(Instant::now() + shared.cfg.commit_interval),
            );
        }
    }

    /// Whether a waiting producer may keep waiting: pending backpressure waits
    /// without limit (the committer always catches up), the ceiling only until `deadline`.
    fn still_waiting(&self, deadline: Instant) -> Result<bool, QueueError> {
        let shared = self.shared();
        let w = shared.lock_writer();
        if w.shutdown {
            return Err(QueueError::Closed);
        }
        if w.pending_bytes >= shared.cfg.max_pending_bytes.as_u64() {
            return Ok(true);
        }
        Ok(Instant::now() < deadline)
    }

    /// Appends an event and returns once its chunk is written to the topic's
    /// body generation file: it survives `kill -9` (and power loss with
    /// `fsync = true`). Concurrent callers share one commit round (group commit).
    ///
    /// # Errors
    ///
    /// As [`Queue::enqueue`], plus [`QueueError::FailedClosed`] if the commit
    /// covering the event failed.
    ///
    /// # Cancel safety
    ///
    /// Cancelling the future after it has started may leave the event accepted
    /// (it will be committed and delivered) without the caller learning its id.
    pub async fn enqueue_durable(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Enqueued, QueueError> {
        validate_topic(topic)?;
        let payload: Bytes = payload.into();
        let shared = self.shared();
        let deadline = Instant::now() + shared.cfg.ceiling.block_timeout;
        let mut rx = shared.durable.subscribe();
        let mut payload = payload;
        let outcome = loop {
            payload = match shared.try_enqueue(topic, payload, true)? {
                TryEnqueue::Done(outcome) => break outcome,
                TryEnqueue::Wait(payload) => payload,
            };
            let seen = shared.space.generation();
            payload = match shared.try_enqueue(topic, payload, true)? {
                TryEnqueue::Done(outcome) => break outcome,
                TryEnqueue::Wait(payload) => payload,
            };
            if !self.still_waiting(deadline)? {
                return Err(shared.full_error());
            }
            shared
                .space
                .wait_async(
                    seen,
                    deadline.min(Instant::now() + shared.cfg.commit_interval),
                )
                .await;
        };
        let Enqueued::Accepted(id) = &outcome else {
            return Ok(outcome);
        };
        let seq = id.seq();
        let mark = rx
            .wait_for(|m| m.seq >= seq || m.failed.is_some())
            .await
            .map_err(|_| QueueError::Closed)?
            .clone();
        if mark.seq >= seq {
            Ok(outcome)
        } else {
            Err(QueueError::FailedClosed {
                reason: mark.failed.as_deref().unwrap_or_default().to_string(),
            })
        }
    }

    /// Commits every buffered event and flushes, returning when they are durable.
    ///
    /// # Errors
    ///
    /// [`QueueError::FailedClosed`] if the commit failed, [`QueueError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the commit happens whether or not the caller waits for it.
    pub async fn sync(&self) -> Result<(), QueueError> {
        let shared = self.shared();
        let mut rx = shared.durable.subscribe();
        let target = {
            let mut w = shared.lock_writer();
            if w.shutdown {
                return Err(QueueError::Closed);
            }
            w.durable_requested = true;
            w.next_seq.saturating_sub(1)
        };
        shared.commit_cv.notify_all();
        let mark = rx
            .wait_for(|m| m.seq >= target || m.failed.is_some())
            .await
            .map_err(|_| QueueError::Closed)?
            .clone();
        match mark.failed {
            Some(reason) if mark.seq < target => Err(QueueError::FailedClosed {
                reason: reason.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Commits and flushes everything, then stops the committer. Further
    /// enqueues fail with [`QueueError::Closed`]; reads, leases and settles keep
    /// working until the last clone is dropped. Blocks the calling thread.
    pub fn close(&self) {
        self.shared().stop_committer(&self.inner.committer);
    }

    /// Leases up to `max_events` ready events of `topic` (whole chunks, at least
    /// one; so a lease may exceed `max_events` only by a single oversized chunk).
    ///
    /// Returns `Ok(None)` when nothing is ready. Expired leases are reclaimed
    /// first; events older than `max_age` are dropped (counted) instead of
    /// being handed out; chunks that fail their CRC are quarantined (counted).
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled fails to read.
    pub fn lease(&self, topic: &str, max_events: usize) -> Result<Option<Lease>, QueueError> {
        let shared = self.shared();
        let max_events = max_events.max(1);
        // Chunks found damaged or expired are fixed up and we look again; bounded.
        for _ in 0..64 {
            let now = now_ms();
            let id = shared.next_lease.fetch_add(1, Ordering::Relaxed) + 1;
            let (topic_arc, tree, picked) = {
                let mut index = shared.lock_index();
                index.expire(Instant::now(), now);
                let Some((name, _)) = index.topics.get_key_value(topic) else {
                    return Ok(None);
                };
                let name = name.clone();
                let t = index.topics.get_mut(topic).expect("present");
                t.promote_due(now);
                let picked: Vec<(u64, ChunkInfo, Option<BodyTree>)> = t
                    .take(max_events, id)
                    .into_iter()
                    .map(|(k, info)| {
                        let body = t.body(info.index.body_gen);
                        (k, info, body)
                    })
                    .collect();
                if picked.is_empty() {
                    return Ok(None);
                }
                let tree = t.tree.clone();
                index.leases.insert(
                    id,
                    LeaseInfo {
                        topic: name.clone(),
                        keys: picked.iter().map(|(k, _, _)| *k).collect(),
                        deadline: Instant::now() + shared.cfg.lease_timeout,
                    },
                );
                (name, tree, picked)
            };
            let mut lease = Lease {
                id,
                topic: topic_arc.clone(),
                chunks: Vec::with_capacity(picked.len()),
                events: Vec::new(),
                shared: Arc::downgrade(shared),
                settled: false,
            };
            let mut fixups = false;
            for (key, info, body) in picked {
                let read = ChunkRead { key, body };
                match self.load_leased_chunk(&topic_arc, &tree, read, &info, now, &mut lease)? {
                    true => {}
                    false => fixups = true,
                }
            }
            if !lease.events.is_empty() {
                metrics::counter!("evspool_events_leased_total", "topic" => topic_arc.to_string())
                    .increment(lease.events.len() as u64);
                return Ok(Some(lease));
            }
            // Every picked chunk was damaged or expired; the lease is empty.
            lease.settled = true;
            shared.lock_index().leases.remove(&id);
            if !fixups {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Reads one leased chunk into `lease`. Returns false if the chunk had to be
    /// fixed up (damaged, missing, or wholly or partly past `max_age`).
    fn load_leased_chunk(
        &self,
        topic: &Arc<str>,
        tree: &TopicTree,
        read: ChunkRead,
        info: &ChunkInfo,
        now: u64,
        lease: &mut Lease,
    ) -> Result<bool, QueueError> {
        let shared = self.shared();
        let key = read.key;
        let body_gen = info.index.body_gen;
        let raw: Option<Bytes> = match &read.body {
            Some(body) => body.chunk(key, &info.index)?,
            None => None,
        };
        let Some(raw_bytes) = raw else {
            self.quarantine_chunk(topic, tree, key, body_gen, &[], "chunk record missing")?;
            return Ok(false);
        };
        let decoded = match record::decode_chunk(&raw_bytes) {
            Ok(events) => events,
            Err(err) => {
                self.quarantine_chunk(topic, tree, key, body_gen, &raw_bytes, &err.to_string())?;
                return Ok(false);
            }
        };
        let cutoff = shared
            .cfg
            .max_age
            .map(|age| now.saturating_sub(age.as_millis() as u64));
        let expired = cutoff
            .map(|c| decoded.iter().filter(|e| e.enqueued_at_ms < c).count())
            .unwrap_or(0);
        let make_event = |e: &StoredEvent<'_>| Event {
            id: EventId::new(shared.instance.clone(), e.seq),
            enqueued_at_ms: e.enqueued_at_ms,
            attempts: info.attempts,
            payload: raw_bytes.slice_ref(e.payload),
        };
        if expired == 0 {
            let start = lease.events.len();
            lease.events.extend(decoded.iter().map(make_event));
            lease.chunks.push(LeasedChunk {
                key,
                start,
                end: lease.events.len(),
                attempts: info.attempts,
                index: info.index,
            });
            return Ok(true);
        }
        // Drop what is past max_age; keep the rest, re-keyed at its first seq.
        let cutoff = cutoff.unwrap_or(0);
        let fresh: Vec<StoredEvent<'_>> = decoded
            .iter()
            .filter(|e| e.enqueued_at_ms >= cutoff)
            .cloned()
            .collect();
        let dropped_bytes: u64 = decoded
            .iter()
            .filter(|e| e.enqueued_at_ms < cutoff)
            .map(|e| e.payload.len() as u64)
            .sum();
        let mut batch = WriteBatch::default();
        batch.remove_chunk(key, body_gen);
        let rewritten = match fresh.first() {
            Some(first) => {
                let raw = record::encode_chunk(&fresh);
                let (g, at) = shared.append_bodies(topic, tree, &[(first.seq, raw.as_slice())])?;
                Some((g, at[0]))
            }
            None => None,
        };
        let new = fresh
            .first()
            .zip(rewritten)
            .map(|(first, (g, (offset, len)))| {
                let idx = ChunkIndex {
                    events: fresh.len() as u32,
                    bytes: fresh.iter().map(|e| e.payload.len() as u64).sum(),
                    last_seq: fresh.last().map(|e| e.seq).unwrap_or(first.seq),
                    first_enqueued_ms: first.enqueued_at_ms,
                    body_gen: g,
                    body_offset: offset,
                    body_len: len,
                };
                batch.put_index(first.seq, &idx);
                if info.attempts > 0 {
                    batch.put_retry(
                        first.seq,
                        &RetryState {
                            attempts: info.attempts,
                            not_before_ms: info.not_before_ms,
                            last_error: info.last_error.as_deref().unwrap_or_default().to_string(),
                        },
                    );
                }
                (first.seq, idx)
            });
        if let Err(e) = tree.apply(batch) {
            if let Some((g, _)) = rewritten {
                shared.unpin_body(topic, g, 1);
            }
            return Err(e.into());
        }
        shared.totals.sub(expired as u64, dropped_bytes);
        shared
            .drops
            .count(topic, DropReason::MaxAge, expired as u64);
        let mut index = shared.lock_index();
        let lease_id = lease.id;
        if let Some(t) = index.topics.get_mut(topic) {
            t.remove(key);
            if let Some((new_key, idx)) = new {
                // The rewritten chunk stays with this lease.
                let mut ci = info.clone();
                ci.index = idx;
                t.insert_leased(new_key, ci, lease_id);
                let start = lease.events.len();
                lease.events.extend(fresh.iter().map(make_event));
                lease.chunks.push(LeasedChunk {
                    key: new_key,
                    start,
                    end: lease.events.len(),
                    attempts: info.attempts,
                    index: idx,
                });
            }
            if let Some((g, _)) = rewritten {
                t.unpin(g, 1);
            }
        }
        if let Some(l) = index.leases.get_mut(&lease_id) {
            l.keys.retain(|k| *k != key);
            if let Some((new_key, _)) = new {
                l.keys.push(new_key);
            }
        }
        drop(index);
        shared.space_freed();
        Ok(false)
    }

    fn quarantine_chunk(
        &self,
        topic: &Arc<str>,
        tree: &TopicTree,
        key: u64,
        body_gen: u32,
        raw: &[u8],
        why: &str,
    ) -> Result<(), QueueError> {
        let shared = self.shared();
        shared.store.quarantine(topic, key, raw)?;
        let mut batch = WriteBatch::default();
        batch.remove_chunk(key, body_gen);
        tree.apply(batch)?;
        let mut index = shared.lock_index();
        if let Some(t) = index.topics.get_mut(topic)
            && let Some(info) = t.remove(key)
        {
            shared
                .totals
                .sub(info.index.events as u64, info.index.bytes);
            tracing::error!(
                topic = %topic,
                chunk = key,
                events = info.index.events,
                reason = why,
                "Damaged chunk moved to quarantine."
            );
        }
        for l in index.leases.values_mut() {
            l.keys.retain(|k| *k != key);
        }
        shared.quarantined.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("evspool_chunks_quarantined_total", "topic" => topic.to_string())
            .increment(1);
        Ok(())
    }

    /// Acknowledges every event of the lease: they leave the queue at once and
    /// their records are deleted by the committer's next round (within
    /// `commit_interval`; a crash before that delivers them again, same ids).
    ///
    /// # Errors
    ///
    /// [`QueueError::LeaseLost`] if the lease expired (its events will be
    /// delivered again); [`QueueError::Storage`] if sled fails (likewise).
    pub fn ack(&self, lease: Lease) -> Result<SettleReport, QueueError> {
        self.settle(lease, Settlement::delivered())
    }

    /// Returns every event of the lease for a later attempt, not before `after`,
    /// recording the attempt and `reason`.
    ///
    /// # Errors
    ///
    /// As [`Queue::ack`].
    pub fn nack(
        &self,
        lease: Lease,
        after: Duration,
        reason: impl Into<String>,
    ) -> Result<SettleReport, QueueError> {
        let mut s = Settlement::delivered().retry_after(after, reason);
        for e in &lease.events {
            s.retry.insert(e.seq());
        }
        self.settle(lease, s)
    }

    /// Returns the lease's events to the queue without recording an attempt
    /// (used at shutdown). Never deletes anything.
    pub fn release(&self, mut lease: Lease) {
        lease.settled = true;
        let shared = self.shared();
        shared.lock_index().release(lease.id, now_ms());
    }

    /// Settles a lease event by event: acks the delivered, dead-letters those
    /// marked dead (with their reason) and keeps those marked retry, all in one
    /// atomic write per topic.
    ///
    /// # Errors
    ///
    /// As [`Queue::ack`]. On error nothing was changed and the lease is released.
    pub fn settle(&self, mut lease: Lease, s: Settlement) -> Result<SettleReport, QueueError> {
        let shared = self.shared();
        lease.settled = true;
        let Some(held) = shared.lock_index().leases.remove(&lease.id) else {
            return Err(QueueError::LeaseLost { lease: lease.id });
        };
        let now = now_ms();
        let tree = {
            let index = shared.lock_index();
            match index.topics.get(&lease.topic) {
                Some(t) => t.tree.clone(),
                None => return Err(QueueError::LeaseLost { lease: lease.id }),
            }
        };
        let mut batch = WriteBatch::default();
        let mut report = SettleReport::default();
        let mut freed = (0u64, 0u64);
        let mut dead_usage = (0u64, 0u64);
        // (old key, new chunk if any remains)
        let mut changes: Vec<(u64, Option<(u64, ChunkInfo)>)> = Vec::new();
        // Chunks rewritten with the events that remain: (entry in `changes`, key, record).
        let mut rewrites: Vec<(usize, u64, Vec<u8>)> = Vec::new();
        // Chunks wholly delivered: (key, body generation, never failed).
        let mut acked: Vec<(u64, u32, bool)> = Vec::new();
        for c in lease.chunks.iter().filter(|c| held.keys.contains(&c.key)) {
            let events = &lease.events[c.start..c.end];
            let mut remaining: Vec<&Event> = Vec::new();
            for e in events {
                let n = e.payload.len() as u64;
                if let Some(reason) = s.dead.get(&e.seq()) {
                    batch.put_dead(&DeadLetter {
                        seq: e.seq(),
                        enqueued_at_ms: e.enqueued_at_ms,
                        dead_at_ms: now,
                        attempts: c.attempts + 1,
                        reason: reason.clone(),
                        payload: e.payload.to_vec(),
                    });
                    report.dead += 1;
                    freed.0 += 1;
                    freed.1 += n;
                    dead_usage.0 += 1;
                    dead_usage.1 += n;
                } else if s.retry.contains(&e.seq()) {
                    remaining.push(e);
                } else {
                    report.delivered += 1;
                    freed.0 += 1;
                    freed.1 += n;
                }
            }
            report.retried += remaining.len() as u64;
            let body_gen = c.index.body_gen;
            if remaining.is_empty() {
                if c.attempts == 0 {
                    batch.remove_fresh_chunk(c.key, body_gen);
                } else {
                    batch.remove_chunk(c.key, body_gen);
                }
                acked.push((c.key, body_gen, c.attempts == 0));
                changes.push((c.key, None));
                continue;
            }
            let retry = RetryState {
                attempts: c.attempts + 1,
                not_before_ms: now + s.retry_after.as_millis() as u64,
                last_error: s.retry_reason.clone(),
            };
            let new_key = remaining[0].seq();
            let index = if remaining.len() == events.len() {
                c.index
            } else {
                batch.remove_chunk(c.key, body_gen);
                let stored: Vec<StoredEvent<'_>> = remaining
                    .iter()
                    .map(|e| StoredEvent {
                        seq: e.seq(),
                        enqueued_at_ms: e.enqueued_at_ms,
                        payload: &e.payload,
                    })
                    .collect();
                let idx = ChunkIndex {
                    events: stored.len() as u32,
                    bytes: stored.iter().map(|e| e.payload.len() as u64).sum(),
                    last_seq: stored.last().map(|e| e.seq).unwrap_or(new_key),
                    first_enqueued_ms: remaining[0].enqueued_at_ms,
                    // Set below, once the generation is pinned and written.
                    body_gen: 0,
                    body_offset: 0,
                    body_len: 0,
                };
                rewrites.push((changes.len(), new_key, record::encode_chunk(&stored)));
                idx
            };
            batch.put_retry(new_key, &retry);
            changes.push((
                c.key,
                Some((
                    new_key,
                    ChunkInfo {
                        index,
                        attempts: retry.attempts,
                        not_before_ms: retry.not_before_ms,
                        last_error: Some(Arc::from(retry.last_error.as_str())),
                        state: ChunkState::Ready,
                    },
                )),
            ));
        }
        // Rewritten bodies go to the current generation before the index
        // records naming them (storage: "Body generations").
        let mut pinned = None;
        if !rewrites.is_empty() {
            let records: Vec<(u64, &[u8])> = rewrites
                .iter()
                .map(|(_, k, r)| (*k, r.as_slice()))
                .collect();
            match shared.append_bodies(&lease.topic, &tree, &records) {
                Ok((g, locations)) => {
                    pinned = Some((g, records.len() as u64));
                    for ((at, key, _), (offset, len)) in rewrites.iter().zip(locations) {
                        if let Some((_, Some((_, info)))) = changes.get_mut(*at) {
                            info.index.body_gen = g;
                            info.index.body_offset = offset;
                            info.index.body_len = len;
                            batch.put_index(*key, &info.index);
                        }
                    }
                }
                Err(e) => {
                    let mut index = shared.lock_index();
                    index.leases.insert(lease.id, held);
                    index.release(lease.id, now);
                    return Err(e.into());
                }
            }
        }
        // A plain ack (every event delivered) is the hot path: its deletions
        // are handed to the committer, which writes a round's acks in one sled
        // batch per topic. Writing each ack at once cost a sled log write and
        // its I/O thread wake-ups per batch: forwarding ran 4x slower. A crash
        // before that write delivers those events again, with the same ids —
        // as a crash before sled's flush always could.
        let plain_ack = report.dead == 0
            && report.retried == 0
            && acked.len() == changes.len()
            && !shared.committer_stopped.load(Ordering::Acquire);
        let applied = if plain_ack {
            let mut pending = lock(&shared.pending_acks);
            pending
                .entry(lease.topic.clone())
                .or_insert_with(|| (tree.clone(), Vec::new()))
                .1
                .extend(acked);
            Ok(())
        } else {
            tree.apply(batch)
        };
        if let Err(e) = applied {
            if let Some((g, n)) = pinned {
                shared.unpin_body(&lease.topic, g, n);
            }
            let mut index = shared.lock_index();
            index.leases.insert(lease.id, held);
            index.release(lease.id, now);
            return Err(e.into());
        }
        {
            let mut index = shared.lock_index();
            if let Some(t) = index.topics.get_mut(&lease.topic) {
                let mut requeued = false;
                for (old, new) in changes {
                    t.remove(old);
                    if let Some((k, info)) = new {
                        t.insert(k, info, now);
                        requeued = true;
                    }
                }
                if let Some((g, n)) = pinned {
                    t.unpin(g, n);
                }
                t.dead_usage.add(dead_usage.0, dead_usage.1);
                // Only retried events can become leasable again; a plain ack
                // wakes nobody (consumers would find nothing new).
                if requeued {
                    t.wake();
                }
            }
        }
        shared.totals.sub(freed.0, freed.1);
        if freed.0 > 0 {
            shared.space_freed();
        }
        let topic = lease.topic.to_string();
        metrics::counter!("evspool_events_acked_total", "topic" => topic.clone())
            .increment(report.delivered);
        if report.dead > 0 {
            metrics::counter!("evspool_events_dead_lettered_total", "topic" => topic.clone())
                .increment(report.dead);
        }
        if report.retried > 0 {
            metrics::counter!("evspool_events_retried_total", "topic" => topic)
                .increment(report.retried);
        }
        Ok(report)
    }

    /// How many events of `topic` are ready, uncommitted, or delayed.
    pub fn readiness(&self, topic: &str) -> Readiness {
        let shared = self.shared();
        // Both locks at once (writer, then index), as in `stats`.
        let w = shared.lock_writer();
        let uncommitted = {
            let open = w
                .open
                .get(topic)
                .map(|c| c.events.len() as u64)
                .unwrap_or(0);
            let sealed: u64 = w
                .sealed
                .iter()
                .filter(|(t, _)| &**t == topic)
                .map(|(_, c)| c.events.len() as u64)
                .sum();
            let committing = w.committing.get(topic).map_or(0, |u| u.events);
            open + sealed + committing
        };
        let mut index = shared.lock_index();
        drop(w);
        let now = now_ms();
        let Some(t) = index.topics.get_mut(topic) else {
            return Readiness {
                uncommitted_events: uncommitted,
                ..Readiness::default()
            };
        };
        t.promote_due(now);
        Readiness {
            ready_events: t.ready_usage.events,
            uncommitted_events: uncommitted,
            next_due_in: t
                .next_due_ms()
                .map(|ms| Duration::from_millis(ms.saturating_sub(now))),
            leased_events: t.leased_usage.events,
            retrying_events: t.delayed_usage.events,
        }
    }

    /// A receiver that changes whenever events of `topic` may have become ready
    /// (a commit, a nack, a release). Consumers wait on it instead of polling.
    pub fn subscribe(&self, topic: &str) -> watch::Receiver<u64> {
        let topic: Arc<str> = Arc::from(topic);
        self.shared().generation(&topic).subscribe()
    }

    /// Names of every topic the store knows, sorted.
    pub fn topics(&self) -> Vec<String> {
        let shared = self.shared();
        let mut names: Vec<String> = shared
            .lock_index()
            .topics
            .keys()
            .map(|k| k.to_string())
            .collect();
        for t in shared.lock_writer().open.keys() {
            if !names.iter().any(|n| n == &**t) {
                names.push(t.to_string());
            }
        }
        names.sort();
        names
    }

    /// Reads up to `limit` queued events of `topic` from the head, without leasing them.
    ///
    /// Starts at the chunk with key ≥ `from_seq`; pass the last seen seq + 1 to page.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled fails to read.
    pub fn peek(
        &self,
        topic: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<PeekedEvent>, QueueError> {
        let shared = self.shared();
        let tree = {
            let mut index = shared.lock_index();
            let Some(t) = index.topics.get_mut(topic) else {
                return Ok(Vec::new());
            };
            // The chunk containing from_seq may start before it.
            let start = t
                .chunks
                .range(..=from_seq)
                .next_back()
                .filter(|(_, c)| c.index.last_seq >= from_seq)
                .map(|(k, _)| *k)
                .unwrap_or(from_seq);
            let mut n = 0;
            let infos: Vec<(u64, ChunkInfo)> = t
                .chunks
                .range(start..)
                .take_while(|(_, c)| {
                    let go = n < limit;
                    n += c.index.events as usize;
                    go
                })
                .map(|(k, c)| (*k, c.clone()))
                .collect();
            // Pinned while read outside the lock: an ack meanwhile must not
            // drop the generation under us (L4).
            let bodies: Vec<Option<BodyTree>> = infos
                .iter()
                .map(|(_, c)| t.pin(c.index.body_gen, 1))
                .collect();
            (infos, bodies)
        };
        let (infos, bodies) = tree;
        let unpin = |infos: &[(u64, ChunkInfo)]| {
            for (_, c) in infos {
                shared.unpin_body(topic, c.index.body_gen, 1);
            }
        };
        let read: Result<Vec<Option<Bytes>>, StorageError> = infos
            .iter()
            .zip(&bodies)
            .map(|((key, c), body)| match body {
                Some(b) => b.chunk(*key, &c.index),
                None => Ok(None),
            })
            .collect();
        unpin(&infos);
        let mut out = Vec::new();
        for ((_, info), raw) in infos.into_iter().zip(read?) {
            let Some(raw) = raw else {
                continue;
            };
            let Ok(events) = record::decode_chunk(&raw) else {
                continue;
            };
            for e in events.iter().filter(|e| e.seq >= from_seq) {
                if out.len() >= limit {
                    break;
                }
                out.push(PeekedEvent {
                    event: Event {
                        id: self.event_id(e.seq),
                        enqueued_at_ms: e.enqueued_at_ms,
                        attempts: info.attempts,
                        payload: Bytes::copy_from_slice(e.payload),
                    },
                    leased: matches!(info.state, ChunkState::Leased(_)),
                    not_before_ms: (info.not_before_ms > 0).then_some(info.not_before_ms),
                    last_error: info.last_error.as_deref().map(str::to_owned),
                });
            }
        }
        Ok(out)
    }

    /// Reads up to `limit` dead letters of `topic` with seq ≥ `from_seq`.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled fails to read.
    pub fn dead_letters(
        &self,
        topic: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<DeadEvent>, QueueError> {
        let Some(tree) = self.existing_tree(topic) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (seq, raw) in tree.dead_range(from_seq, limit)? {
            match record::decode_dead(&raw) {
                Ok(d) => out.push(DeadEvent {
                    id: self.event_id(seq),
                    enqueued_at_ms: d.enqueued_at_ms,
                    dead_at_ms: d.dead_at_ms,
                    attempts: d.attempts,
                    reason: d.reason,
                    payload: Bytes::from(d.payload),
                }),
                Err(e) => tracing::warn!(topic, seq, error = %e, "Damaged dead letter skipped."),
            }
        }
        Ok(out)
    }

    fn existing_tree(&self, topic: &str) -> Option<TopicTree> {
        self.shared()
            .lock_index()
            .topics
            .get(topic)
            .map(|t| t.tree.clone())
    }

    /// Moves the dead letters of `topic` that `filter` accepts back to the queue,
    /// ready for delivery, keeping their ids. Returns how many were moved.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled fails; what was moved before stays moved.
    pub fn replay_dead(
        &self,
        topic: &str,
        mut filter: impl FnMut(&DeadEvent) -> bool,
    ) -> Result<u64, QueueError> {
        let shared = self.shared();
        let Some(tree) = self.existing_tree(topic) else {
            return Ok(0);
        };
        let topic_arc: Arc<str> = Arc::from(topic);
        let per_chunk = shared.cfg.chunk_max_events;
        let mut from = 0;
        let mut moved = 0u64;
        loop {
            let page = self.dead_letters(topic, from, per_chunk)?;
            let Some(last) = page.last() else { break };
            from = last.id.seq() + 1;
            let chosen: Vec<DeadEvent> = page.into_iter().filter(|d| filter(d)).collect();
            if chosen.is_empty() {
                continue;
            }
            let stored: Vec<StoredEvent<'_>> = chosen
                .iter()
                .map(|d| StoredEvent {
                    seq: d.id.seq(),
                    enqueued_at_ms: d.enqueued_at_ms,
                    payload: &d.payload,
                })
                .collect();
            let key = stored[0].seq;
            let raw = record::encode_chunk(&stored);
            // The body first, then (atomically) the index record and the removal
            // of the dead letters: a crash between leaves them dead letters.
            let (body_gen, at) =
                shared.append_bodies(&topic_arc, &tree, &[(key, raw.as_slice())])?;
            let idx = ChunkIndex {
                events: stored.len() as u32,
                bytes: stored.iter().map(|e| e.payload.len() as u64).sum(),
                last_seq: stored.last().map(|e| e.seq).unwrap_or(0),
                first_enqueued_ms: stored.iter().map(|e| e.enqueued_at_ms).min().unwrap_or(0),
                body_gen,
                body_offset: at[0].0,
                body_len: at[0].1,
            };
            let mut batch = WriteBatch::default();
            for d in &chosen {
                batch.remove_dead(d.id.seq());
            }
            batch.put_index(key, &idx);
            if let Err(e) = tree.apply(batch) {
                shared.unpin_body(&topic_arc, body_gen, 1);
                return Err(e.into());
            }
            shared.totals.add(idx.events as u64, idx.bytes);
            {
                let mut index = shared.lock_index();
                if let Some(t) = index.topics.get_mut(&topic_arc) {
                    t.dead_usage.sub(idx.events as u64, idx.bytes);
                    t.insert(key, ChunkInfo::fresh(idx), now_ms());
                    t.unpin(body_gen, 1);
                    t.wake();
                }
            }
            moved += idx.events as u64;
        }
        if moved > 0 {
            tracing::info!(topic, events = moved, "Dead letters replayed.");
        }
        Ok(moved)
    }

    /// Deletes the dead letters of `topic` that `filter` accepts. Returns how many.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled fails.
    pub fn purge_dead(
        &self,
        topic: &str,
        mut filter: impl FnMut(&DeadEvent) -> bool,
    ) -> Result<u64, QueueError> {
        let Some(tree) = self.existing_tree(topic) else {
            return Ok(0);
        };
        let mut from = 0;
        let mut removed = (0u64, 0u64);
        loop {
            let page = self.dead_letters(topic, from, 1000)?;
            let Some(last) = page.last() else { break };
            from = last.id.seq() + 1;
            let mut batch = WriteBatch::default();
            for d in page.iter().filter(|d| filter(d)) {
                batch.remove_dead(d.id.seq());
                removed.0 += 1;
                removed.1 += d.payload.len() as u64;
            }
            tree.apply(batch)?;
        }
        if let Some(t) = self.shared().lock_index().topics.get_mut(topic) {
            t.dead_usage.sub(removed.0, removed.1);
        }
        Ok(removed.0)
    }

    /// Deletes every committed, unleased event of `topic` (not dead letters).
    /// Returns how many. Leased events are left to their consumer.
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled fails.
    pub fn purge(&self, topic: &str) -> Result<u64, QueueError> {
        let shared = self.shared();
        let (tree, keys) = {
            let index = shared.lock_index();
            let Some(t) = index.topics.get(topic) else {
                return Ok(0);
            };
            let keys: Vec<(u64, u32)> = t
                .chunks
                .iter()
                .filter(|(_, c)| !matches!(c.state, ChunkState::Leased(_)))
                .map(|(k, c)| (*k, c.index.body_gen))
                .collect();
            (t.tree.clone(), keys)
        };
        let mut purged = 0;
        for group in keys.chunks(256) {
            let mut batch = WriteBatch::default();
            for (k, g) in group {
                batch.remove_chunk(*k, *g);
            }
            tree.apply(batch)?;
            let mut index = shared.lock_index();
            if let Some(t) = index.topics.get_mut(topic) {
                for (k, _) in group {
                    if let Some(info) = t.remove(*k) {
                        purged += info.index.events as u64;
                        shared
                            .totals
                            .sub(info.index.events as u64, info.index.bytes);
                    }
                }
            }
        }
        shared.space_freed();
        Ok(purged)
    }

    /// Moves every queued chunk into one fresh body generation per topic (and
    /// format-1 chunks out of the topic tree), so that the old generation files,
    /// with the acked chunks they still carry, are deleted. Used by
    /// [`compact`] on a store no consumer holds; leased chunks are skipped.
    /// Returns the bytes of chunk records moved.
    pub(crate) fn compact_bodies(&self) -> Result<u64, QueueError> {
        let shared = self.shared();
        let mut moved = 0u64;
        let names: Vec<Arc<str>> = shared.lock_index().topics.keys().cloned().collect();
        for name in names {
            // A fresh generation: everything older is what gets rewritten.
            let (tree, fresh) = {
                let index = shared.lock_index();
                let Some(t) = index.topics.get(&name) else {
                    continue;
                };
                (t.tree.clone(), t.next_generation())
            };
            let body = shared.store.body(&name, fresh)?;
            let chunks: Vec<(u64, ChunkIndex, Option<BodyTree>)> = {
                let mut index = shared.lock_index();
                let Some(t) = index.topics.get_mut(&name) else {
                    continue;
                };
                t.start_generation(fresh, body);
                let picked: Vec<(u64, ChunkIndex)> = t
                    .chunks
                    .iter()
                    .filter(|(_, c)| !matches!(c.state, ChunkState::Leased(_)))
                    .map(|(k, c)| (*k, c.index))
                    .collect();
                picked
                    .into_iter()
                    .map(|(k, idx)| (k, idx, t.pin(idx.body_gen, 1)))
                    .collect()
            };
            for group in chunks.chunks(64) {
                let mut records = Vec::with_capacity(group.len());
                for (key, idx, body) in group {
                    let raw = match body {
                        Some(b) => b.chunk(*key, idx),
                        None => Ok(None),
                    };
                    shared.unpin_body(&name, idx.body_gen, 1);
                    // Damaged or missing chunks stay where they are, for
                    // `verify` and leasing to quarantine.
                    if let Some(raw) = raw?
                        && record::decode_chunk(&raw).is_ok()
                    {
                        records.push((*key, *idx, raw));
                    }
                }
                if records.is_empty() {
                    continue;
                }
                let n = records.len() as u64;
                let bytes: u64 = records.iter().map(|(_, _, r)| r.len() as u64).sum();
                let raw: Vec<(u64, &[u8])> =
                    records.iter().map(|(k, _, r)| (*k, r.as_ref())).collect();
                let (g, at) = shared.append_bodies(&name, &tree, &raw)?;
                let mut batch = WriteBatch::default();
                let mut moved_idx = Vec::with_capacity(records.len());
                for ((key, idx, _), (offset, len)) in records.iter().zip(at) {
                    if idx.body_gen == 0 {
                        batch.remove_legacy_body(*key);
                    }
                    let new = ChunkIndex {
                        body_gen: g,
                        body_offset: offset,
                        body_len: len,
                        ..*idx
                    };
                    batch.put_index(*key, &new);
                    moved_idx.push((*key, new));
                }
                if let Err(e) = tree.apply(batch) {
                    shared.unpin_body(&name, g, n);
                    return Err(e.into());
                }
                let mut index = shared.lock_index();
                if let Some(t) = index.topics.get_mut(&name) {
                    let now = now_ms();
                    for (key, new) in moved_idx {
                        if let Some(mut info) = t.remove(key) {
                            info.index = new;
                            t.insert(key, info, now);
                        }
                    }
                    t.unpin(g, n);
                }
                moved += bytes;
            }
        }
        shared.store.flush()?;
        shared.reap_generations(true)?;
        Ok(moved)
    }

    /// Decodes every stored chunk and dead letter, quarantining the damaged.
    /// Returns (chunks checked, chunks quarantined).
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if sled fails.
    pub fn verify(&self) -> Result<(u64, u64), QueueError> {
        let shared = self.shared();
        let mut checked = 0;
        let mut bad = 0;
        type TopicChunks = (Arc<str>, TopicTree, Vec<(u64, ChunkIndex)>);
        let topics: Vec<TopicChunks> = shared
            .lock_index()
            .topics
            .iter()
            .map(|(n, t)| {
                (
                    n.clone(),
                    t.tree.clone(),
                    t.chunks.iter().map(|(k, c)| (*k, c.index)).collect(),
                )
            })
            .collect();
        for (name, tree, keys) in topics {
            checked += self.adopt_orphans(&name, &tree)?;
            for (key, chunk_index) in keys {
                let body_gen = chunk_index.body_gen;
                // Pinned while read (L4); gone meanwhile means acked meanwhile.
                let body = {
                    let mut index = shared.lock_index();
                    let Some(t) = index.topics.get_mut(&name) else {
                        continue;
                    };
                    if !t.chunks.contains_key(&key) {
                        continue;
                    }
                    t.pin(body_gen, 1)
                };
                checked += 1;
                let raw = match &body {
                    Some(b) => b.chunk(key, &chunk_index),
                    None => Ok(None),
                };
                if body.is_some() {
                    shared.unpin_body(&name, body_gen, 1);
                }
                let raw = raw?;
                let err = match raw.as_deref().map(record::decode_chunk) {
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => e.to_string(),
                    None => "chunk record missing".to_string(),
                };
                let leased = shared
                    .lock_index()
                    .topics
                    .get(&name)
                    .and_then(|t| t.chunks.get(&key))
                    .is_some_and(|c| matches!(c.state, ChunkState::Leased(_)));
                if !leased {
                    self.quarantine_chunk(
                        &name,
                        &tree,
                        key,
                        body_gen,
                        raw.as_deref().unwrap_or_default(),
                        &err,
                    )?;
                    bad += 1;
                }
            }
        }
        Ok((checked, bad))
    }

    /// Indexes chunk records that lost their index record (only after damage),
    /// or quarantines them if they are damaged too. Returns how many it found.
    fn adopt_orphans(&self, name: &Arc<str>, tree: &TopicTree) -> Result<u64, QueueError> {
        let shared = self.shared();
        // Only generation 0 (the topic tree) can hold orphans: a body in a
        // generation tree without an index record is simply acked.
        let orphans = tree.chunks_without_index()?;
        let gen0 = tree.as_body();
        for key in &orphans {
            let Some((raw, _, _)) = gen0.find(*key)? else {
                continue;
            };
            match record::decode_chunk(&raw) {
                Ok(events) => {
                    let idx = ChunkIndex {
                        events: events.len() as u32,
                        bytes: events.iter().map(|e| e.payload.len() as u64).sum(),
                        last_seq: events.last().map(|e| e.seq).unwrap_or(*key),
                        first_enqueued_ms: events[0].enqueued_at_ms,
                        body_gen: 0,
                        body_offset: 0,
                        body_len: 0,
                    };
                    let mut batch = WriteBatch::default();
                    batch.put_index(*key, &idx);
                    tree.apply(batch)?;
                    shared.totals.add(idx.events as u64, idx.bytes);
                    let mut index = shared.lock_index();
                    if let Some(t) = index.topics.get_mut(name) {
                        t.insert(*key, ChunkInfo::fresh(idx), now_ms());
                        t.wake();
                    }
                    tracing::warn!(topic = %name, chunk = key, "Chunk without an index record re-indexed.");
                }
                Err(e) => {
                    shared.store.quarantine(name, *key, &raw)?;
                    let mut batch = WriteBatch::default();
                    batch.remove_chunk(*key, 0);
                    tree.apply(batch)?;
                    shared.quarantined.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(topic = %name, chunk = key, error = %e, "Damaged chunk moved to quarantine.");
                }
            }
        }
        Ok(orphans.len() as u64)
    }

    /// A point-in-time view of the queue.
    pub fn stats(&self) -> Stats {
        let shared = self.shared();
        let now = now_ms();
        let mut topics: BTreeMap<String, TopicStats> = BTreeMap::new();
        {
            // Both locks at once (writer, then index): chunks move from the writer
            // to the index under both, so the snapshot counts each event once.
            let w = shared.lock_writer();
            let chunks = w.open.iter().chain(w.sealed.iter().map(|(t, c)| (t, c)));
            for (t, c) in chunks {
                let ts = topics.entry(t.to_string()).or_default();
                ts.uncommitted.add(c.events.len() as u64, c.bytes);
                if let Some(first) = c.events.first() {
                    let o = ts.oldest_enqueued_ms.get_or_insert(first.enqueued_at_ms);
                    *o = (*o).min(first.enqueued_at_ms);
                }
            }
            for (t, u) in w.committing.iter().filter(|(_, u)| u.events > 0) {
                topics
                    .entry(t.to_string())
                    .or_default()
                    .uncommitted
                    .add(u.events, u.bytes);
            }
            let mut index = shared.lock_index();
            for (name, t) in index.topics.iter_mut() {
                t.promote_due(now);
                let ts = topics.entry(name.to_string()).or_default();
                ts.ready = t.ready_usage;
                ts.retrying = t.delayed_usage;
                ts.leased = t.leased_usage;
                ts.dead = t.dead_usage;
                if let Some(o) = t.oldest_ms() {
                    let cur = ts.oldest_enqueued_ms.get_or_insert(o);
                    *cur = (*cur).min(o);
                }
            }
        }
        let mut drops_total: BTreeMap<String, u64> = BTreeMap::new();
        for ((topic, reason), n) in shared.drops.snapshot() {
            *topics
                .entry(topic.to_string())
                .or_default()
                .drops
                .entry(reason.as_str().to_string())
                .or_default() += n;
            *drops_total.entry(reason.as_str().to_string()).or_default() += n;
        }
        for ts in topics.values_mut() {
            ts.oldest_age_ms = ts.oldest_enqueued_ms.map(|o| now.saturating_sub(o));
        }
        let (events, bytes) = shared.totals.get();
        let c = &shared.cfg.ceiling;
        let used = (events as f64 / c.max_events as f64)
            .max(bytes as f64 / c.max_bytes.as_u64() as f64)
            * 100.0;
        let (q_records, q_bytes) = shared.store.quarantine_usage();
        Stats {
            instance_id: shared.instance.to_string(),
            format: record::FORMAT_VERSION,
            topics,
            total: Usage { events, bytes },
            ceiling: CeilingStats {
                max_events: c.max_events,
                max_bytes: c.max_bytes.as_u64(),
                policy: c.policy.to_string(),
                used_percent: (used * 100.0).round() / 100.0,
            },
            drops: drops_total,
            quarantined_records: q_records,
            quarantined_bytes: q_bytes,
            size_on_disk: shared.store.size_on_disk(),
            failed_closed: lock(&shared.failed_reason).clone(),
            recovered: shared.recovered.clone(),
        }
    }

    /// Releases every outstanding lease now, as if its deadline had passed.
    #[doc(hidden)]
    pub fn expire_all_leases(&self) -> usize {
        let mut index = self.shared().lock_index();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        index.expire(far, now_ms())
    }
}
