//! The only file that names sled. Everything above it sees `Store` and
//! `WriteBatch`, which speak in topics, chunk keys and encoded records.
//!
//! sled is the queue's *index*: it says which chunk spans of the body files
//! (`queue/segment.rs`) are queued, with their retry state, and keeps the dead
//! letters, the seq high-water, each topic's checkpoint and the quarantine.
//! Everything it says about queued events can be rebuilt from the body files
//! (`queue/recover.rs`).
//!
//! # Layout inside the sled database (`<dir>/db`), format 3
//!
//! ```text
//! tree "meta"        "format"   -> [u8]                  format version
//!                    "instance" -> utf8                  12 hex digits
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
//! tree "quarantine"  <ns u64 BE> <topic> 0x00 <seq u64 BE> -> raw bytes of a damaged record
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
//! such a store migrates it (`queue/migrate.rs`) through [`Store::legacy_topics`].
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

use crate::record::{self, ChunkIndex, DeadLetter, RecordError, RetryState};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// sled's segment size, 4 MiB instead of its 512 KiB default: sled stores any
/// page fragment larger than a quarter segment as a separate blob file (an
/// open, write and unlink per value, never synced by sled). Dead letters carry
/// payloads (up to `max_event_bytes`), so fragments of a leaf of them can be
/// large. Persisted in sled's `conf`: part of the on-disk format.
pub(crate) const SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// Most key and value bytes [`Store::copy_into`] holds in one batch.
const COPY_BATCH_BYTES: usize = 8 * 1024 * 1024;

const META_FORMAT: &[u8] = b"format";
const META_INSTANCE: &[u8] = b"instance";
const INDEX_TREE: &str = "index";
const LEGACY_PREFIX: &str = "topic/";
const K_CHUNK: u8 = b'C';
const K_INDEX: u8 = b'I';
const K_RETRY: u8 = b'R';
const K_DEAD: u8 = b'D';
const K_HIGH_WATER: u8 = b'H';
const K_CHECKPOINT: u8 = b'G';
const K_DROPS: u8 = b'K';

/// A storage operation failed: sled, or a body file.
#[derive(Clone, Debug, thiserror::Error)]
#[error("storage {op} failed: {message}")]
pub struct StorageError {
    op: &'static str,
    message: String,
    io_kind: Option<std::io::ErrorKind>,
    os_error: Option<i32>,
    /// The write was refused because the queue closed (`QueueError::Closed`).
    closed: bool,
}

impl StorageError {
    fn sled(op: &'static str, err: sled::Error) -> Self {
        match err {
            sled::Error::Io(io) => Self::io(op, io),
            other => Self {
                op,
                message: other.to_string(),
                io_kind: None,
                os_error: None,
                closed: false,
            },
        }
    }

    /// An I/O error of a body file or directory.
    pub(crate) fn io(op: &'static str, err: std::io::Error) -> Self {
        Self {
            op,
            message: err.to_string(),
            io_kind: Some(err.kind()),
            os_error: err.raw_os_error(),
            closed: false,
        }
    }

    /// A write refused because the queue closed (G7 in `queue/log.rs`).
    pub(crate) fn closed() -> Self {
        Self {
            op: "write",
            message: "the queue is closed".into(),
            io_kind: None,
            os_error: None,
            closed: true,
        }
    }

    /// Whether the write was refused because the queue closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// A failure injected by a test's fail point.
    #[cfg(feature = "failpoints")]
    pub(crate) fn injected(point: &'static str) -> Self {
        Self {
            op: "write",
            message: format!("injected by fail point {point}"),
            io_kind: Some(std::io::ErrorKind::Other),
            os_error: None,
            closed: false,
        }
    }

    /// The I/O error kind, when the failure was an I/O error (e.g. a full disk).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.io_kind
    }

    /// Whether the failure is transient — the process ran out of file
    /// descriptors (EMFILE, ENFILE) or memory (ENOMEM), or the call would have
    /// blocked (EAGAIN) or was interrupted (EINTR): it failed that call only
    /// (retry it), and never makes the store fail closed. The one
    /// classification every I/O site uses (`queue/io.rs`).
    pub fn is_transient(&self) -> bool {
        super::io::errno_is_transient(self.os_error)
    }
}

/// Why the sled database could not be opened.
pub(crate) enum OpenFailure {
    /// Another process holds sled's lock on the data file.
    Locked(String),
    /// The files are damaged: open panicked or sled reported corruption.
    Damaged(String),
    /// Any other I/O error (permissions, missing directory, ...).
    Io(std::io::Error),
}

/// The sled database of one store.
pub(crate) struct Store {
    db: sled::Db,
    meta: sled::Tree,
    index: sled::Tree,
    quarantine: sled::Tree,
    path: PathBuf,
}

/// One chunk's index record as loaded: its format and decoded index, or why it
/// could not be decoded.
pub(crate) type LoadedIndex = Result<(u8, ChunkIndex), RecordError>;

/// What loading the index found for one topic.
#[derive(Default)]
pub(crate) struct LoadedTopic {
    /// Chunk keys with their decoded (or failed) index records and formats.
    pub(crate) index: Vec<(u64, LoadedIndex)>,
    /// Retry records by chunk key.
    pub(crate) retry: Vec<(u64, Result<RetryState, RecordError>)>,
    /// Dead letters: (seq, payload bytes, or the record's length if damaged).
    pub(crate) dead: Vec<(u64, u64)>,
    /// The persisted seq high-water.
    pub(crate) high_water: u64,
    /// The persisted checkpoint (generation, offset), if any.
    pub(crate) checkpoint: Option<(u32, u64)>,
    /// Events dropped, by drop reason code (`DropReason::code`).
    pub(crate) drops: Vec<(u64, u64)>,
}

/// A format-1 or format-2 topic tree, raw, for the migration.
#[derive(Default)]
pub(crate) struct LegacyTopic {
    /// `'C'` chunk records (format 1: the chunk bodies themselves).
    pub(crate) chunks: Vec<(u64, Vec<u8>)>,
    /// `'I'` index records.
    pub(crate) index: Vec<(u64, Vec<u8>)>,
    /// `'R'` retry records.
    pub(crate) retry: Vec<(u64, Vec<u8>)>,
    /// `'D'` dead letters.
    pub(crate) dead: Vec<(u64, Vec<u8>)>,
    pub(crate) high_water: u64,
}

/// An atomic group of writes to the index tree.
#[derive(Default)]
pub(crate) struct WriteBatch {
    inner: sled::Batch,
    pub(crate) ops: usize,
}

fn key(topic: &str, kind: u8, seq: Option<u64>) -> Vec<u8> {
    let mut k = Vec::with_capacity(topic.len() + 10);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.push(kind);
    if let Some(seq) = seq {
        k.extend_from_slice(&seq.to_be_bytes());
    }
    k
}

/// (topic, kind, seq) of an index tree key.
fn parse_key(k: &[u8]) -> Option<(&str, u8, Option<u64>)> {
    let nul = k.iter().position(|b| *b == 0)?;
    let topic = std::str::from_utf8(&k[..nul]).ok()?;
    let kind = *k.get(nul + 1)?;
    let rest = &k[nul + 2..];
    let seq = match rest.len() {
        0 => None,
        8 => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => return None,
    };
    Some((topic, kind, seq))
}

/// Moves stale `snap.*.generating` files (left by a crash during a snapshot)
/// into `aside`, returning how many were moved.
pub(crate) fn move_stale_snapshots(db_path: &Path, aside: &Path) -> std::io::Result<usize> {
    let mut moved = 0;
    let Ok(entries) = std::fs::read_dir(db_path) else {
        return Ok(0);
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::create_dir_all(aside)?;
            std::fs::rename(entry.path(), aside.join(&*name))?;
            moved += 1;
        }
    }
    Ok(moved)
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
        Ok(Store {
            meta: tree("meta")?,
            index: tree(INDEX_TREE)?,
            quarantine: tree("quarantine")?,
            path: path.to_path_buf(),
            db,
        })
    }

    /// The stored format version, if the store has one yet.
    pub(crate) fn format(&self) -> Result<Option<u8>, StorageError> {
        let v = self
            .meta
            .get(META_FORMAT)
            .map_err(|e| StorageError::sled("read meta", e))?;
        Ok(v.and_then(|v| v.first().copied()))
    }

    /// Records the format version.
    pub(crate) fn set_format(&self, format: u8) -> Result<(), StorageError> {
        self.meta
            .insert(META_FORMAT, &[format])
            .map_err(|e| StorageError::sled("write meta", e))?;
        Ok(())
    }

    /// The instance id, if the store has one yet.
    pub(crate) fn instance(&self) -> Result<Option<String>, StorageError> {
        let v = self
            .meta
            .get(META_INSTANCE)
            .map_err(|e| StorageError::sled("read meta", e))?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|s| !s.is_empty()))
    }

    /// Records the instance id.
    pub(crate) fn set_instance(&self, id: &str) -> Result<(), StorageError> {
        self.meta
            .insert(META_INSTANCE, id.as_bytes())
            .map_err(|e| StorageError::sled("write meta", e))?;
        Ok(())
    }

    /// Reads every topic's index, retry and dead-letter records (never bodies).
    pub(crate) fn load(&self) -> Result<BTreeMap<String, LoadedTopic>, StorageError> {
        let mut out: BTreeMap<String, LoadedTopic> = BTreeMap::new();
        for item in self.index.iter() {
            let (k, v) = item.map_err(|e| StorageError::sled("load index", e))?;
            let Some((topic, kind, seq)) = parse_key(&k) else {
                continue;
            };
            let t = match out.get_mut(topic) {
                Some(t) => t,
                None => out.entry(topic.to_string()).or_default(),
            };
            match (kind, seq) {
                (K_INDEX, Some(seq)) => t.index.push((seq, record::decode_index_with_format(&v))),
                (K_RETRY, Some(seq)) => t.retry.push((seq, record::decode_retry(&v))),
                (K_DEAD, Some(seq)) => {
                    let bytes = record::decode_dead(&v)
                        .map(|d| d.payload.len() as u64)
                        .unwrap_or(v.len() as u64);
                    t.dead.push((seq, bytes));
                }
                (K_HIGH_WATER, None) if v.len() == 8 => {
                    t.high_water = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
                }
                (K_DROPS, Some(code)) if v.len() == 8 => {
                    t.drops.push((
                        code,
                        u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
                    ));
                }
                (K_CHECKPOINT, None) if v.len() == 12 => {
                    let g = u32::from_be_bytes(v[..4].try_into().unwrap_or([0; 4]));
                    let o = u64::from_be_bytes(v[4..].try_into().unwrap_or([0; 8]));
                    t.checkpoint = Some((g, o));
                }
                _ => {}
            }
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
        let mut out = Vec::new();
        let range = key(topic, K_DEAD, Some(from))..=key(topic, K_DEAD, Some(u64::MAX));
        for item in self.index.range(range) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| StorageError::sled("read dead letters", e))?;
            if let Some((_, _, Some(seq))) = parse_key(&k) {
                out.push((seq, v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Applies a batch atomically.
    pub(crate) fn apply(&self, batch: WriteBatch) -> Result<(), StorageError> {
        if batch.ops == 0 {
            return Ok(());
        }
        self.index
            .apply_batch(batch.inner)
            .map_err(|e| StorageError::sled("write", e))
    }

    /// Stores the raw bytes of a damaged record in quarantine, then deletes the
    /// oldest quarantined records past `max_bytes` (quarantine is kept for
    /// inspection, never delivered; it must not grow without bound); returns
    /// the bytes quarantine holds.
    pub(crate) fn quarantine(
        &self,
        topic: &str,
        seq: u64,
        raw: &[u8],
        max_bytes: u64,
    ) -> Result<u64, StorageError> {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut k = Vec::with_capacity(topic.len() + 17);
        k.extend_from_slice(&ns.to_be_bytes());
        k.extend_from_slice(topic.as_bytes());
        k.push(0);
        k.extend_from_slice(&seq.to_be_bytes());
        self.quarantine
            .insert(k, raw)
            .map_err(|e| StorageError::sled("quarantine", e))?;
        self.prune_quarantine(max_bytes)
    }

    /// Deletes the oldest quarantined records until at most `max_bytes`
    /// remain; returns the bytes that remain.
    pub(crate) fn prune_quarantine(&self, max_bytes: u64) -> Result<u64, StorageError> {
        let (_, mut bytes) = self.quarantine_usage();
        for item in self.quarantine.iter() {
            if bytes <= max_bytes {
                break;
            }
            let (k, v) = item.map_err(|e| StorageError::sled("prune quarantine", e))?;
            self.quarantine
                .remove(k)
                .map_err(|e| StorageError::sled("prune quarantine", e))?;
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
        let mut n = 0;
        let mut bytes = 0;
        for (_, v) in self.quarantine.iter().flatten() {
            n += 1;
            bytes += v.len() as u64;
        }
        (n, bytes)
    }

    /// Flushes every dirty page to the data file (`sync_file_range`, not power-loss safe).
    pub(crate) fn flush(&self) -> Result<(), StorageError> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| StorageError::sled("flush", e))
    }

    /// `fdatasync`s sled's data file (and blobs), making the last flush survive
    /// power loss.
    pub(crate) fn sync_data_file(&self) -> Result<(), StorageError> {
        let sync = |path: &Path| -> Result<(), StorageError> {
            std::fs::OpenOptions::new()
                .read(true)
                .open(path)
                .and_then(|f| super::io::sync_data(&f, path))
                .map_err(|e| StorageError::io("fdatasync", e))
        };
        sync(&self.path.join("db"))?;
        // sled writes blobs (fragments over a quarter segment) to their own
        // files and never syncs them; power-loss safety needs them synced too.
        if let Ok(blobs) = std::fs::read_dir(self.path.join("blobs")) {
            for entry in blobs.flatten() {
                match sync(&entry.path()) {
                    // A blob sled deleted meanwhile is no longer needed.
                    Err(e) if e.io_kind() == Some(std::io::ErrorKind::NotFound) => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }

    /// Flushes and, with `sync`, makes the database and its directory durable.
    pub(crate) fn persist(&self, sync: bool) -> Result<(), StorageError> {
        self.flush()?;
        if sync {
            self.sync_data_file()?;
            super::io::sync_dir(&self.path)
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
    /// sled logs every insert and rewrites a leaf (at most 16 keys) every 10
    /// changes, so a copy key by key (sled's own `import`) leaves the new file
    /// mostly garbage: 11.0 MB for 20,000 index records (a million events),
    /// where batches of 8 MiB leave 6.3–6.5 MB (sled 0.34.7, this store's 4 MiB
    /// segments; the test below holds the copy to at most 3/4 of the import).
    pub(crate) fn copy_into(&self, target: &Store) -> Result<(), StorageError> {
        self.copy_in_batches(target, COPY_BATCH_BYTES)
    }

    fn copy_in_batches(&self, target: &Store, max_bytes: usize) -> Result<(), StorageError> {
        for name in self.db.tree_names() {
            let from = self
                .db
                .open_tree(&name)
                .map_err(|e| StorageError::sled("open tree to copy", e))?;
            let to = target
                .db
                .open_tree(&name)
                .map_err(|e| StorageError::sled("create copied tree", e))?;
            let mut batch = sled::Batch::default();
            let mut bytes = 0usize;
            for item in from.iter() {
                let (k, v) = item.map_err(|e| StorageError::sled("read tree to copy", e))?;
                bytes += k.len() + v.len();
                batch.insert(k, v);
                if bytes >= max_bytes {
                    to.apply_batch(std::mem::take(&mut batch))
                        .map_err(|e| StorageError::sled("write copied tree", e))?;
                    bytes = 0;
                }
            }
            to.apply_batch(batch)
                .map_err(|e| StorageError::sled("write copied tree", e))?;
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
            .map_err(|e| StorageError::sled("open legacy topic", e))?;
        let mut out = LegacyTopic::default();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| StorageError::sled("load legacy topic", e))?;
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
        self.db
            .drop_tree(format!("{LEGACY_PREFIX}{topic}"))
            .map(|_| ())
            .map_err(|e| StorageError::sled("drop legacy topic", e))
    }

    /// Re-keys format-1/2 quarantine records (`<topic> 0 <seq> <ns>`) as
    /// format 3 (`<ns> <topic> 0 <seq>`), so the oldest are pruned first.
    pub(crate) fn migrate_quarantine(&self) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.quarantine.iter() {
            let (k, v) = item.map_err(|e| StorageError::sled("migrate quarantine", e))?;
            let Some(nul) = k.iter().position(|b| *b == 0) else {
                continue;
            };
            // Old keys: topic, 0, seq (8), ns (8). New keys start with 8 bytes of time.
            if k.len() != nul + 17 || nul == 0 || !k[..nul].iter().all(u8::is_ascii_graphic) {
                continue;
            }
            let mut new = k[nul + 9..].to_vec();
            new.extend_from_slice(&k[..nul + 9]);
            batch.remove(k);
            batch.insert(new, v);
            n += 1;
        }
        if n > 0 {
            self.quarantine
                .apply_batch(batch)
                .map_err(|e| StorageError::sled("migrate quarantine", e))?;
        }
        Ok(())
    }
}

impl WriteBatch {
    /// Writes a chunk's index record under its first seq.
    pub(crate) fn put_index(&mut self, topic: &str, seq: u64, index: &ChunkIndex) {
        self.inner
            .insert(key(topic, K_INDEX, Some(seq)), record::encode_index(index));
        self.ops += 1;
    }

    /// Removes a chunk's index record and retry state.
    pub(crate) fn remove_chunk(&mut self, topic: &str, seq: u64) {
        self.inner.remove(key(topic, K_INDEX, Some(seq)));
        self.inner.remove(key(topic, K_RETRY, Some(seq)));
        self.ops += 2;
    }

    /// Removes the index record of a chunk that has no retry record.
    pub(crate) fn remove_index(&mut self, topic: &str, seq: u64) {
        self.inner.remove(key(topic, K_INDEX, Some(seq)));
        self.ops += 1;
    }

    /// Writes a chunk's retry state.
    pub(crate) fn put_retry(&mut self, topic: &str, seq: u64, state: &RetryState) {
        self.inner
            .insert(key(topic, K_RETRY, Some(seq)), record::encode_retry(state));
        self.ops += 1;
    }

    /// Removes a chunk's retry state.
    pub(crate) fn remove_retry(&mut self, topic: &str, seq: u64) {
        self.inner.remove(key(topic, K_RETRY, Some(seq)));
        self.ops += 1;
    }

    /// Writes a dead letter.
    pub(crate) fn put_dead(&mut self, topic: &str, dead: &DeadLetter) {
        self.inner.insert(
            key(topic, K_DEAD, Some(dead.seq)),
            record::encode_dead(dead),
        );
        self.ops += 1;
    }

    /// Writes a dead letter record as it is (migration).
    pub(crate) fn put_dead_raw(&mut self, topic: &str, seq: u64, raw: &[u8]) {
        self.inner.insert(key(topic, K_DEAD, Some(seq)), raw);
        self.ops += 1;
    }

    /// Writes a retry record as it is (migration).
    pub(crate) fn put_retry_raw(&mut self, topic: &str, seq: u64, raw: &[u8]) {
        self.inner.insert(key(topic, K_RETRY, Some(seq)), raw);
        self.ops += 1;
    }

    /// Removes a dead letter.
    pub(crate) fn remove_dead(&mut self, topic: &str, seq: u64) {
        self.inner.remove(key(topic, K_DEAD, Some(seq)));
        self.ops += 1;
    }

    /// Sets the topic's persisted seq high-water.
    pub(crate) fn set_high_water(&mut self, topic: &str, next_seq: u64) {
        self.inner
            .insert(key(topic, K_HIGH_WATER, None), &next_seq.to_be_bytes());
        self.ops += 1;
    }

    /// Sets how many events of `topic` were dropped for the reason `code`.
    pub(crate) fn set_drops(&mut self, topic: &str, code: u64, count: u64) {
        self.inner
            .insert(key(topic, K_DROPS, Some(code)), &count.to_be_bytes());
        self.ops += 1;
    }

    /// Sets the topic's checkpoint (generation, offset).
    pub(crate) fn set_checkpoint(&mut self, topic: &str, (generation, offset): (u32, u64)) {
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&generation.to_be_bytes());
        v[4..].copy_from_slice(&offset.to_be_bytes());
        self.inner.insert(key(topic, K_CHECKPOINT, None), &v);
        self.ops += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back_and_stay_inside_their_topic() {
        let k = key("track", K_INDEX, Some(42));
        assert_eq!(parse_key(&k), Some(("track", K_INDEX, Some(42))));
        let h = key("track", K_HIGH_WATER, None);
        assert_eq!(parse_key(&h), Some(("track", K_HIGH_WATER, None)));
        // "track" and "track.x" never interleave: 0x00 sorts before every name byte.
        assert!(key("track", K_DEAD, Some(u64::MAX)) < key("track.x", K_INDEX, Some(0)));
    }

    #[test]
    fn a_batch_across_topics_is_loaded_back_per_topic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1 << 20, Duration::from_secs(1))
            .ok()
            .unwrap();
        let idx = ChunkIndex {
            events: 2,
            bytes: 10,
            last_seq: 6,
            first_enqueued_ms: 1,
            body_gen: 1,
            body_offset: 40,
            body_len: 60,
        };
        let mut b = WriteBatch::default();
        b.put_index("a", 5, &idx);
        b.set_high_water("a", 7);
        b.set_checkpoint("a", (3, 400));
        b.put_index("b", 1, &idx);
        b.put_retry(
            "b",
            1,
            &RetryState {
                attempts: 2,
                not_before_ms: 9,
                last_error: "x".into(),
            },
        );
        store.apply(b).unwrap();
        let loaded = store.load().unwrap();
        let a = &loaded["a"];
        assert_eq!(a.index.len(), 1);
        assert_eq!(
            a.index[0].1.as_ref().unwrap(),
            &(record::FORMAT_VERSION, idx)
        );
        assert_eq!((a.high_water, a.checkpoint), (7, Some((3, 400))));
        assert_eq!(loaded["b"].retry.len(), 1);
    }

    /// A store as compaction finds it: 20,000 chunk index records (a million
    /// events in two topics), with `dead` dead letters of 10 KB, meta,
    /// quarantine and the default tree.
    fn filled_store(dir: &Path, dead: u64) -> Store {
        let store = open_in(dir, "old");
        store.set_format(record::FORMAT_VERSION).unwrap();
        store.set_instance("a1b2c3d4e5f6").unwrap();
        store.db.insert(b"loose", b"default tree".to_vec()).unwrap();
        for round in 0..20u64 {
            let mut b = WriteBatch::default();
            for i in 0..1_000u64 {
                let seq = (round * 1_000 + i) * 50;
                let idx = ChunkIndex {
                    events: 50,
                    bytes: 15_000,
                    last_seq: seq + 49,
                    first_enqueued_ms: 1_764_000_000_000 + seq,
                    body_gen: 1 + (seq / 100_000) as u32,
                    body_offset: 40 + seq * 317,
                    body_len: 15_870,
                };
                b.put_index(if i % 2 == 0 { "track" } else { "identify" }, seq, &idx);
            }
            b.set_high_water("track", (round + 1) * 50_000);
            store.apply(b).unwrap();
        }
        let mut b = WriteBatch::default();
        for seq in 0..dead {
            b.put_dead(
                "track",
                &DeadLetter {
                    seq: 2_000_000 + seq,
                    enqueued_at_ms: 1,
                    dead_at_ms: 2,
                    attempts: 3,
                    reason: "400 Bad Request".into(),
                    payload: vec![b'x'; 10_000],
                },
            );
        }
        store.apply(b).unwrap();
        store
            .quarantine("track", 7, b"damaged bytes", 1 << 20)
            .unwrap();
        store.persist(false).unwrap();
        store
    }

    fn open_in(dir: &Path, name: &str) -> Store {
        Store::open(&dir.join(name), 64 << 20, Duration::from_secs(1))
            .ok()
            .unwrap()
    }

    #[test]
    fn a_store_copied_in_many_batches_holds_every_tree_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let old = filled_store(dir.path(), 100);
        let copied = open_in(dir.path(), "copied");
        // ~2 MB of records in batches of 64 KiB: the copy crosses dozens of batches.
        old.copy_in_batches(&copied, 64 * 1024).unwrap();
        let names = |s: &Store| {
            let mut n = s.db.tree_names();
            n.sort();
            n
        };
        assert_eq!(names(&copied), names(&old));
        assert_eq!(copied.db.checksum().unwrap(), old.db.checksum().unwrap());
        assert_eq!(copied.db.len(), 1, "the default tree's key");
        assert_eq!(
            copied.index.len(),
            20_000 + 1 + 100,
            "index records, high-water, dead letters"
        );
        assert_eq!(copied.meta.len(), old.meta.len());
        assert_eq!(copied.quarantine.len(), 1);
        assert_eq!(copied.load().unwrap()["track"].index.len(), 10_000);
    }

    #[test]
    fn a_copied_index_leaves_at_most_three_quarters_of_the_file_sleds_import_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let old = filled_store(dir.path(), 0);
        let copied = open_in(dir.path(), "copied");
        old.copy_into(&copied).unwrap();
        copied.persist(false).unwrap();
        let imported = open_in(dir.path(), "imported");
        imported.db.import(old.db.export());
        imported.persist(false).unwrap();
        assert_eq!(copied.db.checksum().unwrap(), old.db.checksum().unwrap());
        let file = |s: &Store| std::fs::metadata(s.path.join("db")).unwrap().len();
        let (copied_bytes, imported_bytes) = (file(&copied), file(&imported));
        assert!(
            copied_bytes * 4 <= imported_bytes * 3,
            "the copy's data file is {copied_bytes} bytes, sled's import {imported_bytes}: \
             the copy should leave at most 3/4 of it"
        );
    }
}
