//! [`StorageError`]: a storage operation failed (the index, or a body file),
//! with the I/O error's kind and number, classified once (IO2 in `io.rs`).

/// A storage operation failed: the index, or a body file.
#[derive(Clone, Debug, thiserror::Error)]
#[error("storage {op} failed: {message}")]
pub struct StorageError {
    op: &'static str,
    message: String,
    io_kind: Option<std::io::ErrorKind>,
    os_error: Option<i32>,
    /// The write was refused because the queue closed (`QueueError::Closed`).
    closed: bool,
}

impl StorageError {
    /// A failure that is no I/O error (the index's own, say).
    pub(super) fn other(op: &'static str, message: String) -> Self {
        Self {
            op,
            message,
            io_kind: None,
            os_error: None,
            closed: false,
        }
    }

    /// An I/O error of a body file or directory.
    pub(crate) fn io(op: &'static str, err: std::io::Error) -> Self {
        Self {
            op,
            message: err.to_string(),
            io_kind: Some(err.kind()),
            os_error: err.raw_os_error(),
            closed: false,
        }
    }

    /// A write refused because the queue closed (G7 in `queue/log/mod.rs`).
    pub(crate) fn closed() -> Self {
        Self {
            op: "write",
            message: "the queue is closed".into(),
            io_kind: None,
            os_error: None,
            closed: true,
        }
    }

    /// Whether the write was refused because the queue closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// A failure injected by a test's fail point.
    #[cfg(feature = "failpoints")]
    pub(crate) fn injected(point: &'static str) -> Self {
        Self {
            op: "write",
            message: format!("injected by fail point {point}"),
            io_kind: Some(std::io::ErrorKind::Other),
            os_error: None,
            closed: false,
        }
    }

    /// The I/O error kind, when the failure was an I/O error (e.g. a full disk).
    pub fn io_kind(&self) -> Option<std::io::ErrorKind> {
        self.io_kind
    }

    /// Whether the failure is transient — the process ran out of file
    /// descriptors (EMFILE, ENFILE) or memory (ENOMEM), or the call would have
    /// blocked (EAGAIN) or was interrupted (EINTR): it failed that call only
    /// (retry it), and never makes the store fail closed. The one
    /// classification every I/O site uses (`queue/io.rs`).
    pub fn is_transient(&self) -> bool {
        crate::queue::io::errno_is_transient(self.os_error)
    }
}
