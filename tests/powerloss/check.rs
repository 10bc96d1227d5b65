//! What survived a cut: the files on "disk" (LazyFS's backing directory, with
//! LazyFS unmounted), and what `evspool stats --json`, `evspool export` and
//! `evspool export --dead` make of a copy of them.
//!
//! The CLI opens a copy, not the cut store itself, so the next program to open
//! the cut store is the one the scenario names (in the chains, the daemon or
//! library child reopening it). The copy is what LazyFS would show after a
//! remount: with an empty cache it passes every read through to the backing
//! directory.

use evspool_testkit::daemon::Evspool;
use evspool_testkit::ledger::{Delivered, Ledger};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Runs `evspool ARGS` on `store` to completion: (exit code, stdout, stderr).
async fn cli(store: &Path, config: &Path, args: &[&str]) -> (i32, String, String) {
    Evspool::torture().run(store, Some(config), args).await
}

/// One opened cut store.
#[derive(Default)]
pub struct Inspection {
    /// Every file of the cut store with its size, before anything opened it.
    pub listing: Vec<(String, u64)>,
    /// Queued events `export` read: (marker, id).
    pub live: Vec<Delivered>,
    /// Dead letters `export --dead` read.
    pub dead: Vec<Delivered>,
    /// Live events `stats` claims (ready + retrying + leased + uncommitted).
    pub stats_live: u64,
    /// Dead letters `stats` claims.
    pub stats_dead: u64,
    pub instance: String,
    /// What the open had to repair (`stats().recovered`).
    pub recovered: Vec<String>,
    /// CLI failures and phantom events: always problems, whatever the durability.
    pub problems: Vec<String>,
}

/// How a cut store compares with the ledger of what was acknowledged.
#[derive(Default, Debug, Clone)]
pub struct Verdict {
    pub acked: u64,
    pub lost: Vec<String>,
    /// The id each lost event was acknowledged under.
    pub lost_ids: HashMap<String, String>,
    pub invented: Vec<String>,
    pub duplicates: u64,
}

/// Every file under `dir`, relative, with its size, sorted.
pub fn listing(dir: &Path) -> Vec<(String, u64)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    out.push((format!("{rel}/"), 0));
                    walk(base, &p, out);
                }
                _ => out.push((rel, e.metadata().map(|m| m.len()).unwrap_or(0))),
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `listing` as one line, directories and the ballast left out.
pub fn show_listing(l: &[(String, u64)]) -> String {
    let files: Vec<String> = l
        .iter()
        .filter(|(p, _)| !p.ends_with('/') && p != "ballast")
        .map(|(p, n)| format!("{p} {n} B"))
        .collect();
    if files.is_empty() {
        "no files".into()
    } else {
        files.join(", ")
    }
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
    for e in entries.flatten() {
        let t = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            copy_dir(&e.path(), &t);
        } else if ft.is_file() {
            std::fs::copy(e.path(), &t).unwrap();
        }
    }
}

/// Removes a cut store (which a cut before its directory reached the disk
/// never left).
pub fn remove_store(store: &Path) {
    match std::fs::remove_dir_all(store) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", store.display()),
    }
}

/// A fresh copy of `store` at `scratch/<label>` (replacing an older one).
pub fn fresh_copy(store: &Path, scratch: &Path, label: &str) -> PathBuf {
    let to = scratch.join(label);
    let _ = std::fs::remove_dir_all(&to);
    copy_dir(store, &to);
    to
}

fn rows(out: &str, what: &str, problems: &mut Vec<String>) -> Vec<Delivered> {
    let mut v = Vec::new();
    for l in out.lines() {
        let parsed: Option<(String, String)> = serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|r| {
                Some((
                    r["payload"]["m"].as_str()?.to_string(),
                    r["id"].as_str()?.to_string(),
                ))
            });
        match parsed {
            Some((marker, id)) => v.push(Delivered { marker, id }),
            None => problems.push(format!("{what} printed a line that is not an event: {l:?}")),
        }
    }
    v
}

/// Opens a copy of the cut store `store` (LazyFS unmounted) in `scratch` and
/// reads everything in it.
pub async fn inspect(store: &Path, config: &Path, scratch: &Path) -> Inspection {
    let mut i = Inspection {
        listing: listing(store),
        ..Inspection::default()
    };
    if !store.exists() {
        // Cut before the program made the store's directory: nothing is on
        // disk, and the next program makes a new store. Every event
        // acknowledged before the cut counts as lost.
        return i;
    }
    let copy = fresh_copy(store, scratch, "check");
    let (code, out, err) = cli(&copy, config, &["stats", "--json"]).await;
    if code != 0 {
        i.problems.push(format!(
            "`evspool stats --json` exit {code}: {}",
            err.trim()
        ));
        return i;
    }
    let stats: serde_json::Value = match serde_json::from_str(&out) {
        Ok(v) => v,
        Err(e) => {
            i.problems.push(format!(
                "`evspool stats --json` printed no JSON ({e}): {out}"
            ));
            return i;
        }
    };
    i.stats_live = stats["total"]["events"].as_u64().unwrap_or(0);
    i.stats_dead = stats["topics"]
        .as_object()
        .map(|t| {
            t.values()
                .map(|t| t["dead"]["events"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    i.instance = stats["instance_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    i.recovered = stats["recovered"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    for (dead, what) in [
        (false, "`evspool export`"),
        (true, "`evspool export --dead`"),
    ] {
        let mut args = vec!["export"];
        if dead {
            args.push("--dead");
        }
        let (code, out, err) = cli(&copy, config, &args).await;
        if code != 0 {
            i.problems
                .push(format!("{what} exit {code}: {}", err.trim()));
            continue;
        }
        let r = rows(&out, what, &mut i.problems);
        if dead {
            i.dead = r;
        } else {
            i.live = r;
        }
    }
    // Phantom events: counts that no read backs up (or reads no count shows).
    if i.stats_live != i.live.len() as u64 {
        i.problems.push(format!(
            "phantom events: `stats` claims {} queued events, `export` reads {}",
            i.stats_live,
            i.live.len()
        ));
    }
    if i.stats_dead != i.dead.len() as u64 {
        i.problems.push(format!(
            "phantom dead letters: `stats` claims {}, `export --dead` reads {}",
            i.stats_dead,
            i.dead.len()
        ));
    }
    let _ = std::fs::remove_dir_all(&copy);
    i
}

impl Inspection {
    /// Compares what was found (queued and dead) with the ledger.
    pub fn verdict(&self, ledger: &Ledger) -> Verdict {
        let all: Vec<Delivered> = self.live.iter().chain(&self.dead).cloned().collect();
        let books = ledger.books(&all);
        let mut lost = books.lost;
        lost.sort();
        let lost_ids = lost
            .iter()
            .map(|m| (m.clone(), ledger.acked[m].clone()))
            .collect();
        Verdict {
            acked: ledger.acked.len() as u64,
            lost,
            lost_ids,
            invented: books.invented,
            duplicates: books.duplicates,
        }
    }

    /// One line: files, what stats and export said, what the open repaired.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "files: {}; stats: {} queued, {} dead, instance {}; export: {} queued, {} dead",
            show_listing(&self.listing),
            self.stats_live,
            self.stats_dead,
            if self.instance.is_empty() {
                "?"
            } else {
                &self.instance
            },
            self.live.len(),
            self.dead.len()
        );
        for r in &self.recovered {
            s.push_str(&format!("; recovered: {r}"));
        }
        s
    }
}

/// Evidence for a cut that lost events, gathered on copies of the cut store:
/// what `evspool verify --json` says, and — if the first-open marker is there —
/// how many of the lost events (marker → acknowledged id) a copy without the
/// marker brings back, and under which ids.
pub async fn evidence(
    store: &Path,
    config: &Path,
    scratch: &Path,
    lost: &HashMap<String, String>,
) -> String {
    let mut notes = Vec::new();
    if !store.exists() {
        return "the store's directory is not on disk: the cut came before the program made it"
            .into();
    }
    let copy = fresh_copy(store, scratch, "evidence");
    let (code, out, err) = cli(&copy, config, &["verify", "--json"]).await;
    notes.push(format!(
        "`evspool verify --json` exit {code}: {}{}",
        out.trim(),
        if err.trim().is_empty() {
            String::new()
        } else {
            format!(" (stderr: {})", last_line(&err))
        }
    ));
    let marker = Path::new("db").join("evspool.initialized");
    if store.join(&marker).exists() && !lost.is_empty() {
        let copy = fresh_copy(store, scratch, "evidence");
        std::fs::remove_file(copy.join(&marker)).unwrap();
        let (code, out, err) = cli(&copy, config, &["export"]).await;
        if code == 0 {
            let mut p = Vec::new();
            let got: HashMap<String, String> = rows(&out, "export", &mut p)
                .into_iter()
                .map(|d| (d.marker, d.id))
                .collect();
            let back = lost.keys().filter(|m| got.contains_key(*m)).count();
            let same_id = lost
                .iter()
                .filter(|(m, id)| got.get(*m) == Some(*id))
                .count();
            let example = lost
                .iter()
                .find_map(|(m, id)| got.get(m).filter(|g| *g != id).map(|g| (id, g)));
            notes.push(format!(
                "with db/evspool.initialized deleted from a copy, `evspool export` reads {} events: {back} of the {} lost, {same_id} of them under the id they were acknowledged with{}",
                got.len(),
                lost.len(),
                example.map_or(String::new(), |(a, g)| format!(
                    " (e.g. acknowledged as {a}, now {g})"
                ))
            ));
        } else {
            notes.push(format!(
                "with the marker deleted, export exit {code}: {}",
                last_line(&err)
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&copy);
    notes.join("; ")
}

/// The last line of `s`, without terminal colour codes.
fn last_line(s: &str) -> String {
    let line = s.trim().lines().last().unwrap_or_default();
    let mut out = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// How the cuts of a scenario went, for the summary line.
#[derive(Default)]
pub struct Tally {
    pub cuts: u64,
    /// Cuts whose program had acknowledged at least one event.
    pub cuts_with_acks: u64,
    /// Cuts that lost acknowledged events.
    pub cuts_losing: u64,
    /// Per-cut acknowledged (this cut's own) and lost counts, for the loss bound.
    pub per_cut: Vec<(u64, u64)>,
    /// For cuts after acknowledgements: ms from the program's spawn to the cut,
    /// and whether the cut lost acknowledged events.
    pub ages: Vec<(u64, bool)>,
    /// Distinct lost / invented markers over the scenario.
    pub lost: HashSet<String>,
    pub invented: HashSet<String>,
    pub duplicates: u64,
    /// Phase of the program at the cut → count.
    pub phases: BTreeMap<String, u64>,
    /// Longest freeze (all threads stopped).
    pub max_freeze_ms: u128,
    /// Threads still running when a freeze gave up waiting.
    pub unfrozen: u64,
}

/// Judges every cut of one scenario against its ledger, keeping the tally,
/// the problems, and the evidence of the first failures.
pub struct Judge {
    /// `fsync = true`: an acknowledged event that is gone is a failure.
    /// With `fsync = false` loss is allowed and only measured.
    pub fsync: bool,
    pub tally: Tally,
    pub problems: Vec<String>,
    /// Scenario name, for kept evidence directories.
    name: &'static str,
    /// Full evidence (verify, marker experiment) for this many failing cuts.
    evidence_left: usize,
    /// Instance id per store, once a check found the store with acknowledged events.
    instances: BTreeMap<PathBuf, String>,
    /// Set by the caller before a cut: ms from the program's spawn to the cut.
    pub cut_after_ms: Option<u64>,
}

impl Judge {
    pub fn new(name: &'static str, fsync: bool) -> Judge {
        Judge {
            fsync,
            tally: Tally::default(),
            problems: Vec::new(),
            name,
            evidence_left: 4,
            instances: BTreeMap::new(),
            cut_after_ms: None,
        }
    }

    /// Opens a copy of the cut `store` (LazyFS unmounted), compares it with
    /// `ledger`, and records the outcome. `label` names the cut in messages;
    /// `acked_now` is what this cut's program acknowledged.
    pub async fn cut(
        &mut self,
        label: &str,
        store: &Path,
        config: &Path,
        scratch: &Path,
        ledger: &Ledger,
        acked_now: u64,
    ) -> Verdict {
        let insp = inspect(store, config, scratch).await;
        let v = insp.verdict(ledger);
        self.record(label, store, config, scratch, &insp, &v, acked_now)
            .await;
        v
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn record(
        &mut self,
        label: &str,
        store: &Path,
        config: &Path,
        scratch: &Path,
        insp: &Inspection,
        v: &Verdict,
        acked_now: u64,
    ) {
        let t = &mut self.tally;
        t.cuts += 1;
        if acked_now > 0 {
            t.cuts_with_acks += 1;
        }
        let new_lost: Vec<&String> = v.lost.iter().filter(|m| !t.lost.contains(*m)).collect();
        let new_invented: Vec<&String> = v
            .invented
            .iter()
            .filter(|m| !t.invented.contains(*m))
            .collect();
        t.per_cut.push((v.acked, v.lost.len() as u64));
        if !new_lost.is_empty() {
            t.cuts_losing += 1;
        }
        if let Some(ms) = self.cut_after_ms.take()
            && acked_now > 0
        {
            t.ages.push((ms, !new_lost.is_empty()));
        }
        t.duplicates = t.duplicates.max(v.duplicates);
        let new_lost: Vec<String> = new_lost.into_iter().cloned().collect();
        let new_invented: Vec<String> = new_invented.into_iter().cloned().collect();
        t.lost.extend(new_lost.iter().cloned());
        t.invented.extend(new_invented.iter().cloned());

        if std::env::var_os("EVSPOOL_POWERLOSS_VERBOSE").is_some() {
            println!(
                "    {}: {label}: acknowledged {}, lost {} ({} new), invented {}; {}",
                self.name,
                v.acked,
                v.lost.len(),
                new_lost.len(),
                v.invented.len(),
                insp.describe()
            );
        }
        let mut bad = Vec::new();
        for p in &insp.problems {
            bad.push(p.clone());
        }
        if !new_invented.is_empty() {
            bad.push(format!(
                "{} invented (never sent, or under another id than acknowledged), e.g. {:?}",
                new_invented.len(),
                &new_invented[..new_invented.len().min(3)]
            ));
        }
        if self.fsync && !new_lost.is_empty() {
            bad.push(format!(
                "lost {} of {} acknowledged (this cut's program acknowledged {acked_now}), e.g. {:?}",
                new_lost.len(),
                v.acked,
                &new_lost[..new_lost.len().min(3)]
            ));
        }
        if v.acked > 0 && !insp.instance.is_empty() {
            match self.instances.get(store) {
                Some(old) if *old != insp.instance => bad.push(format!(
                    "the store's instance id changed from {old} to {} (a new store replaced it)",
                    insp.instance
                )),
                Some(_) => {}
                None => {
                    self.instances
                        .insert(store.to_path_buf(), insp.instance.clone());
                }
            }
        }
        if bad.is_empty() {
            return;
        }
        let mut msg = format!("{label}: {}. {}", bad.join("; "), insp.describe());
        if self.evidence_left > 0 && (!new_lost.is_empty() || !insp.problems.is_empty()) {
            self.evidence_left -= 1;
            msg.push_str(&format!(
                ". Evidence: {}",
                evidence(
                    store,
                    config,
                    scratch,
                    &new_lost
                        .iter()
                        .map(|m| (m.clone(), v.lost_ids[m].clone()))
                        .collect()
                )
                .await
            ));
            if let Some(keep) = std::env::var_os("EVSPOOL_POWERLOSS_KEEP") {
                let to = PathBuf::from(keep).join(format!(
                    "{}-{}",
                    self.name,
                    label.replace([' ', '/', ','], "_")
                ));
                let _ = std::fs::remove_dir_all(&to);
                copy_dir(store, &to);
                msg.push_str(&format!("; cut store kept in {}", to.display()));
            }
        }
        self.problems.push(msg);
    }
}
