//! What a seed decides: each life's configuration, and each step's faults.

use evspool::faults::{Fault, Site};
use evspool::{Ceiling, OverflowPolicy, QueueConfig};
use std::time::Duration;

/// The I/O sites, with how often a step's fault picks each.
pub const SITES: [(Site, u32); 10] = [
    (Site::Write, 30),
    (Site::Sync, 20),
    (Site::Open, 10),
    (Site::Create, 10),
    (Site::Read, 12),
    (Site::Truncate, 6),
    (Site::Unlink, 6),
    (Site::SyncDir, 5),
    (Site::CreateDir, 3),
    (Site::Rename, 3),
];

/// A stable name for a site (ledgers, reports).
pub fn site_name(site: Site) -> &'static str {
    match site {
        Site::Write => "write",
        Site::Sync => "fdatasync",
        Site::Open => "open",
        Site::Create => "create",
        Site::Read => "read",
        Site::Truncate => "ftruncate",
        Site::Unlink => "unlink",
        Site::SyncDir => "fsync-dir",
        Site::CreateDir => "mkdir",
        Site::Rename => "rename",
        _ => "other",
    }
}

/// The error numbers a fault at `site` may carry: transient ones
/// (descriptors, memory) and fatal ones (I/O error, full disk).
fn errnos(site: Site) -> &'static [i32] {
    match site {
        Site::Open | Site::Create | Site::SyncDir => &[
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOMEM,
            libc::EIO,
            libc::ENOSPC,
        ],
        Site::Write => &[libc::EIO, libc::ENOSPC, libc::EINTR, libc::EAGAIN],
        Site::Sync => &[libc::EIO, libc::ENOSPC, libc::EMFILE],
        Site::Read => &[libc::EIO, libc::ENOMEM, libc::EINTR],
        Site::Truncate | Site::Unlink | Site::Rename => &[libc::EIO, libc::ENOSPC],
        Site::CreateDir => &[libc::ENOSPC, libc::EIO, libc::EMFILE],
        _ => &[libc::EIO],
    }
}

/// One life's configuration.
pub fn config(seed: u64, life: u32) -> QueueConfig {
    let mut base = fastrand::Rng::with_seed(seed);
    let fsync = base.u32(0..10) < 3;
    let chunk_max_events = base.usize(1..=8);
    let max_open_files = base.usize(4..=12);
    let mut r = fastrand::Rng::with_seed(seed.wrapping_mul(31).wrapping_add(life as u64 + 1));
    let policy = match r.u32(0..4) {
        0 => OverflowPolicy::Reject,
        1 => OverflowPolicy::DropNewest,
        2 => OverflowPolicy::DropOldest,
        _ => OverflowPolicy::Block,
    };
    let tight = r.bool();
    QueueConfig {
        fsync,
        chunk_max_events,
        max_open_files,
        commit_interval: Duration::from_secs(60),
        max_age: (r.u32(0..10) == 0).then_some(Duration::from_secs(1)),
        ceiling: Ceiling {
            max_events: if tight { r.u64(20..=300) } else { 1_000_000 },
            policy,
            block_timeout: Duration::from_millis(150),
            ..Ceiling::default()
        },
        ..QueueConfig::default()
    }
}

/// Topics a seed uses.
pub fn topics(seed: u64) -> usize {
    fastrand::Rng::with_seed(seed ^ 0x5eed).usize(1..=5)
}

/// sled writes after which an apply, or an open's repairs, cut their batch
/// at the next topic (the library's 1024 would never cut for a few topics):
/// 1–4 for half the seeds.
pub fn ops_per_batch(seed: u64) -> usize {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xba7c);
    if rng.bool() { rng.usize(1..=4) } else { 1024 }
}

/// The faults of one step: each entry fails the `nth` call at its site.
#[derive(Clone, Debug, Default)]
pub struct StepFaults {
    pub faults: Vec<(Site, u32, Fault)>,
    /// Crash at this I/O call of the step (any site), if any.
    pub crash_at: Option<u32>,
}

/// Draws one step's faults.
pub fn step_faults(r: &mut fastrand::Rng, crash_odds: u32) -> StepFaults {
    let mut out = StepFaults::default();
    if r.u32(0..100) < 25 {
        let n = r.usize(1..=2);
        for _ in 0..n {
            let total: u32 = SITES.iter().map(|(_, w)| w).sum();
            let mut pick = r.u32(0..total);
            let site = SITES
                .iter()
                .find(|(_, w)| {
                    if pick < *w {
                        true
                    } else {
                        pick -= w;
                        false
                    }
                })
                .map_or(Site::Write, |(s, _)| *s);
            let errs = errnos(site);
            let errno = errs[r.usize(0..errs.len())];
            let fault = if site == Site::Write && r.bool() {
                Fault::Short {
                    errno,
                    per_mille: r.u16(0..1000),
                }
            } else {
                Fault::Error(errno)
            };
            out.faults.push((site, r.u32(1..=3), fault));
        }
    }
    if crash_odds > 0 && r.u32(0..crash_odds) == 0 {
        out.crash_at = Some(r.u32(1..=6));
    }
    out
}
