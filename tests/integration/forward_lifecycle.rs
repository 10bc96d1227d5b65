//! The forwarder's lifecycle against a real collector: shutdown with batches
//! in flight, drain reports, and event ids that survive retries and restarts.

use crate::forward_faults::{
    PATIENCE, T, assert_all_delivered_once, counts, dead, eventually, fill, live, n_of, open_queue,
    queued_ns, reopen, route, route_stats, sink, sink_with, spawn,
};
use evspool_testkit::collector::{Collector, Reply};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_batches_in_flight_cancels_them_and_loses_nothing_across_a_reopen() {
    const N: u64 = 400;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..N);
    q.sync().await.unwrap();
    let slow = Collector::start().await;
    slow.respond(|_| Reply::ok().delay(Duration::from_secs(2)));
    let fwd = spawn(&q, sink_with(&slow.url, |_| {}), {
        let mut r = route(4);
        // The slow collector is not a fault; only the request timeout matters.
        r.breaker.failure_threshold = 100;
        r
    });
    assert!(
        eventually(PATIENCE, || slow.requests().len() >= 4).await,
        "four batches should be in flight"
    );
    let started = Instant::now();
    let report = fwd.shutdown(Duration::from_millis(200)).await;
    let took = started.elapsed();
    let accepted: BTreeSet<u64> = slow.accepted().iter().map(n_of).collect();

    let q = reopen(q);
    let queued = queued_ns(&q);
    let lost: Vec<u64> = (0..N)
        .filter(|n| !accepted.contains(n) && !queued.contains(n))
        .collect();
    assert!(lost.is_empty(), "events lost by the shutdown: {lost:?}");
    // No batch was acknowledged before the deadline, so nothing may be gone.
    assert_eq!(live(&q), N);
    assert_eq!(queued.len() as u64, N);
    assert_eq!(dead(&q), 0);
    assert!(report.cancelled > 0, "{report:?}");
    assert_eq!(report.cancelled + report.finished, 4, "{report:?}");
    assert!(
        took < Duration::from_secs(1),
        "shutdown took {took:?} with a 200 ms deadline"
    );

    let c = Collector::start().await;
    let fwd = spawn(&q, sink(&c.url), route(4));
    assert_all_delivered_once(&c, &q, N).await;
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_sends_everything_now_and_reports_what_it_delivered() {
    const N: u64 = 230;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    fill(&q, 0..N);
    // A batch is never full and the linger is long: only a drain sends now.
    let mut r = route(4);
    r.batch_size = 1000;
    r.flush_interval = Duration::from_secs(60);
    let s = sink_with(&c.url, |cfg| cfg.max_batch_events = 1000);
    let fwd = spawn(&q, s, r);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(c.requests().is_empty(), "sent before the drain");
    let report = fwd.drain(Duration::from_secs(10)).await;
    assert_eq!(report.delivered, N, "{report:?}");
    assert_eq!(report.remaining, 0, "{report:?}");
    assert!(report.complete, "{report:?}");
    assert_eq!(report.dead, 0, "{report:?}");
    assert!(report.elapsed_ms < 5000, "{report:?}");
    assert_all_delivered_once(&c, &q, N).await;
    assert_eq!(route_stats(&fwd).delivered, N);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_against_a_down_collector_reports_it_is_incomplete_with_every_event_remaining() {
    const N: u64 = 120;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let c = Collector::start().await;
    c.respond(|_| Reply::status(503));
    fill(&q, 0..N);
    let fwd = spawn(&q, sink(&c.url), route(4));
    let started = Instant::now();
    let report = fwd.drain(Duration::from_millis(800)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "drain overran its timeout"
    );
    assert!(!report.complete, "{report:?}");
    assert_eq!(report.remaining, N, "{report:?}");
    assert_eq!(report.delivered, 0, "{report:?}");
    assert_eq!(report.dead, 0, "{report:?}");
    assert!(report.retried > 0, "{report:?}");
    assert!(!c.requests().is_empty());
    assert_eq!(live(&q), N);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_ids_stay_the_same_across_retries_and_a_restart() {
    const N: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..N);
    q.sync().await.unwrap();
    let ids = |q: &evspool::Queue| -> BTreeMap<u64, String> {
        q.peek(T, 0, 10_000)
            .unwrap()
            .iter()
            .map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&p.event.payload).unwrap();
                (n_of(&v), p.event.id.to_string())
            })
            .collect()
    };
    let before = ids(&q);
    assert_eq!(before.len() as u64, N);
    let distinct: BTreeSet<&String> = before.values().collect();
    assert_eq!(distinct.len() as u64, N, "ids must be unique");
    assert!(
        before.values().all(
            |id| id.len() <= 36 && id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
        ),
        "{before:?}"
    );

    // Retries first: the collector is down.
    let c = Collector::start().await;
    c.respond(|_| Reply::status(503));
    let fwd = spawn(&q, sink(&c.url), route(2));
    assert!(
        eventually(PATIENCE, || route_stats(&fwd).retried >= N).await,
        "every event should have been retried: {:?}",
        route_stats(&fwd)
    );
    fwd.shutdown(Duration::from_millis(200)).await;
    assert_eq!(ids(&q), before, "ids changed across retries");

    // A restart: same ids, attempts and the last error kept.
    let q = reopen(q);
    assert_eq!(ids(&q), before, "ids changed across a restart");
    let peeked = q.peek(T, 0, 10_000).unwrap();
    assert!(
        peeked
            .iter()
            .any(|p| p.event.attempts > 0
                && p.last_error.as_deref().is_some_and(|e| e.contains("503"))),
        "attempts were not persisted: {:?}",
        peeked.first()
    );
    // New events never reuse an old id.
    let fresh = q.enqueue(T, crate::forward_faults::payload(N)).unwrap();
    let fresh = fresh.id().unwrap().to_string();
    assert!(!before.values().any(|id| *id == fresh), "id {fresh} reused");

    // The payloads reach the collector untouched but for their id, the same
    // as before the retries and the restart.
    let c = Collector::start().await;
    let fwd = spawn(&q, sink(&c.url), route(2));
    assert_all_delivered_once(&c, &q, N + 1).await;
    for r in c.requests() {
        let body: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        for e in body {
            let n = n_of(&e);
            let id = before.get(&n).cloned().unwrap_or_else(|| fresh.clone());
            assert_eq!(
                e,
                serde_json::json!({ "evspool_id": id, "n": n }),
                "payload changed"
            );
        }
    }
    assert_eq!(counts(&c.accepted()).len() as u64, N + 1);
    fwd.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_sink_sends_each_events_id_in_a_field_and_a_header_unchanged_across_a_retry() {
    const N: u64 = 5;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let mut ids = BTreeMap::new();
    for n in 0..N {
        let out = q.enqueue(T, crate::forward_faults::payload(n)).unwrap();
        ids.insert(n, out.id().unwrap().to_string());
    }
    let c = Collector::start().await;
    // The first request fails: its events are sent again.
    c.respond(|seen| {
        if seen.n == 0 {
            Reply::status(503)
        } else {
            Reply::ok()
        }
    });
    let fwd = spawn(
        &q,
        sink_with(&c.url, |cfg| {
            cfg.id_header = Some("Evspool-Event-Ids".into())
        }),
        route(1),
    );
    assert_all_delivered_once(&c, &q, N).await;
    fwd.shutdown(Duration::from_secs(1)).await;

    let requests = c.requests();
    assert!(requests.len() >= 2, "a failure, then a retry");
    let mut sent_ids: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for r in &requests {
        let body: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        let in_body: Vec<String> = body
            .iter()
            .map(|e| {
                let id = e["evspool_id"]
                    .as_str()
                    .expect("every event carries its id");
                sent_ids.entry(n_of(e)).or_default().insert(id.to_string());
                id.to_string()
            })
            .collect();
        let header = r
            .headers
            .get("evspool-event-ids")
            .expect("the id header")
            .to_str()
            .unwrap();
        assert_eq!(
            header,
            in_body.join(","),
            "the header lists the body's ids in order"
        );
    }
    let failed: Vec<u64> = serde_json::from_slice::<Vec<serde_json::Value>>(&requests[0].body)
        .unwrap()
        .iter()
        .map(n_of)
        .collect();
    assert!(!failed.is_empty());
    for n in 0..N {
        assert_eq!(
            sent_ids.get(&n),
            Some(&BTreeSet::from([ids[&n].clone()])),
            "event {n}: one id, the queue's, in every request (failed: {failed:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_that_panics_costs_a_retry_not_a_worker_and_the_drain_completes() {
    const N: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    fill(&q, 0..N);
    q.sync().await.unwrap();
    let c = Collector::start().await;
    // Its first send panics inside its future, then it sends for real.
    let panics =
        crate::panic_review::scripted(&c, vec![crate::panic_review::Step::PanicInsideTheFuture]);
    // One worker: had the panic ended it, nothing more would be sent.
    let fwd = evspool::forward::Forwarder::new(q.clone())
        .route(T, panics, route(1))
        .unwrap()
        .spawn();
    let report = fwd.drain(PATIENCE).await;
    assert!(report.complete, "{report:?}");
    assert_all_delivered_once(&c, &q, N).await;
    let stats = route_stats(&fwd);
    assert_eq!(stats.delivered, N);
    assert!(
        stats.retried >= 1,
        "the panicked batch was retried: {stats:?}"
    );
    fwd.shutdown(Duration::from_secs(5)).await;
}
