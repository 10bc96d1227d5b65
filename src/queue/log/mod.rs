//! A topic's log: the one path by which bytes reach a topic's body files.
//!
//! Every append — a commit round's chunks, a durable producer's own entry, a
//! rewrite after a partial settle, `max_age`, a replay or compaction — goes
//! through [`TopicLog`], under its lock. The lock also covers the choice of
//! the generation written to and every switch to a new one, so a topic's
//! entries have one total order, (generation, offset), and no write lands in
//! a generation after the topic moved on from it.
//!
//! # Invariants
//!
//! - G1 (one writer at a time): appends, rotation and the truncation of a
//!   failed write happen under the log lock.
//! - G2 (nothing is lost by rotation): an entry appended to generation `g`
//!   counts in `inflight[g]` from its write until its chunk is in the index;
//!   the reaper deletes `g` only when it is not current, `inflight[g]` is 0
//!   and the index holds no chunk in it (`queue/reap.rs`).
//! - G3 (the checkpoint): new entries wait in `unindexed`, in append order,
//!   until the committer indexes them; the committer takes a prefix. The
//!   position of the first entry still waiting (or the log's end) is the
//!   checkpoint it writes in the same sled batch as the index records of the
//!   prefix: every new entry before it was indexed (and, if no index record
//!   covers it now, settled since), every new entry after it was not, so open
//!   adopts exactly the uncovered new entries from there (`queue/open/recover.rs`).
//! - G4 (a failed write leaves nothing): a write that fails is truncated back;
//!   if even that fails the generation is abandoned (the next append starts a
//!   new one) and its tail is never indexed.
//! - G5 (synced before trusted): with `fsync`, a new file's header and
//!   directory entry are synced before it is used, a generation is synced in
//!   full before the log moves on from it, and `synced` only moves forward.
//! - G6 (written ahead with zeros): with `fsync`, a write that passes the end
//!   of what the current generation has allocated also writes zeros past its
//!   own end (as much as the generation holds, from [`WRITE_AHEAD_MIN`] up to
//!   [`WRITE_AHEAD_MAX`]; never before [`WRITE_AHEAD_MIN`] bytes were
//!   written), in the same `writev`. The next appends overwrite those zeros,
//!   so their `fdatasync`s commit data only, no change of the file's size or
//!   extents (SQLite's WAL overwrites its file for the same reason). The
//!   zeros end a scan (S3 in `queue/log/segment.rs`); the tail is cut off when the
//!   log moves on from the generation and at `close`, and a crash leaves at
//!   most [`WRITE_AHEAD_MAX`] bytes of it per topic, counted in the disk
//!   usage until the generation is deleted. Open never appends to a file it
//!   found, so no append ever lands after bytes a crash left behind.
//! - G7 (close is final): every write passes the store's gate under the log
//!   lock. Once `close` begins only the committer's last round writes (the
//!   buffered events it commits, the traces it flushes); once it is done
//!   nothing does. A producer that had not written by then gets `Closed`,
//!   never `Ok`, and no byte reaches a body file after `close` returned.
//! - G8 (sync positions are announced): `synced` moves only through
//!   `set_synced`, which publishes it to the producers waiting on it, so a
//!   rotation that synced a generation and then failed to create the next
//!   one still wakes them. A failed `fdatasync` that is transient (out of
//!   descriptors: reopening the file for it failed) is returned to the caller
//!   to retry, and sticks nowhere; a fatal one poisons the log — the kernel
//!   may have dropped the pages it covered, so no later sync ever reports
//!   them synced — and is announced to the producers waiting for them.
//! - G9 (stable bytes are published): after every append the log publishes
//!   the current generation's end, and when it moves on it publishes the
//!   new generation's end before the generation. No write changes a byte
//!   of an older generation or below the published end, so readers may
//!   keep those bytes ([`LogSignals::stable_end`], `queue/log/read_ahead.rs`).

mod appended;
mod bodies;
pub(crate) mod entry;
mod group;
pub(crate) mod logs;
pub(crate) mod read;
pub(crate) mod read_ahead;
pub(crate) mod segment;
mod sync_mark;
pub(crate) mod syncer;
pub(crate) mod trace;

pub(crate) use appended::{Appended, DurableAppend, Placed, Record, coalesce};
pub(crate) use bodies::{Admit, Bodies, body_generations, body_topics};
pub(crate) use sync_mark::{POISONED, SyncFailure, SyncWatch};

use crate::queue::storage::StorageError;
use crate::queue::topic::Topic;
use crate::queue::usage::Usage;
use crate::queue::vec_map::VecMap;
use crate::record;
use entry::EntryKind;
use group::GroupQueue;
use segment::{Segment, SegmentHeader};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use trace::Traces;

/// A generation takes appends until it holds this many bytes.
pub(crate) const GENERATION_BYTES: u64 = 64 * 1024 * 1024;

/// Past this many bytes, the current generation is replaced (and so deleted
/// once drained) as soon as less than half of what it holds is still queued:
/// a caught-up topic's garbage stays about as small as its backlog.
pub(crate) const GENERATION_MIN_ROTATE: u64 = 1024 * 1024;

/// A generation is written ahead with zeros (G6) once it holds this many bytes.
pub(crate) const WRITE_AHEAD_MIN: u64 = 64 * 1024;

/// The most zeros written ahead of a generation's end (G6).
pub(crate) const WRITE_AHEAD_MAX: u64 = 1024 * 1024;

/// Zeros to write ahead from.
static ZEROS: [u8; WRITE_AHEAD_MAX as usize] = [0; WRITE_AHEAD_MAX as usize];

/// What a topic's index tells its log without taking the log's lock.
#[derive(Default, Debug)]
pub(crate) struct LogSignals {
    /// The generation appends go to (written under the log lock).
    pub(crate) current: AtomicU32,
    /// The append position in `current` (written under the log lock, after
    /// each append and before `current` moves on: G9).
    end: AtomicU64,
    /// The current generation is mostly drained: start a new one at the next
    /// append, so this one can be deleted (set by the index, `queue/index/mod.rs`).
    pub(crate) rotate: AtomicBool,
    /// Traces the index queued for the log to write (`queue/log/trace.rs`).
    pub(crate) traces: Traces,
}

impl LogSignals {
    /// Where bytes of generation `g` may still change (G9): nowhere in an
    /// older generation than the current one, from the published end in
    /// the current one.
    pub(crate) fn stable_end(&self, g: u32) -> u64 {
        let current = self.current.load(Ordering::Acquire);
        if g < current {
            return u64::MAX;
        }
        // Read after `current`: an end published for a later generation is
        // one from after `g` stopped changing.
        if g == current {
            self.end.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Publishes the current generation's append position (G9).
    fn publish_end(&self, end: u64) {
        self.end.store(end, Ordering::Release);
    }
}

/// Evaluates a boolean fail point (always false without the `failpoints` feature).
pub(crate) fn injected(point: impl FnOnce() -> bool) -> bool {
    point()
}

/// State guarded by a topic log's lock.
pub(crate) struct LogState {
    /// The generation appends go to.
    pub(crate) generation: u32,
    seg: Option<Arc<Segment>>,
    /// The append position in `gen`.
    pub(crate) end: u64,
    /// The length of `gen`'s file: `end`, or past it by the zeros written
    /// ahead (G6).
    allocated: u64,
    /// Bytes appended to `gen` by this process.
    pub(crate) written: u64,
    /// Start a new generation before the next append.
    pub(crate) rotate: bool,
    /// Generation files of this topic on disk.
    pub(crate) gens: BTreeSet<u32>,
    /// Entries appended per generation and not yet indexed (G2).
    pub(crate) inflight: BTreeMap<u32, u64>,
    /// New entries waiting for the committer, in append order (G3).
    pub(crate) unindexed: Vec<Appended>,
    /// Events of `unindexed`.
    pub(crate) unindexed_usage: Usage,
    /// Events sealed by the committer and being written.
    pub(crate) pending: Usage,
    /// Everything at or before this (generation, offset) is synced; moved
    /// only by [`TopicLog::set_synced`], which announces it (G8).
    synced: (u32, u64),
    /// A failed `fdatasync` of this log: the kernel may have dropped the
    /// pages it covered, so nothing after it is ever reported synced (G8).
    poisoned: Option<StorageError>,
    /// The first generation this process made: older ones may hold traces
    /// it never saw.
    born: u32,
    /// Generations this process wrote (or tried to write) a trace entry to;
    /// the only ones from `born` on that can hold one.
    traced: BTreeSet<u32>,
}

impl LogState {
    /// Everything at or before this (generation, offset) is synced.
    pub(crate) fn synced(&self) -> (u32, u64) {
        self.synced
    }

    /// The checkpoint now (G3): where the first new entry not yet indexed
    /// is, or the end of the log.
    pub(crate) fn checkpoint(&self) -> (u32, u64) {
        self.unindexed
            .first()
            .map_or((self.generation, self.end), |a| {
                (a.index.body_gen, a.index.body_offset)
            })
    }

    /// Marks `n` entries of generation `g` indexed (or abandoned) (G2).
    pub(crate) fn settled(&mut self, g: u32, n: u64) {
        if let Some(c) = self.inflight.get_mut(&g) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.inflight.remove(&g);
            }
        }
    }
}

/// The seqs of the event entries in `parts` (whole entries, in order).
fn entry_seqs(parts: &[&[u8]]) -> Vec<u64> {
    let bytes: Vec<u8> = parts.concat();
    let hl = entry::ENTRY_HEADER as usize;
    let mut seqs = Vec::new();
    let mut at = 0;
    while at + hl <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap_or([0; 4])) as usize;
        let Some(rec) = bytes.get(at + hl..at + hl + len) else {
            break;
        };
        if let Ok(events) = record::decode_chunk(rec) {
            seqs.extend(events.iter().map(|e| e.seq));
        }
        at += hl + len;
    }
    seqs
}

/// Cuts the current generation's file back to `len`; what it cut leaves the
/// disk usage and `allocated` (nothing changes if the cut fails).
fn cut_to(st: &mut LogState, b: &Bodies, len: u64) -> std::io::Result<()> {
    let Some(seg) = &st.seg else { return Ok(()) };
    seg.truncate(len)?;
    b.disk_bytes
        .fetch_sub(st.allocated.saturating_sub(len), Ordering::Relaxed);
    st.allocated = len;
    Ok(())
}

/// One topic's log (see the module docs).
pub(crate) struct TopicLog {
    pub(crate) topic: Topic,
    /// Shared with the topic's index.
    pub(crate) signals: Arc<LogSignals>,
    state: Mutex<LogState>,
    /// Serializes `fdatasync`s of this log: a caller that waited for another's
    /// sync usually finds its own position covered (group commit).
    syncing: Mutex<()>,
    /// Handles of this topic's generation files, opened on first read.
    segs: Mutex<VecMap<u32, Arc<Segment>>>,
    /// The synced position and failures producers wait on (G8).
    synced: SyncWatch,
    /// Durable producers' requests waiting for the next group write
    /// (`queue/log/group.rs`).
    pub(crate) group: GroupQueue,
    /// The salt of the entry header checks of every file this log makes
    /// (random, 24 bits; `queue/log/entry.rs`). This log appends only to files it
    /// made, so each file has one salt.
    pub(crate) salt: u32,
}

impl TopicLog {
    /// A log whose next generation is `next_gen`, with `gens` on disk.
    pub(crate) fn new(topic: Topic, gens: BTreeSet<u32>, next_gen: u32) -> TopicLog {
        let signals = Arc::new(LogSignals::default());
        signals.current.store(next_gen.max(1), Ordering::Release);
        TopicLog {
            topic,
            signals,
            state: Mutex::new(LogState {
                generation: next_gen.max(1),
                seg: None,
                end: 0,
                allocated: 0,
                written: 0,
                rotate: false,
                gens,
                inflight: BTreeMap::new(),
                unindexed: Vec::new(),
                unindexed_usage: Usage::default(),
                pending: Usage::default(),
                synced: (0, 0),
                poisoned: None,
                born: next_gen.max(1),
                traced: BTreeSet::new(),
            }),
            syncing: Mutex::new(()),
            segs: Mutex::new(VecMap::default()),
            synced: SyncWatch::default(),
            group: GroupQueue::default(),
            salt: fastrand::u32(..) & 0x00ff_ffff,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the log takes no more writes (G8, W6 in `log/group.rs`).
    pub(crate) fn poisoned(&self) -> bool {
        self.lock().poisoned.is_some()
    }

    /// The synced position, for producers awaiting their sync.
    pub(crate) fn sync_marks(&self) -> &SyncWatch {
        &self.synced
    }

    /// Moves the synced position forward to `pos` and announces it (G8): the
    /// one way `synced` changes, so no waiter misses a wake-up.
    fn set_synced(&self, st: &mut LogState, pos: (u32, u64)) {
        if pos > st.synced {
            st.synced = pos;
        }
        let at = st.synced;
        self.synced.update(|m| {
            let moved = at > m.pos;
            m.pos = m.pos.max(at);
            moved
        });
    }

    /// Records a failed `fdatasync` (G8): a fatal one poisons the log, and
    /// every producer waiting on it — now or later — learns it: nothing of
    /// this log will ever be reported synced again.
    fn sync_failed(&self, st: &mut LogState, error: &StorageError) {
        if !error.is_transient() {
            st.poisoned = Some(error.clone());
            self.announce_failure(POISONED, error.clone());
        }
    }

    /// Tells the producers waiting for bytes up to `upto` that their sync
    /// failed with `error` (a fatal failure, or a transient one the syncer
    /// gave up retrying, or `close`).
    pub(crate) fn announce_failure(&self, upto: (u32, u64), error: StorageError) {
        self.synced.update(|m| {
            m.failures += 1;
            m.failure = Some(SyncFailure { upto, error });
            true
        });
    }

    /// The position a sync now would cover.
    pub(crate) fn end(&self) -> (u32, u64) {
        let st = self.lock();
        (st.generation, st.end)
    }

    /// `fdatasync`s generation `seg` up to `target` under the log lock (a
    /// rotation), announcing the new synced position.
    fn sync_locked(
        &self,
        st: &mut LogState,
        seg: &Segment,
        target: (u32, u64),
    ) -> Result<(), StorageError> {
        if let Some(e) = st.poisoned.clone() {
            self.announce_failure(POISONED, e.clone());
            return Err(e);
        }
        match seg.sync() {
            Ok(()) => {
                self.set_synced(st, target);
                Ok(())
            }
            Err(e) => {
                let e = StorageError::io("fdatasync body generation", e);
                self.sync_failed(st, &e);
                Err(e)
            }
        }
    }

    /// The segment to append to, starting a new generation first when one is
    /// due (G1, G5).
    fn current(&self, st: &mut LogState, b: &Bodies) -> Result<Arc<Segment>, StorageError> {
        let forced = injected(|| {
            fail::fail_point!("queue::generation::force_rotate", |_| true);
            false
        });
        let hinted = self.signals.rotate.swap(false, Ordering::AcqRel);
        if let Some(seg) = &st.seg
            && !st.rotate
            && !hinted
            && !forced
            && st.written < GENERATION_BYTES
        {
            return Ok(seg.clone());
        }
        let next = st
            .gens
            .last()
            .map_or(st.generation, |g| (*g + 1).max(st.generation))
            .max(1);
        // With fsync the generation left behind is synced in full first, so
        // `synced` moves forward only (G5); the move is announced (G8).
        if b.fsync
            && let Some(old) = st.seg.clone()
            && st.synced < (st.generation, st.end)
        {
            let target = (st.generation, st.end);
            self.sync_locked(st, &old, target)?;
        }
        self.cut_write_ahead(st, b);
        let header = SegmentHeader {
            instance: b.instance.to_string(),
            next_seq: b.next_seq.load(Ordering::Acquire),
            salt: self.salt,
        };
        let seg = Segment::create(&b.files, &b.path(&self.topic, next), header, b.fsync)
            .map_err(|e| StorageError::io("create body generation", e))?;
        b.disk_bytes.fetch_add(seg.first_entry(), Ordering::Relaxed);
        st.gens.insert(next);
        self.segs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(next, seg.clone());
        st.generation = next;
        // G9: the new generation's end before the generation itself.
        self.signals.publish_end(seg.first_entry());
        self.signals.current.store(next, Ordering::Release);
        st.seg = Some(seg.clone());
        st.end = seg.first_entry();
        st.allocated = st.end;
        st.written = 0;
        st.rotate = false;
        if b.fsync {
            let at = (next, st.end);
            self.set_synced(st, at);
        }
        Ok(seg)
    }

    /// Writes `parts` (whole entries of `len` bytes) at the end of the current
    /// generation, after the traces queued so far (TR1); a failed write is
    /// truncated back (G4). Returns where `parts` start.
    pub(super) fn write(
        &self,
        st: &mut LogState,
        b: &Bodies,
        admit: Admit,
        parts: &[&[u8]],
        len: u64,
    ) -> Result<(u32, u64), StorageError> {
        if !b.admits(admit) {
            return Err(StorageError::closed());
        }
        if let Some(e) = &st.poisoned {
            return Err(e.clone());
        }
        if len == 0 && !self.signals.traces.any() {
            return Ok((st.generation, st.end));
        }
        let seg = self.current(st, b)?;
        let trace = self.trace_entry(b);
        let tlen = trace.as_ref().map_or(0, |(t, _)| t.len() as u64);
        if len + tlen == 0 {
            return Ok((st.generation, st.end));
        }
        let at = st.end;
        let total = len + tlen;
        let ahead = if b.fsync && at + total > st.allocated && st.written + total >= WRITE_AHEAD_MIN
        {
            // G6: zeros up to a page boundary past this write's end.
            let want = (st.written + total).min(WRITE_AHEAD_MAX);
            let to = (at + total + want).div_ceil(4096) * 4096;
            (to - (at + total)).min(WRITE_AHEAD_MAX)
        } else {
            0
        };
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        if let Some((t, _)) = &trace {
            // Before the write: a cut back that fails may leave it there.
            st.traced.insert(st.generation);
            all.push(t);
        }
        all.extend_from_slice(parts);
        let mut written = if ahead > 0 {
            let mut with_zeros = all.clone();
            with_zeros.push(&ZEROS[..ahead as usize]);
            seg.write_at(at, &with_zeros)
        } else {
            seg.write_at(at, &all)
        };
        if ahead > 0 && written.is_err() {
            // The zeros may be what did not fit (a full disk): cut back and
            // write just the entries.
            let _ = seg.truncate(at.max(st.allocated));
            written = seg.write_at(at, &all);
        }
        let written = written.map_err(|e| StorageError::io("append chunk", e));
        #[cfg(feature = "failpoints")]
        let written = match injected(|| {
            fail::fail_point!("queue::append::after_write", |_| true);
            false
        }) {
            true => Err(StorageError::injected("queue::append::after_write")),
            false => written,
        };
        if let Err(e) = written {
            if let Some((_, pending)) = trace {
                self.signals.traces.put_back(pending);
            }
            // Cut back to the entries' start (zeros written ahead before
            // this write are cut with it, G4).
            if cut_to(st, b, at).is_err() {
                // The tail cannot be cut: never append after it (G4), and
                // trace its events gone, so no open adopts what its producers
                // were told failed (whole entries of it may be on disk).
                st.rotate = true;
                self.signals.traces.gone(entry_seqs(parts));
            }
            return Err(e);
        }
        if let Some((_, pending)) = &trace {
            self.signals.traces.written(&pending.chunks);
        }
        st.end = at + total;
        self.signals.publish_end(st.end);
        st.written += total;
        let allocated = st.allocated.max(st.end + ahead);
        b.disk_bytes
            .fetch_add(allocated - st.allocated, Ordering::Relaxed);
        st.allocated = allocated;
        Ok((st.generation, at + tlen))
    }

    /// Writes the traces still queued (the committer, each round; the reaper
    /// before it deletes a generation whose traces it carried forward).
    pub(crate) fn flush_traces(&self, b: &Bodies, admit: Admit) -> Result<(), StorageError> {
        if !self.signals.traces.any() {
            return Ok(());
        }
        let mut st = self.lock();
        self.write(&mut st, b, admit, &[], 0).map(|_| ())
    }

    /// Cuts the zeros written ahead of the current generation's end (G6).
    /// A failure is only logged: the zeros end every scan either way.
    fn cut_write_ahead(&self, st: &mut LogState, b: &Bodies) {
        if st.allocated <= st.end {
            return;
        }
        if let Err(e) = cut_to(st, b, st.end) {
            tracing::warn!(topic = %self.topic, error = %e, "Could not cut the zeros written ahead of a body file; they stay until it is deleted.");
        }
    }

    /// Cuts the zeros written ahead of the current generation (at `close`, G6).
    pub(crate) fn finish(&self, b: &Bodies) {
        let mut st = self.lock();
        self.cut_write_ahead(&mut st, b);
    }

    /// Appends chunk records (`kind`) and returns where each landed. New
    /// entries are a commit round's: their events move from `pending` to
    /// `unindexed` (in this one critical section, so they are counted once)
    /// and wait there for indexing; every entry counts in flight until its
    /// caller (or the committer) reports it indexed (G2).
    pub(crate) fn append(
        &self,
        b: &Bodies,
        admit: Admit,
        records: &[Record<'_>],
        kind: EntryKind,
    ) -> Result<Vec<Placed>, StorageError> {
        let headers: Vec<[u8; entry::ENTRY_HEADER as usize]> = records
            .iter()
            .map(|r| entry::header(r.first_seq, r.raw.len() as u32, kind, self.salt))
            .collect();
        let mut parts: Vec<&[u8]> = Vec::with_capacity(records.len() * 2);
        let mut len = 0;
        for (h, r) in headers.iter().zip(records) {
            parts.push(h);
            parts.push(r.raw);
            len += entry::ENTRY_HEADER + r.raw.len() as u64;
        }
        let mut st = self.lock();
        let (generation, mut at) = self.write(&mut st, b, admit, &parts, len)?;
        let mut placed = Vec::with_capacity(records.len());
        for r in records {
            let span = entry::ENTRY_HEADER + r.raw.len() as u64;
            placed.push(Placed {
                generation,
                offset: at,
                span,
            });
            if kind == EntryKind::New {
                let (events, bytes) = (r.summary.events as u64, r.summary.bytes);
                st.unindexed.push(Appended {
                    first_seq: r.first_seq,
                    index: r.summary.placed(generation, at, span as u32),
                });
                st.unindexed_usage.add(events, bytes);
                st.pending.sub(events, bytes);
            }
            at += span;
        }
        *st.inflight.entry(generation).or_default() += records.len() as u64;
        Ok(placed)
    }

    /// `fdatasync`s the log up to its current end unless a sync already
    /// covers it; blocking (the committer, rewrites, the syncer thread).
    /// A transient failure (out of descriptors) is returned for the caller to
    /// retry; a fatal one poisons the log and is announced to its waiters (G8).
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        let _one = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let (seg, target) = {
            let mut st = self.lock();
            if let Some(e) = st.poisoned.clone() {
                // Producers that began waiting after it was announced learn it too.
                self.announce_failure(POISONED, e.clone());
                return Err(e);
            }
            let target = (st.generation, st.end);
            match &st.seg {
                Some(seg) if st.synced < target => (seg.clone(), target),
                _ => {
                    // Covered already: announce it anyway (a rotation may
                    // have moved it, G8).
                    let at = st.synced;
                    self.set_synced(&mut st, at);
                    return Ok(());
                }
            }
        };
        fail::fail_point!("queue::log::before_fdatasync");
        let synced = seg.sync();
        let mut st = self.lock();
        if let Some(e) = st.poisoned.clone() {
            // Another sync of this file (a rotation's) failed meanwhile: the
            // kernel reports a writeback error once, so this one's `Ok` does
            // not vouch for the pages (G8).
            self.announce_failure(POISONED, e.clone());
            return Err(e);
        }
        match synced {
            Ok(()) => {
                self.set_synced(&mut st, target);
                Ok(())
            }
            Err(e) => {
                let e = StorageError::io("fdatasync body generation", e);
                self.sync_failed(&mut st, &e);
                Err(e)
            }
        }
    }

    /// The file of generation `g`, for reading (opened on first use).
    pub(crate) fn segment(&self, b: &Bodies, g: u32) -> Result<Arc<Segment>, StorageError> {
        let mut segs = self.segs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = segs.get(&g) {
            return Ok(s.clone());
        }
        let seg = Segment::open(&b.files, &b.path(&self.topic, g))
            .map_err(|e| StorageError::io("open body generation", e))?;
        segs.insert(g, seg.clone());
        Ok(seg)
    }

    /// Deletes generation `g`'s file (the reaper, once nothing needs it).
    pub(crate) fn delete(&self, b: &Bodies, g: u32) -> Result<(), StorageError> {
        self.segs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&g);
        let path = b.path(&self.topic, g);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        match crate::queue::io::remove_file(&path) {
            Ok(()) => {
                b.disk_bytes.fetch_sub(len, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StorageError::io("delete body generation", e))
            }
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
