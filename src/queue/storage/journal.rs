//! The index journal: every write to sled's index tree, appended to a file
//! before sled sees it, so that sled can take the writes late and in large
//! batches without a kill losing any.
//!
//! Why. Acks must survive a kill (a restart re-sends at most what was in
//! flight: issue 24). sled keeps applied writes in an in-process buffer
//! until it writes them out, and a kill loses that buffer. Before the
//! journal the committer applied the queued index writes and flushed sled
//! every 2 ms while settlements came in: each `apply_batch` rolls sled's
//! I/O buffer (a write handed to its I/O threads) and each flush adds a
//! `sync_file_range`; in the forwarding profile those cost ~17 % of the
//! CPU. Now an apply is one `pwrite` of the batches to this file (the page
//! cache keeps it across a kill), and sled applies them merged: after 200 ms,
//! before any read of the index and at every flush, and 8,192 pending writes
//! are applied and flushed (`PENDING_AGE`, `PENDING_WRITES` in `pending.rs`);
//! a flush empties the journal.
//!
//! # Format (`<sled dir>/evspool.journal`)
//!
//! ```text
//! header   "evsjrnl1"  u64 LE epoch
//! record   u32 LE payload length | u32 LE crc32(payload) | payload
//! payload  u64 LE lsn | u32 LE writes | writes × (u32 LE key length | key |
//!          u32 LE value length, u32::MAX for a removal | value)
//! ```
//!
//! # Invariants
//!
//! - J1 (write ahead): a batch is appended here before sled applies it, and
//!   sled applies it with its lsn under [`APPLIED_KEY`] in the same atomic
//!   batch; lsns are handed out in order, one per batch, by the one writer
//!   (the journal's lock).
//! - J2 (replay a contiguous suffix only): an open replays, in order, the
//!   records whose lsns run on from sled's applied lsn without a gap, and
//!   stops at the first damaged or missing record. A gap means sled lost
//!   writes the journal no longer holds (a power cut after a reset): sled's
//!   state is then an older consistent prefix, and applying later records on
//!   it could mix states, so nothing more is applied.
//! - J3 (bound to its sled): the header names the epoch recorded in sled's
//!   meta tree when that sled was created; a journal of another epoch (sled's
//!   files lost and rebuilt, or replaced by a compaction) is never replayed.
//! - J4 (idempotent): every write is a blind put or remove of one key, so a
//!   record sled already applied in part (a crash between two batches of one
//!   apply) is applied again whole with the same result.
//! - J5 (never required): the journal only shortens what a kill takes back.
//!   A failed append is not fatal: sled applies the batch and is flushed at
//!   once, as before the journal, and the record's lsn goes missing from the
//!   journal, which J2 treats as its end. A failed reset leaves records
//!   sled already holds, which J2 skips. An open that cannot read the
//!   journal replays nothing (sled's state is an older consistent one: what
//!   it lacks is delivered again) and cuts the file to a new header before
//!   any record is appended; one that cannot open the file runs without a
//!   journal, flushing sled after every apply.
//! - J6 (reset only what sled holds): the journal is emptied only when sled
//!   has applied every pending batch and flushed since, and no lsn was
//!   handed out in between (checked under the journal's lock; sled's flush
//!   itself runs outside it), so no record sled has not flushed is cut.
//! - J7 (sled late, never stale to a reader): journaled batches wait in
//!   memory (`Store`'s pending list, in lsn order) and reach sled merged at
//!   record boundaries, with the lsn of the last record merged (J1). Every
//!   read of the index tree (`load`, `dead_range`, a copy) and every flush
//!   applies them first; at most `PENDING_WRITES` writes or `PENDING_AGE`
//!   wait. A failed sled apply keeps the rest pending and is reported to the
//!   caller (the store fails closed, as for any index write).
//! - J8 (one order): a write that bypasses the journal (meta, quarantine,
//!   a legacy tree dropped by a migration) first applies the pending
//!   batches, so sled's own log keeps every write in the order it was made;
//!   a quarantine record, which a journaled removal follows, is also
//!   flushed and synced at once, so no kill or power cut keeps the removal
//!   without it.
//! - J9 (only this format's stores): an open replays only into a store
//!   whose `meta.format` is this build's. An older one may have been
//!   written since by a build that knows no journal (this build's first
//!   open of it crashed before raising its format); the journal's records
//!   are then stale, and those of that first open (its repairs) the next
//!   open makes again. Either way the next lsn, past every record read, is
//!   recorded in sled before the journal is emptied, so records written
//!   from then on run on from sled's applied lsn (J2).

use crate::queue::io;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The journal's file name, inside sled's directory (it moves with sled's
/// files when they are moved aside or swapped by a compaction).
pub(crate) const FILE: &str = "evspool.journal";

/// The index-tree key of the lsn of the last batch sled applied (no topic
/// key starts with 0xFF: topic names are UTF-8; no NUL, so `parse_key`
/// skips it).
pub(crate) const APPLIED_KEY: &[u8] = b"\xffjournal.applied";

/// The meta-tree key of the epoch the journal is bound to (J3).
pub(crate) const EPOCH_KEY: &[u8] = b"journal.epoch";

/// Journal bytes after which the store flushes sled and empties the journal.
pub(crate) const RESET_BYTES: u64 = 4 << 20;

const MAGIC: &[u8; 8] = b"evsjrnl1";
/// Bytes of records gathered before a write (an append of more is several).
const WRITE_BYTES: usize = 256 << 10;
const HEADER: u64 = 16;
const REMOVED: u32 = u32::MAX;

/// One index-tree write: a key and its new value, `None` to remove it.
pub(crate) type Write = (Vec<u8>, Option<Vec<u8>>);

/// A record read back for replay.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Replay {
    pub(crate) lsn: u64,
    pub(crate) writes: Vec<Write>,
}

/// The open journal.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    epoch: u64,
    /// Where the next record goes; bytes past it are a failed append's.
    end: u64,
    /// The lsn the next batch gets.
    next_lsn: u64,
    /// Whether the file starts with this epoch's header; records are only
    /// ever appended after one.
    header_ok: bool,
    buf: Vec<u8>,
}

impl Journal {
    /// Opens (or creates) the journal in sled's directory `dir` for a sled at
    /// `epoch` that applied every batch up to `applied`; returns it with the
    /// records to replay (J2, J3). The caller applies them, flushes sled and
    /// calls [`Journal::reset`].
    pub(crate) fn open(
        dir: &Path,
        epoch: u64,
        applied: u64,
    ) -> std::io::Result<(Self, Vec<Replay>)> {
        let path = dir.join(FILE);
        let (file, bytes) = match io::open_rw(&path) {
            Ok(f) => {
                let read =
                    io::len(&f, &path).and_then(|len| io::read_vec_at(&f, &path, len as usize, 0));
                let bytes = read.unwrap_or_else(|e| {
                    // J5: sled's state is a consistent older one without
                    // it; the file is cut to a new header before any record
                    // is appended (`header_ok` is false).
                    tracing::error!(path = %path.display(), error = %e, "The index journal cannot be read; it is not replayed (acknowledged batches may be delivered again).");
                    Vec::new()
                });
                (f, bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (io::create_new(&path)?, Vec::new())
            }
            Err(e) => return Err(e),
        };
        let (replay, last) = read_records(&bytes, epoch, applied, &path);
        let header_ok = bytes.len() >= HEADER as usize
            && bytes.starts_with(MAGIC)
            && header_epoch(&bytes) == Some(epoch);
        let mut journal = Journal {
            file,
            path,
            epoch,
            end: bytes.len() as u64,
            next_lsn: last.max(applied) + 1,
            header_ok,
            buf: Vec::new(),
        };
        if !header_ok && let Err(e) = journal.reset() {
            // The next append writes the header first, or fails (J5).
            tracing::warn!(path = %journal.path.display(), error = %e, "Writing the index journal's header failed.");
        }
        Ok((journal, replay))
    }

    /// Appends one record per batch, in one write; returns their lsns'
    /// first. The lsns are spent even when the write fails (J5).
    pub(crate) fn append(&mut self, batches: &[&[Write]]) -> (u64, std::io::Result<()>) {
        let first = self.next_lsn;
        self.next_lsn += batches.len() as u64;
        if !self.header_ok
            && let Err(e) = self.reset()
        {
            return (first, Err(e));
        }
        // Records go out in writes of about `WRITE_BYTES`: a commit round
        // of 10,000 topics is megabytes of index writes, and the buffer
        // would be one more copy of them at the round's peak.
        let mut written = Ok(());
        self.buf.clear();
        for (i, (lsn, writes)) in (first..).zip(batches).enumerate() {
            encode_record(&mut self.buf, lsn, writes);
            if self.buf.len() >= WRITE_BYTES || i + 1 == batches.len() {
                written = io::write_at(&self.file, &self.path, self.end, &[&self.buf]);
                if written.is_err() {
                    break;
                }
                self.end += self.buf.len() as u64;
                self.buf.clear();
            }
        }
        if self.buf.capacity() > 2 * WRITE_BYTES {
            self.buf = Vec::new();
        }
        (first, written)
    }

    /// Empties the journal: its header alone (J6: sled holds every record).
    /// The header is written only when the file has none of this epoch; a
    /// failure leaves `header_ok` false, and the next append writes it
    /// first (J5: that append fails if it cannot).
    pub(crate) fn reset(&mut self) -> std::io::Result<()> {
        if self.header_ok {
            io::set_len(&self.file, &self.path, HEADER)?;
            self.end = HEADER;
            return Ok(());
        }
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&self.epoch.to_le_bytes());
        io::set_len(&self.file, &self.path, 0)?;
        self.end = 0;
        io::write_at(&self.file, &self.path, 0, &[&header])?;
        self.end = HEADER;
        self.header_ok = true;
        Ok(())
    }

    /// Empties the journal after a flush of sled that began when `mark` was
    /// the last lsn handed out, if none was handed out since (J6); a
    /// failure leaves records sled holds, which a replay skips (J5).
    pub(crate) fn reset_after_flush(&mut self, mark: u64) {
        if self.last_lsn() == mark
            && self.len() > 0
            && let Err(e) = self.reset()
        {
            tracing::warn!(path = %self.path.display(), error = %e, "Emptying the index journal failed; it is emptied at the next flush.");
        }
    }

    /// Binds the journal to another epoch, for a sled that applied every
    /// batch up to `applied` (a copy of another sled's trees), and empties it.
    pub(crate) fn rebind(&mut self, epoch: u64, applied: u64) -> std::io::Result<()> {
        self.epoch = epoch;
        self.header_ok = false;
        self.next_lsn = self.next_lsn.max(applied + 1);
        self.reset()
    }

    /// The lsn of the last batch handed one.
    pub(crate) fn last_lsn(&self) -> u64 {
        self.next_lsn - 1
    }

    /// Bytes of records since the last reset.
    pub(crate) fn len(&self) -> u64 {
        self.end.saturating_sub(HEADER)
    }
}

fn header_epoch(bytes: &[u8]) -> Option<u64> {
    bytes
        .get(8..16)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

fn encode_record(out: &mut Vec<u8>, lsn: u64, writes: &[Write]) {
    let at = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&(writes.len() as u32).to_le_bytes());
    for (key, value) in writes {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            Some(v) => {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
            None => out.extend_from_slice(&REMOVED.to_le_bytes()),
        }
    }
    let payload_len = (out.len() - at - 8) as u32;
    let crc = crc32fast::hash(&out[at + 8..]);
    out[at..at + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The records to replay (J2, J3) and the highest lsn read.
fn read_records(bytes: &[u8], epoch: u64, applied: u64, path: &Path) -> (Vec<Replay>, u64) {
    let mut replay = Vec::new();
    if !bytes.starts_with(MAGIC) || bytes.len() < HEADER as usize {
        return (replay, 0);
    }
    if header_epoch(bytes) != Some(epoch) {
        tracing::warn!(path = %path.display(), "The index journal belongs to an earlier index (sled's files were replaced); it is not replayed.");
        return (replay, 0);
    }
    let mut at = HEADER as usize;
    let mut last = 0;
    let mut expected = applied + 1;
    while let Some((record, next)) = decode_record(bytes, at) {
        at = next;
        last = last.max(record.lsn);
        if record.lsn < expected {
            continue;
        }
        if record.lsn != expected {
            tracing::warn!(path = %path.display(), applied, found = record.lsn, "The index journal does not run on from sled's last write (a power cut?); the rest is not replayed.");
            break;
        }
        expected += 1;
        replay.push(record);
    }
    (replay, last)
}

fn decode_record(bytes: &[u8], at: usize) -> Option<(Replay, usize)> {
    let u32_at = |i: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(i..i + 4)?.try_into().ok()?))
    };
    let len = u32_at(at)? as usize;
    let crc = u32_at(at + 4)?;
    let payload = bytes.get(at + 8..(at + 8).checked_add(len)?)?;
    if len < 12 || crc32fast::hash(payload) != crc {
        return None;
    }
    let lsn = u64::from_le_bytes(payload[..8].try_into().ok()?);
    let count = u32::from_le_bytes(payload[8..12].try_into().ok()?) as usize;
    let mut writes = Vec::with_capacity(count.min(len / 8));
    let mut i = 12;
    let take = |i: &mut usize, n: usize| -> Option<&[u8]> {
        let s = payload.get(*i..i.checked_add(n)?)?;
        *i += n;
        Some(s)
    };
    for _ in 0..count {
        let klen = u32::from_le_bytes(take(&mut i, 4)?.try_into().ok()?) as usize;
        let key = take(&mut i, klen)?.to_vec();
        let vlen = u32::from_le_bytes(take(&mut i, 4)?.try_into().ok()?);
        let value = match vlen {
            REMOVED => None,
            n => Some(take(&mut i, n as usize)?.to_vec()),
        };
        writes.push((key, value));
    }
    (i == payload.len()).then_some((Replay { lsn, writes }, at + 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Write {
        (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec()))
    }

    fn del(k: &str) -> Write {
        (k.as_bytes().to_vec(), None)
    }

    #[test]
    fn records_after_sleds_applied_lsn_are_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, replay) = Journal::open(dir.path(), 7, 0).unwrap();
        assert!(replay.is_empty());
        let a = [put("a", "1"), del("b")];
        let b = [put("c", "")];
        assert_eq!(j.append(&[&a, &b]).0, 1);
        let c = [del("a")];
        assert_eq!(j.append(&[&c]).0, 3);
        drop(j);
        let (_, replay) = Journal::open(dir.path(), 7, 1).unwrap();
        assert_eq!(
            replay,
            vec![
                Replay {
                    lsn: 2,
                    writes: b.to_vec()
                },
                Replay {
                    lsn: 3,
                    writes: c.to_vec()
                }
            ]
        );
    }

    #[test]
    fn an_append_larger_than_one_write_is_replayed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 7, 0).unwrap();
        let big = "x".repeat(200 << 10);
        let batches: Vec<Vec<Write>> = (0..4).map(|i| vec![put(&format!("k{i}"), &big)]).collect();
        let refs: Vec<&[Write]> = batches.iter().map(Vec::as_slice).collect();
        let (first, written) = j.append(&refs);
        written.unwrap();
        drop(j);
        let (_, replay) = Journal::open(dir.path(), 7, 0).unwrap();
        assert_eq!(
            replay.iter().map(|r| r.lsn).collect::<Vec<_>>(),
            (first..first + 4).collect::<Vec<_>>()
        );
        assert_eq!(replay[3].writes, batches[3]);
    }

    #[test]
    fn a_journal_of_another_epoch_is_not_replayed_and_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 7, 0).unwrap();
        let _ = j.append(&[&[put("a", "1")]]);
        drop(j);
        let (j, replay) = Journal::open(dir.path(), 8, 0).unwrap();
        assert!(replay.is_empty());
        assert_eq!(j.len(), 0);
        assert_eq!(
            std::fs::metadata(dir.path().join(FILE)).unwrap().len(),
            HEADER
        );
    }

    #[test]
    fn a_gap_after_sleds_applied_lsn_stops_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 7, 4).unwrap();
        assert_eq!(j.append(&[&[put("a", "1")]]).0, 5);
        drop(j);
        // sled says it applied only up to 3 (a power cut took 4 back).
        let (j, replay) = Journal::open(dir.path(), 7, 3).unwrap();
        assert!(replay.is_empty());
        // Later batches never reuse the lsns read.
        assert_eq!(j.next_lsn, 6);
    }

    #[test]
    fn a_damaged_or_torn_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 7, 0).unwrap();
        for i in 0..3 {
            let _ = j.append(&[&[put(&format!("k{i}"), "v")]]);
        }
        drop(j);
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let one = (bytes.len() - HEADER as usize) / 3;
        // A byte flipped in the second record's payload.
        bytes[HEADER as usize + one + 12] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let (_, replay) = Journal::open(dir.path(), 7, 0).unwrap();
        assert_eq!(replay.iter().map(|r| r.lsn).collect::<Vec<_>>(), [1]);
        // A torn last record (the file cut inside it).
        let (mut j, _) = Journal::open(dir.path(), 7, 0).unwrap();
        j.reset().unwrap();
        let (n, _) = j.append(&[&[put("x", "1")], &[put("y", "2")]]);
        drop(j);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let (_, replay) = Journal::open(dir.path(), 7, n - 1).unwrap();
        assert_eq!(replay.iter().map(|r| r.lsn).collect::<Vec<_>>(), [n]);
    }

    #[test]
    fn a_header_that_could_not_be_written_is_written_before_the_next_record() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let _hook = crate::faults::TEST_HOOK
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (mut j, _) = Journal::open(dir.path(), 7, 0).unwrap();
        let path = dir.path().join(FILE);
        let once = Arc::new(AtomicBool::new(true));
        crate::faults::install(move |site, p| {
            (site == crate::faults::Site::Write && p == path && once.swap(false, Ordering::SeqCst))
                .then_some(crate::faults::Fault::Error(libc::EIO))
        });
        // A new epoch's header cannot be written (the file is cut to 0).
        let rebound = j.rebind(8, 0);
        crate::faults::clear();
        assert!(rebound.is_err());
        let (n, written) = j.append(&[&[put("a", "1")]]);
        written.unwrap();
        drop(j);
        let (_, replay) = Journal::open(dir.path(), 8, n - 1).unwrap();
        assert_eq!(replay.iter().map(|r| r.lsn).collect::<Vec<_>>(), [n]);
    }

    #[test]
    fn an_append_after_a_failed_one_overwrites_its_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = Journal::open(dir.path(), 7, 0).unwrap();
        let _ = j.append(&[&[put("a", "1")]]);
        // As a short write leaves it: bytes past `end` that are no record.
        let path = dir.path().join(FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &[0xAB; 40], len))
            .unwrap();
        j.next_lsn += 1; // the failed append's lsn is spent
        let _ = j.append(&[&[put("b", "2")]]);
        drop(j);
        let (_, replay) = Journal::open(dir.path(), 7, 0).unwrap();
        // lsn 2 went missing: the replay stops at the gap (J2, J5).
        assert_eq!(replay.iter().map(|r| r.lsn).collect::<Vec<_>>(), [1]);
        let (_, replay) = Journal::open(dir.path(), 7, 2).unwrap();
        assert_eq!(replay.iter().map(|r| r.lsn).collect::<Vec<_>>(), [3]);
    }
}
