//! A format-4 store (`migrations-notes/0004-traces.md`) opened by this build:
//! it becomes format 5 (`migrations-notes/0005-index-journal.md`), gaining
//! the index journal, and keeps every event, id, retry and dead letter.
//!
//! Format 5 changes no record and no body file, so the store is made by this
//! build and then turned back into what a format-4 build left: `meta.format`
//! 4, and no journal (no file, no epoch, no applied lsn).

use super::queue_corruption::sled_open;
use evspool::{Queue, QueueConfig, Settlement};
use std::path::Path;
use std::time::Duration;

const TOPIC: &str = "t";

fn config() -> QueueConfig {
    QueueConfig {
        commit_interval: Duration::from_millis(5),
        ..QueueConfig::default()
    }
}

/// Ten events: seq 3 dead-lettered, seqs 1, 2, 4–6 retrying far in the
/// future, 7–10 ready; then the store as a format-4 build closed it.
async fn format_4_store(dir: &Path) -> String {
    let q = Queue::open(dir, config()).unwrap();
    enqueue(&q, 1..=6).await;
    let lease = q.lease(TOPIC, 6).unwrap().unwrap();
    assert_eq!(lease.len(), 6);
    let mut s = Settlement::delivered()
        .dead(3, "http 400: invalid event")
        .retry_after(Duration::from_secs(3600), "http 503");
    for seq in [1, 2, 4, 5, 6] {
        s = s.retry(seq);
    }
    q.settle(lease, s).unwrap();
    enqueue(&q, 7..=10).await;
    let instance = q.instance_id().to_string();
    q.close();
    let db = sled_open(dir);
    let meta = db.open_tree("meta").unwrap();
    assert!(
        meta.get("journal.epoch").unwrap().is_some(),
        "this build records an epoch"
    );
    meta.insert("format", &[4u8]).unwrap();
    meta.remove("journal.epoch").unwrap();
    db.open_tree("index")
        .unwrap()
        .remove(b"\xffjournal.applied")
        .unwrap();
    db.flush().unwrap();
    drop(db);
    std::fs::remove_file(dir.join("db").join("evspool.journal")).unwrap();
    instance
}

/// Durable events `{"i":<seq>}`, each getting seq `i`.
async fn enqueue(q: &Queue, seqs: std::ops::RangeInclusive<u64>) {
    for i in seqs {
        let e = q
            .enqueue_durable(TOPIC, format!("{{\"i\":{i}}}"))
            .await
            .unwrap();
        assert_eq!(e.id().unwrap().seq(), i);
    }
}

fn queued(q: &Queue) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut held = Vec::new();
    while let Some(l) = q.lease(TOPIC, 100).unwrap() {
        seqs.extend(l.events().iter().map(|e| e.seq()));
        held.push(l);
    }
    for l in held {
        q.release(l);
    }
    seqs.sort();
    seqs
}

#[tokio::test]
async fn a_format_4_store_opens_as_format_5_keeping_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let instance = format_4_store(dir.path()).await;
    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert_eq!(stats.format, 5);
    assert!(stats.recovered.is_empty(), "{:?}", stats.recovered);
    assert_eq!(q.instance_id(), instance);
    let t = &stats.topics[TOPIC];
    assert_eq!(
        (t.ready.events, t.retrying.events, t.dead.events),
        (4, 5, 1)
    );
    assert_eq!(queued(&q), [7, 8, 9, 10], "the ready events");
    let dead = q.dead_letters(TOPIC, 0, 10).unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.id.seq(), d.reason.as_str()))
            .collect::<Vec<_>>(),
        [(3, "http 400: invalid event")]
    );
    let next = q.enqueue_durable(TOPIC, "{\"i\":11}").await.unwrap();
    assert_eq!(next.id().unwrap().seq(), 11, "ids continue");
    q.close();
    let journal = dir.path().join("db").join("evspool.journal");
    assert!(journal.exists(), "the journal is created");
    let db = sled_open(dir.path());
    let meta = db.open_tree("meta").unwrap();
    assert_eq!(meta.get("format").unwrap().unwrap().as_ref(), [5u8]);
    let epoch = meta
        .get("journal.epoch")
        .unwrap()
        .expect("an epoch is recorded");
    let header = std::fs::read(&journal).unwrap();
    assert_eq!(&header[..8], b"evsjrnl1");
    assert_eq!(
        u64::from_le_bytes(header[8..16].try_into().unwrap()),
        u64::from_be_bytes(epoch.as_ref().try_into().unwrap()),
        "the journal is bound to this sled"
    );
}
