//! Group commit for durable producers with `fsync = true`.
//!
//! A producer appends its own entry (`queue/log/mod.rs`), asks the syncer to sync
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
//!
//! A sync that fails transiently (reopening the body file for it ran out of
//! descriptors) is tried again after 2 ms, doubling up to 250 ms, for up to
//! [`SYNC_RETRY_FOR`]; the producers keep waiting and get `Ok` as soon as one
//! succeeds. Past that they get the transient error, the failure sticks
//! nowhere, and the committer keeps syncing the log every round. A fatal
//! failure poisons the log (G8 in `queue/log/mod.rs`) and fails the store closed.
//!
//! A panic in a pass (a bug) fails the store closed too: the logs the pass
//! had not synced announce the failure to their waiters, and the thread
//! starts again to answer later requests (`serve`).

use super::TopicLog;
use crate::queue::gate::Gate;
use crate::queue::locking::lock;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long the syncer retries a log whose `fdatasync` fails transiently
/// (out of descriptors) before it tells the waiting producers: their calls
/// end with the transient error (their events are written and will be
/// synced and delivered by a later sync), and the next request tries afresh.
pub(crate) const SYNC_RETRY_FOR: Duration = Duration::from_secs(5);

/// The first wait before a retry; it doubles up to [`SYNC_RETRY_MAX`].
const SYNC_RETRY_FIRST: Duration = Duration::from_millis(2);
const SYNC_RETRY_MAX: Duration = Duration::from_millis(250);

/// The syncer: its thread's inbox (shared with the thread) and the thread.
#[derive(Default)]
pub(crate) struct Syncer {
    inbox: Arc<Mailbox>,
    handle: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the syncer thread is asked, and its wake-up.
#[derive(Default)]
struct Mailbox {
    queue: Mutex<Inbox>,
    cv: Condvar,
}

/// Which logs have entries for the committer to index (`dirty`), and which
/// hold bytes a failed (transient) sync left unsynced: the committer syncs
/// those again every round (`commit.rs`). Leaf locks.
#[derive(Default)]
pub(crate) struct Marks {
    dirty: Mutex<BTreeSet<Arc<str>>>,
    unsynced: Mutex<BTreeSet<Arc<str>>>,
}

impl Marks {
    pub(crate) fn new(dirty: BTreeSet<Arc<str>>) -> Marks {
        Marks {
            dirty: Mutex::new(dirty),
            unsynced: Mutex::default(),
        }
    }

    /// Marks a topic's log as holding entries for the committer.
    pub(crate) fn mark_dirty(&self, topic: &Arc<str>) {
        lock(&self.dirty).insert(topic.clone());
    }

    /// Takes the topics marked dirty.
    pub(crate) fn take_dirty(&self) -> BTreeSet<Arc<str>> {
        std::mem::take(&mut *lock(&self.dirty))
    }

    /// Marks a topic's log as holding bytes a sync must cover again.
    pub(crate) fn mark_unsynced(&self, topic: &Arc<str>) {
        lock(&self.unsynced).insert(topic.clone());
    }

    /// Takes the topics marked unsynced.
    pub(crate) fn take_unsynced(&self) -> BTreeSet<Arc<str>> {
        std::mem::take(&mut *lock(&self.unsynced))
    }
}

/// A log whose last sync failed transiently, waiting to be tried again.
struct Retry {
    log: Arc<TopicLog>,
    since: Instant,
    wait: Duration,
    at: Instant,
}

#[derive(Default)]
struct Inbox {
    /// Logs to sync, keyed by address: a map, since thousands of topics may
    /// ask between two passes.
    logs: HashMap<usize, Arc<TopicLog>>,
    /// Logs to try again, by address.
    retry: HashMap<usize, Retry>,
    /// Requests since the last pass took the inbox.
    requests: u64,
    stop: bool,
}

impl Inbox {
    /// When the earliest retry is due.
    fn next_retry(&self) -> Option<Instant> {
        self.retry.values().map(|r| r.at).min()
    }

    /// Moves the retries due by `now` into `logs`.
    fn due(&mut self, now: Instant) {
        for (k, r) in &self.retry {
            if r.at <= now {
                self.logs.entry(*k).or_insert_with(|| r.log.clone());
            }
        }
    }
}

impl Syncer {
    /// Asks for `log` to be synced up to its current end.
    pub(crate) fn request(&self, log: &Arc<TopicLog>) {
        let mut q = lock(&self.inbox.queue);
        q.logs
            .entry(Arc::as_ptr(log) as usize)
            .or_insert_with(|| log.clone());
        q.requests += 1;
        drop(q);
        self.inbox.cv.notify_one();
    }

    /// Starts the thread (once, on the first request of a store with
    /// `fsync`). It gets the parts it needs: its inbox (it stops once the
    /// syncer is dropped), the logs' marks (a synced log is dirty, one that
    /// failed transiently unsynced) and the gate (a fatal failure fails the
    /// store closed).
    pub(crate) fn start(&self, marks: Arc<Marks>, gate: Arc<Gate>) {
        let mut handle = lock(&self.handle);
        if handle.is_some() {
            return;
        }
        let spawned = std::thread::Builder::new()
            .name("evspool-syncer".into())
            .spawn({
                let inbox = Arc::downgrade(&self.inbox);
                move || serve(inbox, marks, gate)
            });
        match spawned {
            Ok(h) => *handle = Some(h),
            Err(e) => tracing::error!(error = %e, "Could not start the syncer thread."),
        }
    }

    /// Stops the thread after its pending syncs (a log still failing is
    /// tried once more; its waiters learn the error).
    pub(crate) fn stop(&self) {
        lock(&self.inbox.queue).stop = true;
        self.inbox.cv.notify_all();
        if let Some(h) = lock(&self.handle).take() {
            let _ = h.join();
        }
    }
}

/// The syncer thread's body: [`run`], started again after a panic (a bug),
/// which fails the store closed; the logs the panicking pass held learned
/// the error ([`Unanswered`]), and the thread keeps answering later requests
/// instead of leaving their producers waiting for a sync that never comes.
/// A panic that repeats at every pass neither spins the thread nor keeps
/// `close` waiting: the next pass waits a pause that doubles from 10 ms to
/// 1 s, and a stop asked meanwhile ends the thread, every log still asked
/// for or waiting in the retries told the sync failed.
fn serve(inbox: Weak<Mailbox>, marks: Arc<Marks>, gate: Arc<Gate>) {
    let mut pause = Duration::from_millis(10);
    loop {
        let pass = std::panic::AssertUnwindSafe(|| run(inbox.clone(), marks.clone(), gate.clone()));
        if std::panic::catch_unwind(pass).is_ok() {
            return;
        }
        gate.fail_closed("the syncer thread panicked");
        let Some(s) = inbox.upgrade() else { return };
        let q = lock(&s.queue);
        let (mut q, _) =
            s.cv.wait_timeout_while(q, pause, |q| !q.stop)
                .unwrap_or_else(|e| e.into_inner());
        if q.stop {
            let logs = std::mem::take(&mut q.logs)
                .into_values()
                .chain(std::mem::take(&mut q.retry).into_values().map(|r| r.log));
            let mut unanswered = Unanswered(logs.map(|l| (0, l)).collect(), &gate);
            drop(q);
            unanswered.announce();
            return;
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// The logs of a pass not synced yet: a panic in the pass (a bug) announces
/// to each one's waiters that their sync failed, so none waits forever.
struct Unanswered<'a>(Vec<(usize, Arc<TopicLog>)>, &'a Gate);

impl Unanswered<'_> {
    /// Fails the store closed, then tells each log's waiters that the sync
    /// they wait for failed: in that order, so no producer woken by the
    /// error can write again before the store refuses it.
    fn announce(&mut self) {
        self.1.fail_closed("the syncer thread panicked");
        for (_, log) in self.0.drain(..) {
            log.announce_failure(
                log.end(),
                crate::queue::storage::StorageError::io(
                    "sync",
                    std::io::Error::other("the syncer thread panicked"),
                ),
            );
        }
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.announce();
        }
    }
}

fn run(inbox: Weak<Mailbox>, marks: Arc<Marks>, gate: Arc<Gate>) {
    // What the previous pass served, and how long its syncs took.
    let mut served = 0u64;
    let mut sync_took = Duration::from_micros(200);
    loop {
        let (taken, stopping) = {
            let Some(s) = inbox.upgrade() else { return };
            let mut q = lock(&s.queue);
            loop {
                let now = Instant::now();
                if q.stop {
                    // Everything waiting is tried once more, now.
                    let retry: Vec<(usize, Arc<TopicLog>)> =
                        q.retry.iter().map(|(k, r)| (*k, r.log.clone())).collect();
                    for (k, log) in retry {
                        q.logs.entry(k).or_insert(log);
                    }
                    break;
                }
                q.due(now);
                if !q.logs.is_empty() {
                    break;
                }
                let until = q
                    .next_retry()
                    .unwrap_or(now + Duration::from_millis(200))
                    .min(now + Duration::from_millis(200));
                q =
                    s.cv.wait_timeout(q, until.saturating_duration_since(now))
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
                q =
                    s.cv.wait_timeout(q, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
            }
            served = std::mem::take(&mut q.requests);
            (std::mem::take(&mut q.logs), q.stop)
        };
        let Some(s) = inbox.upgrade() else { return };
        let started = Instant::now();
        // A log leaves `left` once its outcome is handled.
        let mut left = Unanswered(taken.into_iter().collect(), &gate);
        while let Some((key, log)) = left.0.last().cloned() {
            fail::fail_point!("queue::sync::before_sync");
            let outcome = log.sync();
            left.0.pop();
            let mut q = lock(&s.queue);
            match outcome {
                Ok(()) => {
                    q.retry.remove(&key);
                    drop(q);
                    // Synced entries may be indexed now: let the committer in early.
                    marks.mark_dirty(log.topic.arc());
                }
                Err(e) if e.is_transient() => {
                    let now = Instant::now();
                    let r = q.retry.entry(key).or_insert_with(|| Retry {
                        log: log.clone(),
                        since: now,
                        wait: SYNC_RETRY_FIRST,
                        at: now,
                    });
                    let given_up = stopping || now.duration_since(r.since) >= SYNC_RETRY_FOR;
                    if given_up {
                        q.retry.remove(&key);
                        drop(q);
                        metrics::counter!("evspool_transient_write_errors_total").increment(1);
                        tracing::warn!(topic = %log.topic, error = %e, "A body file could not be synced for lack of file descriptors; its waiting producers get the error (their events are written and will be synced by a later sync).");
                        log.announce_failure(log.end(), e);
                        // The committer syncs it again every round.
                        marks.mark_unsynced(log.topic.arc());
                    } else {
                        r.at = now + r.wait;
                        r.wait = (r.wait * 2).min(SYNC_RETRY_MAX);
                    }
                }
                Err(e) => {
                    q.retry.remove(&key);
                    drop(q);
                    // The log announced it to its waiters (G8 in `queue/log/mod.rs`).
                    gate.fail_closed(&e.to_string());
                }
            }
        }
        sync_took = started.elapsed();
    }
}
