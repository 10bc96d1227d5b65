//! The durable queue: events in append-only body files, indexed in memory and
//! in sled, leased to consumers in chunks (format 4).
//!
//! # Design constraints
//!
//! Measured on our 2-core machines, sled 0.34.7 costs about 6 µs per key
//! operation and rewrites whole leaves, so one key per event caps a queue near
//! 150k events/s and values kept inside sled are written ~4 times. So the
//! bytes go to append-only *body files* (`bodies/<topic>/<g>.seg`), written
//! once, and the unit of indexing, leasing and acknowledgement is the *chunk*:
//! a span of whole entries of one body file, up to `chunk_max_events` events.
//! sled keeps only small records: the chunk index, retry schedules, dead
//! letters, each topic's seq high-water and checkpoint, and quarantine.
//!
//! **The body files are the truth; sled is a rebuildable index.** Every entry
//! carries its seqs, enqueue times and a CRC; every body file's header carries
//! the store's instance id and seq high-water. Opening a store whose sled
//! files are missing, empty or damaged rebuilds the index from the body files
//! with the same ids (`recover.rs`).
//!
//! # How it operates
//!
//! ```text
//!  enqueue ─▶ open chunk (memory) ─seal─▶ committer ─┐
//!                                                    ├─append─▶ topic log ─▶ body file
//!  enqueue_durable ─────────────────────────────────┘   (one lock per topic; fsync: group sync)
//!                                                                │
//!  committer round: index new entries ─▶ in-memory index ─▶ queued sled writes ─▶ one sled batch
//!                                              │
//!         lease(≤ batch) ◀── Ready ◀───────────┘      ack / nack / settle / evict / purge /
//!                                                     replay / compact: transitions (chunk.rs)
//! ```
//!
//! 1. A buffered `enqueue` takes a seq and joins its topic's open chunk, in
//!    memory (`enqueue.rs`). The committer seals and appends open chunks every
//!    `commit_interval` (`commit.rs`).
//! 2. A durable enqueue appends its own entry to the topic's log under the
//!    log's lock and returns once written (`fsync`: once a group `fdatasync`
//!    covers it, `sync.rs`).
//! 3. Each commit round indexes every new entry: contiguous entries become
//!    one chunk (a `commit` transition), leaseable at once.
//! 4. Every change of a chunk's state is a transition in `chunk.rs`, checked
//!    and committed under the index lock, with its sled writes queued in
//!    order; the committer applies them in one batch per round (`ops.rs`).
//! 5. A body file is deleted whole once nothing needs it, after the sled
//!    writes that stopped naming it are flushed (`reap.rs`).
//!
//! # Files
//!
//! ```text
//! mod.rs        this essay; Queue, Enqueued, open/close
//! shared.rs     the shared state, who owns what, lock order
//! index.rs      the in-memory index and per-state accounting (L1–L4)
//! chunk.rs      the chunk state machine: every transition (T1–T4)
//! log.rs        a topic's log: appends, generations, checkpoint, the write
//!               gate, sync positions (G1–G8)
//! group.rs      durable producers of a topic sharing one write (W1–W5)
//! segment.rs    body file format and the descriptor budget (S1–S5)
//! entry.rs      an entry's header and kinds; reading runs of entries past
//!               damage (E1–E3)
//! io.rs         every body-file I/O call: one error classification, no
//!               symlinks, fault injection for tests (IO1–IO2)
//! read.rs       reading a chunk back entry by entry; damage contained
//! trace.rs      traces of what left the queue other than by an ack (TR1–TR3)
//! sync.rs       group fdatasync for durable producers; transient retries
//! commit.rs     buffered events and the committer's rounds
//! ops.rs        applying queued sled writes (after the traces they record)
//! enqueue.rs    enqueue paths and ceiling policies
//! ceiling.rs    totals, drop reasons, waiting for space (C1–C3)
//! lease.rs      leases, max_age and damage at lease
//! settle.rs     ack, nack, settle
//! dead.rs       dead letters: list, replay, purge
//! purge.rs      purging queued events
//! stats.rs      stats, readiness, topics, peek
//! verify.rs     verify: decode everything, recount, repair drift
//! compact.rs    moving bodies to fresh files; rewriting sled
//! reap.rs       deleting drained body files, carrying their traces forward
//! resume.rs     making a topic's retries due at once (delivery works again)
//! open.rs       directory, lock, sled open and damage
//! identity.rs   the instance id file
//! recover.rs    rebuilding the index at open
//! rebuild.rs    what a topic's body files say is queued, read whole (RB1–RB3)
//! migrate.rs    formats 1, 2 and 3 to 4
//! storage.rs    the only file that names sled
//! ```
//!
//! # Invariants
//!
//! - I1 (no loss): an event whose durable enqueue returned `Ok` is in an
//!   entry of its topic's body file, and stays queued until it is acked,
//!   dead-lettered, or dropped by a counted policy. *Mechanism*: the producer
//!   returns after its own write (and sync); open adopts every new entry from
//!   the topic's checkpoint on that no index record covers (G3); a body file
//!   is deleted only after sled has flushed the removal of every index record
//!   naming it, and never while an entry in it waits to be indexed (G2).
//! - I2 (every transition atomic): a chunk changes state only in `chunk.rs`,
//!   under the index lock, after checking its current state; work outside the
//!   lock is bracketed by a lease or a claim (T1).
//! - I3 (ids are never reused): open resumes seqs above every seq named by an
//!   index record, a dead letter, a high-water, a scanned entry or a body
//!   file header. A crash can lose buffered events still in memory and their
//!   seqs may be handed out again, but only seqs no consumer saw: nothing is
//!   indexed before its entry is written (with `fsync`, synced).
//! - I4 (at-least-once): leases are memory only; a crash or reopen makes every
//!   indexed chunk ready again; a lease past `lease_timeout` is released.
//! - I5 (exact accounting): totals change only in transitions and never wrap
//!   (C1); `verify` recounts and repairs.
//! - I6 (contained damage): an entry failing its CRC (or bytes that are no
//!   valid entry) is quarantined and counted alone; the intact entries of its
//!   chunk stay queued as chunks of their own (`split_damaged`), readers go
//!   past damage to the next valid entry (E2), opening never panics, and
//!   sled's damage costs only what sled alone knew (README: "What a lost
//!   sled file costs").
//! - I7 (a failed write leaves nothing): a write that fails is truncated back
//!   (G4) and its producer gets the error; a commit round whose write failed
//!   drops its buffered events, counted, and fails `sync`.
//! - I8 (close is final): after `close` returns no byte reaches a body file,
//!   and no call in flight returns `Ok` for an event it had not written (G7).
//! - I9 (a rebuild is exact but for acks): every removal other than an ack
//!   leaves a trace in the topic's log before sled records it (TR1), so a
//!   rebuild without sled brings back no gone event, restores dead letters
//!   and puts every event in exactly one chunk (RB1–RB2).
//! - I10 (one classification of I/O errors): transient errors (descriptors,
//!   memory, EINTR, EAGAIN) fail one call and stick nowhere; a failed
//!   `fdatasync` poisons its log and is never followed by an `Ok` for what
//!   it covered (IO2, G8).

pub(crate) mod ceiling;
mod chunk;
mod commit;
mod compact;
mod dead;
mod enqueue;
mod entry;
mod group;
mod identity;
mod index;
pub(crate) mod io;
mod lease;
mod log;
mod migrate;
mod open;
mod ops;
mod purge;
mod read;
mod reap;
mod rebuild;
mod recover;
mod resume;
mod segment;
mod settle;
mod shared;
mod stats;
pub(crate) mod storage;
mod sync;
mod trace;
mod verify;

pub use compact::{CompactReport, compact};
pub use dead::DeadEvent;
pub use index::Usage;
pub use lease::Lease;
pub use open::store_size;
pub use settle::{SettleReport, Settlement};
pub use stats::{CeilingStats, PeekedEvent, Readiness, Stats, TopicStats};
pub use verify::VerifyReport;

use crate::ceiling::DropReason;
use crate::config::QueueConfig;
use crate::error::QueueError;
use crate::event::EventId;
use shared::{Shared, lock};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// Longest topic name.
pub const MAX_TOPIC_LEN: usize = 64;

/// Quarantine keeps at most this many bytes of damaged records (and at most
/// an eighth of the ceiling's `max_bytes`); the oldest go first (they are kept
/// for inspection, never delivered).
pub const QUARANTINE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes quarantine may keep under `cfg`'s ceiling (C4).
pub(crate) fn quarantine_cap(cfg: &QueueConfig) -> u64 {
    QUARANTINE_MAX_BYTES.min(cfg.ceiling.max_bytes.as_u64() / 8)
}

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
    if topic == "." || topic == ".." {
        return bad("'.' and '..' are not topic names");
    }
    Ok(())
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
            .field("dir", &self.inner.dir)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

/// What every clone of a queue shares: what never changes, and the running
/// store, which [`Queue::reopen`] replaces.
struct Inner {
    dir: std::path::PathBuf,
    cfg: QueueConfig,
    instance: Arc<str>,
    running: std::sync::RwLock<Running>,
}

/// One open of the store: its shared state and committer thread.
struct Running {
    shared: Arc<Shared>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let r = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, false);
    }
}

/// Stops the threads after a last commit round (or, for a simulated crash,
/// at once), then lets sled and the directory lock go.
fn shutdown(
    shared: &Arc<Shared>,
    committer: &Mutex<Option<std::thread::JoinHandle<()>>>,
    crash: bool,
) {
    shared.closing.store(true, Ordering::Release);
    // From here on only the committer writes (G7 in `queue/log.rs`); a
    // producer's write in progress finishes first (each log's lock).
    shared.bodies.start_closing();
    for log in shared.all_logs() {
        drop(log.lock());
    }
    shared.syncer.stop();
    {
        let mut w = shared.lock_writer();
        w.shutdown = true;
        w.crash |= crash;
    }
    shared.commit_cv.notify_all();
    let handle = lock(committer).take();
    if let Some(h) = handle {
        let _ = h.join();
    }
    if let Some(h) = lock(&shared.reaper).take() {
        let _ = h.join();
    }
    if !crash {
        shared.finish_logs();
    }
    // Nothing is written any more; producers still waiting for a sync that
    // will not come learn that the queue closed.
    shared.bodies.close();
    for log in shared.all_logs() {
        drop(log.lock());
        log.announce_failure(log::POISONED, storage::StorageError::closed());
    }
    shared.release_store();
}

impl Queue {
    /// Opens the store in `dir`, creating it (mode 0700) if needed.
    ///
    /// Before opening, stale `snap.*.generating` files are moved aside. When
    /// sled's files are missing, empty or cannot be opened (those are moved to
    /// `dir/damaged-<time>`), the index is rebuilt from the body files with
    /// the same event ids; this is logged at ERROR and listed in
    /// [`Stats::recovered`]. Every indexed chunk is leaseable after open
    /// (leases do not survive a restart).
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
        let running = Running::start(shared.clone());
        Queue {
            inner: Arc::new(Inner {
                dir: shared.dir.clone(),
                cfg: shared.cfg.clone(),
                instance: shared.instance.clone(),
                running: std::sync::RwLock::new(running),
            }),
        }
    }

    /// The running store's shared state (a clone: [`Queue::reopen`] may
    /// replace it meanwhile, and calls on the old one then end `Closed`).
    fn shared(&self) -> Arc<Shared> {
        self.inner
            .running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .shared
            .clone()
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration the queue runs with.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.cfg
    }

    /// The store's instance id.
    pub fn instance_id(&self) -> &str {
        &self.inner.instance
    }

    /// The stable id of the event with `seq` in this store.
    pub fn event_id(&self, seq: u64) -> EventId {
        EventId::new(self.shared().instance.clone(), seq)
    }

    /// Commits every buffered event, indexes every written one, writes the
    /// index and deletes drained body files, then stops the queue's threads
    /// and releases the store: when it returns, the directory can be opened
    /// again (by this process or another). Every call on any clone afterwards
    /// fails with [`QueueError::Closed`] (reads return nothing). Blocks the
    /// calling thread.
    ///
    /// Closing is final: a durable call that had not written its event when
    /// `close` began ends with [`QueueError::Closed`], never `Ok` (one that
    /// had, and whose sync the last round covers, gets `Ok`), and no byte
    /// reaches a body file after `close` returned.
    pub fn close(&self) {
        let r = self.inner.running.read().unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, false);
    }

    /// Closes the store and opens it again in place, for every clone of this
    /// queue: the way out of failing closed once its cause is gone (say, a
    /// full disk with room again), without restarting the process. Calls in
    /// flight on the old open end as `close` ends them; leases taken before
    /// are lost (their events are delivered again, same ids). Blocks the
    /// calling thread for a close and an open.
    ///
    /// # Errors
    ///
    /// As [`Queue::open`]; the queue then stays closed (every call fails
    /// [`QueueError::Closed`]) until a later `reopen` succeeds.
    pub fn reopen(&self) -> Result<(), crate::OpenError> {
        let mut r = self
            .inner
            .running
            .write()
            .unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, false);
        let shared = open::open_shared(&self.inner.dir, self.inner.cfg.clone())?;
        *r = Running::start(shared);
        tracing::info!(dir = %self.inner.dir.display(), "Store reopened.");
        Ok(())
    }

    /// For tests: stops the queue as a crash would, in-process: buffered
    /// events not yet written and sled writes not yet applied are lost (what
    /// sled applied before stays, and every written entry is in its body
    /// file); then releases the store like `close`.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        let r = self.inner.running.read().unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, true);
    }
}

impl Running {
    /// Starts the committer thread of an open store.
    fn start(shared: Arc<Shared>) -> Running {
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("evspool-committer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| commit::run(s.clone()));
                if std::panic::catch_unwind(run).is_err() {
                    // A bug, but never a hang: new events are refused and
                    // every `sync` waiter gets the error.
                    s.fail_closed("the committer thread panicked");
                    s.rounds.send_modify(|m| {
                        m.completed = u64::MAX;
                        m.failed = Some((u64::MAX, Arc::from("the committer thread panicked")));
                    });
                }
            })
            .expect("spawning the committer thread");
        Running {
            shared,
            committer: Mutex::new(Some(handle)),
        }
    }
}
