//! Accounting and the overflow policies.
//!
//! # Invariants
//!
//! - C1: `Totals` equals the sum over every live event (open, sealed, being
//!   committed, appended but not yet indexed, indexed in any state; dead letters
//!   excluded) of 1 event and its payload length. It changes only inside a
//!   transition, in the critical section that changes the event's state
//!   (`queue/index/chunk.rs`, `queue/enqueue.rs`, `queue/commit.rs`), and never
//!   wraps: a subtraction below zero is a bug, caught by a debug assertion and
//!   clamped (and counted) in release builds. Rebuilt exactly at open from the
//!   index; `Queue::verify` recounts it and repairs drift.
//! - C2: the ceiling check is O(1): two atomic loads against the configured limits.
//! - C4: the ceiling bounds everything on disk: live events, dead letters
//!   (their payload bytes) and quarantined bytes (quarantine itself keeps at
//!   most an eighth of `max_bytes`, up to `QUARANTINE_MAX_BYTES`). Under
//!   `drop_oldest` the oldest stored event goes first, queued or a dead
//!   letter (by seq), each counted.
//! - C3: every event a policy or `max_age` discards is counted under a
//!   [`DropReason`], per topic, and reported by `stats`; the counts are
//!   written to sled with the index, so they survive a restart (a crash may
//!   lose the drops of the last commit round; a lost sled file, all of them).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why an event was discarded. These are the only ways evspool drops an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropReason {
    /// A new event arrived at the ceiling under `drop_newest`.
    CeilingNewest,
    /// An old event was evicted to make room under `drop_oldest`.
    CeilingOldest,
    /// The event was older than `max_age` when leased.
    MaxAge,
    /// The event was accepted buffered but its commit failed (the store is failing closed).
    StorageError,
}

impl DropReason {
    /// The reason's code in the store (persisted drop counters).
    pub(crate) fn code(self) -> u64 {
        match self {
            Self::CeilingNewest => 1,
            Self::CeilingOldest => 2,
            Self::MaxAge => 3,
            Self::StorageError => 4,
        }
    }

    /// The reason of a persisted code.
    pub(crate) fn from_code(code: u64) -> Option<Self> {
        [
            Self::CeilingNewest,
            Self::CeilingOldest,
            Self::MaxAge,
            Self::StorageError,
        ]
        .into_iter()
        .find(|r| r.code() == code)
    }

    /// The reason's stable name, used in stats and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CeilingNewest => "ceiling_newest",
            Self::CeilingOldest => "ceiling_oldest",
            Self::MaxAge => "max_age",
            Self::StorageError => "storage_error",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The ceiling part of a store: what it counts and the waiting for room.
#[derive(Default)]
pub(crate) struct Ceiling {
    /// Live events and bytes, dead letters, quarantine (C1, C4).
    totals: Totals,
    /// Events dropped, per topic and reason (C3).
    drops: Drops,
    /// Wakes producers waiting for room.
    space: Space,
}

impl Ceiling {
    pub(crate) fn new(totals: Totals, drops: Drops) -> Ceiling {
        Ceiling {
            totals,
            drops,
            space: Space::default(),
        }
    }

    /// What the ceiling counts.
    pub(crate) fn totals(&self) -> &Totals {
        &self.totals
    }

    /// The drop counters.
    pub(crate) fn drops(&self) -> &Drops {
        &self.drops
    }

    /// Waiting for room.
    pub(crate) fn space(&self) -> &Space {
        &self.space
    }
}

/// Live events and bytes in the whole queue (C1), and what else the ceiling
/// counts: dead letters and quarantined bytes (C4).
#[derive(Default)]
pub(crate) struct Totals {
    events: AtomicU64,
    bytes: AtomicU64,
    dead_events: AtomicU64,
    dead_bytes: AtomicU64,
    quarantine_bytes: AtomicU64,
}

impl Totals {
    pub(crate) fn add(&self, events: u64, bytes: u64) {
        self.events.fetch_add(events, Ordering::AcqRel);
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Removes live events; never wraps (C1).
    pub(crate) fn sub(&self, events: u64, bytes: u64) {
        let under = |name: &'static str, cell: &AtomicU64, n: u64| {
            let prev = cell
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(n))
                })
                .unwrap_or(0);
            if prev < n {
                debug_assert!(false, "live {name} would go below zero: {prev} - {n}");
                metrics::counter!("evspool_accounting_underflows_total").increment(1);
                tracing::error!(
                    counter = name,
                    had = prev,
                    removed = n,
                    "Live-event accounting went below zero; clamped. Run `evspool verify` to recount."
                );
            }
        };
        under("events", &self.events, events);
        under("bytes", &self.bytes, bytes);
    }

    /// Dead letters join the store (C4). A settle adds them before its
    /// transitions subtract them from the live events, so the ceiling never
    /// sees room that is not there.
    pub(crate) fn add_dead(&self, events: u64, bytes: u64) {
        self.dead_events.fetch_add(events, Ordering::AcqRel);
        self.dead_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Dead letters leave the store (replayed, purged, evicted).
    pub(crate) fn sub_dead(&self, events: u64, bytes: u64) {
        let sub = |cell: &AtomicU64, n: u64| {
            let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.dead_events, events);
        sub(&self.dead_bytes, bytes);
    }

    /// Dead letters (events, bytes).
    pub(crate) fn dead(&self) -> (u64, u64) {
        (
            self.dead_events.load(Ordering::Acquire),
            self.dead_bytes.load(Ordering::Acquire),
        )
    }

    /// Replaces the dead-letter totals with a recount (`Queue::verify`).
    pub(crate) fn set_dead(&self, events: u64, bytes: u64) {
        self.dead_events.store(events, Ordering::Release);
        self.dead_bytes.store(bytes, Ordering::Release);
    }

    /// The bytes quarantine holds now.
    pub(crate) fn set_quarantine(&self, bytes: u64) {
        self.quarantine_bytes.store(bytes, Ordering::Release);
    }

    /// What the ceiling counts (C4): live events and dead letters, and their
    /// bytes with quarantine's.
    pub(crate) fn stored(&self) -> (u64, u64) {
        let (e, b) = self.get();
        let (de, db) = self.dead();
        (
            e + de,
            b + db + self.quarantine_bytes.load(Ordering::Acquire),
        )
    }

    /// Adds `events` of `bytes` if they fit under both limits with what else
    /// is stored, atomically (the ceiling is never overshot by concurrent
    /// producers).
    pub(crate) fn try_reserve(
        &self,
        events: u64,
        bytes: u64,
        max_events: u64,
        max_bytes: u64,
    ) -> bool {
        let (de, db) = self.dead();
        let qb = self.quarantine_bytes.load(Ordering::Acquire);
        let max_events = max_events.saturating_sub(de);
        let max_bytes = max_bytes.saturating_sub(db + qb);
        let ok_events = self
            .events
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v + events <= max_events).then_some(v + events)
            })
            .is_ok();
        if !ok_events {
            return false;
        }
        let ok_bytes = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v + bytes <= max_bytes).then_some(v + bytes)
            })
            .is_ok();
        if !ok_bytes {
            self.events.fetch_sub(events, Ordering::AcqRel);
        }
        ok_bytes
    }

    /// Replaces the totals with a recount (`Queue::verify`).
    pub(crate) fn set(&self, events: u64, bytes: u64) {
        self.events.store(events, Ordering::Release);
        self.bytes.store(bytes, Ordering::Release);
    }

    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.events.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }
}

/// Drop counters per topic and reason (C3), since the store was made: loaded
/// at open, written to sled with the index (`queue/ops.rs`).
#[derive(Default)]
pub(crate) struct Drops {
    map: Mutex<BTreeMap<(Arc<str>, DropReason), u64>>,
    /// The counts sled holds (last written).
    persisted: Mutex<BTreeMap<(Arc<str>, DropReason), u64>>,
}

impl Drops {
    pub(crate) fn count(&self, topic: &Arc<str>, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        metrics::counter!("evspool_events_dropped_total", "topic" => topic.to_string(), "reason" => reason.as_str()).increment(n);
        tracing::debug!(topic = %topic, reason = %reason, events = n, "Events dropped.");
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((topic.clone(), reason)).or_default() += n;
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<(Arc<str>, DropReason), u64> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The counts loaded at open (they are in sled already).
    pub(crate) fn loaded(counts: BTreeMap<(Arc<str>, DropReason), u64>) -> Drops {
        Drops {
            map: Mutex::new(counts.clone()),
            persisted: Mutex::new(counts),
        }
    }

    /// The counts that changed since they were last written, marked written
    /// (the caller writes them; a failed write is retried by `unwritten`).
    pub(crate) fn take_changed(&self) -> Vec<((Arc<str>, DropReason), u64)> {
        let now = self.snapshot();
        let mut done = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        let changed: Vec<_> = now
            .into_iter()
            .filter(|(k, n)| done.get(k) != Some(n))
            .collect();
        for (k, n) in &changed {
            done.insert(k.clone(), *n);
        }
        changed
    }

    /// Forgets that `counts` were written (their write failed).
    pub(crate) fn unwritten(&self, counts: &[((Arc<str>, DropReason), u64)]) {
        let mut done = self.persisted.lock().unwrap_or_else(|e| e.into_inner());
        for (k, _) in counts {
            done.remove(k);
        }
    }
}

/// Wakes producers waiting for space (the `block` policy) or for the committer
/// to catch up (pending backpressure), from sync and async code alike.
///
/// A signal with nobody waiting is two atomic operations (every ack and
/// commit round signals; a drain of 1M events signalled 20,000 times, each
/// taking a lock and a `Notify`'s lock, ~5 % of its time). No wake-up is
/// lost: a waiter counts itself in `waiters` before it reads the generation,
/// and a signal bumps the generation before it reads `waiters` (both
/// `SeqCst`), so either the waiter sees the new generation or the signal
/// sees the waiter; and the signal takes the lock before notifying, so a
/// waiter between its check (under the lock) and its wait is not missed.
#[derive(Default)]
pub(crate) struct Space {
    generation: AtomicU64,
    waiters: AtomicU64,
    lock: Mutex<()>,
    cv: Condvar,
    notify: tokio::sync::Notify,
}

/// Counts a waiter in [`Space::waiters`] while it lives.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(waiters: &'a AtomicU64) -> Self {
        waiters.fetch_add(1, Ordering::SeqCst);
        Waiting(waiters)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Space {
    /// Announces that space may have been freed.
    pub(crate) fn signal(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        // Between the two steps: a waiter arriving now sees the new
        // generation (a test stops a signal here).
        fail::fail_point!("queue::ceiling::signal");
        if self.waiters.load(Ordering::SeqCst) == 0 {
            return;
        }
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()));
        self.cv.notify_all();
        self.notify.notify_waiters();
    }

    /// The current generation; pass it to a wait to avoid missing a signal.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Blocks the thread until a signal after `seen` or until `deadline`.
    pub(crate) fn wait_sync(&self, seen: u64, deadline: Instant) {
        let _counted = Waiting::new(&self.waiters);
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.generation() == seen {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits asynchronously until a signal after `seen` or until `deadline`.
    pub(crate) async fn wait_async(&self, seen: u64, deadline: Instant) {
        let _counted = Waiting::new(&self.waiters);
        let notified = self.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.generation() != seen {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        // A bounded sleep on a plain thread keeps this runtime-agnostic: the wait is
        // over at the signal or the deadline, whichever comes first.
        let _ = tokio::time::timeout(left.min(Duration::from_secs(3600)), notified).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_racing_a_waiter_is_never_lost() {
        // Each round a thread waits for the generation it read to move while
        // this one signals once: a lost wake-up would hold it to the 20 s
        // deadline.
        let space = Arc::new(Space::default());
        let start = Instant::now();
        for _ in 0..2_000 {
            let seen = space.generation();
            let waiter = {
                let space = space.clone();
                std::thread::spawn(move || {
                    space.wait_sync(seen, Instant::now() + Duration::from_secs(20));
                    space.generation()
                })
            };
            space.signal();
            assert!(waiter.join().unwrap() > seen);
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        for _ in 0..2_000 {
            let seen = space.generation();
            let waiter = {
                let space = space.clone();
                rt.spawn(async move {
                    space
                        .wait_async(seen, Instant::now() + Duration::from_secs(20))
                        .await;
                    space.generation()
                })
            };
            space.signal();
            assert!(rt.block_on(waiter).unwrap() > seen);
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "a wait ran to its deadline: {:?}",
            start.elapsed()
        );
        assert_eq!(space.waiters.load(Ordering::SeqCst), 0, "every waiter left");
    }

    #[test]
    fn a_wait_async_dropped_mid_wait_leaves_no_waiter_counted_and_a_later_wait_still_wakes() {
        let space = Arc::new(Space::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for _ in 0..100 {
                let seen = space.generation();
                let mut w =
                    Box::pin(space.wait_async(seen, Instant::now() + Duration::from_secs(20)));
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                assert!(w.as_mut().poll(&mut cx).is_pending());
                assert_eq!(space.waiters.load(Ordering::SeqCst), 1);
                drop(w);
                assert_eq!(space.waiters.load(Ordering::SeqCst), 0, "leaked");
            }
            let seen = space.generation();
            let s2 = space.clone();
            let t = tokio::spawn(async move {
                s2.wait_async(seen, Instant::now() + Duration::from_secs(20))
                    .await
            });
            tokio::task::yield_now().await;
            space.signal();
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("woken")
                .unwrap();
        });
    }

    #[test]
    fn a_waiter_arriving_in_the_middle_of_a_signal_is_not_left_waiting() {
        // A signal stopped between its two steps (the generation bumped, the
        // waiters not yet read) while a waiter that read the generation
        // before the signal counts itself and checks: it must not sleep to
        // its deadline. Were the steps swapped (waiters read first, as 0),
        // the waiter would miss the signal and this would take 20 s.
        let scenario = fail::FailScenario::setup();
        let space = Arc::new(Space::default());
        let seen = space.generation();
        let stop: Arc<(Mutex<(bool, bool)>, Condvar)> = Arc::default();
        let s = stop.clone();
        fail::cfg_callback("queue::ceiling::signal", move || {
            // Other tests of this binary signal too: stop only ours.
            if std::thread::current().name() != Some("stopped-signal") {
                return;
            }
            let (m, cv) = &*s;
            let mut g = m.lock().unwrap();
            g.0 = true;
            cv.notify_all();
            while !g.1 {
                g = cv.wait(g).unwrap();
            }
        })
        .unwrap();
        let signaller = {
            let space = space.clone();
            std::thread::Builder::new()
                .name("stopped-signal".into())
                .spawn(move || space.signal())
                .unwrap()
        };
        let (m, cv) = &*stop;
        drop(cv.wait_while(m.lock().unwrap(), |g| !g.0).unwrap());
        let start = Instant::now();
        let waiter = {
            let space = space.clone();
            std::thread::spawn(move || {
                space.wait_sync(seen, Instant::now() + Duration::from_secs(20));
            })
        };
        // Let the signal go on once the waiter has returned or counted itself.
        while !waiter.is_finished() && space.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        m.lock().unwrap().1 = true;
        cv.notify_all();
        signaller.join().unwrap();
        waiter.join().unwrap();
        fail::remove("queue::ceiling::signal");
        scenario.teardown();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the waiter slept to its deadline: {:?}",
            start.elapsed()
        );
    }

    #[test]
    fn totals_add_and_subtract_back_to_zero() {
        let t = Totals::default();
        t.add(9, 900);
        t.add(1, 0);
        assert_eq!(t.get(), (10, 900));
        t.sub(10, 900);
        assert_eq!(t.get(), (0, 0));
    }

    #[test]
    fn a_reservation_never_overshoots_either_limit() {
        let t = Totals::default();
        assert!(t.try_reserve(8, 800, 10, 1000));
        assert!(!t.try_reserve(3, 10, 10, 1000), "events would be 11");
        assert!(!t.try_reserve(1, 201, 10, 1000), "bytes would be 1001");
        assert_eq!(
            t.get(),
            (8, 800),
            "a refused reservation leaves nothing behind"
        );
        assert!(t.try_reserve(2, 200, 10, 1000));
    }

    #[test]
    fn drops_are_counted_per_topic_and_reason() {
        let d = Drops::default();
        let a: Arc<str> = Arc::from("a");
        d.count(&a, DropReason::MaxAge, 3);
        d.count(&a, DropReason::MaxAge, 2);
        d.count(&a, DropReason::CeilingNewest, 0);
        let snap = d.snapshot();
        assert_eq!(snap.get(&(a.clone(), DropReason::MaxAge)), Some(&5));
        assert_eq!(snap.len(), 1);
    }
}
