//! Tests of the sled store.

use super::*;
use crate::record::DeadLetter;

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
        20_000 + 1 + 100 + 1,
        "index records, high-water, dead letters, the journal's applied lsn"
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
    // sled's own import, into a database as `Store::open` configures it
    // (a bare one: a `Store` already holds its journal's epoch).
    let imported_dir = dir.path().join("imported");
    let imported = sled::Config::new()
        .path(&imported_dir)
        .cache_capacity(64 << 20)
        .mode(sled::Mode::HighThroughput)
        .segment_size(SEGMENT_SIZE)
        .open()
        .unwrap();
    imported.import(old.db.export());
    imported.flush().unwrap();
    assert_eq!(copied.db.checksum().unwrap(), old.db.checksum().unwrap());
    let file = |p: &Path| std::fs::metadata(p.join("db")).unwrap().len();
    let (copied_bytes, imported_bytes) = (file(&copied.path), file(&imported_dir));
    assert!(
        copied_bytes * 4 <= imported_bytes * 3,
        "the copy's data file is {copied_bytes} bytes, sled's import {imported_bytes}: \
         the copy should leave at most 3/4 of it"
    );
}

/// The files of sled's directory `from` copied to `to` while the store is
/// open: what a `kill -9` leaves (sled's unflushed buffer is not in them,
/// the journal's writes are, as the page cache keeps them).
fn as_killed(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn one_chunk(topic: &str, seq: u64) -> WriteBatch {
    let idx = ChunkIndex {
        events: 1,
        bytes: 3,
        last_seq: seq,
        first_enqueued_ms: 1,
        body_gen: 1,
        body_offset: 16,
        body_len: 30,
    };
    let mut b = WriteBatch::default();
    b.put_index(topic, seq, &idx);
    b
}

/// sled's background flush never runs in these tests.
fn open_unflushed(path: &Path) -> Store {
    Store::open(path, 1 << 20, Duration::from_secs(3600))
        .ok()
        .unwrap()
}

#[test]
fn a_batch_sled_never_flushed_is_replayed_from_the_journal_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let live = open_unflushed(&dir.path().join("live"));
    live.apply(one_chunk("a", 5)).unwrap();
    live.apply(one_chunk("a", 9)).unwrap();
    // Without the journal the killed copy has neither: sled held them in
    // memory only (so the journal is what keeps them).
    let bare = dir.path().join("bare");
    as_killed(&live.path, &bare);
    std::fs::remove_file(bare.join(journal::FILE)).unwrap();
    assert!(!open_unflushed(&bare).load().unwrap().contains_key("a"));
    let killed = dir.path().join("killed");
    as_killed(&live.path, &killed);
    let reopened = open_unflushed(&killed);
    let keys: Vec<u64> = reopened.load().unwrap()["a"]
        .index
        .iter()
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(keys, [5, 9]);
    assert_eq!(
        std::fs::metadata(killed.join(journal::FILE)).unwrap().len(),
        16,
        "a replayed journal is emptied"
    );
    // And the next batch follows on: a second kill keeps it too.
    reopened.apply(one_chunk("a", 12)).unwrap();
    let again = dir.path().join("again");
    as_killed(&reopened.path, &again);
    assert_eq!(open_unflushed(&again).load().unwrap()["a"].index.len(), 3);
}

#[test]
fn a_journal_is_never_replayed_into_a_sled_that_lost_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let live = open_unflushed(&dir.path().join("live"));
    live.apply(one_chunk("a", 5)).unwrap();
    let killed = dir.path().join("killed");
    as_killed(&live.path, &killed);
    // sled's own files lost, the journal left: a new sled, another epoch.
    for entry in std::fs::read_dir(&killed).unwrap().flatten() {
        if entry.file_name() != journal::FILE {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let fresh = open_unflushed(&killed);
    assert!(
        fresh.load().unwrap().is_empty(),
        "a lost sled's journal was replayed"
    );
    assert_eq!(
        std::fs::metadata(killed.join(journal::FILE)).unwrap().len(),
        16,
        "another sled's journal is emptied"
    );
}

#[test]
fn a_copied_store_owns_its_journal_and_replays_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let old = open_unflushed(&dir.path().join("old"));
    old.apply(one_chunk("a", 5)).unwrap();
    let copied = open_unflushed(&dir.path().join("copied"));
    old.copy_into(&copied).unwrap();
    copied.flush().unwrap();
    // A write after the copy, not flushed, then a kill.
    copied.apply(one_chunk("a", 9)).unwrap();
    let killed = dir.path().join("killed");
    as_killed(&copied.path, &killed);
    assert_eq!(open_unflushed(&killed).load().unwrap()["a"].index.len(), 2);
}
