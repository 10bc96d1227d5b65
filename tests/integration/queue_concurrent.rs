//! A concurrent model test of the queue core: several threads run random
//! operations on one store at once — buffered, durable and batch enqueues,
//! leases, acks, nacks, partial settlements with dead letters, releases,
//! purges, dead-letter replays and purges, `verify` — under a tiny ceiling
//! (`drop_oldest` or `drop_newest`) and sometimes `max_age`, with close and
//! reopen or a simulated crash between phases.
//!
//! The oracle, over the whole run:
//! - no event is invented: every leased event's id was handed out by an
//!   enqueue, with exactly the payload given;
//! - no id is handed out twice;
//! - `verify` never finds the running totals or a topic's per-state counters
//!   off from a recount, at any moment, under load;
//! - every durable event ends in exactly one place: delivered, dead at the
//!   end, or dropped under a counted reason; without crashes the same holds
//!   for every accepted event, exactly: accepted = delivered + dead +
//!   dropped, where dropped sums `ceiling_oldest` and `max_age` drops and what
//!   `purge` and `purge_dead` reported.
//!
//! About 20 s in `cargo test` (two runs); `EVSPOOL_SOAK=1` runs for 10 minutes.
//! `EVSPOOL_MODEL_SEED=N` replays a run.

use evspool::{Ceiling, Enqueued, OverflowPolicy, Queue, QueueConfig, QueueError, Settlement};
use evspool_testkit::queue::block_on;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOPICS: [&str; 2] = ["a", "b"];

#[derive(Default)]
struct Oracle {
    /// Every id handed out, with its payload and whether it was durable.
    accepted: HashMap<String, (Vec<u8>, bool)>,
    /// Ids acked at least once.
    delivered: BTreeSet<String>,
    /// Ids a consumer was handed at least once.
    seen: BTreeSet<String>,
    /// Counted drops and what purges reported.
    dropped: u64,
    /// Events consumers saw before their producer recorded them (a durable
    /// event is leaseable before `enqueue_durable` returns): checked at the end.
    unchecked: Vec<(String, Vec<u8>)>,
    /// Events consumers saw that were never handed out, or with other bytes.
    invented: Vec<String>,
    /// Accepted under a `drop_newest` ceiling: no id.
    dropped_newest: u64,
    ops: u64,
}

struct Run {
    seed: u64,
    policy: OverflowPolicy,
    max_age: Option<Duration>,
    crashes: bool,
}

fn config(run: &Run) -> QueueConfig {
    QueueConfig {
        chunk_max_events: 4,
        commit_interval: Duration::from_millis(3),
        flush_interval: Duration::from_millis(20),
        max_age: run.max_age,
        lease_timeout: Duration::from_secs(60),
        ceiling: Ceiling {
            max_events: 60,
            policy: run.policy,
            block_timeout: Duration::from_millis(50),
            ..Ceiling::default()
        },
        ..QueueConfig::default()
    }
}

/// Records an enqueue's outcome.
fn record(o: &Mutex<Oracle>, out: Enqueued, payload: &[u8], durable: bool) {
    let mut o = o.lock().unwrap();
    o.ops += 1;
    match out {
        Enqueued::Accepted(id) => {
            let id = id.to_string();
            // A buffered event a crash lost before it was written may see its
            // id again; an id that was durable, or that a consumer saw, never.
            if let Some((_, was_durable)) = o.accepted.get(&id) {
                assert!(
                    !was_durable && !o.seen.contains(&id),
                    "id {id} handed out twice (durable: {was_durable})"
                );
            }
            o.accepted.insert(id, (payload.to_vec(), durable));
        }
        Enqueued::Dropped(_) => o.dropped_newest += 1,
    }
}

fn producer(q: Queue, o: Arc<Mutex<Oracle>>, stop: Arc<AtomicBool>, seed: u64, who: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let topic = TOPICS[rng.usize(..TOPICS.len())];
        let pads: Vec<usize> = (0..8).map(|_| rng.usize(0..40)).collect();
        let mut payload = || {
            n += 1;
            let pad = pads[n as usize % pads.len()];
            format!("{{\"p\":{who},\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(pad)).into_bytes()
        };
        let batch_len = rng.usize(1..7);
        match rng.u8(0..10) {
            0..=4 => {
                let p = payload();
                match q.enqueue(topic, p.clone()) {
                    Ok(out) => record(&o, out, &p, false),
                    Err(QueueError::Closed) => return,
                    Err(e) => panic!("buffered enqueue: {e}"),
                }
            }
            5..=7 => {
                let p = payload();
                match rt.block_on(q.enqueue_durable(topic, p.clone())) {
                    Ok(out) => record(&o, out, &p, true),
                    Err(QueueError::Closed) => return,
                    Err(e) => panic!("durable enqueue: {e}"),
                }
            }
            _ => {
                let batch: Vec<Vec<u8>> = (0..batch_len).map(|_| payload()).collect();
                match rt.block_on(q.enqueue_batch_durable(topic, batch.clone())) {
                    Ok(outs) => {
                        assert_eq!(outs.len(), batch.len());
                        for (out, p) in outs.into_iter().zip(&batch) {
                            record(&o, out, p, true);
                        }
                    }
                    Err(QueueError::Closed) => return,
                    Err(e) => panic!("batch enqueue: {e}"),
                }
            }
        }
        if rng.u8(0..8) == 0 {
            std::thread::yield_now();
        }
    }
}

fn consumer(q: Queue, o: Arc<Mutex<Oracle>>, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let topic = TOPICS[rng.usize(..TOPICS.len())];
        let lease = match q.lease(topic, rng.usize(1..12)) {
            Ok(Some(l)) => l,
            Ok(None) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            Err(QueueError::Closed) => return,
            Err(e) => panic!("lease: {e}"),
        };
        {
            let mut o = o.lock().unwrap();
            o.ops += 1;
            for e in lease.events() {
                let id = e.id.to_string();
                match o.accepted.get(&id) {
                    Some((p, _)) if p.as_slice() == e.payload.as_ref() => {}
                    Some(_) => o.invented.push(id.clone()),
                    None => o.unchecked.push((id.clone(), e.payload.to_vec())),
                }
                o.seen.insert(id);
            }
        }
        let ids: Vec<String> = lease.events().iter().map(|e| e.id.to_string()).collect();
        let settled = match rng.u8(0..10) {
            0..=4 => q.ack(lease).map(|_| ids.clone()),
            5 => q
                .nack(lease, Duration::from_millis(rng.u64(0..5)), "model")
                .map(|_| Vec::new()),
            6 => {
                q.release(lease);
                Ok(Vec::new())
            }
            7 => {
                drop(lease);
                Ok(Vec::new())
            }
            _ => {
                // Per event: delivered, dead or retried.
                let mut s = Settlement::delivered().retry_after(Duration::ZERO, "model");
                let mut delivered = Vec::new();
                for e in lease.events() {
                    match rng.u8(0..3) {
                        0 => delivered.push(e.id.to_string()),
                        1 => s = s.dead(e.seq(), "model dead"),
                        _ => s = s.retry(e.seq()),
                    }
                }
                q.settle(lease, s).map(|_| delivered)
            }
        };
        match settled {
            Ok(delivered) => o.lock().unwrap().delivered.extend(delivered),
            Err(QueueError::Closed | QueueError::LeaseLost { .. }) => {}
            Err(e) => panic!("settle: {e}"),
        }
    }
}

fn admin(q: Queue, o: Arc<Mutex<Oracle>>, stop: Arc<AtomicBool>, seed: u64, verifies: &AtomicU64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.u64(5..40)));
        let topic = TOPICS[rng.usize(..TOPICS.len())];
        let mut o_ = o.lock().unwrap();
        o_.ops += 1;
        drop(o_);
        match rng.u8(0..10) {
            0 => match q.purge(topic) {
                Ok(n) => o.lock().unwrap().dropped += n,
                Err(QueueError::Closed) => return,
                Err(e) => panic!("purge: {e}"),
            },
            1..=3 => match q.replay_dead(topic, |_| rng.bool()) {
                Ok(_) | Err(QueueError::Closed) => {}
                Err(e) => panic!("replay: {e}"),
            },
            4 => match q.purge_dead(topic, |_| rng.u8(0..4) == 0) {
                Ok(n) => o.lock().unwrap().dropped += n,
                Err(QueueError::Closed) => return,
                Err(e) => panic!("purge_dead: {e}"),
            },
            _ => match q.verify() {
                Ok(r) => {
                    assert!(!r.drifted(), "accounting drifted under load: {r:?}");
                    assert_eq!(r.quarantined, 0, "{r:?}");
                    verifies.fetch_add(1, Ordering::Relaxed);
                }
                Err(QueueError::Closed) => return,
                Err(e) => panic!("verify: {e}"),
            },
        }
    }
}

/// Counted drops of the store's lifetime (they survive reopen; a crash can
/// lose the last few, which the model counts when it reads them).
fn counted_drops(q: &Queue) -> u64 {
    let d = q.stats().drops;
    d.get("ceiling_oldest").copied().unwrap_or(0) + d.get("max_age").copied().unwrap_or(0)
}

fn phase(
    dir: &Path,
    run: &Run,
    o: &Arc<Mutex<Oracle>>,
    rng: &mut fastrand::Rng,
    len: Duration,
) -> (bool, u64) {
    let q = Queue::open(dir, config(run)).expect("the store reopens");
    let drops_before = counted_drops(&q);
    let stop = Arc::new(AtomicBool::new(false));
    let verifies = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for who in 0..2 {
        let (q, o, stop, seed) = (q.clone(), o.clone(), stop.clone(), rng.u64(..));
        threads.push(std::thread::spawn(move || producer(q, o, stop, seed, who)));
    }
    for _ in 0..2 {
        let (q, o, stop, seed) = (q.clone(), o.clone(), stop.clone(), rng.u64(..));
        threads.push(std::thread::spawn(move || consumer(q, o, stop, seed)));
    }
    {
        let (q, o, stop, seed, v) = (
            q.clone(),
            o.clone(),
            stop.clone(),
            rng.u64(..),
            verifies.clone(),
        );
        threads.push(std::thread::spawn(move || admin(q, o, stop, seed, &v)));
    }
    std::thread::sleep(len);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a model thread panicked");
    }
    let report = q.verify().unwrap();
    assert!(!report.drifted(), "after the phase: {report:?}");
    o.lock().unwrap().dropped += counted_drops(&q).saturating_sub(drops_before);
    let crash = run.crashes && rng.bool();
    if crash {
        q.simulate_crash();
    } else {
        q.close();
    }
    (crash, verifies.load(Ordering::Relaxed))
}

fn run_model(run: Run, total: Duration) {
    let mut rng = fastrand::Rng::with_seed(run.seed);
    let dir = tempfile::tempdir().unwrap();
    let o = Arc::new(Mutex::new(Oracle::default()));
    let started = Instant::now();
    let (mut phases, mut crashes, mut verifies) = (0, 0, 0);
    while started.elapsed() < total {
        let len = Duration::from_millis(rng.u64(300..1500));
        let (crashed, v) = phase(dir.path(), &run, &o, &mut rng, len);
        phases += 1;
        crashes += u64::from(crashed);
        verifies += v;
    }
    // Drain: everything left is delivered or dead.
    let q = Queue::open(
        dir.path(),
        QueueConfig {
            max_age: None,
            ..config(&run)
        },
    )
    .unwrap();
    q.expire_all_leases();
    block_on(q.sync()).unwrap();
    let mut o = o.lock().unwrap();
    for topic in TOPICS {
        while let Some(l) = q.lease(topic, 100).unwrap() {
            for e in l.events() {
                let id = e.id.to_string();
                match o.accepted.get(&id) {
                    Some((p, _)) if p.as_slice() == e.payload.as_ref() => {}
                    _ => o.invented.push(id.clone()),
                }
                o.delivered.insert(id);
            }
            q.ack(l).unwrap();
        }
    }
    let unchecked = std::mem::take(&mut o.unchecked);
    for (id, payload) in unchecked {
        if o.accepted.get(&id).map(|(p, _)| p) != Some(&payload) {
            o.invented.push(id);
        }
    }
    let mut dead = BTreeSet::new();
    for topic in TOPICS {
        for d in q.dead_letters(topic, 0, usize::MAX).unwrap() {
            dead.insert(d.id.to_string());
        }
    }
    let report = q.verify().unwrap();
    assert!(!report.drifted(), "at the end: {report:?}");
    assert_eq!(q.stats().total.events, 0, "drained");
    assert!(
        o.invented.is_empty(),
        "invented or altered: {:?}",
        &o.invented[..o.invented.len().min(5)]
    );
    let unaccounted: BTreeMap<&String, bool> = o
        .accepted
        .iter()
        .filter(|(id, _)| !o.delivered.contains(*id) && !dead.contains(*id))
        .map(|(id, (_, durable))| (id, *durable))
        .collect();
    let durable_missing = unaccounted.values().filter(|d| **d).count() as u64;
    println!(
        "model seed {} policy {:?} max_age {:?}: {phases} phases ({crashes} crashes), {} operations, {} verifies; accepted {}, delivered {}, dead {}, dropped (counted) {}, unaccounted {} ({durable_missing} durable), dropped as newest {}",
        run.seed,
        run.policy,
        run.max_age,
        o.ops,
        verifies,
        o.accepted.len(),
        o.delivered.len(),
        dead.len(),
        o.dropped,
        unaccounted.len(),
        o.dropped_newest
    );
    assert!(
        durable_missing <= o.dropped,
        "{durable_missing} durable events are neither delivered, dead, nor within the {} counted drops",
        o.dropped
    );
    if crashes == 0 {
        assert_eq!(
            unaccounted.len() as u64,
            o.dropped,
            "without crashes, every accepted event is delivered, dead, or one of the counted drops"
        );
    }
    q.close();
}

fn seed() -> u64 {
    std::env::var("EVSPOOL_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

fn soak() -> bool {
    std::env::var("EVSPOOL_SOAK").is_ok_and(|v| v == "1")
}

#[test]
fn concurrent_operations_keep_every_event_in_exactly_one_place_without_crashes() {
    let total = if soak() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(8)
    };
    run_model(
        Run {
            seed: seed(),
            policy: OverflowPolicy::DropOldest,
            max_age: None,
            crashes: false,
        },
        total,
    );
}

#[test]
fn concurrent_operations_lose_no_durable_event_across_crashes_and_reopens() {
    let total = if soak() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(8)
    };
    let s = seed();
    run_model(
        Run {
            seed: s,
            policy: if s.is_multiple_of(2) {
                OverflowPolicy::DropNewest
            } else {
                OverflowPolicy::DropOldest
            },
            max_age: s.is_multiple_of(3).then_some(Duration::from_secs(1)),
            crashes: true,
        },
        total,
    );
}
