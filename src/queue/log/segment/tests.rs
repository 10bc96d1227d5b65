//! Tests of a body file: its header, scans, span reads and the descriptor budget.

use super::*;
use crate::queue::log::entry::EntryKind;
use crate::record::{StoredEvent, encode_chunk};

fn header() -> SegmentHeader {
    SegmentHeader {
        instance: "0123456789ab".into(),
        next_seq: 77,
        salt: 0,
    }
}

fn rec(seq: u64) -> Vec<u8> {
    encode_chunk(&[StoredEvent {
        seq,
        enqueued_at_ms: 1,
        payload: b"record-bytes",
    }])
}

fn entry(seq: u64, kind: EntryKind) -> Vec<u8> {
    let r = rec(seq);
    let mut out = entry::header(seq, r.len() as u32, kind, 0).to_vec();
    out.extend_from_slice(&r);
    out
}

#[test]
fn a_new_file_carries_its_header_and_entries_scan_back() {
    let dir = tempfile::tempdir().unwrap();
    let files = OpenFiles::new(8);
    let path = dir.path().join("t/1.seg");
    let seg = Segment::create(&files, &path, header(), true).unwrap();
    let (e1, e2) = (entry(5, EntryKind::New), entry(9, EntryKind::Rewrite));
    seg.write_at(HEADER_LEN, &[&e1, &e2]).unwrap();
    let again = Segment::open(&files, &path).unwrap();
    assert_eq!(again.header(), Some(&header()));
    assert_eq!(again.layout(), Layout::CHECKED);
    let scan = again.scan(0).unwrap();
    let entries = scan.entries;
    assert_eq!(entries.len(), 2);
    assert_eq!((entries[0].seq, entries[0].kind), (5, EntryKind::New));
    assert_eq!((entries[1].seq, entries[1].kind), (9, EntryKind::Rewrite));
    let want = entries[0].span + entries[1].span;
    let span = again.read_span(entries[0].offset, want).unwrap();
    let parts = again.parse_span(&span, entries[0].offset, want);
    let records: Vec<Bytes> = parts
        .into_iter()
        .map(|p| match p {
            Part::Entry { record, .. } => record,
            Part::Damaged { .. } => panic!("damaged"),
        })
        .collect();
    assert_eq!(records, vec![Bytes::from(rec(5)), Bytes::from(rec(9))]);
}

#[test]
fn a_torn_tail_ends_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let files = OpenFiles::new(8);
    let path = dir.path().join("1.seg");
    let seg = Segment::create(&files, &path, header(), false).unwrap();
    let (e1, e2) = (entry(1, EntryKind::New), entry(2, EntryKind::New));
    seg.write_at(HEADER_LEN, &[&e1, &e2[..e2.len() - 3]])
        .unwrap();
    let scan = seg.scan(0).unwrap();
    assert_eq!(scan.entries.len(), 1);
    assert_eq!(scan.entries[0].seq, 1);
    assert!(scan.damaged.is_empty(), "a tail is not damage");
    assert_eq!(scan.end, HEADER_LEN + e1.len() as u64);
}

#[test]
fn zeros_written_ahead_end_the_scan() {
    let dir = tempfile::tempdir().unwrap();
    let files = OpenFiles::new(8);
    let path = dir.path().join("1.seg");
    let seg = Segment::create(&files, &path, header(), false).unwrap();
    let e1 = entry(1, EntryKind::New);
    seg.write_at(HEADER_LEN, &[&e1, &[0u8; 8192]]).unwrap();
    let scan = seg.scan(0).unwrap();
    assert_eq!(scan.entries.len(), 1, "{scan:?}");
    assert_eq!(
        (scan.entries[0].seq, scan.entries[0].span),
        (1, e1.len() as u64)
    );
    assert_eq!(seg.len().unwrap(), HEADER_LEN + e1.len() as u64 + 8192);
}

#[test]
fn a_damaged_entry_in_the_middle_is_skipped_not_the_end_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = OpenFiles::new(8);
    let path = dir.path().join("1.seg");
    let seg = Segment::create(&files, &path, header(), false).unwrap();
    let es: Vec<Vec<u8>> = (1..=4).map(|s| entry(s, EntryKind::New)).collect();
    let parts: Vec<&[u8]> = es.iter().map(|e| e.as_slice()).collect();
    seg.write_at(HEADER_LEN, &parts).unwrap();
    // A flipped length byte in entry 2's header.
    let mut bytes = std::fs::read(&path).unwrap();
    let at = HEADER_LEN as usize + es[0].len() + 9;
    bytes[at] ^= 0x01;
    std::fs::write(&path, bytes).unwrap();
    let seg = Segment::open(&files, &path).unwrap();
    let scan = seg.scan(0).unwrap();
    let seqs: Vec<u64> = scan.entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 3, 4]);
    assert_eq!(
        scan.damaged,
        vec![(HEADER_LEN + es[0].len() as u64, es[1].len() as u64)]
    );
}

#[test]
fn a_damaged_file_header_costs_the_header_not_the_entries() {
    let dir = tempfile::tempdir().unwrap();
    let files = OpenFiles::new(8);
    let path = dir.path().join("1.seg");
    let seg = Segment::create(&files, &path, header(), false).unwrap();
    let (e1, e2) = (entry(1, EntryKind::New), entry(2, EntryKind::New));
    seg.write_at(HEADER_LEN, &[&e1, &e2]).unwrap();
    drop(seg);
    for at in [0usize, 3, 12, 30, 38] {
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 0xff;
        let damaged = dir.path().join(format!("d{at}.seg"));
        std::fs::write(&damaged, bytes).unwrap();
        let seg = Segment::open(&files, &damaged).unwrap();
        assert!(seg.header().is_none(), "byte {at}");
        let seqs: Vec<u64> = seg.scan(0).unwrap().entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2], "byte {at}");
    }
}

#[test]
fn descriptors_stay_within_the_budget_and_files_reopen_on_use() {
    let dir = tempfile::tempdir().unwrap();
    let files = OpenFiles::new(4);
    let segs: Vec<Arc<Segment>> = (0..20)
        .map(|i| {
            Segment::create(
                &files,
                &dir.path().join(format!("{i}.seg")),
                header(),
                false,
            )
            .unwrap()
        })
        .collect();
    assert!(files.open_count() <= 4, "{} open", files.open_count());
    for s in &segs {
        assert_eq!(s.len().unwrap(), HEADER_LEN);
    }
    assert!(files.open_count() <= 5, "{} open", files.open_count());
    drop(segs);
    assert_eq!(files.open_count(), 0);
}

#[test]
fn a_version_2_file_has_no_header_and_12_byte_entries() {
    let dir = tempfile::tempdir().unwrap();
    let files = OpenFiles::new(4);
    let path = dir.path().join("1.seg");
    let r = rec(3);
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&3u64.to_le_bytes());
    bytes.extend_from_slice(&(r.len() as u32).to_le_bytes());
    bytes.extend_from_slice(&r);
    std::fs::write(&path, &bytes).unwrap();
    let seg = Segment::open(&files, &path).unwrap();
    assert_eq!(seg.layout(), Layout::V2);
    assert!(seg.header().is_none());
    let e = seg.scan(0).unwrap().entries;
    let span = 12 + r.len() as u64;
    assert_eq!((e.len(), e[0].offset, e[0].span), (1, 0, span));
    let bytes = seg.read_span(0, span).unwrap();
    let parts = seg.parse_span(&bytes, 0, span);
    assert!(matches!(&parts[..], [Part::Entry { record, .. }] if record.as_ref() == r.as_slice()));
}
