//! The review of W7 (b7f3808): a stress of leads taken over. Four of 16
//! producers ("holders") sometimes hold their future unpolled — a leader in
//! its yield, a parked producer, a spinner — while they wait for progress
//! by the others (an owner whose `select!` took another branch and then
//! waits on work that needs the topic's other producers); the other 12
//! ("active") always poll theirs, with random cancellations and timeouts.
//! W7 says a producer held unpolled holds nobody up: the active ones
//! always complete. Each write's `reserve` (the leader's own closure)
//! checks W1: the writer holds the lead, not yielding, and no two producers
//! write under one epoch.

use super::*;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;

const APPENDS: usize = 120;

struct Shared {
    f: Fixture,
    /// The producer that wrote under each epoch (W1).
    writers: Mutex<HashMap<u64, u64>>,
    violations: Mutex<Vec<String>>,
    /// Appends completed by the active producers.
    active_done: AtomicUsize,
    /// Active producers still running.
    active_left: AtomicUsize,
}

/// A holder's owner, busy elsewhere: waits until an active producer
/// completes an append (or none is left), holding its own future unpolled.
async fn wait_for_progress(s: &Shared) {
    let start = s.active_done.load(Ordering::SeqCst);
    while s.active_done.load(Ordering::SeqCst) == start && s.active_left.load(Ordering::SeqCst) > 0
    {
        tokio::time::sleep(Duration::from_micros(50)).await;
    }
}

async fn producer(s: Arc<Shared>, p: u64, seed: u64, holders: u64) -> Vec<u64> {
    let holder = p < holders;
    let mut rng = (seed * 1000 + p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let reserve = |t: &Totals, e: u64, b: u64| {
        let epoch = {
            let w = lock(&s.f.log.group.waiting);
            if !w.leading || w.yielding {
                lock(&s.violations).push(format!(
                    "producer {p} writes with leading={} yielding={}",
                    w.leading, w.yielding
                ));
            }
            w.epoch
        };
        let first = *lock(&s.writers).entry(epoch).or_insert(p);
        if first != p {
            lock(&s.violations).push(format!(
                "epoch {epoch}: producers {first} and {p} both write (W1)"
            ));
        }
        yes(t, e, b)
    };
    let mut firsts = Vec::new();
    for _ in 0..APPENDS {
        let fut =
            s.f.log
                .append_shared(&s.f.b, events(1), (50, 1 << 20), &s.f.totals, &reserve);
        let mode = xs(&mut rng) % 10;
        let out = match mode {
            0 if !holder => {
                let mut fut = std::pin::pin!(fut);
                let left = 1 + xs(&mut rng) % 20;
                let mut polls = 0;
                std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
                    _ if {
                        polls += 1;
                        polls == left
                    } =>
                    {
                        std::task::Poll::Ready(None)
                    }
                    _ => std::task::Poll::Pending,
                })
                .await
            }
            1 if !holder => tokio::time::timeout(Duration::from_micros(xs(&mut rng) % 40), fut)
                .await
                .ok(),
            0..=5 if holder => {
                // Held unpolled after its k-th pending poll (any await
                // point: a leader's yield, a spin, parked) while the owner
                // waits on the others; one in three is dropped there.
                let drop_it = xs(&mut rng).is_multiple_of(3);
                let k = 1 + xs(&mut rng) % u64::from(s.f.log.group.spin_polls + 6);
                let mut fut = std::pin::pin!(fut);
                let mut polls = 0;
                let mut out = None;
                loop {
                    let r = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
                        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
                        std::task::Poll::Pending => {
                            polls += 1;
                            if polls % k == 0 {
                                std::task::Poll::Ready(None)
                            } else {
                                std::task::Poll::Pending
                            }
                        }
                    })
                    .await;
                    if r.is_some() {
                        out = r;
                        break;
                    }
                    wait_for_progress(&s).await;
                    if drop_it {
                        break;
                    }
                }
                out
            }
            _ => Some(fut.await),
        };
        if let Some((out, _)) = out {
            firsts.push(out.unwrap().expect("reserved").first);
            if !holder {
                s.active_done.fetch_add(1, Ordering::SeqCst);
            }
        }
        if xs(&mut rng).is_multiple_of(4) {
            tokio::task::yield_now().await;
        }
    }
    if !holder {
        s.active_left.fetch_sub(1, Ordering::SeqCst);
    }
    firsts
}

fn group_state(log: &TopicLog) -> String {
    let w = lock(&log.group.waiting);
    format!(
        "leading={} yielding={} epoch={} queued={} parked={:?}",
        w.leading,
        w.yielding,
        w.epoch,
        w.queue.len(),
        w.queue
            .iter()
            .map(|s| s.parked.load(Ordering::SeqCst))
            .collect::<Vec<_>>()
    )
}

/// Leads taken over, over all runs (the stress must exercise W7).
static TAKEOVERS: AtomicUsize = AtomicUsize::new(0);

async fn held_producers(seed: u64, spin: u32, producers: u64, holders: u64) -> Result<(), String> {
    let s = Arc::new(Shared {
        f: Fixture::with_spin(spin),
        writers: Mutex::default(),
        violations: Mutex::default(),
        active_done: AtomicUsize::new(0),
        active_left: AtomicUsize::new((producers - holders) as usize),
    });
    let mut set = tokio::task::JoinSet::new();
    for p in 0..producers {
        set.spawn(producer(s.clone(), p, seed, holders));
    }
    let mut all = BTreeSet::new();
    let joined = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(r) = set.join_next().await {
            for first in r.unwrap() {
                assert!(all.insert(first), "seq {first} handed out twice");
            }
        }
    })
    .await;
    if joined.is_err() {
        return Err(format!(
            "hung: {} active appends done, {} active producers left; {}",
            s.active_done.load(Ordering::SeqCst),
            s.active_left.load(Ordering::SeqCst),
            group_state(&s.f.log)
        ));
    }
    let v = lock(&s.violations);
    if !v.is_empty() {
        return Err(format!("{} W1 violations, first: {}", v.len(), v[0]));
    }
    assert_written_once(&s.f, &all, "");
    let w = lock(&s.f.log.group.waiting);
    assert!(
        !w.leading && !w.yielding && w.queue.is_empty(),
        "the group is not idle at the end"
    );
    TAKEOVERS.fetch_add((w.epoch - u64::from(w.leads)) as usize, Ordering::SeqCst);
    Ok(())
}

#[test]
fn producers_held_unpolled_while_their_owners_wait_on_the_others_hold_nobody_up() {
    let seeds: u64 = std::env::var("TAKEOVER_SEEDS").map_or(30, |v| v.parse().unwrap());
    let mut failures = Vec::new();
    for (threads, spin, seed, (producers, holders)) in [0usize, 1, 2, 4]
        .into_iter()
        .flat_map(|t| [0, SPIN_POLLS].map(|s| (t, s)))
        .flat_map(|(t, s)| (0..seeds).map(move |seed| (t, s, seed)))
        .flat_map(|(t, s, seed)| [(16, 4), (4, 3), (3, 2)].map(|ph| (t, s, seed, ph)))
    {
        let rt = runtime(threads);
        if let Err(e) = rt.block_on(held_producers(seed, spin, producers, holders)) {
            failures.push(format!(
                "{threads} threads, spin {spin}, seed {seed}, {producers} producers ({holders} holders): {e}"
            ));
        }
        rt.shutdown_background();
    }
    eprintln!("{} leads taken over", TAKEOVERS.load(Ordering::SeqCst));
    assert!(
        TAKEOVERS.load(Ordering::SeqCst) > 0,
        "no lead was taken over"
    );
    assert!(
        failures.is_empty(),
        "{} runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
