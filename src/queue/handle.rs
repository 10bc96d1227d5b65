//! The queue handle: [`Queue`], what its clones share, and one open of the
//! store (its shared state and committer thread), which `reopen` replaces.
//! The queue's calls are `impl Queue` blocks in the files of their verbs
//! (`enqueue.rs`, `lease.rs`, ...).

use super::locking::lock;
use super::shared::Shared;
use super::{commit, log, open, storage};
use crate::config::QueueConfig;
use crate::event::EventId;
use crate::event::Instance;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The durable queue. Cheap to clone; every clone is the same queue.
///
/// Opening takes an exclusive lock on the directory: one process per store.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("dir", &self.inner.dir)
            .field("instance", &self.inner.instance)
            .finish()
    }
}

/// What every clone of a queue shares: what never changes, and the running
/// store, which [`Queue::reopen`] replaces.
struct Inner {
    dir: std::path::PathBuf,
    cfg: QueueConfig,
    instance: Instance,
    running: std::sync::RwLock<Running>,
}

/// One open of the store: its shared state and committer thread.
struct Running {
    shared: Arc<Shared>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let r = self.running.get_mut().unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, false);
    }
}

/// Stops the threads after a last commit round (or, for a simulated crash,
/// at once), then lets sled and the directory lock go.
fn shutdown(
    shared: &Arc<Shared>,
    committer: &Mutex<Option<std::thread::JoinHandle<()>>>,
    crash: bool,
) {
    shared.gate().start_closing();
    // From here on only the committer writes (G7 in `queue/log/mod.rs`); a
    // producer's write in progress finishes first (each log's lock).
    shared.logs().bodies().start_closing();
    for log in shared.logs().all() {
        drop(log.lock());
    }
    shared.logs().syncer().stop();
    {
        let mut w = shared.buffer().lock();
        w.shutdown = true;
        w.crash |= crash;
    }
    shared.buffer().wake_committer();
    let handle = lock(committer).take();
    if let Some(h) = handle {
        let _ = h.join();
    }
    shared.reaper().join();
    if !crash {
        shared.logs().finish();
    }
    // Nothing is written any more; producers still waiting for a sync that
    // will not come learn that the queue closed.
    shared.logs().bodies().close();
    for log in shared.logs().all() {
        drop(log.lock());
        log.announce_failure(log::POISONED, storage::StorageError::closed());
    }
    shared.store().release();
}

impl Queue {
    /// Opens the store in `dir`, creating it (mode 0700) if needed.
    ///
    /// Before opening, stale `snap.*.generating` files are moved aside. When
    /// sled's files are missing, empty or cannot be opened (those are moved to
    /// `dir/damaged-<time>`), the index is rebuilt from the body files with
    /// the same event ids; this is logged at ERROR and listed in
    /// [`Stats::recovered`](crate::Stats::recovered). Every indexed chunk is leaseable after open
    /// (leases do not survive a restart).
    ///
    /// # Errors
    ///
    /// [`OpenError`](crate::OpenError): invalid config, directory locked by another
    /// process, a newer on-disk format, not an evspool directory, or I/O errors.
    ///
    /// # Examples
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let queue = evspool::Queue::open(dir.path(), evspool::QueueConfig::default()).unwrap();
    /// let outcome = queue.enqueue("track", br#"{"event":"signup"}"#.to_vec()).unwrap();
    /// assert!(outcome.id().is_some());
    /// ```
    pub fn open(dir: impl AsRef<Path>, cfg: QueueConfig) -> Result<Queue, crate::OpenError> {
        open::open_shared(dir.as_ref(), cfg).map(Queue::from_shared)
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Queue {
        let running = Running::start(shared.clone());
        Queue {
            inner: Arc::new(Inner {
                dir: shared.dir().to_path_buf(),
                cfg: shared.cfg().clone(),
                instance: shared.instance(),
                running: std::sync::RwLock::new(running),
            }),
        }
    }

    /// The running store's shared state (a clone: [`Queue::reopen`] may
    /// replace it meanwhile, and calls on the old one then end `Closed`).
    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.inner
            .running
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .shared
            .clone()
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The configuration the queue runs with.
    pub fn config(&self) -> &QueueConfig {
        &self.inner.cfg
    }

    /// The store's instance id.
    pub fn instance_id(&self) -> &str {
        self.inner.instance.as_str()
    }

    /// The stable id of the event with `seq` in this store.
    pub fn event_id(&self, seq: u64) -> EventId {
        EventId::new(self.shared().instance(), seq)
    }

    /// Commits every buffered event, indexes every written one, writes the
    /// index and deletes drained body files, then stops the queue's threads
    /// and releases the store: when it returns, the directory can be opened
    /// again (by this process or another). Every call on any clone afterwards
    /// fails with [`QueueError::Closed`](crate::QueueError::Closed) (reads return nothing). Blocks the
    /// calling thread.
    ///
    /// Closing is final: a durable call that had not written its event when
    /// `close` began ends with [`QueueError::Closed`](crate::QueueError::Closed), never `Ok` (one that
    /// had, and whose sync the last round covers, gets `Ok`), and no byte
    /// reaches a body file after `close` returned.
    pub fn close(&self) {
        let r = self.inner.running.read().unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, false);
    }

    /// Closes the store and opens it again in place, for every clone of this
    /// queue: the way out of failing closed once its cause is gone (say, a
    /// full disk with room again), without restarting the process. Calls in
    /// flight on the old open end as `close` ends them; leases taken before
    /// are lost (their events are delivered again, same ids). Blocks the
    /// calling thread for a close and an open.
    ///
    /// # Errors
    ///
    /// As [`Queue::open`]; the queue then stays closed (every call fails
    /// [`QueueError::Closed`](crate::QueueError::Closed)) until a later `reopen` succeeds.
    pub fn reopen(&self) -> Result<(), crate::OpenError> {
        let mut r = self
            .inner
            .running
            .write()
            .unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, false);
        fail::fail_point!("queue::reopen");
        let shared = open::open_shared(&self.inner.dir, self.inner.cfg.clone())?;
        *r = Running::start(shared);
        tracing::info!(dir = %self.inner.dir.display(), "Store reopened.");
        Ok(())
    }

    /// For tests: stops the queue as a crash would, in-process: buffered
    /// events not yet written and sled writes not yet applied are lost (what
    /// sled applied before stays, and every written entry is in its body
    /// file); then releases the store like `close`.
    #[doc(hidden)]
    pub fn simulate_crash(&self) {
        let r = self.inner.running.read().unwrap_or_else(|e| e.into_inner());
        shutdown(&r.shared, &r.committer, true);
    }
}

impl Running {
    /// Starts the committer thread of an open store.
    fn start(shared: Arc<Shared>) -> Running {
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name("evspool-committer".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(|| commit::run(s.clone()));
                if std::panic::catch_unwind(run).is_err() {
                    // A bug, but never a hang: new events are refused and
                    // every `sync` waiter gets the error.
                    s.gate().fail_closed("the committer thread panicked");
                    s.buffer().rounds().send_modify(|m| {
                        m.completed = u64::MAX;
                        m.failed = Some((u64::MAX, Arc::from("the committer thread panicked")));
                    });
                }
            })
            .expect("spawning the committer thread");
        Running {
            shared,
            committer: Mutex::new(Some(handle)),
        }
    }
}
