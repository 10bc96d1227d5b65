//! Permanent and configuration outcomes against a real collector: 413 splits,
//! events too large for the sink, a 400 without detail bisected down to the
//! poison events, and 401/403/3xx pausing the topic without losing anything.

use crate::forward_faults::{
    CONFIG_PROBE, PATIENCE, T, assert_all_delivered_once, counts, dead, eventually, fill, live,
    n_of, open_queue, payload, route, route_stats, sink, sink_with, spawn,
};
use evspool::Queue;
use evspool::forward::TOO_LARGE;
use evspool_testkit::collector::{Collector, Reply};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Waits until `expected` are accepted and the queue is empty; asserts each
/// of them was accepted exactly once and nothing else was.
async fn assert_delivered_once(c: &Collector, q: &Queue, expected: &BTreeSet<u64>) {
    let all = |a: &[serde_json::Value]| {
        let got: BTreeSet<u64> = a.iter().map(n_of).collect();
        expected.is_subset(&got)
    };
    assert!(
        c.wait_for(PATIENCE, all).await,
        "the collector is missing events"
    );
    assert!(
        eventually(PATIENCE, || live(q) == 0).await,
        "the queue still holds {} events",
        live(q)
    );
    let counts = counts(&c.accepted());
    assert_eq!(
        counts.keys().copied().collect::<BTreeSet<_>>(),
        *expected,
        "the collector accepted other events than expected"
    );
    let dup: Vec<_> = counts.iter().filter(|(_, k)| **k != 1).collect();
    assert!(dup.is_empty(), "events accepted more than once: {dup:?}");
}

fn dead_letters(q: &Queue) -> Vec<(u64, String)> {
    q.dead_letters(T, 0, 1000)
        .unwrap()
        .into_iter()
        .map(|d| (n_of(&serde_json::from_slice(&d.payload).unwrap()), d.reason))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_batches_until_they_fit_and_every_event_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    c.respond(|s| {
        if s.events.len() > 10 {
            Reply::status(413).body("request entity too large")
        } else {
            Reply::ok()
        }
    });
    fill(&q, 0..300);
    let fwd = spawn(&q, sink(&c.url), route(4));
    assert_all_delivered_once(&c, &q, 300).await;
    let reqs = c.requests();
    assert!(
        reqs.iter().any(|r| r.events.len() > 10),
        "no batch was large enough to be refused"
    );
    let stats = route_stats(&fwd);
    assert_eq!(stats.delivered, 300);
    assert_eq!(stats.dead, 0);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_sinks_event_limit_is_dead_lettered_as_too_large_and_the_rest_delivered()
{
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    const BIG: u64 = 77;
    for n in 0..150u64 {
        let p = if n == BIG {
            serde_json::to_vec(&serde_json::json!({ "n": n, "pad": "x".repeat(2000) })).unwrap()
        } else {
            payload(n)
        };
        let _ = q.enqueue(T, p).unwrap();
    }
    let s = sink_with(&c.url, |cfg| {
        cfg.max_event_bytes = bytesize::ByteSize::b(1000)
    });
    let fwd = spawn(&q, s, route(4));
    let expected: BTreeSet<u64> = (0..150).filter(|n| *n != BIG).collect();
    assert_delivered_once(&c, &q, &expected).await;
    let dl = dead_letters(&q);
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].0, BIG);
    assert!(dl[0].1.starts_with(TOO_LARGE), "reason {:?}", dl[0].1);
    assert_eq!(dead(&q), 1);
    assert!(
        c.requests()
            .iter()
            .all(|r| r.events.iter().all(|e| n_of(e) != BIG)),
        "the oversized event was sent"
    );
    assert_eq!(route_stats(&fwd).dead, 1);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_event_the_collector_refuses_with_413_is_dead_lettered_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    const BIG: u64 = 33;
    // The collector's limit is lower than the sink knows: only a 413 tells.
    c.respond(|s| {
        if s.events.iter().any(|e| n_of(e) == BIG) {
            Reply::status(413)
        } else {
            Reply::ok()
        }
    });
    fill(&q, 0..100);
    let fwd = spawn(&q, sink(&c.url), route(2));
    let expected: BTreeSet<u64> = (0..100).filter(|n| *n != BIG).collect();
    assert_delivered_once(&c, &q, &expected).await;
    assert!(eventually(PATIENCE, || dead(&q) == 1).await);
    let dl = dead_letters(&q);
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].0, BIG);
    assert!(dl[0].1.starts_with(TOO_LARGE), "reason {:?}", dl[0].1);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_without_detail_is_bisected_and_only_the_poison_events_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    c.respond(|s| {
        if s.events.iter().any(|e| e["poison"] == true) {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    });
    let poison: BTreeSet<u64> = [13, 61, 62, 140].into();
    for n in 0..200u64 {
        let p = if poison.contains(&n) {
            serde_json::to_vec(&serde_json::json!({ "n": n, "poison": true })).unwrap()
        } else {
            payload(n)
        };
        let _ = q.enqueue(T, p).unwrap();
    }
    let fwd = spawn(&q, sink(&c.url), route(4));
    let clean: BTreeSet<u64> = (0..200).filter(|n| !poison.contains(n)).collect();
    assert_delivered_once(&c, &q, &clean).await;
    let dl = dead_letters(&q);
    assert_eq!(
        dl.iter().map(|d| d.0).collect::<BTreeSet<_>>(),
        poison,
        "{dl:?}"
    );
    assert_eq!(dl.len(), poison.len(), "{dl:?}");
    assert!(dl.iter().all(|d| d.1.contains("400")), "{dl:?}");
    assert_eq!(dead(&q), poison.len() as u64);
    // The collector saw the poison only in the bisection's requests: each
    // poison event alone at the end.
    for p in &poison {
        assert!(
            c.requests()
                .iter()
                .any(|r| r.events.len() == 1 && n_of(&r.events[0]) == *p),
            "poison event {p} was never isolated"
        );
    }
    let stats = route_stats(&fwd);
    assert_eq!(stats.dead, poison.len() as u64);
    assert_eq!(stats.delivered, clean.len() as u64);
    fwd.shutdown(Duration::from_secs(1)).await;
}

/// The collector refuses the configuration with `refuse`; the topic pauses,
/// probes slowly, keeps every event; once the collector accepts again
/// everything is delivered and the topic resumes.
async fn a_config_fault_pauses_and_keeps_everything(refuse: fn() -> Reply) {
    const N: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    c.respond(move |s| {
        if s.path == "/ingest" {
            refuse()
        } else {
            // Where a redirect points: a followed redirect would land here.
            Reply::ok()
        }
    });
    fill(&q, 0..N);
    let fwd = spawn(&q, sink(&c.url), route(4));
    assert!(
        eventually(PATIENCE, || route_stats(&fwd).paused).await,
        "the topic never paused: {:?}",
        route_stats(&fwd)
    );
    // While paused the topic only probes, once per probe interval.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let before = c.requests().len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let during = c.requests().len() - before;
    let most = (start.elapsed().as_millis() / CONFIG_PROBE.as_millis()) as usize + 2;
    assert!(
        during <= most,
        "{during} requests in {:?} while paused (at most {most})",
        start.elapsed()
    );
    assert!(route_stats(&fwd).paused);
    assert_eq!(live(&q), N, "a configuration fault must keep every event");
    assert_eq!(dead(&q), 0, "a configuration fault must not dead-letter");
    assert!(c.accepted().is_empty());
    assert!(
        c.requests().iter().all(|r| r.path == "/ingest"),
        "a redirect was followed"
    );

    c.respond(|_| Reply::ok());
    crate::forward_faults::assert_all_delivered_once(&c, &q, N).await;
    assert!(
        eventually(PATIENCE, || !route_stats(&fwd).paused).await,
        "the topic stayed paused after the collector accepted again"
    );
    // A worker counts a batch once its settle returned: the queue can be
    // empty a moment before the last batch is counted.
    assert!(
        eventually(PATIENCE, || route_stats(&fwd).delivered == N).await,
        "{:?}",
        route_stats(&fwd)
    );
    let stats = route_stats(&fwd);
    assert_eq!(stats.delivered, N);
    assert_eq!(stats.dead, 0);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_pauses_the_topic_keeps_every_event_and_resumes_when_accepted() {
    a_config_fault_pauses_and_keeps_everything(|| Reply::status(401).body("bad token")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_403_pauses_the_topic_keeps_every_event_and_resumes_when_accepted() {
    a_config_fault_pauses_and_keeps_everything(|| Reply::status(403)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_302_is_not_followed_pauses_the_topic_and_keeps_every_event() {
    a_config_fault_pauses_and_keeps_everything(|| Reply::status(302).header("location", "/moved"))
        .await;
}
