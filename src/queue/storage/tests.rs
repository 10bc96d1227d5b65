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
