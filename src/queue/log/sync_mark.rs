//! What a topic log tells the durable producers waiting for a sync: the
//! newest position known synced and the failures since (G8 in
//! `log/mod.rs`).

use crate::queue::storage::StorageError;
use std::sync::{Mutex, MutexGuard};
use tokio::sync::Notify;

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

/// A log's [`SyncMark`] and the producers waiting on it: a mutex and one
/// `Notify`, ~150 bytes inline, where a `tokio::sync::watch` channel costs
/// ~440 bytes more per topic (10,000 topics: 4 MiB).
///
/// - SW1: the mark changes only in [`SyncWatch::update`], which wakes every
///   waiter after the change when it reports one;
/// - SW2: a waiter registers for the wake-up before it reads the mark
///   ([`SyncWatch::wait_for`]), so a change between its read and its wait
///   still wakes it.
///
/// The mutex is a leaf: nothing else is locked while it is held.
#[derive(Default)]
pub(crate) struct SyncWatch {
    mark: Mutex<SyncMark>,
    changed: Notify,
}

impl SyncWatch {
    /// The mark now.
    pub(crate) fn borrow(&self) -> MutexGuard<'_, SyncMark> {
        self.mark.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the mark with `change`, which says whether it changed it;
    /// wakes every waiter if so (SW1).
    pub(crate) fn update(&self, change: impl FnOnce(&mut SyncMark) -> bool) {
        let changed = change(&mut self.borrow());
        if changed {
            self.changed.notify_waiters();
        }
    }

    /// Waits until `outcome` of the mark is `Some`, and returns it (SW2).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits.
    pub(crate) async fn wait_for<T>(&self, outcome: impl Fn(&SyncMark) -> Option<T>) -> T {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(out) = outcome(&self.borrow()) {
                return out;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SyncWatch;
    use std::sync::Arc;
    use std::time::Duration;

    /// SW2 under contention: waiters on other threads, each after a
    /// position the updater reaches one step at a time, all wake (a waiter
    /// that read the mark before registering would sleep through its step).
    #[test]
    fn every_waiter_wakes_for_the_position_it_waits_on_while_the_mark_moves() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for round in 0..200u64 {
                let watch = Arc::new(SyncWatch::default());
                let waiters: Vec<_> = (1..=8u64)
                    .map(|target| {
                        let w = watch.clone();
                        tokio::spawn(async move {
                            w.wait_for(|m| (m.pos.1 >= target).then_some(m.pos.1)).await
                        })
                    })
                    .collect();
                for step in 1..=8u64 {
                    tokio::task::yield_now().await;
                    watch.update(|m| {
                        m.pos = (1, step);
                        true
                    });
                }
                for (i, w) in waiters.into_iter().enumerate() {
                    let seen = tokio::time::timeout(Duration::from_secs(10), w)
                        .await
                        .unwrap_or_else(|_| panic!("round {round}: waiter {} never woke", i + 1))
                        .unwrap();
                    assert!(
                        seen > i as u64,
                        "round {round}: waiter {} woke at {seen}",
                        i + 1
                    );
                }
            }
        });
    }

    /// A change `update` reports as none wakes nobody and leaves the mark.
    #[test]
    fn an_update_that_changes_nothing_keeps_the_mark() {
        let watch = SyncWatch::default();
        watch.update(|m| {
            m.failures += 1;
            true
        });
        watch.update(|_| false);
        assert_eq!(watch.borrow().failures, 1);
        assert_eq!(watch.borrow().pos, (0, 0));
    }
}
