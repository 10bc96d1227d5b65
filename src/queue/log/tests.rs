//! Tests of a topic's log.

use super::segment::OpenFiles;
use super::*;
use crate::queue::ceiling::Totals;
use crate::record::{ChunkIndex, StoredEvent};
use bytes::Bytes;

fn bodies(dir: &std::path::Path, fsync: bool) -> Bodies {
    Bodies::new(
        dir.join("bodies"),
        OpenFiles::new(16),
        Arc::from("0123456789ab"),
        fsync,
    )
}

/// A fresh log of topic `t` in a temporary store (kept while the
/// directory is).
fn fixture(fsync: bool) -> (tempfile::TempDir, Bodies, TopicLog, Totals) {
    let dir = tempfile::tempdir().unwrap();
    let b = bodies(dir.path(), fsync);
    let log = TopicLog::new(
        crate::queue::topic::Topic::new("t").unwrap(),
        BTreeSet::new(),
        1,
    );
    (dir, b, log, Totals::default())
}

fn yes(t: &Totals, e: u64, b: u64) -> bool {
    t.add(e, b);
    true
}

#[test]
fn a_durable_append_takes_seqs_in_order_and_waits_for_the_committer() {
    let (_dir, b, log, totals) = fixture(true);
    let payloads: Vec<Bytes> = (0..5).map(|i| Bytes::from(format!("e{i}"))).collect();
    let done = log
        .append_events(&b, &payloads, 7, (2, 1 << 20), &totals, &yes)
        .unwrap()
        .unwrap();
    let (first, end) = (done.first, done.end);
    assert!(done.first_waiting);
    assert_eq!(done.waiting, 5);
    assert_eq!(first, 1);
    assert_eq!(totals.get(), (5, 10));
    let st = log.lock();
    assert_eq!(st.unindexed.len(), 3, "chunks of at most 2 events");
    assert_eq!(
        st.unindexed
            .iter()
            .map(|a| (a.first_seq, a.index.last_seq))
            .collect::<Vec<_>>(),
        vec![(1, 2), (3, 4), (5, 5)]
    );
    assert_eq!(end, (1, st.end));
    assert_eq!(st.inflight.get(&1), Some(&3));
    assert_eq!(st.checkpoint(), (1, st.unindexed[0].index.body_offset));
    drop(st);
    assert_eq!(b.next_seq.load(Ordering::Relaxed), 6);
    log.sync().unwrap();
    assert_eq!(log.sync_marks().borrow().pos, end);
}

fn file_len(b: &Bodies, g: u32) -> u64 {
    std::fs::metadata(b.path(&crate::queue::topic::Topic::new("t").unwrap(), g))
        .unwrap()
        .len()
}

/// A durable append of 50 events of 300 bytes (16 KB).
fn append_50(log: &TopicLog, b: &Bodies, totals: &Totals) -> DurableAppend {
    let payloads: Vec<Bytes> = (0..50).map(|_| Bytes::from(vec![b'x'; 300])).collect();
    log.append_events(b, &payloads, 7, (50, 1 << 20), totals, &yes)
        .unwrap()
        .unwrap()
}

#[test]
fn with_fsync_a_generation_is_written_ahead_with_zeros_that_close_cuts() {
    let (_dir, b, log, totals) = fixture(true);
    let mut lens = Vec::new();
    for _ in 0..40 {
        let done = append_50(&log, &b, &totals);
        log.sync().unwrap();
        let st = log.lock();
        assert_eq!(done.end, (1, st.end));
        let len = file_len(&b, 1);
        lens.push(len);
        assert_eq!(st.allocated, len, "allocated is the file's length");
        assert_eq!(
            b.disk_bytes.load(Ordering::Relaxed),
            len,
            "disk usage counts the zeros"
        );
        if st.written < WRITE_AHEAD_MIN {
            assert_eq!(len, st.end, "small generations are not written ahead");
        } else {
            assert!(len >= st.end, "{len} < {}", st.end);
            assert!(len - st.end <= WRITE_AHEAD_MAX + 4096);
        }
    }
    let (end, len) = (log.lock().end, file_len(&b, 1));
    assert!(
        len > end,
        "a 600 KB generation is written ahead ({len} = {end})"
    );
    // The zeros are not entries.
    let seg = log.segment(&b, 1).unwrap();
    let scanned = seg.scan(0).unwrap().entries;
    assert_eq!(scanned.len(), 40);
    assert_eq!(scanned.last().map(|e| e.offset + e.span), Some(end));
    // Most appends land in zeros written ahead and leave the size alone.
    let grown = lens.windows(2).filter(|w| w[1] > w[0]).count();
    assert!(
        (1..=12).contains(&grown),
        "the file grew {grown} times in 40 appends"
    );
    log.finish(&b);
    assert_eq!(file_len(&b, 1), end, "close cuts the zeros");
    assert_eq!(b.disk_bytes.load(Ordering::Relaxed), end);
}

#[test]
fn without_fsync_nothing_is_written_ahead() {
    let (_dir, b, log, totals) = fixture(false);
    for _ in 0..40 {
        append_50(&log, &b, &totals);
        assert_eq!(file_len(&b, 1), log.lock().end);
    }
}

#[test]
fn a_rotation_cuts_the_zeros_of_the_generation_left_behind() {
    let (_dir, b, log, totals) = fixture(true);
    for _ in 0..10 {
        append_50(&log, &b, &totals);
    }
    let end1 = log.lock().end;
    assert!(file_len(&b, 1) > end1);
    log.lock().rotate = true;
    append_50(&log, &b, &totals);
    assert_eq!(log.lock().generation, 2);
    assert_eq!(file_len(&b, 1), end1, "generation 1 ends at its last entry");
    assert_eq!(b.disk_bytes.load(Ordering::Relaxed), end1 + file_len(&b, 2));
}

#[test]
fn a_refused_reservation_writes_nothing_and_takes_no_seq() {
    let (_dir, b, log, totals) = fixture(false);
    let got = log
        .append_events(
            &b,
            &[Bytes::from_static(b"x")],
            7,
            (50, 1 << 20),
            &totals,
            &|_, _, _| false,
        )
        .unwrap();
    assert!(got.is_none());
    assert_eq!(b.next_seq.load(Ordering::Relaxed), 1);
    assert!(log.lock().unindexed.is_empty());
}

#[test]
fn a_rotation_moves_appends_to_a_new_generation_and_the_old_one_stays_in_flight() {
    let (_dir, b, log, _) = fixture(false);
    let event = [StoredEvent {
        seq: 1,
        enqueued_at_ms: 0,
        payload: b"x",
    }];
    let rec = Record::new(&event, b"raw");
    let p1 = log
        .append(
            &b,
            Admit::Producer,
            std::slice::from_ref(&rec),
            EntryKind::Rewrite,
        )
        .unwrap();
    log.lock().rotate = true;
    log.lock().pending.add(1, 1);
    let p2 = log
        .append(
            &b,
            Admit::Committer,
            std::slice::from_ref(&rec),
            EntryKind::New,
        )
        .unwrap();
    assert_eq!(log.lock().pending, Usage::default(), "moved to unindexed");
    assert_eq!((p1[0].generation, p2[0].generation), (1, 2));
    let mut st = log.lock();
    assert_eq!(
        st.inflight.get(&1),
        Some(&1),
        "generation 1 still has an entry in flight"
    );
    st.settled(1, 1);
    assert!(!st.inflight.contains_key(&1));
    assert_eq!(
        st.unindexed.len(),
        1,
        "only the new entry waits for the committer"
    );
    assert_eq!(st.checkpoint(), (2, p2[0].offset));
}

fn a(generation: u32, offset: u64, span: u64, seq: u64, events: u32) -> Appended {
    Appended {
        first_seq: seq,
        index: ChunkIndex {
            events,
            bytes: events as u64 * 10,
            last_seq: seq + events as u64 - 1,
            first_enqueued_ms: seq,
            body_gen: 0,
            body_offset: 0,
            body_len: 0,
        }
        .placed(generation, offset, span as u32),
    }
}

#[test]
fn touching_entries_become_one_chunk_up_to_the_limits() {
    let entries = [
        a(1, 40, 30, 1, 1),
        a(1, 70, 30, 2, 1),
        a(1, 100, 30, 3, 1),
        // A gap (another entry lies between): a new chunk.
        a(1, 200, 30, 4, 1),
        // Seqs going back (a buffered chunk committed late): a new chunk.
        a(1, 230, 30, 0, 1),
        // Another generation: a new chunk.
        a(2, 40, 30, 9, 1),
    ];
    let chunks = coalesce(&entries, 0, 50, 1 << 20);
    let keys: Vec<(u64, u32, u64, u32)> = chunks
        .iter()
        .map(|(k, c)| (*k, c.events, c.body_offset, c.body_len))
        .collect();
    assert_eq!(
        keys,
        vec![
            (1, 3, 40, 90),
            (4, 1, 200, 30),
            (0, 1, 230, 30),
            (9, 1, 40, 30)
        ]
    );
    let small = coalesce(&entries[..3], 0, 2, 1 << 20);
    assert_eq!(small.len(), 2, "at most 2 events a chunk");
    assert_eq!(small[0].1.last_seq, 2);
}

#[test]
fn a_chunk_starting_below_a_seq_logged_before_it_takes_no_followers() {
    // Durable 8, then a buffered 5 committed after it, then durable 9 and 10:
    // 9 joining 5's chunk would be leased ahead of 8.
    let entries = [
        a(1, 40, 30, 8, 1),
        a(1, 70, 30, 5, 1),
        a(1, 100, 30, 9, 1),
        a(1, 130, 30, 10, 1),
    ];
    let keys = |entries: &[Appended], floor: u64| -> Vec<u64> {
        coalesce(entries, floor, 50, 1 << 20)
            .iter()
            .map(|(k, _)| *k)
            .collect()
    };
    assert_eq!(
        keys(&entries, 0),
        vec![8, 5, 9],
        "9 and 10 form a chunk of their own"
    );
    // The same from the index's high-water: 5 is late against seq 8 indexed earlier.
    assert_eq!(keys(&entries[1..], 9), vec![5, 9]);
    // Not late: the whole run joins.
    assert_eq!(keys(&entries[2..], 9), vec![9]);
}

#[test]
fn a_span_read_returns_exactly_the_files_bytes_at_every_offset_and_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("1.seg");
    let data: Vec<u8> = (0..5_000u32).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let files = super::segment::OpenFiles::new(4);
    let seg = super::segment::Segment::open(&files, &path).unwrap();
    for offset in [0u64, 1, 39, 40, 1_000, 4_095, 4_096, 4_999, 5_000, 6_000] {
        for len in [0u64, 1, 15, 16, 17, 100, 4_096, 4_961, 5_000, 9_000] {
            let got = seg.read_span(offset, len).unwrap();
            let from = (offset as usize).min(data.len());
            let to = ((offset + len) as usize).min(data.len());
            assert_eq!(&got[..], &data[from..to], "offset {offset} len {len}");
        }
    }
    // A file cut short after open: the read is short, nothing past the end.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(100)
        .unwrap();
    let got = seg.read_span(50, 200).unwrap();
    assert_eq!(&got[..], &data[50..100]);
}

#[test]
fn the_stable_end_follows_appends_and_covers_a_generation_the_log_moved_on_from() {
    let (_dir, b, log, totals) = fixture(true);
    let first = log.signals.current.load(Ordering::Acquire);
    assert_eq!(log.signals.stable_end(first), 0, "nothing written yet");
    let payloads: Vec<Bytes> = (0..3).map(|i| Bytes::from(format!("e{i}"))).collect();
    log.append_events(&b, &payloads, 7, (50, 1 << 20), &totals, &yes)
        .unwrap()
        .unwrap();
    let end = log.lock().end;
    assert!(end > segment::HEADER_LEN);
    assert_eq!(log.signals.stable_end(first), end);
    log.lock().rotate = true;
    log.append_events(&b, &payloads, 7, (50, 1 << 20), &totals, &yes)
        .unwrap()
        .unwrap();
    let (next, end) = {
        let st = log.lock();
        (st.generation, st.end)
    };
    assert!(next > first);
    assert_eq!(
        log.signals.stable_end(first),
        u64::MAX,
        "an older generation never changes"
    );
    assert_eq!(log.signals.stable_end(next), end);
    assert_eq!(
        log.signals.stable_end(next + 1),
        0,
        "no such generation yet"
    );
}
