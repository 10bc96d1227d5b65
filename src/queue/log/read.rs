//! Reading a chunk back from its body file, entry by entry, with damage
//! contained to the entries it hit.
//!
//! A chunk is a span of whole entries (`log/entry.rs`). Reading it yields
//! the *runs* of consecutive intact entries, decoded, and the damaged parts:
//! bytes that are no valid entry, an entry whose record fails its CRC or does
//! not decode, or bytes missing because the file ended early. Damage costs
//! exactly the damaged entries' events (README guarantee 7): lease and
//! `verify` replace the chunk by one chunk per intact run (`split_damaged` in
//! `index/chunk.rs`), each under its first seq, and keep the damaged bytes in
//! quarantine, one record per damaged part.
//!
//! An index record whose span does not start with an entry holding the
//! chunk's key (the first seq) does not describe the file: the whole span is
//! damaged.

use super::entry::Part;
use super::{Bodies, TopicLog};
use crate::queue::storage::StorageError;
use crate::record::{self, ChunkIndex, StoredEvent};
use bytes::Bytes;
use std::sync::Arc;

/// One event read back, its payload borrowed from the record's bytes.
#[derive(Clone, Debug)]
pub(crate) struct ReadEvent {
    pub(crate) seq: u64,
    pub(crate) enqueued_at_ms: u64,
    pub(crate) payload: Bytes,
}

impl ReadEvent {
    pub(crate) fn stored(&self) -> StoredEvent<'_> {
        StoredEvent {
            seq: self.seq,
            enqueued_at_ms: self.enqueued_at_ms,
            payload: &self.payload,
        }
    }
}

/// Consecutive intact entries of a chunk's span.
#[derive(Clone, Debug)]
pub(crate) struct Run {
    /// Offset of the first entry's header.
    pub(crate) offset: u64,
    /// Bytes of the run's entries, headers included.
    pub(crate) len: u64,
    /// The records, in order (for copies: compaction moves them as they are).
    pub(crate) records: Vec<Bytes>,
    pub(crate) events: Vec<ReadEvent>,
}

impl Run {
    /// The run as a chunk of generation `g`, under its first seq.
    pub(crate) fn piece(&self, g: u32) -> (u64, ChunkIndex) {
        let stored: Vec<StoredEvent<'_>> = self.events.iter().map(ReadEvent::stored).collect();
        (
            self.events.first().map_or(0, |e| e.seq),
            ChunkIndex::of(&stored).placed(g, self.offset, self.len as u32),
        )
    }
}

/// A damaged part of a span: where it starts in its file, the bytes found
/// (maybe none) and why.
#[derive(Clone, Debug)]
pub(crate) struct Damage {
    pub(crate) at: u64,
    pub(crate) bytes: Bytes,
    pub(crate) why: String,
}

/// What reading a chunk found.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChunkRead {
    pub(crate) runs: Vec<Run>,
    pub(crate) damaged: Vec<Damage>,
}

impl ChunkRead {
    fn all_damaged(at: u64, bytes: Bytes, why: impl Into<String>) -> ChunkRead {
        ChunkRead {
            runs: Vec::new(),
            damaged: vec![Damage {
                at,
                bytes,
                why: why.into(),
            }],
        }
    }

    /// Whether every entry of the span was read intact.
    pub(crate) fn intact(&self) -> bool {
        self.damaged.is_empty()
    }

    /// Every event read, in order.
    pub(crate) fn events(&self) -> impl Iterator<Item = &ReadEvent> {
        self.runs.iter().flat_map(|r| r.events.iter())
    }

    /// The intact runs as chunks of generation `g`.
    pub(crate) fn pieces(&self, g: u32) -> Vec<(u64, ChunkIndex)> {
        self.runs.iter().map(|r| r.piece(g)).collect()
    }
}

/// Decodes an event record (its seqs rise: `decode_chunk` checks).
pub(crate) fn decode(record: &Bytes) -> Result<Vec<ReadEvent>, String> {
    record::decode_chunk_with(record, |e| ReadEvent {
        seq: e.seq,
        enqueued_at_ms: e.enqueued_at_ms,
        payload: record.slice_ref(e.payload),
    })
    .map_err(|e| e.to_string())
}

/// Sorts the parts of a span into runs and damage (see the module docs).
/// Every event of the chunk has a seq in `key..=last_seq`: an entry holding
/// another is not the chunk's (bytes a resync took for an entry, such as a
/// payload holding entry-shaped bytes), and is damage.
pub(crate) fn sort_parts(parts: Vec<Part>, key: u64, last_seq: u64) -> ChunkRead {
    let span_at = parts.first().map_or(0, Part::at);
    let mut out = ChunkRead::default();
    // The first seq of the span's first entry, if that entry is intact.
    let mut first: Option<Option<u64>> = None;
    for part in parts {
        match part {
            Part::Entry { info, record } => {
                let decoded = if info.kind.holds_events() {
                    decode(&record).and_then(|events| {
                        if events.iter().all(|e| (key..=last_seq).contains(&e.seq)) {
                            Ok(events)
                        } else {
                            Err("an entry whose seqs are not the chunk's".into())
                        }
                    })
                } else {
                    Err("a trace entry inside a chunk's span".into())
                };
                match decoded {
                    Ok(events) => {
                        first.get_or_insert(events.first().map(|e| e.seq));
                        // Damage in between would occupy the bytes between.
                        match out.runs.last_mut() {
                            Some(r) if r.offset + r.len == info.offset => {
                                r.len += info.span;
                                r.records.push(record);
                                r.events.extend(events);
                            }
                            _ => out.runs.push(Run {
                                offset: info.offset,
                                len: info.span,
                                records: vec![record],
                                events,
                            }),
                        }
                    }
                    Err(why) => {
                        first.get_or_insert(None);
                        out.damaged.push(Damage {
                            at: info.offset,
                            bytes: record,
                            why,
                        });
                    }
                }
            }
            Part::Damaged { at, bytes, len } => {
                first.get_or_insert(None);
                let why = if (bytes.len() as u64) < len {
                    "chunk cut short: its body file ends early".to_string()
                } else {
                    "bytes that are no valid entry inside a chunk's span".to_string()
                };
                out.damaged.push(Damage { at, bytes, why });
            }
        }
    }
    // A span that starts with an intact entry starts with the chunk's key;
    // after damage, the intact runs hold later seqs. Otherwise the index
    // record does not describe these bytes.
    let describes = match first.flatten() {
        Some(seq) => seq == key,
        None => out
            .runs
            .iter()
            .flat_map(|r| r.events.first())
            .all(|e| e.seq > key),
    };
    if !describes {
        return ChunkRead::all_damaged(
            span_at,
            Bytes::new(),
            "chunk entry header does not match its index record",
        );
    }
    out
}

/// Reads a chunk's span from its body file, entry by entry (see the module
/// docs); `log`: the topic's log, if it has one. An I/O error (not damage)
/// is returned as an error.
pub(crate) fn read_chunk(
    bodies: &Bodies,
    log: Option<&Arc<TopicLog>>,
    key: u64,
    index: &ChunkIndex,
) -> Result<ChunkRead, StorageError> {
    read(bodies, log, key, index, false)
}

/// [`read_chunk`] for a lease: a sequential reader reads ahead
/// (`queue/log/read_ahead.rs`).
pub(crate) fn read_leased_chunk(
    bodies: &Bodies,
    log: Option<&Arc<TopicLog>>,
    key: u64,
    index: &ChunkIndex,
) -> Result<ChunkRead, StorageError> {
    read(bodies, log, key, index, true)
}

fn read(
    bodies: &Bodies,
    log: Option<&Arc<TopicLog>>,
    key: u64,
    index: &ChunkIndex,
    ahead: bool,
) -> Result<ChunkRead, StorageError> {
    let Some(log) = log else {
        return Ok(ChunkRead::all_damaged(
            index.body_offset,
            Bytes::new(),
            "body file missing",
        ));
    };
    let seg = match log.segment(bodies, index.body_gen) {
        Ok(s) => s,
        Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {
            return Ok(ChunkRead::all_damaged(
                index.body_offset,
                Bytes::new(),
                "body file missing",
            ));
        }
        Err(e) => return Err(e),
    };
    let want = index.body_len as u64;
    let span = if ahead {
        let stable = log.signals.stable_end(index.body_gen);
        seg.read_span_ahead(index.body_offset, want, stable)
    } else {
        seg.read_span(index.body_offset, want)
    }
    .map_err(|e| StorageError::io("read chunk", e))?;
    let parts = seg.parse_span(&span, index.body_offset, want);
    Ok(sort_parts(parts, key, index.last_seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::log::entry::{EntryInfo, EntryKind};
    use crate::record::encode_chunk;

    fn entry(offset: u64, seq: u64) -> Part {
        let rec = encode_chunk(&[StoredEvent {
            seq,
            enqueued_at_ms: 7,
            payload: b"x",
        }]);
        let span = 16 + rec.len() as u64;
        Part::Entry {
            info: EntryInfo {
                offset,
                span,
                seq,
                kind: EntryKind::New,
            },
            record: Bytes::from(rec),
        }
    }

    fn span_of(p: &Part) -> u64 {
        match p {
            Part::Entry { info, .. } => info.span,
            Part::Damaged { len, .. } => *len,
        }
    }

    #[test]
    fn damage_in_the_middle_leaves_two_runs_under_their_first_seqs() {
        let e1 = entry(40, 1);
        let e2 = entry(40 + span_of(&e1), 2);
        let bad_at = 40 + 2 * span_of(&e1);
        let bad = Part::Damaged {
            at: bad_at,
            len: 30,
            bytes: Bytes::from(vec![9u8; 30]),
        };
        let e4 = entry(bad_at + 30, 4);
        let read = sort_parts(vec![e1, e2, bad, e4], 1, 4);
        assert_eq!(read.damaged.len(), 1);
        let pieces = read.pieces(3);
        assert_eq!(
            pieces
                .iter()
                .map(|(k, i)| (*k, i.events, i.body_offset))
                .collect::<Vec<_>>(),
            vec![(1, 2, 40), (4, 1, bad_at + 30)]
        );
    }

    #[test]
    fn a_span_that_does_not_start_with_its_key_is_all_damage() {
        let read = sort_parts(vec![entry(40, 5)], 9, 20);
        assert!(read.runs.is_empty());
        assert_eq!(read.damaged.len(), 1);
    }
}
