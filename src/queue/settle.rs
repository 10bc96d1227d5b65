//! Settling a lease: ack, nack, and per-event outcomes.
//!
//! A settle is planned per chunk from the lease's events, then committed in
//! one critical section that first takes the lease out of the index (a lease
//! settles once) and then runs each chunk's transition (`ack`, `retry` or
//! `rewrite` in `queue/index/chunk.rs`), which checks the chunk is still held by
//! this lease. The rest of a partly settled chunk is appended to its topic's
//! log (as a rewrite entry) before that critical section; if the lease was
//! lost meanwhile, that entry is garbage and is never indexed.

use super::handle::Queue;
use super::index::chunk::Rest;
use super::lease::Lease;
use super::log::entry::EntryKind;
use super::log::{Admit, Record};
use super::usage::Usage;
use crate::error::QueueError;
use crate::event::{Event, now_ms};
use crate::record::{self, ChunkIndex, DeadLetter, RetryState, StoredEvent};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The per-event outcome of a delivery attempt, for [`Queue::settle`].
///
/// Events of the lease named in neither `dead` nor `retry` count as delivered.
#[derive(Clone, Debug, Default)]
pub struct Settlement {
    dead: HashMap<u64, String>,
    retry: HashSet<u64>,
    retry_after: Duration,
    retry_reason: String,
}

impl Settlement {
    /// Every event delivered.
    pub fn delivered() -> Self {
        Self::default()
    }

    /// Marks the event with `seq` for the dead-letter store with `reason`.
    pub fn dead(mut self, seq: u64, reason: impl Into<String>) -> Self {
        self.dead.insert(seq, reason.into());
        self
    }

    /// Marks the event with `seq` to be retried.
    pub fn retry(mut self, seq: u64) -> Self {
        self.retry.insert(seq);
        self
    }

    /// When and why retried events may be leased again.
    pub fn retry_after(mut self, after: Duration, reason: impl Into<String>) -> Self {
        self.retry_after = after;
        self.retry_reason = reason.into();
        self
    }

    /// Events marked dead.
    pub fn dead_count(&self) -> usize {
        self.dead.len()
    }
}

/// What `settle` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleReport {
    /// Events acknowledged and deleted.
    pub delivered: u64,
    /// Events moved to the dead-letter store.
    pub dead: u64,
    /// Events kept for a later attempt.
    pub retried: u64,
}

/// What happens to one leased chunk.
enum Plan {
    /// Nothing of it remains queued.
    Ack { key: u64 },
    /// All of it is retried as it is.
    Retry { key: u64, retry: RetryState },
    /// Some of it is retried: that rest goes to a new entry (`rests[at]`).
    Rewrite {
        key: u64,
        at: usize,
        retry: RetryState,
        freed: Usage,
    },
}

impl Queue {
    /// Acknowledges every event of the lease: they leave the queue at once and
    /// their index records are deleted and flushed to sled's file by the
    /// committer within a few milliseconds (a kill before that delivers them
    /// again, same ids; a power cut, anything since sled's last `fdatasync`).
    ///
    /// # Errors
    ///
    /// [`QueueError::LeaseLost`] if the lease expired (its events will be
    /// delivered again).
    pub fn ack(&self, lease: Lease) -> Result<SettleReport, QueueError> {
        self.settle(lease, Settlement::delivered())
    }

    /// Returns every event of the lease for a later attempt, not before `after`,
    /// recording the attempt and `reason`.
    ///
    /// # Errors
    ///
    /// As [`Queue::ack`].
    pub fn nack(
        &self,
        lease: Lease,
        after: Duration,
        reason: impl Into<String>,
    ) -> Result<SettleReport, QueueError> {
        let mut s = Settlement::delivered().retry_after(after, reason);
        for e in &lease.events {
            s.retry.insert(e.seq());
        }
        self.settle(lease, s)
    }

    /// Settles a lease event by event: acks the delivered, dead-letters those
    /// marked dead (with their reason) and keeps those marked retry, in one
    /// transition per chunk, all recorded in sled by the same batch.
    ///
    /// # Errors
    ///
    /// [`QueueError::LeaseLost`] if the lease is no longer held;
    /// [`QueueError::Storage`] if the rest of a partly settled chunk could not
    /// be written (nothing was changed and the lease is released).
    pub fn settle(&self, mut lease: Lease, s: Settlement) -> Result<SettleReport, QueueError> {
        let shared = &self.shared();
        lease.settled = true;
        shared.gate().check_open()?;
        if !shared.catalog().lock().leases.contains_key(&lease.id) {
            return Err(QueueError::LeaseLost { lease: lease.id });
        }
        let now = now_ms();
        let mut report = SettleReport::default();
        let mut plans = Vec::with_capacity(lease.chunks.len());
        let mut dead_letters: Vec<(u64, DeadLetter)> = Vec::new();
        // The rest of each partly settled chunk: its summary and record.
        let mut rests: Vec<(u64, ChunkIndex, Vec<u8>)> = Vec::new();
        // Every event delivered (an ack): nothing to sort per event.
        let all_delivered = s.dead.is_empty() && s.retry.is_empty();
        for c in &lease.chunks {
            let events = &lease.events[c.start..c.end];
            if all_delivered {
                report.delivered += events.len() as u64;
                plans.push(Plan::Ack { key: c.key });
                continue;
            }
            let mut remaining: Vec<&Event> = Vec::new();
            let mut freed = Usage::default();
            for e in events {
                let n = e.payload.len() as u64;
                if let Some(reason) = s.dead.get(&e.seq()) {
                    dead_letters.push((
                        c.key,
                        DeadLetter {
                            seq: e.seq(),
                            enqueued_at_ms: e.enqueued_at_ms,
                            dead_at_ms: now,
                            attempts: c.attempts + 1,
                            reason: reason.clone(),
                            payload: e.payload.to_vec(),
                        },
                    ));
                    report.dead += 1;
                    freed.add(1, n);
                } else if s.retry.contains(&e.seq()) {
                    remaining.push(e);
                } else {
                    report.delivered += 1;
                    freed.add(1, n);
                }
            }
            report.retried += remaining.len() as u64;
            let retry = RetryState {
                attempts: c.attempts + 1,
                not_before_ms: now + s.retry_after.as_millis() as u64,
                last_error: s.retry_reason.clone(),
            };
            if remaining.is_empty() {
                plans.push(Plan::Ack { key: c.key });
            } else if remaining.len() == events.len() {
                plans.push(Plan::Retry { key: c.key, retry });
            } else {
                let stored: Vec<StoredEvent<'_>> = remaining
                    .iter()
                    .map(|e| StoredEvent {
                        seq: e.seq(),
                        enqueued_at_ms: e.enqueued_at_ms,
                        payload: &e.payload,
                    })
                    .collect();
                rests.push((
                    stored[0].seq,
                    ChunkIndex::of(&stored),
                    record::encode_chunk(&stored),
                ));
                plans.push(Plan::Rewrite {
                    key: c.key,
                    at: rests.len() - 1,
                    retry,
                    freed,
                });
            }
        }
        // The rests go to the topic's log before the transitions that name them.
        let mut placed = Vec::new();
        let log = (!rests.is_empty()).then(|| shared.logs().log(&lease.topic));
        if let Some(log) = &log {
            let records: Vec<Record<'_>> = rests
                .iter()
                .map(|(first, summary, raw)| Record {
                    first_seq: *first,
                    summary: *summary,
                    raw,
                })
                .collect();
            let appended = log
                .append(
                    shared.logs().bodies(),
                    Admit::Producer,
                    &records,
                    EntryKind::Rewrite,
                )
                .and_then(|p| {
                    if shared.cfg().fsync {
                        log.sync()?;
                    }
                    Ok(p)
                });
            match appended {
                Ok(p) => placed = p,
                Err(e) => {
                    shared.gate().write_failed(&e);
                    shared.catalog().lock().release_lease(lease.id, now);
                    return Err(e.into());
                }
            }
        }
        let mut freed_any = false;
        let pre = dead_letters.iter().fold(Usage::default(), |mut u, (_, d)| {
            u.add(1, d.payload.len() as u64);
            u
        });
        let lost = {
            let mut index = shared.catalog().lock();
            let held = index.leases.remove(&lease.id);
            match (held, index.topics.get_mut(lease.topic.as_str())) {
                (Some(_), Some(t)) => {
                    // Dead letters count in the ceiling before their events
                    // stop counting as live (C4 in `queue/ceiling.rs`), and
                    // under the index lock, so `verify`'s recount (which holds
                    // it) never sees one without the other; those of chunks
                    // that turn out not to be held any more are taken back
                    // below.
                    shared.ceiling().totals().add_dead(pre.events, pre.bytes);
                    let mut requeued = false;
                    // Chunks settled here, for the dead letters' sake only.
                    let mut done_keys = HashSet::new();
                    let track = !dead_letters.is_empty();
                    for plan in plans {
                        match plan {
                            Plan::Ack { key } => {
                                if t.ack(key, lease.id, shared.ceiling().totals()).is_some() {
                                    if track {
                                        done_keys.insert(key);
                                    }
                                    freed_any = true;
                                }
                            }
                            Plan::Retry { key, retry } => {
                                if t.retry(key, lease.id, retry, now) {
                                    requeued = true;
                                }
                            }
                            Plan::Rewrite {
                                key,
                                at,
                                retry,
                                freed,
                            } => {
                                let p = placed[at];
                                let r = Rest {
                                    key: rests[at].0,
                                    index: rests[at].1.placed(
                                        p.generation,
                                        p.offset,
                                        p.span as u32,
                                    ),
                                    retry: Some(retry),
                                    keep_leased: false,
                                };
                                if t.rewrite(
                                    key,
                                    lease.id,
                                    r,
                                    freed,
                                    &[],
                                    shared.ceiling().totals(),
                                    now,
                                ) {
                                    done_keys.insert(key);
                                    requeued = true;
                                    freed_any = true;
                                }
                            }
                        }
                    }
                    let mut undone = Usage::default();
                    for (key, d) in dead_letters {
                        if done_keys.contains(&key) {
                            t.add_dead(d);
                        } else {
                            undone.add(1, d.payload.len() as u64);
                        }
                    }
                    shared
                        .ceiling()
                        .totals()
                        .sub_dead(undone.events, undone.bytes);
                    if requeued {
                        t.wake();
                    }
                    false
                }
                _ => true,
            }
        };
        if let Some(log) = log.as_ref().filter(|_| !placed.is_empty()) {
            let mut st = log.lock();
            for p in &placed {
                st.settled(p.generation, 1);
            }
        }
        if lost {
            return Err(QueueError::LeaseLost { lease: lease.id });
        }
        if freed_any {
            shared.ceiling().space().signal();
        }
        if report.delivered + report.dead > 0 {
            // Acked and dead-lettered events leave sled soon, not at the
            // next round and sled's next flush: a kill re-sends only what
            // was in flight (`commit.rs`).
            shared.buffer().request_persist();
        }
        let topic = lease.topic.arc().clone();
        metrics::counter!("evspool_events_acked_total", "topic" => topic.clone())
            .increment(report.delivered);
        if report.dead > 0 {
            metrics::counter!("evspool_events_dead_lettered_total", "topic" => topic.clone())
                .increment(report.dead);
        }
        if report.retried > 0 {
            metrics::counter!("evspool_events_retried_total", "topic" => topic)
                .increment(report.retried);
        }
        Ok(report)
    }
}
