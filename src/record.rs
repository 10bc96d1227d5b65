//! The record codec: how every value evspool stores is framed. Pure, no I/O.
//!
//! # Format
//!
//! ```text
//! record := [format: u8] [body: bincode 2.0.1, standard config] [crc32: u32 LE]
//! crc32  := CRC-32 (IEEE, crc32fast) over format byte + body
//! ```
//!
//! Bodies by kind (all integers bincode-varint, byte strings length-prefixed):
//!
//! ```text
//! Chunk      { events: [ { seq: u64, enqueued_at_ms: u64, payload: bytes } ] }
//! ChunkIndex { events: u32, bytes: u64, last_seq: u64, first_enqueued_ms: u64,
//!              body_gen: u32, body_offset: u64, body_len: u32 }
//!              (format 1 has none of the body_* fields: they are 0)
//! RetryState { attempts: u32, not_before_ms: u64, last_error: string }
//! DeadLetter { seq: u64, enqueued_at_ms: u64, dead_at_ms: u64, attempts: u32,
//!              reason: string, payload: bytes }
//! Trace      { gone: [ (u64, u64) ], dead: [ DeadLetter ], high_water: u64 }  (format 4)
//! ```
//!
//! Format history: 1 (0.1.0) stored every chunk body in its topic's tree; 2 adds
//! `ChunkIndex::body_gen`/`body_offset`/`body_len`, where in which body
//! generation file the chunk record is (offset and length of the record);
//! 3 keeps every body as it is but changes what a [`ChunkIndex`] of format 3
//! points at: `body_offset`/`body_len` are the byte span of one or more whole
//! segment entries, headers included (`queue/log/segment.rs`), so contiguous small
//! entries are indexed as one chunk. [`decode_index_with_format`] tells the two
//! apart; opening a format-1 or format-2 store rewrites its index records
//! (`migrations-notes/0003-one-index-tree.md`). This code reads records of every
//! format from [`OLDEST_FORMAT`] and writes format 5, whose records are laid out
//! as format 4's. Format 4 is laid out as format 3 and adds [`Trace`] (format
//! 4 changes the body files: checked entry headers and trace entries,
//! `migrations-notes/0004-traces.md`); format 5 adds sled's index journal
//! (`migrations-notes/0005-index-journal.md`) and changes no record.
//!
//! # Warning
//!
//! These layouts are persisted. Changing any of them, or the framing, bumps
//! [`FORMAT_VERSION`] and needs a `migrations-notes/` entry and a migration at open.
//!
//! # Invariants
//!
//! - R1: decoding never panics and never allocates more than [`MAX_RECORD_BYTES`]
//!   on any input (proptested with random and bit-flipped bytes).
//! - R2: a record whose CRC does not match is reported as [`RecordError::Checksum`]
//!   before its body is looked at.
//! - R3: a record of a newer format than [`FORMAT_VERSION`] (or of format 0) is
//!   reported as [`RecordError::UnknownFormat`], never misread.

mod chunk;

use bincode::{BorrowDecode, Decode, Encode};

/// The on-disk format this code writes and the newest it reads.
pub const FORMAT_VERSION: u8 = 5;

/// The oldest format this code still reads (see `migrations-notes/`).
pub const OLDEST_FORMAT: u8 = 1;

/// Upper bound on a decoded body; bincode refuses to allocate beyond it.
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

const CONFIG: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_RECORD_BYTES>,
> = bincode::config::standard().with_limit::<MAX_RECORD_BYTES>();

/// Why a stored record could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// Shorter than the 5 bytes of framing.
    #[error("record truncated: {len} bytes, need at least 5")]
    Truncated {
        /// The record's length.
        len: usize,
    },
    /// The CRC over format and body does not match: the bytes were damaged.
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The CRC found in the record.
        stored: u32,
        /// The CRC of the bytes as they are.
        computed: u32,
    },
    /// Written by a newer (or unknown) format version.
    #[error("record format {found} is not supported (this build reads format {FORMAT_VERSION})")]
    UnknownFormat {
        /// The format byte found.
        found: u8,
    },
    /// The CRC matched but the body is not a valid record of the expected kind.
    #[error("record body is malformed: {0}")]
    Body(String),
}

/// One event inside a chunk, borrowing its payload from the encoded record.
#[derive(Debug, Clone, PartialEq, Eq, Encode, BorrowDecode)]
pub struct StoredEvent<'a> {
    /// The event's sequence number.
    pub seq: u64,
    /// Milliseconds since the Unix epoch at enqueue.
    pub enqueued_at_ms: u64,
    /// The producer's bytes.
    pub payload: &'a [u8],
}

/// A chunk body as bincode sees it: what `record/chunk.rs` decodes by hand
/// (the tests decode with bincode too, as its oracle).
#[cfg(test)]
#[derive(Encode, BorrowDecode)]
struct ChunkBody<'a> {
    events: Vec<StoredEvent<'a>>,
}

/// The summary of a chunk kept beside it, so opening a store reads summaries only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct ChunkIndex {
    /// Events in the chunk.
    pub events: u32,
    /// Sum of payload bytes.
    pub bytes: u64,
    /// Sequence number of the chunk's last event.
    pub last_seq: u64,
    /// Enqueue time of the chunk's first (oldest) event.
    pub first_enqueued_ms: u64,
    /// The body generation holding the chunk record (0: the topic's own tree,
    /// where format-1 stores keep their chunks).
    pub body_gen: u32,
    /// Format 3: offset of the first entry's header in its generation file;
    /// format 2: offset of the chunk record (0 in generation 0).
    pub body_offset: u64,
    /// Format 3: length of the span of whole entries (headers included);
    /// format 2: length of the chunk record.
    pub body_len: u32,
}

impl ChunkIndex {
    /// The summary of a chunk holding `events` (in their order), not yet
    /// placed in a body file: the one way a summary is made from events.
    pub fn of(events: &[StoredEvent<'_>]) -> ChunkIndex {
        ChunkIndex {
            events: events.len() as u32,
            bytes: events.iter().map(|e| e.payload.len() as u64).sum(),
            last_seq: events.iter().map(|e| e.seq).max().unwrap_or(0),
            first_enqueued_ms: events.iter().map(|e| e.enqueued_at_ms).min().unwrap_or(0),
            body_gen: 0,
            body_offset: 0,
            body_len: 0,
        }
    }

    /// The same summary, placed at a span of a body file.
    pub fn placed(self, body_gen: u32, body_offset: u64, body_len: u32) -> ChunkIndex {
        ChunkIndex {
            body_gen,
            body_offset,
            body_len,
            ..self
        }
    }

    /// Adds `next`, the summary of the entries that follow this chunk's span
    /// in its body file, to this one (contiguous entries indexed as one chunk).
    pub fn extend(&mut self, next: &ChunkIndex) {
        self.events += next.events;
        self.bytes += next.bytes;
        self.last_seq = self.last_seq.max(next.last_seq);
        self.first_enqueued_ms = self.first_enqueued_ms.min(next.first_enqueued_ms);
        self.body_len += next.body_len;
    }
}

/// The format-1 layout of [`ChunkIndex`] (no `body_gen`).
#[derive(Decode)]
struct ChunkIndexV1 {
    events: u32,
    bytes: u64,
    last_seq: u64,
    first_enqueued_ms: u64,
}

/// What left a topic's queue other than by an ack, written to its body file
/// so that a rebuild without sled brings none of it back (format 4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub struct Trace {
    /// Inclusive seq ranges of events gone for good: purged, evicted by
    /// `drop_oldest`, expired past `max_age`, or dead letters purged.
    pub gone: Vec<(u64, u64)>,
    /// Events that became dead letters, with their letters.
    pub dead: Vec<DeadLetter>,
    /// Every seq below this was handed out (0: none said). Written when a
    /// body file is deleted, so the seqs it held are never handed out again
    /// even if sled is lost later.
    pub high_water: u64,
}

/// Delivery state of a chunk that has failed at least once.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct RetryState {
    /// Failed delivery attempts so far.
    pub attempts: u32,
    /// Not leased again before this time (ms since the Unix epoch).
    pub not_before_ms: u64,
    /// The last failure's reason.
    pub last_error: String,
}

/// An event the collector permanently refused, with its reason.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct DeadLetter {
    /// The event's sequence number (its id is stable through replay).
    pub seq: u64,
    /// Milliseconds since the Unix epoch at enqueue.
    pub enqueued_at_ms: u64,
    /// Milliseconds since the Unix epoch when it was dead-lettered.
    pub dead_at_ms: u64,
    /// Delivery attempts it saw.
    pub attempts: u32,
    /// Why it was refused (the collector's message, or `too_large`, ...).
    pub reason: String,
    /// The producer's bytes.
    pub payload: Vec<u8>,
}

fn frame(body: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Whether `record` is framed, of a known format, and its CRC matches (its
/// body is not looked at).
pub fn frame_ok(record: &[u8]) -> bool {
    unframe_versioned(record).is_ok()
}

/// The first seq of a chunk record, read from its first bytes without
/// checking its CRC (readers resyncing past damage test a candidate cheaply
/// before they check its CRC); `None` if the bytes cannot start a chunk
/// record of a known format.
pub fn chunk_first_seq(prefix: &[u8]) -> Option<u64> {
    let (&format, rest) = prefix.split_first()?;
    if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&format) {
        return None;
    }
    let (count, rest) = varint(rest)?;
    if count == 0 {
        return None;
    }
    varint(rest).map(|(seq, _)| seq)
}

/// A bincode varint (standard config) and what follows it.
fn varint(b: &[u8]) -> Option<(u64, &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let take = |n: usize| -> Option<(u64, &[u8])> {
        let bytes = rest.get(..n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(bytes);
        Some((u64::from_le_bytes(v), &rest[n..]))
    };
    match tag {
        0..=250 => Some((tag as u64, rest)),
        251 => take(2),
        252 => take(4),
        253 => take(8),
        _ => None,
    }
}

/// Checks framing and CRC and returns the body.
fn unframe(record: &[u8]) -> Result<&[u8], RecordError> {
    unframe_versioned(record).map(|(_, body)| body)
}

/// Checks framing and CRC and returns the format byte and the body.
fn unframe_versioned(record: &[u8]) -> Result<(u8, &[u8]), RecordError> {
    if record.len() < 5 {
        return Err(RecordError::Truncated { len: record.len() });
    }
    let (data, crc) = record.split_at(record.len() - 4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32fast::hash(data);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    if !(OLDEST_FORMAT..=FORMAT_VERSION).contains(&data[0]) {
        return Err(RecordError::UnknownFormat { found: data[0] });
    }
    Ok((data[0], &data[1..]))
}

fn encode<T: Encode>(value: &T) -> Vec<u8> {
    // Encoding into a Vec cannot fail for these plain types below the size limit,
    // which enqueue enforces (max_event_bytes, chunk_max_bytes).
    frame(bincode::encode_to_vec(value, CONFIG).unwrap_or_default())
}

fn decode<T: Decode<()>>(record: &[u8]) -> Result<T, RecordError> {
    decode_body(unframe(record)?)
}

fn decode_body<T: Decode<()>>(body: &[u8]) -> Result<T, RecordError> {
    let (value, used) =
        bincode::decode_from_slice(body, CONFIG).map_err(|e| RecordError::Body(e.to_string()))?;
    if used != body.len() {
        return Err(RecordError::Body(format!(
            "{} trailing bytes",
            body.len() - used
        )));
    }
    Ok(value)
}

/// Encodes a chunk of events.
pub fn encode_chunk(events: &[StoredEvent<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_chunk_into(&mut out, events);
    out
}

/// Appends the encoded chunk of `events` to `out` (no intermediate copies:
/// the append path encodes straight into its write buffer).
pub fn encode_chunk_into(out: &mut Vec<u8>, events: &[StoredEvent<'_>]) {
    let start = out.len();
    out.push(FORMAT_VERSION);
    // A chunk body is a bincode sequence: its length, then each event.
    let mut w = VecWriter(out);
    let written = bincode::encode_into_writer(events.len() as u64, &mut w, CONFIG).and_then(|()| {
        events
            .iter()
            .try_for_each(|e| bincode::encode_into_writer(e, &mut w, CONFIG))
    });
    // Writing into a Vec cannot fail below the size limit, which enqueue
    // enforces (max_event_bytes, chunk_max_bytes).
    debug_assert!(written.is_ok());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// A bincode writer appending to a `Vec` in place.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes a chunk, borrowing payloads from `record`.
///
/// # Errors
///
/// Any [`RecordError`]; never panics (R1).
pub fn decode_chunk(record: &[u8]) -> Result<Vec<StoredEvent<'_>>, RecordError> {
    decode_chunk_with(record, |e| e)
}

/// Decodes a chunk, handing each event to `f` in order and collecting what
/// it returns (one pass, no vector of [`StoredEvent`]s in between;
/// `record/chunk.rs`).
///
/// # Errors
///
/// Any [`RecordError`], as [`decode_chunk`].
pub(crate) fn decode_chunk_with<'a, T>(
    record: &'a [u8],
    f: impl FnMut(StoredEvent<'a>) -> T,
) -> Result<Vec<T>, RecordError> {
    chunk::decode_body(unframe(record)?, f)
}

/// Encodes a chunk summary.
pub fn encode_index(index: &ChunkIndex) -> Vec<u8> {
    encode(index)
}

/// Decodes a chunk summary.
///
/// # Errors
///
/// Any [`RecordError`].
pub fn decode_index(record: &[u8]) -> Result<ChunkIndex, RecordError> {
    decode_index_with_format(record).map(|(_, index)| index)
}

/// Decodes a chunk summary and the format it was written in: a format-2
/// summary points at one chunk record, a format-3 one at a span of whole
/// segment entries (see the module docs).
///
/// # Errors
///
/// Any [`RecordError`].
pub fn decode_index_with_format(record: &[u8]) -> Result<(u8, ChunkIndex), RecordError> {
    match unframe_versioned(record)? {
        (1, body) => {
            let v1: ChunkIndexV1 = decode_body(body)?;
            Ok((
                1,
                ChunkIndex {
                    events: v1.events,
                    bytes: v1.bytes,
                    last_seq: v1.last_seq,
                    first_enqueued_ms: v1.first_enqueued_ms,
                    body_gen: 0,
                    body_offset: 0,
                    body_len: 0,
                },
            ))
        }
        (format, body) => decode_body(body).map(|index| (format, index)),
    }
}

/// Encodes retry state.
pub fn encode_retry(state: &RetryState) -> Vec<u8> {
    encode(state)
}

/// Decodes retry state.
///
/// # Errors
///
/// Any [`RecordError`].
pub fn decode_retry(record: &[u8]) -> Result<RetryState, RecordError> {
    decode(record)
}

/// Encodes a dead letter.
pub fn encode_dead(dead: &DeadLetter) -> Vec<u8> {
    encode(dead)
}

/// Decodes a dead letter.
///
/// # Errors
///
/// Any [`RecordError`].
pub fn decode_dead(record: &[u8]) -> Result<DeadLetter, RecordError> {
    decode(record)
}

/// Encodes a trace.
pub fn encode_trace(trace: &Trace) -> Vec<u8> {
    encode(trace)
}

/// Decodes a trace.
///
/// # Errors
///
/// Any [`RecordError`].
pub fn decode_trace(record: &[u8]) -> Result<Trace, RecordError> {
    decode(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        encode_chunk(&[
            StoredEvent {
                seq: 7,
                enqueued_at_ms: 1_700_000_000_000,
                payload: br#"{"event":"a"}"#,
            },
            StoredEvent {
                seq: 8,
                enqueued_at_ms: 1_700_000_000_001,
                payload: b"",
            },
        ])
    }

    #[test]
    fn a_chunk_round_trips_with_payloads_untouched() {
        let rec = sample();
        assert_eq!(rec[0], FORMAT_VERSION);
        let events = decode_chunk(&rec).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].seq, 7);
        assert_eq!(events[0].payload, br#"{"event":"a"}"#);
        assert_eq!(events[1].payload, b"");
    }

    #[test]
    fn encoding_in_place_matches_the_chunk_body_layout() {
        let events = [
            StoredEvent {
                seq: 3,
                enqueued_at_ms: 9,
                payload: b"x",
            },
            StoredEvent {
                seq: 300,
                enqueued_at_ms: 1_700_000_000_000,
                payload: &[7u8; 200],
            },
        ];
        let body = ChunkBody {
            events: events.to_vec(),
        };
        assert_eq!(encode_chunk(&events), encode(&body));
        let mut buf = b"prefix".to_vec();
        encode_chunk_into(&mut buf, &events);
        assert_eq!(&buf[6..], encode(&body).as_slice());
    }

    #[test]
    fn the_first_seq_is_read_from_a_records_first_bytes() {
        for seq in [0u64, 7, 250, 251, 70_000, 5_000_000_000] {
            let rec = encode_chunk(&[StoredEvent {
                seq,
                enqueued_at_ms: 1,
                payload: b"x",
            }]);
            assert_eq!(chunk_first_seq(&rec[..rec.len().min(24)]), Some(seq));
        }
        assert_eq!(chunk_first_seq(&[9, 1, 1]), None, "unknown format");
        assert_eq!(chunk_first_seq(&[FORMAT_VERSION, 0, 1]), None, "no events");
    }

    #[test]
    fn a_flipped_bit_is_a_checksum_error() {
        let mut rec = sample();
        rec[3] ^= 0x10;
        assert!(matches!(
            decode_chunk(&rec),
            Err(RecordError::Checksum { .. })
        ));
    }

    #[test]
    fn a_newer_format_is_refused_by_name() {
        let mut rec = sample();
        let n = rec.len();
        rec[0] = 9;
        let crc = crc32fast::hash(&rec[..n - 4]);
        rec[n - 4..].copy_from_slice(&crc.to_le_bytes());
        let err = decode_chunk(&rec).unwrap_err();
        assert_eq!(err, RecordError::UnknownFormat { found: 9 });
        assert!(err.to_string().contains("format 9"));
    }

    #[test]
    fn short_records_are_truncated_errors() {
        for len in 0..5 {
            assert_eq!(
                decode_chunk(&sample()[..len]).unwrap_err(),
                RecordError::Truncated { len }
            );
        }
    }

    #[test]
    fn small_records_round_trip() {
        let idx = ChunkIndex {
            events: 3,
            bytes: 900,
            last_seq: 42,
            first_enqueued_ms: 5,
            body_gen: 7,
            body_offset: 1 << 33,
            body_len: 16_000,
        };
        assert_eq!(decode_index(&encode_index(&idx)).unwrap(), idx);
        let retry = RetryState {
            attempts: 2,
            not_before_ms: 9,
            last_error: "http 503".into(),
        };
        assert_eq!(decode_retry(&encode_retry(&retry)).unwrap(), retry);
        let dead = DeadLetter {
            seq: 1,
            enqueued_at_ms: 2,
            dead_at_ms: 3,
            attempts: 4,
            reason: "too_large".into(),
            payload: b"{}".to_vec(),
        };
        assert_eq!(decode_dead(&encode_dead(&dead)).unwrap(), dead);
    }

    /// Frames `body` as a record of format `version`.
    fn frame_as(version: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![version];
        v.extend_from_slice(body);
        let crc = crc32fast::hash(&v);
        v.extend_from_slice(&crc.to_le_bytes());
        v
    }

    #[test]
    fn a_format_1_index_record_reads_as_body_generation_0() {
        #[derive(Encode)]
        struct V1 {
            events: u32,
            bytes: u64,
            last_seq: u64,
            first_enqueued_ms: u64,
        }
        let body = bincode::encode_to_vec(
            V1 {
                events: 50,
                bytes: 15_000,
                last_seq: 99,
                first_enqueued_ms: 1_700_000_000_000,
            },
            CONFIG,
        )
        .unwrap();
        let idx = decode_index(&frame_as(1, &body)).unwrap();
        assert_eq!(
            idx,
            ChunkIndex {
                events: 50,
                bytes: 15_000,
                last_seq: 99,
                first_enqueued_ms: 1_700_000_000_000,
                body_gen: 0,
                body_offset: 0,
                body_len: 0,
            }
        );
        // A format-1 chunk record (same body layout) still decodes.
        let chunk = sample();
        let v1_chunk = frame_as(1, &chunk[1..chunk.len() - 4]);
        assert_eq!(decode_chunk(&v1_chunk).unwrap().len(), 2);
        // Format 0 was never written: refused, like a newer one.
        assert_eq!(
            decode_chunk(&frame_as(0, &chunk[1..chunk.len() - 4])).unwrap_err(),
            RecordError::UnknownFormat { found: 0 }
        );
    }

    /// Re-frames arbitrary bytes with a valid CRC so the body decoder sees them.
    fn reframe(body: &[u8]) -> Vec<u8> {
        frame_as(FORMAT_VERSION, body)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_chunk(&bytes);
            let _ = decode_dead(&bytes);
            let _ = decode_index(&bytes);
            let _ = decode_chunk(&reframe(&bytes));
            let _ = decode_dead(&reframe(&bytes));
            let _ = decode_retry(&reframe(&bytes));
        }

        #[test]
        fn any_single_bit_flip_is_detected(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            flip in any::<proptest::sample::Index>(),
            bit in 0u8..8,
        ) {
            let events: Vec<StoredEvent<'_>> = payloads.iter().enumerate()
                .map(|(i, p)| StoredEvent { seq: i as u64 + 1, enqueued_at_ms: 1, payload: p })
                .collect();
            let mut rec = encode_chunk(&events);
            let decoded = decode_chunk(&rec).unwrap();
            prop_assert_eq!(decoded, events);
            let i = flip.index(rec.len());
            rec[i] ^= 1 << bit;
            prop_assert!(decode_chunk(&rec).is_err());
        }
    }
}
