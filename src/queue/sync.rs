//! Group commit for durable producers with `fsync = true`.
//!
//! A producer appends its own entry (`queue/log.rs`), asks the syncer to sync
//! its log and awaits the log's synced position. The syncer thread takes every
//! log asked for since its last pass and `fdatasync`s each once: a sync covers
//! whatever was appended before it started, so while one sync runs the next
//! pass's producers gather (one `fdatasync` for many producers). Producers
//! never block a runtime thread on the disk: they await a watch channel.
//!
//! A pass waits, briefly, for as many requests as the previous pass served:
//! the producers it just released come back within microseconds, and one
//! `fdatasync` for all of them is worth far more than starting at the first.
//! The wait ends at a quarter of the last `fdatasync`'s duration (at most
//! 1 ms), so a lone producer pays little.

use super::log::TopicLog;
use super::shared::{Shared, lock};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// The syncer thread's inbox.
#[derive(Default)]
pub(crate) struct Syncer {
    queue: Mutex<Inbox>,
    cv: Condvar,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Inbox {
    /// Logs to sync, keyed by address: a map, since thousands of topics may
    /// ask between two passes.
    logs: HashMap<usize, Arc<TopicLog>>,
    /// Requests since the last pass took the inbox.
    requests: u64,
    stop: bool,
}

impl Syncer {
    /// Asks for `log` to be synced up to its current end.
    pub(crate) fn request(&self, log: &Arc<TopicLog>) {
        let mut q = lock(&self.queue);
        q.logs
            .entry(Arc::as_ptr(log) as usize)
            .or_insert_with(|| log.clone());
        q.requests += 1;
        drop(q);
        self.cv.notify_one();
    }

    /// Starts the thread (once, on the first request of a store with `fsync`).
    pub(crate) fn start(&self, shared: Weak<Shared>) {
        let mut handle = lock(&self.handle);
        if handle.is_some() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("evspool-syncer".into())
            .spawn(move || run(shared));
        match spawned {
            Ok(h) => *handle = Some(h),
            Err(e) => tracing::error!(error = %e, "Could not start the syncer thread."),
        }
    }

    /// Stops the thread after its pending syncs.
    pub(crate) fn stop(&self) {
        lock(&self.queue).stop = true;
        self.cv.notify_all();
        if let Some(h) = lock(&self.handle).take() {
            let _ = h.join();
        }
    }
}

fn run(shared: Weak<Shared>) {
    // What the previous pass served, and how long its syncs took.
    let mut served = 0u64;
    let mut sync_took = Duration::from_micros(200);
    loop {
        let logs = {
            let Some(s) = shared.upgrade() else { return };
            let mut q = lock(&s.syncer.queue);
            while q.logs.is_empty() && !q.stop {
                q = s
                    .syncer
                    .cv
                    .wait_timeout(q, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if Arc::strong_count(&s) == 1 {
                    return;
                }
            }
            if q.logs.is_empty() && q.stop {
                return;
            }
            // Gather the producers the last pass released (see the module docs).
            let until = Instant::now() + (sync_took / 4).min(Duration::from_millis(1));
            while q.requests < served && !q.stop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = s
                    .syncer
                    .cv
                    .wait_timeout(q, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            served = std::mem::take(&mut q.requests);
            std::mem::take(&mut q.logs)
        };
        let Some(s) = shared.upgrade() else { return };
        let started = Instant::now();
        for log in logs.into_values() {
            match log.sync() {
                Ok(()) => {
                    // Synced entries may be indexed now: let the committer in early.
                    s.mark_dirty(&log.topic);
                }
                Err(e) => s.fail_closed(&e.to_string()),
            }
        }
        sync_took = started.elapsed();
    }
}
