//! What a lost sled file costs, exactly as the README lists it ("What a lost
//! sled file costs"): a store whose `db/` is gone is rebuilt from its body
//! files with the same instance id and event ids, its dead letters and
//! without what was purged, evicted or expired (`queue/log/trace.rs`); what only
//! sled knew is the price — acks of events whose body file remains, retry
//! schedules — and nothing else is.

use evspool::{Queue, QueueConfig, Settlement};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const TOPIC: &str = "t";

fn config() -> QueueConfig {
    QueueConfig {
        chunk_max_events: 4,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("{{\"e\":{i}}}").into_bytes()
}

/// Every queued event's seq and attempts, by leasing everything and releasing it.
fn queued(q: &Queue) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    let mut leases = Vec::new();
    while let Some(l) = q.lease(TOPIC, 1000).unwrap() {
        out.extend(l.events().iter().map(|e| (e.seq(), e.attempts)));
        leases.push(l);
    }
    for l in leases {
        q.release(l);
    }
    out
}

fn lose_sled(dir: &Path) {
    std::fs::remove_dir_all(dir.join("db")).unwrap();
}

#[tokio::test]
async fn a_lost_sled_file_costs_exactly_what_the_readme_lists() {
    let dir = tempfile::tempdir().unwrap();
    let (instance, next_before) = {
        let q = Queue::open(dir.path(), config()).unwrap();
        // Chunks of 4: seqs 1-4, 5-8, 9-12, 13-16, 17-20, all in one body file.
        for i in 1..=20u64 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        q.sync().await.unwrap();
        // 1-4 acked.
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(l.events()[0].seq(), 1);
        q.ack(l).unwrap();
        // 5-8: two delivered, two dead letters.
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(l.events()[0].seq(), 5);
        let s = Settlement::delivered().dead(5, "bad").dead(6, "bad");
        assert_eq!(q.settle(l, s).unwrap().dead, 2);
        // 9-12: a failed attempt, retried in an hour.
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(l.events()[0].seq(), 9);
        q.nack(l, Duration::from_secs(3600), "http 503").unwrap();
        // 13-20 stay queued, never attempted.
        assert_eq!(q.dead_letters(TOPIC, 0, 100).unwrap().len(), 2);
        let next = q.enqueue(TOPIC, payload(21)).unwrap().id().unwrap().seq();
        q.sync().await.unwrap();
        let id = q.instance_id().to_string();
        q.close();
        (id, next)
    };
    lose_sled(dir.path());

    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert!(
        stats
            .recovered
            .iter()
            .any(|r| r.contains("rebuilt from the body files")),
        "the rebuild is reported: {:?}",
        stats.recovered
    );
    // Kept: the instance id, so every event keeps its id.
    assert_eq!(q.instance_id(), instance, "same instance id");
    let got = queued(&q);
    // Kept: every event never settled (13-21), under its seq.
    for s in 13..=21 {
        assert_eq!(got.get(&s), Some(&0), "seq {s} kept, unattempted");
    }
    // Cost 1: acknowledgements in a body file not yet deleted: 1-4 come
    // back, same ids (delivered again; a deduplicating sink drops them).
    for s in 1..=4 {
        assert!(got.contains_key(&s), "acked seq {s} is delivered again");
    }
    // Kept: dead letters, traced in the body file when they were made: 5 and
    // 6 are dead letters again, with their reasons, and not queued. The two
    // delivered with them (7, 8) were acked: like 1-4, they come back.
    let dead = q.dead_letters(TOPIC, 0, 100).unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.id.seq(), d.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![(5, "bad"), (6, "bad")],
        "dead letters are restored"
    );
    for s in [5, 6] {
        assert!(!got.contains_key(&s), "dead letter {s} is not queued");
    }
    for s in [7, 8] {
        assert!(got.contains_key(&s), "acked seq {s} is delivered again");
    }
    // Cost 3: retry schedules: 9-12 are due at once, their attempts forgotten.
    for s in 9..=12 {
        assert_eq!(
            got.get(&s),
            Some(&0),
            "seq {s}: attempts and backoff forgotten"
        );
    }
    assert_eq!(got.len(), 19, "{got:?}");
    // Kept: no id is ever handed out again.
    let next = q.enqueue(TOPIC, payload(22)).unwrap().id().unwrap().seq();
    assert!(next > next_before, "seq {next} after {next_before}");
    assert_eq!(q.verify().unwrap().quarantined, 0);
}

#[tokio::test]
async fn a_lost_sled_file_never_brings_back_events_whose_body_file_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        for i in 1..=8u64 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        q.sync().await.unwrap();
        while let Some(l) = q.lease(TOPIC, 100).unwrap() {
            q.ack(l).unwrap();
        }
        q.close();
    }
    // Reopened, the store writes to a new generation; the drained one goes.
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        let _ = q.enqueue(TOPIC, payload(9)).unwrap();
        q.sync().await.unwrap();
        q.close();
    }
    let gens: Vec<String> = std::fs::read_dir(dir.path().join("bodies").join(TOPIC))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(gens, ["2.seg"], "the drained generation is gone");
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(
        queued(&q).into_keys().collect::<Vec<_>>(),
        vec![9],
        "only the event whose body file remains"
    );
}

#[tokio::test]
async fn a_lost_sled_file_finds_damaged_entries_again_and_never_revives_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        for i in 1..=8u64 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        q.sync().await.unwrap();
        q.close();
    }
    // Damage the first chunk's record (seqs 1-4): one byte inside it.
    let seg = dir.path().join("bodies").join(TOPIC).join("1.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    // The file header (40 bytes), the entry header (16), then the record.
    bytes[40 + 16 + 6] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        assert_eq!(q.verify().unwrap().quarantined, 1);
        assert_eq!(q.stats().quarantined_records, 1);
        q.close();
    }
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(
        q.stats().quarantined_records,
        1,
        "the damaged entry is found again and quarantined"
    );
    assert_eq!(
        queued(&q).into_keys().collect::<Vec<_>>(),
        (5..=8).collect::<Vec<_>>(),
        "the damaged entry is never revived, the intact one kept"
    );
}
