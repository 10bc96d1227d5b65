//! The only file that names sled or reads and writes the body generation
//! files. Everything above it sees `Store`, `TopicTree`, `BodyTree` and
//! `WriteBatch`, which speak in chunk keys and encoded records.
//!
//! # Layout inside the sled database (`<dir>/db`)
//!
//! ```text
//! tree "meta"            "format"      -> [u8]                 format version
//!                        "instance"    -> utf8                 12 hex digits
//! tree "quarantine"      <topic> 0x00 <seq u64 BE> <ns u64 BE> -> raw bytes of a damaged record
//! tree "topic/<name>"    'C' <seq u64 BE> -> chunk record      (format-1 chunks only: body_gen 0)
//!                        'I' <seq u64 BE> -> chunk index record (key = first seq in the chunk;
//!                                            names the chunk's body generation)
//!                        'R' <seq u64 BE> -> retry record      (only after a failure)
//!                        'D' <seq u64 BE> -> dead letter record (key = the event's seq)
//!                        'H'              -> u64 BE: seq high-water (every seq < it was used)
//! ```
//!
//! # Body generations (format 2): `<dir>/bodies/<name>/<g>.seg`
//!
//! ```text
//! segment := entry*            append-only, never rewritten; g ≥ 1, decimal
//! entry   := [seq u64 LE] [len u32 LE] [chunk record: len bytes]
//! ```
//!
//! Chunk records (the bytes, ~16 KiB each) are appended to the topic's current
//! *body generation* file; the index record names the generation, offset and
//! length. Acking a chunk deletes only its small index record; a generation file
//! is deleted whole once no index record names it. sled stores values inside
//! its leaves and rewrites a leaf with every value in it when it consolidates,
//! so keeping 16 KiB chunks in sled wrote each one ~3 times on enqueue and again
//! on every neighbour's delete; a segment writes it once.
//!
//! Crash safety comes from ordering: an entry is written (`write`, so in the
//! page cache: it survives `kill -9`) before the index record naming it, and
//! sled's flush of that record follows; with `fsync` the segment is
//! `fdatasync`ed before the flush. A generation is deleted only after the
//! index records naming it are deleted. A torn entry at the end of a segment
//! is never named by an index record, and writers always continue in a new
//! generation after a restart. Entries carry their seq and length, so a chunk
//! whose index record was damaged can be found again by scanning.
//!
//! Format-1 chunks stay in the topic tree under `'C'` (generation 0) and are
//! deleted key by key as before.
//!
//! One tree per topic is deliberate: a sled `Batch` is atomic within one tree,
//! so every state change of a chunk — write, ack, rewrite after a partial
//! outcome together with its dead letters, retry state — is one atomic batch.
//! (DESIGN.md sketched separate `chunks/`, `retry/` and `dead/` trees; that would
//! need sled transactions for the same atomicity.)
//!
//! # sled facts respected here
//!
//! - `flush_async` can deadlock: only the blocking [`Store::flush`] is offered.
//! - The default 1 GiB cache is replaced by the configured `cache_capacity`.
//! - A stale `snap.*.generating` file makes open fail: [`Store::open`] moves it aside.
//! - A damaged file can make open panic: the panic is caught and reported as
//!   [`OpenFailure::Damaged`], so the caller can move the store aside.

use crate::record::{self, ChunkIndex, DeadLetter, RetryState};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// sled's segment size, 4 MiB instead of its 512 KiB default. sled stores any
/// page fragment larger than a quarter segment as a separate blob file (an
/// open, write and unlink per value, and never synced by sled); with the
/// default, leaf nodes full of 15 KiB chunks crossed that line constantly. With
/// 4 MiB only fragments over 1 MiB become blobs, which `chunk_max_bytes`
/// (512 KiB by default) keeps rare; `sync_data_file` syncs them too. Persisted in sled's `conf`:
/// part of the on-disk format.
pub(crate) const SEGMENT_SIZE: usize = 4 * 1024 * 1024;

const META_FORMAT: &[u8] = b"format";
const META_INSTANCE: &[u8] = b"instance";
const TOPIC_PREFIX: &str = "topic/";
/// Directory of body generation files, beside sled's `db` directory.
pub(crate) const BODIES_DIR: &str = "bodies";
const SEGMENT_SUFFIX: &str = ".seg";
/// `[seq u64][len u32]` before each chunk record in a segment.
const ENTRY_HEADER: u64 = 12;
const K_CHUNK: u8 = b'C';
const K_INDEX: u8 = b'I';
const K_RETRY: u8 = b'R';
const K_DEAD: u8 = b'D';
const K_HIGH_WATER: &[u8] = b"H";

/// A storage operation failed inside sled.
#[derive(Debug, thiserror::Error)]
#[error("storage {op} failed: {message}")]
pub struct StorageError {
    op: &'static str,
    message: String,
    io_kind: Option<std::io::ErrorKind>,
}

impl StorageError {
    fn new(op: &'static str, err: sled::Error) -> Self {
        let io_kind = match &err {
            sled::Error::Io(io) => Some(io.kind()),
            _ => None,
        };
        Self {
            op,
            message: err.to_string(),
            io_kind,
        }
    }

    /// A failure injected by a test's fail point.
    #[cfg(feature = "failpoints")]
    pub(crate) fn injected(point: &'static str) -> Self {
        Self {
            op: "write",
            message: format!("injected by fail point {point}"),
            io_kind: Some(std::io::ErrorKind::Other),
        }
    }

    /// The I/O error kind, when the failure was an I/O error (e.g. a full disk).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.io_kind
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
    bodies: PathBuf,
    fsync: bool,
    meta: sled::Tree,
    quarantine: sled::Tree,
    path: PathBuf,
}

/// One topic's tree.
#[derive(Clone)]
pub(crate) struct TopicTree {
    tree: sled::Tree,
}

/// Where a topic's chunk records of one generation live: a segment file, or
/// (generation 0, format-1 stores) the topic's own tree under `'C' <seq>`.
#[derive(Clone)]
pub(crate) enum BodyTree {
    Legacy(sled::Tree),
    Segment(Arc<Segment>),
}

/// One body generation file (see "Body generations" above).
pub(crate) struct Segment {
    file: std::fs::File,
    path: PathBuf,
    /// The append position; also serializes appends.
    end: Mutex<u64>,
    fsync: bool,
}

fn io_error(op: &'static str, e: std::io::Error) -> StorageError {
    StorageError::new(op, sled::Error::Io(e))
}

/// An atomic group of writes to one topic's tree.
#[derive(Default)]
pub(crate) struct WriteBatch {
    inner: sled::Batch,
    ops: usize,
}

fn key(kind: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(k: &[u8]) -> Option<u64> {
    (k.len() == 9).then(|| u64::from_be_bytes(k[1..9].try_into().unwrap_or([0; 8])))
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
        fsync: bool,
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
            Ok(Err(e @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)))) => {
                return Err(OpenFailure::Damaged(e.to_string()));
            }
            Ok(Err(e)) => return Err(OpenFailure::Damaged(e.to_string())),
            Ok(Ok(db)) => db,
        };
        let meta = db
            .open_tree("meta")
            .map_err(|e| OpenFailure::Damaged(e.to_string()))?;
        let quarantine = db
            .open_tree("quarantine")
            .map_err(|e| OpenFailure::Damaged(e.to_string()))?;
        let bodies = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join(BODIES_DIR);
        Ok(Store {
            db,
            bodies,
            fsync,
            meta,
            quarantine,
            path: path.to_path_buf(),
        })
    }

    /// The stored format version, if the store has one yet.
    pub(crate) fn format(&self) -> Result<Option<u8>, StorageError> {
        let v = self
            .meta
            .get(META_FORMAT)
            .map_err(|e| StorageError::new("read meta", e))?;
        Ok(v.and_then(|v| v.first().copied()))
    }

    /// Records the format version.
    pub(crate) fn set_format(&self, format: u8) -> Result<(), StorageError> {
        self.meta
            .insert(META_FORMAT, &[format])
            .map_err(|e| StorageError::new("write meta", e))?;
        Ok(())
    }

    /// The instance id, if the store has one yet.
    pub(crate) fn instance(&self) -> Result<Option<String>, StorageError> {
        let v = self
            .meta
            .get(META_INSTANCE)
            .map_err(|e| StorageError::new("read meta", e))?;
        Ok(v.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records the instance id.
    pub(crate) fn set_instance(&self, id: &str) -> Result<(), StorageError> {
        self.meta
            .insert(META_INSTANCE, id.as_bytes())
            .map_err(|e| StorageError::new("write meta", e))?;
        Ok(())
    }

    /// Names of every topic that has a tree.
    pub(crate) fn topic_names(&self) -> Vec<String> {
        self.db
            .tree_names()
            .into_iter()
            .filter_map(|n| {
                std::str::from_utf8(&n)
                    .ok()
                    .and_then(|s| s.strip_prefix(TOPIC_PREFIX))
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Opens (creating if needed) a topic's tree.
    pub(crate) fn topic(&self, name: &str) -> Result<TopicTree, StorageError> {
        let tree = self
            .db
            .open_tree(format!("{TOPIC_PREFIX}{name}"))
            .map_err(|e| StorageError::new("open topic", e))?;
        Ok(TopicTree { tree })
    }

    fn segment_path(&self, topic: &str, generation: u32) -> PathBuf {
        self.bodies
            .join(topic)
            .join(format!("{generation}{SEGMENT_SUFFIX}"))
    }

    /// Opens (creating if needed, mode 0600) body generation `generation` (≥ 1)
    /// of a topic; appends go after whatever the file holds.
    pub(crate) fn body(&self, topic: &str, generation: u32) -> Result<BodyTree, StorageError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = self.segment_path(topic, generation);
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| io_error("create bodies directory", e))?;
        }
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error("open body generation", e))?;
        if self.fsync && !existed {
            // A new file's directory entries must survive power loss too.
            for dir in [path.parent(), path.parent().and_then(Path::parent)]
                .into_iter()
                .flatten()
            {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| io_error("fsync bodies directory", e))?;
            }
        }
        let end = file
            .metadata()
            .map_err(|e| io_error("open body generation", e))?
            .len();
        Ok(BodyTree::Segment(Arc::new(Segment {
            file,
            path,
            end: Mutex::new(end),
            fsync: self.fsync,
        })))
    }

    /// Topics that have a body generation directory (a crash can leave one for a
    /// topic whose tree sled never flushed).
    pub(crate) fn body_topics(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.bodies) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|n| crate::queue::validate_topic(n).is_ok())
            .collect()
    }

    /// The body generations a topic has on disk, ascending.
    pub(crate) fn body_generations(&self, topic: &str) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.bodies.join(topic)) else {
            return Vec::new();
        };
        let mut out: Vec<u32> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
                    .and_then(|g| g.parse().ok())
            })
            .filter(|g| *g > 0)
            .collect();
        out.sort_unstable();
        out
    }

    /// Deletes a body generation file.
    pub(crate) fn drop_body(&self, topic: &str, generation: u32) -> Result<(), StorageError> {
        match std::fs::remove_file(self.segment_path(topic, generation)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("drop body generation", e))
            }
            _ => Ok(()),
        }
    }

    /// Bytes of every body generation file.
    fn bodies_size(&self) -> u64 {
        fn walk(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| match e.file_type() {
                            Ok(t) if t.is_dir() => walk(&e.path()),
                            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.bodies)
    }

    /// Stores the raw bytes of a damaged record in quarantine.
    pub(crate) fn quarantine(&self, topic: &str, seq: u64, raw: &[u8]) -> Result<(), StorageError> {
        let mut k = Vec::with_capacity(topic.len() + 17);
        k.extend_from_slice(topic.as_bytes());
        k.push(0);
        k.extend_from_slice(&seq.to_be_bytes());
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        k.extend_from_slice(&ns.to_be_bytes());
        self.quarantine
            .insert(k, raw)
            .map_err(|e| StorageError::new("quarantine", e))?;
        Ok(())
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
            .map_err(|e| StorageError::new("flush", e))
    }

    /// `fdatasync`s sled's data file, making the last flush survive power loss.
    pub(crate) fn sync_data_file(&self) -> Result<(), StorageError> {
        let sync = |path: &Path| -> Result<(), StorageError> {
            std::fs::OpenOptions::new()
                .read(true)
                .open(path)
                .and_then(|f| f.sync_data())
                .map_err(|e| StorageError::new("fdatasync", sled::Error::Io(e)))
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

    /// Bytes sled's files take on disk.
    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0) + self.bodies_size()
    }

    /// Copies every tree of this store into a fresh store at `target` (used by compaction).
    pub(crate) fn copy_into(&self, target: &Store) {
        target.db.import(self.db.export());
    }
}

/// What loading a topic's tree found.
#[derive(Default)]
pub(crate) struct LoadedTopic {
    /// Chunk keys with their decoded (or failed) index records.
    pub(crate) index: Vec<(u64, Result<ChunkIndex, record::RecordError>)>,
    /// Retry records by chunk key.
    pub(crate) retry: Vec<(u64, Result<RetryState, record::RecordError>)>,
    /// Dead letters: (seq, encoded length).
    pub(crate) dead: Vec<(u64, u64, Result<DeadLetter, record::RecordError>)>,
    /// The persisted seq high-water.
    pub(crate) high_water: u64,
}

impl TopicTree {
    /// Reads the index, retry and dead-letter ranges (never the chunks themselves).
    pub(crate) fn load(&self) -> Result<LoadedTopic, StorageError> {
        let mut out = LoadedTopic::default();
        for kind in [K_INDEX, K_RETRY, K_DEAD] {
            for item in self.tree.range(key(kind, 0)..=key(kind, u64::MAX)) {
                let (k, v) = item.map_err(|e| StorageError::new("load topic", e))?;
                let Some(seq) = seq_of(&k) else { continue };
                match kind {
                    K_INDEX => out.index.push((seq, record::decode_index(&v))),
                    K_RETRY => out.retry.push((seq, record::decode_retry(&v))),
                    _ => out
                        .dead
                        .push((seq, v.len() as u64, record::decode_dead(&v))),
                }
            }
        }
        if let Some(v) = self
            .tree
            .get(K_HIGH_WATER)
            .map_err(|e| StorageError::new("load topic", e))?
            && v.len() == 8
        {
            out.high_water = u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8]));
        }
        Ok(out)
    }

    /// Keys of chunks that have no index record (only possible after damage).
    pub(crate) fn chunks_without_index(&self) -> Result<Vec<u64>, StorageError> {
        let mut out = Vec::new();
        for item in self.tree.range(key(K_CHUNK, 0)..=key(K_CHUNK, u64::MAX)) {
            let (k, _) = item.map_err(|e| StorageError::new("scan chunks", e))?;
            if let Some(seq) = seq_of(&k)
                && !self
                    .tree
                    .contains_key(key(K_INDEX, seq))
                    .map_err(|e| StorageError::new("scan chunks", e))?
            {
                out.push(seq);
            }
        }
        Ok(out)
    }

    /// The topic tree as body generation 0 (format-1 chunks).
    pub(crate) fn as_body(&self) -> BodyTree {
        BodyTree::Legacy(self.tree.clone())
    }

    /// Dead letter records with seq in `from..`, at most `limit`.
    pub(crate) fn dead_range(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        for item in self.tree.range(key(K_DEAD, from)..=key(K_DEAD, u64::MAX)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| StorageError::new("read dead letters", e))?;
            if let Some(seq) = seq_of(&k) {
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
        self.tree
            .apply_batch(batch.inner)
            .map_err(|e| StorageError::new("write", e))
    }
}

impl BodyTree {
    /// Reads the chunk record with first seq `seq` at `index`'s offset and
    /// length; `None` if it is not there (a segment entry must carry the same
    /// seq and length, or it is not this chunk's).
    pub(crate) fn chunk(
        &self,
        seq: u64,
        index: &ChunkIndex,
    ) -> Result<Option<bytes::Bytes>, StorageError> {
        match self {
            BodyTree::Legacy(tree) => tree
                .get(key(K_CHUNK, seq))
                .map(|v| v.map(bytes::Bytes::from_owner))
                .map_err(|e| StorageError::new("read chunk", e)),
            BodyTree::Segment(seg) => seg.read(seq, index.body_offset, index.body_len),
        }
    }

    /// Every whole entry of a generation file, as (first seq, offset, length),
    /// in file order; stops at a torn tail. Empty for generation 0.
    pub(crate) fn entries(&self) -> Result<Vec<(u64, u64, u32)>, StorageError> {
        match self {
            BodyTree::Legacy(_) => Ok(Vec::new()),
            BodyTree::Segment(seg) => seg.entries(),
        }
    }

    /// Finds the chunk record with first seq `seq` by scanning (repair only).
    /// Returns the record with its offset and length.
    pub(crate) fn find(&self, seq: u64) -> Result<Option<(bytes::Bytes, u64, u32)>, StorageError> {
        match self {
            BodyTree::Legacy(tree) => Ok(tree
                .get(key(K_CHUNK, seq))
                .map_err(|e| StorageError::new("read chunk", e))?
                .map(|v| {
                    let len = v.len() as u32;
                    (bytes::Bytes::from_owner(v), 0, len)
                })),
            BodyTree::Segment(seg) => seg.find(seq),
        }
    }

    /// Appends chunk records (`(first seq, record)`), returning each one's
    /// (offset, length) in the order given.
    pub(crate) fn put_chunks<'a>(
        &self,
        chunks: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<Vec<(u64, u32)>, StorageError> {
        match self {
            BodyTree::Legacy(tree) => {
                let mut batch = sled::Batch::default();
                let mut at = Vec::new();
                for (seq, raw) in chunks {
                    batch.insert(&key(K_CHUNK, seq), raw);
                    at.push((0, raw.len() as u32));
                }
                tree.apply_batch(batch)
                    .map_err(|e| StorageError::new("write chunk", e))?;
                Ok(at)
            }
            BodyTree::Segment(seg) => seg.append(chunks),
        }
    }
}

impl Segment {
    fn append<'a>(
        &self,
        chunks: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<Vec<(u64, u32)>, StorageError> {
        let mut end = self.end.lock().unwrap_or_else(|e| e.into_inner());
        let chunks: Vec<(u64, &[u8])> = chunks.into_iter().collect();
        let headers: Vec<[u8; ENTRY_HEADER as usize]> = chunks
            .iter()
            .map(|(seq, raw)| {
                let mut h = [0u8; ENTRY_HEADER as usize];
                h[..8].copy_from_slice(&seq.to_le_bytes());
                h[8..].copy_from_slice(&(raw.len() as u32).to_le_bytes());
                h
            })
            .collect();
        let mut at = Vec::with_capacity(chunks.len());
        let mut pos = *end;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(chunks.len() * 2);
        for ((_, raw), header) in chunks.iter().zip(&headers) {
            at.push((pos + ENTRY_HEADER, raw.len() as u32));
            pos += ENTRY_HEADER + raw.len() as u64;
            parts.push(header);
            parts.push(raw);
        }
        // One vectored write from the records where they are, instead of
        // copying a round's records (up to several MiB) into one buffer.
        write_all_vectored_at(&self.file, &parts, *end).map_err(|e| io_error("append chunk", e))?;
        if self.fsync {
            self.file
                .sync_data()
                .map_err(|e| io_error("fdatasync body generation", e))?;
        }
        *end = pos;
        Ok(at)
    }

    fn read(&self, seq: u64, offset: u64, len: u32) -> Result<Option<bytes::Bytes>, StorageError> {
        use std::os::unix::fs::FileExt;
        let Some(start) = offset.checked_sub(ENTRY_HEADER) else {
            return Ok(None);
        };
        let mut buf = vec![0u8; ENTRY_HEADER as usize + len as usize];
        match self.file.read_exact_at(&mut buf, start) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                // A cut-short file: hand back what is left of the record, so
                // the damage is quarantined with its bytes rather than as missing.
                let size = self
                    .file
                    .metadata()
                    .map_err(|e| io_error("read chunk", e))?
                    .len();
                let have = size.saturating_sub(start) as usize;
                if have < ENTRY_HEADER as usize {
                    return Ok(None);
                }
                buf.truncate(have);
                self.file
                    .read_exact_at(&mut buf, start)
                    .map_err(|e| io_error("read chunk", e))?;
                let found_seq = u64::from_le_bytes(buf[0..8].try_into().unwrap_or([0; 8]));
                if found_seq != seq {
                    return Ok(None);
                }
                let mut bytes = bytes::Bytes::from(buf);
                return Ok(Some(bytes.split_off(ENTRY_HEADER as usize)));
            }
            Err(e) => return Err(io_error("read chunk", e)),
        }
        let found_seq = u64::from_le_bytes(buf[0..8].try_into().unwrap_or([0; 8]));
        let found_len = u32::from_le_bytes(buf[8..12].try_into().unwrap_or([0; 4]));
        if found_seq != seq || found_len != len {
            return Ok(None);
        }
        let mut bytes = bytes::Bytes::from(buf);
        Ok(Some(bytes.split_off(ENTRY_HEADER as usize)))
    }

    fn entries(&self) -> Result<Vec<(u64, u64, u32)>, StorageError> {
        use std::os::unix::fs::FileExt;
        let end = *self.end.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        let mut at = 0u64;
        let mut header = [0u8; ENTRY_HEADER as usize];
        while at + ENTRY_HEADER <= end {
            self.file
                .read_exact_at(&mut header, at)
                .map_err(|e| io_error("scan body generation", e))?;
            let seq = u64::from_le_bytes(header[0..8].try_into().unwrap_or([0; 8]));
            let len = u32::from_le_bytes(header[8..12].try_into().unwrap_or([0; 4]));
            let offset = at + ENTRY_HEADER;
            if offset + len as u64 > end {
                break;
            }
            out.push((seq, offset, len));
            at = offset + len as u64;
        }
        Ok(out)
    }

    fn find(&self, seq: u64) -> Result<Option<(bytes::Bytes, u64, u32)>, StorageError> {
        for (found, offset, len) in self.entries()? {
            if found == seq {
                return Ok(self.read(seq, offset, len)?.map(|b| (b, offset, len)));
            }
        }
        Ok(None)
    }
}

/// Writes every byte of `parts`, in order, at `offset`: one `writev` per call
/// from the slices where they are, retried after short writes and interrupts.
/// Appends to a segment are serialized by its `end` lock and reads use
/// `pread`, so moving the file's cursor here disturbs nobody.
fn write_all_vectored_at(
    file: &std::fs::File,
    parts: &[&[u8]],
    offset: u64,
) -> std::io::Result<()> {
    use std::io::{IoSlice, Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut bufs = &mut slices[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match f.write_vectored(bufs) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "writev wrote nothing",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("path", &self.path).finish()
    }
}

impl WriteBatch {
    /// Writes a chunk's index record under `seq` (the chunk's first seq). The
    /// record names the body generation holding the chunk, written before.
    pub(crate) fn put_index(&mut self, seq: u64, index: &ChunkIndex) {
        self.inner
            .insert(&key(K_INDEX, seq), record::encode_index(index));
        self.ops += 1;
    }

    /// Removes a chunk: its index and retry state, and its record when it lives
    /// in the topic tree (generation 0); other generations go whole.
    pub(crate) fn remove_chunk(&mut self, seq: u64, body_gen: u32) {
        if body_gen == 0 {
            self.inner.remove(&key(K_CHUNK, seq));
            self.ops += 1;
        }
        self.inner.remove(&key(K_INDEX, seq));
        self.inner.remove(&key(K_RETRY, seq));
        self.ops += 2;
    }

    /// Removes a format-1 chunk record from the topic tree (its index record
    /// now names a body generation).
    pub(crate) fn remove_legacy_body(&mut self, seq: u64) {
        self.inner.remove(&key(K_CHUNK, seq));
        self.ops += 1;
    }

    /// Writes a chunk's retry state.
    pub(crate) fn put_retry(&mut self, seq: u64, state: &RetryState) {
        self.inner
            .insert(&key(K_RETRY, seq), record::encode_retry(state));
        self.ops += 1;
    }

    /// Removes a chunk that never failed (so has no retry record): one key fewer
    /// to remove on the hot ack path.
    pub(crate) fn remove_fresh_chunk(&mut self, seq: u64, body_gen: u32) {
        if body_gen == 0 {
            self.inner.remove(&key(K_CHUNK, seq));
            self.ops += 1;
        }
        self.inner.remove(&key(K_INDEX, seq));
        self.ops += 1;
    }

    /// Removes a chunk's retry state.
    pub(crate) fn remove_retry(&mut self, seq: u64) {
        self.inner.remove(&key(K_RETRY, seq));
        self.ops += 1;
    }

    /// Writes a dead letter.
    pub(crate) fn put_dead(&mut self, dead: &DeadLetter) {
        self.inner
            .insert(&key(K_DEAD, dead.seq), record::encode_dead(dead));
        self.ops += 1;
    }

    /// Removes a dead letter.
    pub(crate) fn remove_dead(&mut self, seq: u64) {
        self.inner.remove(&key(K_DEAD, seq));
        self.ops += 1;
    }

    /// Raises the persisted seq high-water mark.
    pub(crate) fn set_high_water(&mut self, next_seq: u64) {
        self.inner.insert(K_HIGH_WATER, &next_seq.to_be_bytes());
        self.ops += 1;
    }

    /// Whether the batch holds any operation.
    pub(crate) fn is_empty(&self) -> bool {
        self.ops == 0
    }
}
