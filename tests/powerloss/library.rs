//! Library producers under power cuts: this test binary re-executes itself as
//! a child (`EVSPOOL_POWERLOSS_CHILD=<store dir>`) that opens the store with
//! `fsync = true` and runs four producers calling `enqueue_durable` in a loop.
//! The child prints one flushed line per fact, so the parent knows of an
//! acknowledgement only once the call returned `Ok`:
//!
//! - `R <text>`: what opening the store had to repair.
//! - `READY <instance>`: the store is open.
//! - `E <id> <marker>`: `enqueue_durable` returned `Ok` for this event.
//! - `X <error>`: a producer stopped on an error.
//!
//! Markers are `<tag>.<producer>.<counter>`; each producer has one call in
//! flight, so the only marker that may be in the store without an `E` line is
//! each producer's next counter.

use crate::check::Judge;
use crate::daemon::{At, notes, wait_for_cut};
use crate::lazyfs::LazyFs;
use evspool::{Enqueued, Queue, QueueConfig};
use evspool_testkit::ledger::{Ledger, Summary};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const CHILD_DIR: &str = "EVSPOOL_POWERLOSS_CHILD";
pub const CHILD_TAG: &str = "EVSPOOL_POWERLOSS_TAG";
const PRODUCERS: u32 = 4;
const TOPIC: &str = "events";

fn qconfig() -> QueueConfig {
    QueueConfig {
        fsync: true,
        chunk_max_events: 50,
        commit_interval: Duration::from_millis(10),
        ..QueueConfig::default()
    }
}

/// The `[queue]` section the CLI uses to open the cut store.
fn config_file(lz: &LazyFs) -> PathBuf {
    let p = lz.work().join("library.toml");
    std::fs::write(
        &p,
        "[queue]\nfsync = true\ncommit_interval = \"10ms\"\nchunk_max_events = 50\n",
    )
    .unwrap();
    p
}

fn emit(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // The parent freezes and kills us; a write error changes nothing.
    let _ = out.write_fmt(line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// The child: open, report, produce until killed.
pub fn child(dir: &str, tag: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async move {
        let q = match Queue::open(dir, qconfig()) {
            Ok(q) => q,
            Err(e) => {
                emit(format_args!("X open: {e}"));
                std::process::exit(3);
            }
        };
        for r in q.stats().recovered {
            emit(format_args!("R {r}"));
        }
        emit(format_args!("READY {}", q.instance_id()));
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            let (q, tag) = (q.clone(), tag.to_string());
            tasks.push(tokio::spawn(async move {
                for n in 0u64.. {
                    let marker = format!("{tag}.{p}.{n}");
                    let payload = format!(r#"{{"event":"powerloss","m":"{marker}"}}"#);
                    match q.enqueue_durable(TOPIC, payload).await {
                        Ok(Enqueued::Accepted(id)) => emit(format_args!("E {id} {marker}")),
                        other => {
                            emit(format_args!("X {marker}: {other:?}"));
                            return;
                        }
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// One child life on `store` (inside the mount), cut `delay` after its spawn.
struct Life {
    phase: &'static str,
    acked: u64,
    problems: Vec<String>,
    freeze: crate::lazyfs::Freeze,
    ready: Option<Duration>,
    cut_after: Duration,
}

async fn life(lz: &mut LazyFs, store: &Path, at: At, tag: &str, ledger: &mut Ledger) -> Life {
    let spawned = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .env(CHILD_DIR, store)
        .env(CHILD_TAG, tag)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let ready_at: std::sync::Arc<std::sync::Mutex<Option<Duration>>> = Default::default();
    let ready_w = ready_at.clone();
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
                    if line.starts_with("READY ") {
                        *ready_w.lock().unwrap() = Some(spawned.elapsed());
                    }
                    lines.push(line);
                }
            }
        }
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let ready_r = ready_at.clone();
    let mut problems: Vec<String> = wait_for_cut(
        at,
        spawned,
        || ready_r.lock().unwrap().is_some(),
        || child.try_wait().unwrap().map(|s| s.to_string()),
    )
    .await
    .into_iter()
    .map(|p| format!("the child: {p}"))
    .collect();
    let cut_after = spawned.elapsed();
    let freeze = lz
        .power_cut(&mut child)
        .unwrap_or_else(|e| panic!("power cut: {e}"));
    let lines = reader.join().expect("reader thread");
    let err = err_reader.join().unwrap_or_default();
    let ready = *ready_at.lock().unwrap();
    let mut last: HashMap<u32, u64> = HashMap::new();
    let mut acked = 0;
    for line in &lines {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "E" => {
                let (id, marker) = rest.split_once(' ').expect("id and marker");
                let mut parts = marker.rsplitn(3, '.');
                let n: u64 = parts.next().unwrap().parse().expect("counter");
                let p: u32 = parts.next().unwrap().parse().expect("producer");
                let e = last.entry(p).or_insert(n);
                *e = (*e).max(n);
                ledger.posted.insert(marker.to_string());
                if ledger
                    .acked
                    .insert(marker.to_string(), id.to_string())
                    .is_some()
                {
                    problems.push(format!("{marker} acknowledged twice"));
                }
                acked += 1;
            }
            "X" => problems.push(format!("the child failed: {rest} (stderr: {})", err.trim())),
            "READY" | "R" => {}
            other => problems.push(format!("unexpected child output {other:?}")),
        }
    }
    // Each producer's next call may have reached the store unacknowledged.
    for p in 0..PRODUCERS {
        let next = last.get(&p).map_or(0, |n| n + 1);
        ledger.posted.insert(format!("{tag}.{p}.{next}"));
    }
    Life {
        phase: if ready.is_some() {
            "producing"
        } else {
            "opening"
        },
        acked,
        problems,
        freeze,
        ready,
        cut_after,
    }
}

/// `new_store`: every cut on a new store, early (see [`At::early`]).
/// Otherwise one store that each child reopens; the first life runs 1.2–2 s
/// after the store is open, later cuts land at random moments (see [`At::random`]).
pub async fn run(
    lz: &mut LazyFs,
    cuts: u64,
    new_store: bool,
    name: &'static str,
) -> (Summary, Vec<String>) {
    let config = config_file(lz);
    let mut judge = Judge::new(name, true);
    let work = lz.work().to_path_buf();
    let mut ledger = Ledger::default();
    let (mut acked, mut posted) = (0u64, 0u64);
    let mut starts = Vec::new();
    for k in 0..cuts {
        let store_name = if new_store {
            format!("lib{k}")
        } else {
            "libchain".into()
        };
        let when = if new_store {
            At::early()
        } else if k == 0 {
            At::Ready(Duration::from_millis(fastrand::u64(1200..=2000)))
        } else {
            At::random()
        };
        lz.mount().unwrap_or_else(|e| panic!("mount: {e}"));
        let at = lz.mnt.join(&store_name);
        let l = life(lz, &at, when, &format!("l{k}"), &mut ledger).await;
        lz.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
        if let Some(r) = l.ready {
            starts.push(r.as_millis() as u64);
        }
        let label = format!(
            "cut {k} ({}, {}, {} acknowledged by this child)",
            when.label(),
            l.phase,
            l.acked
        );
        {
            let t = &mut judge.tally;
            *t.phases.entry(l.phase.to_string()).or_default() += 1;
            t.max_freeze_ms = t.max_freeze_ms.max(l.freeze.took.as_millis());
            t.unfrozen += l.freeze.running as u64;
        }
        for p in &l.problems {
            judge.problems.push(format!("{label}: {p}"));
        }
        judge.cut_after_ms = Some(l.cut_after.as_millis() as u64);
        let store = lz.root.join(&store_name);
        judge
            .cut(&label, &store, &config, &work, &ledger, l.acked)
            .await;
        if new_store {
            acked += ledger.acked.len() as u64;
            posted += ledger.posted.len() as u64;
            ledger = Ledger::default();
            crate::check::remove_store(&store);
        }
    }
    if !new_store {
        acked = ledger.acked.len() as u64;
        posted = ledger.posted.len() as u64;
    }
    let t = &judge.tally;
    let s = Summary {
        kills: t.cuts,
        sent: posted,
        acked,
        lost: t.lost.len() as u64,
        invented: t.invented.len() as u64,
        duplicates: t.duplicates,
        notes: notes(&judge, &[]).replace("daemon spawn", "child spawn")
            + &if starts.is_empty() {
                String::new()
            } else {
                starts.sort_unstable();
                format!(
                    "; child spawn to open {}–{} ms",
                    starts[0],
                    starts[starts.len() - 1]
                )
            },
        ..Summary::default()
    };
    (s, std::mem::take(&mut judge.problems))
}
