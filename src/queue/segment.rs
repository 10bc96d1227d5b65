//! Body generation files (`bodies/<topic>/<g>.seg`): the append-only files that
//! hold every chunk record, and the budget of open file descriptors.
//!
//! The body files are the truth of what is queued; sled only indexes them
//! (`queue/mod.rs`). Everything here is plain file I/O: no sled, no locks of
//! the queue.
//!
//! # Format (segment version 3)
//!
//! ```text
//! segment := header entry*
//! header  := magic "EVSPSEG3"
//!            instance [u8; 16]   the store's instance id, ASCII, NUL-padded
//!            next_seq u64 LE     the store's next seq when the file was made
//!            reserved u32        0
//!            crc32    u32 LE     over the 36 bytes before it          (40 bytes)
//! entry   := seq u64 LE          first seq of the chunk record
//!            len u32 LE          length of the record
//!            kind u8             0 new | 1 rewrite
//!            reserved [u8; 3]    0
//!            record              a chunk record (`crate::record`), len bytes
//! ```
//!
//! - `new`: events written for the first time (a commit round or a durable
//!   append). Open adopts a new entry that no index record covers if it lies
//!   at or after the topic's checkpoint generation.
//! - `rewrite`: events that were indexed elsewhere and were moved here (a
//!   partial settle, `max_age`, compaction, a dead-letter replay, a format
//!   migration). Its index record is written in the same sled batch that
//!   removes the old one, so an unindexed rewrite is garbage (its events are
//!   still where they were); only a rebuild without sled adopts rewrites.
//!
//! Segment version 2 (format-2 stores) has no header and 12-byte entry headers
//! (`seq`, `len`); such files are read, never appended to. An index record
//! (format 3) names a *span*: the offset of an entry's header and the length of
//! one or more whole consecutive entries, so many small durable appends are
//! indexed (and leased) as one chunk.
//!
//! # Invariants
//!
//! - S1 (append-only): bytes before a segment's end are never rewritten; a
//!   write that fails is truncated back by its writer (`queue/log.rs`).
//! - S2 (self-describing): a version-3 file starts with its header, written
//!   (and with `fsync`, synced together with its directory entry) before any
//!   entry; the instance id and seq high-water survive the loss of sled.
//! - S3 (torn tails end a scan): a scan stops at the first header whose
//!   length runs past the end of the file, or is zero: the zeros a log with
//!   `fsync` writes ahead of its end (G6 in `queue/log.rs`). No entry has an
//!   empty record.
//! - S4 (bounded descriptors): at most `budget` body files hold an open
//!   descriptor (a file in use is never closed under its user; it is closed
//!   once idle and reopened on the next use).

use bytes::Bytes;
use std::fs::File;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// First bytes of a version-3 segment.
pub(crate) const MAGIC: &[u8; 8] = b"EVSPSEG3";
/// Bytes of a version-3 file header.
pub(crate) const HEADER_LEN: u64 = 40;
/// Bytes of a version-3 entry header.
pub(crate) const ENTRY_HEADER: u64 = 16;
/// Bytes of a version-2 entry header.
const ENTRY_HEADER_V2: u64 = 12;
/// Longest instance id a header holds.
const INSTANCE_LEN: usize = 16;

/// What a segment entry holds (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    New,
    Rewrite,
}

/// The header of a version-3 segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) instance: String,
    pub(crate) next_seq: u64,
}

/// One entry found by a scan.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryInfo {
    /// Offset of the entry's header.
    pub(crate) offset: u64,
    /// Header and record bytes.
    pub(crate) span: u64,
    pub(crate) seq: u64,
    pub(crate) kind: EntryKind,
}

/// The 16-byte header of a version-3 entry.
pub(crate) fn entry_header(seq: u64, len: u32, kind: EntryKind) -> [u8; ENTRY_HEADER as usize] {
    let mut h = [0u8; ENTRY_HEADER as usize];
    h[..8].copy_from_slice(&seq.to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12] = match kind {
        EntryKind::New => 0,
        EntryKind::Rewrite => 1,
    };
    h
}

fn encode_header(h: &SegmentHeader) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..8].copy_from_slice(MAGIC);
    let id = h.instance.as_bytes();
    let n = id.len().min(INSTANCE_LEN);
    out[8..8 + n].copy_from_slice(&id[..n]);
    out[24..32].copy_from_slice(&h.next_seq.to_le_bytes());
    let crc = crc32fast::hash(&out[..36]);
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    out
}

fn decode_header(b: &[u8]) -> Option<SegmentHeader> {
    if b.len() < HEADER_LEN as usize || &b[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[36..40].try_into().ok()?);
    if crc != crc32fast::hash(&b[..36]) {
        return None;
    }
    let id = &b[8..24];
    let end = id.iter().position(|c| *c == 0).unwrap_or(INSTANCE_LEN);
    Some(SegmentHeader {
        instance: String::from_utf8_lossy(&id[..end]).into_owned(),
        next_seq: u64::from_le_bytes(b[24..32].try_into().ok()?),
    })
}

/// Makes `dir` and its missing parents (0700); with `sync`, fsyncs the parent of
/// every directory it created, so the new entries survive power loss.
/// A relative `dir` of one component has the current directory as parent.
pub(crate) fn create_dir(dir: &Path, sync: bool) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = dir.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    if let Some(parent) = parent {
        create_dir(parent, sync)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
        Err(e) => return Err(e),
    }
    if sync && let Some(parent) = parent {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsyncs a directory, making the entries created, renamed or deleted in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Whether an error means this process ran out of file descriptors: a
/// transient condition of one write or read, never a reason to fail closed.
pub(crate) fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The open-descriptor budget of a store's body files (S4).
pub(crate) struct OpenFiles {
    budget: usize,
    /// Segments that hold a descriptor now.
    open: Mutex<Vec<Weak<Segment>>>,
    count: AtomicUsize,
    clock: AtomicU64,
}

impl OpenFiles {
    pub(crate) fn new(budget: usize) -> Arc<OpenFiles> {
        Arc::new(OpenFiles {
            budget: budget.max(2),
            open: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
        })
    }

    /// Body files holding a descriptor now.
    pub(crate) fn open_count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that `seg` opened a descriptor; closes idle ones over budget.
    fn opened(&self, seg: &Weak<Segment>, me: *const Segment) {
        let over = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.push(seg.clone());
            self.count.fetch_add(1, Ordering::Relaxed) + 1 > self.budget
        };
        if over {
            // A quarter of the budget at once, so the scan is amortised.
            self.close_idle((self.budget / 4).max(1), me);
        }
    }

    /// Closes up to `n` of the least recently used idle descriptors (never
    /// `except`'s); returns how many it closed.
    fn close_idle(&self, n: usize, except: *const Segment) -> usize {
        let mut candidates: Vec<(u64, Arc<Segment>)> = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.retain(|w| w.strong_count() > 0);
            open.iter()
                .filter_map(Weak::upgrade)
                .filter(|s| !std::ptr::eq(Arc::as_ptr(s), except))
                .map(|s| (s.last_used.load(Ordering::Relaxed), s))
                .collect()
        };
        candidates.sort_by_key(|(t, _)| *t);
        let mut closed = 0;
        for (_, seg) in candidates {
            if closed >= n {
                break;
            }
            if seg.close() {
                closed += 1;
            }
        }
        closed
    }

    fn closed(&self, me: *const Segment) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), me));
    }
}

/// One body generation file.
pub(crate) struct Segment {
    path: PathBuf,
    /// 3, or 2 for a file written by a format-2 store (read only).
    version: u8,
    /// The header of a version-3 file.
    header: Option<SegmentHeader>,
    /// The descriptor, closed by the budget when idle and reopened on use.
    file: RwLock<Option<File>>,
    files: Arc<OpenFiles>,
    me: Weak<Segment>,
    last_used: AtomicU64,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("path", &self.path).finish()
    }
}

fn open_rw(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

impl Segment {
    fn new(
        files: &Arc<OpenFiles>,
        path: PathBuf,
        version: u8,
        header: Option<SegmentHeader>,
        file: File,
    ) -> Arc<Segment> {
        let seg = Arc::new_cyclic(|me| Segment {
            path,
            version,
            header,
            file: RwLock::new(Some(file)),
            files: files.clone(),
            me: me.clone(),
            last_used: AtomicU64::new(files.tick()),
        });
        files.opened(&seg.me, Arc::as_ptr(&seg));
        seg
    }

    /// Creates a new version-3 file (0600) with its header; with `sync`, the
    /// header and the directory entries are synced before it returns (S2).
    pub(crate) fn create(
        files: &Arc<OpenFiles>,
        path: &Path,
        header: SegmentHeader,
        sync: bool,
    ) -> io::Result<Arc<Segment>> {
        if let Some(dir) = path.parent() {
            create_dir(dir, sync)?;
        }
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
        };
        let file = match open() {
            Err(e) if is_out_of_descriptors(&e) => {
                files.close_idle(8, std::ptr::null());
                open()?
            }
            other => other?,
        };
        let written = file
            .write_all_at(&encode_header(&header), 0)
            .and_then(|()| {
                if sync {
                    file.sync_data()?;
                    if let Some(dir) = path.parent() {
                        sync_dir(dir)?;
                    }
                }
                Ok(())
            });
        if let Err(e) = written {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(Segment::new(
            files,
            path.to_path_buf(),
            3,
            Some(header),
            file,
        ))
    }

    /// Opens an existing file of either version.
    pub(crate) fn open(files: &Arc<OpenFiles>, path: &Path) -> io::Result<Arc<Segment>> {
        let open = || open_rw(path);
        let file = match open() {
            Err(e) if is_out_of_descriptors(&e) => {
                files.close_idle(8, std::ptr::null());
                open()?
            }
            other => other?,
        };
        let mut head = [0u8; HEADER_LEN as usize];
        let n = read_up_to(&file, &mut head, 0)?;
        let (version, header) = if n >= 8 && &head[..8] == MAGIC {
            (3, decode_header(&head[..n]))
        } else {
            (2, None)
        };
        Ok(Segment::new(
            files,
            path.to_path_buf(),
            version,
            header,
            file,
        ))
    }

    #[cfg(test)]
    pub(crate) fn version(&self) -> u8 {
        self.version
    }

    /// The header of a version-3 file (`None` for version 2, or if damaged).
    pub(crate) fn header(&self) -> Option<&SegmentHeader> {
        self.header.as_ref()
    }

    /// Where entries start.
    pub(crate) fn first_entry(&self) -> u64 {
        if self.version == 3 { HEADER_LEN } else { 0 }
    }

    fn entry_header_len(&self) -> u64 {
        if self.version == 3 {
            ENTRY_HEADER
        } else {
            ENTRY_HEADER_V2
        }
    }

    /// Runs `f` with the descriptor, reopening it if the budget closed it.
    fn with_file<R>(&self, mut f: impl FnMut(&File) -> io::Result<R>) -> io::Result<R> {
        self.last_used.store(self.files.tick(), Ordering::Relaxed);
        {
            let g = self.file.read().unwrap_or_else(|e| e.into_inner());
            if let Some(file) = g.as_ref() {
                return f(file);
            }
        }
        let mut g = self.file.write().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let file = match open_rw(&self.path) {
                Err(e) if is_out_of_descriptors(&e) => {
                    self.files.close_idle(8, self);
                    open_rw(&self.path)?
                }
                other => other?,
            };
            *g = Some(file);
            self.files.opened(&self.me, self);
        }
        f(g.as_ref().expect("opened above"))
    }

    /// Closes the descriptor if nobody is using it; true if it closed one.
    fn close(&self) -> bool {
        let Ok(mut g) = self.file.try_write() else {
            return false;
        };
        if g.take().is_some() {
            drop(g);
            self.files.closed(self);
            true
        } else {
            false
        }
    }

    /// The file's length now.
    pub(crate) fn len(&self) -> io::Result<u64> {
        self.with_file(|f| f.metadata().map(|m| m.len()))
    }

    /// Writes `parts`, in order, at `offset` (one `writev` per call).
    pub(crate) fn write_at(&self, offset: u64, parts: &[&[u8]]) -> io::Result<()> {
        match parts {
            // One buffer: one `pwrite`, no seek.
            [one] => self.with_file(|f| f.write_all_at(one, offset)),
            _ => self.with_file(|f| write_all_vectored_at(f, parts, offset)),
        }
    }

    /// `fdatasync`s the file.
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.with_file(|f| f.sync_data())
    }

    /// Cuts the file back to `len` (a failed write's partial bytes, S1).
    pub(crate) fn truncate(&self, len: u64) -> io::Result<()> {
        self.with_file(|f| f.set_len(len))
    }

    /// Reads `len` bytes at `offset`; fewer if the file ends first.
    pub(crate) fn read_span(&self, offset: u64, len: u64) -> io::Result<Bytes> {
        let mut buf = vec![0u8; len as usize];
        let n = self.with_file(|f| read_up_to(f, &mut buf, offset))?;
        buf.truncate(n);
        Ok(Bytes::from(buf))
    }

    /// Every whole entry from `from` (an entry boundary) to the end, headers
    /// only; stops at a torn tail (S3).
    pub(crate) fn scan(&self, from: u64) -> io::Result<Vec<EntryInfo>> {
        let hl = self.entry_header_len();
        let v3 = self.version == 3;
        self.with_file(|f| {
            let end = f.metadata()?.len();
            let mut out = Vec::new();
            let mut at = from.max(if v3 { HEADER_LEN } else { 0 });
            let mut h = [0u8; ENTRY_HEADER as usize];
            while at + hl <= end {
                f.read_exact_at(&mut h[..hl as usize], at)?;
                let seq = u64::from_le_bytes(h[..8].try_into().unwrap_or([0; 8]));
                let len = u32::from_le_bytes(h[8..12].try_into().unwrap_or([0; 4])) as u64;
                let kind = if v3 && h[12] == 1 {
                    EntryKind::Rewrite
                } else {
                    EntryKind::New
                };
                if len == 0 || at + hl + len > end || (v3 && h[12] > 1) {
                    break;
                }
                out.push(EntryInfo {
                    offset: at,
                    span: hl + len,
                    seq,
                    kind,
                });
                at += hl + len;
            }
            Ok(out)
        })
    }

    /// Splits a span read from this file into its entries' records, checking
    /// that the first one carries `first_seq`. `None` if the bytes are not a
    /// run of whole entries starting with that seq.
    pub(crate) fn split_span(&self, span: &Bytes, first_seq: u64) -> Option<Vec<Bytes>> {
        let hl = self.entry_header_len() as usize;
        let mut out = Vec::new();
        let mut at = 0usize;
        while at < span.len() {
            let h = span.get(at..at + hl)?;
            let seq = u64::from_le_bytes(h[..8].try_into().ok()?);
            let len = u32::from_le_bytes(h[8..12].try_into().ok()?) as usize;
            if out.is_empty() && seq != first_seq {
                return None;
            }
            let record = span.get(at + hl..at + hl + len)?;
            out.push(span.slice_ref(record));
            at += hl + len;
        }
        (!out.is_empty()).then_some(out)
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        let open = self
            .file
            .get_mut()
            .map(|f| f.is_some())
            .unwrap_or_else(|e| e.into_inner().is_some());
        if open {
            self.files.closed(self);
        }
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends.
fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes every byte of `parts`, in order, at `offset`: one `writev` per call
/// from the slices where they are, retried after short writes and interrupts.
/// Writes to a segment are serialized by its topic's log lock and reads use
/// `pread`, so moving the file's cursor here disturbs nobody.
fn write_all_vectored_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    use std::io::{IoSlice, Seek, SeekFrom, Write};
    let mut f = file;
    f.seek(SeekFrom::Start(offset))?;
    let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut bufs = &mut slices[..];
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match f.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "writev wrote nothing",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SegmentHeader {
        SegmentHeader {
            instance: "0123456789ab".into(),
            next_seq: 77,
        }
    }

    #[test]
    fn a_new_file_carries_its_header_and_entries_scan_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8);
        let path = dir.path().join("t/1.seg");
        let seg = Segment::create(&files, &path, header(), true).unwrap();
        let rec = b"record-bytes";
        let h1 = entry_header(5, rec.len() as u32, EntryKind::New);
        let h2 = entry_header(9, rec.len() as u32, EntryKind::Rewrite);
        seg.write_at(HEADER_LEN, &[&h1, rec, &h2, rec]).unwrap();
        let again = Segment::open(&files, &path).unwrap();
        assert_eq!(again.header(), Some(&header()));
        let entries = again.scan(0).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[0].seq, entries[0].kind), (5, EntryKind::New));
        assert_eq!((entries[1].seq, entries[1].kind), (9, EntryKind::Rewrite));
        let span = again
            .read_span(entries[0].offset, entries[0].span + entries[1].span)
            .unwrap();
        let records = again.split_span(&span, 5).unwrap();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.as_ref() == rec));
        assert!(
            again.split_span(&span, 6).is_none(),
            "the first seq is checked"
        );
    }

    #[test]
    fn a_torn_tail_ends_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8);
        let path = dir.path().join("1.seg");
        let seg = Segment::create(&files, &path, header(), false).unwrap();
        let h = entry_header(1, 4, EntryKind::New);
        seg.write_at(
            HEADER_LEN,
            &[&h, b"abcd", &entry_header(2, 100, EntryKind::New), b"xy"],
        )
        .unwrap();
        let entries = seg.scan(0).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].seq, 1);
    }

    #[test]
    fn zeros_written_ahead_end_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let files = OpenFiles::new(8);
        let path = dir.path().join("1.seg");
        let seg = Segment::create(&files, &path, header(), false).unwrap();
        let h = entry_header(1, 4, EntryKind::New);
        seg.write_at(HEADER_LEN, &[&h, b"abcd", &[0u8; 8192]])
            .unwrap();
        let entries = seg.scan(0).unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!((entries[0].seq, entries[0].span), (1, 20));
        assert_eq!(seg.len().unwrap(), HEADER_LEN + 20 + 8192);
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
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&3u64.to_le_bytes());
        bytes.extend_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(b"ok");
        std::fs::write(&path, &bytes).unwrap();
        let seg = Segment::open(&files, &path).unwrap();
        assert_eq!(seg.version(), 2);
        assert!(seg.header().is_none());
        let e = seg.scan(0).unwrap();
        assert_eq!((e.len(), e[0].offset, e[0].span), (1, 0, 14));
        let span = seg.read_span(0, 14).unwrap();
        assert_eq!(seg.split_span(&span, 3).unwrap()[0].as_ref(), b"ok");
    }
}
