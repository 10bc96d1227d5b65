//! Scenario 1: producers post to the real daemon's `/v1/events` while it
//! forwards to the collector; the daemon is SIGKILLed at random moments and
//! restarted on the same directory (on a new ephemeral port each time).
//!
//! Producers retry a batch that got no 202 against whatever address the daemon
//! has now. Markers are `producer.event.attempt`, so every request carries
//! markers of its own: an attempt the daemon enqueued but never answered is a
//! "maybe" event (delivering it is no invention), and a marker delivered under
//! two ids would mean one request was enqueued twice.

use crate::collector::start_collector;
use crate::proc::{Cfg, client, config_text, listening, live, spawn, start};
use evspool_testkit::ledger::{Ledger, Summary};
use evspool_testkit::setup;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

const PRODUCERS: u64 = 4;
const BATCH: u64 = 20;

pub async fn run(kills: u64) -> (Summary, Vec<String>) {
    let collector = start_collector().await;
    let s = setup(&config_text(&Cfg {
        collector: &collector.url,
        workers: 4,
        batch_size: 50,
        extra_queue: "chunk_max_events = 50",
    }));
    let url: Arc<RwLock<Option<String>>> = Arc::default();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let problems: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let retries = Arc::new(AtomicU64::new(0));

    let mut producers = Vec::new();
    for p in 0..PRODUCERS {
        let (url, ledger, problems, stop, retries) = (
            url.clone(),
            ledger.clone(),
            problems.clone(),
            stop.clone(),
            retries.clone(),
        );
        producers.push(tokio::spawn(async move {
            let c = client(Duration::from_secs(10));
            let mut next = 0u64;
            'batches: while !stop.load(Ordering::SeqCst) {
                let events: Vec<u64> = (next..next + BATCH).collect();
                next += BATCH;
                let wanted = Wanted {
                    p,
                    events: &events,
                    event: "torture",
                };
                if !post_until_acked(&c, &url, &stop, &retries, wanted, &ledger, &problems).await {
                    break 'batches;
                }
            }
        }));
    }

    let mut summary = Summary::default();
    let mut early = 0u64;
    let (mut slowest_start, mut last_start) = (0u64, 0u64);
    let mut acked_per_run_min = u64::MAX;
    for run in 0..kills {
        let spawned = Instant::now();
        let proc = spawn(&s.dir, &s.config);
        if fastrand::u8(..8) == 0 {
            // Now and then, kill it while it is still opening the store.
            tokio::time::sleep(Duration::from_millis(fastrand::u64(0..30))).await;
            let mut proc = proc;
            if proc.kill9().await {
                summary.kills += 1;
                early += 1;
            }
            continue;
        }
        let mut d = listening(proc, &s.dir).await;
        let ms = spawned.elapsed().as_millis() as u64;
        slowest_start = slowest_start.max(ms);
        last_start = ms;
        let before = ledger.lock().unwrap().acked.len() as u64;
        *url.write().unwrap() = Some(d.url.clone());
        tokio::time::sleep(Duration::from_millis(fastrand::u64(150..=600))).await;
        let killed = d.proc.kill9().await;
        *url.write().unwrap() = None;
        if !killed {
            problems.lock().unwrap().push(format!(
                "run {run}: the daemon exited on its own before the kill:\n{}",
                d.proc.stderr()
            ));
        } else {
            summary.kills += 1;
        }
        let after = ledger.lock().unwrap().acked.len() as u64;
        acked_per_run_min = acked_per_run_min.min(after - before);
    }
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("producers stop within 30 s")
            .expect("producer task");
    }
    let forwarded_during_loop = collector.accepted_count();

    // The last start: everything left is forwarded, then a clean SIGTERM.
    let drain_started = Instant::now();
    let d = start(&s.dir, &s.config).await;
    let final_start_ms = drain_started.elapsed().as_millis();
    // Deliveries only grow: what had arrived by now is a prefix of the list.
    let delivered_at_start = collector.accepted_count();
    let acked: Vec<String> = ledger.lock().unwrap().acked.keys().cloned().collect();
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let st = d.stats().await;
        let last_live = live(&st, "events");
        // Building the set of millions of markers is costly: only once nothing is live.
        let all_in = last_live == 0 && {
            let got = collector.distinct_markers();
            acked.iter().all(|m| got.contains(m))
        };
        if std::env::var_os("EVSPOOL_TORTURE_DEBUG").is_some() {
            eprintln!(
                "final drain +{:.2}s: stats {}",
                drain_started.elapsed().as_secs_f64(),
                st["topics"]["events"]
            );
        }
        if all_in {
            if st["quarantined_records"].as_u64() != Some(0) {
                problems
                    .lock()
                    .unwrap()
                    .push(format!("records quarantined after kill -9: {st}"));
            }
            for r in st["recovered"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap_or_default();
                if !r.contains("stale snap.") {
                    problems
                        .lock()
                        .unwrap()
                        .push(format!("opening after kill -9 found damage: {r}"));
                }
            }
            break;
        }
        if Instant::now() >= until {
            problems.lock().unwrap().push(format!(
                "the final drain did not finish within 60 s ({last_live} events still live)"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    d.stop(Duration::from_secs(20)).await;
    // Anything still in flight at SIGTERM has landed by now.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let l = ledger.lock().unwrap();
    let deliveries = collector.deliveries();
    let left_at_start = {
        let got: std::collections::HashSet<&str> = deliveries[..delivered_at_start]
            .iter()
            .map(|d| d.marker.as_str())
            .collect();
        l.acked.keys().filter(|m| !got.contains(m.as_str())).count()
    };
    let books = l.books(&deliveries);
    summary.sent = l.posted.len() as u64;
    summary.acked = l.acked.len() as u64;
    let mut problems = std::mem::take(&mut *problems.lock().unwrap());
    problems.extend(books.judge(&mut summary));
    if forwarded_during_loop == 0 {
        problems.push(
            "nothing was forwarded while producers posted: the scenario tested nothing".into(),
        );
    }
    if summary.acked < 20 * kills {
        problems.push(format!(
            "only {} events answered 202 in {kills} runs: too few to test anything",
            summary.acked
        ));
    }
    summary.notes = format!(
        "{early} kills while opening; {} retried requests; fewest 202s in a run {}; {} forwarded while producing; restart to listening: slowest {slowest_start} ms, last {last_start} ms; final start {final_start_ms} ms, then {left_at_start} acknowledged events left to deliver, all delivered after {drain_s:.1}s",
        retries.load(Ordering::Relaxed),
        if acked_per_run_min == u64::MAX {
            0
        } else {
            acked_per_run_min
        },
        forwarded_during_loop
    );
    (summary, problems)
}

/// Posts one attempt of a batch as `markers` (one event each, named
/// `event`) to the daemon at `base`, recording them as posted; returns the
/// ids of a `202` with one id per event and nothing dropped. Anything else
/// is `None`: a refusal or a short answer is recorded in `problems`, a
/// connection error (the daemon was killed) is not.
pub async fn post_attempt(
    c: &reqwest::Client,
    base: &str,
    event: &str,
    markers: &[String],
    ledger: &Mutex<Ledger>,
    problems: &Mutex<Vec<String>>,
) -> Option<Vec<String>> {
    let body: Vec<serde_json::Value> = markers
        .iter()
        .map(|m| serde_json::json!({"type": "track", "event": event, "m": m}))
        .collect();
    ledger
        .lock()
        .unwrap()
        .posted
        .extend(markers.iter().cloned());
    let resp = c.post(format!("{base}/v1/events")).json(&body).send().await;
    let a = match resp {
        Ok(r) if r.status() == 202 => r.json::<serde_json::Value>().await.ok()?,
        Ok(r) => {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            problems
                .lock()
                .unwrap()
                .push(format!("ingest answered {status}: {text}"));
            return None;
        }
        // The daemon was killed: the caller retries against the next one.
        Err(_) => return None,
    };
    let ids: Vec<String> = a["ids"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if ids.len() != markers.len() || a["dropped"].as_u64() != Some(0) {
        problems
            .lock()
            .unwrap()
            .push(format!("a 202 without one id per event: {a}"));
        return None;
    }
    Some(ids)
}

/// One producer's batch: producer `p`'s `events`, posted as `event`.
pub struct Wanted<'a> {
    pub p: u64,
    pub events: &'a [u64],
    pub event: &'a str,
}

/// Posts a batch to whichever daemon is up (`url`) until one answers `202`
/// for it, each attempt as new markers `p.event.attempt`, and records the
/// ids acknowledged; counts attempts after the first in `retries`. `false`
/// once `stop` is set.
pub async fn post_until_acked(
    c: &reqwest::Client,
    url: &RwLock<Option<String>>,
    stop: &AtomicBool,
    retries: &AtomicU64,
    wanted: Wanted<'_>,
    ledger: &Mutex<Ledger>,
    problems: &Mutex<Vec<String>>,
) -> bool {
    for attempt in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let Some(base) = url.read().unwrap().clone() else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if attempt > 0 {
            retries.fetch_add(1, Ordering::Relaxed);
        }
        let markers: Vec<String> = wanted
            .events
            .iter()
            .map(|e| format!("{}.{e}.{attempt}", wanted.p))
            .collect();
        let Some(ids) = post_attempt(c, &base, wanted.event, &markers, ledger, problems).await
        else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut l = ledger.lock().unwrap();
        for (m, id) in markers.into_iter().zip(ids) {
            l.acked.insert(m, id);
        }
        return true;
    }
    unreachable!("attempts are unbounded")
}
