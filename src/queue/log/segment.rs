//! Body generation files (`bodies/<topic>/<g>.seg`): the append-only files that
//! hold every entry, and the budget of open file descriptors.
//!
//! The body files are the truth of what is queued; sled only indexes them
//! (`queue/mod.rs`). Everything here is plain file I/O through `queue/io.rs`:
//! no sled, no locks of the queue.
//!
//! # Format (segment version 3; format 4 sets the `checked` flag)
//!
//! ```text
//! segment := header entry*
//! header  := magic "EVSPSEG3"
//!            instance [u8; 16]   the store's instance id, ASCII, NUL-padded
//!            next_seq u64 LE     the store's next seq when the file was made
//!            flags    u32 LE     bit 0: entry headers carry a check (format 4);
//!                                bits 8-31: the salt of those checks
//!            crc32    u32 LE     over the 36 bytes before it          (40 bytes)
//! entry   := 16-byte header and a record (`queue/log/entry.rs`)
//! ```
//!
//! Entry kinds (`queue/log/entry.rs`): `new` entries hold events written for the
//! first time, `rewrite` and `replay` entries events moved here from another
//! entry, `trace` entries what left the queue other than by an ack.
//!
//! Segment version 2 (format-2 stores) has no header and 12-byte entry headers
//! (`seq`, `len`); such files are read, never appended to. An index record
//! (format 3 and 4) names a *span*: the offset of an entry's header and the
//! length of one or more whole consecutive entries, so many small durable
//! appends are indexed (and leased) as one chunk.
//!
//! # Invariants
//!
//! - S1 (append-only): bytes before a segment's end are never rewritten; a
//!   write that fails is truncated back by its writer (`queue/log/mod.rs`).
//! - S2 (self-describing): a version-3 file starts with its header, written
//!   (and with `fsync`, synced together with its directory entry) before any
//!   entry; the instance id and seq high-water survive the loss of sled.
//! - S3 (damage is local): a reader goes past a damaged entry to the next
//!   valid one (`queue/log/entry.rs`); a run ends only where no valid entry
//!   follows — a torn tail, or the zeros a log with `fsync` writes ahead of
//!   its end (G6 in `queue/log/mod.rs`). A damaged magic or file header costs
//!   the header only: the entries are found at offset 40 by their CRCs.
//! - S4 (bounded descriptors): at most `budget` body files hold an open
//!   descriptor (a file in use is never closed under its user; it is closed
//!   once idle and reopened on the next use).
//! - S5 (no symlinks): body files are opened with `O_NOFOLLOW` (`queue/io.rs`).
//! - S6 (a tail's seqs stay used): the bytes after the newest generation's
//!   last valid entry, up to its last non-zero byte (written-ahead zeros
//!   excluded), and its damaged spans may be entries whose seqs were handed
//!   out (a scan cannot read them); an open skips as many seqs as those
//!   bytes could hold, one per byte ([`Segment::tail_bound`]), after the
//!   highest it found, and records the result as every topic's high-water,
//!   so no id is handed out twice.

use super::entry::{self, EntryInfo, Layout, Part, Source, Step};
use super::read_ahead::ReadAhead;
use crate::queue::io;
use bytes::Bytes;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

/// First bytes of a version-3 segment.
pub(crate) const MAGIC: &[u8; 8] = b"EVSPSEG3";
/// Bytes of a version-3 file header.
pub(crate) const HEADER_LEN: u64 = 40;
/// The file header flag of format 4: entry headers carry a check.
const FLAG_CHECKED: u32 = 1;
/// Longest instance id a header holds.
const INSTANCE_LEN: usize = 16;

/// The header of a version-3 segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentHeader {
    pub(crate) instance: String,
    pub(crate) next_seq: u64,
    /// The salt of the file's entry header checks (24 bits).
    pub(crate) salt: u32,
}

fn encode_header(h: &SegmentHeader) -> [u8; HEADER_LEN as usize] {
    let mut out = [0u8; HEADER_LEN as usize];
    out[..8].copy_from_slice(MAGIC);
    let id = h.instance.as_bytes();
    let n = id.len().min(INSTANCE_LEN);
    out[8..8 + n].copy_from_slice(&id[..n]);
    out[24..32].copy_from_slice(&h.next_seq.to_le_bytes());
    let flags = FLAG_CHECKED | (h.salt & 0x00ff_ffff) << 8;
    out[32..36].copy_from_slice(&flags.to_le_bytes());
    let crc = crc32fast::hash(&out[..36]);
    out[36..40].copy_from_slice(&crc.to_le_bytes());
    out
}

/// The header and the flags, if the magic and the CRC hold.
fn decode_header(b: &[u8]) -> Option<(SegmentHeader, u32)> {
    if b.len() < HEADER_LEN as usize || &b[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[36..40].try_into().ok()?);
    if crc != crc32fast::hash(&b[..36]) {
        return None;
    }
    let id = &b[8..24];
    let end = id.iter().position(|c| *c == 0).unwrap_or(INSTANCE_LEN);
    let flags = u32::from_le_bytes(b[32..36].try_into().ok()?);
    Some((
        SegmentHeader {
            instance: String::from_utf8_lossy(&id[..end]).into_owned(),
            next_seq: u64::from_le_bytes(b[24..32].try_into().ok()?),
            salt: flags >> 8,
        },
        flags,
    ))
}

/// Whether `head` starts with the magic with at most two bytes damaged.
fn near_magic(head: &[u8]) -> bool {
    head.len() >= MAGIC.len() && head.iter().zip(MAGIC).filter(|(a, b)| a == b).count() >= 6
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
    /// How its entries are laid out (version 2, 3, or 3 with checks).
    layout: Layout,
    /// Where entries start: after the file header, or 0 (version 2).
    first_entry: u64,
    /// The header of a version-3 file (`None` for version 2, or if damaged).
    header: Option<SegmentHeader>,
    /// The descriptor, closed by the budget when idle and reopened on use.
    file: RwLock<Option<File>>,
    files: Arc<OpenFiles>,
    me: Weak<Segment>,
    last_used: AtomicU64,
    ahead: ReadAhead,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("path", &self.path).finish()
    }
}

/// Opens `path` with `open`; out of descriptors, closes idle body files
/// (never `except`) and tries once more (S4).
fn open_with_budget(
    files: &OpenFiles,
    except: *const Segment,
    open: impl Fn() -> std::io::Result<File>,
) -> std::io::Result<File> {
    match open() {
        Err(e) if io::is_out_of_descriptors(&e) => {
            files.close_idle(8, except);
            open()
        }
        other => other,
    }
}

/// A file read through a window, for readers of runs of entries.
struct FileSource<'a> {
    path: &'a Path,
    file: &'a File,
    size: u64,
    buf: Vec<u8>,
    at: u64,
}

impl Source for FileSource<'_> {
    fn size(&self) -> u64 {
        self.size
    }

    fn get(&mut self, off: u64, len: usize) -> std::io::Result<&[u8]> {
        let inside = off >= self.at && off + len as u64 <= self.at + self.buf.len() as u64;
        if !inside {
            let want = len.max(256 * 1024).min((self.size - off) as usize).max(len);
            self.buf.resize(want, 0);
            let n = io::read_at(self.file, self.path, &mut self.buf, off)?;
            self.buf.truncate(n);
            self.at = off;
            if n < len {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "body file shorter than its length",
                ));
            }
        }
        let from = (off - self.at) as usize;
        Ok(&self.buf[from..from + len])
    }
}

/// What a scan of a file found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// Every valid entry, in file order.
    pub(crate) entries: Vec<EntryInfo>,
    /// Damaged ranges (offset, length), each followed by a valid entry (E2).
    pub(crate) damaged: Vec<(u64, u64)>,
    /// Where the last valid entry ends (a torn tail or zeros may follow).
    pub(crate) end: u64,
}

impl Segment {
    fn new(
        files: &Arc<OpenFiles>,
        path: PathBuf,
        layout: Layout,
        header: Option<SegmentHeader>,
        file: File,
    ) -> Arc<Segment> {
        let first_entry = if layout.kinds { HEADER_LEN } else { 0 };
        let seg = Arc::new_cyclic(|me| Segment {
            path,
            layout,
            first_entry,
            header,
            file: RwLock::new(Some(file)),
            files: files.clone(),
            me: me.clone(),
            last_used: AtomicU64::new(files.tick()),
            ahead: ReadAhead::default(),
        });
        files.opened(&seg.me, Arc::as_ptr(&seg));
        seg
    }

    /// Creates a new checked file (0600) with its header; with `sync`, the
    /// header and the directory entries are synced before it returns (S2).
    pub(crate) fn create(
        files: &Arc<OpenFiles>,
        path: &Path,
        header: SegmentHeader,
        sync: bool,
    ) -> std::io::Result<Arc<Segment>> {
        if let Some(dir) = path.parent() {
            io::create_dirs(dir, sync)?;
        }
        let file = open_with_budget(files, std::ptr::null(), || io::create_new(path))?;
        let written = io::write_at(&file, path, 0, &[&encode_header(&header)]).and_then(|()| {
            if sync {
                io::sync_data(&file, path)?;
                if let Some(dir) = path.parent() {
                    io::sync_dir(dir)?;
                }
            }
            Ok(())
        });
        if let Err(e) = written {
            let _ = io::remove_file(path);
            return Err(e);
        }
        Ok(Segment::new(
            files,
            path.to_path_buf(),
            Layout::checked(header.salt),
            Some(header),
            file,
        ))
    }

    /// Opens an existing file of any version (S3: a damaged file header does
    /// not hide the entries).
    pub(crate) fn open(files: &Arc<OpenFiles>, path: &Path) -> std::io::Result<Arc<Segment>> {
        let file = open_with_budget(files, std::ptr::null(), || io::open_rw(path))?;
        let mut head = vec![0u8; (HEADER_LEN + entry::ENTRY_HEADER) as usize];
        let n = io::read_at(&file, path, &mut head, 0)?;
        head.truncate(n);
        let (layout, header) = match decode_header(&head) {
            Some((h, flags)) if flags & FLAG_CHECKED != 0 => (Layout::checked(h.salt), Some(h)),
            Some((h, _)) => (Layout::UNCHECKED, Some(h)),
            None if head.starts_with(MAGIC) => (Layout::UNCHECKED, None),
            // Most of the magic is there: a version-3 file whose magic was hit.
            None if near_magic(&head) => (Layout::UNCHECKED, None),
            None => {
                // No magic: a version-2 file, or a version-3 file whose
                // magic was damaged. The layout that finds more valid entries
                // is the file's (a damaged first entry misleads no one).
                let size = io::len(&file, path)?;
                let count = |layout: Layout, from: u64| -> std::io::Result<usize> {
                    let mut src = FileSource {
                        path,
                        file: &file,
                        size,
                        buf: Vec::new(),
                        at: 0,
                    };
                    let (mut at, mut n) = (from, 0);
                    loop {
                        match entry::step(&mut src, layout, at)? {
                            Step::Entry(e) => {
                                n += 1;
                                at = e.end();
                            }
                            Step::Damaged { offset, len } => at = offset + len,
                            Step::End => return Ok(n),
                        }
                    }
                };
                if count(Layout::UNCHECKED, HEADER_LEN)? > count(Layout::V2, 0)? {
                    (Layout::UNCHECKED, None)
                } else {
                    (Layout::V2, None)
                }
            }
        };
        Ok(Segment::new(
            files,
            path.to_path_buf(),
            layout,
            header,
            file,
        ))
    }

    /// How the entries of this file are laid out.
    #[cfg(test)]
    pub(crate) fn layout(&self) -> Layout {
        self.layout
    }

    /// The header of a version-3 file (`None` for version 2, or if damaged).
    pub(crate) fn header(&self) -> Option<&SegmentHeader> {
        self.header.as_ref()
    }

    /// Where entries start.
    pub(crate) fn first_entry(&self) -> u64 {
        self.first_entry
    }

    /// Runs `f` with the descriptor, reopening it if the budget closed it.
    fn with_file<R>(&self, mut f: impl FnMut(&File) -> std::io::Result<R>) -> std::io::Result<R> {
        self.last_used.store(self.files.tick(), Ordering::Relaxed);
        {
            let g = self.file.read().unwrap_or_else(|e| e.into_inner());
            if let Some(file) = g.as_ref() {
                return f(file);
            }
        }
        let mut g = self.file.write().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            let file = open_with_budget(&self.files, self, || io::open_rw(&self.path))?;
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
    pub(crate) fn len(&self) -> std::io::Result<u64> {
        self.with_file(|f| io::len(f, &self.path))
    }

    /// Writes `parts`, in order, at `offset` (one `writev` per call).
    pub(crate) fn write_at(&self, offset: u64, parts: &[&[u8]]) -> std::io::Result<()> {
        self.with_file(|f| io::write_at(f, &self.path, offset, parts))
    }

    /// `fdatasync`s the file.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.with_file(|f| io::sync_data(f, &self.path))
    }

    /// Cuts the file back to `len` (a failed write's partial bytes, S1).
    pub(crate) fn truncate(&self, len: u64) -> std::io::Result<()> {
        self.with_file(|f| io::set_len(f, &self.path, len))
    }

    /// Reads `len` bytes at `offset`; fewer if the file ends first.
    pub(crate) fn read_span(&self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        let buf = self.with_file(|f| io::read_vec_at(f, &self.path, len as usize, offset))?;
        Ok(Bytes::from(buf))
    }

    /// Reads `len` bytes at `offset` as [`Segment::read_span`] does, reading
    /// ahead for a sequential reader up to `stable`, the offset from which
    /// bytes may still change (`queue/log/read_ahead.rs`).
    pub(crate) fn read_span_ahead(
        &self,
        offset: u64,
        len: u64,
        stable: u64,
    ) -> std::io::Result<Bytes> {
        self.ahead.read(offset, len as usize, stable, |at, want| {
            self.with_file(|f| io::read_vec_at(f, &self.path, want, at))
        })
    }

    /// Every valid entry from `from` (an entry boundary) to the end, headers
    /// only (and records where the headers carry no check), with the damaged
    /// ranges between them (S3).
    pub(crate) fn scan(&self, from: u64) -> std::io::Result<Scan> {
        self.with_file(|f| {
            let size = io::len(f, &self.path)?;
            let mut src = FileSource {
                path: &self.path,
                file: f,
                size,
                buf: Vec::new(),
                at: 0,
            };
            let mut out = Scan::default();
            let mut at = from.max(self.first_entry);
            out.end = at;
            loop {
                match entry::step(&mut src, self.layout, at)? {
                    Step::Entry(e) => {
                        at = e.end();
                        out.end = at;
                        out.entries.push(e);
                    }
                    Step::Damaged { offset, len } => {
                        out.damaged.push((offset, len));
                        at = offset + len;
                    }
                    Step::End => return Ok(out),
                }
            }
        })
    }

    /// An upper bound on the events the bytes after `end` (where a scan's
    /// last valid entry ends) may hold, for the newest generation of a topic
    /// (S6): one per byte, up to the file's last non-zero byte (the zeros
    /// written ahead, G6, end a file; read backwards from its end, so zeros
    /// inside a damaged entry's payload still count). A last entry that is
    /// damaged (or torn) lies there and a scan cannot tell its seqs; they
    /// may have been handed out and acknowledged, so the next seq must pass
    /// them all. 0 when nothing but zeros follows.
    pub(crate) fn tail_bound(&self, end: u64) -> std::io::Result<u64> {
        const BLOCK: u64 = 64 * 1024;
        self.with_file(|f| {
            let size = io::len(f, &self.path)?;
            let mut hi = size;
            while hi > end {
                let lo = hi.saturating_sub(BLOCK).max(end);
                let bytes = io::read_vec_at(f, &self.path, (hi - lo) as usize, lo)?;
                if let Some(i) = bytes.iter().rposition(|b| *b != 0) {
                    return Ok(lo + i as u64 + 1 - end);
                }
                hi = lo;
            }
            Ok(0)
        })
    }

    /// Splits a span read from this file at `offset` (meant to be `want`
    /// bytes) into entries and damage (`queue/log/entry.rs`).
    pub(crate) fn parse_span(&self, span: &Bytes, offset: u64, want: u64) -> Vec<Part> {
        entry::parse_span(span, offset, want, self.layout)
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

#[cfg(test)]
mod tests;
