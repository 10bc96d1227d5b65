//! `evspool demo`: an in-process collector that goes down, comes back and
//! rate-limits; producers at a steady high rate; a live view; and a final report
//! that proves nothing was lost.
//!
//! The collector speaks Mixpanel's `/track` and remembers every `$insert_id` it
//! accepted, so duplicates (the at-least-once redeliveries) are counted and
//! "suppressed" exactly as Mixpanel's deduplication would.

use crate::daemon::config::DaemonConfig;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use evspool::forward::Forwarder;
use evspool::{Enqueued, Queue, QueueConfig};
use serde::Serialize;
use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const UP: u8 = 0;
const DOWN: u8 = 1;
const LIMITED: u8 = 2;

/// The demo collector's state and what it received.
#[derive(Default)]
struct Collector {
    mode: AtomicU8,
    seen: Mutex<HashSet<String>>,
    received: AtomicU64,
    duplicates: AtomicU64,
    ok: AtomicU64,
    refused_503: AtomicU64,
    limited_429: AtomicU64,
}

async fn track(State(c): State<Arc<Collector>>, headers: HeaderMap, body: Bytes) -> Response {
    match c.mode.load(Ordering::Relaxed) {
        DOWN => {
            c.refused_503.fetch_add(1, Ordering::Relaxed);
            return (StatusCode::SERVICE_UNAVAILABLE, "collector down").into_response();
        }
        LIMITED if fastrand::bool() => {
            c.limited_429.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "slow down",
            )
                .into_response();
        }
        _ => {}
    }
    let form = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = match evspool::ingest::decode_body(
        body,
        headers
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        64 << 20,
    ) {
        Ok(b) => b,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let events = match evspool::ingest::parse_mixpanel(&body, form, None, 100_000) {
        Ok(e) => e,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let mut seen = c.seen.lock().unwrap_or_else(|e| e.into_inner());
    for e in events {
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap_or_default();
        let id = v["properties"]["$insert_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        c.received.fetch_add(1, Ordering::Relaxed);
        if !seen.insert(id) {
            c.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
    c.ok.fetch_add(1, Ordering::Relaxed);
    axum::Json(serde_json::json!({"status": 1, "error": null})).into_response()
}

/// Latency percentiles in microseconds.
#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

fn latency(mut v: Vec<u64>) -> Latency {
    if v.is_empty() {
        return Latency::default();
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p) as usize];
    Latency {
        samples: v.len(),
        p50_us: at(0.5),
        p99_us: at(0.99),
        max_us: *v.last().unwrap_or(&0),
    }
}

/// What the demo proved.
#[derive(Debug, Default, Serialize)]
pub struct DemoReport {
    pub produced: u64,
    pub accepted: u64,
    pub dropped_by_policy: u64,
    pub collector_received: u64,
    pub delivered_unique: u64,
    pub duplicates_suppressed: u64,
    pub lost: u64,
    pub requests_ok: u64,
    pub requests_503: u64,
    pub requests_429: u64,
    pub enqueue_latency_healthy: Latency,
    pub enqueue_latency_outage: Latency,
    pub elapsed_s: f64,
}

impl DemoReport {
    pub fn print(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "evspool demo report")?;
        writeln!(out, "  produced             {}", self.produced)?;
        writeln!(out, "  accepted (stored)    {}", self.accepted)?;
        writeln!(out, "  dropped by policy    {}", self.dropped_by_policy)?;
        writeln!(
            out,
            "  collector received   {} ({} requests ok, {} answered 503, {} answered 429)",
            self.collector_received, self.requests_ok, self.requests_503, self.requests_429
        )?;
        writeln!(out, "  delivered (unique)   {}", self.delivered_unique)?;
        writeln!(
            out,
            "  duplicates           {} (same $insert_id: suppressed downstream)",
            self.duplicates_suppressed
        )?;
        writeln!(out, "  lost                 {}", self.lost)?;
        writeln!(
            out,
            "  enqueue latency      healthy p50 {}us p99 {}us max {}us; during outage p50 {}us p99 {}us max {}us",
            self.enqueue_latency_healthy.p50_us,
            self.enqueue_latency_healthy.p99_us,
            self.enqueue_latency_healthy.max_us,
            self.enqueue_latency_outage.p50_us,
            self.enqueue_latency_outage.p99_us,
            self.enqueue_latency_outage.max_us
        )?;
        writeln!(out, "  elapsed              {:.1}s", self.elapsed_s)?;
        if self.lost == 0 {
            writeln!(
                out,
                "RESULT: nothing lost: every accepted event reached the collector."
            )
        } else {
            writeln!(out, "RESULT: {} events lost", self.lost)
        }
    }
}

/// `12345` as `12.3k`, `1234567` as `1.2M`: the live line stays short.
fn count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

/// The demo's live line: at most 77 columns, so it fits an 80-column terminal
/// with the spinner (a narrower one cuts it: see `wide_msg`).
fn live_line(
    t: Duration,
    collector: &str,
    enqueued: u64,
    sent: u64,
    retried: u64,
    depth: u64,
) -> String {
    format!(
        "{:>5.1}s collector {collector:<11} in {:<6} sent {:<6} retry {:<6} queued {}",
        t.as_secs_f64(),
        count(enqueued),
        count(sent),
        count(retried),
        count(depth)
    )
}

/// Runs the demo. Uses a temporary store unless `keep` (then `dir`).
pub async fn run(
    dir: &Path,
    duration: Duration,
    rate: u64,
    keep: bool,
) -> anyhow::Result<DemoReport> {
    let tmp = tempfile::Builder::new().prefix("evspool-demo-").tempdir()?;
    let dir = if keep {
        dir.to_path_buf()
    } else {
        tmp.path().join("store")
    };

    let collector = Arc::new(Collector::default());
    let app = axum::Router::new()
        .route("/track", axum::routing::post(track))
        .with_state(collector.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let queue_cfg = QueueConfig {
        commit_interval: Duration::from_millis(50),
        ..QueueConfig::default()
    };
    let queue = Queue::open(&dir, queue_cfg)?;
    let mut cfg = DaemonConfig {
        sink: Some(crate::daemon::sinks::demo_mixpanel(&url)?),
        ..DaemonConfig::default()
    };
    crate::daemon::sinks::demo_forwarding(&mut cfg.forward);
    let forwarder: Forwarder = crate::daemon::build_forwarder(&queue, &cfg)?;
    let forwarder = forwarder.spawn();

    let started = Instant::now();
    let secs = duration.as_secs_f64();
    let phase = |t: f64| -> u8 {
        let f = t / secs;
        if (0.25..0.5).contains(&f) {
            DOWN
        } else if (0.5..0.7).contains(&f) {
            LIMITED
        } else {
            UP
        }
    };

    // Producers: two tasks at rate/2 each, sampling every 10th enqueue's latency.
    let produced = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    let lat_healthy = Arc::new(Mutex::new(Vec::new()));
    let lat_outage = Arc::new(Mutex::new(Vec::new()));
    let mut producers = Vec::new();
    for p in 0..2u64 {
        let (queue, produced, accepted, dropped) = (
            queue.clone(),
            produced.clone(),
            accepted.clone(),
            dropped.clone(),
        );
        let (lh, lo, collector) = (lat_healthy.clone(), lat_outage.clone(), collector.clone());
        producers.push(tokio::spawn(async move {
            let per_tick = (rate / 2 / 100).max(1);
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n = 0u64;
            while started.elapsed() < duration {
                tick.tick().await;
                for _ in 0..per_tick {
                    n += 1;
                    let payload = format!(
                        r#"{{"event":"page_view","properties":{{"distinct_id":"user-{}","producer":{p},"n":{n},"path":"/pricing","plan":"pro"}}}}"#,
                        n % 1000
                    );
                    let t0 = Instant::now();
                    let out = queue.enqueue("track", payload.into_bytes());
                    let us = t0.elapsed().as_micros() as u64;
                    produced.fetch_add(1, Ordering::Relaxed);
                    match out {
                        Ok(Enqueued::Accepted(_)) => accepted.fetch_add(1, Ordering::Relaxed),
                        _ => dropped.fetch_add(1, Ordering::Relaxed),
                    };
                    if n.is_multiple_of(10) {
                        let target = if collector.mode.load(Ordering::Relaxed) == UP { &lh } else { &lo };
                        target.lock().unwrap_or_else(|e| e.into_inner()).push(us);
                    }
                }
            }
        }));
    }

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    // `wide_msg` cuts the line at the terminal's width: it never wraps.
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {wide_msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    // Warnings (the collector going down, the breaker) print above the line.
    let live = crate::cli::output::live(&bar);
    let names = ["up", "DOWN 503", "limited 429"];
    let drain_deadline = duration + Duration::from_secs(45);
    loop {
        let t = started.elapsed();
        let mode = if t < duration {
            phase(t.as_secs_f64())
        } else {
            UP
        };
        collector.mode.store(mode, Ordering::Relaxed);
        let stats = queue.stats();
        let fwd = forwarder.stats();
        let f = fwd.get("track").cloned().unwrap_or_default();
        let depth = stats.total.events;
        bar.set_message(live_line(
            t,
            names[mode as usize],
            accepted.load(Ordering::Relaxed),
            f.delivered,
            f.retried,
            depth,
        ));
        bar.tick();
        let producing = producers.iter().any(|p| !p.is_finished());
        if !producing && depth == 0 {
            break;
        }
        if t > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(live);
    bar.finish_and_clear();
    for p in producers {
        let _ = p.await;
    }
    // Let the last commits and deliveries land.
    let _ = forwarder.drain(Duration::from_secs(20)).await;
    forwarder.shutdown(Duration::from_secs(5)).await;
    server.abort();

    let unique = collector
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .len() as u64;
    let accepted = accepted.load(Ordering::Relaxed);
    let report = DemoReport {
        produced: produced.load(Ordering::Relaxed),
        accepted,
        dropped_by_policy: dropped.load(Ordering::Relaxed),
        collector_received: collector.received.load(Ordering::Relaxed),
        delivered_unique: unique,
        duplicates_suppressed: collector.duplicates.load(Ordering::Relaxed),
        lost: accepted.saturating_sub(unique),
        requests_ok: collector.ok.load(Ordering::Relaxed),
        requests_503: collector.refused_503.load(Ordering::Relaxed),
        requests_429: collector.limited_429.load(Ordering::Relaxed),
        enqueue_latency_healthy: latency(std::mem::take(
            &mut *lat_healthy.lock().unwrap_or_else(|e| e.into_inner()),
        )),
        enqueue_latency_outage: latency(std::mem::take(
            &mut *lat_outage.lock().unwrap_or_else(|e| e.into_inner()),
        )),
        elapsed_s: started.elapsed().as_secs_f64(),
    };
    tokio::task::spawn_blocking(move || queue.close()).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_line_fits_an_80_column_terminal_at_its_widest() {
        let line = live_line(
            Duration::from_secs_f64(123.4),
            "limited 429",
            123_456_789,
            123_456_789,
            9_876_543,
            1_499_999_999,
        );
        // The spinner and a space come before it.
        assert!(
            line.chars().count() + 2 <= 80,
            "{} columns: {line}",
            line.chars().count()
        );
        assert!(line.contains("in 123.5M"), "{line}");
        assert!(line.contains("queued 1.5G"), "{line}");
    }
}
