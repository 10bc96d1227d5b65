//! The forwarder against real sockets: a scriptable collector and a raw TCP
//! fault server on 127.0.0.1:0, the generic HTTP sink, short intervals, real
//! time. Each test asserts what the collector finally holds and what the
//! queue's stats say; every wait is bounded.

use crate::support::collector::{Collector, Reply, Seen};
use crate::support::faults::{Fault, FaultServer};
use evspool::forward::sink::http::{HttpClientConfig, HttpSink, HttpSinkConfig, build_client};
use evspool::forward::{Forwarder, ForwarderHandle, RouteConfig};
use evspool::{Queue, QueueConfig};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn queue(dir: &std::path::Path) -> Queue {
    Queue::open(
        dir,
        QueueConfig {
            commit_interval: Duration::from_millis(5),
            ..QueueConfig::default()
        },
    )
    .unwrap()
}

fn route(workers: usize) -> RouteConfig {
    let mut r = RouteConfig {
        workers,
        flush_interval: Duration::from_millis(5),
        flush_jitter: Duration::ZERO,
        config_fault_probe: Duration::from_millis(200),
        ..RouteConfig::default()
    };
    r.backoff.base = Duration::from_millis(20);
    r.backoff.max = Duration::from_millis(100);
    r.breaker.failure_threshold = 1000;
    r
}

fn sink(url: &str, timeout: Duration, max_event: u64) -> Arc<HttpSink> {
    let client = build_client(&HttpClientConfig {
        timeout,
        connect_timeout: Duration::from_millis(300),
        ..HttpClientConfig::default()
    })
    .unwrap();
    let cfg = HttpSinkConfig {
        url: format!("{url}/ingest"),
        max_event_bytes: bytesize::ByteSize::b(max_event),
        ..HttpSinkConfig::default()
    };
    Arc::new(HttpSink::new(client, cfg).unwrap())
}

fn start(q: &Queue, url: &str, r: RouteConfig) -> ForwarderHandle {
    Forwarder::new(q.clone())
        .route("t", sink(url, Duration::from_secs(2), 1 << 20), r)
        .unwrap()
        .spawn()
}

async fn fill(q: &Queue, n: u64) {
    for i in 0..n {
        let _ = q
            .enqueue_durable("t", format!(r#"{{"n":{i}}}"#))
            .await
            .unwrap();
    }
}

fn ns(events: &[serde_json::Value]) -> BTreeSet<u64> {
    events.iter().filter_map(|e| e["n"].as_u64()).collect()
}

async fn all_delivered(c: &Collector, n: u64) -> bool {
    let want: BTreeSet<u64> = (0..n).collect();
    c.wait_for(Duration::from_secs(20), |a| ns(a).is_superset(&want))
        .await
}

/// Waits (bounded) until the queue holds nothing live.
async fn empty(q: &Queue) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if q.stats().total.events == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_collector_down_for_a_while_then_up_gets_every_event_and_enqueue_never_waits() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    let up_at = Instant::now() + Duration::from_millis(800);
    c.respond(move |_| {
        if Instant::now() < up_at {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let q = queue(dir.path());
    let fwd = start(&q, &c.url, route(4));
    // While the collector is down, producers run at memory speed.
    let mut slowest = Duration::ZERO;
    for i in 0..2000u64 {
        let t = Instant::now();
        let _ = q.enqueue("t", format!(r#"{{"n":{i}}}"#)).unwrap();
        slowest = slowest.max(t.elapsed());
    }
    assert!(
        Instant::now() < up_at,
        "the enqueues took longer than the outage"
    );
    assert!(
        slowest < Duration::from_millis(50),
        "an enqueue waited {slowest:?}"
    );
    assert!(all_delivered(&c, 2000).await, "not every event arrived");
    assert!(empty(&q).await);
    assert!(
        c.requests().iter().any(|r| r.at < up_at),
        "the outage was never seen"
    );
    fwd.shutdown(Duration::from_secs(2)).await;
    assert_eq!(q.stats().topics["t"].dead.events, 0);
}

#[tokio::test]
async fn transient_statuses_are_retried_until_everything_is_delivered() {
    for status in [500u16, 502, 503, 504, 408] {
        let dir = tempfile::tempdir().unwrap();
        let c = Collector::start().await;
        c.respond(move |s| {
            if s.n < 3 {
                Reply::status(status)
            } else {
                Reply::ok()
            }
        });
        let q = queue(dir.path());
        fill(&q, 120).await;
        let fwd = start(&q, &c.url, route(2));
        assert!(
            all_delivered(&c, 120).await,
            "status {status}: not every event arrived"
        );
        assert!(empty(&q).await, "status {status}");
        let stats = fwd.stats();
        fwd.shutdown(Duration::from_secs(2)).await;
        assert!(stats["t"].retried > 0, "status {status} was not retried");
        assert_eq!(q.stats().topics["t"].dead.events, 0, "status {status}");
    }
}

/// Requests after the first burst of 429s arrive only once the pause is over.
fn assert_paused(requests: &[Seen], pause: Duration) {
    let first = requests[0].at;
    let burst_end = first + Duration::from_millis(150);
    let after: Vec<Duration> = requests
        .iter()
        .filter(|r| r.at > burst_end)
        .map(|r| r.at - first)
        .collect();
    assert!(!after.is_empty(), "nothing was sent after the 429s");
    let earliest = after.iter().min().unwrap();
    assert!(
        *earliest >= pause.mul_f64(0.8),
        "a request came {earliest:?} after the first 429, before the {pause:?} pause"
    );
}

#[tokio::test]
async fn a_429_with_retry_after_in_seconds_pauses_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    let q = queue(dir.path());
    fill(&q, 200).await;
    let t0 = Arc::new(std::sync::OnceLock::<Instant>::new());
    let t = t0.clone();
    c.respond(move |s| {
        let first = *t.get_or_init(|| s.at);
        if s.at < first + Duration::from_millis(100) {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::ok()
        }
    });
    let fwd = start(&q, &c.url, route(4));
    assert!(all_delivered(&c, 200).await);
    fwd.shutdown(Duration::from_secs(2)).await;
    assert_paused(&c.requests(), Duration::from_secs(1));
}

#[tokio::test]
async fn a_429_with_retry_after_as_an_http_date_pauses_until_that_date() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    let q = queue(dir.path());
    fill(&q, 100).await;
    let t0 = Arc::new(std::sync::OnceLock::<Instant>::new());
    let t = t0.clone();
    c.respond(move |s| {
        let first = *t.get_or_init(|| s.at);
        if s.at < first + Duration::from_millis(100) {
            // HTTP dates have whole seconds: 3 s from now is at least 2 s away.
            let date =
                httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3));
            Reply::status(429).header("retry-after", &date)
        } else {
            Reply::ok()
        }
    });
    let fwd = start(&q, &c.url, route(2));
    assert!(all_delivered(&c, 100).await);
    fwd.shutdown(Duration::from_secs(2)).await;
    assert_paused(&c.requests(), Duration::from_secs(2));
}

#[tokio::test]
async fn a_429_without_retry_after_is_retried_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    c.respond(|s| {
        if s.n < 2 {
            Reply::status(429)
        } else {
            Reply::ok()
        }
    });
    let q = queue(dir.path());
    fill(&q, 60).await;
    let fwd = start(&q, &c.url, route(1));
    assert!(all_delivered(&c, 60).await);
    assert!(empty(&q).await);
    fwd.shutdown(Duration::from_secs(2)).await;
    let reqs = c.requests();
    assert!(reqs.len() >= 3);
    assert_eq!(q.stats().topics["t"].dead.events, 0);
}

#[tokio::test]
async fn socket_faults_and_refused_connections_lose_nothing() {
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mut targets: Vec<(String, Option<FaultServer>)> = vec![(refused, None)];
    for f in [
        Fault::CloseBeforeResponse,
        Fault::Reset,
        Fault::Hang,
        Fault::TruncatedBody,
        Fault::ResetMidResponse,
    ] {
        let s = FaultServer::start(f).await;
        targets.push((s.url.clone(), Some(s)));
    }
    for (url, server) in targets {
        let dir = tempfile::tempdir().unwrap();
        let q = queue(dir.path());
        fill(&q, 100).await;
        let fwd = Forwarder::new(q.clone())
            .route(
                "t",
                sink(&url, Duration::from_millis(300), 1 << 20),
                route(2),
            )
            .unwrap()
            .spawn();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let stats = fwd.stats();
        fwd.shutdown(Duration::from_millis(500)).await;
        if let Some(s) = &server {
            assert!(
                s.connections.load(std::sync::atomic::Ordering::SeqCst) > 0,
                "{url}: never reached"
            );
        }
        assert_eq!(
            stats["t"].delivered, 0,
            "{url}: a fault counted as delivered"
        );
        assert!(stats["t"].requests > 0, "{url}: nothing was tried");
        let s = q.stats();
        assert_eq!(s.total.events, 100, "{url}: events lost");
        assert_eq!(
            s.topics["t"].dead.events, 0,
            "{url}: a transient fault dead-lettered"
        );
        // The same queue, now with a working collector, delivers everything.
        let c = Collector::start().await;
        let fwd = start(&q, &c.url, route(2));
        assert!(
            all_delivered(&c, 100).await,
            "{url}: not delivered afterwards"
        );
        fwd.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
async fn an_open_breaker_lets_one_probe_through_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    c.respond(|_| Reply::status(503));
    let q = queue(dir.path());
    fill(&q, 1000).await;
    let mut r = route(8);
    r.breaker.failure_threshold = 3;
    r.breaker.open_for = Duration::from_millis(250);
    r.breaker.open_max = Duration::from_millis(250);
    let fwd = start(&q, &c.url, r);
    let run = Duration::from_millis(1500);
    tokio::time::sleep(run).await;
    fwd.shutdown(Duration::from_secs(1)).await;
    let reqs = c.requests();
    // 8 workers with a 20-100 ms backoff and no breaker would send well over a
    // hundred requests here; with it: the first failures, then one probe per 250 ms.
    let bound = 8 + 3 + (run.as_millis() / 250) as usize + 2;
    assert!(
        reqs.len() <= bound,
        "{} requests while the breaker was open (bound {bound})",
        reqs.len()
    );
    // While open, probes never overlap: after the opening burst, requests are spaced.
    let first = reqs[0].at;
    let later: Vec<Instant> = reqs
        .iter()
        .map(|r| r.at)
        .filter(|t| *t > first + Duration::from_millis(200))
        .collect();
    for w in later.windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(150),
            "two probes {:?} apart",
            w[1] - w[0]
        );
    }
    assert_eq!(q.stats().total.events, 1000);
}

#[tokio::test]
async fn a_413_splits_the_batch_until_every_event_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    c.respond(|s| {
        if s.events.len() > 10 {
            Reply::status(413)
        } else {
            Reply::ok()
        }
    });
    let q = queue(dir.path());
    fill(&q, 150).await;
    let fwd = start(&q, &c.url, route(2));
    assert!(all_delivered(&c, 150).await);
    assert!(empty(&q).await);
    fwd.shutdown(Duration::from_secs(2)).await;
    assert!(c.accepted().len() >= 150);
    assert_eq!(q.stats().topics["t"].dead.events, 0);
}

#[tokio::test]
async fn a_single_event_over_the_sinks_limit_is_dead_lettered_as_too_large_and_the_rest_delivered()
{
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    let q = queue(dir.path());
    fill(&q, 30).await;
    let big = format!(r#"{{"n":999,"pad":"{}"}}"#, "x".repeat(3000));
    let _ = q.enqueue_durable("t", big).await.unwrap();
    let fwd = Forwarder::new(q.clone())
        .route("t", sink(&c.url, Duration::from_secs(2), 1000), route(2))
        .unwrap()
        .spawn();
    assert!(all_delivered(&c, 30).await);
    assert!(empty(&q).await);
    fwd.shutdown(Duration::from_secs(2)).await;
    assert!(
        !ns(&c.accepted()).contains(&999),
        "the oversized event was sent"
    );
    let dead = q.dead_letters("t", 0, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.starts_with("too_large"),
        "{}",
        dead[0].reason
    );
}

#[tokio::test]
async fn a_400_without_detail_is_bisected_so_only_the_poison_events_are_dead() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    c.respond(|s| {
        if s.events.iter().any(|e| e["poison"] == true) {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    });
    let q = queue(dir.path());
    for i in 0..50u64 {
        let poison = if i == 7 || i == 33 {
            r#","poison":true"#
        } else {
            ""
        };
        let _ = q
            .enqueue_durable("t", format!(r#"{{"n":{i}{poison}}}"#))
            .await
            .unwrap();
    }
    let fwd = start(&q, &c.url, route(1));
    let clean: BTreeSet<u64> = (0..50).filter(|n| *n != 7 && *n != 33).collect();
    assert!(
        c.wait_for(Duration::from_secs(10), |a| ns(a) == clean)
            .await
    );
    assert!(empty(&q).await);
    fwd.shutdown(Duration::from_secs(2)).await;
    let dead: BTreeSet<u64> = q
        .dead_letters("t", 0, 10)
        .unwrap()
        .iter()
        .map(|d| {
            serde_json::from_slice::<serde_json::Value>(&d.payload).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(dead, BTreeSet::from([7, 33]));
    // Each clean event was accepted exactly once.
    assert_eq!(c.accepted().len(), 48);
}

#[tokio::test]
async fn configuration_faults_pause_the_topic_and_keep_every_event_until_fixed() {
    for status in [401u16, 403, 302] {
        let dir = tempfile::tempdir().unwrap();
        let c = Collector::start().await;
        let fixed_at = Instant::now() + Duration::from_millis(900);
        c.respond(move |_| {
            if Instant::now() < fixed_at {
                Reply::status(status).header("location", "http://127.0.0.1:1/elsewhere")
            } else {
                Reply::ok()
            }
        });
        let q = queue(dir.path());
        fill(&q, 80).await;
        let fwd = start(&q, &c.url, route(4));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let paused = fwd.stats()["t"].clone();
        assert!(paused.paused, "status {status}: topic not paused");
        assert_eq!(paused.dead, 0, "status {status}");
        assert_eq!(
            q.stats().total.events,
            80,
            "status {status}: events lost while paused"
        );
        // Paused means probing slowly, not hammering.
        let during = c.requests().iter().filter(|r| r.at < fixed_at).count();
        assert!(
            during <= 4 + 1 + 5,
            "status {status}: {during} requests while paused"
        );
        assert!(
            all_delivered(&c, 80).await,
            "status {status}: not delivered once fixed"
        );
        assert!(empty(&q).await);
        let after = fwd.stats()["t"].clone();
        fwd.shutdown(Duration::from_secs(2)).await;
        assert!(!after.paused, "status {status}: still paused");
        assert_eq!(q.stats().topics["t"].dead.events, 0);
    }
}

#[tokio::test]
async fn shutdown_with_batches_in_flight_loses_nothing_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    c.respond(|_| Reply::ok().delay(Duration::from_secs(2)));
    {
        let q = queue(dir.path());
        fill(&q, 200).await;
        let fwd = start(&q, &c.url, route(4));
        let until = Instant::now() + Duration::from_secs(5);
        while c.requests().is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let report = fwd.shutdown(Duration::from_millis(200)).await;
        assert!(report.cancelled > 0, "{report:?}");
        q.close();
    }
    let q = queue(dir.path());
    let remaining: BTreeSet<u64> = q
        .peek("t", 0, 1000)
        .unwrap()
        .iter()
        .filter_map(|p| {
            serde_json::from_slice::<serde_json::Value>(&p.event.payload).unwrap()["n"].as_u64()
        })
        .collect();
    let accepted = ns(&c.accepted());
    let all: BTreeSet<u64> = remaining.union(&accepted).copied().collect();
    assert_eq!(
        all,
        (0..200).collect::<BTreeSet<u64>>(),
        "events lost across the shutdown"
    );
    assert_eq!(
        remaining.len(),
        200,
        "the cancelled batches were not released"
    );
}

#[tokio::test]
async fn drain_reports_what_it_delivered_and_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    let q = queue(dir.path());
    fill(&q, 300).await;
    let mut r = route(4);
    r.flush_interval = Duration::from_secs(3600);
    let fwd = start(&q, &c.url, r.clone());
    let report = fwd.drain(Duration::from_secs(10)).await;
    fwd.shutdown(Duration::from_secs(2)).await;
    assert!(report.complete, "{report:?}");
    assert_eq!(report.remaining, 0);
    assert_eq!(fwd_total(&c), 300);
    // Against a collector that is down, the drain gives up and says what is left.
    let down = Collector::start().await;
    down.respond(|_| Reply::status(503));
    fill(&q, 40).await;
    let fwd = start(&q, &down.url, r);
    let report = fwd.drain(Duration::from_millis(500)).await;
    fwd.shutdown(Duration::from_secs(2)).await;
    assert!(!report.complete);
    assert_eq!(report.remaining, 40);
    assert_eq!(report.delivered, 0);
}

fn fwd_total(c: &Collector) -> usize {
    ns(&c.accepted()).len()
}
