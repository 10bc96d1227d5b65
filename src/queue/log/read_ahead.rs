//! Reading ahead in a body file, so a consumer leasing chunk after chunk
//! reads the file in large pieces rather than one `pread` per chunk.
//!
//! Each file keeps at most one *window*: bytes read past the span a lease
//! asked for, from which the next spans are sliced without a system call.
//! Leasing a 1M-event backlog 50 at a time read about 15 KB per call; read in
//! [`WINDOW`]-byte pieces the drain took about a fifth less time
//! (docs/performance.md, 2026-12-07). Events leased out of a window share its
//! bytes, as they share a span's bytes without one. Only leases read ahead
//! (`read_leased_chunk`, `queue/log/read.rs`); `verify`, compaction and the
//! admin listing always read the file.
//!
//! # Invariants
//!
//! - RA1 (stable bytes only): a window holds only bytes that no write could
//!   change any more when it was read: those of an older generation than the
//!   topic's current one, and those of the current one below the end its log
//!   last published (`LogSignals::stable_end`, `queue/log/mod.rs`). Bytes past
//!   that are read from the file when asked for, never from a window.
//! - RA2 (bounded memory): at most [`MAX_WINDOWS`] window buffers are alive
//!   in the process at a time, counting those that only events leased out of
//!   them still hold (a buffer frees its slot when its last slice is
//!   dropped); past that, reads go to the file as they would without
//!   read-ahead. So read-ahead keeps at most `MAX_WINDOWS × WINDOW` (4 MiB)
//!   beyond what plain reads would. A file drops its window when a read
//!   reaches the window's end, when a read misses it, and with the file.
//! - RA3 (sequential readers only): a window is read only for a read that
//!   starts where the last read of that file ended, so a file read once in
//!   one place (a lease of one chunk) costs no more than before.
//! - RA4 (what a window serves): a read that fails returns its error and
//!   leaves no window; a file shorter than asked returns what it holds, as a
//!   plain read does. A window serves the bytes as they were when it was
//!   read: damage done to the file after that (a flipped byte, a cut) is not
//!   seen by the leases the window serves — they get the events intact, as
//!   written — and is found by `verify`, which reads the file, and by the
//!   first lease that reads those bytes from the file.

use bytes::Bytes;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes read ahead at once.
pub(crate) const WINDOW: usize = 128 * 1024;

/// The most window buffers alive at once, process-wide (RA2): 4 MiB.
pub(crate) const MAX_WINDOWS: usize = 32;

/// Slots for windows (RA2).
pub(crate) struct Budget {
    held: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(crate) const fn new(max: usize) -> Budget {
        Budget {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// Windows held now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }

    /// A slot, if one is free.
    fn take(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }
}

/// The process's windows.
static WINDOWS: Budget = Budget::new(MAX_WINDOWS);

/// Bytes read ahead, starting at file offset `at`.
struct Window {
    at: u64,
    bytes: Bytes,
}

impl Window {
    fn end(&self) -> u64 {
        self.at + self.bytes.len() as u64
    }
}

/// A window's buffer: it holds a slot of its budget until the last event
/// sliced from it is dropped (RA2).
struct Slot {
    bytes: Vec<u8>,
    budget: &'static Budget,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.budget.release();
    }
}

/// One file's read-ahead: its window and where its last read ended.
pub(crate) struct ReadAhead {
    state: Mutex<State>,
    budget: &'static Budget,
}

impl Default for ReadAhead {
    fn default() -> Self {
        ReadAhead::with_budget(&WINDOWS)
    }
}

#[derive(Default)]
struct State {
    window: Option<Window>,
    /// Where the last read of the file ended (RA3).
    next: Option<u64>,
}

impl ReadAhead {
    /// Read-ahead whose windows take slots of `budget`.
    pub(crate) fn with_budget(budget: &'static Budget) -> ReadAhead {
        ReadAhead {
            state: Mutex::default(),
            budget,
        }
    }

    /// `len` bytes at `offset` (fewer if the file ends first): sliced from
    /// the window if it holds them, else read with `read(offset, want)`,
    /// which returns up to `want` bytes. Bytes from `stable` on may still
    /// change (RA1): they are read only as far as the span asks.
    pub(crate) fn read(
        &self,
        offset: u64,
        len: usize,
        stable: u64,
        read: impl FnOnce(u64, usize) -> std::io::Result<Vec<u8>>,
    ) -> std::io::Result<Bytes> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let sequential = st.next == Some(offset);
        st.next = Some(offset + len as u64);
        if let Some(w) = &st.window {
            if offset >= w.at && offset + len as u64 <= w.end() {
                let from = (offset - w.at) as usize;
                let out = w.bytes.slice(from..from + len);
                if offset + len as u64 == w.end() {
                    st.window = None;
                }
                return Ok(out);
            }
            st.window = None;
        }
        let ahead = usize::try_from(stable.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(WINDOW);
        if !sequential || ahead <= len || !self.budget.take() {
            return read(offset, len).map(Bytes::from);
        }
        // The slot is ours from here: it is freed on every path.
        let mut slot = Slot {
            bytes: Vec::new(),
            budget: self.budget,
        };
        slot.bytes = read(offset, ahead)?;
        if slot.bytes.len() <= len {
            return Ok(Bytes::from(std::mem::take(&mut slot.bytes)));
        }
        let bytes = Bytes::from_owner(slot);
        let out = bytes.slice(..len);
        st.window = Some(Window { at: offset, bytes });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::{Budget, ReadAhead, WINDOW};
    use proptest::prelude::*;
    use std::cell::Cell;

    /// A file in memory; `reads` counts the reads that reached it.
    struct File {
        bytes: Vec<u8>,
        reads: Cell<usize>,
    }

    impl File {
        fn new(len: usize) -> File {
            File {
                bytes: (0..len).map(|i| (i * 7 + i / 251) as u8).collect(),
                reads: Cell::new(0),
            }
        }

        fn read(&self, at: u64, want: usize) -> std::io::Result<Vec<u8>> {
            self.reads.set(self.reads.get() + 1);
            let at = (at as usize).min(self.bytes.len());
            Ok(self.bytes[at..(at + want).min(self.bytes.len())].to_vec())
        }
    }

    /// `n` bytes at `at` through `ahead`, checked against the file.
    fn read_checked(ahead: &ReadAhead, file: &File, at: usize, n: usize) -> bytes::Bytes {
        let got = ahead
            .read(at as u64, n, u64::MAX, |o, w| file.read(o, w))
            .unwrap();
        assert_eq!(&got[..], &file.bytes[at..at + n], "{n} bytes at {at}");
        got
    }

    fn budget(max: usize) -> &'static Budget {
        Box::leak(Box::new(Budget::new(max)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_read_returns_the_files_bytes_whatever_the_order_and_the_stable_end(
            len in 1usize..(3 * WINDOW),
            reads in proptest::collection::vec((any::<bool>(), 1usize..40_000, any::<proptest::sample::Index>()), 1..60),
            stable in proptest::option::of(any::<proptest::sample::Index>()),
        ) {
            let file = File::new(len);
            let stable = stable.map_or(u64::MAX, |s| s.index(len + 1) as u64);
            let ahead = ReadAhead::with_budget(budget(1));
            let mut at = 0usize;
            for (jump, n, to) in reads {
                if jump {
                    at = to.index(len);
                }
                let got = ahead.read(at as u64, n, stable, |o, w| file.read(o, w)).unwrap();
                let want = &file.bytes[at.min(len)..(at + n).min(len)];
                prop_assert_eq!(&got[..], want, "read {} at {}", n, at);
                at = (at + n).min(len);
            }
        }
    }

    #[test]
    fn a_sequential_reader_reads_the_file_a_window_at_a_time() {
        let file = File::new(4 * WINDOW);
        let ahead = ReadAhead::with_budget(budget(1));
        let span = 15_700;
        let mut at = 0;
        while at + span <= file.bytes.len() {
            read_checked(&ahead, &file, at, span);
            at += span;
        }
        let spans = file.bytes.len() / span;
        // One read for the first span (not yet sequential), then about one
        // per window.
        assert!(
            file.reads.get() <= 2 + 4 * WINDOW / (WINDOW - span),
            "{} reads for {spans} spans",
            file.reads.get()
        );
    }

    #[test]
    fn bytes_past_the_stable_end_are_read_again_not_served_from_a_window() {
        // The log's current generation: 100 KB appended, zeros written
        // ahead of its end, which the next append overwrites (G6).
        let mut file = File::new(100_000);
        file.bytes.resize(400_000, 0);
        let ahead = ReadAhead::with_budget(budget(1));
        let stable = 100_000;
        for at in (0..90_000).step_by(10_000) {
            ahead
                .read(at, 10_000, stable, |o, w| file.read(o, w))
                .unwrap();
        }
        let appended: Vec<u8> = (0..50_000).map(|i| (i % 200 + 1) as u8).collect();
        file.bytes[100_000..150_000].copy_from_slice(&appended);
        let got = ahead
            .read(90_000, 10_000, stable, |o, w| file.read(o, w))
            .unwrap();
        assert_eq!(&got[..], &file.bytes[90_000..100_000]);
        // Now indexed and asked for: the appended bytes, not the zeros.
        let got = ahead
            .read(100_000, 50_000, 150_000, |o, w| file.read(o, w))
            .unwrap();
        assert_eq!(&got[..], &appended[..]);
    }

    #[test]
    fn a_failed_read_returns_its_error_and_frees_its_slot() {
        let file = File::new(2 * WINDOW);
        let slots = budget(1);
        let ahead = ReadAhead::with_budget(slots);
        ahead
            .read(0, 1_000, u64::MAX, |o, w| file.read(o, w))
            .unwrap();
        let err = ahead
            .read(1_000, 1_000, u64::MAX, |_, _| {
                Err(std::io::Error::other("injected read fault"))
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "injected read fault");
        assert_eq!(slots.held(), 0);
        // The next sequential read takes the slot again.
        ahead
            .read(2_000, 1_000, u64::MAX, |o, w| file.read(o, w))
            .unwrap();
        assert_eq!(slots.held(), 1);
    }

    #[test]
    fn readers_past_the_budget_read_the_file_directly_and_slots_come_back() {
        let file = File::new(2 * WINDOW);
        let slots = budget(3);
        let readers: Vec<ReadAhead> = (0..5).map(|_| ReadAhead::with_budget(slots)).collect();
        for r in &readers {
            for at in [0u64, 1_000] {
                let got = r.read(at, 1_000, u64::MAX, |o, w| file.read(o, w)).unwrap();
                assert_eq!(&got[..], &file.bytes[at as usize..at as usize + 1_000]);
            }
        }
        assert_eq!(slots.held(), 3);
        // A window read to its end leaves its file, and its slot is free
        // once nothing sliced from it is kept.
        let first = &readers[0];
        let got = first
            .read(2_000, WINDOW - 2_000 + 1_000, u64::MAX, |o, w| {
                file.read(o, w)
            })
            .unwrap();
        assert_eq!(got.len(), WINDOW - 1_000);
        assert_eq!(slots.held(), 3, "the slice still holds the window");
        drop(got);
        assert_eq!(slots.held(), 2);
        drop(readers);
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn events_kept_from_windows_keep_their_slots_so_memory_stays_within_the_budget() {
        // A consumer that keeps one small span of each window (a lease it
        // holds) pins at most the budget's windows; past it, reads go to the
        // file and pin only their span.
        let file = File::new(40 * WINDOW);
        let slots = budget(4);
        let ahead = ReadAhead::with_budget(slots);
        let span = 4_096;
        let mut kept = Vec::new();
        let mut at = 0;
        while at + span <= file.bytes.len() {
            let got = read_checked(&ahead, &file, at, span);
            if at % WINDOW < span {
                kept.push(got);
            }
            assert!(slots.held() <= 4, "{} windows alive", slots.held());
            at += span;
        }
        assert_eq!(slots.held(), 4, "the kept spans hold the budget");
        let reads = file.reads.get();
        assert!(
            reads > 40 * WINDOW / span / 2,
            "past the budget, span by span: {reads} reads"
        );
        drop(kept);
        assert!(slots.held() <= 1, "{} windows alive", slots.held());
    }
}
