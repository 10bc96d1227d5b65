//! Quarantine: damaged bytes found in body files, kept in sled for
//! inspection (never delivered), the oldest going first past a cap.

use super::index::chunk::ChunkInfo;
use super::log::read::Damage;
use super::shared::Shared;
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

/// Keeps a damaged part's bytes in quarantine and reports it.
pub(crate) fn record_quarantine(
    shared: &Shared,
    topic: &Arc<str>,
    key: u64,
    info: &ChunkInfo,
    damage: &Damage,
) -> Result<(), QueueError> {
    let held = shared.store().get()?.quarantine(
        topic,
        key,
        &damage.bytes,
        quarantine_cap(shared.cfg()),
    )?;
    shared.ceiling().totals().set_quarantine(held);
    metrics::counter!("evspool_chunks_quarantined_total", "topic" => topic.to_string())
        .increment(1);
    tracing::error!(
        topic = %topic,
        chunk = key,
        events = info.index.events,
        reason = %damage.why,
        "Damaged entry moved to quarantine; the rest of its chunk stays queued."
    );
    Ok(())
}
