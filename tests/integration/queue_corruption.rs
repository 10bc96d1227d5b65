//! Damaged stores: bad records are quarantined and counted, damaged files never
//! panic `open`, and what cannot be opened is refused with a clear error.
//!
//! The damage is done with sled directly on `<dir>/db` while the queue is closed,
//! using the layout documented in `src/queue/storage.rs`.

use evspool::{OpenError, Queue, QueueConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const TOPIC: &str = "t";

/// Chunks of 4 events, committed only when full or synced.
fn config() -> QueueConfig {
    QueueConfig {
        chunk_max_events: 4,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    }
}

/// Creates a closed store holding events 1..=12 of `TOPIC` in chunks 1, 5 and 9.
async fn store_with_three_chunks(dir: &Path) -> Vec<Vec<u8>> {
    let q = Queue::open(dir, config()).unwrap();
    let mut payloads = Vec::new();
    for i in 1..=12u64 {
        let p = format!(
            "{{\"event\":\"e{i}\",\"pad\":\"{}\"}}",
            "x".repeat(i as usize)
        )
        .into_bytes();
        let out = q.enqueue(TOPIC, p.clone()).unwrap();
        assert_eq!(out.id().unwrap().seq(), i);
        payloads.push(p);
    }
    q.sync().await.unwrap();
    q.close();
    payloads
}

pub(crate) fn chunk_key(seq: u64) -> Vec<u8> {
    let mut k = vec![b'C'];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// sled's segment size as `src/queue/storage.rs` configures it (`SEGMENT_SIZE`);
/// sled refuses to open a database with another one.
const SLED_SEGMENT_SIZE: usize = 4 * 1024 * 1024;

/// Opens the closed store's sled database directly.
///
/// sled's I/O threads may hold the data file's lock a moment after the last
/// handle is dropped, so a busy machine gets a few tries.
pub(crate) fn sled_open(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let config = sled::Config::new()
        .path(dir.join("db"))
        .segment_size(SLED_SEGMENT_SIZE);
    loop {
        match config.open() {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening the sled database: {e}"),
        }
    }
}

/// Opens the closed store's sled database and hands `f` the index tree.
fn with_index_tree(dir: &Path, f: impl FnOnce(&sled::Tree)) {
    let db = sled_open(dir);
    let tree = db.open_tree("index").unwrap();
    f(&tree);
    db.flush().unwrap();
}

/// The index tree key of `TOPIC`'s record of `kind` for `seq` (format 3:
/// `<topic> 0x00 <kind> <seq u64 BE>`).
pub(crate) fn index_key(kind: u8, seq: u64) -> Vec<u8> {
    let mut k = TOPIC.as_bytes().to_vec();
    k.push(0);
    k.push(kind);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The closed store's chunk records of `TOPIC`, as `(seq, offset, record)`
/// read from its one body generation file (`bodies/<topic>/<n>.seg`, entries
/// `[seq u64 LE][len u32 LE][record]`), and the file's path.
pub(crate) fn segment_entries(dir: &Path) -> (std::path::PathBuf, Vec<(u64, usize, Vec<u8>)>) {
    let files: Vec<_> = std::fs::read_dir(dir.join("bodies").join(TOPIC))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "one body generation: {files:?}");
    let data = std::fs::read(&files[0]).unwrap();
    assert_eq!(
        &data[..8],
        b"EVSPSEG3",
        "a version-3 body file starts with its header"
    );
    let mut out = Vec::new();
    // A 40-byte file header, then entries: seq u64, len u32, kind u8, 3 reserved, record.
    let mut at = 40;
    while at + 16 <= data.len() {
        let seq = u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
        let len = u32::from_le_bytes(data[at + 8..at + 12].try_into().unwrap()) as usize;
        out.push((seq, at + 16, data[at + 16..at + 16 + len].to_vec()));
        at += 16 + len;
    }
    (files[0].clone(), out)
}

/// Overwrites bytes of a closed store's segment file at `offset`.
fn patch_segment(path: &Path, offset: usize, bytes: &[u8]) {
    let mut data = std::fs::read(path).unwrap();
    data[offset..offset + bytes.len()].copy_from_slice(bytes);
    std::fs::write(path, data).unwrap();
}

/// Leases and acks everything; returns the seqs and payloads in delivery order.
fn drain(q: &Queue) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(lease) = q.lease(TOPIC, 100).unwrap() {
        out.extend(lease.events().iter().map(|e| (e.seq(), e.payload.to_vec())));
        q.ack(lease).unwrap();
    }
    out
}

fn expected(payloads: &[Vec<u8>], seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, Vec<u8>)> {
    seqs.into_iter()
        .map(|s| (s, payloads[s as usize - 1].clone()))
        .collect()
}

#[tokio::test]
async fn a_flipped_byte_in_a_chunk_quarantines_that_chunk_and_delivers_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = store_with_three_chunks(dir.path()).await;
    let (path, entries) = segment_entries(dir.path());
    let seqs: Vec<u64> = entries.iter().map(|(s, _, _)| *s).collect();
    assert_eq!(seqs, vec![1, 5, 9]);
    let (_, offset, raw) = &entries[1];
    let damaged_len = raw.len() as u64;
    let mid = raw.len() / 2;
    patch_segment(&path, offset + mid, &[raw[mid] ^ 0x5a]);

    let q = Queue::open(dir.path(), config()).unwrap();
    let before = q.stats();
    // Open reads only the index records: the damage is found when the chunk is read.
    assert_eq!(before.total.events, 12);
    assert_eq!(before.quarantined_records, 0);
    assert!(before.recovered.is_empty(), "{:?}", before.recovered);

    let got = drain(&q);
    assert_eq!(got, expected(&payloads, (1..=4).chain(9..=12)));
    let after = q.stats();
    assert_eq!(after.quarantined_records, 1, "the damaged chunk is counted");
    assert_eq!(
        after.quarantined_bytes, damaged_len,
        "its raw bytes are kept"
    );
    assert_eq!(
        after.total.events, 0,
        "the quarantined events left the accounting"
    );
    assert_eq!(after.total.bytes, 0);
    q.close();
    drop(q);

    // The quarantine is durable, and the damaged chunk does not come back.
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(q.stats().quarantined_records, 1);
    assert_eq!(q.stats().total.events, 0);
    assert!(q.lease(TOPIC, 100).unwrap().is_none());
}

#[tokio::test]
async fn verify_quarantines_a_damaged_chunk_without_leasing_it() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = store_with_three_chunks(dir.path()).await;
    // Chunk 9 is the last entry: flip a byte inside its record.
    let (path, entries) = segment_entries(dir.path());
    let (seq, offset, record) = &entries[2];
    assert_eq!(*seq, 9);
    patch_segment(&path, *offset + 2, &[record[2] ^ 0xff]);
    let q = Queue::open(dir.path(), config()).unwrap();
    let report = q.verify().unwrap();
    assert_eq!(
        (report.checked, report.quarantined),
        (3, 1),
        "three chunks checked, one quarantined"
    );
    assert!(!report.drifted(), "{report:?}");
    assert_eq!(q.stats().quarantined_records, 1);
    assert_eq!(q.stats().total.events, 8);
    assert_eq!(drain(&q), expected(&payloads, 1..=8));
}

#[tokio::test]
async fn a_chunk_cut_short_is_reported_at_open_and_never_counted_as_queued() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = store_with_three_chunks(dir.path()).await;
    // Chunk 9 is the last entry: cut the file inside its record, as a power
    // cut with fsync = false can.
    let (path, entries) = segment_entries(dir.path());
    let (seq, offset, _) = &entries[2];
    assert_eq!(*seq, 9);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(*offset as u64 + 3).unwrap();
    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert_eq!(stats.total.events, 8, "no phantom event is counted");
    assert!(
        stats
            .recovered
            .iter()
            .any(|r| r.contains("past the end of their body file")),
        "{:?}",
        stats.recovered
    );
    assert_eq!(stats.quarantined_records, 1, "what is left of it is kept");
    assert_eq!(
        stats.quarantined_bytes,
        16 + 3,
        "its entry header and 3 record bytes"
    );
    assert_eq!(drain(&q), expected(&payloads, 1..=8));
}

#[tokio::test]
async fn a_damaged_index_record_is_rebuilt_from_its_intact_chunk_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = store_with_three_chunks(dir.path()).await;
    with_index_tree(dir.path(), |tree| {
        let key = index_key(b'I', 5);
        let mut raw = tree.get(&key).unwrap().unwrap().to_vec();
        raw[1] ^= 0xff;
        tree.insert(key, raw).unwrap();
    });
    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert_eq!(
        stats.total.events, 12,
        "no event is lost to a damaged summary"
    );
    assert_eq!(stats.quarantined_records, 0);
    assert_eq!(drain(&q), expected(&payloads, 1..=12));
}

#[tokio::test]
async fn a_stale_snapshot_file_is_moved_aside_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = store_with_three_chunks(dir.path()).await;
    let stale = dir
        .path()
        .join("db")
        .join("snap.00000000000A1B2C.generating");
    std::fs::write(&stale, b"half a snapshot").unwrap();

    let q = Queue::open(dir.path(), config()).unwrap();
    let recovered = q.stats().recovered;
    assert_eq!(recovered.len(), 1, "{recovered:?}");
    assert!(
        recovered[0].contains("stale snap.*.generating"),
        "{recovered:?}"
    );
    assert!(!stale.exists(), "the stale file left the sled directory");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("aside-"))
        .collect();
    assert_eq!(aside.len(), 1, "kept in one aside-* directory");
    let kept = dir.path().join(&aside[0]).join(stale.file_name().unwrap());
    assert_eq!(std::fs::read(kept).unwrap(), b"half a snapshot");
    assert_eq!(drain(&q), expected(&payloads, 1..=12));
}

/// The names of `damaged-*` directories in `dir`.
fn damaged_dirs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("damaged-"))
        .collect()
}

/// Overwrites `file` inside `<dir>/db` with `garbage`; opening must not panic,
/// must keep sled's files for inspection, and must rebuild the index from the
/// body files: every event, under the same ids, and say so.
async fn garbage_file_rebuilds_the_index(file: &str, garbage: Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let payloads = store_with_three_chunks(dir.path()).await;
    let old_instance = Queue::open(dir.path(), config())
        .unwrap()
        .instance_id()
        .to_string();
    std::fs::write(dir.path().join("db").join(file), &garbage).unwrap();

    let opened = std::panic::catch_unwind(|| Queue::open(dir.path(), config()));
    let q = opened
        .expect("opening a damaged store never panics")
        .expect("a damaged sled file is rebuilt, not refused");
    let stats = q.stats();
    assert!(
        stats
            .recovered
            .iter()
            .any(|r| r.contains("rebuilt from the body files")),
        "{:?}",
        stats.recovered
    );
    assert_eq!(stats.total.events, 12, "every event is back");
    assert_eq!(q.instance_id(), old_instance, "under the same instance id");
    let damaged = damaged_dirs(dir.path());
    assert_eq!(damaged.len(), 1, "{damaged:?}");
    assert!(
        stats.recovered.iter().any(|r| r.contains(&damaged[0])),
        "the report names where sled's files went: {:?}",
        stats.recovered
    );
    assert_eq!(
        std::fs::read(dir.path().join(&damaged[0]).join(file)).unwrap(),
        garbage,
        "the damaged file is kept for inspection"
    );
    assert_eq!(
        drain(&q),
        expected(&payloads, 1..=12),
        "same seqs, same payloads"
    );
    // The rebuilt store works, and a second open finds nothing to repair.
    let after = q.enqueue_durable(TOPIC, b"after".to_vec()).await.unwrap();
    assert!(after.id().unwrap().seq() > 12, "ids are never reused");
    q.close();
    drop(q);
    let q = Queue::open(dir.path(), config()).unwrap();
    assert!(q.stats().recovered.is_empty(), "{:?}", q.stats().recovered);
    assert_eq!(
        drain(&q),
        vec![(after.id().unwrap().seq(), b"after".to_vec())]
    );
    assert_eq!(damaged_dirs(dir.path()).len(), 1);
}

#[tokio::test]
async fn garbage_over_the_sled_config_file_rebuilds_the_index_from_the_body_files() {
    garbage_file_rebuilds_the_index("conf", vec![0x5a; 64]).await;
}

#[tokio::test]
async fn garbage_over_the_sled_data_file_rebuilds_the_index_from_the_body_files() {
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    garbage_file_rebuilds_the_index("db", garbage).await;
}

#[tokio::test]
async fn a_truncated_sled_data_file_rebuilds_the_index_from_the_body_files() {
    garbage_file_rebuilds_the_index("db", vec![0x13, 0x37, 0x00, 0x01, 0x02]).await;
}

#[tokio::test]
async fn a_newer_format_is_refused_naming_both_versions() {
    let dir = tempfile::tempdir().unwrap();
    store_with_three_chunks(dir.path()).await;
    {
        let db = sled_open(dir.path());
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(
            meta.get("format").unwrap().unwrap().as_ref(),
            [evspool::record::FORMAT_VERSION]
        );
        meta.insert("format", &[9u8]).unwrap();
        // A newer build's store need not hold this build's journal.
        meta.remove("journal.epoch").unwrap();
        db.flush().unwrap();
    }
    std::fs::remove_file(dir.path().join("db").join("evspool.journal")).unwrap();
    for _ in 0..2 {
        let err = Queue::open(dir.path(), config()).unwrap_err();
        match &err {
            OpenError::NewerFormat {
                found, supported, ..
            } => assert_eq!((*found, *supported), (9, evspool::record::FORMAT_VERSION)),
            other => panic!("expected NewerFormat, got {other:?}"),
        }
        let text = err.to_string();
        assert!(
            text.contains("format 9")
                && text.contains(&format!("({})", evspool::record::FORMAT_VERSION))
                && text.contains("upgrade"),
            "{text}"
        );
    }
    // Refusing touched nothing: the store still says format 9.
    let db = sled_open(dir.path());
    let meta = db.open_tree("meta").unwrap();
    assert_eq!(meta.get("format").unwrap().unwrap().as_ref(), [9u8]);
    assert_eq!(
        meta.get("journal.epoch").unwrap(),
        None,
        "no journal epoch recorded"
    );
    assert!(
        !dir.path().join("db").join("evspool.journal").exists(),
        "no journal created"
    );
}

#[test]
fn a_directory_of_unrelated_files_is_not_a_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
    std::fs::create_dir(dir.path().join("photos")).unwrap();
    let err = Queue::open(dir.path(), config()).unwrap_err();
    match &err {
        OpenError::NotAStore { reason, .. } => {
            assert!(
                reason.contains("notes.txt") && reason.contains("photos"),
                "{reason}"
            )
        }
        other => panic!("expected NotAStore, got {other:?}"),
    }
    assert!(err.to_string().contains("is not an evspool store"), "{err}");
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["notes.txt", "photos"], "nothing was created there");

    let file = dir.path().join("notes.txt");
    assert!(matches!(
        Queue::open(&file, config()),
        Err(OpenError::NotAStore { .. })
    ));
}

#[test]
fn a_second_open_of_the_same_directory_in_one_process_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = Queue::open(dir.path(), config()).unwrap();
    let err = Queue::open(dir.path(), config()).unwrap_err();
    match &err {
        OpenError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
        other => panic!("expected Locked, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("pid {}", std::process::id())) && text.contains("admin API"),
        "{text}"
    );
    // The failed open left the first queue working.
    assert!(first.enqueue(TOPIC, b"x".to_vec()).unwrap().id().is_some());
    first.close();
    drop(first);
    let again = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(again.stats().total.events, 1);
}

fn assert_owner_only(path: &Path) {
    for entry in std::fs::read_dir(path).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        let p = entry.path();
        if entry.file_type().unwrap().is_dir() {
            assert_eq!(mode, 0o700, "{} is {mode:o}", p.display());
            assert_owner_only(&p);
        } else {
            assert_eq!(mode, 0o600, "{} is {mode:o}", p.display());
        }
    }
}

#[tokio::test]
async fn the_store_directory_is_0700_and_its_files_0600() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = parent.path().join("spool");
    let q = Queue::open(&dir, config()).unwrap();
    for i in 0..200 {
        let _ = q
            .enqueue_durable(TOPIC, format!("{i:0>512}").into_bytes())
            .await
            .unwrap();
    }
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert_owner_only(&dir);
    q.close();
    drop(q);
    // Files sled created while running are owner-only too.
    assert_owner_only(&dir);
    let files = walk_files(&dir);
    assert!(files >= 3, "the check saw the store's files ({files})");
}

fn walk_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk_files(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn a_store_whose_metadata_was_never_flushed_opens_fresh_without_a_damage_report() {
    // A process killed while creating a store leaves sled files but no metadata;
    // nothing was ever acknowledged there, so this is not damage.
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled_open(dir.path());
        db.flush().unwrap();
    }
    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert!(stats.recovered.is_empty(), "{:?}", stats.recovered);
    assert_eq!(stats.format, evspool::record::FORMAT_VERSION);
    assert!(damaged_dirs(dir.path()).is_empty());
}

/// A body file cut short under an open queue (read back short: damage).
#[tokio::test]
async fn a_body_file_cut_short_under_an_open_queue_delivers_the_intact_chunks_and_contains_the_cut_one()
 {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(
        dir.path(),
        QueueConfig {
            chunk_max_events: 4,
            commit_interval: Duration::from_secs(60),
            ..QueueConfig::default()
        },
    )
    .unwrap();
    for i in 1..=12u64 {
        let payload = format!("{{\"e\":{i},\"pad\":\"{}\"}}", "x".repeat(i as usize));
        assert!(matches!(
            q.enqueue("t", payload).unwrap(),
            evspool::Enqueued::Accepted(_)
        ));
    }
    q.sync().await.unwrap();
    let seg = std::fs::read_dir(dir.path().join("bodies").join("t"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let len = std::fs::metadata(&seg).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let mut seqs = Vec::new();
    for _ in 0..10 {
        match q.lease("t", 100).unwrap() {
            Some(l) => {
                seqs.extend(l.events().iter().map(|e| e.seq()));
                q.ack(l).unwrap();
            }
            None => break,
        }
    }
    assert_eq!(
        seqs,
        (1..=8).collect::<Vec<u64>>(),
        "the cut chunk is not delivered"
    );
    let st = q.stats();
    assert_eq!(st.total.events, 0, "{st:?}");
    assert!(st.quarantined_records >= 1, "{st:?}");
}
