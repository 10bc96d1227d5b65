//! `evspool compact` and `evspool replay` under power cuts, with `fsync = true`.
//!
//! The store (live events and dead letters, written through the library on
//! the mount, closed, then a power cut with nothing running) is copied once as
//! the pristine store; every cut starts from that copy, runs the command on
//! the mount, and cuts at a random moment of its run (or just after it ends).
//! Compaction must keep every event in its state (queued or dead) under its
//! id; replay must leave each dead letter either still dead or queued —
//! never both, never gone — and every queued event queued.

use crate::check::{Judge, copy_dir, inspect};
use crate::daemon::{notes, write_config};
use crate::lazyfs::LazyFs;
use evspool::{Queue, QueueConfig, Settlement};
use evspool_testkit::daemon::Evspool;
use evspool_testkit::ledger::{Delivered, Ledger, Summary};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

const TOPIC: &str = "events";
const PAD: &str = "................................................................................................................................";

fn payload(kind: &str, i: u64) -> String {
    format!(r#"{{"event":"{kind}","m":"{kind}.{i}","pad":"{PAD}"}}"#)
}

/// Writes `n_dead` dead letters then `n_live` queued events through the
/// library (`fsync = true`) and closes the store; returns marker → id of both.
async fn populate(dir: &Path, n_dead: u64, n_live: u64) -> (Ledger, HashSet<String>) {
    let q = Queue::open(
        dir,
        QueueConfig {
            fsync: true,
            chunk_max_events: 50,
            commit_interval: Duration::from_millis(10),
            ..QueueConfig::default()
        },
    )
    .expect("open to populate");
    let mut ledger = Ledger::default();
    let mut dead_markers = HashSet::new();
    for (kind, n) in [("dead", n_dead), ("live", n_live)] {
        for i in 0..n {
            let id = q.enqueue(TOPIC, payload(kind, i)).unwrap();
            let id = id.id().expect("accepted").to_string();
            let m = format!("{kind}.{i}");
            ledger.posted.insert(m.clone());
            ledger.acked.insert(m.clone(), id);
            if kind == "dead" {
                dead_markers.insert(m);
            }
        }
        q.sync().await.unwrap();
        if kind == "dead" {
            let mut dead = 0;
            while let Some(lease) = q.lease(TOPIC, 500).unwrap() {
                let mut s = Settlement::delivered();
                for e in lease.events() {
                    s = s.dead(e.seq(), "http 400: poison event in batch");
                }
                dead += q.settle(lease, s).unwrap().dead;
            }
            assert_eq!(dead, n_dead, "every leased event was dead-lettered");
        }
    }
    q.sync().await.unwrap();
    tokio::task::spawn_blocking(move || {
        q.close();
        drop(q);
    })
    .await
    .unwrap();
    (ledger, dead_markers)
}

/// Runs `evspool ARGS` on the mounted store to completion; returns its duration.
fn timed(store: &Path, config: &Path, args: &[&str]) -> Duration {
    let started = Instant::now();
    let out = Evspool::torture()
        .command(store, Some(config))
        .args(args)
        .output()
        .expect("running evspool");
    assert!(
        out.status.success(),
        "evspool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

fn replace_with(store: &Path, pristine: &Path) {
    let _ = std::fs::remove_dir_all(store);
    copy_dir(pristine, store);
}

/// `replay`: false for compaction.
pub async fn run(
    lz: &mut LazyFs,
    cuts: u64,
    replay: bool,
    n_dead: u64,
    n_live: u64,
    name: &'static str,
) -> (Summary, Vec<String>) {
    let config = write_config(lz, true);
    let mut judge = Judge::new(name, true);
    let work = lz.work().to_path_buf();
    let store = lz.root.join("store");
    let at = lz.mnt.join("store");

    // The pristine store: populated, closed, then the power goes.
    lz.mount().unwrap_or_else(|e| panic!("mount: {e}"));
    let (ledger, dead0) = populate(&at, n_dead, n_live).await;
    lz.clear_cache()
        .unwrap_or_else(|e| panic!("clear cache: {e}"));
    lz.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
    *judge
        .tally
        .phases
        .entry("after a clean close".into())
        .or_default() += 1;
    let base = inspect(&store, &config, &work).await;
    let v = base.verdict(&ledger);
    judge
        .record(
            "the populated store, cut after a clean close",
            &store,
            &config,
            &work,
            &base,
            &v,
            n_dead + n_live,
        )
        .await;
    let pristine = work.join("pristine");
    copy_dir(&store, &pristine);

    // How long the command takes on the mount, on a throwaway copy.
    let args: Vec<&str> = if replay {
        vec!["replay", "--topic", TOPIC]
    } else {
        vec!["compact"]
    };
    let probe = lz.root.join("probe");
    replace_with(&probe, &pristine);
    lz.mount().unwrap_or_else(|e| panic!("mount: {e}"));
    let t = timed(&lz.mnt.join("probe"), &config, &args);
    lz.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
    std::fs::remove_dir_all(&probe).unwrap();

    let t_us = t.as_micros() as u64;
    for k in 0..cuts {
        replace_with(&store, &pristine);
        // Every fourth cut aims at the end of the run (the swap, the last pages).
        let delay = Duration::from_micros(if k % 4 == 3 {
            fastrand::u64(t_us * 7 / 10..=t_us * 11 / 10)
        } else {
            fastrand::u64(0..=t_us * 11 / 10)
        });
        lz.mount().unwrap_or_else(|e| panic!("mount: {e}"));
        let mut p = Evspool::torture().spawn(&at, Some(&config), &args, &[]);
        tokio::time::sleep(delay).await;
        let finished = p.exited();
        let freeze = lz
            .power_cut(&mut p.child)
            .unwrap_or_else(|e| panic!("power cut: {e}"));
        let stderr = p.stderr();
        drop(p);
        lz.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
        let phase = match finished {
            Some(s) if s.success() => "after it finished".to_string(),
            Some(s) => {
                judge.problems.push(format!(
                    "cut {k}: `evspool {}` failed before the cut ({s}): {}",
                    args.join(" "),
                    stderr.trim()
                ));
                "after it failed".to_string()
            }
            None => {
                let old = store.join("db.old").exists();
                let third = (delay.as_micros() as u64 * 3 / t_us.max(1)).min(3);
                if old {
                    "with db.old present".to_string()
                } else {
                    [
                        "first third",
                        "second third",
                        "last third",
                        "past the probe's time",
                    ][third as usize]
                        .to_string()
                }
            }
        };
        {
            let t = &mut judge.tally;
            *t.phases.entry(phase.clone()).or_default() += 1;
            t.max_freeze_ms = t.max_freeze_ms.max(freeze.took.as_millis());
            t.unfrozen += freeze.running as u64;
        }
        let label = format!(
            "cut {k} ({} ms into a {} ms `{}`, {phase})",
            delay.as_millis(),
            t.as_millis(),
            args.join(" ")
        );
        let insp = inspect(&store, &config, &work).await;
        let v = insp.verdict(&ledger);
        judge
            .record(&label, &store, &config, &work, &insp, &v, 0)
            .await;
        // States: compaction keeps each event's; replay may only move dead to queued.
        let live: HashSet<&str> = insp.live.iter().map(|d| d.marker.as_str()).collect();
        let dead: HashSet<&str> = insp.dead.iter().map(|d| d.marker.as_str()).collect();
        let moved: Vec<&Delivered> = insp
            .live
            .iter()
            .filter(|d| dead0.contains(&d.marker))
            .collect();
        let revived: Vec<&Delivered> = insp
            .dead
            .iter()
            .filter(|d| !dead0.contains(&d.marker))
            .collect();
        let both = live.intersection(&dead).count();
        let mut wrong = Vec::new();
        if !revived.is_empty() {
            wrong.push(format!(
                "{} queued events became dead letters",
                revived.len()
            ));
        }
        if !replay && !moved.is_empty() {
            wrong.push(format!("{} dead letters became queued events", moved.len()));
        }
        if both > 0 {
            wrong.push(format!("{both} events both dead and queued"));
        }
        if v.duplicates > 0 {
            wrong.push(format!("{} events listed twice", v.duplicates));
        }
        if !wrong.is_empty() {
            judge.problems.push(format!(
                "{label}: {}. {}",
                wrong.join("; "),
                insp.describe()
            ));
        }
    }
    let t_ = &judge.tally;
    let s = Summary {
        kills: t_.cuts,
        sent: n_dead + n_live,
        acked: n_dead + n_live,
        lost: t_.lost.len() as u64,
        invented: t_.invented.len() as u64,
        duplicates: t_.duplicates,
        notes: format!(
            "{n_live} queued + {n_dead} dead; an uncut `{}` takes {} ms on the mount; {}",
            args.join(" "),
            t.as_millis(),
            notes(&judge, &[])
        ),
        ..Summary::default()
    };
    (s, std::mem::take(&mut judge.problems))
}
