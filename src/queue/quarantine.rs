//! Quarantine: damaged bytes found in body files, kept in sled for
//! inspection (never delivered), the oldest going first past a cap.

use super::index::chunk::{ChunkInfo, Held};
use super::log::read::{ChunkRead, Damage};
use super::shared::Shared;
use super::storage::QuarantinePart;
use crate::config::QueueConfig;
use crate::error::QueueError;
use std::sync::Arc;

/// Quarantine keeps at most this many bytes of damaged records (and at most
/// an eighth of the ceiling's `max_bytes`); the oldest go first (they are kept
/// for inspection, never delivered).
pub const QUARANTINE_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The bytes quarantine may keep under `cfg`'s ceiling (C4).
pub(crate) fn quarantine_cap(cfg: &QueueConfig) -> u64 {
    QUARANTINE_MAX_BYTES.min(cfg.ceiling.max_bytes.as_u64() / 8)
}

/// Contains damage found in chunk `key` of `topic` while `held` holds it:
/// keeps every damaged part in quarantine, then replaces the chunk by its
/// intact runs (`split_damaged`), in one critical section of the index lock.
/// So the chunk's removal is queued only once its quarantine records are in
/// sled's file, synced (J8 in `storage/journal.rs`): no apply can record the
/// removal before them, and a kill in between keeps the chunk queued (it is
/// found damaged again) rather than losing its damaged events uncounted.
/// The lease's own list drops the key either way. Returns whether the chunk
/// was still so held; on an error nothing is split and the chunk stays.
///
/// The records are written under the index lock: damage is rare, and a
/// chunk's records are one sled batch and a sync.
pub(crate) fn contain_damage(
    shared: &Shared,
    topic: &Arc<str>,
    key: u64,
    held: Held,
    read: &ChunkRead,
    now_ms: u64,
) -> Result<bool, QueueError> {
    let mut index = shared.catalog().lock();
    let info = index
        .topics
        .get(topic)
        .and_then(|t| t.held_as(key, held).cloned());
    let split = match (info, index.topics.get_mut(topic)) {
        (Some(info), Some(t)) => {
            fail::fail_point!("queue::quarantine::before_record");
            record_quarantine(shared, topic, key, &info, &read.damaged)?;
            t.split_damaged(key, held, read, shared.ceiling().totals(), now_ms)
                .is_some()
        }
        _ => false,
    };
    if let Held::Lease(lease) = held
        && let Some(l) = index.leases.get_mut(&lease)
    {
        l.keys.retain(|k| *k != key);
    }
    Ok(split)
}

/// Keeps the damaged parts' bytes of chunk `key` in quarantine (those not
/// kept already: `Store::quarantine` is idempotent) and reports each.
fn record_quarantine(
    shared: &Shared,
    topic: &Arc<str>,
    key: u64,
    info: &ChunkInfo,
    damaged: &[Damage],
) -> Result<(), QueueError> {
    let parts: Vec<QuarantinePart<'_>> = damaged
        .iter()
        .map(|d| QuarantinePart {
            place: (info.index.body_gen, d.at),
            bytes: &d.bytes,
        })
        .collect();
    let store = shared.store().get()?;
    let (bytes_held, recorded) =
        store.quarantine(topic, key, &parts, quarantine_cap(shared.cfg()))?;
    shared.ceiling().totals().set_quarantine(bytes_held);
    metrics::counter!("evspool_chunks_quarantined_total", "topic" => topic.to_string())
        .increment(recorded as u64);
    for damage in damaged {
        tracing::error!(
            topic = %topic,
            chunk = key,
            events = info.index.events,
            reason = %damage.why,
            kept_before = recorded < damaged.len(),
            "Damaged entry moved to quarantine; the rest of its chunk stays queued."
        );
    }
    Ok(())
}
