//! Spinning waiters (W5) and leads taken over from a leader held in its
//! yield (W7): attacks written by the review of the spin (they held, except
//! the hang W7 fixes), and the take-over's own tests.

use super::*;

#[test]
fn a_waiting_producer_reschedules_itself_for_its_spin_polls_then_parks_and_is_woken_once_written() {
    let f = Fixture::spinning();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    lock(&log.group.waiting).leading = true; // another leader, not taken yet
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(f.append(1));
    for poll in 1..=SPIN_POLLS {
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "nothing written");
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            poll as usize,
            "poll {poll}: it reschedules itself"
        );
    }
    for _ in 0..3 {
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "nothing written");
    }
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        SPIN_POLLS as usize,
        "after its spin it parks: no more wakes of its own"
    );
    log.lead(b, (50, 1 << 20), totals, &yes);
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        SPIN_POLLS as usize + 1,
        "the write wakes it"
    );
    assert_eq!(
        first_written(fut.as_mut(), &mut cx, "written but still pending"),
        1
    );
}

#[test]
fn a_spinning_producer_finds_its_write_done_at_its_next_poll_without_a_wake() {
    let f = Fixture::spinning();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    lock(&log.group.waiting).leading = true;
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(f.append(1));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    log.lead(b, (50, 1 << 20), totals, &yes);
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        1,
        "its own reschedule only: the leader's notification finds no parked task"
    );
    assert_eq!(
        first_written(fut.as_mut(), &mut cx, "written but still pending"),
        1
    );
    assert_idle_after(log, 1);
}

#[test]
fn a_spinning_producer_finds_the_lead_handed_on_and_leads_at_its_next_poll() {
    let f = Fixture::spinning();
    let log = &f.log;
    lock(&log.group.waiting).leading = true;
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(f.append(1));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    // The leader stops with this request still queued (W3).
    log.hand_on();
    assert_eq!(
        first_written(
            fut.as_mut(),
            &mut cx,
            "the lead was free, it did not lead at its next poll"
        ),
        1
    );
    assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "its own reschedule only");
    assert_idle_after(log, 1);
}

#[test]
fn a_producer_dropped_while_it_spins_takes_its_request_out_and_nothing_is_written() {
    let f = Fixture::spinning();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    lock(&log.group.waiting).leading = true;
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = Box::pin(f.append(1));
    for _ in 0..SPIN_POLLS / 2 {
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(lock(&log.group.waiting).queue.len(), 1, "queued");
    drop(fut);
    assert!(lock(&log.group.waiting).queue.is_empty(), "withdrawn (W4)");
    log.lead(b, (50, 1 << 20), totals, &yes);
    assert!(log.lock().unindexed.is_empty(), "nothing written");
    assert_eq!(totals.get().0, 0, "nothing reserved");
    assert_idle_after(log, 0);
}

/// A spinning producer notified to lead (a hand-off) while it spins, whose
/// lead is then taken by another, parks after its spin: the stale permit
/// costs one extra loop, no busy wait, and the real write still wakes it.
#[test]
fn a_stale_permit_from_a_hand_off_during_the_spin_neither_busy_loops_nor_loses_the_write() {
    let f = Fixture::spinning();
    let (b, log, totals) = (&f.b, &f.log, &f.totals);
    lock(&log.group.waiting).leading = true;
    let (wakes, waker) = counting_waker();
    let mut cx = Context::from_waker(&waker);
    let mut fut = Box::pin(f.append(1));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    // The leader hands on: a permit is stored (the producer is not parked).
    log.hand_on();
    // Another producer takes the lead before this one's next poll.
    lock(&log.group.waiting).leading = true;
    for _ in 0..SPIN_POLLS + 5 {
        assert!(fut.as_mut().poll(&mut cx).is_pending(), "nothing written");
    }
    let before = wakes.0.load(Ordering::SeqCst);
    assert!(
        before <= SPIN_POLLS as usize,
        "{before} self-wakes: the spin is not bounded"
    );
    for _ in 0..5 {
        assert!(fut.as_mut().poll(&mut cx).is_pending());
    }
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        before,
        "parked: no more wakes"
    );
    log.lead(b, (50, 1 << 20), totals, &yes);
    assert_eq!(
        wakes.0.load(Ordering::SeqCst),
        before + 1,
        "the write wakes it"
    );
    assert_eq!(
        first_written(fut.as_mut(), &mut cx, "written but still pending"),
        1
    );
}

/// Counts the polls of the future it wraps.
struct CountPolls<F> {
    inner: std::pin::Pin<Box<F>>,
    polls: Arc<std::sync::atomic::AtomicUsize>,
}

impl<F: Future> Future for CountPolls<F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        self.inner.as_mut().poll(cx)
    }
}

/// While a leader (here: the test, from another OS thread) holds the lead
/// for a long write, 16 spinning producers on `rt` poll a bounded number of
/// times each, then park; the write then completes all of them.
fn spinners_park_during_a_long_write_on(rt: tokio::runtime::Runtime) {
    let f = Arc::new(Fixture::spinning());
    lock(&f.log.group.waiting).leading = true;
    let polls: Vec<Arc<std::sync::atomic::AtomicUsize>> = (0..16).map(|_| Arc::default()).collect();
    let releaser = {
        let f = f.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            f.log.lead(&f.b, (50, 1 << 20), &f.totals, &yes);
        })
    };
    let counts = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for p in polls.iter().cloned() {
            let f = f.clone();
            set.spawn(async move {
                let (out, _) = CountPolls {
                    inner: Box::pin(f.append(1)),
                    polls: p,
                }
                .await;
                out.unwrap().expect("reserved").first
            });
        }
        // A bystander task that must keep running while they spin.
        let ticks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t2 = ticks.clone();
        let bystander = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                t2.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mid: Vec<usize> = polls.iter().map(|p| p.load(Ordering::SeqCst)).collect();
        let mut firsts = BTreeSet::new();
        tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(r) = set.join_next().await {
                assert!(firsts.insert(r.unwrap()));
            }
        })
        .await
        .expect("a spinning producer never completed after the write");
        bystander.await.unwrap();
        assert_eq!(ticks.load(Ordering::SeqCst), 20);
        assert_eq!(firsts.len(), 16);
        mid
    });
    releaser.join().unwrap();
    for (i, c) in counts.iter().enumerate() {
        assert!(
            *c <= SPIN_POLLS as usize + 2,
            "producer {i} polled {c} times while the lead was held: not parked"
        );
    }
    assert_idle_after(&f.log, 1);
}

#[test]
fn spinners_park_during_a_long_write_and_all_complete_current_thread() {
    spinners_park_during_a_long_write_on(runtime(0));
}

#[test]
fn spinners_park_during_a_long_write_and_all_complete_one_worker() {
    spinners_park_during_a_long_write_on(runtime(1));
}

#[test]
fn spinners_park_during_a_long_write_and_all_complete_two_workers() {
    spinners_park_during_a_long_write_on(runtime(2));
}

/// A leader's write panics (W6) while 15 others spin or park, on a
/// multi-thread runtime: nobody hangs, nothing lands after the panic.
fn a_leader_panic_while_others_spin_on(rt: tokio::runtime::Runtime, spin: u32) {
    let f = Arc::new(Fixture::with_spin(spin));
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for p in 0..16u64 {
            let f = f.clone();
            let calls = calls.clone();
            set.spawn(async move {
                let mut errs = 0;
                for _ in 0..200 {
                    let reserve = |t: &Totals, e: u64, b: u64| {
                        if calls.fetch_add(1, Ordering::SeqCst) == 500 {
                            panic!("a bug inside the write");
                        }
                        yes(t, e, b)
                    };
                    let (out, _) = f
                        .log
                        .append_shared(&f.b, events(1), (50, 1 << 20), &f.totals, &reserve)
                        .await;
                    if out.is_err() {
                        errs += 1;
                    }
                    if p % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                errs
            });
        }
        tokio::time::timeout(Duration::from_secs(30), async {
            let mut panicked = 0;
            while let Some(r) = set.join_next().await {
                if r.is_err() {
                    panicked += 1;
                }
            }
            assert_eq!(panicked, 1, "one leader panicked");
        })
        .await
        .unwrap_or_else(|_| panic!("spin {spin}: a producer hung after a leader panicked"));
    });
    assert!(f.log.poisoned());
    let w = lock(&f.log.group.waiting);
    assert!(!w.leading && w.queue.is_empty(), "group idle");
}

#[test]
fn a_leader_panic_while_others_spin_hangs_nobody() {
    for threads in [0, 2] {
        for spin in [0, SPIN_POLLS] {
            let rt = runtime(threads);
            a_leader_panic_while_others_spin_on(rt, spin);
        }
    }
}

/// `select!`/`timeout` around producers, polled from other tasks at random:
/// each producer lives across several of its owner's loop iterations
/// (`&mut fut` in a `select!` against a short sleep), as an application
/// that enqueues with a heartbeat would. Every request completes.
async fn select_loop_producers(spin: u32) {
    let f = Arc::new(Fixture::with_spin(spin));
    let mut set = tokio::task::JoinSet::new();
    for p in 0..16u64 {
        let f = f.clone();
        set.spawn(async move {
            let mut firsts = Vec::new();
            for i in 0..100u64 {
                let mut fut = std::pin::pin!(f.append(1));
                let out = loop {
                    tokio::select! {
                        biased;
                        _ = tokio::task::yield_now(), if (i + p) % 2 == 0 => {}
                        r = &mut fut => break r,
                    }
                };
                firsts.push(out.0.unwrap().expect("reserved").first);
            }
            firsts
        });
    }
    let mut all = BTreeSet::new();
    while let Some(r) = set.join_next().await {
        for first in r.unwrap() {
            assert!(all.insert(first));
        }
    }
    assert_eq!(all.len(), 1600);
    let w = lock(&f.log.group.waiting);
    assert!(!w.leading && w.queue.is_empty());
}

#[test]
fn producers_in_select_loops_all_complete_and_nothing_is_written_twice() {
    for threads in [0usize, 1, 2] {
        for spin in [0, SPIN_POLLS] {
            let rt = runtime(threads);
            rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(30), select_loop_producers(spin))
                    .await
                    .unwrap_or_else(|_| panic!("{threads} threads, spin {spin}: hung"));
            });
        }
    }
}

/// Found by the review of the spinning waiters (a hang older than them):
/// a producer that took the lead and yields holding it (contended), whose
/// owner then stops polling it (`select!` on `&mut fut` took another
/// branch), held up every other producer of the topic: they parked behind a
/// lead nobody exercised. On `c0e896e`: "spin 16: B never written while A
/// holds the lead unpolled: leading=true queued=2 b_wakes=16", and with spin
/// 0 "… b_wakes=1". Now B, about to park behind a yielding leader, takes the
/// lead over (W7).
fn a_leader_held_unpolled_across_its_yield(spin: u32) {
    let f = Fixture::with_spin(spin);
    let log = &f.log;
    lock(&log.group.waiting).leading = true; // a leader L runs
    lock(&log.group.waiting).last_take = 2; // contended
    let mut noop = Context::from_waker(Waker::noop());
    let mut a = Box::pin(f.append(1));
    assert!(a.as_mut().poll(&mut noop).is_pending(), "A waits");
    let (b_wakes, b_waker) = counting_waker();
    let mut bcx = Context::from_waker(&b_waker);
    let mut bfut = Box::pin(f.append(1));
    assert!(bfut.as_mut().poll(&mut bcx).is_pending(), "B waits");
    // L stops with A and B queued (W3): both are woken / find the lead free.
    log.hand_on();
    // A's owner polls A once more: A leads, contended, yields holding it...
    assert!(a.as_mut().poll(&mut noop).is_pending());
    assert!(lock(&log.group.waiting).leading, "A holds the lead");
    // ...and then A's owner does something else (A held, not polled).
    // B's task polls B whenever it is woken (and a few times more).
    for _ in 0..(spin as usize + 50) {
        if let std::task::Poll::Ready((out, _)) = bfut.as_mut().poll(&mut bcx) {
            out.unwrap().expect("reserved");
            return;
        }
    }
    let w = lock(&log.group.waiting);
    panic!(
        "spin {spin}: B never written while A holds the lead unpolled: leading={} queued={} b_wakes={}",
        w.leading,
        w.queue.len(),
        b_wakes.0.load(Ordering::SeqCst)
    );
}

#[test]
fn a_leader_held_unpolled_across_its_yield_is_taken_over_by_a_spinning_producer() {
    a_leader_held_unpolled_across_its_yield(SPIN_POLLS);
}

#[test]
fn a_leader_held_unpolled_across_its_yield_is_taken_over_by_a_producer_about_to_park() {
    a_leader_held_unpolled_across_its_yield(0);
}

/// W7 between takes: A leads (no yield first), a parked producer B queues
/// during A's write; A finds it queued, yields holding the lead, and is not
/// polled back. A's yield woke B, which takes the lead over and writes its
/// request; A, polled at last, finds its lead taken, writes nothing more and
/// returns its own outcome.
#[test]
fn a_leader_held_unpolled_in_its_yield_between_takes_wakes_a_parked_producer_which_takes_over() {
    let f = Fixture::new(); // B parks at once
    let log = &f.log;
    let (b_wakes, b_waker) = counting_waker();
    let later = Mutex::new((false, Box::pin(f.append(1))));
    let reserve = queue_during_write(&later, &b_waker);
    let mut a = Box::pin(log.append_shared(&f.b, events(1), (50, 1 << 20), &f.totals, &reserve));
    let mut noop = Context::from_waker(Waker::noop());
    assert!(
        a.as_mut().poll(&mut noop).is_pending(),
        "A yields between its takes"
    );
    assert!(lock(&log.group.waiting).yielding);
    assert_eq!(
        b_wakes.0.load(Ordering::SeqCst),
        1,
        "A's yield woke parked B"
    );
    // A's owner does not poll A now; B's task polls B.
    let mut g = lock(&later);
    let std::task::Poll::Ready((out, _)) = g.1.as_mut().poll(&mut Context::from_waker(&b_waker))
    else {
        panic!("B, woken behind a yielding leader, did not take the lead over");
    };
    assert_eq!(out.unwrap().expect("reserved").first, 2);
    drop(g);
    assert!(!lock(&log.group.waiting).leading, "B handed the lead on");
    assert_eq!(
        first_written(
            a.as_mut(),
            &mut noop,
            "A's request was written in its first take"
        ),
        1
    );
    assert_idle_after(log, 2);
    assert_eq!(log.lock().unindexed.len(), 2, "each request written once");
}

/// A leader that resumes after its lead was taken over does not give up the
/// new leader's lead when it is dropped (W4 with W7).
#[test]
fn a_leader_taken_over_and_then_dropped_leaves_the_new_leader_its_lead() {
    let f = Fixture::new();
    let log = &f.log;
    lock(&log.group.waiting).last_take = 2; // contended: A yields first
    let mut noop = Context::from_waker(Waker::noop());
    let mut a = Box::pin(f.append(1));
    assert!(
        a.as_mut().poll(&mut noop).is_pending(),
        "A yields holding the lead"
    );
    let epoch = lock(&log.group.waiting).epoch;
    // B takes the lead over (it is about to park), here as a leader between
    // its take-over and its write: its epoch is the current one.
    {
        let mut w = lock(&log.group.waiting);
        assert!(w.yielding);
        w.yielding = false;
        w.epoch += 1;
    }
    drop(a);
    let w = lock(&log.group.waiting);
    assert!(w.leading, "the new leader's lead survives A's drop");
    assert_eq!(w.epoch, epoch + 1);
}
