//! Where a store's body files go and what every topic log shares: the
//! directory, the descriptor budget, the store's identity, the seq counter,
//! the bytes on disk, and the write gate (G7 in `log/mod.rs`). Every path
//! of a body file is made here.

use super::segment::OpenFiles;
use crate::queue::topic::Topic;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Who asks to write: while the queue closes, only the committer's last
/// round (and the traces it flushes) may (`close` is final, G7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A producer, a settle, a lease's rewrite, a replay, compaction.
    Producer,
    /// The committer (its rounds and the reaper's carried traces).
    Committer,
}

/// The gate every write passes (G7): open, closing (the committer only), closed.
const GATE_OPEN: u8 = 0;
const GATE_CLOSING: u8 = 1;
const GATE_CLOSED: u8 = 2;

/// What every topic log shares: where the files go, the descriptor budget,
/// the store's identity and seq counter.
pub(crate) struct Bodies {
    pub(crate) root: PathBuf,
    pub(crate) files: Arc<OpenFiles>,
    pub(crate) instance: Arc<str>,
    pub(crate) fsync: bool,
    /// The next seq to hand out (every seq below it was handed out).
    pub(crate) next_seq: AtomicU64,
    /// Bytes of the body files: measured once at open, then kept by every
    /// create, append and delete, so `stats` never walks thousands of topic
    /// directories (a failed write whose tail could not be cut is not counted).
    pub(crate) disk_bytes: AtomicU64,
    /// The write gate (G7).
    pub(crate) gate: AtomicU8,
}

impl Bodies {
    /// Body files of the store in `root`, with its descriptor budget.
    pub(crate) fn new(
        root: PathBuf,
        files: Arc<OpenFiles>,
        instance: Arc<str>,
        fsync: bool,
    ) -> Bodies {
        Bodies {
            root,
            files,
            instance,
            fsync,
            next_seq: AtomicU64::new(1),
            disk_bytes: AtomicU64::new(0),
            gate: AtomicU8::new(GATE_OPEN),
        }
    }

    /// From now on only the committer writes (`close` has begun).
    pub(crate) fn start_closing(&self) {
        self.gate.fetch_max(GATE_CLOSING, Ordering::AcqRel);
    }

    /// From now on nothing is written (`close` is done).
    pub(crate) fn close(&self) {
        self.gate.store(GATE_CLOSED, Ordering::Release);
    }

    pub(super) fn admits(&self, admit: Admit) -> bool {
        match self.gate.load(Ordering::Acquire) {
            GATE_OPEN => true,
            GATE_CLOSING => admit == Admit::Committer,
            _ => false,
        }
    }

    /// The directory of a topic's generation files (a [`Topic`] stays
    /// inside `bodies/`).
    pub(crate) fn topic_dir(&self, topic: &Topic) -> PathBuf {
        self.root.join(topic.as_str())
    }

    /// The path of generation `g` of `topic`.
    pub(crate) fn path(&self, topic: &Topic, g: u32) -> PathBuf {
        self.topic_dir(topic).join(format!("{g}.seg"))
    }
}

/// Topics that have a body directory.
pub(crate) fn body_topics(root: &std::path::Path) -> Vec<Topic> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Topic::new(e.file_name().to_str()?).ok())
        .collect()
}

/// The body generations a topic has on disk.
pub(crate) fn body_generations(root: &std::path::Path, topic: &Topic) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(root.join(topic.as_str())) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|g| g.parse().ok())
        })
        .filter(|g| *g > 0)
        .collect()
}
