//! Review of the fixes for panics inside the queue's shared roles (commits
//! 4048437 group-append leader, 8c6f78e reaper, 40456ce syncer): what a
//! panic still leaves behind. Each `#[ignore = "finding: ..."]` test failed
//! on the code it was written against; the others pin what held.
//!
//! They change process-wide state (fail points, the fault hook, the panic
//! hook), so they live in the scenarios' binary and take its turns.

use super::{
    TOPIC, config, fsync_config, lose_sled, payload, purge_that_panics, queued, runtime, turn,
};
use evspool::{Ceiling, OverflowPolicy, Queue, QueueConfig, QueueError};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Runs a durable enqueue of `payload(i)` as its own task, so a panic in it
/// (this producer leads its topic's group write) ends the task only.
fn durable_in_task(
    rt: &tokio::runtime::Runtime,
    q: &Queue,
    i: u64,
) -> Result<Result<evspool::Enqueued, QueueError>, tokio::task::JoinError> {
    let q = q.clone();
    rt.block_on(rt.spawn(async move { q.enqueue_durable(TOPIC, payload(i)).await }))
}

/// The scenarios' configuration under a ceiling of `max_events` events.
fn with_ceiling(max_events: u64, policy: OverflowPolicy) -> QueueConfig {
    QueueConfig {
        ceiling: Ceiling {
            max_events,
            policy,
            ..Ceiling::default()
        },
        ..config()
    }
}

/// Enqueues event `i` durably in a task whose write panics (a bug inside
/// the write, after its bytes reached the file); asserts that it did.
fn durable_write_panics(rt: &tokio::runtime::Runtime, q: &Queue, i: u64) {
    fail::cfg(
        "queue::append::after_write",
        "1*panic(a bug inside the write)",
    )
    .unwrap();
    let panicked = durable_in_task(rt, q, i);
    fail::remove("queue::append::after_write");
    assert!(
        panicked.as_ref().is_err_and(|e| e.is_panic()),
        "{panicked:?}"
    );
}

/// Silences the panics injected here (their message starts with "a bug"; a
/// repeating one would flood the test's output); others print as usual.
struct QuietPanics;

impl QuietPanics {
    fn new() -> Self {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                if !msg.starts_with("a bug") {
                    default(info);
                }
            }));
        });
        QuietPanics
    }
}

// ---------------------------------------------------------------------------
// The group-append leader (W6)
// ---------------------------------------------------------------------------

/// A producer that leads its topic's group write alone and panics inside the
/// write (after `reserve`) left its ceiling reservation counted (found in
/// review: "with nothing queued: 1 live events counted, and a ceiling of 2
/// refused [(3, Err(Full { .. }))]"). Fixed by W6: the panic poisons the log
/// and fails the store closed (its state — a reservation, bytes past its end
/// — is unknown), and the reopen counts what the files hold: the counters
/// agree with what is queued, the ceiling takes what it has room for, and
/// `verify` finds no drift.
#[test]
fn a_leader_that_panics_inside_its_write_fails_the_store_closed_and_the_reopen_counts_right() {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_ceiling(2, OverflowPolicy::Reject);
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    durable_write_panics(&rt, &q, 1);
    let refused = rt.block_on(q.enqueue_durable(TOPIC, payload(2)));
    assert!(
        matches!(refused, Err(QueueError::FailedClosed { .. })),
        "a write after a panicked one: {refused:?}"
    );
    q.close();
    drop(q);
    let q = Queue::open(dir.path(), cfg).unwrap();
    let held = queued(&q, TOPIC).len() as u64;
    let live = q.stats().total.events;
    assert_eq!(live, held, "live events counted against those queued");
    for i in held..2 {
        let out = rt.block_on(q.enqueue_durable(TOPIC, payload(10 + i)));
        assert!(
            out.is_ok(),
            "the ceiling of 2 refused event {} of 2: {out:?}",
            i + 1
        );
    }
    let report = q.verify().unwrap();
    assert!(!report.drifted(), "{report:?}");
    q.close();
}

/// Four committed events (seqs 1-4, one chunk) fill a ceiling of 4 events
/// under `drop_oldest`; a durable producer of seq 5 evicts them (their
/// `gone` trace is queued: the producer's own write carries it in front of
/// its entry, TR1) and, if `panic`, its write panics after its bytes reached
/// the file; one more durable producer (seq 6) writes; then sled is lost.
/// Returns the queued seqs of the rebuilt store.
fn evict_then_durable_writes(panic: bool) -> Vec<u64> {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = with_ceiling(4, OverflowPolicy::DropOldest);
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        for i in 1..=4 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        rt.block_on(q.sync()).unwrap();
        if panic {
            durable_write_panics(&rt, &q, 5);
        } else {
            let _ = rt.block_on(q.enqueue_durable(TOPIC, payload(5))).unwrap();
        }
        let sixth = rt.block_on(q.enqueue_durable(TOPIC, payload(6)));
        if panic {
            // W6: the panicked write poisoned the log; the store failed closed.
            assert!(
                matches!(sixth, Err(QueueError::FailedClosed { .. })),
                "{sixth:?}"
            );
        } else {
            let _ = sixth.unwrap();
        }
        let running: Vec<u64> = queued(&q, TOPIC).into_keys().collect();
        assert!(
            running.iter().all(|s| *s > 4),
            "evicted events queued in the running store: {running:?}"
        );
        q.close();
    }
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), cfg).unwrap();
    let queued = queued(&q, TOPIC).into_keys().collect();
    q.close();
    queued
}

/// Control: without the panic, the eviction's trace is written in front of
/// the evicting producer's entry and a rebuild without sled keeps the
/// evicted events gone.
#[test]
fn without_a_panic_evicted_events_stay_gone_after_a_lost_sled() {
    assert_eq!(evict_then_durable_writes(false), vec![5, 6]);
}

/// A leader that panics after its write took the topic's queued traces
/// (`trace_entry`) drops them: they are neither put back (as a failed write
/// does) nor counted as written, and `end` did not move, so the next append
/// overwrites the trace's bytes. The eviction is lost from the body files
/// (TR1, TR3): a rebuild without sled brings the four evicted events back.
/// By reading (not tested here): the same drop loses any other queued trace
/// (a dead letter's, until its settle's persist writes it) and keeps a
/// chunk trace's generation pinned — never reaped — for the rest of the
/// process (`Traces::written` never runs for it).
///
/// Fixed by W6: the panic poisons the log, so no append overwrites what the
/// panicked write left, and the store fails closed; the rebuild reads the
/// trace from the file.
#[test]
fn a_leader_that_panics_after_its_write_does_not_lose_the_queued_traces() {
    let queued = evict_then_durable_writes(true);
    assert!(
        queued.iter().all(|s| *s > 4),
        "evicted events came back in the rebuild: {queued:?}"
    );
}

// ---------------------------------------------------------------------------
// The syncer thread
// ---------------------------------------------------------------------------

/// Arms a fault hook failing every `fdatasync` of `dir`'s body files with
/// EMFILE (transient: the syncer keeps the log in its retries) while `on`.
fn transient_syncs(dir: &Path, on: Arc<AtomicU64>) {
    let mine = dir.to_path_buf();
    evspool::faults::install(move |site, path: &Path| {
        (on.load(Ordering::SeqCst) == 1
            && site == evspool::faults::Site::Sync
            && path.starts_with(&mine)
            && path.extension().is_some_and(|e| e == "seg"))
        .then_some(evspool::faults::Fault::Error(libc::EMFILE))
    });
}

/// A store with `fsync` whose body file's syncs fail transiently (EMFILE)
/// while `on` holds 1: a durable producer's log then waits in the syncer's
/// retries. Returns the runtime, the directory, the queue and `on`.
fn store_with_failing_syncs() -> (
    tokio::runtime::Runtime,
    tempfile::TempDir,
    Queue,
    Arc<AtomicU64>,
) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), fsync_config()).unwrap();
    // The body file exists (its creation syncs it).
    let _ = rt.block_on(q.enqueue_durable(TOPIC, payload(0))).unwrap();
    let on = Arc::new(AtomicU64::new(1));
    transient_syncs(dir.path(), on.clone());
    (rt, dir, q, on)
}

/// A log that waits in the syncer's retries (a transient failure) when a
/// pass starts to panic at every sync: the panic skips the `match` that
/// reschedules the retry, the restarted thread finds it due again at once,
/// and `serve` restarts `run` without a pause — a hot loop of panics (each
/// one printed by the panic hook and announced to the log's waiters) for as
/// long as the bug lasts.
#[test]
fn a_syncer_panic_that_repeats_does_not_spin_the_thread() {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let (rt, _dir, q, on) = store_with_failing_syncs();
    // A durable producer whose sync fails transiently: its log waits in the
    // syncer's retries.
    let producer = {
        let q = q.clone();
        rt.spawn(async move { q.enqueue_durable(TOPIC, payload(1)).await })
    };
    std::thread::sleep(Duration::from_millis(100));
    // Every pass now panics before its sync (a bug that repeats).
    let passes = Arc::new(AtomicU64::new(0));
    {
        let passes = passes.clone();
        fail::cfg_callback("queue::sync::before_sync", move || {
            passes.fetch_add(1, Ordering::SeqCst);
            panic!("a bug in the syncer");
        })
        .unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = passes.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(1));
    let in_a_second = passes.load(Ordering::SeqCst) - before;
    // Let it stop before asserting: the bug is gone and the disk is back.
    fail::remove("queue::sync::before_sync");
    on.store(0, Ordering::SeqCst);
    let outcome =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), producer).await });
    evspool::faults::clear();
    q.close();
    assert!(outcome.is_ok(), "the producer was never answered");
    // The retry waits 2 ms, doubling to 250 ms: a few dozen passes at most.
    assert!(
        in_a_second < 100,
        "{in_a_second} syncer passes (each one a panic) in one second"
    );
}

/// The same repeating panic while the store closes: `Syncer::stop` joins
/// the thread, whose stop pass takes the retries again and panics again,
/// forever. `close` never returns.
#[test]
fn close_returns_while_a_syncer_panic_repeats() {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let (rt, _dir, q, on) = store_with_failing_syncs();
    let producer = {
        let q = q.clone();
        rt.spawn(async move { q.enqueue_durable(TOPIC, payload(1)).await })
    };
    std::thread::sleep(Duration::from_millis(100));
    fail::cfg("queue::sync::before_sync", "panic(a bug in the syncer)").unwrap();
    let closed = Arc::new(AtomicU64::new(0));
    let closer = {
        let (q, closed) = (q.clone(), closed.clone());
        std::thread::spawn(move || {
            q.close();
            closed.store(1, Ordering::SeqCst);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while closed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let returned = closed.load(Ordering::SeqCst) == 1;
    // Let it end before asserting.
    fail::remove("queue::sync::before_sync");
    on.store(0, Ordering::SeqCst);
    closer.join().unwrap();
    evspool::faults::clear();
    let _ = rt.block_on(producer);
    assert!(returned, "close did not return within 10 s");
}

/// What held: a syncer panic that repeats at every pass, with no log in the
/// retries, costs one pass per request (no spin), answers each producer, and
/// `close` returns.
#[test]
fn a_repeating_syncer_panic_without_retries_answers_each_producer_and_close_returns() {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), fsync_config()).unwrap();
    let passes = Arc::new(AtomicU64::new(0));
    {
        let passes = passes.clone();
        fail::cfg_callback("queue::sync::before_sync", move || {
            passes.fetch_add(1, Ordering::SeqCst);
            panic!("a bug in the syncer");
        })
        .unwrap();
    }
    let first = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            q.enqueue_durable(TOPIC, payload(1)),
        )
        .await
    });
    assert!(
        matches!(first, Ok(Err(QueueError::FailedClosed { .. }))),
        "{first:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let n = passes.load(Ordering::SeqCst);
    assert!(n <= 2, "{n} passes for one request");
    let started = Instant::now();
    q.close();
    fail::remove("queue::sync::before_sync");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------------------
// Applying the index's sled writes (`apply_ops`), a role every writer shares
// ---------------------------------------------------------------------------

/// `apply_ops` takes every topic's queued sled writes out of the index, then
/// writes each topic's traces, then applies the writes. A panic while it
/// writes a trace (here: in a purge's apply) drops the writes it took —
/// among them the index records and checkpoint of another topic's durable
/// events, indexed in memory by a lease — and nothing fails the store
/// closed: the next apply writes a later checkpoint of that topic, and a
/// clean reopen finds its first events neither in sled nor past the
/// checkpoint. Acknowledged durable events are lost (guarantee 2).
/// Topic "p" committed; topic "a" gets three acknowledged durable events
/// that a lease indexes (their index records and checkpoint wait for the
/// next apply); then "p" is purged — its apply panicking while it writes
/// p's trace if `panic` — and "a" gets one more durable event, indexed and
/// applied. Returns a's queued payloads before and after a clean reopen.
fn durable_events_across_a_purge(panic: bool) -> (Vec<String>, Vec<String>) {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let q = Queue::open(dir.path(), cfg.clone()).unwrap();
    for i in 1..=4 {
        let _ = q.enqueue("p", payload(i)).unwrap();
    }
    rt.block_on(q.sync()).unwrap();
    for i in 1..=3 {
        let _ = rt
            .block_on(q.enqueue_durable("a", payload(100 + i)))
            .unwrap();
    }
    let l = q.lease("a", 1).unwrap().expect("a's first event");
    q.release(l);
    if panic {
        purge_that_panics(&q);
    } else {
        assert_eq!(q.purge("p").unwrap(), 4);
    }
    // One more durable event of "a": accepted when nothing panicked;
    // refused once a panic lost index writes (the store failed closed).
    let mut acked: Vec<String> = (101..=103).map(|i| payload(i).to_string()).collect();
    match rt.block_on(q.enqueue_durable("a", payload(104))) {
        Ok(_) => {
            assert!(!panic, "the store went on after a panic lost index writes");
            acked.push(payload(104).to_string());
            let l = q.lease("a", 10).unwrap().expect("a's events");
            q.release(l);
            rt.block_on(q.sync()).unwrap();
        }
        Err(e) => assert!(
            panic && matches!(e, QueueError::FailedClosed { .. }),
            "{e:?}"
        ),
    }
    q.close();
    drop(q);
    let q = Queue::open(dir.path(), cfg).unwrap();
    let after: Vec<String> = queued(&q, "a").into_values().collect();
    q.close();
    (acked, after)
}

/// Control: without the panic every durable event of "a" survives the reopen.
#[test]
fn without_a_panic_durable_events_survive_a_purge_of_another_topic_and_a_reopen() {
    let (acked, after) = durable_events_across_a_purge(false);
    assert_eq!(acked.len(), 4);
    assert_eq!(after, acked);
}

/// `apply_ops` takes every topic's queued sled writes out of the index, then
/// writes each topic's traces, then applies the writes. A panic while it
/// writes a trace (here: in a purge's apply) drops the writes it took —
/// among them the index records and checkpoint of another topic's durable
/// events, indexed in memory by a lease — and nothing fails the store
/// closed: the next apply writes a later checkpoint of that topic, and a
/// clean reopen finds its first events neither in sled nor past the
/// checkpoint. Acknowledged durable events are lost (guarantee 2). The
/// reaper's round applies through the same `apply_ops` (`flush_index`), and
/// since 8c6f78e the rounds after a panicking one run on.
///
/// Fixed: a panic between the take and the apply fails the store closed
/// (the apply lock is poisoned, so nothing is applied after it), and the
/// reopen restores the lost index writes from the body files.
#[test]
fn a_panic_inside_an_index_apply_loses_no_acknowledged_event() {
    let (acked, after) = durable_events_across_a_purge(true);
    assert_eq!(
        after, acked,
        "durable events of \"a\" acknowledged Ok and queued before the reopen are gone after it"
    );
}

/// What held: the seq of a write that panicked is never handed out again,
/// and the event itself, left on disk past the log's end when nothing wrote
/// after it, is adopted by the next open and delivered although its
/// producer never got `Ok` — at-least-once, as W6's error says ("not known
/// to be written").
#[test]
fn a_panicked_writes_seq_is_never_reused_and_its_event_may_come_back() {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config()).unwrap();
    let first = rt.block_on(q.enqueue_durable(TOPIC, payload(1))).unwrap();
    assert_eq!(first.id().unwrap().seq(), 1);
    durable_write_panics(&rt, &q, 2);
    assert_eq!(
        queued(&q, TOPIC).into_keys().collect::<Vec<_>>(),
        vec![1],
        "the panicked event is not queued in this life"
    );
    q.close();
    drop(q);
    let q = Queue::open(dir.path(), config()).unwrap();
    let after = queued(&q, TOPIC);
    assert_eq!(
        after.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "the panicked write's event, left past the end, is adopted at open"
    );
    let next = rt.block_on(q.enqueue_durable(TOPIC, payload(3))).unwrap();
    assert_eq!(
        next.id().unwrap().seq(),
        3,
        "seq 2 is never handed out again"
    );
    q.close();
}

/// What held: a reaper round run inline by `close` (the committer's last
/// round) that panics does not hang `close`; the generation it kept is
/// deleted after the reopen.
#[test]
fn a_reaper_round_that_panics_inside_close_does_not_hang_it() {
    let _t = turn();
    let _quiet = QuietPanics::new();
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), config()).unwrap();
    for i in 1..=4 {
        let _ = q.enqueue(TOPIC, payload(i)).unwrap();
    }
    rt.block_on(q.sync()).unwrap();
    fail::cfg("queue::generation::force_rotate", "1*return").unwrap();
    for i in 5..=8 {
        let _ = q.enqueue(TOPIC, payload(i)).unwrap();
    }
    rt.block_on(q.sync()).unwrap();
    fail::remove("queue::generation::force_rotate");
    // No background round before close: every round panics from here.
    let rounds = Arc::new(AtomicU64::new(0));
    {
        let rounds = rounds.clone();
        fail::cfg_callback("queue::reap::delete", move || {
            rounds.fetch_add(1, Ordering::SeqCst);
            panic!("a bug in a reaper round");
        })
        .unwrap();
    }
    let l = q.lease(TOPIC, 4).unwrap().unwrap();
    assert_eq!(l.events()[0].seq(), 1);
    q.ack(l).unwrap();
    let started = Instant::now();
    q.close();
    fail::remove("queue::reap::delete");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(rounds.load(Ordering::SeqCst), 1, "close's round panicked");
    assert!(
        dir.path().join("bodies").join(TOPIC).join("1.seg").exists(),
        "kept by the panicked round"
    );
    drop(q);
    let q = Queue::open(dir.path(), config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let gens: Vec<String> = std::fs::read_dir(dir.path().join("bodies").join(TOPIC))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        if !gens.iter().any(|g| g == "1.seg") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "generation 1 never deleted: {gens:?}"
        );
        let _ = q.enqueue(TOPIC, payload(9)).unwrap();
        rt.block_on(q.sync()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        queued(&q, TOPIC).into_keys().collect::<Vec<_>>()[..4],
        [5, 6, 7, 8]
    );
    q.close();
}
