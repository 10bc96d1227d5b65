//! The only file that names sled. Everything above it sees `Store` and
//! `WriteBatch`, which speak in topics, chunk keys and encoded records.
//!
//! sled is the queue's *index*: it says which chunk spans of the body files
//! (`queue/log/segment.rs`) are queued, with their retry state, and keeps the dead
//! letters, the seq high-water, each topic's checkpoint and the quarantine.
//! Everything it says about queued events can be rebuilt from the body files
//! (`queue/open/recover.rs`).
//!
//! # Layout inside the sled database (`<dir>/db`), formats 3 to 5
//!
//! ```text
//! tree "meta"        "format"   -> [u8]                  format version
//!                    "instance" -> utf8                  12 hex digits
//!                    "journal.epoch" -> u64 BE           the index journal's epoch
//!                                                       (format 5, `storage/journal.rs`)
//! tree "index"       <topic> 0x00 'I' <seq u64 BE> -> chunk index record: a span of
//!                                                       whole entries of a body file
//!                    <topic> 0x00 'R' <seq u64 BE> -> retry record (only after a failure)
//!                    <topic> 0x00 'D' <seq u64 BE> -> dead letter record (key = its seq)
//!                    <topic> 0x00 'H'              -> u64 BE: seq high-water (every seq
//!                                                       below it was handed out)
//!                    <topic> 0x00 'G'              -> u32 BE generation, u64 BE offset:
//!                                                       the checkpoint (every new entry
//!                                                       before it was indexed; none after)
//!                    <topic> 0x00 'K' <code u64 BE> -> u64 BE: events dropped for the
//!                                                       reason `code` (format 4), so drop
//!                                                       counts survive a restart
//!                    0xFF "journal.applied"        -> u64 BE: lsn of the last journaled
//!                                                       batch sled applied (format 5)
//! tree "quarantine"  <ns u64 BE> <topic> 0x00 <seq u64 BE> <gen u32 BE> <offset u64 BE>
//!                    -> raw bytes of a damaged record (keys before 2026-12-07 end at seq)
//! file evspool.journal   beside sled's files: the index journal (format 5)
//! ```
//!
//! One tree for every topic, where formats 1 and 2 had one per topic: sled
//! costs 10–23 KB of memory per tree (measured with 2,000 and 10,000 topics),
//! about 1 KB per topic in one tree; and one sled `Batch` on one tree is atomic,
//! so a commit round writes every topic's records in one batch. Topic names
//! hold no 0x00 (`validate_topic`), so `<topic> 0x00` is a unique prefix.
//!
//! Formats 1 and 2 kept a tree `topic/<name>` per topic with keys `'C' <seq>`
//! (format-1 chunk records), `'I'`, `'R'`, `'D'` and `'H'` as above; opening
//! such a store migrates it (`queue/open/migrate.rs`) through [`Store::legacy_topics`].
//!
//! # sled facts respected here
//!
//! - `flush_async` can deadlock: only the blocking [`Store::flush`] is offered.
//! - `flush` is `sync_file_range`, not a durability barrier:
//!   [`Store::sync_data_file`] `fdatasync`s the data file where power loss matters.
//! - The default 1 GiB cache is replaced by the configured `cache_capacity`.
//! - A stale `snap.*.generating` file makes open fail: [`move_stale_snapshots`].
//! - A damaged file can make open panic: the panic is caught and reported as
//!   [`OpenFailure::Damaged`].

mod batch;
mod dir;
pub(crate) mod dir_lock;
mod error;
pub(crate) mod journal;
mod loaded;
mod pending;
pub(crate) mod slot;

use crate::record;
use batch::*;
pub(crate) use batch::{WriteBatch, ops_per_batch};
pub(crate) use dir::{OpenFailure, holds_no_data, move_stale_snapshots};
pub use error::StorageError;
use journal::Journal;
pub(crate) use loaded::{LegacyTopic, LoadedTopic, QuarantinePart};
use loaded::{rekeyed_quarantine, unkept};
use pending::Pending;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// sled's segment size, 4 MiB instead of its 512 KiB default: sled stores any
/// page fragment larger than a quarter segment as a separate blob file (an
/// open, write and unlink per value, never synced by sled). Dead letters carry
/// payloads (up to `max_event_bytes`), so fragments of a leaf of them can be
/// large. Persisted in sled's `conf`: part of the on-disk format.
pub(crate) const SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// Most bytes [`Store::copy_into`] holds in one batch.
const COPY_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// The sled database of one store.
pub(crate) struct Store {
    db: sled::Db,
    meta: sled::Tree,
    index: sled::Tree,
    quarantine: sled::Tree,
    path: PathBuf,
    /// Every index-tree batch goes to the journal first, then waits here
    /// to be applied to sled in a larger batch (`storage/journal.rs`).
    journal: Mutex<Indexing>,
}

/// The journal (`None`: a newer format's store, or one that cannot be
/// opened: writes go to sled, flushed) and what sled has not applied yet.
struct Indexing {
    journal: Option<Journal>,
    pending: Pending,
}

impl Drop for Store {
    /// Hands sled the pending batches; its own drop flushes them.
    fn drop(&mut self) {
        let ix = self.journal.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ix.apply_pending(&self.index) {
            tracing::warn!(error = %e, "Applying the journaled index writes at close failed; the next open replays them.");
        }
    }
}

impl Indexing {
    /// Applies every pending batch to sled, merged at record boundaries
    /// into batches of up to `ops_per_batch()` writes (sled keeps every node
    /// version a batch makes alive until it ends: `queue/ops.rs`), each with
    /// the lsn of its last record (J1).
    fn apply_pending(&mut self, index: &sled::Tree) -> Result<(), StorageError> {
        let mut groups = self.pending.take_merged(ops_per_batch()).into_iter();
        while let Some((last, writes)) = groups.next() {
            let mut merged = sled::Batch::default();
            add_writes(&mut merged, writes);
            merged.insert(journal::APPLIED_KEY, &last.to_be_bytes());
            if let Err(e) = index.apply_batch(merged) {
                // sled refuses writes now; a reopen replays the journal.
                self.pending.put_back(groups);
                return Err(sled_error("write", e));
            }
        }
        self.pending.applied();
        Ok(())
    }
}

/// Opens sled's journal, bound to the epoch in `meta` (recorded now for a
/// new sled), and replays what sled lost of it (J2, J3 in
/// `storage/journal.rs`); sled is flushed after a replay and the journal
/// emptied.
fn open_journal(
    db: &sled::Db,
    meta: &sled::Tree,
    index: &sled::Tree,
    path: &Path,
) -> Result<Option<Journal>, OpenFailure> {
    let damaged = |e: sled::Error| OpenFailure::Damaged(e.to_string());
    let format = meta.get(META_FORMAT).map_err(damaged)?;
    if format.as_ref().and_then(|f| f.first().copied()) > Some(record::FORMAT_VERSION) {
        // A newer build's store: open refuses it and touches nothing.
        return Ok(None);
    }
    let epoch = match get_u64(meta, journal::EPOCH_KEY).map_err(damaged)? {
        Some(e) => e,
        None => {
            let e = fastrand::u64(1..);
            meta.insert(journal::EPOCH_KEY, &e.to_be_bytes())
                .map_err(damaged)?;
            db.flush().map_err(damaged)?;
            e
        }
    };
    let applied = get_u64(index, journal::APPLIED_KEY)
        .map_err(damaged)?
        .unwrap_or(0);
    let (mut journal, replay) = match Journal::open(path, epoch, applied) {
        Ok(opened) => opened,
        Err(e) => {
            tracing::error!(error = %e, path = %path.join(journal::FILE).display(), "The index journal cannot be opened; the index is flushed after every write instead.");
            return Ok(None);
        }
    };
    // J9: only a store this build wrote since its format was raised.
    let replayable = format.as_deref() == Some(&[record::FORMAT_VERSION][..]);
    if !replay.is_empty() && replayable {
        let n = replay.len();
        for record in replay {
            let mut b = sled::Batch::default();
            add_writes(&mut b, record.writes);
            b.insert(journal::APPLIED_KEY, &record.lsn.to_be_bytes());
            index.apply_batch(b).map_err(damaged)?;
        }
        tracing::info!(
            records = n,
            "Replayed the index journal: writes a kill had taken from sled's buffer."
        );
    }
    // J9: lsns go on past every record read; sled records where.
    let last = journal.last_lsn();
    if get_u64(index, journal::APPLIED_KEY).map_err(damaged)? != Some(last) {
        index
            .insert(journal::APPLIED_KEY, &last.to_be_bytes())
            .map_err(damaged)?;
    }
    db.flush().map_err(damaged)?;
    journal.reset_after_flush(last);
    Ok(Some(journal))
}

/// A u64 BE value of `tree`, if `key` holds one.
fn get_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, sled::Error> {
    Ok(tree
        .get(key)?
        .and_then(|v| v.as_ref().try_into().ok())
        .map(u64::from_be_bytes))
}

/// Adds index-tree writes to a sled batch, in order.
fn add_writes(batch: &mut sled::Batch, writes: Vec<journal::Write>) {
    for (key, value) in writes {
        match value {
            Some(v) => batch.insert(key, v),
            None => batch.remove(key),
        }
    }
}

/// sled's error as a [`StorageError`]: an I/O error keeps its kind and
/// number (IO2), anything else its text.
fn sled_error(op: &'static str, err: sled::Error) -> StorageError {
    match err {
        sled::Error::Io(io) => StorageError::io(op, io),
        other => StorageError::other(op, other.to_string()),
    }
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub(crate) fn open(
        path: &Path,
        cache_capacity: u64,
        flush_interval: Duration,
    ) -> Result<Store, OpenFailure> {
        let cfg = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity)
            .flush_every_ms(Some(flush_interval.as_millis().max(1) as u64))
            .mode(sled::Mode::HighThroughput)
            .segment_size(SEGMENT_SIZE);
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cfg.open()));
        let db = match opened {
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "open panicked".into());
                return Err(OpenFailure::Damaged(format!(
                    "sled panicked while opening: {msg}"
                )));
            }
            Ok(Err(sled::Error::Io(e))) => {
                let text = e.to_string();
                if text.contains("could not acquire lock") {
                    return Err(OpenFailure::Locked(text));
                }
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) {
                    return Err(OpenFailure::Damaged(text));
                }
                return Err(OpenFailure::Io(e));
            }
            Ok(Err(e)) => return Err(OpenFailure::Damaged(e.to_string())),
            Ok(Ok(db)) => db,
        };
        let tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| OpenFailure::Damaged(e.to_string()))
        };
        let meta = tree("meta")?;
        let index = tree(INDEX_TREE)?;
        let journal = open_journal(&db, &meta, &index, path)?;
        Ok(Store {
            meta,
            index,
            quarantine: tree("quarantine")?,
            path: path.to_path_buf(),
            db,
            journal: Mutex::new(Indexing {
                journal,
                pending: Pending::new(),
            }),
        })
    }

    /// The stored format version, if the store has one yet.
    pub(crate) fn format(&self) -> Result<Option<u8>, StorageError> {
        let v = self
            .meta
            .get(META_FORMAT)
            .map_err(|e| sled_error("read meta", e))?;
        Ok(v.and_then(|v| v.first().copied()))
    }

    /// Records the format version.
    pub(crate) fn set_format(&self, format: u8) -> Result<(), StorageError> {
        self.apply_pending()?;
        self.meta
            .insert(META_FORMAT, &[format])
            .map_err(|e| sled_error("write meta", e))?;
        Ok(())
    }

    /// The instance id, if the store has one yet.
    pub(crate) fn instance(&self) -> Result<Option<String>, StorageError> {
        let v = self
            .meta
            .get(META_INSTANCE)
            .map_err(|e| sled_error("read meta", e))?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|s| !s.is_empty()))
    }

    /// Records the instance id.
    pub(crate) fn set_instance(&self, id: &str) -> Result<(), StorageError> {
        self.apply_pending()?;
        self.meta
            .insert(META_INSTANCE, id.as_bytes())
            .map_err(|e| sled_error("write meta", e))?;
        Ok(())
    }

    /// Reads every topic's index, retry and dead-letter records (never bodies).
    pub(crate) fn load(&self) -> Result<BTreeMap<String, LoadedTopic>, StorageError> {
        self.apply_pending()?;
        let mut out: BTreeMap<String, LoadedTopic> = BTreeMap::new();
        for item in self.index.iter() {
            let (k, v) = item.map_err(|e| sled_error("load index", e))?;
            let Some((topic, kind, seq)) = parse_key(&k) else {
                continue;
            };
            let t = match out.get_mut(topic) {
                Some(t) => t,
                None => out.entry(topic.to_string()).or_default(),
            };
            t.take(kind, seq, &v);
        }
        Ok(out)
    }

    /// Dead letter records of `topic` with seq in `from..`, at most `limit`.
    pub(crate) fn dead_range(
        &self,
        topic: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        // Never read past pending writes: a removal sled has not taken would
        // hand a purged letter out again (read_dead's overlay covers only
        // writes not yet given to the store).
        self.apply_pending()?;
        let mut out = Vec::new();
        let range = key(topic, K_DEAD, Some(from))..=key(topic, K_DEAD, Some(u64::MAX));
        for item in self.index.range(range) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| sled_error("read dead letters", e))?;
            if let Some((_, _, Some(seq))) = parse_key(&k) {
                out.push((seq, v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Applies a batch atomically.
    pub(crate) fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.apply_all(vec![batch])
    }
    /// Applies batches in order, each atomically: journaled first (J1 in
    /// `storage/journal.rs`), then to sled with later ones (J7); a failed
    /// journal write flushes sled instead (J5).
    ///
    /// # Errors
    ///
    /// sled refused a write: this call's batches, or earlier pending ones.
    pub(crate) fn apply_all(&self, batches: Vec<WriteBatch>) -> Result<(), StorageError> {
        let batches: Vec<WriteBatch> = batches.into_iter().filter(|b| b.len() > 0).collect();
        if batches.is_empty() {
            return Ok(());
        }
        let mut ix = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        let Some(journal) = ix.journal.as_mut() else {
            // No journal (a newer format's store, about to be refused, or
            // a journal that could not be opened): sled is flushed instead.
            for batch in batches {
                let mut b = sled::Batch::default();
                add_writes(&mut b, batch.writes);
                self.index
                    .apply_batch(b)
                    .map_err(|e| sled_error("write", e))?;
            }
            return self.flush_sled();
        };
        let writes: Vec<&[journal::Write]> = batches.iter().map(|b| b.writes.as_slice()).collect();
        let (first, appended) = journal.append(&writes);
        let journaled = journal.len();
        // A kill here: the journal has the batches, sled none (J1).
        fail::fail_point!("queue::journal::after_append");
        for (lsn, batch) in (first..).zip(batches) {
            ix.pending.push(lsn, batch);
        }
        if let Err(e) = appended {
            tracing::warn!(error = %e, "Writing the index journal failed; sled is flushed instead.");
            self.flush_locked(&mut ix)
        } else if journaled >= journal::RESET_BYTES {
            self.flush_locked(&mut ix)
        } else if ix.pending.full() {
            // Many writes: sled writes them out now (its buffers would
            // otherwise hold them until its background flush).
            self.flush_locked(&mut ix)
        } else if ix.pending.old() {
            ix.apply_pending(&self.index)
        } else {
            Ok(())
        }
    }

    /// Applies the pending batches to sled, for a read of the index (J7).
    fn apply_pending(&self) -> Result<(), StorageError> {
        let mut ix = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        ix.apply_pending(&self.index)
    }

    /// Applies the pending batches (under the journal's lock), flushes sled
    /// (`sync_file_range`, not power-loss safe; outside the lock) and empties
    /// the journal if no lsn was handed out meanwhile (J6).
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        let mark = {
            let mut ix = self.journal.lock().unwrap_or_else(|e| e.into_inner());
            ix.apply_pending(&self.index)?;
            ix.journal.as_ref().map(Journal::last_lsn)
        };
        self.flush_sled()?;
        // An apply here: its record is not in sled's file (J6).
        fail::fail_point!("queue::storage::flush::after_sled");
        let mut ix = self.journal.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(journal), Some(mark)) = (ix.journal.as_mut(), mark) {
            journal.reset_after_flush(mark);
        }
        Ok(())
    }

    /// [`Store::flush`] with the journal's lock held throughout.
    fn flush_locked(&self, ix: &mut Indexing) -> Result<(), StorageError> {
        ix.apply_pending(&self.index)?;
        self.flush_sled()?;
        if let Some(journal) = ix.journal.as_mut() {
            journal.reset_after_flush(journal.last_lsn());
        }
        Ok(())
    }

    /// sled's own flush: every write it applied reaches its file.
    fn flush_sled(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| sled_error("flush", e))
    }

    /// `fdatasync`s sled's data file (and blobs), making the last flush survive
    /// power loss.
    pub(crate) fn sync_data_file(&self) -> Result<(), StorageError> {
        dir::sync_data_files(&self.path)
    }

    /// Flushes and, with `sync`, makes the database and its directory durable.
    pub(crate) fn persist(&self, sync: bool) -> Result<(), StorageError> {
        self.flush()?;
        if sync {
            self.sync_data_file()?;
            crate::queue::io::sync_dir(&self.path)
                .map_err(|e| StorageError::io("fsync db directory", e))?;
        }
        Ok(())
    }

    /// Bytes sled's files take on disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Copies every tree of this store into a fresh store at `target` (used by
    /// compaction), in key order, as batches of up to [`COPY_BATCH_BYTES`].
    ///
    /// sled logs every insert and rewrites a leaf (≤ 16 keys) every 10 changes:
    /// a copy key by key (sled's `import`) left 11.0 MB for 20,000 index records,
    /// batches of 8 MiB 6.3–6.5 MB (a test holds the copy to ≤ 3/4 of that).
    pub(crate) fn copy_into(&self, target: &Store) -> Result<(), StorageError> {
        self.copy_in_batches(target, COPY_BATCH_BYTES)
    }

    fn copy_in_batches(&self, target: &Store, max_bytes: usize) -> Result<(), StorageError> {
        self.apply_pending()?;
        for name in self.db.tree_names() {
            let from = self
                .db
                .open_tree(&name)
                .map_err(|e| sled_error("open tree to copy", e))?;
            let to = target
                .db
                .open_tree(&name)
                .map_err(|e| sled_error("create copied tree", e))?;
            let mut batch = sled::Batch::default();
            let mut bytes = 0usize;
            for item in from.iter() {
                let (k, v) = item.map_err(|e| sled_error("read tree to copy", e))?;
                bytes += k.len() + v.len();
                batch.insert(k, v);
                if bytes >= max_bytes {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(|e| sled_error("write copied tree", e))?;
                    bytes = 0;
                }
            }
            to.apply_batch(batch)
                .map_err(|e| sled_error("write copied tree", e))?;
        }
        // The copy took this sled's epoch and applied lsn: its journal
        // follows them (J3), so a reopen finds it its own.
        let read = |tree: &sled::Tree, key| {
            get_u64(tree, key).map_err(|e| sled_error("read copied tree", e))
        };
        let epoch = read(&target.meta, journal::EPOCH_KEY)?.unwrap_or(0);
        let applied = read(&target.index, journal::APPLIED_KEY)?.unwrap_or(0);
        target
            .journal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .journal
            .as_mut()
            .map_or(Ok(()), |j| j.rebind(epoch, applied))
            .map_err(|e| StorageError::io("write index journal", e))
    }

    /// Stores the raw bytes of the damaged `parts` found under `seq` (a
    /// chunk's key, or an entry's seq at open) in quarantine, in one batch,
    /// those it keeps already excepted (`unkept`), then deletes the oldest
    /// records past `max_bytes` (quarantine is kept for inspection, never
    /// delivered; it must not grow without bound). Returns the bytes
    /// quarantine holds and how many parts were recorded.
    pub(crate) fn quarantine(
        &self,
        topic: &str,
        seq: u64,
        parts: &[QuarantinePart<'_>],
        max_bytes: u64,
    ) -> Result<(u64, usize), StorageError> {
        self.apply_pending()?;
        let (mut held, new) = unkept(self.quarantine.iter(), topic, seq, parts)
            .map_err(|e| sled_error("quarantine", e))?;
        if !new.is_empty() {
            let mut batch = sled::Batch::default();
            for (key, bytes) in &new {
                batch.insert(&key[..], *bytes);
            }
            self.quarantine
                .apply_batch(batch)
                .map_err(|e| sled_error("quarantine", e))?;
        }
        if held > max_bytes {
            held = self.prune_quarantine(max_bytes)?;
        }
        // J8: in sled's file, synced, before the removal that follows it.
        self.flush()?;
        self.sync_data_file()?;
        Ok((held, new.len()))
    }

    /// Deletes the oldest quarantined records until at most `max_bytes`
    /// remain; returns the bytes that remain.
    pub(crate) fn prune_quarantine(&self, max_bytes: u64) -> Result<u64, StorageError> {
        self.apply_pending()?;
        let (_, mut bytes) = self.quarantine_usage();
        for item in self.quarantine.iter() {
            if bytes <= max_bytes {
                break;
            }
            let (k, v) = item.map_err(|e| sled_error("prune quarantine", e))?;
            self.quarantine
                .remove(k)
                .map_err(|e| sled_error("prune quarantine", e))?;
            bytes = bytes.saturating_sub(v.len() as u64);
            tracing::warn!(
                bytes = v.len(),
                "Oldest quarantined record deleted: quarantine is over its limit."
            );
        }
        Ok(bytes)
    }

    /// Number and total bytes of quarantined records.
    pub(crate) fn quarantine_usage(&self) -> (u64, u64) {
        let sizes = self
            .quarantine
            .iter()
            .flatten()
            .map(|(_, v)| v.len() as u64);
        sizes.fold((0, 0), |(n, bytes), len| (n + 1, bytes + len))
    }

    /// Re-keys format-1/2 quarantine records (`<topic> 0 <seq> <ns>`) as
    /// format 3 (`<ns> <topic> 0 <seq>`), so the oldest are pruned first.
    pub(crate) fn migrate_quarantine(&self) -> Result<(), StorageError> {
        self.apply_pending()?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.quarantine.iter() {
            let (k, v) = item.map_err(|e| sled_error("migrate quarantine", e))?;
            let Some(new) = rekeyed_quarantine(&k) else {
                continue;
            };
            batch.remove(k);
            batch.insert(new, v);
            n += 1;
        }
        if n > 0 {
            self.quarantine
                .apply_batch(batch)
                .map_err(|e| sled_error("migrate quarantine", e))?;
        }
        Ok(())
    }

    /// Names of the per-topic trees of a format-1 or format-2 store.
    pub(crate) fn legacy_topics(&self) -> Vec<String> {
        self.db
            .tree_names()
            .into_iter()
            .filter_map(|n| {
                std::str::from_utf8(&n)
                    .ok()
                    .and_then(|s| s.strip_prefix(LEGACY_PREFIX))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Reads a format-1/2 topic tree whole.
    pub(crate) fn load_legacy(&self, topic: &str) -> Result<LegacyTopic, StorageError> {
        let tree = self
            .db
            .open_tree(format!("{LEGACY_PREFIX}{topic}"))
            .map_err(|e| sled_error("open legacy topic", e))?;
        let mut out = LegacyTopic::default();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| sled_error("load legacy topic", e))?;
            if k.as_ref() == b"H" && v.len() == 8 {
                out.high_water = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
                continue;
            }
            if k.len() != 9 {
                continue;
            }
            let seq = u64::from_be_bytes(k[1..9].try_into().unwrap_or([0; 8]));
            let list = match k[0] {
                K_CHUNK => &mut out.chunks,
                K_INDEX => &mut out.index,
                K_RETRY => &mut out.retry,
                K_DEAD => &mut out.dead,
                _ => continue,
            };
            list.push((seq, v.to_vec()));
        }
        Ok(out)
    }

    /// Deletes a migrated format-1/2 topic tree.
    pub(crate) fn drop_legacy(&self, topic: &str) -> Result<(), StorageError> {
        // The migrated records reach sled before the tree they replace goes
        // (J8).
        self.apply_pending()?;
        self.db
            .drop_tree(format!("{LEGACY_PREFIX}{topic}"))
            .map(|_| ())
            .map_err(|e| sled_error("drop legacy topic", e))
    }
}

/// A bare sled database configured as [`Store::open`] does (for tests).
#[cfg(test)]
fn bare_sled(path: &Path) -> sled::Db {
    sled::Config::new()
        .path(path)
        .cache_capacity(64 << 20)
        .mode(sled::Mode::HighThroughput)
        .segment_size(SEGMENT_SIZE)
        .open()
        .expect("sled opens")
}

#[cfg(test)]
mod tests;
