//! The in-memory index: every committed chunk of every topic, by state, with
//! per-state accounting, the body generations chunks point into, the
//! outstanding leases, and each topic's sled writes waiting for the committer.
//!
//! The index is the queue's live truth while the process runs; sled trails it
//! (each change queues an [`Op`] that the committer applies in order, see
//! `queue/ops.rs`), and the body files hold the bytes. Everything here is
//! guarded by one mutex ([`Catalog`]). Chunks change state only through
//! the transitions in `queue/index/chunk.rs`.
//!
//! # Invariants
//!
//! - L1: every chunk is in exactly one [`ChunkState`]; `Ready` chunks are in
//!   `ready`, `Delayed` ones in `delayed` (keyed by not-before time).
//! - L2: each state's [`Usage`] equals the sum of `events`/`bytes` over the
//!   chunks in that state; `place`, `unplace` and `undelay` are the only
//!   writers.
//! - L3: a body generation's `refs` is the number of chunks naming it and
//!   `live` their span bytes; `pins` counts readers reading it outside the
//!   lock. A generation file is deleted only when `refs` and `pins` are 0 and
//!   its topic log has no entry in it waiting to be indexed (`queue/reap.rs`).
//! - L4: `ops` holds, in transition order, the sled writes of every transition
//!   not yet applied; applying them in order makes sled equal the index.

pub(crate) mod chunk;

use crate::queue::locking::lock;
use crate::queue::log::{GENERATION_MIN_ROTATE, LogSignals, TopicLog};
use crate::queue::seq_map::SeqMap;
use crate::queue::usage::Usage;
use crate::queue::vec_map::VecMap;
use crate::record::DeadLetter;
use chunk::{ChunkInfo, ChunkState, Op};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::watch;

/// The index part of a store: the in-memory [`Index`] behind one mutex
/// (fifth in the lock order, `locking.rs`), the counters consumers of each
/// topic wait on, and lease ids.
pub(crate) struct Catalog {
    index: Mutex<Index>,
    /// Per-topic counters consumers wait on, made when the first consumer
    /// subscribes (a topic nobody waits on costs none: ~0.5 KiB each); the
    /// index holds clones.
    wakers: Mutex<HashMap<Arc<str>, Arc<watch::Sender<u64>>>>,
    /// The last lease id handed out.
    next_lease: AtomicU64,
}

impl Catalog {
    pub(crate) fn new(index: Index) -> Catalog {
        Catalog {
            index: Mutex::new(index),
            wakers: Mutex::new(HashMap::new()),
            next_lease: AtomicU64::new(0),
        }
    }

    /// Takes the index lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// The counter consumers of `topic` wait on, made on first use and
    /// handed to the topic's index entry. Takes the index lock: never call
    /// it holding that.
    pub(crate) fn waker(&self, topic: &Arc<str>) -> Arc<watch::Sender<u64>> {
        let mut index = self.lock();
        let waker = lock(&self.wakers)
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(watch::channel(0).0))
            .clone();
        if let Some(t) = index.topics.get_mut(topic) {
            t.wake.get_or_insert_with(|| waker.clone());
        }
        waker
    }

    /// `topic`'s entry in the in-memory index, made on first use (a topic a
    /// commit round or a replay meets before any chunk of it was indexed).
    pub(crate) fn topic_index<'i>(
        &self,
        index: &'i mut Index,
        topic: &Arc<str>,
        log: &TopicLog,
    ) -> &'i mut TopicIndex {
        index.topics.entry(topic.clone()).or_insert_with(|| {
            let mut t = Box::new(TopicIndex::new(0, log.signals.clone()));
            t.wake = lock(&self.wakers).get(topic).cloned();
            t
        })
    }

    /// A new lease id.
    pub(crate) fn next_lease(&self) -> u64 {
        self.next_lease.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// How much of one generation file the index uses (L3).
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct GenUse {
    pub(crate) refs: u64,
    pub(crate) pins: u64,
    /// Span bytes of the chunks in it now.
    pub(crate) live: u64,
    /// Span bytes ever indexed into it by this process.
    pub(crate) indexed: u64,
}

/// One topic's committed chunks.
pub(crate) struct TopicIndex {
    /// Dense (`queue/seq_map.rs`): ~96 bytes a chunk, where a `BTreeMap`
    /// filled in seq order cost ~176 and ~1 KiB for a topic's first chunk.
    pub(crate) chunks: SeqMap<ChunkInfo>,
    pub(super) ready: BTreeSet<u64>,
    pub(super) delayed: BTreeSet<(u64, u64)>,
    pub(crate) ready_usage: Usage,
    pub(crate) delayed_usage: Usage,
    pub(crate) leased_usage: Usage,
    /// Chunks claimed by compaction while their bodies move.
    pub(crate) moving_usage: Usage,
    pub(crate) dead_usage: Usage,
    pub(super) gens: VecMap<u32, GenUse>,
    /// sled writes not yet applied, in transition order (L4).
    pub(super) ops: Vec<Op>,
    /// The high-water queued or written (a new one is queued only when higher).
    pub(super) high_water: u64,
    /// The checkpoint queued or written: (generation, offset).
    pub(super) checkpoint: (u32, u64),
    /// Bumped whenever chunks become ready; consumers wait on it. None
    /// until a consumer subscribes (`Catalog::waker`).
    pub(crate) wake: Option<Arc<watch::Sender<u64>>>,
    /// The topic log's current generation, and where to ask it to rotate.
    pub(super) log: Arc<LogSignals>,
}

impl TopicIndex {
    pub(crate) fn new(high_water: u64, log: Arc<LogSignals>) -> Self {
        Self {
            chunks: SeqMap::default(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            ready_usage: Usage::default(),
            delayed_usage: Usage::default(),
            leased_usage: Usage::default(),
            moving_usage: Usage::default(),
            dead_usage: Usage::default(),
            gens: VecMap::default(),
            ops: Vec::new(),
            high_water,
            checkpoint: (0, 0),
            wake: None,
            log,
        }
    }

    fn usage_mut(&mut self, state: ChunkState) -> &mut Usage {
        match state {
            ChunkState::Ready => &mut self.ready_usage,
            ChunkState::Delayed => &mut self.delayed_usage,
            ChunkState::Leased(_) => &mut self.leased_usage,
            ChunkState::Moving => &mut self.moving_usage,
        }
    }

    /// Adds a chunk in `state` (`Ready` becomes `Delayed` if its not-before
    /// time is still ahead). The only writer of the sets and usage, with
    /// [`TopicIndex::unplace`] and [`TopicIndex::undelay`] (L1, L2, L3).
    pub(super) fn place(&mut self, key: u64, mut info: ChunkInfo, state: ChunkState, now_ms: u64) {
        info.state = match state {
            ChunkState::Ready | ChunkState::Delayed if info.not_before_ms > now_ms => {
                self.delayed.insert((info.not_before_ms, key));
                ChunkState::Delayed
            }
            ChunkState::Ready | ChunkState::Delayed => {
                self.ready.insert(key);
                ChunkState::Ready
            }
            other => other,
        };
        let (e, b) = (info.index.events as u64, info.index.bytes);
        self.usage_mut(info.state).add(e, b);
        let g = self.gens.entry_or_default(info.index.body_gen);
        g.refs += 1;
        g.live += info.index.body_len as u64;
        if let Some(old) = self.chunks.insert(key, info) {
            // Keys are unique first seqs: replacing one is a bug.
            debug_assert!(false, "chunk {key} placed twice");
            self.forget(key, &old);
        }
    }

    /// Removes a chunk whatever its state.
    pub(super) fn unplace(&mut self, key: u64) -> Option<ChunkInfo> {
        let info = self.chunks.remove(&key)?;
        self.forget(key, &info);
        Some(info)
    }

    fn forget(&mut self, key: u64, info: &ChunkInfo) {
        match info.state {
            ChunkState::Ready => {
                self.ready.remove(&key);
            }
            ChunkState::Delayed => {
                self.delayed.remove(&(info.not_before_ms, key));
            }
            ChunkState::Leased(_) | ChunkState::Moving => {}
        }
        let (e, b) = (info.index.events as u64, info.index.bytes);
        self.usage_mut(info.state).sub(e, b);
        let body_gen = info.index.body_gen;
        if let Some(g) = self.gens.get_mut(&body_gen) {
            g.refs = g.refs.saturating_sub(1);
            g.live = g.live.saturating_sub(info.index.body_len as u64);
            // Past GENERATION_MIN_ROTATE, the current generation is replaced
            // once less than half of what went into it is still queued: a
            // caught-up topic's garbage stays about as small as its backlog.
            if g.indexed >= GENERATION_MIN_ROTATE
                && g.live * 2 < g.indexed
                && self.log.current.load(Ordering::Acquire) == body_gen
            {
                self.log.rotate.store(true, Ordering::Release);
            }
        }
    }

    /// Counts `bytes` of new body entries indexed into generation `body_gen`.
    pub(super) fn note_indexed(&mut self, body_gen: u32, bytes: u64) {
        self.gens.entry_or_default(body_gen).indexed += bytes;
    }

    /// Delayed → Ready for chunk `key`, delayed until `not_before`: moves it
    /// between the sets and the usage, and nothing else (its generation's
    /// accounting stays as it is). Returns the chunk, or `None` when it is
    /// not delayed under that time.
    pub(super) fn undelay(&mut self, not_before: u64, key: u64) -> Option<&mut ChunkInfo> {
        if !self.delayed.remove(&(not_before, key)) {
            return None;
        }
        let info = self.chunks.get_mut(&key)?;
        info.state = ChunkState::Ready;
        let (e, b) = (info.index.events as u64, info.index.bytes);
        self.delayed_usage.sub(e, b);
        self.ready_usage.add(e, b);
        self.ready.insert(key);
        self.chunks.get_mut(&key)
    }

    /// When the earliest delayed chunk becomes due (ms since the epoch).
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        self.delayed.first().map(|(nb, _)| *nb)
    }

    /// Pins generation `body_gen` while a chunk is read outside the lock (L3).
    pub(crate) fn pin(&mut self, body_gen: u32) {
        self.gens.entry_or_default(body_gen).pins += 1;
    }

    /// Releases a pin taken by [`TopicIndex::pin`].
    pub(crate) fn unpin(&mut self, body_gen: u32) {
        if let Some(g) = self.gens.get_mut(&body_gen) {
            g.pins = g.pins.saturating_sub(1);
        }
    }

    /// How much of generation `body_gen` is in use.
    pub(crate) fn gen_use(&self, body_gen: u32) -> GenUse {
        self.gens.get(&body_gen).copied().unwrap_or_default()
    }

    /// Forgets a generation being deleted (no chunk and no reader uses it).
    pub(crate) fn forget_gen(&mut self, body_gen: u32) {
        self.gens.remove(&body_gen);
    }

    /// Bumps the generation counter so waiting consumers look again.
    pub(crate) fn wake(&self) {
        if let Some(wake) = &self.wake {
            wake.send_modify(|g| *g = g.wrapping_add(1));
        }
    }

    /// The oldest enqueue time among committed chunks (of the first few).
    pub(crate) fn oldest_ms(&self) -> Option<u64> {
        self.chunks
            .values()
            .take(64)
            .map(|c| c.index.first_enqueued_ms)
            .min()
    }

    /// Takes the sled writes queued so far (L4).
    pub(super) fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }

    /// The dead letters the index knows and sled does not yet: the queued
    /// writes of dead letters (`Some`) and of their removal (`None`), the
    /// last per seq (L4). Empty once every queued write is applied; not
    /// while an apply holds a topic's writes back (its traces could not be
    /// written yet, `ops.rs`). Readers of sled's dead letters lay it over
    /// what they read.
    pub(crate) fn pending_dead(&self) -> BTreeMap<u64, Option<DeadLetter>> {
        let mut out = BTreeMap::new();
        for op in &self.ops {
            match op {
                Op::Dead(d) => {
                    out.insert(d.seq, Some(d.clone()));
                }
                Op::Undead(seq) => {
                    out.insert(*seq, None);
                }
                _ => {}
            }
        }
        out
    }

    /// Recounts the per-state usage from the chunks (for `verify`); returns
    /// (ready, delayed, leased, moving).
    pub(crate) fn recount(&self) -> [Usage; 4] {
        let mut out = [Usage::default(); 4];
        for c in self.chunks.values() {
            let i = match c.state {
                ChunkState::Ready => 0,
                ChunkState::Delayed => 1,
                ChunkState::Leased(_) => 2,
                ChunkState::Moving => 3,
            };
            out[i].add(c.index.events as u64, c.index.bytes);
        }
        out
    }

    /// Replaces the per-state usage with a recount (`verify`'s repair).
    pub(crate) fn set_usage(&mut self, counted: [Usage; 4]) {
        [
            self.ready_usage,
            self.delayed_usage,
            self.leased_usage,
            self.moving_usage,
        ] = counted;
    }
}

/// A lease's bookkeeping (its events live in the `Lease` value the caller holds).
pub(crate) struct LeaseInfo {
    pub(crate) topic: Arc<str>,
    pub(crate) keys: Vec<u64>,
    pub(crate) deadline: Instant,
}

/// All topics' indexes and the outstanding leases.
#[derive(Default)]
pub(crate) struct Index {
    /// Boxed: a B-tree node holds eleven entries; a `TopicIndex` (240
    /// bytes) inline in each made every topic cost its node share twice over.
    pub(crate) topics: BTreeMap<Arc<str>, Box<TopicIndex>>,
    pub(crate) leases: HashMap<u64, LeaseInfo>,
}

#[cfg(test)]
mod tests;
