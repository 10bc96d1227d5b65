//! Leases: handing chunks to a consumer, reading their bodies, and what a
//! lease finds on the way (damage, events past `max_age`).
//!
//! A lease takes whole ready chunks (`lease` transition), then reads their
//! bodies outside the index lock, each generation pinned meanwhile (L3). What
//! it cannot hand out it settles itself, as the lease holder: the damaged
//! entries of a chunk are quarantined and its intact ones become chunks of
//! their own, ready again (`split_damaged`, `queue/log/read.rs`), events past
//! `max_age` are dropped, counted and traced (`expire_leased`), and the rest
//! of a partly expired chunk is rewritten under its first remaining seq and
//! stays with the lease (`rewrite`).
//!
//! Oldest first (README guarantee 8): a lease hands out nothing newer than
//! intact events it put back. After a damaged chunk whose intact events went
//! back, the chunks it picked after that one go back too, unread and
//! unattempted, and the next lease takes those events first; a chunk damaged
//! whole puts nothing back, and the lease reads on.

use super::ceiling::DropReason;
use super::handle::Queue;
use super::index::LeaseInfo;
use super::index::chunk::{ChunkInfo, Held, Rest};
use super::log::entry::EntryKind;
use super::log::read::read_leased_chunk;
use super::log::read::{ChunkRead, ReadEvent};
use super::log::{Admit, Record, TopicLog};
use super::quarantine::contain_damage;
use super::shared::Shared;
use super::topic::Topic;
use super::usage::Usage;
use crate::error::QueueError;
use crate::event::{Event, EventId, Instance, now_ms};
use crate::record::{self, StoredEvent};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A batch of events held by one consumer until settled.
///
/// Settle it with [`Queue::ack`], [`Queue::nack`], [`Queue::settle`] or
/// [`Queue::release`]. Dropping it unsettled releases it (no attempt counted).
#[derive(Debug)]
pub struct Lease {
    pub(crate) id: u64,
    pub(crate) topic: Topic,
    pub(crate) chunks: Vec<LeasedChunk>,
    pub(crate) events: Vec<Event>,
    pub(crate) shared: Weak<Shared>,
    pub(crate) settled: bool,
}

/// One chunk of a lease: its key and its events' range in `Lease::events`.
#[derive(Debug, Clone)]
pub(crate) struct LeasedChunk {
    pub(crate) key: u64,
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) attempts: u32,
}

impl Lease {
    /// The lease id (unique within this process).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The topic the events belong to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The events, in enqueue order.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether the lease holds no events (never true for a lease handed out).
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Sum of payload bytes.
    pub fn bytes(&self) -> u64 {
        self.events.iter().map(|e| e.payload.len() as u64).sum()
    }

    /// Appends the events of the chunk `key` (read back, with `attempts`
    /// already seen), ids under `instance`, and records the chunk's range.
    fn push_chunk(
        &mut self,
        key: u64,
        attempts: u32,
        instance: Instance,
        events: impl Iterator<Item = ReadEvent>,
    ) {
        let start = self.events.len();
        self.events.reserve(events.size_hint().0);
        self.events.extend(events.map(|e| Event {
            id: EventId::new(instance, e.seq),
            enqueued_at_ms: e.enqueued_at_ms,
            attempts,
            payload: e.payload,
        }));
        self.chunks.push(LeasedChunk {
            key,
            start,
            end: self.events.len(),
            attempts,
        });
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled
            && let Some(shared) = self.shared.upgrade()
        {
            shared.catalog().lock().release_lease(self.id, now_ms());
        }
    }
}

impl Shared {
    /// Contains damage found in a chunk this lease holds: the intact runs
    /// become chunks of their own, ready again (the lease loop takes them),
    /// and each damaged part is kept in quarantine (counted). A chunk with no
    /// intact entry leaves the queue whole.
    fn contain_leased(
        &self,
        topic: &Arc<str>,
        lease: u64,
        key: u64,
        read: &ChunkRead,
    ) -> Result<(), QueueError> {
        if contain_damage(self, topic, key, Held::Lease(lease), read, now_ms())? {
            self.ceiling().space().signal();
        }
        Ok(())
    }
}

impl Queue {
    /// Leases up to `max_events` ready events of `topic` (whole chunks, at least
    /// one; so a lease may exceed `max_events` only by a single oversized chunk).
    ///
    /// Returns `Ok(None)` when nothing is ready. Expired leases are reclaimed
    /// first; events older than `max_age` are dropped (counted) instead of
    /// being handed out; chunks that fail their CRC are quarantined (counted).
    ///
    /// # Errors
    ///
    /// [`QueueError::Storage`] if a body file cannot be read.
    pub fn lease(&self, topic: &str, max_events: usize) -> Result<Option<Lease>, QueueError> {
        let topic = &Topic::new(topic)?;
        let shared = &self.shared();
        shared.gate().check_open()?;
        let max_events = max_events.max(1);
        super::commit::index_waiting(shared, topic);
        // Chunks found damaged or expired are settled and we look again; bounded.
        for _ in 0..64 {
            let now = now_ms();
            let id = shared.catalog().next_lease();
            let (topic_arc, picked) = {
                let mut index = shared.catalog().lock();
                index.expire(Instant::now(), now);
                let Some(name) = index
                    .topics
                    .get_key_value(topic.as_str())
                    .map(|(n, _)| n.clone())
                else {
                    return Ok(None);
                };
                let t = index.topics.get_mut(topic.as_str()).expect("found above");
                t.promote_due(now);
                let picked = t.lease(max_events, id);
                if picked.is_empty() {
                    return Ok(None);
                }
                index.leases.insert(
                    id,
                    LeaseInfo {
                        topic: name.clone(),
                        keys: picked.iter().map(|(k, _)| *k).collect(),
                        deadline: Instant::now() + shared.cfg().lease_timeout,
                    },
                );
                (name, picked)
            };
            let mut lease = Lease {
                id,
                topic: topic.clone(),
                chunks: Vec::with_capacity(picked.len()),
                events: Vec::new(),
                shared: Arc::downgrade(shared),
                settled: false,
            };
            let log = shared.logs().existing(topic);
            let mut fixups = false;
            let mut failure = None;
            // Where the chunks picked after a damaged one start (see below).
            let mut after_damage = None;
            for (i, (key, info)) in picked.iter().enumerate() {
                let read = if failure.is_none() && after_damage.is_none() {
                    read_leased_chunk(shared.logs().bodies(), log.as_ref(), *key, &info.index)
                        .map_err(QueueError::from)
                } else {
                    Ok(ChunkRead::default())
                };
                {
                    let mut index = shared.catalog().lock();
                    if let Some(t) = index.topics.get_mut(&topic_arc) {
                        t.unpin(info.index.body_gen);
                    }
                }
                match read {
                    Err(e) => failure = Some(e),
                    Ok(_) if failure.is_some() || after_damage.is_some() => {}
                    Ok(read) => {
                        // Only intact events put back can be overtaken: a
                        // chunk damaged whole puts nothing back, and the
                        // lease reads on (else each pass of the loop got
                        // past one such chunk only, and 64 of them in a row
                        // made the lease say nothing was ready).
                        if !read.intact() && !read.runs.is_empty() {
                            after_damage = Some(i + 1);
                        }
                        // A failed containment (quarantine, rewrite) fails
                        // the lease as a read error does: the chunks after it
                        // are unpinned, unread, and everything goes back.
                        match self.load_leased_chunk(
                            &topic_arc,
                            log.as_ref(),
                            *key,
                            info,
                            read,
                            now,
                            &mut lease,
                        ) {
                            Ok(true) => {}
                            Ok(false) => fixups = true,
                            Err(e) => failure = Some(e),
                        }
                    }
                }
            }
            if let Some(e) = failure {
                // A read error, or damage or expiry that could not be
                // settled: give everything back, unattempted.
                drop(lease);
                return Err(e);
            }
            if let Some(from) = after_damage {
                // A damaged chunk's intact events went back, ready under
                // their first seq; the chunks picked after it hold newer
                // events and go back too, unread and unattempted, so the
                // next lease hands those intact events out first (README
                // guarantee 8: oldest first).
                let rest: Vec<u64> = picked[from..].iter().map(|(k, _)| *k).collect();
                if !rest.is_empty() {
                    let mut index = shared.catalog().lock();
                    if let Some(t) = index.topics.get_mut(&topic_arc) {
                        for key in &rest {
                            t.release(*key, id, now);
                        }
                        t.wake();
                    }
                    if let Some(l) = index.leases.get_mut(&id) {
                        l.keys.retain(|k| !rest.contains(k));
                    }
                }
            }
            if !lease.events.is_empty() {
                metrics::counter!("evspool_events_leased_total", "topic" => topic_arc.clone())
                    .increment(lease.events.len() as u64);
                return Ok(Some(lease));
            }
            // Every picked chunk was damaged or expired; the lease is empty.
            lease.settled = true;
            shared.catalog().lock().leases.remove(&id);
            if !fixups {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Puts one leased chunk's events into `lease`. Returns false if the chunk
    /// had to be settled by the lease itself (damaged, or wholly or partly
    /// past `max_age`).
    #[allow(clippy::too_many_arguments)]
    fn load_leased_chunk(
        &self,
        topic: &Arc<str>,
        log: Option<&Arc<TopicLog>>,
        key: u64,
        info: &ChunkInfo,
        read: ChunkRead,
        now: u64,
        lease: &mut Lease,
    ) -> Result<bool, QueueError> {
        let shared = &self.shared();
        if !read.intact() {
            shared.contain_leased(topic, lease.id, key, &read)?;
            return Ok(false);
        }
        let cutoff = shared
            .cfg()
            .max_age
            .map(|age| now.saturating_sub(age.as_millis() as u64));
        let expired = |e: &ReadEvent| cutoff.is_some_and(|c| e.enqueued_at_ms < c);
        if !read.events().any(expired) {
            // The common case: every event is handed out, moved, not cloned.
            let events = read.runs.into_iter().flat_map(|r| r.events);
            lease.push_chunk(key, info.attempts, shared.instance(), events);
            return Ok(true);
        }
        let (gone, fresh): (Vec<&ReadEvent>, Vec<&ReadEvent>) =
            read.events().partition(|e| expired(e));
        // Drop what is past max_age (traced, T4); keep the rest, rewritten
        // under its first seq.
        let gone_seqs: Vec<u64> = gone.iter().map(|e| e.seq).collect();
        let freed = gone.iter().fold(Usage::default(), |mut u, e| {
            u.add(1, e.payload.len() as u64);
            u
        });
        let Some(first) = fresh.first() else {
            let dropped = {
                let mut index = shared.catalog().lock();
                let dropped = index.topics.get_mut(topic).and_then(|t| {
                    t.expire_leased(key, lease.id, &gone_seqs, shared.ceiling().totals())
                });
                if let Some(l) = index.leases.get_mut(&lease.id) {
                    l.keys.retain(|k| *k != key);
                }
                dropped
            };
            if dropped.is_some() {
                shared
                    .ceiling()
                    .drops()
                    .count(topic, DropReason::MaxAge, freed.events);
                shared.ceiling().space().signal();
            }
            return Ok(false);
        };
        let stored: Vec<StoredEvent<'_>> = fresh.iter().map(|e| e.stored()).collect();
        let raw = record::encode_chunk(&stored);
        let rec = Record::new(&stored, &raw);
        let log = log
            .cloned()
            .unwrap_or_else(|| shared.logs().log(&lease.topic));
        let placed = log.append(
            shared.logs().bodies(),
            Admit::Producer,
            std::slice::from_ref(&rec),
            EntryKind::Rewrite,
        );
        let placed = match placed.and_then(|p| {
            if shared.cfg().fsync {
                log.sync()?;
            }
            Ok(p[0])
        }) {
            Ok(p) => p,
            Err(e) => {
                shared.gate().write_failed(&e);
                return Err(e.into());
            }
        };
        let new_key = first.seq;
        let index = rec
            .summary
            .placed(placed.generation, placed.offset, placed.span as u32);
        let rewritten = {
            let mut index_guard = shared.catalog().lock();
            let done = index_guard.topics.get_mut(topic).is_some_and(|t| {
                t.rewrite(
                    key,
                    lease.id,
                    Rest {
                        key: new_key,
                        index,
                        retry: None,
                        keep_leased: true,
                    },
                    freed,
                    &gone_seqs,
                    shared.ceiling().totals(),
                    now,
                )
            });
            if done && let Some(l) = index_guard.leases.get_mut(&lease.id) {
                l.keys.retain(|k| *k != key);
                l.keys.push(new_key);
            }
            done
        };
        log.lock().settled(placed.generation, 1);
        if !rewritten {
            // The lease was lost meanwhile: the rewritten entry is garbage.
            return Ok(false);
        }
        shared
            .ceiling()
            .drops()
            .count(topic, DropReason::MaxAge, freed.events);
        shared.ceiling().space().signal();
        let events = fresh.into_iter().cloned();
        lease.push_chunk(new_key, info.attempts, shared.instance(), events);
        Ok(true)
    }

    /// Returns the lease's events to the queue without recording an attempt
    /// (used at shutdown). Never deletes anything.
    pub fn release(&self, mut lease: Lease) {
        lease.settled = true;
        self.shared()
            .catalog()
            .lock()
            .release_lease(lease.id, now_ms());
    }

    /// Releases every outstanding lease now, as if its deadline had passed.
    #[doc(hidden)]
    pub fn expire_all_leases(&self) -> usize {
        let shared = self.shared();
        let mut index = shared.catalog().lock();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        index.expire(far, now_ms())
    }
}
