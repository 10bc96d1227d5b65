//! Second review of this session's fixes: a lease that finds a damaged
//! chunk gives back the chunks it picked after it (1d32b7e), a cancelled
//! durable producer next to W6's fail-closed guard (85e2364), and an apply
//! that panics poisoning the apply lock (c16b69f). Each
//! `#[ignore = "finding: ..."]` test failed on the code it was written
//! against; the others pin what held.

use super::{
    TOPIC, config, damage_entry, fsync_config, payload, purge_that_panics, queued, runtime, turn,
};
use evspool::{Queue, QueueConfig, QueueError, Settlement};
use std::path::Path;
use std::time::Duration;

/// Durable events `from..=to`, each its own entry (and, with
/// `chunk_max_events: 1`, its own chunk).
fn durable_events(q: &Queue, rt: &tokio::runtime::Runtime, from: u64, to: u64) {
    rt.block_on(async {
        for i in from..=to {
            let id = q.enqueue_durable(TOPIC, payload(i)).await.unwrap();
            assert_eq!(id.id().unwrap().seq(), i);
        }
        q.sync().await.unwrap();
    });
}

/// The counters agree with what is queued, nothing is leased, no drift.
fn consistent(q: &Queue, queued_events: u64) {
    let stats = q.stats();
    assert_eq!(stats.total.events, queued_events, "{stats:?}");
    let t = stats.topics.get(TOPIC).cloned().unwrap_or_default();
    assert_eq!(t.leased.events, 0, "nothing leased: {t:?}");
    let report = q.verify().unwrap();
    assert!(!report.drifted(), "{report:?}");
}

/// Leases to the end, acking each lease; returns the seqs in lease order.
fn drain_order(q: &Queue, size: usize) -> Vec<u64> {
    let mut order = Vec::new();
    while let Some(l) = q.lease(TOPIC, size).unwrap() {
        let t = q.stats().topics.get(TOPIC).cloned().unwrap_or_default();
        assert_eq!(
            t.leased.events,
            l.len() as u64,
            "the leased count is the lease's events"
        );
        order.extend(l.events().iter().map(|e| e.seq()));
        q.ack(l).unwrap();
    }
    order
}

fn store_with(dir: &Path, cfg: &QueueConfig, rt: &tokio::runtime::Runtime, n: u64, bad: &[u64]) {
    {
        let q = Queue::open(dir, cfg.clone()).unwrap();
        durable_events(&q, rt, 1, n);
        q.close();
    }
    for s in bad {
        damage_entry(dir, TOPIC, *s);
    }
}

/// Since 1d32b7e a lease contains at most one damaged chunk per pass of its
/// bounded loop (`for _ in 0..64`): it stops reading at the first damaged
/// chunk and gives the rest back. Before, one pass contained every damaged
/// chunk it picked. So a topic whose first 70 chunks are wholly damaged (a
/// bad stretch of a body file over small chunks) answers a lease of 1000
/// with `Ok(None)` — "nothing is ready" — while five intact events are
/// ready, and each call costs 64 picks and releases of every chunk (it
/// failed with "the first lease of 1000 (ready events left: 11) left: []
/// right: [71, 72, 73, 74, 75]"). Fixed: only a damaged chunk with intact
/// events put back stops the pass; one damaged whole puts nothing back, and
/// the lease reads on. 63 such chunks, within the passes, held before and
/// after.
#[test]
fn a_lease_past_many_wholly_damaged_chunks_hands_out_the_intact_events() {
    // Past the loop's 64 passes (the finding), and within them (what held).
    for (damaged, total) in [(70u64, 75u64), (63, 66)] {
        lease_past_wholly_damaged_chunks(damaged, total);
    }
}

/// `total` durable events in chunks of one, the first `damaged` damaged
/// whole: the first lease hands out the intact ones, and the counters agree.
fn lease_past_wholly_damaged_chunks(damaged: u64, total: u64) {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 1,
        ..config()
    };
    let bad: Vec<u64> = (1..=damaged).collect();
    store_with(dir.path(), &cfg, &rt, total, &bad);
    let q = Queue::open(dir.path(), cfg).unwrap();
    assert_eq!(q.readiness(TOPIC).ready_events, total);
    let first = q.lease(TOPIC, 1000).unwrap();
    let got: Vec<u64> = first
        .as_ref()
        .map(|l| l.events().iter().map(|e| e.seq()).collect())
        .unwrap_or_default();
    let ready = q.readiness(TOPIC).ready_events;
    assert_eq!(
        got,
        (damaged + 1..=total).collect::<Vec<_>>(),
        "{damaged} damaged: the first lease of 1000 (ready events left: {ready})"
    );
    q.ack(first.expect("the intact events")).unwrap();
    assert_eq!(q.stats().quarantined_records, damaged);
    consistent(&q, 0);
    q.close();
}

/// What held: damage in the last chunk picked, in every chunk picked, a
/// whole chunk damaged (no intact run), and damage at the first and the
/// last entry of a chunk: the lease order is seq order without the damaged
/// seqs, the leased count is each lease's size, nothing stays leased, and
/// `verify` finds no drift.
#[test]
fn damage_at_the_edges_of_a_lease_keeps_the_order_and_the_counts() {
    let _t = turn();
    let rt = runtime();
    let root = tempfile::tempdir().unwrap();
    let cases: &[(usize, &[u64], usize)] = &[
        // (chunk_max_events, damaged first seqs of entries, lease size)
        (3, &[10], 10),
        (3, &[7], 9),
        (3, &[1, 4, 7, 10], 10),
        (1, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10),
        (1, &[1, 3, 5], 2),
        (3, &[3, 4], 6),
        (3, &[6, 9], 6),
        (1, &[4], 10),
    ];
    for (k, (chunk, bad, size)) in cases.iter().enumerate() {
        let dir = root.path().join(k.to_string());
        let cfg = QueueConfig {
            chunk_max_events: *chunk,
            ..config()
        };
        store_with(&dir, &cfg, &rt, 10, bad);
        let q = Queue::open(&dir, cfg).unwrap();
        let order = drain_order(&q, *size);
        let want: Vec<u64> = (1..=10).filter(|s| !bad.contains(s)).collect();
        assert_eq!(order, want, "case {k}: chunks of {chunk}, damaged {bad:?}");
        assert_eq!(q.stats().quarantined_records, bad.len() as u64, "case {k}");
        consistent(&q, 0);
        q.close();
    }
}

/// What held: retried chunks (one attempt each) with damage in the middle:
/// the chunks given back after the damaged one keep their attempts (one,
/// not two), and the damaged chunk's intact pieces keep theirs.
#[test]
fn chunks_given_back_after_damage_keep_their_attempts() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 3,
        ..config()
    };
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        durable_events(&q, &rt, 1, 10);
        let l = q.lease(TOPIC, 100).unwrap().unwrap();
        assert_eq!(l.len(), 10);
        q.nack(l, Duration::ZERO, "try again").unwrap();
        rt.block_on(q.sync()).unwrap();
        q.close();
    }
    damage_entry(dir.path(), TOPIC, 5);
    let q = Queue::open(dir.path(), cfg).unwrap();
    let mut order = Vec::new();
    while let Some(l) = q.lease(TOPIC, 10).unwrap() {
        for e in l.events() {
            assert_eq!(e.attempts, 1, "seq {} attempts", e.seq());
            order.push(e.seq());
        }
        q.ack(l).unwrap();
    }
    assert_eq!(order, vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    consistent(&q, 0);
    q.close();
}

/// What held: a lease over an expired chunk, a damaged one and fresh ones:
/// the expired events are dropped (counted), the damaged entry quarantined,
/// and the intact and fresh events come out oldest first.
#[test]
fn a_lease_over_expired_and_damaged_chunks_keeps_the_order() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 3,
        max_age: Some(Duration::from_millis(1500)),
        ..config()
    };
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        durable_events(&q, &rt, 1, 3);
        std::thread::sleep(Duration::from_millis(1000));
        durable_events(&q, &rt, 4, 10);
        q.close();
    }
    damage_entry(dir.path(), TOPIC, 5);
    std::thread::sleep(Duration::from_millis(700));
    let q = Queue::open(dir.path(), cfg).unwrap();
    let order = drain_order(&q, 10);
    assert_eq!(order, vec![4, 6, 7, 8, 9, 10]);
    let stats = q.stats();
    assert_eq!(stats.quarantined_records, 1);
    assert_eq!(stats.drops.values().sum::<u64>(), 3, "{:?}", stats.drops);
    consistent(&q, 0);
    q.close();
}

/// What held: the lease handed out before the damaged chunk expires (a
/// short `lease_timeout`) while it is held; the next lease takes its events
/// again (same seqs, unattempted), then the intact pieces and the rest in
/// order; the expired lease's ack is refused as lost. A release of the
/// lease handed out, and a settle of it, after the give-back leave the
/// counters right.
#[test]
fn a_lease_that_found_damage_then_expires_or_is_released_keeps_the_counts() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 3,
        lease_timeout: Duration::from_millis(100),
        ..config()
    };
    store_with(dir.path(), &cfg, &rt, 10, &[5]);
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    let l = q.lease(TOPIC, 10).unwrap().unwrap();
    assert_eq!(
        l.events().iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(q.stats().topics[TOPIC].leased.events, 3);
    std::thread::sleep(Duration::from_millis(200));
    let again = q.lease(TOPIC, 10).unwrap().unwrap();
    assert_eq!(
        again.events().iter().map(|e| e.seq()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 6, 7, 8, 9, 10],
        "the expired lease's events first, then the rest in order"
    );
    assert!(again.events().iter().all(|e| e.attempts == 0));
    assert!(
        matches!(q.ack(l), Err(QueueError::LeaseLost { .. })),
        "the expired lease is lost"
    );
    q.release(again);
    consistent(&q, 9);
    // A release, then a partial settle, of a lease that gave chunks back.
    let l = q.lease(TOPIC, 4).unwrap().unwrap();
    q.release(l);
    consistent(&q, 9);
    let l = q.lease(TOPIC, 4).unwrap().unwrap();
    let first = l.events()[0].seq();
    q.settle(l, Settlement::delivered().retry(first)).unwrap();
    q.retry_now(TOPIC);
    let left = queued(&q, TOPIC);
    assert!(left.contains_key(&first));
    consistent(&q, left.len() as u64);
    q.close();
}

/// What held: a lease racing other leases on a topic with damage (two
/// threads leasing and acking): every intact event is handed out once, the
/// damaged ones never, and the counters end at zero.
#[test]
fn concurrent_leases_over_damage_hand_out_each_intact_event_once() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 2,
        ..config()
    };
    let bad: Vec<u64> = (1..=60).filter(|s| s % 7 == 0).collect();
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        durable_events(&q, &rt, 1, 60);
        q.close();
    }
    for s in &bad {
        damage_entry(dir.path(), TOPIC, *s);
    }
    let q = Queue::open(dir.path(), cfg).unwrap();
    let seen = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    match q.lease(TOPIC, 5).unwrap() {
                        Some(l) => {
                            seen.lock()
                                .unwrap()
                                .extend(l.events().iter().map(|e| e.seq()));
                            q.ack(l).unwrap();
                        }
                        None => {
                            if q.readiness(TOPIC).ready_events == 0 {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    let mut seen = seen.into_inner().unwrap();
    seen.sort_unstable();
    let want: Vec<u64> = (1..=60).filter(|s| !bad.contains(s)).collect();
    assert_eq!(seen, want);
    consistent(&q, 0);
    q.close();
}

// ---------------------------------------------------------------------------
// Cancelled durable producers next to W6's fail-closed guard
// ---------------------------------------------------------------------------

/// What held: many durable producers (single and batch) cancelled by a
/// tiny timeout while they wait for their topic's group write and sync
/// leave the store open; later durable calls succeed, and the counters
/// agree with what is queued (no reservation leaked).
#[test]
fn cancelled_durable_producers_do_not_fail_the_store_closed() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fsync_config();
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let d = Duration::from_micros(i % 50);
                if i % 2 == 0 {
                    tokio::time::timeout(d, q.enqueue_durable(TOPIC, payload(i)))
                        .await
                        .map(|r| r.map(|_| ()))
                } else {
                    tokio::time::timeout(
                        d,
                        q.enqueue_batch_durable(TOPIC, vec![payload(i), payload(i + 1000)]),
                    )
                    .await
                    .map(|r| r.map(|_| ()))
                }
            }));
        }
        for t in tasks {
            if let Ok(r) = t.await.unwrap() {
                r.unwrap();
            }
        }
    });
    assert_eq!(q.stats().failed_closed, None);
    let _ = rt
        .block_on(q.enqueue_durable(TOPIC, payload(9999)))
        .unwrap();
    rt.block_on(q.sync()).unwrap();
    let n = queued(&q, TOPIC).len() as u64;
    consistent(&q, n);
    q.close();
    drop(q);
    let q = Queue::open(dir.path(), cfg).unwrap();
    assert_eq!(queued(&q, TOPIC).len() as u64, n, "the reopen agrees");
    q.close();
}

/// What held: a producer future dropped while its task unwinds from an
/// unrelated panic (the log not poisoned) leaves the store open.
#[test]
fn a_producer_dropped_by_an_unrelated_panic_leaves_the_store_open() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = fsync_config();
    let q = Queue::open(dir.path(), cfg).unwrap();
    let joined = {
        let q = q.clone();
        rt.block_on(rt.spawn(async move {
            let mut f = Box::pin(q.enqueue_durable(TOPIC, payload(1)));
            // Poll it once, then unwind with it pending or done.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = std::future::Future::poll(f.as_mut(), &mut cx);
            panic!("an unrelated panic");
        }))
    };
    assert!(joined.is_err_and(|e| e.is_panic()));
    assert_eq!(q.stats().failed_closed, None);
    let _ = rt.block_on(q.enqueue_durable(TOPIC, payload(2))).unwrap();
    q.close();
}

// ---------------------------------------------------------------------------
// An apply that panics (the poisoned apply lock)
// ---------------------------------------------------------------------------

/// A purge whose apply panics inside the trace write: the store fails
/// closed and the apply lock is poisoned.
fn panicking_purge(q: &Queue, rt: &tokio::runtime::Runtime) {
    for i in 1..=4 {
        let _ = q.enqueue("p", payload(i)).unwrap();
    }
    rt.block_on(q.sync()).unwrap();
    purge_that_panics(q);
    assert!(q.stats().failed_closed.is_some(), "failed closed");
}

/// What held: after an apply panicked, reading dead letters neither hangs
/// nor panics, `close` returns, an in-place `reopen` gets a fresh apply
/// lock (durable calls, leases, acks and a purge work and persist), and
/// the dead letters written before are all there.
#[test]
fn after_an_apply_panicked_reads_close_and_reopen_work() {
    let _t = turn();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    rt.block_on(async {
        for i in 1..=3 {
            let _ = q.enqueue_durable("d", payload(i)).await.unwrap();
        }
    });
    let l = q.lease("d", 10).unwrap().unwrap();
    let mut s = Settlement::delivered();
    for e in l.events() {
        s = s.dead(e.seq(), "bad");
    }
    q.settle(l, s).unwrap();
    assert_eq!(q.dead_letters("d", 0, 10).unwrap().len(), 3);
    panicking_purge(&q, &rt);
    let dead = std::panic::catch_unwind(|| q.dead_letters("d", 0, 10));
    assert!(dead.is_ok(), "reading dead letters panicked");
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let q = q.clone();
        std::thread::spawn(move || {
            q.reopen().unwrap();
            tx.send(()).unwrap();
        });
    }
    rx.recv_timeout(Duration::from_secs(30))
        .expect("reopen after a poisoned apply lock returns");
    assert_eq!(q.stats().failed_closed, None);
    assert_eq!(q.dead_letters("d", 0, 10).unwrap().len(), 3);
    let _ = rt.block_on(q.enqueue_durable(TOPIC, payload(10))).unwrap();
    let l = q.lease(TOPIC, 10).unwrap().unwrap();
    q.ack(l).unwrap();
    assert_eq!(q.purge("d").unwrap(), 0);
    assert_eq!(q.purge_dead("d", |_| true).unwrap(), 3);
    rt.block_on(q.sync()).unwrap();
    assert!(!q.verify().unwrap().drifted());
    q.close();
    drop(q);
    let q = Queue::open(dir.path(), cfg).unwrap();
    assert!(queued(&q, TOPIC).is_empty(), "the ack persisted");
    assert!(
        q.dead_letters("d", 0, 10).unwrap().is_empty(),
        "the purge of dead letters persisted"
    );
    q.close();
}
