//! The lock order of the queue's parts, in one place, and the one way a
//! mutex is taken.
//!
//! A thread holding a lock may take only the locks after it:
//!
//! 1. the buffer's writer (`buffer.rs`);
//! 2. the logs' map (`log/logs.rs`), then a topic's log (`log/mod.rs`),
//!    several in topic order;
//! 3. a topic's dead-letter lock (`topic.rs`, replays and purges);
//! 4. the index (`index/mod.rs`);
//! 5. a log's segment map (`log/mod.rs`), then the drop counters
//!    (`ceiling.rs`).
//!
//! The sled apply lock (`store/slot.rs`) is taken before the index: an apply
//! takes the queued writes out of the index, then applies them without it;
//! a topic's queued traces are written under it (their log's lock comes
//! after it). Leaves, taken with nothing after them: the logs' dirty and
//! unsynced sets, the wakers, a log's traces, pins and unsynced marks, the
//! reaper's list, the gate's reason, the store slot.
//!
//! A poisoned mutex is taken anyway (`lock`): a panic in one caller must not
//! turn every later call into a panic; the state a panicking holder left is
//! checked by the invariants of its part, as after a crash.

use std::sync::{Mutex, MutexGuard};

/// Takes `m`, poisoned or not.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
