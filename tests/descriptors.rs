//! File descriptors: a store keeps at most `max_open_files` body files open
//! whatever its number of topics, and running out of descriptors fails one
//! write — a transient error, reported and retried — never the whole store;
//! a forwarder out of descriptors for its sockets retries its connections
//! and delivers everything once descriptors are back.
//!
//! The tests change process-wide state (the descriptors held, the soft
//! `RLIMIT_NOFILE`), so they live in their own binary and take turns.

use evspool::{Enqueued, Queue, QueueConfig, QueueError};
use std::collections::BTreeMap;
use std::fs::File;
use tokio::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::const_new(());

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Every event of `topics`, drained with lease + ack, as text by topic.
fn drain(q: &Queue, topics: &[String]) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for t in topics {
        let mut got = Vec::new();
        while let Some(lease) = q.lease(t, 50).unwrap() {
            got.extend(
                lease
                    .events()
                    .iter()
                    .map(|e| String::from_utf8(e.payload.to_vec()).unwrap()),
            );
            q.ack(lease).unwrap();
        }
        out.insert(t.clone(), got);
    }
    out
}

#[tokio::test]
async fn a_store_with_many_topics_keeps_at_most_its_budget_of_body_files_open() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let budget = 16;
    let cfg = QueueConfig {
        max_open_files: budget,
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), cfg).unwrap();
    let before = open_fds();
    let topics: Vec<String> = (0..400).map(|t| format!("t{t:03}")).collect();
    let mut peak = 0;
    for (i, t) in topics.iter().enumerate() {
        let out = q
            .enqueue_batch_durable(t, (0..3).map(|n| format!("{t}-{n}")))
            .await
            .unwrap();
        assert!(out.iter().all(|o| matches!(o, Enqueued::Accepted(_))));
        let _ = q.enqueue(t, format!("{t}-buffered")).unwrap();
        if i % 20 == 0 {
            let open = q.stats().open_body_files;
            assert!(open <= budget as u64, "{open} body files open");
            peak = peak.max(open_fds());
        }
    }
    q.sync().await.unwrap();
    let drained = drain(&q, &topics);
    peak = peak.max(open_fds());
    for t in &topics {
        let mut want: Vec<String> = (0..3).map(|n| format!("{t}-{n}")).collect();
        want.push(format!("{t}-buffered"));
        assert_eq!(drained[t], want, "every event of {t}, once, in order");
    }
    assert!(q.stats().open_body_files <= budget as u64);
    // The body files within the budget, plus a few short-lived ones (a
    // directory being synced, a file being created while another closes).
    assert!(
        peak <= before + budget + 4,
        "{peak} descriptors at most, {before} before writing, budget {budget}"
    );
    eprintln!(
        "descriptors: {} topics, peak {peak} (before writing {before}, budget {budget})",
        topics.len()
    );
}

/// Lowers the soft `RLIMIT_NOFILE` until dropped.
struct SoftLimit(libc::rlimit);

impl SoftLimit {
    fn lower_to(n: usize) -> SoftLimit {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain libc calls with valid pointers.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
            let new = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
        }
        SoftLimit(old)
    }
}

impl Drop for SoftLimit {
    fn drop(&mut self) {
        // SAFETY: restores the limit read in `lower_to`.
        unsafe {
            libc::setrlimit(libc::RLIMIT_NOFILE, &self.0);
        }
    }
}

/// Opens `/dev/null` until the process is out of descriptors.
fn hog() -> Vec<File> {
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                return held;
            }
        }
        assert!(held.len() < 10_000, "the lowered limit holds");
    }
}

#[tokio::test]
async fn running_out_of_descriptors_fails_one_write_and_never_the_store() {
    let _turn = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        max_open_files: 8,
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), cfg).unwrap();
    let limit = SoftLimit::lower_to(open_fds() + 16);
    let held = hog();

    // A durable enqueue to a new topic needs a descriptor for its body file.
    let err = q
        .enqueue_durable("fresh", "refused for now")
        .await
        .unwrap_err();
    match &err {
        QueueError::Storage(e) => assert!(e.is_transient(), "{e}"),
        other => panic!("a transient storage error, got {other:?}"),
    }
    assert!(err.to_string().contains("Too many open files"), "{err}");

    // A buffered event is accepted; its round cannot write it yet and keeps it.
    let _ = q.enqueue("buffered", "kept for the next round").unwrap();
    let err = q.sync().await.unwrap_err();
    assert!(
        matches!(&err, QueueError::Storage(e) if e.is_transient()),
        "sync reports the transient error: {err:?}"
    );
    let stats = q.stats();
    assert!(stats.failed_closed.is_none(), "{:?}", stats.failed_closed);
    assert_eq!(stats.total.events, 1, "the buffered event is held");

    // Descriptors come back: both topics write and nothing accepted is lost.
    drop(held);
    drop(limit);
    let _ = q.enqueue_durable("fresh", "accepted later").await.unwrap();
    q.sync().await.unwrap();
    let got = drain(&q, &["fresh".to_string(), "buffered".to_string()]);
    assert_eq!(got["fresh"], vec!["accepted later".to_string()]);
    assert_eq!(got["buffered"], vec!["kept for the next round".to_string()]);
    let stats = q.stats();
    assert!(stats.failed_closed.is_none());
    assert_eq!(stats.drops.values().sum::<u64>(), 0, "{:?}", stats.drops);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarder_out_of_descriptors_retries_its_connections_and_delivers_everything_once_they_are_back()
 {
    use evspool::forward::sink::http::{HttpClientConfig, HttpSink, HttpSinkConfig, build_client};
    use evspool::forward::{Forwarder, RouteConfig};
    use std::time::Duration;
    let _turn = SERIAL.lock().await;
    let collector = evspool_testkit::collector::Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(dir.path(), QueueConfig::default()).unwrap();
    for i in 0..200 {
        let _ = q
            .enqueue_durable("t", format!(r#"{{"uid":"fd-{i}"}}"#))
            .await
            .unwrap();
    }
    let client = build_client(&HttpClientConfig {
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_millis(500),
        ..HttpClientConfig::default()
    })
    .unwrap();
    let sink = HttpSink::new(
        client,
        HttpSinkConfig {
            url: format!("{}/ingest", collector.url),
            ..HttpSinkConfig::default()
        },
    )
    .unwrap();
    let mut route = RouteConfig {
        flush_interval: Duration::from_millis(10),
        flush_jitter: Duration::ZERO,
        ..RouteConfig::default()
    };
    route.backoff.base = Duration::from_millis(20);
    route.backoff.max = Duration::from_millis(100);
    route.breaker.open_for = Duration::from_millis(50);
    route.breaker.open_max = Duration::from_millis(100);

    // No descriptor left for a socket before the first connection.
    let limit = SoftLimit::lower_to(open_fds() + 16);
    let held = hog();
    let fwd = Forwarder::new(q.clone())
        .route("t", std::sync::Arc::new(sink), route)
        .unwrap()
        .spawn();
    let refused = evspool_testkit::wait_until(Duration::from_secs(10), || {
        fwd.stats()["t"]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("Too many open files"))
    })
    .await;
    let seen = fwd.stats()["t"].last_error.clone();
    drop(held);
    drop(limit);
    assert!(refused, "the connect error names EMFILE: {seen:?}");
    assert!(
        seen.as_deref()
            .is_some_and(|e| e.starts_with("connect error: ")),
        "{seen:?}"
    );
    assert!(
        collector.accepted().is_empty(),
        "nothing went out meanwhile"
    );

    // Descriptors back: every event is delivered, none lost.
    let all = evspool_testkit::wait_until(Duration::from_secs(20), || {
        let got: std::collections::BTreeSet<String> = collector
            .accepted()
            .iter()
            .filter_map(|e| e["uid"].as_str().map(str::to_string))
            .collect();
        got.len() == 200
    })
    .await;
    assert!(all, "delivered {} of 200", collector.accepted().len());
    fwd.shutdown(Duration::from_secs(5)).await;
    assert_eq!(q.stats().total.events, 0, "{:?}", q.stats());
}
