//! Tests of group appends (`log/group.rs`).
use super::*;

/// Producers cancelled at every await point, on three runtimes.
mod cancellation;
/// What the stresses share.
mod check;
use check::{assert_written_once, xs};
/// Spinning waiters and leads taken over (W5, W7): the review's attacks.
mod spin;
/// The second review's attacks on the take-over (W7).
mod takeover;
/// A stress of producers held unpolled while their owners wait on others (W7).
mod takeover_stress;
use crate::queue::log::segment::OpenFiles;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::task::{Context, Waker};
use std::time::Duration;

fn log_t() -> TopicLog {
    TopicLog::new(
        crate::queue::topic::Topic::new("t").unwrap(),
        BTreeSet::new(),
        1,
    )
}

fn bodies(dir: &std::path::Path) -> Bodies {
    Bodies::new(
        dir.join("bodies"),
        OpenFiles::new(16),
        Arc::from("0123456789ab"),
        false,
    )
}

fn yes(t: &Totals, e: u64, b: u64) -> bool {
    t.add(e, b);
    true
}

fn events(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("e{i}"))).collect()
}

/// Counts the wakes of the task it wakes.
struct CountWakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A runtime of `threads` worker threads; 0: a current-thread runtime.
fn runtime(threads: usize) -> tokio::runtime::Runtime {
    if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap()
    }
}

/// A topic log in a temp dir with its bodies and totals: what the tests append to.
struct Fixture {
    _dir: tempfile::TempDir,
    b: Bodies,
    log: TopicLog,
    totals: Totals,
}

impl Fixture {
    /// Waiting producers park at once (no spin, W5): what the tests of
    /// parking, wakes and hand-offs look at.
    fn new() -> Fixture {
        Fixture::with_spin(0)
    }

    /// Waiting producers reschedule themselves `spin` times before parking.
    fn with_spin(spin: u32) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut log = log_t();
        log.group.spin_polls = spin;
        Fixture {
            b: bodies(dir.path()),
            log,
            totals: Totals::default(),
            _dir: dir,
        }
    }

    /// As the store runs: waiting producers spin [`SPIN_POLLS`] polls.
    fn spinning() -> Fixture {
        Fixture::with_spin(SPIN_POLLS)
    }

    /// One producer's request of `n` events, chunks of at most 50.
    fn append(&self, n: usize) -> impl Future<Output = (Outcome, Vec<Bytes>)> + '_ {
        self.log
            .append_shared(&self.b, events(n), (50, 1 << 20), &self.totals, &yes)
    }
}

/// Polls `fut` once; returns the first seq of its written request, and
/// panics with `pending` if it is not done.
fn first_written<F: Future<Output = (Outcome, Vec<Bytes>)> + ?Sized>(
    fut: std::pin::Pin<&mut F>,
    cx: &mut Context<'_>,
    pending: &str,
) -> u64 {
    let std::task::Poll::Ready((outcome, _)) = fut.poll(cx) else {
        panic!("{pending}");
    };
    outcome.unwrap().expect("reserved").first
}

/// A reservation that, the first time it runs (inside a leader's write),
/// polls the producer in `later` once with `waker` — it queues while the
/// write runs, and must wait — then reserves as [`yes`] does.
fn queue_during_write<'a, F: Future + Send + ?Sized>(
    later: &'a Mutex<(bool, std::pin::Pin<Box<F>>)>,
    waker: &'a Waker,
) -> impl Fn(&Totals, u64, u64) -> bool + Sync + 'a {
    move |t: &Totals, e: u64, n: u64| {
        let mut g = lock(later);
        if !std::mem::replace(&mut g.0, true) {
            assert!(
                g.1.as_mut()
                    .poll(&mut Context::from_waker(waker))
                    .is_pending(),
                "B waits: A leads"
            );
        }
        yes(t, e, n)
    }
}

/// The group ends idle (no leader, nothing queued) after `takes` writes.
fn assert_idle_after(log: &TopicLog, takes: u64) {
    let w = lock(&log.group.waiting);
    assert!(
        !w.leading && w.queue.is_empty(),
        "leading {}, {} queued",
        w.leading,
        w.queue.len()
    );
    assert_eq!(w.takes, takes, "writes");
}

/// A waker whose wakes are counted.
fn counting_waker() -> (Arc<CountWakes>, Waker) {
    let wakes = Arc::new(CountWakes(Default::default()));
    let waker = Waker::from(wakes.clone());
    (wakes, waker)
}

#[test]
fn a_waiting_producer_parks_at_once_and_is_woken_once_written() {
    let f = Fixture::new();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    // Another producer leads and has not taken yet: this one waits.
    lock(&log.group.waiting).leading = true;
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(f.append(1));
    for _ in 0..3 {
        assert!(
            fut.as_mut().poll(&mut cx).is_pending(),
            "nothing written yet"
        );
    }
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        0,
        "a waiting producer asks for no wake of its own (it parks)"
    );
    assert!(log.lock().unindexed.is_empty());
    // The leader takes and writes the request, and wakes its producer.
    log.lead(b, (50, 1 << 20), totals, &yes);
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    let std::task::Poll::Ready((outcome, back)) = fut.as_mut().poll(&mut cx) else {
        panic!("written but still pending");
    };
    assert_eq!(
        (outcome.unwrap().expect("reserved").first, back.len()),
        (1, 1)
    );
    assert!(!lock(&log.group.waiting).leading);
}

#[test]
fn a_leader_yields_after_its_take_and_carries_the_requests_queued_during_its_write() {
    let f = Fixture::new();
    let log = &f.log;
    // B queues while A's write runs (from inside its reservation).
    let (b_wakes, b_waker) = counting_waker();
    let later = Mutex::new((false, Box::pin(f.append(1))));
    let reserve = queue_during_write(&later, &b_waker);
    let (a_wakes, a_waker) = counting_waker();
    let mut a = Box::pin(log.append_shared(&f.b, events(1), (50, 1 << 20), &f.totals, &reserve));
    // A leads (uncontended: no yield first), writes its own request, finds
    // B's queued and yields once before taking it.
    assert!(
        a.as_mut()
            .poll(&mut Context::from_waker(&a_waker))
            .is_pending(),
        "A yields between its takes"
    );
    assert_eq!(a_wakes.0.load(Ordering::SeqCst), 1, "A rescheduled itself");
    assert_eq!(log.lock().unindexed.len(), 1, "A's take only, so far");
    assert!(lock(&log.group.waiting).leading, "A still leads");
    // A's next poll carries B's request in a second take: B is not called
    // to lead, its write is done.
    assert_eq!(
        first_written(
            a.as_mut(),
            &mut Context::from_waker(&a_waker),
            "A's request was written in its first take"
        ),
        1
    );
    assert_eq!(
        b_wakes.0.load(Ordering::SeqCst),
        1,
        "B is woken once, written"
    );
    let mut g = lock(&later);
    let std::task::Poll::Ready((outcome, _)) =
        g.1.as_mut().poll(&mut Context::from_waker(&b_waker))
    else {
        panic!("B was written but is still pending");
    };
    assert_eq!(outcome.unwrap().expect("reserved").first, 2);
    assert_idle_after(log, 2);
}

#[test]
fn a_leader_hands_on_after_its_last_take_by_waking_the_requests_queued() {
    let f = Fixture::new();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    lock(&log.group.waiting).leading = true;
    let (a_wakes, a_waker) = counting_waker();
    let mut a = Box::pin(f.append(1));
    assert!(
        a.as_mut()
            .poll(&mut Context::from_waker(&a_waker))
            .is_pending()
    );
    // B queues while the (last) take of A's request is written.
    let (b_wakes, b_waker) = counting_waker();
    let later = Mutex::new(Some(Box::pin(f.append(1))));
    let reserve = |t: &Totals, e: u64, n: u64| {
        if let Some(fut) = lock(&later).as_mut() {
            assert!(
                fut.as_mut()
                    .poll(&mut Context::from_waker(&b_waker))
                    .is_pending(),
                "B waits: a leader runs"
            );
        }
        yes(t, e, n)
    };
    log.lead(b, (50, 1 << 20), totals, &reserve);
    assert_eq!(a_wakes.0.load(Ordering::SeqCst), 1, "A's write is done");
    assert_eq!(
        log.lock().unindexed.len(),
        1,
        "B's request is not written yet"
    );
    assert_eq!(b_wakes.0.load(Ordering::SeqCst), 1, "B is woken to lead");
    let mut bfut = lock(&later).take().unwrap();
    assert_eq!(
        first_written(
            bfut.as_mut(),
            &mut Context::from_waker(&b_waker),
            "called to lead, B did not lead at its next poll"
        ),
        2
    );
    assert_eq!(
        first_written(
            a.as_mut(),
            &mut Context::from_waker(&a_waker),
            "written but still pending"
        ),
        1
    );
    assert_idle_after(log, 2);
}

#[test]
fn a_parked_producer_woken_to_lead_leads_at_its_next_poll() {
    let f = Fixture::new();
    let log = &f.log;
    lock(&log.group.waiting).leading = true;
    let (_wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(f.append(1));
    assert!(fut.as_mut().poll(&mut cx).is_pending(), "parked");
    // The leader stops with this request still queued (W3).
    {
        let mut w = lock(&log.group.waiting);
        w.leading = false;
        wake_queued(w);
    }
    assert_eq!(
        first_written(
            fut.as_mut(),
            &mut cx,
            "woken to lead, it did not lead at its next poll"
        ),
        1
    );
    assert!(!lock(&log.group.waiting).leading);
}

#[tokio::test]
async fn a_producer_dropped_while_it_holds_the_lead_gives_it_up_and_writes_nothing() {
    let f = Fixture::new();
    let (b, log) = (&f.b, &f.log);
    // As after a contended take: the next leader yields before writing.
    lock(&log.group.waiting).last_take = 2;
    {
        let mut fut = Box::pin(f.append(1));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "yielded as leader");
        assert!(lock(&log.group.waiting).leading);
    }
    {
        let w = lock(&log.group.waiting);
        assert!(!w.leading, "the lead was given up");
        assert!(w.queue.is_empty(), "the request was withdrawn");
    }
    assert!(log.lock().unindexed.is_empty(), "nothing written");
    assert_eq!(b.next_seq.load(Ordering::Relaxed), 1, "no seq taken");
    let next = f.append(2);
    let (outcome, back) = tokio::time::timeout(Duration::from_secs(5), next)
        .await
        .expect("the topic still writes");
    let done = outcome.unwrap().expect("reserved");
    assert_eq!((done.first, back.len()), (1, 2));
}

#[test]
fn a_group_write_gives_each_request_its_own_outcome_and_skips_a_refused_one() {
    let f = Fixture::new();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    let (a, refused, c) = (events(3), events(2), events(1));
    // Refuses the request of two events.
    let reserve = |t: &Totals, e: u64, b: u64| e != 2 && yes(t, e, b);
    let out = log.append_group(
        b,
        &[(&a[..], 1), (&refused[..], 1), (&c[..], 1)],
        (2, 1 << 20),
        totals,
        &reserve,
    );
    let out: Vec<Option<DurableAppend>> = out.into_iter().map(Result::unwrap).collect();
    let (first, second) = (out[0].unwrap(), out[2].unwrap());
    assert!(out[1].is_none(), "refused: nothing written, no seq");
    assert_eq!((first.first, second.first), (1, 4));
    assert!(first.first_waiting && !second.first_waiting);
    assert!(first.end < second.end, "each request syncs to its own end");
    assert_eq!(totals.get().0, 4);
    let st = log.lock();
    assert_eq!(
        st.unindexed
            .iter()
            .map(|e| (e.first_seq, e.index.last_seq))
            .collect::<Vec<_>>(),
        vec![(1, 2), (3, 3), (4, 4)],
        "records of at most 2 events, in request order"
    );
    assert_eq!(second.end, (1, st.end));
    assert_eq!(st.unindexed_usage.events, 4);
}

#[tokio::test(flavor = "current_thread")]
async fn producers_on_one_runtime_thread_share_writes() {
    // 16 producers on one thread: a producer whose append completes at
    // its first poll never lets the others queue, so without the probe
    // every event was a write of its own (3,200 writes for 3,200 events).
    let f = Arc::new(Fixture::spinning());
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let f = f.clone();
        set.spawn(async move {
            for _ in 0..200 {
                let (outcome, _) = f.append(1).await;
                outcome.unwrap().expect("reserved");
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let writes = lock(&f.log.group.waiting).takes;
    assert_eq!(f.log.lock().unindexed.len(), 3_200, "every event written");
    assert!(
        writes <= 3_200 / 8,
        "{writes} writes for 3,200 events from 16 producers on one thread"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_share_writes_and_each_gets_distinct_seqs() {
    let f = Arc::new(Fixture::spinning());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let f = f.clone();
        tasks.spawn(async move {
            let mut firsts = Vec::new();
            for _ in 0..200 {
                let (out, _) = f.append(2).await;
                firsts.push(out.unwrap().unwrap().first);
            }
            firsts
        });
    }
    let mut all = BTreeSet::new();
    while let Some(firsts) = tasks.join_next().await {
        for first in firsts.unwrap() {
            assert!(all.insert(first), "seq {first} handed out twice");
        }
    }
    assert_eq!(all.len(), 3_200);
    assert_eq!(
        all.iter().copied().collect::<Vec<_>>(),
        (0..3_200).map(|i| 1 + 2 * i).collect::<Vec<u64>>()
    );
    let st = f.log.lock();
    assert_eq!(st.unindexed_usage.events, 6_400);
    let mut seqs: Vec<u64> = st.unindexed.iter().map(|e| e.first_seq).collect();
    let written = seqs.clone();
    seqs.sort_unstable();
    assert_eq!(written, seqs, "the file holds the seqs in order");
    let w = lock(&f.log.group.waiting);
    assert!(!w.leading && w.queue.is_empty());
}

#[test]
fn a_leader_dropped_at_its_probe_yield_hands_the_lead_to_the_producer_behind_it() {
    let f = Fixture::spinning();
    let log = &f.log;
    {
        let mut w = lock(&log.group.waiting);
        w.leads = PROBE_EVERY - 1; // the next lead is a probe
        w.last_take = 1; // uncontended
    }
    let mut a = Box::pin(f.append(1));
    let mut noop = Context::from_waker(Waker::noop());
    assert!(a.as_mut().poll(&mut noop).is_pending(), "the probe yields");
    assert!(lock(&log.group.waiting).leading);
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut bfut = Box::pin(f.append(1));
    // B spins (it would take the lead over only when about to park, W7).
    assert!(bfut.as_mut().poll(&mut cx).is_pending(), "B waits");
    drop(a);
    let w = lock(&log.group.waiting);
    assert!(
        !w.leading && !w.yielding,
        "the dropped leader gave the lead up"
    );
    drop(w);
    let std::task::Poll::Ready((out, _)) = bfut.as_mut().poll(&mut cx) else {
        panic!("the lead was free, B did not lead");
    };
    assert_eq!(
        out.unwrap().expect("reserved").first,
        1,
        "the dropped one took no seq"
    );
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "its own reschedule only");
    let w = lock(&log.group.waiting);
    assert!(!w.leading && w.queue.is_empty());
    assert_eq!(log.lock().unindexed.len(), 1);
}

/// 16 producers, 300 appends each; every third append is cancelled at its
/// first `Pending` (a zero timeout), the rest must complete. Checks W2 and
/// that the group ends idle. Waiting producers spin `spin` polls.
async fn racing_producers_with_cancellation(spin: u32) {
    let f = Arc::new(Fixture::with_spin(spin));
    let mut set = tokio::task::JoinSet::new();
    for p in 0..16u64 {
        let f = f.clone();
        set.spawn(async move {
            let mut firsts = Vec::new();
            let mut cancelled = 0u64;
            for i in 0..300u64 {
                let fut = f.append(1);
                if (i + p) % 3 == 0 {
                    match tokio::time::timeout(Duration::ZERO, fut).await {
                        Ok((out, _)) => firsts.push(out.unwrap().expect("reserved").first),
                        Err(_) => cancelled += 1,
                    }
                } else {
                    let (out, _) = fut.await;
                    firsts.push(out.unwrap().expect("reserved").first);
                }
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (firsts, cancelled)
        });
    }
    let mut all = BTreeSet::new();
    let mut cancelled = 0;
    while let Some(r) = set.join_next().await {
        let (firsts, c) = r.unwrap();
        cancelled += c;
        for first in firsts {
            assert!(all.insert(first), "seq {first} handed out twice");
        }
    }
    let written = assert_written_once(&f, &all, "");
    assert!(written as u64 <= all.len() as u64 + cancelled);
    let w = lock(&f.log.group.waiting);
    assert!(!w.leading && w.queue.is_empty(), "group idle at the end");
}

/// Runs [`racing_producers_with_cancellation`] on `rt`, bounded in time,
/// with waiting producers that park at once and with ones that spin.
fn race_on(rt: tokio::runtime::Runtime) {
    for spin in [0, SPIN_POLLS] {
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                racing_producers_with_cancellation(spin),
            )
            .await
            .unwrap_or_else(|_| panic!("spin {spin}: a producer never completed"));
        });
    }
}

#[test]
fn racing_producers_with_cancellation_on_one_thread_all_complete() {
    race_on(runtime(0));
}

#[test]
fn racing_producers_with_cancellation_on_two_threads_all_complete() {
    for _ in 0..5 {
        race_on(runtime(2));
    }
}

#[test]
fn a_leader_that_panics_mid_write_gives_up_the_lead_answers_the_requests_it_took_and_poisons_the_log()
 {
    let f = Fixture::new();
    let log = &f.log;
    // A queues while another producer leads, and is not called when that
    // leader stops (as if its lead ended between A's queueing and its wake).
    lock(&log.group.waiting).leading = true;
    let (_wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut a = Box::pin(f.append(1));
    assert!(
        a.as_mut().poll(&mut cx).is_pending(),
        "A waits for the leader"
    );
    lock(&log.group.waiting).leading = false;
    // P leads (uncontended: no yield first), takes A's request with its own,
    // and its write panics (here: in the reservation).
    let panics = |_: &Totals, _: u64, _: u64| -> bool { panic!("a bug inside the write") };
    let mut p = Box::pin(log.append_shared(&f.b, events(2), (50, 1 << 20), &f.totals, &panics));
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = p.as_mut().poll(&mut cx);
    }));
    assert!(unwound.is_err(), "the leader's write panicked");
    drop(p);
    {
        let w = lock(&log.group.waiting);
        assert!(!w.leading, "the panicked leader still holds the lead");
        assert!(w.queue.is_empty());
    }
    // A learns that its request was not written, instead of waiting forever.
    let std::task::Poll::Ready((outcome, back)) = a.as_mut().poll(&mut cx) else {
        panic!("A still waits for a write that will never come");
    };
    let err = outcome.expect_err("A's request was not written");
    assert!(err.to_string().contains("panicked"), "{err}");
    assert_eq!(back.len(), 1, "A gets its payloads back");
    // The next producer leads (after one yield, as the panicked take carried
    // two requests) and is refused: the log is poisoned, since the panicked
    // write may have left bytes past its end that an append would overwrite.
    let mut next = Box::pin(f.append(3));
    let written = (0..2).find_map(|_| match next.as_mut().poll(&mut cx) {
        std::task::Poll::Ready((outcome, _)) => Some(outcome),
        std::task::Poll::Pending => None,
    });
    let outcome = written.expect("the next producer waits after a leader panicked");
    let err = outcome.expect_err("a write landed on a log a panicked write left behind");
    assert!(err.to_string().contains("panicked"), "{err}");
    assert!(log.poisoned());
    assert!(!lock(&log.group.waiting).leading);
}

/// Found by review: a leader handed on by waking only the oldest queued
/// request. A producer whose future is held but not polled for a while
/// (`timeout(d, &mut fut)` elapsed, a `select!` on `&mut fut` took another
/// branch) then held up every request queued behind it. On the code before
/// the fix: "B is parked and never woken while A (called to lead, wakes=1)
/// is not polled: leading=false queued=2", 200 runs of 200.
#[test]
fn a_request_queued_behind_one_whose_owner_does_not_poll_it_is_still_written() {
    let f = Fixture::new();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    lock(&log.group.waiting).leading = true; // a leader L runs, not taken yet
    let (_x_wakes, x_waker) = counting_waker();
    let mut x = Box::pin(f.append(1));
    assert!(
        x.as_mut()
            .poll(&mut Context::from_waker(&x_waker))
            .is_pending()
    );
    // A, then B, queue while L writes X's take (from inside its reservation).
    let (a_wakes, a_waker) = counting_waker();
    let (b_wakes, b_waker) = counting_waker();
    let a = Mutex::new(Box::pin(f.append(1)));
    let bq = Mutex::new(Box::pin(f.append(1)));
    let once = AtomicBool::new(true);
    let reserve = |t: &Totals, e: u64, n: u64| {
        if once.swap(false, Ordering::SeqCst) {
            assert!(
                lock(&a)
                    .as_mut()
                    .poll(&mut Context::from_waker(&a_waker))
                    .is_pending()
            );
            assert!(
                lock(&bq)
                    .as_mut()
                    .poll(&mut Context::from_waker(&b_waker))
                    .is_pending()
            );
        }
        yes(t, e, n)
    };
    log.lead(b, (50, 1 << 20), totals, &reserve);
    assert!(
        x.as_mut()
            .poll(&mut Context::from_waker(&x_waker))
            .is_ready()
    );
    // A's owner does not poll A for now; B's task polls B whenever woken.
    for _ in 0..10 {
        if b_wakes.0.swap(0, Ordering::SeqCst) > 0
            && let std::task::Poll::Ready((out, _)) =
                lock(&bq).as_mut().poll(&mut Context::from_waker(&b_waker))
        {
            // B led and its take carried A's request too.
            assert_eq!(out.unwrap().expect("reserved").first, 3);
            let std::task::Poll::Ready((out, _)) =
                lock(&a).as_mut().poll(&mut Context::from_waker(&a_waker))
            else {
                panic!("A's request was written by B's take");
            };
            assert_eq!(out.unwrap().expect("reserved").first, 2);
            let w = lock(&log.group.waiting);
            assert!(!w.leading && w.queue.is_empty());
            return;
        }
    }
    let w = lock(&log.group.waiting);
    panic!(
        "B is parked and never woken while A (called to lead, wakes={}) is not polled: leading={} queued={}",
        a_wakes.0.load(Ordering::SeqCst),
        w.leading,
        w.queue.len()
    );
}
