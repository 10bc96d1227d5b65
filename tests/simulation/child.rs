//! One life of a seed: the workload, run against the real queue in this
//! child process, with each step's faults armed at the I/O sites.
//!
//! Ledger lines (one per fact, written and flushed when it happened):
//!
//! ```text
//! READY <instance>              the store is open
//! STEP <n> <op>                 a step begins
//! A <tok> <topic> <d|b>         an enqueue of the event <tok> is attempted,
//!                               durable (d: enqueue_durable, a batch) or buffered (b)
//! OK <tok> <seq>                enqueue_durable (or a batch) returned Ok: accepted
//! B <tok> <seq>                 enqueue (buffered) accepted it
//! D <tok>                       the ceiling policy dropped it (Enqueued::Dropped)
//! E <tok> <code>                the call failed
//! S                             sync returned Ok
//! L <lease> <seq>:<tok> ...     a lease handed out these events
//! T <lease>                     a settle begins
//! TS <lease> <d|r|x>:<seq> ...  it returned Ok: delivered, kept to retry, dead
//! PC <topic> <seq> ...          the events a purge may take (read before it)
//! P <topic> / PD <topic> <n>    a purge begins / returned Ok(n) (PE: an error,
//!                               after which any of its candidates may be gone)
//! QC <topic> <seq> ...          the dead letters a purge of them may take
//! Q <topic> / QD <topic> <n>    a purge of dead letters begins / returned Ok(n)
//! R <topic> / RD <topic> <n>    a replay of dead letters begins / returned Ok(n)
//! DROPBASE <oldest> <age> <storage> <quarantined>
//!                               the store's drop counters (and quarantined
//!                               records) a queue opened with
//! DROPS <oldest> <age> <storage> <quarantined>   the same, after a step
//! F <site> <errno|crash>        a fault was injected
//! HANG <op> / DRIFT <why> / FATAL <why>   the child stops: a bug
//! END                           the life ended with a clean close
//! ```

use super::plan::{self, StepFaults, site_name};
use evspool::faults::{self, Fault, Site};
use evspool::{Enqueued, Lease, Queue, QueueConfig, Settlement};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub const CHILD: &str = "EVSPOOL_SIM_CHILD";
pub const DIR: &str = "EVSPOOL_SIM_DIR";
pub const LEDGER: &str = "EVSPOOL_SIM_LEDGER";

/// A step that takes longer than this is a hang.
const STEP_LIMIT: Duration = Duration::from_secs(60);

static LEDGER_FILE: Mutex<Option<File>> = Mutex::new(None);

/// Writes one ledger line (not through the queue's I/O: no fault hits it).
pub fn emit(line: std::fmt::Arguments<'_>) {
    let mut g = LEDGER_FILE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(f) = g.as_mut() {
        let _ = f.write_fmt(line);
        let _ = f.write_all(b"\n");
        let _ = f.flush();
    }
}

/// The armed faults of the current step.
#[derive(Default)]
struct Armed {
    on: bool,
    plan: StepFaults,
    calls: u32,
    by_site: HashMap<Site, u32>,
}

static ARMED: Mutex<Option<Armed>> = Mutex::new(None);

fn arm(plan: StepFaults) {
    *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = Some(Armed {
        on: true,
        plan,
        ..Armed::default()
    });
}

fn disarm() {
    *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

fn hook(site: Site, _path: &Path) -> Option<Fault> {
    let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
    let a = g.as_mut().filter(|a| a.on)?;
    a.calls += 1;
    if a.plan.crash_at == Some(a.calls) {
        emit(format_args!("F {} crash", site_name(site)));
        return Some(Fault::Crash);
    }
    let n = a.by_site.entry(site).or_default();
    *n += 1;
    let n = *n;
    let f = a
        .plan
        .faults
        .iter()
        .find(|(s, nth, _)| *s == site && *nth == n)
        .map(|(_, _, f)| *f)?;
    let errno = match f {
        Fault::Error(e) | Fault::Short { errno: e, .. } => e,
        Fault::Crash => 0,
    };
    emit(format_args!("F {} {errno}", site_name(site)));
    Some(f)
}

/// The event token in a payload (`{"tok":"…",…}`).
pub fn token_of(payload: &[u8]) -> String {
    let s = String::from_utf8_lossy(payload);
    s.split("\"tok\":\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?")
        .to_string()
}

struct Life {
    seed: u64,
    life: u32,
    dir: PathBuf,
    cfg: QueueConfig,
    topics: usize,
    r: fastrand::Rng,
    next_tok: u64,
    held: Vec<Lease>,
    /// Dead letters whose seq % 3 is this stay in a purge of dead letters.
    keep: u64,
}

impl Life {
    fn topic(&mut self) -> String {
        // Now and then a topic nobody wrote yet: its directory is made.
        if self.r.u32(0..40) == 0 {
            return format!("n{}x{}", self.life, self.r.u32(0..1000));
        }
        format!("t{}", self.r.usize(0..self.topics))
    }

    fn payload(&mut self) -> (String, Vec<u8>) {
        let tok = format!("{}.{}.{}", self.seed, self.life, self.next_tok);
        self.next_tok += 1;
        let pad = "x".repeat(self.r.usize(0..300));
        let mut p = format!("{{\"tok\":\"{tok}\",\"pad\":\"{pad}\"}}").into_bytes();
        // Now and then the bytes of a body file: entry-shaped payloads that a
        // reader resyncing past damage must never take for entries.
        if self.r.u32(0..12) == 0
            && let Some(bytes) = self.some_body_bytes()
        {
            p.extend_from_slice(&bytes);
        }
        (tok, p)
    }

    /// Up to 2 KiB of one of the store's body files.
    fn some_body_bytes(&mut self) -> Option<Vec<u8>> {
        let mut files = Vec::new();
        for t in std::fs::read_dir(self.dir.join("bodies")).ok()?.flatten() {
            files.extend(
                std::fs::read_dir(t.path())
                    .ok()?
                    .flatten()
                    .map(|f| f.path()),
            );
        }
        files.sort();
        let path = files.get(self.r.usize(0..files.len().max(1)))?;
        let bytes = std::fs::read(path).ok()?;
        let from = self.r.usize(0..bytes.len().max(1));
        let to = (from + self.r.usize(1..=2048)).min(bytes.len());
        bytes.get(from..to).map(<[u8]>::to_vec)
    }

    /// Opens the store; an open that fails under faults is tried again
    /// without them (a failure then is a bug).
    fn open(&mut self) -> Queue {
        let q = match Queue::open(&self.dir, self.cfg.clone()) {
            Ok(q) => q,
            Err(e) => {
                disarm();
                emit(format_args!("OPENFAIL {e}"));
                match Queue::open(&self.dir, self.cfg.clone()) {
                    Ok(q) => q,
                    Err(e) => {
                        emit(format_args!("FATAL open without faults failed: {e}"));
                        std::process::exit(5);
                    }
                }
            }
        };
        // Drop counters are the store's: what this queue starts from.
        emit_drops("DROPBASE", &q);
        q
    }
}

/// The store's drop counters that may take acknowledged events, and its
/// quarantined records (a lease that found damage raises them).
fn emit_drops(what: &str, q: &Queue) {
    let stats = q.stats();
    let d = |k: &str| stats.drops.get(k).copied().unwrap_or(0);
    emit(format_args!(
        "{what} {} {} {} {}",
        d("ceiling_oldest"),
        d("max_age"),
        d("storage_error"),
        stats.quarantined_records
    ));
}

fn code(e: &evspool::QueueError) -> &'static str {
    e.as_code()
}

pub fn run() {
    let spec = std::env::var(CHILD).expect("seed and life");
    let mut it = spec.split_whitespace();
    let seed: u64 = it.next().and_then(|s| s.parse().ok()).expect("seed");
    let life: u32 = it.next().and_then(|s| s.parse().ok()).expect("life");
    let dir = PathBuf::from(std::env::var(DIR).expect("dir"));
    let ledger = std::env::var(LEDGER).expect("ledger");
    *LEDGER_FILE.lock().unwrap() = Some(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(ledger)
            .expect("ledger"),
    );
    faults::install(hook);
    let started = Mutex::new((Instant::now(), String::from("open")));
    let started = std::sync::Arc::new(started);
    {
        let started = started.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                let (t, op) = started.lock().unwrap().clone();
                if t.elapsed() > STEP_LIMIT {
                    emit(format_args!("HANG {op} after {}s", t.elapsed().as_secs()));
                    std::process::exit(3);
                }
            }
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut r = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(life as u64));
    let steps = r.u32(80..=200);
    let crash_odds = r.u32(40..=250);
    let mut l = Life {
        seed,
        life,
        cfg: plan::config(seed, life),
        topics: plan::topics(seed),
        r,
        dir,
        next_tok: 0,
        held: Vec::new(),
        keep: 0,
    };
    arm(plan::step_faults(&mut l.r, crash_odds));
    let mut q = l.open();
    disarm();
    emit(format_args!("READY {}", q.instance_id()));
    let leases = AtomicU64::new(0);
    for step in 0..steps {
        let faults = plan::step_faults(&mut l.r, crash_odds);
        let op = pick(&mut l.r, l.cfg.max_age.is_some());
        *started.lock().unwrap() = (Instant::now(), op.to_string());
        emit(format_args!("STEP {step} {op}"));
        let target = l.topic();
        candidates(&q, op, &target, &mut l);
        arm(faults);
        q = step_op(&rt, &mut l, q, op, &target, &leases);
        disarm();
        emit_drops("DROPS", &q);
        if step % 16 == 15
            && let Ok(report) = q.verify()
            && report.drifted()
        {
            emit(format_args!("DRIFT {report:?}"));
            std::process::exit(4);
        }
    }
    *started.lock().unwrap() = (Instant::now(), "close".into());
    l.held.clear();
    arm(plan::step_faults(&mut l.r, crash_odds));
    q.close();
    disarm();
    emit(format_args!("END"));
    std::process::exit(0);
}

fn pick(r: &mut fastrand::Rng, aged: bool) -> &'static str {
    const OPS: [(&str, u32); 16] = [
        ("durable", 20),
        ("batch", 8),
        ("buffered", 12),
        ("sync", 7),
        ("lease", 14),
        ("settle", 14),
        ("nack", 4),
        ("release", 3),
        ("purge", 1),
        ("replay", 3),
        ("purge_dead", 2),
        ("verify", 3),
        ("reopen", 3),
        ("compact", 2),
        ("expire", 2),
        ("age", 1),
    ];
    loop {
        let total: u32 = OPS.iter().map(|(_, w)| w).sum();
        let mut x = r.u32(0..total);
        let op = OPS
            .iter()
            .find(|(_, w)| {
                if x < *w {
                    true
                } else {
                    x -= w;
                    false
                }
            })
            .map_or("durable", |(o, _)| *o);
        if op != "age" || aged {
            return op;
        }
    }
}

/// Before a purge (no fault armed): the events it may take, so that the
/// oracle accounts exactly — committed and unleased (`PC`), or the dead
/// letters its filter accepts (`QC`).
fn candidates(q: &Queue, op: &str, topic: &str, l: &mut Life) {
    match op {
        "purge" => {
            let seqs: Vec<String> = q
                .peek(topic, 0, usize::MAX)
                .unwrap_or_default()
                .iter()
                .filter(|p| !p.leased)
                .map(|p| p.event.seq().to_string())
                .collect();
            emit(format_args!("PC {topic} {}", seqs.join(" ")));
        }
        "purge_dead" => {
            l.keep = l.r.u64(0..3);
            let keep = l.keep;
            let seqs: Vec<String> = q
                .dead_letters(topic, 0, usize::MAX)
                .unwrap_or_default()
                .iter()
                .map(|d| d.id.seq())
                .filter(|s| s % 3 != keep)
                .map(|s| s.to_string())
                .collect();
            emit(format_args!("QC {topic} {}", seqs.join(" ")));
        }
        _ => {}
    }
}

fn step_op(
    rt: &tokio::runtime::Runtime,
    l: &mut Life,
    q: Queue,
    op: &str,
    target: &str,
    leases: &AtomicU64,
) -> Queue {
    match op {
        "durable" => {
            // One to three producers at once (their writes share a group).
            let mut tasks = Vec::new();
            for _ in 0..l.r.usize(1..=3) {
                let t = l.topic();
                let (tok, p) = l.payload();
                emit(format_args!("A {tok} {t} d"));
                let q = q.clone();
                tasks.push((tok, rt.spawn(async move { q.enqueue_durable(&t, p).await })));
            }
            for (tok, task) in tasks {
                match rt.block_on(task) {
                    Ok(Ok(Enqueued::Accepted(id))) => emit(format_args!("OK {tok} {}", id.seq())),
                    Ok(Ok(Enqueued::Dropped(_))) => emit(format_args!("D {tok}")),
                    Ok(Err(e)) => emit(format_args!("E {tok} {}", code(&e))),
                    Err(e) => emit(format_args!("E {tok} panic {e}")),
                }
            }
        }
        "batch" => {
            let t = l.topic();
            let n = l.r.usize(1..=6);
            let mut toks = Vec::new();
            let mut payloads = Vec::new();
            for _ in 0..n {
                let (tok, p) = l.payload();
                emit(format_args!("A {tok} {t} d"));
                toks.push(tok);
                payloads.push(p);
            }
            match rt.block_on(q.enqueue_batch_durable(&t, payloads)) {
                Ok(outs) => {
                    for (tok, o) in toks.iter().zip(outs) {
                        match o {
                            Enqueued::Accepted(id) => emit(format_args!("OK {tok} {}", id.seq())),
                            _ => emit(format_args!("D {tok}")),
                        }
                    }
                }
                Err(e) => {
                    for tok in &toks {
                        emit(format_args!("E {tok} {}", code(&e)));
                    }
                }
            }
        }
        "buffered" => {
            let t = l.topic();
            for _ in 0..l.r.usize(1..=8) {
                let (tok, p) = l.payload();
                emit(format_args!("A {tok} {t} b"));
                match q.enqueue(&t, p) {
                    Ok(Enqueued::Accepted(id)) => emit(format_args!("B {tok} {}", id.seq())),
                    Ok(_) => emit(format_args!("D {tok}")),
                    Err(e) => emit(format_args!("E {tok} {}", code(&e))),
                }
            }
        }
        "sync" => match rt.block_on(q.sync()) {
            Ok(()) => emit(format_args!("S")),
            Err(e) => emit(format_args!("SE {}", code(&e))),
        },
        "lease" => {
            let t = l.topic();
            if let Ok(Some(lease)) = q.lease(&t, l.r.usize(1..=20)) {
                let id = leases.fetch_add(1, Ordering::Relaxed);
                let events: Vec<String> = lease
                    .events()
                    .iter()
                    .map(|e| format!("{}:{}", e.seq(), token_of(&e.payload)))
                    .collect();
                emit(format_args!("L {id} {}", events.join(" ")));
                l.held.push(lease);
            }
        }
        "settle" | "nack" => {
            if l.held.is_empty() {
                return q;
            }
            let i = l.r.usize(0..l.held.len());
            let lease = l.held.swap_remove(i);
            let id = lease.id();
            let mut s = Settlement::delivered()
                .retry_after(Duration::from_millis(l.r.u64(0..1500)), "simulated failure");
            let mut outcome = Vec::new();
            for e in lease.events() {
                let x = if op == "nack" { 50 } else { l.r.u32(0..100) };
                if x < 70 {
                    outcome.push(format!("d:{}", e.seq()));
                } else if x < 90 {
                    s = s.retry(e.seq());
                    outcome.push(format!("r:{}", e.seq()));
                } else {
                    s = s.dead(e.seq(), "simulated rejection");
                    outcome.push(format!("x:{}", e.seq()));
                }
            }
            if op == "nack" {
                s = Settlement::delivered().retry_after(Duration::from_millis(10), "nack");
                for e in lease.events() {
                    s = s.retry(e.seq());
                }
                outcome = lease
                    .events()
                    .iter()
                    .map(|e| format!("r:{}", e.seq()))
                    .collect();
            }
            emit(format_args!("T {id}"));
            match q.settle(lease, s) {
                Ok(_) => emit(format_args!("TS {id} {}", outcome.join(" "))),
                Err(e) => emit(format_args!("TE {id} {}", code(&e))),
            }
        }
        "release" if !l.held.is_empty() => {
            let i = l.r.usize(0..l.held.len());
            q.release(l.held.swap_remove(i));
        }
        "purge" => {
            let t = target;
            emit(format_args!("P {t}"));
            match q.purge(t) {
                Ok(n) => emit(format_args!("PD {t} {n}")),
                Err(e) => emit(format_args!("PE {t} {}", code(&e))),
            }
        }
        "purge_dead" => {
            let t = target;
            emit(format_args!("Q {t}"));
            let keep = l.keep;
            match q.purge_dead(t, |d| d.id.seq() % 3 != keep) {
                Ok(n) => emit(format_args!("QD {t} {n}")),
                Err(e) => emit(format_args!("QE {t} {}", code(&e))),
            }
        }
        "replay" => {
            let t = l.topic();
            emit(format_args!("R {t}"));
            if let Ok(n) = q.replay_dead(&t, |_| true) {
                emit(format_args!("RD {t} {n}"));
            }
        }
        "verify" => {
            if let Ok(report) = q.verify()
                && report.drifted()
            {
                emit(format_args!("DRIFT {report:?}"));
                std::process::exit(4);
            }
        }
        "reopen" => {
            l.held.clear();
            // Sometimes a producer races the close (waiting for room under
            // `block`, or writing): it ends Closed, or Ok and stored.
            let racer = l.r.bool().then(|| {
                let t = l.topic();
                let (tok, p) = l.payload();
                emit(format_args!("A {tok} {t} d"));
                let q = q.clone();
                (tok, rt.spawn(async move { q.enqueue_durable(&t, p).await }))
            });
            q.close();
            if let Some((tok, task)) = racer {
                match rt.block_on(task) {
                    Ok(Ok(Enqueued::Accepted(id))) => emit(format_args!("OK {tok} {}", id.seq())),
                    Ok(Ok(Enqueued::Dropped(_))) => emit(format_args!("D {tok}")),
                    Ok(Err(e)) => emit(format_args!("E {tok} {}", code(&e))),
                    Err(e) => emit(format_args!("E {tok} panic {e}")),
                }
            }
            return l.open();
        }
        "compact" => {
            l.held.clear();
            q.close();
            let _ = evspool::compact(&l.dir, &l.cfg);
            return l.open();
        }
        "expire" => {
            q.expire_all_leases();
        }
        "age" => std::thread::sleep(Duration::from_millis(1100)),
        _ => {}
    }
    q
}
