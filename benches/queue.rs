//! Queue benchmarks: every evspool figure beside its baselines, measured in the same run.
//!
//! Payloads are 300-byte Mixpanel-style JSON events. Every iteration gets a
//! fresh directory (under `EVSPOOL_BENCH_DIR`, default the system temp dir);
//! opening and closing stores is never timed. Baselines are in
//! `common/baseline.rs`: one sled key per event (same sled settings as evspool),
//! the same made durable by group commit, and an append-only file.
//!
//! | group             | evspool, timed                          | baselines                                       |
//! |-------------------|-----------------------------------------|-------------------------------------------------|
//! | `buffered_enqueue`| 100k `enqueue` + `sync().await`         | sled insert ×100k + `flush`; file `write` ×100k + one `fdatasync` |
//! | `durable_enqueue` | 1/16/64 tokio tasks of `enqueue_durable`, `fsync` off/on | sled insert + group-commit `flush` (+`fdatasync`); file, `fdatasync` every 50 |
//! | `drain`           | `lease(50)` + `ack` until empty, backlog of 1M (100k small) | sled scan 50 + `Batch` remove; file read + offset write per 50 |
//!
//! Before criterion runs, the binary re-executes itself once per measurement
//! (so `VmHWM` is clean) to fill a store with the backlog, reopen it and drain
//! it: peak RSS, `Queue::open` → first successful lease, and drain after reopen.
//! At the end it prints one markdown table of ratios (medians of all timed
//! iterations; criterion's own estimates are printed above it).
//!
//! ```text
//! cargo bench --bench queue                                  # full: 1M backlog, ~5 min
//! EVSPOOL_BENCH_SMALL=1 cargo bench --bench queue -- --warm-up-time 1 --measurement-time 3
//! EVSPOOL_BENCH_ONESHOT=0 cargo bench --bench queue -- durable   # criterion groups only
//! ```
//!
//! Under `cargo test --benches` every scenario runs once with tiny sizes.

use evspool_testkit::bench as common;

use bytes::Bytes;
use common::baseline::{AppendLog, SledGroupCommit, SledOneKey, drain_log};
use common::{BATCH, Mode, Scale, TOPIC, median_rate, record, thousands};
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use evspool::{Enqueued, Queue, QueueConfig};
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Set in a re-executed child: which one-shot measurement to run.
const CHILD_ENV: &str = "EVSPOOL_BENCH_CHILD";
const CHILD_DIR_ENV: &str = "EVSPOOL_BENCH_CHILD_DIR";
const CHILD_EVENTS_ENV: &str = "EVSPOOL_BENCH_CHILD_EVENTS";
/// Prefix of the lines a child reports on stdout.
const RESULT_PREFIX: &str = "evspool-bench-result";
/// Producer counts of the durable scenarios.
const PRODUCERS: [usize; 3] = [1, 16, 64];

fn main() {
    if let Ok(which) = std::env::var(CHILD_ENV) {
        child(&which);
        return;
    }
    let mode = Mode::from_args();
    let scale = Scale::new(mode);
    let one_shot_enabled = std::env::var("EVSPOOL_BENCH_ONESHOT").map_or(true, |v| v != "0");
    let one_shot = (mode != Mode::List && one_shot_enabled).then(|| {
        let r = one_shot(&scale);
        println!("{}", one_shot_table(&r, &scale));
        r
    });

    let payloads = Arc::new(common::payloads());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut c = Criterion::default().configure_from_args();
    bench_buffered(&mut c, &scale, &rt, &payloads);
    bench_durable(&mut c, &scale, &rt, &payloads);
    bench_drain(&mut c, &scale, &payloads);
    c.final_summary();

    if mode != Mode::List {
        println!("\n## evspool vs baselines ({})\n", scale.label);
        println!("{}", throughput_table(&scale));
        if let Some(r) = &one_shot {
            println!("{}", one_shot_table(r, &scale));
        }
    }
}

/// The queue configuration: defaults, with `fsync` as given. For sweeps,
/// `EVSPOOL_BENCH_CHUNK_EVENTS`, `EVSPOOL_BENCH_CACHE_MIB`,
/// `EVSPOOL_BENCH_FLUSH_MS` and `EVSPOOL_BENCH_PENDING_MIB` override
/// `chunk_max_events`, `cache_capacity`, `flush_interval` and `max_pending_bytes`.
fn evspool_config(fsync: bool) -> QueueConfig {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let defaults = QueueConfig::default();
    QueueConfig {
        fsync,
        chunk_max_events: env("EVSPOOL_BENCH_CHUNK_EVENTS")
            .map_or(defaults.chunk_max_events, |n| n as usize),
        cache_capacity: env("EVSPOOL_BENCH_CACHE_MIB")
            .map_or(defaults.cache_capacity, bytesize::ByteSize::mib),
        flush_interval: env("EVSPOOL_BENCH_FLUSH_MS")
            .map_or(defaults.flush_interval, Duration::from_millis),
        max_pending_bytes: env("EVSPOOL_BENCH_PENDING_MIB")
            .map_or(defaults.max_pending_bytes, bytesize::ByteSize::mib),
        ..defaults
    }
}

/// Sets the group up for iterations that take 0.1 s or more.
fn long_iterations(g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);
}

fn bench_buffered(c: &mut Criterion, scale: &Scale, rt: &Runtime, payloads: &Arc<Vec<Bytes>>) {
    let n = scale.buffered_events;
    let mut g = c.benchmark_group("buffered_enqueue");
    long_iterations(&mut g);
    g.throughput(Throughput::Elements(n as u64));

    g.bench_function("evspool", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = common::temp_dir();
                let q = Queue::open(dir.path(), evspool_config(false)).expect("open queue");
                let start = Instant::now();
                for i in 0..n {
                    let outcome = q
                        .enqueue(TOPIC, payloads[i % payloads.len()].clone())
                        .expect("enqueue");
                    assert!(matches!(outcome, Enqueued::Accepted(_)), "{outcome:?}");
                }
                let calls = start.elapsed();
                rt.block_on(q.sync()).expect("sync");
                let elapsed = start.elapsed();
                record("buffered_enqueue/evspool_calls_only", n as u64, calls);
                assert_eq!(q.stats().total.events, n as u64, "every event is queued");
                q.close();
                record("buffered_enqueue/evspool", n as u64, elapsed);
                total += elapsed;
            }
            total
        });
    });

    g.bench_function("sled_one_key", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = common::temp_dir();
                let store = SledOneKey::open(dir.path());
                let start = Instant::now();
                for i in 0..n {
                    store.insert(&payloads[i % payloads.len()]);
                }
                let calls = start.elapsed();
                store.flush(false);
                let elapsed = start.elapsed();
                record("buffered_enqueue/sled_one_key_calls_only", n as u64, calls);
                record("buffered_enqueue/sled_one_key", n as u64, elapsed);
                total += elapsed;
            }
            total
        });
    });

    g.bench_function("append_file", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = common::temp_dir();
                let mut log = AppendLog::create(&dir.path().join("log"), None);
                let start = Instant::now();
                for i in 0..n {
                    log.append(&payloads[i % payloads.len()]);
                }
                log.finish();
                let elapsed = start.elapsed();
                record("buffered_enqueue/append_file", n as u64, elapsed);
                total += elapsed;
            }
            total
        });
    });
    g.finish();
}

fn bench_durable(c: &mut Criterion, scale: &Scale, rt: &Runtime, payloads: &Arc<Vec<Bytes>>) {
    let mut g = c.benchmark_group("durable_enqueue");
    long_iterations(&mut g);
    for fsync in [false, true] {
        let suffix = if fsync { "fsync" } else { "nofsync" };
        for producers in PRODUCERS {
            let per = (scale.durable_per_producer)(producers);
            let events = (producers * per) as u64;
            g.throughput(Throughput::Elements(events));

            let name = format!("evspool_{suffix}");
            let id = format!("durable_enqueue/{name}/{producers}");
            g.bench_with_input(BenchmarkId::new(&name, producers), &producers, |b, &p| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = common::temp_dir();
                        let elapsed = durable_evspool(rt, dir.path(), payloads, p, per, fsync);
                        record(&id, events, elapsed);
                        total += elapsed;
                    }
                    total
                });
            });

            let name = format!("sled_group_commit_{suffix}");
            let id = format!("durable_enqueue/{name}/{producers}");
            g.bench_with_input(BenchmarkId::new(&name, producers), &producers, |b, &p| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let dir = common::temp_dir();
                        let elapsed = durable_sled(rt, dir.path(), payloads, p, per, fsync);
                        record(&id, events, elapsed);
                        total += elapsed;
                    }
                    total
                });
            });
        }
    }

    let n = scale.file_records;
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("append_file_fdatasync50", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = common::temp_dir();
                let mut log = AppendLog::create(&dir.path().join("log"), Some(BATCH));
                let start = Instant::now();
                for i in 0..n {
                    log.append(&payloads[i % payloads.len()]);
                }
                log.finish();
                let elapsed = start.elapsed();
                record("durable_enqueue/append_file_fdatasync50", n as u64, elapsed);
                total += elapsed;
            }
            total
        });
    });
    g.finish();
}

/// Opens a queue at `dir`, runs `producers` tasks of `per` durable enqueues
/// each and returns the time until all returned. Opening and closing are untimed.
fn durable_evspool(
    rt: &Runtime,
    dir: &Path,
    payloads: &Arc<Vec<Bytes>>,
    producers: usize,
    per: usize,
    fsync: bool,
) -> Duration {
    let q = Queue::open(dir, evspool_config(fsync)).expect("open queue");
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..producers {
            let (q, payloads) = (q.clone(), payloads.clone());
            tasks.spawn(async move {
                for i in 0..per {
                    let payload = payloads[(t * per + i) % payloads.len()].clone();
                    let outcome = q
                        .enqueue_durable(TOPIC, payload)
                        .await
                        .expect("durable enqueue");
                    assert!(matches!(outcome, Enqueued::Accepted(_)), "{outcome:?}");
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("producer task");
        }
    });
    let elapsed = start.elapsed();
    let events = (producers * per) as u64;
    assert_eq!(q.stats().total.events, events, "every event is queued");
    q.close();
    elapsed
}

/// As [`durable_evspool`], for the sled one-key group-commit baseline.
fn durable_sled(
    rt: &Runtime,
    dir: &Path,
    payloads: &Arc<Vec<Bytes>>,
    producers: usize,
    per: usize,
    fsync: bool,
) -> Duration {
    let store = SledGroupCommit::open(dir, fsync);
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..producers {
            let (h, payloads) = (store.handle(), payloads.clone());
            tasks.spawn(async move {
                for i in 0..per {
                    h.insert_durable(&payloads[(t * per + i) % payloads.len()])
                        .await;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("producer task");
        }
    });
    let elapsed = start.elapsed();
    let events = producers * per;
    assert_eq!(store.len(), events, "every event is stored");
    elapsed
}

/// Fills an evspool store at `dir` with `n` buffered events and closes it.
fn fill_evspool(dir: &Path, n: usize, payloads: &[Bytes]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let q = Queue::open(dir, evspool_config(false)).expect("open queue");
    for i in 0..n {
        let outcome = q
            .enqueue(TOPIC, payloads[i % payloads.len()].clone())
            .expect("enqueue");
        assert!(matches!(outcome, Enqueued::Accepted(_)), "{outcome:?}");
    }
    rt.block_on(q.sync()).expect("sync");
    q.close();
}

fn fill_sled(dir: &Path, n: usize, payloads: &[Bytes]) {
    let store = SledOneKey::open(dir);
    for i in 0..n {
        store.insert(&payloads[i % payloads.len()]);
    }
    store.flush(false);
}

fn fill_log(path: &Path, n: usize, payloads: &[Bytes]) {
    let mut log = AppendLog::create(path, None);
    for i in 0..n {
        log.append(&payloads[i % payloads.len()]);
    }
    log.finish();
}

/// Leases and acks batches of 50 until nothing is ready; returns events seen.
fn drain_evspool(q: &Queue) -> u64 {
    let mut seen = 0;
    while let Some(lease) = q.lease(TOPIC, BATCH).expect("lease") {
        seen += lease.len() as u64;
        black_box(lease.events());
        q.ack(lease).expect("ack");
    }
    seen
}

fn bench_drain(c: &mut Criterion, scale: &Scale, payloads: &Arc<Vec<Bytes>>) {
    let n = scale.backlog;
    let mut g = c.benchmark_group("drain");
    long_iterations(&mut g);
    // Each iteration copies a template store of the backlog (untimed) and drains
    // it (timed): keep it to one warm-up iteration and one iteration per sample.
    g.warm_up_time(Duration::from_millis(1));
    g.measurement_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(n as u64));
    // The templates are built on first use, so a filtered-out bench builds none.
    let templates = common::temp_dir();

    let template = OnceCell::new();
    g.bench_function("evspool_lease_ack", |b| {
        let template = template.get_or_init(|| {
            let t = templates.path().join("evspool");
            fill_evspool(&t, n, payloads);
            t
        });
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = common::temp_dir();
                let store = dir.path().join("q");
                common::copy_dir(template, &store);
                let q = Queue::open(&store, evspool_config(false)).expect("open queue");
                let start = Instant::now();
                let seen = drain_evspool(&q);
                let elapsed = start.elapsed();
                assert_eq!(seen, n as u64, "every event is drained once");
                q.close();
                record("drain/evspool_lease_ack", n as u64, elapsed);
                total += elapsed;
            }
            total
        });
    });

    let template = OnceCell::new();
    g.bench_function("sled_one_key_batch50", |b| {
        let template = template.get_or_init(|| {
            let t = templates.path().join("sled");
            fill_sled(&t, n, payloads);
            t
        });
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = common::temp_dir();
                let path = dir.path().join("s");
                common::copy_dir(template, &path);
                let store = SledOneKey::open(&path);
                let start = Instant::now();
                let seen = store.drain(BATCH);
                let elapsed = start.elapsed();
                assert_eq!(seen, n as u64, "every event is drained once");
                record("drain/sled_one_key_batch50", n as u64, elapsed);
                total += elapsed;
            }
            total
        });
    });

    let template = OnceCell::new();
    g.bench_function("append_file", |b| {
        let template = template.get_or_init(|| {
            let t = templates.path().join("log");
            fill_log(&t, n, payloads);
            t
        });
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = common::temp_dir();
                let log = dir.path().join("log");
                std::fs::copy(template, &log).expect("copy log");
                let start = Instant::now();
                let seen = drain_log(&log, &dir.path().join("cursor"), BATCH);
                let elapsed = start.elapsed();
                assert_eq!(seen, n as u64, "every record is read once");
                record("drain/append_file", n as u64, elapsed);
                total += elapsed;
            }
            total
        });
    });
    g.finish();
}

/// One-shot measurements, each from a fresh child process: what it reported, by key.
type Report = BTreeMap<String, f64>;

struct OneShot {
    evspool_fill: Report,
    evspool_open: Report,
    sled_fill: Report,
    sled_open: Report,
}

/// Runs the child measurements in order: fill a store, then reopen and drain it.
fn one_shot(scale: &Scale) -> OneShot {
    let base = common::temp_dir();
    let ev = base.path().join("evspool");
    let sl = base.path().join("sled");
    let n = scale.backlog;
    eprintln!("one-shot: filling and reopening stores of {n} events in child processes");
    OneShot {
        evspool_fill: run_child("evspool-fill", &ev, n),
        evspool_open: run_child("evspool-open-drain", &ev, n),
        sled_fill: run_child("sled-fill", &sl, n),
        sled_open: run_child("sled-open-drain", &sl, n),
    }
}

fn run_child(which: &str, dir: &Path, events: usize) -> Report {
    let exe = std::env::current_exe().expect("own executable");
    let out = std::process::Command::new(exe)
        .env(CHILD_ENV, which)
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_EVENTS_ENV, events.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("run child");
    assert!(out.status.success(), "child {which} failed: {}", out.status);
    let mut report = Report::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some(RESULT_PREFIX) {
            continue;
        }
        if let (Some(k), Some(v)) = (words.next(), words.next().and_then(|v| v.parse().ok())) {
            report.insert(k.to_string(), v);
        }
    }
    report
}

fn report(key: &str, value: f64) {
    println!("{RESULT_PREFIX} {key} {value}");
}

/// The body of a re-executed child: one measurement, reported on stdout.
fn child(which: &str) {
    let dir = std::env::var_os(CHILD_DIR_ENV).expect("child dir");
    let dir = Path::new(&dir);
    let n: usize = std::env::var(CHILD_EVENTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("child event count");
    let payloads = common::payloads();
    report("start_hwm_kib", common::vm_hwm_kib().unwrap_or(0) as f64);
    match which {
        "evspool-fill" => {
            let start = Instant::now();
            fill_evspool(dir, n, &payloads);
            report("rate", n as f64 / start.elapsed().as_secs_f64());
        }
        "sled-fill" => {
            let start = Instant::now();
            fill_sled(dir, n, &payloads);
            report("rate", n as f64 / start.elapsed().as_secs_f64());
        }
        "evspool-open-drain" => {
            let start = Instant::now();
            let q = Queue::open(dir, evspool_config(false)).expect("reopen queue");
            report("open_s", start.elapsed().as_secs_f64());
            let first = loop {
                if let Some(lease) = q.lease(TOPIC, BATCH).expect("lease") {
                    break lease;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            report("first_lease_s", start.elapsed().as_secs_f64());
            report(
                "first_lease_hwm_kib",
                common::vm_hwm_kib().unwrap_or(0) as f64,
            );
            let drain = Instant::now();
            let mut seen = first.len() as u64;
            q.ack(first).expect("ack");
            seen += drain_evspool(&q);
            report("rate", seen as f64 / drain.elapsed().as_secs_f64());
            assert_eq!(seen, n as u64, "every event is drained once");
            q.close();
        }
        "sled-open-drain" => {
            let start = Instant::now();
            let store = SledOneKey::open(dir);
            report("open_s", start.elapsed().as_secs_f64());
            let first = store.lease(0, BATCH);
            assert!(!first.is_empty(), "the backlog is there");
            report("first_lease_s", start.elapsed().as_secs_f64());
            report(
                "first_lease_hwm_kib",
                common::vm_hwm_kib().unwrap_or(0) as f64,
            );
            let drain = Instant::now();
            store.ack(&first);
            let seen = first.len() as u64 + store.drain(BATCH);
            report("rate", seen as f64 / drain.elapsed().as_secs_f64());
            assert_eq!(seen, n as u64, "every event is drained once");
        }
        "evspool-durable" | "sled-durable" => {
            // For profiling the durable path on its own: `producers` tasks share `n` events.
            let producers: usize = std::env::var("EVSPOOL_BENCH_CHILD_PRODUCERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(64);
            let fsync = std::env::var("EVSPOOL_BENCH_CHILD_FSYNC").is_ok_and(|v| v == "1");
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let payloads = Arc::new(payloads);
            let per = n / producers;
            let elapsed = if which == "evspool-durable" {
                durable_evspool(&rt, dir, &payloads, producers, per, fsync)
            } else {
                durable_sled(&rt, dir, &payloads, producers, per, fsync)
            };
            report("rate", (producers * per) as f64 / elapsed.as_secs_f64());
        }
        other => panic!("unknown child measurement {other:?}"),
    }
    report("hwm_kib", common::vm_hwm_kib().unwrap_or(0) as f64);
    let payload_bytes = (n * common::PAYLOAD_BYTES) as f64;
    report(
        "write_amplification",
        common::bytes_written().unwrap_or(0) as f64 / payload_bytes,
    );
}

fn fmt_rate(r: Option<f64>) -> String {
    r.map_or_else(|| "–".to_string(), thousands)
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".to_string(),
    }
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "–",
    }
}

/// The criterion scenarios: evspool, sled one key per event, append file, target.
fn throughput_table(scale: &Scale) -> String {
    struct Row {
        scenario: String,
        evspool: String,
        sled: String,
        file: String,
        target: &'static str,
        check: fn(f64, f64) -> bool,
    }
    let mut rows = vec![Row {
        scenario: format!(
            "buffered enqueue, 1 producer, {}k + sync",
            scale.buffered_events / 1000
        ),
        evspool: "buffered_enqueue/evspool".into(),
        sled: "buffered_enqueue/sled_one_key".into(),
        file: "buffered_enqueue/append_file".into(),
        target: "≥ 1,000,000 ev/s and ≥ 5× sled",
        check: |e, s| e >= 1_000_000.0 && e >= 5.0 * s,
    }];
    rows.push(Row {
        scenario: "  of which the enqueue calls (commit and flush excluded)".into(),
        evspool: "buffered_enqueue/evspool_calls_only".into(),
        sled: "buffered_enqueue/sled_one_key_calls_only".into(),
        file: String::new(),
        target: "",
        check: |_, _| true,
    });
    for fsync in ["nofsync", "fsync"] {
        for p in PRODUCERS {
            rows.push(Row {
                scenario: format!(
                    "durable enqueue, {p} producer{}, fsync={}",
                    if p == 1 { "" } else { "s" },
                    fsync == "fsync"
                ),
                evspool: format!("durable_enqueue/evspool_{fsync}/{p}"),
                sled: format!("durable_enqueue/sled_group_commit_{fsync}/{p}"),
                file: "durable_enqueue/append_file_fdatasync50".into(),
                target: if p == 64 { "≥ 4× sled" } else { "" },
                check: if p == 64 {
                    |e, s| e >= 4.0 * s
                } else {
                    |_, _| true
                },
            });
        }
    }
    rows.push(Row {
        scenario: format!("drain: lease 50 + ack, {}k backlog", scale.backlog / 1000),
        evspool: "drain/evspool_lease_ack".into(),
        sled: "drain/sled_one_key_batch50".into(),
        file: "drain/append_file".into(),
        target: "≥ 400,000 ev/s",
        check: |e, _| e >= 400_000.0,
    });

    let mut out = String::from(
        "| scenario | evspool ev/s | sled one-key ev/s | evspool/sled | append file ev/s | evspool/file | target | |\n\
         |---|---:|---:|---:|---:|---:|---|---|\n",
    );
    for r in rows {
        let (e, s, f) = (
            median_rate(&r.evspool),
            median_rate(&r.sled),
            median_rate(&r.file),
        );
        let ok = match (e, s) {
            (Some(e), Some(s)) if scale.judged && !r.target.is_empty() => Some((r.check)(e, s)),
            _ => None,
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            fmt_rate(e),
            fmt_rate(s),
            fmt_ratio(e, s),
            fmt_rate(f),
            fmt_ratio(e, f),
            r.target,
            if r.target.is_empty() { "" } else { verdict(ok) },
        ));
    }
    out.push_str(
        "\nBaselines: sled one-key = one sled key per event, same sled settings as evspool \
         (buffered: insert + one flush; durable: group commit, one flush (+ fdatasync) per round \
         serving every waiting producer; drain: scan 50 + remove in one batch). Append file = \
         one write per record (buffered: one fdatasync at the end; durable: single writer, \
         fdatasync every 50 records; drain: read + offset write per 50). Figures are medians \
         of every timed iteration.\n",
    );
    out
}

/// RSS, open time and drain-after-reopen from the child processes.
fn one_shot_table(r: &OneShot, scale: &Scale) -> String {
    let mib = |rep: &Report, k: &str| rep.get(k).map(|v| v / 1024.0);
    let get = |rep: &Report, k: &str| rep.get(k).copied();
    let fmt_mib = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.1} MiB"));
    let fmt_x = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{v:.1}×"));
    let fmt_s = |v: Option<f64>| v.map_or_else(|| "–".into(), |v| format!("{:.3} s", v));
    let n = scale.backlog;
    let rss_fill = mib(&r.evspool_fill, "hwm_kib");
    let rss_open = mib(&r.evspool_open, "hwm_kib");
    let first = get(&r.evspool_open, "first_lease_s");
    let rows = [
        (
            format!("fill {n} events (buffered, one producer) ev/s"),
            fmt_rate(get(&r.evspool_fill, "rate")),
            fmt_rate(get(&r.sled_fill, "rate")),
            String::new(),
            None,
        ),
        (
            "  bytes written / payload bytes while filling".into(),
            fmt_x(get(&r.evspool_fill, "write_amplification")),
            fmt_x(get(&r.sled_fill, "write_amplification")),
            String::new(),
            None,
        ),
        (
            format!("peak RSS, filling to {n} queued"),
            fmt_mib(rss_fill),
            fmt_mib(mib(&r.sled_fill, "hwm_kib")),
            "≤ 128 MiB".into(),
            rss_fill.map(|v| v <= 128.0),
        ),
        (
            format!("peak RSS, reopen + drain of {n} queued"),
            fmt_mib(rss_open),
            fmt_mib(mib(&r.sled_open, "hwm_kib")),
            "≤ 128 MiB".into(),
            rss_open.map(|v| v <= 128.0),
        ),
        (
            "peak RSS at first lease after reopen".into(),
            fmt_mib(mib(&r.evspool_open, "first_lease_hwm_kib")),
            fmt_mib(mib(&r.sled_open, "first_lease_hwm_kib")),
            String::new(),
            None,
        ),
        (
            format!("open → first lease, {n} queued"),
            fmt_s(first),
            fmt_s(get(&r.sled_open, "first_lease_s")),
            "≤ 0.5 s".into(),
            first.map(|v| v <= 0.5),
        ),
        (
            "  of which `open` returned".into(),
            fmt_s(get(&r.evspool_open, "open_s")),
            fmt_s(get(&r.sled_open, "open_s")),
            String::new(),
            None,
        ),
        (
            format!("drain after reopen, {n} events, ev/s"),
            fmt_rate(get(&r.evspool_open, "rate")),
            fmt_rate(get(&r.sled_open, "rate")),
            "≥ 400,000 ev/s".into(),
            get(&r.evspool_open, "rate").map(|v| v >= 400_000.0),
        ),
        (
            "  bytes written / payload bytes while reopening and draining".into(),
            fmt_x(get(&r.evspool_open, "write_amplification")),
            fmt_x(get(&r.sled_open, "write_amplification")),
            String::new(),
            None,
        ),
    ];
    let mut out = format!(
        "\n### One-shot, fresh process each ({})\n\n\
         | measurement | evspool | sled one-key | target | |\n|---|---:|---:|---|---|\n",
        scale.label
    );
    for (what, e, s, target, ok) in rows {
        let v = match (target.is_empty(), scale.judged) {
            (true, _) => "",
            (false, true) => verdict(ok),
            (false, false) => verdict(None),
        };
        out.push_str(&format!("| {what} | {e} | {s} | {target} | {v} |\n"));
    }
    out.push_str(&format!(
        "\nA child's RSS before any work: {:.1} MiB. The reopen runs right after the fill, so the \
         page cache is warm.\n",
        r.evspool_open.get("start_hwm_kib").copied().unwrap_or(0.0) / 1024.0
    ));
    out
}
