//! A format-3 store, written byte by byte as a format-3 build left it
//! (`migrations-notes/0003-one-index-tree.md`), opened by this build: it
//! becomes format 5 (`migrations-notes/0004-traces.md`, `0005-index-journal.md`) keeping every event,
//! id, retry schedule and dead letter; its dead letters are traced in the body
//! files, so even a lost sled file no longer costs them; and its unchecked
//! entry headers are still read past damage by their records' CRCs.

use super::queue_corruption::sled_open;
use evspool::record::{self, ChunkIndex, DeadLetter, RetryState, StoredEvent};
use evspool::{Queue, QueueConfig};
use std::path::Path;

const TOPIC: &str = "t";
const INSTANCE: &str = "0123456789ab";
/// 2100-01-01: chunk 4's backoff does not run out during the test.
const FAR_FUTURE_MS: u64 = 4_102_444_800_000;

/// Re-frames a record of this build as format 3 (same body, recomputed CRC).
fn as_format_3(rec: &[u8]) -> Vec<u8> {
    let mut out = vec![3u8];
    out.extend_from_slice(&rec[1..rec.len() - 4]);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A key of the `index` tree (`src/queue/storage.rs`).
fn key(kind: u8, seq: Option<u64>) -> Vec<u8> {
    let mut k = TOPIC.as_bytes().to_vec();
    k.push(0);
    k.push(kind);
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

fn payload(seq: u64) -> Vec<u8> {
    format!("{{\"v3\":{seq}}}").into_bytes()
}

/// The header of a format-3 body file: magic, instance, next seq, a zero
/// reserved word (no `checked` flag), CRC.
fn file_header(next_seq: u64) -> Vec<u8> {
    let mut h = b"EVSPSEG3".to_vec();
    let mut id = [0u8; 16];
    id[..INSTANCE.len()].copy_from_slice(INSTANCE.as_bytes());
    h.extend_from_slice(&id);
    h.extend_from_slice(&next_seq.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// Writes the store: seqs 1-3, 4-6 (failed twice, waiting out a backoff),
/// 7 (dead-lettered: its entry stays in the file), 8-10, each an entry with a
/// format-3 header (16 bytes, no check), indexed; the checkpoint after them.
fn write_format_3_store(dir: &Path) -> Vec<(u64, u64)> {
    let mut seg = file_header(1);
    let mut entries = Vec::new();
    let mut indexes = Vec::new();
    for (first, last) in [(1u64, 3u64), (4, 6), (7, 7), (8, 10)] {
        let payloads: Vec<Vec<u8>> = (first..=last).map(payload).collect();
        let events: Vec<StoredEvent<'_>> = (first..=last)
            .zip(&payloads)
            .map(|(seq, p)| StoredEvent {
                seq,
                enqueued_at_ms: 1_700_000_000_000 + seq,
                payload: p,
            })
            .collect();
        let rec = as_format_3(&record::encode_chunk(&events));
        let at = seg.len() as u64;
        seg.extend_from_slice(&first.to_le_bytes());
        seg.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        seg.extend_from_slice(&[0u8; 4]);
        seg.extend_from_slice(&rec);
        let span = 16 + rec.len() as u64;
        entries.push((at, span));
        indexes.push((first, ChunkIndex::of(&events).placed(1, at, span as u32)));
    }
    let path = dir.join("bodies").join(TOPIC).join("1.seg");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &seg).unwrap();
    std::fs::write(
        dir.join("evspool.id"),
        format!("evspool store\ninstance {INSTANCE}\n"),
    )
    .unwrap();
    let db = sled_open(dir);
    let meta = db.open_tree("meta").unwrap();
    meta.insert("format", &[3u8]).unwrap();
    meta.insert("instance", INSTANCE.as_bytes()).unwrap();
    let index = db.open_tree("index").unwrap();
    for (first, idx) in &indexes {
        if *first != 7 {
            index
                .insert(
                    key(b'I', Some(*first)),
                    as_format_3(&record::encode_index(idx)),
                )
                .unwrap();
        }
    }
    let retry = RetryState {
        attempts: 2,
        not_before_ms: FAR_FUTURE_MS,
        last_error: "http 503".into(),
    };
    index
        .insert(
            key(b'R', Some(4)),
            as_format_3(&record::encode_retry(&retry)),
        )
        .unwrap();
    let dead = DeadLetter {
        seq: 7,
        enqueued_at_ms: 1_700_000_000_007,
        dead_at_ms: 1_700_000_005_007,
        attempts: 3,
        reason: "http 400: invalid event".into(),
        payload: payload(7),
    };
    index
        .insert(key(b'D', Some(7)), as_format_3(&record::encode_dead(&dead)))
        .unwrap();
    index.insert(key(b'H', None), &11u64.to_be_bytes()).unwrap();
    let mut checkpoint = 1u32.to_be_bytes().to_vec();
    checkpoint.extend_from_slice(&(seg.len() as u64).to_be_bytes());
    index.insert(key(b'G', None), checkpoint).unwrap();
    db.flush().unwrap();
    entries
}

fn config() -> QueueConfig {
    QueueConfig::default()
}

/// Every queued event: (seq, attempts), with retries made due first.
fn queued(q: &Queue) -> Vec<(u64, u32)> {
    q.retry_now(TOPIC);
    let mut out = Vec::new();
    let mut leases = Vec::new();
    while let Some(l) = q.lease(TOPIC, 100).unwrap() {
        out.extend(l.events().iter().map(|e| (e.seq(), e.attempts)));
        leases.push(l);
    }
    for l in leases {
        q.release(l);
    }
    out.sort_unstable();
    out
}

#[tokio::test]
async fn a_format_3_store_opens_in_the_current_format_keeping_every_event_retry_and_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    write_format_3_store(dir.path());
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        let stats = q.stats();
        assert_eq!(stats.format, evspool::record::FORMAT_VERSION);
        assert_eq!(q.instance_id(), INSTANCE);
        let t = &stats.topics[TOPIC];
        assert_eq!(
            (t.ready.events, t.retrying.events, t.dead.events),
            (6, 3, 1)
        );
        let want: Vec<(u64, u32)> = (1..=10u64)
            .filter(|s| *s != 7)
            .map(|s| (s, if (4..=6).contains(&s) { 2 } else { 0 }))
            .collect();
        assert_eq!(queued(&q), want, "every event, its attempts kept");
        let next = q.enqueue(TOPIC, payload(11)).unwrap();
        assert_eq!(next.id().unwrap().seq(), 11, "ids continue");
        q.close();
    }
    {
        let db = sled_open(dir.path());
        let format = db.open_tree("meta").unwrap().get("format").unwrap();
        assert_eq!(
            format.as_deref(),
            Some(&[evspool::record::FORMAT_VERSION][..]),
            "an older build now refuses it"
        );
    }
    // Format 4 traced the dead letter in the body files: a lost sled file
    // no longer costs it (format 3 lost dead letters with sled).
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let q = Queue::open(dir.path(), config()).unwrap();
    let dead = q.dead_letters(TOPIC, 0, 10).unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.id.to_string(), d.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![(format!("{INSTANCE}-7"), "http 400: invalid event")]
    );
    let seqs: Vec<u64> = queued(&q).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        seqs,
        (1..=11).filter(|s| *s != 7).collect::<Vec<u64>>(),
        "the dead letter is not queued again"
    );
}

#[tokio::test]
async fn a_flipped_length_in_a_format_3_entry_header_costs_that_entry_only() {
    let dir = tempfile::tempdir().unwrap();
    let entries = write_format_3_store(dir.path());
    // Entry 4-6's length byte: the header carries no check in format 3, so
    // the entry's record CRC tells the damage, and the reader goes on to 7.
    let path = dir.path().join("bodies").join(TOPIC).join("1.seg");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[entries[1].0 as usize + 8] ^= 0x02;
    std::fs::write(&path, bytes).unwrap();
    // Lose sled too: the rebuild reads the whole file, past the damage.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let q = Queue::open(dir.path(), config()).unwrap();
    let seqs: Vec<u64> = queued(&q).into_iter().map(|(s, _)| s).collect();
    assert_eq!(
        seqs,
        vec![1, 2, 3, 7, 8, 9, 10],
        "only the damaged entry's events are gone (7: its dead letter was in sled only)"
    );
    assert_eq!(q.stats().quarantined_records, 1);
}
