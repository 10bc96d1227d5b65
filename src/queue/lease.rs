//! Leases: handing chunks to a consumer, reading their bodies, and what a
//! lease finds on the way (damage, events past `max_age`).
//!
//! A lease takes whole ready chunks (`lease` transition), then reads their
//! bodies outside the index lock, each generation pinned meanwhile (L3). What
//! it cannot hand out it settles itself, as the lease holder: a damaged or
//! missing chunk is quarantined (`drop_leased`), events past `max_age` are
//! dropped and counted, and the rest of a partly expired chunk is rewritten
//! under its first remaining seq and stays with the lease (`rewrite`).

use super::ceiling::DropReason;
use super::chunk::{ChunkInfo, Rest};
use super::index::{LeaseInfo, Usage};
use super::log::{Record, TopicLog};
use super::segment::EntryKind;
use super::shared::Shared;
use super::{Queue, QueueError};
use crate::event::{Event, EventId, now_ms};
use crate::record::{self, ChunkIndex, StoredEvent};
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// A batch of events held by one consumer until settled.
///
/// Settle it with [`Queue::ack`], [`Queue::nack`], [`Queue::settle`] or
/// [`Queue::release`]. Dropping it unsettled releases it (no attempt counted).
#[derive(Debug)]
pub struct Lease {
    pub(crate) id: u64,
    pub(crate) topic: Arc<str>,
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
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.settled
            && let Some(shared) = self.shared.upgrade()
        {
            shared.lock_index().release_lease(self.id, now_ms());
        }
    }
}

/// What reading a leased chunk found.
pub(crate) enum Read {
    /// The chunk's record bytes (one per entry of its span).
    Records(Vec<Bytes>),
    /// Missing or damaged: the bytes found (maybe none) and why.
    Damaged(Bytes, String),
}

impl Shared {
    /// Reads a chunk's span from its body file and splits it into records.
    pub(crate) fn read_chunk(
        &self,
        log: Option<&Arc<TopicLog>>,
        key: u64,
        index: &ChunkIndex,
    ) -> Result<Read, QueueError> {
        let Some(log) = log else {
            return Ok(Read::Damaged(Bytes::new(), "body file missing".into()));
        };
        let seg = match log.segment(&self.bodies, index.body_gen) {
            Ok(s) => s,
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
                return Ok(Read::Damaged(Bytes::new(), "body file missing".into()));
            }
            Err(e) => return Err(e.into()),
        };
        let span = seg
            .read_span(index.body_offset, index.body_len as u64)
            .map_err(|e| super::storage::StorageError::io("read chunk", e))?;
        if span.len() < index.body_len as usize {
            return Ok(Read::Damaged(
                span,
                "chunk cut short: its body file ends early".into(),
            ));
        }
        match seg.split_span(&span, key) {
            Some(records) => Ok(Read::Records(records)),
            None => Ok(Read::Damaged(
                span,
                "chunk entry header does not match its index record".into(),
            )),
        }
    }

    /// Quarantines a chunk this lease holds: stores the bytes found for
    /// inspection and drops the chunk (counted).
    fn quarantine_leased(
        &self,
        topic: &Arc<str>,
        lease: u64,
        key: u64,
        raw: &[u8],
        why: &str,
    ) -> Result<(), QueueError> {
        let removed = {
            let mut index = self.lock_index();
            let removed = index
                .topics
                .get_mut(topic)
                .and_then(|t| t.drop_leased(key, lease, &self.totals));
            if let Some(l) = index.leases.get_mut(&lease) {
                l.keys.retain(|k| *k != key);
            }
            removed
        };
        if let Some(info) = removed {
            self.record_quarantine(topic, key, &info, raw, why)?;
        }
        Ok(())
    }

    /// Keeps a damaged chunk's bytes in quarantine and reports it.
    pub(crate) fn record_quarantine(
        &self,
        topic: &Arc<str>,
        key: u64,
        info: &ChunkInfo,
        raw: &[u8],
        why: &str,
    ) -> Result<(), QueueError> {
        self.store()?
            .quarantine(topic, key, raw, super::QUARANTINE_MAX_BYTES)?;
        self.quarantined.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("evspool_chunks_quarantined_total", "topic" => topic.to_string())
            .increment(1);
        tracing::error!(
            topic = %topic,
            chunk = key,
            events = info.index.events,
            reason = why,
            "Damaged chunk moved to quarantine."
        );
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
        let shared = self.shared();
        let max_events = max_events.max(1);
        super::commit::index_waiting(shared, topic);
        // Chunks found damaged or expired are settled and we look again; bounded.
        for _ in 0..64 {
            let now = now_ms();
            let id = shared.next_lease.fetch_add(1, Ordering::Relaxed) + 1;
            let (topic_arc, picked) = {
                let mut index = shared.lock_index();
                index.expire(Instant::now(), now);
                let Some(name) = index.topics.get_key_value(topic).map(|(n, _)| n.clone()) else {
                    return Ok(None);
                };
                let t = index.topics.get_mut(topic).expect("found above");
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
                        deadline: Instant::now() + shared.cfg.lease_timeout,
                    },
                );
                (name, picked)
            };
            let mut lease = Lease {
                id,
                topic: topic_arc.clone(),
                chunks: Vec::with_capacity(picked.len()),
                events: Vec::new(),
                shared: Arc::downgrade(shared),
                settled: false,
            };
            let log = shared.existing_log(topic);
            let mut fixups = false;
            let mut failure = None;
            for (key, info) in &picked {
                let read = if failure.is_none() {
                    shared.read_chunk(log.as_ref(), *key, &info.index)
                } else {
                    Ok(Read::Records(Vec::new()))
                };
                {
                    let mut index = shared.lock_index();
                    if let Some(t) = index.topics.get_mut(&topic_arc) {
                        t.unpin(info.index.body_gen);
                    }
                }
                match read {
                    Err(e) => failure = Some(e),
                    Ok(_) if failure.is_some() => {}
                    Ok(read) => {
                        if !self.load_leased_chunk(
                            &topic_arc,
                            log.as_ref(),
                            *key,
                            info,
                            read,
                            now,
                            &mut lease,
                        )? {
                            fixups = true;
                        }
                    }
                }
            }
            if let Some(e) = failure {
                // A read error (not damage): give everything back, unattempted.
                drop(lease);
                return Err(e);
            }
            if !lease.events.is_empty() {
                metrics::counter!("evspool_events_leased_total", "topic" => topic_arc.to_string())
                    .increment(lease.events.len() as u64);
                return Ok(Some(lease));
            }
            // Every picked chunk was damaged or expired; the lease is empty.
            lease.settled = true;
            shared.lock_index().leases.remove(&id);
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
        read: Read,
        now: u64,
        lease: &mut Lease,
    ) -> Result<bool, QueueError> {
        let shared = self.shared();
        let records = match read {
            Read::Records(r) => r,
            Read::Damaged(raw, why) => {
                shared.quarantine_leased(topic, lease.id, key, &raw, &why)?;
                return Ok(false);
            }
        };
        let mut decoded: Vec<(Bytes, Vec<StoredEvent<'_>>)> = Vec::with_capacity(records.len());
        for r in &records {
            match record::decode_chunk(r) {
                Ok(events) => decoded.push((r.clone(), events)),
                Err(err) => {
                    shared.quarantine_leased(topic, lease.id, key, r, &err.to_string())?;
                    return Ok(false);
                }
            }
        }
        let cutoff = shared
            .cfg
            .max_age
            .map(|age| now.saturating_sub(age.as_millis() as u64));
        let make_event = |raw: &Bytes, e: &StoredEvent<'_>| Event {
            id: EventId::new(shared.instance.clone(), e.seq),
            enqueued_at_ms: e.enqueued_at_ms,
            attempts: info.attempts,
            payload: raw.slice_ref(e.payload),
        };
        let expired = |e: &StoredEvent<'_>| cutoff.is_some_and(|c| e.enqueued_at_ms < c);
        let n_expired = decoded
            .iter()
            .flat_map(|(_, ev)| ev.iter())
            .filter(|e| expired(e))
            .count();
        if n_expired == 0 {
            let start = lease.events.len();
            for (raw, events) in &decoded {
                lease
                    .events
                    .extend(events.iter().map(|e| make_event(raw, e)));
            }
            lease.chunks.push(LeasedChunk {
                key,
                start,
                end: lease.events.len(),
                attempts: info.attempts,
            });
            return Ok(true);
        }
        // Drop what is past max_age; keep the rest, rewritten under its first seq.
        let fresh: Vec<StoredEvent<'_>> = decoded
            .iter()
            .flat_map(|(_, ev)| ev.iter())
            .filter(|e| !expired(e))
            .cloned()
            .collect();
        let freed = decoded
            .iter()
            .flat_map(|(_, ev)| ev.iter())
            .filter(|e| expired(e))
            .fold(Usage::default(), |mut u, e| {
                u.add(1, e.payload.len() as u64);
                u
            });
        let Some(first) = fresh.first() else {
            let dropped = {
                let mut index = shared.lock_index();
                let dropped = index
                    .topics
                    .get_mut(topic)
                    .and_then(|t| t.drop_leased(key, lease.id, &shared.totals));
                if let Some(l) = index.leases.get_mut(&lease.id) {
                    l.keys.retain(|k| *k != key);
                }
                dropped
            };
            if dropped.is_some() {
                shared.drops.count(topic, DropReason::MaxAge, freed.events);
                shared.space.signal();
            }
            return Ok(false);
        };
        let raw = record::encode_chunk(&fresh);
        let rec = Record::new(&fresh, &raw);
        let log = log.cloned().unwrap_or_else(|| shared.log(topic));
        let placed = log.append(
            &shared.bodies,
            std::slice::from_ref(&rec),
            EntryKind::Rewrite,
        );
        let placed = match placed.and_then(|p| {
            if shared.cfg.fsync {
                log.sync()?;
            }
            Ok(p[0])
        }) {
            Ok(p) => p,
            Err(e) => {
                shared.write_failed(&e);
                return Err(e.into());
            }
        };
        let new_key = first.seq;
        let index = rec
            .summary
            .placed(placed.generation, placed.offset, placed.span as u32);
        let rewritten = {
            let mut index_guard = shared.lock_index();
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
                    &shared.totals,
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
        shared.drops.count(topic, DropReason::MaxAge, freed.events);
        shared.space.signal();
        let start = lease.events.len();
        let body = Bytes::from(raw);
        let events = record::decode_chunk(&body).map_err(|e| {
            QueueError::Storage(super::storage::StorageError::io(
                "decode rewritten chunk",
                std::io::Error::other(e.to_string()),
            ))
        })?;
        lease
            .events
            .extend(events.iter().map(|e| make_event(&body, e)));
        lease.chunks.push(LeasedChunk {
            key: new_key,
            start,
            end: lease.events.len(),
            attempts: info.attempts,
        });
        Ok(true)
    }

    /// Returns the lease's events to the queue without recording an attempt
    /// (used at shutdown). Never deletes anything.
    pub fn release(&self, mut lease: Lease) {
        lease.settled = true;
        self.shared().lock_index().release_lease(lease.id, now_ms());
    }

    /// Releases every outstanding lease now, as if its deadline had passed.
    #[doc(hidden)]
    pub fn expire_all_leases(&self) -> usize {
        let mut index = self.shared().lock_index();
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        index.expire(far, now_ms())
    }
}
