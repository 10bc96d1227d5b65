//! The baselines every evspool figure is divided by, measured in the same run.
//!
//! - [`SledOneKey`]: the obvious sled queue, one key (big-endian u64) per event,
//!   opened with the same settings evspool gives sled (cache, flush period,
//!   `HighThroughput`). Consuming scans 50 keys from an in-memory cursor and
//!   removes them in one `Batch`.
//! - [`SledGroupCommit`]: the same store made durable the way evspool is: every
//!   producer inserts its key, then waits for a flush that started after its
//!   insert; one flusher thread serves all waiting producers per `flush()`
//!   (group commit), plus `fdatasync` of sled's data file when `fsync` is set.
//! - [`AppendLog`]: an append-only file, `u32` length + payload per record, one
//!   `write` per record, `fdatasync` every N records; [`drain_log`] reads it
//!   back in batches of 50, writing the read offset after each batch.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// The sled settings evspool uses (`Store::open` and `SEGMENT_SIZE` in
/// `src/queue/storage.rs`, and the `QueueConfig` defaults), so that only the
/// data layout differs. Keep in step with them.
pub fn sled_config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(64 * 1024 * 1024)
        .flush_every_ms(Some(500))
        .mode(sled::Mode::HighThroughput)
        .segment_size(4 * 1024 * 1024)
}

/// One sled key per event.
pub struct SledOneKey {
    db: sled::Db,
    tree: sled::Tree,
    data_file: PathBuf,
    last_key: AtomicU64,
}

impl SledOneKey {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> SledOneKey {
        let db = sled_config(path).open().expect("open sled baseline");
        let tree = db.open_tree(super::TOPIC).expect("open sled baseline tree");
        let last = tree.last().expect("read last key").map_or(0, |(k, _)| {
            u64::from_be_bytes(k.as_ref().try_into().expect("8-byte key"))
        });
        SledOneKey {
            db,
            tree,
            data_file: path.join("db"),
            last_key: AtomicU64::new(last),
        }
    }

    /// Inserts one event under the next key.
    pub fn insert(&self, payload: &[u8]) {
        let key = self.last_key.fetch_add(1, Ordering::Relaxed) + 1;
        self.tree
            .insert(key.to_be_bytes(), payload)
            .expect("sled insert");
    }

    /// `flush()`es, and `fdatasync`s the data file if `fsync` (as evspool does).
    pub fn flush(&self, fsync: bool) {
        self.db.flush().expect("sled flush");
        if fsync {
            File::open(&self.data_file)
                .and_then(|f| f.sync_data())
                .expect("fdatasync sled data file");
        }
    }

    /// Reads up to `n` events with key ≥ `from`: the "lease".
    pub fn lease(&self, from: u64, n: usize) -> Vec<(sled::IVec, sled::IVec)> {
        self.tree
            .range(from.to_be_bytes()..)
            .take(n)
            .map(|kv| kv.expect("sled scan"))
            .collect()
    }

    /// Removes `leased` in one batch: the "ack".
    pub fn ack(&self, leased: &[(sled::IVec, sled::IVec)]) {
        let mut batch = sled::Batch::default();
        for (k, _) in leased {
            batch.remove(k.clone());
        }
        self.tree.apply_batch(batch).expect("sled remove batch");
    }

    /// Leases and acks batches of `batch` until the tree is empty; returns events seen.
    pub fn drain(&self, batch: usize) -> u64 {
        let mut from = 0u64;
        let mut seen = 0u64;
        loop {
            let leased = self.lease(from, batch);
            let Some((last, _)) = leased.last() else {
                return seen;
            };
            from = u64::from_be_bytes(last.as_ref().try_into().expect("8-byte key")) + 1;
            seen += leased.len() as u64;
            std::hint::black_box(leased.iter().map(|(_, v)| v.len()).sum::<usize>());
            self.ack(&leased);
        }
    }
}

struct GroupState {
    requested: bool,
    shutdown: bool,
}

struct GroupInner {
    store: SledOneKey,
    fsync: bool,
    /// Inserts completed; a producer's ticket is its position in this count.
    completed: AtomicU64,
    state: Mutex<GroupState>,
    wake: Condvar,
    /// Every ticket ≤ this is covered by a finished flush.
    flushed: tokio::sync::watch::Sender<u64>,
}

/// [`SledOneKey`] with durable inserts by group commit; see the module docs.
pub struct SledGroupCommit {
    inner: Arc<GroupInner>,
    flusher: Option<JoinHandle<()>>,
}

/// A producer's handle on a [`SledGroupCommit`].
#[derive(Clone)]
pub struct GroupCommitHandle(Arc<GroupInner>);

impl SledGroupCommit {
    /// Opens the store at `path` and starts its flusher thread.
    pub fn open(path: &Path, fsync: bool) -> SledGroupCommit {
        let inner = Arc::new(GroupInner {
            store: SledOneKey::open(path),
            fsync,
            completed: AtomicU64::new(0),
            state: Mutex::new(GroupState {
                requested: false,
                shutdown: false,
            }),
            wake: Condvar::new(),
            flushed: tokio::sync::watch::channel(0).0,
        });
        let flusher = {
            let inner = inner.clone();
            std::thread::spawn(move || flusher(&inner))
        };
        SledGroupCommit {
            inner,
            flusher: Some(flusher),
        }
    }

    /// A handle for one producer task.
    pub fn handle(&self) -> GroupCommitHandle {
        GroupCommitHandle(self.inner.clone())
    }

    /// Events in the store.
    pub fn len(&self) -> usize {
        self.inner.store.tree.len()
    }

    /// Whether the store holds no event.
    pub fn is_empty(&self) -> bool {
        self.inner.store.tree.is_empty()
    }
}

impl Drop for SledGroupCommit {
    fn drop(&mut self) {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown = true;
        self.inner.wake.notify_all();
        if let Some(h) = self.flusher.take() {
            let _ = h.join();
        }
    }
}

fn flusher(inner: &GroupInner) {
    loop {
        {
            let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            while !s.requested && !s.shutdown {
                s = inner.wake.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            if s.shutdown && !s.requested {
                return;
            }
            s.requested = false;
        }
        // Read after clearing `requested`: a producer that set it before we
        // cleared it had already counted its insert, so this flush covers it.
        let covered = inner.completed.load(Ordering::SeqCst);
        inner.store.flush(inner.fsync);
        inner.flushed.send_modify(|f| *f = (*f).max(covered));
    }
}

impl GroupCommitHandle {
    /// Inserts one event and returns once a flush covering it has finished.
    pub async fn insert_durable(&self, payload: &[u8]) {
        let inner = &*self.0;
        inner.store.insert(payload);
        let ticket = inner.completed.fetch_add(1, Ordering::SeqCst) + 1;
        inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requested = true;
        inner.wake.notify_one();
        let mut rx = inner.flushed.subscribe();
        rx.wait_for(|f| *f >= ticket)
            .await
            .expect("flusher outlives producers");
    }
}

/// An append-only log: `u32` LE length + payload per record.
pub struct AppendLog {
    file: File,
    buf: Vec<u8>,
    sync_every: Option<usize>,
    since_sync: usize,
}

impl AppendLog {
    /// Creates the log at `path`; `fdatasync` after every `sync_every` records if set.
    pub fn create(path: &Path, sync_every: Option<usize>) -> AppendLog {
        AppendLog {
            file: File::create(path).expect("create append log"),
            buf: Vec::with_capacity(4 + super::PAYLOAD_BYTES),
            sync_every,
            since_sync: 0,
        }
    }

    /// Appends one record with one `write`.
    pub fn append(&mut self, payload: &[u8]) {
        self.buf.clear();
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.file.write_all(&self.buf).expect("append record");
        self.since_sync += 1;
        if self.sync_every.is_some_and(|n| self.since_sync >= n) {
            self.file.sync_data().expect("fdatasync append log");
            self.since_sync = 0;
        }
    }

    /// `fdatasync`s whatever the last periodic sync did not cover.
    pub fn finish(self) {
        self.file.sync_data().expect("fdatasync append log");
    }
}

/// Reads the log at `path` in batches of `batch` records, writing the read
/// offset to `cursor` after each batch (the "ack", not synced, like evspool's
/// acks). Returns records read.
pub fn drain_log(path: &Path, cursor: &Path, batch: usize) -> u64 {
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(path).expect("open log"));
    let cursor = File::create(cursor).expect("create cursor file");
    let mut payload = Vec::with_capacity(super::PAYLOAD_BYTES);
    let (mut offset, mut seen, mut in_batch) = (0u64, 0u64, 0usize);
    loop {
        let mut len = [0u8; 4];
        match reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("read log: {e}"),
        }
        let len = u32::from_le_bytes(len) as usize;
        payload.resize(len, 0);
        reader.read_exact(&mut payload).expect("read record");
        std::hint::black_box(&payload);
        offset += 4 + len as u64;
        seen += 1;
        in_batch += 1;
        if in_batch == batch {
            cursor
                .write_all_at(&offset.to_le_bytes(), 0)
                .expect("write cursor");
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        cursor
            .write_all_at(&offset.to_le_bytes(), 0)
            .expect("write cursor");
    }
    seen
}
