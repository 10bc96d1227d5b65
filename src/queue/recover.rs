//! Rebuilding the in-memory index at open: from sled and the body files, or
//! from the body files alone when sled's files were lost.
//!
//! # With sled's index (the normal open)
//!
//! 1. Every index, retry and dead-letter record is loaded. An index record
//!    whose span lies past the end of its body file (or whose file is gone)
//!    points at bytes a power cut took (with `fsync = false`): it is removed,
//!    and counted and reported, so `stats` never claims events that cannot be
//!    read. A damaged index record is rebuilt from the entry it names, found
//!    by scanning.
//! 2. From each topic's checkpoint on (G3 in `queue/log.rs`), every *new*
//!    entry that no index record covers was written but never indexed (a
//!    crash came first): it is adopted, under its own seq. Uncovered rewrite
//!    entries are garbage (their events are where the index says).
//! 3. The next seq is above every seq any index record, dead letter,
//!    high-water, scanned entry or body file header names: an id is never
//!    handed out twice.
//! 4. The repairs are written and made durable, then body files no chunk
//!    needs are deleted.
//!
//! # Without it (a rebuild)
//!
//! When sled's files are missing, empty, unreadable or were moved aside, but
//! body files exist, every entry of every body file is adopted in log order:
//! new entries, and rewrite entries holding events no earlier entry holds. The
//! instance id comes from the identity file or the body files' headers, so
//! every event keeps its id. What only sled knew is gone, and listed in the
//! README: acknowledgements not yet reflected by a deleted body file (those
//! events are delivered again, same ids), dead letters, retry schedules and
//! quarantine records.

use super::ceiling::Totals;
use super::chunk::{ChunkInfo, ChunkState};
use super::index::{Index, TopicIndex};
use super::log::{Bodies, TopicLog};
use super::segment::{EntryKind, Segment};
use super::storage::{LoadedTopic, StorageError, Store, WriteBatch};
use crate::record::{self, ChunkIndex, RetryState};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::watch;

/// What open rebuilt.
pub(crate) struct Loaded {
    pub(crate) index: Index,
    pub(crate) logs: HashMap<Arc<str>, Arc<TopicLog>>,
    pub(crate) wakers: HashMap<Arc<str>, Arc<watch::Sender<u64>>>,
    pub(crate) totals: Totals,
    pub(crate) next_seq: u64,
    pub(crate) quarantined: u64,
}

/// Whether sled's index is trusted or rebuilt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Index,
    Rebuild,
}

/// Topics that have a body directory.
pub(crate) fn body_topics(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| super::validate_topic(n).is_ok())
        .collect()
}

/// The body generations a topic has on disk.
pub(crate) fn body_generations(root: &Path, topic: &str) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(root.join(topic)) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|g| g.parse().ok())
        })
        .filter(|g| *g > 0)
        .collect()
}

/// The instance id the body files' headers name, if any.
pub(crate) fn instance_from_bodies(bodies: &Bodies) -> Option<String> {
    for topic in body_topics(&bodies.root) {
        for g in body_generations(&bodies.root, &topic) {
            if let Ok(seg) = Segment::open(&bodies.files, &bodies.path(&topic, g))
                && let Some(h) = seg.header()
                && super::identity::valid_instance(&h.instance)
            {
                return Some(h.instance.clone());
            }
        }
    }
    None
}

/// A chunk index for one whole entry at `offset`, from its decoded record(s).
pub(crate) fn entry_index(
    seg: &Segment,
    g: u32,
    offset: u64,
    span: u64,
    seq: u64,
) -> Option<ChunkIndex> {
    let bytes = seg.read_span(offset, span).ok()?;
    if bytes.len() as u64 != span {
        return None;
    }
    let records = seg.split_span(&bytes, seq)?;
    let mut events = Vec::new();
    for r in &records {
        events.extend(record::decode_chunk(r).ok()?);
    }
    let idx = ChunkIndex::of(&events).placed(g, offset, u32::try_from(span).ok()?);
    Some(idx)
}

/// The seqs of the events an entry holds.
fn entry_seqs(seg: &Segment, offset: u64, span: u64, seq: u64) -> Option<Vec<u64>> {
    let bytes = seg.read_span(offset, span).ok()?;
    let records = seg.split_span(&bytes, seq)?;
    let mut out = Vec::new();
    for r in &records {
        out.extend(record::decode_chunk(r).ok()?.iter().map(|e| e.seq));
    }
    Some(out)
}

/// Whether `offset` lies in one of the sorted, non-overlapping `spans`.
pub(crate) fn covered(spans: &[(u64, u64)], offset: u64) -> bool {
    let i = spans.partition_point(|(start, _)| *start <= offset);
    i > 0 && offset < spans[i - 1].1
}

/// Loads every topic (see the module docs). `repair` collects the sled
/// writes the caller applies (and makes durable) before deleting `garbage`.
pub(crate) fn load(
    store: &Store,
    bodies: &Bodies,
    mode: Mode,
    now: u64,
    recovered: &mut Vec<String>,
    repair: &mut WriteBatch,
    garbage: &mut Vec<(Arc<TopicLog>, u32)>,
) -> Result<Loaded, StorageError> {
    let mut loaded = match mode {
        Mode::Index => store.load()?,
        Mode::Rebuild => BTreeMap::new(),
    };
    let mut names: BTreeSet<String> = loaded.keys().cloned().collect();
    names.extend(body_topics(&bodies.root));
    let mut out = Loaded {
        index: Index::default(),
        logs: HashMap::new(),
        wakers: HashMap::new(),
        totals: Totals::default(),
        next_seq: 1,
        quarantined: 0,
    };
    let (mut phantom_chunks, mut phantom_events, mut adopted, mut rebuilt) =
        (0u64, 0u64, 0u64, 0u64);
    for name in names {
        let topic: Arc<str> = Arc::from(name.as_str());
        let gens = body_generations(&bodies.root, &name);
        let next_gen = gens.last().map_or(1, |g| g + 1);
        let log = Arc::new(TopicLog::new(topic.clone(), gens.clone(), next_gen));
        let mut segs: BTreeMap<u32, (Arc<Segment>, u64)> = BTreeMap::new();
        for g in &gens {
            let seg = log.segment(bodies, *g)?;
            let len = seg
                .len()
                .map_err(|e| StorageError::io("read body generation", e))?;
            if let Some(h) = seg.header() {
                out.next_seq = out.next_seq.max(h.next_seq);
            }
            segs.insert(*g, (seg, len));
        }
        let lt: LoadedTopic = loaded.remove(&name).unwrap_or_default();
        out.next_seq = out.next_seq.max(lt.high_water);
        let waker = Arc::new(watch::channel(0u64).0);
        out.wakers.insert(topic.clone(), waker.clone());
        let mut t = TopicIndex::new(waker, lt.high_water, log.signals.clone());
        // Every key with a retry record, damaged ones too: removing such a
        // chunk deletes its record.
        let retry_keys: HashSet<u64> = lt.retry.iter().map(|(k, _)| *k).collect();
        let retry: HashMap<u64, RetryState> = lt
            .retry
            .into_iter()
            .filter_map(|(k, r)| r.ok().map(|r| (k, r)))
            .collect();
        let mut spans: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        for (key, rec) in lt.index {
            let idx = match rec {
                Ok((_, idx)) => idx,
                Err(e) => {
                    // The summary is damaged; the chunk may be fine: find it by scanning.
                    let found = segs.iter().rev().find_map(|(g, (seg, _))| {
                        let e = seg.scan(0).ok()?.into_iter().find(|e| e.seq == key)?;
                        entry_index(seg, *g, e.offset, e.span, key)
                    });
                    match found {
                        Some(idx) => {
                            repair.put_index(&name, key, &idx);
                            idx
                        }
                        None => {
                            tracing::error!(topic = %name, chunk = key, error = %e, "Damaged index record whose chunk cannot be found; removed.");
                            repair.remove_chunk(&name, key);
                            out.quarantined += 1;
                            continue;
                        }
                    }
                }
            };
            let fits = segs
                .get(&idx.body_gen)
                .is_some_and(|(_, len)| idx.body_offset + idx.body_len as u64 <= *len);
            if !fits {
                phantom_chunks += 1;
                phantom_events += idx.events as u64;
                repair.remove_chunk(&name, key);
                // What is left of it is kept for inspection.
                if let Some((seg, len)) = segs.get(&idx.body_gen)
                    && *len > idx.body_offset
                {
                    let rest = seg
                        .read_span(idx.body_offset, len - idx.body_offset)
                        .map_err(|e| StorageError::io("read body generation", e))?;
                    store.quarantine(&name, key, &rest, super::QUARANTINE_MAX_BYTES)?;
                    out.quarantined += 1;
                }
                continue;
            }
            out.next_seq = out.next_seq.max(idx.last_seq + 1);
            out.totals.add(idx.events as u64, idx.bytes);
            spans
                .entry(idx.body_gen)
                .or_default()
                .push((idx.body_offset, idx.body_offset + idx.body_len as u64));
            t.place(
                key,
                ChunkInfo::with_retry(idx, retry.get(&key), retry_keys.contains(&key)),
                ChunkState::Ready,
                now,
            );
        }
        // Retry records of no chunk, damaged ones too, are garbage.
        for key in retry_keys.iter().filter(|k| !t.chunks.contains_key(k)) {
            repair.remove_retry(&name, *key);
        }
        for (seq, bytes) in &lt.dead {
            out.next_seq = out.next_seq.max(seq + 1);
            t.dead_usage.add(1, *bytes);
        }
        for v in spans.values_mut() {
            v.sort_unstable();
        }
        // Adoption (step 2), or the whole rebuild.
        let from = match mode {
            // No checkpoint yet: the topic's first round never reached sled.
            Mode::Index => lt.checkpoint.unwrap_or((0, 0)),
            Mode::Rebuild => (0, 0),
        };
        let mut seen: HashSet<u64> = HashSet::new();
        for (g, (seg, _)) in segs.range(from.0..) {
            let start = if *g == from.0 { from.1 } else { 0 };
            let no_spans = Vec::new();
            let covering = spans.get(g).unwrap_or(&no_spans);
            for e in seg
                .scan(start)
                .map_err(|e| StorageError::io("scan body generation", e))?
            {
                if covered(covering, e.offset) || t.chunks.contains_key(&e.seq) {
                    continue;
                }
                match (mode, e.kind) {
                    (Mode::Index, EntryKind::Rewrite) => continue,
                    (Mode::Rebuild, EntryKind::Rewrite) => {
                        // Adopted only for events no earlier entry holds.
                        match entry_seqs(seg, e.offset, e.span, e.seq) {
                            Some(seqs) if seqs.iter().any(|s| !seen.contains(s)) => {}
                            _ => continue,
                        }
                    }
                    _ => {}
                }
                // A damaged or torn entry was never acknowledged: its writer
                // got the error, or the crash came before it returned.
                let Some(idx) = entry_index(seg, *g, e.offset, e.span, e.seq) else {
                    continue;
                };
                if mode == Mode::Rebuild
                    && let Some(seqs) = entry_seqs(seg, e.offset, e.span, e.seq)
                {
                    seen.extend(seqs);
                }
                repair.put_index(&name, e.seq, &idx);
                out.next_seq = out.next_seq.max(idx.last_seq + 1);
                out.totals.add(idx.events as u64, idx.bytes);
                match mode {
                    Mode::Index => adopted += idx.events as u64,
                    Mode::Rebuild => rebuilt += idx.events as u64,
                }
                t.place(e.seq, ChunkInfo::fresh(idx), ChunkState::Ready, now);
            }
        }
        // The high-water and checkpoint now cover everything adopted; the log
        // continues in a new generation.
        t.high_water = out.next_seq;
        repair.set_high_water(&name, out.next_seq);
        t.checkpoint = (next_gen, 0);
        repair.set_checkpoint(&name, (next_gen, 0));
        for g in &gens {
            if t.gen_use(*g).refs == 0 {
                garbage.push((log.clone(), *g));
            }
        }
        out.index.topics.insert(topic.clone(), t);
        out.logs.insert(topic, log);
    }
    if phantom_chunks > 0 {
        let msg = format!(
            "{phantom_chunks} index record(s) pointed past the end of their body file \
             ({phantom_events} events a power cut took before they were synced): removed"
        );
        tracing::error!(
            chunks = phantom_chunks,
            events = phantom_events,
            "Index records pointed at body bytes that are gone; removed."
        );
        metrics::counter!("evspool_phantom_events_total").increment(phantom_events);
        recovered.push(msg);
    }
    if adopted > 0 {
        tracing::info!(
            events = adopted,
            "Re-indexed events whose index records a crash lost."
        );
    }
    if mode == Mode::Rebuild {
        let msg = format!(
            "sled's index was lost; rebuilt from the body files: {rebuilt} events re-indexed \
             under their ids (acknowledgements, dead letters and retry schedules only sled \
             knew are gone: some events may be delivered again, same ids)"
        );
        tracing::error!(
            events = rebuilt,
            "The index was rebuilt from the body files."
        );
        metrics::counter!("evspool_index_rebuilds_total").increment(1);
        recovered.push(msg);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_is_a_search_over_sorted_spans() {
        let spans = [(40, 100), (100, 160), (300, 400)];
        assert!(covered(&spans, 40));
        assert!(covered(&spans, 120));
        assert!(!covered(&spans, 160));
        assert!(!covered(&spans, 20));
        assert!(covered(&spans, 399));
        assert!(!covered(&spans, 400));
    }
}
