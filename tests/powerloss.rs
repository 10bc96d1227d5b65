//! Power-loss suite (`harness = false`): does `fsync = true` keep every
//! acknowledged event across a power cut?
//!
//! Each cut: LazyFS (a FUSE file system that holds written data in its own
//! cache until it is synced) is mounted on a temp dir; the program under test
//! runs on a store inside the mount; at the cut moment it is frozen (SIGSTOP,
//! every thread stopped, so nothing is written after the cut), LazyFS drops
//! every unsynced byte, the program is SIGKILLed, LazyFS is unmounted, and a
//! copy of what survived is opened with `evspool stats --json`, `evspool
//! export` and `evspool export --dead`. With `fsync = true`: lost 0 (every
//! event acknowledged before the freeze is there — a 202 the client got, or an
//! `enqueue_durable` the child printed as `Ok`) and invented 0 (nothing that
//! was never sent, nothing under another id). Always: no phantom events
//! (`stats` counts exactly what `export` reads). With `fsync = false` (the
//! control) loss is allowed and measured.
//!
//! Scenarios (CI cuts / `EVSPOOL_SOAK=1` cuts). "Early" cuts land while the
//! program opens the store or within 800 ms of it being ready, half of them
//! within 150 ms (`daemon::At::early`); "random" ones 0–2 s after spawn.
//!
//! 1. `fsync_daemon_cut_within_the_first_second_of_a_new_store`: early, each
//!    on a new store (8 / 100)
//! 2. `fsync_daemon_chain_of_early_cuts_on_a_new_store_it_reopens`: chains of
//!    3 early cuts, the daemon reopening the cut store itself (6 / 90)
//! 3. `fsync_daemon_cut_at_random_moments_of_an_established_store_it_reopens`:
//!    a clean stop and a cut, then random cuts, the daemon reopening (6 / 90)
//! 4. `fsync_library_cut_within_the_first_second_of_a_new_store`:
//!    `enqueue_durable` producers in a child process, early cuts (4 / 60)
//! 5. `fsync_library_cut_at_random_moments_of_a_store_it_reopens` (4 / 60)
//! 6. `fsync_cut_during_compaction`: a cut after populating and a clean
//!    close, then cuts during `evspool compact` (1 + 4 / 1 + 50)
//! 7. `fsync_cut_during_replay`: the same with `evspool replay` (1 + 3 / 1 + 45)
//! 8. `nofsync_control_daemon_cut_on_a_new_store_shows_no_phantom_events` (2 / 30)
//! 9. `nofsync_control_daemon_cuts_on_an_established_store_show_no_phantom_events` (3 / 30)
//!
//! Running it: `cargo test --test powerloss` (CI form, about 2 minutes),
//! `EVSPOOL_SOAK=1 cargo test --release --test powerloss` (over 500 cuts),
//! `cargo test --test powerloss -- WORD` or `EVSPOOL_POWERLOSS=WORD[,WORD]`
//! for the scenarios whose name contains a WORD, `EVSPOOL_POWERLOSS_CUTS=N` to
//! give every scenario N cuts, `EVSPOOL_POWERLOSS_KEEP=DIR` to keep a copy of
//! each cut store that failed (the first few per scenario).
//!
//! Needs root and `/dev/fuse`, and LazyFS: `EVSPOOL_LAZYFS=PATH`, or
//! `target/lazyfs/lazyfs`, built on first use by
//! `../shared/tools/lazyfs/build.sh` (`EVSPOOL_LAZYFS_TOOLS` names another
//! directory). Without them the suite says why and reports itself skipped
//! (`powerloss: 0 passed, 0 failed, 1 skipped`, never as passed), unless the
//! run asks for every suite (`EVSPOOL_REQUIRE_ALL=1`, or CI), which makes
//! that a failure.

#[path = "powerloss/check.rs"]
mod check;
#[path = "powerloss/daemon.rs"]
mod daemon;
#[path = "powerloss/lazyfs.rs"]
mod lazyfs;
#[path = "powerloss/library.rs"]
mod library;
#[path = "powerloss/offline.rs"]
mod offline;

use evspool_testkit::ledger::Summary;
use lazyfs::LazyFs;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Instant;

/// What a scenario runs.
#[derive(Clone, Copy)]
enum Kind {
    /// The daemon, each cut on a new store.
    DaemonNewStore { fsync: bool },
    /// The daemon reopening the cut store itself, `len` cuts per store.
    DaemonChain {
        len: u64,
        established: bool,
        fsync: bool,
    },
    /// `enqueue_durable` producers in a child process.
    Library { new_store: bool },
    /// `evspool compact` or `evspool replay`.
    Offline { replay: bool, dead: u64, live: u64 },
}

struct Scenario {
    name: &'static str,
    /// Cuts in the CI form and with `EVSPOOL_SOAK=1`.
    cuts: (u64, u64),
    kind: Kind,
}

const PLAN: [Scenario; 9] = [
    Scenario {
        name: "fsync_daemon_cut_within_the_first_second_of_a_new_store",
        cuts: (8, 100),
        kind: Kind::DaemonNewStore { fsync: true },
    },
    Scenario {
        name: "fsync_daemon_chain_of_early_cuts_on_a_new_store_it_reopens",
        cuts: (6, 90),
        kind: Kind::DaemonChain {
            len: 3,
            established: false,
            fsync: true,
        },
    },
    Scenario {
        name: "fsync_daemon_cut_at_random_moments_of_an_established_store_it_reopens",
        cuts: (6, 90),
        // One cut after a clean stop, then up to 10 cuts per store.
        kind: Kind::DaemonChain {
            len: 10,
            established: true,
            fsync: true,
        },
    },
    Scenario {
        name: "fsync_library_cut_within_the_first_second_of_a_new_store",
        cuts: (4, 60),
        kind: Kind::Library { new_store: true },
    },
    Scenario {
        name: "fsync_library_cut_at_random_moments_of_a_store_it_reopens",
        cuts: (4, 60),
        kind: Kind::Library { new_store: false },
    },
    Scenario {
        name: "fsync_cut_during_compaction",
        cuts: (4, 50),
        kind: Kind::Offline {
            replay: false,
            dead: 3_000,
            live: 3_000,
        },
    },
    Scenario {
        name: "fsync_cut_during_replay",
        cuts: (3, 45),
        kind: Kind::Offline {
            replay: true,
            dead: 3_000,
            live: 1_000,
        },
    },
    Scenario {
        name: "nofsync_control_daemon_cut_on_a_new_store_shows_no_phantom_events",
        cuts: (2, 30),
        kind: Kind::DaemonNewStore { fsync: false },
    },
    Scenario {
        name: "nofsync_control_daemon_cuts_on_an_established_store_show_no_phantom_events",
        cuts: (3, 30),
        kind: Kind::DaemonChain {
            len: 10,
            established: true,
            fsync: false,
        },
    },
];

async fn run(lz: &mut LazyFs, sc: &Scenario, n: u64) -> (Summary, Vec<String>) {
    match sc.kind {
        Kind::DaemonNewStore { fsync } => daemon::new_store(lz, n, fsync, sc.name).await,
        Kind::DaemonChain {
            len,
            established,
            fsync,
        } => daemon::chain(lz, n, len, established, fsync, sc.name).await,
        Kind::Library { new_store } => library::run(lz, n, new_store, sc.name).await,
        Kind::Offline { replay, dead, live } => {
            offline::run(lz, n, replay, dead, live, sc.name).await
        }
    }
}

/// The LazyFS binary, once FUSE is known to work here; or why not.
fn available() -> Result<PathBuf, String> {
    lazyfs::fuse_usable()?;
    let bin = lazyfs::binary()?;
    let mut probe = LazyFs::new(&bin);
    probe.mount()?;
    probe.unmount()?;
    Ok(bin)
}

fn main() {
    if let Ok(dir) = std::env::var(library::CHILD_DIR) {
        let tag = std::env::var(library::CHILD_TAG).unwrap_or_default();
        library::child(&dir, &tag);
        return;
    }
    let soak = std::env::var("EVSPOOL_SOAK").is_ok_and(|v| v == "1");
    let require = evspool_testkit::requires::everything_required();
    let cuts_override: Option<u64> = std::env::var("EVSPOOL_POWERLOSS_CUTS")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if let Ok(f) = std::env::var("EVSPOOL_POWERLOSS") {
        filters.extend(f.split(',').filter(|w| !w.is_empty()).map(str::to_owned));
    }

    let bin = match available() {
        Ok(bin) => bin,
        Err(why) => {
            if require {
                println!(
                    "powerloss: FAILED: the power-loss suite cannot run: {why}; EVSPOOL_REQUIRE_ALL=1 (or CI) requires it"
                );
                println!("powerloss: 0 passed, 1 failed, 0 skipped");
                std::process::exit(1);
            }
            println!(
                "powerloss: SKIPPED: the power-loss suite cannot run here: {why}. \
                 Nothing about power loss was tested (run as root with /dev/fuse; \
                 EVSPOOL_REQUIRE_ALL=1 makes this a failure)."
            );
            println!("powerloss: 0 passed, 0 failed, 1 skipped");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let total = Instant::now();
    let (mut passed, mut failed, mut cuts) = (0, 0, 0);
    for sc in &PLAN {
        if !filters.is_empty() && !filters.iter().any(|f| sc.name.contains(f.as_str())) {
            continue;
        }
        let n = cuts_override.unwrap_or(if soak { sc.cuts.1 } else { sc.cuts.0 });
        let started = Instant::now();
        let mut lz = LazyFs::new(&bin);
        let outcome =
            std::panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(run(&mut lz, sc, n))));
        let mounts = (lz.mounts, lz.mount_time);
        let peak = lz.peak_usage;
        drop(lz);
        let secs = started.elapsed().as_secs_f64();
        match outcome {
            Ok((s, mut problems)) => {
                if peak >= 99.0 {
                    problems.push(format!(
                        "LazyFS's cache was {peak}% full at a cut: it then writes data straight to disk, unsynced, so the cuts prove nothing (raise CACHE_SIZE in tests/powerloss/lazyfs.rs)"
                    ));
                }
                cuts += s.kills;
                println!(
                    "powerloss {}: {} cuts, acknowledged {}, lost {}, invented {}, duplicates {} ({secs:.1}s)",
                    sc.name, s.kills, s.acked, s.lost, s.invented, s.duplicates
                );
                println!(
                    "    {}; {} posted or attempted; LazyFS cache at most {peak:.1}% full at a cut; {} mounts ({:.0} ms each)",
                    s.notes,
                    s.sent,
                    mounts.0,
                    mounts.1.as_secs_f64() * 1000.0 / mounts.0.max(1) as f64
                );
                if problems.is_empty() {
                    passed += 1;
                } else {
                    const SHOWN: usize = 12;
                    for p in problems.iter().take(SHOWN) {
                        println!("    FAILED: {p}");
                    }
                    if problems.len() > SHOWN {
                        println!("    ... and {} more failures", problems.len() - SHOWN);
                    }
                    failed += 1;
                }
            }
            Err(_) => {
                println!("powerloss {}: FAILED (panicked) after {secs:.1}s", sc.name);
                failed += 1;
            }
        }
    }
    println!(
        "powerloss: {cuts} cuts in {:.1}s{}",
        total.elapsed().as_secs_f64(),
        if soak { " (soak)" } else { "" }
    );
    println!("powerloss: {passed} passed, {failed} failed, 0 skipped");
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    if failed > 0 {
        std::process::exit(1);
    }
}
