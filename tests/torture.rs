//! Reliability torture suite (`harness = false`): the real `evspool` binary as
//! child processes, SIGKILLed at random moments, against a recording collector
//! running in this process (Segment's `/v1/batch`, so every event arrives with
//! its stable id as `messageId`).
//!
//! Scenarios (CI form; `EVSPOOL_SOAK=1` selects the long form):
//!
//! 1. `events_answered_202_survive_a_sigkill_loop_of_the_forwarding_daemon`:
//!    4 producers post to `/v1/events` while the daemon forwards; 20 kills (500).
//! 2. `a_backlog_survives_sigkills_while_batches_are_in_flight_to_a_slow_collector`:
//!    20k imported events (100k), 10 kills (100) with batches in flight.
//! 3. `sigkill_during_compaction_keeps_every_event_and_dead_letter`,
//!    `sigkill_during_replay_leaves_each_dead_letter_dead_or_queued_exactly_once`,
//!    `a_compaction_killed_while_removing_db_old_does_not_block_the_next_one`.
//! 4. `an_outage_overflowing_the_ceiling_drops_exactly_what_drop_newest_counts`
//!    and the same for `drop_oldest`: 30 s (5 min) at 400 events/s, both at once.
//!
//! 5. `a_kill_resends_at_most_what_was_leased_at_the_kill`: ~3,000 events
//!    posted per life, a collector failing 20 % of requests, lives of every
//!    length; 9 kills (30): per kill, events leased at the kill and events the
//!    restart re-sent, which must not exceed them.
//!
//! Accounting per scenario: lost (acknowledged, never delivered: must be 0),
//! invented (delivered but never sent, or under another id: must be 0),
//! duplicates (extra copies, always under the original id; reported).
//! `cargo test --test torture -- WORD` runs the scenarios whose name contains WORD.
//! `EVSPOOL_TORTURE_KILLS=N` overrides the kill count of scenarios 1, 2 and 5;
//! `EVSPOOL_TORTURE_BIN=PATH` runs another `evspool` binary (e.g. a copy that a
//! rebuild cannot replace during a long soak).

#[path = "torture/collector.rs"]
mod collector;
#[path = "torture/crash_loop.rs"]
mod crash_loop;
#[path = "torture/delivery.rs"]
mod delivery;
#[path = "torture/offline.rs"]
mod offline;
#[path = "torture/outage.rs"]
mod outage;
#[path = "torture/proc.rs"]
mod proc;
#[path = "torture/resends.rs"]
mod resends;

use evspool_testkit::ledger::Summary;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

type Scenario = Pin<Box<dyn Future<Output = (Summary, Vec<String>)> + Send>>;
/// Scenario names, and what starts them (several run concurrently).
type Step = (Vec<&'static str>, Box<dyn FnOnce() -> Vec<Scenario>>);

fn main() {
    let soak = std::env::var("EVSPOOL_SOAK").is_ok_and(|v| v == "1");
    let kills_override: Option<u64> = std::env::var("EVSPOOL_TORTURE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok());
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    let k1 = kills_override.unwrap_or(if soak { 500 } else { 20 });
    let k2 = kills_override.unwrap_or(if soak { 100 } else { 10 });
    let backlog = if soak { 100_000 } else { 20_000 };
    let (k3, n_dead, n_live) = if soak {
        (50, 20_000, 40_000)
    } else {
        (6, 5_000, 5_000)
    };
    let (r_dead, r_live) = if soak {
        (40_000, 10_000)
    } else {
        (8_000, 1_000)
    };
    let outage = Duration::from_secs(if soak { 300 } else { 30 });
    let k5 = kills_override.unwrap_or(if soak { 30 } else { 9 });

    // Each entry: names, and a future running those scenarios (the two outage
    // policies run concurrently: each is mostly waiting on its fixed rate).
    let mut plan: Vec<Step> = vec![
        (
            vec!["events_answered_202_survive_a_sigkill_loop_of_the_forwarding_daemon"],
            Box::new(move || vec![Box::pin(crash_loop::run(k1)) as Scenario]),
        ),
        (
            vec!["a_backlog_survives_sigkills_while_batches_are_in_flight_to_a_slow_collector"],
            Box::new(move || vec![Box::pin(delivery::run(k2, backlog)) as Scenario]),
        ),
        (
            vec!["a_kill_resends_at_most_what_was_leased_at_the_kill"],
            Box::new(move || vec![Box::pin(resends::run(k5)) as Scenario]),
        ),
        (
            vec!["sigkill_during_compaction_keeps_every_event_and_dead_letter"],
            Box::new(move || vec![Box::pin(offline::compaction(k3, n_dead, n_live)) as Scenario]),
        ),
        (
            vec!["sigkill_during_replay_leaves_each_dead_letter_dead_or_queued_exactly_once"],
            Box::new(move || vec![Box::pin(offline::replay(k3, r_dead, r_live)) as Scenario]),
        ),
        (
            vec!["a_compaction_killed_while_removing_db_old_does_not_block_the_next_one"],
            Box::new(|| vec![Box::pin(offline::leftover_db_old()) as Scenario]),
        ),
        (
            vec![
                "an_outage_overflowing_the_ceiling_drops_exactly_what_drop_newest_counts",
                "an_outage_overflowing_the_ceiling_drops_exactly_what_drop_oldest_counts",
            ],
            Box::new(move || {
                vec![
                    Box::pin(outage::run("drop_newest", outage)) as Scenario,
                    Box::pin(outage::run("drop_oldest", outage)) as Scenario,
                ]
            }),
        ),
    ];
    let total = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    for (names, make) in plan.drain(..) {
        if !filters.is_empty()
            && !names
                .iter()
                .any(|n| filters.iter().any(|f| n.contains(f.as_str())))
        {
            continue;
        }
        let started = Instant::now();
        let handles: Vec<_> = make().into_iter().map(|f| rt.spawn(f)).collect();
        for (name, h) in names.iter().zip(handles) {
            match rt.block_on(h) {
                Ok((s, problems)) => {
                    println!(
                        "torture {name}: {} kills, sent {}, acked {}, delivered {}, lost {}, invented {}, duplicates {} ({:.1}s)",
                        s.kills,
                        s.sent,
                        s.acked,
                        s.delivered,
                        s.lost,
                        s.invented,
                        s.duplicates,
                        started.elapsed().as_secs_f64()
                    );
                    if !s.notes.is_empty() {
                        println!("    {}", s.notes);
                    }
                    if problems.is_empty() {
                        passed += 1;
                    } else {
                        for p in &problems {
                            println!("    FAILED: {p}");
                        }
                        failed += 1;
                    }
                }
                Err(e) => {
                    println!(
                        "torture {name}: FAILED ({e}) after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    failed += 1;
                }
            }
        }
    }
    println!(
        "torture: took {:.1}s{}",
        total.elapsed().as_secs_f64(),
        if soak { " (soak)" } else { "" }
    );
    // The plain closing line test runners read: "N passed, N failed".
    println!("torture: {passed} passed, {failed} failed");
    rt.shutdown_timeout(Duration::from_secs(5));
    if failed > 0 {
        std::process::exit(1);
    }
}
