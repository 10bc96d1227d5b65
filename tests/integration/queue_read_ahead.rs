//! Reading ahead in body files (`src/queue/log/read_ahead.rs`) while the
//! file is still being written: a consumer following a topic's tail must
//! read every event as it was enqueued, never bytes from before an append
//! landed (the zeros written ahead of a generation's end with `fsync`, G6).

use super::queue_corruption::segment_entries;
use evspool::{Queue, QueueConfig};
use evspool_testkit::queue::accepted_seq;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPIC: &str = "t";

fn payload(n: u64) -> Vec<u8> {
    format!(
        r#"{{"event":"e","n":{n},"pad":"{}"}}"#,
        "x".repeat((n % 200) as usize)
    )
    .into_bytes()
}

#[test]
fn a_consumer_following_the_tail_reads_every_event_intact_while_appends_overwrite_the_zeros_ahead()
{
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(
        dir.path(),
        QueueConfig {
            fsync: true,
            commit_interval: Duration::from_millis(1),
            ..QueueConfig::default()
        },
    )
    .unwrap();
    const PER_PRODUCER: u64 = 6_000;
    let sent: Arc<Mutex<BTreeMap<u64, Vec<u8>>>> = Arc::default();
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let (q, sent) = (q.clone(), sent.clone());
            std::thread::spawn(move || {
                for i in 0..PER_PRODUCER {
                    let body = payload(p * PER_PRODUCER + i);
                    let out = q.enqueue(TOPIC, body.clone()).unwrap();
                    sent.lock().unwrap().insert(accepted_seq(&out), body);
                    if i % 64 == 0 {
                        std::thread::yield_now();
                    }
                }
            })
        })
        .collect();
    let mut got: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < (2 * PER_PRODUCER) as usize {
        assert!(
            Instant::now() < deadline,
            "only {} events in 60 s",
            got.len()
        );
        let Some(lease) = q.lease(TOPIC, 50).unwrap() else {
            let damaged = q.stats().quarantined_records;
            assert_eq!(damaged, 0, "damage found after {} events", got.len());
            std::thread::sleep(Duration::from_micros(200));
            continue;
        };
        for e in lease.events() {
            assert!(
                got.insert(e.seq(), e.payload.to_vec()).is_none(),
                "seq {} leased twice",
                e.seq()
            );
        }
        q.ack(lease).unwrap();
    }
    for p in producers {
        p.join().unwrap();
    }
    let stats = q.stats();
    assert_eq!(stats.quarantined_records, 0, "damage found: {stats:?}");
    assert_eq!(got, *sent.lock().unwrap(), "every event, with its bytes");
    q.close();
}

/// Ten chunks of 4 events (seqs 1..=40) in one body file, committed.
fn ten_chunks(dir: &std::path::Path) -> Queue {
    let q = Queue::open(
        dir,
        QueueConfig {
            chunk_max_events: 4,
            commit_interval: Duration::from_secs(60),
            ..QueueConfig::default()
        },
    )
    .unwrap();
    for i in 1..=40u64 {
        let out = q.enqueue(TOPIC, payload(i)).unwrap();
        assert_eq!(accepted_seq(&out), i);
    }
    evspool_testkit::queue::block_on(q.sync()).unwrap();
    q
}

/// A consumer leases chunk 1, then chunk 5: the second read is sequential,
/// so it reads a window holding chunks 5..=37 too.
fn lease_two_chunks(q: &Queue) {
    for first in [1u64, 5] {
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(l.events()[0].seq(), first);
        q.ack(l).unwrap();
    }
}

#[test]
fn verify_finds_a_byte_flipped_after_a_consumer_read_ahead_past_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let q = ten_chunks(dir.path());
    lease_two_chunks(&q);
    // Now a byte of chunk 9 (the next queued) is damaged on disk.
    let (path, entries) = segment_entries(dir.path());
    let (seq, off, rec) = &entries[2];
    assert_eq!(*seq, 9);
    let mid = rec.len() as u64 / 2;
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_at(&[rec[mid as usize] ^ 0x5a], *off as u64 + mid)
        .unwrap();
    drop(f);
    // `verify` reads every queued chunk: it must find the damage.
    let report = q.verify().unwrap();
    assert_eq!(
        report.quarantined, 1,
        "verify read chunk 9 from a window filled before the damage: {report:?}"
    );
}

/// As `a_body_file_cut_short_under_an_open_queue_delivers_the_intact_chunks_and_contains_the_cut_one`
/// (queue_corruption.rs), with a consumer that leases one chunk at a time
/// and so reads ahead: the chunks in its window are delivered as they were
/// written (RA4), the rest are contained; every event delivered is intact.
#[test]
fn a_body_file_cut_short_under_a_sequential_consumer_loses_nothing_that_was_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let q = ten_chunks(dir.path());
    lease_two_chunks(&q);
    let (path, entries) = segment_entries(dir.path());
    // Cut in the middle of chunk 13's record.
    let (seq, off, rec) = &entries[3];
    assert_eq!(*seq, 13);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len((off + rec.len() / 2) as u64)
        .unwrap();
    let mut seqs = Vec::new();
    while let Some(l) = q.lease(TOPIC, 4).unwrap() {
        for e in l.events() {
            assert_eq!(e.payload, payload(e.seq()), "seq {} intact", e.seq());
            seqs.push(e.seq());
        }
        q.ack(l).unwrap();
    }
    let quarantined = q.stats().quarantined_records;
    assert!(
        seqs == (9..=40).collect::<Vec<u64>>()
            || (seqs.starts_with(&[9, 10, 11, 12]) && quarantined > 0),
        "delivered {seqs:?}, quarantined {quarantined}"
    );
}
