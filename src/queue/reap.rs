//! Deleting drained body generations.
//!
//! A generation file goes whole once nothing needs it (L3 in
//! `queue/index/mod.rs`, G2 in `queue/log/mod.rs`): it is not its topic's current
//! generation, no entry in it waits to be indexed, no indexed chunk names it
//! and no reader has it pinned — checked under the topic's log lock and the
//! index lock together. Before the unlink, every queued sled write is applied
//! and sled is flushed (and synced with `fsync`): the removals of the index
//! records that named the generation reach disk first, so no open after a
//! crash finds an index record pointing into a deleted file. A deletion that
//! fails is kept and tried again at the next round, never forgotten. The
//! traces a generation holds that may still matter — `gone` seqs while an
//! older generation remains, dead letters still dead — are written again to
//! the topic's current generation first (`carry_traces`, `queue/log/trace.rs`),
//! and a generation named by a trace not yet written is not deleted (TR2).
//!
//! A round that panics (a bug) keeps what it left undone for the next round
//! and ends, so later rounds run ([`Round`]).
//!
//! Rounds run at most once per [`REAP_INTERVAL`] (each costs a sled flush,
//! which can wait behind the disk's writeback), on a short-lived thread;
//! closing runs one inline. The committer drives them (`commit::reap`):
//! it applies and flushes the index before a batch's files go.

use super::index::Catalog;
use super::locking::lock;
use super::log::entry::{EntryKind, Part};
use super::log::logs::Logs;
use super::log::{Admit, Bodies, GENERATION_MIN_ROTATE, TopicLog};
use super::storage::{StorageError, Store};
use super::topic::TopicLocks;
use crate::record::{self, DeadLetter};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often drained body generations are deleted.
pub(crate) const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// The reaper part of a store: generations found drained and not yet
/// deleted, when a round last ran, and the thread running one.
#[derive(Default)]
pub(crate) struct Reaper {
    doomed: Mutex<Doomed>,
    /// A round runs on its thread.
    reaping: AtomicBool,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[derive(Default)]
struct Doomed {
    last: Option<Instant>,
    files: Vec<(Arc<TopicLog>, u32)>,
}

/// Generations to delete, taken by [`Reaper::take`].
pub(crate) type Batch = Vec<(Arc<TopicLog>, u32)>;

impl Reaper {
    /// Starts a round if one is due (`now`: at once, inline): takes every
    /// generation nothing needs out of the logs and the index, with those a
    /// failed round kept. `None`: no round (not due, or one is running).
    /// A round taken in the background ends with [`Reaper::done`].
    pub(crate) fn take(&self, logs: &Logs, catalog: &Catalog, now: bool) -> Option<Batch> {
        {
            let mut d = lock(&self.doomed);
            if !now && d.last.is_some_and(|t| t.elapsed() < REAP_INTERVAL) {
                return None;
            }
            if !now && self.reaping.swap(true, Ordering::AcqRel) {
                return None;
            }
            d.last = Some(Instant::now());
        }
        let found = find_drained(logs, catalog);
        let mut d = lock(&self.doomed);
        d.files.extend(found);
        let batch = std::mem::take(&mut d.files);
        if batch.is_empty() && !now {
            self.reaping.store(false, Ordering::Release);
        }
        (!batch.is_empty()).then_some(batch)
    }

    /// Keeps generations whose deletion could not happen for the next round.
    pub(crate) fn keep(&self, batch: Batch) {
        lock(&self.doomed).files.extend(batch);
    }

    /// A background round ended.
    pub(crate) fn done(&self) {
        self.reaping.store(false, Ordering::Release);
    }

    /// Runs `round` on a thread of its own (a background round).
    pub(crate) fn spawn(&self, round: impl FnOnce() + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name("evspool-reaper".into())
            .spawn(round);
        match spawned {
            Ok(handle) => *lock(&self.thread) = Some(handle),
            Err(_) => self.done(),
        }
    }

    /// Waits for a background round (`close`).
    pub(crate) fn join(&self) {
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }

    /// Deletes the generations of `round`'s batch (the index naming them is
    /// flushed: the caller made sure), in order; what fails to go is kept for
    /// the next round, and so is what a panic leaves undone ([`Round`]).
    pub(crate) fn delete(
        &self,
        round: &mut Round<'_>,
        logs: &Logs,
        catalog: &Catalog,
        store: &Store,
        locks: &TopicLocks,
    ) {
        // Popped only once handled: a panic midway leaves it in the round.
        while let Some((log, g)) = round.left.last().cloned() {
            fail::fail_point!("queue::reap::delete");
            // Traces in the file that may still matter go first (`log/trace.rs`).
            let carried = {
                let serial = locks.get(log.topic.as_str());
                let _one = serial.lock().unwrap_or_else(|e| e.into_inner());
                let pending = catalog
                    .lock()
                    .topics
                    .get(log.topic.as_str())
                    .map(|t| t.pending_dead())
                    .unwrap_or_default();
                carry_traces(store, &pending, logs.bodies(), &log, g, Admit::Committer)
            };
            let deleted = carried.and_then(|()| log.delete(logs.bodies(), g));
            round.left.pop();
            if let Err(e) = deleted {
                tracing::warn!(topic = %log.topic, generation = g, error = %e, "Deleting a drained body generation failed; trying again later.");
                self.keep(vec![(log, g)]);
            }
        }
    }
}

/// A round's generations not yet handled, last first. Dropped — at the end
/// of the round, or by a panic inside it (a bug) — it keeps what is left
/// for the next round and, for a background round, ends it: a panicking
/// round neither forgets its generations (they stayed on disk until a
/// reopen) nor leaves `reaping` set (no later round ran at all).
pub(crate) struct Round<'a> {
    reaper: &'a Reaper,
    left: Batch,
    background: bool,
}

impl<'a> Round<'a> {
    /// A round of `batch`, in its order.
    pub(crate) fn new(reaper: &'a Reaper, mut batch: Batch, background: bool) -> Self {
        batch.reverse();
        Round {
            reaper,
            left: batch,
            background,
        }
    }

    /// Keeps every generation left for the next round (the index could not
    /// be flushed first).
    pub(crate) fn keep_all(&mut self) {
        self.reaper.keep(std::mem::take(&mut self.left));
    }

    /// Generations left.
    pub(crate) fn len(&self) -> usize {
        self.left.len()
    }
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.keep_all();
        if self.background {
            self.reaper.done();
        }
    }
}

/// Takes every generation nothing needs out of the logs and the index;
/// also asks a log to start a new generation once its current one is
/// mostly drained, so that one can go too.
fn find_drained(logs: &Logs, catalog: &Catalog) -> Batch {
    let mut out = Vec::new();
    for log in logs.all() {
        let mut st = log.lock();
        let mut index = catalog.lock();
        let t = index.topics.get_mut(log.topic.as_str());
        let gone: Vec<u32> = st
            .gens
            .iter()
            .copied()
            .filter(|g| *g != st.generation && !st.inflight.contains_key(g))
            .filter(|g| !log.signals.traces.pinned(*g))
            .filter(|g| {
                t.as_ref().is_none_or(|t| {
                    let u = t.gen_use(*g);
                    u.refs == 0 && u.pins == 0
                })
            })
            .collect();
        if let Some(t) = t {
            for g in &gone {
                t.forget_gen(*g);
            }
            let u = t.gen_use(st.generation);
            if u.indexed >= GENERATION_MIN_ROTATE && u.live * 2 < u.indexed {
                st.rotate = true;
            }
        }
        for g in gone {
            st.gens.remove(&g);
            out.push((log.clone(), g));
        }
    }
    out
}

/// Before generation `g` of `log` is deleted, writes the store's seq
/// high-water (TR4) and again the traces in it that may still matter
/// (`queue/log/trace.rs`), synced with `fsync`: `gone` ranges while an older
/// generation of the topic remains (it may hold copies of those events), and
/// dead letters still in the dead-letter store (a rebuild restores them). The
/// caller holds the topic's dead-letter lock, so no replay or purge of dead
/// letters runs meanwhile.
pub(crate) fn carry_traces(
    store: &Store,
    pending: &BTreeMap<u64, Option<DeadLetter>>,
    bodies: &Bodies,
    log: &TopicLog,
    g: u32,
    admit: Admit,
) -> Result<(), StorageError> {
    // A generation this process made and wrote no trace to holds none: not
    // read again (reading each drained file whole cost the drain ~20 % of
    // the queue's CPU).
    let scan = if log.may_hold_traces(g) {
        let seg = match log.segment(bodies, g) {
            Ok(s) => s,
            Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => return Ok(()),
            Err(e) => return Err(e),
        };
        let scan = seg
            .scan(0)
            .map_err(|e| StorageError::io("scan body generation for traces", e))?;
        Some((seg, scan))
    } else {
        None
    };
    // On disk, not in the log's set: a generation whose unlink failed is
    // out of the set and still holds its events (TR3).
    let older_remains = super::log::body_generations(&bodies.root, &log.topic)
        .iter()
        .any(|x| *x < g);
    // The seqs this file held are never handed out again (TR4).
    log.signals
        .traces
        .high_water(bodies.next_seq.load(std::sync::atomic::Ordering::Acquire));
    let traces = scan.iter().flat_map(|(seg, scan)| {
        scan.entries
            .iter()
            .filter(|e| e.kind == EntryKind::Trace)
            .map(move |e| (seg, e))
    });
    for (seg, e) in traces {
        let bytes = seg
            .read_span(e.offset, e.span)
            .map_err(|err| StorageError::io("read trace", err))?;
        for part in seg.parse_span(&bytes, e.offset, e.span) {
            let Part::Entry { record, .. } = part else {
                continue;
            };
            let Ok(trace) = record::decode_trace(&record) else {
                continue;
            };
            if older_remains {
                for (lo, hi) in &trace.gone {
                    log.signals.traces.gone_range(*lo, *hi);
                }
            }
            for letter in trace.dead {
                // Still dead, as the index knows it (`pending`: dead-letter
                // writes sled does not have yet, `TopicIndex::pending_dead`).
                let now = match pending.get(&letter.seq) {
                    Some(d) => d.clone(),
                    None => store
                        .dead_range(&log.topic, letter.seq, 1)?
                        .into_iter()
                        .find(|(s, _)| *s == letter.seq)
                        .and_then(|(_, raw)| record::decode_dead(&raw).ok()),
                };
                if let Some(now) = now {
                    log.signals.traces.dead(now);
                }
            }
        }
    }
    log.flush_traces(bodies, admit)?;
    if bodies.fsync {
        log.sync()?;
    }
    Ok(())
}
