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
    // Generation 7 went at open; generation 1 holds the 10 events. Before
    // deleting 7 open wrote a high-water trace (TR4 in `queue/log/trace.rs`) to a
    // new generation (open never appends to a file it found): 8, events none.
    assert_eq!(
        body_trees(dir.path()),
        vec![
            format!("bodies/{TOPIC}/1.seg"),
            format!("bodies/{TOPIC}/8.seg")
        ],
        "generation 7 went at open; generation 1 holds the 10 events"
    );
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(drain(&q), (1..=10).collect::<Vec<u64>>());
    q.close();
    drop(q);
    // Once drained, generations 1 and 8 (no longer current after a reopen)
    // went too; what is left is the trace that keeps their seqs from being
    // handed out again (TR4), in the generation this open wrote it to.
    assert_eq!(
        body_trees(dir.path()),
        vec![format!("bodies/{TOPIC}/9.seg")]
    );
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(q.stats().total.events, 0);
    let next = q.enqueue_durable(TOPIC, b"{}".to_vec()).await.unwrap();
    // Seqs 1..=10 are never handed out again, nor the 14 the planted
    // generation 7's unreadable bytes might have held: when open first met
    // it, it was the topic's newest file, whose bytes past the last valid
    // entry count as seqs handed out (S6 in `queue/log/segment.rs`).
    assert_eq!(
        next.id().map(|id| id.seq()),
        Some(11 + 14),
        "seqs 1..=10 and the 14 the unreadable tail may hold are never handed out again"
    );
    q.close();
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

/// Writes a format-1 store (as a 0.1 build left it) in `dir`: six events of
/// `topic` (seqs 1..=6, two chunks, their bodies inside sled), high-water 7.
fn write_format_1_store(dir: &Path, topic: &str) {
    // Create the directory the way a 0.1 build did, then write its records by hand.
    {
        let q = Queue::open(dir, config()).unwrap();
        q.close();
    }
    let payloads: Vec<Vec<u8>> = (1..=6u64)
        .map(|i| format!("{{\"v1\":{i}}}").into_bytes())
        .collect();
    {
        let db = sled_open(dir);
        db.open_tree("meta")
            .unwrap()
            .insert("format", &[1u8])
            .unwrap();
        let tree = db.open_tree(format!("topic/{topic}")).unwrap();
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
}

#[tokio::test]
async fn a_format_1_store_is_upgraded_in_place_and_delivers_every_event() {
    let dir = tempfile::tempdir().unwrap();
    write_format_1_store(dir.path(), TOPIC);
    let payloads: Vec<Vec<u8>> = (1..=6u64)
        .map(|i| format!("{{\"v1\":{i}}}").into_bytes())
        .collect();

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

#[tokio::test]
async fn a_format_2_store_is_migrated_to_format_3_in_place_keeping_every_event_id_retry_and_dead_letter()
 {
    // A format-2 store as a 0.2 build left it, written byte by byte with the
    // layout of `migrations-notes/0002-body-generations.md`: no identity file,
    // the instance id in `meta`, one tree `topic/<name>`, and a body file
    // without a header whose entries are `[seq u64 LE][len u32 LE][record]`.
    const INSTANCE: &str = "0123456789ab";
    // 2100-01-01: chunk 4's backoff does not run out during the test.
    const FAR_FUTURE_MS: u64 = 4_102_444_800_000;
    /// Re-frames a record of this build as format 2 (same body, recomputed CRC):
    /// formats 2 and 3 share every record body (`src/record.rs`).
    fn as_format_2(rec: &[u8]) -> Vec<u8> {
        let mut out = vec![2u8];
        out.extend_from_slice(&rec[1..rec.len() - 4]);
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }
    fn legacy_key(kind: u8, seq: u64) -> Vec<u8> {
        let mut k = vec![kind];
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }
    /// A key of the format-3 `index` tree (`src/queue/storage.rs`).
    fn index_key(kind: u8, seq: Option<u64>) -> Vec<u8> {
        let mut k = TOPIC.as_bytes().to_vec();
        k.push(0);
        k.push(kind);
        if let Some(seq) = seq {
            k.extend_from_slice(&seq.to_be_bytes());
        }
        k
    }
    let enqueued_at = |seq: u64| 1_700_000_000_000 + seq;
    let payloads: Vec<Vec<u8>> = (0..=10u64)
        .map(|seq| {
            format!("{{\"v2\":{seq},\"pad\":\"{}\"}}", "p".repeat(seq as usize)).into_bytes()
        })
        .collect();
    let id = |seq: u64| format!("{INSTANCE}-{seq}");

    // Generation 1 holds four entries:
    // - 1..=3 and 4..=6: indexed; 4..=6 failed twice and waits out a backoff;
    // - 7: dead-lettered (its index record deleted, its dead letter written);
    //   the entry stays in the file, below the high-water: it must not return;
    // - 8..=10: written, but the crash lost the sled batch with its index
    //   record and the high-water 11: at or above the persisted high-water (8),
    //   so a format-2 open adopted it, and the migration must too.
    let dir = tempfile::tempdir().unwrap();
    let mut seg = Vec::new();
    // (first seq, the format-2 index record, the format-3 one the migration writes)
    let mut indexes: Vec<(u64, ChunkIndex, ChunkIndex)> = Vec::new();
    for (first, last) in [(1u64, 3u64), (4, 6), (7, 7), (8, 10)] {
        let events: Vec<StoredEvent<'_>> = (first..=last)
            .map(|seq| StoredEvent {
                seq,
                enqueued_at_ms: enqueued_at(seq),
                payload: &payloads[seq as usize],
            })
            .collect();
        let rec = as_format_2(&record::encode_chunk(&events));
        let entry_at = seg.len() as u64;
        seg.extend_from_slice(&first.to_le_bytes());
        seg.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        seg.extend_from_slice(&rec);
        let summary = ChunkIndex::of(&events);
        indexes.push((
            first,
            // Format 2 names the chunk record, 12 bytes after the entry header.
            summary.placed(1, entry_at + 12, rec.len() as u32),
            // Format 3 names the whole entry, header included.
            summary.placed(1, entry_at, 12 + rec.len() as u32),
        ));
    }
    let seg_path = dir.path().join("bodies").join(TOPIC).join("1.seg");
    std::fs::create_dir_all(seg_path.parent().unwrap()).unwrap();
    std::fs::write(&seg_path, &seg).unwrap();
    let retry = record::RetryState {
        attempts: 2,
        not_before_ms: FAR_FUTURE_MS,
        last_error: "http 503".into(),
    };
    let dead = record::DeadLetter {
        seq: 7,
        enqueued_at_ms: enqueued_at(7),
        dead_at_ms: enqueued_at(7) + 5_000,
        attempts: 3,
        reason: "http 400: invalid event".into(),
        payload: payloads[7].clone(),
    };
    {
        let db = sled_open(dir.path());
        let meta = db.open_tree("meta").unwrap();
        meta.insert("format", &[2u8]).unwrap();
        meta.insert("instance", INSTANCE.as_bytes()).unwrap();
        let tree = db.open_tree(format!("topic/{TOPIC}")).unwrap();
        for (first, v2, _) in &indexes[..2] {
            tree.insert(
                legacy_key(b'I', *first),
                as_format_2(&record::encode_index(v2)),
            )
            .unwrap();
        }
        tree.insert(
            legacy_key(b'R', 4),
            as_format_2(&record::encode_retry(&retry)),
        )
        .unwrap();
        tree.insert(
            legacy_key(b'D', 7),
            as_format_2(&record::encode_dead(&dead)),
        )
        .unwrap();
        tree.insert("H", &8u64.to_be_bytes()).unwrap();
        db.flush().unwrap();
    }
    // Format 2's first-open marker, written once its metadata was flushed.
    std::fs::write(dir.path().join("db").join("evspool.initialized"), b"").unwrap();
    assert!(!dir.path().join("evspool.id").exists(), "format 2 had none");

    // What every open of the migrated store shows, before any lease: the
    // events of 1, 4 and 8 (and `fresh`, enqueued after the migration) under
    // their old ids with their payloads, chunk 4 still waiting out its
    // backoff after 2 attempts, and the dead letter 7 as it was.
    type Peeked = (String, u64, String, u32, Option<u64>, Option<String>);
    let check = |q: &Queue, fresh: &[(u64, Vec<u8>)]| {
        let stats = q.stats();
        assert_eq!(stats.format, record::FORMAT_VERSION);
        assert_eq!(
            stats.instance_id, INSTANCE,
            "the instance id of meta survives"
        );
        assert_eq!(q.instance_id(), INSTANCE);
        let t = &stats.topics[TOPIC];
        assert_eq!(
            (
                t.ready.events,
                t.retrying.events,
                t.leased.events,
                t.dead.events
            ),
            (6 + fresh.len() as u64, 3, 0, 1),
            "{t:?}"
        );
        assert_eq!(stats.total.events, 9 + fresh.len() as u64);
        let want: Vec<Peeked> = (1..=10u64)
            .filter(|seq| *seq != 7)
            .map(|seq| {
                let retrying = (4..=6).contains(&seq);
                (
                    id(seq),
                    enqueued_at(seq),
                    String::from_utf8(payloads[seq as usize].clone()).unwrap(),
                    if retrying { 2 } else { 0 },
                    retrying.then_some(FAR_FUTURE_MS),
                    retrying.then(|| "http 503".to_string()),
                )
            })
            .collect();
        let got: Vec<Peeked> = q
            .peek(TOPIC, 0, 100)
            .unwrap()
            .into_iter()
            .map(|p| {
                assert!(!p.leased);
                (
                    p.event.id.to_string(),
                    p.event.enqueued_at_ms,
                    String::from_utf8_lossy(&p.event.payload).into_owned(),
                    p.event.attempts,
                    p.not_before_ms,
                    p.last_error,
                )
            })
            .collect();
        let got_old: Vec<Peeked> = got.iter().take(9).cloned().collect();
        assert_eq!(
            got_old, want,
            "every format-2 event under its id, none lost, 7 not back"
        );
        let got_fresh: Vec<(String, Vec<u8>)> = got
            .iter()
            .skip(9)
            .map(|p| (p.0.clone(), p.2.clone().into_bytes()))
            .collect();
        assert_eq!(
            got_fresh,
            fresh
                .iter()
                .map(|(seq, p)| (id(*seq), p.clone()))
                .collect::<Vec<_>>()
        );
        let dl = q.dead_letters(TOPIC, 0, 100).unwrap();
        assert_eq!(dl.len(), 1, "{dl:?}");
        assert_eq!(dl[0].id.to_string(), id(7));
        assert_eq!(
            (
                dl[0].enqueued_at_ms,
                dl[0].dead_at_ms,
                dl[0].attempts,
                dl[0].reason.as_str(),
                dl[0].payload.as_ref()
            ),
            (
                dead.enqueued_at_ms,
                dead.dead_at_ms,
                dead.attempts,
                dead.reason.as_str(),
                dead.payload.as_slice()
            )
        );
    };

    // First open: the migration runs.
    let q = Queue::open(dir.path(), config()).unwrap();
    check(&q, &[]);
    let fresh_payload = b"{\"v3\":1}".to_vec();
    let fresh = q
        .enqueue_durable(TOPIC, fresh_payload.clone())
        .await
        .unwrap();
    let fresh_id = fresh.id().unwrap().clone();
    assert_eq!(
        (fresh_id.instance(), fresh_id.seq()),
        (INSTANCE, 11),
        "seqs resume above every old one (10, in the adopted entry)"
    );
    q.close();
    drop(q);

    // On disk: format 3, the old tree gone, its records rewritten in `index`.
    {
        let db = sled_open(dir.path());
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get("format").unwrap().unwrap().as_ref(),
            [record::FORMAT_VERSION]
        );
        assert_eq!(
            meta.get("instance").unwrap().unwrap().as_ref(),
            INSTANCE.as_bytes()
        );
        let legacy = format!("topic/{TOPIC}");
        assert!(
            !db.tree_names()
                .iter()
                .any(|n| n.as_ref() == legacy.as_bytes()),
            "the format-2 tree was dropped"
        );
        let index = db.open_tree("index").unwrap();
        for (first, _, v3) in indexes.iter().filter(|(first, _, _)| *first != 7) {
            let raw = index
                .get(index_key(b'I', Some(*first)))
                .unwrap()
                .unwrap_or_else(|| panic!("no index record for chunk {first}"));
            assert_eq!(
                record::decode_index_with_format(&raw).unwrap(),
                (record::FORMAT_VERSION, *v3),
                "chunk {first} names its whole entry, header included"
            );
        }
        assert!(
            index.get(index_key(b'I', Some(7))).unwrap().is_none(),
            "the dead-lettered entry below the high-water was not adopted"
        );
        let r = index.get(index_key(b'R', Some(4))).unwrap().unwrap();
        assert_eq!(record::decode_retry(&r).unwrap(), retry);
        let d = index.get(index_key(b'D', Some(7))).unwrap().unwrap();
        assert_eq!(record::decode_dead(&d).unwrap(), dead);
        let h = index.get(index_key(b'H', None)).unwrap().unwrap();
        let h = u64::from_be_bytes(h.as_ref().try_into().unwrap());
        assert!(
            h >= 12,
            "every seq below the high-water was handed out ({h})"
        );
    }
    assert_eq!(
        std::fs::read(&seg_path).unwrap(),
        seg,
        "the format-2 body file is read in place, never rewritten"
    );
    assert!(
        std::fs::read_to_string(dir.path().join("evspool.id"))
            .unwrap()
            .contains(&format!("instance {INSTANCE}")),
        "the identity file names format 2's instance id"
    );

    // Second open: nothing left to migrate; the same store.
    let q = Queue::open(dir.path(), config()).unwrap();
    check(&q, &[(11, fresh_payload.clone())]);
    let mut leases = Vec::new();
    let mut got: Vec<(String, Vec<u8>, u32)> = Vec::new();
    while let Some(lease) = q.lease(TOPIC, 100).unwrap() {
        got.extend(
            lease
                .events()
                .iter()
                .map(|e| (e.id.to_string(), e.payload.to_vec(), e.attempts)),
        );
        leases.push(lease);
    }
    let mut want: Vec<(String, Vec<u8>, u32)> = [1u64, 2, 3, 8, 9, 10]
        .iter()
        .map(|s| (id(*s), payloads[*s as usize].clone(), 0))
        .collect();
    want.push((id(11), fresh_payload.clone(), 0));
    assert_eq!(got, want, "chunk 4 is held back by its backoff");
    assert_eq!(q.retry_now(TOPIC), 3);
    let lease = q.lease(TOPIC, 100).unwrap().expect("chunk 4 is due now");
    let got: Vec<(String, Vec<u8>, u32)> = lease
        .events()
        .iter()
        .map(|e| (e.id.to_string(), e.payload.to_vec(), e.attempts))
        .collect();
    assert_eq!(
        got,
        (4..=6u64)
            .map(|s| (id(s), payloads[s as usize].clone(), 2))
            .collect::<Vec<_>>(),
        "chunk 4 keeps its 2 attempts"
    );
    leases.push(lease);
    for lease in leases {
        q.ack(lease).unwrap();
    }
    assert!(q.lease(TOPIC, 100).unwrap().is_none());
    assert_eq!(q.stats().total.events, 0);
    assert!(q.peek(TOPIC, 0, 100).unwrap().is_empty());
    q.close();
    drop(q);

    // Third open: still empty; the dead letter stays until replayed or purged;
    // the drained format-2 body file is no longer named and goes.
    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert_eq!(stats.total.events, 0);
    assert_eq!(stats.topics[TOPIC].dead.events, 1);
    assert!(q.lease(TOPIC, 100).unwrap().is_none());
    let dl = q.dead_letters(TOPIC, 0, 100).unwrap();
    assert_eq!(
        dl.iter().map(|d| d.id.to_string()).collect::<Vec<_>>(),
        vec![id(7)]
    );
    q.close();
    drop(q);
    assert!(
        !seg_path.exists(),
        "generation 1 went once nothing in it was queued: {:?}",
        body_trees(dir.path())
    );
}

/// Formats 1 and 2 accepted the topic names `.` and `..` (format 3 forbids
/// them: joined to a path they leave `bodies/<topic>`). Such a store is
/// refused before anything in it changes — not migrated with that topic left
/// behind, which lost its events without a count (found by the review of
/// issue 21: "total Usage { events: 0, bytes: 0 }, drops {}").
#[test]
fn a_format_1_store_holding_a_topic_named_dot_is_refused_and_left_unchanged() {
    for name in [".", ".."] {
        let dir = tempfile::tempdir().unwrap();
        write_format_1_store(dir.path(), name);
        for attempt in 0..2 {
            let err = match Queue::open(dir.path(), config()) {
                Err(e) => e,
                Ok(q) => panic!(
                    "attempt {attempt}: a format-1 store with topic {name:?} opened: {:?}",
                    q.stats().total
                ),
            };
            assert!(
                matches!(&err, evspool::OpenError::LegacyTopic { topic, format: 1, .. } if topic == name),
                "attempt {attempt}: {err:?}"
            );
            let text = err.to_string();
            assert!(
                text.contains(&format!("holds events of topic {name:?}"))
                    && text.contains("'.' and '..' are not topic names")
                    && text.contains("nothing was changed"),
                "{text}"
            );
        }
        // Still format 1, the legacy tree whole: the six events are there.
        let db = sled_open(dir.path());
        assert_eq!(
            db.open_tree("meta")
                .unwrap()
                .get("format")
                .unwrap()
                .as_deref(),
            Some(&[1u8][..])
        );
        let tree = db.open_tree(format!("topic/{name}")).unwrap();
        assert_eq!(
            tree.len(),
            5,
            "two chunks, two index records and the high-water"
        );
    }
}
