//! Group appends: durable producers of one topic share one write.
//!
//! A durable producer does not write its own entry while another producer of
//! the same topic writes: it queues its request and awaits. The producer that
//! found no writer leads: it takes every queued request and writes them all
//! with one call ([`TopicLog::append_group`]: one reservation, seq range and
//! outcome per request, one `pwrite` for all), wakes their producers, and
//! takes again whatever queued meanwhile, for at most [`LEAD_ROUNDS`] takes.
//! Producers that wait await (they never block a runtime thread), so while
//! one write runs the runtime's other producers queue behind it, and the
//! next write carries all of them — the group commit of a WAL, applied to the
//! write itself, where a lock would have made each producer sleep and wake
//! for its own write.
//!
//! A waiting producer first reschedules itself, up to [`SPIN_POLLS`] times,
//! looking at its outcome (and whether the lead is free) at each poll; then
//! it parks on its `Notify`, and the leader wakes it when its write is done.
//! On a runtime of several threads a parked producer is expensive to wake:
//! the leader's wake pushes it onto the leader's thread, which, finding
//! another worker idle, unparks it (an `eventfd` write, then that thread's
//! return from `epoll_wait`: ~5 µs each in the 2-vCPU VM measured), and the
//! woken worker steals half of the producers the write woke. With every
//! producer parked for each write, a worker went idle between writes and
//! was woken again for the next: 16 producers on 2 runtime threads ran at
//! 0.94 parks and 0.045 context switches per event, and at 0.55–0.9 M
//! events/s where one runtime thread made 0.9–1.07 M. A producer that
//! reschedules itself instead keeps its worker busy for the few µs a write
//! takes, so the leader's thread finds no idle worker to wake and the
//! other thread turns its producers around while the leader writes: 0.05
//! parks and 0.001 context switches per event (docs/performance.md, ninth
//! session). The spin is bounded — a write delayed for longer (a committer
//! round holding the log, a slow disk) finds its producers parked after
//! [`SPIN_POLLS`] polls each — and each poll reschedules the task behind
//! the tasks in its worker's run queue, which run between its polls (tasks
//! woken from outside the runtime wait for the worker's periodic look at
//! the shared queue, as they always do). A leader whose take finds requests queued during
//! its write yields once — the producers its write woke run and queue their
//! next requests — and carries them all in its next take, for at most
//! [`LEAD_ROUNDS`] takes; then it hands the lead on, waking the producers
//! still queued (W3). A contended leader also yields once before its first take,
//! so the producers runnable on its thread queue first. Each yield
//! reschedules the task (not `yield_now`, which waits for the runtime's
//! next I/O poll).
//!
//! Nothing here burns a core waiting beyond [`SPIN_POLLS`] reschedules per
//! request, so the result does not depend on how many runtime threads there
//! are or what else the machine runs. Before
//! (2026-12-07), waiting producers polled themselves while the topic's
//! writes progressed, and a leader took again at once after each write. The
//! pollers on other runtime threads competed with the writer for the cores:
//! with one or both cores taken by a busy loop (`yes > /dev/null`) 16
//! producers fell to 0.66–0.85× yaque (`perf_report durable`), and some runs
//! on a quiet machine fell into a slow mode (0.56 M events/s, 3.4 µs of CPU
//! per event instead of 1.1 M and 1.7 µs). Now: 1.02–1.62× over 13 runs,
//! quiet and loaded, on runtimes of 1, 2 and 4 threads (docs/performance.md).
//!
//! A leader yields only when producers contend (the last take carried more
//! than one request) — and every [`PROBE_EVERY`]th lead anyway. Without the
//! probe the result depended on the scheduler: on a runtime of one thread a
//! producer whose append completes at its first poll runs its whole loop
//! without letting the others queue, so every event was a write of its own
//! (16 producers: 0.59–0.66× yaque, against 1.2× on two threads). With it
//! the first probe lets the others queue, the take carries them, and the
//! leaders after it yield; a lone producer pays one reschedule per 64
//! writes.
//!
//! Invariants:
//!
//! - **W1** At most one leader per topic: `leading` is set and cleared under
//!   the queue lock, together with the look at the queue, so a request
//!   queued while a leader runs is taken by it or finds no leader and leads.
//!   A lead taken over (W7) has a new epoch; the leader it was taken from
//!   finds the epoch changed before it could write again.
//! - **W2** A request is written at most once, whole, in queue order; its
//!   producer learns the outcome of exactly that write.
//! - **W3** A leader that stops with requests still queued clears `leading`
//!   and wakes every queued producer; the first to run leads and takes them
//!   all. (Waking only the oldest left the others waiting on a future its
//!   owner may hold unpolled for a while — a `select!` on `&mut fut` that
//!   took another branch — and, if that owner waited on one of them, for
//!   ever.)
//! - **W4** A producer whose future is dropped while its request waits takes
//!   the request out of the queue (nothing of it is written), gives up the
//!   lead if it held it (a leader yields once before its first take, so the
//!   producers runnable on its thread join that take) and, when no leader
//!   runs, wakes the queued ones (W3); a request already taken is written anyway (the
//!   documented cancel safety of `enqueue_durable`).
//! - **W5** A waiting producer is rescheduled at most [`SPIN_POLLS`] times
//!   by itself, then parks until its write is done or it is called to lead:
//!   after a bounded number of polls it costs the runtime a parked task,
//!   never a busy one; a write's outcome is set (`done`) before its producer
//!   is notified, so the wake is never missed, and a notification that came
//!   while the producer was not parked leaves a permit its park consumes.
//! - **W6** A leader that panics inside its write (a bug: the write itself
//!   reports failures as outcomes) hangs nobody and lets nothing land on a
//!   log in an unknown state: the unwind poisons the log (the write may have
//!   taken the queued traces, reserved room under the ceiling and written
//!   bytes past `end`: a later append would overwrite them), answers every
//!   request of its take that has no outcome yet with an error (the request
//!   is not known to be written; its producer gets its payloads back), and
//!   drops the leader's future, which gives up the lead and wakes the next
//!   (W4); the producer path fails the store closed on the way out
//!   (`queue/enqueue.rs`), and a reopen reads the file as it is. Before, the
//!   lead stayed taken and every later durable producer of the topic waited
//!   for a leader that never came.
//! - **W7** A leader held unpolled in one of its yields holds nobody up: a
//!   leader marks the lead `yielding` for the yield, wakes every parked
//!   producer (a producer marks itself parked under the queue lock, where
//!   it decides to park, so a yield starting after that decision sees it;
//!   a withdraw during a yield wakes the queued too), and when polled back
//!   keeps the lead only if its `epoch` is unchanged. A waiting producer that would park (its spin
//!   done) behind a yielding leader takes the lead over (a new epoch) and
//!   writes at once, without a yield of its own. The old leader, polled
//!   back, writes nothing more and waits for its request as any producer
//!   does (it was taken, or is still queued); dropped, it leaves the new
//!   leader's lead alone (W4 compares epochs). A leader in a write is not
//!   yielding, so at most one producer writes at a time (W1). Before (found
//!   by the review of W5), a producer that took the lead and yielded, whose
//!   owner then stopped polling it (a `select!` on `&mut fut` that took
//!   another branch), left every other producer of the topic parked.

use super::appended::{keep_scratch, take_scratch};
use super::entry::{self, EntryKind};
use super::{Admit, Appended, Bodies, DurableAppend, TopicLog};
use crate::queue::ceiling::Totals;
use crate::queue::locking::lock;
use crate::queue::storage::StorageError;
use crate::record::{self, ChunkIndex, StoredEvent};
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// What one request's append did (see [`TopicLog::append_group`]).
type Outcome = Result<Option<DurableAppend>, StorageError>;

/// The requests waiting for a topic's next write.
pub(crate) struct GroupQueue {
    waiting: Mutex<Waiting>,
    /// Polls a waiting producer reschedules itself for before it parks (W5):
    /// [`SPIN_POLLS`]; the tests of parking set 0.
    spin_polls: u32,
}

impl Default for GroupQueue {
    fn default() -> GroupQueue {
        GroupQueue {
            waiting: Mutex::default(),
            spin_polls: SPIN_POLLS,
        }
    }
}

#[derive(Default)]
struct Waiting {
    queue: VecDeque<Arc<Slot>>,
    leading: bool,
    /// Counts leads taken (W7): a leader that finds it changed across its
    /// yield was taken over and leads no more.
    epoch: u64,
    /// The leader is in one of its yields: before its first take or between
    /// two (W7).
    yielding: bool,
    /// Requests the last take carried: more than one means producers contend.
    last_take: usize,
    /// Leads so far: every [`PROBE_EVERY`]th yields before its take.
    leads: u32,
    /// Takes written so far (one write each).
    takes: u64,
}

/// A leader yields before its take when the last take carried more than one
/// request, and every this many leads anyway (a probe).
const PROBE_EVERY: u32 = 64;

/// Polls a waiting producer reschedules itself for, looking at its outcome,
/// before it parks (W5): about the time one group write of 16 requests takes
/// from the producers' side (~20 µs with 8 producers on the thread). Measured
/// with 16 producers on 2 runtime threads, 16 rounds each, ratio to yaque
/// (`perf_report durable`'s row): 0 polls median 1.25× (0.87–1.62), 16 polls
/// 1.44× (0.95–1.67), 32 polls 1.42× (0.76–1.68); with one core taken by a
/// busy loop, 0 polls 1.28× and 16 polls 1.25×; with both, 1.26× and 1.47×.
const SPIN_POLLS: u32 = 16;

/// Takes a leader writes before handing on (W3): enough that the producers
/// its writes woke are carried by a running leader rather than one that must
/// first be woken, few enough that its own caller returns.
const LEAD_ROUNDS: usize = 4;

/// One producer's request and, once written, its outcome.
struct Slot {
    /// Locked by the leader while it writes; given back to the producer after.
    payloads: Mutex<Vec<Bytes>>,
    outcome: Mutex<Option<Outcome>>,
    /// Set once `outcome` is.
    done: AtomicBool,
    /// Set, under the queue lock, when its producer decides to park on
    /// `wake`; cleared once it is woken: a yielding leader wakes every such
    /// producer (W7).
    parked: AtomicBool,
    wake: Notify,
}

/// Takes a dropped producer's request out of the queue and, if it was about
/// to lead, gives the lead up (W4).
struct Withdraw<'a> {
    log: &'a TopicLog,
    slot: &'a Arc<Slot>,
    armed: bool,
    /// The epoch of the lead this producer holds (W7), while it holds it
    /// across a yield or a write.
    leading: Option<u64>,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut w = lock(&self.log.group.waiting);
        w.queue.retain(|s| !Arc::ptr_eq(s, self.slot));
        // A lead taken over meanwhile (W7) is not this producer's to give up.
        if self.leading == Some(w.epoch) {
            w.leading = false;
            w.yielding = false;
        }
        wake_queued(w);
    }
}

/// A take's requests, answered with an error if the leader unwinds before
/// it set their outcomes, and the log poisoned (W6); forgotten once the
/// outcomes are set.
struct AnswerOnUnwind<'a>(&'a TopicLog, &'a [Arc<Slot>]);

impl Drop for AnswerOnUnwind<'_> {
    fn drop(&mut self) {
        // The write may have taken the queued traces, reserved room and
        // written bytes past `end`: nothing more may land on this log.
        self.0.lock().poisoned = Some(StorageError::io(
            "append",
            std::io::Error::other(
                "a write to this body file panicked; it takes no more writes until the store is reopened",
            ),
        ));
        for slot in self.1 {
            let mut outcome = lock(&slot.outcome);
            if slot.done.load(Ordering::Acquire) {
                continue;
            }
            *outcome = Some(Err(StorageError::io(
                "append",
                std::io::Error::other(
                    "the write carrying this request panicked; it is not known to be written",
                ),
            )));
            drop(outcome);
            slot.done.store(true, Ordering::Release);
            slot.wake.notify_one();
        }
    }
}

/// Returns on its second poll, rescheduled behind the runtime's runnable tasks.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            return std::task::Poll::Ready(());
        }
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

/// Wakes every queued request's producer, unless a leader is running (not
/// in a yield, where any of them may take the lead over): the first to run
/// leads (W3, W4, W7).
fn wake_queued(w: MutexGuard<'_, Waiting>) {
    let queued: Vec<Arc<Slot>> = if w.leading && !w.yielding {
        Vec::new()
    } else {
        w.queue.iter().cloned().collect()
    };
    drop(w);
    for slot in queued {
        slot.wake.notify_one();
    }
}

impl TopicLog {
    /// A durable producer's own append: [`TopicLog::append_group`] of one request.
    #[cfg(test)]
    pub(crate) fn append_events(
        &self,
        b: &Bodies,
        payloads: &[Bytes],
        now_ms: u64,
        limits: (usize, u64),
        totals: &Totals,
        reserve: &dyn Fn(&Totals, u64, u64) -> bool,
    ) -> Result<Option<DurableAppend>, StorageError> {
        self.append_group(b, &[(payloads, now_ms)], limits, totals, reserve)
            .pop()
            .expect("one outcome per request")
    }

    /// Durable producers' appends, written together in one call: for each
    /// request `(payloads, now_ms)` in order, reserves its events under the
    /// ceiling with `reserve` (under this lock, so the totals and the log
    /// agree at every instant), takes its seqs and encodes it as chunk records
    /// of at most `max_events` events and `max_bytes` bytes; then one write
    /// covers every reserved request. Returns one outcome per request: what it
    /// did, `None` if `reserve` refused it (nothing written or taken), or the
    /// write's error (shared by every reserved request; their reservations
    /// are returned).
    pub(crate) fn append_group(
        &self,
        b: &Bodies,
        requests: &[(&[Bytes], u64)],
        (max_events, max_bytes): (usize, u64),
        totals: &Totals,
        reserve: &dyn Fn(&Totals, u64, u64) -> bool,
    ) -> Vec<Result<Option<DurableAppend>, StorageError>> {
        /// One reserved request: its seqs, usage and entries (offset in the
        /// buffer, span, first seq, summary).
        struct Planned {
            first: u64,
            events: u64,
            bytes: u64,
            entries: std::ops::Range<usize>,
        }
        let mut st = self.lock();
        let mut buf = take_scratch();
        buf.clear();
        let mut plans: Vec<Option<Planned>> = Vec::with_capacity(requests.len());
        let mut entries: Vec<(u64, u64, u64, ChunkIndex)> = Vec::with_capacity(requests.len());
        for &(payloads, now_ms) in requests {
            let n = payloads.len() as u64;
            let bytes: u64 = payloads.iter().map(|p| p.len() as u64).sum();
            if n == 0 || !reserve(totals, n, bytes) {
                plans.push(None);
                continue;
            }
            let first = b.next_seq.fetch_add(n, Ordering::AcqRel);
            let from = entries.len();
            let mut encode = |s: usize, e: usize, buf: &mut Vec<u8>| {
                let event = |i: usize| StoredEvent {
                    seq: first + i as u64,
                    enqueued_at_ms: now_ms,
                    payload: &payloads[i],
                };
                let at = buf.len();
                buf.extend_from_slice(&[0u8; entry::ENTRY_HEADER as usize]);
                let summary = if e - s == 1 {
                    // The common single event: no vector.
                    let one = [event(s)];
                    record::encode_chunk_into(buf, &one);
                    ChunkIndex::of(&one)
                } else {
                    let events: Vec<StoredEvent<'_>> = (s..e).map(event).collect();
                    record::encode_chunk_into(buf, &events);
                    ChunkIndex::of(&events)
                };
                let rec_len = (buf.len() - at) as u64 - entry::ENTRY_HEADER;
                let h = entry::header(first + s as u64, rec_len as u32, EntryKind::New, self.salt);
                buf[at..at + entry::ENTRY_HEADER as usize].copy_from_slice(&h);
                entries.push((
                    at as u64,
                    (buf.len() - at) as u64,
                    first + s as u64,
                    summary,
                ));
            };
            let (mut start, mut gbytes) = (0usize, 0u64);
            for (i, p) in payloads.iter().enumerate() {
                let len = p.len() as u64;
                if i > start && (i - start >= max_events || gbytes + len > max_bytes) {
                    encode(start, i, &mut buf);
                    start = i;
                    gbytes = 0;
                }
                gbytes += len;
            }
            encode(start, payloads.len(), &mut buf);
            plans.push(Some(Planned {
                first,
                events: n,
                bytes,
                entries: from..entries.len(),
            }));
        }
        if buf.is_empty() {
            keep_scratch(buf);
            return plans.iter().map(|_| Ok(None)).collect();
        }
        let (generation, at) =
            match self.write(&mut st, b, Admit::Producer, &[&buf], buf.len() as u64) {
                Ok(w) => w,
                Err(e) => {
                    keep_scratch(buf);
                    return plans
                        .into_iter()
                        .map(|p| match p {
                            Some(p) => {
                                totals.sub(p.events, p.bytes);
                                Err(e.clone())
                            }
                            None => Ok(None),
                        })
                        .collect();
                }
            };
        keep_scratch(buf);
        plans
            .into_iter()
            .map(|p| {
                let Some(p) = p else { return Ok(None) };
                let before = st.unindexed.len();
                let mut end = at;
                for &(off, span, first_seq, summary) in &entries[p.entries.clone()] {
                    st.unindexed.push(Appended {
                        first_seq,
                        index: summary.placed(generation, at + off, span as u32),
                    });
                    end = at + off + span;
                }
                st.unindexed_usage.add(p.events, p.bytes);
                *st.inflight.entry(generation).or_default() += p.entries.len() as u64;
                Ok(Some(DurableAppend {
                    first: p.first,
                    end: (generation, end),
                    first_waiting: before == 0,
                    waiting: st.unindexed_usage.events,
                }))
            })
            .collect()
    }

    /// Appends `payloads` as one request of a group write (see the module
    /// docs) and returns its outcome, as [`TopicLog::append_events`] would,
    /// and the payloads (for a retry after a refused reservation).
    pub(crate) async fn append_shared(
        &self,
        b: &Bodies,
        payloads: Vec<Bytes>,
        limits: (usize, u64),
        totals: &Totals,
        reserve: &(dyn Fn(&Totals, u64, u64) -> bool + Sync),
    ) -> (Outcome, Vec<Bytes>) {
        let slot = Arc::new(Slot {
            payloads: Mutex::new(payloads),
            outcome: Mutex::new(None),
            done: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            wake: Notify::new(),
        });
        let mut withdraw = Withdraw {
            log: self,
            slot: &slot,
            armed: true,
            leading: None,
        };
        lock(&self.group.waiting).queue.push_back(slot.clone());
        let mut spins = 0;
        loop {
            if let Some(outcome) = lock(&slot.outcome).take() {
                withdraw.armed = false;
                return (outcome, std::mem::take(&mut *lock(&slot.payloads)));
            }
            let parking = spins >= self.group.spin_polls;
            if let Some((epoch, contended)) = self.claim_lead(&slot, parking) {
                // Held from here until `hand_on` clears it: a drop meanwhile
                // — the future's at a yield, or an unwind out of a write —
                // gives it up and wakes the queued (W4, W6), unless it was
                // taken over (W7).
                withdraw.leading = Some(epoch);
                // Let the producers runnable on this thread queue first:
                // one write for all of them instead of one for this one.
                if contended && !self.lead_yield(epoch).await {
                    withdraw.leading = None;
                    continue;
                }
                let mut takes = 1;
                let mut kept = true;
                while self.write_take(b, limits, totals, reserve) && takes < LEAD_ROUNDS {
                    // Requests queued during the write: let the producers it
                    // woke queue theirs too, then carry them all in one take.
                    if !self.lead_yield(epoch).await {
                        kept = false;
                        break;
                    }
                    takes += 1;
                }
                if kept {
                    self.hand_on();
                }
                withdraw.leading = None;
                continue;
            }
            if !parking {
                // Look again after the runtime's runnable tasks: the write
                // is usually done by then, and this thread stays busy (W5).
                spins += 1;
                yield_once().await;
                continue;
            }
            // Written, or woken to lead (W3, W4, W5, W7).
            slot.wake.notified().await;
            slot.parked.store(false, Ordering::Release);
        }
    }

    /// Under the queue lock: the lead's epoch and whether to yield before
    /// the first take, if this producer leads now — the lead is free (W1),
    /// or it would park behind a leader in its yield (W7) — else `None`,
    /// and, about to park, the slot marked parked under the same lock.
    fn claim_lead(&self, slot: &Slot, parking: bool) -> Option<(u64, bool)> {
        let mut w = lock(&self.group.waiting);
        if !w.leading {
            w.leading = true;
            w.leads = w.leads.wrapping_add(1);
            w.epoch += 1;
            let contended = w.last_take > 1 || w.leads.is_multiple_of(PROBE_EVERY);
            Some((w.epoch, contended))
        } else if w.yielding && parking {
            // The leader is in its yield, and this producer would park
            // behind it: its owner may hold it unpolled. Take the lead over
            // and write now, without a yield (W7).
            w.yielding = false;
            w.epoch += 1;
            Some((w.epoch, false))
        } else {
            if parking {
                // Under the lock that a yield's look at the queue takes: a
                // leader that starts yielding after this sees this producer
                // parked and wakes it (W7).
                slot.parked.store(true, Ordering::Release);
            }
            None
        }
    }

    /// One take written, then the lead handed on (W1, W3): what a leader
    /// does whose last take finds requests queued behind it.
    #[cfg(test)]
    fn lead(
        &self,
        b: &Bodies,
        limits: (usize, u64),
        totals: &Totals,
        reserve: &(dyn Fn(&Totals, u64, u64) -> bool + Sync),
    ) {
        self.write_take(b, limits, totals, reserve);
        self.hand_on();
    }

    /// Writes every queued request in one take (W1, W2) and wakes their
    /// producers. Returns whether requests queued meanwhile.
    fn write_take(
        &self,
        b: &Bodies,
        limits: (usize, u64),
        totals: &Totals,
        reserve: &(dyn Fn(&Totals, u64, u64) -> bool + Sync),
    ) -> bool {
        let batch: Vec<Arc<Slot>> = {
            let mut w = lock(&self.group.waiting);
            w.last_take = w.queue.len();
            w.takes += u64::from(!w.queue.is_empty());
            w.queue.drain(..).collect()
        };
        if batch.is_empty() {
            return false;
        }
        // Declared before the payloads' guards, so it runs after them.
        let answered = AnswerOnUnwind(self, &batch);
        let held: Vec<_> = batch.iter().map(|s| lock(&s.payloads)).collect();
        // One clock read per write: its events are enqueued when written.
        let now = crate::event::now_ms();
        let requests: Vec<(&[Bytes], u64)> = held.iter().map(|p| (p.as_slice(), now)).collect();
        let outcomes = self.append_group(b, &requests, limits, totals, reserve);
        drop(requests);
        drop(held);
        for (slot, outcome) in batch.iter().zip(outcomes) {
            *lock(&slot.outcome) = Some(outcome);
            slot.done.store(true, Ordering::Release);
            slot.wake.notify_one();
        }
        std::mem::forget(answered);
        !lock(&self.group.waiting).queue.is_empty()
    }

    /// Gives the lead up and wakes the queued requests' producers, the
    /// first of which to run leads (W3).
    fn hand_on(&self) {
        let mut w = lock(&self.group.waiting);
        w.leading = false;
        w.yielding = false;
        wake_queued(w);
    }

    /// A leader's yield (W7): marks the lead as yielding, wakes every
    /// parked producer (the first to run takes the lead over if this one is
    /// not polled back first; waking one only left the others parked when
    /// its owner held it too, as W3 found for hand-offs), reschedules, and
    /// returns whether the lead of `epoch` is still this producer's. (Not
    /// `yield_now`: it waits for the runtime's next I/O poll.)
    async fn lead_yield(&self, epoch: u64) -> bool {
        let parked: Vec<Arc<Slot>> = {
            let mut w = lock(&self.group.waiting);
            w.yielding = true;
            w.queue
                .iter()
                .filter(|s| s.parked.load(Ordering::Acquire))
                .cloned()
                .collect()
        };
        for slot in parked {
            slot.wake.notify_one();
        }
        yield_once().await;
        let mut w = lock(&self.group.waiting);
        if w.epoch != epoch {
            return false;
        }
        w.yielding = false;
        true
    }
}

#[cfg(test)]
mod tests;
