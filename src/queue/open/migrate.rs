//! Migrating a format-1 or format-2 store to format 3, in place, at open.
//!
//! Formats 1 and 2 kept one sled tree per topic (`topic/<name>`); format 3
//! keeps every topic's records in one `index` tree and points index records
//! at spans of whole body entries (`queue/storage/mod.rs`,
//! `migrations-notes/0003-one-index-tree.md`). Per topic, in this order:
//!
//! 1. format-1 chunk bodies (generation 0, inside the topic tree) are copied
//!    into a new version-3 body file as rewrite entries, which is synced;
//! 2. every index record is rewritten in the new form (a format-2 record
//!    names a chunk record; the span starts 12 bytes earlier, at its entry
//!    header), with the retry records, dead letters and high-water, plus a
//!    checkpoint after every old body file; entries of the old body files at
//!    or above the old high-water that no index record covers (a crash lost
//!    their index records) are adopted, as a format-2 open did;
//! 3. that batch is applied and made durable, and only then the old tree is
//!    dropped.
//!
//! Format 3 to 4 changes no sled record: new body files carry checked entry
//! headers and traces (`migrations-notes/0004-traces.md`); after the load,
//! every dead letter is traced in its topic's log ([`trace_dead_letters`]),
//! so a rebuild without sled restores it.
//!
//! A crash in between leaves the old tree in place and `meta.format` below 3:
//! the next open runs the migration again, which rewrites the same keys (the
//! bodies of step 1 are copied again; the first copies are garbage, deleted
//! at that open). `meta.format` is raised last.

use super::recover::{covered, entry_index};
use crate::queue::log::body_generations;
use crate::queue::log::entry::EntryKind;
use crate::queue::log::{Admit, Bodies, Record, TopicLog};
use crate::queue::storage::{StorageError, Store, WriteBatch};
use crate::queue::topic::Topic;
use crate::record::{self, ChunkIndex, FORMAT_VERSION};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Bytes of a format-2 entry header (`seq`, `len`).
const V2_ENTRY_HEADER: u64 = 12;

/// Migrates every legacy topic tree, then records format 3.
pub(crate) fn migrate(store: &Store, bodies: &Bodies, from: u8) -> Result<(), StorageError> {
    if from < 3 {
        for name in store.legacy_topics() {
            // `check_legacy_topics` refused the open before anything was
            // changed if a name fails.
            let topic = Topic::new(&name)
                .map_err(|e| StorageError::io("migrate", std::io::Error::other(e.to_string())))?;
            migrate_topic(store, bodies, &topic)?;
        }
        store.migrate_quarantine()?;
    }
    store.set_format(FORMAT_VERSION)?;
    store.persist(true)?;
    tracing::info!(from, to = FORMAT_VERSION, "Store format upgraded.");
    Ok(())
}

/// Refuses a format-1 or format-2 store holding a topic whose name a
/// [`Topic`] may not have, before the migration changes anything. Formats 1
/// and 2 allowed `.` and `..` (format 3 forbids them: joined to a path they
/// leave `bodies/<topic>`); skipping such a tree would lose its events
/// without a count, renaming it would hand them to a topic nobody asked for.
pub(crate) fn check_legacy_topics(
    store: &Store,
    dir: &std::path::Path,
    format: u8,
) -> Result<(), crate::error::OpenError> {
    for name in store.legacy_topics() {
        if let Err(crate::error::QueueError::InvalidTopic { reason, .. }) = Topic::new(&name) {
            return Err(crate::error::OpenError::LegacyTopic {
                dir: dir.to_path_buf(),
                format,
                topic: name,
                reason,
            });
        }
    }
    Ok(())
}

fn migrate_topic(store: &Store, bodies: &Bodies, topic: &Topic) -> Result<(), StorageError> {
    let legacy = store.load_legacy(topic)?;
    let gens = body_generations(&bodies.root, topic);
    let log = Arc::new(TopicLog::new(
        topic.clone(),
        gens.clone(),
        gens.last().map_or(1, |g| g + 1),
    ));
    let mut batch = WriteBatch::default();
    let mut gen0: HashMap<u64, Vec<u8>> = legacy.chunks.into_iter().collect();
    let mut spans: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
    let mut next_seq = legacy.high_water;
    // Format-1 chunks to copy into a body file: (key, body).
    let mut to_move: Vec<(u64, Vec<u8>)> = Vec::new();
    for (seq, raw) in &legacy.index {
        let idx = match record::decode_index_with_format(raw) {
            Ok((_, idx)) if idx.body_gen == 0 => {
                if let Some(body) = gen0.remove(seq) {
                    to_move.push((*seq, body));
                }
                continue;
            }
            Ok((_, idx)) => idx.placed(
                idx.body_gen,
                idx.body_offset.saturating_sub(V2_ENTRY_HEADER),
                idx.body_len + V2_ENTRY_HEADER as u32,
            ),
            Err(_) => {
                // Damaged summary: find the chunk in generation 0 or a body file.
                if let Some(body) = gen0.remove(seq) {
                    to_move.push((*seq, body));
                    continue;
                }
                let found = gens.iter().rev().find_map(|g| {
                    let seg = log.segment(bodies, *g).ok()?;
                    let e = seg
                        .scan(0)
                        .ok()?
                        .entries
                        .into_iter()
                        .find(|e| e.seq == *seq)?;
                    entry_index(&seg, *g, e.offset, e.span, *seq)
                });
                match found {
                    Some(idx) => idx,
                    None => {
                        tracing::error!(
                            topic = %topic,
                            chunk = seq,
                            "Damaged index record whose chunk cannot be found; dropped by the migration."
                        );
                        continue;
                    }
                }
            }
        };
        next_seq = next_seq.max(idx.last_seq.saturating_add(1));
        spans
            .entry(idx.body_gen)
            .or_default()
            .push((idx.body_offset, idx.body_offset + idx.body_len as u64));
        batch.put_index(topic, *seq, &idx);
    }
    // Format-1 chunks without an index record (only after damage) come along.
    to_move.extend(gen0);
    to_move.sort_by_key(|(k, _)| *k);
    let mut moved: Vec<(u64, ChunkIndex)> = Vec::new();
    if !to_move.is_empty() {
        let mut records = Vec::new();
        let mut metas = Vec::new();
        for (key, body) in &to_move {
            let Ok(events) = record::decode_chunk(body) else {
                tracing::error!(
                    topic = %topic,
                    chunk = key,
                    "Damaged format-1 chunk dropped by the migration."
                );
                continue;
            };
            let record = Record::new(&events, body);
            metas.push((*key, record.summary));
            records.push(record);
        }
        if !records.is_empty() {
            let placed = log.append(bodies, Admit::Committer, &records, EntryKind::Rewrite)?;
            log.sync()?;
            for ((key, meta), p) in metas.into_iter().zip(placed) {
                let idx = meta.placed(p.generation, p.offset, p.span as u32);
                next_seq = next_seq.max(idx.last_seq.saturating_add(1));
                moved.push((key, idx));
            }
        }
    }
    for (key, idx) in &moved {
        batch.put_index(topic, *key, idx);
    }
    // Entries a crash left without their index record, as a format-2 open
    // adopted them: at or above the high-water, in any old body file.
    for v in spans.values_mut() {
        v.sort_unstable();
    }
    for g in &gens {
        let seg = log.segment(bodies, *g)?;
        let none = Vec::new();
        let covering = spans.get(g).unwrap_or(&none);
        for e in seg
            .scan(0)
            .map_err(|e| StorageError::io("scan body generation", e))?
            .entries
        {
            if e.seq < legacy.high_water || covered(covering, e.offset) {
                continue;
            }
            if let Some(idx) = entry_index(&seg, *g, e.offset, e.span, e.seq) {
                next_seq = next_seq.max(idx.last_seq.saturating_add(1));
                batch.put_index(topic, e.seq, &idx);
            }
        }
    }
    for (seq, raw) in &legacy.retry {
        batch.put_retry_raw(topic, *seq, raw);
    }
    for (seq, raw) in &legacy.dead {
        next_seq = next_seq.max(seq.saturating_add(1));
        batch.put_dead_raw(topic, *seq, raw);
    }
    batch.set_high_water(topic, next_seq);
    let after = log.lock().gens.last().copied().unwrap_or(0) + 1;
    batch.set_checkpoint(topic, (after, 0));
    store.apply(batch)?;
    store.persist(true)?;
    store.drop_legacy(topic)?;
    Ok(())
}

/// Format 3 to 4: dead letters become recoverable without sled. Every dead
/// letter sled holds is written as a trace (`queue/log/trace.rs`) to its topic's
/// log (a new generation), synced, so a later rebuild restores it.
pub(crate) fn trace_dead_letters(
    store: &Store,
    bodies: &Bodies,
    logs: &HashMap<Arc<str>, Arc<TopicLog>>,
) -> Result<(), StorageError> {
    let mut traced = 0u64;
    for (topic, log) in logs {
        let mut from = 0;
        loop {
            let page = store.dead_range(topic, from, 1000)?;
            let Some((last, _)) = page.last() else { break };
            from = last + 1;
            for (_, raw) in page {
                if let Ok(letter) = record::decode_dead(&raw) {
                    log.signals.traces.dead(letter);
                    traced += 1;
                }
            }
        }
        if log.signals.traces.any() {
            log.flush_traces(bodies, Admit::Committer)?;
            if bodies.fsync {
                log.sync()?;
            }
        }
    }
    if traced > 0 {
        tracing::info!(
            dead_letters = traced,
            "Dead letters traced in the body files (format 4)."
        );
    }
    Ok(())
}
