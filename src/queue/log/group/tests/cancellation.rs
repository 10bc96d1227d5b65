//! A stress of the group append: producers cancelled at every await point,
//! on a current-thread runtime and on runtimes of 2 and 4 threads.

use super::*;

/// Polls the inner future at most `left` times, then drops it (a
/// cancellation at its `left`-th await point).
struct CancelAfter<F> {
    inner: Option<std::pin::Pin<Box<F>>>,
    left: u32,
}

impl<F: Future> Future for CancelAfter<F> {
    type Output = Option<F::Output>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        if let std::task::Poll::Ready(v) = inner.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(v));
        }
        self.left -= 1;
        if self.left == 0 {
            self.inner = None;
            return std::task::Poll::Ready(None);
        }
        std::task::Poll::Pending
    }
}

/// 16 producers × 150 appends; two in ten are dropped after 1 to `spin` + 4
/// polls (every await point: the first poll, a leader's yields, a waiting
/// producer's spin, waiting, being woken to lead), one in ten runs under a
/// 0–30 µs timeout. Waiting producers spin `spin` polls.
async fn cancelled_at_every_await_point(seed: u64, spin: u32) {
    let f = Arc::new(Fixture::with_spin(spin));
    let mut set = tokio::task::JoinSet::new();
    for p in 0..16u64 {
        let f = f.clone();
        set.spawn(async move {
            let mut rng = (seed * 1000 + p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut firsts = Vec::new();
            for _ in 0..150 {
                let out = match xs(&mut rng) % 10 {
                    0 | 1 => {
                        CancelAfter {
                            inner: Some(Box::pin(f.append(1))),
                            left: 1 + (xs(&mut rng) % u64::from(spin + 4)) as u32,
                        }
                        .await
                    }
                    2 => {
                        tokio::time::timeout(Duration::from_micros(xs(&mut rng) % 30), f.append(1))
                            .await
                            .ok()
                    }
                    _ => Some(f.append(1).await),
                };
                if let Some((out, _)) = out {
                    firsts.push(out.unwrap().expect("reserved").first);
                }
                if xs(&mut rng).is_multiple_of(5) {
                    tokio::task::yield_now().await;
                }
            }
            firsts
        });
    }
    let mut all = BTreeSet::new();
    while let Some(r) = set.join_next().await {
        for first in r.unwrap() {
            assert!(
                all.insert(first),
                "seed {seed}: seq {first} handed out twice"
            );
        }
    }
    assert_written_once(&f, &all, &format!("seed {seed}: "));
    let w = lock(&f.log.group.waiting);
    assert!(
        !w.leading && w.queue.is_empty(),
        "seed {seed}: the group is not idle at the end"
    );
}

/// Written by a review of the parking change. With one take per lead it
/// caught a mutant whose hand-off woke nobody ("a producer hung" at seed 14
/// on 2 threads); with several takes per lead hand-offs with requests
/// queued are rare, and the unit tests above pin the hand-off itself.
#[test]
fn producers_cancelled_at_every_await_point_leave_no_one_hanging_and_nothing_written_twice() {
    for seed in 0..20 {
        for threads in [0usize, 2, 4] {
            let rt = runtime(threads);
            for spin in [0, SPIN_POLLS] {
                rt.block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(30),
                        cancelled_at_every_await_point(seed, spin),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "seed {seed}, {threads} runtime threads, spin {spin}: a producer hung"
                        )
                    });
                });
            }
        }
    }
}
