//! The ceiling and its overflow policies, `max_age` and `max_event_bytes`, with
//! exact counts: what is stored, what is dropped, and under which reason.

use evspool::{DropReason, Enqueued, OverflowPolicy, Queue, QueueConfig, QueueError};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A queue that commits only when a chunk fills or someone syncs.
fn config(policy: OverflowPolicy, max_events: u64, chunk_max_events: usize) -> QueueConfig {
    let mut cfg = QueueConfig {
        chunk_max_events,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    cfg.ceiling.policy = policy;
    cfg.ceiling.max_events = max_events;
    cfg
}

fn p(i: u64) -> Vec<u8> {
    format!("{{\"n\":{i}}}").into_bytes()
}

/// Syncs, then leases and acks everything of `topic`; returns the payloads.
async fn drain(q: &Queue, topic: &str) -> Vec<Vec<u8>> {
    q.sync().await.unwrap();
    let mut out = Vec::new();
    while let Some(lease) = q.lease(topic, 100).unwrap() {
        out.extend(lease.events().iter().map(|e| e.payload.to_vec()));
        q.ack(lease).unwrap();
    }
    out
}

fn drops(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn accepted_seq(out: Enqueued) -> u64 {
    match out {
        Enqueued::Accepted(id) => id.seq(),
        other => panic!("expected the event to be accepted, got {other:?}"),
    }
}

#[tokio::test]
async fn reject_refuses_the_event_over_the_event_limit_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::Reject, 5, 50)).unwrap();
    for i in 1..=5 {
        accepted_seq(q.enqueue("t", p(i)).unwrap());
    }
    match q.enqueue("t", p(6)) {
        Err(QueueError::Full {
            events,
            bytes,
            max_events,
            ..
        }) => {
            assert_eq!((events, max_events), (5, 5));
            assert_eq!(bytes, (1..=5).map(|i| p(i).len() as u64).sum::<u64>());
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(matches!(
        q.enqueue_durable("t", p(7)).await,
        Err(QueueError::Full { .. })
    ));
    let stats = q.stats();
    assert_eq!(
        stats.total.events, 5,
        "nothing was stored for the refused events"
    );
    assert!(
        stats.drops.is_empty(),
        "a refusal is not a drop: {:?}",
        stats.drops
    );
    assert_eq!(drain(&q, "t").await, (1..=5).map(p).collect::<Vec<_>>());
    // Space again: accepted, with the next seq (refused events used none).
    assert_eq!(accepted_seq(q.enqueue("t", p(8)).unwrap()), 6);
}

#[tokio::test]
async fn reject_counts_payload_bytes_against_max_bytes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(OverflowPolicy::Reject, 1_000, 50);
    cfg.max_event_bytes = bytesize::ByteSize::b(100);
    cfg.ceiling.max_bytes = bytesize::ByteSize::b(250);
    let q = Queue::open(dir.path(), cfg).unwrap();
    accepted_seq(q.enqueue("t", vec![b'a'; 100]).unwrap());
    accepted_seq(q.enqueue("t", vec![b'b'; 100]).unwrap());
    assert!(matches!(
        q.enqueue("t", vec![b'c'; 51]),
        Err(QueueError::Full { bytes: 200, .. })
    ));
    accepted_seq(q.enqueue("t", vec![b'd'; 50]).unwrap());
    assert!(matches!(
        q.enqueue("t", vec![b'e'; 1]),
        Err(QueueError::Full { bytes: 250, .. })
    ));
    // An empty event still fits: only events and bytes are limited.
    accepted_seq(q.enqueue("t", Vec::new()).unwrap());
    assert_eq!(q.stats().total.bytes, 250);
    assert_eq!(q.stats().total.events, 4);
}

#[tokio::test]
async fn drop_newest_accepts_the_call_discards_the_event_and_counts_it_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropNewest, 3, 50)).unwrap();
    for i in 1..=3 {
        accepted_seq(q.enqueue("a", p(i)).unwrap());
    }
    for i in 4..=6 {
        assert_eq!(
            q.enqueue("a", p(i)).unwrap(),
            Enqueued::Dropped(DropReason::CeilingNewest)
        );
    }
    assert_eq!(
        q.enqueue_durable("b", p(7)).await.unwrap(),
        Enqueued::Dropped(DropReason::CeilingNewest)
    );
    let stats = q.stats();
    assert_eq!(stats.total.events, 3);
    assert_eq!(stats.drops, drops(&[("ceiling_newest", 4)]));
    assert_eq!(stats.topics["a"].drops, drops(&[("ceiling_newest", 3)]));
    assert_eq!(stats.topics["b"].drops, drops(&[("ceiling_newest", 1)]));
    assert_eq!(drain(&q, "a").await, (1..=3).map(p).collect::<Vec<_>>());
    assert!(drain(&q, "b").await.is_empty());
    // The counts are the store's, not the process's: they survive a restart.
    q.close();
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropNewest, 3, 50)).unwrap();
    let stats = q.stats();
    assert_eq!(stats.drops, drops(&[("ceiling_newest", 4)]));
    assert_eq!(stats.topics["a"].drops, drops(&[("ceiling_newest", 3)]));
    for i in 8..=10 {
        accepted_seq(q.enqueue("a", p(i)).unwrap());
    }
    assert_eq!(
        q.enqueue("a", p(11)).unwrap(),
        Enqueued::Dropped(DropReason::CeilingNewest)
    );
    assert_eq!(
        q.stats().drops,
        drops(&[("ceiling_newest", 5)]),
        "counted on"
    );
}

#[tokio::test]
async fn drop_oldest_evicts_whole_unleased_chunks_from_the_head_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropOldest, 4, 2)).unwrap();
    for i in 1..=4 {
        accepted_seq(q.enqueue("t", p(i)).unwrap());
    }
    q.sync().await.unwrap();
    // Chunks [1,2] and [3,4] are committed; 5 evicts the oldest one.
    assert_eq!(accepted_seq(q.enqueue("t", p(5)).unwrap()), 5);
    assert_eq!(q.stats().total.events, 3);
    assert_eq!(q.stats().drops, drops(&[("ceiling_oldest", 2)]));
    accepted_seq(q.enqueue("t", p(6)).unwrap());
    q.sync().await.unwrap();
    // A leased chunk is never evicted: [3,4] is held, so [5,6] goes.
    let held = q.lease("t", 1).unwrap().unwrap();
    let held_payloads: Vec<Vec<u8>> = held.events().iter().map(|e| e.payload.to_vec()).collect();
    assert_eq!(held_payloads, vec![p(3), p(4)]);
    accepted_seq(q.enqueue("t", p(7)).unwrap());
    accepted_seq(q.enqueue("t", p(8)).unwrap());
    let stats = q.stats();
    assert_eq!(stats.total.events, 4);
    assert_eq!(stats.drops, drops(&[("ceiling_oldest", 4)]));
    assert_eq!(stats.topics["t"].drops, drops(&[("ceiling_oldest", 4)]));
    q.ack(held).unwrap();
    assert_eq!(drain(&q, "t").await, vec![p(7), p(8)]);
}

#[tokio::test]
async fn drop_oldest_evicts_uncommitted_events_one_by_one_when_nothing_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropOldest, 4, 50)).unwrap();
    for i in 1..=7 {
        accepted_seq(q.enqueue("t", p(i)).unwrap());
    }
    let stats = q.stats();
    assert_eq!(stats.total.events, 4);
    assert_eq!(stats.drops, drops(&[("ceiling_oldest", 3)]));
    assert_eq!(drain(&q, "t").await, (4..=7).map(p).collect::<Vec<_>>());
}

#[tokio::test]
async fn drop_oldest_evicts_events_of_full_chunks_waiting_for_the_committer() {
    let dir = tempfile::tempdir().unwrap();
    // Chunks of 2 are sealed as they fill but not committed for a minute.
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropOldest, 4, 2)).unwrap();
    for i in 1..=6 {
        assert_eq!(accepted_seq(q.enqueue("t", p(i)).unwrap()), i);
    }
    let stats = q.stats();
    assert_eq!(stats.total.events, 4);
    assert_eq!(
        stats.drops,
        drops(&[("ceiling_oldest", 2)]),
        "the newest events are kept; none is dropped as newest"
    );
    assert_eq!(drain(&q, "t").await, (3..=6).map(p).collect::<Vec<_>>());
}

#[tokio::test]
async fn drop_oldest_counts_an_evicted_event_under_its_own_topic() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropOldest, 3, 50)).unwrap();
    for i in 1..=3 {
        accepted_seq(q.enqueue("a", p(i)).unwrap());
    }
    accepted_seq(q.enqueue("b", p(4)).unwrap());
    let stats = q.stats();
    assert_eq!(stats.total.events, 3);
    assert_eq!(stats.topics["a"].drops, drops(&[("ceiling_oldest", 1)]));
    assert!(
        stats.topics.get("b").is_none_or(|t| t.drops.is_empty()),
        "nothing of b was dropped: {:?}",
        stats.topics.get("b")
    );
    assert_eq!(drain(&q, "a").await, vec![p(2), p(3)]);
    assert_eq!(drain(&q, "b").await, vec![p(4)]);
}

#[tokio::test]
async fn block_releases_a_waiting_producer_when_a_consumer_acks() {
    let dir = tempfile::tempdir().unwrap();
    // One event a chunk, so the consumer below acks exactly one event.
    let mut cfg = config(OverflowPolicy::Block, 3, 1);
    cfg.ceiling.block_timeout = Duration::from_secs(10);
    let q = Queue::open(dir.path(), cfg).unwrap();
    for i in 1..=3 {
        accepted_seq(q.enqueue_durable("t", p(i)).await.unwrap());
    }
    let producer = {
        let q = q.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let out = q.enqueue_durable("t", p(4)).await;
            (out, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!producer.is_finished(), "the producer waits at the ceiling");
    assert_eq!(q.stats().total.events, 3);
    let lease = q.lease("t", 1).unwrap().unwrap();
    q.ack(lease).unwrap();
    let (out, waited) = tokio::time::timeout(Duration::from_secs(5), producer)
        .await
        .expect("the producer is released well before its timeout")
        .unwrap();
    assert_eq!(accepted_seq(out.unwrap()), 4);
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert!(q.stats().drops.is_empty());
    assert_eq!(drain(&q, "t").await, vec![p(2), p(3), p(4)]);
}

#[tokio::test]
async fn block_times_out_with_full_when_nobody_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(OverflowPolicy::Block, 2, 50);
    cfg.ceiling.block_timeout = Duration::from_millis(200);
    let q = Queue::open(dir.path(), cfg).unwrap();
    accepted_seq(q.enqueue("t", p(1)).unwrap());
    accepted_seq(q.enqueue("t", p(2)).unwrap());

    let started = Instant::now();
    let out = q.enqueue_durable("t", p(3)).await;
    let waited = started.elapsed();
    assert!(
        matches!(out, Err(QueueError::Full { events: 2, .. })),
        "{out:?}"
    );
    assert!(
        waited >= Duration::from_millis(200),
        "gave up early: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "waited far too long: {waited:?}"
    );

    // The blocking (sync) enqueue times out the same way.
    let q2 = q.clone();
    let (out, waited) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        (q2.enqueue("t", p(4)), started.elapsed())
    })
    .await
    .unwrap();
    assert!(matches!(out, Err(QueueError::Full { .. })), "{out:?}");
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");

    let stats = q.stats();
    assert_eq!(
        stats.total.events, 2,
        "nothing was stored for the refused events"
    );
    assert!(stats.drops.is_empty(), "{:?}", stats.drops);
    assert_eq!(drain(&q, "t").await, vec![p(1), p(2)]);
}

#[tokio::test]
async fn max_age_drops_old_events_at_lease_time_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(OverflowPolicy::DropNewest, 1_000, 50);
    cfg.max_age = Some(Duration::from_secs(1));
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    // A chunk that will be wholly old, then one that will be half old.
    for i in 1..=2 {
        accepted_seq(q.enqueue("t", p(i)).unwrap());
    }
    q.sync().await.unwrap();
    for i in 3..=5 {
        accepted_seq(q.enqueue("t", p(i)).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(1_150)).await;
    for i in 6..=7 {
        accepted_seq(q.enqueue("t", p(i)).unwrap());
    }
    q.sync().await.unwrap();
    assert_eq!(
        q.stats().total.events,
        7,
        "nothing is dropped before a lease looks"
    );

    let lease = q.lease("t", 100).unwrap().unwrap();
    let got: Vec<(u64, Vec<u8>)> = lease
        .events()
        .iter()
        .map(|e| (e.seq(), e.payload.to_vec()))
        .collect();
    assert_eq!(got, vec![(6, p(6)), (7, p(7))]);
    let stats = q.stats();
    assert_eq!(stats.drops, drops(&[("max_age", 5)]));
    assert_eq!(stats.topics["t"].drops, drops(&[("max_age", 5)]));
    assert_eq!(stats.total.events, 2);
    assert_eq!(stats.topics["t"].leased.events, 2);
    assert_eq!(stats.total.bytes, (p(6).len() + p(7).len()) as u64);
    q.ack(lease).unwrap();
    assert_eq!(q.stats().total.events, 0);
    q.close();
    drop(q);

    // The drop and the ack are on disk: nothing comes back.
    let q = Queue::open(dir.path(), cfg).unwrap();
    assert_eq!(q.stats().total.events, 0);
    assert!(q.lease("t", 100).unwrap().is_none());
}

#[tokio::test]
async fn max_event_bytes_refuses_a_larger_event_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(OverflowPolicy::DropNewest, 1_000, 50);
    cfg.max_event_bytes = bytesize::ByteSize::b(64);
    let q = Queue::open(dir.path(), cfg).unwrap();
    accepted_seq(q.enqueue("t", vec![b'x'; 64]).unwrap());
    match q.enqueue("t", vec![b'x'; 65]) {
        Err(QueueError::TooLarge { size, max }) => assert_eq!((size, max), (65, 64)),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        q.enqueue_durable("t", vec![b'x'; 1_000]).await,
        Err(QueueError::TooLarge {
            size: 1_000,
            max: 64
        })
    ));
    let stats = q.stats();
    assert_eq!((stats.total.events, stats.total.bytes), (1, 64));
    assert!(stats.drops.is_empty(), "a refusal is not a drop");
    assert_eq!(drain(&q, "t").await, vec![vec![b'x'; 64]]);
}

fn live(t: &evspool::TopicStats) -> (u64, u64) {
    let u = [t.ready, t.retrying, t.leased, t.uncommitted];
    (
        u.iter().map(|u| u.events).sum(),
        u.iter().map(|u| u.bytes).sum(),
    )
}

async fn busy_store(dir: &Path, cfg: &QueueConfig) -> evspool::Stats {
    let q = Queue::open(dir, cfg.clone()).unwrap();
    for i in 1..=20u64 {
        let topic = if i % 3 == 0 { "b" } else { "a" };
        let payload = vec![b'0' + (i % 10) as u8; 10 + i as usize];
        accepted_seq(q.enqueue(topic, payload).unwrap());
    }
    q.sync().await.unwrap();
    let acked = q.lease("a", 3).unwrap().unwrap();
    q.ack(acked).unwrap();
    let partial = q.lease("a", 3).unwrap().unwrap();
    let seqs: Vec<u64> = partial.events().iter().map(|e| e.seq()).collect();
    let s = evspool::Settlement::delivered()
        .dead(seqs[0], "bad field")
        .retry(seqs[1])
        .retry_after(Duration::from_secs(3600), "http 503");
    q.settle(partial, s).unwrap();
    let nacked = q.lease("b", 3).unwrap().unwrap();
    q.nack(nacked, Duration::from_secs(3600), "http 500")
        .unwrap();
    let held = q.lease("a", 3).unwrap().unwrap();
    std::mem::forget(held);
    // Buffered and uncommitted at close: close commits them.
    for i in 21..=23u64 {
        accepted_seq(q.enqueue("b", vec![b'z'; i as usize]).unwrap());
    }
    let stats = q.stats();
    assert!(stats.topics["a"].leased.events > 0);
    assert!(stats.topics["b"].uncommitted.events > 0);
    assert!(stats.topics["b"].retrying.events > 0);
    assert_eq!(stats.topics["a"].dead.events, 1);
    q.close();
    stats
}

#[tokio::test]
async fn reopening_rebuilds_the_accounting_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let before = busy_store(dir.path(), &config(OverflowPolicy::Reject, 1_000, 3)).await;
    // 23 accepted, 3 acked, 1 delivered and 1 dead-lettered in a partial settlement.
    assert_eq!(before.total.events, 18);

    // Reopened with a ceiling of exactly what it holds: 18 live events and
    // the dead letter (dead letters count against the ceiling).
    let q = Queue::open(dir.path(), config(OverflowPolicy::Reject, 19, 3)).unwrap();
    let after = q.stats();
    assert_eq!(
        after.total, before.total,
        "total events and bytes survive a reopen"
    );
    for name in ["a", "b"] {
        let (b, a) = (&before.topics[name], &after.topics[name]);
        assert_eq!(live(a), live(b), "{name}: live events and bytes");
        assert_eq!(a.dead, b.dead, "{name}: dead letters");
        assert_eq!(
            a.retrying, b.retrying,
            "{name}: delayed retries stay delayed"
        );
        assert_eq!(a.leased.events, 0, "{name}: leases do not survive a reopen");
        assert_eq!(
            a.uncommitted.events, 0,
            "{name}: close committed everything"
        );
    }
    // The ceiling works from the rebuilt totals: the store is at its 19.
    assert!(matches!(
        q.enqueue("a", b"over".to_vec()),
        Err(QueueError::Full { events: 19, .. })
    ));
    assert_eq!(q.stats().ceiling.stored.events, 19);
    let lease = q.lease("a", 1).unwrap().unwrap();
    let n = lease.len() as u64;
    q.ack(lease).unwrap();
    assert_eq!(q.stats().total.events, 18 - n);
    accepted_seq(q.enqueue("a", b"fits".to_vec()).unwrap());
}

/// Settles every leased event of `topic` as a dead letter.
fn dead_letter_everything(q: &Queue, topic: &str) -> u64 {
    let mut n = 0;
    while let Some(lease) = q.lease(topic, 100).unwrap() {
        let mut s = evspool::Settlement::delivered();
        for e in lease.events() {
            s = s.dead(e.seq(), "rejected");
        }
        n += q.settle(lease, s).unwrap().dead;
    }
    n
}

#[tokio::test]
async fn dead_letters_count_against_the_ceiling_until_purged() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::Reject, 100, 10)).unwrap();
    // 2,000 events a sink can never send: at most 100 are ever stored.
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..2_000 {
        match q.enqueue("a", p(i)) {
            Ok(_) => accepted += 1,
            Err(QueueError::Full { .. }) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        if i % 50 == 49 {
            q.sync().await.unwrap();
            dead_letter_everything(&q, "a");
        }
    }
    let stats = q.stats();
    assert_eq!((accepted, refused), (100, 1_900));
    assert_eq!(stats.topics["a"].dead.events, 100, "{stats:?}");
    assert_eq!(stats.total.events, 0);
    assert_eq!(stats.ceiling.stored.events, 100);
    assert_eq!(stats.ceiling.used_percent, 100.0);
    // Purging dead letters makes room again.
    assert_eq!(q.purge_dead("a", |_| true).unwrap(), 100);
    accepted_seq(q.enqueue("a", p(2_000)).unwrap());
    assert_eq!(q.stats().ceiling.stored.events, 1);
    assert!(!q.verify().unwrap().drifted());
}

#[tokio::test]
async fn drop_oldest_evicts_dead_letters_older_than_every_queued_event_first() {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropOldest, 4, 4)).unwrap();
    for i in 1..=4 {
        accepted_seq(q.enqueue("a", p(i)).unwrap());
    }
    q.sync().await.unwrap();
    assert_eq!(dead_letter_everything(&q, "a"), 4);
    // Two new events evict the two oldest dead letters, counted.
    for i in 5..=6 {
        accepted_seq(q.enqueue("a", p(i)).unwrap());
    }
    let stats = q.stats();
    assert_eq!(stats.drops, drops(&[("ceiling_oldest", 2)]));
    let dead: Vec<u64> = q
        .dead_letters("a", 0, 10)
        .unwrap()
        .iter()
        .map(|d| d.id.seq())
        .collect();
    assert_eq!(dead, vec![3, 4], "the oldest went first");
    assert_eq!(stats.ceiling.stored.events, 4);
    assert!(!q.verify().unwrap().drifted());
    q.close();
    // The evictions are traced: a rebuild without sled does not bring them back.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let q = Queue::open(dir.path(), config(OverflowPolicy::DropOldest, 4, 4)).unwrap();
    let dead: Vec<u64> = q
        .dead_letters("a", 0, 10)
        .unwrap()
        .iter()
        .map(|d| d.id.seq())
        .collect();
    assert_eq!(dead, vec![3, 4]);
    assert_eq!(drain(&q, "a").await, vec![p(5), p(6)]);
}

#[tokio::test]
async fn quarantined_bytes_count_against_the_ceiling() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || config(OverflowPolicy::Reject, 1_000, 1);
    {
        let q = Queue::open(dir.path(), cfg()).unwrap();
        for i in 1..=3 {
            accepted_seq(q.enqueue("a", vec![b'x'; 200 + i as usize]).unwrap());
        }
        q.sync().await.unwrap();
        q.close();
    }
    // One byte inside the second entry's record.
    let seg = dir.path().join("bodies").join("a").join("1.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let second = 40 + (16 + 220) + 16 + 100;
    bytes[second] ^= 0x10;
    std::fs::write(&seg, bytes).unwrap();
    let q = Queue::open(dir.path(), cfg()).unwrap();
    assert_eq!(q.verify().unwrap().quarantined, 1);
    let stats = q.stats();
    assert_eq!(stats.total.events, 2);
    assert!(stats.quarantined_bytes > 200, "{}", stats.quarantined_bytes);
    assert_eq!(
        stats.ceiling.stored.bytes,
        stats.total.bytes + stats.quarantined_bytes,
        "the ceiling counts quarantine's bytes"
    );
}
