//! Rebuilding the in-memory index at open: from sled and the body files, or
//! from the body files alone when sled's files were lost.
//!
//! # With sled's index (the normal open)
//!
//! 1. Every index, retry and dead-letter record is loaded. An index record
//!    whose span lies past the end of its body file (or whose file is gone)
//!    points at bytes a power cut took (with `fsync = false`): it is removed,
//!    and counted and reported, so `stats` never claims events that cannot be
//!    read.
//! 2. From each topic's checkpoint on (G3 in `queue/log/mod.rs`), every *new*
//!    entry that no index record covers was written but never indexed (a
//!    crash came first): it is adopted, under its own seq. Uncovered rewrite
//!    entries are garbage (their events are where the index says). Damaged
//!    bytes followed by a valid entry are quarantined (a torn tail is not).
//! 3. A topic with a damaged index record is *repaired* from its body files
//!    (`queue/open/rebuild.rs`): every event at or above the damaged record's key
//!    that no intact record holds, no trace removed and sled holds no dead
//!    letter of is indexed again — whole entries as they are, the rest of a
//!    split entry written again — so the damaged chunk comes back whole
//!    (and events acked from its partly drained generations with it, same
//!    ids, counted and reported).
//! 4. The next seq is above every seq any index record, dead letter,
//!    high-water, scanned entry, trace or body file header names: an id is
//!    never handed out twice.
//! 5. The repairs are written and made durable, then body files no chunk
//!    needs are deleted (their traces carried forward first, `queue/reap.rs`).
//!
//! # Without it (a rebuild)
//!
//! When sled's files are missing, empty, unreadable or were moved aside, but
//! body files exist, every topic is read whole (`queue/open/rebuild.rs`): every
//! event is indexed once, in the first entry that holds it, except those its
//! traces say left (purged, evicted, expired, dead letters purged); dead
//! letters come back as dead letters; damaged entries are quarantined again.
//! The instance id comes from the identity file or the body files' headers,
//! so every event keeps its id. What only sled knew is gone, and listed in
//! the README: acknowledgements of events whose body file still exists (they
//! are delivered again, same ids), retry schedules, the quarantine records
//! of entries whose body file was deleted, and drop counters.

pub(crate) use super::rebuild::covered;
use super::rebuild::{self, Scope};
use crate::queue::ceiling::{DropReason, Totals};
use crate::queue::index::chunk::{ChunkInfo, ChunkState};
use crate::queue::index::{Index, TopicIndex};
use crate::queue::log::entry::{self, EntryKind};
use crate::queue::log::read::sort_parts;
use crate::queue::log::segment::Segment;
use crate::queue::log::trace::SeqRanges;
use crate::queue::log::{Admit, Bodies, Record, TopicLog, body_generations, body_topics};
use crate::queue::ops::ops_per_batch;
use crate::queue::storage::{LoadedTopic, QuarantinePart, StorageError, Store, WriteBatch};
use crate::queue::topic::Topic;
use crate::record::{self, ChunkIndex, RetryState, StoredEvent};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What open rebuilt.
pub(crate) struct Loaded {
    pub(crate) index: Index,
    pub(crate) logs: HashMap<Arc<str>, Arc<TopicLog>>,
    pub(crate) totals: Totals,
    pub(crate) next_seq: u64,
    /// Seqs the damaged or torn last entries of topics' newest generations
    /// may hold (`Segment::tail_bound`), added to `next_seq` at the end.
    pub(crate) unknown_tail: u64,
    /// Drop counters since the store was made (C3).
    pub(crate) drops: BTreeMap<(Arc<str>, DropReason), u64>,
}

/// Whether sled's index is trusted or rebuilt.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Index,
    Rebuild,
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

/// A chunk index for one whole entry at `offset`, from its decoded record.
pub(crate) fn entry_index(
    seg: &Segment,
    g: u32,
    offset: u64,
    span: u64,
    seq: u64,
) -> Option<ChunkIndex> {
    let bytes = seg.read_span(offset, span).ok()?;
    let read = sort_parts(seg.parse_span(&bytes, offset, span), seq, u64::MAX);
    if !read.intact() || read.runs.len() != 1 {
        return None;
    }
    let (key, idx) = read.runs[0].piece(g);
    (key == seq).then_some(idx)
}

/// Loads every topic (see the module docs). `repair` collects the sled
/// writes the caller applies (and makes durable) before deleting `garbage`,
/// in batches cut between topics (never inside one) once one holds
/// [`OPS_PER_BATCH`](crate::queue::ops::OPS_PER_BATCH) writes: sled keeps
/// every node version a batch makes alive until it ends, and every open
/// writes each topic's high-water and checkpoint (one batch for 10,000
/// topics cost ~25 MiB more at the peak);
/// `limits` are the chunk limits (events, bytes) a rebuild coalesces up to.
#[allow(clippy::too_many_arguments)]
pub(crate) fn load(
    store: &Store,
    bodies: &Bodies,
    mode: Mode,
    limits: (u64, u64),
    now: u64,
    recovered: &mut Vec<String>,
    repairs: &mut Vec<WriteBatch>,
    garbage: &mut Vec<(Arc<TopicLog>, u32)>,
) -> Result<Loaded, StorageError> {
    let mut loaded = match mode {
        Mode::Index => store.load()?,
        Mode::Rebuild => BTreeMap::new(),
    };
    let mut out = Loaded {
        index: Index::default(),
        logs: HashMap::new(),
        totals: Totals::default(),
        next_seq: 1,
        unknown_tail: 0,
        drops: BTreeMap::new(),
    };
    // sled's topics were checked when their first event came in; a key
    // that is no topic name is damage, its records skipped — but every seq
    // they name stays used, so no id is handed out twice.
    let mut names: BTreeSet<Topic> = BTreeSet::new();
    for (k, lt) in &loaded {
        match Topic::new(k) {
            Ok(t) => {
                names.insert(t);
            }
            Err(e) => {
                let used = lt
                    .index
                    .iter()
                    .map(|(seq, rec)| match rec {
                        Ok((_, idx)) => idx.last_seq.max(*seq),
                        Err(_) => *seq,
                    })
                    .chain(lt.retry.iter().map(|(seq, _)| *seq))
                    .chain(lt.dead.iter().map(|(seq, _)| *seq))
                    .map(|seq| seq.saturating_add(1))
                    .chain([lt.high_water])
                    .max()
                    .unwrap_or(1);
                out.next_seq = out.next_seq.max(used);
                tracing::error!(error = %e, next_seq = out.next_seq, "Index records under a name no topic may have are skipped; the seqs they name are not handed out again.");
            }
        }
    }
    names.extend(body_topics(&bodies.root));
    let mut report = Report::default();
    for name in names {
        if repairs.last().is_none_or(|b| b.len() >= ops_per_batch()) {
            repairs.push(WriteBatch::default());
        }
        let repair = repairs.last_mut().expect("a batch was just pushed");
        let topic: Arc<str> = name.arc().clone();
        let gens = body_generations(&bodies.root, &name);
        let next_gen = gens.last().map_or(1, |g| g + 1);
        let log = Arc::new(TopicLog::new(name.clone(), gens.clone(), next_gen));
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
        let lt: LoadedTopic = loaded.remove(name.as_str()).unwrap_or_default();
        for (code, n) in &lt.drops {
            if let Some(reason) = DropReason::from_code(*code) {
                out.drops.insert((topic.clone(), reason), *n);
            }
        }
        out.next_seq = out.next_seq.max(lt.high_water);
        let mut t = Box::new(TopicIndex::new(lt.high_water, log.signals.clone()));
        // Every key with a retry record, damaged ones too: removing such a
        // chunk deletes its record.
        let retry_keys: HashSet<u64> = lt.retry.iter().map(|(k, _)| *k).collect();
        let retry: HashMap<u64, RetryState> = lt
            .retry
            .into_iter()
            .filter_map(|(k, r)| r.ok().map(|r| (k, r)))
            .collect();
        let mut spans: BTreeMap<u32, Vec<(u64, u64)>> = BTreeMap::new();
        let mut damaged_keys: Vec<u64> = Vec::new();
        for (key, rec) in lt.index {
            let idx = match rec {
                Ok((_, idx)) => idx,
                Err(e) => {
                    // The summary is damaged; its chunk is re-derived from
                    // the body files below (step 3).
                    tracing::error!(topic = %name, chunk = key, error = %e, "Damaged index record; its chunk is repaired from the body files.");
                    repair.remove_chunk(&name, key);
                    damaged_keys.push(key);
                    continue;
                }
            };
            let fits = segs
                .get(&idx.body_gen)
                .is_some_and(|(_, len)| idx.body_offset + idx.body_len as u64 <= *len);
            if !fits {
                report.phantom_chunks += 1;
                report.phantom_events += idx.events as u64;
                repair.remove_chunk(&name, key);
                // What is left of it is kept for inspection.
                if let Some((seg, len)) = segs.get(&idx.body_gen)
                    && *len > idx.body_offset
                {
                    let rest = seg
                        .read_span(idx.body_offset, len - idx.body_offset)
                        .map_err(|e| StorageError::io("read body generation", e))?;
                    let _ = store.quarantine(
                        &name,
                        key,
                        &[QuarantinePart {
                            place: (idx.body_gen, idx.body_offset),
                            bytes: &rest,
                        }],
                        crate::queue::quarantine::QUARANTINE_MAX_BYTES,
                    )?;
                }
                continue;
            }
            out.next_seq = out.next_seq.max(idx.last_seq.saturating_add(1));
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
        let sled_dead: BTreeSet<u64> = lt.dead.iter().map(|(s, _)| *s).collect();
        for (seq, bytes) in &lt.dead {
            out.next_seq = out.next_seq.max(seq.saturating_add(1));
            t.dead_usage.add(1, *bytes);
            out.totals.add_dead(1, *bytes);
        }
        for v in spans.values_mut() {
            v.sort_unstable();
        }
        let checkpoint = match mode {
            // No checkpoint yet: the topic's first round never reached sled.
            Mode::Index => lt.checkpoint.unwrap_or((0, 0)),
            Mode::Rebuild => (0, 0),
        };
        let ctx = TopicLoad {
            store,
            bodies,
            name: &name,
            log: &log,
            now,
            per_record: limits.0.max(1) as usize,
        };
        if mode == Mode::Rebuild || !damaged_keys.is_empty() {
            let scope = Scope {
                covered: spans,
                min_seq: damaged_keys.iter().copied().min().unwrap_or(0),
                checkpoint,
                sled_dead: (mode == Mode::Index).then_some(sled_dead),
                max_events: limits.0,
                max_bytes: limits.1,
            };
            let segs: BTreeMap<u32, Arc<Segment>> =
                segs.iter().map(|(g, (s, _))| (*g, s.clone())).collect();
            let m = rebuild::model(&segs, &scope)
                .map_err(|e| StorageError::io("read body generations", e))?;
            let n = ctx.adopt_model(m, &mut t, &mut out, repair)?;
            match mode {
                Mode::Rebuild => report.rebuilt += n,
                Mode::Index => {
                    report.repaired_records += damaged_keys.len() as u64;
                    report.repaired_events += n;
                }
            }
        } else {
            report.adopted += ctx.adopt_new(&segs, &spans, checkpoint, &mut t, &mut out, repair)?;
        }
        // Retry records of no chunk, damaged ones too, are garbage.
        for key in retry_keys.iter().filter(|k| !t.chunks.contains_key(k)) {
            repair.remove_retry(&name, *key);
        }
        // The high-water and checkpoint now cover everything adopted; the log
        // continues in a new generation (after any a repair wrote).
        let (next_gen, written) = {
            let st = log.lock();
            (st.generation, st.end)
        };
        t.high_water = out.next_seq;
        repair.set_high_water(&name, out.next_seq);
        let checkpoint = if written > 0 {
            (next_gen, written)
        } else {
            (next_gen, 0)
        };
        t.checkpoint = checkpoint;
        repair.set_checkpoint(&name, checkpoint);
        for g in &gens {
            if t.gen_use(*g).refs == 0 {
                garbage.push((log.clone(), *g));
            }
        }
        out.index.topics.insert(topic.clone(), t);
        out.logs.insert(topic, log);
    }
    // A damaged or torn last entry's seqs may have been handed out after
    // every seq counted so far: the next seq passes them all (S6).
    if out.unknown_tail > 0 {
        tracing::warn!(
            bytes = out.unknown_tail,
            next_seq = out.next_seq,
            "Bytes follow the last readable entry of a newest body file (a damaged or torn entry); as many seqs are skipped, so none it held is handed out again."
        );
        out.next_seq = out.next_seq.saturating_add(out.unknown_tail);
        // Recorded as every topic's high-water, so the skip outlives this
        // open even if it appends nothing (the next open, sled intact,
        // starts from the high-water and never reads that tail again).
        let mut batch = WriteBatch::default();
        for (name, t) in &mut out.index.topics {
            t.high_water = out.next_seq;
            batch.set_high_water(name, out.next_seq);
            if batch.len() >= ops_per_batch() {
                repairs.push(std::mem::take(&mut batch));
            }
        }
        repairs.push(batch);
    }
    report.tell(mode, recovered);
    Ok(out)
}

/// What loading the topics found, for the log and `stats().recovered`.
#[derive(Default)]
struct Report {
    phantom_chunks: u64,
    phantom_events: u64,
    adopted: u64,
    rebuilt: u64,
    repaired_records: u64,
    repaired_events: u64,
}

impl Report {
    fn tell(&self, mode: Mode, recovered: &mut Vec<String>) {
        let (phantom_chunks, phantom_events) = (self.phantom_chunks, self.phantom_events);
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
        if self.adopted > 0 {
            tracing::info!(
                events = self.adopted,
                "Re-indexed events whose index records a crash lost."
            );
        }
        if self.repaired_records > 0 {
            let msg = format!(
                "{} damaged index record(s) repaired from the body files: {} events \
                 indexed again (events acked from the same body files may be delivered \
                 again, same ids)",
                self.repaired_records, self.repaired_events
            );
            tracing::error!(
                records = self.repaired_records,
                events = self.repaired_events,
                "Damaged index records were repaired from the body files."
            );
            recovered.push(msg);
        }
        if mode == Mode::Rebuild {
            let msg = format!(
                "sled's index was lost; rebuilt from the body files: {} events re-indexed \
                 under their ids (acknowledgements and retry schedules only sled knew are \
                 gone: some events may be delivered again, same ids)",
                self.rebuilt
            );
            tracing::error!(
                events = self.rebuilt,
                "The index was rebuilt from the body files."
            );
            metrics::counter!("evspool_index_rebuilds_total").increment(1);
            recovered.push(msg);
        }
    }
}

/// One topic being loaded.
struct TopicLoad<'a> {
    store: &'a Store,
    bodies: &'a Bodies,
    name: &'a str,
    log: &'a Arc<TopicLog>,
    now: u64,
    /// Most events per record a repair writes.
    per_record: usize,
}

impl TopicLoad<'_> {
    /// Indexes a chunk found on disk (steps 2 and 3, or a rebuild).
    fn adopt(
        &self,
        key: u64,
        idx: ChunkIndex,
        t: &mut TopicIndex,
        out: &mut Loaded,
        repair: &mut WriteBatch,
    ) {
        repair.put_index(self.name, key, &idx);
        out.next_seq = out.next_seq.max(idx.last_seq.saturating_add(1));
        out.totals.add(idx.events as u64, idx.bytes);
        t.place(key, ChunkInfo::fresh(idx), ChunkState::Ready, self.now);
    }

    /// Keeps damaged bytes found on disk in quarantine (RB3).
    fn quarantine(
        &self,
        seq: u64,
        place: (u32, u64),
        bytes: &[u8],
        why: &str,
    ) -> Result<(), StorageError> {
        tracing::error!(topic = %self.name, seq, reason = why, "Damaged entry found at open; moved to quarantine.");
        let _ = self.store.quarantine(
            self.name,
            seq,
            &[QuarantinePart { place, bytes }],
            crate::queue::quarantine::QUARANTINE_MAX_BYTES,
        )?;
        Ok(())
    }

    /// Step 2: adopts every uncovered new entry from the checkpoint on;
    /// returns the events adopted.
    fn adopt_new(
        &self,
        segs: &BTreeMap<u32, (Arc<Segment>, u64)>,
        spans: &BTreeMap<u32, Vec<(u64, u64)>>,
        from: (u32, u64),
        t: &mut TopicIndex,
        out: &mut Loaded,
        repair: &mut WriteBatch,
    ) -> Result<u64, StorageError> {
        let mut adopted = 0;
        let mut scans = Vec::new();
        // Events traced gone from here on (a write whose failed tail could
        // not be cut) are not adopted (G4).
        let mut gone = SeqRanges::default();
        for (g, (seg, _)) in segs.range(from.0..) {
            let start = if *g == from.0 { from.1 } else { 0 };
            let scan = seg
                .scan(start)
                .map_err(|e| StorageError::io("scan body generation", e))?;
            for e in scan.entries.iter().filter(|e| e.kind == EntryKind::Trace) {
                if let Ok(bytes) = seg.read_span(e.offset, e.span)
                    && let Some(entry::Part::Entry { record, .. }) =
                        seg.parse_span(&bytes, e.offset, e.span).into_iter().next()
                    && let Ok(trace) = record::decode_trace(&record)
                {
                    for (lo, hi) in trace.gone {
                        gone.insert_range(lo, hi);
                    }
                }
            }
            scans.push((*g, seg, scan));
        }
        // The newest generation's tail past its last valid entry, and its
        // damaged spans: what they held may be the highest seqs handed out
        // (a durable entry lands before a buffered chunk of lower seqs), and
        // no newer file's header names them (S6).
        if let Some((g, seg, scan)) = scans.last()
            && segs.keys().next_back() == Some(g)
        {
            let bound = seg
                .tail_bound(scan.end)
                .map_err(|e| StorageError::io("read body generation", e))?;
            let damaged: u64 = scan.damaged.iter().map(|(_, len)| *len).sum();
            out.unknown_tail = out
                .unknown_tail
                .saturating_add(bound)
                .saturating_add(damaged);
        }
        for (g, seg, scan) in scans {
            let g = &g;
            let covering = spans.get(g).map_or(&[][..], |v| v.as_slice());
            for (off, len) in &scan.damaged {
                if !covered(covering, *off) {
                    let bytes = seg
                        .read_span(*off, *len)
                        .map_err(|e| StorageError::io("read body generation", e))?;
                    self.quarantine(0, (*g, *off), &bytes, "bytes that are no valid entry")?;
                }
            }
            // A new entry that does not read back is damage if a readable
            // entry follows it, else a torn tail (RB3 in `queue/open/rebuild.rs`).
            let mut unreadable: Vec<(u64, u64, u64)> = Vec::new();
            for e in &scan.entries {
                out.next_seq = out.next_seq.max(e.seq.saturating_add(1));
                if covered(covering, e.offset)
                    || t.chunks.contains_key(&e.seq)
                    || e.kind != EntryKind::New
                    || gone.contains(e.seq)
                {
                    continue;
                }
                match entry_index(seg, *g, e.offset, e.span, e.seq) {
                    Some(idx) => {
                        for (seq, off, span) in unreadable.drain(..) {
                            let bytes = seg.read_span(off, span).unwrap_or_default();
                            self.quarantine(seq, (*g, off), &bytes, "entry record fails its CRC")?;
                        }
                        adopted += idx.events as u64;
                        self.adopt(e.seq, idx, t, out, repair);
                    }
                    None => {
                        // Its events' ids are never handed out again, tail
                        // or not (its record bytes bound how many it held).
                        out.next_seq = out.next_seq.max(e.seq.saturating_add(e.span));
                        unreadable.push((e.seq, e.offset, e.span));
                    }
                }
            }
        }
        Ok(adopted)
    }

    /// Step 3 or a rebuild: indexes what the model of the topic's log found,
    /// writing split entries again; returns the events indexed.
    fn adopt_model(
        &self,
        m: rebuild::Model,
        t: &mut TopicIndex,
        out: &mut Loaded,
        repair: &mut WriteBatch,
    ) -> Result<u64, StorageError> {
        let mut n = 0;
        out.next_seq = out.next_seq.max(m.next_seq);
        out.unknown_tail = out.unknown_tail.saturating_add(m.unknown_tail);
        for (seq, place, bytes, why) in &m.damaged {
            self.quarantine(*seq, *place, bytes, why)?;
        }
        for (key, idx) in m.chunks {
            n += idx.events as u64;
            self.adopt(key, idx, t, out, repair);
        }
        if !m.rewrite.is_empty() {
            // The new file's header names the seqs handed out so far (S2),
            // those unreadable tails may hold included (S6): this file
            // becomes the newest, and a later rebuild reads no tail behind it.
            self.bodies.next_seq.fetch_max(
                out.next_seq.saturating_add(out.unknown_tail),
                std::sync::atomic::Ordering::AcqRel,
            );
            // Split entries: their events that belong here, written again.
            let groups: Vec<Vec<StoredEvent<'_>>> = m
                .rewrite
                .iter()
                .flat_map(|entry| entry.chunks(self.per_record))
                .map(|c| c.iter().map(|e| e.stored()).collect())
                .collect();
            let raws: Vec<Vec<u8>> = groups.iter().map(|g| record::encode_chunk(g)).collect();
            let records: Vec<Record<'_>> = groups
                .iter()
                .zip(&raws)
                .map(|(g, raw)| Record::new(g, raw))
                .collect();
            let placed =
                self.log
                    .append(self.bodies, Admit::Committer, &records, EntryKind::Requeued)?;
            if self.bodies.fsync {
                self.log.sync()?;
            }
            let mut st = self.log.lock();
            for (r, p) in records.iter().zip(&placed) {
                let idx = r.summary.placed(p.generation, p.offset, p.span as u32);
                n += idx.events as u64;
                st.settled(p.generation, 1);
                self.adopt(r.first_seq, idx, t, out, repair);
            }
        }
        for letter in m.dead {
            out.next_seq = out.next_seq.max(letter.seq.saturating_add(1));
            t.dead_usage.add(1, letter.payload.len() as u64);
            out.totals.add_dead(1, letter.payload.len() as u64);
            repair.put_dead(self.name, &letter);
        }
        Ok(n)
    }
}
