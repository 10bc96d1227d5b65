//! Two different damages that share topic, chunk key and bytes each get
//! their own quarantine record: the intact first piece of a split chunk
//! keeps the chunk's key; a cut-short part has no bytes; open-time recovery
//! keys every "bytes that are no valid entry" by seq 0. `Store::quarantine`
//! skips only a part already kept at the same place (generation, offset)
//! with the same bytes. A review wrote these against its first form, keyed
//! without the place: each failed there (the second damage got no record).

use super::{
    TOPIC, body_file, config, entries, generations, lose_sled, payload, queued, runtime, turn,
};
use evspool::{Queue, QueueConfig};
use std::path::Path;

/// Durable events `1..=n`, each its own entry, in chunks of `chunk` entries.
fn store_of(dir: &Path, chunk: usize, n: u64) -> QueueConfig {
    let cfg = QueueConfig {
        chunk_max_events: chunk,
        ..config()
    };
    let rt = runtime();
    let q = Queue::open(dir, cfg.clone()).unwrap();
    rt.block_on(async {
        for i in 1..=n {
            let id = q.enqueue_durable(TOPIC, payload(i)).await.unwrap();
            assert_eq!(id.id().unwrap().seq(), i);
        }
        q.sync().await.unwrap();
    });
    q.close();
    cfg
}

/// Overwrites the whole entries (header and record) whose first seqs are
/// `seqs` with 0xEE bytes: garbage of each entry's length. Returns the
/// lengths.
fn garble_entries(dir: &Path, seqs: &[u64]) -> Vec<u64> {
    let g = generations(dir, TOPIC);
    assert_eq!(g.len(), 1, "{g:?}");
    let path = body_file(dir, TOPIC, g[0]);
    let all = entries(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mut lens = Vec::new();
    for seq in seqs {
        let e = all.iter().find(|e| e.seq == *seq).expect("the entry");
        for b in &mut bytes[e.offset as usize..(e.offset + 16 + e.len) as usize] {
            *b = 0xee;
        }
        lens.push(16 + e.len);
    }
    std::fs::write(&path, bytes).unwrap();
    lens
}

fn garble_entry(dir: &Path, seq: u64) -> u64 {
    garble_entries(dir, &[seq])[0]
}

/// Chunk 1 holds entries 1, 2, 3. Entry 3 is garbled: the lease splits
/// chunk 1, its piece 1..=2 keeps key 1, and the garbage is quarantined
/// under (t, 1). Later entry 2 (the same length) is garbled the same way:
/// `verify` finds it, takes event 2 out of the queue, reports one
/// quarantined part — and no record is written, since (t, 1, those bytes)
/// is "already kept". Two entries lost, one record.
#[test]
fn a_second_damage_in_a_split_chunk_s_first_piece_gets_its_own_quarantine_record() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_of(dir.path(), 3, 3);
    let len3 = garble_entry(dir.path(), 3);
    {
        let q = Queue::open(dir.path(), cfg.clone()).unwrap();
        let l = q.lease(TOPIC, 100).unwrap().expect("the intact piece");
        let seqs: Vec<u64> = l.events().iter().map(|e| e.seq()).collect();
        assert_eq!(seqs, [1, 2]);
        q.release(l);
        assert_eq!(q.stats().quarantined_records, 1, "entry 3");
        q.close();
    }
    let len2 = garble_entry(dir.path(), 2);
    assert_eq!(len2, len3, "entries 2 and 3 are the same length");
    let q = Queue::open(dir.path(), cfg).unwrap();
    let report = q.verify().unwrap();
    assert_eq!(report.quarantined, 1, "verify found entry 2: {report:?}");
    assert_eq!(
        queued(&q, TOPIC).into_keys().collect::<Vec<_>>(),
        [1],
        "events 2 and 3 are gone"
    );
    let stats = q.stats();
    assert_eq!(
        (stats.quarantined_records, stats.quarantined_bytes),
        (2, len2 + len3),
        "two damaged entries (3, then 2), each its own quarantine record \
         (verify reported the second as quarantined)"
    );
    q.close();
}

/// The same with no garbage at all: a body file cut short (under an open
/// queue) at entry 3's start, then at entry 2's. Each cut is a damaged part
/// with no bytes under key 1 (the piece keeps the key): the second cut is
/// taken for the first one's record, and event 2 leaves the queue with no
/// record.
#[test]
fn a_chunk_cut_short_twice_is_quarantined_twice() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_of(dir.path(), 3, 3);
    let g = generations(dir.path(), TOPIC);
    let path = body_file(dir.path(), TOPIC, g[0]);
    let at = |seq: u64| {
        entries(&path)
            .into_iter()
            .find(|e| e.seq == seq)
            .expect("the entry")
            .offset
    };
    let (e2, e3) = (at(2), at(3));
    let cut = |len: u64| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
    };
    let q = Queue::open(dir.path(), cfg).unwrap();
    cut(e3);
    let l = q.lease(TOPIC, 100).unwrap().expect("the intact piece");
    assert_eq!(
        l.events().iter().map(|e| e.seq()).collect::<Vec<_>>(),
        [1, 2]
    );
    q.release(l);
    assert_eq!(q.stats().quarantined_records, 1, "the first cut");
    cut(e2);
    let l = q.lease(TOPIC, 100).unwrap().expect("the intact piece");
    assert_eq!(l.events().iter().map(|e| e.seq()).collect::<Vec<_>>(), [1]);
    q.ack(l).unwrap();
    let stats = q.stats();
    assert_eq!(stats.total.events, 0, "{stats:?}");
    assert_eq!(
        stats.quarantined_records, 2,
        "two cuts, two damaged parts (events 3, then 2), each its own record"
    );
    q.close();
}

/// A rebuild without sled quarantines each run of bytes that is no valid
/// entry under seq 0 (`Part::Damaged` in `open/rebuild.rs`). Two such runs
/// with the same bytes (entries 2 and 5 garbled the same way) are two
/// damaged places, two lost events: one record.
#[test]
fn two_garbage_runs_with_the_same_bytes_found_by_a_rebuild_are_two_quarantine_records() {
    let _t = turn();
    let dir = tempfile::tempdir().unwrap();
    let cfg = store_of(dir.path(), 1, 6);
    let lens = garble_entries(dir.path(), &[2, 5]);
    let (a, b) = (lens[0], lens[1]);
    assert_eq!(a, b);
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), cfg).unwrap();
    assert_eq!(
        queued(&q, TOPIC).into_keys().collect::<Vec<_>>(),
        [1, 3, 4, 6],
        "the intact events"
    );
    let stats = q.stats();
    assert_eq!(
        (stats.quarantined_records, stats.quarantined_bytes),
        (2, a + b),
        "two garbled entries found by the rebuild, each its own record"
    );
    q.close();
}
