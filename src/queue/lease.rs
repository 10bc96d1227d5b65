//! The in-memory lease index: which committed chunks exist, which are ready,
//! delayed by a retry, or leased, and the per-topic accounting.
//!
//! Nothing here is persisted except through `storage`: leases live only in
//! memory, so a crash releases every lease and reopening makes every stored
//! chunk leaseable again (the at-least-once redelivery, I4 in `queue/mod.rs`).
//!
//! # Invariants
//!
//! - L1: every chunk is in exactly one state: `Ready` (in `ready`), `Delayed`
//!   (in `delayed`, keyed by its not-before time) or `Leased` (held by one lease).
//! - L2: the per-state counts equal the sums of `ChunkIndex::events`/`bytes` over
//!   the chunks in that state; `insert` and `remove` are the only writers.
//! - L3: a lease's chunks stay `Leased(id)` until the lease is settled, released
//!   or expires; nobody else changes or deletes them meanwhile.
//! - L4: a body generation's `refs` is the number of indexed chunks naming it
//!   (`insert` and `forget` keep it); `pins` counts bodies written to it whose
//!   index records are not inserted yet. A generation is dropped only when both
//!   are 0 and it is neither generation 0 nor the current one, checked under the
//!   index lock ([`TopicIndex::take_unused_generations`]); whoever writes a
//!   body pins its generation first ([`TopicIndex::pin_current`]).

use crate::record::ChunkIndex;
use crate::storage::{BodyTree, TopicTree};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// A count of events and their payload bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Events.
    pub events: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl Usage {
    pub(crate) fn add(&mut self, events: u64, bytes: u64) {
        self.events += events;
        self.bytes += bytes;
    }
    pub(crate) fn sub(&mut self, events: u64, bytes: u64) {
        self.events = self.events.saturating_sub(events);
        self.bytes = self.bytes.saturating_sub(bytes);
    }
}

/// Where a chunk is in its lifecycle (L1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkState {
    Ready,
    Delayed,
    Leased(u64),
}

/// What the index knows of one committed chunk.
#[derive(Clone, Debug)]
pub(crate) struct ChunkInfo {
    pub(crate) index: ChunkIndex,
    pub(crate) attempts: u32,
    pub(crate) not_before_ms: u64,
    pub(crate) last_error: Option<Arc<str>>,
    pub(crate) state: ChunkState,
}

impl ChunkInfo {
    /// A chunk that has never been attempted, ready to lease.
    pub(crate) fn fresh(index: ChunkIndex) -> Self {
        Self {
            index,
            attempts: 0,
            not_before_ms: 0,
            last_error: None,
            state: ChunkState::Ready,
        }
    }
}

/// A body generation writers may still append to once it holds this many
/// record bytes; past it the committer starts the next one.
pub(crate) const GENERATION_BYTES: u64 = 64 * 1024 * 1024;

/// Past this many bytes, the current generation is replaced (and so deleted
/// once drained) as soon as less than half of what it holds is still queued:
/// a caught-up topic's garbage stays about as small as its backlog.
pub(crate) const GENERATION_MIN_ROTATE: u64 = 1024 * 1024;

/// One body generation of a topic (L4).
pub(crate) struct Generation {
    pub(crate) tree: BodyTree,
    refs: u64,
    pins: u64,
    /// Record bytes written to it (approximate after a reopen: 0).
    written: u64,
    /// Record bytes of the indexed chunks in it.
    live: u64,
}

/// One topic's committed chunks.
pub(crate) struct TopicIndex {
    pub(crate) tree: TopicTree,
    /// Body generations in use, by number; 0 is the topic tree itself.
    gens: BTreeMap<u32, Generation>,
    /// The generation new bodies go to (absent from `gens` until created).
    current_gen: u32,
    pub(crate) chunks: BTreeMap<u64, ChunkInfo>,
    ready: BTreeSet<u64>,
    delayed: BTreeSet<(u64, u64)>,
    pub(crate) ready_usage: Usage,
    pub(crate) delayed_usage: Usage,
    pub(crate) leased_usage: Usage,
    pub(crate) dead_usage: Usage,
    /// Bumped whenever chunks become ready; forwarders wait on it.
    pub(crate) generation: Arc<watch::Sender<u64>>,
}

impl TopicIndex {
    /// A topic index whose next body generation is `next_gen`.
    pub(crate) fn new(tree: TopicTree, generation: Arc<watch::Sender<u64>>, next_gen: u32) -> Self {
        let mut gens = BTreeMap::new();
        gens.insert(
            0,
            Generation {
                tree: tree.as_body(),
                refs: 0,
                pins: 0,
                written: 0,
                live: 0,
            },
        );
        Self {
            gens,
            current_gen: next_gen.max(1),
            tree,
            chunks: BTreeMap::new(),
            ready: BTreeSet::new(),
            delayed: BTreeSet::new(),
            ready_usage: Usage::default(),
            delayed_usage: Usage::default(),
            leased_usage: Usage::default(),
            dead_usage: Usage::default(),
            generation,
        }
    }

    fn usage_mut(&mut self, state: ChunkState) -> &mut Usage {
        match state {
            ChunkState::Ready => &mut self.ready_usage,
            ChunkState::Delayed => &mut self.delayed_usage,
            ChunkState::Leased(_) => &mut self.leased_usage,
        }
    }

    /// Adds a chunk in the state its `not_before_ms` implies (never leased).
    pub(crate) fn insert(&mut self, key: u64, mut info: ChunkInfo, now_ms: u64) {
        info.state = if info.not_before_ms > now_ms {
            self.delayed.insert((info.not_before_ms, key));
            ChunkState::Delayed
        } else {
            self.ready.insert(key);
            ChunkState::Ready
        };
        let (e, b) = (info.index.events as u64, info.index.bytes);
        self.usage_mut(info.state).add(e, b);
        if let Some(g) = self.gens.get_mut(&info.index.body_gen) {
            g.refs += 1;
            g.live += info.index.body_len as u64;
        }
        if let Some(old) = self.chunks.insert(key, info) {
            // Keys are unique first seqs; replacing one would double count.
            self.forget(key, &old);
        }
    }

    /// Adds a chunk already held by lease `lease` (a chunk rewritten while leased).
    pub(crate) fn insert_leased(&mut self, key: u64, mut info: ChunkInfo, lease: u64) {
        info.state = ChunkState::Leased(lease);
        self.leased_usage
            .add(info.index.events as u64, info.index.bytes);
        if let Some(g) = self.gens.get_mut(&info.index.body_gen) {
            g.refs += 1;
            g.live += info.index.body_len as u64;
        }
        if let Some(old) = self.chunks.insert(key, info) {
            self.forget(key, &old);
        }
    }

    fn forget(&mut self, key: u64, info: &ChunkInfo) {
        match info.state {
            ChunkState::Ready => {
                self.ready.remove(&key);
            }
            ChunkState::Delayed => {
                self.delayed.remove(&(info.not_before_ms, key));
            }
            ChunkState::Leased(_) => {}
        }
        self.usage_mut(info.state)
            .sub(info.index.events as u64, info.index.bytes);
        if let Some(g) = self.gens.get_mut(&info.index.body_gen) {
            g.refs = g.refs.saturating_sub(1);
            g.live = g.live.saturating_sub(info.index.body_len as u64);
        }
    }

    /// The tree holding the bodies of generation `body_gen`, if it is known.
    pub(crate) fn body(&self, body_gen: u32) -> Option<BodyTree> {
        self.gens.get(&body_gen).map(|g| g.tree.clone())
    }

    /// Makes an existing generation known (at open, before inserting chunks).
    pub(crate) fn add_generation(&mut self, body_gen: u32, tree: BodyTree) {
        self.gens.entry(body_gen).or_insert(Generation {
            tree,
            refs: 0,
            pins: 0,
            written: 0,
            live: 0,
        });
        if body_gen >= self.current_gen {
            self.current_gen = body_gen + 1;
        }
    }

    /// Whether the committer should start a new generation before writing.
    pub(crate) fn needs_new_generation(&self) -> bool {
        match self.gens.get(&self.current_gen) {
            None => true,
            Some(g) => {
                g.written >= GENERATION_BYTES
                    || (g.written >= GENERATION_MIN_ROTATE && g.live * 2 < g.written)
            }
        }
    }

    /// The number the next generation gets.
    pub(crate) fn next_generation(&self) -> u32 {
        let last = self.gens.keys().next_back().copied().unwrap_or(0);
        if self.gens.contains_key(&self.current_gen) {
            self.current_gen.max(last) + 1
        } else {
            self.current_gen.max(last + 1)
        }
    }

    /// Makes `tree` (generation `body_gen`, from [`TopicIndex::next_generation`]) current.
    pub(crate) fn start_generation(&mut self, body_gen: u32, tree: BodyTree) {
        self.gens.insert(
            body_gen,
            Generation {
                tree,
                refs: 0,
                pins: 0,
                written: 0,
                live: 0,
            },
        );
        self.current_gen = body_gen;
    }

    /// Pins the current generation for `chunks` bodies of `bytes` about to be
    /// written; `None` if it does not exist yet (the committer creates it).
    pub(crate) fn pin_current(&mut self, chunks: u64, bytes: u64) -> Option<(u32, BodyTree)> {
        let g = self.gens.get_mut(&self.current_gen)?;
        g.pins += chunks;
        g.written += bytes;
        Some((self.current_gen, g.tree.clone()))
    }

    /// Pins generation `body_gen` while `n` bodies are read from it outside the lock.
    pub(crate) fn pin(&mut self, body_gen: u32, n: u64) -> Option<BodyTree> {
        let g = self.gens.get_mut(&body_gen)?;
        g.pins += n;
        Some(g.tree.clone())
    }

    /// Releases pins taken by [`TopicIndex::pin_current`] or [`TopicIndex::pin`].
    pub(crate) fn unpin(&mut self, body_gen: u32, chunks: u64) {
        if let Some(g) = self.gens.get_mut(&body_gen) {
            g.pins = g.pins.saturating_sub(chunks);
        }
    }

    /// Removes and returns the generations no chunk needs any more (L4).
    pub(crate) fn take_unused_generations(&mut self) -> Vec<u32> {
        let unused: Vec<u32> = self
            .gens
            .iter()
            .filter(|(n, g)| **n != 0 && **n != self.current_gen && g.refs == 0 && g.pins == 0)
            .map(|(n, _)| *n)
            .collect();
        for n in &unused {
            self.gens.remove(n);
        }
        unused
    }

    /// Removes a chunk from the index, whatever its state.
    pub(crate) fn remove(&mut self, key: u64) -> Option<ChunkInfo> {
        let info = self.chunks.remove(&key)?;
        self.forget(key, &info);
        Some(info)
    }

    /// Moves delayed chunks whose time has come to ready.
    pub(crate) fn promote_due(&mut self, now_ms: u64) {
        while let Some(&(nb, key)) = self.delayed.first() {
            if nb > now_ms {
                break;
            }
            self.delayed.pop_first();
            if let Some(info) = self.chunks.get_mut(&key) {
                info.state = ChunkState::Ready;
                let (e, b) = (info.index.events as u64, info.index.bytes);
                self.delayed_usage.sub(e, b);
                self.ready_usage.add(e, b);
                self.ready.insert(key);
            }
        }
    }

    /// Moves every delayed chunk to ready, whatever its not-before time, and
    /// returns how many events that made leaseable (for `Queue::retry_now`).
    pub(crate) fn promote_all(&mut self) -> u64 {
        let before = self.delayed_usage.events;
        self.promote_due(u64::MAX);
        before - self.delayed_usage.events
    }

    /// When the earliest delayed chunk becomes due (ms since the epoch).
    pub(crate) fn next_due_ms(&self) -> Option<u64> {
        self.delayed.first().map(|(nb, _)| *nb)
    }

    /// Takes ready chunks from the head, in key order, up to `max_events` events
    /// (at least one chunk), and marks them leased by `lease`.
    pub(crate) fn take(&mut self, max_events: usize, lease: u64) -> Vec<(u64, ChunkInfo)> {
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
            self.ready.pop_first();
            let info = self.chunks.get_mut(&key).expect("checked above");
            info.state = ChunkState::Leased(lease);
            let (ev, b) = (info.index.events as u64, info.index.bytes);
            let snapshot = info.clone();
            self.ready_usage.sub(ev, b);
            self.leased_usage.add(ev, b);
            out.push((key, snapshot));
            n += e;
            if n >= max_events {
                break;
            }
        }
        out
    }

    /// Returns a leased chunk to ready or delayed without recording an attempt.
    pub(crate) fn unlease(&mut self, key: u64, now_ms: u64) {
        if let Some(info) = self.chunks.get(&key)
            && matches!(info.state, ChunkState::Leased(_))
        {
            let info = self.remove(key).expect("present");
            self.insert(key, info, now_ms);
        }
    }

    /// Bumps the generation so waiting consumers look again.
    pub(crate) fn wake(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// The oldest enqueue time among committed chunks.
    pub(crate) fn oldest_ms(&self) -> Option<u64> {
        self.chunks
            .values()
            .take(64)
            .map(|c| c.index.first_enqueued_ms)
            .min()
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
    pub(crate) topics: BTreeMap<Arc<str>, TopicIndex>,
    pub(crate) leases: HashMap<u64, LeaseInfo>,
}

impl Index {
    /// Releases every lease whose deadline has passed; returns how many.
    pub(crate) fn expire(&mut self, now: Instant, now_ms: u64) -> usize {
        let expired: Vec<u64> = self
            .leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.release(*id, now_ms);
        }
        expired.len()
    }

    /// Releases one lease without recording an attempt; false if it is not held.
    pub(crate) fn release(&mut self, id: u64, now_ms: u64) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        if let Some(t) = self.topics.get_mut(&lease.topic) {
            for key in lease.keys {
                t.unlease(key, now_ms);
            }
            t.wake();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(events: u32, not_before_ms: u64) -> ChunkInfo {
        ChunkInfo {
            index: ChunkIndex {
                events,
                bytes: events as u64 * 10,
                last_seq: 0,
                first_enqueued_ms: 0,
                body_gen: 0,
                body_offset: 0,
                body_len: 0,
            },
            attempts: 0,
            not_before_ms,
            last_error: None,
            state: ChunkState::Ready,
        }
    }

    fn topic() -> TopicIndex {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::Store::open(
            &dir.path().join("db"),
            1 << 20,
            std::time::Duration::from_secs(1),
            false,
        )
        .ok()
        .unwrap();
        let tree = store.topic("t").unwrap();
        TopicIndex::new(tree, Arc::new(watch::channel(0).0), 1)
    }

    #[test]
    fn take_leases_whole_chunks_in_key_order_up_to_the_limit() {
        let mut t = topic();
        t.insert(30, info(20, 0), 100);
        t.insert(10, info(20, 0), 100);
        t.insert(20, info(20, 0), 100);
        let got: Vec<u64> = t.take(50, 1).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec![10, 20]);
        assert_eq!(t.leased_usage.events, 40);
        assert_eq!(t.ready_usage.events, 20);
        // A chunk larger than the limit is still taken alone.
        let got: Vec<u64> = t.take(5, 2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(got, vec![30]);
        assert!(t.take(50, 3).is_empty());
    }

    #[test]
    fn delayed_chunks_become_ready_when_due() {
        let mut t = topic();
        t.insert(1, info(5, 500), 100);
        assert!(t.take(50, 1).is_empty());
        assert_eq!(t.delayed_usage.events, 5);
        assert_eq!(t.next_due_ms(), Some(500));
        t.promote_due(499);
        assert!(t.take(50, 1).is_empty());
        t.promote_due(500);
        assert_eq!(t.take(50, 1).len(), 1);
        assert_eq!(t.delayed_usage, Usage::default());
    }

    #[test]
    fn a_generation_goes_only_when_unreferenced_unpinned_and_not_current() {
        let mut t = topic();
        let tree = t.tree.as_body();
        t.start_generation(1, tree.clone());
        assert_eq!(t.pin_current(1, 100).map(|(g, _)| g), Some(1));
        let mut c = info(5, 0);
        c.index.body_gen = 1;
        c.index.body_len = 100;
        t.insert(10, c, 0);
        t.unpin(1, 1);
        // Referenced and current: stays.
        assert!(t.take_unused_generations().is_empty());
        t.start_generation(2, tree.clone());
        // Referenced, no longer current: stays.
        assert!(t.take_unused_generations().is_empty());
        // A reader's pin keeps it after the last chunk goes.
        assert!(t.pin(1, 1).is_some());
        // An unlease (remove and re-insert) never lets it go in between.
        t.take(5, 9);
        t.unlease(10, 0);
        t.remove(10);
        assert!(t.take_unused_generations().is_empty());
        t.unpin(1, 1);
        assert_eq!(t.take_unused_generations(), vec![1]);
        assert!(t.body(1).is_none());
        // The current generation and generation 0 never go.
        assert!(t.take_unused_generations().is_empty());
        assert!(t.body(0).is_some() && t.body(2).is_some());
    }

    #[test]
    fn a_mostly_drained_current_generation_is_replaced() {
        let mut t = topic();
        t.start_generation(1, t.tree.as_body());
        assert!(!t.needs_new_generation());
        t.pin_current(1, GENERATION_MIN_ROTATE);
        let mut c = info(5, 0);
        c.index.body_gen = 1;
        c.index.body_len = GENERATION_MIN_ROTATE as u32;
        t.insert(1, c, 0);
        t.unpin(1, 1);
        assert!(!t.needs_new_generation(), "all it holds is still queued");
        t.remove(1);
        assert!(
            t.needs_new_generation(),
            "over 1 MiB and less than half queued"
        );
        assert_eq!(t.next_generation(), 2);
    }

    #[test]
    fn remove_uncounts_from_whatever_state_the_chunk_is_in() {
        let mut t = topic();
        t.insert(1, info(5, 0), 0);
        t.insert(2, info(5, 999), 0);
        t.insert(3, info(5, 0), 0);
        t.take(5, 7);
        for k in [1, 2, 3] {
            assert!(t.remove(k).is_some());
        }
        assert_eq!(t.ready_usage, Usage::default());
        assert_eq!(t.delayed_usage, Usage::default());
        assert_eq!(t.leased_usage, Usage::default());
        assert!(t.remove(1).is_none());
    }
}
