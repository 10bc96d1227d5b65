//! What a lost sled file costs, exactly as the README lists it ("What a lost
//! sled file costs"): a store whose `db/` is gone is rebuilt from its body
//! files with the same instance id and event ids, its dead letters and
//! without what was purged, evicted or expired (`queue/log/trace.rs`); what only
//! sled knew is the price — acks of events whose body file remains, retry
//! schedules — and nothing else is.

use evspool::{Queue, QueueConfig, Settlement};
use evspool_testkit::queue::{accepted_seq, block_on, leased_seqs};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const TOPIC: &str = "t";

fn config() -> QueueConfig {
    QueueConfig {
        chunk_max_events: 4,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    }
}

fn payload(i: u64) -> Vec<u8> {
    format!("{{\"e\":{i}}}").into_bytes()
}

/// Every queued event's seq and attempts, by leasing everything and releasing it.
fn queued(q: &Queue) -> BTreeMap<u64, u32> {
    let mut out = BTreeMap::new();
    let mut leases = Vec::new();
    while let Some(l) = q.lease(TOPIC, 1000).unwrap() {
        out.extend(l.events().iter().map(|e| (e.seq(), e.attempts)));
        leases.push(l);
    }
    for l in leases {
        q.release(l);
    }
    out
}

fn lose_sled(dir: &Path) {
    std::fs::remove_dir_all(dir.join("db")).unwrap();
}

#[tokio::test]
async fn a_lost_sled_file_costs_exactly_what_the_readme_lists() {
    let dir = tempfile::tempdir().unwrap();
    let (instance, next_before) = {
        let q = Queue::open(dir.path(), config()).unwrap();
        // Chunks of 4: seqs 1-4, 5-8, 9-12, 13-16, 17-20, all in one body file.
        for i in 1..=20u64 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        q.sync().await.unwrap();
        // 1-4 acked.
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(l.events()[0].seq(), 1);
        q.ack(l).unwrap();
        // 5-8: two delivered, two dead letters.
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(l.events()[0].seq(), 5);
        let s = Settlement::delivered().dead(5, "bad").dead(6, "bad");
        assert_eq!(q.settle(l, s).unwrap().dead, 2);
        // 9-12: a failed attempt, retried in an hour.
        let l = q.lease(TOPIC, 4).unwrap().unwrap();
        assert_eq!(l.events()[0].seq(), 9);
        q.nack(l, Duration::from_secs(3600), "http 503").unwrap();
        // 13-20 stay queued, never attempted.
        assert_eq!(q.dead_letters(TOPIC, 0, 100).unwrap().len(), 2);
        let next = q.enqueue(TOPIC, payload(21)).unwrap().id().unwrap().seq();
        q.sync().await.unwrap();
        let id = q.instance_id().to_string();
        q.close();
        (id, next)
    };
    lose_sled(dir.path());

    let q = Queue::open(dir.path(), config()).unwrap();
    let stats = q.stats();
    assert!(
        stats
            .recovered
            .iter()
            .any(|r| r.contains("rebuilt from the body files")),
        "the rebuild is reported: {:?}",
        stats.recovered
    );
    // Kept: the instance id, so every event keeps its id.
    assert_eq!(q.instance_id(), instance, "same instance id");
    let got = queued(&q);
    // Kept: every event never settled (13-21), under its seq.
    for s in 13..=21 {
        assert_eq!(got.get(&s), Some(&0), "seq {s} kept, unattempted");
    }
    // Cost 1: acknowledgements in a body file not yet deleted: 1-4 come
    // back, same ids (delivered again; a deduplicating sink drops them).
    for s in 1..=4 {
        assert!(got.contains_key(&s), "acked seq {s} is delivered again");
    }
    // Kept: dead letters, traced in the body file when they were made: 5 and
    // 6 are dead letters again, with their reasons, and not queued. The two
    // delivered with them (7, 8) were acked: like 1-4, they come back.
    let dead = q.dead_letters(TOPIC, 0, 100).unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.id.seq(), d.reason.as_str()))
            .collect::<Vec<_>>(),
        vec![(5, "bad"), (6, "bad")],
        "dead letters are restored"
    );
    for s in [5, 6] {
        assert!(!got.contains_key(&s), "dead letter {s} is not queued");
    }
    for s in [7, 8] {
        assert!(got.contains_key(&s), "acked seq {s} is delivered again");
    }
    // Cost 3: retry schedules: 9-12 are due at once, their attempts forgotten.
    for s in 9..=12 {
        assert_eq!(
            got.get(&s),
            Some(&0),
            "seq {s}: attempts and backoff forgotten"
        );
    }
    assert_eq!(got.len(), 19, "{got:?}");
    // Kept: no id is ever handed out again.
    let next = q.enqueue(TOPIC, payload(22)).unwrap().id().unwrap().seq();
    assert!(next > next_before, "seq {next} after {next_before}");
    assert_eq!(q.verify().unwrap().quarantined, 0);
}

#[tokio::test]
async fn a_lost_sled_file_never_brings_back_events_whose_body_file_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        for i in 1..=8u64 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        q.sync().await.unwrap();
        while let Some(l) = q.lease(TOPIC, 100).unwrap() {
            q.ack(l).unwrap();
        }
        q.close();
    }
    // Reopened, the store writes to a new generation; the drained one goes.
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        let _ = q.enqueue(TOPIC, payload(9)).unwrap();
        q.sync().await.unwrap();
        q.close();
    }
    let gens: Vec<String> = std::fs::read_dir(dir.path().join("bodies").join(TOPIC))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(gens, ["2.seg"], "the drained generation is gone");
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(
        queued(&q).into_keys().collect::<Vec<_>>(),
        vec![9],
        "only the event whose body file remains"
    );
}

#[tokio::test]
async fn a_lost_sled_file_finds_damaged_entries_again_and_never_revives_them() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        for i in 1..=8u64 {
            let _ = q.enqueue(TOPIC, payload(i)).unwrap();
        }
        q.sync().await.unwrap();
        q.close();
    }
    // Damage the first chunk's record (seqs 1-4): one byte inside it.
    let seg = dir.path().join("bodies").join(TOPIC).join("1.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    // The file header (40 bytes), the entry header (16), then the record.
    bytes[40 + 16 + 6] ^= 0xff;
    std::fs::write(&seg, bytes).unwrap();
    {
        let q = Queue::open(dir.path(), config()).unwrap();
        assert_eq!(q.verify().unwrap().quarantined, 1);
        assert_eq!(q.stats().quarantined_records, 1);
        q.close();
    }
    lose_sled(dir.path());
    let q = Queue::open(dir.path(), config()).unwrap();
    assert_eq!(
        q.stats().quarantined_records,
        1,
        "the damaged entry is found again and quarantined"
    );
    assert_eq!(
        queued(&q).into_keys().collect::<Vec<_>>(),
        (5..=8).collect::<Vec<_>>(),
        "the damaged entry is never revived, the intact one kept"
    );
}

// Rebuilds keep each kind's lease order (found by a review of the fix that
// stops late chunks from taking followers).

fn body_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(dir.join("bodies")).unwrap().flatten() {
        for f in std::fs::read_dir(t.path()).unwrap().flatten() {
            out.push(format!(
                "{}/{}",
                t.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            ));
        }
    }
    out.sort();
    out
}

/// Leases one chunk at a time until none is ready; returns the seqs in lease order.
fn lease_order(q: &Queue, topic: &str) -> Vec<u64> {
    leased_seqs(q, topic, 1)
}

/// A rest (a `rewrite` entry) that opens a generation whose predecessor was
/// reaped is not late by the rebuild's high mark (nothing lies before it),
/// so the durable `new` entry appended right after it joins it; a second
/// rest written later holds a durable seq between the two and is keyed
/// above the joined chunk: after a rebuild durable 5 is leased before 4.
#[test]
fn durable_events_are_leased_in_seq_order_after_a_rebuild_that_meets_a_rest_opening_a_generation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || QueueConfig {
        chunk_max_events: 16,
        commit_interval: Duration::from_millis(5),
        ..QueueConfig::default()
    };
    // Session 1 (generation 1): two durable entries, indexed as two chunks.
    let (a, b) = {
        let q = Queue::open(dir.path(), cfg()).unwrap();
        let a: Vec<u64> = block_on(q.enqueue_batch_durable("t", [b"a1".to_vec(), b"a2".to_vec()]))
            .unwrap()
            .iter()
            .map(accepted_seq)
            .collect();
        // Indexed now: the next entry does not join it.
        let l = q.lease("t", 16).unwrap().unwrap();
        q.release(l);
        let b: Vec<u64> = block_on(q.enqueue_batch_durable("t", [b"b1".to_vec(), b"b2".to_vec()]))
            .unwrap()
            .iter()
            .map(accepted_seq)
            .collect();
        q.close();
        (a, b)
    };
    // Session 2 (generation 2): rest of A, a new durable event, rest of B.
    let d = {
        let q = Queue::open(dir.path(), cfg()).unwrap();
        let l = q.lease("t", 2).unwrap().unwrap();
        assert_eq!(l.events().iter().map(|e| e.seq()).collect::<Vec<_>>(), a);
        q.settle(l, Settlement::delivered().retry(a[1])).unwrap();
        let d = accepted_seq(&block_on(q.enqueue_durable("t", b"d".to_vec())).unwrap());
        // The rest of A and B.
        let l = q.lease("t", 3).unwrap().unwrap();
        let seqs: Vec<u64> = l.events().iter().map(|e| e.seq()).collect();
        assert_eq!(seqs, vec![a[1], b[0], b[1]]);
        q.settle(l, Settlement::delivered().retry(a[1]).retry(b[1]))
            .unwrap();
        assert_eq!(
            lease_order(&q, "t"),
            vec![a[1], b[1], d],
            "before any rebuild"
        );
        q.close();
        d
    };
    // Session 3: generation 1 holds no chunk and is deleted.
    {
        let q = Queue::open(dir.path(), cfg()).unwrap();
        assert_eq!(lease_order(&q, "t"), vec![a[1], b[1], d], "after a reopen");
        q.close();
    }
    let files = body_files(dir.path());
    // sled lost: rebuild from the body files.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let q = Queue::open(dir.path(), cfg()).unwrap();
    let order = lease_order(&q, "t");
    assert!(a[1] < b[1] && b[1] < d);
    assert_eq!(
        order,
        vec![a[1], b[1], d],
        "durable events leased in seq order after a rebuild (body files {files:?})"
    );
    q.close();
}

/// A rebuild writes the live events of split entries again sorted by seq,
/// packed up to `chunk_max_events` a record, keyed by the first: the record
/// holds a durable event above a whole durable entry keyed between, which
/// is leased after it.
#[test]
fn durable_events_are_leased_in_seq_order_after_a_rebuild_that_splits_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = || QueueConfig {
        chunk_max_events: 16,
        commit_interval: Duration::from_millis(5),
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), cfg()).unwrap();
    let e1: Vec<u64> = block_on(q.enqueue_batch_durable("t", [b"1".to_vec(), b"2".to_vec()]))
        .unwrap()
        .iter()
        .map(accepted_seq)
        .collect();
    let e2 = accepted_seq(&block_on(q.enqueue_durable("t", b"3".to_vec())).unwrap());
    let e3: Vec<u64> = block_on(q.enqueue_batch_durable("t", [b"4".to_vec(), b"5".to_vec()]))
        .unwrap()
        .iter()
        .map(accepted_seq)
        .collect();
    let l = q.lease("t", 16).unwrap().unwrap();
    assert_eq!(l.len(), 5);
    q.settle(
        l,
        Settlement::delivered()
            .dead(e1[0], "bad")
            .retry(e1[1])
            .retry(e2)
            .dead(e3[0], "bad")
            .retry(e3[1]),
    )
    .unwrap();
    assert_eq!(
        lease_order(&q, "t"),
        vec![e1[1], e2, e3[1]],
        "before the rebuild"
    );
    block_on(q.sync()).unwrap();
    q.close();
    drop(q);
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let q = Queue::open(dir.path(), cfg()).unwrap();
    let order = lease_order(&q, "t");
    assert_eq!(
        order,
        vec![e1[1], e2, e3[1]],
        "durable events leased in seq order after a rebuild"
    );
    q.close();
}

/// The rule that keeps late chunks from taking followers leaves one-kind
/// streams in full chunks.
#[test]
fn one_kind_streams_still_coalesce_into_full_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = QueueConfig {
        chunk_max_events: 4,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), cfg).unwrap();
    for i in 0..8u8 {
        accepted_seq(&block_on(q.enqueue_durable("d", vec![i])).unwrap());
    }
    for i in 0..8u8 {
        accepted_seq(&q.enqueue("b", vec![i]).unwrap());
    }
    block_on(q.sync()).unwrap();
    for t in ["d", "b"] {
        let mut sizes = Vec::new();
        while let Some(l) = q.lease(t, 1).unwrap() {
            sizes.push(l.len());
            q.ack(l).unwrap();
        }
        assert_eq!(sizes, vec![4, 4], "topic {t}");
    }
    q.close();
}

/// The newest body file of `topic`.
fn newest_body_file(dir: &Path, topic: &str) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("bodies").join(topic))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| {
            p.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u32>().ok())
        })
        .unwrap()
}

/// Flips the 16 bytes at `offset` of `file` (an entry's header there).
fn damage_at(file: &Path, offset: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    assert!(
        bytes.len() > offset + 16,
        "{} holds an entry at {offset}",
        file.display()
    );
    for b in &mut bytes[offset..offset + 16] {
        *b ^= 0xff;
    }
    std::fs::write(file, bytes).unwrap();
}

/// Opens `dir`, enqueues one durable event to topic c and closes: its seq.
fn seq_of_a_new_event(dir: &Path, cfg: QueueConfig) -> u64 {
    let q = Queue::open(dir, cfg).unwrap();
    let seq = accepted_seq(&block_on(q.enqueue_durable("c", "{\"c\":1}")).unwrap());
    q.close();
    seq
}

/// Copies what a `kill -9` now would leave of `from`'s body files and
/// identity into `to` (sled's files are left behind: lost).
/// Bytes of `topic`'s newest body file in `dir`: where its next entry goes.
fn body_end(dir: &Path, topic: &str) -> usize {
    std::fs::metadata(newest_body_file(dir, topic))
        .unwrap()
        .len() as usize
}

/// `q`'s store at `dir` as a kill leaves it, copied to `crashed` (then `q`
/// closes), with `topic`'s newest body file damaged at `at`.
fn crash_with_damage(q: Queue, dir: &Path, crashed: &Path, topic: &str, at: usize) {
    crash_copy(dir, crashed);
    q.close();
    damage_at(&newest_body_file(crashed, topic), at);
}

fn crash_copy(from: &Path, to: &Path) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let (src, dst) = (e.path(), to.join(e.file_name()));
            if e.file_type().unwrap().is_dir() {
                copy(&src, &dst);
            } else {
                std::fs::copy(&src, &dst).unwrap();
            }
        }
    }
    copy(&from.join("bodies"), &to.join("bodies"));
    std::fs::copy(from.join("evspool.id"), to.join("evspool.id")).unwrap();
}

#[test]
fn the_seqs_of_a_damaged_last_entry_are_never_handed_out_again_after_sled_is_lost() {
    // Found by the fault simulation (seed 1796653667): "id reused: seq 154
    // … its entry damaged". The store's last write before a crash is topic
    // b's entry; with its header damaged a scan takes it for a torn tail.
    for fsync in [false, true] {
        let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = || QueueConfig {
            fsync,
            ..QueueConfig::default()
        };
        let last = damaged_tail_store(dir.path(), crashed.path(), &cfg);
        let next = seq_of_a_new_event(crashed.path(), cfg());
        assert!(
            next > last,
            "fsync {fsync}: seq {last}, held by the damaged entry, was handed out again as {next}"
        );
    }
}

// --- review of b92e7bf (S6: a damaged last entry's seqs stay used) ---

/// A store whose topic b's last entry (the store's last write) is damaged
/// and whose sled was lost; returns the seq that entry held.
fn damaged_tail_store(dir: &Path, crashed: &Path, cfg: &dyn Fn() -> QueueConfig) -> u64 {
    let q = Queue::open(dir, cfg()).unwrap();
    for i in 0..3 {
        let _ = block_on(q.enqueue_durable("a", format!("{{\"a\":{i}}}"))).unwrap();
    }
    let _ = block_on(q.enqueue_durable("b", "{\"b\":1}")).unwrap();
    let at = body_end(dir, "b");
    let last = accepted_seq(&block_on(q.enqueue_durable("b", "{\"b\":2}")).unwrap());
    crash_with_damage(q, dir, crashed, "b", at);
    last
}

#[test]
fn a_damaged_last_entry_s_seqs_are_not_handed_out_again_after_a_rebuild_that_wrote_nothing_and_a_reopen()
 {
    // Before its review the tail's skip lived in memory only: sled's
    // per-topic high-water was written before it, and no file named it. An
    // open that appends nothing (`evspool verify`, a daemon stopped before
    // its first event) leaves sled's checkpoint past the damaged file, so
    // the next open (with sled) never counts the tail again: the skip must
    // be the recorded high-water.
    let mut reused = Vec::new();
    for fsync in [false, true] {
        let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cfg = || QueueConfig {
            fsync,
            ..QueueConfig::default()
        };
        let last = damaged_tail_store(dir.path(), crashed.path(), &cfg);
        let q = Queue::open(crashed.path(), cfg()).unwrap();
        q.close();
        let next = seq_of_a_new_event(crashed.path(), cfg());
        if next <= last {
            reused.push(format!(
                "fsync {fsync}: seq {last}, held by the damaged entry, was handed out again as {next} at the open after the rebuild"
            ));
        }
    }
    assert!(reused.is_empty(), "{}", reused.join("; "));
}

#[test]
fn a_damaged_durable_entry_followed_by_a_buffered_chunk_of_lower_seqs_keeps_its_seq_after_sled_is_lost()
 {
    // A buffered event takes its seq at enqueue, a durable one at its
    // write: the durable entry (seq 3) lands in b's file before the
    // buffered chunk (seq 2). Damaged, it is followed by a valid entry, so
    // it is quarantined as damage (RB3), not a tail, and the file's header
    // (made for seq 1) names only seq 1: S6 counts the newest file's
    // damaged spans too.
    let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = || QueueConfig {
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), cfg()).unwrap();
    let _ = block_on(q.enqueue_durable("b", "{\"b\":0}")).unwrap();
    let buffered = accepted_seq(&q.enqueue("b", "{\"b\":1}").unwrap());
    let at = body_end(dir.path(), "b");
    let durable = accepted_seq(&block_on(q.enqueue_durable("b", "{\"b\":2}")).unwrap());
    assert!(durable > buffered);
    block_on(q.sync()).unwrap();
    crash_with_damage(q, dir.path(), crashed.path(), "b", at);
    let next = seq_of_a_new_event(crashed.path(), cfg());
    assert!(
        next > durable,
        "seq {durable}, held by the damaged durable entry (followed by the chunk of seq {buffered}), was handed out again as {next}"
    );
}

#[test]
fn a_damaged_last_entry_whose_payload_holds_a_block_of_zeros_keeps_all_its_seqs_after_sled_is_lost()
{
    // A block of zeros inside the damaged entry's payload must not end the
    // count (the first `tail_bound` stopped at the first all-zero 4 KiB
    // block): the many small events after it in the same entry count too.
    let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = || QueueConfig {
        chunk_max_events: 1000,
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), cfg()).unwrap();
    let _ = block_on(q.enqueue_durable("b", "{\"b\":1}")).unwrap();
    let at = body_end(dir.path(), "b");
    let mut batch: Vec<Vec<u8>> = vec![vec![0u8; 12 * 1024]];
    batch.extend((0..200).map(|_| b"x".to_vec()));
    let got = block_on(q.enqueue_batch_durable("b", batch)).unwrap();
    let last = got.iter().map(accepted_seq).max().unwrap();
    crash_with_damage(q, dir.path(), crashed.path(), "b", at);
    let next = seq_of_a_new_event(crashed.path(), cfg());
    assert!(
        next > last,
        "seq {last}, held by the damaged entry, was handed out again as {next}"
    );
}

#[test]
fn a_damaged_last_entry_s_seqs_are_not_handed_out_again_after_two_rebuilds_when_the_first_rewrote_a_split_entry()
 {
    // The rebuild writes a split entry's live events again into a new
    // generation of the same topic, so the damaged file is no longer the
    // topic's newest and the next rebuild counts no tail: the new file's
    // header must name the seqs after the skip (`adopt_model` sets
    // `bodies.next_seq` with `unknown_tail` added).
    let (dir, crashed) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = || QueueConfig {
        chunk_max_events: 100,
        commit_interval: Duration::from_secs(60),
        ..QueueConfig::default()
    };
    let q = Queue::open(dir.path(), cfg()).unwrap();
    // One entry of 4 events; the first dead-lettered, the rest acked.
    let got =
        block_on(q.enqueue_batch_durable("b", (0..4).map(|i| format!("{{\"b\":{i}}}")))).unwrap();
    let first = accepted_seq(&got[0]);
    block_on(q.sync()).unwrap();
    let l = q.lease("b", 10).unwrap().unwrap();
    assert_eq!(l.len(), 4);
    let _ = q
        .settle(l, Settlement::delivered().dead(first, "bad"))
        .unwrap();
    // An event still queued keeps the damaged file from being garbage.
    let _ = block_on(q.enqueue_durable("b", "{\"b\":8}")).unwrap();
    block_on(q.sync()).unwrap();
    // The store's last write: b's entry, damaged below.
    let at = body_end(dir.path(), "b");
    let last = accepted_seq(&block_on(q.enqueue_durable("b", "{\"b\":9}")).unwrap());
    let at = {
        // The dead letter's trace is written in front of the entry.
        let bytes = std::fs::read(newest_body_file(dir.path(), "b")).unwrap();
        let mut off = at;
        loop {
            let seq = u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap());
            let len = u32::from_le_bytes(bytes[off + 8..off + 12].try_into().unwrap()) as usize;
            if seq == last {
                break off;
            }
            off += 16 + len;
        }
    };
    crash_with_damage(q, dir.path(), crashed.path(), "b", at);
    // First rebuild: appends nothing but the rewritten events.
    let q = Queue::open(crashed.path(), cfg()).unwrap();
    let gens = std::fs::read_dir(crashed.path().join("bodies").join("b"))
        .unwrap()
        .count();
    q.close();
    assert!(
        gens > 1,
        "the rebuild rewrote a split entry into a new generation"
    );
    lose_sled(crashed.path());
    let next = seq_of_a_new_event(crashed.path(), cfg());
    assert!(
        next > last,
        "seq {last}, held by the damaged entry, was handed out again as {next} after a second rebuild"
    );
}
