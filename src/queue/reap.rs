//! Deleting drained body generations.
//!
//! A generation file goes whole once nothing needs it (L3 in
//! `queue/index.rs`, G2 in `queue/log.rs`): it is not its topic's current
//! generation, no entry in it waits to be indexed, no indexed chunk names it
//! and no reader has it pinned — checked under the topic's log lock and the
//! index lock together. Before the unlink, every queued sled write is applied
//! and sled is flushed (and synced with `fsync`): the removals of the index
//! records that named the generation reach disk first, so no open after a
//! crash finds an index record pointing into a deleted file. A deletion that
//! fails is kept and tried again at the next round, never forgotten. The
//! traces a generation holds that may still matter — `gone` seqs while an
//! older generation remains, dead letters still dead — are written again to
//! the topic's current generation first (`carry_traces`, `queue/trace.rs`),
//! and a generation named by a trace not yet written is not deleted (TR2).
//!
//! Rounds run at most once per [`REAP_INTERVAL`] (each costs a sled flush,
//! which can wait behind the disk's writeback), on a short-lived thread;
//! closing runs one inline.

use super::entry::{EntryKind, Part};
use super::log::{Admit, Bodies, GENERATION_MIN_ROTATE, TopicLog};
use super::shared::{Shared, lock};
use super::storage::{StorageError, Store};
use crate::record;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often drained body generations are deleted.
pub(crate) const REAP_INTERVAL: Duration = Duration::from_secs(1);

/// Generations found drained and not yet deleted, and when a round last ran.
#[derive(Default)]
pub(crate) struct Doomed {
    last: Option<Instant>,
    files: Vec<(Arc<TopicLog>, u32)>,
}

impl Shared {
    /// Runs a deletion round if one is due (`now`: at once, inline).
    pub(crate) fn reap(self: &Arc<Self>, now: bool) {
        {
            let mut d = lock(&self.doomed);
            if !now && d.last.is_some_and(|t| t.elapsed() < REAP_INTERVAL) {
                return;
            }
            if !now && self.reaping.swap(true, Ordering::AcqRel) {
                return;
            }
            d.last = Some(Instant::now());
        }
        let found = self.find_drained();
        let batch = {
            let mut d = lock(&self.doomed);
            d.files.extend(found);
            std::mem::take(&mut d.files)
        };
        if batch.is_empty() {
            if !now {
                self.reaping.store(false, Ordering::Release);
            }
            return;
        }
        if now {
            self.delete_generations(batch);
            return;
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("evspool-reaper".into())
            .spawn(move || {
                shared.delete_generations(batch);
                shared.reaping.store(false, Ordering::Release);
            });
        match spawned {
            Ok(handle) => *lock(&self.reaper) = Some(handle),
            Err(_) => self.reaping.store(false, Ordering::Release),
        }
    }

    /// Takes every generation nothing needs out of the logs and the index;
    /// also asks a log to start a new generation once its current one is
    /// mostly drained, so that one can go too.
    fn find_drained(&self) -> Vec<(Arc<TopicLog>, u32)> {
        let mut out = Vec::new();
        for log in self.all_logs() {
            let mut st = log.lock();
            let mut index = self.lock_index();
            let t = index.topics.get_mut(&log.topic);
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

    /// Applies and flushes the index, then deletes the files; what fails to
    /// go is kept for the next round.
    fn delete_generations(&self, batch: Vec<(Arc<TopicLog>, u32)>) {
        let flushed = self.apply_ops().and_then(|_| {
            let store = self
                .store()
                .map_err(|e| StorageError::io("flush", std::io::Error::other(e.to_string())))?;
            store.flush()?;
            if self.cfg.fsync {
                store.sync_data_file()?;
            }
            Ok(())
        });
        if let Err(e) = flushed {
            tracing::warn!(error = %e, files = batch.len(), "Drained body generations kept: the index could not be flushed first.");
            lock(&self.doomed).files.extend(batch);
            return;
        }
        let mut kept = Vec::new();
        let Ok(store) = self.store() else {
            lock(&self.doomed).files.extend(batch);
            return;
        };
        for (log, g) in batch {
            // Traces in the file that may still matter go first (`queue/trace.rs`).
            let carried = {
                let serial = self.dead_lock(&log.topic);
                let _one = serial.lock().unwrap_or_else(|e| e.into_inner());
                carry_traces(&store, &self.bodies, &log, g, Admit::Committer)
            };
            let deleted = carried.and_then(|()| log.delete(&self.bodies, g));
            if let Err(e) = deleted {
                tracing::warn!(topic = %log.topic, generation = g, error = %e, "Deleting a drained body generation failed; trying again later.");
                kept.push((log, g));
            }
        }
        lock(&self.doomed).files.extend(kept);
    }
}

/// Before generation `g` of `log` is deleted, writes the store's seq
/// high-water (TR4) and again the traces in it that may still matter
/// (`queue/trace.rs`), synced with `fsync`: `gone` ranges while an older
/// generation of the topic remains (it may hold copies of those events), and
/// dead letters still in the dead-letter store (a rebuild restores them). The
/// caller holds the topic's dead-letter lock, so no replay or purge of dead
/// letters runs meanwhile.
pub(crate) fn carry_traces(
    store: &Store,
    bodies: &Bodies,
    log: &TopicLog,
    g: u32,
    admit: Admit,
) -> Result<(), StorageError> {
    let seg = match log.segment(bodies, g) {
        Ok(s) => s,
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => return Ok(()),
        Err(e) => return Err(e),
    };
    let scan = seg
        .scan(0)
        .map_err(|e| StorageError::io("scan body generation for traces", e))?;
    // On disk, not in the log's set: a generation whose unlink failed is
    // out of the set and still holds its events (TR3).
    let older_remains = super::recover::body_generations(&bodies.root, &log.topic)
        .iter()
        .any(|x| *x < g);
    // The seqs this file held are never handed out again (TR4).
    log.signals
        .traces
        .high_water(bodies.next_seq.load(std::sync::atomic::Ordering::Acquire));
    for e in scan.entries.iter().filter(|e| e.kind == EntryKind::Trace) {
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
                if let Some((_, raw)) = store
                    .dead_range(&log.topic, letter.seq, 1)?
                    .into_iter()
                    .find(|(s, _)| *s == letter.seq)
                    && let Ok(now) = record::decode_dead(&raw)
                {
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
