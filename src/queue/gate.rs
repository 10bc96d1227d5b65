//! The gate: whether a call may write. A store is open, closing (`close`
//! has begun: new events are refused with `Closed`), or failing closed (a
//! write failed for a reason that does not go away by itself: new events
//! are refused with `FailedClosed` until the store is reopened; reads and
//! delivery go on).
//!
//! The classification of a failed write is made here, once: a transient
//! error (out of descriptors or memory, EINTR, EAGAIN; IO2 in
//! `io.rs`) fails only its call; a write refused because the store
//! closed is the caller's `Closed`; anything else fails the store closed.

use super::locking::lock;
use super::storage::StorageError;
use crate::error::QueueError;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether calls may write; see the module docs.
#[derive(Default)]
pub(crate) struct Gate {
    /// `close` has begun.
    closing: AtomicBool,
    /// A write failed: the store fails closed.
    failed: AtomicBool,
    /// Why it failed closed (set once, with `failed`).
    reason: Mutex<Option<String>>,
}

impl Gate {
    /// Refuses any call once `close` has begun (it is final).
    pub(crate) fn check_open(&self) -> Result<(), QueueError> {
        if self.is_closing() {
            return Err(QueueError::Closed);
        }
        Ok(())
    }

    /// Marks the start of `close`.
    pub(crate) fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Whether `close` has begun.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether the store fails closed.
    pub(crate) fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Why the store fails closed, if it does.
    pub(crate) fn failed_reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// The error a refused write gets while the store fails closed.
    pub(crate) fn failed_error(&self) -> QueueError {
        QueueError::FailedClosed {
            reason: self.failed_reason().unwrap_or_default(),
        }
    }

    /// Enters the failing-closed state: new events are refused until reopen.
    pub(crate) fn fail_closed(&self, reason: &str) {
        let mut r = lock(&self.reason);
        if !self.failed.swap(true, Ordering::AcqRel) {
            tracing::error!(
                reason,
                "Storage failed; refusing new events until the store is reopened."
            );
            metrics::gauge!("evspool_failed_closed").set(1.0);
            *r = Some(reason.to_string());
        }
    }

    /// Reacts to a failed write: out of descriptors is transient (reported,
    /// never failing the store closed); anything else fails it closed.
    pub(crate) fn write_failed(&self, e: &StorageError) {
        if e.is_closed() {
            return;
        }
        if e.is_transient() {
            metrics::counter!("evspool_transient_write_errors_total").increment(1);
            tracing::warn!(error = %e, "A write failed transiently (out of descriptors or memory); the caller may retry. Raise the process's open-file limit or lower max_open_files.");
        } else {
            self.fail_closed(&e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_to_fail_closed_is_kept_and_a_transient_error_fails_nothing() {
        let g = Gate::default();
        g.write_failed(&StorageError::io(
            "write",
            std::io::Error::from_raw_os_error(24),
        ));
        assert!(!g.is_failed(), "EMFILE is transient");
        g.write_failed(&StorageError::closed());
        assert!(!g.is_failed(), "a write refused at close is the caller's");
        g.fail_closed("first");
        g.fail_closed("second");
        assert_eq!(g.failed_reason().as_deref(), Some("first"));
        assert!(
            matches!(g.failed_error(), QueueError::FailedClosed { reason } if reason == "first")
        );
        assert!(g.check_open().is_ok());
        g.start_closing();
        assert!(matches!(g.check_open(), Err(QueueError::Closed)));
    }
}
