//! Forwarding throughput: drain a backlog of 300-byte events to a loopback
//! collector that answers 200 as fast as it can, with 4 and 16 workers, with and
//! without gzip. The baseline, measured in the same run against the same
//! collector, is a plain reqwest loop posting the same bodies (the same
//! payloads in the same order, with id members of the same length when ids
//! are on, each body built per request) with the same client and concurrency
//! and no queue at all. The loop as it was before (one pre-built 50-event body
//! without ids, posted again and again) is a second column. One more row drains with the
//! generic sink's id member off (`id_field = ""`), so the cost of sending each
//! event's id is measured in the same run.
//!
//! NATS JetStream: drain the same backlog into a stream on a local
//! `nats-server -js` (file storage) through the NATS sink, against a raw
//! `async-nats` loop in the same run that publishes the same payloads with
//! `Nats-Msg-Id` headers in pipelined batches of the same size and awaits
//! every ack, with the same concurrency and no queue at all.
//!
//! `cargo bench --bench forward -- goal` runs issue 24's row (4 workers, ids
//! on, no gzip) in six rounds on fresh backlogs, evspool and the reqwest loop
//! alternating which goes first, and after each round a raw hyper loop (the
//! same bodies over bare HTTP/1.1 connections each polled by its task: the
//! fastest client measured here), printing every ratio and the median.
//!
//! `cargo bench --bench forward` prints markdown tables; `EVSPOOL_BENCH_SMALL=1`
//! uses a 100k backlog instead of 1M; `cargo bench --bench forward -- nats`
//! (or `http`) runs one section. For a profiler, `EVSPOOL_BENCH_PROFILE=1`
//! fills three backlogs, then drains them through the HTTP sink (4 workers, ids
//! on) and runs the baseline once, each with the cores it kept busy;
//! `EVSPOOL_BENCH_PROFILE=baseline` runs the baseline alone, three times. Under `cargo test` every scenario runs once,
//! tiny (the NATS section needs `nats-server`, as the tests do).

use evspool_testkit::bench as common;

use axum::body::Bytes;
use common::Mode;
use evspool::forward::sink::http::{
    HttpClientConfig, HttpSink, HttpSinkConfig, build_client, gzip,
};
use evspool::forward::{Forwarder, RouteConfig};
use evspool::{Queue, QueueConfig};
use evspool_testkit::nats_server;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Server {
    url: String,
    bytes: Arc<AtomicU64>,
}

async fn collector() -> Server {
    let bytes = Arc::new(AtomicU64::new(0));
    let b = bytes.clone();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let b = b.clone();
        async move {
            b.fetch_add(body.len() as u64, Ordering::Relaxed);
            "{\"status\":1}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server { url, bytes }
}

/// Fills a fresh queue with `n` events; returns it with its temp dir.
async fn backlog(n: usize) -> (Queue, tempfile::TempDir) {
    let dir = common::temp_dir();
    let q = Queue::open(dir.path(), QueueConfig::default()).unwrap();
    let payloads = common::payloads();
    for i in 0..n {
        let _ = q
            .enqueue(common::TOPIC, payloads[i % payloads.len()].clone())
            .unwrap();
    }
    q.sync().await.unwrap();
    if let Ok(ms) = std::env::var("EVSPOOL_BENCH_SETTLE_MS") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    (q, dir)
}

async fn evspool_drain(server: &Server, n: usize, workers: usize, gz: bool, ids: bool) -> f64 {
    let (q, _dir) = backlog(n).await;
    timed_drain(&q, http_sink(server, gz, ids), workers).await
}

/// The generic HTTP sink posting to `server`.
fn http_sink(server: &Server, gz: bool, ids: bool) -> Arc<dyn evspool::forward::sink::Sink> {
    let client = build_client(&HttpClientConfig::default()).unwrap();
    let sink = HttpSink::new(
        client,
        HttpSinkConfig {
            url: server.url.clone(),
            gzip: gz,
            id_field: if ids {
                HttpSinkConfig::default().id_field
            } else {
                String::new()
            },
            ..HttpSinkConfig::default()
        },
    )
    .unwrap();
    Arc::new(sink)
}

/// Drains the whole backlog through `sink`; returns events per second.
async fn timed_drain(
    q: &Queue,
    sink: Arc<dyn evspool::forward::sink::Sink>,
    workers: usize,
) -> f64 {
    timed_drain_with(q, sink, workers, evspool::forward::DEFAULT_BATCH_SIZE).await
}

/// As [`timed_drain`], leasing `batch` events at a time.
async fn timed_drain_with(
    q: &Queue,
    sink: Arc<dyn evspool::forward::sink::Sink>,
    workers: usize,
    batch: usize,
) -> f64 {
    let n = q.stats().total.events;
    let cfg = RouteConfig {
        workers,
        batch_size: batch,
        flush_interval: Duration::ZERO,
        flush_jitter: Duration::ZERO,
        ..RouteConfig::default()
    };
    let started = Instant::now();
    let fwd = Forwarder::new(q.clone())
        .route(common::TOPIC, sink, cfg)
        .unwrap()
        .spawn();
    let report = fwd.drain(Duration::from_secs(600)).await;
    let elapsed = started.elapsed();
    assert!(report.complete, "drain incomplete: {report:?}");
    assert_eq!(fwd.stats()[common::TOPIC].delivered, n, "{report:?}");
    fwd.shutdown(Duration::from_secs(5)).await;
    n as f64 / elapsed.as_secs_f64()
}

/// Runs `run` (which returns events per second) and prints its rate, the
/// cores this process kept busy meanwhile and the CPU a 50-event batch cost.
async fn profiled(what: &str, run: impl std::future::Future<Output = f64>) {
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let rate = run.await;
    let cores = (cpu_seconds() - cpu) / wall.elapsed().as_secs_f64();
    eprintln!(
        "workers=4 gzip=false ids=true: {what} {rate:.0} ev/s ({cores:.2} cores busy, {:.1} µs of CPU per 50 events)",
        cores * 50e6 / rate
    );
}

/// This process's user + system CPU time so far, from `/proc/self/stat`.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the
    // 12th and 13th of them, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

/// A sink that accepts everything at once: the forwarder's own cost, no HTTP.
struct NullSink;

impl evspool::forward::sink::Sink for NullSink {
    fn name(&self) -> &str {
        "null"
    }
    fn max_batch_events(&self) -> usize {
        50
    }
    fn max_batch_bytes(&self) -> u64 {
        u64::MAX
    }
    fn max_event_bytes(&self) -> u64 {
        u64::MAX
    }
    fn send<'a>(
        &'a self,
        _batch: &'a [evspool::Event],
    ) -> evspool::forward::sink::BoxFuture<'a, evspool::forward::sink::Delivery> {
        Box::pin(async { evspool::forward::sink::Delivery::Delivered })
    }
}

async fn null_drain(n: usize, workers: usize) -> f64 {
    let (q, _dir) = backlog(n).await;
    timed_drain(&q, Arc::new(NullSink), workers).await
}

/// The baseline: `workers` tasks post the backlog's events from memory, 50 a
/// request, with no queue at all. Each body is built per request (and
/// compressed, with gzip), as a real client would, and carries the bytes
/// evspool sends: the same payloads in the same order, each with an
/// `evspool_id` member of the same length as evspool's (`<12 hex>-<seq>`)
/// when `ids` is on.
async fn baseline(server: &Server, n: usize, workers: usize, gz: bool, ids: bool) -> f64 {
    let client = reqwest_client();
    let payloads = Arc::new(common::payloads());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, payloads, next, url) = (
            client.clone(),
            payloads.clone(),
            next.clone(),
            server.url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(common::BATCH as u64, Ordering::AcqRel) as usize;
                if from >= n {
                    return;
                }
                let body = loop_body(&payloads, from, n, ids);
                post(&client, &url, body, gz).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The body the loops post for events `from..from + BATCH` (of `n`): the
/// payloads evspool sends, in order, with an id member of evspool's length.
fn loop_body(payloads: &[Bytes], from: usize, n: usize, ids: bool) -> Vec<u8> {
    let mut body = Vec::with_capacity(common::BATCH * (common::PAYLOAD_BYTES + 48));
    body.push(b'[');
    for i in from..(from + common::BATCH).min(n) {
        if i > from {
            body.push(b',');
        }
        let p = &payloads[i % payloads.len()];
        if ids {
            body.extend_from_slice(b"{\"evspool_id\":\"0123456789ab-");
            body.extend_from_slice((i + 1).to_string().as_bytes());
            body.extend_from_slice(b"\",");
            body.extend_from_slice(&p[1..]);
        } else {
            body.extend_from_slice(p);
        }
    }
    body.push(b']');
    body
}

/// The fastest loop measured here: the same bodies (ids on) over hyper's
/// bare HTTP/1.1 connections, one per task, each polled by its task (what
/// the sinks' client does, without a pool, a queue or anything else).
async fn hyper_loop(server: &Server, n: usize, workers: usize) -> f64 {
    use http_body_util::{BodyExt, Full};
    let uri: hyper::Uri = server.url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let payloads = Arc::new(common::payloads());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (payloads, next, path, addr) = (
            payloads.clone(),
            next.clone(),
            uri.path().to_string(),
            addr.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (mut send, mut conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
                hyper_util::rt::TokioIo::new(tcp),
            )
            .await
            .unwrap();
            loop {
                let from = next.fetch_add(common::BATCH as u64, Ordering::AcqRel) as usize;
                if from >= n {
                    return;
                }
                let req = hyper::Request::post(path.as_str())
                    .header("host", addr.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(loop_body(&payloads, from, n, true))))
                    .unwrap();
                let exchange = async {
                    let resp = send.send_request(req).await.unwrap();
                    assert!(resp.status().is_success());
                    resp.into_body().collect().await.unwrap().to_bytes()
                };
                tokio::select! {
                    biased;
                    _ = exchange => {}
                    r = &mut conn => panic!("the collector closed the connection: {r:?}"),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The baseline as it was until issue 24: one pre-built body of the first 50
/// payloads, without ids, posted again and again (compressed per request with
/// gzip). Kept as a column, so figures stay comparable with earlier runs.
async fn prebuilt_baseline(server: &Server, n: usize, workers: usize, gz: bool) -> f64 {
    let client = reqwest_client();
    let payloads = common::payloads();
    let mut body = Vec::new();
    body.push(b'[');
    for (i, p) in payloads.iter().take(common::BATCH).enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(p);
    }
    body.push(b']');
    let body = Bytes::from(body);
    let requests = Arc::new(AtomicU64::new((n / common::BATCH) as u64));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, body, requests, url) = (
            client.clone(),
            body.clone(),
            requests.clone(),
            server.url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while requests
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| r.checked_sub(1))
                .is_ok()
            {
                post(&client, &url, body.clone(), gz).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

/// The baselines' client: reqwest with the settings evspool's sinks used
/// before they had their own client (no redirects, the same timeouts, pool
/// and User-Agent, no decompression).
fn reqwest_client() -> reqwest::Client {
    evspool::install_crypto_provider();
    let cfg = HttpClientConfig::default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .connect_timeout(cfg.connect_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
        .user_agent(cfg.user_agent)
        .no_gzip()
        .build()
        .unwrap()
}

/// Posts one body (gzipped first with `gz`) and reads the answer.
async fn post(client: &reqwest::Client, url: &str, body: impl Into<Bytes>, gz: bool) {
    let body: Bytes = body.into();
    let b = if gz { Bytes::from(gzip(&body)) } else { body };
    let mut req = client.post(url).header("content-type", "application/json");
    if gz {
        req = req.header("content-encoding", "gzip");
    }
    let resp = req.body(b).send().await.unwrap();
    assert!(resp.status().is_success());
    let _ = resp.bytes().await.unwrap();
}

/// Drains a fresh `n`-event backlog into stream `EVS` through the NATS sink.
async fn nats_drain(url: &str, n: usize, workers: usize, batch: usize) -> f64 {
    use evspool::forward::sink::nats::{NatsSink, NatsSinkConfig, NatsStream};
    let (q, _dir) = backlog(n).await;
    let cfg = NatsSinkConfig {
        servers: vec![url.to_string()],
        stream: Some(NatsStream {
            name: "EVS".into(),
            ..NatsStream::default()
        }),
        ..NatsSinkConfig::default()
    };
    let sink = NatsSink::standalone(common::TOPIC, &cfg).unwrap();
    let rate = timed_drain_with(&q, Arc::new(sink), workers, batch).await;
    let js = async_nats::jetstream::new(nats_server::client(url, None).await);
    assert_eq!(nats_server::stream_count(&js, "EVS").await, n as u64);
    js.delete_stream("EVS").await.unwrap();
    rate
}

/// The baseline: `workers` tasks publish the same payloads with
/// `Nats-Msg-Id` headers into stream `RAW`, `batch` pipelined publishes at a
/// time, awaiting every ack before the next batch.
async fn nats_raw(url: &str, n: usize, workers: usize, batch: usize) -> f64 {
    use async_nats::jetstream::{self, message::PublishMessage};
    let js = jetstream::new(nats_server::client(url, None).await);
    nats_server::create_stream(&js, "RAW", &["raw.>"]).await;
    let payloads = Arc::new(common::payloads());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (js, payloads, next) = (js.clone(), payloads.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let from = next.fetch_add(batch as u64, Ordering::AcqRel) as usize;
                if from >= n {
                    return;
                }
                let mut acks = Vec::with_capacity(batch);
                for i in from..(from + batch).min(n) {
                    let msg = PublishMessage::build()
                        .payload(payloads[i % payloads.len()].clone())
                        .message_id(format!("raw-{i}"));
                    let ack = js.send_publish("raw.track", msg).await.unwrap();
                    acks.push(std::future::IntoFuture::into_future(ack));
                }
                for a in futures_util::future::join_all(acks).await {
                    assert!(!a.unwrap().duplicate);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(nats_server::stream_count(&js, "RAW").await, n as u64);
    js.delete_stream("RAW").await.unwrap();
    rate
}

fn main() {
    let mode = Mode::from_args();
    if mode == Mode::List {
        return;
    }
    let n = match mode {
        Mode::Test => 2_000,
        _ if std::env::var("EVSPOOL_BENCH_SMALL").is_ok() => 100_000,
        _ => 1_000_000,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let sections: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |s: &str| sections.is_empty() || sections.iter().any(|a| a == s);
    rt.block_on(async {
        if wants("nats") {
            nats_section(n, mode).await;
        }
        if !wants("http") && !wants("goal") {
            return;
        }
        let server = collector().await;
        let null4 = null_drain(n, 4).await;
        eprintln!("null sink, 4 workers: {null4:.0} ev/s");
        if std::env::var("EVSPOOL_BENCH_NULL_ONLY").is_ok() {
            return;
        }
        if std::env::var("EVSPOOL_BENCH_PROFILE").is_ok_and(|v| v == "baseline") {
            eprintln!("baseline only; posting (pid {})", std::process::id());
            for _ in 0..3 {
                profiled("baseline", baseline(&server, n, 4, false, true)).await;
            }
            return;
        }
        if std::env::var("EVSPOOL_BENCH_PROFILE").is_ok() {
            // Filled first, so a profiler attached after this line sees drains only.
            let mut backlogs = Vec::new();
            for _ in 0..3 {
                backlogs.push(backlog(n).await);
            }
            eprintln!("filled {} backlogs; draining (pid {})", backlogs.len(), std::process::id());
            for (q, _dir) in backlogs {
                profiled("evspool", timed_drain(&q, http_sink(&server, false, true), 4)).await;
            }
            profiled("baseline", baseline(&server, n, 4, false, true)).await;
            return;
        }
        if wants("goal") {
            goal_rounds(&server, n, mode).await;
        }
        if !wants("http") {
            return;
        }
        let mut rows = Vec::new();
        for (workers, gz, ids) in [
            (4, false, true),
            (4, false, false),
            (16, false, true),
            (4, true, true),
            (16, true, true),
        ] {
            let ours = evspool_drain(&server, n, workers, gz, ids).await;
            let base = baseline(&server, n, workers, gz, ids).await;
            let pre = prebuilt_baseline(&server, n, workers, gz).await;
            rows.push((workers, gz, ids, ours, base, pre));
            eprintln!(
                "workers={workers} gzip={gz} ids={ids}: evspool {ours:.0} ev/s, baseline {base:.0} ev/s, pre-built baseline {pre:.0} ev/s"
            );
        }
        assert!(server.bytes.load(Ordering::Relaxed) > 0);
        println!("\n## Forwarding: drain a {n}-event backlog of 300-byte events to a loopback collector\n");
        println!("| workers | gzip | ids | evspool ev/s | plain reqwest loop ev/s | evspool / baseline | target | loop with one pre-built id-less body ev/s | evspool / that |");
        println!("|---:|---|---|---:|---:|---:|---|---:|---:|");
        println!(
            "\nWith a sink that accepts at once (no HTTP), 4 workers drain {} ev/s: the queue and worker cost alone.\n",
            common::thousands(null4)
        );
        for (w, gz, ids, ours, base, pre) in rows {
            let ok = ours >= 400_000.0 && ours >= 0.25 * base;
            println!(
                "| {w} | {} | {} | {} | {} | {:.2}× | ≥ 400,000 ev/s and ≥ 25% of baseline: {} | {} | {:.2}× |",
                if gz { "level 1" } else { "off" },
                if ids { "`evspool_id`" } else { "off" },
                common::thousands(ours),
                common::thousands(base),
                ours / base,
                if mode == Mode::Test { "n/a (test run)" } else if ok { "met" } else { "**missed**" },
                common::thousands(pre),
                ours / pre,
            );
        }
    });
}

/// Issue 24's goal row (4 workers, no gzip, ids on) in alternating rounds:
/// each round drains a fresh backlog and runs the plain reqwest loop, the
/// order swapped every round so neither side always runs on the heap and
/// connections the other left; prints every round's ratio and the median.
async fn goal_rounds(server: &Server, n: usize, mode: Mode) {
    let rounds = if mode == Mode::Test { 2 } else { 6 };
    let mut ratios = Vec::new();
    println!(
        "\n## Forwarding goal row: 4 workers, no gzip, ids on, {n} events, {rounds} alternating rounds\n"
    );
    println!(
        "| round | first | evspool ev/s | plain reqwest loop ev/s | ratio | raw hyper loop ev/s | evspool ÷ that |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for round in 0..rounds {
        let (q, _dir) = backlog(n).await;
        let (ours, base) = if round % 2 == 0 {
            let ours = timed_drain(&q, http_sink(server, false, true), 4).await;
            (ours, baseline(server, n, 4, false, true).await)
        } else {
            let base = baseline(server, n, 4, false, true).await;
            (
                timed_drain(&q, http_sink(server, false, true), 4).await,
                base,
            )
        };
        ratios.push(ours / base);
        let raw = hyper_loop(server, n, 4).await;
        println!(
            "| {} | {} | {} | {} | {:.2}× | {} | {:.2}× |",
            round + 1,
            if round % 2 == 0 { "evspool" } else { "loop" },
            common::thousands(ours),
            common::thousands(base),
            ours / base,
            common::thousands(raw),
            ours / raw
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = (ratios[(rounds - 1) / 2] + ratios[rounds / 2]) / 2.0;
    println!(
        "\nmedian {median:.2}×, spread {:.2}–{:.2}× (goal ≥ 0.90×: {})",
        ratios[0],
        ratios[rounds - 1],
        if mode == Mode::Test {
            "n/a (test run)"
        } else if median >= 0.90 {
            "met"
        } else {
            "**missed**"
        }
    );
}

/// Drains into JetStream and runs the raw loop, then prints the table.
async fn nats_section(n: usize, mode: Mode) {
    let server = nats_server::NatsServer::start();
    let url = server.url();
    let mut rows = Vec::new();
    for (workers, batch) in [(4, 50), (4, 500)] {
        let ours = nats_drain(&url, n, workers, batch).await;
        let base = nats_raw(&url, n, workers, batch).await;
        eprintln!(
            "nats workers={workers} batch={batch}: evspool {ours:.0} ev/s, raw async-nats {base:.0} ev/s"
        );
        rows.push((workers, batch, ours, base));
    }
    let version = std::process::Command::new(nats_server::binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "\n## Forwarding into NATS JetStream: drain a {n}-event backlog of 300-byte events ({version}, file storage, loopback)\n"
    );
    println!(
        "| workers | batch | evspool ev/s | raw async-nats publish-and-await loop ev/s | evspool / baseline | target |"
    );
    println!("|---:|---:|---:|---:|---:|---|");
    for (w, b, ours, base) in rows {
        let verdict = if mode == Mode::Test {
            "n/a (test run)"
        } else if ours >= 0.5 * base {
            "met"
        } else {
            "**missed**"
        };
        println!(
            "| {w} | {b} | {} | {} | {:.2}× | ≥ 50% of baseline: {verdict} |",
            common::thousands(ours),
            common::thousands(base),
            ours / base,
        );
    }
}
