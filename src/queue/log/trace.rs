//! Traces: what left a topic's queue other than by an ack, written to the
//! topic's own log so that a rebuild without sled brings none of it back.
//!
//! sled's index is the live truth while the store runs; the body files are
//! the truth a rebuild reads. An ack removes an event from sled only — a
//! rebuild may deliver it again under the same id, which a deduplicating
//! collector drops (at-least-once). But an event purged, evicted by
//! `drop_oldest`, dropped past `max_age`, dead-lettered, or a dead letter
//! purged, must not come back, and a dead letter must come back as a dead
//! letter. Each of those transitions (`queue/index/chunk.rs`) leaves a *trace*:
//!
//! - `gone`: seqs that left for good (purge, eviction, `max_age`, purge of a
//!   dead letter);
//! - `dead`: dead letters, whole (reason, attempts, payload).
//!
//! A transition queues its trace here, in the critical section that changes
//! the chunk's state; the topic's log writes every queued trace, as one
//! `trace` entry, in front of the next bytes it appends, whoever appends
//! them, and the committer writes what is still queued every round. So a
//! trace lands in the log after every copy of the events it names (they were
//! written before the transition) and before any later append — in
//! particular before a replay of the same dead letter.
//!
//! Evictions and purges take chunks no lease has read, whose seqs the index
//! does not hold one by one: the trace keeps the chunk's span, pins its body
//! generation (the reaper skips it), and the log reads the span's seqs when
//! it writes the trace.
//!
//! A body generation holding traces may be deleted (`queue/reap.rs`) while an
//! older generation of the topic remains: the traces that may still matter
//! are carried forward first — `gone` ranges while an older generation
//! exists, dead letters while they are dead letters — into the topic's
//! current generation, synced before the unlink.
//!
//! # Invariants
//!
//! - TR1: a trace is queued in the same critical section as the transition
//!   it records, and written before any later append of its topic.
//! - TR2: a generation named by a queued chunk trace is not deleted until the
//!   trace is written.
//! - TR3: `gone` is final: a rebuild never brings a gone seq back, whatever
//!   entry holds it.
//! - TR4 (ids outlive their files): before a body file is deleted, the
//!   store's seq high-water is written as a trace to the topic's current
//!   file, so the newest file on disk always knows every seq a deleted one
//!   held: a rebuild without sled never hands one out again.

use super::entry::{self, EntryKind, Part};
use super::{Bodies, TopicLog};
use crate::queue::storage::StorageError;
use crate::record::{self, ChunkIndex, DeadLetter, Trace};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// A set of seqs kept as sorted, disjoint, inclusive ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct SeqRanges {
    /// start → end (inclusive); ranges never touch or overlap.
    ranges: BTreeMap<u64, u64>,
}

impl SeqRanges {
    /// Adds `lo..=hi`, merging with the ranges it touches.
    pub(crate) fn insert_range(&mut self, mut lo: u64, mut hi: u64) {
        if lo > hi {
            return;
        }
        // A range starting at or before hi + 1 and ending at or after lo - 1 merges.
        loop {
            let next = self
                .ranges
                .range(..=hi.saturating_add(1))
                .next_back()
                .map(|(s, e)| (*s, *e));
            match next {
                Some((s, e)) if e.saturating_add(1) >= lo => {
                    self.ranges.remove(&s);
                    lo = lo.min(s);
                    hi = hi.max(e);
                }
                _ => break,
            }
        }
        self.ranges.insert(lo, hi);
    }

    /// Adds one seq.
    pub(crate) fn insert(&mut self, seq: u64) {
        self.insert_range(seq, seq);
    }

    /// Whether `seq` is in the set.
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, e)| *e >= seq)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, in order.
    pub(crate) fn to_vec(&self) -> Vec<(u64, u64)> {
        self.ranges.iter().map(|(s, e)| (*s, *e)).collect()
    }

    /// The lowest seq in the set.
    pub(crate) fn first(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }
}

/// Traces queued for one topic's log, not yet written.
#[derive(Debug, Default)]
pub(crate) struct Pending {
    pub(crate) gone: SeqRanges,
    /// Chunks evicted or purged unread: (key, where they are), their seqs
    /// read when the trace is written.
    pub(crate) chunks: Vec<(u64, ChunkIndex)>,
    pub(crate) dead: Vec<DeadLetter>,
    /// Every seq below this was handed out (TR4).
    pub(crate) high_water: u64,
}

impl Pending {
    pub(crate) fn is_empty(&self) -> bool {
        self.gone.is_empty()
            && self.chunks.is_empty()
            && self.dead.is_empty()
            && self.high_water == 0
    }

    /// Adds everything of `other` (put back after a write failed).
    fn merge(&mut self, other: Pending) {
        for (lo, hi) in other.gone.to_vec() {
            self.gone.insert_range(lo, hi);
        }
        self.chunks.extend(other.chunks);
        self.dead.extend(other.dead);
        self.high_water = self.high_water.max(other.high_water);
    }

    /// The trace record of what is resolved (`gone` and `dead`).
    pub(crate) fn record(&self) -> Trace {
        Trace {
            gone: self.gone.to_vec(),
            dead: self.dead.clone(),
            high_water: self.high_water,
        }
    }

    /// The lowest seq a trace of this names (its entry header's seq).
    pub(crate) fn first_seq(&self) -> u64 {
        let dead = self.dead.iter().map(|d| d.seq).min();
        match (self.gone.first(), dead) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        }
    }
}

/// One topic's queued traces, shared by its index (which queues them) and its
/// log (which writes them). The lock is a leaf: nothing is taken under it.
#[derive(Debug, Default)]
pub(crate) struct Traces {
    pending: Mutex<Pending>,
    /// Set while anything is queued: the log's write path looks at it
    /// without the lock.
    any: AtomicBool,
    /// Body generations named by queued chunk traces (TR2), with counts.
    pins: Mutex<BTreeMap<u32, u64>>,
}

impl Traces {
    fn with<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let r = f(&mut p);
        self.any.store(!p.is_empty(), Ordering::Release);
        r
    }

    /// Events that left for good, by seq.
    pub(crate) fn gone(&self, seqs: impl IntoIterator<Item = u64>) {
        self.with(|p| seqs.into_iter().for_each(|s| p.gone.insert(s)));
    }

    /// Events that left for good, as an inclusive range of seqs.
    pub(crate) fn gone_range(&self, lo: u64, hi: u64) {
        self.with(|p| p.gone.insert_range(lo, hi));
    }

    /// A chunk that left for good unread: its seqs are read at write time,
    /// and its generation is kept until then (TR2).
    pub(crate) fn gone_chunk(&self, key: u64, index: ChunkIndex) {
        *self
            .pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(index.body_gen)
            .or_default() += 1;
        self.with(|p| p.chunks.push((key, index)));
    }

    /// An event that became a dead letter.
    pub(crate) fn dead(&self, letter: DeadLetter) {
        self.with(|p| p.dead.push(letter));
    }

    /// Records that every seq below `next_seq` was handed out (TR4).
    pub(crate) fn high_water(&self, next_seq: u64) {
        self.with(|p| p.high_water = p.high_water.max(next_seq));
    }

    /// Whether anything is queued.
    pub(crate) fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Takes everything queued (the caller writes it or puts it back).
    pub(crate) fn take(&self) -> Pending {
        self.with(std::mem::take)
    }

    /// Puts back what a failed write took.
    pub(crate) fn put_back(&self, p: Pending) {
        self.with(|mine| mine.merge(p));
    }

    /// Releases the generations of chunk traces now written.
    pub(crate) fn written(&self, chunks: &[(u64, ChunkIndex)]) {
        let mut pins = self.pins.lock().unwrap_or_else(|e| e.into_inner());
        for (_, idx) in chunks {
            if let Some(n) = pins.get_mut(&idx.body_gen) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    pins.remove(&idx.body_gen);
                }
            }
        }
    }

    /// Whether generation `g` is named by a queued chunk trace (TR2).
    pub(crate) fn pinned(&self, g: u32) -> bool {
        self.pins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&g)
    }
}

/// Writing traces: the log's side.
impl TopicLog {
    /// Takes the queued traces and encodes them as one trace entry, reading
    /// the seqs of the chunks they name (TR1, TR2). Chunks whose span cannot
    /// be read now stay queued.
    pub(super) fn trace_entry(&self, b: &Bodies) -> Option<(Vec<u8>, Pending)> {
        if !self.signals.traces.any() {
            return None;
        }
        let mut pending = self.signals.traces.take();
        let mut unread = Vec::new();
        for (key, idx) in std::mem::take(&mut pending.chunks) {
            match self.chunk_seqs(b, &idx) {
                Ok(seqs) => {
                    seqs.into_iter().for_each(|s| pending.gone.insert(s));
                    pending.chunks.push((key, idx));
                }
                Err(_) => unread.push((key, idx)),
            }
        }
        if !unread.is_empty() {
            self.signals.traces.put_back(Pending {
                chunks: unread,
                ..Pending::default()
            });
        }
        if pending.gone.is_empty() && pending.dead.is_empty() && pending.high_water == 0 {
            self.signals.traces.written(&pending.chunks);
            return None;
        }
        let rec = record::encode_trace(&pending.record());
        let mut bytes = entry::header(
            pending.first_seq(),
            rec.len() as u32,
            EntryKind::Trace,
            self.salt,
        )
        .to_vec();
        bytes.extend_from_slice(&rec);
        Some((bytes, pending))
    }

    /// Whether generation `g` may hold a trace entry: one this process made
    /// holds one only if it wrote one there; an older one may.
    pub(crate) fn may_hold_traces(&self, g: u32) -> bool {
        let st = self.lock();
        g < st.born || st.traced.contains(&g)
    }

    /// The seqs of the intact entries of a chunk's span.
    fn chunk_seqs(&self, b: &Bodies, idx: &ChunkIndex) -> Result<Vec<u64>, StorageError> {
        let seg = self.segment(b, idx.body_gen)?;
        let span = seg
            .read_span(idx.body_offset, idx.body_len as u64)
            .map_err(|e| StorageError::io("read chunk for a trace", e))?;
        let mut seqs = Vec::new();
        for part in seg.parse_span(&span, idx.body_offset, idx.body_len as u64) {
            if let Part::Entry { info, record } = part
                && info.kind.holds_events()
                && let Ok(events) = record::decode_chunk(&record)
            {
                seqs.extend(events.iter().map(|e| e.seq));
            }
        }
        Ok(seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_when_they_touch_or_overlap() {
        let mut r = SeqRanges::default();
        for s in [5, 7, 6, 1, 2, 10] {
            r.insert(s);
        }
        assert_eq!(r.to_vec(), vec![(1, 2), (5, 7), (10, 10)]);
        r.insert_range(3, 4);
        assert_eq!(r.to_vec(), vec![(1, 7), (10, 10)]);
        r.insert_range(0, 20);
        assert_eq!(r.to_vec(), vec![(0, 20)]);
        assert!(r.contains(0) && r.contains(20) && !r.contains(21));
        assert_eq!(r.first(), Some(0));
    }

    #[test]
    fn a_queued_chunk_trace_pins_its_generation_until_written() {
        let t = Traces::default();
        let idx = ChunkIndex {
            events: 2,
            bytes: 2,
            last_seq: 9,
            first_enqueued_ms: 0,
            body_gen: 3,
            body_offset: 40,
            body_len: 60,
        };
        t.gone_chunk(8, idx);
        assert!(t.any() && t.pinned(3) && !t.pinned(2));
        let p = t.take();
        assert!(!t.any() && t.pinned(3), "taken, not yet written");
        t.put_back(p);
        let p = t.take();
        t.written(&p.chunks);
        assert!(!t.pinned(3));
    }
}
