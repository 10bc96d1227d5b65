//! What one topic's body files say is queued, read whole: the index a
//! rebuild without sled makes, and the repair of damaged index records.
//!
//! The log of a topic is every entry of its generations in (generation,
//! offset) order. Read in that order, each event's fate is a small state
//! machine, and the model is exact for everything but acks (which leave no
//! trace: an acked event whose body file remains is queued again, same id):
//!
//! ```text
//!  unseen ── data entry (any kind) ──▶ queued, in the first entry holding it
//!  queued ── trace: dead letter ─────▶ dead (its letter)
//!  dead   ── requeued entry ─────────▶ queued, in that entry (a replay)
//!  any    ── trace: gone ────────────▶ gone, for good (TR3 in `queue/log/trace.rs`)
//! ```
//!
//! A `new` or `rewrite` entry after an event's last dead letter does not
//! bring it back (a stale copy written before a settle lost its lease); only
//! a `requeued` one does. An event queued in more than one entry belongs to
//! the first (a copy is never a second chunk): an entry all of whose events
//! belong to it is indexed as it is, coalesced with the whole entries that
//! touch it; an entry only some of whose events belong to it is *split*: those
//! events are written again, as a `requeued` entry, and indexed there.
//!
//! Two passes keep memory small: the first reads only traces and
//! `requeued` entries (the events' fates), the second every data entry,
//! deciding each event as it goes.
//!
//! # Invariants
//!
//! - RB1: every event is in exactly one chunk after a rebuild or a repair.
//! - RB2: no gone event comes back, and every dead letter a trace holds that
//!   no later replay or purge undid comes back as a dead letter.
//! - RB3: a damaged entry (or damaged bytes) followed by a valid entry is
//!   quarantined and counted; bytes after the last valid entry are a torn
//!   tail, never counted.

use crate::queue::log::Appended;
use crate::queue::log::coalesce;
use crate::queue::log::entry::{EntryInfo, EntryKind, Part};
use crate::queue::log::read::{ReadEvent, decode};
use crate::queue::log::segment::Segment;
use crate::queue::log::trace::SeqRanges;
use crate::record::{self, ChunkIndex, DeadLetter};
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::sync::Arc;

/// A position in a topic's log.
type Pos = (u32, u64);

/// What the model is asked for.
pub(crate) struct Scope {
    /// Spans (per generation, sorted) that intact index records cover: their
    /// events are taken, and they are not adopted again (a repair).
    pub(crate) covered: BTreeMap<u32, Vec<(u64, u64)>>,
    /// Only events at or above this seq are adopted from uncovered entries
    /// before `checkpoint` (a repair: every event of a damaged chunk is at or
    /// above its key). 0 for a rebuild.
    pub(crate) min_seq: u64,
    /// From here on, `new` entries are adopted whatever their seqs (the
    /// entries a crash left unindexed). `(0, 0)` for a rebuild.
    pub(crate) checkpoint: Pos,
    /// Dead letters sled holds (a repair): they stay dead letters. `None`:
    /// the traces decide, and their dead letters are restored (a rebuild).
    pub(crate) sled_dead: Option<BTreeSet<u64>>,
    pub(crate) max_events: u64,
    pub(crate) max_bytes: u64,
}

/// What the model found.
#[derive(Default)]
pub(crate) struct Model {
    /// Chunks of whole entries to index, under their first seqs.
    pub(crate) chunks: Vec<(u64, ChunkIndex)>,
    /// Events to write again (split entries): one group per entry, in
    /// rising seqs; the groups in the order of their first seqs.
    pub(crate) rewrite: Vec<Vec<ReadEvent>>,
    /// Dead letters to restore (a rebuild).
    pub(crate) dead: Vec<DeadLetter>,
    /// Damaged bytes to quarantine: (the seq their header named, where
    /// they are (generation, offset), bytes, why).
    pub(crate) damaged: Vec<(u64, (u32, u64), Bytes, String)>,
    /// One above the highest seq any entry, trace or header names.
    pub(crate) next_seq: u64,
    /// Seqs a damaged or torn last entry of the newest generation may hold
    /// (`Segment::tail_bound`): added to the store's next seq once every
    /// topic's highest is known, since that entry may be the store's last.
    pub(crate) unknown_tail: u64,
}

/// Whether `offset` lies in one of the sorted, non-overlapping `spans`.
pub(crate) fn covered(spans: &[(u64, u64)], offset: u64) -> bool {
    let i = spans.partition_point(|(start, _)| *start <= offset);
    i > 0 && offset < spans[i - 1].1
}

/// One item of a file, in order: a valid entry, or damaged bytes.
#[derive(Clone, Copy)]
enum Item {
    Entry(EntryInfo),
    Damaged(u64, u64),
}

/// A file's items and the index of the last one that reads back: the items
/// after it are the file's torn tail (RB3).
struct FileItems {
    g: u32,
    seg: Arc<Segment>,
    items: Vec<Item>,
    last_good: Option<usize>,
    /// Where the scan's last valid entry ends.
    end: u64,
}

impl FileItems {
    fn new(g: u32, seg: &Arc<Segment>) -> io::Result<FileItems> {
        let scan = seg.scan(0)?;
        let mut items = Vec::with_capacity(scan.entries.len() + scan.damaged.len());
        let mut damaged = scan.damaged.iter().peekable();
        for e in &scan.entries {
            while let Some((off, len)) = damaged.next_if(|(off, _)| *off < e.offset) {
                items.push(Item::Damaged(*off, *len));
            }
            items.push(Item::Entry(*e));
        }
        let mut file = FileItems {
            g,
            seg: seg.clone(),
            items,
            last_good: None,
            end: scan.end,
        };
        for i in (0..file.items.len()).rev() {
            if let Item::Entry(_) = file.items[i]
                && readable(&file.part(i)?)
            {
                file.last_good = Some(i);
                break;
            }
        }
        Ok(file)
    }

    /// Item `i` read back.
    fn part(&self, i: usize) -> io::Result<Part> {
        Ok(match self.items[i] {
            Item::Damaged(offset, len) => Part::Damaged {
                at: offset,
                len,
                bytes: self.seg.read_span(offset, len)?,
            },
            Item::Entry(e) => {
                let bytes = self.seg.read_span(e.offset, e.span)?;
                self.seg
                    .parse_span(&bytes, e.offset, e.span)
                    .into_iter()
                    .next()
                    .unwrap_or(Part::Damaged {
                        at: e.offset,
                        len: e.span,
                        bytes,
                    })
            }
        })
    }

    fn offset(&self, i: usize) -> u64 {
        match self.items[i] {
            Item::Entry(e) => e.offset,
            Item::Damaged(off, _) => off,
        }
    }

    fn kind(&self, i: usize) -> Option<EntryKind> {
        match self.items[i] {
            Item::Entry(e) => Some(e.kind),
            Item::Damaged(..) => None,
        }
    }
}

/// Decodes a data entry's events, or why it cannot be read.
fn events_of(part: &Part) -> Result<Vec<ReadEvent>, String> {
    match part {
        Part::Entry { info, .. } if !info.kind.holds_events() => Err("a trace".into()),
        Part::Entry { record, .. } => decode(record),
        Part::Damaged { .. } => Err("bytes that are no valid entry".into()),
    }
}

/// Whether the part is an entry whose record reads back.
fn readable(part: &Part) -> bool {
    match part {
        Part::Entry { info, record } if info.kind == EntryKind::Trace => {
            record::decode_trace(record).is_ok()
        }
        Part::Entry { .. } => events_of(part).is_ok(),
        Part::Damaged { .. } => false,
    }
}

/// The fates of events a first pass over traces and `requeued` entries
/// decided (see the module docs).
#[derive(Default)]
struct Fates {
    gone: SeqRanges,
    /// Dead letters at the end of the log (not revived, not gone).
    dead: BTreeMap<u64, DeadLetter>,
    /// Events revived by a replay: the position of the entry that holds them.
    revived: HashMap<u64, Pos>,
}

/// Pass 1 over every file (see the module docs); returns the fates and the
/// highest seq the traces name.
fn fates(files: &[FileItems]) -> io::Result<(Fates, u64)> {
    let mut gone = SeqRanges::default();
    let mut dead_events: BTreeMap<u64, Vec<(Pos, Option<DeadLetter>)>> = BTreeMap::new();
    let mut requeued: Vec<(Pos, SeqRanges)> = Vec::new();
    let mut max_seq = 0;
    for file in files {
        for i in 0..file.items.len() {
            let pos = (file.g, file.offset(i));
            match file.kind(i) {
                Some(EntryKind::Trace) => {
                    let Part::Entry { record, .. } = file.part(i)? else {
                        continue;
                    };
                    let Ok(trace) = record::decode_trace(&record) else {
                        continue;
                    };
                    // Every seq below its high-water was handed out (TR4).
                    max_seq = max_seq.max(trace.high_water.saturating_sub(1));
                    for (lo, hi) in trace.gone {
                        gone.insert_range(lo, hi);
                        max_seq = max_seq.max(hi);
                    }
                    for letter in trace.dead {
                        max_seq = max_seq.max(letter.seq);
                        dead_events
                            .entry(letter.seq)
                            .or_default()
                            .push((pos, Some(letter)));
                    }
                }
                Some(EntryKind::Requeued) => {
                    if let Ok(events) = events_of(&file.part(i)?) {
                        let mut r = SeqRanges::default();
                        events.iter().for_each(|e| r.insert(e.seq));
                        requeued.push((pos, r));
                    }
                }
                _ => {}
            }
        }
    }
    let mut out = Fates {
        gone,
        ..Fates::default()
    };
    for (seq, mut events) in dead_events {
        if out.gone.contains(seq) {
            continue;
        }
        events.extend(
            requeued
                .iter()
                .filter(|(_, r)| r.contains(seq))
                .map(|(pos, _)| (*pos, None)),
        );
        events.sort_by_key(|(pos, _)| *pos);
        let mut letter: Option<DeadLetter> = None;
        let mut revived: Option<Pos> = None;
        for (pos, ev) in events {
            match ev {
                Some(l) => {
                    letter = Some(l);
                    revived = None;
                }
                None if letter.is_some() && revived.is_none() => revived = Some(pos),
                None => {}
            }
        }
        match (revived, letter) {
            (Some(pos), _) => {
                out.revived.insert(seq, pos);
            }
            (None, Some(l)) => {
                out.dead.insert(seq, l);
            }
            (None, None) => {}
        }
    }
    Ok((out, max_seq))
}

/// Reads a topic's generations and decides where every event belongs (see
/// the module docs).
pub(crate) fn model(segs: &BTreeMap<u32, Arc<Segment>>, scope: &Scope) -> io::Result<Model> {
    let mut files = Vec::with_capacity(segs.len());
    for (g, seg) in segs {
        files.push(FileItems::new(*g, seg)?);
    }
    let (fates, trace_max) = fates(&files)?;
    let mut out = Model {
        next_seq: trace_max + 1,
        ..Model::default()
    };
    if let Some(newest) = files.last() {
        // Its damaged spans too: a durable entry can land before a buffered
        // chunk of lower seqs, so damage there may hold the highest (S6).
        let damaged: u64 = newest
            .items
            .iter()
            .map(|i| match i {
                Item::Damaged(_, len) => *len,
                Item::Entry(_) => 0,
            })
            .sum();
        out.unknown_tail = newest.seg.tail_bound(newest.end)?.saturating_add(damaged);
    }
    for seg in segs.values() {
        if let Some(h) = seg.header() {
            out.next_seq = out.next_seq.max(h.next_seq);
        }
    }
    let spans_of = |g: u32| scope.covered.get(&g).map_or(&[][..], |v| v.as_slice());
    // Events sled's intact records hold (a repair): taken already.
    let mut taken = SeqRanges::default();
    if !scope.covered.is_empty() {
        for file in &files {
            for i in 0..file.items.len() {
                if covered(spans_of(file.g), file.offset(i))
                    && let Ok(events) = events_of(&file.part(i)?)
                {
                    events.iter().for_each(|e| taken.insert(e.seq));
                }
            }
        }
    }
    // Runs of whole entries that touch, each with the high mark of every
    // seq logged before it (`coalesce`'s floor): a run is cut wherever
    // another entry lies between.
    let mut runs: Vec<(u64, Vec<Appended>)> = Vec::new();
    let mut last_whole: Option<(u32, usize)> = None;
    let mut high = 0u64;
    for file in &files {
        let spans = spans_of(file.g);
        for i in 0..file.items.len() {
            let tail = file.last_good.is_none_or(|l| i > l);
            let off = file.offset(i);
            let is_covered = covered(spans, off);
            // A valid header's seq is true (its check, or in an unchecked
            // file its record's CRC, vouched for it) even where the record
            // does not read back: no event it held gets its id again (its
            // record bytes bound how many it held).
            let unread = |out: &mut Model| {
                if let Item::Entry(e) = file.items[i] {
                    out.next_seq = out.next_seq.max(e.seq.saturating_add(e.span));
                }
            };
            if file.kind(i) == Some(EntryKind::Trace) {
                continue;
            }
            if tail {
                unread(&mut out);
                continue;
            }
            let part = file.part(i)?;
            let events = match events_of(&part) {
                Ok(events) => events,
                Err(why) => {
                    unread(&mut out);
                    if !is_covered {
                        let (seq, bytes) = match &part {
                            Part::Entry { info, record } => (info.seq, record.clone()),
                            Part::Damaged { bytes, .. } => (0, bytes.clone()),
                        };
                        out.damaged.push((seq, (file.g, off), bytes, why));
                    }
                    continue;
                }
            };
            let high_before = high;
            for e in &events {
                out.next_seq = out.next_seq.max(e.seq.saturating_add(1));
                high = high.max(e.seq.saturating_add(1));
            }
            let Part::Entry { info, .. } = part else {
                continue;
            };
            if is_covered {
                continue;
            }
            let pos = (file.g, info.offset);
            let adoptable_new = info.kind == EntryKind::New && pos >= scope.checkpoint;
            let mut live = Vec::with_capacity(events.len());
            for e in &events {
                let s = e.seq;
                let excluded = fates.gone.contains(s)
                    || taken.contains(s)
                    || (!adoptable_new && s < scope.min_seq);
                let mine = !excluded
                    && match (&scope.sled_dead, fates.revived.get(&s)) {
                        (Some(dead), _) => !dead.contains(&s),
                        (None, Some(at)) => *at == pos,
                        (None, None) => !fates.dead.contains_key(&s),
                    };
                if mine {
                    taken.insert(s);
                    live.push(e.clone());
                }
            }
            if live.is_empty() {
                continue;
            }
            if live.len() == events.len() {
                let stored: Vec<_> = live.iter().map(ReadEvent::stored).collect();
                if last_whole != Some((file.g, i.wrapping_sub(1))) || info.kind != EntryKind::New {
                    runs.push((high_before, Vec::new()));
                }
                // Only `new` entries coalesce, as at commit: a rest or a
                // replay holds seqs from anywhere in the log's past, and an
                // entry joining it would be leased ahead of what lies between.
                last_whole = (info.kind == EntryKind::New).then_some((file.g, i));
                let (_, whole) = runs.last_mut().expect("a run was just pushed");
                whole.push(Appended {
                    first_seq: live[0].seq,
                    index: ChunkIndex::of(&stored).placed(file.g, info.offset, info.span as u32),
                });
            } else {
                // Copied out of the record: the rest of it is dropped. One
                // group per entry: packing the rests of two entries into one
                // record would key the later one's events below a chunk
                // lying between them.
                out.rewrite.push(
                    live.into_iter()
                        .map(|e| ReadEvent {
                            payload: Bytes::copy_from_slice(&e.payload),
                            ..e
                        })
                        .collect(),
                );
            }
        }
    }
    out.chunks = runs
        .iter()
        .flat_map(|(floor, whole)| coalesce(whole, *floor, scope.max_events, scope.max_bytes))
        .collect();
    // Split entries come in log order; each group holds rising seqs.
    out.rewrite.sort_by_key(|g| g.first().map(|e| e.seq));
    if scope.sled_dead.is_none() {
        out.dead = fates.dead.into_values().collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::log::entry::{self, EntryKind};
    use crate::queue::log::segment::{HEADER_LEN, OpenFiles, SegmentHeader};
    use crate::record::{StoredEvent, Trace};

    fn data(seqs: &[u64], kind: EntryKind) -> Vec<u8> {
        let events: Vec<StoredEvent<'_>> = seqs
            .iter()
            .map(|s| StoredEvent {
                seq: *s,
                enqueued_at_ms: 1,
                payload: b"p",
            })
            .collect();
        let rec = record::encode_chunk(&events);
        let mut out = entry::header(seqs[0], rec.len() as u32, kind, 0).to_vec();
        out.extend_from_slice(&rec);
        out
    }

    fn dead(seq: u64) -> Vec<u8> {
        let rec = record::encode_trace(&Trace {
            gone: Vec::new(),
            high_water: 0,
            dead: vec![DeadLetter {
                seq,
                enqueued_at_ms: 1,
                dead_at_ms: 2,
                attempts: 1,
                reason: "bad".into(),
                payload: b"p".to_vec(),
            }],
        });
        let mut out = entry::header(seq, rec.len() as u32, EntryKind::Trace, 0).to_vec();
        out.extend_from_slice(&rec);
        out
    }

    /// Found by the fault simulation (seed 1796584348): two split entries,
    /// the later holding lower seqs, were written again as one record whose
    /// seqs did not rise — unreadable, so its events were lost.
    #[test]
    fn split_entries_are_written_again_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8);
        let header = SegmentHeader {
            instance: "a1".into(),
            next_seq: 1,
            salt: 0,
        };
        let seg = Segment::create(&files, &dir.path().join("1.seg"), header, false).unwrap();
        // [5, 6] then [1, 2]; 6 and 2 became dead letters.
        let parts = [
            data(&[5, 6], EntryKind::New),
            data(&[1, 2], EntryKind::New),
            dead(6),
            dead(2),
        ];
        let refs: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
        seg.write_at(HEADER_LEN, &refs).unwrap();
        let segs = BTreeMap::from([(1, seg)]);
        let scope = Scope {
            covered: BTreeMap::new(),
            min_seq: 0,
            checkpoint: (0, 0),
            sled_dead: None,
            max_events: 50,
            max_bytes: 1 << 20,
        };
        let m = model(&segs, &scope).unwrap();
        assert!(m.chunks.is_empty());
        let seqs: Vec<u64> = m.rewrite.iter().flatten().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 5], "written again in seq order");
        let stored: Vec<StoredEvent<'_>> =
            m.rewrite.iter().flatten().map(ReadEvent::stored).collect();
        assert!(record::decode_chunk(&record::encode_chunk(&stored)).is_ok());
        assert_eq!(m.dead.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![2, 6]);
    }

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
