//! What an append takes (a [`Record`]) and gives (where it [`Placed`] the
//! entry; for the committer, the [`Appended`] entries waiting to be
//! indexed; for a durable producer, its [`DurableAppend`]), and how waiting
//! entries become chunks ([`coalesce`]).

use crate::record::{ChunkIndex, StoredEvent};
use std::cell::RefCell;

/// A new entry appended to a body file and not yet in the index (G3).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Appended {
    pub(crate) first_seq: u64,
    /// Its summary, placed at its span (header included).
    pub(crate) index: ChunkIndex,
}

impl Appended {
    /// Where its span ends, as (generation, offset).
    pub(crate) fn end(&self) -> (u32, u64) {
        (
            self.index.body_gen,
            self.index.body_offset + self.index.body_len as u64,
        )
    }
}

/// Where an appended entry landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) generation: u32,
    pub(crate) offset: u64,
    pub(crate) span: u64,
}

/// A record to append, with what the index needs to know of it.
pub(crate) struct Record<'a> {
    pub(crate) first_seq: u64,
    /// Its summary (`ChunkIndex::of` its events), placed by the append.
    pub(crate) summary: ChunkIndex,
    pub(crate) raw: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record `raw` holding `events`.
    pub(crate) fn new(events: &[StoredEvent<'_>], raw: &'a [u8]) -> Record<'a> {
        Record {
            first_seq: events.first().map_or(0, |e| e.seq),
            summary: ChunkIndex::of(events),
            raw,
        }
    }
}

/// What a durable producer's append did.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DurableAppend {
    /// The first seq taken (the others follow it).
    pub(crate) first: u64,
    /// The position to sync to.
    pub(crate) end: (u32, u64),
    /// No entry was waiting for the committer before this one: the caller
    /// marks the log dirty.
    pub(crate) first_waiting: bool,
    /// Events waiting for the committer now.
    pub(crate) waiting: u64,
}

/// Groups entries into chunks: consecutive entries of one generation that
/// touch, with rising seqs, up to `max_events` events and `max_bytes` bytes.
///
/// `floor` is one past the highest seq of the topic logged before
/// `entries[0]` (its index's high-water). A chunk is keyed by its first
/// seq and leased in key order, so a chunk whose first seq lies below a seq
/// logged before it (a buffered chunk written after a durable append that
/// overtook it, a rewritten rest) takes no followers: a durable entry
/// joining it would be leased ahead of durable events logged before it
/// (each kind's first deliveries are in seq order, DESIGN.md).
pub(crate) fn coalesce(
    entries: &[Appended],
    floor: u64,
    max_events: u64,
    max_bytes: u64,
) -> Vec<(u64, ChunkIndex)> {
    let mut out: Vec<(u64, ChunkIndex)> = Vec::new();
    let mut prev: Option<&Appended> = None;
    let mut high = floor;
    // Whether the last chunk started below `high`.
    let mut late = false;
    for a in entries {
        let joins = match (prev, out.last()) {
            (Some(p), Some((_, c))) => {
                !late
                    && p.end() == (a.index.body_gen, a.index.body_offset)
                    && a.first_seq > p.index.last_seq
                    && c.events as u64 + a.index.events as u64 <= max_events
                    && c.bytes + a.index.bytes <= max_bytes
                    && c.body_len as u64 + a.index.body_len as u64 <= u32::MAX as u64
            }
            _ => false,
        };
        match out.last_mut() {
            Some((_, c)) if joins => c.extend(&a.index),
            _ => {
                late = a.first_seq < high;
                out.push((a.first_seq, a.index));
            }
        }
        high = high.max(a.index.last_seq.saturating_add(1));
        prev = Some(a);
    }
    out
}

thread_local! {
    /// The encoding buffer of durable appends: one per thread, not per topic,
    /// so an idle topic holds none (a store may have thousands of topics).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Largest encoding buffer a thread keeps between appends.
const SCRATCH_KEEP: usize = 64 * 1024;

/// Takes this thread's encoding buffer.
pub(super) fn take_scratch() -> Vec<u8> {
    SCRATCH.with_borrow_mut(std::mem::take)
}

/// Returns `buf` to this thread's [`SCRATCH`] unless it grew too large to keep.
pub(super) fn keep_scratch(buf: Vec<u8>) {
    if buf.capacity() <= SCRATCH_KEEP {
        SCRATCH.with_borrow_mut(|s| *s = buf);
    }
}
