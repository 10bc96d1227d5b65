//! A chunk's life, as one state machine: every transition of a committed
//! chunk is a method here, on [`TopicIndex`] (and [`Index`] for leases).
//!
//! ```text
//!                         commit
//!  (uncommitted) ───────────────────────▶ Ready ◀──────── promote_due ──── Delayed
//!                                           │  ▲                             ▲
//!                                     lease │  │ release / lease expiry      │ retry
//!                                           ▼  │                             │
//!                                        Leased(id) ─────────────────────────┘
//!                                           │ ├── ack ─────────────▶ (acked: gone)
//!                                           │ ├── rewrite ─────────▶ rest under a new key
//!                                           │ │                       (+ dead letters)
//!                                           │ ├── expire_leased ───▶ (expired)
//!                                           │ └── drop_leased ─────▶ (quarantined)
//!  Ready | Delayed ── evict_oldest / purge ──────────────────────────▶ (evicted / purged)
//!  Ready | Delayed ── claim_move ──▶ Moving ── finish_move ──▶ Ready | Delayed (body moved)
//!  Leased(id) | Ready | Delayed ── split_damaged ──▶ its intact pieces (damaged entries quarantined)
//!  dead letter ── replay ──▶ Ready              dead letter ── purge_dead ──▶ (gone)
//!  dead letter ── evict_dead (drop_oldest, nothing queued to evict) ──▶ (evicted)
//! ```
//!
//! # Rules every transition follows
//!
//! - T1: it reads the chunk's current state and commits the new one in the
//!   same critical section (the caller holds the index lock for the call), and
//!   does nothing (returning `false`/`None`) when the chunk is not in the state
//!   it expects. Work that must happen outside the lock — reading or writing a
//!   body file — is bracketed: by a lease (`Leased(id)`, which nobody else
//!   touches) or a claim (`Moving`, which leases, eviction and purge skip),
//!   and the finishing transition checks the claim is still there.
//! - T2: the live-event totals (`Totals`, ceiling C1) change only here, with
//!   the chunk's removal from the index, and never wrap.
//! - T3: each transition queues the sled writes that record it ([`Op`]) on
//!   its topic, in the same critical section: sled applies them in
//!   transition order (`queue/ops.rs`).
//! - T4: each transition by which events leave the queue other than by an
//!   ack (expire, evict, purge, dead-letter, purge of a dead letter) queues
//!   its trace for the topic's log in the same critical section
//!   (`queue/log/trace.rs`), so a rebuild without sled brings none of them back.

use super::{Index, TopicIndex};
use crate::queue::ceiling::Totals;
use crate::queue::log::read::ChunkRead;
use crate::queue::usage::Usage;
use crate::record::{ChunkIndex, DeadLetter, RetryState};
use std::sync::Arc;

/// Where a committed chunk is in its lifecycle (L1 in `queue/index/mod.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkState {
    /// Leaseable now.
    Ready,
    /// Waiting out a retry backoff.
    Delayed,
    /// Held by the lease with this id.
    Leased(u64),
    /// Claimed by compaction while its body is copied to a new generation.
    Moving,
}

/// What the index knows of one committed chunk.
#[derive(Clone, Debug)]
pub(crate) struct ChunkInfo {
    pub(crate) index: ChunkIndex,
    pub(crate) attempts: u32,
    pub(crate) not_before_ms: u64,
    /// The last failure's reason. An `Arc<String>` (one word) rather than
    /// an `Arc<str>` (two): every queued chunk carries the field, most of
    /// them empty, and 10M queued events are 200,000 of these in a B-tree.
    pub(crate) last_error: Option<Arc<String>>,
    pub(crate) state: ChunkState,
    /// sled may hold a retry record under this chunk's key (one was loaded,
    /// even a damaged one, or a transition queued one): removing the chunk
    /// deletes it too. Without one, a removal is one sled write, not two
    /// (the drain's hot path: a chunk acked at its first attempt).
    pub(crate) retry_record: bool,
}

impl ChunkInfo {
    /// A chunk that has never been attempted.
    pub(crate) fn fresh(index: ChunkIndex) -> Self {
        Self {
            index,
            attempts: 0,
            not_before_ms: 0,
            last_error: None,
            state: ChunkState::Ready,
            retry_record: false,
        }
    }

    /// A chunk with the retry state read back from sled; `retry_record`:
    /// whether sled holds a retry record under its key (read or damaged).
    pub(crate) fn with_retry(
        index: ChunkIndex,
        retry: Option<&RetryState>,
        retry_record: bool,
    ) -> Self {
        let mut c = Self::fresh(index);
        c.retry_record = retry_record || retry.is_some();
        if let Some(r) = retry {
            c.attempts = r.attempts;
            c.not_before_ms = r.not_before_ms;
            c.last_error = (!r.last_error.is_empty()).then(|| Arc::new(r.last_error.clone()));
        }
        c
    }

    fn usage(&self) -> Usage {
        Usage::new(self.index.events as u64, self.index.bytes)
    }

    fn unleased(&self) -> bool {
        matches!(self.state, ChunkState::Ready | ChunkState::Delayed)
    }
}

/// A sled write queued by a transition (T3), applied by the committer.
#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// Write a chunk's index record.
    Put(u64, ChunkIndex),
    /// Delete a chunk's index and retry records.
    Remove(u64),
    /// Delete a chunk's index record: a chunk with no retry record.
    RemoveIndex(u64),
    /// Write a chunk's retry record.
    Retry(u64, RetryState),
    /// Write a dead letter.
    Dead(DeadLetter),
    /// Delete a dead letter.
    Undead(u64),
    /// Raise the seq high-water.
    HighWater(u64),
    /// Set the checkpoint position (generation, offset).
    Checkpoint((u32, u64)),
}

/// Who holds a chunk being split after damage was found in it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Held {
    /// The lease with this id (it read the chunk).
    Lease(u64),
    /// Nobody: `verify` read it at this place.
    Unleased(ChunkIndex),
}

/// The part of a chunk that stays after a partial outcome, written to a new
/// body entry under a new key (its first remaining seq).
pub(crate) struct Rest {
    pub(crate) key: u64,
    pub(crate) index: ChunkIndex,
    /// The retry state to record (a settle), or none (a `max_age` trim, which
    /// keeps the chunk's attempts).
    pub(crate) retry: Option<RetryState>,
    /// Whether the rest stays with the lease (a `max_age` trim while leasing).
    pub(crate) keep_leased: bool,
}

impl TopicIndex {
    fn queue(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// Queues the sled writes that delete chunk `key` (`info`: what it was).
    fn queue_remove(&mut self, key: u64, info: &ChunkInfo) {
        self.queue(if info.retry_record {
            Op::Remove(key)
        } else {
            Op::RemoveIndex(key)
        });
    }

    /// uncommitted → Ready: a chunk whose entries were written to its body file.
    pub(crate) fn commit(&mut self, key: u64, index: ChunkIndex, now_ms: u64) {
        self.note_indexed(index.body_gen, index.body_len as u64);
        self.place(key, ChunkInfo::fresh(index), ChunkState::Ready, now_ms);
        self.queue(Op::Put(key, index));
        if index.last_seq.saturating_add(1) > self.high_water {
            self.high_water = index.last_seq.saturating_add(1);
            self.queue(Op::HighWater(self.high_water));
        }
    }

    /// Ready → Leased(`lease`): whole chunks from the head, in key order, up to
    /// `max_events` events (at least one chunk). Pins each chunk's generation
    /// for the read; the caller unpins.
    pub(crate) fn lease(&mut self, max_events: usize, lease: u64) -> Vec<(u64, ChunkInfo)> {
        let mut out = Vec::new();
        let mut n = 0usize;
        while let Some(&key) = self.ready.first() {
            let Some(info) = self.chunks.get(&key) else {
                self.ready.pop_first();
                continue;
            };
            let e = info.index.events as usize;
            if !out.is_empty() && n + e > max_events {
                break;
            }
            let info = self.unplace(key).expect("present");
            self.place(key, info.clone(), ChunkState::Leased(lease), 0);
            self.pin(info.index.body_gen);
            let mut snapshot = info;
            snapshot.state = ChunkState::Leased(lease);
            out.push((key, snapshot));
            n += e;
            if n >= max_events {
                break;
            }
        }
        out
    }

    /// Leased(`lease`) → Ready | Delayed, no attempt recorded.
    pub(crate) fn release(&mut self, key: u64, lease: u64, now_ms: u64) -> bool {
        if self.chunks.get(&key).map(|c| c.state) != Some(ChunkState::Leased(lease)) {
            return false;
        }
        let info = self.unplace(key).expect("present");
        self.place(key, info, ChunkState::Ready, now_ms);
        true
    }

    /// Leased(`lease`) → acked: the chunk leaves the queue.
    pub(crate) fn ack(&mut self, key: u64, lease: u64, totals: &Totals) -> Option<ChunkInfo> {
        self.drop_leased(key, lease, totals)
    }

    /// Leased(`lease`) → expired past `max_age`: every event of the chunk
    /// (`seqs`, read by the lease) leaves the queue, traced (T4).
    pub(crate) fn expire_leased(
        &mut self,
        key: u64,
        lease: u64,
        seqs: &[u64],
        totals: &Totals,
    ) -> Option<ChunkInfo> {
        let info = self.drop_leased(key, lease, totals)?;
        self.log.traces.gone(seqs.iter().copied());
        Some(info)
    }

    /// Leased(`lease`) → gone without delivery or trace: quarantined while
    /// leased (the damage is found again by a rebuild).
    pub(crate) fn drop_leased(
        &mut self,
        key: u64,
        lease: u64,
        totals: &Totals,
    ) -> Option<ChunkInfo> {
        if self.chunks.get(&key).map(|c| c.state) != Some(ChunkState::Leased(lease)) {
            return None;
        }
        let info = self.unplace(key).expect("present");
        totals.sub(info.index.events as u64, info.index.bytes);
        self.queue_remove(key, &info);
        Some(info)
    }

    /// Leased(`lease`) → Delayed (or Ready): a failed attempt, to retry after
    /// `retry.not_before_ms`.
    pub(crate) fn retry(&mut self, key: u64, lease: u64, retry: RetryState, now_ms: u64) -> bool {
        if self.chunks.get(&key).map(|c| c.state) != Some(ChunkState::Leased(lease)) {
            return false;
        }
        let mut info = self.unplace(key).expect("present");
        info.attempts = retry.attempts;
        info.not_before_ms = retry.not_before_ms;
        info.last_error = Some(Arc::new(retry.last_error.clone()));
        info.retry_record = true;
        self.place(key, info, ChunkState::Ready, now_ms);
        self.queue(Op::Retry(key, retry));
        true
    }

    /// Leased(`lease`) → the chunk's `rest`, in a new body entry under a new
    /// key; the events no longer in it (`freed`) leave the queue, those of
    /// them in `gone` (expired) traced (T4).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn rewrite(
        &mut self,
        key: u64,
        lease: u64,
        rest: Rest,
        freed: Usage,
        gone: &[u64],
        totals: &Totals,
        now_ms: u64,
    ) -> bool {
        if self.chunks.get(&key).map(|c| c.state) != Some(ChunkState::Leased(lease)) {
            return false;
        }
        let old = self.unplace(key).expect("present");
        totals.sub(freed.events, freed.bytes);
        self.log.traces.gone(gone.iter().copied());
        self.queue_remove(key, &old);
        let mut info = ChunkInfo::fresh(rest.index);
        info.attempts = old.attempts;
        info.not_before_ms = old.not_before_ms;
        info.last_error = old.last_error;
        if let Some(r) = &rest.retry {
            info.attempts = r.attempts;
            info.not_before_ms = r.not_before_ms;
            info.last_error = Some(Arc::new(r.last_error.clone()));
        }
        let state = if rest.keep_leased {
            ChunkState::Leased(lease)
        } else {
            ChunkState::Ready
        };
        let retry = rest.retry.or_else(|| {
            (info.attempts > 0).then(|| RetryState {
                attempts: info.attempts,
                not_before_ms: info.not_before_ms,
                last_error: info.last_error.as_deref().cloned().unwrap_or_default(),
            })
        });
        info.retry_record = retry.is_some();
        self.note_indexed(rest.index.body_gen, rest.index.body_len as u64);
        self.place(rest.key, info, state, now_ms);
        self.queue(Op::Put(rest.key, rest.index));
        if let Some(r) = retry {
            self.queue(Op::Retry(rest.key, r));
        }
        true
    }

    /// A dead letter joins the topic (with the settle that made it), traced
    /// whole so a rebuild restores it (T4). The settle counted it in the
    /// ceiling's dead-letter totals before its transitions (C4).
    pub(crate) fn add_dead(&mut self, dead: DeadLetter) {
        self.dead_usage.add(1, dead.payload.len() as u64);
        self.log.traces.dead(dead.clone());
        self.queue(Op::Dead(dead));
    }

    /// Ready | Delayed → evicted: the oldest unleased chunk, under `drop_oldest`.
    /// Returns its key and info (the caller counts the drop).
    pub(crate) fn evict_oldest(&mut self, totals: &Totals) -> Option<(u64, ChunkInfo)> {
        let key = self
            .chunks
            .iter()
            .find(|(_, c)| c.unleased())
            .map(|(k, _)| *k)?;
        let info = self.unplace(key).expect("present");
        totals.sub(info.index.events as u64, info.index.bytes);
        self.queue_remove(key, &info);
        self.log.traces.gone_chunk(key, info.index);
        Some((key, info))
    }

    /// The key of the oldest unleased chunk, if any.
    pub(crate) fn oldest_unleased(&self) -> Option<u64> {
        self.chunks
            .iter()
            .find(|(_, c)| c.unleased())
            .map(|(k, _)| *k)
    }

    /// Ready | Delayed → purged: up to `max_chunks` unleased chunks from the
    /// head. Returns what left the queue.
    pub(crate) fn purge(&mut self, max_chunks: usize, totals: &Totals) -> Usage {
        let keys: Vec<u64> = self
            .chunks
            .iter()
            .filter(|(_, c)| c.unleased())
            .take(max_chunks)
            .map(|(k, _)| *k)
            .collect();
        let mut gone = Usage::default();
        for key in keys {
            let info = self.unplace(key).expect("present");
            let u = info.usage();
            totals.sub(u.events, u.bytes);
            gone.add(u.events, u.bytes);
            self.queue_remove(key, &info);
            self.log.traces.gone_chunk(key, info.index);
        }
        gone
    }

    /// Ready | Delayed → Moving: compaction claims the chunk while it copies
    /// the body. Pins its generation for the read; the caller unpins.
    pub(crate) fn claim_move(&mut self, key: u64) -> Option<ChunkInfo> {
        if !self.chunks.get(&key)?.unleased() {
            return None;
        }
        let info = self.unplace(key).expect("present");
        self.place(key, info.clone(), ChunkState::Moving, 0);
        self.pin(info.index.body_gen);
        Some(info)
    }

    /// Moving → Ready | Delayed, with the body at its new place (`moved`), or
    /// where it was (`None`: the copy failed or was skipped).
    pub(crate) fn finish_move(&mut self, key: u64, moved: Option<ChunkIndex>, now_ms: u64) -> bool {
        if self.chunks.get(&key).map(|c| c.state) != Some(ChunkState::Moving) {
            return false;
        }
        let mut info = self.unplace(key).expect("present");
        if let Some(index) = moved {
            info.index = index;
            self.note_indexed(index.body_gen, index.body_len as u64);
            self.queue(Op::Put(key, index));
        }
        self.place(key, info, ChunkState::Ready, now_ms);
        true
    }

    /// Dead letters → Ready: the replayed events (`replayed`: seq and bytes),
    /// now in a new body entry, join the queue under `key`.
    pub(crate) fn replay(
        &mut self,
        key: u64,
        index: ChunkIndex,
        replayed: &[(u64, u64)],
        totals: &Totals,
        now_ms: u64,
    ) {
        // Live first, then no longer dead: the ceiling never sees room that
        // is not there (C4).
        totals.add(index.events as u64, index.bytes);
        for (seq, bytes) in replayed {
            self.dead_usage.sub(1, *bytes);
            totals.sub_dead(1, *bytes);
            self.queue(Op::Undead(*seq));
        }
        self.note_indexed(index.body_gen, index.body_len as u64);
        self.place(key, ChunkInfo::fresh(index), ChunkState::Ready, now_ms);
        self.queue(Op::Put(key, index));
    }

    /// Dead letter `seq` → evicted under `drop_oldest` (C4), traced (T4).
    pub(crate) fn evict_dead(&mut self, seq: u64, bytes: u64, totals: &Totals) {
        self.dead_usage.sub(1, bytes);
        totals.sub_dead(1, bytes);
        self.queue(Op::Undead(seq));
        self.log.traces.gone([seq]);
    }

    /// Dead letters → gone, traced (T4).
    pub(crate) fn purge_dead(&mut self, removed: &[(u64, u64)], totals: &Totals) {
        for (seq, bytes) in removed {
            self.dead_usage.sub(1, *bytes);
            totals.sub_dead(1, *bytes);
            self.queue(Op::Undead(*seq));
        }
        self.log.traces.gone(removed.iter().map(|(s, _)| *s));
    }

    /// Chunk `key`, if `held` holds it: leased by that lease, or unleased
    /// where `verify` read it.
    pub(crate) fn held_as(&self, key: u64, held: Held) -> Option<&ChunkInfo> {
        let c = self.chunks.get(&key)?;
        let ok = match held {
            Held::Lease(id) => c.state == ChunkState::Leased(id),
            Held::Unleased(seen) => c.unleased() && c.index == seen,
        };
        ok.then_some(c)
    }

    /// Leased(`lease`) | Ready | Delayed (as `held` says) → the intact runs
    /// of its span, each a chunk under its first seq (`pieces`), in the state
    /// it was in — a leased chunk's pieces are ready again, for the lease to
    /// take — with its attempts and backoff. The damaged entries' events leave
    /// the queue (the caller quarantines their bytes); returns their usage.
    pub(crate) fn split_damaged(
        &mut self,
        key: u64,
        held: Held,
        read: &ChunkRead,
        totals: &Totals,
        now_ms: u64,
    ) -> Option<Usage> {
        self.held_as(key, held)?;
        let old = self.unplace(key).expect("present");
        self.queue_remove(key, &old);
        let mut kept = Usage::default();
        for (piece_key, index) in read.pieces(old.index.body_gen) {
            if self.chunks.contains_key(&piece_key) {
                // Keys are unique first seqs (L1): never place twice.
                debug_assert!(false, "piece {piece_key} of chunk {key} is a chunk already");
                continue;
            }
            kept.add(index.events as u64, index.bytes);
            let mut info = ChunkInfo::fresh(index);
            info.attempts = old.attempts;
            info.not_before_ms = old.not_before_ms;
            info.last_error = old.last_error.clone();
            info.retry_record = old.attempts > 0;
            self.place(piece_key, info, ChunkState::Ready, now_ms);
            self.queue(Op::Put(piece_key, index));
            if old.attempts > 0 {
                self.queue(Op::Retry(
                    piece_key,
                    RetryState {
                        attempts: old.attempts,
                        not_before_ms: old.not_before_ms,
                        last_error: old.last_error.as_deref().cloned().unwrap_or_default(),
                    },
                ));
            }
        }
        let lost = Usage::new(
            (old.index.events as u64).saturating_sub(kept.events),
            old.index.bytes.saturating_sub(kept.bytes),
        );
        totals.sub(lost.events, lost.bytes);
        if kept.events > 0 {
            self.wake();
        }
        Some(lost)
    }

    /// Records the topic's checkpoint with the next batch, if it moved.
    pub(crate) fn checkpoint(&mut self, at: (u32, u64)) {
        if self.checkpoint != at {
            self.checkpoint = at;
            self.queue(Op::Checkpoint(at));
        }
    }

    /// Delayed → Ready for the chunks whose backoff is over.
    pub(crate) fn promote_due(&mut self, now_ms: u64) {
        while let Some(&(not_before, key)) = self.delayed.first() {
            if not_before > now_ms {
                break;
            }
            self.undelay(not_before, key);
        }
    }

    /// Delayed → Ready now, whatever their backoff (delivery works again).
    /// Returns how many events became due.
    pub(crate) fn make_due(&mut self) -> u64 {
        let delayed: Vec<(u64, u64)> = self.delayed.iter().copied().collect();
        let mut n = 0;
        for (not_before, key) in delayed {
            if let Some(info) = self.undelay(not_before, key) {
                info.not_before_ms = 0;
                n += info.index.events as u64;
            }
        }
        n
    }
}

impl Index {
    /// Leased → Ready | Delayed for every chunk of lease `id` (settled by
    /// nobody: dropped, released at shutdown, or past its deadline).
    pub(crate) fn release_lease(&mut self, id: u64, now_ms: u64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        if let Some(t) = self.topics.get_mut(&lease.topic) {
            for key in lease.keys {
                t.release(key, id, now_ms);
            }
            t.wake();
        }
        true
    }

    /// Releases every lease whose deadline has passed; returns how many.
    pub(crate) fn expire(&mut self, now: std::time::Instant, now_ms: u64) -> usize {
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.release_lease(*id, now_ms);
        }
        expired.len()
    }
}
