//! What a topic log tells the durable producers waiting for a sync: the
//! newest position known synced and the failures since (G8 in
//! `log/mod.rs`).

use crate::queue::storage::StorageError;

/// A failure that covers every position: a poisoned log or a closed queue.
pub(crate) const POISONED: (u32, u64) = (u32::MAX, u64::MAX);

/// The newest position known synced, for producers waiting on it (G8).
#[derive(Clone, Debug, Default)]
pub(crate) struct SyncMark {
    pub(crate) pos: (u32, u64),
    /// Failures published so far: a waiter heeds only those after it began.
    pub(crate) failures: u64,
    /// The last failure.
    pub(crate) failure: Option<SyncFailure>,
}

/// A sync that failed, for the producers whose bytes it was to cover.
#[derive(Clone, Debug)]
pub(crate) struct SyncFailure {
    /// The sync was to cover everything up to here.
    pub(crate) upto: (u32, u64),
    pub(crate) error: StorageError,
}

impl SyncMark {
    /// What a producer whose bytes end at `end`, that began waiting when
    /// `seen` failures were published, learns now: `None` to wait on.
    pub(crate) fn outcome(&self, end: (u32, u64), seen: u64) -> Option<Result<(), StorageError>> {
        if self.pos >= end {
            return Some(Ok(()));
        }
        match &self.failure {
            Some(f) if self.failures > seen && f.upto >= end => Some(Err(f.error.clone())),
            _ => None,
        }
    }
}
