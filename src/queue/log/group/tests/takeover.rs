//! The review of W7 (b7f3808): attacks on the take-over of a lead from a
//! leader held unpolled in its yield.

use super::*;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::task::Poll;

type Append<'a> = Pin<Box<dyn Future<Output = (Outcome, Vec<Bytes>)> + Send + 'a>>;

/// A task as a runtime runs it: polled only when its waker was woken since
/// its last poll. Returns its output once ready, `None` if it is pending
/// with no wake left.
fn run_as_woken(
    fut: &mut Append<'_>,
    wakes: &CountWakes,
    waker: &Waker,
    seen: &mut usize,
) -> Option<(Outcome, Vec<Bytes>)> {
    loop {
        let now = wakes.0.load(Ordering::SeqCst);
        if now == *seen {
            return None;
        }
        *seen = now;
        if let Poll::Ready(v) = fut.as_mut().poll(&mut Context::from_waker(waker)) {
            return Some(v);
        }
    }
}

/// What happens to P, the parked producer a yielding leader's wake went to.
#[derive(Clone, Copy, Debug)]
enum P {
    /// Its owner holds it unpolled (a `select!` on `&mut fut` that took
    /// another branch: the case W3 gives for waking every queued producer).
    HeldUnpolled,
    /// Its owner drops it (a `timeout` that fired).
    Dropped,
}

/// A leads (no yield first); during its write P, then Q, queue and park
/// (after `spin` polls each). A's take finds them queued and yields holding
/// the lead; its yield wakes one parked producer: P. A's owner then holds A
/// unpolled (the case W7 is for), and P's owner holds P or drops it. Q's
/// task polls Q whenever Q is woken, as a runtime would. W7: "a leader held
/// unpolled in one of its yields holds nobody up".
fn the_yields_one_wake_goes_to_p_and_q_waits(spin: u32, p: P) {
    let f = Fixture::with_spin(spin);
    let log = &f.log;
    let (p_wakes, p_waker) = counting_waker();
    let (q_wakes, q_waker) = counting_waker();
    let p_fut: Option<Append<'_>> = Some(Box::pin(f.append(1)));
    let q_fut: Append<'_> = Box::pin(f.append(1));
    let later = Mutex::new((false, p_fut, q_fut));
    let reserve = |t: &Totals, e: u64, n: u64| {
        let mut g = lock(&later);
        if !std::mem::replace(&mut g.0, true) {
            for _ in 0..=spin {
                let p = g.1.as_mut().unwrap();
                assert!(
                    p.as_mut()
                        .poll(&mut Context::from_waker(&p_waker))
                        .is_pending()
                );
            }
            for _ in 0..=spin {
                assert!(
                    g.2.as_mut()
                        .poll(&mut Context::from_waker(&q_waker))
                        .is_pending()
                );
            }
        }
        yes(t, e, n)
    };
    let mut a = Box::pin(log.append_shared(&f.b, events(1), (50, 1 << 20), &f.totals, &reserve));
    let mut noop = Context::from_waker(Waker::noop());
    assert!(
        a.as_mut().poll(&mut noop).is_pending(),
        "A yields between its takes"
    );
    {
        let w = lock(&log.group.waiting);
        assert!(
            w.leading && w.yielding && w.queue.len() == 2,
            "A yields, P and Q queued"
        );
        assert!(
            w.queue.iter().all(|s| s.parked.load(Ordering::SeqCst)),
            "P and Q parked"
        );
    }
    assert_eq!(
        p_wakes.0.load(Ordering::SeqCst),
        spin as usize + 1,
        "A's yield woke P"
    );
    let mut g = lock(&later);
    let mut q_seen = spin as usize;
    match p {
        P::HeldUnpolled => {}
        P::Dropped => g.1 = None,
    }
    // A and (held) P stay unpolled; Q runs whenever it is woken.
    if let Some((out, _)) = run_as_woken(&mut g.2, &q_wakes, &q_waker, &mut q_seen) {
        out.unwrap().expect("reserved");
        return;
    }
    let (leading, yielding, queued) = {
        let w = lock(&log.group.waiting);
        (w.leading, w.yielding, w.queue.len())
    };
    let (q_w, p_w) = (
        q_wakes.0.load(Ordering::SeqCst),
        p_wakes.0.load(Ordering::SeqCst),
    );
    // Only a wake is missing: Q, woken, takes the lead over and is written.
    let q_slot = lock(&log.group.waiting).queue.back().cloned().unwrap();
    q_slot.wake.notify_one();
    let polled_anyway = run_as_woken(&mut g.2, &q_wakes, &q_waker, &mut q_seen).is_some();
    panic!(
        "spin {spin}, P {p:?}: Q is never woken while A is held in its yield: \
         leading={leading} yielding={yielding} queued={queued} q_wakes={q_w} p_wakes={p_w} \
         (Q, notified by hand, completes: {polled_anyway})"
    );
}

#[test]
fn a_yielding_leader_held_unpolled_with_the_parked_producer_it_woke_held_too_does_not_hold_up_the_next()
 {
    the_yields_one_wake_goes_to_p_and_q_waits(0, P::HeldUnpolled);
}

#[test]
fn a_yielding_leader_held_unpolled_with_the_parked_producer_it_woke_held_too_does_not_hold_up_the_next_with_spin()
 {
    the_yields_one_wake_goes_to_p_and_q_waits(SPIN_POLLS, P::HeldUnpolled);
}

#[test]
fn a_yielding_leader_held_unpolled_whose_woken_producer_is_dropped_does_not_hold_up_the_next() {
    the_yields_one_wake_goes_to_p_and_q_waits(0, P::Dropped);
}

#[test]
fn a_yielding_leader_held_unpolled_whose_woken_producer_is_dropped_does_not_hold_up_the_next_with_spin()
 {
    the_yields_one_wake_goes_to_p_and_q_waits(SPIN_POLLS, P::Dropped);
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    rustix::thread::sched_setaffinity(None, &set).expect("sched_setaffinity");
}

/// Puts the calling thread under `SCHED_IDLE` (no privilege needed): a
/// thread of normal policy woken on its CPU preempts it at once.
fn sched_idle() {
    let tid = rustix::thread::gettid().as_raw_nonzero().get().to_string();
    let ok = std::process::Command::new("chrt")
        .args(["-i", "-p", "0", &tid])
        .status()
        .expect("chrt")
        .success();
    assert!(ok, "chrt -i");
}

/// Waits, yielding the CPU, until `flag` is set.
fn wait_for(flag: &AtomicBool) {
    while !flag.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
}

/// One round of the race below. A leads and writes its own request (refused
/// by `reserve`: no `pwrite`) while P, queued, spins its polls; P's last
/// poll decides to park (the lead is held, not yielding) and A, its write
/// done, finds P queued and yields. The test holds the queue lock while P's
/// decision and then A's look at the queue wait for it, so P decides first
/// and its unlock wakes A; A and P share one CPU and P runs under
/// `SCHED_IDLE`, so A, woken, runs at once: in P's gap between its decision
/// and setting `parked` (what a preemption of P's thread there does). Returns why P is
/// stuck, if it is: pending, queued, parked, never woken, behind A's yield.
fn park_decision_races_the_yields_scan(f: &Fixture, spin: u32) -> Option<String> {
    let in_write = AtomicBool::new(false);
    let go = AtomicBool::new(false);
    let p_spun = AtomicBool::new(false);
    let p_go = AtomicBool::new(false);
    let first = AtomicBool::new(true);
    let reserve = |t: &Totals, e: u64, n: u64| {
        if first.swap(false, Ordering::SeqCst) {
            in_write.store(true, Ordering::SeqCst);
            wait_for(&go);
            return false;
        }
        yes(t, e, n)
    };
    let (p_wakes, p_waker) = counting_waker();
    let log = &f.log;
    let ((mut a, mut a_ready), (mut p, mut p_ready)) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            pin_to(0);
            let mut a =
                Box::pin(log.append_shared(&f.b, events(1), (50, 1 << 20), &f.totals, &reserve));
            let ready = a
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready();
            (a, ready)
        });
        let p = s.spawn(|| {
            pin_to(0);
            sched_idle();
            wait_for(&in_write);
            let mut p = Box::pin(f.append(1));
            let mut cx = Context::from_waker(&p_waker);
            for _ in 0..spin {
                assert!(p.as_mut().poll(&mut cx).is_pending());
            }
            p_spun.store(true, Ordering::SeqCst);
            wait_for(&p_go);
            let ready = p.as_mut().poll(&mut cx).is_ready();
            (p, ready)
        });
        wait_for(&p_spun);
        let held = lock(&log.group.waiting);
        p_go.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(3)); // P waits for the lock
        go.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(3)); // A waits for it too
        drop(held);
        (a.join().unwrap(), p.join().unwrap())
    });
    let stuck = {
        let w = lock(&log.group.waiting);
        let wakes = p_wakes.0.load(Ordering::SeqCst);
        (!a_ready
            && !p_ready
            && w.leading
            && w.yielding
            && w.queue.len() == 1
            && w.queue[0].parked.load(Ordering::SeqCst)
            && wakes == spin as usize)
            .then(|| {
                format!(
                    "spin {spin}: P parked behind A's yield and was never woken: \
                     leading={} yielding={} queued={} p_wakes={wakes}",
                    w.leading,
                    w.yielding,
                    w.queue.len()
                )
            })
    };
    // Clean up: A, polled back, keeps its lead and writes P's request.
    let mut noop = Context::from_waker(Waker::noop());
    for _ in 0..8 {
        if !a_ready {
            a_ready = a.as_mut().poll(&mut noop).is_ready();
        }
        if !p_ready {
            p_ready = p.as_mut().poll(&mut noop).is_ready();
        }
    }
    assert!(a_ready && p_ready, "cleaned up");
    stuck
}

/// The race of `parked` (set after the decision to park, outside the queue
/// lock) with a yielding leader's look for a parked producer (W7): a lost
/// wake leaves the producer parked behind a leader its owner holds
/// unpolled.
fn the_park_decision_races_a_leaders_yield(spin: u32) {
    let mut hits = 0;
    let mut first = None;
    let rounds = 50;
    for _ in 0..rounds {
        let f = Fixture::with_spin(spin);
        if let Some(msg) = park_decision_races_the_yields_scan(&f, spin) {
            hits += 1;
            first.get_or_insert(msg);
        }
    }
    if let Some(first) = first {
        panic!("{hits} of {rounds} rounds: {first}");
    }
}

#[test]
fn a_producer_deciding_to_park_after_its_spin_as_the_leader_yields_is_woken_or_takes_over() {
    the_park_decision_races_a_leaders_yield(SPIN_POLLS);
}
