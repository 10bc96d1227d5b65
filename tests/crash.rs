//! Crash test (`harness = false`): `kill -9` a process using the queue at random
//! moments, reopen the same directory, and check at-least-once delivery.
//!
//! The test binary re-executes itself as a child (`EVSPOOL_CRASH_CHILD` selects the
//! child's mode). Children print what the queue acknowledged, one flushed line per
//! fact, so the parent's record of a fact exists only once the queue's call returned:
//!
//! - `R <text>`: what opening the store had to repair (stale snapshots only).
//! - `READY <instance>`: the store is open (the instance id never changes).
//! - `E <seq> <payload>`: `enqueue_durable` returned `Ok` (must survive any crash).
//! - `B <seq> <payload>`: buffered `enqueue` returned (may be lost by a crash).
//! - `L <seq>:<payload> ...`: a lease handed out these events (printed before the ack).
//! - `K <seq> ...`: `ack` returned `Ok` for these events (they may be gone).
//! - `N <seq> ...`: `nack` returned `Ok` for these events (they stay).
//!
//! Payloads are `<run>:<producer>:<counter>`; each producer counts up from 0 and has
//! at most one call in flight, so an event the parent never heard of can carry at
//! most the next counter after the last one printed. Anything else is invented,
//! and so is a seq delivered with two different payloads: a crash may lose
//! buffered events, but the id of an event a consumer saw is never reused.
//!
//! Every child runs durable producers and one buffered producer. Scenario A:
//! producers only; the parent finally drains the store and requires every `E`
//! event. Scenario B: producers and a consumer (lease, print, ack, and sometimes
//! nack) run together; every `E` event must have been acked (`K`), or
//! be in the one lease a child was settling when it was killed (`L` with no `K`
//! or `N` after it: that ack may have happened), or still be in the store.
//! Kills: 50 in CI, 400 with `EVSPOOL_SOAK=1`.

use evspool::{Enqueued, Queue, QueueConfig};
use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_MODE: &str = "EVSPOOL_CRASH_CHILD";
const CHILD_DIR: &str = "EVSPOOL_CRASH_DIR";
const CHILD_RUN: &str = "EVSPOOL_CRASH_RUN";
const TOPIC: &str = "crash";

/// Durable producers in each mode; the next producer number is a buffered one.
fn durable_producers(mode: &str) -> u32 {
    if mode == "produce" { 4 } else { 1 }
}

fn config() -> QueueConfig {
    QueueConfig {
        chunk_max_events: 8,
        commit_interval: Duration::from_millis(10),
        ..QueueConfig::default()
    }
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD_MODE) {
        child(&mode);
        return;
    }
    let soak = std::env::var("EVSPOOL_SOAK").is_ok_and(|v| v == "1");
    let kills = if soak { 200 } else { 25 };
    let mut passed = 0;
    let mut failed = 0;
    let mut total = Summary::default();
    for (name, mode) in [
        ("durable producers under kill -9", "produce"),
        ("producer and consumer under kill -9", "consume"),
    ] {
        let started = Instant::now();
        // A panic is a broken protocol or a failed open; lost and invented
        // events are counted and reported first, then fail the scenario.
        let result = std::panic::catch_unwind(|| scenario(mode, kills));
        let Ok((s, problems)) = result else {
            println!("crash [{name}]: FAILED");
            failed += 1;
            continue;
        };
        println!(
            "crash [{name}]: {} kills, acked {}, lost {}, invented {}, duplicates {} ({:.1}s)",
            s.kills,
            s.acked,
            s.lost,
            s.invented,
            s.duplicates,
            started.elapsed().as_secs_f64()
        );
        total.kills += s.kills;
        total.acked += s.acked;
        total.lost += s.lost;
        total.invented += s.invented;
        total.duplicates += s.duplicates;
        if problems.is_empty() {
            passed += 1;
        } else {
            for p in &problems {
                println!("crash [{name}]: {p}");
            }
            failed += 1;
        }
    }
    println!(
        "crash: {} kills, acked {}, lost {}, invented {}, duplicates {}",
        total.kills, total.acked, total.lost, total.invented, total.duplicates
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------
// Child side.

fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // A parent that went away is no reason to stop: the parent kills us anyway.
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

fn child(mode: &str) {
    let dir = std::env::var(CHILD_DIR).expect("EVSPOOL_CRASH_DIR is set");
    let run: u32 = std::env::var(CHILD_RUN)
        .expect("EVSPOOL_CRASH_RUN is set")
        .parse()
        .expect("run is a number");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let q = Queue::open(&dir, config()).expect("the child opens the store");
        for r in q.stats().recovered {
            emit(format_args!("R {r}"));
        }
        emit(format_args!("READY {}", q.instance_id()));
        let mut tasks = Vec::new();
        let durable = durable_producers(mode);
        let paced = mode == "consume";
        for p in 0..durable {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                for c in 0u64.. {
                    let payload = format!("{run}:{p}:{c}");
                    match q.enqueue_durable(TOPIC, payload.clone()).await {
                        Ok(Enqueued::Accepted(id)) => {
                            emit(format_args!("E {} {payload}", id.seq()))
                        }
                        other => panic!("durable enqueue failed: {other:?}"),
                    }
                    if paced {
                        // Gaps between durable flushes leave buffered events
                        // committed but not yet flushed, where a consumer must
                        // not see them (I8: a seq it saw is never reused).
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            }));
        }
        {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let p = durable;
                for c in 0u64.. {
                    let payload = format!("{run}:{p}:{c}");
                    match q.enqueue(TOPIC, payload.clone()) {
                        Ok(Enqueued::Accepted(id)) => {
                            emit(format_args!("B {} {payload}", id.seq()))
                        }
                        other => panic!("buffered enqueue failed: {other:?}"),
                    }
                    if c % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }));
        }
        if mode == "consume" {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Some(lease) = q.lease(TOPIC, 16).expect("lease") else {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    };
                    let line: Vec<String> = lease
                        .events()
                        .iter()
                        .map(|e| format!("{}:{}", e.seq(), String::from_utf8_lossy(&e.payload)))
                        .collect();
                    emit(format_args!("L {}", line.join(" ")));
                    let seqs: Vec<String> =
                        lease.events().iter().map(|e| e.seq().to_string()).collect();
                    if fastrand::u8(..8) == 0 {
                        q.nack(lease, Duration::ZERO, "crash test").expect("nack");
                        emit(format_args!("N {}", seqs.join(" ")));
                    } else {
                        q.ack(lease).expect("ack");
                        emit(format_args!("K {}", seqs.join(" ")));
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("child task");
        }
    });
}

// ---------------------------------------------------------------------------
// Parent side.

#[derive(Default, Clone, Copy)]
struct Summary {
    kills: u32,
    acked: u64,
    lost: u64,
    invented: u64,
    duplicates: u64,
}

/// Everything the children reported, and every delivery seen.
#[derive(Default)]
struct Ledger {
    instance: Option<String>,
    /// (run, producer, counter) -> seq, for every enqueue that returned.
    printed: HashMap<(u32, u32, u64), u64>,
    /// Highest counter printed per (run, producer).
    max_counter: HashMap<(u32, u32), u64>,
    /// Seqs whose durable enqueue returned `Ok`.
    durable: BTreeSet<u64>,
    /// Seqs whose ack returned `Ok`.
    acked: BTreeSet<u64>,
    /// Seqs of the lease each killed child was settling: printed, never settled.
    settling_at_kill: BTreeSet<u64>,
    /// The current child's last lease, until its `K` or `N` line.
    unsettled: Vec<u64>,
    /// Every delivery (leases printed by children, then the final drain): (seq, payload).
    deliveries: Vec<(u64, String)>,
    /// What opening the store had to repair, as children reported it.
    recovered: Vec<String>,
}

impl Ledger {
    fn record(&mut self, run: u32, line: &str) {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "READY" => match &self.instance {
                None => self.instance = Some(rest.to_string()),
                Some(i) => assert_eq!(i, rest, "the instance id survives crashes"),
            },
            "E" | "B" => {
                let (seq, payload) = rest.split_once(' ').expect("seq and payload");
                let seq: u64 = seq.parse().expect("seq");
                let (r, p, c) = parse_payload(payload).expect("children print their payloads");
                assert_eq!(r, run, "a child prints its own run");
                self.printed.insert((r, p, c), seq);
                let m = self.max_counter.entry((r, p)).or_insert(c);
                *m = (*m).max(c);
                if kind == "E" {
                    assert!(
                        self.durable.insert(seq),
                        "seq {seq} acknowledged twice as new"
                    );
                }
            }
            "L" => {
                assert!(self.unsettled.is_empty(), "one lease at a time per child");
                for item in rest.split(' ') {
                    let (seq, payload) = item.split_once(':').expect("seq:payload");
                    let seq = seq.parse().expect("seq");
                    self.deliveries.push((seq, payload.to_string()));
                    self.unsettled.push(seq);
                }
            }
            "N" => {
                let seqs: Vec<u64> = rest.split(' ').map(|s| s.parse().expect("seq")).collect();
                assert_eq!(seqs, self.unsettled, "the nack settles the last lease");
                self.unsettled.clear();
            }
            "R" => self.recovered.push(rest.to_string()),
            "K" => {
                let seqs: Vec<u64> = rest.split(' ').map(|s| s.parse().expect("seq")).collect();
                assert_eq!(seqs, self.unsettled, "the ack settles the last lease");
                self.unsettled.clear();
                self.acked.extend(seqs);
            }
            other => panic!("unexpected child output {other:?}"),
        }
    }

    /// Describes each delivery that no producer could have enqueued.
    fn invented(&self, runs: u32, producers: u32) -> Vec<String> {
        let mut bad = Vec::new();
        let mut payload_of: HashMap<u64, &str> = HashMap::new();
        for (seq, payload) in &self.deliveries {
            if let Some(prev) = payload_of.insert(*seq, payload)
                && prev != payload
            {
                bad.push(format!(
                    "seq {seq} delivered as {prev:?} and as {payload:?}"
                ));
            }
            let Some((r, p, c)) = parse_payload(payload) else {
                bad.push(format!("seq {seq}: payload {payload:?} was never enqueued"));
                continue;
            };
            if r >= runs || p >= producers {
                bad.push(format!("seq {seq}: payload {payload:?} names no producer"));
                continue;
            }
            match self.printed.get(&(r, p, c)) {
                Some(s) if s != seq => {
                    bad.push(format!(
                        "payload {payload:?} enqueued as seq {s}, delivered as seq {seq}"
                    ));
                }
                Some(_) => {}
                None => {
                    // Enqueued but killed before printing: only the next counter is possible.
                    let next = self.max_counter.get(&(r, p)).map_or(0, |m| m + 1);
                    if c > next {
                        bad.push(format!(
                            "seq {seq}: payload {payload:?} is beyond producer {r}:{p}'s last counter"
                        ));
                    }
                }
            }
        }
        bad
    }
}

fn parse_payload(payload: &str) -> Option<(u32, u32, u64)> {
    let mut it = payload.split(':');
    let r = it.next()?.parse().ok()?;
    let p = it.next()?.parse().ok()?;
    let c = it.next()?.parse().ok()?;
    it.next().is_none().then_some((r, p, c))
}

/// Runs one child on `dir` and kills it; returns the complete lines it printed.
fn run_child(mode: &str, dir: &Path, run: u32) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_MODE, mode)
        .env(CHILD_DIR, dir)
        .env(CHILD_RUN, run.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // A line cut short by the kill is not a fact the child reported.
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    line.pop();
                    if line.starts_with("READY") {
                        let _ = tx.send(line.clone());
                    }
                    lines.push(line);
                }
            }
        }
        lines
    });
    if fastrand::u8(..8) == 0 {
        // Now and then, kill it while it is still opening the store.
        std::thread::sleep(Duration::from_millis(fastrand::u64(0..30)));
    } else {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("child {run} did not open the store within 20s");
            }
        }
        std::thread::sleep(Duration::from_millis(fastrand::u64(20..=300)));
    }
    // `kill` sends SIGKILL.
    child.kill().expect("killing the child");
    let status = child.wait().expect("waiting for the child");
    let lines = reader.join().expect("reader thread");
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "child {run} ended on its own ({status}) instead of being killed"
    );
    lines
}

/// Opens the store, leases and acks everything; returns (seq, payload) in order.
fn drain(dir: &Path) -> Vec<(u64, String)> {
    let q = Queue::open(dir, config()).expect("the store opens after the last kill");
    let stats = q.stats();
    assert_no_damage(&stats.recovered);
    assert_eq!(stats.quarantined_records, 0, "kill -9 damages no record");
    let mut out = Vec::new();
    while let Some(lease) = q.lease(TOPIC, 500).expect("lease") {
        out.extend(
            lease
                .events()
                .iter()
                .map(|e| (e.seq(), String::from_utf8_lossy(&e.payload).into_owned())),
        );
        q.ack(lease).expect("ack");
    }
    assert_eq!(q.stats().total.events, 0, "the drain emptied the store");
    assert_eq!(
        out.len() as u64,
        stats.total.events,
        "stats().total after open counts exactly the stored events"
    );
    q.close();
    out
}

/// A kill may leave a stale sled snapshot to move aside, never a damaged store.
fn assert_no_damage(recovered: &[String]) {
    for r in recovered {
        assert!(
            r.contains("stale snap."),
            "opening after kill -9 found damage: {r}"
        );
    }
}

/// Runs `kills` children on one store, then drains it; returns the counts and
/// what went wrong, if anything.
fn scenario(mode: &str, kills: u32) -> (Summary, Vec<String>) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("store");
    let mut ledger = Ledger::default();
    for run in 0..kills {
        for line in run_child(mode, &dir, run) {
            ledger.record(run, &line);
        }
        let unsettled = std::mem::take(&mut ledger.unsettled);
        ledger.settling_at_kill.extend(unsettled);
    }
    assert_no_damage(&ledger.recovered);
    let drained = drain(&dir);
    let remaining: BTreeSet<u64> = drained.iter().map(|(s, _)| *s).collect();
    ledger.deliveries.extend(drained);

    let lost: Vec<u64> = ledger
        .durable
        .iter()
        .filter(|s| {
            !remaining.contains(s)
                && !ledger.acked.contains(s)
                && !ledger.settling_at_kill.contains(s)
        })
        .copied()
        .collect();
    let producers = durable_producers(mode) + 1;
    let invented = ledger.invented(kills, producers);
    let distinct: BTreeSet<u64> = ledger.deliveries.iter().map(|(s, _)| *s).collect();
    let summary = Summary {
        kills,
        acked: ledger.durable.len() as u64,
        lost: lost.len() as u64,
        invented: invented.len() as u64,
        duplicates: (ledger.deliveries.len() - distinct.len()) as u64,
    };
    let mut problems = Vec::new();
    if !lost.is_empty() {
        problems.push(format!(
            "{} durably acknowledged events lost (first: {:?})",
            lost.len(),
            &lost[..lost.len().min(10)]
        ));
    }
    if !invented.is_empty() {
        problems.push(format!(
            "{} invented deliveries: {:?}",
            invented.len(),
            &invented[..invented.len().min(10)]
        ));
    }
    if summary.acked <= u64::from(kills) {
        problems.push(format!(
            "the children got {} durable enqueues through in {kills} runs: too few to test anything",
            summary.acked
        ));
    }
    if mode == "consume" && ledger.acked.is_empty() {
        problems.push("the consumers acked nothing: the scenario tested nothing".into());
    }
    (summary, problems)
}
