//! Scenario 3: `evspool compact` and `evspool replay` SIGKILLed at random
//! moments of their run, the store checked with `evspool export` after each
//! kill.
//!
//! The store holds live events and dead letters (created through the library:
//! leased, then settled dead with a collector-like reason). Compaction must
//! keep both sets exactly; replay must leave every dead letter either still
//! dead or back in the queue — never both, never gone — with its id unchanged.
//! A completed replay is then drained to the collector with `evspool drain`.

use crate::collector::start_collector;
use crate::proc::{Cfg, cli, config_text, ev, evspool, export};
use evspool::{Queue, QueueConfig, Settlement};
use evspool_testkit::daemon::Proc;
use evspool_testkit::ledger::Summary;
use evspool_testkit::setup;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

const TOPIC: &str = "events";
const PAD: &str = "................................................................................................................................";

fn qcfg() -> QueueConfig {
    QueueConfig {
        chunk_max_events: 50,
        commit_interval: Duration::from_millis(10),
        ..QueueConfig::default()
    }
}

fn payload(kind: &str, i: u64) -> String {
    format!(r#"{{"type":"track","event":"{kind}","m":"{kind}.{i}","pad":"{PAD}"}}"#)
}

/// `n_dead` dead letters (the oldest seqs), then `n_live` queued events.
async fn populate(dir: &Path, n_dead: u64, n_live: u64) {
    let q = Queue::open(dir, qcfg()).expect("open to populate");
    for i in 0..n_dead {
        assert!(q.enqueue(TOPIC, payload("dead", i)).unwrap().id().is_some());
    }
    q.sync().await.unwrap();
    let mut dead = 0;
    while let Some(lease) = q.lease(TOPIC, 500).unwrap() {
        let mut s = Settlement::delivered();
        for e in lease.events() {
            s = s.dead(e.seq(), "http 400: poison event in batch");
        }
        dead += q.settle(lease, s).unwrap().dead;
    }
    assert_eq!(dead, n_dead, "every leased event was dead-lettered");
    for i in 0..n_live {
        assert!(q.enqueue(TOPIC, payload("live", i)).unwrap().id().is_some());
    }
    q.sync().await.unwrap();
    let st = q.stats();
    assert_eq!(st.total.events, n_live);
    assert_eq!(st.topics[TOPIC].dead.events, n_dead);
    tokio::task::spawn_blocking(move || {
        q.close();
        drop(q);
    })
    .await
    .unwrap();
}

/// marker → id of one export, plus the ids listed more than once.
fn index(rows: &[(String, String, serde_json::Value)]) -> (BTreeMap<String, String>, u64) {
    let mut m = BTreeMap::new();
    let mut dup = 0;
    for (marker, id, _) in rows {
        if m.insert(marker.clone(), id.clone()).is_some() {
            dup += 1;
        }
    }
    (m, dup)
}

/// (missing, extra-or-changed) of `got` against `want`.
fn diff(
    want: &BTreeMap<String, String>,
    got: &BTreeMap<String, String>,
) -> (Vec<String>, Vec<String>) {
    let missing = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .cloned()
        .collect();
    let extra = got
        .iter()
        .filter(|(k, v)| want.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (missing, extra)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Spawns `evspool ARGS`, sleeps `delay`, SIGKILLs. Returns whether the kill
/// ended it (false: it had finished).
async fn kill_after(dir: &Path, config: &Path, args: &[&str], delay: Duration) -> (bool, Proc) {
    let mut c = evspool(dir, config);
    c.args(args);
    let mut p = ev().spawn_command(c);
    tokio::time::sleep(delay).await;
    let killed = p.kill9().await;
    (killed, p)
}

/// Runs `evspool ARGS` to completion and times it.
async fn timed(dir: &Path, config: &Path, args: &[&str]) -> (Duration, String) {
    let t = Instant::now();
    let (code, out, err) = cli(dir, config, args).await;
    assert_eq!(code, 0, "evspool {args:?}: {out}{err}");
    (t.elapsed(), out)
}

fn random_delay(k: u64, t: Duration) -> Duration {
    let t = t.as_micros() as u64;
    // Every fourth kill aims at the end of the run (the swap, the last pages).
    if k % 4 == 3 {
        Duration::from_micros(fastrand::u64(t * 7 / 10..=t * 11 / 10))
    } else {
        Duration::from_micros(fastrand::u64(0..=t * 12 / 10))
    }
}

pub async fn compaction(kills: u64, n_dead: u64, n_live: u64) -> (Summary, Vec<String>) {
    let s = setup(&config_text(&Cfg {
        collector: "http://127.0.0.1:9",
        workers: 4,
        batch_size: 50,
        extra_queue: "chunk_max_events = 50",
    }));
    let t0 = Instant::now();
    populate(&s.dir, n_dead, n_live).await;
    let populate_s = t0.elapsed().as_secs_f64();
    let (live0, d0) = index(&export(&s.dir, &s.config, TOPIC, false).await);
    let (dead0, d1) = index(&export(&s.dir, &s.config, TOPIC, true).await);
    let export_s = t0.elapsed().as_secs_f64() - populate_s;
    assert_eq!(
        (live0.len() as u64, dead0.len() as u64, d0 + d1),
        (n_live, n_dead, 0)
    );

    let mut summary = Summary {
        sent: n_live + n_dead,
        acked: n_live + n_dead,
        ..Summary::default()
    };
    let mut problems = Vec::new();
    let (mut t, _) = timed(&s.dir, &s.config, &["compact"]).await;
    let t_first = t;
    let mut phases: BTreeMap<&str, u64> = BTreeMap::new();
    let (mut lost, mut invented, mut dups) = (0u64, 0u64, 0u64);
    // Kill until `kills` runs were cut short (a run may finish before its kill).
    for k in 0..kills * 3 {
        if summary.kills >= kills {
            break;
        }
        let delay = random_delay(k, t);
        let old_before = s.dir.join("db.old").exists();
        let (killed, mut p) = kill_after(&s.dir, &s.config, &["compact"], delay).await;
        if !killed {
            let status = p.child.try_wait().ok().flatten();
            if !status.is_some_and(|s| s.success()) {
                problems.push(format!(
                    "compaction run {k} (after {} kills) ended with {status:?}: {}",
                    summary.kills,
                    p.stderr().trim()
                ));
            }
        }
        let (db, old) = (s.dir.join("db").exists(), s.dir.join("db.old").exists());
        let phase = if !killed {
            "finished"
        } else if old && !db {
            "between the renames"
        } else if old && old_before {
            "with a leftover db.old"
        } else if old {
            "after the swap, removing db.old"
        } else if delay < t / 3 {
            "first third"
        } else if delay < t * 2 / 3 {
            "second third"
        } else {
            "last third"
        };
        drop(p);
        *phases.entry(phase).or_default() += 1;
        if !killed {
            // It finished before the kill: aim earlier from now on.
            t = t * 4 / 5;
        }
        if killed {
            summary.kills += 1;
        }
        let (live, dl) = index(&export(&s.dir, &s.config, TOPIC, false).await);
        let (dead, dd) = index(&export(&s.dir, &s.config, TOPIC, true).await);
        let (m1, e1) = diff(&live0, &live);
        let (m2, e2) = diff(&dead0, &dead);
        lost = lost.max((m1.len() + m2.len()) as u64);
        invented = invented.max((e1.len() + e2.len()) as u64);
        dups = dups.max(dl + dd);
        if !(m1.is_empty() && m2.is_empty() && e1.is_empty() && e2.is_empty() && dl + dd == 0) {
            problems.push(format!(
                "after kill {k} ({phase}): live missing {} extra {}, dead missing {} extra {}, duplicates {}; e.g. {:?}",
                m1.len(),
                e1.len(),
                m2.len(),
                e2.len(),
                dl + dd,
                m1.iter().chain(&m2).chain(&e1).chain(&e2).take(5).collect::<Vec<_>>()
            ));
        }
    }
    // A store whose compactions were killed compacts, verifies, and still holds everything.
    let (code, out, err) = cli(&s.dir, &s.config, &["compact"]).await;
    if code != 0 {
        problems.push(format!(
            "compaction after the kills failed (exit {code}): {out}{err}"
        ));
    }
    let (code, out, err) = cli(&s.dir, &s.config, &["verify"]).await;
    if code != 0 {
        problems.push(format!("verify after the kills: exit {code}: {out}{err}"));
    }
    let (live, _) = index(&export(&s.dir, &s.config, TOPIC, false).await);
    let (dead, _) = index(&export(&s.dir, &s.config, TOPIC, true).await);
    if live != live0 || dead != dead0 {
        problems.push("the final compaction changed the store's contents".into());
    }
    summary.delivered = (live.len() + dead.len()) as u64;
    summary.lost = lost;
    summary.invented = invented;
    summary.duplicates = dups;
    summary.notes = format!(
        "{n_live} live + {n_dead} dead (populated in {populate_s:.1}s, exported in {export_s:.1}s); an unkilled compaction takes {:.0} ms; kills landed: {phases:?}",
        t_first.as_secs_f64() * 1000.0
    );
    (summary, problems)
}

pub async fn replay(kills: u64, n_dead: u64, n_live: u64) -> (Summary, Vec<String>) {
    let collector = start_collector().await;
    let s = setup(&config_text(&Cfg {
        collector: &collector.url,
        workers: 4,
        batch_size: 50,
        extra_queue: "chunk_max_events = 50",
    }));
    populate(&s.dir, n_dead, n_live).await;
    let (live0, _) = index(&export(&s.dir, &s.config, TOPIC, false).await);
    let (dead0, _) = index(&export(&s.dir, &s.config, TOPIC, true).await);
    let all0: BTreeMap<String, String> = live0
        .iter()
        .chain(&dead0)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(all0.len() as u64, n_dead + n_live);

    // How long a full replay takes, measured on a copy; a pristine copy also
    // restores the dead letters whenever a run got to finish them all.
    let pristine = s.tmp.path().join("pristine");
    copy_dir(&s.dir, &pristine);
    let copy = s.tmp.path().join("copy");
    copy_dir(&s.dir, &copy);
    let mut startup = Duration::MAX;
    for _ in 0..2 {
        let dry = ["replay", "--topic", TOPIC, "--dry-run"];
        startup = startup.min(timed(&copy, &s.config, &dry).await.0);
    }
    let (t, out) = timed(&copy, &s.config, &["replay", "--topic", TOPIC]).await;
    assert!(out.contains(&format!("{n_dead} events replayed")), "{out}");
    // Kills aim between the end of opening and the end of the run (the part
    // still to do shrinks as dead letters go back to the queue).
    let lo = startup.min(t * 8 / 10).as_micros() as u64;
    let span = (t * 21 / 20).as_micros() as u64 - lo;

    let mut summary = Summary {
        sent: n_live + n_dead,
        acked: n_live + n_dead,
        ..Summary::default()
    };
    let mut problems = Vec::new();
    let (mut partial, mut finished, mut restored) = (0u64, 0u64, 0u64);
    let (mut lost, mut invented, mut dups) = (0u64, 0u64, 0u64);
    let mut dead_left = n_dead;
    for k in 0..kills * 3 {
        if summary.kills >= kills {
            break;
        }
        if dead_left == 0 {
            std::fs::remove_dir_all(&s.dir).unwrap();
            copy_dir(&pristine, &s.dir);
            dead_left = n_dead;
            restored += 1;
        }
        let delay = Duration::from_micros(lo + fastrand::u64(0..=span * dead_left / n_dead));
        let (killed, mut p) =
            kill_after(&s.dir, &s.config, &["replay", "--topic", TOPIC], delay).await;
        if killed {
            summary.kills += 1;
        } else {
            finished += 1;
            let status = p.child.try_wait().ok().flatten();
            if !status.is_some_and(|s| s.success()) {
                problems.push(format!(
                    "a replay ended with {status:?}: {}",
                    p.stderr().trim()
                ));
            }
        }
        drop(p);
        let (live, dl) = index(&export(&s.dir, &s.config, TOPIC, false).await);
        let (dead, dd) = index(&export(&s.dir, &s.config, TOPIC, true).await);
        let both: Vec<&String> = live.keys().filter(|m| dead.contains_key(*m)).collect();
        let union: BTreeMap<String, String> = live
            .iter()
            .chain(&dead)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (missing, extra) = diff(&all0, &union);
        let live_kept = live0.keys().all(|m| live.contains_key(m));
        lost = lost.max(missing.len() as u64);
        invented = invented.max(extra.len() as u64);
        dups = dups.max(dl + dd + both.len() as u64);
        if !missing.is_empty() || !extra.is_empty() || !both.is_empty() || dl + dd > 0 || !live_kept
        {
            problems.push(format!(
                "after kill {k}: missing {}, extra {}, both dead and queued {}, listed twice {}, live events kept {live_kept}; e.g. {:?}",
                missing.len(),
                extra.len(),
                both.len(),
                dl + dd,
                missing.iter().chain(&extra).chain(both.iter().copied()).take(5).collect::<Vec<_>>()
            ));
        }
        let left = dead.len() as u64;
        if killed && left > 0 && left < dead_left {
            partial += 1;
        }
        dead_left = left;
    }
    // Finish the replay, then deliver everything through `evspool drain`.
    let (_, out) = timed(&s.dir, &s.config, &["replay", "--topic", TOPIC]).await;
    let (live, _) = index(&export(&s.dir, &s.config, TOPIC, false).await);
    let (dead, _) = index(&export(&s.dir, &s.config, TOPIC, true).await);
    if !dead.is_empty() || live != all0 {
        problems.push(format!(
            "after a completed replay ({}): {} dead, {} queued of {}",
            out.trim(),
            dead.len(),
            live.len(),
            all0.len()
        ));
    }
    let (code, out, err) = cli(&s.dir, &s.config, &["drain", "--timeout", "60s"]).await;
    if code != 0 {
        problems.push(format!("drain: exit {code}: {out}{err}"));
    }
    let mut delivered: HashMap<String, String> = HashMap::new();
    let mut wrong_id = 0u64;
    for d in collector.deliveries() {
        if all0.get(&d.marker) != Some(&d.id) {
            wrong_id += 1;
        }
        delivered.insert(d.marker, d.id);
    }
    let undelivered = all0.keys().filter(|m| !delivered.contains_key(*m)).count();
    if undelivered > 0 || wrong_id > 0 {
        problems.push(format!(
            "drain after replay: {undelivered} never delivered, {wrong_id} delivered under another id or never enqueued"
        ));
    }
    summary.delivered = delivered.len() as u64;
    summary.lost = lost.max(undelivered as u64);
    summary.invented = invented.max(wrong_id);
    summary.duplicates = dups + (collector.accepted_count() - delivered.len()) as u64;
    summary.notes = format!(
        "{n_dead} dead letters + {n_live} live; an unkilled replay takes {:.0} ms ({:.0} ms opening); {partial} kills left a partial replay, {finished} runs finished before the kill ({restored} times the pristine store was put back)",
        t.as_secs_f64() * 1000.0,
        startup.as_secs_f64() * 1000.0
    );
    (summary, problems)
}

/// The bug check: a compaction killed while it removes `db.old` (after both
/// renames) leaves `db.old` beside the new `db`; the next compaction must still work.
pub async fn leftover_db_old() -> (Summary, Vec<String>) {
    let s = setup(&config_text(&Cfg {
        collector: "http://127.0.0.1:9",
        workers: 4,
        batch_size: 50,
        extra_queue: "chunk_max_events = 50",
    }));
    populate(&s.dir, 10, 100).await;
    // What `remove_dir_all(db.old)` leaves when SIGKILL interrupts it: a partial directory.
    let old = s.dir.join("db.old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("conf"), b"partial").unwrap();
    let mut problems = Vec::new();
    let (code, out, err) = cli(&s.dir, &s.config, &["compact"]).await;
    if code != 0 {
        problems.push(format!(
            "compaction with a leftover db.old beside db fails (exit {code}): {}",
            (out + &err).trim()
        ));
    }
    let (code, out, err) = cli(&s.dir, &s.config, &["compact"]).await;
    if code != 0 {
        problems.push(format!(
            "and so does every later compaction (exit {code}): {}",
            (out + &err).trim()
        ));
    }
    let live = export(&s.dir, &s.config, TOPIC, false).await.len();
    let dead = export(&s.dir, &s.config, TOPIC, true).await.len();
    let summary = Summary {
        sent: 110,
        acked: 110,
        delivered: (live + dead) as u64,
        lost: 110u64.saturating_sub((live + dead) as u64),
        ..Summary::default()
    };
    if live + dead != 110 {
        problems.push(format!("{live} live + {dead} dead of 100 + 10"));
    }
    (summary, problems)
}
