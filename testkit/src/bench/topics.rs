//! What a topic costs: memory and descriptors of a store with many topics.
//!
//! A child process opens a fresh store with the default configuration and
//! writes 100 events to each of N topics — [`Fill::Durable`]: one
//! `enqueue_batch_durable` per topic; [`Fill::Buffered`]: one buffered
//! `enqueue` per event, then `sync`, `close` and a reopen — then drains every
//! topic (lease 100, ack). It samples the open
//! descriptors (`/proc/self/fd`) and resident memory every few hundred topics
//! and reports the peaks. The same-run baseline is the same number of events
//! in one topic, so `(RSS_N − RSS_1) / N` is the memory a topic costs.

use super::TOPIC;
use bytes::Bytes;
use evspool::{Queue, QueueConfig};
use std::path::Path;
use std::time::Instant;

/// Events written to each topic.
pub const EVENTS_PER_TOPIC: usize = 100;

/// Descriptors this process holds now.
pub fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Resident memory now (`VmRSS`), in KiB.
pub fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// How the events go in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// One `enqueue_batch_durable` per topic (per 1,000 events).
    Durable,
    /// One buffered `enqueue` per event; then `sync`, `close`, reopen.
    Buffered,
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct TopicsRun {
    /// Most descriptors held at any sample.
    pub peak_fds: u64,
    /// Descriptors before the store was opened.
    pub fds_before: u64,
    /// Most resident memory at any sample, in KiB.
    pub peak_rss_kib: u64,
    /// Most resident memory while filling, in KiB.
    pub fill_rss_kib: u64,
    /// Most body files holding a descriptor at any sample.
    pub peak_open_body_files: u64,
    /// Events per second of the fill and of the drain.
    pub fill_rate: f64,
    /// Events per second of the drain.
    pub drain_rate: f64,
}

/// Writes [`EVENTS_PER_TOPIC`] events to each of `topics` topics (or, with
/// `topics == 1`, `events` events to one) in a fresh store at `dir`, drains
/// them, and returns the peaks.
pub fn run(dir: &Path, topics: usize, events: usize, fill: Fill) -> TopicsRun {
    let payloads = super::payloads();
    let mut out = TopicsRun {
        fds_before: open_fds(),
        ..TopicsRun::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut cfg = QueueConfig::default();
    if let Some(mib) = std::env::var("EVSPOOL_BENCH_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        cfg.cache_capacity = bytesize::ByteSize::mib(mib);
    }
    let q = Queue::open(dir, cfg.clone()).expect("open queue");
    let name = |t: usize| {
        if topics == 1 {
            TOPIC.to_string()
        } else {
            format!("t{t:05}")
        }
    };
    let per_topic = events / topics;
    let sample = |q: &Queue, out: &mut TopicsRun| {
        out.peak_fds = out.peak_fds.max(open_fds());
        out.peak_rss_kib = out.peak_rss_kib.max(vm_rss_kib());
        out.peak_open_body_files = out.peak_open_body_files.max(q.stats().open_body_files);
    };
    let start = Instant::now();
    let mut written = 0;
    for t in 0..topics {
        let mut left = per_topic;
        while left > 0 {
            let n = left.min(1_000);
            let batch: Vec<Bytes> = (0..n)
                .map(|i| payloads[(written + i) % payloads.len()].clone())
                .collect();
            match fill {
                Fill::Durable => {
                    rt.block_on(q.enqueue_batch_durable(&name(t), batch))
                        .expect("durable batch");
                }
                Fill::Buffered => {
                    let topic = name(t);
                    for p in batch {
                        let _ = q.enqueue(&topic, p).expect("buffered enqueue");
                    }
                }
            }
            written += n;
            left -= n;
            if topics == 1 && written % 50_000 == 0 {
                sample(&q, &mut out);
            }
        }
        if t % 250 == 0 {
            sample(&q, &mut out);
        }
    }
    rt.block_on(q.sync()).expect("sync");
    sample(&q, &mut out);
    out.fill_rate = written as f64 / start.elapsed().as_secs_f64();
    out.fill_rss_kib = out.peak_rss_kib;
    assert_eq!(q.stats().total.events, written as u64);
    let q = if fill == Fill::Buffered {
        q.close();
        drop(q);
        let q = Queue::open(dir, cfg).expect("reopen queue");
        sample(&q, &mut out);
        assert_eq!(
            q.stats().total.events,
            written as u64,
            "every event after the reopen"
        );
        q
    } else {
        q
    };
    let start = Instant::now();
    let mut drained = 0;
    for t in 0..topics {
        while let Some(lease) = q.lease(&name(t), 100).expect("lease") {
            drained += lease.len();
            q.ack(lease).expect("ack");
            if topics == 1 && drained % 50_000 == 0 {
                sample(&q, &mut out);
            }
        }
        if t % 250 == 0 {
            sample(&q, &mut out);
        }
    }
    sample(&q, &mut out);
    out.drain_rate = drained as f64 / start.elapsed().as_secs_f64();
    assert_eq!(drained, written, "every event drained once");
    q.close();
    out
}
