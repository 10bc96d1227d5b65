//! The buffer: events handed to the buffered `enqueue`, in memory until the
//! committer writes them (`commit.rs`), and the rounds it completed.
//!
//! Buffered producers append to their topic's open chunk under the writer
//! lock; a full chunk is sealed for the committer. `pending_bytes` counts
//! what is sealed and not yet written, for backpressure (`enqueue.rs`).

use super::locking::lock;
use super::storage::StorageError;
use super::topic::Topic;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::watch;

/// The buffer part of a store: the writer lock's state, the committer's
/// wake-up, and the rounds it completed.
pub(crate) struct Buffer {
    /// Open and sealed chunks (first in the lock order, `locking.rs`).
    writer: Mutex<Writer>,
    /// Wakes the committer.
    wake: Condvar,
    /// A log has enough unindexed entries for a round: start one early.
    index_requested: AtomicBool,
    /// Settlements wait in the index's queued sled writes: apply and flush
    /// them soon (`commit.rs`), so a kill re-sends only what was in flight.
    persist_requested: AtomicBool,
    /// Rounds completed, for `sync`.
    rounds: watch::Sender<RoundMark>,
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer {
            writer: Mutex::default(),
            wake: Condvar::new(),
            index_requested: AtomicBool::new(false),
            persist_requested: AtomicBool::new(false),
            rounds: watch::channel(RoundMark::default()).0,
        }
    }
}

impl Buffer {
    /// Takes the writer lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    /// Waits on the writer lock for a wake-up or `timeout`.
    pub(crate) fn wait<'a>(
        &self,
        w: MutexGuard<'a, Writer>,
        timeout: std::time::Duration,
    ) -> MutexGuard<'a, Writer> {
        self.wake
            .wait_timeout(w, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Wakes the committer.
    pub(crate) fn wake_committer(&self) {
        self.wake.notify_all();
    }

    /// Asks the committer for a round soon: a log has entries to index.
    pub(crate) fn request_index(&self) {
        self.index_requested.store(true, Ordering::Release);
        self.wake.notify_all();
    }

    /// Whether a round was asked for (and clears the request).
    pub(crate) fn take_index_request(&self) -> bool {
        self.index_requested.swap(false, Ordering::AcqRel)
    }

    /// Asks the committer to apply and flush the queued sled writes soon:
    /// a settlement is waiting in them. Call with no lock held: the writer
    /// lock is taken for a moment, so a committer about to wait sees the
    /// request (no lost wake-up).
    pub(crate) fn request_persist(&self) {
        if !self.persist_requested.swap(true, Ordering::AcqRel) {
            drop(self.lock());
            self.wake.notify_all();
        }
    }

    /// Whether settlements wait to be persisted (and clears the request).
    pub(crate) fn take_persist_request(&self) -> bool {
        self.persist_requested.swap(false, Ordering::AcqRel)
    }

    /// Whether settlements wait to be persisted.
    pub(crate) fn persist_requested(&self) -> bool {
        self.persist_requested.load(Ordering::Acquire)
    }

    /// The rounds completed.
    pub(crate) fn rounds(&self) -> &watch::Sender<RoundMark> {
        &self.rounds
    }
}

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
    pub(crate) open: HashMap<Topic, OpenChunk>,
    /// Full chunks waiting for the committer, in seal order.
    pub(crate) sealed: Vec<(Topic, OpenChunk)>,
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
        let mut topics: Vec<Topic> = self.open.keys().cloned().collect();
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
