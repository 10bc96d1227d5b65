//! Transient faults against real sockets: a collector that is down, slow or
//! rate limiting, transient statuses, socket faults from the raw TCP fault
//! server, and the shared circuit breaker. The generic HTTP sink, short
//! intervals, real time; every wait is bounded. Each test asserts what the
//! collector finally holds (events identified by `"n"`) and what the queue's
//! stats say.
//!
//! The helpers here are shared with `forward_lifecycle`.

use crate::support::faults::{Fault, FaultServer};
use evspool::forward::sink::http::{HttpClientConfig, HttpSink, HttpSinkConfig, build_client};
use evspool::forward::{Forwarder, ForwarderHandle, RouteConfig, RouteStats};
use evspool::{Enqueued, Queue, QueueConfig};
use evspool_testkit::collector::{Collector, Reply, Seen};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The topic every test forwards.
pub(crate) const T: &str = "t";
/// The breaker's open window in these tests.
pub(crate) const OPEN_FOR: Duration = Duration::from_millis(150);
/// The probe interval while a topic is paused by a configuration fault.
pub(crate) const CONFIG_PROBE: Duration = Duration::from_millis(200);
/// Upper bound of every wait for an outcome.
pub(crate) const PATIENCE: Duration = Duration::from_secs(15);

pub(crate) fn open_queue(dir: &Path) -> Queue {
    Queue::open(
        dir,
        QueueConfig {
            commit_interval: Duration::from_millis(10),
            ..QueueConfig::default()
        },
    )
    .unwrap()
}

/// Closes the queue, drops the handle and opens the same directory again.
pub(crate) fn reopen(q: Queue) -> Queue {
    let dir = q.dir().to_path_buf();
    q.close();
    drop(q);
    open_queue(&dir)
}

pub(crate) fn route(workers: usize) -> RouteConfig {
    let mut r = RouteConfig {
        workers,
        flush_interval: Duration::from_millis(10),
        flush_jitter: Duration::ZERO,
        config_fault_probe: CONFIG_PROBE,
        ..RouteConfig::default()
    };
    r.backoff.base = Duration::from_millis(20);
    r.backoff.max = Duration::from_millis(200);
    r.breaker.failure_threshold = 3;
    r.breaker.open_for = OPEN_FOR;
    r.breaker.open_max = OPEN_FOR;
    r
}

/// The generic JSON sink POSTing to `{base}/ingest`, with a short request timeout.
pub(crate) fn sink_with(base: &str, edit: impl FnOnce(&mut HttpSinkConfig)) -> Arc<HttpSink> {
    let client = build_client(&HttpClientConfig {
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(300),
        ..HttpClientConfig::default()
    })
    .unwrap();
    let mut cfg = HttpSinkConfig {
        url: format!("{base}/ingest"),
        ..HttpSinkConfig::default()
    };
    edit(&mut cfg);
    Arc::new(HttpSink::new(client, cfg).unwrap())
}

pub(crate) fn sink(base: &str) -> Arc<HttpSink> {
    sink_with(base, |_| {})
}

pub(crate) fn spawn(q: &Queue, sink: Arc<HttpSink>, r: RouteConfig) -> ForwarderHandle {
    Forwarder::new(q.clone()).route(T, sink, r).unwrap().spawn()
}

pub(crate) fn payload(n: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "n": n })).unwrap()
}

/// Enqueues `{"n": i}` for every `i` in `ns`, buffered.
pub(crate) fn fill(q: &Queue, ns: std::ops::Range<u64>) {
    for n in ns {
        let out = q.enqueue(T, payload(n)).unwrap();
        assert!(matches!(out, Enqueued::Accepted(_)), "{out:?}");
    }
}

pub(crate) fn n_of(e: &serde_json::Value) -> u64 {
    e["n"].as_u64().expect("every test event has an n")
}

/// How many times the collector accepted each `n`.
pub(crate) fn counts(events: &[serde_json::Value]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(n_of(e)).or_default() += 1;
    }
    out
}

pub(crate) fn holds_all(events: &[serde_json::Value], n: u64) -> bool {
    let got: BTreeSet<u64> = events.iter().filter_map(|e| e["n"].as_u64()).collect();
    (0..n).all(|i| got.contains(&i))
}

/// Polls a condition until it holds or a timeout passes (the test kit's).
pub(crate) use evspool_testkit::wait_until as eventually;

pub(crate) fn live(q: &Queue) -> u64 {
    q.stats().total.events
}

pub(crate) fn dead(q: &Queue) -> u64 {
    q.stats().topics.get(T).map_or(0, |t| t.dead.events)
}

pub(crate) fn route_stats(h: &ForwarderHandle) -> RouteStats {
    h.stats().remove(T).unwrap()
}

/// Every `n` still queued (read with `peek`, leased or not).
pub(crate) fn queued_ns(q: &Queue) -> BTreeSet<u64> {
    q.peek(T, 0, 1_000_000)
        .unwrap()
        .iter()
        .map(|p| n_of(&serde_json::from_slice(&p.event.payload).unwrap()))
        .collect()
}

/// Waits until the collector holds every `n` below `total` and the queue is
/// empty, then asserts each `n` was accepted exactly once and nothing is dead.
pub(crate) async fn assert_all_delivered_once(c: &Collector, q: &Queue, total: u64) {
    assert!(
        c.wait_for(PATIENCE, |a| holds_all(a, total)).await,
        "the collector is missing events: holds {} distinct of {total}",
        counts(&c.accepted()).len()
    );
    assert!(
        eventually(PATIENCE, || live(q) == 0).await,
        "the queue still holds {} events after every one was accepted",
        live(q)
    );
    let counts = counts(&c.accepted());
    assert_eq!(counts.len() as u64, total, "unexpected events accepted");
    let dup: Vec<_> = counts.iter().filter(|(_, k)| **k != 1).collect();
    assert!(dup.is_empty(), "events accepted more than once: {dup:?}");
    assert_eq!(dead(q), 0, "nothing may be dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_down_for_a_while_then_up_gets_every_event_and_producers_never_wait() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    // Down, and slow to say so: a producer that waited on the network would
    // take at least this long per call.
    c.respond(|_| Reply::status(503).delay(Duration::from_millis(300)));
    let fwd = spawn(&q, sink(&c.url), route(4));
    fill(&q, 0..100);
    assert!(
        eventually(PATIENCE, || c.requests().len() >= 2).await,
        "the forwarder never tried the collector"
    );

    // Producers keep going at full speed while requests are failing.
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for burst in 0..10u64 {
        for n in 100 + burst * 100..200 + burst * 100 {
            let t = Instant::now();
            let out = q.enqueue(T, payload(n)).unwrap();
            slowest = slowest.max(t.elapsed());
            assert!(matches!(out, Enqueued::Accepted(_)), "{out:?}");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let spent = started.elapsed() - Duration::from_millis(300);
    assert!(
        slowest < Duration::from_millis(50),
        "an enqueue took {slowest:?} while the collector was down"
    );
    assert!(
        spent < Duration::from_secs(1),
        "1000 enqueues took {spent:?} while the collector was down"
    );
    assert!(c.accepted().is_empty(), "the collector was down");
    assert!(c.requests().len() >= 2);
    assert!(route_stats(&fwd).retried > 0);
    assert_eq!(
        live(&q),
        1100,
        "nothing is lost while the collector is down"
    );

    c.respond(|_| Reply::ok());
    assert_all_delivered_once(&c, &q, 1100).await;
    assert_eq!(route_stats(&fwd).delivered, 1100);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_statuses_500_502_503_504_and_408_are_retried_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    const STATUSES: [u16; 5] = [500, 502, 503, 504, 408];
    c.respond(|s| match STATUSES.get(s.n / 2) {
        Some(status) => Reply::status(*status).body("try later"),
        None => Reply::ok(),
    });
    fill(&q, 0..300);
    let fwd = spawn(&q, sink(&c.url), route(4));
    assert_all_delivered_once(&c, &q, 300).await;

    let reqs = c.requests();
    assert!(reqs.len() > 10, "only {} requests", reqs.len());
    // Every event refused by a transient status came back in a later request.
    for r in &reqs[..10] {
        assert!(!r.events.is_empty());
        for e in &r.events {
            let again = reqs[10..].iter().any(|l| l.events.contains(e));
            assert!(
                again,
                "event {e} refused by request {} was never resent",
                r.n
            );
        }
    }
    let stats = route_stats(&fwd);
    assert_eq!(stats.delivered, 300);
    assert_eq!(stats.dead, 0);
    assert!(stats.retried >= 10, "{stats:?}");
    fwd.shutdown(Duration::from_secs(1)).await;
}

/// How long the collector holds the 429 before answering, so the other
/// workers' first requests are surely in flight when it arrives.
const HOLD_429: Duration = Duration::from_millis(150);

/// With four workers and eight ready batches, the first request is answered
/// 429 (after `HOLD_429`) while the other three workers' requests are in
/// flight and answered 200 later still. `retry_after(now)` gives the header
/// value and the pause it asks for, counted from when the 429 is sent. No
/// request may reach the collector after the 429 until that pause has
/// elapsed: every worker holds off, not only the one that got the 429, and a
/// success of a request sent before the 429 does not lift the pause.
async fn a_429_pauses_every_worker(
    retry_after: impl Fn(SystemTime) -> (String, Duration) + Send + Sync + 'static,
) {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..400);
    q.sync().await.unwrap();
    let c = Collector::start().await;
    let pause: Arc<Mutex<Option<Duration>>> = Arc::default();
    let p = pause.clone();
    c.respond(move |s: &Seen| {
        if s.n == 0 {
            let (value, pause) = retry_after(SystemTime::now() + HOLD_429);
            *p.lock().unwrap() = Some(pause);
            Reply::status(429)
                .header("retry-after", &value)
                .delay(HOLD_429)
        } else {
            Reply::ok().delay(HOLD_429 * 2)
        }
    });
    let fwd = spawn(&q, sink(&c.url), route(4));
    assert_all_delivered_once(&c, &q, 400).await;
    fwd.shutdown(Duration::from_secs(1)).await;

    let pause = pause.lock().unwrap().expect("the 429 was sent");
    let reqs = c.requests();
    let sent_429 = reqs[0].at + HOLD_429;
    let in_flight = reqs.iter().skip(1).filter(|r| r.at < sent_429).count();
    assert_eq!(
        in_flight, 3,
        "the other three workers should have had a request in flight"
    );
    let later: Vec<Duration> = reqs
        .iter()
        .filter(|r| r.at >= sent_429)
        .map(|r| r.at - sent_429)
        .collect();
    assert!(!later.is_empty(), "the refused batch was never resent");
    let early: Vec<_> = later.iter().filter(|d| **d < pause.mul_f64(0.8)).collect();
    assert!(
        early.is_empty(),
        "requests arrived {early:?} after a 429 asking for {pause:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_in_seconds_pauses_every_worker_for_that_long() {
    a_429_pauses_every_worker(|_| ("1".to_string(), Duration::from_secs(1))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_as_an_http_date_pauses_every_worker_until_that_date() {
    a_429_pauses_every_worker(|sent| {
        let value = httpdate::fmt_http_date(sent + Duration::from_secs(2));
        // The date has whole seconds: the pause really asked for is a bit shorter.
        let at = httpdate::parse_http_date(&value).unwrap();
        (value, at.duration_since(sent).unwrap_or_default())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_without_retry_after_is_retried_with_backoff_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    c.respond(|s| {
        if s.n < 4 {
            Reply::status(429)
        } else {
            Reply::ok()
        }
    });
    fill(&q, 0..200);
    let fwd = spawn(&q, sink(&c.url), route(4));
    assert_all_delivered_once(&c, &q, 200).await;
    let reqs = c.requests();
    let refused: BTreeSet<u64> = reqs[..4]
        .iter()
        .flat_map(|r| r.events.iter().map(n_of))
        .collect();
    let resent: BTreeSet<u64> = reqs[4..]
        .iter()
        .flat_map(|r| r.events.iter().map(n_of))
        .collect();
    assert!(!refused.is_empty());
    assert!(refused.is_subset(&resent), "refused events were not resent");
    let stats = route_stats(&fwd);
    assert!(stats.retried >= refused.len() as u64, "{stats:?}");
    assert_eq!(stats.dead, 0);
    fwd.shutdown(Duration::from_secs(1)).await;
}

/// Points the forwarder at `target` (a fault server, or a port with nothing
/// behind it), lets it fail a few times, stops it, reopens the queue and
/// checks every event is still there, then forwards to a good collector.
async fn a_socket_fault_loses_nothing(target: &str, connections: impl Fn() -> usize) {
    const N: u64 = 120;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..N);
    let fwd = spawn(&q, sink(target), route(2));
    assert!(
        eventually(PATIENCE, || route_stats(&fwd).requests >= 3).await,
        "the forwarder did not retry: {:?}",
        route_stats(&fwd)
    );
    let stats = route_stats(&fwd);
    assert_eq!(stats.delivered, 0, "{stats:?}");
    assert_eq!(stats.dead, 0, "{stats:?}");
    assert!(stats.retried > 0, "{stats:?}");
    assert!(connections() >= 2, "only {} connections", connections());
    fwd.shutdown(Duration::from_millis(200)).await;

    let q = reopen(q);
    assert_eq!(live(&q), N, "events were lost to the fault");
    assert_eq!(dead(&q), 0, "a transient fault must not dead-letter");
    assert_eq!(queued_ns(&q), (0..N).collect::<BTreeSet<_>>());

    let c = Collector::start().await;
    let fwd = spawn(&q, sink(&c.url), route(2));
    assert_all_delivered_once(&c, &q, N).await;
    fwd.shutdown(Duration::from_secs(1)).await;
}

async fn a_fault_server_loses_nothing(fault: Fault) {
    let server = FaultServer::start(fault).await;
    let conns = server.connections.clone();
    a_socket_fault_loses_nothing(&server.url, move || {
        conns.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_and_nothing_is_lost() {
    let (origin, _port) = evspool_testkit::refusing_origin();
    a_socket_fault_loses_nothing(&origin, || usize::MAX).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_before_the_response_is_retried_and_nothing_is_lost() {
    a_fault_server_loses_nothing(Fault::CloseBeforeResponse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_after_the_request_is_retried_and_nothing_is_lost() {
    a_fault_server_loses_nothing(Fault::Reset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_response_is_retried_and_nothing_is_lost() {
    a_fault_server_loses_nothing(Fault::ResetMidResponse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_hanging_past_the_timeout_is_retried_and_nothing_is_lost() {
    a_fault_server_loses_nothing(Fault::Hang).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_with_a_truncated_body_is_retried_and_nothing_is_lost() {
    a_fault_server_loses_nothing(Fault::TruncatedBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_lets_one_probe_through_per_interval_across_eight_workers() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    // Down; each answer takes a little while so overlapping requests would show.
    c.respond(|_| Reply::status(503).delay(Duration::from_millis(30)));
    fill(&q, 0..400);
    q.sync().await.unwrap();
    let r = route(8);
    let threshold = r.breaker.failure_threshold as usize;
    let fwd = spawn(&q, sink(&c.url), r);
    assert!(
        eventually(PATIENCE, || route_stats(&fwd).breaker != "closed").await,
        "the breaker never opened"
    );
    // Let the requests sent before it opened come back, then count.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let window = Duration::from_millis(1200);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let end = Instant::now();
    let during: Vec<Instant> = c
        .requests()
        .iter()
        .map(|s| s.at)
        .filter(|at| *at >= start && *at < end)
        .collect();
    // Eight workers retrying with a 20-200 ms backoff and no breaker would
    // send about 80 requests here; one probe per open window sends about 7.
    let most = (window.as_millis() / OPEN_FOR.as_millis()) as usize + threshold;
    assert!(
        during.len() <= most,
        "{} requests in {window:?} with the breaker open (at most {most})",
        during.len()
    );
    assert!(during.len() >= 2, "the breaker never probed: {during:?}");
    for pair in during.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= OPEN_FOR.mul_f64(0.8),
            "two requests {gap:?} apart while the breaker was open"
        );
    }
    assert_eq!(live(&q), 400);
    assert_eq!(dead(&q), 0);

    c.respond(|_| Reply::ok());
    assert_all_delivered_once(&c, &q, 400).await;
    assert_eq!(route_stats(&fwd).breaker, "closed");
    fwd.shutdown(Duration::from_secs(1)).await;
}
