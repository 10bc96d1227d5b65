//! The composition root: one open store's parts, each owning its state
//! behind private fields, and nothing else. Handles, the committer, leases
//! and the verbs reach a part through its accessor; the background threads
//! get the parts they need (the syncer: the logs and the gate; a reaping
//! thread: the parts of `reap.rs`; the committer: the whole, whose round
//! touches every part). The lock order, by part, is in `locking.rs`.
//!
//! | part | file | owns |
//! |---|---|---|
//! | [`Gate`] | `gate.rs` | open, closing, failing closed and why |
//! | [`Logs`] | `log/logs.rs` | body files, every topic's log, the syncer |
//! | [`Buffer`] | `buffer.rs` | buffered events, the committer's rounds |
//! | [`Catalog`] | `index/mod.rs` | the in-memory index, wakers, lease ids |
//! | [`Ceiling`] | `ceiling.rs` | totals, drop counters, waiting for room |
//! | [`StoreSlot`] | `storage/slot.rs` | sled, its apply lock, the directory lock |
//! | [`Reaper`] | `reap.rs` | drained generations to delete |
//! | [`TopicLocks`] | `topic.rs` | per-topic dead-letter locks |

use super::buffer::Buffer;
use super::ceiling::Ceiling;
use super::gate::Gate;
use super::index::Catalog;
use super::log::logs::Logs;
use super::reap::Reaper;
use super::storage::slot::StoreSlot;
use super::topic::TopicLocks;
use crate::config::QueueConfig;
use crate::event::Instance;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open store's parts; see the module docs.
pub(crate) struct Shared {
    /// The configuration this open runs with.
    cfg: QueueConfig,
    /// The store directory.
    dir: PathBuf,
    /// The store's instance id: every event id names it.
    instance: Instance,
    /// What open recovered from (`Stats::recovered`).
    recovered: Vec<String>,
    /// Whether calls may write (shared with the syncer thread).
    gate: Arc<Gate>,
    /// Body files and topic logs (shared with the syncer thread).
    logs: Arc<Logs>,
    /// Buffered events and the committer's rounds.
    buffer: Buffer,
    /// The in-memory index and what hangs off it.
    catalog: Catalog,
    /// What the ceiling counts.
    ceiling: Ceiling,
    /// sled and the directory lock.
    store: StoreSlot,
    /// Drained generations waiting to be deleted.
    reaper: Reaper,
    /// Serializes dead-letter replays and purges, per topic.
    dead_locks: TopicLocks,
}

/// What `open` hands over to build a [`Shared`].
pub(crate) struct Parts {
    pub(crate) cfg: QueueConfig,
    pub(crate) dir: PathBuf,
    pub(crate) instance: Arc<str>,
    pub(crate) recovered: Vec<String>,
    pub(crate) logs: Logs,
    pub(crate) catalog: Catalog,
    pub(crate) ceiling: Ceiling,
    pub(crate) store: StoreSlot,
}

impl Shared {
    pub(crate) fn new(p: Parts) -> Shared {
        // A new open does not fail closed (`Queue::reopen`).
        metrics::gauge!("evspool_failed_closed").set(0.0);
        Shared {
            cfg: p.cfg,
            dir: p.dir,
            instance: Instance::intern(&p.instance),
            recovered: p.recovered,
            gate: Arc::default(),
            logs: Arc::new(p.logs),
            buffer: Buffer::default(),
            catalog: p.catalog,
            ceiling: p.ceiling,
            store: p.store,
            reaper: Reaper::default(),
            dead_locks: TopicLocks::default(),
        }
    }

    /// The configuration this open runs with.
    pub(crate) fn cfg(&self) -> &QueueConfig {
        &self.cfg
    }

    /// The store directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The store's instance id.
    pub(crate) fn instance(&self) -> Instance {
        self.instance
    }

    /// What open recovered from.
    pub(crate) fn recovered(&self) -> &[String] {
        &self.recovered
    }

    /// Whether calls may write.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// Body files and topic logs.
    pub(crate) fn logs(&self) -> &Arc<Logs> {
        &self.logs
    }

    /// Buffered events and the committer's rounds.
    pub(crate) fn buffer(&self) -> &Buffer {
        &self.buffer
    }

    /// The in-memory index.
    pub(crate) fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Totals, drop counters, waiting for room.
    pub(crate) fn ceiling(&self) -> &Ceiling {
        &self.ceiling
    }

    /// sled and the directory lock.
    pub(crate) fn store(&self) -> &StoreSlot {
        &self.store
    }

    /// Drained generations waiting to be deleted.
    pub(crate) fn reaper(&self) -> &Reaper {
        &self.reaper
    }

    /// The per-topic locks of dead-letter replays and purges.
    pub(crate) fn dead_locks(&self) -> &TopicLocks {
        &self.dead_locks
    }
}
