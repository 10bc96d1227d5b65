//! The lock order of the queue's parts, in one place, and the one way a
//! mutex is taken.
//!
//! A thread holding a lock may take only the locks after it:
//!
//! 1. the buffer's writer (`buffer.rs`): a producer evicting under
//!    `drop_oldest` holds it throughout;
//! 2. a topic's dead-letter lock (`topic.rs`): replays, purges, the eviction
//!    of a dead letter and the reaper's carrying of traces;
//! 3. the sled apply lock (`storage/slot.rs`): an apply takes the queued
//!    writes out of the index, writes each topic's traces to its log, then
//!    applies the writes;
//! 4. the logs' map (`log/logs.rs`), then a topic's log (`log/mod.rs`),
//!    several in topic order;
//! 5. the index (`index/mod.rs`);
//! 6. a log's segment map (`log/mod.rs`), then the drop counters
//!    (`ceiling.rs`).
//!
//! Leaves, taken with nothing after them: the logs' dirty and unsynced
//! marks and the syncer's inbox (`log/syncer.rs`), the wakers
//! (`index/mod.rs`), a log's queued traces, pins and sync marks, the
//! reaper's list (`reap.rs`), the gate's reason (`gate.rs`), the store slot
//! itself and the directory lock (`storage/`).
//!
//! A poisoned mutex is taken anyway (`lock`): a panic in one caller must not
//! turn every later call into a panic; the state a panicking holder left is
//! checked by the invariants of its part, as after a crash.

use std::sync::{Mutex, MutexGuard};

/// Takes `m`, poisoned or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
