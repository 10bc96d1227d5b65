//! Opening a store: directory and lock, damage recovery, format check, and
//! rebuilding the in-memory index and accounting from the index records.

use super::lease::{ChunkInfo, ChunkState, Index, TopicIndex};
use super::storage::{self, OpenFailure, Store};
use super::{Queue, Shared};
use crate::ceiling::{Drops, Space, Totals};
use crate::config::QueueConfig;
use crate::error::OpenError;
use crate::event::now_ms;
use crate::record::{self, FORMAT_VERSION};
use crate::storage::WriteBatch;
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::watch;

const LOCK_FILE: &str = "evspool.lock";
const DB_DIR: &str = "db";
/// Created inside `db/` once the store's metadata (format, instance id) has been
/// flushed. A store that has it but whose sled files show no metadata lost its
/// data file: sled opens a garbage or truncated data file as an empty database,
/// silently, so without this file the loss would go unnoticed.
const INITIALIZED_MARKER: &str = "evspool.initialized";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the directory (0700) or checks that an existing one is a store.
fn prepare_dir(dir: &Path) -> Result<(), OpenError> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => {
            return Err(OpenError::NotAStore {
                dir: dir.to_path_buf(),
                reason: "it is a file, not a directory".into(),
            });
        }
        Ok(_) => {
            let mut foreign = Vec::new();
            for entry in std::fs::read_dir(dir).map_err(io_err(dir))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = name == LOCK_FILE
                    || name == DB_DIR
                    || name == "db.old"
                    || name == "db.compact"
                    || name == "evspool.admin"
                    || name == BALLAST_FILE
                    || name == storage::BODIES_DIR
                    || name.starts_with("damaged-")
                    || name.starts_with("aside-")
                    || name.starts_with('.');
                if !ours {
                    foreign.push(name);
                }
            }
            let has_store = dir.join(DB_DIR).exists() || dir.join(LOCK_FILE).exists();
            if !foreign.is_empty() && !has_store {
                foreign.sort();
                foreign.truncate(3);
                return Err(OpenError::NotAStore {
                    dir: dir.to_path_buf(),
                    reason: format!(
                        "it holds other files ({}); use an empty or evspool directory",
                        foreign.join(", ")
                    ),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    Ok(())
}

/// Takes the directory lock and writes our pid into the lock file.
fn take_lock(dir: &Path) -> Result<std::fs::File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim().parse::<u32>().ok();
            return Err(OpenError::Locked {
                dir: dir.to_path_buf(),
                holder: pid.map_or_else(|| "another process".into(), |p| format!("pid {p}")),
                pid,
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = writeln!(file, "{}", std::process::id());
    let _ = file.sync_data();
    Ok(file)
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

/// Opens sled, moving stale snapshots and, as a last resort, a damaged store aside.
fn open_store(
    dir: &Path,
    cfg: &QueueConfig,
    recovered: &mut Vec<String>,
) -> Result<Store, OpenError> {
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
    let open = || {
        Store::open(
            &db_path,
            cfg.cache_capacity.as_u64(),
            cfg.flush_interval,
            cfg.fsync,
        )
    };
    let mut first = match open() {
        // A full disk can stop sled from even opening: give it the ballast's space.
        Err(OpenFailure::Io(e)) if is_disk_full(&e) && release_ballast(dir, recovered) => open(),
        other => other,
    };
    // Our own lock file is held, so no other evspool owns this store: a held
    // sled lock is someone letting go — a child forked by this process that
    // has not exec'd yet still shares the descriptor, or the previous handle's
    // threads are finishing. Give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while matches!(first, Err(OpenFailure::Locked(_))) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
        first = open();
    }
    match first {
        Ok(store) => Ok(store),
        Err(OpenFailure::Locked(text)) => Err(OpenError::Locked {
            dir: dir.to_path_buf(),
            holder: format!("another process ({text})"),
            pid: None,
        }),
        Err(OpenFailure::Io(e)) => Err(io_err(&db_path)(e)),
        Err(OpenFailure::Damaged(why)) => {
            move_damaged_aside(dir, &why, recovered)?;
            match open() {
                Ok(store) => Ok(store),
                Err(OpenFailure::Io(e)) => Err(io_err(&db_path)(e)),
                Err(OpenFailure::Locked(text) | OpenFailure::Damaged(text)) => Err(OpenError::Io {
                    path: db_path.clone(),
                    source: std::io::Error::other(text),
                }),
            }
        }
    }
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
    let path = dir.join(BALLAST_FILE);
    if std::fs::remove_file(&path).is_err() {
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
    use std::io::Write;
    let path = dir.join(BALLAST_FILE);
    if path.exists() {
        return;
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(&vec![0u8; BALLAST_BYTES])
                .and_then(|()| f.sync_all())
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&path);
    }
}

/// Moves the sled directory to `dir/damaged-<time>`, loudly, so that a fresh
/// store can start; the damaged files are kept for inspection.
fn move_damaged_aside(dir: &Path, why: &str, recovered: &mut Vec<String>) -> Result<(), OpenError> {
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
    // The body generation files belong to that database: keep them with it.
    let bodies = dir.join(storage::BODIES_DIR);
    if bodies.exists() {
        let to = damaged.join(storage::BODIES_DIR);
        std::fs::rename(&bodies, &to).map_err(io_err(&bodies))?;
    }
    tracing::error!(
        dir = %dir.display(),
        moved_to = %damaged.display(),
        reason = %why,
        "Store could not be opened and was moved aside; starting with an empty store. The damaged files are kept for inspection."
    );
    metrics::counter!("evspool_store_moved_aside_total").increment(1);
    recovered.push(format!(
        "store was damaged ({why}); moved to {} and started empty",
        damaged.display()
    ));
    Ok(())
}

fn new_instance_id() -> String {
    format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

pub(super) fn open(dir: &Path, cfg: QueueConfig) -> Result<Queue, OpenError> {
    cfg.validate()?;
    prepare_dir(dir)?;
    let lock = take_lock(dir)?;
    restore_interrupted_swap(dir);
    let mut recovered = Vec::new();
    let mut store = open_store(dir, &cfg, &mut recovered)?;
    let storage_err = |source| OpenError::Storage {
        dir: dir.to_path_buf(),
        source,
    };
    let marker = dir.join(DB_DIR).join(INITIALIZED_MARKER);
    let mut format = store.format().map_err(storage_err)?;
    if format.is_none() && marker.exists() {
        // The metadata was flushed once, yet sled shows none of it: sled opened a
        // damaged or truncated data file as an empty database.
        drop(store);
        move_damaged_aside(
            dir,
            "its data file no longer holds the store's metadata: damaged or truncated",
            &mut recovered,
        )?;
        store = open_store(dir, &cfg, &mut recovered)?;
        format = store.format().map_err(storage_err)?;
    }
    match format {
        Some(found) if found > FORMAT_VERSION => {
            return Err(OpenError::NewerFormat {
                dir: dir.to_path_buf(),
                found,
                supported: FORMAT_VERSION,
            });
        }
        Some(found) if found < FORMAT_VERSION => {
            // Format 1 → 2 needs no rewrite: format-1 chunks stay readable in
            // generation 0. Recording 2 makes older builds refuse the store
            // instead of misreading the format-2 records it now gets.
            store.set_format(FORMAT_VERSION).map_err(storage_err)?;
            tracing::info!(dir = %dir.display(), from = found, to = FORMAT_VERSION, "Store format upgraded.");
        }
        Some(_) => {}
        None => store.set_format(FORMAT_VERSION).map_err(storage_err)?,
    }
    let instance = match store.instance().map_err(storage_err)? {
        Some(id) if !id.is_empty() => id,
        _ => {
            let id = new_instance_id();
            store.set_instance(&id).map_err(storage_err)?;
            id
        }
    };
    if !marker.exists() {
        // The marker may only exist once the metadata it vouches for is flushed.
        store.flush().map_err(storage_err)?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&marker)
            .map_err(io_err(&marker))?;
    }

    let totals = Totals::default();
    let mut index = Index::default();
    let mut generations = HashMap::new();
    let mut next_seq = 1u64;
    let now = now_ms();
    let mut quarantined = 0u64;
    let mut names = store.topic_names();
    names.extend(store.body_topics());
    names.sort();
    names.dedup();
    for name in names {
        let tree = store.topic(&name).map_err(storage_err)?;
        let loaded = tree.load().map_err(storage_err)?;
        let topic: Arc<str> = Arc::from(name.as_str());
        let generation = Arc::new(watch::channel(0u64).0);
        generations.insert(topic.clone(), generation.clone());
        let body_gens = store.body_generations(&name);
        let mut t = TopicIndex::new(tree.clone(), generation, 1);
        for g in &body_gens {
            t.add_generation(*g, store.body(&name, *g).map_err(storage_err)?);
        }
        next_seq = next_seq.max(loaded.high_water);
        let retry: HashMap<u64, record::RetryState> = loaded
            .retry
            .into_iter()
            .filter_map(|(k, r)| r.ok().map(|r| (k, r)))
            .collect();
        let mut repair = WriteBatch::default();
        for (key, idx) in loaded.index {
            let idx = match idx {
                Ok(idx) => idx,
                Err(e) => {
                    // The summary is damaged; the chunk itself may be fine. Which
                    // generation holds it is lost with the summary: look in each,
                    // newest first (a chunk is written once per key and generation).
                    let mut found = None;
                    for g in std::iter::once(0).chain(body_gens.iter().rev().copied()) {
                        if let Some(body) = t.body(g)
                            && let Some(hit) = body.find(key).map_err(storage_err)?
                        {
                            found = Some((g, hit));
                            break;
                        }
                    }
                    match found {
                        Some((g, (raw, body_offset, body_len))) => match record::decode_chunk(&raw)
                        {
                            Ok(events) => {
                                let idx = record::ChunkIndex {
                                    events: events.len() as u32,
                                    bytes: events.iter().map(|e| e.payload.len() as u64).sum(),
                                    last_seq: events.last().map(|e| e.seq).unwrap_or(key),
                                    first_enqueued_ms: events[0].enqueued_at_ms,
                                    body_gen: g,
                                    body_offset,
                                    body_len,
                                };
                                repair.put_index(key, &idx);
                                idx
                            }
                            Err(_) => {
                                let _ = store.quarantine(&name, key, &raw);
                                repair.remove_chunk(key, g);
                                quarantined += 1;
                                tracing::error!(topic = %name, chunk = key, error = %e, "Damaged chunk moved to quarantine at open.");
                                continue;
                            }
                        },
                        None => {
                            repair.remove_chunk(key, 0);
                            continue;
                        }
                    }
                }
            };
            next_seq = next_seq.max(idx.last_seq + 1);
            let r = retry.get(&key);
            totals.add(idx.events as u64, idx.bytes);
            t.insert(
                key,
                ChunkInfo {
                    index: idx,
                    attempts: r.map_or(0, |r| r.attempts),
                    not_before_ms: r.map_or(0, |r| r.not_before_ms),
                    last_error: r
                        .filter(|r| !r.last_error.is_empty())
                        .map(|r| Arc::from(r.last_error.as_str())),
                    state: ChunkState::Ready,
                },
                now,
            );
        }
        // Retry records whose chunk is gone (acked while the retry write raced) are stale.
        for key in retry.keys().filter(|k| !t.chunks.contains_key(k)) {
            repair.remove_retry(*key);
        }
        for (seq, len, dead) in loaded.dead {
            next_seq = next_seq.max(seq + 1);
            let bytes = dead.map(|d| d.payload.len() as u64).unwrap_or(len);
            t.dead_usage.add(1, bytes);
        }
        // Entries a crash left without their index record (I1): appended at or
        // above the persisted high-water, so their index batch — which raises
        // the high-water with it — was never flushed. Only generations from the
        // newest one an index record names onwards can hold such entries.
        let newest_indexed = t
            .chunks
            .values()
            .map(|c| c.index.body_gen)
            .max()
            .unwrap_or(0);
        let mut adopted = 0u64;
        for g in body_gens.iter().copied().filter(|g| *g >= newest_indexed) {
            let Some(body) = t.body(g) else { continue };
            for (seq, body_offset, body_len) in body.entries().map_err(storage_err)? {
                if seq < loaded.high_water || t.chunks.contains_key(&seq) {
                    continue;
                }
                let at = record::ChunkIndex {
                    events: 0,
                    bytes: 0,
                    last_seq: seq,
                    first_enqueued_ms: 0,
                    body_gen: g,
                    body_offset,
                    body_len,
                };
                let Some(raw) = body.chunk(seq, &at).map_err(storage_err)? else {
                    continue;
                };
                // A damaged entry was never acknowledged: its round's durable
                // mark is published only after the whole write returned.
                let Ok(events) = record::decode_chunk(&raw) else {
                    continue;
                };
                let idx = record::ChunkIndex {
                    events: events.len() as u32,
                    bytes: events.iter().map(|e| e.payload.len() as u64).sum(),
                    last_seq: events.last().map(|e| e.seq).unwrap_or(seq),
                    first_enqueued_ms: events[0].enqueued_at_ms,
                    ..at
                };
                repair.put_index(seq, &idx);
                next_seq = next_seq.max(idx.last_seq + 1);
                totals.add(idx.events as u64, idx.bytes);
                adopted += idx.events as u64;
                t.insert(seq, ChunkInfo::fresh(idx), now);
            }
        }
        if adopted > 0 {
            repair.set_high_water(next_seq);
            tracing::info!(topic = %name, events = adopted, "Re-indexed events whose index records a crash lost.");
        }
        if !repair.is_empty() {
            tree.apply(repair).map_err(storage_err)?;
        }
        // Generations no index record names are garbage: everything in them was
        // acked before a crash (or a restart) let them be dropped.
        for g in t.take_unused_generations() {
            store.drop_body(&name, g).map_err(storage_err)?;
        }
        index.topics.insert(topic, t);
    }
    if quarantined > 0 {
        recovered.push(format!(
            "{quarantined} damaged chunk(s) quarantined at open"
        ));
    }
    ensure_ballast(dir);
    restrict_permissions(dir);

    let shared = Arc::new(Shared {
        dir: dir.to_path_buf(),
        store,
        instance: Arc::from(instance.as_str()),
        writer: Mutex::new(super::commit::Writer {
            next_seq,
            ..Default::default()
        }),
        commit_cv: Condvar::new(),
        space: Space::default(),
        index: Mutex::new(index),
        generations: Mutex::new(generations),
        rotation: Mutex::new(()),
        doomed: Mutex::new((std::time::Instant::now(), Vec::new())),
        reaping: AtomicBool::new(false),
        reaper: Mutex::new(None),
        pending_acks: Mutex::new(HashMap::new()),
        ack_apply: Mutex::new(()),
        committer_stopped: AtomicBool::new(false),
        durable: watch::channel(super::commit::DurableMark {
            seq: next_seq - 1,
            failed: None,
        })
        .0,
        totals,
        drops: Drops::default(),
        failed: AtomicBool::new(false),
        failed_reason: Mutex::new(None),
        next_lease: AtomicU64::new(0),
        quarantined: AtomicU64::new(quarantined),
        recovered,
        cfg,
        _lock: lock,
    });
    tracing::debug!(dir = %dir.display(), instance = %instance, next_seq, "Store opened.");
    Ok(Queue::from_shared(shared))
}

/// What `compact` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompactReport {
    /// sled's size on disk before.
    pub before_bytes: u64,
    /// sled's size on disk after.
    pub after_bytes: u64,
}

/// Rewrites the store in `dir` into a fresh sled database and swaps it in,
/// reclaiming the space sled never returns after a drain.
///
/// Takes the directory lock for the whole operation. The new database is
/// written beside the old one (`db.compact`), flushed, then swapped in with two
/// renames; a crash before the swap leaves the old store in place (the partial
/// copy is removed on the next compaction), a crash between the renames leaves
/// `db.old` which the next open of a store without `db` would not pick up — so
/// the swap renames the old database aside only after the new one is complete,
/// and open restores `db.old` if `db` is missing.
///
/// # Errors
///
/// As [`Queue::open`](super::Queue::open).
pub fn compact(dir: &Path, cfg: &QueueConfig) -> Result<CompactReport, OpenError> {
    cfg.validate()?;
    if !dir.join(DB_DIR).exists() {
        return Err(OpenError::NotAStore {
            dir: dir.to_path_buf(),
            reason: "it has no db/ directory".into(),
        });
    }
    let before_bytes = store_size(dir);
    // First the body generations: rewrite what is queued into fresh files so
    // the old ones (with the acked chunks they still carry) go.
    {
        let q = super::Queue::open(dir, cfg.clone())?;
        q.compact_bodies().map_err(|e| OpenError::Io {
            path: dir.join(storage::BODIES_DIR),
            source: std::io::Error::other(e.to_string()),
        })?;
        q.close();
    }
    // The queue's last threads let go of the lock a moment after close.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let _lock = loop {
        match take_lock(dir) {
            Err(OpenError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => break other?,
        }
    };
    restore_interrupted_swap(dir);
    let mut recovered = Vec::new();
    let old = open_store(dir, cfg, &mut recovered)?;
    let tmp = dir.join("db.compact");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
    }
    let storage_err = |source| OpenError::Storage {
        dir: dir.to_path_buf(),
        source,
    };
    {
        let new = match Store::open(
            &tmp,
            cfg.cache_capacity.as_u64(),
            cfg.flush_interval,
            cfg.fsync,
        ) {
            Ok(s) => s,
            Err(OpenFailure::Io(e)) => return Err(io_err(&tmp)(e)),
            Err(OpenFailure::Locked(t) | OpenFailure::Damaged(t)) => {
                return Err(io_err(&tmp)(std::io::Error::other(t)));
            }
        };
        old.copy_into(&new);
        new.flush().map_err(storage_err)?;
    }
    drop(old);
    let aside = dir.join("db.old");
    let db = dir.join(DB_DIR);
    std::fs::rename(&db, &aside).map_err(io_err(&aside))?;
    std::fs::rename(&tmp, &db).map_err(io_err(&tmp))?;
    std::fs::remove_dir_all(&aside).map_err(io_err(&aside))?;
    restrict_permissions(dir);
    let after_bytes = store_size(dir);
    tracing::info!(before_bytes, after_bytes, "Store compacted.");
    Ok(CompactReport {
        before_bytes,
        after_bytes,
    })
}

/// Finishes what an interrupted compaction left: if it crashed between its two
/// renames (no `db`), puts the old database back; if it crashed after them,
/// while deleting `db.old`, deletes the rest (the new `db` is complete: it was
/// flushed before the first rename).
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
    dir_size(&dir.join(DB_DIR)) + dir_size(&dir.join(storage::BODIES_DIR))
}
