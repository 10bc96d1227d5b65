//! Basic queue behaviour through the public API.

use evspool::{Queue, QueueConfig, Settlement};
use std::time::Duration;

fn open(dir: &std::path::Path) -> Queue {
    Queue::open(dir, QueueConfig::default()).unwrap()
}

#[tokio::test]
async fn durable_events_come_back_in_order_and_ack_deletes_them() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    let mut ids = Vec::new();
    for i in 0..120 {
        let out = q
            .enqueue_durable("track", format!("{{\"n\":{i}}}").into_bytes())
            .await
            .unwrap();
        ids.push(out.id().unwrap().clone());
    }
    let mut seen = Vec::new();
    while let Some(lease) = q.lease("track", 50).unwrap() {
        assert!(lease.len() <= 50);
        seen.extend(lease.events().iter().map(|e| e.id.clone()));
        q.ack(lease).unwrap();
    }
    assert_eq!(seen, ids);
    assert_eq!(q.stats().total.events, 0);
}

#[tokio::test]
async fn reopen_redelivers_unacked_events_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let first_ids: Vec<String>;
    {
        let q = open(dir.path());
        for i in 0..10 {
            let _ = q
                .enqueue_durable("t", format!("{i}").into_bytes())
                .await
                .unwrap();
        }
        let lease = q.lease("t", 50).unwrap().unwrap();
        first_ids = lease.events().iter().map(|e| e.id.to_string()).collect();
        std::mem::forget(lease);
        q.close();
    }
    let q = open(dir.path());
    let lease = q.lease("t", 50).unwrap().unwrap();
    let again: Vec<String> = lease.events().iter().map(|e| e.id.to_string()).collect();
    assert_eq!(again, first_ids);
    // New events get fresh seqs above the old ones.
    let new = q.enqueue_durable("t", b"x".to_vec()).await.unwrap();
    assert!(new.id().unwrap().seq() > lease.events().last().unwrap().seq());
}

#[tokio::test]
async fn partial_settlement_dead_letters_only_the_marked_events() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(dir.path());
    for i in 0..5 {
        let _ = q
            .enqueue_durable("t", format!("{i}").into_bytes())
            .await
            .unwrap();
    }
    let lease = q.lease("t", 50).unwrap().unwrap();
    let seqs: Vec<u64> = lease.events().iter().map(|e| e.seq()).collect();
    let s = Settlement::delivered()
        .dead(seqs[1], "bad field")
        .retry(seqs[3])
        .retry(seqs[4])
        .retry_after(Duration::from_millis(0), "503");
    let report = q.settle(lease, s).unwrap();
    assert_eq!((report.delivered, report.dead, report.retried), (2, 1, 2));
    let dead = q.dead_letters("t", 0, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "bad field");
    assert_eq!(dead[0].payload.as_ref(), b"1");
    let lease = q.lease("t", 50).unwrap().unwrap();
    let rest: Vec<&[u8]> = lease.events().iter().map(|e| e.payload.as_ref()).collect();
    assert_eq!(rest, vec![b"3".as_ref(), b"4".as_ref()]);
    assert_eq!(lease.events()[0].attempts, 1);
    q.ack(lease).unwrap();
    assert_eq!(q.replay_dead("t", |_| true).unwrap(), 1);
    let lease = q.lease("t", 50).unwrap().unwrap();
    assert_eq!(lease.events()[0].id.seq(), seqs[1]);
}

#[tokio::test]
async fn a_replayed_dead_letter_keyed_like_an_acknowledged_chunk_survives_its_deletion_and_a_reopen()
 {
    let dir = tempfile::tempdir().unwrap();
    let first_seq;
    {
        let q = open(dir.path());
        for i in 0..3 {
            let _ = q
                .enqueue_durable("t", format!("{i}").into_bytes())
                .await
                .unwrap();
        }
        let lease = q.lease("t", 50).unwrap().unwrap();
        first_seq = lease.events()[0].seq();
        // The chunk's first event is refused, the others delivered: the chunk is
        // acknowledged (its body awaits the bulk delete) and a dead letter has its key.
        q.settle(lease, Settlement::delivered().dead(first_seq, "bad"))
            .unwrap();
        assert_eq!(q.replay_dead("t", |_| true).unwrap(), 1);
        // Enough acks of other chunks to trigger bulk deletes.
        for i in 0..200 {
            let _ = q
                .enqueue_durable("u", format!("{i}").into_bytes())
                .await
                .unwrap();
        }
        while let Some(l) = q.lease("u", 1).unwrap() {
            q.ack(l).unwrap();
        }
        q.close();
    }
    let q = open(dir.path());
    let lease = q
        .lease("t", 50)
        .unwrap()
        .expect("the replayed event is still queued");
    assert_eq!(lease.events().len(), 1);
    assert_eq!(lease.events()[0].seq(), first_seq);
    assert_eq!(lease.events()[0].payload.as_ref(), b"0");
    assert_eq!(q.stats().quarantined_records, 0);
}

/// Every call that returns a `Result` checks its topic: a path, an empty
/// name or a NUL is `InvalidTopic`, never `Ok` (`purge`, `purge_dead`,
/// `dead_letters` and `peek` took any string before; found by the review of
/// issue 21: `purge_dead("../x") answered Ok(()), not InvalidTopic`). And
/// `subscribe` of such a name keeps nothing and its receiver is closed.
#[tokio::test]
async fn every_call_refuses_a_name_no_topic_may_have() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), QueueConfig::default()).unwrap();
    let invalid = |r: Result<(), evspool::QueueError>, call: &str, name: &str| {
        assert!(
            matches!(r, Err(evspool::QueueError::InvalidTopic { .. })),
            "{call}({name:?}) answered {r:?}, not InvalidTopic"
        );
    };
    for name in ["../x", "", "a\0b", ".", ".."] {
        invalid(q.enqueue(name, b"{}".to_vec()).map(|_| ()), "enqueue", name);
        invalid(
            q.enqueue_durable(name, b"{}".to_vec()).await.map(|_| ()),
            "enqueue_durable",
            name,
        );
        invalid(q.lease(name, 1).map(|_| ()), "lease", name);
        invalid(
            q.replay_dead(name, |_| true).map(|_| ()),
            "replay_dead",
            name,
        );
        invalid(q.purge_dead(name, |_| true).map(|_| ()), "purge_dead", name);
        invalid(q.purge(name).map(|_| ()), "purge", name);
        invalid(
            q.dead_letters(name, 0, 10).map(|_| ()),
            "dead_letters",
            name,
        );
        invalid(q.peek(name, 0, 10).map(|_| ()), "peek", name);
        let mut rx = q.subscribe(name);
        assert!(rx.changed().await.is_err(), "subscribe({name:?}) is closed");
        assert_eq!(q.retry_now(name), 0);
    }
    assert!(q.topics().is_empty(), "{:?}", q.topics());
    q.close();
}

/// Wholly expired, partly expired and fresh chunks in one lease.
#[tokio::test]
async fn a_lease_of_fresh_partly_expired_and_fresh_chunks_keeps_each_chunks_events_and_settles() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = QueueConfig {
        chunk_max_events: 4,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    cfg.max_age = Some(Duration::from_secs(1));
    let q = Queue::open(dir.path(), cfg).unwrap();
    // Chunk 1: 1..=4 old; chunk 5: 5,6 old + 7,8 fresh; chunk 9: 9..=12 fresh.
    for i in 1..=6u64 {
        assert!(matches!(
            q.enqueue("t", format!("{{\"e\":{i}}}")).unwrap(),
            evspool::Enqueued::Accepted(_)
        ));
    }
    tokio::time::sleep(Duration::from_millis(1_150)).await;
    for i in 7..=12u64 {
        assert!(matches!(
            q.enqueue("t", format!("{{\"e\":{i}}}")).unwrap(),
            evspool::Enqueued::Accepted(_)
        ));
    }
    q.sync().await.unwrap();
    let l = q.lease("t", 100).unwrap().expect("fresh events");
    let got: Vec<(u64, Vec<u8>)> = l
        .events()
        .iter()
        .map(|e| (e.seq(), e.payload.to_vec()))
        .collect();
    let want: Vec<(u64, Vec<u8>)> = (7..=12u64)
        .map(|i| (i, format!("{{\"e\":{i}}}").into_bytes()))
        .collect();
    assert_eq!(got, want);
    // Nack: everything comes back, once, with its payload.
    q.nack(l, Duration::ZERO, "again").unwrap();
    let l = q.lease("t", 100).unwrap().expect("nacked events back");
    let again: Vec<(u64, Vec<u8>)> = l
        .events()
        .iter()
        .map(|e| (e.seq(), e.payload.to_vec()))
        .collect();
    assert_eq!(again, want);
    assert!(l.events().iter().all(|e| e.attempts == 1), "attempts");
    q.ack(l).unwrap();
    assert_eq!(q.stats().total.events, 0);
    assert!(q.lease("t", 100).unwrap().is_none());
}
