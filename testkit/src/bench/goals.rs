//! The durable-enqueue goals: evspool's durable rows beside the bound or
//! floor each is judged against, all measured in the same run.
//!
//! | goal | evspool row | judged against | target |
//! |---|---|---|---|
//! | kill -9 safe, 16 producers | `enqueue_durable`, `fsync = false` | yaque `try_send` behind a `Mutex` | ≥ 1.00× |
//! | (same) on runtimes of 1 and of 4 threads | (same) | (same) | ≥ 1.00× |
//! | power safe, 16 producers | `enqueue_durable`, `fsync = true` | 16 threads appending + group commit | ≥ 0.80× |
//! | power safe, 1 producer, batches of 50 | `enqueue_batch_durable`, `fsync = true` | append + `fdatasync` every 50 | ≥ 0.90× |
//! | (same) | (same) | SQLite WAL, 50 per `FULL` transaction | > 1.00× |
//!
//! The floor of the second row is what a hand-written group commit gets on
//! this machine: 16 threads appending to one file under a lock and sharing
//! `fdatasync`s (whoever finds no sync running syncs for everyone written so
//! far). The ideal is printed beside it: 16 producers that each await their
//! own event share one `fdatasync` at most 16 ways, so they reach at most 16 ×
//! the rate of back-to-back `fdatasync`s of a one-event append — on ext4 never
//! reached, since appends made while a sync runs wait for its pages.
//!
//! Rows go round-robin, one iteration of each per round, so load on a shared
//! machine hits every row alike; the table shows medians. Before each row the
//! previous row's directory is deleted and `sync(2)` writes back what it left
//! dirty, so no row pays for its predecessor's writeback.

use super::peers::{self, Ctx, Sizes, case_by_id, median};
use super::{BATCH, TOPIC, thousands};
use bytes::Bytes;
use evspool::{Enqueued, Queue};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Producers of the concurrent rows (each awaits its own event).
const PRODUCERS: usize = 16;

/// How much each round measures.
#[derive(Clone, Debug)]
pub struct GoalSizes {
    /// Events per producer in the 16-producer rows with `fsync`.
    pub per_producer: usize,
    /// Events per producer in the 16-producer kill -9 rows (no `fsync`):
    /// enough for a fraction of a second, so a millisecond of scheduling
    /// noise or a store's first file does not decide the ratio.
    pub kill9_per_producer: usize,
    /// Events of the single-producer batch rows.
    pub batched: usize,
    /// How long the `fdatasync` rate is sampled per round.
    pub fdatasync_for: Duration,
    /// Rounds (the table shows medians).
    pub rounds: usize,
}

impl GoalSizes {
    /// `--quick`.
    pub fn quick() -> GoalSizes {
        GoalSizes {
            per_producer: 1_000,
            kill9_per_producer: 8_000,
            batched: 20_000,
            fdatasync_for: Duration::from_millis(500),
            rounds: 3,
        }
    }

    /// The default.
    pub fn full() -> GoalSizes {
        GoalSizes {
            per_producer: 4_000,
            kill9_per_producer: 25_000,
            batched: 50_000,
            fdatasync_for: Duration::from_secs(1),
            rounds: 5,
        }
    }

    /// `cargo test --benches`: tiny, figures meaningless.
    pub fn test() -> GoalSizes {
        GoalSizes {
            per_producer: 20,
            kill9_per_producer: 20,
            batched: 200,
            fdatasync_for: Duration::from_millis(20),
            rounds: 1,
        }
    }
}

/// Events per second of every round, by row id.
pub type GoalRates = BTreeMap<&'static str, Vec<f64>>;

/// Measures every row, round-robin; progress goes to stderr.
pub fn measure(sizes: &GoalSizes) -> GoalRates {
    let ctx = Ctx::new(Sizes {
        label: "goals",
        enqueue: 0,
        producers: PRODUCERS,
        durable_per_producer: sizes.per_producer,
        fsync_per_producer: 1,
        batched_records: sizes.batched,
        backlog: 0,
        iterations: sizes.rounds,
    });
    let kill9 = Ctx::new(Sizes {
        durable_per_producer: sizes.kill9_per_producer,
        ..ctx.sizes.clone()
    });
    // The same row on runtimes of 1 and 4 threads: a result that depends on
    // how the scheduler interleaves producers would show here.
    let kill9_one = Ctx::with_workers(kill9.sizes.clone(), 1);
    let kill9_four = Ctx::with_workers(kill9.sizes.clone(), 4);
    let mut rates = GoalRates::new();
    for _ in 0..sizes.rounds {
        // (context, peer row, the key its rates go under)
        for (ctx, id, key) in [
            (&kill9_one, "durable/evspool", "durable/evspool@1"),
            (&kill9_four, "durable/evspool", "durable/evspool@4"),
            (&kill9, "durable/evspool", "durable/evspool"),
            (&kill9, "durable/yaque", "durable/yaque"),
            (&ctx, "durable/evspool_fsync", "durable/evspool_fsync"),
            (
                &ctx,
                "durable/append_file_fdatasync50",
                "durable/append_file_fdatasync50",
            ),
            (
                &ctx,
                "durable/sqlite_txn50_full",
                "durable/sqlite_txn50_full",
            ),
        ] {
            let case = case_by_id(id).expect("a peer row");
            settle();
            let dir = super::temp_dir();
            let t = peers::run_write(ctx, case, dir.path());
            rates
                .entry(key)
                .or_default()
                .push(ctx.events(case) as f64 / t.as_secs_f64().max(1e-9));
        }
        settle();
        let dir = super::temp_dir();
        rates
            .entry("fdatasync")
            .or_default()
            .push(fdatasync_rate(dir.path(), sizes.fdatasync_for));
        settle();
        let dir = super::temp_dir();
        let n = PRODUCERS * sizes.per_producer;
        let t = group_commit_floor(dir.path(), &ctx.payloads, sizes.per_producer);
        rates
            .entry("group_commit_floor")
            .or_default()
            .push(n as f64 / t.as_secs_f64());
        settle();
        let dir = super::temp_dir();
        let t = evspool_batches(&ctx, dir.path(), sizes.batched);
        rates
            .entry("evspool_batch50_fsync")
            .or_default()
            .push(sizes.batched as f64 / t.as_secs_f64());
    }
    for (id, v) in &rates {
        eprintln!(
            "  {id:<36} {:>12}/s (median of {})",
            thousands(median(v).unwrap_or(0.0)),
            v.len()
        );
    }
    rates
}

/// Writes back everything dirty (`sync(2)`), so the next row starts clean.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// Back-to-back one-event appends, each followed by `fdatasync`, for `span`:
/// the rate one waiter alone could reach.
fn fdatasync_rate(dir: &Path, span: Duration) -> f64 {
    let mut f = File::create(dir.join("probe")).expect("create probe file");
    let record = vec![b'x'; 4 + super::PAYLOAD_BYTES];
    let start = Instant::now();
    let mut n = 0u64;
    while n < 20 || start.elapsed() < span {
        f.write_all(&record).expect("append");
        f.sync_data().expect("fdatasync");
        n += 1;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Group commit by hand: `PRODUCERS` threads append one record each under a
/// lock, then wait until an `fdatasync` started after their write finished;
/// whoever finds no sync running leads one for everything written so far.
fn group_commit_floor(dir: &Path, payloads: &[Bytes], per: usize) -> Duration {
    struct State {
        file: File,
        written: u64,
        synced: u64,
        syncing: bool,
    }
    let state = Mutex::new(State {
        file: File::create(dir.join("log")).expect("create log"),
        written: 0,
        synced: 0,
        syncing: false,
    });
    let done = Condvar::new();
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..PRODUCERS {
            let (state, done) = (&state, &done);
            s.spawn(move || {
                let mut buf = Vec::with_capacity(4 + super::PAYLOAD_BYTES);
                for i in 0..per {
                    let p = &payloads[(t * per + i) % payloads.len()];
                    buf.clear();
                    buf.extend_from_slice(&(p.len() as u32).to_le_bytes());
                    buf.extend_from_slice(p);
                    let mut g = state.lock().unwrap();
                    g.file.write_all(&buf).expect("append");
                    g.written += 1;
                    let mine = g.written;
                    while g.synced < mine {
                        if g.syncing {
                            g = done.wait(g).unwrap();
                            continue;
                        }
                        g.syncing = true;
                        let upto = g.written;
                        let file = g.file.try_clone().expect("dup log fd");
                        drop(g);
                        file.sync_data().expect("fdatasync");
                        g = state.lock().unwrap();
                        g.syncing = false;
                        g.synced = upto;
                        done.notify_all();
                    }
                }
            });
        }
    });
    start.elapsed()
}

/// One producer, `enqueue_batch_durable` of 50 events at a time, `fsync = true`.
fn evspool_batches(ctx: &Ctx, dir: &Path, n: usize) -> Duration {
    let q = Queue::open(dir, peers::evspool_config(true)).expect("open queue");
    let start = Instant::now();
    ctx.rt.block_on(async {
        let mut i = 0;
        while i < n {
            let batch: Vec<Bytes> = (i..(i + BATCH).min(n))
                .map(|j| ctx.payloads[j % ctx.payloads.len()].clone())
                .collect();
            i += batch.len();
            let out = q
                .enqueue_batch_durable(TOPIC, batch)
                .await
                .expect("durable batch");
            assert!(out.iter().all(|o| matches!(o, Enqueued::Accepted(_))));
        }
    });
    let t = start.elapsed();
    assert_eq!(q.stats().total.events, n as u64);
    q.close();
    t
}

/// One line of the goals table.
struct GoalRow {
    goal: &'static str,
    ours: &'static str,
    us: f64,
    against: String,
    them: f64,
    target: &'static str,
    /// The ratio to reach (0: shown, not judged).
    min: f64,
    /// Whether the ratio must be above `min` rather than at least it.
    strict: bool,
}

/// The goals table: each evspool row, what it is judged against, the ratio and
/// the verdict.
pub fn table(sizes: &GoalSizes, rates: &GoalRates, judged: bool) -> String {
    let med = |id: &str| rates.get(id).and_then(|v| median(v)).unwrap_or(0.0);
    let fdatasync = med("fdatasync");
    let one_by_one = "`enqueue_durable`, `fsync = true`";
    let batches = "`enqueue_batch_durable`, `fsync = true`";
    // The kill -9 goal on the default runtime and on runtimes of 1 and 4 threads.
    let kill9 = |goal: &'static str, key: &str| GoalRow {
        goal,
        ours: "`enqueue_durable`, `fsync = false`",
        us: med(key),
        against: "yaque `try_send` behind a `Mutex` (16 threads)".into(),
        them: med("durable/yaque"),
        target: "≥ 1.00×",
        min: 1.0,
        strict: false,
    };
    let rows = [
        kill9("kill -9 safe, 16 producers", "durable/evspool"),
        kill9(
            "kill -9 safe, 16 producers, 1 runtime thread",
            "durable/evspool@1",
        ),
        kill9(
            "kill -9 safe, 16 producers, 4 runtime threads",
            "durable/evspool@4",
        ),
        GoalRow {
            goal: "power safe, 16 producers",
            ours: one_by_one,
            us: med("durable/evspool_fsync"),
            against: "group-commit floor: 16 threads, append under a lock + shared `fdatasync`"
                .into(),
            them: med("group_commit_floor"),
            target: "≥ 0.80×",
            min: 0.8,
            strict: false,
        },
        GoalRow {
            goal: "power safe, 16 producers",
            ours: one_by_one,
            us: med("durable/evspool_fsync"),
            against: format!(
                "ideal: 16 × {} `fdatasync`/s (every sync covering 16 events)",
                thousands(fdatasync)
            ),
            them: fdatasync * PRODUCERS as f64,
            target: "(shown)",
            min: 0.0,
            strict: false,
        },
        GoalRow {
            goal: "power safe, 1 producer, batches of 50",
            ours: batches,
            us: med("evspool_batch50_fsync"),
            against: "floor: append-only file, `fdatasync` every 50".into(),
            them: med("durable/append_file_fdatasync50"),
            target: "≥ 0.90×",
            min: 0.9,
            strict: false,
        },
        GoalRow {
            goal: "power safe, 1 producer, batches of 50",
            ours: batches,
            us: med("evspool_batch50_fsync"),
            against: "SQLite WAL, 50 per `FULL` transaction".into(),
            them: med("durable/sqlite_txn50_full"),
            target: "> 1.00×",
            min: 1.0,
            strict: true,
        },
    ];
    let mut out = String::from(
        "| goal | evspool | ev/s | judged against | ev/s | ratio | target | |\n\
         |---|---|---:|---|---:|---:|---|---|\n",
    );
    for r in rows {
        let ratio = if r.them > 0.0 {
            r.us / r.them
        } else {
            f64::NAN
        };
        let verdict = if !judged || r.min == 0.0 {
            ""
        } else if (r.strict && ratio > r.min) || (!r.strict && ratio >= r.min) {
            "met"
        } else {
            "**missed**"
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {ratio:.2}× | {} | {verdict} |\n",
            r.goal,
            r.ours,
            thousands(r.us),
            r.against,
            thousands(r.them),
            r.target,
        ));
    }
    out.push_str(&format!(
        "\n300-byte events; medians of {} rounds, each row once per round in a fresh directory. \
         16 producers move {} events each without `fsync`, {} with it; the batch rows move {}. \
         The `fdatasync` rate is one writer appending one event and syncing, back to back, on the \
         same file system as the rows.\n",
        rates.get("fdatasync").map_or(0, Vec::len),
        thousands(sizes.kill9_per_producer as f64),
        thousands(sizes.per_producer as f64),
        thousands(sizes.batched as f64),
    ));
    out
}
