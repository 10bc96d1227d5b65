//! The NATS JetStream sink against a real `nats-server -js` (see
//! `evspool_testkit::nats_server`): 100k events through the daemon, the server
//! SIGKILLed and restarted mid-stream, the daemon SIGKILLed mid-stream, a
//! missing stream, denied permissions, wrong credentials, TLS with the right
//! and an unknown CA (certificates made with `openssl`), and an event over
//! the server's `max_payload`. Every check reads the stream back: counts,
//! `Nats-Msg-Id`s and payloads.

use crate::daemon_e2e::{admin_stats, config, live, metric_sum, metrics};
use crate::forward_faults::{PATIENCE, T, eventually, open_queue, route};
use async_nats::jetstream;
use evspool::forward::sink::nats::{NatsSink, NatsSinkConfig, NatsStream};
use evspool::forward::{Forwarder, TOO_LARGE};
use evspool::{Enqueued, Queue};
use evspool_testkit::client as http_client;
use evspool_testkit::daemon::{Daemon, start};
use evspool_testkit::nats_server::{
    NatsServer, client, create_stream, stream_count, stream_messages, wait_for,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Forwarding for the `events` topic: short probes and backoff, so faults
/// and recoveries show within seconds.
const EVENTS_FORWARD: &str = r#"
[topics.events.forward]
workers = 4
batch_size = 200
flush_interval = "20ms"
flush_jitter = "0s"
config_fault_probe = "200ms"

[topics.events.forward.backoff]
base = "50ms"
max = "500ms"

[topics.events.forward.breaker]
open_for = "100ms"
open_max = "500ms"
"#;

/// A temporary store directory and config file.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
}

fn setup(extra: &str) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let config_path = tmp.path().join("evspool.toml");
    std::fs::write(&config_path, config("", "", None, extra)).unwrap();
    Setup {
        _tmp: tmp,
        dir,
        config: config_path,
    }
}

/// The `[sink]` section for a server at `url`, plus `more` lines inside it.
fn nats_sink(url: &str, more: &str) -> String {
    format!(
        "\n[sink]\ntype = \"nats\"\nservers = [\"{url}\"]\nack_timeout = \"1s\"\nconnect_timeout = \"1s\"\n{more}\n"
    )
}

/// Posts `{"n": i}` for `ns` to `topic` in requests of `per` events; returns
/// id → n for every event answered 202.
async fn post(
    c: &reqwest::Client,
    base: &str,
    topic: &str,
    ns: std::ops::Range<u64>,
    per: usize,
) -> BTreeMap<String, u64> {
    let ns: Vec<u64> = ns.collect();
    let mut out = BTreeMap::new();
    for chunk in ns.chunks(per) {
        let body: Vec<serde_json::Value> = chunk
            .iter()
            .map(|n| serde_json::json!({ "n": n }))
            .collect();
        let resp = c
            .post(format!("{base}/v1/events?topic={topic}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap());
        let answer: serde_json::Value = resp.json().await.unwrap();
        let ids = answer["ids"].as_array().unwrap();
        assert_eq!(ids.len(), chunk.len(), "{answer}");
        for (id, n) in ids.iter().zip(chunk) {
            out.insert(id.as_str().unwrap().to_string(), *n);
        }
    }
    out
}

fn n_of(payload: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(payload).unwrap()["n"]
        .as_u64()
        .unwrap()
}

/// Asserts stream `name` holds exactly `expected` (id → n): one message per
/// id, under that id, with that payload, and nothing else.
async fn assert_stream_holds_exactly(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    expected: &BTreeMap<String, u64>,
) {
    let msgs = stream_messages(js, name).await;
    assert_eq!(
        msgs.len(),
        expected.len(),
        "the stream holds {} messages, expected {}",
        msgs.len(),
        expected.len()
    );
    let mut seen = BTreeSet::new();
    for (id, subj, payload) in &msgs {
        assert!(
            seen.insert(id.clone()),
            "Nats-Msg-Id {id:?} is in the stream twice"
        );
        assert_eq!(subj, subject);
        let n = n_of(payload);
        assert_eq!(
            expected.get(id),
            Some(&n),
            "message {id:?} carries n = {n}, which is not the event with that id"
        );
    }
}

async fn forward_stats(_c: &reqwest::Client, d: &Daemon) -> serde_json::Value {
    // The admin API is served to the store's owner on its socket.
    evspool_testkit::admin::get(&d.dir, "/admin/forward").await
}

async fn paused(c: &reqwest::Client, d: &Daemon, topic: &str) -> bool {
    forward_stats(c, d).await[topic]["paused"] == serde_json::json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100k_event_backlog_through_the_daemon_lands_in_the_stream_once_each_under_its_event_id()
{
    const N: u64 = 100_000;
    let nats = NatsServer::start();
    let js = jetstream::new(client(&nats.url(), None).await);
    create_stream(&js, "EVENTS", &["evspool.>"]).await;
    let s = setup(EVENTS_FORWARD);
    // The sink from the command line, as an operator would start it.
    let d = start(
        &s.dir,
        Some(&s.config),
        &["--sink", "nats", "--sink-url", &nats.url()],
        &[],
    )
    .await;
    let c = http_client();
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let (c, url) = (c.clone(), d.url.clone());
        tasks.push(tokio::spawn(async move {
            post(&c, &url, "events", p * N / 4..(p + 1) * N / 4, 1000).await
        }));
    }
    let mut expected = BTreeMap::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    assert_eq!(expected.len() as u64, N);
    assert_daemon_forwarded_exactly(&c, &d, &js, "EVENTS", &expected, Duration::from_secs(180))
        .await;
}

/// Waits up to `within` for stream `name` to hold as many messages as
/// `expected` and then for the daemon to hold no event of topic `events`, and
/// asserts the stream holds exactly `expected` on subject `evspool.events`.
async fn assert_daemon_forwarded_exactly(
    c: &reqwest::Client,
    d: &Daemon,
    js: &jetstream::Context,
    name: &str,
    expected: &BTreeMap<String, u64>,
    within: Duration,
) {
    let want = expected.len() as u64;
    assert!(
        wait_for(within, || {
            let js = js.clone();
            async move { stream_count(&js, name).await >= want }
        })
        .await,
        "the stream holds {} of {want} messages; daemon stderr:\n{}",
        stream_count(js, name).await,
        d.stderr()
    );
    assert!(
        wait_for(PATIENCE, || async move {
            live(&admin_stats(c, d, None).await, "events") == 0
        })
        .await,
        "the daemon still holds events after the stream has them all"
    );
    assert_stream_holds_exactly(js, name, "evspool.events", expected).await;
}

/// A library forwarder over `q` into `nats`, creating stream `EVSPOOL`.
fn nats_forwarder(q: &Queue, url: &str, batch: usize) -> evspool::forward::ForwarderHandle {
    let cfg = NatsSinkConfig {
        servers: vec![url.to_string()],
        ack_timeout: Duration::from_millis(1000),
        connect_timeout: Duration::from_millis(500),
        stream: Some(NatsStream {
            name: "EVSPOOL".into(),
            duplicate_window: Duration::from_secs(600),
            ..NatsStream::default()
        }),
        ..NatsSinkConfig::default()
    };
    let sink = Arc::new(NatsSink::standalone(T, &cfg).unwrap());
    let mut r = route(4);
    r.batch_size = batch;
    Forwarder::new(q.clone()).route(T, sink, r).unwrap().spawn()
}

/// Enqueues `{"n": i}` for `ns`; returns id → n.
async fn fill(q: &Queue, ns: std::ops::Range<u64>, big: Option<u64>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for n in ns {
        let mut v = serde_json::json!({ "n": n });
        if big == Some(n) {
            v["pad"] = serde_json::json!("x".repeat(8192));
        }
        match q.enqueue(T, serde_json::to_vec(&v).unwrap()).unwrap() {
            Enqueued::Accepted(id) => {
                out.insert(id.to_string(), n);
            }
            other => panic!("{other:?}"),
        }
    }
    q.sync().await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_server_sigkilled_and_restarted_mid_stream_loses_nothing_and_stores_each_event_once() {
    const N: u64 = 20_000;
    let mut nats = NatsServer::start();
    let js = jetstream::new(client(&nats.url(), None).await);
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let mut expected = fill(&q, 0..N, None).await;
    let mut total = N;
    let fwd = nats_forwarder(&q, &nats.url(), 100);
    for round in 1..=2u64 {
        let reached = wait_for(PATIENCE, || {
            let js = js.clone();
            async move { stream_count(&js, "EVSPOOL").await >= round * N / 4 }
        })
        .await;
        assert!(reached, "round {round}: the stream did not grow");
        // A fast forwarder may have sent everything by now: the kill must
        // find events still to send, so top the queue up first.
        if q.stats().total.events == 0 {
            expected.extend(fill(&q, total..total + N / 4, None).await);
            total += N / 4;
        }
        let retried_before = fwd.stats()[T].retried;
        nats.kill();
        let at_kill = q.stats().total.events;
        assert!(
            at_kill > 0,
            "round {round}: everything was delivered before the kill"
        );
        // The forwarder notices the outage: batches fail and are retried.
        assert!(
            eventually(PATIENCE, || fwd.stats()[T].retried > retried_before).await,
            "round {round}: no batch failed while the server was down"
        );
        nats.restart();
    }
    assert!(
        eventually(Duration::from_secs(60), || q.stats().total.events == 0).await,
        "the queue still holds {} events; server log:\n{}",
        q.stats().total.events,
        nats.log()
    );
    // The queue empties inside the last settle; the forwarder adds that
    // settle's count once it returns (a CI run read 19,975 of 20,000 in
    // between): wait for the counters, then check them exactly.
    eventually(PATIENCE, || {
        let s = &fwd.stats()[T];
        s.delivered + s.dead >= total
    })
    .await;
    let stats = fwd.stats()[T].clone();
    assert_eq!(stats.dead, 0, "{stats:?}");
    assert_eq!(stats.delivered, total, "{stats:?}");
    assert_stream_holds_exactly(&js, "EVSPOOL", "evspool.t", &expected).await;
    fwd.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_sigkilled_mid_stream_leaves_exactly_the_acked_events_in_the_stream_once_each() {
    const KILLS: u64 = 3;
    const PER_CYCLE: u64 = 20_000;
    let nats = NatsServer::start();
    let js = jetstream::new(client(&nats.url(), None).await);
    // The sink from the config file, and evspool creates the stream.
    let s = setup(&format!(
        "{EVENTS_FORWARD}{}",
        nats_sink(
            &nats.url(),
            "[sink.stream]\nname = \"SPOOL\"\nduplicate_window = \"10m\"\n"
        )
    ));
    let c = http_client();
    let mut acked = BTreeMap::new();
    let mut mid_stream = 0;
    let mut d = start(&s.dir, Some(&s.config), &[], &[]).await;
    for cycle in 0..KILLS {
        let before = stream_count(&js, "SPOOL").await;
        acked.extend(
            post(
                &c,
                &d.url,
                "events",
                cycle * PER_CYCLE..(cycle + 1) * PER_CYCLE,
                10_000,
            )
            .await,
        );
        // Kill once forwarding is under way.
        let moving = wait_for(PATIENCE, || {
            let js = js.clone();
            async move { stream_count(&js, "SPOOL").await >= before + 1000 }
        })
        .await;
        assert!(
            moving,
            "cycle {cycle}: forwarding did not start:\n{}",
            d.stderr()
        );
        drop(d); // SIGKILL and reap.
        let at_kill = stream_count(&js, "SPOOL").await;
        if at_kill < acked.len() as u64 {
            mid_stream += 1;
        }
        d = start(&s.dir, Some(&s.config), &[], &[]).await;
    }
    assert!(
        mid_stream > 0,
        "no kill landed while events were still being forwarded"
    );
    assert_daemon_forwarded_exactly(&c, &d, &js, "SPOOL", &acked, Duration::from_secs(60)).await;
    let metrics = metrics(&d).await;
    let dups = metric_sum(&metrics, "evspool_nats_duplicate_acks_total", &[]);
    eprintln!(
        "daemon sigkill: {KILLS} kills ({mid_stream} mid-stream), {} events, {dups} redeliveries absorbed as duplicates after the last restart",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_pauses_the_topic_keeping_every_event_until_the_stream_is_created() {
    let nats = NatsServer::start();
    let js = jetstream::new(client(&nats.url(), None).await);
    let s = setup(&format!("{EVENTS_FORWARD}{}", nats_sink(&nats.url(), "")));
    let d = start(&s.dir, Some(&s.config), &[], &[]).await;
    let c = http_client();
    let expected = post(&c, &d.url, "events", 0..300, 100).await;
    assert!(
        wait_for(PATIENCE, || paused(&c, &d, "events")).await,
        "the topic was not paused: {}\n{}",
        forward_stats(&c, &d).await,
        d.stderr()
    );
    let log = d.stderr();
    assert!(
        log.contains("no JetStream stream captures subject \\\"evspool.events\\\"")
            || log.contains("no JetStream stream captures subject \"evspool.events\""),
        "the log says what to check:\n{log}"
    );
    // In NATS's own words: not the HTTP collector's, no HTTP status, a hint
    // about streams, not about URLs; and one line per connection.
    let line = log
        .lines()
        .find(|l| l.contains("refused the configuration"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("NATS refused the configuration"), "{line}");
    assert!(!line.contains("status="), "{line}");
    assert!(
        line.contains("check=create a stream whose subjects include"),
        "{line}"
    );
    assert!(!log.contains("Collector"), "{log}");
    assert!(!log.contains("check the sink's URL"), "{log}");
    assert_eq!(log.matches("Connected to NATS.").count(), 1, "{log}");
    assert_eq!(live(&admin_stats(&c, &d, None).await, "events"), 300);
    let st = forward_stats(&c, &d).await;
    assert_eq!(st["events"]["dead"], 0, "{st}");

    create_stream(&js, "LATE", &["evspool.events"]).await;
    assert!(
        wait_for(PATIENCE, || {
            let js = js.clone();
            async move { stream_count(&js, "LATE").await >= 300 }
        })
        .await,
        "the topic did not resume once the stream existed:\n{}",
        d.stderr()
    );
    assert!(
        wait_for(PATIENCE, || async { !paused(&c, &d, "events").await }).await,
        "still paused after delivering"
    );
    assert_stream_holds_exactly(&js, "LATE", "evspool.events", &expected).await;
}

const AUTH: &str = r#"
authorization {
  users = [
    { user: admin, password: "admin-pw-1" }
    { user: evspool, password: "evs-pw-Kq83", permissions: { publish: { allow: ["other.>", "$JS.API.>"] }, subscribe: { allow: ["_INBOX.>"] } } }
  ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_permissions_and_wrong_credentials_pause_the_topic_and_keep_every_event() {
    let nats = NatsServer::start_with(AUTH);
    let js = jetstream::new(client(&nats.url(), Some(("admin", "admin-pw-1"))).await);
    create_stream(&js, "EVENTS", &["evspool.>"]).await;
    let c = http_client();
    for (password, what) in [
        ("evs-pw-Kq83", "Permissions Violation for Publish to"),
        ("wrong-pw-Zx19", "authorization"),
    ] {
        let s = setup(&format!(
            "{EVENTS_FORWARD}{}",
            nats_sink(
                &nats.url(),
                "auth = { user_password = { user = \"evspool\" } }"
            )
        ));
        let d = start(
            &s.dir,
            Some(&s.config),
            &[],
            &[("EVSPOOL_SINK_SECRET", password)],
        )
        .await;
        post(&c, &d.url, "events", 0..200, 100).await;
        assert!(
            wait_for(PATIENCE, || paused(&c, &d, "events")).await,
            "{what}: the topic was not paused: {}\n{}",
            forward_stats(&c, &d).await,
            d.stderr()
        );
        // Probed again (still refused), nothing dropped or dead.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(paused(&c, &d, "events").await);
        assert_eq!(
            live(&admin_stats(&c, &d, None).await, "events"),
            200,
            "{what}"
        );
        assert_eq!(forward_stats(&c, &d).await["events"]["dead"], 0, "{what}");
        assert_eq!(stream_count(&js, "EVENTS").await, 0, "{what}");
        let log = d.stderr();
        assert!(
            log.contains(what),
            "the log names the fault ({what}):\n{log}"
        );
        assert!(log.contains("topic paused"), "{log}");
        assert!(
            !log.contains(password),
            "the password reached the log:\n{log}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_over_the_servers_max_payload_is_dead_lettered_too_large_and_the_rest_delivered() {
    let nats = NatsServer::start_with("max_payload: 4096");
    let js = jetstream::new(client(&nats.url(), None).await);
    let dir = tempfile::tempdir().unwrap();
    let q = open_queue(dir.path());
    let mut expected = fill(&q, 0..50, Some(20)).await;
    let fwd = nats_forwarder(&q, &nats.url(), 50);
    assert!(
        eventually(PATIENCE, || q.stats().total.events == 0).await,
        "the queue still holds {} events",
        q.stats().total.events
    );
    let dead = q.dead_letters(T, 0, 100).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(n_of(&dead[0].payload), 20);
    assert!(
        dead[0].reason.starts_with(TOO_LARGE) && dead[0].reason.contains("max_payload"),
        "{}",
        dead[0].reason
    );
    let big_id = dead[0].id.to_string();
    assert_eq!(expected.remove(&big_id), Some(20));
    assert_stream_holds_exactly(&js, "EVSPOOL", "evspool.t", &expected).await;
    let st = fwd.stats()[T].clone();
    assert_eq!((st.delivered, st.dead), (49, 1), "{st:?}");
    fwd.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_servers_ca_delivers_and_an_unknown_ca_pauses_the_topic_keeping_every_event() {
    use evspool::forward::sink::nats::NatsTls;
    let certs = tempfile::tempdir().unwrap();
    evspool_testkit::tls::certificates(certs.path());
    let p = |f: &str| certs.path().join(f);
    let nats = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
        p("server.pem"),
        p("server.key")
    ));
    let url = nats.url().replace("nats://", "tls://");
    let admin = async_nats::ConnectOptions::new()
        .add_root_certificates(p("ca.pem"))
        .require_tls(true)
        .connect(&url)
        .await
        .expect("the test's TLS client connects");
    let js = jetstream::new(admin);
    let mut results = Vec::new();
    for (ca, name) in [("ca.pem", "GOOD"), ("other-ca.pem", "BAD")] {
        let dir = tempfile::tempdir().unwrap();
        let q = open_queue(dir.path());
        let expected = fill(&q, 0..100, None).await;
        let cfg = NatsSinkConfig {
            servers: vec![url.clone()],
            tls: Some(NatsTls {
                required: true,
                ca_file: Some(p(ca)),
                ..NatsTls::default()
            }),
            ack_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            stream: Some(NatsStream {
                name: name.into(),
                subjects: vec![format!("{name}.>")],
                ..NatsStream::default()
            }),
            subject: format!("{name}.{{topic}}"),
            ..NatsSinkConfig::default()
        };
        let sink = Arc::new(NatsSink::standalone(T, &cfg).unwrap());
        let fwd = Forwarder::new(q.clone())
            .route(T, sink, route(2))
            .unwrap()
            .spawn();
        results.push((name, q, fwd, expected, dir));
    }
    let (_, good_q, good_fwd, good_expected, _d1) = &results[0];
    assert!(
        eventually(PATIENCE, || good_q.stats().total.events == 0).await,
        "nothing delivered over TLS with the right CA: {:?}",
        good_fwd.stats()
    );
    assert_stream_holds_exactly(&js, "GOOD", "GOOD.t", good_expected).await;
    let (_, bad_q, bad_fwd, _, _d2) = &results[1];
    assert!(
        eventually(PATIENCE, || bad_fwd.stats()[T].paused).await,
        "an unknown CA did not pause the topic: {:?}",
        bad_fwd.stats()
    );
    assert_eq!(bad_q.stats().total.events, 100, "every event kept");
    assert_eq!(bad_fwd.stats()[T].dead, 0);
    assert_eq!(stream_count(&js, "BAD").await, 0);
}
