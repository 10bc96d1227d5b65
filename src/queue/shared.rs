//! The state one queue's handles, threads and leases share, and who owns each
//! part of it.
//!
//! Lock order (a thread holding one may take only those after it):
//! `writer` → `logs` (the map) → a topic's log → `index` → a log's segment
//! map → `drops`. `ops` is taken before `index` (it takes the queued writes
//! out of the index, then applies them without it). `doomed`, `dead_locks`,
//! `wakers`, `dirty`, `unsynced`, `store` and each topic's queued traces
//! (`queue/trace.rs`) are leaves.

use super::ceiling::{Drops, Space, Totals};
use super::commit::{RoundMark, Writer};
use super::index::{Index, TopicIndex};
use super::log::{Bodies, TopicLog};
use super::reap::Doomed;
use super::storage::{StorageError, Store};
use super::sync::Syncer;
use crate::config::QueueConfig;
use crate::error::QueueError;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use tokio::sync::watch;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// State shared by the queue handle, the committer, reaper and syncer threads,
/// and unsettled leases.
pub(crate) struct Shared {
    pub(crate) cfg: QueueConfig,
    pub(crate) dir: PathBuf,
    pub(crate) instance: Arc<str>,
    /// sled, until `close` lets it go (and with it sled's file lock).
    store: Mutex<Option<Arc<Store>>>,
    /// Where body files go, the descriptor budget and the seq counter.
    pub(crate) bodies: Bodies,
    /// Every topic's log, created on a topic's first write.
    logs: RwLock<HashMap<Arc<str>, Arc<TopicLog>>>,
    /// Open and sealed chunks of buffered events (`queue/commit.rs`).
    pub(crate) writer: Mutex<Writer>,
    /// Wakes the committer.
    pub(crate) commit_cv: Condvar,
    /// A log has enough unindexed entries for a round: start one early.
    pub(crate) index_requested: AtomicBool,
    /// Topics whose logs have entries for the committer to index.
    pub(crate) dirty: Mutex<BTreeSet<Arc<str>>>,
    /// Topics whose logs hold bytes a failed (transient) sync left unsynced:
    /// the committer syncs them again every round (`queue/commit.rs`).
    unsynced: Mutex<BTreeSet<Arc<str>>>,
    /// Wakes producers waiting for space.
    pub(crate) space: Space,
    /// Committed chunks and leases (`queue/index.rs`).
    pub(crate) index: Mutex<Index>,
    /// Per-topic counters consumers wait on; the index holds clones.
    pub(crate) wakers: Mutex<HashMap<Arc<str>, Arc<watch::Sender<u64>>>>,
    /// Held while queued sled writes are taken and applied (`queue/ops.rs`);
    /// true once an apply failed (nothing more is applied).
    pub(crate) ops: Mutex<bool>,
    /// Commit rounds completed, for `sync` (`queue/commit.rs`).
    pub(crate) rounds: watch::Sender<RoundMark>,
    /// Fsyncs logs for durable producers awaiting power-loss safety.
    pub(crate) syncer: Syncer,
    pub(crate) totals: Totals,
    pub(crate) drops: Drops,
    failed: AtomicBool,
    failed_reason: Mutex<Option<String>>,
    /// `close` has begun: new events are refused with `Closed`.
    pub(crate) closing: AtomicBool,
    pub(crate) next_lease: AtomicU64,
    pub(crate) quarantined: AtomicU64,
    pub(crate) recovered: Vec<String>,
    /// Serializes dead-letter replays and purges, per topic.
    dead_locks: Mutex<HashMap<Arc<str>, Arc<Mutex<()>>>>,
    /// Drained generations waiting to be deleted (`queue/reap.rs`).
    pub(crate) doomed: Mutex<Doomed>,
    pub(crate) reaping: AtomicBool,
    pub(crate) reaper: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The directory lock, held until `close` (or the last handle) lets go.
    lock_file: Mutex<Option<std::fs::File>>,
}

/// What `open` hands over to build a [`Shared`].
pub(crate) struct Parts {
    pub(crate) cfg: QueueConfig,
    pub(crate) dir: PathBuf,
    pub(crate) instance: Arc<str>,
    pub(crate) store: Store,
    pub(crate) bodies: Bodies,
    pub(crate) logs: HashMap<Arc<str>, Arc<TopicLog>>,
    pub(crate) index: Index,
    pub(crate) wakers: HashMap<Arc<str>, Arc<watch::Sender<u64>>>,
    pub(crate) totals: Totals,
    pub(crate) quarantined: u64,
    pub(crate) drops: Drops,
    pub(crate) recovered: Vec<String>,
    pub(crate) dirty: BTreeSet<Arc<str>>,
    pub(crate) lock_file: std::fs::File,
}

impl Shared {
    pub(crate) fn new(p: Parts) -> Shared {
        Shared {
            store: Mutex::new(Some(Arc::new(p.store))),
            logs: RwLock::new(p.logs),
            writer: Mutex::new(Writer::default()),
            commit_cv: Condvar::new(),
            index_requested: AtomicBool::new(false),
            dirty: Mutex::new(p.dirty),
            unsynced: Mutex::new(BTreeSet::new()),
            space: Space::default(),
            index: Mutex::new(p.index),
            wakers: Mutex::new(p.wakers),
            ops: Mutex::new(false),
            rounds: watch::channel(RoundMark::default()).0,
            syncer: Syncer::default(),
            totals: p.totals,
            drops: p.drops,
            failed: AtomicBool::new(false),
            failed_reason: Mutex::new(None),
            closing: AtomicBool::new(false),
            next_lease: AtomicU64::new(0),
            quarantined: AtomicU64::new(p.quarantined),
            recovered: p.recovered,
            dead_locks: Mutex::new(HashMap::new()),
            doomed: Mutex::new(Doomed::default()),
            reaping: AtomicBool::new(false),
            reaper: Mutex::new(None),
            lock_file: Mutex::new(Some(p.lock_file)),
            cfg: p.cfg,
            dir: p.dir,
            instance: p.instance,
            bodies: p.bodies,
        }
    }

    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        lock(&self.writer)
    }

    pub(crate) fn lock_index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// sled, or `Closed` after `close`.
    pub(crate) fn store(&self) -> Result<Arc<Store>, QueueError> {
        lock(&self.store).clone().ok_or(QueueError::Closed)
    }

    /// Lets sled (and its file lock) and the directory lock go, once every
    /// other user of sled is done (`close`).
    pub(crate) fn release_store(&self) {
        let store = lock(&self.store).take();
        if let Some(mut store) = store {
            // A reader that took a handle a moment ago finishes first.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(store) {
                    Ok(s) => {
                        drop(s);
                        break;
                    }
                    Err(back) if std::time::Instant::now() < deadline => {
                        store = back;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(_) => {
                        tracing::warn!(
                            "A reader still holds the store after 10 s; its lock goes when it is done."
                        );
                        break;
                    }
                }
            }
        }
        if lock(&self.lock_file).take().is_some() {
            super::open::closed_here(&self.dir);
        }
    }

    /// The topic's log, created on first use.
    pub(crate) fn log(&self, topic: &str) -> Arc<TopicLog> {
        if let Some(l) = self
            .logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return l.clone();
        }
        let mut logs = self.logs.write().unwrap_or_else(|e| e.into_inner());
        logs.entry(Arc::from(topic))
            .or_insert_with_key(|t| Arc::new(TopicLog::new(t.clone(), BTreeSet::new(), 1)))
            .clone()
    }

    /// Cuts the zeros written ahead of every log's current generation
    /// (`close`, G6 in `queue/log.rs`).
    pub(crate) fn finish_logs(&self) {
        for log in self.all_logs() {
            log.finish(&self.bodies);
        }
    }

    /// The topic's log if it has one.
    pub(crate) fn existing_log(&self, topic: &str) -> Option<Arc<TopicLog>> {
        self.logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
    }

    /// Every topic log, sorted by topic (the order several are locked in).
    pub(crate) fn all_logs(&self) -> Vec<Arc<TopicLog>> {
        let mut logs: Vec<Arc<TopicLog>> = self
            .logs
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        logs.sort_by(|a, b| a.topic.cmp(&b.topic));
        logs
    }

    /// The counter consumers of `topic` wait on.
    pub(crate) fn waker(&self, topic: &Arc<str>) -> Arc<watch::Sender<u64>> {
        lock(&self.wakers)
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(watch::channel(0).0))
            .clone()
    }

    /// `topic`'s entry in the in-memory index, made on first use (a topic a
    /// commit round or a replay meets before any chunk of it was indexed).
    pub(crate) fn topic_index<'i>(
        &self,
        index: &'i mut Index,
        topic: &Arc<str>,
        log: &TopicLog,
    ) -> &'i mut TopicIndex {
        let waker = self.waker(topic);
        index
            .topics
            .entry(topic.clone())
            .or_insert_with(|| TopicIndex::new(waker, 0, log.signals.clone()))
    }

    /// The lock serializing dead-letter replays and purges of `topic`.
    pub(crate) fn dead_lock(&self, topic: &str) -> Arc<Mutex<()>> {
        let mut locks = lock(&self.dead_locks);
        if let Some(l) = locks.get(topic) {
            return l.clone();
        }
        let l: Arc<Mutex<()>> = Arc::default();
        locks.insert(Arc::from(topic), l.clone());
        l
    }

    /// Marks a topic's log as holding bytes a sync must cover again.
    pub(crate) fn mark_unsynced(&self, topic: &Arc<str>) {
        lock(&self.unsynced).insert(topic.clone());
    }

    /// Takes the topics marked unsynced.
    pub(crate) fn take_unsynced(&self) -> BTreeSet<Arc<str>> {
        std::mem::take(&mut *lock(&self.unsynced))
    }

    /// Marks a topic's log as holding entries for the committer.
    pub(crate) fn mark_dirty(&self, topic: &Arc<str>) {
        lock(&self.dirty).insert(topic.clone());
    }

    /// Makes a topic's removals durable: its queued traces written (and
    /// synced with `fsync`), every queued sled write applied and flushed.
    pub(crate) fn persist_removals(&self, topic: &str) -> Result<(), QueueError> {
        if let Some(log) = self.existing_log(topic) {
            let flushed = log
                .flush_traces(&self.bodies, super::log::Admit::Producer)
                .and_then(|()| if self.cfg.fsync { log.sync() } else { Ok(()) });
            if let Err(e) = flushed {
                self.write_failed(&e);
                return Err(e.into());
            }
        }
        self.apply_ops()?;
        let store = self.store()?;
        store.flush()?;
        if self.cfg.fsync {
            store.sync_data_file()?;
        }
        Ok(())
    }

    /// Refuses any call once `close` has begun (it is final).
    pub(crate) fn check_open(&self) -> Result<(), QueueError> {
        if self.closing.load(Ordering::Acquire) {
            return Err(QueueError::Closed);
        }
        Ok(())
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    pub(crate) fn failed_reason(&self) -> Option<String> {
        lock(&self.failed_reason).clone()
    }

    /// The error a refused write gets while the store fails closed.
    pub(crate) fn failed_error(&self) -> QueueError {
        QueueError::FailedClosed {
            reason: self.failed_reason().unwrap_or_default(),
        }
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
    }

    /// Reacts to a failed write: out of descriptors is transient (reported,
    /// never failing the store closed); anything else fails it closed.
    pub(crate) fn write_failed(&self, e: &StorageError) {
        if e.is_closed() {
            return;
        }
        if e.is_transient() {
            metrics::counter!("evspool_transient_write_errors_total").increment(1);
            tracing::warn!(error = %e, "A write failed transiently (out of descriptors or memory); the caller may retry. Raise the process's open-file limit or lower max_open_files.");
        } else {
            self.fail_closed(&e.to_string());
        }
    }
}
