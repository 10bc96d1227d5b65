//! The seeded fault simulation (`harness = false`): from one seed, a random
//! workload runs against the real queue — real sled, real body files —
//! while faults are injected at every I/O site, the process crashes at
//! random I/O calls, and between its lives sled's files are lost or a body
//! byte is flipped. An oracle checks, after every life, that every event
//! acknowledged `Ok` is delivered, queued, a dead letter, or accounted for
//! with a reason (a counted policy drop, a purge, or the quarantine of its
//! own damaged entry); that nothing is invented and no id is reused; that
//! every event is in one place only; that no call hangs; that the totals
//! equal a recount; and that first deliveries come oldest first within each
//! topic and kind, durable or buffered (README guarantee 8; what it exempts,
//! and the one known engine bug it reports, are in `simulation/order.rs`).
//!
//! In the manner of FoundationDB's simulator and TigerBeetle's VOPR, the
//! seed decides everything the test decides: the configuration, the
//! workload, each step's faults and crash point, what is damaged between
//! lives. Background threads (the committer, syncer and reaper) still run on
//! the machine's scheduler, so a replay repeats the same workload and fault
//! schedule, not always the same interleaving; with `commit_interval` at an
//! hour, they work only when a step asks them to.
//!
//! Each life is this binary re-executed as a child (`EVSPOOL_SIM_CHILD`),
//! which writes a ledger line after each call returns (and before, for
//! calls whose effect a crash may leave half done); a crash is an `abort()`
//! at an I/O site (`evspool::faults`), as `kill -9` would leave it. The
//! parent reads the ledger, opens the store itself (no faults), checks it,
//! and starts the next life.
//!
//! - CI runs seeds for 60 s (`EVSPOOL_SIM_SECONDS` overrides), from a seed
//!   taken from the clock, so every run explores new ones; the soak
//!   (`EVSPOOL_SOAK=1`) runs for 30 minutes. A run of 5 minutes or more
//!   fails unless every I/O site met faults and crashes, lost sled files and
//!   flipped bytes happened; shorter runs print what they met.
//! - A failure prints its seed; `EVSPOOL_SIM_SEED=<seed> cargo test --test
//!   simulation` replays it (and `EVSPOOL_SIM_KEEP=1` keeps its directory).

#[path = "simulation/child.rs"]
mod child;
#[path = "simulation/oracle.rs"]
mod oracle;
#[path = "simulation/order.rs"]
mod order;
#[path = "simulation/plan.rs"]
mod plan;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

fn main() {
    if std::env::var(child::CHILD).is_ok() {
        child::run();
        return;
    }
    let soak = std::env::var("EVSPOOL_SOAK").is_ok_and(|v| v == "1");
    let seconds: u64 = std::env::var("EVSPOOL_SIM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if soak { 30 * 60 } else { 60 });
    let started = Instant::now();
    let mut totals = oracle::Coverage::default();
    let mut seeds_run = 0u64;
    let single: Option<u64> = std::env::var("EVSPOOL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let first_seed: u64 = std::env::var("EVSPOOL_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let mut seed = single.unwrap_or(first_seed);
    loop {
        let t = Instant::now();
        match oracle::run_seed(seed) {
            Ok(cov) => {
                totals.add(&cov);
                seeds_run += 1;
                if single.is_some() {
                    println!(
                        "simulation: seed {seed} passed ({:.1}s): {}",
                        t.elapsed().as_secs_f64(),
                        cov.summary()
                    );
                }
            }
            Err(msg) => {
                println!("simulation: seed {seed} FAILED after {seeds_run} passing seeds:\n{msg}");
                println!(
                    "simulation: replay with EVSPOOL_SIM_SEED={seed} cargo test --test simulation"
                );
                std::process::exit(1);
            }
        }
        if single.is_some() || started.elapsed() >= Duration::from_secs(seconds) {
            break;
        }
        seed = seed.wrapping_add(1);
    }
    println!(
        "simulation: {seeds_run} seeds from {} in {:.0}s: {}",
        single.unwrap_or(first_seed),
        started.elapsed().as_secs_f64(),
        totals.summary()
    );
    let by_site: BTreeMap<String, u64> = totals.faults.clone();
    println!("simulation: faults injected by site: {by_site:?}");
    if single.is_none() && seconds >= 300 {
        let missing = totals.missing();
        if !missing.is_empty() {
            println!(
                "simulation: FAILED: the run never met {}",
                missing.join(", ")
            );
            std::process::exit(1);
        }
    }
}
