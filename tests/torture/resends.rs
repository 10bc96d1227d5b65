//! Scenario 5: what a kill re-sends. Producers post ~3,000 events a second
//! to the real daemon's `/v1/events` while it forwards to a collector that
//! fails a fifth of its requests (500, nothing recorded); the daemon is
//! SIGKILLed after lives of every length (0.1 to 2 s, around the store's
//! default sled flush interval of 0.5 s), while it forwards, and restarted.
//!
//! Per kill it prints the events *leased* at the kill (the daemon's `stats`
//! taken just before the SIGKILL: the batches its workers were sending or
//! settling) and the *duplicates* the next life delivered (events the
//! collector had already accepted in an earlier life). An acknowledged batch
//! must stay acknowledged across a kill: a restart re-sends at most what was
//! in flight when the daemon died, so duplicates ≤ leased-at-kill, plus
//! [`RACE_ALLOWANCE`] for the batches leased between the `stats` answer and
//! the SIGKILL.

use crate::collector::start_collector;
use crate::crash_loop::{Wanted, post_until_acked};
use crate::proc::{client, listening, live, spawn, start};
use evspool_testkit::collector::Reply;
use evspool_testkit::ledger::{Ledger, Summary};
use evspool_testkit::setup;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const PRODUCERS: u64 = 4;
const BATCH: u64 = 20;
const PER_LIFE: i64 = 3_000;
/// Each producer's pause before a request (4 × 20 events every 25 ms).
const PACE: Duration = Duration::from_millis(25);
const WORKERS: u64 = 4;
const BATCH_SIZE: u64 = 50;
/// Between the `stats` answer and the SIGKILL (a millisecond or two) the
/// workers may lease one more batch each: at most this many events more than
/// `stats` said were leased.
const RACE_ALLOWANCE: u64 = WORKERS * BATCH_SIZE;

fn config(collector: &str) -> String {
    // The queue's own defaults (commit and sled flush intervals): what a
    // sidecar runs with.
    format!(
        r#"[server]
listen = "127.0.0.1:0"
shutdown_deadline = "10s"

{extra}
[http]
timeout = "5s"
connect_timeout = "1s"

[sink]
type = "segment"
api_host = "{collector}"

[forward]
workers = {WORKERS}
batch_size = {BATCH_SIZE}
flush_interval = "20ms"
flush_jitter = "0s"

[forward.backoff]
base = "20ms"
max = "200ms"

[forward.breaker]
failure_threshold = 50
open_for = "100ms"
open_max = "300ms"
"#,
        // EVSPOOL_RESENDS_QUEUE: lines for a [queue] section, to experiment
        // (e.g. `flush_interval = "10ms"`).
        extra = std::env::var("EVSPOOL_RESENDS_QUEUE")
            .map(|q| format!("[queue]\n{q}\n"))
            .unwrap_or_default()
    )
}

/// One kill: what was leased just before it, what the next life re-sent.
struct Kill {
    life_ms: u64,
    leased: u64,
    resent: u64,
}

pub async fn run(kills: u64) -> (Summary, Vec<String>) {
    let collector = start_collector().await;
    collector.respond(|_| {
        if fastrand::u8(..5) == 0 {
            Reply::status(500).body("try later")
        } else {
            Reply::ok()
                .header("content-type", "application/json")
                .body(r#"{"success":true}"#)
        }
    });
    let s = setup(&config(&collector.url));
    let url: Arc<RwLock<Option<String>>> = Arc::default();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Events producers may still post in this life.
    let budget = Arc::new(AtomicI64::new(0));

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (url, ledger, problems, stop, budget) = (
            url.clone(),
            ledger.clone(),
            problems.clone(),
            stop.clone(),
            budget.clone(),
        );
        producers.push(tokio::spawn(async move {
            let c = client(Duration::from_secs(10));
            // Retries are not counted here.
            let retries = AtomicU64::new(0);
            let mut next = 0u64;
            'batches: while !stop.load(Ordering::SeqCst) {
                if budget.fetch_sub(BATCH as i64, Ordering::SeqCst) <= 0 {
                    budget.fetch_add(BATCH as i64, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                // ~3,000 events a second from the four: forwarding goes on
                // through most of a life, so kills land while it does.
                tokio::time::sleep(PACE).await;
                let events: Vec<u64> = (next..next + BATCH).collect();
                next += BATCH;
                let wanted = Wanted {
                    p,
                    events: &events,
                    event: "resends",
                };
                if !post_until_acked(&c, &url, &stop, &retries, wanted, &ledger, &problems).await {
                    break 'batches;
                }
            }
        }));
    }

    let mut summary = Summary::default();
    let mut per_kill: Vec<Kill> = Vec::new();
    // Markers the collector accepted in earlier lives; deliveries seen so far.
    let mut before: HashSet<String> = HashSet::new();
    let mut seen = 0usize;
    let mut within_life = 0u64;
    for run in 0..kills {
        // EVSPOOL_TORTURE_DEBUG=1: what each open found (its INFO lines say
        // how many entries past the checkpoint it adopted) and each kill left.
        let debug = std::env::var_os("EVSPOOL_TORTURE_DEBUG").is_some();
        let proc = if debug {
            crate::proc::ev()
                .rust_log("info")
                .spawn_run(&s.dir, Some(&s.config), &[], &[])
        } else {
            spawn(&s.dir, &s.config)
        };
        let mut d = listening(proc, &s.dir).await;
        if debug {
            let st = d.stats().await;
            let adopted: Vec<String> = d
                .stderr()
                .lines()
                .filter(|l| l.contains("Re-indexed"))
                .map(str::to_owned)
                .collect();
            eprintln!(
                "life {run} opened: live {}, recovered {}, {adopted:?}",
                live(&st, "events"),
                st["recovered"]
            );
        }
        budget.store(PER_LIFE, Ordering::SeqCst);
        *url.write().unwrap() = Some(d.url.clone());
        // Lives of every length: short ones never reach sled's background
        // flush (500 ms by default), long ones reach many.
        let life_ms = match run % 3 {
            0 => fastrand::u64(100..400),
            1 => fastrand::u64(400..1_000),
            _ => fastrand::u64(1_000..2_000),
        };
        let born = Instant::now();
        tokio::time::sleep(Duration::from_millis(life_ms)).await;
        let st = d.stats().await;
        let leased = st["topics"]["events"]["leased"]["events"]
            .as_u64()
            .unwrap_or(0);
        let killed = d.proc.kill9().await;
        if debug {
            eprintln!("life {run} killed: {}", st["topics"]["events"]);
        }
        let life_ms = born.elapsed().as_millis() as u64;
        *url.write().unwrap() = None;
        budget.store(0, Ordering::SeqCst);
        if !killed {
            problems.lock().unwrap().push(format!(
                "run {run}: the daemon exited on its own before the kill:\n{}",
                d.proc.stderr()
            ));
            continue;
        }
        summary.kills += 1;
        // A request the daemon sent before the kill may still be landing.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let deliveries = collector.deliveries();
        // This life's deliveries: re-sends of earlier lives' (counted on
        // the kill before), or repeats within the life.
        let mut this_life = HashSet::new();
        let mut resent = 0u64;
        for dl in &deliveries[seen..] {
            if before.contains(&dl.marker) {
                resent += 1;
            } else if !this_life.insert(dl.marker.clone()) {
                within_life += 1;
            }
        }
        seen = deliveries.len();
        if let Some(k) = per_kill.last_mut() {
            k.resent = resent;
        }
        before.extend(this_life);
        per_kill.push(Kill {
            life_ms,
            leased,
            resent: 0,
        });
    }
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("producers stop within 30 s")
            .expect("producer task");
    }

    // The last start: what the last kill re-sends, then everything left.
    let d = start(&s.dir, &s.config).await;
    let acked: Vec<String> = ledger.lock().unwrap().acked.keys().cloned().collect();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let st = d.stats().await;
        if live(&st, "events") == 0 && {
            let got = collector.distinct_markers();
            acked.iter().all(|m| got.contains(m))
        } {
            break;
        }
        if Instant::now() >= until {
            problems.lock().unwrap().push(format!(
                "the final drain did not finish within 60 s ({} events still live)",
                live(&st, "events")
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    d.stop(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let deliveries = collector.deliveries();
    let mut resent = 0u64;
    let mut this_life = HashSet::new();
    for dl in &deliveries[seen..] {
        if before.contains(&dl.marker) {
            resent += 1;
        } else if !this_life.insert(dl.marker.clone()) {
            within_life += 1;
        }
    }
    if let Some(k) = per_kill.last_mut() {
        k.resent = resent;
    }

    let l = ledger.lock().unwrap();
    let books = l.books(&deliveries);
    summary.sent = l.posted.len() as u64;
    summary.acked = l.acked.len() as u64;
    let mut problems = std::mem::take(&mut *problems.lock().unwrap());
    problems.extend(books.judge(&mut summary));
    let mut lines = Vec::new();
    let (mut total_leased, mut total_resent) = (0, 0);
    for (i, k) in per_kill.iter().enumerate() {
        total_leased += k.leased;
        total_resent += k.resent;
        lines.push(format!(
            "kill {i}: life {} ms, leased at kill {}, re-sent after restart {}",
            k.life_ms, k.leased, k.resent
        ));
        if k.resent > k.leased + RACE_ALLOWANCE {
            problems.push(format!(
                "kill {i} (life {} ms): the restart re-sent {} events already delivered, {} were leased at the kill (allowance {RACE_ALLOWANCE})",
                k.life_ms, k.resent, k.leased
            ));
        }
    }
    if within_life > 0 {
        problems.push(format!(
            "{within_life} events delivered twice within one life (no kill in between)"
        ));
    }
    if summary.acked < 1_000 * kills {
        problems.push(format!(
            "only {} events answered 202 in {kills} lives: too few to test anything",
            summary.acked
        ));
    }
    summary.notes = format!(
        "leased at kills {total_leased}, re-sent after restarts {total_resent}\n    {}",
        lines.join("\n    ")
    );
    (summary, problems)
}
