//! The daemon under power cuts: `evspool run` with `active = false` (events
//! stay on disk) on a store inside the LazyFS mount, four producers posting
//! NDJSON batches of 1–50 events to `/v1/events`, each event with a unique
//! marker. An event counts as acknowledged once its request got a 202 with
//! its id: the daemon sends a 202 only after the durable commit, so any 202
//! the client receives was sent before the freeze.

use crate::check::Judge;
use crate::lazyfs::{Freeze, LazyFs};
use evspool_testkit::daemon::{Evspool, Proc, listening_url};
use evspool_testkit::ledger::{Ledger, Summary};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PRODUCERS: u64 = 4;

/// The daemon config: store only, commit every 10 ms, default sled flush.
pub fn config_text(fsync: bool) -> String {
    format!(
        r#"active = false

[server]
listen = "127.0.0.1:0"
shutdown_deadline = "5s"

[queue]
fsync = {fsync}
commit_interval = "10ms"
chunk_max_events = 50
"#
    )
}

pub fn write_config(lz: &LazyFs, fsync: bool) -> PathBuf {
    let p = lz.work().join("evspool.toml");
    std::fs::write(&p, config_text(fsync)).unwrap();
    p
}

/// Producers posting to one daemon until stopped.
struct Producers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    acked: Arc<AtomicU64>,
    refused: Arc<Mutex<Vec<String>>>,
}

fn start_producers(url: &str, tag: &str, ledger: &Arc<Mutex<Ledger>>) -> Producers {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for p in 0..PRODUCERS {
        let (stop, acked, refused, ledger) =
            (stop.clone(), acked.clone(), refused.clone(), ledger.clone());
        let url = format!("{url}/v1/events");
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let c = evspool_testkit::client_builder(Duration::from_secs(20))
                .pool_max_idle_per_host(4)
                .build()
                .unwrap();
            let mut next = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let n = fastrand::u64(1..=50);
                let markers: Vec<String> =
                    (next..next + n).map(|i| format!("{tag}.{p}.{i}")).collect();
                next += n;
                let mut body = String::new();
                for m in &markers {
                    body.push_str(&format!("{{\"event\":\"powerloss\",\"m\":\"{m}\"}}\n"));
                }
                ledger
                    .lock()
                    .unwrap()
                    .posted
                    .extend(markers.iter().cloned());
                let r = c
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 202 => {
                        let Ok(a) = r.json::<serde_json::Value>().await else {
                            continue;
                        };
                        let ids: Vec<String> = a["ids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|i| i.as_str().map(str::to_owned))
                            .collect();
                        if ids.len() != markers.len() {
                            refused
                                .lock()
                                .unwrap()
                                .push(format!("a 202 without one id per event: {a}"));
                            continue;
                        }
                        acked.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        let mut l = ledger.lock().unwrap();
                        for (m, id) in markers.into_iter().zip(ids) {
                            l.acked.insert(m, id);
                        }
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        refused.lock().unwrap().push(format!("{status}: {text}"));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // The daemon is frozen or gone: the cut is happening.
                    Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }));
    }
    Producers {
        stop,
        tasks,
        acked,
        refused,
    }
}

impl Producers {
    /// Stops the producers (bounded); returns the events they got 202s for.
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("producers stop within 30 s")
                .expect("producer task");
        }
        let refused = std::mem::take(&mut *self.refused.lock().unwrap());
        (self.acked.load(Ordering::Relaxed), refused)
    }
}

/// When a cut lands: a time after the program was spawned, or after it was
/// ready (listening, or the store open).
#[derive(Clone, Copy, Debug)]
pub enum At {
    Spawn(Duration),
    Ready(Duration),
}

impl At {
    /// An early cut: one in eight while the program opens the store (0–400 ms
    /// after spawn); of the others, half within 150 ms of it being ready (a
    /// new store's first sled sync comes up to `flush_interval`, 500 ms, after
    /// sled opened it), half 0–800 ms after it is ready.
    pub fn early() -> At {
        let ms = |hi| Duration::from_millis(fastrand::u64(0..=hi));
        match fastrand::u8(..16) {
            0..2 => At::Spawn(ms(400)),
            2..9 => At::Ready(ms(150)),
            _ => At::Ready(ms(800)),
        }
    }

    /// A random moment: one in eight within 60 ms of spawn, the others 0–2 s after it.
    pub fn random() -> At {
        if fastrand::u8(..8) == 0 {
            At::Spawn(Duration::from_millis(fastrand::u64(0..=60)))
        } else {
            At::Spawn(Duration::from_millis(fastrand::u64(0..=2000)))
        }
    }

    pub fn label(&self) -> String {
        match self {
            At::Spawn(d) => format!("{} ms after spawn", d.as_millis()),
            At::Ready(d) => format!("{} ms after it was ready", d.as_millis()),
        }
    }
}

/// Waits until the cut moment. `ready` says whether the program is ready now
/// (and is called until it says so); `exited` whether it has exited. Returns
/// problems (a program that exited, or never got ready within 30 s).
pub async fn wait_for_cut(
    at: At,
    spawned: Instant,
    mut ready: impl FnMut() -> bool,
    mut exited: impl FnMut() -> Option<String>,
) -> Vec<String> {
    let mut deadline = match at {
        At::Spawn(d) => Some(spawned + d),
        At::Ready(_) => None,
    };
    let mut is_ready = false;
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Vec::new();
        }
        if !is_ready && ready() {
            is_ready = true;
            if let At::Ready(d) = at {
                deadline = Some(now + d);
            }
        }
        if let Some(status) = exited() {
            return vec![format!("it exited ({status}) before the cut")];
        }
        if deadline.is_none() && now >= spawned + Duration::from_secs(30) {
            return vec!["it was not ready within 30 s".into()];
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One daemon life on `store` (inside the mount), cut at `at`.
pub struct Life {
    /// "opening" (not listening yet) or "serving".
    pub phase: &'static str,
    /// Events this daemon answered 202 for.
    pub acked: u64,
    pub freeze: Freeze,
    /// Non-202 answers, and a daemon that exited on its own.
    pub problems: Vec<String>,
    /// From spawn to listening.
    pub start: Option<Duration>,
    /// From spawn to the freeze.
    pub cut_after: Duration,
}

pub async fn life(
    lz: &mut LazyFs,
    store: &Path,
    config: &Path,
    at: At,
    tag: &str,
    ledger: &Arc<Mutex<Ledger>>,
) -> Life {
    let spawned = Instant::now();
    let mut proc: Proc = Evspool::torture().spawn_run(store, Some(config), &[], &[]);
    let mut producers = None;
    let mut start = None;
    let out = proc.stdout.clone();
    let mut problems = wait_for_cut(
        at,
        spawned,
        || {
            let url = listening_url(&out.lock().unwrap());
            let Some(url) = url else { return false };
            start = Some(spawned.elapsed());
            producers = Some(start_producers(&url, tag, ledger));
            true
        },
        || proc.child.try_wait().unwrap().map(|s| s.to_string()),
    )
    .await;
    if !problems.is_empty() {
        problems[0] = format!(
            "the daemon: {}; stderr: {}",
            problems[0],
            proc.stderr().trim()
        );
    }
    let cut_after = spawned.elapsed();
    let freeze = lz
        .power_cut(&mut proc.child)
        .unwrap_or_else(|e| panic!("power cut: {e}"));
    let (acked, refused) = match producers {
        Some(p) => p.stop().await,
        None => (0, Vec::new()),
    };
    if !refused.is_empty() {
        problems.push(format!(
            "{} requests refused, e.g. {:?}",
            refused.len(),
            &refused[..refused.len().min(3)]
        ));
    }
    Life {
        phase: if start.is_some() {
            "serving"
        } else {
            "opening"
        },
        acked,
        freeze,
        problems,
        start,
        cut_after,
    }
}

fn note_life(judge: &mut Judge, l: &Life, label: &str) {
    judge.cut_after_ms = Some(ms(l.cut_after));
    let t = &mut judge.tally;
    *t.phases.entry(l.phase.to_string()).or_default() += 1;
    t.max_freeze_ms = t.max_freeze_ms.max(l.freeze.took.as_millis());
    t.unfrozen += l.freeze.running as u64;
    for p in &l.problems {
        judge.problems.push(format!("{label}: {p}"));
    }
}

fn summary(judge: &Judge, ledger_acked: u64, posted: u64) -> Summary {
    let t = &judge.tally;
    Summary {
        kills: t.cuts,
        sent: posted,
        acked: ledger_acked,
        lost: t.lost.len() as u64,
        invented: t.invented.len() as u64,
        duplicates: t.duplicates,
        ..Summary::default()
    }
}

/// A copy of the ledger (no lock held across an await).
pub fn snapshot(l: &Arc<Mutex<Ledger>>) -> Ledger {
    let l = l.lock().unwrap();
    Ledger {
        posted: l.posted.clone(),
        acked: l.acked.clone(),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Each cut on a new store, early (see [`At::early`]): the window where a new
/// store's sled data file may not be synced yet.
pub async fn new_store(
    lz: &mut LazyFs,
    cuts: u64,
    fsync: bool,
    name: &'static str,
) -> (Summary, Vec<String>) {
    let config = write_config(lz, fsync);
    let mut judge = Judge::new(name, fsync);
    let (mut acked, mut posted) = (0, 0);
    let mut starts = Vec::new();
    for k in 0..cuts {
        let store_name = format!("new{k}");
        lz.mount().unwrap_or_else(|e| panic!("mount: {e}"));
        let ledger: Arc<Mutex<Ledger>> = Arc::default();
        let when = At::early();
        let at = lz.mnt.join(&store_name);
        let l = life(lz, &at, &config, when, &format!("n{k}"), &ledger).await;
        lz.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
        if let Some(s) = l.start {
            starts.push(ms(s));
        }
        let label = format!(
            "cut {k} ({}, {}, {} acknowledged)",
            when.label(),
            l.phase,
            l.acked
        );
        note_life(&mut judge, &l, &label);
        let store = lz.root.join(&store_name);
        let work = lz.work().to_path_buf();
        let l_ = snapshot(&ledger);
        judge
            .cut(&label, &store, &config, &work, &l_, l.acked)
            .await;
        acked += l_.acked.len() as u64;
        posted += l_.posted.len() as u64;
        crate::check::remove_store(&store);
    }
    let mut s = summary(&judge, acked, posted);
    s.notes = notes(&judge, &starts);
    (s, std::mem::take(&mut judge.problems))
}

/// Chains of cuts on one store that the daemon reopens itself after each cut.
/// `established`: the store first lives through a daemon run stopped with
/// SIGTERM and a power cut after that clean stop; then every cut lands at a
/// random moment (see [`At::random`]). Otherwise chains start on a new store
/// and every cut is early (see [`At::early`]). Every check compares the store with everything acknowledged since
/// the chain began.
pub async fn chain(
    lz: &mut LazyFs,
    cuts: u64,
    chain_len: u64,
    established: bool,
    fsync: bool,
    name: &'static str,
) -> (Summary, Vec<String>) {
    let config = write_config(lz, fsync);
    let mut judge = Judge::new(name, fsync);
    let (mut acked, mut posted) = (0, 0);
    let mut starts = Vec::new();
    let mut done = 0;
    let mut chain_no = 0;
    while done < cuts {
        let store_name = format!("chain{chain_no}");
        let ledger: Arc<Mutex<Ledger>> = Arc::default();
        let store = lz.root.join(&store_name);
        let work = lz.work().to_path_buf();
        if established {
            lz.mount().unwrap_or_else(|e| panic!("mount: {e}"));
            let d = Evspool::torture()
                .start(&lz.mnt.join(&store_name), Some(&config), &[], &[])
                .await;
            let p = start_producers(&d.url, &format!("c{chain_no}e"), &ledger);
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let (n, refused) = p.stop().await;
            assert!(refused.is_empty(), "requests refused: {refused:?}");
            d.stop(Duration::from_secs(20)).await;
            // The power goes after the clean stop, with nothing running.
            lz.clear_cache()
                .unwrap_or_else(|e| panic!("clear cache: {e}"));
            lz.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
            let label = format!("chain {chain_no}: cut after a clean stop ({n} acknowledged)");
            *judge
                .tally
                .phases
                .entry("after a clean stop".into())
                .or_default() += 1;
            judge
                .cut(&label, &store, &config, &work, &snapshot(&ledger), n)
                .await;
            done += 1;
        }
        for c in 0..chain_len {
            if done >= cuts {
                break;
            }
            let when = if established {
                At::random()
            } else {
                At::early()
            };
            lz.mount().unwrap_or_else(|e| panic!("mount: {e}"));
            let tag = format!("c{chain_no}.{c}");
            let at = lz.mnt.join(&store_name);
            let l = life(lz, &at, &config, when, &tag, &ledger).await;
            lz.unmount().unwrap_or_else(|e| panic!("unmount: {e}"));
            if let Some(s) = l.start {
                starts.push(ms(s));
            }
            let label = format!(
                "chain {chain_no} cut {c} ({}, {}, {} acknowledged by this daemon)",
                when.label(),
                l.phase,
                l.acked
            );
            note_life(&mut judge, &l, &label);
            judge
                .cut(&label, &store, &config, &work, &snapshot(&ledger), l.acked)
                .await;
            done += 1;
        }
        let l = snapshot(&ledger);
        acked += l.acked.len() as u64;
        posted += l.posted.len() as u64;
        crate::check::remove_store(&store);
        chain_no += 1;
    }
    let mut s = summary(&judge, acked, posted);
    s.notes = notes(&judge, &starts);
    (s, std::mem::take(&mut judge.problems))
}

/// The scenario's note: phases, cuts with acks, cuts losing, start times,
/// freeze times, and for `fsync = false` the measured loss.
pub fn notes(judge: &Judge, starts: &[u64]) -> String {
    let t = &judge.tally;
    let mut n = format!(
        "cuts by phase {:?}; {} cuts after acknowledgements, {} of them losing acknowledged events",
        t.phases, t.cuts_with_acks, t.cuts_losing
    );
    if !starts.is_empty() {
        let mut s = starts.to_vec();
        s.sort_unstable();
        n.push_str(&format!(
            "; daemon spawn to listening {}–{} ms (median {})",
            s[0],
            s[s.len() - 1],
            s[s.len() / 2]
        ));
    }
    if t.ages.iter().any(|(_, losing)| *losing) {
        // Cuts after acknowledgements by time from spawn, 200 ms buckets.
        let mut buckets: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for (ms, losing) in &t.ages {
            let b = buckets.entry(ms / 200).or_default();
            b.0 += u64::from(*losing);
            b.1 += 1;
        }
        let b: Vec<String> = buckets
            .iter()
            .map(|(k, (l, n))| format!("{}–{} ms: {l}/{n}", k * 200, k * 200 + 199))
            .collect();
        n.push_str(&format!(
            "; losing cuts / cuts after acknowledgements, by time from spawn to cut: {}",
            b.join(", ")
        ));
    }
    n.push_str(&format!("; slowest freeze {} ms", t.max_freeze_ms));
    if t.unfrozen > 0 {
        n.push_str(&format!(
            " ({} threads had not stopped within 10 s)",
            t.unfrozen
        ));
    }
    if !judge.fsync {
        let (acked, lost): (u64, u64) = t
            .per_cut
            .iter()
            .fold((0, 0), |(a, l), (ca, cl)| (a.max(*ca), l.max(*cl)));
        let whole = t.per_cut.iter().filter(|(a, l)| *a > 0 && a == l).count();
        n.push_str(&format!(
            "; loss (allowed with fsync = false): {whole} of {} checks with acknowledged events found none of them; most lost at one check {lost} (of {acked})",
            t.per_cut.iter().filter(|(a, _)| *a > 0).count()
        ));
    }
    n
}
