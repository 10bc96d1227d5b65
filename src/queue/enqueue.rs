//! Accepting events: buffered and durable enqueues, and the ceiling policies.
//!
//! - Buffered (`enqueue`): the event joins its topic's open chunk in memory,
//!   under the writer lock, with its seq; the committer writes it within
//!   `commit_interval` (`queue/commit.rs`).
//! - Durable (`enqueue_durable`, `enqueue_batch_durable`): the producer
//!   appends its own entry to the topic's body file under the log's lock —
//!   one `write`, as a WAL append does — and returns once it is written (with
//!   `fsync = true`, once the syncer's group `fdatasync` covers it). The index
//!   follows at the next round; a crash before that is repaired at open,
//!   which adopts new entries that no index record covers (`queue/open/recover.rs`).
//!
//! The ceiling is checked and the event counted in one step (C1, C2 in
//! `queue/ceiling.rs`): under the writer lock for buffered events, by an
//! atomic reservation under the log lock for durable ones.

use super::buffer::{OpenChunk, PendingEvent, Writer};
use super::ceiling::{DropReason, Totals};
use super::dead::read_dead;
use super::handle::Queue;
use super::log::TopicLog;
use super::ops::apply_ops;
use super::shared::Shared;
use super::topic::Topic;
use crate::config::OverflowPolicy;
use crate::error::QueueError;
use crate::event::{EventId, now_ms};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// What happened to an event handed to `enqueue`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum Enqueued {
    /// Stored (buffered or durable, per the call); it will be delivered at least once.
    Accepted(EventId),
    /// Discarded by the ceiling policy and counted under `reason`.
    Dropped(DropReason),
}

impl Enqueued {
    /// The event's id if it was accepted.
    pub fn id(&self) -> Option<&EventId> {
        match self {
            Self::Accepted(id) => Some(id),
            Self::Dropped(_) => None,
        }
    }
}

/// How many eviction attempts a durable batch makes before it drops instead.
const EVICTION_ATTEMPTS: usize = 8;

pub(crate) enum TryEnqueue {
    Done(Enqueued),
    /// No room yet: wait and try again with the payload handed back.
    Wait(Bytes),
}

impl Shared {
    /// Refuses writes once closing or failed closed.
    fn check_writable(&self) -> Result<(), QueueError> {
        if self.gate().is_closing() {
            return Err(QueueError::Closed);
        }
        if self.gate().is_failed() {
            return Err(self.gate().failed_error());
        }
        Ok(())
    }

    pub(crate) fn full_error(&self) -> QueueError {
        let (events, bytes) = self.ceiling().totals().stored();
        QueueError::Full {
            events,
            bytes,
            max_events: self.cfg().ceiling.max_events,
            max_bytes: self.cfg().ceiling.max_bytes.as_u64(),
        }
    }

    fn fits(&self, events: u64, bytes: u64) -> bool {
        let (e, b) = self.ceiling().totals().stored();
        let c = &self.cfg().ceiling;
        e + events <= c.max_events && b + bytes <= c.max_bytes.as_u64()
    }

    /// A buffered enqueue, once: accepted, dropped, or "wait for space".
    fn try_enqueue(&self, topic: &Topic, payload: Bytes) -> Result<TryEnqueue, QueueError> {
        let size = payload.len() as u64;
        let max = self.cfg().max_event_bytes.as_u64();
        if size > max {
            return Err(QueueError::TooLarge { size, max });
        }
        self.check_writable()?;
        let mut w = self.buffer().lock();
        if w.shutdown {
            return Err(QueueError::Closed);
        }
        if w.pending_bytes >= self.cfg().max_pending_bytes.as_u64() {
            // The committer is behind: wait on local disk, never drop for this.
            self.buffer().wake_committer();
            return Ok(TryEnqueue::Wait(payload));
        }
        if !self.fits(1, size) {
            let topic_arc: Arc<str> = topic.arc().clone();
            match self.cfg().ceiling.policy {
                OverflowPolicy::DropNewest => {
                    self.ceiling()
                        .drops()
                        .count(&topic_arc, DropReason::CeilingNewest, 1);
                    return Ok(TryEnqueue::Done(Enqueued::Dropped(
                        DropReason::CeilingNewest,
                    )));
                }
                OverflowPolicy::Reject => return Err(self.full_error()),
                OverflowPolicy::Block => return Ok(TryEnqueue::Wait(payload)),
                OverflowPolicy::DropOldest => {
                    if !self.evict_oldest(&mut w, 1, size) {
                        self.ceiling()
                            .drops()
                            .count(&topic_arc, DropReason::CeilingNewest, 1);
                        return Ok(TryEnqueue::Done(Enqueued::Dropped(
                            DropReason::CeilingNewest,
                        )));
                    }
                }
            }
        }
        let seq = self.logs().bodies().next_seq.fetch_add(1, Ordering::AcqRel);
        let max_events = self.cfg().chunk_max_events;
        let max_bytes = self.cfg().chunk_max_bytes.as_u64();
        let writer = &mut *w;
        let chunk = match writer.open.get_mut(topic) {
            Some(c) => c,
            None => writer.open.entry(topic.clone()).or_default(),
        };
        // A chunk is sealed before an event that would overflow its bytes, and
        // after the event that fills it.
        let seal = |chunk: &mut OpenChunk, w: &mut Vec<(Topic, OpenChunk)>, pending: &mut u64| {
            let full = std::mem::take(chunk);
            *pending += full.bytes;
            w.push((topic.clone(), full));
        };
        if !chunk.events.is_empty() && chunk.bytes + size > max_bytes {
            seal(chunk, &mut writer.sealed, &mut writer.pending_bytes);
        }
        chunk.events.push(PendingEvent {
            seq,
            enqueued_at_ms: now_ms(),
            payload,
        });
        chunk.bytes += size;
        self.ceiling().totals().add(1, size);
        if chunk.events.len() >= max_events || chunk.bytes >= max_bytes {
            seal(chunk, &mut writer.sealed, &mut writer.pending_bytes);
        }
        Ok(TryEnqueue::Done(Enqueued::Accepted(EventId::new(
            self.instance(),
            seq,
        ))))
    }

    /// Evicts the oldest unleased events until `events` more events of `bytes`
    /// fit (or nothing is left to evict). Returns whether they fit now.
    ///
    /// Each committed victim is chosen and removed in one critical section
    /// (an `evict_oldest` transition), so a lease never gets a chunk that is
    /// being evicted; uncommitted victims are taken under the writer lock the
    /// caller holds.
    pub(crate) fn evict_oldest(&self, w: &mut Writer, events: u64, bytes: u64) -> bool {
        for _ in 0..1024 {
            if self.fits(events, bytes) {
                return true;
            }
            fail::fail_point!("queue::evict::before_claim");
            // A dead letter older than every queued event goes first (C4).
            if let Some((dead, _, _)) = self.oldest_dead() {
                let committed = self
                    .catalog()
                    .lock()
                    .topics
                    .values()
                    .filter_map(|t| t.oldest_unleased())
                    .min();
                let buffered = w
                    .sealed
                    .iter()
                    .map(|(_, c)| c)
                    .chain(w.open.values())
                    .filter_map(|c| c.events.first().map(|e| e.seq))
                    .min();
                let older = [committed, buffered]
                    .into_iter()
                    .flatten()
                    .all(|s| dead < s);
                if older && self.evict_dead() {
                    continue;
                }
            }
            let evicted = {
                let mut index = self.catalog().lock();
                let victim = index
                    .topics
                    .iter()
                    .filter_map(|(name, t)| t.oldest_unleased().map(|k| (k, name.clone())))
                    .min_by_key(|(k, _)| *k);
                victim.and_then(|(_, name)| {
                    let t = index.topics.get_mut(&name)?;
                    let (_, info) = t.evict_oldest(self.ceiling().totals())?;
                    Some((name, info.index.events as u64))
                })
            };
            if let Some((name, n)) = evicted {
                self.ceiling()
                    .drops()
                    .count(&name, DropReason::CeilingOldest, n);
                self.ceiling().space().signal();
                continue;
            }
            // Nothing committed to evict: drop the oldest buffered event, the
            // lowest seq at the head of a sealed or an open chunk.
            let sealed = w
                .sealed
                .iter()
                .enumerate()
                .filter_map(|(i, (_, c))| c.events.first().map(|e| (e.seq, Some(i), None)));
            let open = w
                .open
                .iter()
                .filter_map(|(t, c)| c.events.first().map(|e| (e.seq, None, Some(t.clone()))));
            let Some((_, sealed_at, open_topic)) = sealed.chain(open).min_by_key(|(s, _, _)| *s)
            else {
                // Nothing queued left: the oldest dead letter goes (C4).
                if self.evict_dead() {
                    continue;
                }
                return false;
            };
            let (from, chunk) = match (sealed_at, open_topic) {
                (Some(i), _) => {
                    let (t, c) = &mut w.sealed[i];
                    (t.clone(), c)
                }
                (None, Some(t)) => {
                    let c = w.open.get_mut(&t).expect("found above");
                    (t, c)
                }
                (None, None) => return false,
            };
            let n = chunk.events.remove(0).payload.len() as u64;
            chunk.bytes -= n;
            if sealed_at.is_some() {
                w.pending_bytes = w.pending_bytes.saturating_sub(n);
            }
            self.ceiling().totals().sub(1, n);
            self.ceiling()
                .drops()
                .count(from.arc(), DropReason::CeilingOldest, 1);
        }
        self.fits(events, bytes)
    }
}

impl Shared {
    /// The oldest dead letter of any topic: (seq, topic, payload bytes).
    fn oldest_dead(&self) -> Option<(u64, Arc<str>, u64)> {
        if self.ceiling().totals().dead().0 == 0 {
            return None;
        }
        let topics: Vec<Arc<str>> = self
            .catalog()
            .lock()
            .topics
            .iter()
            .filter(|(_, t)| t.dead_usage.events > 0)
            .map(|(name, _)| name.clone())
            .collect();
        topics
            .iter()
            .filter_map(|t| {
                let d = read_dead(self, t, 0, 1).ok()?.into_iter().next()?;
                Some((d.seq, t.clone(), d.payload.len() as u64))
            })
            .min_by_key(|(seq, _, _)| *seq)
    }

    /// Evicts the oldest dead letter of any topic (C4 in `queue/ceiling.rs`);
    /// false if there is none. Under the topic's dead-letter lock, so no
    /// replay or purge of dead letters takes it meanwhile.
    fn evict_dead(&self) -> bool {
        let Some((seq, topic, bytes)) = self.oldest_dead() else {
            return false;
        };
        let serial = self.dead_locks().get(&topic);
        let _one = serial.lock().unwrap_or_else(|e| e.into_inner());
        // Still there? A replay or purge may have taken it before the lock.
        let present =
            read_dead(self, &topic, seq, 1).is_ok_and(|p| p.first().is_some_and(|d| d.seq == seq));
        if !present {
            return true;
        }
        if let Some(t) = self.catalog().lock().topics.get_mut(&topic) {
            t.evict_dead(seq, bytes, self.ceiling().totals());
        }
        let _ = apply_ops(self);
        self.ceiling()
            .drops()
            .count(&topic, DropReason::CeilingOldest, 1);
        self.ceiling().space().signal();
        true
    }
}

/// How many of `payloads`, from the front, fit under the ceiling now.
fn prefix_that_fits(shared: &Shared, payloads: &[Bytes]) -> usize {
    let (e, b) = shared.ceiling().totals().stored();
    let c = &shared.cfg().ceiling;
    let mut room_events = c.max_events.saturating_sub(e);
    let mut room_bytes = c.max_bytes.as_u64().saturating_sub(b);
    let mut n = 0;
    for p in payloads {
        let len = p.len() as u64;
        if room_events == 0 || len > room_bytes {
            break;
        }
        room_events -= 1;
        room_bytes -= len;
        n += 1;
    }
    n
}

impl Queue {
    /// Whether `events` more events of `bytes` in total fit under the ceiling now.
    /// Lets a caller refuse a whole request up front instead of half of it.
    pub fn would_fit(&self, events: u64, bytes: u64) -> bool {
        self.shared().fits(events, bytes)
    }

    /// Appends an event, buffered: returns at once, without touching the disk
    /// or the network. The event is written at the next commit round
    /// (`commit_interval`); a crash before then can lose it.
    ///
    /// Under the `block` policy at the ceiling this blocks the calling thread up
    /// to `block_timeout`; use [`Queue::enqueue_durable`] from async code then.
    ///
    /// # Errors
    ///
    /// [`QueueError::Full`] under `reject` (or `block` after its timeout),
    /// [`QueueError::TooLarge`], [`QueueError::InvalidTopic`],
    /// [`QueueError::FailedClosed`] after a storage error, [`QueueError::Closed`].
    pub fn enqueue(&self, topic: &str, payload: impl Into<Bytes>) -> Result<Enqueued, QueueError> {
        let topic = &Topic::new(topic)?;
        let mut payload: Bytes = payload.into();
        let shared = &self.shared();
        let deadline = Instant::now() + shared.cfg().ceiling.block_timeout;
        loop {
            payload = match shared.try_enqueue(topic, payload)? {
                TryEnqueue::Done(outcome) => return Ok(outcome),
                TryEnqueue::Wait(payload) => payload,
            };
            // Take the generation, then look once more: a signal in between is not missed.
            let seen = shared.ceiling().space().generation();
            payload = match shared.try_enqueue(topic, payload)? {
                TryEnqueue::Done(outcome) => return Ok(outcome),
                TryEnqueue::Wait(payload) => payload,
            };
            if !self.still_waiting(deadline)? {
                return Err(shared.full_error());
            }
            shared.ceiling().space().wait_sync(
                seen,
                deadline.min(Instant::now() + shared.cfg().commit_interval),
            );
        }
    }

    /// Whether a waiting producer may keep waiting: pending backpressure waits
    /// without limit (the committer always catches up), the ceiling only until `deadline`.
    fn still_waiting(&self, deadline: Instant) -> Result<bool, QueueError> {
        let shared = &self.shared();
        let w = shared.buffer().lock();
        if w.shutdown {
            return Err(QueueError::Closed);
        }
        if w.pending_bytes >= shared.cfg().max_pending_bytes.as_u64() {
            return Ok(true);
        }
        Ok(Instant::now() < deadline)
    }

    /// Appends an event and returns once it is written to its topic's body
    /// file: it survives `kill -9` (and power loss with `fsync = true`, where
    /// concurrent callers share one `fdatasync`).
    ///
    /// # Errors
    ///
    /// As [`Queue::enqueue`], plus [`QueueError::Storage`] if the write failed
    /// (the store then fails closed, except when the process ran out of file
    /// descriptors: [`StorageError::is_transient`](crate::StorageError::is_transient)).
    ///
    /// # Cancel safety
    ///
    /// Cancelling the future after it has started may leave the event written
    /// (it will be delivered) without the caller learning its id.
    pub async fn enqueue_durable(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Enqueued, QueueError> {
        let (first, take) = self.durable(topic, vec![payload.into()]).await?;
        Ok(self.durable_outcome(first, take, 0))
    }

    /// Appends events of one topic and returns once all of them are written
    /// (one write, one wait): the batch form of [`Queue::enqueue_durable`].
    /// The outcome of each event is in the order given.
    ///
    /// At the ceiling: `reject` refuses the whole batch (`Err(Full)`, nothing
    /// stored); `block` waits up to `block_timeout` for room for all of it;
    /// `drop_newest` stores the events that fit, from the front, and drops the
    /// rest (counted); `drop_oldest` evicts to make room.
    ///
    /// # Errors
    ///
    /// As [`Queue::enqueue_durable`]; an event over `max_event_bytes` refuses
    /// the whole batch ([`QueueError::TooLarge`]).
    ///
    /// # Cancel safety
    ///
    /// As [`Queue::enqueue_durable`].
    pub async fn enqueue_batch_durable<I, P>(
        &self,
        topic: &str,
        payloads: I,
    ) -> Result<Vec<Enqueued>, QueueError>
    where
        I: IntoIterator<Item = P>,
        P: Into<Bytes>,
    {
        let payloads: Vec<Bytes> = payloads.into_iter().map(Into::into).collect();
        let total = payloads.len();
        let (first, take) = self.durable(topic, payloads).await?;
        Ok((0..total)
            .map(|i| self.durable_outcome(first, take, i))
            .collect())
    }

    /// The outcome of the `i`-th event of a durable call that stored `take`
    /// events from the front, from seq `first` (the rest: dropped as newest).
    fn durable_outcome(&self, first: u64, take: usize, i: usize) -> Enqueued {
        if i < take {
            Enqueued::Accepted(EventId::new(self.shared().instance(), first + i as u64))
        } else {
            Enqueued::Dropped(DropReason::CeilingNewest)
        }
    }

    /// The durable append of both durable calls: returns the first seq and
    /// how many events, from the front, were stored (the rest were dropped
    /// under `drop_newest`, counted).
    async fn durable(
        &self,
        topic: &str,
        mut payloads: Vec<Bytes>,
    ) -> Result<(u64, usize), QueueError> {
        let topic = &Topic::new(topic)?;
        let total = payloads.len();
        if payloads.is_empty() {
            return Ok((0, 0));
        }
        let shared = &self.shared();
        let max = shared.cfg().max_event_bytes.as_u64();
        if let Some(p) = payloads.iter().find(|p| p.len() as u64 > max) {
            return Err(QueueError::TooLarge {
                size: p.len() as u64,
                max,
            });
        }
        shared.check_writable()?;
        let log = shared.logs().log(topic);
        let topic_arc: Arc<str> = log.topic.arc().clone();
        let c = &shared.cfg().ceiling;
        let (max_events, max_bytes) = (c.max_events, c.max_bytes.as_u64());
        let reserve = move |t: &Totals, e: u64, b: u64| t.try_reserve(e, b, max_events, max_bytes);
        let limits = (
            shared.cfg().chunk_max_events,
            shared.cfg().chunk_max_bytes.as_u64(),
        );
        // Taken at the first wait for room: no clock read on the common path.
        let mut deadline: Option<Instant> = None;
        let mut take = payloads.len();
        let mut evictions = 0;
        let done = loop {
            if take == 0 {
                break None;
            }
            // The events past `take` are dropped (drop_newest): only their count matters.
            payloads.truncate(take);
            // A panic inside the write (a bug) leaves the log poisoned (W6 in
            // `log/group.rs`) and the store failed closed.
            let closes = FailsClosedOnUnwind(shared, &log);
            let (appended, back) = log
                .append_shared(
                    shared.logs().bodies(),
                    std::mem::take(&mut payloads),
                    limits,
                    shared.ceiling().totals(),
                    &reserve,
                )
                .await;
            std::mem::forget(closes);
            payloads = back;
            match appended {
                Ok(Some(done)) => break Some(done),
                Ok(None) => {}
                Err(e) => {
                    shared.gate().write_failed(&e);
                    return Err(e.into());
                }
            }
            let bytes: u64 = payloads[..take].iter().map(|p| p.len() as u64).sum();
            match c.policy {
                OverflowPolicy::Reject => return Err(shared.full_error()),
                OverflowPolicy::DropNewest => {
                    take = prefix_that_fits(shared, &payloads[..take]).min(take - 1);
                }
                OverflowPolicy::DropOldest => {
                    evictions += 1;
                    let mut w = shared.buffer().lock();
                    if evictions > EVICTION_ATTEMPTS
                        || !shared.evict_oldest(&mut w, take as u64, bytes)
                    {
                        drop(w);
                        take = prefix_that_fits(shared, &payloads[..take]).min(take - 1);
                    }
                }
                OverflowPolicy::Block => {
                    let deadline =
                        *deadline.get_or_insert_with(|| Instant::now() + c.block_timeout);
                    let seen = shared.ceiling().space().generation();
                    if shared.fits(take as u64, bytes) {
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Err(shared.full_error());
                    }
                    shared
                        .ceiling()
                        .space()
                        .wait_async(
                            seen,
                            deadline.min(Instant::now() + shared.cfg().commit_interval),
                        )
                        .await;
                    // `close` may have begun meanwhile: it is final (G7).
                    shared.check_writable()?;
                }
            }
        };
        let dropped = (total - take) as u64;
        if dropped > 0 {
            shared
                .ceiling()
                .drops()
                .count(&topic_arc, DropReason::CeilingNewest, dropped);
        }
        let (first, end) = done.map_or((0, (0, 0)), |d| (d.first, d.end));
        if let Some(d) = done {
            if d.first_waiting {
                shared.logs().mark_dirty(&topic_arc);
            }
            // Consumers index what waits when they lease; the committer's
            // round indexes the rest. Only a large pile starts a round early
            // (it bounds memory and what an open after a crash scans).
            const EAGER_INDEX: u64 = 64 * 1024;
            if d.waiting >= EAGER_INDEX && d.waiting - (take as u64) < EAGER_INDEX {
                shared.buffer().request_index();
            }
            if shared.cfg().fsync {
                let marks = log.sync_marks();
                // Only failures after this point concern this call (G8).
                let seen = marks.borrow().failures;
                shared
                    .logs()
                    .syncer()
                    .start(shared.logs().marks().clone(), shared.gate().clone());
                shared.logs().syncer().request(&log);
                let outcome = marks.wait_for(|m| m.outcome(end, seen)).await;
                match outcome {
                    Ok(()) => {}
                    Err(e) if e.is_closed() => return Err(QueueError::Closed),
                    Err(e) if e.is_transient() => return Err(QueueError::Storage(e)),
                    Err(e) => {
                        return Err(QueueError::FailedClosed {
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
        Ok((first, take))
    }

    /// Commits every buffered event, returning when they are written (and
    /// synced with `fsync = true`).
    ///
    /// # Errors
    ///
    /// [`QueueError::FailedClosed`] if a commit round that could hold events
    /// buffered before the call failed; [`QueueError::Storage`] with a
    /// [transient](crate::StorageError::is_transient) error if the process ran
    /// out of file descriptors (the events stay buffered and the next round
    /// writes them: call again); [`QueueError::Closed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the commit happens whether or not the caller waits for it.
    pub async fn sync(&self) -> Result<(), QueueError> {
        let shared = &self.shared();
        let mut rx = shared.buffer().rounds().subscribe();
        let (since, target) = {
            let mut w = shared.buffer().lock();
            if w.shutdown {
                return Err(QueueError::Closed);
            }
            w.durable_requested = true;
            (w.sealed_rounds, w.sealed_rounds + 1)
        };
        shared.buffer().wake_committer();
        let mark = rx
            .wait_for(|m| m.completed >= target)
            .await
            .map_err(|_| QueueError::Closed)?
            .clone();
        match (mark.failed, mark.retry) {
            (Some((round, reason)), _) if round >= since.max(1) => Err(QueueError::FailedClosed {
                reason: reason.to_string(),
            }),
            // Chunks put back by round `since` are written by a later one:
            // only the round waited for can leave them unwritten.
            (_, Some((round, e))) if round >= target => Err(QueueError::Storage(e)),
            _ => Ok(()),
        }
    }
}

/// Fails the store closed when dropped by a panic that poisoned the log: a
/// panic inside a durable write, which leaves the log in an unknown state
/// (W6 in `log/group.rs`). Forgotten once the write returned; a producer's
/// future dropped while it waits (cancelled) leaves the store as it is.
struct FailsClosedOnUnwind<'a>(&'a Shared, &'a TopicLog);

impl Drop for FailsClosedOnUnwind<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() && self.1.poisoned() {
            self.0
                .gate()
                .fail_closed("a durable write panicked; reopen the store");
        }
    }
}
