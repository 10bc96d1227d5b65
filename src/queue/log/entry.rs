//! One entry of a body file: its header, the kinds of entry, and how a run of
//! entries is read back — past damage, not stopping at it.
//!
//! # Format
//!
//! ```text
//! entry  := seq u64 LE         first seq of the record (a trace: its lowest seq)
//!           len u32 LE         length of the record
//!           kind u8            0 new | 1 rewrite | 2 trace | 3 requeued
//!           check [u8; 3]      low 24 bits of CRC-32 over the file's salt (u32
//!                              LE) and the 13 bytes before it (0 in files
//!                              written before format 4: unchecked)
//!           record             a record (`crate::record`), len bytes, with its CRC
//! ```
//!
//! Files of format-2 stores have 12-byte headers (`seq`, `len`) and no kinds.
//!
//! # Reading runs of entries
//!
//! A reader walks headers from a known entry boundary. A header is *valid*
//! when its length is not zero and fits, its kind is known and — in a checked
//! file — its check matches; in an unchecked file, where a flipped length
//! byte could still fit, the record's own CRC must match too. At an invalid
//! header the reader *resyncs*: it searches forward, byte by byte, for the
//! next offset holding a valid header whose record's CRC matches, reports the
//! bytes in between as damaged, and goes on from there. If no valid entry
//! follows, the run ends there: a torn tail (a crash in the middle of an
//! append) or the zeros written ahead of a log's end (G6 in `queue/log/mod.rs`).
//!
//! So one flipped byte costs the entry it lands in, never the entries after
//! it. What resync trusts is a header check and a record CRC at the same
//! offset (a false match needs both of 2^-24 and 2^-32 to fail).
//!
//! # Invariants
//!
//! - E1: no entry has an empty record, so a zero header is never valid.
//! - E2: a damaged range reported by a reader is followed by a valid entry;
//!   bytes with no valid entry after them are a tail, not damage.
//! - E3: the kind of an entry is never guessed: an unknown kind byte makes
//!   the header invalid.

use crate::record;
use bytes::Bytes;
use std::io;

/// Bytes of a format-3/4 entry header.
pub(crate) const ENTRY_HEADER: u64 = 16;
/// Bytes of a format-2 entry header.
pub(crate) const ENTRY_HEADER_V2: u64 = 12;

/// What an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// Events written for the first time (a commit round or a durable append).
    /// Open adopts a new entry that no index record covers if it lies at or
    /// after the topic's checkpoint.
    New,
    /// Events indexed elsewhere that were moved here (a partial settle, a
    /// `max_age` trim, compaction, a migration or a repair). Its index record
    /// is written in the same sled batch that removes the old one, so an
    /// unindexed rewrite is garbage; only a rebuild without sled reads it.
    Rewrite,
    /// A trace of events that left the queue other than by an ack (purged,
    /// evicted, expired, dead-lettered) and of dead letters purged: the
    /// record is a [`record::Trace`]. A rebuild without sled reads it so that
    /// none of them comes back (`queue/log/trace.rs`).
    Trace,
    /// Events written while they were known queued: dead letters moved back
    /// by a replay, chunks copied by compaction (claimed while copied), and
    /// the pieces a rebuild rewrites. Like a rewrite, and the only kind of
    /// entry that brings back an event a trace made a dead letter.
    Requeued,
}

impl EntryKind {
    fn byte(self) -> u8 {
        match self {
            EntryKind::New => 0,
            EntryKind::Rewrite => 1,
            EntryKind::Trace => 2,
            EntryKind::Requeued => 3,
        }
    }

    fn from_byte(b: u8) -> Option<EntryKind> {
        match b {
            0 => Some(EntryKind::New),
            1 => Some(EntryKind::Rewrite),
            2 => Some(EntryKind::Trace),
            3 => Some(EntryKind::Requeued),
            _ => None,
        }
    }

    /// Whether the record holds events (a chunk record), not a trace.
    pub(crate) fn holds_events(self) -> bool {
        !matches!(self, EntryKind::Trace)
    }
}

/// How the entries of one file are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) header_len: u64,
    /// Headers carry a check (files written by format 4).
    pub(crate) checked: bool,
    /// Headers carry a kind (not format 2).
    pub(crate) kinds: bool,
    /// The file's salt, mixed into every header check: random per file
    /// writer, kept in the file header, so a producer cannot forge a header
    /// inside a payload that a resync would take for an entry.
    pub(crate) salt: u32,
}

impl Layout {
    /// Files written by this code, with `salt`.
    pub(crate) const fn checked(salt: u32) -> Layout {
        Layout {
            header_len: ENTRY_HEADER,
            checked: true,
            kinds: true,
            salt,
        }
    }
    /// A checked file with salt 0 (tests).
    #[cfg(test)]
    pub(crate) const CHECKED: Layout = Layout::checked(0);
    /// Files written by format 3 (or whose file header is damaged).
    pub(crate) const UNCHECKED: Layout = Layout {
        header_len: ENTRY_HEADER,
        checked: false,
        kinds: true,
        salt: 0,
    };
    /// Files written by format 2.
    pub(crate) const V2: Layout = Layout {
        header_len: ENTRY_HEADER_V2,
        checked: false,
        kinds: false,
        salt: 0,
    };
}

fn check(salt: u32, h: &[u8]) -> [u8; 3] {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&salt.to_le_bytes());
    hasher.update(&h[..13]);
    let c = hasher.finalize().to_le_bytes();
    [c[0], c[1], c[2]]
}

/// The 16-byte header of an entry of a file with `salt`, with its check.
pub(crate) fn header(
    seq: u64,
    len: u32,
    kind: EntryKind,
    salt: u32,
) -> [u8; ENTRY_HEADER as usize] {
    let mut h = [0u8; ENTRY_HEADER as usize];
    h[..8].copy_from_slice(&seq.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12] = kind.byte();
    let c = check(salt, &h);
    h[13..16].copy_from_slice(&c);
    h
}

/// One entry found by a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryInfo {
    /// Offset of the entry's header.
    pub(crate) offset: u64,
    /// Header and record bytes.
    pub(crate) span: u64,
    /// The seq its header names.
    pub(crate) seq: u64,
    pub(crate) kind: EntryKind,
}

impl EntryInfo {
    /// Where the entry ends.
    pub(crate) fn end(&self) -> u64 {
        self.offset + self.span
    }
}

/// Bytes a reader walks: a file (read through a window) or a span in memory.
pub(crate) trait Source {
    /// Bytes available.
    fn size(&self) -> u64;
    /// `len` bytes at `off` (the caller checks they lie within `size`).
    fn get(&mut self, off: u64, len: usize) -> io::Result<&[u8]>;
}

/// A span read into memory, whose first byte is at file offset `base`.
pub(crate) struct SliceSource<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) base: u64,
}

impl Source for SliceSource<'_> {
    fn size(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    fn get(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        let at = (off - self.base) as usize;
        self.bytes
            .get(at..at + len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the span"))
    }
}

/// What a reader found at a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A valid entry.
    Entry(EntryInfo),
    /// Damaged bytes, followed by a valid entry at `offset + len` (E2).
    Damaged { offset: u64, len: u64 },
    /// No valid entry from here on: the end, or a torn tail.
    End,
}

/// The header at `at`, if valid by the header alone: (seq, record length, kind).
fn parse_header(
    src: &mut dyn Source,
    layout: Layout,
    at: u64,
) -> io::Result<Option<(u64, u64, EntryKind)>> {
    let hl = layout.header_len;
    let size = src.size();
    if at + hl > size {
        return Ok(None);
    }
    let h = src.get(at, hl as usize)?;
    let seq = u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]));
    let len = u32::from_le_bytes(h[8..12].try_into().unwrap_or([0; 4])) as u64;
    let kind = if layout.kinds {
        match EntryKind::from_byte(h[12]) {
            Some(k) => k,
            None => return Ok(None),
        }
    } else {
        EntryKind::New
    };
    if layout.checked && h[13..16] != check(layout.salt, h) {
        return Ok(None);
    }
    if len == 0 || at + hl + len > size {
        return Ok(None);
    }
    Ok(Some((seq, len, kind)))
}

/// The entry at `at` if valid; `strict` also checks the record's CRC (always
/// done where headers carry no check).
fn valid_at(
    src: &mut dyn Source,
    layout: Layout,
    at: u64,
    strict: bool,
) -> io::Result<Option<EntryInfo>> {
    let Some((seq, len, kind)) = parse_header(src, layout, at)? else {
        return Ok(None);
    };
    if strict || !layout.checked {
        // Cheap first: an event record starts with the header's seq (a
        // resync tests every offset of a damaged range; most fail here,
        // before a CRC over what may be megabytes).
        if kind.holds_events() {
            let prefix = src.get(at + layout.header_len, (len as usize).min(24))?;
            if record::chunk_first_seq(prefix) != Some(seq) {
                return Ok(None);
            }
        }
        let rec = src.get(at + layout.header_len, len as usize)?;
        if !record::frame_ok(rec) {
            return Ok(None);
        }
    }
    Ok(Some(EntryInfo {
        offset: at,
        span: layout.header_len + len,
        seq,
        kind,
    }))
}

/// Searches from `from` for the next offset holding a valid entry whose
/// record's CRC matches.
fn resync(src: &mut dyn Source, layout: Layout, from: u64) -> io::Result<Option<u64>> {
    let size = src.size();
    let hl = layout.header_len;
    let mut o = from;
    while o + hl + 5 <= size {
        // A zero run holds no header: a header needs a non-zero length
        // (bytes 8..12), so skip to 11 bytes before the next non-zero byte.
        let window = (size - o).min(64 * 1024) as usize;
        let bytes = src.get(o, window)?;
        match bytes.iter().position(|b| *b != 0) {
            None => {
                o += window as u64;
                continue;
            }
            Some(nz) if nz > 11 => {
                o += (nz - 11) as u64;
                continue;
            }
            Some(_) => {}
        }
        if valid_at(src, layout, o, true)?.is_some() {
            return Ok(Some(o));
        }
        o += 1;
    }
    Ok(None)
}

/// Reads what lies at `at` (an entry boundary, or where damage began).
pub(crate) fn step(src: &mut dyn Source, layout: Layout, at: u64) -> io::Result<Step> {
    if let Some(e) = valid_at(src, layout, at, false)? {
        return Ok(Step::Entry(e));
    }
    if at + layout.header_len > src.size() {
        return Ok(Step::End);
    }
    Ok(match resync(src, layout, at + 1)? {
        Some(next) => Step::Damaged {
            offset: at,
            len: next - at,
        },
        None => Step::End,
    })
}

/// One part of a span read back: an entry with its record, or damage.
#[derive(Clone, Debug)]
pub(crate) enum Part {
    Entry {
        info: EntryInfo,
        record: Bytes,
    },
    /// Bytes that are no valid entry (or are missing: `bytes` shorter than
    /// `len` when the file ended early), at file offset `at`.
    Damaged {
        at: u64,
        len: u64,
        bytes: Bytes,
    },
}

impl Part {
    /// Where the part starts in its file.
    pub(crate) fn at(&self) -> u64 {
        match self {
            Part::Entry { info, .. } => info.offset,
            Part::Damaged { at, .. } => *at,
        }
    }
}

/// Splits a span read from a file (starting at file offset `base`, meant to
/// be `want` bytes long) into entries and damage. Bytes missing at the end
/// (the file ended early) and a tail that is no valid entry are damage too:
/// an index record vouched for all of the span.
pub(crate) fn parse_span(span: &Bytes, base: u64, want: u64, layout: Layout) -> Vec<Part> {
    let mut src = SliceSource { bytes: span, base };
    let end = base + span.len() as u64;
    let mut out = Vec::new();
    let mut at = base;
    let slice = |from: u64, to: u64| span.slice((from - base) as usize..(to - base) as usize);
    while at < end {
        match step(&mut src, layout, at) {
            Ok(Step::Entry(info)) => {
                let rec = slice(info.offset + layout.header_len, info.end());
                out.push(Part::Entry { info, record: rec });
                at = info.end();
            }
            Ok(Step::Damaged { offset, len }) => {
                out.push(Part::Damaged {
                    at: offset,
                    len,
                    bytes: slice(offset, offset + len),
                });
                at = offset + len;
            }
            Ok(Step::End) | Err(_) => {
                out.push(Part::Damaged {
                    at,
                    len: end - at,
                    bytes: slice(at, end),
                });
                at = end;
            }
        }
    }
    if want > span.len() as u64 {
        out.push(Part::Damaged {
            at: end,
            len: base + want - end,
            bytes: Bytes::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{StoredEvent, encode_chunk};

    fn entry(seq: u64, payload: &[u8]) -> Vec<u8> {
        let rec = encode_chunk(&[StoredEvent {
            seq,
            enqueued_at_ms: 1,
            payload,
        }]);
        let mut out = header(seq, rec.len() as u32, EntryKind::New, 0).to_vec();
        out.extend_from_slice(&rec);
        out
    }

    fn run(n: u64) -> (Vec<u8>, Vec<u64>) {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for s in 1..=n {
            offsets.push(bytes.len() as u64);
            bytes.extend_from_slice(&entry(s, format!("payload-{s}").as_bytes()));
        }
        (bytes, offsets)
    }

    fn seqs(parts: &[Part]) -> Vec<Option<u64>> {
        parts
            .iter()
            .map(|p| match p {
                Part::Entry { info, .. } => Some(info.seq),
                Part::Damaged { .. } => None,
            })
            .collect()
    }

    #[test]
    fn a_clean_run_parses_into_its_entries() {
        let (bytes, _) = run(5);
        let parts = parse_span(
            &Bytes::from(bytes.clone()),
            40,
            bytes.len() as u64,
            Layout::CHECKED,
        );
        assert_eq!(seqs(&parts), (1..=5).map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn a_flipped_byte_anywhere_in_an_entry_costs_that_entry_only() {
        let (clean, offsets) = run(5);
        let third = offsets[2] as usize..offsets[3] as usize;
        for at in third.clone() {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x40;
            let parts = parse_span(&Bytes::from(bytes), 0, clean.len() as u64, Layout::CHECKED);
            // The damaged entry is a damaged part, or (a flip inside its
            // record) an entry whose record fails its CRC.
            let intact: Vec<u64> = parts
                .iter()
                .filter_map(|p| match p {
                    Part::Entry { info, record } if record::frame_ok(record) => Some(info.seq),
                    _ => None,
                })
                .collect();
            assert_eq!(intact, vec![1, 2, 4, 5], "flip at {at}");
            let covered: u64 = parts
                .iter()
                .map(|p| match p {
                    Part::Entry { info, .. } => info.span,
                    Part::Damaged { len, .. } => *len,
                })
                .sum();
            assert_eq!(
                covered,
                clean.len() as u64,
                "every byte accounted, flip at {at}"
            );
        }
    }

    #[test]
    fn an_unchecked_file_resyncs_past_a_flipped_length_by_record_crcs() {
        let (mut bytes, offsets) = run(4);
        // Clear the checks: a format-3 file.
        for o in &offsets {
            let o = *o as usize;
            bytes[o + 13..o + 16].copy_from_slice(&[0, 0, 0]);
        }
        // The second entry's length grows by 3: it still fits.
        let o = offsets[1] as usize + 8;
        bytes[o] = bytes[o].wrapping_add(3);
        let parts = parse_span(
            &Bytes::from(bytes.clone()),
            0,
            bytes.len() as u64,
            Layout::UNCHECKED,
        );
        assert_eq!(seqs(&parts), vec![Some(1), None, Some(3), Some(4)]);
    }

    #[test]
    fn zeros_and_a_torn_tail_end_a_file_but_inside_a_span_are_damage() {
        let (mut bytes, _) = run(2);
        let clean = bytes.len() as u64;
        // A write torn inside its header, then the zeros written ahead.
        bytes.extend_from_slice(&entry(3, b"torn")[..10]);
        bytes.extend_from_slice(&[0u8; 4096]);
        let mut src = SliceSource {
            bytes: &bytes,
            base: 0,
        };
        let mut at = 0;
        let mut found = Vec::new();
        loop {
            match step(&mut src, Layout::CHECKED, at).unwrap() {
                Step::Entry(e) => {
                    found.push(e.seq);
                    at = e.end();
                }
                Step::Damaged { .. } => panic!("a tail is not damage (E2)"),
                Step::End => break,
            }
        }
        assert_eq!((found, at), (vec![1, 2], clean));
        let parts = parse_span(
            &Bytes::from(bytes.clone()),
            0,
            bytes.len() as u64,
            Layout::CHECKED,
        );
        assert!(matches!(parts.last(), Some(Part::Damaged { .. })));
        // Torn inside its record, the entry's header is valid: the reader
        // returns it, and the record's CRC tells (a tail, when nothing valid
        // follows: RB3 in `queue/open/rebuild.rs`).
        let mut torn = bytes[..clean as usize].to_vec();
        torn.extend_from_slice(&entry(3, b"torn")[..20]);
        torn.extend_from_slice(&[0u8; 4096]);
        let mut src = SliceSource {
            bytes: &torn,
            base: 0,
        };
        let Step::Entry(e) = step(&mut src, Layout::CHECKED, clean).unwrap() else {
            panic!("a valid header is an entry");
        };
        let rec = &torn[(e.offset + ENTRY_HEADER) as usize..e.end() as usize];
        assert!(!record::frame_ok(rec));
        assert_eq!(step(&mut src, Layout::CHECKED, e.end()).unwrap(), Step::End);
    }

    #[test]
    fn a_span_cut_short_by_the_file_ends_in_missing_damage() {
        let (bytes, offsets) = run(3);
        let cut = Bytes::from(bytes[..offsets[2] as usize].to_vec());
        let parts = parse_span(&cut, 0, bytes.len() as u64, Layout::CHECKED);
        assert_eq!(seqs(&parts), vec![Some(1), Some(2), None]);
        let Part::Damaged { len, bytes: b, .. } = &parts[2] else {
            unreachable!()
        };
        assert_eq!((*len, b.len()), (bytes.len() as u64 - offsets[2], 0));
    }

    #[test]
    fn an_unknown_kind_or_a_wrong_check_makes_a_header_invalid() {
        let mut h = header(7, 10, EntryKind::Requeued, 0);
        let mut body = h.to_vec();
        body.extend_from_slice(&[1u8; 10]);
        let mut src = SliceSource {
            bytes: &body,
            base: 0,
        };
        assert!(
            parse_header(&mut src, Layout::CHECKED, 0)
                .unwrap()
                .is_some()
        );
        h[12] = 9;
        let mut body2 = h.to_vec();
        body2.extend_from_slice(&[1u8; 10]);
        let mut src = SliceSource {
            bytes: &body2,
            base: 0,
        };
        assert!(
            parse_header(&mut src, Layout::UNCHECKED, 0)
                .unwrap()
                .is_none()
        );
        let mut h = header(7, 10, EntryKind::New, 0);
        h[0] ^= 1;
        let mut body3 = h.to_vec();
        body3.extend_from_slice(&[1u8; 10]);
        let mut src = SliceSource {
            bytes: &body3,
            base: 0,
        };
        assert!(
            parse_header(&mut src, Layout::CHECKED, 0)
                .unwrap()
                .is_none()
        );
    }
}
