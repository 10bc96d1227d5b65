//! Opening a store: directory and lock, identity, sled (and what to do when
//! it is damaged or lost), format migration, and rebuilding the index.
//!
//! Order of trust at open, for power loss (DESIGN, "Durability levels"):
//! the identity file is written and synced before anything else of a new
//! store; body files carry the instance id and seq high-water in their
//! headers; sled is an index over them. So whatever a power cut leaves —
//! an empty or truncated sled file, no sled at all, an identity file alone —
//! open either loads sled's index or rebuilds it from the body files with the
//! same instance id (`queue/open/recover.rs`), and says so (`Stats::recovered`, an
//! ERROR line, a metric). A sled database that cannot be opened is moved to
//! `damaged-<time>/` for inspection and rebuilt the same way; nothing else of
//! the store is moved.

pub(crate) mod identity;
pub(crate) mod migrate;
pub(crate) mod rebuild;
pub(crate) mod recover;

use crate::config::QueueConfig;
use crate::error::OpenError;
use crate::event::now_ms;
use crate::owned::{Access, StoreDir};
use crate::queue::ceiling::{Ceiling, Drops};
use crate::queue::index::Catalog;
use crate::queue::io::{create_dirs, sync_dir};
use crate::queue::log::logs::Logs;
use crate::queue::log::segment::OpenFiles;
use crate::queue::log::{Admit, Bodies};
use crate::queue::shared::{Parts, Shared};
use crate::queue::storage::dir_lock::{DirLock, LOCK_FILE};
use crate::queue::storage::slot::StoreSlot;
use crate::queue::storage::{self, OpenFailure, Store};
use crate::record::FORMAT_VERSION;
use recover::Mode;
use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

pub(crate) const DB_DIR: &str = "db";
/// Directory of body generation files, beside sled's `db` directory.
pub(crate) const BODIES_DIR: &str = "bodies";
/// The first-open marker of formats 1 and 2 (no longer written; see module docs).
const OLD_MARKER: &str = "evspool.initialized";

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the directory (0700) or checks that an existing one is ours
/// (`crate::owned`, OW1 and OW2) and a store, then makes it `0700`.
///
/// A directory that is not this user's to trust, or that holds anything and
/// is not a store, is refused before anything in it is changed.
///
/// With `sync` (`fsync = true`), the entry of every directory it creates is
/// made durable in its parent before the store is used: a power cut must not
/// take away a store whose events were acknowledged (the files inside are
/// synced with their own directories; the store's own entry is this one).
fn prepare_dir(dir: &Path, sync: bool) -> Result<(), OpenError> {
    let opened = match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(OpenError::NotAStore {
                dir: dir.to_path_buf(),
                reason: "it is a file, not a directory".into(),
            });
        }
        Ok(_) => {
            let opened = StoreDir::trusted(dir)?;
            check_is_store(dir)?;
            opened
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dirs(dir, sync).map_err(io_err(dir))?;
            StoreDir::trusted(dir)?
        }
        Err(e) => return Err(io_err(dir)(e)),
    };
    opened.restrict();
    Ok(())
}

/// Refuses a directory that holds anything that is not a store's (dotfiles
/// included) unless it is a store: one with a `db/`, a lock file or an
/// identity file. A directory of store entries only (say `bodies/` alone,
/// whose index and identity were lost) is a store to rebuild.
fn check_is_store(dir: &Path) -> Result<(), OpenError> {
    let has_store = dir.join(DB_DIR).exists()
        || std::fs::symlink_metadata(dir.join(LOCK_FILE)).is_ok()
        || std::fs::symlink_metadata(dir.join(identity::IDENTITY_FILE)).is_ok();
    if has_store {
        return Ok(());
    }
    let mut foreign: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| {
            !(name.starts_with("evspool.")
                || name == DB_DIR
                || name == "db.old"
                || name == "db.compact"
                || name == BALLAST_FILE
                || name == BODIES_DIR
                || name.starts_with("damaged-")
                || name.starts_with("aside-"))
        })
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    foreign.truncate(3);
    Err(OpenError::NotAStore {
        dir: dir.to_path_buf(),
        reason: format!(
            "it holds other files ({}); use an empty or evspool directory",
            foreign.join(", ")
        ),
    })
}

/// Makes every file under `dir` owner-only (sled creates them with the umask).
pub(crate) fn restrict_permissions(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700));
                restrict_permissions(&path);
            }
            Ok(t) if t.is_file() => {
                let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
            }
            _ => {}
        }
    }
}

fn timestamp() -> String {
    let ms = now_ms();
    format!("{}-{}", ms / 1000, std::process::id())
}

/// Opens sled, moving stale snapshots aside, and a database sled cannot open
/// to `damaged-<time>/` (then starting an empty one, which the caller
/// rebuilds; the flag says so).
pub(crate) fn open_store(
    dir: &Path,
    cfg: &QueueConfig,
    recovered: &mut Vec<String>,
) -> Result<(Store, bool), OpenError> {
    let db_path = dir.join(DB_DIR);
    let aside = dir.join(format!("aside-{}", timestamp()));
    match storage::move_stale_snapshots(&db_path, &aside) {
        Ok(0) => {}
        Ok(n) => {
            let msg = format!(
                "moved {n} stale snap.*.generating file(s) to {}",
                aside.display()
            );
            tracing::warn!(dir = %dir.display(), files = n, "Stale snapshot files moved aside.");
            recovered.push(msg);
        }
        Err(e) => return Err(io_err(&db_path)(e)),
    }
    let open = || Store::open(&db_path, cfg.cache_capacity.as_u64(), cfg.flush_interval);
    let mut first = match open() {
        // A full disk can stop sled from even opening: give it the ballast's space.
        Err(OpenFailure::Io(e)) if is_disk_full(&e) && release_ballast(dir, recovered) => open(),
        other => other,
    };
    // Our own lock file is held, so no other evspool owns this store: a held
    // sled lock is a child this process forked and that has not exec'd yet
    // (it shares the descriptor until then). Give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while matches!(first, Err(OpenFailure::Locked(_))) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        first = open();
    }
    // A second open, after sled's files were cleared or moved aside: any
    // failure now is the directory's, not damage to move again.
    let open_again = || match open() {
        Ok(store) => Ok(store),
        Err(OpenFailure::Io(e)) => Err(io_err(&db_path)(e)),
        Err(OpenFailure::Locked(text) | OpenFailure::Damaged(text)) => Err(OpenError::Io {
            path: db_path.clone(),
            source: std::io::Error::other(text),
        }),
    };
    match first {
        Ok(store) => Ok((store, false)),
        Err(OpenFailure::Locked(text)) => Err(OpenError::Locked {
            dir: dir.to_path_buf(),
            holder: format!("another process ({text})"),
            pid: None,
        }),
        Err(OpenFailure::Io(e)) => Err(io_err(&db_path)(e)),
        Err(OpenFailure::Damaged(why)) if never_held_data(dir) => {
            // A kill inside sled's very first open (it writes its `conf` in
            // two writes, before any data file): nothing was ever stored,
            // so this is a new store, not damage to report.
            tracing::info!(dir = %dir.display(), why = %why, "sled's first open had been cut short; starting it again.");
            std::fs::remove_dir_all(&db_path).map_err(io_err(&db_path))?;
            open_again().map(|store| (store, false))
        }
        Err(OpenFailure::Damaged(why)) => {
            move_db_aside(dir, &format!("could not be opened ({why})"), recovered)?;
            open_again().map(|store| (store, true))
        }
    }
}

/// Whether the store never held anything sled could have lost: sled has no
/// data file (or an empty one) and no blobs, and there is no identity file
/// and no body file.
fn never_held_data(dir: &Path) -> bool {
    storage::holds_no_data(&dir.join(DB_DIR))
        && std::fs::symlink_metadata(dir.join(identity::IDENTITY_FILE)).is_err()
        && std::fs::read_dir(dir.join(BODIES_DIR)).map_or(true, |mut d| d.next().is_none())
}

/// A file of `BALLAST_BYTES` kept in the store directory, deleted when a full
/// disk stops sled from opening (DESIGN: "keep a small ballast file").
pub(crate) const BALLAST_FILE: &str = "ballast";
/// Two of sled's 4 MiB segments: what it may need to write while opening.
const BALLAST_BYTES: usize = 8 * 1024 * 1024;

fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}

/// Deletes the ballast file to make room; false if there is none.
fn release_ballast(dir: &Path, recovered: &mut Vec<String>) -> bool {
    let removed = StoreDir::open(dir).and_then(|d| d.remove(BALLAST_FILE));
    if removed.is_err() {
        return false;
    }
    tracing::error!(dir = %dir.display(), "The disk is full; deleted the ballast file to open the store. Free space soon.");
    recovered.push(format!(
        "the disk was full: deleted the {} KiB ballast file to open the store",
        BALLAST_BYTES / 1024
    ));
    true
}

/// Creates the ballast file if it is missing (best effort: not on a full disk).
fn ensure_ballast(dir: &Path) {
    let Ok(d) = StoreDir::open(dir) else { return };
    // Already there (a link too: O_EXCL does not follow it), or no room: nothing to do.
    if let Ok(mut f) = d.open_file(BALLAST_FILE, Access::WriteNew) {
        let written = f
            .write_all(&vec![0u8; BALLAST_BYTES])
            .and_then(|()| f.sync_all());
        if written.is_err() {
            let _ = d.remove(BALLAST_FILE);
        }
    }
}

/// Moves sled's directory to `dir/damaged-<time>`, loudly; the body files
/// stay, and the index is rebuilt from them.
fn move_db_aside(dir: &Path, why: &str, recovered: &mut Vec<String>) -> Result<(), OpenError> {
    let db_path = dir.join(DB_DIR);
    let base = format!("damaged-{}", timestamp());
    let damaged = (0..)
        .map(|i| match i {
            0 => dir.join(&base),
            i => dir.join(format!("{base}-{i}")),
        })
        .find(|p| !p.exists())
        .expect("some name is free");
    std::fs::rename(&db_path, &damaged).map_err(io_err(&db_path))?;
    let _ = sync_dir(dir);
    tracing::error!(
        dir = %dir.display(),
        moved_to = %damaged.display(),
        reason = %why,
        "sled's files could not be opened and were moved aside; the index is rebuilt from the body files."
    );
    metrics::counter!("evspool_store_moved_aside_total").increment(1);
    recovered.push(format!(
        "sled's files {why}; moved to {} for inspection",
        damaged.display()
    ));
    Ok(())
}

fn new_instance_id() -> String {
    format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

/// Opens the store in `dir`: its shared state, without the committer thread.
pub(super) fn open_shared(dir: &Path, cfg: QueueConfig) -> Result<Arc<Shared>, OpenError> {
    cfg.validate()?;
    prepare_dir(dir, cfg.fsync)?;
    // From here on the lock is ours: any error drops it and unregisters.
    let lock = DirLock::take(dir)?;
    restore_interrupted_swap(dir);
    let mut recovered = Vec::new();
    open_locked(dir, cfg, lock, &mut recovered)
}

fn open_locked(
    dir: &Path,
    cfg: QueueConfig,
    lock: DirLock,
    recovered: &mut Vec<String>,
) -> Result<Arc<Shared>, OpenError> {
    let storage_err = |source| OpenError::Storage {
        dir: dir.to_path_buf(),
        source,
    };
    let recorded = match identity::read(dir) {
        Ok(id) => id,
        Err(why) => {
            tracing::error!(reason = %why, "The identity file is unreadable; the instance id is taken from sled or the body files.");
            recovered.push(format!("{why}: rewritten"));
            None
        }
    };
    let (mut store, moved_aside) = open_store(dir, &cfg, recovered)?;
    let format = store.format().map_err(storage_err)?;
    if let Some(found) = format
        && found > FORMAT_VERSION
    {
        return Err(OpenError::NewerFormat {
            dir: dir.to_path_buf(),
            found,
            supported: FORMAT_VERSION,
        });
    }
    if let Some(found) = format
        && found < 3
    {
        migrate::check_legacy_topics(&store, dir, found)?;
    }
    let files = OpenFiles::new(cfg.max_open_files);
    let probe = Bodies::new(
        dir.join(BODIES_DIR),
        files.clone(),
        Arc::from(""),
        cfg.fsync,
    );
    let has_bodies = !crate::queue::log::body_topics(&probe.root).is_empty();
    let sled_instance = store.instance().map_err(storage_err)?;
    // sled knows nothing, yet this store existed: sled's files were lost.
    let mode = if format.is_none()
        && (recorded.is_some() || has_bodies || dir.join(DB_DIR).join(OLD_MARKER).exists())
    {
        Mode::Rebuild
    } else {
        Mode::Index
    };
    if mode == Mode::Rebuild && !moved_aside {
        // sled opened its files as an empty database: keep them for
        // inspection and start a clean one, as for a database it refuses.
        drop(store);
        move_db_aside(
            dir,
            "hold no index, although the store has body files or an identity file (lost in a crash or a power cut)",
            recovered,
        )?;
        store = open_store(dir, &cfg, recovered)?.0;
    }
    let instance = match (&recorded, &sled_instance) {
        (Some(id), Some(s)) if id != s => {
            tracing::error!(identity = %id, sled = %s, "The identity file and sled disagree on the instance id; keeping the identity file's.");
            recovered.push(format!(
                "sled named instance {s}, the identity file {id}: kept {id}"
            ));
            id.clone()
        }
        (Some(id), _) => id.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => recover::instance_from_bodies(&probe).unwrap_or_else(new_instance_id),
    };
    // The identity goes to disk before anything that depends on it. A new
    // store's waits until its format is recorded (below): written first, a
    // kill before the format left an identity file beside an empty sled,
    // which the next open took for a lost index (a rebuild, and sled's
    // files moved aside as damage) although nothing had been stored.
    let new_store = format.is_none() && mode == Mode::Index;
    let write_identity =
        || identity::write(dir, &instance).map_err(io_err(&dir.join(identity::IDENTITY_FILE)));
    if recorded.as_deref() != Some(instance.as_str()) && !new_store {
        write_identity()?;
    }
    if let Some(found) = format
        && found < FORMAT_VERSION
    {
        migrate::migrate(&store, &probe, found).map_err(storage_err)?;
    }
    if sled_instance.as_deref() != Some(instance.as_str()) {
        store.set_instance(&instance).map_err(storage_err)?;
    }
    let bodies = Bodies::new(
        probe.root.clone(),
        files.clone(),
        Arc::from(instance.as_str()),
        cfg.fsync,
    );
    let mut repairs = Vec::new();
    let mut garbage = Vec::new();
    let limits = (cfg.chunk_max_events as u64, cfg.chunk_max_bytes.as_u64());
    let loaded = recover::load(
        &store,
        &bodies,
        mode,
        limits,
        now_ms(),
        recovered,
        &mut repairs,
        &mut garbage,
    )
    .map_err(storage_err)?;
    // Repairs (and a new store's metadata) are durable before any body file
    // they stop naming is deleted.
    // Batches cut between topics: a crash between two leaves each topic
    // as one of them found it, and the next open repairs it again.
    for repair in repairs {
        store.apply(repair).map_err(storage_err)?;
    }
    // Quarantine within its share of the ceiling (C4), counted in it.
    let quarantined = store
        .prune_quarantine(crate::queue::quarantine::quarantine_cap(&cfg))
        .map_err(storage_err)?;
    loaded.totals.set_quarantine(quarantined);
    // The format is recorded last, once the index it vouches for is
    // complete: an open that fails or crashes before (in the middle of a
    // rebuild, say) leaves sled without one, and the next open rebuilds
    // again instead of trusting a partial index.
    // A test crashes here: a new store must come back as a new store.
    fail::fail_point!("queue::open::before_format");
    if format != Some(FORMAT_VERSION) {
        store.persist(cfg.fsync).map_err(storage_err)?;
        store.set_format(FORMAT_VERSION).map_err(storage_err)?;
    }
    store.persist(cfg.fsync).map_err(storage_err)?;
    if new_store && recorded.as_deref() != Some(instance.as_str()) {
        // A test crashes here: format recorded, no identity file yet.
        fail::fail_point!("queue::open::before_identity");
        write_identity()?;
    }
    if format.is_some_and(|f| f < 4) {
        migrate::trace_dead_letters(&store, &bodies, &loaded.logs).map_err(storage_err)?;
    }
    // Every seq below this was handed out: new files' headers and the
    // high-water traces written before garbage goes say so (TR4).
    bodies
        .next_seq
        .store(loaded.next_seq, std::sync::atomic::Ordering::Release);
    for (log, g) in &garbage {
        log.lock().gens.remove(g);
    }
    for (log, g) in garbage {
        // Traces in it that may still matter go first (`queue/log/trace.rs`).
        let deleted = crate::queue::reap::carry_traces(
            &store,
            &Default::default(),
            &bodies,
            &log,
            g,
            Admit::Committer,
        )
        .and_then(|()| log.delete(&bodies, g));
        if deleted.is_err() {
            log.lock().gens.insert(g);
        }
    }
    let _ = std::fs::remove_file(dir.join(DB_DIR).join(OLD_MARKER));
    ensure_ballast(dir);
    restrict_permissions(dir);
    // Measured once here; kept by every create, append and delete from now on.
    bodies
        .disk_bytes
        .store(dir_size(&bodies.root), std::sync::atomic::Ordering::Relaxed);
    let shared = Arc::new(Shared::new(Parts {
        cfg,
        dir: dir.to_path_buf(),
        instance: Arc::from(instance.as_str()),
        recovered: std::mem::take(recovered),
        logs: Logs::new(bodies, loaded.logs, BTreeSet::new()),
        catalog: Catalog::new(loaded.index),
        ceiling: Ceiling::new(loaded.totals, Drops::loaded(loaded.drops)),
        store: StoreSlot::new(store, lock),
    }));
    tracing::debug!(dir = %dir.display(), instance = %instance, next_seq = loaded.next_seq, "Store opened.");
    Ok(shared)
}

/// Finishes what an interrupted compaction left: if it crashed between its two
/// renames (no `db`), puts the old database back; if it crashed after them,
/// while deleting `db.old`, deletes the rest (the new `db` is complete: it was
/// synced before the first rename).
pub(crate) fn restore_interrupted_swap(dir: &Path) {
    let db = dir.join(DB_DIR);
    let old = dir.join("db.old");
    if !old.exists() {
        return;
    }
    if db.exists() {
        tracing::warn!(dir = %dir.display(), "Removing the old database an interrupted compaction left behind.");
        if let Err(e) = std::fs::remove_dir_all(&old) {
            tracing::warn!(path = %old.display(), error = %e, "Could not remove the old database.");
        }
    } else {
        tracing::warn!(dir = %dir.display(), "Restoring the store from an interrupted compaction.");
        let _ = std::fs::rename(&old, &db);
        let _ = sync_dir(dir);
    }
}

/// Bytes of the files under `path`.
pub(crate) fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Bytes the store takes on disk — sled's database and the body generation
/// files — without opening it.
pub fn store_size(dir: &Path) -> u64 {
    dir_size(&dir.join(DB_DIR)) + dir_size(&dir.join(BODIES_DIR))
}
