//! Compaction: moving queued chunks into fresh body files, and rewriting
//! sled into a fresh database.
//!
//! Body compaction claims each unleased chunk (`claim_move`: leases, eviction
//! and purge skip it), copies its entries into the topic's new generation
//! (as `requeued` entries: the events were queued when copied), and finishes the move only if the claim still holds
//! (`finish_move`); the old generations then drain and are deleted by the
//! reaper, after the index records naming the new places are in sled.
//!
//! The sled rewrite builds `db.compact` beside `db` (copying each tree in key
//! order in batches, which leaves sled's file ~40% smaller than copying key by
//! key: `Store::copy_into`), syncs it and the store
//! directory, renames `db` to `db.old` and `db.compact` to `db`, syncs the
//! directory again, and only then removes `db.old`. A crash at any point
//! leaves a complete database under `db` or `db.old` (`restore_interrupted_swap`),
//! and even a database that lost its data file is rebuilt from the body files
//! under the same instance id (`queue/open/recover.rs`).

use super::handle::Queue;
use super::io::sync_dir;
use super::log::Admit;
use super::log::Record;
use super::log::entry::EntryKind;
use super::log::read::read_chunk;
use super::open::{
    DB_DIR, io_err, open_store, restore_interrupted_swap, restrict_permissions, store_size,
};
use super::storage::dir_lock::take_lock;
use super::storage::{OpenFailure, Store};
use crate::config::QueueConfig;
use crate::error::OpenError;
use crate::error::QueueError;
use crate::event::now_ms;
use crate::record::{self, ChunkIndex};
use std::path::Path;

/// What `compact` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompactReport {
    /// The store's size on disk before.
    pub before_bytes: u64,
    /// The store's size on disk after.
    pub after_bytes: u64,
}

/// Chunks claimed and copied per step.
const MOVE_GROUP: usize = 64;

impl Queue {
    /// Moves every unleased chunk into one fresh body generation per topic, so
    /// that the old generation files, with the acked chunks they still carry,
    /// are deleted. Returns the bytes of chunk records moved.
    pub(crate) fn compact_bodies(&self) -> Result<u64, QueueError> {
        let shared = &self.shared();
        let mut moved = 0u64;
        for log in shared.logs().all() {
            let topic = log.topic.arc().clone();
            // New appends (ours first) go to a fresh generation.
            log.lock().rotate = true;
            let keys: Vec<u64> = shared
                .catalog()
                .lock()
                .topics
                .get(&topic)
                .map(|t| t.chunks.keys().copied().collect())
                .unwrap_or_default();
            for group in keys.chunks(MOVE_GROUP) {
                let claimed: Vec<(u64, ChunkIndex)> = {
                    let mut index = shared.catalog().lock();
                    let Some(t) = index.topics.get_mut(&topic) else {
                        break;
                    };
                    group
                        .iter()
                        .filter_map(|k| t.claim_move(*k).map(|c| (*k, c.index)))
                        .collect()
                };
                let mut copies: Vec<(u64, ChunkIndex, super::log::read::ChunkRead)> = Vec::new();
                let mut skipped: Vec<u64> = Vec::new();
                for (key, idx) in &claimed {
                    let read = read_chunk(shared.logs().bodies(), Some(&log), *key, idx);
                    if let Some(t) = shared.catalog().lock().topics.get_mut(&topic) {
                        t.unpin(idx.body_gen);
                    }
                    match read {
                        // Damaged chunks stay where they are, for leasing or
                        // `verify` to contain.
                        Ok(r) if r.intact() => copies.push((*key, *idx, r)),
                        _ => skipped.push(*key),
                    }
                }
                let mut records = Vec::new();
                let mut owners = Vec::new();
                let mut decoded = Vec::new();
                for (i, (_, _, read)) in copies.iter().enumerate() {
                    for run in &read.runs {
                        for r in &run.records {
                            // Decoded when read: the copy is of records known good.
                            decoded.push((i, r, record::decode_chunk(r).unwrap_or_default()));
                        }
                    }
                }
                for (i, r, events) in &decoded {
                    records.push(Record::new(events, r));
                    owners.push(*i);
                }
                let placed = if records.is_empty() {
                    Ok(Vec::new())
                } else {
                    log.append(
                        shared.logs().bodies(),
                        Admit::Producer,
                        &records,
                        EntryKind::Requeued,
                    )
                    .and_then(|p| {
                        if shared.cfg().fsync {
                            log.sync()?;
                        }
                        Ok(p)
                    })
                };
                let placed = match placed {
                    Ok(p) => p,
                    Err(e) => {
                        let mut index = shared.catalog().lock();
                        if let Some(t) = index.topics.get_mut(&topic) {
                            for (key, _) in &claimed {
                                t.finish_move(*key, None, now_ms());
                            }
                        }
                        shared.gate().write_failed(&e);
                        return Err(e.into());
                    }
                };
                // Each chunk's new span: from its first copied entry to the end of its last.
                let mut spans: Vec<Option<(u32, u64, u64)>> = vec![None; copies.len()];
                for (p, i) in placed.iter().zip(&owners) {
                    let s = spans[*i].get_or_insert((p.generation, p.offset, 0));
                    s.2 = p.offset + p.span - s.1;
                }
                let now = now_ms();
                {
                    let mut index = shared.catalog().lock();
                    if let Some(t) = index.topics.get_mut(&topic) {
                        for ((key, idx, read), span) in copies.iter().zip(&spans) {
                            let new = span.map(|(g, off, len)| idx.placed(g, off, len as u32));
                            if t.finish_move(*key, new, now) {
                                moved += read
                                    .runs
                                    .iter()
                                    .flat_map(|r| &r.records)
                                    .map(|r| r.len() as u64)
                                    .sum::<u64>();
                            }
                        }
                        for key in &skipped {
                            t.finish_move(*key, None, now);
                        }
                        t.wake();
                    }
                }
                let mut st = log.lock();
                for p in &placed {
                    st.settled(p.generation, 1);
                }
            }
        }
        super::commit::reap(shared, true);
        Ok(moved)
    }
}

/// Rewrites the store in `dir` into fresh body files and a fresh sled
/// database, reclaiming the space sled never returns after a drain.
///
/// Takes the directory lock for the whole operation (see the module docs for
/// the crash safety of the swap).
///
/// # Errors
///
/// As [`Queue::open`].
pub fn compact(dir: &Path, cfg: &QueueConfig) -> Result<CompactReport, OpenError> {
    cfg.validate()?;
    if !dir.join(DB_DIR).exists() {
        return Err(OpenError::NotAStore {
            dir: dir.to_path_buf(),
            reason: "it has no db/ directory".into(),
        });
    }
    let before_bytes = store_size(dir);
    {
        let q = Queue::open(dir, cfg.clone())?;
        q.compact_bodies().map_err(|e| OpenError::Io {
            path: dir.join(super::open::BODIES_DIR),
            source: std::io::Error::other(e.to_string()),
        })?;
        q.close();
    }
    let _lock = take_lock(dir)?;
    restore_interrupted_swap(dir);
    let mut recovered = Vec::new();
    let (old, _) = open_store(dir, cfg, &mut recovered)?;
    let tmp = dir.join("db.compact");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    let storage_err = |source| OpenError::Storage {
        dir: dir.to_path_buf(),
        source,
    };
    {
        let new = match Store::open(&tmp, cfg.cache_capacity.as_u64(), cfg.flush_interval) {
            Ok(s) => s,
            Err(OpenFailure::Io(e)) => return Err(io_err(&tmp)(e)),
            Err(OpenFailure::Locked(t) | OpenFailure::Damaged(t)) => {
                return Err(io_err(&tmp)(std::io::Error::other(t)));
            }
        };
        old.copy_into(&new).map_err(storage_err)?;
        // Complete and durable before it replaces anything.
        new.persist(true).map_err(storage_err)?;
    }
    drop(old);
    sync_dir(dir).map_err(io_err(dir))?;
    let aside = dir.join("db.old");
    let db = dir.join(DB_DIR);
    super::io::rename(&db, &aside).map_err(io_err(&aside))?;
    super::io::rename(&tmp, &db).map_err(io_err(&tmp))?;
    sync_dir(dir).map_err(io_err(dir))?;
    std::fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
    restrict_permissions(dir);
    let after_bytes = store_size(dir);
    tracing::info!(before_bytes, after_bytes, "Store compacted.");
    Ok(CompactReport {
        before_bytes,
        after_bytes,
    })
}
