//! Typed errors at the library boundary. Expected outcomes (a drop under
//! `drop_newest`, a collector's refusal) are values, not errors.

use std::path::PathBuf;

pub use crate::config::ConfigError;
pub use crate::queue::storage::StorageError;

/// The store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The configuration is invalid; fix the named field.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another process has the store open (sled allows one process per directory).
    /// Reach it through its admin API (`evspool` does so automatically) or stop it.
    #[error(
        "store {dir} is locked by {holder}; one process per directory: stop it, or use its admin API"
    )]
    Locked {
        /// The store directory.
        dir: PathBuf,
        /// Who holds the lock, e.g. `pid 4242`, or `another process` when unknown.
        holder: String,
        /// The holder's pid, when it could be read from the lock file.
        pid: Option<u32>,
    },
    /// The store was written by a newer evspool; upgrade evspool (downgrades are not supported).
    #[error(
        "store {dir} has on-disk format {found}, newer than this build supports ({supported}); upgrade evspool"
    )]
    NewerFormat {
        /// The store directory.
        dir: PathBuf,
        /// The format found in the store.
        found: u8,
        /// The newest format this build reads.
        supported: u8,
    },
    /// The directory exists and holds files that are not an evspool store.
    /// Point `--dir` at an empty or evspool directory.
    #[error("{dir} is not an evspool store: {reason}")]
    NotAStore {
        /// The directory.
        dir: PathBuf,
        /// What was found there.
        reason: String,
    },
    /// The store directory (or its parent) is not this user's to trust: it
    /// belongs to another user, or others can write to it (see
    /// `evspool::owned`). Nothing in it was read or changed. Use a directory
    /// that the user running evspool owns, `chmod go-w` it, or run evspool as
    /// its owner.
    #[error(
        "refusing the store at {dir}: {reason} ({path} belongs to {owner}, uid {owner_uid}, mode {mode:04o}); evspool uses a store only when it belongs to the user running it (uid {euid}) and nobody else can write to it"
    )]
    Untrusted {
        /// The store directory.
        dir: PathBuf,
        /// The directory found wanting: the store's, or its parent.
        path: PathBuf,
        /// Its owner's uid.
        owner_uid: u32,
        /// Its owner's name (`uid N` when the name is unknown).
        owner: String,
        /// Its mode (permission bits, sticky bit included).
        mode: u32,
        /// The effective uid of this process.
        euid: u32,
        /// What is wrong.
        reason: &'static str,
    },
    /// A store written before format 3 holds a topic whose name this build
    /// no longer accepts (format 3 forbids `.` and `..`), so its events cannot
    /// be migrated. Nothing in the store was changed: open it with the evspool
    /// that wrote it, `export` that topic and `import` it under another name.
    #[error(
        "store {dir} (format {format}) holds events of topic {topic:?}, a name this build no longer accepts ({reason}); nothing was changed: open it with the evspool that wrote it, export that topic and import it under another name"
    )]
    LegacyTopic {
        /// The store directory.
        dir: PathBuf,
        /// The store's on-disk format.
        format: u8,
        /// The topic's name, as the store holds it.
        topic: String,
        /// Why the name is refused.
        reason: &'static str,
    },
    /// The directory or a file in it could not be created or read.
    #[error("cannot open store at {path}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// sled failed while loading the store's contents.
    #[error("cannot load store at {dir}")]
    Storage {
        /// The store directory.
        dir: PathBuf,
        /// sled's error.
        #[source]
        source: StorageError,
    },
}

/// A queue operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue is at its ceiling under the `reject` policy (or `block` timed out).
    /// Retry later; nothing was stored.
    #[error(
        "queue is full ({events} events, {bytes} bytes; ceiling {max_events} events, {max_bytes} bytes)"
    )]
    Full {
        /// Events held.
        events: u64,
        /// Logical bytes held.
        bytes: u64,
        /// The event ceiling.
        max_events: u64,
        /// The byte ceiling.
        max_bytes: u64,
    },
    /// The event is larger than `max_event_bytes`; it was not stored.
    #[error("event of {size} bytes is over the {max}-byte limit (max_event_bytes)")]
    TooLarge {
        /// The event's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The topic name is not allowed.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The name given.
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An earlier write failed (e.g. the disk is full) and the queue refuses new
    /// events until it is reopened; reads and delivery of stored events still work.
    #[error("queue is failing closed after a storage error: {reason}")]
    FailedClosed {
        /// The storage error that started it.
        reason: String,
    },
    /// The lease was already settled, or expired and its events returned to the queue.
    /// Its events will be delivered again (at-least-once).
    #[error("lease {lease} is no longer held (expired or already settled)")]
    LeaseLost {
        /// The lease id.
        lease: u64,
    },
    /// The queue was closed.
    #[error("queue is closed")]
    Closed,
    /// sled failed.
    #[error(transparent)]
    Storage(StorageError),
}

impl From<StorageError> for QueueError {
    /// A write refused because the queue closed is [`QueueError::Closed`].
    fn from(e: StorageError) -> Self {
        if e.is_closed() {
            QueueError::Closed
        } else {
            QueueError::Storage(e)
        }
    }
}

impl QueueError {
    /// A short stable code for metric labels and exit codes.
    pub fn as_code(&self) -> &'static str {
        match self {
            Self::Full { .. } => "full",
            Self::TooLarge { .. } => "too_large",
            Self::InvalidTopic { .. } => "invalid_topic",
            Self::FailedClosed { .. } => "failed_closed",
            Self::LeaseLost { .. } => "lease_lost",
            Self::Closed => "closed",
            Self::Storage(_) => "storage",
        }
    }
}
