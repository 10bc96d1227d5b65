//! The index tree's keys (`<topic> 0x00 <kind> [<seq>]`) and
//! [`WriteBatch`], an atomic group of writes to it.

use crate::record::{self, ChunkIndex, DeadLetter, RetryState};

pub(super) const META_FORMAT: &[u8] = b"format";
pub(super) const META_INSTANCE: &[u8] = b"instance";
pub(super) const INDEX_TREE: &str = "index";
pub(super) const LEGACY_PREFIX: &str = "topic/";
pub(super) const K_CHUNK: u8 = b'C';
pub(super) const K_INDEX: u8 = b'I';
pub(super) const K_RETRY: u8 = b'R';
pub(super) const K_DEAD: u8 = b'D';
pub(super) const K_HIGH_WATER: u8 = b'H';
pub(super) const K_CHECKPOINT: u8 = b'G';
pub(super) const K_DROPS: u8 = b'K';

/// An atomic group of writes to the index tree: (key, value to insert, or
/// `None` to remove), applied in order by `Store::apply`.
#[derive(Default)]
pub(crate) struct WriteBatch {
    pub(super) writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

pub(super) fn key(topic: &str, kind: u8, seq: Option<u64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 10);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.push(kind);
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

/// (topic, kind, seq) of an index tree key.
pub(super) fn parse_key(k: &[u8]) -> Option<(&str, u8, Option<u64>)> {
    let nul = k.iter().position(|b| *b == 0)?;
    let topic = std::str::from_utf8(&k[..nul]).ok()?;
    let kind = *k.get(nul + 1)?;
    let rest = &k[nul + 2..];
    let seq = match rest.len() {
        0 => None,
        8 => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => return None,
    };
    Some((topic, kind, seq))
}

impl WriteBatch {
    /// Writes in the batch.
    pub(crate) fn len(&self) -> usize {
        self.writes.len()
    }

    fn insert(&mut self, key: Vec<u8>, value: impl Into<Vec<u8>>) {
        self.writes.push((key, Some(value.into())));
    }

    fn remove(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }

    /// Writes a chunk's index record under its first seq.
    pub(crate) fn put_index(&mut self, topic: &str, seq: u64, index: &ChunkIndex) {
        self.insert(key(topic, K_INDEX, Some(seq)), record::encode_index(index));
    }

    /// Removes a chunk's index record and retry state.
    pub(crate) fn remove_chunk(&mut self, topic: &str, seq: u64) {
        self.remove(key(topic, K_INDEX, Some(seq)));
        self.remove(key(topic, K_RETRY, Some(seq)));
    }

    /// Removes the index record of a chunk that has no retry record.
    pub(crate) fn remove_index(&mut self, topic: &str, seq: u64) {
        self.remove(key(topic, K_INDEX, Some(seq)));
    }

    /// Writes a chunk's retry state.
    pub(crate) fn put_retry(&mut self, topic: &str, seq: u64, state: &RetryState) {
        self.insert(key(topic, K_RETRY, Some(seq)), record::encode_retry(state));
    }

    /// Removes a chunk's retry state.
    pub(crate) fn remove_retry(&mut self, topic: &str, seq: u64) {
        self.remove(key(topic, K_RETRY, Some(seq)));
    }

    /// Writes a dead letter.
    pub(crate) fn put_dead(&mut self, topic: &str, dead: &DeadLetter) {
        self.insert(
            key(topic, K_DEAD, Some(dead.seq)),
            record::encode_dead(dead),
        );
    }

    /// Writes a dead letter record as it is (migration).
    pub(crate) fn put_dead_raw(&mut self, topic: &str, seq: u64, raw: &[u8]) {
        self.insert(key(topic, K_DEAD, Some(seq)), raw);
    }

    /// Writes a retry record as it is (migration).
    pub(crate) fn put_retry_raw(&mut self, topic: &str, seq: u64, raw: &[u8]) {
        self.insert(key(topic, K_RETRY, Some(seq)), raw);
    }

    /// Removes a dead letter.
    pub(crate) fn remove_dead(&mut self, topic: &str, seq: u64) {
        self.remove(key(topic, K_DEAD, Some(seq)));
    }

    /// Sets the topic's persisted seq high-water.
    pub(crate) fn set_high_water(&mut self, topic: &str, next_seq: u64) {
        self.insert(key(topic, K_HIGH_WATER, None), next_seq.to_be_bytes());
    }

    /// Sets how many events of `topic` were dropped for the reason `code`.
    pub(crate) fn set_drops(&mut self, topic: &str, code: u64, count: u64) {
        self.insert(key(topic, K_DROPS, Some(code)), count.to_be_bytes());
    }

    /// Sets the topic's checkpoint (generation, offset).
    pub(crate) fn set_checkpoint(&mut self, topic: &str, (generation, offset): (u32, u64)) {
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&generation.to_be_bytes());
        v[4..].copy_from_slice(&offset.to_be_bytes());
        self.insert(key(topic, K_CHECKPOINT, None), v);
    }
}

/// Writes after which a take's batch is cut at the next topic boundary
/// (`queue/ops.rs`), and most writes the journal's pending batches are
/// merged into (`storage.rs`).
pub(crate) const OPS_PER_BATCH: usize = 1024;

/// [`OPS_PER_BATCH`]; with the test-only `failpoints` feature,
/// `EVSPOOL_TEST_OPS_PER_BATCH` when set, so the fault simulation, whose
/// stores hold a few topics, cuts batches too (applies and the repairs of an
/// open), and its oracle checks every cut.
pub(crate) fn ops_per_batch() -> usize {
    #[cfg(feature = "failpoints")]
    {
        static TEST: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
        if let Some(n) = *TEST.get_or_init(|| {
            std::env::var("EVSPOOL_TEST_OPS_PER_BATCH")
                .ok()
                .and_then(|v| v.parse().ok())
        }) {
            return n;
        }
    }
    OPS_PER_BATCH
}
