//! Scenario 4: a steady producer at a fixed rate while the collector is down
//! (its port refuses connections), with a ceiling the outage overflows. The
//! ceiling policy must be applied exactly — the daemon's drop counters (stats
//! and `/metrics`) equal sent − stored, the store never holds more than the
//! ceiling — and once the collector is back everything stored is delivered.

use crate::collector::start_collector;
use crate::proc::{Cfg, client, config_text, live, start};
use evspool_testkit::ledger::{Ledger, Summary};
use evspool_testkit::setup;
use std::time::{Duration, Instant};

const MAX_EVENTS: u64 = 2_000;
const PER_REQUEST: u64 = 10;
/// One request every 25 ms: 400 events/s.
const PERIOD: Duration = Duration::from_millis(25);

fn metric(text: &str, reason: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.starts_with("evspool_events_dropped_total")
                && l.contains(&format!("reason=\"{reason}\""))
                && l.contains("topic=\"events\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

pub async fn run(policy: &str, outage: Duration) -> (Summary, Vec<String>) {
    let collector = start_collector().await;
    collector.down().await;
    let extra = format!(
        "chunk_max_events = 50\n\n[queue.ceiling]\nmax_events = {MAX_EVENTS}\nmax_bytes = \"1MiB\"\npolicy = \"{policy}\"\n"
    );
    let s = setup(&config_text(&Cfg {
        collector: &collector.url,
        workers: 4,
        batch_size: 50,
        extra_queue: &extra,
    }));
    let d = start(&s.dir, &s.config).await;
    let c = client(Duration::from_secs(10));
    let mut ledger = Ledger::default();
    let mut problems = Vec::new();
    let mut dropped_in_answers = 0u64;
    let mut max_seen = (0u64, 0u64);
    let mut late_ticks = 0u64;
    let started = Instant::now();
    let mut next = started;
    let mut last_sample = started;
    let mut i = 0u64;
    while started.elapsed() < outage {
        let markers: Vec<String> = (0..PER_REQUEST)
            .map(|k| format!("{policy}.{i}.{k}"))
            .collect();
        i += 1;
        let body: Vec<serde_json::Value> = markers
            .iter()
            .map(|m| serde_json::json!({"type": "track", "event": "outage", "m": m}))
            .collect();
        ledger.posted.extend(markers.iter().cloned());
        let r = c
            .post(format!("{}/v1/events", d.url))
            .json(&body)
            .send()
            .await
            .expect("the daemon answers during the outage");
        assert_eq!(r.status(), 202, "ingest during the outage");
        let a: serde_json::Value = r.json().await.unwrap();
        let ids: Vec<String> = a["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        let dropped = a["dropped"].as_u64().unwrap();
        assert_eq!(ids.len() as u64 + dropped, PER_REQUEST, "{a}");
        dropped_in_answers += dropped;
        // Under drop_newest the accepted events are the first of the request.
        for (m, id) in markers.into_iter().zip(ids) {
            ledger.acked.insert(m, id);
        }
        if last_sample.elapsed() >= Duration::from_millis(250) {
            last_sample = Instant::now();
            let st = d.stats().await;
            let (e, b) = (
                st["total"]["events"].as_u64().unwrap(),
                st["total"]["bytes"].as_u64().unwrap(),
            );
            max_seen = (max_seen.0.max(e), max_seen.1.max(b));
        }
        next += PERIOD;
        let now = Instant::now();
        if next > now {
            tokio::time::sleep(next - now).await;
        } else {
            late_ticks += 1;
        }
    }
    let produce_s = started.elapsed().as_secs_f64();
    let sent = ledger.posted.len() as u64;
    let st = d.stats().await;
    let stored = live(&st, "events");
    let newest = st["drops"]["ceiling_newest"].as_u64().unwrap_or(0);
    let oldest = st["drops"]["ceiling_oldest"].as_u64().unwrap_or(0);
    let metrics = c
        .get(format!("{}/metrics", d.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (m_newest, m_oldest) = (
        metric(&metrics, "ceiling_newest"),
        metric(&metrics, "ceiling_oldest"),
    );
    max_seen = (
        max_seen.0.max(st["total"]["events"].as_u64().unwrap()),
        max_seen.1.max(st["total"]["bytes"].as_u64().unwrap()),
    );
    if collector.accepted_count() != 0 {
        problems.push("the collector was down, yet events were delivered".into());
    }
    if max_seen.0 > MAX_EVENTS || max_seen.1 > 1 << 20 {
        problems.push(format!(
            "the store held {} events / {} bytes, over the ceiling of {MAX_EVENTS} / 1 MiB",
            max_seen.0, max_seen.1
        ));
    }
    if newest + oldest != sent - stored {
        problems.push(format!(
            "drops counted {newest} newest + {oldest} oldest, but sent {sent} - stored {stored} = {}",
            sent - stored
        ));
    }
    if (m_newest, m_oldest) != (newest, oldest) {
        problems.push(format!(
            "/metrics drops ({m_newest} newest, {m_oldest} oldest) differ from stats ({newest}, {oldest})"
        ));
    }
    if dropped_in_answers != newest {
        problems.push(format!(
            "ingest answers reported {dropped_in_answers} dropped; stats count {newest} ceiling_newest"
        ));
    }
    if sent <= MAX_EVENTS * 2 {
        problems.push(format!(
            "only {sent} sent: the outage did not overflow the ceiling"
        ));
    }
    match policy {
        "drop_newest" if oldest != 0 => {
            problems.push(format!("drop_newest evicted {oldest} old events"))
        }
        "drop_oldest" if oldest == 0 => problems.push("drop_oldest evicted nothing".into()),
        _ => {}
    }

    // The collector comes back: everything stored is delivered.
    let recovery = Instant::now();
    collector.up().await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let st = d.stats().await;
        if live(&st, "events") == 0 && collector.distinct_markers().len() as u64 >= stored {
            break;
        }
        if Instant::now() >= until {
            problems.push(format!(
                "60 s after the collector came back, {} events were still live",
                live(&st, "events")
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovery_s = recovery.elapsed().as_secs_f64();
    d.stop(Duration::from_secs(20)).await;

    let books = ledger.books(&collector.deliveries());
    let mut summary = Summary {
        sent,
        acked: ledger.acked.len() as u64,
        ..Summary::default()
    };
    // Under drop_oldest, acknowledged events are evicted by design (counted):
    // lost is what is missing beyond the counted evictions.
    let evicted = oldest;
    let mut judged = books.judge(&mut summary);
    let missing = summary.lost;
    summary.lost = missing.saturating_sub(evicted);
    if policy == "drop_oldest" {
        judged.retain(|p| !p.contains("never reached the collector"));
        if missing != evicted {
            problems.push(format!(
                "{missing} acknowledged events missing at the collector, {evicted} evictions counted"
            ));
        }
    }
    problems.extend(judged);
    if summary.delivered != summary.acked - evicted {
        problems.push(format!(
            "delivered {} != accepted {} - evicted {evicted}",
            summary.delivered, summary.acked
        ));
    }
    // Which events survived: drop_newest keeps the first ones sent (nothing was
    // delivered to make room), drop_oldest the last ones (bar chunks that were
    // leased by a failing worker when the eviction came).
    let requests = i;
    let window = MAX_EVENTS / PER_REQUEST;
    let kept: Vec<u64> = collector
        .distinct_markers()
        .iter()
        .filter_map(|m| m.split('.').nth(1)?.parse::<u64>().ok())
        .collect();
    let first_kept = kept.iter().filter(|r| **r < window).count();
    let last_kept = kept.iter().filter(|r| **r >= requests - window).count();
    if policy == "drop_newest" && first_kept as u64 != MAX_EVENTS {
        problems.push(format!(
            "drop_newest delivered {first_kept} of the first {MAX_EVENTS} events sent, not all of them"
        ));
    }
    summary.notes = format!(
        "delivered {first_kept} of the first {MAX_EVENTS} sent, {last_kept} of the last {MAX_EVENTS}; {policy}, ceiling {MAX_EVENTS} events; outage {produce_s:.1}s at {} ev/s ({late_ticks} late ticks); stored {stored} (peak {} events, {} bytes); drops: {newest} newest + {oldest} oldest (stats = metrics = sent - stored); recovery {recovery_s:.1}s",
        PER_REQUEST * 1000 / PERIOD.as_millis() as u64,
        max_seen.0,
        max_seen.1
    );
    (summary, problems)
}
