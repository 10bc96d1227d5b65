//! The Mixpanel sink through the real forwarder, against the support collector:
//! stable `$insert_id`s across retries and restarts, strict-mode `/import`
//! per-record failures, and short imports retried.

use evspool::forward::sink::http::{HttpClientConfig, build_client};
use evspool::forward::sink::mixpanel::{Endpoint, MixpanelConfig, MixpanelSink};
use evspool::forward::{Forwarder, ForwarderHandle, RouteConfig};
use evspool::{Queue, QueueConfig};
use evspool_testkit::collector::{Collector, Reply};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

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

fn route() -> RouteConfig {
    let mut r = RouteConfig {
        workers: 2,
        flush_interval: Duration::from_millis(5),
        flush_jitter: Duration::ZERO,
        ..RouteConfig::default()
    };
    r.backoff.base = Duration::from_millis(20);
    r.backoff.max = Duration::from_millis(100);
    r.breaker.failure_threshold = 1000;
    r
}

fn forwarder(
    q: &Queue,
    topic: &str,
    url: &str,
    endpoint: Endpoint,
    timeout: Duration,
) -> ForwarderHandle {
    let client = build_client(&HttpClientConfig {
        timeout,
        ..HttpClientConfig::default()
    })
    .unwrap();
    let cfg = MixpanelConfig {
        api_host: url.to_string(),
        ..MixpanelConfig::default()
    };
    let sink = MixpanelSink::new(client, cfg, endpoint).unwrap();
    Forwarder::new(q.clone())
        .route(topic, Arc::new(sink), route())
        .unwrap()
        .spawn()
}

fn n_of(e: &serde_json::Value) -> u64 {
    e["properties"]["n"]
        .as_u64()
        .expect("every test event has properties.n")
}

/// Every `$insert_id` the collector was sent for each event, over all requests.
fn ids_per_event(c: &Collector) -> BTreeMap<u64, BTreeSet<String>> {
    let mut out: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    for r in c.requests() {
        for e in &r.events {
            let id = e["properties"]["$insert_id"].as_str().unwrap().to_string();
            out.entry(n_of(e)).or_default().insert(id);
        }
    }
    out
}

#[tokio::test]
async fn insert_ids_stay_the_same_across_retries_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    // Every request fails twice before the collector accepts, then accepted
    // requests are answered slowly so a shutdown interrupts some of them.
    c.respond(|s| {
        if s.n < 4 {
            Reply::status(503)
        } else {
            Reply::ok().delay(Duration::from_millis(300))
        }
    });
    let q = queue(dir.path());
    for n in 0..120u64 {
        let _ = q
            .enqueue_durable(
                "track",
                format!(r#"{{"event":"e","properties":{{"n":{n}}}}}"#),
            )
            .await
            .unwrap();
    }
    let fwd = forwarder(&q, "track", &c.url, Endpoint::Track, Duration::from_secs(5));
    // Let retries happen and some batches get accepted, then stop mid-flight.
    // Wait (bounded) until a request past the failing ones is in flight.
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while c.requests().len() <= 4 {
        assert!(
            std::time::Instant::now() < until,
            "no request got past the failures"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = fwd.shutdown(Duration::from_millis(50)).await;
    assert!(
        report.cancelled > 0,
        "a batch should have been in flight: {report:?}"
    );
    q.close();
    drop(q);

    // Restart: everything not acked is delivered again, with the same ids.
    c.respond(|_| Reply::ok());
    let q = queue(dir.path());
    let fwd = forwarder(&q, "track", &c.url, Endpoint::Track, Duration::from_secs(5));
    let all = |a: &[serde_json::Value]| a.iter().map(n_of).collect::<BTreeSet<_>>().len() == 120;
    assert!(
        c.wait_for(Duration::from_secs(15), all).await,
        "not every event arrived"
    );
    fwd.shutdown(Duration::from_secs(2)).await;

    let ids = ids_per_event(&c);
    assert_eq!(ids.len(), 120);
    for (n, set) in &ids {
        assert_eq!(
            set.len(),
            1,
            "event {n} was sent with different ids: {set:?}"
        );
    }
    let sent_more_than_once = c
        .requests()
        .iter()
        .flat_map(|r| r.events.iter().map(n_of))
        .fold(BTreeMap::<u64, u32>::new(), |mut m, n| {
            *m.entry(n).or_default() += 1;
            m
        })
        .values()
        .filter(|k| **k > 1)
        .count();
    assert!(
        sent_more_than_once > 0,
        "the retries and the restart must have resent events"
    );
    let unique: BTreeSet<String> = ids.values().flatten().cloned().collect();
    assert_eq!(unique.len(), 120, "two events shared an id");
}

#[tokio::test]
async fn strict_import_failures_dead_letter_only_the_failed_records() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    // Mixpanel strict mode: events with "bad" fail validation; the rest are imported.
    c.respond(|s| {
        let bad: Vec<usize> = s
            .events
            .iter()
            .enumerate()
            .filter(|(_, e)| e["properties"]["bad"] == true)
            .map(|(i, _)| i)
            .collect();
        if bad.is_empty() {
            let n = s.events.len();
            return Reply::ok().body(format!(r#"{{"code":200,"num_records_imported":{n},"status":"OK"}}"#));
        }
        let failed: Vec<String> = bad
            .iter()
            .map(|i| {
                let id = s.events[*i]["properties"]["$insert_id"].as_str().unwrap();
                format!(r#"{{"index":{i},"$insert_id":"{id}","field":"properties.bad","message":"'bad' is not allowed"}}"#)
            })
            .collect();
        let good: Vec<usize> = (0..s.events.len()).filter(|i| !bad.contains(i)).collect();
        let mut r = Reply::status(400).body(format!(
            r#"{{"code":400,"error":"some data points in the request failed validation","failed_records":[{}],"num_records_imported":{},"status":"Bad Request"}}"#,
            failed.join(","),
            good.len()
        ));
        r.accept = true;
        r.accept_only = Some(good);
        r
    });
    let q = queue(dir.path());
    let bad_ns: BTreeSet<u64> = [3, 17, 41].into();
    for n in 0..60u64 {
        let bad = if bad_ns.contains(&n) {
            r#","bad":true"#
        } else {
            ""
        };
        let _ = q
            .enqueue_durable(
                "import",
                format!(r#"{{"event":"e","properties":{{"n":{n}{bad}}}}}"#),
            )
            .await
            .unwrap();
    }
    let fwd = forwarder(
        &q,
        "import",
        &c.url,
        Endpoint::Import,
        Duration::from_secs(5),
    );
    let report = fwd.drain(Duration::from_secs(15)).await;
    assert!(report.complete, "{report:?}");
    fwd.shutdown(Duration::from_secs(2)).await;

    // Only the failed records are dead letters, with the collector's field and message.
    let dead = q.dead_letters("import", 0, 100).unwrap();
    let dead_ns: BTreeSet<u64> = dead
        .iter()
        .map(|d| {
            serde_json::from_slice::<serde_json::Value>(&d.payload).unwrap()["properties"]["n"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(dead_ns, bad_ns);
    for d in &dead {
        assert_eq!(d.reason, "properties.bad: 'bad' is not allowed");
    }
    // Every good event was accepted exactly once: the 400 batch was never resent whole.
    let accepted: Vec<u64> = c.accepted().iter().map(n_of).collect();
    let expected: Vec<u64> = (0..60).filter(|n| !bad_ns.contains(n)).collect();
    let mut sorted = accepted.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected);
    let sends: usize = c.requests().iter().map(|r| r.events.len()).sum();
    assert_eq!(sends, 60, "some events were sent more than once");
    // Requests went to /import with strict=1.
    assert!(
        c.requests()
            .iter()
            .all(|r| r.path == "/import" && r.query.contains("strict=1"))
    );
    assert_eq!(q.stats().total.events, 0);
}

#[tokio::test]
async fn an_import_that_imported_fewer_records_than_sent_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let c = Collector::start().await;
    c.respond(|s| {
        let n = s.events.len();
        // The first answer claims one record fewer than sent.
        let imported = if s.n == 0 { n - 1 } else { n };
        Reply::ok().body(format!(
            r#"{{"code":200,"num_records_imported":{imported},"status":"OK"}}"#
        ))
    });
    let q = queue(dir.path());
    for n in 0..10u64 {
        let _ = q
            .enqueue_durable(
                "import",
                format!(r#"{{"event":"e","properties":{{"n":{n}}}}}"#),
            )
            .await
            .unwrap();
    }
    let fwd = forwarder(
        &q,
        "import",
        &c.url,
        Endpoint::Import,
        Duration::from_secs(5),
    );
    let report = fwd.drain(Duration::from_secs(10)).await;
    assert!(report.complete, "{report:?}");
    let stats = fwd.stats();
    fwd.shutdown(Duration::from_secs(2)).await;
    assert!(c.requests().len() >= 2, "the short import was not retried");
    assert_eq!(stats["import"].retried, 10);
    assert_eq!(stats["import"].delivered, 10);
    assert!(q.dead_letters("import", 0, 10).unwrap().is_empty());
}
