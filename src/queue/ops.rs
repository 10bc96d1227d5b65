//! Applying the sled writes that transitions queue (T3 in `queue/index/chunk.rs`).
//!
//! A transition changes the in-memory index and queues its sled writes on its
//! topic, in one critical section; [`apply_ops`] takes every topic's
//! queue under the index lock and applies them, in order, in one sled batch.
//! The `ops` lock is held from the take to the end of the apply, so batches
//! reach sled in the order their transitions happened, and whoever holds it
//! after an apply knows every transition before its take is in sled — in
//! its journal, and in sled's tree at the latest at the next read or flush
//! (`storage/journal.rs`, J7); the reaper flushes sled before it deletes a
//! generation.
//!
//! A large take is applied as several batches, split between topics (never
//! inside one topic's writes) every [`OPS_PER_BATCH`] writes: sled keeps every
//! node version a batch makes alive until the batch ends, so one batch for
//! the writes of ten thousand topics costs ~100 MiB where several cost a few.
//! No invariant spans topics, so a crash between two of them leaves each
//! topic's index as of one of its transitions, as before.
//!
//! The drop counters that changed since the last apply ride with it, so
//! they survive a restart.
//!
//! The traces transitions queued for a topic (`queue/log/trace.rs`) are written
//! to its log before its sled writes are applied, so sled never records a
//! removal whose trace a crash could still lose; a topic whose traces cannot
//! be written yet keeps its sled writes queued for the next apply.
//!
//! After a failed apply nothing more is applied (sled refuses writes after an
//! I/O error anyway), nor after a panic (a bug) between the take and the
//! apply, which lost the writes taken: the store fails closed; what the lost
//! writes recorded is redelivered after a reopen (at-least-once), never lost,
//! because the body files are kept until a later, successful apply.

use super::index::chunk::Op;
use super::log::Admit;
use super::shared::Shared;
use super::storage::{StorageError, WriteBatch};
use crate::error::QueueError;
use std::sync::Arc;

pub(crate) use super::storage::ops_per_batch;

/// Applies every queued sled write in one batch; returns how many.
pub(crate) fn apply_ops(shared: &Shared) -> Result<usize, StorageError> {
    let mut failed = shared.store().apply_lock();
    if *failed {
        return Err(StorageError::io(
            "write index",
            std::io::Error::other("an earlier index write failed"),
        ));
    }
    // From the take below, the writes exist only here: a panic (a bug)
    // before they are applied loses them, as a failed apply would.
    let _closes = CloseOnUnwind(shared);
    let taken: Vec<(Arc<str>, Vec<Op>)> = {
        let mut index = shared.catalog().lock();
        index
            .topics
            .iter_mut()
            .filter(|(_, t)| !t.ops.is_empty())
            .map(|(name, t)| (name.clone(), t.take_ops()))
            .collect()
    };
    let drops = shared.ceiling().drops().take_changed();
    if taken.is_empty() && drops.is_empty() {
        return Ok(0);
    }
    // A topic's traces reach its log before sled records the removals
    // they trace (`queue/log/trace.rs`): a crash in between never leaves sled
    // without an event that a rebuild would bring back.
    // A topic whose traces could not be written keeps its sled writes
    // queued for the next apply, in front of any queued since.
    let mut held = Vec::new();
    let mut taken: Vec<(Arc<str>, Vec<Op>)> = taken
        .into_iter()
        .filter_map(|(topic, ops)| {
            let flushed = match shared.logs().existing(&topic) {
                Some(log) if log.signals.traces.any() => {
                    log.flush_traces(shared.logs().bodies(), Admit::Committer)
                }
                _ => Ok(()),
            };
            match flushed {
                Ok(()) => Some((topic, ops)),
                Err(e) => {
                    shared.gate().write_failed(&e);
                    held.push((topic, ops));
                    None
                }
            }
        })
        .collect();
    if !held.is_empty() {
        let mut index = shared.catalog().lock();
        for (topic, mut ops) in held {
            if let Some(t) = index.topics.get_mut(&topic) {
                ops.append(&mut t.ops);
                t.ops = ops;
            }
        }
    }
    taken.retain(|(_, ops)| !ops.is_empty());
    let mut batches = vec![WriteBatch::default()];
    let mut n = 0;
    for (topic, ops) in &taken {
        n += ops.len();
        if batches.last().is_some_and(|b| b.len() >= ops_per_batch()) {
            batches.push(WriteBatch::default());
        }
        let batch = batches.last_mut().expect("one batch at least");
        for op in ops {
            match op {
                Op::Put(key, index) => batch.put_index(topic, *key, index),
                Op::Remove(key) => batch.remove_chunk(topic, *key),
                Op::RemoveIndex(key) => batch.remove_index(topic, *key),
                Op::Retry(key, state) => batch.put_retry(topic, *key, state),
                Op::Dead(dead) => batch.put_dead(topic, dead),
                Op::Undead(seq) => batch.remove_dead(topic, *seq),
                Op::HighWater(hw) => batch.set_high_water(topic, *hw),
                Op::Checkpoint(g) => batch.set_checkpoint(topic, *g),
            }
        }
    }
    // Drop counters ride with the last batch (C3 in `queue/ceiling.rs`).
    let last = batches.last_mut().expect("one batch at least");
    for ((topic, reason), count) in &drops {
        last.set_drops(topic, reason.code(), *count);
    }
    let applied = match shared.store().get() {
        Ok(store) => store.apply_all(batches),
        Err(_) => Err(StorageError::io(
            "write index",
            std::io::Error::other("the store is closed"),
        )),
    };
    if let Err(e) = applied {
        shared.ceiling().drops().unwritten(&drops);
        *failed = true;
        shared.gate().fail_closed(&e.to_string());
        return Err(e);
    }
    metrics::counter!("evspool_index_writes_total").increment(n as u64);
    Ok(n)
}

/// Fails the store closed if dropped by a panic: the apply lock is poisoned
/// then, so no later apply runs (`storage/slot.rs`, `apply_lock`), and
/// producers are refused at once, not at the next index write.
struct CloseOnUnwind<'a>(&'a Shared);

impl Drop for CloseOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.gate().fail_closed(
                "a panic while writing the index lost the writes it had taken; a reopen restores them from the body files",
            );
        }
    }
}

/// Makes a topic's removals durable: its queued traces written (and synced
/// with `fsync`), every queued sled write applied and flushed.
pub(crate) fn persist_removals(shared: &Shared, topic: &str) -> Result<(), QueueError> {
    if let Some(log) = shared.logs().existing(topic) {
        let flushed = log
            .flush_traces(shared.logs().bodies(), Admit::Producer)
            .and_then(|()| {
                if shared.cfg().fsync {
                    log.sync()
                } else {
                    Ok(())
                }
            });
        if let Err(e) = flushed {
            shared.gate().write_failed(&e);
            return Err(e.into());
        }
    }
    apply_ops(shared)?;
    let store = shared.store().get()?;
    store.flush()?;
    if shared.cfg().fsync {
        store.sync_data_file()?;
    }
    Ok(())
}
