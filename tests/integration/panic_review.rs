//! Review of e5b4a0f (a sink that panics while sending costs a retry, not
//! the worker): `unwind_safe` catches a panic inside a poll of the future
//! `Sink::send` returns, not one in `send` itself, before it returns that
//! future. The two tests of that failed on e5b4a0f ("0 of 50 delivered";
//! "0 of 10 delivered in 15s; 2 sends; the breaker: half_open") and pass
//! since `send` is called inside the caught poll.

use crate::forward_faults::{
    PATIENCE, T, counts, eventually, fill, holds_all, open_queue, route, sink,
};
use evspool::forward::sink::http::HttpSink;
use evspool::forward::sink::{BoxFuture, Delivery, Sink};
use evspool_testkit::collector::Collector;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What the wrapped sink does at its `n`-th `send` (from 0).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Panics in `send` itself, before it returns a future (a bug in the
    /// code that prepares the request: encoding, signing, a lookup).
    PanicBeforeTheFuture,
    /// Returns a future that panics when polled (a bug in the request).
    PanicInsideTheFuture,
    /// Returns a future that reports a transient failure.
    Retry,
    /// Sends through the real HTTP sink.
    Send,
}

/// The real HTTP sink behind a script of steps (then `Send` for good).
pub(crate) struct Scripted {
    inner: Arc<HttpSink>,
    script: Vec<Step>,
    pub(crate) calls: AtomicU64,
}

impl Sink for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    fn max_batch_events(&self) -> usize {
        self.inner.max_batch_events()
    }
    fn max_batch_bytes(&self) -> u64 {
        self.inner.max_batch_bytes()
    }
    fn max_event_bytes(&self) -> u64 {
        self.inner.max_event_bytes()
    }
    fn send<'a>(&'a self, batch: &'a [evspool::Event]) -> BoxFuture<'a, Delivery> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
        match self.script.get(n).copied().unwrap_or(Step::Send) {
            Step::PanicBeforeTheFuture => panic!("a bug in the sink, before its future"),
            Step::PanicInsideTheFuture => {
                Box::pin(async { panic!("a bug in the sink, inside its future") })
            }
            Step::Retry => Box::pin(async {
                Delivery::Retry {
                    after: None,
                    reason: "scripted failure".into(),
                }
            }),
            Step::Send => self.inner.send(batch),
        }
    }
}

pub(crate) fn scripted(c: &Collector, script: Vec<Step>) -> Arc<Scripted> {
    Arc::new(Scripted {
        inner: sink(&c.url),
        script,
        calls: AtomicU64::new(0),
    })
}

/// A sink whose `send` panics before it returns its future: the panic is
/// outside `unwind_safe` (which polls the future `sink.send(events)` already
/// returned), so it ended the worker's task — with its in-flight count
/// raised for good. With one worker nothing more was sent and `drain`
/// waited out its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_panics_before_returning_its_future_costs_a_retry_not_the_worker() {
    const N: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..N);
    q.sync().await.unwrap();
    let c = Collector::start().await;
    let s = scripted(&c, vec![Step::PanicBeforeTheFuture]);
    let fwd = evspool::forward::Forwarder::new(q.clone())
        .route(T, s, route(1))
        .unwrap()
        .spawn();
    let report = fwd.drain(Duration::from_secs(5)).await;
    let delivered = counts(&c.accepted()).len();
    fwd.shutdown(Duration::from_secs(1)).await;
    q.close();
    assert!(
        report.complete,
        "{delivered} of {N} delivered; the drain: {report:?}"
    );
}

/// The same panic on the breaker's probe: the worker that held the probe
/// is gone and the breaker stays half-open with its probe "in flight", so
/// every other worker of the topic waits for an outcome that never comes —
/// the whole topic stops, however many workers it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_panics_on_the_breakers_probe_does_not_stop_the_topic() {
    const N: u64 = 10;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..N);
    q.sync().await.unwrap();
    let c = Collector::start().await;
    // The first batch fails (the breaker opens at once); the probe after
    // the open window panics; every later send goes through.
    let s = scripted(&c, vec![Step::Retry, Step::PanicBeforeTheFuture]);
    let mut r = route(2);
    // One lease carries every event: one worker sends at a time.
    r.batch_size = 100;
    r.breaker.failure_threshold = 1;
    let fwd = evspool::forward::Forwarder::new(q.clone())
        .route(T, s.clone(), r)
        .unwrap()
        .spawn();
    let all = c.wait_for(PATIENCE, |a| holds_all(a, N)).await;
    let calls = s.calls.load(Ordering::SeqCst);
    let breaker = fwd.stats()[T].breaker.clone();
    fwd.shutdown(Duration::from_secs(1)).await;
    q.close();
    assert!(
        all,
        "{} of {N} delivered in {PATIENCE:?}; {calls} sends; the breaker: {breaker}",
        counts(&c.accepted()).len()
    );
}

/// What held: a panic inside the future (e5b4a0f's case) on the breaker's
/// probe is a failed probe — the breaker opens again and the next probe
/// delivers; and a sink whose future panics at every send costs retries
/// only, never a worker: once it stops panicking everything is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_future_panics_repeatedly_costs_retries_only() {
    const N: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..N);
    q.sync().await.unwrap();
    let c = Collector::start().await;
    let s = scripted(&c, vec![Step::PanicInsideTheFuture; 6]);
    let mut r = route(2);
    r.breaker.failure_threshold = 1;
    let fwd = evspool::forward::Forwarder::new(q.clone())
        .route(T, s.clone(), r)
        .unwrap()
        .spawn();
    assert!(
        c.wait_for(PATIENCE, |a| holds_all(a, N)).await,
        "{} of {N} delivered",
        counts(&c.accepted()).len()
    );
    assert!(eventually(PATIENCE, || q.stats().total.events == 0).await);
    let report = fwd.drain(Duration::from_secs(5)).await;
    assert!(report.complete, "{report:?}");
    assert!(s.calls.load(Ordering::SeqCst) > 6);
    fwd.shutdown(Duration::from_secs(1)).await;
    q.close();
}
