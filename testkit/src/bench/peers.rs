//! evspool beside the crates a user would pick instead, driven the way their
//! documentation suggests, plus the same-run baselines of [`super::baseline`].
//! Shared by `benches/peers.rs` (criterion) and `examples/perf_report.rs`
//! (one markdown table).
//!
//! Three operations, each on 300-byte JSON events, each iteration in a fresh
//! directory (opening, filling and closing are never timed):
//!
//! - **enqueue**: one producer appends N events, then makes them durable once.
//! - **durable**: 16 producers; each call returns only once its event survives
//!   `kill -9` (or power loss, where the row says so).
//! - **drain**: read 50 + remove those 50, until a backlog is empty; removals
//!   are not synced by anyone.
//!
//! What each peer syncs (read from their sources, versions in Cargo.toml):
//! - yaque 0.6: `send` is one `write` per event through a `BufWriter` flushed
//!   every send; yaque never calls `fsync`, so a send survives `kill -9`, never
//!   power loss. A receiver's `commit` saves the read position every 250 reads
//!   or 350 ms, unsynced: a crash replays up to 250 events.
//! - queue-file 2.0 (Tape's `QueueFile`): by default `add` and `remove_n`
//!   `fdatasync` twice (data, then the header slot); `set_sync_writes(false)`
//!   makes them plain `pwrite`s (survive `kill -9`). Not thread-safe: the
//!   16 producers share it behind a `Mutex`, as its docs say.
//! - SQLite (rusqlite, bundled) in WAL mode: `synchronous=NORMAL` commits
//!   without `fsync` (survives `kill -9`), `FULL` `fsync`s the WAL per commit
//!   (survives power loss). One connection behind a `Mutex` for 16 producers.
//! - evspool: `enqueue` is memory only until the next commit (100 ms);
//!   `enqueue_durable` returns once the producer's entry is written to the
//!   topic's body file (one `pwrite`, shared by the producers that arrive
//!   meanwhile: survives `kill -9`) and, with `fsync = true`, after a shared
//!   `fdatasync` (survives power loss).

use super::baseline::{AppendLog, SledGroupCommit, SledOneKey, drain_log};
use super::{BATCH, TOPIC};
use bytes::Bytes;
use evspool::{Enqueued, Queue, QueueConfig};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many events each operation moves per iteration.
#[derive(Clone, Debug)]
pub struct Sizes {
    /// Printed in the report.
    pub label: &'static str,
    /// Events of one enqueue iteration (one producer).
    pub enqueue: usize,
    /// Concurrent producers of the durable rows.
    pub producers: usize,
    /// Durable events per producer for stores that group commits.
    pub durable_per_producer: usize,
    /// Durable events per producer for stores that `fsync` every event.
    pub fsync_per_producer: usize,
    /// Records of the single-writer rows that sync every 50.
    pub batched_records: usize,
    /// Backlog drained per drain iteration.
    pub backlog: usize,
    /// Timed iterations per row (the table shows the median).
    pub iterations: usize,
}

impl Sizes {
    /// `cargo test --benches`: every row once, tiny, figures meaningless.
    pub fn test() -> Sizes {
        Sizes {
            label: "test (tiny sizes, figures meaningless)",
            enqueue: 1_000,
            producers: 4,
            durable_per_producer: 5,
            fsync_per_producer: 2,
            batched_records: 200,
            backlog: 1_000,
            iterations: 1,
        }
    }

    /// `--quick`: about a minute.
    pub fn quick() -> Sizes {
        Sizes {
            label: "quick: 100k backlog, 3 iterations",
            enqueue: 100_000,
            producers: 16,
            // 16,000 events: 100 each (1,600) took 2-4 ms, so the first file
            // and thread wake-ups decided the ratio.
            durable_per_producer: 1_000,
            fsync_per_producer: 5,
            batched_records: 5_000,
            backlog: 100_000,
            iterations: 3,
        }
    }

    /// The default: 1M backlog.
    pub fn full() -> Sizes {
        Sizes {
            label: "full: 1M backlog, 5 iterations (3 for drains)",
            enqueue: 100_000,
            producers: 16,
            durable_per_producer: 2_000,
            fsync_per_producer: 10,
            batched_records: 20_000,
            backlog: 1_000_000,
            iterations: 5,
        }
    }
}

/// Which operation a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// One producer, buffered appends, one sync at the end.
    Enqueue,
    /// 16 producers, each call durable.
    Durable,
    /// Read 50 + remove 50 until empty.
    Drain,
}

/// What survives once the timed call returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Safe {
    /// Survives `kill -9`, not power loss.
    Kill9,
    /// Survives power loss.
    Power,
    /// Not durable per call (one sync at the end of the iteration).
    AtEnd,
}

/// Who a row is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// evspool itself.
    Evspool,
    /// A crate a user would pick instead.
    Peer,
    /// sled, one key per event: the naive design on evspool's own engine.
    SledBaseline,
    /// An append-only file: the floor.
    FileFloor,
}

/// One row of the table.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    /// Stable id (criterion bench name, registry key).
    pub id: &'static str,
    /// The operation.
    pub op: Op,
    /// Who.
    pub kind: Kind,
    /// Shown in the table.
    pub label: &'static str,
    /// What survives when the call returns.
    pub safe: Safe,
}

const fn case(id: &'static str, op: Op, kind: Kind, label: &'static str, safe: Safe) -> Case {
    Case {
        id,
        op,
        kind,
        label,
        safe,
    }
}

/// Every row, in table order.
pub const CASES: &[Case] = &[
    case(
        "enqueue/evspool",
        Op::Enqueue,
        Kind::Evspool,
        "evspool `enqueue` ×N, then `sync()`",
        Safe::AtEnd,
    ),
    case(
        "enqueue/yaque",
        Op::Enqueue,
        Kind::Peer,
        "yaque `try_send` (one `write` each, never `fsync`)",
        Safe::Kill9,
    ),
    case(
        "enqueue/queue_file",
        Op::Enqueue,
        Kind::Peer,
        "queue-file `add`, `sync_writes` off, `sync_all` at the end",
        Safe::Kill9,
    ),
    case(
        "enqueue/sqlite_txn50_normal",
        Op::Enqueue,
        Kind::Peer,
        "SQLite WAL, INSERT in transactions of 50, `synchronous=NORMAL`",
        Safe::Kill9,
    ),
    case(
        "enqueue/sled_one_key",
        Op::Enqueue,
        Kind::SledBaseline,
        "baseline: sled, one key per event, one `flush` at the end",
        Safe::AtEnd,
    ),
    case(
        "enqueue/append_file",
        Op::Enqueue,
        Kind::FileFloor,
        "floor: append-only file, one `write` each, one `fdatasync` at the end",
        Safe::Kill9,
    ),
    case(
        "durable/evspool",
        Op::Durable,
        Kind::Evspool,
        "evspool `enqueue_durable`, `fsync = false`",
        Safe::Kill9,
    ),
    case(
        "durable/evspool_fsync",
        Op::Durable,
        Kind::Evspool,
        "evspool `enqueue_durable`, `fsync = true`",
        Safe::Power,
    ),
    case(
        "durable/yaque",
        Op::Durable,
        Kind::Peer,
        "yaque `try_send` behind a `Mutex`",
        Safe::Kill9,
    ),
    case(
        "durable/queue_file_sync",
        Op::Durable,
        Kind::Peer,
        "queue-file `add` (default: 2 `fdatasync` each) behind a `Mutex`",
        Safe::Power,
    ),
    case(
        "durable/sqlite_autocommit_normal",
        Op::Durable,
        Kind::Peer,
        "SQLite WAL, one INSERT per commit, `synchronous=NORMAL`",
        Safe::Kill9,
    ),
    case(
        "durable/sqlite_autocommit_full",
        Op::Durable,
        Kind::Peer,
        "SQLite WAL, one INSERT per commit, `synchronous=FULL`",
        Safe::Power,
    ),
    case(
        "durable/sqlite_txn50_full",
        Op::Durable,
        Kind::Peer,
        "SQLite WAL, 1 producer batching 50 per transaction, `FULL`",
        Safe::Power,
    ),
    case(
        "durable/sled_group_commit",
        Op::Durable,
        Kind::SledBaseline,
        "baseline: sled one key per event + group-commit `flush`",
        Safe::Kill9,
    ),
    case(
        "durable/append_file_fdatasync50",
        Op::Durable,
        Kind::FileFloor,
        "floor: append-only file, 1 writer, `fdatasync` every 50",
        Safe::Power,
    ),
    case(
        "drain/evspool",
        Op::Drain,
        Kind::Evspool,
        "evspool `lease(50)` + `ack`",
        Safe::AtEnd,
    ),
    case(
        "drain/yaque",
        Op::Drain,
        Kind::Peer,
        "yaque `recv_batch(50)` + `commit`",
        Safe::AtEnd,
    ),
    case(
        "drain/queue_file",
        Op::Drain,
        Kind::Peer,
        "queue-file `iter().take(50)` + `remove_n(50)`, `sync_writes` off",
        Safe::AtEnd,
    ),
    case(
        "drain/sqlite",
        Op::Drain,
        Kind::Peer,
        "SQLite WAL, SELECT 50 + DELETE in one transaction, `NORMAL`",
        Safe::AtEnd,
    ),
    case(
        "drain/sled_one_key",
        Op::Drain,
        Kind::SledBaseline,
        "baseline: sled scan 50 + remove batch",
        Safe::AtEnd,
    ),
    case(
        "drain/append_file",
        Op::Drain,
        Kind::FileFloor,
        "floor: read the file, write the offset every 50",
        Safe::AtEnd,
    ),
];

/// Looks a case up by id.
pub fn case_by_id(id: &str) -> Option<&'static Case> {
    CASES.iter().find(|c| c.id == id)
}

/// What every iteration needs.
pub struct Ctx {
    /// The sizes.
    pub sizes: Sizes,
    /// The payloads, cycled.
    pub payloads: Arc<Vec<Bytes>>,
    /// For evspool's async calls and yaque's receiver.
    pub rt: tokio::runtime::Runtime,
}

impl Ctx {
    /// A context of `sizes`.
    pub fn new(sizes: Sizes) -> Ctx {
        Ctx::on(sizes, tokio::runtime::Builder::new_multi_thread())
    }

    /// A context of `sizes` whose runtime has `workers` threads (the
    /// durable goals are measured at 1, the default and 4: their result must
    /// not depend on the scheduler).
    pub fn with_workers(sizes: Sizes, workers: usize) -> Ctx {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        Ctx::on(sizes, b)
    }

    fn on(sizes: Sizes, mut builder: tokio::runtime::Builder) -> Ctx {
        Ctx {
            sizes,
            payloads: Arc::new(super::payloads()),
            rt: builder.enable_all().build().expect("tokio runtime"),
        }
    }

    fn payload(&self, i: usize) -> &Bytes {
        &self.payloads[i % self.payloads.len()]
    }

    /// Events one iteration of `case` moves.
    pub fn events(&self, case: &Case) -> usize {
        let s = &self.sizes;
        match case.id {
            "durable/sqlite_txn50_full" | "durable/append_file_fdatasync50" => s.batched_records,
            id if fsyncs_every_event(id) => s.producers * s.fsync_per_producer.max(1),
            _ => match case.op {
                Op::Enqueue => s.enqueue,
                Op::Durable => s.producers * s.durable_per_producer,
                Op::Drain => s.backlog,
            },
        }
    }
}

/// Rows that `fsync` every event, unshared: a few hundred events per second here.
fn fsyncs_every_event(id: &str) -> bool {
    matches!(
        id,
        "durable/queue_file_sync" | "durable/sqlite_autocommit_full"
    )
}

/// The queue configuration of every evspool row: the defaults, a ceiling that
/// the backlog fits under, and `fsync` as given. For experiments,
/// `EVSPOOL_BENCH_CACHE_MIB` overrides sled's `cache_capacity`.
pub fn evspool_config(fsync: bool) -> QueueConfig {
    let mut cfg = QueueConfig {
        fsync,
        ..QueueConfig::default()
    };
    if let Some(mib) = std::env::var("EVSPOOL_BENCH_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        cfg.cache_capacity = bytesize::ByteSize::mib(mib);
    }
    cfg.ceiling.max_bytes = bytesize::ByteSize::gib(64);
    cfg.ceiling.max_events = 100_000_000;
    cfg
}

fn sqlite_open(path: &Path, synchronous: &str) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path.join("q.sqlite")).expect("open sqlite");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("journal_mode=WAL");
    conn.pragma_update(None, "synchronous", synchronous)
        .expect("synchronous");
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)",
    )
    .expect("create table");
    conn
}

fn sqlite_insert_txn(conn: &mut rusqlite::Connection, payloads: &[&Bytes]) {
    let tx = conn.transaction().expect("begin");
    {
        let mut st = tx
            .prepare_cached("INSERT INTO q (payload) VALUES (?1)")
            .expect("prepare insert");
        for p in payloads {
            st.execute([p.as_ref()]).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

fn queue_file_open(dir: &Path, sync_writes: bool) -> queue_file::QueueFile {
    let mut qf = queue_file::QueueFile::open(dir.join("q.qf")).expect("open queue-file");
    qf.set_sync_writes(sync_writes);
    qf
}

/// Runs one timed iteration of an enqueue or durable `case` in the fresh directory `dir`.
///
/// # Panics
///
/// On a drain case, or if any store fails.
pub fn run_write(ctx: &Ctx, case: &Case, dir: &Path) -> Duration {
    let n = ctx.events(case);
    let s = &ctx.sizes;
    match case.id {
        "enqueue/evspool" => {
            let q = Queue::open(dir, evspool_config(false)).expect("open queue");
            let start = Instant::now();
            for i in 0..n {
                let o = q.enqueue(TOPIC, ctx.payload(i).clone()).expect("enqueue");
                assert!(matches!(o, Enqueued::Accepted(_)), "{o:?}");
            }
            ctx.rt.block_on(q.sync()).expect("sync");
            let t = start.elapsed();
            assert_eq!(q.stats().total.events, n as u64, "every event is queued");
            q.close();
            t
        }
        "enqueue/yaque" => {
            let mut tx = yaque::Sender::open(dir.join("y")).expect("open yaque");
            let start = Instant::now();
            for i in 0..n {
                tx.try_send(ctx.payload(i).as_ref()).expect("yaque send");
            }
            let t = start.elapsed();
            drop(tx);
            t
        }
        "enqueue/queue_file" => {
            let mut qf = queue_file_open(dir, false);
            let start = Instant::now();
            for i in 0..n {
                qf.add(ctx.payload(i)).expect("queue-file add");
            }
            qf.sync_all().expect("queue-file sync_all");
            let t = start.elapsed();
            assert_eq!(qf.size(), n);
            t
        }
        "enqueue/sqlite_txn50_normal" | "durable/sqlite_txn50_full" => {
            let sync = if case.op == Op::Enqueue {
                "NORMAL"
            } else {
                "FULL"
            };
            let mut conn = sqlite_open(dir, sync);
            let start = Instant::now();
            let mut i = 0;
            while i < n {
                let batch: Vec<&Bytes> = (i..(i + BATCH).min(n)).map(|j| ctx.payload(j)).collect();
                sqlite_insert_txn(&mut conn, &batch);
                i += batch.len();
            }
            let t = start.elapsed();
            let count: i64 = conn
                .query_row("SELECT count(*) FROM q", [], |r| r.get(0))
                .expect("count");
            assert_eq!(count, n as i64);
            t
        }
        "enqueue/sled_one_key" => {
            let store = SledOneKey::open(dir);
            let start = Instant::now();
            for i in 0..n {
                store.insert(ctx.payload(i));
            }
            store.flush(false);
            start.elapsed()
        }
        "enqueue/append_file" => {
            let mut log = AppendLog::create(&dir.join("log"), None);
            let start = Instant::now();
            for i in 0..n {
                log.append(ctx.payload(i));
            }
            log.finish();
            start.elapsed()
        }
        "durable/evspool" | "durable/evspool_fsync" => {
            let fsync = case.safe == Safe::Power;
            let per = n / s.producers;
            let q = Queue::open(dir, evspool_config(fsync)).expect("open queue");
            let start = Instant::now();
            ctx.rt.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for t in 0..s.producers {
                    let (q, payloads) = (q.clone(), ctx.payloads.clone());
                    tasks.spawn(async move {
                        for i in 0..per {
                            let p = payloads[(t * per + i) % payloads.len()].clone();
                            let o = q.enqueue_durable(TOPIC, p).await.expect("durable enqueue");
                            assert!(matches!(o, Enqueued::Accepted(_)), "{o:?}");
                        }
                    });
                }
                while let Some(done) = tasks.join_next().await {
                    done.expect("producer task");
                }
            });
            let t = start.elapsed();
            assert_eq!(q.stats().total.events, (per * s.producers) as u64);
            q.close();
            t
        }
        "durable/yaque" => {
            let tx = Mutex::new(yaque::Sender::open(dir.join("y")).expect("open yaque"));
            threads(s.producers, n / s.producers, |i| {
                lock(&tx)
                    .try_send(ctx.payload(i).as_ref())
                    .expect("yaque send");
            })
        }
        "durable/queue_file_sync" => {
            let qf = Mutex::new(queue_file_open(dir, true));
            let t = threads(s.producers, n / s.producers, |i| {
                lock(&qf).add(ctx.payload(i)).expect("queue-file add");
            });
            assert_eq!(lock(&qf).size(), n / s.producers * s.producers);
            t
        }
        "durable/sqlite_autocommit_normal" | "durable/sqlite_autocommit_full" => {
            let sync = if case.safe == Safe::Power {
                "FULL"
            } else {
                "NORMAL"
            };
            let conn = Mutex::new(sqlite_open(dir, sync));
            threads(s.producers, n / s.producers, |i| {
                lock(&conn)
                    .prepare_cached("INSERT INTO q (payload) VALUES (?1)")
                    .expect("prepare insert")
                    .execute([ctx.payload(i).as_ref()])
                    .expect("insert");
            })
        }
        "durable/sled_group_commit" => {
            let per = n / s.producers;
            let store = SledGroupCommit::open(dir, false);
            let start = Instant::now();
            ctx.rt.block_on(async {
                let mut tasks = tokio::task::JoinSet::new();
                for t in 0..s.producers {
                    let (h, payloads) = (store.handle(), ctx.payloads.clone());
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
            let t = start.elapsed();
            assert_eq!(store.len(), per * s.producers);
            t
        }
        "durable/append_file_fdatasync50" => {
            let mut log = AppendLog::create(&dir.join("log"), Some(BATCH));
            let start = Instant::now();
            for i in 0..n {
                log.append(ctx.payload(i));
            }
            log.finish();
            start.elapsed()
        }
        other => panic!("not a write case: {other}"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `producers` OS threads each call `f(event index)` `per` times; returns the wall time.
fn threads(producers: usize, per: usize, f: impl Fn(usize) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..producers {
            let f = &f;
            scope.spawn(move || {
                for i in 0..per {
                    f(t * per + i);
                }
            });
        }
    });
    start.elapsed()
}

/// Fills `dir` with the backlog of drain `case` (untimed).
///
/// # Panics
///
/// On a write case, or if the store fails.
pub fn fill_backlog(ctx: &Ctx, case: &Case, dir: &Path) {
    let n = ctx.sizes.backlog;
    const CHUNK: usize = 1_000;
    match case.id {
        "drain/evspool" => {
            let q = Queue::open(dir, evspool_config(false)).expect("open queue");
            for i in 0..n {
                let o = q.enqueue(TOPIC, ctx.payload(i).clone()).expect("enqueue");
                assert!(matches!(o, Enqueued::Accepted(_)), "{o:?}");
            }
            ctx.rt.block_on(q.sync()).expect("sync");
            q.close();
        }
        "drain/yaque" => {
            let mut tx = yaque::Sender::open(dir.join("y")).expect("open yaque");
            for start in (0..n).step_by(CHUNK) {
                let batch: Vec<&[u8]> = (start..(start + CHUNK).min(n))
                    .map(|i| ctx.payload(i).as_ref())
                    .collect();
                tx.try_send_batch(batch).expect("yaque send batch");
            }
        }
        "drain/queue_file" => {
            let mut qf = queue_file_open(dir, false);
            for start in (0..n).step_by(CHUNK) {
                qf.add_n((start..(start + CHUNK).min(n)).map(|i| ctx.payload(i)))
                    .expect("queue-file add_n");
            }
            qf.sync_all().expect("sync_all");
        }
        "drain/sqlite" => {
            let mut conn = sqlite_open(dir, "NORMAL");
            for start in (0..n).step_by(CHUNK) {
                let batch: Vec<&Bytes> = (start..(start + CHUNK).min(n))
                    .map(|i| ctx.payload(i))
                    .collect();
                sqlite_insert_txn(&mut conn, &batch);
            }
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .expect("checkpoint");
        }
        "drain/sled_one_key" => {
            let store = SledOneKey::open(dir);
            for i in 0..n {
                store.insert(ctx.payload(i));
            }
            store.flush(false);
        }
        "drain/append_file" => {
            let mut log = AppendLog::create(&dir.join("log"), None);
            for i in 0..n {
                log.append(ctx.payload(i));
            }
            log.finish();
        }
        other => panic!("not a drain case: {other}"),
    }
}

/// Drains the backlog [`fill_backlog`] left in `dir`; returns the time.
///
/// # Panics
///
/// If not exactly the backlog is read.
pub fn run_drain(ctx: &Ctx, case: &Case, dir: &Path) -> Duration {
    let n = ctx.sizes.backlog as u64;
    let (seen, t) = match case.id {
        "drain/evspool" => {
            let q = Queue::open(dir, evspool_config(false)).expect("open queue");
            let start = Instant::now();
            let mut seen = 0u64;
            while let Some(lease) = q.lease(TOPIC, BATCH).expect("lease") {
                seen += lease.len() as u64;
                black_box(lease.events());
                q.ack(lease).expect("ack");
            }
            let t = start.elapsed();
            q.close();
            (seen, t)
        }
        "drain/yaque" => {
            let mut rx = yaque::Receiver::open(dir.join("y")).expect("open yaque receiver");
            let start = Instant::now();
            let mut seen = 0u64;
            ctx.rt.block_on(async {
                while seen < n {
                    let want = (n - seen).min(BATCH as u64) as usize;
                    let batch = rx.recv_batch(want).await.expect("yaque recv");
                    seen += batch.len() as u64;
                    black_box(batch.iter().map(Vec::len).sum::<usize>());
                    batch.commit().expect("yaque commit");
                }
            });
            (seen, start.elapsed())
        }
        "drain/queue_file" => {
            let mut qf = queue_file_open(dir, false);
            let start = Instant::now();
            let mut seen = 0u64;
            while !qf.is_empty() {
                let batch: Vec<Vec<u8>> = qf.iter().take(BATCH).collect();
                seen += batch.len() as u64;
                black_box(&batch);
                qf.remove_n(batch.len()).expect("queue-file remove_n");
            }
            (seen, start.elapsed())
        }
        "drain/sqlite" => {
            let mut conn = sqlite_open(dir, "NORMAL");
            let start = Instant::now();
            let mut seen = 0u64;
            loop {
                let tx = conn.transaction().expect("begin");
                let (count, last) = {
                    let mut sel = tx
                        .prepare_cached("SELECT id, payload FROM q ORDER BY id LIMIT ?1")
                        .expect("prepare select");
                    let mut rows = sel.query([BATCH as i64]).expect("select");
                    let (mut count, mut last) = (0u64, 0i64);
                    while let Some(row) = rows.next().expect("row") {
                        last = row.get(0).expect("id");
                        black_box(row.get_ref(1).expect("payload"));
                        count += 1;
                    }
                    (count, last)
                };
                if count == 0 {
                    break;
                }
                tx.prepare_cached("DELETE FROM q WHERE id <= ?1")
                    .expect("prepare delete")
                    .execute([last])
                    .expect("delete");
                tx.commit().expect("commit");
                seen += count;
            }
            (seen, start.elapsed())
        }
        "drain/sled_one_key" => {
            let store = SledOneKey::open(dir);
            let start = Instant::now();
            let seen = store.drain(BATCH);
            (seen, start.elapsed())
        }
        "drain/append_file" => {
            let start = Instant::now();
            let seen = drain_log(&dir.join("log"), &dir.join("cursor"), BATCH);
            (seen, start.elapsed())
        }
        other => panic!("not a drain case: {other}"),
    };
    assert_eq!(seen, n, "{}: every event is drained once", case.id);
    t
}

/// Events per second of every measured iteration, by case id.
pub type Rates = BTreeMap<&'static str, Vec<f64>>;

/// Median of `v`.
pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Measures every case whose id contains one of `filters` (all if empty), in
/// fresh directories under [`super::temp_dir`]. Iterations go round-robin —
/// one of every row of an operation, then the next round — so a burst of load
/// on a shared machine hits every row alike instead of one system. Rows that
/// `fsync` every event and drains get at most 3 rounds. Progress goes to stderr.
pub fn measure_all(ctx: &Ctx, filters: &[String]) -> Rates {
    let mut rates = Rates::new();
    let selected = |op: Op| -> Vec<&'static Case> {
        CASES
            .iter()
            .filter(|c| c.op == op)
            .filter(|c| {
                filters.is_empty()
                    || filters.iter().any(|f| match f.strip_suffix('$') {
                        // `id$` selects that row alone.
                        Some(exact) => c.id == exact,
                        None => c.id.contains(f.as_str()),
                    })
            })
            .collect()
    };
    for op in [Op::Enqueue, Op::Durable, Op::Drain] {
        let cases = selected(op);
        if cases.is_empty() {
            continue;
        }
        // Drain templates are filled once (untimed) and copied per iteration.
        let templates: Vec<Option<tempfile::TempDir>> = cases
            .iter()
            .map(|c| {
                (op == Op::Drain).then(|| {
                    let t = super::temp_dir();
                    fill_backlog(ctx, c, t.path());
                    t
                })
            })
            .collect();
        for round in 0..ctx.sizes.iterations {
            for (case, template) in cases.iter().zip(&templates) {
                let capped = op == Op::Drain || fsyncs_every_event(case.id);
                if capped && round >= 3 {
                    continue;
                }
                let n = ctx.events(case) as f64;
                let dir = super::temp_dir();
                let t = match template {
                    Some(template) => {
                        let path = dir.path().join("s");
                        super::copy_dir(template.path(), &path);
                        run_drain(ctx, case, &path)
                    }
                    None => run_write(ctx, case, dir.path()),
                };
                rates
                    .entry(case.id)
                    .or_default()
                    .push(n / t.as_secs_f64().max(1e-9));
            }
        }
        for case in &cases {
            let v = &rates[case.id];
            eprintln!(
                "  {:<36} {:>12} ev/s (median of {}; min {}, max {})",
                case.id,
                super::thousands(median(v).unwrap_or(0.0)),
                v.len(),
                super::thousands(v.iter().copied().fold(f64::INFINITY, f64::min)),
                super::thousands(v.iter().copied().fold(0.0, f64::max)),
            );
        }
    }
    rates
}

fn safe_text(s: Safe) -> &'static str {
    match s {
        Safe::Kill9 => "kill -9",
        Safe::Power => "power loss",
        Safe::AtEnd => "–",
    }
}

/// The markdown table of `rates`: every figure with its ratio to the same-run
/// sled baseline and append-file floor, and evspool's lead over it.
pub fn table(ctx: &Ctx, rates: &Rates, judged: bool) -> String {
    let med = |id: &str| rates.get(id).and_then(|v| median(v));
    let s = &ctx.sizes;
    let mut out = String::from(
        "| operation | system | survives, per call | ev/s | × sled one-key | × append file | evspool ÷ this |\n\
         |---|---|---|---:|---:|---:|---:|\n",
    );
    let mut verdicts = Vec::new();
    for op in [Op::Enqueue, Op::Durable, Op::Drain] {
        let cases: Vec<&Case> = CASES
            .iter()
            .filter(|c| c.op == op && rates.contains_key(c.id))
            .collect();
        let find = |kind: Kind| {
            cases
                .iter()
                .find(|c| c.kind == kind)
                .and_then(|c| med(c.id))
        };
        let sled = find(Kind::SledBaseline);
        let file = find(Kind::FileFloor);
        let op_text = match op {
            Op::Enqueue => format!("enqueue, 1 producer, {}k", s.enqueue / 1000),
            Op::Durable => format!("durable enqueue, {} producers", s.producers),
            Op::Drain => format!("drain 50 at a time, {}k backlog", s.backlog / 1000),
        };
        for c in &cases {
            let Some(r) = med(c.id) else { continue };
            // evspool's own row of the same durability is what a peer is compared with.
            let ours = cases
                .iter()
                .filter(|o| o.kind == Kind::Evspool)
                .find(|o| o.safe == c.safe || op != Op::Durable)
                .or_else(|| cases.iter().find(|o| o.kind == Kind::Evspool))
                .and_then(|o| med(o.id));
            let ratio = |b: Option<f64>| b.map_or("–".to_string(), |b| format!("{:.2}×", r / b));
            let lead = match (c.kind, ours) {
                (Kind::Evspool, _) | (_, None) => String::new(),
                (_, Some(e)) => {
                    let x = e / r;
                    if c.kind == Kind::Peer {
                        verdicts.push((op, c.label, x));
                    }
                    if x >= 1.0 {
                        format!("{x:.2}×")
                    } else {
                        format!("**{x:.2}×**")
                    }
                }
            };
            let label = if c.kind == Kind::Evspool {
                format!("**{}**", c.label)
            } else {
                c.label.to_string()
            };
            out.push_str(&format!(
                "| {op_text} | {label} | {} | {} | {} | {} | {lead} |\n",
                safe_text(c.safe),
                super::thousands(r),
                ratio(sled),
                ratio(file),
            ));
        }
    }
    out.push_str(&format!(
        "\n{}; 300-byte JSON events; every figure is the median of its iterations, each in a fresh \
         directory, all in one run. \"survives, per call\": what a crash right after the call \
         returned keeps (\"–\": nothing is promised per call; the enqueue rows make everything \
         durable once at the end, inside the timing). \"evspool ÷ this\": evspool's row of the same \
         operation (for durable rows, of the same survival) divided by this row; bold below 1×.\n",
        s.label
    ));
    if judged {
        let behind = |ops: &[Op]| -> Vec<String> {
            verdicts
                .iter()
                .filter(|(op, _, x)| ops.contains(op) && *x < 1.0)
                .map(|(op, label, x)| format!("{op:?}: {label} ({x:.2}×)"))
                .collect()
        };
        let lost = behind(&[Op::Enqueue, Op::Drain]);
        out.push_str(&format!(
            "\nTarget: evspool ahead of every peer on enqueue and drain: {}.\n",
            if lost.is_empty() {
                "met".to_string()
            } else {
                format!("**missed** — behind {}", lost.join("; "))
            }
        ));
        let durable = behind(&[Op::Durable]);
        if !durable.is_empty() {
            out.push_str(&format!(
                "Durable rows (no target) where a peer is ahead: {}.\n",
                durable.join("; ")
            ));
        }
    }
    out
}
