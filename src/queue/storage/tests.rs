//! Tests of the sled store.

use super::*;
use crate::record::{ChunkIndex, DeadLetter, RetryState};

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
        .quarantine(
            "track",
            7,
            &[QuarantinePart {
                place: (1, 0),
                bytes: b"damaged bytes",
            }],
            1 << 20,
        )
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
    let imported = bare_sled(&imported_dir);
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

/// The chunk keys of topic `a` in a copy of `live` as a kill leaves it
/// (`as_killed`, in `dir/killed`), reopened.
fn keys_after_a_kill(live: &Store, dir: &Path) -> Vec<u64> {
    let killed = dir.join("killed");
    as_killed(&live.path, &killed);
    chunk_keys(&open_unflushed(&killed))
}

/// The chunk keys of topic `a`.
fn chunk_keys(store: &Store) -> Vec<u64> {
    store
        .load()
        .unwrap()
        .get("a")
        .map_or(Vec::new(), |t| t.index.iter().map(|(k, _)| *k).collect())
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

/// `Store::open` with sled's background flush an hour apart. A database
/// dropped a moment ago holds sled's lock until its threads let go: this
/// waits for that, up to 5 s, as `open_store` does.
fn open_waiting(path: &Path) -> Result<Store, OpenFailure> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Store::open(path, 1 << 20, Duration::from_secs(3600)) {
            Err(OpenFailure::Locked(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// sled's background flush never runs in these tests. A new store gets
/// this build's format, as `Queue::open` records it (J9: only such a store's
/// journal is replayed).
fn open_unflushed(path: &Path) -> Store {
    let store = open_waiting(path).ok().unwrap();
    if store.format().unwrap().is_none() {
        store.set_format(record::FORMAT_VERSION).unwrap();
        store.flush().unwrap();
    }
    store
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
    assert_eq!(chunk_keys(&reopened), [5, 9]);
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

// ---- review of the index journal (251eecd) ----

/// F1. A flush's journal reset whose truncate succeeds and whose header
/// write fails (EIO, a full disk) leaves `end` at 0: every later record is
/// written at offset 0, with no header, and an open takes the file for no
/// journal at all. A batch applied after it, then a kill, is lost, although
/// J5 says a failed reset only "leaves records sled already holds".
#[test]
fn a_batch_applied_after_a_failed_journal_reset_survives_a_kill() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _hook = crate::faults::TEST_HOOK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let live = open_unflushed(&dir.path().join("live"));
    live.apply(one_chunk("a", 5)).unwrap();
    let journal_path = live.path.join(journal::FILE);
    let armed = Arc::new(AtomicBool::new(true));
    let hook_armed = armed.clone();
    crate::faults::install(move |site, path| {
        (site == crate::faults::Site::Write
            && path == journal_path
            && hook_armed.swap(false, Ordering::SeqCst))
        .then_some(crate::faults::Fault::Error(libc::EIO))
    });
    // sled applies and flushes 5; the reset's header write fails (warned, Ok).
    live.flush().unwrap();
    crate::faults::clear();
    // Since the fix a reset writes no header (it cuts the file back to
    // it), so the failed write is the next append's (J5: sled is flushed
    // instead); on 251eecd it was the reset's header write.
    if armed.swap(false, Ordering::SeqCst) {
        crate::faults::install({
            let journal_path = live.path.join(journal::FILE);
            let once = Arc::new(AtomicBool::new(true));
            move |site, path| {
                (site == crate::faults::Site::Write
                    && path == journal_path
                    && once.swap(false, Ordering::SeqCst))
                .then_some(crate::faults::Fault::Error(libc::EIO))
            }
        });
    }
    // An ack-like write after it: journaled (apply returned Ok), sled late.
    live.apply(one_chunk("a", 9)).unwrap();
    crate::faults::clear();
    let keys = keys_after_a_kill(&live, dir.path());
    assert_eq!(
        keys,
        [5, 9],
        "a batch applied Ok after a failed reset was lost by a kill"
    );
}

/// F2. `record_quarantine` (lease.rs, verify.rs) writes the damaged bytes to
/// sled's quarantine tree directly, and the chunk's index removal reaches
/// sled through the journal. sled kept them in that order before; now a
/// kill keeps the removal (journal) and loses the quarantine record (sled's
/// buffer): the damaged events leave the queue neither quarantined nor
/// counted (DESIGN guarantee 7).
#[test]
fn a_kill_never_keeps_a_damaged_chunks_removal_without_its_quarantine_record() {
    let dir = tempfile::tempdir().unwrap();
    let live = open_unflushed(&dir.path().join("live"));
    live.apply(one_chunk("a", 5)).unwrap();
    live.flush().unwrap();
    // What `contain_leased` does: quarantine first, then the removal op
    // (applied by the committer's next apply).
    live.quarantine(
        "a",
        5,
        &[QuarantinePart {
            place: (1, 0),
            bytes: b"damaged entry bytes",
        }],
        u64::MAX,
    )
    .unwrap();
    let mut b = WriteBatch::default();
    b.remove_chunk("a", 5);
    live.apply(b).unwrap();
    let killed = dir.path().join("killed");
    as_killed(&live.path, &killed);
    let reopened = open_unflushed(&killed);
    let still_indexed = reopened
        .load()
        .unwrap()
        .get("a")
        .is_some_and(|t| t.index.iter().any(|(k, _)| *k == 5));
    let (quarantined, _) = reopened.quarantine_usage();
    assert!(
        still_indexed || quarantined == 1,
        "after the kill chunk 5 is gone from the index and quarantine holds {quarantined} records: \
         its damaged events vanished uncounted"
    );
}

/// F3. A journal-unaware writer (the format-4 build, 4b2ea6e, whose
/// `Store::open` opens sled's trees and applies batches straight to sled)
/// leaves sled's `journal.applied` and the journal file as they were. The
/// format-5 build's first open of a format-4 store journals its repairs and
/// raises `meta.format` only at the end; a crash before that leaves format 4
/// (0005-index-journal.md says so), which the format-4 build opens as its
/// own. When the format-5 build opens the store again, the old journal's
/// epoch still matches and its lsns still run on from `journal.applied`:
/// its stale records are replayed over everything written since.
#[test]
fn a_stale_journal_is_never_replayed_over_writes_made_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let live = open_unflushed(&dir.path().join("live"));
    // The format-5 open's repair of a format-4 store: chunk 5 adopted,
    // high-water 6; journaled, then the crash before the format is raised.
    let mut repair = one_chunk("a", 5);
    repair.set_high_water("a", 6);
    live.apply(repair).unwrap();
    let store = dir.path().join("store");
    as_killed(&live.path, &store);
    drop(live);
    // The format-4 build opens it (format byte 4 or none: its own), redoes
    // the repair, delivers and acks chunk 5, hands out seqs up to 19.
    {
        let db = bare_sled(&store);
        let index = db.open_tree(INDEX_TREE).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert(META_FORMAT, &[4u8]).unwrap();
        let mut b = Default::default();
        let mut w = one_chunk("a", 5);
        w.set_high_water("a", 6);
        add_writes(&mut b, w.writes);
        index.apply_batch(b).unwrap();
        let mut b = Default::default();
        let mut w = WriteBatch::default();
        w.remove_chunk("a", 5);
        w.set_high_water("a", 20);
        add_writes(&mut b, w.writes);
        index.apply_batch(b).unwrap();
        db.flush().unwrap();
    }
    // The format-5 build again.
    let reopened = open_unflushed(&store);
    let a = &reopened.load().unwrap()["a"];
    let keys: Vec<u64> = a.index.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        (keys, a.high_water),
        (vec![], 20),
        "the stale journal resurrected acked chunk 5 and/or lowered the seq high-water"
    );
}

/// F4. After an open that found a gap (sled older than the journal's first
/// record: a power cut after a reset, a damaged sled tail, sled's files
/// restored), lsns go on from the journal's last one, but sled's
/// `journal.applied` stays behind and nothing records the jump: the
/// journal is emptied, and the next open finds the same gap in front of
/// every record written since. Batches applied after that open are lost by
/// a kill until sled happens to apply and flush one (up to a second and a
/// flush interval later).
#[test]
fn batches_after_an_open_that_found_a_gap_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let live = open_unflushed(&dir.path().join("live"));
    live.apply(one_chunk("a", 1)).unwrap();
    live.flush().unwrap(); // sled: applied 1
    // sled's files as they were then (what a power cut or a damaged tail
    // can bring back).
    let store = dir.path().join("store");
    as_killed(&live.path, &store);
    live.apply(one_chunk("a", 2)).unwrap();
    live.flush().unwrap(); // applied 2, journal emptied
    live.apply(one_chunk("a", 3)).unwrap(); // journal: lsn 3
    std::fs::copy(live.path.join(journal::FILE), store.join(journal::FILE)).unwrap();
    drop(live);
    // The open: sled at 1, the journal starts at 3: nothing replayed (J2).
    let reopened = open_unflushed(&store);
    assert_eq!(reopened.load().unwrap()["a"].index.len(), 1);
    // A batch applied Ok on this open (an ack), then a kill.
    reopened.apply(one_chunk("a", 4)).unwrap();
    let keys = keys_after_a_kill(&reopened, dir.path());
    assert_eq!(
        keys,
        [1, 4],
        "a batch applied after the gap open was lost by a kill"
    );
}

// ---- second review of the index journal (5544e75) ----

/// Makes sled refuse writes from now on, as a full disk does: the
/// process may no longer grow a file (RLIMIT_FSIZE at sled's data file's
/// size; SIGXFSZ caught, so a write fails with EFBIG). Process-wide: only
/// in a child process (`in_child`).
fn break_sleds_writes(store: &Store) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let sig = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
        .unwrap();
    std::mem::forget(sig);
    std::mem::forget(rt);
    let size = std::fs::metadata(store.path.join("db")).unwrap().len();
    rustix::process::setrlimit(
        rustix::process::Resource::Fsize,
        rustix::process::Rlimit {
            current: Some(size),
            maximum: None,
        },
    )
    .unwrap();
}

/// Runs the test `name` again in a child process (with the env var
/// `EVSPOOL_REVIEW2_CHILD` set) and returns its output; `true` in the child.
fn in_child(name: &str) -> Option<std::process::Output> {
    if std::env::var_os("EVSPOOL_REVIEW2_CHILD").is_some() {
        return None;
    }
    Some(
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([name, "--exact", "--nocapture", "--test-threads=1"])
            .env("EVSPOOL_REVIEW2_CHILD", "1")
            .output()
            .unwrap(),
    )
}

/// R1. `dead_range` goes on when sled refuses the pending writes (5544e75),
/// but the pending writes are ones `apply_all` already returned Ok for: the
/// catalog's overlay (`TopicIndex::pending_dead`, used by `read_dead`) no
/// longer holds them, so nothing hides a dead letter whose removal (purge,
/// replay, eviction) was applied Ok. `read_dead` hands it out again, and
/// `reap::carry_traces` takes it for still dead and traces it into a new
/// body generation (the truth a rebuild restores).
#[test]
fn a_dead_letter_removed_ok_is_not_read_back_when_sled_refuses_writes() {
    if let Some(out) = in_child(
        "queue::storage::tests::a_dead_letter_removed_ok_is_not_read_back_when_sled_refuses_writes",
    ) {
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("1 passed"), "the child failed:\n{text}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let live = open_unflushed(&dir.path().join("live"));
    let mut b = WriteBatch::default();
    b.put_dead_raw("a", 7, b"letter seven");
    live.apply(b).unwrap();
    live.flush().unwrap();
    // An earlier batch sled applied and has not written out yet.
    let mut b = WriteBatch::default();
    b.put_dead_raw("a", 8, b"letter eight");
    live.apply(b).unwrap();
    live.apply_pending().unwrap();
    // Letter 7 purged: journaled, Ok, pending (J7).
    let mut b = WriteBatch::default();
    b.remove_dead("a", 7);
    live.apply(b).unwrap();
    // The disk fails under sled's background flush (`flush_every_ms`):
    // sled refuses every write from now on.
    break_sleds_writes(&live);
    assert!(live.db.flush().is_err(), "sled's flush failed");
    let seqs: Vec<u64> = live
        .dead_range("a", 0, 10)
        .map(|r| r.into_iter().map(|(s, _)| s).collect())
        .unwrap_or_default();
    assert!(
        !seqs.contains(&7),
        "dead_range returned letter 7 after its removal was applied Ok: {seqs:?}"
    );
}

/// R2. J5 says the journal is never required, yet an open fails when the
/// journal file cannot be read, or cut back after the replay (F4 made the
/// open reset it whenever it holds records): `Store::open` returns
/// `OpenFailure::Io`, which `open_store` passes up (no ballast, no move
/// aside), so one bad journal file makes the whole store unopenable until
/// someone deletes it by hand, although sled holds every record in it.
#[test]
fn a_journal_that_cannot_be_read_or_emptied_does_not_stop_an_open() {
    let _hook = crate::faults::TEST_HOOK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for site in [crate::faults::Site::Truncate, crate::faults::Site::Read] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        {
            let live = open_unflushed(&path);
            live.apply(one_chunk("a", 5)).unwrap();
            // Dropped: sled applies and flushes it; the journal keeps it.
        }
        assert!(std::fs::metadata(path.join(journal::FILE)).unwrap().len() > 16);
        let journal_path = path.join(journal::FILE);
        crate::faults::install(move |s, p| {
            (s == site && p == journal_path).then_some(crate::faults::Fault::Error(libc::EIO))
        });
        let opened = open_waiting(&path);
        crate::faults::clear();
        let err = match &opened {
            Ok(_) => String::new(),
            Err(OpenFailure::Io(e)) => format!("Io({e})"),
            Err(OpenFailure::Damaged(t)) => format!("Damaged({t})"),
            Err(OpenFailure::Locked(t)) => format!("Locked({t})"),
        };
        assert!(
            opened.is_ok(),
            "{site:?} EIO on the journal: the store does not open: {err}"
        );
        let opened = opened.ok().unwrap();
        assert_eq!(opened.load().unwrap()["a"].index.len(), 1);
    }
}

#[test]
fn a_batch_applied_while_sled_flushes_is_not_cut_from_the_journal() {
    let _hook = crate::faults::TEST_HOOK
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let live = std::sync::Arc::new(open_unflushed(&dir.path().join("live")));
    live.apply(one_chunk("a", 5)).unwrap();
    // The flush stops after sled's own flush, before it empties the journal;
    // meanwhile another batch is applied (journaled, not in sled's file).
    let (reached_tx, reached_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    fail::cfg_callback("queue::storage::flush::after_sled", move || {
        let _ = reached_tx.send(());
        let _ = go_rx.lock().unwrap().recv();
    })
    .unwrap();
    let flusher = {
        let live = live.clone();
        std::thread::spawn(move || live.flush().unwrap())
    };
    reached_rx.recv().unwrap();
    fail::remove("queue::storage::flush::after_sled");
    live.apply(one_chunk("a", 9)).unwrap();
    go_tx.send(()).unwrap();
    flusher.join().unwrap();
    assert_eq!(
        keys_after_a_kill(&live, dir.path()),
        [5, 9],
        "the flush emptied the journal of a batch sled had not flushed"
    );
}

#[test]
fn quarantining_the_same_damage_again_keeps_each_part_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "q");
    let part = |place, bytes| QuarantinePart { place, bytes };
    // Two parts with the same bytes (two zeroed entries) at two places,
    // and one other.
    let parts = [
        part((1, 40), b"zeros"),
        part((1, 90), b"zeros"),
        part((1, 140), b"flipped"),
    ];
    assert_eq!(store.quarantine("t", 9, &parts, u64::MAX).unwrap(), (17, 3));
    // Found again (the containment failed or was killed): nothing new.
    assert_eq!(store.quarantine("t", 9, &parts, u64::MAX).unwrap(), (17, 0));
    assert_eq!(
        store.quarantine("t", 9, &parts[1..], u64::MAX).unwrap(),
        (17, 0)
    );
    // The same bytes elsewhere, under another chunk or topic, or other
    // bytes at the same place are other damage.
    for (topic, seq, place, bytes) in [
        ("t", 9, (1, 190), &b"zeros"[..]),
        ("t", 9, (2, 40), b"zeros"),
        ("t", 13, (1, 40), b"zeros"),
        ("u", 9, (1, 40), b"zeros"),
        ("t", 9, (1, 40), b"zeroes"),
    ] {
        let (_, recorded) = store
            .quarantine(topic, seq, &[part(place, bytes)], u64::MAX)
            .unwrap();
        assert_eq!(recorded, 1, "{topic} {seq} {place:?} {bytes:?}");
    }
    assert_eq!(store.quarantine_usage(), (8, 43));
}
