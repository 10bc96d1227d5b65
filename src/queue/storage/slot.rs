//! The store slot: sled, from open until `close` lets it go, the lock that
//! serializes applying queued sled writes (`ops.rs`), and the directory
//! lock, released last.

use super::Store;
use super::dir_lock::DirLock;
use crate::error::QueueError;
use crate::queue::locking::lock;
use std::sync::{Arc, Mutex, MutexGuard};

/// sled and the directory lock of one open store.
pub(crate) struct StoreSlot {
    /// sled, until `close` lets it go (and with it sled's file lock).
    store: Mutex<Option<Arc<Store>>>,
    /// Held while queued sled writes are taken and applied (`ops.rs`);
    /// true once an apply failed (nothing more is applied).
    apply: Mutex<bool>,
    /// The directory lock, held until `close` (or the last handle) lets go.
    dir_lock: Mutex<Option<DirLock>>,
}

impl StoreSlot {
    pub(crate) fn new(store: Store, dir_lock: DirLock) -> StoreSlot {
        StoreSlot {
            store: Mutex::new(Some(Arc::new(store))),
            apply: Mutex::new(false),
            dir_lock: Mutex::new(Some(dir_lock)),
        }
    }

    /// sled, or `Closed` after `close`.
    pub(crate) fn get(&self) -> Result<Arc<Store>, QueueError> {
        lock(&self.store).clone().ok_or(QueueError::Closed)
    }

    /// The apply lock (its value: an earlier apply failed). A holder that
    /// panicked (a bug) counts as a failed apply: the writes it had taken
    /// out of the index are gone, so nothing more may be applied after them
    /// (`queue/ops.rs`).
    pub(crate) fn apply_lock(&self) -> MutexGuard<'_, bool> {
        let mut failed = lock(&self.apply);
        if self.apply.is_poisoned() {
            *failed = true;
        }
        failed
    }

    /// Lets sled (and its file lock) and the directory lock go, once every
    /// other user of sled is done (`close`).
    pub(crate) fn release(&self) {
        let store = lock(&self.store).take();
        if let Some(mut store) = store {
            // A reader that took a handle a moment ago finishes first.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                match Arc::try_unwrap(store) {
                    Ok(s) => {
                        drop(s);
                        break;
                    }
                    Err(back) if std::time::Instant::now() < deadline => {
                        store = back;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(_) => {
                        tracing::warn!(
                            "A reader still holds the store after 10 s; its lock goes when it is done."
                        );
                        break;
                    }
                }
            }
        }
        drop(lock(&self.dir_lock).take());
    }
}
