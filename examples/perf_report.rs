//! The performance report: evspool against its peers and under outage, churn,
//! restart and a huge backlog, in one reproducible run, every figure beside a
//! baseline measured in the same run.
//!
//! ```text
//! cargo run --release --example perf_report                 # all sections, ~5–7 min
//! cargo run --release --example perf_report -- --quick      # all sections, ~1.5 min
//! cargo run --release --example perf_report -- peers outage # some sections
//! cargo run --release --example perf_report -- peers drain  # peer rows whose id contains "drain"
//! ```
//!
//! Sections: `peers` (yaque, queue-file, SQLite, sled one key per event,
//! append-only file; see `testkit/src/bench/peers.rs`), `durable` (the durable
//! enqueue goals against their bound and floors, `testkit/src/bench/goals.rs`),
//! `sidecar` (the daemon's ingest against a minimal server,
//! `testkit/src/bench/sidecar.rs`), `topics` (memory and descriptors per topic,
//! `testkit/src/bench/topics.rs`), `outage`, `churn`, `restart`, `memory`. `EVSPOOL_REPORT_QUICK=1` is `--quick`; stores go under
//! `EVSPOOL_BENCH_DIR` (default: the system temp dir; use a real disk).
//! Every scenario but `peers` runs in a fresh child process (this binary,
//! re-executed), so its peak RSS (`VmHWM`) is its own.

use evspool_testkit::bench as common;

use axum::body::Bytes as AxumBytes;
use axum::http::StatusCode;
use common::peers::{Ctx, Sizes, evspool_config, measure_all, table};
use common::{BATCH, TOPIC, thousands, vm_hwm_kib};
use evspool::forward::sink::http::{
    HttpClientConfig, HttpSink, HttpSinkConfig, build_client, install_crypto_provider,
};
use evspool::forward::{Forwarder, RouteConfig};
use evspool::{Enqueued, Queue};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "EVSPOOL_REPORT_CHILD";
const DIR_ENV: &str = "EVSPOOL_REPORT_DIR";
const N_ENV: &str = "EVSPOOL_REPORT_N";
const URL_ENV: &str = "EVSPOOL_REPORT_URL";
const QUICK_ENV: &str = "EVSPOOL_REPORT_QUICK";
const PREFIX: &str = "evspool-report";
const SECTIONS: [&str; 8] = [
    "peers", "durable", "sidecar", "topics", "outage", "churn", "restart", "memory",
];
const MIB: f64 = 1024.0 * 1024.0;
/// `--quick`, passed on to the children.
static QUICK: AtomicBool = AtomicBool::new(false);

/// Rate, durations and sizes of the scenarios.
#[derive(Clone, Debug)]
struct Plan {
    rate: f64,
    healthy: Duration,
    outage: Duration,
    recovery_max: Duration,
    churn_backlog: usize,
    churn: Duration,
    restart_backlog: usize,
    restart_runs: usize,
    memory_events: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        Plan {
            rate: 50_000.0,
            healthy: Duration::from_secs(if quick { 3 } else { 5 }),
            outage: Duration::from_secs(if quick { 4 } else { 10 }),
            recovery_max: Duration::from_secs(if quick { 30 } else { 120 }),
            churn_backlog: if quick { 100_000 } else { 1_000_000 },
            churn: Duration::from_secs(if quick { 15 } else { 60 }),
            restart_backlog: if quick { 200_000 } else { 1_000_000 },
            restart_runs: 3,
            memory_events: if quick { 1_000_000 } else { 10_000_000 },
        }
    }
}

type Report = BTreeMap<String, f64>;

fn report(key: &str, value: f64) {
    println!("{PREFIX} {key} {value}");
}

fn main() {
    install_crypto_provider();
    if let Ok(which) = std::env::var(CHILD_ENV) {
        child(&which);
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var(QUICK_ENV).is_ok_and(|v| v != "0" && !v.is_empty());
    let words: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let mut sections: Vec<&str> = SECTIONS
        .iter()
        .copied()
        .filter(|s| words.iter().any(|w| *w == s))
        .collect();
    if sections.is_empty() || words.iter().any(|w| *w == "all") {
        sections = SECTIONS.to_vec();
    }
    // Words that are neither sections nor "all" filter the peer rows.
    let filters: Vec<String> = words
        .iter()
        .filter(|w| !SECTIONS.contains(&w.as_str()) && w.as_str() != "all")
        .map(|w| w.to_string())
        .collect();
    QUICK.store(quick, Ordering::Relaxed);
    let plan = Plan::new(quick);
    let started = Instant::now();
    eprintln!(
        "perf_report: sections {sections:?}, {}",
        if quick { "quick" } else { "full" }
    );
    let mut out = String::new();
    out.push_str(&format!(
        "# evspool performance report ({})\n\n{}\n",
        if quick { "--quick" } else { "full" },
        machine()
    ));
    if sections.contains(&"peers") {
        eprintln!("== peers");
        let ctx = Ctx::new(if quick { Sizes::quick() } else { Sizes::full() });
        let rates = measure_all(&ctx, &filters);
        out.push_str("\n## evspool vs the peers a user would pick instead\n\n");
        out.push_str(&table(&ctx, &rates, true));
    }
    if sections.contains(&"durable") {
        eprintln!("== durable");
        let sizes = if quick {
            common::goals::GoalSizes::quick()
        } else {
            common::goals::GoalSizes::full()
        };
        let rates = common::goals::measure(&sizes);
        out.push_str("\n## Durable enqueue against its bound and floors\n\n");
        out.push_str(&common::goals::table(&sizes, &rates, true));
    }
    if sections.contains(&"sidecar") {
        eprintln!("== sidecar");
        let sizes = if quick {
            common::sidecar::SidecarSizes::quick()
        } else {
            common::sidecar::SidecarSizes::full()
        };
        let rates = common::sidecar::measure(CHILD_ENV, &sizes);
        out.push_str("\n## The sidecar's ingest against a minimal server\n\n");
        out.push_str(&common::sidecar::table(&rates));
    }
    let mut rows: Vec<Row> = Vec::new();
    if sections.contains(&"outage") {
        eprintln!("== outage");
        rows.extend(outage_rows(&plan, &run_child("outage", None, 0, None)));
    }
    if sections.contains(&"churn") {
        eprintln!("== churn");
        rows.extend(churn_rows(
            &plan,
            &run_child("churn", None, plan.churn_backlog, None),
        ));
    }
    if sections.contains(&"restart") {
        eprintln!("== restart");
        rows.extend(restart(&plan));
    }
    if sections.contains(&"memory") {
        eprintln!("== memory");
        rows.extend(memory(&plan));
    }
    if sections.contains(&"topics") {
        eprintln!("== topics");
        rows.extend(topics(quick));
    }
    if !rows.is_empty() {
        out.push_str("\n## Scenarios (each in a fresh child process)\n\n");
        out.push_str(&scenario_table(&rows));
    }
    out.push_str(&format!(
        "\nWhole report: {:.0} s, load average {} at the end. Reproduce: \
         `cargo run --release --example perf_report{}`.\n",
        started.elapsed().as_secs_f64(),
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_default(),
        if quick { " -- --quick" } else { "" }
    ));
    println!("{out}");
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or_else(String::new, |kib| format!(", {:.0} GiB RAM", kib / MIB));
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs{mem}, load average {load} at the start; stores under {}; \
         300-byte JSON events.",
        common::temp_dir()
            .path()
            .parent()
            .map_or_else(|| "?".into(), |p| p.display().to_string())
    )
}

// ---------------------------------------------------------------------------
// Children

fn child_cmd(which: &str, dir: Option<&Path>, n: usize, url: Option<&str>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("own executable"));
    cmd.env(CHILD_ENV, which).env(N_ENV, n.to_string()).env(
        QUICK_ENV,
        if QUICK.load(Ordering::Relaxed) {
            "1"
        } else {
            "0"
        },
    );
    if let Some(d) = dir {
        cmd.env(DIR_ENV, d);
    }
    if let Some(u) = url {
        cmd.env(URL_ENV, u);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    cmd
}

fn parse_report(text: &str) -> Report {
    let mut r = Report::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some(PREFIX) {
            continue;
        }
        if let (Some(k), Some(v)) = (w.next(), w.next().and_then(|v| v.parse().ok())) {
            r.insert(k.to_string(), v);
        }
    }
    r
}

/// Runs child `which` to completion and returns what it reported.
fn run_child(which: &str, dir: Option<&Path>, n: usize, url: Option<&str>) -> Report {
    let out = child_cmd(which, dir, n, url)
        .output()
        .expect("run child process");
    assert!(out.status.success(), "child {which} failed: {}", out.status);
    parse_report(&String::from_utf8_lossy(&out.stdout))
}

fn child(which: &str) {
    let dir = std::env::var_os(DIR_ENV).map(PathBuf::from);
    let n: usize = std::env::var(N_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let url = std::env::var(URL_ENV).ok();
    let plan = Plan::new(std::env::var(QUICK_ENV).is_ok_and(|v| v == "1"));
    report("start_hwm_kib", vm_hwm_kib().unwrap_or(0) as f64);
    match which {
        "outage" => child_outage(&plan),
        "churn" => child_churn(&plan, n),
        "fill" => child_fill(dir.as_deref().expect("dir"), n),
        "fill-sled" => {
            let store = common::baseline::SledOneKey::open(dir.as_deref().expect("dir"));
            let payloads = common::payloads();
            for i in 0..n {
                store.insert(&payloads[i % payloads.len()]);
            }
            store.flush(false);
        }
        "restart-run" => child_restart_run(dir.as_deref().expect("dir"), &url.expect("url")),
        "restart-sled" => child_restart_sled(dir.as_deref().expect("dir"), &url.expect("url")),
        "restart-null" => child_restart_null(&url.expect("url")),
        "reopen" => child_reopen(dir.as_deref().expect("dir")),
        common::sidecar::FLOOR_CHILD => common::sidecar::floor_child(),
        "topics" | "topics-one" | "topics-buffered" | "topics-one-buffered" => {
            child_topics(which, dir.as_deref().expect("dir"), n)
        }
        other => panic!("unknown child {other:?}"),
    }
    report("hwm_kib", vm_hwm_kib().unwrap_or(0) as f64);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------
// A loopback collector that can be taken down

#[derive(Default)]
struct CollectorState {
    up: AtomicBool,
    ok_requests: AtomicU64,
    failed_requests: AtomicU64,
    events: AtomicU64,
    first_request: OnceLock<Instant>,
    /// Set when the collector comes back up; the first 200 after it is recorded.
    up_since: Mutex<Option<Instant>>,
    first_ok_after_up: Mutex<Option<Instant>>,
}

async fn collector(state: Arc<CollectorState>) -> String {
    let st = state.clone();
    let app = axum::Router::new().fallback(move |body: AxumBytes| {
        let st = st.clone();
        async move {
            let now = Instant::now();
            let _ = st.first_request.set(now);
            if !st.up.load(Ordering::SeqCst) {
                st.failed_requests.fetch_add(1, Ordering::Relaxed);
                return (StatusCode::SERVICE_UNAVAILABLE, "down");
            }
            let events = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&body)
                .map_or(0, |v| v.len() as u64);
            st.events.fetch_add(events, Ordering::Relaxed);
            st.ok_requests.fetch_add(1, Ordering::Relaxed);
            if st
                .up_since
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
            {
                let mut f = st
                    .first_ok_after_up
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                f.get_or_insert(now);
            }
            (StatusCode::OK, "{\"status\":1}")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let url = format!("http://{}/ingest", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    url
}

fn http_sink(url: &str) -> Arc<HttpSink> {
    let client = build_client(&HttpClientConfig::default()).expect("http client");
    Arc::new(
        HttpSink::new(
            client,
            HttpSinkConfig {
                url: url.to_string(),
                ..HttpSinkConfig::default()
            },
        )
        .expect("http sink"),
    )
}

// ---------------------------------------------------------------------------
// Paced producer and consumer

/// Enqueue latencies (ns) by phase, from a producer paced at `rate` events/s.
struct Latencies {
    by_phase: Vec<Vec<u32>>,
    not_accepted: u64,
    sent: u64,
}

/// Runs a producer thread calling `enqueue` at `rate` events per second until
/// `stop`; each call's latency goes to the phase `phase` holds at that moment.
fn paced_producer(
    q: Queue,
    rate: f64,
    phase: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    phases: usize,
) -> std::thread::JoinHandle<Latencies> {
    std::thread::spawn(move || {
        let payloads = common::payloads();
        let mut lat = Latencies {
            by_phase: vec![Vec::new(); phases],
            not_accepted: 0,
            sent: 0,
        };
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            if lat.sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
            // Never more than a second behind: a stalled producer does not burst forever.
            if due - lat.sent > rate as u64 {
                lat.sent = due - rate as u64;
            }
            let p = phase.load(Ordering::Relaxed) as usize;
            while lat.sent < due {
                let payload = payloads[lat.sent as usize % payloads.len()].clone();
                let t = Instant::now();
                let o = q.enqueue(TOPIC, payload);
                let ns = t.elapsed().as_nanos().min(u32::MAX as u128) as u32;
                lat.by_phase[p].push(ns);
                if !matches!(o, Ok(Enqueued::Accepted(_))) {
                    lat.not_accepted += 1;
                }
                lat.sent += 1;
            }
        }
        lat
    })
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

// ---------------------------------------------------------------------------
// Outage

fn child_outage(plan: &Plan) {
    let rt = runtime();
    let dir = common::temp_dir();
    let state = Arc::new(CollectorState::default());
    state.up.store(true, Ordering::SeqCst);
    let url = rt.block_on(collector(state.clone()));
    let q = Queue::open(dir.path(), evspool_config(false)).expect("open queue");
    let fwd = {
        let _guard = rt.enter();
        Forwarder::new(q.clone())
            .route(TOPIC, http_sink(&url), RouteConfig::default())
            .expect("route")
            .spawn()
    };
    let phase = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = paced_producer(q.clone(), plan.rate, phase.clone(), stop.clone(), 3);
    let depth = || q.stats().total.events;
    let mut healthy_max_depth = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < plan.healthy {
        healthy_max_depth = healthy_max_depth.max(depth());
        std::thread::sleep(Duration::from_millis(20));
    }
    report("healthy_hwm_kib", vm_hwm_kib().unwrap_or(0) as f64);
    // Down.
    state.up.store(false, Ordering::SeqCst);
    phase.store(1, Ordering::Relaxed);
    let down_at = Instant::now();
    while down_at.elapsed() < plan.outage {
        std::thread::sleep(Duration::from_millis(20));
    }
    let backlog_at_up = depth();
    // Up again.
    let up_at = Instant::now();
    *state.up_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(up_at);
    state.up.store(true, Ordering::SeqCst);
    phase.store(2, Ordering::Relaxed);
    let threshold = healthy_max_depth.max(10_000);
    let mut peak_depth = backlog_at_up;
    let drained = loop {
        let d = depth();
        peak_depth = peak_depth.max(d);
        if d <= threshold {
            break Some(up_at.elapsed());
        }
        if up_at.elapsed() > plan.recovery_max {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    stop.store(true, Ordering::Relaxed);
    let mut lat = producer.join().expect("producer thread");
    let first_ok = *state
        .first_ok_after_up
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    report("rate", plan.rate);
    report("healthy_max_depth", healthy_max_depth as f64);
    report("backlog_at_up", backlog_at_up as f64);
    report("peak_depth", peak_depth as f64);
    report("drain_s", drained.map_or(-1.0, |d| d.as_secs_f64()));
    report(
        "first_ok_after_up_s",
        first_ok.map_or(-1.0, |t| t.duration_since(up_at).as_secs_f64()),
    );
    report("not_accepted", lat.not_accepted as f64);
    report("sent", lat.sent as f64);
    report(
        "failed_requests",
        state.failed_requests.load(Ordering::Relaxed) as f64,
    );
    report(
        "collector_events",
        state.events.load(Ordering::Relaxed) as f64,
    );
    for (i, name) in ["healthy", "outage", "recovery"].iter().enumerate() {
        let v = &mut lat.by_phase[i];
        v.sort_unstable();
        report(&format!("{name}_calls"), v.len() as f64);
        report(&format!("{name}_p50_ns"), percentile(v, 0.5));
        report(&format!("{name}_p99_ns"), percentile(v, 0.99));
        report(&format!("{name}_p999_ns"), percentile(v, 0.999));
        report(
            &format!("{name}_max_ns"),
            v.last().copied().unwrap_or(0) as f64,
        );
    }
    report("outage_hwm_kib", vm_hwm_kib().unwrap_or(0) as f64);
    rt.block_on(fwd.shutdown(Duration::from_secs(5)));
    q.close();
}

// ---------------------------------------------------------------------------
// Churn

fn child_fill(dir: &Path, n: usize) {
    let rt = runtime();
    let q = Queue::open(dir, evspool_config(false)).expect("open queue");
    let payloads = common::payloads();
    let start = Instant::now();
    for i in 0..n {
        let o = q
            .enqueue(TOPIC, payloads[i % payloads.len()].clone())
            .expect("enqueue");
        assert!(matches!(o, Enqueued::Accepted(_)), "{o:?}");
    }
    rt.block_on(q.sync()).expect("sync");
    let t = start.elapsed().as_secs_f64();
    report("fill_rate", n as f64 / t);
    report("fill_s", t);
    report("fill_hwm_kib", vm_hwm_kib().unwrap_or(0) as f64);
    report(
        "write_amplification",
        common::bytes_written().unwrap_or(0) as f64 / (n * common::PAYLOAD_BYTES) as f64,
    );
    report("logical_bytes", q.stats().total.bytes as f64);
    report("events", q.stats().total.events as f64);
    q.close();
    drop(q);
    report("disk_bytes", evspool::queue::store_size(dir) as f64);
}

fn child_churn(plan: &Plan, backlog: usize) {
    let dir = common::temp_dir();
    let cfg = evspool_config(false);
    child_fill(dir.path(), backlog);
    let q = Queue::open(dir.path(), cfg.clone()).expect("open queue");
    let logical = |q: &Queue| q.stats().total.bytes as f64;
    let disk = || evspool::queue::store_size(dir.path()) as f64;
    let (start_disk, start_logical) = (disk(), logical(&q));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = paced_producer(
        q.clone(),
        plan.rate,
        Arc::new(AtomicU64::new(0)),
        stop.clone(),
        1,
    );
    let consumer = {
        let (q, stop, rate) = (q.clone(), stop.clone(), plan.rate);
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut acked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = (start.elapsed().as_secs_f64() * rate) as u64;
                if acked >= due {
                    std::thread::sleep(Duration::from_micros(500));
                    continue;
                }
                match q.lease(TOPIC, BATCH).expect("lease") {
                    Some(lease) => {
                        acked += lease.len() as u64;
                        q.ack(lease).expect("ack");
                    }
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            acked
        })
    };
    let t0 = Instant::now();
    let (mut peak_disk, mut peak_ratio, mut peak_logical) = (start_disk, 0f64, start_logical);
    let mut samples = Vec::new();
    while t0.elapsed() < plan.churn {
        std::thread::sleep(Duration::from_secs(1));
        let (d, l) = (disk(), logical(&q));
        samples.push((t0.elapsed().as_secs_f64(), d, l));
        if d > peak_disk {
            peak_disk = d;
            peak_logical = l;
        }
        peak_ratio = peak_ratio.max(d / l.max(1.0));
    }
    stop.store(true, Ordering::Relaxed);
    let lat = producer.join().expect("producer");
    let acked = consumer.join().expect("consumer");
    let (end_disk, end_logical) = (disk(), logical(&q));
    let sled_reported = q.stats().size_on_disk as f64;
    q.close();
    drop(q);
    let c0 = Instant::now();
    let compacted = evspool::compact(dir.path(), &cfg).expect("compact");
    let compact_s = c0.elapsed().as_secs_f64();
    let q = Queue::open(dir.path(), cfg).expect("reopen after compact");
    let after_logical = logical(&q);
    let after_disk = disk();
    q.close();
    for (t, d, l) in &samples {
        eprintln!(
            "  churn t={t:5.1}s disk {:8.1} MiB logical {:8.1} MiB ratio {:.2}",
            d / MIB,
            l / MIB,
            d / l.max(1.0)
        );
    }
    report("churn_s", t0.elapsed().as_secs_f64());
    report("produced", lat.sent as f64);
    report("acked", acked as f64);
    report("not_accepted", lat.not_accepted as f64);
    report("start_disk", start_disk);
    report("start_logical", start_logical);
    report("peak_disk", peak_disk);
    report("peak_logical", peak_logical);
    report("peak_ratio", peak_ratio);
    report("end_disk", end_disk);
    report("end_logical", end_logical);
    report("end_sled_size_on_disk", sled_reported);
    report("compact_before", compacted.before_bytes as f64);
    report("compact_after", compacted.after_bytes as f64);
    report("compact_s", compact_s);
    report("after_disk", after_disk);
    report("after_logical", after_logical);
}

// ---------------------------------------------------------------------------
// Restart

fn child_restart_run(dir: &Path, url: &str) {
    let t = Instant::now();
    let rt = runtime();
    let q = Queue::open(dir, evspool_config(false)).expect("open queue");
    report("open_s", t.elapsed().as_secs_f64());
    let _fwd = {
        let _guard = rt.enter();
        Forwarder::new(q.clone())
            .route(TOPIC, http_sink(url), RouteConfig::default())
            .expect("route")
            .spawn()
    };
    report("spawned_s", t.elapsed().as_secs_f64());
    // The parent kills this process once the collector saw the first batch.
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(120)).await });
}

async fn post_body(url: &str, body: Vec<u8>) {
    let client = build_client(&HttpClientConfig::default()).expect("client");
    let resp = client
        .post_url(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("post");
    assert!((200..300).contains(&resp.status), "{}", resp.status);
}

fn json_array<'a>(items: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut body = vec![b'['];
    for (i, p) in items.enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(p);
    }
    body.push(b']');
    body
}

fn child_restart_sled(dir: &Path, url: &str) {
    let t = Instant::now();
    let rt = runtime();
    let store = common::baseline::SledOneKey::open(dir);
    report("open_s", t.elapsed().as_secs_f64());
    let first = store.lease(0, BATCH);
    assert_eq!(first.len(), BATCH, "the backlog is there");
    let body = json_array(first.iter().map(|(_, v)| v.as_ref()));
    rt.block_on(post_body(url, body));
}

fn child_restart_null(url: &str) {
    let rt = runtime();
    let payloads = common::payloads();
    let body = json_array(payloads.iter().take(BATCH).map(|p| &p[..]));
    rt.block_on(post_body(url, body));
}

/// Spawns `which` against a fresh collector and returns seconds from spawn to
/// the collector's first request, and what the child reported.
fn time_to_first_request(which: &str, dir: Option<&Path>) -> (f64, Report) {
    let rt = runtime();
    let state = Arc::new(CollectorState::default());
    state.up.store(true, Ordering::SeqCst);
    let url = rt.block_on(collector(state.clone()));
    let t0 = Instant::now();
    let mut child = child_cmd(which, dir, 0, Some(&url))
        .spawn()
        .expect("spawn child");
    let deadline = t0 + Duration::from_secs(60);
    let first = loop {
        if let Some(t) = state.first_request.get() {
            break Some(t.duration_since(t0).as_secs_f64());
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    (
        first.expect("the collector saw a request within 60 s"),
        parse_report(&text),
    )
}

fn restart(plan: &Plan) -> Vec<Row> {
    let n = plan.restart_backlog;
    let base = common::temp_dir();
    let ev = base.path().join("evspool");
    let sl = base.path().join("sled");
    run_child("fill", Some(&ev), n, None);
    run_child("fill-sled", Some(&sl), n, None);
    let mut ours = Vec::new();
    let mut opens = Vec::new();
    let mut sled = Vec::new();
    let mut null = Vec::new();
    for _ in 0..plan.restart_runs {
        let (t, r) = time_to_first_request("restart-run", Some(&ev));
        ours.push(t);
        opens.push(r.get("open_s").copied().unwrap_or(f64::NAN));
        sled.push(time_to_first_request("restart-sled", Some(&sl)).0);
        null.push(time_to_first_request("restart-null", None).0);
    }
    let m = |v: &[f64]| common::peers::median(v).unwrap_or(f64::NAN);
    let (ours, sled, null, open) = (m(&ours), m(&sled), m(&null), m(&opens));
    eprintln!(
        "  restart: evspool {ours:.3} s (open {open:.3} s), sled {sled:.3} s, no store {null:.3} s"
    );
    let k = n / 1000;
    vec![
        Row::new(
            "restart",
            &format!("process spawn → collector's first batch, {k}k queued"),
            format!("{ours:.3} s"),
            &format!("sled one key per event: {sled:.3} s"),
            ours / sled,
            "≤ 0.5 s",
            Some(ours <= 0.5),
            &format!(
                "Median of {} runs. A process with no store that posts one batch at once takes \
                 {null:.3} s; evspool's own `Queue::open` took {open:.3} s of it.",
                plan.restart_runs
            ),
        ),
        Row::new(
            "restart",
            "  of which `Queue::open` (rebuilding the index)",
            format!("{open:.3} s"),
            &format!("whole restart: {ours:.3} s"),
            open / ours,
            "",
            None,
            "",
        ),
    ]
}

// ---------------------------------------------------------------------------
// Memory

fn child_reopen(dir: &Path) {
    let t = Instant::now();
    let q = Queue::open(dir, evspool_config(false)).expect("reopen queue");
    report("open_s", t.elapsed().as_secs_f64());
    report("open_hwm_kib", vm_hwm_kib().unwrap_or(0) as f64);
    let lease = q
        .lease(TOPIC, BATCH)
        .expect("lease")
        .expect("the backlog is there");
    report("first_lease_s", t.elapsed().as_secs_f64());
    q.ack(lease).expect("ack");
    let mut acked = BATCH as u64;
    let d = Instant::now();
    while acked < 200_000 {
        let Some(l) = q.lease(TOPIC, BATCH).expect("lease") else {
            break;
        };
        acked += l.len() as u64;
        q.ack(l).expect("ack");
    }
    report("drain_rate", acked as f64 / d.elapsed().as_secs_f64());
    report("events", q.stats().total.events as f64);
    q.close();
}

fn free_disk_bytes(dir: &Path) -> Option<f64> {
    let out = Command::new("df").arg("-Pk").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().nth(1)?;
    line.split_whitespace()
        .nth(3)?
        .parse::<f64>()
        .ok()
        .map(|k| k * 1024.0)
}

fn memory(plan: &Plan) -> Vec<Row> {
    let base = common::temp_dir();
    let mut n = plan.memory_events;
    let need = n as f64 * common::PAYLOAD_BYTES as f64 * 3.0;
    let mut note = String::new();
    if let Some(free) = free_disk_bytes(base.path())
        && free < need
    {
        let fits = (free / 3.0 / common::PAYLOAD_BYTES as f64) as usize / 1_000_000 * 1_000_000;
        note = format!(
            " Only {:.1} GiB free: {}M events instead of {}M.",
            free / MIB / 1024.0,
            fits / 1_000_000,
            n / 1_000_000
        );
        n = fits.max(1_000_000);
    }
    let dir = base.path().join("q");
    let fill = run_child("fill", Some(&dir), n, None);
    let reopen = run_child("reopen", Some(&dir), n, None);
    let get = |r: &Report, k: &str| r.get(k).copied().unwrap_or(f64::NAN);
    let idle = get(&fill, "start_hwm_kib") / 1024.0;
    let fill_hwm = get(&fill, "fill_hwm_kib") / 1024.0;
    let open_hwm = get(&reopen, "open_hwm_kib") / 1024.0;
    let reopen_hwm = get(&reopen, "hwm_kib") / 1024.0;
    let m = n / 1_000_000;
    let disk = get(&fill, "disk_bytes");
    let logical = get(&fill, "logical_bytes");
    eprintln!(
        "  memory: fill {m}M at {} ev/s, peak {fill_hwm:.1} MiB; reopen {open_hwm:.1} MiB, after 200k drained {reopen_hwm:.1} MiB",
        thousands(get(&fill, "fill_rate"))
    );
    drop(base);
    vec![
        Row::new(
            "memory",
            &format!("peak RSS while enqueuing {m}M events (one producer)"),
            format!("{fill_hwm:.1} MiB"),
            &format!("target 128 MiB; idle child {idle:.1} MiB"),
            fill_hwm / 128.0,
            "< 128 MiB",
            Some(fill_hwm < 128.0),
            &format!(
                "Filled at {} ev/s, writing {:.1}× the payload bytes.{note}",
                thousands(get(&fill, "fill_rate")),
                get(&fill, "write_amplification")
            ),
        ),
        Row::new(
            "memory",
            &format!("peak RSS reopening {m}M queued (`Queue::open`)"),
            format!("{open_hwm:.1} MiB"),
            "target 128 MiB",
            open_hwm / 128.0,
            "< 128 MiB",
            Some(open_hwm < 128.0),
            &format!("`Queue::open` took {:.2} s.", get(&reopen, "open_s")),
        ),
        Row::new(
            "memory",
            &format!("  … then lease + ack 200k of the {m}M"),
            format!("{reopen_hwm:.1} MiB"),
            "target 128 MiB",
            reopen_hwm / 128.0,
            "< 128 MiB",
            Some(reopen_hwm < 128.0),
            &format!("Drained at {} ev/s.", thousands(get(&reopen, "drain_rate"))),
        ),
        Row::new(
            "memory",
            &format!("size on disk, {m}M queued"),
            format!("{:.2} GiB", disk / MIB / 1024.0),
            &format!("payload bytes {:.2} GiB", logical / MIB / 1024.0),
            disk / logical,
            "",
            None,
            "",
        ),
    ]
}

// ---------------------------------------------------------------------------
// The cost of a topic

/// `topics`: `n` topics of 100 events; `topics-one`: `n` events in one topic.
/// `topics-buffered`, `topics-one-buffered`: the same through buffered
/// `enqueue` (then `sync`, reopen), under `ulimit -n 1024`.
fn child_topics(which: &str, dir: &Path, n: usize) {
    use common::topics::{EVENTS_PER_TOPIC, Fill, run};
    let fill = if which.ends_with("-buffered") {
        let limit = rustix::process::Rlimit {
            current: Some(1024),
            maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, limit)
            .expect("ulimit -n 1024");
        Fill::Buffered
    } else {
        Fill::Durable
    };
    let r = if which.starts_with("topics-one") {
        run(dir, 1, n, fill)
    } else {
        run(dir, n, n * EVENTS_PER_TOPIC, fill)
    };
    report("peak_fds", r.peak_fds as f64);
    report("fds_before", r.fds_before as f64);
    report("peak_rss_kib", r.peak_rss_kib as f64);
    report("fill_rss_kib", r.fill_rss_kib as f64);
    report("peak_open_body_files", r.peak_open_body_files as f64);
    report("fill_rate", r.fill_rate);
    report("drain_rate", r.drain_rate);
}

/// Many topics against the same events in one topic, each in a fresh child.
fn topics(quick: bool) -> Vec<Row> {
    use common::topics::EVENTS_PER_TOPIC;
    let counts: &[usize] = if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 5_000, 10_000]
    };
    let budget = evspool::QueueConfig::default().max_open_files;
    let mut rows = Vec::new();
    let runs = counts
        .iter()
        .map(|&n| (n, ""))
        .chain([(10_000, "-buffered")]);
    for (n, fill) in runs {
        let events = n * EVENTS_PER_TOPIC;
        let dir = common::temp_dir();
        let many = run_child(
            &format!("topics{fill}"),
            Some(&dir.path().join("s")),
            n,
            None,
        );
        let dir = common::temp_dir();
        let one = run_child(
            &format!("topics-one{fill}"),
            Some(&dir.path().join("s")),
            events,
            None,
        );
        let rss = many["peak_rss_kib"] / 1024.0;
        let rss_one = one["peak_rss_kib"] / 1024.0;
        let per_topic_kib = (many["peak_rss_kib"] - one["peak_rss_kib"]) / n as f64;
        let what = if fill.is_empty() {
            format!("{} topics × 100 events", thousands(n as f64))
        } else {
            format!(
                "{} topics × 100 events, buffered `enqueue`, `ulimit -n 1024`",
                thousands(n as f64)
            )
        };
        rows.push(Row::new(
            "topics",
            &format!("{what}: peak RSS"),
            format!("{rss:.0} MiB"),
            &format!("1 topic, same {} events: {rss_one:.0} MiB", thousands(events as f64)),
            rss / rss_one,
            "≤ 128 MiB",
            Some(rss <= 128.0),
            &format!(
                "{per_topic_kib:.1} KiB per topic above the one-topic run; fill {} ev/s (one topic: {}), drain {} ev/s (one topic: {})",
                thousands(many["fill_rate"]),
                thousands(one["fill_rate"]),
                thousands(many["drain_rate"]),
                thousands(one["drain_rate"]),
            ),
        ));
        let fds = many["peak_fds"];
        rows.push(Row::new(
            "topics",
            &format!("{what}: peak descriptors"),
            format!("{fds:.0}"),
            &format!(
                "1 topic: {:.0}; before open: {:.0}",
                one["peak_fds"], many["fds_before"]
            ),
            fds / one["peak_fds"],
            "≤ 256",
            Some(fds <= 256.0),
            &format!(
                "at most {:.0} body files open at once (budget `max_open_files` = {budget})",
                many["peak_open_body_files"]
            ),
        ));
    }
    rows
}

// ---------------------------------------------------------------------------
// The scenario table

struct Row {
    section: &'static str,
    what: String,
    value: String,
    baseline: String,
    ratio: f64,
    target: &'static str,
    met: Option<bool>,
    note: String,
}

impl Row {
    #[allow(clippy::too_many_arguments)]
    fn new(
        section: &'static str,
        what: &str,
        value: String,
        baseline: &str,
        ratio: f64,
        target: &'static str,
        met: Option<bool>,
        note: &str,
    ) -> Row {
        Row {
            section,
            what: what.to_string(),
            value,
            baseline: baseline.to_string(),
            ratio,
            target,
            met,
            note: note.to_string(),
        }
    }
}

fn scenario_table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | measurement | evspool | same-run baseline | ratio | target | |\n\
         |---|---|---:|---|---:|---|---|\n",
    );
    for r in rows {
        let ratio = if r.ratio.is_finite() {
            format!("{:.2}×", r.ratio)
        } else {
            "–".into()
        };
        let verdict = match r.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.section, r.what, r.value, r.baseline, ratio, r.target, verdict
        ));
    }
    let notes: Vec<String> = rows
        .iter()
        .filter(|r| !r.note.is_empty())
        .map(|r| {
            format!(
                "- {}: {}",
                r.what.trim_start_matches([' ', '…']).trim(),
                r.note
            )
        })
        .collect();
    if !notes.is_empty() {
        out.push_str("\nNotes:\n\n");
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

fn us(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

fn outage_rows(plan: &Plan, r: &Report) -> Vec<Row> {
    let get = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
    let rate = thousands(plan.rate);
    let out_s = plan.outage.as_secs();
    let mut rows = Vec::new();
    for (stat, label, target, check) in [
        ("p50", "p50", "", None),
        ("p99", "p99", "≤ 1.2× healthy", Some(1.2)),
        ("p999", "p99.9", "", None),
        ("max", "max", "", None),
    ] {
        let (h, o) = (
            get(&format!("healthy_{stat}_ns")),
            get(&format!("outage_{stat}_ns")),
        );
        rows.push(Row::new(
            "outage",
            &format!("`enqueue` latency {label} during a {out_s} s collector outage ({rate} ev/s)"),
            us(o),
            &format!("healthy collector: {}", us(h)),
            o / h,
            target,
            check.map(|c| o <= c * h),
            "",
        ));
    }
    let rec = |s: &str| {
        let (p99, max) = (get(&format!("{s}_p99_ns")), get(&format!("{s}_max_ns")));
        format!("p99 {} / max {}", us(p99), us(max))
    };
    rows.push(Row::new(
        "outage",
        "  … and while the backlog drains after recovery",
        rec("recovery"),
        &format!("healthy: {}", rec("healthy")),
        get("recovery_p99_ns") / get("healthy_p99_ns"),
        "",
        None,
        "",
    ));
    let (healthy_hwm, outage_hwm) = (
        get("healthy_hwm_kib") / 1024.0,
        get("outage_hwm_kib") / 1024.0,
    );
    rows.push(Row::new(
        "outage",
        "peak RSS, whole outage scenario",
        format!("{outage_hwm:.1} MiB"),
        &format!("healthy phase: {healthy_hwm:.1} MiB"),
        outage_hwm / healthy_hwm,
        "< 128 MiB",
        Some(outage_hwm < 128.0),
        "",
    ));
    let drain = get("drain_s");
    let first = get("first_ok_after_up_s");
    let backlog = get("backlog_at_up");
    rows.push(Row::new(
        "outage",
        &format!(
            "collector up → backlog drained ({}k events queued at recovery)",
            (backlog / 1000.0).round()
        ),
        if drain >= 0.0 {
            format!("{drain:.1} s")
        } else {
            "not within the limit".into()
        },
        &format!("the outage itself: {out_s} s"),
        drain / out_s as f64,
        "",
        None,
        &format!(
            "Drained = queue depth back to the healthy phase's highest ({}); producers keep \
             enqueuing at {rate} ev/s throughout. The first 200 came {first:.1} s after the \
             collector was back: the breaker and backoff (defaults: breaker opens after 5 \
             failures for 2 s doubling to 60 s; backoff 2 s doubling to 60 s) decide when \
             workers probe again. {} enqueues were not accepted; the collector answered \
             {} requests with 503.",
            thousands(get("healthy_max_depth").max(10_000.0)),
            thousands(get("not_accepted")),
            thousands(get("failed_requests")),
        ),
    ));
    rows
}

fn churn_rows(plan: &Plan, r: &Report) -> Vec<Row> {
    let get = |k: &str| r.get(k).copied().unwrap_or(f64::NAN);
    let mib = |v: f64| format!("{:.0} MiB", v / MIB);
    let secs = plan.churn.as_secs();
    let k = plan.churn_backlog / 1000;
    let rate = thousands(plan.rate);
    let row = |what: &str, disk: f64, logical: f64, target: &'static str, limit: Option<f64>| {
        Row::new(
            "churn",
            what,
            mib(disk),
            &format!("logical (payload bytes queued): {}", mib(logical)),
            disk / logical,
            target,
            limit.map(|l| disk / logical <= l),
            "",
        )
    };
    let mut rows = vec![
        row(
            &format!("size on disk, {k}k backlog, before churn"),
            get("start_disk"),
            get("start_logical"),
            "",
            None,
        ),
        row(
            &format!("size on disk, peak during {secs} s of {rate} ev/s in and out"),
            get("peak_disk"),
            get("peak_logical"),
            "≤ 2× logical",
            Some(2.0),
        ),
        row(
            "size on disk at the end of the churn",
            get("end_disk"),
            get("end_logical"),
            "≤ 2× logical",
            Some(2.0),
        ),
        row(
            "size on disk after `evspool::compact`",
            get("after_disk"),
            get("after_logical"),
            "≤ 1.1× logical",
            Some(1.1),
        ),
    ];
    rows[1].note = format!(
        "The highest disk/logical ratio of any 1 s sample was {:.2}×. {} events produced, {} \
         leased and acked, {} not accepted.",
        get("peak_ratio"),
        thousands(get("produced")),
        thousands(get("acked")),
        thousands(get("not_accepted")),
    );
    rows[3].note = format!(
        "`compact` (queue closed) took {:.1} s and reported {} before, {} after; the figure in \
         the row is the directory after reopening the compacted store. sled's own \
         `size_on_disk` said {} at the end of the churn.",
        get("compact_s"),
        mib(get("compact_before")),
        mib(get("compact_after")),
        mib(get("end_sled_size_on_disk"))
    );
    rows
}
