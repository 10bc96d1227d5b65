//! What loading sled's index finds: per topic, its records decoded (or why
//! not), and the raw trees of a format-1 or format-2 store.

use super::batch::{K_CHECKPOINT, K_DEAD, K_DROPS, K_HIGH_WATER, K_INDEX, K_RETRY};
use crate::record::{self, ChunkIndex, RecordError, RetryState};

/// One chunk's index record as loaded: its format and decoded index, or why it
/// could not be decoded.
pub(crate) type LoadedIndex = Result<(u8, ChunkIndex), RecordError>;

/// What loading the index found for one topic.
#[derive(Default)]
pub(crate) struct LoadedTopic {
    /// Chunk keys with their decoded (or failed) index records and formats.
    pub(crate) index: Vec<(u64, LoadedIndex)>,
    /// Retry records by chunk key.
    pub(crate) retry: Vec<(u64, Result<RetryState, RecordError>)>,
    /// Dead letters: (seq, payload bytes, or the record's length if damaged).
    pub(crate) dead: Vec<(u64, u64)>,
    /// The persisted seq high-water.
    pub(crate) high_water: u64,
    /// The persisted checkpoint (generation, offset), if any.
    pub(crate) checkpoint: Option<(u32, u64)>,
    /// Events dropped, by drop reason code (`DropReason::code`).
    pub(crate) drops: Vec<(u64, u64)>,
}

impl LoadedTopic {
    /// Takes one index-tree record of this topic (`kind`, `seq` from its key).
    pub(super) fn take(&mut self, kind: u8, seq: Option<u64>, v: &[u8]) {
        match (kind, seq) {
            (K_INDEX, Some(seq)) => self.index.push((seq, record::decode_index_with_format(v))),
            (K_RETRY, Some(seq)) => self.retry.push((seq, record::decode_retry(v))),
            (K_DEAD, Some(seq)) => {
                let bytes = record::decode_dead(v)
                    .map(|d| d.payload.len() as u64)
                    .unwrap_or(v.len() as u64);
                self.dead.push((seq, bytes));
            }
            (K_HIGH_WATER, None) if v.len() == 8 => {
                self.high_water = u64::from_be_bytes(v.try_into().unwrap_or([0; 8]));
            }
            (K_DROPS, Some(code)) if v.len() == 8 => {
                self.drops
                    .push((code, u64::from_be_bytes(v.try_into().unwrap_or([0; 8]))));
            }
            (K_CHECKPOINT, None) if v.len() == 12 => {
                let g = u32::from_be_bytes(v[..4].try_into().unwrap_or([0; 4]));
                let o = u64::from_be_bytes(v[4..].try_into().unwrap_or([0; 8]));
                self.checkpoint = Some((g, o));
            }
            _ => {}
        }
    }
}

/// A format-1 or format-2 topic tree, raw, for the migration.
#[derive(Default)]
pub(crate) struct LegacyTopic {
    /// `'C'` chunk records (format 1: the chunk bodies themselves).
    pub(crate) chunks: Vec<(u64, Vec<u8>)>,
    /// `'I'` index records.
    pub(crate) index: Vec<(u64, Vec<u8>)>,
    /// `'R'` retry records.
    pub(crate) retry: Vec<(u64, Vec<u8>)>,
    /// `'D'` dead letters.
    pub(crate) dead: Vec<(u64, Vec<u8>)>,
    pub(crate) high_water: u64,
}

/// A damaged part to keep in quarantine: where its bytes were (generation,
/// file offset) and the bytes.
pub(crate) struct QuarantinePart<'a> {
    pub(crate) place: (u32, u64),
    pub(crate) bytes: &'a [u8],
}

/// A quarantine record's key is `<ns u64 BE>` followed by this: `<topic>
/// 0x00 <seq u64 BE> <generation u32 BE> <offset u64 BE>`. The oldest sort
/// (and are pruned) first; `ns` is the time of the record (plus its place
/// among the records written at once), generation and offset where the
/// damaged bytes were. Records written before 2026-12-07 end at the seq.
/// Nothing parses the key: it is unique, ordered, and names the damage for
/// `Store::quarantine`'s check that a part is kept already.
fn quarantine_suffix(topic: &str, seq: u64, (generation, offset): (u32, u64)) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 21);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// A quarantine record to write: its key and bytes.
pub(super) type Record<'a> = (Vec<u8>, &'a [u8]);

/// The keys and bytes of the `parts` found under `topic`/`seq` that
/// `records` (quarantine's) keep none of, and the bytes quarantine holds
/// with them. A part is kept already if a record has its topic, seq and
/// place (generation, offset) and its bytes: damage found again after a
/// containment that failed or was killed (the record written, the chunk
/// still in the index) is recorded and counted once, while other damage
/// (elsewhere, or other bytes) always gets its own record.
pub(super) fn unkept<'a, K, V, E>(
    records: impl Iterator<Item = Result<(K, V), E>>,
    topic: &str,
    seq: u64,
    parts: &[QuarantinePart<'a>],
) -> Result<(u64, Vec<Record<'a>>), E>
where
    K: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut new: Vec<Record<'a>> = parts
        .iter()
        .map(|p| (quarantine_suffix(topic, seq, p.place), p.bytes))
        .collect();
    let mut held = 0u64;
    for record in records {
        let (k, v) = record?;
        let (k, v) = (k.as_ref(), v.as_ref());
        held += v.len() as u64;
        if let Some(i) = new
            .iter()
            .position(|(suffix, bytes)| k.get(8..) == Some(&suffix[..]) && *bytes == v)
        {
            new.swap_remove(i);
        }
    }
    let ns = now_ns();
    for (i, (key, bytes)) in (0u64..).zip(new.iter_mut()) {
        let mut k = (ns + i).to_be_bytes().to_vec();
        k.append(key);
        *key = k;
        held += bytes.len() as u64;
    }
    Ok((held, new))
}

/// Nanoseconds since the Unix epoch (0 for a clock before it).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A format-1/2 quarantine key (`<topic> 0 <seq> <ns>`) re-keyed as
/// format 3's (`<ns> <topic> 0 <seq>`); `None` for a key of another shape.
pub(super) fn rekeyed_quarantine(k: &[u8]) -> Option<Vec<u8>> {
    let nul = k.iter().position(|b| *b == 0)?;
    if k.len() != nul + 17 || nul == 0 || !k[..nul].iter().all(u8::is_ascii_graphic) {
        return None;
    }
    let mut new = k[nul + 9..].to_vec();
    new.extend_from_slice(&k[..nul + 9]);
    Some(new)
}
