//! Journaled index batches that sled has not applied yet (J7 in
//! `journal.rs`): kept in lsn order, handed to sled merged at record
//! boundaries.

use super::batch::WriteBatch;
use super::journal::Write;
use std::time::{Duration, Instant};

/// Pending writes past which they are applied to sled and flushed.
pub(crate) const PENDING_WRITES: usize = 8192;
/// Longest a journaled batch waits for sled when more batches come: what
/// sled's background flush (`flush_interval`) covers is this much older.
pub(crate) const PENDING_AGE: Duration = Duration::from_millis(200);

/// The batches, their writes' count, and when sled last took them.
pub(crate) struct Pending {
    batches: Vec<(u64, WriteBatch)>,
    writes: usize,
    applied_at: Instant,
}

impl Pending {
    pub(crate) fn new() -> Self {
        Self {
            batches: Vec::new(),
            writes: 0,
            applied_at: Instant::now(),
        }
    }

    /// Adds a journaled batch (lsns in order).
    pub(crate) fn push(&mut self, lsn: u64, batch: WriteBatch) {
        self.writes += batch.len();
        self.batches.push((lsn, batch));
    }

    /// Whether enough waits to apply and flush at once.
    pub(crate) fn full(&self) -> bool {
        self.writes >= PENDING_WRITES
    }

    /// Whether the oldest may have waited long enough.
    pub(crate) fn old(&self) -> bool {
        self.applied_at.elapsed() >= PENDING_AGE
    }

    /// Takes every batch, merged at record boundaries into groups of up to
    /// `most` writes (one batch alone may be larger): each group's writes
    /// in order, with the lsn of its last record.
    pub(crate) fn take_merged(&mut self, most: usize) -> Vec<(u64, Vec<Write>)> {
        let mut groups: Vec<(u64, Vec<Write>)> = Vec::new();
        for (lsn, batch) in std::mem::take(&mut self.batches) {
            match groups.last_mut() {
                Some((last, writes)) if writes.len() + batch.len() <= most => {
                    *last = lsn;
                    writes.extend(batch.writes);
                }
                _ => groups.push((lsn, batch.writes)),
            }
        }
        self.writes = 0;
        groups
    }

    /// Puts back groups sled did not take (it refused a write).
    pub(crate) fn put_back(&mut self, groups: impl Iterator<Item = (u64, Vec<Write>)>) {
        for (lsn, writes) in groups {
            self.push(lsn, WriteBatch { writes });
        }
    }

    /// Sled took every batch now.
    pub(crate) fn applied(&mut self) {
        self.applied_at = Instant::now();
    }
}
