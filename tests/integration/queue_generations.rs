//! Body generations (format 2) and the format-1 → 2 upgrade: chunk records live in
//! `bodies/<topic>/<n>.seg` files that are deleted whole once every chunk in them
//! is acked; format-1 stores keep their chunks in the topic tree and stay readable.
//!
//! The on-disk checks open `<dir>/db` with sled directly while the queue is
//! closed, using the layout documented in `src/queue/storage.rs`.

use super::queue_corruption::{chunk_key, sled_open};
use super::queue_durability::copy_dir;
use evspool::record::{self, ChunkIndex, StoredEvent};
use evspool::{Queue, QueueConfig};
use std::path::Path;
use std::time::Duration;

const TOPIC: &str = "t";

fn config() -> QueueConfig {
    QueueConfig {
        commit_interval: Duration::from_millis(5),
        ..QueueConfig::default()
    }
}

/// The topic's body generation files, as `bodies/<topic>/<n>.seg`.
fn body_trees(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("bodies").join(TOPIC)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .map(|e| {
            format!(
                "bodies/{TOPIC}/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    names.sort();
    names
}

fn drain(q: &Queue) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(lease) = q.lease(TOPIC, 50).unwrap() {
        seqs.extend(lease.events().iter().map(|e| e.seq()));
        q.ack(lease).unwrap();
    }
    seqs
}

#[tokio::test]
async fn a_fully_acked_generation_is_dropped_whole_and_the_next_one_takes_new_events() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config()).unwrap();
    let payload = vec![b'x'; 300];
    // Over 1 MiB of records: a fully acked current generation that size is replaced.
    for _ in 0..4000 {
        let _ = q.enqueue(TOPIC, payload.clone()).unwrap();
    }
    q.sync().await.unwrap();
    assert_eq!(drain(&q).len(), 4000);
    // The next commit starts generation 2; the round after drops generation 1.
    let _ = q.enqueue_durable(TOPIC, payload.clone()).await.unwrap();
    let _ = q.enqueue_durable(TOPIC, payload.clone()).await.unwrap();
    q.close();
    drop(q);
    assert_eq!(
        body_trees(dir.path()),
        vec![format!("bodies/{TOPIC}/2.seg")]
    );
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(
        drain(&q),
        vec![4001, 4002],
        "the new events survived the drop"
    );
}

#[tokio::test]
async fn opening_drops_generations_that_no_index_record_names() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        for i in 0..10 {
            let _ = q
                .enqueue(TOPIC, format!("{{\"i\":{i}}}").into_bytes())
                .unwrap();
        }
        q.sync().await.unwrap();
        q.close();
    }
    // What a crash between the last ack of generation 7 and its deletion leaves.
    std::fs::write(
        dir.path().join("bodies").join(TOPIC).join("7.seg"),
        b"acked long ago",
    )
    .unwrap();
    assert_eq!(
        body_trees(dir.path()),
        vec![
            format!("bodies/{TOPIC}/1.seg"),
            format!("bodies/{TOPIC}/7.seg")
        ]
    );
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(q.stats().total.events, 10);
    q.close();
    drop(q);
    assert_eq!(
        body_trees(dir.path()),
        vec![format!("bodies/{TOPIC}/1.seg")],
        "generation 7 went at open; generation 1 holds the 10 events"
    );
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(drain(&q), (1..=10).collect::<Vec<u64>>());
    q.close();
    drop(q);
    assert!(
        body_trees(dir.path()).is_empty(),
        "once drained, generation 1 (no longer current after a reopen) went too"
    );
}

/// Re-frames a format-2 record as format 1 (same body, recomputed CRC).
fn as_format_1(rec: &[u8], body_trim: usize) -> Vec<u8> {
    let body = &rec[1..rec.len() - 4 - body_trim];
    let mut out = vec![1u8];
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[tokio::test]
async fn a_format_1_store_is_upgraded_in_place_and_delivers_every_event() {
    let dir = tempfile::tempdir().unwrap();
    // Create the directory the way a 0.1 build did, then write its records by hand.
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        q.close();
    }
    let payloads: Vec<Vec<u8>> = (1..=6u64)
        .map(|i| format!("{{\"v1\":{i}}}").into_bytes())
        .collect();
    {
        let db = sled_open(dir.path());
        db.open_tree("meta")
            .unwrap()
            .insert("format", &[1u8])
            .unwrap();
        let tree = db.open_tree(format!("topic/{TOPIC}")).unwrap();
        for first in [1u64, 4] {
            let events: Vec<StoredEvent<'_>> = (first..first + 3)
                .map(|seq| StoredEvent {
                    seq,
                    enqueued_at_ms: 1_700_000_000_000 + seq,
                    payload: &payloads[seq as usize - 1],
                })
                .collect();
            let chunk = as_format_1(&record::encode_chunk(&events), 0);
            let idx = ChunkIndex {
                events: 3,
                bytes: events.iter().map(|e| e.payload.len() as u64).sum(),
                last_seq: first + 2,
                first_enqueued_ms: 1_700_000_000_000 + first,
                body_gen: 0,
                body_offset: 0,
                body_len: 0,
            };
            // Format 1 had no body_gen: drop its varint (one 0 byte) from the body.
            let index = as_format_1(&record::encode_index(&idx), 1);
            tree.insert(chunk_key(first), chunk).unwrap();
            let mut ikey = vec![b'I'];
            ikey.extend_from_slice(&first.to_be_bytes());
            tree.insert(ikey, index).unwrap();
        }
        tree.insert("H", &7u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }

    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert_eq!(stats.format, record::FORMAT_VERSION);
    assert_eq!(stats.total.events, 6);
    let fresh = q
        .enqueue_durable(TOPIC, b"{\"v2\":1}".to_vec())
        .await
        .unwrap();
    assert_eq!(
        fresh.id().unwrap().seq(),
        7,
        "seqs continue after the format-1 high-water"
    );
    let lease = q.lease(TOPIC, 100).unwrap().unwrap();
    let got: Vec<(u64, Vec<u8>)> = lease
        .events()
        .iter()
        .map(|e| (e.seq(), e.payload.to_vec()))
        .collect();
    let mut want: Vec<(u64, Vec<u8>)> = (1..=6u64)
        .map(|s| (s, payloads[s as usize - 1].clone()))
        .collect();
    want.push((7, b"{\"v2\":1}".to_vec()));
    assert_eq!(got, want);
    q.ack(lease).unwrap();
    q.close();
    drop(q);

    let db = sled_open(dir.path());
    assert_eq!(
        db.open_tree("meta")
            .unwrap()
            .get("format")
            .unwrap()
            .unwrap()
            .as_ref(),
        [record::FORMAT_VERSION],
        "the store now says format 2, so an older build refuses it"
    );
    let tree = db.open_tree(format!("topic/{TOPIC}")).unwrap();
    assert_eq!(
        tree.scan_prefix([b'C']).count(),
        0,
        "acking format-1 chunks deleted their records from the topic tree"
    );
    assert_eq!(tree.scan_prefix([b'I']).count(), 0);
}

#[tokio::test]
async fn durable_events_whose_index_sled_never_flushed_are_adopted_at_open_with_their_ids() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let cfg = QueueConfig {
        // sled's background flush never runs during the test.
        flush_interval: Duration::from_secs(3600),
        ..config()
    };
    // A store whose sled files know nothing of the events below.
    {
        let q = Queue::open(&live, cfg.clone()).unwrap();
        let _ = q.enqueue_durable("other", b"{}".to_vec()).await.unwrap();
        q.close();
    }
    let stale_db = dir.path().join("stale-db");
    copy_dir(&live.join("db"), &stale_db);

    let q = Queue::open(&live, cfg.clone()).unwrap();
    let mut want = Vec::new();
    for i in 0..120u64 {
        let payload = format!("{{\"i\":{i}}}").into_bytes();
        let id = q
            .enqueue_durable(TOPIC, payload.clone())
            .await
            .unwrap()
            .id()
            .unwrap()
            .clone();
        want.push((id.to_string(), payload));
    }
    // What kill -9 leaves now: sled's files as last flushed, the generation
    // files as written.
    let crashed = dir.path().join("crashed");
    copy_dir(&stale_db, &crashed.join("db"));
    copy_dir(&live.join("bodies"), &crashed.join("bodies"));

    let c = Queue::open(&crashed, cfg).unwrap();
    assert_eq!(c.stats().total.events, 121, "120 adopted + the flushed one");
    let mut got = Vec::new();
    while let Some(lease) = c.lease(TOPIC, 50).unwrap() {
        got.extend(
            lease
                .events()
                .iter()
                .map(|e| (e.id.to_string(), e.payload.to_vec())),
        );
        c.ack(lease).unwrap();
    }
    assert_eq!(got, want, "every durable event, in order, under its id");
    let next = c
        .enqueue(TOPIC, b"{}".to_vec())
        .unwrap()
        .id()
        .unwrap()
        .seq();
    assert!(
        next > want.len() as u64 + 1,
        "seqs resume above the adopted ones ({next})"
    );
}

fn dir_bytes(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|entries| {
            entries
                .map(|e| {
                    let e = e.unwrap();
                    if e.file_type().unwrap().is_dir() {
                        dir_bytes(&e.path())
                    } else {
                        e.metadata().unwrap().len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn compact_rewrites_half_drained_generations_into_one_and_keeps_every_event_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let payload = |i: u64| format!("{{\"i\":{i},\"pad\":\"{}\"}}", "z".repeat(280)).into_bytes();
    let kept: Vec<(String, Vec<u8>)> = {
        let q = Queue::open(dir.path(), config()).unwrap();
        // Four rounds of 4,000 events; each round acks every other chunk
        // leased and releases the rest, so every generation is half garbage.
        let mut next = 0u64;
        for _ in 0..4 {
            for _ in 0..4000 {
                let _ = q.enqueue(TOPIC, payload(next)).unwrap();
                next += 1;
            }
            q.sync().await.unwrap();
            let mut leases = Vec::new();
            while let Some(l) = q.lease(TOPIC, 50).unwrap() {
                leases.push(l);
            }
            for (i, l) in leases.into_iter().enumerate() {
                if i % 2 == 0 {
                    q.ack(l).unwrap();
                } else {
                    q.release(l);
                }
            }
        }
        let kept = q
            .peek(TOPIC, 0, 1_000_000)
            .unwrap()
            .into_iter()
            .map(|p| (p.event.id.to_string(), p.event.payload.to_vec()))
            .collect();
        q.close();
        kept
    };
    assert!(kept.len() > 500, "{} events left", kept.len());
    let before = evspool::queue::store_size(dir.path());
    let report = evspool::compact(dir.path(), &config()).unwrap();
    let after = evspool::queue::store_size(dir.path());
    assert_eq!(report.before_bytes, before);
    assert_eq!(report.after_bytes, after);
    assert_eq!(
        body_trees(dir.path()).len(),
        1,
        "{:?}",
        body_trees(dir.path())
    );
    assert!(
        after < before,
        "compact shrank the store: {before} -> {after}"
    );

    let q = Queue::open(dir.path(), config()).unwrap();
    let live = q.stats().total;
    let bodies = dir_bytes(&dir.path().join("bodies"));
    assert!(
        (bodies as f64) < live.bytes as f64 * 1.15,
        "bodies {bodies} B for {} payload bytes after compact",
        live.bytes
    );
    let mut got = Vec::new();
    while let Some(lease) = q.lease(TOPIC, 50).unwrap() {
        got.extend(
            lease
                .events()
                .iter()
                .map(|e| (e.id.to_string(), e.payload.to_vec())),
        );
        q.ack(lease).unwrap();
    }
    assert_eq!(got, kept, "every event never acked, in order, under its id");
}
