//! The parent's side: runs a seed's lives, damages the store between them,
//! and checks every life against what the ledgers say was acknowledged.

#[path = "coverage.rs"]
mod coverage;
#[path = "damage.rs"]
mod damage;

use super::child::{CHILD, DIR, LEDGER, token_of};
use super::order::{Kind, Order};
pub use coverage::Coverage;
use damage::damage;
use evspool::{Queue, QueueConfig};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What the ledgers say of one event.
#[derive(Clone, Debug, Default)]
struct Tok {
    topic: String,
    /// Which producer call made it (the `A` line).
    kind: Option<Kind>,
    seq: Option<u64>,
    /// `enqueue_durable` returned Ok: it must be found or accounted for.
    durable: bool,
    /// Accepted buffered in `life`, by the queue of incarnation `inc` (a
    /// reopen or a compaction starts the next), at ledger line `at`.
    buffered: Option<(u32, u32, usize)>,
    /// Where it was accepted: (life, ledger line).
    accepted: (u32, usize),
    /// Where it was acknowledged (its durable `OK`, or the `S` that synced
    /// it): (life, ledger line).
    acked: Option<(u32, usize)>,
    /// A `sync` returned Ok after it was buffered, in the same life.
    synced: bool,
    /// A settle returned Ok with it delivered (it may be gone).
    delivered: bool,
    /// It was in a lease whose settle began and never returned (a crash).
    maybe_delivered: bool,
    /// A settle returned Ok with it dead.
    dead: bool,
    /// A consumer saw it (its id is then never handed out again).
    seen: bool,
    /// Its entry was damaged between lives: it may be quarantined.
    damaged: bool,
    history: Vec<String>,
}

/// A purge: the seqs it could take (read just before it), how many it took
/// (`u64::MAX`: a crash or an error cut it, any of them), and where it ran
/// (topic, life, ledger line), for one that took more than it was shown.
///
/// `peek` shows every event acknowledged before it (it indexes the written
/// entries first), so a purge takes more than it was shown only of events
/// written after that read: buffered events a commit round indexed (never
/// required), and events of its topic acknowledged after the read
/// (`shown_at`) whose producers raced it. `extra` is how many of the
/// latter it may still explain: an acknowledged event missing that was
/// acknowledged before the read is never the purge's.
#[derive(Clone, Debug)]
struct Purge {
    seqs: BTreeSet<u64>,
    shown_at: (u32, usize),
    took: u64,
    extra: u64,
    topic: String,
    at: (u32, usize),
}

impl Purge {
    fn new(
        seqs: BTreeSet<u64>,
        shown_at: (u32, usize),
        took: u64,
        topic: String,
        at: (u32, usize),
    ) -> Self {
        let extra = if took == u64::MAX {
            0
        } else {
            took.saturating_sub(seqs.len() as u64)
        };
        Purge {
            seqs,
            shown_at,
            took,
            extra,
            topic,
            at,
        }
    }

    /// Whether it may have taken `t`: one it was shown, or one of its topic
    /// attempted before it began and acknowledged after its candidates were
    /// read, while it took more than it was shown.
    fn may_take(&self, t: &Tok) -> bool {
        self.took > 0 && (self.shown(t) || self.unshown(t))
    }

    fn shown(&self, t: &Tok) -> bool {
        t.seq.is_some_and(|s| self.seqs.contains(&s))
    }

    fn unshown(&self, t: &Tok) -> bool {
        self.extra > 0
            && t.topic == self.topic
            && t.accepted < self.at
            && t.acked.is_none_or(|a| a > self.shown_at)
    }

    /// Charges `t` (for which `may_take` held) to this purge.
    fn charge(&mut self, t: &Tok) {
        if !self.shown(t) {
            self.extra -= 1;
        }
        self.took = self.took.saturating_sub(1);
    }
}

/// Everything the ledgers of a seed said.
#[derive(Default)]
struct Oracle {
    toks: HashMap<String, Tok>,
    by_seq: HashMap<u64, String>,
    /// Seqs handed out twice, when the first event was acknowledged or seen.
    reused: Vec<String>,
    /// Purges (of queued events, or of dead letters): the seqs each may
    /// have taken (read just before it) and how many it took (`u64::MAX`:
    /// a crash cut it, any of them).
    purges: Vec<Purge>,
    dead_purges: Vec<Purge>,
    /// Drops counted by policy (ceiling_oldest, max_age, storage_error).
    dropped: u64,
    /// A life that crashed could drop more than its last count says.
    drop_slack: u64,
    /// First deliveries by topic and kind (README guarantee 8).
    order: Order,
    /// Seqs a trace entry hit by a flipped byte named `gone`: with the trace
    /// unreadable, a rebuild without sled cannot know they left (a trace
    /// has no copy), so they may come back (damage costs the damaged
    /// entry's information; nothing acknowledged is lost).
    gone_untraced: BTreeSet<u64>,
}

pub fn run_seed(seed: u64) -> Result<Coverage, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let dir = tmp.path().join("store");
    let keep = std::env::var("EVSPOOL_SIM_KEEP").is_ok_and(|v| v == "1");
    let mut o = Oracle {
        order: Order::new(seed),
        ..Oracle::default()
    };
    let mut cov = Coverage {
        seeds: 1,
        ..Coverage::default()
    };
    let mut r = fastrand::Rng::with_seed(seed ^ 0xdead_beef);
    let lives = r.u32(3..=6);
    let result = (|| {
        for life in 0..lives {
            let sled_losses = cov.sled_losses;
            if life > 0 {
                damage(&mut r, &dir, &mut o, &mut cov)?;
            }
            o.order.life_begins(life, cov.sled_losses > sled_losses);
            if std::env::var("EVSPOOL_SIM_SNAPSHOT").is_ok_and(|v| v == "1") {
                let _ = Command::new("cp")
                    .arg("-r")
                    .arg(&dir)
                    .arg(tmp.path().join(format!("before-life-{life}")))
                    .status();
            }
            run_life(seed, life, &dir, tmp.path(), &mut o, &mut cov)?;
            check(&dir, &mut o, &mut cov).map_err(|e| format!("after life {life}: {e}"))?;
            cov.first_deliveries = o.order.checked;
            cov.undeleted = o.order.undeleted;
            o.order.verdict()?;
        }
        Ok(())
    })();
    if keep || result.is_err() {
        let kept = tmp.keep();
        println!("simulation: seed {seed}: store kept in {}", kept.display());
    }
    result.map(|()| cov)
}

fn run_life(
    seed: u64,
    life: u32,
    dir: &Path,
    tmp: &Path,
    o: &mut Oracle,
    cov: &mut Coverage,
) -> Result<(), String> {
    let ledger = tmp.join(format!("ledger-{life}"));
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD, format!("{seed} {life}"))
        .env(DIR, dir)
        .env(LEDGER, &ledger)
        .env(
            "EVSPOOL_TEST_OPS_PER_BATCH",
            super::plan::ops_per_batch(seed).to_string(),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            return Err(format!("life {life} ran over 300 s"));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    let text = std::fs::read_to_string(&ledger).unwrap_or_default();
    let crashed = status.signal() == Some(libc::SIGABRT);
    if crashed {
        cov.crashes += 1;
    } else if !status.success() {
        let tail: Vec<&str> = text.lines().rev().take(5).collect();
        return Err(format!(
            "life {life} exited with {status}: {tail:?}\nstderr: {}",
            stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        ));
    }
    o.absorb(life, &text, crashed, cov);
    cov.lives += 1;
    Ok(())
}

impl Oracle {
    /// Records that `tok` got `seq`; a seq handed out again after its first
    /// event was acknowledged or seen by a consumer is a reused id (I3).
    fn note_seq(&mut self, seq: u64, tok: &str, life: u32) {
        if let Some(first) = self.by_seq.insert(seq, tok.to_string())
            && first != tok
            && let Some(t) = self.toks.get(&first)
            && (t.durable || t.synced || t.seen)
        {
            self.reused.push(format!(
                "seq {seq} handed out to {tok} in life {life}, after {first}: {}",
                t.history.join("; ")
            ));
        }
    }

    /// A purge of queued events ended (in incarnation `inc` of its life).
    fn purged(&mut self, p: Purge, inc: u32) {
        self.order.purge((p.at.0, inc), &p.topic, &p.seqs, p.took);
        self.purges.push(p);
    }

    /// Takes in one life's ledger.
    fn absorb(&mut self, life: u32, text: &str, crashed: bool, cov: &mut Coverage) {
        let mut leases: HashMap<String, Vec<u64>> = HashMap::new();
        let mut settling: BTreeSet<String> = BTreeSet::new();
        let mut last_drops = 0u64;
        let mut base_drops = 0u64;
        // Whether this life opened its queue already (a DROPBASE was seen).
        let mut opened = false;
        let mut aged_or_oldest = false;
        // Lines at which a commit round dropped buffered events (counted).
        let mut storage_drops_at: Vec<usize> = Vec::new();
        let mut storage_seen = 0u64;
        let mut inc = 0u32;
        let mut candidates: BTreeSet<u64> = BTreeSet::new();
        // Where the candidates were read (the `PC`/`QC` line).
        let mut shown_at = (life, 0);
        let mut open_purge = false;
        let mut open_dead_purge = false;
        let mut purge_at: (String, (u32, usize)) = (String::new(), (life, 0));
        // The step under way, and the store's quarantined records (order).
        let mut step_op = "";
        let mut quarantine = 0u64;
        for (n, line) in text.lines().enumerate() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["STEP", _, op] => {
                    cov.steps += 1;
                    step_op = op;
                    if matches!(*op, "reopen" | "compact") {
                        // The old queue's last round may drop what it holds
                        // buffered (counted by a queue this ledger no longer
                        // reads): nothing buffered before is required.
                        storage_drops_at.push(n);
                        inc += 1;
                    }
                }
                ["A", tok, topic, kind] => {
                    let t = self.toks.entry(tok.to_string()).or_default();
                    t.topic = topic.to_string();
                    t.kind = Kind::parse(kind);
                    t.accepted = (life, n);
                    t.history.push(format!("life {life}: attempted"));
                }
                ["OK", tok, seq] => {
                    let seq: u64 = seq.parse().unwrap_or(0);
                    self.note_seq(seq, tok, life);
                    let t = self.toks.entry(tok.to_string()).or_default();
                    t.seq = Some(seq);
                    t.durable = true;
                    t.acked = Some((life, n));
                    t.history
                        .push(format!("life {life}: durable Ok, seq {seq}"));
                    cov.acked += 1;
                }
                ["B", tok, seq] => {
                    let seq: u64 = seq.parse().unwrap_or(0);
                    self.note_seq(seq, tok, life);
                    let t = self.toks.entry(tok.to_string()).or_default();
                    t.seq = Some(seq);
                    t.buffered = Some((life, inc, n));
                    t.history.push(format!("life {life}: buffered, seq {seq}"));
                }
                ["S"] => {
                    // Every event buffered before it in this life is written,
                    // unless a round dropped it (storage_error, counted).
                    let dropped_since = |at: usize| storage_drops_at.iter().any(|d| *d > at);
                    for t in self.toks.values_mut() {
                        if let Some((l, i, at)) = t.buffered
                            && l == life
                            && i == inc
                            && !t.synced
                            && !dropped_since(at)
                        {
                            t.synced = true;
                            t.acked = Some((life, n));
                            t.history.push(format!("life {life}: synced"));
                            cov.acked += 1;
                        }
                    }
                }
                ["L", id, events @ ..] => {
                    let seqs: Vec<u64> = events
                        .iter()
                        .filter_map(|e| {
                            let (s, tok) = e.split_once(':')?;
                            let s: u64 = s.parse().ok()?;
                            self.by_seq.entry(s).or_insert_with(|| tok.to_string());
                            if let Some(t) = self.toks.get_mut(tok) {
                                t.history.push(format!("life {life}: leased ({id})"));
                                if !t.seen
                                    && let Some(kind) = t.kind
                                {
                                    self.order.first_delivery(
                                        (life, n),
                                        (life, inc),
                                        &t.topic,
                                        kind,
                                        s,
                                        tok,
                                        &t.history,
                                    );
                                }
                                t.seen = true;
                            }
                            Some(s)
                        })
                        .collect();
                    leases.insert(id.to_string(), seqs);
                }
                ["T", id] => {
                    settling.insert(id.to_string());
                }
                ["TS", id, outcomes @ ..] => {
                    settling.remove(*id);
                    for o in outcomes {
                        let Some((k, s)) = o.split_once(':') else {
                            continue;
                        };
                        let Ok(s) = s.parse::<u64>() else { continue };
                        let Some(tok) = self.by_seq.get(&s).cloned() else {
                            continue;
                        };
                        let t = self.toks.entry(tok).or_default();
                        match k {
                            "d" => {
                                if !t.delivered {
                                    cov.delivered += 1;
                                }
                                t.delivered = true;
                                t.history.push(format!("life {life}: delivered"));
                            }
                            "x" => {
                                t.dead = true;
                                t.history.push(format!("life {life}: dead-lettered"));
                            }
                            _ => {}
                        }
                    }
                }
                ["TE", id, ..] => {
                    settling.remove(*id);
                }
                ["PC", _, seqs @ ..] | ["QC", _, seqs @ ..] => {
                    candidates = seqs.iter().filter_map(|s| s.parse().ok()).collect();
                    shown_at = (life, n);
                }
                ["P", topic] => {
                    open_purge = true;
                    purge_at = (topic.to_string(), (life, n));
                }
                ["Q", topic] => {
                    open_dead_purge = true;
                    purge_at = (topic.to_string(), (life, n));
                }
                ["PD", _, count] => {
                    open_purge = false;
                    let took = count.parse::<u64>().unwrap_or(0);
                    self.purged(purge(&mut candidates, shown_at, took, &purge_at), inc);
                }
                ["PE", ..] => {
                    open_purge = false;
                    self.purged(purge(&mut candidates, shown_at, u64::MAX, &purge_at), inc);
                }
                ["QE", ..] => {
                    open_dead_purge = false;
                    self.dead_purges
                        .push(purge(&mut candidates, shown_at, u64::MAX, &purge_at));
                }
                ["QD", _, count] => {
                    open_dead_purge = false;
                    let took = count.parse::<u64>().unwrap_or(0);
                    self.dead_purges
                        .push(purge(&mut candidates, shown_at, took, &purge_at));
                }
                ["DROPBASE", oldest, age, storage, quarantined] => {
                    quarantine = quarantined.parse().unwrap_or(0);
                    // A queue opened: its counters continue from the store's.
                    self.dropped += last_drops.saturating_sub(base_drops);
                    let sum: u64 = [oldest, age, storage]
                        .iter()
                        .map(|x| x.parse::<u64>().unwrap_or(0))
                        .sum();
                    // Reopened within the life (`reopen`, `compact`): drops
                    // made after the last DROPS line and before the close —
                    // a durable producer racing the reopen evicting oldest
                    // chunks — are in the counters the close persisted.
                    // (Missing them, seed 1011 failed with events evicted
                    // by a racer "lost, none accounted for".)
                    if opened && sum > last_drops {
                        self.dropped += sum - last_drops;
                        aged_or_oldest = true;
                    }
                    opened = true;
                    (base_drops, last_drops) = (sum, sum);
                    storage_seen = storage.parse().unwrap_or(0);
                }
                ["DROPS", oldest, age, storage, quarantined] => {
                    let quarantined = quarantined.parse().unwrap_or(0);
                    if step_op == "lease" && quarantined > quarantine {
                        self.order.lease_found_damage((life, n));
                    }
                    quarantine = quarantined;
                    let total: u64 = [oldest, age, storage]
                        .iter()
                        .map(|x| x.parse::<u64>().unwrap_or(0))
                        .sum();
                    let storage: u64 = storage.parse().unwrap_or(0);
                    if storage > storage_seen {
                        storage_drops_at.push(n);
                        storage_seen = storage;
                    }
                    if total > base_drops {
                        aged_or_oldest = true;
                    }
                    last_drops = total;
                }
                ["F", site, _] => {
                    *cov.faults.entry(site.to_string()).or_default() += 1;
                }
                _ => {}
            }
        }
        self.dropped += last_drops.saturating_sub(base_drops);
        if open_purge {
            self.purged(
                purge(&mut candidates.clone(), shown_at, u64::MAX, &purge_at),
                inc,
            );
        }
        if open_dead_purge {
            self.dead_purges
                .push(purge(&mut candidates, shown_at, u64::MAX, &purge_at));
        }
        // A crash can come after drops the last DROPS line did not count.
        if crashed {
            self.drop_slack += if aged_or_oldest { 400 } else { 0 };
            // A purge that began and never returned may have purged anything.
            // (purge_open stays set.)
            for id in &settling {
                for s in leases.get(id).into_iter().flatten() {
                    if let Some(tok) = self.by_seq.get(s).cloned()
                        && let Some(t) = self.toks.get_mut(&tok)
                    {
                        t.maybe_delivered = true;
                        t.history
                            .push(format!("life {life}: in a settle a crash cut"));
                    }
                }
            }
        }
    }
}

fn purge(
    candidates: &mut BTreeSet<u64>,
    shown_at: (u32, usize),
    took: u64,
    at: &(String, (u32, usize)),
) -> Purge {
    Purge::new(
        std::mem::take(candidates),
        shown_at,
        took,
        at.0.clone(),
        at.1,
    )
}

/// Opens the store (no faults) and checks it against the oracle.
fn check(dir: &Path, o: &mut Oracle, cov: &mut Coverage) -> Result<(), String> {
    let cfg = QueueConfig {
        max_open_files: 64,
        ..QueueConfig::default()
    };
    let q = Queue::open(dir, cfg).map_err(|e| format!("open without faults failed: {e}"))?;
    let mut found: BTreeMap<u64, (String, &'static str)> = BTreeMap::new();
    let mut place = |seq: u64, tok: String, what: &'static str| -> Result<(), String> {
        if let Some((other, w)) = found.insert(seq, (tok.clone(), what)) {
            return Err(format!(
                "seq {seq} is in two places: {w} ({other}) and {what} ({tok})"
            ));
        }
        Ok(())
    };
    let mut queued = 0u64;
    for topic in q.topics() {
        // Retries waiting out a backoff are due now: everything is leased.
        q.retry_now(&topic);
        let mut leases = Vec::new();
        while let Some(l) = q
            .lease(&topic, 1000)
            .map_err(|e| format!("lease {topic}: {e}"))?
        {
            for e in l.events() {
                place(e.seq(), token_of(&e.payload), "queued")?;
                queued += 1;
            }
            leases.push(l);
        }
        for l in leases {
            q.release(l);
        }
        let mut from = 0;
        loop {
            let dead = q
                .dead_letters(&topic, from, 500)
                .map_err(|e| format!("dead letters {topic}: {e}"))?;
            let Some(last) = dead.last() else { break };
            from = last.id.seq() + 1;
            for d in dead {
                place(d.id.seq(), token_of(&d.payload), "a dead letter")?;
            }
        }
    }
    let stats = q.stats();
    if stats.total.events != queued {
        return Err(format!(
            "stats count {} live events, {queued} were found",
            stats.total.events
        ));
    }
    let report = q.verify().map_err(|e| format!("verify: {e}"))?;
    if report.drifted() {
        return Err(format!("verify found drift: {report:?}"));
    }
    cov.quarantined = stats.quarantined_records;
    q.close();
    // What a purge took whole stays gone: a purge that returned as many as
    // it could take took every one of them (TR3: not even a rebuild brings
    // them back).
    for p in o.purges.iter().chain(o.dead_purges.iter()) {
        if p.took == p.seqs.len() as u64 {
            for s in p.seqs.iter().filter(|s| !o.gone_untraced.contains(s)) {
                if let Some((tok, what)) = found.get(s) {
                    return Err(format!("purged seq {s} ({tok}) came back as {what}"));
                }
            }
        }
    }
    if let Some(r) = o.reused.first() {
        return Err(format!("id reused: {r}"));
    }
    // Nothing invented, no id reused.
    let mut found_toks: HashMap<&str, u64> = HashMap::new();
    for (seq, (tok, what)) in &found {
        let Some(t) = o.toks.get(tok) else {
            return Err(format!(
                "invented: seq {seq} ({what}) holds {tok}, never attempted"
            ));
        };
        if let Some(known) = t.seq
            && known != *seq
        {
            return Err(format!(
                "id reused: {tok} was given seq {known}, is found under {seq} ({what})"
            ));
        }
        if let Some(other) = found_toks.insert(tok.as_str(), *seq) {
            return Err(format!("{tok} is found under seqs {other} and {seq}"));
        }
    }
    // Nothing lost: every acknowledged event is found, delivered, or accounted.
    let mut missing: Vec<&String> = o
        .toks
        .iter()
        .filter(|(tok, t)| {
            (t.durable || t.synced)
                && !found_toks.contains_key(tok.as_str())
                && !t.delivered
                && !t.maybe_delivered
                && !t.damaged
        })
        .map(|(tok, _)| tok)
        .collect();
    missing.sort();
    if std::env::var("EVSPOOL_SIM_VERBOSE").is_ok_and(|v| v == "1") {
        println!(
            "missing {}: {:?}\npurges {:?}, dead purges {:?}, dropped {} + slack {}",
            missing.len(),
            missing
                .iter()
                .map(|t| (t.as_str(), o.toks[*t].topic.as_str(), o.toks[*t].seq))
                .collect::<Vec<_>>(),
            o.purges
                .iter()
                .map(|p| (p.seqs.len(), p.took))
                .collect::<Vec<_>>(),
            o.dead_purges
                .iter()
                .map(|p| (p.seqs.len(), p.took))
                .collect::<Vec<_>>(),
            o.dropped,
            o.drop_slack
        );
    }
    // Each purge may explain as many of the events it could take as it took;
    // one that a crash cut, any of them.
    let mut purge_budget = o.purges.clone();
    let mut dead_budget = o.dead_purges.clone();
    let mut drop_budget = o.dropped + o.drop_slack;
    let mut unexplained = Vec::new();
    cov.explained = 0;
    for tok in missing {
        let t = &o.toks[tok];
        let budgets: Vec<&mut Vec<Purge>> = if t.dead {
            vec![&mut dead_budget, &mut purge_budget]
        } else {
            vec![&mut purge_budget]
        };
        let mut spent = false;
        for budget in budgets {
            if let Some(p) = budget.iter_mut().find(|p| p.may_take(t)) {
                p.charge(t);
                spent = true;
                break;
            }
        }
        if spent {
            cov.explained += 1;
            continue;
        }
        if drop_budget > 0 {
            drop_budget -= 1;
            cov.explained += 1;
            continue;
        }
        unexplained.push(format!(
            "{tok} (topic {}): {}",
            t.topic,
            t.history.join("; ")
        ));
    }
    if !unexplained.is_empty() {
        let n = unexplained.len();
        unexplained.truncate(5);
        return Err(format!(
            "{n} acknowledged event(s) lost, none accounted for:\n  {}",
            unexplained.join("\n  ")
        ));
    }
    Ok(())
}
